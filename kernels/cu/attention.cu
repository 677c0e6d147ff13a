// Causal grouped-query attention, f32, flash-style: a block of ATTN_WARPS warps takes
// ATTN_WARPS consecutive query rows of one head of one sequence (one warp per row) and walks
// the keys in tiles of `key_tile` (<= 32) staged in shared memory, with an online softmax.
// Memory grows with the tile, never with T^2. `window` > 0 limits position p to keys
// p - window + 1 ..= p (transformers' sliding window).
//
// Shared memory (floats): k_tile[key_tile][head_dim + 1] (padded: lanes read different keys),
// v_tile[key_tile][head_dim], q_rows[ATTN_WARPS][head_dim].
//
// `only_sequences` not null: blocks of sequences whose flag is 0 do nothing (the f16 path
// recomputes in f32 the sequences whose operands overflowed f16).
//
// Learned sinks (`learned_sinks` not null, GPT-OSS): one logit per query head joins every
// row's softmax as an extra column and is dropped after it (the normaliser grows, the output
// shrinks).
//
// Attention-sink statistics (want_sinks != 0): `sinks` is scratch laid out as SINK_LAYOUT
// below; the lane that holds key 0 (and the sequence's first delimiter) keeps its score, and
// once the row's softmax normaliser is known the row's probability on those keys and on the
// learned sink is written.
#define ATTN_WARPS 8
#define ATTN_MAX_DIMS_PER_LANE 8  // head_dim <= 256

// SINK_LAYOUT of the scratch (floats), for sequences x heads (sequence, head) rows:
//   [rows * seq_len * 3]: per query, p(key 0), p(first delimiter), p(learned sink)
//   (sequences of their own lengths: each row its own length, common.cuh's
//   sink_values_base);
//   [rows * 6] after it: per row the three sums, each as a (hi, lo) float pair; before the
//   sums are written, its first `sequences` floats hold each sequence's first delimiter as
//   int bits (-1: none).
#define SINK_VALUES 3
__device__ __forceinline__ int sink_delimiter(const float* sinks, int sequences, int heads,
                                              int seq_len, int sequence, const int* offsets) {
    return __float_as_int(sinks[sink_tail(sequences, heads, seq_len, offsets) + sequence]);
}

