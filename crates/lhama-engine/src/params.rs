//! What a request asks of the engine, validated by the HTTP layer.

use crate::guided::Guide;
use crate::sampling::SamplingParams;

#[derive(Debug, Clone, PartialEq)]
pub struct RequestParams {
    pub sampling: SamplingParams,
    /// Tokens to generate at most (0: only score the prompt).
    pub max_tokens: usize,
    /// EOS and stop tokens are suppressed until this many tokens exist.
    pub min_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// HF-style: divides positive / multiplies negative logits of seen tokens (1 = off).
    pub repetition_penalty: f32,
    /// OpenAI-style, over generated tokens: minus presence once, minus frequency per use.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    /// Some(k): return the chosen token's logprob and the k most likely.
    pub logprobs: Option<usize>,
    /// Return logprobs of the prompt tokens (completions `echo` + `logprobs`).
    pub prompt_logprobs: Option<usize>,
    pub skip_special_tokens: bool,
    /// Structured output: the grammar the generated tokens must follow.
    pub guide: Option<Guide>,
    /// Prefix-cache scope: only sequences with the same salt share blocks.
    pub cache_salt: Option<String>,
}

impl Default for RequestParams {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_tokens: 16,
            min_tokens: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
            prompt_logprobs: None,
            skip_special_tokens: true,
            guide: None,
            cache_salt: None,
        }
    }
}

impl RequestParams {
    /// Whether `process_logits` would change anything once `generated`
    /// tokens exist (when not, the raw row is sampled without a copy).
    pub fn changes_logits(&self, generated: usize) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || !self.logit_bias.is_empty()
            || generated < self.min_tokens
    }
}

/// Applies penalties, logit bias and the min_tokens mask in place.
pub fn process_logits(
    logits: &mut [f32],
    params: &RequestParams,
    prompt: &[u32],
    output: &[u32],
    eos_ids: &[u32],
) {
    if params.repetition_penalty != 1.0 {
        let mut seen = vec![false; logits.len()];
        for &t in prompt.iter().chain(output) {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (l, _) in logits.iter_mut().zip(&seen).filter(|(_, s)| **s) {
            *l = if *l > 0.0 {
                *l / params.repetition_penalty
            } else {
                *l * params.repetition_penalty
            };
        }
    }
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= params.presence_penalty + params.frequency_penalty * c as f32;
            }
        }
    }
    for &(t, b) in &params.logit_bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
    if output.len() < params.min_tokens {
        let banned =
            params
                .stop_token_ids
                .iter()
                .chain(if params.ignore_eos { &[][..] } else { eos_ids });
        for &t in banned {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// log_softmax of `logits` at `token`, and the `k` most likely (id, logprob);
/// tokens that cannot be drawn (logit −∞: masked by a grammar) are never
/// listed, so every listed logprob is a finite number.
pub fn logprobs(logits: &[f32], token: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let chosen = logits
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |&l| l - lse);
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let cmp = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, cmp);
            idx.truncate(k);
        }
        idx.sort_unstable_by(cmp);
        top.extend(
            idx.into_iter()
                .filter(|&i| logits[i as usize] > f32::NEG_INFINITY)
                .map(|i| (i, logits[i as usize] - lse)),
        );
    }
    (chosen, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_bias_and_min_tokens() {
        let p = RequestParams {
            repetition_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            logit_bias: vec![(4, 10.0)],
            min_tokens: 3,
            ..RequestParams::default()
        };
        let mut l = vec![2.0, -2.0, 1.0, 1.0, 0.0];
        // prompt has 0; output has 1 twice; eos is 2.
        process_logits(&mut l, &p, &[0], &[1, 1], &[2]);
        assert_eq!(l[0], 1.0); // repetition: 2 / 2
        assert_eq!(l[1], -4.0 - 0.5 - 0.5); // repetition -2 * 2, presence 0.5, frequency 2 * 0.25
        assert_eq!(l[2], f32::NEG_INFINITY); // eos before min_tokens
        assert_eq!(l[3], 1.0);
        assert_eq!(l[4], 10.0);
    }

    #[test]
    fn plain_requests_leave_logits_alone() {
        let plain = RequestParams::default();
        assert!(!plain.changes_logits(0));
        let mut l = vec![0.5, -1.0, 2.0];
        let before = l.clone();
        process_logits(&mut l, &plain, &[0, 1], &[2, 2], &[1]);
        assert_eq!(
            l, before,
            "changes_logits() == false must mean process_logits is a no-op"
        );
        assert!(
            RequestParams {
                min_tokens: 2,
                ..RequestParams::default()
            }
            .changes_logits(1)
        );
        assert!(
            !RequestParams {
                min_tokens: 2,
                ..RequestParams::default()
            }
            .changes_logits(2)
        );
        assert!(
            RequestParams {
                logit_bias: vec![(1, 1.0)],
                ..RequestParams::default()
            }
            .changes_logits(9)
        );
    }

    #[test]
    fn logprobs_are_log_softmax() {
        let l = [0.0f32, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let (chosen, top) = logprobs(&l, 0, 2);
        assert!((chosen - 0.25f32.ln()).abs() < 1e-6);
        assert_eq!(top[0].0, 1);
        assert!((top[0].1 - 0.75f32.ln()).abs() < 1e-6);
        assert_eq!(top.len(), 2);
    }
}
