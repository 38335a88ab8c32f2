//! The integer product on Intel AMX (`tdpbsud`: a 16 × 64 tile of signed
//! bytes times a 64 × 16 tile of unsigned bytes into 16 × 16 i32 sums, one
//! instruction), for steps of several rows: it takes 16 columns × 64 k of
//! weights for up to 8 rows at once, where `vpdpwssd` takes 16 × 2 for one.
//!
//! AMX multiplies bytes, the activations are int16: each xq is split as
//! 256 · hi + lo with hi and lo both signed bytes (|xq| ≤ `XQ_MAX` = 32639
//! makes that possible), and a row chunk's A tile holds the chunk's hi rows
//! above its lo rows, so one `tdpbsud` gives both halves' sums and
//! 256 · hi_sum + lo_sum is the row's integer sum exactly (|sum| < 2^26).
//! Each group's sums then take the same f32 step as in every other
//! version (`group_term`'s operations, 16 columns a vector), so the
//! product's bits are those of the scalar version.
//!
//! The B tiles are built from `Int8Layout`'s packed weights as they are
//! read (one 64-byte load is two k quads of a column block; the nibbles are
//! masked and interleaved into AMX's 4-k-per-column order by `vpermt2b`):
//! no second copy of the weights is held.
//!
//! The kernel asks Linux for the tile state once (`arch_prctl
//! ARCH_REQ_XCOMP_PERM`); where that, or the CPU, says no, or
//! `LHAMA_CPU_AMX=0`, the product stays on AVX-512 / AVX2.

use std::arch::asm;
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{CB, INT8_MAX_ROWS, Int8Layout, KQ, PREFETCH, QuantRows};
use lhama_model::weights::FusedAwq;

/// k values one A tile row (and one B tile) spans.
const KT: usize = 64;
/// Column blocks (16 columns each) one pass keeps in C tiles: tmm0-3.
const CBS: usize = 4;
/// B tiles built ahead of their use: a tile load of bytes stored just
/// before waits for the stores (measured on this project's Sapphire Rapids
/// VM: 60 cycles a tile when loaded at once, 15-17 four or more tiles later,
/// where the load and `tdpbsud` alone take 14).
const AHEAD: usize = 8;
/// B tile buffers of the ring a one-chunk pass builds into (a power of
/// two, more than AHEAD).
const RING: usize = 16;
/// The fewest rows for which AMX is taken. Below, the AVX-512 loop is as
/// fast (examples/int8_bench.rs, ttl-460m's four shapes from cache on this
/// project's Sapphire Rapids VM, µs in all, AVX-512 against AMX: 2 rows 305
/// against 295; 4 rows 504 against 371; 8 rows 922 against 532; 64 rows
/// 7,268 against 2,623).
pub(super) const AMX_MIN_ROWS: usize = 4;

/// Whether the CPU has AMX-INT8 and AVX-512 VBMI, the kernel may use the
/// tile state, and `LHAMA_CPU_AMX` does not switch it off; asked once.
pub(super) fn available() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        if std::env::var("LHAMA_CPU_AMX").is_ok_and(|v| v == "0") {
            return false;
        }
        // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
        let leaf7 = __cpuid_count(7, 0);
        let amx = leaf7.edx & (1 << 24) != 0 && leaf7.edx & (1 << 25) != 0;
        amx && crate::isa::allows(crate::isa::Isa::Avx512)
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vbmi")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
            && request_tile_state()
    })
}

/// Asks Linux for permission to use the AMX tile data (feature 18); the
/// permission holds for every thread of the process.
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes the process's
    // permitted xsave features; it reads and writes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Whether `matmul_run` may take this product: AMX is there, the rows are
/// enough and the group is a whole number of A tiles.
pub(super) fn takes(m: usize, w: &FusedAwq) -> bool {
    m >= AMX_MIN_ROWS && w.group.is_multiple_of(KT) && available()
}

/// One A tile row: 64 k of one row's hi or lo bytes, on a cache line of its
/// own (a tile load of rows that straddle lines took three times as long).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [i8; KT]);

/// The A tiles of a chunk of up to 8 rows: for each 64-k step, the chunk's
/// hi bytes (rows 0..rn) above its lo bytes (rows rn..2 rn).
pub(super) fn split_rows(q: &QuantRows, r0: usize, rn: usize, k: usize) -> Vec<Line> {
    let steps = k / KT;
    let mut a = vec![Line([0; KT]); steps * 2 * rn];
    for r in 0..rn {
        let xs = &q.xq[(r0 + r) * k..][..k];
        for (s, step) in xs.chunks_exact(KT).enumerate() {
            let (hi, lo) = (s * 2 * rn + r, s * 2 * rn + rn + r);
            for (c, &v) in step.iter().enumerate() {
                let v = i32::from(v);
                let h = (v + 128) >> 8;
                a[hi].0[c] = h as i8;
                a[lo].0[c] = (v - h * 256) as i8;
            }
        }
    }
    a
}

