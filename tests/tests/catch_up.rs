//! Catch-up of lagging counters (ARCHITECTURE.md, "Catch-up"): incremental from the log,
//! snapshot when the log was trimmed, writes flowing while a sync runs, rejoining without a restart,
//! write availability while a counter dies, and the readiness a rolling update waits for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::proto::MemberState;

use dc_tests::history::{History, Outcome};
use dc_tests::{batch, bin, Cluster, Load, Options};

const CONVERGE: Duration = Duration::from_secs(15);

fn assert_all(counts: &BTreeMap<String, u64>, prefix: &str, n: usize, size: u64) {
    for i in 0..n {
        let tenant = format!("{prefix}-{i}");
        assert_eq!(counts[&tenant], size, "count of {tenant}");
    }
}

fn kill_signal(signal: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// A counter that was down for a while gets exactly the commits it missed from the log, no snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incremental_catch_up_sends_only_the_missed_commits() {
    const N: usize = 10;
    const M: usize = 25;
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let api = c.api_client();
    let h = History::new();
    api.write_acked(&h, "before", N, 3).await;

    let committed = c.applied_everywhere(Duration::from_secs(10)).await.unwrap();
    let applied_before = c.counter_status(0).await.unwrap().last_applied;
    assert_eq!(applied_before, committed);
    // Flushed too: the kill below loses no commit, so the restarted counter misses exactly the M.
    c.wait_durable(0, committed, CONVERGE).await.unwrap();
    c.counters[0].kill();
    api.write_acked(&h, "missed", M, 3).await;
    let committed = c.view().await.unwrap().committed_seq;
    let missed = committed - applied_before;
    // Sequential POSTs are one round each.
    assert_eq!(missed, M as u64, "rounds while counter 0 was down");

    c.start_counter(0, &[]).await.unwrap();
    let view = c.wait_counter_in_sync(0, CONVERGE).await.unwrap();
    assert_eq!(
        view.synced_entries, missed,
        "log entries sent to the restarted counter: {view:?}"
    );
    assert_eq!(
        view.synced_snapshot_items, 0,
        "the log reached back far enough: no snapshot expected: {view:?}"
    );

    let counts = c.converge_and_check(&h, CONVERGE).await;
    assert_all(&counts, "before", N, 3);
    assert_all(&counts, "missed", M, 3);
}

/// When the log no longer reaches back to the counter's position, catch-up sends a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_when_the_log_was_trimmed() {
    let mut c = Cluster::start(Options {
        log_retention: 5,
        ..Options::default()
    })
    .await
    .unwrap();
    let api = c.api_client();
    let h = History::new();
    api.write_acked(&h, "before", 4, 3).await;

    c.counters[0].kill();
    api.write_acked(&h, "missed", 12, 3).await;
    c.start_counter(0, &[]).await.unwrap();
    let view = c.wait_counter_in_sync(0, CONVERGE).await.unwrap();
    assert!(
        view.synced_snapshot_items > 0,
        "the log was trimmed past the counter: a snapshot was expected: {view:?}"
    );

    let counts = c.converge_and_check(&h, CONVERGE).await;
    assert_all(&counts, "before", 4, 3);
    assert_all(&counts, "missed", 12, 3);
}

/// A long catch-up in small pages does not hold up writes: every POST made during it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_keep_flowing_during_a_sync() {
    let mut c = Cluster::start(Options {
        coordinator_args: vec!["--sync-page-items".into(), "10".into()],
        ..Options::default()
    })
    .await
    .unwrap();
    let api = c.api_client();
    let h = Arc::new(History::new());
    api.write_acked(&h, "before", 3, 3).await;

    // A backlog of 1,200 items: about 120 pages of 10.
    c.counters[0].kill();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (api, h) = (api.clone(), h.clone());
            tokio::spawn(async move { api.write_acked(&h, &format!("backlog-{w}"), 60, 5).await })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }

    c.start_counter(0, &[]).await.unwrap();
    let load = Load::start(
        api.clone(),
        h.clone(),
        "during",
        3,
        3,
        Duration::from_millis(2),
        true,
    );
    let restarted = Instant::now();
    let acked_at_restart = load.acked();
    let view = c.wait_counter_in_sync(0, CONVERGE).await.unwrap();
    let sync_time = restarted.elapsed();
    let acked_during_sync = load.acked() - acked_at_restart;
    // And with the counter back in the write set.
    let target = load.acked() + 20;
    let deadline = Instant::now() + CONVERGE;
    while load.acked() < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = load.stop().await;
    eprintln!(
        "catch-up took {sync_time:?} ({} entries, {} snapshot items); {acked_during_sync} POSTs \
         acknowledged meanwhile, {} in all",
        view.synced_entries,
        view.synced_snapshot_items,
        stats.outcomes.len()
    );
    assert_eq!(
        stats.count(Outcome::Ok),
        stats.outcomes.len(),
        "every POST during the sync must succeed: {:?}",
        stats.outcomes
    );
    assert!(
        acked_during_sync > 0,
        "no write completed while the counter caught up"
    );

    let counts = c.converge_and_check(&h, CONVERGE).await;
    for w in 0..4 {
        assert_all(&counts, &format!("backlog-{w}"), 60, 5);
    }
}

