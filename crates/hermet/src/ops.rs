//! `hermet admin rebuild | replay | status`: the operator's side of the recovery commands in
//! `hermet-store::rebuild` and `hermet-projector::replay`, with progress and readable output.

use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use hermet_projector::consumer::GROUPS;

use crate::config::Config;

/// A progress bar on stderr: rows, rows/s and ETA while the total is known, a spinner otherwise.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        pb.enable_steady_tick(Duration::from_millis(200));
        Bar(pb)
    }
}

impl hermet_store::rebuild::Progress for Bar {
    fn phase(&self, name: &str, total: Option<u64>) {
        let style = match total {
            Some(_) => ProgressStyle::with_template(
                "{msg:28} [{bar:30}] {human_pos}/{human_len} rows  {per_sec}  ETA {eta}",
            ),
            None => ProgressStyle::with_template("{spinner} {msg:28} {human_pos} keys  {elapsed}"),
        };
        if let Ok(style) = style {
            self.0.set_style(style.progress_chars("=> "));
        }
        self.0.set_length(total.unwrap_or(0));
        self.0.reset();
        self.0.set_message(name.to_owned());
    }

    fn rows(&self, n: u64) {
        self.0.inc(n);
    }
}

pub async fn rebuild(cfg: &Config, views: Vec<hermet_store::rebuild::View>) -> anyhow::Result<()> {
    use hermet_store::rebuild;
    let pool = hermet_store::connect_pool(&cfg.database.url, 2)?;
    let opts = rebuild::RebuildOptions::new(views, cfg.read_side.preview_chars as i32);
    let bar = Bar::new();
    let result = rebuild::rebuild(&pool, &opts, &bar).await;
    bar.0.finish_and_clear();
    let r = result.context("rebuild")?;
    // The swapped-in tables were never announced to the cache: retire every cached page.
    cfg.list_cache()?.invalidate_all().await;
    println!(
        "rebuilt {} from the snapshot at LSN {}",
        r.tables.join(", "),
        r.snapshot_lsn
    );
    println!(
        "  build: {} rows in {:.2}s ({:.0} rows/s); indexes {:.2}s",
        r.rows_built,
        r.build_secs,
        r.rows_built as f64 / r.build_secs.max(1e-9),
        r.index_secs
    );
    println!(
        "  catch-up passes: {:?} keys; swap: {} keys under the lock, {:.1} ms ({} attempt(s)); total {:.2}s",
        r.catch_up_keys, r.swap_keys, r.swap_ms, r.swap_attempts, r.total_secs
    );
    Ok(())
}

/// `--from-time`: Unix milliseconds, or anything PostgreSQL reads as a `timestamptz`
/// (`2026-11-26 18:00:00+00`, `now`, …), converted by the configured server.
async fn parse_time(cfg: &Config, text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Ok(ms);
    }
    let pool = hermet_store::connect_pool(&cfg.database.url, 1)?;
    let conn = pool.get().await.context("connecting to PostgreSQL")?;
    let row = conn
        .query_one(
            "SELECT (extract(epoch FROM $1::text::timestamptz) * 1000)::bigint",
            &[&text],
        )
        .await
        .map_err(|e| {
            let why = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
            anyhow::anyhow!(
                "--from-time {text:?} is neither Unix milliseconds nor a timestamp: {why}"
            )
        })?;
    Ok(row.get(0))
}

