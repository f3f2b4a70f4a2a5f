//! The measured phases, on a populated database.
//!
//! - `send`: C workers send messages for D seconds to conversations drawn from the workload;
//!   throughput, view rows written per second (fan-out: every active member's conversation row
//!   gets the message) and send latency.
//! - `list`: R readers read the first page of the conversation list of users drawn by activity,
//!   optionally while W background writers run the workload's write mix; read latency and rate.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hermet_core::validate::{Avatar, Content, MessageType, Name};
use hermet_store::commands::ProfilePatch;
use hermet_store::{Store, StoreError};
use tokio::task::JoinSet;

use crate::report::{histogram, Latency, RunStats};
use crate::workload::{self, Op, OpMix, Plan, Population};
use crate::BenchError;

/// Attempts of a command that lost a race (deadlock, serialization failure) before it counts
/// as an error.
const MAX_ATTEMPTS: u32 = 5;

/// Error messages kept for the report.
const ERROR_SAMPLES: usize = 5;

/// Everything a worker needs: the store, the plan, the ids, and the last known `seq` per
/// conversation (for mark-read).
pub(crate) struct Ctx {
    pub store: Store,
    pub plan: Arc<Plan>,
    pub pop: Arc<Population>,
    last_seq: Vec<AtomicI64>,
    filler: String,
    text: MessageType,
    page_size: i64,
}

impl Ctx {
    pub fn new(store: Store, plan: Arc<Plan>, pop: Arc<Population>, page_size: i64) -> Self {
        let last_seq = (0..plan.conv_count()).map(|_| AtomicI64::new(0)).collect();
        let words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod ";
        let filler = words.repeat(1000 / words.len() + 2);
        Ctx {
            store,
            plan,
            pop,
            last_seq,
            filler,
            text: MessageType::text(),
            page_size,
        }
    }

    /// Runs one operation; returns the view rows it wrote (sends) or read (lists).
    async fn execute(&self, op: Op) -> Result<u64, StoreError> {
        let limits = self.store.config().limits;
        match op {
            Op::Send {
                sender,
                conv,
                content_chars,
            } => {
                let end = (content_chars as usize).clamp(1, self.filler.len());
                let content = Content::parse(&self.filler[..end], &limits)?;
                let sent = self
                    .store
                    .send_message(
                        self.pop.user(sender),
                        self.pop.channel(conv),
                        &content,
                        &self.text,
                    )
                    .await?;
                self.last_seq[self.plan.conv_index(conv)]
                    .fetch_max(sent.value.seq, Ordering::Relaxed);
                Ok(self.plan.members(conv) as u64)
            }
            Op::MarkRead { user, conv } => {
                let seq = self.last_seq[self.plan.conv_index(conv)].load(Ordering::Relaxed);
                self.store
                    .mark_read(self.pop.user(user), self.pop.channel(conv), seq)
                    .await?;
                Ok(1)
            }
            Op::UpdateProfile { user, revision } => {
                let patch = ProfilePatch {
                    nickname: Some(Name::parse(
                        "nickname",
                        &workload::nickname(user, revision),
                        &limits,
                    )?),
                    avatar: Some(Avatar::parse(&workload::avatar(user, revision), &limits)?),
                };
                self.store
                    .update_profile(self.pop.user(user), &patch)
                    .await?;
                Ok(1)
            }
            Op::ListConversations { user } => {
                let page = self
                    .store
                    .list_conversations(self.pop.user(user), self.page_size, None)
                    .await?;
                Ok(page.len() as u64)
            }
        }
    }

    /// [`Ctx::execute`] with retries of lost races; returns the rows and the retries made.
    async fn execute_retrying(&self, op: Op) -> (Result<u64, StoreError>, u32) {
        let mut attempt = 1;
        loop {
            match self.execute(op).await {
                Err(StoreError::Retry(_)) if attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(1 << attempt)).await;
                    attempt += 1;
                }
                other => return (other, attempt - 1),
            }
        }
    }
}

/// What a worker does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Source {
    /// Message sends only.
    Send,
    /// Conversation-list reads only.
    List,
    /// Draws from a mix.
    Mix(OpMix),
}

