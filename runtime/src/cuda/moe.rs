//! A mixture-of-experts block on the device: router GEMM, top-k kernel, expert counts (the
//! one small device-to-host copy per micro-batch: GEMM sizes must be known), deterministic
//! grouping by expert, one gated MLP per chosen expert on its rows, unpermute in ascending
//! expert order, optional sigmoid-gated shared expert. Buffers are taken with the
//! micro-batch's other buffers, sized as the planner's `moe` region.

use super::expert_mlps::{ExpertInput, ExpertRows, run_experts as run_experts_mlps};
use super::linear::{HalfScratch, linear};
use super::weights::DeviceLayer;
use crate::arch::{Activation, MoeSpec, RouterScoring, SharedExpertSpec, WeightRole};
use crate::capture::Routing;
use crate::error::{Result, RuntimeError};
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits,
};
use layerstream_kernels::ops::elementwise::GatedActivation;
use layerstream_kernels::ops::{elementwise, moe};
use layerstream_planner::memory::{BufferName, ScratchManifest};
use std::ops::Range;

/// The MoE buffers of micro-batches of up to `rows` tokens.
pub struct MoeBuffers {
    logits: CudaSlice<f32>,                // (rows, experts)
    chosen: CudaSlice<u32>,                // (rows, top_k)
    weights: CudaSlice<f32>,               // (rows, top_k)
    counts: CudaSlice<u32>,                // (experts)
    offsets: CudaSlice<u32>,               // (experts)
    pub(super) positions: CudaSlice<u32>,  // (rows, top_k)
    pub(super) gathered: CudaSlice<f32>,   // (rows * top_k, hidden), grouped by expert
    pub(super) expert_out: CudaSlice<f32>, // (rows * top_k, hidden), grouped by expert
    pub(super) gate: CudaSlice<f32>, // (rows, expert_intermediate): an expert sees a token at most once
    pub(super) up: CudaSlice<f32>,   // (rows, expert_intermediate)
    shared: Option<SharedBuffers>,
}

struct SharedBuffers {
    gate: CudaSlice<f32>,        // (rows, shared_intermediate)
    up: CudaSlice<f32>,          // (rows, shared_intermediate)
    out: CudaSlice<f32>,         // (rows, hidden)
    gate_logits: CudaSlice<f32>, // (rows)
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, n: usize) -> Result<CudaSlice<T>> {
    Ok(gpu.stream.alloc_zeros(n.max(1))?)
}

impl MoeBuffers {
    /// Allocates the MoE buffers `manifest` lists.
    pub fn new(gpu: &Gpu, manifest: &ScratchManifest) -> Result<Self> {
        use BufferName::*;
        let count = |name| manifest.count(name);
        let shared = match manifest.lists(SharedGate) {
            true => Some(SharedBuffers {
                gate: zeros(gpu, count(SharedGate))?,
                up: zeros(gpu, count(SharedUp))?,
                out: zeros(gpu, count(SharedOut))?,
                gate_logits: zeros(gpu, count(SharedGateLogits))?,
            }),
            false => None,
        };
        Ok(MoeBuffers {
            logits: zeros(gpu, count(RouterLogits))?,
            chosen: zeros(gpu, count(ChosenExperts))?,
            weights: zeros(gpu, count(ChosenWeights))?,
            counts: zeros(gpu, count(ExpertCounts))?,
            offsets: zeros(gpu, count(ExpertOffsets))?,
            positions: zeros(gpu, count(Positions))?,
            gathered: zeros(gpu, count(Gathered))?,
            expert_out: zeros(gpu, count(ExpertOut))?,
            gate: zeros(gpu, count(ExpertGate))?,
            up: zeros(gpu, count(ExpertUp))?,
            shared,
        })
    }

    /// The decisions of the last [`route`] of `tokens` tokens by a router of `spec`.
    pub fn routing(&self, spec: &MoeSpec, tokens: usize) -> DeviceRouting<'_> {
        let (experts, top_k) = (spec.num_experts, spec.top_k);
        DeviceRouting {
            num_experts: experts,
            top_k,
            logits: self.logits.slice(..tokens * experts),
            chosen: self.chosen.slice(..tokens * top_k),
            weights: self.weights.slice(..tokens * top_k),
            scoring: spec.scoring,
        }
    }
}

