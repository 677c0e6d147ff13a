// Causal grouped-query attention on tensor cores: flash-attention-2 style, bf16 (sm_80+) or
// f16 (sm_75+, the T4 path) operands, f32 accumulation and softmax. A block of 8 warps takes 128 consecutive query rows
// of one head of one sequence (16 rows per warp) and walks the keys in tiles of 64 staged in
// shared memory as bf16; S = Q K^T and O += P V are `mma.sync.m16n8k16` products, the online
// softmax runs on the S fragments in registers, and P is reused as the A operand of P V
// without leaving registers. `window` > 0 limits position p to keys p - window + 1 ..= p.
//
// head_dim: a multiple of 16, at most MMA_MAX_HEAD_DIM. Shared memory (u16):
// k_tile[MMA_KEYS][head_dim + 8], v_t[head_dim][MMA_KEYS + 8] (V transposed: the B operand
// of P V wants consecutive keys). The +8 padding spreads a warp's fragment loads over all
// banks.
//
// Learned sinks (`learned_sinks` not null): one logit per query head joins each row's
// softmax (in log2 units, unscaled by `scale`) and is dropped after it.
//
// Attention-sink statistics (want_sinks != 0, `sinks` laid out as attention.cu's SINK_LAYOUT): the
// thread whose S fragment holds key 0 (or the sequence's first delimiter) for a row keeps its
// scaled score, and once the row's max and sum are final writes the row's probability on it.
//
// Fragment layouts of m16n8k16 (g = lane / 4, c = lane % 4): A (16 x 16, row-major) holds
// rows g and g + 8, columns 2c, 2c + 1 and 8 + 2c, 8 + 2c + 1; B (16 x 8) holds rows (k) 2c,
// 2c + 1 and 8 + 2c, 8 + 2c + 1 of column g; C (16 x 8) holds rows g and g + 8, columns 2c and
// 2c + 1.
#define MMA_WARPS 8
#define MMA_ROWS (16 * MMA_WARPS)
#define MMA_KEYS 64
#define MMA_MAX_HEAD_DIM 128

// Two f32 -> bf16 (round to nearest even) packed: `low` in bits 0-15.
__device__ __forceinline__ u32 pack_bf16(float low, float high) {
    return (u32)f32_to_bf16(low) | ((u32)f32_to_bf16(high) << 16);
}

// Two f32 -> f16 packed; `overflow` set when a finite value became +-inf (half_guard.cu).
__device__ __forceinline__ u32 pack_f16(float low, float high, bool& overflow) {
    const u16 l = f32_to_f16(low), h = f32_to_f16(high);
    overflow |= f16_overflowed(low, l) || f16_overflowed(high, h);
    return (u32)l | ((u32)h << 16);
}

// The operand pack of the kernel's element type (F16: f16 with the overflow check).
template <bool F16>
__device__ __forceinline__ u32 pack_operands(float low, float high, bool& overflow) {
    if (F16) return pack_f16(low, high, overflow);
    return pack_bf16(low, high);
}

__device__ __forceinline__ void mma_bf16_16x8x16(float* c, const u32* a, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// The same product with f16 operands: one m16n8k16 on sm_80+, two m16n8k8 on sm_75 (the
// k16 A fragment's registers 0-1 and B's register 0 are the first k8 product's, 2-3 and 1 the
// second's; C is laid out alike).
__device__ __forceinline__ void mma_f16_16x8x16(float* c, const u32* a, u32 b0, u32 b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif __CUDA_ARCH__ >= 750
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[2]), "r"(a[3]), "r"(b1));
#endif
}

template <bool F16>
__device__ __forceinline__ void mma_16x8x16(float* c, const u32* a, u32 b0, u32 b1) {
    if (F16) mma_f16_16x8x16(c, a, b0, b1);
    else mma_bf16_16x8x16(c, a, b0, b1);
}

