//! The relay: PostgreSQL logical replication (`pgoutput`) → Debezium-compatible events → Kafka.
//!
//! Contract:
//! - **Nothing committed is lost.** The LSN confirmed to PostgreSQL (the slot's
//!   `confirmed_flush_lsn`) moves only past transactions whose every record Kafka acknowledged
//!   (`acks=all`, idempotent producer). A crash at any point restarts from the last confirmed
//!   LSN: some events may be produced twice, none is missing.
//! - **Per-key order.** Records are produced in commit order; the idempotent producer keeps the
//!   order within a partition, and the key (the primary key) picks the partition.
//! - **Snapshot consistent with the stream.** The slot is created with an exported snapshot;
//!   the tables are read in that snapshot (`op: "r"`) before streaming starts at the slot's
//!   consistent point. A crash during the snapshot drops the half-made slot and starts over, so
//!   at most one partial snapshot is ever duplicated.
//! - **A lost slot is never recreated silently.** Once a snapshot completed for a slot
//!   (`hermet_cdc_state`), a missing slot is an error: changes may have been dropped in between.
//!   Recovery: rebuild whatever consumes the topics, then delete the slot's row from
//!   `hermet_cdc_state` and restart the relay, which takes a new snapshot.
//! - **A stop confirms what was acknowledged.** When `shutdown` resolves the relay writes a
//!   fence (a non-transactional logical message) and keeps streaming until it reads it back:
//!   every transaction committed before the stop was asked for is then produced. It stops
//!   reading, waits for Kafka to acknowledge every record in flight, and returns only once the
//!   replication client has reported that position to PostgreSQL (a standby status update),
//!   so a restart neither loses nor repeats them. How long that may take is the caller's
//!   deadline to set.
//! - **Idle slots advance.** A heartbeat (`pg_logical_emit_message`, non-transactional) on an
//!   interval, and keepalives between transactions, move the confirmed LSN while captured tables
//!   are idle, so WAL does not pile up.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::FutureExt;
use hermet_core::Lsn;
use hermet_kafka::rdkafka::error::KafkaError as RdError;
use hermet_kafka::rdkafka::producer::Producer;
use hermet_kafka::KafkaError;
use pgwire_replication::client::ReplicationEvent;
use pgwire_replication::{FeedbackObserver, ReplicationClient, ReplicationConfig, TlsConfig};
use tokio::sync::Notify;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::envelope::{
    change_records, EnvelopeError, EnvelopeOptions, EventContext, Record, SnapshotMarker,
    SourceInfo, Table, TopicRouter, TransactionTracker, TupleChange,
};
use crate::pgoutput::{
    self, Column, DecodeError, LogicalMessage, Oid, RelColumn, RelationBody, RelationCache,
    ReplicaIdentity, TupleData,
};
use crate::telemetry;

mod catalog;
mod sink;
use catalog::{
    catalog_table, prepare, quote_ident, quote_literal, split_table, CatalogTable, SlotState,
};
use sink::{Done, Sink, Ticket};

/// Settings of the relay.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The database whose tables are captured.
    pub database_url: String,
    pub brokers: String,
    pub slot: String,
    pub publication: String,
    /// Captured tables, `schema.table` or `table` (schema `public`).
    pub tables: Vec<String>,
    /// Debezium's `topic.prefix` (also `source.name`).
    pub topic_prefix: String,
    /// Topic of a table in the routed schema, `{table}` replaced: the original design's
    /// `{table}.changed`.
    pub topic_template: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub heartbeat: Duration,
    /// Also write BEGIN/END events to `<prefix>.transaction`, like Debezium.
    pub transaction_topic: bool,
    /// Records produced but not yet acknowledged before the relay stops reading WAL.
    pub max_in_flight: usize,
    /// Rows fetched per round trip during the snapshot.
    pub snapshot_batch: usize,
    /// How often, while transactions flow, a watermark marker goes to every partition.
    pub watermark_interval: Duration,
    /// How long a record may wait in the producer for others to share its Kafka request. Every
    /// request costs the producer's thread a few wake-ups whatever it carries, so at light
    /// loads this, more than the records, sets the relay's CPU; it also adds up to this much to
    /// every change's latency (BENCHMARKS.md, "Relay CPU at light loads").
    pub linger: Duration,
}

