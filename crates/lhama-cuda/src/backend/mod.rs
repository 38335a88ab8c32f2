//! The CUDA backend: weights, KV cache and every per-step buffer allocated
//! once on the GPU; a step uploads the batch's small index arrays, runs the
//! kernels on one stream and copies back only the requested logits.
//!
//! Its parts: [`weights`] (uploaded once), [`workspace`] (per-step device
//! buffers), [`staging`] (the page-locked host side of each step's copies)
//! and [`graphs`] (captured decode steps); this module plans the step and
//! launches its kernels.

mod graphs;
mod staging;
mod weights;
mod workspace;
pub use workspace::partial_len;

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, CudaView};
use lhama_model::backend::{check_masks, check_sampling};
use lhama_model::weights::LlamaWeights;
use lhama_model::{
    Backend, BackendError, ForwardBatch, KvGeometry, LlamaConfig, RowSampling, SampledStep,
};

use crate::CudaError;
use crate::kernels::{Kernels, KvCache, Precision, SAMPLE_PARAM_WORDS};
use graphs::Graphs;
use staging::Staging;
use weights::Weights;
use workspace::Workspace;

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

pub struct CudaBackend {
    config: LlamaConfig,
    device_name: String,
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    weights: Weights,
    /// Each layer's K/V cache, [blocks * block_size, kv_heads, head_dim] each.
    caches: Vec<KvCache>,
    kv: KvGeometry,
    max_batch_tokens: usize,
    max_seqs: usize,
    max_blocks: usize,
    ws: Workspace,
    staging: Staging,
    graphs: Graphs,
    /// Steps of 1-2 tokens feed silu(gate) * up to the down projection's
    /// GEMV directly (LHAMA_CUDA_FUSED_SILU=0 launches silu_mul first, for
    /// comparisons).
    fused_silu: bool,
    /// Decode attention fuses rotary embedding and the K/V write
    /// (LHAMA_CUDA_FUSED_DECODE=0 turns it off, for comparisons).
    fused_decode: bool,
    /// From this many rows, decode steps leave the qkv product's K splits
    /// for the fused decode attention to add up as it reads them (no reduce
    /// launch); `LHAMA_QKV_DEFER_MIN_ROWS`, 0: never.
    qkv_defer_min_rows: usize,
    /// Masks set for the next forward_sample (Backend::set_masks).
    pending_masks: Vec<(usize, Vec<u32>)>,
    /// `forward` asks for every row's logits.
    all_logits: Vec<RowSampling>,
}

const MIB: usize = 1 << 20;

