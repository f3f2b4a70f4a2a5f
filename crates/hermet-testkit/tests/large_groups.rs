//! Groups of any size (hybrid fan-out, docs/fanout.md), at the default threshold:
//! - a 100,000-member group is created, grown through the API's 1,000-id calls, written to and
//!   read: a message writes the group's channel row and no member row, members list it exactly
//!   like a small group's (order, unread, read position), and the read side equals the oracle;
//! - a group that crosses the threshold and comes back converts its rows both ways, online.
//!
//! The 99,000 users beyond the first few are inserted set-based (creating them through the API
//! would dominate the test); every membership goes through the API.

use std::time::Instant;

use hermet_api::auth::TokenKeys;
use hermet_core::rows::{FanoutConfig, DEFAULT_READ_THRESHOLD};
use hermet_core::validate::MAX_IDS_PER_CALL;
use hermet_store::StoreConfig;
use hermet_testkit::{TestApp, TestDb, User, TEST_SECRET};
use serde_json::json;

const MEMBERS: i64 = 100_000;

/// An app whose stores use the production default threshold.
async fn app_with_default_threshold() -> TestApp {
    let db = TestDb::new().await;
    let cfg = StoreConfig {
        fanout: FanoutConfig::default(),
        ..db.store(50).config().clone()
    };
    let store = db.store_with(cfg);
    TestApp::spawn_with(db, store).await
}

/// `n` users inserted set-based, with tokens signed as the API signs them.
async fn bulk_users(app: &TestApp, n: i64) -> Vec<User> {
    let conn = app.store.pool().get().await.expect("connection");
    let rows = conn
        .query(
            "INSERT INTO users (nickname, created_at, updated_at)
             SELECT 'member ' || g, 0, 0 FROM generate_series(1, $1::bigint) g
             RETURNING id",
            &[&n],
        )
        .await
        .expect("bulk users");
    let keys = TokenKeys::new(TEST_SECRET.as_bytes(), 3600);
    rows.iter()
        .map(|r| {
            let id: i64 = r.get(0);
            User {
                id,
                token: keys.issue(id).expect("token"),
            }
        })
        .collect()
}

async fn scalar(app: &TestApp, sql: &str, channel: i64) -> i64 {
    let conn = app.store.pool().get().await.expect("connection");
    conn.query_one(sql, &[&channel])
        .await
        .expect("query")
        .get(0)
}

