//! CPU kernels of the forward pass, multi-threaded with rayon. The hot loops
//! are written so LLVM vectorizes them; on x86-64 with AVX2+FMA they are
//! compiled a second time for those features and picked at run time, so one
//! binary serves every x86-64 machine.

use half::f16;
use rayon::prelude::*;

use lhama_model::awq::column_shift;
pub use lhama_model::rope::RopeTable;
use lhama_model::weights::FusedAwq;

/// A raw pointer that rayon tasks may share; each task writes a disjoint
/// region, which every use states in its SAFETY note.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: only used for disjoint writes from parallel tasks (see each use).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// A method (not field access) so closures capture the whole Send + Sync wrapper.
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    crate::isa::allows(crate::isa::Isa::Avx2)
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
}

/// Whether the f32 kernels run their AVX2/FMA versions (for logs).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_available() -> bool {
    has_avx2_fma()
}

/// Calls `$generic(args)` or, where the CPU has AVX2 and FMA, `$avx(args)`:
/// the same body compiled for those features.
macro_rules! dispatch {
    ($generic:ident, $avx:ident, $($arg:expr),* $(,)?) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_fma() {
                // SAFETY: the CPU supports the features `$avx` is compiled for.
                unsafe { $avx($($arg),*) }
            } else {
                $generic($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $generic($($arg),*)
        }
    }};
}

/// An AWQ layer prepared for the CPU: the fused weights (packed as in the
/// checkpoint, zeros unpacked and scales widened, both per group) plus the
/// nibble-major copies of zeros and scales the AVX2 tile reads. Derefs to
/// the `FusedAwq` it was built from.
pub struct AwqMatrix {
    pub weights: FusedAwq,
    /// [K/G, N] zeros with each full 64-column tile in nibble-major order
    /// (see `avx2`); ragged tail columns stay in column order.
    pub zeros_nm: Vec<f32>,
    /// [K/G, N] scales, laid out like `zeros_nm`.
    pub scales_nm: Vec<f32>,
    /// The fast path's re-laid weights, which then take every product
    /// (None on the exact path, or for a shape it cannot take).
    pub int8: Option<crate::int8::Int8Layout>,
}

impl std::ops::Deref for AwqMatrix {
    type Target = FusedAwq;
    fn deref(&self) -> &FusedAwq {
        &self.weights
    }
}

impl AwqMatrix {
    /// Adds the nibble-major copies of zeros and scales to `weights`.
    pub fn new(weights: FusedAwq) -> Self {
        let (k, n, group) = (weights.k, weights.n, weights.group);
        let nibble_major = |v: &[f32]| -> Vec<f32> {
            let mut out = v.to_vec();
            for g in 0..k / group {
                for t in 0..n / TILE_N {
                    let base = g * n + t * TILE_N;
                    for j in 0..TILE_N {
                        out[base + tile_index(j)] = v[base + j];
                    }
                }
            }
            out
        };
        let zeros_nm = nibble_major(&weights.zeros);
        let scales_nm = nibble_major(&weights.scales);
        Self {
            weights,
            zeros_nm,
            scales_nm,
            int8: None,
        }
    }

    /// The fast path's matrix: the integer path's layout (crate::int8),
    /// which then serves every product, so the AWQ copies are dropped (only
    /// the shape stays); as `new` for a shape the layout cannot take.
    pub fn with_int8(weights: FusedAwq) -> Self {
        match crate::int8::Int8Layout::new(&weights) {
            Some(layout) => Self {
                weights: FusedAwq {
                    qweight: Vec::new(),
                    zeros: Vec::new(),
                    scales: Vec::new(),
                    ..weights
                },
                zeros_nm: Vec::new(),
                scales_nm: Vec::new(),
                int8: Some(layout),
            },
            None => Self::new(weights),
        }
    }
}

/// Position of tile column j in the nibble-major order of a full tile.
pub(crate) fn tile_index(j: usize) -> usize {
    let (c, within) = (j / 8, j % 8);
    let nibble = lhama_model::awq::SHIFT_SLOT[within] as usize;
    nibble * 8 + c
}