// F16: a block that rounds a finite Q, K or V value to +-inf in f16 flags its sequence in
// `overflow_sequences` (zeroed by the caller); attention.cu's kernel then recomputes that
// sequence in f32 (half_guard.cu).
template <bool F16>
__device__ __forceinline__ void attention_mma(
    const float* q, const float* k, const float* v, float* out,
    int seq_len, int heads, int kv_heads, int head_dim, int window, float scale,
    const float* learned_sinks, float* sinks, int want_sinks, const int* offsets,
    u32* overflow_sequences) {
    extern __shared__ u16 mma_shared[];
    bool overflow = false;
    const int k_stride = head_dim + 8;
    const int v_stride = MMA_KEYS + 8;
    u16* k_tile = mma_shared;
    u16* v_t = k_tile + MMA_KEYS * k_stride;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int head = blockIdx.y, sequence = blockIdx.z;
    const int kv_head = head / (heads / kv_heads);
    const int block_first = blockIdx.x * MMA_ROWS;
    const int warp_first = block_first + warp * 16;
    const int row_lo = warp_first + g, row_hi = warp_first + g + 8;  // this thread's rows
    const unsigned long long q_width = (unsigned long long)heads * head_dim;
    const unsigned long long kv_width = (unsigned long long)kv_heads * head_dim;
    // Packed data: sequence s at rows s * seq_len; records (offsets != nullptr): rows
    // offsets[s] - offsets[0] .. offsets[s + 1] - offsets[0] (a slice of the workload's
    // offsets), the grid sized by the longest.
    const unsigned long long base_row = offsets != nullptr
        ? (unsigned long long)(offsets[sequence] - offsets[0])
        : (unsigned long long)sequence * seq_len;
    const int len = offsets != nullptr ? offsets[sequence + 1] - offsets[sequence] : seq_len;
    if (block_first >= len) return;  // the whole block is past this sequence's end
    const int chunks = head_dim / 16;  // k-chunks of Q K^T
    const int dim_tiles = head_dim / 8;  // n-tiles of O

    // Q fragments, bf16, kept in registers for the whole key walk.
    u32 q_frag[MMA_MAX_HEAD_DIM / 16][4];
#pragma unroll
    for (int kc = 0; kc < MMA_MAX_HEAD_DIM / 16; kc++) {
        if (kc < chunks) {
            const int d0 = kc * 16 + 2 * c;
            float lo[4] = {0.0f, 0.0f, 0.0f, 0.0f}, hi[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (row_lo < len) {
                const float* r = q + (base_row + row_lo) * q_width + (unsigned long long)head * head_dim;
                lo[0] = r[d0]; lo[1] = r[d0 + 1]; lo[2] = r[d0 + 8]; lo[3] = r[d0 + 9];
            }
            if (row_hi < len) {
                const float* r = q + (base_row + row_hi) * q_width + (unsigned long long)head * head_dim;
                hi[0] = r[d0]; hi[1] = r[d0 + 1]; hi[2] = r[d0 + 8]; hi[3] = r[d0 + 9];
            }
            q_frag[kc][0] = pack_operands<F16>(lo[0], lo[1], overflow);
            q_frag[kc][1] = pack_operands<F16>(hi[0], hi[1], overflow);
            q_frag[kc][2] = pack_operands<F16>(lo[2], lo[3], overflow);
            q_frag[kc][3] = pack_operands<F16>(hi[2], hi[3], overflow);
        }
    }
    float o[MMA_MAX_HEAD_DIM / 8][4];
#pragma unroll
    for (int t = 0; t < MMA_MAX_HEAD_DIM / 8; t++) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
    // Running max (in log2 units, scaled) and sum for rows lo and hi.
    float max_lo = -INFINITY, max_hi = -INFINITY, sum_lo = 0.0f, sum_hi = 0.0f;
    const float scale_log2 = scale * 1.4426950408889634f;
    // Sinks: the scaled scores (log2 units) of key 0 and the delimiter for rows lo and hi,
    // kept by the thread whose fragment holds them.
    const int delimiter = want_sinks
        ? __float_as_int(sinks[sink_tail(gridDim.z, heads, seq_len, offsets) + sequence])
        : -1;
    float first_lo = -INFINITY, first_hi = -INFINITY, delim_lo = -INFINITY, delim_hi = -INFINITY;

    const int block_last = min(block_first + MMA_ROWS, len) - 1;
    const int warp_last = min(warp_first + 15, len - 1);
    const int key_begin = window > 0 ? max(0, block_first - window + 1) / MMA_KEYS * MMA_KEYS : 0;
    for (int tile = key_begin; tile <= block_last; tile += MMA_KEYS) {
        __syncthreads();  // the previous tile is consumed
        // Stage K (row-major) and V (transposed) of keys tile .. tile + 63 as bf16; keys past
        // the sequence are zeros (and masked below). K: a warp reads consecutive dimensions
        // of one key (coalesced) and writes them consecutively. V: a warp takes 32 key pairs
        // of one group of four dimensions, so each lane writes two keys of a dimension as one
        // word and the warp's words are consecutive (no bank conflicts on the transpose).
        const int quads = head_dim / 4;
        for (int idx = threadIdx.x; idx < MMA_KEYS * quads; idx += blockDim.x) {
            const int j = idx / quads, d = (idx - j * quads) * 4;
            float4 kv = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (tile + j < len) {
                kv = *reinterpret_cast<const float4*>(
                    k + (base_row + tile + j) * kv_width + (unsigned long long)kv_head * head_dim + d);
            }
            u32* k_dst = reinterpret_cast<u32*>(k_tile + j * k_stride + d);
            k_dst[0] = pack_operands<F16>(kv.x, kv.y, overflow);
            k_dst[1] = pack_operands<F16>(kv.z, kv.w, overflow);
        }
        for (int idx = threadIdx.x; idx < (MMA_KEYS / 2) * quads; idx += blockDim.x) {
            const int pair = idx % (MMA_KEYS / 2), d = (idx / (MMA_KEYS / 2)) * 4;
            const int j = 2 * pair;
            float4 v0 = make_float4(0.0f, 0.0f, 0.0f, 0.0f), v1 = v0;
            const unsigned long long column = (unsigned long long)kv_head * head_dim + d;
            if (tile + j < len) v0 = *reinterpret_cast<const float4*>(v + (base_row + tile + j) * kv_width + column);
            if (tile + j + 1 < len) v1 = *reinterpret_cast<const float4*>(v + (base_row + tile + j + 1) * kv_width + column);
            *reinterpret_cast<u32*>(v_t + (d + 0) * v_stride + j) = pack_operands<F16>(v0.x, v1.x, overflow);
            *reinterpret_cast<u32*>(v_t + (d + 1) * v_stride + j) = pack_operands<F16>(v0.y, v1.y, overflow);
            *reinterpret_cast<u32*>(v_t + (d + 2) * v_stride + j) = pack_operands<F16>(v0.z, v1.z, overflow);
            *reinterpret_cast<u32*>(v_t + (d + 3) * v_stride + j) = pack_operands<F16>(v0.w, v1.w, overflow);
        }
        __syncthreads();
        // Causal: a warp whose last row precedes the tile sees none of it; a window that ends
        // before the tile starts for its first row too.
        if (tile > warp_last) continue;
        if (window > 0 && tile + MMA_KEYS - 1 <= warp_first - window) continue;

        // S = Q K^T for 64 keys: 8 n-tiles of 8 keys.
        float s[MMA_KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < MMA_KEYS / 8; n++) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            const u16* key_row = k_tile + (n * 8 + g) * k_stride + 2 * c;
#pragma unroll
            for (int kc = 0; kc < MMA_MAX_HEAD_DIM / 16; kc++) {
                if (kc < chunks) {
                    const u32 b0 = *reinterpret_cast<const u32*>(key_row + kc * 16);
                    const u32 b1 = *reinterpret_cast<const u32*>(key_row + kc * 16 + 8);
                    mma_16x8x16<F16>(s[n], q_frag[kc], b0, b1);
                }
            }
        }
        // Mask, scale to log2 units, and the tile's row maxima.
        float tile_max_lo = -INFINITY, tile_max_hi = -INFINITY;
#pragma unroll
        for (int n = 0; n < MMA_KEYS / 8; n++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = tile + n * 8 + 2 * c + (e & 1);
                const int row = e < 2 ? row_lo : row_hi;
                const bool visible = key <= row && key < len && (window <= 0 || key > row - window);
                s[n][e] = visible ? s[n][e] * scale_log2 : -INFINITY;
            }
            tile_max_lo = fmaxf(tile_max_lo, fmaxf(s[n][0], s[n][1]));
            tile_max_hi = fmaxf(tile_max_hi, fmaxf(s[n][2], s[n][3]));
            if (want_sinks) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int key = tile + n * 8 + 2 * c + (e & 1);
                    if (key == 0) {
                        if (e < 2) first_lo = s[n][e]; else first_hi = s[n][e];
                    }
                    if (key == delimiter) {
                        if (e < 2) delim_lo = s[n][e]; else delim_hi = s[n][e];
                    }
                }
            }
        }
        // The four threads of a quad hold one row.
        tile_max_lo = fmaxf(tile_max_lo, __shfl_xor_sync(0xffffffffu, tile_max_lo, 1));
        tile_max_lo = fmaxf(tile_max_lo, __shfl_xor_sync(0xffffffffu, tile_max_lo, 2));
        tile_max_hi = fmaxf(tile_max_hi, __shfl_xor_sync(0xffffffffu, tile_max_hi, 1));
        tile_max_hi = fmaxf(tile_max_hi, __shfl_xor_sync(0xffffffffu, tile_max_hi, 2));
        const float new_lo = fmaxf(max_lo, tile_max_lo), new_hi = fmaxf(max_hi, tile_max_hi);
        // A row with no visible key yet keeps max -inf: use 0 so exp2 gives 0, not NaN.
        const float use_lo = new_lo == -INFINITY ? 0.0f : new_lo;
        const float use_hi = new_hi == -INFINITY ? 0.0f : new_hi;
        const float correction_lo = exp2f(max_lo - use_lo), correction_hi = exp2f(max_hi - use_hi);
        max_lo = new_lo;
        max_hi = new_hi;
        float row_sum_lo = 0.0f, row_sum_hi = 0.0f;
