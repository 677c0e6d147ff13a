//! Weights: memory-mapped safetensors and their conversion to the arithmetic dtype
//! (dense floats in `dtype.rs`, MXFP4 blocks in `mxfp4.rs`, FP8 blocks in `fp8.rs`).

pub mod dtype;
pub mod fp8;
mod header;
pub mod layout;
pub mod mxfp4;
pub mod store;

pub use store::WeightStore;
