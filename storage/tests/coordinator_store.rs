//! CoordinatorStore: transaction ids, COMMIT decisions and the registration table.

mod common;

use common::{reopen, runtime};
use storage::{CoordinatorStore, CounterRecord, CounterState, Decision};
use tempfile::TempDir;

fn open() -> (TempDir, CoordinatorStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = CoordinatorStore::open(dir.path()).unwrap();
    (dir, store)
}

fn decision(seq: u64, participants: &[&str]) -> Decision {
    Decision {
        seq,
        participants: participants.iter().map(|p| p.to_string()).collect(),
    }
}

fn record(url: &str, state: CounterState) -> CounterRecord {
    CounterRecord {
        url: url.into(),
        state,
    }
}

#[tokio::test]
async fn txids_are_positive_and_strictly_increasing() {
    let (_dir, store) = open();
    let ids: Vec<u64> = (0..1000).map(|_| store.next_txid().unwrap()).collect();
    assert!(ids[0] >= 1, "txid 0 means 'none' in CounterStore::applied");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "txids not strictly increasing"
    );
}

#[tokio::test]
async fn commit_decisions_are_logged_and_finished() {
    let (_dir, store) = open();
    assert_eq!(store.committed_seq().unwrap(), 0);
    assert!(store.unfinished().unwrap().is_empty());
    assert_eq!(store.decision(1).unwrap(), None);

    let d1 = decision(1, &["n1", "n2"]);
    let d2 = decision(2, &["n2"]);
    let d3 = decision(3, &[]);
    // Txids 255 < 256 < 1000 must come back in numeric order.
    store.record_commit(256, &d1, 1).unwrap();
    store.record_commit(1000, &d3, 1).unwrap();
    store.record_commit(255, &d2, 1).unwrap();
    store.durable().await.unwrap();

    assert_eq!(store.decision(256).unwrap(), Some(d1.clone()));
    assert_eq!(store.decision(255).unwrap(), Some(d2.clone()));
    assert_eq!(store.decision(257).unwrap(), None, "no record means abort");
    assert_eq!(
        store.unfinished().unwrap(),
        vec![(255, d2.clone()), (256, d1.clone()), (1000, d3.clone())]
    );
    // committed_seq is the seq of the last decision logged.
    assert_eq!(store.committed_seq().unwrap(), 2);

    store.finish_phase2(256).unwrap();
    store.finish_phase2(256).unwrap(); // idempotent
    store.finish_phase2(12345).unwrap(); // unknown: harmless
    assert_eq!(store.unfinished().unwrap(), vec![(255, d2), (1000, d3)]);
    // The decision itself stays: a late in-doubt query still learns COMMIT.
    assert_eq!(store.decision(256).unwrap(), Some(d1));
}

#[tokio::test]
async fn registry_put_update_remove() {
    let (_dir, store) = open();
    assert!(store.counters().unwrap().is_empty());
    store
        .put_counter("b", &record("http://b:1", CounterState::InSync))
        .unwrap();
    store
        .put_counter("a", &record("http://a:1", CounterState::InSync))
        .unwrap();
    store
        .put_counter("ü-node", &record("http://[::1]:9", CounterState::Lagging))
        .unwrap();
    store.durable().await.unwrap();
    assert_eq!(
        store.counters().unwrap(),
        vec![
            ("a".to_string(), record("http://a:1", CounterState::InSync)),
            ("b".to_string(), record("http://b:1", CounterState::InSync)),
            (
                "ü-node".to_string(),
                record("http://[::1]:9", CounterState::Lagging)
            ),
        ]
    );
    // Update in place (marking lagging, new URL).
    store
        .put_counter("a", &record("http://a:2", CounterState::Lagging))
        .unwrap();
    store.remove_counter("b").unwrap();
    store.remove_counter("never-registered").unwrap();
    assert_eq!(
        store.counters().unwrap(),
        vec![
            ("a".to_string(), record("http://a:2", CounterState::Lagging)),
            (
                "ü-node".to_string(),
                record("http://[::1]:9", CounterState::Lagging)
            ),
        ]
    );
}

#[test]
fn state_and_txids_survive_a_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (before, cluster_id) = runtime().block_on(async {
        let store = CoordinatorStore::open(dir.path()).unwrap();
        let cluster_id = store.cluster_id().unwrap();
        let other_id = CoordinatorStore::open(other.path())
            .unwrap()
            .cluster_id()
            .unwrap();
        assert_ne!(cluster_id, other_id, "two clusters got the same id");
        let ids: Vec<u64> = (0..10).map(|_| store.next_txid().unwrap()).collect();
        store
            .record_commit(ids[3], &decision(1, &["n1"]), 1)
            .unwrap();
        store
            .put_counter("n1", &record("http://n1", CounterState::InSync))
            .unwrap();
        store.durable().await.unwrap();
        (ids, cluster_id)
    });
    for round in 0..2 {
        runtime().block_on(async {
            let store = reopen(|| CoordinatorStore::open(dir.path())).unwrap();
            assert_eq!(store.cluster_id().unwrap(), cluster_id);
            assert_eq!(
                store.decision(before[3]).unwrap(),
                Some(decision(1, &["n1"]))
            );
            assert_eq!(
                store.unfinished().unwrap(),
                vec![(before[3], decision(1, &["n1"]))]
            );
            assert_eq!(store.committed_seq().unwrap(), 1);
            assert_eq!(
                store.counters().unwrap(),
                vec![("n1".into(), record("http://n1", CounterState::InSync))]
            );
            let next = store.next_txid().unwrap();
            assert!(
                next > *before.last().unwrap(),
                "round {round}: txid {next} reused after reopen"
            );
        });
    }
}

#[tokio::test]
async fn decisions_are_pruned_by_seq_but_never_while_unfinished() {
    let (_dir, store) = open();
    let txids: Vec<u64> = (0..10).map(|_| store.next_txid().unwrap()).collect();
    for (i, &txid) in txids.iter().enumerate() {
        let seq = i as u64 + 1;
        store
            .record_commit(txid, &decision(seq, &["n1"]), 10 * seq)
            .unwrap();
    }
    for &txid in &txids[..8] {
        store.finish_phase2(txid).unwrap();
    }
    assert_eq!(store.decisions_kept(), 10);
    assert_eq!(store.round_items(txids[9]).unwrap(), Some(100));

    assert_eq!(
        store.prune_decisions(5, 2).unwrap(),
        2,
        "at most `max` at once"
    );
    assert_eq!(store.prune_decisions(5, 100).unwrap(), 3);
    assert_eq!(store.decisions_kept(), 5);
    assert_eq!(store.decision(txids[2]).unwrap(), None);
    assert_eq!(
        store.decision(txids[5]).unwrap(),
        Some(decision(6, &["n1"]))
    );

    // Seqs 9 and 10 are unfinished: recovery still needs them.
    assert_eq!(store.prune_decisions(10, 100).unwrap(), 3);
    assert_eq!(store.decisions_kept(), 2);
    assert_eq!(
        store.unfinished().unwrap(),
        vec![
            (txids[8], decision(9, &["n1"])),
            (txids[9], decision(10, &["n1"]))
        ]
    );
    assert_eq!(store.committed_seq().unwrap(), 10);
    store.finish_phase2(txids[8]).unwrap();
    assert_eq!(store.prune_decisions(10, 100).unwrap(), 1);
    assert_eq!(store.prune_decisions(10, 100).unwrap(), 0);
    assert_eq!(store.decisions_kept(), 1);
}
