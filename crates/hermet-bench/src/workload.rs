//! A realistic, seeded IM workload.
//!
//! [`Plan::generate`] is pure: from a [`WorkloadSpec`] it derives, deterministically for the seed,
//! - a friend graph whose degrees are heavy-tailed (Lomax / Pareto II, calibrated so that the mean
//!   degree is `mean_friends`, capped at `max_friends`), paired with the configuration model;
//! - groups of varied sizes (buckets, default: many of 3–10, some of 11–49 and 50–200, a few up to
//!   500), whose members are half the owner's friends and half active users;
//! - per user, a preference order over their conversations: who they talk to is Zipf-distributed
//!   over that order, and how much they talk is proportional to their number of conversations.
//!
//! Operations refer to users and conversations by index ([`Op`], [`ConvRef`]); an [`OpStream`]
//! draws them from the plan with its own seed. [`populate`] creates the plan's users, friendships
//! and groups through the store commands, and returns the ids ([`Population`]).

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use hermet_core::validate::Limits;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Pareto, WeightedAliasIndex, WeightedIndex, Zipf};
use serde::Serialize;

use crate::BenchError;

mod populate;

pub use populate::{
    avatar, nickname, populate, populate_with, PopulateOptions, PopulateTimings, Population,
};

/// A range of group sizes (owner included) and how often groups fall in it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SizeBucket {
    pub weight: u32,
    pub min: usize,
    pub max: usize,
}

/// The relative frequency of each operation in the steady phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OpMix {
    pub send: u32,
    pub mark_read: u32,
    pub update_profile: u32,
    pub list_conversations: u32,
}

impl Default for OpMix {
    fn default() -> Self {
        OpMix {
            send: 80,
            mark_read: 10,
            update_profile: 5,
            list_conversations: 5,
        }
    }
}

impl OpMix {
    fn weights(&self) -> [u32; 4] {
        [
            self.send,
            self.mark_read,
            self.update_profile,
            self.list_conversations,
        ]
    }

    /// The mix that only sends messages.
    pub fn send_only() -> Self {
        OpMix {
            send: 1,
            mark_read: 0,
            update_profile: 0,
            list_conversations: 0,
        }
    }
}

impl fmt::Display for OpMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "send={},read={},profile={},list={}",
            self.send, self.mark_read, self.update_profile, self.list_conversations
        )
    }
}

/// Parses `send=80,read=10,profile=5,list=5` (omitted kinds are 0).
impl FromStr for OpMix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mix = OpMix {
            send: 0,
            mark_read: 0,
            update_profile: 0,
            list_conversations: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected kind=weight"))?;
            let v: u32 = v.trim().parse().map_err(|e| format!("`{part}`: {e}"))?;
            match k.trim() {
                "send" => mix.send = v,
                "read" | "mark_read" => mix.mark_read = v,
                "profile" | "update_profile" => mix.update_profile = v,
                "list" | "list_conversations" => mix.list_conversations = v,
                other => {
                    return Err(format!(
                        "unknown operation `{other}` (send, read, profile, list)"
                    ))
                }
            }
        }
        if mix.weights().iter().all(|&w| w == 0) {
            return Err("at least one operation needs a positive weight".to_owned());
        }
        Ok(mix)
    }
}

/// What to generate. [`WorkloadSpec::new`] gives realistic defaults for a user count and seed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadSpec {
    pub users: usize,
    pub seed: u64,
    /// Target mean of the friend count (degree) per user.
    pub mean_friends: f64,
    /// No user has more friends than this.
    pub max_friends: usize,
    /// Shape of the degree tail (Lomax alpha): smaller is heavier; must be > 1.
    pub friend_tail: f64,
    /// Number of groups.
    pub groups: usize,
    pub group_sizes: Vec<SizeBucket>,
    /// Largest group allowed (the store's limit, owner included).
    pub max_group_members: usize,
    /// Zipf exponent of a user's preference over their conversations.
    pub conversation_skew: f64,
    /// Median message length in characters (log-normal).
    pub median_content_chars: u32,
    pub mix: OpMix,
}

