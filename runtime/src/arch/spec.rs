//! What a model is, independent of where it runs: block options read from config.json by
//! the family files, and the table of tensors each layer needs with the shapes config.json
//! implies. Backends interpret a [`ModelSpec`]; no backend code knows family names.

use super::rope::RopeSpec;
use layerstream_planner::format::TensorRef;

/// Architecture families this build implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Llama 2 and 3 (`llama`).
    Llama,
    /// Mistral (`mistral`).
    Mistral,
    /// Qwen2 and Qwen2.5 (`qwen2`).
    Qwen2,
    /// Qwen3 dense (`qwen3`).
    Qwen3,
    /// OLMo 2 (`olmo2`).
    Olmo2,
    /// OLMoE (`olmoe`).
    Olmoe,
    /// Qwen3-MoE (`qwen3_moe`).
    Qwen3Moe,
    /// Qwen2-MoE / Qwen1.5-MoE (`qwen2_moe`).
    Qwen2Moe,
    /// Mixtral (`mixtral`).
    Mixtral,
    /// GPT-OSS (`gpt_oss`).
    GptOss,
    /// GLM-4.5 and GLM-4.5-Air (`glm4_moe`).
    Glm4Moe,
    /// Qwen3-Next (`qwen3_next`): Gated DeltaNet and gated attention layers.
    Qwen3Next,
}

impl Family {
    /// The `model_type` string of config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Olmo2 => "olmo2",
            Family::Olmoe => "olmoe",
            Family::Qwen3Moe => "qwen3_moe",
            Family::Qwen2Moe => "qwen2_moe",
            Family::Mixtral => "mixtral",
            Family::GptOss => "gpt_oss",
            Family::Glm4Moe => "glm4_moe",
            Family::Qwen3Next => "qwen3_next",
        }
    }

    /// `Some(default partial_rotary_factor)` for a family whose attention rotates part of
    /// each head (`glm4_moe`: 0.5, `qwen3_next`: 0.25, their configs' defaults); `None` when
    /// heads rotate whole.
    pub fn partial_rotary_default(self) -> Option<f64> {
        match self {
            Family::Glm4Moe => Some(0.5),
            Family::Qwen3Next => Some(0.25),
            _ => None,
        }
    }
}

/// Where the RMSNorms of a decoder layer sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormLayout {
    /// `h + attn(norm(h))`, then `h + mlp(norm(h))` (llama, mistral, qwen).
    PreNorm,
    /// `h + norm(attn(h))`, then `h + norm(mlp(h))` (olmo2).
    PostSublayerNorm,
}

/// RMSNorm on queries and keys before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    /// None (llama, mistral, qwen2).
    None,
    /// One norm of width head_dim applied to every head (qwen3).
    PerHead,
    /// One norm over all heads together, width heads * head_dim (olmo2).
    AcrossHeads,
}

/// Which attention projections carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttentionBias {
    /// q_proj, k_proj and v_proj.
    pub qkv: bool,
    /// o_proj.
    pub output: bool,
}

/// Decoder block options.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    /// Placement of the norms.
    pub norm_layout: NormLayout,
    /// Query/key norms.
    pub qk_norm: QkNorm,
    /// Attention biases.
    pub attention_bias: AttentionBias,
    /// Bias on gate/up/down projections.
    pub mlp_bias: bool,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Clamp q, k and v to `[-c, c]` after their norms (OLMoE's `clip_qkv`).
    pub clip_qkv: Option<f32>,
    /// The gated MLPs' activation (dense MLP, routed and shared experts).
    pub activation: Activation,
    /// A learned sink logit per query head in every layer's attention (GPT-OSS).
    pub learned_sinks: bool,
}

/// The activation of a gated MLP, `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `silu(gate) * up` (SwiGLU).
    Silu,
    /// GPT-OSS's: `gate = min(gate, limit)`, `up = clamp(up, -limit, limit)`,
    /// `(up + 1) * gate * sigmoid(alpha * gate)`.
    ClampedSwiglu {
        /// `swiglu_limit` (7).
        limit: f32,
        /// 1.702, fixed in transformers' `GptOssExperts`.
        alpha: f32,
    },
}

/// The feed-forward block of one layer.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedForward {
    /// One gated MLP of width `intermediate`.
    Dense {
        /// MLP width.
        intermediate: usize,
    },
    /// A router choosing `top_k` of `num_experts` gated MLPs per token, optionally plus a
    /// shared expert every token goes through.
    Moe(MoeSpec),
}

