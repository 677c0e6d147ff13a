//! Device slots for micro-batches of values kept in pinned host memory, with an upload and a
//! download stream of their own: the next micro-batch is uploaded while the current one
//! computes, and the previous one is downloaded meanwhile, so the hidden states' trips over
//! PCIe overlap the layer's kernels instead of running between them on the compute stream.
//!
//! Ordering (the context's own event tracking is off, see `Gpu::open`):
//! - an upload into a slot waits for that slot's last download (the slot is free) and for
//!   every recent download to an overlapping host range (the host values are final);
//! - the compute stream waits for a micro-batch's upload before its first kernel;
//! - a download waits for the compute stream's work queued up to [`Slots::finish`].

use crate::error::{Result, RuntimeError};
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaEvent, CudaSlice, CudaStream, CudaViewMut};
use layerstream_planner::memory::HIDDEN_SLOTS;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

/// Recent downloads remembered by host range; the oldest one's event stands for every
/// download before it (one stream: they finish in order).
const REMEMBERED_DOWNLOADS: usize = 64;

/// An upload started ahead of its micro-batch.
struct Prefetched {
    range: Range<usize>,
    slot: usize,
    uploaded: CudaEvent,
}

/// [`HIDDEN_SLOTS`] device buffers of `(micro-batch rows, width)` and their streams.
pub struct Slots {
    buffers: Vec<CudaSlice<f32>>,
    upload: Arc<CudaStream>,
    download: Arc<CudaStream>,
    /// Per slot: its last download has finished (the slot may be written again).
    released: Vec<Option<Arc<CudaEvent>>>,
    /// Host ranges written by recent downloads, oldest first (a download's event is also its
    /// slot's `released`).
    downloads: VecDeque<(Range<usize>, Arc<CudaEvent>)>,
    /// Whether downloads older than `downloads` were forgotten.
    forgotten: bool,
    /// The micro-batch between `begin` and `finish`: its slot and host range.
    current: Option<(usize, Range<usize>)>,
    /// The slot of the last [`Slots::read`]: free once the compute stream's work queued
    /// before the next call is done.
    reading: Option<usize>,
    prefetched: Option<Prefetched>,
    next_slot: usize,
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

impl Slots {
    /// Slots of `batch_elements` each, with new upload and download streams.
    pub fn new(gpu: &Gpu, batch_elements: usize) -> Result<Self> {
        let buffers = (0..HIDDEN_SLOTS)
            .map(|_| gpu.stream.alloc_zeros::<f32>(batch_elements.max(1)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // The zeros are written on the compute stream; the copies run on the other two.
        gpu.stream.synchronize()?;
        Ok(Slots {
            buffers,
            upload: gpu.context.new_stream()?,
            download: gpu.context.new_stream()?,
            released: (0..HIDDEN_SLOTS).map(|_| None).collect(),
            downloads: VecDeque::new(),
            forgotten: false,
            current: None,
            reading: None,
            prefetched: None,
            next_slot: 0,
        })
    }

    /// A slot that is neither computing nor holding a prefetched upload.
    fn free_slot(&mut self) -> Result<usize> {
        let busy = |s: usize| {
            self.current.as_ref().is_some_and(|(c, _)| *c == s)
                || self.reading == Some(s)
                || self.prefetched.as_ref().is_some_and(|p| p.slot == s)
        };
        let slot = (0..HIDDEN_SLOTS)
            .map(|i| (self.next_slot + i) % HIDDEN_SLOTS)
            .find(|&s| !busy(s))
            .ok_or_else(|| {
                RuntimeError::internal("no free hidden-state slot (a pipelining bug)")
            })?;
        self.next_slot = (slot + 1) % HIDDEN_SLOTS;
        Ok(slot)
    }

    /// Queues the upload of `host[range]` into `slot` on the upload stream.
    fn upload_into(&mut self, slot: usize, host: &[f32], range: Range<usize>) -> Result<CudaEvent> {
        if let Some(released) = &self.released[slot] {
            self.upload.wait(released)?;
        }
        for (written, event) in &self.downloads {
            if overlaps(written, &range) {
                self.upload.wait(event)?;
            }
        }
        if self.forgotten
            && let Some((_, oldest)) = self.downloads.front()
        {
            self.upload.wait(oldest)?;
        }
        let n = range.len();
        let source = host.get(range.clone()).ok_or_else(|| {
            RuntimeError::internal(format!(
                "hidden rows {range:?} outside the host's {} values",
                host.len()
            ))
        })?;
        let mut destination = self.buffers[slot].slice_mut(..n);
        self.upload.memcpy_htod(source, &mut destination)?;
        Ok(self.upload.record_event(None)?)
    }

    /// Ends the last [`Slots::read`]: its slot is free after the compute stream's work so far.
    fn close_read(&mut self, gpu: &Gpu) -> Result<()> {
        if let Some(slot) = self.reading.take() {
            self.released[slot] = Some(Arc::new(gpu.stream.record_event(None)?));
        }
        Ok(())
    }

    /// Starts uploading `host[range]` for a later [`Slots::begin`] of the same range.
    pub fn prefetch(&mut self, gpu: &Gpu, host: &[f32], range: Range<usize>) -> Result<()> {
        self.close_read(gpu)?;
        if self.prefetched.as_ref().is_some_and(|p| p.range == range) {
            return Ok(());
        }
        self.prefetched = None;
        let slot = self.free_slot()?;
        let uploaded = self.upload_into(slot, host, range.clone())?;
        self.prefetched = Some(Prefetched {
            range,
            slot,
            uploaded,
        });
        Ok(())
    }

    /// The device copy of `host[range]` for the compute stream (uploaded now unless it was
    /// prefetched).
    pub fn begin(
        &mut self,
        gpu: &Gpu,
        host: &[f32],
        range: Range<usize>,
    ) -> Result<CudaViewMut<'_, f32>> {
        let slot = self.upload_for_compute(gpu, host, range.clone())?;
        self.current = Some((slot, range.clone()));
        Ok(self.buffers[slot].slice_mut(..range.len()))
    }

    /// The device copy of `host[range]` for kernels that only read it (the LM head): never
    /// downloaded; its slot is free once the work queued before the next call is done.
    pub fn read(
        &mut self,
        gpu: &Gpu,
        host: &[f32],
        range: Range<usize>,
    ) -> Result<CudaViewMut<'_, f32>> {
        let slot = self.upload_for_compute(gpu, host, range.clone())?;
        self.reading = Some(slot);
        Ok(self.buffers[slot].slice_mut(..range.len()))
    }

