//! The cluster against an outsider: internal routes only on the internal listeners, each refusing a
//! call without the cluster token (401, nothing changed), counters with a wrong token or of another
//! cluster never joining, and a token rotation under load that loses and refuses nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dc_tests::history::History;
use dc_tests::{copy_dir, random_token, Cluster, Load, Options};
use reqwest::Method;
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(20);

/// What a refused call must not have changed: the registry, the committed seq, every counter's
/// position and every count.
#[derive(Debug, PartialEq)]
struct Snapshot {
    committed_seq: u64,
    members: BTreeMap<String, (String, storage::proto::MemberState)>,
    applied: Vec<(u64, u64)>,
    counts: Vec<u64>,
}

/// The state of the cluster's first `counters` counters and the coordinator.
async fn snapshot(c: &Cluster, counters: usize, tenants: &[&str]) -> Snapshot {
    // The last write's COMMITs may still be on their way.
    c.applied_everywhere(CONVERGE).await.unwrap();
    let view = c.view().await.unwrap();
    let mut applied = Vec::new();
    let mut counts = Vec::new();
    for i in 0..counters {
        let s = c.counter_status(i).await.unwrap();
        applied.push((s.last_applied, s.log_floor));
        for t in tenants {
            counts.push(c.counter_count(i, t).await.unwrap());
        }
    }
    for t in tenants {
        counts.push(c.count(t).await.unwrap());
    }
    Snapshot {
        committed_seq: view.committed_seq,
        members: view
            .counters
            .into_iter()
            .map(|m| (m.node_id, (m.url, m.state)))
            .collect(),
        applied,
        counts,
    }
}

/// Every internal route of a counter, with a body that would change the replica if it were obeyed.
fn counter_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    let forged = json!([{"id": "forged", "tenant": "t"}]);
    vec![
        (Method::GET, "/internal/status", None),
        (
            Method::POST,
            "/internal/prepare",
            Some(json!({"txid": u64::MAX, "items": forged})),
        ),
        (
            Method::POST,
            "/internal/commit",
            Some(json!({"txid": u64::MAX, "seq": 3})),
        ),
        (Method::POST, "/internal/rollback", Some(json!({"txid": 1}))),
        (
            Method::POST,
            "/internal/counts",
            Some(json!({"tenants": ["t"]})),
        ),
        (Method::GET, "/internal/sync/log?from=1&max_items=10", None),
        (Method::GET, "/internal/sync/snapshot?max_items=10", None),
        (
            Method::POST,
            "/internal/sync/apply-log",
            Some(json!({"entries": [{"seq": 3, "txid": u64::MAX, "items": forged}]})),
        ),
        (
            Method::POST,
            "/internal/sync/import",
            Some(json!({"items": forged})),
        ),
        (
            Method::POST,
            "/internal/sync/finish-snapshot",
            Some(json!({"seq": 1000, "txid": u64::MAX})),
        ),
        (Method::GET, "/internal/no-such-route", None),
    ]
}

/// Every internal route of the coordinator, with a body that would hijack or leak if obeyed.
fn coordinator_routes(victim: &str) -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (
            Method::POST,
            "/internal/register",
            Some(
                json!({"node_id": "intruder", "url": "http://127.0.0.1:9", "last_applied": 0,
                "cluster_id": null}),
            ),
        ),
        // With a real node id: would move that counter to the intruder's address.
        (
            Method::POST,
            "/internal/register",
            Some(
                json!({"node_id": victim, "url": "http://127.0.0.1:9", "last_applied": 0,
                "cluster_id": null}),
            ),
        ),
        (Method::POST, "/internal/outcome", Some(json!({"txid": 1}))),
        (Method::GET, "/internal/cluster", None),
        (Method::GET, "/internal/no-such-route", None),
    ]
}

/// Sends `route` to `base` with `auth` as the Authorization header (or none); returns status and body.
async fn call(
    c: &Cluster,
    base: &str,
    route: &(Method, &str, Option<Value>),
    auth: Option<&str>,
) -> (u16, Value) {
    let (method, path, body) = route;
    let mut req = c.http.request(method.clone(), format!("{base}{path}"));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {text:?}"));
    (status, body)
}

