// SiLU-and-multiply.
// gate_up [T, 2 * inter] f32: gate in columns 0..inter, up in inter..2*inter; with
//         splits > 1, [splits, T, 2 * inter]: the split-K partial sums of the product that
//         made it, added up here in split order (as awq_reduce_partials_f32 would, bit for bit)
// out     [T, inter] f32 = silu(gate) * up
// Grid: (ceil(T * inter / 256)), block: 256.
extern "C" __global__ void silu_mul_f32(const float* __restrict__ gate_up, int splits, float* __restrict__ out, int tokens,
                                        int inter) {
    LHAMA_GRID_WAIT();
    LHAMA_GRID_LAUNCH_DEPENDENTS();
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)tokens * inter) return;
    const size_t t = i / inter, j = i % inter;
    float g, u;
    if (splits <= 1) {
        g = gate_up[t * 2 * inter + j];
        u = gate_up[t * 2 * inter + inter + j];
    } else {
        g = 0.0f;
        u = 0.0f;
        const size_t stride = (size_t)tokens * 2 * inter;
#pragma unroll 4
        for (int z = 0; z < splits; ++z) {
            g += gate_up[z * stride + t * 2 * inter + j];
            u += gate_up[z * stride + t * 2 * inter + inter + j];
        }
    }
    out[i] = g / (1.0f + expf(-g)) * u;
}
