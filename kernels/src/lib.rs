//! CUDA kernels for layerstream.
//!
//! This crate will hold one `.cu` source per op group, compiled with NVRTC for the running
//! device at first use and cached on disk, with typed launch wrappers over cudarc
//! (docs/ARCHITECTURE.md, "kernels"). It carries no model knowledge. The CPU reference in
//! `layerstream-runtime` is what every kernel here is tested against.
//!
//! Nothing is compiled in yet: the CUDA backend is its own piece of work, and until it lands
//! the runtime reports `--device cuda` as unavailable in this build.

/// Whether this build contains CUDA kernels. The runtime asks before offering `--device cuda`.
pub const CUDA_KERNELS_BUILT: bool = false;
