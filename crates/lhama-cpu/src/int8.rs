//! The CPU fast path's AWQ product: integer dot products of the int4
//! weights with the activations quantized to int16 per weight group, each
//! group's integer sum scaled back in f32:
//!
//!   y[r, n] = Σ_g s[g, n] · sx[r, g] · (Σ_{k in g} q[k, n] · xq[r, k] − z[g, n] · Σ_{k in g} xq[r, k])
//!
//! with xq = round(x / sx), sx = max |x| / 32767 over the row's group. (int8
//! activations, as llama.cpp takes them, were measured first: their error,
//! 0.09-0.12 nats on the tiny golden's top-5 logprobs, is over the fast
//! path's 0.05 budget; int16 keeps about f16's precision.)
//!
//! Columns sit in vector lanes: the weights are re-laid once at load
//! (`Int8Layout`) so that 32 bytes hold 16 consecutive columns × 4
//! consecutive k: byte e holds column e / 2 at k = e % 2 in its low nibble
//! and at k = 2 + e % 2 in its high one. Widened to 16 bits, each nibble
//! half is one vector of (column, k pair) products, multiplied with a
//! broadcast k pair of a row's activations by `vpdpwssd` (AVX-512 VNNI) or
//! `vpmaddwd` (AVX2): every lane ends a group holding its column's whole
//! integer sum, so no horizontal reduction is needed, and the widened
//! weights serve every row of the step (up to 8 at a time) before the next
//! ones are loaded. A group's f32 step is then done 16 (8) columns at once.
//! A scalar version computes the same integer sums and the same f32
//! operations, so every version gives the same result exactly (q ≤ 15,
//! |xq| ≤ 32767: every sum fits i32).

use rayon::prelude::*;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;

use lhama_model::awq::unpack;
use lhama_model::weights::FusedAwq;

/// Rows one pass over a column block takes (its widened weights serve them
/// all); a product of more rows makes several passes, over the block's
/// weights while they are in cache.
pub const INT8_MAX_ROWS: usize = 8;
/// Columns per 32-byte packed block.
const CB: usize = 16;
/// k values per 32-byte packed block.
const KQ: usize = 4;
/// Bytes ahead of the weights being read that the SIMD loops prefetch.
/// With 8 rows a 32-byte block takes long enough that the hardware
/// prefetcher alone left the loop waiting on memory: the 8-row products
/// took twice as long with their weights in memory as in cache. Measured
/// with examples/int8_bench.rs on this project's AMD EPYC VM (24 layers'
/// copies, so the weights come from memory), 8 rows, µs: gate_up 449-462 →
/// 308-357, qkv 196-223 → 144-170, down 334-403 → 253-362 (512 and 1024
/// bytes ahead in between, 4096 no better); 1 row unchanged.
const PREFETCH: usize = 2048;
/// Largest |xq|: 127 · 256 + 127, so that every xq is 256 · hi + lo with
/// hi and lo signed bytes, as the AMX version takes them (the 0.4% of int16's
/// range given up costs nothing measurable in precision).
const XQ_MAX: f32 = 32639.0;

/// int4 weights re-laid for integer dot products: [N / 16 column blocks]
/// [K / 4 k quads][32 bytes], with the zeros as bytes and the scales as f16
/// ([K/G, N], both exact: AWQ's zeros are 4-bit integers and its scales
/// f16), a fifth of the f32 copies' bytes to stream per token.
pub struct Int8Layout {
    packed: Vec<u8>,
    zeros: Vec<u8>,
    scales: Vec<half::f16>,
}

