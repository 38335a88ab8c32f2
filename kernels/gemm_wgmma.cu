// AWQ int4 GEMM for many rows on Hopper's warpgroup tensor cores (wgmma,
// sm_90a), on the fragment-ordered weights of gemm_frag.cu and with its
// weight ring (frag_issue) and dequantization (frag_dequant).
//
// A block computes 128 columns x R rows (R = 16, 32, 64 or 128; at 64 and
// 128 as gemm_frag.cu's tiles: the same grid, arguments and split-K partial
// sums): two warpgroups, each a 64-column slab, warp w of the block taking
// column tile w (the rows 16 (w % 4) .. of its warpgroup's A). Each k16 step
// is one wgmma.m64nRk16 per warpgroup, D[64 columns, R rows] += A · B with
//   A = W^T[64 columns, 16 k]: registers, dequantized from the ring as in
//       gemm_frag.cu (the mma.m16n8k16 A fragment of each warp's 16 rows);
//   B = x^T[16 k, R rows]: shared memory through a matrix descriptor, x
//       staged as f16 rows of a 64-k chunk (128 bytes) in the 128-byte
//       swizzle (16-byte piece p of row r at p ^ (r % 8)), 8-row groups
//       1,024 bytes apart; the k16 steps of a chunk are 32 bytes apart.
// The weights come through a ring of WG_STAGES chunks by cp.async, x is
// loaded one chunk ahead into registers and converted as it is staged
// (double-buffered); the staging of chunk c + 1 runs while the tensor cores
// work on chunk c, and each k16 step is a commit group of its own, so step
// t + 1's A fragments are dequantized while step t runs. For many rows the
// wide tile (awq_gemm_wgmma_wide_f16x, below: 256 columns a block) halves
// the instructions a product takes around the tensor cores. (Tried: x through the cp.async ring in f32, converted in
// shared memory, WG_STAGES 4 in 180 KB of dynamic shared memory: slower,
// docs/BENCHMARKS.md round 11.) Each thread keeps R / 2 f32 sums: row 8 i + 2 tig (+1)
// of column gid (+8) of its warp's tile in d[4 i ..].
// Where the tensor cores' order of adding up a k16 step differs from
// mma.sync's, the sums may differ from gemm_frag.cu's in the last bits.
// Host guarantees: those of gemm_frag.cu; launched only on sm_90a.
// Chunks of weights in the ring (static shared memory stays under 48 KB:
// at 128 rows x's two buffers take 32 KB, each ring slot 5 KB).
#define WG_STAGES 3

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LHAMA_WGMMA 1
// A K-major operand in the 128-byte swizzle at shared address `p` (1,024-byte
// aligned): stride between 8-row groups 1,024 bytes (the leading offset is
// unused in this layout).
__device__ __forceinline__ unsigned long long wgmma_desc(const void* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    return (unsigned long long)((a & 0x3FFFFu) >> 4) | (1ull << 16) | ((unsigned long long)(1024 >> 4) << 32) |
           (1ull << 62);
}
// Keeps the compiler from moving accesses of the sums across the
// asynchronous tensor-core operations.
template <int F>
__device__ __forceinline__ void wgmma_fence_sums(float (&d)[F]) {
    static_assert(F % 8 == 0, "sums in groups of 8");
#pragma unroll
    for (int g = 0; g < F / 8; ++g)
        asm volatile("" : "+f"(d[8 * g]), "+f"(d[8 * g + 1]), "+f"(d[8 * g + 2]), "+f"(d[8 * g + 3]),
                     "+f"(d[8 * g + 4]), "+f"(d[8 * g + 5]), "+f"(d[8 * g + 6]), "+f"(d[8 * g + 7])::"memory");
}
// One wgmma.m64nRk16 (R rows of x, the N of the instruction): D[64 columns,
// R rows] += A (registers) * B (descriptor); each thread holds R / 2 sums.
template <int R>
__device__ __forceinline__ void wgmma_m64k16(float (&d)[R / 2], const unsigned (&a)[4], unsigned long long desc);
template <>
__device__ __forceinline__ void wgmma_m64k16<16>(float (&d)[8], const unsigned (&a)[4], unsigned long long desc) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7}, "
        "{%8, %9, %10, %11}, %12, 1, 1, 1, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}
