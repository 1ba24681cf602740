//! Counters in process, for simulation: [`Net`] holds the real counter participants
//! (`counter::participant::Participant`, each over a sled directory of its own) and [`Link`] is one
//! coordinator incarnation's [`Counters`], calling them directly: no socket, no HTTP.
//!
//! Every call may be hit by an injected fault, drawn from the net's seeded generator: the call is lost
//! before it reaches the counter, or the counter does it and its answer is lost, or a PREPARE is
//! answered NO. A fault may also crash the counter being called, or the coordinator making the call.
//!
//! A crash must leave exactly what a killed process leaves: what sled wrote to its files, not what it
//! holds in memory. sled flushes when its handle is dropped, so a crash copies the directory's files
//! at that instant (the state a SIGKILL leaves: written data survives in the page cache), abandons the
//! running instance, and a restart opens the copy.

use std::path::{Path, PathBuf};

use crate::copy_dir;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use coordinator::counters::{CallError, CallResult, Counters};
use coordinator::registry::Target;
use counter::participant::{unhex, Participant};
use futures_util::future::{BoxFuture, FutureExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::proto::{Applied, CounterStatus, Counts, LogPage, SnapshotPage, Vote};
use storage::{CounterStore, Item, LogEntry, Seq, TxId};

/// How often each kind of fault hits a call.
#[derive(Clone, Copy, Debug)]
pub struct FaultRates {
    /// The call is lost before the counter sees it.
    pub lost_call: f64,
    /// The counter does it; the answer is lost.
    pub lost_answer: f64,
    /// A PREPARE is answered NO.
    pub no_vote: f64,
    /// The counter called crashes (its directory is copied as a kill would leave it).
    pub counter_crash: f64,
    /// The coordinator making the call crashes.
    pub coordinator_crash: f64,
}

/// One counter of the net.
pub struct Node {
    pub id: String,
    pub url: String,
    /// The directory the running instance uses; `None` while crashed.
    running: Option<(Participant, PathBuf)>,
    /// Where the next start opens: the copy the last crash left.
    next_dir: PathBuf,
    starts: u32,
}

/// Counts of what happened, by kind.
pub type Tally = std::collections::BTreeMap<&'static str, u64>;

pub struct NetState {
    pub nodes: Vec<Node>,
    rng: StdRng,
    rates: FaultRates,
    pub tally: Tally,
    root: PathBuf,
    log_retention: u64,
    /// Set when a call crashed the coordinator: the copy of its directory a kill would leave.
    coordinator_crash: Option<PathBuf>,
    coordinator_dir: PathBuf,
    coordinator_starts: u32,
}

/// The counters, and the coordinator's directory, shared by every coordinator incarnation.
#[derive(Clone)]
pub struct Net(pub Arc<Mutex<NetState>>);

impl Net {
    /// `nodes` counters under `root`, none started yet.
    pub fn new(root: &Path, nodes: usize, seed: u64, rates: FaultRates, log_retention: u64) -> Net {
        let nodes = (0..nodes)
            .map(|i| Node {
                id: String::new(),
                url: format!("sim://counter-{i}"),
                running: None,
                next_dir: root.join(format!("counter-{i}-0")),
                starts: 0,
            })
            .collect();
        Net(Arc::new(Mutex::new(NetState {
            nodes,
            rng: StdRng::seed_from_u64(seed),
            rates,
            tally: Tally::new(),
            root: root.to_owned(),
            log_retention,
            coordinator_crash: None,
            coordinator_dir: root.join("coordinator-0"),
            coordinator_starts: 0,
        })))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts counter `i` on the directory its last crash left (its first one at first). Must run
    /// inside a tokio runtime.
    pub fn start(&self, i: usize) -> Participant {
        let mut net = self.lock();
        let retention = net.log_retention;
        let node = &mut net.nodes[i];
        assert!(node.running.is_none(), "{} is running", node.url);
        let name = node.url.trim_start_matches("sim://").to_owned();
        let store =
            CounterStore::open_named(&node.next_dir, retention, || name).expect("counter opens");
        let participant = Participant::new(store);
        node.id = participant.store().node_id().expect("node id");
        node.running = Some((participant.clone(), node.next_dir.clone()));
        node.starts += 1;
        participant
    }

    /// From now on, faults hit calls at these rates.
    pub fn set_rates(&self, rates: FaultRates) {
        self.lock().rates = rates;
    }

    /// Crashes counter `i` now (see the module doc).
    pub fn crash(&self, i: usize) {
        let mut net = self.lock();
        net.crash_node(i);
    }

    /// A link for a new coordinator incarnation, and the directory it opens: the copy its
    /// predecessor's crash left, or its first directory.
    pub fn coordinator(&self) -> (Link, PathBuf) {
        let mut net = self.lock();
        let dir = net
            .coordinator_crash
            .take()
            .unwrap_or_else(|| net.coordinator_dir.clone());
        net.coordinator_dir = dir.clone();
        net.coordinator_starts += 1;
        let link = Link {
            net: self.clone(),
            alive: Arc::new(AtomicBool::new(true)),
        };
        (link, dir)
    }
}

impl NetState {
    fn crash_node(&mut self, i: usize) {
        let Some((_abandoned, dir)) = self.nodes[i].running.take() else {
            return;
        };
        let copy = self
            .root
            .join(format!("counter-{i}-{}", self.nodes[i].starts));
        copy_dir(&dir, &copy);
        self.nodes[i].next_dir = copy;
        *self.tally.entry("counter crash").or_default() += 1;
    }

    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].running.is_some()
    }

    /// Counter `i`'s running participant, if it runs.
    pub fn participant(&self, i: usize) -> Option<Participant> {
        self.nodes[i].running.as_ref().map(|(p, _)| p.clone())
    }

    fn draw(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p)
    }
}

