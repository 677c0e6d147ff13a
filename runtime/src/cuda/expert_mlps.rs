//! The routed experts' gated MLPs on their grouped rows, in the GEMM dtype of the experts'
//! weights. bf16: the rows are gathered into bf16 once for every expert and each activation
//! is written in bf16 (4 launches per expert). f16: the same with the overflow guard (the
//! gather lists the tokens whose rows hold values beyond f16's range, each gate and up GEMM's
//! fix-up recomputes those tokens' rows of that expert in f32, the activation is guarded like
//! any f16 GEMM input; 8 launches per expert instead of 13). f32: plain GEMMs.

use super::linear::{HalfScratch, linear, linear_bf16_input, linear_converted};
use super::moe::{MoeBuffers, activate, kernel_activation};
use super::weights::{DeviceLayer, MatrixRows};
use crate::arch::{Activation, WeightRole};
use crate::error::{Result, RuntimeError};
use layerstream_kernels::cudarc::driver::{CudaView, CudaViewMut};
use layerstream_kernels::ops::half_guard::{self, guard_len};
use layerstream_kernels::ops::{elementwise, moe};
use layerstream_kernels::{Gpu, gemm};
use std::ops::Range;

/// What every expert's MLP shares: the block input `x (tokens, hidden)` and its shapes.
pub struct ExpertInput<'a> {
    /// `(tokens, hidden)`: the block input the experts' rows are gathered from.
    pub x: &'a CudaView<'a, f32>,
    /// The layer part's weights on the device.
    pub weights: &'a DeviceLayer,
    /// Width of the hidden states.
    pub hidden: usize,
    /// Width of an expert's intermediate activation.
    pub inter: usize,
    /// Experts per token.
    pub top_k: usize,
    /// The experts' gated activation.
    pub activation: Activation,
}

/// An expert and its rows of the grouped order.
pub type ExpertRows = (usize, Range<usize>);

/// `y += bias` when the layer has one for `role`.
fn add_bias(
    gpu: &Gpu,
    weights: &DeviceLayer,
    role: WeightRole,
    y: &mut CudaViewMut<f32>,
) -> Result<()> {
    if let Some(bias) = weights.maybe_vector(role) {
        elementwise::add_bias(gpu, y, &bias.as_view())?;
    }
    Ok(())
}

/// Each expert of `groups` on its rows (the grouped positions already in `b`), its output
/// rows into `b.expert_out`, in the GEMM dtype of the experts' weights.
pub fn run_experts(
    gpu: &Gpu,
    input: &ExpertInput,
    groups: &[ExpertRows],
    b: &mut MoeBuffers,
    half: &mut HalfScratch,
) -> Result<()> {
    let Some((first, _)) = groups.first() else {
        return Ok(());
    };
    match input.weights.matrix(WeightRole::ExpertGate(*first)) {
        MatrixRows::Bf16(_) => bf16_experts(gpu, input, groups, b, half),
        MatrixRows::F16(_) => f16_experts(gpu, input, groups, b, half),
        MatrixRows::F32(_) => f32_experts(gpu, input, groups, b, half),
    }
}

fn bf16_experts(
    gpu: &Gpu,
    input: &ExpertInput,
    groups: &[ExpertRows],
    b: &mut MoeBuffers,
    half: &mut HalfScratch,
) -> Result<()> {
    use WeightRole::*;
    let ExpertInput {
        x,
        weights,
        hidden,
        inter,
        top_k,
        activation,
    } = *input;
    let assignments = x.len() / hidden * top_k;
    // SAFETY: `gathered` holds `assignments * hidden` f32, twice the bytes of the bf16 rows
    // (in its first half); any bits are valid u16.
    let mut gathered = unsafe { b.gathered.transmute_mut::<u16>(assignments * hidden) }
        .ok_or_else(|| RuntimeError::internal("the f32 gather buffer holds no bf16 copy"))?;
    let positions = b.positions.slice(..assignments);
    moe::gather_by_expert_bf16(gpu, x, &positions, top_k, hidden, &mut gathered)?;
    let gathered = gathered.as_view();
    for (expert, rows) in groups {
        let (expert, n) = (*expert, rows.len());
        let rows_in = gathered.slice(rows.start * hidden..rows.end * hidden);
        let mut g = b.gate.slice_mut(..n * inter);
        let mut u = b.up.slice_mut(..n * inter);
        let gate_w = weights.matrix(ExpertGate(expert));
        linear_bf16_input(gpu, &rows_in, &gate_w, &mut g, n, hidden, inter)?;
        add_bias(gpu, weights, ExpertGateBias(expert), &mut g)?;
        let up_w = weights.matrix(ExpertUp(expert));
        linear_bf16_input(gpu, &rows_in, &up_w, &mut u, n, hidden, inter)?;
        add_bias(gpu, weights, ExpertUpBias(expert), &mut u)?;
        let mut activated = half.first(n * inter)?;
        elementwise::gated_activation_to_bf16(
            gpu,
            &g.as_view(),
            &u.as_view(),
            &mut activated,
            kernel_activation(activation),
        )?;
        let mut y = b
            .expert_out
            .slice_mut(rows.start * hidden..rows.end * hidden);
        let down_w = weights.matrix(ExpertDown(expert));
        linear_bf16_input(gpu, &activated.as_view(), &down_w, &mut y, n, inter, hidden)?;
        add_bias(gpu, weights, ExpertDownBias(expert), &mut y)?;
    }
    Ok(())
}

