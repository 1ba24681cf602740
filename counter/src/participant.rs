//! The counter's side of 2PC and of catch-up, over its [`CounterStore`].
//!
//! Every method that changes state waits for the change to be on disk before it returns, because its
//! return value is a promise to the coordinator (a YES vote, a synced seq), except COMMIT: its
//! acknowledgement says how far the replica has applied and, separately, how far that is durable
//! ([`Participant::commit`]).
//! sled work runs on blocking threads: a large batch costs milliseconds of CPU.
//!
//! A counter told to stop ([`Participant::stop_voting`]) votes NO to every new PREPARE and keeps
//! serving COMMIT and ROLLBACK, so that it can finish what it already voted YES on before it exits
//! ([`Participant::settled`]): a planned stop leaves no transaction in doubt.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use storage::proto::{Applied, CounterStatus, Counts, LogPage, SnapshotPage, Vote};
use storage::{crash, CounterStore, Error, Item, LogEntry, PrepareOutcome, Seq, TxId};

/// The most bytes of items (ids and tenants) whose sled work runs on the async worker that asked
/// for it (see [`Participant::sized`]): about 200 typical items, well under a millisecond.
const INLINE_BYTES: usize = 8 << 10;

#[derive(Clone)]
pub struct Participant {
    store: CounterStore,
    stopping: Arc<AtomicBool>,
    /// PREPAREs between their check of `stopping` and their vote.
    preparing: Arc<AtomicUsize>,
    /// Set once the coordinator has counted this replica in sync since the process started.
    ready: Arc<AtomicBool>,
}

impl Participant {
    pub fn new(store: CounterStore) -> Self {
        Participant {
            store,
            stopping: Arc::default(),
            preparing: Arc::default(),
            ready: Arc::default(),
        }
    }

    /// Records that the coordinator counted this replica in sync; true the first time. It stays ready for the life of the
    /// process: readiness says "this replica has caught up since it started", which is what a rolling
    /// update waits for, and a later outage of the coordinator must not make an orchestrator kill it.
    pub fn mark_ready(&self) -> bool {
        !self.ready.swap(true, Ordering::SeqCst)
    }

    /// Whether [`Self::mark_ready`] was called.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// From now on every PREPARE is answered NO.
    pub fn stop_voting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether [`Self::stop_voting`] was called.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// After [`Self::stop_voting`]: whether every YES vote has been decided here (nothing is in doubt
    /// and no PREPARE that missed the stop is still on its way to a YES).
    pub fn settled(&self) -> Result<bool, Error> {
        Ok(self.preparing.load(Ordering::SeqCst) == 0 && self.store.prepared_txids()?.is_empty())
    }

    pub fn store(&self) -> &CounterStore {
        &self.store
    }

