//! `layerstream`: analyse the activations of language models larger than your GPU.

mod args;
mod commands;
mod embedded;
mod progress;

use args::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Analyze(args) => commands::analyze::analyze(args),
        Command::Score(args) => commands::score::score(args),
        Command::Inspect(args) => commands::inspect::inspect(args),
        Command::Status(args) => commands::status::status(args),
        Command::Estimate(args) => commands::estimate::estimate(args),
        Command::Compare(args) => commands::compare::compare(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
