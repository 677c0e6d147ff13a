// RMSNorm and LayerNorm, one block per row; the reduction finishes before any write.

extern "C" __global__ void rms_norm_kernel(
    const float* x, const float* weight, float* y, int rows, int width, float eps) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (unsigned long long)row * width;
    float* yr = y + (unsigned long long)row * width;
    float sum_squares = 0.0f;
    for (int d = threadIdx.x; d < width; d += blockDim.x) sum_squares += xr[d] * xr[d];
    float variance = block_sum(sum_squares, scratch) / (float)width;
    float inv_rms = rsqrtf(variance + eps);
    for (int d = threadIdx.x; d < width; d += blockDim.x) yr[d] = weight[d] * (xr[d] * inv_rms);
}

// In place: x = rms_norm(x).
extern "C" __global__ void rms_norm_in_place_kernel(float* x, const float* weight, int rows, int width, float eps) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    float* xr = x + (unsigned long long)row * width;
    float sum_squares = 0.0f;
    for (int d = threadIdx.x; d < width; d += blockDim.x) sum_squares += xr[d] * xr[d];
    float inv_rms = rsqrtf(block_sum(sum_squares, scratch) / (float)width + eps);
    for (int d = threadIdx.x; d < width; d += blockDim.x) xr[d] = weight[d] * (xr[d] * inv_rms);
}

// y = (x - mean) / sqrt(var + eps) * weight (+ bias when has_bias).
extern "C" __global__ void layer_norm_kernel(
    const float* x, const float* weight, const float* bias, int has_bias, float* y, int rows, int width,
    float eps) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (unsigned long long)row * width;
    float* yr = y + (unsigned long long)row * width;
    float sum = 0.0f;
    for (int d = threadIdx.x; d < width; d += blockDim.x) sum += xr[d];
    float mean = block_sum(sum, scratch) / (float)width;
    float sum_squares = 0.0f;
    for (int d = threadIdx.x; d < width; d += blockDim.x) {
        float c = xr[d] - mean;
        sum_squares += c * c;
    }
    float inv_std = rsqrtf(block_sum(sum_squares, scratch) / (float)width + eps);
    for (int d = threadIdx.x; d < width; d += blockDim.x) {
        float v = (xr[d] - mean) * inv_std * weight[d];
        yr[d] = has_bias ? v + bias[d] : v;
    }
}
