//! Typed launchers for the kernels in kernels/*.cu. Each checks the sizes it
//! relies on before the unsafe launch; a wrong size is an error, not a
//! device fault.

use std::sync::Arc;

use std::ffi::c_void;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut,
    DevicePtr, DevicePtrMut, LaunchConfig,
};
use half::f16;

use crate::CudaError;
use crate::compile;

/// AWQ rows per launch of the GEMV kernel (AWQ_MAX_M in awq.cu).
pub const AWQ_MAX_M: usize = 8;
/// Input rows one GEMV block covers (AWQ_ROWS_PER_BLOCK in awq.cu).
pub const AWQ_ROWS_PER_BLOCK: usize = 128;
/// Tensor-core products of up to this many rows leave their K splits to the
/// consumer (`Kernels::awq_matmul_split`): measured faster at 32 to 128
/// rows on an H200, no faster at 256 and slower in the 8-row GEMV
/// (docs/BENCHMARKS.md).
pub const DEFER_MAX_ROWS: usize = 128;

/// Chunks of at most this many rows add their split-K partials up in the
/// GEMV launch itself; larger ones use the separate reduce kernel.
pub const AWQ_FUSED_MAX_ROWS: usize = 2;

/// Tile counters the GEMV needs for N outputs (one per 64 columns: the
/// tensor-core GEMV's tile; the f32 GEMV uses one per 256).
pub fn counters_len(n: usize) -> usize {
    n.div_ceil(GEMV_MMA_COLS)
}

/// Columns one block of the tensor-core GEMV covers (GEMV_MMA_WARPS × 16 in
/// gemv_mma.cu), and the K one split of it takes (GEMV_MMA_K).
pub(crate) const GEMV_MMA_COLS: usize = 64;
pub(crate) const GEMV_MMA_K: usize = 256;

/// The GEMV's launches over M rows: (first row, rows) in chunks of up to
/// AWQ_MAX_M.
fn row_chunks(m: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..m)
        .step_by(AWQ_MAX_M)
        .map(move |row| (row, (m - row).min(AWQ_MAX_M)))
}

/// The fragment GEMM's K splits for a grid of `tiles` blocks a split:
/// (splits, k per split), enough to reach `target_blocks`, each split a
/// multiple of 64 k and at least GEMM_FRAG_MIN_SPLIT_K (or all of K), at
/// most `max_splits` (what the partial buffer holds). K % 64 == 0.
fn frag_splits(k: usize, tiles: usize, target_blocks: usize, max_splits: usize) -> (usize, usize) {
    let most = (k / GEMM_FRAG_MIN_SPLIT_K).max(1).min(max_splits.max(1));
    let wanted = target_blocks.div_ceil(tiles.max(1)).clamp(1, most);
    let k_per_split = (k / GEMM_FRAG_BK).div_ceil(wanted) * GEMM_FRAG_BK;
    (k.div_ceil(k_per_split), k_per_split)
}

/// Whether the tensor-core GEMV takes a product of this shape (N % 16,
/// K % 256, G % 64: its tiles, splits and groups).
pub fn gemv_mma_fits(k: usize, n: usize, group: usize) -> bool {
    n.is_multiple_of(16) && k.is_multiple_of(GEMV_MMA_K) && group.is_multiple_of(64) && group > 0
}

/// The 4-bit weight q[k][n] of an AWQ `qweight` [K, N/8].
fn awq_nibble(qweight: &[u32], n: usize, k: usize, col: usize) -> u32 {
    lhama_model::awq::unpack(qweight[k * (n / 8) + col / 8], col % 8)
}

/// `qweight` [K, N/8] re-laid in the tensor-core GEMV's fragment order
/// (gemv_mma.cu): [N/16][K/64][32 lanes][4 words], word t of lane L in
/// (column tile nt, k quad kq) holding, for i in 0..4, q[k][n] at bits 4i and
/// q[k + 1][n] at bits 16 + 4i, where n = 16 nt + L / 4 + 8 (i % 2) and
/// k = 16 (4 kq + t) + 2 (L % 4) + 8 (i / 2): the A fragments of
/// mma.sync m16n8k16 for W^T. The caller checks `gemv_mma_fits`.
pub fn fragment_order(qweight: &[u32], k: usize, n: usize) -> Vec<u32> {
    let quads = k / 64;
    let mut out = vec![0u32; k * n / 8];
    for nt in 0..n / 16 {
        for kq in 0..quads {
            for lane in 0..32 {
                let (gid, tig) = (lane / 4, lane % 4);
                for t in 0..4 {
                    let mut word = 0u32;
                    for i in 0..4 {
                        let col = 16 * nt + gid + 8 * (i % 2);
                        let row = 16 * (4 * kq + t) + 2 * tig + 8 * (i / 2);
                        word |= awq_nibble(qweight, n, row, col) << (4 * i);
                        word |= awq_nibble(qweight, n, row + 1, col) << (16 + 4 * i);
                    }
                    out[((nt * quads + kq) * 32 + lane) * 4 + t] = word;
                }
            }
        }
    }
    out
}
/// Constants the host and the kernels share, defined once here: the
/// kernels' source gets them as `#define`s (`compile::program_source`), and
/// no kernel file defines them itself (a unit test), so the two sides
/// cannot drift apart.
pub(crate) fn shared_defines() -> [(&'static str, usize); 15] {
    [
        ("AWQ_MAX_M", AWQ_MAX_M),
        ("AWQ_ROWS_PER_BLOCK", AWQ_ROWS_PER_BLOCK),
        ("GEMV_MMA_WARPS", GEMV_MMA_COLS / 16),
        ("GEMV_MMA_K", GEMV_MMA_K),
        ("MMA_BM", MMA_TILE),
        ("MMA_BN", MMA_TILE),
        ("MMA_BK", MMA_BK),
        ("ATTN_WARPS", ATTENTION_WARPS),
        ("ATTN_PART", ATTENTION_PART),
        ("ATTN_TILE", ATTENTION_TILE),
        ("SAMPLE_THREADS", SAMPLE_THREADS as usize),
        ("LM_HEAD_ROWS", LM_HEAD_ROWS),
        ("LM_HEAD_VR", LM_HEAD_VR),
        ("CLUSTER_MAX", CLUSTER_MAX_SPLITS),
        ("WG_WIDE_SMEM", WGMMA_WIDE_SMEM),
    ]
}

/// Warps per attention block (ATTN_WARPS in attention.cu).
pub const ATTENTION_WARPS: usize = 8;
/// Context positions one attention block handles (ATTN_PART in attention.cu).
pub const ATTENTION_PART: usize = 64;
/// Most query tokens of one sequence a prefill attention block takes
/// (ATTN_TILE in attention.cu).
pub const ATTENTION_TILE: usize = 16;
/// Largest head_dim the attention kernel handles (4 dimensions per lane).
pub const ATTENTION_MAX_HEAD_DIM: usize = 128;

/// Numerics of the CUDA forward pass. `Exact`: f32 activations into the
/// matrix products (split into two f16 halves on the tensor cores) and an
/// f32 KV cache, matching the f32 CPU reference to ~1e-5. `Fast`: f16
/// activations into the tensor-core products and an f16 KV cache, with f32
/// accumulation, residual stream, norms and softmax.
///
/// Fast is the default: it is within its fidelity budget on the goldens
/// (docs/FIDELITY.md) and faster at every batch size from 64 rows
/// (docs/BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    Exact,
    #[default]
    Fast,
}

/// One layer's K/V cache, [blocks * block_size, kv_heads, head_dim] each:
/// f32 on the exact path, f16 on the fast path.
pub enum KvCache {
    F32 {
        k: CudaSlice<f32>,
        v: CudaSlice<f32>,
    },
    F16 {
        k: CudaSlice<f16>,
        v: CudaSlice<f16>,
    },
}

impl KvCache {
    /// Zeroed caches of `len` elements each.
    pub fn alloc(s: &Arc<CudaStream>, precision: Precision, len: usize) -> Result<Self, CudaError> {
        Ok(match precision {
            Precision::Exact => Self::F32 {
                k: s.alloc_zeros(len)?,
                v: s.alloc_zeros(len)?,
            },
            Precision::Fast => Self::F16 {
                k: s.alloc_zeros(len)?,
                v: s.alloc_zeros(len)?,
            },
        })
    }

    /// Bytes of one element.
    pub fn element_bytes(precision: Precision) -> usize {
        match precision {
            Precision::Exact => 4,
            Precision::Fast => 2,
        }
    }

    /// Elements in each of k and v.
    pub fn len(&self) -> usize {
        match self {
            Self::F32 { k, .. } => k.len(),
            Self::F16 { k, .. } => k.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caches as f32 on the host (tests).
    pub fn to_host(&self, s: &Arc<CudaStream>) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
        Ok(match self {
            Self::F32 { k, v } => (s.clone_dtoh(k)?, s.clone_dtoh(v)?),
            Self::F16 { k, v } => {
                let widen = |x: Vec<f16>| x.into_iter().map(f16::to_f32).collect();
                (widen(s.clone_dtoh(k)?), widen(s.clone_dtoh(v)?))
            }
        })
    }

    /// Caches holding `k` and `v` (rounded to f16 on the fast path; tests).
    pub fn from_host(
        s: &Arc<CudaStream>,
        precision: Precision,
        k: &[f32],
        v: &[f32],
    ) -> Result<Self, CudaError> {
        Ok(match precision {
            Precision::Exact => Self::F32 {
                k: s.clone_htod(k)?,
                v: s.clone_htod(v)?,
            },
            Precision::Fast => {
                let narrow = |x: &[f32]| x.iter().map(|&a| f16::from_f32(a)).collect::<Vec<_>>();
                Self::F16 {
                    k: s.clone_htod(&narrow(k))?,
                    v: s.clone_htod(&narrow(v))?,
                }
            }
        })
    }
}

/// An AWQ layer on the device (see `lhama_model::weights::FusedAwq`).
pub struct GpuAwq {
    pub k: usize,
    pub n: usize,
    pub group: usize,
    /// [K, N/8]
    pub qweight: CudaSlice<u32>,
    /// [K/G, N]
    pub zeros: CudaSlice<f32>,
    /// [K/G, N]
    pub scales: CudaSlice<f32>,
    /// `qweight` in the tensor-core GEMV's fragment order (`fragment_order`),
    /// where its shape fits (`gemv_mma_fits`) and the fast path may use it.
    pub frag: Option<CudaSlice<u32>>,
}

impl GpuAwq {
    /// The layer with its fragment-ordered copy where the shape fits.
    pub fn upload(
        stream: &Arc<CudaStream>,
        f: &lhama_model::weights::FusedAwq,
    ) -> Result<Self, CudaError> {
        Self::upload_for(stream, f, true)
    }

    /// The layer, with the fragment-ordered copy only if `fragments` (the
    /// tensor-core GEMV is on and the precision fast: nothing else reads it).
    pub fn upload_for(
        stream: &Arc<CudaStream>,
        f: &lhama_model::weights::FusedAwq,
        fragments: bool,
    ) -> Result<Self, CudaError> {
        let frag = if fragments && gemv_mma_fits(f.k, f.n, f.group) {
            Some(stream.clone_htod(&fragment_order(&f.qweight, f.k, f.n))?)
        } else {
            None
        };
        Ok(Self {
            k: f.k,
            n: f.n,
            group: f.group,
            qweight: stream.clone_htod(&f.qweight)?,
            zeros: stream.clone_htod(&f.zeros)?,
            scales: stream.clone_htod(&f.scales)?,
            frag,
        })
    }

    /// Floats of split-K partial sums one GEMV launch (up to AWQ_MAX_M rows) needs.
    pub fn partial_len(&self) -> usize {
        self.k.div_ceil(AWQ_ROWS_PER_BLOCK) * AWQ_MAX_M * self.n
    }

