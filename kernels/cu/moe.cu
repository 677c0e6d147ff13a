// Mixture-of-experts routing on the GPU: softmax + top-k per token, expert counts,
// deterministic grouping of token rows by expert (permute), and the weighted sum back into
// token order (unpermute) in ascending expert order, the order transformers adds them in.

// One thread per token. chosen/weights: (tokens, top_k), best first; ties: lower index.
// scoring 0: softmax over all experts, the top k of the probabilities; scoring 1 (GPT-OSS):
// the top k of the logits, softmax over those k only. normalize: weights divided by their sum.
extern "C" __global__ void router_topk_kernel(
    const float* logits, int tokens, int experts, int top_k, int normalize, int scoring, u32* chosen,
    float* weights) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= tokens) return;
    const float* row = logits + (unsigned long long)t * experts;
    float max_logit = -INFINITY;
    for (int e = 0; e < experts; e++) max_logit = fmaxf(max_logit, row[e]);
    float total = 0.0f;
    if (scoring == 0) {
        for (int e = 0; e < experts; e++) total += expf(row[e] - max_logit);
    }
    u32* my_chosen = chosen + (unsigned long long)t * top_k;
    float* my_weights = weights + (unsigned long long)t * top_k;
    for (int slot = 0; slot < top_k; slot++) {
        int best = -1;
        float best_score = -INFINITY;
        for (int e = 0; e < experts; e++) {
            bool taken = false;
            for (int s = 0; s < slot; s++) taken |= (my_chosen[s] == (u32)e);
            if (taken) continue;
            float score = scoring == 0 ? expf(row[e] - max_logit) / total : row[e];
            // The first untaken expert stands until a larger score (never an index out of range).
            if (best < 0 || score > best_score) {
                best = e;
                best_score = score;
            }
        }
        my_chosen[slot] = (u32)best;
        my_weights[slot] = best_score;
    }
    if (scoring == 1) {
        // Softmax over the chosen logits (the first is their maximum).
        float chosen_max = -INFINITY;
        for (int slot = 0; slot < top_k; slot++) chosen_max = fmaxf(chosen_max, my_weights[slot]);
        float chosen_total = 0.0f;
        for (int slot = 0; slot < top_k; slot++) {
            my_weights[slot] = expf(my_weights[slot] - chosen_max);
            chosen_total += my_weights[slot];
        }
        for (int slot = 0; slot < top_k; slot++) my_weights[slot] /= chosen_total;
    }
    if (normalize) {
        float chosen_sum = 0.0f;
        for (int slot = 0; slot < top_k; slot++) chosen_sum += my_weights[slot];
        for (int slot = 0; slot < top_k; slot++) my_weights[slot] /= chosen_sum;
    }
}

// One thread per token, the sigmoid router of GLM-4.5 (DeepSeek-V3's): s = sigmoid(logit);
// the choice by s + bias[e] (bias: (experts), used only to choose). With groups > 1 the
// experts are viewed as (groups, experts / groups), a group scored by the sum of its two best
// biased scores, the best top_groups groups kept (bits of `kept`) and the others' scores -inf;
// then the top k of the biased scores (ties: the lower index, for groups and experts).
// weights: the unbiased s of the chosen, divided by their sum + 1e-20 when normalize, times
// scaling (routed_scaling_factor).
__device__ __forceinline__ float router_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void router_sigmoid_kernel(
    const float* logits, const float* bias, int tokens, int experts, int top_k, int groups,
    int top_groups, int normalize, float scaling, u32* chosen, float* weights) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= tokens) return;
    const float* row = logits + (unsigned long long)t * experts;
    const int per_group = experts / groups;
    unsigned long long kept = ~0ull;
    if (groups > 1) {
        kept = 0ull;
        for (int pick = 0; pick < top_groups; pick++) {
            int best = -1;
            float best_score = -INFINITY;
            for (int g = 0; g < groups; g++) {
                if ((kept >> g) & 1ull) continue;
                float first = -INFINITY, second = -INFINITY;
                for (int i = g * per_group; i < (g + 1) * per_group; i++) {
                    float s = router_sigmoid(row[i]) + bias[i];
                    if (s > first) {
                        second = first;
                        first = s;
                    } else if (s > second) {
                        second = s;
                    }
                }
                float score = first + second;
                if (best < 0 || score > best_score) {
                    best = g;
                    best_score = score;
                }
            }
            kept |= 1ull << best;
        }
    }
    u32* my_chosen = chosen + (unsigned long long)t * top_k;
    float* my_weights = weights + (unsigned long long)t * top_k;
    float chosen_sum = 0.0f;
    for (int slot = 0; slot < top_k; slot++) {
        int best = -1;
        float best_score = -INFINITY;
        for (int e = 0; e < experts; e++) {
            bool taken = false;
            for (int s = 0; s < slot; s++) taken |= (my_chosen[s] == (u32)e);
            if (taken) continue;
            float score = ((kept >> (e / per_group)) & 1ull) ? router_sigmoid(row[e]) + bias[e]
                                                             : -INFINITY;
            if (best < 0 || score > best_score) {
                best = e;
                best_score = score;
            }
        }
        my_chosen[slot] = (u32)best;
        my_weights[slot] = router_sigmoid(row[best]);
        chosen_sum += my_weights[slot];
    }
    const float denominator = chosen_sum + 1e-20f;
    for (int slot = 0; slot < top_k; slot++) {
        if (normalize) my_weights[slot] /= denominator;
        my_weights[slot] *= scaling;
    }
}

// counts[e] += number of assignments to e (counts zeroed by the caller).
extern "C" __global__ void expert_count_kernel(const u32* chosen, int assignments, u32* counts) {
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a < assignments) atomicAdd(&counts[chosen[a]], 1u);
}