/// Default of [`RelayConfig::linger`].
pub const DEFAULT_LINGER: Duration = Duration::from_millis(10);

/// Longest [`RelayConfig::linger`] accepted: every change may wait that long.
pub const MAX_LINGER: Duration = Duration::from_millis(1000);

/// Default of [`RelayConfig::watermark_interval`].
pub const DEFAULT_WATERMARK_INTERVAL: Duration = Duration::from_millis(50);

/// Default of [`RelayConfig::partitions`]. Every consumer fetch names every partition of its
/// topics and every watermark tick writes a marker to each, so the broker's work grows with the
/// count whatever the traffic: on two shared cores, 8 per topic gave the relay a commit → ack p99
/// of 215–261 ms at 1,000 msg/s against 45–96 ms with 2 (BENCHMARKS.md). Two still let two
/// processes share each group; a larger installation raises it (README, "Operations").
pub const DEFAULT_PARTITIONS: i32 = 2;

/// Shortest [`RelayConfig::watermark_interval`] accepted: every interval sends a marker to
/// every partition.
pub const MIN_WATERMARK_INTERVAL: Duration = Duration::from_millis(5);

impl RelayConfig {
    pub fn router(&self) -> Result<TopicRouter, RelayError> {
        TopicRouter::new(&self.topic_prefix, Some("public"), &self.topic_template)
            .map_err(|e| RelayError::Config(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("replication: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("kafka produce: {0}")]
    Produce(#[from] RdError),
    #[error("kafka did not acknowledge a record: {0}")]
    Delivery(String),
    #[error("decoding pgoutput: {0}")]
    Decode(#[from] DecodeError),
    #[error("building an event: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("relation {0} is unknown: the stream sent a row before its Relation message")]
    UnknownRelation(Oid),
    #[error(
        "replication slot {slot:?} is missing although the relay streamed from it before: \
         changes made meanwhile may be lost. Rebuild the consumers of the topics, then \
         `DELETE FROM hermet_cdc_state WHERE slot_name = '{slot}'` and restart to take a new snapshot"
    )]
    SlotLost { slot: String },
    #[error("the replication stream ended")]
    StreamEnded,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How often the replication client reports the acknowledged position to PostgreSQL (at most;
/// only when it moved, or as a keepalive reply). The slot's `confirmed_flush_lsn` trails Kafka's
/// acknowledgements by up to this much: at 1 s it quantized a drain of a few seconds to whole
/// seconds (`hermet-bench cdc`, BENCHMARKS.md); a status message is a few dozen bytes.
const STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// Connection settings of the replication client, from the database URL.
/// `reported` is notified whenever a standby status update told PostgreSQL about a newer
/// position.
fn replication_config(
    cfg: &RelayConfig,
    reported: Arc<Notify>,
) -> Result<ReplicationConfig, RelayError> {
    use tokio_postgres::config::Host;
    let pg: tokio_postgres::Config = cfg
        .database_url
        .parse()
        .map_err(|e| RelayError::Config(format!("database url: {e}")))?;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".to_owned(),
    };
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    Ok(ReplicationConfig::new(
        host,
        pg.get_user().unwrap_or("postgres"),
        password.unwrap_or_default(),
        pg.get_dbname().unwrap_or("postgres"),
        cfg.slot.clone(),
        cfg.publication.clone(),
    )
    .with_port(pg.get_ports().first().copied().unwrap_or(5432))
    .with_tls(TlsConfig::disabled())
    .with_status_interval(STATUS_INTERVAL)
    .with_feedback_observer(FeedbackObserver::new(move |_| reported.notify_one()))
    .with_application_name("hermet-cdc"))
}

async fn connect(url: &str) -> Result<Client, RelayError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "cdc control connection closed");
        }
    });
    Ok(client)
}

