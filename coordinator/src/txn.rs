//! The 2PC transaction manager.
//!
//! Client POSTs are queued; one sequencer task takes everything queued (up to `max_round_items`) and
//! runs it as one round, so a round of disk syncs serves many requests (group commit). A round:
//!
//! 1. PREPARE to every in-sync counter in parallel. A counter that fails (NO, error, timeout) is marked
//!    lagging, durably, and the round goes on with the others: they already hold the prepared record.
//!    Fewer YES votes than `min_replicas` aborts the round (ROLLBACK, best effort; presumed abort).
//! 2. The COMMIT decision with the next seq is logged and flushed: from here the transaction is
//!    committed whatever crashes, and the clients are answered.
//! 3. COMMIT to the YES voters in parallel; one that fails is marked lagging (it learns the outcome by
//!    asking, or by catching up). Phase 2 is then marked finished.
//!
//! **Two rounds overlap.** Phase 2 of round N runs while round N+1 prepares and logs its decision;
//! the sequencer starts round N+2 only once phase 2 of round N is over, and round N+1's COMMITs go
//! out only then, so counters still receive COMMITs in seq order (a counter refuses a gap) and at most
//! two rounds are in flight. A PREPARE does not depend on the previous round's COMMIT: the prepared
//! record is separate from the applied state, and the counter applies in seq order whatever arrives
//! first. The disk syncs of one round (the counters' prepare flushes, the decision's flush) thus
//! overlap the network time of the other's COMMITs.
//!
//! **Answering at the decision.** Once the decision is durable the outcome is fixed: every YES voter
//! holds the prepared record on disk and a restarted coordinator redoes phase 2 before it serves
//! ([`TxnManager::recover`]). So a client is answered then, not after phase 2. Its write is visible to
//! every read that starts after the answer, because the round's seq became the decided seq
//! ([`TxnManager::decided_seq`]) before the answer: a read is served only by a counter that has
//! applied it (see [`crate::reads`]), which is what makes reads linearizable. Every COMMIT
//! acknowledgement tells the registry how far that counter got.
//!
//! **Between rounds.** Rounds in flight hold the round lock shared; catch-up takes it exclusively
//! ([`TxnManager::between_rounds`]) to join a counter to the write set when no round is in flight and
//! every in-sync counter stands at the committed seq. The lock is write-preferring, so a waiting
//! catch-up holds off the next round rather than waiting forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::future::join_all;
use storage::proto::{Outcome, Vote};
use storage::{crash, CoordinatorStore, Decision, Item, Seq, TxId};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::counters::{CallError, SharedCounters};
/// Why a round did not commit, by what the client must do about it. Mapped to HTTP in one place
/// (`From<RoundError> for ApiError`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RoundError {
    /// Nothing was written: too few counters could take it, or the queue is full. Retry later.
    #[error("{0}")]
    Unavailable(String),
    /// The round may or may not have committed (a failure after its decision may have reached the
    /// disk). Re-sending the same items is safe: ids are counted once.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The coordinator's own storage failed before any decision: nothing was written.
    #[error("{0}")]
    Storage(String),
    /// No room on the coordinator's disk, or on the disk of every counter that could have voted:
    /// nothing was written. Retry once space is freed.
    #[error("{0}")]
    InsufficientStorage(String),
}

impl From<storage::Error> for RoundError {
    fn from(e: storage::Error) -> Self {
        if e.is_disk_full() {
            RoundError::InsufficientStorage(format!("the coordinator's disk is full: {e}"))
        } else {
            RoundError::Storage(e.to_string())
        }
    }
}

impl RoundError {
    fn unknown(e: impl std::fmt::Display) -> Self {
        RoundError::OutcomeUnknown(e.to_string())
    }
}
use crate::registry::{Registry, Target};

/// POSTs waiting for a round beyond this are refused with 503 rather than queued without bound.
const MAX_QUEUED_REQUESTS: usize = 10_000;