template <>
__device__ __forceinline__ void wgmma_m64k16<32>(float (&d)[16], const unsigned (&a)[4], unsigned long long desc) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
        "{%16, %17, %18, %19}, %20, 1, 1, 1, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}
template <>
__device__ __forceinline__ void wgmma_m64k16<64>(float (&d)[32], const unsigned (&a)[4], unsigned long long desc) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, 1, 1, 1, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}
template <>
__device__ __forceinline__ void wgmma_m64k16<128>(float (&d)[64], const unsigned (&a)[4], unsigned long long desc) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, 1, 1, 1, 0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc));
}
#endif

// Where a thread stages x from (the wgmma tiles' FragX): float4 i of a
// 64-k chunk is row i * 16 + tid / 16 of the block's, k 4 (tid % 16). Rows
// past M read row M - 1 instead of zeros: a row of x reaches only its own
// row of the product, and those rows are never stored. So the loads need no
// predicate and no zero fill.
template <int XV>
struct WgmmaX {
    const float* row[XV];
    __device__ __forceinline__ WgmmaX(const float* __restrict__ x, int m0, int m, int k, int tid) {
#pragma unroll
        for (int i = 0; i < XV; ++i)
            row[i] = x + (size_t)min(m0 + i * 16 + tid / 16, m - 1) * k + (tid % 16) * 4;
    }
    __device__ __forceinline__ void fetch(float4 (&xv)[XV], int k0) const {
#pragma unroll
        for (int i = 0; i < XV; ++i) xv[i] = *reinterpret_cast<const float4*>(row[i] + k0);
    }
};

// A ring slot of the wide tile (SLABS = 2): the chunk of 256 columns, laid
// out as FragStage's 128 (which is the slot of one slab).
struct WideStage {
    uint4 w[16][LHAMA_WARP];  // column tile t (16 columns) at 16 t of the block's
    float zs[2][256];         // zeros, scales of the block's 256 columns
};
template <int SLABS>
struct WgmmaStage {
    using T = FragStage;
};
template <>
struct WgmmaStage<2> {
    using T = WideStage;
};

// frag_issue's copies for SLABS x 128 columns with the thread's sources
// worked out once: the pieces of column tiles warp + 8 s (lane tid % 32)
// and, for threads 0 .. 64 SLABS - 1, 4 columns' zeros (the first half) or
// scales (the second). The zero/scale row of the next chunk to issue is
// counted along (K % group == 0, group % 64 == 0), not divided out.
template <int SLABS>
struct WgmmaIssue {
    static constexpr int PER = 32 * SLABS;  // threads a table
    const uint4* w[SLABS];
    bool w_ok[SLABS];
    const float* zs;
    bool zs_ok;
    int zrow, zrem;
    __device__ __forceinline__ WgmmaIssue(const uint4* __restrict__ frag, const float* __restrict__ zeros,
                                          const float* __restrict__ scales, int n0, int n, int quads, int group,
                                          int kb, int tid) {
        const int warp = tid / LHAMA_WARP, l = tid % LHAMA_WARP;
#pragma unroll
        for (int s = 0; s < SLABS; ++s) {
            const int nt = n0 / 16 + 8 * s + warp;
            w_ok[s] = nt < n / 16;
            w[s] = frag + (size_t)(w_ok[s] ? nt : 0) * quads * LHAMA_WARP + l;
        }
        const int c = n0 + 4 * (tid % PER);
        zs_ok = tid < 2 * PER && c < n;
        zs = (tid / PER ? scales : zeros) + (c < n ? c : 0);
        zrow = kb / group;
        zrem = kb % group;
    }
    // The chunk at k0 (the one after the previous call's) into `slot`.
    template <typename Stage>
    __device__ __forceinline__ void issue(Stage& slot, int k0, int n, int group, int tid) {
        const int warp = tid / LHAMA_WARP, l = tid % LHAMA_WARP;
#pragma unroll
        for (int s = 0; s < SLABS; ++s)
            cp_async16(&slot.w[8 * s + warp][l], w[s] + (size_t)(k0 / 64) * LHAMA_WARP, w_ok[s]);
        if (tid < 2 * PER) cp_async16(&slot.zs[tid / PER][4 * (tid % PER)], zs + (size_t)zrow * n, zs_ok);
        zrem += 64;
        if (zrem == group) {
            zrem = 0;
            ++zrow;
        }
    }
};