impl WorkloadSpec {
    pub fn new(users: usize, seed: u64) -> Self {
        WorkloadSpec {
            users,
            seed,
            mean_friends: 20.0,
            max_friends: 1000,
            friend_tail: 2.5,
            groups: users / 10,
            group_sizes: vec![
                SizeBucket {
                    weight: 80,
                    min: 3,
                    max: 10,
                },
                SizeBucket {
                    weight: 12,
                    min: 11,
                    max: 49,
                },
                SizeBucket {
                    weight: 7,
                    min: 50,
                    max: 200,
                },
                SizeBucket {
                    weight: 1,
                    min: 201,
                    max: 500,
                },
            ],
            max_group_members: Limits::default().max_group_members,
            conversation_skew: 1.0,
            median_content_chars: 24,
            mix: OpMix::default(),
        }
    }

    fn check(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::InvalidSpec(m));
        if self.users < 2 || self.users > u32::MAX as usize {
            return bad(format!("users must be between 2 and {}", u32::MAX));
        }
        if !(self.mean_friends.is_finite() && self.mean_friends >= 0.0) {
            return bad("mean_friends must be a non-negative number".into());
        }
        if !(self.friend_tail.is_finite() && self.friend_tail > 1.0) {
            return bad("friend_tail must be greater than 1".into());
        }
        if !(self.conversation_skew.is_finite() && self.conversation_skew > 0.0) {
            return bad("conversation_skew must be positive".into());
        }
        if self.groups > 0 {
            if self.group_sizes.iter().all(|b| b.weight == 0) {
                return bad("group_sizes needs a bucket with a positive weight".into());
            }
            if self.group_sizes.iter().any(|b| b.min < 2 || b.min > b.max) {
                return bad("group size buckets need 2 <= min <= max".into());
            }
            if self.max_group_members < 2 {
                return bad("max_group_members must be at least 2".into());
            }
        }
        if self.mix.weights().iter().all(|&w| w == 0) {
            return bad("the operation mix needs a positive weight".into());
        }
        Ok(())
    }
}

/// A conversation of the plan: a friendship's single chat or a group, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ConvRef {
    Single(u32),
    Group(u32),
}

/// A planned group: its owner and the other members (user indexes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupPlan {
    pub owner: u32,
    pub members: Vec<u32>,
}

impl GroupPlan {
    /// Members, owner included.
    pub fn size(&self) -> usize {
        self.members.len() + 1
    }
}

/// One operation of the steady phase, over user indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    Send {
        sender: u32,
        conv: ConvRef,
        content_chars: u32,
    },
    MarkRead {
        user: u32,
        conv: ConvRef,
    },
    UpdateProfile {
        user: u32,
        revision: u32,
    },
    ListConversations {
        user: u32,
    },
}

/// The kind of an [`Op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum OpKind {
    Send,
    MarkRead,
    UpdateProfile,
    ListConversations,
}

const KINDS: [OpKind; 4] = [
    OpKind::Send,
    OpKind::MarkRead,
    OpKind::UpdateProfile,
    OpKind::ListConversations,
];

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Send { .. } => OpKind::Send,
            Op::MarkRead { .. } => OpKind::MarkRead,
            Op::UpdateProfile { .. } => OpKind::UpdateProfile,
            Op::ListConversations { .. } => OpKind::ListConversations,
        }
    }
}

/// The generated workload: who is friends with whom, the groups, and how active everyone is.
#[derive(Debug, Clone)]
pub struct Plan {
    pub spec: WorkloadSpec,
    /// Friend pairs `(a, b)` with `a < b`, each once, in a shuffled (creation) order.
    pub friendships: Vec<(u32, u32)>,
    pub groups: Vec<GroupPlan>,
    /// Per user, their conversations in preference order (most talked-to first).
    pub conversations: Vec<Vec<ConvRef>>,
    /// Draws a message sender: proportional to the number of conversations (none: never).
    senders: Option<WeightedAliasIndex<f64>>,
    /// Draws a user who reads or updates: proportional to 1 + number of conversations.
    actors: WeightedAliasIndex<f64>,
}

