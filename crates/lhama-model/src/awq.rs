//! The AutoAWQ `WQLinear_GEMM` packing, and the quantizer the synthetic
//! checkpoint generator uses.
//!
//! For a layer with K inputs, N outputs and group size G:
//! - `qweight` [K, N/8] u32: word (k, c) holds columns 8c..8c+7 of row k,
//!   column 8c + j in bits `4 * SHIFT_SLOT[j]` .. +4;
//! - `qzeros` [K/G, N/8] u32: packed the same way;
//! - `scales` [K/G, N] f16;
//! - W[k, n] = (q[k, n] - z[k / G, n]) * s[k / G, n].

use half::f16;

/// Nibble slot that holds column `8c + j` of a packed word: the inverse of
/// AutoAWQ's interleave order [0, 2, 4, 6, 1, 3, 5, 7].
pub const SHIFT_SLOT: [u32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// Bit shift of column `8c + j` inside its word.
#[inline(always)]
pub const fn column_shift(j: usize) -> u32 {
    4 * SHIFT_SLOT[j]
}

/// The 4-bit value of column `8c + j` in `word`.
#[inline(always)]
pub fn unpack(word: u32, j: usize) -> u32 {
    (word >> column_shift(j)) & 0xF
}

/// Packs 8 values (column order) into one word, AWQ nibble order.
pub fn pack(values: [u32; 8]) -> u32 {
    values
        .iter()
        .enumerate()
        .fold(0u32, |w, (j, &v)| w | ((v & 0xF) << column_shift(j)))
}

/// Quantized form of one [K, N] matrix.
pub struct Quantized {
    pub qweight: Vec<u32>,
    pub qzeros: Vec<u32>,
    pub scales: Vec<f16>,
}

/// Quantizes `w` ([K, N], row-major, the transpose of torch's weight) the
/// AutoAWQ way: per group and column, scale = (max - min) / 15,
/// zero = round(-min / scale) in 0..=15, q = clamp(round(w / scale) + zero).
/// The scale is rounded to f16 first, so q is computed against the scale the
/// checkpoint actually stores.
pub fn quantize(w: &[f32], k: usize, n: usize, group: usize) -> Quantized {
    assert!(
        k.is_multiple_of(group) && n.is_multiple_of(8) && w.len() == k * n,
        "quantize: bad shape"
    );
    let groups = k / group;
    let mut q = vec![0u32; k * n];
    let mut zeros = vec![0u32; groups * n];
    let mut scales = vec![f16::ZERO; groups * n];
    for g in 0..groups {
        for col in 0..n {
            let rows = (g * group..(g + 1) * group).map(|r| w[r * n + col]);
            let (lo, hi) = rows.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), x| {
                (lo.min(x), hi.max(x))
            });
            let scale = f16::from_f32((hi - lo).max(1e-5) / 15.0);
            let s = scale.to_f32();
            let zero = (-lo / s).round().clamp(0.0, 15.0);
            scales[g * n + col] = scale;
            zeros[g * n + col] = zero as u32;
            for r in g * group..(g + 1) * group {
                q[r * n + col] = ((w[r * n + col] / s).round() + zero).clamp(0.0, 15.0) as u32;
            }
        }
    }
    let pack_rows = |vals: &[u32], rows: usize| -> Vec<u32> {
        let mut out = Vec::with_capacity(rows * n / 8);
        for r in 0..rows {
            for c in 0..n / 8 {
                let mut v = [0u32; 8];
                v.copy_from_slice(&vals[r * n + 8 * c..r * n + 8 * c + 8]);
                out.push(pack(v));
            }
        }
        out
    };
    Quantized {
        qweight: pack_rows(&q, k),
        qzeros: pack_rows(&zeros, groups),
        scales,
    }
}

/// Dequantizes to [K, N] f32: for tests and references only; the forward pass
/// never materializes this.
pub fn dequantize(
    qweight: &[u32],
    qzeros: &[u32],
    scales: &[f16],
    k: usize,
    n: usize,
    group: usize,
) -> Vec<f32> {
    let n8 = n / 8;
    let mut w = vec![0f32; k * n];
    for row in 0..k {
        let g = row / group;
        for col in 0..n {
            let q = unpack(qweight[row * n8 + col / 8], col % 8) as f32;
            let z = unpack(qzeros[g * n8 + col / 8], col % 8) as f32;
            w[row * n + col] = (q - z) * scales[g * n + col].to_f32();
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_matches_the_autoawq_interleave() {
        // AutoAWQ stores column 8c + ORDER[i] in nibble i, ORDER = [0,2,4,6,1,3,5,7].
        let order = [0usize, 2, 4, 6, 1, 3, 5, 7];
        let values = [1u32, 2, 3, 4, 5, 6, 7, 8];
        let mut expected = 0u32;
        for (nibble, &col) in order.iter().enumerate() {
            expected |= values[col] << (4 * nibble);
        }
        assert_eq!(pack(values), expected);
        for (j, &v) in values.iter().enumerate() {
            assert_eq!(unpack(expected, j), v);
        }
    }

    #[test]
    fn quantize_roundtrips_within_half_a_step() {
        let (k, n, g) = (64, 16, 32);
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919 % 211) as f32 / 105.0) - 1.0)
            .collect();
        let qz = quantize(&w, k, n, g);
        let back = dequantize(&qz.qweight, &qz.qzeros, &qz.scales, k, n, g);
        for row in 0..k {
            for col in 0..n {
                let s = qz.scales[(row / g) * n + col].to_f32();
                let err = (back[row * n + col] - w[row * n + col]).abs();
                assert!(err <= 0.5 * s + 1e-6, "({row},{col}) err {err} step {s}");
            }
        }
    }
}
