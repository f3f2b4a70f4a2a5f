//! Test helpers: a fresh PostgreSQL database per test, the app on a random port, and a small
//! client that reads like the API.
//!
//! The server comes from `HERMET_DATABASE_URL` (a superuser URL), which `make test` sets after
//! starting the project's private PostgreSQL. Each [`TestDb`] is a database with a random name,
//! dropped when the value is dropped.

pub mod browser;
pub mod cdc;
pub mod idp;
pub mod pipeline;
pub mod seed;
pub mod signal;
pub mod workload;

use std::net::SocketAddr;

use hermet_api::{ApiConfig, AppState};
use hermet_core::projection::ProjectionConfig;
use hermet_core::rows::FanoutConfig;
use hermet_core::validate::Limits;
use hermet_store::oracle::{self, Mismatch};
use hermet_store::{connect_pool, migrate, Store, StoreConfig, SyncMode};
use rand::Rng;
use serde_json::Value;

/// Shards used by tests: few, so databases are quick to create, but more than one.
pub const TEST_SHARDS: u32 = 8;

/// The fan-out setting of the tests' stores: a group of three or more members is in read
/// diffusion and goes back to write diffusion at two (no hysteresis), so the small random
/// workloads cross the threshold in both directions all the time.
pub const SMALL_FANOUT: FanoutConfig = FanoutConfig {
    read_threshold: 2,
    write_threshold: Some(2),
};

/// The tests' store configuration: `mode`, previews of `preview_chars`, the default limits and
/// [`SMALL_FANOUT`].
pub fn store_config(mode: SyncMode, preview_chars: usize) -> StoreConfig {
    StoreConfig {
        sync_mode: mode,
        projection: ProjectionConfig { preview_chars },
        limits: Limits::default(),
        fanout: SMALL_FANOUT,
    }
}

pub fn admin_url() -> String {
    std::env::var("HERMET_DATABASE_URL").unwrap_or_else(|_| {
        panic!("HERMET_DATABASE_URL is not set: run the tests with `make test`, which starts PostgreSQL")
    })
}

/// A database of its own for one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin: tokio_postgres::Config =
            admin_url().parse().expect("HERMET_DATABASE_URL parses");
        let name = format!("hermet_test_{:016x}", rand::thread_rng().gen::<u64>());
        let mut cfg = admin.clone();
        cfg.dbname(&name);
        let url = config_to_url(&cfg);
        let created = hermet_store::create_database_if_missing(&url)
            .await
            .expect("create database");
        assert!(created, "random database name already existed");
        let pool = connect_pool(&url, 2).expect("pool");
        let mut conn = pool.get().await.expect("connect to test database");
        migrate::migrate(&mut conn, TEST_SHARDS)
            .await
            .expect("migrate");
        TestDb { name, url }
    }

    /// A `dual_write` store whose groups of three or more are in read diffusion
    /// ([`SMALL_FANOUT`]), so every scenario runs through both shapes of the read side
    /// and the flips between them.
    pub fn store(&self, preview_chars: usize) -> Store {
        self.store_with(store_config(SyncMode::DualWrite, preview_chars))
    }

    pub fn store_with(&self, cfg: StoreConfig) -> Store {
        Store::new(connect_pool(&self.url, 16).expect("pool"), cfg)
            .with_listen_url(&self.url)
            .expect("listen url")
    }

    /// Differences between the read side and the rebuild oracle.
    pub async fn diff(&self, store: &Store) -> Vec<Mismatch> {
        let conn = store.pool().get().await.expect("connection");
        let preview = store.config().projection.preview_chars as i32;
        oracle::diff(&conn, preview).await.expect("oracle diff")
    }

    /// Asserts the read side equals a rebuild from the write side.
    pub async fn assert_converged(&self, store: &Store) {
        let d = self.diff(store).await;
        assert!(
            d.is_empty(),
            "read side differs from the rebuild oracle:\n{}",
            render(&d)
        );
    }
}

pub fn render(d: &[Mismatch]) -> String {
    d.iter()
        .map(|m| format!("  {} {}: {}", m.table, m.kind, m.row))
        .collect::<Vec<_>>()
        .join("\n")
}

fn config_to_url(cfg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    let auth = match cfg.get_password() {
        Some(p) => format!("{user}:{}", String::from_utf8_lossy(p)),
        None => user.to_owned(),
    };
    format!(
        "postgres://{auth}@{host}:{port}/{}",
        cfg.get_dbname().unwrap_or("postgres")
    )
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropping needs async I/O; a thread with its own runtime works from any context.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async move {
                    if let Ok((client, conn)) =
                        tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await
                    {
                        let h = tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                        drop(client);
                        let _ = h.await;
                    }
                });
            }
        })
        .join();
    }
}

pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret!";

/// The API settings of [`TestApp`]: the test secret, and open sign-up (the tests create their
/// users with `POST /v1/users`).
pub fn api_config() -> ApiConfig {
    ApiConfig {
        jwt_secret: TEST_SECRET.into(),
        open_signup: true,
        ..ApiConfig::default()
    }
}

/// The app, serving on a random local port against its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub db: TestDb,
    pub store: Store,
    /// The hub of the app's `GET /v1/ws` connections: give it to a push notifier.
    pub hub: hermet_api::Hub,
    /// Its HTTP API ([`ApiClient`]'s methods are called on the app directly).
    pub api: ApiClient,
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

/// A client of one server's HTTP API (`TestApp`'s, or a `hermet serve` process's): requests,
/// and the calls the tests make most, each asserting the documented success status.
#[derive(Clone)]
pub struct ApiClient {
    /// `http://host:port`.
    pub base: String,
    http: reqwest::Client,
}

/// An HTTP response: status, headers and the JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    /// The error code of an error response.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A user created through the API.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub token: String,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with_preview(50).await
    }

    pub async fn spawn_with_preview(preview_chars: usize) -> TestApp {
        let db = TestDb::new().await;
        let store = db.store(preview_chars);
        Self::spawn_with(db, store).await
    }

    /// The app over `store` (e.g. one with a list cache) on `db`.
    pub async fn spawn_with(db: TestDb, store: Store) -> TestApp {
        // No rate limits (the `ApiConfig` default): the tests create users and send fast.
        Self::spawn_configured(db, store, api_config()).await
    }

    /// The app over `store` with `rate_limits`.
    pub async fn spawn_limited(
        db: TestDb,
        store: Store,
        rate_limits: hermet_api::RateLimits,
    ) -> TestApp {
        let cfg = ApiConfig {
            rate_limits,
            ..api_config()
        };
        Self::spawn_configured(db, store, cfg).await
    }

    /// The app over `store` on `db` with API settings of its own.
    pub async fn spawn_configured(db: TestDb, store: Store, cfg: ApiConfig) -> TestApp {
        let hub = hermet_api::Hub::default();
        let app = hermet_api::router(AppState::with_hub(store.clone(), cfg, None, hub.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum_serve(listener, app).await;
        });
        TestApp {
            addr,
            db,
            store,
            hub,
            api: ApiClient::new(format!("http://{addr}")),
        }
    }

    pub async fn assert_converged(&self) {
        self.db.assert_converged(&self.store).await;
    }
}

impl ApiClient {
    pub fn new(base: String) -> ApiClient {
        ApiClient {
            base,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request; `body` of `None` sends no body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::finish(req).await
    }

    /// Sends a raw body with the given content type.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
        ctype: &str,
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("content-type", ctype);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::finish(req.body(body.to_owned())).await
    }

    /// Sends a request built elsewhere (another client, extra headers) and reads the answer.
    pub async fn finish(req: reqwest::RequestBuilder) -> Resp {
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "response body is not JSON: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, user: &User) -> Resp {
        self.call("GET", path, Some(&user.token), None).await
    }