/// The router's decisions for one micro-batch, on the device.
pub struct DeviceRouting<'a> {
    /// Routed experts.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// `(tokens, num_experts)`.
    pub logits: CudaView<'a, f32>,
    /// `(tokens, top_k)`, best first.
    pub chosen: CudaView<'a, u32>,
    /// `(tokens, top_k)`.
    pub weights: CudaView<'a, f32>,
    /// How the router scored the logits.
    pub scoring: RouterScoring,
}

impl DeviceRouting<'_> {
    /// Copies the decisions to the host.
    pub fn to_host(&self, gpu: &Gpu) -> Result<Routing> {
        Ok(Routing {
            num_experts: self.num_experts,
            top_k: self.top_k,
            logits: gpu.stream.clone_dtoh(&self.logits)?,
            experts: gpu.stream.clone_dtoh(&self.chosen)?,
            weights: gpu.stream.clone_dtoh(&self.weights)?,
            scoring: self.scoring,
        })
    }
}

/// The router's logits of `x (tokens, hidden)` and its top-k choice, into `buffers`.
#[allow(clippy::too_many_arguments)]
pub fn route(
    gpu: &Gpu,
    x: &CudaView<f32>,
    weights: &DeviceLayer,
    spec: &MoeSpec,
    hidden: usize,
    buffers: &mut MoeBuffers,
    half: &mut HalfScratch,
) -> Result<()> {
    let tokens = x.len() / hidden;
    let (experts, top_k) = (spec.num_experts, spec.top_k);
    let b = buffers;
    let mut logits = b.logits.slice_mut(..tokens * experts);
    linear(
        gpu,
        x,
        &weights.matrix(WeightRole::Router),
        weights.maybe_vector(WeightRole::RouterBias),
        &mut logits,
        tokens,
        hidden,
        experts,
        half,
    )?;
    let mut chosen = b.chosen.slice_mut(..tokens * top_k);
    let mut chosen_weights = b.weights.slice_mut(..tokens * top_k);
    let scoring = match spec.scoring {
        RouterScoring::Softmax => moe::RouterKernelScoring::Softmax,
        RouterScoring::TopKSoftmax => moe::RouterKernelScoring::TopKSoftmax,
        RouterScoring::Sigmoid {
            groups,
            top_groups,
            scaling,
        } => {
            let bias = weights.vector(WeightRole::RouterSelectionBias); // (experts)
            moe::router_sigmoid(
                gpu,
                &logits.as_view(),
                &bias.as_view(),
                top_k,
                groups,
                top_groups,
                spec.normalize_top_k,
                scaling,
                &mut chosen,
                &mut chosen_weights,
            )?;
            return Ok(());
        }
    };
    moe::router_top_k(
        gpu,
        &logits.as_view(),
        experts,
        top_k,
        spec.normalize_top_k,
        scoring,
        &mut chosen,
        &mut chosen_weights,
    )?;
    Ok(())
}

/// The kernels' form of the block's gated activation.
pub fn kernel_activation(activation: Activation) -> GatedActivation {
    match activation {
        Activation::Silu => GatedActivation::Silu,
        Activation::ClampedSwiglu { limit, alpha } => {
            GatedActivation::ClampedSwiglu { limit, alpha }
        }
    }
}

/// Routed experts `run_experts` of the last [`route`] on `x (tokens, hidden)`, their
/// weighted outputs unpermuted into `out (tokens, hidden)` in ascending expert order (the
/// first part of a layer overwrites `out`, later ones add to it).
#[allow(clippy::too_many_arguments)]
pub fn experts(
    gpu: &Gpu,
    x: &CudaView<f32>,
    weights: &DeviceLayer,
    spec: &MoeSpec,
    hidden: usize,
    run_experts: Range<usize>,
    activation: Activation,
    out: &mut CudaViewMut<f32>,
    buffers: &mut MoeBuffers,
    half: &mut HalfScratch,
) -> Result<()> {
    let tokens = x.len() / hidden;
    let top_k = spec.top_k;
    let assignments = tokens * top_k;
    let b = buffers;
    let (counts, offsets) = group_by_expert(gpu, b, assignments)?;
    let groups: Vec<ExpertRows> = counts
        .iter()
        .zip(&offsets)
        .enumerate()
        .take(run_experts.end)
        .skip(run_experts.start)
        .filter(|(_, (count, _))| **count > 0)
        .map(|(expert, (&count, &offset))| {
            (expert, offset as usize..offset as usize + count as usize)
        })
        .collect();
    let input = ExpertInput {
        x,
        weights,
        hidden,
        inter: spec.expert_intermediate,
        top_k,
        activation,
    };
    run_experts_mlps(gpu, &input, &groups, b, half)?;
    moe::unpermute(
        gpu,
        &b.expert_out.slice(..assignments * hidden),
        &b.positions.slice(..assignments),
        &b.chosen.slice(..assignments),
        &b.weights.slice(..assignments),
        top_k,
        hidden,
        run_experts.clone(),
        run_experts.start > 0,
        out,
    )?;
    Ok(())
}

