//! CounterStore: the 2PC participant's state transitions, counting, log and snapshot paging.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{all_items, assert_consistent, commit, item, paged_items, reopen, runtime};
use storage::{ApplyOutcome, CounterStore, Error, Item, LogEntry, PrepareOutcome};
use tempfile::TempDir;

fn open(log_retention: u64) -> (TempDir, CounterStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = CounterStore::open(dir.path(), log_retention).unwrap();
    (dir, store)
}

fn entries(store: &CounterStore) -> Vec<LogEntry> {
    store
        .log_page(store.log_floor().unwrap() + 1, usize::MAX)
        .unwrap()
}

#[tokio::test]
async fn prepare_durable_commit_count() {
    let (_dir, store) = open(0);
    assert_eq!(store.applied().unwrap(), (0, 0));
    assert_eq!(store.count("t").unwrap(), 0);

    let items = vec![item("t", "a"), item("t", "b")];
    assert_eq!(
        store.record_prepared(7, &items).unwrap(),
        PrepareOutcome::Recorded
    );
    assert_eq!(store.prepared_txids().unwrap(), vec![7]);
    // Prepared items are not counted.
    assert_eq!(store.count("t").unwrap(), 0);
    store.durable().await.unwrap();

    assert_eq!(store.apply_commit(7, 1).unwrap(), ApplyOutcome::Applied);
    store.durable().await.unwrap();
    assert_eq!(store.count("t").unwrap(), 2);
    assert_eq!(store.applied().unwrap(), (1, 7));
    assert_eq!(store.last_applied().unwrap(), 1);
    assert!(
        store.prepared_txids().unwrap().is_empty(),
        "commit must remove the prepared record"
    );
    assert_eq!(
        entries(&store),
        vec![LogEntry {
            seq: 1,
            txid: 7,
            items
        }]
    );
    assert_eq!(store.count("never-seen").unwrap(), 0);
    assert_consistent(&store);
}

#[tokio::test]
async fn distinct_ids_are_counted_once_per_tenant() {
    let (_dir, store) = open(0);
    // Duplicates inside one batch.
    commit(
        &store,
        1,
        1,
        &[
            item("t", "a"),
            item("t", "a"),
            item("t", "b"),
            item("t", "a"),
        ],
    )
    .await;
    assert_eq!(store.count("t").unwrap(), 2);
    // The same ids again in a later batch, plus one new one.
    commit(
        &store,
        2,
        2,
        &[item("t", "b"), item("t", "a"), item("t", "c")],
    )
    .await;
    assert_eq!(store.count("t").unwrap(), 3);
    // The same id under another tenant counts for that tenant only.
    commit(&store, 3, 3, &[item("u", "a"), item("ü/γ", "a")]).await;
    assert_eq!(store.count("t").unwrap(), 3);
    assert_eq!(store.count("u").unwrap(), 1);
    assert_eq!(store.count("ü/γ").unwrap(), 1);
    // Tenant/id boundaries cannot blur: ("a", "bc") and ("ab", "c") are different items.
    commit(&store, 4, 4, &[item("a", "bc"), item("ab", "c")]).await;
    assert_eq!(store.count("a").unwrap(), 1);
    assert_eq!(store.count("ab").unwrap(), 1);
    let counts = assert_consistent(&store);
    assert_eq!(counts.values().sum::<u64>(), 7);
}

#[tokio::test]
async fn applying_the_same_seq_twice_changes_nothing() {
    let (_dir, store) = open(0);
    commit(&store, 5, 1, &[item("t", "a")]).await;
    let before = (store.applied().unwrap(), entries(&store), all_items(&store));

    // A re-sent COMMIT (its prepared record is gone by now).
    assert_eq!(
        store.apply_commit(5, 1).unwrap(),
        ApplyOutcome::AlreadyApplied
    );
    // Even with a prepared record present for another txid, an old seq is not applied again: a newer
    // txid at an applied seq is a diverged history, refused.
    assert_eq!(
        store.record_prepared(6, &[item("t", "b")]).unwrap(),
        PrepareOutcome::Recorded
    );
    assert!(matches!(
        store.apply_commit(6, 1),
        Err(Error::Diverged { seq: 1, txid: 6 })
    ));
    // Catch-up entries that are all at or below last_applied are skipped too.
    let again = LogEntry {
        seq: 1,
        txid: 5,
        items: vec![item("t", "zzz")],
    };
    assert_eq!(
        store.apply_entries(&[again]).unwrap(),
        ApplyOutcome::AlreadyApplied
    );

    assert_eq!(
        (store.applied().unwrap(), entries(&store), all_items(&store)),
        before
    );
    assert_eq!(store.count("t").unwrap(), 1);
    assert_eq!(store.prepared_txids().unwrap(), vec![6]);
    assert_consistent(&store);
}

