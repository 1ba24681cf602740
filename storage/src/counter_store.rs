//! A counter's replica: prepared transactions, items per tenant with O(1) counts, and the log of
//! committed transactions by sequence number.
//!
//! Trees:
//! - `prepared`: txid → items of a transaction this replica voted YES on and has not seen decided.
//! - `items`: [`keys::item_key`] → empty; the set of counted items.
//! - `counts`: tenant → number of its items, updated in the same sled transaction as `items`.
//! - `log`: seq → [`LogEntry`], the committed transactions after `log_floor`, for incremental catch-up.
//! - `meta`: `node_id`, `cluster_id` (once joined), `applied` (seq and txid of the last applied
//!   commit), `log_floor`, and `totals` (items and tenants stored, kept with `counts` in the same
//!   transactions so metrics need no scan).
//!
//! Commits are applied strictly in seq order, so `last_applied` says exactly which committed
//! transactions this replica holds: all of 1..=last_applied and nothing after them.
//!
//! The coordinator decides rounds one at a time, in increasing txid order. So once the transaction with
//! txid `t` is applied, every prepared record with a smaller txid belongs to a round that is over and
//! did not commit here in order: it was aborted, or committed and applied already. Applying therefore
//! clears those records, which resolves in-doubt transactions of a replica that missed their outcome.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use crate::codec::{decode, encode};
use crate::error::{Error, Result};
use crate::flusher::{Failure, Flusher};
use crate::keys::{item_from_key, item_key, u64_from, u64_key};
use crate::model::{random_id, ClusterId, Item, LogEntry, NodeId, Seq, TxId};
use crate::open::open_db;

const NODE_ID: &[u8] = b"node_id";
/// The cluster this replica joined first; it never serves another.
const CLUSTER_ID: &[u8] = b"cluster_id";
/// seq then txid of the last applied commit, in one value so they are always read together.
const APPLIED: &[u8] = b"applied";
const LOG_FLOOR: &[u8] = b"log_floor";
/// Items then tenants stored, two big-endian u64s.
const TOTALS: &[u8] = b"totals";

/// What [`CounterStore::apply_commit`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied,
    /// The seq was applied before (a re-sent COMMIT): nothing changed.
    AlreadyApplied,
}

/// What [`CounterStore::record_prepared`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum PrepareOutcome {
    /// Recorded (not yet durable: await [`CounterStore::durable`] before voting YES).
    Recorded,
    /// A transaction at or after this txid was already applied: this PREPARE is late, its round is over.
    Stale,
}

#[derive(Clone)]
pub struct CounterStore {
    db: sled::Db,
    meta: sled::Tree,
    prepared: sled::Tree,
    items: sled::Tree,
    counts: sled::Tree,
    log: sled::Tree,
    flusher: Flusher,
    /// The data directory.
    dir: Arc<Path>,
    /// Committed transactions kept in the log for catch-up; 0 keeps them all.
    log_retention: u64,
    /// `last_applied` as of the last flush this store waited for (as of opening, before any): what a
    /// crash can no longer take back. A COMMIT is acknowledged before it is flushed, so this trails
    /// `last_applied`, and the coordinator keeps a decision until every counter reports it here.
    durable_applied: Arc<AtomicU64>,
}

impl CounterStore {
    /// Opens (or creates) the replica at `path` and recovers it. Creates the node id on first open.
    /// Must run inside a tokio runtime (it starts the flusher). Fails, never starts empty, when the
    /// directory holds data sled cannot read.
    pub fn open(path: &Path, log_retention: u64) -> Result<Self> {
        Self::open_named(path, log_retention, random_id)
    }

