//! `hermet bench rebuild`: online-rebuild and audit throughput on a large read side.
//!
//! The write side is seeded set-based (`generate_series`), not through commands, so a million
//! view rows take seconds: `users` users, each befriending the next `k = mean_friends / 2`
//! users (one single chat and two friendship rows per pair, one message per chat), and
//! `groups` groups of 20 members with one message each. View rows: `4·users·k` (conversations
//! and contacts of the pairs) `+ 20·groups`, plus as many reverse-index entries as pairs × 4.
//!
//! Measured: a rebuild into an empty read side, a rebuild over a full one (the operator's case),
//! and a full audit (every bucket), each as rows per second of wall time.

use std::fmt;
use std::time::Instant;

use serde::Serialize;

use crate::{admin_connect, drop_database, BenchEnv, BenchError, BenchOptions};

/// Members of each seeded group.
const GROUP_SIZE: i64 = 20;

/// Seeds the write side of a migrated, empty database. Returns the write-side rows inserted.
pub async fn seed(
    client: &tokio_postgres::Client,
    users: i64,
    pairs_per_user: i64,
    groups: i64,
) -> Result<u64, tokio_postgres::Error> {
    let mut rows = 0;
    let steps: [(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]); 9] = [
        (
            "INSERT INTO users (id, nickname, avatar, profile_ver, created_at, updated_at)
             SELECT i, 'user ' || i, 'https://a.example/' || i, 1, 0, 0
               FROM generate_series(1, $1::bigint) i",
            &[&users],
        ),
        // Pairs (i, i+k mod n), k = 1..K: distinct unordered pairs while K < n / 2.
        (
            "INSERT INTO channels (id, channel_type, channel_info_ver, member_count, creator_id,
                                   last_seq, pair_low, pair_high, created_at, updated_at)
             SELECT row_number() OVER (ORDER BY a, b), 'single', 1, 2, LEAST(a, b), 1,
                    LEAST(a, b), GREATEST(a, b), 0, 0
               FROM (SELECT i AS a, ((i - 1 + k) % $1::bigint) + 1 AS b
                       FROM generate_series(1, $1::bigint) i, generate_series(1, $2::bigint) k) p",
            &[&users, &pairs_per_user],
        ),
        (
            "INSERT INTO channel_members (channel_id, user_id, joined_at, read_seq)
             SELECT id, pair_low, id, 1 FROM channels WHERE channel_type = 'single'
             UNION ALL
             SELECT id, pair_high, id, 0 FROM channels WHERE channel_type = 'single'",
            &[],
        ),
        (
            "INSERT INTO friendships (user_id, friend_id, remark_name, status, created_at)
             SELECT pair_low, pair_high, CASE WHEN id % 7 = 0 THEN 'remark ' || id ELSE '' END,
                    'active', 0
               FROM channels WHERE channel_type = 'single'
             UNION ALL
             SELECT pair_high, pair_low, '', 'active', 0 FROM channels WHERE channel_type = 'single'",
            &[],
        ),
        (
            "INSERT INTO channels (id, channel_type, name, channel_info_ver, member_count,
                                   creator_id, last_seq, created_at, updated_at)
             SELECT m.base + g, 'group', 'group ' || g, 1, $3::bigint, ((g * 7) % $1::bigint) + 1,
                    1, 0, 0
               FROM (SELECT COALESCE(max(id), 0) AS base FROM channels) m,
                    generate_series(1, $2::bigint) g",
            &[&users, &groups, &GROUP_SIZE],
        ),
        // Member j of group g: user (7g + 13j) mod n + 1, distinct for j < 20 when n > 260.
        (
            "INSERT INTO channel_members (channel_id, user_id, role, joined_at, read_seq)
             SELECT c.id, ((c.creator_id - 1 + j * 13) % $1::bigint) + 1,
                    CASE WHEN j = 0 THEN 'owner' ELSE 'member' END, c.id, 0
               FROM channels c, generate_series(0, $2::bigint - 1) j
              WHERE c.channel_type = 'group'",
            &[&users, &GROUP_SIZE],
        ),
        (
            "INSERT INTO messages (channel_id, seq, sender_id, sender_name, msg_type, content,
                                   created_at)
             SELECT c.id, 1, c.creator_id, 'user ' || c.creator_id, 'text',
                    'hello from ' || c.creator_id || ' in channel ' || c.id, 1000 + c.id
               FROM channels c",
            &[],
        ),
        (
            "SELECT setval(pg_get_serial_sequence('users', 'id'), GREATEST(max(id), 1)) FROM users",
            &[],
        ),
        (
            "SELECT setval(pg_get_serial_sequence('channels', 'id'), GREATEST(max(id), 1))
               FROM channels",
            &[],
        ),
    ];
    for (sql, params) in steps {
        rows += client.execute(sql, params).await?;
    }
    client
        .batch_execute(&format!(
            "SELECT setval(pg_get_serial_sequence('messages', 'id'), GREATEST(max(id), 1))
               FROM messages;
             ANALYZE {}",
            hermet_core::rows::WRITE_TABLES.join(", ")
        ))
        .await?;
    Ok(rows)
}

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
    let seed_rows = seed(&client, users, pairs, groups)
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
