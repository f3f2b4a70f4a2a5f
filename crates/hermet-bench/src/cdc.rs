//! `hermet-bench cdc`: how fast the CDC relay drains a WAL backlog into Kafka, next to
//! `pg_recvlogical` draining the same backlog with the same plugin (`pgoutput`, protocol 1) in
//! the same run.
//!
//! One scratch database (migrated, like the other scenarios), one publication on the five
//! write-side tables. Each round:
//!
//! 1. The five tables are emptied (before any slot of the round exists, so no slot sees it).
//! 2. A `pgoutput` slot is created for `pg_recvlogical`; the relay (`hermet serve --role cdc`,
//!    a child process) is started on its own slot and topics, creates its slot with an exported
//!    snapshot of the empty tables, reaches "streaming", and is stopped with SIGTERM.
//! 3. The backlog is written: users, group channels, members, friendships, then messages in
//!    transactions of `--txn-rows` row changes, each ending with the `last_seq` update of the
//!    channels it wrote to (as the send command does), and a profile update of half the users.
//!    Set-based SQL (`INSERT … SELECT generate_series`), so writing is fast. Then `VACUUM
//!    (ANALYZE)` and `CHECKPOINT`, so autovacuum and buffer flushing stay out of the drains.
//! 4. Drain A: `pg_recvlogical --start --endpos <end of backlog> -f /dev/null`, timed from
//!    spawn to exit.
//! 5. Drain B: the relay is started again on its slot and timed from spawn until the slot's
//!    `confirmed_flush_lsn` reaches the end of the backlog (polled every 50 ms). The relay
//!    confirms a position only after Kafka acknowledged every record up to it, so this is
//!    "rows from WAL to Kafka, acknowledged". Its RSS (`VmHWM`) and CPU time are sampled from
//!    `/proc` meanwhile; then it gets SIGTERM.
//!
//! A and B alternate their order from round to round. At the end (also on error or Ctrl-C) the
//! slots of the scratch database, the topics of the run and the database are dropped.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_postgres::Client;

use crate::report::median;
use crate::{admin_connect, drop_database, BenchEnv, BenchError, BenchOptions};

mod helpers;
mod report;

pub(crate) use helpers::*;
pub use report::*;

/// The captured write-side tables.
pub(crate) const TABLES: [&str; 5] = hermet_core::rows::WRITE_TABLES;
pub(crate) const PUBLICATION: &str = "hermet_bench_pub";
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// Longest wait for the relay to reach "streaming" or a drain to make progress.
pub(crate) const STALL: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------- the relay

/// Everything needed to start the relay of one round.
pub(crate) struct RelaySpec<'a> {
    pub(crate) bin: &'a Path,
    pub(crate) database_url: &'a str,
    pub(crate) brokers: &'a str,
    pub(crate) shards: u32,
    pub(crate) slot: &'a str,
    pub(crate) topic_template: &'a str,
    pub(crate) partitions: i32,
}

pub(crate) struct RelayProc {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) spawned: Instant,
    pub(crate) log: SharedLog,
}

impl RelayProc {
    pub(crate) fn spawn(spec: &RelaySpec<'_>) -> Result<RelayProc, BenchError> {
        let mut cmd = Command::new(spec.bin);
        cmd.args(["serve", "--role", "cdc"]);
        // Only what this benchmark sets: no `cdc.*` key of the caller's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HERMET_CDC__") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HERMET_DATABASE_URL", spec.database_url)
            .env("HERMET_KAFKA_BROKERS", spec.brokers)
            .env("HERMET_SHARDS", spec.shards.to_string())
            .env("HERMET_CDC__SLOT", spec.slot)
            .env("HERMET_CDC__PUBLICATION", PUBLICATION)
            .env("HERMET_CDC__TOPIC_TEMPLATE", spec.topic_template)
            .env("HERMET_CDC__PARTITIONS", spec.partitions.to_string())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Self::spawn_command(cmd, &spec.bin.display().to_string())
    }

