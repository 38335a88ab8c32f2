// Paged causal attention: each query token attends to positions
// 0..=position of its own sequence, read through the block table. Split over
// the context (flash-decoding) so that even one token and a few heads keep
// many SMs busy: a partial kernel per 64-position partition
// (paged_attention_prefill_f32 below, or the fused paged_attention_decode_f32
// for decode steps) writes the partition's max score m, its sum l of
// exp(score - m) and its unnormalized output acc[D] = sum exp(score - m) * v
// into work[t, h, z, 0..D+2], and the partitions are combined:
//
// paged_attention_combine_f32: grid (T, H), block D threads: rescales the
//   partitions to a common max and normalizes, in partition order.
//
// q            [T, H * D] f32 (rotated)
// k_cache, v_cache [blocks * block_size, KVH, D] f32, or f16 (the _f16kv kernels)
// block_tables [S, max_blocks] u32, seq_of [T] u32 (row of block_tables), positions [T] u32
// work         [T, H, P_max, D + 2] f32
// out          [T, H * D] f32
// D % 32 == 0, D <= 128 (checked on the host).
#define ATTN_WARPS 8
#define ATTN_PER_WARP 8
#define ATTN_PART (ATTN_WARPS * ATTN_PER_WARP)
#define ATTN_MAX_DIMS_PER_LANE 4

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

// Decode steps (one new token per sequence): rotary embedding, the K/V write,
// the partition partials and their combine in one launch; each warp takes 8
// positions of its block's partition, lanes over dimensions (coalesced rows). Each block rotates its head's q from the raw qkv row; the blocks
// of the last partition also rotate the new token's k and use it (and its
// v) from registers for the newest position, and the first q head of each
// KV head writes them into the cache slot (no block reads that slot here).
// The last block of a (token, head) to finish (an atomic counter, re-armed
// after use) combines the partitions, in partition order.
//
// qkv      [T, (H + 2 * KVH) * D] f32, unrotated
// cos, sin [max_pos, D/2] f32; slots [T] u32 (the new token's slot)
// counters [T * H] u32, zero between launches
// Others as above. D is 32, 64 or 128 (lanes hold D / 32 consecutive
// dimensions; rotation pairs are lane and lane ^ 16).
// Grid: (T, H, Z), Z = the partitions of the batch's longest context (the
// host captures a graph per batch size and Z); blocks past a token's own
// context return at once.
// Lane l holds the `dims` consecutive dimensions [l * dims, (l + 1) * dims)
// of a head (so K/V rows load as one vector per lane). Dimension d pairs
// with d +- D/2 = d +- 16 * dims: the same slot of lane l ^ 16.
template <int DIMS>
__device__ __forceinline__ void rope_lane(float (&x)[DIMS], const float (&c)[DIMS], const float (&s)[DIMS], int lane) {
#pragma unroll
    for (int i = 0; i < DIMS; ++i) {
        const float partner = __shfl_xor_sync(0xffffffffu, x[i], 16);
        x[i] = lane < 16 ? x[i] * c[i] - partner * s[i] : x[i] * c[i] + partner * s[i];
    }
}

// One lane's `dims` consecutive elements of a K/V row as f32, in one load
// (16, 8 or 4 bytes; the host keeps rows aligned: head_dim % 32 == 0).
template <int DIMS>
__device__ __forceinline__ void load_dims(const float* p, float (&x)[DIMS]) {
    if constexpr (DIMS == 4) {
        const float4 v = *reinterpret_cast<const float4*>(p);
        x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
    } else if constexpr (DIMS == 2) {
        const float2 v = *reinterpret_cast<const float2*>(p);
        x[0] = v.x, x[1] = v.y;
    } else {
        x[0] = *p;
    }
}

