//! The registration table: which counters exist, where they are, and whether they are in sync.
//!
//! The table lives in memory for speed and in the [`CoordinatorStore`] for restarts. Every change is
//! written to the store; callers that must not answer a client before the change is durable await
//! [`CoordinatorStore::durable`] (a counter taken out of the write set must not come back as in sync
//! after a coordinator crash).
//!
//! It also knows, in memory only, the last seq each counter is known to have applied, which is what
//! the read path routes by (see [`crate::reads`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use storage::proto::{ClusterView, CounterView, MemberState};
use storage::{ClusterId, CoordinatorStore, CounterRecord, CounterState, NodeId, Seq};

#[derive(Debug, Clone)]
struct Member {
    record: CounterRecord,
    failed_checks: u32,
    /// Generation of the catch-up running for this counter, if any.
    syncing: Option<u64>,
    synced_entries: u64,
    synced_snapshot_items: u64,
    /// The highest seq this counter told us it applied (never more than it holds: applied only grows).
    applied: Seq,
    /// The highest seq it acknowledged as durable (a COMMIT, a catch-up page, a promotion): what the
    /// decision log may be pruned up to.
    durable: Seq,
    /// Items it applied recently, for the operator's items/s.
    rate: Rate,
    /// Its last failed call answered that its disk is full (`507`): it is alive and restarts itself
    /// once space is freed, so it stays in the table, and a write refused for want of counters says
    /// why.
    disk_full: bool,
    /// When it last joined the write set, and how long it must wait before the next catch-up may
    /// put it back (see [`Rejoin`]).
    rejoin: Rejoin,
}

/// The rule that keeps a slow replica from slowing every round: a counter whose call timed out in a
/// round within [`Rejoin::STABLE`] of joining the write set, or whose catch-up ran out of time under
/// the round lock, waits twice as long as the last time before its next catch-up, from
/// [`Rejoin::FIRST`] up to [`Rejoin::MAX`]; one that stayed [`Rejoin::STABLE`] starts over. Each
/// attempt costs the write path at most one call timeout (a PREPARE, or the final stretch of a
/// catch-up), so the cost of a replica that stays slow decays instead of recurring every health
/// interval. Other departures (a crash, a full disk, a NO vote) wait for nothing: a restarted
/// process is not slow.
#[derive(Debug, Clone, Default)]
struct Rejoin {
    joined: Option<tokio::time::Instant>,
    backoff: std::time::Duration,
    not_before: Option<tokio::time::Instant>,
}

impl Rejoin {
    const STABLE: std::time::Duration = std::time::Duration::from_secs(60);
    const FIRST: std::time::Duration = std::time::Duration::from_secs(10);
    const MAX: std::time::Duration = std::time::Duration::from_secs(300);

    /// It was too slow: a call of a round timed out, or (`tried_to_join`) a catch-up ran out of
    /// time. Returns the wait before the next catch-up.
    fn too_slow(&mut self, tried_to_join: bool) -> std::time::Duration {
        let now = tokio::time::Instant::now();
        let recently = tried_to_join
            || self
                .joined
                .is_some_and(|at| now.duration_since(at) < Self::STABLE);
        self.backoff = if recently {
            (self.backoff * 2).clamp(Self::FIRST, Self::MAX)
        } else {
            std::time::Duration::ZERO
        };
        self.not_before = Some(now + self.backoff);
        self.joined = None;
        self.backoff
    }

    fn may_rejoin(&self) -> bool {
        self.not_before
            .is_none_or(|t| tokio::time::Instant::now() >= t)
    }
}

impl Member {
    /// A member as the registration table records it, with nothing learned about it yet.
    fn new(record: CounterRecord) -> Member {
        Member {
            record,
            failed_checks: 0,
            syncing: None,
            synced_entries: 0,
            synced_snapshot_items: 0,
            applied: 0,
            durable: 0,
            rate: Rate::default(),
            disk_full: false,
            rejoin: Rejoin::default(),
        }
    }

    fn state(&self) -> MemberState {
        match (self.record.state, self.syncing) {
            (CounterState::InSync, _) => MemberState::InSync,
            (CounterState::Lagging, Some(_)) => MemberState::Syncing,
            (CounterState::Lagging, None) => MemberState::Lagging,
        }
    }
}

/// Items per second over the last [`Rate::SECONDS`] whole seconds, in one-second buckets.
#[derive(Debug, Clone, Default)]
struct Rate {
    /// (second since the process started, items applied in it), indexed by second modulo the length.
    buckets: [(u64, u64); Rate::SECONDS as usize + 1],
}

