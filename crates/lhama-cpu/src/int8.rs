//! The CPU fast path's AWQ product for decode-sized batches (up to
//! `INT8_MAX_ROWS` rows): integer dot products of the int4 weights with the
//! activations quantized to int16 per weight group, each group's integer sum
//! scaled back in f32:
//!
//!   y[r, n] = Σ_g s[g, n] · sx[r, g] · (Σ_{k in g} q[k, n] · xq[r, k] − z[g, n] · Σ_{k in g} xq[r, k])
//!
//! with xq = round(x / sx), sx = max |x| / 32767 over the row's group. (int8
//! activations, as llama.cpp takes them, were measured first: their error,
//! 0.09-0.12 nats on the tiny golden's top-5 logprobs, is over the fast
//! path's 0.05 budget; int16 keeps about f16's precision.) Weights are
//! re-laid once at load (`Int8Layout`) so that 64 consecutive k of one column
//! sit in 32 bytes: byte j holds k = j in its low nibble and k = 32 + j in
//! its high one. On x86-64 with AVX2 the nibbles are widened to 16 bits and
//! multiplied by `vpmaddwd` (q ≤ 15, |xq| ≤ 32767: every sum fits i32);
//! elsewhere a scalar version computes the same integer sums and the same
//! f32 operations, so both give the same result exactly.

use rayon::prelude::*;

use lhama_model::awq::unpack;
use lhama_model::weights::FusedAwq;

/// Rows up to which the integer path runs (decode steps; prefill keeps the
/// f32 tile kernel).
pub const INT8_MAX_ROWS: usize = 8;
/// k values per packed block of one column (32 bytes).
const KB: usize = 64;
/// Columns per task and per AVX2 reduction.
const CB: usize = 8;
/// Largest |xq|.
const XQ_MAX: f32 = 32767.0;

/// int4 weights re-laid for integer dot products: [N / 8 column blocks]
/// [K / 64 k blocks][8 columns][32 bytes].
pub struct Int8Layout {
    packed: Vec<u8>,
}

impl Int8Layout {
    /// The re-laid weights, or None when the shape does not allow it (K and
    /// the group a multiple of 64, N of 8).
    pub fn new(w: &FusedAwq) -> Option<Self> {
        let (k, n, group) = (w.k, w.n, w.group);
        if k % KB != 0 || group % KB != 0 || n % CB != 0 || k % group != 0 {
            return None;
        }
        let n8 = n / 8;
        let q = |kk: usize, col: usize| unpack(w.qweight[kk * n8 + col / 8], col % 8) as u8;
        let kbs = k / KB;
        let mut packed = vec![0u8; k * n / 2];
        for cb in 0..n / CB {
            for kb in 0..kbs {
                for c in 0..CB {
                    let col = cb * CB + c;
                    let dst = &mut packed[((cb * kbs + kb) * CB + c) * 32..][..32];
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = q(kb * KB + j, col) | (q(kb * KB + 32 + j, col) << 4);
                    }
                }
            }
        }
        Some(Self { packed })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.packed.len()
    }
}

/// Rows of activations quantized per group: values, each group's scale and
/// the sum of its values.
struct QuantRows {
    xq: Vec<i16>,
    scale: Vec<f32>,
    sum: Vec<i32>,
}

fn quantize(x: &[f32], m: usize, k: usize, group: usize) -> QuantRows {
    let groups = k / group;
    let mut q = QuantRows {
        xq: vec![0; m * k],
        scale: vec![0.0; m * groups],
        sum: vec![0; m * groups],
    };
    for r in 0..m {
        for g in 0..groups {
            let xs = &x[r * k + g * group..][..group];
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (scale, inv) = if amax > 0.0 && amax.is_finite() {
                (amax / XQ_MAX, XQ_MAX / amax)
            } else {
                (0.0, 0.0)
            };
            let dst = &mut q.xq[r * k + g * group..][..group];
            let mut sum = 0i32;
            for (d, v) in dst.iter_mut().zip(xs) {
                let v = (v * inv).round().clamp(-XQ_MAX, XQ_MAX) as i16;
                sum += i32::from(v);
                *d = v;
            }
            q.scale[r * groups + g] = scale;
            q.sum[r * groups + g] = sum;
        }
    }
    q
}

