// Shared helpers for every lhama kernel. Prepended to each kernel family's
// source before NVRTC compiles it (kernels are embedded in the binary).
//
// Conventions: activations and the residual stream are f32 (the CPU
// reference's precision); the KV cache is f32 (exact path, kernels named
// _f32) or f16 (fast path, kernels named _f16kv), always computed with in
// f32; weights are as loaded (AWQ int4 packed, f16 tables).
// Every kernel takes sizes explicitly; the host checks them before launch.
#include <cuda_fp16.h>

#define LHAMA_WARP 32

// Programmatic dependent launch (Hopper): the host may start a kernel while
// the previous one on the stream is still finishing. Every kernel calls
// LHAMA_GRID_WAIT() before it touches anything an earlier kernel writes (or
// reads: a kernel's writes must not race the previous kernel's reads), in
// every block, before any early return, so that a grid finishing implies all
// earlier grids finished. Before the wait only constant data (weights) may be
// read. LHAMA_GRID_LAUNCH_DEPENDENTS() then lets the next kernel start its own
// prologue. Both are no-ops on older GPUs and for ordinary launches.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define LHAMA_GRID_WAIT() asm volatile("griddepcontrol.wait;\n" ::: "memory")
#define LHAMA_GRID_LAUNCH_DEPENDENTS() asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory")
#else
#define LHAMA_GRID_WAIT() \
    do {                  \
    } while (0)
#define LHAMA_GRID_LAUNCH_DEPENDENTS() \
    do {                               \
    } while (0)
#endif
#define LHAMA_NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float warp_sum_f32(float v) {
    for (int offset = LHAMA_WARP / 2; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

__device__ __forceinline__ float warp_max_f32(float v) {
    for (int offset = LHAMA_WARP / 2; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// Block-wide reduction (sum or max) through shared memory `scratch`
// (one float per warp); every thread gets the result.
template <bool IS_MAX>
__device__ __forceinline__ float block_reduce_f32(float v, float* scratch) {
    const int lane = threadIdx.x % LHAMA_WARP;
    const int warp = threadIdx.x / LHAMA_WARP;
    const int warps = (blockDim.x + LHAMA_WARP - 1) / LHAMA_WARP;
    v = IS_MAX ? warp_max_f32(v) : warp_sum_f32(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = IS_MAX ? LHAMA_NEG_INF : 0.0f;
    for (int w = 0; w < warps; ++w) r = IS_MAX ? fmaxf(r, scratch[w]) : r + scratch[w];
    return r;
}

// The residual add and RMSNorm of one row by one warp, in the order every
// kernel that does it uses (add_rmsnorm_f32 and the GEMV tails below), so
// that they give the same bits: lane l takes elements l, l + 32, ... in
// order, the lanes' sums of squares are added by warp_sum_f32, and
// out = v * rsqrt(mean(v^2) + eps) * weight.
// row [hidden], updated in place: row += delta when drow is not null, drow
// holding `splits` partial sums split_stride apart, added in split order and
// read through L2 (other blocks of the same launch may have written them).
// Up to REGS values a lane stay in registers between the passes (32: hidden
// <= 1024); the rest is read back (this lane's own writes: the same values).
template <int REGS>
__device__ __forceinline__ void add_rmsnorm_warp(
    float* row, const float* drow, int splits, size_t split_stride, const float* __restrict__ weight,
    float* orow, int hidden, float eps, int lane) {
    auto value = [&](int i) {
        float v = row[i];
        if (drow) {
            float d;
            if (splits <= 1) {
                d = __ldcg(drow + i);
            } else {
                d = 0.0f;
#pragma unroll 8
                for (int z = 0; z < splits; ++z) d += __ldcg(drow + (size_t)z * split_stride + i);
            }
            v += d;
            row[i] = v;
        }
        return v;
    };
    float xv[REGS > 0 ? REGS : 1];
    float sum_sq = 0.0f;
#pragma unroll
    for (int j = 0; j < REGS; ++j) {
        const int i = lane + j * LHAMA_WARP;
        const float v = i < hidden ? value(i) : 0.0f;
        xv[j] = v;
        sum_sq += v * v;
    }
    for (int i = lane + REGS * LHAMA_WARP; i < hidden; i += LHAMA_WARP) {
        const float v = value(i);
        sum_sq += v * v;
    }
    const float inv = rsqrtf(warp_sum_f32(sum_sq) / (float)hidden + eps);
#pragma unroll
    for (int j = 0; j < REGS; ++j) {
        const int i = lane + j * LHAMA_WARP;
        if (i < hidden) orow[i] = xv[j] * inv * weight[i];
    }
    for (int i = lane + REGS * LHAMA_WARP; i < hidden; i += LHAMA_WARP) orow[i] = row[i] * inv * weight[i];
}

// The norm tail of a GEMV launch over rows [m_valid, n] whose column tiles
// (gridDim.x of them) each had one block write its part of y: the last of
// those blocks to get here (an atomic counter, re-armed after use) adds y to
// the residual stream and normalizes it, a warp a row, as add_rmsnorm_f32
// would in a launch of its own: resid += y; normed = rmsnorm(resid) * norm_w
// (holding nothing in registers between the passes, so that the GEMV's
// register count, which the tail would otherwise raise, stays as it was).
// Every thread of such a block calls it after its tile's y is written
// (tid: its index in the block, of nthreads). Nothing when norm_w is null.
__device__ __forceinline__ void gemv_norm_tail(
    float* resid, const float* y, const float* __restrict__ norm_w, float* normed, unsigned* counter,
    int m_valid, int n, float eps, int tid, int nthreads) {
    if (norm_w == nullptr) return;
    __shared__ bool last_tile;
    __threadfence();
    __syncthreads();
    if (tid == 0) last_tile = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last_tile) return;
    __threadfence();
    const int lane = tid % LHAMA_WARP;
    for (int r = tid / LHAMA_WARP; r < m_valid; r += nthreads / LHAMA_WARP) {
        add_rmsnorm_warp<0>(resid + (size_t)r * n, y + (size_t)r * n, 1, 0, norm_w, normed + (size_t)r * n, n, eps, lane);
    }
    if (tid == 0) *counter = 0u;
}

// K/V cache elements: loads widen to f32, stores round to nearest.
__device__ __forceinline__ float kv_load(const float* p) { return *p; }
__device__ __forceinline__ float kv_load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void kv_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void kv_store(__half* p, float v) { *p = __float2half_rn(v); }
// A value as the cache will hold it (so a K/V kept in registers equals the stored one).
__device__ __forceinline__ float kv_round(float v, const float*) { return v; }
__device__ __forceinline__ float kv_round(float v, const __half*) { return __half2float(__float2half_rn(v)); }