#[tokio::test]
async fn a_gap_is_rejected_and_changes_nothing() {
    let (_dir, store) = open(0);
    commit(&store, 1, 1, &[item("t", "a")]).await;
    store.record_prepared(2, &[item("t", "b")]).unwrap();

    match store.apply_commit(2, 3) {
        Err(Error::Gap {
            expected: 2,
            got: 3,
        }) => {}
        other => panic!("expected Gap, got {other:?}"),
    }
    assert_eq!(store.applied().unwrap(), (1, 1));
    assert_eq!(store.count("t").unwrap(), 1);
    assert_eq!(
        store.prepared_txids().unwrap(),
        vec![2],
        "the prepared record must stay"
    );
    assert_eq!(entries(&store).len(), 1);

    // A catch-up batch with a gap in the middle is applied all or nothing.
    let batch = vec![
        LogEntry {
            seq: 2,
            txid: 2,
            items: vec![item("t", "b")],
        },
        LogEntry {
            seq: 4,
            txid: 4,
            items: vec![item("t", "d")],
        },
    ];
    match store.apply_entries(&batch) {
        Err(Error::Gap {
            expected: 3,
            got: 4,
        }) => {}
        other => panic!("expected Gap, got {other:?}"),
    }
    assert_eq!(store.applied().unwrap(), (1, 1));
    assert_eq!(store.count("t").unwrap(), 1);
    assert_eq!(store.prepared_txids().unwrap(), vec![2]);
    assert_eq!(entries(&store).len(), 1);
    assert_consistent(&store);

    // The right seq still applies afterwards.
    assert_eq!(store.apply_commit(2, 2).unwrap(), ApplyOutcome::Applied);
    assert_eq!(store.count("t").unwrap(), 2);
}

#[tokio::test]
async fn committing_an_unprepared_txid_is_not_prepared() {
    let (_dir, store) = open(0);
    match store.apply_commit(9, 1) {
        Err(Error::NotPrepared(9)) => {}
        other => panic!("expected NotPrepared, got {other:?}"),
    }
    // A rolled-back transaction is unprepared too.
    store.record_prepared(9, &[item("t", "a")]).unwrap();
    store.rollback(9).unwrap();
    assert!(matches!(
        store.apply_commit(9, 1),
        Err(Error::NotPrepared(9))
    ));
    assert_eq!(store.applied().unwrap(), (0, 0));
    assert_eq!(store.count("t").unwrap(), 0);
    assert!(entries(&store).is_empty());
}

#[tokio::test]
async fn a_prepare_at_or_below_the_last_applied_txid_is_stale() {
    let (_dir, store) = open(0);
    commit(&store, 10, 1, &[item("t", "a")]).await;
    assert_eq!(
        store.record_prepared(10, &[item("t", "x")]).unwrap(),
        PrepareOutcome::Stale
    );
    assert_eq!(
        store.record_prepared(3, &[item("t", "y")]).unwrap(),
        PrepareOutcome::Stale
    );
    assert!(
        store.prepared_txids().unwrap().is_empty(),
        "a stale PREPARE must not be recorded"
    );
    assert_eq!(
        store.record_prepared(11, &[item("t", "b")]).unwrap(),
        PrepareOutcome::Recorded
    );
    assert_eq!(store.prepared_txids().unwrap(), vec![11]);
}

#[tokio::test]
async fn rollback_removes_the_prepared_record() {
    let (_dir, store) = open(0);
    store.record_prepared(4, &[item("t", "a")]).unwrap();
    store.record_prepared(5, &[item("t", "b")]).unwrap();
    store.rollback(4).unwrap();
    assert_eq!(store.prepared_txids().unwrap(), vec![5]);
    // Rolling back twice, or something never prepared, is harmless.
    store.rollback(4).unwrap();
    store.rollback(99).unwrap();
    assert_eq!(store.prepared_txids().unwrap(), vec![5]);
    assert_eq!(store.count("t").unwrap(), 0);
}

