//! `/entities/{type}/{id}` (commands, state, events) and `/entity-types` (bindings).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::payload::{command_from_body, msgpack_to_json, respond, respond_with_bytes};
use crate::entity::EntityTypeConfig;

/// Events returned per request at most.
const EVENTS_PAGE_MAX: usize = 1_000;

pub async fn send_command(
    State(app): State<AppState>,
    Path((entity_type, entity_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let command = command_from_body(&headers, &body?)?;
    let outcome = app.router.ask(&entity_type, &entity_id, command).await?;
    Ok(respond(
        &headers,
        StatusCode::OK,
        json!({
            "reply": msgpack_to_json(&outcome.reply),
            "seq_nr": outcome.seq_nr,
            "plugin": outcome.plugin,
        }),
    ))
}

pub async fn get_state(
    State(app): State<AppState>,
    Path((entity_type, entity_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let state = app.router.state(&entity_type, &entity_id).await?;
    let mut document = json!({
        "entity_type": entity_type,
        "entity_id": entity_id,
        "state": msgpack_to_json(&state.state),
        "seq_nr": state.seq_nr,
        "plugin": state.plugin,
    });
    if let Some(replica) = &state.replica {
        document["replica"] = json!(replica);
    }
    // MessagePack clients also get the state's exact bytes, to compare replicas byte for byte.
    Ok(respond_with_bytes(
        &headers,
        StatusCode::OK,
        document,
        ("state_raw", &state.state),
    ))
}

#[derive(Debug, Deserialize)]
pub struct ResolverChange {
    /// A built-in resolver's name or a loaded resolver plugin's name.
    resolver: String,
}

/// Records a change of a replicated entity's resolver in this node's replica's stream: every
/// replica switches at that point of the total order (docs/replication.md).
pub async fn change_resolver(
    State(app): State<AppState>,
    Path((entity_type, entity_id)): Path<(String, String)>,
    body: Result<Json<ResolverChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(change) =
        body.map_err(|error| ApiError::bad_request("invalid_json", error.body_text()))?;
    let outcome = app
        .entities
        .change_resolver(&entity_type, &entity_id, &change.resolver)
        .await?;
    Ok(Json(json!({
        "config": msgpack_to_json(&outcome.reply),
        "seq_nr": outcome.seq_nr,
        "replica": app.entities.settings().replica,
    })))
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(default = "first_seq_nr")]
    from: u64,
    #[serde(default = "events_page_max")]
    limit: usize,
    /// For a replicated entity: the replica whose stream to read.
    replica: Option<String>,
}

fn first_seq_nr() -> u64 {
    1
}

fn events_page_max() -> usize {
    EVENTS_PAGE_MAX
}

pub async fn get_events(
    State(app): State<AppState>,
    Path((entity_type, entity_id)): Path<(String, String)>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = query.limit.clamp(1, EVENTS_PAGE_MAX);
    let events = app
        .entities
        .events(
            &entity_type,
            &entity_id,
            query.replica.as_deref(),
            query.from.max(1),
            limit,
        )
        .await?;
    let events: Vec<_> = events
        .into_iter()
        .map(|event| {
            json!({
                "seq_nr": event.seq_nr,
                "writer": event.writer.to_string(),
                "fencing_token": event.fencing_token,
                "timestamp": event.timestamp,
                "origin_replica": event.origin_replica,
                "origin_seq_nr": event.origin_seq_nr,
                "version": event.version,
                "concurrent": event.concurrent,
                "plugin": event.plugin,
                "payload": msgpack_to_json(&event.payload),
            })
        })
        .collect();
    Ok(respond(
        &headers,
        StatusCode::OK,
        json!({"entity_type": entity_type, "entity_id": entity_id, "events": events}),
    ))
}

pub async fn list_types(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"entity_types": app.entities.types()}))
}

pub async fn bind_type(
    State(app): State<AppState>,
    Path(entity_type): Path<String>,
    body: Result<Json<EntityTypeConfig>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(config) = body.map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))?;
    if config.plugin.is_empty() {
        return Err(ApiError::bad_request(
            "missing_plugin",
            "name the plugin serving this entity type: {\"plugin\": \"…\"}",
        ));
    }
    app.entities.bind_type(&entity_type, config)?;
    Ok(Json(json!({"entity_types": app.entities.types()})))
}
