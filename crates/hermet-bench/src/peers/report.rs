//! The report of `bench peers`: what each peer measured, and how it is printed.

#[allow(unused_imports)]
use super::*;

/// hermet's relay or Debezium.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Hermet,
    Debezium,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Peer::Hermet => "hermet",
            Peer::Debezium => "Debezium",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeersParams {
    pub rows: u64,
    pub txn_rows: u64,
    pub partitions: i32,
    pub runs: usize,
    pub rates: Vec<f64>,
    pub live_secs: u64,
    pub idle_secs: u64,
    pub crash_rate: f64,
    pub crash_secs: u64,
    pub server_version: String,
    pub hermet_bin: String,
    pub debezium_script: String,
    pub debezium_extra_config: Option<String>,
}

/// What the checker found on a peer's topics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Changes that had to be on Kafka.
    pub expected: u64,
    /// Of those, how many were found (at least once).
    pub found: u64,
    pub missing: u64,
    /// Records of a change already seen (at-least-once re-delivery).
    pub duplicates: u64,
    /// First occurrences of a key's change that came after a later change of the same key.
    pub out_of_order: u64,
}

impl Check {
    fn add(&mut self, o: &Check) {
        self.expected += o.expected;
        self.found += o.found;
        self.missing += o.missing;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
    }
}

/// Commit → on-Kafka latency at one offered load.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LatencyStat {
    pub offered_per_s: f64,
    pub achieved_per_s: f64,
    pub changes: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU of the peer's process while the load ran and was drained, per 100,000 changes.
    pub cpu_per_100k: Option<f64>,
    pub check: Check,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CrashStat {
    pub changes: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// From the restart until the last change was read back.
    pub recovery_secs: f64,
}

