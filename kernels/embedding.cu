// Embedding gather.
// table  [vocab, hidden] f16 (row-major)
// tokens [T] u32, each < vocab (checked on the host)
// x      [T, hidden] f32 out
// Grid: (T), block: any (threads stride over hidden).
extern "C" __global__ void embedding_gather_f16_f32(
    const __half* __restrict__ table, const unsigned* __restrict__ tokens, float* __restrict__ x, int hidden) {
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const int token_index = blockIdx.x;
    const __half* row = table + (size_t)tokens[token_index] * hidden;
    float* out = x + (size_t)token_index * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) out[i] = __half2float(row[i]);
}
