//! `hermet-bench peers`: hermet's CDC relay side by side with the original design's pipeline,
//! Debezium's PostgreSQL connector on Kafka Connect (standalone), on the same database, the same
//! Kafka and the same writes, in one run.
//!
//! Debezium is run by `bench/peers/debezium/debezium.sh run` (pinned jars from Maven Central,
//! the seed's connector config with its own slot, publication and topic prefix); that script
//! `exec`s the JVM, so the child's pid is the Connect process whose RSS and CPU are read.
//! hermet's relay is `hermet serve --role cdc` of the `hermet` binary (`--hermet-bin`), as in
//! `bench cdc`.
//!
//! One scratch database (migrated), per round:
//!
//! 1. The captured tables are emptied; each peer is started once on a fresh slot (an initial
//!    snapshot of empty tables), reaches "streaming" and is stopped with SIGTERM; a third slot is
//!    created for `pg_recvlogical`.
//! 2. The backlog of `bench cdc` is written (`--rows` row changes, set-based SQL).
//! 3. Each peer in turn (the order alternates from round to round; `pg_recvlogical` drains
//!    between them, as the ceiling):
//!    - **drain**: started again, timed from spawn until the whole backlog is on Kafka (hermet:
//!      its slot's `confirmed_flush_lsn` passed the backlog's end, which it confirms only after
//!      Kafka acknowledged every record before it; Debezium: the end offsets of its topics grew
//!      by the backlog's row count — Debezium confirms to the slot only when Connect flushes
//!      offsets, so its slot cannot be used). Then the topics are read back and checked.
//!    - **latency** at each `--rates` offered load for `--live-secs`: one writer commits a
//!      transaction every 10 ms (half message inserts, half `users.profile_ver` increments over
//!      500 users, so keys get many versions) with what the schedule owes by then (a late tick
//!      writes a bigger transaction; "achieved" is what was really committed). Latency of a change = the record's Kafka timestamp
//!      minus `source.ts_ms` of its envelope. The topics are created with
//!      `message.timestamp.type=LogAppendTime`, so the Kafka timestamp is the broker's clock
//!      when it appended the record; `source.ts_ms` is PostgreSQL's commit timestamp (both
//!      peers fill it from the pgoutput BEGIN message). Both clocks are this machine's
//!      `CLOCK_REALTIME`, in milliseconds, so a latency is "commit → appended on Kafka" with
//!      1 ms resolution. It includes the commit's WAL flush (the timestamp is taken before it).
//!    - **crash**: the writer runs at `--crash-rate` for `--crash-secs`; halfway the peer gets
//!      SIGKILL, is started again 1 s later on the same slot (and offsets file), and the topics
//!      are read until every change is there (or nothing new came for 90 s): lost and duplicated
//!      changes are counted.
//!
//! **Correctness** (both peers, same checker, [`check_live`] / [`check_drain`]): for the live
//! loads every committed change is known (message ids, and each user's contiguous run of
//! `profile_ver` values read back with `RETURNING`), so a change missing from Kafka is found
//! exactly; duplicates are counted separately (at-least-once delivery after a crash is not an
//! error, a loss is); per-key order means the first occurrences of a key's versions come in
//! increasing order. For the backlog, where the SQL writes rows in bulk, the check is by count
//! and by version (`users.profile_ver`, `channels.last_seq`; the other tables get one insert per
//! key): no duplicate (table, key, version), versions increasing per key, as many records as row
//! changes, and the same order-independent digest of (table, key, version) on both peers.
//!
//! At the end (also on error or Ctrl-C) the slots, the topics and the database are dropped.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hermet_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use hermet_kafka::rdkafka::message::Message;
use hermet_kafka::rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::process::Command;
use tokio_postgres::Client;

use crate::cdc::{
    self, cpu_secs, db_err, drain_recvlogical, drop_slot, find_recvlogical, io_err, memory_kib,
    slot_state, streaming_at, tail, write_backlog, CpuTracker, RelayProc, RelaySpec, POLL, STALL,
    TABLES,
};
use crate::report::median;
use crate::{admin_connect, drop_database, BenchEnv, BenchError, BenchOptions};

mod checker;
mod kafka;
mod live;
mod report;
mod turn;

pub use checker::*;
use kafka::*;
use live::*;
pub use report::*;
use turn::*;

/// Users whose `profile_ver` the live writer increments (ids 1..=this, capped by the backlog's
/// user count).
const USER_RING: i64 = 500;

