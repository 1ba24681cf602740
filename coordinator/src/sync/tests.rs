//! Catch-up without a socket: the real store, registry and round, and counters modelled in memory
//! with the semantics of `storage::CounterStore` (gaps refused, log trimmed below a floor, a snapshot
//! fixed in place by `finish_snapshot`), so a wrong page order fails here as it would on a counter.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture, FutureExt};
use storage::proto::{Applied, CounterStatus, Counts, SnapshotPage, Vote};
use storage::{CoordinatorStore, CounterState, Item, LogEntry, TxId};

use super::*;
use crate::counters::{CallResult, Counters};
use crate::registry::StateCounts;

/// One counter's replica, as `storage::CounterStore` keeps it.
#[derive(Default)]
struct Replica {
    /// The committed entries after `log_floor`.
    log: BTreeMap<Seq, LogEntry>,
    log_floor: Seq,
    /// Entries kept in the log, like the counter's `log_retention`; 0 keeps them all.
    retention: u64,
    /// Keyed by the hex of the real item key: snapshot pages come in the counter's order, with
    /// its cursor.
    items: BTreeMap<String, Item>,
    last_applied: Seq,
    last_txid: TxId,
    prepared: BTreeMap<TxId, Vec<Item>>,
}

/// How the counter's HTTP layer answers a storage error that means "out of order".
fn conflict(e: storage::Error) -> CallError {
    CallError::Refused {
        status: 409,
        body: e.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Replica {
    /// `CounterStore::apply_entries`: entries already applied are skipped, and a gap refuses the
    /// whole batch (one sled transaction there).
    fn apply_entries(&mut self, entries: &[LogEntry]) -> CallResult<Seq> {
        let mut last = self.last_applied;
        for entry in entries {
            if entry.seq <= last {
                continue;
            }
            if entry.seq != last + 1 {
                return Err(conflict(storage::Error::Gap {
                    expected: last + 1,
                    got: entry.seq,
                }));
            }
            last = entry.seq;
        }
        for entry in entries {
            if entry.seq <= self.last_applied {
                continue;
            }
            for item in &entry.items {
                self.items
                    .insert(hex(&storage::keys::item_key(item)), item.clone());
            }
            self.log.insert(entry.seq, entry.clone());
            self.prepared.remove(&entry.txid);
            if self.retention > 0
                && entry.seq > self.retention
                && entry.seq - self.retention > self.log_floor
            {
                let floor = entry.seq - self.retention;
                self.log_floor = floor;
                self.log.retain(|&seq, _| seq > floor);
            }
            self.last_applied = entry.seq;
            self.last_txid = entry.txid;
        }
        if let Some(last) = entries.last() {
            self.prepared.retain(|&txid, _| txid >= last.txid);
        }
        Ok(self.last_applied)
    }

    /// `CounterStore::apply_commit`.
    fn commit(&mut self, txid: TxId, seq: Seq) -> CallResult<Seq> {
        if seq <= self.last_applied {
            if txid > self.last_txid {
                return Err(conflict(storage::Error::Diverged { seq, txid }));
            }
            self.prepared.remove(&txid);
            return Ok(self.last_applied);
        }
        let items = self
            .prepared
            .get(&txid)
            .cloned()
            .ok_or_else(|| conflict(storage::Error::NotPrepared(txid)))?;
        self.apply_entries(&[LogEntry { seq, txid, items }])
    }

    /// `CounterStore::log_page` as the participant answers it.
    fn log_page(&self, from: Seq, max_items: usize) -> LogPage {
        if from <= self.log_floor {
            return LogPage::Trimmed {
                floor: self.log_floor,
            };
        }
        let mut page = Vec::new();
        let mut items = 0;
        for entry in self.log.range(from..).map(|(_, e)| e) {
            items += entry.items.len();
            page.push(entry.clone());
            if items >= max_items {
                break;
            }
        }
        LogPage::Entries(page)
    }

    /// `CounterStore::snapshot_page` as the participant answers it: a cursor only after a full page.
    fn snapshot_page(&self, after: Option<String>, max_items: usize) -> SnapshotPage {
        let max_items = max_items.max(1);
        let page: Vec<(&String, &Item)> = match after {
            Some(cursor) => self
                .items
                .range((Bound::Excluded(cursor), Bound::Unbounded))
                .take(max_items)
                .collect(),
            None => self.items.iter().take(max_items).collect(),
        };
        let next = if page.len() == max_items {
            page.last().map(|(key, _)| (*key).clone())
        } else {
            None
        };
        SnapshotPage {
            items: page.into_iter().map(|(_, item)| item.clone()).collect(),
            next,
        }
    }

    /// `CounterStore::finish_snapshot`.
    fn finish_snapshot(&mut self, seq: Seq, txid: TxId) -> Seq {
        if self.last_applied < seq {
            self.last_applied = seq;
            self.last_txid = txid;
            self.log_floor = seq;
        }
        let floor = self.log_floor;
        self.log.retain(|&s, _| s > floor);
        self.prepared.retain(|&t, _| t > txid);
        self.last_applied
    }

    fn status(&self, id: &str) -> CounterStatus {
        CounterStatus {
            node_id: id.to_owned(),
            cluster_id: None,
            last_applied: self.last_applied,
            // Nothing is lost here: every write is as good as flushed.
            durable: self.last_applied,
            last_txid: self.last_txid,
            log_floor: self.log_floor,
            prepared: self.prepared.len(),
            refused_calls: 0,
        }
    }
}

/// A write's acknowledgement: this model loses nothing, so everything applied is durable.
fn applied(last_applied: Seq) -> Applied {
    Applied {
        last_applied,
        durable: last_applied,
    }
}

/// Runs during a call, before the counter acts on it: what happens meanwhile elsewhere.
type Hook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// Counters in memory. Calls are numbered per kind and node from 1, so a test names "the 2nd
/// apply_log to c".
#[derive(Default)]
struct Fake {
    replicas: Mutex<BTreeMap<String, Replica>>,
    /// Every call, as (kind, node), in the order they arrived.
    calls: Mutex<Vec<(&'static str, String)>>,
    /// Calls that fail unanswered, without the counter acting.
    failures: Mutex<BTreeSet<(&'static str, String, usize)>>,
    hooks: Mutex<BTreeMap<(&'static str, String, usize), Hook>>,
}

impl Fake {
    fn replica<T>(&self, id: &str, f: impl FnOnce(&mut Replica) -> T) -> T {
        f(self
            .replicas
            .lock()
            .unwrap()
            .entry(id.to_owned())
            .or_default())
    }

    fn items(&self, id: &str) -> BTreeSet<Item> {
        self.replica(id, |r| r.items.values().cloned().collect())
    }

    fn fail(&self, kind: &'static str, id: &str, nth: usize) {
        self.failures
            .lock()
            .unwrap()
            .insert((kind, id.to_owned(), nth));
    }

    fn on(
        &self,
        kind: &'static str,
        id: &str,
        nth: usize,
        hook: impl FnOnce() -> BoxFuture<'static, ()> + Send + 'static,
    ) {
        self.hooks
            .lock()
            .unwrap()
            .insert((kind, id.to_owned(), nth), Box::new(hook));
    }

    /// The kinds of the calls made to `id`, in order.
    fn calls_to(&self, id: &str) -> Vec<&'static str> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, to)| to == id)
            .map(|(kind, _)| *kind)
            .collect()
    }

    fn count_calls(&self, kind: &str, id: &str) -> usize {
        self.calls_to(id).iter().filter(|k| **k == kind).count()
    }

    fn call<'a, T: Send + 'a>(
        &'a self,
        kind: &'static str,
        to: &'a Target,
        act: impl FnOnce(&mut Replica) -> CallResult<T> + Send + 'a,
    ) -> BoxFuture<'a, CallResult<T>> {
        async move {
            let nth = {
                let mut calls = self.calls.lock().unwrap();
                calls.push((kind, to.id.clone()));
                calls
                    .iter()
                    .filter(|(k, id)| *k == kind && *id == to.id)
                    .count()
            };
            let key = (kind, to.id.clone(), nth);
            let hook = self.hooks.lock().unwrap().remove(&key);
            if let Some(hook) = hook {
                hook().await;
            }
            if self.failures.lock().unwrap().remove(&key) {
                return Err(CallError::Unreachable(format!(
                    "{kind} #{nth} to {}: scripted failure",
                    to.id
                )));
            }
            self.replica(&to.id, act)
        }
        .boxed()
    }
}

fn unused<T>() -> BoxFuture<'static, CallResult<T>> {
    async { Err(CallError::Unreachable("not used by catch-up".into())) }.boxed()
}

impl Counters for Fake {
    fn prepare_all<'a>(
        &'a self,
        to: &'a [Target],
        txid: TxId,
        items: Vec<Item>,
    ) -> BoxFuture<'a, Vec<CallResult<Vote>>> {
        join_all(to.iter().map(|t| {
            let items = items.clone();
            self.call("prepare", t, move |r| {
                if txid <= r.last_txid {
                    return Ok(Vote::No {
                        reason: "stale".into(),
                    });
                }
                r.prepared.insert(txid, items);
                Ok(Vote::Yes)
            })
        }))
        .boxed()
    }

    fn commit<'a>(
        &'a self,
        to: &'a Target,
        txid: TxId,
        seq: Seq,
        _items: usize,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        self.call("commit", to, move |r| r.commit(txid, seq).map(applied))
    }

    fn rollback<'a>(&'a self, _: &'a Target, _: TxId) -> BoxFuture<'a, CallResult<()>> {
        unused()
    }

    fn counts<'a>(&'a self, _: &'a Target, _: Vec<String>) -> BoxFuture<'a, CallResult<Counts>> {
        unused()
    }

    fn status<'a>(&'a self, to: &'a Target) -> BoxFuture<'a, CallResult<CounterStatus>> {
        self.call("status", to, move |r| Ok(r.status(&to.id)))
    }

    fn log_page<'a>(
        &'a self,
        to: &'a Target,
        from: Seq,
        max_items: usize,
    ) -> BoxFuture<'a, CallResult<LogPage>> {
        self.call("log_page", to, move |r| {
            Ok(r.log_page(from, max_items.max(1)))
        })
    }

    fn snapshot_page<'a>(
        &'a self,
        to: &'a Target,
        after: Option<String>,
        max_items: usize,
    ) -> BoxFuture<'a, CallResult<SnapshotPage>> {
        self.call("snapshot_page", to, move |r| {
            Ok(r.snapshot_page(after, max_items))
        })
    }

    fn apply_log<'a>(
        &'a self,
        to: &'a Target,
        entries: Vec<LogEntry>,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        self.call("apply_log", to, move |r| {
            r.apply_entries(&entries).map(applied)
        })
    }

    fn import<'a>(
        &'a self,
        to: &'a Target,
        items: Vec<Item>,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        self.call("import", to, move |r| {
            for item in items {
                r.items.insert(hex(&storage::keys::item_key(&item)), item);
            }
            Ok(applied(r.last_applied))
        })
    }

    fn finish_snapshot<'a>(
        &'a self,
        to: &'a Target,
        seq: Seq,
        txid: TxId,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        self.call("finish_snapshot", to, move |r| {
            Ok(applied(r.finish_snapshot(seq, txid)))
        })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    counters: Arc<Fake>,
    registry: Arc<Registry>,
    txn: Arc<TxnManager>,
    syncer: Syncer,
}

