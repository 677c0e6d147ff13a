//! The files of an output folder: hidden-state checkpoints and per-layer results, as
//! safetensors (loadable from Python) and JSON, written atomically.

use crate::analysis::LayerReport;
use crate::error::{Result, RuntimeError};
use crate::executor::StartHidden;
use layerstream_planner::progress::{FileRecord, Sha256Writer};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Relative path of the hidden states after `layer`.
pub fn hidden_path(layer: usize) -> String {
    format!("hidden/after_layer_{layer}.safetensors")
}

/// Relative path of a layer's summary.
pub fn layer_json_path(layer: usize) -> String {
    format!("layers/layer_{layer}.json")
}

/// Relative path of a layer's per-(sequence, dimension) statistics.
pub fn layer_statistics_path(layer: usize) -> String {
    format!("layers/layer_{layer}.safetensors")
}

static WRITES: AtomicUsize = AtomicUsize::new(0);

/// Writes `bytes` to `folder/relative` atomically and returns its record.
///
/// Fault injection for tests: with `LAYERSTREAM_FAULT_WRITE=N`, the N-th checkpoint write of
/// the process fails as a full disk would; with `LAYERSTREAM_FAULT_WRITE_PATH=P`, every write
/// of a file whose path ends with `P`. An injected fault strikes after the first bytes.
pub fn write_file(folder: &Path, relative: &str, bytes: &[u8]) -> Result<FileRecord> {
    write_file_with(folder, relative, |file| file.write_all(bytes))
}

/// Whether the fault injection (see [`write_file`]) strikes this write.
fn fault_injected(path: &Path) -> bool {
    let count = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
    let by_count = std::env::var("LAYERSTREAM_FAULT_WRITE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n == count);
    let by_path = std::env::var_os("LAYERSTREAM_FAULT_WRITE_PATH")
        .is_some_and(|p| !p.is_empty() && path.ends_with(Path::new(&p)));
    by_count || by_path
}

/// As [`write_file`], the contents written by `fill` in pieces and hashed on the way.
pub fn write_file_with(
    folder: &Path,
    relative: &str,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<FileRecord> {
    let path = folder.join(relative);
    let injected = fault_injected(&path);
    let mut hasher = Sha256Writer::default();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| RuntimeError::io("cannot create", parent, e))?;
    }
    let written = layerstream_planner::write_atomically_with(&path, |file| {
        let mut tee = Tee {
            file,
            hasher: &mut hasher,
        };
        match injected {
            false => fill(&mut tee),
            true => {
                fill(&mut DiskFullAfter {
                    inner: &mut tee,
                    room: 4096,
                })?;
                // A file smaller than the room fails when it would be flushed.
                Err(disk_full())
            }
        }
    });
    written.map_err(|e| RuntimeError::io("cannot write", &path, e))?;
    Ok(FileRecord {
        path: relative.to_string(),
        bytes: hasher.bytes(),
        sha256: hasher.hex(),
    })
}

fn disk_full() -> std::io::Error {
    std::io::Error::other("No space left on device (injected by LAYERSTREAM_FAULT_WRITE)")
}

/// A writer that takes `room` bytes and then fails as a full disk (fault injection).
struct DiskFullAfter<'a> {
    inner: &'a mut dyn Write,
    room: usize,
}

impl Write for DiskFullAfter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(disk_full());
        }
        let n = self.inner.write(&buf[..buf.len().min(self.room)])?;
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes to a file and a hasher.
struct Tee<'a> {
    file: &'a mut dyn Write,
    hasher: &'a mut Sha256Writer,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Values converted to bytes per piece when streaming hidden states.
const HIDDEN_CHUNK: usize = 1 << 20;

/// Writes hidden states `(tokens, width)` after `layer` as safetensors (`hidden_states`, F32,
/// metadata `after_layer`), streamed: no second copy of them is made in memory.
pub fn write_hidden(
    folder: &Path,
    relative: &str,
    hidden: &[f32],
    width: usize,
    layer: usize,
) -> Result<FileRecord> {
    let data_bytes = std::mem::size_of_val(hidden);
    let header = serde_json::json!({
        "__metadata__": {"after_layer": layer.to_string()},
        "hidden_states": {
            "dtype": "F32",
            "shape": [hidden.len() / width, width],
            "data_offsets": [0, data_bytes],
        },
    });
    let mut header = header.to_string().into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    write_file_with(folder, relative, |file| {
        file.write_all(&(header.len() as u64).to_le_bytes())?;
        file.write_all(&header)?;
        let mut bytes = Vec::with_capacity(HIDDEN_CHUNK * 4);
        for chunk in hidden.chunks(HIDDEN_CHUNK) {
            bytes.clear();
            bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            file.write_all(&bytes)?;
        }
        Ok(())
    })
}

/// Checks the header of hidden states written by [`write_hidden`] (shape `(tokens, width)`,
/// F32, the file's length) and returns where their values start, without reading them.
pub fn hidden_source(
    folder: &Path,
    relative: &str,
    tokens: usize,
    width: usize,
) -> Result<StartHidden> {
    let path = folder.join(relative);
    let damaged = |what: String| RuntimeError::Checkpoint {
        path: path.clone(),
        message: what,
    };
    let mut file = File::open(&path).map_err(|e| RuntimeError::io("cannot read", &path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| RuntimeError::io("cannot read", &path, e))?
        .len();
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|e| damaged(format!("not a hidden-state checkpoint: {e}")))?;
    let header_len = u64::from_le_bytes(length);
    if header_len > 1 << 20 || 8 + header_len > file_len {
        return Err(damaged(
            "not a hidden-state checkpoint: bad header length".into(),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| damaged(format!("not a hidden-state checkpoint: {e}")))?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| damaged(format!("not a hidden-state checkpoint: {e}")))?;
    let tensor = &header["hidden_states"];
    let data_bytes = (tokens * width * 4) as u64;
    let expected = serde_json::json!({
        "dtype": "F32",
        "shape": [tokens, width],
        "data_offsets": [0, data_bytes],
    });
    if tensor != &expected || 8 + header_len + data_bytes != file_len {
        return Err(damaged(format!(
            "hidden_states is {tensor} in a file of {file_len} bytes, expected F32 [{tokens}, {width}]"
        )));
    }
    Ok(StartHidden::File {
        path,
        data_offset: 8 + header_len,
    })
}

/// Reads a layer summary written as JSON.
pub fn read_layer_report(folder: &Path, relative: &str) -> Result<LayerReport> {
    let path = folder.join(relative);
    let text =
        std::fs::read_to_string(&path).map_err(|e| RuntimeError::io("cannot read", &path, e))?;
    serde_json::from_str(&text).map_err(|e| RuntimeError::Checkpoint {
        path,
        message: format!("not a layer summary: {e}"),
    })
}
