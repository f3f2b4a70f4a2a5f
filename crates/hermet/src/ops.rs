//! `hermet admin rebuild | replay | status`: the operator's side of the recovery commands in
//! `hermet-store::rebuild` and `hermet-projector::replay`, with progress and readable output.
//!
//! The status is gathered once ([`gather`]) for both of its readers: `hermet admin status`
//! (text or `--json`) and `GET /v1/ops/status` of a serving process ([`ConfigStatus`], the
//! `hermet_api::ops::OpsStatus` port), so the page at `/ops` shows exactly what the command
//! prints.

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

pub async fn rebuild(
    cfg: &Config,
    models: Vec<hermet_core::projection::ReadModel>,
) -> anyhow::Result<()> {
    use hermet_store::rebuild;
    let pool = hermet_store::connect_pool(&cfg.database.url, 2)?;
    let opts = rebuild::RebuildOptions::new(models, cfg.read_side.preview_chars as i32);
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
pub(crate) struct SlotStatus {
    slot: String,
    active: bool,
    /// WAL between the server's position and what the slot's reader confirmed.
    lag_bytes: Option<i64>,
    confirmed_flush_lsn: Option<String>,
    /// WAL the server keeps for the slot (from its `restart_lsn`): what an inactive slot
    /// holds on to, without bound unless `max_slot_wal_keep_size` is set.
    retained_wal_bytes: Option<i64>,
    /// `pg_replication_slots.wal_status`: `reserved`, `extended`, `unreserved` (about to lose
    /// WAL it needs) or `lost` (invalidated by `max_slot_wal_keep_size`).
    wal_status: Option<String>,
    /// WAL that can still be written before the slot is invalidated; none without a limit.
    safe_wal_bytes: Option<i64>,
}

/// The configured slot (whichever database it is in) and every other replication slot of this
/// database. A slot nobody reads keeps WAL on the server without bound: status warns about
/// such slots and `serve` exports them ([`sample_slots`]).
async fn slots(
    conn: &deadpool_postgres::Client,
    configured: &str,
) -> Result<Vec<SlotStatus>, tokio_postgres::Error> {
    let rows = conn
        .query(
            "SELECT slot_name::text, active,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
                    confirmed_flush_lsn::text,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,
                    wal_status, safe_wal_size
               FROM pg_replication_slots
              WHERE slot_name = $1 OR database = current_database()
              ORDER BY slot_name",
            &[&configured],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SlotStatus {
            slot: r.get(0),
            active: r.get(1),
            lag_bytes: r.get(2),
            confirmed_flush_lsn: r.get(3),
            retained_wal_bytes: r.get::<_, Option<i64>>(4).map(|b| b.max(0)),
            wal_status: r.get(5),
            safe_wal_bytes: r.get(6),
        })
        .collect())
}