#pragma unroll
        for (int n = 0; n < MMA_KEYS / 8; n++) {
            s[n][0] = exp2f(s[n][0] - use_lo);
            s[n][1] = exp2f(s[n][1] - use_lo);
            s[n][2] = exp2f(s[n][2] - use_hi);
            s[n][3] = exp2f(s[n][3] - use_hi);
            row_sum_lo += s[n][0] + s[n][1];
            row_sum_hi += s[n][2] + s[n][3];
        }
        row_sum_lo += __shfl_xor_sync(0xffffffffu, row_sum_lo, 1);
        row_sum_lo += __shfl_xor_sync(0xffffffffu, row_sum_lo, 2);
        row_sum_hi += __shfl_xor_sync(0xffffffffu, row_sum_hi, 1);
        row_sum_hi += __shfl_xor_sync(0xffffffffu, row_sum_hi, 2);
        sum_lo = sum_lo * correction_lo + row_sum_lo;
        sum_hi = sum_hi * correction_hi + row_sum_hi;
#pragma unroll
        for (int t = 0; t < MMA_MAX_HEAD_DIM / 8; t++) {
            o[t][0] *= correction_lo;
            o[t][1] *= correction_lo;
            o[t][2] *= correction_hi;
            o[t][3] *= correction_hi;
        }
        // O += P V: P's C fragments of keys 16kk .. 16kk + 15 are the A fragment of chunk kk.
