//! `/entities/{type}` (the listing), `/entities/{type}/{id}` (commands, state, events) and
//! `/entity-types` (bindings).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

use super::AppState;
use super::error::ApiError;
use super::payload::{Document, command_from_body, msgpack_to_json, respond};
use crate::entity::{
    CommandOptions, ENTITY_PAGE_DEFAULT, ENTITY_PAGE_MAX, EntityPage, EntityTypeConfig,
    IdempotencyKey,
};

/// The header a client names a command's idempotency key with.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Events returned per request at most.
const EVENTS_PAGE_MAX: usize = 1_000;

/// Payload bytes a page of events carries at most (a single larger event still goes out alone).
const EVENTS_PAGE_BYTES_MAX: usize = 8 << 20;

pub async fn send_command(
    State(app): State<AppState>,
    Path((entity_type, entity_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let command = command_from_body(&headers, &body?)?;
    // The deadline starts with the request and travels with the command, to the owner's mailbox:
    // a command still queued when it passes is dropped there, not applied.
    let options = CommandOptions {
        deadline: Some(tokio::time::Instant::now() + app.ask_timeout),
        idempotency_key: idempotency_key(&headers)?,
    };
    let ask = app.router.ask(&entity_type, &entity_id, command, options);
    let outcome = within(app.ask_timeout, ask).await?;
    let mut document = Document::new()
        .payload("reply", outcome.reply)
        .field("seq_nr", outcome.seq_nr)
        .field("plugin", outcome.plugin);
    if outcome.replayed {
        document = document.field("replayed", true);
    }
    Ok(respond(&headers, StatusCode::OK, &document))
}

/// The `Idempotency-Key` header, checked: 400 `invalid_idempotency_key` if malformed.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let invalid = |reason: String| ApiError::bad_request("invalid_idempotency_key", reason);
    let text = value
        .to_str()
        .map_err(|_| invalid("the Idempotency-Key header is not visible ASCII".to_owned()))?;
    IdempotencyKey::parse(text).map(Some).map_err(invalid)
}

pub async fn get_state(
    State(app): State<AppState>,
    Path((entity_type, entity_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let state = within(app.ask_timeout, app.router.state(&entity_type, &entity_id)).await?;
    let mut document = Document::new()
        .field("entity_type", entity_type)
        .field("entity_id", entity_id)
        .payload("state", state.state.clone())
        .field("seq_nr", state.seq_nr)
        .field("plugin", state.plugin);
    if let Some(replica) = &state.replica {
        document = document.field("replica", json!(replica));
    }
    // MessagePack clients also get the state's exact bytes as a binary, to compare replicas
    // byte for byte.
    Ok(respond(
        &headers,
        StatusCode::OK,
        &document.binary("state_raw", state.state),
    ))
}

/// The answer of `call`, or 504 `ask_timeout` once `deadline` has passed.
async fn within<T, E: Into<ApiError>>(
    deadline: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(deadline, call).await {
        Ok(answer) => answer.map_err(Into::into),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "ask_timeout",
            format!(
                "no answer within ask_timeout_ms = {} ms; a command is not applied unless its \
                 journal append began before then (docs/entities.md, \"Deadlines\"); retry with \
                 the same Idempotency-Key to be sure",
                deadline.as_millis()
            ),
        )),
    }
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
    // A page ends at its count or once its payloads reach EVENTS_PAGE_BYTES_MAX (after at
    // least one event): a client reads on from the seq_nr after the last one it got.
    let mut page_bytes = 0usize;
    let events: Vec<Document> = events
        .into_iter()
        .take_while(|event| {
            let fits = page_bytes == 0 || page_bytes + event.payload.len() <= EVENTS_PAGE_BYTES_MAX;
            page_bytes += event.payload.len();
            fits
        })
        .map(|event| {
            let document = match &event.idempotency {
                Some(record) => Document::new().field("idempotency_key", record.key.clone()),
                None => Document::new(),
            };
            document
                .field("seq_nr", event.seq_nr)
                .field("writer", event.writer.to_string())
                .field("fencing_token", event.fencing_token)
                .field("timestamp", event.timestamp)
                .field("origin_replica", event.origin_replica)
                .field("origin_seq_nr", event.origin_seq_nr)
                .field("version", json!(event.version))
                .field("concurrent", event.concurrent)
                .field("plugin", event.plugin)
                .payload("payload", event.payload)
        })
        .collect();
    Ok(respond(
        &headers,
        StatusCode::OK,
        &Document::new()
            .field("entity_type", entity_type)
            .field("entity_id", entity_id)
            .documents("events", events),
    ))
}

/// A listing's `?limit=`: [`ENTITY_PAGE_DEFAULT`] when absent, `400 invalid_query` outside 1 to
/// [`ENTITY_PAGE_MAX`].
pub(super) fn page_limit(asked: Option<usize>) -> Result<usize, ApiError> {
    let limit = asked.unwrap_or(ENTITY_PAGE_DEFAULT);
    if !(1..=ENTITY_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 to {ENTITY_PAGE_MAX}, not {limit}"),
        ));
    }
    Ok(limit)
}

/// A listing's `?limit=&after=`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    pub(super) limit: Option<usize>,
    /// The id (or name) the previous page ended with (its `next`).
    pub(super) after: Option<String>,
}

/// A page of the entities of a type, from this node's journal.
pub async fn list_entities(
    State(app): State<AppState>,
    Path(entity_type): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EntityPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = page_limit(query.limit)?;
    let page = app
        .entities
        .list_entities(
            &entity_type,
            query.after.as_deref().filter(|after| !after.is_empty()),
            limit,
        )
        .await?;
    Ok(Json(page))
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
    app.entities.bind_type(&entity_type, config.clone())?;
    if let Err(error) = app.deployments.record_binding(&entity_type, &config) {
        tracing::error!(
            entity_type,
            "the binding holds but will not survive a restart: {error}"
        );
    }
    Ok(Json(json!({"entity_types": app.entities.types()})))
}