/// Sizes COMMIT timeouts in recovery for a decision written before rounds recorded their item count:
/// a round holds at most `max_round_items` plus one POST of up to `max_items_per_post`; this covers
/// the defaults twice over.
const LARGEST_ROUND: usize = 40_000;

struct Request {
    items: Vec<Item>,
    reply: oneshot::Sender<Result<Seq, RoundError>>,
}

/// A round whose COMMIT decision is durable: what its phase 2 needs.
struct Decided {
    txid: TxId,
    seq: Seq,
    participants: Vec<Target>,
    items: usize,
}

pub struct TxnManager {
    store: CoordinatorStore,
    registry: Arc<Registry>,
    client: SharedCounters,
    min_replicas: usize,
    /// Held shared by each round from its PREPARE to the end of its phase 2; catch-up takes it
    /// exclusively ([`TxnManager::between_rounds`]) to join a counter between two rounds.
    round_lock: Arc<tokio::sync::RwLock<()>>,
    /// The txid of the round collecting votes, if any: its outcome is not decided yet.
    voting: Mutex<Option<TxId>>,
    /// Seq of the last COMMIT decision made durable. Counters apply nothing beyond it, and a read must
    /// see at least as much as it was when the read arrived.
    decided_seq: AtomicU64,
    queue: mpsc::Sender<Request>,
}

impl TxnManager {
    /// Creates the manager and starts its sequencer task.
    pub fn start(
        store: CoordinatorStore,
        registry: Arc<Registry>,
        client: SharedCounters,
        min_replicas: usize,
        max_round_items: usize,
    ) -> storage::Result<Arc<Self>> {
        let (queue, rx) = mpsc::channel(MAX_QUEUED_REQUESTS);
        let decided = store.committed_seq()?;
        let manager = Arc::new(TxnManager {
            store,
            registry,
            client,
            min_replicas: min_replicas.max(1),
            round_lock: Arc::default(),
            voting: Mutex::new(None),
            decided_seq: AtomicU64::new(decided),
            queue,
        });
        tokio::spawn(manager.clone().sequencer(rx, max_round_items));
        Ok(manager)
    }

