// Prefill attention on the tensor cores (fast path: f16 K/V cache; q and
// the softmax weights enter the mma as f16, scores and sums are f32). The
// grid and the partials are those of paged_attention_prefill (above): a
// block takes one tile of up to ATTN_TILE (16) consecutive tokens of one
// sequence, one head and one ATTN_PART (64)-position partition of the
// context, and writes the partition's max, sum and unnormalized output per
// token into `work` for paged_attention_combine_f32. Block: one warp.
//   S[16 tokens, 64 keys] = (q · scale)[16, D] · K^T: q as the A operand
//     (fragments built from global memory), K rows from shared memory by
//     ldmatrix as the B operand;
//   causal mask, the row max and sum over the quad of lanes holding a row;
//   O[16, D] = P[16, 64] · V: P's C fragments are A fragments of the next
//     mma as they are (two key tiles make one k16 step), V by ldmatrix.trans.
// D: 32, 64 or 128 (one kernel each).
#define PREFILL_KS(D) ((D) + 8)

// (mma_16816 and ldsm_x4: gemm_mma.cu, gemm_frag.cu.)

template <int D>
__device__ __forceinline__ void paged_attention_prefill_mma(
    const float* __restrict__ q, const __half* __restrict__ k_cache, const __half* __restrict__ v_cache,
    const unsigned* __restrict__ block_tables, const unsigned* __restrict__ seq_of,
    const unsigned* __restrict__ positions, const unsigned* __restrict__ tiles, float* __restrict__ work, int heads,
    int kv_heads, int block_size, int max_blocks, int max_parts, float scale) {
    static_assert(ATTN_PART == 64 && ATTN_TILE == 16, "a block is 16 tokens x 64 keys");
    constexpr int KSTEPS = D / 16, DT = D / 8, ROW8 = D / 8;  // k16 steps over D, 8-dim tiles, uint4 per row
    __shared__ __align__(16) __half ks[ATTN_PART * PREFILL_KS(D)];
    __shared__ __align__(16) __half vs[ATTN_PART * PREFILL_KS(D)];
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const int lane = threadIdx.x, gid = lane / 4, tig = lane % 4;
    const int h = blockIdx.y, z = blockIdx.z;
    const int t0 = (int)tiles[2 * blockIdx.x], count = (int)tiles[2 * blockIdx.x + 1];
    const int pos0 = (int)positions[t0];
    const int start = z * ATTN_PART;
    if (start > pos0 + count - 1) return;  // the whole partition is past every query
    const int kvh = h / (heads / kv_heads);
    const int kv_dim = kv_heads * D;
    const int nkeys = min(ATTN_PART, pos0 + count - start);  // keys past the last query: never needed
    const unsigned* table = block_tables + (size_t)seq_of[t0] * max_blocks;
    for (int e = lane; e < ATTN_PART * ROW8; e += LHAMA_WARP) {
        const int key = e / ROW8, c = (e % ROW8) * 8;
        uint4 kv = make_uint4(0u, 0u, 0u, 0u), vv = kv;
        if (key < nkeys) {
            const int p = start + key;
            const size_t slot = (size_t)table[p / block_size] * block_size + p % block_size;
            kv = *reinterpret_cast<const uint4*>(&k_cache[slot * kv_dim + kvh * D + c]);
            vv = *reinterpret_cast<const uint4*>(&v_cache[slot * kv_dim + kvh * D + c]);
        }
        *reinterpret_cast<uint4*>(&ks[key * PREFILL_KS(D) + c]) = kv;
        *reinterpret_cast<uint4*>(&vs[key * PREFILL_KS(D) + c]) = vv;
    }
    // q fragments: rows gid and gid + 8 of the tile (zero past `count`).
    unsigned qa[KSTEPS][4];
    {
        const float* q0 = gid < count ? q + ((size_t)(t0 + gid) * heads + h) * D : nullptr;
        const float* q1 = gid + 8 < count ? q + ((size_t)(t0 + gid + 8) * heads + h) * D : nullptr;
        auto pair = [&](const float* row, int d) -> unsigned {
            if (!row) return 0u;
            const float2 v = *reinterpret_cast<const float2*>(row + d);
            return half2_bits(__floats2half2_rn(v.x * scale, v.y * scale));
        };
#pragma unroll
        for (int kt = 0; kt < KSTEPS; ++kt) {
            const int d = kt * 16 + 2 * tig;
            qa[kt][0] = pair(q0, d);
            qa[kt][1] = pair(q1, d);
            qa[kt][2] = pair(q0, d + 8);
            qa[kt][3] = pair(q1, d + 8);
        }
    }
    __syncwarp();
    // Scores: 8 key tiles of 8; sc[j] = (row gid, keys 8j + 2 tig, + 1), (row gid + 8, the same keys).
    float sc[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[j][e] = 0.0f;
    const int ld_row = (lane / 16) * 8 + lane % 8, ld_col = ((lane / 8) % 2) * 8;
#pragma unroll
    for (int kt = 0; kt < KSTEPS; ++kt)
#pragma unroll
        for (int np = 0; np < 4; ++np) {
            unsigned b[4];
            ldsm_x4(b, &ks[(np * 16 + ld_row) * PREFILL_KS(D) + kt * 16 + ld_col]);
            mma_16816(sc[2 * np], qa[kt], b[0], b[1]);
            mma_16816(sc[2 * np + 1], qa[kt], b[2], b[3]);
        }
    // Causal mask (a key is visible to a query at or after its position),
    // rows past `count` fully masked; the max and sum of each row over its
    // quad of lanes.
    const int qp0 = pos0 + gid, qp1 = pos0 + gid + 8;
    const bool r0 = gid < count, r1 = gid + 8 < count;
    float m0 = LHAMA_NEG_INF, m1 = LHAMA_NEG_INF;
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int kp = start + 8 * j + 2 * tig + e;
            if (!(r0 && kp <= qp0)) sc[j][e] = LHAMA_NEG_INF;
            if (!(r1 && kp <= qp1)) sc[j][2 + e] = LHAMA_NEG_INF;
            m0 = fmaxf(m0, sc[j][e]);
            m1 = fmaxf(m1, sc[j][2 + e]);
        }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        m0 = fmaxf(m0, __shfl_xor_sync(0xffffffffu, m0, off));
        m1 = fmaxf(m1, __shfl_xor_sync(0xffffffffu, m1, off));
    }
    // P as f16 pairs, A fragments of the P · V product: pa[kk] covers keys
    // 16 kk .. 16 kk + 15 (key tiles 2 kk and 2 kk + 1). The sums add the
    // rounded weights, so numerator and denominator see the same P.
    unsigned pa[4][4];
    float l0 = 0.0f, l1 = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const float e00 = sc[j][0] == LHAMA_NEG_INF ? 0.0f : expf(sc[j][0] - m0);
        const float e01 = sc[j][1] == LHAMA_NEG_INF ? 0.0f : expf(sc[j][1] - m0);
        const float e10 = sc[j][2] == LHAMA_NEG_INF ? 0.0f : expf(sc[j][2] - m1);
        const float e11 = sc[j][3] == LHAMA_NEG_INF ? 0.0f : expf(sc[j][3] - m1);
        const __half2 h0 = __floats2half2_rn(e00, e01), h1 = __floats2half2_rn(e10, e11);
        const float2 f0 = __half22float2(h0), f1 = __half22float2(h1);
        l0 += f0.x + f0.y;
        l1 += f1.x + f1.y;
        pa[j / 2][(j % 2) * 2] = half2_bits(h0);
        pa[j / 2][(j % 2) * 2 + 1] = half2_bits(h1);
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    float o[DT][4];
#pragma unroll
    for (int n = 0; n < DT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
    // ldmatrix.trans rows: lanes 0-7 keys 0-7 at dims 0, 8-15 keys 8-15 at
    // dims 0, 16-23 keys 0-7 at dims 8, 24-31 keys 8-15 at dims 8.
    const int tv_row = ((lane / 8) % 2) * 8 + lane % 8, tv_col = (lane / 16) * 8;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
        for (int dp = 0; dp < DT / 2; ++dp) {
            unsigned b[4];
            ldsm_x4<true>(b, &vs[(kk * 16 + tv_row) * PREFILL_KS(D) + dp * 16 + tv_col]);
            mma_16816(o[2 * dp], pa[kk], b[0], b[1]);
            mma_16816(o[2 * dp + 1], pa[kk], b[2], b[3]);
        }
    // Partials: o[n] = (row gid, dims 8n + 2 tig, + 1), (row gid + 8, the same).
    // A row whose context ends before this partition writes an empty
    // partial (m = -inf, l = 0), never read by the combine.
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
        const int r = gid + 8 * hi;
        if (r >= count) continue;
        float* dst = work + (((size_t)(t0 + r) * heads + h) * max_parts + z) * (D + 2);
#pragma unroll
        for (int n = 0; n < DT; ++n)
            *reinterpret_cast<float2*>(dst + 8 * n + 2 * tig) = make_float2(o[n][2 * hi], o[n][2 * hi + 1]);
        if (tig == 0) {
            dst[D] = hi ? m1 : m0;
            dst[D + 1] = hi ? l1 : l0;
        }
    }
}

#define LHAMA_PREFILL_MMA_KERNEL(D)                                                                                  \
    extern "C" __global__ void __launch_bounds__(LHAMA_WARP) paged_attention_prefill_mma_f16kv_d##D(                 \
        const float* __restrict__ q, const __half* __restrict__ k_cache, const __half* __restrict__ v_cache,         \
        const unsigned* __restrict__ block_tables, const unsigned* __restrict__ seq_of,                              \
        const unsigned* __restrict__ positions, const unsigned* __restrict__ tiles, float* __restrict__ work,        \
        int heads, int kv_heads, int head_dim, int block_size, int max_blocks, int max_parts, float scale) {         \
        paged_attention_prefill_mma<D>(q, k_cache, v_cache, block_tables, seq_of, positions, tiles, work, heads,     \
                                       kv_heads, block_size, max_blocks, max_parts, scale);                          \
    }
LHAMA_PREFILL_MMA_KERNEL(32)
LHAMA_PREFILL_MMA_KERNEL(64)
LHAMA_PREFILL_MMA_KERNEL(128)