    /// Starts `cmd` (stdout/stderr piped, killed on drop), keeping its last lines and when it
    /// logged "streaming" (`hermet serve --role cdc` and Debezium both log that word).
    pub(crate) fn spawn_command(mut cmd: Command, what: &str) -> Result<RelayProc, BenchError> {
        let spawned = Instant::now();
        let mut child = cmd.spawn().map_err(io_err(format!("start {what}")))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Internal(format!("{what} exited at once")))?;
        let log = SharedLog::default();
        if let Some(out) = child.stdout.take() {
            collect_lines(out, log.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect_lines(err, log.clone());
        }
        Ok(RelayProc {
            child,
            pid,
            spawned,
            log,
        })
    }

    /// An error if the process has exited.
    pub(crate) fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Scenario(format!(
                "the relay exited ({status}); its last lines:\n{}",
                tail(&self.log)
            ))),
            Err(e) => Err(BenchError::Io {
                what: "wait for the relay".to_owned(),
                source: e,
            }),
        }
    }

    /// SIGTERM, then wait (SIGKILL after 30 s).
    pub(crate) async fn stop(mut self) -> Result<ExitStatus, BenchError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(status);
        }
        send_sigterm(self.pid)?;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(r) => r.map_err(io_err("wait for the relay")),
            Err(_) => {
                eprintln!("bench cdc: the relay did not stop within 30 s of SIGTERM; killing it");
                self.child.kill().await.map_err(io_err("kill the relay"))?;
                self.child
                    .wait()
                    .await
                    .map_err(io_err("wait for the relay"))
            }
        }
    }
}