/// Groups the `assignments` of the last [`route`] by expert: counts, the one small copy to
/// the host, offsets, each assignment's grouped row (`positions`). Returns the counts and
/// offsets.
fn group_by_expert(
    gpu: &Gpu,
    b: &mut MoeBuffers,
    assignments: usize,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let chosen = b.chosen.slice(..assignments);
    gpu.stream.memset_zeros(&mut b.counts)?;
    moe::count_per_expert(gpu, &chosen, &mut b.counts.as_view_mut())?;
    let counts = gpu.stream.clone_dtoh(&b.counts)?;
    let offsets: Vec<u32> = counts
        .iter()
        .scan(0u32, |next, &c| {
            let offset = *next;
            *next += c;
            Some(offset)
        })
        .collect();
    gpu.stream.memcpy_htod(&offsets, &mut b.offsets)?;
    let mut positions = b.positions.slice_mut(..assignments);
    moe::expert_positions(gpu, &chosen, &b.offsets.as_view(), &mut positions)?;
    Ok((counts, offsets))
}

/// `gate = act(gate) * up` on the device.
pub fn activate(
    gpu: &Gpu,
    gate: &mut CudaViewMut<f32>,
    up: &CudaView<f32>,
    activation: Activation,
) -> Result<()> {
    elementwise::gated_activation(gpu, gate, up, kernel_activation(activation))?;
    Ok(())
}

/// `out += [sigmoid(x . w_gate)] * shared_mlp(x)` for `x (tokens, hidden)`.
#[allow(clippy::too_many_arguments)]
pub fn add_shared_expert(
    gpu: &Gpu,
    x: &CudaView<f32>,
    weights: &DeviceLayer,
    shared: SharedExpertSpec,
    activation: Activation,
    hidden: usize,
    out: &mut CudaViewMut<f32>,
    buffers: &mut MoeBuffers,
    half: &mut HalfScratch,
) -> Result<()> {
    use WeightRole::*;
    let tokens = x.len() / hidden;
    let s = buffers
        .shared
        .as_mut()
        .ok_or_else(|| RuntimeError::internal("a shared expert without its buffers"))?;
    {
        let s_inter = shared.intermediate;
        let mut sg = s.gate.slice_mut(..tokens * s_inter);
        let mut su = s.up.slice_mut(..tokens * s_inter);
        let mut shared_out = s.out.slice_mut(..tokens * hidden);
        linear(
            gpu,
            x,
            &weights.matrix(SharedGate),
            None,
            &mut sg,
            tokens,
            hidden,
            s_inter,
            half,
        )?;
        linear(
            gpu,
            x,
            &weights.matrix(SharedUp),
            None,
            &mut su,
            tokens,
            hidden,
            s_inter,
            half,
        )?;
        activate(gpu, &mut sg, &su.as_view(), activation)?;
        linear(
            gpu,
            &sg.as_view(),
            &weights.matrix(SharedDown),
            None,
            &mut shared_out,
            tokens,
            s_inter,
            hidden,
            half,
        )?;
        if shared.sigmoid_gate {
            let mut gate_logits = s.gate_logits.slice_mut(..tokens);
            linear(
                gpu,
                x,
                &weights.matrix(SharedExpertGate),
                None,
                &mut gate_logits,
                tokens,
                hidden,
                1,
                half,
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
    Ok(())
}
