//! Configuration: one typed struct, read from an optional TOML file and overridden by
//! `HERMET_*` environment variables, validated before anything starts.
//!
//! Environment: `HERMET_<SECTION>__<KEY>` sets any key (`HERMET_HTTP__ADDR=0.0.0.0:8080`), and
//! these short forms are accepted too: `HERMET_DATABASE_URL`, `HERMET_KAFKA_BROKERS`,
//! `HERMET_REDIS_URL`, `HERMET_HTTP_ADDR`, `HERMET_JWT_SECRET`, `HERMET_SYNC_MODE`,
//! `HERMET_SHARDS`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use hermet_api::rate_limit::ProxyNet;
use hermet_api::{Limit, RateLimits};
use hermet_core::cache::ListCache;
use hermet_core::projection::ProjectionConfig;
use hermet_core::rows::FanoutConfig;
use hermet_core::validate::Limits;
use hermet_store::{StoreConfig, SyncMode};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub sync: SyncConfig,
    pub read_side: ReadSideConfig,
    pub limits: Limits,
    pub fanout: FanoutConfig,
    pub kafka: KafkaConfig,
    pub redis: RedisConfig,
    pub cdc: CdcConfig,
    pub projector: ProjectorConfig,
    pub audit: AuditConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub rate_limits: RateLimitsConfig,
}

/// How `serve` stops (SIGTERM, Ctrl-C, or a task that failed).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds the tasks have to finish their shutdown (requests in progress answered, the
    /// relay's records acknowledged and confirmed, projectors' batches committed). Past it the
    /// process exits non-zero naming the tasks still running. Keep it under the orchestrator's
    /// own grace period (Kubernetes: `terminationGracePeriodSeconds`, 30 s by default).
    pub deadline_secs: u64,
}

/// Bounds of `shutdown.deadline_secs`.
pub const SHUTDOWN_DEADLINE_SECS: std::ops::RangeInclusive<u64> = 1..=3600;

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { deadline_secs: 25 }
    }
}

impl ShutdownConfig {
    pub fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.deadline_secs)
    }
}

/// The background audit of `serve` (exports `hermet_consistency_rate`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Seconds between audits; 0 turns the background audit off.
    pub interval_secs: u64,
    /// Buckets compared per audit (of `buckets`).
    pub sample_buckets: u32,
    pub buckets: u32,
    /// In the eventually consistent modes a mismatch is re-checked after this long, so rows
    /// still on their way are not counted.
    pub recheck_ms: u64,
    /// Repair what an audit pass finds (delete the wrong rows, recompute them from the write
    /// side), as `hermet admin audit --repair` does.
    pub repair: bool,
    /// Most findings one pass repairs: a repair is one transaction, and a badly broken read
    /// side is `hermet admin rebuild`'s job, not a background task's.
    pub max_repairs: usize,
}

/// Most of `projector.max_read_waiters`: every waiting read is an open request.
pub const MAX_READ_WAITERS: usize = 1_000_000;

/// Bounds of `audit.max_repairs`.
pub const MAX_REPAIRS: std::ops::RangeInclusive<usize> = 1..=1_000_000;

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            interval_secs: 60,
            sample_buckets: 8,
            buckets: 256,
            recheck_ms: 5000,
            repair: true,
            max_repairs: 1000,
        }
    }
}

