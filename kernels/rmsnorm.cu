// Fused residual add + RMSNorm.
// x      [T, hidden] f32 residual stream, updated in place: x += delta (when delta != 0)
// delta  [T, hidden] f32 or null
// weight [hidden] f32
// out    [T, hidden] f32 = x * rsqrt(mean(x^2) + eps) * weight
// Grid: (T), block: 256 threads (shared scratch for 32 warps).
extern "C" __global__ void add_rmsnorm_f32(
    float* __restrict__ x, const float* __restrict__ delta, const float* __restrict__ weight,
    float* __restrict__ out, int hidden, float eps) {
    __shared__ float scratch[32];
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    float* row = x + (size_t)blockIdx.x * hidden;
    const float* drow = delta ? delta + (size_t)blockIdx.x * hidden : nullptr;
    float* orow = out + (size_t)blockIdx.x * hidden;
    float sum_sq = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float v = row[i];
        if (drow) {
            v += drow[i];
            row[i] = v;
        }
        sum_sq += v * v;
    }
    const float total = block_reduce_f32<false>(sum_sq, scratch);
    const float inv = rsqrtf(total / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) orow[i] = row[i] * inv * weight[i];
}
