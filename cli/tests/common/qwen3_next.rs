//! Qwen3-Next-80B-A3B as the hub ships it, over a sparse file (headers only): 48 layers, layer
//! i full attention iff (i + 1) % 4 == 0 (no `layer_types`), the others Gated DeltaNet, 512
//! experts of 512 plus a gated shared expert on every layer, the `mtp.*` module after them.

use super::write_sparse_typed;
use std::path::{Path, PathBuf};

const HIDDEN: usize = 2048;
const VOCAB: usize = 151936;
const LAYERS: usize = 48;
const EXPERTS: usize = 512;
const EXPERT: usize = 512;

/// Writes the model under `into`; returns the folder and the data bytes.
pub fn sparse_qwen3_next_80b(into: &Path) -> (PathBuf, u64) {
    let dir = into.join("sparse-qwen3-next-80b-a3b");
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "model_type": "qwen3_next", "architectures": ["Qwen3NextForCausalLM"],
        "hidden_size": HIDDEN, "intermediate_size": 5120, "num_hidden_layers": LAYERS,
        "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
        "partial_rotary_factor": 0.25, "rope_theta": 10000000, "full_attention_interval": 4,
        "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
        "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "num_experts": EXPERTS,
        "num_experts_per_tok": 10, "moe_intermediate_size": EXPERT,
        "shared_expert_intermediate_size": EXPERT, "norm_topk_prob": true,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "rms_norm_eps": 1e-6,
        "vocab_size": VOCAB, "max_position_embeddings": 262144, "tie_word_embeddings": false,
        "hidden_act": "silu", "torch_dtype": "bfloat16"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let bf16 = |name: String, shape: Vec<usize>| (name, "BF16", shape);
    let mut tensors = vec![
        bf16("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]),
        bf16("model.norm.weight".into(), vec![HIDDEN]),
        bf16("lm_head.weight".into(), vec![VOCAB, HIDDEN]),
        bf16("mtp.fc.weight".into(), vec![HIDDEN, 2 * HIDDEN]),
        bf16("mtp.norm.weight".into(), vec![HIDDEN]),
    ];
    for e in 0..8 {
        let name = format!("mtp.layers.0.mlp.experts.{e}.up_proj.weight");
        tensors.push(bf16(name, vec![EXPERT, HIDDEN]));
    }
    for layer in 0..LAYERS {
        let p = format!("model.layers.{layer}");
        let mut add =
            |suffix: &str, shape: Vec<usize>| tensors.push(bf16(format!("{p}.{suffix}"), shape));
        add("input_layernorm.weight", vec![HIDDEN]);
        add("post_attention_layernorm.weight", vec![HIDDEN]);
        if (layer + 1) % 4 == 0 {
            add("self_attn.q_proj.weight", vec![2 * 16 * 256, HIDDEN]);
            add("self_attn.k_proj.weight", vec![2 * 256, HIDDEN]);
            add("self_attn.v_proj.weight", vec![2 * 256, HIDDEN]);
            add("self_attn.o_proj.weight", vec![HIDDEN, 16 * 256]);
            add("self_attn.q_norm.weight", vec![256]);
            add("self_attn.k_norm.weight", vec![256]);
        } else {
            add("linear_attn.in_proj_qkvz.weight", vec![12288, HIDDEN]);
            add("linear_attn.in_proj_ba.weight", vec![64, HIDDEN]);
            add("linear_attn.conv1d.weight", vec![8192, 1, 4]);
            add("linear_attn.dt_bias", vec![32]);
            add("linear_attn.A_log", vec![32]);
            add("linear_attn.norm.weight", vec![128]);
            add("linear_attn.out_proj.weight", vec![HIDDEN, 4096]);
        }
        add("mlp.gate.weight", vec![EXPERTS, HIDDEN]);
        add("mlp.shared_expert_gate.weight", vec![1, HIDDEN]);
        let experts = (0..EXPERTS).map(|e| format!("mlp.experts.{e}"));
        for module in std::iter::once("mlp.shared_expert".to_string()).chain(experts) {
            add(&format!("{module}.gate_proj.weight"), vec![EXPERT, HIDDEN]);
            add(&format!("{module}.up_proj.weight"), vec![EXPERT, HIDDEN]);
            add(&format!("{module}.down_proj.weight"), vec![HIDDEN, EXPERT]);
        }
    }
    let bytes = write_sparse_typed(&dir, &tensors);
    (dir, bytes)
}
