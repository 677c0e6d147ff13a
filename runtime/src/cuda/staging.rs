//! The weight-streaming pipeline's host side: a reader thread copies each layer's tensors
//! from the memory-mapped safetensors into one of two pinned staging buffers (the copy is
//! split over several threads: one core's memcpy is slower than PCIe); the executor uploads
//! a filled buffer on the copy stream and hands it back with an event the reader waits on
//! before refilling it. While layer l computes, layer l+1 is read and uploaded. A split
//! layer streams as its parts, one after the other, in the same two buffers.

use crate::arch::{Layout, ModelSpec, WeightRole};
use crate::error::{Result, RuntimeError};
use crate::layer_parts::part_tensors;
use crate::weights::WeightStore;
use crossbeam::channel::{Receiver, Sender};
use layerstream_kernels::cudarc::driver::{CudaContext, CudaEvent, PinnedHostSlice};
use layerstream_planner::TensorDtype;
use layerstream_planner::format::{TensorRef, WeightFormat, align};
use layerstream_planner::split::LayerPart;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Tensors start at multiples of this in a staging buffer (aligned device reads).
/// Bytes one copy task moves at most.
const COPY_CHUNK: usize = 16 << 20;

/// One byte range of the checkpoint copied into a staging buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedPiece {
    /// Offset in the staging buffer.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
    /// The file holding its bytes (index in the inventory's files).
    pub file_index: usize,
    /// Where its bytes start in that file.
    pub file_offset: u64,
}

impl StagedPiece {
    /// Its bytes in the staging buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Where one weight's bytes sit in a staged layer, and how they become its role's matrix
/// or vector.
#[derive(Debug, Clone)]
pub struct StagedTensor {
    /// Its role in the layer.
    pub role: WeightRole,
    /// The shape its values are stored in (the spec's: a tensor or slice; for a quantized
    /// weight, its matrix `[rows, cols]`).
    pub shape: Vec<usize>,
    /// Stored dtype of its values.
    pub dtype: TensorDtype,
    /// How the stored values become the role's.
    pub layout: Layout,
    /// Its values' bytes.
    pub values: StagedPiece,
    /// Its scales' bytes, for a quantized weight (the format).
    pub scales: Option<(WeightFormat, StagedPiece)>,
    /// A zero-centred norm weight: `1 + w` after the conversion to f32.
    pub unit_offset: bool,
}

/// The layout of one layer (or split part of one) in a staging buffer.
#[derive(Debug, Clone)]
pub struct LayerLayout {
    /// Which layer.
    pub layer: usize,
    /// Which part of it.
    pub part: LayerPart,
    /// Weights in the spec's table order.
    pub tensors: Vec<StagedTensor>,
    /// The byte ranges to copy, each once (weights reading the same bytes share a piece).
    pub pieces: Vec<StagedPiece>,
    /// Bytes used.
    pub bytes: usize,
}

/// Lays out the tensors `part` of `layer` needs (aligned, in the spec's table order; bytes
/// two weights read, such as GPT-OSS's fused gate and up, are staged once).
pub fn part_layout(
    store: &WeightStore,
    spec: &ModelSpec,
    layer: usize,
    part: &LayerPart,
) -> Result<LayerLayout> {
    let mut offset = 0;
    let mut pieces: Vec<StagedPiece> = Vec::new();
    let mut tensors = Vec::new();
    // A whole tensor, or one expert's slice of a stacked one: one byte range.
    let mut piece_of = |source: &TensorRef| -> Result<(TensorDtype, StagedPiece)> {
        let ranges = store.ranges(source)?;
        let [(entry, range)] = ranges.as_slice() else {
            return Err(RuntimeError::internal(format!(
                "{} has {} byte ranges; the CUDA staging takes one per stored part",
                source.name(),
                ranges.len()
            )));
        };
        let (file_index, file_offset) = (entry.file_index, entry.byte_offset + range.offset);
        let len = range.len as usize;
        if let Some(p) = pieces
            .iter()
            .find(|p| (p.file_index, p.file_offset, p.len) == (file_index, file_offset, len))
        {
            return Ok((entry.dtype, p.clone()));
        }
        let piece = StagedPiece {
            offset,
            len,
            file_index,
            file_offset,
        };
        offset = align(offset as u64 + range.len) as usize;
        pieces.push(piece.clone());
        Ok((entry.dtype, piece))
    };
    for tensor in part_tensors(spec, layer, part) {
        let (dtype, values, scales) = match &tensor.source {
            TensorRef::Quantized {
                format,
                values,
                scales,
            } => {
                let (dtype, values) = piece_of(values)?;
                (dtype, values, Some((*format, piece_of(scales)?.1)))
            }
            source => {
                let (dtype, values) = piece_of(source)?;
                (dtype, values, None)
            }
        };
        tensors.push(StagedTensor {
            role: tensor.role,
            shape: tensor.shape.clone(),
            dtype,
            layout: tensor.layout,
            values,
            scales,
            unit_offset: tensor.unit_offset,
        });
    }
    Ok(LayerLayout {
        layer,
        part: part.clone(),
        tensors,
        pieces,
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
    for piece in &layout.pieces {
        let (_, tail) = rest.split_at_mut(piece.offset - consumed);
        let (mine, tail) = tail.split_at_mut(piece.len);
        rest = tail;
        consumed = piece.offset + piece.len;
        let file = match files
            .iter()
            .position(|(index, ..)| *index == piece.file_index)
        {
            Some(i) => i,
            None => {
                let path = store.file_path(piece.file_index);
                let opened = std::fs::File::open(path)
                    .map_err(|e| RuntimeError::io("cannot open", path, e))?;
                files.push((piece.file_index, opened, path));
                files.len() - 1
            }
        };
        for (i, d) in mine.chunks_mut(COPY_CHUNK).enumerate() {
            tasks.push((d, file, piece.file_offset + (i * COPY_CHUNK) as u64));
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
