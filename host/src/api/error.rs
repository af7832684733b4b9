//! [`ApiError`]: every failure of the API as JSON with a stable code and a status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use std::borrow::Cow;

use crate::cluster::RouteError;
use crate::entity::EntityError;
use crate::plugin::PluginError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// Seconds a client should wait before retrying (`Retry-After`), for errors that pass.
    pub retry_after_secs: Option<u64>,
}

/// What `Retry-After` says for routing errors: about one membership round.
const ROUTING_RETRY_AFTER_SECS: u64 = 1;
/// What `Retry-After` says when the journal or the lease backend gave up on a call: their time
/// bounds are a fraction of a lease, so a second is usually enough.
const STORAGE_RETRY_AFTER_SECS: u64 = 1;

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// A 503 the client can act on: retry after about a membership round.
    fn retry_later(code: &'static str, error: impl std::fmt::Display) -> Self {
        ApiError {
            retry_after_secs: Some(ROUTING_RETRY_AFTER_SECS),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, error.to_string())
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(request_id) = crate::observability::current_request_id() {
            error["request_id"] = json!(&*request_id);
        }
        let body = json!({ "error": error });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// The status an [`EntityError`] is answered with; nodes forwarding a call answer with the
/// owner's.
pub fn entity_error_status(error: &EntityError) -> StatusCode {
    match error {
        EntityError::UnknownEntityType(_) => StatusCode::NOT_FOUND,
        EntityError::InvalidName(_) => StatusCode::BAD_REQUEST,
        EntityError::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        EntityError::Overloaded { .. } | EntityError::Stopped(_) | EntityError::NodeStopping(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        EntityError::WriterConflict(_) => StatusCode::CONFLICT,
        EntityError::Plugin { code, .. } if *code == "unknown_plugin" || *code == "plugin_busy" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        EntityError::Plugin { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        EntityError::Journal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        EntityError::JournalBusy(_) => StatusCode::SERVICE_UNAVAILABLE,
        EntityError::NotWriter { .. }
        | EntityError::Fenced(_)
        | EntityError::NotAReplica { .. }
        | EntityError::NotReplicated(_) => StatusCode::CONFLICT,
        EntityError::CatchingUp { .. } => StatusCode::SERVICE_UNAVAILABLE,
        EntityError::Lease(_) => StatusCode::SERVICE_UNAVAILABLE,
        EntityError::DeadlineExceeded(_) => StatusCode::GATEWAY_TIMEOUT,
        EntityError::IdempotencyKeyReused { .. } | EntityError::IdempotencyUnsupported(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    }
}

impl From<EntityError> for ApiError {
    fn from(error: EntityError) -> Self {
        let retry_after_secs = storage_retry_after(error.code());
        ApiError {
            retry_after_secs,
            ..ApiError::new(entity_error_status(&error), error.code(), error.to_string())
        }
    }
}

/// `Retry-After` for an entity error code, local or the owner's: storage that gave up on a call
/// at a time bound or could not be reached — the next attempt may well pass.
fn storage_retry_after(code: &str) -> Option<u64> {
    matches!(code, "journal_busy" | "lease_unavailable").then_some(STORAGE_RETRY_AFTER_SECS)
}

impl From<RouteError> for ApiError {
    fn from(error: RouteError) -> Self {
        match error {
            RouteError::Local(error) => error.into(),
            // The owner's own start-up: the same retry as this node's.
            RouteError::Remote(remote) if remote.code == "plugins_loading" => {
                ApiError::retry_later("plugins_loading", remote.message)
            }
            RouteError::Remote(remote) => ApiError {
                retry_after_secs: storage_retry_after(&remote.code),
                ..ApiError::new(
                    StatusCode::from_u16(remote.status).unwrap_or(StatusCode::BAD_GATEWAY),
                    remote.code,
                    remote.message,
                )
            },
            error @ RouteError::PluginsLoading { .. } => {
                ApiError::retry_later("plugins_loading", error)
            }
            error @ RouteError::NoOwner { .. } => ApiError::retry_later("no_owner", error),
            error @ RouteError::OwnerUnreachable { .. } => {
                ApiError::retry_later("owner_unreachable", error)
            }
        }
    }
}

impl From<PluginError> for ApiError {
    fn from(error: PluginError) -> Self {
        let status = match &error {
            PluginError::UnknownPlugin(_) => StatusCode::NOT_FOUND,
            PluginError::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
            PluginError::Busy { .. } | PluginError::ResidentLost { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_body"
        };
        ApiError::new(status, code, rejection.body_text())
    }
}
