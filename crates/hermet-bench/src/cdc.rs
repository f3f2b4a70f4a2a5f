//! `hermet bench cdc`: how fast the CDC relay drains a WAL backlog into Kafka, next to
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

/// The captured write-side tables.
pub(crate) const TABLES: [&str; 5] = [
    "users",
    "channels",
    "channel_members",
    "friendships",
    "messages",
];
pub(crate) const PUBLICATION: &str = "hermet_bench_pub";
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// Longest wait for the relay to reach "streaming" or a drain to make progress.
pub(crate) const STALL: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------- report

/// The parameters of a `cdc` benchmark.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CdcParams {
    pub rows: u64,
    pub txn_rows: u64,
    pub partitions: i32,
    pub runs: usize,
    pub shards: u32,
    pub server_version: String,
    pub pg_recvlogical: String,
    pub hermet_bin: String,
}

/// One round (or the per-field median of the rounds, `round == "median"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CdcRound {
    pub round: String,
    /// Row changes in the backlog (inserts + updates), as the statements reported them.
    pub rows: u64,
    pub transactions: u64,
    /// WAL written while the backlog was (the server's, so other databases' writes count too).
    pub wal_mib: f64,
    pub backlog_secs: f64,
    /// Which drain ran first: `recvlogical` or `relay`.
    pub first: String,
    pub recvlogical_secs: f64,
    pub recvlogical_rows_per_s: f64,
    /// CPU of the walsender serving `pg_recvlogical` (decoding), if readable.
    pub recvlogical_walsender_cpu_secs: Option<f64>,
    /// From spawning the relay until its slot confirmed the end of the backlog.
    pub relay_secs: f64,
    /// From spawning the relay until it logged "streaming" (process start, connections,
    /// topic checks, replication start).
    pub relay_startup_secs: f64,
    pub relay_rows_per_s: f64,
    /// Rows per second after "streaming".
    pub relay_stream_rows_per_s: f64,
    /// `relay_rows_per_s / recvlogical_rows_per_s`.
    pub ratio: f64,
    /// The relay process's peak resident set (`VmHWM`).
    pub relay_peak_rss_mib: f64,
    /// CPU (user + system) of the relay process during the drain.
    pub relay_cpu_secs: Option<f64>,
    /// CPU of the walsender serving the relay.
    pub relay_walsender_cpu_secs: Option<f64>,
    /// CPU of the Kafka broker while the relay drained, if it runs on this machine.
    pub broker_cpu_secs: Option<f64>,
    /// Busy share of all CPUs of the machine while the relay drained (0–1).
    pub relay_machine_busy: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CdcReport {
    pub params: CdcParams,
    pub rounds: Vec<CdcRound>,
    pub median: CdcRound,
}

fn median_round(rounds: &[CdcRound]) -> CdcRound {
    let f = |get: &dyn Fn(&CdcRound) -> f64| median(rounds.iter().map(get).collect());
    let opt = |get: &dyn Fn(&CdcRound) -> Option<f64>| {
        let v: Vec<f64> = rounds.iter().filter_map(get).collect();
        (!v.is_empty()).then(|| median(v))
    };
    CdcRound {
        round: "median".to_owned(),
        rows: f(&|r| r.rows as f64).round() as u64,
        transactions: f(&|r| r.transactions as f64).round() as u64,
        wal_mib: f(&|r| r.wal_mib),
        backlog_secs: f(&|r| r.backlog_secs),
        first: String::new(),
        recvlogical_secs: f(&|r| r.recvlogical_secs),
        recvlogical_rows_per_s: f(&|r| r.recvlogical_rows_per_s),
        recvlogical_walsender_cpu_secs: opt(&|r| r.recvlogical_walsender_cpu_secs),
        relay_secs: f(&|r| r.relay_secs),
        relay_startup_secs: f(&|r| r.relay_startup_secs),
        relay_rows_per_s: f(&|r| r.relay_rows_per_s),
        relay_stream_rows_per_s: f(&|r| r.relay_stream_rows_per_s),
        ratio: f(&|r| r.ratio),
        relay_peak_rss_mib: f(&|r| r.relay_peak_rss_mib),
        relay_cpu_secs: opt(&|r| r.relay_cpu_secs),
        relay_walsender_cpu_secs: opt(&|r| r.relay_walsender_cpu_secs),
        broker_cpu_secs: opt(&|r| r.broker_cpu_secs),
        relay_machine_busy: opt(&|r| r.relay_machine_busy),
    }
}

pub(crate) fn rate(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn secs_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{s:.2}"))
}

impl fmt::Display for CdcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cdc: {} row changes per round in transactions of {}, {} partitions per topic, \
             {} rounds, {} read-side shards; {}\n",
            rate(p.rows as f64),
            rate(p.txn_rows as f64),
            p.partitions,
            p.runs,
            p.shards,
            p.server_version
        );
        out.push_str(
            "| round | rows | WAL MiB | first | pg_recvlogical s | pg_recvlogical rows/s | relay s (startup) | relay rows/s | relay rows/s after start | ratio | relay peak RSS MiB | CPU s: relay / its walsender / broker | CPU s: recvlogical's walsender | machine busy |\n\
             |---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for r in self.rounds.iter().chain(std::iter::once(&self.median)) {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {:.2} | {} | {:.2} ({:.2}) | {} | {} | {:.2} | {:.1} | {} / {} / {} | {} | {} |",
                r.round,
                rate(r.rows as f64),
                r.wal_mib,
                r.first,
                r.recvlogical_secs,
                rate(r.recvlogical_rows_per_s),
                r.relay_secs,
                r.relay_startup_secs,
                rate(r.relay_rows_per_s),
                rate(r.relay_stream_rows_per_s),
                r.ratio,
                r.relay_peak_rss_mib,
                secs_opt(r.relay_cpu_secs),
                secs_opt(r.relay_walsender_cpu_secs),
                secs_opt(r.broker_cpu_secs),
                secs_opt(r.recvlogical_walsender_cpu_secs),
                r.relay_machine_busy
                    .map_or_else(|| "-".to_owned(), |b| format!("{:.0}%", b * 100.0)),
            );
        }
        let m = &self.median;
        let _ = write!(
            out,
            "\nmedian ratio relay / pg_recvlogical: {:.2} (target >= 0.5); relay peak RSS {:.1} MiB \
             (target < 64 MiB)",
            m.ratio, m.relay_peak_rss_mib
        );
        f.write_str(&out)
    }
}

