//! x86-64 AVX-512 version of the lm_head's f16 product for several rows at
//! once: each 16 weights are widened once and serve up to 8 rows (the
//! one-row AVX2 dot product widened them again for every row). Chosen at run
//! time by `kernels::dense_matmul_f16`.

use std::arch::x86_64::*;

use half::f16;

/// Elements per step: two 16-lane accumulators per row.
const STEP: usize = 32;

/// out[r] = x[r * k..][..k] · w for the R rows, w of length k (f16).
/// Each row's sum is formed in the same order whatever R is (two 16-lane
/// partial sums over steps of 32, added lane by lane, then the lanes in a
/// fixed tree, then the tail one by one), so a row's result does not depend
/// on the rows computed with it.
///
/// # Safety
/// The CPU must support AVX-512F, FMA and F16C; `x.len() >= R * k`,
/// `w.len() >= k`.
#[target_feature(enable = "avx512f,fma,f16c")]
pub unsafe fn dot_f16_rows<const R: usize>(x: &[f32], k: usize, w: &[f16], out: &mut [f32; R]) {
    // SAFETY: every load is inside the first k elements of w and of each of
    // the R rows of x (i + STEP <= k in the loop; the tail is indexed).
    unsafe {
        let (px, pw) = (x.as_ptr(), w.as_ptr() as *const u16);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let mut i = 0;
        while i + STEP <= k {
            let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(pw.add(i) as *const __m256i));
            let w1 = _mm512_cvtph_ps(_mm256_loadu_si256(pw.add(i + 16) as *const __m256i));
            for (r, a) in acc.iter_mut().enumerate() {
                let xr = px.add(r * k + i);
                a[0] = _mm512_fmadd_ps(_mm512_loadu_ps(xr), w0, a[0]);
                a[1] = _mm512_fmadd_ps(_mm512_loadu_ps(xr.add(16)), w1, a[1]);
            }
            i += STEP;
        }
        for (r, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
            let mut lanes = [0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_add_ps(a[0], a[1]));
            let mut t = lanes;
            let mut width = 8;
            while width > 0 {
                for l in 0..width {
                    t[l] += t[l + width];
                }
                width /= 2;
            }
            let mut total = t[0];
            for j in i..k {
                total += x[r * k + j] * w[j].to_f32();
            }
            *o = total;
        }
    }
}

/// Whether the CPU has what `dot_f16_rows` needs, checked once.
pub fn available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        crate::isa::allows(crate::isa::Isa::Avx512)
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    })
}