/// The token mixer of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mixer {
    /// Grouped-query softmax attention. `gated` (Qwen3-Next): q_proj emits per head
    /// `[query (head_dim) | gate (head_dim)]`, and the heads' output is multiplied by
    /// `sigmoid(gate)` before o_proj.
    Attention {
        /// Whether the attention has an output gate.
        gated: bool,
    },
    /// A Gated DeltaNet (Qwen3-Next's `linear_attn`): in_proj_qkvz / in_proj_ba grouped per
    /// key head, a causal depthwise convolution with SiLU over queries | keys | values, the
    /// gated delta rule per value head (L2-normed q and k, `beta = sigmoid(b)`,
    /// `g = -exp(A_log) softplus(a + dt_bias)`), a gated RMSNorm with `silu(z)`, out_proj.
    DeltaNet(DeltaNetSpec),
}

/// The shapes of a Gated DeltaNet mixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaNetSpec {
    /// `linear_num_key_heads`.
    pub key_heads: usize,
    /// `linear_num_value_heads` (a multiple of the key heads; value head `h` reads key head
    /// `h / (value_heads / key_heads)`).
    pub value_heads: usize,
    /// `linear_key_head_dim`.
    pub key_dim: usize,
    /// `linear_value_head_dim`.
    pub value_dim: usize,
    /// `linear_conv_kernel_dim`.
    pub conv_kernel: usize,
}

impl DeltaNetSpec {
    /// The planner's shapes for a workload of `seq_len`-token sequences (its width helpers).
    pub fn shapes(&self, seq_len: usize) -> layerstream_planner::memory::DeltaNetShapes {
        layerstream_planner::memory::DeltaNetShapes {
            key_heads: self.key_heads,
            value_heads: self.value_heads,
            key_dim: self.key_dim,
            value_dim: self.value_dim,
            seq_len,
        }
    }
}

/// How router logits become expert weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RouterScoring {
    /// Softmax over all experts (in f32), then the top k probabilities.
    Softmax,
    /// The top k logits (a biased router's), then a softmax over those k (GPT-OSS).
    TopKSoftmax,
    /// DeepSeek-V3's (GLM-4.5's `Glm4MoeTopkRouter`), in f32: `s = sigmoid(logits)`; the
    /// choice by `c = s + e_score_correction_bias` (the bias only chooses): `c` viewed as
    /// `[groups, E / groups]`, a group's score the sum of its two largest `c`, the best
    /// `top_groups` groups kept (the others' experts cannot be chosen: transformers fills
    /// them with -inf), the top k of `c` among the kept; weights the **unbiased** `s` of the
    /// chosen, divided by their sum + 1e-20 when normalized, times `scaling`.
    Sigmoid {
        /// `n_group`.
        groups: usize,
        /// `topk_group`.
        top_groups: usize,
        /// `routed_scaling_factor`.
        scaling: f32,
    },
}

/// How expert tensors are named in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertNaming {
    /// `mlp.gate`, `mlp.experts.{e}.{gate,up,down}_proj` (OLMoE, Qwen-MoE).
    MlpExperts,
    /// `block_sparse_moe.gate`, `block_sparse_moe.experts.{e}.{w1,w3,w2}` (Mixtral).
    BlockSparseMoe,
    /// `mlp.gate`, experts fused over the expert axis as transformers v5 holds them in memory
    /// (and writes them with `save_original_format=False`): `mlp.experts.gate_up_proj
    /// [E, 2I, H]` (each expert's gate rows, then its up rows) and `mlp.experts.down_proj
    /// [E, H, I]`; for every MoE family but GPT-OSS, chosen when the checkpoint holds them.
    Stacked,
    /// GPT-OSS: `mlp.router.{weight,bias}`, fused `mlp.experts.gate_up_proj [E, H, 2I]`
    /// (gate and up interleaved by column) and `down_proj [E, I, H]`, in-major, with
    /// `_bias` tensors; or their MXFP4 `_blocks` / `_scales` (out-major, rows interleaved).
    GptOss {
        /// The experts are MXFP4 (`quantization_config.quant_method: mxfp4`).
        mxfp4: bool,
    },
}

