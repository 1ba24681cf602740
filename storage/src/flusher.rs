//! Group commit: one flusher task per database.
//!
//! A writer makes its change, then awaits [`Flusher::durable`]. The flusher runs one `flush` at a time on
//! a blocking thread and releases every writer whose change was made before that flush started. Many
//! waiting writers therefore share one disk sync, and request handlers never flush concurrently (only
//! sled's own 500 ms background flush may overlap ours, which sled serializes internally).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct Flusher {
    inner: Arc<Inner>,
}

struct Inner {
    /// Number of writes that asked for durability so far.
    requested: AtomicU64,
    wake: Notify,
    /// Highest `requested` value known to be on disk.
    flushed: watch::Sender<u64>,
}

impl Flusher {
    /// Starts the flusher task for `db` on the current tokio runtime; `name` labels its metrics
    /// (`dc_flush_duration_seconds`, `dc_flush_failures_total`).
    pub fn spawn(db: sled::Db, name: &'static str) -> Self {
        let inner = Arc::new(Inner {
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            flushed: watch::channel(0).0,
        });
        let task = inner.clone();
        tokio::spawn(async move {
            loop {
                task.wake.notified().await;
                // Every write numbered up to `target` happened before this load, so before the flush.
                let target = task.requested.load(Ordering::SeqCst);
                if target <= *task.flushed.borrow() {
                    continue;
                }
                let db = db.clone();
                let began = std::time::Instant::now();
                match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(Ok(_)) => {
                        metrics::histogram!("dc_flush_duration_seconds", "db" => name)
                            .record(began.elapsed().as_secs_f64());
                        task.flushed.send_replace(target);
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("dc_flush_failures_total", "db" => name).increment(1);
                        // Waiters stay blocked rather than being told a lie; the next write retries.
                        tracing::error!(error = %e, "flush failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        task.wake.notify_one();
                    }
                    Err(e) => tracing::error!(error = %e, "flush task panicked"),
                }
            }
        });
        Flusher { inner }
    }

    /// Returns once every write this caller made before calling is on disk.
    pub async fn durable(&self) -> Result<()> {
        let mine = self.inner.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.inner.flushed.subscribe();
        self.inner.wake.notify_one();
        flushed
            .wait_for(|&done| done >= mine)
            .await
            .map_err(|_| Error::FlusherStopped)?;
        Ok(())
    }
}
