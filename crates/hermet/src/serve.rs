//! `hermet serve` and `hermet migrate`.

use anyhow::Context;
use hermet_api::{ApiConfig, AppState};
use hermet_store::{connect_pool, migrate, Store};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::time::{Duration, Instant};

use hermet_cdc::relay::{self, RelayConfig, RelayError};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;

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
    Ok(Store::new(pool, cfg.store_config()))
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
    /// The API, plus the relay when `cdc.enabled`.
    All,
}

pub async fn serve(cfg: Config, roles: &[Role]) -> anyhow::Result<()> {
    let all = roles.is_empty() || roles.contains(&Role::All);
    let api = all || roles.contains(&Role::Api);
    let cdc = roles.contains(&Role::Cdc) || (all && cfg.cdc.enabled);
    if api {
        cfg.validate_for_serving()?;
    }
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let store = connect_and_migrate(&cfg).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let relay = cdc.then(|| tokio::spawn(run_relay(cfg.relay_config(), stop_rx.clone())));
    if !api {
        let mut relay = relay.context("no role to run")?;
        tokio::select! {
            _ = shutdown_signal() => {
                let _ = stop_tx.send(true);
                return (&mut relay).await.context("relay task")?;
            }
            r = &mut relay => return r.context("relay task")?,
        }
    }
    let api_cfg = ApiConfig {
        jwt_secret: cfg.auth.jwt_secret.clone(),
        token_ttl_secs: cfg.auth.token_ttl_secs,
        max_body_bytes: cfg.http.max_body_bytes,
    };
    let app = hermet_api::router(AppState::new(store, api_cfg, Some(metrics)));
    let listener = TcpListener::bind(cfg.http.addr)
        .await
        .with_context(|| format!("binding {}", cfg.http.addr))?;
    tracing::info!(addr = %cfg.http.addr, mode = ?cfg.sync.mode, "hermet is serving");
    let stop_api = stop_tx.clone();
    let relay_failed = async move {
        match relay {
            Some(handle) => match handle.await {
                Ok(Ok(())) => std::future::pending::<anyhow::Result<()>>().await,
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            },
            None => std::future::pending().await,
        }
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stop_api.send(true);
    });
    tokio::select! {
        r = server => r.context("serving HTTP")?,
        r = relay_failed => {
            let _ = stop_tx.send(true);
            r.context("the CDC relay stopped")?;
        }
    }
    tracing::info!("hermet stopped");
    Ok(())
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

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
