//! Rotary position embeddings: the tables both backends use.

/// Rotary embedding tables in Hugging Face's convention: inv_freq and the
/// angle pos * inv_freq in f32 (as transformers computes them), cos/sin of
/// that angle.
pub struct RopeTable {
    half: usize,
    /// [max_pos, half]
    cos: Vec<f32>,
    /// [max_pos, half]
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, theta: f64, max_pos: usize, position_scale: f64) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            let pos = (p as f64 / position_scale) as f32;
            for &f in &inv_freq {
                let angle = (pos * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self { half, cos, sin }
    }

    /// The tables for a model's config (head_dim, rope_theta, linear scaling,
    /// max_position_embeddings).
    pub fn for_config(config: &crate::config::LlamaConfig) -> Self {
        let position_scale = match config.rope_scaling {
            crate::config::RopeScaling::None => 1.0,
            crate::config::RopeScaling::Linear { factor } => factor,
        };
        Self::new(
            config.head_dim,
            config.rope_theta,
            config.max_position_embeddings,
            position_scale,
        )
    }

    /// (cos, sin), each [max_pos, head_dim / 2].
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// Rotates every head of `x` ([T, heads * head_dim]) in place, pairing
    /// dimension i with i + head_dim/2 (rotate_half).
    pub fn apply(&self, x: &mut [f32], positions: &[u32], heads: usize) {
        let hd = 2 * self.half;
        for (row, &p) in x.chunks_exact_mut(heads * hd).zip(positions) {
            let c = &self.cos[p as usize * self.half..][..self.half];
            let s = &self.sin[p as usize * self.half..][..self.half];
            for head in row.chunks_exact_mut(hd) {
                let (lo, hi) = head.split_at_mut(self.half);
                for i in 0..self.half {
                    let (a, b) = (lo[i], hi[i]);
                    lo[i] = a * c[i] - b * s[i];
                    hi[i] = b * c[i] + a * s[i];
                }
            }
        }
    }
}
