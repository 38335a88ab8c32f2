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

// Thread block clusters (Hopper): kernels that use them are launched only
// there, with the cluster dimension as a launch attribute.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// This block's shared-memory address `p` in the block of cluster rank `rank`.
__device__ __forceinline__ unsigned cluster_map(const void* p, unsigned rank) {
    unsigned r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n"
                 : "=r"(r)
                 : "r"((unsigned)__cvta_generic_to_shared(p)), "r"(rank));
    return r;
}
// Loads through an address from cluster_map (itself ordered after the
// barrier that publishes the data, which these depend on): not volatile, so
// that the loads of several ranks are all in flight before any is used.
__device__ __forceinline__ float ld_cluster_f32(unsigned addr) {
    float v;
    asm("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(addr));
    return v;
}
__device__ __forceinline__ float4 ld_cluster_f4(unsigned addr) {
    float4 v;
    asm("ld.shared::cluster.v4.f32 {%0,%1,%2,%3}, [%4];\n" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(addr));
    return v;
}
// Every thread of every block of the cluster: writes before are visible
// to reads after, across the cluster's shared memory.
__device__ __forceinline__ void cluster_barrier() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
__device__ __forceinline__ unsigned cluster_size() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(r));
    return r;
}
#endif

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

// K/V cache elements: loads widen to f32, stores round to nearest.
__device__ __forceinline__ float kv_load(const float* p) { return *p; }
__device__ __forceinline__ float kv_load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void kv_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void kv_store(__half* p, float v) { *p = __float2half_rn(v); }
// A value as the cache will hold it (so a K/V kept in registers equals the stored one).
__device__ __forceinline__ float kv_round(float v, const float*) { return v; }
__device__ __forceinline__ float kv_round(float v, const __half*) { return __half2float(__float2half_rn(v)); }
