//! The table of tensors each decoder layer needs, with the shapes config.json implies
//! (transformers' `model.layers.{l}.*` naming, shared by every supported family).

use super::quantization::{Fp8Weights, scale_name};
use super::spec::{
    DeltaNetSpec, ExpertNaming, FeedForward, LayerTensor, Layout, Mixer, ModelSpec, MoeSpec,
    NormLayout, QkNorm, RouterScoring, WeightRole,
};
use layerstream_planner::format::{TensorRef, WeightFormat};

/// The tensors of one layer, as they are added.
struct Table {
    prefix: String,
    tensors: Vec<LayerTensor>,
}

impl Table {
    fn add(&mut self, role: WeightRole, suffix: &str, shape: Vec<usize>, reason: &'static str) {
        self.tensors.push(LayerTensor {
            role,
            source: TensorRef::Whole(format!("{}.{suffix}", self.prefix)),
            shape,
            shape_reason: reason,
            layout: Layout::AsStored,
            unit_offset: false,
        });
    }

    /// Expert `e`'s whole slice of a tensor stacked over `count` experts (`shape`: the
    /// slice's), read with `layout`.
    #[allow(clippy::too_many_arguments)]
    fn add_slice(
        &mut self,
        role: WeightRole,
        suffix: &str,
        (e, count): (usize, usize),
        shape: Vec<usize>,
        reason: &'static str,
        layout: Layout,
    ) {
        let rows = shape[0];
        self.tensors.push(LayerTensor {
            role,
            source: TensorRef::Stacked {
                name: format!("{}.{suffix}", self.prefix),
                index: e,
                count,
                rows: 0..rows,
                total_rows: rows,
            },
            shape,
            shape_reason: reason,
            layout,
            unit_offset: false,
        });
    }
}

impl Table {
    /// Expert `e` of `count` from [`ExpertNaming::Stacked`] tensors: gate rows `0..I` and up
    /// rows `I..2I` of its `gate_up_proj [2I, H]` slice, its whole `down_proj [H, I]` slice.
    fn add_stacked_experts(&mut self, e: usize, count: usize, (inter, hidden): (usize, usize)) {
        use WeightRole::*;
        let reason = "number of experts, expert MLP width, hidden_size";
        let slice = |suffix: &str, rows: std::ops::Range<usize>, total_rows| TensorRef::Stacked {
            name: format!("{}.mlp.experts.{suffix}", self.prefix),
            index: e,
            count,
            rows,
            total_rows,
        };
        for (role, source, shape) in [
            (
                ExpertGate(e),
                slice("gate_up_proj", 0..inter, 2 * inter),
                vec![inter, hidden],
            ),
            (
                ExpertUp(e),
                slice("gate_up_proj", inter..2 * inter, 2 * inter),
                vec![inter, hidden],
            ),
            (
                ExpertDown(e),
                slice("down_proj", 0..hidden, hidden),
                vec![hidden, inter],
            ),
        ] {
            self.tensors.push(LayerTensor {
                role,
                source,
                shape,
                shape_reason: reason,
                layout: Layout::AsStored,
                unit_offset: false,
            });
        }
    }

    /// Expert `e`'s MXFP4 matrix `(rows, cols)` from `{base}_blocks` and `{base}_scales`
    /// stacked over `count` experts, read with `layout`.
    fn add_mxfp4(
        &mut self,
        role: WeightRole,
        base: &str,
        (e, count): (usize, usize),
        (rows, cols): (usize, usize),
        layout: Layout,
    ) {
        let part = |suffix: &str| TensorRef::Stacked {
            name: format!("{}.{base}_{suffix}", self.prefix),
            index: e,
            count,
            rows: 0..rows,
            total_rows: rows,
        };
        self.tensors.push(LayerTensor {
            role,
            source: TensorRef::Quantized {
                format: WeightFormat::Mxfp4,
                values: Box::new(part("blocks")),
                scales: Box::new(part("scales")),
            },
            shape: vec![rows, cols],
            shape_reason: "num_local_experts, hidden_size, intermediate_size",
            layout,
            unit_offset: false,
        });
    }

