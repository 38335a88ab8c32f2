//! Turning a row of logits into a token: the definition every backend
//! follows, to the bit (the CUDA sampler kernel is checked against these
//! functions for equality).
//!
//! Each token gets an integer weight `weight(logit, max, 1 / temperature)`:
//! exp((logit - max) / temperature) in fixed point (2^31 = 1), computed with
//! one sequence of IEEE operations that a GPU repeats exactly, so sums are
//! exact and independent of their order. A draw keeps a prefix of the
//! vocabulary sorted by weight (descending, the lower id first on ties) whose
//! length is the smallest of
//! - top_k (when 0 < top_k < vocab),
//! - the shortest prefix whose weight reaches top_p times the weight of the
//!   top_k prefix (when top_p < 1),
//! - the number of tokens weighing at least min_p (when min_p > 0),
//!
//! and at least 1. Then `r = u * (weight kept)` picks the kept token, in id
//! order, where the running sum first exceeds r. Walking in id order rather
//! than by weight gives the same distribution and lets a GPU find the token
//! with one prefix sum instead of a sort.

/// Fixed-point one of a weight (2^31): a weight fits 32 bits (a GPU keeps
/// a row's weights in registers), sums take 64. Tokens more than 31 / ln 2
/// ≈ 21.5 temperature-scaled logits below the top weigh 0 (each would have
/// had less than 5e-10 of the top token's probability).
pub const WEIGHT_ONE: f32 = 2_147_483_648.0;
/// log2(e), and the coefficients (ln 2)^k / k!, k = 0..=9, of 2^f for f in
/// [0, 1): as bit patterns, which kernels/sampling.cu repeats.
const LOG2E: u32 = 0x3fb8_aa3b;
const EXP2_POLY: [u32; 10] = [
    0x3f80_0000,
    0x3f31_7218,
    0x3e75_fdf0,
    0x3d63_5847,
    0x3c1d_955b,
    0x3aae_c3ff,
    0x3921_8489,
    0x377f_e5fe,
    0x35b1_6011,
    0x33da_929f,
];

/// A token's fixed-point weight: exp((logit - max) * inv_t) * 2^31, as
/// exp2 through a degree-9 polynomial with fused multiply-adds, 0 below
/// 2^-31 (and for NaN).
pub fn weight(logit: f32, max: f32, inv_t: f32) -> u64 {
    let y = (logit - max) * inv_t * f32::from_bits(LOG2E);
    // Also 0 for NaN (the comparison fails).
    if y.partial_cmp(&-31.0) != Some(std::cmp::Ordering::Greater) {
        return 0;
    }
    let n = y.floor();
    let f = y - n;
    let mut p = f32::from_bits(EXP2_POLY[9]);
    for &c in EXP2_POLY[..9].iter().rev() {
        p = p.mul_add(f, f32::from_bits(c));
    }
    let scale = f32::from_bits(((127 + n as i32) as u32) << 23);
    (p * scale * WEIGHT_ONE) as u64
}

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
pub fn draw(logits: &[f32], p: &DrawParams, scratch: &mut Vec<(u32, u64)>) -> u32 {
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
            .map(|(i, &l)| (i as u32, weight(l, max, inv_t))),
    );
    let top_k = p.top_k as usize;
    let filtered = (top_k > 0 && top_k < vocab) || p.top_p < 1.0 || p.min_p > 0.0;
    if filtered {
        scratch.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let k_len = if top_k > 0 && top_k < vocab {
            top_k
        } else {
            vocab
        };
        let mut keep = k_len;
        if p.top_p < 1.0 {
            let total: u64 = scratch[..k_len].iter().map(|c| c.1).sum();
            let target = f64::from(p.top_p) * total as f64;
            let (mut acc, mut len) = (0u64, 0);
            while len < k_len && (acc as f64) < target {
                acc += scratch[len].1;
                len += 1;
            }
            keep = keep.min(len);
        }
        if p.min_p > 0.0 {
            let floor = (p.min_p * WEIGHT_ONE) as u64;
            keep = keep.min(scratch.iter().filter(|c| c.1 >= floor).count());
        }
        scratch.truncate(keep.max(1));
        scratch.sort_unstable_by_key(|c| c.0);
    }
    let kept: u64 = scratch.iter().map(|c| c.1).sum();
    if kept == 0 {
        // Only when every logit is NaN.
        return argmax(logits);
    }
    let r = (f64::from(p.u) * kept as f64) as u64;
    let mut acc = 0u64;
    for &(id, w) in scratch.iter() {
        acc += w;
        if r < acc {
            return id;
        }
    }
    scratch.last().map_or(0, |c| c.0)
}

/// The token of a row under `Greedy` or `Draw`; None for `Logits`.
pub fn sample_row(logits: &[f32], s: &RowSampling, scratch: &mut Vec<(u32, u64)>) -> Option<u32> {
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
    fn weights_follow_exp_in_fixed_point() {
        assert_eq!(weight(3.0, 3.0, 1.0), 1 << 31);
        for &(l, t) in &[(-0.3f32, 1.0f32), (-2.0, 0.7), (-10.0, 1.3), (-20.0, 1.0)] {
            let want = ((l as f64) / (t as f64)).exp() * 2f64.powi(31);
            let got = weight(l, 0.0, 1.0 / t) as f64;
            // Relative error of the polynomial, plus the fixed point's truncation.
            assert!(
                (got - want).abs() <= want * 1e-6 + 1.0,
                "{l} {t}: {got} vs {want}"
            );
        }
        assert_eq!(weight(-22.0, 0.0, 1.0), 0);
        assert_eq!(weight(f32::NAN, 0.0, 1.0), 0);
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
        let last = |p: DrawParams, s: &mut Vec<(u32, u64)>| {
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
