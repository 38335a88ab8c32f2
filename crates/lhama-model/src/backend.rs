//! The seam between the engine and a compute backend (CPU here, CUDA later).
//!
//! One call runs the model over a flattened batch: the new tokens of several
//! sequences, each at its own positions, with K/V kept in a pool of
//! fixed-size blocks that each sequence addresses through its block table.
//! The engine owns block allocation; the backend owns the pool's memory.

use crate::config::LlamaConfig;
use crate::sampling::{RowSampling, sample_row};

/// The tokens of one sequence inside a flattened batch.
#[derive(Debug, Clone, Copy)]
pub struct SeqSlice<'a> {
    /// Index of the sequence's first token in `ForwardBatch::tokens`.
    pub token_start: usize,
    /// Number of consecutive tokens of this sequence in the batch.
    pub num_tokens: usize,
    /// Physical KV block of each logical block: position p lives in block
    /// `block_table[p / block_size]`, slot `p % block_size`.
    pub block_table: &'a [u32],
}

/// One forward step over a flattened batch.
#[derive(Debug, Clone, Copy)]
pub struct ForwardBatch<'a> {
    /// [T] token ids of all sequences, back to back.
    pub tokens: &'a [u32],
    /// [T] position of each token in its own sequence (0 = first token).
    pub positions: &'a [u32],
    /// The sequences, in order, covering `tokens` exactly.
    pub seqs: &'a [SeqSlice<'a>],
    /// Indexes into `tokens` whose logits are wanted, in output order.
    pub logit_rows: &'a [u32],
}

/// Size of a backend's KV pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvGeometry {
    pub num_blocks: usize,
    pub block_size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("device error: {0}")]
    Device(String),
}

/// What `Backend::forward_sample` hands back, reused between steps.
#[derive(Debug, Default)]
pub struct SampledStep {
    /// [logit_rows.len()] the token of each row sampled by the backend
    /// (unspecified for rows asking for `RowSampling::Logits`).
    pub tokens: Vec<u32>,
    /// [logit_rows.len(), vocab]: the logits of the rows asking for
    /// `RowSampling::Logits`; other rows' contents are unspecified.
    pub logits: Vec<f32>,
    /// Host scratch for backends that sample on the host.
    pub scratch: Vec<(u32, u64)>,
}

/// What a masked step calls for its token masks: (logit row, words) per
/// masked row, as `Backend::set_masks` takes them.
pub type MaskSource<'a> = dyn FnMut() -> Vec<(usize, Vec<u32>)> + 'a;

/// A compute backend: owns the weights and the KV pool, runs forward steps.
pub trait Backend: Send {
    /// Short name for logs ("cpu", "cuda").
    fn name(&self) -> &'static str;
    fn config(&self) -> &LlamaConfig;
    fn kv_geometry(&self) -> KvGeometry;
    /// Runs the batch; writes K/V of every token into its block, and puts the
    /// logits of `logit_rows` into `logits` as [logit_rows.len(), vocab].
    fn forward(
        &mut self,
        batch: &ForwardBatch<'_>,
        logits: &mut Vec<f32>,
    ) -> Result<(), BackendError>;

    /// Runs the batch and turns each logit row into a token as `sampling`
    /// (one per logit row) says, handing back logits only for the rows that
    /// ask for them. This default samples on the host (crate::sampling);
    /// a device backend samples where the logits are.
    fn forward_sample(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
        out: &mut SampledStep,
    ) -> Result<(), BackendError> {
        check_sampling(batch, sampling)?;
        self.forward(batch, &mut out.logits)?;
        sample_on_host(self.config().vocab_size, sampling, &[], out);
        Ok(())
    }

    /// Whether `set_masks` works: the backend applies token masks to the
    /// rows it samples itself.
    fn supports_masks(&self) -> bool {
        false
    }

    /// Token masks for the next `forward_sample` only: (logit row, words),
    /// bit i % 32 of word i / 32 allowing token i (ids past the words are
    /// not allowed). The named rows' disallowed logits are −∞ before they
    /// are sampled (and in the logits handed back); other rows are as they
    /// were.
    fn set_masks(&mut self, _masks: &[(usize, &[u32])]) -> Result<(), BackendError> {
        Err(BackendError::InvalidBatch(
            "this backend does not apply token masks".into(),
        ))
    }

