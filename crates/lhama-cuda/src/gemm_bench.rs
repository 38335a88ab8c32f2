//! The AWQ matrix product on every model shape against cuBLAS fp16 (f32
//! accumulation) on the same shapes, in one run: the yardstick for the
//! GEMM work of issue 8. cuBLAS is used here only, never in the forward
//! pass. Times are CUDA-event medians of replays of a graph of repeated
//! launches (after a warm-up), with the inputs on the device.

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{CudaContext, CudaStream};
use half::f16;
use lhama_model::LlamaConfig;
use lhama_model::rng::SplitMix64;
use lhama_model::weights::{AwqWeights, FusedAwq};

use crate::CudaError;
use crate::kernels::{GpuAwq, Kernels, Precision, counters_len};

/// One product y[M, N] = x[M, K] · W[K, N] of the model.
#[derive(Debug, Clone)]
pub struct GemmShape {
    pub name: &'static str,
    pub k: usize,
    pub n: usize,
}

/// The model's products: fused q|k|v, o, fused gate|up, down.
pub fn model_shapes(c: &LlamaConfig) -> Vec<GemmShape> {
    let q = c.num_heads * c.head_dim;
    let kv = c.num_kv_heads * c.head_dim;
    vec![
        GemmShape {
            name: "qkv",
            k: c.hidden_size,
            n: q + 2 * kv,
        },
        GemmShape {
            name: "o",
            k: q,
            n: c.hidden_size,
        },
        GemmShape {
            name: "gate_up",
            k: c.hidden_size,
            n: 2 * c.intermediate_size,
        },
        GemmShape {
            name: "down",
            k: c.intermediate_size,
            n: c.hidden_size,
        },
    ]
}

/// Timings of one shape at one M, in microseconds.
#[derive(Debug, Clone)]
pub struct GemmTiming {
    pub shape: GemmShape,
    pub m: usize,
    pub exact_us: f64,
    pub fast_us: f64,
    pub cublas_us: f64,
}

impl GemmTiming {
    /// TFLOP/s of a run of `us` microseconds.
    pub fn tflops(&self, us: f64) -> f64 {
        2.0 * (self.m * self.shape.k * self.shape.n) as f64 / us / 1e6
    }

