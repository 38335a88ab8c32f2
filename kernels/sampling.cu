// Sampling on the GPU, so a decode step hands back tokens instead of logits.
// Follows lhama_model::sampling exactly (the definition; the GPU test checks
// this kernel against it):
//   w = exp((logit - max) / temperature); the kept tokens are a prefix of
//   the vocabulary sorted by (w descending, id ascending) whose length is
//   the smallest of top_k, the top_p prefix (against the top_k prefix's
//   weight) and the count of w >= min_p, at least 1; r = u * (kept weight)
//   picks the kept token, in id order, where the running sum first exceeds r.
// Without a sort: a prefix by weight is "every w above a threshold t, plus
// the lowest ids among those equal to t", and t is found by bisection over
// the bits of a float in [0, 1] (w > 0 orders like its bit pattern).
//
// logits   [R, V] f32; rows that draw are overwritten with their weights
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

// Exclusive prefix sum over the block's threads (in thread order); also
// returns the total. `scratch` holds 32 floats.
__device__ __forceinline__ float block_exclusive_sum(float v, float* scratch, float* total) {
    const int lane = threadIdx.x % LHAMA_WARP, warp = threadIdx.x / LHAMA_WARP;
    float incl = v;
    for (int off = 1; off < LHAMA_WARP; off <<= 1) {
        const float o = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += o;
    }
    __syncthreads();
    if (lane == LHAMA_WARP - 1) scratch[warp] = incl;
    __syncthreads();
    float before = 0.0f, all = 0.0f;
    const int warps = blockDim.x / LHAMA_WARP;
    for (int w = 0; w < warps; ++w) {
        if (w < warp) before += scratch[w];
        all += scratch[w];
    }
    *total = all;
    return before + incl - v;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows_f32(
    float* __restrict__ logits, const SampleParams* __restrict__ params, unsigned* __restrict__ tokens, int vocab) {
    __shared__ float scratch[32];
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

    // The largest logit, the lowest id on ties (ids ascend within a thread).
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
    if (bi >= vocab) bi = 0;  // every logit NaN: any token is as good
    if (p.mode == SAMPLE_GREEDY) {
        if (threadIdx.x == 0) tokens[blockIdx.x] = (unsigned)bi;
        return;
    }

    // Weights, in place (the row is only this thread's from here on).
    const float inv_t = 1.0f / p.temperature;
    for (int i = b; i < e; ++i) row[i] = expf((row[i] - bv) * inv_t);

    auto count_ge = [&](float t) {
        float c = 0.0f;
        for (int i = b; i < e; ++i) c += row[i] >= t ? 1.0f : 0.0f;
        return block_reduce_f32<false>(c, scratch);
    };
    auto mass_ge = [&](float t) {
        float s = 0.0f;
        for (int i = b; i < e; ++i) s += row[i] >= t ? row[i] : 0.0f;
        return block_reduce_f32<false>(s, scratch);
    };
    // The largest t in [0, 1] with count_ge(t) >= n (by_mass: mass_ge(t) >=
    // n): these hold at 0 and fail above some point, uniformly across the block.
    auto largest = [&](bool by_mass, float n) {
        unsigned lo = 0u, hi = 0x3f800000u;
        while (lo < hi) {
            const unsigned mid = lo + (hi - lo + 1u) / 2u;
            const float t = __uint_as_float(mid);
            if ((by_mass ? mass_ge(t) : count_ge(t)) >= n) lo = mid;
            else hi = mid - 1u;
        }
        return __uint_as_float(lo);
    };
    auto above = [](float t) { return __uint_as_float(__float_as_uint(t) + 1u); };

    const unsigned v = (unsigned)vocab;
    const bool top_k = p.top_k > 0u && p.top_k < v;
    const bool filtered = top_k || p.top_p < 1.0f || p.min_p > 0.0f;
    // The kept prefix: every w > t_keep, then the first `ties` ids with
    // w == t_keep. Each filter that shortens it sets both.
    unsigned keep = v;
    float t_keep = 0.0f, ties = 0.0f;
    if (filtered) {
        float total_k;
        if (top_k) {
            const float tk = largest(false, (float)p.top_k);
            const float gt = count_ge(above(tk));
            total_k = mass_ge(above(tk)) + ((float)p.top_k - gt) * tk;
            keep = p.top_k, t_keep = tk, ties = (float)p.top_k - gt;
        } else {
            total_k = mass_ge(0.0f);
        }
        if (p.top_p < 1.0f) {
            const float target = p.top_p * total_k;
            const float tp = largest(true, target);
            const float gt = count_ge(above(tp)), eq = count_ge(tp) - gt;
            const float need = target - mass_ge(above(tp));
            const float c = fminf(need > 0.0f ? ceilf(need / tp) : 0.0f, eq);
            if ((unsigned)(gt + c) < keep) keep = (unsigned)(gt + c), t_keep = tp, ties = c;
        }
        if (p.min_p > 0.0f) {
            const float n = count_ge(p.min_p);
            if ((unsigned)n < keep) {
                // The smallest weight at or above min_p, and all its ties.
                float lo = 2.0f;
                for (int i = b; i < e; ++i)
                    if (row[i] >= p.min_p) lo = fminf(lo, row[i]);
                t_keep = -block_reduce_f32<true>(-lo, scratch);
                keep = (unsigned)n, ties = n - count_ge(above(t_keep));
            }
        }
        if (keep == 0u) keep = 1u, t_keep = 1.0f, ties = 1.0f;  // the top token (w = 1) alone
    }

    // This thread's kept weight (ties taken in id order across threads).
    float my_ties = 0.0f;
    if (filtered)
        for (int i = b; i < e; ++i) my_ties += row[i] == t_keep ? 1.0f : 0.0f;
    float all_ties;
    const float ties_before = block_exclusive_sum(my_ties, scratch, &all_ties);
    auto kept = [&](int i, float& tie_rank) {
        if (!filtered) return true;
        const float w = row[i];
        if (w > t_keep) return true;
        if (w == t_keep) {
            const bool k = tie_rank < ties;
            tie_rank += 1.0f;
            return k;
        }
        return false;
    };
    float mine = 0.0f;
    {
        float rank = ties_before;
        for (int i = b; i < e; ++i)
            if (kept(i, rank)) mine += row[i];
    }
    float total;
    const float before = block_exclusive_sum(mine, scratch, &total);
    const float r = p.u * total;
    // The owner is the last thread with kept weight whose range starts at
    // or below r: exactly one thread, whatever the rounding.
    const float owner = block_reduce_f32<true>(mine > 0.0f && before <= r ? (float)threadIdx.x : -1.0f, scratch);
    if ((float)threadIdx.x == owner) {
        float rank = ties_before, acc = before;
        int pick = -1, last = -1;
        for (int i = b; i < e; ++i) {
            if (!kept(i, rank)) continue;
            last = i;
            acc += row[i];
            if (r < acc) {
                pick = i;
                break;
            }
        }
        tokens[blockIdx.x] = (unsigned)(pick >= 0 ? pick : last);
    }
}
