//! The planner sees a model only as an inventory of tensors (names, shapes, dtypes, byte
//! ranges, which layer they belong to) and decides how a run uses memory. It never imports
//! the runtime and holds no per-architecture formulas: sizes come from safetensors headers.

pub mod atomic;
pub mod budget;
pub mod format;
pub mod inventory;
pub mod memory;
pub mod micro_batch;
pub mod progress;
pub mod split;
pub mod statistics;

pub use atomic::{write_atomically, write_atomically_with};
pub use budget::{ByteSize, ParseByteSizeError};
pub use inventory::{ExpertSlot, Inventory, TensorClass, TensorDtype, TensorEntry};
pub use micro_batch::{
    PLANNED_MICRO_BATCH_TOKENS, UNPLANNED_MICRO_BATCH_TOKENS, micro_batch_sequences,
};
