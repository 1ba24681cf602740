//! HTTP layer of the coordinator, on two listeners: the public API ([`public_router`]: items, counts,
//! health) and the internal API ([`internal_router`]: the counters' registration and outcome queries,
//! the operator's cluster view), every route of which requires the cluster token. Nothing internal is
//! reachable from the public port, not even as a 401. Handlers parse, call the transaction manager,
//! registry or syncer, and map errors; no protocol logic lives here.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use service::auth::{self, Auth};
use storage::proto::{
    paths, ClusterView, CountBody, Outcome, OutcomeQuery, RegisterReply, RegisterRequest,
    StatusBody,
};
use storage::CounterState;

use crate::client::CounterClient;
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
    pub client: CounterClient,
    pub syncer: Syncer,
    pub reader: Reader,
    pub limits: Limits,
    pub auth: Auth,
}

/// The public API.
pub fn public_router(app: App, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/items", post(post_items))
        .route("/items/{tenant}/count", get(get_count))
        .route(paths::HEALTH, get(health))
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

/// Linearizable: see [`crate::reads`].
async fn get_count(
    State(app): State<App>,
    tenant: Result<Path<String>, PathRejection>,
) -> Result<Json<CountBody>, ApiError> {
    let Path(tenant) =
        tenant.map_err(|e| ApiError::BadRequest(format!("bad tenant in path: {e}")))?;
    if tenant.len() > app.limits.max_tenant_bytes {
        return Err(ApiError::BadRequest(format!(
            "tenant is {} bytes long, at most {} allowed",
            tenant.len(),
            app.limits.max_tenant_bytes
        )));
    }
    Ok(Json(CountBody {
        count: app.reader.count(&tenant).await?,
    }))
}

async fn health() -> Json<StatusBody> {
    Json(StatusBody::success())
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
    // A known in-sync counter re-registering from the same address keeps its state: what it
    // acknowledged is on its disk, while `last_applied` in the request may already be outdated by a
    // round that committed meanwhile. Reads check freshness anyway.
    tracing::debug!(node = %req.node_id, url = %req.url, last_applied = req.last_applied, "registration");
    app.registry.register(&req.node_id, &req.url)?;
    app.txn.store().durable().await?;
    if app.registry.state(&req.node_id) == Some(CounterState::Lagging) {
        app.syncer.spawn(req.node_id);
    }
    Ok(Json(RegisterReply { cluster_id }))
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
