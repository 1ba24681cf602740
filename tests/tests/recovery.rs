//! Recovery: killed and restarted counters and coordinator come back from their own data, in-doubt
//! transactions are resolved the way the coordinator decided, and a data directory that cannot be
//! opened stops a counter instead of letting it start empty.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use storage::proto::MemberState;

use dc_tests::{bin, copy_dir, Cluster, Options};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(15);

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn node_ids(view: &storage::proto::ClusterView) -> BTreeSet<String> {
    view.counters.iter().map(|c| c.node_id.clone()).collect()
}

/// How many transactions a stopped counter holds prepared on its disk: in doubt when it starts.
fn in_doubt_on_disk(service: &dc_tests::Service) -> usize {
    let dir = service.data_dir().to_owned();
    dc_tests::inspect(
        move || storage::CounterStore::open(&dir, 0),
        |s| s.prepared_txids().unwrap().len(),
    )
}

/// Waits until the coordinator has counter `i` at its current address and in sync; returns its node id.
/// (After a restart the old entry may still say in sync for the old address for a moment.)
async fn wait_member_in_sync(c: &Cluster, i: usize) -> String {
    let url = c.counters[i].url();
    let deadline = Instant::now() + CONVERGE;
    loop {
        let view = c.view().await.unwrap();
        if let Some(m) = view
            .counters
            .iter()
            .find(|m| m.url == url && m.state == MemberState::InSync)
        {
            return m.node_id.clone();
        }
        assert!(
            Instant::now() < deadline,
            "counter {i} ({url}) not in sync: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Coordinator flags for tests that assert no live counter is ever dropped from the write set: calls
/// that time out on a loaded machine (many tests share two cores) would drop one legitimately. A dead
/// counter is still noticed at once (connection refused).
fn patient() -> Vec<String> {
    ["--call-timeout", "10s", "--read-timeout", "10s"]
        .map(String::from)
        .to_vec()
}

fn assert_failed_json(what: &str, status: u16, body: &Value, want: u16) {
    assert_eq!(status, want, "{what}: {body}");
    assert_eq!(body["status"], "failed", "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.trim().is_empty()),
        "{what}: no error text in {body}"
    );
}

#[tokio::test]
async fn killed_counter_catches_up_after_restart() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let before: Vec<String> = (0..10).map(|i| format!("before-{i}")).collect();
    let batch: Vec<(&str, &str)> = before.iter().map(|id| (id.as_str(), "r")).collect();
    c.post_ok(&batch).await.unwrap();
    let ids = node_ids(&c.view().await.unwrap());
    let node0 = c.counter_status(0).await.unwrap().node_id;

    c.counters[0].kill();
    // Two counters left: every write succeeds, the first one drops the dead counter from the write set.
    for i in 0..20 {
        let (status, body) = c
            .post(&[(&format!("missed-{i}"), "r"), (&format!("m-{i}"), "missed")])
            .await
            .unwrap();
        assert_eq!(status, 200, "write {i} with counter 0 down: {body}");
    }
    assert_eq!(c.count("r").await.unwrap(), 30);
    let view = c.view().await.unwrap();
    assert!(
        view.counters
            .iter()
            .filter(|m| m.node_id == node0)
            .all(|m| m.state != MemberState::InSync),
        "a dead counter is still in sync: {view:?}"
    );

    // Writes go on while it restarts and catches up; every one of them succeeds.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let (http, url) = (c.http.clone(), c.url());
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        while !*stopped.borrow_and_update() {
            let body = format!(r#"[{{"id":"during-{n}","tenant":"during"}}]"#);
            let resp = http
                .post(format!("{url}/items"))
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            assert_eq!(
                status,
                200,
                "write {n} during the catch-up: {:?}",
                resp.text().await
            );
            n += 1;
        }
        n
    });
    c.start_counter(0, &[]).await.unwrap();
    wait_member_in_sync(&c, 0).await;
    stop.send(true).unwrap();
    let during = writer.await.unwrap();
    let counts = c
        .converged(&strings(&["r", "missed", "during"]), CONVERGE)
        .await
        .unwrap();
    assert_eq!(counts["r"], 30);
    assert_eq!(counts["missed"], 20);
    assert_eq!(counts["during"], during);
    assert!(during > 0);

    // Counter 0 itself, asked directly: same identity, at the committed seq, with old and missed items.
    let view = c.view().await.unwrap();
    let status = c.counter_status(0).await.unwrap();
    assert_eq!(
        status.node_id, node0,
        "the restarted counter has a new identity"
    );
    assert_eq!(status.last_applied, view.committed_seq);
    assert_eq!(c.counter_count(0, "r").await.unwrap(), 30);
    assert_eq!(c.counter_count(0, "missed").await.unwrap(), 20);
    assert_eq!(
        node_ids(&view),
        ids,
        "the registration table changed members"
    );
    assert!(
        view.counters.iter().all(|m| m.state == MemberState::InSync),
        "{view:?}"
    );

    // And it takes part in writes again.
    c.post_ok(&[("after", "r")]).await.unwrap();
    c.applied_everywhere(CONVERGE).await.unwrap();
    assert_eq!(c.counter_count(0, "r").await.unwrap(), 31);
}

#[tokio::test]
async fn coordinator_restart_keeps_registry_without_counter_restarts() {
    let mut c = Cluster::start(Options {
        coordinator_args: patient(),
        ..Options::default()
    })
    .await
    .unwrap();
    for i in 0..5 {
        c.post_ok(&[(&format!("{i}"), "co"), (&format!("x{i}"), "other")])
            .await
            .unwrap();
    }
    let before = c.view().await.unwrap();
    assert_eq!(before.committed_seq, 5);
    let pids: Vec<u32> = c.counters.iter().map(|s| s.pid().unwrap()).collect();
    let last_txid = c.counter_status(0).await.unwrap().last_txid;

    c.restart_coordinator().await.unwrap();

    // The table is read back from disk: same members at the same addresses, all in sync, same seq.
    let after = c.view().await.unwrap();
    assert_eq!(after.committed_seq, before.committed_seq);
    let members = |v: &storage::proto::ClusterView| -> Vec<(String, String, MemberState)> {
        v.counters
            .iter()
            .map(|m| (m.node_id.clone(), m.url.clone(), m.state))
            .collect()
    };
    assert_eq!(members(&after), members(&before));
    assert!(
        after
            .counters
            .iter()
            .all(|m| m.state == MemberState::InSync),
        "{after:?}"
    );

    // Reads and writes work at once; seqs continue after the old ones.
    assert_eq!(c.count("co").await.unwrap(), 5);
    for i in 5..15 {
        c.post_ok(&[(&format!("{i}"), "co")]).await.unwrap();
        assert_eq!(c.count("co").await.unwrap(), i + 1);
    }
    c.post_ok(&[("0", "co"), ("x0", "other")]).await.unwrap(); // a re-send: counted once
    assert_eq!(
        c.view().await.unwrap().committed_seq,
        before.committed_seq + 11,
        "seqs reused or skipped"
    );
    assert_eq!(c.count("co").await.unwrap(), 15);
    assert_eq!(c.count("other").await.unwrap(), 5);

    // Killed again right after one write, twice: txids and seqs keep moving forward (a reused txid
    // would be refused by every counter as stale).
    for round in 0..2 {
        c.post_ok(&[(&format!("again-{round}"), "again")])
            .await
            .unwrap();
        c.restart_coordinator().await.unwrap();
    }
    c.post_ok(&[("again-2", "again")]).await.unwrap();
    assert_eq!(c.count("again").await.unwrap(), 3);
    assert_eq!(c.count("co").await.unwrap(), 15);

    // Every counter took part in every write since the restarts (at the committed seq, never caught
    // up), under the same process, started once.
    c.applied_everywhere(CONVERGE).await.unwrap();
    let view = c.view().await.unwrap();
    assert_eq!(view.committed_seq, before.committed_seq + 14);
    assert_eq!(
        members(&view),
        members(&before),
        "the registration table changed"
    );
    for (i, m) in view.counters.iter().enumerate() {
        assert_eq!(
            (m.synced_entries, m.synced_snapshot_items),
            (0, 0),
            "counter {i} was caught up: {m:?}"
        );
    }
    for (i, &pid) in pids.iter().enumerate() {
        assert!(c.counters[i].is_running(), "counter {i} died");
        assert_eq!(c.counters[i].pid(), Some(pid), "counter {i} was restarted");
        let status = c.counter_status(i).await.unwrap();
        assert_eq!(status.last_applied, view.committed_seq, "counter {i}");
        assert!(
            status.last_txid > last_txid,
            "counter {i}: txid {} not after {last_txid}",
            status.last_txid
        );
        assert_eq!(c.counter_count(i, "co").await.unwrap(), 15, "counter {i}");
    }
}

#[tokio::test]
async fn in_doubt_commit_is_resolved_after_restart() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    c.post_ok(&[("before", "d")]).await.unwrap();
    c.counters[0].kill();
    c.start_counter(0, &[("DC_CRASH_AT", "counter-after-prepare")])
        .await
        .unwrap();
    wait_member_in_sync(&c, 0).await;
    c.wait_in_sync(3, CONVERGE).await.unwrap();

    // Counter 0 votes... and dies right after its prepared record is on disk. The others commit.
    let (status, body) = c.post(&[("doubt", "d"), ("doubt", "d2")]).await.unwrap();
    assert_eq!(
        status, 200,
        "the POST must succeed via the other counters: {body}"
    );
    let exit = c.counters[0].wait_exit(Duration::from_secs(10)).unwrap();
    assert!(!exit.success(), "counter 0 exited with {exit}");
    assert!(c.counters[0].log_text().contains("crash point reached"));
    assert_eq!(c.count("d").await.unwrap(), 2);
    // The YES vote was given with the record on disk: it survived the crash, in doubt.
    assert_eq!(
        in_doubt_on_disk(&c.counters[0]),
        1,
        "the prepared record did not survive"
    );

    c.start_counter(0, &[]).await.unwrap();
    let counts = c.converged(&strings(&["d", "d2"]), CONVERGE).await.unwrap();
    assert_eq!((counts["d"], counts["d2"]), (2, 1));
    assert_eq!(c.counter_count(0, "d").await.unwrap(), 2);
    assert_eq!(c.counter_count(0, "d2").await.unwrap(), 1);

    // Resolved durably, not left behind: killed again, it holds nothing in doubt.
    c.counters[0].kill();
    assert_eq!(
        in_doubt_on_disk(&c.counters[0]),
        0,
        "the in-doubt record is still there"
    );
    c.start_counter(0, &[]).await.unwrap();
    c.converged(&strings(&["d"]), CONVERGE).await.unwrap();
    assert_eq!(c.counter_count(0, "d").await.unwrap(), 2);
}

