//! `hermet serve` and `hermet migrate`.

use anyhow::Context;
use hermet_api::{ApiConfig, AppState};
use hermet_store::{connect_pool, migrate, Store};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use hermet_core::cache::ListCache;
use hermet_core::projection::{ProjectionConfig, ReadModels};
use hermet_core::push::PushSink;
use hermet_projector::consumer::{self, GROUPS};
use hermet_projector::{outbox, push};
use std::sync::Arc;
use tokio::task::JoinHandle;

use hermet_cdc::relay::{self, RelayConfig, RelayError};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{redact, Config, Mode};

async fn connect_and_migrate(cfg: &Config) -> anyhow::Result<Store> {
    if hermet_store::create_database_if_missing(&cfg.database.url)
        .await
        .with_context(|| format!("preparing the database at {}", redact(&cfg.database.url)))?
    {
        tracing::info!("database created");
    }
    let pool = connect_pool(&cfg.database.url, cfg.database.pool_size)?;
    let mut conn = pool
        .get()
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(&cfg.database.url)))?;
    let applied = migrate::migrate(&mut conn, cfg.read_side.shards)
        .await
        .context("migrating")?;
    tracing::info!(applied = ?applied, shards = cfg.read_side.shards, "database ready");
    drop(conn);
    let reads = connect_pool(&cfg.database.url, cfg.database.read_pool_size)?;
    Ok(Store::new(pool, cfg.store_config())
        .with_read_pool(reads)
        .with_cache(cfg.list_cache()?))
}

pub async fn migrate_only(cfg: &Config) -> anyhow::Result<()> {
    connect_and_migrate(cfg).await.map(|_| ())
}

/// What a `serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API.
    Api,
    /// The CDC relay (WAL → Kafka).
    Cdc,
    /// The projectors of the configured mode: the outbox worker (`async`) or the Kafka consumer
    /// groups (`cdc`).
    Projector,
    /// The API, the projectors the mode needs, and the relay in `cdc` mode (or when
    /// `cdc.enabled`).
    All,
}

type Task = JoinHandle<anyhow::Result<()>>;

