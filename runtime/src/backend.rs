//! Which backend runs the forward pass.

use crate::cpu::CpuBackend;
use crate::cuda::{ComputeChoice, CudaBackend};
use crate::error::{Result, RuntimeError};
use std::fmt;
use std::str::FromStr;

/// `--device`: what the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when usable, otherwise the CPU (with a line saying why).
    #[default]
    Auto,
    /// The CPU reference.
    Cpu,
    /// CUDA, or an error.
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(format!(
                "unknown device {other:?}; choose auto, cpu or cuda"
            )),
        }
    }
}

/// A backend ready to run.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The f32 CPU reference.
    Cpu(CpuBackend),
    /// One NVIDIA GPU.
    Cuda(CudaBackend),
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Cpu(cpu) => write!(f, "cpu ({} threads)", cpu.threads),
            Backend::Cuda(cuda) => write!(f, "{cuda}"),
        }
    }
}

/// The chosen backend and, when `auto` fell back, why.
pub struct BackendSelection {
    /// What runs.
    pub backend: Backend,
    /// One line for the user when the choice was not the one asked for.
    pub fallback_reason: Option<String>,
}

/// Picks the backend for `choice`. `auto` takes GPU 0 when the driver, a device, NVRTC and
/// cuBLAS are all present (checked before any call that could panic) and otherwise the CPU.
pub fn select_backend(
    choice: DeviceChoice,
    compute: ComputeChoice,
    cpu_threads: Option<usize>,
) -> Result<BackendSelection> {
    let cpu = || Backend::Cpu(CpuBackend::new(cpu_threads));
    match choice {
        DeviceChoice::Cpu => Ok(BackendSelection {
            backend: cpu(),
            fallback_reason: None,
        }),
        DeviceChoice::Cuda => Ok(BackendSelection {
            backend: Backend::Cuda(CudaBackend::open(0, compute)?),
            fallback_reason: None,
        }),
        DeviceChoice::Auto => match CudaBackend::open(0, compute) {
            Ok(cuda) => Ok(BackendSelection {
                backend: Backend::Cuda(cuda),
                fallback_reason: None,
            }),
            Err(RuntimeError::Gpu(why)) => Ok(BackendSelection {
                backend: cpu(),
                fallback_reason: Some(format!("running on the CPU: {why}")),
            }),
            Err(other) => Err(other),
        },
    }
}
