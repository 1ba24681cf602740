//! Full disks (ARCHITECTURE.md, "Full disks"): a counter or a coordinator whose data directory is on a
//! small tmpfs that fills up. The service fails the writes that cannot be made durable, logs the
//! failure once, keeps nothing acknowledged that is not on disk, and restarts itself in place to
//! reopen its database once space is freed; the cluster then catches it up. Needs root (`mount`).

use std::time::{Duration, Instant};

use dc_tests::history::{History, Outcome};
use dc_tests::{batch, Cluster, Options, Tmpfs};
use storage::proto::MemberState;

const CONVERGE: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

/// Room the probe of `service::reopen` needs, and some.
const ROOMY: u64 = 64 * MIB;

/// How often `needle` occurs in `service`'s log.
fn occurrences(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// One counter's disk fills up under writes: it leaves the write set, writes go on, it logs the
/// failure once (not on every call), and once space is back it restarts in place, is caught up and
/// serves the same counts as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_counter_leaves_the_write_set_and_comes_back_when_space_is_freed() {
    let mut c = Cluster::start(Options {
        counters: 2,
        ..Options::default()
    })
    .await
    .unwrap();
    let i = c.define_counter("counter-full");
    let disk = Tmpfs::mount(c.counters[i].data_dir(), ROOMY).unwrap();
    c.start_counter(i, &[]).await.unwrap();
    c.wait_counter_in_sync(i, CONVERGE).await.unwrap();
    let api = c.api_client();
    let h = History::new();
    api.write_acked(&h, "before", 5, 100).await;

    // The disk is full: a few hundred KiB left, less than the writes below need.
    disk.fill(256 << 10).unwrap();
    let url = c.counters[i].url();
    let mut round = 0;
    let deadline = Instant::now() + CONVERGE;
    loop {
        // Every POST succeeds: the two other counters take it.
        api.write_acked(&h, &format!("full-{round}"), 1, 2_000)
            .await;
        round += 1;
        let view = c.view().await.unwrap();
        let member = view.counters.iter().find(|m| m.url == url);
        if member.is_none_or(|m| m.state != MemberState::InSync) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the full counter stayed in sync: {view:?}"
        );
    }
    // Writes go on without it, and once it has noticed the failure its log does not grow with them.
    let deadline = Instant::now() + CONVERGE;
    while !c.counters[i].log_text().contains("the database failed") {
        assert!(Instant::now() < deadline, "the failure was not noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log_before = c.counters[i].log_text();
    api.write_acked(&h, "without", 20, 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = c.counters[i].log_text();
    assert_eq!(
        occurrences(&log, "flush failed"),
        1,
        "one failure line:\n{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .count(),
        log_before
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .count(),
        "no new warnings or errors while it is out:\n{log}"
    );
    assert!(c.counters[i].is_running(), "the full counter keeps running");

    // Space is freed: it restarts in place, recovers, registers, and is caught up.
    disk.unfill().unwrap();
    c.counters[i].wait_restarted_in_place(CONVERGE).unwrap();
    c.wait_counter_in_sync(i, CONVERGE).await.unwrap();
    api.write_acked(&h, "after", 5, 100).await;
    let log = c.counters[i].log_text();
    assert_eq!(occurrences(&log, "the disk takes writes again"), 1, "{log}");
    // Its counts are checked with the others': every running counter at the committed seq, agreeing.
    c.converge_and_check(&h, CONVERGE).await;
    drop(c);
    drop(disk);
}

/// Every counter's disk fills up: POSTs are refused with 507 or 503 and a JSON error that says why,
/// nothing refused is ever counted (the history check), and writes work again once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_every_counter_is_full_writes_are_refused_and_nothing_is_half_applied() {
    let mut c = Cluster::start(Options {
        counters: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    let mut disks = Vec::new();
    for n in 0..2 {
        let i = c.define_counter(&format!("counter-{n}"));
        disks.push(Tmpfs::mount(c.counters[i].data_dir(), ROOMY).unwrap());
        c.start_counter(i, &[]).await.unwrap();
    }
    c.wait_in_sync(2, CONVERGE).await.unwrap();
    let api = c.api_client();
    let h = History::new();
    api.write_acked(&h, "before", 5, 100).await;

    for disk in &disks {
        disk.fill(256 << 10).unwrap();
    }
    let mut refusals = Vec::new();
    let deadline = Instant::now() + CONVERGE;
    for round in 0.. {
        let items = batch(&format!("full-{round}"), 2_000);
        let body: Vec<serde_json::Value> = items
            .iter()
            .map(|(id, tenant)| serde_json::json!({"id": id, "tenant": tenant}))
            .collect();
        let invoked = h.now();
        let resp = api
            .http
            .post(format!("{}/items", api.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let answer: serde_json::Value = resp.json().await.unwrap();
        h.write(invoked, &items, Outcome::from_status(Some(status)));
        if status != 200 {
            assert!(
                status == 507 || status == 503,
                "a full cluster answers 507 or 503, not {status}: {answer}"
            );
            assert_eq!(answer["status"], "failed", "{answer}");
            refusals.push(answer["error"].as_str().unwrap_or_default().to_owned());
            if refusals.len() == 3 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "writes still accepted on full disks"
        );
    }
    assert!(
        refusals.iter().any(|e| e.contains("no space left")),
        "the client is told the disks are full: {refusals:?}"
    );
    // No round half-done: nothing prepared is left behind on the coordinator's side.
    let view = c.view().await.unwrap();
    assert!(
        view.counters.iter().all(|m| m.state != MemberState::InSync),
        "{view:?}"
    );

    for disk in &disks {
        disk.unfill().unwrap();
    }
    for i in 0..2 {
        c.counters[i].wait_restarted_in_place(CONVERGE).unwrap();
    }
    c.wait_in_sync(2, CONVERGE).await.unwrap();
    api.write_acked(&h, "after", 5, 100).await;
    c.converge_and_check(&h, CONVERGE).await;
    drop(c);
    drop(disks);
}

/// The coordinator's disk fills up: writes are refused (the first may be "outcome unknown": its
/// decision may or may not have reached the disk), nothing is acknowledged that is not durable, reads
/// go on, and once space is freed it restarts in place, recovers, and takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_coordinator_refuses_writes_and_recovers_when_space_is_freed() {
    let mut c = Cluster::start(Options {
        counters: 0,
        ..Options::default()
    })
    .await
    .unwrap();
    // The coordinator again, on a small disk of its own (its data directory is empty so far but
    // for the database just created, which it opens anew on the tmpfs).
    c.coordinator.kill();
    let disk = Tmpfs::mount(c.coordinator.data_dir(), ROOMY).unwrap();
    c.start_coordinator(&[]).await.unwrap();
    for _ in 0..2 {
        c.add_counter().await.unwrap();
    }
    c.wait_in_sync(2, CONVERGE).await.unwrap();
    let api = c.api_client();
    let h = History::new();
    api.write_acked(&h, "before", 5, 100).await;

    // sled writes into the log segments it has: the disk is short only once it needs a new one.
    // Whatever was acknowledged until then is durable (the history check below says so).
    disk.fill(0).unwrap();
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for round in 0.. {
        let (outcome, status) = api
            .post_recorded(&h, &batch(&format!("full-{round}"), 10))
            .await;
        if outcome != Outcome::Ok {
            statuses.push(status);
        } else {
            assert!(
                statuses.is_empty(),
                "a write acknowledged after the disk failed: {statuses:?}"
            );
        }
        if status == Some(507) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 507 from a full coordinator: {statuses:?}"
        );
    }
    eprintln!("refused writes on the full disk: {statuses:?}");
    // Reads need no disk of the coordinator's.
    assert_eq!(c.count("before-0").await.unwrap(), 100);
    let log = c.coordinator.log_text();
    assert_eq!(
        occurrences(&log, "flush failed"),
        1,
        "one failure line:\n{log}"
    );

    disk.unfill().unwrap();
    let deadline = Instant::now() + CONVERGE;
    while !c
        .coordinator
        .log_text()
        .contains("the disk takes writes again")
    {
        assert!(
            Instant::now() < deadline,
            "the coordinator did not notice the space"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.coordinator.is_running(), "restarted in place, not exited");
    c.forget_connections();
    let api = c.api_client();
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (outcome, status) = api.post_recorded(&h, &batch("after", 100)).await;
        if outcome == Outcome::Ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes not accepted again: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.converge_and_check(&h, CONVERGE).await;
    drop(c);
    drop(disk);
}
