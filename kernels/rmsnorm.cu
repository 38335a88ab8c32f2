// Fused residual add + RMSNorm.
// x      [T, hidden] f32 residual stream, updated in place: x += delta (when delta != 0)
// delta  [T, hidden] f32 or null; with delta_splits > 1, [delta_splits, T, hidden]: the
//        split-K partial sums of the product that made it, added up here in split order
//        (as awq_reduce_partials_f32 would, bit for bit) instead of in a launch of their own
// weight [hidden] f32
// out    [T, hidden] f32 = x * rsqrt(mean(x^2) + eps) * weight
// Two forms (the host picks by row count):
// add_rmsnorm_f32: grid (T), block 256 threads. Up to RMS_REGS elements per
//   thread stay in registers between the two passes (hidden <= 2048); the
//   rest is read again. An element's splits are added as they arrive.
// add_rmsnorm_wide_f32: for a few rows, grid (T), block up to 1024 threads
//   (a thread per element up to hidden 1024): a row's loads are in flight
//   together instead of queued in a few threads. An element's delta splits
//   are loaded RMS_SPLIT_LOADS at a time, all before any is added, then
//   added in split order: the same bits as the plain loop.
// Shared scratch for 32 warps either way.
#define RMS_REGS 8
#define RMS_WIDE_REGS 2
#define RMS_SPLIT_LOADS 32
template <int REGS, bool WIDE>
__device__ __forceinline__ void add_rmsnorm(
    float* __restrict__ x, const float* __restrict__ delta, int delta_splits, const float* __restrict__ weight,
    float* __restrict__ out, int hidden, float eps) {
    __shared__ float scratch[32];
    const int step = blockDim.x;
    // The weights are constant: fetched before waiting for the previous kernel.
    float wv[REGS], xv[REGS];
#pragma unroll
    for (int j = 0; j < REGS; ++j) {
        const int i = threadIdx.x + j * step;
        wv[j] = i < hidden ? weight[i] : 0.0f;
    }
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    float* row = x + (size_t)blockIdx.x * hidden;
    const float* drow = delta ? delta + (size_t)blockIdx.x * hidden : nullptr;
    const size_t split_stride = (size_t)gridDim.x * hidden;
    // The delta of element i: one value, or its splits summed in order.
    auto delta_at = [&](int i) {
        if (delta_splits <= 1) return drow[i];
        float d = 0.0f;
        if (WIDE) {
            for (int z0 = 0; z0 < delta_splits; z0 += RMS_SPLIT_LOADS) {
                float part[RMS_SPLIT_LOADS];
#pragma unroll
                for (int z = 0; z < RMS_SPLIT_LOADS; ++z)
                    part[z] = z0 + z < delta_splits ? drow[(size_t)(z0 + z) * split_stride + i] : 0.0f;
#pragma unroll
                for (int z = 0; z < RMS_SPLIT_LOADS; ++z)
                    if (z0 + z < delta_splits) d += part[z];
            }
        } else {
#pragma unroll 8
            for (int z = 0; z < delta_splits; ++z) d += drow[(size_t)z * split_stride + i];
        }
        return d;
    };
    float* orow = out + (size_t)blockIdx.x * hidden;
    float sum_sq = 0.0f;
#pragma unroll
    for (int j = 0; j < REGS; ++j) {
        const int i = threadIdx.x + j * step;
        float v = 0.0f;
        if (i < hidden) {
            v = row[i];
            if (drow) {
                v += delta_at(i);
                row[i] = v;
            }
        }
        xv[j] = v;
        sum_sq += v * v;
    }
    for (int i = threadIdx.x + REGS * step; i < hidden; i += step) {
        float v = row[i];
        if (drow) {
            v += delta_at(i);
            row[i] = v;
        }
        sum_sq += v * v;
    }
    const float total = block_reduce_f32<false>(sum_sq, scratch);
    const float inv = rsqrtf(total / (float)hidden + eps);
#pragma unroll
    for (int j = 0; j < REGS; ++j) {
        const int i = threadIdx.x + j * step;
        if (i < hidden) orow[i] = xv[j] * inv * wv[j];
    }
    for (int i = threadIdx.x + REGS * step; i < hidden; i += step) orow[i] = row[i] * inv * weight[i];
}

extern "C" __global__ void add_rmsnorm_f32(
    float* __restrict__ x, const float* __restrict__ delta, int delta_splits, const float* __restrict__ weight,
    float* __restrict__ out, int hidden, float eps) {
    add_rmsnorm<RMS_REGS, false>(x, delta, delta_splits, weight, out, hidden, eps);
}

extern "C" __global__ void __launch_bounds__(1024) add_rmsnorm_wide_f32(
    float* __restrict__ x, const float* __restrict__ delta, int delta_splits, const float* __restrict__ weight,
    float* __restrict__ out, int hidden, float eps) {
    add_rmsnorm<RMS_WIDE_REGS, true>(x, delta, delta_splits, weight, out, hidden, eps);
}