    /// Reads the matrices stored as FP8 (`fp8.stored`) as FP8 blocks with their
    /// `weight_scale_inv`.
    fn read_fp8_where_stored(&mut self, fp8: &Fp8Weights) {
        for tensor in &mut self.tensors {
            if let TensorRef::Whole(name) = &tensor.source
                && fp8.stored.contains(name)
            {
                let scales = TensorRef::Whole(scale_name(name));
                tensor.source = TensorRef::Quantized {
                    format: WeightFormat::Fp8 {
                        block_rows: fp8.block_rows,
                        block_cols: fp8.block_cols,
                    },
                    values: Box::new(tensor.source.clone()),
                    scales: Box::new(scales),
                };
            }
        }
    }
}

const HIDDEN: &str = "hidden_size";
const HEADS: &str = "num_attention_heads x head_dim, hidden_size";
const GATED_HEADS: &str =
    "2 x num_attention_heads x head_dim (each head's query, then its output gate), hidden_size";
const KV_HEADS: &str = "num_key_value_heads x head_dim, hidden_size";

impl ModelSpec {
    /// The tensors of decoder layer `layer`, with the shapes config.json implies.
    pub fn layer_tensors(&self, layer: usize) -> Vec<LayerTensor> {
        let mut table = Table {
            prefix: format!("model.layers.{layer}"),
            tensors: Vec::new(),
        };
        self.norm_tensors(&mut table);
        match self.mixers[layer] {
            Mixer::Attention { gated } => self.attention_tensors(&mut table, gated),
            Mixer::DeltaNet(delta) => self.delta_net_tensors(&mut table, &delta),
        }
        match &self.feed_forward[layer] {
            FeedForward::Dense { intermediate } => self.mlp_tensors(&mut table, *intermediate),
            FeedForward::Moe(moe) => self.moe_tensors(&mut table, moe),
        }
        if let Some(fp8) = &self.fp8 {
            table.read_fp8_where_stored(fp8);
        }
        if self.zero_centred_norms {
            use WeightRole::*;
            for tensor in &mut table.tensors {
                tensor.unit_offset = matches!(
                    tensor.role,
                    AttnInputNorm | MlpInputNorm | QNorm | KNorm | AttnOutputNorm | MlpOutputNorm
                );
            }
        }
        table.tensors
    }

    /// A Gated DeltaNet's tensors (`linear_attn.*`); out_proj is the layer's `OProj`.
    fn delta_net_tensors(&self, t: &mut Table, delta: &DeltaNetSpec) {
        use WeightRole::*;
        let (hidden, shapes) = (self.hidden_size, delta.shapes(1));
        let heads = "linear_num_value_heads";
        let (qkvz, ba) = (shapes.qkvz_width(), 2 * delta.value_heads);
        let reason = "linear_num_key_heads x linear_key_head_dim and linear_num_value_heads x linear_value_head_dim, hidden_size";
        let prefix = "linear_attn";
        let name = |suffix: &str| format!("{prefix}.{suffix}");
        t.add(
            DeltaInProjQkvz,
            &name("in_proj_qkvz.weight"),
            vec![qkvz, hidden],
            reason,
        );
        t.add(
            DeltaInProjBa,
            &name("in_proj_ba.weight"),
            vec![ba, hidden],
            "2 x linear_num_value_heads, hidden_size",
        );
        t.add(
            DeltaConv,
            &name("conv1d.weight"),
            vec![shapes.conv_channels(), 1, delta.conv_kernel],
            "2 x linear_num_key_heads x linear_key_head_dim + linear_num_value_heads x linear_value_head_dim, 1, linear_conv_kernel_dim",
        );
        t.add(
            DeltaDtBias,
            &name("dt_bias"),
            vec![delta.value_heads],
            heads,
        );
        t.add(DeltaALog, &name("A_log"), vec![delta.value_heads], heads);
        t.add(
            DeltaNorm,
            &name("norm.weight"),
            vec![delta.value_dim],
            "linear_value_head_dim",
        );
        t.add(
            OProj,
            &name("out_proj.weight"),
            vec![hidden, shapes.value_width()],
            "hidden_size, linear_num_value_heads x linear_value_head_dim",
        );
    }

    fn norm_tensors(&self, t: &mut Table) {
        use WeightRole::*;
        let hidden = vec![self.hidden_size];
        match self.block.norm_layout {
            NormLayout::PreNorm => {
                t.add(
                    AttnInputNorm,
                    "input_layernorm.weight",
                    hidden.clone(),
                    HIDDEN,
                );
                t.add(
                    MlpInputNorm,
                    "post_attention_layernorm.weight",
                    hidden,
                    HIDDEN,
                );
            }
            NormLayout::PostSublayerNorm => {
                t.add(
                    AttnOutputNorm,
                    "post_attention_layernorm.weight",
                    hidden.clone(),
                    HIDDEN,
                );
                t.add(
                    MlpOutputNorm,
                    "post_feedforward_layernorm.weight",
                    hidden,
                    HIDDEN,
                );
            }
        }
    }

