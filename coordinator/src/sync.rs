//! Catch-up: bringing a lagging counter back into the write and read sets (the original "register &
//! sync" flow, made incremental).
//!
//! The coordinator pulls pages of committed transactions from an in-sync counter's log, from the
//! lagging counter's `last_applied + 1` on, and pushes them to it. When the source's log no longer
//! reaches back that far, it sends a snapshot instead: every item, page by page, then the seq the source
//! stood at when the snapshot began, and continues from the log after that seq. Items only ever grow, so
//! a snapshot taken while writes go on is still exact once the log after its seq is applied.
//!
//! Pages are bounded, so neither side holds the dataset in memory. Writes go on during the bulk of the
//! transfer; the last stretch runs under the round lock, between two rounds, so that when the counter is
//! promoted it holds every committed transaction and takes part in the very next round.

use std::sync::Arc;

use storage::proto::LogPage;
use storage::{crash, Seq};
use tracing::Instrument;

use crate::counters::{CallError, SharedCounters};
use crate::registry::{Registry, Target};
use crate::txn::TxnManager;

/// Without the lock, transfer until the counter is this close to the committed seq.
const CLOSE_ENOUGH: Seq = 16;
/// Unlocked transfer passes before taking the lock anyway (writes may outpace the transfer).
const MAX_PASSES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("call failed: {0}")]
    Call(#[from] CallError),
    #[error("storage: {0}")]
    Storage(#[from] storage::Error),
    #[error("no in-sync counter to copy from")]
    NoSource,
    #[error("counter {0} is ahead of the coordinator (applied {1}, committed {2})")]
    Ahead(String, Seq, Seq),
    #[error("counter left the registry")]
    Gone,
    #[error("the final stretch took more than {0:?} under the round lock; next try in {1:?} at the earliest")]
    TooSlow(std::time::Duration, std::time::Duration),
    #[error("every source's log is trimmed past the counter; a snapshot must run before the last stretch")]
    Retry,
}

/// Where a [`Syncer::transfer`] left the target: its last applied seq.
enum Transferred {
    /// Everything the source had was copied.
    Done(Seq),
    /// The source's log was trimmed past the target again after a snapshot.
    Outpaced(Seq),
}

impl Transferred {
    fn at(&self) -> Seq {
        match *self {
            Transferred::Done(at) | Transferred::Outpaced(at) => at,
        }
    }
}

struct Source {
    target: Target,
    log_floor: Seq,
}

impl Source {
    /// Whether the source's log still holds the commit after `at`.
    fn log_reaches(&self, at: Seq) -> bool {
        self.log_floor <= at
    }
}

#[derive(Clone)]
pub struct Syncer {
    pub registry: Arc<Registry>,
    pub txn: Arc<TxnManager>,
    pub client: SharedCounters,
    pub page_items: usize,
    /// How long the final stretch may hold the round lock (the call timeout: no longer than a slow
    /// PREPARE would hold a round); past it the catch-up gives up, and the counter waits longer before
    /// the next (see `registry::Rejoin`).
    pub lock_budget: std::time::Duration,
}

impl Syncer {
    /// Starts a catch-up of `id` in the background unless one runs already or it is in sync.
    pub fn spawn(&self, id: String) {
        let this = self.clone();
        let span = tracing::info_span!("catch_up", node = %id);
        tokio::spawn(
            async move {
                if !this.registry.may_rejoin(&id) {
                    return;
                }
                if let Err(e) = this.run(&id).await {
                    tracing::warn!(error = %e, "catch-up failed; retried at the next health check or registration");
                }
            }
            .instrument(span),
        );
    }

    /// Runs a catch-up of `id` to its end (nothing when one runs already or it is in sync). What
    /// [`Syncer::spawn`] runs in the background; a simulation calls it in its own order.
    pub async fn run(&self, id: &str) -> Result<(), SyncError> {
        let Some(generation) = self.registry.start_sync(id) else {
            return Ok(());
        };
        let result = self.catch_up(id, generation).await;
        self.registry.end_sync(id, generation);
        result
    }

    fn target(&self, id: &str) -> Result<Target, SyncError> {
        Ok(Target {
            id: id.to_owned(),
            url: self.registry.url(id).ok_or(SyncError::Gone)?,
        })
    }

    /// Fails with [`SyncError::Gone`] once this catch-up (`generation`) no longer owns `id`'s: the
    /// counter was removed and registered anew, and another catch-up may already have promoted it.
    /// Checked before every write to the counter, so a stale catch-up never writes into a replica
    /// that serves.
    fn still_mine(&self, id: &str, generation: u64) -> Result<(), SyncError> {
        if self.registry.is_syncing(id, generation) {
            Ok(())
        } else {
            Err(SyncError::Gone)
        }
    }

    async fn catch_up(&self, id: &str, generation: u64) -> Result<(), SyncError> {
        let mut outpaced = false;
        for _ in 0..MAX_PASSES {
            let target = self.target(id)?;
            let committed = self.txn.store().committed_seq()?;
            let at = self.client.status(&target).await?.last_applied;
            let source = self.source(id, at).await;
            // Close enough, and what is left can come from a log: finish between two rounds.
            if at.saturating_add(CLOSE_ENOUGH) >= committed
                && source.as_ref().is_none_or(|s| s.log_reaches(at))
            {
                break;
            }
            let Some(source) = source else { break };
            if let Transferred::Outpaced(_) = self
                .transfer(&source.target, &target, at, false, generation)
                .await?
            {
                // Writes trim the log faster than a snapshot goes: more unlocked passes cannot finish.
                outpaced = true;
                break;
            }
        }

        // Final stretch between two rounds: every in-sync counter stands at the committed seq. Writes
        // wait meanwhile, so it has a budget.
        // (Not after writes outpaced a snapshot: then the rest of that snapshot must run under the
        // lock, and holding writes back for it is the only way the counter ever catches up.)
        let _round = self.txn.between_rounds().await;
        let budget = if outpaced {
            std::time::Duration::MAX
        } else {
            self.lock_budget
        };
        match tokio::time::timeout(budget, self.final_stretch(id, generation, outpaced)).await {
            Ok(result) => result,
            Err(_) => {
                let wait = self.registry.too_slow(id, true);
                Err(SyncError::TooSlow(self.lock_budget, wait))
            }
        }
    }

    /// The end of a catch-up, under the round lock: the last entries, then the promotion.
    async fn final_stretch(
        &self,
        id: &str,
        generation: u64,
        outpaced: bool,
    ) -> Result<(), SyncError> {
        let committed = self.txn.store().committed_seq()?;
        let target = self.target(id)?;
        let mut at = self.client.status(&target).await?.last_applied;
        if at < committed {
            let source = self.source(id, at).await.ok_or(SyncError::NoSource)?;
            if !source.log_reaches(at) && !outpaced {
                // A snapshot here would hold every write back for its whole length.
                return Err(SyncError::Retry);
            }
            at = self
                .transfer(&source.target, &target, at, true, generation)
                .await?
                .at();
        }
        match at.cmp(&committed) {
            std::cmp::Ordering::Equal => {
                self.still_mine(id, generation)?;
                self.registry.promote(id, committed)?;
                self.txn.store().durable().await?;
                Ok(())
            }
            std::cmp::Ordering::Less => Err(SyncError::NoSource),
            std::cmp::Ordering::Greater => Err(SyncError::Ahead(id.to_owned(), at, committed)),
        }
    }

    /// An in-sync counter to copy from, preferring one whose log still reaches back past `at`.
    async fn source(&self, id: &str, at: Seq) -> Option<Source> {
        let mut fallback = None;
        for target in self.registry.in_sync().into_iter().filter(|t| t.id != id) {
            let Ok(status) = self.client.status(&target).await else {
                continue;
            };
            let source = Source {
                target,
                log_floor: status.log_floor,
            };
            if source.log_reaches(at) {
                return Some(source);
            }
            fallback.get_or_insert(source);
        }
        fallback
    }

    /// Copies everything `source` has after `at` to `target`; returns the target's new last applied seq.
    ///
    /// Unlocked (`locked` false), it sends at most one snapshot: when the log is trimmed past the
    /// target again right after one, writes outpace snapshots, and another would only chase them
    /// forever; it stops with [`Transferred::Outpaced`] so the caller takes the round lock. Under the
    /// lock no commit trims the log, so the log always continues after a snapshot.
    async fn transfer(
        &self,
        source: &Target,
        target: &Target,
        mut at: Seq,
        locked: bool,
        generation: u64,
    ) -> Result<Transferred, SyncError> {
        let mut snapshots = 0;
        loop {
            match self
                .client
                .log_page(source, at + 1, self.page_items)
                .await?
            {
                LogPage::Entries(entries) if entries.is_empty() => {
                    return Ok(Transferred::Done(at))
                }
                LogPage::Entries(entries) => {
                    let n = entries.len() as u64;
                    let items = entries.iter().map(|e| e.items.len() as u64).sum();
                    self.still_mine(&target.id, generation)?;
                    let applied = self.client.apply_log(target, entries).await?;
                    at = applied.last_applied;
                    self.registry.add_synced(&target.id, n, items, 0);
                    self.registry.note_durable(&target.id, applied.durable);
                    crash::point("coordinator-mid-sync");
                }
                LogPage::Trimmed { floor } if snapshots > 0 && !locked => {
                    tracing::info!(node = %target.id, at, floor, "log trimmed again during the snapshot; finishing under the round lock");
                    return Ok(Transferred::Outpaced(at));
                }
                LogPage::Trimmed { floor } => {
                    tracing::info!(node = %target.id, at, floor, "log trimmed past the counter; sending a snapshot");
                    at = self.snapshot(source, target, generation).await?;
                    snapshots += 1;
                }
            }
        }
    }

    async fn snapshot(
        &self,
        source: &Target,
        target: &Target,
        generation: u64,
    ) -> Result<Seq, SyncError> {
        let start = self.client.status(source).await?;
        let mut cursor = None;
        loop {
            let page = self
                .client
                .snapshot_page(source, cursor, self.page_items)
                .await?;
            let n = page.items.len() as u64;
            self.still_mine(&target.id, generation)?;
            self.client.import(target, page.items).await?;
            self.registry.add_synced(&target.id, 0, 0, n);
            crash::point("coordinator-mid-sync");
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        self.still_mine(&target.id, generation)?;
        Ok(self
            .client
            .finish_snapshot(target, start.last_applied, start.last_txid)
            .await?
            .last_applied)
    }
}

#[cfg(test)]
mod tests;
