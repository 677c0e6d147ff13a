// Dtype conversion and the embedding gather.

extern "C" __global__ void bf16_to_f32_kernel(const u16* in, float* out, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) out[i] = bf16_to_f32(in[i]);
}

extern "C" __global__ void f16_to_f32_kernel(const u16* in, float* out, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) out[i] = f16_to_f32(in[i]);
}

extern "C" __global__ void f32_to_bf16_kernel(const float* in, u16* out, unsigned long long n) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_bf16(in[i]);
}

// out (tokens, width) f32 = table[ids[t]] for a table of `dtype` (0 f32, 1 bf16, 2 f16).
extern "C" __global__ void embedding_gather_kernel(
    const void* table, int dtype, const u32* ids, float* out, int tokens, int width) {
    int t = blockIdx.x;
    if (t >= tokens) return;
    unsigned long long row = (unsigned long long)ids[t] * width;
    for (int d = threadIdx.x; d < width; d += blockDim.x) {
        float v;
        if (dtype == 0) v = ((const float*)table)[row + d];
        else if (dtype == 1) v = bf16_to_f32(((const u16*)table)[row + d]);
        else v = f16_to_f32(((const u16*)table)[row + d]);
        out[(unsigned long long)t * width + d] = v;
    }
}