/// Owners of the group's member rows written since `since_ms`: every write stamps
/// `updated_at` (PostgreSQL's cumulative counters lag, so they would need waiting for).
async fn rows_stamped_since(app: &TestApp, channel: i64, since_ms: i64) -> Vec<i64> {
    let conn = app.store.pool().get().await.expect("connection");
    conn.query(
        "SELECT user_id FROM user_conversation_view
          WHERE channel_id = $1 AND updated_at >= $2 ORDER BY user_id",
        &[&channel, &since_ms],
    )
    .await
    .expect("rows")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_member_group_is_written_once_per_message_and_listed_like_any() {
    let app = app_with_default_threshold().await;
    let owner = app.new_user("owner").await;
    let friend = app.new_user("friend").await;
    let single = app.befriend(&owner, &friend).await;
    let users = bulk_users(&app, MEMBERS - 1).await;

    // Created with the first 1,000 (over the threshold: read diffusion from the start), then
    // grown 1,000 ids a call.
    let first: Vec<i64> = users[..MAX_IDS_PER_CALL].iter().map(|u| u.id).collect();
    let r = app
        .post(
            "/v1/groups",
            &owner,
            json!({"name": "everyone", "member_ids": first}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let group = r.body["channel_id"].as_i64().expect("channel_id");
    let t = Instant::now();
    for chunk in users[MAX_IDS_PER_CALL..].chunks(MAX_IDS_PER_CALL) {
        let ids: Vec<i64> = chunk.iter().map(|u| u.id).collect();
        let r = app
            .post(
                &format!("/v1/groups/{group}/members"),
                &owner,
                json!({"user_ids": ids}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    eprintln!("grew the group to {MEMBERS} in {:?}", t.elapsed());
    assert_eq!(
        scalar(
            &app,
            "SELECT member_count::bigint FROM channels WHERE id = $1",
            group
        )
        .await,
        MEMBERS
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM user_conversation_view WHERE channel_id = $1 AND fanout = 'read'",
            group
        )
        .await,
        MEMBERS,
        "every member has a row, in read diffusion"
    );

    // The limit holds: one more is refused and nothing is added.
    let extra = app.new_user("one too many").await;
    let r = app
        .post(
            &format!("/v1/groups/{group}/members"),
            &owner,
            json!({"user_ids": [extra.id]}),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(
        scalar(
            &app,
            "SELECT member_count::bigint FROM channels WHERE id = $1",
            group
        )
        .await,
        MEMBERS
    );

    // A message writes the channel's row and no member's row.
    let before = now_ms();
    app.send(&owner, single, "to a friend").await;
    let sent = app.send(&owner, group, "hello, everyone").await;
    let seq = sent.body["seq"].as_i64().expect("seq");
    assert_eq!(
        rows_stamped_since(&app, group, before).await,
        vec![owner.id],
        "a message in read diffusion writes no member row but the sender's (read position)"
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT last_message_seq FROM channel_view WHERE channel_id = $1",
            group
        )
        .await,
        seq
    );

    // A member far down the list of members sees it first, unread, like any conversation.
    let member = &users[MEMBERS as usize - 2];
    let list = app.conversations(member).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let item = &list[0];
    assert_eq!(item["channel_id"], group);
    assert_eq!(item["type"], "group");
    assert_eq!(item["name"], "everyone");
    assert_eq!(item["unread_count"], 1);
    assert_eq!(item["last_message"]["content"], "hello, everyone");
    assert_eq!(item["last_message"]["sender_id"], owner.id);

    // The owner's list merges the large group with the single chat, newest first.
    let owners: Vec<i64> = app
        .conversations(&owner)
        .await
        .iter()
        .filter_map(|c| c["channel_id"].as_i64())
        .collect();
    assert_eq!(owners, vec![group, single]);

    // Reading and pinning write that member's row only.
    let before = now_ms();
    let r = app
        .post(
            &format!("/v1/channels/{group}/read"),
            member,
            json!({"seq": seq}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        rows_stamped_since(&app, group, before).await,
        vec![member.id]
    );
    assert_eq!(
        app.conversation(member, group).await.expect("listed")["unread_count"],
        0
    );
    let r = app
        .get(&format!("/v1/channels/{group}/messages?limit=5"), member)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["messages"][0]["content"], "hello, everyone");

    // A rename writes the channel's row only.
    let before = now_ms();
    let r = app
        .patch(
            &format!("/v1/groups/{group}"),
            &owner,
            json!({"name": "all of us"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(rows_stamped_since(&app, group, before).await.is_empty());
    assert_eq!(
        app.conversation(member, group).await.expect("listed")["name"],
        "all of us"
    );

    let t = Instant::now();
    app.assert_converged().await;
    eprintln!("oracle check of {MEMBERS} rows in {:?}", t.elapsed());
}

/// A group grows past the threshold and shrinks back: each flip rewrites every member row in
/// the other shape, the boundary does not flap, and lists read the same throughout.
#[tokio::test]
async fn a_group_crossing_the_threshold_converts_its_rows_both_ways() {
    let app = app_with_default_threshold().await;
    let owner = app.new_user("owner").await;
    let users = bulk_users(&app, DEFAULT_READ_THRESHOLD + 10).await;
    let ids = |r: std::ops::Range<usize>| users[r].iter().map(|u| u.id).collect::<Vec<i64>>();
    let threshold = DEFAULT_READ_THRESHOLD as usize;
    let r = app
        .post(
            "/v1/groups",
            &owner,
            json!({"name": "growing", "member_ids": ids(0..threshold - 1)}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let group = r.body["channel_id"].as_i64().expect("channel_id");
    let fanout = |app: &TestApp| {
        let pool = app.store.pool().clone();
        async move {
            let conn = pool.get().await.expect("connection");
            let r = conn
                .query_one(
                    "SELECT fanout, fanout_ver, member_count FROM channels WHERE id = $1",
                    &[&group],
                )
                .await
                .expect("channel");
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, i32>(2),
            )
        }
    };
    app.send(&owner, group, "small").await;
    assert_eq!(fanout(&app).await, ("write".into(), 1, threshold as i32));
    let watcher = &users[0];
    let seen_small = app.conversation(watcher, group).await.expect("listed");

    // One more: over the threshold, read diffusion.
    let r = app
        .post(
            &format!("/v1/groups/{group}/members"),
            &owner,
            json!({"user_ids": ids(threshold - 1..threshold)}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(fanout(&app).await, ("read".into(), 2, threshold as i32 + 1));
    assert_eq!(
        app.conversation(watcher, group).await.expect("listed"),
        seen_small,
        "the list reads the same in either shape"
    );
    app.assert_converged().await;

    // Leaving down to the threshold does not flip back (hysteresis) ...
    for u in &users[threshold / 2 - 1..threshold] {
        let r = app
            .delete(&format!("/v1/groups/{group}/members/{}", u.id), u)
            .await;
        assert_eq!(r.status, 204, "{:?}", r.body);
        let (f, _, n) = fanout(&app).await;
        if n as usize > threshold / 2 {
            assert_eq!(f, "read", "still read diffusion at {n} members");
        }
    }
    // ... half of it does.
    let (f, ver, n) = fanout(&app).await;
    assert_eq!((f.as_str(), ver), ("write", 3), "back at {n} members");
    app.send(&owner, group, "small again").await;
    let item = app.conversation(watcher, group).await.expect("listed");
    assert_eq!(item["last_message"]["content"], "small again");
    assert_eq!(item["unread_count"], 2);
    let gone = &users[threshold - 1];
    assert!(
        app.conversation(gone, group).await.is_none(),
        "a member who left no longer lists the group"
    );
    app.assert_converged().await;
}
