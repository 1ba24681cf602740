//! Randomized fault test: concurrent clients against the local cluster while counters and the
//! coordinator are SIGKILLed and restarted at random, then the whole history is checked.
//!
//! The seed (printed; replay with `SEED=<n>`) fixes the fault schedule and the mix of operations; the
//! interleaving with the processes is still up to the machine. `RANDOMIZED_SECS` sets the length.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dc_tests::history::{History, Outcome};
use dc_tests::{ApiClient, Cluster, Options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const HOT_TENANTS: usize = 3;

async fn writer(
    client: ApiClient,
    history: Arc<History>,
    seed: u64,
    w: usize,
    ids: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ ((w as u64 + 1) * 0x9e37_79b9));
    let mut acked: Vec<Vec<(String, String)>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let choice = rng.random_range(0..10);
        let items: Vec<(String, String)> = if choice < 2 && !acked.is_empty() {
            // Re-send an acknowledged batch: it must change nothing.
            acked[rng.random_range(0..acked.len())].clone()
        } else if choice < 5 {
            // A batch of its own tenant: counted all or none.
            let n = ids.fetch_add(1, Ordering::SeqCst);
            let size = rng.random_range(1..20);
            (0..size)
                .map(|k| (format!("i{n}-{k}"), format!("batch-{n}")))
                .collect()
        } else {
            let size = rng.random_range(1..10);
            (0..size)
                .map(|_| {
                    let n = ids.fetch_add(1, Ordering::SeqCst);
                    (
                        format!("i{n}"),
                        format!("hot-{}", rng.random_range(0..HOT_TENANTS)),
                    )
                })
                .collect()
        };
        if client.post_recorded(&history, &items).await.0 == Outcome::Ok {
            acked.push(items);
        }
    }
}

async fn reader(client: ApiClient, history: Arc<History>, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5151);
    while !stop.load(Ordering::SeqCst) {
        let tenant = format!("hot-{}", rng.random_range(0..HOT_TENANTS));
        client.get_count_recorded(&history, &tenant).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_kills_keep_every_invariant() {
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let secs: u64 = std::env::var("RANDOMIZED_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    eprintln!("randomized fault test: seed {seed} for {secs} s (replay with SEED={seed})");

    let options = Options {
        coordinator_args: vec!["--call-timeout".into(), "500ms".into()],
        log_retention: 50, // small, so some catch-ups need a snapshot
        ..Options::default()
    };
    let mut cluster = Cluster::start(options).await.expect("cluster starts");
    let history = Arc::new(History::new());
    let client = cluster.api_client();
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..4 {
        tasks.push(tokio::spawn(writer(
            client.clone(),
            history.clone(),
            seed,
            w,
            ids.clone(),
            stop.clone(),
        )));
    }
    // Several readers per hot tenant, so the real-time order of reads is checked, not only their bounds.
    for r in 0..4 {
        tasks.push(tokio::spawn(reader(
            client.clone(),
            history.clone(),
            seed + r,
            stop.clone(),
        )));
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        let n = cluster.counters.len();
        match rng.random_range(0..10) {
            0..=4 => {
                let i = rng.random_range(0..n);
                cluster.counters[i].kill();
                *faults.entry("counter kill").or_default() += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
                cluster
                    .start_counter(i, &[])
                    .await
                    .expect("counter restarts");
            }
            5..=6 => {
                let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
                cluster.counters[a].kill();
                cluster.counters[b].kill();
                *faults.entry("two counters killed").or_default() += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..1000))).await;
                cluster
                    .start_counter(a, &[])
                    .await
                    .expect("counter restarts");
                if b != a {
                    cluster
                        .start_counter(b, &[])
                        .await
                        .expect("counter restarts");
                }
            }
            7..=8 => {
                cluster.coordinator.kill();
                *faults.entry("coordinator kill").or_default() += 1;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..700))).await;
                cluster
                    .start_coordinator(&[])
                    .await
                    .expect("coordinator restarts");
            }
            _ => {
                // Everything at once.
                cluster.coordinator.kill();
                for c in &mut cluster.counters {
                    c.kill();
                }
                *faults.entry("whole cluster killed").or_default() += 1;
                cluster
                    .start_coordinator(&[])
                    .await
                    .expect("coordinator restarts");
                for i in 0..n {
                    cluster
                        .start_counter(i, &[])
                        .await
                        .expect("counter restarts");
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }

    let healing = Instant::now();
    let tenants: Vec<String> = history.tenants().into_iter().collect();
    let counts = cluster
        .converged(&tenants, Duration::from_secs(30))
        .await
        .expect("counters converge");
    eprintln!("converged {:?} after the last fault", healing.elapsed());
    if std::env::var("SHOW_LOG").is_ok() {
        eprintln!("{}", cluster.coordinator.log_text());
    }
    // The final counts as a client sees them, through the coordinator.
    for t in tenants.iter().take(50) {
        assert_eq!(
            cluster.count(t).await.unwrap(),
            counts[t],
            "coordinator read of {t}"
        );
    }
    let report = history.check(&counts);
    eprintln!("seed {seed}: {report}; faults {faults:?}");
    assert!(
        report.acknowledged > 50,
        "too few acknowledged writes to mean anything: {report}"
    );
    assert!(report.ok(), "seed {seed}: {report}");
}
