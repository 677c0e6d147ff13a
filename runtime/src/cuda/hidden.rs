//! Where the workload's hidden states live on a GPU run: on the device for the whole run, or
//! in page-locked host memory with one micro-batch on the device at a time (the planner's
//! `pinned_host` placement, when they do not fit next to a layer).

use crate::error::Result;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaViewMut, PinnedHostSlice};
use layerstream_kernels::{Gpu, KernelError};
use std::ops::Range;

/// The hidden states `(num_sequences * seq_len, hidden)`.
pub enum HiddenStates {
    /// All on the device.
    Device(CudaSlice<f32>),
    /// In pinned host memory; `batch` holds the micro-batch being computed.
    Host {
        /// `(num_sequences * seq_len, hidden)`.
        host: PinnedHostSlice<f32>,
        /// `(micro-batch rows, hidden)`.
        batch: CudaSlice<f32>,
    },
}

impl HiddenStates {
    /// Places `values` on the device, or in pinned host memory with a device buffer of
    /// `batch_elements`.
    pub fn new(gpu: &Gpu, values: Vec<f32>, on_host: bool, batch_elements: usize) -> Result<Self> {
        if !on_host {
            return Ok(HiddenStates::Device(
                gpu.stream.clone_htod(&values).map_err(KernelError::from)?,
            ));
        }
        // SAFETY: every element is written just below, before any read.
        let mut host =
            unsafe { gpu.context.alloc_pinned::<f32>(values.len()) }.map_err(KernelError::from)?;
        host.as_mut_slice()
            .map_err(KernelError::from)?
            .copy_from_slice(&values);
        let batch = gpu
            .stream
            .alloc_zeros::<f32>(batch_elements.max(1))
            .map_err(KernelError::from)?;
        Ok(HiddenStates::Host { host, batch })
    }

    /// `len` zeros, placed like [`HiddenStates::new`] places values (a split layer's
    /// feed-forward accumulator).
    pub fn zeros(gpu: &Gpu, len: usize, on_host: bool, batch_elements: usize) -> Result<Self> {
        if !on_host {
            return Ok(HiddenStates::Device(
                gpu.stream
                    .alloc_zeros::<f32>(len.max(1))
                    .map_err(KernelError::from)?,
            ));
        }
        Self::new(gpu, vec![0f32; len], true, batch_elements)
    }

    /// A device view of elements `range`, uploaded first when the states live on the host.
    pub fn begin(&mut self, gpu: &Gpu, range: Range<usize>) -> Result<CudaViewMut<'_, f32>> {
        match self {
            HiddenStates::Device(all) => Ok(all.slice_mut(range)),
            HiddenStates::Host { host, batch } => {
                let n = range.len();
                let source = &host.as_slice().map_err(KernelError::from)?[range];
                let mut view = batch.slice_mut(..n);
                gpu.stream
                    .memcpy_htod(source, &mut view)
                    .map_err(KernelError::from)?;
                Ok(view)
            }
        }
    }

    /// Writes elements `range` back to the host after [`HiddenStates::begin`] (nothing to do on
    /// the device).
    pub fn end(&mut self, gpu: &Gpu, range: Range<usize>) -> Result<()> {
        if let HiddenStates::Host { host, batch } = self {
            let n = range.len();
            let destination = &mut host.as_mut_slice().map_err(KernelError::from)?[range];
            gpu.stream
                .memcpy_dtoh(&batch.slice(..n), destination)
                .map_err(KernelError::from)?;
        }
        Ok(())
    }

    /// A host copy of all of them (checkpoints).
    pub fn snapshot(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        match self {
            HiddenStates::Device(all) => {
                Ok(gpu.stream.clone_dtoh(all).map_err(KernelError::from)?)
            }
            HiddenStates::Host { host, .. } => {
                gpu.stream.synchronize().map_err(KernelError::from)?;
                Ok(host.as_slice().map_err(KernelError::from)?.to_vec())
            }
        }
    }
}
