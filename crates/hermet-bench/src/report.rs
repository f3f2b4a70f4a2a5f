//! Benchmark results: one row per measured run plus the median, as a Markdown table or JSON.

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::{BenchError, Scenario};

/// A latency histogram in microseconds, 1 µs to 1 h, 3 significant digits.
pub(crate) fn histogram() -> Result<hdrhistogram::Histogram<u64>, BenchError> {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .map_err(|e| BenchError::Internal(format!("histogram: {e}")))
}

/// The `q` quantile of a microsecond histogram, in milliseconds (0 when empty).
pub(crate) fn quantile_ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// One measured run (or the median of the runs, `run == "median"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunStats {
    /// `1`, `2`, … or `median`.
    pub run: String,
    pub secs: f64,
    /// Successful operations.
    pub ops: u64,
    /// Operations that failed (after retries).
    pub errors: u64,
    /// Retries of operations that lost a race (deadlock / serialization failure).
    pub retries: u64,
    pub ops_per_s: f64,
    /// `send`: conversation-view rows written per second (message fan-out).
    pub rows_per_s: Option<f64>,
    /// `send`: members per message; `list`: conversations per page read.
    pub rows_per_op: f64,
    /// Operations per second of the unmeasured background writers, if any.
    pub background_ops_per_s: Option<f64>,
    pub latency_ms: Latency,
}

/// What was set up before the runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SetupStats {
    pub users: usize,
    pub friendships: usize,
    pub max_friends: usize,
    pub groups: usize,
    pub group_memberships: usize,
    pub largest_group: usize,
    pub users_secs: f64,
    pub friendships_secs: f64,
    pub groups_secs: f64,
}

/// The parameters of a benchmark.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Params {
    pub sync_mode: String,
    pub users: usize,
    pub seed: u64,
    pub mean_friends: f64,
    pub groups: usize,
    pub shards: u32,
    /// Measured workers (senders or readers).
    pub concurrency: usize,
    /// Background writers (`list` only).
    pub writers: usize,
    pub duration_secs: u64,
    pub warmup_secs: u64,
    pub runs: usize,
    pub page_size: i64,
    pub mix: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub params: Params,
    pub setup: SetupStats,
    pub runs: Vec<RunStats>,
    pub median: RunStats,
    /// A few error messages, if operations failed.
    pub error_samples: Vec<String>,
}