/// Starts the relay on a fresh slot, waits until it streams, stops it.
pub(crate) async fn prime_relay(client: &Client, spec: &RelaySpec<'_>) -> Result<(), BenchError> {
    let mut relay = RelayProc::spawn(spec)?;
    let deadline = Instant::now() + STALL;
    loop {
        relay.check_alive()?;
        if streaming_at(&relay.log).is_some() {
            break;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Scenario(format!(
                "the relay did not reach \"streaming\" within {} s; its last lines:\n{}",
                STALL.as_secs(),
                tail(&relay.log)
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    let done: Option<bool> = client
        .query_opt(
            "SELECT snapshot_done FROM hermet_cdc_state WHERE slot_name = $1",
            &[&spec.slot],
        )
        .await
        .map_err(db_err("read hermet_cdc_state"))?
        .map(|r| r.get(0));
    let has_slot = slot_state(client, spec.slot).await?.is_some();
    let log = relay.log.clone();
    let status = relay.stop().await?;
    if done != Some(true) || !has_slot {
        return Err(BenchError::Scenario(format!(
            "the relay streams but its slot {} is missing or its snapshot is not done",
            spec.slot
        )));
    }
    if !status.success() {
        return Err(BenchError::Scenario(format!(
            "the relay exited with {status} after SIGTERM; its last lines:\n{}",
            tail(&log)
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------- backlog

pub(crate) struct Backlog {
    pub(crate) rows: u64,
    pub(crate) transactions: u64,
    /// The WAL insert position after the last commit: every row change is before it.
    pub(crate) end_lsn: u64,
    pub(crate) wal_bytes: u64,
    pub(crate) secs: f64,
}

/// Runs one statement per transaction over `[0, count)` in chunks, counting row changes.
struct Writer<'a> {
    client: &'a mut Client,
    rows: u64,
    transactions: u64,
}

impl Writer<'_> {
    /// One transaction: each statement with `$1`/`$2` the chunk's first and last index and the
    /// extra parameters after them.
    async fn txn(
        &mut self,
        what: &str,
        statements: &[&str],
        first: i64,
        last: i64,
        extra: &[i64],
    ) -> Result<(), BenchError> {
        let tx = self
            .client
            .transaction()
            .await
            .map_err(db_err(format!("{what}: begin")))?;
        for sql in statements {
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&first, &last];
            params.extend(
                extra
                    .iter()
                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)),
            );
            self.rows += tx
                .execute(*sql, &params)
                .await
                .map_err(db_err(what.to_owned()))?;
        }
        tx.commit()
            .await
            .map_err(db_err(format!("{what}: commit")))?;
        self.transactions += 1;
        Ok(())
    }

    /// `sql` over ids `1..=count` in chunks of `chunk` ids.
    async fn chunked(
        &mut self,
        what: &str,
        sql: &str,
        count: i64,
        chunk: i64,
        extra: &[i64],
    ) -> Result<(), BenchError> {
        let mut first = 1;
        while first <= count {
            let last = (first + chunk - 1).min(count);
            self.txn(what, &[sql], first, last, extra).await?;
            first = last + 1;
        }
        Ok(())
    }
}

/// Writes about `target` row changes in transactions of about `txn_rows` (see the module doc).
pub(crate) async fn write_backlog(
    client: &mut Client,
    target: u64,
    txn_rows: u64,
) -> Result<Backlog, BenchError> {
    let started = Instant::now();
    let start_lsn = insert_lsn(client).await?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let b = txn_rows as i64;
    let users = (target as i64 / 100).max(100);
    let groups = (users / 10).max(10);
    let mut w = Writer {
        client,
        rows: 0,
        transactions: 0,
    };
    w.chunked(
        "insert users",
        "INSERT INTO users (id, nickname, avatar, created_at, updated_at)
         SELECT i, 'user_' || i, 'https://cdn.example.com/avatars/' || i || '.png', $3::int8, $3::int8
           FROM generate_series($1::int8, $2::int8) i",
        users,
        b,
        &[now_ms],
    )
    .await?;
    w.chunked(
        "insert channels",
        "INSERT INTO channels (id, channel_type, name, creator_id, member_count, created_at, updated_at)
         SELECT c, 'group', 'group ' || c, ((c - 1) * 10) % $3::int8 + 1, 10, $4::int8, $4::int8
           FROM generate_series($1::int8, $2::int8) c",
        groups,
        b,
        &[users, now_ms],
    )
    .await?;
    w.chunked(
        "insert channel members",
        "INSERT INTO channel_members (channel_id, user_id, role, joined_at)
         SELECT c, ((c - 1) * 10 + j) % $3::int8 + 1,
                CASE WHEN j = 0 THEN 'owner' ELSE 'member' END, $4::int8
           FROM generate_series($1::int8, $2::int8) c, generate_series(0, 9) j",
        groups,
        (b / 10).max(1),
        &[users, now_ms],
    )
    .await?;
    w.chunked(
        "insert friendships",
        "INSERT INTO friendships (user_id, friend_id, status, created_at)
         SELECT i, (i - 1 + d + $3::int8) % $3::int8 + 1, 'active', $4::int8
           FROM generate_series($1::int8, $2::int8) i, unnest(ARRAY[-2, -1, 1, 2]::int8[]) d",
        users,
        (b / 4).max(1),
        &[users, now_ms],
    )
    .await?;
    let profile_updates = users / 2;
    // Messages: each transaction writes m messages round-robin over the group channels, then
    // moves those channels' `last_seq` (REPLICA IDENTITY FULL: old and new row in the WAL).
    let insert_messages = "INSERT INTO messages
            (id, channel_id, seq, sender_id, sender_name, msg_type, content, created_at)
         SELECT g + 1, g % $3::int8 + 1, g / $3::int8 + 1, s, 'user_' || s, 'text',
                'message ' || g || ': ' || md5(g::text), $5::int8 + g / 1000
           FROM (SELECT g, ((g % $3::int8) * 10 + (g / $3::int8) % 10) % $4::int8 + 1 AS s
                   FROM generate_series($1::int8, $2::int8) g) x";
    let bump_channels =
        "UPDATE channels c SET last_seq = s.seq, updated_at = $5::int8 + $2::int8 / 1000
           FROM (SELECT g % $3::int8 + 1 AS id, max(g / $3::int8 + 1) AS seq
                   FROM generate_series($1::int8, $2::int8) g GROUP BY 1) s
          WHERE c.id = s.id AND $4::int8 > 0";
    let full_txn_messages = (b - groups.min(b / 2)).max(1);
    let mut next: i64 = 0;
    while w.rows + (profile_updates as u64) < target {
        let left = (target - w.rows - profile_updates as u64) as i64;
        let m = if left <= b {
            (left - groups.min(left / 2)).max(1)
        } else {
            full_txn_messages
        };
        w.txn(
            "insert messages",
            &[insert_messages, bump_channels],
            next,
            next + m - 1,
            &[groups, users, now_ms],
        )
        .await?;
        next += m;
    }
    w.chunked(
        "update profiles",
        "UPDATE users SET nickname = nickname || ' (away)', profile_ver = profile_ver + 1,
                          updated_at = $3::int8
          WHERE id BETWEEN $1::int8 AND $2::int8 AND id % 2 = 0",
        users,
        b * 2,
        &[now_ms + 1],
    )
    .await?;
    let end_lsn = insert_lsn(w.client).await?;
    Ok(Backlog {
        rows: w.rows,
        transactions: w.transactions,
        end_lsn,
        wal_bytes: end_lsn.saturating_sub(start_lsn),
        secs: started.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------------- drains

pub(crate) struct RecvlogicalDrain {
    pub(crate) secs: f64,
    pub(crate) walsender_cpu: Option<f64>,
}

pub(crate) async fn drain_recvlogical(
    client: &Client,
    bin: &Path,
    url: &str,
    slot: &str,
    end_lsn: u64,
) -> Result<RecvlogicalDrain, BenchError> {
    let mut cmd = Command::new(bin);
    cmd.arg("-d")
        .arg(url)
        .args(["--slot", slot, "--start", "--no-loop"])
        .args(["-o", "proto_version=1"])
        .arg("-o")
        .arg(format!("publication_names={PUBLICATION}"))
        .arg("--endpos")
        .arg(fmt_lsn(end_lsn))
        .args(["-f", "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(io_err(format!("start {}", bin.display())))?;
    let log = SharedLog::default();
    if let Some(err) = child.stderr.take() {
        collect_lines(err, log.clone());
    }
    let mut walsender = CpuTracker::default();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io_err("wait for pg_recvlogical"))?
        {
            break status;
        }
        if started.elapsed() > STALL * 5 {
            return Err(BenchError::Scenario(format!(
                "pg_recvlogical did not finish within {} s",
                (STALL * 5).as_secs()
            )));
        }
        if let Some((_, Some(pid))) = slot_state(client, slot).await? {
            walsender.sample(pid as u32);
        }
        tokio::time::sleep(POLL).await;
    };
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(BenchError::Scenario(format!(
            "pg_recvlogical failed ({status}):\n{}",
            tail(&log)
        )));
    }
    Ok(RecvlogicalDrain {
        secs,
        walsender_cpu: walsender.used(),
    })
}

struct RelayDrain {
    secs: f64,
    startup_secs: f64,
    peak_rss_kib: u64,
    cpu: Option<f64>,
    walsender_cpu: Option<f64>,
    broker_cpu: Option<f64>,
    machine_busy: Option<f64>,
}

async fn drain_relay(
    client: &Client,
    spec: &RelaySpec<'_>,
    end_lsn: u64,
    broker_pid: Option<u32>,
) -> Result<RelayDrain, BenchError> {
    let machine_start = machine_jiffies();
    let broker_start = broker_pid.and_then(cpu_secs);
    let mut relay = RelayProc::spawn(spec)?;
    let cpu_start = cpu_secs(relay.pid);
    let mut cpu_last = cpu_start;
    let mut peak_rss = 0u64;
    let mut walsender = CpuTracker::default();
    let mut progress_at = Instant::now();
    let mut last_confirmed = 0u64;
    let secs = loop {
        relay.check_alive()?;
        if let Some((_, hwm)) = memory_kib(relay.pid) {
            peak_rss = peak_rss.max(hwm);
        }
        if let Some(c) = cpu_secs(relay.pid) {
            cpu_last = Some(c);
        }
        let state = slot_state(client, spec.slot).await?;
        let Some((confirmed, active)) = state else {
            return Err(BenchError::Scenario(format!(
                "the relay's slot {} disappeared",
                spec.slot
            )));
        };
        if let Some(pid) = active {
            walsender.sample(pid as u32);
        }
        if confirmed >= end_lsn {
            break relay.spawned.elapsed().as_secs_f64();
        }
        if confirmed > last_confirmed {
            last_confirmed = confirmed;
            progress_at = Instant::now();
        } else if progress_at.elapsed() > STALL {
            return Err(BenchError::Scenario(format!(
                "the relay confirmed nothing new for {} s (at {}, backlog ends at {}); its last lines:\n{}",
                STALL.as_secs(),
                fmt_lsn(confirmed),
                fmt_lsn(end_lsn),
                tail(&relay.log)
            )));
        }
        tokio::time::sleep(POLL).await;
    };
    let machine_busy = busy_share(machine_start, machine_jiffies());
    let broker_cpu = broker_start
        .zip(broker_pid.and_then(cpu_secs))
        .map(|(a, b)| b - a);
    if let Some((_, hwm)) = memory_kib(relay.pid) {
        peak_rss = peak_rss.max(hwm);
    }
    let startup_secs =
        streaming_at(&relay.log).map_or(secs, |t| t.duration_since(relay.spawned).as_secs_f64());
    let log = relay.log.clone();
    let status = relay.stop().await?;
    if !status.success() {
        eprintln!(
            "bench cdc: the relay exited with {status} after SIGTERM; its last lines:\n{}",
            tail(&log)
        );
    }
    Ok(RelayDrain {
        secs,
        startup_secs,
        peak_rss_kib: peak_rss,
        // From the first sample: the process's first milliseconds are not counted.
        cpu: cpu_start.zip(cpu_last).map(|(a, b)| b - a).or(cpu_last),
        walsender_cpu: walsender.used(),
        broker_cpu,
        machine_busy,
    })
}

// ---------------------------------------------------------------------------------- rounds

/// Drops a slot, terminating its walsender first if it is still active (retries for 15 s).
pub(crate) async fn drop_slot(client: &Client, slot: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = client
            .query_opt(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                  WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&slot],
            )
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "terminate walsender");
        }
        match client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                  WHERE slot_name = $1",
                &[&slot],
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, slot, "drop slot, retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(db_err(format!("drop slot {slot}"))(e)),
        }
    }
}

struct Setup<'a> {
    env: &'a BenchEnv,
    opts: &'a BenchOptions,
    url: &'a str,
    tag: &'a str,
    shards: u32,
    hermet_bin: &'a Path,
    recvlogical: &'a Path,
    broker_pid: Option<u32>,
}

