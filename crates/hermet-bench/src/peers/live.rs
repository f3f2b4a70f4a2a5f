//! The live load of `bench peers`: one writer committing a transaction every [`TICK`] at a
//! fixed offered rate, and what it committed ([`Expectation`]), for the latency and crash checks.

use super::*;

/// The live writer commits one transaction per tick.
const TICK: Duration = Duration::from_millis(10);

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) struct LiveLoad {
    pub(super) changes: u64,
    pub(super) secs: f64,
    pub(super) expect: Expectation,
    pub(super) next_message: i64,
}

/// Commits a transaction every [`TICK`] for `secs` at `rate` changes/s: message inserts (ids from
/// `next_message`) and `profile_ver` increments of the ring users, half each.
pub(super) async fn live_load(
    url: String,
    rate: f64,
    secs: f64,
    ring: i64,
    groups: i64,
    next_message: i64,
) -> Result<LiveLoad, BenchError> {
    let mut client = admin_connect(&url).await?;
    let mut expect = Expectation::default();
    let ring_ids: Vec<i64> = (1..=ring).collect();
    let rows = client
        .query(
            "SELECT id, profile_ver FROM users WHERE id = ANY($1)",
            &[&ring_ids],
        )
        .await
        .map_err(db_err("read the ring users"))?;
    let mut first: HashMap<i64, i64> = rows
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1) + 1))
        .collect();
    let insert = client
        .prepare(
            "INSERT INTO messages (id, channel_id, seq, sender_id, sender_name, msg_type, content, created_at)
             SELECT g, g % $3::int8 + 1, g, g % $4::int8 + 1, 'live', 'text', 'live message ' || g, $5::int8
               FROM generate_series($1::int8, $2::int8) g",
        )
        .await
        .map_err(db_err("prepare the live insert"))?;
    let bump = client
        .prepare(
            "UPDATE users SET profile_ver = profile_ver + 1, updated_at = $2
              WHERE id = ANY($1) RETURNING id, profile_ver",
        )
        .await
        .map_err(db_err("prepare the live update"))?;
    let mut next = next_message;
    let mut next_user = 0i64;
    let mut changes = 0u64;
    let mut last_ver: HashMap<i64, i64> = HashMap::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while started.elapsed().as_secs_f64() < secs {
        tick.tick().await;
        // What the schedule owes by now: a late tick (slow commit, busy machine) writes more in
        // its transaction, so the offered rate holds as long as the database keeps up.
        let n = (rate * started.elapsed().as_secs_f64()).floor() as i64 - changes as i64;
        if n <= 0 {
            continue;
        }
        let msgs = n - n / 2;
        let users: Vec<i64> = (0..n / 2)
            .map(|i| (next_user + i) % ring.max(1) + 1)
            .collect();
        next_user = (next_user + n / 2) % ring.max(1);
        let now_ms = now_ms();
        let tx = client
            .transaction()
            .await
            .map_err(db_err("live load: begin"))?;
        let last = next + msgs - 1;
        tx.execute(&insert, &[&next, &last, &groups, &ring, &now_ms])
            .await
            .map_err(db_err("live load: insert messages"))?;
        let bumped = if users.is_empty() {
            Vec::new()
        } else {
            tx.query(&bump, &[&users, &now_ms])
                .await
                .map_err(db_err("live load: update users"))?
        };
        tx.commit().await.map_err(db_err("live load: commit"))?;
        for id in next..=last {
            expect
                .keys
                .insert(("messages".to_owned(), format!("{{\"id\":{id}}}")), (0, 0));
        }
        for r in &bumped {
            let (id, v): (i64, i64) = (r.get(0), r.get(1));
            let e = last_ver.entry(id).or_insert(v);
            *e = (*e).max(v);
        }
        next = last + 1;
        changes += n as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    for (id, last) in last_ver {
        let first = first.remove(&id).unwrap_or(last);
        expect.keys.insert(
            ("users".to_owned(), format!("{{\"id\":{id}}}")),
            (first, last),
        );
    }
    Ok(LiveLoad {
        changes,
        secs,
        expect,
        next_message: next,
    })
}

pub(super) fn all_found(expect: &Expectation) -> impl Fn(&[Event]) -> bool + Send + 'static {
    let expect = expect.clone();
    move |events: &[Event]| check_live(&expect, events).0.missing == 0
}
