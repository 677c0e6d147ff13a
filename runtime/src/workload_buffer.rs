//! Workload-sized host values `(num_sequences * seq_len, hidden)`: hidden states and a split
//! layer's feed-forward accumulator. In memory, or — the planner's `disk` placement, or the
//! CPU backend when they do not fit --ram — in a file mapped into memory, which the OS pages
//! in and out; the file is deleted when the buffer is dropped.

use crate::error::{Result, RuntimeError};
use memmap2::MmapMut;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// Workload-sized f32 values on the host.
pub enum WorkloadBuffer {
    /// In memory.
    Memory(Vec<f32>),
    /// In a mapped file.
    Disk {
        /// The mapping (page-aligned, so f32-aligned).
        map: MmapMut,
        /// Values in it.
        len: usize,
        /// The file, deleted on drop.
        path: PathBuf,
    },
}

impl WorkloadBuffer {
    /// `len` zeros in memory.
    pub fn zeros(len: usize) -> Self {
        WorkloadBuffer::Memory(vec![0f32; len])
    }

    /// `len` zeros in a new file `dir/name` (sparse until written).
    pub fn zeros_on_disk(dir: &Path, name: &str, len: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io("cannot create", dir, e))?;
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| RuntimeError::io("cannot create", &path, e))?;
        let bytes = (len * 4).max(1);
        reserve_space(&file, bytes).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            RuntimeError::io(
                "cannot reserve space for the hidden states (free space on its disk, choose another --out, or give --ram more memory) in",
                &path,
                e,
            )
        })?;
        // SAFETY: the file was just created by this process and nothing else maps it.
        let map = unsafe { MmapMut::map_mut(&file) }
            .map_err(|e| RuntimeError::io("cannot map", &path, e))?;
        crate::mapping_guard::register(
            map.as_ptr(),
            map.len(),
            &path,
            "the workload file lost its backing (removed, or its disk is full); free space and run the same command again: finished layers are kept",
        );
        Ok(WorkloadBuffer::Disk { map, len, path })
    }

    /// Zeros in memory, or on disk in `dir` when given.
    pub fn zeros_in(dir: Option<&Path>, name: &str, len: usize) -> Result<Self> {
        match dir {
            Some(dir) => Self::zeros_on_disk(dir, name, len),
            None => Ok(Self::zeros(len)),
        }
    }

    /// Whether the values live in a file.
    pub fn on_disk(&self) -> bool {
        matches!(self, WorkloadBuffer::Disk { .. })
    }

    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        match self {
            WorkloadBuffer::Memory(values) => values,
            WorkloadBuffer::Disk { map, len, .. } => {
                // SAFETY: the mapping holds at least `len * 4` bytes and is page-aligned.
                unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<f32>(), *len) }
            }
        }
    }

    /// The values, to change.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        match self {
            WorkloadBuffer::Memory(values) => values,
            WorkloadBuffer::Disk { map, len, .. } => {
                // SAFETY: as in `as_slice`; `&mut self` makes this the only view.
                unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<f32>(), *len) }
            }
        }
    }
}

/// Gives `file` `bytes` of real blocks, so writing through its mapping cannot meet a full
/// disk (which would fault); a sparse file where the file system cannot allocate ahead.
fn reserve_space(file: &std::fs::File, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    file.set_len(bytes as u64)?;
    // SAFETY: a valid open descriptor and a range inside the file.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) } {
        0 | libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        code => Err(std::io::Error::from_raw_os_error(code)),
    }
}

impl Drop for WorkloadBuffer {
    fn drop(&mut self) {
        if let WorkloadBuffer::Disk { path, map, .. } = self {
            crate::mapping_guard::unregister(map.as_ptr());
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_on_disk_holds_values_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = WorkloadBuffer::zeros_on_disk(dir.path(), "hidden.f32", 1000).unwrap();
        assert!(buffer.on_disk());
        assert!(buffer.as_slice().iter().all(|&v| v == 0.0));
        buffer.as_mut_slice()[999] = 2.5;
        assert_eq!(buffer.as_slice()[999], 2.5);
        let path = dir.path().join("hidden.f32");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4000);
        drop(buffer);
        assert!(!path.exists());
    }

    /// Issue 15 item 7: the file's blocks exist before anything is written through the
    /// mapping (a sparse file would fault with SIGBUS when the disk fills).
    #[test]
    fn a_buffer_on_disk_has_its_space_reserved() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let len = 1 << 20;
        let buffer = WorkloadBuffer::zeros_on_disk(dir.path(), "hidden.f32", len).unwrap();
        let metadata = std::fs::metadata(dir.path().join("hidden.f32")).unwrap();
        assert!(
            metadata.blocks() * 512 >= (len * 4) as u64,
            "{} bytes allocated for {} bytes",
            metadata.blocks() * 512,
            len * 4
        );
        drop(buffer);
    }
}
