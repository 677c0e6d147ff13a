//! Which experts produce a MoE layer's massive activations. For the tokens holding the
//! largest ones (their MoE inputs kept while the layer ran, [`MassiveFinds::keep_inputs`]),
//! the block is recomputed on the host in f32 from the stored weights: the router's top-k,
//! each chosen expert's weighted output and the shared expert's. A massive value at
//! dimension d of `resid_post` is then split into each routed expert's contribution
//! `w_k * expert_k(x)[d]`, the shared expert's, and the residual the block added them to
//! (earlier layers and this layer's attention).
//!
//! The recomputation uses the CPU backend's code, so on the CPU it repeats the forward pass's
//! numbers; on a GPU the inputs are the device's and the experts the host's f32 choice (a
//! near-tie in the router could pick differently from the device; the sum of the
//! contributions is checked against `mlp_out` in the tests).

use super::massive::{MASSIVE_ATTRIBUTED, MassiveFinds, TokenInput};
use crate::arch::{Activation, FeedForward, LayerTensor, ModelSpec, MoeSpec, WeightRole};
use crate::cpu::layer::LayerWeights;
use crate::cpu::moe::{SharedScratch, add_shared_expert, expert_mlp};
use crate::cpu::router::route_tokens;
use crate::error::Result;
use crate::weights::WeightStore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One routed expert's share of a massive activation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertContribution {
    /// Expert index.
    pub expert: usize,
    /// Its router weight for the token.
    pub weight: f32,
    /// `weight * expert(x)[dim]`.
    pub contribution: f32,
}

/// Where a massive activation of a MoE layer comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertAttribution {
    /// The token's routed experts, largest |contribution| first.
    pub experts: Vec<ExpertContribution>,
    /// The shared expert's contribution (after its sigmoid gate), when the layer has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_expert: Option<f32>,
    /// The value minus the block's contributions: what the residual stream brought into the
    /// MoE block (earlier layers and this layer's attention).
    pub residual: f32,
}

impl ExpertAttribution {
    /// The routed expert contributing most, if its contribution has the value's sign and is
    /// larger than the residual's and the shared expert's.
    pub fn dominant_expert(&self, value: f32) -> Option<usize> {
        let top = self.experts.first()?;
        let others = self
            .residual
            .abs()
            .max(self.shared_expert.unwrap_or(0.0).abs());
        (top.contribution.signum() == value.signum() && top.contribution.abs() > others)
            .then_some(top.expert)
    }
}

/// Attributes the [`MASSIVE_ATTRIBUTED`] largest massive activations of `layer` (values
/// whose token input was kept), then drops the kept inputs. Dense layers and layers with a
/// norm after the MoE block (not a sum of expert outputs) are left as they are.
pub fn attribute_massive(
    store: &WeightStore,
    spec: &ModelSpec,
    layer: usize,
    finds: &mut MassiveFinds,
    threads: usize,
) -> Result<()> {
    let inputs = std::mem::take(&mut finds.inputs);
    let FeedForward::Moe(moe) = &spec.feed_forward[layer] else {
        return Ok(());
    };
    let names: BTreeMap<WeightRole, LayerTensor> = spec
        .layer_tensors(layer)
        .into_iter()
        .map(|t| (t.role, t))
        .collect();
    if inputs.is_empty() || names.contains_key(&WeightRole::MlpOutputNorm) {
        return Ok(());
    }
    let activation = spec.block.activation;
    let outputs = BlockOutputs::compute(
        store,
        spec.hidden_size,
        moe,
        activation,
        &names,
        &inputs,
        threads,
    )?;
    for value in finds.primary.values.iter_mut().take(MASSIVE_ATTRIBUTED) {
        let Some(token) = inputs
            .iter()
            .position(|i| (i.sequence, i.position) == (value.sequence, value.position))
        else {
            continue;
        };
        let mut experts: Vec<ExpertContribution> = (0..moe.top_k)
            .map(|slot| {
                let i = token * moe.top_k + slot;
                ExpertContribution {
                    expert: outputs.experts[i] as usize,
                    weight: outputs.weights[i],
                    contribution: outputs.routed[i * outputs.hidden + value.dim],
                }
            })
            .collect();
        experts.sort_by(|a, b| {
            b.contribution
                .abs()
                .total_cmp(&a.contribution.abs())
                .then(a.expert.cmp(&b.expert))
        });
        let shared_expert = outputs
            .shared
            .as_ref()
            .map(|s| s[token * outputs.hidden + value.dim]);
        let block: f32 =
            experts.iter().map(|e| e.contribution).sum::<f32>() + shared_expert.unwrap_or(0.0);
        value.attribution = Some(ExpertAttribution {
            experts,
            shared_expert,
            residual: value.value - block,
        });
    }
    Ok(())
}