/// A shared expert: a gated MLP applied to every token next to the routed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedExpertSpec {
    /// Its MLP width.
    pub intermediate: usize,
    /// Its module under `mlp.`: `shared_expert` (Qwen2-MoE) or `shared_experts` (GLM-4.5,
    /// `n_shared_experts` experts as one MLP of their summed width).
    pub module: &'static str,
    /// Whether its output is scaled by `sigmoid(x . w)` (Qwen2-MoE's `shared_expert_gate`).
    pub sigmoid_gate: bool,
}

/// A mixture-of-experts feed-forward block.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeSpec {
    /// Routed experts.
    pub num_experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Width of each routed expert's MLP.
    pub expert_intermediate: usize,
    /// Router function.
    pub scoring: RouterScoring,
    /// Whether the top-k weights are divided by their sum (`norm_topk_prob`; Mixtral always).
    pub normalize_top_k: bool,
    /// Optional shared expert.
    pub shared_expert: Option<SharedExpertSpec>,
    /// Tensor names.
    pub naming: ExpertNaming,
}

/// A role a tensor plays in a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightRole {
    /// RMSNorm before attention (pre-norm layouts).
    AttnInputNorm,
    /// Query projection `(heads * head_dim, hidden)`.
    QProj,
    /// Query bias.
    QBias,
    /// Key projection `(kv_heads * head_dim, hidden)`.
    KProj,
    /// Key bias.
    KBias,
    /// Value projection `(kv_heads * head_dim, hidden)`.
    VProj,
    /// Value bias.
    VBias,
    /// Query norm.
    QNorm,
    /// Key norm.
    KNorm,
    /// Output projection `(hidden, heads * head_dim)`.
    OProj,
    /// Output bias.
    OBias,
    /// Learned attention-sink logits, one per query head (GPT-OSS's `self_attn.sinks`).
    AttnSinks,
    /// RMSNorm on the attention output (post-sublayer layouts).
    AttnOutputNorm,
    /// RMSNorm before the MLP (pre-norm layouts).
    MlpInputNorm,
    /// Gate projection `(intermediate, hidden)`.
    GateProj,
    /// Gate bias.
    GateBias,
    /// Up projection `(intermediate, hidden)`.
    UpProj,
    /// Up bias.
    UpBias,
    /// Down projection `(hidden, intermediate)`.
    DownProj,
    /// Down bias.
    DownBias,
    /// RMSNorm on the MLP output (post-sublayer layouts).
    MlpOutputNorm,
    /// Router `(num_experts, hidden)`.
    Router,
    /// Router bias `(num_experts)` (GPT-OSS).
    RouterBias,
    /// The bias added to the router's sigmoid scores to choose experts, never to weigh
    /// them, `(num_experts)` (GLM-4.5's `mlp.gate.e_score_correction_bias`).
    RouterSelectionBias,
    /// Gate projection of routed expert `e`, `(expert_intermediate, hidden)`.
    ExpertGate(usize),
    /// Up projection of routed expert `e`.
    ExpertUp(usize),
    /// Down projection of routed expert `e`, `(hidden, expert_intermediate)`.
    ExpertDown(usize),
    /// Gate bias of routed expert `e`, `(expert_intermediate)` (GPT-OSS).
    ExpertGateBias(usize),
    /// Up bias of routed expert `e`.
    ExpertUpBias(usize),
    /// Down bias of routed expert `e`, `(hidden)`.
    ExpertDownBias(usize),
    /// Shared expert's gate projection.
    SharedGate,
    /// Shared expert's up projection.
    SharedUp,
    /// Shared expert's down projection.
    SharedDown,
    /// The sigmoid gate of the shared expert, `(1, hidden)`.
    SharedExpertGate,
    /// DeltaNet's `in_proj_qkvz`, `(2 key width + 2 value width, hidden)`, grouped per key
    /// head as `[q | k | v (its value heads) | z (its value heads)]`.
    DeltaInProjQkvz,
    /// DeltaNet's `in_proj_ba`, `(2 value heads, hidden)`, grouped per key head as
    /// `[b (its value heads) | a (its value heads)]`.
    DeltaInProjBa,
    /// DeltaNet's depthwise causal convolution, `(conv channels, 1, kernel)`.
    DeltaConv,
    /// DeltaNet's `dt_bias`, `(value heads)`.
    DeltaDtBias,
    /// DeltaNet's `A_log`, `(value heads)`.
    DeltaALog,
    /// DeltaNet's gated RMSNorm weight, `(value_dim)` (plain `w`, not zero-centred).
    DeltaNorm,
}

