//! The report of `bench cdc`: its rows and how they are printed.

#[allow(unused_imports)]
use super::*;

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

pub(crate) fn median_round(rounds: &[CdcRound]) -> CdcRound {
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
