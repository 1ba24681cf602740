//! A store whose files sled cannot read must fail to open, never start empty: an empty replica would
//! get a new node id and be synced from scratch, and an empty coordinator would forget its COMMIT
//! decisions (presumed abort for committed transactions) and hand out old txids again.

mod common;

use std::path::Path;

use common::{commit, item, reopen, runtime};
use storage::{CoordinatorStore, CounterStore, Decision, Error};

/// Deterministic noise (xorshift), so a failure reproduces.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn overwrite_with_noise(file: &Path, seed: u64) {
    let len = std::fs::metadata(file).unwrap().len() as usize;
    assert!(len > 0, "{} is empty", file.display());
    std::fs::write(file, noise(len, seed)).unwrap();
}

/// A counter directory holding one durable commit, closed cleanly.
fn counter_with_data(dir: &Path) {
    runtime().block_on(async {
        let store = CounterStore::open(dir, 0).unwrap();
        commit(&store, 1, 1, &[item("t", "a")]).await;
    });
}

fn coordinator_with_data(dir: &Path) {
    runtime().block_on(async {
        let store = CoordinatorStore::open(dir).unwrap();
        let txid = store.next_txid().unwrap();
        store
            .record_commit(
                txid,
                &Decision {
                    seq: 1,
                    participants: vec!["n1".into()],
                },
                1,
            )
            .unwrap();
        store.durable().await.unwrap();
    });
}

fn assert_counter_refuses(dir: &Path, what: &str) {
    runtime().block_on(async {
        match reopen(|| CounterStore::open(dir, 0)) {
            Err(Error::Locked(_)) => panic!("{what}: reported as locked"),
            Err(e) => eprintln!("{what}: {e}"),
            Ok(store) => panic!(
                "{what}: opened anyway (applied {:?}, count {:?}, node id {:?})",
                store.applied(),
                store.count("t"),
                store.node_id()
            ),
        }
    });
}

fn assert_coordinator_refuses(dir: &Path, what: &str) {
    runtime().block_on(async {
        match reopen(|| CoordinatorStore::open(dir)) {
            Err(Error::Locked(_)) => panic!("{what}: reported as locked"),
            Err(e) => eprintln!("{what}: {e}"),
            Ok(store) => panic!(
                "{what}: opened anyway (committed seq {:?})",
                store.committed_seq()
            ),
        }
    });
}

#[test]
fn garbage_config_file_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    counter_with_data(dir.path());
    overwrite_with_noise(&dir.path().join("conf"), 7);
    assert_counter_refuses(dir.path(), "counter with a garbage conf");

    let dir = tempfile::tempdir().unwrap();
    coordinator_with_data(dir.path());
    overwrite_with_noise(&dir.path().join("conf"), 8);
    assert_coordinator_refuses(dir.path(), "coordinator with a garbage conf");
}

#[test]
fn garbage_database_file_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    counter_with_data(dir.path());
    overwrite_with_noise(&dir.path().join("db"), 9);
    assert_counter_refuses(dir.path(), "counter with a garbage db file");
    // Refusing changes nothing: it keeps refusing.
    assert_counter_refuses(dir.path(), "counter with a garbage db file, second open");

    let dir = tempfile::tempdir().unwrap();
    coordinator_with_data(dir.path());
    overwrite_with_noise(&dir.path().join("db"), 10);
    assert_coordinator_refuses(dir.path(), "coordinator with a garbage db file");
}

#[test]
fn zeroed_or_emptied_database_file_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    counter_with_data(dir.path());
    let db = dir.path().join("db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, vec![0u8; len]).unwrap();
    assert_counter_refuses(dir.path(), "counter with a zeroed db file");

    let dir = tempfile::tempdir().unwrap();
    counter_with_data(dir.path());
    std::fs::write(dir.path().join("db"), b"").unwrap();
    assert_counter_refuses(dir.path(), "counter with an emptied db file");
}
