//! Identity for real deployments: users imported from the product's accounts by an external id,
//! each user's auth state, and the API keys the product's app server authenticates with.
//!
//! Contract:
//! - **Auth state lives in `user_auth`**, a table outside the CDC publication: disabling a user or
//!   revoking their tokens is no change of the read side and produces no read-side work. A user
//!   without a row has the default state (enabled, every token valid).
//! - **Every auth change is announced**: [`Store::set_disabled`] and [`Store::revoke_tokens`] run
//!   `pg_notify('hermet_auth', '<user_id>')` in their own transaction, so the notification is
//!   delivered exactly when the change is visible (at commit). API processes keep a cache of auth
//!   states fed by [`Store::listen_auth`]; what they do with a notification is theirs.
//! - **Import is idempotent**: [`Store::create_or_get_external_user`] creates the user (through
//!   the same path as `create_user`, so the read side learns of it) and claims the external id in
//!   one transaction; when another transaction holds the id, this one rolls back and returns that
//!   user. Concurrent imports of one id make one user.
//! - **API keys are stored as their SHA-256 only**: the plain key is returned once by
//!   [`Store::create_api_key`] and never kept or logged (only its id and prefix are). A key is
//!   32 random bytes, so a fast unsalted hash is enough (nothing to brute-force).
//!   `last_used_at` is written at most once per [`LAST_USED_EVERY_MS`] per key, not per request.

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine as _;
use hermet_core::change::{Change, RowChange};
use hermet_core::rows::{UserId, UserRow};
use hermet_core::validate::{Avatar, ExternalId, KeyName, Name};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, NoTls, Socket};

use crate::commands::{insert_user, q_opt, user_not_found, Changes};
use crate::rows::{self, get, prefixed, USER_COLS};
use crate::{now_ms, Store, StoreError, Written};

/// The channel of `NOTIFY hermet_auth, '<user_id>'`.
pub const AUTH_CHANNEL: &str = "hermet_auth";

/// How often a key's `last_used_at` is written at most.
pub const LAST_USED_EVERY_MS: i64 = 60_000;

/// What every API key starts with (tells a key from a user token at a glance).
pub const API_KEY_PREFIX: &str = "hmk_";

/// Characters of a key shown by `hermet admin apikey list` (the prefix and 8 more).
const SHOWN_CHARS: usize = 12;

pub type ApiKeyId = i64;

/// A user's auth state (a user without a `user_auth` row has the default one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthState {
    pub disabled: bool,
    /// Unix ms: tokens issued before it are refused.
    pub tokens_valid_after_ms: i64,
}

/// A user as the server routes show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUser {
    pub user: UserRow,
    pub external_id: Option<String>,
    pub disabled: bool,
}

/// A key just created: the only time the plain key exists outside its holder.
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub key: String,
    pub prefix: String,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A key as listed: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: ApiKeyId,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

const KEY_COLS: &str = "id, name, prefix, created_at, revoked_at, last_used_at";

fn key_info(row: &tokio_postgres::Row) -> Result<ApiKeyInfo, StoreError> {
    Ok(ApiKeyInfo {
        id: get(row, 0)?,
        name: get(row, 1)?,
        prefix: get(row, 2)?,
        created_at: get(row, 3)?,
        revoked_at: get(row, 4)?,
        last_used_at: get(row, 5)?,
    })
}

fn key_hash(plain: &str) -> Vec<u8> {
    Sha256::digest(plain.as_bytes()).to_vec()
}

/// Upserts a user's `user_auth` row (only for a user that exists: none → no row returned) and
/// announces it. `$1` user, `$2` the new value, `$3` now.
const SET_DISABLED: &str = "INSERT INTO user_auth (user_id, disabled, updated_at)
     SELECT id, $2, $3 FROM users WHERE id = $1
     ON CONFLICT (user_id) DO UPDATE SET disabled = EXCLUDED.disabled, updated_at = EXCLUDED.updated_at
     RETURNING disabled, tokens_valid_after";