    fn attention_tensors(&self, t: &mut Table, gated: bool) {
        use WeightRole::*;
        let (hidden, q, kv) = (self.hidden_size, self.q_width(), self.kv_width());
        match gated {
            true => t.add(
                QProj,
                "self_attn.q_proj.weight",
                vec![2 * q, hidden],
                GATED_HEADS,
            ),
            false => t.add(QProj, "self_attn.q_proj.weight", vec![q, hidden], HEADS),
        }
        t.add(KProj, "self_attn.k_proj.weight", vec![kv, hidden], KV_HEADS);
        t.add(VProj, "self_attn.v_proj.weight", vec![kv, hidden], KV_HEADS);
        t.add(OProj, "self_attn.o_proj.weight", vec![hidden, q], HEADS);
        if self.block.attention_bias.qkv {
            let q_bias = if gated { 2 * q } else { q };
            t.add(QBias, "self_attn.q_proj.bias", vec![q_bias], HEADS);
            t.add(KBias, "self_attn.k_proj.bias", vec![kv], KV_HEADS);
            t.add(VBias, "self_attn.v_proj.bias", vec![kv], KV_HEADS);
        }
        if self.block.attention_bias.output {
            t.add(OBias, "self_attn.o_proj.bias", vec![hidden], HIDDEN);
        }
        if self.block.learned_sinks {
            let heads = self.num_heads;
            t.add(
                AttnSinks,
                "self_attn.sinks",
                vec![heads],
                "num_attention_heads",
            );
        }
        let (q_norm, k_norm, q_reason, k_reason) = match self.block.qk_norm {
            QkNorm::None => return,
            QkNorm::PerHead => (self.head_dim, self.head_dim, "head_dim", "head_dim"),
            QkNorm::AcrossHeads => (
                q,
                kv,
                "num_attention_heads x head_dim",
                "num_key_value_heads x head_dim",
            ),
        };
        t.add(QNorm, "self_attn.q_norm.weight", vec![q_norm], q_reason);
        t.add(KNorm, "self_attn.k_norm.weight", vec![k_norm], k_reason);
    }

    fn mlp_tensors(&self, t: &mut Table, inter: usize) {
        use WeightRole::*;
        let hidden = self.hidden_size;
        let mlp_reason = "intermediate_size, hidden_size";
        t.add(
            GateProj,
            "mlp.gate_proj.weight",
            vec![inter, hidden],
            mlp_reason,
        );
        t.add(
            UpProj,
            "mlp.up_proj.weight",
            vec![inter, hidden],
            mlp_reason,
        );
        let down_reason = "hidden_size, intermediate_size";
        t.add(
            DownProj,
            "mlp.down_proj.weight",
            vec![hidden, inter],
            down_reason,
        );
        if self.block.mlp_bias {
            t.add(
                GateBias,
                "mlp.gate_proj.bias",
                vec![inter],
                "intermediate_size",
            );
            t.add(UpBias, "mlp.up_proj.bias", vec![inter], "intermediate_size");
            t.add(DownBias, "mlp.down_proj.bias", vec![hidden], HIDDEN);
        }
    }