pub(crate) fn topic_template(tag: &str, round: usize) -> String {
    format!("hermet_bench_{tag}_{round}.{{table}}")
}

async fn round(s: &Setup<'_>, client: &mut Client, i: usize) -> Result<CdcRound, BenchError> {
    client
        .batch_execute(&format!("TRUNCATE {} CASCADE", TABLES.join(", ")))
        .await
        .map_err(db_err("empty the captured tables"))?;
    let recv_slot = format!("hb_{}_{i}_recvlogical", s.tag);
    let relay_slot = format!("hb_{}_{i}_relay", s.tag);
    let template = topic_template(s.tag, i);
    let spec = RelaySpec {
        bin: s.hermet_bin,
        database_url: s.url,
        brokers: &s.env.kafka_brokers,
        shards: s.shards,
        slot: &relay_slot,
        topic_template: &template,
        partitions: s.opts.partitions,
    };
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&recv_slot],
        )
        .await
        .map_err(db_err("create the pg_recvlogical slot"))?;
    prime_relay(client, &spec).await?;

    let backlog = write_backlog(client, s.opts.rows, s.opts.txn_rows).await?;
    eprintln!(
        "bench cdc: round {i}: backlog of {} row changes in {} transactions, {:.0} MiB of WAL, \
         written in {:.1} s",
        backlog.rows,
        backlog.transactions,
        backlog.wal_bytes as f64 / 1048576.0,
        backlog.secs
    );
    settle_backlog(client, "cdc").await?;

    let relay_first = i.is_multiple_of(2);
    let (a, b) = if relay_first {
        let b = drain_relay(client, &spec, backlog.end_lsn, s.broker_pid).await?;
        let a =
            drain_recvlogical(client, s.recvlogical, s.url, &recv_slot, backlog.end_lsn).await?;
        (a, b)
    } else {
        let a =
            drain_recvlogical(client, s.recvlogical, s.url, &recv_slot, backlog.end_lsn).await?;
        let b = drain_relay(client, &spec, backlog.end_lsn, s.broker_pid).await?;
        (a, b)
    };
    drop_slot(client, &recv_slot).await?;
    drop_slot(client, &relay_slot).await?;

    let rows = backlog.rows as f64;
    let recv_rate = rows / a.secs.max(1e-9);
    let relay_rate = rows / b.secs.max(1e-9);
    let r = CdcRound {
        round: i.to_string(),
        rows: backlog.rows,
        transactions: backlog.transactions,
        wal_mib: backlog.wal_bytes as f64 / 1048576.0,
        backlog_secs: backlog.secs,
        first: if relay_first { "relay" } else { "recvlogical" }.to_owned(),
        recvlogical_secs: a.secs,
        recvlogical_rows_per_s: recv_rate,
        recvlogical_walsender_cpu_secs: a.walsender_cpu,
        relay_secs: b.secs,
        relay_startup_secs: b.startup_secs,
        relay_rows_per_s: relay_rate,
        relay_stream_rows_per_s: rows / (b.secs - b.startup_secs).max(1e-9),
        ratio: relay_rate / recv_rate,
        relay_peak_rss_mib: b.peak_rss_kib as f64 / 1024.0,
        relay_cpu_secs: b.cpu,
        relay_walsender_cpu_secs: b.walsender_cpu,
        broker_cpu_secs: b.broker_cpu,
        relay_machine_busy: b.machine_busy,
    };
    eprintln!(
        "bench cdc: round {i}: pg_recvlogical {:.2} s ({} rows/s), relay {:.2} s incl. {:.2} s \
         start ({} rows/s), ratio {:.2}, relay peak RSS {:.1} MiB, CPU s relay {} / walsender {} \
         / broker {}",
        r.recvlogical_secs,
        rate(r.recvlogical_rows_per_s),
        r.relay_secs,
        r.relay_startup_secs,
        rate(r.relay_rows_per_s),
        r.ratio,
        r.relay_peak_rss_mib,
        secs_opt(r.relay_cpu_secs),
        secs_opt(r.relay_walsender_cpu_secs),
        secs_opt(r.broker_cpu_secs)
    );
    Ok(r)
}

