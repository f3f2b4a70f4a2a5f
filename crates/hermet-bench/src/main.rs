//! The `hermet-bench` binary: runs one benchmark scenario (BENCHMARKS.md) in a scratch database
//! on the configured server and prints its report.
//!
//! It reads the configuration exactly as `hermet` does (`--config` / `HERMET_CONFIG`, then the
//! `HERMET_*` variables, validated): the database URL is the admin URL of the scratch databases,
//! `kafka.brokers` and `redis.url` are what `cdc`, `modes`, `peers`, `fanout`, `send-http` and
//! `cache` use. The scenarios that run `hermet serve` as child processes (`cdc`, `peers`,
//! `fanout`, `send-http`) run the `hermet` binary next to this one unless `--hermet-bin` names
//! another.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hermet::config::Config;
use hermet_bench::{BenchEnv, BenchOptions, Scenario};

#[derive(Parser)]
#[command(
    name = "hermet-bench",
    version,
    about = "Run a benchmark scenario of hermet in a scratch database on the configured server \
             (see BENCHMARKS.md)"
)]
struct Cli {
    /// TOML configuration file, as for `hermet`; `HERMET_*` environment variables override it.
    #[arg(long, short, env = "HERMET_CONFIG")]
    config: Option<PathBuf>,
    /// `cdc`, `peers`, `fanout`, `send-http`: the `hermet` binary whose `serve` they run
    /// [default: `hermet` next to this executable, i.e. in the same target directory].
    #[arg(long, env = "HERMET_BIN")]
    hermet_bin: Option<PathBuf>,
    #[arg(value_enum)]
    scenario: Scenario,
    #[command(flatten)]
    opts: BenchOptions,
}

fn main() -> ExitCode {
    hermet::exit_code(run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
    hermet::init_tracing(&cfg.log.filter);
    let env = BenchEnv {
        kafka_brokers: cfg.kafka.brokers.clone(),
        redis_url: cfg.redis.url.clone(),
        hermet_bin: cli.hermet_bin,
        ..BenchEnv::new(cfg.database.url.clone())
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(hermet_bench::run_and_print(&env, cli.scenario, &cli.opts));
    // As in `hermet`: a Kafka look-up left on a blocking thread must not keep a finished run
    // from exiting.
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hermet-bench").chain(args.iter().copied()))
    }

    #[test]
    fn takes_a_scenario_its_options_and_the_hermet_binary() {
        let cli = parse(&["cdc", "--rows", "1000", "--hermet-bin", "/opt/hermet"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cli.scenario, Scenario::Cdc);
        assert_eq!(cli.opts.rows, 1000);
        assert_eq!(cli.hermet_bin, Some(PathBuf::from("/opt/hermet")));
        assert!(parse(&[]).is_err(), "a scenario is required");
        assert!(parse(&["nope"]).is_err(), "an unknown scenario is refused");
    }
}