/// The MoE block recomputed for the kept tokens.
struct BlockOutputs {
    hidden: usize,
    /// Chosen experts, `(tokens, top_k)`.
    experts: Vec<u32>,
    /// Their router weights, `(tokens, top_k)`.
    weights: Vec<f32>,
    /// Each chosen expert's weighted output, `(tokens, top_k, hidden)`.
    routed: Vec<f32>,
    /// The shared expert's gated output, `(tokens, hidden)`.
    shared: Option<Vec<f32>>,
}

impl BlockOutputs {
    /// The block's ops on the CPU (`cpu/moe.rs`, the ones the CPU backend runs), one routed
    /// expert's weights in memory at a time.
    fn compute(
        store: &WeightStore,
        hidden: usize,
        moe: &MoeSpec,
        activation: Activation,
        names: &BTreeMap<WeightRole, LayerTensor>,
        inputs: &[TokenInput],
        threads: usize,
    ) -> Result<Self> {
        use WeightRole::*;
        // The roles the layer has of `roles` (biases are optional).
        let read = |roles: &[WeightRole]| -> Result<LayerWeights> {
            let mut tensors = BTreeMap::new();
            for role in roles {
                if let Some(tensor) = names.get(role) {
                    tensors.insert(*role, crate::weights::layout::read_f32(store, tensor)?);
                }
            }
            Ok(LayerWeights::from_tensors(tensors))
        };
        let tokens = inputs.len();
        let x: Vec<f32> = inputs
            .iter()
            .flat_map(|i| i.values.iter().copied())
            .collect(); // (tokens, hidden)
        let mut logits = vec![0f32; tokens * moe.num_experts]; // (tokens, num_experts)
        let router = read(&[Router, RouterBias, RouterSelectionBias])?;
        let routing = route_tokens(&x, &router, &mut logits, moe, threads);
        let inter = moe.expert_intermediate;
        let mut routed = vec![0f32; tokens * moe.top_k * hidden]; // (tokens, top_k, hidden)
        // Expert by expert, its tokens together.
        let mut slots_of: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, &e) in routing.experts.iter().enumerate() {
            slots_of.entry(e).or_default().push(i);
        }
        for (expert, slots) in slots_of {
            let e = expert as usize;
            let weights = read(&[
                ExpertGate(e),
                ExpertUp(e),
                ExpertDown(e),
                ExpertGateBias(e),
                ExpertUpBias(e),
                ExpertDownBias(e),
            ])?;
            let n = slots.len();
            let gathered: Vec<f32> = slots
                .iter()
                .flat_map(|&i| x[i / moe.top_k * hidden..][..hidden].iter().copied())
                .collect(); // (n, hidden)
            let (mut gate, mut up) = (vec![0f32; n * inter], vec![0f32; n * inter]); // (n, inter)
            let mut out = vec![0f32; n * hidden]; // (n, hidden)
            expert_mlp(
                &weights, e, moe, activation, &gathered, &mut gate, &mut up, &mut out, threads,
            );
            for (&i, row) in slots.iter().zip(out.chunks_exact(hidden)) {
                let weight = routing.weights[i];
                for (r, &v) in routed[i * hidden..(i + 1) * hidden].iter_mut().zip(row) {
                    *r = weight * v;
                }
            }
        }
        let shared = match moe.shared_expert {
            Some(spec) => {
                let mut roles = vec![SharedGate, SharedUp, SharedDown];
                if spec.sigmoid_gate {
                    roles.push(SharedExpertGate);
                }
                let mut out = vec![0f32; tokens * hidden]; // (tokens, hidden)
                let weights = read(&roles)?;
                let mut buffers = SharedScratch::new(tokens, spec.intermediate, hidden);
                add_shared_expert(
                    &x,
                    &weights,
                    spec,
                    activation,
                    hidden,
                    &mut out,
                    &mut buffers,
                    threads,
                );
                Some(out)
            }
            None => None,
        };
        Ok(BlockOutputs {
            hidden,
            experts: routing.experts,
            weights: routing.weights,
            routed,
            shared,
        })
    }
}