    pub async fn post(&self, path: &str, user: &User, body: Value) -> Resp {
        self.call("POST", path, Some(&user.token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, user: &User, body: Value) -> Resp {
        self.call("PATCH", path, Some(&user.token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, user: &User) -> Resp {
        self.call("DELETE", path, Some(&user.token), None).await
    }

    pub async fn new_user(&self, nickname: &str) -> User {
        let r = self
            .call(
                "POST",
                "/v1/users",
                None,
                Some(serde_json::json!({"nickname": nickname})),
            )
            .await;
        assert_eq!(r.status, 201, "create user: {:?}", r.body);
        User {
            id: r.body["id"].as_i64().expect("id"),
            token: r.body["token"].as_str().expect("token").to_owned(),
        }
    }

    /// Makes two users friends; returns their single channel.
    pub async fn befriend(&self, a: &User, b: &User) -> i64 {
        let r = self
            .post("/v1/friends", a, serde_json::json!({"friend_id": b.id}))
            .await;
        assert_eq!(r.status, 201, "add friend: {:?}", r.body);
        r.body["channel_id"].as_i64().expect("channel_id")
    }

    pub async fn send(&self, from: &User, channel: i64, content: &str) -> Resp {
        let r = self
            .post(
                &format!("/v1/channels/{channel}/messages"),
                from,
                serde_json::json!({"content": content}),
            )
            .await;
        assert_eq!(r.status, 201, "send: {:?}", r.body);
        r
    }

    /// The first page of a user's conversation list.
    pub async fn conversations(&self, user: &User) -> Vec<Value> {
        let r = self.get("/v1/conversations", user).await;
        assert_eq!(r.status, 200, "list: {:?}", r.body);
        r.body["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn conversation(&self, user: &User, channel: i64) -> Option<Value> {
        self.conversations(user)
            .await
            .into_iter()
            .find(|c| c["channel_id"] == channel)
    }

    pub async fn contacts(&self, user: &User) -> Vec<Value> {
        let r = self.get("/v1/contacts", user).await;
        assert_eq!(r.status, 200, "contacts: {:?}", r.body);
        r.body["contacts"].as_array().cloned().unwrap_or_default()
    }
}

/// Serves `app` with the peer address of each request, as `hermet serve` does (the per-address
/// rate limits key on it).
pub async fn axum_serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// What a probe of [`eventually`] answers: the value it waits for, or not yet (with what it saw,
/// if it can say).
pub trait Probe<T> {
    /// `Err(Some(..))`: not yet, and why — the last one is shown when the bound passes.
    fn settle(self) -> Result<T, Option<String>>;
}

impl<T> Probe<T> for Option<T> {
    fn settle(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: std::fmt::Display> Probe<T> for Result<T, E> {
    fn settle(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(e.to_string()))
    }
}

impl Probe<()> for bool {
    fn settle(self) -> Result<(), Option<String>> {
        self.then_some(()).ok_or(None)
    }
}

/// Polls `probe` until it answers (`Some`, `Ok` or `true`), for at most `bound`; panics naming
/// `what` and the probe's last answer after that. The one bounded wait of the tests: a fixed
/// sleep either wastes time or flakes. The probe may panic itself (a process that must stay up).
/// `what` is formatted only on failure, so it may read something then (a process's log).
pub async fn eventually<T, P>(
    what: impl std::fmt::Display,
    bound: std::time::Duration,
    probe: impl AsyncFnMut() -> P,
) -> T
where
    P: Probe<T>,
{
    match within(bound, probe).await {
        Ok(v) => v,
        Err(None) => panic!("not within {bound:?}: {what}"),
        Err(Some(last)) => panic!("not within {bound:?}: {what}\nlast: {last}"),
    }
}

/// [`eventually`] for the few callers that must not panic (clean-up from `Drop`): the last
/// answer of the probe when the bound passed.
pub async fn within<T, P>(
    bound: std::time::Duration,
    mut probe: impl AsyncFnMut() -> P,
) -> Result<T, Option<String>>
where
    P: Probe<T>,
{
    // Quick first polls for what is nearly there, then at most ten a second for long waits
    // (probes scrape `/metrics`, query Kafka or read a log).
    const FIRST: std::time::Duration = std::time::Duration::from_millis(5);
    const MAX: std::time::Duration = std::time::Duration::from_millis(100);
    let deadline = std::time::Instant::now() + bound;
    let mut pause = FIRST;
    loop {
        let last = match probe().await.settle() {
            Ok(v) => return Ok(v),
            Err(last) => last,
        };
        if std::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::{eventually, within};
    use std::time::Duration;

    #[tokio::test]
    async fn eventually_returns_what_the_probe_settles_on() {
        let mut polls = 0;
        let v = eventually("the third poll", Duration::from_secs(10), async || {
            polls += 1;
            (polls == 3).then_some(polls * 10)
        })
        .await;
        assert_eq!((v, polls), (30, 3));
    }

    #[tokio::test]
    #[should_panic(expected = "a condition that never holds\nlast: poll")]
    async fn eventually_panics_with_the_last_answer_once_the_bound_passes() {
        let mut polls = 0u32;
        eventually(
            "a condition that never holds",
            Duration::from_millis(50),
            async || -> Result<(), String> {
                polls += 1;
                Err(format!("poll {polls}"))
            },
        )
        .await;
    }

    #[tokio::test]
    async fn within_gives_the_last_answer_without_panicking() {
        let started = std::time::Instant::now();
        let r: Result<(), _> = within(Duration::from_millis(50), async || false).await;
        assert_eq!(r, Err(None));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
