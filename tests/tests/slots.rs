//! Slot claiming (replicas sharing one volume under docker `--scale`) and node identity on calls.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dc_tests::{bin, inspect, random_token, Cluster, Options};
use storage::proto::CounterStatus;

const WAIT: Duration = Duration::from_secs(20);

/// A counter claiming a slot under a shared root, with no coordinator to register with.
struct SlotCounter {
    child: Child,
    log: PathBuf,
    addr_file: PathBuf,
    token: String,
}

impl SlotCounter {
    fn start(root: &Path, name: &str) -> SlotCounter {
        let dir = root.parent().unwrap();
        let (log, addr_file) = (
            dir.join(format!("{name}.log")),
            dir.join(format!("{name}.addr")),
        );
        let token = random_token();
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
            .arg("--addr-file")
            .arg(&addr_file)
            .env("RUST_LOG", "info")
            .env("CLUSTER_TOKEN", &token)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        SlotCounter {
            child,
            log,
            addr_file,
            token,
        }
    }

    /// The node id it serves as, from its status endpoint once it listens (it claimed a slot).
    async fn node_id(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        let addr = loop {
            if let Some(addr) = std::fs::read_to_string(&self.addr_file)
                .ok()
                .and_then(|text| text.trim().parse::<std::net::SocketAddr>().ok())
            {
                break addr;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the counter exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the counter does not listen:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let status: CounterStatus = reqwest::Client::new()
            .get(format!("http://{addr}/internal/status"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        status.node_id
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: its slot's lock dies with it.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// The identity kept in a slot of a stopped counter's root.
fn slot_node_id(root: &Path, slot: &str) -> String {
    let dir = root.join(slot);
    inspect(
        move || storage::CounterStore::open(&dir, 0),
        |s| s.node_id().unwrap(),
    )
}

#[tokio::test]
async fn replicas_claim_distinct_slots_and_keep_them_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("counters");
    let mut a = SlotCounter::start(&root, "a");
    let id_a = a.node_id().await;
    let mut b = SlotCounter::start(&root, "b");
    let id_b = b.node_id().await;
    assert_ne!(id_a, id_b);

    // The next replica to start after b died takes b's slot, and with it b's identity.
    b.kill();
    let mut c = SlotCounter::start(&root, "c");
    assert_eq!(c.node_id().await, id_b);

    a.kill();
    c.kill();
    assert_eq!(slot_node_id(&root, "slot-00"), id_a);
    assert_eq!(slot_node_id(&root, "slot-01"), id_b);
    assert!(!root.join("slot-02").exists(), "a third slot was made");
}

#[tokio::test]
async fn an_unreadable_slot_is_reported_and_never_reused_empty() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("counters");
    let mut a = SlotCounter::start(&root, "a");
    a.node_id().await;
    a.kill();
    // Corrupt slot-00's database file.
    let db = root.join("slot-00").join("db");
    std::fs::write(&db, vec![0xA5u8; 4096]).unwrap();

    let mut b = SlotCounter::start(&root, "b");
    let id_b = b.node_id().await;
    // The operator is told which slot is bad (the log is the report).
    let error = b
        .log_text()
        .lines()
        .find(|l| l.contains("slot cannot be opened"))
        .map(str::to_owned);
    assert!(
        error
            .as_ref()
            .is_some_and(|e| e.contains("ERROR") && e.contains("slot-00")),
        "{}",
        b.log_text()
    );
    // The bad slot stays refused on later starts too: it is never taken up as an empty replica.
    let mut c = SlotCounter::start(&root, "c");
    let id_c = c.node_id().await;
    b.kill();
    c.kill();
    assert_eq!(slot_node_id(&root, "slot-01"), id_b);
    assert_eq!(slot_node_id(&root, "slot-02"), id_c);
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