// frag_issue behind WgmmaIssue's interface.
struct FragIssue {
    const uint4* frag;
    const float *zeros, *scales;
    int n0, quads;
    __device__ __forceinline__ FragIssue(const uint4* __restrict__ frag, const float* __restrict__ zeros,
                                         const float* __restrict__ scales, int n0, int, int quads, int, int, int)
        : frag(frag), zeros(zeros), scales(scales), n0(n0), quads(quads) {}
    __device__ __forceinline__ void issue(FragStage& slot, int k0, int n, int group, int tid) {
        frag_issue(slot, frag, zeros, scales, n0, n, quads, group, k0, tid);
    }
};
// The loaders of a tile: WgmmaX and WgmmaIssue (fewer instructions a chunk)
// in the 128-row tiles, FragX and frag_issue in the smaller ones, where
// WgmmaX and WgmmaIssue measured slower (docs/BENCHMARKS.md round 14).
template <int R, int XV, int SLABS>
struct WgmmaLoaders {
    static_assert(SLABS == 1, "the wide tile has 128 rows");
    using X = FragX<XV>;
    using W = FragIssue;
};
template <int XV, int SLABS>
struct WgmmaLoaders<128, XV, SLABS> {
    using X = WgmmaX<XV>;
    using W = WgmmaIssue<SLABS>;
};

