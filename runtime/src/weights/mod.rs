//! Weights: memory-mapped safetensors and their conversion to the arithmetic dtype.

pub mod dtype;
pub mod store;

pub use store::WeightStore;
