// Sampling on the GPU, so a decode step hands back tokens instead of logits.
// Follows lhama_model::sampling exactly (the definition; the GPU test checks
// this kernel against it):
//   w = exp((logit - max) / temperature); the kept tokens are a prefix of
//   the vocabulary sorted by (w descending, id ascending) whose length is
//   the smallest of top_k, the top_p prefix (against the top_k prefix's
//   weight) and the count of w >= min_p, at least 1; r = u * (kept weight)
//   picks the kept token, in id order, where the running sum first exceeds r.
// Weights are integers (fixed point, see lhama_model::sampling::weight), so
// every sum is exact and the result is the host's, bit for bit. Without a
// sort: a prefix by weight is "every weight above a threshold t, plus the
// lowest ids among those equal to t", and t is found by bisection.
//
// logits   [R, V] f32, read only
// params   [R] SampleParams; mode SAMPLE_LOGITS rows are left alone
// tokens   [R] u32 out
// Grid: (R, argmax slices), block: SAMPLE_THREADS.
// SAMPLE_THREADS: defined by the host (kernels::shared_defines).
#define SAMPLE_LOGITS 0
#define SAMPLE_GREEDY 1
#define SAMPLE_DRAW 2

struct SampleParams {
    int mode;
    float temperature;
    unsigned top_k;
    float top_p;
    float min_p;
    float u;
};

typedef unsigned long long u64;

// The fixed-point weight's float part, exactly as lhama_model::sampling::weight
// computes it (every operation IEEE-rounded, no contraction): the weight is
// trunc(sample_weight(...) * 2^31).
__device__ __forceinline__ float sample_weight(float logit, float max, float inv_t) {
    const float y = __fmul_rn(__fmul_rn(__fsub_rn(logit, max), inv_t), __uint_as_float(0x3fb8aa3bu));
    if (!(y > -31.0f)) return 0.0f;
    const float n = floorf(y);
    const float f = __fsub_rn(y, n);
    // (ln 2)^k / k!, k = 9 down to 0, as bit patterns (EXP2_POLY on the host).
    const unsigned poly[10] = {0x33da929fu, 0x35b16011u, 0x377fe5feu, 0x39218489u, 0x3aaec3ffu,
                               0x3c1d955bu, 0x3d635847u, 0x3e75fdf0u, 0x3f317218u, 0x3f800000u};
    float p = __uint_as_float(poly[0]);
#pragma unroll
    for (int k = 1; k < 10; ++k) p = fmaf(p, f, __uint_as_float(poly[k]));
    return __fmul_rn(p, __uint_as_float((unsigned)(127 + (int)n) << 23));
}

__device__ __forceinline__ unsigned fixed_weight(float w) { return __float2uint_rz(__fmul_rn(w, 2147483648.0f)); }

// Block-wide sums and maxima of u64 with one barrier each: two buffers
// used in turn, so a reduction's writes never race the previous one's reads
// (every thread passed the barrier in between).
struct BlockReducer {
    u64* buf;  // shared [2][32]
    int parity;
    template <bool IS_MAX>
    __device__ __forceinline__ u64 reduce(u64 v) {
        const int lane = threadIdx.x % LHAMA_WARP, warp = threadIdx.x / LHAMA_WARP;
        for (int off = LHAMA_WARP / 2; off > 0; off >>= 1) {
            const u64 o = __shfl_xor_sync(0xffffffffu, v, off);
            v = IS_MAX ? (o > v ? o : v) : v + o;
        }
        u64* slot = buf + parity * 32;
        parity ^= 1;
        if (lane == 0) slot[warp] = v;
        __syncthreads();
        u64 r = 0;
        for (int w = 0; w < (int)(blockDim.x / LHAMA_WARP); ++w) r = IS_MAX ? (slot[w] > r ? slot[w] : r) : r + slot[w];
        return r;
    }
};

// Exclusive prefix sum over the block's threads (in thread order), and the total.
__device__ __forceinline__ u64 block_exclusive_sum_u64(u64 v, u64* scratch, u64* total) {
    const int lane = threadIdx.x % LHAMA_WARP, warp = threadIdx.x / LHAMA_WARP;
    u64 incl = v;
    for (int off = 1; off < LHAMA_WARP; off <<= 1) {
        const u64 o = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += o;
    }
    __syncthreads();
    if (lane == LHAMA_WARP - 1) scratch[warp] = incl;
    __syncthreads();
    u64 before = 0, all = 0;
    for (int w = 0; w < (int)(blockDim.x / LHAMA_WARP); ++w) {
        if (w < warp) before += scratch[w];
        all += scratch[w];
    }
    *total = all;
    return before + incl - v;
}