pub async fn serve(cfg: Config, roles: &[Role]) -> anyhow::Result<()> {
    let all = roles.is_empty() || roles.contains(&Role::All);
    let api = all || roles.contains(&Role::Api);
    let cdc =
        roles.contains(&Role::Cdc) || (all && (cfg.cdc.enabled || cfg.sync.mode == Mode::Cdc));
    let projector = roles.contains(&Role::Projector) || (all && cfg.sync.mode != Mode::DualWrite);
    if api {
        cfg.validate_for_serving()?;
    }
    let metrics = crate::telemetry::install()?;
    let store = connect_and_migrate(&cfg).await?;
    tokio::spawn(crate::telemetry::sample_pool(
        store.pool().clone(),
        "commands",
    ));
    tokio::spawn(crate::telemetry::sample_pool(
        store.read_pool().clone(),
        "reads",
    ));
    // Slots nobody streams from keep WAL without bound; the relay's own gauges stop with it.
    tokio::spawn(crate::ops::sample_slots(
        store.read_pool().clone(),
        cfg.cdc.slot.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut tasks: Vec<(&'static str, Task)> = Vec::new();
    if cdc {
        tasks.push((
            "cdc relay",
            tokio::spawn(run_relay(cfg.relay_config(), stop_rx.clone())),
        ));
    }
    if projector {
        match cfg.sync.mode {
            Mode::DualWrite => tracing::info!("dual_write mode: no projector to run"),
            Mode::Async => {
                let (ocfg, pool) = (
                    cfg.outbox_config(store.cache().clone()),
                    store.pool().clone(),
                );
                tasks.push((
                    "outbox worker",
                    supervise("outbox worker", stop_rx.clone(), move |stop| {
                        let (ocfg, pool) = (ocfg.clone(), pool.clone());
                        async move { Ok(outbox::run_outbox(ocfg, pool, stop).await?) }
                    }),
                ));
            }
            Mode::Cdc => {
                for (group, views) in GROUPS {
                    let (gcfg, pool) = (
                        cfg.group_config(group, views, store.cache().clone())?,
                        store.pool().clone(),
                    );
                    tasks.push((
                        group,
                        supervise(group, stop_rx.clone(), move |stop| {
                            let (gcfg, pool) = (gcfg.clone(), pool.clone());
                            async move { Ok(consumer::run_group(gcfg, pool, stop).await?) }
                        }),
                    ));
                }
            }
        }
    }
    // Push: this process's own notifier feeds the hub of its WebSocket connections (see
    // `hermet_projector::push` for why each API process reads every partition itself).
    let hub = hermet_api::Hub::default();
    if api && (cfg.cdc.enabled || cfg.sync.mode == Mode::Cdc) {
        let pcfg = push::PushConfig::new(cfg.kafka.brokers.clone(), cfg.data_topics()?);
        let (pool, sink) = (store.pool().clone(), Arc::new(hub.clone()));
        tasks.push((
            "push notifier",
            supervise("push notifier", stop_rx.clone(), move |stop| {
                let (pcfg, pool) = (pcfg.clone(), pool.clone());
                let sink: Arc<dyn PushSink> = sink.clone();
                async move { Ok(push::run_push(pcfg, pool, sink, stop).await?) }
            }),
        ));
    }
    if api && cfg.audit.interval_secs > 0 {
        let (acfg, pool, projection, cache) = (
            cfg.audit.clone(),
            store.pool().clone(),
            cfg.store_config().projection,
            store.cache().clone(),
        );
        let eventual = cfg.sync.mode != Mode::DualWrite;
        tasks.push((
            "background audit",
            supervise("background audit", stop_rx.clone(), move |stop| {
                let (acfg, pool, cache) = (acfg.clone(), pool.clone(), cache.clone());
                async move { background_audit(acfg, pool, projection, cache, eventual, stop).await }
            }),
        ));
    }
    // The first background task to fail takes the process down (a supervisor restarts it).
    let failed = async move {
        if tasks.is_empty() {
            return std::future::pending::<anyhow::Result<()>>().await;
        }
        let names: Vec<&str> = tasks.iter().map(|(n, _)| *n).collect();
        let (r, i, _) = futures::future::select_all(tasks.into_iter().map(|(_, t)| t)).await;
        let name = names[i];
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context(format!("{name} stopped"))),
            Err(e) => Err(anyhow::Error::from(e).context(format!("{name} panicked"))),
        }
    };
    if !api {
        if !cdc && !projector {
            anyhow::bail!("no role to run");
        }
        // Relay- and projector-only processes answer `/metrics` (and `/healthz`) on their own
        // address when one is configured: several of them may share a host.
        if let Some(addr) = cfg.http.metrics_addr {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding http.metrics_addr {addr}"))?;
            let metrics_app = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || std::future::ready(metrics.render())),
                )
                .route("/healthz", axum::routing::get(|| std::future::ready("ok")));
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, metrics_app).await {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            });
        }
        tokio::select! {
            _ = shutdown_signal() => {
                let _ = stop_tx.send(true);
                // Give the tasks their shutdown path (the relay confirms what Kafka acknowledged).
                tokio::time::sleep(Duration::from_secs(2)).await;
                return Ok(());
            }
            r = failed => { let _ = stop_tx.send(true); return r; }
        }
    }
    let api_cfg = ApiConfig {
        jwt_secret: cfg.auth.jwt_secret.clone(),
        token_ttl_secs: cfg.auth.token_ttl_secs,
        max_body_bytes: cfg.http.max_body_bytes,
        read_wait: Duration::from_millis(cfg.projector.read_wait_ms),
        max_read_waiters: cfg.projector.max_read_waiters,
        coverage: view_coverage(&cfg)?,
    };
    let app = hermet_api::router(AppState::with_hub(store, api_cfg, Some(metrics), hub));
    let listener = TcpListener::bind(cfg.http.addr)
        .await
        .with_context(|| format!("binding {}", cfg.http.addr))?;
    tracing::info!(addr = %cfg.http.addr, mode = ?cfg.sync.mode, relay = cdc, projectors = projector, "hermet is serving");
    let stop_api = stop_tx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stop_api.send(true);
    });
    tokio::select! {
        r = server => r.context("serving HTTP")?,
        r = failed => {
            let _ = stop_tx.send(true);
            r?;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tracing::info!("hermet stopped");
    Ok(())
}

/// Runs a background loop, restarting it with backoff when it fails; returns when `stop` is set.
fn supervise<F, Fut>(name: &'static str, stop: watch::Receiver<bool>, run: F) -> Task
where
    F: Fn(Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let mut s = stop.clone();
            let stopped: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                let _ = s.wait_for(|v| *v).await;
            });
            let result = run(stopped).await;
            if *stop.borrow() {
                return Ok(());
            }
            if let Err(e) = result {
                tracing::warn!(task = name, error = %e, retry_in_ms = backoff.as_millis() as u64, "background task failed");
            }
            let mut s = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = s.wait_for(|v| *v) => return Ok(()),
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    })
}