    /// The slot holding `host[range]` (prefetched or uploaded now), the compute stream made
    /// to wait for its upload.
    fn upload_for_compute(
        &mut self,
        gpu: &Gpu,
        host: &[f32],
        range: Range<usize>,
    ) -> Result<usize> {
        if self.current.is_some() {
            return Err(RuntimeError::internal(
                "a micro-batch of hidden states began before the last one finished",
            ));
        }
        self.close_read(gpu)?;
        let (slot, uploaded) = match self.prefetched.take() {
            Some(p) if p.range == range => (p.slot, p.uploaded),
            _ => {
                let slot = self.free_slot()?;
                (slot, self.upload_into(slot, host, range.clone())?)
            }
        };
        gpu.stream.wait(&uploaded)?;
        Ok(slot)
    }

    /// Queues the download of the current micro-batch to `host` after the compute stream's
    /// work so far.
    pub fn finish(&mut self, gpu: &Gpu, host: &mut [f32], range: Range<usize>) -> Result<()> {
        let Some((slot, begun)) = self.current.take() else {
            return Err(RuntimeError::internal(
                "hidden states finished without a micro-batch begun",
            ));
        };
        if begun != range {
            return Err(RuntimeError::internal(format!(
                "hidden rows {range:?} finished, {begun:?} begun"
            )));
        }
        let computed = gpu.stream.record_event(None)?;
        self.download.wait(&computed)?;
        let n = range.len();
        let destination = host.get_mut(range.clone()).ok_or_else(|| {
            RuntimeError::internal(format!("hidden rows {range:?} outside the host values"))
        })?;
        self.download
            .memcpy_dtoh(&self.buffers[slot].slice(..n), destination)?;
        let downloaded = Arc::new(self.download.record_event(None)?);
        self.released[slot] = Some(Arc::clone(&downloaded));
        self.downloads.push_back((range, downloaded));
        if self.downloads.len() > REMEMBERED_DOWNLOADS {
            self.downloads.pop_front();
            self.forgotten = true;
        }
        Ok(())
    }

    /// Waits until every download has reached the host (before the host reads the values).
    pub fn synchronize(&self) -> Result<()> {
        self.download.synchronize()?;
        self.upload.synchronize()?;
        Ok(())
    }
}

impl Drop for Slots {
    /// The slots are freed on the compute stream: the copies on the other two finish first.
    fn drop(&mut self) {
        let _ = self.synchronize();
    }
}
