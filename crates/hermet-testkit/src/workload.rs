//! Random command sequences covering every write scenario of docs/design.md §3, run against a [`Store`]
//! in any sync mode. Shared by the tests that compare modes, crash projectors, or check the
//! projection's properties.
//!
//! - [`cmd`] is a proptest strategy (it shrinks); [`generate`] draws a fixed sequence from a seed,
//!   so several runs (one per mode) can execute the very same workload;
//! - [`exec`] runs one command; refusals (not found, forbidden, conflict, invalid) are part of a
//!   random workload and are not failures;
//! - run sequentially on a fresh database, a sequence gives the same ids and the same write-side
//!   state in every mode (only timestamps differ): [`exec`] sleeps a little after commands that
//!   add members, so `joined_at` (which decides who inherits a group) never ties across commands.

use std::collections::BTreeMap;
use std::time::Duration;

use hermet_core::validate::{Avatar, Content, Label, Limits, MessageType, Name};
use hermet_store::commands::{ConversationPatch, FriendPatch, GroupPatch, ProfilePatch};
use hermet_store::{Store, StoreError};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Users created before a sequence runs.
pub const USERS: usize = 6;

#[derive(Debug, Clone)]
pub enum Cmd {
    AddFriend(usize, usize),
    DeleteFriend(usize, usize),
    /// Remark, contact group, starred.
    Friend(usize, usize, Option<String>, Option<String>, Option<bool>),
    /// Nickname, avatar.
    Profile(usize, String, Option<String>),
    CreateGroup(usize, Vec<usize>, String),
    /// Rename and/or re-avatar (actor, group, name, avatar).
    UpdateGroup(usize, usize, Option<String>, Option<String>),
    AddMembers(usize, usize, Vec<usize>),
    /// The owner removes someone (actor, group, target).
    Remove(usize, usize, usize),
    Leave(usize, usize),
    Send(usize, usize, String),
    /// Mark read up to a fraction (of 255) of the channel's last seq.
    Read(usize, usize, u8),
    /// Pin, mute, hide.
    Settings(usize, usize, Option<bool>, Option<bool>, Option<bool>),
}

impl Cmd {
    /// The scenario's name, for counting what a workload covered.
    pub fn kind(&self) -> &'static str {
        match self {
            Cmd::AddFriend(..) => "add_friend",
            Cmd::DeleteFriend(..) => "delete_friend",
            Cmd::Friend(..) => "update_friend",
            Cmd::Profile(..) => "update_profile",
            Cmd::CreateGroup(..) => "create_group",
            Cmd::UpdateGroup(..) => "update_group",
            Cmd::AddMembers(..) => "add_members",
            Cmd::Remove(..) => "remove_member",
            Cmd::Leave(..) => "leave_group",
            Cmd::Send(..) => "send_message",
            Cmd::Read(..) => "mark_read",
            Cmd::Settings(..) => "update_conversation",
        }
    }

    /// Every scenario [`cmd`] produces.
    pub const KINDS: [&'static str; 12] = [
        "add_friend",
        "delete_friend",
        "update_friend",
        "update_profile",
        "create_group",
        "update_group",
        "add_members",
        "remove_member",
        "leave_group",
        "send_message",
        "mark_read",
        "update_conversation",
    ];
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

fn avatar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("https://img.example/a.png".to_owned()),
        Just("https://img.example/b.png".to_owned()),
    ]
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), name()]
}

/// One random command; sends are the most frequent, as in a real workload.
pub fn cmd() -> impl Strategy<Value = Cmd> {
    use proptest::option::of;
    prop_oneof![
        4 => (user(), user()).prop_map(|(a, b)| Cmd::AddFriend(a, b)),
        1 => (user(), user()).prop_map(|(a, b)| Cmd::DeleteFriend(a, b)),
        2 => (user(), user(), of(label()), of(label()), of(any::<bool>()))
            .prop_map(|(a, b, r, g, s)| Cmd::Friend(a, b, r, g, s)),
        2 => (user(), name(), of(avatar())).prop_map(|(u, n, a)| Cmd::Profile(u, n, a)),
        1 => (user(), proptest::collection::vec(user(), 0..4), name())
            .prop_map(|(o, m, n)| Cmd::CreateGroup(o, m, n)),
        2 => (user(), 0..8usize, of(name()), of(avatar()))
            .prop_map(|(a, g, n, av)| Cmd::UpdateGroup(a, g, n, av)),
        2 => (user(), 0..8usize, proptest::collection::vec(user(), 1..3))
            .prop_map(|(a, g, m)| Cmd::AddMembers(a, g, m)),
        2 => (user(), 0..8usize, user()).prop_map(|(a, g, t)| Cmd::Remove(a, g, t)),
        1 => (user(), 0..8usize).prop_map(|(a, g)| Cmd::Leave(a, g)),
        10 => (user(), 0..12usize, text()).prop_map(|(u, c, t)| Cmd::Send(u, c, t)),
        3 => (user(), 0..12usize, any::<u8>()).prop_map(|(u, c, f)| Cmd::Read(u, c, f)),
        3 => (user(), 0..12usize, of(any::<bool>()), of(any::<bool>()), of(any::<bool>()))
            .prop_map(|(u, c, p, m, h)| Cmd::Settings(u, c, p, m, h)),
    ]
}

