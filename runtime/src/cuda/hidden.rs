//! Where the workload's hidden states live on a GPU run: on the device for the whole run, or
//! one micro-batch on the device at a time with the rest in pinned host memory (the planner's
//! `pinned_host` placement, when they do not fit next to a layer; micro-batches pass through
//! [`Slots`], uploaded and downloaded beside the kernels) or in a mapped file (`disk`, when
//! they do not fit the host budget either; copied on the compute stream).

use super::hidden_slots::Slots;
use crate::cpu::threads::{default_thread_count, for_each_chunk_mut};
use crate::error::Result;
use crate::layer_end::HiddenSnapshot;
use crate::timeline;
use crate::workload_buffer::WorkloadBuffer;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaViewMut, PinnedHostSlice};
use layerstream_planner::memory::HiddenPlacement;
use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

/// Workload-sized values `(num_sequences * seq_len, hidden)`: the hidden states, or a split
/// layer's feed-forward accumulator.
pub enum HiddenStates {
    /// All on the device.
    Device(CudaSlice<f32>),
    /// In pinned host memory; `slots` hold the micro-batches being uploaded, computed and
    /// downloaded.
    Host {
        /// `(num_sequences * seq_len, hidden)`.
        host: PinnedHostSlice<f32>,
        /// `HIDDEN_SLOTS x (micro-batch rows, hidden)`.
        slots: Slots,
    },
    /// In a mapped file; `batch` holds the micro-batch being computed.
    Disk {
        /// `(num_sequences * seq_len, hidden)`.
        file: WorkloadBuffer,
        /// `(micro-batch rows, hidden)`.
        batch: CudaSlice<f32>,
    },
}

fn batch_buffer(gpu: &Gpu, batch_elements: usize) -> Result<CudaSlice<f32>> {
    Ok(gpu.stream.alloc_zeros::<f32>(batch_elements.max(1))?)
}

/// Page-locked host memory of `len` values, cached (cudarc's `alloc_pinned` is
/// write-combined, which the host reads back slowly: checkpoints read these values),
/// written by `fill` (on the host's threads where it can).
fn pinned_with(
    gpu: &Gpu,
    len: usize,
    fill: impl FnOnce(&mut [f32]) -> Result<()>,
) -> Result<PinnedHostSlice<f32>> {
    // SAFETY: `fill` writes every element before any read (flags 0: cached, not portable).
    let mut host = unsafe { gpu.context.alloc_pinned_with_flags::<f32>(len.max(1), 0) }?;
    timeline::mark(|| format!("{:.2} GB of pinned host memory", len as f64 * 4e-9));
    fill(&mut host.as_mut_slice()?[..len])?;
    Ok(host)
}

/// Zeros in `values`, written on all cores.
fn zero_on_all_cores(values: &mut [f32]) -> Result<()> {
    let threads = default_thread_count();
    let chunk = values.len().div_ceil(threads.max(1));
    for_each_chunk_mut(values, chunk, threads, |_, part| part.fill(0.0));
    Ok(())
}

impl HiddenStates {
    /// Places `values` as `placement` says, with a device buffer of `batch_elements` when
    /// they stay off the device (`disk`: `values` must already be a file).
    pub fn new(
        gpu: &Gpu,
        values: WorkloadBuffer,
        placement: HiddenPlacement,
        batch_elements: usize,
    ) -> Result<Self> {
        Ok(match placement {
            HiddenPlacement::Device => {
                HiddenStates::Device(gpu.stream.clone_htod(values.as_slice())?)
            }
            HiddenPlacement::PinnedHost => {
                let values = values.as_slice();
                HiddenStates::pinned(gpu, values.len(), batch_elements, |host| {
                    host.copy_from_slice(values);
                    Ok(())
                })?
            }
            HiddenPlacement::Disk => {
                debug_assert!(values.on_disk());
                HiddenStates::Disk {
                    file: values,
                    batch: batch_buffer(gpu, batch_elements)?,
                }
            }
        })
    }

    /// `len` values in pinned host memory written by `fill` (the embedding rows gathered
    /// straight into it, without a copy of the workload first).
    pub fn pinned(
        gpu: &Gpu,
        len: usize,
        batch_elements: usize,
        fill: impl FnOnce(&mut [f32]) -> Result<()>,
    ) -> Result<Self> {
        Ok(HiddenStates::Host {
            host: pinned_with(gpu, len, fill)?,
            slots: Slots::new(gpu, batch_elements)?,
        })
    }

