//! Per-step device buffers, allocated once for `max_batch_tokens` tokens
//! and `max_seqs` sequences, so that a captured graph's pointers stay valid.

use cudarc::driver::{CudaSlice, CudaStream};
use lhama_model::LlamaConfig;
use std::sync::Arc;

use crate::CudaError;
use crate::kernels::{self, Kernels, SAMPLE_PARAM_WORDS, SampleScratch};

pub(super) struct Workspace {
    /// [T, hidden] residual stream
    pub x: CudaSlice<f32>,
    /// [T, hidden] normed
    pub h: CudaSlice<f32>,
    /// [T, q + 2 kv]
    pub qkv: CudaSlice<f32>,
    /// [T, q]
    pub q: CudaSlice<f32>,
    /// [T, q]
    pub attn: CudaSlice<f32>,
    /// [T, hidden] o_proj / down_proj output
    pub proj: CudaSlice<f32>,
    /// [T, 2 inter]
    pub gate_up: CudaSlice<f32>,
    /// [T, inter]
    pub act: CudaSlice<f32>,
    pub partial: CudaSlice<f32>,
    /// GEMV tile counters (zero between launches)
    pub counters: CudaSlice<u32>,
    /// [T, heads, context partitions, head_dim + 2]
    pub attn_work: CudaSlice<f32>,
    /// [T, heads] decode attention's partition counters (zero between launches)
    pub attn_counters: CudaSlice<u32>,
    /// [T, vocab]
    pub logits: CudaSlice<f32>,
    pub tokens: CudaSlice<u32>,
    pub positions: CudaSlice<u32>,
    pub slots: CudaSlice<u32>,
    pub seq_of: CudaSlice<u32>,
    /// [T, 2] prefill attention's query tiles (first token, count)
    pub tiles: CudaSlice<u32>,
    /// [max_seqs, max_blocks]
    pub tables: CudaSlice<u32>,
    pub rows: CudaSlice<u32>,
    /// [T, SAMPLE_PARAM_WORDS] how each logit row becomes a token
    pub sample_params: CudaSlice<u32>,
    /// [T] the sampled tokens
    pub sampled: CudaSlice<u32>,
    /// The sampler's argmax slices
    pub sample_scratch: SampleScratch,
    /// [T, mask words] token masks of the step's rows (structured output),
    /// allocated at the first masked step, at full size so that graphs
    /// captured with it stay valid.
    pub masks: Option<CudaSlice<u32>>,
}

/// Floats of the split-K scratch (`Workspace::partial`) for a model: every
/// GEMV split of AWQ_MAX_M rows of the widest product; the tensor-core
/// products split K only as far as it holds (the GEMM microbenchmark sizes
/// its scratch the same, so that it splits as the forward pass does).
pub fn partial_len(config: &LlamaConfig) -> usize {
    let (hidden, inter) = (config.hidden_size, config.intermediate_size);
    let q_dim = config.num_heads * config.head_dim;
    let kv_dim = config.num_kv_heads * config.head_dim;
    [hidden, inter, q_dim]
        .iter()
        .map(|&kk| kk.div_ceil(128))
        .max()
        .unwrap_or(1)
        * kernels::AWQ_MAX_M
        * (2 * inter).max(q_dim + 2 * kv_dim).max(hidden)
}

/// The lengths of the two scratch buffers whose size is not a row count.
struct Scratch {
    partial: usize,
    attn_work: usize,
}

impl Scratch {
    fn of(config: &LlamaConfig, t: usize) -> Self {
        Self {
            partial: partial_len(config),
            attn_work: Kernels::attention_work_len(
                t,
                config.num_heads,
                config.head_dim,
                config.max_position_embeddings,
            ),
        }
    }
}

impl Workspace {
    /// The device bytes `alloc` takes.
    pub fn bytes(config: &LlamaConfig, t: usize, max_seqs: usize, max_blocks: usize) -> usize {
        let (hidden, inter, vocab) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let q_dim = config.num_heads * config.head_dim;
        let kv_dim = config.num_kv_heads * config.head_dim;
        let scratch = Scratch::of(config, t);
        let floats = scratch.attn_work
            + t * (2 * hidden + (q_dim + 2 * kv_dim) + 2 * q_dim + hidden + 3 * inter + vocab)
            + scratch.partial;
        floats * 4
            + (6 * t
                + max_seqs * max_blocks
                + t
                + (SAMPLE_PARAM_WORDS + 1) * t
                + t * config.num_heads)
                * 4
            + SampleScratch::bytes(t)
    }

    pub fn alloc(
        stream: &Arc<CudaStream>,
        config: &LlamaConfig,
        t: usize,
        max_seqs: usize,
        max_blocks: usize,
    ) -> Result<Self, CudaError> {
        let (hidden, inter, vocab) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let q_dim = config.num_heads * config.head_dim;
        let kv_dim = config.num_kv_heads * config.head_dim;
        let scratch = Scratch::of(config, t);
        Ok(Self {
            x: stream.alloc_zeros(t * hidden)?,
            h: stream.alloc_zeros(t * hidden)?,
            qkv: stream.alloc_zeros(t * (q_dim + 2 * kv_dim))?,
            q: stream.alloc_zeros(t * q_dim)?,
            attn: stream.alloc_zeros(t * q_dim)?,
            proj: stream.alloc_zeros(t * hidden)?,
            gate_up: stream.alloc_zeros(t * 2 * inter)?,
            act: stream.alloc_zeros(t * inter)?,
            partial: stream.alloc_zeros(scratch.partial)?,
            attn_work: stream.alloc_zeros(scratch.attn_work)?,
            attn_counters: stream.alloc_zeros(t * config.num_heads)?,
            counters: stream.alloc_zeros(kernels::counters_len(
                (2 * inter).max(q_dim + 2 * kv_dim).max(hidden),
            ))?,
            logits: stream.alloc_zeros(t * vocab)?,
            tokens: stream.alloc_zeros(t)?,
            positions: stream.alloc_zeros(t)?,
            slots: stream.alloc_zeros(t)?,
            seq_of: stream.alloc_zeros(t)?,
            tiles: stream.alloc_zeros(2 * t)?,
            tables: stream.alloc_zeros(max_seqs * max_blocks)?,
            rows: stream.alloc_zeros(t)?,
            sample_params: stream.alloc_zeros(t * SAMPLE_PARAM_WORDS)?,
            sampled: stream.alloc_zeros(t)?,
            sample_scratch: SampleScratch::alloc(stream, t)?,
            masks: None,
        })
    }
}