/// The bound only moves forward: a revoke with an older clock reading changes nothing.
const REVOKE: &str = "INSERT INTO user_auth (user_id, tokens_valid_after, updated_at)
     SELECT id, $2, $3 FROM users WHERE id = $1
     ON CONFLICT (user_id) DO UPDATE
        SET tokens_valid_after = GREATEST(user_auth.tokens_valid_after, EXCLUDED.tokens_valid_after),
            updated_at = EXCLUDED.updated_at
     RETURNING disabled, tokens_valid_after";

const NOTIFY: &str = "SELECT pg_notify($1, $2)";

impl Store {
    /// The user imported with `external_id`, if any.
    pub async fn user_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<UserId>, StoreError> {
        let conn = self.conn().await?;
        let stmt = conn
            .prepare_cached("SELECT user_id FROM user_auth WHERE external_id = $1")
            .await?;
        conn.query_opt(&stmt, &[&external_id])
            .await?
            .map(|r| get(&r, 0))
            .transpose()
    }

    /// Creates the user of `external_id`, or returns the one already imported with it (`false`:
    /// not created; nickname and avatar are then left as they are). See the module doc.
    pub async fn create_or_get_external_user(
        &self,
        external_id: &ExternalId,
        nickname: &Name,
        avatar: &Avatar,
    ) -> Result<(Written<UserRow>, bool), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let now = now_ms();
        let user = insert_user(&tx, nickname, avatar).await?;
        // Waits for a concurrent transaction holding the same id, then does nothing if it
        // committed.
        let claimed = q_opt(
            &tx,
            "INSERT INTO user_auth (user_id, external_id, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (external_id) DO NOTHING RETURNING user_id",
            &[&user.id, &external_id.as_str(), &now],
        )
        .await?;
        if claimed.is_none() {
            tx.rollback().await?;
            let id = self
                .user_by_external_id(external_id.as_str())
                .await?
                .ok_or_else(|| {
                    // Claimed by a transaction that committed, so it stays (nothing deletes it).
                    StoreError::Decode(format!(
                        "external id {:?} was taken but is not found",
                        external_id.as_str()
                    ))
                })?;
            let user = self.get_user(id).await?;
            return Ok((
                Written {
                    value: user,
                    lsn: Self::lsn(&conn).await?,
                },
                false,
            ));
        }
        let mut ch = Changes::default();
        ch.push(RowChange::Users(Change::inserted(user.clone())));
        self.finish(tx, ch).await?;
        tracing::info!(user = user.id, "user imported by external id");
        Ok((
            Written {
                value: user,
                lsn: Self::lsn(&conn).await?,
            },
            true,
        ))
    }

    /// A user with their external id and whether they are disabled.
    pub async fn server_user(&self, id: UserId) -> Result<ServerUser, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "SELECT {}, a.external_id, COALESCE(a.disabled, false)
               FROM users u LEFT JOIN user_auth a ON a.user_id = u.id WHERE u.id = $1",
            prefixed("u", USER_COLS)
        );
        let stmt = conn.prepare_cached(&sql).await?;
        let row = conn
            .query_opt(&stmt, &[&id])
            .await?
            .ok_or_else(|| user_not_found(id))?;
        Ok(ServerUser {
            user: rows::user(&row, 0)?,
            external_id: get(&row, 6)?,
            disabled: get(&row, 7)?,
        })
    }

    /// A user's auth state (the default one for users who never had a change).
    pub async fn user_auth_state(&self, user: UserId) -> Result<AuthState, StoreError> {
        let conn = self.conn().await?;
        let stmt = conn
            .prepare_cached("SELECT disabled, tokens_valid_after FROM user_auth WHERE user_id = $1")
            .await?;
        match conn.query_opt(&stmt, &[&user]).await? {
            Some(r) => Ok(AuthState {
                disabled: get(&r, 0)?,
                tokens_valid_after_ms: get(&r, 1)?,
            }),
            None => Ok(AuthState::default()),
        }
    }

    /// Disables or re-enables a user and announces it; `user_not_found` for an unknown user.
    pub async fn set_disabled(
        &self,
        user: UserId,
        disabled: bool,
    ) -> Result<Written<AuthState>, StoreError> {
        let state = self
            .auth_write(user, SET_DISABLED, disabled, now_ms())
            .await?;
        tracing::info!(user, disabled, "user auth state changed");
        Ok(state)
    }

    /// Refuses every token of `user` issued before `now_ms` and announces it;
    /// `user_not_found` for an unknown user.
    pub async fn revoke_tokens(
        &self,
        user: UserId,
        now_ms: i64,
    ) -> Result<Written<AuthState>, StoreError> {
        let state = self.auth_write(user, REVOKE, now_ms, now_ms).await?;
        tracing::info!(user, valid_after = now_ms, "user tokens revoked");
        Ok(state)
    }

    /// The write of [`Store::set_disabled`] and [`Store::revoke_tokens`], with the WAL position
    /// after it (like every write's, though no read model depends on it).
    async fn auth_write<T: tokio_postgres::types::ToSql + Sync>(
        &self,
        user: UserId,
        sql: &str,
        value: T,
        now: i64,
    ) -> Result<Written<AuthState>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await?;
        let row = q_opt(&tx, sql, &[&user, &value, &now])
            .await?
            .ok_or_else(|| user_not_found(user))?;
        let stmt = tx.prepare_cached(NOTIFY).await?;
        tx.execute(&stmt, &[&AUTH_CHANNEL, &user.to_string()])
            .await?;
        tx.commit().await?;
        Ok(Written {
            value: AuthState {
                disabled: get(&row, 0)?,
                tokens_valid_after_ms: get(&row, 1)?,
            },
            lsn: Self::lsn(&conn).await?,
        })
    }

    /// Creates an API key; the plain key is in the result and nowhere else.
    pub async fn create_api_key(&self, name: &KeyName) -> Result<NewApiKey, StoreError> {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let key = format!(
            "{API_KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let prefix: String = key.chars().take(SHOWN_CHARS).collect();
        let conn = self.conn().await?;
        let row = conn
            .query_one(
                "INSERT INTO api_keys (name, key_hash, prefix, created_at) VALUES ($1, $2, $3, $4)
                 RETURNING id",
                &[&name.as_str(), &key_hash(&key), &prefix, &now_ms()],
            )
            .await?;
        let id: ApiKeyId = get(&row, 0)?;
        tracing::info!(key_id = id, prefix = %prefix, "api key created");
        Ok(NewApiKey { id, key, prefix })
    }

    /// Every key, revoked ones too, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let conn = self.conn().await?;
        let sql = format!("SELECT {KEY_COLS} FROM api_keys ORDER BY id");
        conn.query(&sql, &[]).await?.iter().map(key_info).collect()
    }

    /// Revokes a key (again: no change); `api_key_not_found` for an unknown id.
    pub async fn revoke_api_key(&self, id: ApiKeyId) -> Result<ApiKeyInfo, StoreError> {
        let conn = self.conn().await?;
        let sql = format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1
             RETURNING {KEY_COLS}"
        );
        let row = conn
            .query_opt(&sql, &[&id, &now_ms()])
            .await?
            .ok_or_else(|| {
                StoreError::not_found("api_key_not_found", format!("API key {id} does not exist"))
            })?;
        tracing::info!(key_id = id, "api key revoked");
        key_info(&row)
    }

    /// The key `plain` is, if it exists and is not revoked.
    pub async fn verify_api_key(&self, plain: &str) -> Result<Option<ApiKeyId>, StoreError> {
        let conn = self.conn().await?;
        let stmt = conn
            .prepare_cached(
                "SELECT id, last_used_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            )
            .await?;
        let Some(row) = conn.query_opt(&stmt, &[&key_hash(plain)]).await? else {
            return Ok(None);
        };
        let (id, last_used): (ApiKeyId, Option<i64>) = (get(&row, 0)?, get(&row, 1)?);
        let now = now_ms();
        if last_used.is_none_or(|t| t < now - LAST_USED_EVERY_MS) {
            // Concurrent requests may both get here; the condition keeps it to one write.
            let stmt = conn
                .prepare_cached(
                    "UPDATE api_keys SET last_used_at = $2
                      WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)",
                )
                .await?;
            conn.execute(&stmt, &[&id, &now, &(now - LAST_USED_EVERY_MS)])
                .await?;
        }
        Ok(Some(id))
    }

    /// A dedicated connection that has run `LISTEN hermet_auth` (see [`AuthListener`]), named
    /// [`LISTENER_APPLICATION_NAME`] in `pg_stat_activity`.
    pub async fn listen_auth(&self) -> Result<AuthListener, StoreError> {
        let Some(pg) = &self.listen else {
            return Err(StoreError::Config(
                "the store has no database url to listen on".into(),
            ));
        };
        let mut pg = (**pg).clone();
        pg.application_name(LISTENER_APPLICATION_NAME);
        let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(NoTls))
            .await
            .map_err(|_| StoreError::Unavailable("connecting to listen: timed out".into()))??;
        let mut l = AuthListener {
            client,
            conn,
            pending: VecDeque::new(),
        };
        l.while_polling(
            |c| async move { c.batch_execute(&format!("LISTEN {AUTH_CHANNEL}")).await },
        )
        .await?;
        Ok(l)
    }
}

