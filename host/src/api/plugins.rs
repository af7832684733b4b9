//! `/plugins`: the loaded plugins (in a cluster, with each member's build of each and whether they
//! agree), upload with hot-load (recorded to survive a restart, deployed to every member), and each
//! name's history of uploads.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use serde_json::json;

use super::AppState;
use super::error::ApiError;

pub async fn list(State(app): State<AppState>) -> Json<serde_json::Value> {
    let mut answer = json!({"plugins": app.plugins.list()});
    if app.router.cluster().is_some() {
        answer["cluster"] = super::cluster::deployments_across(&app).await;
    }
    Json(answer)
}

/// Checks, compiles and checks the upload off the async workers, then swaps it in atomically; in
/// a cluster, every member then loads the same build (see [`crate::cluster::deployments`]).
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
    let deployment = app.deployer.deploy(&name, bytes.to_vec()).await?;
    let mut answer = json!(deployment.report);
    // Loaded either way; kept across restarts only if it could be recorded.
    answer["durable"] = json!(deployment.durable);
    Ok(Json(answer))
}

/// Every load of the plugin over the API, oldest first.
pub async fn history(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Json<serde_json::Value> {
    Json(json!({"name": name, "history": app.deployments.history(&name)}))
}