/// One peer in one round (or the median over rounds).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerStats {
    /// Backlog drain, from spawning the process until every row change was on Kafka.
    pub drain_secs: f64,
    /// From spawn until it logged that it streams.
    pub startup_secs: f64,
    pub drain_rows_per_s: f64,
    pub drain_stream_rows_per_s: f64,
    /// CPU (user + system) of the peer's process during the drain.
    pub drain_cpu_secs: Option<f64>,
    pub drain_cpu_per_100k: Option<f64>,
    /// The same from the moment it logged that it streams (process start left out).
    pub drain_stream_cpu_per_100k: Option<f64>,
    pub walsender_cpu_secs: Option<f64>,
    pub broker_cpu_secs: Option<f64>,
    /// Largest `VmHWM` of the peer's processes of the round.
    pub peak_rss_mib: f64,
    pub drain_check: Check,
    /// Order-independent digest of (table, key, LSN) of the drained records.
    pub drain_digest: u64,
    pub latency: Vec<LatencyStat>,
    /// CPU (user + system) of the peer's process over `--idle-secs` with nothing written, once
    /// it had caught up (`None` with `--idle-secs 0`).
    pub idle_cpu_secs: Option<f64>,
    pub crash: CrashStat,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeersRound {
    pub round: String,
    pub rows: u64,
    pub wal_mib: f64,
    pub first: String,
    pub recvlogical_secs: f64,
    pub recvlogical_rows_per_s: f64,
    pub hermet: PeerStats,
    pub debezium: PeerStats,
    /// Both peers put the same set of (table, key, LSN) on Kafka for the backlog.
    pub same_changes: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeersReport {
    pub params: PeersParams,
    pub rounds: Vec<PeersRound>,
}

/// `median (min–max)` of a per-round figure.
pub(crate) fn spread(
    rounds: &[PeersRound],
    get: &dyn Fn(&PeersRound) -> Option<f64>,
    digits: usize,
) -> (f64, String) {
    let v: Vec<f64> = rounds.iter().filter_map(get).collect();
    if v.is_empty() {
        return (f64::NAN, "-".to_owned());
    }
    let m = median(v.clone());
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s = if v.len() > 1 {
        format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
    } else {
        format!("{m:.digits$}")
    };
    (m, s)
}

impl fmt::Display for PeersReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        let r = &self.rounds;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "peers: hermet relay vs Debezium (bench/peers/debezium) on Kafka Connect, {} rounds; backlog {} row \
             changes (transactions of {}), {} partitions per topic; loads {:?} changes/s for {} s; \
             crash at {}/s for {} s; {}\n",
            p.runs,
            cdc::rate(p.rows as f64),
            cdc::rate(p.txn_rows as f64),
            p.partitions,
            p.rates,
            p.live_secs,
            p.crash_rate,
            p.crash_secs,
            p.server_version
        );
        out.push_str(
            "Medians over the rounds, (min–max) when there are several.\n\n\
             | figure | hermet | Debezium | hermet / Debezium | better |\n|---|--:|--:|--:|---|\n",
        );
        type Get = Box<dyn Fn(&PeerStats) -> Option<f64>>;
        let mut row = |name: &str, get: Get, digits: usize, higher_better: bool| {
            let (h, hs) = spread(r, &|x| get(&x.hermet), digits);
            let (d, ds) = spread(r, &|x| get(&x.debezium), digits);
            let ratio = if d.is_finite() && d != 0.0 && h.is_finite() {
                format!("{:.2}", h / d)
            } else {
                "-".to_owned()
            };
            let _ = writeln!(
                out,
                "| {name} | {hs} | {ds} | {ratio} | {} |",
                if higher_better { "higher" } else { "lower" }
            );
        };
        row(
            "backlog drain, rows/s (incl. process start)",
            Box::new(|s| Some(s.drain_rows_per_s)),
            0,
            true,
        );
        row(
            "backlog drain, rows/s after start",
            Box::new(|s| Some(s.drain_stream_rows_per_s)),
            0,
            true,
        );
        row(
            "backlog drain, s",
            Box::new(|s| Some(s.drain_secs)),
            2,
            false,
        );
        row(
            "process start until streaming, s",
            Box::new(|s| Some(s.startup_secs)),
            2,
            false,
        );
        for (k, rate) in p.rates.iter().enumerate() {
            row(
                &format!("latency p50 ms at {rate}/s"),
                Box::new(move |s| s.latency.get(k).map(|l| l.p50_ms)),
                0,
                false,
            );
            row(
                &format!("latency p99 ms at {rate}/s"),
                Box::new(move |s| s.latency.get(k).map(|l| l.p99_ms)),
                0,
                false,
            );
            row(
                &format!("achieved changes/s at {rate}/s"),
                Box::new(move |s| s.latency.get(k).map(|l| l.achieved_per_s)),
                0,
                true,
            );
            row(
                &format!("CPU s per 100k changes at {rate}/s"),
                Box::new(move |s| s.latency.get(k).and_then(|l| l.cpu_per_100k)),
                2,
                false,
            );
        }
        row(
            "idle CPU s (nothing written, --idle-secs)",
            Box::new(|s| s.idle_cpu_secs),
            2,
            false,
        );
        row("peak RSS MiB", Box::new(|s| Some(s.peak_rss_mib)), 1, false);
        row(
            "CPU s per 100k changes (drain, incl. start)",
            Box::new(|s| s.drain_cpu_per_100k),
            2,
            false,
        );
        row(
            "CPU s per 100k changes (drain, after start)",
            Box::new(|s| s.drain_stream_cpu_per_100k),
            2,
            false,
        );
        row(
            "walsender CPU s (drain)",
            Box::new(|s| s.walsender_cpu_secs),
            2,
            false,
        );
        row(
            "broker CPU s (drain)",
            Box::new(|s| s.broker_cpu_secs),
            2,
            false,
        );
        row(
            "crash: changes lost",
            Box::new(|s| Some(s.crash.lost as f64)),
            0,
            false,
        );
        row(
            "crash: duplicates",
            Box::new(|s| Some(s.crash.duplicates as f64)),
            0,
            false,
        );
        row(
            "crash: all back after restart, s",
            Box::new(|s| Some(s.crash.recovery_secs)),
            1,
            false,
        );
        let (_, rls) = spread(r, &|x| Some(x.recvlogical_rows_per_s), 0);
        let _ = writeln!(
            out,
            "| pg_recvlogical drain, rows/s (ceiling, same backlog) | {rls} | {rls} | - | - |"
        );

        out.push_str("\nCorrectness, summed over the rounds (drain: by count and version; loads and crash: every committed change):\n\n\
                      | peer | drain missing / duplicates / out of order | loads expected / missing / duplicates / out of order | crash changes / lost / duplicates / out of order |\n|---|---|---|---|\n");
        for (name, get) in [
            (
                "hermet",
                Box::new(|x: &PeersRound| x.hermet.clone())
                    as Box<dyn Fn(&PeersRound) -> PeerStats>,
            ),
            ("Debezium", Box::new(|x: &PeersRound| x.debezium.clone())),
        ] {
            let mut drain = Check::default();
            let mut live = Check::default();
            let mut crash = CrashStat::default();
            for x in r {
                let s = get(x);
                drain.add(&s.drain_check);
                for l in &s.latency {
                    live.add(&l.check);
                }
                crash.changes += s.crash.changes;
                crash.lost += s.crash.lost;
                crash.duplicates += s.crash.duplicates;
                crash.out_of_order += s.crash.out_of_order;
            }
            let _ = writeln!(
                out,
                "| {name} | {} / {} / {} | {} / {} / {} / {} | {} / {} / {} / {} |",
                drain.missing,
                drain.duplicates,
                drain.out_of_order,
                live.expected,
                live.missing,
                live.duplicates,
                live.out_of_order,
                crash.changes,
                crash.lost,
                crash.duplicates,
                crash.out_of_order
            );
        }
        let same = r.iter().filter(|x| x.same_changes).count();
        let _ = writeln!(
            out,
            "\nSame (table, key, version) set from both peers for the backlog: {same} of {} rounds.",
            r.len()
        );
        out.push_str("\nPer round:\n\n| round | first | rows | WAL MiB | pg_recvlogical rows/s | hermet rows/s | Debezium rows/s | hermet RSS MiB | Debezium RSS MiB |\n|---|---|--:|--:|--:|--:|--:|--:|--:|\n");
        for x in r {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.1} |",
                x.round,
                x.first,
                cdc::rate(x.rows as f64),
                x.wal_mib,
                cdc::rate(x.recvlogical_rows_per_s),
                cdc::rate(x.hermet.drain_rows_per_s),
                cdc::rate(x.debezium.drain_rows_per_s),
                x.hermet.peak_rss_mib,
                x.debezium.peak_rss_mib
            );
        }
        f.write_str(out.trim_end())
    }
}