/// Runs the relay, restarting it with backoff after transient failures (Kafka or PostgreSQL
/// away). Progress is safe across restarts: only acknowledged transactions were confirmed.
/// A lost slot or a bad configuration stops it for good.
async fn run_relay(cfg: RelayConfig, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let mut s = stop.clone();
        let result = relay::run(cfg.clone(), async move {
            let _ = s.wait_for(|v| *v).await;
        })
        .await;
        if *stop.borrow() {
            return Ok(());
        }
        match result {
            Ok(()) => return Ok(()),
            Err(e @ (RelayError::SlotLost { .. } | RelayError::Config(_))) => return Err(e.into()),
            Err(e) => {
                metrics::counter!("hermet_cdc_errors_total").increment(1);
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cdc relay failed");
                let mut s = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = s.wait_for(|v| *v) => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// Audits a rotating sample of buckets on an interval and exports the consistency rate. In the
/// eventually consistent modes, buckets that differ are audited again after `recheck_ms`, and
/// only what still differs counts: rows on their way are not inconsistencies. Unless
/// `audit.repair` is off, what still differs is repaired, at most `audit.max_repairs` findings
/// per pass (the rest waits for the next pass over those buckets).
async fn background_audit(
    cfg: crate::config::AuditConfig,
    pool: deadpool_postgres::Pool,
    projection: ProjectionConfig,
    cache: Arc<dyn ListCache>,
    eventual: bool,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
) -> anyhow::Result<()> {
    use hermet_store::audit;
    let preview = projection.preview_chars as i32;
    tokio::pin!(stop);
    let mut next = 0u32;
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(cfg.interval_secs)) => {}
        }
        let sample: Vec<i32> = (0..cfg.sample_buckets)
            .map(|i| ((next + i) % cfg.buckets) as i32)
            .collect();
        next = (next + cfg.sample_buckets) % cfg.buckets;
        let mut conn = pool.get().await?;
        let mut report = audit::audit(&conn, preview, cfg.buckets, Some(&sample)).await?;
        if eventual && !report.findings.is_empty() {
            tokio::time::sleep(Duration::from_millis(cfg.recheck_ms)).await;
            report = audit::audit(&conn, preview, cfg.buckets, Some(&sample)).await?;
        }
        let rate = report.consistency_rate();
        metrics::gauge!("hermet_consistency_rate").set(rate);
        metrics::counter!("hermet_audit_findings_total").increment(report.findings.len() as u64);
        let mut repaired = false;
        if report.findings.is_empty() {
            tracing::debug!(buckets = ?sample, rows = report.expected_rows, "audit clean");
        } else if !cfg.repair {
            tracing::warn!(buckets = ?sample, findings = report.findings.len(), rate,
                "audit found read-side rows that differ from the write side (audit.repair is off)");
        } else {
            let chosen = &report.findings[..report.findings.len().min(cfg.max_repairs)];
            match audit::repair_committed(&mut conn, chosen, &projection, &*cache).await {
                Ok(rows) => {
                    metrics::counter!("hermet_audit_repaired_total").increment(chosen.len() as u64);
                    repaired = true;
                    tracing::warn!(buckets = ?sample, findings = report.findings.len(), rate,
                        repaired = chosen.len(), rows,
                        "audit found read-side rows that differ from the write side; repaired them");
                }
                Err(e) => {
                    // Logged and counted; the next pass over these buckets tries again.
                    metrics::counter!("hermet_audit_repair_failures_total").increment(1);
                    tracing::error!(buckets = ?sample, findings = report.findings.len(), rate,
                        error = %e, "audit found read-side rows that differ from the write side; repairing them failed");
                }
            }
        }
        // For `hermet admin status`; a failure to record is not a reason to stop auditing.
        if let Err(e) = audit::record(&conn, "serve", &report, repaired).await {
            tracing::warn!(error = %e, "could not record the audit result");
        }
    }
}

/// What reads with `X-Hermet-Min-Lsn` wait on, per view.
fn view_coverage(cfg: &Config) -> anyhow::Result<hermet_api::ViewCoverage> {
    let of = |models: ReadModels| -> anyhow::Result<hermet_store::sync::Coverage> {
        let (group, _) = GROUPS
            .iter()
            .find(|(_, v)| *v == models)
            .context("no projector group maintains this view")?;
        Ok(cfg.coverage(group, models)?)
    };
    Ok(hermet_api::ViewCoverage {
        conversations: of(ReadModels::CONVERSATIONS)?,
        contacts: of(ReadModels::CONTACTS)?,
    })
}
