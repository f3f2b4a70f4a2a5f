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

    fn open(&mut self) -> Ticket {
        self.entries.push_back(Entry::default());
        self.first + self.entries.len() - 1
    }

    fn close(&mut self, t: Ticket, lsn: Option<Lsn>, commit_ts: Option<i64>) {
        if let Some(e) = self.entry(t) {
            e.closed = Some((lsn, commit_ts));
        }
    }

    fn report(&mut self, t: Ticket, result: Result<(), String>) {
        self.reports += 1;
        match result {
            Ok(()) => {
                if let Some(e) = self.entry(t) {
                    e.acked += 1;
                }
            }
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
    }

    /// The complete tickets at the front, taken off the book, in order.
    fn completed(&mut self) -> Result<Vec<Done>, RelayError> {
        if let Some(e) = &self.failed {
            return Err(RelayError::Delivery(e.clone()));
        }
        let mut done = Vec::new();
        while let Some(e) = self.entries.front() {
            match e.closed {
                Some((lsn, commit_ts)) if e.acked >= e.sent => {
                    done.push(Done {
                        lsn,
                        records: e.sent,
                        commit_ts,
                    });
                    self.entries.pop_front();
                    self.first += 1;
                }
                _ => break,
            }
        }
        Ok(done)
    }

    /// Whether every closed ticket has been handed out.
    fn settled(&self) -> bool {
        self.entries.iter().all(|e| e.closed.is_none())
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
        let result = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        self.book().report(ticket, result);
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
        self.producer.context().book().open()
    }

    /// Closes `ticket`: nothing more is sent under it, and once its records are acknowledged it
    /// confirms `lsn`.
    pub(super) fn close(&self, ticket: Ticket, lsn: Option<Lsn>, commit_ts: Option<i64>) {
        self.producer.context().book().close(ticket, lsn, commit_ts);
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
        self.producer.context().book().completed()
    }

    /// Polls until every ticket closed so far is complete and hands them out.
    pub(super) async fn wait(&self) -> Result<Vec<Done>, RelayError> {
        let mut all = Vec::new();
        loop {
            all.extend(self.completed()?);
            if self.producer.context().book().settled() {
                return Ok(all);
            }
            tokio::time::sleep(ACK_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsns(done: &[Done]) -> Vec<Option<Lsn>> {
        done.iter().map(|d| d.lsn).collect()
    }

    #[test]
    fn tickets_complete_in_the_order_they_were_opened() {
        let mut b = Book::default();
        let (t1, t2, t3) = (b.open(), b.open(), b.open());
        for t in [t1, t1, t2, t3] {
            b.entry(t).expect("open").sent += 1;
        }
        b.close(t1, Some(Lsn(10)), Some(5));
        b.close(t2, Some(Lsn(20)), None);
        b.close(t3, Some(Lsn(30)), None);
        // The later tickets are acknowledged first: nothing may be handed out before t1.
        b.report(t3, Ok(()));
        b.report(t2, Ok(()));
        b.report(t1, Ok(()));
        assert_eq!(b.completed().expect("no failure"), vec![]);
        b.report(t1, Ok(()));
        let done = b.completed().expect("no failure");
        assert_eq!(
            lsns(&done),
            vec![Some(Lsn(10)), Some(Lsn(20)), Some(Lsn(30))]
        );
        assert_eq!(done[0].records, 2);
        assert_eq!(done[0].commit_ts, Some(5));
        assert!(b.settled());
        assert_eq!(b.reports, 4);
    }

    #[test]
    fn an_open_ticket_holds_back_the_ones_after_it() {
        let mut b = Book::default();
        let (open, empty) = (b.open(), b.open());
        b.close(empty, Some(Lsn(7)), None);
        // A ticket with no records completes as soon as it is closed, but only in its turn.
        assert_eq!(b.completed().expect("no failure"), vec![]);
        assert!(!b.settled());
        b.close(open, Some(Lsn(3)), None);
        assert_eq!(
            lsns(&b.completed().expect("no failure")),
            vec![Some(Lsn(3)), Some(Lsn(7))]
        );
        // Tickets keep their numbers after the front was taken off.
        let next = b.open();
        assert_eq!(next, 2);
        b.entry(next).expect("open").sent += 1;
        b.close(next, None, None);
        assert_eq!(b.completed().expect("no failure"), vec![]);
        b.report(next, Ok(()));
        assert_eq!(lsns(&b.completed().expect("no failure")), vec![None]);
    }

    #[test]
    fn a_failed_delivery_is_an_error_and_confirms_nothing() {
        let mut b = Book::default();
        let t = b.open();
        b.entry(t).expect("open").sent += 2;
        b.close(t, Some(Lsn(1)), None);
        b.report(t, Ok(()));
        b.report(t, Err("broker said no".into()));
        match b.completed() {
            Err(RelayError::Delivery(e)) => assert_eq!(e, "broker said no"),
            other => panic!("expected a delivery error, got {other:?}"),
        }
    }
}
