// AWQ int4 GEMM for many rows on the fast path (f16 x and weights, f32
// accumulation), on the weights in the tensor-core GEMV's fragment order
// (gemv_mma.cu: frag [N/16][K/64][32 lanes] uint4; one 16-byte load gives a
// lane its A fragments of a 16-column tile for 64 consecutive k).
//
// As in the GEMV, the weights are the mma's A operand and the rows its B
// operand: D[16 columns, 8 rows] += W^T[16 columns, 16 k] · x^T[16 k, 8 rows].
// The A fragments are dequantized in registers: 0x6400 | q is the f16
// 1024 + q, minus 1024 + zero is q - zero exactly, times the group's f16
// scale is the weight rounded once to f16 (what an fp16 dequantization of the
// checkpoint gives). The B fragments come from x staged in shared memory as
// f16 through ldmatrix.
//
// Block: 256 threads = 8 warps, 4 across the columns and 2 down the rows.
// A warp takes 2 column tiles (32 columns) and RT row tiles of 8, so a block
// covers 128 columns and BM = 16 RT rows. k goes in chunks of 64. The
// weights, zeros and scales (constant) come through a ring of STAGES chunks
// in shared memory, copied by cp.async STAGES - 1 chunks ahead of the tensor
// cores (the first ones before the wait on the previous kernel); the next
// chunk's x (f32, converted to f16 as it is staged) is loaded into registers
// while the tensor cores work on this one and sits double-buffered in shared
// memory. The stage count changes only when the bytes arrive, never the
// arithmetic: every form gives the same bits.
// Grid: (ceil(N / 128), ceil(M / BM), splits). Split z covers k in
// [z * k_per_split, min(K, (z + 1) * k_per_split)) and writes
// out[z, M, N] (with one split, y itself); its consumer or
// awq_reduce_partials_f32 adds the splits up in order (deterministic).
// The cluster form (CLUSTER, Hopper) is launched with the splits of a tile
// as one thread block cluster (1, 1, splits), at most 8: each block leaves
// its f32 tile in its own shared memory, and after a cluster barrier block z
// adds up every z-th strip of it across the cluster's blocks through
// distributed shared memory, in split order from 0.0f (awq_reduce_partials_f32's
// order: the same bits), and writes y itself. No partial sums leave the
// SMs and no second kernel runs.
// Host guarantees: N % 16 == 0, K % 64 == 0, k_per_split % 64 == 0,
// group % 64 == 0.
#define FRAG_THREADS 256
// Shared x rows in halves: 64 k + 8 pad (144 bytes, so the eight 16-byte
// rows of an ldmatrix phase fall in distinct banks).
#define FRAG_XS 72

// Four 8x8 f16 matrices from shared memory (ldmatrix .x4; TRANS: each
// transposed), lane L giving the address of row L % 8 of matrix L / 8.
template <bool TRANS = false>
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const __half* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    if constexpr (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    }
}

// 16 bytes from global to shared memory through L2 (cp.async.cg); with
// `full` false nothing is read and the 16 bytes are zeroed.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool full) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    const int bytes = full ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem), "r"(bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's most recent copy groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// One chunk of the weight ring: the block's 8 column tiles' fragments (a
// 16-byte piece per lane) and its 128 columns' zeros and scales.
struct FragStage {
    uint4 w[8][LHAMA_WARP];
    float zs[2][128];
};

// The chunk at k0 into a ring slot: thread t copies column tile t / 32's
// piece for lane t % 32; threads 0-63 copy the 128 columns' zeros (0-31) and
// scales (32-63), 4 columns each. Tiles and columns past N are zero-filled.
// `quads` is K / 64. (Both fragment GEMMs, gemm_frag.cu and gemm_wgmma.cu.)
__device__ __forceinline__ void frag_issue(FragStage& slot, const uint4* __restrict__ frag,
                                           const float* __restrict__ zeros, const float* __restrict__ scales, int n0,
                                           int n, int quads, int group, int k0, int tid) {
    const int tile = tid / LHAMA_WARP, l = tid % LHAMA_WARP;
    const int nt = n0 / 16 + tile;
    const bool ok = nt < n / 16;
    cp_async16(&slot.w[tile][l], frag + ((size_t)(ok ? nt : 0) * quads + k0 / 64) * LHAMA_WARP + l, ok);
    if (tid < 64) {
        const int which = tid / LHAMA_WARP, c = n0 + 4 * l;
        const float* table = which ? scales : zeros;
        cp_async16(&slot.zs[which][4 * l], table + (size_t)(k0 / group) * n + (c < n ? c : 0), c < n);
    }
}