async fn run_in(s: &Setup<'_>) -> Result<CdcReport, BenchError> {
    let (mut client, server_version) = prepare_database(s.url, s.shards).await?;
    let mut rounds = Vec::with_capacity(s.opts.runs);
    for i in 1..=s.opts.runs {
        rounds.push(round(s, &mut client, i).await?);
    }
    let median = median_round(&rounds);
    Ok(CdcReport {
        params: CdcParams {
            rows: s.opts.rows,
            txn_rows: s.opts.txn_rows,
            partitions: s.opts.partitions,
            runs: s.opts.runs,
            shards: s.shards,
            server_version,
            pg_recvlogical: s.recvlogical.display().to_string(),
            hermet_bin: s.hermet_bin.display().to_string(),
        },
        rounds,
        median,
    })
}

/// Drops every slot of the scratch database (their walsenders first).
pub(crate) async fn drop_all_slots(admin_url: &str, database: &str) -> Result<(), BenchError> {
    let admin = admin_connect(admin_url).await?;
    let slots: Vec<String> = admin
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE database = $1",
            &[&database],
        )
        .await
        .map_err(db_err("list the scratch database's slots"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for slot in slots {
        drop_slot(&admin, &slot).await?;
    }
    Ok(())
}

/// Vacuums and checkpoints after a backlog is written. Autovacuum would otherwise visit the
/// fresh tables during whichever drain runs first, and dirty buffers be flushed meanwhile: both
/// now, unmeasured (their WAL comes after the end of the backlog, so no drain decodes it).
pub(crate) async fn settle_backlog(client: &Client, bench: &str) -> Result<(), BenchError> {
    client
        .batch_execute(&format!("VACUUM (ANALYZE) {}", TABLES.join(", ")))
        .await
        .map_err(db_err("vacuum the backlog"))?;
    if let Err(e) = client.batch_execute("CHECKPOINT").await {
        eprintln!("bench {bench}: CHECKPOINT failed (not a superuser?), continuing: {e}");
    }
    Ok(())
}

/// Deletes the topics of a `bench cdc`/`bench modes` run (`runs` rounds under `tag`).
pub(crate) async fn delete_topics(brokers: &str, tag: &str, runs: usize) -> Result<(), BenchError> {
    let names: Vec<String> = (1..=runs)
        .flat_map(|i| {
            let template = topic_template(tag, i);
            TABLES.map(|t| template.replace("{table}", t))
        })
        .collect();
    delete_topic_names(brokers, &names).await
}

/// Deletes the named topics. Topics a failed round never created come back as errors: nothing
/// to do for those.
pub(crate) async fn delete_topic_names(brokers: &str, names: &[String]) -> Result<(), BenchError> {
    use hermet_kafka::rdkafka::admin::{AdminClient, AdminOptions};
    use hermet_kafka::rdkafka::client::DefaultClientContext;
    if names.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        hermet_kafka::client_config(brokers, "hermet-bench")
            .create()
            .map_err(hermet_kafka::KafkaError::from)?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    admin
        .delete_topics(&refs, &opts)
        .await
        .map_err(hermet_kafka::KafkaError::from)?;
    Ok(())
}

/// The `hermet` binary the relays and servers run as: `--hermet-bin`, else `hermet` next to this
/// executable (`cargo build` puts both in the same target directory). It must exist: a missing
/// one is reported before anything is created.
pub(crate) fn hermet_binary(env: &BenchEnv) -> Result<PathBuf, BenchError> {
    let path = match &env.hermet_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(io_err("find the hermet-bench executable"))?
            .with_file_name(format!("hermet{}", std::env::consts::EXE_SUFFIX)),
    };
    if !path.is_file() {
        return Err(BenchError::InvalidOptions(format!(
            "the hermet binary {} does not exist: build it with `cargo build --release -p hermet` \
             (the profile hermet-bench was built with), or name another with --hermet-bin \
             (HERMET_BIN)",
            path.display()
        )));
    }
    Ok(path)
}

