//! hermet-store: the PostgreSQL adapter.
//!
//! - [`migrate`]: versioned migrations and shard creation;
//! - [`Store`] commands ([`commands`]): each write-side command is one transaction that also
//!   hands its row changes to the configured sync path — in `dual_write` the projection runs in
//!   that same transaction ([`project`]);
//! - [`history`]: a channel's messages, paged back (history) or forward (catch-up);
//! - [`project`]: resolves what a batch of changes affects, looks up current write-side state,
//!   runs the pure projection of `hermet-core`, and applies the result set-based ([`views`]);
//! - [`views`]: the guarded batch upserts and the list queries of the read side;
//! - [`oracle`]: the read side recomputed from the write side in SQL, and a diff against it;
//! - [`rebuild`]: the online rebuild into shadow tables, swapped in atomically;
//! - [`audience`]: who hears about a change (the push notifier's look-ups);
//! - [`visibility`]: whether transactions the WAL already shipped are visible to look-ups yet;
//! - [`telemetry`]: the metrics this crate records.
//! - [`dead_letters`]: what the projectors set aside, kept until a replay applies it.
//! - [`identity`]: users imported by external id, their auth state (disabled, tokens revoked,
//!   announced on `NOTIFY hermet_auth`), and the server API keys.
//!
//! All SQL binds its values; batches use `UNNEST` arrays.

pub mod audience;
pub mod audit;
pub mod commands;
pub mod dead_letters;
mod error;
pub mod history;
pub mod identity;
pub mod migrate;
pub mod oracle;
pub mod project;
pub mod rebuild;
mod rows;
mod send;
pub mod shard;
pub mod sync;
pub mod telemetry;
pub mod views;
pub mod visibility;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod, Runtime};
use hermet_core::cache::ListCache;
use hermet_core::projection::ProjectionConfig;
use hermet_core::validate::Limits;
use hermet_core::Lsn;
use tokio_postgres::NoTls;

pub use error::StoreError;
pub use send::send_statements_for_benchmarks;

/// How the read side is kept in sync with the write side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// View updates run in the command's own transaction: reads are always fresh.
    DualWrite,
    /// The command writes a durable outbox row; a worker applies it.
    Async,
    /// The WAL is streamed to Kafka; projectors apply it.
    Cdc,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::DualWrite => "dual_write",
            SyncMode::Async => "async",
            SyncMode::Cdc => "cdc",
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub sync_mode: SyncMode,
    pub projection: ProjectionConfig,
    pub limits: Limits,
    /// When a group's membership commands switch it between write and read diffusion.
    pub fanout: hermet_core::rows::FanoutConfig,
}

/// A command's result with the WAL position at or after its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    pub value: T,
    pub lsn: Lsn,
}

/// Default size of the list reads' pool (`database.read_pool_size`).
pub const DEFAULT_READ_POOL_SIZE: usize = 8;

/// The PostgreSQL side of hermet: write-side commands and read-side queries.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// The list reads' connections: each prepares statements per shard (see [`views`]), so
    /// their number bounds that memory on the server. The commands' pool unless set apart.
    read_pool: Pool,
    cfg: StoreConfig,
    cache: Arc<dyn ListCache>,
    /// Built at the first list read, from the catalog.
    lists: Arc<tokio::sync::OnceCell<views::ListQueries>>,
    max_list_statements: usize,
    /// Where [`Store::listen_auth`] connects (a dedicated connection, outside the pools).
    listen: Option<Arc<tokio_postgres::Config>>,
}

/// Opens a connection pool. Connections are made lazily; [`Store::ping`] checks one.
pub fn connect_pool(url: &str, max_size: usize) -> Result<Pool, StoreError> {
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Config(format!("database url: {e}")))?;
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(max_size)
        // The most recently used connection first: under a steady load the same few backends
        // stay busy (their caches warm) and the rest stay idle, instead of every connection of
        // the pool taking turns.
        .queue_mode(QueueMode::Lifo)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Config(format!("database pool: {e}")))
}

impl Store {
    /// A store without a list cache.
    pub fn new(pool: Pool, cfg: StoreConfig) -> Self {
        Store {
            read_pool: pool.clone(),
            pool,
            cfg,
            cache: hermet_core::cache::no_cache(),
            lists: Arc::default(),
            max_list_statements: views::DEFAULT_MAX_LIST_STATEMENTS,
            listen: None,
        }
    }

    /// The store, invalidating `cache` after every `dual_write` command commits and before it
    /// returns.
    pub fn with_cache(mut self, cache: Arc<dyn ListCache>) -> Self {
        self.cache = cache;
        self
    }

    /// The store, serving list reads from `pool` instead of the commands' pool.
    pub fn with_read_pool(mut self, pool: Pool) -> Self {
        self.read_pool = pool;
        self
    }

    /// The store, keeping at most `n` statements prepared per connection for list reads
    /// (instead of [`views::DEFAULT_MAX_LIST_STATEMENTS`]); takes effect before the first read.
    pub fn with_max_list_statements(mut self, n: usize) -> Self {
        self.max_list_statements = n.max(1);
        self
    }

    /// The store, able to open the `LISTEN hermet_auth` connection of [`Store::listen_auth`] to
    /// the database at `url` (the pools' own database). Without it, API processes cannot learn
    /// of other processes' auth changes and read the auth state on every request instead.
    pub fn with_listen_url(mut self, url: &str) -> Result<Self, StoreError> {
        let pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Config(format!("database url: {e}")))?;
        self.listen = Some(Arc::new(pg));
        Ok(self)
    }

    /// Whether [`Store::listen_auth`] has somewhere to connect.
    pub fn can_listen(&self) -> bool {
        self.listen.is_some()
    }

    /// The list reads' pool.
    pub fn read_pool(&self) -> &Pool {
        &self.read_pool
    }

    /// The list cache this store invalidates (and the API reads through).
    pub fn cache(&self) -> &Arc<dyn ListCache> {
        &self.cache
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// The list queries, loaded from the catalog once.
    pub async fn list_queries(
        &self,
        client: &deadpool_postgres::Client,
    ) -> Result<&views::ListQueries, StoreError> {
        self.lists
            .get_or_try_init(|| views::ListQueries::load(client, self.max_list_statements))
            .await
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.simple_query("SELECT 1").await?;
        Ok(())
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Creates the database named in `url` if it does not exist, connecting to the server's
/// `postgres` database to do so. Returns whether it was created.
pub async fn create_database_if_missing(url: &str) -> Result<bool, StoreError> {
    let cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Config(format!("database url: {e}")))?;
    let name = cfg.get_dbname().unwrap_or("postgres").to_owned();
    let mut admin = cfg.clone();
    admin.dbname("postgres");
    let (client, conn) = admin
        .connect(NoTls)
        .await
        .map_err(|e| StoreError::Unavailable(format!("connecting to PostgreSQL: {e}")))?;
    let task = tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    let mut created = false;
    if !exists {
        // Identifiers cannot be bound; quote it as PostgreSQL does.
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => created = true,
            // Someone else created it meanwhile.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(e.into()),
        }
    }
    drop(client);
    let _ = task.await;
    Ok(created)
}