// Where a thread stages x from: float4 e = i * 256 + tid of a 64-k chunk
// is row e / 16 of the block's, k 4 (e % 16); rows past M read as zeros.
template <int XV>
struct FragX {
    const float* row[XV];
    int xk;
    __device__ __forceinline__ FragX(const float* __restrict__ x, int m0, int m, int k, int tid) {
#pragma unroll
        for (int i = 0; i < XV; ++i) {
            const int r = m0 + (i * FRAG_THREADS + tid) / 16;
            row[i] = r < m ? x + (size_t)r * k : nullptr;
        }
        xk = (tid % 16) * 4;
    }
    // The thread's float4s of the chunk at k0.
    __device__ __forceinline__ void fetch(float4 (&xv)[XV], int k0) const {
#pragma unroll
        for (int i = 0; i < XV; ++i)
            xv[i] = row[i] ? *reinterpret_cast<const float4*>(row[i] + k0 + xk) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
};

// Four floats rounded to f16, as the 8 bytes that hold them.
__device__ __forceinline__ uint2 half4_bits(float4 v) {
    return make_uint2(half2_bits(__floats2half2_rn(v.x, v.y)), half2_bits(__floats2half2_rn(v.z, v.w)));
}

// One k16 step's A fragment (4 registers) of a 16-column tile from its
// packed word: 0x6400 | q is the f16 1024 + q; minus zb (1024 + zero, half2)
// is q - zero exactly; times sb (the scale, half2) rounds once to f16.
__device__ __forceinline__ void frag_dequant(unsigned (&a)[4], unsigned word, const unsigned (&zb)[2],
                                             const unsigned (&sb)[2]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const unsigned biased = ((word >> (4 * i)) & 0x000F000Fu) | 0x64006400u;
        const __half2 q =
            __hsub2(*reinterpret_cast<const __half2*>(&biased), *reinterpret_cast<const __half2*>(&zb[i % 2]));
        a[i] = half2_bits(__hmul2(q, *reinterpret_cast<const __half2*>(&sb[i % 2])));
    }
}

// The f32 tile a cluster block leaves for the reduction: BM rows of 128
// columns, rows padded by 4 floats (the fragment stores of a warp fall in 32
// distinct banks; rows stay 16-byte aligned for the float4 reads).
#define FRAG_TILE_LD 132

template <int RT, int STAGES, bool CLUSTER>
__host__ __device__ constexpr int frag_smem_bytes() {
    constexpr int body = (int)(2 * 16 * RT * FRAG_XS * sizeof(__half) + STAGES * sizeof(FragStage));
    constexpr int tile = CLUSTER ? 16 * RT * FRAG_TILE_LD * (int)sizeof(float) : 0;
    return body > tile ? body : tile;
}

