//! `make bench`: write throughput and latency of a local release cluster, and the write outage when a
//! counter is SIGKILLed under load. Each figure is the median of several runs; the one-counter cluster
//! and the no-fault run are the baselines measured in the same invocation.
//!
//! BENCH_SECS (default 5) sets the length of one run, BENCH_RUNS (default 3) the number of runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dc_tests::{Cluster, Options};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

struct Run {
    items_per_sec: f64,
    p50: Duration,
    p99: Duration,
    /// Longest time between two consecutive acknowledged POSTs (any client).
    max_gap: Duration,
    failed: usize,
}

/// `clients` tasks POST batches of `batch` fresh ids for `secs`; optionally kill counter 0 halfway.
async fn load(
    cluster: &mut Cluster,
    clients: usize,
    batch: usize,
    secs: u64,
    kill_at_half: bool,
    tag: &str,
) -> Run {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let failed = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, stop, done, failed, url) = (
            http.clone(),
            stop.clone(),
            done.clone(),
            failed.clone(),
            cluster.url(),
        );
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body: Vec<_> = (0..batch)
                    .map(|k| serde_json::json!({"id": format!("{tag}-{c}-{n}-{k}"), "tenant": format!("t{}", c % 8)}))
                    .collect();
                n += 1;
                let start = Instant::now();
                let ok = matches!(http.post(format!("{url}/items")).json(&body).send().await, Ok(r) if r.status() == 200);
                if ok {
                    done.lock().unwrap().push((Instant::now(), start.elapsed()));
                } else {
                    *failed.lock().unwrap() += 1;
                }
            }
        }));
    }
    let start = Instant::now();
    if kill_at_half {
        tokio::time::sleep(Duration::from_millis(secs * 500)).await;
        cluster.counters[0].kill();
        tokio::time::sleep(Duration::from_millis(secs * 500)).await;
    } else {
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut done = done.lock().unwrap().clone();
    done.sort_by_key(|(at, _)| *at);
    let max_gap = done
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default();
    let mut latencies: Vec<Duration> = done.iter().map(|(_, l)| *l).collect();
    latencies.sort();
    if kill_at_half {
        cluster.start_counter(0, &[]).await.unwrap();
        cluster
            .wait_in_sync(cluster.counters.len(), Duration::from_secs(60))
            .await
            .unwrap();
    }
    let failed = *failed.lock().unwrap();
    Run {
        items_per_sec: (done.len() * batch) as f64 / elapsed,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        max_gap,
        failed,
    }
}

#[tokio::main]
async fn main() {
    let secs = env("BENCH_SECS", 5);
    let runs = env("BENCH_RUNS", 3) as usize;
    println!(
        "write throughput, median of {runs} runs of {secs} s (items/s, request latency p50 / p99)"
    );
    for counters in [1, 3] {
        let mut cluster = Cluster::start(Options {
            counters,
            ..Options::default()
        })
        .await
        .expect("cluster");
        for (batch, clients) in [(1, 64), (100, 16), (1000, 4)] {
            let mut results = Vec::new();
            for r in 0..runs {
                results.push(
                    load(
                        &mut cluster,
                        clients,
                        batch,
                        secs,
                        false,
                        &format!("b{batch}r{r}"),
                    )
                    .await,
                );
            }
            let failed: usize = results.iter().map(|r| r.failed).sum();
            println!(
                "  {counters} counter(s), batch {batch:>4}, {clients:>2} clients: {:>8.0} items/s  p50 {:>6.1} ms  p99 {:>6.1} ms  failed {failed}",
                median(results.iter().map(|r| r.items_per_sec).collect()),
                median(results.iter().map(|r| r.p50.as_secs_f64() * 1e3).collect()),
                median(results.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect()),
            );
        }
    }

    println!(
        "write outage when a counter is SIGKILLed under load (3 counters, 8 clients, batch 10)"
    );
    let mut cluster = Cluster::start(Options::default()).await.expect("cluster");
    for (kill, label) in [(false, "no fault (baseline)"), (true, "counter killed")] {
        let mut gaps = Vec::new();
        let mut failed = 0;
        for r in 0..runs {
            let run = load(&mut cluster, 8, 10, secs, kill, &format!("o{kill}{r}")).await;
            gaps.push(run.max_gap.as_secs_f64() * 1e3);
            failed += run.failed;
        }
        println!(
            "  {label:<20}: longest gap between acknowledged writes, median {:>7.1} ms (runs: {:?}), failed writes {failed}",
            median(gaps.clone()),
            gaps.iter().map(|g| format!("{g:.1}")).collect::<Vec<_>>()
        );
    }
}