impl Plan {
    pub fn generate(spec: &WorkloadSpec) -> Result<Plan, BenchError> {
        spec.check()?;
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let n = spec.users;
        let degrees = friend_degrees(spec, &mut rng)?;
        let friendships = pair_stubs(&degrees, &mut rng);

        let mut friends: Vec<Vec<u32>> = vec![Vec::new(); n];
        for &(a, b) in &friendships {
            friends[a as usize].push(b);
            friends[b as usize].push(a);
        }
        let weights: Vec<f64> = friends.iter().map(|f| 1.0 + f.len() as f64).collect();
        let by_degree = WeightedAliasIndex::new(weights).map_err(spec_err)?;
        let groups = plan_groups(spec, &friends, &by_degree, &mut rng)?;

        let mut conversations: Vec<Vec<ConvRef>> = vec![Vec::new(); n];
        for (i, &(a, b)) in friendships.iter().enumerate() {
            conversations[a as usize].push(ConvRef::Single(i as u32));
            conversations[b as usize].push(ConvRef::Single(i as u32));
        }
        for (i, g) in groups.iter().enumerate() {
            conversations[g.owner as usize].push(ConvRef::Group(i as u32));
            for &m in &g.members {
                conversations[m as usize].push(ConvRef::Group(i as u32));
            }
        }
        for convs in &mut conversations {
            convs.shuffle(&mut rng);
        }
        let send_w: Vec<f64> = conversations.iter().map(|c| c.len() as f64).collect();
        let senders = if send_w.iter().any(|&w| w > 0.0) {
            Some(WeightedAliasIndex::new(send_w).map_err(spec_err)?)
        } else {
            None
        };
        let act_w: Vec<f64> = conversations.iter().map(|c| 1.0 + c.len() as f64).collect();
        let actors = WeightedAliasIndex::new(act_w).map_err(spec_err)?;
        Ok(Plan {
            spec: spec.clone(),
            friendships,
            groups,
            conversations,
            senders,
            actors,
        })
    }

    pub fn users(&self) -> usize {
        self.spec.users
    }

    /// Friend count per user.
    pub fn degrees(&self) -> Vec<usize> {
        let mut d = vec![0; self.spec.users];
        for &(a, b) in &self.friendships {
            d[a as usize] += 1;
            d[b as usize] += 1;
        }
        d
    }

    /// Number of members of a conversation (all active: nobody leaves in the plan).
    pub fn members(&self, conv: ConvRef) -> usize {
        match conv {
            ConvRef::Single(_) => 2,
            ConvRef::Group(g) => self.groups.get(g as usize).map_or(0, GroupPlan::size),
        }
    }

    /// Group memberships, owners included.
    pub fn memberships(&self) -> usize {
        self.groups.iter().map(GroupPlan::size).sum()
    }

    /// A flat index for a conversation: singles first, then groups.
    pub fn conv_index(&self, conv: ConvRef) -> usize {
        match conv {
            ConvRef::Single(i) => i as usize,
            ConvRef::Group(g) => self.friendships.len() + g as usize,
        }
    }

    pub fn conv_count(&self) -> usize {
        self.friendships.len() + self.groups.len()
    }

    /// An endless stream of operations drawn with the spec's mix, seeded by `seed`.
    pub fn stream(&self, seed: u64) -> OpStream<'_> {
        self.stream_with(seed, self.spec.mix)
    }

    /// An endless stream of operations drawn with `mix`, seeded by `seed`.
    pub fn stream_with(&self, seed: u64, mix: OpMix) -> OpStream<'_> {
        let w = mix.weights();
        // An empty plan cannot send; sends then fall back to reading.
        let w = if self.senders.is_none() {
            [0, w[1], w[2], w[3] + w[0]]
        } else {
            w
        };
        let kinds = if w.iter().all(|&x| x == 0) {
            [0, 0, 0, 1]
        } else {
            w
        };
        OpStream {
            plan: self,
            rng: StdRng::seed_from_u64(seed),
            kinds: WeightedIndex::new(kinds).ok(),
            content: LogNormal::new(f64::from(self.spec.median_content_chars.max(1)).ln(), 0.9)
                .ok(),
            revision: 0,
        }
    }

    /// The first `n` operations of the plan's own stream (seeded by the spec's seed).
    pub fn ops(&self, n: usize) -> Vec<Op> {
        self.stream(self.spec.seed ^ 0x6f70_735f_7374_7265)
            .take(n)
            .collect()
    }
}

fn spec_err(e: impl fmt::Display) -> BenchError {
    BenchError::InvalidSpec(e.to_string())
}