template <int RT, int STAGES, bool CLUSTER>
__device__ __forceinline__ void awq_gemm_frag(
    const float* __restrict__ x, const uint4* __restrict__ frag, const float* __restrict__ zeros,
    const float* __restrict__ scales, float* __restrict__ out, int m, int k, int n, int group, int k_per_split) {
    static_assert(STAGES >= 2, "the ring holds this chunk and the next");
    constexpr int BM = 16 * RT;
    // float4 of x per thread per chunk: BM rows x 16 float4.
    constexpr int XV = BM * 16 / FRAG_THREADS;
    // x's double buffer, then the ring; the cluster form's f32 tile reuses
    // the same bytes once the tensor cores are done.
    __shared__ __align__(16) unsigned char smem[frag_smem_bytes<RT, STAGES, CLUSTER>()];
    __half(*xs)[BM * FRAG_XS] = reinterpret_cast<__half(*)[BM * FRAG_XS]>(smem);
    FragStage* ring = reinterpret_cast<FragStage*>(smem + 2 * BM * FRAG_XS * sizeof(__half));

    const int tid = threadIdx.x, lane = tid % LHAMA_WARP, warp = tid / LHAMA_WARP;
    const int gid = lane / 4, tig = lane % 4;
    const int wc = warp % 4, wr = warp / 4;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * 128;
    const int kb = blockIdx.z * k_per_split;
    const int ke = min(k, kb + k_per_split);
    const int chunks = (ke - kb) / 64;
    const int quads = k / 64;
    const int nt0 = n0 / 16 + wc * 2;  // this warp's first column tile
    bool ct_ok[2];
    int col[2][2];  // [tile][a-row half]: gid and gid + 8
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        ct_ok[j] = nt0 + j < n / 16;
        col[j][0] = (nt0 + j) * 16 + gid;
        col[j][1] = col[j][0] + 8;
    }

    const FragX<XV> xsrc(x, m0, m, k, tid);
    const int xk = xsrc.xk;

    auto issue = [&](int k0, int slot) { frag_issue(ring[slot], frag, zeros, scales, n0, n, quads, group, k0, tid); };
    float4 xv[XV];
    auto fetch_x = [&](int k0) { xsrc.fetch(xv, k0); };
    auto stage_x = [&](int buf) {
#pragma unroll
        for (int i = 0; i < XV; ++i) {
            const int r = (i * FRAG_THREADS + tid) / 16;
            *reinterpret_cast<uint2*>(&xs[buf][r * FRAG_XS + xk]) = half4_bits(xv[i]);
        }
    };
    // The chunk the tensor cores work on, from its ring slot: its weight
    // words, 1024 + zero and the scale as half2 per (tile, a-row half).
    unsigned wcur[2][4], zb[2][2], sb[2][2];
    auto take_weights = [&](int slot) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const uint4 v = ring[slot].w[wc * 2 + j][lane];
            wcur[j][0] = v.x;
            wcur[j][1] = v.y;
            wcur[j][2] = v.z;
            wcur[j][3] = v.w;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int cl = (wc * 2 + j) * 16 + gid + 8 * h;
                zb[j][h] = half2_bits(__float2half2_rn(1024.0f + ring[slot].zs[0][cl]));
                sb[j][h] = half2_bits(__float2half2_rn(ring[slot].zs[1][cl]));
            }
        }
    };

    float acc[2][RT][4];
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int r = 0; r < RT; ++r)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[j][r][e] = 0.0f;

    // The first STAGES - 1 chunks' weights are constant: in flight before
    // the wait on the previous kernel (which writes x). One copy group per
    // chunk, empty past the split's end, so that group c is chunk c.
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < chunks) issue(kb + 64 * st, st);
        cp_async_commit();
    }
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    if (chunks > 0) {
        fetch_x(kb);
        stage_x(0);
    }
    // ldmatrix.x4 addresses: lanes 0-7 rows 0-7 at k 0, 8-15 rows 0-7 at k 8,
    // 16-23 rows 8-15 at k 0, 24-31 rows 8-15 at k 8 (of a pair of row tiles):
    // registers b0, b1 of the first row tile, then of the second.
    const int ld_row = wr * RT * 8 + (lane / 16) * 8 + lane % 8;
    const int ld_k = ((lane / 8) % 2) * 8;
    // Rows of M in this warp's row tiles (warp-uniform). In the 64-row
    // tiles (RT 4; few rows: 16 of 64 at a 16-row step), pairs of row tiles
    // wholly past M take no ldmatrix and no mma, and a warp with none
    // dequantizes nothing (their sums stay zero and are never stored). The
    // 128-row tiles (256 rows on) check nothing: there it measured slower.
    const int warp_rows = RT == 4 ? m - (m0 + wr * RT * 8) : BM;
    for (int c = 0; c < chunks; ++c) {
        const int buf = c & 1;
        // Chunk c's copies (this thread's) have landed; the barrier makes
        // every thread's visible, with x staged in xs[buf], and frees the
        // slot and the x buffer that chunk c - 1 used.
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int ahead = c + STAGES - 1;
        if (ahead < chunks) issue(kb + 64 * ahead, ahead % STAGES);
        cp_async_commit();
        if (c + 1 < chunks) fetch_x(kb + 64 * (c + 1));
        take_weights(c % STAGES);
        const __half* xb = &xs[buf][ld_row * FRAG_XS + ld_k];
#pragma unroll
        for (int t = 0; t < 4 && warp_rows > 0; ++t) {  // k16 steps of the chunk
            unsigned a[2][4];
#pragma unroll
            for (int j = 0; j < 2; ++j) frag_dequant(a[j], wcur[j][t], zb[j], sb[j]);
#pragma unroll
            for (int rp = 0; rp < RT / 2; ++rp) {
                if (rp * 16 >= warp_rows) break;
                unsigned b[4];
                ldsm_x4(b, xb + rp * 16 * FRAG_XS + t * 16);
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    mma_16816(acc[j][2 * rp], a[j], b[0], b[1]);
                    mma_16816(acc[j][2 * rp + 1], a[j], b[2], b[3]);
                }
            }
        }
        if (c + 1 < chunks) stage_x(buf ^ 1);
    }

    // D[column, row]: c0 (col gid, row 2 tig), c1 (row 2 tig + 1), c2, c3 the
    // same at column gid + 8.
    if constexpr (CLUSTER) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        // Every copy landed and every warp is past its last reads of x and
        // the ring before the tile overwrites them.
        cp_async_wait<0>();
        __syncthreads();
        float* tile = reinterpret_cast<float*>(smem);
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int r = 0; r < RT; ++r) {
                const int row = wr * RT * 8 + r * 8 + 2 * tig;
                const int c = (wc * 2 + j) * 16 + gid;
                tile[row * FRAG_TILE_LD + c] = acc[j][r][0];
                tile[(row + 1) * FRAG_TILE_LD + c] = acc[j][r][1];
                tile[row * FRAG_TILE_LD + c + 8] = acc[j][r][2];
                tile[(row + 1) * FRAG_TILE_LD + c + 8] = acc[j][r][3];
            }
        cluster_barrier();
        const unsigned rank = cluster_rank(), splits = cluster_size();
        // float4 e of the tile's rows below M: row e / 32, columns 4 (e % 32)
        // onwards; this block takes every splits-th run of 256 (one a thread).
        const int valid = min(BM, m - m0) * 32;
        for (int e = (int)rank * FRAG_THREADS + tid; e < valid; e += (int)splits * FRAG_THREADS) {
            const int row = e / 32, c = 4 * (e % 32);
            const float* src = tile + row * FRAG_TILE_LD + c;
            // Every rank's piece in flight, then added in rank order.
            float4 p[CLUSTER_MAX];
#pragma unroll
            for (unsigned z = 0; z < CLUSTER_MAX; ++z)
                if (z < splits) p[z] = ld_cluster_f4(cluster_map(src, z));
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (unsigned z = 0; z < CLUSTER_MAX; ++z)
                if (z < splits) {
                    v.x += p[z].x;
                    v.y += p[z].y;
                    v.z += p[z].z;
                    v.w += p[z].w;
                }
            const int gr = m0 + row, gc = n0 + c;
            // N % 16 == 0: a float4 of columns is all in or all out.
            if (gc < n) *reinterpret_cast<float4*>(out + (size_t)gr * n + gc) = v;
        }
        // No block leaves (its shared memory with it) while others read it.
        cluster_barrier();
