//! The read path without a socket: the real reader, batcher, registry and store, and counters
//! modelled in memory whose calls can be held in flight, so that the tests decide which reads arrive
//! while a call is out.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::{BoxFuture, FutureExt};
use storage::proto::{Applied, CounterStatus, Counts, LogPage, SnapshotPage, Vote};
use storage::{CoordinatorStore, CounterState, Item, LogEntry, TxId};
use tokio::sync::Semaphore;

use super::batch::Count;
use super::*;
use crate::counters::{CallError, CallResult, Counters};
use crate::registry::Target;

/// Counters in memory: a tenant's count is its length; each counter answers with the
/// `last_applied` set for it, or fails. A counter that is held answers a call only once the test
/// releases it.
#[derive(Default)]
struct Fake {
    /// Every counts call: the counter's id and the tenants asked.
    calls: Mutex<Vec<(String, Vec<String>)>>,
    last_applied: Mutex<HashMap<String, Seq>>,
    failing: Mutex<Vec<String>>,
    /// Counters whose calls wait for a permit of their semaphore.
    held: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Fake {
    fn hold(&self, id: &str) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        self.held.lock().unwrap().insert(id.into(), gate.clone());
        gate
    }

    fn calls_to(&self, id: &str) -> Vec<Vec<String>> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(to, _)| to == id)
            .map(|(_, tenants)| tenants.clone())
            .collect()
    }
}

fn unused<T>() -> BoxFuture<'static, CallResult<T>> {
    async { Err(CallError::Unreachable("not used by reads".into())) }.boxed()
}

impl Counters for Fake {
    fn counts<'a>(
        &'a self,
        to: &'a Target,
        tenants: Vec<String>,
    ) -> BoxFuture<'a, CallResult<Counts>> {
        async move {
            self.calls
                .lock()
                .unwrap()
                .push((to.id.clone(), tenants.clone()));
            let gate = self.held.lock().unwrap().get(&to.id).cloned();
            if let Some(gate) = gate {
                gate.acquire().await.unwrap().forget();
            }
            if self.failing.lock().unwrap().contains(&to.id) {
                return Err(CallError::Unreachable("injected: counter down".into()));
            }
            Ok(Counts {
                last_applied: self.last_applied.lock().unwrap()[&to.id],
                counts: tenants.iter().map(|t| t.len() as u64).collect(),
            })
        }
        .boxed()
    }

    fn prepare_all<'a>(
        &'a self,
        to: &'a [Target],
        _: TxId,
        _: Vec<Item>,
    ) -> BoxFuture<'a, Vec<CallResult<Vote>>> {
        async move {
            to.iter()
                .map(|_| {
                    Ok(Vote::No {
                        reason: "unused".into(),
                    })
                })
                .collect()
        }
        .boxed()
    }

    fn commit<'a>(
        &'a self,
        _: &'a Target,
        _: TxId,
        _: Seq,
        _: usize,
    ) -> BoxFuture<'a, CallResult<Applied>> {
        unused()
    }

    fn rollback<'a>(&'a self, _: &'a Target, _: TxId) -> BoxFuture<'a, CallResult<()>> {
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

struct Setup {
    _dir: tempfile::TempDir,
    fake: Arc<Fake>,
    registry: Arc<Registry>,
    reader: Reader,
}

/// A reader over in-sync counters `ids`, each known to have applied, and answering, `applied`.
fn setup(ids: &[&str], applied: Seq) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = CoordinatorStore::open(dir.path()).unwrap();
    let registry = Arc::new(Registry::load(store.clone()).unwrap());
    let fake = Arc::new(Fake::default());
    for id in ids {
        registry.register(id, &format!("http://{id}")).unwrap();
        registry.promote(id, applied).unwrap();
        fake.last_applied
            .lock()
            .unwrap()
            .insert(id.to_string(), applied);
    }
    let client: SharedCounters = fake.clone();
    let txn = TxnManager::start(store, registry.clone(), client.clone(), 1, 10_000).unwrap();
    let reader = Reader::new(registry.clone(), txn, client, Duration::from_millis(100));
    Setup {
        _dir: dir,
        fake,
        registry,
        reader,
    }
}

fn target(id: &str) -> Target {
    Target {
        id: id.into(),
        url: format!("http://{id}"),
    }
}

/// Lets the runtime run until `n` reads wait for counter `to`'s next call.
async fn until_waiting(batcher: &Batcher, to: &Target, n: usize) {
    while batcher.waiting(to) < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_read_goes_at_once_when_no_call_is_in_flight() {
    let s = setup(&["c1", "c2"], 0);
    let began = tokio::time::Instant::now();
    for tenant in ["a", "bb", "ccc"] {
        assert_eq!(s.reader.count(tenant).await.unwrap(), tenant.len() as u64);
    }
    // One call per read, each of its own tenant, and no timer ran (the clock is paused: any wait
    // would have advanced it).
    let calls: Vec<Vec<String>> = s
        .fake
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, t)| t.clone())
        .collect();
    assert_eq!(calls, [["a"], ["bb"], ["ccc"]]);
    assert_eq!(tokio::time::Instant::now(), began);

    // A call held in flight to one counter does not delay a read to another.
    let gate = s.fake.hold("c1");
    let before = s.fake.calls_to("c1").len();
    let batcher = s.reader.batcher.clone();
    let held = tokio::spawn(async move { batcher.count(&target("c1"), "held").await });
    while s.fake.calls_to("c1").len() == before {
        tokio::task::yield_now().await;
    }
    let other = s.reader.batcher.count(&target("c2"), "free").await.unwrap();
    assert_eq!(
        other,
        Count {
            count: 4,
            last_applied: 0
        }
    );
    assert!(!held.is_finished());
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().unwrap().count, 4);
}

