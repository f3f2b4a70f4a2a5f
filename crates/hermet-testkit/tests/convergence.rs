//! Convergence of the `dual_write` read side, against the rebuild oracle:
//! - a property test runs random command sequences (every scenario of SPEC §4, valid or not)
//!   and asserts, after each sequence, that the read side equals a rebuild from the write side;
//! - a concurrency test runs random commands from several tasks at once and asserts the same.
//!
//! Seeds: `HERMET_PROPTEST_SEED` (default fixed) and `PROPTEST_CASES` (default 200); a failure
//! prints the seed and the shrunk command sequence.

use hermet_core::validate::{Avatar, Content, Label, Limits, MessageType, Name};
use hermet_store::commands::{ConversationPatch, FriendPatch, GroupPatch, ProfilePatch};
use hermet_store::{Store, StoreError};
use hermet_testkit::{render, TestDb};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use rand::{Rng, SeedableRng};

const USERS: usize = 5;
/// Short, so truncation is exercised on most messages.
const PREVIEW: usize = 5;

#[derive(Debug, Clone)]
enum Cmd {
    AddFriend(usize, usize),
    DeleteFriend(usize, usize),
    Friend(usize, usize, Option<String>, Option<bool>),
    Profile(usize, String, Option<String>),
    CreateGroup(usize, Vec<usize>, String),
    RenameGroup(usize, usize, String),
    AddMembers(usize, usize, Vec<usize>),
    Remove(usize, usize, usize),
    Send(usize, usize, String),
    Read(usize, usize, u8),
    Settings(usize, usize, Option<bool>, Option<bool>, Option<bool>),
}

fn user() -> impl Strategy<Value = usize> {
    0..USERS
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("hi".to_owned()),
        Just("héllo wörld".to_owned()),
        Just("日本語のテキスト".to_owned()),
        Just("👍👍👍👍👍👍".to_owned()),
        "[a-z ]{1,12}".prop_filter("not blank", |s| !s.trim().is_empty()),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Ann".to_owned()),
        Just("Bob".to_owned()),
        Just("Zoë".to_owned()),
        "[A-Za-z]{1,8}"
    ]
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        4 => (user(), user()).prop_map(|(a, b)| Cmd::AddFriend(a, b)),
        1 => (user(), user()).prop_map(|(a, b)| Cmd::DeleteFriend(a, b)),
        2 => (user(), user(), proptest::option::of(prop_oneof![Just(String::new()), name()]), proptest::option::of(any::<bool>()))
            .prop_map(|(a, b, r, s)| Cmd::Friend(a, b, r, s)),
        2 => (user(), name(), proptest::option::of(Just("https://img.example/a.png".to_owned())))
            .prop_map(|(u, n, a)| Cmd::Profile(u, n, a)),
        2 => (user(), proptest::collection::vec(user(), 0..4), name()).prop_map(|(o, m, n)| Cmd::CreateGroup(o, m, n)),
        1 => (user(), 0..8usize, name()).prop_map(|(a, g, n)| Cmd::RenameGroup(a, g, n)),
        2 => (user(), 0..8usize, proptest::collection::vec(user(), 1..3)).prop_map(|(a, g, m)| Cmd::AddMembers(a, g, m)),
        2 => (user(), 0..8usize, user()).prop_map(|(a, g, t)| Cmd::Remove(a, g, t)),
        8 => (user(), 0..12usize, text()).prop_map(|(u, c, t)| Cmd::Send(u, c, t)),
        3 => (user(), 0..12usize, any::<u8>()).prop_map(|(u, c, f)| Cmd::Read(u, c, f)),
        3 => (user(), 0..12usize, proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>()), proptest::option::of(any::<bool>()))
            .prop_map(|(u, c, p, m, h)| Cmd::Settings(u, c, p, m, h)),
    ]
}

/// Ids created so far in one sequence.
#[derive(Default)]
struct World {
    users: Vec<i64>,
    channels: Vec<i64>,
    groups: Vec<i64>,
}

fn pick(v: &[i64], i: usize) -> Option<i64> {
    (!v.is_empty()).then(|| v[i % v.len()])
}

