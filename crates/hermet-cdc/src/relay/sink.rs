//! The relay's Kafka producer and its book of acknowledgements.
//!
//! Records are sent under a *ticket*: one per transaction of the stream, per batch of watermark
//! markers, per snapshot batch. A ticket is *complete* once it was closed (nothing more will be
//! sent under it) and Kafka acknowledged every record sent under it. [`Sink::completed`] hands
//! out complete tickets only as an unbroken prefix, in the order they were opened, which is the
//! order of the WAL positions they carry: a position is reported only after every record before
//! it was acknowledged, so the relay can confirm it to the slot.
//!
//! Delivery reports are read only when the relay polls ([`Sink::completed`], [`Sink::wait`]), on
//! the relay's own thread: there is no polling thread, no future per record and no wake-up per
//! acknowledgement. The relay polls at its marker interval while records are in flight (and
//! sooner when it is at its in-flight bound), which bounds how much later than Kafka's
//! acknowledgement a position is confirmed; it does not delay anything a reader waits for (the
//! projectors read Kafka, not the slot).
//!
//! A failed delivery (the producer is idempotent with no message timeout, so only a fatal error
//! fails one) is reported by the next poll and ends the relay; nothing after the last complete
//! ticket has been confirmed then.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hermet_core::Lsn;
use hermet_kafka::rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use hermet_kafka::rdkafka::message::{Header, OwnedHeaders};
use hermet_kafka::rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext,
};
use hermet_kafka::rdkafka::ClientContext;

use super::RelayError;
use crate::envelope::Record;

/// The number of a ticket, in the order tickets were opened.
pub(super) type Ticket = usize;

/// How long the relay waits between polls when it waits for acknowledgements (stopping, a
/// snapshot batch, a full local queue).
pub(super) const ACK_POLL: Duration = Duration::from_millis(2);

/// What a complete ticket confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Done {
    /// The position it carries (`None`: a snapshot batch, which confirms nothing).
    pub lsn: Option<Lsn>,
    pub records: usize,
    /// The commit time of the transaction it carries, if it carries one.
    pub commit_ts: Option<i64>,
}

#[derive(Debug, Default)]
struct Entry {
    sent: usize,
    acked: usize,
    /// Set once nothing more is sent under the ticket: what it confirms.
    closed: Option<(Option<Lsn>, Option<i64>)>,
}

#[derive(Debug, Default)]
struct Book {
    /// The ticket of `entries[0]`.
    first: Ticket,
    entries: VecDeque<Entry>,
    /// Delivery reports read since the producer was created (a poll that read none has
    /// drained the queue of reports).
    reports: u64,
    failed: Option<String>,
}

impl Book {
    fn entry(&mut self, t: Ticket) -> Option<&mut Entry> {
        t.checked_sub(self.first)
            .and_then(|i| self.entries.get_mut(i))
    }
}

/// Counts acknowledgements into the book; runs inside [`BaseProducer::poll`], on the relay's
/// thread.
#[derive(Default)]
pub(super) struct AckContext {
    book: Mutex<Book>,
}