impl Int8Layout {
    /// The re-laid weights, or None when the shape does not allow it (N a
    /// multiple of 16, the group of 4, K of the group) or a zero or a scale
    /// would not be held exactly.
    pub fn new(w: &FusedAwq) -> Option<Self> {
        let (k, n, group) = (w.k, w.n, w.group);
        if !n.is_multiple_of(CB)
            || group == 0
            || !group.is_multiple_of(KQ)
            || !k.is_multiple_of(group)
        {
            return None;
        }
        let zeros: Vec<u8> = w.zeros.iter().map(|&z| z as u8).collect();
        let scales: Vec<half::f16> = w.scales.iter().map(|&s| half::f16::from_f32(s)).collect();
        let exact = zeros.iter().zip(&w.zeros).all(|(&a, &b)| f32::from(a) == b)
            && scales
                .iter()
                .zip(&w.scales)
                .all(|(a, &b)| a.to_f32().to_bits() == b.to_bits());
        if !exact {
            return None;
        }
        let n8 = n / 8;
        let q = |kk: usize, col: usize| unpack(w.qweight[kk * n8 + col / 8], col % 8) as u8;
        let kqs = k / KQ;
        let mut packed = vec![0u8; k * n / 2];
        for cb in 0..n / CB {
            for kq in 0..kqs {
                let dst = &mut packed[(cb * kqs + kq) * 32..][..32];
                for (e, d) in dst.iter_mut().enumerate() {
                    let (col, par) = (cb * CB + e / 2, e % 2);
                    *d = q(kq * KQ + par, col) | (q(kq * KQ + 2 + par, col) << 4);
                }
            }
        }
        Some(Self {
            packed,
            zeros,
            scales,
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.packed.len() + self.zeros.len() + 2 * self.scales.len()
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
            let at = r * k + g * group;
            let (scale, sum) = quantize_group(&x[at..][..group], &mut q.xq[at..][..group]);
            q.scale[r * groups + g] = scale;
            q.sum[r * groups + g] = sum;
        }
    }
    q
}

/// One group of activations to int16: returns its scale and the sum of its
/// values. The vector versions give the same values, bit for bit, as the
/// scalar one (f32::round's ties away from zero done as trunc plus a
/// correction; NaN to 0 as `as` does); the libm `roundf` per value took
/// about as long as the whole 8-row AMX product.
fn quantize_group(xs: &[f32], dst: &mut [i16]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512_vnni() {
            // SAFETY: AVX-512 F/BW are present (checked with VNNI).
            return unsafe { quantize_group_avx512(xs, dst) };
        }
        if has_avx2() {
            // SAFETY: AVX2 is present.
            return unsafe { quantize_group_avx2(xs, dst) };
        }
    }
    quantize_group_scalar(xs, dst)
}

/// The scale and its inverse for a group whose largest |x| is `amax`.
fn group_scale(amax: f32) -> (f32, f32) {
    if amax > 0.0 && amax.is_finite() {
        (amax / XQ_MAX, XQ_MAX / amax)
    } else {
        (0.0, 0.0)
    }
}

fn quantize_group_scalar(xs: &[f32], dst: &mut [i16]) -> (f32, i32) {
    let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
    let (scale, inv) = group_scale(amax);
    (scale, quantize_values(xs, dst, inv))
}

/// xq = round(x · inv) clamped to ±XQ_MAX, into dst; returns Σ xq. The
/// scalar version's values, and the vector versions' tails.
fn quantize_values(xs: &[f32], dst: &mut [i16], inv: f32) -> i32 {
    let mut sum = 0i32;
    for (d, v) in dst.iter_mut().zip(xs) {
        let v = (v * inv).round().clamp(-XQ_MAX, XQ_MAX) as i16;
        sum += i32::from(v);
        *d = v;
    }
    sum
}

/// 16 values at a time; a tail of fewer takes the scalar steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_group_avx512(xs: &[f32], dst: &mut [i16]) -> (f32, i32) {
    use std::arch::x86_64::*;
    let n16 = xs.len() / 16 * 16;
    // SAFETY: every load and store is of 16 values below n16 <= len.
    unsafe {
        // vmaxps returns its second operand where the first is NaN: a NaN
        // x is skipped, as f32::max skips it.
        let mut m = _mm512_setzero_ps();
        for i in (0..n16).step_by(16) {
            m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xs.as_ptr().add(i))), m);
        }
        let amax = xs[n16..]
            .iter()
            .fold(_mm512_reduce_max_ps(m), |a, v| a.max(v.abs()));
        let (scale, inv) = group_scale(amax);
        let (vinv, lim) = (_mm512_set1_ps(inv), _mm512_set1_ps(XQ_MAX));
        let (half, one) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.0));
        let sign = _mm512_set1_ps(-0.0);
        let mut acc = _mm512_setzero_si512();
        for i in (0..n16).step_by(16) {
            let t = _mm512_mul_ps(_mm512_loadu_ps(xs.as_ptr().add(i)), vinv);
            // NaN (an infinite x) becomes 0, as `NaN as i16` does.
            let t = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(t, t), t);
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(t);
            let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(t, r)), half);
            let step = _mm512_or_ps(one, _mm512_and_ps(t, sign));
            let r = _mm512_mask_add_ps(r, away, r, step);
            let r = _mm512_min_ps(
                _mm512_max_ps(r, _mm512_sub_ps(_mm512_setzero_ps(), lim)),
                lim,
            );
            let v = _mm512_cvtps_epi32(r);
            acc = _mm512_add_epi32(acc, v);
            _mm256_storeu_si256(
                dst.as_mut_ptr().add(i) as *mut __m256i,
                _mm512_cvtepi32_epi16(v),
            );
        }
        let sum = _mm512_reduce_add_epi32(acc) + quantize_values(&xs[n16..], &mut dst[n16..], inv);
        (scale, sum)
    }
}

