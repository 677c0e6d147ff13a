// Causal grouped-query attention on tensor cores: flash-attention-2 style, bf16 (sm_80+) or
// f16 (sm_75+, the T4 path) operands, f32 accumulation and softmax. A block of 8 warps takes 128 consecutive query rows
// of one head of one sequence (16 rows per warp) and walks the keys in tiles of 64 staged in
// shared memory; S = Q K^T and O += P V are `mma.sync.m16n8k16` products, the online
// softmax runs on the S fragments in registers, and P is reused as the A operand of P V
// without leaving registers. `window` > 0 limits position p to keys p - window + 1 ..= p.
//
// K and V arrive already in the operand type (`attention_kv_kernel` below converts them once
// per call, not once per query block). On sm_80+ the next key tile is staged with `cp.async`
// while this one is multiplied (two stages); sm_75 stages one tile at a time with plain loads.
//
// head_dim: a multiple of 16, at most MMA_MAX_HEAD_DIM. Shared memory (u16), per stage:
// k_tile[MMA_KEYS][head_dim + 8], v_tile[MMA_KEYS][head_dim + 8], both row-major; P V's B
// operand (consecutive keys of one dimension) comes from `ldmatrix.trans`. The +8 padding
// spreads a warp's fragment loads and ldmatrix rows over all banks.
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
#if __CUDA_ARCH__ >= 800
#define MMA_STAGES 2
#else
#define MMA_STAGES 1
#endif

// Shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ u32 shared_address(const void* pointer) {
    u32 address;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }"
        : "=r"(address)
        : "l"(pointer));
    return address;
}

// 16 bytes global -> shared, zeros where !valid (`source` must still be a valid address).
// sm_80+: asynchronous (cp.async, waited on with cp_async_wait); sm_75: a plain copy.
__device__ __forceinline__ void copy_16_bytes(void* destination, const void* source, bool valid) {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :
                 : "r"(shared_address(destination)), "l"(source), "r"(valid ? 16 : 0));
#else
    const uint4 value = valid ? *reinterpret_cast<const uint4*>(source) : make_uint4(0u, 0u, 0u, 0u);
    *reinterpret_cast<uint4*>(destination) = value;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most `N` committed groups are in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Four 8x8 b16 matrices from shared memory, transposed: lanes 8i .. 8i + 7 give the row
