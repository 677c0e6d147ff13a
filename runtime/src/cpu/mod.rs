//! The CPU backend: the f32 reference every other backend is checked against. Plain code
//! that reads top to bottom, multithreaded with scoped threads.

pub mod attention;
pub mod delta_net;
pub mod executor;
pub mod head;
pub mod layer;
pub mod linear;
pub mod mlp;
pub mod moe;
pub mod norm;
pub(crate) mod ops;
pub mod parts;
pub mod rope;
pub mod router;
pub mod threads;

/// Settings of the CPU backend.
#[derive(Debug, Clone, Copy)]
pub struct CpuBackend {
    /// Worker threads per operation.
    pub threads: usize,
}

impl CpuBackend {
    /// A backend using `threads` threads, or the default count when `None`.
    pub fn new(threads: Option<usize>) -> Self {
        CpuBackend {
            threads: threads.unwrap_or_else(threads::default_thread_count).max(1),
        }
    }
}