// A block: R rows x SLABS 128-column slabs. With SLABS = 2 (the wide tile,
// 128 rows) each warpgroup takes two 64-column slabs (columns s * 128 + 64 g
// .. of the block's): two wgmma a k16 step on the same staged x, so every
// chunk of x staged and every instruction around the tensor cores serve
// twice the products; its ring and x take WG_WIDE_SMEM bytes of dynamic
// shared memory (from the host, which sets it on the function at load).
template <int R, int STAGES, int SLABS>
__device__ __forceinline__ void awq_gemm_wgmma(const float* __restrict__ x, const uint4* __restrict__ frag,
                                               const float* __restrict__ zeros, const float* __restrict__ scales,
                                               float* __restrict__ out, int m, int k, int n, int group,
                                               int k_per_split) {
#ifdef LHAMA_WGMMA
    static_assert(STAGES >= 2, "the ring holds this chunk and the next");
    static_assert(R == 16 || R == 32 || R == 64 || R == 128, "a wgmma N");
    static_assert(SLABS == 1 || SLABS == 2, "one or two slabs");
    using Stage = typename WgmmaStage<SLABS>::T;
    using L = WgmmaLoaders<R, R * 16 / FRAG_THREADS, SLABS>;
    constexpr int XV = R * 16 / FRAG_THREADS;  // float4 of x per thread per chunk
    constexpr int XBYTES = R * 128;            // a chunk of staged x: R rows of 64 k f16
    unsigned char* smem;
    if constexpr (SLABS == 1) {
        __shared__ __align__(1024) unsigned char tile_smem[2 * XBYTES + STAGES * sizeof(Stage)];
        smem = tile_smem;
    } else {
        static_assert(WG_WIDE_SMEM >= 1024 + 2 * XBYTES + STAGES * sizeof(Stage),
                      "the host's dynamic shared memory holds the aligned buffers and the ring");
        // The swizzle is of shared addresses: x's buffers start 1,024-aligned.
        extern __shared__ unsigned char wide_smem[];
        smem = wide_smem + ((1024u - ((unsigned)__cvta_generic_to_shared(wide_smem) & 1023u)) & 1023u);
    }
    Stage* ring = reinterpret_cast<Stage*>(smem + 2 * XBYTES);

    const int tid = threadIdx.x, lane = tid % LHAMA_WARP, warp = tid / LHAMA_WARP;
    const int gid = lane / 4, tig = lane % 4;
    const int m0 = blockIdx.y * R, n0 = blockIdx.x * 128 * SLABS;
    const int kb = blockIdx.z * k_per_split;
    const int ke = min(k, kb + k_per_split);
    const int chunks = (ke - kb) / 64;
    const int quads = k / 64;

    // Staging: 8 bytes of row r's 16-byte piece (tid % 16) / 2, swizzled.
    const typename L::X xsrc(x, m0, m, k, tid);
    float4 xv[XV];
    auto fetch_x = [&](int k0) { xsrc.fetch(xv, k0); };
    // Generic-proxy stores, read by the tensor cores (the async proxy): each
    // thread fences its own before the barrier that publishes them.
    auto stage_x = [&](int buf) {
#pragma unroll
        for (int i = 0; i < XV; ++i) {
            const int r = (i * FRAG_THREADS + tid) / 16;
            const int off = r * 128 + (((tid % 16) / 2) ^ (r % 8)) * 16 + (tid % 2) * 8;
            *reinterpret_cast<uint2*>(smem + buf * XBYTES + off) = half4_bits(xv[i]);
        }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    };

    float d[SLABS][R / 2];
#pragma unroll
    for (int s = 0; s < SLABS; ++s)
#pragma unroll
        for (int i = 0; i < R / 2; ++i) d[s][i] = 0.0f;

    typename L::W wsrc(frag, zeros, scales, n0, n, quads, group, kb, tid);
    // The first STAGES - 1 chunks' weights (constant) before the wait on the
    // previous kernel; one copy group per chunk, empty past the split's end.
#pragma unroll
    for (int st = 0; st < STAGES - 1; ++st) {
        if (st < chunks) wsrc.issue(ring[st], kb + 64 * st, n, group, tid);
        cp_async_commit();
    }
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    if (chunks > 0) {
        fetch_x(kb);
        stage_x(0);
    }
    for (int c = 0; c < chunks; ++c) {
        const int buf = c & 1;
        // Chunk c's weights have landed and x sits in buffer buf (every
        // thread's, after the barrier); the slot and buffer of chunk c - 1
        // are free (its tensor-core work was waited for).
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int ahead = c + STAGES - 1;
        if (ahead < chunks) wsrc.issue(ring[ahead % STAGES], kb + 64 * ahead, n, group, tid);
        cp_async_commit();
        if (c + 1 < chunks) fetch_x(kb + 64 * (c + 1));
        const Stage& st = ring[c % STAGES];
        unsigned words[SLABS][4], zb[SLABS][2], sb[SLABS][2];
#pragma unroll
        for (int s = 0; s < SLABS; ++s) {
            const uint4 v = st.w[8 * s + warp][lane];
            words[s][0] = v.x;
            words[s][1] = v.y;
            words[s][2] = v.z;
            words[s][3] = v.w;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int cl = 128 * s + warp * 16 + gid + 8 * h;
                zb[s][h] = half2_bits(__float2half2_rn(1024.0f + st.zs[0][cl]));
                sb[s][h] = half2_bits(__float2half2_rn(st.zs[1][cl]));
            }
        }
        // One group a k16 step: step t + 1's A fragments are dequantized
        // while the tensor cores work on step t.
        const unsigned long long desc = wgmma_desc(smem + buf * XBYTES);
        unsigned a[2][SLABS][4];  // [step parity][slab]
#pragma unroll
        for (int s = 0; s < SLABS; ++s) {
            frag_dequant(a[0][s], words[s][0], zb[s], sb[s]);
            wgmma_fence_sums(d[s]);
        }
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
            for (int s = 0; s < SLABS; ++s) wgmma_m64k16<R>(d[s], a[t & 1][s], desc + 2 * t);  // + 32 bytes a step
            asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
            if (t < 3)
#pragma unroll
                for (int s = 0; s < SLABS; ++s) frag_dequant(a[(t + 1) & 1][s], words[s][t + 1], zb[s], sb[s]);
        }
        if (c + 1 < chunks) stage_x(buf ^ 1);
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
        for (int s = 0; s < SLABS; ++s) wgmma_fence_sums(d[s]);
    }

    // d[s][4 i + e]: column gid (+8 for e >= 2) of the warp's tile in slab
    // s, row 8 i + 2 tig (+1 for odd e).
    float* dst = out + (size_t)blockIdx.z * m * n;
