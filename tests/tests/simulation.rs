//! Simulation of the protocol without a socket: the coordinator's real round, catch-up, recovery and
//! read path (`coordinator` crate) against the real counter participants (`counter` crate) over sled
//! directories, connected by the in-process [`Link`] of `dc_tests::sim`, which injects faults into
//! every call: lost calls, lost answers, NO votes, counters crashing at any call, the coordinator
//! crashing at any call. Crashes leave what a killed process leaves (see `dc_tests::sim`).
//!
//! One seeded generator drives everything, one step at a time: writes, reads, health checks,
//! counter restarts, coordinator restarts. Each run prints its seed; `SEED=<n>` replays the same
//! schedule of steps and faults. At the end the faults stop, everything heals, and the history is
//! checked (no lost write, no phantom, atomic batches, fresh and linearizable reads) and every
//! counter must hold the same counts at the committed seq. `SIM_STEPS` sets the length.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use coordinator::counters::{Counters, SharedCounters};
use coordinator::reads::Reader;
use coordinator::registry::Registry;
use coordinator::sync::Syncer;
use coordinator::txn::{RoundError, TxnManager};
use dc_tests::history::{History, Outcome};
use dc_tests::sim::{FaultRates, Link, Net};
use futures_util::future::join_all;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::proto::{MemberState, Outcome as TxOutcome};
use storage::{CoordinatorStore, CounterState, Item};

const COUNTERS: usize = 3;
const HOT: usize = 3;

const FAULTS: FaultRates = FaultRates {
    lost_call: 0.01,
    lost_answer: 0.01,
    no_vote: 0.01,
    counter_crash: 0.0005,
    coordinator_crash: 0.001,
};

const NO_FAULTS: FaultRates = FaultRates {
    lost_call: 0.0,
    lost_answer: 0.0,
    no_vote: 0.0,
    counter_crash: 0.0,
    coordinator_crash: 0.0,
};

/// One coordinator incarnation.
struct Coordinator {
    link: Link,
    txn: Arc<TxnManager>,
    registry: Arc<Registry>,
    syncer: Syncer,
    reader: Reader,
}

impl Coordinator {
    /// A coordinator on what its predecessor's crash left, recovered; again if it dies recovering.
    async fn start(net: &Net) -> Coordinator {
        loop {
            let (link, dir) = net.coordinator();
            let store = CoordinatorStore::open(&dir).expect("coordinator store");
            let registry = Arc::new(Registry::load(store.clone()).expect("registry"));
            let client: SharedCounters = Arc::new(link.clone());
            let txn = TxnManager::start(store, registry.clone(), client.clone(), 1, 10_000)
                .expect("transaction manager");
            if txn.recover().await.is_err() || !link.alive() {
                continue;
            }
            let syncer = Syncer {
                registry: registry.clone(),
                txn: txn.clone(),
                client: client.clone(),
                page_items: 7,
                // No budget: time is not what this test checks.
                lock_budget: std::time::Duration::MAX,
            };
            let reader = Reader::new(
                registry.clone(),
                txn.clone(),
                client,
                std::time::Duration::from_millis(50),
            );
            return Coordinator {
                link,
                txn,
                registry,
                syncer,
                reader,
            };
        }
    }

    /// What a counter's registrar does: resolve its in-doubt transactions, register, and the
    /// coordinator catches it up.
    async fn register(&self, net: &Net, i: usize) {
        let (participant, id, url) = {
            let state = net.lock();
            let node = &state.nodes[i];
            let Some(p) = state.participant(i) else {
                return;
            };
            (p, node.id.clone(), node.url.clone())
        };
        for txid in participant.store().prepared_txids().expect("prepared") {
            match self.txn.outcome(txid) {
                Ok(TxOutcome::Committed { seq }) => {
                    let _ = participant.resolve_committed(txid, seq).await;
                }
                Ok(TxOutcome::Aborted) => {
                    let _ = participant.rollback(txid).await;
                }
                _ => {}
            }
        }
        self.registry.register(&id, &url).expect("register");
        if self.registry.state(&id) == Some(CounterState::Lagging) {
            let _ = self.syncer.run(&id).await;
        }
    }

    /// One health check of every counter, as `coordinator::health` does (without removals).
    async fn health(&self) {
        for target in self.registry.all() {
            match self.link.status(&target).await {
                Ok(status) => {
                    self.registry.check_passed(&target.id);
                    self.registry.note_applied(&target.id, status.last_applied);
                    if self.registry.state(&target.id) == Some(CounterState::Lagging) {
                        let _ = self.syncer.run(&target.id).await;
                    }
                }
                Err(_) => {
                    self.registry.check_failed(&target.id);
                    let _ = self
                        .registry
                        .mark_lagging(&target.id, "health check failed");
                }
            }
        }
    }
}

fn outcome(result: &Result<u64, RoundError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        // As the HTTP mapping answers them: 500 for both, which a client cannot tell apart.
        Err(RoundError::OutcomeUnknown(_) | RoundError::Storage(_)) => Outcome::Unknown,
        // 503 and 507: nothing was written.
        Err(RoundError::Unavailable(_) | RoundError::InsufficientStorage(_)) => Outcome::Failed,
    }
}