impl AckContext {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Ticket) {
        let mut book = self.book();
        book.reports += 1;
        match result {
            Ok(_) => {
                if let Some(e) = book.entry(ticket) {
                    e.acked += 1;
                }
            }
            Err((e, _)) => {
                book.failed.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

pub(super) struct Sink {
    producer: Arc<BaseProducer<AckContext>>,
}

impl Sink {
    /// A producer with the settings of [`hermet_kafka::producer`] except its linger: how long
    /// a record may wait for others to share its request (see [`super::RelayConfig::linger`]).
    pub(super) fn new(
        brokers: &str,
        client_id: &str,
        linger: Duration,
    ) -> Result<Sink, RelayError> {
        let producer = hermet_kafka::producer_config(brokers, client_id)
            .set("linger.ms", linger.as_millis().to_string())
            .create_with_context(AckContext::default())?;
        Ok(Sink {
            producer: Arc::new(producer),
        })
    }

    /// The producer, for metadata look-ups on a blocking thread.
    pub(super) fn producer(&self) -> Arc<BaseProducer<AckContext>> {
        self.producer.clone()
    }

    /// Opens a ticket; the records of one transaction (or one marker batch) go under it.
    pub(super) fn open(&self) -> Ticket {
        let mut book = self.producer.context().book();
        book.entries.push_back(Entry::default());
        book.first + book.entries.len() - 1
    }

    /// Closes `ticket`: nothing more is sent under it, and once its records are acknowledged it
    /// confirms `lsn`.
    pub(super) fn close(&self, ticket: Ticket, lsn: Option<Lsn>, commit_ts: Option<i64>) {
        if let Some(e) = self.producer.context().book().entry(ticket) {
            e.closed = Some((lsn, commit_ts));
        }
    }

    pub(super) async fn send(
        &self,
        ticket: Ticket,
        topic: &str,
        rec: &Record,
    ) -> Result<(), RelayError> {
        self.send_to(ticket, topic, None, rec).await
    }

    /// Sends `rec` under `ticket`; waits (polling, so acknowledgements free the queue) while
    /// the producer's local queue is full.
    pub(super) async fn send_to(
        &self,
        ticket: Ticket,
        topic: &str,
        partition: Option<i32>,
        rec: &Record,
    ) -> Result<(), RelayError> {
        let headers = (!rec.headers.is_empty()).then(|| {
            rec.headers
                .iter()
                .fold(OwnedHeaders::new(), |h, (name, value)| {
                    h.insert(Header {
                        key: name,
                        value: Some(value.as_slice()),
                    })
                })
        });
        if let Some(e) = self.producer.context().book().entry(ticket) {
            e.sent += 1;
        }
        let mut r: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, ticket);
        if let Some(p) = partition {
            r = r.partition(p);
        }
        if let Some(k) = &rec.key {
            r = r.key(k.as_slice());
        }
        if let Some(v) = &rec.value {
            r = r.payload(v.as_slice());
        }
        if let Some(h) = headers {
            r = r.headers(h);
        }
        loop {
            match self.producer.send(r) {
                Ok(()) => return Ok(()),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    r = back;
                    self.poll();
                    tokio::time::sleep(ACK_POLL).await;
                }
                Err((e, _)) => {
                    if let Some(en) = self.producer.context().book().entry(ticket) {
                        en.sent -= 1;
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Reads every delivery report waiting (one `poll` reads at most one event).
    fn poll(&self) {
        loop {
            let before = self.producer.context().book().reports;
            self.producer.poll(Duration::ZERO);
            if self.producer.context().book().reports == before {
                return;
            }
        }
    }

    /// Reads the delivery reports waiting and hands out the tickets completed since the last
    /// call, in order; a failed delivery is an error.
    pub(super) fn completed(&self) -> Result<Vec<Done>, RelayError> {
        self.poll();
        let mut book = self.producer.context().book();
        if let Some(e) = &book.failed {
            return Err(RelayError::Delivery(e.clone()));
        }
        let mut done = Vec::new();
        while let Some(e) = book.entries.front() {
            match e.closed {
                Some((lsn, commit_ts)) if e.acked >= e.sent => {
                    done.push(Done {
                        lsn,
                        records: e.sent,
                        commit_ts,
                    });
                    book.entries.pop_front();
                    book.first += 1;
                }
                _ => break,
            }
        }
        Ok(done)
    }

    /// Polls until every ticket closed so far is complete and hands them out.
    pub(super) async fn wait(&self) -> Result<Vec<Done>, RelayError> {
        let mut all = Vec::new();
        loop {
            all.extend(self.completed()?);
            let book = self.producer.context().book();
            if book.entries.iter().all(|e| e.closed.is_none()) {
                return Ok(all);
            }
            drop(book);
            tokio::time::sleep(ACK_POLL).await;
        }
    }
}
