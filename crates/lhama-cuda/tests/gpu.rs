//! GPU kernels and the whole CUDA backend against the CPU reference, on
//! fresh random inputs of several shapes, outputs poisoned (NaN) before each
//! run. These need a CUDA device: they are `#[ignore]`d (cargo reports them
//! as ignored, never as passed) and scripts/gpu-tests.sh runs them on the
//! device with `--ignored`.
//!
//! Error bounds (‖gpu − cpu‖ / ‖cpu‖, both in f32 with f32 accumulation, only
//! the order of additions differs): 1e-5 for the matrix kernels, 1e-6 for the
//! elementwise ones; whole-model logits within 1e-3 absolute of the CPU
//! backend and of the transformers goldens, greedy tokens identical.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use half::f16;
use lhama_cpu::CpuBackend;
use lhama_cpu::kernels::{self as cpu, AttnShape, AwqMatrix, RopeTable};
use lhama_cuda::kernels::{GpuAwq, Kernels, KvCache, Precision, RMSNORM_WIDE_ROWS};
use lhama_cuda::{CudaBackend, CudaOptions};
use lhama_model::awq;
use lhama_model::golden::{Golden, compare, prompt_logits};
use lhama_model::rng::SplitMix64;
use lhama_model::weights::{AwqWeights, FusedAwq};
use lhama_model::{
    Backend, ForwardBatch, KvGeometry, ModelFiles, RowSampling, SampledStep, SeqSlice,
};

const NEEDS_GPU: &str = "needs a CUDA GPU: run scripts/gpu-tests.sh on the device";

fn setup() -> (Arc<CudaStream>, Kernels) {
    let ctx = CudaContext::new(0).expect("a CUDA device");
    let stream = ctx.default_stream();
    let k = Kernels::load(&ctx).expect("kernels compile and load");
    (stream, k)
}

fn randn(g: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| g.next_normal() as f32).collect()
}

fn poisoned(s: &Arc<CudaStream>, n: usize) -> CudaSlice<f32> {
    s.clone_htod(&vec![f32::NAN; n]).unwrap()
}

fn back(s: &Arc<CudaStream>, d: &CudaSlice<f32>, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    s.memcpy_dtoh(&d.slice(0..n), out.as_mut_slice()).unwrap();
    s.synchronize().unwrap();
    out
}

fn rel_err(gpu: &[f32], cpu: &[f32]) -> f64 {
    assert_eq!(gpu.len(), cpu.len());
    assert!(
        gpu.iter().all(|v| v.is_finite()),
        "an output was not written (NaN poison left)"
    );
    let num: f64 = gpu
        .iter()
        .zip(cpu)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = cpu.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// `v` as f16 holds it (what the fast path feeds the tensor cores and keeps
/// in its KV cache).
fn f16_rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&a| f16::from_f32(a).to_f32()).collect()
}

/// x[M, K] times the AWQ matrix with every weight (q - zero) * scale
/// rounded to f16, summed in f64: the fragment GEMM's reference.
fn f16_product(x: &[f32], m: usize, f: &FusedAwq) -> Vec<f32> {
    let (k, n) = (f.k, f.n);
    let mut w = vec![0f64; k * n];
    for kk in 0..k {
        let g = (kk / f.group) * n;
        for c in 0..n {
            let q = awq::unpack(f.qweight[kk * (n / 8) + c / 8], c % 8) as f32;
            w[kk * n + c] = f16::from_f32((q - f.zeros[g + c]) * f.scales[g + c]).to_f64();
        }
    }
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        let mut row = vec![0f64; n];
        for kk in 0..k {
            let xv = x[r * k + kk] as f64;
            for (acc, wv) in row.iter_mut().zip(&w[kk * n..(kk + 1) * n]) {
                *acc += xv * wv;
            }
        }
        for (o, v) in y[r * n..(r + 1) * n].iter_mut().zip(row) {
            *o = v as f32;
        }
    }
    y
}

