// Paged causal attention, prefill and decode alike: each query token attends
// to positions 0..=position of its own sequence, read through the block table.
// q            [T, H * D] f32 (rotated)
// k_cache, v_cache [blocks * block_size, KVH, D] f32
// block_tables [S, max_blocks] u32, seq_of [T] u32 (row of block_tables), positions [T] u32
// out          [T, H * D] f32
// Grid: (T, H), block: 256, dynamic shared memory: (max(max context, 256) + D + 32)
// floats. D <= 256 and 256 % D == 0 (checked on the host).
extern "C" __global__ void paged_attention_f32(
    const float* __restrict__ q, const float* __restrict__ k_cache, const float* __restrict__ v_cache,
    const unsigned* __restrict__ block_tables, const unsigned* __restrict__ seq_of,
    const unsigned* __restrict__ positions, float* __restrict__ out, int heads, int kv_heads, int head_dim,
    int block_size, int max_blocks, float scale) {
    extern __shared__ float smem[];
    const int t = blockIdx.x, h = blockIdx.y;
    const int kvh = h / (heads / kv_heads);
    const int kv_dim = kv_heads * head_dim;
    const int ctx = (int)positions[t] + 1;
    const unsigned* table = block_tables + (size_t)seq_of[t] * max_blocks;
    float* qs = smem;                 // [D]
    float* scratch = smem + head_dim; // [32]
    float* scores = scratch + 32;     // [ctx]
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[(size_t)t * heads * head_dim + h * head_dim + d];
    __syncthreads();
    float local_max = LHAMA_NEG_INF;
    for (int p = threadIdx.x; p < ctx; p += blockDim.x) {
        const size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
        const float* krow = k_cache + slot * kv_dim + kvh * head_dim;
        float dot = 0.0f;
#pragma unroll 16
        for (int d = 0; d < head_dim; ++d) dot += qs[d] * krow[d];
        dot *= scale;
        scores[p] = dot;
        local_max = fmaxf(local_max, dot);
    }
    const float max_score = block_reduce_f32<true>(local_max, scratch);
    float local_sum = 0.0f;
    for (int p = threadIdx.x; p < ctx; p += blockDim.x) {
        const float e = expf(scores[p] - max_score);
        scores[p] = e;
        local_sum += e;
    }
    const float sum = block_reduce_f32<false>(local_sum, scratch);
    __syncthreads();
    // Output: thread (part, d) sums positions p = part, part + parts, ...
    const int parts = blockDim.x / head_dim;
    const int d = threadIdx.x % head_dim, part = threadIdx.x / head_dim;
    float acc = 0.0f;
    if (part < parts) {
#pragma unroll 8
        for (int p = part; p < ctx; p += parts) {
            const size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
            acc += scores[p] * v_cache[slot * kv_dim + kvh * head_dim + d];
        }
    }
    __syncthreads();
    // Reuse the score buffer's head for the parts' partial sums, added in order.
    float* partials = scores;
    if (part < parts) partials[part * head_dim + d] = acc;
    __syncthreads();
    if (threadIdx.x < head_dim) {
        float v = 0.0f;
        for (int i = 0; i < parts; ++i) v += partials[i * head_dim + threadIdx.x];
        out[(size_t)t * heads * head_dim + h * head_dim + threadIdx.x] = v / sum;
    }
}
