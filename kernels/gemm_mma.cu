// Tensor-core matrix products for prefill-sized batches (many rows): the AWQ
// int4 layers and the f16 lm_head, with mma.sync m16n8k16 (f16 in, f32
// accumulate).
//
// Precision: activations stay f32 in memory. On the exact path (_f32) each x
// is split into x_hi = f16(x) and x_lo = f16(x - x_hi), and both halves go
// through the tensor cores (two mma per tile), so x is carried to about 22
// bits. On the fast path (_f16x) x enters as f16(x) alone: one mma per
// tile, f16 activations with f32 accumulation. The AWQ weights enter as the exact small integers q - zero (|.| <= 15,
// exact in f16); their f16-born scale multiplies each group's f32 sum
// afterwards. The result matches the f32 reference up to summation order.
//
// y[M, N] = x[M, K] · B, B[k, n] = (q[k, n] - zero[g, n]) * scale[g, n] (AWQ)
//                        or W[n, k] (dense f16, W row-major [N, K]).
// x rows are x[rows[r]] when `rows` is given (lm_head picks rows), else x[r].
//
// Block: 128 threads = 4 warps (2 x 2), tile 64 rows x 64 columns, k in
// chunks of 32 staged in shared memory (double-buffered: the next chunk's
// global loads are in flight while the tensor cores work on this one).
// Grid: (ceil(N / 64), ceil(M / 64), splits). Split z covers k in
// [z * k_per_split, min(K, (z + 1) * k_per_split)) and writes
// out[z, M, N]; with one split `out` is y itself, else
// awq_reduce_partials_f32 adds the splits up in order (deterministic).
// Host guarantees: K % 32 == 0, k_per_split % 32 == 0 (and % group for AWQ),
// N % 8 == 0, group % 32 == 0.
// MMA_BM, MMA_BN, MMA_BK: defined by the host (kernels::shared_defines).
#define MMA_THREADS 128
// Shared rows in 32-bit words (a word holds two consecutive k as f16):
// x tiles [64 rows][16 words + 4 pad], B tile [16 k-pairs][64 columns + 8 pad];
// the padding makes every fragment load conflict-free.
#define MMA_XS 20
#define MMA_WS 72

__device__ __forceinline__ void mma_16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned half2_bits(__half2 h) { return *reinterpret_cast<const unsigned*>(&h); }

