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
// logits   [R, V] f32; rows that draw are overwritten (weights' float parts)
// params   [R] SampleParams; mode SAMPLE_LOGITS rows are left alone
// tokens   [R] u32 out
// Grid: (R), block: SAMPLE_THREADS. Thread i owns the contiguous ids
// [i * C, (i + 1) * C), C = ceil(V / SAMPLE_THREADS), so thread order is id
// order and prefix sums over threads are prefix sums over ids.
#define SAMPLE_THREADS 1024
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
// trunc(sample_weight(...) * 2^40).
__device__ __forceinline__ float sample_weight(float logit, float max, float inv_t) {
    const float y = __fmul_rn(__fmul_rn(__fsub_rn(logit, max), inv_t), __uint_as_float(0x3fb8aa3bu));
    if (!(y > -40.0f)) return 0.0f;
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

__device__ __forceinline__ u64 fixed_weight(float w) { return __float2ull_rz(__fmul_rn(w, 1099511627776.0f)); }

// Block-wide sum or max of a u64; every thread gets it. `scratch` holds 32.
template <bool IS_MAX>
__device__ __forceinline__ u64 block_reduce_u64(u64 v, u64* scratch) {
    const int lane = threadIdx.x % LHAMA_WARP, warp = threadIdx.x / LHAMA_WARP;
    for (int off = LHAMA_WARP / 2; off > 0; off >>= 1) {
        const u64 o = __shfl_xor_sync(0xffffffffu, v, off);
        v = IS_MAX ? (o > v ? o : v) : v + o;
    }
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    u64 r = 0;
    for (int w = 0; w < (int)(blockDim.x / LHAMA_WARP); ++w) r = IS_MAX ? (scratch[w] > r ? scratch[w] : r) : r + scratch[w];
    return r;
}

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

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows_f32(
    float* __restrict__ logits, const SampleParams* __restrict__ params, unsigned* __restrict__ tokens, int vocab) {
    __shared__ u64 scratch[32];
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const SampleParams p = params[blockIdx.x];
    if (p.mode == SAMPLE_LOGITS) return;  // uniform across the block
    float* row = logits + (size_t)blockIdx.x * vocab;
    const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
    const int b = min(vocab, (int)threadIdx.x * chunk), e = min(vocab, b + chunk);
    const int lane = threadIdx.x % LHAMA_WARP, warp = threadIdx.x / LHAMA_WARP;

    // The largest logit, the lowest id on ties (ids ascend within a thread;
    // NaN never wins).
    float bv = LHAMA_NEG_INF;
    int bi = vocab;
    for (int i = b; i < e; ++i) {
        const float v = row[i];
        if (v > bv) bv = v, bi = i;
    }
    for (int off = LHAMA_WARP / 2; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
        if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (lane == 0) best_v[warp] = bv, best_i[warp] = bi;
    __syncthreads();
    bv = best_v[0], bi = best_i[0];
    for (int w = 1; w < (int)(blockDim.x / LHAMA_WARP); ++w)
        if (best_v[w] > bv || (best_v[w] == bv && best_i[w] < bi)) bv = best_v[w], bi = best_i[w];
    if (bi >= vocab) bi = 0;  // every logit NaN: the host's argmax says 0 too
    if (p.mode == SAMPLE_GREEDY) {
        if (threadIdx.x == 0) tokens[blockIdx.x] = (unsigned)bi;
        return;
    }

    // Weights, in place (from here on each thread only touches its own ids).
    const float inv_t = __fdiv_rn(1.0f, p.temperature);
    for (int i = b; i < e; ++i) row[i] = sample_weight(row[i], bv, inv_t);
    auto W = [&](int i) { return fixed_weight(row[i]); };
    auto count_ge = [&](u64 t) {
        u64 c = 0;
        for (int i = b; i < e; ++i) c += W(i) >= t ? 1ull : 0ull;
        return block_reduce_u64<false>(c, scratch);
    };
    auto mass_ge = [&](u64 t) {
        u64 m = 0;
        for (int i = b; i < e; ++i) {
            const u64 w = W(i);
            m += w >= t ? w : 0ull;
        }
        return block_reduce_u64<false>(m, scratch);
    };
    u64 max_w = 0;  // set when filtering
    // The largest t in [0, max_w] with count_ge(t) >= n (by_mass:
    // mass_ge(t) >= n as doubles); both hold at 0 and are uniform across
    // the block.
    auto largest = [&](bool by_mass, double n) {
        u64 lo = 0, hi = max_w;
        while (lo < hi) {
            const u64 mid = lo + (hi - lo + 1) / 2;
            const double have = by_mass ? (double)mass_ge(mid) : (double)count_ge(mid);
            if (have >= n) lo = mid;
            else hi = mid - 1;
        }
        return lo;
    };

    const u64 v = (u64)vocab;
    const bool top_k = p.top_k > 0u && (u64)p.top_k < v;
    const bool filtered = top_k || p.top_p < 1.0f || p.min_p > 0.0f;
    // The kept prefix: every weight above t_keep, then the first `ties`
    // ids weighing t_keep. Each filter that shortens it sets all three.
    u64 keep = v, t_keep = 0, ties = 0;
    if (filtered) {
        for (int i = b; i < e; ++i) max_w = W(i) > max_w ? W(i) : max_w;
        max_w = block_reduce_u64<true>(max_w, scratch);
        u64 total_k;
        if (top_k) {
            const u64 tk = largest(false, (double)p.top_k);
            const u64 gt = count_ge(tk + 1);
            total_k = mass_ge(tk + 1) + ((u64)p.top_k - gt) * tk;
            keep = p.top_k, t_keep = tk, ties = (u64)p.top_k - gt;
        } else {
            total_k = mass_ge(0);
        }
        if (p.top_p < 1.0f) {
            const double target = (double)p.top_p * (double)total_k;
            const u64 tp = largest(true, target);
            const u64 gt = count_ge(tp + 1), mgt = mass_ge(tp + 1);
            const u64 eq = count_ge(tp) - gt;
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
            const u64 n = count_ge(floor_w);
            if (n < keep) {
                // The lightest weight at or above the floor, and all its ties.
                u64 lightest = ~0ull;
                for (int i = b; i < e; ++i)
                    if (W(i) >= floor_w && W(i) < lightest) lightest = W(i);
                t_keep = ~block_reduce_u64<true>(~lightest, scratch);
                keep = n, ties = n - count_ge(t_keep + 1);
            }
        }
        if (keep == 0) keep = 1, t_keep = max_w, ties = 1;  // the first by weight alone
    }

    // This thread's kept weight (ties taken in id order across threads).
    u64 my_ties = 0;
    if (filtered)
        for (int i = b; i < e; ++i) my_ties += W(i) == t_keep ? 1ull : 0ull;
    u64 all_ties;
    const u64 ties_before = block_exclusive_sum_u64(my_ties, scratch, &all_ties);
    auto kept = [&](int i, u64& tie_rank) {
        if (!filtered) return true;
        const u64 w = W(i);
        if (w > t_keep) return true;
        if (w == t_keep) return tie_rank++ < ties;
        return false;
    };
    u64 mine = 0;
    {
        u64 rank = ties_before;
        for (int i = b; i < e; ++i)
            if (kept(i, rank)) mine += W(i);
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
    const u64 owner = block_reduce_u64<true>(mine > 0 && before <= r ? threadIdx.x + 1ull : 0ull, scratch);
    if ((u64)threadIdx.x + 1 == owner) {
        u64 rank = ties_before, acc = before;
        int pick = -1, last = -1;
        for (int i = b; i < e; ++i) {
            if (!kept(i, rank)) continue;
            last = i;
            acc += W(i);
            if (r < acc) {
                pick = i;
                break;
            }
        }
        tokens[blockIdx.x] = (unsigned)(pick >= 0 ? pick : last);
    }
}
