//! `hermet-bench cache`: conversation-list latency with the Redis cache off and on, in one run.
//!
//! The read side of a scratch database is filled directly with synthetic conversation rows
//! (set-based `generate_series`, about 20 conversations per user on average), because what is
//! measured is the read path only: 50 readers (by default) call the same function the
//! `GET /v1/conversations` handler calls for a first page (`hermet_api::conversation_first_page`:
//! list query, JSON rendering, and with the cache on the version-stamped read-through), without
//! HTTP. Users are drawn from a Zipf distribution (s = 1), so a hot minority of users makes most
//! reads, as in a messaging app; the hot users are spread over all shards. Rounds alternate cache
//! off / cache on so that machine noise hits both alike. The warm-up reads a third of its time
//! without the cache (so every connection has prepared its statements) and the rest through it;
//! the cache-on rounds share that cache (nothing is written, so nothing is invalidated): the
//! figures are a warm cache's, and the hit ratio says how warm.
//!
//! `--read-rate R` paces the readers instead: R reads/s in all, each reader on a fixed schedule,
//! a read delayed by the reader's previous one timed from its scheduled start. That is latency at
//! a given load; a closed loop measures saturation, where latency is mostly the queue (Little's
//! law: readers / throughput).
//!
//! Reported per round and as medians: reads/s and latency p50/p99/p99.9 of all reads; with the
//! cache on also the hit ratio and the latency of hits and of misses separately.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hermet_core::cache::Source;
use hermet_redis::{RedisCacheConfig, RedisListCache};
use hermet_store::{Store, SyncMode};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

use crate::report::{histogram, median, quantile_ms as ms};
use crate::{admin_connect, drop_database, BenchEnv, BenchError, BenchOptions};

/// Synthetic conversation rows: user `u` has `4 + (u·37 mod 33)` conversations (4–36, mean 20).
/// `$DERIVED_*` are filled with the view's derived columns, computed as every writer does.
const SEED_SQL: &str = "
INSERT INTO user_conversation_view (user_id, channel_id, conversation_type, channel_name,
       channel_avatar, channel_info_ver, peer_user_id, peer_nickname, peer_avatar,
       peer_profile_ver, remark_name, last_message_id, last_message_seq, last_message_type,
       last_message_content, last_message_sender_id, last_message_sender_name, last_message_time,
       read_seq, hidden_at_seq, opened_at, settings_ver, $DERIVED_COLUMNS, updated_at)
SELECT r.*, $DERIVED_VALUES, 1700000000000
  FROM (SELECT u AS user_id, u * 64 + i AS channel_id, 'group' AS conversation_type,
               'group ' || (u * 64 + i) AS channel_name,
               'https://example.com/g.png' AS channel_avatar, 1::bigint AS channel_info_ver,
               NULL::bigint AS peer_user_id, NULL::text AS peer_nickname,
               NULL::text AS peer_avatar, 0::bigint AS peer_profile_ver, '' AS remark_name,
               u * 64 + i AS last_message_id, (10 + i)::bigint AS last_message_seq,
               'text' AS last_message_type,
               left(repeat(md5((u * 64 + i)::text), 2), 50) AS last_message_content,
               u AS last_message_sender_id, 'member ' || u AS last_message_sender_name,
               1700000000000 + ((u * 7919 + i * 104729) % 100000000) AS last_message_time,
               i::bigint AS read_seq, NULL::bigint AS hidden_at_seq, 1::bigint AS opened_at,
               1::bigint AS settings_ver
          FROM generate_series($1::bigint, $2::bigint) u
         CROSS JOIN LATERAL generate_series(1, 4 + ((u * 37) % 33)::int) i) r";

/// One measured round.
#[derive(Debug, Clone, Serialize)]
pub struct CacheRound {
    pub round: usize,
    pub cache: bool,
    pub reads: u64,
    /// Scheduled reads that had not started when the round ended (paced rounds only).
    pub missed: u64,
    pub errors: u64,
    pub reads_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Share of reads served from Redis (cache on).
    pub hit_ratio: Option<f64>,
    pub hit_p50_ms: Option<f64>,
    pub hit_p99_ms: Option<f64>,
    pub hit_p999_ms: Option<f64>,
    pub miss_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    pub users: usize,
    pub view_rows: i64,
    pub readers: usize,
    pub page_size: i64,
    pub duration_secs: u64,
    pub shards: u32,
    /// Offered reads/s of paced rounds; `None`: closed loop.
    pub read_rate: Option<f64>,
    pub rounds: Vec<CacheRound>,
}

