//! Memory-mapped files that lose their backing. Reading a mapped model file that was
//! truncated or replaced during a run, or writing a mapped hidden-state file on a disk that
//! filled, raises SIGBUS, which ends a process without a word. Every mapping is registered
//! here with the message to print; a SIGBUS handler finds the mapping the faulting address
//! lies in, writes that message (naming the file) and exits with status 1. The executor also
//! checks before every layer that the model's files still have the length they had when
//! they were mapped ([`check_length`]), which turns most such changes into an ordinary error
//! before anything faults.

use crate::error::{Result, RuntimeError};
use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Mappings the handler can name (more are still guarded, with a generic message).
const SLOTS: usize = 1024;

/// One registered mapping: `[start, start + len)` and its message (leaked, `'static`).
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    message: AtomicPtr<u8>,
    message_len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    message: AtomicPtr::new(std::ptr::null_mut()),
    message_len: AtomicUsize::new(0),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
static INSTALL: Once = Once::new();

const UNKNOWN: &[u8] = b"error: a memory-mapped file lost its backing (SIGBUS): a model file changed or was truncated during the run, or the disk holding the hidden states filled up. Finished layers are kept; fix the cause and run the same command again\n";

/// Registers the mapping `[start, start + len)` of `path`; `what` says what the file is and
/// what to do, for the message.
pub fn register(start: *const u8, len: usize, path: &Path, what: &str) {
    INSTALL.call_once(install_handler);
    let message = format!("error: {}: {what}\n", path.display()).into_bytes();
    let message: &'static mut [u8] = Box::leak(message.into_boxed_slice());
    for slot in &TABLE {
        if slot
            .start
            .compare_exchange(0, start as usize, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            slot.message_len.store(message.len(), Ordering::SeqCst);
            slot.message.store(message.as_mut_ptr(), Ordering::SeqCst);
            slot.len.store(len, Ordering::SeqCst);
            return;
        }
    }
}

/// Forgets the mapping that starts at `start` (it was unmapped).
pub fn unregister(start: *const u8) {
    for slot in &TABLE {
        if slot.start.load(Ordering::SeqCst) == start as usize {
            slot.len.store(0, Ordering::SeqCst);
            slot.start.store(0, Ordering::SeqCst);
        }
    }
}

/// Refuses to go on when `path` no longer has the `mapped` length it had when it was mapped.
pub fn check_length(path: &Path, mapped: usize) -> Result<()> {
    let now = std::fs::metadata(path).map(|m| m.len()).ok();
    match now {
        Some(len) if len == mapped as u64 => Ok(()),
        _ => Err(RuntimeError::Safetensors {
            path: path.to_path_buf(),
            message: format!(
                "changed during the run ({} bytes when it was opened, {} now); put the original file back and run the same command again (finished layers are kept)",
                mapped,
                now.map_or("missing".to_string(), |n| n.to_string())
            ),
        }),
    }
}

/// Fault injection for tests: with `LAYERSTREAM_FAULT_TRUNCATE=N` (or `N:unchecked`), the
/// first weight file is cut to its first 4 KiB when layer `N` is about to be loaded, as a
/// user replacing the file during a run would; `unchecked` skips the length check so the
/// read meets the lost mapping. Returns whether the check is to be skipped.
pub fn truncate_for_test(weights: &crate::weights::WeightStore, layer: usize) -> bool {
    let Ok(value) = std::env::var("LAYERSTREAM_FAULT_TRUNCATE") else {
        return false;
    };
    let (at, unchecked) = match value.split_once(':') {
        Some((n, mode)) => (n.parse::<usize>().ok(), mode == "unchecked"),
        None => (value.parse::<usize>().ok(), false),
    };
    if at != Some(layer) {
        return false;
    }
    if let Ok(file) = std::fs::OpenOptions::new()
        .write(true)
        .open(weights.file_path(0))
    {
        let _ = file.set_len(4096);
    }
    unchecked
}

fn install_handler() {
    // SAFETY: a plain sigaction with a handler that only reads atomics, calls write(2) and
    // _exit(2), all async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

extern "C" fn on_sigbus(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let address = unsafe { (*info).si_addr() } as usize;
    let mut message: (*const u8, usize) = (UNKNOWN.as_ptr(), UNKNOWN.len());
    for slot in &TABLE {
        let (start, len) = (
            slot.start.load(Ordering::SeqCst),
            slot.len.load(Ordering::SeqCst),
        );
        if start != 0 && address >= start && address < start + len {
            message = (
                slot.message.load(Ordering::SeqCst),
                slot.message_len.load(Ordering::SeqCst),
            );
            break;
        }
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the message is 'static.
    unsafe {
        libc::write(2, message.0.cast(), message.1);
        libc::_exit(1);
    }
}