#[tokio::test]
async fn applying_a_txid_clears_older_prepared_records() {
    let (_dir, store) = open(0);
    for txid in [5, 7, 255, 256, 300] {
        store
            .record_prepared(txid, &[item("t", &format!("i{txid}"))])
            .unwrap();
    }
    // Txids sort numerically (255 < 256 < 300) in the prepared tree.
    assert_eq!(store.prepared_txids().unwrap(), vec![5, 7, 255, 256, 300]);
    assert_eq!(store.apply_commit(256, 1).unwrap(), ApplyOutcome::Applied);
    assert_eq!(store.prepared_txids().unwrap(), vec![300]);
    // Only the committed transaction's items were counted.
    assert_eq!(all_items(&store), vec![item("t", "i256")]);

    // Catch-up entries clear older records as well.
    store.record_prepared(301, &[item("t", "x")]).unwrap();
    store.record_prepared(400, &[item("t", "y")]).unwrap();
    let entry = LogEntry {
        seq: 2,
        txid: 350,
        items: vec![item("t", "z")],
    };
    assert_eq!(
        store.apply_entries(&[entry]).unwrap(),
        ApplyOutcome::Applied
    );
    assert_eq!(store.prepared_txids().unwrap(), vec![400]);
    assert_eq!(store.applied().unwrap(), (2, 350));
    assert_consistent(&store);
}

#[tokio::test]
async fn log_page_returns_contiguous_entries_and_respects_max_items() {
    let (_dir, store) = open(0);
    let mut expected = Vec::new();
    for seq in 1..=6u64 {
        // Entry `seq` holds `seq` items.
        let items: Vec<Item> = (0..seq).map(|k| item("t", &format!("{seq}-{k}"))).collect();
        commit(&store, 100 + seq, seq, &items).await;
        expected.push(LogEntry {
            seq,
            txid: 100 + seq,
            items,
        });
    }

    assert_eq!(store.log_page(1, usize::MAX).unwrap(), expected);
    assert_eq!(
        store.log_page(4, usize::MAX).unwrap(),
        expected[3..].to_vec()
    );
    // Stops at the first entry that reaches max_items: 3 + 4 >= 5.
    assert_eq!(store.log_page(3, 5).unwrap(), expected[2..4].to_vec());
    assert_eq!(store.log_page(3, 7).unwrap(), expected[2..4].to_vec());
    assert_eq!(store.log_page(3, 8).unwrap(), expected[2..5].to_vec());
    // At least one entry, however small max_items is.
    assert_eq!(store.log_page(6, 1).unwrap(), expected[5..].to_vec());
    assert_eq!(store.log_page(2, 0).unwrap(), expected[1..2].to_vec());
    // Nothing after the last applied seq.
    assert!(store.log_page(7, 10).unwrap().is_empty());
    // Paging through with the next `from` visits every entry once.
    let mut from = 1;
    let mut paged = Vec::new();
    loop {
        let page = store.log_page(from, 4).unwrap();
        if page.is_empty() {
            break;
        }
        from = page.last().unwrap().seq + 1;
        paged.extend(page);
        assert!(paged.len() <= expected.len(), "paging does not end");
    }
    assert_eq!(paged, expected);
}

#[tokio::test]
async fn log_page_reports_trimmed_log() {
    let (_dir, store) = open(3);
    for seq in 1..=10u64 {
        commit(&store, seq, seq, &[item("t", &format!("i{seq}"))]).await;
    }
    // Retention 3: seqs 8, 9, 10 are kept.
    assert_eq!(store.log_floor().unwrap(), 7);
    for from in [1, 5, 7] {
        match store.log_page(from, 100) {
            Err(Error::LogTrimmed { floor: 7 }) => {}
            other => panic!("log_page({from}): expected LogTrimmed, got {other:?}"),
        }
    }
    let page = store.log_page(8, 100).unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    // Trimming the log never touches the counts.
    assert_eq!(store.count("t").unwrap(), 10);
    // Trimmed entries are really gone from the tree, not only hidden.
    let log = store.db().open_tree("log").unwrap();
    assert_eq!(log.len(), 3);
}