#pragma unroll
    for (int s = 0; s < SLABS; ++s) {
        if (n0 / 16 + 8 * s + warp >= n / 16) continue;
        const int col = n0 + 128 * s + warp * 16 + gid;
#pragma unroll
        for (int i = 0; i < R / 8; ++i) {
            const int row = m0 + 8 * i + 2 * tig;
            if (row < m) {
                dst[(size_t)row * n + col] = d[s][4 * i];
                dst[(size_t)row * n + col + 8] = d[s][4 * i + 2];
            }
            if (row + 1 < m) {
                dst[(size_t)(row + 1) * n + col] = d[s][4 * i + 1];
                dst[(size_t)(row + 1) * n + col + 8] = d[s][4 * i + 3];
            }
        }
    }
#else
    LHAMA_GRID_WAIT();
    __trap();
#endif
}

// One kernel a tile height (the host takes the smallest that holds M, else
// 128); the smaller tiles leave room for two blocks an SM.
#define LHAMA_WGMMA_KERNEL(R, BLOCKS)                                                                         \
    extern "C" __global__ void __launch_bounds__(FRAG_THREADS, BLOCKS) awq_gemm_wgmma##R##_f16x(                \
        const float* __restrict__ x, const uint4* __restrict__ frag, const float* __restrict__ zeros,          \
        const float* __restrict__ scales, float* __restrict__ out, int m, int k, int n, int group,             \
        int k_per_split) {                                                                                      \
        awq_gemm_wgmma<R, WG_STAGES, 1>(x, frag, zeros, scales, out, m, k, n, group, k_per_split);              \
    }
LHAMA_WGMMA_KERNEL(16, 2)
LHAMA_WGMMA_KERNEL(32, 2)
LHAMA_WGMMA_KERNEL(64, 2)
LHAMA_WGMMA_KERNEL(128, 1)

// The wide tile: 128 rows x 256 columns a block, for many rows (prefill);
// rows, splits, sums and their order as awq_gemm_wgmma128_f16x, per
// 128-column slab. Host guarantees: those of gemm_frag.cu; launched only on
// sm_90a, with WG_WIDE_SMEM bytes of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(FRAG_THREADS, 1)
    awq_gemm_wgmma_wide_f16x(const float* __restrict__ x, const uint4* __restrict__ frag,
                             const float* __restrict__ zeros, const float* __restrict__ scales,
                             float* __restrict__ out, int m, int k, int n, int group, int k_per_split) {
    awq_gemm_wgmma<128, WG_STAGES, 2>(x, frag, zeros, scales, out, m, k, n, group, k_per_split);
}