// Each thread keeps its first SAMPLE_REG ids' fixed weights in registers
// (all of them for vocabularies up to 512 * 64 = 32768); weights of ids past
// that are computed again from the logits when needed.
#define SAMPLE_REG 64

// BODY for each of this thread's ids I (in id order) with fixed weight X
// (a u64). A macro, not a lambda: a closure over w[] would put it in local
// memory.
#define SAMPLE_EACH(I, X, BODY)                                                      \
    do {                                                                             \
        _Pragma("unroll") for (int j_ = 0; j_ < SAMPLE_REG; ++j_) {                  \
            if (b + j_ < e) {                                                        \
                const int I = b + j_;                                                \
                const u64 X = w[j_];                                                 \
                BODY;                                                                \
            }                                                                        \
        }                                                                            \
        for (int I = b + SAMPLE_REG; I < e; ++I) {                                   \
            const u64 X = fixed_weight(sample_weight(row[I], bv, inv_t));            \
            BODY;                                                                    \
        }                                                                            \
    } while (0)

// Count (or, BY_MASS, weight) of this thread's ids weighing at least t.
// Weights fit 32 bits, so the registers are compared as such.
template <bool BY_MASS>
__device__ __forceinline__ u64 local_ge(const unsigned (&w)[SAMPLE_REG], const float* row, int b, int e, float bv,
                                        float inv_t, u64 t) {
    if (t > 0xffffffffull) return 0;
    const unsigned t32 = (unsigned)t;
    u64 mass = 0;
    unsigned count = 0;
#pragma unroll
    for (int j = 0; j < SAMPLE_REG; ++j) {
        const bool in = b + j < e && w[j] >= t32;
        if (BY_MASS) mass += in ? w[j] : 0u;
        else count += in ? 1u : 0u;
    }
    for (int i = b + SAMPLE_REG; i < e; ++i) {
        const unsigned x = fixed_weight(sample_weight(row[i], bv, inv_t));
        if (BY_MASS) mass += x >= t32 ? x : 0u;
        else count += x >= t32 ? 1u : 0u;
    }
    return BY_MASS ? mass : count;
}

