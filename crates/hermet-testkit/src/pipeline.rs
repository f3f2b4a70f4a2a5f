//! Helpers of the tests that run a CDC pipeline (relay, projectors, push) against the project's
//! PostgreSQL and Kafka: connecting, and cleaning up the slot, topics and consumer groups a test
//! made, from `Drop` too (where no runtime may be at hand).

use std::time::Duration;

use hermet_kafka::rdkafka::admin::{AdminClient, AdminOptions};
use hermet_kafka::rdkafka::client::DefaultClientContext;

/// Tests with a replication slot run one at a time (slots are cluster-wide): each test binary
/// that starts a relay holds this while it does.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A random tag for the names of one test's slot, publication, topics and consumer groups.
pub fn tag() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// The brokers of `HERMET_KAFKA_BROKERS` (the project's private Kafka by default).
pub fn brokers() -> String {
    std::env::var("HERMET_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:59092".into())
}

/// A connection to `url` whose connection task runs in the background.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The server's current WAL position: a position every commit so far is at or before.
pub async fn wal_lsn(store: &hermet_store::Store) -> hermet_core::Lsn {
    let conn = store.pool().get().await.expect("connection");
    let s: String = conn
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("pg_current_wal_lsn")
        .get(0);
    s.parse().expect("lsn")
}

/// Whether the relay on `slot` recorded its initial snapshot as complete (its topics exist).
/// The state table does not exist until the relay made it: an error is "not yet".
pub async fn snapshot_done(client: &tokio_postgres::Client, slot: &str) -> bool {
    client
        .query_opt(
            "SELECT snapshot_done FROM hermet_cdc_state WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .ok()
        .flatten()
        .is_some_and(|r| r.get::<_, bool>(0))
}

/// Drops the slot once no walsender holds it (ending one that still does); gives up after a
/// minute with the last error.
pub async fn drop_slot(url: &str, slot: &str) -> Result<(), String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let client = &client;
    // Settled: dropped or gone (`Ok(Ok)`), or the query failed (`Ok(Err)`, not retried).
    // Not yet: the slot is in use, or dropping it failed (`Err`, the last one is returned).
    let dropped = crate::within(Duration::from_secs(60), async || {
        let row = match client
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
        {
            Ok(row) => row,
            Err(e) => return Ok(Err(e.to_string())),
        };
        match row {
            None => Ok(Ok(())),
            Some(r) => match r.get::<_, Option<i32>>(0) {
                Some(pid) => {
                    let _ = client
                        .execute("SELECT pg_terminate_backend($1)", &[&pid])
                        .await;
                    Err(format!("slot still active in pid {pid}"))
                }
                None => client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .map(|_| Ok(()))
                    .map_err(|e| e.to_string()),
            },
        }
    })
    .await;
    dropped.map_err(Option::unwrap_or_default)?
}

/// Deletes consumer groups and topics, best effort (bounded waits).
pub async fn delete_kafka(topics: &[String], groups: &[String]) {
    let Ok(admin) = hermet_kafka::client_config(&brokers(), "hermet-test-cleanup")
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    if !groups.is_empty() {
        let names: Vec<&str> = groups.iter().map(String::as_str).collect();
        let _ =
            tokio::time::timeout(Duration::from_secs(30), admin.delete_groups(&names, &opts)).await;
    }
    if !topics.is_empty() {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let _ =
            tokio::time::timeout(Duration::from_secs(30), admin.delete_topics(&names, &opts)).await;
    }
}

/// Drops the slot (reporting, not failing, if it cannot), then the topics and groups.
pub async fn cleanup(url: &str, slot: &str, topics: &[String], groups: &[String]) {
    if let Err(e) = drop_slot(url, slot).await {
        eprintln!("could not drop replication slot {slot}: {e}");
    }
    delete_kafka(topics, groups).await;
}

/// [`cleanup`] from any context (a `Drop` impl, a panicking test): on a thread with a runtime of
/// its own, waited for.
pub fn cleanup_blocking(url: String, slot: String, topics: Vec<String>, groups: Vec<String>) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(cleanup(&url, &slot, &topics, &groups));
        }
    })
    .join();
}
