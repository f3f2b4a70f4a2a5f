//! One peer's turn in a round of `bench peers`: drain the backlog, the latency loads, the crash.

use super::*;

/// How long reading back waits for a change that is not there yet before calling it lost.
const READ_IDLE: Duration = Duration::from_secs(30);
const CRASH_READ_IDLE: Duration = Duration::from_secs(90);

pub(super) struct Ctx<'a> {
    pub(super) s: &'a Setup<'a>,
    pub(super) ring: i64,
    pub(super) groups: i64,
    pub(super) next_message: i64,
}

/// Drain, latency loads and crash of one peer.
pub(super) async fn peer_turn(
    ctx: &mut Ctx<'_>,
    client: &Client,
    pr: &PeerRound,
    backlog_rows: u64,
    end_lsn: u64,
    backlog_end_ms: i64,
) -> Result<PeerStats, BenchError> {
    let s = ctx.s;
    let brokers = &s.env.kafka_brokers;
    let mut stats = PeerStats::default();
    let mut peak = 0u64;

    // ---- drain
    let from = offsets_now(brokers, &pr.topics).await?;
    let base = total(&from);
    let probe = consumer(brokers)?;
    let broker_start = s.broker_pid.and_then(cpu_secs);
    let mut p = pr.spawn(s, false)?;
    let cpu_start = cpu_secs(p.pid);
    let mut cpu_last = cpu_start;
    let mut walsender = CpuTracker::default();
    let mut progress_at = Instant::now();
    let mut last_progress = 0u64;
    let mut cpu_at_stream: Option<f64> = None;
    // When the first change reached Kafka (Debezium) or was confirmed (hermet): the start-up
    // time is the earlier of this and the "streaming" log line, whichever the peer showed first.
    let mut first_progress: Option<f64> = None;
    let mut baseline: Option<u64> = None;
    let drain_secs = loop {
        if cpu_at_stream.is_none() && streaming_at(&p.log).is_some() {
            cpu_at_stream = cpu_secs(p.pid);
        }
        p.check_alive()
            .map_err(|e| BenchError::Scenario(format!("{}: {e}", pr.peer)))?;
        peak_rss(&p, &mut peak);
        if let Some(c) = cpu_secs(p.pid) {
            cpu_last = Some(c);
        }
        let state = slot_state(client, &pr.slot).await?;
        if let Some((_, Some(pid))) = state {
            walsender.sample(pid as u32);
        }
        let progress = match pr.peer {
            Peer::Hermet => state.map_or(0, |(confirmed, _)| confirmed),
            // Records on Kafka: the topics hold nothing but this drain's records.
            Peer::Debezium => {
                let ends = tokio::task::block_in_place(|| end_offsets(&probe, &pr.topics))?;
                (total(&ends) - base).max(0) as u64
            }
        };
        let target = match pr.peer {
            Peer::Hermet => end_lsn,
            Peer::Debezium => backlog_rows,
        };
        if progress >= target {
            break p.spawned.elapsed().as_secs_f64();
        }
        let start = *baseline.get_or_insert(progress);
        if first_progress.is_none() && progress > start {
            first_progress = Some(p.spawned.elapsed().as_secs_f64());
        }
        if progress > last_progress {
            last_progress = progress;
            progress_at = Instant::now();
        } else if progress_at.elapsed() > STALL {
            return Err(BenchError::Scenario(format!(
                "{} made no progress for {} s draining the backlog; its last lines:\n{}",
                pr.peer,
                STALL.as_secs(),
                tail(&p.log)
            )));
        }
        tokio::time::sleep(POLL).await;
    };
    drop(probe);
    peak_rss(&p, &mut peak);
    stats.drain_secs = drain_secs;
    stats.startup_secs = streaming_at(&p.log)
        .map(|t| t.duration_since(p.spawned).as_secs_f64())
        .into_iter()
        .chain(first_progress)
        .fold(drain_secs, f64::min);
    stats.drain_rows_per_s = backlog_rows as f64 / drain_secs.max(1e-9);
    stats.drain_stream_rows_per_s =
        backlog_rows as f64 / (drain_secs - stats.startup_secs).max(1e-9);
    stats.drain_cpu_secs = cpu_start.zip(cpu_last).map(|(a, b)| b - a);
    stats.drain_cpu_per_100k = stats
        .drain_cpu_secs
        .map(|c| c / backlog_rows.max(1) as f64 * 100_000.0);
    stats.drain_stream_cpu_per_100k = cpu_at_stream
        .zip(cpu_last)
        .map(|(a, b)| (b - a) / backlog_rows.max(1) as f64 * 100_000.0);
    stats.walsender_cpu_secs = walsender.used();
    stats.broker_cpu_secs = broker_start
        .zip(s.broker_pid.and_then(cpu_secs))
        .map(|(a, b)| b - a);
    eprintln!(
        "bench peers: round {}: {} drained {} rows in {:.2} s (start {:.2} s): {:.0} rows/s, \
         CPU {:.2} s, peak RSS {:.1} MiB; reading back",
        pr.round,
        pr.peer,
        backlog_rows,
        drain_secs,
        stats.startup_secs,
        stats.drain_rows_per_s,
        stats.drain_cpu_secs.unwrap_or(0.0),
        peak as f64 / 1024.0
    );
    // Only the backlog's changes (committed before `write_backlog` returned): a peer draining
    // second also streams, after the backlog, what the first one's loads wrote.
    let want = backlog_rows as usize;
    let end = backlog_end_ms;
    let mut events = read_back(brokers, &pr.topics, &from, READ_IDLE, move |e| {
        e.iter().filter(|x| x.commit_ms <= end).count() >= want
    })
    .await?;
    let read = events.len();
    events.retain(|x| x.commit_ms <= end);
    let (check, digest) = check_drain(backlog_rows, &events);
    if check.missing > 0 || check.duplicates > 0 || check.out_of_order > 0 {
        eprintln!(
            "bench peers: round {}: {} backlog check failed: read {read} records, {} committed \
             by the backlog's end: {check:?}",
            pr.round,
            pr.peer,
            events.len()
        );
    }
    drop(events);
    stats.drain_check = check;
    stats.drain_digest = digest;

    // ---- caught up with whatever was written after the backlog (the other peer's loads)
    let from = offsets_now(brokers, &pr.topics).await?;
    let sentinel: i64 = client
        .query_one(
            "UPDATE users SET profile_ver = profile_ver + 1 WHERE id = 1 RETURNING profile_ver",
            &[],
        )
        .await
        .map_err(db_err("write the sentinel"))?
        .get(0);
    let mut barrier = Expectation::default();
    barrier.keys.insert(
        ("users".to_owned(), "{\"id\":1}".to_owned()),
        (sentinel, sentinel),
    );
    read_back(brokers, &pr.topics, &from, STALL, all_found(&barrier)).await?;

    // ---- idle: what the process costs while nothing is written
    if s.opts.idle_secs > 0 {
        let cpu0 = cpu_secs(p.pid);
        tokio::time::sleep(Duration::from_secs(s.opts.idle_secs)).await;
        stats.idle_cpu_secs = cpu0.zip(cpu_secs(p.pid)).map(|(a, b)| b - a);
        eprintln!(
            "bench peers: round {}: {} idle for {} s: CPU {:.2} s",
            pr.round,
            pr.peer,
            s.opts.idle_secs,
            stats.idle_cpu_secs.unwrap_or(0.0)
        );
    }

    // ---- latency at fixed offered loads
    for &rate in &s.opts.rates {
        let from = offsets_now(brokers, &pr.topics).await?;
        let cpu0 = cpu_secs(p.pid);
        let load = live_load(
            s.url.to_owned(),
            rate,
            s.opts.live_secs as f64,
            ctx.ring,
            ctx.groups,
            ctx.next_message,
        )
        .await?;
        ctx.next_message = load.next_message;
        let events = read_back(
            brokers,
            &pr.topics,
            &from,
            READ_IDLE,
            all_found(&load.expect),
        )
        .await?;
        let cpu1 = cpu_secs(p.pid);
        peak_rss(&p, &mut peak);
        let (check, mut lat) = check_live(&load.expect, &events);
        lat.sort_unstable();
        let stat = LatencyStat {
            offered_per_s: rate,
            achieved_per_s: load.changes as f64 / load.secs.max(1e-9),
            changes: load.changes,
            p50_ms: percentile(&lat, 0.50),
            p99_ms: percentile(&lat, 0.99),
            max_ms: lat.last().copied().unwrap_or(0) as f64,
            cpu_per_100k: cpu0
                .zip(cpu1)
                .map(|(a, b)| (b - a) / load.changes.max(1) as f64 * 100_000.0),
            check,
        };
        eprintln!(
            "bench peers: round {}: {} at {rate}/s offered ({:.0}/s achieved): p50 {:.0} ms, \
             p99 {:.0} ms, max {:.0} ms; {} missing, {} duplicates, {} out of order",
            pr.round,
            pr.peer,
            stat.achieved_per_s,
            stat.p50_ms,
            stat.p99_ms,
            stat.max_ms,
            stat.check.missing,
            stat.check.duplicates,
            stat.check.out_of_order
        );
        stats.latency.push(stat);
    }

    // ---- crash: SIGKILL halfway through a load, restart on the same slot
    let from = offsets_now(brokers, &pr.topics).await?;
    let secs = s.opts.crash_secs as f64;
    let writer = tokio::spawn(live_load(
        s.url.to_owned(),
        s.opts.crash_rate,
        secs,
        ctx.ring,
        ctx.groups,
        ctx.next_message,
    ));
    tokio::time::sleep(Duration::from_secs_f64(secs / 2.0)).await;
    p.check_alive()
        .map_err(|e| BenchError::Scenario(format!("{}: {e}", pr.peer)))?;
    peak_rss(&p, &mut peak);
    p.child
        .start_kill()
        .map_err(io_err(format!("SIGKILL {}", pr.peer)))?;
    p.child
        .wait()
        .await
        .map_err(io_err(format!("wait for {}", pr.peer)))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_slot_released(client, &pr.slot).await?;
    let restarted = Instant::now();
    let mut p = pr.spawn(s, false)?;
    let load = writer.await??;
    ctx.next_message = load.next_message;
    let events = read_back(
        brokers,
        &pr.topics,
        &from,
        CRASH_READ_IDLE,
        all_found(&load.expect),
    )
    .await?;
    let recovery_secs = restarted.elapsed().as_secs_f64();
    p.check_alive()
        .map_err(|e| BenchError::Scenario(format!("{} after the restart: {e}", pr.peer)))?;
    peak_rss(&p, &mut peak);
    let (check, _) = check_live(&load.expect, &events);
    stats.crash = CrashStat {
        changes: load.changes,
        lost: check.missing,
        duplicates: check.duplicates,
        out_of_order: check.out_of_order,
        recovery_secs,
    };
    eprintln!(
        "bench peers: round {}: {} crash: {} changes, {} lost, {} duplicates, {} out of order; \
         all back {:.1} s after the restart",
        pr.round,
        pr.peer,
        load.changes,
        check.missing,
        check.duplicates,
        check.out_of_order,
        recovery_secs
    );
    stop(p, pr.peer).await?;
    stats.peak_rss_mib = peak as f64 / 1024.0;
    Ok(stats)
}
