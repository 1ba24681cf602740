//! The public API as clients see it: the original project's cases, input validation with one JSON
//! error shape, tenants as arbitrary UTF-8 in the path, idempotent and concurrent POSTs, fresh reads.

use std::io::{Read, Write};
use std::time::Duration;
use storage::proto::MemberState;

use dc_tests::{encode, Cluster, Options};
use serde_json::{json, Value};

/// How long replicas may take to agree after the writes (a counter whose call timed out on a loaded
/// machine leaves the write set and is caught up).
const CONVERGE: Duration = Duration::from_secs(15);

async fn cluster() -> Cluster {
    Cluster::start(Options::default()).await.unwrap()
}

async fn committed_seq(c: &Cluster) -> u64 {
    c.view().await.unwrap().committed_seq
}

/// Sends a request and returns status and JSON body (a body that is not JSON fails the test).
async fn send(
    c: &Cluster,
    method: &str,
    path: &str,
    body: Option<&str>,
    content_type: Option<&str>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = c.http.request(method.clone(), format!("{}{path}", c.url()));
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(body) = body {
        req = req.body(body.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{method} {path} answered {status} with a body that is not JSON ({e}): {text:?}")
    });
    (status, value)
}

/// Asserts the failure shape `{"status":"failed","error":"..."}` with a non-empty error that contains
/// `needle` (case-insensitive).
fn assert_failed(what: &str, status: u16, body: &Value, want_status: u16, needle: &str) {
    assert_eq!(status, want_status, "{what}: status (body {body})");
    assert_eq!(body["status"], "failed", "{what}: {body}");
    let error = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error text in {body}"));
    assert!(!error.trim().is_empty(), "{what}: empty error");
    assert!(
        error.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: error {error:?} does not mention {needle:?}"
    );
}

fn items_body(items: &[(&str, &str)]) -> String {
    let items: Vec<Value> = items
        .iter()
        .map(|(id, tenant)| json!({"id": id, "tenant": tenant}))
        .collect();
    serde_json::to_string(&items).unwrap()
}

#[tokio::test]
async fn original_client_cases() {
    let c = cluster().await;
    assert_eq!(c.count("never-seen").await.unwrap(), 0);

    // Eight items, one of them a duplicate (B/4 twice). Ids repeat across tenants, which is not a
    // duplicate: ids are counted per tenant.
    let items = [
        ("1", "A"),
        ("2", "A"),
        ("3", "A"),
        ("1", "B"),
        ("2", "B"),
        ("3", "B"),
        ("4", "B"),
        ("4", "B"),
    ];
    let (status, body) = c.post(&items).await.unwrap();
    assert_eq!((status, &body), (200, &json!({"status": "success"})));
    assert_eq!(c.count("A").await.unwrap(), 3);
    assert_eq!(c.count("B").await.unwrap(), 4);
    assert_eq!(c.count("never-seen").await.unwrap(), 0);
    // Tenants are case-sensitive names, not folded.
    assert_eq!(c.count("a").await.unwrap(), 0);
}

#[tokio::test]
async fn repost_form_content_type_and_empty_array() {
    let c = cluster().await;
    let body = items_body(&[("1", "t"), ("2", "t"), ("3", "u")]);
    let (status, answer) = send(&c, "POST", "/items", Some(&body), Some("application/json")).await;
    assert_eq!((status, &answer), (200, &json!({"status": "success"})));
    assert_eq!(
        (c.count("t").await.unwrap(), c.count("u").await.unwrap()),
        (2, 1)
    );

    // The same body again: success, nothing changes.
    let (status, _) = send(&c, "POST", "/items", Some(&body), Some("application/json")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (c.count("t").await.unwrap(), c.count("u").await.unwrap()),
        (2, 1)
    );

    // curl -d sends application/x-www-form-urlencoded: still parsed as JSON.
    let form = items_body(&[("3", "t"), ("1", "t")]);
    let (status, answer) = send(
        &c,
        "POST",
        "/items",
        Some(&form),
        Some("application/x-www-form-urlencoded"),
    )
    .await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"status": "success"})),
        "form content type"
    );
    assert_eq!(c.count("t").await.unwrap(), 3);
    // And no content type at all.
    let (status, _) = send(&c, "POST", "/items", Some(&items_body(&[("4", "t")])), None).await;
    assert_eq!(status, 200, "no content type");
    assert_eq!(c.count("t").await.unwrap(), 4);

    // Empty array: success, nothing counted, no transaction at all.
    let before = committed_seq(&c).await;
    let (status, answer) = send(&c, "POST", "/items", Some("[]"), Some("application/json")).await;
    assert_eq!((status, &answer), (200, &json!({"status": "success"})));
    assert_eq!(committed_seq(&c).await, before);
    assert_eq!(
        (c.count("t").await.unwrap(), c.count("u").await.unwrap()),
        (4, 1)
    );
}