/// Projectors (`async`: the outbox worker; `cdc`: the Kafka consumer groups) and reads that wait
/// for them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorConfig {
    pub batch_max: usize,
    pub batch_wait_ms: u64,
    /// Tries of a failing batch before its records are applied one by one and dead-lettered.
    pub max_attempts: u32,
    pub dlq_topic: String,
    pub outbox_batch: i64,
    pub outbox_idle_ms: u64,
    /// Longest a read with `X-Hermet-Min-Lsn` waits before answering `X-Hermet-Stale: true`.
    pub read_wait_ms: u64,
    /// Most reads with `X-Hermet-Min-Lsn` waiting at once per API process; the ones beyond
    /// answer `X-Hermet-Stale: true` at once (0: reads never wait). A waiting read holds no
    /// database connection, only a little memory.
    pub max_read_waiters: usize,
    /// Prepended to the consumer group ids (`conversation-view-updater`,
    /// `contact-view-updater`), which are also the projectors' names in
    /// `hermet_projector_watermarks` and what the API's read-your-writes waits on. Empty by
    /// default; set it when several installations (or tests) share one Kafka cluster.
    pub group_prefix: String,
    /// Longest a consumer-group batch waits for its transactions to become visible to new
    /// snapshots before their records are dead-lettered (`hermet_projector::visibility`).
    pub visibility_wait_ms: u64,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            batch_max: hermet_projector::consumer::DEFAULT_BATCH_MAX,
            batch_wait_ms: hermet_projector::consumer::DEFAULT_BATCH_WAIT.as_millis() as u64,
            max_attempts: 5,
            dlq_topic: "hermet.dlq".into(),
            outbox_batch: 500,
            outbox_idle_ms: 10,
            read_wait_ms: 2000,
            max_read_waiters: hermet_api::consistency::DEFAULT_MAX_READ_WAITERS,
            group_prefix: String::new(),
            visibility_wait_ms: hermet_projector::visibility::DEFAULT_VISIBILITY_WAIT.as_millis()
                as u64,
        }
    }
}

/// Printed by `hermet config` and in messages: the URL's password is redacted.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// PostgreSQL URL of the hermet database (write and read side).
    pub url: String,
    pub pool_size: usize,
    /// Connections of the list reads, apart from the commands' pool (`Store::with_read_pool`).
    pub read_pool_size: usize,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a new field cannot be left out of the output unnoticed.
        let DatabaseConfig {
            url,
            pool_size,
            read_pool_size,
        } = self;
        f.debug_struct("DatabaseConfig")
            .field("url", &redact(url))
            .field("pool_size", pool_size)
            .field("read_pool_size", read_pool_size)
            .finish()
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:55432/hermet".into(),
            pool_size: 32,
            read_pool_size: hermet_store::DEFAULT_READ_POOL_SIZE,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    pub max_body_bytes: usize,
    /// Where processes without the API role (relay, projectors) serve `/metrics`; none if unset
    /// (the API serves `/metrics` on `addr`).
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the web client and the operations page from this folder, read on every request,
    /// instead of the copies built into the binary (for working on them without rebuilding).
    pub web_dir: Option<std::path::PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 64 * 1024,
            metrics_addr: None,
            web_dir: None,
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret shared with whoever issues tokens; at least 32 bytes.
    pub jwt_secret: String,
    pub token_ttl_secs: u64,
    /// `[auth.jwks]`: also accept tokens signed by the product's identity provider, verified
    /// against its key set (hermet_api::jwks).
    pub jwks: Option<hermet_api::jwks::JwksConfig>,
    /// Longest lifetime a server may ask for a minted token (`POST /v1/server/users/{id}/tokens`).
    pub max_token_ttl_secs: u64,
    /// `POST /v1/users` open to anyone (development); off, users come from the product's server.
    pub open_signup: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: String::new(),
            token_ttl_secs: 30 * 24 * 3600,
            jwks: None,
            max_token_ttl_secs: 30 * 24 * 3600,
            open_signup: false,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &"<redacted>")
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("jwks", &self.jwks)
            .field("max_token_ttl_secs", &self.max_token_ttl_secs)
            .field("open_signup", &self.open_signup)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    DualWrite,
    Async,
    Cdc,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    pub mode: Mode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadSideConfig {
    /// Partitions of each read-side table. Fixed once the database is created.
    pub shards: u32,
    /// Characters of a message kept in the conversation preview.
    pub preview_chars: usize,
}

impl Default for ReadSideConfig {
    fn default() -> Self {
        ReadSideConfig {
            shards: 256,
            preview_chars: 50,
        }
    }
}

/// Printed by `hermet config` with each broker passed through [`redact`]: a broker written as
/// a URL could carry SASL credentials.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let KafkaConfig { brokers } = self;
        let shown: Vec<String> = brokers.split(',').map(redact).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &shown.join(","))
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:59092".into(),
        }
    }
}

