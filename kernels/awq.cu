// AWQ int4 matrix product for small batches (GEMV-style), in two launches:
// awq_gemv_partial_f32 computes split-K partial sums, awq_reduce_partials_f32
// adds them in a fixed order (deterministic: no atomics).
//
// Layouts (AutoAWQ WQLinear_GEMM, K inputs, N outputs, group size G):
//   qweight  [K, N/8] u32: word (k, c) holds columns 8c..8c+7 of row k;
//            column 8c + j sits at bits 4 * SLOT[j], SLOT = {0, 4, 1, 5, 2, 6, 3, 7}
//   zeros    [K/G, N] f32 (unpacked at load), scales [K/G, N] f32
//   x        [M, K] f32, M <= AWQ_MAX_M rows per launch (the host loops over chunks)
//   partial  [K / AWQ_ROWS_PER_BLOCK, M, N] f32
//   y        [M, N] f32
// W[k, n] = (q[k, n] - zeros[k / G, n]) * scales[k / G, n]; y = x · W.
//
// Partial kernel: grid (ceil((N/8) / 32), K / AWQ_ROWS_PER_BLOCK), block (32, 4).
// Each thread owns one packed word column (8 outputs); each of the 4 warps takes
// 32 consecutive rows of the block's 128 (G must be a multiple of 32, so the rows
// of a warp share one group); the 4 warps' sums are added in shared memory.
#define AWQ_MAX_M 8
#define AWQ_ROWS_PER_WARP 32
#define AWQ_WARPS 4
#define AWQ_ROWS_PER_BLOCK (AWQ_ROWS_PER_WARP * AWQ_WARPS)

// Bit shift of column 8c + j inside word c (compile-time after unrolling).
#define AWQ_SHIFT(j) (4 * ((j) % 2 == 0 ? (j) / 2 : 4 + (j) / 2))

extern "C" __global__ void awq_gemv_partial_f32(
    const float* __restrict__ x, const unsigned* __restrict__ qweight, const float* __restrict__ zeros,
    const float* __restrict__ scales, float* __restrict__ partial, int m, int k, int n, int group) {
    __shared__ float sums[AWQ_WARPS][AWQ_MAX_M * 8][32];
    const int lane = threadIdx.x;
    const int warp = threadIdx.y;
    const int n8 = n / 8;
    const int word = blockIdx.x * 32 + lane;
    const int row0 = blockIdx.y * AWQ_ROWS_PER_BLOCK + warp * AWQ_ROWS_PER_WARP;
    float acc[AWQ_MAX_M][8];
#pragma unroll
    for (int r = 0; r < AWQ_MAX_M; ++r)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r][j] = 0.0f;
    if (word < n8 && row0 < k) {
        const int g = row0 / group;
        float z[8], s[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            z[j] = zeros[(size_t)g * n + word * 8 + j];
            s[j] = scales[(size_t)g * n + word * 8 + j];
        }
        // All 32 rows' words first, so their loads are in flight together
        // (K is a multiple of 32: the host checks G % 32 == 0 and K % G == 0).
        unsigned packed[AWQ_ROWS_PER_WARP];
        const unsigned* wp = qweight + (size_t)row0 * n8 + word;
#pragma unroll
        for (int i = 0; i < AWQ_ROWS_PER_WARP; ++i) packed[i] = wp[(size_t)i * n8];
#pragma unroll
        for (int i = 0; i < AWQ_ROWS_PER_WARP; ++i) {
            float w[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) w[j] = ((float)((packed[i] >> AWQ_SHIFT(j)) & 0xFu) - z[j]) * s[j];
#pragma unroll
            for (int r = 0; r < AWQ_MAX_M; ++r) {
                if (r < m) {
                    const float xv = x[(size_t)r * k + row0 + i];
#pragma unroll
                    for (int j = 0; j < 8; ++j) acc[r][j] += xv * w[j];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < AWQ_MAX_M; ++r)
#pragma unroll
        for (int j = 0; j < 8; ++j) sums[warp][r * 8 + j][lane] = acc[r][j];
    __syncthreads();
    if (warp == 0 && word < n8) {
        for (int r = 0; r < m; ++r) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                float v = sums[0][r * 8 + j][lane];
                for (int w2 = 1; w2 < AWQ_WARPS; ++w2) v += sums[w2][r * 8 + j][lane];
                partial[((size_t)blockIdx.y * m + r) * n + word * 8 + j] = v;
            }
        }
    }
}

// y[r, col] = sum over splits s (in order) of partial[s, r, col].
// Grid: (ceil(m * n / 256)), block: 256.
extern "C" __global__ void awq_reduce_partials_f32(
    const float* __restrict__ partial, float* __restrict__ y, int splits, int m, int n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)m * n) return;
    float v = 0.0f;
    for (int s = 0; s < splits; ++s) v += partial[(size_t)s * m * n + i];
    y[i] = v;
}