fn url(id: &str) -> String {
    format!("test://{id}")
}

/// Counters `a` and `b` in sync, `c` registered and lagging (it gets no round); catch-up pages of
/// `page_items` items.
fn fixture(page_items: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = CoordinatorStore::open(dir.path()).unwrap();
    let registry = Arc::new(Registry::load(store.clone()).unwrap());
    for id in ["a", "b", "c"] {
        registry.register(id, &url(id)).unwrap();
    }
    for id in ["a", "b"] {
        registry.promote(id, 0).unwrap();
    }
    let counters = Arc::new(Fake::default());
    let shared: SharedCounters = counters.clone();
    let txn = TxnManager::start(store, registry.clone(), shared.clone(), 1, 100).unwrap();
    let syncer = Syncer {
        registry: registry.clone(),
        txn: txn.clone(),
        client: shared,
        page_items,
        // No budget: this test is about what catch-up copies, not how long it takes.
        lock_budget: std::time::Duration::MAX,
    };
    Fixture {
        _dir: dir,
        counters,
        registry,
        txn,
        syncer,
    }
}

/// Two new items of two tenants per round.
fn batch(round: u64) -> Vec<Item> {
    ["t", "tenant"]
        .iter()
        .enumerate()
        .map(|(i, tenant)| Item {
            id: format!("{round}-{i}"),
            tenant: (*tenant).into(),
        })
        .collect()
}

