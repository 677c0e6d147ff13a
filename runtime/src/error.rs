//! Errors of the runtime. Every variant names the file, tensor or layer it is about and,
//! where there is one, what the user can do.

use std::path::PathBuf;

/// Result with [`RuntimeError`].
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Everything that can go wrong between a model folder and a finished forward pass.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A file could not be opened, read or written.
    // The reason is part of the message and deliberately not an error `source`: chained
    // displays (`{:#}`) would print the operating system's reason twice.
    #[error("{action} {path}: {reason}")]
    Io {
        /// What was being done ("cannot read", "cannot create").
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        reason: std::io::Error,
    },
    /// config.json is not valid JSON or lacks a key the architecture needs.
    #[error("{path}: {message}")]
    Config {
        /// Path of config.json.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// `model_type` names an architecture this build does not implement.
    #[error(
        "{path}: model_type {model_type:?} is not supported; supported model types: {}",
        supported.join(", ")
    )]
    UnsupportedModelType {
        /// Path of config.json.
        path: PathBuf,
        /// The model_type found.
        model_type: String,
        /// What is supported.
        supported: Vec<&'static str>,
    },
    /// The configuration asks for something the implementation would compute differently.
    #[error("{path}: {what} is not supported: {hint}")]
    UnsupportedFeature {
        /// Path of config.json.
        path: PathBuf,
        /// The setting and its value.
        what: String,
        /// What the user can do.
        hint: String,
    },
    /// A safetensors file or index is malformed.
    #[error("{path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("tensor {name} is missing from {model_dir}: {hint}")]
    MissingTensor {
        /// Full tensor name.
        name: String,
        /// The model folder.
        model_dir: PathBuf,
        /// Why it is needed / what to check.
        hint: String,
    },
    /// A tensor's stored shape disagrees with what config.json implies.
    #[error(
        "tensor {name} in {path} has shape {found:?}, but config.json implies {expected:?} ({reason}); the checkpoint and config.json do not belong together"
    )]
    ShapeMismatch {
        /// Full tensor name.
        name: String,
        /// The safetensors file holding it.
        path: PathBuf,
        /// Shape from config.json.
        expected: Vec<usize>,
        /// Shape in the file header.
        found: Vec<usize>,
        /// Which config keys give the expected shape.
        reason: String,
    },
    /// A weight is stored in a dtype the runtime cannot convert.
    #[error("tensor {name} in {path} is stored as {dtype}; weights must be F32, F16 or BF16")]
    UnsupportedDtype {
        /// Full tensor name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The stored dtype.
        dtype: String,
    },
    /// tokenizer.json or tokenizer_config.json cannot be used.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The data file is malformed or unsuitable.
    #[error("{path}: {message}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// What is wrong, with line or row where known.
        message: String,
    },
    /// A file of an output folder (progress.json, a layer's results, a hidden-state
    /// checkpoint) is damaged or was not written by this version.
    #[error("{path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it and what to do.
        message: String,
    },
    /// The request (sequence length, layers, sample count) does not fit the model or data.
    #[error("{0}")]
    InvalidRequest(String),
    /// A shard folder is in use by a running shard: merge again when it has finished.
    #[error("a shard is still running: {0}; merge again when it has finished")]
    ShardBusy(String),
    /// Memory ran out: a reservation past the run's budget, or an injected fault.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// A signal asked the run to stop (see [`crate::stop`]).
    #[error("stopped by {}", crate::stop::signal_name(*signal))]
    Stopped {
        /// The signal's number.
        signal: i32,
    },
    /// A fault inside layerstream itself (an invariant the code relies on did not hold): a
    /// bug, never the user's input.
    #[error(
        "internal error: {0} (this is a bug in layerstream; please report it with the command that led to it)"
    )]
    Internal(String),
    /// The GPU, its driver or its libraries failed (or are missing).
    #[error(transparent)]
    Gpu(#[from] layerstream_kernels::KernelError),
}

impl RuntimeError {
    /// A bug: an invariant the code relies on did not hold.
    pub fn internal(message: impl Into<String>) -> Self {
        RuntimeError::Internal(message.into())
    }

    /// An I/O error with the path it happened on.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, reason: std::io::Error) -> Self {
        RuntimeError::Io {
            action,
            path: path.into(),
            reason,
        }
    }
}

impl From<layerstream_kernels::cudarc::driver::DriverError> for RuntimeError {
    fn from(error: layerstream_kernels::cudarc::driver::DriverError) -> Self {
        RuntimeError::Gpu(error.into())
    }
}

impl From<layerstream_kernels::cudarc::cublas::result::CublasError> for RuntimeError {
    fn from(error: layerstream_kernels::cudarc::cublas::result::CublasError) -> Self {
        RuntimeError::Gpu(error.into())
    }
}
