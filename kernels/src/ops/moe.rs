//! MoE routing, permutation and unpermutation (`moe.cu`).

use super::{block_per_row, check_len, grid_for, launch};
use crate::error::{KernelError, Result};
use crate::gpu::Gpu;
use crate::sources::MOE;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr};

/// How the router turns logits into its choice and weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterKernelScoring {
    /// Softmax over every expert, then the top k of the probabilities.
    Softmax = 0,
    /// The top k of the logits, then a softmax over those k (GPT-OSS).
    TopKSoftmax = 1,
}

/// The router's top-k per token of `logits (tokens, experts)` (best first, ties to the lower
/// index), weighted by `scoring`, renormalised when `normalize`. `chosen`, `weights`:
/// `(tokens, top_k)`.
#[allow(clippy::too_many_arguments)]
pub fn router_top_k(
    gpu: &Gpu,
    logits: &CudaView<f32>,
    experts: usize,
    top_k: usize,
    normalize: bool,
    scoring: RouterKernelScoring,
    chosen: &mut CudaViewMut<u32>,
    weights: &mut CudaViewMut<f32>,
) -> Result<()> {
    let tokens = logits.len() / experts;
    check_len("router chosen", chosen, tokens * top_k)?;
    check_len("router weights", weights, tokens * top_k)?;
    let (tokens_i, experts_i, k_i, norm_i, scoring_i) = (
        tokens as i32,
        experts as i32,
        top_k as i32,
        normalize as i32,
        scoring as i32,
    );
    launch!(
        gpu,
        MOE,
        "router_topk_kernel",
        grid_for(tokens),
        logits,
        &tokens_i,
        &experts_i,
        &k_i,
        &norm_i,
        &scoring_i,
        chosen,
        weights
    )
}

/// The sigmoid router's top-k per token of `logits (tokens, experts)` chosen by
/// `sigmoid + selection_bias (experts)` within the best `top_groups` of `groups` expert
/// groups (best first, ties to the lower index), weighted by the unbiased sigmoid, divided
/// by its sum + 1e-20 when `normalize`, times `scaling`. `chosen`, `weights`: `(tokens, top_k)`.
#[allow(clippy::too_many_arguments)]
pub fn router_sigmoid(
    gpu: &Gpu,
    logits: &CudaView<f32>,
    selection_bias: &CudaView<f32>,
    top_k: usize,
    groups: usize,
    top_groups: usize,
    normalize: bool,
    scaling: f32,
    chosen: &mut CudaViewMut<u32>,
    weights: &mut CudaViewMut<f32>,
) -> Result<()> {
    let experts = selection_bias.len();
    let tokens = logits.len() / experts;
    if groups == 0 || groups > 64 || experts % groups != 0 || top_groups > groups {
        return Err(KernelError::Unsupported(format!(
            "sigmoid router: {groups} groups ({top_groups} kept) of {experts} experts; the kernel takes 1 to 64 equal groups"
        )));
    }
    check_len("router chosen", chosen, tokens * top_k)?;
    check_len("router weights", weights, tokens * top_k)?;
    let (tokens_i, experts_i, k_i, groups_i, top_groups_i, norm_i) = (
        tokens as i32,
        experts as i32,
        top_k as i32,
        groups as i32,
        top_groups as i32,
        normalize as i32,
    );
    launch!(
        gpu,
        MOE,
        "router_sigmoid_kernel",
        grid_for(tokens),
        logits,
        selection_bias,
        &tokens_i,
        &experts_i,
        &k_i,
        &groups_i,
        &top_groups_i,
        &norm_i,
        &scaling,
        chosen,
        weights
    )
}

/// `counts[e] += assignments to e`; `counts` must be zeroed first.
pub fn count_per_expert(
    gpu: &Gpu,
    chosen: &CudaView<u32>,
    counts: &mut CudaViewMut<u32>,
) -> Result<()> {
    let n = chosen.len();
    let n_i = n as i32;
    launch!(
        gpu,
        MOE,
        "expert_count_kernel",
        grid_for(n),
        chosen,
        &n_i,
        counts
    )
}

/// Where each assignment goes in the expert-grouped buffer: `offsets[e]` plus its rank
/// among assignments to `e` (deterministic).
pub fn expert_positions(
    gpu: &Gpu,
    chosen: &CudaView<u32>,
    offsets: &CudaView<u32>,
    positions: &mut CudaViewMut<u32>,
) -> Result<()> {
    let (n, experts) = (chosen.len(), offsets.len());
    check_len("positions", positions, n)?;
    let (n_i, experts_i) = (n as i32, experts as i32);
    launch!(
        gpu,
        MOE,
        "expert_positions_kernel",
        block_per_row(experts, 1024),
        chosen,
        &n_i,
        &experts_i,
        offsets,
        positions
    )
}

