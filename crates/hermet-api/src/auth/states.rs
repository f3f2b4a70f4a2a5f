//! Users' auth states (disabled, tokens valid after), cached in the process and kept right by
//! `LISTEN hermet_auth`.
//!
//! Every authenticated request asks [`AuthStates::check`]; most answers come from memory. The
//! rules that keep the cache from ever allowing what the database refuses:
//! 1. **LISTEN before loading**: the cache is trusted only while the listener connection is up,
//!    and only entries read after its `LISTEN` completed are kept, so a change committed after a
//!    read always arrives as a notification after that read.
//! 2. **A notification invalidates**: the user's entry is dropped (the next request re-reads it)
//!    and, when the user has WebSockets here, the state is re-read and applied to them.
//! 3. **Generation counter**: every invalidation bumps a counter; a read stores its result only if
//!    the counter did not move while it ran, so a stale read that raced a notification is used
//!    for that one request but never cached.
//! 4. **Listener down → no trust**: while it is down every request reads the row; when it is back
//!    the cache starts empty (the counter moves, so reads in flight are not kept) and the
//!    connected users' sockets are re-checked, since notifications were missed meanwhile.
//! 5. **Bounded**: above [`CACHE_CAP`] users the cache is cleared.
//! 6. **Local at once**: the process that makes a change calls [`AuthStates::applied`], which
//!    invalidates and closes sockets without waiting for its own notification.
//!
//! Lifetime: the listener is a task spawned by `AppState` (when the store knows its database url
//! and a runtime is running) and ends when the last clone of that `AppState` is dropped — in
//! `hermet serve`, when the HTTP server has stopped. Tied to the state rather than to `serve`'s
//! task list so every `AppState` (tests, benchmarks, several per process) gets one; it holds only
//! a connection, so it needs no shutdown path of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use hermet_core::rows::UserId;
use hermet_store::identity::{AuthNotice, AuthState};
use hermet_store::{Store, StoreError};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::push::{Closed, Hub};

/// Users cached at most; past it the cache starts over.
pub const CACHE_CAP: usize = 100_000;

/// Waits between attempts to (re)open the listener connection.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Why a verified token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UserDisabled,
    TokenRevoked,
}

impl Refusal {
    /// The refusal of a token issued at `issued_ms` by a user in `state`, if any.
    pub fn of(state: AuthState, issued_ms: i64) -> Option<Refusal> {
        if state.disabled {
            Some(Refusal::UserDisabled)
        } else if issued_ms < state.tokens_valid_after_ms {
            Some(Refusal::TokenRevoked)
        } else {
            None
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::UserDisabled => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "user_disabled",
                "this user is disabled",
            ),
            Refusal::TokenRevoked => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_revoked",
                "this token was revoked; get a new one",
            ),
        }
    }
}

/// The process's cache of auth states (see the module doc).
pub struct AuthStates {
    store: Store,
    hub: Hub,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    users: HashMap<UserId, AuthState>,
    generation: u64,
    listening: bool,
    /// Times the listener came up.
    sessions: u64,
}

