//! The counter's internal HTTP API: parse, call [`Participant`], map errors. Only the coordinator
//! calls it: every route but `/health`, `/ready` and `/metrics` requires the cluster token (`service::auth`),
//! checked before anything else, then the node and cluster the call is meant for
//! ([`check_identity`]). `/metrics` is open like `/health`: it holds aggregates only, no tenant.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRef, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use storage::proto::{
    check_tenant, paths, Applied, ApplyLogRequest, CommitRequest, CounterStatus, Counts,
    CountsRequest, FinishSnapshotRequest, ImportRequest, LogPage, LogQuery, PrepareRequest,
    RollbackRequest, SnapshotPage, SnapshotQuery, StatusBody, Vote, CLUSTER_HEADER,
    MAX_COUNTS_BODY_BYTES, MAX_COUNTS_TENANTS, MAX_TENANT_BYTES, NODE_HEADER,
};
use storage::Error;

use crate::participant::{unhex, Participant};
use service::auth::{self, Auth};

#[derive(Clone)]
struct App {
    participant: Participant,
    auth: Auth,
}

impl FromRef<App> for Participant {
    fn from_ref(app: &App) -> Participant {
        app.participant.clone()
    }
}

pub fn router(participant: Participant, auth: Auth, max_body_bytes: usize) -> Router {
    let app = App {
        participant: participant.clone(),
        auth: auth.clone(),
    };
    let internal = Router::new()
        .route(paths::STATUS, get(status))
        .route(paths::PREPARE, post(prepare))
        .route(paths::COMMIT, post(commit))
        .route(paths::ROLLBACK, post(rollback))
        // A read batch is small: its own limit, under the one of the write and sync bodies.
        .route(
            paths::COUNTS,
            post(counts).layer(DefaultBodyLimit::max(MAX_COUNTS_BODY_BYTES)),
        )
        .route(paths::LOG, get(log_page))
        .route(paths::SNAPSHOT, get(snapshot_page))
        .route(paths::APPLY_LOG, post(apply_log))
        .route(paths::IMPORT, post(import))
        .route(paths::FINISH_SNAPSHOT, post(finish_snapshot))
        .fallback(|| async {
            let body = StatusBody::failed("no such internal endpoint");
            (StatusCode::NOT_FOUND, Json(body))
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            participant,
            check_identity,
        ))
        // Outermost: a call without the token is refused before anything else looks at it.
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_token,
        ));
    Router::new()
        .route(paths::HEALTH, get(health))
        .route(paths::READY, get(ready))
        .route(paths::METRICS, get(metrics))
        .merge(internal)
        .with_state(app)
}

/// Prometheus metrics: the HTTP and flush figures recorded as they happen, and the replica's size
/// and position read now.
async fn metrics(State(p): State<Participant>) -> Response {
    let store = p.store();
    if let Ok((items, tenants)) = store.totals() {
        metrics::gauge!("dc_items_stored").set(items as f64);
        metrics::gauge!("dc_tenants_stored").set(tenants as f64);
    }
    if let Ok(seq) = store.last_applied() {
        metrics::gauge!("dc_last_applied_seq").set(seq as f64);
    }
    if let Ok(bytes) = store.size_on_disk() {
        metrics::gauge!("dc_disk_bytes").set(bytes as f64);
    }
    if let Ok(prepared) = store.prepared_txids() {
        metrics::gauge!("dc_prepared_transactions").set(prepared.len() as f64);
    }
    service::observe::render()
}

/// Liveness for container health checks: open, and says nothing about the replica.
async fn health() -> Json<StatusBody> {
    Json(StatusBody::success())
}

