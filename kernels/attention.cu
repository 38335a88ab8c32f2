// Paged causal attention, prefill and decode alike: each query token attends
// to positions 0..=position of its own sequence, read through the block table.
// q            [T, H * D] f32 (rotated)
// k_cache, v_cache [blocks * block_size, KVH, D] f32
// block_tables [S, max_blocks] u32, seq_of [T] u32 (row of block_tables), positions [T] u32
// out          [T, H * D] f32
// Grid: (T, ceil(H / 4)), block: 128 = 4 warps, one (token, head) per warp.
// Lane l holds dimensions l, l + 32, ... (D % 32 == 0 and D <= 128, checked on
// the host). One pass with an online softmax: per position, the warp adds up
// q . k (coalesced row loads, shuffle reduction), then rescales its running
// sum of v rows; no shared memory and no block-wide barrier.
#define ATTN_MAX_DIMS_PER_LANE 4

extern "C" __global__ void paged_attention_f32(
    const float* __restrict__ q, const float* __restrict__ k_cache, const float* __restrict__ v_cache,
    const unsigned* __restrict__ block_tables, const unsigned* __restrict__ seq_of,
    const unsigned* __restrict__ positions, float* __restrict__ out, int heads, int kv_heads, int head_dim,
    int block_size, int max_blocks, float scale) {
    const int lane = threadIdx.x % LHAMA_WARP;
    const int t = blockIdx.x;
    const int h = blockIdx.y * (blockDim.x / LHAMA_WARP) + threadIdx.x / LHAMA_WARP;
    if (h >= heads) return;
    const int kvh = h / (heads / kv_heads);
    const int kv_dim = kv_heads * head_dim;
    const int dims = head_dim / LHAMA_WARP;
    const int ctx = (int)positions[t] + 1;
    const unsigned* table = block_tables + (size_t)seq_of[t] * max_blocks;
    const float* qrow = q + (size_t)t * heads * head_dim + h * head_dim;
    float qv[ATTN_MAX_DIMS_PER_LANE], acc[ATTN_MAX_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; ++i) {
        qv[i] = i < dims ? qrow[i * LHAMA_WARP + lane] : 0.0f;
        acc[i] = 0.0f;
    }
    float running_max = LHAMA_NEG_INF, running_sum = 0.0f;
    for (int p = 0; p < ctx; ++p) {
        const size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
        const float* krow = k_cache + slot * kv_dim + kvh * head_dim;
        const float* vrow = v_cache + slot * kv_dim + kvh * head_dim;
        float part = 0.0f;
        float vv[ATTN_MAX_DIMS_PER_LANE];
#pragma unroll
        for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; ++i) {
            if (i < dims) {
                part += qv[i] * krow[i * LHAMA_WARP + lane];
                vv[i] = vrow[i * LHAMA_WARP + lane];
            }
        }
        const float score = warp_sum_f32(part) * scale;
        const float new_max = fmaxf(running_max, score);
        const float correction = expf(running_max - new_max);
        const float weight = expf(score - new_max);
        running_sum = running_sum * correction + weight;
#pragma unroll
        for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; ++i) {
            if (i < dims) acc[i] = acc[i] * correction + weight * vv[i];
        }
        running_max = new_max;
    }
    float* orow = out + (size_t)t * heads * head_dim + h * head_dim;
#pragma unroll
    for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; ++i) {
        if (i < dims) orow[i * LHAMA_WARP + lane] = acc[i] / running_sum;
    }
}