/// Output columns one task computes: 8 packed words.
const TILE_N: usize = 64;

/// y[M, N] = x[M, K] · W, W dequantized one [G, TILE_N] tile at a time into
/// a buffer that stays in L1, then used by every row of x.
pub fn awq_matmul(x: &[f32], m: usize, w: &AwqMatrix, y: &mut [f32]) {
    assert_eq!(x.len(), m * w.k, "awq_matmul: x is not [M, K]");
    assert_eq!(y.len(), m * w.n, "awq_matmul: y is not [M, N]");
    if let Some(layout) = &w.int8 {
        return crate::int8::matmul(x, m, &w.weights, layout, y);
    }
    let tiles = w.n.div_ceil(TILE_N);
    let out = SyncPtr(y.as_mut_ptr());
    (0..tiles).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(wt, acc): &mut (Vec<f32>, Vec<f32>), t| {
            let n0 = t * TILE_N;
            let tn = TILE_N.min(w.n - n0);
            wt.resize(w.group * tn, 0.0);
            acc.clear();
            acc.resize(m * tn, 0.0);
            #[cfg(target_arch = "x86_64")]
            if tn == TILE_N && has_avx2_fma() {
                // SAFETY: AVX2 and FMA are present; the tile is full (n0 + 64 <= n),
                // x is [m, k] and y [m, n] (asserted above), acc is [m, 64] and wt
                // holds group * 64 floats (resized above).
                unsafe { super::avx2::awq_tile64(x, m, w, n0, wt, acc) };
            } else {
                dispatch!(awq_tile, awq_tile_avx2, x, m, w, n0, tn, wt, acc);
            }
            #[cfg(not(target_arch = "x86_64"))]
            awq_tile(x, m, w, n0, tn, wt, acc);
            for row in 0..m {
                // SAFETY: y has m * n elements (asserted above); this task alone
                // writes columns n0..n0 + tn of each row.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        acc.as_ptr().add(row * tn),
                        out.ptr().add(row * w.n + n0),
                        tn,
                    );
                }
            }
        },
    );
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn awq_tile_avx2(
    x: &[f32],
    m: usize,
    w: &AwqMatrix,
    n0: usize,
    tn: usize,
    wt: &mut [f32],
    acc: &mut [f32],
) {
    awq_tile(x, m, w, n0, tn, wt, acc)
}

#[inline(always)]
fn awq_tile(
    x: &[f32],
    m: usize,
    w: &AwqMatrix,
    n0: usize,
    tn: usize,
    wt: &mut [f32],
    acc: &mut [f32],
) {
    let (k, n, group) = (w.k, w.n, w.group);
    let n8 = n / 8;
    let words = tn / 8;
    for g in 0..k / group {
        let s = &w.scales[g * n + n0..][..tn];
        let z = &w.zeros[g * n + n0..][..tn];
        // wt[kk, j] = (q - z) * s for the group's rows: [G, tn]
        for kk in 0..group {
            let packed = &w.qweight[(g * group + kk) * n8 + n0 / 8..][..words];
            let dst = &mut wt[kk * tn..][..tn];
            for (c, &word) in packed.iter().enumerate() {
                for j in 0..8 {
                    let q = ((word >> column_shift(j)) & 0xF) as f32;
                    dst[c * 8 + j] = (q - z[c * 8 + j]) * s[c * 8 + j];
                }
            }
        }
        for r in 0..m {
            let xr = &x[r * k + g * group..][..group];
            let a = &mut acc[r * tn..][..tn];
            for (kk, &xv) in xr.iter().enumerate() {
                let wr = &wt[kk * tn..][..tn];
                for (av, &wv) in a.iter_mut().zip(wr) {
                    *av += xv * wv;
                }
            }
        }
    }
}

/// Rows of W one task handles in `dense_matmul`.
const DENSE_ROWS: usize = 16;