template <int DIMS>
__device__ __forceinline__ void load_dims(const __half* p, float (&x)[DIMS]) {
    if constexpr (DIMS == 4) {
        const uint2 v = *reinterpret_cast<const uint2*>(p);
        const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&v.x));
        const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&v.y));
        x[0] = a.x, x[1] = a.y, x[2] = b.x, x[3] = b.y;
    } else if constexpr (DIMS == 2) {
        const float2 a = __half22float2(*reinterpret_cast<const __half2*>(p));
        x[0] = a.x, x[1] = a.y;
    } else {
        x[0] = __half2float(*p);
    }
}

template <typename KV, int DIMS>
__device__ __forceinline__ void paged_attention_decode(
    const float* __restrict__ qkv, const unsigned* __restrict__ positions, const float* __restrict__ cos_table,
    const float* __restrict__ sin_table, const unsigned* __restrict__ slots, KV* __restrict__ k_cache,
    KV* __restrict__ v_cache, const unsigned* __restrict__ block_tables, const unsigned* __restrict__ seq_of,
    float* __restrict__ work, unsigned* __restrict__ counters, float* __restrict__ out, int heads, int kv_heads,
    int head_dim, int block_size, int max_blocks, int max_parts, float scale) {
    __shared__ float scores[ATTN_PART];
    __shared__ float partial[ATTN_WARPS][128];
    __shared__ float scratch[32];
    __shared__ bool last_block;
    const int lane = threadIdx.x % LHAMA_WARP;
    const int warp = threadIdx.x / LHAMA_WARP;
    const int t = blockIdx.x, h = blockIdx.y, z = blockIdx.z;
    // Before waiting on the previous kernel (which writes only qkv): the
    // host-written index arrays, the rotary tables, and the K/V of every
    // earlier position (written by earlier steps; this step writes only the
    // newest slot, here).
    const int pos = (int)positions[t];
    const int ctx = pos + 1;
    const int start = z * ATTN_PART;
    if (start >= ctx) {  // uniform across the block
        LHAMA_GRID_WAIT();
        return;
    }
    const int end = min(ctx, start + ATTN_PART);
    const int parts = (ctx + ATTN_PART - 1) / ATTN_PART;
    const int group = heads / kv_heads;
    const int kvh = h / group;
    const int kv_dim = kv_heads * head_dim;
    constexpr int dims = DIMS;  // head_dim / 32, checked on the host
    const int half = head_dim / 2;
    const unsigned* table = block_tables + (size_t)seq_of[t] * max_blocks;
    const int first = start + warp * ATTN_PER_WARP;
    float kr[ATTN_PER_WARP][DIMS], vr[ATTN_PER_WARP][DIMS];
#pragma unroll
    for (int u = 0; u < ATTN_PER_WARP; ++u) {
        const int p = first + u;
        const size_t slot = p < pos ? (size_t)table[p / block_size] * block_size + p % block_size : 0;
        if (p < pos) {
            load_dims<DIMS>(&k_cache[slot * kv_dim + kvh * head_dim + lane * dims], kr[u]);
            load_dims<DIMS>(&v_cache[slot * kv_dim + kvh * head_dim + lane * dims], vr[u]);
        } else {
#pragma unroll
            for (int i = 0; i < DIMS; ++i) kr[u][i] = vr[u][i] = 0.0f;
        }
    }
    float cv[DIMS], sv[DIMS];
#pragma unroll
    for (int i = 0; i < DIMS; ++i) {
        const int j = (lane * dims + i) % half;
        cv[i] = i < dims ? cos_table[(size_t)pos * half + j] : 0.0f;
        sv[i] = i < dims ? sin_table[(size_t)pos * half + j] : 0.0f;
    }
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();

    const float* row = qkv + (size_t)t * (heads + 2 * kv_heads) * head_dim;
    float qv[DIMS] = {};
#pragma unroll
    for (int i = 0; i < DIMS; ++i)
        if (i < dims) qv[i] = row[h * head_dim + lane * dims + i];
    rope_lane<DIMS>(qv, cv, sv, lane);
#pragma unroll
    for (int i = 0; i < DIMS; ++i) qv[i] *= scale;
    // The newest position's k (rotated) and v, in the last partition.
    const bool newest_here = end == ctx;
    float kn[DIMS] = {};
    float vn[DIMS] = {};
    if (newest_here) {
#pragma unroll
        for (int i = 0; i < DIMS; ++i)
            if (i < dims) {
                kn[i] = row[(heads + kvh) * head_dim + lane * dims + i];
                vn[i] = row[(heads + kv_heads + kvh) * head_dim + lane * dims + i];
            }
        rope_lane<DIMS>(kn, cv, sv, lane);
        // As the cache holds them.
#pragma unroll
        for (int i = 0; i < DIMS; ++i) {
            kn[i] = kv_round(kn[i], k_cache);
            vn[i] = kv_round(vn[i], v_cache);
        }
        if (h % group == 0 && warp == 0) {
            const size_t slot = slots[t];
#pragma unroll
            for (int i = 0; i < DIMS; ++i)
                if (i < dims) {
                    kv_store(&k_cache[slot * kv_dim + kvh * head_dim + lane * dims + i], kn[i]);
                    kv_store(&v_cache[slot * kv_dim + kvh * head_dim + lane * dims + i], vn[i]);
                }
        }
    }

    float part[ATTN_PER_WARP];
#pragma unroll
    for (int u = 0; u < ATTN_PER_WARP; ++u) {
        const int p = first + u;
        part[u] = 0.0f;
#pragma unroll
        for (int i = 0; i < DIMS; ++i) part[u] += qv[i] * (p == pos ? kn[i] : kr[u][i]);
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

    float acc[DIMS] = {};
#pragma unroll
    for (int u = 0; u < ATTN_PER_WARP; ++u) {
        const int p = first + u;
        if (p <= pos) {
            const float w = scores[p - start];
#pragma unroll
            for (int i = 0; i < DIMS; ++i) acc[i] += w * (p == pos ? vn[i] : vr[u][i]);
        }
    }
#pragma unroll
    for (int i = 0; i < DIMS; ++i)
        if (i < dims) partial[warp][lane * dims + i] = acc[i];
    __syncthreads();
    float* o = out + (size_t)t * heads * head_dim + h * head_dim;
    if (parts == 1) {  // the whole context in this block: normalize and done
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
            float v = 0.0f;
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; ++w) v += partial[w][d];
            o[d] = v / l;
        }
        return;
    }
    float* base = work + ((size_t)t * heads + h) * max_parts * (head_dim + 2);
    float* dst = base + (size_t)z * (head_dim + 2);
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
    // The last partition block of this (token, head) to finish combines.
    __threadfence();
    __syncthreads();
    unsigned* counter = counters + (size_t)t * heads + h;
    if (threadIdx.x == 0) last_block = atomicAdd(counter, 1u) == (unsigned)parts - 1u;
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float mx = LHAMA_NEG_INF;
        for (int zz = 0; zz < parts; ++zz) mx = fmaxf(mx, __ldcg(&base[zz * (head_dim + 2) + head_dim]));
        float ls = 0.0f, v = 0.0f;
        for (int zz = 0; zz < parts; ++zz) {
            const float* pz = base + zz * (head_dim + 2);
            const float cf = expf(__ldcg(&pz[head_dim]) - mx);
            ls += __ldcg(&pz[head_dim + 1]) * cf;
            v += __ldcg(&pz[d]) * cf;
        }
        o[d] = v / ls;
    }
    if (threadIdx.x == 0) *counter = 0u;
}

