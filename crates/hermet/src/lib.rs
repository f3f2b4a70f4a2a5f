//! The library part of the `hermet` crate: what a second binary needs to start the way `hermet`
//! does. `hermet-bench` uses it, so the benchmarks read the same configuration file and
//! `HERMET_*` variables ([`config::Config::load`]), log the same way ([`init_tracing`]) and
//! report errors the same way ([`exit_code`]) as `hermet` itself.

pub mod config;

use std::process::ExitCode;

/// Logs to stderr: `RUST_LOG` if set and valid, else `default_filter` (`log.filter`), else `info`.
pub fn init_tracing(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs on stderr: stdout is the commands' output (`--json` is piped into other tools).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
}

/// The exit status of a command: on error, one readable report on stderr (the error and its
/// causes) and a failure status.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