    pub fn bytes(&self) -> usize {
        self.qweight.num_bytes()
            + self.zeros.num_bytes()
            + self.scales.num_bytes()
            + self.frag.as_ref().map_or(0, |f| f.num_bytes())
    }
}

/// What every AWQ product needs of its weights and scratch: the shape the
/// kernels take (N % 8, G % 32, K % G), `partial` for a GEMV launch's splits
/// and a counter per 256 columns.
fn check_awq(
    w: &GpuAwq,
    partial: &CudaSlice<f32>,
    counters: &CudaSlice<u32>,
) -> Result<(), CudaError> {
    check(partial.len() >= w.partial_len(), "awq partial buffer")?;
    check(counters.len() >= counters_len(w.n), "awq counters")?;
    check(
        w.n.is_multiple_of(8) && w.group.is_multiple_of(32) && w.k.is_multiple_of(w.group),
        "awq shape",
    )
}

/// Most rows the register-held lm_head takes (LM_HEAD_ROWS in
/// lm_head.cu), and the vocabulary rows each of its warps holds
/// (LM_HEAD_VR; their product is one warp's 32 sums).
pub const LM_HEAD_ROWS: usize = 8;
const LM_HEAD_VR: usize = 4;
/// Vocabulary rows one 8-warp block of it covers.
const LM_HEAD_ROWS_VOCAB_PER_BLOCK: usize = 8 * LM_HEAD_VR;

pub struct Kernels {
    _module: Arc<CudaModule>,
    embedding: CudaFunction,
    /// (256 threads a row, a thread per element for a few rows)
    add_rmsnorm: (CudaFunction, CudaFunction),
    silu_mul: CudaFunction,
    /// GEMV partial-sum kernels for 1, 2, 4 and 8 rows, with their warps per block.
    awq_partial: [(usize, usize, CudaFunction); 4],
    /// The plain GEMV for 1 and 2 rows with its K splits added up in a
    /// thread block cluster (Hopper; awq.cu).
    awq_partial_cluster: [CudaFunction; 2],
    /// The same GEMV taking silu(gate) * up of a gate_up product as its input.
    awq_partial_silu: [(usize, usize, CudaFunction); 4],
    /// The tensor-core GEMV of 1-8 rows (fast path): (x, silu(gate) * up).
    gemv_mma: (CudaFunction, CudaFunction),
    /// The tensor-core AWQ GEMM: exact (x split in two f16 halves), fast (f16 x).
    awq_mma: CudaFunction,
    awq_mma_fast: CudaFunction,
    /// The fast path's AWQ GEMM on fragment-ordered weights (gemm_frag.cu):
    /// 64-row block tiles with a weight ring of 2, 3 and 4 chunks, and
    /// 128-row tiles (a ring of 2).
    gemm_frag: ([CudaFunction; 3], CudaFunction),
    /// Its 64-row form with the K splits added up in a thread block cluster
    /// (Hopper; gemm_frag.cu).
    gemm_frag_cluster: CudaFunction,
    /// The fragment GEMM on the warpgroup tensor cores (gemm_wgmma.cu;
    /// sm_90a), in tiles of WGMMA_TILE_ROWS rows.
    gemm_wgmma: [CudaFunction; 4],
    /// Its wide tile (128 rows x 256 columns, WGMMA_WIDE_SMEM bytes of
    /// dynamic shared memory) for many rows.
    gemm_wgmma_wide: CudaFunction,
    /// Kernels touching the KV cache: (f32 cache, f16 cache).
    rope_kv: (CudaFunction, CudaFunction),
    awq_reduce: CudaFunction,
    attention_combine: CudaFunction,
    /// Fused decode attention, [one chunk a partition, several][f32 cache,
    /// f16 cache][head_dim 32, 64, 128].
    attention_decode: [[[CudaFunction; 3]; 2]; 2],
    attention_prefill: (CudaFunction, CudaFunction),
    /// Prefill attention on the tensor cores (f16 cache), head_dim 32, 64, 128.
    attention_prefill_mma: [CudaFunction; 3],
    lm_head: CudaFunction,
    lm_head_rows: CudaFunction,
    lm_head_mma: CudaFunction,
    sample: CudaFunction,
    apply_masks: CudaFunction,
    /// Launch with programmatic dependent launch (Hopper and newer): each
    /// kernel's start overlaps the previous one's end.
    pub pdl: bool,
    /// AWQ products of at least this many rows use the tensor-core GEMM;
    /// fewer rows use the GEMV kernels.
    pub mma_min_rows: usize,
    /// ... except on the fast path where the layer has fragment-ordered
    /// weights: from this many rows the fragment GEMM (LHAMA_FRAG_MIN_ROWS).
    pub frag_min_rows: usize,
    /// Fast-path products of `gemv_mma_min_rows` to 8 rows use the
    /// tensor-core GEMV where the layer has fragment-ordered weights
    /// (LHAMA_GEMV_MMA=0: the f32 GEMV, for comparisons).
    pub gemv_mma_on: bool,
    /// Fewer rows keep the f32 GEMV (faster at 1 and 2 rows on an H200,
    /// where the tensor-core GEMV's B operand is mostly padding and its
    /// SiLU cannot be fused; docs/BENCHMARKS.md).
    pub gemv_mma_min_rows: usize,
    /// Fast-path products of `mma_min_rows` rows and more use the GEMM on
    /// fragment-ordered weights (gemm_frag.cu) where the layer has them
    /// (LHAMA_GEMM_FRAG=0: the f32-staged tensor-core GEMM, for comparisons).
    pub gemm_frag_on: bool,
    /// From this many rows the fragment GEMM takes 128-row block tiles
    /// (fewer: 64-row tiles).
    pub gemm_frag_tall_rows: usize,
    /// From this many rows the fragment GEMM runs on the warpgroup tensor
    /// cores (wgmma, in the smallest of WGMMA_TILE_ROWS that holds the rows,
    /// else 128-row tiles; sm_90a only, else usize::MAX;
    /// LHAMA_GEMM_WGMMA_MIN_ROWS).
    pub gemm_wgmma_min_rows: usize,
    /// The wgmma GEMM takes its wide tile (256 columns a block) where that
    /// grid has at least this many blocks before any K split
    /// (LHAMA_GEMM_WIDE_MIN_BLOCKS, 0 = never; default 7/10 of the SMs;
    /// usize::MAX where wgmma is off).
    pub gemm_wide_min_blocks: usize,
    /// Chunks of weights in the 64-row fragment GEMM's cp.async ring, 2 to 4
    /// (LHAMA_GEMM_FRAG_STAGES; every count gives the same bits).
    pub gemm_frag_stages: usize,
    /// Where the 64-row fragment GEMM adds its K splits up inside a thread
    /// block cluster instead of in a second kernel or the consumer
    /// (LHAMA_CLUSTER_SPLITS).
    pub cluster_mode: ClusterSplits,
    /// Up to this many rows (at most AWQ_FUSED_MAX_ROWS) the f32 GEMV adds
    /// its K splits up in a cluster instead of its last block, where no
    /// consumer adds them (LHAMA_CLUSTER_GEMV_ROWS; 0 before Hopper).
    pub cluster_gemv_rows: usize,
    /// ... for products of at most this many outputs (LHAMA_CLUSTER_GEMV_MAX_N).
    pub cluster_gemv_max_n: usize,
    /// Steps with prompt tokens on the f16 cache attend on the tensor cores
    /// (attention_mma.cu) where head_dim is 32, 64 or 128
    /// (LHAMA_PREFILL_MMA=0: the f32-accumulating kernel, for comparisons).
    pub prefill_mma_on: bool,
    /// lm_head over at least this many rows uses the tensor-core GEMM.
    pub lm_head_mma_min_rows: usize,
    /// lm_head over fewer rows (at most LM_HEAD_ROWS) holds each warp's
    /// weights in registers (lm_head_rows_f16_f32; LHAMA_LM_HEAD_ROWS=0:
    /// the warp-per-row kernel, for comparisons).
    pub lm_head_rows_on: bool,
    /// Blocks a row of the sampler's argmax (1 to SAMPLE_MAX_SLICES,
    /// LHAMA_SAMPLE_SLICES; 1: one block over the row, no scratch).
    pub sample_slices: usize,
    /// ... as far as the launch has at most this many blocks (at least one
    /// a row; LHAMA_SAMPLE_BLOCKS, default twice the SMs): many rows fill
    /// the GPU already.
    pub sample_blocks: usize,
    /// The tensor-core AWQ GEMM splits K until its grid has this many blocks
    /// (at most one split per group; default twice the SMs).
    pub mma_split_blocks: usize,
    /// `awq_matmul_split` leaves K splits for the consumer to add up
    /// (LHAMA_DEFER_SPLITS=0 reduces them in a launch of their own, for
    /// comparisons).
    pub defer_splits: bool,
    /// Products of up to this many rows defer their splits
    /// (LHAMA_DEFER_MAX_ROWS; default DEFER_MAX_ROWS).
    pub defer_max_rows: usize,
    /// The GEMVs (up to 8 rows) defer theirs too: no block of theirs adds
    /// the splits up (LHAMA_GEMV_DEFER=0: they do, for comparisons).
    pub gemv_defer: bool,
    /// Which tensor-core AWQ GEMM runs (the KV cache's type picks the
    /// attention kernels).
    pub precision: Precision,
    /// Decode attention gives each block as many 64-position chunks of a
    /// sequence's context as keeps at least this many blocks in the grid
    /// (default 4 per SM)
    /// (so long contexts at large batches stream through few blocks, and
    /// small batches still fill the GPU).
    pub attention_min_blocks: usize,
    /// add_rmsnorm gives up to this many rows a thread per element
    /// (`LHAMA_RMSNORM_WIDE_ROWS`, default RMSNORM_WIDE_ROWS).
    pub rmsnorm_wide_rows: usize,
    /// Table entries (names and parameters) by function handle: the
    /// profile's names and every launch's argument check.
    table: std::collections::HashMap<usize, &'static compile::Kernel>,
    /// Kernel-name prefixes never launched (`LHAMA_PROFILE_SKIP`, comma
    /// separated): for measuring what a kernel family costs inside a replayed
    /// step by leaving it out. The outputs are then wrong; timing only.
    skip: Vec<String>,
    /// While profiling: each launch's kernel and the events around it.
    profile: std::sync::Mutex<Option<Vec<(usize, CudaEvent, CudaEvent)>>>,
}

/// One launch's GPU time in a profile.
#[derive(Debug, Clone)]
pub struct KernelTime {
    pub name: &'static str,
    pub micros: f64,
}

/// Rows from which the tensor cores beat looping the GEMV (measured on an
/// H200, docs/BENCHMARKS.md).
pub const DEFAULT_MMA_MIN_ROWS: usize = 9;
/// Rows from which the fast path's products run on the fragment GEMM where
/// the layer has fragment-ordered weights (H200, docs/BENCHMARKS.md round
/// 11: at 2-8 rows faster than the GEMVs on every model shape; at 1 row the
/// f32 GEMV is).
pub const DEFAULT_FRAG_MIN_ROWS: usize = 2;
/// Rows from which the fast path's GEMV runs on the tensor cores.
pub const DEFAULT_GEMV_MMA_MIN_ROWS: usize = 3;
/// Where the K splits (2 to CLUSTER_MAX_SPLITS of them) of the 64-row
/// fragment GEMM are added up in a thread block cluster, through
/// distributed shared memory, rather than written out as partial sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterSplits {
    /// Never (the default, LHAMA_CLUSTER_SPLITS=0; always before Hopper):
    /// on an H200 the cluster form was slower than partial sums and a
    /// second kernel at 16-128 rows (docs/BENCHMARKS.md, round 10).
    Off,
    /// Where the splits would otherwise need awq_reduce_partials (=1);
    /// those left to the consumer stay there.
    Undeferred,
    /// Also instead of leaving them to the consumer (=2).
    Always,
}

/// Rows up to which the f32 GEMV adds its splits up in a cluster by default
/// (H200, docs/BENCHMARKS.md round 10: batch 1 +3%; at 2 rows slower).
pub const DEFAULT_CLUSTER_GEMV_ROWS: usize = 1;

/// Outputs up to which the f32 GEMV adds its splits up in a cluster (H200:
/// qkv's 3,072 4.0 against 4.5 us a product, gate_up's 8,192 7.4 against 6.8).
pub const DEFAULT_CLUSTER_GEMV_MAX_N: usize = 4096;

