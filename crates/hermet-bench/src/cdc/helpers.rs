//! Shared by `bench cdc` and `bench peers`: database and process helpers, CPU and memory readings.

#[allow(unused_imports)]
use super::*;

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

pub(crate) fn clock_ticks() -> f64 {
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

/// The newest `/usr/lib/postgresql/<major>/bin/<tool>` of a PostgreSQL client tool, else `tool`
/// (found on PATH when run).
pub(crate) fn find_pg_tool(tool: &str) -> PathBuf {
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(dir) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in dir.flatten() {
            let Ok(major) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let bin = entry.path().join("bin").join(tool);
            if bin.is_file() && best.as_ref().is_none_or(|(m, _)| major > *m) {
                best = Some((major, bin));
            }
        }
    }
    best.map_or_else(|| PathBuf::from(tool), |(_, p)| p)
}

/// [`find_pg_tool`] for `pg_recvlogical`.
pub(crate) fn find_recvlogical() -> PathBuf {
    find_pg_tool("pg_recvlogical")
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
