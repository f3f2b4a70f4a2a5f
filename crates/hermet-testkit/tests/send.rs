//! The send command's pipeline (`hermet_store::send`) in every sync mode: what a refused send
//! leaves behind (nothing, and a usable connection), and the races its checks must win: a leave,
//! an unfriend and a rename that commit while a send waits for its locks. Each race test first
//! sees the send blocked on a lock in `pg_stat_activity`, so the race really happened.

use std::time::Duration;

use hermet_core::rows::{ChannelId, UserId};
use hermet_core::validate::{Avatar, Content, Limits, MessageType, Name};
use hermet_store::{Store, StoreError, SyncMode};
use hermet_testkit::{eventually, store_config, TestDb};

const MODES: [SyncMode; 3] = [SyncMode::DualWrite, SyncMode::Async, SyncMode::Cdc];

async fn user(store: &Store, nickname: &str) -> UserId {
    let name = Name::parse("nickname", nickname, &Limits::default()).expect("name");
    let avatar = Avatar::parse("", &Limits::default()).expect("avatar");
    store
        .create_user(&name, &avatar)
        .await
        .expect("create user")
        .value
        .id
}

async fn send(store: &Store, from: UserId, ch: ChannelId, text: &str) -> Result<i64, StoreError> {
    let content = Content::parse(text, &Limits::default()).expect("content");
    store
        .send_message(from, ch, &content, &MessageType::text())
        .await
        .map(|w| w.value.seq)
}

fn code(r: Result<i64, StoreError>) -> &'static str {
    match r {
        Err(StoreError::Forbidden { code, .. } | StoreError::NotFound { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A database of its own, a store in `mode` on it, and users alice and bob.
async fn two_users(mode: SyncMode) -> (TestDb, Store, UserId, UserId) {
    let db = TestDb::new().await;
    let store = db.store_with(store_config(mode, 40));
    let (alice, bob) = (user(&store, "alice").await, user(&store, "bob").await);
    (db, store, alice, bob)
}

/// A group of `owner` and `member`.
async fn group_of(store: &Store, owner: UserId, member: UserId) -> ChannelId {
    let name = Name::parse("name", "g", &Limits::default()).expect("name");
    let avatar = Avatar::parse("", &Limits::default()).expect("avatar");
    store
        .create_group(owner, &name, &avatar, &[member])
        .await
        .expect("group")
        .value
}

/// Messages stored in `ch` and its `last_seq`.
async fn written(db: &tokio_postgres::Client, ch: ChannelId) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM messages WHERE channel_id = $1),
                    (SELECT last_seq FROM channels WHERE id = $1)",
            &[&ch],
        )
        .await
        .expect("count messages");
    (row.get(0), row.get(1))
}