#[tokio::test]
async fn every_internal_route_refuses_a_call_without_the_token_and_changes_nothing() {
    let c = Cluster::start(Options {
        counters: 2,
        ..Options::default()
    })
    .await
    .unwrap();
    c.post_ok(&[("1", "t"), ("2", "t")]).await.unwrap();
    let victim = c.counter_status(0).await.unwrap().node_id;
    let before = snapshot(&c, 2, &["t"]).await;

    let wrong = format!("Bearer {}", random_token());
    let no_scheme = c.token.clone();
    let near_miss = format!("Bearer {}x", c.token);
    let bad: [Option<&str>; 4] = [None, Some(&wrong), Some(&no_scheme), Some(&near_miss)];
    let mut refused = 0;
    for auth in bad {
        for i in 0..c.counters.len() {
            for route in counter_routes() {
                let (status, body) = call(&c, &c.counters[i].url(), &route, auth).await;
                assert_eq!(status, 401, "counter {i} {:?} {}: {body}", route.0, route.1);
                assert_eq!(body["status"], "failed", "{body}");
                assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
                refused += 1;
            }
        }
        for route in coordinator_routes(&victim) {
            let (status, body) = call(&c, &c.coordinator.internal_url(), &route, auth).await;
            assert_eq!(status, 401, "coordinator {:?} {}: {body}", route.0, route.1);
            assert_eq!(body["status"], "failed", "{body}");
            refused += 1;
        }
    }

    assert_eq!(
        snapshot(&c, 2, &["t"]).await,
        before,
        "a refused call changed something"
    );
    // Every refusal is counted where it happened (and logged at most once per period).
    let counted = c.view().await.unwrap().refused_calls
        + c.counter_status(0).await.unwrap().refused_calls
        + c.counter_status(1).await.unwrap().refused_calls;
    assert_eq!(counted, refused);
    let log = c.counters[0].log_text();
    let lines = log.matches("refused an internal call").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines for {refused} refusals"
    );

    // The cluster still works, and with the token the same routes answer.
    c.post_ok(&[("3", "t")]).await.unwrap();
    assert_eq!(c.count("t").await.unwrap(), 3);
    let status = c
        .internal(
            Method::GET,
            format!("{}/internal/status", c.counters[0].url()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
}

#[tokio::test]
async fn a_call_from_a_coordinator_of_another_cluster_is_refused() {
    let c = Cluster::start(Options {
        counters: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    let mine = c.counter_status(0).await.unwrap().cluster_id;
    assert_eq!(mine, Some(c.view().await.unwrap().cluster_id));
    let prepare = c
        .internal(
            Method::POST,
            format!("{}/internal/prepare", c.counters[0].url()),
        )
        .header(storage::proto::CLUSTER_HEADER, "0123456789abcdef")
        .json(&json!({"txid": u64::MAX, "items": [{"id": "x", "tenant": "t"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(prepare.status(), 409);
    let body: Value = prepare.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("0123456789abcdef") && error.contains(mine.as_deref().unwrap()),
        "{error}"
    );
}

#[tokio::test]
async fn internal_routes_are_not_on_the_public_port() {
    let c = Cluster::start(Options {
        counters: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    let victim = c.counter_status(0).await.unwrap().node_id;
    let bearer = format!("Bearer {}", c.token);
    for auth in [None, Some(bearer.as_str())] {
        for route in coordinator_routes(&victim) {
            let (status, body) = call(&c, &c.url(), &route, auth).await;
            assert_eq!(status, 404, "public {:?} {}: {body}", route.0, route.1);
            assert_eq!(body["status"], "failed", "{body}");
        }
    }
    // The public port still serves what is public.
    let (status, _) = c.get("/health").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(c.view().await.unwrap().counters.len(), 1);
}

#[tokio::test]
async fn a_counter_with_a_wrong_token_never_joins() {
    let mut c = Cluster::start(Options {
        counters: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    c.post_ok(&[("1", "t")]).await.unwrap();
    let before = snapshot(&c, 1, &["t"]).await;

    let wrong = random_token();
    let i = c.define_counter("counter-wrong");
    c.counters[i].set_env("CLUSTER_TOKEN", &wrong);
    c.start_counter(i, &[]).await.unwrap();

    // Wait until the coordinator refused it a few times (it retries every register interval).
    let deadline = std::time::Instant::now() + CONVERGE;
    while c.view().await.unwrap().refused_calls < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the counter never tried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.post_ok(&[("2", "t")]).await.unwrap();
    c.applied_everywhere(CONVERGE).await.unwrap();
    let view = c.view().await.unwrap();
    assert_eq!(view.counters.len(), 1, "{view:?}");
    assert_eq!(c.counter_count(0, "t").await.unwrap(), before.counts[0] + 1);
    let log = c.counters[i].log_text();
    assert!(
        log.contains("401") && log.contains("missing or wrong cluster token"),
        "the counter's log does not say why:\n{log}"
    );
}

#[tokio::test]
async fn a_counter_of_another_cluster_never_joins() {
    // A counter that joined cluster B, started with cluster A's token on its own data.
    let other = Cluster::start(Options {
        counters: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    other.post_ok(&[("b1", "t"), ("b2", "t")]).await.unwrap();
    let theirs = other.view().await.unwrap().cluster_id;
    let mut other = other;
    other.counters[0].kill();

    let mut c = Cluster::start(Options {
        counters: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    c.post_ok(&[("a1", "t")]).await.unwrap();
    let mine = c.view().await.unwrap().cluster_id;
    assert_ne!(mine, theirs);
    let before = snapshot(&c, 1, &["t"]).await;

    let moved = c.dir.path().join("counter-from-b");
    copy_dir(other.counters[0].data_dir(), &moved);
    let i = c.define_counter("counter-from-b");
    c.start_counter(i, &[]).await.unwrap();

    let log = wait_for_log(&c.counters[i], "belongs to cluster").await;
    assert!(
        log.contains(&mine) && log.contains(&theirs),
        "the log does not name both clusters:\n{log}"
    );
    assert_eq!(snapshot(&c, 1, &["t"]).await, before);
    assert_eq!(c.view().await.unwrap().counters.len(), 1);
    let coordinator_log = c.coordinator.log_text();
    assert!(
        coordinator_log.contains("refused a counter of another cluster"),
        "{coordinator_log}"
    );
}

/// Token rotation by rolling restarts, under a write load: every process first accepts both tokens
/// while sending the old one, then sends the new one while accepting both, then accepts only the new
/// one. No internal call is refused at any step and the history is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_rotation_under_write_load_loses_and_refuses_nothing() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let old = c.token.clone();
    let new = random_token();
    let history = Arc::new(History::new());
    let load = Load::start(
        c.api_client(),
        history.clone(),
        "rot",
        4,
        3,
        Duration::from_millis(5),
        true,
    );

    let steps: [(&str, Option<&str>); 3] = [
        (&old, Some(&new)), // accept both, send the old one
        (&new, Some(&old)), // send the new one, accept both
        (&new, None),       // only the new one
    ];
    for (current, next) in steps {
        for i in 0..c.counters.len() {
            assert_eq!(
                c.counter_status(i).await.unwrap().refused_calls,
                0,
                "counter {i}"
            );
            let s = &mut c.counters[i];
            s.set_env("CLUSTER_TOKEN", current);
            match next {
                Some(next) => s.set_env("CLUSTER_TOKEN_NEXT", next),
                None => s.unset_env("CLUSTER_TOKEN_NEXT"),
            }
            c.restart_counter(i).await.unwrap();
            c.wait_counter_in_sync(i, CONVERGE).await.unwrap();
        }
        assert_eq!(c.view().await.unwrap().refused_calls, 0);
        let s = &mut c.coordinator;
        s.set_env("CLUSTER_TOKEN", current);
        match next {
            Some(next) => s.set_env("CLUSTER_TOKEN_NEXT", next),
            None => s.unset_env("CLUSTER_TOKEN_NEXT"),
        }
        c.restart_coordinator().await.unwrap();
        // The harness's own calls follow the token the cluster sends.
        c.token = current.to_owned();
        c.wait_in_sync(c.counters.len(), CONVERGE).await.unwrap();
    }
    let acked_before_stop = load.acked();
    let stats = load.stop().await;
    assert!(acked_before_stop > 20, "too few writes: {stats:?}");
    for i in 0..c.counters.len() {
        assert_eq!(c.counter_status(i).await.unwrap().refused_calls, 0);
    }
    assert_eq!(c.view().await.unwrap().refused_calls, 0);
    // No POST was refused for anything but the coordinator's restarts (connection refused, or the
    // moments its counters were still registering).
    assert!(
        stats
            .outcomes
            .iter()
            .all(|(_, status)| *status != Some(401)),
        "{stats:?}"
    );
    c.converge_and_check(&history, CONVERGE).await;
}

async fn wait_for_log(service: &dc_tests::Service, needle: &str) -> String {
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let log = service.log_text();
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Secure by default: without a token a service refuses to start and says what to do; with the
/// explicit insecure flag it starts, and warns.
#[test]
fn a_service_without_a_token_refuses_to_start_unless_told_to_run_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let services: [(&str, &[&str]); 2] = [
        (
            "coordinator",
            &[
                "--listen",
                "127.0.0.1:0",
                "--internal-listen",
                "127.0.0.1:0",
            ],
        ),
        ("counter", &["--listen", "127.0.0.1:0"]),
    ];
    for (name, args) in services {
        let run = |extra: &[&str]| {
            let addr_file = dir.path().join(format!("{name}.addr"));
            let _ = std::fs::remove_file(&addr_file);
            let mut child = std::process::Command::new(dc_tests::bin(name))
                .args(args)
                .args(extra)
                .arg("--data-dir")
                .arg(dir.path().join(name))
                .arg("--addr-file")
                .arg(&addr_file)
                .env_remove("CLUSTER_TOKEN")
                .env_remove("CLUSTER_TOKEN_FILE")
                .env_remove("CLUSTER_TOKEN_NEXT")
                .env_remove("CLUSTER_TOKEN_NEXT_FILE")
                .env_remove("CLUSTER_INSECURE_NO_AUTH")
                .env("RUST_LOG", "info")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // Until it exits, or listens (then it is stopped).
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() && !addr_file.exists() {
                assert!(std::time::Instant::now() < deadline, "{name} hangs");
                std::thread::sleep(Duration::from_millis(20));
            }
            let listened = addr_file.exists();
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            (
                listened,
                out.status,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (listened, status, log) = run(&[]);
        assert!(!listened, "{name} started without a token:\n{log}");
        assert_eq!(status.code(), Some(1), "{name}:\n{log}");
        assert!(
            log.contains("no cluster token") && log.contains("CLUSTER_TOKEN_FILE"),
            "{name}:\n{log}"
        );
        let (listened, _, log) = run(&["--insecure-no-auth"]);
        assert!(listened, "{name} did not start insecure:\n{log}");
        assert!(
            log.contains("WARN") && log.contains("--insecure-no-auth"),
            "{name}:\n{log}"
        );
    }
}
