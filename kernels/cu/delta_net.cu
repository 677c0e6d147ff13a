// The Gated DeltaNet (Qwen3-Next's linear attention): the causal convolution, and the parts of
// the chunked gated delta rule (transformers' torch_chunk_gated_delta_rule, chunks of 64) that
// are not GEMMs; the GEMMs run batched on cuBLAS (ops/delta_net.rs says the order).
//
// Layouts: token-major inputs (rows = sequences x seq_len); head-major chunk buffers, per
// (sequence s, value head h) a block of Tp rows (seq_len padded to whole chunks of 64, the
// padding zero): index ((s * H + h) * Tp + t).

#define DELTA_CHUNK 64

__device__ __forceinline__ float load_weight(float x) { return x; }
__device__ __forceinline__ float load_weight(u16 x) { return bf16_to_f32(x); }
// f16 weight bits (the f16 path), told apart from bf16 by type.
struct F16Weight { u16 bits; };
__device__ __forceinline__ float load_weight(F16Weight x) { return f16_to_f32(x.bits); }

// out[row, c] = silu(sum_j w[c, j] in[row - kernel + 1 + j, c]) within each sequence.
template <typename W>
__device__ void causal_conv_silu(
    const float* in, const W* weight, float* out, unsigned long long n, int channels, int kernel,
    int seq_len) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    int c = (int)(i % channels);
    unsigned long long row = i / channels;
    int t = (int)(row % seq_len);
    float sum = 0.0f;
    for (int j = 0; j < kernel; ++j) {
        int back = kernel - 1 - j;
        if (t >= back) sum += load_weight(weight[c * kernel + j]) * in[(row - back) * channels + c];
    }
    out[i] = sum / (1.0f + expf(-sum));
}

extern "C" __global__ void causal_conv_silu_f32_kernel(
    const float* in, const float* weight, float* out, unsigned long long n, int channels, int kernel,
    int seq_len) {
    causal_conv_silu<float>(in, weight, out, n, channels, kernel, seq_len);
}

extern "C" __global__ void causal_conv_silu_bf16_kernel(
    const float* in, const u16* weight, float* out, unsigned long long n, int channels, int kernel,
    int seq_len) {
    causal_conv_silu<u16>(in, weight, out, n, channels, kernel, seq_len);
}

extern "C" __global__ void causal_conv_silu_f16_kernel(
    const float* in, const u16* weight, float* out, unsigned long long n, int channels, int kernel,
    int seq_len) {
    causal_conv_silu<F16Weight>(in, reinterpret_cast<const F16Weight*>(weight), out, n, channels,
                                kernel, seq_len);
}

// One thread per (sequence, value head, chunk): g_t = -exp(A_log) softplus(a_t + dt_bias)
// summed within the chunk (cumulative log decay), beta_t = sigmoid(b_t); 0 and 0 in padding.
extern "C" __global__ void delta_gates_kernel(
    const float* b, const float* a, const float* a_log, const float* dt_bias, float* g_out,
    float* beta_out, int sequences, int heads, int seq_len, int padded) {
    int chunks = padded / DELTA_CHUNK;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= sequences * heads * chunks) return;
    int chunk = i % chunks;
    int h = (i / chunks) % heads;
    int s = i / (chunks * heads);
    float rate = -expf(a_log[h]);
    float cumulative = 0.0f;
    unsigned long long base = ((unsigned long long)(s * heads + h)) * padded + chunk * DELTA_CHUNK;
    for (int j = 0; j < DELTA_CHUNK; ++j) {
        int t = chunk * DELTA_CHUNK + j;
        float beta = 0.0f;
        if (t < seq_len) {
            unsigned long long at = ((unsigned long long)s * seq_len + t) * heads + h;
            float x = a[at] + dt_bias[h];
            float softplus = x > 20.0f ? x : log1pf(expf(x));
            cumulative += rate * softplus;
            beta = 1.0f / (1.0f + expf(-b[at]));
        }
        g_out[base + j] = cumulative;
        beta_out[base + j] = beta;
    }
}

// One block per (sequence, value head, padded token), blockDim.x a multiple of 32: the
// L2-normed (eps 1e-6 inside the root) query scaled by key_dim^-0.5 and key of the head's key
// head into Q, K (H, Tp, dk); W (H, Tp, dv + dk) = [beta v | beta exp(g) k]. Padding rows zero.
extern "C" __global__ void delta_prepare_kernel(
    const float* q, const float* k, const float* v, const float* g, const float* beta, float* q_out,
    float* k_out, float* w_out, int heads, int key_heads, int key_dim, int value_dim, int seq_len,
    int padded) {
    __shared__ float scratch[32];
    int t = blockIdx.x % padded;
    int h = (blockIdx.x / padded) % heads;
    int s = blockIdx.x / (padded * heads);
    int kh = h / (heads / key_heads);
    unsigned long long out_row = blockIdx.x;
    float* qo = q_out + out_row * key_dim;
    float* ko = k_out + out_row * key_dim;
    float* wo = w_out + out_row * (value_dim + key_dim);
    if (t >= seq_len) {
        for (int d = threadIdx.x; d < key_dim; d += blockDim.x) qo[d] = ko[d] = 0.0f;
        for (int d = threadIdx.x; d < value_dim + key_dim; d += blockDim.x) wo[d] = 0.0f;
        return;
    }
    unsigned long long row = (unsigned long long)s * seq_len + t;
    const float* qi = q + row * key_heads * key_dim + kh * key_dim;
    const float* ki = k + row * key_heads * key_dim + kh * key_dim;
    const float* vi = v + row * heads * value_dim + h * value_dim;
    float qq = 0.0f, kk = 0.0f;
    for (int d = threadIdx.x; d < key_dim; d += blockDim.x) {
        qq += qi[d] * qi[d];
        kk += ki[d] * ki[d];
    }
    qq = block_sum(qq, scratch);
    kk = block_sum(kk, scratch);
    float q_scale = rsqrtf(qq + 1e-6f) * rsqrtf((float)key_dim);
    float k_scale = rsqrtf(kk + 1e-6f);
    float b = beta[out_row];
    float kw = b * expf(g[out_row]);
    for (int d = threadIdx.x; d < key_dim; d += blockDim.x) {
        qo[d] = qi[d] * q_scale;
        float kn = ki[d] * k_scale;
        ko[d] = kn;
        wo[value_dim + d] = kn * kw;
    }
    for (int d = threadIdx.x; d < value_dim; d += blockDim.x) wo[d] = vi[d] * b;
}

