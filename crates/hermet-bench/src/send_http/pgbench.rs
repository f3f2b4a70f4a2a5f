//! `bench send-http`: pgbench running the statements of one `cdc` send.
//!
//! The script is built from [`hermet_store::send_statements_for_benchmarks`], so it runs the
//! store's own SQL text with `-M prepared`: today one statement, the call of the procedure
//! `hermet_send_committed`, which sends, commits and answers the LSN after the commit (one round
//! trip and one `Sync`, as the store sends it). Were there several, they would go between
//! `\startpipeline` and `\endpipeline` (one round trip; pgbench ends the pipeline with one
//! `Sync`, tokio-postgres ends each statement with one). pgbench names parameters `:var`, so
//! `$1`..`$5` become pgbench variables; pgbench binds every occurrence as a parameter of its own
//! (the same value each time), so the server sees the same statement with more parameters, each
//! inferred from where it stands.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use hdrhistogram::Histogram;
use tokio::process::Command;

use crate::cdc::io_err;
use crate::report::histogram;
use crate::BenchError;

/// The pgbench variables standing for the send's parameters `$1`..`$5`: channel, now, sender,
/// type, content.
const VARS: [&str; 5] = ["ch", "now", "sender", "mtype", "content"];

/// The newest `/usr/lib/postgresql/<major>/bin/pgbench`, else `pgbench` on PATH.
pub(crate) fn find() -> PathBuf {
    crate::cdc::find_pg_tool("pgbench")
}