    /// `len` zeros placed as `placement` says (a file `name` in `spill` on disk).
    pub fn zeros(
        gpu: &Gpu,
        len: usize,
        placement: HiddenPlacement,
        batch_elements: usize,
        spill: Option<&Path>,
        name: &str,
    ) -> Result<Self> {
        Ok(match placement {
            HiddenPlacement::Device => {
                HiddenStates::Device(gpu.stream.alloc_zeros::<f32>(len.max(1))?)
            }
            HiddenPlacement::PinnedHost => {
                HiddenStates::pinned(gpu, len, batch_elements, zero_on_all_cores)?
            }
            HiddenPlacement::Disk => HiddenStates::Disk {
                file: WorkloadBuffer::zeros_in(spill, name, len)?,
                batch: batch_buffer(gpu, batch_elements)?,
            },
        })
    }

    /// A device view of elements `range`, uploaded first when they live off the device (or
    /// taken from its [`HiddenStates::prefetch`]); [`HiddenStates::end`] follows.
    pub fn begin(&mut self, gpu: &Gpu, range: Range<usize>) -> Result<CudaViewMut<'_, f32>> {
        let (source, batch) = match self {
            HiddenStates::Device(all) => return Ok(all.slice_mut(range)),
            HiddenStates::Host { host, slots } => return slots.begin(gpu, host.as_slice()?, range),
            HiddenStates::Disk { file, batch } => (&file.as_slice()[range], batch),
        };
        let mut view = batch.slice_mut(..source.len());
        gpu.stream.memcpy_htod(source, &mut view)?;
        Ok(view)
    }

    /// A device view of elements `range` for kernels that only read it (no
    /// [`HiddenStates::end`]: nothing is written back).
    pub fn read(&mut self, gpu: &Gpu, range: Range<usize>) -> Result<CudaViewMut<'_, f32>> {
        match self {
            HiddenStates::Host { host, slots } => slots.read(gpu, host.as_slice()?, range),
            _ => self.begin(gpu, range),
        }
    }

    /// Starts uploading elements `range` for the next [`HiddenStates::begin`] while the
    /// current micro-batch computes (pinned host memory only; elsewhere nothing to do).
    pub fn prefetch(&mut self, gpu: &Gpu, range: Range<usize>) -> Result<()> {
        match self {
            HiddenStates::Host { host, slots } => slots.prefetch(gpu, host.as_slice()?, range),
            HiddenStates::Device(_) | HiddenStates::Disk { .. } => Ok(()),
        }
    }

    /// Writes elements `range` back after [`HiddenStates::begin`] (nothing to do on the
    /// device; queued beside the next micro-batch's kernels from pinned host memory).
    pub fn end(&mut self, gpu: &Gpu, range: Range<usize>) -> Result<()> {
        let (destination, batch) = match self {
            HiddenStates::Device(_) => return Ok(()),
            HiddenStates::Host { host, slots } => {
                return slots.finish(gpu, host.as_mut_slice()?, range);
            }
            HiddenStates::Disk { file, batch } => (&mut file.as_mut_slice()[range], batch),
        };
        let n = destination.len();
        gpu.stream.memcpy_dtoh(&batch.slice(..n), destination)?;
        Ok(())
    }

    /// All of them on the host (checkpoints): a copy from the device, or the host values
    /// themselves once the stream is done with them.
    pub fn snapshot(&self, gpu: &Gpu) -> Result<HiddenSnapshot<'_>> {
        match self {
            HiddenStates::Device(all) => Ok(HiddenSnapshot {
                values: Cow::Owned(gpu.stream.clone_dtoh(all)?),
                in_file: false,
            }),
            HiddenStates::Host { host, slots } => {
                gpu.stream.synchronize()?;
                slots.synchronize()?;
                Ok(HiddenSnapshot {
                    values: Cow::Borrowed(host.as_slice()?),
                    in_file: false,
                })
            }
            HiddenStates::Disk { file, .. } => {
                gpu.stream.synchronize()?;
                Ok(HiddenSnapshot::of(file))
            }
        }
    }
}
