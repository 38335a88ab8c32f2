//! The CUDA backend: weights, KV cache and every per-step buffer allocated
//! once on the GPU; a step uploads the batch's small index arrays, runs the
//! kernels on one stream and copies back only the requested logits.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView};
use half::f16;
use lhama_model::backend::{check_masks, check_sampling};
use lhama_model::rope::RopeTable;
use lhama_model::weights::{AwqWeights, FusedAwq, LinearWeights, LlamaWeights};
use lhama_model::{
    Backend, BackendError, ForwardBatch, KvGeometry, LlamaConfig, RowSampling, SampledStep,
};

use crate::CudaError;
use crate::kernels::{GpuAwq, Kernels, KvCache, Precision, SAMPLE_PARAM_WORDS, sample_params};

#[derive(Debug, Clone)]
pub struct CudaOptions {
    pub device: usize,
    /// Fraction of the GPU's memory lhama may take (weights, KV cache, buffers).
    pub gpu_memory_utilization: f64,
    /// Most tokens one forward step takes.
    pub max_batch_tokens: usize,
    /// Most sequences one step takes.
    pub max_seqs: usize,
    /// KV cache size in tokens; None = all the memory budget leaves.
    pub kv_cache_tokens: Option<usize>,
    pub block_size: usize,
    /// Exact (f32 datapath) or fast (f16 KV cache and tensor-core inputs).
    pub precision: Precision,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            device: 0,
            gpu_memory_utilization: 0.9,
            max_batch_tokens: 2048,
            max_seqs: 256,
            kv_cache_tokens: None,
            block_size: 16,
            precision: Precision::default(),
        }
    }
}

struct GpuLayer {
    input_norm: CudaSlice<f32>,
    post_norm: CudaSlice<f32>,
    qkv: GpuAwq,
    o: GpuAwq,
    gate_up: GpuAwq,
    down: GpuAwq,
    /// [blocks * block_size, kv_heads, head_dim] each
    kv: KvCache,
}

/// Per-step device buffers, sized for `max_batch_tokens` / `max_seqs`.
struct Workspace {
    /// [T, hidden] residual stream
    x: CudaSlice<f32>,
    /// [T, hidden] normed
    h: CudaSlice<f32>,
    /// [T, q + 2 kv]
    qkv: CudaSlice<f32>,
    /// [T, q]
    q: CudaSlice<f32>,
    /// [T, q]
    attn: CudaSlice<f32>,
    /// [T, hidden] o_proj / down_proj output
    proj: CudaSlice<f32>,
    /// [T, 2 inter]
    gate_up: CudaSlice<f32>,
    /// [T, inter]
    act: CudaSlice<f32>,
    partial: CudaSlice<f32>,
    /// GEMV tile counters (zero between launches)
    counters: CudaSlice<u32>,
    /// [T, heads, context partitions, head_dim + 2]
    attn_work: CudaSlice<f32>,
    /// [T, heads] decode attention's partition counters (zero between launches)
    attn_counters: CudaSlice<u32>,
    /// [T, vocab]
    logits: CudaSlice<f32>,
    tokens: CudaSlice<u32>,
    positions: CudaSlice<u32>,
    slots: CudaSlice<u32>,
    seq_of: CudaSlice<u32>,
    /// [T, 2] prefill attention's query tiles (first token, count)
    tiles: CudaSlice<u32>,
    /// [max_seqs, max_blocks]
    tables: CudaSlice<u32>,
    rows: CudaSlice<u32>,
    /// [T, SAMPLE_PARAM_WORDS] how each logit row becomes a token
    sample_params: CudaSlice<u32>,
    /// [T] the sampled tokens
    sampled: CudaSlice<u32>,
    /// [T, mask words] token masks of the step's rows (structured output),
    /// allocated at the first masked step, at full size so that graphs
    /// captured with it stay valid.
    masks: Option<CudaSlice<u32>>,
}