/// The f16 weights of `role`, or an internal error (the experts of a layer share one dtype).
fn f16_matrix<'a>(weights: &'a DeviceLayer, role: WeightRole) -> Result<CudaView<'a, u16>> {
    match weights.matrix(role) {
        MatrixRows::F16(w) => Ok(w),
        _ => Err(RuntimeError::internal(format!(
            "{role:?} is not f16 while the layer's first expert is (a conversion bug)"
        ))),
    }
}

fn f16_experts(
    gpu: &Gpu,
    input: &ExpertInput,
    groups: &[ExpertRows],
    b: &mut MoeBuffers,
    half: &mut HalfScratch,
) -> Result<()> {
    use WeightRole::*;
    let ExpertInput {
        x,
        weights,
        hidden,
        inter,
        top_k,
        activation,
    } = *input;
    let tokens = x.len() / hidden;
    let assignments = tokens * top_k;
    // The f16 rows take the first half of the f32 gather buffer's bytes, the guard over the
    // tokens the start of the second half (the planner's `Gathered` needs nothing more).
    let split = (assignments * hidden).div_ceil(2);
    if b.gathered.len() < split {
        return Err(RuntimeError::internal(
            "the f32 gather buffer is smaller than its rows",
        ));
    }
    let (mut copy_part, mut guard_part) = b.gathered.split_at_mut(split);
    // SAFETY: f32 storage reinterpreted as u16 bits and u32 words; any bits are valid.
    let mut gathered = unsafe { copy_part.transmute_mut::<u16>(assignments * hidden) }
        .ok_or_else(|| RuntimeError::internal("the f32 gather buffer holds no f16 copy"))?;
    let mut token_guard = unsafe { guard_part.transmute_mut::<u32>(guard_len(tokens)) }
        .ok_or_else(|| RuntimeError::internal("the f32 gather buffer holds no f16 guard"))?;
    let positions = b.positions.slice(..assignments);
    moe::gather_by_expert_f16_guarded(
        gpu,
        x,
        &positions,
        top_k,
        hidden,
        &mut gathered,
        &mut token_guard,
    )?;
    let (gathered, token_guard) = (gathered.as_view(), token_guard.as_view());
    for (expert, rows) in groups {
        let (expert, n) = (*expert, rows.len());
        let rows_in = gathered.slice(rows.start * hidden..rows.end * hidden);
        let mut g = b.gate.slice_mut(..n * inter);
        let mut u = b.up.slice_mut(..n * inter);
        for (role, bias, y) in [
            (ExpertGate(expert), ExpertGateBias(expert), &mut g),
            (ExpertUp(expert), ExpertUpBias(expert), &mut u),
        ] {
            let w = f16_matrix(weights, role)?;
            gemm::linear_f16(gpu, &rows_in, &w, y, n, hidden, inter)?;
            let totals = half
                .totals
                .as_mut()
                .ok_or_else(|| RuntimeError::internal("f16 experts without the run's totals"))?;
            half_guard::f16_overflow_expert_rows(
                gpu,
                x,
                &w,
                y,
                (hidden, inter),
                &token_guard,
                &positions,
                top_k,
                rows.clone(),
                &mut totals.as_view_mut(),
            )?;
            add_bias(gpu, weights, bias, y)?;
        }
        {
            let (mut activated, mut guard) = half.f16_input(n, inter)?;
            elementwise::gated_activation_f16_guarded(
                gpu,
                &mut g,
                &u.as_view(),
                &mut activated,
                (n, inter),
                &mut guard,
                kernel_activation(activation),
            )?;
        }
        let mut y = b
            .expert_out
            .slice_mut(rows.start * hidden..rows.end * hidden);
        linear_converted(
            gpu,
            &g.as_view(),
            &weights.matrix(ExpertDown(expert)),
            weights.maybe_vector(ExpertDownBias(expert)),
            &mut y,
            (n, inter, hidden),
            half,
        )?;
    }
    Ok(())
}

fn f32_experts(
    gpu: &Gpu,
    input: &ExpertInput,
    groups: &[ExpertRows],
    b: &mut MoeBuffers,
    half: &mut HalfScratch,
) -> Result<()> {
    use WeightRole::*;
    let ExpertInput {
        x,
        weights,
        hidden,
        inter,
        top_k,
        activation,
    } = *input;
    let assignments = x.len() / hidden * top_k;
    let positions = b.positions.slice(..assignments);
    let mut gathered = b.gathered.slice_mut(..assignments * hidden);
    moe::gather_by_expert(gpu, x, &positions, top_k, hidden, &mut gathered)?;
    for (expert, rows) in groups {
        let (expert, n) = (*expert, rows.len());
        let rows_in = b.gathered.slice(rows.start * hidden..rows.end * hidden);
        let mut g = b.gate.slice_mut(..n * inter);
        let mut u = b.up.slice_mut(..n * inter);
        for (role, bias, y) in [
            (ExpertGate(expert), ExpertGateBias(expert), &mut g),
            (ExpertUp(expert), ExpertUpBias(expert), &mut u),
        ] {
            let w = weights.matrix(role);
            let bias = weights.maybe_vector(bias);
            linear(gpu, &rows_in, &w, bias, y, n, hidden, inter, half)?;
        }
        activate(gpu, &mut g, &u.as_view(), activation)?;
        let mut y = b
            .expert_out
            .slice_mut(rows.start * hidden..rows.end * hidden);
        linear(
            gpu,
            &g.as_view(),
            &weights.matrix(ExpertDown(expert)),
            weights.maybe_vector(ExpertDownBias(expert)),
            &mut y,
            n,
            inter,
            hidden,
            half,
        )?;
    }
    Ok(())
}