impl AuthStates {
    pub fn new(store: Store, hub: Hub) -> Self {
        AuthStates {
            store,
            hub,
            cache: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // Each operation leaves the map whole, so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses a token of `user` issued at `issued_ms` when the user is disabled or the token
    /// was revoked.
    pub async fn check(&self, user: UserId, issued_ms: i64) -> Result<(), ApiError> {
        let state = self.state(user).await?;
        match Refusal::of(state, issued_ms) {
            Some(r) => Err(r.into()),
            None => Ok(()),
        }
    }

    /// `user`'s state, from the cache when it can be trusted.
    pub async fn state(&self, user: UserId) -> Result<AuthState, StoreError> {
        let generation = {
            let c = self.lock();
            if c.listening {
                if let Some(s) = c.users.get(&user) {
                    return Ok(*s);
                }
            }
            c.generation
        };
        let state = self.store.user_auth_state(user).await?;
        let mut c = self.lock();
        if c.listening && c.generation == generation {
            if c.users.len() >= CACHE_CAP {
                c.users.clear();
            }
            c.users.insert(user, state);
        }
        Ok(state)
    }

    /// Whether the cache is trusted (the listener is up).
    pub fn listening(&self) -> bool {
        self.lock().listening
    }

    fn invalidate(&self, user: Option<UserId>) {
        let mut c = self.lock();
        c.generation += 1;
        match user {
            Some(u) => {
                c.users.remove(&u);
            }
            None => c.users.clear(),
        }
    }

    /// How many times the listener has come up (each time with an empty cache).
    pub fn listener_sessions(&self) -> u64 {
        self.lock().sessions
    }

    fn set_listening(&self, on: bool) {
        let mut c = self.lock();
        c.generation += 1;
        c.users.clear();
        c.listening = on;
        c.sessions += u64::from(on);
    }

    /// This process changed `user`'s state to `state`: forget the old one and close the
    /// sockets it refuses, now (other processes learn of it by the notification).
    pub fn applied(&self, user: UserId, state: AuthState) {
        self.invalidate(Some(user));
        self.close_refused(user, state);
    }

    /// Closes `user`'s sockets that `state` refuses.
    fn close_refused(&self, user: UserId, state: AuthState) {
        let n = if state.disabled {
            self.hub.close(user, None, Closed::UserDisabled)
        } else {
            self.hub.close(
                user,
                Some(state.tokens_valid_after_ms),
                Closed::TokenRevoked,
            )
        };
        if n > 0 {
            tracing::info!(user, connections = n, "push connections closed for auth");
        }
    }

    /// Re-reads and applies the state of `user`'s sockets, if it has any here.
    async fn recheck_sockets(&self, user: UserId) {
        if self.hub.connections(user) == 0 {
            return;
        }
        match self.store.user_auth_state(user).await {
            Ok(s) => self.close_refused(user, s),
            Err(e) => tracing::warn!(user, error = %e, "cannot re-read a user's auth state"),
        }
    }

    async fn recheck_all_sockets(&self) {
        use hermet_core::push::PushSink as _;
        for user in self.hub.connected_users() {
            self.recheck_sockets(user).await;
        }
    }

    async fn on_notice(&self, n: AuthNotice) {
        match n {
            AuthNotice::User(user) => {
                self.invalidate(Some(user));
                self.recheck_sockets(user).await;
            }
            AuthNotice::All => {
                self.invalidate(None);
                self.recheck_all_sockets().await;
            }
        }
    }
}

/// Stops the listener when dropped (held by the `AppState`).
pub(crate) struct ListenerStop {
    _stop: oneshot::Sender<()>,
}

/// Spawns the listener of `states` if the store can listen and a runtime is running.
pub(crate) fn spawn_listener(states: &Arc<AuthStates>) -> Option<ListenerStop> {
    if !states.store.can_listen() {
        return None;
    }
    let rt = tokio::runtime::Handle::try_current().ok()?;
    let (tx, rx) = oneshot::channel();
    rt.spawn(listen(states.clone(), rx));
    Some(ListenerStop { _stop: tx })
}

/// Keeps a `LISTEN hermet_auth` connection up and applies what it hears, until `stop` fires or
/// its sender is dropped.
async fn listen(states: Arc<AuthStates>, mut stop: oneshot::Receiver<()>) {
    let mut wait = RETRY_FIRST;
    loop {
        let opened = tokio::select! {
            _ = &mut stop => return,
            l = states.store.listen_auth() => l,
        };
        match opened {
            Ok(mut listener) => {
                wait = RETRY_FIRST;
                states.set_listening(true);
                tracing::debug!("auth listener up");
                // Changes made while nobody listened may concern open sockets.
                states.recheck_all_sockets().await;
                let err = loop {
                    let n = tokio::select! {
                        _ = &mut stop => {
                            states.set_listening(false);
                            return;
                        }
                        n = listener.next() => n,
                    };
                    match n {
                        Ok(n) => states.on_notice(n).await,
                        Err(e) => break e,
                    }
                };
                states.set_listening(false);
                tracing::warn!(error = %err, "auth listener lost; reading auth states per request until it is back");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the auth listener; retrying");
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals() {
        let ok = AuthState::default();
        assert_eq!(Refusal::of(ok, 0), None);
        let revoked = AuthState {
            disabled: false,
            tokens_valid_after_ms: 1_000,
        };
        assert_eq!(Refusal::of(revoked, 999), Some(Refusal::TokenRevoked));
        assert_eq!(Refusal::of(revoked, 1_000), None, "issued at the bound");
        let disabled = AuthState {
            disabled: true,
            ..revoked
        };
        assert_eq!(Refusal::of(disabled, 5_000), Some(Refusal::UserDisabled));
    }
}