impl fmt::Display for CacheReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let load = match self.read_rate {
            None => "closed loop".to_owned(),
            Some(r) => format!("paced at {r:.0} reads/s offered"),
        };
        let _ = writeln!(
            out,
            "cache: {} users, {} conversation rows, {} shards, {} readers ({load}), first page \
             of {}, Zipf(s=1) users, {} s per round\n",
            self.users,
            self.view_rows,
            self.shards,
            self.readers,
            self.page_size,
            self.duration_secs
        );
        out.push_str(
            "| round | cache | reads/s | p50 ms | p99 ms | p99.9 ms | hit ratio | hit p50 ms | hit p99 ms | hit p99.9 ms | miss p99 ms | missed | errors |\n\
             |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |x| format!("{x:.digits$}"));
        for r in &self.rounds {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} | {} |",
                r.round,
                if r.cache { "on" } else { "off" },
                r.reads_per_s,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                opt(r.hit_ratio, 3),
                opt(r.hit_p50_ms, 3),
                opt(r.hit_p99_ms, 3),
                opt(r.hit_p999_ms, 3),
                opt(r.miss_p99_ms, 3),
                r.missed,
                r.errors
            );
        }
        for cache in [false, true] {
            let rs: Vec<&CacheRound> = self.rounds.iter().filter(|r| r.cache == cache).collect();
            let m = |f: &dyn Fn(&CacheRound) -> Option<f64>| {
                let v: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
                (!v.is_empty()).then(|| median(v))
            };
            let _ = writeln!(
                out,
                "| **median** | **{}** | **{:.0}** | **{:.3}** | **{:.3}** | **{:.3}** | {} | {} | **{}** | {} | {} | | |",
                if cache { "on" } else { "off" },
                m(&|r| Some(r.reads_per_s)).unwrap_or(0.0),
                m(&|r| Some(r.p50_ms)).unwrap_or(0.0),
                m(&|r| Some(r.p99_ms)).unwrap_or(0.0),
                m(&|r| Some(r.p999_ms)).unwrap_or(0.0),
                opt(m(&|r| r.hit_ratio), 3),
                opt(m(&|r| r.hit_p50_ms), 3),
                opt(m(&|r| r.hit_p99_ms), 3),
                opt(m(&|r| r.hit_p999_ms), 3),
                opt(m(&|r| r.miss_p99_ms), 3),
            );
        }
        f.write_str(&out)
    }
}

fn db(what: &str, source: tokio_postgres::Error) -> BenchError {
    BenchError::Db {
        what: what.to_owned(),
        source,
    }
}

/// Runs the scenario in a scratch database (dropped afterwards unless `--keep-database`).
pub async fn run(env: &BenchEnv, opts: &BenchOptions) -> Result<CacheReport, BenchError> {
    let readers = opts.concurrency.unwrap_or(50);
    if readers == 0 || opts.runs == 0 || opts.duration_secs == 0 || opts.users < 100 {
        return Err(BenchError::InvalidOptions(
            "cache: --concurrency, --runs and --duration-secs must be at least 1, --users at least 100"
                .into(),
        ));
    }
    if !opts.read_rate.is_finite() || opts.read_rate < 0.0 {
        return Err(BenchError::InvalidOptions(
            "cache: --read-rate must be 0 (closed loop) or a positive rate".into(),
        ));
    }
    if !(1..=100).contains(&opts.page_size) {
        return Err(BenchError::InvalidOptions(
            "cache: --page-size must be between 1 and 100 (the API's limit)".into(),
        ));
    }
    let shards = opts.shards.unwrap_or(env.shards);
    let (name, url) = crate::create_scratch_database(env).await?;
    eprintln!("bench cache: scratch database {name}");
    let r = tokio::select! {
        r = run_in(env, opts, &url, shards, readers) => r,
        _ = tokio::signal::ctrl_c() => Err(BenchError::Interrupted),
    };
    if opts.keep_database {
        eprintln!("bench cache: kept database {name}");
    } else if let Err(e) = drop_database(&env.database_url, &name).await {
        eprintln!("bench cache: could not drop {name}: {e}");
    }
    r
}