/// The 64-byte tile configuration: palette 1; tmm0-3 the C tiles and tmm4-5
/// the A tiles, 2 rn rows of 64 bytes; tmm6-7 the B tiles, 16 rows of 64
/// bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(rn: usize) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = if t < 6 { (2 * rn) as u8 } else { 16 };
        }
        Self(c)
    }
}

/// y[M, N] from the quantized rows, on AMX; the caller checked `takes`.
pub(super) fn matmul_run(
    q: &QuantRows,
    m: usize,
    w: &FusedAwq,
    layout: &Int8Layout,
    y: &mut [f32],
) {
    let chunks: Vec<(usize, usize, Vec<Line>)> = (0..m)
        .step_by(INT8_MAX_ROWS)
        .map(|r0| {
            let rn = INT8_MAX_ROWS.min(m - r0);
            (r0, rn, split_rows(q, r0, rn, w.k))
        })
        .collect();
    let blocks = w.n / CB;
    let per_task = blocks
        .div_ceil(rayon::current_num_threads() * 8)
        .next_multiple_of(CBS);
    let out = crate::kernels::SyncPtr(y.as_mut_ptr());
    (0..blocks.div_ceil(per_task))
        .into_par_iter()
        .for_each(|t| {
            let mut tile = [0f32; INT8_MAX_ROWS * CB * CBS];
            SCRATCH.with_borrow_mut(|bufs| {
                // One chunk runs through a ring of B tiles that stays in L1;
                // several keep all of a pass's tiles for the later chunks.
                let tiles = if chunks.len() == 1 {
                    RING
                } else {
                    w.k / KT * CBS
                };
                if bufs.b.len() < tiles {
                    bufs.b.resize(tiles, Tile([0; 1024]));
                }
                let mut configured = 0;
                let end = ((t + 1) * per_task).min(blocks);
                for cb0 in (t * per_task..end).step_by(CBS) {
                    let ncb = CBS.min(end - cb0);
                    for (c, (r0, rn, a)) in chunks.iter().enumerate() {
                        if *rn != configured {
                            let cfg = TileConfig::new(*rn);
                            // SAFETY: `available` found AMX-TILE/INT8 and obtained
                            // the tile state; the configuration is a valid
                            // palette-1 one.
                            unsafe {
                                asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack))
                            };
                            configured = *rn;
                        }
                        // SAFETY: the tiles are configured for rn rows; cb0 + ncb
                        // <= n / 16; `a` is this chunk's split rows for w.k; the
                        // first chunk builds the B tiles the others reuse.
                        unsafe {
                            pass(
                                q,
                                *r0,
                                *rn,
                                a,
                                w,
                                layout,
                                cb0,
                                ncb,
                                c == 0,
                                chunks.len() == 1,
                                &mut tile,
                                bufs,
                            )
                        };
                        for r in 0..*rn {
                            for j in 0..ncb {
                                // SAFETY: y has m * n elements (the caller's
                                // assert); this task alone writes these columns.
                                unsafe {
                                    std::ptr::copy_nonoverlapping(
                                        tile.as_ptr().add((j * INT8_MAX_ROWS + r) * CB),
                                        out.ptr().add((r0 + r) * w.n + (cb0 + j) * CB),
                                        CB,
                                    );
                                }
                            }
                        }
                    }
                }
            });
            // SAFETY: returns the tile state to its initial form.
            unsafe { asm!("tilerelease", options(nostack)) };
        });
}

/// `vpermt2b` indices from (low nibbles, high nibbles) of two packed quads
/// to each quad's B tile row: byte 4 c + j takes byte 2 c + j % 2 of the
/// quad, from the low nibbles for j < 2 and from the high ones (index + 64)
/// for j ≥ 2.
const B_ORDER: [[u8; 64]; 2] = {
    let mut t = [[0u8; 64]; 2];
    let mut quad = 0;
    while quad < 2 {
        let mut i = 0;
        while i < 64 {
            let (c, j) = (i / 4, i % 4);
            t[quad][i] = (quad * 32 + 2 * c + j % 2 + if j < 2 { 0 } else { 64 }) as u8;
            i += 1;
        }
        quad += 1;
    }
    t
};

