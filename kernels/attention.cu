// Paged causal attention: each query token attends to positions
// 0..=position of its own sequence, read through the block table. Split over
// the context (flash-decoding) so that even one token and a few heads keep
// many SMs busy: a partial kernel per 64-position partition
// (paged_attention_prefill_f32 below, or the fused paged_attention_decode_f32
// for decode steps) writes the partition's max score m, its sum l of
// exp(score - m) and its unnormalized output acc[D] = sum exp(score - m) * v
// into work[t, h, z, 0..D+2], and the partitions are combined:
//
// paged_attention_combine_f32: grid (T), block 256 threads over the
//   token's H * D outputs: rescales the partitions to a common max and
//   normalizes, in partition order.
//
// q            [T, H * D] f32 (rotated)
// k_cache, v_cache [blocks * block_size, KVH, D] f32, or f16 (the _f16kv kernels)
// block_tables [S, max_blocks] u32, seq_of [T] u32 (row of block_tables), positions [T] u32
// work         [T, H, P_max, D + 2] f32
// out          [T, H * D] f32
// D % 32 == 0, D <= 128 (checked on the host).
// ATTN_WARPS, ATTN_PART (and ATTN_TILE below): defined by the host (kernels::shared_defines).
#define ATTN_PER_WARP (ATTN_PART / ATTN_WARPS)
#define ATTN_MAX_DIMS_PER_LANE 4

extern "C" __global__ void paged_attention_combine_f32(
    const float* __restrict__ work, const unsigned* __restrict__ positions, float* __restrict__ out, int heads,
    int head_dim, int max_parts) {
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const int t = blockIdx.x;
    const int parts = ((int)positions[t] + ATTN_PART) / ATTN_PART;  // ceil((pos + 1) / PART)
    for (int e = threadIdx.x; e < heads * head_dim; e += blockDim.x) {
        const int h = e / head_dim, d = e % head_dim;
        const float* src = work + ((size_t)t * heads + h) * max_parts * (head_dim + 2);
        float m = LHAMA_NEG_INF;
        for (int z = 0; z < parts; ++z) m = fmaxf(m, src[z * (head_dim + 2) + head_dim]);
        float l = 0.0f, v = 0.0f;
        for (int z = 0; z < parts; ++z) {
            const float* p = src + z * (head_dim + 2);
            const float c = expf(p[head_dim] - m);
            l += p[head_dim + 1] * c;
            v += p[d] * c;
        }
        out[(size_t)t * heads * head_dim + e] = v / l;
    }
}

// Decode steps (one new token per sequence): rotary embedding, the K/V write,
// the partition partials and their combine in one launch. Each block rotates
// its head's q from the raw qkv row; the blocks of the last partition also
// rotate the new token's k and use it (and its v) from registers for the
// newest position, and the first q head of each KV head writes them into the
// cache slot (no block reads that slot in this step). The last block of a
// (token, head) to finish (an atomic counter, re-armed after use) combines
// the partitions, in partition order.
//
// qkv      [qkv_splits, T, (H + 2 * KVH) * D] f32, unrotated: the qkv product
//          (1 split) or its K-split partial sums, which each block adds up
//          for the rows it reads (in awq_reduce_partials_f32's order: the
//          same bits), so the product needs no reduce launch of its own
// cos, sin [max_pos, D/2] f32; slots [T] u32 (the new token's slot)
// counters [T * H] u32, zero between launches
// Others as above. D is 32, 64 or 128.
// Partitions: part_chunks consecutive chunks of ATTN_PART positions (the
// host picks as many chunks as keep enough blocks to fill the GPU: one
// partition per sequence at large batches, many at small ones).
// Grid: (T, H, Z), Z = the partitions of the batch's longest context (the
// host captures a graph per batch size and context chunk count, which
// determine part_chunks); blocks past a token's own context return at
// once. Block: ATTN_WARPS warps.
//
// Lanes: a K/V row of one head is read by D / 8 lanes, 8 consecutive
// dimensions (16 bytes of f16, 32 of f32) each, so one warp load covers
// 32 / (D / 8) positions and a row is one contiguous run. Lane = g * (D / 8)
// + s: row group g (a position), sub-lane s (dimensions [8 s, 8 s + 8)).
// In each chunk a warp takes ATTN_PART / ATTN_WARPS positions in one batch
// of loads (the first chunk's issued before the grid dependency wait, each
// next chunk's while the current one is computed); each warp keeps its own
// online softmax (max m, sum l, unnormalized output) over the chunks, and
// the block combines its warps once.
// Rotation pairs dimension d with d +- D/2: the same slot of sub-lane
// s ^ (D / 16), which is lane ^ (D / 16).