/// Runs one command. Refusals (not found, forbidden, conflict, invalid) are fine: random
/// sequences are full of them. Anything else is a failure of the system.
async fn exec(store: &Store, w: &mut World, c: &Cmd) -> Result<(), String> {
    let l = Limits::default();
    let u = |i: usize| w.users[i];
    let r: Result<(), StoreError> = match c {
        Cmd::AddFriend(a, b) => store.add_friend(u(*a), u(*b)).await.map(|x| {
            if !w.channels.contains(&x.value) {
                w.channels.push(x.value);
            }
        }),
        Cmd::DeleteFriend(a, b) => store.delete_friend(u(*a), u(*b)).await.map(|_| ()),
        Cmd::Friend(a, b, remark, starred) => {
            let patch = FriendPatch {
                remark_name: remark
                    .as_deref()
                    .map(|r| Label::parse("remark_name", r, &l).unwrap()),
                group_name: None,
                starred: *starred,
            };
            store.update_friend(u(*a), u(*b), &patch).await.map(|_| ())
        }
        Cmd::Profile(who, nick, avatar) => {
            let patch = ProfilePatch {
                nickname: Some(Name::parse("nickname", nick, &l).unwrap()),
                avatar: avatar.as_deref().map(|a| Avatar::parse(a, &l).unwrap()),
            };
            store.update_profile(u(*who), &patch).await.map(|_| ())
        }
        Cmd::CreateGroup(owner, members, n) => {
            let ids: Vec<i64> = members.iter().map(|m| u(*m)).collect();
            let name = Name::parse("name", n, &l).unwrap();
            store
                .create_group(u(*owner), &name, &Avatar::default(), &ids)
                .await
                .map(|x| {
                    w.channels.push(x.value);
                    w.groups.push(x.value);
                })
        }
        Cmd::RenameGroup(actor, g, n) => match pick(&w.groups, *g) {
            None => Ok(()),
            Some(g) => {
                let patch = GroupPatch {
                    name: Some(Name::parse("name", n, &l).unwrap()),
                    avatar: None,
                };
                store.update_group(u(*actor), g, &patch).await.map(|_| ())
            }
        },
        Cmd::AddMembers(actor, g, members) => match pick(&w.groups, *g) {
            None => Ok(()),
            Some(g) => {
                let ids: Vec<i64> = members.iter().map(|m| u(*m)).collect();
                store.add_members(u(*actor), g, &ids).await.map(|_| ())
            }
        },
        Cmd::Remove(actor, g, target) => match pick(&w.groups, *g) {
            None => Ok(()),
            Some(g) => store
                .remove_member(u(*actor), g, u(*target))
                .await
                .map(|_| ()),
        },
        Cmd::Send(who, ch, t) => match pick(&w.channels, *ch) {
            None => Ok(()),
            Some(ch) => {
                let content = Content::parse(t, &l).unwrap();
                store
                    .send_message(u(*who), ch, &content, &MessageType::text())
                    .await
                    .map(|_| ())
            }
        },
        Cmd::Read(who, ch, frac) => match pick(&w.channels, *ch) {
            None => Ok(()),
            Some(ch) => {
                // A seq somewhere in 0..=last (and sometimes past it).
                let last = store
                    .list_messages(u(*who), ch, None, 1)
                    .await
                    .ok()
                    .and_then(|m| m.first().map(|m| m.seq))
                    .unwrap_or(0);
                let seq = (last + 1) * i64::from(*frac) / 255;
                store.mark_read(u(*who), ch, seq).await.map(|_| ())
            }
        },
        Cmd::Settings(who, ch, pinned, muted, hidden) => match pick(&w.channels, *ch) {
            None => Ok(()),
            Some(ch) => {
                let patch = ConversationPatch {
                    pinned: *pinned,
                    muted: *muted,
                    hidden: *hidden,
                };
                store
                    .update_conversation(u(*who), ch, patch)
                    .await
                    .map(|_| ())
            }
        },
    };
    match r {
        Ok(())
        | Err(StoreError::NotFound { .. })
        | Err(StoreError::Forbidden { .. })
        | Err(StoreError::Conflict { .. })
        | Err(StoreError::Invalid(_)) => Ok(()),
        Err(e) => Err(format!("{c:?} failed: {e}")),
    }
}

const RESET: &str = "TRUNCATE users, channels, channel_members, friendships, messages,
    user_conversation_view, user_contact_view, conversation_reverse_index, contact_reverse_index
    RESTART IDENTITY CASCADE";

async fn run_sequence(db: &TestDb, store: &Store, cmds: &[Cmd]) -> Result<(), String> {
    let conn = store.pool().get().await.map_err(|e| e.to_string())?;
    conn.batch_execute(RESET).await.map_err(|e| e.to_string())?;
    drop(conn);
    let l = Limits::default();
    let mut w = World::default();
    for i in 0..USERS {
        let n = Name::parse("nickname", &format!("user{i}"), &l).unwrap();
        w.users.push(
            store
                .create_user(&n, &Avatar::default())
                .await
                .map_err(|e| e.to_string())?
                .value
                .id,
        );
    }
    for c in cmds {
        exec(store, &mut w, c).await?;
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

fn seed() -> u64 {
    std::env::var("HERMET_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6865_726d_6574)
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
    let seed = seed();
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let result = runner.run(&proptest::collection::vec(cmd(), 1..40), |cmds| {
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
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed() ^ t);
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