    fn moe_tensors(&self, t: &mut Table, moe: &MoeSpec) {
        use WeightRole::*;
        let hidden = self.hidden_size;
        let (block, [gate, up, down]) = match moe.naming {
            ExpertNaming::MlpExperts => ("mlp", ["gate_proj", "up_proj", "down_proj"]),
            ExpertNaming::BlockSparseMoe => ("block_sparse_moe", ["w1", "w3", "w2"]),
            ExpertNaming::GptOss { mxfp4 } => return self.gpt_oss_experts(t, moe, mxfp4),
            ExpertNaming::Stacked => ("mlp", ["gate_up_proj", "gate_up_proj", "down_proj"]),
        };
        let router_reason = "number of experts, hidden_size";
        let router = format!("{block}.gate.weight");
        t.add(
            Router,
            &router,
            vec![moe.num_experts, hidden],
            router_reason,
        );
        if let RouterScoring::Sigmoid { .. } = moe.scoring {
            let bias = format!("{block}.gate.e_score_correction_bias");
            t.add(
                RouterSelectionBias,
                &bias,
                vec![moe.num_experts],
                "number of experts",
            );
        }
        let (e_inter, reason) = (moe.expert_intermediate, "expert MLP width, hidden_size");
        for e in 0..moe.num_experts {
            if moe.naming == ExpertNaming::Stacked {
                t.add_stacked_experts(e, moe.num_experts, (e_inter, hidden));
                continue;
            }
            let name = |proj: &str| format!("{block}.experts.{e}.{proj}.weight");
            t.add(ExpertGate(e), &name(gate), vec![e_inter, hidden], reason);
            t.add(ExpertUp(e), &name(up), vec![e_inter, hidden], reason);
            t.add(ExpertDown(e), &name(down), vec![hidden, e_inter], reason);
        }
        let Some(shared) = moe.shared_expert else {
            return;
        };
        let (s_inter, reason) = (shared.intermediate, "shared expert MLP width, hidden_size");
        let module = shared.module;
        let name = |proj: &str| format!("{block}.{module}.{proj}.weight");
        t.add(
            SharedGate,
            &name("gate_proj"),
            vec![s_inter, hidden],
            reason,
        );
        t.add(SharedUp, &name("up_proj"), vec![s_inter, hidden], reason);
        t.add(
            SharedDown,
            &name("down_proj"),
            vec![hidden, s_inter],
            reason,
        );
        if shared.sigmoid_gate {
            let gate_name = format!("{block}.shared_expert_gate.weight");
            t.add(SharedExpertGate, &gate_name, vec![1, hidden], HIDDEN);
        }
    }

    /// GPT-OSS's router (weight and bias) and fused experts, per expert: gate and up from
    /// the interleaved `gate_up_proj` (even and odd columns of the in-major `[H, 2I]` slice,
    /// or even and odd rows of the MXFP4 out-major `[2I, H]` one), down, and their biases.
    fn gpt_oss_experts(&self, t: &mut Table, moe: &MoeSpec, mxfp4: bool) {
        use WeightRole::*;
        let (hidden, inter, experts) = (self.hidden_size, moe.expert_intermediate, moe.num_experts);
        let router_reason = "num_local_experts, hidden_size";
        t.add(
            Router,
            "mlp.router.weight",
            vec![experts, hidden],
            router_reason,
        );
        t.add(
            RouterBias,
            "mlp.router.bias",
            vec![experts],
            "num_local_experts",
        );
        let reason = "num_local_experts, hidden_size, intermediate_size";
        let rows = |offset| Layout::Rows { stride: 2, offset };
        for e in 0..experts {
            let at = (e, experts);
            let bias = "mlp.experts.gate_up_proj_bias";
            t.add_slice(
                ExpertGateBias(e),
                bias,
                at,
                vec![2 * inter],
                reason,
                rows(0),
            );
            t.add_slice(ExpertUpBias(e), bias, at, vec![2 * inter], reason, rows(1));
            let down_bias = "mlp.experts.down_proj_bias";
            t.add_slice(
                ExpertDownBias(e),
                down_bias,
                at,
                vec![hidden],
                reason,
                Layout::AsStored,
            );
            if mxfp4 {
                t.add_mxfp4(
                    ExpertGate(e),
                    "mlp.experts.gate_up_proj",
                    at,
                    (2 * inter, hidden),
                    rows(0),
                );
                t.add_mxfp4(
                    ExpertUp(e),
                    "mlp.experts.gate_up_proj",
                    at,
                    (2 * inter, hidden),
                    rows(1),
                );
                t.add_mxfp4(
                    ExpertDown(e),
                    "mlp.experts.down_proj",
                    at,
                    (hidden, inter),
                    Layout::AsStored,
                );
                continue;
            }
            let columns = |offset| Layout::InMajorColumns { stride: 2, offset };
            let gate_up = "mlp.experts.gate_up_proj";
            t.add_slice(
                ExpertGate(e),
                gate_up,
                at,
                vec![hidden, 2 * inter],
                reason,
                columns(0),
            );
            t.add_slice(
                ExpertUp(e),
                gate_up,
                at,
                vec![hidden, 2 * inter],
                reason,
                columns(1),
            );
            let down = Layout::InMajorColumns {
                stride: 1,
                offset: 0,
            };
            t.add_slice(
                ExpertDown(e),
                "mlp.experts.down_proj",
                at,
                vec![inter, hidden],
                reason,
                down,
            );
        }
    }
}