/// As `quantize_group_avx512`, 8 values a vector, 16 a step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_group_avx2(xs: &[f32], dst: &mut [i16]) -> (f32, i32) {
    use std::arch::x86_64::*;
    let n16 = xs.len() / 16 * 16;
    // SAFETY: every load and store is of 8 or 16 values below n16 <= len.
    unsafe {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let mut m = _mm256_setzero_ps();
        for i in (0..n16).step_by(8) {
            m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(xs.as_ptr().add(i)), abs), m);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let amax = lanes
            .iter()
            .chain(&xs[n16..])
            .fold(0f32, |a, v| a.max(v.abs()));
        let (scale, inv) = group_scale(amax);
        let (vinv, lim) = (_mm256_set1_ps(inv), _mm256_set1_ps(XQ_MAX));
        let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
        let (sign, nlim) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(-XQ_MAX));
        let quant = |x: __m256| {
            let t = _mm256_mul_ps(x, vinv);
            let t = _mm256_and_ps(t, _mm256_cmp_ps::<_CMP_ORD_Q>(t, t));
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(t);
            let away = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_and_ps(_mm256_sub_ps(t, r), abs), half);
            let step = _mm256_and_ps(_mm256_or_ps(one, _mm256_and_ps(t, sign)), away);
            let r = _mm256_add_ps(r, step);
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, nlim), lim))
        };
        let mut acc = _mm256_setzero_si256();
        for i in (0..n16).step_by(16) {
            let a = quant(_mm256_loadu_ps(xs.as_ptr().add(i)));
            let b = quant(_mm256_loadu_ps(xs.as_ptr().add(i + 8)));
            acc = _mm256_add_epi32(acc, _mm256_add_epi32(a, b));
            // packs works within 128-bit lanes: [a0-3 b0-3 a4-7 b4-7].
            let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, p);
        }
        let mut parts = [0i32; 8];
        _mm256_storeu_si256(parts.as_mut_ptr() as *mut __m256i, acc);
        let sum = parts.iter().sum::<i32>() + quantize_values(&xs[n16..], &mut dst[n16..], inv);
        (scale, sum)
    }
}

/// y[M, N] = x[M, K] · W through `layout`, any M: each task takes a run of
/// 16-column blocks and computes them for every row, INT8_MAX_ROWS rows at a
/// time, so a block's weights come from memory once per product.
pub fn matmul(x: &[f32], m: usize, w: &FusedAwq, layout: &Int8Layout, y: &mut [f32]) {
    assert_eq!(x.len(), m * w.k, "integer matmul: x is not [M, K]");
    assert_eq!(y.len(), m * w.n, "integer matmul: y is not [M, N]");
    // Long products in runs of rows whose quantized activations stay in
    // cache while every column block passes over them (at most 512 KB).
    let run = (PASS_BYTES / (2 * w.k)).max(INT8_MAX_ROWS) / INT8_MAX_ROWS * INT8_MAX_ROWS;
    if m > run {
        for r0 in (0..m).step_by(run) {
            let rn = run.min(m - r0);
            matmul_run(
                &x[r0 * w.k..(r0 + rn) * w.k],
                rn,
                w,
                layout,
                &mut y[r0 * w.n..(r0 + rn) * w.n],
            );
        }
        return;
    }
    matmul_run(x, m, w, layout, y);
}

/// Bytes of quantized activations one pass of `matmul` takes.
const PASS_BYTES: usize = 512 * 1024;