/// One tensor a layer needs: its role, full name and the shape config.json implies.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTensor {
    /// What it is for.
    pub role: WeightRole,
    /// Where its bytes are: a whole tensor (the full safetensors name), or a slice of one.
    pub source: TensorRef,
    /// Shape config.json implies, as stored (an expert's slice of a stacked tensor).
    pub shape: Vec<usize>,
    /// The config.json keys the shape comes from, for error messages.
    pub shape_reason: &'static str,
    /// How the stored values become the role's `(out, in)` matrix or vector.
    pub layout: Layout,
    /// A zero-centred norm weight (Qwen3-Next): the role's values are `1 + stored`, added
    /// in f32 after the conversion, as transformers' `(1.0 + self.weight.float())`.
    pub unit_offset: bool,
}

pub use layerstream_planner::format::Layout;

impl LayerTensor {
    /// The safetensors name of the tensor holding it.
    pub fn name(&self) -> &str {
        self.source.name()
    }
}

/// Everything the backends need to run a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Family.
    pub family: Family,
    /// Residual stream width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// MLP width of dense layers (config.json's `intermediate_size`).
    pub intermediate_size: usize,
    /// Per layer: dense MLP or mixture of experts.
    pub feed_forward: Vec<FeedForward>,
    /// Embedding rows.
    pub vocab_size: usize,
    /// Longest sequence supported.
    pub max_position_embeddings: usize,
    /// Block options.
    pub block: BlockSpec,
    /// Rotary embedding.
    pub rope: RopeSpec,
    /// Per layer: `Some(w)` when the layer attends to the last `w` positions only.
    pub sliding_windows: Vec<Option<usize>>,
    /// Whether the LM head is the embedding matrix.
    pub tied_embeddings: bool,
    /// Multi-token-prediction layers the checkpoint may carry after the last decoder layer
    /// (`num_nextn_predict_layers`, GLM-4.5's `model.layers.46.*`): known, never built by
    /// transformers, so never streamed, planned or counted as a layer here.
    pub unused_mtp_layers: usize,
    /// FP8 block-quantized layer weights (`quantization_config.quant_method: fp8`).
    pub fp8: Option<super::quantization::Fp8Weights>,
    /// Per layer: its token mixer.
    pub mixers: Vec<Mixer>,
    /// Zero-centred RMSNorms (Qwen3-Next): the block, q/k and final norms multiply by
    /// `1 + w` (in f32); DeltaNet's gated norm is plain.
    pub zero_centred_norms: bool,
}

/// Tensor names outside the layers.
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
/// Final RMSNorm.
pub const FINAL_NORM: &str = "model.norm.weight";
/// Untied LM head.
pub const LM_HEAD: &str = "lm_head.weight";

impl ModelSpec {
    /// Width of all query heads together.
    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// The DeltaNet of `layer`, if its mixer is one.
    pub fn delta_net(&self, layer: usize) -> Option<&DeltaNetSpec> {
        match &self.mixers[layer] {
            Mixer::DeltaNet(d) => Some(d),
            Mixer::Attention { .. } => None,
        }
    }

    /// Each layer's mixer by name (`attention`, `gated_attention`, `delta_net`) when they
    /// are not all plain attention; empty otherwise (what reports name).
    pub fn mixer_names(&self) -> Vec<String> {
        let plain = Mixer::Attention { gated: false };
        if self.mixers.iter().all(|m| *m == plain) {
            return Vec::new();
        }
        let name = |m: &Mixer| match m {
            Mixer::Attention { gated: false } => "attention",
            Mixer::Attention { gated: true } => "gated_attention",
            Mixer::DeltaNet(_) => "delta_net",
        };
        self.mixers.iter().map(|m| name(m).to_string()).collect()
    }

    /// The MoE block of `layer`, if it has one.
    pub fn moe(&self, layer: usize) -> Option<&MoeSpec> {
        match &self.feed_forward[layer] {
            FeedForward::Moe(moe) => Some(moe),
            FeedForward::Dense { .. } => None,
        }
    }

    /// Name of the tensor the logits are computed with.
    pub fn lm_head_name(&self) -> &'static str {
        if self.tied_embeddings {
            EMBED_TOKENS
        } else {
            LM_HEAD
        }
    }
}