/// The median (the mean of the middle two for an even count); 0 for none.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The per-field median of the runs.
pub(crate) fn median_of(runs: &[RunStats]) -> RunStats {
    let f = |get: &dyn Fn(&RunStats) -> f64| median(runs.iter().map(get).collect());
    let opt = |get: &dyn Fn(&RunStats) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(get).collect();
        (!v.is_empty()).then(|| median(v))
    };
    RunStats {
        run: "median".to_owned(),
        secs: f(&|r| r.secs),
        ops: f(&|r| r.ops as f64).round() as u64,
        errors: f(&|r| r.errors as f64).round() as u64,
        retries: f(&|r| r.retries as f64).round() as u64,
        ops_per_s: f(&|r| r.ops_per_s),
        rows_per_s: opt(&|r| r.rows_per_s),
        rows_per_op: f(&|r| r.rows_per_op),
        background_ops_per_s: opt(&|r| r.background_ops_per_s),
        latency_ms: Latency {
            mean: f(&|r| r.latency_ms.mean),
            p50: f(&|r| r.latency_ms.p50),
            p90: f(&|r| r.latency_ms.p90),
            p99: f(&|r| r.latency_ms.p99),
            p999: f(&|r| r.latency_ms.p999),
            max: f(&|r| r.latency_ms.max),
        },
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

impl Report {
    /// The report as Markdown: a header line with the parameters and setup, then one table with
    /// a row per run and the median.
    pub fn to_markdown(&self) -> String {
        let p = &self.params;
        let s = &self.setup;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "**hermet-bench {}** ({}): {} users (seed {}), {} friendships (max {} per user), \
             {} groups ({} memberships, largest {}), {} shards; {} {}{}, {} s x {} runs after {} s warm-up",
            self.scenario,
            p.sync_mode,
            s.users,
            p.seed,
            s.friendships,
            s.max_friends,
            s.groups,
            s.group_memberships,
            s.largest_group,
            p.shards,
            p.concurrency,
            match self.scenario {
                // `cdc` has its own report (`cdc::CdcReport`).
                Scenario::Send | Scenario::Cdc | Scenario::Modes | Scenario::Cache | Scenario::Rebuild | Scenario::Peers | Scenario::Fanout | Scenario::Auth | Scenario::SendHttp | Scenario::Web => "senders",
                Scenario::List => "readers",
            },
            match self.scenario {
                Scenario::List if p.writers > 0 =>
                    format!(" + {} background writers ({})", p.writers, p.mix),
                Scenario::List => format!(", page {}", p.page_size),
                Scenario::Send | Scenario::Cdc | Scenario::Modes | Scenario::Cache | Scenario::Rebuild | Scenario::Peers | Scenario::Fanout | Scenario::Auth | Scenario::SendHttp | Scenario::Web => String::new(),
            },
            p.duration_secs,
            p.runs,
            p.warmup_secs,
        );
        let _ = writeln!(
            out,
            "\nsetup: users {:.1} s, friendships {:.1} s ({:.0}/s), groups {:.1} s\n",
            s.users_secs,
            s.friendships_secs,
            s.friendships as f64 / s.friendships_secs.max(1e-9),
            s.groups_secs
        );
        match self.scenario {
            Scenario::Send
            | Scenario::Cdc
            | Scenario::Modes
            | Scenario::Cache
            | Scenario::Rebuild
            | Scenario::Peers
            | Scenario::Fanout
            | Scenario::Auth
            | Scenario::SendHttp
            | Scenario::Web => {
                out.push_str(
                    "| scenario | run | messages/s | view rows/s | members/msg | p50 ms | p99 ms | p99.9 ms | max ms | errors | retries |\n\
                     |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
                );
                for r in self.runs.iter().chain(std::iter::once(&self.median)) {
                    let _ = writeln!(
                        out,
                        "| send | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} |",
                        r.run,
                        rate(r.ops_per_s),
                        r.rows_per_s.map_or_else(|| "-".to_owned(), rate),
                        r.rows_per_op,
                        ms(r.latency_ms.p50),
                        ms(r.latency_ms.p99),
                        ms(r.latency_ms.p999),
                        ms(r.latency_ms.max),
                        r.errors,
                        r.retries,
                    );
                }
            }
            Scenario::List => {
                out.push_str(
                    "| scenario | run | reads/s | rows/read | writer ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |\n\
                     |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
                );
                for r in self.runs.iter().chain(std::iter::once(&self.median)) {
                    let _ = writeln!(
                        out,
                        "| list | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
                        r.run,
                        rate(r.ops_per_s),
                        r.rows_per_op,
                        r.background_ops_per_s.map_or_else(|| "-".to_owned(), rate),
                        ms(r.latency_ms.p50),
                        ms(r.latency_ms.p90),
                        ms(r.latency_ms.p99),
                        ms(r.latency_ms.p999),
                        ms(r.latency_ms.max),
                        r.errors,
                    );
                }
            }
        }
        if !self.error_samples.is_empty() {
            out.push_str("\nerrors (sample):\n");
            for e in &self.error_samples {
                let _ = writeln!(out, "- {e}");
            }
        }
        out
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_markdown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, ops_per_s: f64, p99: f64) -> RunStats {
        RunStats {
            run: label.to_owned(),
            secs: 1.0,
            ops: ops_per_s as u64,
            errors: 0,
            retries: 0,
            ops_per_s,
            rows_per_s: Some(ops_per_s * 3.0),
            rows_per_op: 3.0,
            background_ops_per_s: None,
            latency_ms: Latency {
                p99,
                ..Latency::default()
            },
        }
    }

    #[test]
    fn median_per_field() {
        let m = median_of(&[
            run("1", 100.0, 9.0),
            run("2", 300.0, 1.0),
            run("3", 200.0, 5.0),
        ]);
        assert_eq!(m.run, "median");
        assert_eq!(m.ops_per_s, 200.0);
        assert_eq!(m.latency_ms.p99, 5.0);
        assert_eq!(m.rows_per_s, Some(600.0));
        assert_eq!(m.background_ops_per_s, None);
        assert_eq!(median(vec![1.0, 4.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn markdown_and_json() {
        let runs = vec![run("1", 100.0, 9.0)];
        let report = Report {
            scenario: Scenario::Send,
            params: Params {
                sync_mode: "dual_write".into(),
                users: 10,
                seed: 1,
                mean_friends: 2.0,
                groups: 1,
                shards: 4,
                concurrency: 2,
                writers: 0,
                duration_secs: 1,
                warmup_secs: 0,
                runs: 1,
                page_size: 50,
                mix: "send=1".into(),
            },
            setup: SetupStats::default(),
            median: median_of(&runs),
            runs,
            error_samples: vec![],
        };
        let md = report.to_markdown();
        assert!(md.contains("| send | 1 | 100 | 300 |"), "{md}");
        assert!(md.contains("| send | median |"), "{md}");
        let json = report.to_json().unwrap_or_default();
        assert!(json.contains("\"scenario\": \"send\""), "{json}");
    }
}