/// Kafka side: producing with bounded retries on a full local queue.
/// Runs the relay until `shutdown` resolves or an error stops it. On error nothing past the last
/// acknowledged transaction has been confirmed, so a restart resumes safely.
///
/// The relay runs on a thread of its own with a single-threaded runtime, whatever the caller's
/// runtime is. Its work is a chain of hand-offs per transaction (the replication worker, the
/// decoding loop, the producer); on a multi-threaded runtime a hand-off could wake another
/// worker thread, and at a light load wake-ups, not work, were most of the relay's CPU
/// (BENCHMARKS.md, "Relay CPU at light loads": this alone measured within the noise; counting
/// acknowledgements without a polling thread is what saved most). Everything the relay spawns
/// (the replication worker, the control connection) runs on that thread and ends with it.
pub async fn run(
    cfg: RelayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    let (mut done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("hermet-relay".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let e = RelayError::Config(format!("starting the relay's runtime: {e}"));
                    let _ = done_tx.send(Err(e));
                    return;
                }
            };
            // A caller that stops waiting (its future dropped, as an aborted task's is) stops
            // the relay where it is, as dropping the relay's own future did: no fence, nothing
            // more confirmed, and the runtime's end closes the connections.
            let result = rt.block_on(async {
                tokio::select! {
                    r = run_here(cfg, shutdown) => Some(r),
                    () = done_tx.closed() => None,
                }
            });
            drop(rt);
            if let Some(r) = result {
                let _ = done_tx.send(r);
            }
        })
        .map_err(|e| RelayError::Config(format!("starting the relay's thread: {e}")))?;
    done_rx
        .await
        .unwrap_or_else(|_| Err(RelayError::Config("the relay's thread panicked".into())))
}

async fn run_here(cfg: RelayConfig, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
    // The steps before streaming (topics, partition metadata, the snapshot) can take long and
    // confirm nothing, so a stop abandons them; a half-taken snapshot is redone on restart.
    let shutdown = shutdown.shared();
    let router = cfg.router()?;
    let control = connect(&cfg.database_url).await?;
    let db_name = cfg
        .database_url
        .parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_dbname().map(str::to_owned))
        .unwrap_or_else(|| "postgres".into());
    let state = prepare(&control, &cfg).await?;

    let mut catalog = HashMap::new();
    let mut topics = Vec::new();
    for t in &cfg.tables {
        let (schema, name) = split_table(t);
        let ct = catalog_table(&control, &schema, &name).await?;
        topics.push(router.topic(&schema, &name));
        catalog.insert((schema, name), ct);
    }
    if cfg.transaction_topic {
        topics.push(router.transaction_topic());
    }
    let topics_made = hermet_kafka::ensure_topics(
        &cfg.brokers,
        &topics,
        cfg.partitions,
        cfg.replication_factor,
    );
    let Some(made) = unless_stopped(shutdown.clone(), topics_made).await else {
        return Ok(());
    };
    made?;
    let sink = Sink::new(&cfg.brokers, "hermet-cdc", cfg.linger)?;
    let options = EnvelopeOptions::default();
    let Some(markers) =
        unless_stopped(shutdown.clone(), partitions_of(&sink, &catalog, &router)).await
    else {
        return Ok(());
    };
    let markers = markers?;
    check_partition_counts(&markers, &topics_of(&catalog, &router), cfg.partitions)?;

    let reported = Arc::new(Notify::new());
    let mut repl =
        ReplicationClient::connect_gated(replication_config(&cfg, reported.clone())?).await?;
    if let SlotState::Fresh = state {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
            quote_ident(&cfg.slot)
        );
        let rows = repl.simple_query(&sql).await?;
        let row = rows
            .first()
            .ok_or_else(|| RelayError::Config("slot creation returned no row".into()))?;
        let text = |i: usize| {
            row.get(i)
                .and_then(|v| v.as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let snapshot_name = text(2)
            .ok_or_else(|| RelayError::Config("slot creation returned no snapshot".into()))?;
        let consistent = text(1).unwrap_or_default();
        control
            .execute(
                "INSERT INTO hermet_cdc_state (slot_name, snapshot_done) VALUES ($1, false)",
                &[&cfg.slot],
            )
            .await?;
        tracing::info!(slot = %cfg.slot, consistent_point = %consistent, "slot created, snapshot starts");
        let started = Instant::now();
        let taken = snapshot(
            &cfg,
            &snapshot_name,
            &catalog,
            &router,
            &sink,
            &db_name,
            &options,
        );
        let Some(rows) = unless_stopped(shutdown.clone(), taken).await else {
            tracing::info!(slot = %cfg.slot, "stopped during the snapshot: it starts over next time");
            return Ok(());
        };
        let rows = rows?;
        control
            .execute(
                "UPDATE hermet_cdc_state SET snapshot_done = true WHERE slot_name = $1",
                &[&cfg.slot],
            )
            .await?;
        tracing::info!(
            rows,
            secs = started.elapsed().as_secs_f64(),
            "snapshot done"
        );
    }
    repl.start().await?;
    repl.wait_started().await?;
    tracing::info!(slot = %cfg.slot, publication = %cfg.publication, "streaming");
    let ctx = StreamCtx {
        cfg: &cfg,
        control: &control,
        catalog: &catalog,
        router: &router,
        sink: &sink,
        db: &db_name,
        options: &options,
        markers: &markers,
        reported: &reported,
    };
    stream(ctx, repl, shutdown).await
}