    /// `forward_sample` under token masks that are computed while the step
    /// runs: `masks` is called once, after the backend has set the forward
    /// pass going and before it samples, and gives (logit row, words) as
    /// `set_masks` takes them. A backend that cannot overlap the two (this
    /// default, which the CPU uses: its cores are the forward pass's) calls
    /// it first. Only for backends that support masks.
    fn forward_sample_masked(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: &[RowSampling],
        masks: &mut MaskSource<'_>,
        out: &mut SampledStep,
    ) -> Result<(), BackendError> {
        let masks = masks();
        let words: Vec<(usize, &[u32])> = masks.iter().map(|(r, w)| (*r, w.as_slice())).collect();
        self.set_masks(&words)?;
        self.forward_sample(batch, sampling, out)
    }

    /// Starts or stops a per-kernel profile of the steps that follow;
    /// false when the backend has none (the CPU).
    fn set_profiling(&mut self, _on: bool) -> bool {
        false
    }

    /// (kernel, microseconds) of every launch since profiling started or
    /// the last call, in launch order.
    fn take_profile(&mut self) -> Result<Vec<(&'static str, f64)>, BackendError> {
        Ok(Vec::new())
    }
}

/// Sets the logits of the tokens `words` does not allow to −∞ (bit i % 32
/// of word i / 32 allows token i; ids past the words are not allowed).
pub fn mask_logits(row: &mut [f32], words: &[u32]) {
    for (i, l) in row.iter_mut().enumerate() {
        let allowed = words.get(i / 32).is_some_and(|w| (w >> (i % 32)) & 1 == 1);
        if !allowed {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// The host's sampling of a step's logits (already in `out.logits`), each
/// masked row masked first.
pub fn sample_on_host(
    vocab: usize,
    sampling: &[RowSampling],
    masks: &[(usize, Vec<u32>)],
    out: &mut SampledStep,
) {
    for (row, words) in masks {
        if let Some(r) = out.logits.get_mut(row * vocab..(row + 1) * vocab) {
            mask_logits(r, words);
        }
    }
    out.tokens.clear();
    for (i, s) in sampling.iter().enumerate() {
        let row = &out.logits[i * vocab..(i + 1) * vocab];
        out.tokens
            .push(sample_row(row, s, &mut out.scratch).unwrap_or(0));
    }
}

/// Checks a step's token masks against its logit rows: each row at most
/// once, inside the step.
pub fn check_masks(masks: &[(usize, Vec<u32>)], rows: usize) -> Result<(), BackendError> {
    let mut seen = std::collections::HashSet::new();
    for (row, _) in masks {
        if *row >= rows || !seen.insert(*row) {
            return Err(BackendError::InvalidBatch(format!(
                "token mask for logit row {row} of {rows}, or twice"
            )));
        }
    }
    Ok(())
}

/// One sampling instruction per logit row, each within its domain.
pub fn check_sampling(
    batch: &ForwardBatch<'_>,
    sampling: &[RowSampling],
) -> Result<(), BackendError> {
    if sampling.len() != batch.logit_rows.len() {
        return Err(BackendError::InvalidBatch(format!(
            "{} sampling instructions for {} logit rows",
            sampling.len(),
            batch.logit_rows.len()
        )));
    }
    for s in sampling {
        if let RowSampling::Draw(p) = s {
            let ok = p.temperature > 0.0
                && p.temperature.is_finite()
                && (0.0..=1.0).contains(&p.top_p)
                && (0.0..=1.0).contains(&p.min_p)
                && (0.0..1.0).contains(&p.u);
            if !ok {
                return Err(BackendError::InvalidBatch(format!(
                    "sampling parameters out of range: {p:?}"
                )));
            }
        }
    }
    Ok(())
}

impl ForwardBatch<'_> {
    /// Checks everything a backend indexes with, so no kernel reads out of
    /// bounds whatever the caller passed.
    pub fn validate(&self, config: &LlamaConfig, kv: KvGeometry) -> Result<(), BackendError> {
        let bad = |m: String| Err(BackendError::InvalidBatch(m));
        let t = self.tokens.len();
        if self.positions.len() != t {
            return bad(format!("{} positions for {t} tokens", self.positions.len()));
        }
        if let Some(&tok) = self
            .tokens
            .iter()
            .find(|&&tok| tok as usize >= config.vocab_size)
        {
            return bad(format!(
                "token id {tok} is outside the vocabulary ({})",
                config.vocab_size
            ));
        }
        let mut next = 0usize;
        for (i, s) in self.seqs.iter().enumerate() {
            if s.token_start != next || s.num_tokens == 0 {
                return bad(format!(
                    "sequence {i} does not continue the batch at token {next}"
                ));
            }
            next = s.token_start + s.num_tokens;
            if next > t {
                return bad(format!(
                    "sequence {i} runs past the {t} tokens of the batch"
                ));
            }
            if let Some(&b) = s.block_table.iter().find(|&&b| b as usize >= kv.num_blocks) {
                return bad(format!(
                    "sequence {i}: block {b} is outside the pool ({})",
                    kv.num_blocks
                ));
            }
            for &p in &self.positions[s.token_start..next] {
                if p as usize >= config.max_position_embeddings {
                    return bad(format!(
                        "sequence {i}: position {p} is past max_position_embeddings ({})",
                        config.max_position_embeddings
                    ));
                }
                if p as usize / kv.block_size >= s.block_table.len() {
                    return bad(format!("sequence {i}: position {p} has no KV block"));
                }
            }
        }
        if next != t {
            return bad(format!("sequences cover {next} of {t} tokens"));
        }
        if let Some(&r) = self.logit_rows.iter().find(|&&r| r as usize >= t) {
            return bad(format!("logit row {r} is outside the batch ({t} tokens)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::sampling::DrawParams;

    #[test]
    fn masks_allow_their_bits_only_and_rows_once() {
        let mut row = vec![1.0f32; 70];
        // Tokens 0, 33 and 63 allowed; ids past the two words are not.
        mask_logits(&mut row, &[1, (1 << 1) | (1 << 31)]);
        let allowed: Vec<usize> = (0..70).filter(|&i| row[i].is_finite()).collect();
        assert_eq!(allowed, vec![0, 33, 63]);
        assert!(check_masks(&[(0, vec![]), (2, vec![])], 3).is_ok());
        assert!(
            check_masks(&[(3, vec![])], 3).is_err(),
            "a row past the step"
        );
        assert!(
            check_masks(&[(1, vec![]), (1, vec![])], 3).is_err(),
            "a row twice"
        );
    }

    #[test]
    fn sampling_instructions_are_checked() {
        let table = [0u32];
        let seqs = [SeqSlice {
            token_start: 0,
            num_tokens: 1,
            block_table: &table,
        }];
        let batch = ForwardBatch {
            tokens: &[3],
            positions: &[0],
            seqs: &seqs,
            logit_rows: &[0],
        };
        let draw = |temperature, top_p, u| {
            RowSampling::Draw(DrawParams {
                temperature,
                top_k: 0,
                top_p,
                min_p: 0.0,
                u,
            })
        };
        assert!(check_sampling(&batch, &[RowSampling::Greedy]).is_ok());
        assert!(check_sampling(&batch, &[draw(0.7, 0.9, 0.5)]).is_ok());
        let err = check_sampling(&batch, &[]).unwrap_err().to_string();
        assert!(
            err.contains("0 sampling instructions for 1 logit rows"),
            "{err}"
        );
        for bad in [
            draw(0.0, 1.0, 0.5),
            draw(f32::INFINITY, 1.0, 0.5),
            draw(1.0, 1.5, 0.5),
            draw(1.0, 1.0, 1.0),
        ] {
            let err = check_sampling(&batch, &[bad]).unwrap_err().to_string();
            assert!(err.contains("sampling parameters out of range"), "{err}");
        }
    }
}
