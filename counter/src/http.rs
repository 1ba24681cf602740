//! The counter's internal HTTP API: parse, call [`Participant`], map errors. Only the coordinator
//! calls it.

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use storage::proto::{
    paths, Applied, ApplyLogRequest, CommitRequest, CounterCount, CounterStatus,
    FinishSnapshotRequest, ImportRequest, LogPage, LogQuery, PrepareRequest, RollbackRequest,
    SnapshotPage, SnapshotQuery, StatusBody, Vote, NODE_HEADER,
};
use storage::Error;

use crate::participant::{unhex, Participant};

pub fn router(participant: Participant, max_body_bytes: usize) -> Router {
    let node_id = participant.status().map(|s| s.node_id).unwrap_or_default();
    Router::new()
        .route(paths::HEALTH, get(status))
        .route(paths::STATUS, get(status))
        .route(paths::PREPARE, post(prepare))
        .route(paths::COMMIT, post(commit))
        .route(paths::ROLLBACK, post(rollback))
        .route(&format!("{}/{{tenant}}", paths::COUNT), get(count))
        .route(paths::LOG, get(log_page))
        .route(paths::SNAPSHOT, get(snapshot_page))
        .route(paths::APPLY_LOG, post(apply_log))
        .route(paths::IMPORT, post(import))
        .route(paths::FINISH_SNAPSHOT, post(finish_snapshot))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(node_id, check_node))
        .with_state(participant)
}

/// Refuses a call meant for another node (see [`NODE_HEADER`]): this address may have belonged to
/// another replica when the coordinator learned it.
async fn check_node(State(me): State<String>, request: Request, next: Next) -> Response {
    match request.headers().get(NODE_HEADER).map(|v| v.to_str()) {
        Some(Ok(meant)) if meant != me => {
            let error = format!("this is node {me}, not {meant}");
            (StatusCode::CONFLICT, Json(StatusBody::failed(error))).into_response()
        }
        _ => next.run(request).await,
    }
}

/// A storage error as the coordinator sees it: 409 for "you asked out of order", 500 otherwise.
pub struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match self.0 {
            Error::Gap { .. } | Error::NotPrepared(_) | Error::LogTrimmed { .. } => {
                StatusCode::CONFLICT
            }
            _ => {
                tracing::error!(error = %self.0, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (code, Json(StatusBody::failed(self.0.to_string()))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn status(State(p): State<Participant>) -> ApiResult<CounterStatus> {
    Ok(Json(p.status()?))
}

async fn prepare(State(p): State<Participant>, Json(req): Json<PrepareRequest>) -> ApiResult<Vote> {
    Ok(Json(p.prepare(req.txid, req.items).await?))
}

async fn commit(
    State(p): State<Participant>,
    Json(req): Json<CommitRequest>,
) -> ApiResult<Applied> {
    Ok(Json(Applied {
        last_applied: p.commit(req.txid, req.seq).await?,
    }))
}

async fn rollback(
    State(p): State<Participant>,
    Json(req): Json<RollbackRequest>,
) -> ApiResult<StatusBody> {
    p.rollback(req.txid).await?;
    Ok(Json(StatusBody::success()))
}

async fn count(
    State(p): State<Participant>,
    Path(tenant): Path<String>,
) -> ApiResult<CounterCount> {
    Ok(Json(p.count(&tenant)?))
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
    Ok(Json(Applied {
        last_applied: p.apply_log(req.entries).await?,
    }))
}

async fn import(
    State(p): State<Participant>,
    Json(req): Json<ImportRequest>,
) -> ApiResult<Applied> {
    Ok(Json(Applied {
        last_applied: p.import(req.items).await?,
    }))
}

async fn finish_snapshot(
    State(p): State<Participant>,
    Json(req): Json<FinishSnapshotRequest>,
) -> ApiResult<Applied> {
    Ok(Json(Applied {
        last_applied: p.finish_snapshot(req.seq, req.txid).await?,
    }))
}
