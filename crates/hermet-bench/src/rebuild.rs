//! `hermet-bench rebuild`: online-rebuild and audit throughput on a large read side.
//!
//! The write side is seeded set-based by [`hermet_testkit::seed::write_side`] (the recovery tests
//! seed with it too), not through commands, so a million view rows take seconds: `users` users,
//! each befriending the next `k = mean_friends / 2` users, and `groups` groups of
//! [`GROUP_SIZE`] members. View rows: `4·users·k` (conversations and contacts of the pairs)
//! `+ 20·groups`, plus as many reverse-index entries as pairs × 4.
//!
//! Measured: a rebuild into an empty read side, a rebuild over a full one (the operator's case),
//! and a full audit (every bucket), each as rows per second of wall time.

use std::fmt;
use std::time::Instant;

use hermet_testkit::seed::{self, GROUP_SIZE};
use serde::Serialize;

use crate::{admin_connect, drop_database, BenchEnv, BenchError, BenchOptions};

#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub what: &'static str,
    pub rows: u64,
    pub secs: f64,
    pub rows_per_sec: f64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RebuildBenchReport {
    pub users: i64,
    pub pairs_per_user: i64,
    pub groups: i64,
    pub shards: u32,
    pub seed_rows: u64,
    pub seed_secs: f64,
    pub view_rows: i64,
    pub index_rows: i64,
    pub results: Vec<Measured>,
}

impl fmt::Display for RebuildBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "### bench rebuild: {} users, {} pairs each, {} groups of {GROUP_SIZE}, {} shards",
            self.users, self.pairs_per_user, self.groups, self.shards
        )?;
        writeln!(
            f,
            "\nseeded {} write-side rows in {:.1}s; read side: {} view rows + {} reverse-index rows\n",
            self.seed_rows, self.seed_secs, self.view_rows, self.index_rows
        )?;
        writeln!(f, "| what | rows | seconds | rows/s | detail |")?;
        writeln!(f, "|---|---:|---:|---:|---|")?;
        for m in &self.results {
            writeln!(
                f,
                "| {} | {} | {:.2} | {:.0} | {} |",
                m.what, m.rows, m.secs, m.rows_per_sec, m.detail
            )?;
        }
        Ok(())
    }
}

fn db(what: &str) -> impl Fn(tokio_postgres::Error) -> BenchError + '_ {
    move |source| BenchError::Db {
        what: what.to_owned(),
        source,
    }
}

/// Runs the benchmark in a scratch database (dropped afterwards unless `--keep-database`).
pub async fn run(env: &BenchEnv, opts: &BenchOptions) -> Result<RebuildBenchReport, BenchError> {
    let users = i64::try_from(opts.users)
        .map_err(|_| BenchError::InvalidOptions("--users is too large".into()))?;
    if users < 1_000 {
        return Err(BenchError::InvalidOptions(
            "bench rebuild needs --users 1000 or more".into(),
        ));
    }
    let pairs = ((opts.mean_friends / 2.0).round() as i64).clamp(1, users / 2 - 1);
    let groups = opts.groups.map_or(users / 10, |g| g as i64);
    let shards = opts.shards.unwrap_or(env.shards);
    let (name, url) = crate::create_scratch_database(env).await?;
    eprintln!("bench rebuild: scratch database {name}");
    let result = run_in(&url, users, pairs, groups, shards, opts).await;
    if opts.keep_database {
        eprintln!("bench rebuild: kept database {name}");
    } else if let Err(e) = drop_database(&env.database_url, &name).await {
        eprintln!("bench rebuild: could not drop the scratch database {name}: {e}");
    }
    result
}

async fn run_in(
    url: &str,
    users: i64,
    pairs: i64,
    groups: i64,
    shards: u32,
    opts: &BenchOptions,
) -> Result<RebuildBenchReport, BenchError> {
    use hermet_store::{audit, rebuild};
    let mut client = admin_connect(url).await?;
    hermet_store::migrate::migrate(&mut client, shards).await?;
    let t = Instant::now();
    eprintln!("bench rebuild: seeding");
    let seed_rows = seed::write_side(&client, users, pairs, groups)
        .await
        .map_err(db("seed the write side"))?;
    let seed_secs = t.elapsed().as_secs_f64();
    let pool = hermet_store::connect_pool(url, 4)?;
    let preview = 50;
    let mut results = Vec::new();
    let runs = opts.runs.max(1);
    for run in 0..=runs {
        let what = if run == 0 {
            "rebuild (empty read side)"
        } else {
            "rebuild (full read side)"
        };
        eprintln!("bench rebuild: {what}");
        let o =
            rebuild::RebuildOptions::new(hermet_core::projection::ReadModel::ALL.to_vec(), preview);
        let r = rebuild::rebuild(&pool, &o, &rebuild::NoProgress).await?;
        results.push(Measured {
            what,
            rows: r.rows_built,
            secs: r.total_secs,
            rows_per_sec: r.rows_built as f64 / r.total_secs.max(1e-9),
            detail: format!(
                "build {:.2}s ({:.0} rows/s), indexes {:.2}s, swap {:.0} ms",
                r.build_secs,
                r.rows_built as f64 / r.build_secs.max(1e-9),
                r.index_secs,
                r.swap_ms
            ),
        });
    }
    for _ in 0..runs {
        eprintln!("bench rebuild: full audit");
        let conn = pool.get().await.map_err(hermet_store::StoreError::from)?;
        let t = Instant::now();
        let report = audit::audit(&conn, preview, 256, None).await?;
        let secs = t.elapsed().as_secs_f64();
        if !report.findings.is_empty() {
            return Err(BenchError::Scenario(format!(
                "the audit after the rebuild found {} differences",
                report.findings.len()
            )));
        }
        results.push(Measured {
            what: "audit --full (256 buckets)",
            rows: report.expected_rows,
            secs,
            rows_per_sec: report.expected_rows as f64 / secs.max(1e-9),
            detail: format!("consistency {:.4}%", report.consistency_rate() * 100.0),
        });
    }
    let r = client
        .query_one(
            "SELECT (SELECT count(*) FROM user_conversation_view)
                  + (SELECT count(*) FROM user_contact_view),
                    (SELECT count(*) FROM conversation_reverse_index)
                  + (SELECT count(*) FROM contact_reverse_index)",
            &[],
        )
        .await
        .map_err(db("count the read side"))?;
    Ok(RebuildBenchReport {
        users,
        pairs_per_user: pairs,
        groups,
        shards,
        seed_rows,
        seed_secs,
        view_rows: r.get(0),
        index_rows: r.get(1),
        results,
    })
}