fn matmul_run(x: &[f32], m: usize, w: &FusedAwq, layout: &Int8Layout, y: &mut [f32]) {
    let q = quantize(x, m, w.k, w.group);
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if amx::takes(m, w) {
        return amx::matmul_run(&q, m, w, layout, y);
    }
    let blocks = w.n / CB;
    let per_task = blocks.div_ceil(rayon::current_num_threads() * 8).max(1);
    let out = crate::kernels::SyncPtr(y.as_mut_ptr());
    (0..blocks.div_ceil(per_task))
        .into_par_iter()
        .for_each(|t| {
            let mut tile = [0f32; INT8_MAX_ROWS * CB];
            for cb in t * per_task..((t + 1) * per_task).min(blocks) {
                for r0 in (0..m).step_by(INT8_MAX_ROWS) {
                    let rn = INT8_MAX_ROWS.min(m - r0);
                    block(&q, r0, rn, w, layout, cb, &mut tile[..rn * CB]);
                    for r in 0..rn {
                        // SAFETY: y has m * n elements (asserted above); this task
                        // alone writes columns cb * 16..cb * 16 + 16 of each row.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                tile.as_ptr().add(r * CB),
                                out.ptr().add((r0 + r) * w.n + cb * CB),
                                CB,
                            );
                        }
                    }
                }
            }
        });
}

/// Whether the integer product runs on AVX-512 VNNI (for logs).
#[cfg(target_arch = "x86_64")]
pub(crate) fn vnni_available() -> bool {
    has_avx512_vnni()
}

/// Whether the integer product runs on AMX from `amx::AMX_MIN_ROWS` rows (for logs).
#[cfg(target_arch = "x86_64")]
pub(crate) fn amx_available() -> bool {
    amx::available()
}

/// Whether the CPU has AVX-512 with VNNI (`vpdpwssd`), checked once.
#[cfg(target_arch = "x86_64")]
fn has_avx512_vnni() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        crate::isa::allows(crate::isa::Isa::Avx512)
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    })
}

/// Whether the CPU has what the AVX2 versions use (AVX2, FMA, F16C) and
/// LHAMA_CPU_ISA allows them, checked once (also attention's AVX2 form).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        crate::isa::allows(crate::isa::Isa::Avx2)
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    })
}

/// The 16 columns of block `cb` for the `rn` (1 to INT8_MAX_ROWS) rows from
/// `r0`, into out[rn, 16], in the fastest version this CPU has.
#[allow(clippy::too_many_arguments)]
fn block(
    q: &QuantRows,
    r0: usize,
    rn: usize,
    w: &FusedAwq,
    layout: &Int8Layout,
    cb: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512_vnni() {
            // SAFETY: AVX-512 F/BW/VNNI, FMA and F16C are present; the sizes
            // are the layout's and the quantized rows' own (built for w),
            // cb < n / 16, r0 + rn <= q's rows, out holds rn * 16.
            unsafe { rows_dispatch(rn, |r| block_avx512_rows(q, r0, r, w, layout, cb, out)) };
            return;
        }
        if has_avx2() {
            // SAFETY: AVX2, FMA and F16C are present; sizes as above.
            unsafe { rows_dispatch(rn, |r| block_avx2_rows(q, r0, r, w, layout, cb, out)) };
            return;
        }
    }
    block_scalar(q, r0, rn, w, layout, cb, out);
}

/// Row counts as the const generic the SIMD versions take (their
/// accumulators stay in registers).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Rows {
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
}

#[cfg(target_arch = "x86_64")]
fn rows_dispatch(rn: usize, f: impl FnOnce(Rows)) {
    f(match rn {
        1 => Rows::R1,
        2 => Rows::R2,
        3 => Rows::R3,
        4 => Rows::R4,
        5 => Rows::R5,
        6 => Rows::R6,
        7 => Rows::R7,
        _ => Rows::R8,
    })
}

/// One group's f32 step, shared by every version: y + (isum − z · xsum) · s · sx.
#[inline(always)]
fn group_term(y: f32, isum: i32, xsum: i32, z: f32, s: f32, sx: f32) -> f32 {
    ((isum as f32 - z * xsum as f32) * s).mul_add(sx, y)
}

