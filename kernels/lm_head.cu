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