/// `step`'s result, or `None` if `stop` resolves first.
async fn unless_stopped<T>(
    stop: impl Future<Output = ()>,
    step: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = stop => None,
        v = step => Some(v),
    }
}

/// How long after the last captured commit keepalive positions still get watermark markers.
const KEEPALIVE_MARKERS_AFTER_COMMIT: Duration = Duration::from_secs(5);

/// Every partition of every data topic: where watermark markers go.
async fn partitions_of(
    sink: &Sink,
    catalog: &HashMap<(String, String), CatalogTable>,
    router: &TopicRouter,
) -> Result<Vec<(String, i32)>, RelayError> {
    let topics = topics_of(catalog, router);
    let producer = sink.producer();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for t in topics {
            // A topic created a moment ago may not show its partitions yet: wait for them, or
            // markers would miss whole topics and reads waiting on them would answer stale.
            let mut tries = 0;
            let ids: Vec<i32> = loop {
                let md = producer.client().fetch_metadata(Some(&t), Duration::from_secs(10))?;
                let ids: Vec<i32> = md.topics().first().map_or_else(Vec::new, |m| {
                    let ps = m.partitions();
                    if ps.iter().all(|p| p.leader() >= 0) {
                        ps.iter().map(|p| p.id()).collect()
                    } else {
                        Vec::new()
                    }
                });
                tries += 1;
                if !ids.is_empty() || tries >= 150 {
                    break ids;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            if ids.is_empty() {
                tracing::warn!(topic = %t, "no partitions with a leader: no watermark markers for this topic");
            }
            out.extend(ids.into_iter().map(|p| (t.clone(), p)));
        }
        Ok::<_, RdError>(out)
    })
    .await
    .map_err(|e| RelayError::Config(format!("metadata task: {e}")))?
    .map_err(RelayError::from)
}

fn topics_of(
    catalog: &HashMap<(String, String), CatalogTable>,
    router: &TopicRouter,
) -> Vec<String> {
    catalog.keys().map(|(s, n)| router.topic(s, n)).collect()
}