/// One load phase: `workers` measured workers and `background` unmeasured ones.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub measured: Source,
    pub workers: usize,
    pub background: Source,
    pub background_workers: usize,
    pub duration: Duration,
}

#[derive(Debug)]
struct WorkerStats {
    measured: bool,
    hist: Histogram<u64>,
    ops: u64,
    rows: u64,
    errors: u64,
    retries: u64,
    error_samples: Vec<String>,
}

async fn worker(
    ctx: Arc<Ctx>,
    source: Source,
    seed: u64,
    deadline: Instant,
    measured: bool,
) -> Result<WorkerStats, BenchError> {
    let mut stats = WorkerStats {
        measured,
        hist: histogram()?,
        ops: 0,
        rows: 0,
        errors: 0,
        retries: 0,
        error_samples: Vec::new(),
    };
    let plan = Arc::clone(&ctx.plan);
    let mut stream = match source {
        Source::Mix(mix) => plan.stream_with(seed, mix),
        Source::Send | Source::List => plan.stream(seed),
    };
    while Instant::now() < deadline {
        let op = match source {
            Source::Send => match stream.next_send() {
                Some(op) => op,
                None => return Err(BenchError::InvalidSpec("no user has a conversation".into())),
            },
            Source::List => stream.next_list(),
            Source::Mix(_) => match stream.next() {
                Some(op) => op,
                None => break,
            },
        };
        let started = Instant::now();
        let (result, retries) = ctx.execute_retrying(op).await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        stats.retries += u64::from(retries);
        match result {
            Ok(rows) => {
                stats.ops += 1;
                stats.rows += rows;
                stats.hist.saturating_record(micros.max(1));
            }
            Err(e) => {
                stats.errors += 1;
                if stats.error_samples.len() < ERROR_SAMPLES {
                    stats.error_samples.push(format!("{:?}: {e}", op.kind()));
                }
            }
        }
    }
    Ok(stats)
}

/// Runs one load phase and summarizes the measured workers.
pub(crate) async fn measure(
    ctx: &Arc<Ctx>,
    load: Load,
    seed: u64,
    label: String,
) -> Result<(RunStats, Vec<String>), BenchError> {
    let started = Instant::now();
    let deadline = started + load.duration;
    let mut set = JoinSet::new();
    let seeds = |i: usize, salt: u64| {
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(salt << 32)
            .wrapping_add(i as u64)
    };
    for i in 0..load.workers {
        set.spawn(worker(
            Arc::clone(ctx),
            load.measured,
            seeds(i, 1),
            deadline,
            true,
        ));
    }
    for i in 0..load.background_workers {
        set.spawn(worker(
            Arc::clone(ctx),
            load.background,
            seeds(i, 2),
            deadline,
            false,
        ));
    }
    let mut hist = histogram()?;
    let (mut ops, mut rows, mut errors, mut retries, mut bg_ops) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut samples = Vec::new();
    while let Some(joined) = set.join_next().await {
        let w = joined??;
        samples.extend(
            w.error_samples
                .into_iter()
                .take(ERROR_SAMPLES - samples.len().min(ERROR_SAMPLES)),
        );
        if w.measured {
            hist.add(&w.hist)
                .map_err(|e| BenchError::Internal(format!("histogram: {e}")))?;
            ops += w.ops;
            rows += w.rows;
            errors += w.errors;
            retries += w.retries;
        } else {
            bg_ops += w.ops;
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let latency_ms = Latency {
        mean: hist.mean() / 1000.0,
        p50: ms(0.50),
        p90: ms(0.90),
        p99: ms(0.99),
        p999: ms(0.999),
        max: hist.max() as f64 / 1000.0,
    };
    let per_op = |x: u64| if ops == 0 { 0.0 } else { x as f64 / ops as f64 };
    let (rows_per_s, rows_per_op) = match load.measured {
        Source::Send | Source::Mix(_) => (Some(rows as f64 / secs), per_op(rows)),
        Source::List => (None, per_op(rows)),
    };
    let stats = RunStats {
        run: label,
        secs,
        ops,
        errors,
        retries,
        ops_per_s: ops as f64 / secs,
        rows_per_s,
        rows_per_op,
        background_ops_per_s: (load.background_workers > 0).then(|| bg_ops as f64 / secs),
        latency_ms,
    };
    Ok((stats, samples))
}
