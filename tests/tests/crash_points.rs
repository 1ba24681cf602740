//! One test per named crash point (see `storage::crash`): a process dies at exactly that step of 2PC or
//! of catch-up, is restarted without the crash point, and the cluster must converge with every
//! invariant of ARCHITECTURE.md intact: no lost write, no phantom write, atomic batches. When the coordinator
//! dies after its COMMIT decision was flushed, the in-doubt batch must end up counted on every counter
//! even though its client saw an error.
//!
//! Every test first checks that the armed process really died at its point (SIGABRT and the point's
//! name in its log), so a crash point that is never reached fails the test instead of passing it.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use dc_tests::history::{History, Outcome};
use dc_tests::{batch, inspect, Cluster, Load, Options, Service};
use storage::proto::{paths, RegisterRequest};

const CONVERGE: Duration = Duration::from_secs(15);
const CRASH_WAIT: Duration = Duration::from_secs(15);
const SIGABRT: i32 = 6;

fn small_pages(log_retention: u64) -> Options {
    Options {
        log_retention,
        coordinator_args: vec!["--sync-page-items".into(), "10".into()],
        ..Options::default()
    }
}

/// Waits for `service` to die at crash point `point`; fails the test if it does not.
fn assert_crashed(service: &mut Service, point: &str) {
    let status = tokio::task::block_in_place(|| service.wait_exit(CRASH_WAIT))
        .unwrap_or_else(|e| panic!("crash point {point} was never reached: {e:#}"));
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "expected an abort at {point}, got {status}"
    );
    let log = service.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("crash point reached") && l.contains(point)),
        "the log does not show crash point {point}:\n{log}"
    );
}

/// `(last_applied, in_doubt)` on the disk of a stopped counter: what it will find when it starts.
fn on_disk(service: &Service) -> (u64, usize) {
    let dir = service.data_dir().to_owned();
    inspect(
        move || storage::CounterStore::open(&dir, 0),
        |s| (s.last_applied().unwrap(), s.prepared_txids().unwrap().len()),
    )
}

/// Restarts counter `i` with `point` armed and waits until it is back in the write set, so the next
/// round includes it. Stopped gracefully first: a kill could leave its last COMMIT in doubt, and
/// redoing it after the restart would reach the armed point before the round under test does.
async fn arm_counter(cluster: &mut Cluster, i: usize, point: &str) {
    cluster.counters[i].terminate();
    let status = cluster.counters[i].wait_exit(CONVERGE).unwrap();
    assert!(status.success(), "counter {i} exited with {status}");
    cluster
        .start_counter(i, &[("DC_CRASH_AT", point)])
        .await
        .unwrap();
    cluster.wait_counter_in_sync(i, CONVERGE).await.unwrap();
}

