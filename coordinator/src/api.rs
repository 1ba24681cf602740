//! HTTP layer of the coordinator, on two listeners: the public API ([`public_router`]: items, counts,
//! health, status, metrics, its OpenAPI document) and the internal API ([`internal_router`]: the
//! counters' registration and outcome queries, the operator's cluster view), every route of which
//! requires the cluster token. Nothing internal is reachable from the public port, not even as a 401.
//! Handlers parse, call the transaction manager, registry or reader, and map errors; no protocol
//! logic lives here.
//!
//! The public routes are registered together with their OpenAPI descriptions (`utoipa_axum::routes!`
//! on the `#[utoipa::path]` of each handler), so the document served at `/openapi.json` lists exactly
//! the routes served; `tests/openapi.rs` checks it against the checked-in `docs/openapi.json`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use service::auth::{self, Auth};
use service::observe;
use storage::proto::{
    check_tenant, paths, ClusterView, CountBody, MemberState, Outcome, OutcomeQuery, PublicStatus,
    RegisterReply, RegisterRequest, StatusBody,
};
use storage::CounterState;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::items::{self, Limits};
use crate::reads::Reader;
use crate::registry::Registry;
use crate::sync::Syncer;
use crate::txn::TxnManager;

#[derive(Clone)]
pub struct App {
    pub txn: Arc<TxnManager>,
    pub registry: Arc<Registry>,
    pub syncer: Syncer,
    pub reader: Reader,
    pub limits: Limits,
    pub auth: Auth,
}

/// The public API's routes with their OpenAPI descriptions; [`public_router`] serves them.
pub fn public_routes() -> OpenApiRouter<App> {
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(post_items))
        .routes(routes!(get_count))
        .routes(routes!(health))
        .routes(routes!(status))
        .routes(routes!(metrics))
}

/// The public API, with `/openapi.json` describing it.
pub fn public_router(app: App, max_body_bytes: usize) -> Router {
    let (router, document) = public_routes().split_for_parts();
    let document = Arc::new(document);
    router
        .route(
            crate::openapi::PATH,
            get(move || async move { Json(document.as_ref().clone()) }),
        )
        .fallback(|| async {
            ApiError::NotFound(
                "no such endpoint; try POST /items or GET /items/{tenant}/count".into(),
            )
        })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(app)
}

/// The internal API. The token check wraps every route and the fallbacks, so a caller without the
/// token learns nothing, not even which paths exist.
pub fn internal_router(app: App) -> Router {
    let auth = app.auth.clone();
    Router::new()
        .route(paths::REGISTER, post(register))
        .route(paths::OUTCOME, post(outcome))
        .route(paths::CLUSTER, get(cluster))
        .fallback(|| async { ApiError::NotFound("no such internal endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_token,
        ))
}

/// Adds items. Every item of one POST is counted, or none is; an id already counted for its tenant
/// is counted once, so re-sending a POST is always safe.
#[utoipa::path(post, path = "/items", tag = "items",
    request_body(content = Vec<crate::openapi::ItemInput>, description = "The items to add; any Content-Type, parsed as JSON"),
    responses(
        (status = 200, description = "Committed on every in-sync counter", body = StatusBody),
        (status = 400, description = "Malformed body or item; nothing was written", body = StatusBody),
        (status = 413, description = "Body or item count over the limit; nothing was written", body = StatusBody),
        (status = 500, description = "Outcome unknown; re-sending is safe", body = StatusBody),
        (status = 503, description = "No quorum of counters, or overloaded; nothing was written", body = StatusBody),
        (status = 504, description = "Took too long; outcome unknown, re-sending is safe", body = StatusBody),
        (status = 507, description = "No space left on the coordinator's disk or on every counter's; nothing was written, retry once space is freed", body = StatusBody),
    ))]
async fn post_items(
    State(app): State<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StatusBody>, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("body is larger than the limit: {e}"))
        } else {
            ApiError::BadRequest(format!("cannot read body: {e}"))
        }
    })?;
    let items = items::parse(&body, app.limits)?;
    if !items.is_empty() {
        app.txn.submit(items).await?;
    }
    Ok(Json(StatusBody::success()))
}

/// The number of distinct ids posted for a tenant. Linearizable: it counts every POST acknowledged
/// before the read began, and never less than a read that ended before it began (see
/// [`crate::reads`]).
#[utoipa::path(get, path = "/items/{tenant}/count", tag = "items",
    params(("tenant" = String, Path, description = "Any UTF-8 string, percent-encoded, at most 256 bytes")),
    responses(
        (status = 200, description = "The count (0 for a tenant never seen)", body = CountBody),
        (status = 400, description = "Tenant too long or not valid UTF-8", body = StatusBody),
        (status = 503, description = "No counter can serve the read right now, or overloaded", body = StatusBody),
        (status = 504, description = "Took too long", body = StatusBody),
    ))]