template <bool AWQ, bool SPLIT_X>
__device__ __forceinline__ void gemm_mma(
    const float* __restrict__ x, const unsigned* __restrict__ rows, const unsigned* __restrict__ qweight,
    const float* __restrict__ zeros, const float* __restrict__ scales, const __half* __restrict__ wdense,
    float* __restrict__ out, int m, int k, int n, int group, int k_per_split) {
    __shared__ __align__(16) unsigned xs_hi[2][MMA_BM * MMA_XS];
    __shared__ __align__(16) unsigned xs_lo[2][SPLIT_X ? MMA_BM * MMA_XS : 1];
    __shared__ __align__(16) unsigned ws[2][(MMA_BK / 2) * MMA_WS];

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int gid = lane / 4, tig = lane % 4;
    const int wm = warp / 2, wn = warp % 2;
    const int m0 = blockIdx.y * MMA_BM, n0 = blockIdx.x * MMA_BN;
    const int kb = blockIdx.z * k_per_split;
    const int ke = min(k, kb + k_per_split);
    const int chunks = (ke - kb) / MMA_BK;
    const int n8 = n / 8;

    // This thread's x rows for staging: 4 float4 per chunk, row = (i * 128 + tid) / 8.
    const float* xrow[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = m0 + (i * MMA_THREADS + tid) / 8;
        xrow[i] = r < m ? x + (size_t)(rows ? rows[r] : (unsigned)r) * k : nullptr;
    }
    const int xc = (tid % 8) * 4;  // k offset of this thread's float4 in the chunk
    // AWQ staging: k rows 2p, 2p + 1 of the chunk, packed word column wc (8 columns).
    const int wp = tid / 8, wc = tid % 8;
    const bool wcol_ok = n0 / 8 + wc < n8;
    // Dense staging: columns n0 + (i * 128 + tid) / 4, 8 halves at k offset (tid % 4) * 8.
    const int dk = (tid % 4) * 8;

    float4 xv[4];
    unsigned qv[2] = {0u, 0u};
    float zv[8];
    uint4 dv[2];

    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
            xv[i] = xrow[i] ? *reinterpret_cast<const float4*>(xrow[i] + k0 + xc) : make_float4(0.f, 0.f, 0.f, 0.f);
        if constexpr (AWQ) {
            if (wcol_ok) {
                const unsigned* src = qweight + (size_t)(k0 + 2 * wp) * n8 + n0 / 8 + wc;
                qv[0] = src[0];
                qv[1] = src[n8];
                const float* zsrc = zeros + (size_t)(k0 / group) * n + n0 + wc * 8;
#pragma unroll
                for (int j = 0; j < 8; ++j) zv[j] = zsrc[j];
            } else {
                qv[0] = qv[1] = 0u;
#pragma unroll
                for (int j = 0; j < 8; ++j) zv[j] = 0.0f;
            }
        } else {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int col = n0 + (i * MMA_THREADS + tid) / 4;
                dv[i] = col < n ? *reinterpret_cast<const uint4*>(wdense + (size_t)col * k + k0 + dk)
                                : make_uint4(0u, 0u, 0u, 0u);
            }
        }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = (i * MMA_THREADS + tid) / 8;
            // Two values per conversion (cvt.rn.f16x2.f32), round to nearest.
            const __half2 h01 = __floats2half2_rn(xv[i].x, xv[i].y);
            const __half2 h23 = __floats2half2_rn(xv[i].z, xv[i].w);
            unsigned* dh = &xs_hi[buf][r * MMA_XS + xc / 2];
            *reinterpret_cast<uint2*>(dh) = make_uint2(half2_bits(h01), half2_bits(h23));
            if constexpr (SPLIT_X) {
                const float2 f01 = __half22float2(h01), f23 = __half22float2(h23);
                const __half2 l01 = __floats2half2_rn(xv[i].x - f01.x, xv[i].y - f01.y);
                const __half2 l23 = __floats2half2_rn(xv[i].z - f23.x, xv[i].w - f23.y);
                unsigned* dl = &xs_lo[buf][r * MMA_XS + xc / 2];
                *reinterpret_cast<uint2*>(dl) = make_uint2(half2_bits(l01), half2_bits(l23));
            }
        }
        if constexpr (AWQ) {
            // q - zero for k rows 2p and 2p + 1 of column j, exactly, by bit
            // tricks: the f16 with bits 0x6400 | q is 1024 + q, and
            // (1024 + q) - (1024 + zero) is exact in f16 (integers below 2048).
            // A column past N has q = zero = 0 (fetch): 1024 - 1024 = 0.
            unsigned packed[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const unsigned lo = (qv[0] >> AWQ_SHIFT(j)) & 0xFu;
                const unsigned hi = (qv[1] >> AWQ_SHIFT(j)) & 0xFu;
                const unsigned biased = lo | (hi << 16) | 0x64006400u;
                const __half2 w = __hsub2(*reinterpret_cast<const __half2*>(&biased), __float2half2_rn(1024.0f + zv[j]));
                packed[j] = half2_bits(w);
            }
            unsigned* d = &ws[buf][wp * MMA_WS + wc * 8];
            *reinterpret_cast<uint4*>(d) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
            *reinterpret_cast<uint4*>(d + 4) = make_uint4(packed[4], packed[5], packed[6], packed[7]);
        } else {
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int c = (i * MMA_THREADS + tid) / 4;
                const unsigned w4[4] = {dv[i].x, dv[i].y, dv[i].z, dv[i].w};
#pragma unroll
                for (int e = 0; e < 4; ++e) ws[buf][(dk / 2 + e) * MMA_WS + c] = w4[e];
            }
        }
    };

    float acc[2][4][4], part[2][4][4];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[a][b][c] = part[a][b][c] = 0.0f;

    // Everything above reads nothing an earlier kernel writes... except x:
    // wait for the previous grid before the first fetch.
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();

    if (chunks > 0) {
        fetch(kb);
        stage(0);
    }
    __syncthreads();
    for (int c = 0; c < chunks; ++c) {
        const int buf = c & 1;
        const int k0 = kb + c * MMA_BK;
        if (c + 1 < chunks) fetch(k0 + MMA_BK);
#pragma unroll
        for (int kk = 0; kk < MMA_BK / 2; kk += 8) {  // k16 steps, in k-pair words
            unsigned ahi[2][4], alo[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int r = wm * 32 + mi * 16 + gid;
                const unsigned* h = &xs_hi[buf][0];
                ahi[mi][0] = h[r * MMA_XS + kk + tig];
                ahi[mi][1] = h[(r + 8) * MMA_XS + kk + tig];
                ahi[mi][2] = h[r * MMA_XS + kk + tig + 4];
                ahi[mi][3] = h[(r + 8) * MMA_XS + kk + tig + 4];
                if constexpr (SPLIT_X) {
                    const unsigned* l = &xs_lo[buf][0];
                    alo[mi][0] = l[r * MMA_XS + kk + tig];
                    alo[mi][1] = l[(r + 8) * MMA_XS + kk + tig];
                    alo[mi][2] = l[r * MMA_XS + kk + tig + 4];
                    alo[mi][3] = l[(r + 8) * MMA_XS + kk + tig + 4];
                }
            }
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int col = wn * 32 + ni * 8 + gid;
                const unsigned b0 = ws[buf][(kk + tig) * MMA_WS + col];
                const unsigned b1 = ws[buf][(kk + tig + 4) * MMA_WS + col];
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    mma_16816(part[mi][ni], ahi[mi], b0, b1);
                    if constexpr (SPLIT_X) mma_16816(part[mi][ni], alo[mi], b0, b1);
                }
            }
        }
        // End of an AWQ group (or of the split, dense): scale its sums into acc.
        const bool group_end = AWQ ? ((k0 + MMA_BK) % group == 0) : (c + 1 == chunks);
        if (group_end) {
            const int g = k0 / group;
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int col = n0 + wn * 32 + ni * 8 + tig * 2;
                float s0 = 1.0f, s1 = 1.0f;
                if (AWQ && col < n) {
                    s0 = scales[(size_t)g * n + col];
                    s1 = scales[(size_t)g * n + col + 1];
                }
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    acc[mi][ni][0] += part[mi][ni][0] * s0;
                    acc[mi][ni][1] += part[mi][ni][1] * s1;
                    acc[mi][ni][2] += part[mi][ni][2] * s0;
                    acc[mi][ni][3] += part[mi][ni][3] * s1;
#pragma unroll
                    for (int e = 0; e < 4; ++e) part[mi][ni][e] = 0.0f;
                }
            }
        }
        if (c + 1 < chunks) stage(buf ^ 1);
        __syncthreads();
    }

    float* dst = out + (size_t)blockIdx.z * m * n;
    // Two adjacent columns per store: one float2 when rows stay 8-byte
    // aligned (even N: always for AWQ), else one by one (an odd vocabulary).
    auto store2 = [&](int r, int col, float a, float b) {
        float* p = dst + (size_t)r * n + col;
        if ((n & 1) == 0) {
            *reinterpret_cast<float2*>(p) = make_float2(a, b);
        } else {
            p[0] = a;
            if (col + 1 < n) p[1] = b;
        }
    };
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            const int col = n0 + wn * 32 + ni * 8 + tig * 2;
            const int r = m0 + wm * 32 + mi * 16 + gid;
            if (col >= n) continue;
            if (r < m) store2(r, col, acc[mi][ni][0], acc[mi][ni][1]);
            if (r + 8 < m) store2(r + 8, col, acc[mi][ni][2], acc[mi][ni][3]);
        }
}

