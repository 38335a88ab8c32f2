// Paged causal attention, prefill and decode alike: each query token attends
// to positions 0..=position of its own sequence, read through the block table.
// Split over the context (flash-decoding) so that even one token and a few
// heads keep many SMs busy, in two launches:
//
// paged_attention_partial_f32: grid (T, H, P_max), block 256 = 8 warps.
//   Block (t, h, z) handles positions [z * ATTN_PART, (z + 1) * ATTN_PART) of
//   token t's context (nothing when that starts past it), and writes the
//   partition's max score m, its sum l of exp(score - m) and its unnormalized
//   output acc[D] = sum exp(score - m) * v into work[t, h, z, 0..D+2].
// paged_attention_combine_f32: grid (T, H), block D threads: rescales the
//   partitions to a common max and normalizes, in partition order.
//
// q            [T, H * D] f32 (rotated)
// k_cache, v_cache [blocks * block_size, KVH, D] f32
// block_tables [S, max_blocks] u32, seq_of [T] u32 (row of block_tables), positions [T] u32
// work         [T, H, P_max, D + 2] f32
// out          [T, H * D] f32
// D % 32 == 0, D <= 128 (checked on the host). Every K and V row is read by
// one warp with lanes over dimensions (coalesced); each warp takes 8 positions.
#define ATTN_WARPS 8
#define ATTN_PER_WARP 8
#define ATTN_PART (ATTN_WARPS * ATTN_PER_WARP)
#define ATTN_MAX_DIMS_PER_LANE 4

extern "C" __global__ void paged_attention_partial_f32(
    const float* __restrict__ q, const float* __restrict__ k_cache, const float* __restrict__ v_cache,
    const unsigned* __restrict__ block_tables, const unsigned* __restrict__ seq_of,
    const unsigned* __restrict__ positions, float* __restrict__ work, int heads, int kv_heads, int head_dim,
    int block_size, int max_blocks, int max_parts, float scale) {
    __shared__ float scores[ATTN_PART];
    __shared__ float partial[ATTN_WARPS][128];
    __shared__ float scratch[32];
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const int lane = threadIdx.x % LHAMA_WARP;
    const int warp = threadIdx.x / LHAMA_WARP;
    const int t = blockIdx.x, h = blockIdx.y, z = blockIdx.z;
    const int ctx = (int)positions[t] + 1;
    const int start = z * ATTN_PART;
    if (start >= ctx) return;  // uniform across the block
    const int end = min(ctx, start + ATTN_PART);
    const int kvh = h / (heads / kv_heads);
    const int kv_dim = kv_heads * head_dim;
    const int dims = head_dim / LHAMA_WARP;
    const unsigned* table = block_tables + (size_t)seq_of[t] * max_blocks;
    const float* qrow = q + (size_t)t * heads * head_dim + h * head_dim;
    float qv[ATTN_MAX_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; ++i) qv[i] = i < dims ? qrow[i * LHAMA_WARP + lane] * scale : 0.0f;

    // Scores of this warp's positions, all rows' loads in flight together.
    const int first = start + warp * ATTN_PER_WARP;
    float part[ATTN_PER_WARP];
#pragma unroll
    for (int u = 0; u < ATTN_PER_WARP; ++u) {
        const int p = first + u;
        part[u] = 0.0f;
        if (p < end) {
            const size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
            const float* krow = k_cache + slot * kv_dim + kvh * head_dim;
#pragma unroll
            for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; ++i)
                if (i < dims) part[u] += qv[i] * krow[i * LHAMA_WARP + lane];
        }
    }
    float local_max = LHAMA_NEG_INF;
#pragma unroll
    for (int u = 0; u < ATTN_PER_WARP; ++u) {
        const float sc = warp_sum_f32(part[u]);
        if (first + u < end) {
            if (lane == 0) scores[first + u - start] = sc;
            local_max = fmaxf(local_max, sc);
        }
    }
    const float m = block_reduce_f32<true>(local_max, scratch);
    float local_sum = 0.0f;
    for (int i = threadIdx.x; i < end - start; i += blockDim.x) {
        const float e = expf(scores[i] - m);
        scores[i] = e;
        local_sum += e;
    }
    const float l = block_reduce_f32<false>(local_sum, scratch);
    __syncthreads();

    // Weighted V rows of this warp's positions.
    float acc[ATTN_MAX_DIMS_PER_LANE] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int u = 0; u < ATTN_PER_WARP; ++u) {
        const int p = first + u;
        if (p < end) {
            const size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
            const float* vrow = v_cache + slot * kv_dim + kvh * head_dim;
            const float w = scores[p - start];
#pragma unroll
            for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; ++i)
                if (i < dims) acc[i] += w * vrow[i * LHAMA_WARP + lane];
        }
    }
#pragma unroll
    for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; ++i)
        if (i < dims) partial[warp][i * LHAMA_WARP + lane] = acc[i];
    __syncthreads();
    float* dst = work + (((size_t)t * heads + h) * max_parts + z) * (head_dim + 2);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) v += partial[w][d];
        dst[d] = v;
    }
    if (threadIdx.x == 0) {
        dst[head_dim] = m;
        dst[head_dim + 1] = l;
    }
}

extern "C" __global__ void paged_attention_combine_f32(
    const float* __restrict__ work, const unsigned* __restrict__ positions, float* __restrict__ out, int heads,
    int head_dim, int max_parts) {
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const int t = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const int parts = ((int)positions[t] + ATTN_PART) / ATTN_PART;  // ceil((pos + 1) / PART)
    const float* src = work + ((size_t)t * heads + h) * max_parts * (head_dim + 2);
    float m = LHAMA_NEG_INF;
    for (int z = 0; z < parts; ++z) m = fmaxf(m, src[z * (head_dim + 2) + head_dim]);
    float l = 0.0f, v = 0.0f;
    for (int z = 0; z < parts; ++z) {
        const float* p = src + z * (head_dim + 2);
        const float c = expf(p[head_dim] - m);
        l += p[head_dim + 1] * c;
        if (d < head_dim) v += p[d] * c;
    }
    if (d < head_dim) out[(size_t)t * heads * head_dim + h * head_dim + d] = v / l;
}