#[allow(clippy::too_many_arguments)]
fn block_scalar(
    q: &QuantRows,
    r0: usize,
    rn: usize,
    w: &FusedAwq,
    layout: &Int8Layout,
    cb: usize,
    out: &mut [f32],
) {
    let (k, n, group) = (w.k, w.n, w.group);
    let (kqs, groups) = (k / KQ, k / group);
    for r in r0..r0 + rn {
        for c in 0..CB {
            let col = cb * CB + c;
            let mut y = 0f32;
            for g in 0..groups {
                let mut isum = 0i32;
                for kq in g * group / KQ..(g + 1) * group / KQ {
                    let bytes = &layout.packed[(cb * kqs + kq) * 32..][..32];
                    let xs = &q.xq[r * k + kq * KQ..][..KQ];
                    for par in 0..2 {
                        let b = bytes[2 * c + par];
                        isum += i32::from(b & 0xF) * i32::from(xs[par]);
                        isum += i32::from(b >> 4) * i32::from(xs[2 + par]);
                    }
                }
                y = group_term(
                    y,
                    isum,
                    q.sum[r * groups + g],
                    f32::from(layout.zeros[g * n + col]),
                    layout.scales[g * n + col].to_f32(),
                    q.scale[r * groups + g],
                );
            }
            out[(r - r0) * CB + c] = y;
        }
    }
}

/// Generates the SIMD version for a const row count and the dispatch over
/// `Rows` to it.
macro_rules! rows_version {
    ($name:ident, $inner:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            q: &QuantRows,
            r0: usize,
            rows: Rows,
            w: &FusedAwq,
            layout: &Int8Layout,
            cb: usize,
            out: &mut [f32],
        ) {
            // SAFETY: the caller's contract, passed on.
            unsafe {
                match rows {
                    Rows::R1 => $inner::<1>(q, r0, w, layout, cb, out),
                    Rows::R2 => $inner::<2>(q, r0, w, layout, cb, out),
                    Rows::R3 => $inner::<3>(q, r0, w, layout, cb, out),
                    Rows::R4 => $inner::<4>(q, r0, w, layout, cb, out),
                    Rows::R5 => $inner::<5>(q, r0, w, layout, cb, out),
                    Rows::R6 => $inner::<6>(q, r0, w, layout, cb, out),
                    Rows::R7 => $inner::<7>(q, r0, w, layout, cb, out),
                    Rows::R8 => $inner::<8>(q, r0, w, layout, cb, out),
                }
            }
        }
    };
}

rows_version!(block_avx512_rows, block_avx512);
rows_version!(block_avx2_rows, block_avx2);

/// R rows of block `cb` with 512-bit vectors: lane c of a row's accumulator
/// is column cb * 16 + c.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn block_avx512<const R: usize>(
    q: &QuantRows,
    r0: usize,
    w: &FusedAwq,
    layout: &Int8Layout,
    cb: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (k, n, group) = (w.k, w.n, w.group);
    let (kqs, groups) = (k / KQ, k / group);
    // SAFETY (every load and store below): the packed block (cb, kq) is 32
    // bytes inside `packed` (cb < n / 16, kq < k / 4); rows r0..r0 + R are
    // q's, so their activations (4 at r * k + kq * 4), sums and scales are
    // inside q; the block's 16 columns of group g are inside the layout's
    // zeros (16 bytes) and scales (16 f16) ([groups, n]); out holds R * 16.
    // A prefetch past the end of `packed` is a hint that reads nothing.
    unsafe {
        let nib = _mm256_set1_epi8(0x0F);
        let mut y = [_mm512_setzero_ps(); R];
        // Two accumulators per row (the k pairs 0-1 and 2-3 of each quad),
        // added up at the group's end (exactly: integers): one chain of two
        // dependent vpdpwssd a quad per row bound the loop by their latency,
        // and the compiler split each into vpmaddwd + vpaddd to shorten it.
        for g in 0..groups {
            let mut acc2 = [[_mm512_setzero_si512(); 2]; R];
            for kq in g * group / KQ..(g + 1) * group / KQ {
                let at = layout.packed.as_ptr().add((cb * kqs + kq) * 32);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH) as *const i8);
                let v = _mm256_loadu_si256(at as *const __m256i);
                // (column, k 0-1) and (column, k 2-3) as 16-bit pairs.
                let lo = _mm512_cvtepu8_epi16(_mm256_and_si256(v, nib));
                let hi = _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), nib));
                for (r, a) in acc2.iter_mut().enumerate() {
                    let xp = q.xq.as_ptr().add((r0 + r) * k + kq * KQ) as *const i32;
                    a[0] = _mm512_dpwssd_epi32(a[0], lo, _mm512_set1_epi32(xp.read_unaligned()));
                    a[1] = _mm512_dpwssd_epi32(
                        a[1],
                        hi,
                        _mm512_set1_epi32(xp.add(1).read_unaligned()),
                    );
                }
            }
            let mut acc = [_mm512_setzero_si512(); R];
            for (a, pair) in acc.iter_mut().zip(&acc2) {
                *a = _mm512_add_epi32(pair[0], pair[1]);
            }
            let at = g * n + cb * CB;
            let z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                layout.zeros.as_ptr().add(at) as *const __m128i,
            )));
            let s = _mm512_cvtph_ps(_mm256_loadu_si256(
                layout.scales.as_ptr().add(at) as *const __m256i
            ));
            for (r, (yr, a)) in y.iter_mut().zip(&acc).enumerate() {
                let row = (r0 + r) * groups + g;
                let xsum = _mm512_set1_ps(q.sum[row] as f32);
                let f = _mm512_mul_ps(
                    _mm512_sub_ps(_mm512_cvtepi32_ps(*a), _mm512_mul_ps(z, xsum)),
                    s,
                );
                *yr = _mm512_fmadd_ps(f, _mm512_set1_ps(q.scale[row]), *yr);
            }
        }
        for (r, yr) in y.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * CB), *yr);
        }
    }
}