#else
        __trap();
#endif
        return;
    }
    float* dst = out + (size_t)blockIdx.z * m * n;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        if (!ct_ok[j]) continue;
#pragma unroll
        for (int r = 0; r < RT; ++r) {
            const int row = m0 + wr * RT * 8 + r * 8 + 2 * tig;
            if (row < m) {
                dst[(size_t)row * n + col[j][0]] = acc[j][r][0];
                dst[(size_t)row * n + col[j][1]] = acc[j][r][2];
            }
            if (row + 1 < m) {
                dst[(size_t)(row + 1) * n + col[j][0]] = acc[j][r][1];
                dst[(size_t)(row + 1) * n + col[j][1]] = acc[j][r][3];
            }
        }
    }
}

// BM = 64 rows (4 row tiles a warp) with a ring of 2, 3 or 4 chunks, and
// 128 rows (8) with 2 (static shared memory stays under 48 KB: x takes 36 KB
// there, each ring slot 5 KB).
#define AWQ_GEMM_FRAG_KERNEL(NAME, RT, STAGES, CLUSTER, BOUNDS)                                                    \
    extern "C" __global__ void BOUNDS NAME(                                                                        \
        const float* __restrict__ x, const uint4* __restrict__ frag, const float* __restrict__ zeros,              \
        const float* __restrict__ scales, float* __restrict__ out, int m, int k, int n, int group, int k_per_split) { \
        awq_gemm_frag<RT, STAGES, CLUSTER>(x, frag, zeros, scales, out, m, k, n, group, k_per_split);                \
    }
AWQ_GEMM_FRAG_KERNEL(awq_gemm_frag64_s2_f16x, 4, 2, false, __launch_bounds__(FRAG_THREADS, 2))
AWQ_GEMM_FRAG_KERNEL(awq_gemm_frag64_s3_f16x, 4, 3, false, __launch_bounds__(FRAG_THREADS, 2))
AWQ_GEMM_FRAG_KERNEL(awq_gemm_frag64_s4_f16x, 4, 4, false, __launch_bounds__(FRAG_THREADS, 2))
AWQ_GEMM_FRAG_KERNEL(awq_gemm_frag128_s2_f16x, 8, 2, false, __launch_bounds__(FRAG_THREADS))
// The cluster form (Hopper only: the host launches it there alone), out = y.
AWQ_GEMM_FRAG_KERNEL(awq_gemm_frag64_cluster_f16x, 4, 4, true, __launch_bounds__(FRAG_THREADS, 2))
