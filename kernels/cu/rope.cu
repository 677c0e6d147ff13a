// Rotary embedding, rotate_half convention, on the first `rotary_dim` dimensions of every
// head (partial rotary leaves the rest alone). Row r is at position r % seq_len, or at
// positions[r] when given (sequences of their own lengths).
// Angles as transformers computes them: f32 position times f32 inverse frequency; cos and
// sin multiplied by `attention_scaling` (YaRN's attention factor, 1 otherwise).

extern "C" __global__ void rope_kernel(
    float* x, const float* inv_freq, int rows, int heads, int head_dim, int rotary_dim, int seq_len,
    float attention_scaling, const int* positions) {
    int half = rotary_dim / 2;
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    unsigned long long total = (unsigned long long)rows * heads * half;
    if (i >= total) return;
    int pair = (int)(i % half);
    unsigned long long row_head = i / half;
    int head = (int)(row_head % heads);
    int row = (int)(row_head / heads);
    const int position = positions != nullptr ? positions[row] : row % seq_len;
    float angle = (float)position * inv_freq[pair];
    float c = cosf(angle) * attention_scaling, s = sinf(angle) * attention_scaling;
    float* h = x + (unsigned long long)row * heads * head_dim + (unsigned long long)head * head_dim;
    float x1 = h[pair], x2 = h[pair + half];
    h[pair] = x1 * c - x2 * s;
    h[pair + half] = x2 * c + x1 * s;
}
