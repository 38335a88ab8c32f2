//! The fast path's attention over f16 K/V caches: `kernels::paged_attention`
//! in 16-lane vectors where the CPU has AVX-512 (one 512-bit register) or
//! AVX2 with FMA and F16C (two 256-bit ones, the same operations and
//! reduction tree: the same bits) and the head size is 16-128 or 256 (else
//! the exact kernel's arithmetic on the widened rows,
//! `kernels::paged_attention_over`). The caches are
//! widened to f32 as they are read. Per (token, head): each score is a dot
//! product in 16-lane fused multiply-adds reduced once, the exponentials
//! are taken 16 at a time by a polynomial (relative error about 2e-7, see
//! `exp16`), and the value rows are summed with unnormalized weights, the
//! sum divided out once at the end. The arithmetic differs from the exact
//! version's (the order of additions, the exponential), so results agree
//! to about 1e-6 relative on the same (f16-held) K/V, not bit for bit; the
//! fast path's fidelity check (`lhama verify --precision fast`) covers it.

use half::f16;
use rayon::prelude::*;

use crate::kernels::AttnShape;

/// As `kernels::paged_attention` (same arguments and layout), over f16
/// caches.
pub fn paged_attention_fast(
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    seq_of: &[&[u32]],
    positions: &[u32],
    shape: AttnShape,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if shape.head_dim.is_multiple_of(16)
        && (shape.head_dim <= 128 || shape.head_dim == MAX_HEAD_DIM)
        && let Some(isa) = vector_isa()
    {
        let groups = head_groups(positions.len(), shape.heads, rayon::current_num_threads());
        return attention_vec(
            q, k_cache, v_cache, seq_of, positions, shape, groups, TILE, isa, out,
        );
    }
    crate::kernels::paged_attention_over(q, k_cache, v_cache, seq_of, positions, shape, out)
}

/// Largest head size the vector version takes (up to 128, and 256).
const MAX_HEAD_DIM: usize = 256;

/// The two forms of the vector version (the same bits on both).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq)]
enum VecIsa {
    Avx512,
    Avx2,
}

/// The vector form this CPU runs, if any.
#[cfg(target_arch = "x86_64")]
fn vector_isa() -> Option<VecIsa> {
    if has_avx512() {
        Some(VecIsa::Avx512)
    } else if crate::int8::has_avx2() {
        Some(VecIsa::Avx2)
    } else {
        None
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        crate::isa::allows(crate::isa::Isa::Avx512) && std::is_x86_feature_detected!("avx512f")
    })
}

/// How many groups a token's heads are split into for `threads` threads:
/// one, unless there are too few tokens to give every thread two tasks
/// (then the fewest halvings that do, while they divide the heads).
#[cfg(target_arch = "x86_64")]
fn head_groups(tokens: usize, heads: usize, threads: usize) -> usize {
    let mut groups = 1;
    while tokens * groups < 2 * threads && heads.is_multiple_of(groups * 2) {
        groups *= 2;
    }
    groups
}

/// Calls `$f::<C>(args)` for the head size's 16-float chunks c (1-8, or
/// 16 for 256), the const generics the vector versions are built for.
#[cfg(target_arch = "x86_64")]
macro_rules! by_chunks {
    ($c:expr, $f:ident($($arg:expr),*)) => {
        match $c {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            _ => $f::<16>($($arg),*),
        }
    };
}

/// `groups` must divide `shape.heads`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn attention_vec(
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    seq_of: &[&[u32]],
    positions: &[u32],
    shape: AttnShape,
    groups: usize,
    tile: usize,
    isa: VecIsa,
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
    let t = positions.len();
    assert!(
        q.len() >= t * heads * hd && out.len() >= t * heads * hd && seq_of.len() >= t,
        "attention: q, out or the block tables are shorter than the batch"
    );
    // Every slot a token's context reads is inside the caches (the engine's
    // block tables cover the positions; checked once per token here, for
    // all its heads, so the vector loads below stay in bounds).
    let block_len = bs * kv_heads * hd;
    assert!(
        (0..t).all(|tok| {
            let blocks = (positions[tok] as usize + 1).div_ceil(bs);
            let table = seq_of[tok];
            blocks <= table.len()
                && table[..blocks].iter().all(|&b| {
                    let end = (b as usize + 1) * block_len;
                    end <= k_cache.len() && end <= v_cache.len()
                })
        }),
        "attention: a block table reaches outside the KV pool"
    );
    // A task takes a token's heads in groups of nh, position by position,
    // so that it reads each position's cache row for those heads as one
    // contiguous run (the whole row, 2 KB for ttl-460m, when nh = heads);
    // a head at a time read 128 bytes of every 2 KB and streamed 8 of the
    // 23 GB/s two cores of this project's VM read. The heads are split into
    // more groups only when there are too few tokens for the threads
    // (`head_groups`).
    assert!(
        heads.is_multiple_of(groups),
        "attention: {groups} groups of {heads} heads"
    );
    let nh = heads / groups;
    let c = hd / 16;
    let tasks = tasks(seq_of, heads, groups, tile);
    let out = crate::kernels::SyncPtr(out.as_mut_ptr());
    tasks
        .par_iter()
        .for_each_init(Scratch::default, |sc: &mut Scratch, &task| match task {
            Task::Heads { tok, h0 } => {
                let table = seq_of[tok];
                let ctx = positions[tok] as usize + 1;
                let pad = ctx.next_multiple_of(16);
                sc.scores.clear();
                sc.scores.resize(nh * pad, f32::NEG_INFINITY);
                sc.acc.clear();
                sc.acc.resize(nh * hd, 0.0);
                sc.kv.clear();
                sc.kv.extend((h0..h0 + nh).map(|h| h / group * hd));
                sc.inv.clear();
                sc.inv.resize(nh, 0.0);
                let q = &q[(tok * heads + h0) * hd..][..nh * hd];
                sc.q.clear();
                sc.q.extend(q.iter().map(|v| v * scale));
                let rows = Rows {
                    table,
                    block_size: bs,
                    row: kv_heads * hd,
                    head: 0,
                };
                // SAFETY: this task alone writes the nh heads from h0 of
                // token tok (`tasks` hands out each (token, head) once), and
                // out holds t * heads * hd floats (asserted above).
                let o = unsafe {
                    std::slice::from_raw_parts_mut(out.ptr().add((tok * heads + h0) * hd), nh * hd)
                };
                // SAFETY: the form `isa` names is present (`vector_isa`); the
                // scratch holds nh heads' scaled q, sums and padded scores and
                // o holds nh * hd floats; every row `rows` gives for p < ctx
                // holds the kv heads' hd values inside both caches (asserted
                // above), and kv[j] + hd <= kv_heads * hd.
                unsafe {
                    match isa {
                        VecIsa::Avx512 => {
                            by_chunks!(c, heads_avx512(k_cache, v_cache, &rows, ctx, sc, o))
                        }
                        VecIsa::Avx2 => {
                            by_chunks!(c, heads_avx2(k_cache, v_cache, &rows, ctx, sc, o))
                        }
                    }
                };
            }
            Task::Tile { tok, n, head } => {
                let mut ctx = [0usize; TILE];
                for (i, c) in ctx[..n].iter_mut().enumerate() {
                    *c = positions[tok + i] as usize + 1;
                }
                // The queries' scaled q, a row of hd each; zeros past n.
                sc.q.clear();
                sc.q.resize(TILE * hd, 0.0);
                for i in 0..n {
                    let src = &q[((tok + i) * heads + head) * hd..][..hd];
                    for (d, s) in sc.q[i * hd..][..hd].iter_mut().zip(src) {
                        *d = s * scale;
                    }
                }
                let rows = Rows {
                    table: seq_of[tok],
                    block_size: bs,
                    row: kv_heads * hd,
                    head: head / group * hd,
                };
                // Token tok + i's row of this head: a stride of heads * hd.
                // SAFETY: tok + n <= t (`tasks`), so every row is inside out.
                let o = unsafe { out.ptr().add((tok * heads + head) * hd) };
                let stride = heads * hd;
                // SAFETY: the form `isa` names is present (`vector_isa`); the
                // tile's tokens share one block table (`tasks`), so every
                // row `rows` gives for p < max ctx holds the kv head's hd
                // values inside both caches (asserted above for each token);
                // this task alone writes head `head` of tokens tok..tok + n.
                unsafe {
                    match isa {
                        VecIsa::Avx512 => by_chunks!(
                            c,
                            tile_avx512(k_cache, v_cache, &rows, &ctx, n, sc, o, stride)
                        ),
                        VecIsa::Avx2 => by_chunks!(
                            c,
                            tile_avx2(k_cache, v_cache, &rows, &ctx, n, sc, o, stride)
                        ),
                    }
                };
            }
        });
}

