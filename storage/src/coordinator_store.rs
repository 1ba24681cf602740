//! The coordinator's durable state: transaction ids, COMMIT decisions and the registration table.
//!
//! Trees:
//! - `decisions`: txid → [`Decision`] for every committed transaction. No record means abort
//!   (presumed abort), so an abort needs no write at all.
//! - `unfinished`: txid → number of items of its round (8 bytes; empty in data written before the
//!   count was kept), for the decisions whose phase 2 may not have reached every participant; redone
//!   on start, with call timeouts sized from the count.
//! - `decision_seqs`: seq → txid of every decision kept, so decisions can be pruned by seq.
//!
//! Decisions are pruned ([`CoordinatorStore::prune_decisions`]) once every counter has made their
//! rounds durable, so this database stays bounded over any number of rounds.
//! - `registry`: node id → [`CounterRecord`].
//! - `meta`: `committed_seq`, the seq of the last COMMIT decision; `cluster_id`, created on first open.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::Transactional;

use crate::codec::{decode, encode};
use crate::error::{Error, Result};
use crate::flusher::{Failure, Flusher};
use crate::keys::{u64_from, u64_key};
use crate::model::{random_id, ClusterId, NodeId, Seq, TxId};
use crate::open::open_db;

const COMMITTED_SEQ: &[u8] = b"committed_seq";
const CLUSTER_ID: &[u8] = b"cluster_id";

/// A logged COMMIT decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub seq: Seq,
    /// The counters that voted YES and are sent COMMIT.
    pub participants: Vec<NodeId>,
}

/// Whether a registered counter may take writes and serve reads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterState {
    /// Holds every committed transaction; in the write and read sets.
    InSync,
    /// Missed something or failed a call; must catch up before it serves again.
    Lagging,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CounterRecord {
    /// Base URL the coordinator calls, e.g. `http://10.0.0.5:9000`.
    pub url: String,
    pub state: CounterState,
}

#[derive(Clone)]
pub struct CoordinatorStore {
    db: sled::Db,
    meta: sled::Tree,
    decisions: sled::Tree,
    unfinished: sled::Tree,
    decision_seqs: sled::Tree,
    registry: sled::Tree,
    flusher: Flusher,
    /// Decisions kept, maintained so that reading it scans nothing.
    kept: Arc<std::sync::atomic::AtomicUsize>,
}