async fn client(db: &TestDb) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// Waits until a backend of this database other than the caller's waits for a lock.
async fn until_a_send_waits(db: &tokio_postgres::Client) {
    eventually(
        "a send waiting for a lock",
        Duration::from_secs(10),
        async || {
            db.query_one(
                "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .is_ok_and(|r| r.get::<_, i64>(0) > 0)
        },
    )
    .await;
}

#[tokio::test]
async fn refused_sends_write_nothing_and_leave_the_connection_usable() {
    for mode in MODES {
        let db = TestDb::new().await;
        // One connection: every send below reuses the connection of the refused ones.
        let store = Store::new(
            hermet_store::connect_pool(&db.url, 1).expect("pool"),
            store_config(mode, 40),
        );
        let (alice, bob, carol) = (
            user(&store, "alice").await,
            user(&store, "bob").await,
            user(&store, "carol").await,
        );
        let chat = store.add_friend(alice, bob).await.expect("befriend").value;
        let group = group_of(&store, alice, bob).await;
        let db_client = client(&db).await;

        assert_eq!(
            send(&store, alice, chat, "hi").await.expect("send"),
            1,
            "{mode:?}"
        );
        assert_eq!(
            code(send(&store, carol, chat, "x").await),
            "not_member",
            "{mode:?}"
        );
        assert_eq!(
            code(send(&store, carol, group, "x").await),
            "not_member",
            "{mode:?}"
        );
        assert_eq!(
            code(send(&store, alice, 987_654_321, "x").await),
            "channel_not_found",
            "{mode:?}"
        );
        store.delete_friend(bob, alice).await.expect("unfriend");
        assert_eq!(
            code(send(&store, alice, chat, "x").await),
            "not_friends",
            "{mode:?}"
        );
        assert_eq!(
            code(send(&store, bob, chat, "x").await),
            "not_friends",
            "{mode:?}"
        );
        store
            .remove_member(bob, group, bob)
            .await
            .expect("bob leaves");
        assert_eq!(
            code(send(&store, bob, group, "x").await),
            "not_member",
            "{mode:?}"
        );
        assert_eq!(written(&db_client, chat).await, (1, 1), "{mode:?}");
        assert_eq!(written(&db_client, group).await, (0, 0), "{mode:?}");

        // The one connection is in no transaction: the next send commits on its own.
        assert_eq!(
            send(&store, alice, group, "still here")
                .await
                .expect("send"),
            1
        );
        assert_eq!(written(&db_client, group).await, (1, 1), "{mode:?}");
        let idle: i64 = db_client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
                &[],
            )
            .await
            .expect("activity")
            .get(0);
        assert_eq!(
            idle, 0,
            "{mode:?}: a connection was left inside a transaction"
        );
    }
}

/// Runs `hold` (statements that lock what a send needs) in a transaction of another session,
/// starts a send of `from` into `ch`, waits until that send is blocked on a lock, then commits
/// the other transaction and returns what the send answered.
async fn send_while_held(
    db: &TestDb,
    store: &Store,
    (from, ch): (UserId, ChannelId),
    hold: &[(&str, &[&(dyn tokio_postgres::types::ToSql + Sync)])],
) -> Result<i64, StoreError> {
    let mut other = client(db).await;
    let tx = other.transaction().await.expect("begin");
    for (sql, params) in hold {
        tx.execute(*sql, params)
            .await
            .expect("the other transaction");
    }
    let sending = {
        let store = store.clone();
        tokio::spawn(async move { send(&store, from, ch, "raced").await })
    };
    until_a_send_waits(&client(db).await).await;
    tx.commit().await.expect("commit the other transaction");
    sending.await.expect("join")
}

const LOCK_CHANNEL: &str = "SELECT 1 FROM channels WHERE id = $1 FOR UPDATE";

/// A member leaves (the channel locked, the member row marked left) while a send of theirs
/// waits for the channel: once the leave commits, the send is refused and writes nothing.
#[tokio::test]
async fn a_leave_committed_while_a_send_waits_refuses_the_send() {
    for mode in MODES {
        let (db, store, alice, bob) = two_users(mode).await;
        let group = group_of(&store, alice, bob).await;
        let leave = "UPDATE channel_members SET left_at = 1, left_seq = 0
                      WHERE channel_id = $1 AND user_id = $2";
        let r = send_while_held(
            &db,
            &store,
            (bob, group),
            &[(LOCK_CHANNEL, &[&group]), (leave, &[&group, &bob])],
        )
        .await;
        assert_eq!(code(r), "not_member", "{mode:?}");
        assert_eq!(written(&client(&db).await, group).await, (0, 0), "{mode:?}");
    }
}

