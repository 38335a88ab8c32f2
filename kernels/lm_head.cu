// Output projection with f16 weights: logits[r, v] = sum_i xn[rows[r], i] * W[v, i].
// xn     [T, hidden] f32 (final-normed hidden states)
// rows   [R] u32 indexes into T
// weight [vocab, hidden] f16, hidden % 8 == 0 (checked on the host), so each
//        row is read as 16-byte vectors of 8 halves
// logits [R, vocab] f32
// Grid: (ceil(vocab / 8)), block: 256 = 8 warps, one vocabulary row per warp.
extern "C" __global__ void lm_head_f16_f32(
    const float* __restrict__ xn, const unsigned* __restrict__ rows, const __half* __restrict__ weight,
    float* __restrict__ logits, int num_rows, int hidden, int vocab) {
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const int lane = threadIdx.x % LHAMA_WARP;
    const int v = blockIdx.x * (blockDim.x / LHAMA_WARP) + threadIdx.x / LHAMA_WARP;
    if (v >= vocab) return;
    const uint4* wrow = reinterpret_cast<const uint4*>(weight + (size_t)v * hidden);
    const int vecs = hidden / 8;
    for (int r = 0; r < num_rows; ++r) {
        const float* x = xn + (size_t)rows[r] * hidden;
        float acc = 0.0f;
        for (int i = lane; i < vecs; i += LHAMA_WARP) {
            const uint4 packed = wrow[i];
            const __half2* h2 = reinterpret_cast<const __half2*>(&packed);
            const float4 xa = *reinterpret_cast<const float4*>(x + 8 * i);
            const float4 xb = *reinterpret_cast<const float4*>(x + 8 * i + 4);
            const float2 w0 = __half22float2(h2[0]), w1 = __half22float2(h2[1]);
            const float2 w2 = __half22float2(h2[2]), w3 = __half22float2(h2[3]);
            acc += xa.x * w0.x + xa.y * w0.y + xa.z * w1.x + xa.w * w1.y;
            acc += xb.x * w2.x + xb.y * w2.y + xb.z * w3.x + xb.w * w3.y;
        }
        acc = warp_sum_f32(acc);
        if (lane == 0) logits[(size_t)r * vocab + v] = acc;
    }
}

// One butterfly step over the first 2 * HALF values of a (HALF = the lane
// offset): a[0..HALF) becomes the lane's kept half plus its partner's.
template <int HALF>
__device__ __forceinline__ void butterfly_half(float* a, int lane) {
    const bool upper = (lane & HALF) != 0;
#pragma unroll
    for (int i = 0; i < HALF; ++i) {
        const float send = upper ? a[i] : a[i + HALF];
        const float keep = upper ? a[i + HALF] : a[i];
        a[i] = keep + __shfl_xor_sync(0xffffffffu, send, HALF);
    }
}