/// The `application_name` of listener connections.
pub const LISTENER_APPLICATION_NAME: &str = "hermet auth listener";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A listener with no notification for this long checks that its connection still answers (a
/// connection cut without a reset would otherwise look like a quiet one).
const CHECK_EVERY: Duration = Duration::from_secs(10);

/// What a notification on `hermet_auth` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthNotice {
    /// This user's auth state changed.
    User(UserId),
    /// A payload that is not a user id: treat every user as changed.
    All,
}

/// A connection listening on `hermet_auth`. Errors mean the connection is gone: open another.
pub struct AuthListener {
    client: tokio_postgres::Client,
    conn: tokio_postgres::Connection<Socket, NoTlsStream>,
    /// Notifications that arrived while a query of ours was running.
    pending: VecDeque<AuthNotice>,
}

impl AuthListener {
    /// The next notification. Cancel-safe.
    pub async fn next(&mut self) -> Result<AuthNotice, StoreError> {
        loop {
            if let Some(n) = self.pending.pop_front() {
                return Ok(n);
            }
            let polled = tokio::time::timeout(
                CHECK_EVERY,
                std::future::poll_fn(|cx| self.conn.poll_message(cx)),
            )
            .await;
            match polled {
                Ok(m) => {
                    if let Some(n) = notice(m)? {
                        return Ok(n);
                    }
                }
                Err(_) => {
                    self.while_polling(|c| async move { c.simple_query("").await.map(drop) })
                        .await?
                }
            }
        }
    }