/// Queries a tile takes at most: one per vector lane.
#[cfg(target_arch = "x86_64")]
pub(crate) const TILE: usize = 16;

/// One task of `attention_avx512`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq)]
enum Task {
    /// Heads h0..h0 + heads / groups of one token.
    Heads { tok: usize, h0: usize },
    /// One head of tokens tok..tok + n (2 ≤ n ≤ TILE), which share a block
    /// table: a prompt chunk's queries, whose cache rows are then read once
    /// for the n of them.
    Tile { tok: usize, n: usize, head: usize },
}

/// The tasks of one attention call: runs of consecutive tokens with one
/// block table (one sequence's chunk) in tiles of at most `tile` tokens, a
/// tile per head, head by head (so that the tiles a thread takes in turn
/// read the same head's cache rows, which then stay in its L2); every other
/// token alone, in `groups` groups of heads. Each (token, head) is in
/// exactly one task.
#[cfg(target_arch = "x86_64")]
fn tasks(seq_of: &[&[u32]], heads: usize, groups: usize, tile: usize) -> Vec<Task> {
    let nh = heads / groups;
    let mut tiles = Vec::new();
    let mut alone = Vec::new();
    let mut tok = 0;
    while tok < seq_of.len() {
        let mut n = 1;
        while n < tile.min(TILE)
            && tok + n < seq_of.len()
            && std::ptr::eq(seq_of[tok + n], seq_of[tok])
        {
            n += 1;
        }
        if n >= 2 {
            tiles.push((tok, n));
        } else {
            alone.extend((0..groups).map(|g| Task::Heads { tok, h0: g * nh }));
        }
        tok += n;
    }
    let mut tasks = Vec::with_capacity(tiles.len() * heads + alone.len());
    for head in 0..heads {
        tasks.extend(tiles.iter().map(|&(tok, n)| Task::Tile { tok, n, head }));
    }
    tasks.extend(alone);
    tasks
}

/// A task's buffers, kept between its tasks: the heads' q times the scale,
/// their scores (each padded to 16 with −∞), their weighted value sums,
/// each head's kv head offset inside a cache row and the reciprocal of its
/// softmax sum.
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    scores: Vec<f32>,
    acc: Vec<f32>,
    kv: Vec<usize>,
    inv: Vec<f32>,
}

/// Where one (sequence, kv head)'s cache rows are: position p's row starts
/// at ((table[p / block_size] · block_size + p % block_size) · kv_heads +
/// kv_head) · head_dim = table[…] · block_size · row + (p % block_size) ·
/// row + head.
#[cfg(target_arch = "x86_64")]
struct Rows<'a> {
    table: &'a [u32],
    block_size: usize,
    row: usize,
    head: usize,
}

