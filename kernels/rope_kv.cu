// Rotary embedding (Hugging Face rotate_half: dimension i pairs with i + D/2)
// and the write of K and V into their paged slots.
// qkv        [T, (H + 2 * KVH) * D] f32: q heads, then k heads, then v heads
// positions  [T] u32, < max positions of the tables
// cos, sin   [max_pos, D/2] f32 (the host computes them as the CPU backend does)
// slots      [T] u32: physical slot = block * block_size + offset of each token
// q_out      [T, H * D] f32 rotated q
// k_cache, v_cache [blocks * block_size, KVH, D] f32 or f16 (_f16kv)
// Grid: (T), block: 256 (threads stride over head pairs).
template <typename KV>
__device__ __forceinline__ void rope_kv_write(
    const float* __restrict__ qkv, const unsigned* __restrict__ positions, const float* __restrict__ cos_table,
    const float* __restrict__ sin_table, const unsigned* __restrict__ slots, float* __restrict__ q_out,
    KV* __restrict__ k_cache, KV* __restrict__ v_cache, int heads, int kv_heads, int head_dim) {
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const int t = blockIdx.x;
    const int half = head_dim / 2;
    const int q_dim = heads * head_dim, kv_dim = kv_heads * head_dim;
    const float* row = qkv + (size_t)t * (q_dim + 2 * kv_dim);
    const float* c = cos_table + (size_t)positions[t] * half;
    const float* s = sin_table + (size_t)positions[t] * half;
    const size_t slot = slots[t];
    // q: heads * half rotation pairs
    for (int p = threadIdx.x; p < heads * half; p += blockDim.x) {
        const int h = p / half, i = p % half;
        const float a = row[h * head_dim + i], b = row[h * head_dim + i + half];
        q_out[(size_t)t * q_dim + h * head_dim + i] = a * c[i] - b * s[i];
        q_out[(size_t)t * q_dim + h * head_dim + i + half] = b * c[i] + a * s[i];
    }
    // k: rotate and store; v: store
    for (int p = threadIdx.x; p < kv_heads * half; p += blockDim.x) {
        const int h = p / half, i = p % half;
        const float a = row[q_dim + h * head_dim + i], b = row[q_dim + h * head_dim + i + half];
        kv_store(&k_cache[slot * kv_dim + h * head_dim + i], a * c[i] - b * s[i]);
        kv_store(&k_cache[slot * kv_dim + h * head_dim + i + half], b * c[i] + a * s[i]);
    }
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) kv_store(&v_cache[slot * kv_dim + i], row[q_dim + kv_dim + i]);
}

extern "C" __global__ void rope_kv_write_f32(
    const float* __restrict__ qkv, const unsigned* __restrict__ positions, const float* __restrict__ cos_table,
    const float* __restrict__ sin_table, const unsigned* __restrict__ slots, float* __restrict__ q_out,
    float* __restrict__ k_cache, float* __restrict__ v_cache, int heads, int kv_heads, int head_dim) {
    rope_kv_write(qkv, positions, cos_table, sin_table, slots, q_out, k_cache, v_cache, heads, kv_heads, head_dim);
}

extern "C" __global__ void rope_kv_write_f16kv(
    const float* __restrict__ qkv, const unsigned* __restrict__ positions, const float* __restrict__ cos_table,
    const float* __restrict__ sin_table, const unsigned* __restrict__ slots, float* __restrict__ q_out,
    __half* __restrict__ k_cache, __half* __restrict__ v_cache, int heads, int kv_heads, int head_dim) {
    rope_kv_write(qkv, positions, cos_table, sin_table, slots, q_out, k_cache, v_cache, heads, kv_heads, head_dim);
}
