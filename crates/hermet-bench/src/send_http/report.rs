//! The report of `hermet-bench send-http`.

use std::fmt::{self, Write as _};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::{median, quantile_ms as ms};

/// One measured load: HTTP sends, or pgbench transactions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SideStats {
    /// Sends (HTTP: 201 answers; pgbench: `tps` without initial connection time) per second.
    pub per_s: f64,
    /// Sends completed (HTTP: 201 answers; pgbench: transactions processed).
    pub sent: u64,
    /// Rows the load added to `messages` (counted before and after): equal to `sent`.
    pub rows: i64,
    pub errors: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl SideStats {
    pub(crate) fn new(per_s: f64, sent: u64, rows: i64, errors: u64, h: &Histogram<u64>) -> Self {
        SideStats {
            per_s,
            sent,
            rows,
            errors,
            mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            p50_ms: ms(h, 0.50),
            p99_ms: ms(h, 0.99),
        }
    }

    fn median_of(all: &[&SideStats]) -> SideStats {
        let m = |f: fn(&SideStats) -> f64| median(all.iter().map(|s| f(s)).collect());
        SideStats {
            per_s: m(|s| s.per_s),
            sent: m(|s| s.sent as f64) as u64,
            rows: m(|s| s.rows as f64) as i64,
            errors: all.iter().map(|s| s.errors).sum(),
            mean_ms: m(|s| s.mean_ms),
            p50_ms: m(|s| s.p50_ms),
            p99_ms: m(|s| s.p99_ms),
        }
    }
}

/// One round (or the median of the rounds, `round == "median"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundRow {
    pub round: String,
    /// Which load of the two with the pipeline ran first.
    pub first: String,
    pub http: SideStats,
    /// pgbench while `hermet serve` (API, relay, projectors) runs.
    pub pgbench_pipeline: SideStats,
    /// pgbench with `hermet serve` stopped.
    pub pgbench_alone: SideStats,
    /// HTTP sends/s over pgbench's with the pipeline running.
    pub ratio_pipeline: f64,
    /// HTTP sends/s over pgbench's alone.
    pub ratio_alone: f64,
}

impl RoundRow {
    pub(crate) fn new(
        round: String,
        first: &str,
        http: SideStats,
        pgbench_pipeline: SideStats,
        pgbench_alone: SideStats,
    ) -> Self {
        let ratio = |p: &SideStats| {
            if p.per_s > 0.0 {
                http.per_s / p.per_s
            } else {
                0.0
            }
        };
        RoundRow {
            ratio_pipeline: ratio(&pgbench_pipeline),
            ratio_alone: ratio(&pgbench_alone),
            round,
            first: first.to_owned(),
            http,
            pgbench_pipeline,
            pgbench_alone,
        }
    }

    /// Each number the median of the rounds'; the ratios those of the median rates.
    pub(crate) fn median_of(rounds: &[RoundRow]) -> RoundRow {
        let side = |f: fn(&RoundRow) -> &SideStats| {
            SideStats::median_of(&rounds.iter().map(f).collect::<Vec<_>>())
        };
        RoundRow::new(
            "median".into(),
            "",
            side(|r| &r.http),
            side(|r| &r.pgbench_pipeline),
            side(|r| &r.pgbench_alone),
        )
    }
}

/// What `hermet-bench send-http` measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendHttpReport {
    pub chats: usize,
    /// HTTP connections and pgbench clients.
    pub concurrency: usize,
    pub pgbench_jobs: usize,
    pub duration_secs: u64,
    pub warmup_secs: u64,
    pub runs: usize,
    pub shards: u32,
    pub cache: bool,
    pub hermet_bin: String,
    pub pgbench: String,
    pub server_version: String,
    pub load_before: Option<String>,
    pub rounds: Vec<RoundRow>,
    pub median: RoundRow,
}

impl fmt::Display for SendHttpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## send-http: sends through the HTTP API next to pgbench running the same statements\n"
        );
        let _ = writeln!(
            s,
            "cdc; {} single chats; {} HTTP connections / pgbench clients (-j {}); {} s per load \
             after {} s warm-up; {} round(s); {} shards; list cache {}",
            self.chats,
            self.concurrency,
            self.pgbench_jobs,
            self.duration_secs,
            self.warmup_secs,
            self.runs,
            self.shards,
            if self.cache { "on" } else { "off" },
        );
        let _ = writeln!(
            s,
            "hermet: {}; {}; {}; load before: {}\n",
            self.hermet_bin,
            self.pgbench,
            self.server_version,
            self.load_before.as_deref().unwrap_or("?")
        );
        let _ = writeln!(
            s,
            "| round | load | sends/s | mean ms | p50 ms | p99 ms | sent | rows added | errors |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in self.rounds.iter().chain(std::iter::once(&self.median)) {
            for (name, x) in [
                ("HTTP (pipeline running)", &r.http),
                ("pgbench (pipeline running)", &r.pgbench_pipeline),
                ("pgbench alone", &r.pgbench_alone),
            ] {
                let _ = writeln!(
                    s,
                    "| {} | {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                    r.round, x.per_s, x.mean_ms, x.p50_ms, x.p99_ms, x.sent, x.rows, x.errors
                );
            }
        }
        let _ = writeln!(
            s,
            "\n| round | first | HTTP / pgbench (pipeline running) | HTTP / pgbench alone |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|");
        for r in self.rounds.iter().chain(std::iter::once(&self.median)) {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.2} |",
                r.round, r.first, r.ratio_pipeline, r.ratio_alone
            );
        }
        f.write_str(&s)
    }
}