/// The CDC relay (`serve --role cdc`, or inside `serve` when `enabled`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdcConfig {
    /// Run the relay in the all-in-one `serve`.
    pub enabled: bool,
    pub slot: String,
    pub publication: String,
    /// Captured tables (`schema.table` or `table`).
    pub tables: Vec<String>,
    pub topic_prefix: String,
    /// Topic of a `public` table; `{table}` is replaced.
    pub topic_template: String,
    /// Partitions of each topic: the most consumers a group can use in parallel.
    pub partitions: i32,
    pub replication_factor: i32,
    pub heartbeat_ms: u64,
    pub transaction_topic: bool,
    pub max_in_flight: usize,
    pub snapshot_batch: usize,
    /// While transactions flow, how often every partition gets a watermark marker (bounds how
    /// long a read with `X-Hermet-Min-Lsn` waits on a quiet partition).
    pub watermark_ms: u64,
    /// How long a record may wait in the relay's producer for others to share its Kafka
    /// request: fewer requests (less CPU at light loads) against up to this much latency.
    pub linger_ms: u64,
}

impl Default for CdcConfig {
    fn default() -> Self {
        CdcConfig {
            enabled: false,
            slot: "hermet_slot".into(),
            publication: "hermet_publication".into(),
            tables: hermet_core::rows::WRITE_TABLES.map(String::from).to_vec(),
            topic_prefix: "hermet".into(),
            topic_template: "{table}.changed".into(),
            partitions: hermet_cdc::relay::DEFAULT_PARTITIONS,
            replication_factor: 1,
            heartbeat_ms: 10_000,
            transaction_topic: false,
            max_in_flight: 100_000,
            snapshot_batch: 5_000,
            watermark_ms: hermet_cdc::relay::DEFAULT_WATERMARK_INTERVAL.as_millis() as u64,
            linger_ms: hermet_cdc::relay::DEFAULT_LINGER.as_millis() as u64,
        }
    }
}

/// Printed by `hermet config`: the URL's password is redacted.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    /// Cache first pages of conversation lists (see `hermet_core::cache`).
    pub cache: bool,
    /// Lifetime of a cached page, in seconds.
    pub cache_ttl_secs: u64,
    /// Start of every cache key, so deployments can share one Redis.
    pub key_prefix: String,
    /// Longest one Redis call may take before the read goes to PostgreSQL.
    pub timeout_ms: u64,
    /// How long the cache stays out of the way after a Redis error.
    pub retry_after_ms: u64,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let RedisConfig {
            url,
            cache,
            cache_ttl_secs,
            key_prefix,
            timeout_ms,
            retry_after_ms,
        } = self;
        f.debug_struct("RedisConfig")
            .field("url", &redact(url))
            .field("cache", cache)
            .field("cache_ttl_secs", cache_ttl_secs)
            .field("key_prefix", key_prefix)
            .field("timeout_ms", timeout_ms)
            .field("retry_after_ms", retry_after_ms)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:56379".into(),
            cache: true,
            cache_ttl_secs: 300,
            key_prefix: "hermet".into(),
            timeout_ms: 100,
            retry_after_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `hermet_store=debug,info`. `RUST_LOG` wins if set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
        }
    }
}

// ---- [rate_limits] -------------------------------------------------------------------------

/// Per-user and per-address request limits (`hermet_api::rate_limit` has the contract): each a
/// `per_second` rate and a `burst`, `per_second = 0` turning it off. These defaults are the
/// production ones; `make run` raises them so a test client on localhost is not throttled, and
/// the test harnesses turn them off with `enabled = false`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Off: no limit applies, whatever the others say.
    pub enabled: bool,
    /// Per user: `POST /v1/channels/{id}/messages`.
    pub send: Limit,
    /// Per user: every authenticated `POST`, `PATCH` and `DELETE` (sends included).
    pub write: Limit,
    /// Per client address: `POST /v1/users`.
    pub signup: Limit,
    /// Per client address: refused bearer tokens; past it they are answered 429, not 401.
    pub auth_failure: Limit,
    /// Proxies (addresses or networks, `10.0.0.0/8`) whose `X-Forwarded-For` names the client;
    /// empty: the client address is the TCP peer.
    pub trusted_proxies: Vec<ProxyNet>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        RateLimitsConfig {
            enabled: true,
            send: Limit::new(20, 50),
            write: Limit::new(50, 100),
            signup: Limit::new(1, 20),
            auth_failure: Limit::new(5, 20),
            trusted_proxies: Vec::new(),
        }
    }
}