    /// Runs `f` on the calling worker thread when the work is small (`bytes` of items at most
    /// [`INLINE_BYTES`]), else on tokio's blocking pool. A small round's sled work takes a few
    /// microseconds, less than the two thread switches of a trip through the pool, which dominated a
    /// lightly loaded counter's CPU (BENCHMARKS.md); a large batch takes milliseconds of CPU, which
    /// must not stall the async workers.
    async fn sized<T: Send + 'static>(
        &self,
        bytes: usize,
        f: impl FnOnce(&CounterStore) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        if bytes <= INLINE_BYTES {
            f(&self.store)
        } else {
            self.blocking(f).await
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&CounterStore) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .expect("storage task panicked")
    }

    /// Phase 1: YES only once the prepared record is durable; NO for a late PREPARE of a finished round,
    /// and NO once told to stop.
    pub async fn prepare(&self, txid: TxId, items: Vec<Item>) -> Result<Vote, Error> {
        // Counted before the check, so that `settled` cannot miss a PREPARE that passed it.
        self.preparing.fetch_add(1, Ordering::SeqCst);
        let vote = self.vote(txid, items).await;
        self.preparing.fetch_sub(1, Ordering::SeqCst);
        vote
    }

    async fn vote(&self, txid: TxId, items: Vec<Item>) -> Result<Vote, Error> {
        if self.stopping.load(Ordering::SeqCst) {
            return Ok(Vote::No {
                reason: "the counter is shutting down".into(),
            });
        }
        let bytes = items.iter().map(|i| i.id.len() + i.tenant.len()).sum();
        let outcome = self
            .sized(bytes, move |s| s.record_prepared(txid, &items))
            .await?;
        if outcome == PrepareOutcome::Stale {
            return Ok(Vote::No {
                reason: format!("transaction {txid} is older than the last applied one"),
            });
        }
        // Before this flush, the previous round's COMMIT may still be in memory only.
        crash::point("counter-before-prepare-flush");
        self.store.durable().await?;
        crash::point("counter-after-prepare");
        Ok(Vote::Yes)
    }

    /// Phase 2: applies the prepared transaction as commit `seq`, acknowledged once applied and made
    /// durable by the next flush (a PREPARE's, or sled's own within half a second). A crash before
    /// that flush leaves the prepared record, which is on disk since the YES vote, in doubt; the
    /// coordinator keeps its decision until this counter reports the commit durable, so the commit
    /// is redone after the restart. That saves a disk sync per round.
    pub async fn commit(&self, txid: TxId, seq: Seq) -> Result<Applied, Error> {
        crash::delay("counter-before-commit").await;
        // A record this replica does not hold is an error or a no-op: no work either way.
        let bytes = self.store.prepared_bytes(txid)?.unwrap_or(0);
        self.sized(bytes, move |s| s.apply_commit(txid, seq))
            .await?;
        crash::point("counter-after-commit");
        self.applied()
    }

    /// Where this replica stands: applied, and made durable.
    fn applied(&self) -> Result<Applied, Error> {
        Ok(Applied {
            last_applied: self.store.last_applied()?,
            durable: self.store.durable_applied(),
        })
    }

    pub async fn rollback(&self, txid: TxId) -> Result<(), Error> {
        self.blocking(move |s| s.rollback(txid)).await
    }

    /// The counts of `tenants`, in order. `last_applied` is read first, so every count covers at least
    /// every commit up to it (commits are applied in seq order, each in one sled transaction).
    pub fn counts(&self, tenants: &[String]) -> Result<Counts, Error> {
        let last_applied = self.store.last_applied()?;
        Ok(Counts {
            last_applied,
            counts: tenants
                .iter()
                .map(|t| self.store.count(t))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn status(&self) -> Result<CounterStatus, Error> {
        let (last_applied, last_txid) = self.store.applied()?;
        Ok(CounterStatus {
            node_id: self.store.node_id()?,
            cluster_id: self.store.cluster_id()?,
            last_applied,
            durable: self.store.durable_applied(),
            last_txid,
            log_floor: self.store.log_floor()?,
            prepared: self.store.prepared_txids()?.len(),
            // Counted by the HTTP layer, which fills it in.
            refused_calls: 0,
        })
    }

    pub async fn log_page(&self, from: Seq, max_items: usize) -> Result<LogPage, Error> {
        match self.blocking(move |s| s.log_page(from, max_items)).await {
            Ok(entries) => Ok(LogPage::Entries(entries)),
            Err(Error::LogTrimmed { floor }) => Ok(LogPage::Trimmed { floor }),
            Err(e) => Err(e),
        }
    }

    pub async fn snapshot_page(
        &self,
        after: Option<Vec<u8>>,
        max_items: usize,
    ) -> Result<SnapshotPage, Error> {
        let page = self
            .blocking(move |s| s.snapshot_page(after.as_deref(), max_items))
            .await?;
        let next = if page.len() == max_items {
            page.last().map(|(key, _)| hex(key))
        } else {
            None
        };
        Ok(SnapshotPage {
            items: page.into_iter().map(|(_, item)| item).collect(),
            next,
        })
    }

    /// Catch-up: applies committed entries from another replica, acknowledged once durable.
    pub async fn apply_log(&self, entries: Vec<LogEntry>) -> Result<Applied, Error> {
        self.blocking(move |s| s.apply_entries(&entries)).await?;
        self.store.durable().await?;
        crash::point("counter-mid-sync");
        self.applied()
    }

    pub async fn import(&self, items: Vec<Item>) -> Result<Applied, Error> {
        self.blocking(move |s| s.import_items(&items)).await?;
        self.store.durable().await?;
        crash::point("counter-mid-snapshot");
        self.applied()
    }

    pub async fn finish_snapshot(&self, seq: Seq, txid: TxId) -> Result<Applied, Error> {
        self.blocking(move |s| s.finish_snapshot(seq, txid)).await?;
        self.store.durable().await?;
        self.applied()
    }

    /// Applies a commit whose outcome was learned after a restart. A gap means this replica is behind
    /// anyway: it leaves the record, which catch-up clears when it applies that transaction.
    pub async fn resolve_committed(&self, txid: TxId, seq: Seq) -> Result<(), Error> {
        match self.commit(txid, seq).await {
            Ok(_) | Err(Error::Gap { .. }) | Err(Error::NotPrepared(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
