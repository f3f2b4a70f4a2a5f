//! `X-Hermet-Lsn` is at or past the write's commit record whatever `synchronous_commit` is.
//!
//! With `synchronous_commit = off` a commit returns once its record is inserted, before it is
//! written: the WAL *write* position (`pg_current_wal_lsn()`) can still be behind the commit,
//! and a read waiting for such an LSN could be answered before the write is applied. The test
//! finds each write's commit record in the WAL (`pg_walinspect`, by the transaction id that
//! wrote the message row) and compares.

use hermet_core::validate::{Avatar, Content, Limits, MessageType, Name};
use hermet_core::Lsn;
use hermet_store::Store;
use hermet_testkit::pipeline::connect;
use hermet_testkit::TestDb;

async fn lsn_of(client: &tokio_postgres::Client, sql: &str) -> Lsn {
    let s: String = client.query_one(sql, &[]).await.expect(sql).get(0);
    s.parse().expect("an LSN")
}

#[tokio::test]
async fn write_lsn_covers_the_commit_with_synchronous_commit_off() {
    let db = TestDb::new().await;
    let admin = connect(&db.url).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET synchronous_commit = off;
             CREATE EXTENSION IF NOT EXISTS pg_walinspect",
            db.name
        ))
        .await
        .expect("set up");
    // New sessions (the store's pool connects lazily) take the database's setting.
    let store: Store = db.store(50);
    let conn = store.pool().get().await.expect("connection");
    let setting: String = conn
        .query_one("SHOW synchronous_commit", &[])
        .await
        .expect("show")
        .get(0);
    assert_eq!(setting, "off", "the store's sessions commit asynchronously");
    drop(conn);

    let l = Limits::default();
    let name = |s: &str| Name::parse("nickname", s, &l).expect("name");
    let ann = store
        .create_user(&name("ann"), &Avatar::default())
        .await
        .expect("user")
        .value
        .id;
    let bob = store
        .create_user(&name("bob"), &Avatar::default())
        .await
        .expect("user")
        .value
        .id;
    let ch = store.add_friend(ann, bob).await.expect("friends").value;

    let start = lsn_of(&admin, "SELECT pg_current_wal_insert_lsn()::text").await;
    let mut writes = Vec::new();
    for i in 0..30 {
        let c = Content::parse(&format!("m{i}"), &l).expect("content");
        let w = store
            .send_message(ann, ch, &c, &MessageType::text())
            .await
            .expect("send");
        let xid: String = admin
            .query_one(
                "SELECT xmin::text FROM messages WHERE channel_id = $1 AND seq = $2",
                &[&ch, &w.value.seq],
            )
            .await
            .expect("message row")
            .get(0);
        writes.push((w.lsn, xid));
    }
    // pg_walinspect reads only flushed WAL: a synchronous commit of a transaction that wrote
    // something flushes everything inserted before it.
    admin
        .batch_execute(
            "SET synchronous_commit = on;
             CREATE TABLE flush_probe (x int);
             INSERT INTO flush_probe VALUES (1);",
        )
        .await
        .expect("flush");
    let end = lsn_of(&admin, "SELECT pg_current_wal_flush_lsn()::text").await;
    let mut behind = Vec::new();
    for (lsn, xid) in &writes {
        let rows = admin
            .query(
                "SELECT end_lsn::text FROM pg_get_wal_records_info($1::text::pg_lsn, $2::text::pg_lsn)
                  WHERE resource_manager = 'Transaction' AND record_type LIKE 'COMMIT%'
                    AND xid::text = $3",
                &[&start.to_string(), &end.to_string(), xid],
            )
            .await
            .expect("wal records");
        assert_eq!(rows.len(), 1, "one commit record of transaction {xid}");
        let commit_end: Lsn = rows[0].get::<_, String>(0).parse().expect("an LSN");
        if *lsn < commit_end {
            behind.push(format!(
                "{xid}: X-Hermet-Lsn {lsn} < commit end {commit_end}"
            ));
        }
    }
    assert!(
        behind.is_empty(),
        "{} of {} writes answered an LSN before their commit:\n{}",
        behind.len(),
        writes.len(),
        behind.join("\n")
    );
}
