//! Subcommands of the `hermet` binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::{apikey, ops, serve};

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
    /// Operations on a running installation.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Compare the read side with a rebuild from the write side; print mismatches by kind and
    /// the consistency rate.
    Audit {
        /// Buckets (owner id modulo this) checksummed and compared.
        #[arg(long, default_value_t = 256)]
        buckets: u32,
        /// Audit this many random buckets instead of all.
        #[arg(long, conflicts_with = "full")]
        sample: Option<u32>,
        /// Audit every bucket (the default).
        #[arg(long)]
        full: bool,
        /// Fix what the audit found (delete the wrong rows, recompute them).
        #[arg(long)]
        repair: bool,
    },
    /// Recompute one user's rows and every row embedding the user, in one transaction.
    Repair {
        #[arg(long)]
        user: i64,
    },
    /// Rebuild views from the write side online: build shadow tables from a snapshot, catch up
    /// with the writes made meanwhile, swap them in atomically. Reads keep working throughout.
    Rebuild {
        /// Which view (with its reverse index) to rebuild.
        #[arg(long, value_enum, default_value_t = ViewArg::All)]
        view: ViewArg,
    },
    /// Move a projector consumer group back to an offset or a time; the projectors then
    /// reprocess from there (safe: projections are idempotent). The group must have no live
    /// members: stop its projectors first, or pass --wait to wait until they have left.
    Replay {
        /// The consumer group, with `projector.group_prefix` (e.g. conversation-view-updater).
        #[arg(long)]
        group: String,
        /// Start every partition at this offset (clamped to what the partition still holds).
        #[arg(
            long,
            conflicts_with = "from_time",
            required_unless_present = "from_time"
        )]
        from_offset: Option<i64>,
        /// Start every partition at its first record at or after this time: Unix milliseconds
        /// or a timestamp such as "2026-11-26 18:00:00+00".
        #[arg(long)]
        from_time: Option<String>,
        /// Wait up to SECS (at most a day) for the group's live members to leave instead of
        /// refusing.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=86_400))]
        wait: Option<u64>,
        /// Show the moves without committing them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Slot lag, consumer-group lag per partition, watermark LSNs, dead letters, last audit.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Dead letters of the projectors (Kafka topic `projector.dlq_topic`) and of the outbox.
    Dlq {
        #[command(subcommand)]
        cmd: DlqCmd,
    },
    /// API keys of the product's app server (the `/v1/server/...` routes).
    Apikey {
        #[command(subcommand)]
        cmd: ApikeyCmd,
    },
}