extern "C" __global__ void attention_kernel(
    const float* q, const float* k, const float* v, float* out,
    int seq_len, int heads, int kv_heads, int head_dim, int key_tile, int window, float scale,
    const float* learned_sinks, float* sinks, int want_sinks, const int* offsets,
    const u32* only_sequences, unsigned long long* totals) {
    extern __shared__ float shared[];
    const int k_stride = head_dim + 1;
    float* k_tile = shared;
    float* v_tile = k_tile + key_tile * k_stride;
    float* q_rows = v_tile + key_tile * head_dim;

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int head = blockIdx.y, sequence = blockIdx.z;
    const int kv_head = head / (heads / kv_heads);
    const int first_query = blockIdx.x * ATTN_WARPS;
    const int query = first_query + warp;
    const unsigned long long q_width = (unsigned long long)heads * head_dim;
    const unsigned long long kv_width = (unsigned long long)kv_heads * head_dim;
    // Packed data: sequence s at rows s * seq_len; records (offsets != nullptr): rows
    // offsets[s] - offsets[0] .. offsets[s + 1] - offsets[0] (a slice of the workload's
    // offsets), the grid sized by the longest.
    const unsigned long long base_row = offsets != nullptr
        ? (unsigned long long)(offsets[sequence] - offsets[0])
        : (unsigned long long)sequence * seq_len;
    const int len = offsets != nullptr ? offsets[sequence + 1] - offsets[sequence] : seq_len;
    // The f16 path's fix-up (half_guard.cu): only the sequences the tensor-core kernel flagged,
    // each counted once in totals[1].
    if (only_sequences != nullptr) {
        if (only_sequences[sequence] == 0u) return;
        if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) atomicAdd(&totals[1], 1ull);
    }
    if (first_query >= len) return;  // the whole block is past this sequence's end
    const bool active = query < len;

    float* q_row = q_rows + warp * head_dim;
    if (active) {
        for (int d = lane; d < head_dim; d += 32) {
            q_row[d] = q[(base_row + query) * q_width + (unsigned long long)head * head_dim + d];
        }
    }
    float acc[ATTN_MAX_DIMS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; i++) acc[i] = 0.0f;
    float running_max = -INFINITY, running_sum = 0.0f;
    const int delimiter =
        want_sinks ? sink_delimiter(sinks, gridDim.z, heads, seq_len, sequence, offsets) : -1;
    float first_score = -INFINITY, delimiter_score = -INFINITY;  // the lane holding the key

    const int last_query = min(first_query + ATTN_WARPS, len) - 1;
    const int key_begin = window > 0 ? max(0, first_query - window + 1) : 0;
    const int key_end = last_query + 1;
    for (int tile = key_begin; tile < key_end; tile += key_tile) {
        __syncthreads();  // the previous tile is consumed
        const int n_keys = min(key_tile, key_end - tile);
        for (int idx = threadIdx.x; idx < n_keys * head_dim; idx += blockDim.x) {
            int j = idx / head_dim, d = idx - j * head_dim;
            unsigned long long src = (base_row + tile + j) * kv_width + (unsigned long long)kv_head * head_dim + d;
            k_tile[j * k_stride + d] = k[src];
            v_tile[j * head_dim + d] = v[src];
        }
        __syncthreads();
        if (!active) continue;
        const int key = tile + lane;
        const bool visible = lane < n_keys && key <= query && (window <= 0 || key > query - window);
        float score = -INFINITY;
        if (visible) {
            float dot = 0.0f;
            for (int d = 0; d < head_dim; d++) dot += q_row[d] * k_tile[lane * k_stride + d];
            score = dot * scale;
            if (key == 0) first_score = score;
            if (key == delimiter) delimiter_score = score;
        }
        const float tile_max = warp_max(score);
        if (tile_max == -INFINITY) continue;  // no visible key for this row in this tile
        const float new_max = fmaxf(running_max, tile_max);
        const float correction = expf(running_max - new_max);
        const float p = visible ? expf(score - new_max) : 0.0f;
        running_sum = running_sum * correction + warp_sum(p);
#pragma unroll
        for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; i++) acc[i] *= correction;
        for (int j = 0; j < n_keys; j++) {
            const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
            for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; i++) {
                int d = lane + 32 * i;
                if (d < head_dim) acc[i] += pj * v_tile[j * head_dim + d];
            }
        }
        running_max = new_max;
    }
    // The learned sink: one more logit in the normaliser (every active row saw a key, so
    // running_max is finite).
    const float sink_logit = learned_sinks != nullptr ? learned_sinks[head] : -INFINITY;
    if (active && learned_sinks != nullptr) {
        const float new_max = fmaxf(running_max, sink_logit);
        const float correction = expf(running_max - new_max);
        running_sum = running_sum * correction + expf(sink_logit - new_max);
#pragma unroll
        for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; i++) acc[i] *= correction;
        running_max = new_max;
    }
    if (want_sinks) {
        first_score = warp_max(first_score);
        delimiter_score = warp_max(delimiter_score);
        if (active && lane == 0) {
            float* row = sinks + sink_values_base(sequence, head, heads, seq_len, offsets)
                + (unsigned long long)query * SINK_VALUES;
            row[0] = first_score == -INFINITY ? 0.0f : expf(first_score - running_max) / running_sum;
            row[1] = delimiter_score == -INFINITY ? 0.0f : expf(delimiter_score - running_max) / running_sum;
            row[2] = learned_sinks == nullptr ? 0.0f : expf(sink_logit - running_max) / running_sum;
        }
    }
    if (active) {
        const float inv_sum = 1.0f / running_sum;
        float* out_row = out + (base_row + query) * q_width + (unsigned long long)head * head_dim;
#pragma unroll
        for (int i = 0; i < ATTN_MAX_DIMS_PER_LANE; i++) {
            int d = lane + 32 * i;
            if (d < head_dim) out_row[d] = acc[i] * inv_sum;
        }
    }
}

// The sums over queries of each (sequence, head) row's sink probabilities (SINK_LAYOUT), in
// double in a fixed order (strided per thread, then a tree), written as (hi, lo) float pairs
// after the per-query values. One block of SINK_REDUCE_THREADS per row.
#define SINK_REDUCE_THREADS 256
extern "C" __global__ void sink_mass_reduce_kernel(float* sinks, int rows, int seq_len, int heads,
                                                   const int* offsets) {
    __shared__ double partial[SINK_VALUES][SINK_REDUCE_THREADS];
    const int row = blockIdx.x;
    const int sequence = row / heads;
    const float* values = sinks + sink_values_base(sequence, row % heads, heads, seq_len, offsets);
    const int len = offsets != nullptr ? offsets[sequence + 1] - offsets[sequence] : seq_len;
    double sum[SINK_VALUES] = {0.0, 0.0, 0.0};
    for (int t = threadIdx.x; t < len; t += SINK_REDUCE_THREADS) {
        for (int i = 0; i < SINK_VALUES; i++) sum[i] += values[SINK_VALUES * t + i];
    }
    for (int i = 0; i < SINK_VALUES; i++) partial[i][threadIdx.x] = sum[i];
    __syncthreads();
    for (int stride = SINK_REDUCE_THREADS / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            for (int i = 0; i < SINK_VALUES; i++) {
                partial[i][threadIdx.x] += partial[i][threadIdx.x + stride];
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float* sums = sinks + sink_tail(rows / heads, heads, seq_len, offsets)
            + (unsigned long long)row * 2 * SINK_VALUES;
        for (int i = 0; i < SINK_VALUES; i++) {
            const float hi = (float)partial[i][0];
            sums[2 * i] = hi;
            sums[2 * i + 1] = (float)(partial[i][0] - (double)hi);
        }
    }
}