/// `HERMET_PROPTEST_SEED`, or a fixed default.
pub fn seed() -> u64 {
    std::env::var("HERMET_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6865_726d_6574)
}

/// A proptest runner whose randomness comes from `seed` only.
pub fn runner(seed: u64, cases: u32) -> TestRunner {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key))
}

/// `len` commands drawn from [`cmd`] with `seed`: the same seed gives the same sequence.
pub fn generate(seed: u64, len: usize) -> Vec<Cmd> {
    let mut runner = runner(seed, 1);
    let strategy = cmd();
    (0..len)
        .map(|_| strategy.new_tree(&mut runner).expect("a command").current())
        .collect()
}

/// Ids created so far in one sequence.
#[derive(Debug, Default, Clone)]
pub struct World {
    pub users: Vec<i64>,
    pub channels: Vec<i64>,
    pub groups: Vec<i64>,
    /// Commands that changed something, by [`Cmd::kind`].
    pub applied: BTreeMap<&'static str, usize>,
    /// Set when several tasks run commands at once: a transaction that lost a race
    /// (`StoreError::Retry`, refused and changed nothing) is then counted, not a failure.
    pub concurrent: bool,
    pub retries: usize,
}

fn pick(v: &[i64], i: usize) -> Option<i64> {
    (!v.is_empty()).then(|| v[i % v.len()])
}