/// y[M, N] = x[M, K] · W^T with W in torch layout [N, K].
pub fn dense_matmul(x: &[f32], m: usize, w: &[f32], k: usize, n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), m * k, "dense_matmul: x is not [M, K]");
    assert_eq!(w.len(), n * k, "dense_matmul: W is not [N, K]");
    assert_eq!(y.len(), m * n, "dense_matmul: y is not [M, N]");
    let out = SyncPtr(y.as_mut_ptr());
    (0..n.div_ceil(DENSE_ROWS))
        .into_par_iter()
        .for_each(|chunk| {
            for col in chunk * DENSE_ROWS..((chunk + 1) * DENSE_ROWS).min(n) {
                let wr = &w[col * k..][..k];
                for row in 0..m {
                    let v = dot(&x[row * k..][..k], wr);
                    // SAFETY: row < m and col < n, so the index is inside y's m * n
                    // elements; column `col` belongs to this task alone.
                    unsafe { *out.ptr().add(row * n + col) = v };
                }
            }
        });
}

/// y[M, N] = x[M, K] · W^T with W in torch layout [N, K], stored as f16.
pub fn dense_matmul_f16(x: &[f32], m: usize, w: &[f16], k: usize, n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), m * k, "dense_matmul_f16: x is not [M, K]");
    assert_eq!(w.len(), n * k, "dense_matmul_f16: W is not [N, K]");
    assert_eq!(y.len(), m * n, "dense_matmul_f16: y is not [M, N]");
    let out = SyncPtr(y.as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    if super::avx512::available() {
        dense_f16_avx512(x, m, w, k, n, out);
        return;
    }
    (0..n.div_ceil(DENSE_ROWS)).into_par_iter().for_each_init(
        Vec::new,
        |row_f32: &mut Vec<f32>, chunk| {
            for col in chunk * DENSE_ROWS..((chunk + 1) * DENSE_ROWS).min(n) {
                let wr = &w[col * k..][..k];
                let fast = f16c_available();
                if !fast {
                    row_f32.clear();
                    row_f32.extend(wr.iter().map(|v| v.to_f32()));
                }
                let mut row = 0;
                while row < m {
                    let xr = &x[row * k..][..k];
                    // With F16C, rows two at a time: each weight widened once
                    // for both, each row's sum formed as dot_f16 forms it.
                    let (vals, rows) = if fast && row + 1 < m {
                        (dot_f16_x2(xr, &x[(row + 1) * k..][..k], wr), 2)
                    } else if fast {
                        ([dot_f16(xr, wr), 0.0], 1)
                    } else {
                        ([dot(xr, row_f32), 0.0], 1)
                    };
                    for (r, &v) in vals[..rows].iter().enumerate() {
                        // SAFETY: row + r < m and col < n, so the index is inside y's
                        // m * n elements; column `col` belongs to this task alone.
                        unsafe { *out.ptr().add((row + r) * n + col) = v };
                    }
                    row += rows;
                }
            }
        },
    );
}

/// `dense_matmul_f16` with AVX-512: each weight row's 16-element pieces
/// widened once for up to 8 rows of x (sizes checked by the caller).
#[cfg(target_arch = "x86_64")]
fn dense_f16_avx512(x: &[f32], m: usize, w: &[f16], k: usize, n: usize, out: SyncPtr) {
    use super::avx512::dot_f16_rows;
    (0..n.div_ceil(DENSE_ROWS))
        .into_par_iter()
        .for_each(|chunk| {
            for col in chunk * DENSE_ROWS..((chunk + 1) * DENSE_ROWS).min(n) {
                let wr = &w[col * k..][..k];
                for r0 in (0..m).step_by(8) {
                    let xs = &x[r0 * k..];
                    let mut dots = [0f32; 8];
                    // SAFETY: the CPU has AVX-512F, FMA and F16C (checked by
                    // the caller); xs holds at least `rows` rows of k (r0 +
                    // rows <= m, x is [m, k]) and wr k weights.
                    let rows = (m - r0).min(8);
                    unsafe {
                        macro_rules! rows {
                            ($($r:literal)*) => {
                                match rows {
                                    $($r => {
                                        let mut d = [0f32; $r];
                                        dot_f16_rows::<$r>(xs, k, wr, &mut d);
                                        dots[..$r].copy_from_slice(&d);
                                    })*
                                    _ => unreachable!("1 to 8 rows"),
                                }
                            };
                        }
                        rows!(1 2 3 4 5 6 7 8);
                    }
                    for (r, &v) in dots[..rows].iter().enumerate() {
                        // SAFETY: r0 + r < m and col < n: inside y's m * n
                        // elements; column `col` belongs to this task alone.
                        unsafe { *out.ptr().add((r0 + r) * n + col) = v };
                    }
                }
            }
        });
}

