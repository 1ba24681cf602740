//! Helpers shared by the storage crate's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use storage::{ApplyOutcome, CounterStore, Error, Item, PrepareOutcome, Seq, TxId};

pub fn item(tenant: &str, id: &str) -> Item {
    Item {
        id: id.into(),
        tenant: tenant.into(),
    }
}

/// A runtime for the async calls (`durable`) of tests that open, drop and reopen a store in turn.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Opens a store that this process had open a moment ago: sled's I/O threads and the store's flusher
/// thread can keep the file (and its lock) for a moment after the last handle is dropped, which reads
/// as `Error::Locked`.
pub fn reopen<T>(mut open: impl FnMut() -> storage::Result<T>) -> storage::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match open() {
            Err(Error::Locked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => return other,
        }
    }
}

/// Prepare, make durable, commit, make durable: one full 2PC round on one replica.
pub async fn commit(store: &CounterStore, txid: TxId, seq: Seq, items: &[Item]) {
    assert_eq!(
        store.record_prepared(txid, items).unwrap(),
        PrepareOutcome::Recorded
    );
    store.durable().await.unwrap();
    assert_eq!(
        store.apply_commit(txid, seq).unwrap(),
        ApplyOutcome::Applied
    );
    store.durable().await.unwrap();
}

/// Every item of the replica, read through `snapshot_page` in pages of `page_size`. Fails (rather
/// than looping) if a page does not start after the cursor.
pub fn paged_items(store: &CounterStore, page_size: usize) -> Vec<Item> {
    let mut out = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = store.snapshot_page(cursor.as_deref(), page_size).unwrap();
        assert!(
            page.len() <= page_size,
            "page of {} items for max {page_size}",
            page.len()
        );
        let Some((last, _)) = page.last() else {
            return out;
        };
        if let Some(cursor) = &cursor {
            assert!(
                page[0].0 > *cursor,
                "snapshot page does not start after its cursor"
            );
        }
        cursor = Some(last.clone());
        out.extend(page.into_iter().map(|(_, item)| item));
    }
}

/// Every item of the replica, read through `snapshot_page` in small pages.
pub fn all_items(store: &CounterStore) -> Vec<Item> {
    paged_items(store, 7)
}

/// Every entry of the `counts` tree (read through the raw database handle).
pub fn raw_counts(store: &CounterStore) -> BTreeMap<String, u64> {
    let counts = store.db().open_tree("counts").unwrap();
    counts
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (
                String::from_utf8(k.to_vec()).unwrap(),
                u64::from_be_bytes(v.as_ref().try_into().unwrap()),
            )
        })
        .collect()
}

/// Asserts that the `counts` tree holds exactly the number of distinct items of every tenant in the
/// `items` tree (and nothing for tenants without items), and that `count` answers the same.
/// Returns the counts.
pub fn assert_consistent(store: &CounterStore) -> BTreeMap<String, u64> {
    let mut per_tenant: BTreeMap<String, u64> = BTreeMap::new();
    for item in all_items(store) {
        *per_tenant.entry(item.tenant).or_default() += 1;
    }
    assert_eq!(
        raw_counts(store),
        per_tenant,
        "counts tree disagrees with items tree"
    );
    for (tenant, n) in &per_tenant {
        assert_eq!(store.count(tenant).unwrap(), *n, "count({tenant:?})");
    }
    let items: u64 = per_tenant.values().sum();
    assert_eq!(
        store.totals().unwrap(),
        (items, per_tenant.len() as u64),
        "totals disagree with the items tree"
    );
    per_tenant
}
