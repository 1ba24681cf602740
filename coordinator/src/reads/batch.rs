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
/// counter is in the map exactly while someone holds its [`Lane`]: the read that found it idle, for
/// that read's own call, then a task of [`Batcher::drive`] for the reads that queued meanwhile.
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
        if let Some(waiter) = idle {
            // No call in flight to `to`: this read makes one, for itself alone and at once, in its
            // own task (a hand-over to another costs a wake-up, which an idle coordinator would pay
            // on every read). The reads that queue meanwhile go on in a task of their own.
            let mut lane = Lane {
                batcher: self,
                to,
                open: true,
            };
            let failed = self.call(to, vec![waiter]).await.err();
            lane.pass_on(failed);
        }
        answered.await.unwrap_or_else(|_| {
            Err(CallError::Unreachable(
                "the read batch was abandoned".into(),
            ))
        })
    }

    /// Calls counter `to` for `batch`, then for the reads that came meanwhile, until none waits.
    async fn drive(self, to: Target, mut batch: Vec<Waiter>) {
        let mut lane = Lane {
            batcher: &self,
            to: &to,
            open: true,
        };
        loop {
            let failed = self.call(&to, batch).await.err();
            match lane.next_batch(failed) {
                Some(next) => batch = next,
                None => return,
            }
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

/// The right to call a counter, held by whoever makes the call in flight to it: the read that found
/// it idle, then a task of [`Batcher::drive`]. Dropped while open (the read given up by its client
/// mid-call, or a panic), it passes the waiting reads on to a new task, so none is left waiting.
struct Lane<'a> {
    batcher: &'a Batcher,
    to: &'a Target,
    open: bool,
}

impl Lane<'_> {
    /// After a call: the next batch, at most [`MAX_COUNTS_TENANTS`] of the reads waiting, or `None`
    /// when none waits, and the lane is closed. After a failed call the lane is closed too, and every
    /// waiting read fails with the same error: the counter just failed, so they fail over now rather
    /// than wait for another call to it.
    fn next_batch(&mut self, failed: Option<CallError>) -> Option<Vec<Waiter>> {
        let mut lanes = self.batcher.lock();
        let mut waiting = lanes
            .get_mut(self.to)
            .map(std::mem::take)
            .unwrap_or_default();
        if failed.is_some() || waiting.is_empty() {
            lanes.remove(self.to);
            self.open = false;
            drop(lanes);
            if let Some(error) = failed {
                for waiter in waiting {
                    let _ = waiter.answer.send(Err(error.clone()));
                }
            }
            return None;
        }
        if waiting.len() > MAX_COUNTS_TENANTS {
            let rest = waiting.split_off(MAX_COUNTS_TENANTS);
            lanes.insert(self.to.clone(), rest);
        }
        Some(waiting)
    }

    /// Hands the reads that queued during this call to a task that calls for them.
    fn pass_on(&mut self, failed: Option<CallError>) {
        if let Some(batch) = self.next_batch(failed) {
            self.open = false;
            let batcher = self.batcher.clone();
            tokio::spawn(batcher.drive(self.to.clone(), batch));
        }
    }
}

impl Drop for Lane<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            self.pass_on(None);
        } else {
            // The runtime is going away: dropping the waiting reads answers them as failed.
            self.batcher.lock().remove(self.to);
        }
    }
}
