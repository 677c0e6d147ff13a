// The residual stream's magnitudes per sequence (Sun et al.'s layer-wise figure and the
// primary massive-activation reading): the three largest |x| of each row, and the exact
// lower median of |x| over each sequence's seq_len x width values.
//
// The median is a radix selection on the bits of |x| (for non-negative floats the bit
// pattern orders like the value): three passes over the sequence's values, each a histogram
// of the next digit (bits 30..20, 19..9, 8..0) of the values whose higher bits equal the
// prefix found so far, then one thread per sequence walks the histogram to the digit that
// holds the wanted rank. Integer counts only, so the result is exact and the same on every
// run. Non-finite values are left out.

#define MAGNITUDE_DIGIT_BINS 2048

// Inserts m into t[0] >= t[1] >= t[2].
__device__ __forceinline__ void top3_insert(float* t, float m) {
    if (m <= t[2]) return;
    t[2] = m;
    if (t[2] > t[1]) { float x = t[1]; t[1] = t[2]; t[2] = x; }
    if (t[1] > t[0]) { float x = t[0]; t[0] = t[1]; t[1] = x; }
}

// Merges the other lanes' top three into every lane's, `offset` apart (a tree over the warp).
__device__ __forceinline__ void warp_top3(float* t) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        float a = __shfl_xor_sync(0xffffffffu, t[0], offset);
        float b = __shfl_xor_sync(0xffffffffu, t[1], offset);
        float c = __shfl_xor_sync(0xffffffffu, t[2], offset);
        top3_insert(t, a);
        top3_insert(t, b);
        top3_insert(t, c);
    }
}

// out (rows, 3): the three largest finite |x| of each row of x (rows, width), largest
// first, 0 for missing ones. One block (at most 32 warps) per row.
extern "C" __global__ void row_top3_abs_kernel(const float* x, int rows, int width, float* out) {
    __shared__ float scratch[32][3];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float* values = x + (unsigned long long)row * width;
    float t[3] = {0.0f, 0.0f, 0.0f};
    for (int d = threadIdx.x; d < width; d += blockDim.x) {
        const float value = values[d];
        if (isfinite(value)) top3_insert(t, fabsf(value));
    }
    warp_top3(t);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        scratch[warp][0] = t[0];
        scratch[warp][1] = t[1];
        scratch[warp][2] = t[2];
    }
    __syncthreads();
    if (warp == 0) {
        const bool has = lane < (int)(blockDim.x >> 5);
        t[0] = has ? scratch[lane][0] : 0.0f;
        t[1] = has ? scratch[lane][1] : 0.0f;
        t[2] = has ? scratch[lane][2] : 0.0f;
        warp_top3(t);
        if (lane == 0) {
            out[(unsigned long long)row * 3 + 0] = t[0];
            out[(unsigned long long)row * 3 + 1] = t[1];
            out[(unsigned long long)row * 3 + 2] = t[2];
        }
    }
}

// One pass of the selection: histogram (sequences, 2^digit_bits) u32 counts (a sequence has
// fewer than 2^32 values) of digit (key >> shift)
// of the finite |x| of each sequence (per_sequence values each) whose bits above the digit
// equal prefix[s]. `histogram` starts zeroed. Grid (blocks per sequence, sequences).
extern "C" __global__ void magnitude_digit_histogram_kernel(
    const float* x, unsigned long long per_sequence, const unsigned int* prefix,
    unsigned int prefix_mask, int shift, int digit_bits, unsigned int* histogram) {
    __shared__ unsigned int local[MAGNITUDE_DIGIT_BINS];
    const int bins = 1 << digit_bits;
    for (int b = threadIdx.x; b < bins; b += blockDim.x) local[b] = 0;
    __syncthreads();
    const int s = blockIdx.y;
    const float* values = x + (unsigned long long)s * per_sequence;
    const unsigned int want = prefix[s];
    const unsigned int digit_mask = (unsigned int)bins - 1u;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < per_sequence; i += stride) {
        const unsigned int key = __float_as_uint(values[i]) & 0x7fffffffu;
        if (key >= 0x7f800000u || (key & prefix_mask) != want) continue;
        atomicAdd(&local[(key >> shift) & digit_mask], 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < bins; b += blockDim.x) {
        if (local[b] != 0) {
            atomicAdd(&histogram[(unsigned long long)s * bins + b], local[b]);
        }
    }
}

// After a pass: per sequence (one block of PICK_THREADS) the digit holding rank[s] (the
// first pass sets rank to (n - 1) / 2 of the n finite values, torch.median's lower middle
// one; no values: rank ~0 and the median 0), added to prefix[s]; rank[s] becomes the rank
// inside that digit. Each thread sums its run of bins, a scan over the threads finds the run
// that holds the rank, and its thread walks the run. The last pass writes median[s].
#define PICK_THREADS 256
extern "C" __global__ void magnitude_digit_pick_kernel(
    const unsigned int* histogram, int sequences, int shift, int digit_bits, int first_pass,
    int last_pass, unsigned int* prefix, unsigned long long* rank, float* median) {
    __shared__ unsigned long long partial[PICK_THREADS];
    __shared__ unsigned long long wanted_shared;
    const int s = blockIdx.x;
    if (s >= sequences) return;
    const int bins = 1 << digit_bits;
    const int per_thread = bins / PICK_THREADS;
    const unsigned int* h = histogram + (unsigned long long)s * bins;
    const int begin = threadIdx.x * per_thread;
    unsigned long long mine = 0;
    for (int b = begin; b < begin + per_thread; b++) mine += h[b];
    partial[threadIdx.x] = mine;
    __syncthreads();
    for (int offset = 1; offset < PICK_THREADS; offset <<= 1) {
        const unsigned long long add = threadIdx.x >= offset ? partial[threadIdx.x - offset] : 0;
        __syncthreads();
        partial[threadIdx.x] += add;
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        if (first_pass) {
            const unsigned long long n = partial[PICK_THREADS - 1];
            prefix[s] = 0;
            rank[s] = n == 0 ? ~0ull : (n - 1) / 2;
        }
        wanted_shared = rank[s];
    }
    __syncthreads();
    const unsigned long long wanted = wanted_shared;
    const unsigned long long before = threadIdx.x == 0 ? 0 : partial[threadIdx.x - 1];
    if (wanted != ~0ull && wanted >= before && wanted < partial[threadIdx.x]) {
        unsigned long long below = before;
        for (int b = begin; b < begin + per_thread; b++) {
            if (wanted < below + h[b]) {
                prefix[s] |= (unsigned int)b << shift;
                rank[s] = wanted - below;
                break;
            }
            below += h[b];
        }
    }
    __syncthreads();
    if (last_pass && threadIdx.x == 0) {
        median[s] = wanted == ~0ull ? 0.0f : __uint_as_float(prefix[s]);
    }
}