/// B tile bytes of one 64-k step of column block `cb` (16 k quads), in
/// AMX's order: row kq, byte 4 c + j = q(4 kq + j, column c). The packed
/// 32 bytes of a quad hold (c, k 0-1) as the low nibbles of bytes 2c, 2c + 1
/// and (c, k 2-3) as their high nibbles.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn build_b(packed: *const u8, dst: *mut u8) {
    // SAFETY: the caller's: packed has 512 bytes, dst room for 1024.
    unsafe {
        let nib = _mm512_set1_epi8(0x0F);
        let i0 = _mm512_loadu_si512(B_ORDER[0].as_ptr() as *const __m512i);
        let i1 = _mm512_loadu_si512(B_ORDER[1].as_ptr() as *const __m512i);
        for p in 0..8 {
            let v = _mm512_loadu_si512(packed.add(64 * p) as *const __m512i);
            let lo = _mm512_and_si512(v, nib);
            let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
            _mm512_storeu_si512(
                dst.add(128 * p) as *mut __m512i,
                _mm512_permutex2var_epi8(lo, i0, hi),
            );
            _mm512_storeu_si512(
                dst.add(128 * p + 64) as *mut __m512i,
                _mm512_permutex2var_epi8(lo, i1, hi),
            );
        }
    }
}

/// Issues `tdpbsud tmm<C>, tmm4, tmm<B>`.
macro_rules! dp {
    ($c:literal, $a:literal, $b:literal) => {
        asm!(
            concat!("tdpbsud tmm", $c, ", tmm", $a, ", tmm", $b),
            options(nostack)
        )
    };
}

/// Loads 1024 bytes at `$p` (rows of 64) into `tmm<T>`.
macro_rules! load {
    ($t:literal, $p:expr) => {
        asm!(concat!("tileloadd tmm", $t, ", [{0} + {1}]"), in(reg) $p, in(reg) 64usize, options(nostack))
    };
}

/// Stores `tmm<T>` to `$p` (rows of 64 bytes).
macro_rules! store {
    ($t:literal, $p:expr) => {
        asm!(concat!("tilestored [{0} + {1}], tmm", $t), in(reg) $p, in(reg) 64usize, options(nostack))
    };
}

/// A task's scratch: the B tiles of one pass (all of K for up to 4 column
/// blocks, built by the first row chunk and reused by the others), and the
/// C tiles' stores.
struct Bufs {
    b: Vec<Tile>,
    cs: Sums,
}

/// The C tiles of a pass as stored, aligned to a cache line.
#[repr(C, align(64))]
struct Sums([[i32; 16 * CB]; CBS]);

thread_local! {
    /// Each thread's scratch, kept from product to product (zeroing a fresh
    /// one took longer than a 4-column-block pass).
    static SCRATCH: std::cell::RefCell<Bufs> = const {
        std::cell::RefCell::new(Bufs {
            b: Vec::new(),
            cs: Sums([[0; 16 * CB]; CBS]),
        })
    };
}

/// One tile's bytes, aligned to a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tile([u8; 1024]);