/// A counter that misses a round without dying (SIGSTOP: it stops answering, then answers again)
/// leaves the write set, and comes back through catch-up with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_counter_rejoins_without_restart() {
    let mut c = Cluster::start(Options {
        coordinator_args: vec!["--call-timeout".into(), "300ms".into()],
        ..Options::default()
    })
    .await
    .unwrap();
    let api = c.api_client();
    let h = History::new();
    api.write_acked(&h, "before", 3, 3).await;

    let pid = c.counters[0].pid().expect("counter 0 runs");
    let url = c.counters[0].url();
    kill_signal("STOP", pid);
    let started = Instant::now();
    let (outcome, status) = api.post_recorded(&h, &batch("while-stopped", 4)).await;
    let latency = started.elapsed();
    let view = c.view().await.unwrap();
    kill_signal("CONT", pid);
    assert_eq!(
        outcome,
        Outcome::Ok,
        "a stopped counter must not fail the write: {status:?}"
    );
    eprintln!("POST with a stopped counter took {latency:?}");
    let member = view.counters.iter().find(|m| m.url == url);
    assert!(
        member.is_none_or(|m| m.state != MemberState::InSync),
        "a counter that missed a round is still in sync: {view:?}"
    );

    let back = c.wait_counter_in_sync(0, CONVERGE).await.unwrap();
    assert_eq!(back.url, url);
    assert!(c.counters[0].is_running());
    assert_eq!(c.counters[0].pid(), Some(pid), "rejoined without a restart");
    api.write_acked(&h, "after", 3, 3).await;

    let counts = c.converge_and_check(&h, CONVERGE).await;
    assert_eq!(counts["while-stopped"], 4);
}

/// Write availability: a steady concurrent write load goes on while a counter is killed. Reports the
/// longest gap between two successful POST completions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_stay_available_when_a_counter_dies() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let api = c.api_client();
    let h = Arc::new(History::new());

    let start = Instant::now();
    let load = Load::start(api, h.clone(), "load", 4, 3, Duration::ZERO, false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = c.counter_status(1).await.unwrap().node_id;
    let killed_at = Instant::now();
    c.counters[1].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = load.stop().await;
    let end = Instant::now();

    let times: Vec<Instant> = std::iter::once(start)
        .chain(stats.acked_at.iter().copied())
        .collect();
    let (gap, gap_end) = times
        .windows(2)
        .map(|w| (w[1] - w[0], w[1]))
        .max()
        .expect("some POST was acknowledged");
    let acked_after_kill = stats.acked_at.iter().filter(|&&t| t > killed_at).count();
    let last_before = times.iter().rev().find(|&&t| t <= killed_at).copied();
    let first_after = times.iter().find(|&&t| t > killed_at).copied();
    let across_kill = first_after.zip(last_before).map(|(a, b)| a - b);
    eprintln!(
        "write availability: longest gap between successful POST completions {gap:?} (ending at \
         {} relative to the kill); gap across the kill {across_kill:?}; {} POSTs in {:?}, \
         {acked_after_kill} acknowledged after the kill",
        if gap_end >= killed_at {
            format!("+{:?}", gap_end - killed_at)
        } else {
            format!("-{:?}", killed_at - gap_end)
        },
        stats.outcomes.len(),
        end - start
    );
    assert_eq!(
        stats.count(Outcome::Ok),
        stats.outcomes.len(),
        "no POST may fail when one counter dies: {:?}",
        stats
            .outcomes
            .iter()
            .filter(|(o, _)| *o != Outcome::Ok)
            .collect::<Vec<_>>()
    );
    assert!(gap < Duration::from_secs(1), "writes stalled for {gap:?}");
    assert!(
        stats
            .acked_at
            .last()
            .is_some_and(|&t| end - t < Duration::from_secs(1)),
        "writes stalled at the end of the run"
    );

    // Only the killed counter left the write set: a healthy counter that had left it would have
    // missed the round it left in and been caught up since.
    let view = c.view().await.unwrap();
    for m in view.counters.iter().filter(|m| m.node_id != killed) {
        assert_eq!(m.state, MemberState::InSync, "{m:?}");
        assert_eq!(
            (m.synced_entries, m.synced_snapshot_items),
            (0, 0),
            "a healthy counter was taken out of the write set: {m:?}"
        );
    }

    c.start_counter(1, &[]).await.unwrap();
    c.converge_and_check(&h, CONVERGE).await;
}

