//! `hermet-bench fanout`: what a message into a group of N members costs, measured through the
//! HTTP API, per sync mode and group size.
//!
//! For each sync mode (`--modes`), in a scratch database of its own:
//!
//! 1. Migrate; create the users set-based in SQL (`users` only: no view row depends on a user
//!    alone). Start `hermet serve` (all roles of the mode: API, and the outbox worker or the
//!    relay and the Kafka projectors) with the Redis list cache as deployed (`--no-cache`: off),
//!    `limits.max_group_members` raised to the largest group, the background audit off,
//!    a slot, publication, topics, consumer groups and cache prefix of the run, and
//!    `HERMET_FANOUT__READ_THRESHOLD` when `--read-threshold` gives one. A second process,
//!    `serve --role api` with the cache off, answers the uncached list reads of step 3.
//! 2. Set-up through the API: one group per `--sizes` entry (owner user 1, members 1..=N),
//!    created with 999 members and grown by `POST /v1/groups/{id}/members` with 1,000 ids per
//!    call. Groups above `--sql-above` get all but their last 1,000 members set-based in SQL
//!    (`channel_members` and `member_count`), then the last 1,000 through the API, so the write
//!    side's own rules (a fan-out flip at the threshold) run; their read side is then rebuilt
//!    (`hermet_store::rebuild`, as `hermet admin rebuild`; `dual_write`, `async`) or projected
//!    from the WAL (`cdc`). The list user (step 3) gets `--list-groups` groups of
//!    `--list-group-size` members and `--list-small` small conversations (half single chats,
//!    half groups of 5); one message goes into every conversation. The set-up ends when the
//!    read side has a row per membership and the API shows every last message.
//! 3. List: `--list-reads` first pages (limit `--page-size`) of the list user, one at a time,
//!    from the process without the cache: the list p50/p99 of a member of many large groups.
//! 4. Per size: `--rate` sends/s into the size's group for `--duration-secs`, paced over
//!    `--concurrency` senders (fixed schedules; a slot more than one period late is skipped and
//!    counted as missed), each `POST /v1/channels/{id}/messages` as one of up to 4 members.
//!    `--watchers` other members poll `GET /v1/conversations` (first page, plain reads: no
//!    `X-Hermet-Min-Lsn`) every `--poll-ms`; a message is visible to a watcher at the first poll
//!    whose page shows the group's `last_message.seq` at or past the message's seq, and its
//!    visibility time runs from the start of its send request. After the load the watchers poll
//!    until they saw the last message, or for at most 120 s.
//! 5. View rows per message: `n_tup_ins + n_tup_upd` of the `user_conversation_view`
//!    partitions and `channel_view` (0 while that table does not exist), from
//!    `pg_stat_user_tables`, before and after each size, divided by the messages sent. Backends
//!    flush their counters at most every second and an idle one up to 10 s later, so each
//!    reading waits 11 s after the last write. (In `async` and `cdc` a projector batch with
//!    several messages of one group writes each member's row once: fewer rows than members.)
//!
//! At the end (also on error or Ctrl-C) the servers are stopped, and the slot, the topics and
//! the database are dropped.

mod report;
pub(crate) mod server;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use hermet_store::SyncMode;
use serde_json::json;

use crate::cdc::db_err;
use crate::report::{histogram, quantile_ms as ms};
use crate::{admin_connect, drop_database, BenchEnv, BenchError, BenchOptions, Scenario};
pub use report::*;
use server::{Api, Server, ServerSpec};

/// Members added per API call (the API's limit per request).
const CHUNK: usize = 1_000;
/// Longest wait for the watchers after the load, and for the read side after the set-up.
const CATCH_UP: Duration = Duration::from_secs(120);
const SETUP_WAIT: Duration = Duration::from_secs(1800);
/// PostgreSQL backends flush table statistics at most every second, idle ones within 10 s.
const STATS_SETTLE: Duration = Duration::from_secs(11);
/// Senders per group at most (the owner and the first members).
const MAX_SENDERS: usize = 4;

/// `--read-threshold`: a member count, or `unset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threshold {
    #[default]
    Unset,
    Members(u64),
}