// ---------------------------------------------------------------------------------- helpers

pub(crate) fn db_err(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Db { what, source }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// `X/Y` as PostgreSQL prints an LSN.
pub(crate) fn fmt_lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// The WAL insert position as a number.
pub(crate) async fn insert_lsn(client: &Client) -> Result<u64, BenchError> {
    let row = client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8",
            &[],
        )
        .await
        .map_err(db_err("read the WAL position"))?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// A slot's confirmed position and the pid of the walsender using it.
pub(crate) async fn slot_state(
    client: &Client,
    slot: &str,
) -> Result<Option<(u64, Option<i32>)>, BenchError> {
    let row = client
        .query_opt(
            "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::int8, active_pid
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(db_err("read pg_replication_slots"))?;
    Ok(row.map(|r| {
        (
            r.get::<_, Option<i64>>(0).unwrap_or(0) as u64,
            r.get::<_, Option<i32>>(1),
        )
    }))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are the 12th and 13th after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// `(VmRSS, VmHWM)` in KiB, from `/proc/<pid>/status`.
pub(crate) fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// `(busy, total)` jiffies of all CPUs, from `/proc/stat`.
pub(crate) fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

pub(crate) fn busy_share(start: Option<(u64, u64)>, end: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (start?, end?);
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}

/// The pid of the local process listening on TCP `port` (the Kafka broker, to count its CPU),
/// if it is on this machine and visible.
pub(crate) fn listener_pid(port: u16) -> Option<u32> {
    let want = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode
            if f.len() > 9 && f[1].ends_with(&want) && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// CPU of a process that may come and go (a walsender): the last value seen per pid.
#[derive(Default)]
pub(crate) struct CpuTracker {
    seen: Vec<(u32, f64, f64)>,
}

impl CpuTracker {
    pub(crate) fn sample(&mut self, pid: u32) {
        let Some(now) = cpu_secs(pid) else { return };
        match self.seen.iter_mut().find(|(p, _, _)| *p == pid) {
            Some(e) => e.2 = now,
            None => self.seen.push((pid, now, now)),
        }
    }

    /// CPU used since each pid was first seen (a pid first seen late loses its start).
    pub(crate) fn used(&self) -> Option<f64> {
        (!self.seen.is_empty()).then(|| self.seen.iter().map(|(_, a, b)| b - a).sum())
    }
}

pub(crate) fn send_sigterm(pid: u32) -> Result<(), BenchError> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| BenchError::Internal(format!("pid {pid} out of range")))?;
    // SAFETY: kill(2) with a pid of our own child and a valid signal number.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(BenchError::Io {
            what: format!("SIGTERM to {pid}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The newest `/usr/lib/postgresql/<major>/bin/pg_recvlogical`, else `pg_recvlogical` (PATH).
pub(crate) fn find_recvlogical() -> PathBuf {
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(dir) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in dir.flatten() {
            let Ok(major) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let bin = entry.path().join("bin/pg_recvlogical");
            if bin.is_file() && best.as_ref().is_none_or(|(m, _)| major > *m) {
                best = Some((major, bin));
            }
        }
    }
    best.map_or_else(|| PathBuf::from("pg_recvlogical"), |(_, p)| p)
}

/// Keeps the last lines a child wrote (for error messages) and when it logged "streaming".
#[derive(Default)]
pub(crate) struct ChildLog {
    lines: VecDeque<String>,
    streaming_at: Option<Instant>,
}

pub(crate) type SharedLog = Arc<Mutex<ChildLog>>;

pub(crate) fn collect_lines<R: AsyncRead + Unpin + Send + 'static>(reader: R, log: SharedLog) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(mut log) = log.lock() else { return };
            if log.streaming_at.is_none() && line.contains("INFO") && line.contains(" streaming") {
                log.streaming_at = Some(Instant::now());
            }
            if log.lines.len() == 40 {
                log.lines.pop_front();
            }
            log.lines.push_back(line);
        }
    });
}

pub(crate) fn tail(log: &SharedLog) -> String {
    log.lock()
        .map(|l| l.lines.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

pub(crate) fn streaming_at(log: &SharedLog) -> Option<Instant> {
    log.lock().ok().and_then(|l| l.streaming_at)
}

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

/// The `hermet` binary the relays run as: `--hermet-bin`, else this executable.
pub(crate) fn hermet_binary(env: &BenchEnv) -> Result<PathBuf, BenchError> {
    match &env.hermet_bin {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().map_err(io_err("find the hermet binary")),
    }
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

/// Runs `hermet bench cdc` (progress on stderr) and returns its report.
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
    fn proc_readers_see_this_process() {
        let pid = std::process::id();
        assert!(cpu_secs(pid).is_some());
        let (rss, hwm) = memory_kib(pid).unwrap_or_else(|| panic!("no /proc/{pid}/status"));
        assert!(rss > 0 && hwm >= rss);
        assert!(machine_jiffies().is_some());
    }
}
