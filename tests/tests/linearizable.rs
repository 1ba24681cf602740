//! Reads are linearizable: many readers on two hot tenants while writers add to them, and no read
//! returns less than a read of the same tenant that ended before it began (the history checker's
//! real-time order check), with and without one counter slow to apply every round.
//!
//! `LINEARIZABLE_SECS` sets how long each test runs (default 8 s).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use storage::proto::MemberState;

use dc_tests::history::History;
use dc_tests::{Cluster, Options};

const HOT: [&str; 2] = ["hot-a", "hot-b"];
const WRITERS: usize = 4;
const READERS: usize = 8;
/// The slow counter's extra time before it applies each COMMIT: well inside the call timeout, so it
/// stays in the write set, and long enough that most reads arrive while it has not applied yet.
const SLOW_COMMIT_MS: u64 = 150;

fn secs() -> u64 {
    std::env::var("LINEARIZABLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// Runs writers and readers on the hot tenants for [`secs`], then checks the history. Returns the
/// number of reads and the rounds committed meanwhile.
async fn hot_tenants(c: &mut Cluster) -> (usize, u64) {
    let history = Arc::new(History::new());
    let client = c.api_client();
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let seq_before = c.view().await.unwrap().committed_seq;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (client, history, stop, ids) =
            (client.clone(), history.clone(), stop.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = ids.fetch_add(1, Ordering::SeqCst);
                let item = (format!("w{w}-{n}"), HOT[n as usize % HOT.len()].to_owned());
                client.post_recorded(&history, &[item]).await;
            }
        }));
    }
    for r in 0..READERS {
        let (client, history, stop, latencies) = (
            client.clone(),
            history.clone(),
            stop.clone(),
            latencies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut k = r;
            while !stop.load(Ordering::SeqCst) {
                let began = Instant::now();
                if client
                    .get_count_recorded(&history, HOT[k % HOT.len()])
                    .await
                    .is_some()
                {
                    latencies.lock().unwrap().push(began.elapsed());
                }
                k += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs())).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let rounds = c.view().await.unwrap().committed_seq - seq_before;
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    eprintln!(
        "{} reads, latency p50 {:?} p99 {:?} max {:?}; {rounds} rounds",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
    let tenants: Vec<String> = HOT.iter().map(|t| t.to_string()).collect();
    let counts = c
        .converged(&tenants, Duration::from_secs(20))
        .await
        .unwrap();
    let report = history.check(&counts);
    eprintln!("{report}");
    assert!(report.ok(), "{report}");
    assert!(
        report.acknowledged > 50 && report.refused == 0,
        "writes did not flow: {report}"
    );
    (report.reads, rounds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_readers_on_two_hot_tenants_never_see_a_count_go_down() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let (reads, _) = hot_tenants(&mut c).await;
    assert!(reads > 500, "too few reads to mean anything: {reads}");
}

/// Phase 2 is slow on one counter: every round, the two others have applied it long before it has.
/// A read sent to the slow one then would count less than a read already answered by a fast one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_counter_slow_to_apply_every_round_never_shows_a_count_going_down() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    c.counters[0].set_env(
        "DC_DELAY_AT",
        &format!("counter-before-commit:{SLOW_COMMIT_MS}"),
    );
    c.restart_counter(0).await.unwrap();
    c.wait_counter_in_sync(0, Duration::from_secs(20))
        .await
        .unwrap();
    let node = c.counter_status(0).await.unwrap().node_id;

    let (reads, rounds) = hot_tenants(&mut c).await;
    assert!(reads > 200, "too few reads to mean anything: {reads}");
    // The slow counter took part in the rounds (it was not simply dropped from the write set), so
    // reads really did overlap its late phase 2.
    let expected_rounds = secs() * 1000 / SLOW_COMMIT_MS / 2;
    assert!(
        rounds >= expected_rounds,
        "{rounds} rounds, expected at least {expected_rounds}"
    );
    let view = c.view().await.unwrap();
    let slow = view.counters.iter().find(|m| m.node_id == node).unwrap();
    assert_eq!(slow.state, MemberState::InSync, "{view:?}");
    assert_eq!(
        slow.synced_entries + slow.synced_snapshot_items,
        0,
        "the slow counter left the write set and was caught up: {view:?}"
    );
}