extern "C" __global__ void __launch_bounds__(MMA_THREADS) awq_gemm_mma_f32(
    const float* __restrict__ x, const unsigned* __restrict__ qweight, const float* __restrict__ zeros,
    const float* __restrict__ scales, float* __restrict__ out, int m, int k, int n, int group, int k_per_split) {
    gemm_mma<true, true>(x, nullptr, qweight, zeros, scales, nullptr, out, m, k, n, group, k_per_split);
}

extern "C" __global__ void __launch_bounds__(MMA_THREADS) awq_gemm_mma_f16x(
    const float* __restrict__ x, const unsigned* __restrict__ qweight, const float* __restrict__ zeros,
    const float* __restrict__ scales, float* __restrict__ out, int m, int k, int n, int group, int k_per_split) {
    gemm_mma<true, false>(x, nullptr, qweight, zeros, scales, nullptr, out, m, k, n, group, k_per_split);
}

// logits[R, vocab] = xn[rows[r]] · W^T, W [vocab, hidden] f16 (one split).
extern "C" __global__ void __launch_bounds__(MMA_THREADS) lm_head_mma_f16_f32(
    const float* __restrict__ xn, const unsigned* __restrict__ rows, const __half* __restrict__ weight,
    float* __restrict__ logits, int num_rows, int hidden, int vocab) {
    gemm_mma<false, true>(xn, rows, nullptr, nullptr, nullptr, weight, logits, num_rows, hidden, vocab, hidden, hidden);
}
