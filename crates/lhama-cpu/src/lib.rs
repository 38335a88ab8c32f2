//! The CPU backend: the whole Llama forward pass in f32 over AWQ-packed (or
//! dense) weights, with K/V in a paged block pool. It is the reference every
//! other backend is checked against.

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod int8;
pub mod isa;
pub mod kernels;
mod mem;

use half::f16;

use kernels::{AttnShape, AwqMatrix, RopeTable};
use lhama_model::RowSampling;
use lhama_model::backend::{
    Backend, BackendError, ForwardBatch, KvGeometry, SampledStep, check_masks, check_sampling,
    sample_on_host,
};
use lhama_model::config::LlamaConfig;
use lhama_model::weights::{AwqWeights, FusedAwq, LinearWeights, LlamaWeights};

/// Tokens the layers take at a time in one forward pass (`CpuBackend::run`).
const STEP_TOKENS: usize = 128;

/// A linear layer as the CPU kernels take it.
enum CpuLinear {
    Awq(AwqMatrix),
    /// torch layout [N, K]
    Dense {
        k: usize,
        n: usize,
        w: Vec<f32>,
    },
}

impl CpuLinear {
    /// Builds one layer computing several of the checkpoint's layers side by
    /// side (q|k|v, gate|up): their outputs are concatenated along N.
    fn fused(parts: &[&LinearWeights], fast: bool) -> Self {
        let k = parts[0].in_features();
        let n: usize = parts.iter().map(|p| p.out_features()).sum();
        match parts[0] {
            LinearWeights::Awq(_) => {
                let awqs: Vec<&AwqWeights> = parts
                    .iter()
                    .map(|p| match p {
                        LinearWeights::Awq(a) => a,
                        LinearWeights::Dense { .. } => {
                            unreachable!(
                                "a checkpoint is either all AWQ or all dense (config decides)"
                            )
                        }
                    })
                    .collect();
                let w = FusedAwq::new(&awqs);
                CpuLinear::Awq(if fast {
                    AwqMatrix::with_int8(w)
                } else {
                    AwqMatrix::new(w)
                })
            }
            LinearWeights::Dense { .. } => {
                let mut w = Vec::with_capacity(k * n);
                for p in parts {
                    match p {
                        LinearWeights::Dense { weight, .. } => w.extend_from_slice(weight),
                        LinearWeights::Awq(_) => {
                            unreachable!(
                                "a checkpoint is either all AWQ or all dense (config decides)"
                            )
                        }
                    }
                }
                CpuLinear::Dense { k, n, w }
            }
        }
    }

    fn out_features(&self) -> usize {
        match self {
            Self::Awq(a) => a.n,
            Self::Dense { n, .. } => *n,
        }
    }

    /// y[M, N] = x[M, K] · W (every kernel writes all of y, so a buffer
    /// already of that length is not zeroed first).
    fn forward(&self, x: &[f32], m: usize, y: &mut Vec<f32>) {
        y.resize(m * self.out_features(), 0.0);
        match self {
            Self::Awq(a) => kernels::awq_matmul(x, m, a, y),
            Self::Dense { k, n, w } => kernels::dense_matmul(x, m, w, *k, *n, y),
        }
    }
}

struct CpuLayer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    /// q | k | v
    qkv: CpuLinear,
    o: CpuLinear,
    /// gate | up
    gate_up: CpuLinear,
    down: CpuLinear,
    /// [blocks, block_size, kv_heads, head_dim] each
    kv: KvStore,
}

/// A layer's K and V caches: f32 on the exact path, f16 on the fast one
/// (half the bytes; attention widens them as it reads). The f16 caches are
/// held as their bits, so that the pool is allocated zeroed (its pages
/// touched only when used, as for the f32 one).
enum KvStore {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<u16>, v: Vec<u16> },
}

impl KvStore {
    fn new(len: usize, fast: bool) -> Self {
        fn zeroed<T: Clone + Default>(len: usize) -> Vec<T> {
            let mut v = vec![T::default(); len];
            mem::advise_vec(&mut v);
            v
        }
        if fast {
            Self::F16 {
                k: zeroed(len),
                v: zeroed(len),
            }
        } else {
            Self::F32 {
                k: zeroed(len),
                v: zeroed(len),
            }
        }
    }

    /// Writes one token's K and V rows (kv_dim each) at element `at`.
    fn write(&mut self, at: usize, k_row: &[f32], v_row: &[f32]) {
        use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
        match self {
            Self::F32 { k, v } => {
                k[at..][..k_row.len()].copy_from_slice(k_row);
                v[at..][..v_row.len()].copy_from_slice(v_row);
            }
            Self::F16 { k, v } => {
                k[at..][..k_row.len()]
                    .reinterpret_cast_mut::<f16>()
                    .convert_from_f32_slice(k_row);
                v[at..][..v_row.len()]
                    .reinterpret_cast_mut::<f16>()
                    .convert_from_f32_slice(v_row);
            }
        }
    }
}

