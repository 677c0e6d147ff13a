// Next-token NLL without a (rows, vocab) buffer: logits arrive in vocabulary chunks and
// each row keeps a running max and sum of exp (online log-sum-exp) plus its target's logit.
// One block per row.
extern "C" __global__ void logsumexp_update_kernel(
    const float* logits, int rows, int chunk, int first_vocab, const u32* targets,
    float* running_max, float* running_sum, float* target_logit) {
    __shared__ float scratch[32];
    __shared__ float chunk_max_shared;
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* x = logits + (unsigned long long)row * chunk;
    float local_max = -INFINITY;
    for (int i = threadIdx.x; i < chunk; i += blockDim.x) local_max = fmaxf(local_max, x[i]);
    local_max = warp_max(local_max);
    if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = local_max;
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = -INFINITY;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) m = fmaxf(m, scratch[w]);
        chunk_max_shared = m;
    }
    __syncthreads();
    float new_max = fmaxf(running_max[row], chunk_max_shared);
    float local_sum = 0.0f;
    for (int i = threadIdx.x; i < chunk; i += blockDim.x) local_sum += expf(x[i] - new_max);
    float chunk_sum = block_sum(local_sum, scratch);
    if (threadIdx.x == 0) {
        float old_max = running_max[row];
        float rescaled = old_max == -INFINITY ? 0.0f : running_sum[row] * expf(old_max - new_max);
        running_sum[row] = rescaled + chunk_sum;
        running_max[row] = new_max;
        u32 target = targets[row];
        if (target != 0xffffffffu && (int)target >= first_vocab && (int)target < first_vocab + chunk) {
            target_logit[row] = x[target - first_vocab];
        }
    }
}