    /// Weight bytes one AWQ product reads (int4, plus f32 zeros and scales
    /// per group as the backend keeps them) over `us`, in GB/s.
    pub fn awq_weight_gbps(&self, us: f64, group: usize) -> f64 {
        let (k, n) = (self.shape.k, self.shape.n);
        let bytes = k * n / 2 + 2 * (k / group) * n * 4;
        bytes as f64 / us / 1e3
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Launches of one product in a timed graph.
const LAUNCHES: usize = 10;

/// Median microseconds of one `launch` over `reps` timed replays of a CUDA
/// graph of LAUNCHES back-to-back launches (captured after a warm-up): the
/// GPU's time, as the forward pass replays its steps from graphs, not the
/// host's cost of issuing each launch (which bounds eager launches of
/// small products at 7-15 us, both ours and cuBLAS's).
fn time(
    ctx: &Arc<CudaContext>,
    s: &Arc<CudaStream>,
    reps: usize,
    mut launch: impl FnMut() -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    use cudarc::driver::sys;
    for _ in 0..3 {
        launch()?;
    }
    s.synchronize()?;
    s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let launched = (0..LAUNCHES).try_for_each(|_| launch());
    // The capture ends whether or not the launches succeeded.
    let graph = s.end_capture(sys::CUgraphInstantiate_flags(0));
    launched?;
    let graph =
        graph?.ok_or_else(|| CudaError::Driver("graph capture produced no graph".into()))?;
    graph.launch()?;
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut runs = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = ctx.new_event(flags)?;
        let end = ctx.new_event(flags)?;
        start.record(s)?;
        graph.launch()?;
        end.record(s)?;
        runs.push(f64::from(start.elapsed_ms(&end)?) * 1e3 / LAUNCHES as f64);
    }
    Ok(median(runs))
}

/// Times every shape at every M: lhama's AWQ product (exact and fast, the
/// same kernel choice as the forward pass: GEMV below 9 rows, tensor cores
/// from there) and cuBLAS fp16 with f32 accumulation.
pub fn run(
    config: &LlamaConfig,
    group: usize,
    ms: &[usize],
    reps: usize,
) -> Result<Vec<GemmTiming>, CudaError> {
    crate::probe()?;
    let ctx = CudaContext::new(0)?;
    // One stream does everything (and is captured into graphs, where
    // cudarc's per-buffer events would be foreign work).
    // SAFETY: no buffer of this context is ever used from a second stream.
    unsafe { ctx.disable_event_tracking() };
    let s = ctx.new_stream()?;
    let mut k = Kernels::load(&ctx)?;
    let blas = CudaBlas::new(s.clone()).map_err(|e| CudaError::Driver(format!("cuBLAS: {e}")))?;
    let max_m = ms.iter().copied().max().unwrap_or(1);
    let mut g = SplitMix64::new(7);
    let mut out = Vec::new();
    for shape in model_shapes(config) {
        let (kk, n) = (shape.k, shape.n);
        let w: Vec<f32> = (0..kk * n).map(|_| g.next_normal() as f32 * 0.05).collect();
        let q = lhama_model::awq::quantize(&w, kk, n, group);
        let awq = AwqWeights {
            in_features: kk,
            out_features: n,
            group_size: group,
            qweight: q.qweight,
            qzeros: q.qzeros,
            scales: q.scales,
        };
        let gw = GpuAwq::upload(&s, &FusedAwq::new(&[&awq]))?;
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let w16 = s.clone_htod(&w16)?;
        let x: Vec<f32> = (0..max_m * kk).map(|_| g.next_normal() as f32).collect();
        let x32 = s.clone_htod(&x)?;
        let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
        let x16 = s.clone_htod(&x16)?;
        let mut y32 = s.alloc_zeros::<f32>(max_m * n)?;
        let mut y16 = s.alloc_zeros::<f16>(max_m * n)?;
        // Split-K partials for up to max_m rows on the tensor cores.
        // The forward pass's split-K scratch: the products split K as they
        // do there (where their splits are not left to the consumer).
        let mut partial = s.alloc_zeros::<f32>(crate::backend::partial_len(config))?;
        let mut counters = s.alloc_zeros::<u32>(counters_len(n))?;
        for &m in ms {
            let mut awq_time = |k: &Kernels| {
                time(&ctx, &s, reps, || {
                    k.awq_matmul(
                        &s,
                        &x32.slice(0..m * kk),
                        m,
                        &gw,
                        &mut partial,
                        &mut counters,
                        &mut y32.slice_mut(0..m * n),
                    )
                })
            };
            k.precision = Precision::Exact;
            let exact_us = awq_time(&k)?;
            k.precision = Precision::Fast;
            let fast_us = awq_time(&k)?;
            // Column-major cuBLAS: C[N, M] = W[N, K] · X[K, M], i.e. the
            // row-major y[M, N] = x[M, K] · W[K, N].
            let cfg = GemmConfig {
                transa: cublasOperation_t::CUBLAS_OP_N,
                transb: cublasOperation_t::CUBLAS_OP_N,
                m: n as i32,
                n: m as i32,
                k: kk as i32,
                alpha: f16::ONE,
                lda: n as i32,
                ldb: kk as i32,
                beta: f16::ZERO,
                ldc: n as i32,
            };
            let cublas_us = time(&ctx, &s, reps, || {
                // SAFETY: w16 holds K * N, x16 at least M * K and y16 M * N
                // elements, matching the leading dimensions above.
                unsafe { blas.gemm(cfg, &w16, &x16, &mut y16) }
                    .map_err(|e| CudaError::Driver(format!("cuBLAS: {e}")))
            })?;
            out.push(GemmTiming {
                shape: shape.clone(),
                m,
                exact_us,
                fast_us,
                cublas_us,
            });
        }
    }
    Ok(out)
}