#[tokio::test]
async fn in_doubt_abort_is_never_counted() {
    let mut c = Cluster::start(Options {
        coordinator_args: [vec!["--min-replicas".into(), "3".into()], patient()].concat(),
        ..Options::default()
    })
    .await
    .unwrap();
    c.post_ok(&[("before", "ok")]).await.unwrap();
    let seq = c.view().await.unwrap().committed_seq;
    c.counters[0].kill();
    c.start_counter(0, &[("DC_CRASH_AT", "counter-after-prepare")])
        .await
        .unwrap();
    wait_member_in_sync(&c, 0).await;
    c.wait_in_sync(3, CONVERGE).await.unwrap();

    // Counter 0 prepares and dies: two YES of three needed, the round aborts.
    let (status, body) = c.post(&[("ghost", "g"), ("ghost2", "g")]).await.unwrap();
    assert_failed_json(
        "POST with only 2 of 3 replicas prepared",
        status,
        &body,
        503,
    );
    let exit = c.counters[0].wait_exit(Duration::from_secs(10)).unwrap();
    assert!(!exit.success(), "counter 0 exited with {exit}");
    // While it is down, writes are refused too, and nothing is committed.
    let (status, body) = c.post(&[("ghost3", "g")]).await.unwrap();
    assert_failed_json("POST with 2 counters, 3 needed", status, &body, 503);
    assert_eq!(c.view().await.unwrap().committed_seq, seq);
    for i in 1..3 {
        assert_eq!(c.counter_count(i, "g").await.unwrap(), 0, "counter {i}");
    }

    assert_eq!(
        in_doubt_on_disk(&c.counters[0]),
        1,
        "the prepared record did not survive"
    );

    c.start_counter(0, &[]).await.unwrap();
    let counts = c.converged(&strings(&["g", "ok"]), CONVERGE).await.unwrap();
    assert_eq!((counts["g"], counts["ok"]), (0, 1));
    for i in 0..3 {
        assert_eq!(
            c.counter_count(i, "g").await.unwrap(),
            0,
            "counter {i} counts an aborted item"
        );
    }
    assert_eq!(c.count("g").await.unwrap(), 0);

    // All three back: writes work again, and the aborted items stay uncounted.
    c.post_ok(&[("real", "g2")]).await.unwrap();
    assert_eq!(c.applied_everywhere(CONVERGE).await.unwrap(), seq + 1);
    for i in 0..3 {
        assert_eq!(c.counter_count(i, "g2").await.unwrap(), 1, "counter {i}");
        assert_eq!(c.counter_count(i, "g").await.unwrap(), 0, "counter {i}");
    }
    // Resolved, not left behind: stopped, counter 0 holds nothing in doubt, and a restart does not
    // bring the aborted transaction back. (A rollback is not flushed on its own, so a kill could
    // leave the record; after a restart the coordinator answers abort again.)
    c.counters[0].terminate();
    let exit = c.counters[0].wait_exit(CONVERGE).unwrap();
    assert!(exit.success(), "counter 0 exited with {exit}");
    assert_eq!(
        in_doubt_on_disk(&c.counters[0]),
        0,
        "the in-doubt record is still there"
    );
    c.start_counter(0, &[]).await.unwrap();
    c.converged(&strings(&["g"]), CONVERGE).await.unwrap();
    assert_eq!(c.counter_count(0, "g").await.unwrap(), 0);
}

