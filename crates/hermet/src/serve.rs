//! `hermet serve` and `hermet migrate`.

use anyhow::Context;
use hermet_api::{ApiConfig, AppState};
use hermet_store::{connect_pool, migrate, Store};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;

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

pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    cfg.validate_for_serving()?;
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let store = connect_and_migrate(&cfg).await?;
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
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("hermet stopped");
    Ok(())
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
