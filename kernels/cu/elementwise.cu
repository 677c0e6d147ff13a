// Elementwise operations of the decoder block.

#define ELEMENT_INDEX unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x

// gate = silu(gate) * up
extern "C" __global__ void silu_mul_kernel(float* gate, const float* up, unsigned long long n) {
    ELEMENT_INDEX;
    if (i < n) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// out = bf16(silu(gate) * up): the next GEMM's bf16 input, in one pass
extern "C" __global__ void silu_mul_bf16_kernel(
    const float* gate, const float* up, u16* out, unsigned long long n) {
    ELEMENT_INDEX;
    if (i < n) {
        float g = gate[i];
        out[i] = f32_to_bf16(g / (1.0f + expf(-g)) * up[i]);
    }
}

// acc += x
extern "C" __global__ void add_kernel(float* acc, const float* x, unsigned long long n) {
    ELEMENT_INDEX;
    if (i < n) acc[i] += x[i];
}

// x = clamp(x, -limit, limit)
extern "C" __global__ void clamp_kernel(float* x, unsigned long long n, float limit) {
    ELEMENT_INDEX;
    if (i < n) x[i] = fminf(fmaxf(x[i], -limit), limit);
}

// y (rows, width) += bias (width)
extern "C" __global__ void add_bias_kernel(float* y, const float* bias, unsigned long long n, int width) {
    ELEMENT_INDEX;
    if (i < n) y[i] += bias[i % width];
}