#define LHAMA_DECODE_PARAMS(KV)                                                                                    \
    const float *__restrict__ qkv, const unsigned *__restrict__ positions, const float *__restrict__ cos_table,     \
        const float *__restrict__ sin_table, const unsigned *__restrict__ slots, KV *__restrict__ k_cache,          \
        KV *__restrict__ v_cache, const unsigned *__restrict__ block_tables, const unsigned *__restrict__ seq_of,   \
        float *__restrict__ work, unsigned *__restrict__ counters, float *__restrict__ out, int heads, int kv_heads, \
        int head_dim, int block_size, int max_blocks, int max_parts, float scale
#define LHAMA_DECODE_ARGS                                                                                      \
    qkv, positions, cos_table, sin_table, slots, k_cache, v_cache, block_tables, seq_of, work, counters, out, \
        heads, kv_heads, head_dim, block_size, max_blocks, max_parts, scale

// One kernel per cache type and head size (D = 32 * DIMS): registers sized
// for the head, not for the largest one.
#define LHAMA_DECODE_KERNEL(NAME, KV, DIMS)                          \
    extern "C" __global__ void NAME(LHAMA_DECODE_PARAMS(KV)) {       \
        paged_attention_decode<KV, DIMS>(LHAMA_DECODE_ARGS);         \
    }