/// Rounds `first..first + n`, one at a time, through the real 2PC; returns the last seq.
async fn commit_rounds(txn: &TxnManager, first: u64, n: u64) -> Seq {
    let mut seq = 0;
    for round in first..first + n {
        seq = txn.submit(batch(round)).await.unwrap();
        assert_eq!(seq, round, "one round per submit");
    }
    // Answered at the decision: phase 2 is over once no round holds the lock.
    drop(txn.between_rounds().await);
    seq
}

#[tokio::test]
async fn a_lagging_counter_is_caught_up_from_a_source_log_and_promoted_at_the_committed_seq() {
    let f = fixture(5);
    // Further behind than CLOSE_ENOUGH: pages go out before the round lock is taken as well.
    let committed = commit_rounds(&f.txn, 1, 20).await;
    assert_eq!(f.counters.replica("c", |r| r.last_applied), 0);

    f.syncer.run("c").await.unwrap();

    assert_eq!(f.registry.state("c"), Some(CounterState::InSync));
    assert_eq!(f.counters.replica("c", |r| r.last_applied), committed);
    assert_eq!(f.counters.items("c"), f.counters.items("a"));
    assert_eq!(f.counters.items("c").len(), 40);
    // The same entries at the same seqs: it can serve as a log source in turn.
    assert_eq!(
        f.counters.replica("c", |r| r.log.clone()),
        f.counters.replica("a", |r| r.log.clone())
    );
    let calls = f.counters.calls_to("c");
    assert!(
        !calls.contains(&"import") && !calls.contains(&"finish_snapshot"),
        "the log reached back: no snapshot expected: {calls:?}"
    );
    assert!(f.counters.count_calls("apply_log", "c") > 1, "{calls:?}");
    // Promoted at the committed seq: reads may use it at once, and the next round includes it.
    assert!(f.registry.readers(committed).iter().any(|t| t.id == "c"));
    assert_eq!(f.txn.submit(batch(21)).await.unwrap(), 21);
    assert_eq!(f.counters.replica("c", |r| r.last_applied), 21);
}

