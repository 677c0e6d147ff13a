//! A request to stop the run early (SIGINT, SIGTERM or SIGHUP, caught by the command line):
//! the layer loop checks it before every layer and micro-batch and returns
//! [`RuntimeError::Stopped`], abandoning the current layer; finished layers are written
//! before the command exits, so the same command continues the run.

use crate::error::{Result, RuntimeError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

static STOP: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// The flag a signal handler sets to the signal's number (0: run on).
pub fn stop_flag() -> Arc<AtomicUsize> {
    Arc::clone(STOP.get_or_init(|| Arc::new(AtomicUsize::new(0))))
}

/// The signal that asked the run to stop, if one did.
pub fn stop_requested() -> Option<i32> {
    let signal = STOP.get()?.load(Ordering::SeqCst);
    (signal != 0).then_some(signal as i32)
}

/// An error when a stop was requested.
pub(crate) fn check_stop() -> Result<()> {
    match stop_requested() {
        Some(signal) => Err(RuntimeError::Stopped { signal }),
        None => Ok(()),
    }
}

/// The usual name of a signal the command line catches.
pub fn signal_name(signal: i32) -> String {
    match signal {
        1 => "SIGHUP".into(),
        2 => "SIGINT (Ctrl-C)".into(),
        15 => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}