/// Readiness for rolling updates: 200 once the coordinator has counted this replica in sync since
/// the process started (see [`Participant::mark_ready`]), 503 before. Open like `/health`.
async fn ready(State(p): State<Participant>) -> (StatusCode, Json<StatusBody>) {
    if p.ready() {
        (StatusCode::OK, Json(StatusBody::success()))
    } else {
        let body = StatusBody::failed("not in sync with the coordinator since the start");
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

/// Refuses a call meant for another node (see [`NODE_HEADER`]): this address may have belonged to
/// another replica when the coordinator learned it. And one from a coordinator of another cluster
/// ([`CLUSTER_HEADER`]) than the one this replica joined.
async fn check_identity(State(p): State<Participant>, request: Request, next: Next) -> Response {
    match refusal(&p, request.headers()) {
        Some(error) => (StatusCode::CONFLICT, Json(StatusBody::failed(error))).into_response(),
        None => next.run(request).await,
    }
}

fn refusal(p: &Participant, headers: &axum::http::HeaderMap) -> Option<String> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let (Some(meant), Ok(me)) = (header(NODE_HEADER), p.store().node_id()) {
        if meant != me {
            return Some(format!("this is node {me}, not {meant}"));
        }
    }
    if let (Some(theirs), Ok(Some(mine))) = (header(CLUSTER_HEADER), p.store().cluster_id()) {
        if theirs != mine {
            let theirs = theirs.to_owned();
            return Some(Error::OtherCluster { mine, theirs }.to_string());
        }
    }
    None
}

/// A storage error as the coordinator sees it: 409 for "you asked out of order", 507 for a full disk,
/// 503 for a database that failed otherwise, 500 for anything else.
pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match self.0 {
            Error::Gap { .. }
            | Error::NotPrepared(_)
            | Error::LogTrimmed { .. }
            | Error::OtherCluster { .. }
            | Error::Diverged { .. } => StatusCode::CONFLICT,
            // Logged once, by the flusher, when it failed: not on every refused call.
            Error::Unwritable {
                disk_full: true, ..
            } => StatusCode::INSUFFICIENT_STORAGE,
            Error::Unwritable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ if self.0.is_disk_full() => StatusCode::INSUFFICIENT_STORAGE,
            _ => {
                tracing::error!(error = %self.0, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (code, Json(StatusBody::failed(self.0.to_string()))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Fails while the database is unwritable: the coordinator's health check then keeps this replica out
/// of the write and read sets and starts no catch-up that could not be stored.
async fn status(State(app): State<App>) -> ApiResult<CounterStatus> {
    if let Some(failure) = app.participant.store().failure() {
        return Err(ApiError(failure.error()));
    }
    Ok(Json(CounterStatus {
        refused_calls: app.auth.refused_calls(),
        ..app.participant.status()?
    }))
}

#[tracing::instrument(skip_all, fields(txid = req.txid, items = req.items.len()))]
async fn prepare(State(p): State<Participant>, Json(req): Json<PrepareRequest>) -> ApiResult<Vote> {
    Ok(Json(p.prepare(req.txid, req.items).await?))
}

#[tracing::instrument(skip_all, fields(txid = req.txid, seq = req.seq))]
async fn commit(
    State(p): State<Participant>,
    Json(req): Json<CommitRequest>,
) -> ApiResult<Applied> {
    Ok(Json(p.commit(req.txid, req.seq).await?))
}

#[tracing::instrument(skip_all, fields(txid = req.txid))]
async fn rollback(
    State(p): State<Participant>,
    Json(req): Json<RollbackRequest>,
) -> ApiResult<StatusBody> {
    p.rollback(req.txid).await?;
    Ok(Json(StatusBody::success()))
}

/// The counts of a batch of tenants (the coordinator's reads waiting for this counter). The body is
/// parsed here rather than by `Json`, so that every refusal is a JSON error that says why.
async fn counts(
    State(p): State<Participant>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Counts>, Response> {
    let refuse =
        |code: StatusCode, why: String| (code, Json(StatusBody::failed(why))).into_response();
    let req = counts_request(body).map_err(|(code, why)| refuse(code, why))?;
    p.counts(&req.tenants)
        .map(Json)
        .map_err(|e| ApiError(e).into_response())
}

/// A [`CountsRequest`] within the bounds: at most [`MAX_COUNTS_TENANTS`] tenants, each one the public
/// API would accept.
fn counts_request(
    body: Result<Bytes, BytesRejection>,
) -> Result<CountsRequest, (StatusCode, String)> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is larger than {MAX_COUNTS_BODY_BYTES} bytes"),
        ),
        _ => (StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
    })?;
    let req: CountsRequest = serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!(r#"body is not {{"tenants": ["...", ...]}} ({e})"#),
        )
    })?;
    if req.tenants.len() > MAX_COUNTS_TENANTS {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} tenants in one call, at most {MAX_COUNTS_TENANTS} allowed",
                req.tenants.len()
            ),
        ));
    }
    for (i, tenant) in req.tenants.iter().enumerate() {
        check_tenant(tenant, MAX_TENANT_BYTES)
            .map_err(|why| (StatusCode::BAD_REQUEST, format!("tenant {i}: {why}")))?;
    }
    Ok(req)
}

async fn log_page(State(p): State<Participant>, Query(q): Query<LogQuery>) -> ApiResult<LogPage> {
    Ok(Json(p.log_page(q.from, q.max_items.max(1)).await?))
}

async fn snapshot_page(
    State(p): State<Participant>,
    Query(q): Query<SnapshotQuery>,
) -> Result<Json<SnapshotPage>, Response> {
    let after = match q.after.as_deref().map(unhex) {
        None => None,
        Some(Some(key)) => Some(key),
        Some(None) => {
            return Err((
                StatusCode::BAD_REQUEST,
                Json(StatusBody::failed("cursor is not hex")),
            )
                .into_response())
        }
    };
    p.snapshot_page(after, q.max_items.max(1))
        .await
        .map(Json)
        .map_err(|e| ApiError(e).into_response())
}

async fn apply_log(
    State(p): State<Participant>,
    Json(req): Json<ApplyLogRequest>,
) -> ApiResult<Applied> {
    Ok(Json(p.apply_log(req.entries).await?))
}

async fn import(
    State(p): State<Participant>,
    Json(req): Json<ImportRequest>,
) -> ApiResult<Applied> {
    Ok(Json(p.import(req.items).await?))
}

async fn finish_snapshot(
    State(p): State<Participant>,
    Json(req): Json<FinishSnapshotRequest>,
) -> ApiResult<Applied> {
    Ok(Json(p.finish_snapshot(req.seq, req.txid).await?))
}
