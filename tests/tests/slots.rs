//! Slot claiming (replicas sharing one volume under docker `--scale`) and node identity on calls.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dc_tests::{bin, random_token, Cluster, Options};

/// Starts a counter claiming a slot under `root`; returns it with the path of its log.
fn slot_counter(root: &Path, name: &str) -> (Child, std::path::PathBuf) {
    let log = root.parent().unwrap().join(format!("{name}.log"));
    let child = Command::new(bin("counter"))
        .args([
            "--slots",
            "--listen",
            "127.0.0.1:0",
            "--coordinator-url",
            "http://127.0.0.1:9",
        ])
        .arg("--data-dir")
        .arg(root)
        .env("RUST_LOG", "info")
        .env("CLUSTER_TOKEN", random_token())
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

fn wait_for_line(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn replicas_claim_distinct_slots_and_keep_them_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("counters");
    let (mut a, log_a) = slot_counter(&root, "a");
    let slot_a = wait_for_line(&log_a, "claimed slot");
    let (mut b, log_b) = slot_counter(&root, "b");
    let slot_b = wait_for_line(&log_b, "claimed slot");
    assert!(slot_a.contains("slot-00"), "{slot_a}");
    assert!(slot_b.contains("slot-01"), "{slot_b}");
    let id_b = wait_for_line(&log_b, "recovered");

    // SIGKILL b: its lock dies with it, and the next replica to start takes its slot and identity.
    b.kill().unwrap();
    b.wait().unwrap();
    let (mut c, log_c) = slot_counter(&root, "c");
    assert!(wait_for_line(&log_c, "claimed slot").contains("slot-01"));
    let node = |line: &str| {
        line.split("node_id=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(node(&wait_for_line(&log_c, "recovered")), node(&id_b));

    for child in [&mut a, &mut c] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn an_unreadable_slot_is_reported_and_never_reused_empty() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("counters");
    let (mut a, log_a) = slot_counter(&root, "a");
    wait_for_line(&log_a, "claimed slot");
    a.kill().unwrap();
    a.wait().unwrap();
    // Corrupt slot-00's database file.
    let db = root.join("slot-00").join("db");
    std::fs::write(&db, vec![0xA5u8; 4096]).unwrap();

    let (mut b, log_b) = slot_counter(&root, "b");
    let claimed = wait_for_line(&log_b, "claimed slot");
    assert!(claimed.contains("slot-01"), "{claimed}");
    let error = wait_for_line(&log_b, "slot cannot be opened");
    assert!(
        error.contains("ERROR") && error.contains("slot-00"),
        "{error}"
    );
    // The bad slot stays refused on later starts too: it is never taken up as an empty replica.
    let (mut c, log_c) = slot_counter(&root, "c");
    assert!(wait_for_line(&log_c, "claimed slot").contains("slot-02"));
    wait_for_line(&log_c, "slot cannot be opened");
    for child in [&mut b, &mut c] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[tokio::test]
async fn a_call_meant_for_another_node_is_refused() {
    let c = Cluster::start(Options {
        counters: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    let me = c.counter_status(0).await.unwrap().node_id;
    let url = format!("{}/internal/status", c.counters[0].url());
    let ask = |id: String| {
        c.internal(reqwest::Method::GET, url.clone())
            .header(storage::proto::NODE_HEADER, id)
            .send()
    };
    assert_eq!(ask(me.clone()).await.unwrap().status(), 200);
    let wrong = ask("someone-else".into()).await.unwrap();
    assert_eq!(wrong.status(), 409);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains(&me), "{body}");
    // A PREPARE meant for another node records nothing.
    let prepare = c
        .internal(
            reqwest::Method::POST,
            format!("{}/internal/prepare", c.counters[0].url()),
        )
        .header(storage::proto::NODE_HEADER, "someone-else")
        .json(&serde_json::json!({"txid": u64::MAX, "items": [{"id": "x", "tenant": "t"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(prepare.status(), 409);
    c.post_ok(&[("1", "t")]).await.unwrap();
    assert_eq!(c.count("t").await.unwrap(), 1);
}