pub struct CudaBackend {
    config: LlamaConfig,
    device_name: String,
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    /// [vocab, hidden]
    embed: CudaSlice<f16>,
    /// [vocab, hidden]; None when tied to `embed`.
    lm_head: Option<CudaSlice<f16>>,
    norm: CudaSlice<f32>,
    layers: Vec<GpuLayer>,
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    kv: KvGeometry,
    max_batch_tokens: usize,
    max_seqs: usize,
    max_blocks: usize,
    ws: Workspace,
    /// Decode steps (one token per sequence, every row's logits) replay a
    /// CUDA graph captured once per batch size and count of context
    /// partitions (attention's grid), with or without token masks: no
    /// per-kernel launch cost.
    graphs: std::collections::HashMap<(usize, usize, bool), Graph>,
    use_graphs: bool,
    /// Steps of 1-2 tokens feed silu(gate) * up to the down projection's
    /// GEMV directly (LHAMA_CUDA_FUSED_SILU=0 launches silu_mul first, for
    /// comparisons).
    fused_silu: bool,
    /// Decode attention fuses rotary embedding and the K/V write
    /// (LHAMA_CUDA_FUSED_DECODE=0 turns it off, for comparisons).
    fused_decode: bool,
    // Host staging, reused every step.
    host_slots: Vec<u32>,
    host_seq_of: Vec<u32>,
    /// (first token, count) query tiles of the uploaded batch, as on the device.
    host_tiles: Vec<u32>,
    /// Longest context (last position + 1) of the uploaded batch.
    host_context: usize,
    host_tables: Vec<u32>,
    host_params: Vec<u32>,
    host_masks: Vec<u32>,
    /// Masks set for the next forward_sample (Backend::set_masks).
    pending_masks: Vec<(usize, Vec<u32>)>,
    /// `forward` asks for every row's logits.
    all_logits: Vec<RowSampling>,
}

fn awq_parts<'a>(parts: &[&'a LinearWeights]) -> Result<Vec<&'a AwqWeights>, CudaError> {
    parts
        .iter()
        .map(|p| match p {
            LinearWeights::Awq(a) => Ok(a),
            LinearWeights::Dense { .. } => Err(CudaError::Unsupported(
                "only AWQ (GEMM) checkpoints run on the CUDA backend for now".into(),
            )),
        })
        .collect()
}

const MIB: usize = 1 << 20;

/// A captured decode step.
struct Graph(cudarc::driver::CudaGraph);

// SAFETY: CUDA graphs must not be used from two threads at once; a graph is
// only reached through `&mut CudaBackend`, so one thread at a time uses it
// (the backend moves to the engine thread and stays there).
unsafe impl Send for Graph {}