/// A counter dies at a 2PC step of the next round; the round goes on with the others and the client
/// sees success. Then the counter comes back and catches up.
async fn counter_2pc_crash(point: &str) {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let api = c.api_client();
    let h = History::new();
    api.write_acked(&h, "before", 5, 3).await;

    arm_counter(&mut c, 0, point).await;
    let (outcome, status) = api.post_recorded(&h, &batch("in-round", 5)).await;
    assert_eq!(
        outcome,
        Outcome::Ok,
        "a counter dying at {point} must not fail the write: {status:?}"
    );
    assert_crashed(&mut c.counters[0], point);
    // Sequential POSTs: the last round is the one the counter died in.
    let seq = c.view().await.unwrap().committed_seq;

    api.write_acked(&h, "while-down", 5, 3).await;
    // What the counter promised before dying is on its disk.
    let (last_applied, in_doubt) = on_disk(&c.counters[0]);
    c.start_counter(0, &[]).await.unwrap();
    if point == "counter-after-prepare" {
        assert_eq!(
            (last_applied, in_doubt),
            (seq - 1, 1),
            "restarted with the prepared record of seq {seq} in doubt"
        );
    } else {
        // A COMMIT is applied, not flushed, before it is acknowledged: the commit is on disk if a
        // flush (sled's own, every half second) came between, otherwise its prepared record is.
        assert!(
            [(seq, 0), (seq - 1, 1)].contains(&(last_applied, in_doubt)),
            "restarted with neither commit {seq} nor its prepared record: applied {last_applied}, \
             {in_doubt} in doubt"
        );
    }
    c.wait_counter_in_sync(0, CONVERGE).await.unwrap();
    api.write_acked(&h, "after", 3, 3).await;

    let counts = c.converge_and_check(&h, CONVERGE).await;
    assert_eq!(counts["in-round"], 5);
    if point == "counter-after-prepare" {
        assert!(
            c.counters[0]
                .log_text()
                .contains("in-doubt transaction committed"),
            "the restarted counter did not ask for the outcome of its in-doubt transaction"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_after_prepare() {
    counter_2pc_crash("counter-after-prepare").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_after_commit() {
    counter_2pc_crash("counter-after-commit").await;
}

/// A COMMIT acknowledged before its flush, then the crash: the counter dies in the next round, before
/// that round's flush would have made the acknowledged commit durable. What it acknowledged comes back:
/// its prepared record was on disk, and the coordinator kept its decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_crash_before_an_acknowledged_commit_is_flushed() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let api = c.api_client();
    let h = History::new();
    api.write_acked(&h, "before", 5, 3).await;

    // Its first PREPARE after the restart is the round that commits; the second one dies.
    let point = "counter-before-prepare-flush";
    arm_counter(&mut c, 0, &format!("{point}:2")).await;
    api.write_acked(&h, "acked", 1, 5).await;
    let acked_seq = c.applied_everywhere(CONVERGE).await.unwrap();
    let me = c.counter_status(0).await.unwrap();
    assert_eq!(
        me.last_applied, acked_seq,
        "counter 0 did not apply the round"
    );
    let (outcome, status) = api.post_recorded(&h, &batch("next", 5)).await;
    assert_eq!(outcome, Outcome::Ok, "{status:?}");
    assert_crashed(&mut c.counters[0], point);

    let (last_applied, in_doubt) = on_disk(&c.counters[0]);
    eprintln!(
        "on disk after the crash: applied {last_applied}, {in_doubt} in doubt (acknowledged \
         {acked_seq})"
    );
    assert!(
        last_applied == acked_seq || (last_applied == acked_seq - 1 && in_doubt >= 1),
        "the acknowledged commit {acked_seq} is neither applied nor in doubt on disk: applied \
         {last_applied}, {in_doubt} in doubt"
    );
    c.start_counter(0, &[]).await.unwrap();
    c.wait_counter_in_sync(0, CONVERGE).await.unwrap();
    let counts = c.converge_and_check(&h, CONVERGE).await;
    assert_eq!((counts["acked-0"], counts["next"]), (5, 5));
    assert_eq!(c.counter_count(0, "acked-0").await.unwrap(), 5);
}

/// Counter 0 misses `backlog` rounds of 3 items each while down, then restarts with `point` armed so
/// that its catch-up (pages of 10 items) kills it; writes go on meanwhile. Restarted without the point,
/// it must catch up and converge. Returns the cluster and the history for further checks.
async fn counter_sync_crash(options: Options, backlog: usize, point: &str) -> (Cluster, History) {
    let mut c = Cluster::start(options).await.unwrap();
    let api = c.api_client();
    let h = Arc::new(History::new());
    api.write_acked(&h, "before", 5, 3).await;
    // Applied and flushed: the kill loses none of them, so catch-up starts from here.
    let applied_before = c.applied_everywhere(CONVERGE).await.unwrap();
    c.wait_durable(0, applied_before, CONVERGE).await.unwrap();

    c.counters[0].kill();
    api.write_acked(&h, "backlog", backlog, 3).await;

    c.start_counter(0, &[("DC_CRASH_AT", point)]).await.unwrap();
    let load = Load::start(
        api.clone(),
        h.clone(),
        "during",
        2,
        3,
        Duration::from_millis(10),
        true,
    );
    assert_crashed(&mut c.counters[0], point);
    let (last_applied, _) = on_disk(&c.counters[0]);
    c.start_counter(0, &[]).await.unwrap();
    if point == "counter-mid-snapshot" {
        // Snapshot items do not move the position until the snapshot is finished.
        assert_eq!(
            last_applied, applied_before,
            "position after a partial snapshot"
        );
    } else {
        assert!(
            applied_before < last_applied && last_applied < applied_before + backlog as u64,
            "expected a partial catch-up: applied {last_applied}, from {applied_before} to at \
             least {}",
            applied_before + backlog as u64
        );
    }
    c.wait_counter_in_sync(0, CONVERGE).await.unwrap();
    let stats = load.stop().await;
    assert_eq!(
        stats.count(Outcome::Ok),
        stats.outcomes.len(),
        "a counter crashing in catch-up must not fail writes: {:?}",
        stats.outcomes
    );

    let counts = c.converge_and_check(&h, CONVERGE).await;
    for i in 0..backlog {
        assert_eq!(counts[&format!("backlog-{i}")], 3);
    }
    let h = Arc::try_unwrap(h).unwrap_or_else(|_| panic!("history still shared"));
    (c, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_mid_sync() {
    counter_sync_crash(small_pages(100_000), 30, "counter-mid-sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counter_mid_snapshot() {
    let (c, _) = counter_sync_crash(small_pages(5), 20, "counter-mid-snapshot").await;
    let view = c.wait_counter_in_sync(0, CONVERGE).await.unwrap();
    assert!(
        view.synced_snapshot_items > 0,
        "the log was trimmed, so a snapshot was expected: {view:?}"
    );
}

/// Makes the coordinator flush its database now, by sending counter 0's periodic registration (the
/// handler flushes before answering). The coordinator marks a round's phase 2 finished without a
/// flush (a lost mark only makes it redo that phase 2 on start), so after a SIGKILL it may redo the
/// last round's phase 2 while recovering, and an armed `coordinator-mid-phase2` would fire there
/// instead of in the round under test.
async fn flush_coordinator(c: &Cluster) {
    let status = c.counter_status(0).await.unwrap();
    let request = RegisterRequest {
        node_id: status.node_id,
        url: c.counters[0].url(),
        last_applied: status.last_applied,
        cluster_id: status.cluster_id,
    };
    let resp = c
        .internal(
            reqwest::Method::POST,
            format!("{}{}", c.coordinator.internal_url(), paths::REGISTER),
        )
        .json(&request)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "register answered {}",
        resp.status()
    );
}

/// The coordinator dies at a step after its COMMIT decision for a batch is flushed; `answered` is what
/// the client may have seen by then. After the restart the batch must be counted on every counter.
/// `committed_before`: how many counters may count the batch while the coordinator is down (those
/// that got COMMIT before it died, or asked it after the decision).
async fn coordinator_decision_crash(
    point: &str,
    answered: &[Outcome],
    committed_before: std::ops::RangeInclusive<usize>,
) {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let api = c.api_client();
    let h = History::new();
    api.write_acked(&h, "before", 5, 3).await;
    // Phase 2 of the last of them done: the armed restart has no phase 2 to redo, and crashes in the
    // round below.
    c.applied_everywhere(CONVERGE).await.unwrap();

    flush_coordinator(&c).await;
    c.coordinator.kill();
    c.start_coordinator(&[("DC_CRASH_AT", point)])
        .await
        .unwrap();
    c.wait_in_sync(3, CONVERGE).await.unwrap();
    // Alone, so the crashing round holds exactly this batch.
    let (outcome, status) = api.post_recorded(&h, &batch("in-doubt", 5)).await;
    assert!(
        answered.contains(&outcome),
        "answered {outcome:?} ({status:?}), expected one of {answered:?}"
    );
    assert_crashed(&mut c.coordinator, point);

    // While the coordinator is down, only counters it told, or that asked it after the decision (their
    // periodic in-doubt check), can count the batch.
    let mut counting = 0;
    for i in 0..c.counters.len() {
        match c.counter_count(i, "in-doubt").await.unwrap() {
            0 => {}
            5 => counting += 1,
            n => panic!("counter {i} counts {n} of the 5 in-doubt items"),
        }
    }
    assert!(
        committed_before.contains(&counting),
        "{counting} counters applied the batch before recovery, expected {committed_before:?}"
    );

    c.start_coordinator(&[]).await.unwrap();
    let api = c.api_client();
    api.write_acked(&h, "after", 3, 3).await;
    let counts = c.converge_and_check(&h, CONVERGE).await;
    assert_eq!(
        counts["in-doubt"], 5,
        "the decision was flushed before {point}: the batch is committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_after_decision() {
    // The round is still "voting" until the crash, so an in-doubt check hears "pending"; the client is
    // answered only after this step.
    coordinator_decision_crash("coordinator-after-decision", &[Outcome::Unknown], 0..=0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_mid_phase2() {
    // One participant got COMMIT; others may have learned the decision by asking. The client was
    // answered at the decision, unless the process died before the answer left it.
    coordinator_decision_crash(
        "coordinator-mid-phase2",
        &[Outcome::Ok, Outcome::Unknown],
        1..=3,
    )
    .await;
}

/// The coordinator dies after pushing one catch-up page to a lagging counter, with writes in flight.
/// Restarted without the point, it must finish the catch-up and converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_mid_sync() {
    let point = "coordinator-mid-sync";
    let mut c = Cluster::start(small_pages(100_000)).await.unwrap();
    let api = c.api_client();
    let h = Arc::new(History::new());
    api.write_acked(&h, "before", 5, 3).await;
    let applied_before = c.view().await.unwrap().committed_seq;

    c.counters[0].kill();
    api.write_acked(&h, "backlog", 30, 3).await;

    c.coordinator.kill();
    c.start_coordinator(&[("DC_CRASH_AT", point)])
        .await
        .unwrap();
    let load = Load::start(
        c.api_client(),
        h.clone(),
        "during",
        2,
        3,
        Duration::from_millis(10),
        true,
    );
    c.start_counter(0, &[]).await.unwrap();
    assert_crashed(&mut c.coordinator, point);
    // The counter kept the page it was sent, and no more.
    let at = c.counter_status(0).await.unwrap().last_applied;
    assert!(
        applied_before < at && at < applied_before + 30,
        "expected a partial catch-up: applied {at}, from {applied_before} to at least {}",
        applied_before + 30
    );
    let stats = load.stop().await;
    eprintln!(
        "load around the crash: {} acknowledged, {} unknown, {} refused",
        stats.count(Outcome::Ok),
        stats.count(Outcome::Unknown),
        stats.count(Outcome::Failed)
    );

    c.start_coordinator(&[]).await.unwrap();
    c.wait_counter_in_sync(0, CONVERGE).await.unwrap();
    let api = c.api_client();
    api.write_acked(&h, "after", 3, 3).await;
    let counts = c.converge_and_check(&h, CONVERGE).await;
    for i in 0..30 {
        assert_eq!(counts[&format!("backlog-{i}")], 3);
    }
}
