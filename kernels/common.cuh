// Shared helpers for every lhama kernel. Prepended to each kernel family's
// source before NVRTC compiles it (kernels are embedded in the binary).
//
// Conventions: activations, residual stream and KV cache are f32 (the CPU
// reference's precision); weights are as loaded (AWQ int4 packed, f16 tables).
// Every kernel takes sizes explicitly; the host checks them before launch.
#include <cuda_fp16.h>

#define LHAMA_WARP 32
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