#[cfg(target_arch = "x86_64")]
impl Rows<'_> {
    /// Calls f(p, offset of position p's row, offset of position p +
    /// AHEAD's row or None past ctx) for p < ctx in order, a block at a
    /// time (no division per position: one took as long as the position's
    /// dot product).
    #[inline(always)]
    fn each(&self, ctx: usize, mut f: impl FnMut(usize, usize, Option<usize>)) {
        let bs = self.block_size;
        let at = |block: usize, i: usize| {
            self.table[block] as usize * bs * self.row + self.head + i * self.row
        };
        // The lead cursor, AHEAD positions on.
        let (mut lb, mut li) = (AHEAD / bs, AHEAD % bs);
        let mut p = 0;
        for (b, _) in self.table.iter().enumerate() {
            let n = bs.min(ctx - p);
            for i in 0..n {
                let ahead = (p + i + AHEAD < ctx).then(|| at(lb, li));
                f(p + i, at(b, i), ahead);
                li += 1;
                if li == bs {
                    (lb, li) = (lb + 1, 0);
                }
            }
            p += n;
            if p == ctx {
                break;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Rows<'_> {
    /// Calls f(p0, len, offset of position p0's row, offset of the next
    /// block's first row or None) for each cache block of positions p0..p0 +
    /// len below ctx, in order; position p0 + r's row is at offset + r · row.
    #[inline(always)]
    fn blocks(&self, ctx: usize, mut f: impl FnMut(usize, usize, usize, Option<usize>)) {
        let bs = self.block_size;
        let at = |block: usize| self.table[block] as usize * bs * self.row + self.head;
        let n = ctx.div_ceil(bs);
        for b in 0..n {
            let p0 = b * bs;
            f(p0, bs.min(ctx - p0), at(b), (b + 1 < n).then(|| at(b + 1)));
        }
    }
}

/// Positions ahead whose cache rows the loops prefetch: the rows of a head
/// are a row of all kv heads apart (2 KB for ttl-460m), too far apart for
/// the hardware's page-bound stream prefetcher.
#[cfg(target_arch = "x86_64")]
const AHEAD: usize = 8;

/// 16 f32 lanes: one 512-bit vector (AVX-512, [`Z16`]) or two 256-bit ones
/// (AVX2 with FMA and F16C, [`Y16`]). Both do the same operation on every
/// lane and add a vector's lanes up in the same tree, so a kernel written
/// over `L16` gives the same bits on either.
///
/// # Safety
/// Every method needs its form's instruction set (checked by the caller of
/// the kernel that uses it); pointers must hold 16 values.
#[cfg(target_arch = "x86_64")]
trait L16: Copy {
    /// Where query i's chain goes among `transpose_reduce`'s inputs so that
    /// its sum lands in lane i.
    const SLOT: [usize; 16];
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn load_f16(p: *const f16) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn div(self, o: Self) -> Self;
    unsafe fn max(self, o: Self) -> Self;
    /// self · b + c, one rounding.
    unsafe fn fmadd(self, b: Self, c: Self) -> Self;
    /// −∞ in the lanes where ctx ≤ p.
    unsafe fn neg_inf_where_le(self, ctx: Self, p: f32) -> Self;
    /// e^x, x ≤ 0 (see `exp16`).
    unsafe fn exp(self) -> Self;
    /// The sum of the 16 lanes: lane l + lane l + 8, then + 4, + 2, + 1.
    unsafe fn reduce(self) -> f32;
    /// Lane-wise, the same tree over 16 vectors.
    unsafe fn tree(x: [Self; 16]) -> Self;
    /// `reduce` of 16 vectors at once: lane i is the reduction of x[SLOT[i]].
    unsafe fn transpose_reduce(x: &[Self; 16]) -> Self;
}

/// The AVX-512 form of [`L16`].
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Z16(std::arch::x86_64::__m512);

#[cfg(target_arch = "x86_64")]
impl L16 for Z16 {
    const SLOT: [usize; 16] = TRANSPOSE;
    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX-512 F present (the trait's contract), as below.
        unsafe { Z16(std::arch::x86_64::_mm512_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        unsafe { Z16(std::arch::x86_64::_mm512_set1_ps(x)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { Z16(std::arch::x86_64::_mm512_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { std::arch::x86_64::_mm512_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> Self {
        unsafe { Z16(load16(p)) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        unsafe { Z16(std::arch::x86_64::_mm512_add_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        unsafe { Z16(std::arch::x86_64::_mm512_sub_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        unsafe { Z16(std::arch::x86_64::_mm512_mul_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        unsafe { Z16(std::arch::x86_64::_mm512_div_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        unsafe { Z16(std::arch::x86_64::_mm512_max_ps(self.0, o.0)) }
    }
    #[inline(always)]
    unsafe fn fmadd(self, b: Self, c: Self) -> Self {
        unsafe { Z16(std::arch::x86_64::_mm512_fmadd_ps(self.0, b.0, c.0)) }
    }
    #[inline(always)]
    unsafe fn neg_inf_where_le(self, ctx: Self, p: f32) -> Self {
        use std::arch::x86_64::*;
        unsafe {
            let outside = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(ctx.0, _mm512_set1_ps(p));
            Z16(_mm512_mask_blend_ps(
                outside,
                self.0,
                _mm512_set1_ps(f32::NEG_INFINITY),
            ))
        }
    }
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        unsafe { Z16(exp16(self.0)) }
    }
    #[inline(always)]
    unsafe fn reduce(self) -> f32 {
        unsafe { reduce16(self.0) }
    }
    #[inline(always)]
    unsafe fn tree(x: [Self; 16]) -> Self {
        unsafe { Z16(tree16(x.map(|v| v.0))) }
    }
    #[inline(always)]
    unsafe fn transpose_reduce(x: &[Self; 16]) -> Self {
        unsafe { Z16(transpose_reduce16(&x.map(|v| v.0))) }
    }
}

/// The AVX2 form of [`L16`]: lanes 0-7 and 8-15 in two 256-bit vectors.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Y16(std::arch::x86_64::__m256, std::arch::x86_64::__m256);

/// Where `Y16::transpose_reduce` leaves input 8 k + j: lane 8 k + PERM8[j]
/// (the map below is its inverse, applied to the inputs).
#[cfg(target_arch = "x86_64")]
const SLOT_Y: [usize; 16] = [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15];

#[cfg(target_arch = "x86_64")]
impl L16 for Y16 {
    const SLOT: [usize; 16] = SLOT_Y;
    #[inline(always)]
    unsafe fn zero() -> Self {
        use std::arch::x86_64::*;
        // SAFETY: AVX2, FMA and F16C present (the trait's contract), as below.
        unsafe { Y16(_mm256_setzero_ps(), _mm256_setzero_ps()) }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        use std::arch::x86_64::*;
        unsafe { Y16(_mm256_set1_ps(x), _mm256_set1_ps(x)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        use std::arch::x86_64::*;
        unsafe { Y16(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        use std::arch::x86_64::*;
        unsafe {
            _mm256_storeu_ps(p, self.0);
            _mm256_storeu_ps(p.add(8), self.1);
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> Self {
        use std::arch::x86_64::*;
        unsafe {
            Y16(
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(8) as *const __m128i)),
            )
        }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        use std::arch::x86_64::*;
        unsafe { Y16(_mm256_add_ps(self.0, o.0), _mm256_add_ps(self.1, o.1)) }
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        use std::arch::x86_64::*;
        unsafe { Y16(_mm256_sub_ps(self.0, o.0), _mm256_sub_ps(self.1, o.1)) }
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        use std::arch::x86_64::*;
        unsafe { Y16(_mm256_mul_ps(self.0, o.0), _mm256_mul_ps(self.1, o.1)) }
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        use std::arch::x86_64::*;
        unsafe { Y16(_mm256_div_ps(self.0, o.0), _mm256_div_ps(self.1, o.1)) }
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        use std::arch::x86_64::*;
        unsafe { Y16(_mm256_max_ps(self.0, o.0), _mm256_max_ps(self.1, o.1)) }
    }
    #[inline(always)]
    unsafe fn fmadd(self, b: Self, c: Self) -> Self {
        use std::arch::x86_64::*;
        unsafe {
            Y16(
                _mm256_fmadd_ps(self.0, b.0, c.0),
                _mm256_fmadd_ps(self.1, b.1, c.1),
            )
        }
    }
    #[inline(always)]
    unsafe fn neg_inf_where_le(self, ctx: Self, p: f32) -> Self {
        use std::arch::x86_64::*;
        unsafe {
            let (pv, ninf) = (_mm256_set1_ps(p), _mm256_set1_ps(f32::NEG_INFINITY));
            Y16(
                _mm256_blendv_ps(self.0, ninf, _mm256_cmp_ps::<_CMP_LE_OQ>(ctx.0, pv)),
                _mm256_blendv_ps(self.1, ninf, _mm256_cmp_ps::<_CMP_LE_OQ>(ctx.1, pv)),
            )
        }
    }
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        // SAFETY: as the trait's contract says.
        unsafe { Y16(exp8(self.0), exp8(self.1)) }
    }
    #[inline(always)]
    unsafe fn reduce(self) -> f32 {
        use std::arch::x86_64::*;
        unsafe {
            let y = _mm256_add_ps(self.0, self.1);
            let z = _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps::<1>(y));
            let w = _mm_add_ps(z, _mm_movehl_ps(z, z));
            _mm_cvtss_f32(_mm_add_ss(w, _mm_shuffle_ps::<0x55>(w, w)))
        }
    }
    #[inline(always)]
    unsafe fn tree(x: [Self; 16]) -> Self {
        unsafe {
            let y: [Self; 8] = std::array::from_fn(|l| x[l].add(x[l + 8]));
            let z: [Self; 4] = std::array::from_fn(|l| y[l].add(y[l + 4]));
            let w: [Self; 2] = std::array::from_fn(|l| z[l].add(z[l + 2]));
            w[0].add(w[1])
        }
    }
    #[inline(always)]
    unsafe fn transpose_reduce(x: &[Self; 16]) -> Self {
        use std::arch::x86_64::*;
        unsafe {
            // l + 8: each input's halves.
            let y: [__m256; 16] = std::array::from_fn(|i| _mm256_add_ps(x[i].0, x[i].1));
            // l + 4: inputs 2j (lanes 0-3) and 2j + 1 (lanes 4-7).
            let b: [__m256; 8] = std::array::from_fn(|j| {
                let (p, q) = (y[2 * j], y[2 * j + 1]);
                _mm256_add_ps(
                    _mm256_permute2f128_ps::<0x20>(p, q),
                    _mm256_permute2f128_ps::<0x31>(p, q),
                )
            });
            // l + 2: pairs of lanes of inputs 4m, 4m + 2, 4m + 1, 4m + 3.
            let d: [__m256; 4] = std::array::from_fn(|m| {
                let (p, q) = (_mm256_castps_pd(b[2 * m]), _mm256_castps_pd(b[2 * m + 1]));
                _mm256_add_ps(
                    _mm256_castpd_ps(_mm256_unpacklo_pd(p, q)),
                    _mm256_castpd_ps(_mm256_unpackhi_pd(p, q)),
                )
            });
            // l + 1: lanes of inputs 8k, 8k + 2, 8k + 4, 8k + 6, 8k + 1, 8k + 3, 8k + 5, 8k + 7.
            let f: [__m256; 2] = std::array::from_fn(|k| {
                let (r, s) = (d[2 * k], d[2 * k + 1]);
                _mm256_add_ps(
                    _mm256_shuffle_ps::<0x88>(r, s),
                    _mm256_shuffle_ps::<0xDD>(r, s),
                )
            });
            Y16(f[0], f[1])
        }
    }
}

/// One token's heads (`sc.kv.len()` of them): scores, softmax, weighted sum
/// of the value rows, each head's arithmetic as one head alone would do it
/// (the same operations in the same order).
///
/// # Safety
/// V's instruction set present; `sc` as the caller fills it for nh heads
/// of 16 C values and ctx positions; `o` holds nh · 16 C floats; for every
/// row `rows` gives for p < ctx, row + kv[j] + 16 C is inside both caches.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn heads_vec<V: L16, const C: usize>(
    k_cache: &[f16],
    v_cache: &[f16],
    rows: &Rows,
    ctx: usize,
    sc: &mut Scratch,
    o: &mut [f32],
) {
    let hd = 16 * C;
    let pad = ctx.next_multiple_of(16);
    let Scratch {
        q,
        scores,
        acc,
        kv,
        inv,
    } = sc;
    // SAFETY: as the function's contract says.
    unsafe {
        let (qp, sp, ap) = (q.as_ptr(), scores.as_mut_ptr(), acc.as_mut_ptr());
        rows.each(ctx, |p, at, ahead| {
            if let Some(a) = ahead {
                prefetch_row::<C>(k_cache.as_ptr().add(a + kv[0]), kv.len());
            }
            for (j, &off) in kv.iter().enumerate() {
                let kp = k_cache.as_ptr().add(at + off);
                let qj = qp.add(j * hd);
                let mut s = V::load(qj).mul(V::load_f16(kp));
                for c in 1..C {
                    s = V::load(qj.add(c * 16)).fmadd(V::load_f16(kp.add(c * 16)), s);
                }
                *sp.add(j * pad + p) = s.reduce();
            }
        });
        for (j, inv) in inv.iter_mut().enumerate() {
            let row = sp.add(j * pad);
            let max = (0..ctx).fold(f32::NEG_INFINITY, |m, p| m.max(*row.add(p)));
            // exp(s - max), 16 at a time (the padding past ctx is −∞: 0).
            let mut sum = V::zero();
            let mv = V::splat(max);
            for c in 0..pad / 16 {
                let e = V::load(row.add(c * 16)).sub(mv).exp();
                e.store(row.add(c * 16));
                sum = sum.add(e);
            }
            *inv = 1.0 / sum.reduce();
        }
        rows.each(ctx, |p, at, ahead| {
            if let Some(a) = ahead {
                prefetch_row::<C>(v_cache.as_ptr().add(a + kv[0]), kv.len());
            }
            for (j, &off) in kv.iter().enumerate() {
                let vp = v_cache.as_ptr().add(at + off);
                let wv = V::splat(*sp.add(j * pad + p));
                let aj = ap.add(j * hd);
                for c in 0..C {
                    let a = V::load(aj.add(c * 16));
                    wv.fmadd(V::load_f16(vp.add(c * 16)), a)
                        .store(aj.add(c * 16));
                }
            }
        });
        for (j, &inv) in inv.iter().enumerate() {
            let iv = V::splat(inv);
            for c in 0..C {
                V::load(ap.add(j * hd + c * 16))
                    .mul(iv)
                    .store(o.as_mut_ptr().add(j * hd + c * 16));
            }
        }
    }
}

/// One head of up to TILE queries that share a block table (`Task::Tile`),
/// each query's arithmetic exactly what `heads_vec` does for it alone:
/// the same score chains and reduction tree, the same exponentials, the
/// same sums in the same order (`transpose_reduce` gives every query's
/// reduction at once), so a token's output has the same bits in a tile or
/// alone. The scores are held transposed, a vector of the tile's queries
/// per position, so the softmax runs across queries; each position's cache
/// rows are read once for all of them.
///
/// # Safety
/// V's instruction set present; `ctx[..n]` the queries' context lengths
/// (≥ 1), zeros past n; `sc.q` holds TILE rows of 16 C scaled q (zeros past
/// n); for every row `rows` gives for p < max ctx, row + 16 C is inside both
/// caches; `o` plus i · stride + 16 C is writable for i < n.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_vec<V: L16, const C: usize>(
    k_cache: &[f16],
    v_cache: &[f16],
    rows: &Rows,
    ctx: &[usize; TILE],
    n: usize,
    sc: &mut Scratch,
    o: *mut f32,
    stride: usize,
) {
    let hd = 16 * C;
    let cmax = ctx[..n].iter().copied().max().unwrap_or(0);
    let cmin = ctx[..n].iter().copied().min().unwrap_or(0);
    let pad = cmax.next_multiple_of(16);
    sc.scores.clear();
    sc.scores.resize(pad * TILE, f32::NEG_INFINITY);
    let ctx_v: [f32; TILE] = std::array::from_fn(|i| ctx[i] as f32);
    // SAFETY: as the function's contract says.
    unsafe {
        let (qp, sp) = (sc.q.as_ptr(), sc.scores.as_mut_ptr());
        let ctx_v = V::load(ctx_v.as_ptr());
        // Scores: lane i of row p is query i's score at position p (−∞
        // where p is outside its context).
        rows.each(cmax, |p, at, ahead| {
            if let Some(a) = ahead {
                prefetch_row::<C>(k_cache.as_ptr().add(a), 1);
            }
            let kp = k_cache.as_ptr().add(at);
            let k: [V; C] = std::array::from_fn(|c| V::load_f16(kp.add(c * 16)));
            // Query i's chain in slot V::SLOT[i], so that lane i of the
            // reduction is query i. All TILE chains (zero q past n) so that
            // they stay in registers.
            let mut chains = [V::zero(); TILE];
            for i in 0..TILE {
                let qi = qp.add(i * hd);
                let mut s = V::load(qi).mul(k[0]);
                for (c, &kc) in k.iter().enumerate().skip(1) {
                    s = V::load(qi.add(c * 16)).fmadd(kc, s);
                }
                chains[V::SLOT[i]] = s;
            }
            let mut v = V::transpose_reduce(&chains);
            if p >= cmin {
                v = v.neg_inf_where_le(ctx_v, p as f32);
            }
            v.store(sp.add(p * TILE));
        });
        // Each query's maximum, exp(s − max) in place and the sums, lane l
        // of each position chunk into sums[l] as `heads_vec` adds them.
        let mut mx = V::splat(f32::NEG_INFINITY);
        for p in 0..cmax {
            mx = mx.max(V::load(sp.add(p * TILE)));
        }
        let mut sums = [V::zero(); 16];
        for p in 0..pad {
            let e = V::load(sp.add(p * TILE)).sub(mx).exp();
            e.store(sp.add(p * TILE));
            sums[p % 16] = sums[p % 16].add(e);
        }
        let inv = V::splat(1.0).div(V::tree(sums));
        let mut inv_s = [0f32; TILE];
        inv.store(inv_s.as_mut_ptr());
        // Weighted value rows, a cache block at a time: its rows stay in L1
        // while each 16 columns' sums for every query run over them (the
        // sums kept in `sc.acc` between blocks, each still added position
        // by position in order).
        sc.acc.clear();
        sc.acc.resize(C * TILE * 16, 0.0);
        let ap = sc.acc.as_mut_ptr();
        let row = rows.row;
        rows.blocks(cmax, |p0, len, at, next| {
            if let Some(nx) = next {
                for r in 0..len {
                    prefetch_row::<C>(v_cache.as_ptr().add(nx + r * row), 1);
                }
            }
            for c in 0..C {
                let sums = ap.add(c * TILE * 16);
                let mut acc: [V; TILE] = std::array::from_fn(|i| V::load(sums.add(i * 16)));
                for r in 0..len {
                    let p = p0 + r;
                    let v = V::load_f16(v_cache.as_ptr().add(at + r * row + c * 16));
                    let w = sp.add(p * TILE);
                    if p < cmin {
                        for (i, a) in acc.iter_mut().enumerate() {
                            *a = V::splat(*w.add(i)).fmadd(v, *a);
                        }
                    } else {
                        for (i, a) in acc.iter_mut().enumerate() {
                            if p < ctx[i] {
                                *a = V::splat(*w.add(i)).fmadd(v, *a);
                            }
                        }
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    a.store(sums.add(i * 16));
                }
            }
        });
        for c in 0..C {
            for (i, &inv) in inv_s.iter().enumerate().take(n) {
                V::load(ap.add((c * TILE + i) * 16))
                    .mul(V::splat(inv))
                    .store(o.add(i * stride + c * 16));
            }
        }
    }
}

/// The AVX-512 and AVX2 forms of a kernel generic over its 16-lane type:
/// each its own function because `#[target_feature]` turns an instruction
/// set on for one function, around the one generic body.
///
/// Safety of each form: its instruction set present (AVX-512 F; AVX2, FMA
/// and F16C); the rest as the generic kernel says.
macro_rules! vec_forms {
    ($kernel:ident => $avx512:ident, $avx2:ident; $($arg:ident: $ty:ty),* $(,)?) => {
        #[doc = concat!("`", stringify!($kernel), "` on AVX-512 (see `vec_forms`).")]
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx512<const C: usize>($($arg: $ty),*) {
            // SAFETY: as the function's contract says.
            unsafe { $kernel::<Z16, C>($($arg),*) }
        }

        #[doc = concat!("`", stringify!($kernel), "` on AVX2 (see `vec_forms`).")]
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,f16c")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx2<const C: usize>($($arg: $ty),*) {
            // SAFETY: as the function's contract says.
            unsafe { $kernel::<Y16, C>($($arg),*) }
        }
    };
}

vec_forms!(heads_vec => heads_avx512, heads_avx2;
    k_cache: &[f16], v_cache: &[f16], rows: &Rows, ctx: usize, sc: &mut Scratch, o: &mut [f32]);
vec_forms!(tile_vec => tile_avx512, tile_avx2;
    k_cache: &[f16], v_cache: &[f16], rows: &Rows, ctx: &[usize; TILE], n: usize, sc: &mut Scratch,
    o: *mut f32, stride: usize);

/// The sum of a vector's 16 lanes in a fixed tree: lane l + lane l + 8,
/// then + 4, + 2, + 1 (what `transpose_reduce16` and `tree16` do for 16 of
/// them at once, so that a score or a softmax sum has the same bits either
/// way).
///
/// # Safety
/// AVX-512 F present (inlined into the callers that check it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn reduce16(x: std::arch::x86_64::__m512) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: AVX-512 F is present (the caller's contract).
    unsafe {
        let y = _mm512_add_ps(x, _mm512_shuffle_f32x4::<0xEE>(x, x));
        let z = _mm512_add_ps(y, _mm512_shuffle_f32x4::<0x55>(y, y));
        let w = _mm512_add_ps(z, _mm512_permute_ps::<0xEE>(z));
        let r = _mm512_add_ps(w, _mm512_permute_ps::<0x55>(w));
        _mm512_cvtss_f32(r)
    }
}

/// Lane-wise, the same tree over 16 vectors: x[l] + x[l + 8], then + 4, + 2,
/// + 1.
///
/// # Safety
/// AVX-512 F present (inlined into the callers that check it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tree16(x: [std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: AVX-512 F is present (the caller's contract).
    unsafe {
        let y: [__m512; 8] = std::array::from_fn(|l| _mm512_add_ps(x[l], x[l + 8]));
        let z: [__m512; 4] = std::array::from_fn(|l| _mm512_add_ps(y[l], y[l + 4]));
        let w: [__m512; 2] = std::array::from_fn(|l| _mm512_add_ps(z[l], z[l + 2]));
        _mm512_add_ps(w[0], w[1])
    }
}

/// Where query i's chain goes among `transpose_reduce16`'s inputs so that
/// its sum lands in lane i (the reduction leaves input 4 m + k in lane
/// 4 k + m; the map is its own inverse).
#[cfg(target_arch = "x86_64")]
const TRANSPOSE: [usize; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

/// `reduce16` of 16 vectors at once: lane 4 k + m of the result is
/// reduce16(x[4 m + k]), added in the same tree (each step adds the same
/// pairs of lanes, two inputs per instruction).
///
/// # Safety
/// AVX-512 F present (inlined into the callers that check it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_reduce16(x: &[std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: AVX-512 F is present (the caller's contract).
    unsafe {
        // l + 8: input 2j's lanes 0-7 then input 2j + 1's.
        let b: [__m512; 8] = std::array::from_fn(|j| {
            let (p, q) = (x[2 * j], x[2 * j + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(p, q),
                _mm512_shuffle_f32x4::<0xEE>(p, q),
            )
        });
        // l + 4: a quarter (4 lanes) per input, inputs 4j..4j + 3 in order.
        let c: [__m512; 4] = std::array::from_fn(|j| {
            let (p, q) = (b[2 * j], b[2 * j + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(p, q),
                _mm512_shuffle_f32x4::<0xDD>(p, q),
            )
        });
        // l + 2: in quarter k, lanes 0-1 input 8j + k, lanes 2-3 input 8j + 4 + k.
        let d: [__m512; 2] = std::array::from_fn(|j| {
            let (p, q) = (_mm512_castps_pd(c[2 * j]), _mm512_castps_pd(c[2 * j + 1]));
            _mm512_add_ps(
                _mm512_castpd_ps(_mm512_unpacklo_pd(p, q)),
                _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)),
            )
        });
        // l + 1: quarter k holds inputs k, 4 + k, 8 + k, 12 + k.
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(d[0], d[1]),
            _mm512_shuffle_ps::<0xDD>(d[0], d[1]),
        )
    }
}

/// Prefetches the cache row run of `nh` heads of 16 C f16 from `p` (a
/// hint: reads nothing).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_row<const C: usize>(p: *const f16, nh: usize) {
    use std::arch::x86_64::*;
    for line in 0..(nh * C).div_ceil(2) {
        // SAFETY: a prefetch is a hint; it reads nothing and cannot fault.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(32 * line) as *const i8) };
    }
}

/// AVX-512 F present; 16 f16 readable at `p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn load16(p: *const f16) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: as the function's contract says.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)) }
}

/// e^x for 16 lanes, x ≤ 0 (softmax arguments; −∞ gives 0): x = n ln 2 + r
/// with |r| ≤ ln 2 / 2 (ln 2 split in two for an exact n ln 2), e^r by its
/// degree-6 Taylor polynomial (truncation below 2e-7 relative), times 2^n
/// built in the exponent bits. Arguments below −87 give 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    let e = _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
    // Below −87 (and −∞): 0.
    let tiny = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(x, _mm512_set1_ps(-87.0));
    _mm512_mask_blend_ps(tiny, e, _mm512_setzero_ps())
}

/// `exp16` on 8 lanes with AVX2 and FMA: the same operations lane by lane,
/// so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    let e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    // Below −87 (and −∞): 0.
    let tiny = _mm256_cmp_ps::<_CMP_LE_OQ>(x, _mm256_set1_ps(-87.0));
    _mm256_blendv_ps(e, _mm256_setzero_ps(), tiny)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lhama_model::rng::SplitMix64;

    fn randn(g: &mut SplitMix64, n: usize) -> Vec<f32> {
        (0..n).map(|_| g.next_normal() as f32).collect()
    }

    /// The vector forms this CPU can run (whatever LHAMA_CPU_ISA says: the
    /// tests compare every form there is).
    #[cfg(target_arch = "x86_64")]
    fn vector_forms() -> Vec<VecIsa> {
        let mut forms = Vec::new();
        if std::is_x86_feature_detected!("avx512f") {
            forms.push(VecIsa::Avx512);
        }
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            forms.push(VecIsa::Avx2);
        }
        forms
    }

    /// AVX2's 16-lane form against AVX-512's, bit for bit, where the CPU
    /// has both; else its reductions against a scalar tree and its
    /// exponential against f64's.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_form_adds_in_the_same_tree() {
        let forms = vector_forms();
        if !forms.contains(&VecIsa::Avx2) {
            eprintln!("no AVX2 on this CPU: the portable attention runs instead");
            return;
        }
        let tree = |x: &[f32]| {
            let y: Vec<f32> = (0..8).map(|l| x[l] + x[l + 8]).collect();
            let z: Vec<f32> = (0..4).map(|l| y[l] + y[l + 4]).collect();
            let w: Vec<f32> = (0..2).map(|l| z[l] + z[l + 2]).collect();
            w[0] + w[1]
        };
        let mut g = SplitMix64::new(9);
        for _ in 0..200 {
            let vals: Vec<f32> = (0..256)
                .map(|_| (g.next_normal() * 10f64.powi((g.next_u64() % 9) as i32 - 4)) as f32)
                .collect();
            // SAFETY: AVX2, FMA and F16C are present (checked above); vals
            // holds 256 floats and the outputs 16 each.
            unsafe {
                let x: [Y16; 16] = std::array::from_fn(|i| Y16::load(vals.as_ptr().add(16 * i)));
                let each: Vec<u32> = (0..16)
                    .map(|i| {
                        let r = x[i].reduce();
                        assert_eq!(r.to_bits(), tree(&vals[16 * i..][..16]).to_bits());
                        r.to_bits()
                    })
                    .collect();
                let mut placed = [Y16::zero(); 16];
                for i in 0..16 {
                    placed[Y16::SLOT[i]] = x[i];
                }
                let mut got = [0f32; 16];
                Y16::transpose_reduce(&placed).store(got.as_mut_ptr());
                assert_eq!(got.map(f32::to_bits).to_vec(), each);
                let mut lanes = [0f32; 16];
                Y16::tree(x).store(lanes.as_mut_ptr());
                for (j, &v) in lanes.iter().enumerate() {
                    let col: Vec<f32> = (0..16).map(|i| vals[16 * i + j]).collect();
                    assert_eq!(v.to_bits(), tree(&col).to_bits());
                }
                // The exponential: within exp16's error, and exp16's bits
                // where AVX-512 is there too.
                let xs: Vec<f32> = vals.iter().map(|v| -v.abs().min(100.0)).collect();
                for c in 0..16 {
                    let mut e = [0f32; 16];
                    Y16::load(xs.as_ptr().add(16 * c))
                        .exp()
                        .store(e.as_mut_ptr());
                    for (x, y) in xs[16 * c..][..16].iter().zip(e) {
                        let want = (*x as f64).exp();
                        if *x > -87.0 {
                            assert!(((y as f64) - want).abs() / want < 5e-7, "exp({x}) = {y}");
                        } else {
                            assert_eq!(y, 0.0, "exp({x})");
                        }
                    }
                    if forms.contains(&VecIsa::Avx512) {
                        let mut z = [0f32; 16];
                        Z16::load(xs.as_ptr().add(16 * c))
                            .exp()
                            .store(z.as_mut_ptr());
                        assert_eq!(z.map(f32::to_bits), e.map(f32::to_bits));
                    }
                }
            }
        }
    }

    /// The vector exponential against f64's on [−90, 0] and at −∞.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp16_is_within_its_error() {
        if !has_avx512() {
            eprintln!("no AVX-512 on this CPU: the exact attention runs instead");
            return;
        }
        use std::arch::x86_64::*;
        let mut worst = 0f64;
        for i in 0..90_000 {
            let base = -(i as f32) / 1000.0;
            let xs: [f32; 16] = std::array::from_fn(|j| base - j as f32 * 1e-4);
            let mut got = [0f32; 16];
            // SAFETY: AVX-512 F is present (checked above).
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp16(_mm512_loadu_ps(xs.as_ptr()))) };
            for (x, y) in xs.iter().zip(got) {
                let want = (*x as f64).exp();
                if *x > -87.0 {
                    worst = worst.max(((y as f64) - want).abs() / want);
                } else {
                    assert!(y >= 0.0 && (y as f64) <= 1.7e-38, "exp({x}) = {y}");
                }
            }
        }
        assert!(worst < 5e-7, "relative error {worst}");
        let mut got = [1f32; 16];
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp16(_mm512_set1_ps(f32::NEG_INFINITY))) };
        assert!(got.iter().all(|&v| v == 0.0));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn heads_are_split_only_for_too_few_tokens() {
        assert_eq!(head_groups(8, 16, 2), 1);
        assert_eq!(head_groups(4, 16, 2), 1);
        assert_eq!(head_groups(1, 16, 2), 4);
        assert_eq!(head_groups(3, 16, 2), 2);
        assert_eq!(head_groups(1, 16, 16), 16);
        // Only while the halves divide the heads.
        assert_eq!(head_groups(1, 12, 16), 4);
        assert_eq!(head_groups(1, 3, 16), 1);
    }

    /// Tiles: runs of tokens with one block table, at most `tile` long;
    /// every (token, head) in exactly one task.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn tiles_take_runs_of_one_sequence() {
        let (a, b) = (vec![0u32, 1], vec![2u32]);
        let seq_of: Vec<&[u32]> = vec![&a, &a, &a, &b, &a, &b, &b];
        let got = tasks(&seq_of, 2, 2, 2);
        let want = [
            Task::Tile {
                tok: 0,
                n: 2,
                head: 0,
            },
            Task::Tile {
                tok: 5,
                n: 2,
                head: 0,
            },
            Task::Tile {
                tok: 0,
                n: 2,
                head: 1,
            },
            Task::Tile {
                tok: 5,
                n: 2,
                head: 1,
            },
            Task::Heads { tok: 2, h0: 0 },
            Task::Heads { tok: 2, h0: 1 },
            Task::Heads { tok: 3, h0: 0 },
            Task::Heads { tok: 3, h0: 1 },
            Task::Heads { tok: 4, h0: 0 },
            Task::Heads { tok: 4, h0: 1 },
        ];
        assert_eq!(got, want);
        let got = tasks(&seq_of, 2, 1, TILE);
        assert_eq!(
            got[0],
            Task::Tile {
                tok: 0,
                n: 3,
                head: 0
            }
        );
        assert_eq!(
            got[1],
            Task::Tile {
                tok: 5,
                n: 2,
                head: 0
            }
        );
        assert_eq!(got.len(), 6);
    }

    /// The reductions of 16 vectors at once against the one-vector form,
    /// bit for bit, on values whose sums depend on the order.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transposed_reductions_add_in_the_same_tree() {
        if !has_avx512() {
            eprintln!("no AVX-512 on this CPU: the exact attention runs instead");
            return;
        }
        use std::arch::x86_64::*;
        let mut g = SplitMix64::new(7);
        for _ in 0..200 {
            let vals: Vec<f32> = (0..256)
                .map(|_| (g.next_normal() * 10f64.powi((g.next_u64() % 9) as i32 - 4)) as f32)
                .collect();
            // SAFETY: AVX-512 F is present (checked above); vals holds 256.
            unsafe {
                let x: [__m512; 16] =
                    std::array::from_fn(|i| _mm512_loadu_ps(vals.as_ptr().add(16 * i)));
                let each: Vec<u32> = (0..16).map(|i| reduce16(x[i]).to_bits()).collect();
                let placed: [__m512; 16] = std::array::from_fn(|i| x[TRANSPOSE[i]]);
                let mut got = [0f32; 16];
                _mm512_storeu_ps(got.as_mut_ptr(), transpose_reduce16(&placed));
                assert_eq!(got.map(f32::to_bits).to_vec(), each);
                // tree16 over 16 vectors, lane j: the tree of their lanes j.
                let mut tree = [0f32; 16];
                _mm512_storeu_ps(tree.as_mut_ptr(), tree16(x));
                for (j, &v) in tree.iter().enumerate() {
                    let lanes: [f32; 16] = std::array::from_fn(|i| vals[16 * i + j]);
                    let r = reduce16(_mm512_loadu_ps(lanes.as_ptr()));
                    assert_eq!(v.to_bits(), r.to_bits());
                }
            }
        }
    }

    /// The fast attention against the exact one on fresh random inputs:
    /// several sequences with ragged, chunked contexts in scattered blocks,
    /// grouped-query heads, head sizes the vector version takes and one it
    /// does not; the output poisoned first.
    #[test]
    fn fast_attention_matches_the_exact_one() {
        let mut g = SplitMix64::new(41);
        for &(heads, kv_heads, hd) in &[
            (4usize, 2usize, 64usize),
            (2, 2, 16),
            (3, 1, 128),
            (2, 1, 24),
            (8, 2, 32),
        ] {
            let bs = 16;
            let blocks = 14;
            let kv_dim = kv_heads * hd;
            let k_cache = randn(&mut g, blocks * bs * kv_dim);
            let v_cache = randn(&mut g, blocks * bs * kv_dim);
            // Sequence A: 5 blocks scattered, a chunk of 7 tokens at 60..67;
            // sequence B: 1 token at position 0; sequence C: decode at 40;
            // sequence D: a prompt's first 37 tokens (tiles of 16, 16, 5,
            // the first from position 0); sequence E: a chunk of 2.
            let (ta, tb, tc) = (vec![7u32, 2, 9, 0, 4], vec![11u32], vec![3u32, 5, 8]);
            let (td, te) = (vec![1u32, 10, 6], vec![12u32, 13]);
            let mut seq_of: Vec<&[u32]> = Vec::new();
            let mut positions = Vec::new();
            for p in 60..67 {
                seq_of.push(&ta);
                positions.push(p);
            }
            seq_of.push(&tb);
            positions.push(0);
            seq_of.push(&tc);
            positions.push(40);
            for p in 0..37 {
                seq_of.push(&td);
                positions.push(p);
            }
            for p in 17..19 {
                seq_of.push(&te);
                positions.push(p);
            }
            let t = positions.len();
            // Large scores too (a softmax far from uniform).
            let q: Vec<f32> = randn(&mut g, t * heads * hd)
                .iter()
                .map(|v| v * 3.0)
                .collect();
            let shape = AttnShape {
                heads,
                kv_heads,
                head_dim: hd,
                block_size: bs,
            };
            // The exact kernel on the f16-held values, against both f16
            // versions.
            let k16: Vec<f16> = k_cache.iter().map(|&v| f16::from_f32(v)).collect();
            let v16: Vec<f16> = v_cache.iter().map(|&v| f16::from_f32(v)).collect();
            let (k32, v32): (Vec<f32>, Vec<f32>) = (
                k16.iter().map(|v| v.to_f32()).collect(),
                v16.iter().map(|v| v.to_f32()).collect(),
            );
            let mut want = vec![f32::NAN; t * heads * hd];
            crate::kernels::paged_attention(&q, &k32, &v32, &seq_of, &positions, shape, &mut want);
            let mut portable = vec![f32::NAN; t * heads * hd];
            crate::kernels::paged_attention_over(
                &q,
                &k16,
                &v16,
                &seq_of,
                &positions,
                shape,
                &mut portable,
            );
            assert_eq!(
                portable, want,
                "hd {hd}: the portable version is the exact arithmetic"
            );
            let mut got = vec![f32::NAN; t * heads * hd];
            paged_attention_fast(&q, &k16, &v16, &seq_of, &positions, shape, &mut got);
            // Every split of the heads into groups a task takes, and every
            // tile size (1: each token alone), gives the same bits (each
            // query's arithmetic is its own).
            // Both vector forms the CPU has give those bits too (AVX2's
            // pairs of 8 lanes add in AVX-512's tree).
            #[cfg(target_arch = "x86_64")]
            for isa in vector_forms().into_iter().filter(|_| hd.is_multiple_of(16)) {
                for groups in (0..4).map(|e| 1 << e).filter(|g| heads % g == 0) {
                    for tile in [1, 3, TILE] {
                        let mut split = vec![f32::NAN; t * heads * hd];
                        attention_vec(
                            &q, &k16, &v16, &seq_of, &positions, shape, groups, tile, isa,
                            &mut split,
                        );
                        assert_eq!(
                            split.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "heads {heads} hd {hd}: {isa:?}, {groups} groups, tiles of {tile}"
                        );
                    }
                }
            }
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                got.iter().all(|v| v.is_finite()),
                "hd {hd}: an output was not written"
            );
            assert!(
                worst < 2e-5,
                "heads {heads}/{kv_heads} hd {hd}: max error {worst}"
            );
        }
    }
}