    /// Commits `items` atomically (all of them or none), merged into the next round.
    pub async fn submit(&self, items: Vec<Item>) -> Result<Seq, RoundError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Request { items, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    RoundError::Unavailable("too many writes queued; retry later".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    RoundError::Unavailable("the write sequencer stopped".into())
                }
            })?;
        answer
            .await
            .map_err(|_| RoundError::unknown("the round ended without an answer"))?
    }

    /// Waits for the rounds in flight to end (phase 2 included) and holds off the next one while the
    /// guard lives: no commit happens meanwhile, so every in-sync counter stands at the committed seq.
    pub async fn between_rounds(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.round_lock.write().await
    }

    /// Seq of the last COMMIT decision made durable (0 before any).
    pub fn decided_seq(&self) -> Seq {
        self.decided_seq.load(Ordering::SeqCst)
    }

    pub fn store(&self) -> &CoordinatorStore {
        &self.store
    }

    /// On shutdown: waits (until `deadline`) for the rounds in flight to end, then holds the round lock
    /// so that no other starts before the process exits.
    pub async fn quiesce(&self, deadline: tokio::time::Instant) {
        match tokio::time::timeout_at(deadline, self.round_lock.write()).await {
            Ok(guard) => std::mem::forget(guard),
            Err(_) => tracing::warn!("a round was still running at the shutdown timeout"),
        }
    }

    /// Forgets the decisions every registered counter has made durable, at most `max` (see
    /// [`CoordinatorStore::prune_decisions`]); run periodically, so the decision log stays bounded.
    /// Blocking: run it on a blocking thread.
    pub fn prune_decisions(&self, max: usize) -> storage::Result<usize> {
        let Some(watermark) = self.registry.durable_low_watermark() else {
            return Ok(0);
        };
        let pruned = self.store.prune_decisions(watermark, max)?;
        if pruned > 0 {
            tracing::debug!(pruned, watermark, "pruned decisions");
        }
        Ok(pruned)
    }

    /// POSTs waiting for the sequencer.
    pub fn queue_depth(&self) -> usize {
        MAX_QUEUED_REQUESTS - self.queue.capacity()
    }

    async fn sequencer(self: Arc<Self>, mut rx: mpsc::Receiver<Request>, max_round_items: usize) {
        // Phase 2 of the last decided round, while it runs.
        let mut committing: Option<tokio::task::JoinHandle<()>> = None;
        while let Some(first) = rx.recv().await {
            let mut items = first.items;
            let mut replies = vec![first.reply];
            while items.len() < max_round_items {
                match rx.try_recv() {
                    Ok(more) => {
                        items.extend(more.items);
                        replies.push(more.reply);
                    }
                    Err(_) => break,
                }
            }
            let requests = replies.len();
            metrics::histogram!("dc_round_requests_size").record(requests as f64);
            metrics::histogram!("dc_round_items_size").record(items.len() as f64);
            let in_flight = self.round_lock.clone().read_owned().await;
            let txid = match self.store.next_txid() {
                Ok(txid) => txid,
                Err(e) => {
                    abort_cause("storage");
                    let e = RoundError::from(e);
                    self.confirm_store_failure(&e).await;
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                    continue;
                }
            };
            let span = tracing::info_span!("round", txid);
            let result = self.decide(txid, items).instrument(span.clone()).await;
            let outcome = match &result {
                Ok(_) => "committed",
                Err(RoundError::OutcomeUnknown(_)) => "unknown",
                Err(_) => "aborted",
            };
            metrics::counter!("dc_rounds_total", "outcome" => outcome).increment(1);
            if let Err(e) = &result {
                tracing::warn!(parent: &span, error = %e, requests, "round failed");
                self.confirm_store_failure(e).await;
            }
            for reply in replies {
                let _ = reply.send(result.as_ref().map(|d| d.seq).map_err(Clone::clone));
            }
            let Ok(decided) = result else { continue };
            // This round's COMMITs go out after the previous round's: counters apply in seq order.
            if let Some(previous) = committing.take() {
                let _ = previous.await;
            }
            let me = self.clone();
            committing = Some(tokio::spawn(
                async move {
                    let _in_flight = in_flight;
                    me.finish(decided).await;
                }
                .instrument(span),
            ));
        }
        if let Some(last) = committing {
            let _ = last.await;
        }
    }

    /// Phase 1 and the decision of round `txid`, which is `voting` until decided.
    async fn decide(&self, txid: TxId, items: Vec<Item>) -> Result<Decided, RoundError> {
        *self.voting.lock().unwrap_or_else(|p| p.into_inner()) = Some(txid);
        let result = self.run(txid, items).await;
        *self.voting.lock().unwrap_or_else(|p| p.into_inner()) = None;
        result
    }

    /// Phase 2 of a decided round; its clients have their answer already, so a failure here is
    /// logged: the decision stays unfinished and is redone on the next start.
    async fn finish(&self, round: Decided) {
        let began = Instant::now();
        match self
            .phase2(round.txid, round.seq, &round.participants, round.items)
            .await
        {
            Ok(()) => phase_done("commit", began),
            Err(e) => {
                tracing::warn!(error = %e, seq = round.seq, "phase 2 did not finish");
                self.confirm_store_failure(&e).await;
            }
        }
    }

    /// sled keeps its log writer's first I/O error (a full disk) and returns it from every later
    /// write and flush, so a write it refused can be the first sign that the store is dead, before
    /// any flush of ours failed. A flush now makes the failure known (logged, published, the restart
    /// begun) before the client hears and before the next round would send PREPAREs, instead of at
    /// the flusher's next idle check. A flush that succeeds costs one sync on an error path.
    async fn confirm_store_failure(&self, e: &RoundError) {
        let maybe_store = matches!(
            e,
            RoundError::Storage(_)
                | RoundError::InsufficientStorage(_)
                | RoundError::OutcomeUnknown(_)
        );
        if maybe_store && self.store.failure().is_none() {
            let _ = self.store.durable().await;
        }
    }

    async fn run(&self, txid: TxId, items: Vec<Item>) -> Result<Decided, RoundError> {
        // A store whose flush failed cannot log a decision: sending PREPAREs would only leave the
        // counters holding records in doubt until the restart.
        if let Some(failure) = self.store.failure() {
            abort_cause("storage");
            return Err(failure.error().into());
        }
        // Phase 1.
        let participants = self.registry.in_sync();
        if participants.len() < self.min_replicas {
            abort_cause("too_few_in_sync");
            let why = format!(
                "{} counters in sync, {} needed",
                participants.len(),
                self.min_replicas
            );
            let full = self.registry.full_disks();
            if participants.len() + full >= self.min_replicas {
                return Err(RoundError::InsufficientStorage(format!(
                    "{why}: no space left on the data disk of {full} counters"
                )));
            }
            return Err(RoundError::Unavailable(why));
        }
        let n_items = items.len();
        let n_participants = participants.len();
        let began = Instant::now();
        let votes = self.client.prepare_all(&participants, txid, items).await;
        phase_done("prepare", began);
        let mut yes = Vec::new();
        let mut dropped = false;
        // Counters whose PREPARE failed for want of disk space (507): when they are all that is
        // missing, the client is told so.
        let mut full = 0;
        for (target, vote) in participants.into_iter().zip(votes) {
            match vote {
                Ok(Vote::Yes) => yes.push(target),
                Ok(Vote::No { reason }) => {
                    dropped |= self.drop_member(&target, &format!("voted NO: {reason}"), None)?
                }
                Err(e) => {
                    full += usize::from(e.is_insufficient_storage());
                    let why = format!("prepare failed: {e}");
                    dropped |= self.drop_member(&target, &why, Some(&e))?
                }
            }
        }
        if dropped {
            self.store.durable().await?;
        }
        if yes.len() < self.min_replicas {
            abort_cause("too_few_yes_votes");
            for target in &yes {
                let (client, target) = (self.client.clone(), target.clone());
                tokio::spawn(async move { client.rollback(&target, txid).await });
            }
            let why = format!(
                "only {} counters could prepare, {} needed",
                yes.len(),
                self.min_replicas
            );
            if full > 0 && yes.len() + full == n_participants {
                return Err(RoundError::InsufficientStorage(format!(
                    "{why}: no space left on the data disk of {full} counters"
                )));
            }
            return Err(RoundError::Unavailable(why));
        }

        // Decision: forced to disk before anyone hears COMMIT.
        let seq = self.store.committed_seq()? + 1;
        let decision = Decision {
            seq,
            participants: yes.iter().map(|t| t.id.clone()).collect(),
        };
        let began = Instant::now();
        self.store
            .record_commit(txid, &decision, n_items as u64)
            .inspect_err(|_| abort_cause("storage"))?;
        // From here a failure must not be reported as "not committed": the decision may be on disk.
        self.store.durable().await.map_err(RoundError::unknown)?;
        phase_done("decision_flush", began);
        crash::point("coordinator-after-decision");
        // Before any counter can apply it (phase 2, or an outcome query answered once `voting` is
        // cleared) and before any client hears of it: a read arriving from now on must see this round.
        self.decided_seq.fetch_max(seq, Ordering::SeqCst);
        *self.voting.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(Decided {
            txid,
            seq,
            participants: yes,
            items: n_items,
        })
    }

    /// Sends COMMIT to every participant; one that does not acknowledge leaves the write set. Ends with
    /// the decision marked finished.
    async fn phase2(
        &self,
        txid: TxId,
        seq: Seq,
        participants: &[Target],
        items: usize,
    ) -> Result<(), RoundError> {
        let mut pending: &[Target] = participants;
        if crash::armed("coordinator-mid-phase2") && pending.len() > 1 {
            // Only in crash tests: one counter gets COMMIT, then the coordinator dies before the others.
            let _ = self.client.commit(&pending[0], txid, seq, items).await;
            crash::point("coordinator-mid-phase2");
            pending = &pending[1..];
        }
        // Each acknowledgement is noted as it arrives: a read waiting for this round is served by the
        // first counter that applied it, not after the slowest.
        let acks = join_all(pending.iter().map(|t| async move {
            let ack = self.client.commit(t, txid, seq, items).await;
            if let Ok(applied) = &ack {
                // Applied there, and durable up to what it says (a COMMIT is not flushed first).
                self.registry.note_applied(&t.id, applied.last_applied);
                self.registry.note_durable(&t.id, applied.durable);
                self.registry.add_applied_items(&t.id, items as u64);
            }
            ack
        }))
        .await;
        let mut dropped = false;
        for (target, ack) in pending.iter().zip(acks) {
            if let Err(e) = ack {
                let why = format!("commit of seq {seq} failed: {e}");
                dropped |= self.drop_member(target, &why, Some(&e))?;
            }
        }
        if dropped {
            self.store.durable().await?;
        }
        self.store.finish_phase2(txid)?;
        Ok(())
    }

    /// Takes a counter out of the write set after a NO vote or a failed call (`error`).
    fn drop_member(
        &self,
        target: &Target,
        why: &str,
        error: Option<&CallError>,
    ) -> Result<bool, RoundError> {
        let full = error.is_some_and(CallError::is_insufficient_storage);
        self.registry.note_disk_full(&target.id, full);
        if matches!(error, Some(CallError::TimedOut(_))) {
            self.registry.too_slow(&target.id, false);
        }
        Ok(self.registry.mark_lagging(&target.id, why)?)
    }

    /// The outcome of `txid` for a counter that holds it prepared. The voting txid is checked before the
    /// decisions, and a round logs its decision before it stops voting, so a round that is about to
    /// commit is never reported aborted.
    pub fn outcome(&self, txid: TxId) -> storage::Result<Outcome> {
        if *self.voting.lock().unwrap_or_else(|p| p.into_inner()) == Some(txid) {
            return Ok(Outcome::Pending);
        }
        // After a failed flush the store's memory may hold a decision that never reached the disk,
        // which a restart forgets: no answer until the restart (checked after `voting`, which a
        // round clears only after its flush failed).
        if let Some(failure) = self.store.failure() {
            return Err(failure.error());
        }
        Ok(match self.store.decision(txid)? {
            Some(d) => Outcome::Committed { seq: d.seq },
            None => Outcome::Aborted,
        })
    }

    /// On start, before serving: redoes phase 2 of every decision not marked finished.
    pub async fn recover(&self) -> Result<(), RoundError> {
        let _round = self.round_lock.write().await;
        for (txid, decision) in self.store.unfinished()? {
            let targets: Vec<Target> = decision
                .participants
                .iter()
                .filter_map(|id| {
                    self.registry.url(id).map(|url| Target {
                        id: id.clone(),
                        url,
                    })
                })
                .collect();
            tracing::info!(
                txid,
                seq = decision.seq,
                participants = targets.len(),
                "redoing phase 2"
            );
            // Call timeouts sized from the round's item count; data written before the count was kept
            // gets the allowance of the largest round a body can carry.
            let items = self
                .store
                .round_items(txid)?
                .map_or(LARGEST_ROUND, |n| n as usize);
            self.phase2(txid, decision.seq, &targets, items).await?;
        }
        let committed = self.store.committed_seq()?;
        self.decided_seq.fetch_max(committed, Ordering::SeqCst);
        self.registry.recovered(committed);
        Ok(())
    }
}

