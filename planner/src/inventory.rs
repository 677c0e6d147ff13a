//! The inventory: every tensor of a checkpoint, read from safetensors headers alone.
//!
//! Classes follow llama.cpp's table approach: a tensor name pattern says whether a tensor
//! belongs to a repeating layer (and which), to the input (embeddings) or to the output
//! (final norm, LM head). The planner sizes everything from these entries.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TensorDtype {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    Bf16,
    /// 64-bit signed integer (only in reference files, never weights).
    I64,
    /// Any other safetensors dtype; named so errors can say which.
    Other(&'static str),
}

impl TensorDtype {
    /// Bytes per element, where known.
    pub fn size_bytes(self) -> Option<usize> {
        match self {
            TensorDtype::F32 => Some(4),
            TensorDtype::F16 | TensorDtype::Bf16 => Some(2),
            TensorDtype::I64 => Some(8),
            TensorDtype::Other(_) => None,
        }
    }

    /// The name safetensors uses for it.
    pub fn name(self) -> &'static str {
        match self {
            TensorDtype::F32 => "F32",
            TensorDtype::F16 => "F16",
            TensorDtype::Bf16 => "BF16",
            TensorDtype::I64 => "I64",
            TensorDtype::Other(name) => name,
        }
    }
}

/// Where a tensor belongs in the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorClass {
    /// Token embeddings: needed before the first layer.
    Input,
    /// Part of repeating layer `n`.
    Layer(usize),
    /// Final norm and LM head: needed after the last layer.
    Output,
    /// Anything the name table does not place (reported, never loaded).
    Unclassified,
}

/// Which expert of a mixture-of-experts layer a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertSlot {
    /// Routed expert `e` (`...experts.{e}....`).
    Routed(usize),
    /// A shared expert every token goes through (`...shared_expert(s)....`).
    Shared,
}

/// One tensor of the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorEntry {
    /// Full safetensors name, e.g. `model.layers.3.mlp.up_proj.weight`.
    pub name: String,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Element type as stored.
    pub dtype: TensorDtype,
    /// Index into [`Inventory::files`].
    pub file_index: usize,
    /// Absolute offset of the first byte in the file.
    pub byte_offset: u64,
    /// Length of the tensor's data in bytes.
    pub byte_len: u64,
    /// Layer or input/output class.
    pub class: TensorClass,
    /// The expert it belongs to, in MoE layers.
    pub expert: Option<ExpertSlot>,
}

impl TensorEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every tensor of a model, with the files they live in.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    /// The safetensors files, in the order their tensors were listed.
    pub files: Vec<PathBuf>,
    /// Tensors sorted by class, then name.
    pub tensors: Vec<TensorEntry>,
}

/// Name fragments that mark a repeating layer, followed by the layer index and a dot.
const LAYER_PATTERNS: &[&str] = &[".layers.", "layers.", ".h.", ".blocks."];
/// Name fragments of the token embedding.
const INPUT_PATTERNS: &[&str] = &[
    "embed_tokens.",
    "wte.",
    "tok_embeddings.",
    "word_embeddings.",
];
/// Name fragments of the final norm and LM head.
const OUTPUT_PATTERNS: &[&str] = &[
    "lm_head.",
    "model.norm.",
    "ln_f.",
    "final_layernorm.",
    "norm_f.",
];

