//! A MoE fixture re-saved with its experts fused over the expert axis, as transformers v5
//! holds them (`save_original_format=False`): per layer `mlp.experts.gate_up_proj
//! [E, 2I, H]` (each expert's gate rows, then its up rows), `mlp.experts.down_proj [E, H, I]`
//! and the router as `mlp.gate.weight` (Mixtral's `block_sparse_moe` renamed). Bytes are
//! moved, never converted, so the values are the fixture's exactly.

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A tensor as stored: dtype, shape, bytes.
type Stored = (Dtype, Vec<usize>, Vec<u8>);

/// Copies fixture `name`'s model folder into `into` with its experts stacked; returns it.
pub fn stacked_copy(name: &str, into: &Path) -> PathBuf {
    let source = crate::fixture_model(name);
    let dest = into.join(format!("{name}-stacked"));
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e != "safetensors") {
            std::fs::copy(&path, dest.join(path.file_name().unwrap())).unwrap();
        }
    }
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: BTreeMap<String, Stored> = BTreeMap::new();
    // layer -> expert -> its (gate or w1, up or w3, down or w2) as stored.
    let mut experts: BTreeMap<usize, BTreeMap<usize, [Option<Stored>; 3]>> = BTreeMap::new();
    for (tensor, view) in file.tensors() {
        let value = (view.dtype(), view.shape().to_vec(), view.data().to_vec());
        let Some((layer, expert, slot)) = expert_slot(&tensor) else {
            out.insert(
                tensor.replace(".block_sparse_moe.gate.", ".mlp.gate."),
                value,
            );
            continue;
        };
        experts.entry(layer).or_default().entry(expert).or_default()[slot] = Some(value);
    }
    for (layer, by_expert) in experts {
        let count = by_expert.len();
        let mut gate_up = Vec::new();
        let mut down = Vec::new();
        let (mut dtype, mut inter, mut hidden) = (Dtype::F32, 0, 0);
        for slots in by_expert.values() {
            let [Some(gate), Some(up), Some(d)] = slots else {
                panic!("layer {layer}: an expert lacks one of its three weights");
            };
            (dtype, inter, hidden) = (gate.0, gate.1[0], gate.1[1]);
            gate_up.extend_from_slice(&gate.2);
            gate_up.extend_from_slice(&up.2);
            down.extend_from_slice(&d.2);
        }
        let prefix = format!("model.layers.{layer}.mlp.experts");
        out.insert(
            format!("{prefix}.gate_up_proj"),
            (dtype, vec![count, 2 * inter, hidden], gate_up),
        );
        out.insert(
            format!("{prefix}.down_proj"),
            (dtype, vec![count, hidden, inter], down),
        );
    }
    let views: Vec<(String, TensorView)> = out
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(
        dest.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    dest
}

/// `(layer, expert, 0 gate / 1 up / 2 down)` of a per-expert tensor name.
fn expert_slot(name: &str) -> Option<(usize, usize, usize)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let rest = rest
        .strip_prefix("mlp.experts.")
        .or_else(|| rest.strip_prefix("block_sparse_moe.experts."))?;
    let (expert, proj) = rest.split_once('.')?;
    let slot = match proj {
        "gate_proj.weight" | "w1.weight" => 0,
        "up_proj.weight" | "w3.weight" => 1,
        "down_proj.weight" | "w2.weight" => 2,
        _ => return None,
    };
    Some((layer.parse().ok()?, expert.parse().ok()?, slot))
}
