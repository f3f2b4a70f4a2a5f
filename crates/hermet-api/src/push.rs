//! The connection hub of WebSocket push: which users are connected to this process, and a
//! bounded queue per connection.
//!
//! Contract ([`PushSink`]):
//! - **Who publishes**: anything in the process holding the [`Hub`] — in practice the push
//!   notifier (`hermet_projector::push`), which reads the change topics. Handlers of `GET /v1/ws`
//!   only [`Hub::register`].
//! - **Never blocks a publisher**: each connection has a queue of [`Hub::capacity`] events; a
//!   publish that finds it full drops that connection (its socket is then closed with code 1013,
//!   "try again later") instead of waiting, so one slow client cannot hold up anyone else.
//! - **At most once, live only**: an event reaches the connections registered when it is
//!   published; nothing is stored for users who are away or were dropped. Clients recover by
//!   re-reading their lists after (re)connecting.
//!
//! - **Closing for auth** ([`Hub::close`]): each connection carries the issue time of its token
//!   and a one-shot channel; a revocation or a disable sends the reason on it and the socket
//!   closes. Publishing never looks at either, so it costs nothing per event.
//!
//! Concurrency: one `std::sync::Mutex` over the map. It is held only for map operations and
//! `try_send` (never across an `.await`), so a blocking lock is cheaper than an async one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use hermet_core::push::{PushEvent, PushSink};
use hermet_core::rows::UserId;
use tokio::sync::{mpsc, oneshot};

use crate::telemetry;

/// Events queued per connection before it counts as too slow.
pub const DEFAULT_CAPACITY: usize = 256;

/// The process's push connections, per user. Cheap to clone (shared).
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    next_id: AtomicU64,
    users: Mutex<HashMap<UserId, Vec<Conn>>>,
}

struct Conn {
    id: u64,
    tx: mpsc::Sender<Utf8Bytes>,
    /// Unix ms the connection's token was issued.
    issued_ms: i64,
    /// Taken by the first [`Hub::close`] that applies.
    kick: Option<oneshot::Sender<Closed>>,
}

/// Why the server closes a connection for auth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    TokenRevoked,
    UserDisabled,
}

impl Closed {
    /// The close frame's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Closed::TokenRevoked => "token revoked",
            Closed::UserDisabled => "user disabled",
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(DEFAULT_CAPACITY)
    }
}

