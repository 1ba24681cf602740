//! Health checks: every `interval`, each registered counter is asked for its status. A counter that
//! fails leaves the write and read sets at once; after `attempts` failures in a row it is removed from
//! the registration table (it comes back by registering again). A counter that answers that its disk
//! is full (`507`) leaves the write and read sets but stays in the table: it is alive, and restarts
//! itself once space is freed. A lagging counter that answers is caught up.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use storage::CounterState;

use crate::counters::SharedCounters;
use crate::registry::Registry;
use crate::sync::Syncer;

pub async fn run(
    registry: Arc<Registry>,
    client: SharedCounters,
    syncer: Syncer,
    interval: Duration,
    attempts: u32,
) {
    // The first check one interval after start, not at once: a coordinator that just recovered has
    // its counters registering anyway, and its first round must not race a check of its own.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let checks = registry.all().into_iter().map(|target| {
            let (registry, client, syncer) = (registry.clone(), client.clone(), syncer.clone());
            async move {
                match client.status(&target).await {
                    Ok(status) => {
                        registry.check_passed(&target.id);
                        registry.note_applied(&target.id, status.last_applied);
                        registry.note_durable(&target.id, status.durable);
                        if registry.state(&target.id) == Some(CounterState::Lagging) {
                            syncer.spawn(target.id.clone());
                        }
                    }
                    // Alive, but its disk is full: out of the write and read sets, but kept in the
                    // table (it restarts itself once space is freed), and said once.
                    Err(e) if e.is_insufficient_storage() => {
                        if registry.note_disk_full(&target.id, true) {
                            tracing::warn!(node = %target.id, error = %e, "counter's disk is full");
                        }
                        if let Err(e) = registry.mark_lagging(&target.id, "its disk is full") {
                            tracing::error!(error = %e, "cannot update the registration table");
                        }
                    }
                    Err(e) => {
                        registry.note_disk_full(&target.id, false);
                        let why = e.to_string();
                        let failed = registry.check_failed(&target.id);
                        tracing::warn!(node = %target.id, failed, error = %why, "health check failed");
                        let result = if failed >= attempts {
                            registry.remove(&target.id)
                        } else {
                            registry.mark_lagging(&target.id, "health check failed").map(|_| ())
                        };
                        if let Err(e) = result {
                            tracing::error!(error = %e, "cannot update the registration table");
                        }
                    }
                }
            }
        });
        join_all(checks).await;
    }
}
