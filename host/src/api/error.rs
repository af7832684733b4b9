//! [`ApiError`]: every failure of the API as JSON with a stable code and a status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::entity::EntityError;
use crate::plugin::PluginError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<EntityError> for ApiError {
    fn from(error: EntityError) -> Self {
        let status = match &error {
            EntityError::UnknownEntityType(_) => StatusCode::NOT_FOUND,
            EntityError::InvalidName(_) => StatusCode::BAD_REQUEST,
            EntityError::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            EntityError::Overloaded { .. } | EntityError::Stopped(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            EntityError::WriterConflict(_) => StatusCode::CONFLICT,
            EntityError::Plugin { code, .. } if *code == "unknown_plugin" => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            EntityError::Plugin { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            EntityError::Journal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            EntityError::NotWriter { .. } | EntityError::Fenced(_) => StatusCode::CONFLICT,
            EntityError::Lease(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<PluginError> for ApiError {
    fn from(error: PluginError) -> Self {
        let status = match &error {
            PluginError::UnknownPlugin(_) => StatusCode::NOT_FOUND,
            PluginError::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