/// Restarts counter `i` after `corrupt` changed its stopped data directory; asserts it refuses to start.
async fn assert_refuses_corrupt_dir(
    c: &mut Cluster,
    i: usize,
    what: &str,
    corrupt: impl FnOnce(&std::path::Path),
) {
    c.counters[i].kill();
    corrupt(c.counters[i].data_dir());
    let log_before = c.counters[i].log_text().len();
    let started = c.start_counter(i, &[]).await;
    let exit = match started {
        // Listening means it opened the directory: the test fails below with what it serves.
        Ok(()) => {
            let status = c.counter_status(i).await;
            let count = c.counter_count(i, "t").await;
            c.counters[i].kill();
            panic!("{what}: the counter started anyway (status {status:?}, count of t {count:?})");
        }
        Err(_) => c.counters[i].wait_exit(Duration::from_secs(10)).unwrap(),
    };
    let log = c.counters[i].log_text()[log_before..].to_owned();
    assert!(!exit.success(), "{what}: exit status {exit}");
    assert_eq!(
        exit.code(),
        Some(1),
        "{what}: expected a clean error exit, got {exit}:\n{log}"
    );
    assert!(
        log.contains("cannot open data directory"),
        "{what}: the log does not say why:\n{log}"
    );
    assert!(!log.contains("listening"), "{what}:\n{log}");
    eprintln!("{what}: {}", log.lines().last().unwrap_or_default());
}

