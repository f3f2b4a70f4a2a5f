//! Moving a consumer group back (`hermet admin replay`) and measuring how far groups lag
//! (`hermet admin status`).
//!
//! Contract of a replay: the group's committed offsets on every partition of its topics are set
//! to the offset asked for (clamped to what the partition still holds) or to the first record at
//! or after a time; the projector then reprocesses from there. That is safe at any time because
//! the projection is idempotent and version-guarded: an old event recomputes its rows from the
//! current write side and can only confirm them. Watermarks (`hermet_projector_watermarks`) never
//! move back, so read-your-writes stays truthful during the replay.
//!
//! Offsets can only be set while the group has no members: Kafka refuses commits from outside a
//! live generation, and a running member would commit its own position over ours. A replay
//! therefore refuses a group with members, or — when asked to — waits for them to leave (stop
//! the projectors; start them again after the replay).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hermet_kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use hermet_kafka::rdkafka::error::KafkaError as RdError;
use hermet_kafka::rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("kafka: {0}")]
    Kafka(#[from] RdError),
    #[error(
        "consumer group {group} has {members} live member(s) ({who}); stop its projectors first, \
         or pass --wait SECS to wait for them to leave"
    )]
    LiveMembers {
        group: String,
        members: usize,
        who: String,
    },
    #[error("topic {0} does not exist (has the relay run?)")]
    NoTopic(String),
    #[error("{0}")]
    Invalid(String),
}

/// Where to start again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// This offset on every partition, clamped to the partition's low and high watermarks.
    Offset(i64),
    /// The first record with a timestamp at or after this time (Unix ms); the end when none.
    TimeMs(i64),
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub topic: String,
    pub partition: i32,
    /// Committed offset before (None: the group had none).
    pub before: Option<i64>,
    pub after: i64,
}

/// A partition's consumption state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub committed: Option<i64>,
    pub low: i64,
    pub high: i64,
    /// Records not yet consumed: high − committed (high − low when nothing is committed).
    pub lag: i64,
}

fn client(brokers: &str, group: &str) -> Result<BaseConsumer, RdError> {
    hermet_kafka::client_config(brokers, &format!("{group}-admin"))
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
}

/// Live members of `group` (client id @ host), empty when the group is empty or unknown.
pub fn members(brokers: &str, group: &str) -> Result<Vec<String>, ReplayError> {
    let c = client(brokers, group)?;
    let list = c.fetch_group_list(Some(group), TIMEOUT)?;
    Ok(list
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.members())
        .map(|m| format!("{}@{}", m.client_id(), m.client_host()))
        .collect())
}

/// Partitions of `topics`, in order.
fn partitions(c: &BaseConsumer, topics: &[String]) -> Result<Vec<(String, i32)>, ReplayError> {
    let mut out = Vec::new();
    for t in topics {
        let md = c.fetch_metadata(Some(t), TIMEOUT)?;
        let topic = md
            .topics()
            .iter()
            .find(|x| x.name() == t)
            .filter(|x| x.error().is_none() && !x.partitions().is_empty())
            .ok_or_else(|| ReplayError::NoTopic(t.clone()))?;
        for p in topic.partitions() {
            out.push((t.clone(), p.id()));
        }
    }
    Ok(out)
}

fn committed(
    c: &BaseConsumer,
    parts: &[(String, i32)],
) -> Result<BTreeMap<(String, i32), Option<i64>>, ReplayError> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in parts {
        tpl.add_partition(t, *p);
    }
    let got = c.committed_offsets(tpl, TIMEOUT)?;
    Ok(got
        .elements()
        .iter()
        .map(|e| {
            let off = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            ((e.topic().to_owned(), e.partition()), off)
        })
        .collect())
}