/// y[M, N] = x[M, K] · W for M ≤ INT8_MAX_ROWS, through `layout`.
pub fn matmul(x: &[f32], m: usize, w: &FusedAwq, layout: &Int8Layout, y: &mut [f32]) {
    assert!(m <= INT8_MAX_ROWS, "integer matmul: {m} rows");
    assert_eq!(x.len(), m * w.k, "integer matmul: x is not [M, K]");
    assert_eq!(y.len(), m * w.n, "integer matmul: y is not [M, N]");
    let q = quantize(x, m, w.k, w.group);
    let blocks = w.n / CB;
    // Each task: a run of column blocks, all rows (the block's weights are
    // read once from memory for every row).
    let per_task = blocks.div_ceil(rayon::current_num_threads() * 8).max(1);
    let out = crate::kernels::SyncPtr(y.as_mut_ptr());
    (0..blocks.div_ceil(per_task))
        .into_par_iter()
        .for_each(|t| {
            let mut tile = [0f32; INT8_MAX_ROWS * CB];
            for cb in t * per_task..((t + 1) * per_task).min(blocks) {
                block(&q, m, w, layout, cb, &mut tile[..m * CB]);
                for r in 0..m {
                    // SAFETY: y has m * n elements (asserted above); this task alone
                    // writes columns cb * 8..cb * 8 + 8 of each row.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            tile.as_ptr().add(r * CB),
                            out.ptr().add(r * w.n + cb * CB),
                            CB,
                        );
                    }
                }
            }
        });
}

/// Whether the CPU has AVX-512 with VNNI (`vpdpwssd`), checked once.
#[cfg(target_arch = "x86_64")]
fn has_avx512_vnni() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("fma")
    })
}

/// The 8 columns of block `cb` for every row, into out[m, 8].
fn block(q: &QuantRows, m: usize, w: &FusedAwq, layout: &Int8Layout, cb: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512_vnni() {
        // SAFETY: AVX-512 F/BW/VNNI and FMA are present; sizes as for AVX2.
        unsafe { block_avx512(q, m, w, layout, cb, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA are present; the sizes are the layout's and the
        // quantized rows' own (built for w), cb < n / 8, out holds m * 8.
        unsafe { block_avx2(q, m, w, layout, cb, out) };
        return;
    }
    block_scalar(q, m, w, layout, cb, out);
}

/// One group's f32 step, shared by both versions: y + (isum − z · xsum) · s · sx.
#[inline(always)]
fn group_term(y: f32, isum: i32, xsum: i32, z: f32, s: f32, sx: f32) -> f32 {
    ((isum as f32 - z * xsum as f32) * s).mul_add(sx, y)
}

fn block_scalar(
    q: &QuantRows,
    m: usize,
    w: &FusedAwq,
    layout: &Int8Layout,
    cb: usize,
    out: &mut [f32],
) {
    let (k, n, group) = (w.k, w.n, w.group);
    let (kbs, groups) = (k / KB, k / group);
    for r in 0..m {
        for c in 0..CB {
            let col = cb * CB + c;
            let mut y = 0f32;
            for g in 0..groups {
                let mut isum = 0i32;
                for kb in g * group / KB..(g + 1) * group / KB {
                    let bytes = &layout.packed[((cb * kbs + kb) * CB + c) * 32..][..32];
                    let xs = &q.xq[r * k + kb * KB..][..KB];
                    for (j, &b) in bytes.iter().enumerate() {
                        isum += i32::from(b & 0xF) * i32::from(xs[j]);
                        isum += i32::from(b >> 4) * i32::from(xs[32 + j]);
                    }
                }
                y = group_term(
                    y,
                    isum,
                    q.sum[r * groups + g],
                    w.zeros[g * n + col],
                    w.scales[g * n + col],
                    q.scale[r * groups + g],
                );
            }
            out[r * CB + c] = y;
        }
    }
}

/// One group's step of the 8 columns of block `cb` for row `r`: the
/// columns' integer sums (`acc`, 8 lanes each) reduced into one vector in
/// column order, then `group_term` lane by lane (the same roundings).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn group_step_avx2(
    yv: std::arch::x86_64::__m256,
    acc: &[std::arch::x86_64::__m256i; CB],
    q: &QuantRows,
    w: &FusedAwq,
    cb: usize,
    r: usize,
    g: usize,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let (n, groups) = (w.n, w.k / w.group);
    let s01 = _mm256_hadd_epi32(acc[0], acc[1]);
    let s23 = _mm256_hadd_epi32(acc[2], acc[3]);
    let s45 = _mm256_hadd_epi32(acc[4], acc[5]);
    let s67 = _mm256_hadd_epi32(acc[6], acc[7]);
    let s0123 = _mm256_hadd_epi32(s01, s23);
    let s4567 = _mm256_hadd_epi32(s45, s67);
    let isum = _mm256_add_epi32(
        _mm256_permute2x128_si256(s0123, s4567, 0x20),
        _mm256_permute2x128_si256(s0123, s4567, 0x31),
    );
    // SAFETY: the block's 8 columns of group g are inside zeros and scales
    // ([groups, n], cb < n / 8).
    let (z, s) = unsafe {
        (
            _mm256_loadu_ps(w.zeros.as_ptr().add(g * n + cb * CB)),
            _mm256_loadu_ps(w.scales.as_ptr().add(g * n + cb * CB)),
        )
    };
    let xsum = _mm256_set1_ps(q.sum[r * groups + g] as f32);
    let f = _mm256_mul_ps(
        _mm256_sub_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(z, xsum)),
        s,
    );
    _mm256_fmadd_ps(f, _mm256_set1_ps(q.scale[r * groups + g]), yv)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(
    q: &QuantRows,
    m: usize,
    w: &FusedAwq,
    layout: &Int8Layout,
    cb: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (k, group) = (w.k, w.group);
    let (kbs, groups) = (k / KB, k / group);
    // SAFETY (every load and store below): the packed block of (cb, kb, c)
    // is 32 bytes inside `packed` (cb < n / 8, kb < k / 64, c < 8); a row's
    // activations k0..k0 + 64 are inside xq (m * k); zeros and scales of the
    // block's 8 columns are inside [groups, n]; out holds m * 8.
    unsafe {
        let nib = _mm256_set1_epi8(0x0F);
        for r in 0..m {
            let mut yv = _mm256_setzero_ps();
            for g in 0..groups {
                let mut acc = [_mm256_setzero_si256(); CB];
                for kb in g * group / KB..(g + 1) * group / KB {
                    let xp = q.xq.as_ptr().add(r * k + kb * KB) as *const __m256i;
                    let x0 = _mm256_loadu_si256(xp);
                    let x1 = _mm256_loadu_si256(xp.add(1));
                    let x2 = _mm256_loadu_si256(xp.add(2));
                    let x3 = _mm256_loadu_si256(xp.add(3));
                    let wp = layout.packed.as_ptr().add((cb * kbs + kb) * CB * 32);
                    for (c, a) in acc.iter_mut().enumerate() {
                        let v = _mm256_loadu_si256(wp.add(c * 32) as *const __m256i);
                        let lo = _mm256_and_si256(v, nib);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                        // k 0..16, 16..32 (low nibbles), 32..48, 48..64 (high).
                        let w0 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(lo));
                        let w1 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(lo, 1));
                        let w2 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(hi));
                        let w3 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(hi, 1));
                        let p01 =
                            _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
                        let p23 =
                            _mm256_add_epi32(_mm256_madd_epi16(w2, x2), _mm256_madd_epi16(w3, x3));
                        *a = _mm256_add_epi32(*a, _mm256_add_epi32(p01, p23));
                    }
                }
                yv = group_step_avx2(yv, &acc, q, w, cb, r, g);
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(r * CB), yv);
        }
    }
}