impl Rate {
    const SECONDS: u64 = 5;

    fn now() -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs()
    }

    fn add(&mut self, items: u64) {
        let now = Self::now();
        let slot = &mut self.buckets[(now % (Self::SECONDS + 1)) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += items;
    }

    /// The whole seconds before the current one only, so the figure does not dip as a second begins.
    fn per_sec(&self) -> f64 {
        let now = Self::now();
        let recent = |s: u64| s < now && s + Self::SECONDS >= now;
        let items: u64 = self
            .buckets
            .iter()
            .filter(|(s, _)| recent(*s))
            .map(|(_, n)| n)
            .sum();
        items as f64 / Self::SECONDS as f64
    }
}

/// How many registered counters are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub in_sync: usize,
    pub syncing: usize,
    pub lagging: usize,
}

pub struct Registry {
    store: CoordinatorStore,
    members: Mutex<BTreeMap<NodeId, Member>>,
    next_reader: AtomicUsize,
    /// Bumped whenever a counter's known applied seq grows; readers waiting for phase 2 watch it.
    applied_changes: tokio::sync::watch::Sender<u64>,
}

/// A counter as the rest of the coordinator needs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub id: NodeId,
    pub url: String,
}

impl Registry {
    pub fn load(store: CoordinatorStore) -> storage::Result<Self> {
        let members = store
            .counters()?
            .into_iter()
            .map(|(id, record)| (id, Member::new(record)))
            .collect();
        Ok(Registry {
            store,
            members: Mutex::new(members),
            next_reader: AtomicUsize::new(0),
            applied_changes: tokio::sync::watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Member>> {
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The write set: every in-sync counter.
    pub fn in_sync(&self) -> Vec<Target> {
        self.lock()
            .iter()
            .filter(|(_, m)| m.record.state == CounterState::InSync)
            .map(|(id, m)| Target {
                id: id.clone(),
                url: m.record.url.clone(),
            })
            .collect()
    }

    /// The read set for a read that must see commit `required`: the in-sync counters known to have
    /// applied it, rotated so reads spread over them.
    pub fn readers(&self, required: Seq) -> Vec<Target> {
        let mut set: Vec<Target> = self
            .lock()
            .iter()
            .filter(|(_, m)| m.record.state == CounterState::InSync && m.applied >= required)
            .map(|(id, m)| Target {
                id: id.clone(),
                url: m.record.url.clone(),
            })
            .collect();
        if !set.is_empty() {
            let n = self.next_reader.fetch_add(1, Ordering::Relaxed) % set.len();
            set.rotate_left(n);
        }
        set
    }

    /// Records that counter `id` has applied every commit up to `seq` (it said so: a COMMIT
    /// acknowledgement, a status, or the end of its catch-up).
    pub fn note_applied(&self, id: &str, seq: Seq) {
        let grew = match self.lock().get_mut(id) {
            Some(m) if m.applied < seq => {
                m.applied = seq;
                true
            }
            _ => false,
        };
        if grew {
            self.applied_changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Records that counter `id` reported every commit up to `seq` durable (a catch-up page, which it
    /// flushes before answering, or the durable seq of a COMMIT acknowledgement or a status), and so
    /// applied them.
    pub fn note_durable(&self, id: &str, seq: Seq) {
        if let Some(m) = self.lock().get_mut(id) {
            m.durable = m.durable.max(seq);
        }
        self.note_applied(id, seq);
    }

    /// The seq every registered counter has acknowledged as durable (`None` without counters):
    /// decisions up to it are no longer needed by any of them.
    pub fn durable_low_watermark(&self) -> Option<Seq> {
        self.lock().values().map(|m| m.durable).min()
    }

    /// After recovery: every in-sync counter has applied every commit up to `committed`. Recovery has
    /// just redone every unfinished phase 2, and a counter that missed the COMMIT of a finished
    /// decision was marked lagging durably before that decision was marked finished. Not that they made them durable: a COMMIT is acknowledged
    /// before its flush, so what is durable is learned from the counters again.
    pub fn recovered(&self, committed: Seq) {
        for id in self.in_sync().into_iter().map(|t| t.id) {
            self.note_applied(&id, committed);
        }
    }

    /// Wakes up when some counter's known applied seq grew.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_changes.subscribe()
    }

    pub fn all(&self) -> Vec<Target> {
        self.lock()
            .iter()
            .map(|(id, m)| Target {
                id: id.clone(),
                url: m.record.url.clone(),
            })
            .collect()
    }

    pub fn url(&self, id: &str) -> Option<String> {
        self.lock().get(id).map(|m| m.record.url.clone())
    }

    pub fn state(&self, id: &str) -> Option<CounterState> {
        self.lock().get(id).map(|m| m.record.state)
    }

    /// Takes a counter out of the write and read sets. Returns whether it was in sync. Not durable until
    /// the caller awaits the store's flush.
    pub fn mark_lagging(&self, id: &str, why: &str) -> storage::Result<bool> {
        let mut members = self.lock();
        let Some(m) = members.get_mut(id) else {
            return Ok(false);
        };
        if m.record.state != CounterState::InSync {
            return Ok(false);
        }
        m.record.state = CounterState::Lagging;
        self.store.put_counter(id, &m.record)?;
        tracing::warn!(node = id, reason = why, "counter marked lagging");
        Ok(true)
    }

    /// Puts a counter that holds every committed transaction, up to `committed`, back in the write
    /// and read sets. The caller holds the round lock, so no round can commit between its check and
    /// this.
    pub fn promote(&self, id: &str, committed: Seq) -> storage::Result<()> {
        {
            let mut members = self.lock();
            if let Some(m) = members.get_mut(id) {
                if m.record.state != CounterState::InSync {
                    m.rejoin.joined = Some(tokio::time::Instant::now());
                    m.record.state = CounterState::InSync;
                    self.store.put_counter(id, &m.record)?;
                    tracing::info!(node = id, "counter in sync");
                }
            }
        }
        // Applied, not necessarily durable: a counter found already at `committed` got there by
        // COMMITs, which it acknowledges before their flush.
        self.note_applied(id, committed);
        Ok(())
    }

    /// Records a registration. A new counter starts lagging; a known one keeps its state but may have
    /// moved to a new URL (a restarted container gets a new address).
    pub fn register(&self, id: &str, url: &str) -> storage::Result<()> {
        let mut members = self.lock();
        let known = members.contains_key(id);
        let m = members.entry(id.to_owned()).or_insert_with(|| {
            Member::new(CounterRecord {
                url: url.to_owned(),
                state: CounterState::Lagging,
            })
        });
        m.failed_checks = 0;
        m.disk_full = false;
        if !known || m.record.url != url {
            if known {
                tracing::info!(node = id, url, "counter moved");
                // A new address is a new process: whether it still holds everything is checked by a sync.
                m.record.state = CounterState::Lagging;
            } else {
                tracing::info!(node = id, url, "counter registered");
            }
            m.record.url = url.to_owned();
            self.store.put_counter(id, &m.record)?;
        }
        Ok(())
    }

    /// Counts a failed health check; returns how many failed in a row.
    pub fn check_failed(&self, id: &str) -> u32 {
        let mut members = self.lock();
        members.get_mut(id).map_or(0, |m| {
            m.failed_checks += 1;
            m.failed_checks
        })
    }

    pub fn check_passed(&self, id: &str) {
        if let Some(m) = self.lock().get_mut(id) {
            m.failed_checks = 0;
            m.disk_full = false;
        }
    }

    /// Records that a call to `id` failed because its disk is full (or, `full` false, for another
    /// reason). Returns whether that is news.
    pub fn note_disk_full(&self, id: &str, full: bool) -> bool {
        self.lock().get_mut(id).is_some_and(|m| {
            let news = m.disk_full != full;
            m.disk_full = full;
            news && full
        })
    }

    /// Counters out of the write set whose disk is full.
    pub fn full_disks(&self) -> usize {
        self.lock()
            .values()
            .filter(|m| m.disk_full && m.record.state != CounterState::InSync)
            .count()
    }

    pub fn remove(&self, id: &str) -> storage::Result<()> {
        self.lock().remove(id);
        self.store.remove_counter(id)?;
        tracing::warn!(node = id, "counter removed from the registration table");
        Ok(())
    }

    /// Whether a catch-up may put `id` back in the write set now (see [`Rejoin`]).
    pub fn may_rejoin(&self, id: &str) -> bool {
        self.lock().get(id).is_some_and(|m| m.rejoin.may_rejoin())
    }

    /// A call of a round to `id` timed out, or (`tried_to_join`) its catch-up ran out of time under
    /// the round lock. Returns how long it waits before the next catch-up.
    pub fn too_slow(&self, id: &str, tried_to_join: bool) -> std::time::Duration {
        let wait = self
            .lock()
            .get_mut(id)
            .map_or(std::time::Duration::ZERO, |m| {
                m.rejoin.too_slow(tried_to_join)
            });
        if !wait.is_zero() {
            tracing::warn!(
                node = id,
                ?wait,
                "counter too slow; it waits before its next catch-up"
            );
        }
        wait
    }

    /// Claims the right to run the catch-up of `id`: `None` if one already runs or it needs none. The
    /// generation ties the claim to this member, which may be removed and registered anew meanwhile.
    pub fn start_sync(&self, id: &str) -> Option<u64> {
        static GENERATION: AtomicU64 = AtomicU64::new(1);
        match self.lock().get_mut(id) {
            Some(m) if m.record.state == CounterState::Lagging && m.syncing.is_none() => {
                let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
                m.syncing = Some(generation);
                Some(generation)
            }
            _ => None,
        }
    }

    /// Whether catch-up `generation` still owns `id`'s: the member is the one it started for, and
    /// still lagging.
    pub fn is_syncing(&self, id: &str, generation: u64) -> bool {
        self.lock().get(id).is_some_and(|m| {
            m.syncing == Some(generation) && m.record.state == CounterState::Lagging
        })
    }

    pub fn end_sync(&self, id: &str, generation: u64) {
        if let Some(m) = self.lock().get_mut(id) {
            if m.syncing == Some(generation) {
                m.syncing = None;
            }
        }
    }

    /// Counts what a catch-up sent to `id`: log entries holding `entry_items` items, and snapshot items.
    pub fn add_synced(&self, id: &str, entries: u64, entry_items: u64, snapshot_items: u64) {
        if let Some(m) = self.lock().get_mut(id) {
            m.synced_entries += entries;
            m.synced_snapshot_items += snapshot_items;
            m.rate.add(entry_items + snapshot_items);
        }
        metrics::counter!("dc_catchup_log_entries_total").increment(entries);
        metrics::counter!("dc_catchup_snapshot_items_total").increment(snapshot_items);
    }

    /// Counts `items` applied by `id` in a round it acknowledged.
    pub fn add_applied_items(&self, id: &str, items: u64) {
        if let Some(m) = self.lock().get_mut(id) {
            m.rate.add(items);
        }
    }

    pub fn state_counts(&self) -> StateCounts {
        let mut counts = StateCounts::default();
        for m in self.lock().values() {
            match m.state() {
                MemberState::InSync => counts.in_sync += 1,
                MemberState::Syncing => counts.syncing += 1,
                MemberState::Lagging => counts.lagging += 1,
            }
        }
        counts
    }

    /// The operator's view; `refused_calls` is the HTTP layer's to fill in.
    pub fn view(&self, cluster_id: ClusterId, committed_seq: Seq) -> ClusterView {
        let counters = self
            .lock()
            .iter()
            .map(|(id, m)| CounterView {
                node_id: id.clone(),
                url: m.record.url.clone(),
                state: m.state(),
                last_applied: m.applied,
                lag: committed_seq.saturating_sub(m.applied),
                items_per_sec: m.rate.per_sec(),
                failed_checks: m.failed_checks,
                synced_entries: m.synced_entries,
                synced_snapshot_items: m.synced_snapshot_items,
            })
            .collect();
        ClusterView {
            cluster_id,
            committed_seq,
            refused_calls: 0,
            decisions_kept: self.store.decisions_kept(),
            counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Rejoin;

    /// A counter that leaves the write set soon after joining waits twice as long each time, up to
    /// the cap; one that stayed long enough starts over without a wait.
    #[tokio::test(start_paused = true)]
    async fn a_replica_that_keeps_leaving_waits_longer_each_time() {
        let mut r = Rejoin::default();
        // Never joined: the first departure costs no wait.
        assert_eq!(r.too_slow(false), Duration::ZERO);
        assert!(r.may_rejoin());
        let mut expected = Rejoin::FIRST;
        for _ in 0..8 {
            r.joined = Some(tokio::time::Instant::now());
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(r.too_slow(false), expected);
            assert!(!r.may_rejoin());
            tokio::time::advance(expected).await;
            assert!(r.may_rejoin());
            expected = (expected * 2).min(Rejoin::MAX);
        }
        assert_eq!(expected, Rejoin::MAX);
        // A catch-up that ran out of time counts as a failed join.
        assert_eq!(r.too_slow(true), Rejoin::MAX);
        // Stable for a while: the next departure starts over.
        r.joined = Some(tokio::time::Instant::now());
        tokio::time::advance(Rejoin::STABLE).await;
        assert_eq!(r.too_slow(false), Duration::ZERO);
        assert!(r.may_rejoin());
    }
}
