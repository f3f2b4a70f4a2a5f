//! The audit finds exactly the corruption made to the read side, by kind; repair (by findings,
//! and for one user) makes the next audit report 100%.

use hermet_core::validate::{Avatar, Content, Limits, MessageType, Name};
use hermet_store::audit::{self, Kind};
use hermet_store::Store;
use hermet_testkit::TestDb;

const BUCKETS: u32 = 16;

async fn world(store: &Store) -> Vec<i64> {
    let l = Limits::default();
    let mut users = Vec::new();
    for i in 0..6 {
        let n = Name::parse("nickname", &format!("u{i}"), &l).unwrap();
        users.push(
            store
                .create_user(&n, &Avatar::default())
                .await
                .unwrap()
                .value
                .id,
        );
    }
    let mut chans = Vec::new();
    for i in 0..users.len() {
        for j in (i + 1)..users.len() {
            chans.push(store.add_friend(users[i], users[j]).await.unwrap().value);
        }
    }
    let g = Name::parse("name", "g", &l).unwrap();
    chans.push(
        store
            .create_group(users[0], &g, &Avatar::default(), &users[1..])
            .await
            .unwrap()
            .value,
    );
    for (k, ch) in chans.iter().enumerate() {
        let c = Content::parse(&format!("m{k}"), &l).unwrap();
        let sender = if k % 2 == 0 { users[0] } else { users[1] };
        let _ = store
            .send_message(sender, *ch, &c, &MessageType::text())
            .await;
    }
    users
}

async fn audit_all(db: &TestDb, store: &Store) -> audit::AuditReport {
    let conn = store.pool().get().await.unwrap();
    let _ = db;
    audit::audit(&conn, 50, BUCKETS, None).await.unwrap()
}

#[tokio::test]
async fn audit_finds_each_corruption_and_repair_fixes_it() {
    let db = TestDb::new().await;
    let store = db.store(50);
    let users = world(&store).await;
    let clean = audit_all(&db, &store).await;
    assert!(clean.findings.is_empty(), "{:?}", clean.findings);
    assert_eq!(clean.consistency_rate(), 1.0);
    assert!(clean.expected_rows > 50);

    let conn = store.pool().get().await.unwrap();
    let (a, b) = (users[0], users[1]);
    // 1. a deleted conversation row; 2. a wrong nickname; 3. a wrong unread count (a derived
    // column out of step with its inputs);
    // 4. an extra contact row; 5. a stale reverse-index entry removed.
    conn.execute(
        "DELETE FROM user_conversation_view WHERE user_id = $1 AND peer_user_id = $2",
        &[&a, &b],
    )
    .await
    .unwrap();
    conn.execute("UPDATE user_contact_view SET contact_nickname = 'WRONG' WHERE user_id = $1 AND contact_id = $2", &[&b, &a]).await.unwrap();
    conn.execute(
        "UPDATE user_conversation_view SET unread_count = unread_count + 1 WHERE user_id = $1 AND conversation_type = 'group'",
        &[&users[2]],
    )
    .await
    .unwrap();
    conn.execute(
        "INSERT INTO user_contact_view (user_id, contact_id, contact_nickname, contact_avatar, contact_info_ver,
                                        remark_name, group_name, is_starred, deleted_at, friendship_ver, updated_at)
         VALUES ($1, 999999, 'ghost', '', 1, '', '', false, 0, 1, 0)",
        &[&users[3]],
    )
    .await
    .unwrap();
    conn.execute(
        "DELETE FROM contact_reverse_index WHERE contact_user_id = $1 AND owner_user_id = $2",
        &[&users[4], &users[5]],
    )
    .await
    .unwrap();

    let report = audit_all(&db, &store).await;
    let s = report.summary();
    assert_eq!(
        s.get(&("user_conversation_view", Kind::Missing)),
        Some(&1),
        "{:?}",
        report.findings
    );
    assert_eq!(s.get(&("user_contact_view", Kind::Field)), Some(&1));
    assert_eq!(s.get(&("user_conversation_view", Kind::Field)), Some(&1));
    assert_eq!(s.get(&("user_contact_view", Kind::Extra)), Some(&1));
    assert_eq!(s.get(&("contact_reverse_index", Kind::Missing)), Some(&1));
    assert_eq!(
        report.findings.len(),
        5,
        "exactly what was broken: {:?}",
        report.findings
    );
    let nick = report
        .findings
        .iter()
        .find(|f| f.table == "user_contact_view" && f.kind == Kind::Field)
        .unwrap();
    assert_eq!(nick.fields, vec!["contact_nickname".to_owned()]);
    let unread = report
        .findings
        .iter()
        .find(|f| f.table == "user_conversation_view" && f.kind == Kind::Field)
        .unwrap();
    assert_eq!(unread.fields, vec!["unread_count".to_owned()]);
    assert!(report.consistency_rate() < 1.0);

    let mut conn = store.pool().get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    audit::repair(&tx, &report.findings, &store.config().projection)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let after = audit_all(&db, &store).await;
    assert!(after.findings.is_empty(), "{:?}", after.findings);
    assert_eq!(after.consistency_rate(), 1.0);
    db.assert_converged(&store).await;
}

#[tokio::test]
async fn repair_of_one_user_fixes_their_rows_and_rows_embedding_them() {
    let db = TestDb::new().await;
    let store = db.store(50);
    let users = world(&store).await;
    let u = users[2];
    let conn = store.pool().get().await.unwrap();
    conn.execute(
        "UPDATE user_conversation_view SET peer_nickname = 'stale' WHERE peer_user_id = $1",
        &[&u],
    )
    .await
    .unwrap();
    conn.execute(
        "UPDATE user_contact_view SET is_starred = true WHERE user_id = $1",
        &[&u],
    )
    .await
    .unwrap();
    conn.execute(
        "DELETE FROM conversation_reverse_index WHERE peer_user_id = $1",
        &[&u],
    )
    .await
    .unwrap();
    let sampled = audit::audit(&conn, 50, BUCKETS, Some(&[(u % i64::from(BUCKETS)) as i32]))
        .await
        .unwrap();
    assert!(
        !sampled.findings.is_empty(),
        "a sample of the user's bucket sees the damage"
    );
    assert!(!audit_all(&db, &store).await.findings.is_empty());

    let mut conn = store.pool().get().await.unwrap();
    let tx = conn.transaction().await.unwrap();
    let rows = audit::repair_user(&tx, u, &store.config().projection)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(rows > 0);
    let after = audit_all(&db, &store).await;
    assert!(after.findings.is_empty(), "{:?}", after.findings);
    db.assert_converged(&store).await;
}
