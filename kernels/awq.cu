// AWQ int4 matrix product for small batches (GEMV-style). Blocks compute
// split-K partial sums; for 1 or 2 rows the last block of each column tile to
// finish (an atomic counter per tile) adds them up in split order, in the same
// launch; for more rows a second kernel does. Either way the order is fixed,
// so results do not depend on which block finished last.
//
// Layouts (AutoAWQ WQLinear_GEMM, K inputs, N outputs, group size G):
//   qweight  [K, N/8] u32: word (k, c) holds columns 8c..8c+7 of row k;
//            column 8c + j sits at bits 4 * SLOT[j], SLOT = {0, 4, 1, 5, 2, 6, 3, 7}
//   zeros    [K/G, N] f32 (unpacked at load), scales [K/G, N] f32
//   x        [m_valid, K] f32: a variant for M in {1, 2, 4, 8} rows takes up to M
//            rows (m_valid); the host picks the smallest that fits, in chunks of 8
//   partial  [K / AWQ_ROWS_PER_BLOCK, m_valid, N] f32 scratch
//   y        [m_valid, N] f32
//   counters [ceil(N / 256)] u32, zero between launches (each launch re-arms them)
// W[k, n] = (q[k, n] - zeros[k / G, n]) * scales[k / G, n]; y = x · W.
//
// Partial kernels: grid (ceil((N/8) / 32), K / AWQ_ROWS_PER_BLOCK), block (32, WARPS).
// Each thread owns one packed word column (8 outputs); each warp takes ROWS
// consecutive rows of the block's 128 (G is a multiple of 32, so a warp's rows
// share one group); the warps' sums are added in shared memory in a fixed order.
// One instantiation per batch-row count M (1, 2, 4, 8): with M fixed at compile
// time no work is spent on absent rows, and small M get more, shorter warps
// (more warps in flight hide more memory latency).
// AWQ_MAX_M, AWQ_ROWS_PER_BLOCK: defined by the host (kernels::shared_defines).

// Bit shift of column 8c + j inside word c (compile-time after unrolling).
#define AWQ_SHIFT(j) (4 * ((j) % 2 == 0 ? (j) / 2 : 4 + (j) / 2))

// SILU: x is [m_valid, 2K] gate | up (the MLP's gate_up product) and the
// product's input is silu(gate) * up, computed as the row is read (the same
// expression as silu_mul_f32, so the same values bit for bit): the down
// projection without a silu_mul launch before it.
// CLUSTER (Hopper, 1-2 rows, at most 8 splits): the launch makes the K
// splits of a column tile one thread block cluster (1, splits, 1); each block
// leaves its sums in shared memory and, after a cluster barrier, adds up a
// share of the tile's columns across the cluster's blocks in split order
// from 0.0f (the fused path's order: the same bits), through distributed
// shared memory, and writes y. No partial sums, counters or atomics.
template <int M, int ROWS, int WARPS, bool SILU, bool CLUSTER = false>
__device__ __forceinline__ void awq_gemv_partial(
    const float* __restrict__ x, const unsigned* __restrict__ qweight, const float* __restrict__ zeros,
    const float* __restrict__ scales, float* __restrict__ partial, float* __restrict__ y,
    unsigned* __restrict__ counters, int k, int n, int group, int fused, int m_valid) {
    static_assert(ROWS * WARPS == AWQ_ROWS_PER_BLOCK, "a block covers 128 rows");
    __shared__ float sums[WARPS][M * 8][32];
    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int n8 = n / 8;
    const int word = blockIdx.x * 32 + lane;
    const int row0 = blockIdx.y * AWQ_ROWS_PER_BLOCK + warp * ROWS;
    float acc[M][8];
#pragma unroll
    for (int r = 0; r < M; ++r)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r][j] = 0.0f;
    // Weights first, before waiting for the previous kernel (they are
    // constant): all rows' words in flight together (K is a multiple of 32:
    // the host checks G % 32 == 0 and K % G == 0).
    const bool active = word < n8 && row0 < k;
    float z[8], s[8];
    unsigned packed[ROWS];
    if (active) {
        const int g = row0 / group;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            z[j] = zeros[(size_t)g * n + word * 8 + j];
            s[j] = scales[(size_t)g * n + word * 8 + j];
        }
        const unsigned* wp = qweight + (size_t)row0 * n8 + word;
#pragma unroll
        for (int i = 0; i < ROWS; ++i) packed[i] = wp[(size_t)i * n8];
    }
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    if (active) {
        float xv[M][ROWS];
#pragma unroll
        for (int r = 0; r < M; ++r)
#pragma unroll
            for (int i = 0; i < ROWS; ++i) {
                // Spare rows: a copy of the last, never written.
                const size_t rr = (size_t)min(r, m_valid - 1);
                if (SILU) {
                    const float g = x[rr * 2 * k + row0 + i];
                    const float u = x[rr * 2 * k + k + row0 + i];
                    xv[r][i] = g / (1.0f + expf(-g)) * u;
                } else {
                    xv[r][i] = x[rr * k + row0 + i];
                }
            }
#pragma unroll
        for (int i = 0; i < ROWS; ++i) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float w = ((float)((packed[i] >> AWQ_SHIFT(j)) & 0xFu) - z[j]) * s[j];
#pragma unroll
                for (int r = 0; r < M; ++r) acc[r][j] += xv[r][i] * w;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < M; ++r)