    /// [`Self::open`], naming a new replica `new_id()` instead of a random id: a simulation that
    /// replays a run exactly needs its replicas to sort the same way every time.
    pub fn open_named(
        path: &Path,
        log_retention: u64,
        new_id: impl FnOnce() -> NodeId,
    ) -> Result<Self> {
        let db = open_db(path)?;
        let store = CounterStore {
            meta: db.open_tree("meta")?,
            prepared: db.open_tree("prepared")?,
            items: db.open_tree("items")?,
            counts: db.open_tree("counts")?,
            log: db.open_tree("log")?,
            dir: Arc::from(path),
            flusher: Flusher::spawn(db.clone(), "counter").map_err(sled::Error::from)?,
            db,
            log_retention,
            durable_applied: Arc::default(),
        };
        if store.meta.get(NODE_ID)?.is_none() {
            let id = new_id();
            // compare_and_swap: a node id, once created, never changes.
            let _ = store
                .meta
                .compare_and_swap(NODE_ID, None::<&[u8]>, Some(id.as_bytes()))?;
            store.db.flush()?;
        }
        if store.meta.get(TOTALS)?.is_none() {
            // A replica written before the totals existed: count once. Later changes keep them.
            let tenants = store.counts.len() as u64;
            let items = store.items.len() as u64;
            let totals = encode_pair(items, tenants);
            let _ = store
                .meta
                .compare_and_swap(TOTALS, None::<&[u8]>, Some(&totals[..]))?;
        }
        // What was recovered is what the last run made durable.
        store
            .durable_applied
            .store(store.last_applied()?, Ordering::SeqCst);
        Ok(store)
    }

    /// Items and tenants stored: two key reads, no scan.
    pub fn totals(&self) -> Result<(u64, u64)> {
        match self.meta.get(TOTALS)? {
            Some(v) => decode_pair(&v).ok_or_else(|| Error::corrupt("meta", "bad totals")),
            None => Ok((0, 0)),
        }
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        // Read before the flush is asked for: every commit up to it is covered by that flush.
        let applied = self.last_applied()?;
        self.flusher.durable().await?;
        self.durable_applied.fetch_max(applied, Ordering::SeqCst);
        Ok(())
    }

    /// The last applied seq that a crash can no longer take back (see [`Self::durable`]).
    pub fn durable_applied(&self) -> Seq {
        self.durable_applied.load(Ordering::SeqCst)
    }

    pub fn node_id(&self) -> Result<NodeId> {
        let raw = self
            .meta
            .get(NODE_ID)?
            .ok_or_else(|| Error::corrupt("meta", "no node id"))?;
        String::from_utf8(raw.to_vec()).map_err(|e| Error::corrupt("meta", e))
    }

    /// The cluster this replica belongs to; `None` until it first registered with a coordinator.
    pub fn cluster_id(&self) -> Result<Option<ClusterId>> {
        self.meta
            .get(CLUSTER_ID)?
            .map(|raw| String::from_utf8(raw.to_vec()).map_err(|e| Error::corrupt("meta", e)))
            .transpose()
    }

    /// Records `cluster` as this replica's cluster when it has none; fails with
    /// [`Error::OtherCluster`] when it belongs to another one.
    ///
    /// Crash invariant: none needed. Until the record is durable a restarted replica has no cluster
    /// and simply joins the same coordinator again; await [`Self::durable`] before relying on it.
    pub fn join_cluster(&self, cluster: &str) -> Result<()> {
        let swapped =
            self.meta
                .compare_and_swap(CLUSTER_ID, None::<&[u8]>, Some(cluster.as_bytes()))?;
        match swapped {
            Ok(()) => Ok(()),
            Err(cas) => match cas.current {
                Some(mine) if mine.as_ref() == cluster.as_bytes() => Ok(()),
                mine => Err(Error::OtherCluster {
                    mine: mine.map_or_else(String::new, |m| String::from_utf8_lossy(&m).into()),
                    theirs: cluster.to_owned(),
                }),
            },
        }
    }

    pub fn last_applied(&self) -> Result<Seq> {
        Ok(self.applied()?.0)
    }

    /// Seq and txid of the last applied commit ((0, 0) if none).
    pub fn applied(&self) -> Result<(Seq, TxId)> {
        match self.meta.get(APPLIED)? {
            Some(v) => {
                decode_applied(&v).ok_or_else(|| Error::corrupt("meta", "bad applied position"))
            }
            None => Ok((0, 0)),
        }
    }

    /// Commits at or below this seq may be missing from the log (trimmed, or skipped by a snapshot).
    pub fn log_floor(&self) -> Result<Seq> {
        self.meta_u64(LOG_FLOOR)
    }

    fn meta_u64(&self, key: &[u8]) -> Result<u64> {
        Ok(match self.meta.get(key)? {
            Some(v) => u64_from(&v).ok_or_else(|| Error::corrupt("meta", "bad number"))?,
            None => 0,
        })
    }

