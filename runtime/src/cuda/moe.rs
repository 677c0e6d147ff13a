//! A mixture-of-experts block on the device: router GEMM, top-k kernel, expert counts (the
//! one small device-to-host copy per micro-batch: GEMM sizes must be known), deterministic
//! grouping by expert, one gated MLP per chosen expert on its rows, unpermute in ascending
//! expert order, optional sigmoid-gated shared expert.

use super::linear::{Bf16Scratch, linear};
use super::weights::DeviceLayer;
use crate::arch::{MoeSpec, WeightRole};
use crate::capture::Routing;
use crate::error::Result;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use layerstream_kernels::ops::{elementwise, moe};
use layerstream_kernels::{Gpu, KernelError};

/// The router's decisions for one micro-batch, on the device.
pub struct DeviceRouting {
    /// Routed experts.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// `(tokens, num_experts)`.
    pub logits: CudaSlice<f32>,
    /// `(tokens, top_k)`, best first.
    pub chosen: CudaSlice<u32>,
    /// `(tokens, top_k)`.
    pub weights: CudaSlice<f32>,
}

impl DeviceRouting {
    /// Copies the decisions to the host.
    pub fn to_host(&self, gpu: &Gpu) -> Result<Routing> {
        let copy = |e| KernelError::from(e);
        Ok(Routing {
            num_experts: self.num_experts,
            top_k: self.top_k,
            logits: gpu.stream.clone_dtoh(&self.logits).map_err(copy)?,
            experts: gpu.stream.clone_dtoh(&self.chosen).map_err(copy)?,
            weights: gpu.stream.clone_dtoh(&self.weights).map_err(copy)?,
        })
    }
}

fn zeros<
    T: layerstream_kernels::cudarc::driver::DeviceRepr
        + layerstream_kernels::cudarc::driver::ValidAsZeroBits,
>(
    gpu: &Gpu,
    n: usize,
) -> Result<CudaSlice<T>> {
    Ok(gpu
        .stream
        .alloc_zeros(n.max(1))
        .map_err(KernelError::from)?)
}

