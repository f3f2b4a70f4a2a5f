//! Convergence of the `dual_write` read side, against the rebuild oracle:
//! - a property test runs random command sequences (`hermet_testkit::workload`: every scenario
//!   of design §3 (docs/design.md), valid or not) and asserts, after each sequence, that the read side equals a
//!   rebuild from the write side;
//! - a concurrency test runs random commands from several tasks at once and asserts the same.
//!
//! Seeds: `HERMET_PROPTEST_SEED` (default fixed) and `PROPTEST_CASES` (default 200); a failure
//! prints the seed and the shrunk command sequence.

use hermet_core::validate::{Avatar, Content, Label, Limits, MessageType, Name};
use hermet_store::commands::{ConversationPatch, FriendPatch, ProfilePatch};
use hermet_store::{Store, StoreError};
use hermet_testkit::workload::{self, Cmd};
use hermet_testkit::{render, TestDb};
use proptest::test_runner::TestCaseError;
use rand::{Rng, SeedableRng};

/// Short, so truncation is exercised on most messages.
const PREVIEW: usize = 5;

const RESET: &str = "TRUNCATE users, channels, channel_members, friendships, messages,
    user_conversation_view, channel_view, user_contact_view, conversation_reverse_index,
    contact_reverse_index
    RESTART IDENTITY CASCADE";

/// `RESET` truncates every write-side table.
#[test]
fn reset_names_the_write_side() {
    let prefix = format!("TRUNCATE {},", hermet_core::rows::WRITE_TABLES.join(", "));
    assert!(RESET.starts_with(&prefix), "{RESET}");
}

async fn run_sequence(db: &TestDb, store: &Store, cmds: &[Cmd]) -> Result<(), String> {
    let conn = store.pool().get().await.map_err(|e| e.to_string())?;
    conn.batch_execute(RESET).await.map_err(|e| e.to_string())?;
    drop(conn);
    let mut w = workload::setup(store).await?;
    for c in cmds {
        workload::exec(store, &mut w, c).await?;
    }
    let d = db.diff(store).await;
    if d.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "read side differs from the oracle:\n{}",
            render(&d)
        ))
    }
}

#[test]
fn random_command_sequences_converge_to_the_oracle() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TestDb::new());
    let store = db.store(PREVIEW);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let seed = workload::seed();
    let mut runner = workload::runner(seed, cases);
    let result = runner.run(&proptest::collection::vec(workload::cmd(), 1..40), |cmds| {
        rt.block_on(run_sequence(&db, &store, &cmds))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("HERMET_PROPTEST_SEED={seed}: {e}");
    }
}

/// Commands from several tasks at once: row locks and version guards must keep the read side
/// equal to the oracle whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_converge_to_the_oracle() {
    let db = TestDb::new().await;
    let store = db.store(PREVIEW);
    let l = Limits::default();
    let mut users = Vec::new();
    for i in 0..6 {
        let n = Name::parse("nickname", &format!("c{i}"), &l).unwrap();
        users.push(
            store
                .create_user(&n, &Avatar::default())
                .await
                .unwrap()
                .value
                .id,
        );
    }
    // A fixed web of friendships and two groups, so most random commands do something.
    let mut channels = Vec::new();
    for i in 0..users.len() {
        for j in (i + 1)..users.len() {
            channels.push(store.add_friend(users[i], users[j]).await.unwrap().value);
        }
    }
    let name = Name::parse("name", "g", &l).unwrap();
    let g1 = store
        .create_group(users[0], &name, &Avatar::default(), &users[1..4])
        .await
        .unwrap()
        .value;
    let g2 = store
        .create_group(users[3], &name, &Avatar::default(), &users)
        .await
        .unwrap()
        .value;
    channels.extend([g1, g2]);

    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let store = store.clone();
        let users = users.clone();
        let channels = channels.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(workload::seed() ^ t);
            let l = Limits::default();
            let mut retries = 0u32;
            for i in 0..60 {
                let u = users[rng.gen_range(0..users.len())];
                let v = users[rng.gen_range(0..users.len())];
                let ch = channels[rng.gen_range(0..channels.len())];
                let r = match rng.gen_range(0..10) {
                    0..=4 => {
                        let c = Content::parse(&format!("t{t} m{i}"), &l).unwrap();
                        store
                            .send_message(u, ch, &c, &MessageType::text())
                            .await
                            .map(|_| ())
                    }
                    5 => {
                        let n = Name::parse("nickname", &format!("n{t}x{i}"), &l).unwrap();
                        store
                            .update_profile(
                                u,
                                &ProfilePatch {
                                    nickname: Some(n),
                                    avatar: None,
                                },
                            )
                            .await
                            .map(|_| ())
                    }
                    6 => store
                        .mark_read(u, ch, rng.gen_range(0..4))
                        .await
                        .map(|_| ()),
                    7 => {
                        let p = FriendPatch {
                            remark_name: Some(
                                Label::parse("remark_name", &format!("r{i}"), &l).unwrap(),
                            ),
                            group_name: None,
                            starred: Some(rng.gen()),
                        };
                        store.update_friend(u, v, &p).await.map(|_| ())
                    }
                    8 => {
                        let p = ConversationPatch {
                            pinned: Some(rng.gen()),
                            muted: None,
                            hidden: Some(rng.gen()),
                        };
                        store.update_conversation(u, ch, p).await.map(|_| ())
                    }
                    _ => {
                        if rng.gen() {
                            store.delete_friend(u, v).await.map(|_| ())
                        } else {
                            store.add_friend(u, v).await.map(|_| ())
                        }
                    }
                };
                match r {
                    Ok(())
                    | Err(StoreError::NotFound { .. })
                    | Err(StoreError::Forbidden { .. })
                    | Err(StoreError::Conflict { .. })
                    | Err(StoreError::Invalid(_)) => {}
                    // A lost race is reported to the client as retryable, and changes nothing.
                    Err(StoreError::Retry(_)) => retries += 1,
                    Err(e) => panic!("task {t} command {i}: {e}"),
                }
            }
            retries
        }));
    }
    let mut retries = 0;
    for t in tasks {
        retries += t.await.unwrap();
    }
    eprintln!("transactions that lost a race and were refused as retryable: {retries}");
    db.assert_converged(&store).await;
}