// Eight consecutive K/V elements of one lane, as loaded.
template <typename KV>
struct KvRow8;
template <>
struct KvRow8<__half> {
    uint4 v;
    __device__ __forceinline__ void load(const __half* p) { v = *reinterpret_cast<const uint4*>(p); }
    __device__ __forceinline__ void zero() { v = make_uint4(0u, 0u, 0u, 0u); }
    // Values already rounded to f16 (kv_round): held exactly.
    __device__ __forceinline__ void set(const float* x) {
        unsigned w[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const __half2 h = __floats2half2_rn(x[2 * i], x[2 * i + 1]);
            w[i] = *reinterpret_cast<const unsigned*>(&h);
        }
        v = make_uint4(w[0], w[1], w[2], w[3]);
    }
    __device__ __forceinline__ void widen(float (&x)[8]) const {
        const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
            x[2 * i] = f.x, x[2 * i + 1] = f.y;
        }
    }
};
template <>
struct KvRow8<float> {
    float4 a, b;
    __device__ __forceinline__ void load(const float* p) {
        a = *reinterpret_cast<const float4*>(p);
        b = *reinterpret_cast<const float4*>(p + 4);
    }
    __device__ __forceinline__ void zero() { a = b = make_float4(0.f, 0.f, 0.f, 0.f); }
    __device__ __forceinline__ void set(const float* x) {
        a = make_float4(x[0], x[1], x[2], x[3]);
        b = make_float4(x[4], x[5], x[6], x[7]);
    }
    __device__ __forceinline__ void widen(float (&x)[8]) const {
        x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
    }
};

__device__ __forceinline__ void load8_f32(const float* p, float (&x)[8]) {
    const float4 a = *reinterpret_cast<const float4*>(p);
    const float4 b = *reinterpret_cast<const float4*>(p + 4);
    x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}

__device__ __forceinline__ void store8(float* p, const float (&x)[8]) {
    *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
    *reinterpret_cast<float4*>(p + 4) = make_float4(x[4], x[5], x[6], x[7]);
}
__device__ __forceinline__ void store8(__half* p, const float (&x)[8]) {
    unsigned w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const __half2 h = __floats2half2_rn(x[2 * i], x[2 * i + 1]);
        w[i] = *reinterpret_cast<const unsigned*>(&h);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}

// Rotary embedding of a lane's 8 dimensions; `first_half`: s < D / 16.
template <int PAIR>
__device__ __forceinline__ void rope8(float (&x)[8], const float (&c)[8], const float (&s)[8], bool first_half) {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const float partner = __shfl_xor_sync(0xffffffffu, x[i], PAIR);
        x[i] = first_half ? x[i] * c[i] - partner * s[i] : x[i] * c[i] + partner * s[i];
    }
}

// Splits of the qkv product a decode block loads at once (shared memory:
// ATTN_QKV_STAGE * 3 * D floats).
#define ATTN_QKV_STAGE 8

