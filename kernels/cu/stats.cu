// Statistics accumulated on the device while a layer runs (DESIGN §7): per sequence and
// hidden dimension, max |x|, the count of |x| >= threshold (and of them the positive ones,
// and the sum of their |x|), non-finite values, and the sums of x, x^2, x^3, x^4 (in f64)
// for mean, variance and kurtosis; per point a histogram of |x|; optionally a bit per
// (dimension, token) for |x| >= threshold. One thread per (sequence, dimension), looping
// over the sequence's tokens: reads are coalesced across dimensions and no two threads
// write the same per-entry accumulator.
//
// Accumulators are indexed by the workload's sequence (first_sequence + s), laid out
// (total_sequences, width); sums are 4 consecutive planes of that shape. Position bits are
// (width, position_words) u32 words over the workload's tokens (sequence * seq_len + t);
// position_words == 0 keeps none. The histogram has HIST_BINS bins (see histogram_bin).

#define HIST_BINS 1538

// 0 below 2^-24; the exponent and the top five mantissa bits (32 linear bins per octave);
// the last bin from 2^24. The CPU's histogram_bin does the same bit arithmetic.
__device__ __forceinline__ int histogram_bin(float magnitude) {
    unsigned int bits = __float_as_uint(magnitude);
    int exponent = (int)(bits >> 23) - 127;
    if (exponent < -24) return 0;
    if (exponent >= 24) return HIST_BINS - 1;
    return 1 + (exponent + 24) * 32 + (int)((bits >> 18) & 31u);
}

extern "C" __global__ void stats_accumulate_kernel(
    const float* x, int sequences, int seq_len, int width, int first_sequence, int total_sequences,
    float threshold, float* max_abs, unsigned long long* count_ge,
    unsigned long long* count_pos_ge, double* sum_abs_ge, unsigned long long* non_finite,
    double* sums, unsigned long long* histogram, unsigned int* positions, int position_words) {
    __shared__ unsigned int local_histogram[HIST_BINS];
    for (int b = threadIdx.x; b < HIST_BINS; b += blockDim.x) local_histogram[b] = 0;
    __syncthreads();
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < (unsigned long long)sequences * width) {
        int s = (int)(i / width), d = (int)(i % width);
        float local_max = 0.0f;
        unsigned long long local_count = 0, local_positive = 0, local_bad = 0;
        double s1 = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0, abs_ge = 0.0;
        unsigned int word = 0;
        unsigned long long token0 = (unsigned long long)(first_sequence + s) * seq_len;
        const float* column = x + (unsigned long long)s * seq_len * width + d;
        for (int t = 0; t < seq_len; t++) {
            float value = column[(unsigned long long)t * width];
            float magnitude = fabsf(value);
            unsigned long long token = token0 + t;
            if (!isfinite(value)) {
                local_bad++;
            } else {
                local_max = fmaxf(local_max, magnitude);
                atomicAdd(&local_histogram[histogram_bin(magnitude)], 1u);
                if (magnitude >= threshold) {
                    local_count++;
                    local_positive += value > 0.0f;
                    abs_ge += magnitude;
                    word |= 1u << (token % 32);
                }
                double v = value, v2 = v * v;
                s1 += v;
                s2 += v2;
                s3 += v2 * v;
                s4 += v2 * v2;
            }
            if (position_words > 0 && (token % 32 == 31 || t == seq_len - 1)) {
                if (word != 0) {
                    atomicOr(&positions[(unsigned long long)d * position_words + token / 32], word);
                }
                word = 0;
            }
        }
        unsigned long long slot = (unsigned long long)(first_sequence + s) * width + d;
        unsigned long long plane = (unsigned long long)total_sequences * width;
        max_abs[slot] = fmaxf(max_abs[slot], local_max);
        count_ge[slot] += local_count;
        count_pos_ge[slot] += local_positive;
        sum_abs_ge[slot] += abs_ge;
        non_finite[slot] += local_bad;
        sums[slot] += s1;
        sums[plane + slot] += s2;
        sums[2 * plane + slot] += s3;
        sums[3 * plane + slot] += s4;
    }
    __syncthreads();
    for (int b = threadIdx.x; b < HIST_BINS; b += blockDim.x) {
        if (local_histogram[b] != 0) {
            atomicAdd(&histogram[b], (unsigned long long)local_histogram[b]);
        }
    }
}

// Largest finite |x| of each row of x (rows, width): one block per row. Rows above the
// massive-activation magnitude are copied to the host and looked at there.
extern "C" __global__ void row_max_abs_kernel(const float* x, int rows, int width, float* out) {
    __shared__ float scratch[32];
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* values = x + (unsigned long long)row * width;
    float local = 0.0f;
    for (int d = threadIdx.x; d < width; d += blockDim.x) {
        float value = values[d];
        if (isfinite(value)) local = fmaxf(local, fabsf(value));
    }
    local = warp_max(local);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) scratch[warp] = local;
    __syncthreads();
    if (warp == 0) {
        local = threadIdx.x < (blockDim.x >> 5) ? scratch[lane] : 0.0f;
        local = warp_max(local);
        if (lane == 0) out[row] = local;
    }
}
