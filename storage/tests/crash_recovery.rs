//! Crash survival. Each test re-runs this test binary as a child process that runs one `child_*`
//! helper: it writes, awaits `durable()` for some writes, and dies by `std::process::abort()`, which
//! runs no destructors, so sled gets no chance to flush on drop. The parent then reopens the data and
//! checks that everything made durable survived and that the state is consistent.
//!
//! The `child_*` functions are `#[ignore]`d and do nothing without the environment variable the parent
//! sets, so `cargo test -- --ignored` stays harmless.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{all_items, assert_consistent, commit, item};
use storage::{
    ApplyOutcome, CoordinatorStore, CounterRecord, CounterState, CounterStore, Decision, Error,
    Item, LogEntry, PrepareOutcome, Seq, TxId,
};

/// The child's working directory: data under `db/`, what it wants the parent to know in `report`.
const ROOT_VAR: &str = "STORAGE_CRASH_TEST_ROOT";
const SIGABRT: i32 = 6;

fn child_root() -> Option<PathBuf> {
    std::env::var_os(ROOT_VAR).map(PathBuf::from)
}

fn db(root: &Path) -> PathBuf {
    root.join("db")
}

/// The child reports through a file; the kernel keeps it through the abort.
fn report(root: &Path, text: String) {
    std::fs::write(root.join("report.tmp"), text).unwrap();
    std::fs::rename(root.join("report.tmp"), root.join("report")).unwrap();
}

fn read_report(root: &Path) -> String {
    std::fs::read_to_string(root.join("report")).unwrap()
}

fn child_command(name: &str, root: &Path) -> Command {
    // `ulimit -c 0`: the aborting child must not leave a core file behind.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -c 0; exec "$@""#)
        .arg("sh")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROOT_VAR, root)
        .stdin(Stdio::null());
    cmd
}

/// Runs child helper `name` to its end and checks that it died by its own `abort()`.
fn run_aborting_child(name: &str, root: &Path) {
    let Output {
        status,
        stdout,
        stderr,
    } = child_command(name, root).output().unwrap();
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "child {name} did not abort (status {status:?})\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
}

// ---------------------------------------------------------------------------------------------------
// Counter: everything made durable survives.

fn durable_round_1() -> Vec<Item> {
    vec![
        item("alpha", "a"),
        item("alpha", "b"),
        item("alpha", "a"),
        item("beta", "a"),
    ]
}

fn durable_round_2() -> Vec<Item> {
    vec![item("alpha", "b"), item("alpha", "c"), item("ü/γ", "x")]
}

fn in_doubt_items() -> Vec<Item> {
    vec![item("beta", "z")]
}

#[tokio::test]
#[ignore = "helper run in a child process by counter_durable_writes_survive_abort"]
async fn child_counter_durable() {
    let Some(root) = child_root() else { return };
    let store = CounterStore::open(&db(&root), 0).unwrap();
    commit(&store, 10, 1, &durable_round_1()).await;
    commit(&store, 11, 2, &durable_round_2()).await;
    // In doubt: prepared durably (voted YES), outcome never learned.
    assert_eq!(
        store.record_prepared(12, &in_doubt_items()).unwrap(),
        PrepareOutcome::Recorded
    );
    store.join_cluster("cluster-a").unwrap();
    store.durable().await.unwrap();
    report(&root, store.node_id().unwrap());
    std::process::abort();
}

