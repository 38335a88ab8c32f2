// SiLU-and-multiply.
// gate_up [T, 2 * inter] f32: gate in columns 0..inter, up in inter..2*inter
// out     [T, inter] f32 = silu(gate) * up
// Grid: (ceil(T * inter / 256)), block: 256.
extern "C" __global__ void silu_mul_f32(const float* __restrict__ gate_up, float* __restrict__ out, int tokens, int inter) {
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)tokens * inter) return;
    const size_t t = i / inter, j = i % inter;
    const float g = gate_up[t * 2 * inter + j];
    const float u = gate_up[t * 2 * inter + inter + j];
    out[i] = g / (1.0f + expf(-g)) * u;
}
