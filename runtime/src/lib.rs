//! layerstream's runtime: opens a model folder (config.json, safetensors, tokenizer.json),
//! packs data into a workload, and runs it layer by layer (layer-major) on a backend,
//! reporting activations at the capture points.
//!
//! Data flow (docs/ARCHITECTURE.md): data file -> tokenizer -> packed token ids;
//! model folder -> config + headers -> [`model::Model`] (spec + inventory);
//! [`run`] embeds, then for each layer loads its weights once and runs every
//! micro-batch through it, handing capture points to a [`executor::RunObserver`].

pub(crate) mod allocation;
pub mod analysis;
pub mod arch;
pub mod backend;
pub(crate) mod block;
pub mod capture;
pub mod checkpoint;
pub(crate) mod config;
pub(crate) mod config_values;
pub mod cpu;
pub mod cuda;
pub mod data;
pub(crate) mod error;
pub mod executor;
pub(crate) mod layer_end;
pub mod layer_parts;
pub(crate) mod mapping_guard;
pub(crate) mod model;
pub mod plan;
mod run;
pub mod selection;
pub mod sequences;
pub mod stop;
pub mod timeline;
pub mod top_logprobs;
pub(crate) mod weights;
pub(crate) mod workload_buffer;

pub use backend::{Backend, BackendSelection, DeviceChoice, select_backend};
pub use capture::{CapturePoint, PointSet};
pub use error::{Result, RuntimeError};
pub use executor::{CaptureMode, FinalStage, RunObserver, RunRequest};
pub use layerstream_kernels::gpu_count;
pub use model::Model;
pub use run::run;
pub use sequences::Sequences;
/// The CPU reference of the stored weight formats, for the CUDA kernels' tests.
pub use weights::{
    fp8::dequantize as dequantize_fp8, layout::apply as apply_layout,
    mxfp4::dequantize as dequantize_mxfp4,
};
