//! GLM-4.5-Air and GLM-4.5 (355B) as the hub ships them, over sparse files (headers only):
//! their real shapes, the dense first layers, the shared expert, the multi-token-prediction
//! layer after the last one, bf16 or FP8 (F8_E4M3 with F32 `weight_scale_inv` per 128 x 128
//! block, the router and the LM head left in bf16, as GLM-4.5-Air-FP8).

use super::write_sparse_typed;
use std::path::{Path, PathBuf};

/// Which GLM-4.5 model.
#[derive(Clone, Copy)]
pub struct Glm {
    pub name: &'static str,
    pub hidden: usize,
    pub dense_inter: usize,
    pub expert_inter: usize,
    pub layers: usize,
    pub experts: usize,
    pub dense_layers: usize,
    pub qk_norm: bool,
    pub scaling: f64,
    pub fp8: bool,
}

/// GLM-4.5-Air (106B): 46 layers (the first dense), 128 experts of width 1408.
pub const AIR: Glm = Glm {
    name: "glm-4.5-air",
    hidden: 4096,
    dense_inter: 10944,
    expert_inter: 1408,
    layers: 46,
    experts: 128,
    dense_layers: 1,
    qk_norm: false,
    scaling: 1.0,
    fp8: false,
};

/// GLM-4.5 (355B): 92 layers (the first 3 dense), 160 experts of width 1536, q/k norm,
/// routed_scaling_factor 2.5.
pub const FULL: Glm = Glm {
    name: "glm-4.5",
    hidden: 5120,
    dense_inter: 12288,
    expert_inter: 1536,
    layers: 92,
    experts: 160,
    dense_layers: 3,
    qk_norm: true,
    scaling: 2.5,
    fp8: false,
};

const HEADS: usize = 96;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const VOCAB: usize = 151552;
const BLOCK: usize = 128;

/// Writes `glm` (with its MTP layer) under `into`; returns the folder and the data bytes.
pub fn sparse_glm(into: &Path, glm: Glm) -> (PathBuf, u64) {
    let dir = into.join(format!(
        "sparse-{}{}",
        glm.name,
        if glm.fp8 { "-fp8" } else { "" }
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = serde_json::json!({
        "model_type": "glm4_moe", "architectures": ["Glm4MoeForCausalLM"],
        "hidden_size": glm.hidden, "intermediate_size": glm.dense_inter,
        "moe_intermediate_size": glm.expert_inter, "num_hidden_layers": glm.layers,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "n_routed_experts": glm.experts, "num_experts_per_tok": 8, "n_shared_experts": 1,
        "first_k_dense_replace": glm.dense_layers, "n_group": 1, "topk_group": 1,
        "norm_topk_prob": true, "routed_scaling_factor": glm.scaling,
        "use_qk_norm": glm.qk_norm, "attention_bias": true, "partial_rotary_factor": 0.5,
        "rope_theta": 1000000, "rms_norm_eps": 1e-5, "vocab_size": VOCAB,
        "max_position_embeddings": 131072, "tie_word_embeddings": false,
        "num_nextn_predict_layers": 1, "hidden_act": "silu", "torch_dtype": "bfloat16"
    });
    if glm.fp8 {
        config["quantization_config"] = serde_json::json!({
            "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
            "weight_block_size": [BLOCK, BLOCK],
            "modules_to_not_convert": ["lm_head", "model.layers.*.mlp.gate"]
        });
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors = vec![
        bf16("model.embed_tokens.weight".into(), vec![VOCAB, glm.hidden]),
        bf16("model.norm.weight".into(), vec![glm.hidden]),
        bf16("lm_head.weight".into(), vec![VOCAB, glm.hidden]),
    ];
    // The MTP layer is a MoE layer with its own embedding, norms and projection.
    for layer in 0..=glm.layers {
        layer_tensors(&glm, layer, &mut tensors);
    }
    let mtp = format!("model.layers.{}", glm.layers);
    for (name, shape) in [
        ("enorm.weight", vec![glm.hidden]),
        ("hnorm.weight", vec![glm.hidden]),
        ("shared_head.norm.weight", vec![glm.hidden]),
        ("embed_tokens.weight", vec![VOCAB, glm.hidden]),
    ] {
        tensors.push(bf16(format!("{mtp}.{name}"), shape));
    }
    matrix(
        &glm,
        format!("{mtp}.eh_proj.weight"),
        glm.hidden,
        2 * glm.hidden,
        &mut tensors,
    );
    let bytes = write_sparse_typed(&dir, &tensors);
    (dir, bytes)
}

fn bf16(name: String, shape: Vec<usize>) -> (String, &'static str, Vec<usize>) {
    (name, "BF16", shape)
}

/// A linear weight `(rows, cols)`: bf16, or FP8 with its block scales.
fn matrix(
    glm: &Glm,
    name: String,
    rows: usize,
    cols: usize,
    tensors: &mut Vec<(String, &'static str, Vec<usize>)>,
) {
    if glm.fp8 {
        let scales = vec![rows.div_ceil(BLOCK), cols.div_ceil(BLOCK)];
        tensors.push((format!("{name}_scale_inv"), "F32", scales));
        tensors.push((name, "F8_E4M3", vec![rows, cols]));
    } else {
        tensors.push(bf16(name, vec![rows, cols]));
    }
}

fn layer_tensors(glm: &Glm, layer: usize, tensors: &mut Vec<(String, &'static str, Vec<usize>)>) {
    let p = format!("model.layers.{layer}");
    let (h, q, kv) = (glm.hidden, HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    for name in ["input_layernorm.weight", "post_attention_layernorm.weight"] {
        tensors.push(bf16(format!("{p}.{name}"), vec![h]));
    }
    for (name, rows, cols) in [
        ("q_proj", q, h),
        ("k_proj", kv, h),
        ("v_proj", kv, h),
        ("o_proj", h, q),
    ] {
        matrix(
            glm,
            format!("{p}.self_attn.{name}.weight"),
            rows,
            cols,
            tensors,
        );
    }
    for (name, width) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
        tensors.push(bf16(format!("{p}.self_attn.{name}.bias"), vec![width]));
    }
    if glm.qk_norm {
        for name in ["q_norm", "k_norm"] {
            tensors.push(bf16(format!("{p}.self_attn.{name}.weight"), vec![HEAD_DIM]));
        }
    }
    let mlp = |prefix: String, inter: usize, tensors: &mut Vec<_>| {
        for (name, rows, cols) in [
            ("gate_proj", inter, h),
            ("up_proj", inter, h),
            ("down_proj", h, inter),
        ] {
            matrix(glm, format!("{prefix}.{name}.weight"), rows, cols, tensors);
        }
    };
    if layer < glm.dense_layers {
        mlp(format!("{p}.mlp"), glm.dense_inter, tensors);
        return;
    }
    tensors.push(bf16(format!("{p}.mlp.gate.weight"), vec![glm.experts, h]));
    tensors.push((
        format!("{p}.mlp.gate.e_score_correction_bias"),
        "F32",
        vec![glm.experts],
    ));
    mlp(format!("{p}.mlp.shared_experts"), glm.expert_inter, tensors);
    for e in 0..glm.experts {
        mlp(format!("{p}.mlp.experts.{e}"), glm.expert_inter, tensors);
    }
}
