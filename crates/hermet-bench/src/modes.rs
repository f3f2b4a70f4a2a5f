//! `hermet-bench modes`: sync lag of each sync mode at a fixed offered send rate, and the Kafka
//! projectors' apply throughput on a backlog.
//!
//! For each mode (`dual_write`, `async`, `cdc`), on its own scratch database:
//!
//! 1. Migrate; `async`: start the outbox worker in-process; `cdc`: start the relay
//!    (`hermet_cdc::relay::run`, in-process, its own slot/topics per run) and both Kafka
//!    projector groups (in-process, group ids with a random prefix).
//! 2. Populate the workload through the store; wait until the projectors cover it.
//! 3. Offer `--rate` sends/s for `--duration-secs`, paced over `C` workers (each has a fixed
//!    schedule; a slot that is more than one period late is skipped and counted as missed).
//!    Every 10th send is sampled: its lag is the time from the send's response until
//!    `hermet_store::sync::covers` is true for its LSN for both projectors (a poller checks
//!    every 2 ms). `dual_write` applies views in the send's transaction: lag 0 by construction.
//! 4. `cdc` only: the projector groups are stopped, `--backlog` messages are sent (as fast as
//!    `C` workers go) with the relay running, the relay's slot confirms the backlog (Kafka holds
//!    it), then both groups are started and timed until they cover the backlog's last LSN. View
//!    rows = the sum over messages of the conversation's members (one conversation-view row
//!    each).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hermet_core::lsn::Lsn;
use hermet_core::projection::{ProjectionConfig, ReadModels};
use hermet_core::validate::{Content, MessageType};
use hermet_projector::consumer::GROUPS;
use hermet_store::{Store, SyncMode};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::report::{histogram, quantile_ms as ms};
use crate::stages::StageRecorder;
use crate::workload::{self, Op, Plan, PopulateOptions};
use crate::{admin_connect, drop_database, BenchEnv, BenchError, BenchOptions};

const SAMPLE_EVERY: u64 = 10;
const POLL: Duration = Duration::from_millis(2);
/// Longest wait for the projectors to cover something after the load stopped.
const CATCH_UP: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModeRow {
    pub mode: String,
    pub offered_per_s: f64,
    pub achieved_per_s: f64,
    pub sent: u64,
    pub missed: u64,
    pub errors: u64,
    pub send_p50_ms: f64,
    pub send_p99_ms: f64,
    pub lag_samples: u64,
    /// Samples not covered within the catch-up wait after the load.
    pub lag_timeouts: u64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProjectorRow {
    pub messages: u64,
    pub view_rows: u64,
    /// Sending the backlog (projectors stopped).
    pub backlog_secs: f64,
    /// From starting both groups until they cover the backlog.
    pub apply_secs: f64,
    pub messages_per_s: f64,
    pub view_rows_per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModesReport {
    pub users: usize,
    pub groups: usize,
    pub concurrency: usize,
    pub duration_secs: u64,
    pub partitions: i32,
    /// The relay's watermark-marker interval (cdc).
    pub watermark_ms: u64,
    /// The projector groups' batch wait (cdc).
    pub batch_wait_ms: u64,
    /// The projector groups' batch size limit (cdc).
    pub batch_max: usize,
    pub load_before: Option<String>,
    pub modes: Vec<ModeRow>,
    pub projector: Option<ProjectorRow>,
}

impl fmt::Display for ModesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "modes: {} users, {} groups, {} send workers, {} s per mode, {} partitions per topic \
             and watermark markers every {} ms, group batch wait {} ms and at most {} records \
             (cdc); load average before: {}\n",
            self.users,
            self.groups,
            self.concurrency,
            self.duration_secs,
            self.partitions,
            self.watermark_ms,
            self.batch_wait_ms,
            self.batch_max,
            self.load_before.as_deref().unwrap_or("-")
        );
        out.push_str(
            "| mode | offered msg/s | achieved msg/s | sent | missed | errors | send p50 ms | send p99 ms | lag samples (timed out) | lag p50 ms | lag p99 ms | lag max ms |\n\
             |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for r in &self.modes {
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {} | {} | {} | {:.2} | {:.2} | {} ({}) | {:.1} | {:.1} | {:.1} |",
                r.mode,
                r.offered_per_s,
                r.achieved_per_s,
                r.sent,
                r.missed,
                r.errors,
                r.send_p50_ms,
                r.send_p99_ms,
                r.lag_samples,
                r.lag_timeouts,
                r.lag_p50_ms,
                r.lag_p99_ms,
                r.lag_max_ms
            );
        }
        if let Some(p) = &self.projector {
            let _ = writeln!(
                out,
                "\nprojector throughput (cdc, both groups): {} messages, {} view rows; backlog \
                 sent in {:.1} s; applied in {:.2} s: {:.0} messages/s, {:.0} view rows/s",
                p.messages,
                p.view_rows,
                p.backlog_secs,
                p.apply_secs,
                p.messages_per_s,
                p.view_rows_per_s
            );
        }
        f.write_str(&out)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// A background task and the sender that stops it.