/// What a call does after its fault draw.
enum Plan {
    Lost,
    AnswerLost(Participant),
    No,
    Do(Participant),
}

/// One coordinator incarnation's view of the counters. Dead once a call crashed it: every later call
/// of the incarnation fails, as calls from a killed process would never arrive.
#[derive(Clone)]
pub struct Link {
    net: Net,
    alive: Arc<AtomicBool>,
}

impl Link {
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    fn plan(&self, to: &Target, kind: &'static str) -> Result<Plan, CallError> {
        if !self.alive() {
            return Err(CallError::Unreachable("the coordinator is dead".into()));
        }
        let mut net = self.net.lock();
        let Some(i) = net.nodes.iter().position(|n| n.url == to.url) else {
            return Err(CallError::Unreachable(format!("no host {}", to.url)));
        };
        let rates = net.rates;
        if net.draw(rates.coordinator_crash) {
            // The coordinator dies as it makes this call: its directory as a kill leaves it.
            let copy = net
                .root
                .join(format!("coordinator-{}", net.coordinator_starts));
            let dir = net.coordinator_dir.clone();
            copy_dir(&dir, &copy);
            net.coordinator_crash = Some(copy);
            self.alive.store(false, Ordering::SeqCst);
            *net.tally.entry("coordinator crash").or_default() += 1;
            return Err(CallError::Unreachable("the coordinator is dead".into()));
        }
        if net.draw(rates.counter_crash) {
            net.crash_node(i);
        }
        let Some((participant, _)) = net.nodes[i].running.clone() else {
            return Err(CallError::Unreachable(format!("{} is down", to.url)));
        };
        if net.nodes[i].id != to.id {
            return Err(CallError::Refused {
                status: 409,
                body: format!("this is node {}, not {}", net.nodes[i].id, to.id),
            });
        }
        let plan = if net.draw(rates.lost_call) {
            *net.tally.entry("lost call").or_default() += 1;
            Plan::Lost
        } else if net.draw(rates.lost_answer) {
            *net.tally.entry("lost answer").or_default() += 1;
            Plan::AnswerLost(participant)
        } else if kind == "prepare" && net.draw(rates.no_vote) {
            *net.tally.entry("no vote").or_default() += 1;
            Plan::No
        } else {
            Plan::Do(participant)
        };
        Ok(plan)
    }

