//! `hermet serve` and `hermet migrate`.

use anyhow::Context;
use axum::serve::ListenerExt;
use hermet_api::{ApiConfig, AppState};
use hermet_store::{connect_pool, migrate, Store};
use std::net::SocketAddr;
use std::time::Duration;

use hermet_core::cache::ListCache;
use hermet_core::projection::{ProjectionConfig, ReadModels};
use hermet_core::push::PushSink;
use hermet_projector::consumer::{self, GROUPS};
use hermet_projector::{outbox, push};
use std::sync::Arc;

use hermet_cdc::relay::{self, RelayError};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{redact, Config, Mode};
use crate::shutdown::{Restart, Tasks};

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
        .with_cache(cfg.list_cache()?)
        .with_listen_url(&cfg.database.url)?)
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

pub async fn serve(cfg: Config, roles: &[Role]) -> anyhow::Result<()> {
    let all = roles.is_empty() || roles.contains(&Role::All);
    let api = all || roles.contains(&Role::Api);
    let cdc =
        roles.contains(&Role::Cdc) || (all && (cfg.cdc.enabled || cfg.sync.mode == Mode::Cdc));
    let projector = roles.contains(&Role::Projector) || (all && cfg.sync.mode != Mode::DualWrite);
    if api {
        cfg.validate_for_serving()?;
    }
    if !api && !cdc && !projector {
        anyhow::bail!("no role to run");
    }
    let metrics = crate::telemetry::install()?;
    let store = connect_and_migrate(&cfg).await?;
    let mut tasks = Tasks::new();
    tasks.spawn_until_cancelled(
        "commands pool sampler",
        crate::telemetry::sample_pool(store.pool().clone(), crate::telemetry::DbPool::Commands),
    );
    tasks.spawn_until_cancelled(
        "reads pool sampler",
        crate::telemetry::sample_pool(store.read_pool().clone(), crate::telemetry::DbPool::Reads),
    );
    // Slots nobody streams from keep WAL without bound; the relay's own gauges stop with it.
    tasks.spawn_until_cancelled(
        "slot sampler",
        crate::ops::sample_slots(store.read_pool().clone(), cfg.cdc.slot.clone()),
    );

    if cdc {
        let rcfg = cfg.relay_config();
        let restart = Restart {
            first_backoff: Duration::from_secs(1),
            fatal: |e| e.downcast_ref::<RelayError>().is_some_and(relay_fatal),
        };
        tasks.supervise("cdc relay", restart, move |token| {
            let rcfg = rcfg.clone();
            async move {
                let r = relay::run(rcfg, token.clone().cancelled_owned()).await;
                if let Err(e) = &r {
                    if !relay_fatal(e) && !token.is_cancelled() {
                        crate::telemetry::relay_failed();
                    }
                }
                Ok(r?)
            }
        });
    }
    if projector {
        match cfg.sync.mode {
            Mode::DualWrite => tracing::info!("dual_write mode: no projector to run"),
            Mode::Async => {
                let (ocfg, pool) = (
                    cfg.outbox_config(store.cache().clone()),
                    store.pool().clone(),
                );
                tasks.supervise("outbox worker", Restart::default(), move |token| {
                    let (ocfg, pool) = (ocfg.clone(), pool.clone());
                    async move { Ok(outbox::run_outbox(ocfg, pool, token.cancelled_owned()).await?) }
                });
            }
            Mode::Cdc => {
                for (group, views) in GROUPS {
                    let (gcfg, pool) = (
                        cfg.group_config(group, views, store.cache().clone())?,
                        store.pool().clone(),
                    );
                    tasks.supervise(group, Restart::default(), move |token| {
                        let (gcfg, pool) = (gcfg.clone(), pool.clone());
                        async move {
                            Ok(consumer::run_group(gcfg, pool, token.cancelled_owned()).await?)
                        }
                    });
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
        tasks.supervise("push notifier", Restart::default(), move |token| {
            let (pcfg, pool) = (pcfg.clone(), pool.clone());
            let sink: Arc<dyn PushSink> = sink.clone();
            async move { Ok(push::run_push(pcfg, pool, sink, token.cancelled_owned()).await?) }
        });
    }
    if api && cfg.audit.interval_secs > 0 {
        let (acfg, pool, projection, cache) = (
            cfg.audit.clone(),
            store.pool().clone(),
            cfg.store_config().projection,
            store.cache().clone(),
        );
        let eventual = cfg.sync.mode != Mode::DualWrite;
        tasks.supervise("background audit", Restart::default(), move |token| {
            let (acfg, pool, cache) = (acfg.clone(), pool.clone(), cache.clone());
            async move { background_audit(acfg, pool, projection, cache, eventual, token).await }
        });
    }

    // The HTTP server stops first, on a token of its own: requests in progress are answered
    // (their writes commit) before the relay and the projectors are asked to stop, so what
    // was acknowledged to a client is behind the relay's last confirmed position.
    let http_stop = CancellationToken::new();
    let http = if api {
        // The provider's key set is read before serving: a wrong source stops the start here.
        let identity_provider = match &cfg.auth.jwks {
            Some(jwks) => {
                let v = Arc::new(
                    hermet_api::jwks::JwksVerifier::new(jwks)
                        .await
                        .context("reading the identity provider's key set ([auth.jwks])")?,
                );
                if jwks.refresh_interval_secs > 0 {
                    let idp = v.clone();
                    tasks.spawn_until_cancelled("jwks refresh", async move {
                        idp.refresh_periodically().await
                    });
                }
                Some(v)
            }
            None => None,
        };
        let api_cfg = ApiConfig {
            jwt_secret: cfg.auth.jwt_secret.clone(),
            token_ttl_secs: cfg.auth.token_ttl_secs,
            max_token_ttl_secs: cfg.auth.max_token_ttl_secs,
            open_signup: cfg.auth.open_signup,
            max_body_bytes: cfg.http.max_body_bytes,
            read_wait: Duration::from_millis(cfg.projector.read_wait_ms),
            max_read_waiters: cfg.projector.max_read_waiters,
            coverage: view_coverage(&cfg)?,
            rate_limits: cfg.rate_limits.api(),
            identity_provider: identity_provider.clone(),
            web: match &cfg.http.web_dir {
                Some(dir) => hermet_api::web::Source::Dir(dir.clone()),
                None => hermet_api::web::Source::Embedded,
            },
            // `GET /v1/ops/status` gathers what `hermet admin status` prints, from this config.
            ops: Some(Arc::new(crate::ops::ConfigStatus::new(cfg.clone())?)),
        };
        // The state's auth listener (`LISTEN hermet_auth`) ends with it, when this server stops.
        let state = AppState::with_hub(store, api_cfg, Some(metrics), hub);
        // Keyed limiters keep an entry per user and address seen: drop the idle ones.
        tasks.spawn_until_cancelled(
            "rate limit sweeper",
            hermet_api::rate_limit::sweep(state.clone(), hermet_api::rate_limit::SWEEP_EVERY),
        );
        let app = hermet_api::router(state);
        // No Nagle delay on replies and pushed WebSocket frames: each is written whole, and a
        // small frame right after another would otherwise wait for the peer's delayed ACK.
        let listener = TcpListener::bind(cfg.http.addr)
            .await
            .with_context(|| format!("binding {}", cfg.http.addr))?
            .tap_io(|tcp| {
                if let Err(error) = tcp.set_nodelay(true) {
                    tracing::debug!(%error, "TCP_NODELAY not set on an accepted connection");
                }
            });
        tracing::info!(addr = %cfg.http.addr, mode = ?cfg.sync.mode, relay = cdc, projectors = projector, "hermet is serving");
        let stop = http_stop.clone().cancelled_owned();
        Some(tasks.spawn("http api", async move {
            // The peer address keys the per-address rate limits.
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stop)
            .await
            .context("serving HTTP")
        }))
    } else if let Some(addr) = cfg.http.metrics_addr {
        // Relay- and projector-only processes answer `/metrics` (and `/healthz`) on their own
        // address when one is configured: several of them may share a host.
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding http.metrics_addr {addr}"))?;
        let metrics_app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || std::future::ready(metrics.render())),
            )
            .route("/healthz", axum::routing::get(|| std::future::ready("ok")));
        let stop = http_stop.clone().cancelled_owned();
        Some(tasks.spawn("metrics listener", async move {
            axum::serve(listener, metrics_app)
                .with_graceful_shutdown(stop)
                .await
                .context("serving http.metrics_addr")
        }))
    } else {
        None
    };

    // Until a signal, or until the first task ends on its own (a supervisor restarts the
    // process).
    let outcome = tokio::select! {
        () = shutdown_signal() => Ok(()),
        r = tasks.ended() => r,
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %format!("{e:#}"), "a task failed: stopping");
    }
    let allowed = cfg.shutdown.deadline();
    let deadline = Instant::now() + allowed;
    http_stop.cancel();
    if let Some(http) = http {
        // Past the deadline `finish` names it with whatever else still runs.
        let _ = tokio::time::timeout_at(deadline, http).await;
    }
    let finished = tasks.finish(deadline, allowed).await;
    outcome?;
    finished?;
    tracing::info!("hermet stopped");
    Ok(())
}