async fn get_count(
    State(app): State<App>,
    tenant: Result<Path<String>, PathRejection>,
) -> Result<Json<CountBody>, ApiError> {
    let Path(tenant) =
        tenant.map_err(|e| ApiError::BadRequest(format!("bad tenant in path: {e}")))?;
    check_tenant(&tenant, app.limits.max_tenant_bytes).map_err(ApiError::BadRequest)?;
    Ok(Json(CountBody {
        count: app.reader.count(&tenant).await?,
    }))
}

/// Liveness: `200` while the coordinator serves.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Serving", body = StatusBody)))]
async fn health() -> Json<StatusBody> {
    Json(StatusBody::success())
}

/// The cluster at a glance: committed rounds and counters by state, without node ids or addresses.
#[utoipa::path(get, path = "/status", tag = "operations",
    responses(
        (status = 200, description = "Counters by state", body = PublicStatus),
        (status = 500, description = "Local storage failure", body = StatusBody),
    ))]
async fn status(State(app): State<App>) -> Result<Json<PublicStatus>, ApiError> {
    let counts = app.registry.state_counts();
    Ok(Json(PublicStatus {
        committed_seq: app.txn.store().committed_seq()?,
        in_sync: counts.in_sync,
        syncing: counts.syncing,
        lagging: counts.lagging,
    }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics(State(app): State<App>) -> Response {
    let counts = app.registry.state_counts();
    for (state, n) in [
        (MemberState::InSync, counts.in_sync),
        (MemberState::Syncing, counts.syncing),
        (MemberState::Lagging, counts.lagging),
    ] {
        metrics::gauge!("dc_counters", "state" => state.as_str()).set(n as f64);
    }
    metrics::gauge!("dc_write_queue_depth").set(app.txn.queue_depth() as f64);
    metrics::gauge!("dc_decided_seq").set(app.txn.decided_seq() as f64);
    metrics::gauge!("dc_decisions_kept").set(app.txn.store().decisions_kept() as f64);
    if let Ok(bytes) = app.txn.store().size_on_disk() {
        metrics::gauge!("dc_disk_bytes").set(bytes as f64);
    }
    observe::render()
}

async fn register(
    State(app): State<App>,
    req: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<Json<RegisterReply>, ApiError> {
    let req = internal_body(req)?;
    let cluster_id = app.txn.store().cluster_id()?;
    if let Some(theirs) = req.cluster_id.as_ref().filter(|c| **c != cluster_id) {
        tracing::warn!(node = %req.node_id, counter_cluster = %theirs, %cluster_id,
            "refused a counter of another cluster");
        return Err(ApiError::Conflict(format!(
            "counter {} belongs to cluster {theirs}; this coordinator's cluster is {cluster_id}",
            req.node_id
        )));
    }
    let committed = app.txn.store().committed_seq()?;
    if req.last_applied > committed {
        // Its data holds commits this coordinator never decided: a coordinator restored from an
        // older copy. Reusing those seqs would acknowledge writes that apply nowhere.
        if app
            .registry
            .mark_lagging(&req.node_id, "ahead of the coordinator")?
        {
            app.txn.store().durable().await?;
        }
        tracing::error!(node = %req.node_id, applied = req.last_applied, committed,
            "refused a counter that is ahead of this coordinator");
        return Err(ApiError::Conflict(format!(
            "counter {} applied {} commits, this coordinator knows {committed}: its data is older than \
             the cluster's",
            req.node_id, req.last_applied
        )));
    }
    // A known in-sync counter re-registering from the same address keeps its state: `last_applied`
    // in the request may already be outdated by a round that committed meanwhile. A counter that
    // restarted and lost an applied COMMIT not yet flushed holds that round in doubt and applies it
    // again before registering; if it could not, the next COMMIT finds the gap and a read finds the
    // stale position, and either one marks it lagging.
    tracing::debug!(node = %req.node_id, url = %req.url, last_applied = req.last_applied, "registration");
    app.registry.register(&req.node_id, &req.url)?;
    app.txn.store().durable().await?;
    let state = app.registry.state(&req.node_id);
    if state == Some(CounterState::Lagging) {
        app.syncer.spawn(req.node_id);
    }
    Ok(Json(RegisterReply {
        cluster_id,
        in_sync: state == Some(CounterState::InSync),
    }))
}

async fn outcome(
    State(app): State<App>,
    req: Result<Json<OutcomeQuery>, JsonRejection>,
) -> Result<Json<Outcome>, ApiError> {
    let req = internal_body(req)?;
    Ok(Json(app.txn.outcome(req.txid)?))
}

async fn cluster(State(app): State<App>) -> Result<Json<ClusterView>, ApiError> {
    let store = app.txn.store();
    let mut view = app
        .registry
        .view(store.cluster_id()?, store.committed_seq()?);
    view.refused_calls = app.auth.refused_calls();
    Ok(Json(view))
}

/// The body of an internal call, or our JSON error instead of the extractor's text.
fn internal_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(t)| t)
        .map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")))
}
