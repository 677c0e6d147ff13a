//! Errors of the kernels crate, each saying what to do.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;

/// What can go wrong opening a GPU, compiling or launching kernels.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// libcuda (the driver library) is not on this machine.
    #[error(
        "no NVIDIA driver library (libcuda.so) found; install the NVIDIA driver or use --device cpu"
    )]
    NoDriver,
    /// The driver loaded but sees no GPU.
    #[error("the NVIDIA driver reports no usable GPU ({0}); use --device cpu")]
    NoDevice(String),
    /// libnvrtc is missing.
    #[error(
        "the CUDA runtime compiler libnvrtc.so (CUDA 12 or 13) was not found; install the CUDA toolkit's NVRTC and put its lib folder on LD_LIBRARY_PATH, or use --device cpu"
    )]
    NoNvrtc,
    /// libcublas is missing.
    #[error(
        "cuBLAS (libcublas.so, CUDA 12 or 13) was not found; put the CUDA toolkit's lib folder on LD_LIBRARY_PATH, or use --device cpu"
    )]
    NoCublas,
    /// A driver call failed.
    #[error("CUDA driver error: {0}")]
    Driver(#[from] DriverError),
    /// A cuBLAS call failed.
    #[error("cuBLAS error: {0:?}")]
    Cublas(#[from] CublasError),
    /// NVRTC rejected a kernel source (a bug in layerstream, or an NVRTC too old for the GPU).
    #[error("NVRTC could not compile {module}.cu for {arch}: {log}")]
    Compile {
        /// The `.cu` file.
        module: &'static str,
        /// Target architecture.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A request the kernels cannot serve (shape limits).
    #[error("{0}")]
    Unsupported(String),
}

/// Result with [`KernelError`].
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
