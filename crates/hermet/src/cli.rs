//! Subcommands of the `hermet` binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::serve;

#[derive(Parser)]
#[command(name = "hermet", version, about = "CQRS instant-messaging backend")]
struct Cli {
    /// TOML configuration file; `HERMET_*` environment variables override it.
    #[arg(long, short, global = true, env = "HERMET_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (migrates the database first).
    Serve {
        /// What to run; repeat or comma-separate (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        role: Vec<serve::Role>,
    },
    /// Apply database migrations and create the read-side shards, then exit.
    Migrate,
    /// Print the effective configuration (secrets redacted) and exit.
    Config,
    /// Run a benchmark scenario in a scratch database on the configured server (see BENCHMARKS.md).
    Bench {
        #[arg(value_enum)]
        scenario: hermet_bench::Scenario,
        #[command(flatten)]
        opts: hermet_bench::BenchOptions,
    },
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
    init_tracing(&cfg.log.filter);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Serve { role } => rt.block_on(serve::serve(cfg, &role)),
        Command::Migrate => rt.block_on(serve::migrate_only(&cfg)),
        Command::Bench { scenario, opts } => {
            let env = hermet_bench::BenchEnv::new(cfg.database.url.clone());
            rt.block_on(hermet_bench::run_and_print(&env, scenario, &opts))?;
            Ok(())
        }
        Command::Config => {
            println!("{cfg:#?}");
            Ok(())
        }
    }
}

fn init_tracing(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