    /// Runs a query on the client while polling the connection (which is what drives it),
    /// keeping the notifications that arrive meanwhile. Fails after [`CONNECT_TIMEOUT`].
    async fn while_polling<'a, F, Fut>(&'a mut self, query: F) -> Result<(), StoreError>
    where
        F: FnOnce(&'a tokio_postgres::Client) -> Fut,
        Fut: std::future::Future<Output = Result<(), tokio_postgres::Error>> + 'a,
    {
        let AuthListener {
            client,
            conn,
            pending,
        } = self;
        let q = query(client);
        tokio::pin!(q);
        let run = async {
            loop {
                tokio::select! {
                    r = &mut q => return r.map_err(StoreError::from),
                    m = std::future::poll_fn(|cx| conn.poll_message(cx)) => {
                        if let Some(n) = notice(m)? {
                            pending.push_back(n);
                        }
                    }
                }
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, run)
            .await
            .map_err(|_| StoreError::Unavailable("listen connection: no answer".into()))?
    }
}

/// A notification of ours from what the connection yielded; `None` for other messages.
fn notice(
    m: Option<Result<AsyncMessage, tokio_postgres::Error>>,
) -> Result<Option<AuthNotice>, StoreError> {
    match m {
        Some(Ok(AsyncMessage::Notification(n))) if n.channel() == AUTH_CHANNEL => {
            Ok(Some(match n.payload().parse::<UserId>() {
                Ok(id) => AuthNotice::User(id),
                Err(_) => AuthNotice::All,
            }))
        }
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(e.into()),
        None => Err(StoreError::Unavailable("listen connection closed".into())),
    }
}