/// An unfriend commits while a send in the single chat waits for the channel.
#[tokio::test]
async fn an_unfriend_committed_while_a_send_waits_refuses_the_send() {
    for mode in MODES {
        let (db, store, alice, bob) = two_users(mode).await;
        let chat = store.add_friend(alice, bob).await.expect("befriend").value;
        let unfriend =
            "UPDATE friendships SET status = 'deleted' WHERE user_id = $1 AND friend_id = $2";
        let r = send_while_held(
            &db,
            &store,
            (alice, chat),
            &[(LOCK_CHANNEL, &[&chat]), (unfriend, &[&alice, &bob])],
        )
        .await;
        assert_eq!(code(r), "not_friends", "{mode:?}");
        assert_eq!(written(&client(&db).await, chat).await, (0, 0), "{mode:?}");
    }
}

/// A rename holds the sender's user row while a send waits for it: the message carries the
/// name the rename committed, never the one it replaced.
#[tokio::test]
async fn a_rename_committed_while_a_send_waits_names_the_message() {
    for mode in MODES {
        let (db, store, alice, bob) = two_users(mode).await;
        let chat = store.add_friend(alice, bob).await.expect("befriend").value;
        let rename = "UPDATE users SET nickname = 'alicia' WHERE id = $1";
        let r = send_while_held(&db, &store, (alice, chat), &[(rename, &[&alice])]).await;
        assert_eq!(r.expect("send"), 1, "{mode:?}");
        let name: String = client(&db)
            .await
            .query_one(
                "SELECT sender_name FROM messages WHERE channel_id = $1",
                &[&chat],
            )
            .await
            .expect("message")
            .get(0);
        assert_eq!(name, "alicia", "{mode:?}");
    }
}

/// In `cdc` the LSN a send answers (`X-Hermet-Lsn`, what read-your-writes waits for) is past
/// the send's commit record: read from the WAL itself (`pg_walinspect`), the commit of the
/// transaction that wrote the message ends at or before it. An LSN read inside the transaction
/// would end before the commit, and a reader could be told the write is visible too early.
#[tokio::test]
async fn a_cdc_send_answers_an_lsn_past_its_commit() {
    let (db, store, alice, bob) = two_users(SyncMode::Cdc).await;
    let chat = store.add_friend(alice, bob).await.expect("befriend").value;
    let db_client = client(&db).await;
    db_client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .await
        .expect("pg_walinspect (PostgreSQL's contrib, installed with the server)");
    let lsn_now = async || -> String {
        db_client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .expect("lsn")
            .get(0)
    };
    for text in ["one", "two", "three"] {
        let from = lsn_now().await;
        let content = Content::parse(text, &Limits::default()).expect("content");
        let sent = store
            .send_message(alice, chat, &content, &MessageType::text())
            .await
            .expect("send");
        let answered = sent.lsn.to_string();
        let row = db_client
            .query_one(
                "WITH x AS (SELECT xmin::text AS xid FROM messages
                             WHERE channel_id = $1 AND seq = $2)
                 SELECT (SELECT x.xid FROM x),
                        (SELECT w.end_lsn::text
                           FROM pg_get_wal_records_info($3::text::pg_lsn,
                                                        pg_current_wal_flush_lsn()) w, x
                          WHERE w.resource_manager = 'Transaction'
                            AND w.record_type = 'COMMIT' AND w.xid::text = x.xid),
                        (SELECT w.end_lsn <= $4::text::pg_lsn
                           FROM pg_get_wal_records_info($3::text::pg_lsn,
                                                        pg_current_wal_flush_lsn()) w, x
                          WHERE w.resource_manager = 'Transaction'
                            AND w.record_type = 'COMMIT' AND w.xid::text = x.xid)",
                &[&chat, &sent.value.seq, &from, &answered],
            )
            .await
            .expect("the send's commit record");
        let xid: Option<String> = row.get(0);
        let commit_end: Option<String> = row.get(1);
        let covered: Option<bool> = row.get(2);
        assert!(xid.is_some(), "the message of seq {}", sent.value.seq);
        assert_eq!(
            covered,
            Some(true),
            "transaction {xid:?}: commit record ends at {commit_end:?}, the send answered {answered}"
        );
    }
}