#[tokio::test(start_paused = true)]
async fn thousands_of_rounds_under_injected_faults_keep_every_invariant() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let steps: usize = std::env::var("SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    eprintln!("simulation: seed {seed}, {steps} steps (replay with SEED={seed})");
    let began = Instant::now();

    let dir = tempfile::tempdir().unwrap();
    // A short log: some catch-ups need a snapshot.
    let net = Net::new(dir.path(), COUNTERS, seed, FAULTS, 40);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let history = History::new();
    let mut coordinator = Coordinator::start(&net).await;
    for i in 0..COUNTERS {
        net.start(i);
        coordinator.register(&net, i).await;
    }

    let mut next_id = 0u64;
    let mut steps_by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for _ in 0..steps {
        let roll = rng.random_range(0..100);
        let kind = match roll {
            0..=54 => {
                // Writes, one or a few at once (so that they share a round, or overlap the previous
                // round's phase 2): each to a hot tenant, or a batch of a tenant of its own.
                let concurrent = if rng.random_bool(0.3) {
                    rng.random_range(2..5)
                } else {
                    1
                };
                let mut batches = Vec::new();
                for _ in 0..concurrent {
                    let size = rng.random_range(1..5);
                    let tenant = if rng.random_bool(0.5) {
                        format!("hot-{}", rng.random_range(0..HOT))
                    } else {
                        format!("batch-{next_id}")
                    };
                    let items: Vec<Item> = (0..size)
                        .map(|k| Item {
                            id: format!("{next_id}-{k}"),
                            tenant: tenant.clone(),
                        })
                        .collect();
                    next_id += 1;
                    batches.push(items);
                }
                let invoked = history.now();
                let results = join_all(
                    batches
                        .iter()
                        .map(|items| coordinator.txn.submit(items.clone())),
                )
                .await;
                for (items, result) in batches.into_iter().zip(results) {
                    // A dead coordinator's answer never reaches its client.
                    let seen = if coordinator.link.alive() {
                        outcome(&result)
                    } else {
                        Outcome::Unknown
                    };
                    let pairs: Vec<(String, String)> =
                        items.into_iter().map(|i| (i.id, i.tenant)).collect();
                    history.write(invoked, &pairs, seen);
                }
                "write"
            }
            55..=74 => {
                let tenant = format!("hot-{}", rng.random_range(0..HOT));
                let invoked = history.now();
                if let Ok(count) = coordinator.reader.count(&tenant).await {
                    if coordinator.link.alive() {
                        history.read(invoked, &tenant, count);
                    }
                }
                "read"
            }
            75..=87 => {
                coordinator.health().await;
                "health check"
            }
            88..=89 => {
                let i = rng.random_range(0..COUNTERS);
                net.crash(i);
                "counter kill"
            }
            _ => {
                let down: Vec<usize> = (0..COUNTERS).filter(|&i| !net.lock().running(i)).collect();
                if down.is_empty() {
                    continue;
                }
                let i = down[rng.random_range(0..down.len())];
                net.start(i);
                coordinator.register(&net, i).await;
                "counter restart"
            }
        };
        *steps_by_kind.entry(kind).or_default() += 1;
        if !coordinator.link.alive() {
            coordinator = Coordinator::start(&net).await;
            for i in 0..COUNTERS {
                coordinator.register(&net, i).await;
            }
        }
    }

    // Heal: no more faults, every counter up, registered and caught up.
    net.set_rates(NO_FAULTS);
    for i in 0..COUNTERS {
        if !net.lock().running(i) {
            net.start(i);
        }
        coordinator.register(&net, i).await;
    }
    for _ in 0..20 {
        let view = coordinator.registry.view(String::new(), 0);
        if view.counters.len() == COUNTERS
            && view.counters.iter().all(|c| c.state == MemberState::InSync)
        {
            break;
        }
        coordinator.health().await;
    }
    let committed = coordinator.txn.store().committed_seq().unwrap();
    let view = coordinator.registry.view(String::new(), committed);
    assert!(
        view.counters.iter().all(|c| c.state == MemberState::InSync),
        "seed {seed}: not healed: {view:?}"
    );

    // Every counter at the committed seq with the same counts; the history against them.
    let tenants: Vec<String> = history.tenants().into_iter().collect();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..COUNTERS {
        let participant = net.lock().participant(i).expect("running");
        assert_eq!(
            participant.store().last_applied().unwrap(),
            committed,
            "seed {seed}: counter {i}"
        );
        for t in &tenants {
            let n = participant.store().count(t).unwrap();
            let agreed = *counts.entry(t.clone()).or_insert(n);
            assert_eq!(n, agreed, "seed {seed}: counter {i} counts {n} for {t}");
        }
    }
    let report = history.check(&counts);
    let faults = net.lock().tally.clone();
    eprintln!(
        "seed {seed}: {committed} rounds committed in {:.1?}; steps {steps_by_kind:?}; faults {faults:?}; {report}",
        began.elapsed()
    );
    assert!(report.ok(), "seed {seed}: {report}");
    assert!(committed > steps as u64 / 4, "seed {seed}: too few rounds");
}