    /// Runs `op` on the counter `to` under the fault plan.
    async fn call<T, F>(&self, to: &Target, kind: &'static str, op: F) -> CallResult<T>
    where
        F: FnOnce(Participant) -> BoxFuture<'static, storage::Result<T>>,
    {
        let (participant, answer_lost) = match self.plan(to, kind)? {
            Plan::Lost => return Err(CallError::Unreachable(format!("injected: {kind} lost"))),
            Plan::No => {
                return Err(CallError::Refused {
                    status: 299,
                    body: "injected NO".into(),
                })
            }
            Plan::AnswerLost(p) => (p, true),
            Plan::Do(p) => (p, false),
        };
        let result = op(participant).await.map_err(|e| CallError::Refused {
            status: 500,
            body: e.to_string(),
        });
        if answer_lost {
            return Err(CallError::Unreachable(format!(
                "injected: answer to {kind} lost"
            )));
        }
        result
    }
}

impl Counters for Link {
    fn prepare_all<'a>(
        &'a self,
        to: &'a [Target],
        txid: TxId,
        items: Vec<Item>,
    ) -> BoxFuture<'a, Vec<CallResult<Vote>>> {
        // All at once, as the HTTP client does. Each call draws its faults when first polled, and
        // `join_all` polls them in order, so the draws follow the seed alone.
        futures_util::future::join_all(to.iter().map(move |t| {
            let items = items.clone();
            async move {
                let vote = self
                    .call(t, "prepare", move |p| {
                        async move { p.prepare(txid, items).await }.boxed()
                    })
                    .await;
                match vote {
                    Err(CallError::Refused { status: 299, .. }) => Ok(Vote::No {
                        reason: "injected".into(),
                    }),
                    other => other,
                }
            }
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
        self.call(to, "commit", move |p| {
            async move { p.commit(txid, seq).await }.boxed()
        })
        .boxed()
    }

    /// Best effort, and sent from a task of its own whenever the runtime gets to it: it draws no
    /// fault, so that the generator's sequence follows the steps alone (a lost ROLLBACK is covered
    /// by presumed abort anyway).
    fn rollback<'a>(&'a self, to: &'a Target, txid: TxId) -> BoxFuture<'a, CallResult<()>> {
        async move {
            let participant = {
                let net = self.net.lock();
                let node = net.nodes.iter().find(|n| n.url == to.url && n.id == to.id);
                node.and_then(|n| n.running.as_ref().map(|(p, _)| p.clone()))
            };
            match participant {
                Some(p) if self.alive() => p.rollback(txid).await.map_err(|e| CallError::Refused {
                    status: 500,
                    body: e.to_string(),
                }),
                _ => Err(CallError::Unreachable("not delivered".into())),
            }
        }
        .boxed()
    }

    fn counts<'a>(
        &'a self,
        to: &'a Target,
        tenants: Vec<String>,
    ) -> BoxFuture<'a, CallResult<Counts>> {
        self.call(to, "counts", move |p| {
            async move { p.counts(&tenants) }.boxed()
        })
        .boxed()
    }

    fn status<'a>(&'a self, to: &'a Target) -> BoxFuture<'a, CallResult<CounterStatus>> {
        self.call(to, "status", |p| async move { p.status() }.boxed())
            .boxed()
    }

    fn log_page<'a>(
        &'a self,
        to: &'a Target,
        from: Seq,
        max_items: usize,
    ) -> BoxFuture<'a, CallResult<LogPage>> {
        self.call(to, "log page", move |p| {
            async move { p.log_page(from, max_items).await }.boxed()
        })
        .boxed()
    }

    fn snapshot_page<'a>(
        &'a self,
        to: &'a Target,
        after: Option<String>,
        max_items: usize,
    ) -> BoxFuture<'a, CallResult<SnapshotPage>> {
        let after = after.map(|a| unhex(&a).expect("our own cursor"));
        self.call(to, "snapshot page", move |p| {
            async move { p.snapshot_page(after, max_items).await }.boxed()
        })
        .boxed()
    }

    fn apply_log<'a>(
        &'a self,
        to: &'a Target,
        entries: Vec<LogEntry>,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        self.call(to, "apply log", move |p| {
            async move { p.apply_log(entries).await }.boxed()
        })
        .boxed()
    }

    fn import<'a>(
        &'a self,
        to: &'a Target,
        items: Vec<Item>,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        self.call(to, "import", move |p| {
            async move { p.import(items).await }.boxed()
        })
        .boxed()
    }

    fn finish_snapshot<'a>(
        &'a self,
        to: &'a Target,
        seq: Seq,
        txid: TxId,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        self.call(to, "finish snapshot", move |p| {
            async move { p.finish_snapshot(seq, txid).await }.boxed()
        })
        .boxed()
    }
}