impl RateLimitsConfig {
    /// What the API applies.
    pub fn api(&self) -> RateLimits {
        if self.enabled {
            self.configured()
        } else {
            RateLimits::default()
        }
    }

    fn configured(&self) -> RateLimits {
        RateLimits {
            send: self.send,
            write: self.write,
            signup: self.signup,
            auth_failure: self.auth_failure,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }

    /// A limit that is on needs a `burst` of at least 1 (checked with `enabled = false` too, so
    /// turning the limits on cannot meet a bad value later).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.configured().validate().map_err(|(bucket, e)| {
            ConfigError::Invalid(format!("rate_limits.{}: {e}", bucket.as_str()))
        })
    }
}

/// Query and connection-string parameters whose value is a password (`pass`: Redis URLs).
const SECRET_PARAMS: [&str; 2] = ["password", "pass"];

/// `url` with its password replaced by `***`, for output and messages: the password of a URL's
/// user info (`scheme://user:secret@host`), a `password` (or `pass`) query parameter, and the
/// `password` of a PostgreSQL key-value connection string (`host=h password=secret`).
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_key_values(url);
    };
    let rest = &url[scheme_end + 3..];
    // User info, host and path up to the query: the user info ends at the *last* `@` (a
    // password may hold an unescaped `@`); a `@` in a database name can only mangle the output,
    // never reveal a password.
    let (before_query, query) = match rest.find(['?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..scheme_end + 3]);
    match before_query.rfind('@') {
        Some(at) => {
            let (userinfo, host) = before_query.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(host);
        }
        None => out.push_str(before_query),
    }
    let Some(params) = query.strip_prefix('?') else {
        out.push_str(query);
        return out;
    };
    let (params, fragment) = match params.find('#') {
        Some(i) => params.split_at(i),
        None => (params, ""),
    };
    out.push('?');
    let redacted: Vec<String> = params
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p)) => {
                format!("{k}=***")
            }
            _ => kv.to_owned(),
        })
        .collect();
    out.push_str(&redacted.join("&"));
    out.push_str(fragment);
    out
}

/// The `password` of a libpq key-value string (`host=h password='se cret'`) as `***`. What does
/// not scan as key-value pairs is not shown at all, rather than risk showing a password.
fn redact_key_values(s: &str) -> String {
    if !s.to_ascii_lowercase().contains("pass") {
        return s.to_owned();
    }
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') || key.is_empty() {
            return "<connection string not shown>".to_owned();
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            value.push('\'');
            loop {
                match chars.next() {
                    Some('\\') => {
                        value.push('\\');
                        match chars.next() {
                            Some(c) => value.push(c),
                            None => return "<connection string not shown>".to_owned(),
                        }
                    }
                    Some('\'') => {
                        value.push('\'');
                        break;
                    }
                    Some(c) => value.push(c),
                    None => return "<connection string not shown>".to_owned(),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
                if c == '\\' {
                    if let Some(c) = chars.next() {
                        value.push(c);
                    }
                }
            }
        }
        if SECRET_PARAMS.iter().any(|p| key.eq_ignore_ascii_case(p)) {
            value = "***".to_owned();
        }
        pairs.push(format!("{key}={value}"));
    }
    pairs.join(" ")
}

