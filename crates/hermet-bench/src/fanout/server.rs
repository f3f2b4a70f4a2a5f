//! `bench fanout`: the child `hermet serve` processes it measures, and a small client of their
//! HTTP API (tokens are signed here with the secret the servers are given, as an identity
//! provider sharing the secret would).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hermet_api::TokenKeys;
use hermet_store::SyncMode;
use serde::Deserialize;
use tokio::process::Command;

use super::Threshold;
use crate::cdc::{io_err, tail, RelayProc};
use crate::{BenchEnv, BenchError};

/// Longest wait for a server to answer `/healthz`.
const START: Duration = Duration::from_secs(120);

/// Everything the servers of one mode share.
pub(crate) struct ServerSpec<'a> {
    pub(crate) bin: &'a Path,
    pub(crate) env: &'a BenchEnv,
    pub(crate) url: &'a str,
    pub(crate) mode: SyncMode,
    pub(crate) tag: &'a str,
    pub(crate) shards: u32,
    pub(crate) max_members: usize,
    pub(crate) threshold: Threshold,
    pub(crate) partitions: i32,
    pub(crate) secret: &'a str,
}

impl ServerSpec<'_> {
    /// The Redis key prefix of the servers' list cache.
    pub(crate) fn cache_prefix(&self) -> String {
        format!("hermet_bench_{}", self.tag)
    }

    pub(crate) fn dlq_topic(&self) -> String {
        format!("hermet_bench_{}_dlq", self.tag)
    }
}

/// A fresh JWT secret for the servers of one run (the benchmark signs their tokens with it).
pub(crate) fn random_secret() -> String {
    format!(
        "{:016x}{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// A running `hermet serve`.
pub(crate) struct Server {
    proc: RelayProc,
    pub(crate) base: String,
    what: String,
}

fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("find a free port"))?;
    Ok(l.local_addr().map_err(io_err("find a free port"))?.port())
}

