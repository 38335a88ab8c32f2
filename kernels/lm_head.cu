// Output projection with f16 weights: logits[r, v] = sum_i xn[rows[r], i] * W[v, i].
// xn     [T, hidden] f32 (final-normed hidden states)
// rows   [R] u32 indexes into T
// weight [vocab, hidden] f16
// logits [R, vocab] f32
// Grid: (ceil(vocab / 8)), block: 256 = 8 warps, one vocabulary row per warp.
extern "C" __global__ void lm_head_f16_f32(
    const float* __restrict__ xn, const unsigned* __restrict__ rows, const __half* __restrict__ weight,
    float* __restrict__ logits, int num_rows, int hidden, int vocab) {
    const int lane = threadIdx.x % LHAMA_WARP;
    const int v = blockIdx.x * (blockDim.x / LHAMA_WARP) + threadIdx.x / LHAMA_WARP;
    if (v >= vocab) return;
    const __half* wrow = weight + (size_t)v * hidden;
    for (int r = 0; r < num_rows; ++r) {
        const float* x = xn + (size_t)rows[r] * hidden;
        float acc = 0.0f;
        for (int i = lane; i < hidden; i += LHAMA_WARP) acc += x[i] * __half2float(wrow[i]);
        acc = warp_sum_f32(acc);
        if (lane == 0) logits[(size_t)r * vocab + v] = acc;
    }
}
