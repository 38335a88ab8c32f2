//! One sequence from prompt to stop, through the same batch interface the
//! scheduler uses: the prompt in chunks, then one token per step.

use std::time::{Duration, Instant};

use lhama_model::{Backend, BackendError, ForwardBatch, SampledStep, SeqSlice};

use crate::blocks::BlockPool;
use crate::sampling::Sampler;

/// Longest prompt chunk one step takes.
pub const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone, Copy, Default)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill: Duration,
    pub decode: Duration,
    /// True when a stop token ended generation (false: max_tokens reached,
    /// or the callback stopped it).
    pub stopped: bool,
}

/// Generates up to `max_tokens` after `prompt`; calls `on_token` with each
/// sampled token (returning false stops). A token in `stop_ids` ends
/// generation and is passed to the callback too.
pub fn generate(
    backend: &mut dyn Backend,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    stop_ids: &[u32],
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<GenerateStats, BackendError> {
    let mut stats = GenerateStats {
        prompt_tokens: prompt.len(),
        ..GenerateStats::default()
    };
    if prompt.is_empty() || max_tokens == 0 {
        return Ok(stats);
    }
    let geometry = backend.kv_geometry();
    let vocab = backend.config().vocab_size;
    let mut blocks = BlockPool::new(geometry.num_blocks, geometry.block_size, false);
    let mut table = Vec::new();
    let total = prompt.len() + max_tokens;
    if !blocks.grow(&mut table, total) {
        return Err(BackendError::InvalidBatch(format!(
            "{total} tokens need {} KV blocks; the pool has {}",
            blocks.blocks_for(total),
            geometry.num_blocks
        )));
    }
    let mut logits = Vec::new();
    let mut out = SampledStep::default();
    let start = Instant::now();
    let mut done = 0;
    while done < prompt.len() {
        let n = PREFILL_CHUNK.min(prompt.len() - done);
        let positions: Vec<u32> = (done as u32..(done + n) as u32).collect();
        let seqs = [SeqSlice {
            token_start: 0,
            num_tokens: n,
            block_table: &table,
        }];
        let last = [n as u32 - 1];
        let rows: &[u32] = if done + n == prompt.len() { &last } else { &[] };
        backend.forward(
            &ForwardBatch {
                tokens: &prompt[done..done + n],
                positions: &positions,
                seqs: &seqs,
                logit_rows: rows,
            },
            &mut logits,
        )?;
        done += n;
    }
    stats.prefill = start.elapsed();
    let start = Instant::now();
    let mut next = sampler.sample(&logits[..vocab]);
    loop {
        stats.generated_tokens += 1;
        let keep_going = on_token(next);
        if stop_ids.contains(&next) {
            stats.stopped = true;
            break;
        }
        if !keep_going || stats.generated_tokens == max_tokens {
            break;
        }
        let pos = [(prompt.len() + stats.generated_tokens - 1) as u32];
        let seqs = [SeqSlice {
            token_start: 0,
            num_tokens: 1,
            block_table: &table,
        }];
        // The backend samples (on the GPU, only the token comes back).
        let how = [sampler.next_row_sampling()];
        backend.forward_sample(
            &ForwardBatch {
                tokens: &[next],
                positions: &pos,
                seqs: &seqs,
                logit_rows: &[0],
            },
            &how,
            &mut out,
        )?;
        next = out.tokens[0];
    }
    stats.decode = start.elapsed();
    blocks.release(&mut table);
    Ok(stats)
}