#[tokio::test]
async fn snapshot_pages_visit_every_item_exactly_once() {
    let (_dir, store) = open(0);
    let mut expected = BTreeSet::new();
    let tenants = ["a", "ab", "b", "ü/γ", ""];
    let mut seq = 0;
    for tenant in tenants {
        seq += 1;
        let items: Vec<Item> = (0..23).map(|k| item(tenant, &format!("id{k}"))).collect();
        expected.extend(items.iter().cloned());
        commit(&store, seq, seq, &items).await;
    }
    assert_eq!(expected.len(), 115);

    for page_size in [1, 2, 7, 23, 114, 115, 116, 1000] {
        let seen = paged_items(&store, page_size);
        let distinct: BTreeSet<Item> = seen.iter().cloned().collect();
        assert_eq!(
            seen.len(),
            distinct.len(),
            "page size {page_size}: an item was returned twice"
        );
        assert_eq!(distinct, expected, "page size {page_size}");
    }
    assert!(store.snapshot_page(None, 0).unwrap().is_empty());
}

#[tokio::test]
async fn import_and_finish_snapshot_reproduce_the_source() {
    let (_src_dir, source) = open(0);
    for seq in 1..=9u64 {
        let tenant = ["x", "y", "z"][(seq % 3) as usize];
        let items: Vec<Item> = (0..seq)
            .map(|k| item(tenant, &format!("{}", (seq * 5 + k) % 11)))
            .collect();
        commit(&source, 100 + seq, seq, &items).await;
    }
    let (seq, txid) = source.applied().unwrap();
    let source_counts = assert_consistent(&source);

    let (_dst_dir, dest) = open(0);
    // In-doubt records of the rounds the snapshot covers are cleared; later ones are kept.
    dest.record_prepared(txid, &[item("x", "stale")]).unwrap();
    dest.record_prepared(txid + 1, &[item("x", "next")])
        .unwrap();

    let mut cursor: Option<Vec<u8>> = None;
    let mut pages = 0;
    loop {
        let page = source.snapshot_page(cursor.as_deref(), 4).unwrap();
        if page.is_empty() {
            break;
        }
        if let Some(cursor) = &cursor {
            assert!(
                page[0].0 > *cursor,
                "snapshot page does not start after its cursor"
            );
        }
        cursor = Some(page.last().unwrap().0.clone());
        let batch: Vec<Item> = page.into_iter().map(|(_, item)| item).collect();
        dest.import_items(&batch).unwrap();
        // A page delivered twice (a retry) changes nothing.
        dest.import_items(&batch).unwrap();
        dest.durable().await.unwrap();
        pages += 1;
        // Importing does not move last_applied.
        assert_eq!(dest.applied().unwrap(), (0, 0));
    }
    assert!(pages > 1);
    dest.finish_snapshot(seq, txid).unwrap();
    dest.durable().await.unwrap();

    assert_eq!(assert_consistent(&dest), source_counts);
    for tenant in ["x", "y", "z"] {
        assert_eq!(dest.count(tenant).unwrap(), source.count(tenant).unwrap());
    }
    assert_eq!(dest.applied().unwrap(), (seq, txid));
    assert_eq!(dest.log_floor().unwrap(), seq);
    assert!(matches!(dest.log_page(seq, 10), Err(Error::LogTrimmed { floor }) if floor == seq));
    assert!(dest.log_page(seq + 1, 10).unwrap().is_empty());
    assert_eq!(dest.prepared_txids().unwrap(), vec![txid + 1]);

    // The replica goes on from the snapshot with ordinary commits.
    assert_eq!(
        dest.apply_commit(txid + 1, seq + 1).unwrap(),
        ApplyOutcome::Applied
    );
    assert_eq!(dest.count("x").unwrap(), source.count("x").unwrap() + 1);
    assert_eq!(dest.log_page(seq + 1, 10).unwrap().len(), 1);
    assert_consistent(&dest);
}

#[tokio::test]
async fn finish_snapshot_on_a_replica_that_is_already_ahead_changes_nothing() {
    let (_dir, store) = open(0);
    for seq in 1..=5u64 {
        commit(&store, seq, seq, &[item("t", &format!("i{seq}"))]).await;
    }
    let before = (
        store.applied().unwrap(),
        store.log_floor().unwrap(),
        entries(&store),
        all_items(&store),
    );
    // A late or repeated finish for an older snapshot.
    store.finish_snapshot(3, 3).unwrap();
    assert_eq!(
        (
            store.applied().unwrap(),
            store.log_floor().unwrap(),
            entries(&store),
            all_items(&store)
        ),
        before
    );
    // The log still serves catch-up from its floor.
    assert_eq!(store.log_page(1, usize::MAX).unwrap().len(), 5);
}