/// Heavy-tailed friend counts with the requested (capped) mean.
fn friend_degrees(spec: &WorkloadSpec, rng: &mut StdRng) -> Result<Vec<usize>, BenchError> {
    let cap = spec.max_friends.min(spec.users - 1);
    let unit = Pareto::new(1.0, spec.friend_tail).map_err(spec_err)?;
    // Unit Lomax samples; the scale is then found so that the capped mean hits the target.
    let raw: Vec<f64> = (0..spec.users).map(|_| unit.sample(rng) - 1.0).collect();
    let capped_mean = |scale: f64| {
        raw.iter()
            .map(|x| (scale * x).round().min(cap as f64))
            .sum::<f64>()
            / raw.len() as f64
    };
    let target = spec.mean_friends.min(cap as f64);
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    while capped_mean(hi) < target && hi < 1e12 {
        hi *= 2.0;
    }
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if capped_mean(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(raw
        .iter()
        .map(|x| (hi * x).round().min(cap as f64) as usize)
        .collect())
}

/// The configuration model: each user gets `degree` stubs, stubs are paired at random; self
/// pairs and duplicate pairs are dropped.
fn pair_stubs(degrees: &[usize], rng: &mut StdRng) -> Vec<(u32, u32)> {
    let mut stubs: Vec<u32> = degrees
        .iter()
        .enumerate()
        .flat_map(|(u, &d)| (0..d).map(move |_| u as u32))
        .collect();
    stubs.shuffle(rng);
    let mut pairs: Vec<(u32, u32)> = stubs
        .chunks_exact(2)
        .filter(|p| p[0] != p[1])
        .map(|p| (p[0].min(p[1]), p[0].max(p[1])))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs.shuffle(rng);
    pairs
}

fn plan_groups(
    spec: &WorkloadSpec,
    friends: &[Vec<u32>],
    by_degree: &WeightedAliasIndex<f64>,
    rng: &mut StdRng,
) -> Result<Vec<GroupPlan>, BenchError> {
    if spec.groups == 0 {
        return Ok(Vec::new());
    }
    let buckets =
        WeightedIndex::new(spec.group_sizes.iter().map(|b| b.weight)).map_err(spec_err)?;
    let largest = spec.max_group_members.min(spec.users);
    let mut out = Vec::with_capacity(spec.groups);
    for _ in 0..spec.groups {
        let b = spec.group_sizes[buckets.sample(rng)];
        let size = rng.gen_range(b.min..=b.max).clamp(2, largest);
        let owner = by_degree.sample(rng) as u32;
        let mut chosen: HashSet<u32> = HashSet::with_capacity(size);
        chosen.insert(owner);
        let mut members = Vec::with_capacity(size - 1);
        // Half from the owner's friends (people invite their friends) ...
        let from_friends = (size - 1) / 2;
        for &f in friends[owner as usize].choose_multiple(rng, from_friends) {
            if chosen.insert(f) {
                members.push(f);
            }
        }
        // ... the rest from active users anywhere, then anyone if that does not fill the group.
        let mut attempts = 0;
        while members.len() < size - 1 && attempts < size * 20 {
            attempts += 1;
            let u = by_degree.sample(rng) as u32;
            if chosen.insert(u) {
                members.push(u);
            }
        }
        while members.len() < size - 1 {
            let u = rng.gen_range(0..spec.users as u32);
            if chosen.insert(u) {
                members.push(u);
            }
        }
        out.push(GroupPlan { owner, members });
    }
    Ok(out)
}

/// An endless, seeded stream of operations over a [`Plan`].
pub struct OpStream<'a> {
    plan: &'a Plan,
    rng: StdRng,
    kinds: Option<WeightedIndex<u32>>,
    content: Option<LogNormal<f64>>,
    revision: u32,
}

impl OpStream<'_> {
    /// A user drawn by activity (for reads, profile updates).
    pub fn actor(&mut self) -> u32 {
        self.plan.actors.sample(&mut self.rng) as u32
    }

    /// One of `user`'s conversations, Zipf over their preference order.
    fn conversation_of(&mut self, user: u32) -> Option<ConvRef> {
        let convs = &self.plan.conversations[user as usize];
        if convs.is_empty() {
            return None;
        }
        let rank = Zipf::new(convs.len() as u64, self.plan.spec.conversation_skew)
            .map(|z| z.sample(&mut self.rng) as usize)
            .unwrap_or(1);
        convs.get(rank.saturating_sub(1)).copied()
    }

    /// A message send; `None` only when no user has a conversation.
    pub fn next_send(&mut self) -> Option<Op> {
        let sender = self.plan.senders.as_ref()?.sample(&mut self.rng) as u32;
        let conv = self.conversation_of(sender)?;
        let chars = self
            .content
            .map_or(self.plan.spec.median_content_chars as f64, |d| {
                d.sample(&mut self.rng)
            });
        let content_chars = chars.round().clamp(1.0, 1000.0) as u32;
        Some(Op::Send {
            sender,
            conv,
            content_chars,
        })
    }

    /// A conversation-list read of a user drawn by activity.
    pub fn next_list(&mut self) -> Op {
        Op::ListConversations { user: self.actor() }
    }

    fn next_of(&mut self, kind: OpKind) -> Op {
        match kind {
            OpKind::Send => self.next_send().unwrap_or_else(|| self.next_list()),
            OpKind::MarkRead => {
                let user = self.actor();
                match self.conversation_of(user) {
                    Some(conv) => Op::MarkRead { user, conv },
                    None => Op::ListConversations { user },
                }
            }
            OpKind::UpdateProfile => {
                self.revision = self.revision.wrapping_add(1);
                Op::UpdateProfile {
                    user: self.actor(),
                    revision: self.revision,
                }
            }
            OpKind::ListConversations => self.next_list(),
        }
    }
}

