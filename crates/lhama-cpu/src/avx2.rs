//! x86-64 AVX2 + FMA (+ F16C) versions of the two kernels that dominate the
//! CPU forward pass: the AWQ tile and the fp16 lm_head dot product. Chosen
//! at run time by `kernels`; the portable versions there are the fallback and
//! handle ragged tiles.
//!
//! AWQ tile layout: a tile is 64 output columns = 8 packed words per input
//! row, loaded as one 256-bit vector. Shifting it right by 4i and masking
//! gives, in lane c, column 8c + j for the j whose nibble slot is i (AutoAWQ's interleave,
//! `awq::SHIFT_SLOT`), so
//! the 64 values of a tile are handled "nibble-major": index i * 8 + c. Zeros
//! and scales are stored in that order at load (`AwqMatrix::zeros_nm`,
//! `scales_nm`) and the accumulators are put back into column order at the end.

use std::arch::x86_64::*;

use half::f16;

use super::kernels::{AwqMatrix, tile_index};

/// Full 64-column tile starting at `n0`: acc[M, 64] += x[M, K] · W[:, n0..n0+64].
/// `wt` is scratch of group_size * 64 floats.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `n0 + 64 <= w.n`; `x.len() == m * w.k`;
/// `acc.len() == m * 64`; `wt.len() >= w.group * 64`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn awq_tile64(
    x: &[f32],
    m: usize,
    w: &AwqMatrix,
    n0: usize,
    wt: &mut [f32],
    acc: &mut [f32],
) {
    // SAFETY: the function's contract (see # Safety) covers every access below.
    unsafe {
        let (k, n, group) = (w.k, w.n, w.group);
        debug_assert!(
            n0 + 64 <= n && x.len() == m * k && acc.len() == m * 64 && wt.len() >= group * 64
        );
        let n8 = n / 8;
        let mask = _mm256_set1_epi32(0xF);
        let counts: [__m128i; 8] = std::array::from_fn(|i| _mm_cvtsi32_si128(4 * i as i32));
        for g in 0..k / group {
            let zs = w.zeros_nm.as_ptr().add(g * n + n0);
            let ss = w.scales_nm.as_ptr().add(g * n + n0);
            // wt[kk, i * 8 + c] = (q - z) * s for the group's rows.
            for kk in 0..group {
                let words = w.qweight.as_ptr().add((g * group + kk) * n8 + n0 / 8);
                // SAFETY (all loads/stores here): the caller's bounds above.
                let v = _mm256_loadu_si256(words as *const __m256i);
                let dst = wt.as_mut_ptr().add(kk * 64);
                for (i, &count) in counts.iter().enumerate() {
                    let q = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v, count), mask));
                    let z = _mm256_loadu_ps(zs.add(i * 8));
                    let s = _mm256_loadu_ps(ss.add(i * 8));
                    _mm256_storeu_ps(dst.add(i * 8), _mm256_mul_ps(_mm256_sub_ps(q, z), s));
                }
            }
            for r in 0..m {
                let xr = x.as_ptr().add(r * k + g * group);
                let a = acc.as_mut_ptr().add(r * 64);
                let mut regs: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(a.add(i * 8)));
                for kk in 0..group {
                    let xv = _mm256_set1_ps(*xr.add(kk));
                    let row = wt.as_ptr().add(kk * 64);
                    for (i, reg) in regs.iter_mut().enumerate() {
                        *reg = _mm256_fmadd_ps(xv, _mm256_loadu_ps(row.add(i * 8)), *reg);
                    }
                }
                for (i, reg) in regs.iter().enumerate() {
                    _mm256_storeu_ps(a.add(i * 8), *reg);
                }
            }
        }
        // Nibble-major back to column order, row by row.
        for r in 0..m {
            let row = &mut acc[r * 64..][..64];
            let mut tmp = [0f32; 64];
            for (j, t) in tmp.iter_mut().enumerate() {
                *t = row[tile_index(j)];
            }
            row.copy_from_slice(&tmp);
        }
    }
}

/// Dot product of f32 `a` with f16 `b` (converted by F16C), 32 lanes wide.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    // SAFETY: the function's contract (see # Safety) covers every access below.
    unsafe {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr() as *const u16);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, reg) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8 * j + 8 <= n elements of both slices.
                let bv = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8 * j) as *const __m128i));
                *reg = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), bv, *reg);
            }
            i += 32;
        }
        finish_f16_dot(acc, &a[..n], &b[..n], i)
    }
}

/// The end of `dot_f16` (and of each row of `dot_f16_x2`): the four 8-lane
/// partial sums added in a fixed tree, then elements `from..` one by one.
#[target_feature(enable = "avx2,fma,f16c")]
fn finish_f16_dot(acc: [__m256; 4], a: &[f32], b: &[f16], from: usize) -> f32 {
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds the 8 floats stored.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    let mut total = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (x, w) in a[from..].iter().zip(&b[from..]) {
        total += x * w.to_f32();
    }
    total
}

/// `dot_f16` for two rows of f32 (`a0`, `a1`, each at least `b.len()`
/// long) against one f16 vector: each 8 weights widened once for both rows,
/// each row's sum formed exactly as `dot_f16` forms it (four 8-lane partial
/// sums over steps of 32, the same final tree, then the tail one by one), so
/// a row's result does not depend on the row computed with it.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_x2(a0: &[f32], a1: &[f32], b: &[f16]) -> [f32; 2] {
    // SAFETY: the function's contract (see # Safety) covers every access below.
    unsafe {
        let n = b.len().min(a0.len()).min(a1.len());
        let (p0, p1, pb) = (a0.as_ptr(), a1.as_ptr(), b.as_ptr() as *const u16);
        let mut acc0 = [_mm256_setzero_ps(); 4];
        let mut acc1 = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for j in 0..4 {
                // SAFETY: i + 8 * j + 8 <= n elements of all three slices.
                let bv = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8 * j) as *const __m128i));
                acc0[j] = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(i + 8 * j)), bv, acc0[j]);
                acc1[j] = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(i + 8 * j)), bv, acc1[j]);
            }
            i += 32;
        }
        [
            finish_f16_dot(acc0, &a0[..n], &b[..n], i),
            finish_f16_dot(acc1, &a1[..n], &b[..n], i),
        ]
    }
}

/// `dst[i] = src[i]` widened from f16, 8 at a time by F16C (exact, as
/// `f16::to_f32`), the tail one by one.
///
/// # Safety
/// The CPU must support F16C and AVX; `dst.len() >= src.len()`.
#[target_feature(enable = "avx,f16c")]
pub unsafe fn widen_f16(src: &[f16], dst: &mut [f32]) {
    // SAFETY: i + 8 <= src.len() <= dst.len() in the loop.
    unsafe {
        let n = src.len().min(dst.len());
        let (ps, pd) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(
                pd.add(i),
                _mm256_cvtph_ps(_mm_loadu_si128(ps.add(i) as *const __m128i)),
            );
            i += 8;
        }
        for j in i..n {
            dst[j] = src[j].to_f32();
        }
    }
}