#pragma unroll
        for (int j = 0; j < 8; ++j) sums[warp][r * 8 + j][lane] = acc[r][j];
    __syncthreads();
    // Every thread of the block adds up some of the (row, column) sums.
    const int tid = warp * 32 + lane;
    if constexpr (CLUSTER) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        __shared__ float mine[M * 8][32];
        for (int e = tid; e < m_valid * 8 * 32; e += 32 * WARPS) {
            const int rj = e / 32, l = e % 32;
            float v = 0.0f;
#pragma unroll
            for (int w2 = 0; w2 < WARPS; ++w2) v += sums[w2][rj][l];
            mine[rj][l] = v;
        }
        cluster_barrier();
        const int splits = (int)cluster_size(), rank = (int)cluster_rank();
        const int total = m_valid * 8 * 32, share = (total + splits - 1) / splits;
        const int e = rank * share + tid;
        if (tid < share && e < total) {
            const int rj = e / 32, l = e % 32;
            const int w = blockIdx.x * 32 + l;
            if (w < n8) {
                // Every rank's sum in flight, then added in rank order.
                float p[CLUSTER_MAX];
#pragma unroll
                for (int z = 0; z < CLUSTER_MAX; ++z)
                    if (z < splits) p[z] = ld_cluster_f32(cluster_map(&mine[rj][l], (unsigned)z));
                float v = 0.0f;
#pragma unroll
                for (int z = 0; z < CLUSTER_MAX; ++z)
                    if (z < splits) v += p[z];
                y[(size_t)(rj / 8) * n + w * 8 + rj % 8] = v;
            }
        }
        // No block leaves (its shared memory with it) while others read it.
        cluster_barrier();
#else
        __trap();
#endif
        return;
    }
    for (int e = tid; e < m_valid * 8 * 32; e += 32 * WARPS) {
        const int rj = e / 32, l = e % 32;
        const int w = blockIdx.x * 32 + l;
        if (w < n8) {
            float v = 0.0f;
#pragma unroll
            for (int w2 = 0; w2 < WARPS; ++w2) v += sums[w2][rj][l];
            partial[((size_t)blockIdx.y * m_valid + rj / 8) * n + w * 8 + rj % 8] = v;
        }
    }
    // With `fused`, the last block of this column tile to finish adds the
    // splits up, in split order (deterministic), and writes y; then it re-arms
    // the counter. Without (many rows: one block per tile would be too slow),
    // awq_reduce_partials_f32 does it in a second launch.
    if (!fused) return;
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(&counters[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int cols = min(256, n - blockIdx.x * 256);
    for (int e = tid; e < m_valid * cols; e += 32 * WARPS) {
        const int r = e / cols, c = blockIdx.x * 256 + e % cols;
        float v = 0.0f;
        const int splits = (int)gridDim.y;
#pragma unroll 8
        for (int split = 0; split < splits; ++split) v += __ldcg(&partial[((size_t)split * m_valid + r) * n + c]);
        y[(size_t)r * n + c] = v;
    }
    if (tid == 0) counters[blockIdx.x] = 0u;
}

#define AWQ_GEMV_KERNEL(M, ROWS, WARPS)                                                                        \
    extern "C" __global__ void awq_gemv_partial_m##M##_f32(                                                   \
        const float* __restrict__ x, const unsigned* __restrict__ qweight, const float* __restrict__ zeros,   \
        const float* __restrict__ scales, float* __restrict__ partial, float* __restrict__ y,                 \
        unsigned* __restrict__ counters, int k, int n, int group, int fused, int m_valid) {                   \
        awq_gemv_partial<M, ROWS, WARPS, false>(x, qweight, zeros, scales, partial, y, counters, k, n, group,  \
                                                fused, m_valid);                                               \
    }                                                                                                          \
    extern "C" __global__ void awq_gemv_silu_m##M##_f32(                                                      \
        const float* __restrict__ x, const unsigned* __restrict__ qweight, const float* __restrict__ zeros,   \
        const float* __restrict__ scales, float* __restrict__ partial, float* __restrict__ y,                 \
        unsigned* __restrict__ counters, int k, int n, int group, int fused, int m_valid) {                   \
        awq_gemv_partial<M, ROWS, WARPS, true>(x, qweight, zeros, scales, partial, y, counters, k, n, group,   \
                                               fused, m_valid);                                                \
    }

// The cluster form of the plain GEMV for 1 and 2 rows (`fused` and the
// counters unused).
#define AWQ_GEMV_CLUSTER_KERNEL(M, ROWS, WARPS)                                                               \
    extern "C" __global__ void awq_gemv_cluster_m##M##_f32(                                                   \
        const float* __restrict__ x, const unsigned* __restrict__ qweight, const float* __restrict__ zeros,   \
        const float* __restrict__ scales, float* __restrict__ partial, float* __restrict__ y,                 \
        unsigned* __restrict__ counters, int k, int n, int group, int fused, int m_valid) {                   \
        awq_gemv_partial<M, ROWS, WARPS, false, true>(x, qweight, zeros, scales, partial, y, counters, k, n,  \
                                                      group, fused, m_valid);                                  \
    }

AWQ_GEMV_KERNEL(1, 8, 16)
AWQ_GEMV_KERNEL(2, 8, 16)
AWQ_GEMV_KERNEL(4, 16, 8)
AWQ_GEMV_KERNEL(8, 32, 4)
AWQ_GEMV_CLUSTER_KERNEL(1, 8, 16)
AWQ_GEMV_CLUSTER_KERNEL(2, 8, 16)

// y[r, col] = sum over splits s (in order) of partial[s, r, col].
// Grid: (ceil(m * n / 256)), block: 256.
extern "C" __global__ void awq_reduce_partials_f32(
    const float* __restrict__ partial, float* __restrict__ y, int splits, int m, int n) {
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)m * n) return;
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += partial[(size_t)s * m * n + i];
    y[i] = v;
}