/// Rows from which a decode step's fused attention adds up the qkv
/// product's K splits itself (docs/BENCHMARKS.md round 13).
pub const DEFAULT_QKV_DEFER_MIN_ROWS: usize = 1;

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
        let weight_bytes = Weights::bytes(weights, fragments);
        let ws_bytes = Workspace::bytes(config, t, opts.max_seqs, max_blocks);
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

        let cache_len = num_blocks * opts.block_size * kv_dim;
        let caches = (0..config.num_layers)
            .map(|_| KvCache::alloc(&stream, opts.precision, cache_len))
            .collect::<Result<Vec<_>, _>>()?;
        let backend = Self {
            weights: Weights::upload(&stream, config, weights, fragments)?,
            caches,
            ws: Workspace::alloc(&stream, config, t, opts.max_seqs, max_blocks)?,
            staging: Staging::new(&ctx, t, opts.max_seqs, max_blocks, opts.block_size)?,
            graphs: Graphs::new(),
            config: config.clone(),
            device_name: name,
            _ctx: ctx.clone(),
            stream,
            k,
            kv: KvGeometry {
                num_blocks,
                block_size: opts.block_size,
            },
            max_batch_tokens: t,
            max_seqs: opts.max_seqs,
            max_blocks,
            fused_decode: std::env::var("LHAMA_CUDA_FUSED_DECODE").map_or(true, |v| v != "0"),
            fused_silu: std::env::var("LHAMA_CUDA_FUSED_SILU").map_or(true, |v| v != "0"),
            qkv_defer_min_rows: crate::kernels::env_rows("LHAMA_QKV_DEFER_MIN_ROWS")?
                .unwrap_or(DEFAULT_QKV_DEFER_MIN_ROWS),
            pending_masks: Vec::new(),
            all_logits: vec![RowSampling::Logits; t],
        };
        backend.stream.synchronize()?;
        tracing::info!(
            device = %backend.device_name,
            weights_mib = weight_bytes / MIB,
            pinned_kib = backend.staging.bytes() >> 10,
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
        (Kernels::attention_parts(self.staging.context) * crate::kernels::ATTENTION_PART)
            .min(self.config.max_position_embeddings)
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
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
            self.staging.context
        };
        let fused_decode =
            decode && self.fused_decode && Kernels::fused_decode_supported(self.config.head_dim);
        let qkv_defer = self.qkv_defer_min_rows > 0 && t >= self.qkv_defer_min_rows;
        let cfg = &self.config;
        let (hidden, inter, vocab) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let shape = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
        let eps = cfg.rms_norm_eps as f32;
        let bs = self.kv.block_size;
        let s = &self.stream;
        let ws = &mut self.ws;
        let k = &self.k;
        let w = &self.weights;
        k.embedding(
            s,
            &w.embed,
            &ws.tokens.slice(0..t),
            &mut ws.x.slice_mut(0..t * hidden),
            hidden,
        )?;
        // The splits of the down projection still in `partial` (1: it is
        // in `proj`) for the next residual add; none before the first layer.
        let mut pending_delta: Option<usize> = None;
        for (layer, kv) in w.layers.iter().zip(self.caches.iter_mut()) {
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
            // The fused decode attention can add up the qkv product's
            // splits itself; elsewhere the product is whole in ws.qkv.
            let qkv_splits = k.awq_matmul_split_if(
                s,
                &ws.h.slice(0..t * hidden),
                t,
                &layer.qkv,
                &mut ws.partial,
                &mut ws.counters,
                &mut ws.qkv.slice_mut(..),
                fused_decode && qkv_defer,
            )?;
            if fused_decode {
                let qkv_len = t * (shape.0 + 2 * shape.1) * shape.2;
                let (qkv, qkv_splits) = Self::product(&ws.partial, &ws.qkv, qkv_splits, qkv_len);
                k.paged_attention_decode(
                    s,
                    &qkv,
                    qkv_splits,
                    &ws.positions.slice(0..t),
                    &w.cos,
                    &w.sin,
                    &ws.slots.slice(0..t),
                    kv,
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
                    &w.cos,
                    &w.sin,
                    &ws.slots.slice(0..t),
                    &mut ws.q.slice_mut(..),
                    kv,
                    shape,
                )?;
                k.paged_attention(
                    s,
                    &ws.q.slice(..),
                    kv,
                    &ws.tables.slice(0..table_len),
                    &ws.seq_of.slice(0..t),
                    &ws.positions.slice(0..t),
                    &ws.tiles.slice(0..self.staging.tiles.len()),
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
            // At 1-2 rows the down GEMV reads gate_up itself (below), so
            // gate_up's splits are added up where it is made.
            let silu_in_down = self.fused_silu
                && t <= crate::kernels::AWQ_FUSED_MAX_ROWS
                && t < k.gemm_min_rows(&layer.down);
            let splits = k.awq_matmul_split_if(
                s,
                &ws.h.slice(0..t * hidden),
                t,
                &layer.gate_up,
                &mut ws.partial,
                &mut ws.counters,
                &mut ws.gate_up.slice_mut(..),
                !silu_in_down,
            )?;
            if silu_in_down {
                // The GEMV takes silu(gate) * up as it reads gate_up (1-2
                // rows: from 4 rows its threads' repeated exponentials cost
                // more than the launch saved, 1.14 vs 0.99 ms a step at 4
                // and 2.40 vs 1.50 at 8 on an H200).
                pending_delta = Some(k.awq_matmul_silu_split(
                    s,
                    &ws.gate_up.slice(0..t * 2 * inter),
                    t,
                    &layer.down,
                    &mut ws.partial,
                    &mut ws.counters,
                    &mut ws.proj.slice_mut(..),
                )?);
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
            &w.norm,
            &mut ws.h.slice_mut(0..t * hidden),
            t,
            eps,
        )?;
        k.lm_head(
            s,
            &ws.h.slice(0..t * hidden),
            &ws.rows.slice(0..r),
            w.head(),
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
            &mut ws.sample_scratch,
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
        self.staging
            .upload(&self.stream, &mut self.ws, batch, sampling)
            .map_err(device)?;
        let decode = batch.seqs.iter().all(|s| s.num_tokens == 1);
        // A profile times each launch on its own: no graph.
        let graph = self.graphs.enabled
            && !self.k.profiling()
            && decode
            && r == t
            && batch
                .logit_rows
                .iter()
                .enumerate()
                .all(|(i, &row)| row as usize == i);
        let key = (t, Kernels::attention_parts(self.staging.context), split);
        if graph && !self.graphs.contains(key) {
            // Captured with the full table buffer, so one graph serves every
            // later step of this batch size (contexts are read on the device).
            let tables = self.max_seqs * self.max_blocks;
            let stream = self.stream.clone();
            let mut graphs = std::mem::replace(&mut self.graphs, Graphs::new());
            let captured = graphs.capture(&stream, key, || {
                self.launch_all(t, t, tables, true, true, !split)
            });
            self.graphs = graphs;
            captured.map_err(device)?;
        }
        let replayed = graph && self.graphs.launch(key).map_err(device)?;
        if !replayed {
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
            let masked = self
                .staging
                .upload_masks(
                    &self.stream,
                    &mut self.ws,
                    &masks,
                    r,
                    self.config.vocab_size,
                )
                .map_err(device)?;
            if r > 0 {
                self.launch_sample(r, masked).map_err(device)?;
            }
        }
        self.staging
            .copy_back(
                &self.stream,
                &self.ws,
                sampling,
                self.config.vocab_size,
                tokens,
                logits,
            )
            .map_err(device)
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
