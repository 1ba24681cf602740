//! Batched reads on real processes: the counter's internal counts endpoint refuses every bad batch
//! with a JSON error and answers a good one in order; and many concurrent reads of many tenants,
//! batched by the coordinator while writes go on, stay linearizable (the history checker: every read
//! covers every write acknowledged before it began, and never returns less than a read of the same
//! tenant that ended before it began).
//!
//! `READ_BATCHES_SECS` sets how long the concurrent test runs (default 6 s).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dc_tests::history::History;
use dc_tests::{Cluster, Options};
use reqwest::Method;
use serde_json::{json, Value};
use storage::proto::{paths, MAX_COUNTS_BODY_BYTES, MAX_COUNTS_TENANTS, MAX_TENANT_BYTES};

/// A POST to counter 0's counts endpoint; the status and the JSON body (every answer must be JSON).
async fn counts_call(c: &Cluster, body: String, token: bool) -> (u16, Value) {
    let url = format!("{}{}", c.counters[0].url(), paths::COUNTS);
    let request = if token {
        c.internal(Method::POST, url)
    } else {
        c.http.post(url)
    };
    let resp = request
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {text}"));
    (status, value)
}

fn tenants(list: &[String]) -> String {
    json!({ "tenants": list }).to_string()
}

#[tokio::test]
async fn the_counts_endpoint_answers_in_order_and_refuses_bad_batches() {
    let c = Cluster::start(Options {
        counters: 1,
        ..Options::default()
    })
    .await
    .unwrap();
    c.post_ok(&[("1", "a"), ("2", "a"), ("1", "b")])
        .await
        .unwrap();
    let committed = c.view().await.unwrap().committed_seq;

    // In order, a tenant asked twice answered twice, an unknown tenant 0.
    let (status, body) = counts_call(
        &c,
        tenants(&["b".into(), "a".into(), "never".into(), "a".into()]),
        true,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"last_applied": committed, "counts": [1, 2, 0, 2]})
    );

    // The largest batch of the longest tenants is accepted.
    let longest = "é".repeat(MAX_TENANT_BYTES / 2);
    let full: Vec<String> = (0..MAX_COUNTS_TENANTS).map(|_| longest.clone()).collect();
    let (status, body) = counts_call(&c, tenants(&full), true).await;
    assert_eq!(status, 200, "{body}");

    let refused = [
        // One tenant too many.
        (
            tenants(&vec!["a".to_owned(); MAX_COUNTS_TENANTS + 1]),
            413,
            format!(
                "{} tenants in one call, at most {MAX_COUNTS_TENANTS}",
                MAX_COUNTS_TENANTS + 1
            ),
        ),
        (
            tenants(&["a".into(), String::new()]),
            400,
            "tenant 1: tenant is empty".to_owned(),
        ),
        (
            tenants(&["x".repeat(MAX_TENANT_BYTES + 1)]),
            400,
            format!("tenant 0: tenant is {} bytes long", MAX_TENANT_BYTES + 1),
        ),
        (
            r#"{"tenants": ["a", 5]}"#.to_owned(),
            400,
            "body is not".to_owned(),
        ),
        (r#"["a"]"#.to_owned(), 400, "body is not".to_owned()),
        ("{".to_owned(), 400, "body is not".to_owned()),
        // Past the body limit: refused before it is parsed.
        (
            format!(
                r#"{{"tenants": ["{}"]}}"#,
                "x".repeat(MAX_COUNTS_BODY_BYTES)
            ),
            413,
            "body is larger than".to_owned(),
        ),
    ];
    for (body, expected, why) in refused {
        let shown = &body[..body.len().min(80)];
        let (status, answer) = counts_call(&c, body.clone(), true).await;
        assert_eq!(status, expected, "{shown}: {answer}");
        assert_eq!(answer["status"], "failed", "{shown}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains(&why),
            "{shown}: {error:?} should say {why:?}"
        );
    }

    // Without the token: refused before anything looks at the body.
    let (status, answer) = counts_call(&c, tenants(&["a".into()]), false).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["status"], "failed");

    // Still serving, and the reads through the coordinator still answer.
    assert_eq!(c.count("a").await.unwrap(), 2);
}

const TENANTS: usize = 40;
const WRITERS: usize = 4;
const READERS: usize = 48;

fn secs() -> u64 {
    std::env::var("READ_BATCHES_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}

/// The coordinator's `dc_read_batch_size` histogram: (calls, tenants asked in them).
async fn batch_sizes(c: &Cluster) -> (f64, f64) {
    let text = c
        .http
        .get(format!("{}/metrics", c.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("dc_read_batch_size_count"),
        value("dc_read_batch_size_sum"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_reads_of_many_tenants_are_batched_and_stay_linearizable() {
    let mut c = Cluster::start(Options::default()).await.unwrap();
    let names: Vec<String> = (0..TENANTS).map(|t| format!("tenant-{t}")).collect();
    let history = Arc::new(History::new());
    let client = c.api_client();
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (client, history, stop, ids, names) = (
            client.clone(),
            history.clone(),
            stop.clone(),
            ids.clone(),
            names.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = ids.fetch_add(1, Ordering::SeqCst) as usize;
                // Two tenants per POST: a read of either must see the whole batch or none of it.
                let items = [
                    (format!("w{w}-{n}"), names[n % TENANTS].clone()),
                    (format!("w{w}-{n}"), names[(n * 7 + 3) % TENANTS].clone()),
                ];
                client.post_recorded(&history, &items).await;
            }
        }));
    }
    for r in 0..READERS {
        let (client, history, stop, names) =
            (client.clone(), history.clone(), stop.clone(), names.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = r * 13;
            while !stop.load(Ordering::SeqCst) {
                client
                    .get_count_recorded(&history, &names[k % TENANTS])
                    .await;
                k += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs())).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let counts = c.converged(&names, Duration::from_secs(20)).await.unwrap();
    let report = history.check(&counts);
    eprintln!("{report}");
    assert!(report.ok(), "{report}");
    assert!(
        report.acknowledged > 50 && report.reads > 1000,
        "too little traffic to mean anything: {report}"
    );
    // The reads checked above really went in batches: the internal calls asked for more tenants
    // than there were calls.
    let (calls, asked) = batch_sizes(&c).await;
    eprintln!("{calls} internal read calls for {asked} tenants");
    assert!(
        calls > 0.0 && asked > calls,
        "{calls} calls for {asked} tenants"
    );
}