/// `gathered[positions[a]] = x[a / top_k]`: token rows grouped by expert.
pub fn gather_by_expert(
    gpu: &Gpu,
    x: &CudaView<f32>,
    positions: &CudaView<u32>,
    top_k: usize,
    width: usize,
    gathered: &mut CudaViewMut<f32>,
) -> Result<()> {
    gather_rows(
        gpu,
        "expert_gather_kernel",
        x,
        positions,
        top_k,
        width,
        gathered,
    )
}

/// `gathered[positions[a]] = bf16(x[a / top_k])`: token rows grouped by expert, as the
/// expert GEMMs' bf16 inputs.
pub fn gather_by_expert_bf16(
    gpu: &Gpu,
    x: &CudaView<f32>,
    positions: &CudaView<u32>,
    top_k: usize,
    width: usize,
    gathered: &mut CudaViewMut<u16>,
) -> Result<()> {
    gather_rows(
        gpu,
        "expert_gather_bf16_kernel",
        x,
        positions,
        top_k,
        width,
        gathered,
    )
}

/// `gathered[positions[a]] = f16(x[a / top_k])`: token rows grouped by expert, as the expert
/// GEMMs' f16 inputs, with `guard` (`half_guard::guard_len(tokens)`, reset first) listing each
/// token whose row holds a value beyond f16's range (the experts' fix-up reads it).
pub fn gather_by_expert_f16_guarded(
    gpu: &Gpu,
    x: &CudaView<f32>,
    positions: &CudaView<u32>,
    top_k: usize,
    width: usize,
    gathered: &mut CudaViewMut<u16>,
    guard: &mut CudaViewMut<u32>,
) -> Result<()> {
    let n = positions.len();
    let tokens = n / top_k;
    check_len("gathered", gathered, n * width)?;
    check_len("gather x", x, tokens * width)?;
    let guard_len = super::half_guard::guard_len(tokens);
    check_len("f16 expert guard", guard, guard_len)?;
    gpu.stream.memset_zeros(&mut guard.slice_mut(..guard_len))?;
    let (n_i, k_i, w_i) = (n as i32, top_k as i32, width as i32);
    launch!(
        gpu,
        MOE,
        "expert_gather_f16_kernel",
        block_per_row(n, 128),
        x,
        positions,
        &n_i,
        &k_i,
        &w_i,
        gathered,
        guard
    )
}

/// Either gather: `kernel` writes rows of `T` (f32 or bf16 bits).
fn gather_rows<T: DeviceRepr>(
    gpu: &Gpu,
    kernel: &'static str,
    x: &CudaView<f32>,
    positions: &CudaView<u32>,
    top_k: usize,
    width: usize,
    gathered: &mut CudaViewMut<T>,
) -> Result<()> {
    let n = positions.len();
    check_len("gathered", gathered, n * width)?;
    check_len("gather x", x, n / top_k * width)?;
    let (n_i, k_i, w_i) = (n as i32, top_k as i32, width as i32);
    launch!(
        gpu,
        MOE,
        kernel,
        block_per_row(n, 128),
        x,
        positions,
        &n_i,
        &k_i,
        &w_i,
        gathered
    )
}

/// `out[t] = sum over t's experts in `experts` (ascending) of weight * expert_out[position]`;
/// with `accumulate` the sum starts from `out[t]` (the expert groups of a split layer).
#[allow(clippy::too_many_arguments)]
pub fn unpermute(
    gpu: &Gpu,
    expert_out: &CudaView<f32>,
    positions: &CudaView<u32>,
    chosen: &CudaView<u32>,
    weights: &CudaView<f32>,
    top_k: usize,
    width: usize,
    experts: std::ops::Range<usize>,
    accumulate: bool,
    out: &mut CudaViewMut<f32>,
) -> Result<()> {
    let tokens = chosen.len() / top_k;
    check_len("unpermute out", out, tokens * width)?;
    if top_k > 128 {
        return Err(crate::error::KernelError::Unsupported(format!(
            "top-k {top_k} above the unpermute kernel's 128"
        )));
    }
    let (t_i, k_i, w_i) = (tokens as i32, top_k as i32, width as i32);
    let (first, end, accumulate) = (
        experts.start as i32,
        experts.end as i32,
        i32::from(accumulate),
    );
    launch!(
        gpu,
        MOE,
        "expert_unpermute_kernel",
        block_per_row(tokens, 256),
        expert_out,
        positions,
        chosen,
        weights,
        &t_i,
        &k_i,
        &w_i,
        &first,
        &end,
        &accumulate,
        out
    )
}

/// `out[t] += sigmoid(gate_logits[t]) * shared_out[t]`.
pub fn sigmoid_gated_add(
    gpu: &Gpu,
    out: &mut CudaViewMut<f32>,
    shared_out: &CudaView<f32>,
    gate_logits: &CudaView<f32>,
    width: usize,
) -> Result<()> {
    let tokens = gate_logits.len();
    check_len("shared out", shared_out, tokens * width)?;
    let (t_i, w_i) = (tokens as i32, width as i32);
    launch!(
        gpu,
        MOE,
        "sigmoid_gated_add_kernel",
        grid_for(tokens * width),
        out,
        shared_out,
        gate_logits,
        &t_i,
        &w_i
    )
}
