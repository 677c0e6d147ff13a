//! Printing that a closed pipe cannot break: `println!`, `print!`, `eprintln!` and `eprint!`
//! in this crate are the macros below (defined in `main.rs` before the modules), which write
//! through these functions and drop what a closed stdout or stderr (`layerstream analyze |
//! head`, a notebook cell that went away) no longer takes, instead of panicking. The command
//! goes on and ends with its usual exit status; its files are written as always.
//!
//! With `--progress json` every line on stderr is one JSON object: the progress events as
//! they are, and any other line (the run's first line, resume notes, warnings, the final
//! error) wrapped as `{"event": "message", "message": ...}` (`"error"` for the error a
//! command ends with), so a notebook or dashboard parses the whole stream.

use std::fmt::Arguments;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON_STDERR: AtomicBool = AtomicBool::new(false);

/// From now on every stderr line is a JSON object (`--progress json`).
pub fn json_stderr() {
    JSON_STDERR.store(true, Ordering::SeqCst);
}

/// Writes to stdout, ignoring a closed pipe.
pub fn to_stdout(args: Arguments, newline: bool) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args);
    if newline {
        let _ = out.write_all(b"\n");
    }
}

/// Writes to stderr, ignoring a closed pipe.
pub fn to_stderr(args: Arguments, newline: bool) {
    if JSON_STDERR.load(Ordering::SeqCst) {
        let text = args.to_string();
        let line = match text.trim_end() {
            "" => return,
            event if event.starts_with('{') => event.to_string(),
            error if error.starts_with("error: ") => {
                serde_json::json!({"event": "error", "message": &error["error: ".len()..]})
                    .to_string()
            }
            message => serde_json::json!({"event": "message", "message": message}).to_string(),
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    if newline {
        let _ = err.write_all(b"\n");
    }
}