// One block of 64 threads per chunk: from m = K K^T (64 x 64) builds
// L[i][j] = -beta_i m[i][j] exp(g_i - g_j) (j < i), solves the rows in order as transformers
// does (row i += sum_m row_i[m] L[m][:], over the rows above already solved) and adds the
// identity: t_out = T (64 x 64).
extern "C" __global__ void delta_triangular_kernel(
    const float* m, const float* g, const float* beta, float* t_out) {
    __shared__ float l[DELTA_CHUNK][DELTA_CHUNK + 1];
    __shared__ float row[DELTA_CHUNK];
    unsigned long long chunk = blockIdx.x;
    const float* mc = m + chunk * DELTA_CHUNK * DELTA_CHUNK;
    const float* gc = g + chunk * DELTA_CHUNK;
    const float* bc = beta + chunk * DELTA_CHUNK;
    int j = threadIdx.x;
    for (int i = 0; i < DELTA_CHUNK; ++i) {
        l[i][j] = j < i ? -bc[i] * mc[i * DELTA_CHUNK + j] * expf(gc[i] - gc[j]) : 0.0f;
    }
    __syncthreads();
    for (int i = 1; i < DELTA_CHUNK; ++i) {
        row[j] = l[i][j];
        __syncthreads();
        float updated = row[j];
        if (j < i) {
            for (int k = j + 1; k < i; ++k) updated += row[k] * l[k][j];
        }
        __syncthreads();
        l[i][j] = updated;
        __syncthreads();
    }
    float* tc = t_out + chunk * DELTA_CHUNK * DELTA_CHUNK;
    for (int i = 0; i < DELTA_CHUNK; ++i) tc[i * DELTA_CHUNK + j] = l[i][j] + (i == j ? 1.0f : 0.0f);
}

// a (chunks, 64, 64) = q k^T of each chunk: a[i][j] *= exp(g_i - g_j) for j <= i, 0 above.
extern "C" __global__ void delta_decay_mask_kernel(float* a, const float* g, unsigned long long n) {
    unsigned long long x = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (x >= n) return;
    int j = (int)(x % DELTA_CHUNK);
    int i = (int)((x / DELTA_CHUNK) % DELTA_CHUNK);
    unsigned long long chunk = x / (DELTA_CHUNK * DELTA_CHUNK);
    const float* gc = g + chunk * DELTA_CHUNK;
    a[x] = j <= i ? a[x] * expf(gc[i] - gc[j]) : 0.0f;
}

// Before the chunk loop: q rows *= exp(g) (the inter-chunk read), k rows *= exp(g_last - g)
// (the state update), g_last the chunk's last cumulative decay.
extern "C" __global__ void delta_decay_rows_kernel(
    float* q, float* k, const float* g, unsigned long long n, int key_dim) {
    unsigned long long x = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (x >= n) return;
    unsigned long long r = x / key_dim;
    unsigned long long last = (r / DELTA_CHUNK) * DELTA_CHUNK + DELTA_CHUNK - 1;
    q[x] *= expf(g[r]);
    k[x] *= expf(g[last] - g[r]);
}

// state (batch, dk, dv) *= exp(g_last) of chunk `chunk` of each (sequence, head).
extern "C" __global__ void delta_state_decay_kernel(
    float* state, const float* g, unsigned long long n, int per_state, int padded, int chunk) {
    unsigned long long x = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (x >= n) return;
    unsigned long long head = x / per_state;
    state[x] *= expf(g[head * padded + chunk * DELTA_CHUNK + DELTA_CHUNK - 1]);
}

// core (rows, H * dv) token-major from the head-major padded out (H, Tp, dv).
extern "C" __global__ void delta_output_kernel(
    const float* out, float* core, unsigned long long n, int heads, int value_dim, int seq_len,
    int padded) {
    unsigned long long x = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (x >= n) return;
    int d = (int)(x % value_dim);
    int h = (int)((x / value_dim) % heads);
    unsigned long long row = x / ((unsigned long long)value_dim * heads);
    unsigned long long s = row / seq_len, t = row % seq_len;
    core[x] = out[((s * heads + h) * padded + t) * value_dim + d];
}