/// Relay errors no restart fixes: a lost slot (changes may be gone; recovery is an operator's
/// decision) or a bad configuration. Kafka or PostgreSQL away is retried: progress is safe
/// across restarts, since only acknowledged transactions were confirmed.
fn relay_fatal(e: &RelayError) -> bool {
    matches!(e, RelayError::SlotLost { .. } | RelayError::Config(_))
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
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use hermet_store::audit;
    let preview = projection.preview_chars as i32;
    let mut next = 0u32;
    loop {
        let wait = tokio::time::sleep(Duration::from_secs(cfg.interval_secs));
        if stop.run_until_cancelled(wait).await.is_none() {
            return Ok(());
        }
        let sample: Vec<i32> = (0..cfg.sample_buckets)
            .map(|i| ((next + i) % cfg.buckets) as i32)
            .collect();
        next = (next + cfg.sample_buckets) % cfg.buckets;
        let mut conn = pool.get().await?;
        let mut report = audit::audit(&conn, preview, cfg.buckets, Some(&sample)).await?;
        if eventual && !report.findings.is_empty() {
            let recheck = tokio::time::sleep(Duration::from_millis(cfg.recheck_ms));
            if stop.run_until_cancelled(recheck).await.is_none() {
                return Ok(());
            }
            report = audit::audit(&conn, preview, cfg.buckets, Some(&sample)).await?;
        }
        let rate = report.consistency_rate();
        crate::telemetry::audited(rate, report.findings.len());
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
                    crate::telemetry::audit_repaired(chosen.len());
                    repaired = true;
                    tracing::warn!(buckets = ?sample, findings = report.findings.len(), rate,
                        repaired = chosen.len(), rows,
                        "audit found read-side rows that differ from the write side; repaired them");
                }
                Err(e) => {
                    // Logged and counted; the next pass over these buckets tries again.
                    crate::telemetry::audit_repair_failed();
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
