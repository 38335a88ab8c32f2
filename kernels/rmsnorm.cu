// Fused residual add + RMSNorm, a warp a row (add_rmsnorm_warp in
// common.cuh: the order the GEMV norm tails use too).
// x      [rows, hidden] f32 residual stream, updated in place: x += delta (when delta != 0)
// delta  [rows, hidden] f32 or null; with delta_splits > 1, [delta_splits, rows, hidden]: the
//        split-K partial sums of the product that made it, added up here in split order
//        instead of in a launch of their own
// weight [hidden] f32
// out    [rows, hidden] f32 = x * rsqrt(mean(x^2) + eps) * weight
// Grid: (ceil(rows / (block / 32))), block: a multiple of 32 threads.
extern "C" __global__ void add_rmsnorm_f32(
    float* __restrict__ x, const float* __restrict__ delta, int delta_splits, const float* __restrict__ weight,
    float* __restrict__ out, int rows, int hidden, float eps) {
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const int r = blockIdx.x * (blockDim.x / LHAMA_WARP) + threadIdx.x / LHAMA_WARP;
    if (r >= rows) return;
    const size_t at = (size_t)r * hidden;
    add_rmsnorm_warp<32>(x + at, delta ? delta + at : nullptr, delta_splits, (size_t)rows * hidden, weight, out + at,
                     hidden, eps, threadIdx.x % LHAMA_WARP);
}