// positions[a] = offsets[chosen[a]] + rank of a among the assignments to the same expert,
// in assignment order (deterministic). One block per expert walks the assignments a block
// at a time: a ballot per warp, the warps' counts in shared memory, a running cursor.
extern "C" __global__ void expert_positions_kernel(
    const u32* chosen, int assignments, int experts, const u32* offsets, u32* positions) {
    __shared__ u32 warp_counts[32];
    __shared__ u32 cursor;
    const int e = blockIdx.x;
    if (e >= experts) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    if (threadIdx.x == 0) cursor = offsets[e];
    __syncthreads();
    for (int base = 0; base < assignments; base += blockDim.x) {
        const int a = base + threadIdx.x;
        const bool mine = a < assignments && chosen[a] == (u32)e;
        const unsigned ballot = __ballot_sync(0xffffffffu, mine);
        if (lane == 0) warp_counts[warp] = __popc(ballot);
        __syncthreads();
        u32 before = cursor;
        for (int w = 0; w < warp; w++) before += warp_counts[w];
        if (mine) positions[a] = before + __popc(ballot & ((1u << lane) - 1u));
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 0; w < warps; w++) cursor += warp_counts[w];
        }
        __syncthreads();
    }
}

// gathered[positions[a]] = x[a / top_k], one block per assignment.
extern "C" __global__ void expert_gather_kernel(
    const float* x, const u32* positions, int assignments, int top_k, int width, float* gathered) {
    int a = blockIdx.x;
    if (a >= assignments) return;
    const float* src = x + (unsigned long long)(a / top_k) * width;
    float* dst = gathered + (unsigned long long)positions[a] * width;
    for (int d = threadIdx.x; d < width; d += blockDim.x) dst[d] = src[d];
}

// gathered[positions[a]] = bf16(x[a / top_k]): the expert GEMMs' bf16 inputs, gathered and
// converted in one pass.
extern "C" __global__ void expert_gather_bf16_kernel(
    const float* x, const u32* positions, int assignments, int top_k, int width, u16* gathered) {
    int a = blockIdx.x;
    if (a >= assignments) return;
    const float* src = x + (unsigned long long)(a / top_k) * width;
    u16* dst = gathered + (unsigned long long)positions[a] * width;
    for (int d = threadIdx.x; d < width; d += blockDim.x) dst[d] = f32_to_bf16(src[d]);
}

// gathered[positions[a]] = f16(x[a / top_k]): the f16 expert GEMMs' inputs, gathered and
// converted in one pass, listing in guard (half_guard.cu's layout, over the tokens: the count,
// the listed tokens, a flag per token; zeroed by the caller) each token whose row holds a
// finite value beyond f16's range.
extern "C" __global__ void expert_gather_f16_kernel(
    const float* x, const u32* positions, int assignments, int top_k, int width, u16* gathered,
    u32* guard) {
    int a = blockIdx.x;
    if (a >= assignments) return;
    const int tokens = assignments / top_k;
    const u32 token = (u32)(a / top_k);
    const float* src = x + (unsigned long long)token * width;
    u16* dst = gathered + (unsigned long long)positions[a] * width;
    for (int d = threadIdx.x; d < width; d += blockDim.x) {
        const float value = src[d];
        const u16 bits = f32_to_f16(value);
        dst[d] = bits;
        if (f16_overflowed(value, bits) && atomicExch(&guard[1 + tokens + token], 1u) == 0u) {
            guard[1 + atomicAdd(&guard[0], 1u)] = token;
        }
    }
}

// out[t] = sum over t's experts in [first_expert, end_expert), in ascending expert order, of
// weight * expert_out[position]; with accumulate the sum starts from out[t] instead of 0, so
// the expert groups of a split layer add up to exactly the unsplit sum. One block per token:
// its slots are put in expert order once (top_k <= MAX_TOP_K), then threads walk the width.
#define MAX_TOP_K 128
extern "C" __global__ void expert_unpermute_kernel(
    const float* expert_out, const u32* positions, const u32* chosen, const float* weights,
    int tokens, int top_k, int width, int first_expert, int end_expert, int accumulate,
    float* out) {
    __shared__ int order[MAX_TOP_K];
    const int t = blockIdx.x;
    if (t >= tokens) return;
    const u32* my_chosen = chosen + (unsigned long long)t * top_k;
    if (threadIdx.x < top_k) {
        const u32 mine = my_chosen[threadIdx.x];
        int rank = 0;
        for (int s = 0; s < top_k; s++) {
            const u32 other = my_chosen[s];
            rank += other < mine || (other == mine && s < (int)threadIdx.x);
        }
        order[rank] = threadIdx.x;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < width; d += blockDim.x) {
        const unsigned long long i = (unsigned long long)t * width + d;
        float sum = accumulate ? out[i] : 0.0f;
        for (int n = 0; n < top_k; n++) {
            const int slot = order[n];
            const long long e = my_chosen[slot];
            if (e < first_expert || e >= end_expert) continue;
            const unsigned long long a = (unsigned long long)t * top_k + slot;
            sum += expert_out[(unsigned long long)positions[a] * width + d] * weights[a];
        }
        out[i] = sum;
    }
}

// out[t] += sigmoid(gate_logit[t]) * shared[t]  (Qwen2-MoE's gated shared expert).
extern "C" __global__ void sigmoid_gated_add_kernel(
    float* out, const float* shared_out, const float* gate_logits, int tokens, int width) {
    unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (i >= (unsigned long long)tokens * width) return;
    float g = gate_logits[i / width];
    out[i] += (1.0f / (1.0f + expf(-g))) * shared_out[i];
}