#[tokio::test]
async fn concurrent_posts_of_one_id_count_once() {
    let mut c = cluster().await;
    let body = items_body(&[("same", "conc")]);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (http, url, body) = (c.http.clone(), format!("{}/items", c.url()), body.clone());
        tasks.spawn(async move {
            let resp = http.post(url).body(body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        });
    }
    let answers = tasks.join_all().await;
    assert_eq!(answers.len(), 32);
    for (status, body) in answers {
        assert_eq!((status, &body), (200, &json!({"status": "success"})));
    }
    assert_eq!(c.count("conc").await.unwrap(), 1);
    // Every replica agrees.
    let counts = c.converged(&["conc".to_owned()], CONVERGE).await.unwrap();
    assert_eq!(counts["conc"], 1);
}

/// Sends a chunked POST (no Content-Length) over a raw connection; returns status and body.
fn raw_chunked_post(addr: &str, chunks: &[Vec<u8>]) -> (u16, Value) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!(
        "POST /items HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in chunks {
        req.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend(chunk);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\n\r\n");
    // The server may answer and close before it read everything: a failed write is fine.
    let _ = stream.write_all(&req);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body: {text:?}"));
    let body = if head.to_lowercase().contains("transfer-encoding: chunked") {
        // One chunk is all axum sends for a small JSON body.
        body.split("\r\n").nth(1).unwrap_or_default().to_owned()
    } else {
        body.to_owned()
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text:?}")),
    )
}

