//! Group commit: one flusher task per database, and the database's failure.
//!
//! A writer makes its change, then awaits [`Flusher::durable`]. The flusher runs one `flush` at a time on
//! a blocking thread and releases every writer whose change was made before that flush started. Many
//! waiting writers therefore share one disk sync, and request handlers never flush concurrently (only
//! sled's own 500 ms background flush may overlap ours, which sled serializes internally).
//!
//! **A failed flush is final.** sled 0.34 keeps the first I/O error of its log writer (a full disk:
//! `ENOSPC`) as a global error that every later write and flush returns, until the database is opened
//! again; what it holds in memory past the last successful flush may never reach the disk. So the
//! first failure fails every waiter at once and every later [`Flusher::durable`] (nothing is reported
//! durable that is not), is logged once, and is published ([`Flusher::failed`]) for the service to
//! reopen the database by restarting (see `service::reopen`). Nothing retries a flush that cannot
//! succeed. The flusher also flushes once a second while idle, so a failure of sled's own background
//! flush (after a write that nobody waits for, such as an unflushed COMMIT) is noticed too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::error::{Error, Result};

/// How often an idle flusher checks that the database can still be flushed.
const IDLE_CHECK: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Flusher {
    inner: Arc<Inner>,
}

struct Inner {
    /// Number of writes that asked for durability so far.
    requested: AtomicU64,
    wake: Notify,
    state: watch::Sender<State>,
}

#[derive(Default)]
struct State {
    /// Highest `requested` value known to be on disk.
    flushed: u64,
    /// Why the database can take no more writes, once a flush failed.
    failed: Option<Failure>,
}

/// A failed flush: what sled said, and whether it was a full disk.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: String,
    pub disk_full: bool,
}

impl Failure {
    fn of(e: &sled::Error) -> Self {
        Failure {
            reason: e.to_string(),
            disk_full: crate::error::is_disk_full(e),
        }
    }

    pub fn error(&self) -> Error {
        Error::Unwritable {
            reason: self.reason.clone(),
            disk_full: self.disk_full,
        }
    }
}

impl Flusher {
    /// Starts the flusher task for `db` on the current tokio runtime; `name` labels its metrics
    /// (`dc_flush_duration_seconds`, `dc_flush_failures_total`) and its log lines.
    pub fn spawn(db: sled::Db, name: &'static str) -> Self {
        let inner = Arc::new(Inner {
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            state: watch::channel(State::default()).0,
        });
        let task = inner.clone();
        tokio::spawn(async move {
            loop {
                // A timeout is the idle check: a flush with nothing new to write costs no sync.
                let woken = tokio::time::timeout(IDLE_CHECK, task.wake.notified())
                    .await
                    .is_ok();
                // Every write numbered up to `target` happened before this load, so before the flush.
                let target = task.requested.load(Ordering::SeqCst);
                if woken && target <= task.state.borrow().flushed {
                    continue;
                }
                let db = db.clone();
                let began = std::time::Instant::now();
                match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(Ok(_)) => {
                        metrics::histogram!("dc_flush_duration_seconds", "db" => name)
                            .record(began.elapsed().as_secs_f64());
                        task.state
                            .send_modify(|s| s.flushed = s.flushed.max(target));
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("dc_flush_failures_total", "db" => name).increment(1);
                        let failure = Failure::of(&e);
                        tracing::error!(db = name, error = %e, disk_full = failure.disk_full,
                            "flush failed: this database takes no more writes until it is reopened");
                        // Every waiter wakes up to the failure; the task ends, as no flush can succeed.
                        task.state.send_modify(|s| s.failed = Some(failure));
                        return;
                    }
                    Err(e) => {
                        tracing::error!(db = name, error = %e, "flush task panicked");
                        let failure = Failure {
                            reason: format!("flush task panicked: {e}"),
                            disk_full: false,
                        };
                        task.state.send_modify(|s| s.failed = Some(failure));
                        return;
                    }
                }
            }
        });
        Flusher { inner }
    }

    /// Returns once every write this caller made before calling is on disk; fails at once if the
    /// database failed (see the module docs).
    pub async fn durable(&self) -> Result<()> {
        let mine = self.inner.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut state = self.inner.state.subscribe();
        self.inner.wake.notify_one();
        let state = state
            .wait_for(|s| s.flushed >= mine || s.failed.is_some())
            .await
            .map_err(|_| Error::FlusherStopped)?;
        match &state.failed {
            Some(failure) if state.flushed < mine => Err(failure.error()),
            _ => Ok(()),
        }
    }

    /// Why the database takes no more writes, if a flush failed.
    pub fn failure(&self) -> Option<Failure> {
        self.inner.state.borrow().failed.clone()
    }

    /// Resolves when a flush fails, with the failure.
    pub async fn failed(&self) -> Failure {
        let mut state = self.inner.state.subscribe();
        loop {
            if let Some(failure) = state.borrow_and_update().failed.clone() {
                return failure;
            }
            // Never an error: the sender lives in `inner`, which `self` holds.
            let _ = state.changed().await;
        }
    }
}