impl Server {
    /// Starts `hermet serve --role <roles>` and waits until it answers `/healthz`.
    pub(crate) async fn start(
        spec: &ServerSpec<'_>,
        roles: &str,
        cache: bool,
    ) -> Result<Server, BenchError> {
        let port = free_port()?;
        let mut cmd = Command::new(spec.bin);
        cmd.args(["serve", "--role", roles]);
        // Only what this benchmark sets: nothing of the caller's `HERMET_*` configuration.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HERMET_") {
                cmd.env_remove(k);
            }
        }
        let tag = spec.tag;
        cmd.env("HERMET_DATABASE_URL", spec.url)
            .env("HERMET_SHARDS", spec.shards.to_string())
            .env("HERMET_SYNC_MODE", spec.mode.as_str())
            .env("HERMET_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("HERMET_JWT_SECRET", spec.secret)
            // The load comes from one address at rates far past the production limits.
            .env("HERMET_RATE_LIMITS__ENABLED", "false")
            .env("HERMET_AUTH__OPEN_SIGNUP", "true")
            .env("HERMET_KAFKA_BROKERS", &spec.env.kafka_brokers)
            .env("HERMET_REDIS_URL", &spec.env.redis_url)
            .env("HERMET_REDIS__CACHE", cache.to_string())
            .env("HERMET_REDIS__KEY_PREFIX", spec.cache_prefix())
            .env(
                "HERMET_LIMITS__MAX_GROUP_MEMBERS",
                spec.max_members.to_string(),
            )
            // The background audit would read (and repair) the views while they are measured.
            .env("HERMET_AUDIT__INTERVAL_SECS", "0")
            .env("HERMET_CDC__SLOT", format!("hermet_bench_{tag}"))
            .env("HERMET_CDC__PUBLICATION", format!("hermet_bench_pub_{tag}"))
            .env(
                "HERMET_CDC__TOPIC_TEMPLATE",
                crate::cdc::topic_template(tag, 1),
            )
            .env("HERMET_CDC__PARTITIONS", spec.partitions.to_string())
            .env("HERMET_PROJECTOR__GROUP_PREFIX", format!("hb_{tag}_"))
            .env("HERMET_PROJECTOR__DLQ_TOPIC", spec.dlq_topic())
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Threshold::Members(n) = spec.threshold {
            cmd.env("HERMET_FANOUT__READ_THRESHOLD", n.to_string());
        }
        let what = format!("hermet serve --role {roles} ({})", spec.mode.as_str());
        let mut server = Server {
            proc: RelayProc::spawn_command(cmd, &what)?,
            base: format!("http://127.0.0.1:{port}"),
            what,
        };
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            server.check()?;
            let ok = http
                .get(format!("{}/healthz", server.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(server);
            }
            if started.elapsed() > START {
                return Err(BenchError::Scenario(format!(
                    "{} did not answer /healthz within {} s; its last lines:\n{}",
                    server.what,
                    START.as_secs(),
                    tail(&server.proc.log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An error if the process has exited.
    pub(crate) fn check(&mut self) -> Result<(), BenchError> {
        match self.proc.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::Scenario(format!(
                "{} exited ({status}); its last lines:\n{}",
                self.what,
                tail(&self.proc.log)
            ))),
            Err(e) => Err(BenchError::Io {
                what: format!("wait for {}", self.what),
                source: e,
            }),
        }
    }

    /// SIGTERM, then wait (SIGKILL after 30 s).
    pub(crate) async fn stop(self) -> Result<(), BenchError> {
        self.proc.stop().await.map(|_| ())
    }
}

/// A first page of `GET /v1/conversations`, as far as the benchmark reads it.
#[derive(Debug, Deserialize)]
pub(crate) struct Page {
    pub(crate) conversations: Vec<Conversation>,
    pub(crate) next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Conversation {
    pub(crate) channel_id: i64,
    pub(crate) last_message: Option<LastMessage>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LastMessage {
    pub(crate) seq: i64,
}

impl Page {
    /// The seq of `channel`'s last message on this page, 0 if it is not there or has none.
    pub(crate) fn seq_of(&self, channel: i64) -> i64 {
        self.conversations
            .iter()
            .find(|c| c.channel_id == channel)
            .and_then(|c| c.last_message.as_ref())
            .map_or(0, |m| m.seq)
    }
}

/// A client of one server's API.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    keys: TokenKeys,
}

fn http_err(what: &str, e: reqwest::Error) -> BenchError {
    BenchError::Scenario(format!("{what}: {e}"))
}

impl Api {
    pub(crate) fn new(base: &str, secret: &str) -> Result<Api, BenchError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| http_err("HTTP client", e))?;
        Ok(Api {
            http,
            base: base.to_owned(),
            keys: TokenKeys::new(secret.as_bytes(), 7 * 24 * 3600),
        })
    }

    pub(crate) fn token(&self, user: i64) -> Result<String, BenchError> {
        self.keys
            .issue(user)
            .map_err(|e| BenchError::Internal(format!("sign a token: {e:?}")))
    }

    /// `POST path` as `user` with a JSON body; the JSON answer (an error unless 2xx).
    pub(crate) async fn post(
        &self,
        token: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, BenchError> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(|e| http_err(&format!("POST {path}"), e))?;
        let status = r.status();
        let text = r
            .text()
            .await
            .map_err(|e| http_err(&format!("POST {path}"), e))?;
        if !status.is_success() {
            return Err(BenchError::Scenario(format!(
                "POST {path}: {status}: {text}"
            )));
        }
        serde_json::from_str(&text).map_err(BenchError::from)
    }

    /// `GET /v1/conversations` (`limit`, `cursor`) as the token's user, without consistency or
    /// cache headers.
    pub(crate) async fn conversations(
        &self,
        token: &str,
        limit: i64,
        cursor: Option<&str>,
    ) -> Result<Page, BenchError> {
        let mut req = self
            .http
            .get(format!("{}/v1/conversations", self.base))
            .bearer_auth(token)
            .query(&[("limit", limit)]);
        if let Some(c) = cursor {
            req = req.query(&[("cursor", c)]);
        }
        let r = req
            .send()
            .await
            .map_err(|e| http_err("GET /v1/conversations", e))?;
        let status = r.status();
        let bytes = r
            .bytes()
            .await
            .map_err(|e| http_err("GET /v1/conversations", e))?;
        if !status.is_success() {
            return Err(BenchError::Scenario(format!(
                "GET /v1/conversations: {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        serde_json::from_slice(&bytes).map_err(BenchError::from)
    }
}
