//! Who the push notifier tells about a message into a large channel: only the members connected
//! to this process, found by intersecting the membership with the connected users — never by
//! loading the membership (`hermet_store::audience`, `hermet_projector::push::notify`).
//!
//! The write side is seeded set-based (`INSERT ... SELECT generate_series`) with a channel of
//! 100,000 members in the test's own database; no projection runs (the test is about the
//! notifier's look-up, which reads the write side only), so there is no read side to converge.
//! Needs `HERMET_DATABASE_URL` (`eval "$(scripts/services.sh env)"`).

use std::collections::BTreeSet;
use std::sync::Mutex;

use hermet_core::change::{Change, RowChange};
use hermet_core::push::{PushEvent, PushSink};
use hermet_core::rows::{MessageRow, UserId};
use hermet_projector::push::notify;
use hermet_store::audience::{connected_members, CONNECTED_MEMBERS_SQL};
use hermet_store::connect_pool;
use hermet_testkit::TestDb;
use serde_json::Value;

const BIG: i64 = 1;
const SMALL: i64 = 2;
const MEMBERS: i64 = 100_000;

/// A sink whose connected users are fixed, recording what is published.
struct FakeSink {
    connected: BTreeSet<UserId>,
    published: Mutex<Vec<(UserId, PushEvent)>>,
}

impl FakeSink {
    fn new(connected: &[UserId]) -> Self {
        FakeSink {
            connected: connected.iter().copied().collect(),
            published: Mutex::new(Vec::new()),
        }
    }

    fn published(&self) -> Vec<(UserId, PushEvent)> {
        let mut p = self.published.lock().expect("not poisoned").clone();
        p.sort();
        p
    }
}

impl PushSink for FakeSink {
    fn is_connected(&self, user: UserId) -> bool {
        self.connected.contains(&user)
    }
    fn any_connected(&self) -> bool {
        !self.connected.is_empty()
    }
    fn connected_users(&self) -> Vec<UserId> {
        self.connected.iter().copied().collect()
    }
    fn publish(&self, user: UserId, event: &PushEvent) {
        assert!(
            self.is_connected(user),
            "published to {user}, who is not connected"
        );
        self.published
            .lock()
            .expect("not poisoned")
            .push((user, event.clone()));
    }
}

/// Users 1..=MEMBERS+5; channel BIG with members 1..=MEMBERS (user 50 has left), channel SMALL
/// with members MEMBERS+1..=MEMBERS+3.
async fn seed(client: &deadpool_postgres::Client) {
    client
        .batch_execute(&format!(
            "INSERT INTO users (id, nickname, created_at, updated_at)
               SELECT g, 'u' || g, 0, 0 FROM generate_series(1, {users}) g;
             INSERT INTO channels (id, channel_type, name, creator_id, member_count, last_seq,
                                   created_at, updated_at)
               VALUES ({BIG}, 'group', 'big', 1, {MEMBERS}, 1, 0, 0),
                      ({SMALL}, 'group', 'small', {first_small}, 3, 1, 0, 0);
             INSERT INTO channel_members (channel_id, user_id, joined_at)
               SELECT {BIG}, g, 0 FROM generate_series(1, {MEMBERS}) g;
             INSERT INTO channel_members (channel_id, user_id, joined_at)
               SELECT {SMALL}, g, 0 FROM generate_series({first_small}, {last_small}) g;
             UPDATE channel_members SET left_at = 1, left_seq = 0
              WHERE channel_id = {BIG} AND user_id = 50;
             ANALYZE users, channels, channel_members;",
            users = MEMBERS + 5,
            first_small = MEMBERS + 1,
            last_small = MEMBERS + 3,
        ))
        .await
        .expect("seed the write side");
}

fn message(id: i64, channel: i64) -> RowChange {
    RowChange::Messages(Change::inserted(MessageRow {
        id,
        channel_id: channel,
        seq: 1,
        sender_id: if channel == BIG { 1 } else { MEMBERS + 1 },
        sender_name: "u".into(),
        msg_type: "text".into(),
        content: "hi".into(),
        created_at: 0,
    }))
}