impl Iterator for OpStream<'_> {
    type Item = Op;

    fn next(&mut self) -> Option<Op> {
        let kind = match &self.kinds {
            Some(k) => KINDS[k.sample(&mut self.rng)],
            None => OpKind::ListConversations,
        };
        Some(self.next_of(kind))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn plan(users: usize, seed: u64) -> Plan {
        match Plan::generate(&WorkloadSpec::new(users, seed)) {
            Ok(p) => p,
            Err(e) => panic!("generate: {e}"),
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a = plan(3000, 7);
        let b = plan(3000, 7);
        assert_eq!(a.friendships, b.friendships);
        assert_eq!(a.groups, b.groups);
        assert_eq!(a.conversations, b.conversations);
        assert_eq!(a.ops(5000), b.ops(5000));
        let s1: Vec<Op> = a.stream(99).take(1000).collect();
        let s2: Vec<Op> = b.stream(99).take(1000).collect();
        assert_eq!(s1, s2);

        let c = plan(3000, 8);
        assert_ne!(a.friendships, c.friendships);
        assert_ne!(a.ops(1000), c.ops(1000));
    }

    #[test]
    fn friendships_are_valid_pairs() {
        let p = plan(2000, 1);
        let mut seen = HashSet::new();
        for &(a, b) in &p.friendships {
            assert!(a < b, "ordered pair without self loops");
            assert!((b as usize) < p.users());
            assert!(seen.insert((a, b)), "no duplicate friendship");
        }
    }

    #[test]
    fn friend_counts_are_heavy_tailed() {
        let p = plan(10_000, 42);
        let d = p.degrees();
        let mean = d.iter().sum::<usize>() as f64 / d.len() as f64;
        let max = *d.iter().max().unwrap_or(&0);
        let mut sorted = d.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        // Mean near the target (pairing drops a few self/duplicate pairs).
        assert!((17.0..=21.0).contains(&mean), "mean degree {mean}");
        // Heavy tail: the max is far above the mean and the median below it.
        assert!(max as f64 > 10.0 * mean, "max {max} vs mean {mean}");
        assert!((median as f64) < mean, "median {median} vs mean {mean}");
        assert!(max <= p.spec.max_friends);
        // About 100k friendships for 10k users at a mean of 20.
        assert!(
            (85_000..=105_000).contains(&p.friendships.len()),
            "{}",
            p.friendships.len()
        );
    }

    #[test]
    fn group_sizes_within_bounds() {
        let p = plan(10_000, 3);
        assert_eq!(p.groups.len(), 1000);
        let mut small = 0;
        let mut big = 0;
        for g in &p.groups {
            let size = g.size();
            assert!((3..=500).contains(&size), "size {size}");
            let mut all: Vec<u32> = g.members.clone();
            all.push(g.owner);
            all.sort_unstable();
            all.dedup();
            assert_eq!(
                all.len(),
                size,
                "members are distinct and exclude the owner"
            );
            if size <= 10 {
                small += 1;
            }
            if size >= 50 {
                big += 1;
            }
        }
        assert!(small > 700, "many small groups: {small}");
        assert!((30..=150).contains(&big), "some big groups: {big}");
        // Tiny populations clamp group sizes to the user count.
        let mut spec = WorkloadSpec::new(20, 1);
        spec.groups = 50;
        let p = Plan::generate(&spec).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.groups.iter().all(|g| g.size() <= 20 && g.size() >= 2));
    }

    #[test]
    fn conversations_index_members() {
        let p = plan(1000, 5);
        let total: usize = p.conversations.iter().map(Vec::len).sum();
        assert_eq!(total, 2 * p.friendships.len() + p.memberships());
        for (u, convs) in p.conversations.iter().enumerate() {
            for &c in convs {
                let u = u as u32;
                let member = match c {
                    ConvRef::Single(i) => {
                        let (a, b) = p.friendships[i as usize];
                        a == u || b == u
                    }
                    ConvRef::Group(g) => {
                        let g = &p.groups[g as usize];
                        g.owner == u || g.members.contains(&u)
                    }
                };
                assert!(member);
            }
        }
    }

    #[test]
    fn mix_proportions_roughly_right() {
        let p = plan(2000, 11);
        let n = 100_000;
        let mut counts: HashMap<OpKind, usize> = HashMap::new();
        for op in p.stream(1).take(n) {
            *counts.entry(op.kind()).or_default() += 1;
            match op {
                Op::Send {
                    sender,
                    conv,
                    content_chars,
                } => {
                    assert!(p.conversations[sender as usize].contains(&conv));
                    assert!((1..=1000).contains(&content_chars));
                }
                Op::MarkRead { user, conv } => {
                    assert!(p.conversations[user as usize].contains(&conv));
                }
                Op::UpdateProfile { user, .. } | Op::ListConversations { user } => {
                    assert!((user as usize) < p.users());
                }
            }
        }
        let share = |k| *counts.get(&k).unwrap_or(&0) as f64 / n as f64;
        assert!((share(OpKind::Send) - 0.80).abs() < 0.01, "{counts:?}");
        assert!((share(OpKind::MarkRead) - 0.10).abs() < 0.01, "{counts:?}");
        assert!(
            (share(OpKind::UpdateProfile) - 0.05).abs() < 0.01,
            "{counts:?}"
        );
        assert!(
            (share(OpKind::ListConversations) - 0.05).abs() < 0.01,
            "{counts:?}"
        );
    }

    #[test]
    fn senders_follow_activity_and_preferences() {
        let p = plan(5000, 13);
        let mut s = p.stream(2);
        let mut per_user: HashMap<u32, usize> = HashMap::new();
        let mut top_rank = 0;
        let sends = 50_000;
        for _ in 0..sends {
            if let Some(Op::Send { sender, conv, .. }) = s.next_send() {
                *per_user.entry(sender).or_default() += 1;
                if p.conversations[sender as usize].first() == Some(&conv) {
                    top_rank += 1;
                }
            }
        }
        // Users without conversations never send.
        for (u, convs) in p.conversations.iter().enumerate() {
            if convs.is_empty() {
                assert!(!per_user.contains_key(&(u as u32)));
            }
        }
        // The favourite conversation gets far more than a uniform share.
        assert!(
            top_rank as f64 / sends as f64 > 0.15,
            "top rank share {top_rank}"
        );
        // The busiest sender is well above the average sender.
        let max = per_user.values().copied().max().unwrap_or(0) as f64;
        let avg = sends as f64 / per_user.len().max(1) as f64;
        assert!(max > 10.0 * avg, "max {max}, avg {avg}");
    }

    #[test]
    fn mix_parses() {
        let m: OpMix = "send=70, read=20,list=10"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            m,
            OpMix {
                send: 70,
                mark_read: 20,
                update_profile: 0,
                list_conversations: 10
            }
        );
        assert_eq!(
            OpMix::default().to_string().parse::<OpMix>(),
            Ok(OpMix::default())
        );
        assert!("send=0".parse::<OpMix>().is_err());
        assert!("write=1".parse::<OpMix>().is_err());
        assert!("send".parse::<OpMix>().is_err());
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = WorkloadSpec::new(1, 0);
        assert!(Plan::generate(&s).is_err());
        s = WorkloadSpec::new(100, 0);
        s.friend_tail = 1.0;
        assert!(Plan::generate(&s).is_err());
    }

    #[test]
    fn no_friends_no_groups_still_streams() {
        let mut s = WorkloadSpec::new(10, 0);
        s.mean_friends = 0.0;
        s.groups = 0;
        let p = Plan::generate(&s).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.friendships.is_empty());
        assert!(p
            .stream(0)
            .take(100)
            .all(|op| op.kind() == OpKind::ListConversations
                || op.kind() == OpKind::UpdateProfile
                || op.kind() == OpKind::MarkRead));
        assert!(p.stream(0).next_send().is_none());
    }
}