/// Runs the MoE block on `x (tokens, hidden)` into `out (tokens, hidden)`.
pub fn moe_block(
    gpu: &Gpu,
    x: &CudaView<f32>,
    weights: &DeviceLayer,
    spec: &MoeSpec,
    hidden: usize,
    out: &mut CudaViewMut<f32>,
    bf16: &mut Bf16Scratch,
) -> Result<DeviceRouting> {
    use WeightRole::*;
    let tokens = x.len() / hidden;
    let (experts, top_k, inter) = (spec.num_experts, spec.top_k, spec.expert_intermediate);
    let assignments = tokens * top_k;

    let mut logits = zeros::<f32>(gpu, tokens * experts)?;
    linear(
        gpu,
        x,
        weights.matrix(Router),
        None,
        &mut logits.as_view_mut(),
        tokens,
        hidden,
        experts,
        bf16,
    )?;
    let mut chosen = zeros::<u32>(gpu, assignments)?;
    let mut chosen_weights = zeros::<f32>(gpu, assignments)?;
    moe::router_top_k(
        gpu,
        &logits.as_view(),
        experts,
        top_k,
        spec.normalize_top_k,
        &mut chosen.as_view_mut(),
        &mut chosen_weights.as_view_mut(),
    )?;

    let mut counts = zeros::<u32>(gpu, experts)?;
    moe::count_per_expert(gpu, &chosen.as_view(), &mut counts.as_view_mut())?;
    let counts = gpu.stream.clone_dtoh(&counts).map_err(KernelError::from)?;
    let offsets: Vec<u32> = counts
        .iter()
        .scan(0u32, |next, &c| {
            let offset = *next;
            *next += c;
            Some(offset)
        })
        .collect();
    let offsets_device = gpu.stream.clone_htod(&offsets).map_err(KernelError::from)?;
    let mut positions = zeros::<u32>(gpu, assignments)?;
    moe::expert_positions(
        gpu,
        &chosen.as_view(),
        &offsets_device.as_view(),
        &mut positions.as_view_mut(),
    )?;
    let mut gathered = zeros::<f32>(gpu, assignments * hidden)?; // (assignments, hidden), by expert
    moe::gather_by_expert(
        gpu,
        x,
        &positions.as_view(),
        top_k,
        hidden,
        &mut gathered.as_view_mut(),
    )?;

    let busiest = counts.iter().copied().max().unwrap_or(0) as usize;
    let mut gate = zeros::<f32>(gpu, busiest * inter)?; // (expert rows, expert_intermediate)
    let mut up = zeros::<f32>(gpu, busiest * inter)?;
    let mut expert_out = zeros::<f32>(gpu, assignments * hidden)?; // (assignments, hidden), by expert
    for (expert, (&count, &offset)) in counts.iter().zip(&offsets).enumerate() {
        let (n, start) = (count as usize, offset as usize);
        if n == 0 {
            continue;
        }
        let rows_in = gathered.slice(start * hidden..(start + n) * hidden);
        let mut g = gate.slice_mut(..n * inter);
        let mut u = up.slice_mut(..n * inter);
        linear(
            gpu,
            &rows_in,
            weights.matrix(ExpertGate(expert)),
            None,
            &mut g,
            n,
            hidden,
            inter,
            bf16,
        )?;
        linear(
            gpu,
            &rows_in,
            weights.matrix(ExpertUp(expert)),
            None,
            &mut u,
            n,
            hidden,
            inter,
            bf16,
        )?;
        elementwise::silu_mul(gpu, &mut g, &u.as_view())?;
        let mut y = expert_out.slice_mut(start * hidden..(start + n) * hidden);
        linear(
            gpu,
            &g.as_view(),
            weights.matrix(ExpertDown(expert)),
            None,
            &mut y,
            n,
            inter,
            hidden,
            bf16,
        )?;
    }
    moe::unpermute(
        gpu,
        &expert_out.as_view(),
        &positions.as_view(),
        &chosen.as_view(),
        &chosen_weights.as_view(),
        top_k,
        hidden,
        out,
    )?;

    if let Some(shared) = spec.shared_expert {
        let s_inter = shared.intermediate;
        let mut sg = zeros::<f32>(gpu, tokens * s_inter)?;
        let mut su = zeros::<f32>(gpu, tokens * s_inter)?;
        let mut shared_out = zeros::<f32>(gpu, tokens * hidden)?;
        linear(
            gpu,
            x,
            weights.matrix(SharedGate),
            None,
            &mut sg.as_view_mut(),
            tokens,
            hidden,
            s_inter,
            bf16,
        )?;
        linear(
            gpu,
            x,
            weights.matrix(SharedUp),
            None,
            &mut su.as_view_mut(),
            tokens,
            hidden,
            s_inter,
            bf16,
        )?;
        elementwise::silu_mul(gpu, &mut sg.as_view_mut(), &su.as_view())?;
        linear(
            gpu,
            &sg.as_view(),
            weights.matrix(SharedDown),
            None,
            &mut shared_out.as_view_mut(),
            tokens,
            s_inter,
            hidden,
            bf16,
        )?;
        if shared.sigmoid_gate {
            let mut gate_logits = zeros::<f32>(gpu, tokens)?;
            linear(
                gpu,
                x,
                weights.matrix(SharedExpertGate),
                None,
                &mut gate_logits.as_view_mut(),
                tokens,
                hidden,
                1,
                bf16,
            )?;
            moe::sigmoid_gated_add(
                gpu,
                out,
                &shared_out.as_view(),
                &gate_logits.as_view(),
                hidden,
            )?;
        } else {
            elementwise::add(gpu, out, &shared_out.as_view())?;
        }
    }
    Ok(DeviceRouting {
        num_experts: experts,
        top_k,
        logits,
        chosen,
        weights: chosen_weights,
    })
}
