// The f16 path's overflow guard (`--compute-dtype f16`, T4s): GEMM inputs are rounded to f16,
// and a finite value that becomes +-inf there (|x| >= 65520: exactly the outlier features a
// study looks for) must not reach the product. The conversion lists each row holding such a
// value; after the f16 GEMM, the listed rows are recomputed in f32 from the f32 input, with no
// host synchronisation (the fix-up reads the count on the device and does nothing for none).
//
// The guard buffer (u32, GUARD_LAYOUT): [0] the count of listed rows, [1 .. 1 + rows] the
// listed rows in no order, [1 + rows .. 1 + 2 rows] a flag per row (listed once). The caller
// zeroes the count and the flags before each conversion.
//
// Totals (u64, accumulated over a run): [0] GEMM rows recomputed, [1] attention sequences
// recomputed (attention_mma.cu / attention.cu), [2] weight values beyond f16's range.

// out (n) = f16(x (n)) for a (rows, cols) matrix, every row with an overflowing value listed.
extern "C" __global__ void f32_to_f16_guarded_kernel(
    const float* x, u16* out, unsigned long long n, int cols, int rows, u32* guard) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float value = x[i];
    const u16 bits = f32_to_f16(value);
    out[i] = bits;
    if (f16_overflowed(value, bits)) {
        const u32 row = (u32)(i / (unsigned long long)cols);
        if (atomicExch(&guard[1 + rows + row], 1u) == 0u) {
            const u32 slot = atomicAdd(&guard[0], 1u);
            guard[1 + slot] = row;
        }
    }
}

// out (n) = f16(in (n)) for weights stored as `dtype` (0 f32, 1 bf16); values beyond f16's
// range are counted in totals[2] (the run stops at the layer's end: a weight has no f32
// fallback here).
extern "C" __global__ void f16_weights_kernel(
    const void* in, int dtype, u16* out, unsigned long long n, unsigned long long* totals) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float value = dtype == 0 ? ((const float*)in)[i] : bf16_to_f32(((const u16*)in)[i]);
    const u16 bits = f32_to_f16(value);
    out[i] = bits;
    if (f16_overflowed(value, bits)) atomicAdd(&totals[2], 1ull);
}

// y_row (out_features) = x_row (in_features) . w^T in f32, w (out_features, in_features) f16
// bits: a warp per output column at a time, lanes over the inputs, the grid's warps over the
// columns.
__device__ __forceinline__ void recompute_row_f32(
    const float* x_row, const u16* w, float* y_row, int in_features, int out_features) {
    const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int column = blockIdx.x * warps + warp; column < out_features;
         column += gridDim.x * warps) {
        const u16* w_row = w + (unsigned long long)column * in_features;
        float sum = 0.0f;
        for (int d = lane; d < in_features; d += 32) sum += x_row[d] * f16_to_f32(w_row[d]);
        sum = warp_sum(sum);
        if (lane == 0) y_row[column] = sum;
    }
}

// For each row r the guard lists: y[r] (out_features) = x[r] (in_features) . w^T in f32,
// overwriting what the f16 GEMM wrote (before any bias). Block (0, 0) adds the count to
// totals[0].
extern "C" __global__ void f16_overflow_rows_kernel(
    const float* x, const u16* w, float* y, int in_features, int out_features, const u32* guard,
    unsigned long long* totals) {
    const u32 count = guard[0];
    if (count == 0u) return;
    if (blockIdx.x == 0 && threadIdx.x == 0) atomicAdd(&totals[0], (unsigned long long)count);
    for (u32 listed = 0; listed < count; listed++) {
        const unsigned long long row = guard[1 + listed];
        recompute_row_f32(x + row * in_features, w, y + row * out_features, in_features,
                          out_features);
    }
}

// The experts' fix-up: the guard lists tokens of x (tokens, in_features), as
// expert_gather_f16_kernel (moe.cu) wrote it; every assignment a = t * top_k + j of a listed
// token t whose grouped row positions[a] lies in this expert's rows [start, start + n) gets
// y[positions[a] - start] (out_features) = x[t] . w^T in f32, overwriting the f16 GEMM's row
// (before any bias). Block (0, 0) adds the rows recomputed to totals[0].
extern "C" __global__ void f16_overflow_expert_rows_kernel(
    const float* x, const u16* w, float* y, int in_features, int out_features, const u32* guard,
    const u32* positions, int top_k, u32 start, u32 n, unsigned long long* totals) {
    const u32 count = guard[0];
    if (count == 0u) return;
    unsigned long long recomputed = 0;
    for (u32 listed = 0; listed < count; listed++) {
        const unsigned long long token = guard[1 + listed];
        for (int j = 0; j < top_k; j++) {
            const u32 row = positions[token * top_k + j];
            if (row < start || row - start >= n) continue;
            recomputed++;
            recompute_row_f32(x + token * in_features, w,
                              y + (unsigned long long)(row - start) * out_features, in_features,
                              out_features);
        }
    }
    if (blockIdx.x == 0 && threadIdx.x == 0 && recomputed > 0) atomicAdd(&totals[0], recomputed);
}