// ---------------------------------------------------------------------------------- processes

struct Setup<'a> {
    env: &'a BenchEnv,
    opts: &'a BenchOptions,
    url: &'a str,
    database: &'a str,
    tag: &'a str,
    shards: u32,
    hermet_bin: &'a Path,
    script: &'a Path,
    recvlogical: &'a Path,
    broker_pid: Option<u32>,
    rest_port: u16,
}

/// Names of one peer's slot and topics in one round.
struct PeerRound {
    peer: Peer,
    round: usize,
    slot: String,
    template: String,
    topics: Topics,
}

impl PeerRound {
    fn new(s: &Setup<'_>, peer: Peer, round: usize) -> PeerRound {
        let short = match peer {
            Peer::Hermet => "hermet",
            Peer::Debezium => "dbz",
        };
        let template = format!("hermet_peers_{}_{round}_{short}.{{table}}.changed", s.tag);
        PeerRound {
            peer,
            round,
            slot: format!("hp_{}_{round}_{short}", s.tag),
            topics: Topics {
                names: TABLES
                    .iter()
                    .map(|t| template.replace("{table}", t))
                    .collect(),
                partitions: s.opts.partitions,
            },
            template,
        }
    }

    /// Debezium's `topic.prefix` (its RegexRouter appends `.<table>.changed`).
    fn prefix(&self) -> String {
        self.template
            .trim_end_matches(".{table}.changed")
            .to_owned()
    }

    /// Every topic to delete at the end: the table topics, and for Debezium `<prefix>.message`,
    /// where it writes the logical decoding messages it reads (hermet's relay heartbeats with
    /// `pg_logical_emit_message`), outside the seed's RegexRouter.
    fn all_topics(&self) -> Vec<String> {
        let mut v = self.topics.names.clone();
        if self.peer == Peer::Debezium {
            v.push(format!("{}.message", self.prefix()));
        }
        v
    }

    fn spawn(&self, s: &Setup<'_>, fresh: bool) -> Result<RelayProc, BenchError> {
        match self.peer {
            Peer::Hermet => RelayProc::spawn(&RelaySpec {
                bin: s.hermet_bin,
                database_url: s.url,
                brokers: &s.env.kafka_brokers,
                shards: s.shards,
                slot: &self.slot,
                topic_template: &self.template,
                partitions: s.opts.partitions,
            }),
            Peer::Debezium => {
                let mut cmd = Command::new("bash");
                cmd.arg(s.script)
                    .arg("run")
                    .env("HERMET_DATABASE_URL", s.url)
                    .env("HERMET_KAFKA_BROKERS", &s.env.kafka_brokers)
                    .env("DBZ_DATABASE", s.database)
                    .env("DBZ_NAME", format!("bench_{}_{}", s.tag, self.round))
                    .env("DBZ_TOPIC_PREFIX", self.prefix())
                    .env("DBZ_SLOT", &self.slot)
                    .env("DBZ_PUBLICATION", format!("hp_{}_dbz_pub", s.tag))
                    .env("DBZ_REST_PORT", s.rest_port.to_string())
                    .env("DBZ_FRESH", if fresh { "1" } else { "0" })
                    .env(
                        "DBZ_EXTRA_CONFIG",
                        s.opts.debezium_config.clone().unwrap_or_default(),
                    )
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                RelayProc::spawn_command(cmd, "Debezium (Kafka Connect)")
            }
        }
    }
}

