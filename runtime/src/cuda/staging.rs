//! The weight-streaming pipeline's host side: a reader thread copies each layer's tensors
//! from the memory-mapped safetensors into one of two pinned staging buffers (the copy is
//! split over several threads: one core's memcpy is slower than PCIe); the executor uploads
//! a filled buffer on the copy stream and hands it back with an event the reader waits on
//! before refilling it. While layer l computes, layer l+1 is read and uploaded. A split
//! layer streams as its parts, one after the other, in the same two buffers.

use crate::arch::{ModelSpec, WeightRole};
use crate::error::{Result, RuntimeError};
use crate::layer_parts::part_tensors;
use crate::weights::WeightStore;
use crossbeam::channel::{Receiver, Sender};
use layerstream_kernels::cudarc::driver::{CudaContext, CudaEvent, PinnedHostSlice};
use layerstream_planner::TensorDtype;
use layerstream_planner::format::align;
use layerstream_planner::split::LayerPart;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Tensors start at multiples of this in a staging buffer (aligned device reads).
/// Bytes one copy task moves at most.
const COPY_CHUNK: usize = 16 << 20;

/// Where one tensor sits in a staged layer.
#[derive(Debug, Clone)]
pub struct StagedTensor {
    /// Its role in the layer.
    pub role: WeightRole,
    /// Stored shape.
    pub shape: Vec<usize>,
    /// Stored dtype.
    pub dtype: TensorDtype,
    /// Offset in the staging buffer.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// The file holding its bytes (index in the inventory's files).
    pub file_index: usize,
    /// Where its bytes start in that file.
    pub file_offset: u64,
}

/// The layout of one layer (or split part of one) in a staging buffer.
#[derive(Debug, Clone)]
pub struct LayerLayout {
    /// Which layer.
    pub layer: usize,
    /// Which part of it.
    pub part: LayerPart,
    /// Tensors in buffer order.
    pub tensors: Vec<StagedTensor>,
    /// Bytes used.
    pub bytes: usize,
}

/// Lays out the tensors `part` of `layer` needs (aligned, in the spec's table order).
pub fn part_layout(
    store: &WeightStore,
    spec: &ModelSpec,
    layer: usize,
    part: &LayerPart,
) -> Result<LayerLayout> {
    let mut offset = 0;
    let mut tensors = Vec::new();
    for tensor in part_tensors(spec, layer, part) {
        // A whole tensor, or one expert's slice of a stacked one: one byte range.
        let ranges = store.ranges(&tensor.source)?;
        let [(entry, range)] = ranges.as_slice() else {
            return Err(RuntimeError::internal(format!(
                "{} has {} byte ranges; the CUDA staging takes one per weight",
                tensor.name(),
                ranges.len()
            )));
        };
        tensors.push(StagedTensor {
            role: tensor.role,
            shape: tensor.shape.clone(),
            dtype: entry.dtype,
            offset,
            len: range.len as usize,
            file_index: entry.file_index,
            file_offset: entry.byte_offset + range.offset,
        });
        offset = align(offset as u64 + range.len) as usize;
    }
    Ok(LayerLayout {
        layer,
        part: part.clone(),
        tensors,
        bytes: offset,
    })
}

/// A pinned staging buffer and the event of the last upload out of it.
pub struct StagingBuffer {
    /// Page-locked host memory.
    pub pinned: PinnedHostSlice<u8>,
    /// Recorded after the upload that last read `pinned`.
    pub upload_done: Option<CudaEvent>,
}

/// A filled staging buffer.
pub struct StagedLayer {
    /// Its position in the upload order.
    pub index: usize,
    /// Its layout.
    pub layout: LayerLayout,
    /// The buffer holding its bytes.
    pub buffer: StagingBuffer,
}

/// Two pinned buffers large enough for the largest layer.
pub fn staging_buffers(context: &Arc<CudaContext>, bytes: usize) -> Result<[StagingBuffer; 2]> {
    let alloc = || -> Result<StagingBuffer> {
        // SAFETY: the buffer is written in full (for the bytes a layer uses) before any read.
        let pinned = unsafe { context.alloc_pinned::<u8>(bytes.max(1)) }?;
        Ok(StagingBuffer {
            pinned,
            upload_done: None,
        })
    };
    Ok([alloc()?, alloc()?])
}

/// The reader thread: fills buffers from `free` with the layers (or parts) of `layouts` in
/// order and sends them on `ready`. Stops early when the executor hangs up.
pub fn read_layers(
    store: &WeightStore,
    layouts: &[LayerLayout],
    free: Receiver<StagingBuffer>,
    ready: Sender<Result<StagedLayer>>,
    copy_threads: usize,
) {
    for (index, layout) in layouts.iter().enumerate() {
        let Ok(mut buffer) = free.recv() else { return };
        let filled = fill(store, layout, &mut buffer, copy_threads);
        let message = filled.map(|()| StagedLayer {
            index,
            layout: layout.clone(),
            buffer,
        });
        if ready.send(message).is_err() {
            return;
        }
    }
}

fn fill(
    store: &WeightStore,
    layout: &LayerLayout,
    buffer: &mut StagingBuffer,
    copy_threads: usize,
) -> Result<()> {
    if let Some(done) = buffer.upload_done.take() {
        done.synchronize()?;
    }
    let destination = buffer.pinned.as_mut_slice()?;
    // Chunks of the pinned buffer, each read from its file with pread (the kernel copies
    // from the page cache; a copy out of the mapping would fault every page in first).
    let mut files: Vec<(usize, std::fs::File, &std::path::Path)> = Vec::new();
    let mut tasks: Vec<(&mut [u8], usize, u64)> = Vec::new(); // (destination, file, offset)
    let mut rest = &mut destination[..layout.bytes];
    let mut consumed = 0;
    for tensor in &layout.tensors {
        let (_, tail) = rest.split_at_mut(tensor.offset - consumed);
        let (mine, tail) = tail.split_at_mut(tensor.len);
        rest = tail;
        consumed = tensor.offset + tensor.len;
        let file = match files
            .iter()
            .position(|(index, ..)| *index == tensor.file_index)
        {
            Some(i) => i,
            None => {
                let path = store.file_path(tensor.file_index);
                let opened = std::fs::File::open(path)
                    .map_err(|e| RuntimeError::io("cannot open", path, e))?;
                files.push((tensor.file_index, opened, path));
                files.len() - 1
            }
        };
        for (i, d) in mine.chunks_mut(COPY_CHUNK).enumerate() {
            tasks.push((d, file, tensor.file_offset + (i * COPY_CHUNK) as u64));
        }
    }
    let per_thread = tasks.len().div_ceil(copy_threads.max(1)).max(1);
    let files = &files;
    std::thread::scope(|scope| {
        let mut tasks = tasks;
        let mut workers = Vec::new();
        while !tasks.is_empty() {
            let batch: Vec<_> = tasks.drain(..per_thread.min(tasks.len())).collect();
            workers.push(scope.spawn(move || -> Result<()> {
                for (d, file, offset) in batch {
                    let (_, handle, path) = &files[file];
                    handle
                        .read_exact_at(d, offset)
                        .map_err(|e| RuntimeError::io("cannot read", *path, e))?;
                }
                Ok(())
            }));
        }
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a weight reader thread does not panic"))
    })
}