#[tokio::test]
async fn unreadable_data_dir_stops_the_counter() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    c.post_ok(&[("1", "t"), ("2", "t")]).await.unwrap();
    let members = node_ids(&c.view().await.unwrap());

    // sled's main file overwritten with noise.
    assert_refuses_corrupt_dir(&mut c, 0, "garbage in db", |dir| {
        let file = dir.join("db");
        let len = std::fs::metadata(&file).unwrap().len() as usize;
        std::fs::write(&file, noise(len.max(4096), 1)).unwrap();
    })
    .await;
    // sled's config file overwritten with noise.
    assert_refuses_corrupt_dir(&mut c, 1, "garbage in conf", |dir| {
        let file = dir.join("conf");
        let len = std::fs::metadata(&file).unwrap().len() as usize;
        std::fs::write(&file, noise(len.max(64), 2)).unwrap();
    })
    .await;
    // sled's main file gone (what an emptied volume looks like).
    assert_refuses_corrupt_dir(&mut c, 2, "db removed", |dir| {
        std::fs::remove_file(dir.join("db")).unwrap();
    })
    .await;

    // No empty replica joined under a new identity (the dead ones may have been removed by now).
    let view = c.view().await.unwrap();
    assert!(node_ids(&view).is_subset(&members), "{view:?}");
}

