//! The API runs a command again when its transaction lost a race (`StoreError::Retry`, from
//! PostgreSQL's serialization failures and deadlocks), a bounded number of times, and nothing
//! else.

use std::sync::atomic::{AtomicU32, Ordering};

use hermet_store::{connect_pool, StoreError};
use hermet_testkit::TestDb;

/// A real serialization failure: a `REPEATABLE READ` transaction updating a row another
/// transaction changed after its snapshot.
async fn serialization_failure(db: &TestDb) -> StoreError {
    let pool = connect_pool(&db.url, 2).expect("pool");
    let (mut a, b) = (
        pool.get().await.expect("connection"),
        pool.get().await.expect("connection"),
    );
    b.batch_execute(
        "CREATE TABLE IF NOT EXISTS retry_probe (id int PRIMARY KEY, v int);
         INSERT INTO retry_probe VALUES (1, 0) ON CONFLICT DO NOTHING",
    )
    .await
    .expect("probe table");
    let tx = a
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .expect("begin");
    tx.query_one("SELECT v FROM retry_probe WHERE id = 1", &[])
        .await
        .expect("snapshot");
    b.execute("UPDATE retry_probe SET v = v + 1 WHERE id = 1", &[])
        .await
        .expect("concurrent update");
    let err = tx
        .execute("UPDATE retry_probe SET v = v + 1 WHERE id = 1", &[])
        .await
        .expect_err("the snapshot's update must fail");
    StoreError::from(err)
}

#[tokio::test]
async fn lost_races_are_run_again_a_bounded_number_of_times() {
    let db = TestDb::new().await;
    let mut failures = Vec::new();
    for _ in 0..5 {
        let e = serialization_failure(&db).await;
        assert!(
            matches!(e, StoreError::Retry(_)),
            "a lost race maps to Retry: {e}"
        );
        failures.push(e);
    }
    let failures = std::sync::Mutex::new(failures);
    let next_failure = || {
        failures
            .lock()
            .expect("failures")
            .pop()
            .expect("a failure left")
    };

    // Two lost races, then success: the caller sees the success.
    let calls = AtomicU32::new(0);
    let r = hermet_api::retry_conflicts(|| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let out = if n < 2 { Err(next_failure()) } else { Ok(n) };
        async move { out }
    })
    .await;
    assert_eq!(r.expect("succeeds on the third attempt"), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Losing every time: three attempts, then the conflict reaches the caller (503 there).
    let calls = AtomicU32::new(0);
    let r: Result<(), _> = hermet_api::retry_conflicts(|| {
        calls.fetch_add(1, Ordering::SeqCst);
        let out = Err(next_failure());
        async move { out }
    })
    .await;
    assert!(matches!(r, Err(StoreError::Retry(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Anything else is the answer, at once.
    let calls = AtomicU32::new(0);
    let r: Result<(), _> = hermet_api::retry_conflicts(|| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err(StoreError::Unavailable("down".into())) }
    })
    .await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