    /// The tenant's number of distinct items: one key lookup.
    pub fn count(&self, tenant: &str) -> Result<u64> {
        Ok(match self.counts.get(tenant.as_bytes())? {
            Some(v) => u64_from(&v).ok_or_else(|| Error::corrupt("counts", "bad number"))?,
            None => 0,
        })
    }

    /// Phase 1: remembers the items of `txid`.
    ///
    /// Crash invariant: the record is durable only after [`Self::durable`]; the replica votes YES only
    /// then, and from that point never decides the outcome alone.
    pub fn record_prepared(&self, txid: TxId, items: &[Item]) -> Result<PrepareOutcome> {
        if txid <= self.applied()?.1 {
            return Ok(PrepareOutcome::Stale);
        }
        self.prepared
            .insert(u64_key(txid), encode(&items.to_vec()))?;
        Ok(PrepareOutcome::Recorded)
    }

    /// The size in bytes of the prepared record of `txid`, if there is one: what applying it costs.
    pub fn prepared_bytes(&self, txid: TxId) -> Result<Option<usize>> {
        Ok(self.prepared.get(u64_key(txid))?.map(|raw| raw.len()))
    }

    /// Transactions prepared here whose outcome this replica has not learned (in doubt after a restart).
    pub fn prepared_txids(&self) -> Result<Vec<TxId>> {
        self.prepared
            .iter()
            .keys()
            .map(|k| u64_from(&k?).ok_or_else(|| Error::corrupt("prepared", "bad key")))
            .collect()
    }

    /// Phase 2, abort: forgets the prepared record.
    ///
    /// Crash invariant: none needed. If the removal is lost, the record is in doubt after restart and
    /// the coordinator answers abort (presumed abort), or a later applied txid clears it.
    pub fn rollback(&self, txid: TxId) -> Result<()> {
        self.prepared.remove(u64_key(txid))?;
        Ok(())
    }

    /// Phase 2, commit: applies prepared `txid` as commit number `seq`, in one sled transaction with
    /// its log entry, `last_applied` and the removal of the prepared record, so it applies exactly once.
    ///
    /// Crash invariant: acknowledged before [`Self::durable`]; if the process dies before the next
    /// flush, the prepared record (durable since the YES vote) is still there and the commit is redone
    /// from the coordinator's decision, which is kept until this replica reports the seq durable.
    pub fn apply_commit(&self, txid: TxId, seq: Seq) -> Result<ApplyOutcome> {
        let (last, last_txid) = self.applied()?;
        if seq <= last {
            if txid > last_txid {
                // Transactions are applied in txid order: a newer one cannot have been applied at an
                // older seq. Saying "already applied" would acknowledge a write applied nowhere.
                return Err(Error::Diverged { seq, txid });
            }
            // A late PREPARE may have recorded it again after it was applied.
            self.prepared.remove(u64_key(txid))?;
            return Ok(ApplyOutcome::AlreadyApplied);
        }
        if seq != last + 1 {
            return Err(Error::Gap {
                expected: last + 1,
                got: seq,
            });
        }
        let raw = match self.prepared.get(u64_key(txid))? {
            Some(raw) => raw,
            // Two commits of one transaction may race (the coordinator's phase 2 and the registrar's
            // in-doubt resolution): the other one applied it, and removed the record, since `last` was
            // read. The apply transaction removes the record and moves `applied` together.
            None if self.last_applied()? >= seq => return Ok(ApplyOutcome::AlreadyApplied),
            None => return Err(Error::NotPrepared(txid)),
        };
        let items: Vec<Item> = decode("prepared", &raw)?;
        self.apply_entries(&[LogEntry { seq, txid, items }])
    }

