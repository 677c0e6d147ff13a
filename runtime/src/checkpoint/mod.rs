//! Per-layer checkpoints and resume (DESIGN §6): an output folder records, in
//! `progress.json`, every finished layer with the checksums of the files it wrote, and keeps
//! the hidden states entering the next layer. Running the same command again continues where
//! the last run stopped.

pub mod activations;
mod files;
mod fingerprint;
mod folder;
mod layer_record;
mod lock;
pub mod merge;
mod ownership;
pub mod statistics_file;
mod writer;

pub use files::write_file;
pub use fingerprint::{ModelFingerprint, data_fingerprint, model_fingerprint, records_fingerprint};
pub use folder::{AnalysisFolder, FolderOptions, PROGRESS_FILE, RunIdentity};
pub use layer_record::recorded_layers;
pub use lock::{FolderLock, LOCK_FILE, WRITE_PROBE_PREFIX};
pub use writer::{CheckpointObserver, CheckpointWritten};
