//! The OpenAPI document against the code: the checked-in `docs/openapi.json` must be exactly what the
//! code generates (so a changed route, status or schema is a reviewed change of that file), and the
//! router must answer every documented operation with one of its documented statuses.
//!
//! `UPDATE_OPENAPI=1 cargo test -p coordinator --test openapi` (or `make openapi`) rewrites the file.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use coordinator::{api, client, items, openapi, reads, registry, sync, txn};
use tower::ServiceExt;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

#[test]
fn the_checked_in_document_is_what_the_code_generates() {
    let generated = openapi::document().to_pretty_json().unwrap() + "\n";
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json differs from the document the code generates: review the change, then \
         run `make openapi` to update the file.\n--- generated ---\n{generated}"
    );
}

/// A coordinator with no counter at all, in process: every write and read is refused with 503.
async fn app() -> (tempfile::TempDir, axum::Router) {
    let dir = tempfile::tempdir().unwrap();
    let store = storage::CoordinatorStore::open(dir.path()).unwrap();
    let auth = service::auth::Auth::insecure();
    let registry = Arc::new(registry::Registry::load(store.clone()).unwrap());
    let client: coordinator::counters::SharedCounters = Arc::new(client::CounterClient::new(
        Duration::from_secs(1),
        Duration::from_millis(200),
        &auth,
        &store.cluster_id().unwrap(),
    ));
    let txn = txn::TxnManager::start(store, registry.clone(), client.clone(), 1, 10_000).unwrap();
    let app = api::App {
        syncer: sync::Syncer {
            registry: registry.clone(),
            txn: txn.clone(),
            client: client.clone(),
            page_items: 100,
            // No budget: time is not what this test checks.
            lock_budget: std::time::Duration::MAX,
        },
        reader: reads::Reader::new(
            registry.clone(),
            txn.clone(),
            client.clone(),
            Duration::from_millis(200),
        ),
        txn,
        registry,
        limits: items::Limits {
            max_id_bytes: 256,
            max_tenant_bytes: 256,
            max_items: 3,
        },
        auth,
    };
    (dir, api::public_router(app, 4 << 20))
}

#[tokio::test]
async fn every_documented_operation_answers_a_documented_status() {
    let (_dir, router) = app().await;
    let document = openapi::document();
    let long = "x".repeat(300);
    let four = r#"[{"id":"1","tenant":"t"},{"id":"2","tenant":"t"},{"id":"3","tenant":"t"},{"id":"4","tenant":"t"}]"#;
    let cases: Vec<(Method, String, &str, &str, StatusCode)> = vec![
        (
            Method::POST,
            "/items".into(),
            "/items",
            "[]",
            StatusCode::OK,
        ),
        (
            Method::POST,
            "/items".into(),
            "/items",
            "{",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/items".into(),
            "/items",
            four,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::POST,
            "/items".into(),
            "/items",
            r#"[{"id":"1","tenant":"t"}]"#,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Method::GET,
            "/items/t/count".into(),
            "/items/{tenant}/count",
            "",
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            Method::GET,
            format!("/items/{long}/count"),
            "/items/{tenant}/count",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (Method::GET, "/health".into(), "/health", "", StatusCode::OK),
        (Method::GET, "/status".into(), "/status", "", StatusCode::OK),
        (
            Method::GET,
            "/metrics".into(),
            "/metrics",
            "",
            StatusCode::OK,
        ),
    ];
    for (method, uri, template, body, expected) in cases {
        let response = router
            .clone()
            .oneshot(
                Request::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .body(Body::from(body.to_owned()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{method} {uri}");
        let item = document
            .paths
            .paths
            .get(template)
            .unwrap_or_else(|| panic!("{template} is not documented"));
        let operation = match method {
            Method::GET => item.get.as_ref(),
            Method::POST => item.post.as_ref(),
            _ => None,
        }
        .unwrap_or_else(|| panic!("{method} {template} is not documented"));
        assert!(
            operation
                .responses
                .responses
                .contains_key(expected.as_str()),
            "{method} {template} answers {expected}, which the document does not list"
        );
    }
    // The document itself, and the JSON error shape for what is not in it.
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let served = router.clone().oneshot(get(openapi::PATH)).await.unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    for uri in ["/internal/cluster", "/nope"] {
        let answer = router.clone().oneshot(get(uri)).await.unwrap();
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{uri}");
    }
}
