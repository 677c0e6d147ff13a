//! Printing that a closed pipe cannot break: `println!`, `print!`, `eprintln!` and `eprint!`
//! in this crate are the macros below (defined in `main.rs` before the modules), which write
//! through these functions and drop what a closed stdout or stderr (`layerstream analyze |
//! head`, a notebook cell that went away) no longer takes, instead of panicking. The command
//! goes on and ends with its usual exit status; its files are written as always.

use std::fmt::Arguments;
use std::io::Write;

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
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args);
    if newline {
        let _ = err.write_all(b"\n");
    }
}