LHAMA_DECODE_KERNEL(paged_attention_decode_f32_d32, float, 1)
LHAMA_DECODE_KERNEL(paged_attention_decode_f32_d64, float, 2)
LHAMA_DECODE_KERNEL(paged_attention_decode_f32_d128, float, 4)
LHAMA_DECODE_KERNEL(paged_attention_decode_f16kv_d32, __half, 1)
LHAMA_DECODE_KERNEL(paged_attention_decode_f16kv_d64, __half, 2)
LHAMA_DECODE_KERNEL(paged_attention_decode_f16kv_d128, __half, 4)

// Steps with prompt tokens: the partition partials, combined by
// paged_attention_combine_f32. A block takes a tile of up to ATTN_TILE
// consecutive tokens of one sequence (a decode token is a tile of one) and
// loads each 32-key slice of its partition into shared memory once for all
// of them.
//
// tiles [num_tiles, 2] u32: first token index and token count (<= ATTN_TILE)
//       of each tile; a tile's tokens are consecutive positions of one sequence.
// Grid: (num_tiles, H, P_max), block 256 = 8 warps, 2 query tokens a warp.
// Keys sit transposed in shared memory (lanes read consecutive keys) and
// values row-major (lanes read consecutive dimensions): no bank conflicts.
#define ATTN_TILE 16
#define ATTN_SLICE 32

