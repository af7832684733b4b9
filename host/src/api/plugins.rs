//! `/plugins`: the loaded plugins, and upload with hot-load.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::plugin::World;

pub async fn list(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"plugins": app.plugins.list()}))
}

/// Checks, compiles and checks the upload off the async workers, then swaps it in atomically.
/// An upload under a name whose bound entity types need the other world is refused with nothing
/// changed. An entity plugin with no entity type bound yet serves the entity type of its own
/// name.
pub async fn upload(
    State(app): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let bytes = body?;
    refuse_bound_resolver(&app, &name)?;
    let registry = app.plugins.clone();
    let plugin = name.clone();
    let needed = app.entities.world_needed(&name);
    let report = tokio::task::spawn_blocking(move || registry.load_world(&plugin, &bytes, needed))
        .await
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "load_failed",
                e.to_string(),
            )
        })??;
    if report.world == World::Entity {
        app.entities.bind_type_if_unbound(&name);
    }
    Ok(Json(json!(report)))
}

/// A new build of a resolver that replicated entity types fold with would make each replica
/// re-decide its history with it whenever it folds again (after a rewind, a restart), at a
/// different moment on each replica: they would diverge. Such an upload is refused.
fn refuse_bound_resolver(app: &AppState, name: &str) -> Result<(), ApiError> {
    if app.plugins.get(name).is_err() {
        return Ok(());
    }
    let bound: Vec<String> = app
        .entities
        .types()
        .into_iter()
        .filter(|entity_type| {
            entity_type
                .config
                .replication
                .as_ref()
                .is_some_and(|replication| replication.resolver == name)
        })
        .map(|entity_type| entity_type.name)
        .collect();
    if bound.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "resolver_bound",
        format!(
            "`{name}` is the resolver of the replicated entity types {}: a new build would \
             re-decide events already folded, at a different moment on each replica, and the \
             replicas would diverge. Load the new build under a new name and change each entity's \
             resolver with PUT /entities/{{type}}/{{id}}/resolver: the change then takes effect \
             at one point of the history on every replica (docs/replication.md)",
            bound.join(", ")
        ),
    ))
}