impl CoordinatorStore {
    /// Opens (or creates) the coordinator's database. Must run inside a tokio runtime.
    /// Creates the cluster id on first open.
    pub fn open(path: &Path) -> Result<Self> {
        let db = open_db(path)?;
        let store = CoordinatorStore {
            meta: db.open_tree("meta")?,
            decisions: db.open_tree("decisions")?,
            unfinished: db.open_tree("unfinished")?,
            decision_seqs: db.open_tree("decision_seqs")?,
            registry: db.open_tree("registry")?,
            flusher: Flusher::spawn(db.clone(), "coordinator").map_err(sled::Error::from)?,
            kept: Default::default(),
            db,
        };
        if store.meta.get(CLUSTER_ID)?.is_none() {
            // compare_and_swap: a cluster id, once created, never changes. Flushed before any counter
            // can hear of it, so a counter never records an id this coordinator could lose.
            let _ = store.meta.compare_and_swap(
                CLUSTER_ID,
                None::<&[u8]>,
                Some(random_id().as_bytes()),
            )?;
            store.db.flush()?;
        }
        if store.decision_seqs.is_empty() && !store.decisions.is_empty() {
            // Data written before decisions were indexed by seq: index them once, so they can go.
            for kv in store.decisions.iter() {
                let (txid, raw) = kv?;
                let decision: Decision = decode("decisions", &raw)?;
                store.decision_seqs.insert(u64_key(decision.seq), txid)?;
            }
        }
        store.kept.store(
            store.decision_seqs.len(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(store)
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// This cluster's identity.
    pub fn cluster_id(&self) -> Result<ClusterId> {
        let raw = self
            .meta
            .get(CLUSTER_ID)?
            .ok_or_else(|| Error::corrupt("meta", "no cluster id"))?;
        String::from_utf8(raw.to_vec()).map_err(|e| Error::corrupt("meta", e))
    }

    /// Why this database takes no more writes, once a flush failed (see [`Flusher`]).
    pub fn failure(&self) -> Option<Failure> {
        self.flusher.failure()
    }

    /// Resolves when a flush fails: the process must reopen the database (see [`Flusher`]).
    pub async fn failed(&self) -> Failure {
        self.flusher.failed().await
    }

    /// Waits until every write made before the call is on disk (group commit).
    pub async fn durable(&self) -> Result<()> {
        self.flusher.durable().await
    }

    /// A new transaction id, greater than every id handed out before, also across crashes: sled's id
    /// generator persists ahead of what it hands out and skips forward on recovery.
    pub fn next_txid(&self) -> Result<TxId> {
        Ok(self.db.generate_id()? + 1)
    }

    /// Seq of the last COMMIT decision (0 if none).
    pub fn committed_seq(&self) -> Result<Seq> {
        Ok(match self.meta.get(COMMITTED_SEQ)? {
            Some(v) => u64_from(&v).ok_or_else(|| Error::corrupt("meta", "bad committed_seq"))?,
            None => 0,
        })
    }

    /// Logs the COMMIT decision for `txid` as commit number `seq`.
    ///
    /// Crash invariant: no COMMIT is sent and no client is answered before [`Self::durable`] returns.
    /// A crash before that leaves no record, so the transaction is aborted (presumed abort); a crash
    /// after it leaves the txid in `unfinished`, and phase 2 is redone on start.
    pub fn record_commit(&self, txid: TxId, decision: &Decision, items: u64) -> Result<()> {
        let trees = (
            &self.meta,
            &self.decisions,
            &self.unfinished,
            &self.decision_seqs,
        );
        trees
            .transaction(|(meta, decisions, unfinished, seqs)| {
                decisions.insert(&u64_key(txid), encode(decision))?;
                unfinished.insert(&u64_key(txid), &u64_key(items))?;
                seqs.insert(&u64_key(decision.seq), &u64_key(txid))?;
                meta.insert(COMMITTED_SEQ, &u64_key(decision.seq))?;
                Ok(())
            })
            .map_err(storage_error)?;
        self.kept.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Marks phase 2 of `txid` as done: every participant acknowledged or was marked lagging.
    ///
    /// Crash invariant: none needed; if lost, phase 2 is redone on start and COMMIT is idempotent.
    pub fn finish_phase2(&self, txid: TxId) -> Result<()> {
        self.unfinished.remove(u64_key(txid))?;
        Ok(())
    }

    /// The number of items of the round of unfinished decision `txid` (`None` when not recorded).
    pub fn round_items(&self, txid: TxId) -> Result<Option<u64>> {
        Ok(self
            .unfinished
            .get(u64_key(txid))?
            .and_then(|v| u64_from(&v)))
    }

    /// Forgets the decisions with seq at most `through` whose phase 2 is finished, at most `max` of
    /// them; returns how many. Blocking: sled work, one transaction per decision.
    /// The caller passes a seq that every registered counter has acknowledged (so made durable): no
    /// counter that voted in those rounds still holds one of them prepared. A counter that was
    /// dropped from the table and asks later is told "aborted" (presumed abort); it is lagging, and
    /// catch-up brings it the committed entries from another replica's log, so the answer only frees
    /// a record it no longer needs.
    ///
    /// Crash invariant: none needed. A decision and its seq index go in one transaction; what a crash
    /// leaves is pruned next time.
    pub fn prune_decisions(&self, through: Seq, max: usize) -> Result<usize> {
        let mut pruned = 0;
        for kv in self.decision_seqs.range(..=u64_key(through)) {
            if pruned >= max {
                break;
            }
            let (seq, txid) = kv?;
            if self.unfinished.contains_key(&txid)? {
                continue;
            }
            let trees = (&self.decisions, &self.decision_seqs);
            trees
                .transaction(|(decisions, seqs)| {
                    decisions.remove(&*txid)?;
                    seqs.remove(&*seq)?;
                    Ok(())
                })
                .map_err(storage_error)?;
            self.kept.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            pruned += 1;
        }
        Ok(pruned)
    }

    /// Decisions kept (bounded by pruning); no scan.
    pub fn decisions_kept(&self) -> usize {
        self.kept.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Decisions whose phase 2 may be incomplete, in txid order.
    pub fn unfinished(&self) -> Result<Vec<(TxId, Decision)>> {
        let mut out = Vec::new();
        for key in self.unfinished.iter().keys() {
            let txid = u64_from(&key?).ok_or_else(|| Error::corrupt("unfinished", "bad key"))?;
            let decision = self
                .decision(txid)?
                .ok_or_else(|| Error::corrupt("unfinished", format!("no decision for {txid}")))?;
            out.push((txid, decision));
        }
        Ok(out)
    }

    /// The logged decision for `txid`; `None` means it did not commit (presumed abort), unless its
    /// round is still running.
    pub fn decision(&self, txid: TxId) -> Result<Option<Decision>> {
        match self.decisions.get(u64_key(txid))? {
            Some(raw) => Ok(Some(decode("decisions", &raw)?)),
            None => Ok(None),
        }
    }

    pub fn counters(&self) -> Result<Vec<(NodeId, CounterRecord)>> {
        let mut out = Vec::new();
        for kv in self.registry.iter() {
            let (k, v) = kv?;
            let id = String::from_utf8(k.to_vec()).map_err(|e| Error::corrupt("registry", e))?;
            out.push((id, decode("registry", &v)?));
        }
        Ok(out)
    }

    /// Adds or updates a counter in the registration table.
    ///
    /// Crash invariant: a counter is marked lagging durably before any client is answered for a
    /// round it missed, so after a restart it is never taken for in sync; await [`Self::durable`].
    pub fn put_counter(&self, id: &str, record: &CounterRecord) -> Result<()> {
        self.registry.insert(id.as_bytes(), encode(record))?;
        Ok(())
    }

    /// Removes a counter from the registration table (after failed health checks).
    pub fn remove_counter(&self, id: &str) -> Result<()> {
        self.registry.remove(id.as_bytes())?;
        Ok(())
    }
}

/// The error of a transaction whose closure never aborts: only storage can fail it.
fn storage_error(e: sled::transaction::TransactionError<()>) -> Error {
    match e {
        sled::transaction::TransactionError::Storage(e) => Error::Sled(e),
        sled::transaction::TransactionError::Abort(()) => unreachable!("the closure never aborts"),
    }
}