/// `sql` with `$1`..`$5` replaced by `:ch`, `:now`, … . Refuses any other `$n` and any `:name`
/// already in the text (pgbench would read it as a variable); `::` casts are left alone.
pub(crate) fn translate(sql: &str) -> Result<String, BenchError> {
    let bad = |m: String| Err(BenchError::Internal(format!("pgbench script: {m}")));
    let b = sql.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = String::with_capacity(sql.len() + 64);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'$' => {
                let end = (i + 1..b.len())
                    .find(|&j| !b[j].is_ascii_digit())
                    .unwrap_or(b.len());
                let n: usize = match sql[i + 1..end].parse() {
                    Ok(n) => n,
                    Err(_) => return bad(format!("a `$` that is not a parameter at byte {i}")),
                };
                match VARS.get(n.wrapping_sub(1)) {
                    Some(v) => {
                        out.push(':');
                        out.push_str(v);
                    }
                    None => return bad(format!("parameter ${n} has no pgbench variable")),
                }
                i = end;
            }
            b':' => {
                let end = (i..b.len()).find(|&j| b[j] != b':').unwrap_or(b.len());
                if end - i == 1 && end < b.len() && ident(b[end]) {
                    let name_end = (end..b.len()).find(|&j| !ident(b[j])).unwrap_or(b.len());
                    return bad(format!(
                        "`:{}` would be a pgbench variable",
                        &sql[end..name_end]
                    ));
                }
                out.push_str(&sql[i..end]);
                i = end;
            }
            _ => {
                let end = (i..b.len())
                    .find(|&j| b[j] == b'$' || b[j] == b':')
                    .unwrap_or(b.len());
                out.push_str(&sql[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

/// The chats the script sends into: chat `k` (0-based) is channel `first_channel + k` between
/// users `first_user + 2k` and `first_user + 2k + 1`.
pub(crate) struct Layout {
    pub(crate) chats: usize,
    pub(crate) first_channel: i64,
    pub(crate) first_user: i64,
}

/// The script: a random chat and side, then one send (its statements pipelined if several).
pub(crate) fn script(layout: &Layout) -> Result<String, BenchError> {
    let mut s = format!(
        "\\set k random(0, {last})\n\\set side random(0, 1)\n\\set ch {ch0} + :k\n\
         \\set sender {u0} + 2 * :k + :side\n",
        last = layout.chats.saturating_sub(1),
        ch0 = layout.first_channel,
        u0 = layout.first_user,
    );
    let statements = hermet_store::send_statements_for_benchmarks();
    let pipelined = statements.len() > 1;
    if pipelined {
        s.push_str("\\startpipeline\n");
    }
    for stmt in statements {
        if stmt.contains(';') {
            return Err(BenchError::Internal(
                "pgbench script: a statement with `;` would be split".into(),
            ));
        }
        s.push_str(&translate(stmt)?);
        s.push_str(";\n");
    }
    if pipelined {
        s.push_str("\\endpipeline\n");
    }
    Ok(s)
}

/// What one pgbench run measured.
pub(crate) struct PgbenchRun {
    /// `tps = … (without initial connection time)`.
    pub(crate) tps: f64,
    /// `number of transactions actually processed`.
    pub(crate) transactions: u64,
    /// `number of failed transactions` (0 when the line is missing: before PostgreSQL 15).
    pub(crate) failed: u64,
    /// Per-transaction latencies from the `--log` files (µs); `None` for an unlogged run.
    pub(crate) hist: Option<Histogram<u64>>,
}

/// pgbench against one database with one script.
pub(crate) struct Pgbench {
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) script: PathBuf,
    pub(crate) url: String,
    pub(crate) clients: usize,
    pub(crate) content: String,
}

impl Pgbench {
    /// Writes the script into `dir` (created).
    pub(crate) fn new(
        bin: PathBuf,
        dir: PathBuf,
        url: &str,
        clients: usize,
        content: &str,
        layout: &Layout,
    ) -> Result<Pgbench, BenchError> {
        std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        let script = dir.join("send.sql");
        std::fs::write(&script, self::script(layout)?)
            .map_err(io_err(format!("write {}", script.display())))?;
        Ok(Pgbench {
            bin,
            dir,
            script,
            url: url.to_owned(),
            clients,
            content: content.to_owned(),
        })
    }

    /// `pgbench --version`.
    pub(crate) async fn version(&self) -> Result<String, BenchError> {
        let out = Command::new(&self.bin)
            .arg("--version")
            .output()
            .await
            .map_err(io_err(format!("run {} --version", self.bin.display())))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// One run of `secs` seconds; with `log`, the per-transaction log is read (and deleted) for
    /// the latency percentiles. `now_ms` is the `$2` (`updated_at`, `created_at`) of every send.
    pub(crate) async fn run(
        &self,
        secs: u64,
        log: Option<&str>,
        now_ms: i64,
    ) -> Result<PgbenchRun, BenchError> {
        let jobs = self.clients.min(2);
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-n", "-M", "prepared"])
            .args(["-c", &self.clients.to_string(), "-j", &jobs.to_string()])
            .args(["-T", &secs.to_string()])
            .arg("-f")
            .arg(&self.script)
            .args(["-D", &format!("now={now_ms}"), "-D", "mtype=text"])
            .arg("-D")
            .arg(format!("content={}", self.content));
        let prefix = log.map(|name| self.dir.join(name));
        if let Some(p) = &prefix {
            cmd.arg("-l").arg(format!("--log-prefix={}", p.display()));
        }
        let out = cmd
            .arg(&self.url)
            .stdin(Stdio::null())
            // Interrupted (Ctrl-C), the run's future is dropped: pgbench must not go on.
            .kill_on_drop(true)
            .output()
            .await
            .map_err(io_err(format!("run {}", self.bin.display())))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            return Err(BenchError::Scenario(format!(
                "pgbench exited ({}):\n{}\n{stdout}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        let mut run = parse_output(&stdout)?;
        if let (Some(p), Some(name)) = (&prefix, log) {
            run.hist = Some(read_logs(&self.dir, name, p)?);
        }
        Ok(run)
    }
}

/// The numbers of pgbench's summary.
pub(crate) fn parse_output(stdout: &str) -> Result<PgbenchRun, BenchError> {
    let after = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
    };
    let missing =
        |what: &str| BenchError::Scenario(format!("pgbench printed no {what}:\n{stdout}"));
    let tps = stdout
        .lines()
        .filter(|l| l.contains("without initial connection time"))
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| missing("tps"))?;
    let transactions = after("number of transactions actually processed:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| missing("transaction count"))?;
    let failed = after("number of failed transactions:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(PgbenchRun {
        tps,
        transactions,
        failed,
        hist: None,
    })
}

/// The latencies (third field, µs) of every `--log` file of one run (`<prefix>.<pid>` and
/// `<prefix>.<pid>.<thread>`), which are deleted after.
fn read_logs(dir: &Path, name: &str, prefix: &Path) -> Result<Histogram<u64>, BenchError> {
    let mut hist = histogram()?;
    let entries = std::fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))?;
    let mut files = 0;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{name}."))
        {
            continue;
        }
        files += 1;
        let path = entry.path();
        let text =
            std::fs::read_to_string(&path).map_err(io_err(format!("read {}", path.display())))?;
        for line in text.lines() {
            // A failed transaction logs `failed` (or `skipped`) instead of its latency.
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<u64>().ok())
            {
                hist.saturating_record(us.max(1));
            }
        }
        std::fs::remove_file(&path).map_err(io_err(format!("remove {}", path.display())))?;
    }
    if files == 0 {
        return Err(BenchError::Scenario(format!(
            "pgbench wrote no log {}.*",
            prefix.display()
        )));
    }
    Ok(hist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_variables_and_casts_stay() {
        let t = |s: &str| translate(s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t("SELECT $1, $5, x::text, $3::bigint"),
            "SELECT :ch, :content, x::text, :sender::bigint"
        );
        assert!(translate("SELECT $6").is_err());
        assert!(translate("SELECT $10").is_err(), "$10 is not $1 then 0");
        assert!(translate("SELECT :x").is_err());
        assert!(translate("SELECT $ 1").is_err());
    }

    #[test]
    fn the_script_runs_the_store_statement() {
        let s = script(&Layout {
            chats: 200,
            first_channel: 3,
            first_user: 1,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.contains("\\set k random(0, 199)"));
        assert!(s.contains("\\set ch 3 + :k"));
        assert!(!s.contains("pipeline"), "one statement needs no pipeline");
        let body: Vec<&str> = s
            .lines()
            .filter(|l| !l.starts_with('\\') && !l.trim().is_empty())
            .collect();
        assert_eq!(body.len(), 1, "{s}");
        assert!(body[0].contains("hermet_send_committed(:ch, :now, :sender, :mtype, :content,"));
        assert!(body[0].ends_with(';'));
        assert!(!body[0].contains('$'));
    }

    #[test]
    fn reads_the_summary_of_pgbench_15() {
        let out = "transaction type: send.sql\nnumber of clients: 16\n\
                   number of transactions actually processed: 12345\n\
                   number of failed transactions: 0 (0.000%)\nlatency average = 1.234 ms\n\
                   initial connection time = 12.3 ms\n\
                   tps = 4115.000123 (without initial connection time)\n";
        let r = parse_output(out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.transactions, 12345);
        assert_eq!(r.failed, 0);
        assert!((r.tps - 4115.000123).abs() < 1e-9);
        assert!(parse_output("nothing").is_err());
    }
}
