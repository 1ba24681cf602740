//! What an operator relies on: graceful shutdown under load leaves nothing in doubt, metrics show live
//! figures, the status table, JSON logs with the transaction id and no secret.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dc_tests::history::History;
use dc_tests::{inspect, Cluster, Load, Options};

const CONVERGE: Duration = Duration::from_secs(20);

/// Starts a service again once the in-process store that inspected its data released the lock.
async fn restart_counter(c: &mut Cluster, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = c.start_counter(i, &[]).await {
        assert!(
            Instant::now() < deadline,
            "counter {i} does not restart: {e:#}"
        );
        c.counters[i].kill();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_a_write_load_leaves_no_transaction_in_doubt() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let history = Arc::new(History::new());
    let load = Load::start(
        c.api_client(),
        history.clone(),
        "term",
        6,
        5,
        Duration::ZERO,
        false,
    );
    let wait_acked = |load: &Load, n: usize| {
        let deadline = Instant::now() + CONVERGE;
        while load.acked() < n {
            assert!(Instant::now() < deadline, "writes do not flow");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_acked(&load, 50);

    // A counter: it votes NO from the signal on, finishes what it voted YES on, and exits 0.
    for i in [1, 2] {
        c.counters[i].terminate();
        let status = c.counters[i].wait_exit(CONVERGE).unwrap();
        assert!(status.success(), "counter {i} exited with {status}");
        let dir = c.counters[i].data_dir().to_owned();
        let prepared = inspect(
            move || storage::CounterStore::open(&dir, 0),
            |s| s.prepared_txids().unwrap(),
        );
        assert_eq!(
            prepared,
            Vec::<u64>::new(),
            "counter {i} left transactions in doubt"
        );
        restart_counter(&mut c, i).await;
        c.wait_counter_in_sync(i, CONVERGE).await.unwrap();
        let acked = load.acked();
        wait_acked(&load, acked + 20);
    }

    // The coordinator: it finishes the running round and exits 0 with every decision finished.
    c.coordinator.terminate();
    let status = c.coordinator.wait_exit(CONVERGE).unwrap();
    assert!(status.success(), "coordinator exited with {status}");
    let dir = c.coordinator.data_dir().to_owned();
    let unfinished = inspect(
        move || storage::CoordinatorStore::open(&dir),
        |s| s.unfinished().unwrap().len(),
    );
    assert_eq!(unfinished, 0, "decisions left unfinished");
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = c.start_coordinator(&[]).await {
        assert!(
            Instant::now() < deadline,
            "coordinator does not restart: {e:#}"
        );
        c.coordinator.kill();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_in_sync(3, CONVERGE).await.unwrap();
    let acked = load.acked();
    wait_acked(&load, acked + 20);
    load.stop().await;
    c.converge_and_check(&history, CONVERGE).await;
}

async fn metrics(c: &Cluster, url: &str) -> String {
    let resp = c.http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{url}/metrics");
    resp.text().await.unwrap()
}

/// The value of the first sample of `series` (a metric name with its labels, as printed).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test]
async fn metrics_show_live_figures_on_every_service() {
    let c = Cluster::start(Options {
        counters: 2,
        ..Options::default()
    })
    .await
    .unwrap();
    for i in 0..5 {
        c.post_ok(&[(&format!("{i}"), "m"), (&format!("{i}"), "n")])
            .await
            .unwrap();
    }
    assert_eq!(c.count("m").await.unwrap(), 5);

    // A client is answered at the decision: the last round's phase 2, and its timing, may come after.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = metrics(&c, &c.url()).await;
    while sample(&text, "dc_phase_duration_seconds_count{phase=\"commit\"}") < 5.0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = metrics(&c, &c.url()).await;
    }
    assert!(sample(&text, "dc_rounds_total{outcome=\"committed\"}") >= 5.0);
    assert!(
        sample(
            &text,
            "dc_http_requests_total{route=\"/items\",method=\"POST\",status=\"200\"}"
        ) >= 5.0
    );
    assert!(sample(&text, "dc_phase_duration_seconds_count{phase=\"prepare\"}") >= 5.0);
    assert!(sample(&text, "dc_phase_duration_seconds_count{phase=\"commit\"}") >= 5.0);
    assert!(sample(&text, "dc_round_items_size_sum") >= 10.0);
    assert!(sample(&text, "dc_flush_duration_seconds_count{db=\"coordinator\"}") >= 5.0);
    assert_eq!(sample(&text, "dc_counters{state=\"InSync\"}"), 2.0);
    assert_eq!(sample(&text, "dc_write_queue_depth"), 0.0);
    assert!(
        !text.contains(&c.counters[0].url()),
        "metrics name an address"
    );

    // A counter's metrics need no token and hold no tenant.
    let text = metrics(&c, &c.counters[0].url()).await;
    assert_eq!(sample(&text, "dc_items_stored"), 10.0);
    assert_eq!(sample(&text, "dc_tenants_stored"), 2.0);
    assert!(sample(&text, "dc_last_applied_seq") >= 5.0);
    assert!(sample(&text, "dc_disk_bytes") > 0.0);
    // One flush per round at least: the PREPARE's (a COMMIT is acknowledged before its flush).
    assert!(sample(&text, "dc_flush_duration_seconds_count{db=\"counter\"}") >= 5.0);
    assert!(!text.contains("\"m\""), "metrics name a tenant");
}

#[tokio::test]
async fn the_status_table_has_a_row_per_counter() {
    let c = Cluster::start(Options::default()).await.unwrap();
    c.post_ok(&[("1", "t")]).await.unwrap();
    let out = std::process::Command::new(dc_tests::bin("coordinator"))
        .args(["status", "--url", &c.coordinator.internal_url()])
        .env("CLUSTER_TOKEN", &c.token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view = c.view().await.unwrap();
    assert!(
        text.contains(&format!("committed seq {}", view.committed_seq)),
        "{text}"
    );
    for m in &view.counters {
        let row = text
            .lines()
            .find(|l| l.starts_with(&m.node_id))
            .unwrap_or_else(|| panic!("no row for {}:\n{text}", m.node_id));
        assert!(row.contains("InSync") && row.contains(&m.url), "{row}");
    }

    // Without the token it says why and fails.
    let out = std::process::Command::new(dc_tests::bin("coordinator"))
        .args(["status", "--url", &c.coordinator.internal_url()])
        .env("CLUSTER_TOKEN", dc_tests::random_token())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[tokio::test]
async fn json_logs_carry_the_round_and_never_the_token() {
    // No health check gets to the killed counter first: the round below must be what drops it.
    let mut c = Cluster::start(Options {
        health_interval: "1h",
        ..Options::default()
    })
    .await
    .unwrap();
    c.coordinator.set_env("COORDINATOR_LOG_FORMAT", "json");
    c.restart_coordinator().await.unwrap();
    c.wait_in_sync(3, CONVERGE).await.unwrap();
    // A counter that is gone when the next round prepares: the round logs why it drops it.
    c.counters[2].kill();
    c.post_ok(&[("1", "t")]).await.unwrap();

    let log = c.coordinator.log_text();
    let json: Vec<serde_json::Value> = log
        .lines()
        .skip_while(|l| !l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let starting = json
        .iter()
        .find(|l| l["fields"]["message"] == "starting")
        .expect("the effective configuration is logged at start");
    assert!(starting["fields"]["config"]
        .as_str()
        .unwrap()
        .contains("call_timeout"));
    let dropped = json
        .iter()
        .find(|l| l["fields"]["message"] == "counter marked lagging")
        .unwrap_or_else(|| panic!("no lagging line in:\n{log}"));
    assert!(dropped["span"]["txid"].is_u64(), "{dropped}");
    assert!(!log.contains(&c.token), "the token is in the log");
}