fn event(id: i64, channel: i64) -> PushEvent {
    PushEvent::Message {
        channel_id: channel,
        message_id: id,
        seq: 1,
        sender_id: if channel == BIG { 1 } else { MEMBERS + 1 },
    }
}

#[tokio::test]
async fn only_connected_members_are_told_and_the_membership_is_never_loaded() {
    let db = TestDb::new().await;
    let pool = connect_pool(&db.url, 2).expect("pool");
    let client = pool.get().await.expect("connect");
    seed(&client).await;

    // Connected here: two active members of BIG, one who left it, a member of SMALL only, and
    // a user who is in neither channel.
    let connected = [7, 50, MEMBERS - 1, MEMBERS + 1, MEMBERS + 5];
    let sink = FakeSink::new(&connected);
    let sent = notify(&pool, &sink, &[message(10, BIG), message(11, SMALL)])
        .await
        .expect("notify");
    let mut expected = vec![
        (7, event(10, BIG)),
        (MEMBERS - 1, event(10, BIG)),
        (MEMBERS + 1, event(11, SMALL)),
    ];
    expected.sort();
    assert_eq!(sink.published(), expected);
    assert_eq!(sent, expected.len());

    // Nobody connected: nothing is sent (and no statement is needed).
    let nobody = FakeSink::new(&[]);
    assert_eq!(
        notify(&pool, &nobody, &[message(10, BIG)])
            .await
            .expect("notify"),
        0
    );
    assert!(nobody.published().is_empty());
    assert!(connected_members(&client, &[BIG], &[])
        .await
        .expect("no statement")
        .is_empty());

    // The statement's plan probes the index with both conditions: it reads index entries for
    // the connected users, not the channel's 100,000 members.
    let plan = explain(&client, &[BIG, SMALL], &connected).await;
    let mut scans = Vec::new();
    member_scans(&plan[0]["Plan"], &mut scans);
    assert!(!scans.is_empty(), "no scan of channel_members in {plan:#}");
    for scan in &scans {
        let kind = scan["Node Type"].as_str().unwrap_or_default();
        assert_ne!(kind, "Seq Scan", "the membership is scanned: {plan:#}");
        let cond = scan["Index Cond"]
            .as_str()
            .or_else(|| scan["Recheck Cond"].as_str())
            .unwrap_or_default();
        assert!(
            cond.contains("user_id"),
            "the index is not probed by user ({kind}: {cond:?}): {plan:#}"
        );
        let removed = scan["Rows Removed by Filter"].as_i64().unwrap_or(0)
            + scan["Rows Removed by Index Recheck"].as_i64().unwrap_or(0);
        assert!(
            removed <= connected.len() as i64,
            "{removed} rows read and thrown away: {plan:#}"
        );
    }
    // A scan of 100,000 members would touch hundreds of pages; probes touch a few per user.
    let blocks = plan[0]["Plan"]["Shared Hit Blocks"].as_i64().unwrap_or(0)
        + plan[0]["Plan"]["Shared Read Blocks"].as_i64().unwrap_or(0);
    assert!(
        blocks < 100,
        "{blocks} pages read for {} probes: {plan:#}",
        connected.len() * 2
    );
}

/// `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` of exactly the notifier's statement.
async fn explain(client: &deadpool_postgres::Client, channels: &[i64], users: &[i64]) -> Value {
    let row = client
        .query_one(
            &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {CONNECTED_MEMBERS_SQL}"),
            &[&channels, &users],
        )
        .await
        .expect("EXPLAIN");
    let text: Value = row.try_get(0).expect("EXPLAIN answers JSON");
    text
}

/// The plan nodes that read `channel_members`.
fn member_scans<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
    if node["Relation Name"] == "channel_members" {
        out.push(node);
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        member_scans(child, out);
    }
}