#[tokio::test]
async fn when_every_source_log_is_trimmed_past_the_lagging_counter_it_gets_a_snapshot_then_the_log_after_it(
) {
    let f = fixture(3);
    for id in ["a", "b"] {
        f.counters.replica(id, |r| r.retention = 3);
    }
    commit_rounds(&f.txn, 1, 10).await;
    assert_eq!(f.counters.replica("a", |r| r.log_floor), 7);
    assert_eq!(f.counters.replica("b", |r| r.log_floor), 7);
    // Writes go on during the snapshot; the log after the snapshot's seq must bring them.
    let txn = f.txn.clone();
    f.counters.on("import", "c", 1, move || {
        async move {
            commit_rounds(&txn, 11, 2).await;
        }
        .boxed()
    });

    f.syncer.run("c").await.unwrap();

    assert_eq!(f.registry.state("c"), Some(CounterState::InSync));
    assert_eq!(f.txn.store().committed_seq().unwrap(), 12);
    assert_eq!(f.counters.replica("c", |r| r.last_applied), 12);
    assert_eq!(f.counters.items("c"), f.counters.items("a"));
    assert_eq!(f.counters.items("c").len(), 24);
    // The snapshot was fixed at seq 10, where the source stood when it began; 11 and 12 came
    // from the log.
    assert_eq!(f.counters.replica("c", |r| r.log_floor), 10);
    assert_eq!(
        f.counters
            .replica("c", |r| r.log.keys().copied().collect::<Vec<_>>()),
        vec![11, 12]
    );
    let calls = f.counters.calls_to("c");
    let finish = calls.iter().position(|k| *k == "finish_snapshot").unwrap();
    assert_eq!(
        f.counters.count_calls("finish_snapshot", "c"),
        1,
        "{calls:?}"
    );
    assert!(calls[..finish].contains(&"import"), "{calls:?}");
    assert!(!calls[..finish].contains(&"apply_log"), "{calls:?}");
    assert!(calls[finish..].contains(&"apply_log"), "{calls:?}");
    assert!(!calls[finish..].contains(&"import"), "{calls:?}");
}

