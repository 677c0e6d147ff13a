//! Capture points, named as TransformerLens names them so users recognise them.

use crate::arch::RouterScoring;
use layerstream_planner::statistics::CapturedPoint;
use std::fmt;
use std::str::FromStr;

/// A place in a decoder layer whose activations can be observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CapturePoint {
    /// Input of q/k/v: the pre-attention norm's output (olmo2, which has none: the residual).
    Ln1,
    /// Input of the MLP: the pre-MLP norm's output (olmo2: the residual after attention).
    Ln2,
    /// Input of o_proj: the attention heads' output, `(heads * head_dim)` wide.
    AttnInO,
    /// Attention sublayer output before the residual add (after olmo2's output norm).
    AttnOut,
    /// MLP sublayer output before the residual add (after olmo2's output norm).
    MlpOut,
    /// The layer's output: the residual stream.
    ResidPost,
    /// Router logits and the chosen experts with their weights (MoE layers only).
    Router,
    /// The queries as attention uses them (after q-norm, clipping and RoPE),
    /// `(heads * head_dim)` wide.
    Q,
    /// The keys as attention uses them (after k-norm, clipping and RoPE),
    /// `(kv_heads * head_dim)` wide.
    K,
    /// Attention-sink mass: per head, the attention probability on the first token and on
    /// the first delimiter (not an activation: summed inside the attention kernels).
    AttnSinks,
    /// The mixer's output gate, what its heads' output is multiplied by before the output
    /// projection: `sigmoid(gate)` in a gated-attention layer, `silu(z)` in a Gated DeltaNet
    /// layer (Qwen3-Next; other layers have none), as wide as `attn_in_o`.
    AttnGate,
}

impl CapturePoint {
    /// Every activation point (one `(tokens, width)` tensor each), in forward order.
    pub const ACTIVATIONS: [CapturePoint; 9] = [
        CapturePoint::Ln1,
        CapturePoint::Q,
        CapturePoint::K,
        CapturePoint::AttnGate,
        CapturePoint::AttnInO,
        CapturePoint::AttnOut,
        CapturePoint::Ln2,
        CapturePoint::MlpOut,
        CapturePoint::ResidPost,
    ];

    /// Every point: the activations, the router and the attention sinks.
    pub const ALL: [CapturePoint; 11] = [
        CapturePoint::Ln1,
        CapturePoint::Q,
        CapturePoint::K,
        CapturePoint::AttnGate,
        CapturePoint::AttnInO,
        CapturePoint::AttnSinks,
        CapturePoint::AttnOut,
        CapturePoint::Ln2,
        CapturePoint::MlpOut,
        CapturePoint::ResidPost,
        CapturePoint::Router,
    ];

    /// What `--points all` captures: every point but `q`, `k` and `attn_gate` (as wide as
    /// the attention and rarely wanted as statistics; name them to get them).
    pub const DEFAULT: [CapturePoint; 8] = [
        CapturePoint::Ln1,
        CapturePoint::AttnInO,
        CapturePoint::AttnSinks,
        CapturePoint::AttnOut,
        CapturePoint::Ln2,
        CapturePoint::MlpOut,
        CapturePoint::ResidPost,
        CapturePoint::Router,
    ];

    /// Short name, e.g. `ln1`.
    pub fn name(self) -> &'static str {
        match self {
            CapturePoint::Ln1 => "ln1",
            CapturePoint::Ln2 => "ln2",
            CapturePoint::AttnInO => "attn_in_o",
            CapturePoint::AttnOut => "attn_out",
            CapturePoint::MlpOut => "mlp_out",
            CapturePoint::ResidPost => "resid_post",
            CapturePoint::Router => "router",
            CapturePoint::Q => "q",
            CapturePoint::K => "k",
            CapturePoint::AttnSinks => "attn_sinks",
            CapturePoint::AttnGate => "attn_gate",
        }
    }

    /// Whether it is an activation (a `(tokens, width)` tensor), not the router's choices or
    /// the attention-sink mass.
    pub fn is_activation(self) -> bool {
        Self::ACTIVATIONS.contains(&self)
    }

    /// The points whose values >= threshold are outlier features (LLM.int8()): the inputs of
    /// the attention projections (`ln1`, and `attn_in_o` reported separately) and of the MLP.
    pub fn is_outlier_feature_point(self) -> bool {
        matches!(
            self,
            CapturePoint::Ln1 | CapturePoint::Ln2 | CapturePoint::AttnInO
        )
    }

    /// What its statistics accumulators keep at `width`: positions of values >= threshold
    /// for the outlier-feature points, the magnitudes (per-token top three, per-sequence
    /// median: massive activations) for the residual stream.
    pub fn statistics_shape(self, width: usize) -> CapturedPoint {
        CapturedPoint {
            width,
            positions: self.is_outlier_feature_point(),
            magnitudes: self == CapturePoint::ResidPost,
        }
    }

    /// Full name for layer `layer`, e.g. `blocks.3.ln1`.
    pub fn full_name(self, layer: usize) -> String {
        format!("blocks.{layer}.{}", self.name())
    }
}

impl fmt::Display for CapturePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CapturePoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CapturePoint::ALL
            .into_iter()
            .find(|p| p.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<_> = CapturePoint::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "unknown capture point {s:?}; choose from {}",
                    names.join(", ")
                )
            })
    }
}

/// A set of capture points (small and `Copy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PointSet(u16);

impl PointSet {
    /// No points.
    pub const EMPTY: PointSet = PointSet(0);

    /// The set of `points`.
    pub fn of(points: &[CapturePoint]) -> Self {
        PointSet(points.iter().fold(0, |bits, &p| bits | 1 << p as u16))
    }

    /// Whether `point` is in it.
    pub fn contains(self, point: CapturePoint) -> bool {
        self.0 >> point as u16 & 1 == 1
    }
}

/// What a MoE layer's router decided for a micro-batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Routed experts.
    pub num_experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Router logits, `(tokens, num_experts)`.
    pub logits: Vec<f32>,
    /// Chosen experts, best first, `(tokens, top_k)`.
    pub experts: Vec<u32>,
    /// Their weights in the block output, `(tokens, top_k)`.
    pub weights: Vec<f32>,
    /// How the router scored the logits (the analysis recomputes the sigmoid router's choice
    /// without its selection bias from them).
    pub scoring: RouterScoring,
}

/// What one micro-batch's attention put on the sink positions (attention-sink statistics).
#[derive(Debug, Clone, PartialEq)]
pub struct SinkMass {
    /// Query heads.
    pub heads: usize,
    /// `(sequences)`: queries per head of each sequence (its length).
    pub queries: Vec<usize>,
    /// Whether the layer has learned sink logits (GPT-OSS).
    pub learned: bool,
    /// `(sequences, heads)`: `[sum over queries of the probability on position 0, on the
    /// sequence's first delimiter (0 for a sequence without one), on the learned sink (0
    /// without one)]`.
    pub mass: Vec<[f64; 3]>,
}

/// Receives what one layer produces for one micro-batch.
pub trait LayerCaptureSink {
    /// Activations at `point`, `(tokens, width)`.
    fn activation(&mut self, point: CapturePoint, values: &[f32], width: usize);
    /// The router's decisions (MoE layers).
    fn routing(&mut self, routing: &Routing);
    /// The MoE block's input `(tokens, width)` (the `ln2` values) once more, after
    /// `resid_post`: the inputs of tokens holding massive activations are kept for the expert
    /// attribution at the layer's end.
    fn moe_input(&mut self, _values: &[f32], _width: usize) {}
}