template <typename KV>
__device__ __forceinline__ void paged_attention_prefill(
    const float* __restrict__ q, const KV* __restrict__ k_cache, const KV* __restrict__ v_cache,
    const unsigned* __restrict__ block_tables, const unsigned* __restrict__ seq_of,
    const unsigned* __restrict__ positions, const unsigned* __restrict__ tiles, float* __restrict__ work, int heads,
    int kv_heads, int head_dim, int block_size, int max_blocks, int max_parts, float scale) {
    __shared__ float kt[128][ATTN_SLICE + 1];  // [dim][key]
    __shared__ float vs[ATTN_SLICE][128];      // [key][dim]
    __shared__ float qs[ATTN_TILE][128];
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const int lane = threadIdx.x % LHAMA_WARP, warp = threadIdx.x / LHAMA_WARP;
    const int h = blockIdx.y, z = blockIdx.z;
    const int t0 = (int)tiles[2 * blockIdx.x], count = (int)tiles[2 * blockIdx.x + 1];
    const int pos0 = (int)positions[t0];
    const int start = z * ATTN_PART;
    if (start > pos0 + count - 1) return;  // the whole partition is past every query: uniform
    const int kvh = h / (heads / kv_heads);
    const int kv_dim = kv_heads * head_dim;
    const int dims = head_dim / LHAMA_WARP;
    const unsigned* table = block_tables + (size_t)seq_of[t0] * max_blocks;
    for (int e = threadIdx.x; e < count * head_dim; e += blockDim.x)
        qs[e / head_dim][e % head_dim] = q[(size_t)(t0 + e / head_dim) * heads * head_dim + h * head_dim + e % head_dim] * scale;

    // Each warp: queries 2 * warp and 2 * warp + 1 of the tile (if present),
    // an online softmax over the partition's slices.
    float m[2] = {LHAMA_NEG_INF, LHAMA_NEG_INF}, l[2] = {0.0f, 0.0f};
    float acc[2][ATTN_MAX_DIMS_PER_LANE] = {};
    const int end = min(start + ATTN_PART, pos0 + count);  // keys past the last query's position: never needed
    for (int s0 = start; s0 < end; s0 += ATTN_SLICE) {
        const int n = min(ATTN_SLICE, end - s0);
        __syncthreads();  // the previous slice (and qs) is no longer read / now written
        for (int e = threadIdx.x; e < n * head_dim; e += blockDim.x) {
            const int key = e / head_dim, d = e % head_dim;
            const int p = s0 + key;
            const size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
            kt[d][key] = kv_load(&k_cache[slot * kv_dim + kvh * head_dim + d]);
            vs[key][d] = kv_load(&v_cache[slot * kv_dim + kvh * head_dim + d]);
        }
        __syncthreads();
#pragma unroll
        for (int qi = 0; qi < 2; ++qi) {
            const int i = 2 * warp + qi;
            if (i >= count) continue;  // uniform within the warp
            const int qpos = pos0 + i;
            // Lane = key of the slice.
            float sc = LHAMA_NEG_INF;
            if (lane < n && s0 + lane <= qpos) {
                float dot = 0.0f;
                for (int d = 0; d < head_dim; ++d) dot += qs[i][d] * kt[d][lane];
                sc = dot;
            }
            const float smax = warp_max_f32(sc);
            if (smax == LHAMA_NEG_INF) continue;  // no key of this slice is visible to this query
            const float m_new = fmaxf(m[qi], smax);
            const float corr = expf(m[qi] - m_new);  // 0 when m was -inf
            const float e = sc == LHAMA_NEG_INF ? 0.0f : expf(sc - m_new);
            l[qi] = l[qi] * corr + warp_sum_f32(e);
#pragma unroll
            for (int di = 0; di < ATTN_MAX_DIMS_PER_LANE; ++di) acc[qi][di] *= corr;
            for (int key = 0; key < n; ++key) {
                const float wk = __shfl_sync(0xffffffffu, e, key);
#pragma unroll
                for (int di = 0; di < ATTN_MAX_DIMS_PER_LANE; ++di)
                    if (di < dims) acc[qi][di] += wk * vs[key][di * LHAMA_WARP + lane];
            }
            m[qi] = m_new;
        }
    }
#pragma unroll
    for (int qi = 0; qi < 2; ++qi) {
        const int i = 2 * warp + qi;
        if (i >= count) continue;
        // A query whose context ends before this partition writes an empty
        // partial (m = -inf, l = 0): the combine kernel reads only the
        // partitions a token has, so it is never used.
        float* dst = work + (((size_t)(t0 + i) * heads + h) * max_parts + z) * (head_dim + 2);
#pragma unroll
        for (int di = 0; di < ATTN_MAX_DIMS_PER_LANE; ++di)
            if (di < dims) dst[di * LHAMA_WARP + lane] = acc[qi][di];
        if (lane == 0) {
            dst[head_dim] = m[qi];
            dst[head_dim + 1] = l[qi];
        }
    }
}

#define LHAMA_PREFILL_PARAMS(KV)                                                                              \
    const float *__restrict__ q, const KV *__restrict__ k_cache, const KV *__restrict__ v_cache,               \
        const unsigned *__restrict__ block_tables, const unsigned *__restrict__ seq_of,                       \
        const unsigned *__restrict__ positions, const unsigned *__restrict__ tiles, float *__restrict__ work, \
        int heads, int kv_heads, int head_dim, int block_size, int max_blocks, int max_parts, float scale
#define LHAMA_PREFILL_ARGS \
    q, k_cache, v_cache, block_tables, seq_of, positions, tiles, work, heads, kv_heads, head_dim, block_size, max_blocks, max_parts, scale

extern "C" __global__ void paged_attention_prefill_f32(LHAMA_PREFILL_PARAMS(float)) {
    paged_attention_prefill(LHAMA_PREFILL_ARGS);
}

extern "C" __global__ void paged_attention_prefill_f16kv(LHAMA_PREFILL_PARAMS(__half)) {
    paged_attention_prefill(LHAMA_PREFILL_ARGS);
}
