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

// 2^e as an f32 for -126 <= e <= 127.
__device__ __forceinline__ float pow2(int e) {
    return __int_as_float((e + 127) << 23);
}

// E2M1 codes: bit 3 the sign, then 2 exponent bits and 1 mantissa bit.
__device__ __forceinline__ float fp4_value(u32 code) {
    const float magnitudes[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float m = magnitudes[code & 7u];
    return (code & 8u) ? -m : m;
}

// value * 2^exponent as transformers' torch.ldexp (and the CPU's dequantizer): in two
// factors, so that no power of two overflows and zero stays zero at every scale.
__device__ __forceinline__ float ldexp_split(float value, int exponent) {
    if (value == 0.0f) return value;
    int half = exponent / 2;
    return value * pow2(half) * pow2(exponent - half);
}

// MXFP4 -> bf16 (out_bf16 = 1) or f32: out (out_rows, cols) row r = stored row
// row_offset + row_stride * r of blocks (stored_rows, cols / 32, 16) U8 (low nibble the even
// column) with scales (stored_rows, cols / 32) U8 (E8M0, 2^(scale - 127)). One thread per byte.
extern "C" __global__ void mxfp4_dequant_kernel(
    const unsigned char* blocks, const unsigned char* scales, void* out, int out_bf16,
    unsigned long long out_rows, int cols, int row_stride, int row_offset) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    unsigned long long row_bytes = (unsigned long long)cols / 2;
    if (i >= out_rows * row_bytes) return;
    unsigned long long r = i / row_bytes, b = i % row_bytes;
    unsigned long long stored_row = (unsigned long long)row_offset + (unsigned long long)row_stride * r;
    unsigned char byte = blocks[stored_row * row_bytes + b];
    int exponent = (int)scales[stored_row * (cols / 32) + b / 16] - 127;
    float lo = ldexp_split(fp4_value(byte & 0x0fu), exponent);
    float hi = ldexp_split(fp4_value(byte >> 4), exponent);
    unsigned long long o = r * cols + 2 * b;
    if (out_bf16) {
        ((u16*)out)[o] = f32_to_bf16(lo);
        ((u16*)out)[o + 1] = f32_to_bf16(hi);
    } else {
        ((float*)out)[o] = lo;
        ((float*)out)[o + 1] = hi;
    }
}

// The value of an E4M3 byte (float8_e4m3fn: bias 7, subnormals, no infinities, NaN for
// S.1111.111), exact in f32.
__device__ __forceinline__ float e4m3_value(u32 byte) {
    u32 exponent = (byte >> 3) & 15u, mantissa = byte & 7u;
    if (exponent == 15u && mantissa == 7u) return __int_as_float(0x7fc00000);
    float magnitude = exponent == 0u
        ? (float)mantissa * 0.001953125f  // m / 8 * 2^-6
        : __uint_as_float(((exponent + 120u) << 23) | (mantissa << 20));
    return (byte & 0x80u) ? -magnitude : magnitude;
}

// FP8 -> bf16 (out_bf16 = 1) or f32: out (rows, cols) = e4m3(values (rows, cols)) times
// scales (ceil(rows / block_rows), ceil(cols / block_cols)) F32 of the element's block, one
// f32 product (transformers' `Fp8Dequantize`), rounded once to bf16. One thread per element.
extern "C" __global__ void fp8_dequant_kernel(
    const unsigned char* values, const float* scales, void* out, int out_bf16,
    unsigned long long rows, int cols, int block_rows, int block_cols) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= rows * (unsigned long long)cols) return;
    unsigned long long r = i / cols;
    int c = (int)(i % cols);
    int scale_cols = (cols + block_cols - 1) / block_cols;
    float scale = scales[(r / block_rows) * scale_cols + c / block_cols];
    float v = e4m3_value(values[i]) * scale;
    if (out_bf16) {
        ((u16*)out)[i] = f32_to_bf16(v);
    } else {
        ((float*)out)[i] = v;
    }
}

// Stored element i of a `dtype` (0 f32, 1 bf16, 2 f16) tensor as f32.
__device__ __forceinline__ float stored_value(const void* in, int dtype, unsigned long long i) {
    if (dtype == 0) return ((const float*)in)[i];
    if (dtype == 1) return bf16_to_f32(((const u16*)in)[i]);
    return f16_to_f32(((const u16*)in)[i]);
}

// An in-major (inputs, columns) matrix's every column_stride-th column from column_offset,
// transposed: out (outputs, inputs)[j][i] = in[i][column_offset + column_stride * j], in
// bf16 (out_bf16 = 1) or f32. 32 x 32 tiles through shared memory, blocks of 32 x 8.
extern "C" __global__ void in_major_columns_kernel(
    const void* in, int dtype, void* out, int out_bf16, int inputs, int columns,
    int column_stride, int column_offset) {
    __shared__ float tile[32][33];
    int outputs = (columns - column_offset + column_stride - 1) / column_stride;
    int j0 = blockIdx.x * 32, i0 = blockIdx.y * 32;
    for (int k = threadIdx.y; k < 32; k += 8) {
        int i = i0 + k, j = j0 + threadIdx.x;
        if (i < inputs && j < outputs) {
            unsigned long long at = (unsigned long long)i * columns + column_offset + (unsigned long long)column_stride * j;
            tile[k][threadIdx.x] = stored_value(in, dtype, at);
        }
    }
    __syncthreads();
    for (int k = threadIdx.y; k < 32; k += 8) {
        int j = j0 + k, i = i0 + threadIdx.x;
        if (i < inputs && j < outputs) {
            unsigned long long o = (unsigned long long)j * inputs + i;
            float v = tile[threadIdx.x][k];
            if (out_bf16) ((u16*)out)[o] = f32_to_bf16(v);
            else ((float*)out)[o] = v;
        }
    }
}

// out (n) f32 = every stride-th element of a `dtype` tensor from offset (a fused bias's half).
extern "C" __global__ void strided_to_f32_kernel(
    const void* in, int dtype, float* out, unsigned long long n, int stride, int offset) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i < n) out[i] = stored_value(in, dtype, (unsigned long long)offset + (unsigned long long)stride * i);
}
