//! The `hermet` binary: parses the command line, loads configuration, sets up logging, then
//! hands over to the subcommand. Everything else lives in the library crates.

mod apikey;
mod cli;
mod ops;
mod serve;
mod shutdown;
mod telemetry;

// The configuration lives in this crate's library part, shared with `hermet-bench`.
use hermet::config;

fn main() -> std::process::ExitCode {
    hermet::exit_code(cli::run())
}
