//! Throwaway trial: `cargo run -p hermet-bench --example trial -- send --users 2000`.
use clap::Parser;
use hermet_bench::{BenchEnv, BenchOptions, Scenario};

#[derive(Parser)]
struct Cli {
    scenario: Scenario,
    #[arg(long)]
    stats_only: bool,
    #[command(flatten)]
    opts: BenchOptions,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    if cli.stats_only {
        let plan = hermet_bench::workload::Plan::generate(&cli.opts.workload())?;
        let mut d = plan.degrees();
        d.sort_unstable();
        let mean = d.iter().sum::<usize>() as f64 / d.len() as f64;
        let zero = d.iter().filter(|&&x| x == 0).count();
        println!(
            "users {} friendships {} mean {mean:.1} median {} p99 {} max {} zero {zero}; groups {} memberships {} largest {}",
            plan.users(), plan.friendships.len(), d[d.len() / 2], d[d.len() * 99 / 100], d[d.len() - 1],
            plan.groups.len(), plan.memberships(), plan.groups.iter().map(|g| g.size()).max().unwrap_or(0)
        );
        return Ok(());
    }
    let url = std::env::var("HERMET_DATABASE_URL")?;
    hermet_bench::run_and_print(&BenchEnv::new(url), cli.scenario, &cli.opts).await?;
    Ok(())
}