/// Column blocks cb0..cb0 + ncb (ncb ≤ 4) for the rn rows from r0, into
/// tile[j * 8 + r][16] (block j, row r).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,fma,f16c")]
unsafe fn pass(
    q: &QuantRows,
    r0: usize,
    rn: usize,
    a: &[Line],
    w: &FusedAwq,
    layout: &Int8Layout,
    cb0: usize,
    ncb: usize,
    build: bool,
    ring: bool,
    tile: &mut [f32; INT8_MAX_ROWS * CB * CBS],
    bufs: &mut Bufs,
) {
    let (k, n, group) = (w.k, w.n, w.group);
    let (kqs, groups) = (k / KQ, k / group);
    // The pass's B tiles in order: step s, block j is tile s * ncb + j.
    let steps_per_group = group / KT;
    let total = k / KT * ncb;
    let packed = layout.packed.as_ptr();
    // The byte offset of tile (s, j) in `packed`: block cb0 + j, quads
    // 16 s.. 16 s + 15.
    // Where tile i is kept: a ring of RING (a power of two) or all of them.
    let slot = |i: usize| if ring { i & (RING - 1) } else { i };
    let tile_at = |s: usize, j: usize| ((cb0 + j) * kqs + s * (KT / KQ)) * 32;
    // SAFETY (every tile and vector access): a column block's 16 quads of a
    // 64-k step are 512 bytes inside `packed` (cb < n / 16, kq < k / 4); the
    // A tile of step s is 2 rn × 64 bytes inside `a`; the C tiles are stored
    // into 2 rn ≤ 16 rows of 64 bytes; the group's zeros and scales of a
    // block are 16 entries inside [groups, n]; rows r0 + r < q's rows. A
    // prefetch past the end of `packed` is a hint that reads nothing.
    unsafe {
        let mut y = [[_mm512_setzero_ps(); INT8_MAX_ROWS]; CBS];
        // (step, block) of the next tile to build, kept by counting (no
        // divisions in the loop).
        let (mut bs, mut bj) = (0, 0);
        let mut built = if build { 0 } else { total };
        while built < AHEAD.min(total) {
            build_b(
                packed.add(tile_at(bs, bj)),
                bufs.b[slot(built)].0.as_mut_ptr(),
            );
            built += 1;
            bj += 1;
            if bj == ncb {
                (bs, bj) = (bs + 1, 0);
            }
        }
        let (mut s, mut j, mut in_group) = (0, 0, 0);
        for i in 0..total {
            if built < total {
                let at = packed.add(tile_at(bs, bj));
                for line in 0..8 {
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH + 64 * line) as *const i8);
                }
                build_b(at, bufs.b[slot(built)].0.as_mut_ptr());
                built += 1;
                bj += 1;
                if bj == ncb {
                    (bs, bj) = (bs + 1, 0);
                }
            }
            if j == 0 {
                if in_group == 0 {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack)
                    );
                }
                // Even steps' A in tmm4, odd ones' in tmm5: a load into the
                // register the step's four products still read would wait
                // for them all to finish.
                if s % 2 == 0 {
                    load!(4, a.as_ptr().add(s * 2 * rn));
                } else {
                    load!(5, a.as_ptr().add(s * 2 * rn));
                }
            }
            let bb = bufs.b[slot(i)].0.as_ptr();
            match (j, s % 2) {
                (0, 0) => {
                    load!(6, bb);
                    dp!("0", "4", "6");
                }
                (1, 0) => {
                    load!(7, bb);
                    dp!("1", "4", "7");
                }
                (2, 0) => {
                    load!(6, bb);
                    dp!("2", "4", "6");
                }
                (_, 0) => {
                    load!(7, bb);
                    dp!("3", "4", "7");
                }
                (0, _) => {
                    load!(6, bb);
                    dp!("0", "5", "6");
                }
                (1, _) => {
                    load!(7, bb);
                    dp!("1", "5", "7");
                }
                (2, _) => {
                    load!(6, bb);
                    dp!("2", "5", "6");
                }
                _ => {
                    load!(7, bb);
                    dp!("3", "5", "7");
                }
            }
            let step = s;
            j += 1;
            if j < ncb {
                continue;
            }
            (s, j, in_group) = (s + 1, 0, in_group + 1);
            if in_group < steps_per_group {
                continue;
            }
            in_group = 0;
            let g = step / steps_per_group;
            store!(0, bufs.cs.0[0].as_mut_ptr());
            if ncb > 1 {
                store!(1, bufs.cs.0[1].as_mut_ptr());
            }
            if ncb > 2 {
                store!(2, bufs.cs.0[2].as_mut_ptr());
            }
            if ncb > 3 {
                store!(3, bufs.cs.0[3].as_mut_ptr());
            }
            for (j, yj) in y.iter_mut().enumerate().take(ncb) {
                let at = g * n + (cb0 + j) * CB;
                let z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                    layout.zeros.as_ptr().add(at) as *const __m128i,
                )));
                let s = _mm512_cvtph_ps(_mm256_loadu_si256(
                    layout.scales.as_ptr().add(at) as *const __m256i
                ));
                let c = bufs.cs.0[j].as_ptr();
                for (r, yr) in yj.iter_mut().enumerate().take(rn) {
                    let hi = _mm512_loadu_si512(c.add(r * CB) as *const __m512i);
                    let lo = _mm512_loadu_si512(c.add((rn + r) * CB) as *const __m512i);
                    let isum = _mm512_add_epi32(_mm512_slli_epi32(hi, 8), lo);
                    let row = (r0 + r) * groups + g;
                    let xsum = _mm512_set1_ps(q.sum[row] as f32);
                    let f = _mm512_mul_ps(
                        _mm512_sub_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(z, xsum)),
                        s,
                    );
                    *yr = _mm512_fmadd_ps(f, _mm512_set1_ps(q.scale[row]), *yr);
                }
            }
        }
        for (j, yj) in y.iter().enumerate().take(ncb) {
            for (r, yr) in yj.iter().enumerate().take(rn) {
                _mm512_storeu_ps(tile.as_mut_ptr().add((j * INT8_MAX_ROWS + r) * CB), *yr);
            }
        }
    }
}
