//! The read path: `GET /items/{tenant}/count`, linearizable.
//!
//! **The rule.** A read that arrives when the last COMMIT decision made durable is seq `D` is served
//! only by an in-sync counter that has applied at least `D`. The coordinator knows which counters
//! have: every COMMIT acknowledgement, catch-up page, promotion and health check tells it a counter's
//! last applied seq ([`Registry::note_applied`]). So a read goes, O(1), to any in-sync counter known
//! to be there; while phase 2 of round `D` is still under way and no counter has acknowledged it yet,
//! the read waits for the first acknowledgement (bounded by the read timeout: past it, `503`). A
//! counter that is slow to apply a round is simply not chosen until it has: the read is served by a
//! faster replica. One wait remains: round `D`'s COMMITs go out only once round `D - 1`'s phase 2
//! is over (see [`crate::txn`]), so when a counter times out on round `D - 1`'s COMMIT, a read that
//! needs `D` waits for that timeout too (one call timeout, within the read timeout by default).
//!
//! **Why it is linearizable.** Let `D(t)` be the decided seq at time `t`; it only grows (also across a
//! coordinator restart, which starts from the durable `committed_seq`). A counter applies commits in
//! seq order and only once decided, and answers with `last_applied` read *before* the count, so a read
//! served at `[start, end]` returns the count of a prefix `1..=k` of the commit order with
//! `D(start) <= k <= D(end)`. If read R1 ends before R2 starts, then `k1 <= D(end1) <= D(start2) <=
//! k2`, and every replica holds the same items for the same prefix, so R2's count is at least R1's.
//! The same bound gives freshness: a POST acknowledged before R2 started has a seq at most
//! `D(start2)`. See ARCHITECTURE.md, "The read path".
//!
//! **Batched calls** ([`batch`]). Reads do not call counters one by one: the reads that arrive while a
//! call to a counter is in flight wait and go together, as the next call to it, one
//! `POST /internal/counts` for up to 256 tenants (each once) answered with one `last_applied` and a
//! count per tenant. A read that finds no call in flight to its counter goes at once. The argument
//! above holds for each read of a batch, because of the order of three events: the read takes its
//! `required = D(start)`, and only then joins the counter's queue; the batch is taken from the queue
//! when its call is sent, so after every read in it joined; the counter reads `last_applied`, then
//! every count, after it received the call. So for each read of the batch, whatever its own `start`
//! and `required`: `D(start) = required`; its count is that of a prefix `k >= last_applied` (read
//! after it, commits applied in order; two counts of one batch may be of different prefixes, each
//! bounded so); `k <= D(end)` (the counter read it before answering, so before the read ended, and
//! never applies past the decided seq); and the read is served only if `last_applied >= required`.
//! That is the bound `D(start) <= k <= D(end)` the proof needs; a read whose required seq the batch
//! did not reach goes on as any stale answer does (the counter is marked lagging, the next
//! is tried, or the read waits for an acknowledgement). Reads of one batch may have started at
//! different times: each is judged on its own `required`, and a batch that serves an early read
//! serves it a count at least as fresh as it needs. A failed call fails every read in it, and every
//! read queued behind it, which all fail over as a failed single read does.

use std::sync::Arc;
use std::time::Duration;

use storage::Seq;

use crate::counters::SharedCounters;
use crate::error::ApiError;
use crate::registry::Registry;
use crate::txn::TxnManager;

mod batch;
#[cfg(test)]
mod tests;

use batch::Batcher;

#[derive(Clone)]
pub struct Reader {
    registry: Arc<Registry>,
    txn: Arc<TxnManager>,
    batcher: Batcher,
    /// How long a read may wait for a counter to apply the last decided round.
    wait: Duration,
}

impl Reader {
    pub fn new(
        registry: Arc<Registry>,
        txn: Arc<TxnManager>,
        client: SharedCounters,
        wait: Duration,
    ) -> Self {
        Reader {
            registry,
            txn,
            batcher: Batcher::new(client),
            wait,
        }
    }

    /// The tenant's count, from a counter that has applied every commit decided before this call.
    pub async fn count(&self, tenant: &str) -> Result<u64, ApiError> {
        self.count_at(tenant, self.txn.decided_seq()).await
    }

    /// The tenant's count from a counter that has applied at least `required`.
    async fn count_at(&self, tenant: &str, required: Seq) -> Result<u64, ApiError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        // Subscribed to acknowledgements only when no counter is ready: the common path stays a
        // lookup and one call.
        let mut applied: Option<tokio::sync::watch::Receiver<u64>> = None;
        loop {
            if let Some(applied) = &mut applied {
                // Marked seen before the registry is read, so no acknowledgement slips between.
                applied.borrow_and_update();
            }
            for target in self.registry.readers(required) {
                let why = match self.batcher.count(&target, tenant).await {
                    Ok(answer) if answer.last_applied >= required => return Ok(answer.count),
                    // It acknowledged `required` before: this is not the replica we knew.
                    Ok(answer) => format!(
                        "stale read: applied {}, known to have applied {required}",
                        answer.last_applied
                    ),
                    Err(e) => format!("read failed: {e}"),
                };
                match self.registry.mark_lagging(&target.id, &why) {
                    Ok(true) => {
                        let store = self.txn.store().clone();
                        tokio::spawn(async move { store.durable().await });
                    }
                    Ok(false) => {}
                    // The coordinator's own disk failed: the read still goes on to the next counter.
                    Err(e) => tracing::warn!(error = %e, node = %target.id, "cannot mark lagging"),
                }
            }
            // No in-sync counter has applied `required` yet: phase 2 is under way. Subscribe and look
            // once more, then wait for the next acknowledgement (or promotion) and look again.
            let Some(changes) = &mut applied else {
                applied = Some(self.registry.watch_applied());
                continue;
            };
            if !matches!(
                tokio::time::timeout_at(deadline, changes.changed()).await,
                Ok(Ok(()))
            ) {
                return Err(ApiError::Unavailable(format!(
                    "no in-sync counter has applied commit {required} yet"
                )));
            }
        }
    }
}