/// The actor of an owner-only command: mostly the group's owner (so renames and removals
/// happen), sometimes the drawn user (so refusals happen too).
async fn owner_or(store: &Store, w: &World, group: i64, actor: usize) -> Result<i64, String> {
    let drawn = w.users[actor];
    if actor.is_multiple_of(3) {
        return Ok(drawn);
    }
    let conn = store.pool().get().await.map_err(|e| e.to_string())?;
    let owner = conn
        .query_opt(
            "SELECT user_id FROM channel_members
              WHERE channel_id = $1 AND role = 'owner' AND left_at IS NULL",
            &[&group],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(owner.map_or(drawn, |r| r.get(0)))
}

/// A channel for a command of `user` in a channel: mostly one of the user's own (so sends, reads
/// and settings mostly succeed), sometimes any channel (so refusals happen too).
async fn channel_of(store: &Store, w: &World, user: i64, i: usize) -> Result<Option<i64>, String> {
    if i % 6 == 5 {
        return Ok(pick(&w.channels, i / 6));
    }
    let conn = store.pool().get().await.map_err(|e| e.to_string())?;
    let mine: Vec<i64> = conn
        .query(
            "SELECT channel_id FROM channel_members WHERE user_id = $1 AND left_at IS NULL
              ORDER BY channel_id",
            &[&user],
        )
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(pick(&mine, i))
}

/// Creates the [`USERS`] users a sequence works with.
pub async fn setup(store: &Store) -> Result<World, String> {
    let l = Limits::default();
    let mut w = World::default();
    for i in 0..USERS {
        let n = Name::parse("nickname", &format!("user{i}"), &l).map_err(|e| e.to_string())?;
        let u = store
            .create_user(&n, &Avatar::default())
            .await
            .map_err(|e| e.to_string())?;
        w.users.push(u.value.id);
    }
    Ok(w)
}

/// Runs one command. Refusals are fine; anything else is a failure of the system (a lost race,
/// `Retry`, too, unless [`World::concurrent`]).
pub async fn exec(store: &Store, w: &mut World, c: &Cmd) -> Result<(), String> {
    let l = Limits::default();
    let users = w.users.clone();
    let u = |i: usize| users[i];
    let label = |s: &str| Label::parse("label", s, &l).expect("generated label is valid");
    let name = |s: &str| Name::parse("name", s, &l).expect("generated name is valid");
    let avatar = |s: &str| Avatar::parse(s, &l).expect("generated avatar is valid");
    let mut joins = false;
    let r: Result<bool, StoreError> = match c {
        Cmd::AddFriend(a, b) => {
            joins = true;
            store.add_friend(u(*a), u(*b)).await.map(|x| {
                if !w.channels.contains(&x.value) {
                    w.channels.push(x.value);
                }
                true
            })
        }
        Cmd::DeleteFriend(a, b) => store.delete_friend(u(*a), u(*b)).await.map(|_| true),
        Cmd::Friend(a, b, remark, group, starred) => {
            let patch = FriendPatch {
                remark_name: remark.as_deref().map(label),
                group_name: group.as_deref().map(label),
                starred: *starred,
            };
            store
                .update_friend(u(*a), u(*b), &patch)
                .await
                .map(|_| true)
        }
        Cmd::Profile(who, nick, av) => {
            let patch = ProfilePatch {
                nickname: Some(name(nick)),
                avatar: av.as_deref().map(avatar),
            };
            store.update_profile(u(*who), &patch).await.map(|_| true)
        }
        Cmd::CreateGroup(owner, members, n) => {
            joins = true;
            let ids: Vec<i64> = members.iter().map(|m| u(*m)).collect();
            store
                .create_group(u(*owner), &name(n), &Avatar::default(), &ids)
                .await
                .map(|x| {
                    w.channels.push(x.value);
                    w.groups.push(x.value);
                    true
                })
        }
        Cmd::UpdateGroup(actor, g, n, av) => match pick(&w.groups, *g) {
            None => Ok(false),
            Some(g) => {
                let patch = GroupPatch {
                    name: n.as_deref().map(name),
                    avatar: av.as_deref().map(avatar),
                };
                let actor = owner_or(store, w, g, *actor).await?;
                store.update_group(actor, g, &patch).await.map(|_| true)
            }
        },
        Cmd::AddMembers(actor, g, members) => match pick(&w.groups, *g) {
            None => Ok(false),
            Some(g) => {
                joins = true;
                let ids: Vec<i64> = members.iter().map(|m| u(*m)).collect();
                store.add_members(u(*actor), g, &ids).await.map(|_| true)
            }
        },
        Cmd::Remove(actor, g, target) => match pick(&w.groups, *g) {
            None => Ok(false),
            Some(g) => {
                let actor = owner_or(store, w, g, *actor).await?;
                store
                    .remove_member(actor, g, u(*target))
                    .await
                    .map(|_| true)
            }
        },
        Cmd::Leave(actor, g) => match pick(&w.groups, *g) {
            None => Ok(false),
            Some(g) => store
                .remove_member(u(*actor), g, u(*actor))
                .await
                .map(|_| true),
        },
        Cmd::Send(who, ch, t) => match channel_of(store, w, u(*who), *ch).await? {
            None => Ok(false),
            Some(ch) => {
                let content = Content::parse(t, &l).expect("generated content is valid");
                store
                    .send_message(u(*who), ch, &content, &MessageType::text())
                    .await
                    .map(|_| true)
            }
        },
        Cmd::Read(who, ch, frac) => match channel_of(store, w, u(*who), *ch).await? {
            None => Ok(false),
            Some(ch) => {
                // A seq somewhere in 0..=last (and sometimes past it).
                let last = store
                    .list_messages(
                        u(*who),
                        ch,
                        hermet_store::commands::MessagePage::Before(None),
                        1,
                    )
                    .await
                    .ok()
                    .and_then(|m| m.first().map(|m| m.seq))
                    .unwrap_or(0);
                let seq = (last + 1) * i64::from(*frac) / 255;
                store.mark_read(u(*who), ch, seq).await.map(|_| true)
            }
        },
        Cmd::Settings(who, ch, pinned, muted, hidden) => {
            match channel_of(store, w, u(*who), *ch).await? {
                None => Ok(false),
                Some(ch) => {
                    let patch = ConversationPatch {
                        pinned: *pinned,
                        muted: *muted,
                        hidden: *hidden,
                    };
                    store
                        .update_conversation(u(*who), ch, patch)
                        .await
                        .map(|_| true)
                }
            }
        }
    };
    if joins {
        // `joined_at` orders heirs of a group: keep it strictly increasing across commands, so
        // every run of a sequence makes the same choices.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    match r {
        Ok(applied) => {
            if applied {
                *w.applied.entry(c.kind()).or_default() += 1;
            }
            Ok(())
        }
        Err(StoreError::NotFound { .. })
        | Err(StoreError::Forbidden { .. })
        | Err(StoreError::Conflict { .. })
        | Err(StoreError::Invalid(_)) => Ok(()),
        Err(StoreError::Retry(_)) if w.concurrent => {
            w.retries += 1;
            Ok(())
        }
        Err(e) => Err(format!("{c:?} failed: {e}")),
    }
}

/// Runs a whole sequence after [`setup`].
pub async fn run(store: &Store, cmds: &[Cmd]) -> Result<World, String> {
    let mut w = setup(store).await?;
    for c in cmds {
        exec(store, &mut w, c).await?;
    }
    Ok(w)
}
