// Statistics accumulated on the device while a layer runs (DESIGN §7): per sequence and
// hidden dimension, max |x|, the count of |x| >= threshold, non-finite values, and the
// sums of x, x^2, x^3, x^4 (in f64) for mean, variance and kurtosis. One thread per
// (sequence, dimension), looping over the sequence's tokens: reads are coalesced across
// dimensions and no two threads write the same accumulator.
//
// Accumulators are indexed by the workload's sequence (first_sequence + s), laid out
// (total_sequences, width); sums are 4 consecutive planes of that shape.
extern "C" __global__ void stats_accumulate_kernel(
    const float* x, int sequences, int seq_len, int width, int first_sequence, int total_sequences,
    float threshold, float* max_abs, unsigned long long* count_ge, unsigned long long* non_finite,
    double* sums) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)sequences * width) return;
    int s = (int)(i / width), d = (int)(i % width);
    float local_max = 0.0f;
    unsigned long long local_count = 0, local_bad = 0;
    double s1 = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0;
    const float* column = x + (unsigned long long)s * seq_len * width + d;
    for (int t = 0; t < seq_len; t++) {
        float value = column[(unsigned long long)t * width];
        float magnitude = fabsf(value);
        if (!isfinite(value)) {
            local_bad++;
            continue;
        }
        local_max = fmaxf(local_max, magnitude);
        local_count += magnitude >= threshold;
        double v = value, v2 = v * v;
        s1 += v;
        s2 += v2;
        s3 += v2 * v;
        s4 += v2 * v2;
    }
    unsigned long long slot = (unsigned long long)(first_sequence + s) * width + d;
    unsigned long long plane = (unsigned long long)total_sequences * width;
    max_abs[slot] = fmaxf(max_abs[slot], local_max);
    count_ge[slot] += local_count;
    non_finite[slot] += local_bad;
    sums[slot] += s1;
    sums[plane + slot] += s2;
    sums[2 * plane + slot] += s3;
    sums[3 * plane + slot] += s4;
}
