//! `hermet admin apikey create | list | revoke`: the keys the product's app server calls the
//! `/v1/server/...` routes with (`hermet_store::identity`).
//!
//! The plain key is printed once, by `create`, on stdout; nothing logs it (logs show its id and
//! prefix only), and the database keeps only its SHA-256.

use anyhow::Context;
use hermet_core::validate::KeyName;
use hermet_store::identity::ApiKeyInfo;
use hermet_store::Store;
use serde_json::json;

use crate::config::Config;

async fn store(cfg: &Config) -> anyhow::Result<Store> {
    let pool = hermet_store::connect_pool(&cfg.database.url, 1)?;
    let store = Store::new(pool, cfg.store_config());
    store.ping().await.context("connecting to PostgreSQL")?;
    Ok(store)
}

pub async fn create(cfg: &Config, name: &str, as_json: bool) -> anyhow::Result<()> {
    let name = KeyName::parse(name).map_err(|e| anyhow::anyhow!("--name: {}", e.reason))?;
    let key = store(cfg)
        .await?
        .create_api_key(&name)
        .await
        .context("creating the API key (has `hermet migrate` run?)")?;
    if as_json {
        let v = json!({"id": key.id, "name": name.as_str(), "prefix": key.prefix, "key": key.key});
        println!("{v}");
    } else {
        println!(
            "API key {} ({}) created. It is shown this once; keep it secret:",
            key.id,
            name.as_str()
        );
        println!("{}", key.key);
    }
    Ok(())
}

fn info_json(k: &ApiKeyInfo) -> serde_json::Value {
    json!({
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
        "last_used_at": k.last_used_at,
    })
}

pub async fn list(cfg: &Config, as_json: bool) -> anyhow::Result<()> {
    let keys = store(cfg).await?.list_api_keys().await?;
    if as_json {
        let v: Vec<_> = keys.iter().map(info_json).collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    println!(
        "{:>6}  {:<24}  {:<14}  {:>14}  {:>14}  {:>14}",
        "id", "name", "prefix", "created_at", "last_used_at", "revoked_at"
    );
    let ms = |t: Option<i64>| t.map_or_else(|| "-".to_owned(), |t| t.to_string());
    for k in &keys {
        println!(
            "{:>6}  {:<24}  {:<14}  {:>14}  {:>14}  {:>14}",
            k.id,
            k.name,
            format!("{}…", k.prefix),
            k.created_at,
            ms(k.last_used_at),
            ms(k.revoked_at)
        );
    }
    Ok(())
}

pub async fn revoke(cfg: &Config, id: i64, as_json: bool) -> anyhow::Result<()> {
    let k = store(cfg).await?.revoke_api_key(id).await?;
    if as_json {
        println!("{}", info_json(&k));
    } else {
        println!("API key {} ({}) revoked", k.id, k.name);
    }
    Ok(())
}