    /// Applies committed log entries received from another replica (catch-up). Entries at or below
    /// `last_applied` are skipped; the first one after it must be `last_applied + 1`. All entries are
    /// applied in one sled transaction.
    ///
    /// Crash invariant: the same as [`Self::apply_commit`]; acknowledge only after [`Self::durable`].
    pub fn apply_entries(&self, entries: &[LogEntry]) -> Result<ApplyOutcome> {
        let trees = (
            &self.meta,
            &self.prepared,
            &self.items,
            &self.counts,
            &self.log,
        );
        let retention = self.log_retention;
        let result = trees.transaction(|(meta, prepared, items, counts, log)| {
            let (mut last, _) = tx_applied(meta)?;
            let mut floor = tx_u64(meta, LOG_FLOOR)?;
            let mut applied = false;
            let mut added: HashMap<&str, u64> = HashMap::new();
            for entry in entries {
                if entry.seq <= last {
                    continue;
                }
                if entry.seq != last + 1 {
                    return Err(ConflictableTransactionError::Abort(Error::Gap {
                        expected: last + 1,
                        got: entry.seq,
                    }));
                }
                // A batch may name an item twice; count the distinct ones.
                let distinct: BTreeSet<&Item> = entry.items.iter().collect();
                for item in distinct {
                    if items.insert(item_key(item), &[][..])?.is_none() {
                        *added.entry(item.tenant.as_str()).or_default() += 1;
                    }
                }
                log.insert(&u64_key(entry.seq), encode(entry))?;
                prepared.remove(&u64_key(entry.txid))?;
                if retention > 0 && entry.seq > retention && entry.seq - retention > floor {
                    floor = entry.seq - retention;
                    log.remove(&u64_key(floor))?;
                    meta.insert(LOG_FLOOR, &u64_key(floor))?;
                }
                last = entry.seq;
                meta.insert(APPLIED, &encode_applied(last, entry.txid))?;
                applied = true;
            }
            add_counts(meta, counts, &added)?;
            Ok(applied)
        });
        let applied = result.map_err(tx_error)?;
        if let Some(last) = entries.last() {
            self.clear_prepared_before(last.txid)?;
        }
        Ok(if applied {
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::AlreadyApplied
        })
    }

    /// Removes prepared records of rounds that are over (see the module doc). Outside the apply
    /// transaction on purpose: losing this cleanup in a crash only leaves records that are resolved later.
    fn clear_prepared_before(&self, txid: TxId) -> Result<()> {
        for key in self.prepared.range(..u64_key(txid)).keys() {
            self.prepared.remove(key?)?;
        }
        Ok(())
    }

    /// Up to about `max_items` items of committed transactions from seq `from` on (at least one entry
    /// when there is one). Fails with [`Error::LogTrimmed`] when the log no longer reaches back to `from`.
    pub fn log_page(&self, from: Seq, max_items: usize) -> Result<Vec<LogEntry>> {
        let floor = self.log_floor()?;
        if from <= floor {
            return Err(Error::LogTrimmed { floor });
        }
        let mut page = Vec::new();
        let mut items = 0;
        for value in self.log.range(u64_key(from)..).values() {
            let entry: LogEntry = decode("log", &value?)?;
            if entry.seq != from + page.len() as u64 {
                // A commit trimmed the entry after the floor was read: the log starts later now.
                let floor = self.log_floor()?;
                if floor >= from + page.len() as u64 {
                    return Err(Error::LogTrimmed { floor });
                }
                return Err(Error::corrupt(
                    "log",
                    format!("hole before seq {}", entry.seq),
                ));
            }
            items += entry.items.len();
            page.push(entry);
            if items >= max_items {
                break;
            }
        }
        Ok(page)
    }

    /// Up to `max_items` items in key order, after the item key `after` (from the start when `None`).
    /// The cursor to continue from is the key of the last item returned.
    pub fn snapshot_page(
        &self,
        after: Option<&[u8]>,
        max_items: usize,
    ) -> Result<Vec<(Vec<u8>, Item)>> {
        let range = match after {
            Some(key) => self.items.range((
                std::ops::Bound::Excluded(key.to_vec()),
                std::ops::Bound::Unbounded,
            )),
            None => self.items.iter(),
        };
        let mut page = Vec::new();
        for key in range.keys().take(max_items) {
            let key = key?;
            let item = item_from_key(&key).ok_or_else(|| Error::corrupt("items", "bad key"))?;
            page.push((key.to_vec(), item));
        }
        Ok(page)
    }

    /// Adds snapshot items (committed items from another replica) without moving `last_applied`.
    ///
    /// Crash invariant: items only ever grow, and every item here was committed, so a crash halfway
    /// through a snapshot leaves a replica that is still consistent at its old `last_applied` plus some
    /// committed items it will also get again; it serves no reads until it has caught up.
    pub fn import_items(&self, batch: &[Item]) -> Result<()> {
        let trees = (&self.meta, &self.items, &self.counts);
        let result = trees.transaction(|(meta, items, counts)| {
            let mut added: HashMap<&str, u64> = HashMap::new();
            for item in batch.iter().collect::<BTreeSet<_>>() {
                if items.insert(item_key(item), &[][..])?.is_none() {
                    *added.entry(item.tenant.as_str()).or_default() += 1;
                }
            }
            add_counts(meta, counts, &added)
        });
        result.map_err(tx_error)
    }