// The same product for up to LM_HEAD_ROWS rows (decode of a few sequences), the
// matrix read once: each warp takes LM_HEAD_VR consecutive vocabulary rows and
// holds their weights in registers (the first LMH_CHUNKS * 256 of each row
// fetched before the wait on the previous kernel: they are constant), and
// each x value a lane reads serves its LM_HEAD_VR rows. A lane's LM_HEAD_ROWS *
// LM_HEAD_VR partial sums are then added across the warp by a butterfly in which
// every step halves the values a lane holds (31 shuffles for 32 sums): lane
// l ends with the sum of (row l / LM_HEAD_VR, vocabulary row v0 + l % LM_HEAD_VR).
// The order of every sum is fixed.
// Grid: (ceil(vocab / (8 * LM_HEAD_VR))), block: 256 = 8 warps; 1 <= num_rows <= LM_HEAD_ROWS.
// LM_HEAD_ROWS, LM_HEAD_VR: defined by the host (kernels::shared_defines).
#define LMH_CHUNKS 4
extern "C" __global__ void __launch_bounds__(256) lm_head_rows_f16_f32(
    const float* __restrict__ xn, const unsigned* __restrict__ rows, const __half* __restrict__ weight,
    float* __restrict__ logits, int num_rows, int hidden, int vocab) {
    static_assert(LM_HEAD_VR * LM_HEAD_ROWS == LHAMA_WARP, "one sum per lane");
    const int lane = threadIdx.x % LHAMA_WARP;
    const int v0 = (blockIdx.x * (blockDim.x / LHAMA_WARP) + threadIdx.x / LHAMA_WARP) * LM_HEAD_VR;
    const int vecs = hidden / 8;
    uint4 w[LM_HEAD_VR][LMH_CHUNKS];
    auto load = [&](int base) {
#pragma unroll
        for (int vr = 0; vr < LM_HEAD_VR; ++vr)
#pragma unroll
            for (int c = 0; c < LMH_CHUNKS; ++c) {
                const int vec = base + c * LHAMA_WARP + lane;
                w[vr][c] = v0 + vr < vocab && vec < vecs
                               ? reinterpret_cast<const uint4*>(weight + (size_t)(v0 + vr) * hidden)[vec]
                               : make_uint4(0u, 0u, 0u, 0u);
            }
    };
    load(0);
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    float acc[LM_HEAD_ROWS][LM_HEAD_VR];
    const float* xr[LM_HEAD_ROWS];
#pragma unroll
    for (int r = 0; r < LM_HEAD_ROWS; ++r) {
        xr[r] = xn + (size_t)rows[min(r, num_rows - 1)] * hidden;
#pragma unroll
        for (int vr = 0; vr < LM_HEAD_VR; ++vr) acc[r][vr] = 0.0f;
    }
    for (int base = 0; base < vecs; base += LMH_CHUNKS * LHAMA_WARP) {
        if (base > 0) load(base);
#pragma unroll
        for (int c = 0; c < LMH_CHUNKS; ++c) {
            const int vec = base + c * LHAMA_WARP + lane;
            if (vec >= vecs) break;
            float wf[LM_HEAD_VR][8];
#pragma unroll
            for (int vr = 0; vr < LM_HEAD_VR; ++vr) {
                const __half2* h2 = reinterpret_cast<const __half2*>(&w[vr][c]);
#pragma unroll
                for (int p = 0; p < 4; ++p) {
                    const float2 f = __half22float2(h2[p]);
                    wf[vr][2 * p] = f.x;
                    wf[vr][2 * p + 1] = f.y;
                }
            }
#pragma unroll
            for (int r = 0; r < LM_HEAD_ROWS; ++r) {
                if (r >= num_rows) break;
                const float4 xa = __ldg(reinterpret_cast<const float4*>(xr[r] + 8 * vec));
                const float4 xb = __ldg(reinterpret_cast<const float4*>(xr[r] + 8 * vec + 4));
#pragma unroll
                for (int vr = 0; vr < LM_HEAD_VR; ++vr) {
                    const float* f = wf[vr];
                    acc[r][vr] += xa.x * f[0] + xa.y * f[1] + xa.z * f[2] + xa.w * f[3];
                    acc[r][vr] += xb.x * f[4] + xb.y * f[5] + xb.z * f[6] + xb.w * f[7];
                }
            }
        }
    }
    // Butterfly: at each step a lane keeps the half of its values that its
    // lane bit selects and adds its partner's copy of that half.
    float a[LHAMA_WARP];
#pragma unroll
    for (int r = 0; r < LM_HEAD_ROWS; ++r)
#pragma unroll
        for (int vr = 0; vr < LM_HEAD_VR; ++vr) a[r * LM_HEAD_VR + vr] = acc[r][vr];
    butterfly_half<16>(a, lane);
    butterfly_half<8>(a, lane);
    butterfly_half<4>(a, lane);
    butterfly_half<2>(a, lane);
    butterfly_half<1>(a, lane);
    const int r = lane / LM_HEAD_VR, v = v0 + lane % LM_HEAD_VR;
    if (r < num_rows && v < vocab) logits[(size_t)r * vocab + v] = a[0];
}