pub struct CpuBackend {
    config: LlamaConfig,
    /// [vocab, hidden]
    embed: Vec<f16>,
    layers: Vec<CpuLayer>,
    norm: Vec<f32>,
    /// [vocab, hidden]
    lm_head: Vec<f16>,
    rope: RopeTable,
    kv: KvGeometry,
    /// Token masks for the next forward_sample (Backend::set_masks).
    masks: Vec<(usize, Vec<u32>)>,
    /// The step buffers, kept between steps: a long prompt's are tens of
    /// MB, which freed and allocated again each step came back as fresh
    /// pages the kernel faulted in and zeroed (a tenth of a 1,024-token
    /// prefill).
    scratch: Scratch,
}

/// Per-step buffers, named by what they hold.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    q: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
    k_rows: Vec<f32>,
}

impl CpuBackend {
    /// Prepares the weights for the CPU kernels and allocates a KV pool of
    /// `kv.num_blocks` blocks of `kv.block_size` tokens: the exact path.
    pub fn new(config: &LlamaConfig, weights: LlamaWeights, kv: KvGeometry) -> Self {
        Self::with_precision(config, weights, kv, false)
    }

    /// As `new`; with `fast`, every AWQ product takes int16 activations
    /// against re-laid int4 weights (crate::int8), prefill included, K/V are
    /// held as f16 and attention runs in 512-bit vectors where the CPU has
    /// them (crate::attention).
    pub fn with_precision(
        config: &LlamaConfig,
        weights: LlamaWeights,
        kv: KvGeometry,
        fast: bool,
    ) -> Self {
        let kv_len = kv.num_blocks * kv.block_size * config.num_kv_heads * config.head_dim;
        let lm_head = weights.lm_head().to_vec();
        let layers = weights
            .layers
            .into_iter()
            .map(|l| CpuLayer {
                qkv: CpuLinear::fused(&[&l.q_proj, &l.k_proj, &l.v_proj], fast),
                o: CpuLinear::fused(&[&l.o_proj], fast),
                gate_up: CpuLinear::fused(&[&l.gate_proj, &l.up_proj], fast),
                down: CpuLinear::fused(&[&l.down_proj], fast),
                input_norm: l.input_layernorm,
                post_norm: l.post_attention_layernorm,
                kv: KvStore::new(kv_len, fast),
            })
            .collect();
        Self {
            rope: RopeTable::for_config(config),
            config: config.clone(),
            embed: weights.embed_tokens,
            layers,
            norm: weights.norm,
            lm_head,
            kv,
            masks: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    /// Bytes the KV pool of `num_blocks` blocks takes on this backend (f16
    /// on the fast path, f32 on the exact one).
    pub fn kv_bytes(config: &LlamaConfig, kv: KvGeometry, fast: bool) -> usize {
        2 * config.num_layers
            * kv.num_blocks
            * kv.block_size
            * config.num_kv_heads
            * config.head_dim
            * if fast {
                std::mem::size_of::<f16>()
            } else {
                std::mem::size_of::<f32>()
            }
    }

    fn run(&mut self, batch: &ForwardBatch<'_>, logits: &mut Vec<f32>) {
        let (hidden, vocab) = (self.config.hidden_size, self.config.vocab_size);
        let eps = self.config.rms_norm_eps as f32;
        let t = batch.tokens.len();
        let mut s = std::mem::take(&mut self.scratch);

        // Block table of each token's sequence: [T]
        let mut seq_of: Vec<&[u32]> = Vec::with_capacity(t);
        for seq in batch.seqs {
            seq_of.extend(std::iter::repeat_n(seq.block_table, seq.num_tokens));
        }

        // The layers in runs of at most STEP_TOKENS tokens, each run's K/V
        // written before the next reads them: a long prompt's activations
        // (about 80 KB a token for ttl-460m) then stay in cache between the
        // products instead of going out to memory and back. Every row's
        // numbers are the same whatever the runs (the kernels' batch
        // invariance).
        let r = batch.logit_rows.len();
        let mut rows = vec![0f32; r * hidden];
        for t0 in (0..t).step_by(STEP_TOKENS) {
            let t1 = (t0 + STEP_TOKENS).min(t);
            self.layers_over(
                &batch.tokens[t0..t1],
                &batch.positions[t0..t1],
                &seq_of[t0..t1],
                &mut s,
            );
            for (j, &i) in batch.logit_rows.iter().enumerate() {
                let i = i as usize;
                if (t0..t1).contains(&i) {
                    rows[j * hidden..][..hidden]
                        .copy_from_slice(&s.x[(i - t0) * hidden..][..hidden]);
                }
            }
        }

        // Final norm and lm_head only for the rows whose logits are wanted.
        let mut normed = vec![0f32; r * hidden];
        kernels::rms_norm(&rows, &self.norm, eps, &mut normed);
        logits.clear();
        logits.resize(r * vocab, 0.0);
        kernels::dense_matmul_f16(&normed, r, &self.lm_head, hidden, vocab, logits);
        self.scratch = s;
    }

    /// Every layer over `tokens` (at `positions`, of the sequences whose
    /// block tables `seq_of` gives), leaving their hidden states in `s.x`
    /// and their K/V in the caches.
    fn layers_over(
        &mut self,
        tokens: &[u32],
        positions: &[u32],
        seq_of: &[&[u32]],
        s: &mut Scratch,
    ) {
        let cfg = &self.config;
        let (hidden, hd) = (cfg.hidden_size, cfg.head_dim);
        let (heads, kv_heads) = (cfg.num_heads, cfg.num_kv_heads);
        let (q_dim, kv_dim) = (heads * hd, kv_heads * hd);
        let inter = cfg.intermediate_size;
        let eps = cfg.rms_norm_eps as f32;
        let bs = self.kv.block_size;
        let t = tokens.len();

        // x: [T, hidden] embedding rows
        s.x.clear();
        s.x.reserve(t * hidden);
        for &tok in tokens {
            s.x.extend(
                self.embed[tok as usize * hidden..][..hidden]
                    .iter()
                    .map(|v| v.to_f32()),
            );
        }
        s.h.resize(t * hidden, 0.0);
        s.q.resize(t * q_dim, 0.0);
        s.attn.resize(t * q_dim, 0.0);
        s.act.resize(t * inter, 0.0);

        for layer in &mut self.layers {
            kernels::rms_norm(&s.x, &layer.input_norm, eps, &mut s.h);
            layer.qkv.forward(&s.h, t, &mut s.qkv); // [T, q_dim + 2 kv_dim]
            // Split q | k | v; rotate q and k; write k and v into their slots.
            let k_rows = &mut s.k_rows;
            k_rows.resize(t * kv_dim, 0.0);
            for (i, row) in s.qkv.chunks_exact(q_dim + 2 * kv_dim).enumerate() {
                s.q[i * q_dim..][..q_dim].copy_from_slice(&row[..q_dim]);
                k_rows[i * kv_dim..][..kv_dim].copy_from_slice(&row[q_dim..q_dim + kv_dim]);
            }
            self.rope.apply(&mut s.q, positions, heads);
            self.rope.apply(k_rows, positions, kv_heads);
            for (i, row) in s.qkv.chunks_exact(q_dim + 2 * kv_dim).enumerate() {
                let p = positions[i] as usize;
                let slot = (seq_of[i][p / bs] as usize * bs + p % bs) * kv_dim;
                layer.kv.write(
                    slot,
                    &k_rows[i * kv_dim..][..kv_dim],
                    &row[q_dim + kv_dim..],
                );
            }
            let shape = AttnShape {
                heads,
                kv_heads,
                head_dim: hd,
                block_size: bs,
            };
            match &layer.kv {
                KvStore::F32 { k, v } => {
                    kernels::paged_attention(&s.q, k, v, seq_of, positions, shape, &mut s.attn)
                }
                KvStore::F16 { k, v } => attention::paged_attention_fast(
                    &s.q,
                    half::slice::HalfBitsSliceExt::reinterpret_cast(k.as_slice()),
                    half::slice::HalfBitsSliceExt::reinterpret_cast(v.as_slice()),
                    seq_of,
                    positions,
                    shape,
                    &mut s.attn,
                ),
            }
            layer.o.forward(&s.attn, t, &mut s.proj);
            add_in_place(&mut s.x, &s.proj);

            kernels::rms_norm(&s.x, &layer.post_norm, eps, &mut s.h);
            layer.gate_up.forward(&s.h, t, &mut s.gate_up);
            kernels::silu_mul(&s.gate_up, inter, &mut s.act);
            layer.down.forward(&s.act, t, &mut s.proj);
            add_in_place(&mut s.x, &s.proj);
        }
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn kv_geometry(&self) -> KvGeometry {
        self.kv
    }

    fn forward(
        &mut self,
        batch: &ForwardBatch<'_>,
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        batch.validate(&self.config, self.kv)?;
        if batch.tokens.is_empty() {
            logits.clear();
            return Ok(());
        }
        // The whole pass runs on one of the pool's workers: each product's
        // parallel region then starts from inside the pool instead of being
        // injected from this thread, which would sleep on a latch and be
        // woken for every one of the ~120 regions of a step.
        rayon::scope(|_| self.run(batch, logits));
        Ok(())
    }

    fn forward_sample(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
        out: &mut SampledStep,
    ) -> Result<(), BackendError> {
        // The masks apply to this step only, whatever happens to it.
        let masks = std::mem::take(&mut self.masks);
        check_sampling(batch, sampling)?;
        check_masks(&masks, batch.logit_rows.len())?;
        self.forward(batch, &mut out.logits)?;
        sample_on_host(self.config.vocab_size, sampling, &masks, out);
        Ok(())
    }

    fn supports_masks(&self) -> bool {
        true
    }

    fn set_masks(&mut self, masks: &[(usize, &[u32])]) -> Result<(), BackendError> {
        self.masks = masks.iter().map(|&(r, w)| (r, w.to_vec())).collect();
        Ok(())
    }
}

/// Sets the number of worker threads the CPU kernels use (once, before the
/// first forward pass).
pub fn set_threads(n: usize) -> Result<(), String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| e.to_string())
}

/// Worker threads the CPU kernels run on.
pub fn threads() -> usize {
    rayon::current_num_threads()
}
