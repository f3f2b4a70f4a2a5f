//! The tasks of `hermet serve` and how they stop.
//!
//! Contract:
//! - Every long-running task of the process is spawned through [`Tasks`]: it is tracked, named,
//!   and stops when its [`CancellationToken`] is cancelled, after its own shutdown path (the
//!   HTTP API answers the requests it has; the relay has Kafka acknowledge what it produced
//!   and confirms that position to PostgreSQL; a projector commits the batch it applied).
//! - The first task to end on its own (an error, a panic, or an unasked return) ends the
//!   process: [`Tasks::ended`] reports it, and the caller stops the others.
//! - [`Tasks::finish`] cancels every task and waits for them until one deadline. Past it, it
//!   logs and returns an error naming the tasks still running (the process exits non-zero):
//!   a stop that takes longer than the orchestrator allows should say where it was stuck,
//!   not be cut short silently by SIGKILL. Nothing in it sleeps a fixed time.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest wait between two restarts of a failing task.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A task that ran at least this long before failing starts its backoff over: it was healthy.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Names of the tasks still running, with how many of each (the projector groups share none,
/// but nothing forbids two tasks of one name).
type Running = Arc<Mutex<BTreeMap<&'static str, usize>>>;

/// The tracked tasks of one process, and the token that stops them.
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
    running: Running,
    ended_tx: mpsc::UnboundedSender<(&'static str, anyhow::Result<()>)>,
    ended_rx: mpsc::UnboundedReceiver<(&'static str, anyhow::Result<()>)>,
}

/// Removes a task's name from [`Running`] however the task ends (also when it is dropped).
struct RunningGuard {
    name: &'static str,
    running: Running,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut r = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = r.get_mut(self.name) {
            *n -= 1;
            if *n == 0 {
                r.remove(self.name);
            }
        }
    }
}

/// How a supervised task is restarted.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// The first wait after a failure; it doubles up to [`MAX_BACKOFF`].
    pub first_backoff: Duration,
    /// Errors that no restart can fix (a lost slot, a bad configuration): they end the process.
    pub fatal: fn(&anyhow::Error) -> bool,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            first_backoff: Duration::from_millis(500),
            fatal: |_| false,
        }
    }
}

impl Tasks {
    pub fn new() -> Tasks {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Tasks {
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            running: Running::default(),
            ended_tx,
            ended_rx,
        }
    }

    /// Spawns `task`, tracked under `name`. It must return once the set is cancelled, or on a
    /// stop of its own asked before [`Tasks::finish`] (the HTTP server's).
    /// If it ends before that, [`Tasks::ended`] reports it.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        *self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name)
            .or_default() += 1;
        let guard = RunningGuard {
            name,
            running: self.running.clone(),
        };
        let (cancel, ended) = (self.cancel.clone(), self.ended_tx.clone());
        self.tracker.spawn(async move {
            let _guard = guard;
            let result = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(r) => r,
                Err(panic) => Err(anyhow::anyhow!("{name} panicked: {}", panic_text(&panic))),
            };
            if cancel.is_cancelled() {
                // Stopping anyway: a failure on the way out is worth a line, not a non-zero
                // exit (what was not confirmed is done again after a restart).
                if let Err(e) = result {
                    tracing::warn!(task = name, error = %e, "task failed while stopping");
                }
                return;
            }
            let _ = ended.send((name, result));
        })
    }

    /// Spawns `work` under `name` and drops it when the token is cancelled: for loops that hold
    /// no progress of their own (the samplers), so there is nothing to finish on the way out.
    pub fn spawn_until_cancelled<F>(&self, name: &'static str, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.cancel.clone();
        self.spawn(name, async move {
            token.run_until_cancelled(work).await;
            Ok(())
        });
    }

    /// Runs `run` under `name`, restarting it with backoff when it fails until the token is
    /// cancelled; an error `restart.fatal` accepts ends the process instead.
    pub fn supervise<F, Fut>(&self, name: &'static str, restart: Restart, run: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        let cancel = self.cancel.clone();
        self.spawn(name, async move {
            let mut backoff = restart.first_backoff;
            loop {
                let started = Instant::now();
                let result = run(cancel.clone()).await;
                if cancel.is_cancelled() {
                    return result;
                }
                let e = match result {
                    // A loop that returns unasked has nothing left to do: let the process say so.
                    Ok(()) => return Ok(()),
                    Err(e) if (restart.fatal)(&e) => return Err(e),
                    Err(e) => e,
                };
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = restart.first_backoff;
                }
                tracing::warn!(task = name, error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "background task failed");
                if cancel
                    .run_until_cancelled(tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    return Ok(());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
    }

    /// The first task that ended on its own, with its result (`Err` with its cause for an
    /// error or a panic). Pending forever while every task runs.
    pub async fn ended(&mut self) -> anyhow::Result<()> {
        match self.ended_rx.recv().await {
            Some((_, Ok(()))) => Ok(()),
            Some((name, Err(e))) => Err(e.context(format!("{name} stopped"))),
            // The sender lives in `self`.
            None => std::future::pending().await,
        }
    }

    /// Names of the tasks still running, `name×count` where several share one.
    pub fn running(&self) -> Vec<String> {
        let r = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        r.iter()
            .map(|(name, n)| match n {
                1 => (*name).to_owned(),
                n => format!("{name}×{n}"),
            })
            .collect()
    }

    /// Cancels every task and waits for them until `deadline`; past it, an error naming the
    /// tasks still running.
    pub async fn finish(self, deadline: Instant, allowed: Duration) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let running = self.running().join(", ");
        tracing::error!(deadline_secs = allowed.as_secs_f64(), still_running = %running,
            "shutdown deadline passed with tasks still running");
        anyhow::bail!(
            "shutdown did not finish within shutdown.deadline_secs ({}s); still running: {running}",
            allowed.as_secs_f64()
        )
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finish_waits_for_stopping_tasks_and_names_the_stuck_ones() {
        let tasks = Tasks::new();
        let token = tasks.cancel.clone();
        // Stops on cancel, after a shutdown path of its own.
        tasks.spawn("polite", async move {
            token.cancelled().await;
            tokio::task::yield_now().await;
            Ok(())
        });
        tasks.spawn("stuck", std::future::pending());
        assert_eq!(tasks.running(), ["polite", "stuck"]);
        let allowed = Duration::from_millis(200);
        let e = tasks
            .finish(Instant::now() + allowed, allowed)
            .await
            .expect_err("one task ignores the cancellation");
        let text = e.to_string();
        assert!(text.contains("stuck") && !text.contains("polite"), "{text}");
    }

    #[tokio::test]
    async fn the_first_failure_is_reported_and_a_fatal_error_is_not_retried() {
        let mut tasks = Tasks::new();
        tasks.supervise(
            "doomed",
            Restart {
                first_backoff: Duration::from_millis(1),
                fatal: |e| e.to_string().contains("fatal"),
            },
            |_| async { anyhow::bail!("fatal: no way on") },
        );
        let e = tasks
            .ended()
            .await
            .expect_err("a fatal error ends the task");
        assert!(format!("{e:#}").contains("doomed stopped"), "{e:#}");
        let allowed = Duration::from_secs(5);
        tasks
            .finish(Instant::now() + allowed, allowed)
            .await
            .expect("nothing left running");
    }
}
