//! Creating a [`Plan`]'s users, friendships and groups through the store commands, as a client
//! would, with a bounded number of commands in flight; the ids the store gave back
//! ([`Population`]) are what the operation streams' indexes resolve to.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use hermet_core::rows::{ChannelId, UserId};
use hermet_core::validate::{Avatar, Name};
use hermet_store::{Store, StoreError};
use serde::Serialize;

use super::{ConvRef, Plan};
use crate::BenchError;

/// The ids the store gave to the plan's users and conversations.
#[derive(Debug, Clone)]
pub struct Population {
    pub users: Vec<UserId>,
    pub singles: Vec<ChannelId>,
    pub groups: Vec<ChannelId>,
    pub timings: PopulateTimings,
}

/// Wall time of each setup phase.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PopulateTimings {
    pub users_secs: f64,
    pub friendships_secs: f64,
    pub groups_secs: f64,
}

impl Population {
    pub fn user(&self, i: u32) -> UserId {
        self.users[i as usize]
    }

    pub fn channel(&self, conv: ConvRef) -> ChannelId {
        match conv {
            ConvRef::Single(i) => self.singles[i as usize],
            ConvRef::Group(g) => self.groups[g as usize],
        }
    }
}

/// How [`populate_with`] runs.
#[derive(Debug, Clone, Copy)]
pub struct PopulateOptions {
    /// Commands in flight at once.
    pub concurrency: usize,
    /// Print progress lines to stderr.
    pub progress: bool,
}

impl Default for PopulateOptions {
    fn default() -> Self {
        PopulateOptions {
            concurrency: 8,
            progress: false,
        }
    }
}

/// Creates the plan's users, friendships and groups (8 commands in flight).
pub async fn populate(store: &Store, plan: &Plan) -> Result<Population, BenchError> {
    populate_with(store, plan, PopulateOptions::default()).await
}

/// Nickname of user `i` at a profile revision (0 at creation).
pub fn nickname(i: u32, revision: u32) -> String {
    if revision == 0 {
        format!("user{i}")
    } else {
        format!("user{i} r{revision}")
    }
}

/// Avatar URL of user `i` at a profile revision.
pub fn avatar(i: u32, revision: u32) -> String {
    format!("https://img.example.com/u/{i}/{revision}.png")
}

/// Runs a store command again when it lost a race (deadlock, serialization failure).
async fn retrying<T, F, Fut>(mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Err(StoreError::Retry(_)) if attempt < 8 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(2u64 << attempt.min(6))).await;
            }
            other => return other,
        }
    }
}

struct Progress {
    on: bool,
    phase: &'static str,
    total: usize,
    done: usize,
    next: usize,
    started: Instant,
}

impl Progress {
    fn new(on: bool, phase: &'static str, total: usize) -> Self {
        Progress {
            on,
            phase,
            total,
            done: 0,
            next: total / 10,
            started: Instant::now(),
        }
    }

    fn tick(&mut self) {
        self.done += 1;
        if self.on && self.done >= self.next && self.done < self.total {
            eprintln!(
                "  {}: {}/{} ({:.0}/s)",
                self.phase,
                self.done,
                self.total,
                self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
            );
            self.next += (self.total / 10).max(1);
        }
    }

    fn finish(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if self.on {
            eprintln!(
                "  {}: {} in {:.1} s ({:.0}/s)",
                self.phase,
                self.total,
                secs,
                self.total as f64 / secs.max(1e-9)
            );
        }
        secs
    }
}

fn setup_err(what: &'static str) -> impl Fn(StoreError) -> BenchError {
    move |source| BenchError::Setup { what, source }
}

/// Creates the plan's users, friendships and groups with `opts.concurrency` commands in flight.
pub async fn populate_with(
    store: &Store,
    plan: &Plan,
    opts: PopulateOptions,
) -> Result<Population, BenchError> {
    let k = opts.concurrency.max(1);
    let limits = store.config().limits;

    let mut progress = Progress::new(opts.progress, "users", plan.users());
    let mut users = vec![0; plan.users()];
    {
        let mut created = stream::iter(0..plan.users() as u32)
            .map(|i| async move {
                let name = Name::parse("nickname", &nickname(i, 0), &limits)?;
                let avatar = Avatar::parse(&avatar(i, 0), &limits)?;
                let u = retrying(|| store.create_user(&name, &avatar)).await?;
                Ok::<_, StoreError>((i, u.value.id))
            })
            .buffer_unordered(k)
            .map_err(setup_err("create user"));
        while let Some((i, id)) = created.try_next().await? {
            users[i as usize] = id;
            progress.tick();
        }
    }
    let users_secs = progress.finish();

    let mut progress = Progress::new(opts.progress, "friendships", plan.friendships.len());
    let mut singles = vec![0; plan.friendships.len()];
    {
        let users = &users;
        let mut added = stream::iter(plan.friendships.iter().enumerate())
            .map(|(i, &(a, b))| async move {
                let (a, b) = (users[a as usize], users[b as usize]);
                let ch = retrying(|| store.add_friend(a, b)).await?;
                Ok::<_, StoreError>((i, ch.value))
            })
            .buffer_unordered(k)
            .map_err(setup_err("add friend"));
        while let Some((i, ch)) = added.try_next().await? {
            singles[i] = ch;
            progress.tick();
        }
    }
    let friendships_secs = progress.finish();

    let mut progress = Progress::new(opts.progress, "groups", plan.groups.len());
    let mut groups = vec![0; plan.groups.len()];
    {
        let users = &users;
        let mut created = stream::iter(plan.groups.iter().enumerate())
            .map(|(i, g)| async move {
                let name = Name::parse("name", &format!("group {i}"), &limits)?;
                let avatar = Avatar::parse(&format!("https://img.example.com/g/{i}.png"), &limits)?;
                let members: Vec<UserId> = g.members.iter().map(|&m| users[m as usize]).collect();
                let owner = users[g.owner as usize];
                let ch = retrying(|| store.create_group(owner, &name, &avatar, &members)).await?;
                Ok::<_, StoreError>((i, ch.value))
            })
            .buffer_unordered(k)
            .map_err(setup_err("create group"));
        while let Some((i, ch)) = created.try_next().await? {
            groups[i] = ch;
            progress.tick();
        }
    }
    let groups_secs = progress.finish();

    Ok(Population {
        users,
        singles,
        groups,
        timings: PopulateTimings {
            users_secs,
            friendships_secs,
            groups_secs,
        },
    })
}
