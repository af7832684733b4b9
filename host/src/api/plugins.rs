//! `/plugins`: the loaded plugins, upload with hot-load (recorded to survive a restart), and each
//! name's history of uploads.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::plugin::World;

pub async fn list(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"plugins": app.plugins.list()}))
}

/// Checks, compiles and checks the upload off the async workers, then swaps it in atomically.
/// An upload under a name whose bound entity types need the other world is refused with nothing
/// changed, and so is a new build of a resolver replicated types fold with (409
/// `resolver_bound`, see [`crate::entity::EntitySystem::check_new_build`]). An entity plugin with no entity type bound yet serves the entity type of its own
/// name.
pub async fn upload(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bytes = body?;
    let needed = app
        .entities
        .check_new_build(&name, app.plugins.get(&name).is_ok())
        .map_err(|reason| ApiError::new(StatusCode::CONFLICT, "resolver_bound", reason))?;
    let registry = app.plugins.clone();
    let plugin = name.clone();
    let bytes_kept = bytes.clone();
    let report = tokio::task::spawn_blocking(move || registry.load_world(&plugin, &bytes, needed))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "load_failed",
                e.to_string(),
            )
        })??;
    if report.world == World::Entity {
        app.entities.bind_type_if_unbound(&name);
    }
    let mut answer = json!(report);
    // Loaded either way; kept across restarts only if it could be recorded.
    let durable = app.deployments.record_plugin(&report, &bytes_kept);
    if let Err(error) = &durable {
        tracing::error!(plugin = %report.version, "the upload is loaded but will not survive a restart: {error}");
    }
    answer["durable"] = json!(durable.is_ok());
    Ok(Json(answer))
}

/// Every load of the plugin over the API, oldest first.
pub async fn history(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Json<serde_json::Value> {
    Json(json!({"name": name, "history": app.deployments.history(&name)}))
}