#pragma unroll
        for (int kk = 0; kk < MMA_KEYS / 16; kk++) {
            u32 p_frag[4];
            // Probabilities are at most 1: nothing to overflow.
            p_frag[0] = pack_operands<F16>(s[2 * kk][0], s[2 * kk][1], overflow);
            p_frag[1] = pack_operands<F16>(s[2 * kk][2], s[2 * kk][3], overflow);
            p_frag[2] = pack_operands<F16>(s[2 * kk + 1][0], s[2 * kk + 1][1], overflow);
            p_frag[3] = pack_operands<F16>(s[2 * kk + 1][2], s[2 * kk + 1][3], overflow);
#pragma unroll
            for (int t = 0; t < MMA_MAX_HEAD_DIM / 8; t++) {
                if (t < dim_tiles) {
                    const u16* dim_row = v_t + (t * 8 + g) * v_stride + kk * 16 + 2 * c;
                    const u32 b0 = *reinterpret_cast<const u32*>(dim_row);
                    const u32 b1 = *reinterpret_cast<const u32*>(dim_row + 8);
                    mma_16x8x16<F16>(o[t], p_frag, b0, b1);
                }
            }
        }
    }
    // The learned sink joins the normaliser (rows past the sequence are never written).
    const float sink_log2 =
        learned_sinks != nullptr ? learned_sinks[head] * 1.4426950408889634f : -INFINITY;
    if (learned_sinks != nullptr) {
        const float new_lo = fmaxf(max_lo, sink_log2), new_hi = fmaxf(max_hi, sink_log2);
        const float correction_lo = exp2f(max_lo - new_lo), correction_hi = exp2f(max_hi - new_hi);
        sum_lo = sum_lo * correction_lo + exp2f(sink_log2 - new_lo);
        sum_hi = sum_hi * correction_hi + exp2f(sink_log2 - new_hi);
#pragma unroll
        for (int t = 0; t < MMA_MAX_HEAD_DIM / 8; t++) {
            o[t][0] *= correction_lo;
            o[t][1] *= correction_lo;
            o[t][2] *= correction_hi;
            o[t][3] *= correction_hi;
        }
        max_lo = new_lo;
        max_hi = new_hi;
    }
    const float inv_lo = sum_lo > 0.0f ? 1.0f / sum_lo : 0.0f;
    const float inv_hi = sum_hi > 0.0f ? 1.0f / sum_hi : 0.0f;
    if (want_sinks) {
        // One thread of the quad holds each key: the others have -inf.
        for (int offset = 1; offset < 4; offset <<= 1) {
            first_lo = fmaxf(first_lo, __shfl_xor_sync(0xffffffffu, first_lo, offset));
            first_hi = fmaxf(first_hi, __shfl_xor_sync(0xffffffffu, first_hi, offset));
            delim_lo = fmaxf(delim_lo, __shfl_xor_sync(0xffffffffu, delim_lo, offset));
            delim_hi = fmaxf(delim_hi, __shfl_xor_sync(0xffffffffu, delim_hi, offset));
        }
        float* head_values = sinks + sink_values_base(sequence, head, heads, seq_len, offsets);
        const float p_first_lo = first_lo == -INFINITY ? 0.0f : exp2f(first_lo - max_lo) * inv_lo;
        const float p_delim_lo = delim_lo == -INFINITY ? 0.0f : exp2f(delim_lo - max_lo) * inv_lo;
        const float p_first_hi = first_hi == -INFINITY ? 0.0f : exp2f(first_hi - max_hi) * inv_hi;
        const float p_delim_hi = delim_hi == -INFINITY ? 0.0f : exp2f(delim_hi - max_hi) * inv_hi;
        const bool learned = learned_sinks != nullptr;
        if (c == 0 && row_lo < len) {
            float* r = head_values + (unsigned long long)row_lo * 3;
            r[0] = p_first_lo;
            r[1] = p_delim_lo;
            r[2] = learned ? exp2f(sink_log2 - max_lo) * inv_lo : 0.0f;
        }
        if (c == 0 && row_hi < len) {
            float* r = head_values + (unsigned long long)row_hi * 3;
            r[0] = p_first_hi;
            r[1] = p_delim_hi;
            r[2] = learned ? exp2f(sink_log2 - max_hi) * inv_hi : 0.0f;
        }
    }
