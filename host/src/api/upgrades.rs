//! `/plugins/{name}/upgrade` and `/plugins/{name}/rollback`: verified upgrades of an entity
//! plugin and returns to its previous build (see [`crate::upgrade`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::upgrade::{self, UpgradeError, UpgradeOptions};

#[derive(Debug, Deserialize)]
pub struct UpgradeQuery {
    /// Replay this many entities (a deterministic sample) instead of all.
    sample: Option<usize>,
    /// Activate even when the replay finds a divergence or a failure.
    #[serde(default)]
    force: bool,
}

/// Checks the body as the next build of `name` against the journal, then activates it. A
/// refusal is 409 with the report beside the error.
pub async fn upgrade(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<UpgradeQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body?;
    let options = UpgradeOptions {
        sample: query.sample,
        force: query.force,
    };
    let outcome = tokio::task::spawn_blocking(move || {
        upgrade::upgrade(
            &app.entities,
            &app.plugins,
            &app.deployer,
            &name,
            &bytes,
            options,
        )
    })
    .await
    .map_err(join_failed)?;
    match outcome {
        Ok(report) => Ok(Json(report).into_response()),
        Err(UpgradeError::Refused(report)) => {
            let message = UpgradeError::Refused(report.clone()).to_string();
            let body = json!({
                "error": {"code": report.verdict.refusal_code(), "message": message},
                "report": report,
            });
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
        Err(error) => Err(error.into()),
    }
}

/// Makes the previous build in the name's deployment history current again.
pub async fn rollback(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<upgrade::RollbackReport>, ApiError> {
    let report = tokio::task::spawn_blocking(move || {
        upgrade::rollback(
            &app.entities,
            &app.plugins,
            &app.deployments,
            &app.deployer,
            &name,
        )
    })
    .await
    .map_err(join_failed)??;
    Ok(Json(report))
}

fn join_failed(error: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "upgrade_failed",
        error.to_string(),
    )
}

impl From<UpgradeError> for ApiError {
    fn from(error: UpgradeError) -> Self {
        let message = error.to_string();
        let (status, code) = match error {
            UpgradeError::Plugin(plugin) => return plugin.into(),
            UpgradeError::NotAnEntityPlugin(_) => (StatusCode::CONFLICT, "upgrade_unsupported"),
            UpgradeError::Journal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "journal_error"),
            UpgradeError::Refused(report) => (StatusCode::CONFLICT, report.verdict.refusal_code()),
            UpgradeError::Superseded(_) => (StatusCode::CONFLICT, "upgrade_superseded"),
            UpgradeError::NoPreviousVersion(_) => (StatusCode::CONFLICT, "no_previous_version"),
            UpgradeError::MissingBytes { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "deployment_missing")
            }
        };
        ApiError::new(status, code, message)
    }
}