    /// Ends a snapshot that started when the source had applied `seq`: this replica now holds every
    /// commit up to `seq`, and its log restarts after it.
    ///
    /// Crash invariant: called only after every snapshot page was imported and made durable.
    pub fn finish_snapshot(&self, seq: Seq, txid: TxId) -> Result<()> {
        let result = self.meta.transaction(|meta| {
            if tx_applied(meta)?.0 < seq {
                meta.insert(APPLIED, &encode_applied(seq, txid))?;
                meta.insert(LOG_FLOOR, &u64_key(seq))?;
            }
            Ok(())
        });
        result.map_err(tx_error)?;
        // Entries at or below the floor are never read again; dropping them is only tidiness. Not past
        // the floor: a replica already ahead of `seq` kept its floor, and `log_page` must not find a hole.
        let floor = self.log_floor()?;
        for key in self.log.range(..=u64_key(floor)).keys() {
            self.log.remove(key?)?;
        }
        self.clear_prepared_before(txid.saturating_add(1))
    }

    /// The underlying database, for tests that inspect raw trees.
    #[doc(hidden)]
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

fn tx_u64(
    tree: &TransactionalTree,
    key: &[u8],
) -> std::result::Result<u64, ConflictableTransactionError<Error>> {
    match tree.get(key)? {
        Some(v) => u64_from(&v).ok_or_else(|| {
            ConflictableTransactionError::Abort(Error::corrupt("meta", "bad number"))
        }),
        None => Ok(0),
    }
}

fn tx_applied(
    tree: &TransactionalTree,
) -> std::result::Result<(Seq, TxId), ConflictableTransactionError<Error>> {
    match tree.get(APPLIED)? {
        Some(v) => decode_applied(&v).ok_or_else(|| {
            ConflictableTransactionError::Abort(Error::corrupt("meta", "bad applied position"))
        }),
        None => Ok((0, 0)),
    }
}

fn encode_applied(seq: Seq, txid: TxId) -> [u8; 16] {
    encode_pair(seq, txid)
}

fn decode_applied(bytes: &[u8]) -> Option<(Seq, TxId)> {
    decode_pair(bytes)
}

fn encode_pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&u64_key(a));
    out[8..].copy_from_slice(&u64_key(b));
    out
}

fn decode_pair(bytes: &[u8]) -> Option<(u64, u64)> {
    Some((u64_from(bytes.get(..8)?)?, u64_from(bytes.get(8..)?)?))
}

/// Adds `added` new items per tenant to `counts` and to the totals in `meta`.
fn add_counts(
    meta: &TransactionalTree,
    counts: &TransactionalTree,
    added: &HashMap<&str, u64>,
) -> std::result::Result<(), ConflictableTransactionError<Error>> {
    if added.is_empty() {
        return Ok(());
    }
    let corrupt = |tree, what| ConflictableTransactionError::Abort(Error::corrupt(tree, what));
    let (mut items, mut tenants) = match meta.get(TOTALS)? {
        Some(v) => decode_pair(&v).ok_or_else(|| corrupt("meta", "bad totals"))?,
        None => (0, 0),
    };
    // A count can only reach u64::MAX if the record is corrupt: refuse it rather than wrap or panic.
    let overflow = || corrupt("counts", "count overflows");
    for (tenant, n) in added {
        let old = match counts.get(tenant.as_bytes())? {
            Some(v) => u64_from(&v).ok_or_else(|| corrupt("counts", "bad number"))?,
            None => {
                tenants = tenants.checked_add(1).ok_or_else(overflow)?;
                0
            }
        };
        let new = old.checked_add(*n).ok_or_else(overflow)?;
        counts.insert(tenant.as_bytes(), &u64_key(new))?;
        items = items.checked_add(*n).ok_or_else(overflow)?;
    }
    meta.insert(TOTALS, &encode_pair(items, tenants))?;
    Ok(())
}

fn tx_error(e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => Error::Sled(e),
    }
}
