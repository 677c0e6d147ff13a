//! One run at a time per output folder: a run holds an OS file lock on
//! `OUT/.layerstream.lock` (flock, released by the kernel on any exit, kill -9 included) and
//! writes its process id into the file, so a second run into the same folder is refused with
//! the process that holds it, before it reads or deletes anything there.

use crate::error::{Result, RuntimeError};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Prefix of the file that proves an output folder can be written (deleted at once).
pub const WRITE_PROBE_PREFIX: &str = ".layerstream-write-check-";

/// The lock file's name in an output folder.
pub const LOCK_FILE: &str = ".layerstream.lock";

/// The held lock of an output folder; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Takes the lock of `dir` (which must exist), or says which process holds it.
    pub fn take(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| RuntimeError::io("cannot create", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.split_whitespace().next() {
                    Some(pid) => format!("process {pid}"),
                    None => "another process".to_string(),
                };
                return Err(RuntimeError::InvalidRequest(format!(
                    "{} is in use by another layerstream run ({holder}); wait for it to finish or stop it, or choose another --out",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(RuntimeError::io("cannot lock", &path, e)),
        }
        let write_error = |e| RuntimeError::io("cannot write", &path, e);
        file.set_len(0).map_err(write_error)?;
        file.seek(SeekFrom::Start(0)).map_err(write_error)?;
        writeln!(file, "{}", std::process::id()).map_err(write_error)?;
        file.flush().map_err(write_error)?;
        Ok(FolderLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_refuses_a_second_taker_naming_the_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::take(dir.path()).unwrap();
        let refused = FolderLock::take(dir.path()).unwrap_err().to_string();
        let pid = std::process::id().to_string();
        assert!(refused.contains(&format!("process {pid}")), "{refused}");
        assert!(
            refused.contains("in use by another layerstream run"),
            "{refused}"
        );
        drop(first);
        FolderLock::take(dir.path()).unwrap();
    }
}
