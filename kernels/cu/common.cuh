// Shared helpers for every layerstream kernel. No CUDA headers are included, so NVRTC needs
// no include path: bf16 and f16 are handled as raw 16-bit patterns.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

typedef unsigned short u16;
typedef unsigned int u32;

__device__ __forceinline__ float bf16_to_f32(u16 bits) {
    return __uint_as_float(((u32)bits) << 16);
}

// Round to nearest even, NaN kept quiet; what torch's .to(torch.bfloat16) does.
__device__ __forceinline__ u16 f32_to_bf16(float value) {
    u32 u = __float_as_uint(value);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (u16)((u >> 16) | 0x40u);
    }
    u32 rounding = 0x7fffu + ((u >> 16) & 1u);
    return (u16)((u + rounding) >> 16);
}

__device__ __forceinline__ float f16_to_f32(u16 bits) {
    float out;
    asm("cvt.f32.f16 %0, %1;" : "=f"(out) : "h"(bits));
    return out;
}

// Round to nearest even (cvt.rn): finite values of magnitude >= 65520 become +-inf.
__device__ __forceinline__ u16 f32_to_f16(float value) {
    u16 out;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(out) : "f"(value));
    return out;
}

// Whether a finite f32 became +-inf in f16 (`bits` its conversion): the values the f16
// path's overflow guard recomputes in f32. NaN and infinities are not overflows.
__device__ __forceinline__ bool f16_overflowed(float value, u16 bits) {
    return (bits & 0x7fffu) == 0x7c00u && fabsf(value) != INFINITY;
}

__device__ __forceinline__ float warp_sum(float value) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    }
    return value;
}

__device__ __forceinline__ float warp_max(float value) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
    }
    return value;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread
// gets the result. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float value, float* scratch) {
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    value = warp_sum(value);
    __syncthreads();
    if (lane == 0) scratch[warp] = value;
    __syncthreads();
    int warps = blockDim.x >> 5;
    value = (threadIdx.x < warps) ? scratch[threadIdx.x] : 0.0f;
    if (warp == 0) {
        value = warp_sum(value);
        if (lane == 0) scratch[0] = value;
    }
    __syncthreads();
    return scratch[0];
}

// The attention-sink scratch (attention.cu's SINK_LAYOUT) for sequences of one length
// (offsets == nullptr: sequence s at rows s * seq_len) or of their own (offsets: a slice of
// the workload's, sequence s at rows offsets[s] - offsets[0]): (sequence, head)'s per-query
// values start at float (first_row * heads + head * len) * 3, which for one length is the
// ((sequence * heads + head) * seq_len) * 3 of the packed layout.
__device__ __forceinline__ unsigned long long sink_values_base(int sequence, int head, int heads,
                                                               int seq_len, const int* offsets) {
    const unsigned long long first_row = offsets != nullptr
        ? (unsigned long long)(offsets[sequence] - offsets[0])
        : (unsigned long long)sequence * seq_len;
    const int len = offsets != nullptr ? offsets[sequence + 1] - offsets[sequence] : seq_len;
    return (first_row * heads + (unsigned long long)head * len) * 3;
}

// The first float after the per-query values: the sums (and, before them, the delimiters).
__device__ __forceinline__ unsigned long long sink_tail(int sequences, int heads, int seq_len,
                                                        const int* offsets) {
    const unsigned long long rows = offsets != nullptr
        ? (unsigned long long)(offsets[sequences] - offsets[0])
        : (unsigned long long)sequences * seq_len;
    return rows * heads * 3;
}