/// As `block_avx2`, with 512-bit vectors: 32 weights widened to 16 bits at
/// once and `vpdpwssd` multiplying and accumulating them in one instruction.
/// The same integer sums and f32 operations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
unsafe fn block_avx512(
    q: &QuantRows,
    m: usize,
    w: &FusedAwq,
    layout: &Int8Layout,
    cb: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (k, group) = (w.k, w.group);
    let (kbs, groups) = (k / KB, k / group);
    // SAFETY (every load and store below): as in block_avx2 (64 activations
    // of a row are two 512-bit loads).
    unsafe {
        let nib = _mm256_set1_epi8(0x0F);
        for r in 0..m {
            let mut yv = _mm256_setzero_ps();
            for g in 0..groups {
                let mut acc = [_mm512_setzero_si512(); CB];
                for kb in g * group / KB..(g + 1) * group / KB {
                    let xp = q.xq.as_ptr().add(r * k + kb * KB);
                    let x0 = _mm512_loadu_si512(xp as *const __m512i);
                    let x1 = _mm512_loadu_si512(xp.add(32) as *const __m512i);
                    let wp = layout.packed.as_ptr().add((cb * kbs + kb) * CB * 32);
                    for (c, a) in acc.iter_mut().enumerate() {
                        let v = _mm256_loadu_si256(wp.add(c * 32) as *const __m256i);
                        let lo = _mm512_cvtepu8_epi16(_mm256_and_si256(v, nib));
                        let hi =
                            _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), nib));
                        *a = _mm512_dpwssd_epi32(*a, lo, x0);
                        *a = _mm512_dpwssd_epi32(*a, hi, x1);
                    }
                }
                // 16 lanes to 8 per column, then as AVX2.
                let half: [__m256i; CB] = std::array::from_fn(|c| {
                    _mm256_add_epi32(
                        _mm512_castsi512_si256(acc[c]),
                        _mm512_extracti64x4_epi64(acc[c], 1),
                    )
                });
                yv = group_step_avx2(yv, &half, q, w, cb, r, g);
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(r * CB), yv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lhama_model::awq;
    use lhama_model::rng::SplitMix64;

    fn random_awq(g: &mut SplitMix64, k: usize, n: usize, group: usize) -> FusedAwq {
        let w: Vec<f32> = (0..k * n)
            .map(|_| g.next_f64() as f32 * 2.0 - 1.0)
            .collect();
        let q = awq::quantize(&w, k, n, group);
        FusedAwq {
            k,
            n,
            group,
            qweight: q.qweight.clone(),
            zeros: (0..k / group * n)
                .map(|i| awq::unpack(q.qzeros[i / 8], i % 8) as f32)
                .collect(),
            scales: q.scales.iter().map(|s| s.to_f32()).collect(),
        }
    }

    /// The AVX2 and scalar versions agree exactly (the same integer sums and
    /// f32 operations), and are within int16 quantization error of the f64
    /// product of the dequantized weights.
    #[test]
    fn int8_product_matches_scalar_and_reference() {
        let mut g = SplitMix64::new(31);
        for &(m, k, n, group) in &[(1, 128, 64, 128), (3, 256, 200, 64), (8, 1024, 96, 128)] {
            let w = random_awq(&mut g, k, n, group);
            let layout = Int8Layout::new(&w).unwrap();
            assert_eq!(layout.bytes(), k * n / 2);
            let x: Vec<f32> = (0..m * k)
                .map(|_| g.next_f64() as f32 * 4.0 - 2.0)
                .collect();
            let mut y = vec![f32::NAN; m * n];
            matmul(&x, m, &w, &layout, &mut y);
            let q = quantize(&x, m, k, group);
            // Each version this CPU has, block by block, against the scalar one.
            type Block = unsafe fn(&QuantRows, usize, &FusedAwq, &Int8Layout, usize, &mut [f32]);
            let mut versions: Vec<(&str, Block)> = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    versions.push(("avx2", block_avx2));
                }
                if has_avx512_vnni() {
                    versions.push(("avx512", block_avx512));
                }
            }
            eprintln!(
                "versions checked against the scalar one: {:?}",
                versions.iter().map(|v| v.0).collect::<Vec<_>>()
            );
            let mut scalar = vec![f32::NAN; m * n];
            for cb in 0..n / CB {
                let mut tile = vec![0f32; m * CB];
                block_scalar(&q, m, &w, &layout, cb, &mut tile);
                scalar_tile_into(&mut scalar, &tile, m, n, cb);
                for (name, f) in &versions {
                    let mut got = vec![f32::NAN; m * CB];
                    // SAFETY: only versions whose features the CPU has (checked
                    // above); the sizes are the layout's and q's own.
                    unsafe { f(&q, m, &w, &layout, cb, &mut got) };
                    assert_eq!(got, tile, "m={m} k={k} n={n} block {cb}: {name} vs scalar");
                }
            }
            assert_eq!(y, scalar, "m={m} k={k} n={n}: matmul vs scalar");
            let mut worst = 0f64;
            let mut norm = 0f64;
            for r in 0..m {
                for col in 0..n {
                    let exact: f64 = (0..k)
                        .map(|kk| {
                            let qv = awq::unpack(w.qweight[kk * (n / 8) + col / 8], col % 8) as f64;
                            let gi = kk / group;
                            let deq =
                                (qv - w.zeros[gi * n + col] as f64) * w.scales[gi * n + col] as f64;
                            deq * x[r * k + kk] as f64
                        })
                        .sum();
                    worst = worst.max((exact - y[r * n + col] as f64).abs());
                    norm = norm.max(exact.abs());
                }
            }
            // int16 activations: about 1/65534 of each group's largest |x| per term.
            assert!(
                worst < 1e-4 * norm.max(1.0),
                "m={m} k={k} n={n}: error {worst} (max {norm})"
            );
        }
    }

    fn scalar_tile_into(y: &mut [f32], tile: &[f32], m: usize, n: usize, cb: usize) {
        for r in 0..m {
            y[r * n + cb * CB..][..CB].copy_from_slice(&tile[r * CB..][..CB]);
        }
    }

    #[test]
    fn shapes_the_layout_cannot_take_are_refused() {
        let mut g = SplitMix64::new(32);
        assert!(Int8Layout::new(&random_awq(&mut g, 96, 64, 32)).is_none());
        assert!(Int8Layout::new(&random_awq(&mut g, 128, 64, 32)).is_none());
        assert!(Int8Layout::new(&random_awq(&mut g, 128, 64, 64)).is_some());
    }
}