/// Refuses topics whose partition count is not `expected` (`cdc.partitions`). A reader's
/// `X-Hermet-Min-Lsn` wait counts `expected` partitions per topic, so with more the wait could
/// answer before a partition applied the write, and with fewer it could never answer fresh.
/// Topics are only ever created with `expected`; a mismatch means they were made or altered
/// outside hermet, or the setting changed after they were created.
fn check_partition_counts(
    markers: &[(String, i32)],
    topics: &[String],
    expected: i32,
) -> Result<(), RelayError> {
    let mut wrong = Vec::new();
    for t in topics {
        let n = markers.iter().filter(|(topic, _)| topic == t).count();
        // No partition with a leader yet was already reported; that is not a count to judge.
        if n > 0 && n != expected as usize {
            wrong.push(format!("{t} has {n}"));
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(RelayError::Config(format!(
        "cdc.partitions is {expected} but topic {}: set cdc.partitions (HERMET_CDC__PARTITIONS) \
         to the topics' count on every hermet process (Kafka adds partitions to a topic but \
         never removes them)",
        wrong.join(", topic ")
    )))
}

/// Sends a watermark marker for `at` to every partition, under a ticket of its own that
/// confirms `at` once Kafka has every marker. Returns the number of records sent.
async fn mark(sink: &Sink, markers: &[(String, i32)], at: Lsn) -> Result<usize, RelayError> {
    let rec = Record {
        key: None,
        value: None,
        headers: vec![(
            hermet_kafka::WATERMARK_HEADER,
            at.0.to_string().into_bytes(),
        )],
    };
    let ticket = sink.open();
    for (topic, p) in markers {
        sink.send_to(ticket, topic, Some(*p), &rec).await?;
    }
    sink.close(ticket, Some(at), None);
    Ok(markers.len())
}

/// What the streaming loop reads but does not own.
struct StreamCtx<'a> {
    cfg: &'a RelayConfig,
    control: &'a Client,
    catalog: &'a HashMap<(String, String), CatalogTable>,
    router: &'a TopicRouter,
    sink: &'a Sink,
    db: &'a str,
    options: &'a EnvelopeOptions,
    markers: &'a [(String, i32)],
    /// Notified when a standby status update reported a newer position.
    reported: &'a Notify,
}

/// Reads every captured table in the exported snapshot and produces it as `op: "r"`.
async fn snapshot(
    cfg: &RelayConfig,
    snapshot_name: &str,
    catalog: &HashMap<(String, String), CatalogTable>,
    router: &TopicRouter,
    sink: &Sink,
    db: &str,
    options: &EnvelopeOptions,
) -> Result<u64, RelayError> {
    let client = connect(&cfg.database_url).await?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot_name)
        ))
        .await?;
    let mut total = 0u64;
    for ((schema, name), ct) in catalog {
        let table = Table::with_key_columns(ct.relation.clone(), &key_refs(&ct.key_columns))?;
        let topic = router.topic(schema, name);
        let cols: Vec<String> = ct
            .relation
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        client
            .batch_execute(&format!(
                "DECLARE hermet_snap NO SCROLL CURSOR FOR SELECT {} FROM {}.{}",
                cols.join(", "),
                quote_ident(schema),
                quote_ident(name)
            ))
            .await?;
        let fetch = format!("FETCH {} FROM hermet_snap", cfg.snapshot_batch.max(1));
        loop {
            let msgs = client.simple_query(&fetch).await?;
            let ticket = sink.open();
            let mut sent = 0u64;
            for m in &msgs {
                if let SimpleQueryMessage::Row(r) = m {
                    let columns = (0..r.len())
                        .map(|i| match r.get(i) {
                            None => Column::Null,
                            Some(v) => Column::Text(Bytes::copy_from_slice(v.as_bytes())),
                        })
                        .collect();
                    let row = TupleData::new(columns);
                    let ctx = EventContext {
                        source: SourceInfo {
                            name: &cfg.topic_prefix,
                            db,
                            ts_ms: now_ms(),
                            tx_id: None,
                            lsn: None,
                            last_commit_lsn: None,
                            snapshot: SnapshotMarker::True,
                        },
                        now_ms: now_ms(),
                        options,
                    };
                    for rec in change_records(&table, &TupleChange::Read { row: &row }, &ctx, None)?
                    {
                        sink.send(ticket, &topic, &rec).await?;
                        sent += 1;
                    }
                }
            }
            sink.close(ticket, None, None);
            sink.wait().await?;
            if sent == 0 {
                break;
            }
            total += sent;
        }
        client.batch_execute("CLOSE hermet_snap").await?;
    }
    client.batch_execute("COMMIT").await?;
    Ok(total)
}

fn key_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A transaction being read from the stream.
struct OpenTx {
    xid: u32,
    commit_ts_ms: i64,
    /// The records of the transaction go under it; its commit closes it.
    ticket: Ticket,
    sent: usize,
    tracker: Option<TransactionTracker>,
}

