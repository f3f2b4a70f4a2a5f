//! The `hermet` binary: parses the command line, loads configuration, sets up logging, then
//! hands over to the subcommand. Everything else lives in the library crates.

mod cli;
mod config;
mod ops;
mod serve;
mod shutdown;
mod telemetry;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable report: the error and its causes.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