struct Task {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), String>>,
    name: String,
}

impl Task {
    fn spawn<F, E>(name: String, f: impl FnOnce(oneshot::Receiver<()>) -> F) -> Task
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let (stop, rx) = oneshot::channel();
        let fut = f(rx);
        let handle = tokio::spawn(async move { fut.await.map_err(|e| e.to_string()) });
        Task { stop, handle, name }
    }

    fn check(&self) -> Result<(), BenchError> {
        if self.handle.is_finished() {
            return Err(BenchError::Scenario(format!("{} stopped early", self.name)));
        }
        Ok(())
    }

    async fn stop(self) -> Result<(), BenchError> {
        let _ = self.stop.send(());
        self.handle
            .await?
            .map_err(|e| BenchError::Scenario(format!("{}: {e}", self.name)))
    }
}

async fn shutdown(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

/// What the lag checks need: the mode and what each projector's coverage is judged on.
#[derive(Clone)]
struct Coverage {
    pool: deadpool_postgres::Pool,
    mode: SyncMode,
    projectors: Vec<hermet_store::sync::Coverage>,
}

impl Coverage {
    async fn covers(&self, lsn: Lsn) -> Result<bool, BenchError> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(hermet_store::StoreError::from)?;
        for p in &self.projectors {
            if !hermet_store::sync::covers(&conn, self.mode, p, lsn).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn covered_upto(&self) -> Result<Option<Lsn>, BenchError> {
        let conn = self
            .pool
            .get()
            .await
            .map_err(hermet_store::StoreError::from)?;
        Ok(hermet_store::sync::covered_upto(&conn, self.mode, &self.projectors).await?)
    }

    async fn wait(
        &self,
        lsn: Lsn,
        limit: Duration,
        tasks: &[Task],
    ) -> Result<Duration, BenchError> {
        let started = Instant::now();
        loop {
            if self.covers(lsn).await? {
                return Ok(started.elapsed());
            }
            for t in tasks {
                t.check()?;
            }
            if started.elapsed() > limit {
                return Err(BenchError::Scenario(format!(
                    "projectors did not cover {lsn} within {} s",
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Polls coverage of sampled sends; returns the lag histogram and the timed-out count.
async fn lag_poller(
    cov: Coverage,
    mut rx: mpsc::UnboundedReceiver<(Lsn, Instant)>,
) -> Result<(Histogram<u64>, u64), BenchError> {
    let mut hist = histogram()?;
    let mut pending: BTreeMap<Lsn, Vec<Instant>> = BTreeMap::new();
    let mut closed = false;
    let mut closed_at: Option<Instant> = None;
    loop {
        loop {
            match rx.try_recv() {
                Ok((lsn, at)) => pending.entry(lsn).or_default().push(at),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed && closed_at.is_none() {
            closed_at = Some(Instant::now());
        }
        if !pending.is_empty() {
            // One query per poll however many samples wait (the poller must not load the
            // database it measures).
            if let Some(upto) = cov.covered_upto().await? {
                let now = Instant::now();
                let rest = pending.split_off(&Lsn(upto.0.saturating_add(1)));
                for at in std::mem::replace(&mut pending, rest)
                    .into_values()
                    .flatten()
                {
                    hist.saturating_record(micros(now.saturating_duration_since(at)));
                }
            }
        }
        if closed {
            if pending.is_empty() {
                return Ok((hist, 0));
            }
            if closed_at.is_some_and(|t| t.elapsed() > CATCH_UP) {
                let n = pending.values().map(|v| v.len() as u64).sum();
                return Ok((hist, n));
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

struct Sender {
    store: Store,
    plan: Arc<Plan>,
    pop: Arc<workload::Population>,
    filler: String,
    text: MessageType,
}

impl Sender {
    /// Sends one message; returns its LSN and the conversation's member count.
    async fn send(&self, op: Op) -> Result<Option<(Lsn, u64)>, BenchError> {
        let Op::Send {
            sender,
            conv,
            content_chars,
        } = op
        else {
            return Ok(None);
        };
        let limits = self.store.config().limits;
        let end = (content_chars as usize).clamp(1, self.filler.len());
        let content =
            Content::parse(&self.filler[..end], &limits).map_err(hermet_store::StoreError::from)?;
        let mut attempt = 0;
        loop {
            match self
                .store
                .send_message(
                    self.pop.user(sender),
                    self.pop.channel(conv),
                    &content,
                    &self.text,
                )
                .await
            {
                Ok(w) => return Ok(Some((w.lsn, self.plan.members(conv) as u64))),
                Err(hermet_store::StoreError::Retry(_)) if attempt < 4 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(1 << attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[derive(Default)]
struct LoadStats {
    sent: u64,
    missed: u64,
    errors: u64,
    hist: Option<Histogram<u64>>,
    max_lsn: u64,
    rows: u64,
}

/// `rate == None`: as fast as possible until `limit` messages were sent.
async fn offer(
    sender: Arc<Sender>,
    workers: usize,
    rate: Option<f64>,
    duration: Duration,
    limit: u64,
    seed: u64,
    samples: Option<mpsc::UnboundedSender<(Lsn, Instant)>>,
) -> Result<(LoadStats, f64), BenchError> {
    let started = Instant::now();
    let deadline = started + duration;
    let counter = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let sender = Arc::clone(&sender);
        let samples = samples.clone();
        let counter = Arc::clone(&counter);
        let slots = Arc::clone(&slots);
        set.spawn(async move {
            let mut st = LoadStats {
                hist: Some(histogram()?),
                ..LoadStats::default()
            };
            let mut stream = sender
                .plan
                .stream(seed.wrapping_mul(31).wrapping_add(w as u64));
            let period = rate.map(|r| Duration::from_secs_f64(workers as f64 / r));
            let mut next =
                started + period.map_or(Duration::ZERO, |p| p.mul_f64(w as f64 / workers as f64));
            loop {
                if let Some(p) = period {
                    if next >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(next.into()).await;
                    next += p;
                } else if slots.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
                let Some(op) = stream.next_send() else {
                    return Err(BenchError::InvalidSpec("no user has a conversation".into()));
                };
                let t = Instant::now();
                match sender.send(op).await {
                    Ok(Some((lsn, members))) => {
                        let done = Instant::now();
                        if let Some(h) = st.hist.as_mut() {
                            h.saturating_record(micros(done - t));
                        }
                        st.sent += 1;
                        st.rows += members;
                        st.max_lsn = st.max_lsn.max(lsn.0);
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = &samples {
                            if n.is_multiple_of(SAMPLE_EVERY) {
                                let _ = tx.send((lsn, done));
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(_) => st.errors += 1,
                }
                if let Some(p) = period {
                    let now = Instant::now();
                    while now > next + p && next < deadline {
                        st.missed += 1;
                        next += p;
                    }
                }
            }
            Ok::<_, BenchError>(st)
        });
    }
    drop(samples);
    let mut total = LoadStats {
        hist: Some(histogram()?),
        ..LoadStats::default()
    };
    while let Some(r) = set.join_next().await {
        let st = r??;
        total.sent += st.sent;
        total.missed += st.missed;
        total.errors += st.errors;
        total.rows += st.rows;
        total.max_lsn = total.max_lsn.max(st.max_lsn);
        if let (Some(a), Some(b)) = (total.hist.as_mut(), st.hist.as_ref()) {
            a.add(b)
                .map_err(|e| BenchError::Internal(format!("histogram: {e}")))?;
        }
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

struct Cdc {
    tag: String,
    partitions: i32,
    watermark: Duration,
    batch_wait: Duration,
    batch_max: usize,
    brokers: String,
    url: String,
}

impl Cdc {
    fn relay(&self) -> Task {
        let cfg = hermet_cdc::relay::RelayConfig {
            database_url: self.url.clone(),
            brokers: self.brokers.clone(),
            slot: format!("hermet_bench_{}", self.tag),
            publication: format!("hermet_bench_pub_{}", self.tag),
            tables: crate::cdc::TABLES.map(String::from).to_vec(),
            topic_prefix: "hermet".into(),
            topic_template: crate::cdc::topic_template(&self.tag, 1),
            partitions: self.partitions,
            replication_factor: 1,
            heartbeat: Duration::from_secs(10),
            transaction_topic: false,
            max_in_flight: 100_000,
            snapshot_batch: 5_000,
            watermark_interval: self.watermark,
            linger: hermet_cdc::relay::DEFAULT_LINGER,
        };
        Task::spawn("relay".into(), |rx| {
            hermet_cdc::relay::run(cfg, shutdown(rx))
        })
    }

    fn group_name(&self, group: &str) -> String {
        format!("hb_{}_{group}", self.tag)
    }

    /// The topics a group maintaining `models` reads.
    fn topics(&self, models: ReadModels) -> Vec<String> {
        let template = crate::cdc::topic_template(&self.tag, 1);
        crate::cdc::TABLES
            .iter()
            .filter(|t| models.reads_table(t))
            .map(|t| template.replace("{table}", t))
            .collect()
    }

    fn coverage(&self, group: &str, models: ReadModels) -> hermet_store::sync::Coverage {
        hermet_store::sync::Coverage::new(
            self.group_name(group),
            self.topics(models),
            self.partitions,
        )
    }

    fn groups(&self, pool: &deadpool_postgres::Pool) -> Vec<Task> {
        GROUPS
            .into_iter()
            .map(|(g, models)| {
                let cfg = hermet_projector::consumer::GroupConfig {
                    brokers: self.brokers.clone(),
                    group: self.group_name(g),
                    topics: self.topics(models),
                    read_models: models,
                    batch_wait: self.batch_wait,
                    batch_max: self.batch_max,
                    max_attempts: 5,
                    dlq_topic: format!("hermet_bench_{}_dlq", self.tag),
                    projection: ProjectionConfig::default(),
                    cache: hermet_core::cache::no_cache(),
                    visibility_wait: hermet_projector::visibility::DEFAULT_VISIBILITY_WAIT,
                };
                let pool = pool.clone();
                Task::spawn(g.to_owned(), move |rx| {
                    hermet_projector::consumer::run_group(cfg, pool, shutdown(rx))
                })
            })
            .collect()
    }

    /// Waits until the relay's slot confirmed `lsn`.
    async fn wait_slot(
        &self,
        pool: &deadpool_postgres::Pool,
        lsn: u64,
        relay: &Task,
    ) -> Result<(), BenchError> {
        let slot = format!("hermet_bench_{}", self.tag);
        let started = Instant::now();
        loop {
            let conn = pool.get().await.map_err(hermet_store::StoreError::from)?;
            let row = conn
                .query_opt(
                    "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map_err(|source| BenchError::Db {
                    what: "read the relay's slot".into(),
                    source,
                })?;
            drop(conn);
            let confirmed: Option<i64> = row.and_then(|r| r.get(0));
            if confirmed.is_some_and(|c| c as u64 >= lsn) {
                return Ok(());
            }
            relay.check()?;
            if started.elapsed() > CATCH_UP {
                return Err(BenchError::Scenario(
                    "the relay did not confirm the backlog".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn run_mode(
    env: &BenchEnv,
    opts: &BenchOptions,
    mode: SyncMode,
    plan: Arc<Plan>,
    url: &str,
    tag: &str,
    stages: Option<&StageRecorder>,
) -> Result<(ModeRow, Option<ProjectorRow>), BenchError> {
    {
        let mut client = admin_connect(url).await?;
        let shards = opts.shards.unwrap_or(env.shards);
        hermet_store::migrate::migrate(&mut client, shards).await?;
    }
    let workers = opts.concurrency.unwrap_or(16);
    let pool = hermet_store::connect_pool(
        url,
        opts.pool_size
            .unwrap_or(workers + opts.setup_concurrency + 12),
    )?;
    let store = Store::new(
        pool.clone(),
        crate::store_config(mode, opts.read_threshold.config()),
    );
    let cdc = Cdc {
        tag: tag.to_owned(),
        partitions: opts.partitions,
        watermark: watermark(opts),
        batch_wait: batch_wait(opts),
        batch_max: batch_max(opts),
        brokers: env.kafka_brokers.clone(),
        url: url.to_owned(),
    };
    let mut tasks: Vec<Task> = Vec::new();
    let mut relay: Option<Task> = None;
    let projectors = GROUPS
        .iter()
        .map(|(g, models)| cdc.coverage(g, *models))
        .collect();
    match mode {
        SyncMode::DualWrite => {}
        SyncMode::Async => {
            let cfg = hermet_projector::outbox::OutboxConfig {
                batch: 500,
                idle_wait: Duration::from_millis(10),
                max_attempts: 5,
                projection: ProjectionConfig::default(),
                cache: hermet_core::cache::no_cache(),
            };
            let pool = pool.clone();
            tasks.push(Task::spawn("outbox worker".into(), move |rx| {
                hermet_projector::outbox::run_outbox(cfg, pool, shutdown(rx))
            }));
        }
        SyncMode::Cdc => {
            let r = cdc.relay();
            // Topics exist once the relay streams; give it a moment before the groups subscribe.
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                r.check()?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            relay = Some(r);
            tasks.extend(cdc.groups(&pool));
        }
    }
    let cov = Coverage {
        pool: pool.clone(),
        mode,
        projectors,
    };
    let result = async {
        let t = Instant::now();
        let pop = workload::populate_with(
            &store,
            &plan,
            PopulateOptions {
                concurrency: opts.setup_concurrency,
                progress: false,
            },
        )
        .await?;
        // A marker LSN after the population: a send, then wait for coverage.
        let sender = Arc::new(Sender {
            store: store.clone(),
            plan: Arc::clone(&plan),
            pop: Arc::new(pop),
            filler: "lorem ipsum dolor sit amet ".repeat(40),
            text: MessageType::text(),
        });
        let (warm, _) = offer(Arc::clone(&sender), 1, None, Duration::ZERO, 1, opts.seed ^ 7, None).await?;
        let mut all: Vec<&Task> = tasks.iter().collect();
        all.extend(relay.as_ref());
        let waited = cov.wait(Lsn(warm.max_lsn), CATCH_UP, &[]).await?;
        for t in &all {
            t.check()?;
        }
        eprintln!(
            "bench modes {}: populated in {:.1} s, projectors caught up {:.1} s later",
            mode.as_str(),
            t.elapsed().as_secs_f64() - waited.as_secs_f64(),
            waited.as_secs_f64()
        );
        if let Some(stages) = stages {
            stages.reset();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let poller = (mode != SyncMode::DualWrite).then(|| tokio::spawn(lag_poller(cov.clone(), rx)));
        let (st, secs) = offer(
            Arc::clone(&sender),
            workers,
            Some(opts.rate_for(crate::Scenario::Modes)),
            Duration::from_secs(opts.duration_secs),
            u64::MAX,
            opts.seed,
            (mode != SyncMode::DualWrite).then_some(tx),
        )
        .await?;
        let (lag, timeouts) = match poller {
            Some(p) => p.await??,
            None => (histogram()?, 0),
        };
        let hist = st.hist.unwrap_or(histogram()?);
        let row = ModeRow {
            mode: mode.as_str().to_owned(),
            offered_per_s: opts.rate_for(crate::Scenario::Modes),
            achieved_per_s: st.sent as f64 / secs,
            sent: st.sent,
            missed: st.missed,
            errors: st.errors,
            send_p50_ms: ms(&hist, 0.5),
            send_p99_ms: ms(&hist, 0.99),
            lag_samples: if mode == SyncMode::DualWrite { 0 } else { lag.len() + timeouts },
            lag_timeouts: timeouts,
            lag_p50_ms: ms(&lag, 0.5),
            lag_p99_ms: ms(&lag, 0.99),
            lag_max_ms: if lag.is_empty() { 0.0 } else { lag.max() as f64 / 1000.0 },
        };
        eprintln!("bench modes {}: {row:?}", mode.as_str());
        if let Some(stages) = stages {
            eprint!(
                "bench modes {}: pipeline stages during the measured phase:\n{}",
                mode.as_str(),
                stages.report()
            );
        }
        let mut proj = None;
        if mode == SyncMode::Cdc && opts.backlog > 0 {
            for t in tasks.drain(..) {
                t.stop().await?;
            }
            let relay_task = relay.as_ref().ok_or_else(|| BenchError::Internal("no relay".into()))?;
            let (bl, bl_secs) = offer(
                Arc::clone(&sender),
                workers,
                None,
                Duration::ZERO,
                opts.backlog,
                opts.seed ^ 0xb4c1,
                None,
            )
            .await?;
            cdc.wait_slot(&pool, bl.max_lsn, relay_task).await?;
            eprintln!(
                "bench modes cdc: backlog of {} messages ({} view rows) sent in {bl_secs:.1} s, in Kafka",
                bl.sent, bl.rows
            );
            tasks.extend(cdc.groups(&pool));
            let apply = cov.wait(Lsn(bl.max_lsn), CATCH_UP * 5, &tasks).await?;
            let s = apply.as_secs_f64().max(1e-9);
            proj = Some(ProjectorRow {
                messages: bl.sent,
                view_rows: bl.rows,
                backlog_secs: bl_secs,
                apply_secs: s,
                messages_per_s: bl.sent as f64 / s,
                view_rows_per_s: bl.rows as f64 / s,
            });
            eprintln!("bench modes cdc: {proj:?}");
        }
        Ok::<_, BenchError>((row, proj))
    }
    .await;
    for t in tasks {
        if let Err(e) = t.stop().await {
            eprintln!("bench modes: {e}");
        }
    }
    if let Some(r) = relay {
        if let Err(e) = r.stop().await {
            eprintln!("bench modes: {e}");
        }
    }
    pool.close();
    result
}

/// The relay's watermark-marker interval: `--watermark-ms`, else the relay's default.
fn watermark(opts: &BenchOptions) -> Duration {
    opts.watermark_ms.map_or(
        hermet_cdc::relay::DEFAULT_WATERMARK_INTERVAL,
        Duration::from_millis,
    )
}

/// The projector groups' batch wait: `--batch-wait-ms`, else the projector's default.
fn batch_wait(opts: &BenchOptions) -> Duration {
    opts.batch_wait_ms.map_or(
        hermet_projector::consumer::DEFAULT_BATCH_WAIT,
        Duration::from_millis,
    )
}

/// The projector groups' batch size limit: `--batch-max`, else the projector's default.
fn batch_max(opts: &BenchOptions) -> usize {
    opts.batch_max
        .map_or(hermet_projector::consumer::DEFAULT_BATCH_MAX, |n| {
            usize::try_from(n).unwrap_or(usize::MAX)
        })
}

/// Runs `hermet-bench modes` (progress on stderr) and returns its report.
pub async fn run(env: &BenchEnv, opts: &BenchOptions) -> Result<ModesReport, BenchError> {
    let rate = opts.rate_for(crate::Scenario::Modes);
    if !rate.is_finite() || rate <= 0.0 {
        return Err(BenchError::InvalidOptions("--rate must be positive".into()));
    }
    // The bounds of `cdc.watermark_ms` and `projector.batch_wait_ms`.
    let (min, max) = (
        hermet_cdc::relay::MIN_WATERMARK_INTERVAL,
        hermet_core::validate::MAX_WAIT,
    );
    if !opts
        .watermark_ms
        .map(Duration::from_millis)
        .is_none_or(|w| (min..=max).contains(&w))
        || opts
            .batch_wait_ms
            .map(Duration::from_millis)
            .is_some_and(|w| w > max)
    {
        return Err(BenchError::InvalidOptions(
            "--watermark-ms must be 5..=3600000 and --batch-wait-ms at most 3600000".into(),
        ));
    }
    let mut modes = Vec::new();
    for m in &opts.sync_modes {
        let mode = [SyncMode::DualWrite, SyncMode::Async, SyncMode::Cdc]
            .into_iter()
            .find(|x| x.as_str() == m.trim())
            .ok_or_else(|| {
                BenchError::InvalidOptions(format!(
                    "--modes: unknown sync mode {m:?} (dual_write, async, cdc)"
                ))
            })?;
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    if modes.is_empty() {
        return Err(BenchError::InvalidOptions(
            "--modes: name at least one".into(),
        ));
    }
    let stages = if opts.stage_metrics {
        Some(StageRecorder::install()?)
    } else {
        None
    };
    let plan = Arc::new(Plan::generate(&opts.workload())?);
    let load_before = load_average();
    let mut rows = Vec::new();
    let mut projector = None;
    for mode in modes {
        let tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let (name, url) = crate::create_named_database(env, format!("hermet_bench_{tag}")).await?;
        eprintln!("bench modes {}: scratch database {name}", mode.as_str());
        let r = tokio::select! {
            r = run_mode(env, opts, mode, Arc::clone(&plan), &url, &tag, stages.as_ref()) => r,
            _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
        };
        if mode == SyncMode::Cdc {
            if let Err(e) = crate::cdc::drop_all_slots(&env.database_url, &name).await {
                eprintln!("bench modes: dropping slots: {e}");
            }
            if let Err(e) = crate::cdc::delete_topics(&env.kafka_brokers, &tag, 1).await {
                eprintln!("bench modes: deleting topics: {e}");
            }
        }
        if !opts.keep_database {
            if let Err(e) = drop_database(&env.database_url, &name).await {
                eprintln!("bench modes: could not drop {name}: {e}");
            }
        }
        let (row, proj) = r?;
        rows.push(row);
        if proj.is_some() {
            projector = proj;
        }
    }
    Ok(ModesReport {
        users: plan.users(),
        groups: plan.groups.len(),
        concurrency: opts.concurrency.unwrap_or(16),
        duration_secs: opts.duration_secs,
        partitions: opts.partitions,
        watermark_ms: u64::try_from(watermark(opts).as_millis()).unwrap_or(u64::MAX),
        batch_wait_ms: u64::try_from(batch_wait(opts).as_millis()).unwrap_or(u64::MAX),
        batch_max: batch_max(opts),
        load_before,
        modes: rows,
        projector,
    })
}