/// The most K splits one cluster reduction takes (the portable cluster size).
pub(crate) const CLUSTER_MAX_SPLITS: usize = 8;

/// Rows from which the fragment GEMM takes 128-row tiles.
/// (H200, docs/BENCHMARKS.md round 9: from 256 rather than 512, decode at
/// 256 rows +4% and a 256-token prefill +4-5%; from 128 the 192-row steps
/// lost 6.5%.)
pub const DEFAULT_GEMM_FRAG_TALL_ROWS: usize = 256;
/// Rows from which the fragment GEMM runs on wgmma where it can (sm_90a):
/// every row count the fragment GEMM takes, in the smallest tile holding
/// them (docs/BENCHMARKS.md round 12, H100: decode +3-12% at 2-64 rows
/// against wgmma from 128; round 11, H200: from 128 rows +2-6%).
pub const DEFAULT_GEMM_WGMMA_MIN_ROWS: usize = 2;
/// Row tiles of the wgmma GEMM (one kernel each, gemm_wgmma.cu).
pub const WGMMA_TILE_ROWS: [usize; 4] = [16, 32, 64, 128];
/// Dynamic shared memory of the wgmma GEMM's wide tile (WG_WIDE_SMEM):
/// 1,024 bytes of alignment slack, two 16 KB x buffers and a ring of three
/// 10 KB chunks of weights.
pub const WGMMA_WIDE_SMEM: usize = 1024 + 2 * 128 * 128 + 3 * 10240;
/// Columns a block of the wide tile covers.
pub const WGMMA_WIDE_COLS: usize = 256;
/// The wide tile's grid fills at least this share of the SMs (tenths)
/// where it is taken: below, each SM's one block runs alone and the 128-row
/// tile's twice as many blocks win (docs/BENCHMARKS.md round 14, H100: the
/// wide tile lost at 64 blocks, 0.48 of the SMs, and won at 96 and more).
pub const GEMM_WIDE_MIN_SM_TENTHS: usize = 7;
/// Chunks of weights in flight in the 64-row fragment GEMM's ring.
pub const DEFAULT_GEMM_FRAG_STAGES: usize = 4;
/// Columns of one fragment-GEMM block (gemm_frag.cu), its k chunk, and the
/// least k a split of it takes.
pub(crate) const GEMM_FRAG_COLS: usize = 128;
pub(crate) const GEMM_FRAG_BK: usize = 64;
const GEMM_FRAG_MIN_SPLIT_K: usize = 128;

/// Tile of the tensor-core GEMM (MMA_BM, MMA_BN in gemm_mma.cu) and its k step.
pub(crate) const MMA_TILE: usize = 64;
pub(crate) const MMA_BK: usize = 32;

/// A grid of `blocks` blocks of `threads` threads, both along x.
/// The most rows add_rmsnorm gives a thread per element by default (the
/// products' deferred splits reach it up to 128 rows);
/// `LHAMA_RMSNORM_WIDE_ROWS=0` gives every row 256 threads, as before.
pub const RMSNORM_WIDE_ROWS: usize = 128;

fn cfg_1d(blocks: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn grid(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).max(1) as u32
}

fn check(ok: bool, what: &str) -> Result<(), CudaError> {
    if ok {
        Ok(())
    } else {
        Err(CudaError::Driver(format!("kernel launch refused: {what}")))
    }
}

fn i32_of(v: usize) -> i32 {
    i32::try_from(v).expect("sizes are validated far below i32::MAX at load")
}

/// Threads of a sampling block (SAMPLE_THREADS in sampling.cu).
pub(crate) const SAMPLE_THREADS: u32 = 512;
/// 32-bit words of one row's sampling parameters (SampleParams in sampling.cu).
pub const SAMPLE_PARAM_WORDS: usize = 6;

/// A row's SampleParams as the kernel reads them.
pub fn sample_params(s: &lhama_model::RowSampling) -> [u32; SAMPLE_PARAM_WORDS] {
    use lhama_model::RowSampling;
    match s {
        RowSampling::Logits => [0; SAMPLE_PARAM_WORDS],
        RowSampling::Greedy => [1, 0, 0, 0, 0, 0],
        RowSampling::Draw(p) => [
            2,
            p.temperature.to_bits(),
            p.top_k,
            p.top_p.to_bits(),
            p.min_p.to_bits(),
            p.u.to_bits(),
        ],
    }
}

/// Most blocks a row of the sampler's argmax.
pub const SAMPLE_MAX_SLICES: usize = 32;
/// Blocks a row of the sampler's argmax by default (docs/BENCHMARKS.md
/// round 15).
pub const DEFAULT_SAMPLE_SLICES: usize = 16;

/// The sampler's scratch for up to `rows` rows: each argmax slice's best
/// value and id, a row's counter of finished slices (zero between
/// launches).
pub struct SampleScratch {
    values: CudaSlice<f32>,
    ids: CudaSlice<u32>,
    counters: CudaSlice<u32>,
}

impl SampleScratch {
    pub fn alloc(s: &Arc<CudaStream>, rows: usize) -> Result<Self, CudaError> {
        Ok(Self {
            values: s.alloc_zeros(rows * SAMPLE_MAX_SLICES)?,
            ids: s.alloc_zeros(rows * SAMPLE_MAX_SLICES)?,
            counters: s.alloc_zeros(rows)?,
        })
    }

    pub fn rows(&self) -> usize {
        self.counters.len()
    }

    /// Bytes of the scratch for `rows` rows.
    pub fn bytes(rows: usize) -> usize {
        rows * (2 * SAMPLE_MAX_SLICES + 1) * 4
    }
}

/// Decode attention's default block target: 4 blocks per SM (about one
/// wave at the kernel's occupancy), the best of 2 to 32 per SM on an H200
/// (docs/BENCHMARKS.md): fewer, longer blocks stream the context faster.
fn sm_count_blocks(sm_count: i32) -> usize {
    usize::try_from(sm_count).unwrap_or(1).max(1) * 4
}

/// `LHAMA_PROFILE_SKIP`'s kernel-name prefixes (none when unset), said
/// loudly: every result computed with them is wrong.
fn profile_skip() -> Vec<String> {
    let skip: Vec<String> = std::env::var("LHAMA_PROFILE_SKIP")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    if !skip.is_empty() {
        eprintln!(
            "warning: LHAMA_PROFILE_SKIP={skip:?}: kernels named so are not launched; \
             outputs are wrong (for timing only)"
        );
    }
    skip
}

/// A row-count threshold from the environment (for tuning runs), if set.
pub(crate) fn env_rows(var: &str) -> Result<Option<usize>, CudaError> {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| CudaError::Unsupported(format!("{var}={v:?} is not a row count"))),
        Err(_) => Ok(None),
    }
}

const MAX_ARGS: usize = 24;

/// Kernel arguments as cuLaunchKernelEx takes them: each value's bytes at
/// the start of its own 8-byte slot (the driver copies the parameter's size).
struct Args<'s> {
    s: &'s CudaStream,
    vals: [u64; MAX_ARGS],
    /// What each value is, for the check against the kernel table.
    kinds: [ArgKind; MAX_ARGS],
    n: usize,
}

/// How a tensor-core GEMM launch splits K: into `splits` of `k_per_split`,
/// left in the scratch for the consumer when `defer`.
#[derive(Clone, Copy)]
struct SplitGemm {
    splits: usize,
    k_per_split: usize,
    defer: bool,
    /// The splits are one thread block cluster (1, 1, splits) that adds
    /// them up and writes y itself (gemm_frag.cu's cluster form).
    cluster: bool,
}

/// An argument as the launch passes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ArgKind {
    Pointer,
    Int,
    Float,
}

impl ArgKind {
    /// The kind a parameter of this C type (compile::KERNELS) takes.
    fn of(c_type: &str) -> Self {
        match c_type {
            "int" => Self::Int,
            "float" => Self::Float,
            _ => Self::Pointer,
        }
    }
}

/// Whether `args` are what the table says `kernel` takes: as many, each a
/// pointer, an int or a float where its parameter is.
fn check_args(kernel: &compile::Kernel, kinds: &[ArgKind]) -> Result<(), CudaError> {
    let want = kernel.params.iter().map(|t| ArgKind::of(t));
    if kinds.len() != kernel.params.len() || !want.eq(kinds.iter().copied()) {
        return Err(CudaError::Driver(format!(
            "kernel {}: launched with {kinds:?}, its table entry takes {:?}",
            kernel.name, kernel.params
        )));
    }
    Ok(())
}

impl<'s> Args<'s> {
    fn new(s: &'s CudaStream) -> Self {
        Self {
            s,
            vals: [0; MAX_ARGS],
            kinds: [ArgKind::Int; MAX_ARGS],
            n: 0,
        }
    }
    fn push(&mut self, v: u64, kind: ArgKind) -> &mut Self {
        assert!(self.n < MAX_ARGS, "more kernel arguments than MAX_ARGS");
        self.vals[self.n] = v;
        self.kinds[self.n] = kind;
        self.n += 1;
        self
    }
    fn buf<T>(&mut self, p: &impl DevicePtr<T>) -> &mut Self {
        let (ptr, _sync) = p.device_ptr(self.s);
        self.push(ptr, ArgKind::Pointer)
    }
    fn buf_mut<T>(&mut self, p: &mut impl DevicePtrMut<T>) -> &mut Self {
        let (ptr, _sync) = p.device_ptr_mut(self.s);
        self.push(ptr, ArgKind::Pointer)
    }
    /// The K and V caches, in that order.
    fn kv(&mut self, cache: &mut KvCache) -> &mut Self {
        match cache {
            KvCache::F32 { k, v } => self.buf_mut(k).buf_mut(v),
            KvCache::F16 { k, v } => self.buf_mut(k).buf_mut(v),
        }
    }
    fn null(&mut self) -> &mut Self {
        self.push(0, ArgKind::Pointer)
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.push(u64::from(v as u32), ArgKind::Int)
    }
    fn f32(&mut self, v: f32) -> &mut Self {
        self.push(u64::from(v.to_bits()), ArgKind::Float)
    }
}