/// Places a tensor in an expert by name: `.experts.{e}.` is routed expert `e`,
/// `.shared_expert.` / `.shared_experts.` is the shared expert (its gate is not part of it).
pub fn classify_expert(name: &str) -> Option<ExpertSlot> {
    if name.contains(".shared_expert.") || name.contains(".shared_experts.") {
        return Some(ExpertSlot::Shared);
    }
    let start = name.find(".experts.")? + ".experts.".len();
    let digits: String = name[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    if digits.is_empty() || !name[start + digits.len()..].starts_with('.') {
        return None;
    }
    digits.parse().ok().map(ExpertSlot::Routed)
}

/// Places a tensor name in the forward pass by the pattern table above.
pub fn classify_tensor_name(name: &str) -> TensorClass {
    // Qwen3-Next's multi-token-prediction module (`mtp.layers.0.*`, `mtp.fc.weight`, ...):
    // transformers ignores it on load, so its layer is not one of the model's.
    if name.starts_with("mtp.") {
        return TensorClass::Unclassified;
    }
    for pattern in LAYER_PATTERNS {
        let start = if pattern.starts_with('.') {
            name.find(pattern).map(|i| i + pattern.len())
        } else if name.starts_with(pattern) {
            Some(pattern.len())
        } else {
            None
        };
        if let Some(start) = start {
            let digits: String = name[start..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if !digits.is_empty() && name[start + digits.len()..].starts_with('.') {
                return TensorClass::Layer(digits.parse().expect("ascii digits"));
            }
        }
    }
    if INPUT_PATTERNS.iter().any(|p| name.contains(p)) {
        return TensorClass::Input;
    }
    if OUTPUT_PATTERNS
        .iter()
        .any(|p| name.starts_with(p) || name.contains(&format!(".{p}")))
    {
        return TensorClass::Output;
    }
    TensorClass::Unclassified
}

impl Inventory {
    /// Builds an inventory from entries, sorting them by class then name.
    pub fn new(files: Vec<PathBuf>, mut tensors: Vec<TensorEntry>) -> Self {
        tensors.sort_by(|a, b| a.class.cmp(&b.class).then_with(|| a.name.cmp(&b.name)));
        Inventory { files, tensors }
    }

    /// Looks a tensor up by its full name.
    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Tensors of one class.
    pub fn of_class(&self, class: TensorClass) -> impl Iterator<Item = &TensorEntry> {
        self.tensors.iter().filter(move |t| t.class == class)
    }

    /// Bytes stored for one class (a layer, the input or the output).
    pub fn class_bytes(&self, class: TensorClass) -> u64 {
        self.of_class(class).map(|t| t.byte_len).sum()
    }

    /// Bytes of every tensor.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.byte_len).sum()
    }

    /// Number of stored parameters (elements of every tensor).
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(|t| t.numel() as u64).sum()
    }

    /// Bytes per repeating layer, keyed by layer index.
    pub fn layer_bytes(&self) -> BTreeMap<usize, u64> {
        let mut bytes = BTreeMap::new();
        for tensor in &self.tensors {
            if let TensorClass::Layer(layer) = tensor.class {
                *bytes.entry(layer).or_insert(0) += tensor.byte_len;
            }
        }
        bytes
    }

    /// Bytes of each routed expert of `layer`, keyed by expert index (empty for dense layers).
    pub fn routed_expert_bytes(&self, layer: usize) -> BTreeMap<usize, u64> {
        let mut bytes = BTreeMap::new();
        for tensor in self.of_class(TensorClass::Layer(layer)) {
            if let Some(ExpertSlot::Routed(e)) = tensor.expert {
                *bytes.entry(e).or_insert(0) += tensor.byte_len;
            }
        }
        bytes
    }

    /// Bytes of the shared expert(s) of `layer`.
    pub fn shared_expert_bytes(&self, layer: usize) -> u64 {
        self.of_class(TensorClass::Layer(layer))
            .filter(|t| t.expert == Some(ExpertSlot::Shared))
            .map(|t| t.byte_len)
            .sum()
    }

    /// Bytes of `layer` outside its routed experts (attention, norms, router, shared expert).
    pub fn layer_bytes_outside_routed_experts(&self, layer: usize) -> u64 {
        self.of_class(TensorClass::Layer(layer))
            .filter(|t| !matches!(t.expert, Some(ExpertSlot::Routed(_))))
            .map(|t| t.byte_len)
            .sum()
    }

    /// Parameters of routed experts in `layer`, keyed by expert index.
    pub fn routed_expert_parameters(&self, layer: usize) -> BTreeMap<usize, u64> {
        let mut count = BTreeMap::new();
        for tensor in self.of_class(TensorClass::Layer(layer)) {
            if let Some(ExpertSlot::Routed(e)) = tensor.expert {
                *count.entry(e).or_insert(0) += tensor.numel() as u64;
            }
        }
        count
    }

    /// The dtypes that occur, with their total bytes.
    pub fn dtype_bytes(&self) -> BTreeMap<&'static str, u64> {
        let mut bytes = BTreeMap::new();
        for tensor in &self.tensors {
            *bytes.entry(tensor.dtype.name()).or_insert(0) += tensor.byte_len;
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_hf_names_by_table() {
        assert_eq!(
            classify_tensor_name("model.layers.12.self_attn.q_proj.weight"),
            TensorClass::Layer(12)
        );
        assert_eq!(
            classify_tensor_name("model.embed_tokens.weight"),
            TensorClass::Input
        );
        assert_eq!(classify_tensor_name("lm_head.weight"), TensorClass::Output);
        assert_eq!(
            classify_tensor_name("model.norm.weight"),
            TensorClass::Output
        );
        assert_eq!(
            classify_tensor_name("transformer.h.3.attn.c_attn.weight"),
            TensorClass::Layer(3)
        );
        assert_eq!(
            classify_tensor_name("model.rotary_emb.inv_freq"),
            TensorClass::Unclassified
        );
        // "layers" must be followed by an index and a dot to count.
        assert_eq!(
            classify_tensor_name("model.layers_norm.weight"),
            TensorClass::Unclassified
        );
    }

    #[test]
    fn sums_bytes_per_layer() {
        let entry = |name: &str, bytes: u64| TensorEntry {
            name: name.into(),
            shape: vec![bytes as usize / 2],
            dtype: TensorDtype::Bf16,
            file_index: 0,
            byte_offset: 0,
            byte_len: bytes,
            class: classify_tensor_name(name),
            expert: classify_expert(name),
        };
        let inventory = Inventory::new(
            vec![PathBuf::from("model.safetensors")],
            vec![
                entry("model.layers.1.mlp.up_proj.weight", 100),
                entry("model.layers.0.mlp.up_proj.weight", 40),
                entry("model.layers.0.mlp.down_proj.weight", 60),
                entry("model.embed_tokens.weight", 8),
            ],
        );
        assert_eq!(
            inventory.layer_bytes().into_iter().collect::<Vec<_>>(),
            vec![(0, 100), (1, 100)]
        );
        assert_eq!(inventory.class_bytes(TensorClass::Input), 8);
        assert_eq!(inventory.total_bytes(), 208);
        assert_eq!(inventory.parameter_count(), 104);
        assert_eq!(inventory.tensors[0].class, TensorClass::Input);
    }

    #[test]
    fn knows_routed_and_shared_experts() {
        assert_eq!(
            classify_expert("model.layers.3.mlp.experts.17.down_proj.weight"),
            Some(ExpertSlot::Routed(17))
        );
        assert_eq!(
            classify_expert("model.layers.0.block_sparse_moe.experts.2.w1.weight"),
            Some(ExpertSlot::Routed(2))
        );
        assert_eq!(
            classify_expert("model.layers.0.mlp.shared_expert.up_proj.weight"),
            Some(ExpertSlot::Shared)
        );
        assert_eq!(
            classify_expert("model.layers.0.mlp.shared_expert_gate.weight"),
            None
        );
        assert_eq!(classify_expert("model.layers.0.mlp.gate.weight"), None);
        assert_eq!(
            classify_tensor_name("mtp.layers.0.mlp.experts.3.up_proj.weight"),
            TensorClass::Unclassified
        );
        assert_eq!(
            classify_expert("model.layers.0.mlp.experts.gate_up_proj"),
            None
        );
        let entry = |name: &str, bytes: u64| TensorEntry {
            name: name.into(),
            shape: vec![bytes as usize / 2],
            dtype: TensorDtype::Bf16,
            file_index: 0,
            byte_offset: 0,
            byte_len: bytes,
            class: classify_tensor_name(name),
            expert: classify_expert(name),
        };
        let inventory = Inventory::new(
            vec![PathBuf::from("model.safetensors")],
            vec![
                entry("model.layers.0.mlp.experts.0.up_proj.weight", 10),
                entry("model.layers.0.mlp.experts.0.down_proj.weight", 10),
                entry("model.layers.0.mlp.experts.1.up_proj.weight", 10),
                entry("model.layers.0.mlp.experts.1.down_proj.weight", 10),
                entry("model.layers.0.mlp.shared_expert.up_proj.weight", 6),
                entry("model.layers.0.mlp.gate.weight", 4),
            ],
        );
        assert_eq!(
            inventory.routed_expert_bytes(0),
            BTreeMap::from([(0, 20), (1, 20)])
        );
        assert_eq!(inventory.shared_expert_bytes(0), 6);
        assert_eq!(inventory.layer_bytes_outside_routed_experts(0), 10);
        assert_eq!(
            inventory.routed_expert_parameters(0),
            BTreeMap::from([(0, 10), (1, 10)])
        );
    }
}