template <typename KV, int D, bool MULTI>
__device__ __forceinline__ void paged_attention_decode(
    const float* __restrict__ qkv, const unsigned* __restrict__ positions, const float* __restrict__ cos_table,
    const float* __restrict__ sin_table, const unsigned* __restrict__ slots, KV* __restrict__ k_cache,
    KV* __restrict__ v_cache, const unsigned* __restrict__ block_tables, const unsigned* __restrict__ seq_of,
    float* __restrict__ work, unsigned* __restrict__ counters, float* __restrict__ out, int heads, int kv_heads,
    int part_chunks, int block_size, int max_blocks, int max_parts, float scale, int qkv_splits) {
    constexpr int LPR = D / 8;                          // lanes per K/V row
    constexpr int RPI = LHAMA_WARP / LPR;               // rows per warp load
    constexpr int U = ATTN_PART / (ATTN_WARPS * RPI);   // loads per warp and chunk (of K, and of V)
    static_assert(U * ATTN_WARPS * RPI == ATTN_PART, "a chunk is whole warp loads");
    __shared__ float w_m[ATTN_WARPS], w_l[ATTN_WARPS];
    __shared__ float w_acc[ATTN_WARPS][D];
    __shared__ float s_kn[D], s_vn[D];
    __shared__ __align__(16) float s_in[3 * D];
    __shared__ __align__(16) float s_parts[ATTN_QKV_STAGE][3 * D];
    __shared__ bool last_block;
    const int lane = threadIdx.x % LHAMA_WARP;
    const int warp = threadIdx.x / LHAMA_WARP;
    const int g = lane / LPR, sl = lane % LPR;
    const int t = blockIdx.x, h = blockIdx.y, z = blockIdx.z;
    // Before waiting on the previous kernel (which writes only qkv): the
    // host-written index arrays, the rotary tables, and the K/V of every
    // earlier position (written by earlier steps; this step writes only the
    // newest slot, here).
    const int pos = (int)positions[t];
    const int ctx = pos + 1;
    const int part_len = part_chunks * ATTN_PART;
    const int start = z * part_len;
    if (start >= ctx) {  // uniform across the block
        LHAMA_GRID_WAIT();
        return;
    }
    const int end = min(ctx, start + part_len);
    const int parts = (ctx + part_len - 1) / part_len;
    const int group = heads / kv_heads;
    const int kvh = h / group;
    const int kv_dim = kv_heads * D;
    const int half = D / 2;
    const int col = kvh * D + sl * 8;  // this lane's first element in a slot's row
    const unsigned* table = block_tables + (size_t)seq_of[t] * max_blocks;
    // This lane's positions in the chunk at c0: c0 + lane_off + u * RPI.
    const int lane_off = warp * (U * RPI) + g;
    KvRow8<KV> kr[U], vr[U];
    // The cache rows of the chunk at c0 (zeros past the context). Position
    // `pos` is not in the cache yet: its k/v go into the registers of the
    // lane group that meets it from shared memory (put_newest), so the
    // loop below reads every position from registers alike.
    auto fetch = [&](int c0, KvRow8<KV>(&kd)[U], KvRow8<KV>(&vd)[U]) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int p = c0 + lane_off + u * RPI;
            if (p < pos) {
                const size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
                kd[u].load(&k_cache[slot * kv_dim + col]);
                vd[u].load(&v_cache[slot * kv_dim + col]);
            } else {
                kd[u].zero();
                vd[u].zero();
            }
        }
    };
    // After s_kn / s_vn are written: the chunk at c0 held in kd / vd gets
    // the newest position's k and v where it has it.
    auto put_newest = [&](int c0, KvRow8<KV>(&kd)[U], KvRow8<KV>(&vd)[U]) {
        const int u = (pos - c0 - lane_off) / RPI;
        if (pos >= c0 + lane_off && (pos - c0 - lane_off) % RPI == 0 && u < U) {
#pragma unroll
            for (int uu = 0; uu < U; ++uu) {
                if (uu == u) {
                    kd[uu].set(&s_kn[sl * 8]);
                    vd[uu].set(&s_vn[sl * 8]);
                }
            }
        }
    };
    fetch(start, kr, vr);
    float cv[8], sv[8];
    {
        const int j = (sl * 8) % half;  // 8 consecutive table entries (half % 8 == 0)
        load8_f32(cos_table + (size_t)pos * half + j, cv);
        load8_f32(sin_table + (size_t)pos * half + j, sv);
    }
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();

    const bool first_half = sl < LPR / 2;
    // qkv: the product, or its K splits ([qkv_splits, tokens, row]).
    const size_t qkv_row = (size_t)(heads + 2 * kv_heads) * D;
    const size_t split_stride = (size_t)gridDim.x * qkv_row;
    const float* row = qkv + (size_t)t * qkv_row;
    const bool newest_here = end == ctx;  // uniform across the block
    // This block's rows of the product: q of head h and, where the newest
    // position is, k and v of its KV head. From K splits: the float4
    // pieces of ATTN_QKV_STAGE splits loaded at once across the block into
    // shared memory, then each element added up by one thread in split
    // order from 0.0f (awq_reduce_partials_f32's order: the same bits);
    // one split: read where it is.
    const float* q_src = row + h * D;
    const float* k_src = row + (heads + kvh) * D;
    const float* v_src = row + (heads + kv_heads + kvh) * D;
    if (qkv_splits > 1) {  // uniform across the block
        const int n4 = (newest_here ? 3 : 1) * D / 4;  // float4 of the rows read
        for (int sp0 = 0; sp0 < qkv_splits; sp0 += ATTN_QKV_STAGE) {
            const int ns = min(ATTN_QKV_STAGE, qkv_splits - sp0);
#pragma unroll 1
            for (int idx = threadIdx.x; idx < ns * n4; idx += blockDim.x) {
                const int sp = idx / n4, e = 4 * (idx % n4), part = e / D;
                const float* src = (part == 0 ? q_src : part == 1 ? k_src : v_src) + e % D;
                *reinterpret_cast<float4*>(&s_parts[sp][e]) =
                    *reinterpret_cast<const float4*>(src + (size_t)(sp0 + sp) * split_stride);
            }
            __syncthreads();
            for (int e = threadIdx.x; e < 4 * n4; e += blockDim.x) {
                float v = sp0 == 0 ? 0.0f : s_in[e];
#pragma unroll 1
                for (int sp = 0; sp < ns; ++sp) v += s_parts[sp][e];
                s_in[e] = v;
            }
            __syncthreads();
        }
        q_src = s_in;
        k_src = s_in + D;
        v_src = s_in + 2 * D;
    }
    float qv[8];
    load8_f32(q_src + sl * 8, qv);
    rope8<LPR / 2>(qv, cv, sv, first_half);
