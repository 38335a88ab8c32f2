//! Turning a row of logits into a token: the definition every backend
//! follows (the CUDA sampler kernel is checked against these functions).
//!
//! A draw keeps a prefix of the vocabulary sorted by weight (descending, the
//! lower id first on ties), `w = exp((logit - max) / temperature)`; the prefix
//! length is the smallest of
//! - top_k (when 0 < top_k < vocab),
//! - the shortest prefix whose weight reaches top_p times the weight of the
//!   top_k prefix (when top_p < 1),
//! - the number of tokens with `w >= min_p` (the top token has w = 1; when
//!   min_p > 0),
//!
//! and at least 1. Then `r = u * (weight kept)` picks the token where the
//! running sum over the kept tokens, in id order, first exceeds r. Walking in
//! id order rather than by weight gives the same distribution and lets a GPU
//! find the token with one prefix sum instead of a sort.

/// How a backend turns one logit row into a token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowSampling {
    /// Hand the row's logits back: the engine chooses (penalties, logit
    /// bias, logprobs and anything else that needs the whole row).
    Logits,
    /// The highest logit, the lowest id on ties.
    Greedy,
    Draw(DrawParams),
}

/// A draw from the filtered softmax (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrawParams {
    /// > 0
    pub temperature: f32,
    /// 0 = off
    pub top_k: u32,
    /// 1 = off
    pub top_p: f32,
    /// 0 = off
    pub min_p: f32,
    /// Uniform in [0, 1), from the request's generator.
    pub u: f32,
}

/// Index of the largest value; the lowest index wins a tie.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The token a draw picks. `scratch` is reused between calls.
pub fn draw(logits: &[f32], p: &DrawParams, scratch: &mut Vec<(u32, f32)>) -> u32 {
    let vocab = logits.len();
    if vocab == 0 {
        return 0;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / p.temperature;
    scratch.clear();
    scratch.extend(
        logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp())),
    );
    let by_weight = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let top_k = p.top_k as usize;
    let filtered = (top_k > 0 && top_k < vocab) || p.top_p < 1.0 || p.min_p > 0.0;
    if filtered {
        scratch.sort_unstable_by(by_weight);
        let k_len = if top_k > 0 && top_k < vocab {
            top_k
        } else {
            vocab
        };
        let mut keep = k_len;
        if p.top_p < 1.0 {
            let total: f32 = scratch[..k_len].iter().map(|c| c.1).sum();
            let target = p.top_p * total;
            let mut acc = 0.0f32;
            let mut len = 0;
            while len < k_len && acc < target {
                acc += scratch[len].1;
                len += 1;
            }
            keep = keep.min(len);
        }
        if p.min_p > 0.0 {
            keep = keep.min(scratch.iter().filter(|c| c.1 >= p.min_p).count());
        }
        keep = keep.max(1);
        scratch.truncate(keep);
        scratch.sort_unstable_by_key(|c| c.0);
    }
    let kept: f32 = scratch.iter().map(|c| c.1).sum();
    let r = p.u * kept;
    let mut acc = 0.0f32;
    for &(id, w) in scratch.iter() {
        acc += w;
        if r < acc {
            return id;
        }
    }
    scratch.last().map_or(0, |c| c.0)
}

/// The token of a row under `Greedy` or `Draw`; None for `Logits`.
pub fn sample_row(logits: &[f32], s: &RowSampling, scratch: &mut Vec<(u32, f32)>) -> Option<u32> {
    match s {
        RowSampling::Logits => None,
        RowSampling::Greedy => Some(argmax(logits)),
        RowSampling::Draw(p) => Some(draw(logits, p, scratch)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(u: f32) -> DrawParams {
        DrawParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            u,
        }
    }

    #[test]
    fn the_draw_walks_the_kept_tokens_in_id_order() {
        // Weights 0.5, 1, 0.5 (relative to the largest): r = u * 2.
        let logits = [0.0f32, 2f32.ln(), 0.0];
        let mut s = Vec::new();
        assert_eq!(draw(&logits, &params(0.0), &mut s), 0);
        assert_eq!(draw(&logits, &params(0.24), &mut s), 0);
        assert_eq!(draw(&logits, &params(0.26), &mut s), 1);
        assert_eq!(draw(&logits, &params(0.74), &mut s), 1);
        assert_eq!(draw(&logits, &params(0.76), &mut s), 2);
        assert_eq!(draw(&logits, &params(0.999_999), &mut s), 2);
    }

    #[test]
    fn filters_keep_a_prefix_by_weight_with_ties_by_id() {
        // Weights: id 0: 0.5, 1: 1, 2: 0.5, 3: 0.25.
        let logits = [0.5f32.ln(), 0.0, 0.5f32.ln(), 0.25f32.ln()];
        let mut s = Vec::new();
        let last = |p: DrawParams, s: &mut Vec<(u32, f32)>| {
            draw(&logits, &DrawParams { u: 0.999_999, ..p }, s)
        };
        // top_k 2 keeps {1, 0} (0 beats 2 on the tie): the highest id kept is 1.
        assert_eq!(
            last(
                DrawParams {
                    top_k: 2,
                    ..params(0.0)
                },
                &mut s
            ),
            1
        );
        // top_k 3 keeps {1, 0, 2}.
        assert_eq!(
            last(
                DrawParams {
                    top_k: 3,
                    ..params(0.0)
                },
                &mut s
            ),
            2
        );
        // top_p: total 2.25; 0.6 * 2.25 = 1.35 needs 1 + 0.5 (id 0).
        assert_eq!(
            last(
                DrawParams {
                    top_p: 0.6,
                    ..params(0.0)
                },
                &mut s
            ),
            1
        );
        // top_p 0.4: 0.9 is reached by id 1 alone.
        for u in [0.0, 0.5, 0.99] {
            assert_eq!(
                draw(
                    &logits,
                    &DrawParams {
                        top_p: 0.4,
                        ..params(u)
                    },
                    &mut s
                ),
                1
            );
        }
        // min_p 0.5 keeps {0, 1, 2}; 0.6 keeps {1}.
        assert_eq!(
            last(
                DrawParams {
                    min_p: 0.5,
                    ..params(0.0)
                },
                &mut s
            ),
            2
        );
        assert_eq!(
            last(
                DrawParams {
                    min_p: 0.6,
                    ..params(0.0)
                },
                &mut s
            ),
            1
        );
        // top_p is measured against the top_k prefix: top_k 2 (weight 1.5),
        // top_p 0.7 needs 1.05 > 1: both stay.
        assert_eq!(
            last(
                DrawParams {
                    top_k: 2,
                    top_p: 0.7,
                    ..params(0.0)
                },
                &mut s
            ),
            1
        );
        assert_eq!(
            draw(
                &logits,
                &DrawParams {
                    top_k: 2,
                    top_p: 0.7,
                    ..params(0.0)
                },
                &mut s
            ),
            0
        );
    }

    #[test]
    fn greedy_takes_the_lowest_id_on_ties_and_logits_rows_are_left_alone() {
        let mut s = Vec::new();
        assert_eq!(
            sample_row(&[0.1, 3.0, -1.0, 3.0], &RowSampling::Greedy, &mut s),
            Some(1)
        );
        assert_eq!(sample_row(&[0.1, 3.0], &RowSampling::Logits, &mut s), None);
    }
}
