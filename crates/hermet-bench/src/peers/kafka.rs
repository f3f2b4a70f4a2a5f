//! Reading a peer's topics back: end offsets, events, topic creation.

#[allow(unused_imports)]
use super::*;

/// The topics of one peer in one round, in [`TABLES`] order.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    pub(crate) names: Vec<String>,
    pub(crate) partitions: i32,
}

impl Topics {
    fn table_of(&self, topic: &str) -> Option<&'static str> {
        self.names
            .iter()
            .position(|t| t == topic)
            .and_then(|i| TABLES.get(i).copied())
    }
}

pub(crate) type Offsets = HashMap<(String, i32), i64>;

pub(crate) fn consumer(brokers: &str) -> Result<BaseConsumer, BenchError> {
    Ok(hermet_kafka::client_config(brokers, "hermet-bench-peers")
        // Partitions are assigned by hand; nothing is committed.
        .set("group.id", "hermet-bench-peers")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .map_err(hermet_kafka::KafkaError::from)?)
}

/// End offsets of every partition of `topics` (one ListOffsets request).
pub(crate) fn end_offsets(c: &BaseConsumer, topics: &Topics) -> Result<Offsets, BenchError> {
    let mut tpl = TopicPartitionList::new();
    for t in &topics.names {
        for p in 0..topics.partitions {
            tpl.add_partition_offset(t, p, Offset::End)
                .map_err(hermet_kafka::KafkaError::from)?;
        }
    }
    let out = c
        .offsets_for_times(tpl, Duration::from_secs(10))
        .map_err(hermet_kafka::KafkaError::from)?;
    let mut m = Offsets::new();
    for e in out.elements() {
        let off = match e.offset() {
            Offset::Offset(o) => o,
            // A partition nothing was written to yet.
            _ => 0,
        };
        m.insert((e.topic().to_owned(), e.partition()), off);
    }
    Ok(m)
}

pub(crate) fn total(o: &Offsets) -> i64 {
    o.values().sum()
}

pub(crate) fn parse_event(table: &str, key: &[u8], payload: &[u8], kafka_ms: i64) -> Option<Event> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let source = v.get("source")?;
    let column = match table {
        "users" => Some("profile_ver"),
        "channels" => Some("last_seq"),
        _ => None,
    };
    let version = column
        .and_then(|c| v.get("after").and_then(|a| a.get(c)))
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    Some(Event {
        table: table.to_owned(),
        key: String::from_utf8_lossy(key).into_owned(),
        lsn: source.get("lsn")?.as_i64()?,
        version,
        commit_ms: source.get("ts_ms")?.as_i64()?,
        kafka_ms,
    })
}

/// Reads `topics` from `from` (blocking) until `done(events)` holds with every partition read to
/// its end, or nothing new arrived for `idle`.
pub(crate) fn read_events(
    brokers: &str,
    topics: &Topics,
    from: &Offsets,
    idle: Duration,
    done: &dyn Fn(&[Event]) -> bool,
) -> Result<Vec<Event>, BenchError> {
    let c = consumer(brokers)?;
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in from {
        tpl.add_partition_offset(t, *p, Offset::Offset(*o))
            .map_err(hermet_kafka::KafkaError::from)?;
    }
    c.assign(&tpl).map_err(hermet_kafka::KafkaError::from)?;
    let mut events = Vec::new();
    let mut position: Offsets = from.clone();
    let mut last_new = Instant::now();
    let mut ends = end_offsets(&c, topics)?;
    let mut malformed = 0u64;
    loop {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_new = Instant::now();
                position.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
                // Tombstones and hermet's watermark markers carry no value.
                if let (Some(payload), Some(table)) = (m.payload(), topics.table_of(m.topic())) {
                    let ts = m.timestamp().to_millis().unwrap_or(0);
                    match parse_event(table, m.key().unwrap_or_default(), payload, ts) {
                        Some(e) => events.push(e),
                        None => malformed += 1,
                    }
                }
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "bench peers: consumer error");
            }
            None => {}
        }
        let caught_up = ends
            .iter()
            .all(|(k, end)| position.get(k).copied().unwrap_or(0) >= *end);
        if caught_up {
            if done(&events) {
                break;
            }
            ends = end_offsets(&c, topics)?;
        }
        if last_new.elapsed() > idle {
            break;
        }
    }
    if malformed > 0 {
        tracing::warn!(
            malformed,
            "bench peers: records without a Debezium envelope"
        );
    }
    Ok(events)
}

pub(crate) async fn read_back(
    brokers: &str,
    topics: &Topics,
    from: &Offsets,
    idle: Duration,
    done: impl Fn(&[Event]) -> bool + Send + 'static,
) -> Result<Vec<Event>, BenchError> {
    let (brokers, topics, from) = (brokers.to_owned(), topics.clone(), from.clone());
    tokio::task::spawn_blocking(move || read_events(&brokers, &topics, &from, idle, &done)).await?
}

pub(crate) async fn offsets_now(brokers: &str, topics: &Topics) -> Result<Offsets, BenchError> {
    let (brokers, topics) = (brokers.to_owned(), topics.clone());
    tokio::task::spawn_blocking(move || end_offsets(&consumer(&brokers)?, &topics)).await?
}

/// Creates the topics with the broker's append time as record timestamp (see the module doc).
pub(crate) async fn create_topics(
    brokers: &str,
    names: &[String],
    partitions: i32,
) -> Result<(), BenchError> {
    use hermet_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use hermet_kafka::rdkafka::client::DefaultClientContext;
    use hermet_kafka::rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> =
        hermet_kafka::client_config(brokers, "hermet-bench-peers")
            .create()
            .map_err(hermet_kafka::KafkaError::from)?;
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .map(|t| {
            NewTopic::new(t, partitions, TopicReplication::Fixed(1))
                .set("message.timestamp.type", "LogAppendTime")
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(hermet_kafka::KafkaError::from)?
    {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(hermet_kafka::KafkaError::Topic { topic, code }.into());
            }
        }
    }
    Ok(())
}
