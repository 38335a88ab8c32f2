// AWQ int4 product for 1 to 8 rows on the tensor cores (fast path: f16 x,
// f32 accumulation). The weights are the mma's A operand and the rows its
// B operand: D[16 columns, 8 rows] += W^T[16 columns, 16 k] · x^T[16 k, 8 rows]
// (mma.sync m16n8k16), so the eight B lanes are the eight rows and nothing
// is padded.
//
// Weights re-laid at load (lhama_cuda::kernels::fragment_order) so that one
// 16-byte load gives a lane its A fragments for four consecutive k16 tiles:
//   frag [N/16][K/64][32 lanes] uint4; word t of lane L (gid = L / 4,
//   tig = L % 4) in (column tile nt, k quad kq) covers k tile kt = 4 kq + t:
//   nibble i (bits 4i) and nibble 4 + i (bits 16 + 4i) hold q[k][n], q[k + 1][n]
//   with (n, k) = (16 nt + gid + 8 (i % 2), 16 kt + 2 tig + 8 (i / 2)),
// which is fragment register a_i of m16n8k16 (row-major A = W^T). The bit
// trick 0x6400 | q makes the f16 1024 + q; minus 1024 + zero, exact.
// zeros/scales [K/G, N] f32; the scale multiplies each group's f32 sum.
//
// Grid (ceil(N/16 / 4), K / 256): a warp takes one 16-column tile and 256
// consecutive k (4 loads per lane, all issued before the wait on the
// previous kernel); split z writes partial[z, m_valid, N]. The last block of
// each 64-column tile to finish (an atomic counter per tile, re-armed) adds
// the splits up in split order, so the result does not depend on which
// block finished last. Host guarantees: N % 16 == 0, K % 256 == 0,
// G % 64 == 0, 1 <= m_valid <= 8.
//
// fused = 0: the splits stay in partial for the consumer to add up in split
// order (add_rmsnorm_f32's delta), and no block reduces them here.
//
// SILU: x is [m_valid, 2K] gate | up and the product's input silu(gate) * up
// (silu_mul_f32's expression), computed as it is read.
// GEMV_MMA_WARPS, GEMV_MMA_K: defined by the host (kernels::shared_defines).