/// Confirms the positions of the tickets Kafka has completed since the last call (`sink`'s
/// module docs) and takes their records off `in_flight`.
fn confirm(sink: &Sink, repl: &ReplicationClient, in_flight: &mut usize) -> Result<(), RelayError> {
    let mut upto = None;
    for Done {
        lsn,
        records,
        commit_ts,
    } in sink.completed()?
    {
        *in_flight -= records;
        upto = upto.max(lsn);
        if let Some(ts) = commit_ts {
            telemetry::commit_to_ack((now_ms() - ts).max(0) as f64 / 1000.0);
        }
    }
    if let Some(lsn) = upto {
        repl.update_applied_lsn(pgwire_replication::Lsn(lsn.0));
        telemetry::confirmed(lsn);
    }
    Ok(())
}

/// The heartbeat (so an idle slot advances) and the slot-lag gauge, forever.
async fn housekeeping(control: &Client, cfg: &RelayConfig) {
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    let mut lag = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if let Err(e) = control
                    .execute("SELECT pg_logical_emit_message(false, 'hermet.heartbeat', '')", &[])
                    .await
                {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
            _ = lag.tick() => {
                let row = control.query_opt(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8
                       FROM pg_replication_slots WHERE slot_name = $1", &[&cfg.slot]).await;
                if let Ok(Some(row)) = row {
                    let bytes: Option<f64> = row.get(0);
                    telemetry::slot_lag(bytes.unwrap_or(0.0));
                }
            }
        }
    }
}