impl Kernels {
    /// Compiles (NVRTC) and loads every kernel for the context's device.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self, CudaError> {
        let (major, minor) = ctx.compute_capability()?;
        let arch = compile::arch_for(major, minor).ok_or(CudaError::TooOld {
            name: ctx.name()?,
            major,
            minor,
        })?;
        let ptx = compile::compile(arch)?;
        let module = ctx.load_module(ptx)?;
        let sm_count = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?;
        let f = |name: &str| module.load_function(name);
        let table = compile::KERNELS
            .iter()
            .map(|k| Ok((f(k.name)?.cu_function() as usize, k)))
            .collect::<Result<_, cudarc::driver::DriverError>>()?;
        // The decode attention kernels of one form and cache type, by head size.
        let decode = |form: &str, kv: &str| -> Result<[CudaFunction; 3], _> {
            Ok::<_, cudarc::driver::DriverError>([
                f(&format!("paged_attention_{form}_{kv}_d32"))?,
                f(&format!("paged_attention_{form}_{kv}_d64"))?,
                f(&format!("paged_attention_{form}_{kv}_d128"))?,
            ])
        };
        Ok(Self {
            embedding: f("embedding_gather_f16_f32")?,
            add_rmsnorm: (f("add_rmsnorm_f32")?, f("add_rmsnorm_wide_f32")?),
            silu_mul: f("silu_mul_f32")?,
            awq_partial: [
                (1, 16, f("awq_gemv_partial_m1_f32")?),
                (2, 16, f("awq_gemv_partial_m2_f32")?),
                (4, 8, f("awq_gemv_partial_m4_f32")?),
                (8, 4, f("awq_gemv_partial_m8_f32")?),
            ],
            awq_partial_cluster: [f("awq_gemv_cluster_m1_f32")?, f("awq_gemv_cluster_m2_f32")?],
            awq_partial_silu: [
                (1, 16, f("awq_gemv_silu_m1_f32")?),
                (2, 16, f("awq_gemv_silu_m2_f32")?),
                (4, 8, f("awq_gemv_silu_m4_f32")?),
                (8, 4, f("awq_gemv_silu_m8_f32")?),
            ],
            gemv_mma: (f("awq_gemv_mma_f16x")?, f("awq_gemv_mma_silu_f16x")?),
            awq_mma: f("awq_gemm_mma_f32")?,
            awq_mma_fast: f("awq_gemm_mma_f16x")?,
            gemm_frag: (
                [
                    f("awq_gemm_frag64_s2_f16x")?,
                    f("awq_gemm_frag64_s3_f16x")?,
                    f("awq_gemm_frag64_s4_f16x")?,
                ],
                f("awq_gemm_frag128_s2_f16x")?,
            ),
            gemm_frag_cluster: f("awq_gemm_frag64_cluster_f16x")?,
            gemm_wgmma: [
                f("awq_gemm_wgmma16_f16x")?,
                f("awq_gemm_wgmma32_f16x")?,
                f("awq_gemm_wgmma64_f16x")?,
                f("awq_gemm_wgmma128_f16x")?,
            ],
            gemm_wgmma_wide: {
                let w = f("awq_gemm_wgmma_wide_f16x")?;
                if arch == "compute_90a" {
                    w.set_attribute(
                        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        WGMMA_WIDE_SMEM as i32,
                    )?;
                }
                w
            },
            rope_kv: (f("rope_kv_write_f32")?, f("rope_kv_write_f16kv")?),
            awq_reduce: f("awq_reduce_partials_f32")?,
            attention_combine: f("paged_attention_combine_f32")?,
            attention_decode: [
                [decode("decode1", "f32")?, decode("decode1", "f16kv")?],
                [decode("decode", "f32")?, decode("decode", "f16kv")?],
            ],
            attention_prefill: (
                f("paged_attention_prefill_f32")?,
                f("paged_attention_prefill_f16kv")?,
            ),
            attention_prefill_mma: [
                f("paged_attention_prefill_mma_f16kv_d32")?,
                f("paged_attention_prefill_mma_f16kv_d64")?,
                f("paged_attention_prefill_mma_f16kv_d128")?,
            ],
            lm_head: f("lm_head_f16_f32")?,
            lm_head_rows: f("lm_head_rows_f16_f32")?,
            lm_head_mma: f("lm_head_mma_f16_f32")?,
            sample: f("sample_rows_f32")?,
            apply_masks: f("apply_token_masks")?,
            _module: module,
            pdl: major >= 9 && std::env::var("LHAMA_CUDA_PDL").map_or(true, |v| v != "0"),
            mma_min_rows: env_rows("LHAMA_MMA_MIN_ROWS")?.unwrap_or(DEFAULT_MMA_MIN_ROWS),
            frag_min_rows: env_rows("LHAMA_FRAG_MIN_ROWS")?.unwrap_or(DEFAULT_FRAG_MIN_ROWS),
            gemv_mma_on: std::env::var("LHAMA_GEMV_MMA").map_or(true, |v| v != "0"),
            gemv_mma_min_rows: env_rows("LHAMA_GEMV_MMA_MIN_ROWS")?
                .unwrap_or(DEFAULT_GEMV_MMA_MIN_ROWS),
            gemm_frag_on: std::env::var("LHAMA_GEMM_FRAG").map_or(true, |v| v != "0"),
            prefill_mma_on: std::env::var("LHAMA_PREFILL_MMA").map_or(true, |v| v != "0"),
            gemm_frag_tall_rows: env_rows("LHAMA_GEMM_FRAG_TALL_ROWS")?
                .unwrap_or(DEFAULT_GEMM_FRAG_TALL_ROWS),
            // wgmma exists on sm_90a alone (the PTX of other GPUs traps).
            gemm_wgmma_min_rows: match env_rows("LHAMA_GEMM_WGMMA_MIN_ROWS")? {
                _ if arch != "compute_90a" => usize::MAX,
                None => DEFAULT_GEMM_WGMMA_MIN_ROWS,
                Some(0) => usize::MAX,
                Some(n) => n,
            },
            gemm_wide_min_blocks: match env_rows("LHAMA_GEMM_WIDE_MIN_BLOCKS")? {
                _ if arch != "compute_90a" => usize::MAX,
                None => (usize::try_from(sm_count).unwrap_or(1) * GEMM_WIDE_MIN_SM_TENTHS)
                    .div_ceil(10)
                    .max(1),
                Some(0) => usize::MAX,
                Some(n) => n,
            },
            gemm_frag_stages: match env_rows("LHAMA_GEMM_FRAG_STAGES")? {
                None => DEFAULT_GEMM_FRAG_STAGES,
                Some(n @ 2..=4) => n,
                Some(n) => {
                    return Err(CudaError::Unsupported(format!(
                        "LHAMA_GEMM_FRAG_STAGES={n}: the fragment GEMM's ring takes 2, 3 or 4 chunks"
                    )));
                }
            },
            cluster_mode: match std::env::var("LHAMA_CLUSTER_SPLITS").as_deref() {
                _ if major < 9 => ClusterSplits::Off,
                Err(_) | Ok("0") => ClusterSplits::Off,
                Ok("1") => ClusterSplits::Undeferred,
                Ok("2") => ClusterSplits::Always,
                Ok(v) => {
                    return Err(CudaError::Unsupported(format!(
                        "LHAMA_CLUSTER_SPLITS={v}: 0 (off), 1 (where no consumer adds the splits) or 2 (always)"
                    )));
                }
            },
            cluster_gemv_rows: match env_rows("LHAMA_CLUSTER_GEMV_ROWS")? {
                _ if major < 9 => 0,
                None => DEFAULT_CLUSTER_GEMV_ROWS,
                Some(n @ 0..=AWQ_FUSED_MAX_ROWS) => n,
                Some(n) => {
                    return Err(CudaError::Unsupported(format!(
                        "LHAMA_CLUSTER_GEMV_ROWS={n}: the cluster GEMV takes 0 to {AWQ_FUSED_MAX_ROWS} rows"
                    )));
                }
            },
            cluster_gemv_max_n: env_rows("LHAMA_CLUSTER_GEMV_MAX_N")?
                .unwrap_or(DEFAULT_CLUSTER_GEMV_MAX_N),
            lm_head_mma_min_rows: env_rows("LHAMA_LM_HEAD_MMA_MIN_ROWS")?
                .unwrap_or(DEFAULT_MMA_MIN_ROWS),
            lm_head_rows_on: std::env::var("LHAMA_LM_HEAD_ROWS").map_or(true, |v| v != "0"),
            sample_slices: match env_rows("LHAMA_SAMPLE_SLICES")? {
                None => DEFAULT_SAMPLE_SLICES,
                Some(n @ 1..=SAMPLE_MAX_SLICES) => n,
                Some(n) => {
                    return Err(CudaError::Unsupported(format!(
                        "LHAMA_SAMPLE_SLICES={n}: the sampler's argmax takes 1 to {SAMPLE_MAX_SLICES} blocks a row"
                    )));
                }
            },
            // Kernel-level tests compare with the f32 reference; the backend
            // sets this from its options (fast by default).
            precision: Precision::Exact,
            sample_blocks: env_rows("LHAMA_SAMPLE_BLOCKS")?
                .unwrap_or(2 * usize::try_from(sm_count).unwrap_or(1).max(1)),
            mma_split_blocks: env_rows("LHAMA_MMA_SPLIT_BLOCKS")?
                .unwrap_or(2 * usize::try_from(sm_count).unwrap_or(1).max(1)),
            defer_splits: std::env::var("LHAMA_DEFER_SPLITS").map_or(true, |v| v != "0"),
            defer_max_rows: env_rows("LHAMA_DEFER_MAX_ROWS")?.unwrap_or(DEFER_MAX_ROWS),
            gemv_defer: std::env::var("LHAMA_GEMV_DEFER").map_or(true, |v| v != "0"),
            rmsnorm_wide_rows: env_rows("LHAMA_RMSNORM_WIDE_ROWS")?.unwrap_or(RMSNORM_WIDE_ROWS),
            attention_min_blocks: env_rows("LHAMA_ATTN_MIN_BLOCKS")?
                .unwrap_or(sm_count_blocks(sm_count)),
            table,
            skip: profile_skip(),
            profile: std::sync::Mutex::new(None),
        })
    }

    /// Starts (or stops) timing every launch with a pair of CUDA events.
    /// Launches are then serialized by the events (no programmatic
    /// overlap), and graphs must not be captured meanwhile.
    pub fn set_profiling(&self, on: bool) {
        if let Ok(mut p) = self.profile.lock() {
            *p = on.then(Vec::new);
        }
    }

    pub fn profiling(&self) -> bool {
        self.profile.lock().is_ok_and(|p| p.is_some())
    }

    /// The launches timed since the last call, in launch order (waits for
    /// them to finish).
    pub fn take_profile(&self) -> Result<Vec<KernelTime>, CudaError> {
        let launches = match self.profile.lock() {
            Ok(mut p) => p.as_mut().map(std::mem::take).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        launches
            .into_iter()
            .map(|(f, start, end)| {
                end.synchronize()?;
                Ok(KernelTime {
                    name: self.table.get(&f).map_or("?", |k| k.name),
                    micros: f64::from(start.elapsed_ms(&end)?) * 1e3,
                })
            })
            .collect()
    }

    fn launch(
        &self,
        s: &CudaStream,
        f: &CudaFunction,
        cfg: LaunchConfig,
        args: &mut Args<'_>,
    ) -> Result<(), CudaError> {
        self.launch_timed(s, f, cfg, args, None)
    }

    /// Launches (`launch_raw`), between two CUDA events while profiling.
    fn launch_timed(
        &self,
        s: &CudaStream,
        f: &CudaFunction,
        cfg: LaunchConfig,
        args: &mut Args<'_>,
        cluster: Option<(u32, u32, u32)>,
    ) -> Result<(), CudaError> {
        let timed = match self.profile.lock() {
            Ok(p) if p.is_some() => {
                let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
                Some((s.record_event(flags)?, flags))
            }
            _ => None,
        };
        self.launch_raw(s, f, cfg, args, cluster)?;
        if let Some((start, flags)) = timed {
            let end = s.record_event(flags)?;
            if let Ok(mut p) = self.profile.lock()
                && let Some(v) = p.as_mut()
            {
                v.push((f.cu_function() as usize, start, end));
            }
        }
        Ok(())
    }

    /// `launch` with the grid in thread block clusters of `cluster` blocks.
    fn launch_cluster(
        &self,
        s: &CudaStream,
        f: &CudaFunction,
        cfg: LaunchConfig,
        args: &mut Args<'_>,
        cluster: (u32, u32, u32),
    ) -> Result<(), CudaError> {
        self.launch_timed(s, f, cfg, args, Some(cluster))
    }

    fn launch_raw(
        &self,
        s: &CudaStream,
        f: &CudaFunction,
        cfg: LaunchConfig,
        args: &mut Args<'_>,
        cluster: Option<(u32, u32, u32)>,
    ) -> Result<(), CudaError> {
        use cudarc::driver::sys;
        let kernel = self
            .table
            .get(&(f.cu_function() as usize))
            .ok_or_else(|| CudaError::Driver("launch of a kernel not in the table".into()))?;
        check_args(kernel, &args.kinds[..args.n])?;
        if self
            .skip
            .iter()
            .any(|p| kernel.name.starts_with(p.as_str()))
        {
            return Ok(());
        }
        let mut params = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        for (p, v) in params.iter_mut().zip(args.vals.iter_mut()).take(args.n) {
            *p = (v as *mut u64).cast::<c_void>();
        }
        // SAFETY: a zeroed launch-attribute value is a valid (empty) union.
        let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
        value.programmaticStreamSerializationAllowed = 1;
        let mut attrs = [sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        }; 2];
        let mut n_attrs = usize::from(self.pdl);
        if let Some((x, y, z)) = cluster {
            // SAFETY: as above.
            let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
            value.clusterDim.x = x;
            value.clusterDim.y = y;
            value.clusterDim.z = z;
            attrs[n_attrs] = sys::CUlaunchAttribute {
                id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION,
                pad: [0; 4],
                value,
            };
            n_attrs += 1;
        }
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: s.cu_stream(),
            attrs: if n_attrs > 0 {
                attrs.as_mut_ptr()
            } else {
                std::ptr::null_mut()
            },
            numAttrs: n_attrs as u32,
        };
        s.context().bind_to_thread()?;
        // SAFETY: the caller passes exactly the kernel's parameters, in order,
        // each checked against the sizes the kernel relies on; `params` points
        // into `args`, which outlives the call (the driver copies them).
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()?;
        Ok(())
    }

    /// x[T, hidden] = table[tokens[t]].
    pub fn embedding(
        &self,
        s: &CudaStream,
        table: &CudaSlice<f16>,
        tokens: &CudaView<'_, u32>,
        x: &mut CudaViewMut<'_, f32>,
        hidden: usize,
    ) -> Result<(), CudaError> {
        let t = tokens.len();
        check(
            x.len() >= t * hidden && table.len().is_multiple_of(hidden),
            "embedding sizes",
        )?;
        let cfg = cfg_1d(t as u32, 256);
        // table holds vocab * hidden f16, tokens < vocab (validated with the
        // batch), x holds t * hidden f32 (checked above).
        self.launch(
            s,
            &self.embedding,
            cfg,
            Args::new(s)
                .buf(table)
                .buf(tokens)
                .buf_mut(x)
                .i32(i32_of(hidden)),
        )
    }

    /// x += delta (when given); out = rmsnorm(x) * weight, for `rows` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rmsnorm(
        &self,
        s: &CudaStream,
        x: &mut CudaViewMut<'_, f32>,
        delta: Option<(&CudaView<'_, f32>, usize)>,
        weight: &CudaSlice<f32>,
        out: &mut CudaViewMut<'_, f32>,
        rows: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let hidden = weight.len();
        check(
            x.len() >= rows * hidden && out.len() >= rows * hidden,
            "rmsnorm sizes",
        )?;
        check(
            delta.is_none_or(|(d, splits)| splits >= 1 && d.len() >= splits * rows * hidden),
            "rmsnorm delta size",
        )?;
        // Up to `rmsnorm_wide_rows` rows, a thread per element (a warp
        // multiple, at most 1024), so that a row's loads (its delta splits
        // included) are in flight at once; more rows, 256 threads each.
        let (f, cfg) = if rows <= self.rmsnorm_wide_rows {
            let threads = hidden.div_ceil(32).clamp(1, 32) as u32 * 32;
            (&self.add_rmsnorm.1, cfg_1d(rows as u32, threads))
        } else {
            (&self.add_rmsnorm.0, cfg_1d(rows as u32, 256))
        };
        let mut a = Args::new(s);
        a.buf_mut(x);
        match delta {
            Some((d, splits)) => a.buf(d).i32(i32_of(splits)),
            None => a.null().i32(1),
        };
        // x and out hold rows * hidden f32, delta splits * rows * hidden and
        // weight hidden f32 (checked above); a null delta is allowed by the
        // kernel.
        a.buf(weight).buf_mut(out).i32(i32_of(hidden)).f32(eps);
        self.launch(s, f, cfg, &mut a)
    }

    /// out[T, inter] = silu(gate) * up from gate_up[T, 2 * inter], or from
    /// the sum (in order) of `splits` such partial products
    /// (`awq_matmul_split`).
    pub fn silu_mul(
        &self,
        s: &CudaStream,
        gate_up: &CudaView<'_, f32>,
        splits: usize,
        out: &mut CudaViewMut<'_, f32>,
        tokens: usize,
        inter: usize,
    ) -> Result<(), CudaError> {
        check(
            splits >= 1
                && gate_up.len() >= splits * tokens * 2 * inter
                && out.len() >= tokens * inter,
            "silu sizes",
        )?;
        let cfg = cfg_1d(grid(tokens * inter, 256), 256);
        self.launch(
            s,
            &self.silu_mul,
            cfg,
            Args::new(s)
                .buf(gate_up)
                .i32(i32_of(splits))
                .buf_mut(out)
                .i32(i32_of(tokens))
                .i32(i32_of(inter)),
        )
    }

    /// y[M, N] = x[M, K] · W. Fewer than `gemm_min_rows` rows go through the
    /// GEMV kernels (chunks of up to 8 rows, each in the smallest variant that
    /// takes it), more through the tensor-core GEMM. `partial` holds at least `w.partial_len()` floats and
    /// `counters` (zero) at least `counters_len(N)` entries.
    #[allow(clippy::too_many_arguments)]
    pub fn awq_matmul(
        &self,
        s: &CudaStream,
        x: &CudaView<'_, f32>,
        m: usize,
        w: &GpuAwq,
        partial: &mut CudaSlice<f32>,
        counters: &mut CudaSlice<u32>,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), CudaError> {
        self.awq_matmul_impl(s, x, m, w, partial, counters, y, false)
            .map(|_| ())
    }

    /// `awq_matmul`, except that a product of up to `DEFER_MAX_ROWS` rows
    /// split over K (the tensor-core GEMM's, and the GEMVs' of one launch)
    /// leaves its splits in `partial` as [splits, M, N] for the next kernel
    /// to add up (add_rmsnorm's delta, silu_mul), saving the reduction's
    /// launch or the GEMV's last-block reduction.
    /// Returns the number of splits there; 1: the product is in `y`.
    #[allow(clippy::too_many_arguments)]
    pub fn awq_matmul_split(
        &self,
        s: &CudaStream,
        x: &CudaView<'_, f32>,
        m: usize,
        w: &GpuAwq,
        partial: &mut CudaSlice<f32>,
        counters: &mut CudaSlice<u32>,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<usize, CudaError> {
        self.awq_matmul_impl(s, x, m, w, partial, counters, y, self.defers(m))
    }

    /// Whether the tensor-core products of `w` run on its fragment-ordered
    /// weights (gemm_frag.cu, gemm_wgmma.cu).
    fn frag_gemm(&self, w: &GpuAwq) -> bool {
        w.frag.is_some()
            && self.precision == Precision::Fast
            && self.gemm_frag_on
            && gemv_mma_fits(w.k, w.n, w.group)
    }

    /// Rows from which products of `w` run on the tensor-core GEMM rather
    /// than the GEMV kernels: `frag_min_rows` where the fragment GEMM takes
    /// them, else `mma_min_rows` (at least 1).
    pub fn gemm_min_rows(&self, w: &GpuAwq) -> usize {
        let rows = if self.frag_gemm(w) {
            self.frag_min_rows
        } else {
            self.mma_min_rows
        };
        rows.max(1)
    }

    /// Whether an M-row product may leave its splits to its consumer.
    fn defers(&self, m: usize) -> bool {
        self.defer_splits && m <= self.defer_max_rows
    }

    /// `awq_matmul_split` where `defer` allows it (`defers`), else
    /// `awq_matmul`; returns the splits left in `partial` (1: in `y`).
    #[allow(clippy::too_many_arguments)]
    pub fn awq_matmul_split_if(
        &self,
        s: &CudaStream,
        x: &CudaView<'_, f32>,
        m: usize,
        w: &GpuAwq,
        partial: &mut CudaSlice<f32>,
        counters: &mut CudaSlice<u32>,
        y: &mut CudaViewMut<'_, f32>,
        defer: bool,
    ) -> Result<usize, CudaError> {
        let defer = defer && self.defers(m);
        self.awq_matmul_impl(s, x, m, w, partial, counters, y, defer)
    }

    #[allow(clippy::too_many_arguments)]
    fn awq_matmul_impl(
        &self,
        s: &CudaStream,
        x: &CudaView<'_, f32>,
        m: usize,
        w: &GpuAwq,
        partial: &mut CudaSlice<f32>,
        counters: &mut CudaSlice<u32>,
        y: &mut CudaViewMut<'_, f32>,
        defer: bool,
    ) -> Result<usize, CudaError> {
        check(x.len() >= m * w.k && y.len() >= m * w.n, "awq x/y sizes")?;
        check_awq(w, partial, counters)?;
        if m >= self.gemm_min_rows(w) {
            return self.awq_mma(s, x, m, w, partial, y, defer);
        }
        self.awq_gemv(s, x, m, w, partial, counters, y, false, defer)
    }

    /// The down projection of silu(gate) * up for fewer than `gemm_min_rows`
    /// rows, `gate_up` [M, 2K] (K = w.k): the GEMV computes its input as it
    /// reads it, saving silu_mul's launch; bit for bit what silu_mul then
    /// `awq_matmul` give.
    #[allow(clippy::too_many_arguments)]
    pub fn awq_matmul_silu(
        &self,
        s: &CudaStream,
        gate_up: &CudaView<'_, f32>,
        m: usize,
        w: &GpuAwq,
        partial: &mut CudaSlice<f32>,
        counters: &mut CudaSlice<u32>,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), CudaError> {
        self.awq_matmul_silu_impl(s, gate_up, m, w, partial, counters, y, false)
            .map(|_| ())
    }

    /// `awq_matmul_silu`, except that its splits stay in `partial` as
    /// [splits, M, N] for the next kernel to add up (add_rmsnorm's delta),
    /// as `awq_matmul_split` leaves them. Returns the number of splits
    /// there; 1: the product is in `y`.
    #[allow(clippy::too_many_arguments)]
    pub fn awq_matmul_silu_split(
        &self,
        s: &CudaStream,
        gate_up: &CudaView<'_, f32>,
        m: usize,
        w: &GpuAwq,
        partial: &mut CudaSlice<f32>,
        counters: &mut CudaSlice<u32>,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<usize, CudaError> {
        self.awq_matmul_silu_impl(s, gate_up, m, w, partial, counters, y, self.defers(m))
    }

    #[allow(clippy::too_many_arguments)]
    fn awq_matmul_silu_impl(
        &self,
        s: &CudaStream,
        gate_up: &CudaView<'_, f32>,
        m: usize,
        w: &GpuAwq,
        partial: &mut CudaSlice<f32>,
        counters: &mut CudaSlice<u32>,
        y: &mut CudaViewMut<'_, f32>,
        defer: bool,
    ) -> Result<usize, CudaError> {
        check(
            gate_up.len() >= m * 2 * w.k && y.len() >= m * w.n,
            "awq silu x/y sizes",
        )?;
        check_awq(w, partial, counters)?;
        check(m < self.gemm_min_rows(w), "awq silu: GEMV rows only")?;
        self.awq_gemv(s, gate_up, m, w, partial, counters, y, true, defer)
    }

    /// The GEMV path of the AWQ product (sizes checked by the callers); with
    /// `silu`, x is [M, 2K] gate_up and the input silu(gate) * up. With
    /// `defer` (and `gemv_defer`, and one launch: at most 8 rows) the splits
    /// stay in `partial` as [splits, M, N] for the consumer. Returns the
    /// number of splits there; 1: the product is in `y`.
    #[allow(clippy::too_many_arguments)]
    fn awq_gemv(
        &self,
        s: &CudaStream,
        x: &CudaView<'_, f32>,
        m: usize,
        w: &GpuAwq,
        partial: &mut CudaSlice<f32>,
        counters: &mut CudaSlice<u32>,
        y: &mut CudaViewMut<'_, f32>,
        silu: bool,
        defer: bool,
    ) -> Result<usize, CudaError> {
        // Deferred only where there is more than one split to add up (one
        // split: its block writes y itself).
        let defer = defer && self.gemv_defer && m <= AWQ_MAX_M;
        let x_row = if silu { 2 * w.k } else { w.k };
        if let Some(frag) = w.frag.as_ref().filter(|_| {
            self.precision == Precision::Fast
                && self.gemv_mma_on
                && m >= self.gemv_mma_min_rows
                && gemv_mma_fits(w.k, w.n, w.group)
        }) {
            let splits = w.k / GEMV_MMA_K;
            let defer = defer && splits > 1;
            self.awq_gemv_mma(s, x, x_row, m, w, frag, partial, counters, y, silu, defer)?;
            return Ok(if defer { splits } else { 1 });
        }
        let variants = if silu {
            &self.awq_partial_silu
        } else {
            &self.awq_partial
        };
        let splits = w.k.div_ceil(AWQ_ROWS_PER_BLOCK);
        let cluster = self.gemv_cluster(m, w.k, w.n, silu, defer);
        let defer = defer && splits > 1 && !cluster;
        let (k, n, g) = (i32_of(w.k), i32_of(w.n), i32_of(w.group));
        for (row, rows) in row_chunks(m) {
            // Chunks of 8 rows; the rest in one launch of the smallest
            // variant (1, 2, 4 or 8 rows) that takes it, with rows to spare
            // (3 rows in the 4-row kernel: one launch instead of 2 + 1).
            let (warps, mut func) = variants
                .iter()
                .find(|(v, _, _)| *v >= rows)
                .map(|(_, w, f)| (*w, f))
                .expect("the 8-row variant takes any chunk");
            // The cluster form (1-2 rows: one chunk) has its variant's
            // warps; the K splits of a column tile are one cluster, which
            // writes ys itself (partial and counters unused).
            if cluster {
                func = &self.awq_partial_cluster[rows - 1];
            }
            let xs = x.slice(row * x_row..(row + rows) * x_row);
            let mut ys = y.slice_mut(row * w.n..(row + rows) * w.n);
            let fused = i32::from(cluster || (!defer && rows <= AWQ_FUSED_MAX_ROWS));
            let cfg = LaunchConfig {
                grid_dim: (grid(w.n / 8, 32), splits as u32, 1),
                block_dim: (32, warps as u32, 1),
                shared_mem_bytes: 0,
            };
            // xs holds rows * K (rows * 2K with silu), qweight K * N/8, zeros/scales K/G * N,
            // partial splits * rows * N, ys rows * N, counters one per 256
            // columns, all zero (checked above; each fused launch re-arms them).
            self.launch_timed(
                s,
                func,
                cfg,
                Args::new(s)
                    .buf(&xs)
                    .buf(&w.qweight)
                    .buf(&w.zeros)
                    .buf(&w.scales)
                    .buf_mut(partial)
                    .buf_mut(&mut ys)
                    .buf_mut(counters)
                    .i32(k)
                    .i32(n)
                    .i32(g)
                    .i32(fused)
                    .i32(i32_of(rows)),
                cluster.then_some((1, splits as u32, 1)),
            )?;
            if fused == 0 && !defer {
                self.reduce_partials(s, partial, &mut ys, splits, rows, w.n)?;
            }
        }
        Ok(if defer { splits } else { 1 })
    }

    /// The tensor-core GEMV (gemv_mma.cu) in chunks of up to 8 rows; each
    /// launch adds its K splits up itself (sizes checked by the callers,
    /// the shape by `gemv_mma_fits`).
    #[allow(clippy::too_many_arguments)]
    fn awq_gemv_mma(
        &self,
        s: &CudaStream,
        x: &CudaView<'_, f32>,
        x_row: usize,
        m: usize,
        w: &GpuAwq,
        frag: &CudaSlice<u32>,
        partial: &mut CudaSlice<f32>,
        counters: &mut CudaSlice<u32>,
        y: &mut CudaViewMut<'_, f32>,
        silu: bool,
        defer: bool,
    ) -> Result<(), CudaError> {
        check(frag.len() == w.k * w.n / 8, "awq fragment-ordered weights")?;
        check(
            !defer || m <= AWQ_MAX_M,
            "awq GEMV: deferred splits of one launch",
        )?;
        let func = if silu {
            &self.gemv_mma.1
        } else {
            &self.gemv_mma.0
        };
        let (k, n, g) = (i32_of(w.k), i32_of(w.n), i32_of(w.group));
        let splits = w.k / GEMV_MMA_K;
        let cfg = LaunchConfig {
            grid_dim: (grid(w.n, GEMV_MMA_COLS), splits as u32, 1),
            block_dim: ((GEMV_MMA_COLS / 16 * 32) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        for (row, rows) in row_chunks(m) {
            let xs = x.slice(row * x_row..(row + rows) * x_row);
            let mut ys = y.slice_mut(row * w.n..(row + rows) * w.n);
            // xs holds rows * K (2K with silu), frag K * N/8, zeros/scales
            // K/G * N, partial K/256 * rows * N (within partial_len), ys
            // rows * N, counters one per 64 columns, zero (re-armed by the
            // launch).
            self.launch(
                s,
                func,
                cfg,
                Args::new(s)
                    .buf(&xs)
                    .buf(frag)
                    .buf(&w.zeros)
                    .buf(&w.scales)
                    .buf_mut(partial)
                    .buf_mut(&mut ys)
                    .buf_mut(counters)
                    .i32(k)
                    .i32(n)
                    .i32(g)
                    .i32(i32_of(rows))
                    .i32(i32::from(!defer)),
            )?;
        }
        Ok(())
    }

    /// y[r, col] = sum over the splits (in order) of partial[split, r, col].
    fn reduce_partials(
        &self,
        s: &CudaStream,
        partial: &CudaSlice<f32>,
        y: &mut CudaViewMut<'_, f32>,
        splits: usize,
        m: usize,
        n: usize,
    ) -> Result<(), CudaError> {
        check(
            partial.len() >= splits * m * n && y.len() >= m * n,
            "reduce sizes",
        )?;
        let cfg = cfg_1d(grid(m * n, 256), 256);
        self.launch(
            s,
            &self.awq_reduce,
            cfg,
            Args::new(s)
                .buf(partial)
                .buf_mut(y)
                .i32(i32_of(splits))
                .i32(i32_of(m))
                .i32(i32_of(n)),
        )
    }

    /// The tensor-core path of `awq_matmul` (sizes checked there). K is split
    /// at group boundaries until the grid covers the GPU twice, as far as
    /// `partial` holds the splits.
    #[allow(clippy::too_many_arguments)]
    fn awq_mma(
        &self,
        s: &CudaStream,
        x: &CudaView<'_, f32>,
        m: usize,
        w: &GpuAwq,
        partial: &mut CudaSlice<f32>,
        y: &mut CudaViewMut<'_, f32>,
        defer: bool,
    ) -> Result<usize, CudaError> {
        if let Some(frag) = w.frag.as_ref().filter(|_| self.frag_gemm(w)) {
            return self.awq_gemm_frag(s, x, m, w, frag, partial, y, defer);
        }
        let groups = w.k / w.group;
        let tiles = w.n.div_ceil(MMA_TILE) * m.div_ceil(MMA_TILE);
        let mut splits = self.mma_split_blocks.div_ceil(tiles).clamp(1, groups);
        while splits > 1 && splits * m * w.n > partial.len() {
            splits -= 1;
        }
        let k_per_split = groups.div_ceil(splits) * w.group;
        let splits = w.k.div_ceil(k_per_split);
        let cfg = LaunchConfig {
            grid_dim: (grid(w.n, MMA_TILE), grid(m, MMA_TILE), splits as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let gemm = match self.precision {
            Precision::Exact => &self.awq_mma,
            Precision::Fast => &self.awq_mma_fast,
        };
        // x holds m * K, the weights K x N, partial splits * m * N as
        // ensured above; k_per_split is a multiple of the group (itself of 32).
        let split = SplitGemm {
            splits,
            k_per_split,
            defer,
            cluster: false,
        };
        self.launch_split_gemm(s, gemm, cfg, x, &w.qweight, w, m, partial, y, split)
    }

    /// Launches a tensor-core AWQ GEMM (gemm_mma.cu's or gemm_frag.cu's
    /// parameters: x, weights, zeros, scales, out, m, k, n, group,
    /// k_per_split) writing y itself or, split, `partial`; then adds the
    /// splits up unless they are left to the consumer. Returns the splits
    /// left in `partial` (1: the product is in `y`). The callers check the
    /// sizes.
    #[allow(clippy::too_many_arguments)]
    fn launch_split_gemm(
        &self,
        s: &CudaStream,
        func: &CudaFunction,
        cfg: LaunchConfig,
        x: &CudaView<'_, f32>,
        weights: &CudaSlice<u32>,
        w: &GpuAwq,
        m: usize,
        partial: &mut CudaSlice<f32>,
        y: &mut CudaViewMut<'_, f32>,
        split: SplitGemm,
    ) -> Result<usize, CudaError> {
        let mut a = Args::new(s);
        a.buf(x).buf(weights).buf(&w.zeros).buf(&w.scales);
        if split.splits == 1 || split.cluster {
            a.buf_mut(y);
        } else {
            a.buf_mut(partial);
        }
        a.i32(i32_of(m))
            .i32(i32_of(w.k))
            .i32(i32_of(w.n))
            .i32(i32_of(w.group))
            .i32(i32_of(split.k_per_split));
        if split.cluster {
            self.launch_cluster(s, func, cfg, &mut a, (1, 1, split.splits as u32))?;
            return Ok(1);
        }
        self.launch(s, func, cfg, &mut a)?;
        if split.splits > 1 && !split.defer {
            self.reduce_partials(s, partial, y, split.splits, m, w.n)?;
            return Ok(1);
        }
        Ok(split.splits)
    }

    /// Whether a product's K splits are added up in a cluster where they
    /// fit one; `defer`: the consumer would add them up.
    fn cluster_splits(&self, defer: bool) -> bool {
        match self.cluster_mode {
            ClusterSplits::Off => false,
            ClusterSplits::Undeferred => !defer,
            ClusterSplits::Always => true,
        }
    }

    /// Whether the f32 GEMV of M rows, K inputs, N outputs adds its splits up in a
    /// cluster (`defer`: its consumer could).
    pub fn gemv_cluster(&self, m: usize, k: usize, n: usize, silu: bool, defer: bool) -> bool {
        let splits = k.div_ceil(AWQ_ROWS_PER_BLOCK);
        !silu
            && n <= self.cluster_gemv_max_n
            && m <= self.cluster_gemv_rows.min(AWQ_FUSED_MAX_ROWS)
            && (2..=CLUSTER_MAX_SPLITS).contains(&splits)
            && !(defer && self.gemv_defer)
    }

    /// The K splits (count, k each) of an M×K×N fragment GEMM added up in a
    /// thread block cluster (`cluster_mode`), or None where they
    /// are not: 128-row tiles, one split, more splits than a cluster takes,
    /// or the consumer adding them (`defer`) in the default mode.
    pub fn gemm_frag_cluster_split(
        &self,
        m: usize,
        k: usize,
        n: usize,
        defer: bool,
    ) -> Option<(usize, usize)> {
        if !self.cluster_splits(defer)
            || m >= self.gemm_frag_tall_rows
            || m >= self.gemm_wgmma_min_rows
        {
            return None;
        }
        // No partial sums: as many splits as the grid wants.
        let tiles = n.div_ceil(GEMM_FRAG_COLS) * m.div_ceil(64);
        let (splits, k_per_split) = frag_splits(k, tiles, self.mma_split_blocks, usize::MAX);
        (2..=CLUSTER_MAX_SPLITS)
            .contains(&splits)
            .then_some((splits, k_per_split))
    }

    /// The fast path's GEMM on fragment-ordered weights (gemm_frag.cu; sizes
    /// checked by `awq_matmul_impl`, the shape by `gemv_mma_fits`, which
    /// implies the kernel's N % 16, K % 64, G % 64). K is split in multiples
    /// of 64 (at least `GEMM_FRAG_MIN_SPLIT_K` a split) until the grid has
    /// `mma_split_blocks` blocks, as far as `partial` holds the splits.
    #[allow(clippy::too_many_arguments)]
    fn awq_gemm_frag(
        &self,
        s: &CudaStream,
        x: &CudaView<'_, f32>,
        m: usize,
        w: &GpuAwq,
        frag: &CudaSlice<u32>,
        partial: &mut CudaSlice<f32>,
        y: &mut CudaViewMut<'_, f32>,
        defer: bool,
    ) -> Result<usize, CudaError> {
        check(frag.len() == w.k * w.n / 8, "awq fragment-ordered weights")?;
        let wide_blocks = w.n.div_ceil(WGMMA_WIDE_COLS) * m.div_ceil(128);
        let (func, bm, cols, smem) =
            if m >= self.gemm_wgmma_min_rows && wide_blocks >= self.gemm_wide_min_blocks {
                (&self.gemm_wgmma_wide, 128, WGMMA_WIDE_COLS, WGMMA_WIDE_SMEM)
            } else if m >= self.gemm_wgmma_min_rows {
                let t = WGMMA_TILE_ROWS
                    .iter()
                    .position(|&rows| rows >= m)
                    .unwrap_or(WGMMA_TILE_ROWS.len() - 1);
                (&self.gemm_wgmma[t], WGMMA_TILE_ROWS[t], GEMM_FRAG_COLS, 0)
            } else if m >= self.gemm_frag_tall_rows {
                (&self.gemm_frag.1, 128, GEMM_FRAG_COLS, 0)
            } else {
                let stages = self.gemm_frag_stages.clamp(2, 4);
                (&self.gemm_frag.0[stages - 2], 64, GEMM_FRAG_COLS, 0)
            };
        // Split K: in a cluster that adds the splits up (no partial sums:
        // as many splits as the grid wants), or into `partial`, as far as
        // it holds them.
        let cluster = self.gemm_frag_cluster_split(m, w.k, w.n, defer);
        let (func, cols, smem, (splits, k_per_split)) = match cluster {
            Some(split) => (&self.gemm_frag_cluster, GEMM_FRAG_COLS, 0, split),
            None => (
                func,
                cols,
                smem,
                frag_splits(
                    w.k,
                    w.n.div_ceil(cols) * m.div_ceil(bm),
                    self.mma_split_blocks,
                    partial.len() / (m * w.n).max(1),
                ),
            ),
        };
        let cfg = LaunchConfig {
            grid_dim: (grid(w.n, cols), grid(m, bm), splits as u32),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // x holds m * K, frag K * N/8, zeros/scales K/G * N, y m * N
        // (checked by the callers), partial splits * m * N as frag_splits
        // ensures (a cluster uses none); k_per_split is a multiple of 64.
        let split = SplitGemm {
            splits,
            k_per_split,
            defer,
            cluster: cluster.is_some(),
        };
        self.launch_split_gemm(s, func, cfg, x, frag, w, m, partial, y, split)
    }

    /// Rotates q and k of every token and writes k, v into their slots.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv_write(
        &self,
        s: &CudaStream,
        qkv: &CudaView<'_, f32>,
        positions: &CudaView<'_, u32>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        slots: &CudaView<'_, u32>,
        q_out: &mut CudaViewMut<'_, f32>,
        cache: &mut KvCache,
        shape: (usize, usize, usize),
    ) -> Result<(), CudaError> {
        let (heads, kv_heads, hd) = shape;
        let t = positions.len();
        check(
            slots.len() == t
                && qkv.len() >= t * (heads + 2 * kv_heads) * hd
                && q_out.len() >= t * heads * hd,
            "rope sizes",
        )?;
        let cfg = cfg_1d(t as u32, 256);
        // positions < max positions of the tables and slots inside the
        // caches (validated with the batch); buffer sizes checked above.
        self.launch(
            s,
            match cache {
                KvCache::F32 { .. } => &self.rope_kv.0,
                KvCache::F16 { .. } => &self.rope_kv.1,
            },
            cfg,
            Args::new(s)
                .buf(qkv)
                .buf(positions)
                .buf(cos)
                .buf(sin)
                .buf(slots)
                .buf_mut(q_out)
                .kv(cache)
                .i32(i32_of(heads))
                .i32(i32_of(kv_heads))
                .i32(i32_of(hd)),
        )
    }

    /// Context partitions of `max_context` positions (ATTN_PART in attention.cu).
    pub fn attention_parts(max_context: usize) -> usize {
        max_context.div_ceil(ATTENTION_PART)
    }

    /// Floats of attention workspace for `tokens` tokens.
    pub fn attention_work_len(
        tokens: usize,
        heads: usize,
        head_dim: usize,
        max_context: usize,
    ) -> usize {
        tokens * heads * Self::attention_parts(max_context) * (head_dim + 2)
    }

    /// Causal paged attention of every query token over its sequence, split
    /// over the context and combined (two launches). `tiles` (from
    /// `attention_tiles`) groups the tokens: a block takes a tile of one
    /// sequence's tokens and shares its loads of the keys and values among them.
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention(
        &self,
        s: &CudaStream,
        q: &CudaView<'_, f32>,
        cache: &mut KvCache,
        block_tables: &CudaView<'_, u32>,
        seq_of: &CudaView<'_, u32>,
        positions: &CudaView<'_, u32>,
        tiles: &CudaView<'_, u32>,
        work: &mut CudaSlice<f32>,
        out: &mut CudaViewMut<'_, f32>,
        shape: (usize, usize, usize),
        block_size: usize,
        max_blocks: usize,
        max_context: usize,
        batch_context: usize,
    ) -> Result<(), CudaError> {
        let (heads, kv_heads, hd) = shape;
        let t = positions.len();
        check(
            hd % 32 == 0 && hd <= ATTENTION_MAX_HEAD_DIM,
            "head_dim must be a multiple of 32, at most 128",
        )?;
        check(
            seq_of.len() == t && q.len() >= t * heads * hd && out.len() >= t * heads * hd,
            "attention sizes",
        )?;
        check(tiles.len() >= 2 && tiles.len() / 2 <= t, "attention tiles")?;
        let parts = Self::attention_parts(max_context);
        check(
            batch_context >= 1 && batch_context <= max_context,
            "attention batch context",
        )?;
        // Partitions past the batch's longest context would do nothing.
        let launched = Self::attention_parts(batch_context);
        check(
            work.len() >= Self::attention_work_len(t, heads, hd, max_context),
            "attention workspace",
        )?;
        let scale = 1.0f32 / (hd as f32).sqrt();
        let blocks = tiles.len() / 2;
        // The tensor-core kernel (one warp a block) on the f16 cache where
        // the head size has one; the same grid and partials either way.
        let mma = match (&*cache, hd) {
            (KvCache::F16 { .. }, 32 | 64 | 128) if self.prefill_mma_on => {
                Some(&self.attention_prefill_mma[hd.trailing_zeros() as usize - 5])
            }
            _ => None,
        };
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, heads as u32, launched as u32),
            block_dim: (
                if mma.is_some() {
                    32
                } else {
                    32 * ATTENTION_WARPS as u32
                },
                1,
                1,
            ),
            shared_mem_bytes: 0,
        };
        // Every table entry < blocks, every seq_of < rows of block_tables and
        // every position < batch_context <= max_context (validated with the
        // batch; max_context is the model's max positions), so partitions
        // stay inside `work` and every token's partitions are launched;
        // every tile's tokens lie inside the batch and are consecutive
        // positions of one sequence (attention_tiles); sizes checked above.
        self.launch(
            s,
            match (mma, &*cache) {
                (Some(f), _) => f,
                (None, KvCache::F32 { .. }) => &self.attention_prefill.0,
                (None, KvCache::F16 { .. }) => &self.attention_prefill.1,
            },
            cfg,
            Args::new(s)
                .buf(q)
                .kv(cache)
                .buf(block_tables)
                .buf(seq_of)
                .buf(positions)
                .buf(tiles)
                .buf_mut(work)
                .i32(i32_of(heads))
                .i32(i32_of(kv_heads))
                .i32(i32_of(hd))
                .i32(i32_of(block_size))
                .i32(i32_of(max_blocks))
                .i32(i32_of(parts))
                .f32(scale),
        )?;
        let cfg = cfg_1d(t as u32, 256);
        // The partitions a token has were written above; out holds t * heads * hd.
        self.launch(
            s,
            &self.attention_combine,
            cfg,
            Args::new(s)
                .buf(work)
                .buf(positions)
                .buf_mut(out)
                .i32(i32_of(heads))
                .i32(i32_of(hd))
                .i32(i32_of(parts)),
        )
    }

    /// Query tiles for `paged_attention`: runs of at most
    /// ATTENTION_TILE tokens of one sequence at consecutive positions, as
    /// (first token, count) pairs, appended to `tiles`.
    pub fn attention_tiles(
        seqs: &[lhama_model::SeqSlice<'_>],
        positions: &[u32],
        tiles: &mut Vec<u32>,
    ) {
        for seq in seqs {
            let mut first = seq.token_start;
            let end = seq.token_start + seq.num_tokens;
            while first < end {
                let mut count = 1;
                while first + count < end
                    && count < ATTENTION_TILE
                    && positions[first + count] == positions[first + count - 1] + 1
                {
                    count += 1;
                }
                tiles.extend_from_slice(&[first as u32, count as u32]);
                first += count;
            }
        }
    }

    /// 64-position chunks per decode-attention block for `t` tokens whose
    /// longest context is `batch_context`: as many as keep
    /// `attention_min_blocks` blocks, at least one, at most the whole
    /// context. A function of (t, the context's chunk count) alone, so a
    /// graph captured for one step replays correctly for any step with the
    /// same key.
    pub fn decode_part_chunks(&self, t: usize, heads: usize, batch_context: usize) -> usize {
        let z = Self::attention_parts(batch_context);
        (t * heads * z / self.attention_min_blocks.max(1)).clamp(1, z.max(1))
    }

    /// Whether `paged_attention_decode` handles this head size.
    pub fn fused_decode_supported(head_dim: usize) -> bool {
        matches!(head_dim, 32 | 64 | 128)
    }

    /// A decode step's attention (one new token per sequence): rotary
    /// embedding of q and k from the raw qkv rows, the K/V write, attention
    /// over the context and the combine of its partitions, in one launch.
    /// `qkv` is the qkv product or, with `qkv_splits` > 1, its K splits as
    /// `awq_matmul_split` leaves them ([splits, T, row]), added up as they
    /// are read. `counters` holds T * heads zeros (re-armed by the kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention_decode(
        &self,
        s: &CudaStream,
        qkv: &CudaView<'_, f32>,
        qkv_splits: usize,
        positions: &CudaView<'_, u32>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        slots: &CudaView<'_, u32>,
        cache: &mut KvCache,
        block_tables: &CudaView<'_, u32>,
        seq_of: &CudaView<'_, u32>,
        work: &mut CudaSlice<f32>,
        counters: &mut CudaSlice<u32>,
        out: &mut CudaViewMut<'_, f32>,
        shape: (usize, usize, usize),
        block_size: usize,
        max_blocks: usize,
        max_context: usize,
        batch_context: usize,
    ) -> Result<(), CudaError> {
        let (heads, kv_heads, hd) = shape;
        let t = positions.len();
        check(
            batch_context >= 1 && batch_context <= max_context,
            "decode attention batch context",
        )?;
        check(
            Self::fused_decode_supported(hd) && kv_heads > 0 && heads % kv_heads == 0,
            "decode attention needs head_dim 32, 64 or 128",
        )?;
        check(
            seq_of.len() == t
                && slots.len() == t
                && qkv_splits >= 1
                && qkv.len() >= qkv_splits * t * (heads + 2 * kv_heads) * hd
                && out.len() >= t * heads * hd
                && counters.len() >= t * heads,
            "decode attention sizes",
        )?;
        let parts = Self::attention_parts(max_context);
        check(
            work.len() >= Self::attention_work_len(t, heads, hd, max_context),
            "attention workspace",
        )?;
        let scale = 1.0f32 / (hd as f32).sqrt();
        // A block per partition of the batch's longest context: blocks past
        // a token's own context return at once, but each still costs a slot.
        let chunks = self.decode_part_chunks(t, heads, batch_context);
        let launched = Self::attention_parts(batch_context).div_ceil(chunks);
        let cfg = LaunchConfig {
            grid_dim: (t as u32, heads as u32, launched as u32),
            block_dim: (32 * ATTENTION_WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // As paged_attention, plus: slots inside the caches and positions
        // below the rotary tables' length (validated with the batch), and
        // below batch_context (the caller's promise: a token's partitions
        // past the grid would never be combined).
        self.launch(
            s,
            // head_dim is 32, 64 or 128 (checked above): index 0, 1, 2.
            &self.attention_decode[usize::from(chunks > 1)][match cache {
                KvCache::F32 { .. } => 0,
                KvCache::F16 { .. } => 1,
            }][(hd / 32).trailing_zeros() as usize],
            cfg,
            Args::new(s)
                .buf(qkv)
                .buf(positions)
                .buf(cos)
                .buf(sin)
                .buf(slots)
                .kv(cache)
                .buf(block_tables)
                .buf(seq_of)
                .buf_mut(work)
                .buf_mut(counters)
                .buf_mut(out)
                .i32(i32_of(heads))
                .i32(i32_of(kv_heads))
                .i32(i32_of(chunks))
                .i32(i32_of(block_size))
                .i32(i32_of(max_blocks))
                .i32(i32_of(parts))
                .f32(scale)
                .i32(i32_of(qkv_splits)),
        )
    }

    /// logits[R, vocab] for the rows `rows` of xn[T, hidden]: up to 8 rows
    /// with the weights of 4 vocabulary rows a warp in registers (else a
    /// warp per vocabulary row), the tensor-core GEMM for many.
    pub fn lm_head(
        &self,
        s: &CudaStream,
        xn: &CudaView<'_, f32>,
        rows: &CudaView<'_, u32>,
        weight: &CudaSlice<f16>,
        logits: &mut CudaViewMut<'_, f32>,
        hidden: usize,
    ) -> Result<(), CudaError> {
        let vocab = weight.len() / hidden;
        let r = rows.len();
        check(
            logits.len() >= r * vocab && weight.len() == vocab * hidden && hidden.is_multiple_of(8),
            "lm_head sizes (hidden must be a multiple of 8)",
        )?;
        let (nr, h, v) = (i32_of(r), i32_of(hidden), i32_of(vocab));
        let mma = r >= self.lm_head_mma_min_rows.max(1) && hidden.is_multiple_of(MMA_BK);
        let (func, cfg) = if mma {
            let cfg = LaunchConfig {
                grid_dim: (grid(vocab, MMA_TILE), grid(r, MMA_TILE), 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            (&self.lm_head_mma, cfg)
        } else if self.lm_head_rows_on && (1..=LM_HEAD_ROWS).contains(&r) {
            let cfg = cfg_1d(grid(vocab, LM_HEAD_ROWS_VOCAB_PER_BLOCK), 256);
            (&self.lm_head_rows, cfg)
        } else {
            let cfg = cfg_1d(grid(vocab, 8), 256);
            (&self.lm_head, cfg)
        };
        // rows index into xn's rows (validated with the batch); sizes checked
        // above (the GEMM needs hidden % 32 == 0, checked for its choice).
        self.launch(
            s,
            func,
            cfg,
            Args::new(s)
                .buf(xn)
                .buf(rows)
                .buf(weight)
                .buf_mut(logits)
                .i32(nr)
                .i32(h)
                .i32(v),
        )
    }

    /// 32-bit words of one row's token mask.
    pub fn mask_words(vocab: usize) -> usize {
        vocab.div_ceil(32)
    }

    /// Sets logits[r, i] to −∞ where bit i % 32 of masks[r, i / 32] is 0,
    /// for the R = logits.len() / vocab rows.
    pub fn apply_masks(
        &self,
        s: &CudaStream,
        logits: &mut CudaViewMut<'_, f32>,
        masks: &CudaView<'_, u32>,
        vocab: usize,
    ) -> Result<(), CudaError> {
        let words = Self::mask_words(vocab);
        let r = logits.len() / vocab.max(1);
        check(
            vocab > 0 && logits.len() == r * vocab && masks.len() >= r * words,
            "token mask sizes",
        )?;
        // r rows of vocab logits and of `words` mask words (checked above).
        self.launch(
            s,
            &self.apply_masks,
            cfg_1d(r as u32, 256),
            Args::new(s)
                .buf_mut(logits)
                .buf(masks)
                .i32(i32_of(vocab))
                .i32(i32_of(words)),
        )
    }

    /// Turns each row of logits[R, vocab] into tokens[r] as params[r] (R
    /// rows of `sample_params` words) says (`Logits` rows: nothing); the
    /// argmax in up to `sample_slices` blocks a row (`sample_blocks` in
    /// all), through `scratch` (at least R rows).
    pub fn sample(
        &self,
        s: &CudaStream,
        logits: &CudaView<'_, f32>,
        params: &CudaView<'_, u32>,
        tokens: &mut CudaViewMut<'_, u32>,
        vocab: usize,
        scratch: &mut SampleScratch,
    ) -> Result<(), CudaError> {
        let r = tokens.len();
        check(
            logits.len() >= r * vocab && params.len() >= r * SAMPLE_PARAM_WORDS && vocab > 0,
            "sampling sizes",
        )?;
        check(scratch.rows() >= r, "sampling scratch rows")?;
        let slices = self
            .sample_slices
            .min(self.sample_blocks / r.max(1))
            .clamp(1, SAMPLE_MAX_SLICES)
            .min(vocab);
        let cfg = LaunchConfig {
            grid_dim: (r as u32, slices as u32, 1),
            block_dim: (SAMPLE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // logits hold r rows of vocab, params r records, tokens r entries,
        // the scratch SAMPLE_MAX_SLICES values and ids a row and a counter
        // a row, zero (checked above; each launch re-arms the counters);
        // the parameters were range-checked on the host.
        self.launch(
            s,
            &self.sample,
            cfg,
            Args::new(s)
                .buf(logits)
                .buf(params)
                .buf_mut(tokens)
                .i32(i32_of(vocab))
                .buf_mut(&mut scratch.values)
                .buf_mut(&mut scratch.ids)
                .buf_mut(&mut scratch.counters),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lhama_model::{DrawParams, RowSampling, SeqSlice};

    /// A launch must pass what the kernel table says, place by place.
    #[test]
    fn launch_arguments_are_checked_against_the_table() {
        use ArgKind::{Float, Int, Pointer};
        let silu = compile::KERNELS
            .iter()
            .find(|k| k.name == "silu_mul_f32")
            .expect("silu_mul_f32 in the table");
        assert!(check_args(silu, &[Pointer, Int, Pointer, Int, Int]).is_ok());
        assert!(check_args(silu, &[Pointer, Int, Pointer, Int]).is_err());
        assert!(check_args(silu, &[Pointer, Float, Pointer, Int, Int]).is_err());
        assert!(check_args(silu, &[Pointer, Int, Int, Int, Int]).is_err());
        let rmsnorm = compile::KERNELS
            .iter()
            .find(|k| k.name == "add_rmsnorm_f32")
            .expect("add_rmsnorm_f32 in the table");
        assert!(
            check_args(
                rmsnorm,
                &[Pointer, Pointer, Int, Pointer, Pointer, Int, Float]
            )
            .is_ok()
        );
    }

    #[test]
    fn gemv_launches_cover_the_rows_in_chunks_of_eight() {
        assert_eq!(
            row_chunks(19).collect::<Vec<_>>(),
            [(0, 8), (8, 8), (16, 3)]
        );
        assert_eq!(row_chunks(8).collect::<Vec<_>>(), [(0, 8)]);
        assert_eq!(row_chunks(0).count(), 0);
    }

    /// The fragment GEMM's splits: multiples of 64 k covering K exactly,
    /// no split under 128 k, no more splits than the partial buffer holds,
    /// and one split when the tiles alone fill the target.
    #[test]
    fn fragment_gemm_splits_cover_k_in_multiples_of_64() {
        for &(k, tiles, target, most) in &[
            (1024usize, 16usize, 264usize, 100usize),
            (4096, 8, 264, 100),
            (1024, 300, 264, 100),
            (1024, 16, 264, 3),
            (192, 1, 264, 100),
            (64, 1, 264, 100),
            (4096, 1, 264, 0),
        ] {
            let (splits, per) = frag_splits(k, tiles, target, most);
            assert!(per % 64 == 0 && per > 0, "{k} {tiles}: {per}");
            assert_eq!(splits, k.div_ceil(per), "{k} {tiles}");
            assert!(splits <= most.max(1), "{k} {tiles}: {splits} > {most}");
            assert!(splits == 1 || per >= 128, "{k} {tiles}: {per}");
            if tiles >= target {
                assert_eq!(splits, 1);
            }
        }
        assert_eq!(frag_splits(1024, 16, 264, 100), (8, 128));
        assert_eq!(frag_splits(4096, 64, 264, 100), (5, 832));
    }

    /// Each lane's words, read as mma.sync m16n8k16's A fragments by the
    /// PTX ISA's rule (register r of lane L holds A[row][col], A[row][col + 1]
    /// at its low and high 16 bits, row = L / 4 + 8 (r % 2), col = 2 (L % 4) +
    /// 8 (r / 2)), with A = W^T of the tile, give back every q[k][n] of the
    /// AWQ matrix: the nibble of register r sits at bits 4r (low half) and
    /// 16 + 4r (high half), as the kernel's bit trick takes it.
    #[test]
    fn fragment_order_gives_each_lane_its_mma_fragments() {
        let (k, n) = (256, 48);
        let mut rng = lhama_model::rng::SplitMix64::new(3);
        let qweight: Vec<u32> = (0..k * n / 8).map(|_| rng.next_u64() as u32).collect();
        let frag = fragment_order(&qweight, k, n);
        assert_eq!(frag.len(), qweight.len());
        let q =
            |kk: usize, nn: usize| lhama_model::awq::unpack(qweight[kk * (n / 8) + nn / 8], nn % 8);
        let mut seen = 0usize;
        for nt in 0..n / 16 {
            for kt in 0..k / 16 {
                for lane in 0..32 {
                    let word = frag[((nt * (k / 64) + kt / 4) * 32 + lane) * 4 + kt % 4];
                    for r in 0..4 {
                        let (row, col) = (lane / 4 + 8 * (r % 2), 2 * (lane % 4) + 8 * (r / 2));
                        let lo = (word >> (4 * r)) & 0xF;
                        let hi = (word >> (16 + 4 * r)) & 0xF;
                        assert_eq!(
                            lo,
                            q(16 * kt + col, 16 * nt + row),
                            "nt {nt} kt {kt} lane {lane} r {r}"
                        );
                        assert_eq!(hi, q(16 * kt + col + 1, 16 * nt + row));
                        seen += 2;
                    }
                }
            }
        }
        assert_eq!(seen, k * n, "every weight once");
        assert!(gemv_mma_fits(k, n, 128) && gemv_mma_fits(4096, 1024, 64));
        assert!(!gemv_mma_fits(128, 64, 64) && !gemv_mma_fits(256, 200, 128));
        assert!(!gemv_mma_fits(256, 64, 32) && !gemv_mma_fits(256, 64, 0));
    }

    #[test]
    fn attention_tiles_split_at_sequences_tile_size_and_position_gaps() {
        let table = [0u32; 4];
        let seq = |token_start, num_tokens| SeqSlice {
            token_start,
            num_tokens,
            block_table: &table,
        };
        // Seq 0: 20 prompt tokens at 0..20; seq 1: one decode token at 40;
        // seq 2: positions 5, 6, 9, 10 (a gap: never one tile).
        let mut positions: Vec<u32> = (0..20).collect();
        positions.push(40);
        positions.extend([5, 6, 9, 10]);
        let mut tiles = Vec::new();
        Kernels::attention_tiles(
            &[seq(0, 20), seq(20, 1), seq(21, 4)],
            &positions,
            &mut tiles,
        );
        assert_eq!(tiles, vec![0, 16, 16, 4, 20, 1, 21, 2, 23, 2]);
    }

    #[test]
    fn sampling_parameters_are_encoded_as_the_kernel_reads_them() {
        assert_eq!(sample_params(&RowSampling::Logits), [0; SAMPLE_PARAM_WORDS]);
        assert_eq!(sample_params(&RowSampling::Greedy)[0], 1);
        let p = DrawParams {
            temperature: 0.5,
            top_k: 7,
            top_p: 0.9,
            min_p: 0.1,
            u: 0.25,
        };
        assert_eq!(
            sample_params(&RowSampling::Draw(p)),
            [
                2,
                0.5f32.to_bits(),
                7,
                0.9f32.to_bits(),
                0.1f32.to_bits(),
                0.25f32.to_bits()
            ]
        );
    }
}
