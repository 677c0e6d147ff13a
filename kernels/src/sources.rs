//! The CUDA sources, embedded in the binary: one `.cu` per op group, each prefixed with
//! `common.cuh` before compilation.

/// Helpers every module includes.
const COMMON: &str = include_str!("../cu/common.cuh");

/// A module: its name (the `.cu` file) and its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModuleSource {
    /// File stem, e.g. `norm`.
    pub name: &'static str,
    /// Source without the common header.
    pub code: &'static str,
}

impl ModuleSource {
    /// The text handed to NVRTC.
    pub fn full_source(&self) -> String {
        format!("{COMMON}\n// ---- {}.cu ----\n{}", self.name, self.code)
    }
}

macro_rules! module {
    ($name:literal) => {
        ModuleSource {
            name: $name,
            code: include_str!(concat!("../cu/", $name, ".cu")),
        }
    };
}

/// Dtype conversion, embedding gather.
pub const CONVERT: ModuleSource = module!("convert");
/// RMSNorm, LayerNorm.
pub const NORM: ModuleSource = module!("norm");
/// Rotary embedding.
pub const ROPE: ModuleSource = module!("rope");
/// SiLU-gate, residual add, clamp, bias.
pub const ELEMENTWISE: ModuleSource = module!("elementwise");
/// Flash-style causal attention.
pub const ATTENTION: ModuleSource = module!("attention");
/// Causal attention on tensor cores (bf16 operands on sm_80+, f16 on sm_75+).
pub const ATTENTION_MMA: ModuleSource = module!("attention_mma");
/// MoE routing, permutation, unpermutation.
pub const MOE: ModuleSource = module!("moe");
/// Statistics accumulators.
pub const STATS: ModuleSource = module!("stats");
/// Row top-3 and per-sequence median of |x|.
pub const MAGNITUDES: ModuleSource = module!("magnitudes");

/// Gated DeltaNet: convolution and the chunked delta rule's non-GEMM steps.
pub const DELTA_NET: ModuleSource = module!("delta_net");

/// Online log-sum-exp for next-token NLL.
pub const LOSS: ModuleSource = module!("loss");

/// The f16 path's overflow guard: guarded conversion, f32 fix-up of overflowing rows.
pub const HALF_GUARD: ModuleSource = module!("half_guard");

/// Every module.
pub const ALL_MODULES: [ModuleSource; 12] = [
    CONVERT,
    NORM,
    ROPE,
    ELEMENTWISE,
    ATTENTION,
    ATTENTION_MMA,
    MOE,
    STATS,
    MAGNITUDES,
    LOSS,
    DELTA_NET,
    HALF_GUARD,
];