fn f16c_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2_fma() && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// f32 · f16 dot product; only called where `f16c_available()`.
fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: callers check f16c_available() (AVX2, FMA and F16C).
        unsafe { super::avx2::dot_f16(a, b) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        a.iter().zip(b).map(|(x, y)| x * y.to_f32()).sum()
    }
}

/// `dot_f16` of two rows; only called where `f16c_available()`.
fn dot_f16_x2(a0: &[f32], a1: &[f32], b: &[f16]) -> [f32; 2] {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: callers check f16c_available() (AVX2, FMA and F16C).
        unsafe { super::avx2::dot_f16_x2(a0, a1, b) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        [dot_f16(a0, b), dot_f16(a1, b)]
    }
}

/// Dot product with 8 independent partial sums (vectorizes; the order of
/// additions is fixed, so results do not depend on threading).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dispatch!(dot_generic, dot_avx2, a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (ac, bc) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for i in 0..8 {
            acc[i] += ac[i] * bc[i];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in chunks * 8..n {
        sum += a[i] * b[i];
    }
    sum
}

/// out[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * weight, rows of `weight.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let h = weight.len();
    for (xr, or) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let ms = dot(xr, xr) / h as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &wv) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * wv;
        }
    }
}

/// out = silu(gate) * up, where `gu` holds [T, 2I] rows of gate then up.
pub fn silu_mul(gu: &[f32], inter: usize, out: &mut [f32]) {
    for (row, or) in gu.chunks_exact(2 * inter).zip(out.chunks_exact_mut(inter)) {
        let (gate, up) = row.split_at(inter);
        for ((o, &g), &u) in or.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

/// Shapes shared by the attention kernels.
#[derive(Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

/// Causal attention of each token over its own sequence's cached K/V, read
/// through the block table. `q` and `out` are [T, heads * head_dim]; the
/// caches are [blocks, block_size, kv_heads, head_dim]; `seq_of[t]` is the
/// block table of token t's sequence and `positions[t]` its position: it sees
/// positions 0..=positions[t].
pub fn paged_attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    seq_of: &[&[u32]],
    positions: &[u32],
    shape: AttnShape,
    out: &mut [f32],
) {
    paged_attention_over(q, k_cache, v_cache, seq_of, positions, shape, out)
}

/// A K/V cache element the attention reads as f32.
pub trait KvElem: Copy + Send + Sync {
    /// `src` as f32: itself, or widened into `buf` (as long as `src`).
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];
}