/// Deterministic noise (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn second_counter_on_the_same_data_dir_is_refused() {
    let mut c = Cluster::start(Options {
        counters: 2,
        ..Options::default()
    })
    .await
    .unwrap();
    c.post_ok(&[("1", "t")]).await.unwrap();
    let log_path = c.dir.path().join("intruder.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut intruder = Command::new(bin("counter"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--coordinator-url",
            &c.coordinator.internal_url(),
            "--data-dir",
        ])
        .arg(c.counters[0].data_dir())
        .env("RUST_LOG", "info")
        .env("CLUSTER_TOKEN", &c.token)
        .env_remove("DC_CRASH_AT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = intruder.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = intruder.kill();
            let _ = intruder.wait();
            panic!(
                "a second counter on the same data dir kept running:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(exit.code(), Some(1), "exit {exit}:\n{text}");
    assert!(
        text.contains("in use"),
        "the log does not say the directory is in use:\n{text}"
    );

    // The owner is unaffected.
    assert!(c.counters[0].is_running());
    c.post_ok(&[("2", "t")]).await.unwrap();
    let counts = c.converged(&strings(&["t"]), CONVERGE).await.unwrap();
    assert_eq!(counts["t"], 2);
    assert_eq!(c.view().await.unwrap().counters.len(), 2);
}

#[tokio::test]
async fn coordinator_restart_while_counters_are_down() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    for i in 0..10 {
        c.post_ok(&[(&format!("{i}"), "down"), ("same", "other")])
            .await
            .unwrap();
    }
    let before = c.view().await.unwrap();
    for s in &mut c.counters {
        s.kill();
    }
    c.coordinator.kill();
    c.start_coordinator(&[]).await.unwrap();
    assert_eq!(c.view().await.unwrap().committed_seq, before.committed_seq);

    // No counter: a read is refused (never a wrong count), and so is a write, which is never counted.
    let (status, body) = c.get("/items/down/count").await.unwrap();
    assert_failed_json("GET with every counter down", status, &body, 503);
    let (status, body) = c.post(&[("phantom", "down")]).await.unwrap();
    assert_failed_json("POST with every counter down", status, &body, 503);

    for i in 0..c.counters.len() {
        c.start_counter(i, &[]).await.unwrap();
    }
    let counts = c
        .converged(&strings(&["down", "other"]), CONVERGE)
        .await
        .unwrap();
    assert_eq!((counts["down"], counts["other"]), (10, 1));
    let view = c.view().await.unwrap();
    assert_eq!(view.committed_seq, before.committed_seq);
    assert_eq!(node_ids(&view), node_ids(&before), "{view:?}");
    assert_eq!(c.count("down").await.unwrap(), 10);

    c.post_ok(&[("10", "down")]).await.unwrap();
    assert_eq!(c.count("down").await.unwrap(), 11);
    let counts = c.converged(&strings(&["down"]), CONVERGE).await.unwrap();
    assert_eq!(counts["down"], 11);
}