async fn stream(
    ctx: StreamCtx<'_>,
    mut repl: ReplicationClient,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let StreamCtx {
        cfg,
        control,
        catalog,
        router,
        sink,
        db,
        options,
        markers,
        reported,
    } = ctx;
    let mut relations = RelationCache::new();
    let mut marker_tick = tokio::time::interval(cfg.watermark_interval);
    let mut marked: Option<Lsn> = None;
    // A keepalive's position while no transaction is open: every commit before it has been
    // read (and produced). A write's `X-Hermet-Lsn` (`pg_current_wal_lsn()` after its commit) is
    // past the commit itself whenever other WAL was written meanwhile (other databases, the
    // projectors' own writes); markers at keepalive positions cover it without waiting for a
    // heartbeat. Only shortly after a captured commit, so the projectors' watermark writes
    // (WAL, hence keepalives, hence markers) do not keep each other busy while idle.
    let mut idle_at: Option<Lsn> = None;
    let mut last_commit_seen = Instant::now();
    let mut tables: HashMap<Oid, (Table, String)> = HashMap::new();
    let mut open: Option<OpenTx> = None;
    let mut in_flight = 0usize;
    // Acknowledgements are read at every marker tick, and while transactions stream (the tick
    // waits behind a busy stream) at least as often.
    let mut last_confirm = Instant::now();
    let mut last_commit: Option<Lsn> = None;
    // Set once a stop was asked for: the position of the fence the loop reads up to.
    let mut fence_at: Option<Lsn> = None;
    // Polled alongside the event loop rather than awaited inside it, so a slow control query
    // never holds up decoding, producing or acknowledging.
    let housekeeping = housekeeping(control, cfg);
    tokio::pin!(housekeeping);
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown, if fence_at.is_none() => {
                match fence(control).await {
                    Ok(at) => {
                        tracing::info!(fence = %at, in_flight, "stopping: streaming up to the fence");
                        fence_at = Some(at);
                    }
                    Err(e) => {
                        // Without a fence the relay stops where it is: what it did not read
                        // is streamed again after a restart.
                        tracing::warn!(error = %e, "stopping without a fence");
                        break;
                    }
                }
            }
            ev = repl.recv(), if in_flight < cfg.max_in_flight => {
                let Some(ev) = ev? else { return Err(RelayError::StreamEnded) };
                match ev {
                    ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                        let commit_ts_ms = pgoutput::PgTimestamp(commit_time_micros).unix_millis();
                        let tracker = cfg.transaction_topic.then(|| {
                            TransactionTracker::begin(xid, Lsn(u64::from(final_lsn)), commit_ts_ms)
                        });
                        let mut tx = OpenTx { xid, commit_ts_ms, ticket: sink.open(), sent: 0, tracker };
                        if let Some(t) = &tx.tracker {
                            sink.send(tx.ticket, &router.transaction_topic(), &t.begin_record()?).await?;
                            tx.sent += 1;
                        }
                        open = Some(tx);
                    }
                    ReplicationEvent::XLogData { wal_start, data, .. } => {
                        let msg = pgoutput::decode_bytes(data)?;
                        relations.observe(&msg);
                        if let LogicalMessage::Relation(rel) = &msg {
                            let (schema, name) = (rel.namespace.clone(), rel.name.clone());
                            let keys = match catalog.get(&(schema.clone(), name.clone())) {
                                Some(ct) => ct.key_columns.clone(),
                                None => catalog_table(control, &schema, &name).await?.key_columns,
                            };
                            let rel = relations.resolve(rel.id).map_err(|_| RelayError::UnknownRelation(rel.id))?.clone();
                            let table = Table::with_key_columns(rel, &key_refs(&keys))?;
                            tables.insert(table.relation().id, (table, router.topic(&schema, &name)));
                            continue;
                        }
                        let Some((rel_id, change)) = TupleChange::from_message(&msg) else {
                            if let LogicalMessage::Truncate(t) = &msg {
                                tracing::warn!(relations = ?t.relation_ids, "truncate is not relayed");
                                telemetry::truncate_ignored();
                            }
                            continue;
                        };
                        let (table, topic) = tables.get(&rel_id).ok_or(RelayError::UnknownRelation(rel_id))?;
                        let tx = open.as_mut();
                        let (xid, ts) = tx.as_ref().map_or((None, now_ms()), |t| (Some(i64::from(t.xid)), t.commit_ts_ms));
                        let ctx = EventContext {
                            source: SourceInfo {
                                name: &cfg.topic_prefix,
                                db,
                                ts_ms: ts,
                                tx_id: xid,
                                lsn: Some(Lsn(u64::from(wal_start))),
                                last_commit_lsn: last_commit,
                                snapshot: SnapshotMarker::False,
                            },
                            now_ms: now_ms(),
                            options,
                        };
                        let Some(tx) = tx else {
                            return Err(RelayError::Config("a row change arrived outside a transaction".into()));
                        };
                        for rec in change_records(table, &change, &ctx, tx.tracker.as_mut())? {
                            sink.send(tx.ticket, topic, &rec).await?;
                            tx.sent += 1;
                        }
                        telemetry::event_relayed(table.name());
                    }
                    ReplicationEvent::Commit { end_lsn, .. } => {
                        let Some(mut tx) = open.take() else { continue };
                        if let Some(t) = &tx.tracker {
                            sink.send(tx.ticket, &router.transaction_topic(), &t.end_record()?).await?;
                            tx.sent += 1;
                        }
                        let end = Lsn(u64::from(end_lsn));
                        last_commit = Some(end);
                        last_commit_seen = Instant::now();
                        in_flight += tx.sent;
                        sink.close(tx.ticket, Some(end), Some(tx.commit_ts_ms));
                        if last_confirm.elapsed() >= cfg.watermark_interval {
                            confirm(sink, &repl, &mut in_flight)?;
                            last_confirm = Instant::now();
                        }
                    }
                    ReplicationEvent::Message { transactional: false, lsn, .. } => {
                        // Heartbeats and other non-transactional messages: a position with
                        // nothing to deliver, confirmed once everything before it is.
                        let at = Lsn(u64::from(lsn));
                        in_flight += mark(sink, markers, at).await?;
                        marked = Some(at);
                        if fence_at.is_some_and(|f| at >= f) {
                            break;
                        }
                    }
                    ReplicationEvent::Message { .. } => {}
                    ReplicationEvent::KeepAlive { wal_end, .. } => {
                        if open.is_none() {
                            let at = Lsn(u64::from(wal_end));
                            idle_at = idle_at.max(Some(at));
                            // Nothing to deliver: confirmed once everything before it is.
                            let ticket = sink.open();
                            sink.close(ticket, Some(at), None);
                        }
                    }
                    ReplicationEvent::StoppedAt { .. } => return Err(RelayError::StreamEnded),
                }
            }
            // At the in-flight bound the stream is not read: only acknowledgements free it.
            () = tokio::time::sleep(sink::ACK_POLL), if in_flight >= cfg.max_in_flight => {
                confirm(sink, &repl, &mut in_flight)?;
                last_confirm = Instant::now();
            }
            _ = marker_tick.tick() => {
                confirm(sink, &repl, &mut in_flight)?;
                last_confirm = Instant::now();
                let recent = last_commit_seen.elapsed() < KEEPALIVE_MARKERS_AFTER_COMMIT;
                let at = if recent { last_commit.max(idle_at) } else { last_commit };
                if let Some(at) = at.filter(|l| marked.is_none_or(|m| *l > m)) {
                    in_flight += mark(sink, markers, at).await?;
                    marked = Some(at);
                }
            }
            () = &mut housekeeping => {}
        }
    }
    // Stopping: nothing more is read. What is in flight is acknowledged, then confirmed.
    let mut confirmed = None;
    for Done { lsn, .. } in sink.wait().await? {
        confirmed = confirmed.max(lsn);
    }
    if let Some(at) = confirmed {
        repl.update_applied_lsn(pgwire_replication::Lsn(at.0));
    }
    if let Some(at) = confirmed {
        telemetry::confirmed(at);
        // The worker reports a raised position within a status interval; stopping it first
        // would end the stream before it did. Events still arriving are past what was read and
        // come again after a restart.
        while repl.metrics().last_applied_lsn().as_u64() < at.0 {
            tokio::select! {
                () = reported.notified() => {}
                ev = repl.recv() => {
                    if ev?.is_none() {
                        return Err(RelayError::StreamEnded);
                    }
                }
            }
        }
        tracing::info!(confirmed = %at, "relay stopped: acknowledged records confirmed");
    }
    repl.shutdown().await?;
    Ok(())
}

