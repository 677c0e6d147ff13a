//! `layerstream`: analyse the activations of language models larger than your GPU.

// Printing that survives a closed pipe (`output.rs`); defined before the modules so that
// every `println!` and `eprintln!` in them is one of these.
macro_rules! println {
    () => { $crate::output::to_stdout(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::to_stdout(format_args!($($arg)*), true) };
}
macro_rules! print {
    ($($arg:tt)*) => { $crate::output::to_stdout(format_args!($($arg)*), false) };
}
macro_rules! eprintln {
    () => { $crate::output::to_stderr(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::to_stderr(format_args!($($arg)*), true) };
}
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::output::to_stderr(format_args!($($arg)*), false) };
}

mod args;
mod chat_template;
mod commands;
mod embedded;
mod hub_cache;
mod hub_download;
mod output;
mod progress;

use args::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: tokenizing allocates a string per token.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    catch_stop_signals();
    if !matches!(cli.command, Command::Analyze(_) | Command::Score(_)) {
        end_quietly_on_a_closed_pipe();
    }
    let progress = match &cli.command {
        Command::Analyze(args) => Some(args.run.progress),
        Command::Score(args) => Some(args.run.progress),
        _ => None,
    };
    if progress == Some(progress::ProgressMode::Json) {
        output::json_stderr();
    }
    if let Ok(threads) = std::env::var("LAYERSTREAM_THREADS")
        && !threads.trim().parse::<usize>().is_ok_and(|n| n > 0)
    {
        eprintln!(
            "error: LAYERSTREAM_THREADS={threads:?} is not a positive whole number; set it to a thread count or unset it"
        );
        return ExitCode::FAILURE;
    }
    let result = match &cli.command {
        Command::Analyze(args) => commands::analyze::analyze(args),
        Command::Score(args) => commands::score::score(args),
        Command::Inspect(args) => commands::inspect::inspect(args),
        Command::Status(args) => commands::status::status(args),
        Command::Estimate(args) => commands::estimate::estimate(args),
        Command::Compare(args) => commands::compare::compare(args),
        Command::Merge(args) => commands::merge::merge(args),
    };
    match (result, layerstream_runtime::stop::stop_requested()) {
        (Ok(()), _) => ExitCode::SUCCESS,
        // The shell's convention for a process ended by a signal: 128 + its number.
        (Err(error), Some(signal)) => {
            eprintln!("{error:#}");
            ExitCode::from(128 + signal as u8)
        }
        (Err(error), None) => {
            eprintln!("error: {error:#}");
            // A shard still running: the scheduler may retry later (EX_TEMPFAIL).
            let busy = error.chain().any(|e| {
                matches!(
                    e.downcast_ref::<layerstream_runtime::RuntimeError>(),
                    Some(layerstream_runtime::RuntimeError::ShardBusy(_))
                )
            });
            if busy {
                ExitCode::from(75)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The report commands (`inspect`, `estimate`, `status`, `compare`) end as other command-line
/// tools do when their output's reader goes away (`layerstream estimate ... | head`): by
/// SIGPIPE, instead of a panic on the failed print. Runs keep Rust's default (the write
/// fails and the run's error handling applies), so a closed pipe never cuts a layer short.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: restoring a signal's default disposition, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// SIGINT, SIGTERM and SIGHUP ask the run to stop cleanly (finished layers written, a line
/// saying how to continue); a second one ends the process at once.
fn catch_stop_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let flag = layerstream_runtime::stop::stop_flag();
    let caught = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        // Registered first, so it sees `caught` as it was before this signal.
        let _ = signal_hook::flag::register_conditional_default(signal, caught.clone());
        let _ = signal_hook::flag::register(signal, caught.clone());
        let _ = signal_hook::flag::register_usize(signal, flag.clone(), signal as usize);
    }
}