async fn run_in(
    env: &BenchEnv,
    opts: &BenchOptions,
    url: &str,
    shards: u32,
    readers: usize,
) -> Result<CacheReport, BenchError> {
    let mut client = admin_connect(url).await?;
    hermet_store::migrate::migrate(&mut client, shards).await?;
    let started = Instant::now();
    let users = opts.users as i64;
    let chunk = 10_000i64;
    let seed = hermet_store::views::with_derived_columns(SEED_SQL, "r");
    let mut from = 1;
    while from <= users {
        let to = (from + chunk - 1).min(users);
        client
            .execute(seed.as_str(), &[&from, &to])
            .await
            .map_err(|source| db("seed the view", source))?;
        eprintln!(
            "bench cache: seeded users {from}..={to} ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        from = to + 1;
    }
    client
        .batch_execute("VACUUM ANALYZE user_conversation_view")
        .await
        .map_err(|source| db("vacuum the view", source))?;
    let view_rows: i64 = client
        .query_one("SELECT count(*) FROM user_conversation_view", &[])
        .await
        .map_err(|source| db("count the view", source))?
        .get(0);
    eprintln!(
        "bench cache: {view_rows} rows ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    drop(client);

    // The list reads' pool of a default deployment unless `--pool-size` says otherwise.
    let pool = hermet_store::connect_pool(
        url,
        opts.pool_size
            .unwrap_or(hermet_store::DEFAULT_READ_POOL_SIZE),
    )?;
    let store_cfg = crate::store_config(SyncMode::DualWrite, Default::default());
    let uncached = Store::new(pool.clone(), store_cfg.clone());
    let cache = RedisListCache::new(&RedisCacheConfig {
        url: env.redis_url.clone(),
        prefix: format!("hermet_bench_{:016x}", rand::random::<u64>()),
        ttl: Duration::from_secs(3600),
        timeout: Duration::from_millis(100),
        retry_after: Duration::from_secs(1),
    })
    .map_err(|e| BenchError::InvalidOptions(format!("redis: {e}")))?;
    let cached = uncached.clone().with_cache(Arc::new(cache));
    // Warm-up: a third without the cache (connections, each connection's prepared statements,
    // PostgreSQL's buffers), the rest through it (the cache itself).
    let warmup = Duration::from_secs(opts.warmup_secs);
    measure(&uncached, opts, readers, warmup / 3).await?;
    measure(&cached, opts, readers, warmup - warmup / 3).await?;

    let mut rounds = Vec::new();
    for round in 1..=opts.runs {
        for cache in [false, true] {
            let store = if cache { &cached } else { &uncached };
            let m = measure(
                store,
                opts,
                readers,
                Duration::from_secs(opts.duration_secs),
            )
            .await?;
            let r = m.round(round, cache);
            eprintln!(
                "bench cache: round {round} cache {}: {:.0} reads/s, p99 {:.3} ms",
                if cache { "on" } else { "off" },
                r.reads_per_s,
                r.p99_ms
            );
            rounds.push(r);
        }
    }
    pool.close();
    Ok(CacheReport {
        users: opts.users,
        view_rows,
        readers,
        page_size: opts.page_size,
        duration_secs: opts.duration_secs,
        shards,
        read_rate: (opts.read_rate > 0.0).then_some(opts.read_rate),
        rounds,
    })
}

struct Measured {
    secs: f64,
    all: Histogram<u64>,
    hits: Histogram<u64>,
    misses: Histogram<u64>,
    errors: u64,
    missed: u64,
}

impl Measured {
    fn round(&self, round: usize, cache: bool) -> CacheRound {
        let reads = self.all.len();
        let on = |v: f64| cache.then_some(v);
        CacheRound {
            round,
            cache,
            reads,
            missed: self.missed,
            errors: self.errors,
            reads_per_s: reads as f64 / self.secs.max(1e-9),
            p50_ms: ms(&self.all, 0.5),
            p99_ms: ms(&self.all, 0.99),
            p999_ms: ms(&self.all, 0.999),
            hit_ratio: on(self.hits.len() as f64 / (reads.max(1) as f64)),
            hit_p50_ms: on(ms(&self.hits, 0.5)),
            hit_p99_ms: on(ms(&self.hits, 0.99)),
            hit_p999_ms: on(ms(&self.hits, 0.999)),
            miss_p99_ms: on(ms(&self.misses, 0.99)),
        }
    }
}

async fn measure(
    store: &Store,
    opts: &BenchOptions,
    readers: usize,
    length: Duration,
) -> Result<Measured, BenchError> {
    let stop = Arc::new(AtomicBool::new(false));
    let users = opts.users as u64;
    let zipf = Zipf::new(users, 1.0)
        .map_err(|e| BenchError::InvalidOptions(format!("zipf over {users} users: {e}")))?;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..readers {
        let (store, stop) = (store.clone(), stop.clone());
        let (page, seed) = (opts.page_size, opts.seed ^ (w as u64).wrapping_mul(0x9e37));
        // Paced: reader `w` starts at its share of one period and keeps a fixed schedule.
        let period = (opts.read_rate > 0.0)
            .then(|| Duration::from_secs_f64(readers as f64 / opts.read_rate));
        let first = Instant::now()
            + period.map_or(Duration::ZERO, |p| p.mul_f64(w as f64 / readers as f64));
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (mut all, mut hits, mut misses) = (histogram()?, histogram()?, histogram()?);
            let (mut errors, mut missed) = (0u64, 0u64);
            let mut next = first;
            while !stop.load(Ordering::Relaxed) {
                let rank = zipf.sample(&mut rng) as u64;
                // Rank → user through a multiplicative permutation, so hot users sit on all
                // shards rather than on the lowest ids.
                let user = ((rank.saturating_sub(1)).wrapping_mul(2_654_435_761) % users) + 1;
                let t = match period {
                    Some(p) => {
                        let due = next;
                        next += p;
                        if Instant::now() < due {
                            // On time: the read starts when it is sent (the timer's own
                            // wake-up delay, up to a millisecond, is not the service's).
                            tokio::time::sleep_until(due.into()).await;
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            Instant::now()
                        } else {
                            // Late because the previous read was slow: that wait counts.
                            due
                        }
                    }
                    None => Instant::now(),
                };
                let r = hermet_api::conversation_first_page(&store, user as i64, page).await;
                let us = u64::try_from(t.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                match r {
                    Ok((_, source)) => {
                        let _ = all.record(us);
                        let _ = if source == Source::Cache {
                            hits.record(us)
                        } else {
                            misses.record(us)
                        };
                    }
                    Err(_) => errors += 1,
                }
                if period.is_none() && rng.gen_ratio(1, 64) {
                    // Let other readers in on a busy runtime.
                    tokio::task::yield_now().await;
                }
            }
            if let Some(p) = period {
                // Slots scheduled before the end that never started.
                let end = Instant::now();
                while next < end {
                    missed += 1;
                    next += p;
                }
            }
            Ok::<_, BenchError>((all, hits, misses, errors, missed))
        });
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut m = Measured {
        secs: 0.0,
        all: histogram()?,
        hits: histogram()?,
        misses: histogram()?,
        errors: 0,
        missed: 0,
    };
    while let Some(r) = tasks.join_next().await {
        let (all, hits, misses, errors, missed) =
            r.map_err(|e| BenchError::Internal(format!("reader: {e}")))??;
        let add = |into: &mut Histogram<u64>, from: &Histogram<u64>| {
            into.add(from)
                .map_err(|e| BenchError::Internal(format!("histogram: {e}")))
        };
        add(&mut m.all, &all)?;
        add(&mut m.hits, &hits)?;
        add(&mut m.misses, &misses)?;
        m.errors += errors;
        m.missed += missed;
    }
    m.secs = started.elapsed().as_secs_f64();
    Ok(m)
}