/// Writes the fence of a stop: a non-transactional logical message, decoded in WAL order, so
/// every transaction that committed before it comes first in the stream. Returns its position.
async fn fence(control: &Client) -> Result<Lsn, RelayError> {
    let row = control
        .query_one(
            "SELECT pg_logical_emit_message(false, 'hermet.stop', '')::text",
            &[],
        )
        .await?;
    let text: String = row.get(0);
    text.parse::<Lsn>()
        .map_err(|e| RelayError::Config(format!("fence position {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(topic: &str, n: i32) -> Vec<(String, i32)> {
        (0..n).map(|p| (topic.to_owned(), p)).collect()
    }

    #[test]
    fn partition_counts_must_match_the_setting() {
        let topics = ["a".to_owned(), "b".to_owned()];
        let mut markers = parts("a", 2);
        markers.extend(parts("b", 2));
        assert!(check_partition_counts(&markers, &topics, 2).is_ok());

        let mut markers = parts("a", 2);
        markers.extend(parts("b", 8));
        let e = check_partition_counts(&markers, &topics, 2)
            .expect_err("a topic with 8 partitions under cdc.partitions = 2");
        let text = e.to_string();
        assert!(matches!(e, RelayError::Config(_)), "{text}");
        assert!(text.contains("topic b has 8"), "{text}");
        assert!(!text.contains("topic a"), "{text}");
        assert!(text.contains("HERMET_CDC__PARTITIONS"), "{text}");

        let e = check_partition_counts(&parts("a", 1), &topics[..1], 2)
            .expect_err("fewer partitions than the setting");
        assert!(e.to_string().contains("topic a has 1"), "{e}");
    }

    #[test]
    fn a_topic_without_partitions_yet_is_not_judged() {
        let topics = ["a".to_owned(), "b".to_owned()];
        assert!(check_partition_counts(&parts("a", 3), &topics, 3).is_ok());
    }
}