impl CudaBackend {
    pub fn new(
        config: &LlamaConfig,
        weights: &LlamaWeights,
        opts: &CudaOptions,
    ) -> Result<Self, CudaError> {
        let (name, _, _) = crate::probe()?;
        let awq = config
            .awq
            .ok_or_else(|| CudaError::Unsupported("the checkpoint is not AWQ-quantized".into()))?;
        if awq.group_size % 32 != 0 {
            return Err(CudaError::Unsupported(format!(
                "AWQ group size {} is not a multiple of 32",
                awq.group_size
            )));
        }
        if config.head_dim > 128 || !config.head_dim.is_multiple_of(32) {
            return Err(CudaError::Unsupported(format!(
                "head_dim {} must be a multiple of 32, at most 128",
                config.head_dim
            )));
        }
        if !config.hidden_size.is_multiple_of(8) {
            return Err(CudaError::Unsupported(format!(
                "hidden_size {} is not a multiple of 8",
                config.hidden_size
            )));
        }
        let ctx = CudaContext::new(opts.device)?;
        // One stream does everything: cudarc's per-buffer event tracking would only add work.
        // SAFETY: no buffer of this context is ever used from a second stream.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: the legacy default stream cannot be captured into graphs.
        let stream = ctx.new_stream()?;
        let mut k = Kernels::load(&ctx)?;
        k.precision = opts.precision;

        let (hidden, inter, vocab) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let q_dim = config.num_heads * config.head_dim;
        let kv_dim = config.num_kv_heads * config.head_dim;
        let t = opts.max_batch_tokens;
        let max_blocks = config.max_position_embeddings.div_ceil(opts.block_size);
        let block_bytes = 2
            * config.num_layers
            * opts.block_size
            * kv_dim
            * KvCache::element_bytes(opts.precision);

        // Budget: weights + workspace + KV must fit in utilization * total.
        let (free, total) = ctx.mem_get_info()?;
        let fragments = opts.precision == Precision::Fast && (k.gemv_mma_on || k.gemm_frag_on);
        let qweight_copies = if fragments { 2 } else { 1 };
        let weight_bytes: usize = weights.embed_tokens.len() * 2
            + weights.lm_head.as_ref().map_or(0, |l| l.len() * 2)
            + weights
                .layers
                .iter()
                .map(|l| {
                    [
                        &l.q_proj,
                        &l.k_proj,
                        &l.v_proj,
                        &l.o_proj,
                        &l.gate_proj,
                        &l.up_proj,
                        &l.down_proj,
                    ]
                    .iter()
                    .map(|p| match p {
                        // The fast path adds a fragment-ordered copy of
                        // qweight (at most: where the shape fits).
                        LinearWeights::Awq(a) => {
                            a.qweight.len() * 4 * qweight_copies + 2 * a.scales.len() * 4
                        }
                        LinearWeights::Dense { weight, .. } => weight.len() * 4,
                    })
                    .sum::<usize>()
                })
                .sum::<usize>();
        let partial_len = [hidden, inter, q_dim]
            .iter()
            .map(|&kk| kk.div_ceil(128))
            .max()
            .unwrap_or(1)
            * crate::kernels::AWQ_MAX_M
            * (2 * inter).max(q_dim + 2 * kv_dim).max(hidden);
        let attn_work_len = Kernels::attention_work_len(
            t,
            config.num_heads,
            config.head_dim,
            config.max_position_embeddings,
        );
        let ws_floats = attn_work_len
            + t * (2 * hidden + (q_dim + 2 * kv_dim) + 2 * q_dim + hidden + 3 * inter + vocab)
            + partial_len;
        let ws_bytes = ws_floats * 4
            + (6 * t
                + opts.max_seqs * max_blocks
                + t
                + (SAMPLE_PARAM_WORDS + 1) * t
                + t * config.num_heads)
                * 4;
        let budget = ((total as f64 * opts.gpu_memory_utilization) as usize).min(free);
        let fixed = weight_bytes + ws_bytes + 256 * MIB;
        let num_blocks = match opts.kv_cache_tokens {
            Some(tokens) => tokens.div_ceil(opts.block_size),
            None => budget.saturating_sub(fixed) / block_bytes,
        };
        let need = fixed + num_blocks * block_bytes;
        if num_blocks == 0 || need > budget {
            return Err(CudaError::OutOfMemory {
                what: format!(
                    "weights ({} MiB) + buffers ({} MiB) + KV cache ({} blocks, {} MiB)",
                    weight_bytes / MIB,
                    ws_bytes / MIB,
                    num_blocks,
                    num_blocks * block_bytes / MIB
                ),
                need_mib: need.max(fixed + block_bytes) / MIB,
                free_mib: budget / MIB,
            });
        }

        let fused = |parts: &[&LinearWeights]| -> Result<GpuAwq, CudaError> {
            GpuAwq::upload_for(&stream, &FusedAwq::new(&awq_parts(parts)?), fragments)
        };
        let cache_len = num_blocks * opts.block_size * kv_dim;
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in &weights.layers {
            layers.push(GpuLayer {
                input_norm: stream.clone_htod(&l.input_layernorm)?,
                post_norm: stream.clone_htod(&l.post_attention_layernorm)?,
                qkv: fused(&[&l.q_proj, &l.k_proj, &l.v_proj])?,
                o: fused(&[&l.o_proj])?,
                gate_up: fused(&[&l.gate_proj, &l.up_proj])?,
                down: fused(&[&l.down_proj])?,
                kv: KvCache::alloc(&stream, opts.precision, cache_len)?,
            });
        }
        let rope = RopeTable::for_config(config);
        let (cos, sin) = rope.tables();
        let ws = Workspace {
            x: stream.alloc_zeros(t * hidden)?,
            h: stream.alloc_zeros(t * hidden)?,
            qkv: stream.alloc_zeros(t * (q_dim + 2 * kv_dim))?,
            q: stream.alloc_zeros(t * q_dim)?,
            attn: stream.alloc_zeros(t * q_dim)?,
            proj: stream.alloc_zeros(t * hidden)?,
            gate_up: stream.alloc_zeros(t * 2 * inter)?,
            act: stream.alloc_zeros(t * inter)?,
            partial: stream.alloc_zeros(partial_len)?,
            attn_work: stream.alloc_zeros(attn_work_len)?,
            attn_counters: stream.alloc_zeros(t * config.num_heads)?,
            counters: stream.alloc_zeros(crate::kernels::counters_len(
                (2 * inter).max(q_dim + 2 * kv_dim).max(hidden),
            ))?,
            logits: stream.alloc_zeros(t * vocab)?,
            tokens: stream.alloc_zeros(t)?,
            positions: stream.alloc_zeros(t)?,
            slots: stream.alloc_zeros(t)?,
            seq_of: stream.alloc_zeros(t)?,
            tiles: stream.alloc_zeros(2 * t)?,
            tables: stream.alloc_zeros(opts.max_seqs * max_blocks)?,
            rows: stream.alloc_zeros(t)?,
            sample_params: stream.alloc_zeros(t * SAMPLE_PARAM_WORDS)?,
            sampled: stream.alloc_zeros(t)?,
            masks: None,
        };
        let backend = Self {
            embed: stream.clone_htod(&weights.embed_tokens)?,
            lm_head: weights
                .lm_head
                .as_ref()
                .map(|l| stream.clone_htod(l))
                .transpose()?,
            norm: stream.clone_htod(&weights.norm)?,
            cos: stream.clone_htod(cos)?,
            sin: stream.clone_htod(sin)?,
            config: config.clone(),
            device_name: name,
            _ctx: ctx.clone(),
            stream,
            k,
            layers,
            kv: KvGeometry {
                num_blocks,
                block_size: opts.block_size,
            },
            max_batch_tokens: t,
            max_seqs: opts.max_seqs,
            max_blocks,
            ws,
            graphs: std::collections::HashMap::new(),
            use_graphs: std::env::var("LHAMA_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            fused_decode: std::env::var("LHAMA_CUDA_FUSED_DECODE").map_or(true, |v| v != "0"),
            fused_silu: std::env::var("LHAMA_CUDA_FUSED_SILU").map_or(true, |v| v != "0"),
            host_slots: Vec::with_capacity(t),
            host_seq_of: Vec::with_capacity(t),
            host_tiles: Vec::with_capacity(2 * t),
            host_context: 1,
            host_tables: vec![0; opts.max_seqs * max_blocks],
            host_params: Vec::with_capacity(t * SAMPLE_PARAM_WORDS),
            host_masks: Vec::new(),
            pending_masks: Vec::new(),
            all_logits: vec![RowSampling::Logits; t],
        };
        backend.stream.synchronize()?;
        tracing::info!(
            device = %backend.device_name,
            weights_mib = weight_bytes / MIB,
            kv_blocks = num_blocks,
            kv_tokens = num_blocks * opts.block_size,
            precision = ?opts.precision,
            "CUDA backend ready"
        );
        Ok(backend)
    }

    /// The context a captured graph covers: every position of the uploaded
    /// batch's context partitions (so later steps with as many partitions
    /// can replay it).
    fn captured_context(&self) -> usize {
        (Kernels::attention_parts(self.host_context) * crate::kernels::ATTENTION_PART)
            .min(self.config.max_position_embeddings)
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Uploads the batch's index arrays and sampling instructions.
    fn upload(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
    ) -> Result<(), CudaError> {
        let bs = self.kv.block_size;
        let t = batch.tokens.len();
        let r = batch.logit_rows.len();
        // Each token's slot and sequence, the padded block tables.
        self.host_slots.clear();
        self.host_seq_of.clear();
        for (si, seq) in batch.seqs.iter().enumerate() {
            let row = &mut self.host_tables[si * self.max_blocks..(si + 1) * self.max_blocks];
            row.fill(0);
            row[..seq.block_table.len()].copy_from_slice(seq.block_table);
            for &p in &batch.positions[seq.token_start..seq.token_start + seq.num_tokens] {
                let p = p as usize;
                self.host_slots
                    .push(seq.block_table[p / bs] * bs as u32 + (p % bs) as u32);
                self.host_seq_of.push(si as u32);
            }
        }
        self.host_context = batch.positions.iter().max().map_or(1, |&p| p as usize + 1);
        let s = &self.stream;
        let ws = &mut self.ws;
        s.memcpy_htod(batch.tokens, &mut ws.tokens.slice_mut(0..t))?;
        s.memcpy_htod(batch.positions, &mut ws.positions.slice_mut(0..t))?;
        s.memcpy_htod(&self.host_slots, &mut ws.slots.slice_mut(0..t))?;
        s.memcpy_htod(&self.host_seq_of, &mut ws.seq_of.slice_mut(0..t))?;
        self.host_tiles.clear();
        Kernels::attention_tiles(batch.seqs, batch.positions, &mut self.host_tiles);
        let tl = self.host_tiles.len();
        s.memcpy_htod(&self.host_tiles, &mut ws.tiles.slice_mut(0..tl))?;
        let table_len = batch.seqs.len() * self.max_blocks;
        s.memcpy_htod(
            &self.host_tables[..table_len],
            &mut ws.tables.slice_mut(0..table_len),
        )?;
        if r > 0 {
            s.memcpy_htod(batch.logit_rows, &mut ws.rows.slice_mut(0..r))?;
            self.host_params.clear();
            for how in sampling {
                self.host_params.extend_from_slice(&sample_params(how));
            }
            s.memcpy_htod(
                &self.host_params,
                &mut ws.sample_params.slice_mut(0..r * SAMPLE_PARAM_WORDS),
            )?;
        }
        Ok(())
    }

    /// Uploads the step's token masks as [r, words] (all ones for the rows
    /// without one); false when the step has none.
    fn upload_masks(&mut self, masks: &[(usize, Vec<u32>)], r: usize) -> Result<bool, CudaError> {
        if masks.is_empty() {
            return Ok(false);
        }
        let words = Kernels::mask_words(self.config.vocab_size);
        if self.ws.masks.is_none() {
            self.ws.masks = Some(self.stream.alloc_zeros(self.ws.rows.len() * words)?);
        }
        self.host_masks.clear();
        self.host_masks.resize(r * words, u32::MAX);
        for (row, w) in masks {
            let dst = &mut self.host_masks[row * words..(row + 1) * words];
            let n = w.len().min(words);
            dst[..n].copy_from_slice(&w[..n]);
            dst[n..].fill(0);
        }
        if let Some(m) = self.ws.masks.as_mut() {
            self.stream
                .memcpy_htod(&self.host_masks, &mut m.slice_mut(0..r * words))?;
        }
        Ok(true)
    }

    /// Where a [t, hidden]-sized product of `awq_matmul_split` is: `len`
    /// floats of `proj`, or its `splits` partial sums in `partial`.
    fn product<'a>(
        partial: &'a CudaSlice<f32>,
        proj: &'a CudaSlice<f32>,
        splits: usize,
        len: usize,
    ) -> (CudaView<'a, f32>, usize) {
        if splits > 1 {
            (partial.slice(0..splits * len), splits)
        } else {
            (proj.slice(0..len), 1)
        }
    }

    /// Every kernel of one forward pass over `t` tokens whose index arrays are
    /// uploaded, ending with the logits of `r` rows in `ws.logits` and, when
    /// `sample`, their tokens in `ws.sampled` (launch_sample). Issues no copy
    /// and no synchronization, so it can be captured into a graph.
    /// `decode`: one token per sequence (attention fuses the rotary
    /// embedding and the K/V write when the head size allows). `capture`:
    /// recorded into a graph that later steps with as many context
    /// partitions replay, so attention covers every position those
    /// partitions hold.
    fn launch_all(
        &mut self,
        t: usize,
        r: usize,
        table_len: usize,
        decode: bool,
        capture: bool,
        sample: bool,
    ) -> Result<(), CudaError> {
        let batch_context = if capture {
            self.captured_context()
        } else {
            self.host_context
        };
        let fused_decode =
            decode && self.fused_decode && Kernels::fused_decode_supported(self.config.head_dim);
        let cfg = &self.config;
        let (hidden, inter, vocab) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let shape = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let bs = self.kv.block_size;
        let s = &self.stream;
        let ws = &mut self.ws;
        let k = &self.k;
        k.embedding(
            s,
            &self.embed,
            &ws.tokens.slice(0..t),
            &mut ws.x.slice_mut(0..t * hidden),
            hidden,
        )?;
        // The splits of the down projection still in `partial` (1: it is
        // in `proj`) for the next residual add; none before the first layer.
        let mut pending_delta: Option<usize> = None;
        for layer in &mut self.layers {
            let delta = pending_delta
                .map(|splits| Self::product(&ws.partial, &ws.proj, splits, t * hidden));
            k.add_rmsnorm(
                s,
                &mut ws.x.slice_mut(0..t * hidden),
                delta.as_ref().map(|(d, splits)| (d, *splits)),
                &layer.input_norm,
                &mut ws.h.slice_mut(0..t * hidden),
                t,
                eps,
            )?;
            k.awq_matmul(
                s,
                &ws.h.slice(0..t * hidden),
                t,
                &layer.qkv,
                &mut ws.partial,
                &mut ws.counters,
                &mut ws.qkv.slice_mut(..),
            )?;
            if fused_decode {
                k.paged_attention_decode(
                    s,
                    &ws.qkv.slice(..),
                    &ws.positions.slice(0..t),
                    &self.cos,
                    &self.sin,
                    &ws.slots.slice(0..t),
                    &mut layer.kv,
                    &ws.tables.slice(0..table_len),
                    &ws.seq_of.slice(0..t),
                    &mut ws.attn_work,
                    &mut ws.attn_counters,
                    &mut ws.attn.slice_mut(..),
                    shape,
                    bs,
                    self.max_blocks,
                    cfg.max_position_embeddings,
                    batch_context,
                )?;
            } else {
                k.rope_kv_write(
                    s,
                    &ws.qkv.slice(..),
                    &ws.positions.slice(0..t),
                    &self.cos,
                    &self.sin,
                    &ws.slots.slice(0..t),
                    &mut ws.q.slice_mut(..),
                    &mut layer.kv,
                    shape,
                )?;
                k.paged_attention(
                    s,
                    &ws.q.slice(..),
                    &mut layer.kv,
                    &ws.tables.slice(0..table_len),
                    &ws.seq_of.slice(0..t),
                    &ws.positions.slice(0..t),
                    &ws.tiles.slice(0..self.host_tiles.len()),
                    &mut ws.attn_work,
                    &mut ws.attn.slice_mut(..),
                    shape,
                    bs,
                    self.max_blocks,
                    cfg.max_position_embeddings,
                    batch_context,
                )?;
            }
            let splits = k.awq_matmul_split(
                s,
                &ws.attn.slice(..),
                t,
                &layer.o,
                &mut ws.partial,
                &mut ws.counters,
                &mut ws.proj.slice_mut(..),
            )?;
            let (delta, splits) = Self::product(&ws.partial, &ws.proj, splits, t * hidden);
            k.add_rmsnorm(
                s,
                &mut ws.x.slice_mut(0..t * hidden),
                Some((&delta, splits)),
                &layer.post_norm,
                &mut ws.h.slice_mut(0..t * hidden),
                t,
                eps,
            )?;
            let splits = k.awq_matmul_split(
                s,
                &ws.h.slice(0..t * hidden),
                t,
                &layer.gate_up,
                &mut ws.partial,
                &mut ws.counters,
                &mut ws.gate_up.slice_mut(..),
            )?;
            if self.fused_silu
                && splits == 1
                && t <= crate::kernels::AWQ_FUSED_MAX_ROWS
                && t < k.mma_min_rows
            {
                // The GEMV takes silu(gate) * up as it reads gate_up (1-2
                // rows: from 4 rows its threads' repeated exponentials cost
                // more than the launch saved, 1.14 vs 0.99 ms a step at 4
                // and 2.40 vs 1.50 at 8 on an H200).
                k.awq_matmul_silu(
                    s,
                    &ws.gate_up.slice(0..t * 2 * inter),
                    t,
                    &layer.down,
                    &mut ws.partial,
                    &mut ws.counters,
                    &mut ws.proj.slice_mut(..),
                )?;
                pending_delta = Some(1);
                continue;
            }
            let gate_up = if splits > 1 {
                ws.partial.slice(0..splits * t * 2 * inter)
            } else {
                ws.gate_up.slice(0..t * 2 * inter)
            };
            k.silu_mul(s, &gate_up, splits, &mut ws.act.slice_mut(..), t, inter)?;
            pending_delta = Some(k.awq_matmul_split(
                s,
                &ws.act.slice(..),
                t,
                &layer.down,
                &mut ws.partial,
                &mut ws.counters,
                &mut ws.proj.slice_mut(..),
            )?);
        }
        if r == 0 {
            return Ok(());
        }
        let delta =
            pending_delta.map(|splits| Self::product(&ws.partial, &ws.proj, splits, t * hidden));
        k.add_rmsnorm(
            s,
            &mut ws.x.slice_mut(0..t * hidden),
            delta.as_ref().map(|(d, splits)| (d, *splits)),
            &self.norm,
            &mut ws.h.slice_mut(0..t * hidden),
            t,
            eps,
        )?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        k.lm_head(
            s,
            &ws.h.slice(0..t * hidden),
            &ws.rows.slice(0..r),
            head,
            &mut ws.logits.slice_mut(0..r * vocab),
            hidden,
        )?;
        if sample {
            self.launch_sample(r, false)?;
        }
        Ok(())
    }

    /// The sampler over the `r` logit rows in `ws.logits`, masked first by
    /// the uploaded masks when `masked`.
    fn launch_sample(&mut self, r: usize, masked: bool) -> Result<(), CudaError> {
        let vocab = self.config.vocab_size;
        let (s, ws, k) = (&self.stream, &mut self.ws, &self.k);
        if masked && let Some(m) = ws.masks.as_ref() {
            k.apply_masks(
                s,
                &mut ws.logits.slice_mut(0..r * vocab),
                &m.slice(..),
                vocab,
            )?;
        }
        k.sample(
            s,
            &ws.logits.slice(0..r * vocab),
            &ws.sample_params.slice(0..r * SAMPLE_PARAM_WORDS),
            &mut ws.sampled.slice_mut(0..r),
            vocab,
        )
    }

    /// One step: `sampling` has one entry per logit row; `tokens` gets every
    /// row's token, `logits` [r, vocab] the rows asking for `Logits` (the
    /// only logits copied back). With `masks`, the forward pass is launched,
    /// then `masks` called (the host computes them while the device runs),
    /// then the masks uploaded and the rows masked and sampled.
    fn run(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
        masks: Option<&mut lhama_model::MaskSource<'_>>,
        tokens: &mut Vec<u32>,
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        fn device(e: impl std::fmt::Display) -> BackendError {
            BackendError::Device(e.to_string())
        }
        let t = batch.tokens.len();
        let r = batch.logit_rows.len();
        let split = masks.is_some();
        self.upload(batch, sampling).map_err(device)?;
        let decode = batch.seqs.iter().all(|s| s.num_tokens == 1);
        // A profile times each launch on its own: no graph.
        let graph = self.use_graphs
            && !self.k.profiling()
            && decode
            && r == t
            && batch
                .logit_rows
                .iter()
                .enumerate()
                .all(|(i, &row)| row as usize == i);
        if graph {
            let key = (t, Kernels::attention_parts(self.host_context), split);
            if !self.graphs.contains_key(&key) {
                // Captured with the full table buffer, so one graph serves every
                // later step of this batch size (contexts are read on the device).
                let tables = self.max_seqs * self.max_blocks;
                self.stream
                    .begin_capture(
                        cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                    )
                    .map_err(device)?;
                let launched = self.launch_all(t, t, tables, true, true, !split);
                let graph = self
                    .stream
                    .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0));
                launched.map_err(device)?;
                let graph = graph.map_err(device)?.ok_or_else(|| {
                    BackendError::Device("graph capture produced no graph".into())
                })?;
                self.graphs.insert(key, Graph(graph));
            }
            self.graphs[&key].0.launch().map_err(device)?;
        } else {
            self.launch_all(
                t,
                r,
                batch.seqs.len() * self.max_blocks,
                decode,
                false,
                !split,
            )
            .map_err(device)?;
        }
        if let Some(masks) = masks {
            // The device runs the forward pass meanwhile.
            let masks = masks();
            check_masks(&masks, r)?;
            let masked = self.upload_masks(&masks, r).map_err(device)?;
            if r > 0 {
                self.launch_sample(r, masked).map_err(device)?;
            }
        }
        self.copy_back(sampling, r, tokens, logits).map_err(device)
    }

    /// The step's sampled tokens and the logits of the rows asking for them.
    fn copy_back(
        &mut self,
        sampling: &[RowSampling],
        r: usize,
        tokens: &mut Vec<u32>,
        logits: &mut Vec<f32>,
    ) -> Result<(), CudaError> {
        let vocab = self.config.vocab_size;
        tokens.clear();
        tokens.resize(r, 0);
        if sampling.iter().any(|s| *s != RowSampling::Logits) {
            self.stream
                .memcpy_dtoh(&self.ws.sampled.slice(0..r), tokens.as_mut_slice())?;
        }
        logits.resize(r * vocab, 0.0);
        // Runs of consecutive rows asking for logits, one copy each.
        let mut i = 0;
        while i < r {
            if sampling[i] != RowSampling::Logits {
                i += 1;
                continue;
            }
            let start = i;
            while i < r && sampling[i] == RowSampling::Logits {
                i += 1;
            }
            self.stream.memcpy_dtoh(
                &self.ws.logits.slice(start * vocab..i * vocab),
                &mut logits[start * vocab..i * vocab],
            )?;
        }
        self.stream.synchronize()?;
        Ok(())
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
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
        // Masks are for forward_sample only.
        self.pending_masks.clear();
        let r = batch.logit_rows.len().min(self.all_logits.len());
        let all = std::mem::take(&mut self.all_logits);
        let mut tokens = Vec::new();
        let result = self.step(batch, &all[..r], None, &mut tokens, logits);
        self.all_logits = all;
        result
    }

    fn forward_sample(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
        out: &mut SampledStep,
    ) -> Result<(), BackendError> {
        // Masks are for this step only, even one refused before it ran.
        let pending = std::mem::take(&mut self.pending_masks);
        check_sampling(batch, sampling)?;
        check_masks(&pending, batch.logit_rows.len())?;
        if pending.is_empty() {
            return self.step(batch, sampling, None, &mut out.tokens, &mut out.logits);
        }
        let mut pending = Some(pending);
        let mut masks = || pending.take().unwrap_or_default();
        self.step(
            batch,
            sampling,
            Some(&mut masks),
            &mut out.tokens,
            &mut out.logits,
        )
    }

    fn forward_sample_masked(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
        masks: &mut lhama_model::MaskSource<'_>,
        out: &mut SampledStep,
    ) -> Result<(), BackendError> {
        self.pending_masks.clear();
        check_sampling(batch, sampling)?;
        self.step(
            batch,
            sampling,
            Some(masks),
            &mut out.tokens,
            &mut out.logits,
        )
    }

    fn supports_masks(&self) -> bool {
        true
    }

    fn set_masks(&mut self, masks: &[(usize, &[u32])]) -> Result<(), BackendError> {
        self.pending_masks = masks.iter().map(|&(r, w)| (r, w.to_vec())).collect();
        Ok(())
    }

    fn set_profiling(&mut self, on: bool) -> bool {
        self.k.set_profiling(on);
        true
    }

    fn take_profile(&mut self) -> Result<Vec<(&'static str, f64)>, BackendError> {
        let times = self
            .k
            .take_profile()
            .map_err(|e| BackendError::Device(e.to_string()))?;
        Ok(times.into_iter().map(|t| (t.name, t.micros)).collect())
    }
}

impl CudaBackend {
    /// Validates the batch against the model and this backend's limits, then runs it.
    fn step(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
        masks: Option<&mut lhama_model::MaskSource<'_>>,
        tokens: &mut Vec<u32>,
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        batch.validate(&self.config, self.kv)?;
        let t = batch.tokens.len();
        if t == 0 {
            if let Some(masks) = masks {
                check_masks(&masks(), 0)?;
            }
            logits.clear();
            tokens.clear();
            return Ok(());
        }
        if t > self.max_batch_tokens
            || batch.seqs.len() > self.max_seqs
            || batch.logit_rows.len() > self.max_batch_tokens
        {
            return Err(BackendError::InvalidBatch(format!(
                "{t} tokens / {} sequences exceed the CUDA backend's limits ({} / {})",
                batch.seqs.len(),
                self.max_batch_tokens,
                self.max_seqs
            )));
        }
        if let Some(s) = batch
            .seqs
            .iter()
            .find(|s| s.block_table.len() > self.max_blocks)
        {
            return Err(BackendError::InvalidBatch(format!(
                "a block table of {} blocks is longer than {}",
                s.block_table.len(),
                self.max_blocks
            )));
        }
        self.run(batch, sampling, masks, tokens, logits)
    }
}