#pragma unroll
    for (int i = 0; i < 8; ++i) qv[i] *= scale;
    // The newest position's k (rotated) and v, in the last partition, as
    // the cache holds them: computed by warp 0's first row group, kept in
    // shared memory (not in every lane's registers) for the one lane group
    // that meets position `pos`.
    if (newest_here && warp == 0) {
        float kn[8], vn[8];
        load8_f32(k_src + sl * 8, kn);
        load8_f32(v_src + sl * 8, vn);
        rope8<LPR / 2>(kn, cv, sv, first_half);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            kn[i] = kv_round(kn[i], k_cache);
            vn[i] = kv_round(vn[i], v_cache);
        }
        if (g == 0) {
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                s_kn[sl * 8 + i] = kn[i];
                s_vn[sl * 8 + i] = vn[i];
            }
            if (h % group == 0) {
                const size_t slot = slots[t];
                store8(&k_cache[slot * kv_dim + col], kn);
                store8(&v_cache[slot * kv_dim + col], vn);
            }
        }
    }
    if (newest_here) {
        __syncthreads();
        put_newest(start, kr, vr);
    }

    // Each warp's online softmax over the partition's chunks: max m (the
    // same in every lane), and per lane the sum l and output acc over its
    // row group's positions. The next chunk's loads are in flight while
    // this one is computed.
    float m = LHAMA_NEG_INF, l = 0.0f, acc[8] = {};
#pragma unroll 1
    for (int c0 = start; c0 < end; c0 += ATTN_PART) {
        KvRow8<KV> kx_next[U], vx_next[U];
        if (MULTI && c0 + ATTN_PART < end) {
            fetch(c0 + ATTN_PART, kx_next, vx_next);
            if (newest_here) put_newest(c0 + ATTN_PART, kx_next, vx_next);
        }
        float sc[U];
        float cm = LHAMA_NEG_INF;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int p = c0 + lane_off + u * RPI;
            float kx[8];
            kr[u].widen(kx);
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) dot += qv[i] * kx[i];
#pragma unroll
            for (int off = LPR / 2; off >= 1; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
            sc[u] = p < end ? dot : LHAMA_NEG_INF;
            cm = fmaxf(cm, sc[u]);
        }
#pragma unroll
        for (int off = LPR; off < LHAMA_WARP; off <<= 1) cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, off));
        // cm is -inf only when all the warp's positions of this chunk are
        // past the context (then nothing changes).
        if (cm != LHAMA_NEG_INF) {
            const float m_new = fmaxf(m, cm);
            const float corr = expf(m - m_new);  // 0 while m is -inf
            l *= corr;
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[i] *= corr;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const float e = sc[u] == LHAMA_NEG_INF ? 0.0f : expf(sc[u] - m_new);
                float vx[8];
                vr[u].widen(vx);
                l += e;
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[i] += e * vx[i];
            }
            m = m_new;
        }
        if constexpr (MULTI) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                kr[u] = kx_next[u];
                vr[u] = vx_next[u];
            }
        } else {
            break;  // one chunk a partition: no next buffers
        }
    }
    // Sum over the warp's row groups (lanes of one group hold the same l).
