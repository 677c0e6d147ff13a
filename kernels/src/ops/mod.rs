//! Typed launch wrappers, one file per `.cu` module. Every wrapper checks buffer lengths
//! against the shape it is given before launching.

pub mod attention;
pub mod convert;
pub mod delta_net;
pub mod elementwise;
pub mod half_guard;
pub mod loss;
pub mod magnitudes;
pub mod moe;
pub mod norm;
pub mod rope;
pub mod stats;

use crate::error::{KernelError, Result};
use cudarc::driver::{DeviceSlice, LaunchConfig};

/// Launches `$name` of `$module` on the GPU's stream with the given arguments, in the order
/// of the kernel's parameters.
macro_rules! launch {
    ($gpu:expr, $module:expr, $name:expr, $config:expr, $($arg:expr),* $(,)?) => {{
        use cudarc::driver::PushKernelArg;
        let function = $gpu.function($module, $name)?;
        let mut builder = $gpu.stream.launch_builder(&function);
        $( builder.arg($arg); )*
        // SAFETY: the wrappers pass arguments in the order and types the kernel declares,
        // and check every buffer's length against the shape first.
        unsafe { builder.launch($config) }
            .map(|_| ())
            .map_err(crate::error::KernelError::from)
    }};
}
pub(crate) use launch;

/// Threads per block of the elementwise kernels.
pub(crate) const THREADS: u32 = 256;

/// One thread per element of `n`.
pub(crate) fn grid_for(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS as usize).max(1) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of `threads` per row.
pub(crate) fn block_per_row(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Fails unless `buffer` holds at least `needed` elements.
pub(crate) fn check_len<T>(what: &str, buffer: &impl DeviceSlice<T>, needed: usize) -> Result<()> {
    if buffer.len() < needed {
        return Err(KernelError::Unsupported(format!(
            "{what}: buffer of {} elements, shape needs {needed}",
            buffer.len()
        )));
    }
    Ok(())
}
