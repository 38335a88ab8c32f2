//! A request's sampling settings and its seeded generator: greedy at
//! temperature 0, otherwise a draw (temperature, top-k, top-p, min-p) as
//! lhama_model::sampling defines it, on the host or on the backend (same
//! seed, same logits, same token).

use lhama_model::rng::SplitMix64;
use lhama_model::sampling::{DrawParams, RowSampling};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches top_p (1 = off).
    pub top_p: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens less likely than min_p times the most likely one (0 = off).
    pub min_p: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// Host scratch of the draw, reused between calls.
    scratch: Vec<(u32, u64)>,
}

pub use lhama_model::sampling::argmax;

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            // Unseeded requests still need distinct streams.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (std::process::id() as u64).rotate_left(32)
        });
        Self {
            params,
            rng: SplitMix64::new(seed),
            scratch: Vec::new(),
        }
    }

    /// How the next token is chosen from unprocessed logits: greedy, or a
    /// draw carrying the next number of this request's generator (one per
    /// token whichever side samples, so a seed gives the same tokens on the
    /// CPU and on a GPU).
    pub fn next_row_sampling(&mut self) -> RowSampling {
        let p = &self.params;
        if p.temperature <= 0.0 {
            return RowSampling::Greedy;
        }
        let mut u = self.rng.next_f64() as f32;
        if u >= 1.0 {
            // An f64 just below 1 can round up to 1 as f32.
            u = f32::from_bits(1.0f32.to_bits() - 1);
        }
        RowSampling::Draw(DrawParams {
            temperature: p.temperature,
            top_k: u32::try_from(p.top_k).unwrap_or(u32::MAX),
            top_p: p.top_p,
            min_p: p.min_p,
            u,
        })
    }

    /// Chooses the next token from `logits` on the host.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let s = self.next_row_sampling();
        lhama_model::sampling::sample_row(logits, &s, &mut self.scratch).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_the_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37 % 17) as f32) / 5.0).collect();
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(42),
            ..SamplingParams::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(&params), draw(&params));
        let other = SamplingParams {
            seed: Some(43),
            ..params.clone()
        };
        assert_ne!(draw(&params), draw(&other));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_head() {
        let logits = [1.0, 5.0, 2.0, 4.9];
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            seed: Some(1),
            ..SamplingParams::default()
        });
        assert!((0..20).all(|_| s.sample(&logits) == 1));
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.6,
            seed: Some(1),
            ..SamplingParams::default()
        });
        // p(1) ≈ 0.51, p(3) ≈ 0.46: the smallest set reaching 0.6 is {1, 3}.
        let drawn: std::collections::BTreeSet<u32> = (0..200).map(|_| s.sample(&logits)).collect();
        assert_eq!(drawn, [1, 3].into_iter().collect());
    }

    #[test]
    fn sampled_frequencies_follow_the_softmax() {
        let logits = [0.0f32, (2.0f32).ln()]; // probabilities 1/3 and 2/3
        let mut s = Sampler::new(SamplingParams {
            seed: Some(9),
            ..SamplingParams::default()
        });
        let n = 30_000;
        let ones = (0..n).filter(|_| s.sample(&logits) == 1).count();
        let frac = ones as f64 / n as f64;
        assert!((frac - 2.0 / 3.0).abs() < 0.02, "frac {frac}");
    }
}
