//! Errors of the public API, by what the client should do about them. Every one is answered as
//! `{"status":"failed","error":"..."}`; internal details are logged, not sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use storage::proto::StatusBody;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong; nothing was written. Do not retry as is.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request contradicts the cluster's state (a counter of another cluster). Do not retry as is.
    #[error("{0}")]
    Conflict(String),
    /// Nothing was written; retry later.
    #[error("no replica can take the request: {0}")]
    Unavailable(String),
    /// The write may or may not have committed (a failure after the decision was logged). Retrying the
    /// same items is safe: ids are counted once. The cause is logged, not sent.
    #[error("outcome unknown; re-sending the same items is safe")]
    Unknown(String),
    /// Local storage failed before any decision: nothing was written.
    #[error("storage failure")]
    Storage(String),
    /// No room on a disk the write needs (the coordinator's, or every counter's): nothing was written.
    /// Retry once space is freed.
    #[error("{0}")]
    InsufficientStorage(String),
}

impl ApiError {
    pub fn unknown(e: impl std::fmt::Display) -> Self {
        ApiError::Unknown(e.to_string())
    }
}

/// The one place a round's failure becomes an HTTP answer.
impl From<crate::txn::RoundError> for ApiError {
    fn from(e: crate::txn::RoundError) -> Self {
        use crate::txn::RoundError;
        match e {
            RoundError::Unavailable(why) => ApiError::Unavailable(why),
            RoundError::OutcomeUnknown(why) => ApiError::Unknown(why),
            RoundError::Storage(why) => ApiError::Storage(why),
            RoundError::InsufficientStorage(why) => ApiError::InsufficientStorage(why),
        }
    }
}

impl From<storage::Error> for ApiError {
    fn from(e: storage::Error) -> Self {
        match crate::txn::RoundError::from(e) {
            crate::txn::RoundError::InsufficientStorage(why) => ApiError::InsufficientStorage(why),
            other => ApiError::Storage(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Unknown(_) | ApiError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if let ApiError::Storage(cause) | ApiError::Unknown(cause) = &self {
            tracing::error!(%cause, "request failed");
        }
        (status, Json(StatusBody::failed(self.to_string()))).into_response()
    }
}