impl Threshold {
    /// The fan-out setting of a store the benchmark runs in-process (`bench send`, `modes`).
    pub fn config(self) -> hermet_core::rows::FanoutConfig {
        match self {
            Threshold::Unset => hermet_core::rows::FanoutConfig::default(),
            Threshold::Members(n) => hermet_core::rows::FanoutConfig {
                read_threshold: i64::try_from(n).unwrap_or(i64::MAX),
                write_threshold: None,
            },
        }
    }
}

impl FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "unset" | "none" | "" => Ok(Threshold::Unset),
            n => n
                .parse()
                .map(Threshold::Members)
                .map_err(|_| format!("{s:?}: a member count or `unset`")),
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Unset => f.write_str("unset"),
            Threshold::Members(n) => write!(f, "{n}"),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn parse_modes(names: &[String]) -> Result<Vec<SyncMode>, BenchError> {
    let mut modes = Vec::new();
    for m in names {
        let mode = [SyncMode::DualWrite, SyncMode::Async, SyncMode::Cdc]
            .into_iter()
            .find(|x| x.as_str() == m.trim())
            .ok_or_else(|| {
                BenchError::InvalidOptions(format!(
                    "--modes: unknown sync mode {m:?} (dual_write, async, cdc)"
                ))
            })?;
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    if modes.is_empty() {
        return Err(BenchError::InvalidOptions(
            "--modes: name at least one".into(),
        ));
    }
    Ok(modes)
}

/// The options, checked; the list groups' size.
fn check(opts: &BenchOptions) -> Result<usize, BenchError> {
    let bad = |m: &str| Err(BenchError::InvalidOptions(format!("fanout: {m}")));
    let rate = opts.rate_for(Scenario::Fanout);
    if !rate.is_finite() || rate <= 0.0 {
        return bad("--rate must be positive");
    }
    if opts.sizes.is_empty() || opts.sizes.iter().any(|s| !(2..=10_000_000).contains(s)) {
        return bad("--sizes must name group sizes between 2 and 10000000");
    }
    if opts.watchers == 0 || opts.sizes.iter().any(|&s| opts.watchers >= s) {
        return bad("--watchers must be at least 1 and below every group size");
    }
    if opts.poll_ms == 0 || opts.list_reads == 0 || !(1..=100).contains(&opts.page_size) {
        return bad("--poll-ms and --list-reads must be at least 1, --page-size 1..=100");
    }
    let largest = opts.sizes.iter().copied().max().unwrap_or(2);
    let list_size = if opts.list_group_size == 0 {
        largest
    } else {
        opts.list_group_size
    };
    if list_size < 2 || (opts.list_small > 0 && list_size < 5) {
        return bad("--list-group-size must be at least 5");
    }
    Ok(list_size)
}

/// Runs `hermet-bench fanout` (progress on stderr) and returns its report.
pub async fn run(env: &BenchEnv, opts: &BenchOptions) -> Result<FanoutReport, BenchError> {
    let list_size = check(opts)?;
    let modes = parse_modes(&opts.sync_modes)?;
    let bin = crate::cdc::hermet_binary(env)?;
    let load_before = load_average();
    let mut rows = Vec::new();
    let mut lists = Vec::new();
    let mut rebuilds = Vec::new();
    let mut error_samples = Vec::new();
    for mode in &modes {
        let tag = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let (name, url) = crate::create_named_database(env, format!("hermet_bench_{tag}")).await?;
        eprintln!("bench fanout {}: scratch database {name}", mode.as_str());
        let r = tokio::select! {
            r = run_mode(env, opts, *mode, &url, &tag, &bin, list_size) => r,
            _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
        };
        if *mode == SyncMode::Cdc {
            if let Err(e) = crate::cdc::drop_all_slots(&env.database_url, &name).await {
                eprintln!("bench fanout: dropping slots: {e}");
            }
            if let Err(e) = crate::cdc::delete_topics(&env.kafka_brokers, &tag, 1).await {
                eprintln!("bench fanout: deleting topics: {e}");
            }
            let dlq = format!("hermet_bench_{tag}_dlq");
            if let Err(e) = crate::cdc::delete_topic_names(&env.kafka_brokers, &[dlq]).await {
                eprintln!("bench fanout: deleting the dead-letter topic: {e}");
            }
        }
        if opts.keep_database {
            eprintln!("bench fanout: kept database {name}");
        } else if let Err(e) = drop_database(&env.database_url, &name).await {
            eprintln!("bench fanout: could not drop {name}: {e}");
        }
        let m = r?;
        rows.extend(m.rows);
        lists.push(m.list);
        rebuilds.push((mode.as_str().to_owned(), m.rebuild_secs));
        error_samples.extend(m.errors);
    }
    error_samples.truncate(10);
    Ok(FanoutReport {
        modes: modes.iter().map(|m| m.as_str().to_owned()).collect(),
        sizes: opts.sizes.clone(),
        rate: opts.rate_for(Scenario::Fanout),
        duration_secs: opts.duration_secs,
        senders: opts.concurrency_for(Scenario::Fanout),
        watchers: opts.watchers,
        poll_ms: opts.poll_ms,
        read_threshold: match opts.read_threshold {
            Threshold::Unset => None,
            Threshold::Members(n) => Some(n),
        },
        cache: !opts.no_cache,
        shards: opts.shards.unwrap_or(env.shards),
        sql_above: opts.sql_above,
        hermet_bin: bin.display().to_string(),
        load_before,
        rebuild_secs: rebuilds,
        rows,
        lists,
        error_samples,
    })
}

struct ModeResult {
    rows: Vec<SizeRow>,
    list: ListRow,
    rebuild_secs: Option<f64>,
    errors: Vec<String>,
}

/// A group of the benchmark.
struct Group {
    id: i64,
    size: usize,
    setup: &'static str,
    setup_secs: f64,
}

async fn run_mode(
    env: &BenchEnv,
    opts: &BenchOptions,
    mode: SyncMode,
    url: &str,
    tag: &str,
    bin: &std::path::Path,
    list_size: usize,
) -> Result<ModeResult, BenchError> {
    let shards = opts.shards.unwrap_or(env.shards);
    let largest = opts.sizes.iter().copied().max().unwrap_or(2);
    let pool_users = largest.max(list_size);
    let list_user = pool_users as i64 + 1;
    {
        let mut client = admin_connect(url).await?;
        hermet_store::migrate::migrate(&mut client, shards).await?;
        let t = Instant::now();
        let n = list_user;
        client
            .execute(
                "INSERT INTO users (id, nickname, avatar, profile_ver, created_at, updated_at)
                 SELECT i, 'user ' || i, '', 1, 0, 0 FROM generate_series(1, $1::bigint) i",
                &[&n],
            )
            .await
            .map_err(db_err("insert the users"))?;
        client
            .execute(
                "SELECT setval(pg_get_serial_sequence('users', 'id'), $1::bigint)",
                &[&n],
            )
            .await
            .map_err(db_err("move the user id sequence"))?;
        eprintln!(
            "bench fanout {}: {n} users in {:.1} s",
            mode.as_str(),
            t.elapsed().as_secs_f64()
        );
    }
    let secret = server::random_secret();
    let spec = ServerSpec {
        bin,
        env,
        url,
        mode,
        tag,
        shards,
        max_members: largest.max(list_size).max(100_000),
        threshold: opts.read_threshold,
        partitions: opts.partitions,
        secret: &secret,
    };
    let mut main = Server::start(&spec, "all", !opts.no_cache).await?;
    let reader = match Server::start(&spec, "api", false).await {
        Ok(r) => r,
        Err(e) => {
            let _ = main.stop().await;
            return Err(e);
        }
    };
    let pool = hermet_store::connect_pool(url, 8)?;
    let r = async {
        let api = Api::new(&main.base, &secret)?;
        let uncached = Api::new(&reader.base, &secret)?;
        let r = measure_mode(
            opts, mode, &spec, &api, &uncached, &pool, list_user, list_size,
        )
        .await;
        main.check()?;
        r
    }
    .await;
    pool.close();
    for s in [main, reader] {
        if let Err(e) = s.stop().await {
            eprintln!("bench fanout: stopping a server: {e}");
        }
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn measure_mode(
    opts: &BenchOptions,
    mode: SyncMode,
    spec: &ServerSpec<'_>,
    api: &Api,
    uncached: &Api,
    pool: &deadpool_postgres::Pool,
    list_user: i64,
    list_size: usize,
) -> Result<ModeResult, BenchError> {
    let m = mode.as_str();
    // The measured groups, one at a time (their set-up is timed).
    let mut groups = Vec::new();
    for &size in &opts.sizes {
        let members: Vec<i64> = (2..=size as i64).collect();
        let g = build_group(api, pool, opts, 1, &members, &format!("fanout {size}")).await?;
        eprintln!(
            "bench fanout {m}: group of {size} ({}) in {:.1} s",
            g.setup, g.setup_secs
        );
        groups.push(g);
    }
    // The list user's conversations.
    let t = Instant::now();
    let members: Vec<i64> = (1..list_size as i64).collect();
    let large: Vec<Group> =
        futures::stream::iter(0..opts.list_groups)
            .map(|i| {
                let members = &members;
                async move {
                    build_group(api, pool, opts, list_user, members, &format!("large {i}")).await
                }
            })
            .buffer_unordered(opts.setup_concurrency.clamp(1, 8))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
    let lt = api.token(list_user)?;
    let singles = opts.list_small / 2;
    let mut small = Vec::new();
    for k in 0..singles {
        let friend = (k % (list_size - 1)) as i64 + 1;
        let v = api
            .post(&lt, "/v1/friends", &json!({ "friend_id": friend }))
            .await?;
        small.push((channel_id(&v)?, friend));
    }
    for k in 0..opts.list_small - singles {
        let first = ((4 * k) % (list_size - 4)) as i64 + 1;
        let ids: Vec<i64> = (first..first + 4).collect();
        let v = api
            .post(
                &lt,
                "/v1/groups",
                &json!({ "name": format!("small {k}"), "member_ids": ids }),
            )
            .await?;
        small.push((channel_id(&v)?, first));
    }
    let sql_used = groups.iter().chain(&large).any(|g| g.setup != "api");
    let rebuild_secs = if sql_used && mode != SyncMode::Cdc {
        Some(rebuild(pool, spec).await?)
    } else {
        None
    };
    // One message in every conversation: by user 1 in the large groups, by the peer or a member
    // in the small ones.
    let senders = groups
        .iter()
        .chain(&large)
        .map(|g| (g.id, 1))
        .chain(small.iter().copied());
    futures::stream::iter(senders)
        .map(|(channel, sender)| async move {
            let token = api.token(sender)?;
            send(api, &token, channel, "set-up").await.map(|_| ())
        })
        .buffer_unordered(opts.setup_concurrency.clamp(1, 8))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<(), _>>()?;
    wait_read_side(pool, m).await?;
    let conversations = opts.list_groups + opts.list_small;
    let ut = uncached.token(list_user)?;
    wait_until(
        &format!("{m}: the list user's {conversations} last messages"),
        || async { Ok(count_with_messages(uncached, &ut).await? >= conversations) },
    )
    .await?;
    for g in &groups {
        for w in watchers_of(g.size, opts.watchers) {
            let token = api.token(w)?;
            wait_until(&format!("{m}: group of {} seen by {w}", g.size), || async {
                Ok(api
                    .conversations(&token, opts.page_size, None)
                    .await?
                    .seq_of(g.id)
                    >= 1)
            })
            .await?;
        }
    }
    let list_setup = t.elapsed().as_secs_f64();
    eprintln!("bench fanout {m}: list user's conversations ready in {list_setup:.1} s");

    let list = measure_list(uncached, &ut, opts.page_size, opts.list_reads).await?;
    let list = ListRow {
        mode: m.to_owned(),
        large_groups: opts.list_groups,
        large_group_size: list_size,
        small_conversations: opts.list_small,
        conversations,
        page_size: opts.page_size,
        setup_secs: list_setup,
        ..list
    };
    eprintln!(
        "bench fanout {m}: list p50 {:.2} ms, p99 {:.2} ms over {} reads",
        list.p50_ms, list.p99_ms, list.reads
    );

    let mut before = view_rows(pool).await?;
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for g in &groups {
        let (mut row, errs) = measure_size(opts, api, g).await?;
        let after = view_rows(pool).await?;
        row.mode = m.to_owned();
        row.conversation_view_rows = after.0 - before.0;
        row.channel_view_rows = after.1 - before.1;
        row.rows_per_message =
            (row.conversation_view_rows + row.channel_view_rows) as f64 / row.sent.max(1) as f64;
        before = after;
        eprintln!("bench fanout {m}: {row:?}");
        rows.push(row);
        errors.extend(errs);
    }
    Ok(ModeResult {
        rows,
        list,
        rebuild_secs,
        errors,
    })
}

fn channel_id(v: &serde_json::Value) -> Result<i64, BenchError> {
    v["channel_id"]
        .as_i64()
        .ok_or_else(|| BenchError::Scenario(format!("no channel_id in {v}")))
}

/// The last `n` members of a group of `size` (user ids `1..=size`): never one of its senders.
fn watchers_of(size: usize, n: usize) -> impl Iterator<Item = i64> {
    (0..n).map(move |i| (size - i) as i64)
}

/// Creates a group owned by `owner` with `members` (owner not among them): 999 at creation,
/// then 1,000 per `POST /v1/groups/{id}/members`; above `--sql-above` members all but the last
/// 1,000 go in set-based SQL first.
async fn build_group(
    api: &Api,
    pool: &deadpool_postgres::Pool,
    opts: &BenchOptions,
    owner: i64,
    members: &[i64],
    name: &str,
) -> Result<Group, BenchError> {
    let t = Instant::now();
    let token = api.token(owner)?;
    let (first, rest) = members.split_at(members.len().min(CHUNK - 1));
    let v = api
        .post(
            &token,
            "/v1/groups",
            &json!({ "name": name, "member_ids": first }),
        )
        .await?;
    let id = channel_id(&v)?;
    let sql = members.len() + 1 > opts.sql_above && rest.len() > CHUNK;
    let rest = if sql {
        let (bulk, last) = rest.split_at(rest.len() - CHUNK);
        add_members_sql(pool, id, bulk).await?;
        last
    } else {
        rest
    };
    let path = format!("/v1/groups/{id}/members");
    for chunk in rest.chunks(CHUNK) {
        api.post(&token, &path, &json!({ "user_ids": chunk }))
            .await?;
    }
    Ok(Group {
        id,
        size: members.len() + 1,
        setup: if sql { "sql+api" } else { "api" },
        setup_secs: t.elapsed().as_secs_f64(),
    })
}

/// Members set-based on the write side (plain members reading from the channel's last
/// message, as the add-members command makes them), with the member count.
async fn add_members_sql(
    pool: &deadpool_postgres::Pool,
    channel: i64,
    users: &[i64],
) -> Result<(), BenchError> {
    let mut conn = pool.get().await.map_err(hermet_store::StoreError::from)?;
    let tx = conn
        .transaction()
        .await
        .map_err(db_err("begin the member insert"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let n = tx
        .execute(
            "INSERT INTO channel_members (channel_id, user_id, role, joined_at, read_seq)
             SELECT c.id, u, 'member', $3, c.last_seq
               FROM channels c CROSS JOIN UNNEST($2::bigint[]) AS u
              WHERE c.id = $1
             ON CONFLICT DO NOTHING",
            &[&channel, &users, &now],
        )
        .await
        .map_err(db_err("insert members"))?;
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    tx.execute(
        "UPDATE channels SET member_count = member_count + $2, updated_at = $3 WHERE id = $1",
        &[&channel, &n, &now],
    )
    .await
    .map_err(db_err("update the member count"))?;
    tx.commit()
        .await
        .map_err(db_err("commit the member insert"))
}

/// Rebuilds the conversation view from the write side (as `hermet admin rebuild`), then
/// retires the servers' cached pages (the swapped-in rows were never announced to the cache).
async fn rebuild(pool: &deadpool_postgres::Pool, spec: &ServerSpec<'_>) -> Result<f64, BenchError> {
    use hermet_store::rebuild;
    let t = Instant::now();
    let o =
        rebuild::RebuildOptions::new(vec![hermet_core::projection::ReadModel::Conversations], 50);
    rebuild::rebuild(pool, &o, &rebuild::NoProgress).await?;
    let cache = hermet_redis::RedisListCache::new(&hermet_redis::RedisCacheConfig {
        url: spec.env.redis_url.clone(),
        prefix: spec.cache_prefix(),
        ttl: Duration::from_secs(300),
        timeout: Duration::from_secs(5),
        retry_after: Duration::from_secs(1),
    })
    .map_err(|e| BenchError::InvalidOptions(format!("redis: {e}")))?;
    hermet_core::cache::ListCache::invalidate_all(&cache).await;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "bench fanout {}: read side rebuilt in {secs:.1} s",
        spec.mode.as_str()
    );
    Ok(secs)
}

/// Sends one message; its seq.
async fn send(api: &Api, token: &str, channel: i64, text: &str) -> Result<i64, BenchError> {
    let v = api
        .post(
            token,
            &format!("/v1/channels/{channel}/messages"),
            &json!({ "content": text }),
        )
        .await?;
    v["seq"]
        .as_i64()
        .ok_or_else(|| BenchError::Scenario(format!("no seq in {v}")))
}

async fn wait_until<F, Fut>(what: &str, mut probe: F) -> Result<(), BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, BenchError>>,
{
    let started = Instant::now();
    loop {
        if probe().await? {
            return Ok(());
        }
        if started.elapsed() > SETUP_WAIT {
            return Err(BenchError::Scenario(format!(
                "waited {} s for {what}",
                SETUP_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the conversation view has a row per membership (the projectors caught up with
/// the set-up's memberships).
async fn wait_read_side(pool: &deadpool_postgres::Pool, mode: &str) -> Result<(), BenchError> {
    let t = Instant::now();
    wait_until(&format!("{mode}: a view row per membership"), || async {
        let conn = pool.get().await.map_err(hermet_store::StoreError::from)?;
        let row = conn
            .query_one(
                "SELECT (SELECT count(*) FROM channel_members)
                      - (SELECT count(*) FROM user_conversation_view)",
                &[],
            )
            .await
            .map_err(db_err("count memberships and view rows"))?;
        let missing: i64 = row.get(0);
        if missing > 0 {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        Ok(missing <= 0)
    })
    .await?;
    eprintln!(
        "bench fanout {mode}: read side has every membership ({:.1} s of waiting)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The user's conversations (all pages) that show a last message.
async fn count_with_messages(api: &Api, token: &str) -> Result<usize, BenchError> {
    let mut n = 0;
    let mut cursor: Option<String> = None;
    loop {
        let page = api.conversations(token, 100, cursor.as_deref()).await?;
        n += page
            .conversations
            .iter()
            .filter(|c| c.last_message.is_some())
            .count();
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(n),
        }
    }
}

/// `n` first-page reads, one at a time, after 20 unmeasured ones.
async fn measure_list(api: &Api, token: &str, limit: i64, n: usize) -> Result<ListRow, BenchError> {
    let mut hist = histogram()?;
    let mut errors = 0;
    for i in 0..n + 20 {
        let t = Instant::now();
        let r = api.conversations(token, limit, None).await;
        let took = t.elapsed();
        match r {
            Ok(_) if i >= 20 => hist.saturating_record(micros(took)),
            Ok(_) => {}
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("bench fanout: list read failed: {e}");
                }
            }
        }
    }
    Ok(ListRow {
        reads: hist.len(),
        errors,
        p50_ms: ms(&hist, 0.5),
        p99_ms: ms(&hist, 0.99),
        max_ms: if hist.is_empty() {
            0.0
        } else {
            hist.max() as f64 / 1000.0
        },
        ..ListRow::default()
    })
}

/// `(conversation view, channel_view)` rows inserted or updated so far, read once the
/// backends have flushed their counters.
async fn view_rows(pool: &deadpool_postgres::Pool) -> Result<(i64, i64), BenchError> {
    tokio::time::sleep(STATS_SETTLE).await;
    let conn = pool.get().await.map_err(hermet_store::StoreError::from)?;
    conn.batch_execute("SELECT pg_stat_force_next_flush(); SELECT pg_stat_clear_snapshot()")
        .await
        .map_err(db_err("flush the statistics"))?;
    let row = conn
        .query_one(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd)
                        FILTER (WHERE relname LIKE 'user\\_conversation\\_view\\_%'), 0)::int8,
                    coalesce(sum(n_tup_ins + n_tup_upd)
                        FILTER (WHERE relname = 'channel_view'), 0)::int8
               FROM pg_stat_user_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .map_err(db_err("read pg_stat_user_tables"))?;
    Ok((row.get(0), row.get(1)))
}

/// What one sender saw.
struct SendStats {
    hist: Histogram<u64>,
    sent: Vec<(i64, Instant)>,
    missed: u64,
    errors: u64,
    samples: Vec<String>,
}

/// The measured phase of one group: paced sends, watchers polling.
async fn measure_size(
    opts: &BenchOptions,
    api: &Api,
    g: &Group,
) -> Result<(SizeRow, Vec<String>), BenchError> {
    let rate = opts.rate_for(Scenario::Fanout);
    let workers = opts.concurrency_for(Scenario::Fanout);
    let duration = Duration::from_secs(opts.duration_secs);
    let poll = Duration::from_millis(opts.poll_ms);
    let n_senders = (g.size - opts.watchers).clamp(1, MAX_SENDERS);
    let final_seq = Arc::new(AtomicI64::new(i64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let mut watchers = tokio::task::JoinSet::new();
    for w in watchers_of(g.size, opts.watchers) {
        let (api, token) = (api.clone(), api.token(w)?);
        let (final_seq, stop) = (Arc::clone(&final_seq), Arc::clone(&stop));
        let (channel, limit) = (g.id, opts.page_size);
        watchers.spawn(async move {
            // (when, seq seen): each time the seq seen grows.
            let mut seen: Vec<(Instant, i64)> = Vec::new();
            let mut last = 0;
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) && last < final_seq.load(Ordering::Relaxed) {
                match api.conversations(&token, limit, None).await {
                    Ok(page) => {
                        let now = Instant::now();
                        let seq = page.seq_of(channel);
                        if seq > last {
                            seen.push((now, seq));
                            last = seq;
                        }
                    }
                    Err(_) => errors += 1,
                }
                tokio::time::sleep(poll).await;
            }
            (seen, errors)
        });
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut senders = tokio::task::JoinSet::new();
    for w in 0..workers {
        let api = api.clone();
        let tokens: Vec<String> = (1..=n_senders as i64)
            .map(|u| api.token(u))
            .collect::<Result<_, _>>()?;
        let channel = g.id;
        senders.spawn(async move {
            let mut st = SendStats {
                hist: histogram()?,
                sent: Vec::new(),
                missed: 0,
                errors: 0,
                samples: Vec::new(),
            };
            let period = Duration::from_secs_f64(workers as f64 / rate);
            let mut next = started + period.mul_f64(w as f64 / workers as f64);
            let mut i = w;
            let filler = "lorem ipsum dolor sit amet ".repeat(2);
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                next += period;
                let token = &tokens[i % tokens.len()];
                i += workers;
                let text = format!("fanout {w}/{i} {filler}");
                let t = Instant::now();
                match send(&api, token, channel, &text).await {
                    Ok(seq) => {
                        st.hist.saturating_record(micros(t.elapsed()));
                        st.sent.push((seq, t));
                    }
                    Err(e) => {
                        st.errors += 1;
                        if st.samples.len() < 3 {
                            st.samples.push(e.to_string());
                        }
                    }
                }
                let now = Instant::now();
                while now > next + period && next < deadline {
                    st.missed += 1;
                    next += period;
                }
            }
            Ok::<_, BenchError>(st)
        });
    }
    let mut hist = histogram()?;
    let (mut sent, mut missed, mut errors) = (Vec::new(), 0, 0);
    let mut samples = Vec::new();
    while let Some(r) = senders.join_next().await {
        let st = r??;
        hist.add(&st.hist)
            .map_err(|e| BenchError::Internal(format!("histogram: {e}")))?;
        sent.extend(st.sent);
        missed += st.missed;
        errors += st.errors;
        samples.extend(st.samples);
    }
    let secs = started.elapsed().as_secs_f64();
    final_seq.store(
        sent.iter().map(|(s, _)| *s).max().unwrap_or(0),
        Ordering::Relaxed,
    );
    // The watchers stop once they saw the last message, or when the catch-up wait ran out.
    let mut results = Vec::new();
    let waited = tokio::time::timeout(CATCH_UP, async {
        while let Some(r) = watchers.join_next().await {
            results.push(r);
        }
    })
    .await;
    if waited.is_err() {
        stop.store(true, Ordering::Relaxed);
        while let Some(r) = watchers.join_next().await {
            results.push(r);
        }
    }
    let mut vis = histogram()?;
    let mut timeouts = 0u64;
    let mut samples_n = 0u64;
    for r in results {
        let (seen, _errors) = r?;
        for (seq, at) in &sent {
            let i = seen.partition_point(|(_, s)| s < seq);
            match seen.get(i) {
                Some((when, _)) => {
                    samples_n += 1;
                    vis.saturating_record(micros(when.saturating_duration_since(*at)));
                }
                None => timeouts += 1,
            }
        }
    }
    let n = sent.len() as u64;
    Ok((
        SizeRow {
            size: g.size,
            setup: g.setup.to_owned(),
            setup_secs: g.setup_secs,
            offered_per_s: rate,
            achieved_per_s: n as f64 / secs.max(1e-9),
            sent: n,
            missed,
            errors,
            send_p50_ms: ms(&hist, 0.5),
            send_p99_ms: ms(&hist, 0.99),
            visible_samples: samples_n,
            visible_timeouts: timeouts,
            visible_p50_ms: ms(&vis, 0.5),
            visible_p99_ms: ms(&vis, 0.99),
            visible_max_ms: if vis.is_empty() {
                0.0
            } else {
                vis.max() as f64 / 1000.0
            },
            ..SizeRow::default()
        },
        samples,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            opts: BenchOptions,
        }
        let parse = |args: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(
                std::iter::once("bench").chain(args.iter().copied()),
            )
            .map(|c| c.opts)
        };
        let o = parse(&[
            "--sizes",
            "10,1000",
            "--duration",
            "5s",
            "--read-threshold",
            "500",
            "--modes",
            "cdc",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.sizes, vec![10, 1000]);
        assert_eq!(o.duration_secs, 5);
        assert_eq!(o.read_threshold, Threshold::Members(500));
        assert_eq!(o.sync_modes, vec!["cdc".to_owned()]);
        assert_eq!(o.rate_for(Scenario::Fanout), 100.0);
        assert_eq!(o.rate_for(Scenario::Modes), 1000.0);
        assert_eq!(check(&o).ok(), Some(10_000));
        let o = parse(&[
            "--read-threshold",
            "unset",
            "--duration-secs",
            "7",
            "--rate",
            "50",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.read_threshold, Threshold::Unset);
        assert_eq!(o.duration_secs, 7);
        assert_eq!(o.rate_for(Scenario::Fanout), 50.0);
        assert!(parse(&["--read-threshold", "many"]).is_err());
        assert!(parse(&["--duration", "5m"]).is_err());
        let o = parse(&["--list-group-size", "0", "--sizes", "10,300"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check(&o).ok(), Some(300));
        let o = parse(&["--sizes", "10,2", "--watchers", "2"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(check(&o).is_err(), "a watcher per member leaves no sender");
    }

    #[test]
    fn watchers_are_the_last_members() {
        assert_eq!(watchers_of(10, 2).collect::<Vec<_>>(), vec![10, 9]);
    }
}