#[tokio::test]
async fn bad_inputs_get_json_4xx_and_change_nothing() {
    let mut c = Cluster::start(Options {
        coordinator_args: vec!["--max-body-bytes".into(), "1000".into()],
        ..Options::default()
    })
    .await
    .unwrap();
    c.post_ok(&[("1", "t"), ("2", "t"), ("1", "other")])
        .await
        .unwrap();
    let seq = committed_seq(&c).await;
    let tenants = ["t", "other", "new"].map(String::from);
    let counts = |counts: std::collections::BTreeMap<String, u64>| {
        (counts["t"], counts["other"], counts["new"])
    };
    assert_eq!(
        counts(c.converged(&tenants, CONVERGE).await.unwrap()),
        (2, 1, 0)
    );
    assert_eq!(
        (
            c.count("t").await.unwrap(),
            c.count("other").await.unwrap(),
            c.count("new").await.unwrap()
        ),
        (2, 1, 0)
    );

    let long = "x".repeat(257);
    // 128 two-byte characters plus one byte: 257 bytes, 129 characters. The limit is in bytes.
    let long_utf8 = format!("{}a", "ü".repeat(128));
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed JSON", r#"[{"id":"3","tenant":"new""#.into(), "JSON"),
        ("not JSON at all", "id=3&tenant=new".into(), "JSON"),
        ("empty body", "".into(), "JSON"),
        ("trailing garbage", r#"[{"id":"3","tenant":"new"}] x"#.into(), "JSON"),
        ("an object, not an array", r#"{"id":"3","tenant":"new"}"#.into(), "array"),
        ("a string, not an array", r#""3""#.into(), "array"),
        ("null", "null".into(), "array"),
        ("item is a string", r#"["3"]"#.into(), "object"),
        ("item is an array", r#"[["3","new"]]"#.into(), "object"),
        ("item is null", r#"[null]"#.into(), "object"),
        ("missing id", r#"[{"tenant":"new"}]"#.into(), "\"id\""),
        ("empty id", r#"[{"id":"","tenant":"new"}]"#.into(), "\"id\""),
        ("numeric id", r#"[{"id":3,"tenant":"new"}]"#.into(), "\"id\""),
        ("null id", r#"[{"id":null,"tenant":"new"}]"#.into(), "\"id\""),
        ("object id", r#"[{"id":{"x":1},"tenant":"new"}]"#.into(), "\"id\""),
        ("missing tenant", r#"[{"id":"3"}]"#.into(), "\"tenant\""),
        ("empty tenant", r#"[{"id":"3","tenant":""}]"#.into(), "\"tenant\""),
        ("numeric tenant", r#"[{"id":"3","tenant":7}]"#.into(), "\"tenant\""),
        ("boolean tenant", r#"[{"id":"3","tenant":true}]"#.into(), "\"tenant\""),
        ("id of 257 bytes", items_body(&[(&long, "new")]), "at most 256"),
        ("id of 257 bytes in 129 characters", items_body(&[(&long_utf8, "new")]), "at most 256"),
        ("tenant of 257 bytes", items_body(&[("3", &long)]), "at most 256"),
        // Atomic validation: good items around one bad one are not counted either.
        (
            "one bad item among good ones",
            r#"[{"id":"3","tenant":"t"},{"id":"9","tenant":"new"},{"id":"4"},{"id":"5","tenant":"other"}]"#.into(),
            "item 2",
        ),
        (
            "one too long id among good ones",
            items_body(&[("3", "t"), ("9", "new"), (&long, "new")]),
            "item 2",
        ),
    ];
    for (what, body, needle) in &cases {
        let (status, answer) =
            send(&c, "POST", "/items", Some(body), Some("application/json")).await;
        assert_failed(what, status, &answer, 400, needle);
    }

    // Over the body limit: 413, with and without a Content-Length, whether or not it is valid JSON.
    let big: Vec<(String, String)> = (0..40)
        .map(|i| (format!("big-{i}"), "new".to_owned()))
        .collect();
    let big_refs: Vec<(&str, &str)> = big.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let big_body = items_body(&big_refs);
    assert!(big_body.len() > 1000);
    let (status, answer) = send(
        &c,
        "POST",
        "/items",
        Some(&big_body),
        Some("application/json"),
    )
    .await;
    assert_failed(
        "valid JSON over the body limit",
        status,
        &answer,
        413,
        "limit",
    );
    let (status, answer) = send(&c, "POST", "/items", Some(&"x".repeat(5000)), None).await;
    assert_failed("garbage over the body limit", status, &answer, 413, "limit");
    let addr = c.coordinator.addr.unwrap().to_string();
    let chunks: Vec<Vec<u8>> = big_body
        .as_bytes()
        .chunks(300)
        .map(<[u8]>::to_vec)
        .collect();
    let (status, answer) = tokio::task::spawn_blocking(move || raw_chunked_post(&addr, &chunks))
        .await
        .unwrap();
    assert_failed("chunked body over the limit", status, &answer, 413, "limit");

    // Unknown paths and wrong methods: JSON too.
    for path in [
        "/nope",
        "/items/t",
        "/items/t/count/extra",
        "/items/t/total",
        "/",
    ] {
        let (status, answer) = send(&c, "GET", path, None, None).await;
        assert_failed(&format!("GET {path}"), status, &answer, 404, "");
    }
    let (status, answer) = send(
        &c,
        "POST",
        "/elsewhere",
        Some(&items_body(&[("3", "new")])),
        None,
    )
    .await;
    assert_failed("POST to an unknown path", status, &answer, 404, "");
    for (method, path) in [
        ("GET", "/items"),
        ("PUT", "/items"),
        ("DELETE", "/items"),
        ("POST", "/items/t/count"),
        ("DELETE", "/items/t/count"),
    ] {
        let body = (method != "GET").then(|| items_body(&[("3", "new")]));
        let (status, answer) =
            send(&c, method, path, body.as_deref(), Some("application/json")).await;
        assert_failed(&format!("{method} {path}"), status, &answer, 405, "method");
    }

    // Nothing of the above was written: no transaction, same counts.
    assert_eq!(
        committed_seq(&c).await,
        seq,
        "a refused request ran a transaction"
    );
    assert_eq!(
        (
            c.count("t").await.unwrap(),
            c.count("other").await.unwrap(),
            c.count("new").await.unwrap()
        ),
        (2, 1, 0)
    );
    // Every replica, asked directly.
    assert_eq!(
        counts(c.converged(&tenants, CONVERGE).await.unwrap()),
        (2, 1, 0)
    );

    // At the limits everything passes: 256-byte id and tenant (in bytes, also in 128 characters), and a
    // body just under the size limit.
    let id256 = "i".repeat(256);
    let tenant256 = "t".repeat(256);
    let id256_utf8 = "ü".repeat(128);
    c.post_ok(&[(&id256, "new"), (&id256_utf8, "new"), ("3", &tenant256)])
        .await
        .unwrap();
    assert_eq!(c.count("new").await.unwrap(), 2);
    assert_eq!(c.count(&tenant256).await.unwrap(), 1);
    let fits: Vec<(String, String)> = (0..100)
        .map(|i| (format!("f{i}"), "fit".to_owned()))
        .collect();
    let mut fits_refs: Vec<(&str, &str)> =
        fits.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    while items_body(&fits_refs).len() > 1000 {
        fits_refs.pop();
    }
    let n = fits_refs.len() as u64;
    assert!(n > 10);
    c.post_ok(&fits_refs).await.unwrap();
    assert_eq!(c.count("fit").await.unwrap(), n);
    assert_eq!(committed_seq(&c).await, seq + 2);
}

#[tokio::test]
async fn tenants_are_arbitrary_utf8_in_the_path() {
    let c = cluster().await;
    // Each tenant gets a different number of items, so a mix-up shows in the counts. "a" and "A" are
    // there to catch a tenant decoded into its neighbours ("a/b" split at the slash, "%41" decoded twice).
    let tenants = [
        "a/b",
        "ü ñ",
        "x?y#z",
        "%41",
        "a",
        "A",
        "b",
        "x",
        "日本語",
        "a+b",
        "a b",
        "../x",
        "tab\tnew\nline",
    ];
    let mut items = Vec::new();
    for (n, tenant) in tenants.iter().enumerate() {
        for id in 0..=n {
            items.push((id.to_string(), tenant.to_string()));
        }
    }
    let refs: Vec<(&str, &str)> = items
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    c.post_ok(&refs).await.unwrap();
    for (n, tenant) in tenants.iter().enumerate() {
        assert_eq!(
            c.count(tenant).await.unwrap(),
            n as u64 + 1,
            "tenant {tenant:?}"
        );
    }
    // "a+b" in a path is a plus sign, not a space.
    let (status, body) = send(&c, "GET", "/items/a+b/count", None, None).await;
    assert_eq!(
        (status, &body),
        (
            200,
            &json!({"count": tenants.iter().position(|t| *t == "a+b").unwrap() + 1})
        )
    );
    // A client that leaves the encoding to its HTTP library (which encodes the space and the UTF-8
    // bytes itself) reaches the same tenant.
    let (status, body) = send(&c, "GET", "/items/ü ñ/count", None, None).await;
    assert_eq!((status, &body), (200, &json!({"count": 2})));

    // A tenant over the limit (in bytes) on GET: 400 with the JSON error; at the limit: 200.
    for tenant in ["y".repeat(257), format!("{}a", "ü".repeat(128))] {
        let (status, body) = send(
            &c,
            "GET",
            &format!("/items/{}/count", encode(&tenant)),
            None,
            None,
        )
        .await;
        assert_failed(
            "GET of a 257-byte tenant",
            status,
            &body,
            400,
            "at most 256",
        );
    }
    assert_eq!(c.count(&"y".repeat(256)).await.unwrap(), 0);
    assert_eq!(c.count(&"ü".repeat(128)).await.unwrap(), 0);
    // A path that does not decode to UTF-8: 400, JSON.
    let (status, body) = send(&c, "GET", "/items/%FF%FE/count", None, None).await;
    assert_failed(
        "GET of a tenant that is not UTF-8",
        status,
        &body,
        400,
        "tenant",
    );
}

#[tokio::test]
async fn reads_are_fresh_after_every_acknowledged_post() {
    let mut c = cluster().await;
    for i in 0..50u64 {
        // A new id and one posted before: only the new one may bump the count.
        c.post_ok(&[
            (&format!("id-{i}"), "fresh"),
            (&format!("id-{}", i / 2), "fresh"),
        ])
        .await
        .unwrap();
        assert_eq!(
            c.count("fresh").await.unwrap(),
            i + 1,
            "GET right after POST {i}"
        );
    }
    // Each read went to one counter, rotating: all of them hold everything.
    let counts = c.converged(&["fresh".to_owned()], CONVERGE).await.unwrap();
    assert_eq!(counts["fresh"], 50);
}

/// The largest POST the defaults accept is one round that every counter applies in time (none drops
/// out of the write set); one item more is refused whole.
#[tokio::test]
async fn the_largest_accepted_post_commits_everywhere_and_one_more_item_is_refused() {
    let mut c = cluster().await;
    let ids: Vec<String> = (0..10_001).map(|i| format!("id-{i}")).collect();
    let over: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "big")).collect();
    let (status, body) = c.post(&over).await.unwrap();
    assert_failed("10,001 items", status, &body, 413, "at most 10000");
    assert_eq!(c.count("big").await.unwrap(), 0);

    c.post_ok(&over[..10_000]).await.unwrap();
    assert_eq!(c.count("big").await.unwrap(), 10_000);
    let view = c.view().await.unwrap();
    assert!(
        view.counters.iter().all(|m| m.state == MemberState::InSync),
        "{view:?}"
    );
    c.converged(&["big".to_owned()], Duration::from_secs(15))
        .await
        .unwrap();
}
