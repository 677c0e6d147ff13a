// Statistics accumulated on the device while a layer runs (DESIGN §7): per sequence and
// hidden dimension, max |x|, the count of |x| >= threshold (and of them the positive ones,
// and the sum of their |x|), non-finite values, and the sums of x, x^2, x^3, x^4 (in f64)
// for mean, variance and kurtosis; per point a histogram of |x|; optionally a bit per
// (dimension, token) for |x| >= threshold. Reads are coalesced across dimensions and each
// per-entry accumulator is written by one thread of one block.
//
// Accumulators are indexed by the workload's sequence (first_sequence + s), laid out
// (total_sequences, width); sums are 4 consecutive planes of that shape. Position bits are
// (width, position_words) u32 words over the workload's tokens (sequence * seq_len + t, or
// offsets[s] + t for sequences of their own lengths); position_words == 0 keeps none. The histogram has HIST_BINS bins (see histogram_bin).
// Shared memory: the histogram (6 KiB) and the warps' partial results (14 KiB).

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

// One block per (sequence, 32 dimensions): lane = dimension, the STATS_WARPS warps take
// consecutive chunks of the sequence's tokens (whole 32-token words of position bits), and
// their partial results are combined in warp order through shared memory, so the sums are
// the same on every run.
#define STATS_WARPS 8

extern "C" __global__ void stats_accumulate_kernel(
    const float* x, int sequences, int seq_len, int width, int first_sequence, int total_sequences,
    float threshold, float* max_abs, unsigned long long* count_ge,
    unsigned long long* count_pos_ge, double* sum_abs_ge, unsigned long long* non_finite,
    double* sums, unsigned long long* histogram, unsigned int* positions, int position_words,
    const int* offsets) {
    __shared__ unsigned int local_histogram[HIST_BINS];
    __shared__ double partial_sums[STATS_WARPS][5][32];
    __shared__ unsigned long long partial_counts[STATS_WARPS][3][32];
    __shared__ float partial_max[STATS_WARPS][32];
    for (int b = threadIdx.x; b < HIST_BINS; b += blockDim.x) local_histogram[b] = 0;
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int s = blockIdx.y, d = blockIdx.x * 32 + lane;
    const bool active = d < width && s < sequences;
    // Packed data: sequence s at rows s * seq_len of x, tokens (first_sequence + s) * seq_len
    // of the workload. Records (offsets != nullptr, the workload's offsets from
    // first_sequence): rows offsets[s] - offsets[0] of x, tokens offsets[s].
    const int len = offsets != nullptr ? offsets[s + 1] - offsets[s] : seq_len;
    const unsigned long long base_row = offsets != nullptr
        ? (unsigned long long)(offsets[s] - offsets[0])
        : (unsigned long long)s * seq_len;
    // Tokens of this warp: a chunk of whole 32-token words.
    const int words_per_sequence = (len + 31) / 32;
    const int chunk = ((words_per_sequence + STATS_WARPS - 1) / STATS_WARPS) * 32;
    const int t_begin = min(warp * chunk, len), t_end = min(t_begin + chunk, len);
    float local_max = 0.0f;
    unsigned long long local_count = 0, local_positive = 0, local_bad = 0;
    double s1 = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0, abs_ge = 0.0;
    if (active) {
        unsigned int word = 0;
        const unsigned long long token0 = offsets != nullptr
            ? (unsigned long long)offsets[s]
            : (unsigned long long)(first_sequence + s) * seq_len;
        const float* column = x + base_row * width + d;
        for (int t = t_begin; t < t_end; t++) {
            const float value = column[(unsigned long long)t * width];
            const float magnitude = fabsf(value);
            const unsigned long long token = token0 + t;
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
                const double v = value, v2 = v * v;
                s1 += v;
                s2 += v2;
                s3 += v2 * v;
                s4 += v2 * v2;
            }
            if (position_words > 0 && (token % 32 == 31 || t == t_end - 1)) {
                if (word != 0) {
                    atomicOr(&positions[(unsigned long long)d * position_words + token / 32], word);
                }
                word = 0;
            }
        }
    }
    partial_max[warp][lane] = local_max;
    partial_counts[warp][0][lane] = local_count;
    partial_counts[warp][1][lane] = local_positive;
    partial_counts[warp][2][lane] = local_bad;
    partial_sums[warp][0][lane] = s1;
    partial_sums[warp][1][lane] = s2;
    partial_sums[warp][2][lane] = s3;
    partial_sums[warp][3][lane] = s4;
    partial_sums[warp][4][lane] = abs_ge;
    __syncthreads();
    if (warp == 0 && active) {
        for (int w = 1; w < STATS_WARPS; w++) {
            local_max = fmaxf(local_max, partial_max[w][lane]);
            local_count += partial_counts[w][0][lane];
            local_positive += partial_counts[w][1][lane];
            local_bad += partial_counts[w][2][lane];
            s1 += partial_sums[w][0][lane];
            s2 += partial_sums[w][1][lane];
            s3 += partial_sums[w][2][lane];
            s4 += partial_sums[w][3][lane];
            abs_ge += partial_sums[w][4][lane];
        }
        const unsigned long long slot = (unsigned long long)(first_sequence + s) * width + d;
        const unsigned long long plane = (unsigned long long)total_sequences * width;
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