// addresses of matrix i, and register i of lane l holds rows 2 (l % 4), 2 (l % 4) + 1 of
// column l / 4 of matrix i (an m16n8k16 B fragment when the rows are k).
__device__ __forceinline__ void ldmatrix_x4_trans(u32* r, const u16* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}

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
// k16, v16: K and V in the operand type, `(rows, kv_heads * head_dim)`.
template <bool F16>
__device__ __forceinline__ void attention_mma(
    const float* q, const u16* k16, const u16* v16, float* out,
    int seq_len, int heads, int kv_heads, int head_dim, int window, float scale,
    const float* learned_sinks, float* sinks, int want_sinks, const int* offsets,
    u32* overflow_sequences) {
    extern __shared__ __align__(16) u16 mma_shared[];
    bool overflow = false;
    const int stride = head_dim + 8;  // of a staged K or V row
    const int stage_len = 2 * MMA_KEYS * stride;  // K then V of one tile

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
    // Stages keys tile .. tile + 63 of K and V into stage `buffer`; keys past the sequence
    // are zeros (and masked below). Each thread copies 16-byte pieces of whole rows.
    const int pieces = head_dim / 8;  // 16-byte pieces of a head's row
    const unsigned long long kv_column = (unsigned long long)kv_head * head_dim;
    auto stage = [&](int tile, int buffer) {
        u16* k_tile = mma_shared + buffer * stage_len;
        u16* v_tile = k_tile + MMA_KEYS * stride;
        for (int idx = threadIdx.x; idx < MMA_KEYS * pieces; idx += blockDim.x) {
            const int j = idx / pieces, d = (idx - j * pieces) * 8;
            const bool valid = tile + j < len;
            const unsigned long long at =
                valid ? (base_row + tile + j) * kv_width + kv_column + d : 0;
            copy_16_bytes(k_tile + j * stride + d, k16 + at, valid);
            copy_16_bytes(v_tile + j * stride + d, v16 + at, valid);
        }
        cp_async_commit();
    };
    int buffer = 0;
    if (MMA_STAGES == 2) stage(key_begin, 0);
    for (int tile = key_begin; tile <= block_last; tile += MMA_KEYS) {
        if (MMA_STAGES == 2) {
            // The next tile's copies go out before this one is waited on.
            if (tile + MMA_KEYS <= block_last) {
                stage(tile + MMA_KEYS, buffer ^ 1);
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
        } else {
            __syncthreads();  // the previous tile is consumed
            stage(tile, 0);
        }
        __syncthreads();  // this tile is staged
        const u16* k_tile = mma_shared + buffer * stage_len;
        const u16* v_tile = k_tile + MMA_KEYS * stride;
        // Causal: a warp whose last row precedes the tile sees none of it; a window that ends
        // before the tile starts for its first row too.
        const bool sees_tile =
            tile <= warp_last && !(window > 0 && tile + MMA_KEYS - 1 <= warp_first - window);
        if (sees_tile) {
            // S = Q K^T for 64 keys: 8 n-tiles of 8 keys.
            float s[MMA_KEYS / 8][4];
#pragma unroll
            for (int n = 0; n < MMA_KEYS / 8; n++) {
                s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
                const u16* key_row = k_tile + (n * 8 + g) * stride + 2 * c;
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
                // B fragments of two dimension tiles per ldmatrix: lanes 0-7 address keys 0-7 and
                // lanes 8-15 keys 8-15 of tile t, lanes 16-31 the same keys of tile t + 1.
                const u16* v_rows = v_tile + (kk * 16 + (lane & 7) + (lane & 8)) * stride + (lane >> 4) * 8;
#pragma unroll
                for (int t = 0; t < MMA_MAX_HEAD_DIM / 8; t += 2) {
                    if (t < dim_tiles) {
                        u32 b[4];
                        ldmatrix_x4_trans(b, v_rows + t * 8);
                        mma_16x8x16<F16>(o[t], p_frag, b[0], b[1]);
                        mma_16x8x16<F16>(o[t + 1], p_frag, b[2], b[3]);
                    }
                }
            }
        }
        if (MMA_STAGES == 2) {
            __syncthreads();  // every warp is done with this buffer before it is refilled
            buffer ^= 1;
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
extern "C" __global__ void __launch_bounds__(32 * MMA_WARPS) attention_mma_kernel(
    const float* q, const u16* k16, const u16* v16, float* out,
    int seq_len, int heads, int kv_heads, int head_dim, int window, float scale,
    const float* learned_sinks, float* sinks, int want_sinks, const int* offsets,
    u32* overflow_sequences) {
    attention_mma<false>(q, k16, v16, out, seq_len, heads, kv_heads, head_dim, window, scale,
                         learned_sinks, sinks, want_sinks, offsets, nullptr);
}

extern "C" __global__ void __launch_bounds__(32 * MMA_WARPS) attention_mma_f16_kernel(
    const float* q, const u16* k16, const u16* v16, float* out,
    int seq_len, int heads, int kv_heads, int head_dim, int window, float scale,
    const float* learned_sinks, float* sinks, int want_sinks, const int* offsets,
    u32* overflow_sequences) {
    attention_mma<true>(q, k16, v16, out, seq_len, heads, kv_heads, head_dim, window, scale,
                        learned_sinks, sinks, want_sinks, offsets, overflow_sequences);
}

// K and V `(rows, kv_width)` f32 -> their operand-type copies k16, v16 (same layout), four
// values per thread (`quads` = rows * kv_width / 4). F16: a finite value that becomes +-inf
// flags its sequence in `overflow_sequences` (rows as attention_mma's: sequence s at
// s * seq_len, or at offsets[s] - offsets[0] of `sequences` + 1 offsets).
template <bool F16>
__device__ __forceinline__ void attention_kv(
    const float* k, const float* v, u16* k16, u16* v16, unsigned long long quads, int kv_width,
    int seq_len, const int* offsets, int sequences, u32* overflow_sequences) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < quads;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const float4 a = reinterpret_cast<const float4*>(k)[i];
        const float4 b = reinterpret_cast<const float4*>(v)[i];
        bool overflow = false;
        reinterpret_cast<uint2*>(k16)[i] =
            make_uint2(pack_operands<F16>(a.x, a.y, overflow), pack_operands<F16>(a.z, a.w, overflow));
        reinterpret_cast<uint2*>(v16)[i] =
            make_uint2(pack_operands<F16>(b.x, b.y, overflow), pack_operands<F16>(b.z, b.w, overflow));
        if (F16 && overflow) {
            const int row = (int)(i * 4 / kv_width);
            int sequence = 0;
            if (offsets == nullptr) {
                sequence = row / seq_len;
            } else {
                // The last sequence whose first row is at or before `row`.
                int low = 0, high = sequences - 1;
                while (low < high) {
                    const int middle = (low + high + 1) / 2;
                    if (offsets[middle] - offsets[0] <= row) low = middle; else high = middle - 1;
                }
                sequence = low;
            }
            atomicExch(&overflow_sequences[sequence], 1u);
        }
    }
}

extern "C" __global__ void attention_kv_bf16_kernel(
    const float* k, const float* v, u16* k16, u16* v16, unsigned long long quads, int kv_width,
    int seq_len, const int* offsets, int sequences, u32* overflow_sequences) {
    attention_kv<false>(k, v, k16, v16, quads, kv_width, seq_len, offsets, sequences, nullptr);
}

extern "C" __global__ void attention_kv_f16_kernel(
    const float* k, const float* v, u16* k16, u16* v16, unsigned long long quads, int kv_width,
    int seq_len, const int* offsets, int sequences, u32* overflow_sequences) {
    attention_kv<true>(k, v, k16, v16, quads, kv_width, seq_len, offsets, sequences,
                       overflow_sequences);
}
