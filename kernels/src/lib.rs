//! CUDA kernels for layerstream: one `.cu` file per op group (`kernels/cu/`), embedded in the
//! binary, compiled with NVRTC for the running GPU's architecture at first use and cached on
//! disk (`LAYERSTREAM_KERNEL_CACHE`; keyed by source hash, architecture and NVRTC version;
//! damaged entries are recompiled). Typed launch wrappers in [`ops`], GEMMs through cuBLAS
//! in [`gemm`]. No model knowledge lives here; the CPU reference in `layerstream-runtime` is
//! what every kernel is tested against.
//!
//! cudarc loads libcuda, libnvrtc and libcublas at run time (CUDA 12 or 13), so this crate
//! builds on machines without a CUDA toolkit; [`gpu::gpu_unavailable_reason`] says why a GPU
//! cannot be used without touching cudarc calls that would panic.

pub mod cache;
pub mod compile;
pub mod error;
pub mod gemm;
pub mod gpu;
pub mod ops;
pub mod sources;

pub use error::{KernelError, Result};
pub use gpu::{Gpu, gpu_count, gpu_unavailable_reason};

/// Re-exported so users of this crate name the same cudarc types.
pub use cudarc;