const SHORT_FORMS: &[(&str, &str)] = &[
    ("database_url", "database.url"),
    ("kafka_brokers", "kafka.brokers"),
    ("redis_url", "redis.url"),
    ("http_addr", "http.addr"),
    ("jwt_secret", "auth.jwt_secret"),
    ("sync_mode", "sync.mode"),
    ("shards", "read_side.shards"),
    ("cdc_enabled", "cdc.enabled"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the file (if given) and the environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::new();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "{} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        let env = Env::prefixed("HERMET_").filter_map(|key| {
            let k = key.as_str().to_ascii_lowercase();
            if k.contains("__") {
                Some(k.replace("__", ".").into())
            } else {
                SHORT_FORMS
                    .iter()
                    .find(|(short, _)| *short == k)
                    .map(|(_, long)| (*long).into())
            }
        });
        let cfg: Config = fig.merge(env).extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.database.url.parse::<tokio_postgres::Config>().is_err() {
            return bad("database.url is not a PostgreSQL URL".into());
        }
        if self.database.pool_size == 0 {
            return bad("database.pool_size must be at least 1".into());
        }
        if self.database.read_pool_size == 0 {
            return bad("database.read_pool_size must be at least 1".into());
        }
        if !(1..=4096).contains(&self.read_side.shards) {
            return bad("read_side.shards must be between 1 and 4096".into());
        }
        if !(1..=1000).contains(&self.read_side.preview_chars) {
            return bad("read_side.preview_chars must be between 1 and 1000".into());
        }
        if self.limits.max_group_members < 2 || self.limits.max_name_chars == 0 {
            return bad(
                "limits: max_group_members >= 2 and max_name_chars >= 1 are required".into(),
            );
        }
        if !(2..=1_000_000).contains(&self.fanout.read_threshold) {
            return bad("fanout.read_threshold must be between 2 and 1000000".into());
        }
        if !(1..=self.fanout.read_threshold).contains(&self.fanout.write_threshold()) {
            return bad(
                "fanout.write_threshold must be between 1 and fanout.read_threshold".into(),
            );
        }
        let r = &self.redis;
        if r.cache
            && (!r.url.starts_with("redis://") && !r.url.starts_with("rediss://")
                || !(2..=86_400).contains(&r.cache_ttl_secs)
                || !(1..=10_000).contains(&r.timeout_ms)
                || r.retry_after_ms > 600_000
                || r.key_prefix.is_empty()
                || r.key_prefix.contains(char::is_whitespace))
        {
            return bad(
                "redis: url must be redis://…, cache_ttl_secs 2..=86400, timeout_ms \
                 1..=10000, retry_after_ms <= 600000, key_prefix non-empty without spaces"
                    .into(),
            );
        }
        let c = &self.cdc;
        let ident_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !ident_ok(&c.slot) || !ident_ok(&c.publication) {
            return bad(
                "cdc.slot and cdc.publication must be 1-63 characters of a-z, 0-9, _".into(),
            );
        }
        if c.tables.is_empty() || c.partitions < 1 || c.replication_factor < 1 {
            return bad(
                "cdc: tables must not be empty; partitions and replication_factor >= 1".into(),
            );
        }
        if c.heartbeat_ms < 100
            || u128::from(c.watermark_ms) < hermet_cdc::relay::MIN_WATERMARK_INTERVAL.as_millis()
            || c.max_in_flight == 0
            || c.snapshot_batch == 0
        {
            return bad(
                "cdc: heartbeat_ms >= 100, watermark_ms >= 5, max_in_flight and snapshot_batch >= 1"
                    .into(),
            );
        }
        if u128::from(c.linger_ms) > hermet_cdc::relay::MAX_LINGER.as_millis() {
            return bad(format!(
                "cdc.linger_ms must be at most {} (every change may wait that long)",
                hermet_cdc::relay::MAX_LINGER.as_millis()
            ));
        }
        if !c.topic_template.contains("{table}") {
            return bad("cdc.topic_template must contain {table}".into());
        }
        let a = &self.audit;
        if a.buckets == 0 || a.sample_buckets == 0 || a.sample_buckets > a.buckets {
            return bad("audit: 1 <= sample_buckets <= buckets".into());
        }
        if !MAX_REPAIRS.contains(&a.max_repairs) {
            return bad(format!(
                "audit.max_repairs must be between {} and {} (findings repaired per pass, in one transaction)",
                MAX_REPAIRS.start(),
                MAX_REPAIRS.end()
            ));
        }
        let p = &self.projector;
        if p.batch_max == 0 || p.max_attempts == 0 || p.outbox_batch < 1 || p.dlq_topic.is_empty() {
            return bad("projector: batch_max, max_attempts, outbox_batch >= 1 and a dlq_topic are required".into());
        }
        let most = hermet_projector::consumer::MAX_BATCH_MAX;
        if p.batch_max > most || p.outbox_batch > most as i64 {
            return bad(format!(
                "projector.batch_max and projector.outbox_batch must be at most {most} (a batch is held in memory)"
            ));
        }
        if p.max_read_waiters > MAX_READ_WAITERS {
            return bad(format!(
                "projector.max_read_waiters must be at most {MAX_READ_WAITERS} (0: reads never wait)"
            ));
        }
        let most_visibility = hermet_projector::visibility::MAX_VISIBILITY_WAIT.as_millis();
        if p.visibility_wait_ms < 100 || u128::from(p.visibility_wait_ms) > most_visibility {
            return bad(format!(
                "projector.visibility_wait_ms must be at least 100 (a shorter bound dead-letters transactions that are only a moment from visible) and at most {most_visibility} (the consumer does not poll Kafka while it waits)"
            ));
        }
        let max_wait_ms = hermet_core::validate::MAX_WAIT.as_millis();
        let waits = [
            ("projector.batch_wait_ms", p.batch_wait_ms),
            ("projector.outbox_idle_ms", p.outbox_idle_ms),
            ("projector.read_wait_ms", p.read_wait_ms),
            ("projector.visibility_wait_ms", p.visibility_wait_ms),
            ("cdc.heartbeat_ms", c.heartbeat_ms),
            ("cdc.watermark_ms", c.watermark_ms),
            ("audit.recheck_ms", a.recheck_ms),
        ];
        if let Some((name, _)) = waits.iter().find(|(_, ms)| u128::from(*ms) > max_wait_ms) {
            return bad(format!("{name} must be at most {max_wait_ms} (one hour)"));
        }
        self.rate_limits.validate()?;
        if let Some(jwks) = &self.auth.jwks {
            jwks.validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if self.auth.max_token_ttl_secs == 0 {
            return bad("auth.max_token_ttl_secs must be at least 1".into());
        }
        if !SHUTDOWN_DEADLINE_SECS.contains(&self.shutdown.deadline_secs) {
            return bad(format!(
                "shutdown.deadline_secs must be between {} and {}",
                SHUTDOWN_DEADLINE_SECS.start(),
                SHUTDOWN_DEADLINE_SECS.end()
            ));
        }
        Ok(())
    }

    /// What serving needs on top of [`Config::validate`].
    pub fn validate_for_serving(&self) -> Result<(), ConfigError> {
        if self.auth.jwt_secret.len() < 32 {
            return Err(ConfigError::Invalid(
                "auth.jwt_secret must be set to at least 32 bytes (HERMET_JWT_SECRET)".into(),
            ));
        }
        if let Some(dir) = &self.http.web_dir {
            if !dir.join("index.html").is_file() {
                return Err(ConfigError::Invalid(format!(
                    "http.web_dir {} has no index.html (leave it unset to serve the built-in client)",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    pub fn relay_config(&self) -> hermet_cdc::relay::RelayConfig {
        let c = &self.cdc;
        hermet_cdc::relay::RelayConfig {
            database_url: self.database.url.clone(),
            brokers: self.kafka.brokers.clone(),
            slot: c.slot.clone(),
            publication: c.publication.clone(),
            tables: c.tables.clone(),
            topic_prefix: c.topic_prefix.clone(),
            topic_template: c.topic_template.clone(),
            partitions: c.partitions,
            replication_factor: c.replication_factor,
            heartbeat: std::time::Duration::from_millis(c.heartbeat_ms),
            transaction_topic: c.transaction_topic,
            max_in_flight: c.max_in_flight,
            snapshot_batch: c.snapshot_batch,
            watermark_interval: std::time::Duration::from_millis(c.watermark_ms),
            linger: std::time::Duration::from_millis(c.linger_ms),
        }
    }

    /// The topics of the captured tables, as the relay names them.
    pub fn data_topics(&self) -> Result<Vec<String>, ConfigError> {
        self.topics_of(|_| true)
    }

    /// The topics a projector of `models` consumes: those of the captured tables it reads.
    pub fn group_topics(
        &self,
        models: hermet_core::projection::ReadModels,
    ) -> Result<Vec<String>, ConfigError> {
        self.topics_of(|table| models.reads_table(table))
    }

    /// Topics of the captured tables whose name (without schema) passes `keep`.
    fn topics_of(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<String>, ConfigError> {
        let router = self
            .relay_config()
            .router()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(self
            .cdc
            .tables
            .iter()
            .map(|t| t.split_once('.').unwrap_or(("public", t)))
            .filter(|(_, name)| keep(name))
            .map(|(schema, name)| router.topic(schema, name))
            .collect())
    }

    /// What a read with `X-Hermet-Min-Lsn` waits on for the view `group` maintains.
    pub fn coverage(
        &self,
        group: &str,
        models: hermet_core::projection::ReadModels,
    ) -> Result<hermet_store::sync::Coverage, ConfigError> {
        Ok(hermet_store::sync::Coverage::new(
            format!("{}{group}", self.projector.group_prefix),
            self.group_topics(models)?,
            self.cdc.partitions,
        ))
    }

    pub fn group_config(
        &self,
        group: &str,
        models: hermet_core::projection::ReadModels,
        cache: Arc<dyn ListCache>,
    ) -> Result<hermet_projector::consumer::GroupConfig, ConfigError> {
        let p = &self.projector;
        Ok(hermet_projector::consumer::GroupConfig {
            brokers: self.kafka.brokers.clone(),
            group: format!("{}{group}", p.group_prefix),
            topics: self.group_topics(models)?,
            read_models: models,
            batch_max: p.batch_max,
            batch_wait: std::time::Duration::from_millis(p.batch_wait_ms),
            max_attempts: p.max_attempts,
            dlq_topic: p.dlq_topic.clone(),
            projection: self.store_config().projection,
            cache,
            visibility_wait: std::time::Duration::from_millis(p.visibility_wait_ms),
        })
    }

    /// The conversation-list cache: Redis when `redis.cache`, else none. Connects lazily, so a
    /// Redis that is down is not a start-up error (reads go to PostgreSQL until it is back).
    pub fn list_cache(&self) -> Result<Arc<dyn ListCache>, ConfigError> {
        let r = &self.redis;
        if !r.cache {
            return Ok(hermet_core::cache::no_cache());
        }
        let cache = hermet_redis::RedisListCache::new(&hermet_redis::RedisCacheConfig {
            url: r.url.clone(),
            prefix: r.key_prefix.clone(),
            ttl: std::time::Duration::from_secs(r.cache_ttl_secs),
            timeout: std::time::Duration::from_millis(r.timeout_ms),
            retry_after: std::time::Duration::from_millis(r.retry_after_ms),
        })
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(Arc::new(cache))
    }

    pub fn outbox_config(
        &self,
        cache: Arc<dyn ListCache>,
    ) -> hermet_projector::outbox::OutboxConfig {
        let p = &self.projector;
        hermet_projector::outbox::OutboxConfig {
            batch: p.outbox_batch,
            idle_wait: std::time::Duration::from_millis(p.outbox_idle_ms),
            max_attempts: p.max_attempts,
            projection: self.store_config().projection,
            cache,
        }
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            sync_mode: match self.sync.mode {
                Mode::DualWrite => SyncMode::DualWrite,
                Mode::Async => SyncMode::Async,
                Mode::Cdc => SyncMode::Cdc,
            },
            projection: ProjectionConfig {
                preview_chars: self.read_side.preview_chars,
            },
            limits: self.limits,
            fanout: self.fanout,
        }
    }
}

#[cfg(test)]
mod tests;