/// The pid of the Kafka broker when the first bootstrap server is on this machine (its CPU and
/// memory are then measured too).
pub(crate) fn local_broker_pid(brokers: &str) -> Option<u32> {
    brokers
        .split(',')
        .next()
        .and_then(|b| b.rsplit_once(':'))
        .filter(|(host, _)| ["127.0.0.1", "localhost", "[::1]"].contains(host))
        .and_then(|(_, port)| port.parse().ok())
        .and_then(listener_pid)
}

/// Migrates the scratch database and publishes the relayed tables; returns the admin
/// connection and the server's version for the report.
pub(crate) async fn prepare_database(
    url: &str,
    shards: u32,
) -> Result<(Client, String), BenchError> {
    let mut client = admin_connect(url).await?;
    hermet_store::migrate::migrate(&mut client, shards).await?;
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {PUBLICATION} FOR TABLE {}",
            TABLES.join(", ")
        ))
        .await
        .map_err(db_err("create the publication"))?;
    let server_version: String = client
        .query_one(
            "SELECT 'PostgreSQL ' || current_setting('server_version')",
            &[],
        )
        .await
        .map_err(db_err("read the server version"))?
        .get(0);
    Ok((client, server_version))
}

/// Runs `hermet-bench cdc` (progress on stderr) and returns its report.
pub async fn run(env: &BenchEnv, opts: &BenchOptions) -> Result<CdcReport, BenchError> {
    opts.check(crate::Scenario::Cdc)?;
    let hermet_bin = hermet_binary(env)?;
    let recvlogical = opts.pg_recvlogical.clone().unwrap_or_else(find_recvlogical);
    let shards = opts.shards.unwrap_or(env.shards);
    let tag = format!("{:08x}", rand::random::<u32>());
    let (name, url) = crate::create_scratch_database(env).await?;
    eprintln!(
        "bench cdc: scratch database {name}, topics hermet_bench_{tag}_<round>.<table>, \
         relay {}, {}",
        hermet_bin.display(),
        recvlogical.display()
    );
    let setup = Setup {
        env,
        opts,
        url: &url,
        tag: &tag,
        shards,
        hermet_bin: &hermet_bin,
        recvlogical: &recvlogical,
        broker_pid: local_broker_pid(&env.kafka_brokers),
    };
    let result = tokio::select! {
        r = run_in(&setup) => r,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    // The relay and pg_recvlogical were children of the dropped future: killed on drop.
    if let Err(e) = delete_topics(&env.kafka_brokers, &tag, opts.runs).await {
        eprintln!("bench cdc: could not delete the topics of the run: {e}");
    }
    if opts.keep_database {
        eprintln!("bench cdc: kept database {name} (its slots are dropped)");
    }
    if let Err(e) = drop_all_slots(&env.database_url, &name).await {
        eprintln!("bench cdc: could not drop the slots of {name}: {e}");
    }
    if !opts.keep_database {
        if let Err(e) = drop_database(&env.database_url, &name).await {
            eprintln!("bench cdc: could not drop the scratch database {name}: {e}");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text() {
        assert_eq!(fmt_lsn(0), "0/0");
        assert_eq!(fmt_lsn(0x1_0000_00AB), "1/AB");
        assert_eq!(fmt_lsn(0x16_B374_D848), "16/B374D848");
    }

    #[test]
    fn medians() {
        let r = |ratio: f64| CdcRound {
            ratio,
            ..CdcRound::default()
        };
        assert_eq!(median_round(&[r(0.4), r(0.9), r(0.5)]).ratio, 0.5);
        assert_eq!(median_round(&[r(0.4), r(0.6)]).ratio, 0.5);
        assert_eq!(rate(1234567.4), "1,234,567");
        assert_eq!(rate(999.0), "999");
    }

    #[test]
    fn a_missing_hermet_binary_says_how_to_build_it() {
        let env = BenchEnv {
            hermet_bin: Some(PathBuf::from("/nonexistent/hermet")),
            ..BenchEnv::new("postgres://localhost/postgres")
        };
        let e = hermet_binary(&env).map_or_else(|e| e.to_string(), |p| format!("found {p:?}"));
        assert!(
            e.contains("/nonexistent/hermet") && e.contains("cargo build --release -p hermet"),
            "{e}"
        );
        // The default is the `hermet` of this executable's directory.
        let env = BenchEnv::new("postgres://localhost/postgres");
        let sibling = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("hermet")));
        if let (Err(e), Some(sibling)) = (hermet_binary(&env), sibling) {
            let e = e.to_string();
            assert!(e.contains(&sibling.display().to_string()), "{e}");
        }
    }

    #[test]
    fn proc_readers_see_this_process() {
        let pid = std::process::id();
        assert!(cpu_secs(pid).is_some());
        let (rss, hwm) = memory_kib(pid).unwrap_or_else(|| panic!("no /proc/{pid}/status"));
        assert!(rss > 0 && hwm >= rss);
        assert!(machine_jiffies().is_some());
    }
}
