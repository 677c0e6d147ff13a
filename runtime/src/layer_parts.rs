//! Which of a layer's tensors each split part needs (the planner's `split.rs` decides the
//! parts and sizes them; this file knows the roles), and the check that a request's parts
//! cover a layer exactly once, in order.

use crate::arch::{LayerTensor, ModelSpec, WeightRole};
use crate::error::{Result, RuntimeError};
use layerstream_planner::split::{GroupTensor, LayerPart, LayerTensorGroups};

/// The group of the planner's [`LayerTensorGroups`] a role belongs to.
enum Group {
    Attention,
    Routing,
    Last,
    Expert(usize),
}

fn group_of(role: WeightRole) -> Group {
    use WeightRole::*;
    match role {
        AttnInputNorm | QProj | QBias | KProj | KBias | VProj | VBias | QNorm | KNorm | OProj
        | OBias | AttnSinks | AttnOutputNorm | DeltaInProjQkvz | DeltaInProjBa | DeltaConv
        | DeltaDtBias | DeltaALog | DeltaNorm => Group::Attention,
        MlpInputNorm | MlpOutputNorm | Router | RouterBias | RouterSelectionBias => Group::Routing,
        GateProj | GateBias | UpProj | UpBias | DownProj | DownBias | SharedGate | SharedUp
        | SharedDown | SharedExpertGate => Group::Last,
        ExpertGate(e) | ExpertUp(e) | ExpertDown(e) | ExpertGateBias(e) | ExpertUpBias(e)
        | ExpertDownBias(e) => Group::Expert(e),
    }
}

/// The routed expert a tensor of `role` belongs to, if any.
pub fn expert_of(role: WeightRole) -> Option<usize> {
    match group_of(role) {
        Group::Expert(e) => Some(e),
        _ => None,
    }
}

/// Routed experts of `layer` (0 for a dense layer).
pub fn num_experts(spec: &ModelSpec, layer: usize) -> usize {
    spec.moe(layer).map_or(0, |m| m.num_experts)
}

/// The names of `layer`'s tensors by split group, for the planner.
pub fn tensor_groups(spec: &ModelSpec, layer: usize) -> LayerTensorGroups {
    let mut groups = LayerTensorGroups {
        experts: vec![Vec::new(); num_experts(spec, layer)],
        ..LayerTensorGroups::default()
    };
    for tensor in spec.layer_tensors(layer) {
        let role = tensor.role;
        let weight = GroupTensor {
            source: tensor.source,
            layout: tensor.layout,
        };
        match group_of(role) {
            Group::Attention => groups.attention.push(weight),
            Group::Routing => groups.routing.push(weight),
            Group::Last => groups.last.push(weight),
            Group::Expert(e) => groups.experts[e].push(weight),
        }
    }
    groups
}

/// Whether `part` of a layer with `experts` routed experts needs a tensor of `role`.
pub fn part_needs(part: &LayerPart, experts: usize, role: WeightRole) -> bool {
    match group_of(role) {
        Group::Attention => part.runs_attention(),
        Group::Routing => part.runs_feed_forward(),
        Group::Last => part.finishes_feed_forward(experts),
        Group::Expert(e) => part.runs_feed_forward() && part.experts(experts).contains(&e),
    }
}

/// The tensors `part` of `layer` needs, in the spec's table order.
pub fn part_tensors(spec: &ModelSpec, layer: usize, part: &LayerPart) -> Vec<LayerTensor> {
    let experts = num_experts(spec, layer);
    spec.layer_tensors(layer)
        .into_iter()
        .filter(|t| part_needs(part, experts, t.role))
        .collect()
}

/// Checks that `parts` run `layer` exactly once: `[whole]`, or attention then feed-forward
/// parts whose experts follow each other from 0 to the last.
pub fn check_parts(spec: &ModelSpec, layer: usize, parts: &[LayerPart]) -> Result<()> {
    let experts = num_experts(spec, layer);
    let valid = match parts {
        [LayerPart::Whole] => true,
        [LayerPart::Attention, feed_forward @ ..] if !feed_forward.is_empty() => {
            let mut next = 0;
            feed_forward.iter().all(|p| match p {
                LayerPart::FeedForward {
                    first_expert,
                    end_expert,
                } if *first_expert == next
                    && (*end_expert > next || (experts == 0 && *end_expert == 0)) =>
                {
                    next = *end_expert;
                    true
                }
                _ => false,
            }) && next == experts
        }
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        let described: Vec<String> = parts.iter().map(LayerPart::describe).collect();
        Err(RuntimeError::InvalidRequest(format!(
            "layer {layer} cannot run as the parts [{}]: a layer runs whole, or as attention then feed-forward parts covering its {experts} experts in order",
            described.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerstream_planner::split::split_parts;

    /// The qwen2_moe fixture: layer 0 dense, layer 1 four experts and a shared expert.
    fn qwen2_moe() -> ModelSpec {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/qwen2_moe/model");
        crate::arch::model_spec(&crate::config::ModelConfig::load(&dir).unwrap()).unwrap()
    }

    #[test]
    fn only_ordered_complete_parts_are_accepted() {
        let spec = qwen2_moe();
        assert!(check_parts(&spec, 1, &[LayerPart::Whole]).is_ok());
        assert!(check_parts(&spec, 1, &split_parts(4, 3)).is_ok());
        assert!(check_parts(&spec, 0, &split_parts(0, 1)).is_ok(), "dense");
        assert!(
            check_parts(&spec, 0, &split_parts(4, 1)).is_err(),
            "dense has no experts"
        );
        let mut missing = split_parts(4, 1);
        missing.remove(2);
        assert!(check_parts(&spec, 1, &missing).is_err());
        let mut swapped = split_parts(4, 2);
        swapped.swap(1, 2);
        assert!(check_parts(&spec, 1, &swapped).is_err());
        let message = check_parts(&spec, 1, &[LayerPart::Attention])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("layer 1 cannot run as the parts [attention]"),
            "{message}"
        );
    }

    #[test]
    fn every_tensor_is_in_exactly_one_part_except_routing() {
        let spec = qwen2_moe();
        let parts = split_parts(4, 2);
        let all = spec.layer_tensors(1);
        for tensor in &all {
            let holders = parts
                .iter()
                .filter(|p| part_needs(p, 4, tensor.role))
                .count();
            let routing = matches!(group_of(tensor.role), Group::Routing);
            assert_eq!(holders, if routing { 2 } else { 1 }, "{}", tensor.name());
        }
        let groups = tensor_groups(&spec, 1);
        assert_eq!(groups.experts.len(), 4);
        assert!(
            groups
                .routing
                .iter()
                .any(|n| n.source.name().ends_with("mlp.gate.weight"))
        );
    }
}