fn abort_cause(cause: &'static str) {
    metrics::counter!("dc_round_aborts_total", "cause" => cause).increment(1);
}

fn phase_done(phase: &'static str, began: Instant) {
    metrics::histogram!("dc_phase_duration_seconds", "phase" => phase)
        .record(began.elapsed().as_secs_f64());
}

/// The round without a socket: counters scripted per node, the real store and registry.
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use futures_util::future::{BoxFuture, FutureExt};
    use storage::proto::{Applied, CounterStatus, Counts, LogPage, SnapshotPage};
    use storage::{CounterState, LogEntry};

    use super::*;
    use crate::counters::{CallError, CallResult, Counters};

    /// What a scripted counter does.
    #[derive(Clone, Copy, Default)]
    struct Script {
        vote_no: bool,
        prepare_fails: bool,
        commit_fails: bool,
    }

    struct Scripted {
        scripts: Mutex<BTreeMap<String, Script>>,
        /// Every call, as "kind node txid".
        calls: Mutex<Vec<String>>,
        /// COMMITs are answered only as permits are added here.
        commit_gate: Arc<tokio::sync::Semaphore>,
    }

    /// More COMMITs than any test makes.
    const GATE_OPEN: u32 = 1 << 20;

    impl Default for Scripted {
        fn default() -> Self {
            Scripted {
                scripts: Mutex::default(),
                calls: Mutex::default(),
                commit_gate: Arc::new(tokio::sync::Semaphore::new(GATE_OPEN as usize)),
            }
        }
    }

    impl Scripted {
        fn script(&self, id: &str) -> Script {
            self.scripts
                .lock()
                .unwrap()
                .get(id)
                .copied()
                .unwrap_or_default()
        }

        fn log(&self, kind: &str, to: &Target, txid: TxId) {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{kind} {} {txid}", to.id));
        }

        fn calls(&self, kind: &str) -> Vec<String> {
            let calls = self.calls.lock().unwrap();
            calls
                .iter()
                .filter(|c| c.starts_with(kind))
                .cloned()
                .collect()
        }
    }

    fn unused<T>() -> BoxFuture<'static, CallResult<T>> {
        async { Err(CallError::Unreachable("not scripted".into())) }.boxed()
    }

    impl Counters for Scripted {
        fn prepare_all<'a>(
            &'a self,
            to: &'a [Target],
            txid: TxId,
            _items: Vec<Item>,
        ) -> BoxFuture<'a, Vec<CallResult<Vote>>> {
            let votes = to
                .iter()
                .map(|t| {
                    self.log("prepare", t, txid);
                    match self.script(&t.id) {
                        Script {
                            prepare_fails: true,
                            ..
                        } => Err(CallError::Unreachable("timed out".into())),
                        Script { vote_no: true, .. } => Ok(Vote::No {
                            reason: "scripted".into(),
                        }),
                        _ => Ok(Vote::Yes),
                    }
                })
                .collect();
            async move { votes }.boxed()
        }

        fn commit<'a>(
            &'a self,
            to: &'a Target,
            txid: TxId,
            seq: Seq,
            _items: usize,
        ) -> BoxFuture<'a, CallResult<Applied>> {
            self.log("commit", to, txid);
            let fails = self.script(&to.id).commit_fails;
            let gate = self.commit_gate.clone();
            async move {
                gate.acquire().await.expect("never closed").forget();
                if fails {
                    Err(CallError::Unreachable("timed out".into()))
                } else {
                    Ok(Applied {
                        last_applied: seq,
                        durable: seq,
                    })
                }
            }
            .boxed()
        }

        fn rollback<'a>(&'a self, to: &'a Target, txid: TxId) -> BoxFuture<'a, CallResult<()>> {
            self.log("rollback", to, txid);
            async { Ok(()) }.boxed()
        }

        fn counts<'a>(
            &'a self,
            _: &'a Target,
            _: Vec<String>,
        ) -> BoxFuture<'a, CallResult<Counts>> {
            unused()
        }

        fn status<'a>(&'a self, _: &'a Target) -> BoxFuture<'a, CallResult<CounterStatus>> {
            unused()
        }

        fn log_page<'a>(
            &'a self,
            _: &'a Target,
            _: Seq,
            _: usize,
        ) -> BoxFuture<'a, CallResult<LogPage>> {
            unused()
        }

        fn snapshot_page<'a>(
            &'a self,
            _: &'a Target,
            _: Option<String>,
            _: usize,
        ) -> BoxFuture<'a, CallResult<SnapshotPage>> {
            unused()
        }

        fn apply_log<'a>(
            &'a self,
            _: &'a Target,
            _: Vec<LogEntry>,
        ) -> BoxFuture<'a, CallResult<Applied>> {
            unused()
        }

        fn import<'a>(&'a self, _: &'a Target, _: Vec<Item>) -> BoxFuture<'a, CallResult<Applied>> {
            unused()
        }

        fn finish_snapshot<'a>(
            &'a self,
            _: &'a Target,
            _: Seq,
            _: TxId,
        ) -> BoxFuture<'a, CallResult<Applied>> {
            unused()
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        counters: Arc<Scripted>,
        registry: Arc<Registry>,
        txn: Arc<TxnManager>,
    }

    /// Counters `a`, `b`, `c`, all in sync; writes need `min_replicas`.
    fn fixture(min_replicas: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = CoordinatorStore::open(dir.path()).unwrap();
        let registry = Arc::new(Registry::load(store.clone()).unwrap());
        for id in ["a", "b", "c"] {
            registry.register(id, &format!("test://{id}")).unwrap();
            registry.promote(id, 0).unwrap();
        }
        let counters = Arc::new(Scripted::default());
        let shared: SharedCounters = counters.clone();
        let txn = TxnManager::start(store, registry.clone(), shared, min_replicas, 100).unwrap();
        Fixture {
            _dir: dir,
            counters,
            registry,
            txn,
        }
    }

    fn items(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Item {
                id: i.to_string(),
                tenant: "t".into(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_no_vote_drops_that_counter_and_the_round_commits_with_the_others() {
        let f = fixture(1);
        f.counters.scripts.lock().unwrap().insert(
            "b".into(),
            Script {
                vote_no: true,
                ..Script::default()
            },
        );
        let seq = f.txn.submit(items(3)).await.unwrap();
        assert_eq!(seq, 1);
        assert_eq!(f.registry.state("b"), Some(CounterState::Lagging));
        // Answered at the decision; phase 2 ends before the round lock is free.
        drop(f.txn.between_rounds().await);
        let commits = f.counters.calls("commit");
        assert_eq!(commits.len(), 2, "{commits:?}");
        assert!(commits.iter().all(|c| !c.contains(" b ")), "{commits:?}");
        let txid = commits[0].split(' ').nth(2).unwrap().parse().unwrap();
        let decision = f.txn.store().decision(txid).unwrap().unwrap();
        assert_eq!(
            decision.participants,
            vec!["a".to_string(), "c".to_string()]
        );
        assert!(f.txn.store().unfinished().unwrap().is_empty());
        assert_eq!(f.txn.decided_seq(), 1);
        // The next round leaves it out from the start.
        f.txn.submit(items(1)).await.unwrap();
        assert_eq!(f.counters.calls("prepare").len(), 5);
    }

    #[tokio::test]
    async fn too_few_yes_votes_abort_with_nothing_decided_and_the_yes_voters_rolled_back() {
        let f = fixture(2);
        for id in ["a", "b"] {
            f.counters.scripts.lock().unwrap().insert(
                id.into(),
                Script {
                    prepare_fails: true,
                    ..Script::default()
                },
            );
        }
        let result = f.txn.submit(items(2)).await;
        assert!(
            matches!(result, Err(RoundError::Unavailable(_))),
            "{result:?}"
        );
        assert_eq!(f.txn.store().committed_seq().unwrap(), 0);
        assert_eq!(f.txn.decided_seq(), 0);
        assert!(f.counters.calls("commit").is_empty());
        // The ROLLBACK to the one YES voter is sent from a task of its own.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while f.counters.calls("rollback").is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no rollback");
            tokio::task::yield_now().await;
        }
        assert_eq!(f.counters.calls("rollback").len(), 1);
        assert!(f.counters.calls("rollback")[0].contains(" c "));
        let txid = f.counters.calls("rollback")[0]
            .split(' ')
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(f.txn.outcome(txid).unwrap(), Outcome::Aborted);
    }

    #[tokio::test]
    async fn a_failed_commit_after_the_decision_still_answers_committed_and_drops_the_counter() {
        let f = fixture(1);
        f.counters.scripts.lock().unwrap().insert(
            "c".into(),
            Script {
                commit_fails: true,
                ..Script::default()
            },
        );
        assert_eq!(f.txn.submit(items(1)).await.unwrap(), 1);
        drop(f.txn.between_rounds().await);
        assert_eq!(f.registry.state("c"), Some(CounterState::Lagging));
        assert_eq!(f.registry.state("a"), Some(CounterState::InSync));
        // Reads may only go where the round is known to be applied.
        let readers: Vec<String> = f.registry.readers(1).into_iter().map(|t| t.id).collect();
        assert_eq!(readers.len(), 2);
        assert!(!readers.contains(&"c".to_string()));
        // The decision stays for c's in-doubt query until it is caught up.
        let txid = f.counters.calls("commit")[0]
            .split(' ')
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(f.txn.outcome(txid).unwrap(), Outcome::Committed { seq: 1 });
        assert_eq!(
            f.txn.prune_decisions(100).unwrap(),
            0,
            "c has not made it durable"
        );
    }

    /// The txids of the calls of `kind`, in the order they were made.
    fn txids(f: &Fixture, kind: &str) -> Vec<TxId> {
        f.counters
            .calls(kind)
            .iter()
            .map(|c| c.split(' ').nth(2).unwrap().parse().unwrap())
            .collect()
    }

    /// Waits (a bounded number of scheduler turns) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_round_is_answered_at_its_decision_and_prepares_while_the_previous_one_commits() {
        let f = fixture(1);
        // Take every permit: COMMITs hang until the test adds some.
        let held = f
            .counters
            .commit_gate
            .clone()
            .acquire_many_owned(GATE_OPEN)
            .await
            .unwrap();
        let txn = f.txn.clone();
        let first = tokio::spawn(async move { txn.submit(items(1)).await });
        // Answered while every COMMIT of its round is still unanswered.
        assert_eq!(first.await.unwrap().unwrap(), 1);
        until("round 1's COMMITs sent", || txids(&f, "commit").len() == 3).await;

        let txn = f.txn.clone();
        let second = tokio::spawn(async move { txn.submit(items(1)).await });
        assert_eq!(
            second.await.unwrap().unwrap(),
            2,
            "round 2 decided meanwhile"
        );
        let t1 = txids(&f, "commit")[0];
        assert!(txids(&f, "prepare").iter().filter(|&&t| t > t1).count() == 3);
        // Round 2's COMMITs wait for the end of round 1's phase 2; a third round waits too.
        let txn = f.txn.clone();
        let third = tokio::spawn(async move { txn.submit(items(1)).await });
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(txids(&f, "commit"), vec![t1; 3], "round 2 committed early");
        assert_eq!(txids(&f, "prepare").len(), 6, "a third round in flight");
        let catch_up =
            tokio::time::timeout(std::time::Duration::from_millis(50), f.txn.between_rounds());
        assert!(
            catch_up.await.is_err(),
            "catch-up ran with rounds in flight"
        );

        drop(held);
        assert_eq!(third.await.unwrap().unwrap(), 3);
        drop(f.txn.between_rounds().await);
        // Every counter heard the COMMITs in seq order.
        let commits = txids(&f, "commit");
        assert_eq!(commits.len(), 9);
        assert!(commits.windows(2).all(|w| w[0] <= w[1]), "{commits:?}");
        assert!(f.txn.store().unfinished().unwrap().is_empty());
    }
}
