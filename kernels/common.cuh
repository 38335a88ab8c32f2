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

// The norm tail of a GEMV launch over rows [m_valid, n] whose column tiles
// (gridDim.x of them) each had one block write its part of y: the last of
// those blocks to get here (an atomic counter, re-armed after use) adds y to
// the residual stream and normalizes it, resid += y; normed =
// rmsnorm(resid) * norm_w, in add_rmsnorm_f32's order (rmsnorm.cu: each of
// 256 threads a row sums the squares of elements t, t + 256, ... in order,
// then the warps' sums, then the 8 warps' in order), so that it gives that
// kernel's bits one launch fewer. The block's NT threads play the 256 of
// every row at once: thread tid takes the (row, t) items tid + NT * p.
// Every thread of such a block calls it after its tile's y is written (tid:
// its index in the block; m_valid <= ROWS <= GEMV_TAIL_ROWS, checked on the
// host).
// Up to GEMV_TAIL_REGS elements an item stay in registers between the
// passes (n <= 1024); the rest is read back. Nothing when norm_w is null.
#define GEMV_TAIL_ROWS 8
#define GEMV_TAIL_THREADS 256
#define GEMV_TAIL_REGS 4
template <int NT, int ROWS>
__device__ __forceinline__ void gemv_norm_tail(
    float* __restrict__ resid, const float* __restrict__ y, const float* __restrict__ norm_w,
    float* __restrict__ normed, unsigned* counter, int m_valid, int n, float eps, int tid) {
    static_assert(NT % LHAMA_WARP == 0 && ROWS <= GEMV_TAIL_ROWS, "whole warps, at most 8 rows");
    constexpr int P = (ROWS * GEMV_TAIL_THREADS + NT - 1) / NT;
    constexpr int WARPS = GEMV_TAIL_THREADS / LHAMA_WARP;
    if (norm_w == nullptr) return;
    __shared__ bool last_tile;
    __shared__ float scratch[ROWS][WARPS];
    __threadfence();
    __syncthreads();
    if (tid == 0) last_tile = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last_tile) return;
    __threadfence();
    const int items = m_valid * GEMV_TAIL_THREADS;
    float xv[P][GEMV_TAIL_REGS], sum_sq[P];
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int e = tid + NT * p, r = e / GEMV_TAIL_THREADS, t = e % GEMV_TAIL_THREADS;
        sum_sq[p] = 0.0f;
        if (e < items) {
            float* row = resid + (size_t)r * n;
            const float* drow = y + (size_t)r * n;
#pragma unroll
            for (int j = 0; j < GEMV_TAIL_REGS; ++j) {
                const int i = t + j * GEMV_TAIL_THREADS;
                float v = 0.0f;
                if (i < n) {
                    v = row[i] + __ldcg(drow + i);
                    row[i] = v;
                }
                xv[p][j] = v;
                sum_sq[p] += v * v;
            }
            for (int i = t + GEMV_TAIL_REGS * GEMV_TAIL_THREADS; i < n; i += GEMV_TAIL_THREADS) {
                const float v = row[i] + __ldcg(drow + i);
                row[i] = v;
                sum_sq[p] += v * v;
            }
        }
    }
    // The 32 items of a warp are 32 consecutive threads of one row.
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int e = tid + NT * p;
        const float w = warp_sum_f32(sum_sq[p]);
        if (e < items && tid % LHAMA_WARP == 0) {
            scratch[e / GEMV_TAIL_THREADS][e % GEMV_TAIL_THREADS / LHAMA_WARP] = w;
        }
    }
    __syncthreads();
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int e = tid + NT * p, r = e / GEMV_TAIL_THREADS, t = e % GEMV_TAIL_THREADS;
        if (e >= items) continue;
        float total = 0.0f;
        for (int w = 0; w < WARPS; ++w) total += scratch[r][w];
        const float inv = rsqrtf(total / (float)n + eps);
        const float* row = resid + (size_t)r * n;
        float* orow = normed + (size_t)r * n;
#pragma unroll
        for (int j = 0; j < GEMV_TAIL_REGS; ++j) {
            const int i = t + j * GEMV_TAIL_THREADS;
            if (i < n) orow[i] = xv[p][j] * inv * norm_w[i];
        }
        for (int i = t + GEMV_TAIL_REGS * GEMV_TAIL_THREADS; i < n; i += GEMV_TAIL_THREADS) {
            orow[i] = row[i] * inv * norm_w[i];
        }
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