/// The coordinator's decision log stays bounded: once every counter acknowledged a round durably its
/// decision is pruned, while a counter that is down holds pruning back (it may still ask for an
/// outcome) until it is caught up or removed.
#[tokio::test]
async fn the_decision_log_stays_bounded() {
    // A counter that is down stays registered (lagging) for the whole test.
    let mut c = Cluster::start(Options {
        coordinator_args: vec!["--health-attempts".into(), "1000".into()],
        ..Options::default()
    })
    .await
    .unwrap();
    let client = c.api_client();
    let history = dc_tests::history::History::new();
    client.write_acked(&history, "bounded", 300, 1).await;
    let view = wait_kept(&c, 3).await;
    assert!(view.committed_seq >= 300);

    // A counter down: its rounds' decisions stay until it is back and caught up.
    c.counters[2].kill();
    client.write_acked(&history, "held", 50, 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await; // two prune intervals of 300 ms
    assert!(
        c.view().await.unwrap().decisions_kept >= 50,
        "decisions pruned while a counter that voted in them was down"
    );
    c.start_counter(2, &[]).await.unwrap();
    c.wait_counter_in_sync(2, CONVERGE).await.unwrap();
    wait_kept(&c, 3).await;
    let counts = c
        .converged(&history.tenants().into_iter().collect::<Vec<_>>(), CONVERGE)
        .await
        .unwrap();
    let report = history.check(&counts);
    assert!(report.ok(), "{report}");
}

/// Waits until the coordinator keeps at most `most` decisions.
async fn wait_kept(c: &Cluster, most: usize) -> storage::proto::ClusterView {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let view = c.view().await.unwrap();
        if view.decisions_kept <= most {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "{} decisions kept after {} rounds",
            view.decisions_kept,
            view.committed_seq
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A coordinator restarted on an older copy of its data is behind its counters: it refuses them
/// rather than reuse their seqs, so writes are refused (503) and no acknowledged write is lost.
#[tokio::test]
async fn a_coordinator_restored_from_an_older_copy_refuses_counters_ahead_of_it() {
    let mut c = Cluster::start(Options {
        counters: 2,
        ..Options::default()
    })
    .await
    .unwrap();
    c.post_ok(&[("1", "t")]).await.unwrap();
    // A copy of the coordinator's data as a kill leaves it, taken at seq 1.
    c.coordinator.kill();
    let old = c.dir.path().join("coordinator-old");
    copy_dir(c.coordinator.data_dir(), &old);
    c.start_coordinator(&[]).await.unwrap();
    c.wait_in_sync(2, CONVERGE).await.unwrap();
    for i in 2..6 {
        c.post_ok(&[(&i.to_string(), "t")]).await.unwrap();
    }
    assert_eq!(c.count("t").await.unwrap(), 5);

    // Back to the old copy.
    c.coordinator.kill();
    std::fs::remove_dir_all(c.coordinator.data_dir()).unwrap();
    std::fs::rename(&old, c.coordinator.data_dir()).unwrap();
    c.start_coordinator(&[]).await.unwrap();
    // Both counters re-register (every 300 ms), are refused and leave the write set.
    let deadline = Instant::now() + CONVERGE;
    loop {
        let view = c.view().await.unwrap();
        if view.counters.iter().all(|m| m.state != MemberState::InSync) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters ahead still in sync: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = c.post(&[("6", "t")]).await.unwrap();
    assert_eq!(status, 503, "{body}");
    // Nothing acknowledged was lost or overwritten on the counters.
    for i in 0..2 {
        assert_eq!(c.counter_count(i, "t").await.unwrap(), 5);
    }
    assert!(c
        .coordinator
        .log_text()
        .contains("ahead of this coordinator"));
}