#[derive(Subcommand)]
enum ApikeyCmd {
    /// Create a key and print it (the only time it is shown) with its id.
    Create {
        /// What the key is for (1–64 characters).
        #[arg(long)]
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the keys (never the keys themselves: their id, name and first characters).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: requests with it are refused from now on.
    Revoke {
        /// The key's id (from `create` or `list`).
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ViewArg {
    Conversation,
    Contact,
    All,
}

#[derive(Subcommand)]
enum DlqCmd {
    /// List dead letters with their error and attempt count.
    List,
    /// Put dead letters back through the projection (after fixing their cause).
    Replay,
}

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(cli.config.as_deref()).context("loading configuration")?;
    hermet::init_tracing(&cfg.log.filter);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = run_command(&rt, cli.command, cfg);
    // Work still on a blocking thread (a Kafka metadata look-up waits up to its timeout while
    // the brokers are away) must not keep a finished command from exiting.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

fn run_command(rt: &tokio::runtime::Runtime, command: Command, cfg: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve { role } => rt.block_on(serve::serve(cfg, &role)),
        Command::Migrate => rt.block_on(serve::migrate_only(&cfg)),
        Command::Admin {
            cmd: AdminCmd::Dlq { cmd },
        } => rt.block_on(dlq(&cfg, cmd)),
        Command::Admin {
            cmd:
                AdminCmd::Audit {
                    buckets,
                    sample,
                    full: _,
                    repair,
                },
        } => rt.block_on(audit(&cfg, buckets, sample, repair)),
        Command::Admin {
            cmd: AdminCmd::Repair { user },
        } => rt.block_on(repair_user(&cfg, user)),
        Command::Admin {
            cmd: AdminCmd::Rebuild { view },
        } => {
            use hermet_core::projection::ReadModel;
            let models = match view {
                ViewArg::Conversation => vec![ReadModel::Conversations],
                ViewArg::Contact => vec![ReadModel::Contacts],
                ViewArg::All => ReadModel::ALL.to_vec(),
            };
            rt.block_on(ops::rebuild(&cfg, models))
        }
        Command::Admin {
            cmd:
                AdminCmd::Replay {
                    group,
                    from_offset,
                    from_time,
                    wait,
                    dry_run,
                },
        } => rt.block_on(ops::replay(
            &cfg,
            group,
            from_offset,
            from_time,
            wait,
            dry_run,
        )),
        Command::Admin {
            cmd: AdminCmd::Status { json },
        } => rt.block_on(ops::status(&cfg, json)),
        Command::Admin {
            cmd: AdminCmd::Apikey { cmd },
        } => match cmd {
            ApikeyCmd::Create { name, json } => rt.block_on(apikey::create(&cfg, &name, json)),
            ApikeyCmd::List { json } => rt.block_on(apikey::list(&cfg, json)),
            ApikeyCmd::Revoke { id, json } => rt.block_on(apikey::revoke(&cfg, id, json)),
        },
        Command::Config => {
            println!("{cfg:#?}");
            Ok(())
        }
    }
}

async fn dlq(cfg: &Config, cmd: DlqCmd) -> anyhow::Result<()> {
    use hermet_projector::dlq;
    let pool = hermet_store::connect_pool(&cfg.database.url, 2)?;
    let (brokers, topic) = (cfg.kafka.brokers.clone(), cfg.projector.dlq_topic.clone());
    match cmd {
        DlqCmd::List => {
            let letters =
                tokio::task::spawn_blocking(move || dlq::list(&brokers, &topic)).await??;
            println!(
                "kafka dead letters ({}): {}",
                cfg.projector.dlq_topic,
                letters.len()
            );
            for l in &letters {
                println!(
                    "  dlq {}:{}  group={} source={}:{}@{} attempts={} error={}",
                    l.dlq_partition,
                    l.dlq_offset,
                    l.group,
                    l.topic,
                    l.partition,
                    l.offset,
                    l.attempts,
                    l.error
                );
            }
            let conn = pool.get().await?;
            let rows = hermet_store::dead_letters::list_buried_outbox(&conn).await?;
            println!("outbox rows set aside: {}", rows.len());
            for r in rows {
                println!(
                    "  outbox {} attempts={} error={}",
                    r.id, r.attempts, r.error
                );
            }
        }
        DlqCmd::Replay => {
            let projection = cfg.store_config().projection;
            let cache = cfg.list_cache()?;
            let n = dlq::replay(&brokers, &topic, &pool, &projection, cache.as_ref()).await?;
            let m = dlq::replay_outbox(&pool).await?;
            println!("replayed {n} kafka dead letters; {m} outbox rows back in the outbox");
        }
    }
    Ok(())
}

async fn audit(
    cfg: &Config,
    buckets: u32,
    sample: Option<u32>,
    repair: bool,
) -> anyhow::Result<()> {
    use hermet_store::audit;
    anyhow::ensure!(
        (1..=65536).contains(&buckets),
        "--buckets must be between 1 and 65536"
    );
    let pool = hermet_store::connect_pool(&cfg.database.url, 2)?;
    let preview = cfg.read_side.preview_chars as i32;
    let chosen: Option<Vec<i32>> = sample.map(|n| {
        // Spread the sample over the buckets, starting at a time-dependent offset.
        let start = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            % u64::from(buckets)) as u32;
        let n = n.clamp(1, buckets);
        (0..n)
            .map(|i| ((start + i * (buckets / n).max(1)) % buckets) as i32)
            .collect()
    });
    let started = std::time::Instant::now();
    let conn = pool.get().await?;
    let report = audit::audit(&conn, preview, buckets, chosen.as_deref()).await?;
    println!(
        "audited {} of {} buckets in {:.2}s: {} expected rows, {} buckets differ",
        report.audited_buckets,
        report.buckets,
        started.elapsed().as_secs_f64(),
        report.expected_rows,
        report.differing_buckets
    );
    for ((table, kind), n) in report.summary() {
        println!("  {table}: {n} {}", kind.as_str());
    }
    for f in report.findings.iter().take(50) {
        let key: Vec<String> = f.key.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let fields = if f.fields.is_empty() {
            String::new()
        } else {
            format!(" [{}]", f.fields.join(", "))
        };
        println!(
            "  - {} {} {}{}",
            f.table,
            f.kind.as_str(),
            key.join(" "),
            fields
        );
    }
    if report.findings.len() > 50 {
        println!("  … {} more", report.findings.len() - 50);
    }
    println!(
        "consistency rate: {:.6}%",
        report.consistency_rate() * 100.0
    );
    audit::record(&conn, "cli", &report, repair)
        .await
        .context("recording the audit result")?;
    drop(conn);
    if repair && !report.findings.is_empty() {
        let mut conn = pool.get().await?;
        let cache = cfg.list_cache()?;
        let rows = audit::repair_committed(
            &mut conn,
            &report.findings,
            &cfg.store_config().projection,
            &*cache,
        )
        .await?;
        println!(
            "repaired: {} findings, {rows} view rows rewritten",
            report.findings.len()
        );
    }
    if !repair && !report.findings.is_empty() {
        anyhow::bail!(
            "the read side differs from the write side ({} findings)",
            report.findings.len()
        );
    }
    Ok(())
}

async fn repair_user(cfg: &Config, user: i64) -> anyhow::Result<()> {
    anyhow::ensure!(user > 0, "--user must be a positive id");
    let pool = hermet_store::connect_pool(&cfg.database.url, 2)?;
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let rows = hermet_store::audit::repair_user(&tx, user, &cfg.store_config().projection).await?;
    tx.commit().await?;
    cfg.list_cache()?.invalidate_all().await;
    println!("user {user}: {rows} view rows recomputed (own rows, rows embedding the user, both reverse indexes)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hermet").chain(args.iter().copied()))
    }

    #[test]
    fn benchmarks_are_not_part_of_hermet() {
        // They are the `hermet-bench` binary: the production binary does not link them.
        assert!(parse(&["bench", "send"]).is_err());
        use clap::CommandFactory;
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert!(names.iter().any(|n| n == "serve"), "{names:?}");
        assert!(!names.iter().any(|n| n == "bench"), "{names:?}");
    }

    #[test]
    fn replay_wait_is_bounded() {
        let replay = ["admin", "replay", "--group", "g", "--from-offset", "0"];
        let with = |wait: &str| {
            let mut a = replay.to_vec();
            a.extend(["--wait", wait]);
            parse(&a)
        };
        assert!(with("86400").is_ok());
        // Added to a clock reading: an unbounded value would overflow it.
        assert!(with("86401").is_err());
        assert!(with("18446744073709551615").is_err());
        assert!(parse(&replay).is_ok());
    }
}