impl Hub {
    /// A hub whose connections queue up to `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        Hub {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                next_id: AtomicU64::new(1),
                users: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Adds a connection for `user` whose token has no known issue time (any revocation
    /// closes it); it is removed when the returned value is dropped.
    pub fn register(&self, user: UserId) -> Subscription {
        self.register_token(user, 0)
    }

    /// Adds a connection for `user` authenticated by a token issued at `issued_ms`.
    pub fn register_token(&self, user: UserId, issued_ms: i64) -> Subscription {
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        let (kick_tx, kick) = oneshot::channel();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(user).or_default().push(Conn {
            id,
            tx,
            issued_ms,
            kick: Some(kick_tx),
        });
        telemetry::push_connected();
        Subscription {
            user,
            id,
            rx,
            kick,
            kick_done: false,
            hub: self.clone(),
        }
    }

    /// Asks `user`'s connections to close with `why`: all of them, or (`Some(ms)`) those whose
    /// token was issued before `ms`. Returns how many were asked.
    pub fn close(&self, user: UserId, issued_before: Option<i64>, why: Closed) -> usize {
        let mut users = self.lock();
        let Some(conns) = users.get_mut(&user) else {
            return 0;
        };
        let mut n = 0;
        for c in conns
            .iter_mut()
            .filter(|c| issued_before.is_none_or(|b| c.issued_ms < b))
        {
            if let Some(kick) = c.kick.take() {
                n += usize::from(kick.send(why).is_ok());
            }
        }
        n
    }

    /// Connections currently registered for `user`.
    pub fn connections(&self, user: UserId) -> usize {
        self.lock().get(&user).map_or(0, Vec::len)
    }

    /// Queues an already serialized event for every connection of `user`; connections whose
    /// queue is full are dropped. Returns how many connections got it.
    fn send_text(&self, user: UserId, text: &Utf8Bytes) -> usize {
        let mut users = self.lock();
        let Some(conns) = users.get_mut(&user) else {
            return 0;
        };
        let before = conns.len();
        let mut delivered = 0;
        conns.retain(|c| match c.tx.try_send(text.clone()) {
            Ok(()) => {
                delivered += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(user, connection = c.id, "push client too slow, dropping it");
                telemetry::push_slow_drop();
                false
            }
            // The connection is going away; its `Subscription` drop finds nothing to remove.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        let removed = before - conns.len();
        if conns.is_empty() {
            users.remove(&user);
        }
        drop(users);
        if removed > 0 {
            telemetry::push_disconnected(removed);
        }
        delivered
    }

    fn unregister(&self, user: UserId, id: u64) {
        let mut users = self.lock();
        let Some(conns) = users.get_mut(&user) else {
            return;
        };
        let before = conns.len();
        conns.retain(|c| c.id != id);
        let removed = before - conns.len();
        if conns.is_empty() {
            users.remove(&user);
        }
        drop(users);
        if removed > 0 {
            telemetry::push_disconnected(removed);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, Vec<Conn>>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that matters
        // (each operation is one insert/retain), so a poisoned lock is still usable.
        self.inner
            .users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl PushSink for Hub {
    fn is_connected(&self, user: UserId) -> bool {
        self.lock().contains_key(&user)
    }

    fn any_connected(&self) -> bool {
        !self.lock().is_empty()
    }

    fn connected_users(&self) -> Vec<UserId> {
        // Copied out under the lock (one allocation, no `.await`), sorted after it is released.
        let mut users: Vec<UserId> = self.lock().keys().copied().collect();
        users.sort_unstable();
        users
    }

    fn publish(&self, user: UserId, event: &PushEvent) {
        if !self.is_connected(user) {
            return;
        }
        match serde_json::to_string(event) {
            Ok(json) => {
                let n = self.send_text(user, &Utf8Bytes::from(json));
                telemetry::push_events(n);
            }
            Err(e) => tracing::error!(error = %e, "push event does not serialize"),
        }
    }
}

/// One registered connection: the receiving end of its queue. Dropping it unregisters.
pub struct Subscription {
    user: UserId,
    id: u64,
    rx: mpsc::Receiver<Utf8Bytes>,
    kick: oneshot::Receiver<Closed>,
    /// The kick channel has answered (it must not be polled again).
    kick_done: bool,
    hub: Hub,
}

/// See [`Subscription::next`].
#[derive(Debug)]
pub enum Delivery {
    Event(Utf8Bytes),
    Closed(Closed),
    TooSlow,
}

impl Subscription {
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The next event as JSON text; `None` once the hub has dropped this connection (too slow).
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<Utf8Bytes> {
        self.rx.recv().await
    }

    /// What happens next to this connection: an event, a request to close from
    /// [`Hub::close`] (before any event still queued), or the hub having dropped it as too slow.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Delivery {
        let Subscription {
            rx,
            kick,
            kick_done,
            ..
        } = self;
        loop {
            tokio::select! {
                biased;
                r = &mut *kick, if !*kick_done => {
                    *kick_done = true;
                    if let Ok(why) = r {
                        return Delivery::Closed(why);
                    }
                }
                m = rx.recv() => {
                    return match m {
                        Some(text) => Delivery::Event(text),
                        // A close sent just before the queue went away still wins.
                        None if !*kick_done => match kick.try_recv() {
                            Ok(why) => Delivery::Closed(why),
                            Err(_) => Delivery::TooSlow,
                        },
                        None => Delivery::TooSlow,
                    };
                }
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unregister(self.user, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(channel_id: i64) -> PushEvent {
        PushEvent::ConversationChanged { channel_id }
    }

    #[tokio::test]
    async fn events_reach_every_connection_of_their_user_only() {
        let hub = Hub::new(8);
        let mut a1 = hub.register(1);
        let mut a2 = hub.register(1);
        let mut b = hub.register(2);
        hub.publish(1, &ev(7));
        assert_eq!(
            a1.recv().await.as_ref().map(Utf8Bytes::as_str),
            Some(r#"{"type":"conversation_changed","channel_id":7}"#)
        );
        assert!(a2.recv().await.is_some());
        assert!(b.rx.try_recv().is_err(), "user 2 got user 1's event");
        hub.publish(3, &ev(7)); // nobody: nothing happens
    }

    #[tokio::test]
    async fn a_slow_connection_is_dropped_and_others_keep_receiving() {
        let hub = Hub::new(2);
        let mut slow = hub.register(1);
        let mut fast = hub.register(1);
        for i in 0..2 {
            hub.publish(1, &ev(i));
            assert!(fast.recv().await.is_some());
        }
        hub.publish(1, &ev(9)); // `slow` is full: dropped, `fast` still gets it
        assert!(fast.recv().await.is_some());
        assert_eq!(hub.connections(1), 1);
        // The slow one drains what it had, then learns it was dropped.
        assert!(slow.recv().await.is_some());
        assert!(slow.recv().await.is_some());
        assert!(slow.recv().await.is_none());
    }

    #[tokio::test]
    async fn close_reaches_the_connections_it_names_once() {
        let hub = Hub::default();
        let mut old = hub.register_token(1, 100);
        let mut new = hub.register_token(1, 200);
        let mut other = hub.register_token(2, 100);
        hub.publish(1, &ev(5));
        assert_eq!(hub.close(1, Some(150), Closed::TokenRevoked), 1);
        // The close comes before the event still queued.
        assert!(matches!(
            old.next().await,
            Delivery::Closed(Closed::TokenRevoked)
        ));
        assert!(matches!(new.next().await, Delivery::Event(_)));
        // Asked once: a second close does not count it again.
        assert_eq!(hub.close(1, None, Closed::UserDisabled), 1);
        assert!(matches!(
            new.next().await,
            Delivery::Closed(Closed::UserDisabled)
        ));
        assert_eq!(hub.close(3, None, Closed::UserDisabled), 0);
        hub.publish(2, &ev(1));
        assert!(
            matches!(other.next().await, Delivery::Event(_)),
            "others keep receiving"
        );
    }

    #[test]
    fn dropping_a_subscription_unregisters_it() {
        let hub = Hub::default();
        let a = hub.register(1);
        let b = hub.register(1);
        let c = hub.register(-4);
        assert!(hub.is_connected(1) && hub.any_connected());
        assert_eq!(hub.connected_users(), vec![-4, 1]);
        drop(a);
        assert_eq!(hub.connections(1), 1);
        assert_eq!(hub.connected_users(), vec![-4, 1]);
        drop(b);
        drop(c);
        assert!(!hub.is_connected(1) && !hub.any_connected());
        assert!(hub.connected_users().is_empty());
    }
}