#pragma unroll
    for (int t = 0; t < MMA_MAX_HEAD_DIM / 8; t++) {
        if (t < dim_tiles) {
            const int d = t * 8 + 2 * c;
            if (row_lo < len) {
                float* r = out + (base_row + row_lo) * q_width + (unsigned long long)head * head_dim + d;
                r[0] = o[t][0] * inv_lo;
                r[1] = o[t][1] * inv_lo;
            }
            if (row_hi < len) {
                float* r = out + (base_row + row_hi) * q_width + (unsigned long long)head * head_dim + d;
                r[0] = o[t][2] * inv_hi;
                r[1] = o[t][3] * inv_hi;
            }
        }
    }
    if (F16 && overflow) atomicExch(&overflow_sequences[sequence], 1u);
}

// Both entry points take the same arguments (one launch path); the bf16 kernel ignores
// `overflow_sequences` (null).
extern "C" __global__ void attention_mma_kernel(
    const float* q, const float* k, const float* v, float* out,
    int seq_len, int heads, int kv_heads, int head_dim, int window, float scale,
    const float* learned_sinks, float* sinks, int want_sinks, const int* offsets,
    u32* overflow_sequences) {
    attention_mma<false>(q, k, v, out, seq_len, heads, kv_heads, head_dim, window, scale,
                         learned_sinks, sinks, want_sinks, offsets, nullptr);
}

extern "C" __global__ void attention_mma_f16_kernel(
    const float* q, const float* k, const float* v, float* out,
    int seq_len, int heads, int kv_heads, int head_dim, int window, float scale,
    const float* learned_sinks, float* sinks, int want_sinks, const int* offsets,
    u32* overflow_sequences) {
    attention_mma<true>(q, k, v, out, seq_len, heads, kv_heads, head_dim, window, scale,
                        learned_sinks, sinks, want_sinks, offsets, overflow_sequences);
}