/// Bytes for people: `6173872 bytes (5.9 MiB)`.
fn bytes_text(b: i64) -> String {
    let units = ["KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = "";
    for u in units {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit.is_empty() {
        format!("{b} bytes")
    } else {
        format!("{b} bytes ({v:.1} {unit})")
    }
}

/// What an operator must hear about a slot. `configured`: it is `cdc.slot`; `read`: this
/// configuration runs a relay on `cdc.slot` (`cdc` mode or `cdc.enabled`).
fn slot_warnings(s: &SlotStatus, configured: bool, read: bool, mode: &str) -> Vec<String> {
    const SEE: &str = "see README, Operations, \"Inactive replication slots\"";
    let mut out = Vec::new();
    match s.wal_status.as_deref() {
        Some("lost") => out.push(format!(
            "replication slot {} lost WAL it still needed (it exceeded max_slot_wal_keep_size): \
             nothing can stream from it any more; drop it and let the relay take a new snapshot ({SEE})",
            s.slot
        )),
        Some("unreserved") => out.push(format!(
            "replication slot {} is past max_slot_wal_keep_size and about to lose WAL it needs ({SEE})",
            s.slot
        )),
        _ => {}
    }
    let retained = s.retained_wal_bytes.unwrap_or(0);
    if !s.active && retained > 0 && s.wal_status.as_deref() != Some("lost") {
        let why = if !configured {
            "it is not this configuration's cdc.slot: drop it if nothing reads it".to_owned()
        } else if !read {
            format!(
                "nothing in this configuration reads it (sync mode {mode}, cdc.enabled false): \
                 drop it if cdc is not coming back"
            )
        } else {
            "the relay is not running: start it (`hermet serve --role cdc`)".to_owned()
        };
        let limit = s.safe_wal_bytes.map_or_else(
            || "without bound (max_slot_wal_keep_size is -1)".to_owned(),
            |safe| format!("until {} more are written", bytes_text(safe.max(0))),
        );
        out.push(format!(
            "replication slot {} is inactive and retains {} of WAL, kept {limit}; {why} ({SEE})",
            s.slot,
            bytes_text(retained)
        ));
    }
    out
}

/// How often `serve` samples the replication slots.
const SLOT_SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// Exports, every [`SLOT_SAMPLE_EVERY`] until the process ends, the WAL each replication slot of
/// this database retains and whether something streams from it
/// (`hermet_cdc_slot_retained_wal_bytes{slot}`, `hermet_cdc_slot_active{slot}`): the relay's own
/// `hermet_cdc_slot_lag_bytes` stops when the relay does, which is exactly when a slot starts
/// keeping WAL without bound. A slot that disappears is reported as 0 (gauges cannot be
/// removed). A connection is taken from `pool` per sample and given back.
pub async fn sample_slots(pool: deadpool_postgres::Pool, configured: String) {
    let mut seen = std::collections::BTreeSet::new();
    let mut tick = tokio::time::interval(SLOT_SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sampled = match pool.get().await {
            Ok(conn) => slots(&conn, &configured).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let now = match sampled {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %e, "cannot sample the replication slots");
                continue;
            }
        };
        let names: std::collections::BTreeSet<String> =
            now.iter().map(|s| s.slot.clone()).collect();
        for gone in seen.difference(&names) {
            crate::telemetry::slot(gone, 0.0, false);
        }
        for s in &now {
            let retained = s.retained_wal_bytes.unwrap_or(0) as f64;
            crate::telemetry::slot(&s.slot, retained, s.active);
        }
        seen = names;
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct GroupStatus {
    group: String,
    members: usize,
    lag: i64,
    partitions: Vec<hermet_projector::replay::PartitionLag>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Watermark {
    projector: String,
    partitions: i64,
    min_applied_lsn: String,
    max_applied_lsn: String,
    behind_bytes: i64,
}

#[derive(Debug, Serialize)]
pub(crate) struct AuditStatus {
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
pub(crate) struct Status {
    sync_mode: &'static str,
    wal_lsn: String,
    /// `cdc.slot`, when it exists.
    slot: Option<SlotStatus>,
    /// The other replication slots of this database.
    other_slots: Vec<SlotStatus>,
    /// What needs an operator (an inactive slot retaining WAL, a lost slot).
    warnings: Vec<String>,
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

/// Why the status could not be gathered. A Kafka that does not answer is none of these: it is
/// reported inside the [`Status`] (`kafka_error`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StatusError {
    #[error(transparent)]
    Store(#[from] hermet_store::StoreError),
    #[error("connecting to PostgreSQL: {0}")]
    Connect(#[from] deadpool_postgres::PoolError),
    #[error("querying PostgreSQL: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("asking Kafka: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl StatusError {
    /// Whether retrying later may help: PostgreSQL could not be reached or went away.
    fn unavailable(&self) -> bool {
        match self {
            StatusError::Connect(_) => true,
            StatusError::Query(e) => e.is_closed(),
            StatusError::Store(e) => matches!(e, hermet_store::StoreError::Unavailable(_)),
            StatusError::Config(_) | StatusError::Task(_) => false,
        }
    }
}

/// `hermet admin status`: the [`Status`] as text, or as the JSON document of `--json` (the one
/// `GET /v1/ops/status` answers).
pub async fn status(cfg: &Config, json: bool) -> anyhow::Result<()> {
    let pool = hermet_store::connect_pool(&cfg.database.url, 1)?;
    let s = gather(cfg, &pool).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_status(&s);
    }
    Ok(())
}

/// The status of the deployment `cfg` describes: sync mode, replication slots, consumer groups,
/// watermarks, outbox and dead letters, the last audit. Uses one connection of `pool` and asks
/// Kafka (each broker request bounded by its timeout, about 10 s).
pub(crate) async fn gather(
    cfg: &Config,
    pool: &deadpool_postgres::Pool,
) -> Result<Status, StatusError> {
    let conn = pool.get().await?;
    let wal: String = conn
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let mode = cfg.store_config().sync_mode.as_str();
    let read = cfg.sync.mode == crate::config::Mode::Cdc || cfg.cdc.enabled;
    let mut warnings = Vec::new();
    let mut slot = None;
    let mut other_slots = Vec::new();
    for s in slots(&conn, &cfg.cdc.slot).await? {
        let configured = s.slot == cfg.cdc.slot;
        warnings.extend(slot_warnings(&s, configured, read, mode));
        if configured {
            slot = Some(s);
        } else {
            other_slots.push(s);
        }
    }
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
    let outbox_pending: i64 = conn
        .query_one("SELECT count(*) FROM hermet_outbox", &[])
        .await?
        .get(0);
    let outbox_dead = hermet_store::dead_letters::count_buried_outbox(&conn).await?;
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
    Ok(Status {
        sync_mode: mode,
        wal_lsn: wal,
        slot,
        other_slots,
        warnings,
        groups,
        kafka_error,
        watermarks,
        outbox_pending,
        outbox_dead,
        dlq_topic,
        dlq_records,
        last_audit,
    })
}

/// `GET /v1/ops/status` of a serving process: [`gather`] over the configuration it runs with
/// (shared, not copied, by each gathering) and a one-connection pool of its own, kept between
/// gatherings (made lazily: a server nobody asks never opens it).
pub(crate) struct ConfigStatus {
    cfg: std::sync::Arc<Config>,
    pool: deadpool_postgres::Pool,
}

impl ConfigStatus {
    pub(crate) fn new(cfg: Config) -> Result<ConfigStatus, hermet_store::StoreError> {
        let pool = hermet_store::connect_pool(&cfg.database.url, 1)?;
        Ok(ConfigStatus {
            cfg: std::sync::Arc::new(cfg),
            pool,
        })
    }
}

impl hermet_api::ops::OpsStatus for ConfigStatus {
    fn status(&self) -> hermet_api::ops::StatusFuture {
        let (cfg, pool) = (self.cfg.clone(), self.pool.clone());
        Box::pin(async move {
            use hermet_api::ops::OpsError;
            let s = gather(&cfg, &pool).await.map_err(|e| {
                let detail = e.to_string();
                if e.unavailable() {
                    OpsError::Unavailable(detail)
                } else {
                    OpsError::Failed(detail)
                }
            })?;
            serde_json::to_value(&s).map_err(|e| OpsError::Failed(e.to_string()))
        })
    }
}

fn print_slot(sl: &SlotStatus) {
    println!(
        "slot {:<24} {:<8} lag {} bytes (confirmed {}), retains {} of WAL{}",
        sl.slot,
        if sl.active { "active" } else { "inactive" },
        sl.lag_bytes.map_or_else(|| "?".into(), |b| b.to_string()),
        sl.confirmed_flush_lsn.as_deref().unwrap_or("-"),
        sl.retained_wal_bytes.map_or_else(|| "?".into(), bytes_text),
        sl.wal_status
            .as_deref()
            .map_or_else(String::new, |w| format!(" ({w})"))
    );
}

fn print_status(s: &Status) {
    println!("sync mode {}   WAL at {}", s.sync_mode, s.wal_lsn);
    match &s.slot {
        Some(sl) => print_slot(sl),
        None => println!("slot: none (the relay has not run, or not in cdc mode)"),
    }
    for sl in &s.other_slots {
        print_slot(sl);
    }
    for w in &s.warnings {
        println!("WARNING: {w}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(active: bool, retained: Option<i64>, wal_status: &str) -> SlotStatus {
        SlotStatus {
            slot: "hermet_slot".into(),
            active,
            lag_bytes: retained,
            confirmed_flush_lsn: Some("0/1".into()),
            retained_wal_bytes: retained,
            wal_status: Some(wal_status.into()),
            safe_wal_bytes: None,
        }
    }

    #[test]
    fn inactive_slots_that_retain_wal_are_warned_about() {
        assert!(
            slot_warnings(&slot(true, Some(1 << 30), "extended"), true, true, "cdc").is_empty()
        );
        assert!(slot_warnings(&slot(false, Some(0), "reserved"), true, true, "cdc").is_empty());
        let w = slot_warnings(
            &slot(false, Some(5 << 30), "extended"),
            true,
            false,
            "dual_write",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("inactive and retains 5368709120 bytes (5.0 GiB)"),
            "{w:?}"
        );
        assert!(w[0].contains("sync mode dual_write"), "{w:?}");
        let w = slot_warnings(&slot(false, Some(1 << 20), "reserved"), true, true, "cdc");
        assert!(w[0].contains("start it"), "{w:?}");
        let w = slot_warnings(&slot(false, Some(1 << 20), "reserved"), false, true, "cdc");
        assert!(w[0].contains("not this configuration's cdc.slot"), "{w:?}");
        let w = slot_warnings(&slot(false, None, "lost"), true, true, "cdc");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("lost WAL"), "{w:?}");
    }
}