#pragma unroll
    for (int off = LPR; off < LHAMA_WARP; off <<= 1) {
        l += __shfl_xor_sync(0xffffffffu, l, off);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], off);
    }
    if (g == 0) {
#pragma unroll
        for (int i = 0; i < 8; ++i) w_acc[warp][sl * 8 + i] = acc[i];
    }
    if (lane == 0) {
        w_m[warp] = m;
        w_l[warp] = l;
    }
    __syncthreads();
    // The block's partition: its warps rescaled to a common max (finite:
    // warp 0's first position is `start`, inside the context).
    float bm = LHAMA_NEG_INF;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; ++w) bm = fmaxf(bm, w_m[w]);
    float cw[ATTN_WARPS], bl = 0.0f;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; ++w) {
        cw[w] = expf(w_m[w] - bm);  // 0 for a warp with no position
        bl += w_l[w] * cw[w];
    }
    float* o = out + (size_t)t * heads * D + h * D;
    if (parts == 1) {  // the whole context in this block: normalize and done
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            float v = 0.0f;
#pragma unroll
            for (int w = 0; w < ATTN_WARPS; ++w) v += w_acc[w][d] * cw[w];
            o[d] = v / bl;
        }
        return;
    }
    float* base = work + ((size_t)t * heads + h) * max_parts * (D + 2);
    float* dst = base + (size_t)z * (D + 2);
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float v = 0.0f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) v += w_acc[w][d] * cw[w];
        dst[d] = v;
    }
    if (threadIdx.x == 0) {
        dst[D] = bm;
        dst[D + 1] = bl;
    }
    // The last partition block of this (token, head) to finish combines.
    __threadfence();
    __syncthreads();
    unsigned* counter = counters + (size_t)t * heads + h;
    if (threadIdx.x == 0) last_block = atomicAdd(counter, 1u) == (unsigned)parts - 1u;
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float mx = LHAMA_NEG_INF;
        for (int zz = 0; zz < parts; ++zz) mx = fmaxf(mx, __ldcg(&base[zz * (D + 2) + D]));
        float ls = 0.0f, v = 0.0f;
        for (int zz = 0; zz < parts; ++zz) {
            const float* pz = base + zz * (D + 2);
            const float cf = expf(__ldcg(&pz[D]) - mx);
            ls += __ldcg(&pz[D + 1]) * cf;
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
        int part_chunks, int block_size, int max_blocks, int max_parts, float scale, int qkv_splits
#define LHAMA_DECODE_ARGS                                                                                      \
    qkv, positions, cos_table, sin_table, slots, k_cache, v_cache, block_tables, seq_of, work, counters, out, \
        heads, kv_heads, part_chunks, block_size, max_blocks, max_parts, scale, qkv_splits

// One kernel per cache type and head size: registers sized for the head,
// not for the largest one; and each in two forms: partitions of one chunk
// (decode1: no registers for a next chunk's loads) and of several (decode).
// The f16-cache kernels of D <= 64 are held to 4 blocks an SM (64
// registers, 50% occupancy; at 80 registers they ran 3 blocks an SM and
// streamed the cache at 1.8 TB/s, latency-bound); the others keep the
// registers they need.
#define LHAMA_DECODE_KERNEL(NAME, KV, D, MULTI)                                                     \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * LHAMA_WARP) NAME(LHAMA_DECODE_PARAMS(KV)) { \
        paged_attention_decode<KV, D, MULTI>(LHAMA_DECODE_ARGS);                                     \
    }
#define LHAMA_DECODE_KERNEL_4(NAME, KV, D, MULTI)                                                       \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * LHAMA_WARP, 4) NAME(LHAMA_DECODE_PARAMS(KV)) { \
        paged_attention_decode<KV, D, MULTI>(LHAMA_DECODE_ARGS);                                        \
    }
LHAMA_DECODE_KERNEL(paged_attention_decode_f32_d32, float, 32, true)
LHAMA_DECODE_KERNEL(paged_attention_decode_f32_d64, float, 64, true)
LHAMA_DECODE_KERNEL(paged_attention_decode_f32_d128, float, 128, true)
LHAMA_DECODE_KERNEL_4(paged_attention_decode_f16kv_d32, __half, 32, true)
LHAMA_DECODE_KERNEL_4(paged_attention_decode_f16kv_d64, __half, 64, true)
LHAMA_DECODE_KERNEL(paged_attention_decode_f16kv_d128, __half, 128, true)
LHAMA_DECODE_KERNEL(paged_attention_decode1_f32_d32, float, 32, false)
LHAMA_DECODE_KERNEL(paged_attention_decode1_f32_d64, float, 64, false)
LHAMA_DECODE_KERNEL(paged_attention_decode1_f32_d128, float, 128, false)
LHAMA_DECODE_KERNEL_4(paged_attention_decode1_f16kv_d32, __half, 32, false)
LHAMA_DECODE_KERNEL_4(paged_attention_decode1_f16kv_d64, __half, 64, false)
LHAMA_DECODE_KERNEL(paged_attention_decode1_f16kv_d128, __half, 128, false)

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