#[tokio::test]
async fn reads_arriving_during_a_call_go_as_one_bounded_call_each_tenant_once() {
    let s = setup(&["c1"], 7);
    let to = target("c1");
    let gate = s.fake.hold("c1");
    let first = {
        let batcher = s.reader.batcher.clone();
        let to = to.clone();
        tokio::spawn(async move { batcher.count(&to, "first").await })
    };
    while s.fake.calls_to("c1").is_empty() {
        tokio::task::yield_now().await;
    }
    // 600 reads of 300 tenants (each tenant twice, one after the other) arrive while it is out.
    let reads: Vec<_> = (0..600)
        .map(|i| {
            let batcher = s.reader.batcher.clone();
            let to = to.clone();
            let tenant = "t".repeat(1 + i / 2);
            tokio::spawn(async move { (tenant.len(), batcher.count(&to, &tenant).await) })
        })
        .collect();
    until_waiting(&s.reader.batcher, &to, 600).await;
    assert_eq!(
        s.fake.calls_to("c1").len(),
        1,
        "nothing sent while the call is out"
    );
    gate.add_permits(1000);
    assert_eq!(first.await.unwrap().unwrap().count, 5);
    for read in reads {
        let (len, answer) = read.await.unwrap();
        assert_eq!(
            answer.unwrap(),
            Count {
                count: len as u64,
                last_applied: 7
            }
        );
    }
    // The first call, then the 600 waiting reads in batches of at most 256 reads: 128 tenants each,
    // since a tenant asked twice in one batch is sent once.
    let calls = s.fake.calls_to("c1");
    let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 128, 128, 44]);
    for call in &calls {
        let mut unique = call.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), call.len(), "a tenant sent twice in one call");
    }
    assert_eq!(s.reader.batcher.waiting(&to), 0);
}

#[tokio::test(start_paused = true)]
async fn a_batch_serves_only_the_reads_whose_required_seq_it_reached() {
    // c1 is known to have applied 5 but answers 4 (it lost a commit in a crash, say).
    let s = setup(&["c1"], 5);
    s.fake.last_applied.lock().unwrap().insert("c1".into(), 4);
    let gate = s.fake.hold("c1");
    let read = |tenant: &'static str, required: Seq| {
        let reader = s.reader.clone();
        tokio::spawn(async move { reader.count_at(tenant, required).await })
    };
    let first = read("a", 0);
    while s.fake.calls_to("c1").is_empty() {
        tokio::task::yield_now().await;
    }
    let old_enough = read("bb", 4);
    let too_new = read("ccc", 5);
    until_waiting(&s.reader.batcher, &target("c1"), 2).await;
    gate.add_permits(10);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(old_enough.await.unwrap().unwrap(), 2);
    // Same batch, answered at 4: not served, and no other counter has applied 5.
    assert!(matches!(
        too_new.await.unwrap(),
        Err(ApiError::Unavailable(_))
    ));
    assert_eq!(s.fake.calls_to("c1"), [vec!["a"], vec!["bb", "ccc"]]);
    assert_eq!(s.registry.state("c1"), Some(CounterState::Lagging));
}

#[tokio::test]
async fn a_failed_call_fails_over_every_read_in_it_and_behind_it() {
    let s = setup(&["c1", "c2"], 3);
    s.fake.failing.lock().unwrap().push("c1".into());
    let gate = s.fake.hold("c1");
    // Reads rotate among the counters: about half try c1 first, and wait for it.
    let reads: Vec<_> = (1..=10)
        .map(|i| {
            let reader = s.reader.clone();
            tokio::spawn(async move { (i, reader.count(&"x".repeat(i)).await) })
        })
        .collect();
    until_waiting(&s.reader.batcher, &target("c1"), 4).await;
    gate.add_permits(10);
    for read in reads {
        let (i, answer) = read.await.unwrap();
        assert_eq!(answer.unwrap(), i as u64);
    }
    // One call reached c1 and failed: every read in it and behind it went to c2 at once.
    assert_eq!(s.fake.calls_to("c1").len(), 1);
    assert_eq!(s.registry.state("c1"), Some(CounterState::Lagging));
    assert_eq!(s.registry.state("c2"), Some(CounterState::InSync));
}

#[tokio::test]
async fn a_read_given_up_mid_call_passes_the_reads_behind_it_on() {
    let s = setup(&["c1"], 2);
    let to = target("c1");
    let gate = s.fake.hold("c1");
    // The first read makes the call itself; its client gives up while the call is out.
    let first = {
        let batcher = s.reader.batcher.clone();
        let to = to.clone();
        tokio::spawn(async move { batcher.count(&to, "gone").await })
    };
    while s.fake.calls_to("c1").is_empty() {
        tokio::task::yield_now().await;
    }
    let behind: Vec<_> = ["a", "bb", "ccc"]
        .into_iter()
        .map(|tenant| {
            let batcher = s.reader.batcher.clone();
            let to = to.clone();
            tokio::spawn(async move { batcher.count(&to, tenant).await })
        })
        .collect();
    until_waiting(&s.reader.batcher, &to, 3).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // The reads behind it went out as the next call at once, without waiting for another read.
    let passed_on = async {
        while s.fake.calls_to("c1").len() < 2 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), passed_on)
        .await
        .expect("the reads behind the abandoned call were left waiting");
    gate.add_permits(10);
    for (read, count) in behind.into_iter().zip([1, 2, 3]) {
        assert_eq!(
            read.await.unwrap().unwrap(),
            Count {
                count,
                last_applied: 2
            }
        );
    }
    assert_eq!(
        s.fake.calls_to("c1"),
        [vec!["gone"], vec!["a", "bb", "ccc"]]
    );
    assert_eq!(s.reader.batcher.waiting(&to), 0);
}
