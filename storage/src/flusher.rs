//! Group commit: one flusher thread per database, and the database's failure.
//!
//! A writer makes its change, then awaits [`Flusher::durable`]. The flusher thread runs one `flush` at
//! a time and releases every writer whose change was made before that flush started. Many waiting
//! writers therefore share one disk sync, and request handlers never flush concurrently (only sled's
//! own 500 ms background flush may overlap ours, which sled serializes internally). It is a thread of
//! its own rather than a task that hands each flush to tokio's blocking pool: a flush is blocking
//! I/O either way, and on a lightly loaded replica every extra hop between threads is a context switch
//! that costs more CPU than the round's own work (measured in BENCHMARKS.md). The thread ends when the
//! last handle is dropped, which closes the database and releases sled's file lock.
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
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::{Error, Result};

/// How often an idle flusher checks that the database can still be flushed.
const IDLE_CHECK: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Flusher {
    /// Dropped with the last handle, which ends the thread.
    handles: Arc<Handles>,
}

struct Inner {
    /// Number of writes that asked for durability so far.
    requested: AtomicU64,
    wake: Mutex<Wake>,
    woken: Condvar,
    state: watch::Sender<State>,
}

#[derive(Default)]
struct Wake {
    /// A writer is waiting for a flush.
    pending: bool,
    /// Every handle is gone.
    closed: bool,
}

struct Handles {
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Handles {
    /// Ends the thread and waits for it (at most the flush under way), so that the database is
    /// closed once the store is dropped.
    fn drop(&mut self) {
        self.inner.lock_wake().closed = true;
        self.inner.woken.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Inner {
    fn lock_wake(&self) -> std::sync::MutexGuard<'_, Wake> {
        // The guarded flags stay meaningful if a holder panicked.
        self.wake.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a writer, or [`IDLE_CHECK`]; `None` once every handle is gone, else whether a
    /// writer woke it.
    fn wait(&self) -> Option<bool> {
        let wake = self.lock_wake();
        let (mut wake, _) = self
            .woken
            .wait_timeout_while(wake, IDLE_CHECK, |w| !w.pending && !w.closed)
            .unwrap_or_else(|p| p.into_inner());
        if wake.closed {
            return None;
        }
        Some(std::mem::take(&mut wake.pending))
    }

    fn fail(&self, failure: Failure) {
        // Every waiter wakes up to the failure; the thread ends, as no flush can succeed.
        self.state.send_modify(|s| s.failed = Some(failure));
    }
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
    /// Starts the flusher thread for `db`; `name` labels its metrics (`dc_flush_duration_seconds`,
    /// `dc_flush_failures_total`), its log lines and the thread.
    pub fn spawn(db: sled::Db, name: &'static str) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            requested: AtomicU64::new(0),
            wake: Mutex::default(),
            woken: Condvar::new(),
            state: watch::channel(State::default()).0,
        });
        let task = inner.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name} flusher"))
            .spawn(move || run(&task, &db, name))?;
        Ok(Flusher {
            handles: Arc::new(Handles {
                inner,
                thread: Some(thread),
            }),
        })
    }

    fn inner(&self) -> &Inner {
        &self.handles.inner
    }

    /// Returns once every write this caller made before calling is on disk; fails at once if the
    /// database failed (see the module docs).
    pub async fn durable(&self) -> Result<()> {
        let mine = self.inner().requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut state = self.inner().state.subscribe();
        self.inner().lock_wake().pending = true;
        self.inner().woken.notify_one();
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
        self.inner().state.borrow().failed.clone()
    }

    /// Resolves when a flush fails, with the failure.
    pub async fn failed(&self) -> Failure {
        let mut state = self.inner().state.subscribe();
        loop {
            if let Some(failure) = state.borrow_and_update().failed.clone() {
                return failure;
            }
            // Never an error: the sender lives in `inner`, which `self` holds.
            let _ = state.changed().await;
        }
    }
}

/// The flusher thread's loop, until every handle is gone or a flush failed.
fn run(task: &Inner, db: &sled::Db, name: &'static str) {
    while let Some(woken) = task.wait() {
        // Every write numbered up to `target` happened before this load, so before the flush.
        let target = task.requested.load(Ordering::SeqCst);
        // A timeout is the idle check: a flush with nothing new to write costs no sync.
        if woken && target <= task.state.borrow().flushed {
            continue;
        }
        let began = std::time::Instant::now();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.flush())) {
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
                return task.fail(failure);
            }
            Err(_) => {
                tracing::error!(db = name, "flush panicked");
                return task.fail(Failure {
                    reason: "flush panicked".into(),
                    disk_full: false,
                });
            }
        }
    }
}
