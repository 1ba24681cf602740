//! Opportunistic batching of reads, one lane per counter: the reads that arrive while a call to their
//! counter is in flight wait, and go together as the next call, one [`Counters::counts`] for many
//! tenants (any tenants, each sent once). A read that finds no call in flight to its counter goes at
//! once, so a lightly loaded coordinator adds no latency; under load a call carries every read that
//! arrived during the previous one (the write path's group commit, applied to reads). One call per
//! counter is in flight at a time; a batch holds at most [`MAX_COUNTS_TENANTS`] reads.
//!
//! Why the read rule still holds (see [`crate::reads`]): a read joins a lane only after it has read its
//! required seq, and a batch is taken from the lane when its call is sent, so every read in a batch
//! read its required seq before the counter read `last_applied`. Each read then judges the batch's
//! `last_applied` against its own required seq.
//!
//! [`Counters::counts`]: crate::counters::Counters::counts

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use storage::proto::MAX_COUNTS_TENANTS;
use storage::Seq;
use tokio::sync::oneshot;

use crate::counters::{CallError, CallResult, SharedCounters};
use crate::registry::Target;

/// A tenant's count from a counter, with the `last_applied` that counter read before the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub count: u64,
    pub last_applied: Seq,
}

/// A read waiting for its counter's next call.
struct Waiter {
    tenant: String,
    answer: oneshot::Sender<CallResult<Count>>,
}

/// The counters with a call in flight, each with the reads waiting for the next call to it. A
/// counter is in the map exactly while a task ([`Batcher::drive`]) is calling it.
type Lanes = HashMap<Target, Vec<Waiter>>;

#[derive(Clone)]
pub struct Batcher {
    client: SharedCounters,
    lanes: Arc<Mutex<Lanes>>,
}

impl Batcher {
    pub fn new(client: SharedCounters) -> Self {
        Batcher {
            client,
            lanes: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lanes> {
        // Nothing panics while holding it; a poisoned map is still consistent.
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many reads wait for the next call to `to`.
    #[cfg(test)]
    pub(super) fn waiting(&self, to: &Target) -> usize {
        self.lock().get(to).map_or(0, Vec::len)
    }

    /// `tenant`'s count from counter `to`: in the call going out now if none is in flight to it, else
    /// in the next one. A failed call fails every read in it, and every read waiting behind it.
    pub async fn count(&self, to: &Target, tenant: &str) -> CallResult<Count> {
        let (answer, answered) = oneshot::channel();
        let waiter = Waiter {
            tenant: tenant.to_owned(),
            answer,
        };
        let idle = {
            let mut lanes = self.lock();
            match lanes.get_mut(to) {
                Some(waiting) => {
                    waiting.push(waiter);
                    None
                }
                None => {
                    lanes.insert(to.clone(), Vec::new());
                    Some(waiter)
                }
            }
        };
        // A task of its own makes the calls, so that a read given up (its client gone) never leaves
        // the reads behind it waiting.
        if let Some(waiter) = idle {
            tokio::spawn(self.clone().drive(to.clone(), vec![waiter]));
        }
        answered.await.unwrap_or_else(|_| {
            Err(CallError::Unreachable(
                "the read batch was abandoned".into(),
            ))
        })
    }

    /// Calls counter `to` for `batch`, then for the reads that came meanwhile, until none waits.
    async fn drive(self, to: Target, mut batch: Vec<Waiter>) {
        let mut lane = LaneGuard {
            batcher: &self,
            to: &to,
            closed: false,
        };
        loop {
            let failed = self.call(&to, batch).await.err();
            let mut lanes = self.lock();
            let mut waiting = lanes.get_mut(&to).map(std::mem::take).unwrap_or_default();
            if let Some(error) = failed {
                lanes.remove(&to);
                lane.closed = true;
                drop(lanes);
                // The counter just failed a call: the reads behind it fail over now, as if theirs
                // had failed, rather than wait for another call to it.
                for waiter in waiting {
                    let _ = waiter.answer.send(Err(error.clone()));
                }
                return;
            }
            if waiting.is_empty() {
                lanes.remove(&to);
                lane.closed = true;
                return;
            }
            if waiting.len() > MAX_COUNTS_TENANTS {
                let rest = waiting.split_off(MAX_COUNTS_TENANTS);
                lanes.insert(to.clone(), rest);
            }
            batch = waiting;
        }
    }

    /// One call for `batch`, each tenant once, and every read in it answered. Reads already given up
    /// are left out.
    async fn call(&self, to: &Target, batch: Vec<Waiter>) -> CallResult<()> {
        let mut batch: Vec<Waiter> = batch
            .into_iter()
            .filter(|w| !w.answer.is_closed())
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        // Each read's place in the call's tenants; a tenant asked twice is counted once.
        let mut slots = Vec::with_capacity(batch.len());
        let mut first = Vec::with_capacity(batch.len());
        {
            let mut index: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
            for waiter in &batch {
                let next = index.len();
                let slot = *index.entry(waiter.tenant.as_str()).or_insert(next);
                first.push(slot == next);
                slots.push(slot);
            }
        }
        let tenants: Vec<String> = batch
            .iter_mut()
            .zip(&first)
            .filter(|(_, &first)| first)
            .map(|(waiter, _)| std::mem::take(&mut waiter.tenant))
            .collect();
        let asked = tenants.len();
        metrics::histogram!("dc_read_batch_size").record(asked as f64);
        let answer =
            self.client
                .counts(to, tenants)
                .await
                .and_then(|answer| match answer.counts.len() {
                    n if n == asked => Ok(answer),
                    n => Err(CallError::Malformed(format!(
                        "{n} counts for {asked} tenants"
                    ))),
                });
        match answer {
            Ok(answer) => {
                for (waiter, slot) in batch.into_iter().zip(slots) {
                    let _ = waiter.answer.send(Ok(Count {
                        count: answer.counts[slot],
                        last_applied: answer.last_applied,
                    }));
                }
                Ok(())
            }
            Err(e) => {
                for waiter in batch {
                    let _ = waiter.answer.send(Err(e.clone()));
                }
                Err(e)
            }
        }
    }
}

/// Closes a lane whose task ends without closing it (a panic, or the runtime shutting down): its
/// waiting reads are dropped, which answers them as failed, and the next read opens a new lane.
struct LaneGuard<'a> {
    batcher: &'a Batcher,
    to: &'a Target,
    closed: bool,
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        if !self.closed {
            self.batcher.lock().remove(self.to);
        }
    }
}