impl KvElem for f32 {
    fn as_f32<'a>(src: &'a [f32], _buf: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl KvElem for half::f16 {
    fn as_f32<'a>(src: &'a [half::f16], buf: &'a mut [f32]) -> &'a [f32] {
        #[cfg(target_arch = "x86_64")]
        if f16c_available() && buf.len() >= src.len() {
            // SAFETY: F16C (and AVX) present; buf holds src.len() floats.
            unsafe { super::avx2::widen_f16(src, buf) };
            return &buf[..src.len()];
        }
        for (d, s) in buf.iter_mut().zip(src) {
            *d = s.to_f32();
        }
        &buf[..src.len()]
    }
}

/// `paged_attention` over caches of f32 or of f16 (widened row by row, the
/// same arithmetic after that).
pub fn paged_attention_over<T: KvElem>(
    q: &[f32],
    k_cache: &[T],
    v_cache: &[T],
    seq_of: &[&[u32]],
    positions: &[u32],
    shape: AttnShape,
    out: &mut [f32],
) {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: hd,
        block_size: bs,
    } = shape;
    let group = heads / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    out.par_chunks_mut(hd).enumerate().for_each_init(
        || (Vec::new(), vec![0f32; hd]),
        |(scores, buf): &mut (Vec<f32>, Vec<f32>), (i, o)| {
            let (t, h) = (i / heads, i % heads);
            let kvh = h / group;
            let table = seq_of[t];
            let ctx = positions[t] as usize + 1;
            let qv = &q[i * hd..][..hd];
            let slot = |p: usize| ((table[p / bs] as usize * bs + p % bs) * kv_heads + kvh) * hd;
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for p in 0..ctx {
                let s = dot(qv, T::as_f32(&k_cache[slot(p)..][..hd], buf)) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            o.fill(0.0);
            for (p, &s) in scores.iter().enumerate() {
                let wgt = s / sum;
                for (ov, &vv) in o.iter_mut().zip(T::as_f32(&v_cache[slot(p)..][..hd], buf)) {
                    *ov += wgt * vv;
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    //! Each kernel against a naive float64 reference on fresh random inputs of
    //! several shapes, outputs poisoned with NaN before each run.
    use super::*;
    use lhama_model::awq;
    use lhama_model::rng::SplitMix64;

    fn randn(g: &mut SplitMix64, n: usize) -> Vec<f32> {
        (0..n).map(|_| g.next_normal() as f32).collect()
    }

    /// The f16 product (the lm_head) against float64, for 1 to 11 rows (the
    /// multi-row kernel's 8 and a remainder) and K with a tail past its
    /// 32-element steps; each row's result is the same bit for bit whether it
    /// is computed alone or with others (logits must not depend on the batch).
    #[test]
    fn dense_f16_product_matches_reference_and_ignores_its_batch() {
        let mut g = SplitMix64::new(44);
        for &(m, k, n) in &[
            (1usize, 64usize, 40usize),
            (3, 100, 17),
            (8, 1024, 33),
            (11, 1056, 50),
        ] {
            let x = randn(&mut g, m * k);
            let w: Vec<f16> = randn(&mut g, n * k)
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect();
            let mut y = vec![f32::NAN; m * n];
            dense_matmul_f16(&x, m, &w, k, n, &mut y);
            let reference: Vec<f64> = (0..m * n)
                .map(|i| {
                    let (r, c) = (i / n, i % n);
                    (0..k)
                        .map(|j| f64::from(x[r * k + j]) * f64::from(w[c * k + j].to_f32()))
                        .sum()
                })
                .collect();
            let e = rel_err(&y, &reference);
            assert!(e < 1e-6, "m={m} k={k} n={n}: rel err {e}");
            for r in 0..m {
                let mut alone = vec![f32::NAN; n];
                dense_matmul_f16(&x[r * k..][..k], 1, &w, k, n, &mut alone);
                let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&alone),
                    bits(&y[r * n..][..n]),
                    "m={m} row {r} alone vs batched"
                );
            }
        }
    }

    /// The AVX2 lm_head's two-row dot gives each row dot_f16's bits (so a
    /// logit does not depend on the row paired with it), and the F16C
    /// widening of the K/V cache gives `f16::to_f32`'s values; lengths with
    /// tails past the 32- and 8-element steps.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16c_pair_dot_and_widening_match_the_one_row_forms() {
        assert!(
            f16c_available(),
            "this x86-64 CPU lacks AVX2/FMA/F16C: the lm_head's fast form cannot be tested"
        );
        let mut g = SplitMix64::new(45);
        for k in [1usize, 7, 8, 31, 32, 33, 100, 1024, 1056] {
            let a0 = randn(&mut g, k);
            let a1 = randn(&mut g, k);
            let b: Vec<f16> = randn(&mut g, k).iter().map(|&v| f16::from_f32(v)).collect();
            let pair = dot_f16_x2(&a0, &a1, &b);
            assert_eq!(pair[0].to_bits(), dot_f16(&a0, &b).to_bits(), "k={k} row 0");
            assert_eq!(pair[1].to_bits(), dot_f16(&a1, &b).to_bits(), "k={k} row 1");
            let mut buf = vec![f32::NAN; k];
            let wide = <f16 as KvElem>::as_f32(&b, &mut buf);
            let want: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            assert_eq!(wide, &want[..], "k={k}: widened");
        }
    }

    /// ‖out − ref‖ / ‖ref‖, failing on NaN.
    fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
        assert_eq!(out.len(), reference.len());
        assert!(
            out.iter().all(|v| v.is_finite()),
            "an output was not written (NaN poison left)"
        );
        let num: f64 = out
            .iter()
            .zip(reference)
            .map(|(&o, &r)| (o as f64 - r).powi(2))
            .sum();
        let den: f64 = reference.iter().map(|r| r * r).sum();
        (num / den).sqrt()
    }

    #[test]
    fn awq_matmul_matches_dequantized_reference() {
        let mut g = SplitMix64::new(11);
        for &(m, k, n, group) in &[
            (1, 128, 64, 64),
            (3, 256, 200, 128),
            (17, 128, 8, 32),
            (5, 384, 1000, 128),
        ] {
            let w = randn(&mut g, k * n);
            let q = awq::quantize(&w, k, n, group);
            let deq = awq::dequantize(&q.qweight, &q.qzeros, &q.scales, k, n, group);
            let mat = AwqMatrix::new(FusedAwq {
                k,
                n,
                group,
                qweight: q.qweight.clone(),
                zeros: (0..k / group * n)
                    .map(|i| awq::unpack(q.qzeros[i / 8], i % 8) as f32)
                    .collect(),
                scales: q.scales.iter().map(|s| s.to_f32()).collect(),
            });
            let x = randn(&mut g, m * k);
            let mut y = vec![f32::NAN; m * n];
            awq_matmul(&x, m, &mat, &mut y);
            let reference: Vec<f64> = (0..m * n)
                .map(|i| {
                    (0..k)
                        .map(|kk| x[(i / n) * k + kk] as f64 * deq[kk * n + i % n] as f64)
                        .sum()
                })
                .collect();
            let e = rel_err(&y, &reference);
            assert!(e < 1e-5, "m={m} k={k} n={n}: rel err {e}");
        }
    }

    #[test]
    fn dense_matmul_and_dot_match_reference() {
        let mut g = SplitMix64::new(12);
        for &(m, k, n) in &[(1, 7, 3), (4, 64, 33), (9, 1000, 17)] {
            let x = randn(&mut g, m * k);
            let w = randn(&mut g, n * k);
            let mut y = vec![f32::NAN; m * n];
            dense_matmul(&x, m, &w, k, n, &mut y);
            let reference: Vec<f64> = (0..m * n)
                .map(|i| {
                    (0..k)
                        .map(|kk| x[(i / n) * k + kk] as f64 * w[(i % n) * k + kk] as f64)
                        .sum()
                })
                .collect();
            let e = rel_err(&y, &reference);
            assert!(e < 1e-5, "m={m} k={k} n={n}: rel err {e}");
        }
    }

    #[test]
    fn rms_norm_and_silu_match_reference() {
        let mut g = SplitMix64::new(13);
        let (t, h) = (5, 96);
        let x = randn(&mut g, t * h);
        let w = randn(&mut g, h);
        let mut out = vec![f32::NAN; t * h];
        rms_norm(&x, &w, 1e-5, &mut out);
        let reference: Vec<f64> = (0..t * h)
            .map(|i| {
                let row = &x[(i / h) * h..][..h];
                let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / h as f64;
                x[i] as f64 / (ms + 1e-5).sqrt() * w[i % h] as f64
            })
            .collect();
        assert!(rel_err(&out, &reference) < 1e-6);

        let inter = 40;
        let gu = randn(&mut g, t * 2 * inter);
        let mut act = vec![f32::NAN; t * inter];
        silu_mul(&gu, inter, &mut act);
        let reference: Vec<f64> = (0..t * inter)
            .map(|i| {
                let (r, j) = (i / inter, i % inter);
                let gate = gu[r * 2 * inter + j] as f64;
                gate / (1.0 + (-gate).exp()) * gu[r * 2 * inter + inter + j] as f64
            })
            .collect();
        assert!(rel_err(&act, &reference) < 1e-6);
    }

    #[test]
    fn rope_pairs_i_with_i_plus_half() {
        let (hd, heads) = (8, 2);
        let table = RopeTable::new(hd, 10_000.0, 64, 1.0);
        let mut g = SplitMix64::new(14);
        let positions = [0u32, 5, 63];
        let x = randn(&mut g, positions.len() * heads * hd);
        let mut y = x.clone();
        table.apply(&mut y, &positions, heads);
        let mut reference = vec![0f64; x.len()];
        for (t, &p) in positions.iter().enumerate() {
            for h in 0..heads {
                let base = (t * heads + h) * hd;
                for i in 0..hd / 2 {
                    let theta = p as f64 * 10_000f64.powf(-((2 * i) as f64) / hd as f64);
                    let (a, b) = (x[base + i] as f64, x[base + i + hd / 2] as f64);
                    reference[base + i] = a * theta.cos() - b * theta.sin();
                    reference[base + i + hd / 2] = b * theta.cos() + a * theta.sin();
                }
            }
        }
        assert!(rel_err(&y, &reference) < 1e-5);
        // position 0 is the identity
        assert_eq!(y[..heads * hd], x[..heads * hd]);
    }

    #[test]
    fn paged_attention_matches_dense_causal_attention() {
        let mut g = SplitMix64::new(15);
        let shape = AttnShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            block_size: 4,
        };
        let kv_dim = shape.kv_heads * shape.head_dim;
        let num_blocks = 12;
        // Two sequences with scattered blocks: lengths 10 and 3.
        let tables: [&[u32]; 2] = [&[7, 2, 9], &[4]];
        let lens = [10usize, 3];
        let mut k_cache = vec![f32::NAN; num_blocks * shape.block_size * kv_dim];
        let mut v_cache = k_cache.clone();
        let mut dense_k = Vec::new();
        let mut dense_v = Vec::new();
        for (s, &len) in lens.iter().enumerate() {
            let k = randn(&mut g, len * kv_dim);
            let v = randn(&mut g, len * kv_dim);
            for p in 0..len {
                let slot = (tables[s][p / 4] as usize * 4 + p % 4) * kv_dim;
                k_cache[slot..slot + kv_dim].copy_from_slice(&k[p * kv_dim..][..kv_dim]);
                v_cache[slot..slot + kv_dim].copy_from_slice(&v[p * kv_dim..][..kv_dim]);
            }
            dense_k.push(k);
            dense_v.push(v);
        }
        // Queries: all 10 positions of seq 0, the last position of seq 1.
        let mut seq_of: Vec<&[u32]> = vec![tables[0]; 10];
        seq_of.push(tables[1]);
        let positions: Vec<u32> = (0..10).chain([2]).collect();
        let q_dim = shape.heads * shape.head_dim;
        let q = randn(&mut g, positions.len() * q_dim);
        let mut out = vec![f32::NAN; q.len()];
        paged_attention(&q, &k_cache, &v_cache, &seq_of, &positions, shape, &mut out);
        let hd = shape.head_dim;
        let mut reference = vec![0f64; q.len()];
        for (t, &p) in positions.iter().enumerate() {
            let s = if t < 10 { 0 } else { 1 };
            for h in 0..shape.heads {
                let kvh = h / 2;
                let qv = &q[t * q_dim + h * hd..][..hd];
                let scores: Vec<f64> = (0..=p as usize)
                    .map(|j| {
                        (0..hd)
                            .map(|d| qv[d] as f64 * dense_k[s][j * kv_dim + kvh * hd + d] as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for d in 0..hd {
                    reference[t * q_dim + h * hd + d] = exps
                        .iter()
                        .enumerate()
                        .map(|(j, e)| e / sum * dense_v[s][j * kv_dim + kvh * hd + d] as f64)
                        .sum();
                }
            }
        }
        let e = rel_err(&out, &reference);
        assert!(e < 1e-5, "rel err {e}");
    }
}