template <bool SILU>
__device__ __forceinline__ void awq_gemv_mma(
    const float* __restrict__ x, const uint4* __restrict__ frag, const float* __restrict__ zeros,
    const float* __restrict__ scales, float* __restrict__ partial, float* __restrict__ y,
    unsigned* __restrict__ counters, int k, int n, int group, int m_valid, int fused) {
    const int lane = threadIdx.x % LHAMA_WARP, warp = threadIdx.x / LHAMA_WARP;
    const int gid = lane / 4, tig = lane % 4;
    const int nt = blockIdx.x * GEMV_MMA_WARPS + warp;
    const bool active = nt < n / 16;
    const int kb = blockIdx.y * GEMV_MMA_K;
    const int col0 = nt * 16 + gid, col1 = col0 + 8;
    constexpr int QUADS = GEMV_MMA_K / 64;
    // Weights, zeros and scales are constant: in flight before the wait.
    uint4 wv[QUADS];
    if (active) {
        const uint4* wp = frag + ((size_t)nt * (k / 64) + kb / 64) * LHAMA_WARP + lane;
#pragma unroll
        for (int q = 0; q < QUADS; ++q) wv[q] = wp[(size_t)q * LHAMA_WARP];
    }
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    // Spare B lanes (rows past m_valid) compute a copy of the last row, never stored.
    const int row = min(gid, m_valid - 1);
    const float* xr = x + (size_t)row * (SILU ? 2 * k : k);
    auto pair = [&](int kk) -> unsigned {
        float2 v = *reinterpret_cast<const float2*>(xr + kk);
        if (SILU) {
            const float2 u = *reinterpret_cast<const float2*>(xr + k + kk);
            v.x = v.x / (1.0f + expf(-v.x)) * u.x;
            v.y = v.y / (1.0f + expf(-v.y)) * u.y;
        }
        return half2_bits(__floats2half2_rn(v.x, v.y));
    };
    float acc[4] = {0.f, 0.f, 0.f, 0.f}, part[4] = {0.f, 0.f, 0.f, 0.f};
    if (active) {
        unsigned zb0 = 0u, zb1 = 0u;
        float s0 = 0.f, s1 = 0.f;
#pragma unroll
        for (int q = 0; q < QUADS; ++q) {
            const int k0 = kb + q * 64;
            if (q == 0 || k0 % group == 0) {
                const size_t g = (size_t)(k0 / group) * n;
                zb0 = half2_bits(__float2half2_rn(1024.0f + zeros[g + col0]));
                zb1 = half2_bits(__float2half2_rn(1024.0f + zeros[g + col1]));
                s0 = scales[g + col0];
                s1 = scales[g + col1];
            }
            const unsigned w4[4] = {wv[q].x, wv[q].y, wv[q].z, wv[q].w};
#pragma unroll
            for (int t = 0; t < 4; ++t) {
                const int kk = k0 + t * 16 + 2 * tig;
                unsigned a[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const unsigned biased = ((w4[t] >> (4 * i)) & 0x000F000Fu) | 0x64006400u;
                    const unsigned zb = i % 2 == 0 ? zb0 : zb1;
                    a[i] = half2_bits(
                        __hsub2(*reinterpret_cast<const __half2*>(&biased), *reinterpret_cast<const __half2*>(&zb)));
                }
                mma_16816(part, a, pair(kk), pair(kk + 8));
            }
            // End of a group, or of this split: its scaled sum into acc.
            if ((k0 + 64) % group == 0 || q == QUADS - 1) {
                acc[0] += part[0] * s0;
                acc[1] += part[1] * s0;
                acc[2] += part[2] * s1;
                acc[3] += part[3] * s1;
#pragma unroll
                for (int e = 0; e < 4; ++e) part[e] = 0.f;
            }
        }
        // D[column, row]: c0 (col0, 2 tig), c1 (col0, 2 tig + 1), c2, c3 the same at col1.
        float* dst = partial + (size_t)blockIdx.y * m_valid * n;
        const int r0 = 2 * tig, r1 = r0 + 1;
        if (r0 < m_valid) {
            dst[(size_t)r0 * n + col0] = acc[0];
            dst[(size_t)r0 * n + col1] = acc[2];
        }
        if (r1 < m_valid) {
            dst[(size_t)r1 * n + col0] = acc[1];
            dst[(size_t)r1 * n + col1] = acc[3];
        }
    }
    if (!fused) return;
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&counters[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int c0 = blockIdx.x * GEMV_MMA_WARPS * 16;
    const int cols = min(GEMV_MMA_WARPS * 16, n - c0);
    const int splits = (int)gridDim.y;
    for (int e = threadIdx.x; e < m_valid * cols; e += blockDim.x) {
        const int r = e / cols, c = c0 + e % cols;
        float v = 0.0f;
        for (int split = 0; split < splits; ++split) v += __ldcg(&partial[((size_t)split * m_valid + r) * n + c]);
        y[(size_t)r * n + c] = v;
    }
    if (threadIdx.x == 0) counters[blockIdx.x] = 0u;
}

extern "C" __global__ void __launch_bounds__(GEMV_MMA_WARPS * LHAMA_WARP) awq_gemv_mma_f16x(
    const float* __restrict__ x, const uint4* __restrict__ frag, const float* __restrict__ zeros,
    const float* __restrict__ scales, float* __restrict__ partial, float* __restrict__ y,
    unsigned* __restrict__ counters, int k, int n, int group, int m_valid, int fused) {
    awq_gemv_mma<false>(x, frag, zeros, scales, partial, y, counters, k, n, group, m_valid, fused);
}

extern "C" __global__ void __launch_bounds__(GEMV_MMA_WARPS * LHAMA_WARP) awq_gemv_mma_silu_f16x(
    const float* __restrict__ x, const uint4* __restrict__ frag, const float* __restrict__ zeros,
    const float* __restrict__ scales, float* __restrict__ partial, float* __restrict__ y,
    unsigned* __restrict__ counters, int k, int n, int group, int m_valid, int fused) {
    awq_gemv_mma<true>(x, frag, zeros, scales, partial, y, counters, k, n, group, m_valid, fused);
}