#[tokio::test]
async fn import_counts_only_new_distinct_items() {
    let (_dir, store) = open(0);
    commit(&store, 1, 1, &[item("t", "a")]).await;
    store
        .import_items(&[
            item("t", "a"),
            item("t", "b"),
            item("t", "b"),
            item("u", "a"),
        ])
        .unwrap();
    assert_eq!(store.count("t").unwrap(), 2);
    assert_eq!(store.count("u").unwrap(), 1);
    assert_eq!(store.applied().unwrap(), (1, 1));
    assert_consistent(&store);
}

#[test]
fn node_id_is_stable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (first, other_id) = runtime().block_on(async {
        let store = CounterStore::open(dir.path(), 0).unwrap();
        commit(&store, 1, 1, &[item("t", "a")]).await;
        let other_id = CounterStore::open(other.path(), 0)
            .unwrap()
            .node_id()
            .unwrap();
        (store.node_id().unwrap(), other_id)
    });
    assert!(!first.is_empty());
    assert_ne!(first, other_id, "two replicas got the same node id");
    for _ in 0..2 {
        let (again, applied, count) = runtime().block_on(async {
            let store = reopen(|| CounterStore::open(dir.path(), 0)).unwrap();
            (
                store.node_id().unwrap(),
                store.applied().unwrap(),
                store.count("t").unwrap(),
            )
        });
        assert_eq!(again, first);
        assert_eq!((applied, count), ((1, 1), 1));
    }
}

#[tokio::test]
async fn a_commit_of_a_newer_transaction_at_an_applied_seq_is_refused() {
    let (_dir, store) = open(0);
    commit(&store, 10, 1, &[item("t", "a")]).await;
    commit(&store, 11, 2, &[item("t", "b")]).await;
    // The same seq and an older or equal txid: a re-sent COMMIT, nothing to do.
    assert_eq!(
        store.apply_commit(11, 2).unwrap(),
        ApplyOutcome::AlreadyApplied
    );
    // A newer txid at an applied seq: a coordinator whose history differs (restored from an old
    // copy). "Already applied" would acknowledge a write applied nowhere.
    store.record_prepared(20, &[item("t", "c")]).unwrap();
    assert!(matches!(
        store.apply_commit(20, 2),
        Err(Error::Diverged { seq: 2, txid: 20 })
    ));
    assert_eq!(store.count("t").unwrap(), 2);
    assert_eq!(store.prepared_txids().unwrap(), vec![20]);
}

#[tokio::test]
async fn a_replica_joins_one_cluster_and_refuses_any_other() {
    let (_dir, store) = open(0);
    assert_eq!(store.cluster_id().unwrap(), None);
    store.join_cluster("c1").unwrap();
    store.join_cluster("c1").unwrap();
    match store.join_cluster("c2") {
        Err(Error::OtherCluster { mine, theirs }) => {
            assert_eq!((mine, theirs), ("c1".into(), "c2".into()))
        }
        other => panic!("joined another cluster: {other:?}"),
    }
    assert_eq!(store.cluster_id().unwrap().as_deref(), Some("c1"));
}

#[tokio::test]
async fn counts_match_items_after_many_mixed_operations() {
    let (_dir, store) = open(4);
    let mut model: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seq = 0;
    for txid in 1..=40u64 {
        let tenant = format!("t{}", txid % 4);
        let items: Vec<Item> = (0..(txid % 5))
            .map(|k| item(&tenant, &format!("{}", (txid * 3 + k) % 13)))
            .collect();
        store.record_prepared(txid, &items).unwrap();
        if txid % 7 == 0 {
            store.rollback(txid).unwrap();
            continue;
        }
        seq += 1;
        assert_eq!(
            store.apply_commit(txid, seq).unwrap(),
            ApplyOutcome::Applied
        );
        for it in items {
            model.entry(it.tenant).or_default().insert(it.id);
        }
    }
    store.durable().await.unwrap();
    let expected: BTreeMap<String, u64> = model
        .iter()
        .map(|(t, ids)| (t.clone(), ids.len() as u64))
        .collect();
    assert_eq!(assert_consistent(&store), expected);
}