/// As `block_avx512` with 256-bit vectors: each half of the block (8
/// columns) in its own accumulator.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_avx2<const R: usize>(
    q: &QuantRows,
    r0: usize,
    w: &FusedAwq,
    layout: &Int8Layout,
    cb: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (k, n, group) = (w.k, w.n, w.group);
    let (kqs, groups) = (k / KQ, k / group);
    // SAFETY (every load and store below): as in block_avx512.
    unsafe {
        let nib = _mm_set1_epi8(0x0F);
        for half in 0..2 {
            let mut y = [_mm256_setzero_ps(); R];
            for g in 0..groups {
                let mut acc = [_mm256_setzero_si256(); R];
                for kq in g * group / KQ..(g + 1) * group / KQ {
                    let at = layout.packed.as_ptr().add((cb * kqs + kq) * 32 + half * 16);
                    if half == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH) as *const i8);
                    }
                    let v = _mm_loadu_si128(at as *const __m128i);
                    let lo = _mm256_cvtepu8_epi16(_mm_and_si128(v, nib));
                    let hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(v, 4), nib));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xp = q.xq.as_ptr().add((r0 + r) * k + kq * KQ) as *const i32;
                        let p = _mm256_add_epi32(
                            _mm256_madd_epi16(lo, _mm256_set1_epi32(xp.read_unaligned())),
                            _mm256_madd_epi16(hi, _mm256_set1_epi32(xp.add(1).read_unaligned())),
                        );
                        *a = _mm256_add_epi32(*a, p);
                    }
                }
                let at = g * n + cb * CB + half * 8;
                let z = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    layout.zeros.as_ptr().add(at) as *const __m128i,
                )));
                let s = _mm256_cvtph_ps(_mm_loadu_si128(
                    layout.scales.as_ptr().add(at) as *const __m128i
                ));
                for (r, (yr, a)) in y.iter_mut().zip(&acc).enumerate() {
                    let row = (r0 + r) * groups + g;
                    let xsum = _mm256_set1_ps(q.sum[row] as f32);
                    let f = _mm256_mul_ps(
                        _mm256_sub_ps(_mm256_cvtepi32_ps(*a), _mm256_mul_ps(z, xsum)),
                        s,
                    );
                    *yr = _mm256_fmadd_ps(f, _mm256_set1_ps(q.scale[row]), *yr);
                }
            }
            for (r, yr) in y.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(r * CB + half * 8), *yr);
            }
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
        for &(m, k, n, group) in &[
            (1, 128, 64, 128),
            (3, 256, 208, 64),
            (8, 1024, 96, 128),
            (19, 512, 64, 256),
            (13, 256, 48, 32),
            (2, 1024, 16, 512),
            (4, 256, 1040, 128),
            (40, 384, 320, 128),
            (64, 128, 128, 64),
        ] {
            let w = random_awq(&mut g, k, n, group);
            let layout = Int8Layout::new(&w).unwrap();
            assert_eq!(layout.bytes(), k * n / 2 + 3 * (k / group) * n);
            let x: Vec<f32> = (0..m * k)
                .map(|_| g.next_f64() as f32 * 4.0 - 2.0)
                .collect();
            let mut y = vec![f32::NAN; m * n];
            matmul(&x, m, &w, &layout, &mut y);
            let q = quantize(&x, m, k, group);
            // Each version this CPU has, block by block and in row chunks as
            // matmul takes them, against the scalar one.
            type Version =
                unsafe fn(&QuantRows, usize, usize, &FusedAwq, &Int8Layout, usize, &mut [f32]);
            let mut versions: Vec<(&str, Version)> = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                unsafe fn avx2(
                    q: &QuantRows,
                    r0: usize,
                    rn: usize,
                    w: &FusedAwq,
                    l: &Int8Layout,
                    cb: usize,
                    o: &mut [f32],
                ) {
                    // SAFETY: the caller checked the features; sizes as block's.
                    rows_dispatch(rn, |r| unsafe { block_avx2_rows(q, r0, r, w, l, cb, o) })
                }
                unsafe fn avx512(
                    q: &QuantRows,
                    r0: usize,
                    rn: usize,
                    w: &FusedAwq,
                    l: &Int8Layout,
                    cb: usize,
                    o: &mut [f32],
                ) {
                    // SAFETY: as above.
                    rows_dispatch(rn, |r| unsafe { block_avx512_rows(q, r0, r, w, l, cb, o) })
                }
                if has_avx2() {
                    versions.push(("avx2", avx2));
                }
                if has_avx512_vnni() {
                    versions.push(("avx512", avx512));
                }
            }
            eprintln!(
                "versions checked against the scalar one: {:?}",
                versions.iter().map(|v| v.0).collect::<Vec<_>>()
            );
            let mut scalar = vec![f32::NAN; m * n];
            for cb in 0..n / CB {
                for r0 in (0..m).step_by(INT8_MAX_ROWS) {
                    let rn = INT8_MAX_ROWS.min(m - r0);
                    let mut tile = vec![0f32; rn * CB];
                    block_scalar(&q, r0, rn, &w, &layout, cb, &mut tile);
                    for r in 0..rn {
                        scalar[(r0 + r) * n + cb * CB..][..CB]
                            .copy_from_slice(&tile[r * CB..][..CB]);
                    }
                    for (name, f) in &versions {
                        let mut got = vec![f32::NAN; rn * CB];
                        // SAFETY: only versions whose features the CPU has
                        // (checked above); the sizes are the layout's and q's own.
                        unsafe { f(&q, r0, rn, &w, &layout, cb, &mut got) };
                        assert_eq!(
                            got, tile,
                            "m={m} k={k} n={n} block {cb} rows {r0}+{rn}: {name} vs scalar"
                        );
                    }
                }
            }
            assert_eq!(y, scalar, "m={m} k={k} n={n}: matmul vs scalar");
            // AMX, where the CPU has it, for any row count (matmul itself
            // takes it from AMX_MIN_ROWS): row chunks, a ragged last one,
            // passes of fewer than 4 column blocks, B tiles reused.
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            if amx::available() && group % 64 == 0 {
                let mut got = vec![f32::NAN; m * n];
                amx::matmul_run(&q, m, &w, &layout, &mut got);
                assert_eq!(
                    got, scalar,
                    "m={m} k={k} n={n} group {group}: amx vs scalar"
                );
                eprintln!("amx checked: m={m} k={k} n={n} group {group}");
            }
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

    /// Every version of the activations' quantization gives the scalar
    /// one's values bit for bit: ties (away from zero, as f32::round), the
    /// clamp, NaN and infinite inputs, zero groups and tails shorter than a
    /// vector.
    #[test]
    fn vector_quantization_matches_the_scalar_one() {
        let mut g = SplitMix64::new(33);
        let mut cases: Vec<Vec<f32>> = Vec::new();
        for len in [4usize, 16, 20, 36, 64, 128, 132] {
            cases.push((0..len).map(|_| g.next_normal() as f32 * 3.0).collect());
        }
        // amax = XQ_MAX makes the inverse scale 1: x * inv is x, so these
        // are exact ties and near-ties.
        let mut ties: Vec<f32> = vec![XQ_MAX, -0.5, 0.5, 1.5, -2.5, 2.5, 100.5, -100.5];
        ties.extend([
            0.49999997,
            -0.49999997,
            3.4999998,
            -7.5000005,
            32638.5,
            -32638.5,
        ]);
        ties.extend((0..18).map(|i| i as f32 + 0.5));
        cases.push(ties);
        cases.push(vec![0.0; 32]);
        cases.push(vec![-0.0; 20]);
        let mut nan: Vec<f32> = (0..48).map(|i| i as f32 - 20.0).collect();
        nan[3] = f32::NAN;
        nan[40] = f32::NAN;
        cases.push(nan);
        let mut inf: Vec<f32> = (0..40).map(|i| i as f32).collect();
        inf[17] = f32::INFINITY;
        inf[38] = f32::NEG_INFINITY;
        cases.push(inf);
        let mut tiny: Vec<f32> = (0..24).map(|i| (i as f32 - 12.0) * 1e-30).collect();
        tiny[5] = f32::MIN_POSITIVE / 4.0;
        cases.push(tiny);
        type Version = unsafe fn(&[f32], &mut [i16]) -> (f32, i32);
        let mut versions: Vec<(&str, Version)> = vec![("dispatch", |x, d| quantize_group(x, d))];
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2() {
                versions.push(("avx2", quantize_group_avx2));
            }
            if has_avx512_vnni() {
                versions.push(("avx512", quantize_group_avx512));
            }
        }
        for xs in &cases {
            let mut want = vec![0i16; xs.len()];
            let (ws, wsum) = quantize_group_scalar(xs, &mut want);
            assert!(want.iter().all(|v| v.unsigned_abs() <= XQ_MAX as u16));
            for (name, f) in &versions {
                let mut got = vec![i16::MIN; xs.len()];
                // SAFETY: only versions whose features the CPU has.
                let (gs, gsum) = unsafe { f(xs, &mut got) };
                assert_eq!(got, want, "{name}: values of {xs:?}");
                assert_eq!(
                    (gs.to_bits(), gsum),
                    (ws.to_bits(), wsum),
                    "{name}: scale, sum"
                );
            }
        }
        // The ties went away from zero.
        let mut d = vec![0i16; 4];
        quantize_group_scalar(&[XQ_MAX, -0.5, 2.5, -100.5], &mut d);
        assert_eq!(d, [XQ_MAX as i16, -1, 3, -101]);
    }

    /// Every xq the quantization can give (|xq| <= XQ_MAX) is 256 hi + lo
    /// with both signed bytes, as the AMX version splits it.
    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn every_activation_splits_into_two_signed_bytes() {
        let lim = XQ_MAX as i16;
        let k = 64;
        let values: Vec<i16> = (-lim..=lim).collect();
        for chunk in values.chunks(k * 8) {
            let m = chunk.len().div_ceil(k);
            let mut xq = chunk.to_vec();
            xq.resize(m * k, 0);
            let q = QuantRows {
                xq: xq.clone(),
                scale: vec![1.0; m],
                sum: vec![0; m],
            };
            let a = amx::split_rows(&q, 0, m, k);
            for r in 0..m {
                for c in 0..k {
                    let (hi, lo) = (a[r].0[c], a[m + r].0[c]);
                    assert_eq!(
                        i32::from(hi) * 256 + i32::from(lo),
                        i32::from(xq[r * k + c]),
                        "split of {}",
                        xq[r * k + c]
                    );
                }
            }
        }
    }

    #[test]
    fn shapes_the_layout_cannot_take_are_refused() {
        let mut g = SplitMix64::new(32);
        // Columns not in blocks of 16.
        assert!(Int8Layout::new(&random_awq(&mut g, 128, 24, 32)).is_none());
        assert!(Int8Layout::new(&random_awq(&mut g, 96, 64, 32)).is_some());
        // A scale f16 cannot hold, a zero that is not a byte.
        let mut w = random_awq(&mut g, 128, 64, 64);
        w.scales[3] = 0.1;
        assert!(Int8Layout::new(&w).is_none());
        let mut w = random_awq(&mut g, 128, 64, 64);
        w.zeros[5] = 2.5;
        assert!(Int8Layout::new(&w).is_none());
    }
}