pub async fn replay(
    cfg: &Config,
    group: String,
    from_offset: Option<i64>,
    from_time: Option<String>,
    wait_secs: Option<u64>,
    dry_run: bool,
) -> anyhow::Result<()> {
    use hermet_projector::replay;
    let start = match (from_offset, from_time) {
        (Some(o), None) => replay::Start::Offset(o),
        (None, Some(t)) => replay::Start::TimeMs(parse_time(cfg, &t).await?),
        _ => anyhow::bail!("give exactly one of --from-offset N and --from-time T"),
    };
    let known: Vec<String> = GROUPS
        .iter()
        .map(|(g, _)| format!("{}{g}", cfg.projector.group_prefix))
        .collect();
    let Some(views) = known.iter().position(|g| *g == group).map(|i| GROUPS[i].1) else {
        anyhow::bail!(
            "--group {group:?} is not a projector group of this configuration (one of: {})",
            known.join(", ")
        );
    };
    let topics = cfg.group_topics(views)?;
    let brokers = cfg.kafka.brokers.clone();
    let wait = wait_secs.map(Duration::from_secs);
    let g = group.clone();
    let moves = tokio::task::spawn_blocking(move || {
        replay::replay(&brokers, &g, &topics, start, wait, dry_run)
    })
    .await??;
    println!(
        "{} {group} on {} partitions:",
        if dry_run { "would move" } else { "moved" },
        moves.len()
    );
    for m in &moves {
        println!(
            "  {}[{}]  {} -> {}",
            m.topic,
            m.partition,
            m.before
                .map_or_else(|| "none".to_owned(), |o| o.to_string()),
            m.after
        );
    }
    if !dry_run {
        println!("start the projectors (`hermet serve --role projector`) to reprocess");
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct SlotStatus {
    slot: String,
    active: bool,
    lag_bytes: Option<i64>,
    confirmed_flush_lsn: Option<String>,
}

#[derive(Debug, Serialize)]
struct GroupStatus {
    group: String,
    members: usize,
    lag: i64,
    partitions: Vec<hermet_projector::replay::PartitionLag>,
}

#[derive(Debug, Serialize)]
struct Watermark {
    projector: String,
    partitions: i64,
    min_applied_lsn: String,
    max_applied_lsn: String,
    behind_bytes: i64,
}

#[derive(Debug, Serialize)]
struct AuditStatus {
    source: String,
    finished_at_ms: i64,
    finished_at: String,
    audited_buckets: i32,
    buckets: i32,
    expected_rows: i64,
    findings: i64,
    consistency_rate: f64,
    summary: serde_json::Value,
    repaired: bool,
}

#[derive(Debug, Serialize)]
struct Status {
    sync_mode: &'static str,
    wal_lsn: String,
    slot: Option<SlotStatus>,
    groups: Vec<GroupStatus>,
    kafka_error: Option<String>,
    watermarks: Vec<Watermark>,
    outbox_pending: i64,
    outbox_dead: i64,
    dlq_topic: String,
    dlq_records: Option<i64>,
    last_audit: Option<AuditStatus>,
}

fn lsn_text(v: i64) -> String {
    let v = v as u64;
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

pub async fn status(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let pool = hermet_store::connect_pool(&cfg.database.url, 1)?;
    let conn = pool.get().await.context("connecting to PostgreSQL")?;
    let wal: String = conn
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let slot = conn
        .query_opt(
            "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    confirmed_flush_lsn::text
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&cfg.cdc.slot],
        )
        .await?
        .map(|r| SlotStatus {
            slot: cfg.cdc.slot.clone(),
            active: r.get(0),
            lag_bytes: r.get(1),
            confirmed_flush_lsn: r.get(2),
        });
    let watermarks = conn
        .query(
            "SELECT projector, count(*), min(applied_lsn), max(applied_lsn),
                    GREATEST(pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint - min(applied_lsn), 0)
               FROM hermet_projector_watermarks GROUP BY projector ORDER BY projector",
            &[],
        )
        .await?
        .iter()
        .map(|r| Watermark {
            projector: r.get(0),
            partitions: r.get(1),
            min_applied_lsn: lsn_text(r.get(2)),
            max_applied_lsn: lsn_text(r.get(3)),
            behind_bytes: r.get(4),
        })
        .collect();
    let r = conn
        .query_one(
            "SELECT (SELECT count(*) FROM hermet_outbox), (SELECT count(*) FROM hermet_outbox_dead)",
            &[],
        )
        .await?;
    let (outbox_pending, outbox_dead): (i64, i64) = (r.get(0), r.get(1));
    let last_audit = conn
        .query_opt(
            "SELECT source, finished_at, audited_buckets, buckets, expected_rows, findings,
                    consistency_rate, summary, repaired,
                    to_char(to_timestamp(finished_at / 1000.0) AT TIME ZONE 'UTC',
                            'YYYY-MM-DD HH24:MI:SS\"Z\"')
               FROM hermet_audit_runs ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?
        .map(|r| AuditStatus {
            source: r.get(0),
            finished_at_ms: r.get(1),
            audited_buckets: r.get(2),
            buckets: r.get(3),
            expected_rows: r.get(4),
            findings: r.get(5),
            consistency_rate: r.get(6),
            summary: r.get(7),
            repaired: r.get(8),
            finished_at: r.get(9),
        });
    drop(conn);

    // Kafka: a broker that does not answer is reported, not fatal (dual_write needs none).
    let brokers = cfg.kafka.brokers.clone();
    let groups = GROUPS
        .iter()
        .map(|(g, views)| {
            let topics = cfg.group_topics(*views)?;
            Ok((format!("{}{g}", cfg.projector.group_prefix), topics))
        })
        .collect::<Result<Vec<_>, crate::config::ConfigError>>()?;
    let dlq_topic = cfg.projector.dlq_topic.clone();
    let dlq = dlq_topic.clone();
    let kafka = tokio::task::spawn_blocking(move || {
        use hermet_projector::replay;
        let mut out = Vec::new();
        for (g, topics) in groups {
            let partitions = replay::group_lag(&brokers, &g, &topics)?;
            out.push(GroupStatus {
                members: replay::members(&brokers, &g)?.len(),
                lag: partitions.iter().map(|p| p.lag).sum(),
                group: g,
                partitions,
            });
        }
        let dlq = replay::topic_size(&brokers, &dlq)?;
        Ok::<_, replay::ReplayError>((out, dlq))
    })
    .await?;
    let (groups, dlq_records, kafka_error) = match kafka {
        Ok((g, d)) => (g, d, None),
        Err(e) => (Vec::new(), None, Some(e.to_string())),
    };
    let s = Status {
        sync_mode: cfg.store_config().sync_mode.as_str(),
        wal_lsn: wal,
        slot,
        groups,
        kafka_error,
        watermarks,
        outbox_pending,
        outbox_dead,
        dlq_topic,
        dlq_records,
        last_audit,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_status(&s);
    }
    Ok(())
}

fn print_status(s: &Status) {
    println!("sync mode {}   WAL at {}", s.sync_mode, s.wal_lsn);
    match &s.slot {
        Some(sl) => println!(
            "slot {:<24} {:<8} lag {} bytes (confirmed {})",
            sl.slot,
            if sl.active { "active" } else { "inactive" },
            sl.lag_bytes.map_or_else(|| "?".into(), |b| b.to_string()),
            sl.confirmed_flush_lsn.as_deref().unwrap_or("-")
        ),
        None => println!("slot: none (the relay has not run, or not in cdc mode)"),
    }
    if let Some(e) = &s.kafka_error {
        println!("kafka: unavailable ({e})");
    }
    for g in &s.groups {
        println!(
            "group {:<40} members {}  lag {} records",
            g.group, g.members, g.lag
        );
        if g.partitions.is_empty() {
            println!("  (no topics yet: the relay has not created them)");
            continue;
        }
        println!(
            "  {:<40} {:>5} {:>10} {:>10} {:>8}",
            "topic", "part", "committed", "high", "lag"
        );
        for p in &g.partitions {
            println!(
                "  {:<40} {:>5} {:>10} {:>10} {:>8}",
                p.topic,
                p.partition,
                p.committed.map_or_else(|| "-".into(), |c| c.to_string()),
                p.high,
                p.lag
            );
        }
    }
    if s.watermarks.is_empty() {
        println!("watermarks: none");
    }
    for w in &s.watermarks {
        println!(
            "watermark {:<36} {} partitions, applied {} .. {} ({} bytes behind the WAL)",
            w.projector, w.partitions, w.min_applied_lsn, w.max_applied_lsn, w.behind_bytes
        );
    }
    println!(
        "outbox: {} pending, {} set aside   dead-letter topic {}: {}",
        s.outbox_pending,
        s.outbox_dead,
        s.dlq_topic,
        s.dlq_records
            .map_or_else(|| "absent".into(), |n| format!("{n} records"))
    );
    match &s.last_audit {
        Some(a) => println!(
            "last audit ({}, {}): {}/{} buckets, {} rows, {} findings, consistency {:.6}%{}",
            a.source,
            a.finished_at,
            a.audited_buckets,
            a.buckets,
            a.expected_rows,
            a.findings,
            a.consistency_rate * 100.0,
            if a.repaired { ", repaired" } else { "" }
        ),
        None => println!("last audit: none recorded"),
    }
}