fn random_awq(g: &mut SplitMix64, k: usize, n: usize, group: usize) -> AwqWeights {
    let w = randn(g, k * n);
    let q = awq::quantize(&w, k, n, group);
    AwqWeights {
        in_features: k,
        out_features: n,
        group_size: group,
        qweight: q.qweight,
        qzeros: q.qzeros,
        scales: q.scales,
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-tests.sh on the device"]
fn awq_matmul_matches_cpu() {
    let _ = NEEDS_GPU;
    let (s, mut k) = setup();
    let mut g = SplitMix64::new(21);
    // Thread block clusters (the fragment GEMM's cluster splits) from Hopper.
    let hopper = s.context().compute_capability().unwrap().0 >= 9;
    // wgmma: sm_90a alone.
    let sm90a = s.context().compute_capability().unwrap() == (9, 0);
    let mut wgmma_runs = 0;
    let mut wide_runs = 0;
    // The wgmma tile heights taken (smallest of WGMMA_TILE_ROWS holding M).
    let mut wgmma_tiles = std::collections::BTreeSet::new();
    let mut clustered = 0;
    let mut clustered_gemv = 0;
    // (rows, K, N, group): ragged rows and columns (N not a multiple of the
    // 64-column GEMM tile), one and many K splits, both kernels' row ranges.
    for &(m, kk, n, group) in &[
        (1, 128, 64, 64),
        (1, 1024, 3072, 128),
        (1, 512, 200, 128),
        (3, 256, 200, 128),
        (8, 384, 1000, 128),
        (13, 1024, 3072, 128),
        (1, 4096, 1024, 128),
        (16, 1024, 1024, 128),
        (64, 256, 200, 64),
        (100, 1024, 8192, 128),
        (257, 4096, 1024, 128),
        // The wgmma tiles of 32, 64 and 128 rows, part-filled (N = 1,040:
        // a block of 128 columns holds one 16-column tile).
        (24, 1024, 3072, 128),
        (50, 1024, 1024, 128),
        (130, 1024, 1040, 128),
        // The tensor-core GEMV's shapes (N % 16, K % 256, G % 64): one to
        // eight rows and a chunk of 8 + 3, a column tile short of its
        // block's four (N = 48), groups of 64 to 256.
        (2, 1024, 3072, 128),
        (5, 512, 4096, 64),
        (8, 1024, 8192, 128),
        (7, 256, 48, 256),
        (11, 4096, 1024, 128),
    ] {
        let a = random_awq(&mut g, kk, n, group);
        let f = FusedAwq::new(&[&a]);
        let cpu_m = AwqMatrix::new(f.clone());
        let x = randn(&mut g, m * kk);
        let mut want = vec![0f32; m * n];
        cpu::awq_matmul(&x, m, &cpu_m, &mut want);
        // The fast tensor-core GEMM takes x as f16: its reference is the
        // same product of the rounded x (everything else stays exact).
        let mut want_f16x = vec![0f32; m * n];
        cpu::awq_matmul(&f16_rounded(&x), m, &cpu_m, &mut want_f16x);
        // The fragment GEMM rounds each weight (q - zero) * scale to f16
        // too: its reference is the product of the rounded x and weights.
        let want_frag = f16_product(&f16_rounded(&x), m, &f);
        let w = GpuAwq::upload(&s, &f).unwrap();
        let xd = s.clone_htod(&x).unwrap();
        // Room for 8 splits of every row: the fragment GEMM's splits are
        // then the same with partial sums as in a cluster (which needs
        // none), so the two give the same bits.
        let mut partial = s
            .alloc_zeros::<f32>(w.partial_len().max(8 * m * n))
            .unwrap();
        let mut counters = s
            .alloc_zeros::<u32>(lhama_cuda::kernels::counters_len(n))
            .unwrap();
        // The default choice (GEMV below DEFAULT_MMA_MIN_ROWS rows, tensor
        // cores from there), then the tensor cores for every row count, then
        // the GEMV for every row count (chunks of 8, 4, 2, 1 rows).
        // At fast precision the GEMV rows go through the tensor-core GEMV
        // where the layer has fragment-ordered weights, else (and with
        // gemv_mma_on off) through the f32 GEMV.
        // The fragment GEMM (gemm_frag_on) in its 64-row tiles
        // (tall rows usize::MAX) with weight rings of 2, 3 and 4 chunks, and
        // its 128-row tiles (tall rows 1); the 64-row tiles with their K
        // splits added up in a thread block cluster (the default on Hopper)
        // where 2-8 splits, with partial sums and a second kernel elsewhere.
        let mut frag64_bits: Option<Vec<f32>> = None;
        // Every f32 GEMV form (fused, with the reduce kernel, in a cluster)
        // adds the same sums in the same order.
        let mut gemv_bits: Option<Vec<f32>> = None;
        use lhama_cuda::kernels::ClusterSplits::{Off, Undeferred};
        for (mma_min, precision, gemv_mma, frag_gemm, tall, stages, cluster, wgmma) in [
            (
                lhama_cuda::kernels::DEFAULT_MMA_MIN_ROWS,
                Precision::Exact,
                true,
                false,
                usize::MAX,
                4,
                Off,
                false,
            ),
            (1, Precision::Exact, true, false, usize::MAX, 4, Off, false),
            (1, Precision::Fast, true, false, usize::MAX, 4, Off, false),
            (
                usize::MAX,
                Precision::Fast,
                true,
                false,
                usize::MAX,
                4,
                Off,
                false,
            ),
            (
                usize::MAX,
                Precision::Fast,
                false,
                false,
                usize::MAX,
                4,
                Off,
                false,
            ),
            (1, Precision::Fast, true, true, usize::MAX, 2, Off, false),
            (1, Precision::Fast, true, true, usize::MAX, 3, Off, false),
            (1, Precision::Fast, true, true, usize::MAX, 4, Off, false),
            (
                1,
                Precision::Fast,
                true,
                true,
                usize::MAX,
                4,
                Undeferred,
                false,
            ),
            (
                usize::MAX,
                Precision::Exact,
                true,
                false,
                usize::MAX,
                4,
                Undeferred,
                false,
            ),
            (
                usize::MAX,
                Precision::Fast,
                false,
                false,
                usize::MAX,
                4,
                Undeferred,
                false,
            ),
            // (128-row tiles always take a ring of 2.)
            (1, Precision::Fast, true, true, 1, 2, Off, false),
            // The warpgroup tensor cores (sm_90a), in tiles of 16 to 128 rows;
            // then (ring 3) in the wide tile (256 columns) for every row count.
            (1, Precision::Fast, true, true, 1, 2, Off, true),
            (1, Precision::Fast, true, true, 1, 3, Off, true),
        ] {
            if cluster != Off && !hopper {
                continue;
            }
            if wgmma && !sm90a {
                continue;
            }
            k.gemm_wgmma_min_rows = if wgmma { 1 } else { usize::MAX };
            let wide = wgmma && stages == 3;
            k.gemm_wide_min_blocks = if wide { 1 } else { usize::MAX };
            k.cluster_mode = cluster;
            k.cluster_gemv_rows = if cluster == Off { 0 } else { 2 };
            k.cluster_gemv_max_n = usize::MAX;
            k.gemm_frag_stages = stages;
            k.mma_min_rows = mma_min;
            k.frag_min_rows = mma_min;
            k.precision = precision;
            k.gemv_mma_on = gemv_mma;
            // Every row count through the tensor-core GEMV when it is on.
            k.gemv_mma_min_rows = 1;
            k.gemm_frag_on = frag_gemm;
            k.gemm_frag_tall_rows = tall;
            let mma = m >= mma_min;
            let fast = precision == Precision::Fast;
            let tc_gemv = !mma && fast && gemv_mma && w.frag.is_some();
            let tc_frag = mma && fast && frag_gemm && w.frag.is_some();
            let path = match (mma, precision) {
                (false, _) if tc_gemv => "gemv mma f16 x",
                (false, _) if k.gemv_cluster(m, kk, n, false, false) => {
                    clustered_gemv += 1;
                    "gemv, splits in a cluster"
                }
                (false, _) => "gemv",
                (true, Precision::Exact) => "mma exact",
                (true, Precision::Fast) if tc_frag && wide => {
                    wide_runs += 1;
                    "frag gemm on wgmma, wide tile"
                }
                (true, Precision::Fast) if tc_frag && wgmma => {
                    wgmma_runs += 1;
                    let tiles = lhama_cuda::kernels::WGMMA_TILE_ROWS;
                    wgmma_tiles.insert(tiles.into_iter().find(|&t| t >= m).unwrap_or(128));
                    "frag gemm on wgmma"
                }
                (true, Precision::Fast) if tc_frag && tall == 1 => "frag gemm 128-row tiles",
                (true, Precision::Fast)
                    if tc_frag && k.gemm_frag_cluster_split(m, kk, n, false).is_some() =>
                {
                    clustered += 1;
                    "frag gemm 64-row tiles, splits in a cluster"
                }
                (true, Precision::Fast) if tc_frag => "frag gemm 64-row tiles",
                (true, Precision::Fast) => "mma f16 x",
            };
            let want = if tc_frag {
                &want_frag
            } else if (mma && fast) || tc_gemv {
                &want_f16x
            } else {
                &want
            };
            // Twice, on the same scratch buffers: the counters re-arm
            // themselves and the split order is fixed, so the second launch
            // gives the same result bit for bit.
            let mut runs = Vec::new();
            for _ in 0..2 {
                let mut yd = poisoned(&s, m * n);
                k.awq_matmul(
                    &s,
                    &xd.slice(..),
                    m,
                    &w,
                    &mut partial,
                    &mut counters,
                    &mut yd.slice_mut(..),
                )
                .unwrap();
                runs.push(back(&s, &yd, m * n));
            }
            let e = rel_err(&runs[0], want);
            eprintln!("awq {path} m={m} k={kk} n={n} g={group} ring {stages}: rel err {e:.2e}");
            // The ring's depth changes when bytes arrive, not the sums.
            if tc_frag && tall == usize::MAX {
                match &frag64_bits {
                    None => frag64_bits = Some(runs[0].clone()),
                    Some(first) => assert!(
                        first
                            .iter()
                            .zip(&runs[0])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "frag gemm m={m} k={kk} n={n}: a ring of {stages} chunks \
                         ({cluster:?} cluster splits) changes the bits"
                    ),
                }
            }
            if path.starts_with("gemv") && !path.starts_with("gemv mma") {
                match &gemv_bits {
                    None => gemv_bits = Some(runs[0].clone()),
                    Some(first) => assert!(
                        first
                            .iter()
                            .zip(&runs[0])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{path} m={m} k={kk} n={n}: not the bits of the other f32 GEMV forms"
                    ),
                }
            }
            assert!(e < 1e-5, "{path} m={m} k={kk} n={n}: rel err {e}");
            assert!(
                runs[0] == runs[1],
                "{path} m={m} k={kk} n={n}: second launch differs"
            );
        }
    }
    // 13×1024×3072 and 16×1024×1024 (8 splits), 100×1024×8192 (3),
    // 257×4096×1024 (7) go through the cluster.
    if sm90a {
        assert!(
            wgmma_runs >= 12,
            "only {wgmma_runs} shapes took the wgmma GEMM"
        );
        assert_eq!(
            wgmma_tiles.into_iter().collect::<Vec<_>>(),
            lhama_cuda::kernels::WGMMA_TILE_ROWS,
            "wgmma tile heights taken"
        );
        assert_eq!(wide_runs, wgmma_runs, "shapes that took the wide tile");
    }
    if hopper {
        assert!(
            clustered >= 4,
            "only {clustered} shapes took the cluster splits"
        );
        // 1×1024×3072, 1×512×200, 2×1024×3072 (8, 4, 8 splits), twice each.
        assert!(
            clustered_gemv >= 6,
            "only {clustered_gemv} GEMV runs took the cluster splits"
        );
    }
}

/// add_rmsnorm of `resid` [m, n] with `delta` (`splits` partial sums) and
/// the norm weight `nd`: the bits of the updated residual and of the norm.
fn add_rmsnorm_bits(
    s: &Arc<CudaStream>,
    k: &Kernels,
    resid: &[f32],
    delta: &cudarc::driver::CudaView<'_, f32>,
    splits: usize,
    nd: &CudaSlice<f32>,
    m: usize,
) -> (Vec<u32>, Vec<u32>) {
    let len = resid.len();
    let mut xr = s.clone_htod(resid).unwrap();
    let mut out = poisoned(s, len);
    k.add_rmsnorm(
        s,
        &mut xr.slice_mut(..),
        Some((delta, splits)),
        nd,
        &mut out.slice_mut(..),
        m,
        1e-5,
    )
    .unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect();
    (bits(back(s, &xr, len)), bits(back(s, &out, len)))
}

/// A product whose K splits are left in the scratch (`awq_matmul_split`)
/// and added up by its consumer (the residual add of add_rmsnorm, silu_mul)
/// gives what the reduced product gives, bit for bit, at both precisions:
/// the GEMVs' row counts (1-2 and 3-8 rows, f32 and tensor-core) and the
/// GEMM's (256 rows reduce as before).
#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-tests.sh on the device"]
fn split_products_are_added_up_by_their_consumers() {
    let (s, mut k) = setup();
    let mut g = SplitMix64::new(26);
    let mut split_seen = 0;
    // (rows, K, N): residual-sized products (o, down) and a gate_up.
    for &(m, kk, n) in &[
        (1usize, 1024usize, 1024usize),
        (2, 4096, 1024),
        (1, 1024, 2 * 1536),
        (3, 128, 256),
        (16, 128, 256),
        (3, 1024, 1024),
        (8, 4096, 1024),
        (13, 1024, 1024),
        (64, 4096, 1024),
        (100, 1024, 768),
        (256, 1024, 1024),
        (5, 1024, 2 * 1536),
        (64, 1024, 2 * 1536),
    ] {
        let a = random_awq(&mut g, kk, n, 128);
        let f = FusedAwq::new(&[&a]);
        let w = GpuAwq::upload(&s, &f).unwrap();
        let x = randn(&mut g, m * kk);
        let xd = s.clone_htod(&x).unwrap();
        let resid = randn(&mut g, m * n);
        let norm_w = randn(&mut g, n);
        let nd = s.clone_htod(&norm_w).unwrap();
        let mut partial = s
            .alloc_zeros::<f32>(w.partial_len().max(64 * m * n))
            .unwrap();
        let mut counters = s
            .alloc_zeros::<u32>(lhama_cuda::kernels::counters_len(n))
            .unwrap();
        // Exact, fast, and fast through the fragment GEMM (gemm_frag.cu).
        for (precision, frag_gemm) in [
            (Precision::Exact, false),
            (Precision::Fast, false),
            (Precision::Fast, true),
        ] {
            k.precision = precision;
            k.gemm_frag_on = frag_gemm;
            let mut y = poisoned(&s, m * n);
            k.awq_matmul(
                &s,
                &xd.slice(..),
                m,
                &w,
                &mut partial,
                &mut counters,
                &mut y.slice_mut(..),
            )
            .unwrap();
            let mut y2 = poisoned(&s, m * n);
            let splits = k
                .awq_matmul_split(
                    &s,
                    &xd.slice(..),
                    m,
                    &w,
                    &mut partial,
                    &mut counters,
                    &mut y2.slice_mut(..),
                )
                .unwrap();
            let what =
                format!("m={m} k={kk} n={n} {precision:?} frag {frag_gemm}: {splits} splits");
            if splits > 1 {
                split_seen += 1;
            }
            let deferred = || {
                if splits > 1 {
                    partial.slice(0..splits * m * n)
                } else {
                    y2.slice(0..m * n)
                }
            };
            // The residual add and norm, from the reduced product and from
            // the splits.
            let mut outs = Vec::new();
            for (delta, sp) in [(y.slice(0..m * n), 1), (deferred(), splits)] {
                outs.push(add_rmsnorm_bits(&s, &k, &resid, &delta, sp, &nd, m));
            }
            let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
            assert_eq!(outs[0].0, outs[1].0, "{what}: residual");
            assert_eq!(outs[0].1, outs[1].1, "{what}: norm");
            // SiLU · up, reading the product as [m, 2 * inter].
            let inter = n / 2;
            let mut acts = Vec::new();
            for (gu, sp) in [(y.slice(0..m * n), 1), (deferred(), splits)] {
                let mut act = poisoned(&s, m * inter);
                k.silu_mul(&s, &gu, sp, &mut act.slice_mut(..), m, inter)
                    .unwrap();
                acts.push(bits(&back(&s, &act, m * inter)));
            }
            assert_eq!(acts[0], acts[1], "{what}: silu_mul");
        }
    }
    assert!(split_seen >= 6, "only {split_seen} products were split");
}

/// The GEMV that reads silu(gate) * up from a gate_up product gives what
/// silu_mul then the GEMV give, bit for bit, for every row variant (1, 2:
/// the in-kernel reduction; 3-8: the reduction kernel).
#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-tests.sh on the device"]
fn the_down_gemv_takes_silu_of_gate_up() {
    let (s, mut k) = setup();
    let mut g = SplitMix64::new(27);
    // At fast precision the shapes the tensor-core GEMV takes (all but 200
    // and 96 columns, and 32-wide groups) go through it, fused and not.
    for &(m, kk, n, group, precision) in &[
        (1usize, 4096usize, 1024usize, 128usize, Precision::Exact),
        (2, 256, 64, 64, Precision::Exact),
        (3, 1024, 200, 128, Precision::Exact),
        (5, 4096, 1024, 128, Precision::Exact),
        (8, 512, 96, 32, Precision::Exact),
        (1, 4096, 1024, 128, Precision::Fast),
        (2, 256, 64, 64, Precision::Fast),
        (3, 1024, 200, 128, Precision::Fast),
        (8, 4096, 1024, 128, Precision::Fast),
        (6, 512, 96, 32, Precision::Fast),
    ] {
        k.precision = precision;
        k.gemv_mma_on = true;
        k.gemv_mma_min_rows = 1;
        // The GEMVs for every row count (the fragment GEMM takes 2+ rows
        // by default).
        k.frag_min_rows = usize::MAX;
        let a = random_awq(&mut g, kk, n, group);
        let w = GpuAwq::upload(&s, &FusedAwq::new(&[&a])).unwrap();
        let gu: Vec<f32> = randn(&mut g, m * 2 * kk).iter().map(|v| v * 3.0).collect();
        let gud = s.clone_htod(&gu).unwrap();
        let mut partial = s.alloc_zeros::<f32>(w.partial_len()).unwrap();
        let mut counters = s
            .alloc_zeros::<u32>(lhama_cuda::kernels::counters_len(n))
            .unwrap();
        let mut act = poisoned(&s, m * kk);
        k.silu_mul(&s, &gud.slice(..), 1, &mut act.slice_mut(..), m, kk)
            .unwrap();
        let mut want = poisoned(&s, m * n);
        k.awq_matmul(
            &s,
            &act.slice(..),
            m,
            &w,
            &mut partial,
            &mut counters,
            &mut want.slice_mut(..),
        )
        .unwrap();
        let mut got = poisoned(&s, m * n);
        k.awq_matmul_silu(
            &s,
            &gud.slice(..),
            m,
            &w,
            &mut partial,
            &mut counters,
            &mut got.slice_mut(..),
        )
        .unwrap();
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        let want = back(&s, &want, m * n);
        assert!(
            want.iter().all(|v| v.is_finite()),
            "m={m}: the reference was not written"
        );
        assert_eq!(
            bits(back(&s, &got, m * n)),
            bits(want.clone()),
            "m={m} k={kk} n={n} {precision:?}: fused silu GEMV vs silu_mul + GEMV"
        );
        // Its splits left for add_rmsnorm give the same residual and norm.
        let mut y3 = poisoned(&s, m * n);
        let splits = k
            .awq_matmul_silu_split(
                &s,
                &gud.slice(..),
                m,
                &w,
                &mut partial,
                &mut counters,
                &mut y3.slice_mut(..),
            )
            .unwrap();
        let wd = s.clone_htod(&want).unwrap();
        let resid = randn(&mut g, m * n);
        let nd = s.clone_htod(&randn(&mut g, n)).unwrap();
        let mut normed = Vec::new();
        for (delta, sp) in [
            (wd.slice(0..m * n), 1),
            if splits > 1 {
                (partial.slice(0..splits * m * n), splits)
            } else {
                (y3.slice(0..m * n), 1)
            },
        ] {
            normed.push(add_rmsnorm_bits(&s, &k, &resid, &delta, sp, &nd, m));
        }
        assert_eq!(
            normed[0], normed[1],
            "m={m} k={kk} n={n} {precision:?}: {splits} deferred splits of the silu GEMV"
        );
    }
    k.precision = Precision::Exact;
    // Tensor-core row counts are refused (the backend uses silu_mul there).
    let a = random_awq(&mut g, 256, 64, 64);
    let w = GpuAwq::upload(&s, &FusedAwq::new(&[&a])).unwrap();
    let m = lhama_cuda::kernels::DEFAULT_MMA_MIN_ROWS;
    let gud = s.clone_htod(&vec![0f32; m * 512]).unwrap();
    let mut partial = s.alloc_zeros::<f32>(w.partial_len()).unwrap();
    let mut counters = s.alloc_zeros::<u32>(1).unwrap();
    let mut y = poisoned(&s, m * 64);
    assert!(
        k.awq_matmul_silu(
            &s,
            &gud.slice(..),
            m,
            &w,
            &mut partial,
            &mut counters,
            &mut y.slice_mut(..)
        )
        .is_err()
    );
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-tests.sh on the device"]
fn elementwise_kernels_match_cpu() {
    let (s, mut k) = setup();
    let mut g = SplitMix64::new(22);
    // add_rmsnorm, with and without the residual add
    for &(t, h) in &[(1usize, 128usize), (5, 1024), (37, 96), (3, 1312)] {
        let x = randn(&mut g, t * h);
        let delta = randn(&mut g, t * h);
        let w = randn(&mut g, h);
        let summed: Vec<f32> = x.iter().zip(&delta).map(|(a, b)| a + b).collect();
        let mut want = vec![0f32; t * h];
        cpu::rms_norm(&summed, &w, 1e-5, &mut want);
        let mut xd = s.clone_htod(&x).unwrap();
        let dd = s.clone_htod(&delta).unwrap();
        let wd = s.clone_htod(&w).unwrap();
        let mut out = poisoned(&s, t * h);
        k.add_rmsnorm(
            &s,
            &mut xd.slice_mut(..),
            Some((&dd.slice(..), 1)),
            &wd,
            &mut out.slice_mut(..),
            t,
            1e-5,
        )
        .unwrap();
        assert!(rel_err(&back(&s, &out, t * h), &want) < 1e-6);
        assert!(
            rel_err(&back(&s, &xd, t * h), &summed) < 1e-7,
            "x += delta in place"
        );
        let mut out2 = poisoned(&s, t * h);
        k.add_rmsnorm(
            &s,
            &mut xd.slice_mut(..),
            None,
            &wd,
            &mut out2.slice_mut(..),
            t,
            1e-5,
        )
        .unwrap();
        assert!(rel_err(&back(&s, &out2, t * h), &want) < 1e-6);
    }
    // add_rmsnorm adding up split partial sums: a thread per element (up
    // to RMSNORM_WIDE_ROWS rows) and 256 threads a row; more splits than
    // one batch of loads (32). The residual is bit for bit the host's sum
    // in split order; the norm is within rounding of the CPU's.
    for &(t, h, splits) in &[
        (1usize, 1024usize, 32usize),
        (2, 1024, 40),
        (3, 1312, 8),
        (RMSNORM_WIDE_ROWS + 72, 1024, 3),
    ] {
        let x = randn(&mut g, t * h);
        let parts = randn(&mut g, splits * t * h);
        let w = randn(&mut g, h);
        let summed: Vec<f32> = (0..t * h)
            .map(|i| x[i] + (0..splits).fold(0f32, |d, z| d + parts[z * t * h + i]))
            .collect();
        let mut want = vec![0f32; t * h];
        cpu::rms_norm(&summed, &w, 1e-5, &mut want);
        let pd = s.clone_htod(&parts).unwrap();
        let wd = s.clone_htod(&w).unwrap();
        for wide in [RMSNORM_WIDE_ROWS, 0] {
            k.rmsnorm_wide_rows = wide;
            let (resid, normed) = add_rmsnorm_bits(&s, &k, &x, &pd.slice(..), splits, &wd, t);
            let resid: Vec<f32> = resid.into_iter().map(f32::from_bits).collect();
            assert!(
                resid
                    .iter()
                    .zip(&summed)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "t={t} h={h} splits={splits} wide={wide}: x += splits in order"
            );
            let normed: Vec<f32> = normed.into_iter().map(f32::from_bits).collect();
            let err = rel_err(&normed, &want);
            assert!(err < 1e-6, "t={t} h={h} splits={splits} wide={wide}: {err}");
        }
        k.rmsnorm_wide_rows = RMSNORM_WIDE_ROWS;
    }
    // silu_mul
    for &(t, inter) in &[(1usize, 256usize), (9, 4096)] {
        let gu = randn(&mut g, t * 2 * inter);
        let mut want = vec![0f32; t * inter];
        cpu::silu_mul(&gu, inter, &mut want);
        let gd = s.clone_htod(&gu).unwrap();
        let mut out = poisoned(&s, t * inter);
        k.silu_mul(&s, &gd.slice(..), 1, &mut out.slice_mut(..), t, inter)
            .unwrap();
        assert!(rel_err(&back(&s, &out, t * inter), &want) < 1e-6);
    }
    // embedding gather
    let (vocab, h) = (300usize, 64usize);
    let table: Vec<f16> = randn(&mut g, vocab * h)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let tokens: Vec<u32> = vec![5, 299, 0, 5, 123];
    let td = s.clone_htod(&table).unwrap();
    let tok = s.clone_htod(&tokens).unwrap();
    let mut x = poisoned(&s, tokens.len() * h);
    k.embedding(&s, &td, &tok.slice(..), &mut x.slice_mut(..), h)
        .unwrap();
    let want: Vec<f32> = tokens
        .iter()
        .flat_map(|&t| table[t as usize * h..][..h].iter().map(|v| v.to_f32()))
        .collect();
    assert_eq!(back(&s, &x, tokens.len() * h), want);
    // lm_head over selected rows: the register-held kernel for up to 8 rows
    // (or, switched off, the warp-per-row kernel), the tensor cores for many
    // (and, forced, for few); hidden sizes below one 256-wide chunk, of one
    // 1024-wide register load, and past it; a vocabulary that ends inside a
    // block.
    let default_min = lhama_cuda::kernels::DEFAULT_MMA_MIN_ROWS;
    for hidden in [128usize, 1024, 1312] {
        let (t, v) = (70usize, 1001usize);
        let xn = randn(&mut g, t * hidden);
        let w: Vec<f16> = randn(&mut g, v * hidden)
            .into_iter()
            .map(f16::from_f32)
            .collect();
        let (xd, wd) = (s.clone_htod(&xn).unwrap(), s.clone_htod(&w).unwrap());
        let many: Vec<u32> = (0..40).map(|i| (i * 7 % t) as u32).collect();
        let eight: Vec<u32> = vec![69, 1, 1, 30, 2, 68, 0, 7];
        for (rows, mma_min, rows_kernel) in [
            (vec![5u32], default_min, true),
            (vec![5u32, 0, 3], default_min, true),
            (eight.clone(), default_min, true),
            (vec![5u32, 0, 3], default_min, false),
            (eight, default_min, false),
            (vec![5u32, 0, 3], 1, true),
            (many, default_min, true),
        ] {
            k.lm_head_mma_min_rows = mma_min;
            k.lm_head_rows_on = rows_kernel;
            let sel: Vec<f32> = rows
                .iter()
                .flat_map(|&r| xn[r as usize * hidden..][..hidden].to_vec())
                .collect();
            let mut want = vec![0f32; rows.len() * v];
            cpu::dense_matmul_f16(&sel, rows.len(), &w, hidden, v, &mut want);
            let rd = s.clone_htod(&rows).unwrap();
            let mut logits = poisoned(&s, rows.len() * v);
            k.lm_head(
                &s,
                &xd.slice(..),
                &rd.slice(..),
                &wd,
                &mut logits.slice_mut(..),
                hidden,
            )
            .unwrap();
            let e = rel_err(&back(&s, &logits, rows.len() * v), &want);
            eprintln!(
                "lm_head hidden={hidden} rows={} mma_min={mma_min} rows kernel {rows_kernel}: rel err {e:.2e}",
                rows.len()
            );
            assert!(
                e < 1e-5,
                "lm_head hidden={hidden} rows={} mma_min={mma_min} rows kernel {rows_kernel}: rel err {e}",
                rows.len()
            );
        }
    }
    k.lm_head_mma_min_rows = default_min;
    k.lm_head_rows_on = true;
}

/// The sampler's tokens for `r` rows of `logits` under `params` (the
/// output poisoned with u32::MAX first).
fn sampled_tokens(
    s: &Arc<CudaStream>,
    k: &Kernels,
    logits: &CudaSlice<f32>,
    params: &CudaSlice<u32>,
    r: usize,
    vocab: usize,
    scratch: &mut lhama_cuda::kernels::SampleScratch,
) -> Vec<u32> {
    let mut td = s.clone_htod(&vec![u32::MAX; r]).unwrap();
    k.sample(
        s,
        &logits.slice(..),
        &params.slice(..),
        &mut td.slice_mut(..),
        vocab,
        scratch,
    )
    .unwrap();
    let mut tokens = vec![0u32; r];
    s.memcpy_dtoh(&td, tokens.as_mut_slice()).unwrap();
    tokens
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-tests.sh on the device"]
fn sampling_kernel_matches_the_host_definition() {
    use lhama_cuda::kernels::{SAMPLE_MAX_SLICES, SampleScratch};
    use lhama_model::sampling::sample_row;
    let (s, mut k) = setup();
    k.sample_blocks = usize::MAX;
    let mut g = SplitMix64::new(24);
    let draw = |temperature, top_k, top_p, min_p, u| {
        RowSampling::Draw(lhama_model::DrawParams {
            temperature,
            top_k,
            top_p,
            min_p,
            u,
        })
    };
    for &vocab in &[32000usize, 40000, 1001, 50] {
        // Rows of spread logits, and rows rounded to quarters (many ties).
        let mut rows: Vec<(Vec<f32>, RowSampling)> = Vec::new();
        for i in 0..48 {
            let mut l: Vec<f32> = randn(&mut g, vocab).iter().map(|x| x * 3.0).collect();
            if i % 3 == 0 {
                l.iter_mut().for_each(|x| *x = (*x * 4.0).round() / 4.0);
            }
            let u = (g.next_f64() as f32).min(0.999_999);
            let how = match i % 8 {
                0 => RowSampling::Greedy,
                1 => RowSampling::Logits,
                2 => draw(1.0, 0, 1.0, 0.0, u),
                3 => draw(0.7, 40, 1.0, 0.0, u),
                4 => draw(1.3, 0, 0.9, 0.0, u),
                5 => draw(1.0, 0, 1.0, 0.05, u),
                6 => draw(0.9, 100, 0.8, 0.02, u),
                _ => draw(0.5, 1, 0.5, 0.5, u),
            };
            rows.push((l, how));
        }
        // Greedy rows whose best value is tied across the argmax's slices
        // (the lowest id wins): all equal; the best at an early and a late
        // id; all -inf but one late id.
        let mut tied = vec![0.5f32; vocab];
        tied[vocab - 1] = 2.0;
        tied[vocab / 3] = 2.0;
        let mut lone = vec![f32::NEG_INFINITY; vocab];
        lone[vocab - 2] = -3.0;
        for l in [vec![1.0f32; vocab], tied, lone] {
            rows.push((l, RowSampling::Greedy));
        }
        let r = rows.len();
        let flat: Vec<f32> = rows.iter().flat_map(|(l, _)| l.clone()).collect();
        let params: Vec<u32> = rows
            .iter()
            .flat_map(|(_, h)| lhama_cuda::kernels::sample_params(h))
            .collect();
        let ld = s.clone_htod(&flat).unwrap();
        let pd = s.clone_htod(&params).unwrap();
        let mut sample_scratch = SampleScratch::alloc(&s, r).unwrap();
        // One block a row, and the argmax split over several (twice each:
        // the counters re-arm).
        for slices in [1, 7, 16, SAMPLE_MAX_SLICES, 16] {
            k.sample_slices = slices;
            let got = sampled_tokens(&s, &k, &ld, &pd, r, vocab, &mut sample_scratch);
            assert_eq!(back(&s, &ld, r * vocab), flat, "logits are read only");
            let mut scratch = Vec::new();
            for (i, (l, how)) in rows.iter().enumerate() {
                match sample_row(l, how, &mut scratch) {
                    Some(want) => assert_eq!(
                        got[i], want,
                        "vocab {vocab} row {i}, {slices} slices: {how:?}"
                    ),
                    None => assert_eq!(got[i], u32::MAX, "a logits row gets no token"),
                }
            }
        }
    }
}

/// Random masks over random rows: the masked logits are the host's
/// `mask_logits`, and sampling them gives the host's tokens.
#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-tests.sh on the device"]
fn token_masks_match_the_host() {
    use lhama_model::backend::mask_logits;
    use lhama_model::sampling::sample_row;
    let (s, k) = setup();
    let mut g = SplitMix64::new(26);
    for &vocab in &[32002usize, 1001, 50] {
        let words = Kernels::mask_words(vocab);
        let r = 24;
        let logits = randn(&mut g, r * vocab);
        // Row i allows each token with probability 1 / (i % 4 + 1), at
        // least one; row 3's mask is all ones (an unmasked row); some
        // masks are one word short (the ids past them are not allowed).
        let mut masks = vec![0u32; r * words];
        for i in 0..r {
            let row = &mut masks[i * words..(i + 1) * words];
            let short = i % 5 == 4 && words > 1;
            for t in 0..vocab {
                let allow = i == 3 || g.next_f64() < 1.0 / (i % 4 + 1) as f64;
                if allow && !(short && t / 32 == words - 1) {
                    row[t / 32] |= 1 << (t % 32);
                }
            }
            row[0] |= 1 << (i % 32).min(vocab - 1);
        }
        let mut want = logits.clone();
        for i in 0..r {
            mask_logits(
                &mut want[i * vocab..(i + 1) * vocab],
                &masks[i * words..(i + 1) * words],
            );
        }
        let mut ld = s.clone_htod(&logits).unwrap();
        let md = s.clone_htod(&masks).unwrap();
        k.apply_masks(&s, &mut ld.slice_mut(..), &md.slice(..), vocab)
            .unwrap();
        let got = back(&s, &ld, r * vocab);
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "vocab {vocab}: masked logits differ from the host's"
        );
        let how: Vec<RowSampling> = (0..r)
            .map(|i| match i % 3 {
                0 => RowSampling::Greedy,
                _ => RowSampling::Draw(lhama_model::DrawParams {
                    temperature: 0.8 + 0.1 * (i % 4) as f32,
                    top_k: if i % 2 == 0 { 20 } else { 0 },
                    top_p: 0.9,
                    min_p: 0.0,
                    u: (i as f32 + 0.5) / r as f32,
                }),
            })
            .collect();
        let params: Vec<u32> = how
            .iter()
            .flat_map(lhama_cuda::kernels::sample_params)
            .collect();
        let pd = s.clone_htod(&params).unwrap();
        let mut sample_scratch = lhama_cuda::kernels::SampleScratch::alloc(&s, r).unwrap();
        let tokens = sampled_tokens(&s, &k, &ld, &pd, r, vocab, &mut sample_scratch);
        let mut scratch = Vec::new();
        for i in 0..r {
            let row = &want[i * vocab..(i + 1) * vocab];
            assert_eq!(
                Some(tokens[i]),
                sample_row(row, &how[i], &mut scratch),
                "vocab {vocab} row {i}: {:?}",
                how[i]
            );
            assert!(
                row[tokens[i] as usize].is_finite(),
                "row {i}: a masked token"
            );
        }
    }
}

/// The backend applies masks set for a step to that step's rows only, and
/// samples what the CPU backend samples.
#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-tests.sh on the device"]
fn backend_samples_under_token_masks() {
    let dir = model_dir();
    let files = ModelFiles::load(dir.path()).unwrap();
    let opts = CudaOptions {
        kv_cache_tokens: Some(512),
        max_batch_tokens: 64,
        max_seqs: 4,
        precision: Precision::Exact,
        ..CudaOptions::default()
    };
    let mut gpu = CudaBackend::new(&files.config, &files.weights, &opts).unwrap();
    let mut cpu = CpuBackend::new(
        &files.config,
        files.weights.clone(),
        KvGeometry {
            num_blocks: 32,
            block_size: 16,
        },
    );
    let vocab = files.config.vocab_size;
    let words = Kernels::mask_words(vocab);
    // Two sequences of 5 prompt tokens; row 0 masked to three tokens, row 1 not.
    let tokens: Vec<u32> = vec![1, 40, 41, 42, 43, 1, 50, 51, 52, 53];
    let positions: Vec<u32> = (0..5).chain(0..5).collect();
    let (t0, t1) = (vec![0u32], vec![1u32]);
    let seqs = [
        SeqSlice {
            token_start: 0,
            num_tokens: 5,
            block_table: &t0,
        },
        SeqSlice {
            token_start: 5,
            num_tokens: 5,
            block_table: &t1,
        },
    ];
    let batch = ForwardBatch {
        tokens: &tokens,
        positions: &positions,
        seqs: &seqs,
        logit_rows: &[4, 9],
    };
    let allowed = [7u32, 11, (vocab - 1) as u32];
    let mut mask = vec![0u32; words];
    for &a in &allowed {
        mask[a as usize / 32] |= 1 << (a % 32);
    }
    let greedy = [RowSampling::Greedy, RowSampling::Greedy];
    let mut unmasked = Vec::new();
    for b in [&mut gpu as &mut dyn Backend, &mut cpu] {
        let mut plain = SampledStep::default();
        b.forward_sample(&batch, &greedy, &mut plain).unwrap();
        assert!(b.supports_masks());
        b.set_masks(&[(0, &mask)]).unwrap();
        let mut out = SampledStep::default();
        b.forward_sample(&batch, &greedy, &mut out).unwrap();
        assert!(
            allowed.contains(&out.tokens[0]),
            "{}: {}",
            b.name(),
            out.tokens[0]
        );
        assert_eq!(
            out.tokens[1],
            plain.tokens[1],
            "{}: row 1 has no mask",
            b.name()
        );
        // The next step has no masks again.
        let mut after = SampledStep::default();
        b.forward_sample(&batch, &greedy, &mut after).unwrap();
        assert_eq!(
            after.tokens,
            plain.tokens,
            "{}: masks outlived their step",
            b.name()
        );
        // A mask for a row the step does not have is refused, and forgotten.
        b.set_masks(&[(2, &mask)]).unwrap();
        assert!(b.forward_sample(&batch, &greedy, &mut out).is_err());
        b.forward_sample(&batch, &greedy, &mut out).unwrap();
        assert_eq!(out.tokens, plain.tokens, "{}", b.name());
        unmasked.push((out.tokens.clone(), plain.tokens.clone()));
    }
    // Unmasked, the GPU picks what the CPU picks.
    assert_eq!(unmasked[0], unmasked[1], "gpu vs cpu tokens");
    let mut picks = Vec::new();
    for b in [&mut gpu as &mut dyn Backend, &mut cpu] {
        b.set_masks(&[(0, &mask)]).unwrap();
        let mut out = SampledStep::default();
        b.forward_sample(&batch, &greedy, &mut out).unwrap();
        picks.push(out.tokens);
    }
    assert_eq!(picks[0], picks[1], "masked greedy: gpu vs cpu");

    // A decode step (the graph path) with masks given while the step runs:
    // forward_sample_masked asks for them once, and the picks follow them,
    // as on the CPU, replay after replay; without masks, as before.
    let (dt, dp) = ([60u32, 61], [5u32, 5]);
    let dseqs = [
        SeqSlice {
            token_start: 0,
            num_tokens: 1,
            block_table: &t0,
        },
        SeqSlice {
            token_start: 1,
            num_tokens: 1,
            block_table: &t1,
        },
    ];
    let decode = ForwardBatch {
        tokens: &dt,
        positions: &dp,
        seqs: &dseqs,
        logit_rows: &[0, 1],
    };
    let mut results = Vec::new();
    for b in [&mut gpu as &mut dyn Backend, &mut cpu] {
        let mut plain = SampledStep::default();
        b.forward_sample(&decode, &greedy, &mut plain).unwrap();
        let mut runs = Vec::new();
        for _ in 0..3 {
            let mut calls = 0;
            let mut masks = || {
                calls += 1;
                vec![(1usize, mask.clone())]
            };
            let mut out = SampledStep::default();
            b.forward_sample_masked(&decode, &greedy, &mut masks, &mut out)
                .unwrap();
            assert_eq!(calls, 1, "{}: masks asked for {calls} times", b.name());
            assert!(
                allowed.contains(&out.tokens[1]),
                "{}: {:?}",
                b.name(),
                out.tokens
            );
            assert_eq!(
                out.tokens[0],
                plain.tokens[0],
                "{}: row 0 has no mask",
                b.name()
            );
            runs.push(out.tokens);
        }
        assert!(
            runs.windows(2).all(|w| w[0] == w[1]),
            "{}: {runs:?}",
            b.name()
        );
        let mut after = SampledStep::default();
        b.forward_sample(&decode, &greedy, &mut after).unwrap();
        assert_eq!(
            after.tokens,
            plain.tokens,
            "{}: masks outlived their step",
            b.name()
        );
        // A mask for a row the step lacks fails the step.
        let mut bad = || vec![(2usize, mask.clone())];
        assert!(
            b.forward_sample_masked(&decode, &greedy, &mut bad, &mut after)
                .is_err()
        );
        results.push((plain.tokens, runs.swap_remove(0)));
    }
    assert_eq!(results[0], results[1], "decode under masks: gpu vs cpu");
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-tests.sh on the device"]
fn fused_decode_attention_matches_cpu() {
    let (s, mut k) = setup();
    let default_min_blocks = k.attention_min_blocks;
    let mut g = SplitMix64::new(25);
    let bs = 16usize;
    let max_ctx = 256usize;
    // Contexts of one position, inside one partition, at its edges and over several.
    let positions: Vec<u32> = vec![0, 5, 62, 63, 64, 129, 200];
    // Partitions launched for the batch's longest context, or for the model's.
    let longest = *positions.iter().max().unwrap() as usize + 1;
    // Blocks of one 64-position chunk (the default at these small grids), of
    // the whole context (a target of 1 block), and of 2-3 chunks (56).
    for (&(heads, kv_heads, hd), precision, batch_context, min_blocks) in
        [(4usize, 2usize, 32usize), (4, 4, 64), (6, 2, 128)]
            .iter()
            .flat_map(|shape| {
                [
                    (shape, Precision::Exact, longest),
                    (shape, Precision::Fast, longest),
                    (shape, Precision::Exact, max_ctx),
                    (shape, Precision::Fast, max_ctx),
                ]
            })
            .flat_map(|(shape, p, c)| [default_min_blocks, 1, 56].map(move |b| (shape, p, c, b)))
    {
        k.attention_min_blocks = min_blocks;
        let chunks = k.decode_part_chunks(positions.len(), heads, batch_context);
        let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
        let t = positions.len();
        let rope = RopeTable::new(hd, 10_000.0, max_ctx, 1.0);
        // Scattered blocks: sequence i owns blocks i, i + 7, i + 14, ...
        let max_blocks = max_ctx / bs;
        let tables: Vec<Vec<u32>> = (0..t)
            .map(|i| (0..max_blocks).map(|b| (i + t * b) as u32).collect())
            .collect();
        let num_blocks = t * max_blocks;
        let mut cpu_k = randn(&mut g, num_blocks * bs * kv_dim);
        let mut cpu_v = randn(&mut g, num_blocks * bs * kv_dim);
        let (k0, v0) = (cpu_k.clone(), cpu_v.clone());
        // The product as 3 K-split partial sums, and their sum in split
        // order from 0.0 (awq_reduce_partials_f32's): the kernel takes
        // either and must give the same bits.
        let splits = 3;
        let qkv_len = t * (q_dim + 2 * kv_dim);
        let parts = randn(&mut g, splits * qkv_len);
        let qkv: Vec<f32> = (0..qkv_len)
            .map(|i| (0..splits).fold(0.0f32, |a, sp| a + parts[sp * qkv_len + i]))
            .collect();
        let slots: Vec<u32> = positions
            .iter()
            .enumerate()
            .map(|(i, &p)| tables[i][p as usize / bs] * bs as u32 + p % bs as u32)
            .collect();
        let rows = |lo: usize, hi: usize| -> Vec<f32> {
            qkv.chunks(q_dim + 2 * kv_dim)
                .flat_map(|r| r[lo..hi].to_vec())
                .collect()
        };
        let mut q = rows(0, q_dim);
        let mut kr = rows(q_dim, q_dim + kv_dim);
        let vr = rows(q_dim + kv_dim, q_dim + 2 * kv_dim);
        rope.apply(&mut q, &positions, heads);
        rope.apply(&mut kr, &positions, kv_heads);
        for (i, &slot) in slots.iter().enumerate() {
            cpu_k[slot as usize * kv_dim..][..kv_dim].copy_from_slice(&kr[i * kv_dim..][..kv_dim]);
            cpu_v[slot as usize * kv_dim..][..kv_dim].copy_from_slice(&vr[i * kv_dim..][..kv_dim]);
        }
        if precision == Precision::Fast {
            // The reference attends over the cache as f16 holds it.
            cpu_k = f16_rounded(&cpu_k);
            cpu_v = f16_rounded(&cpu_v);
        }
        let table_refs: Vec<&[u32]> = tables.iter().map(|t| t.as_slice()).collect();
        let mut want = vec![0f32; t * q_dim];
        let shape = AttnShape {
            heads,
            kv_heads,
            head_dim: hd,
            block_size: bs,
        };
        cpu::paged_attention(
            &q,
            &cpu_k,
            &cpu_v,
            &table_refs,
            &positions,
            shape,
            &mut want,
        );

        let (cos, sin) = rope.tables();
        let (cd, sd) = (s.clone_htod(cos).unwrap(), s.clone_htod(sin).unwrap());
        let qkvd = s.clone_htod(&qkv).unwrap();
        let partsd = s.clone_htod(&parts).unwrap();
        let pd = s.clone_htod(&positions).unwrap();
        let sld = s.clone_htod(&slots).unwrap();
        let flat: Vec<u32> = tables.concat();
        let td = s.clone_htod(&flat).unwrap();
        let so: Vec<u32> = (0..t as u32).collect();
        let sod = s.clone_htod(&so).unwrap();
        let mut work = s
            .alloc_zeros::<f32>(Kernels::attention_work_len(t, heads, hd, max_ctx))
            .unwrap();
        let mut counters = s.alloc_zeros::<u32>(t * heads).unwrap();
        // An f16 cache may hold the neighbouring f16 of a k whose f32
        // rotation differed by rounding: one ulp (2^-11) of a few elements.
        let bound = if precision == Precision::Fast {
            1e-4
        } else {
            1e-6
        };
        let mut first = None;
        // The whole product, then its splits, each on a fresh cache (the
        // second launch also checks that the partition counters re-arm).
        for (input, n_splits) in [(&qkvd, 1), (&partsd, splits)] {
            let mut cache = KvCache::from_host(&s, precision, &k0, &v0).unwrap();
            let mut out = poisoned(&s, t * q_dim);
            k.paged_attention_decode(
                &s,
                &input.slice(..),
                n_splits,
                &pd.slice(..),
                &cd,
                &sd,
                &sld.slice(..),
                &mut cache,
                &td.slice(..),
                &sod.slice(..),
                &mut work,
                &mut counters,
                &mut out.slice_mut(..),
                (heads, kv_heads, hd),
                bs,
                max_blocks,
                max_ctx,
                batch_context,
            )
            .unwrap();
            let got = back(&s, &out, t * q_dim);
            let e = rel_err(&got, &want);
            eprintln!(
                "decode attention heads={heads}/{kv_heads} d={hd} {precision:?} context {batch_context}, {chunks} chunks a block, {n_splits} qkv splits: rel err {e:.2e}"
            );
            assert!(
                e < 1e-5,
                "decode attention d={hd} {precision:?}: rel err {e}"
            );
            let (gk, gv) = cache.to_host(&s).unwrap();
            assert!(rel_err(&gk, &cpu_k) < bound, "k cache, {n_splits} splits");
            assert!(rel_err(&gv, &cpu_v) < 1e-7, "v cache, {n_splits} splits");
            match &first {
                Some((f, fk, fv)) => assert!(
                    &got == f && &gk == fk && &gv == fv,
                    "the qkv splits give other bits than their sum"
                ),
                None => first = Some((got, gk, gv)),
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-tests.sh on the device"]
fn rope_kv_write_and_paged_attention_match_cpu() {
    // (precision, head_dim, tensor-core prefill attention on the f16 cache)
    for (precision, hd, mma) in [
        (Precision::Exact, 32, true),
        (Precision::Exact, 64, true),
        (Precision::Fast, 32, false),
        (Precision::Fast, 32, true),
        (Precision::Fast, 64, true),
        (Precision::Fast, 128, true),
    ] {
        rope_kv_write_and_paged_attention(precision, hd, mma);
    }
}

fn rope_kv_write_and_paged_attention(precision: Precision, hd: usize, prefill_mma: bool) {
    let (s, mut k) = setup();
    k.prefill_mma_on = prefill_mma;
    let mut g = SplitMix64::new(23);
    let (heads, kv_heads, bs) = (4usize, 2usize, 16usize);
    let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
    let num_blocks = 24;
    let rope = RopeTable::new(hd, 10_000.0, 128, 1.0);
    // Two sequences with scattered blocks: 100 prompt tokens of seq 0 (two
    // context partitions of 64), then one decode token of seq 1 at position 6
    // (its earlier K/V written first).
    let tables: Vec<Vec<u32>> = vec![vec![7, 2, 9, 15, 20, 11, 3], vec![4, 18]];
    let mut cpu_k = vec![0f32; num_blocks * bs * kv_dim];
    let mut cpu_v = cpu_k.clone();
    let mut cache = KvCache::from_host(&s, precision, &cpu_k, &cpu_v).unwrap();
    let round = |v: &[f32]| match precision {
        Precision::Exact => v.to_vec(),
        Precision::Fast => f16_rounded(v),
    };
    let (cos, sin) = rope.tables();
    let (cd, sd) = (s.clone_htod(cos).unwrap(), s.clone_htod(sin).unwrap());
    let mut run = |seq_ids: Vec<usize>,
                   positions: Vec<u32>,
                   cpu_k: &mut Vec<f32>,
                   cpu_v: &mut Vec<f32>| {
        let t = positions.len();
        let qkv = randn(&mut g, t * (q_dim + 2 * kv_dim));
        let slots: Vec<u32> = seq_ids
            .iter()
            .zip(&positions)
            .map(|(&si, &p)| tables[si][p as usize / bs] * bs as u32 + p % bs as u32)
            .collect();
        // CPU: rotate q and k, write k and v.
        let mut q: Vec<f32> = qkv
            .chunks(q_dim + 2 * kv_dim)
            .flat_map(|r| r[..q_dim].to_vec())
            .collect();
        let mut kr: Vec<f32> = qkv
            .chunks(q_dim + 2 * kv_dim)
            .flat_map(|r| r[q_dim..q_dim + kv_dim].to_vec())
            .collect();
        rope.apply(&mut q, &positions, heads);
        rope.apply(&mut kr, &positions, kv_heads);
        for (i, &slot) in slots.iter().enumerate() {
            let row = &qkv[i * (q_dim + 2 * kv_dim)..][..q_dim + 2 * kv_dim];
            cpu_k[slot as usize * kv_dim..][..kv_dim]
                .copy_from_slice(&round(&kr[i * kv_dim..][..kv_dim]));
            cpu_v[slot as usize * kv_dim..][..kv_dim]
                .copy_from_slice(&round(&row[q_dim + kv_dim..]));
        }
        let seq_of_tables: Vec<&[u32]> = seq_ids.iter().map(|&si| tables[si].as_slice()).collect();
        let mut want = vec![0f32; t * q_dim];
        cpu::paged_attention(
            &q,
            cpu_k,
            cpu_v,
            &seq_of_tables,
            &positions,
            AttnShape {
                heads,
                kv_heads,
                head_dim: hd,
                block_size: bs,
            },
            &mut want,
        );
        // GPU
        let qkvd = s.clone_htod(&qkv).unwrap();
        let pd = s.clone_htod(&positions).unwrap();
        let sld = s.clone_htod(&slots).unwrap();
        let mut qd = poisoned(&s, t * q_dim);
        k.rope_kv_write(
            &s,
            &qkvd.slice(..),
            &pd.slice(..),
            &cd,
            &sd,
            &sld.slice(..),
            &mut qd.slice_mut(..),
            &mut cache,
            (heads, kv_heads, hd),
        )
        .unwrap();
        assert!(rel_err(&back(&s, &qd, t * q_dim), &q) < 1e-6, "rotated q");
        let max_blocks = 7;
        let flat: Vec<u32> = tables
            .iter()
            .flat_map(|t| {
                let mut r = t.clone();
                r.resize(max_blocks, 0);
                r
            })
            .collect();
        let td = s.clone_htod(&flat).unwrap();
        let so: Vec<u32> = seq_ids.iter().map(|&x| x as u32).collect();
        let sod = s.clone_htod(&so).unwrap();
        let mut work = s
            .alloc_zeros::<f32>(Kernels::attention_work_len(t, heads, hd, 128))
            .unwrap();
        // Query tiles as the backend builds them (up to 16 consecutive tokens
        // of one sequence sharing K/V loads), then one token per tile.
        let mut seqs = Vec::new();
        let mut first = 0;
        while first < t {
            let si = seq_ids[first];
            let n = seq_ids[first..].iter().take_while(|&&x| x == si).count();
            seqs.push(SeqSlice {
                token_start: first,
                num_tokens: n,
                block_table: &tables[si],
            });
            first += n;
        }
        let mut grouped = Vec::new();
        Kernels::attention_tiles(&seqs, &positions, &mut grouped);
        let single: Vec<u32> = (0..t as u32).flat_map(|i| [i, 1]).collect();
        let tensor_cores = prefill_mma && precision == Precision::Fast;
        // Partitions launched for the batch's longest context, or for the
        // model's (what a captured graph uses).
        let longest = *positions.iter().max().unwrap() as usize + 1;
        for (tiles, batch_context) in [
            (grouped.clone(), longest),
            (single, longest),
            (grouped, 128),
        ] {
            let tiled = s.clone_htod(&tiles).unwrap();
            let mut out = poisoned(&s, t * q_dim);
            k.paged_attention(
                &s,
                &qd.slice(..),
                &mut cache,
                &td.slice(..),
                &sod.slice(..),
                &pd.slice(..),
                &tiled.slice(..),
                &mut work,
                &mut out.slice_mut(..),
                (heads, kv_heads, hd),
                bs,
                max_blocks,
                128,
                batch_context,
            )
            .unwrap();
            let e = rel_err(&back(&s, &out, t * q_dim), &want);
            eprintln!(
                "tiled attention {precision:?} d={hd} mma {tensor_cores}, {t} tokens in {} tiles, context {batch_context}: rel err {e:.2e}",
                tiles.len() / 2
            );
            // The tensor-core kernel takes q and the softmax weights as f16
            // too (the reference keeps them f32): up to 2.3e-4 measured on
            // an H200 (2026-12-02).
            let bound = if tensor_cores { 1e-3 } else { 1e-5 };
            assert!(
                e < bound,
                "attention d={hd} mma {tensor_cores}: rel err {e} ({} tiles)",
                tiles.len() / 2
            );
        }
    };
    run(vec![1; 6], (0..6).collect(), &mut cpu_k, &mut cpu_v);
    let mut ids = vec![0usize; 100];
    ids.push(1);
    let mut pos: Vec<u32> = (0..100).collect();
    pos.push(6);
    run(ids, pos, &mut cpu_k, &mut cpu_v);
    // A later chunk of seq 0's prompt (positions 100..111) with two decode
    // tokens of seq 1 around it.
    let mut ids = vec![1usize];
    ids.extend([0usize; 12]);
    let mut pos: Vec<u32> = vec![7];
    pos.extend(100..112);
    ids.push(1);
    pos.push(8);
    run(ids, pos, &mut cpu_k, &mut cpu_v);
    // The caches themselves agree too.
    let bound = if precision == Precision::Fast {
        1e-4
    } else {
        1e-6
    };
    let (gk, gv) = cache.to_host(&s).unwrap();
    assert!(rel_err(&gk, &cpu_k) < bound);
    assert!(rel_err(&gv, &cpu_v) < 1e-7);
}

fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    lhama_model::synth::write_model(lhama_model::synth::Preset::Tiny, 0, dir.path()).unwrap();
    dir
}

/// tests/goldens/tiny.json, from the repository root (where the carried test
/// binary runs on the device) or from this crate's manifest.
fn golden_path() -> std::path::PathBuf {
    let from_root = std::path::PathBuf::from("tests/goldens/tiny.json");
    if from_root.exists() {
        return from_root;
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/goldens/tiny.json")
}

/// Greedy steps of every golden prompt the fast path must reproduce.
const FAST_GREEDY_STEPS: usize = 32;
/// The fast path's bound on |Δ logprob| of the reference's top 5 tokens.
const FAST_TOP5_NATS: f32 = 0.05;

/// Compares the CUDA backend with the CPU backend and a golden file: on the
/// exact path within 1e-3 of every logit, all greedy tokens identical; on
/// the fast path within the fidelity budget (top-5 logprobs within 0.05
/// nats, the first 32 greedy tokens identical).
fn check_model(dir: &std::path::Path, golden: &std::path::Path, precision: Precision) {
    let files = ModelFiles::load(dir).unwrap();
    let opts = CudaOptions {
        kv_cache_tokens: Some(8192),
        // The long-context golden prompt (about 1,500 tokens) in one pass.
        max_batch_tokens: 2048,
        max_seqs: 16,
        precision,
        ..CudaOptions::default()
    };
    let fast = precision == Precision::Fast;
    let mut gpu = CudaBackend::new(&files.config, &files.weights, &opts).unwrap();
    let mut cpu = CpuBackend::new(
        &files.config,
        files.weights.clone(),
        KvGeometry {
            num_blocks: 512,
            block_size: 16,
        },
    );
    let vocab = files.config.vocab_size as u32;
    let prompt: Vec<u32> = std::iter::once(1)
        .chain((1..40u32).map(|i| 3 + (i * 131) % (vocab - 3)))
        .collect();
    let a = prompt_logits(&mut gpu, &prompt).unwrap();
    let b = prompt_logits(&mut cpu, &prompt).unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let v = files.config.vocab_size;
    let top5 = a
        .chunks(v)
        .zip(b.chunks(v))
        .map(|(x, y)| lhama_model::golden::top_logprob_diff(x, y, 5))
        .fold(0f32, f32::max);
    println!(
        "{} {precision:?}: max |gpu - cpu| logit = {diff:e}, top-5 logprob {top5:e}",
        dir.display()
    );
    if fast {
        assert!(top5 <= FAST_TOP5_NATS, "gpu vs cpu top-5 logprobs: {top5}");
    } else {
        assert!(diff <= 1e-3, "gpu vs cpu logits differ by {diff}");
    }
    let g = Golden::from_file(golden).unwrap();
    let report = compare(&mut gpu, &files.tokenizer, &g).unwrap();
    println!(
        "{} {precision:?}: gpu vs transformers: {}",
        dir.display(),
        serde_report(&report)
    );
    if fast {
        assert!(
            report.max_top5_logprob_diff <= FAST_TOP5_NATS,
            "top-5 logprobs differ by {}",
            report.max_top5_logprob_diff
        );
        for (prefix, p) in report.greedy_matching_prefix.iter().zip(&g.prompts) {
            assert!(
                *prefix >= FAST_GREEDY_STEPS.min(p.greedy.len()),
                "greedy prefixes {:?}",
                report.greedy_matching_prefix
            );
        }
    } else {
        assert!(
            report.max_abs_logit_diff <= 1e-3,
            "{}",
            report.max_abs_logit_diff
        );
        assert_eq!(
            report.greedy_mismatches, 0,
            "{:?}",
            report.greedy_matching_prefix
        );
    }

    // The prompt batched with a decode token of another sequence at
    // scattered blocks gives the same logits, up to rounding.
    let other: Vec<u32> = (0..20u32).map(|i| 3 + i).collect();
    let t_other: Vec<u32> = vec![200, 201];
    let mut logits = Vec::new();
    gpu.forward(
        &ForwardBatch {
            tokens: &other[..19],
            positions: &(0..19).collect::<Vec<_>>(),
            seqs: &[SeqSlice {
                token_start: 0,
                num_tokens: 19,
                block_table: &t_other,
            }],
            logit_rows: &[],
        },
        &mut logits,
    )
    .unwrap();
    let t_prompt: Vec<u32> = vec![300, 150, 77];
    let mut tokens = vec![other[19]];
    tokens.extend(&prompt);
    let mut positions = vec![19u32];
    positions.extend(0..prompt.len() as u32);
    let seqs = [
        SeqSlice {
            token_start: 0,
            num_tokens: 1,
            block_table: &t_other,
        },
        SeqSlice {
            token_start: 1,
            num_tokens: prompt.len(),
            block_table: &t_prompt,
        },
    ];
    let rows: Vec<u32> = (1..=prompt.len() as u32).collect();
    gpu.forward(
        &ForwardBatch {
            tokens: &tokens,
            positions: &positions,
            seqs: &seqs,
            logit_rows: &rows,
        },
        &mut logits,
    )
    .unwrap();
    // The GPU picks its GEMV kernel by rows per chunk (8, 4, 2, 1), whose
    // summation orders differ, so batching changes logits by rounding only.
    let diff = logits
        .iter()
        .zip(&a)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    // The fast path rounds activations to f16 in the tensor-core GEMM but
    // not in the GEMV, so there batching moves logits further.
    let bound = if fast { 5e-2 } else { 1e-4 };
    assert!(
        diff <= bound,
        "GPU logits of a prompt changed by {diff} when batched"
    );

    // A decode step of both sequences, sampled on the GPU: greedy and drawn
    // rows give the tokens the host definition picks from the same step's
    // logits (re-running a step rewrites the same K/V), a logits row its logits.
    let decode_tokens = [5u32, 9];
    let decode_pos = [20u32, prompt.len() as u32];
    let decode_seqs = [
        SeqSlice {
            token_start: 0,
            num_tokens: 1,
            block_table: &t_other,
        },
        SeqSlice {
            token_start: 1,
            num_tokens: 1,
            block_table: &t_prompt,
        },
    ];
    let decode = ForwardBatch {
        tokens: &decode_tokens,
        positions: &decode_pos,
        seqs: &decode_seqs,
        logit_rows: &[0, 1],
    };
    gpu.forward(&decode, &mut logits).unwrap();
    let draw = lhama_model::DrawParams {
        temperature: 0.8,
        top_k: 50,
        top_p: 0.95,
        min_p: 0.0,
        u: 0.37,
    };
    let mut scratch = Vec::new();
    for how in [
        [RowSampling::Greedy, RowSampling::Draw(draw)],
        [RowSampling::Draw(draw), RowSampling::Logits],
    ] {
        let mut out = SampledStep::default();
        gpu.forward_sample(&decode, &how, &mut out).unwrap();
        for (i, h) in how.iter().enumerate() {
            let row = &logits[i * v..(i + 1) * v];
            match lhama_model::sampling::sample_row(row, h, &mut scratch) {
                Some(want) => assert_eq!(out.tokens[i], want, "row {i}: {h:?}"),
                None => assert_eq!(&out.logits[i * v..(i + 1) * v], row),
            }
        }
    }
}

fn serde_report(r: &lhama_model::golden::Report) -> String {
    format!(
        "max |logit diff| {:e} (max |logit| {}), max top-5 |logprob diff| {:e}, greedy {:?}/{} , chat mismatches {}",
        r.max_abs_logit_diff,
        r.max_abs_logit,
        r.max_top5_logprob_diff,
        r.greedy_matching_prefix,
        r.greedy_steps,
        r.chat_mismatches.len()
    )
}

#[test]
#[ignore = "needs a CUDA GPU: run scripts/gpu-tests.sh on the device"]
fn tiny_model_matches_cpu_and_transformers() {
    let dir = model_dir();
    for precision in [Precision::Exact, Precision::Fast] {
        check_model(dir.path(), &golden_path(), precision);
    }
}

/// The ttl-460m preset, when scripts/gpu-tests.sh has written it and its
/// golden (LHAMA_TTL_MODEL, LHAMA_TTL_GOLDEN).
#[test]
#[ignore = "needs a CUDA GPU and the ttl-460m model: run scripts/gpu-tests.sh on the device"]
fn ttl460m_matches_cpu_and_transformers() {
    let model = std::env::var("LHAMA_TTL_MODEL").expect("LHAMA_TTL_MODEL");
    let golden = std::env::var("LHAMA_TTL_GOLDEN").expect("LHAMA_TTL_GOLDEN");
    for precision in [Precision::Exact, Precision::Fast] {
        check_model(
            std::path::Path::new(&model),
            std::path::Path::new(&golden),
            precision,
        );
    }
}

#[test]
fn without_a_device_the_backend_says_why() {
    // Runs everywhere: on a machine without the driver (CI) this is the
    // start-up error a user sees; on the device it must succeed.
    match lhama_cuda::probe() {
        Ok((name, major, minor)) => assert!(major >= 8, "{name} {major}.{minor}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("driver") || msg.contains("device") || msg.contains("capability"),
                "{msg}"
            );
        }
    }
}
