// Elementwise operations of the decoder block.

#define ELEMENT_INDEX unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x

// The gated activation of gate and up: silu(gate) * up (clamped = 0), or GPT-OSS's clamped
// SwiGLU (clamped = 1): g = min(gate, limit), (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha g).
__device__ __forceinline__ float gated(float g, float u, int clamped, float limit, float alpha) {
    if (!clamped) return g / (1.0f + expf(-g)) * u;
    float x = fminf(g, limit);
    float glu = x / (1.0f + expf(-x * alpha));
    return (fminf(fmaxf(u, -limit), limit) + 1.0f) * glu;
}

// gate = gated(gate, up)
extern "C" __global__ void gated_activation_kernel(
    float* gate, const float* up, unsigned long long n, int clamped, float limit, float alpha) {
    ELEMENT_INDEX;
    if (i < n) gate[i] = gated(gate[i], up[i], clamped, limit, alpha);
}

// out = bf16(gated(gate, up)): the next GEMM's bf16 input, in one pass
extern "C" __global__ void gated_activation_bf16_kernel(
    const float* gate, const float* up, u16* out, unsigned long long n, int clamped, float limit,
    float alpha) {
    ELEMENT_INDEX;
    if (i < n) out[i] = f32_to_bf16(gated(gate[i], up[i], clamped, limit, alpha));
}

// gate = gated(gate, up), and out = bf16 of it: the activation kept in f32 and the next
// GEMM's bf16 input, in one pass
extern "C" __global__ void gated_activation_dual_kernel(
    float* gate, const float* up, u16* out, unsigned long long n, int clamped, float limit,
    float alpha) {
    ELEMENT_INDEX;
    if (i < n) {
        const float y = gated(gate[i], up[i], clamped, limit, alpha);
        gate[i] = y;
        out[i] = f32_to_bf16(y);
    }
}

// gate = gated(gate, up) and out = f16 of it (the next GEMM's f16 input) in one pass, listing
// in guard (half_guard.cu's layout; zeroed by the caller) each row of the (rows, cols) matrix
// holding a finite value beyond f16's range
extern "C" __global__ void gated_activation_f16_guarded_kernel(
    float* gate, const float* up, u16* out, unsigned long long n, int cols, int rows, u32* guard,
    int clamped, float limit, float alpha) {
    ELEMENT_INDEX;
    if (i >= n) return;
    const float y = gated(gate[i], up[i], clamped, limit, alpha);
    const u16 bits = f32_to_f16(y);
    gate[i] = y;
    out[i] = bits;
    if (f16_overflowed(y, bits)) {
        const u32 row = (u32)(i / (unsigned long long)cols);
        if (atomicExch(&guard[1 + rows + row], 1u) == 0u) guard[1 + atomicAdd(&guard[0], 1u)] = row;
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

// x = sigmoid(x) (kind 0, gated attention) or silu(x) (kind 1, DeltaNet's z)
extern "C" __global__ void gate_activation_kernel(float* x, unsigned long long n, int kind) {
    ELEMENT_INDEX;
    if (i >= n) return;
    float s = 1.0f / (1.0f + expf(-x[i]));
    x[i] = kind == 0 ? s : x[i] * s;
}

// x *= gate
extern "C" __global__ void multiply_kernel(float* x, const float* gate, unsigned long long n) {
    ELEMENT_INDEX;
    if (i < n) x[i] *= gate[i];
}

// x += value (zero-centred norm weights: 1 + w)
extern "C" __global__ void add_scalar_kernel(float* x, unsigned long long n, float value) {
    ELEMENT_INDEX;
    if (i < n) x[i] += value;
}

// One piece of a regrouping: out[row, to + g * width + j] = in[row, g * group_width + from + j]
// for every row, group g < groups and j < width.
extern "C" __global__ void regroup_kernel(
    const float* in, float* out, unsigned long long n, int groups, int group_width, int out_width,
    int from, int width, int to) {
    ELEMENT_INDEX;
    if (i >= n) return;
    unsigned long long j = i % width;
    unsigned long long g = (i / width) % groups;
    unsigned long long row = i / ((unsigned long long)width * groups);
    out[row * out_width + to + g * width + j] =
        in[row * (unsigned long long)groups * group_width + g * group_width + from + j];
}