#[tokio::test]
async fn when_writes_trim_the_log_faster_than_a_snapshot_goes_the_last_snapshot_runs_between_two_rounds(
) {
    let f = fixture(3);
    for id in ["a", "b"] {
        f.counters.replica(id, |r| r.retention = 3);
    }
    commit_rounds(&f.txn, 1, 10).await;
    // Four rounds during the first snapshot trim the source's log past its seq (10) again.
    let txn = f.txn.clone();
    f.counters.on("import", "c", 1, move || {
        async move {
            commit_rounds(&txn, 11, 4).await;
        }
        .boxed()
    });
    // The second snapshot must hold the round lock: no round can start while it runs.
    let txn = f.txn.clone();
    f.counters.on("finish_snapshot", "c", 2, move || {
        async move {
            let lock = tokio::time::timeout(Duration::from_millis(50), txn.between_rounds());
            assert!(lock.await.is_err(), "the round lock was free");
        }
        .boxed()
    });

    f.syncer.run("c").await.unwrap();

    assert_eq!(f.counters.count_calls("finish_snapshot", "c"), 2);
    assert_eq!(f.registry.state("c"), Some(CounterState::InSync));
    assert_eq!(f.counters.replica("c", |r| r.last_applied), 14);
    assert_eq!(f.counters.replica("c", |r| r.log_floor), 14);
    assert_eq!(f.counters.items("c"), f.counters.items("a"));
    assert_eq!(f.counters.items("c").len(), 28);
}

#[tokio::test]
async fn a_failed_page_call_ends_the_catch_up_with_an_error_and_leaves_the_counter_lagging_until_a_second_run(
) {
    // Two rounds per page.
    let f = fixture(4);
    commit_rounds(&f.txn, 1, 6).await;
    f.counters.fail("apply_log", "c", 2);

    let err = f.syncer.run("c").await.unwrap_err();

    assert!(
        matches!(err, SyncError::Call(CallError::Unreachable(_))),
        "{err}"
    );
    assert_eq!(f.registry.state("c"), Some(CounterState::Lagging));
    // Lagging, not syncing: the claim was released, so the next health check can retry.
    assert_eq!(
        f.registry.state_counts(),
        StateCounts {
            in_sync: 2,
            syncing: 0,
            lagging: 1
        }
    );
    assert!(!f.registry.readers(0).iter().any(|t| t.id == "c"));
    // The first page landed; nothing was sent after the failed one.
    assert_eq!(f.counters.replica("c", |r| r.last_applied), 2);
    assert_eq!(f.counters.count_calls("apply_log", "c"), 2);

    f.syncer.run("c").await.unwrap();

    assert_eq!(f.registry.state("c"), Some(CounterState::InSync));
    assert_eq!(f.counters.replica("c", |r| r.last_applied), 6);
    assert_eq!(f.counters.items("c"), f.counters.items("a"));
    // It resumed where the counter stood: pages 2 and 3 only.
    assert_eq!(f.counters.count_calls("apply_log", "c"), 4);
}

#[tokio::test]
async fn a_counter_removed_and_registered_again_during_its_catch_up_stops_the_stale_catch_up_with_gone(
) {
    let f = fixture(4);
    commit_rounds(&f.txn, 1, 10).await;
    let registry = f.registry.clone();
    f.counters.on("apply_log", "c", 1, move || {
        async move {
            registry.remove("c").unwrap();
            registry.register("c", &url("c")).unwrap();
        }
        .boxed()
    });

    let err = f.syncer.run("c").await.unwrap_err();

    assert!(matches!(err, SyncError::Gone), "{err}");
    // The page in flight when it was registered again landed; no other was written.
    assert_eq!(f.counters.count_calls("apply_log", "c"), 1);
    assert_eq!(f.counters.count_calls("import", "c"), 0);
    assert_eq!(f.counters.replica("c", |r| r.last_applied), 2);
    assert_eq!(f.registry.state("c"), Some(CounterState::Lagging));
    // The new member is not left claimed by the stale catch-up: one of its own finishes it.
    f.syncer.run("c").await.unwrap();
    assert_eq!(f.registry.state("c"), Some(CounterState::InSync));
    assert_eq!(f.counters.replica("c", |r| r.last_applied), 10);
    assert_eq!(f.counters.items("c"), f.counters.items("a"));
}

