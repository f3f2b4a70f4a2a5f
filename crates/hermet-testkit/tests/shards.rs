//! List reads name the owner's partition (`hermet_store::shard`): the routing must be
//! PostgreSQL's own, and an unexpected layout must fall back to the parent without a wrong
//! answer.

use hermet_store::shard::{hash_partition, ShardNames};
use hermet_store::Store;
use hermet_testkit::{workload, TestDb, TEST_SHARDS};
use rand::Rng;

/// Every list of every user, conversations paged three at a time (so the cursor query runs).
async fn all_lists(store: &Store, users: &[i64]) -> Vec<String> {
    let mut out = Vec::new();
    for &u in users {
        let mut after = None;
        loop {
            let page = store
                .list_conversations(u, 3, after)
                .await
                .expect("conversation list");
            out.push(format!("{u} conversations {page:?}"));
            match page.last() {
                Some(last) if page.len() == 3 => after = Some(last.cursor),
                _ => break,
            }
        }
        let contacts = store.list_contacts(u, 100).await.expect("contact list");
        out.push(format!("{u} contacts {contacts:?}"));
    }
    out
}

/// A database after the seeded random workload.
async fn populated() -> (TestDb, Store, workload::World) {
    let db = TestDb::new().await;
    let store = db.store(40);
    let cmds = workload::generate(workload::seed(), 400);
    let world = workload::run(&store, &cmds).await.expect("workload");
    (db, store, world)
}

#[tokio::test]
async fn routing_is_postgres_own() {
    let db = TestDb::new().await;
    let store = db.store(40);
    let conn = store.pool().get().await.expect("connection");
    let mut rng = rand::thread_rng();
    let mut keys: Vec<i64> = (0..2_000).map(|_| rng.gen()).collect();
    keys.extend((0..500).map(|_| rng.gen_range(-1_000..100_000)));
    keys.extend([0, 1, -1, i64::MAX, i64::MIN, 1 << 32, -(1 << 32) - 1]);
    // Where PostgreSQL actually stores them: the reverse index is keyed the same way.
    conn.execute(
        "INSERT INTO contact_reverse_index (contact_user_id, owner_user_id)
         SELECT k, 0 FROM unnest($1::bigint[]) k ON CONFLICT DO NOTHING",
        &[&keys],
    )
    .await
    .expect("insert");
    let names = ShardNames::load(&conn, "contact_reverse_index")
        .await
        .expect("catalog")
        .expect("partitions named as migration 2 creates them");
    assert_eq!(names.count(), TEST_SHARDS);
    let stored = conn
        .query(
            "SELECT contact_user_id, tableoid::regclass::text FROM contact_reverse_index",
            &[],
        )
        .await
        .expect("read back");
    assert_eq!(stored.len(), {
        let mut k = keys.clone();
        k.sort_unstable();
        k.dedup();
        k.len()
    });
    for r in &stored {
        let (key, part): (i64, String) = (r.get(0), r.get(1));
        assert_eq!(names.of(key), part, "partition of {key}");
    }
    // And for other moduli, against PostgreSQL's partition check.
    for modulus in [1u32, 7, 256, 4096] {
        let ours: Vec<i32> = keys
            .iter()
            .map(|&k| hash_partition(k, modulus) as i32)
            .collect();
        let wrong: i64 = conn
            .query_one(
                "SELECT count(*) FROM unnest($1::bigint[], $2::int[]) u(k, r)
                  WHERE NOT satisfies_hash_partition('contact_reverse_index'::regclass, $3, r, k)",
                &[&keys, &ours, &(modulus as i32)],
            )
            .await
            .expect("check")
            .get(0);
        assert_eq!(wrong, 0, "keys routed differently with modulus {modulus}");
    }
}

#[tokio::test]
async fn an_unexpected_layout_reads_the_parent_with_the_same_answers() {
    let (db, store, world) = populated().await;
    let conn = store.pool().get().await.expect("connection");
    assert!(store.list_queries(&conn).await.expect("load").routed());
    let routed = all_lists(&store, &world.users).await;
    assert!(
        routed.iter().any(|l| l.contains("ConversationItem")),
        "the workload left conversations to list"
    );
    db.assert_converged(&store).await;

    // A partition renamed behind the process's back: its prepared reads miss the name and are
    // answered from the parent.
    conn.batch_execute(
        "ALTER TABLE user_conversation_view_3 RENAME TO ucv_moved;
         ALTER TABLE user_contact_view_5 RENAME TO ucontact_moved",
    )
    .await
    .expect("rename");
    assert_eq!(all_lists(&store, &world.users).await, routed);
    let queries = store.list_queries(&conn).await.expect("loaded");
    assert!(queries.fallbacks() > 0, "missing partitions were noticed");

    // A new process sees the layout is not hermet's and reads the parents only.
    let fresh = db.store(40);
    assert!(!fresh.list_queries(&conn).await.expect("load").routed());
    assert_eq!(all_lists(&fresh, &world.users).await, routed);
    assert_eq!(
        fresh.list_queries(&conn).await.expect("loaded").fallbacks(),
        0
    );
}

#[tokio::test]
async fn prepared_list_statements_stay_bounded_per_connection() {
    let (db, store, world) = populated().await;
    let expected = all_lists(&store, &world.users).await;

    // One read connection, allowed 5 statements: the 8 shards' first-page, later-page and
    // contact statements (up to 24) do not fit.
    let bounded = db
        .store(40)
        .with_read_pool(hermet_store::connect_pool(&db.url, 1).expect("pool"))
        .with_max_list_statements(5);
    let mut seen_max = 0;
    let mut got = Vec::new();
    for &u in &world.users {
        got.extend(all_lists(&bounded, &[u]).await);
        let conn = bounded.read_pool().get().await.expect("connection");
        let size = conn.statement_cache.size();
        assert!(size <= 5, "{size} statements cached");
        seen_max = seen_max.max(size);
        let prepared: i64 = conn
            .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .await
            .expect("server's statements")
            .get(0);
        assert!(
            prepared <= 5,
            "{prepared} statements prepared on the server"
        );
    }
    assert_eq!(got, expected, "bounded reads answer the same");
    assert!(seen_max >= 3, "the cache was used ({seen_max})");
}