/// Moves `group` back on every partition of `topics`. With `wait`, waits up to that long for
/// the group's members to leave; without, refuses a group with members. `dry_run` computes the
/// moves without committing them.
pub fn replay(
    brokers: &str,
    group: &str,
    topics: &[String],
    from: Start,
    wait: Option<Duration>,
    dry_run: bool,
) -> Result<Vec<Move>, ReplayError> {
    if group.trim().is_empty() {
        return Err(ReplayError::Invalid("--group must not be empty".into()));
    }
    match from {
        Start::Offset(o) if o < 0 => {
            return Err(ReplayError::Invalid(format!(
                "--from-offset must be 0 or more, got {o}"
            )))
        }
        Start::TimeMs(t) if t < 0 => {
            return Err(ReplayError::Invalid(format!(
                "--from-time must not be before 1970, got {t} ms"
            )))
        }
        _ => {}
    }
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        let live = members(brokers, group)?;
        if live.is_empty() {
            break;
        }
        match deadline {
            Some(d) if Instant::now() < d => std::thread::sleep(Duration::from_millis(500)),
            _ => {
                return Err(ReplayError::LiveMembers {
                    group: group.to_owned(),
                    members: live.len(),
                    who: live.join(", "),
                })
            }
        }
    }
    let c = client(brokers, group)?;
    let parts = partitions(&c, topics)?;
    let before = committed(&c, &parts)?;
    let mut moves = Vec::new();
    let mut tpl = TopicPartitionList::new();
    let by_time = match from {
        Start::TimeMs(ms) => {
            let mut q = TopicPartitionList::new();
            for (t, p) in &parts {
                q.add_partition_offset(t, *p, Offset::Offset(ms))?;
            }
            let found = c.offsets_for_times(q, TIMEOUT)?;
            found
                .elements()
                .iter()
                .map(|e| ((e.topic().to_owned(), e.partition()), e.offset()))
                .collect::<BTreeMap<_, _>>()
        }
        Start::Offset(_) => BTreeMap::new(),
    };
    for (t, p) in &parts {
        let (low, high) = c.fetch_watermarks(t, *p, TIMEOUT)?;
        let after = match from {
            Start::Offset(o) => o.clamp(low, high),
            Start::TimeMs(_) => match by_time.get(&(t.clone(), *p)) {
                Some(Offset::Offset(o)) => (*o).clamp(low, high),
                // No record at or after the time: start at the end.
                _ => high,
            },
        };
        tpl.add_partition_offset(t, *p, Offset::Offset(after))?;
        moves.push(Move {
            topic: t.clone(),
            partition: *p,
            before: before.get(&(t.clone(), *p)).copied().flatten(),
            after,
        });
    }
    if !dry_run {
        // A member could have joined since the check; Kafka then refuses the commit.
        c.commit(&tpl, CommitMode::Sync)?;
        tracing::info!(group, partitions = moves.len(), "consumer group moved");
    }
    Ok(moves)
}

/// How far `group` is behind on every partition of `topics` (topics that do not exist yet are
/// skipped).
pub fn group_lag(
    brokers: &str,
    group: &str,
    topics: &[String],
) -> Result<Vec<PartitionLag>, ReplayError> {
    let c = client(brokers, group)?;
    let mut parts = Vec::new();
    for t in topics {
        match partitions(&c, std::slice::from_ref(t)) {
            Ok(p) => parts.extend(p),
            Err(ReplayError::NoTopic(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let committed = committed(&c, &parts)?;
    let mut out = Vec::new();
    for (t, p) in parts {
        let (low, high) = c.fetch_watermarks(&t, p, TIMEOUT)?;
        let at = committed.get(&(t.clone(), p)).copied().flatten();
        out.push(PartitionLag {
            lag: (high - at.unwrap_or(low)).max(0),
            topic: t,
            partition: p,
            committed: at,
            low,
            high,
        });
    }
    Ok(out)
}

/// Records in a topic (high − low over its partitions); `None` when it does not exist.
pub fn topic_size(brokers: &str, topic: &str) -> Result<Option<i64>, ReplayError> {
    let c = client(brokers, "hermet-status")?;
    let parts = match partitions(&c, &[topic.to_owned()]) {
        Ok(p) => p,
        Err(ReplayError::NoTopic(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for (t, p) in parts {
        let (low, high) = c.fetch_watermarks(&t, p, TIMEOUT)?;
        n += high - low;
    }
    Ok(Some(n))
}