#[tokio::test]
async fn counter_durable_writes_survive_abort() {
    let root = tempfile::tempdir().unwrap();
    run_aborting_child("child_counter_durable", root.path());
    let node_id = read_report(root.path());

    let store = CounterStore::open(&db(root.path()), 0).unwrap();
    assert_eq!(store.node_id().unwrap(), node_id);
    assert_eq!(store.cluster_id().unwrap().as_deref(), Some("cluster-a"));
    assert!(matches!(
        store.join_cluster("cluster-b"),
        Err(Error::OtherCluster { .. })
    ));
    assert_eq!(store.applied().unwrap(), (2, 11));
    assert_eq!(
        store.prepared_txids().unwrap(),
        vec![12],
        "the in-doubt prepared record was lost"
    );
    assert_eq!(
        store.log_page(1, usize::MAX).unwrap(),
        vec![
            LogEntry {
                seq: 1,
                txid: 10,
                items: durable_round_1()
            },
            LogEntry {
                seq: 2,
                txid: 11,
                items: durable_round_2()
            },
        ]
    );
    let expected: BTreeMap<String, u64> = [
        ("alpha".to_string(), 3),
        ("beta".to_string(), 1),
        ("ü/γ".to_string(), 1),
    ]
    .into();
    assert_eq!(assert_consistent(&store), expected);

    // The in-doubt transaction is resolved from the recovered state: a COMMIT applies it.
    assert_eq!(store.apply_commit(12, 3).unwrap(), ApplyOutcome::Applied);
    assert_eq!(store.count("beta").unwrap(), 2);
    assert!(store.prepared_txids().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------------
// Counter: a crash in the middle of many un-flushed commits leaves a consistent prefix.

const TORN_DURABLE_EACH: Seq = 5;
const TORN_DURABLE_GROUP: Seq = 300;
const TORN_LAST: Seq = 1200;

fn torn_txid(seq: Seq) -> TxId {
    1000 + 3 * seq
}

fn torn_items(seq: Seq) -> Vec<Item> {
    let tenant = ["t0", "t1", "t2"][(seq % 3) as usize];
    let mut items: Vec<Item> = (0..4)
        .map(|k| item(tenant, &format!("i{}", (seq * 7 + k * 13) % 211)))
        .collect();
    items.push(items[0].clone()); // a duplicate inside the batch
    items
}

#[tokio::test]
#[ignore = "helper run in a child process by counter_crash_mid_stream_leaves_a_consistent_prefix"]
async fn child_counter_torn() {
    let Some(root) = child_root() else { return };
    let store = CounterStore::open(&db(&root), 0).unwrap();
    for seq in 1..=TORN_DURABLE_EACH {
        commit(&store, torn_txid(seq), seq, &torn_items(seq)).await;
    }
    for seq in TORN_DURABLE_EACH + 1..=TORN_LAST {
        store
            .record_prepared(torn_txid(seq), &torn_items(seq))
            .unwrap();
        store.apply_commit(torn_txid(seq), seq).unwrap();
        if seq == TORN_DURABLE_GROUP {
            // One flush for all the commits since the last one (group commit).
            store.durable().await.unwrap();
        }
    }
    // And one more prepared, never committed.
    store
        .record_prepared(torn_txid(TORN_LAST + 1), &torn_items(TORN_LAST + 1))
        .unwrap();
    report(&root, String::new());
    std::process::abort();
}

#[tokio::test]
async fn counter_crash_mid_stream_leaves_a_consistent_prefix() {
    let root = tempfile::tempdir().unwrap();
    run_aborting_child("child_counter_torn", root.path());

    let store = CounterStore::open(&db(root.path()), 0).unwrap();
    let (last, txid) = store.applied().unwrap();
    eprintln!("recovered last_applied {last} (durable up to {TORN_DURABLE_GROUP}, written up to {TORN_LAST})");
    assert!(
        (TORN_DURABLE_GROUP..=TORN_LAST).contains(&last),
        "last_applied {last}: durable commits were lost"
    );
    assert_eq!(txid, torn_txid(last));

    // The log holds exactly the commits 1..=last.
    let log = store.log_page(1, usize::MAX).unwrap();
    let expected_log: Vec<LogEntry> = (1..=last)
        .map(|seq| LogEntry {
            seq,
            txid: torn_txid(seq),
            items: torn_items(seq),
        })
        .collect();
    assert!(log == expected_log, "log does not match commits 1..={last}");

    // Items and counts are exactly those of commits 1..=last: nothing half-applied, nothing extra.
    let expected_items: BTreeSet<Item> = (1..=last).flat_map(torn_items).collect();
    let items: BTreeSet<Item> = all_items(&store).into_iter().collect();
    assert!(
        items == expected_items,
        "items differ from commits 1..={last}"
    );
    let mut expected_counts: BTreeMap<String, u64> = BTreeMap::new();
    for it in &expected_items {
        *expected_counts.entry(it.tenant.clone()).or_default() += 1;
    }
    assert_eq!(assert_consistent(&store), expected_counts);

    // No prepared record of an applied transaction is left behind.
    for t in store.prepared_txids().unwrap() {
        assert!(
            t > txid && t <= torn_txid(TORN_LAST + 1),
            "unexpected prepared txid {t} after applied {txid}"
        );
    }

    // The replica carries on from where it recovered.
    let next = last + 1;
    store
        .record_prepared(torn_txid(next), &torn_items(next))
        .unwrap();
    assert_eq!(
        store.apply_commit(torn_txid(next), next).unwrap(),
        ApplyOutcome::Applied
    );
    assert_consistent(&store);
}

// ---------------------------------------------------------------------------------------------------
// Coordinator: decisions, registry and txids survive.

fn participants(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn parse_txids(text: &str) -> Vec<TxId> {
    text.split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect()
}

#[tokio::test]
#[ignore = "helper run in a child process by coordinator_durable_state_survives_abort"]
async fn child_coordinator() {
    let Some(root) = child_root() else { return };
    let store = CoordinatorStore::open(&db(&root)).unwrap();
    let mut txids: Vec<TxId> = (0..5).map(|_| store.next_txid().unwrap()).collect();
    store
        .record_commit(
            txids[0],
            &Decision {
                seq: 1,
                participants: participants(&["n1", "n2"]),
            },
            1,
        )
        .unwrap();
    store
        .record_commit(
            txids[2],
            &Decision {
                seq: 2,
                participants: participants(&["n1"]),
            },
            1,
        )
        .unwrap();
    store.finish_phase2(txids[0]).unwrap();
    store
        .put_counter(
            "n1",
            &CounterRecord {
                url: "http://n1:1".into(),
                state: CounterState::InSync,
            },
        )
        .unwrap();
    store
        .put_counter(
            "n2",
            &CounterRecord {
                url: "http://n2:1".into(),
                state: CounterState::Lagging,
            },
        )
        .unwrap();
    store
        .put_counter(
            "n3",
            &CounterRecord {
                url: "http://n3:1".into(),
                state: CounterState::InSync,
            },
        )
        .unwrap();
    store.remove_counter("n3").unwrap();
    store.durable().await.unwrap();
    // Handed out, never flushed: still never to be reused.
    txids.extend((0..5).map(|_| store.next_txid().unwrap()));
    report(
        &root,
        txids
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" "),
    );
    std::process::abort();
}

#[tokio::test]
async fn coordinator_durable_state_survives_abort() {
    let root = tempfile::tempdir().unwrap();
    run_aborting_child("child_coordinator", root.path());
    let txids = parse_txids(&read_report(root.path()));
    assert_eq!(txids.len(), 10);

    let store = CoordinatorStore::open(&db(root.path())).unwrap();
    let d1 = Decision {
        seq: 1,
        participants: participants(&["n1", "n2"]),
    };
    let d2 = Decision {
        seq: 2,
        participants: participants(&["n1"]),
    };
    assert_eq!(store.decision(txids[0]).unwrap(), Some(d1));
    assert_eq!(store.decision(txids[2]).unwrap(), Some(d2.clone()));
    assert_eq!(store.decision(txids[1]).unwrap(), None);
    assert_eq!(store.unfinished().unwrap(), vec![(txids[2], d2)]);
    assert_eq!(store.committed_seq().unwrap(), 2);
    assert_eq!(
        store.counters().unwrap(),
        vec![
            (
                "n1".to_string(),
                CounterRecord {
                    url: "http://n1:1".into(),
                    state: CounterState::InSync
                }
            ),
            (
                "n2".to_string(),
                CounterRecord {
                    url: "http://n2:1".into(),
                    state: CounterState::Lagging
                }
            ),
        ]
    );
    let max = *txids.iter().max().unwrap();
    let next = store.next_txid().unwrap();
    assert!(
        next > max,
        "txid {next} handed out again after a crash (max before: {max})"
    );
}

#[tokio::test]
#[ignore = "helper run in a child process by coordinator_txids_are_not_reused_after_an_early_crash"]
async fn child_coordinator_fresh() {
    let Some(root) = child_root() else { return };
    let store = CoordinatorStore::open(&db(&root)).unwrap();
    let txids: Vec<TxId> = (0..3).map(|_| store.next_txid().unwrap()).collect();
    let cluster_id = store.cluster_id().unwrap();
    report(
        &root,
        format!(
            "{cluster_id}\n{}",
            txids
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    std::process::abort();
}

/// A coordinator that dies right after creating its database, before anything else was flushed,
/// may already have sent PREPAREs under the txids it handed out, and told counters its cluster id.
#[tokio::test]
async fn coordinator_txids_are_not_reused_after_an_early_crash() {
    let root = tempfile::tempdir().unwrap();
    run_aborting_child("child_coordinator_fresh", root.path());
    let text = read_report(root.path());
    let (cluster_id, txids) = text.split_once('\n').unwrap();
    let txids = parse_txids(txids);
    assert_eq!(txids.len(), 3);

    let store = CoordinatorStore::open(&db(root.path())).unwrap();
    assert_eq!(
        store.cluster_id().unwrap(),
        cluster_id,
        "the cluster id changed across a crash"
    );
    let max = *txids.iter().max().unwrap();
    let next = store.next_txid().unwrap();
    assert!(
        next > max,
        "txid {next} handed out again after a crash (max before: {max})"
    );
}

// ---------------------------------------------------------------------------------------------------
// The lock of a live process.

/// Kills the child when the test ends, passing or failing.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
#[ignore = "helper run in a child process by a_directory_held_by_a_live_process_is_locked"]
async fn child_hold_lock() {
    let Some(root) = child_root() else { return };
    let counter = CounterStore::open(&root.join("counter"), 0).unwrap();
    let coordinator = CoordinatorStore::open(&root.join("coordinator")).unwrap();
    report(&root, counter.node_id().unwrap());
    // Held until the parent kills this process; abort in case it never does.
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(coordinator);
    std::process::abort();
}

#[tokio::test]
async fn a_directory_held_by_a_live_process_is_locked() {
    let root = tempfile::tempdir().unwrap();
    let mut cmd = child_command("child_hold_lock", root.path());
    let mut child = KillOnDrop(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !root.path().join("report").exists() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("lock holder exited early: {status:?}");
        }
        assert!(Instant::now() < deadline, "lock holder did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let node_id = read_report(root.path());

    match CounterStore::open(&root.path().join("counter"), 0) {
        Err(Error::Locked(_)) => {}
        Err(e) => panic!("expected Error::Locked, got {e:?}"),
        Ok(_) => panic!("opened a directory held by a live process"),
    }
    match CoordinatorStore::open(&root.path().join("coordinator")) {
        Err(Error::Locked(_)) => {}
        Err(e) => panic!("expected Error::Locked, got {e:?}"),
        Ok(_) => panic!("opened a directory held by a live process"),
    }

    // The kernel releases the lock when the holder dies.
    drop(child);
    let store = CounterStore::open(&root.path().join("counter"), 0).unwrap();
    assert_eq!(store.node_id().unwrap(), node_id);
    CoordinatorStore::open(&root.path().join("coordinator")).unwrap();
}