// The largest t in [0, max_w] with (block-wide) count_ge(t) >= n (BY_MASS:
// weight_ge(t) >= n, as doubles): both hold at 0; uniform across the block.
template <bool BY_MASS>
__device__ __forceinline__ u64 largest_ge(const unsigned (&w)[SAMPLE_REG], const float* row, int b, int e, float bv,
                                          float inv_t, u64 max_w, double n, BlockReducer& red) {
    u64 lo = 0, hi = max_w;
    while (lo < hi) {
        const u64 mid = lo + (hi - lo + 1) / 2;
        const u64 have = red.reduce<false>(local_ge<BY_MASS>(w, row, b, e, bv, inv_t, mid));
        if ((double)have >= n) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// The argmax is split over gridDim.y blocks a row (ids [z * span, (z + 1)
// * span) in block z): each leaves its slice's best (value, id) in part_v /
// part_i [R, gridDim.y]; the last block of the row to finish (counters [R],
// zero between launches, re-armed) takes the best of them, in slice order
// by the same rule (larger value, then lower id: a total order, so the same
// token as one block over the row), and goes on alone: the greedy token, or
// the draw over the whole row. One block a row (gridDim.y = 1) needs no
// scratch.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows_f32(
    const float* __restrict__ logits, const SampleParams* __restrict__ params, unsigned* __restrict__ tokens,
    int vocab, float* __restrict__ part_v, unsigned* __restrict__ part_i, unsigned* __restrict__ counters) {
    __shared__ u64 scratch[32];
    __shared__ u64 red_buf[2][32];
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const SampleParams p = params[blockIdx.x];
    if (p.mode == SAMPLE_LOGITS) return;  // uniform across the block
    const float* row = logits + (size_t)blockIdx.x * vocab;
    const int lane = threadIdx.x % LHAMA_WARP, warp = threadIdx.x / LHAMA_WARP;

    // The largest logit, the lowest id on ties (NaN never wins), read
    // coalesced: thread i takes ids i, i + blockDim, ...
    const int slices = (int)gridDim.y;
    const int span = (vocab + slices - 1) / slices;
    const int lo = (int)blockIdx.y * span, hi = min(vocab, lo + span);
    float bv = LHAMA_NEG_INF;
    int bi = vocab;
#pragma unroll 8
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float x = row[i];
        if (x > bv) bv = x, bi = i;
    }
    for (int off = LHAMA_WARP / 2; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
        if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (lane == 0) best_v[warp] = bv, best_i[warp] = bi;
    __syncthreads();
    bv = best_v[0], bi = best_i[0];
    for (int k = 1; k < (int)(blockDim.x / LHAMA_WARP); ++k)
        if (best_v[k] > bv || (best_v[k] == bv && best_i[k] < bi)) bv = best_v[k], bi = best_i[k];
    if (slices > 1) {
        __shared__ bool last;
        const size_t at = (size_t)blockIdx.x * slices;
        if (threadIdx.x == 0) {
            part_v[at + blockIdx.y] = bv;
            part_i[at + blockIdx.y] = (unsigned)bi;
            __threadfence();
            last = atomicAdd(&counters[blockIdx.x], 1u) == (unsigned)slices - 1u;
        }
        __syncthreads();
        if (!last) return;
        __threadfence();
        bv = LHAMA_NEG_INF, bi = vocab;
        for (int z = 0; z < slices; ++z) {
            const float ov = __ldcg(&part_v[at + z]);
            const int oi = (int)__ldcg(&part_i[at + z]);
            if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
        }
        if (threadIdx.x == 0) counters[blockIdx.x] = 0u;
    }
    if (bi >= vocab) bi = 0;  // every logit NaN: the host's argmax says 0 too
    if (p.mode == SAMPLE_GREEDY) {
        if (threadIdx.x == 0) tokens[blockIdx.x] = (unsigned)bi;
        return;
    }

    // A draw. Thread i owns the contiguous ids [b, e) (a multiple of 4 long,
    // so rows of a vocabulary divisible by 4 load as float4): thread order
    // is id order, and prefix sums over threads are prefix sums over ids.
    const int chunk = ((vocab + (int)blockDim.x - 1) / (int)blockDim.x + 3) / 4 * 4;
    const int b = min(vocab, (int)threadIdx.x * chunk), e = min(vocab, b + chunk);
    const float inv_t = __fdiv_rn(1.0f, p.temperature);
    unsigned w[SAMPLE_REG];
    if (vocab % 4 == 0) {
#pragma unroll
        for (int j = 0; j < SAMPLE_REG; j += 4) {
            const float4 q = b + j < e ? *reinterpret_cast<const float4*>(row + b + j)
                                       : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            w[j] = fixed_weight(sample_weight(q.x, bv, inv_t));
            w[j + 1] = fixed_weight(sample_weight(q.y, bv, inv_t));
            w[j + 2] = fixed_weight(sample_weight(q.z, bv, inv_t));
            w[j + 3] = fixed_weight(sample_weight(q.w, bv, inv_t));
        }
    } else {
#pragma unroll
        for (int j = 0; j < SAMPLE_REG; ++j) w[j] = b + j < e ? fixed_weight(sample_weight(row[b + j], bv, inv_t)) : 0u;
    }

    BlockReducer red{&red_buf[0][0], 0};
#define SAMPLE_COUNT_GE(T) red.reduce<false>(local_ge<false>(w, row, b, e, bv, inv_t, (T)))
#define SAMPLE_MASS_GE(T) red.reduce<false>(local_ge<true>(w, row, b, e, bv, inv_t, (T)))
    const u64 v = (u64)vocab;
    const bool top_k = p.top_k > 0u && (u64)p.top_k < v;
    const bool filtered = top_k || p.top_p < 1.0f || p.min_p > 0.0f;
    // The kept prefix: every weight above t_keep, then the first `ties`
    // ids weighing t_keep. Each filter that shortens it sets all three.
    u64 keep = v, t_keep = 0, ties = 0;
    if (filtered) {
        u64 max_w = 0;
        SAMPLE_EACH(i, x, max_w = x > max_w ? x : max_w);
        max_w = red.reduce<true>(max_w);
        u64 total_k;
        if (top_k) {
            const u64 tk = largest_ge<false>(w, row, b, e, bv, inv_t, max_w, (double)p.top_k, red);
            const u64 gt = SAMPLE_COUNT_GE(tk + 1);
            total_k = SAMPLE_MASS_GE(tk + 1) + ((u64)p.top_k - gt) * tk;
            keep = p.top_k, t_keep = tk, ties = (u64)p.top_k - gt;
        } else {
            total_k = SAMPLE_MASS_GE(0);
        }
        if (p.top_p < 1.0f) {
            const double target = (double)p.top_p * (double)total_k;
            const u64 tp = largest_ge<true>(w, row, b, e, bv, inv_t, max_w, target, red);
            const u64 gt = SAMPLE_COUNT_GE(tp + 1), mgt = SAMPLE_MASS_GE(tp + 1);
            const u64 eq = SAMPLE_COUNT_GE(tp) - gt;
            // The fewest ties at tp (in id order) that reach the target.
            u64 c = 0;
            if ((double)mgt < target && tp > 0) {
                c = (u64)ceil((target - (double)mgt) / (double)tp);
                while (c > 0 && (double)(mgt + (c - 1) * tp) >= target) --c;
                while (c < eq && (double)(mgt + c * tp) < target) ++c;
                c = c < eq ? c : eq;
            }
            if (gt + c < keep) keep = gt + c, t_keep = tp, ties = c;
        }
        if (p.min_p > 0.0f) {
            const u64 floor_w = fixed_weight(p.min_p);
            const u64 n = SAMPLE_COUNT_GE(floor_w);
            if (n < keep) {
                // The lightest weight at or above the floor, and all its ties.
                u64 lightest = ~0ull;
                SAMPLE_EACH(i, x, if (x >= floor_w && x < lightest) lightest = x);
                t_keep = ~red.reduce<true>(~lightest);
                keep = n, ties = n - SAMPLE_COUNT_GE(t_keep + 1);
            }
        }
        if (keep == 0) keep = 1, t_keep = max_w, ties = 1;  // the first by weight alone
    }
#undef SAMPLE_COUNT_GE
#undef SAMPLE_MASS_GE

    // This thread's kept weight (ties taken in id order across threads).
    u64 my_ties = 0;
    if (filtered) SAMPLE_EACH(i, x, my_ties += x == t_keep ? 1ull : 0ull);
    u64 all_ties;
    const u64 ties_before = block_exclusive_sum_u64(my_ties, scratch, &all_ties);
    // Whether weight X is kept, counting ties in id order in RANK.
#define SAMPLE_KEPT(X, RANK) (!filtered || (X) > t_keep || ((X) == t_keep && (RANK)++ < ties))
    u64 mine = 0;
    {
        u64 rank = ties_before;
        SAMPLE_EACH(i, x, if (SAMPLE_KEPT(x, rank)) mine += x);
    }
    u64 total;
    const u64 before = block_exclusive_sum_u64(mine, scratch, &total);
    if (total == 0) {  // only when every logit is NaN: greedy
        if (threadIdx.x == 0) tokens[blockIdx.x] = (unsigned)bi;
        return;
    }
    const u64 r = __double2ull_rz((double)p.u * (double)total);
    // The owner: the last thread with kept weight whose range starts at or
    // below r. Exactly one (r < total except by rounding, when the last
    // kept token is the answer, as on the host).
    const u64 owner = red.reduce<true>(mine > 0 && before <= r ? threadIdx.x + 1ull : 0ull);
    if ((u64)threadIdx.x + 1 == owner) {
        u64 rank = ties_before, acc = before;
        int pick = -1, last = -1;
        SAMPLE_EACH(i, x, if (pick < 0 && SAMPLE_KEPT(x, rank)) {
            last = i;
            acc += x;
            if (r < acc) pick = i;
        });
        tokens[blockIdx.x] = (unsigned)(pick >= 0 ? pick : last);
    }
#undef SAMPLE_KEPT
}

// Structured output: sets the logits of the tokens a row's mask does not
// allow to -inf, before sample_rows_f32 (which then samples the masked
// distribution exactly as the host does after lhama_model's mask_logits).
// logits [R, V] f32, masks [R, words] u32: bit i % 32 of word i / 32 allows
// token i (rows without a mask are all ones). Grid: (R), block 256.
extern "C" __global__ void apply_token_masks(float* __restrict__ logits, const unsigned* __restrict__ masks, int vocab,
                                             int words) {
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    float* row = logits + (size_t)blockIdx.x * vocab;
    const unsigned* m = masks + (size_t)blockIdx.x * words;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        if (((m[i >> 5] >> (i & 31)) & 1u) == 0u) row[i] = LHAMA_NEG_INF;
}