#[tokio::test]
async fn a_stale_catch_up_neither_writes_into_nor_demotes_a_counter_another_catch_up_promoted() {
    let f = fixture(4);
    // Far enough behind that the stale catch-up is in its unlocked pass when the hook runs.
    commit_rounds(&f.txn, 1, 30).await;
    let (registry, syncer, txn) = (f.registry.clone(), f.syncer.clone(), f.txn.clone());
    let counters = f.counters.clone();
    let calls_after_hook = Arc::new(Mutex::new(0));
    let mark = calls_after_hook.clone();
    f.counters.on("apply_log", "c", 1, move || {
        async move {
            registry.remove("c").unwrap();
            registry.register("c", &url("c")).unwrap();
            syncer.run("c").await.unwrap();
            assert_eq!(registry.state("c"), Some(CounterState::InSync));
            commit_rounds(&txn, 31, 2).await;
            *mark.lock().unwrap() = counters.calls_to("c").len();
        }
        .boxed()
    });

    let err = f.syncer.run("c").await.unwrap_err();

    assert!(matches!(err, SyncError::Gone), "{err}");
    assert_eq!(f.registry.state("c"), Some(CounterState::InSync));
    assert_eq!(f.counters.replica("c", |r| r.last_applied), 32);
    assert_eq!(f.counters.items("c"), f.counters.items("a"));
    // After the other catch-up: only the page that was in flight (entries c already had, which
    // a counter skips) and reads of where it stands.
    let calls = f.counters.calls_to("c");
    let after = &calls[*calls_after_hook.lock().unwrap()..];
    assert!(after.iter().all(|k| *k == "status"), "{calls:?}");
    assert!(f.registry.readers(32).iter().any(|t| t.id == "c"));
}

#[tokio::test]
async fn a_counter_ahead_of_the_committed_seq_is_refused_and_not_promoted() {
    let f = fixture(4);
    let committed = commit_rounds(&f.txn, 1, 3).await;
    // Commits this coordinator never decided (say it was restored from an older copy).
    let foreign: Vec<LogEntry> = (1..=5)
        .map(|seq| LogEntry {
            seq,
            txid: 100 + seq,
            items: batch(100 + seq),
        })
        .collect();
    f.counters
        .replica("c", |r| r.apply_entries(&foreign))
        .unwrap();

    let err = f.syncer.run("c").await.unwrap_err();

    assert!(
        matches!(&err, SyncError::Ahead(id, 5, 3) if id == "c"),
        "{err}"
    );
    assert_eq!(committed, 3);
    assert_eq!(f.registry.state("c"), Some(CounterState::Lagging));
    assert!(!f.registry.readers(0).iter().any(|t| t.id == "c"));
    let calls = f.counters.calls_to("c");
    assert!(calls.iter().all(|k| *k == "status"), "{calls:?}");
    assert_eq!(f.counters.replica("c", |r| r.last_applied), 5);
    // A later round still leaves it out.
    f.txn.submit(batch(4)).await.unwrap();
    assert_eq!(f.counters.count_calls("prepare", "c"), 0);
}

#[tokio::test]
async fn with_no_in_sync_source_the_catch_up_fails_and_the_counter_stays_lagging() {
    let f = fixture(4);
    commit_rounds(&f.txn, 1, 3).await;
    for id in ["a", "b"] {
        f.registry.mark_lagging(id, "test").unwrap();
    }

    let err = f.syncer.run("c").await.unwrap_err();

    assert!(matches!(err, SyncError::NoSource), "{err}");
    assert_eq!(f.registry.state("c"), Some(CounterState::Lagging));
    assert_eq!(
        f.registry.state_counts(),
        StateCounts {
            in_sync: 0,
            syncing: 0,
            lagging: 3
        }
    );
    let calls = f.counters.calls_to("c");
    assert!(calls.iter().all(|k| *k == "status"), "{calls:?}");
    assert_eq!(f.counters.replica("c", |r| r.last_applied), 0);
    // Lagging counters are no source, even when they hold everything.
    for id in ["a", "b"] {
        assert_eq!(f.counters.count_calls("log_page", id), 0);
    }
}