async fn wait_streaming(p: &mut RelayProc, what: Peer) -> Result<(), BenchError> {
    let deadline = Instant::now() + STALL;
    loop {
        p.check_alive()
            .map_err(|e| BenchError::Scenario(format!("{what}: {e}")))?;
        if streaming_at(&p.log).is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Scenario(format!(
                "{what} did not reach \"streaming\" within {} s; its last lines:\n{}",
                STALL.as_secs(),
                tail(&p.log)
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (up to 30 s) until no walsender holds the slot: PostgreSQL notices a killed client's
/// connection only when it next writes to it, and a peer restarted before that is refused.
async fn wait_slot_released(client: &Client, slot: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some((_, Some(pid))) = slot_state(client, slot).await? {
        if Instant::now() > deadline {
            return Err(BenchError::Scenario(format!(
                "slot {slot} is still held by walsender {pid} 30 s after its client was killed"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// SIGTERM and wait; Connect exits with 143 after a clean shutdown, so the status is only logged.
async fn stop(p: RelayProc, what: Peer) -> Result<(), BenchError> {
    let log = p.log.clone();
    let status = p.stop().await?;
    if !status.success() && what == Peer::Hermet {
        eprintln!(
            "bench peers: {what} exited with {status} after SIGTERM; its last lines:\n{}",
            tail(&log)
        );
    }
    Ok(())
}

fn peak_rss(p: &RelayProc, peak: &mut u64) {
    if let Some((_, hwm)) = memory_kib(p.pid) {
        *peak = (*peak).max(hwm);
    }
}

/// Starts a peer on its fresh slot (snapshot of the empty tables), waits until it streams, stops it.
///
/// Debezium stores its position (Connect's offsets file) only with a record it produced: after a
/// snapshot of empty tables and no change it has none, and its next start takes a new snapshot
/// of whatever the tables hold then, instead of streaming the backlog from its slot. So, while it
/// streams, one change it can record is made (a user inserted and deleted in one transaction,
/// leaving the tables empty), and it is stopped (SIGTERM: Connect commits the offsets) once that
/// change is on Kafka. hermet is primed after this, on a slot created after that change.
async fn prime(s: &Setup<'_>, client: &Client, pr: &PeerRound) -> Result<(), BenchError> {
    let mut p = pr.spawn(s, true)?;
    wait_streaming(&mut p, pr.peer).await?;
    if pr.peer == Peer::Debezium {
        let brokers = &s.env.kafka_brokers;
        let from = offsets_now(brokers, &pr.topics).await?;
        client
            .batch_execute(
                "BEGIN;
                 INSERT INTO users (id, nickname, created_at, updated_at) VALUES (-1, 'primer', 0, 0);
                 DELETE FROM users WHERE id = -1;
                 COMMIT",
            )
            .await
            .map_err(db_err("write the priming change"))?;
        let primer = |e: &[Event]| e.iter().any(|x| x.key == "{\"id\":-1}");
        let events = read_back(brokers, &pr.topics, &from, STALL, primer).await?;
        if !primer(&events) {
            return Err(BenchError::Scenario(format!(
                "{}: the priming change did not reach Kafka within {} s; its last lines:\n{}",
                pr.peer,
                STALL.as_secs(),
                tail(&p.log)
            )));
        }
    }
    stop(p, pr.peer).await
}

async fn round(
    s: &Setup<'_>,
    client: &mut Client,
    i: usize,
    ctx_next: &mut i64,
    topics: &mut Vec<String>,
) -> Result<PeersRound, BenchError> {
    client
        .batch_execute(&format!("TRUNCATE {} CASCADE", TABLES.join(", ")))
        .await
        .map_err(db_err("empty the captured tables"))?;
    let peers = [
        PeerRound::new(s, Peer::Hermet, i),
        PeerRound::new(s, Peer::Debezium, i),
    ];
    for pr in &peers {
        topics.extend(pr.all_topics());
        create_topics(&s.env.kafka_brokers, &pr.topics.names, s.opts.partitions).await?;
    }
    let recv_slot = format!("hp_{}_{i}_recvlogical", s.tag);
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&recv_slot],
        )
        .await
        .map_err(db_err("create the pg_recvlogical slot"))?;
    // Debezium first: its priming change must come before hermet's slot exists.
    for pr in peers.iter().rev() {
        eprintln!(
            "bench peers: round {i}: priming {} (slot {})",
            pr.peer, pr.slot
        );
        prime(s, client, pr).await?;
    }
    let backlog = write_backlog(client, s.opts.rows, s.opts.txn_rows).await?;
    let backlog_end_ms = now_ms();
    eprintln!(
        "bench peers: round {i}: backlog of {} row changes, {:.0} MiB of WAL, written in {:.1} s",
        backlog.rows,
        backlog.wal_bytes as f64 / 1048576.0,
        backlog.secs
    );
    cdc::settle_backlog(client, "peers").await?;
    let users: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .map_err(db_err("count users"))?
        .get(0);
    let groups: i64 = client
        .query_one("SELECT count(*) FROM channels", &[])
        .await
        .map_err(db_err("count channels"))?
        .get(0);
    let max_message: i64 = client
        .query_one("SELECT coalesce(max(id), 0) FROM messages", &[])
        .await
        .map_err(db_err("read the last message id"))?
        .get(0);
    let mut ctx = Ctx {
        s,
        ring: USER_RING.min(users).max(1),
        groups: groups.max(1),
        next_message: (*ctx_next).max(max_message + 1),
    };
    let order: [usize; 2] = if i % 2 == 1 { [0, 1] } else { [1, 0] };
    let mut results: [Option<PeerStats>; 2] = [None, None];
    let mut recv = None;
    for (n, &k) in order.iter().enumerate() {
        results[k] = Some(
            peer_turn(
                &mut ctx,
                client,
                &peers[k],
                backlog.rows,
                backlog.end_lsn,
                backlog_end_ms,
            )
            .await?,
        );
        if n == 0 {
            recv = Some(
                drain_recvlogical(client, s.recvlogical, s.url, &recv_slot, backlog.end_lsn)
                    .await?,
            );
        }
    }
    *ctx_next = ctx.next_message;
    for pr in &peers {
        drop_slot(client, &pr.slot).await?;
    }
    drop_slot(client, &recv_slot).await?;
    let [Some(hermet), Some(debezium)] = results else {
        return Err(BenchError::Internal("a peer did not run".to_owned()));
    };
    let recv = recv.ok_or_else(|| BenchError::Internal("pg_recvlogical did not run".to_owned()))?;
    Ok(PeersRound {
        round: i.to_string(),
        rows: backlog.rows,
        wal_mib: backlog.wal_bytes as f64 / 1048576.0,
        first: peers[order[0]].peer.to_string(),
        recvlogical_secs: recv.secs,
        recvlogical_rows_per_s: backlog.rows as f64 / recv.secs.max(1e-9),
        same_changes: hermet.drain_digest == debezium.drain_digest,
        hermet,
        debezium,
    })
}

async fn run_in(s: &Setup<'_>, topics: &mut Vec<String>) -> Result<PeersReport, BenchError> {
    let (mut client, server_version) = cdc::prepare_database(s.url, s.shards).await?;
    let mut rounds = Vec::with_capacity(s.opts.runs);
    let mut next_message = 0i64;
    for i in 1..=s.opts.runs {
        rounds.push(round(s, &mut client, i, &mut next_message, topics).await?);
    }
    Ok(PeersReport {
        params: PeersParams {
            rows: s.opts.rows,
            txn_rows: s.opts.txn_rows,
            partitions: s.opts.partitions,
            runs: s.opts.runs,
            rates: s.opts.rates.clone(),
            live_secs: s.opts.live_secs,
            idle_secs: s.opts.idle_secs,
            crash_rate: s.opts.crash_rate,
            crash_secs: s.opts.crash_secs,
            server_version,
            hermet_bin: s.hermet_bin.display().to_string(),
            debezium_script: s.script.display().to_string(),
            debezium_extra_config: s.opts.debezium_config.clone(),
        },
        rounds,
    })
}

/// `bench/peers/debezium/debezium.sh`, looked for above the working directory, then above the
/// executable (`target/release/hermet-bench` in a checkout).
fn find_script() -> Option<PathBuf> {
    let rel = Path::new("bench/peers/debezium/debezium.sh");
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf)),
    ];
    for start in starts.into_iter().flatten() {
        for dir in start.ancestors() {
            let p = dir.join(rel);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("find a free port"))?;
    Ok(l.local_addr().map_err(io_err("find a free port"))?.port())
}

/// Runs `hermet-bench peers` (progress on stderr) and returns its report.
pub async fn run(env: &BenchEnv, opts: &BenchOptions) -> Result<PeersReport, BenchError> {
    opts.check(crate::Scenario::Peers)?;
    let hermet_bin = cdc::hermet_binary(env)?;
    let script =
        match opts.debezium_script.clone().or_else(find_script) {
            Some(p) => p,
            None => return Err(BenchError::InvalidOptions(
                "bench/peers/debezium/debezium.sh not found above the working directory or the \
                 executable: run from the checkout or pass --debezium-script"
                    .to_owned(),
            )),
        };
    // Fetch the jars now (once), so no drain is timed with a download in it.
    let status = Command::new("bash")
        .arg(&script)
        .arg("fetch")
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(io_err(format!("run {} fetch", script.display())))?;
    if !status.success() {
        return Err(BenchError::Scenario(format!(
            "{} fetch failed ({status})",
            script.display()
        )));
    }
    let recvlogical = opts.pg_recvlogical.clone().unwrap_or_else(find_recvlogical);
    let shards = opts.shards.unwrap_or(env.shards);
    let tag = format!("{:08x}", rand::random::<u32>());
    let (name, url) = crate::create_scratch_database(env).await?;
    eprintln!(
        "bench peers: scratch database {name}, topics hermet_peers_{tag}_<round>_<peer>.<table>.changed, \
         relay {}, Debezium via {}",
        hermet_bin.display(),
        script.display()
    );
    let setup = Setup {
        env,
        opts,
        url: &url,
        database: &name,
        tag: &tag,
        shards,
        hermet_bin: &hermet_bin,
        script: &script,
        recvlogical: &recvlogical,
        broker_pid: cdc::local_broker_pid(&env.kafka_brokers),
        rest_port: free_port()?,
    };
    let mut topics = Vec::new();
    let result = tokio::select! {
        r = run_in(&setup, &mut topics) => r,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    // The peers and pg_recvlogical were children of the dropped future: killed on drop. A JVM
    // needs a moment to let go of its replication connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if topics.is_empty() {
        // Interrupted before the first round recorded its topics: name them all.
        for i in 1..=opts.runs {
            for peer in [Peer::Hermet, Peer::Debezium] {
                topics.extend(PeerRound::new(&setup, peer, i).all_topics());
            }
        }
    }
    // Connect's offsets and configs of each round.
    for i in 1..=opts.runs {
        let cleaned = Command::new("bash")
            .arg(&script)
            .arg("clean")
            .env("DBZ_NAME", format!("bench_{tag}_{i}"))
            .stdin(Stdio::null())
            .status()
            .await;
        if let Err(e) = cleaned {
            eprintln!("bench peers: could not delete Debezium's run folder of round {i}: {e}");
        }
    }
    if let Err(e) = cdc::delete_topic_names(&env.kafka_brokers, &topics).await {
        eprintln!("bench peers: could not delete the topics of the run: {e}");
    }
    if let Err(e) = cdc::drop_all_slots(&env.database_url, &name).await {
        eprintln!("bench peers: could not drop the slots of {name}: {e}");
    }
    if opts.keep_database {
        eprintln!("bench peers: kept database {name} (its slots are dropped)");
    } else if let Err(e) = drop_database(&env.database_url, &name).await {
        eprintln!("bench peers: could not drop the scratch database {name}: {e}");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(table: &str, id: i64, version: i64, lsn: i64) -> Event {
        Event {
            table: table.to_owned(),
            key: format!("{{\"id\":{id}}}"),
            lsn,
            version,
            commit_ms: 1000,
            kafka_ms: 1000 + lsn,
        }
    }

    fn expect(entries: &[(&str, i64, i64, i64)]) -> Expectation {
        let mut e = Expectation::default();
        for &(t, id, a, b) in entries {
            e.keys
                .insert((t.to_owned(), format!("{{\"id\":{id}}}")), (a, b));
        }
        e
    }

    #[test]
    fn live_check_passes_complete_ordered_input() {
        let x = expect(&[("users", 1, 3, 5), ("messages", 7, 0, 0)]);
        let events = vec![
            ev("users", 1, 2, 1), // an earlier load's change: ignored
            ev("users", 1, 3, 2),
            ev("messages", 7, 0, 3),
            ev("users", 1, 4, 4),
            ev("users", 1, 5, 5),
            ev("messages", 8, 0, 6), // not expected here: ignored
        ];
        let (c, lat) = check_live(&x, &events);
        assert_eq!(
            c,
            Check {
                expected: 4,
                found: 4,
                missing: 0,
                duplicates: 0,
                out_of_order: 0
            }
        );
        assert_eq!(lat, vec![2, 3, 4, 5]);
    }

    #[test]
    fn live_check_catches_missing_reordered_and_duplicated_changes() {
        let x = expect(&[
            ("users", 1, 1, 4),
            ("messages", 7, 0, 0),
            ("messages", 9, 0, 0),
        ]);
        let events = vec![
            ev("users", 1, 1, 1),
            ev("users", 1, 3, 3), // before 2: 2 is reordered
            ev("users", 1, 2, 2),
            ev("messages", 7, 0, 5),
            ev("users", 1, 1, 1), // replay after a restart
            ev("messages", 7, 0, 5),
            // users 4 and message 9 never arrive
        ];
        let (c, _) = check_live(&x, &events);
        assert_eq!(c.expected, 6);
        assert_eq!(c.found, 4);
        assert_eq!(c.missing, 2);
        assert_eq!(c.duplicates, 2);
        assert_eq!(c.out_of_order, 1);
    }

    #[test]
    fn drain_check_counts_and_orders_by_version() {
        // One LSN for all, as Debezium wrote them catching up: the version names the change.
        let good = vec![
            ev("users", 1, 1, 10),
            ev("users", 2, 1, 10),
            ev("users", 1, 2, 10),
        ];
        let (c, d1) = check_drain(3, &good);
        assert_eq!((c.missing, c.duplicates, c.out_of_order), (0, 0, 0));
        // Same changes in another partition interleaving: same digest.
        let other = vec![
            ev("users", 2, 1, 10),
            ev("users", 1, 1, 10),
            ev("users", 1, 2, 10),
        ];
        assert_eq!(check_drain(3, &other).1, d1);
        // Reordered within a key, one missing, one duplicated.
        let bad = vec![
            ev("users", 1, 2, 10),
            ev("users", 1, 1, 10),
            ev("users", 1, 1, 10),
        ];
        let (c, d2) = check_drain(3, &bad);
        assert_eq!((c.missing, c.duplicates, c.out_of_order), (1, 1, 1));
        assert_ne!(d1, d2);
    }

    #[test]
    fn events_parse_from_both_envelopes() {
        // Shapes as written by Debezium 3.6 (JSON converter, no schemas) and by hermet's relay.
        let dbz = br#"{"before":null,"after":{"id":1,"nickname":"a","profile_ver":4},"source":{"version":"3.6.1.Final","connector":"postgresql","name":"p","ts_ms":1795715768819,"snapshot":"false","db":"d","sequence":"[null,\"15158450904\"]","ts_us":1795715768819188,"schema":"public","table":"users","txId":599400,"lsn":15158450904,"xmin":null},"transaction":null,"op":"u","ts_ms":1795715769311}"#;
        let e = parse_event("users", br#"{"id":1}"#, dbz, 1795715769449)
            .unwrap_or_else(|| panic!("Debezium envelope not parsed"));
        assert_eq!(
            (e.version, e.lsn, e.commit_ms),
            (4, 15158450904, 1795715768819)
        );
        assert_eq!(e.kafka_ms - e.commit_ms, 630);
        assert!(parse_event("users", b"{}", b"{\"op\":\"u\"}", 0).is_none());
    }

    /// The script's connector config is the seed's, routed to the topics the benchmark reads
    /// (no download: `connector-config` only prints).
    #[test]
    fn debezium_script_prints_the_seed_config() {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/peers/debezium/debezium.sh");
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(&script).arg("connector-config");
        for (k, _) in std::env::vars() {
            if k.starts_with("DBZ_") || k.starts_with("HERMET_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .env(
                "HERMET_DATABASE_URL",
                "postgres://postgres@127.0.0.1:55432/ignored",
            )
            .env("DBZ_DATABASE", "scratch")
            .env("DBZ_TOPIC_PREFIX", "hermet_peers_x_1_dbz")
            .env("DBZ_SLOT", "hp_x_1_dbz")
            .env("DBZ_EXTRA_CONFIG", "poll.interval.ms=10")
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        let c = &v["config"];
        let get = |k: &str| c[k].as_str().unwrap_or_else(|| panic!("no {k} in {c}"));
        assert_eq!(
            get("connector.class"),
            "io.debezium.connector.postgresql.PostgresConnector"
        );
        assert_eq!(get("plugin.name"), "pgoutput");
        assert_eq!(get("database.port"), "55432");
        assert_eq!(get("database.dbname"), "scratch");
        assert_eq!(get("slot.name"), "hp_x_1_dbz");
        assert_eq!(get("poll.interval.ms"), "10");
        let tables: Vec<String> = TABLES.iter().map(|t| format!("public.{t}")).collect();
        assert_eq!(get("table.include.list"), tables.join(","));
        // The seed's RegexRouter, under the run's prefix: the names `PeerRound` reads.
        assert_eq!(
            get("transforms.route.type"),
            "org.apache.kafka.connect.transforms.RegexRouter"
        );
        assert_eq!(
            get("transforms.route.regex"),
            "hermet_peers_x_1_dbz\\.public\\.(.*)"
        );
        assert_eq!(
            get("transforms.route.replacement"),
            "hermet_peers_x_1_dbz.$1.changed"
        );
        let template = "hermet_peers_x_1_dbz.{table}.changed";
        assert_eq!(
            template.trim_end_matches(".{table}.changed"),
            get("topic.prefix")
        );
    }

    #[test]
    fn percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
