//! The CUDA backend: the same layer-major loop as the CPU reference, with weights uploaded
//! per layer, activations and hidden states on the device, kernels from
//! `layerstream-kernels`, GEMMs through cuBLAS and statistics accumulated on the device.

mod capture;
mod delta_net;
pub mod executor;
mod expert_mlps;
mod f16_overflow;
mod head;
mod head_run;
mod hidden;
mod hidden_slots;
mod layer;
mod linear;
mod moe;
mod ops;
mod staging;
mod weights;

use crate::error::Result;
use layerstream_kernels::Gpu;
use layerstream_planner::TensorDtype;
use std::fmt;
use std::sync::Arc;

/// Arithmetic of the GEMMs and attention products (everything else is f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDtype {
    /// bf16 weights and bf16-rounded inputs, f32 accumulation and output.
    Bf16,
    /// f16 weights and f16-rounded inputs, f32 accumulation and output (the T4 path: f16
    /// tensor cores from sm_75). Rows whose inputs do not fit f16 are recomputed in f32
    /// and counted (`half_guard.cu`).
    F16,
    /// f32 throughout (bf16 / f16 weights converted to f32).
    F32,
}

impl ComputeDtype {
    /// The planner's name for it.
    pub fn gemm(self) -> layerstream_planner::memory::GemmDtype {
        match self {
            ComputeDtype::Bf16 => layerstream_planner::memory::GemmDtype::Bf16,
            ComputeDtype::F16 => layerstream_planner::memory::GemmDtype::F16,
            ComputeDtype::F32 => layerstream_planner::memory::GemmDtype::F32,
        }
    }
}

/// `--compute-dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeChoice {
    /// bf16 when the checkpoint's weights are bf16 and the GPU does bf16 arithmetic
    /// (compute capability 8.0+); f16 for bf16 and f16 checkpoints on GPUs without bf16
    /// arithmetic but with f16 tensor cores (sm_75: a T4); f32 otherwise (f32 checkpoints,
    /// f16 checkpoints on sm_80+, GPUs before sm_75).
    #[default]
    Auto,
    /// bf16 GEMMs (refused on GPUs without bf16 arithmetic).
    Bf16,
    /// f16 GEMMs and attention with the overflow guard (sm_75+).
    F16,
    /// f32 GEMMs on any GPU: the path a T4 takes, testable on newer cards.
    F32,
}

impl std::str::FromStr for ComputeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ComputeChoice::Auto),
            "bf16" => Ok(ComputeChoice::Bf16),
            "f16" => Ok(ComputeChoice::F16),
            "f32" => Ok(ComputeChoice::F32),
            other => Err(format!(
                "unknown compute dtype {other:?}; choose auto, bf16, f16 or f32"
            )),
        }
    }
}

/// An opened GPU and how to compute on it.
#[derive(Clone)]
pub struct CudaBackend {
    /// The device.
    pub gpu: Arc<Gpu>,
    /// What the user asked for.
    pub compute: ComputeChoice,
}

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CudaBackend({}, {:?})", self.gpu.name, self.compute)
    }
}

impl fmt::Display for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cuda ({}, {}, NVRTC {}.{})",
            self.gpu.name, self.gpu.arch, self.gpu.nvrtc.0, self.gpu.nvrtc.1
        )
    }
}

impl CudaBackend {
    /// Opens GPU `ordinal`.
    pub fn open(ordinal: usize, compute: ComputeChoice) -> Result<Self> {
        let gpu = Gpu::open(ordinal)?;
        if compute == ComputeChoice::Bf16 && !gpu.has_bf16_math() {
            return Err(crate::error::RuntimeError::InvalidRequest(format!(
                "--compute-dtype bf16: {} ({}) has no bf16 arithmetic; use --compute-dtype f32 (or auto)",
                gpu.name, gpu.arch
            )));
        }
        Ok(CudaBackend {
            gpu: Arc::new(gpu),
            compute,
        })
    }

    /// The GEMM arithmetic for a checkpoint whose matrices are mostly `weight_dtype`.
    pub fn compute_dtype(&self, weight_dtype: TensorDtype) -> ComputeDtype {
        resolve_compute(self.compute, weight_dtype, self.gpu.kernel_capability())
    }
}

/// What `choice` computes in for `weight_dtype` weights on a GPU whose kernels are built for
/// compute capability `capability`.
pub fn resolve_compute(
    choice: ComputeChoice,
    weight_dtype: TensorDtype,
    capability: (i32, i32),
) -> ComputeDtype {
    let half_checkpoint = matches!(weight_dtype, TensorDtype::Bf16 | TensorDtype::F16);
    match choice {
        ComputeChoice::F32 => ComputeDtype::F32,
        ComputeChoice::Bf16 => ComputeDtype::Bf16,
        ComputeChoice::F16 => ComputeDtype::F16,
        ComputeChoice::Auto if weight_dtype == TensorDtype::Bf16 && capability >= (8, 0) => {
            ComputeDtype::Bf16
        }
        // A T4: f16 tensor cores with the overflow guard for 16-bit checkpoints.
        ComputeChoice::Auto if half_checkpoint && ((7, 5)..(8, 0)).contains(&capability) => {
            ComputeDtype::F16
        }
        ComputeChoice::Auto => ComputeDtype::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_computes_16_bit_checkpoints_in_f16_on_a_t4_and_bf16_from_sm_80() {
        use ComputeDtype as D;
        use TensorDtype::{Bf16, F16, F32};
        let auto = |weights, capability| resolve_compute(ComputeChoice::Auto, weights, capability);
        assert_eq!(auto(Bf16, (7, 5)), D::F16);
        assert_eq!(auto(F16, (7, 5)), D::F16);
        assert_eq!(auto(F32, (7, 5)), D::F32);
        assert_eq!(
            auto(Bf16, (7, 0)),
            D::F32,
            "no f16 tensor-core kernels before sm_75"
        );
        assert_eq!(auto(Bf16, (8, 0)), D::Bf16);
        assert_eq!(auto(Bf16, (9, 0)), D::Bf16);
        assert_eq!(auto(F16, (9, 0)), D::F32);
        for (choice, dtype) in [
            (ComputeChoice::F32, D::F32),
            (ComputeChoice::Bf16, D::Bf16),
            (ComputeChoice::F16, D::F16),
        ] {
            assert_eq!(resolve_compute(choice, Bf16, (7, 5)), dtype);
        }
    }
}