/// A snapshot catch-up ends even when writes trim the log faster than a snapshot is sent: the log is
/// trimmed past the counter again after every unlocked snapshot, so the last one must be sent between
/// two rounds (under the round lock) instead of chasing the writes forever. Every POST succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_catch_up_ends_under_a_steady_write_load() {
    let mut c = Cluster::start(Options {
        log_retention: 5,
        coordinator_args: vec!["--sync-page-items".into(), "10".into()],
        ..Options::default()
    })
    .await
    .unwrap();
    let api = c.api_client();
    let h = Arc::new(History::new());
    c.counters[0].kill();
    api.write_acked(&h, "backlog", 100, 5).await;

    let load = Load::start(
        api.clone(),
        h.clone(),
        "during",
        4,
        3,
        Duration::ZERO,
        false,
    );
    c.start_counter(0, &[]).await.unwrap();
    let restarted = Instant::now();
    let view = c.wait_counter_in_sync(0, CONVERGE).await;
    let sync_time = restarted.elapsed();
    let stats = load.stop().await;
    let view = view.unwrap();
    let gap = stats
        .acked_at
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "snapshot catch-up under load took {sync_time:?} ({} snapshot items, {} entries); {} POSTs, \
         longest gap between successful POSTs {gap:?}",
        view.synced_snapshot_items,
        view.synced_entries,
        stats.outcomes.len()
    );
    assert!(view.synced_snapshot_items > 0, "{view:?}");
    assert_eq!(
        stats.count(Outcome::Ok),
        stats.outcomes.len(),
        "every POST during the sync must succeed"
    );

    let counts = c.converge_and_check(&h, CONVERGE).await;
    assert_all(&counts, "backlog", 100, 5);
}

/// `counter healthcheck [--ready]` as a container health check runs it: its exit status.
fn healthcheck(c: &Cluster, i: usize, ready: bool) -> i32 {
    let addr = c.counters[i].url().trim_start_matches("http://").to_owned();
    let mut cmd = std::process::Command::new(bin("counter"));
    cmd.arg("healthcheck")
        .env("COUNTER_LISTEN", &addr)
        .env("CLUSTER_TOKEN", &c.token);
    if ready {
        cmd.arg("--ready");
    }
    cmd.status()
        .expect("run counter healthcheck")
        .code()
        .unwrap_or(-1)
}

async fn ready_status(c: &Cluster, i: usize) -> u16 {
    let url = format!("{}/ready", c.counters[i].url());
    c.http.get(url).send().await.unwrap().status().as_u16()
}

async fn wait_ready(c: &Cluster, i: usize) {
    let deadline = Instant::now() + CONVERGE;
    while ready_status(c, i).await != 200 {
        assert!(Instant::now() < deadline, "counter {i} never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Readiness (`GET /ready`, `counter healthcheck --ready`), which Swarm's rolling updates wait on:
/// a counter that cannot reach the coordinator is live but not ready; it turns ready only when the
/// coordinator counts it in sync, holding every committed round; and it stays ready while the
/// coordinator is down, so an orchestrator does not kill the replicas of a cluster whose coordinator
/// restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_counter_is_ready_once_caught_up_and_stays_ready() {
    let mut c = Cluster::start(Options {
        counters: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    let api = c.api_client();
    let h = History::new();
    api.write_acked(&h, "before", 20, 5).await;
    let committed = c.view().await.unwrap().committed_seq;
    // It learns that it is in sync at its next registration.
    wait_ready(&c, 0).await;

    c.coordinator.kill();
    let fresh = c.add_counter().await.unwrap();
    // Without a coordinator nothing can make it ready: no wait hides a race here.
    assert_eq!(ready_status(&c, fresh).await, 503);
    assert_eq!(healthcheck(&c, fresh, true), 1, "healthcheck --ready");
    assert_eq!(healthcheck(&c, fresh, false), 0, "liveness is unaffected");

    c.start_coordinator(&[]).await.unwrap();
    wait_ready(&c, fresh).await;
    let applied = c.counter_status(fresh).await.unwrap().last_applied;
    assert!(
        applied >= committed,
        "ready at seq {applied}, before the {committed} rounds committed before it started"
    );
    assert_eq!(healthcheck(&c, fresh, true), 0, "healthcheck --ready");

    c.coordinator.kill();
    assert_eq!(ready_status(&c, fresh).await, 200, "ready is kept");
    assert_eq!(healthcheck(&c, fresh, true), 0, "healthcheck --ready");
}
