//! `/ddata/{key}`: DistributedData over HTTP.
//!
//! | request | answer |
//! |---|---|
//! | `GET /ddata/{key}?consistency=local\|majority\|all&timeout_ms=` | `{"key", "kind", "value"}`; 404 `unknown_key`; a deleted key `{"key", "deleted": true}` |
//! | `POST /ddata/{key}` `{"op": …, "kind"?, "consistency"?, "timeout_ms"?}` | `{"key", "applied": true}` |
//! | `DELETE /ddata/{key}?consistency=&timeout_ms=` | `{"key", "deleted": true}` |
//! | `GET /ddata/{key}/subscribe` | server-sent events `value`, each the key's latest entry |
//!
//! Without a consistency the call is `local`; the timeout defaults to 5 s. A consistency level not
//! reached in time is 504 `consistency_timeout`, saying how many replicas answered (a write is
//! applied here anyway and spreads by gossip).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::ddata::{
    Consistency, DdataCallError, DdataError, DistributedData, Kind, Op, default_kind, entry_to_json,
};

/// The timeout when a call names none.
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// The longest timeout a call may ask for.
const TIMEOUT_MS_MAX: u64 = 60_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    consistency: Option<Consistency>,
    timeout_ms: Option<u64>,
}

impl Level {
    fn parts(&self) -> Result<(Consistency, Duration), ApiError> {
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > TIMEOUT_MS_MAX {
            return Err(ApiError::bad_request(
                "invalid_timeout",
                format!("timeout_ms must be 1 ..= {TIMEOUT_MS_MAX}, not {timeout_ms}"),
            ));
        }
        Ok((
            self.consistency.unwrap_or(Consistency::Local),
            Duration::from_millis(timeout_ms),
        ))
    }
}

#[derive(Debug, Deserialize)]
pub struct UpdateBody {
    #[serde(flatten)]
    op: Op,
    kind: Option<Kind>,
    consistency: Option<Consistency>,
    timeout_ms: Option<u64>,
}

type LevelQuery = Result<Query<Level>, axum::extract::rejection::QueryRejection>;

/// The service and the call's consistency level and timeout from its query.
fn service_at(
    app: &AppState,
    level: LevelQuery,
) -> Result<(&DistributedData, Consistency, Duration), ApiError> {
    let ddata = service(app)?;
    let Query(level) = level.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let (consistency, timeout) = level.parts()?;
    Ok((ddata, consistency, timeout))
}

pub async fn get(
    State(app): State<AppState>,
    Path(key): Path<String>,
    level: LevelQuery,
) -> Result<Json<Value>, ApiError> {
    let (ddata, consistency, timeout) = service_at(&app, level)?;
    match ddata
        .get(&key, consistency, timeout)
        .await
        .map_err(call_error)?
    {
        Some(entry) => {
            let mut body = entry_to_json(&entry);
            body["key"] = json!(key);
            Ok(Json(body))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_key",
            format!("no replica that answered knows the key {key:?}"),
        )),
    }
}

pub async fn update(
    State(app): State<AppState>,
    Path(key): Path<String>,
    body: Result<Json<UpdateBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let ddata = service(&app)?;
    let Json(body) = body.map_err(|e| ApiError::bad_request("invalid_op", e.body_text()))?;
    let level = Level {
        consistency: body.consistency,
        timeout_ms: body.timeout_ms,
    };
    let (consistency, timeout) = level.parts()?;
    let kind = body.kind.unwrap_or_else(|| default_kind(&body.op));
    ddata
        .update(&key, kind, body.op, consistency, timeout)
        .await
        .map_err(call_error)?;
    Ok(Json(json!({"key": key, "applied": true})))
}

pub async fn delete(
    State(app): State<AppState>,
    Path(key): Path<String>,
    level: LevelQuery,
) -> Result<Json<Value>, ApiError> {
    let (ddata, consistency, timeout) = service_at(&app, level)?;
    ddata
        .delete(&key, consistency, timeout)
        .await
        .map_err(call_error)?;
    Ok(Json(json!({"key": key, "deleted": true})))
}

pub async fn subscribe(
    State(app): State<AppState>,
    Path(key): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let ddata = service(&app)?;
    let subscription = ddata.subscribe(&key).await.map_err(call_error)?;
    // The stream owns the subscription: when the client goes, hyper drops the stream, and the
    // subscription's drop frees the key's watch.
    let events = futures::stream::unfold(
        (subscription, app.shutdown, true),
        |(mut subscription, shutdown, first)| async move {
            let values = subscription.values();
            if !first {
                tokio::select! {
                    changed = values.changed() => changed.ok()?,
                    () = shutdown.cancelled() => return None,
                }
            }
            let data = match &*values.borrow_and_update() {
                Some(entry) => entry_to_json(entry),
                None => json!({"value": null}),
            };
            let event = Event::default().event("value").data(data.to_string());
            Some((Ok(event), (subscription, shutdown, false)))
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn service(app: &AppState) -> Result<&DistributedData, ApiError> {
    app.ddata.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_clustered",
            "DistributedData runs on clustered nodes: configure [cluster] in weft.toml",
        )
    })
}

fn call_error(error: DdataCallError) -> ApiError {
    let status = match &error {
        DdataCallError::Refused(
            DdataError::TooManyKeys { .. }
            | DdataError::TooManyRequests { .. }
            | DdataError::TooManySubscribers { .. },
        ) => StatusCode::SERVICE_UNAVAILABLE,
        DdataCallError::Refused(
            DdataError::WrongKind { .. }
            | DdataError::UnsupportedOp { .. }
            | DdataError::Deleted { .. },
        ) => StatusCode::CONFLICT,
        DdataCallError::Refused(_) => StatusCode::BAD_REQUEST,
        DdataCallError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
        DdataCallError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let code = match &error {
        DdataCallError::Refused(DdataError::WrongKind { .. }) => "wrong_kind",
        DdataCallError::Refused(DdataError::UnsupportedOp { .. }) => "unsupported_op",
        DdataCallError::Refused(DdataError::Deleted { .. }) => "key_deleted",
        DdataCallError::TimedOut { .. } => "consistency_timeout",
        // A limit of this node, not a fault of the request: the documented 503 code.
        _ if status == StatusCode::SERVICE_UNAVAILABLE => "ddata_unavailable",
        DdataCallError::Refused(_) => "invalid_ddata_request",
        DdataCallError::Unavailable(_) => "ddata_unavailable",
    };
    ApiError::new(status, code, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(error: DdataError) -> (StatusCode, String) {
        let error = call_error(DdataCallError::Refused(error));
        (error.status, error.code.into_owned())
    }

    #[test]
    fn a_limit_of_the_node_is_503_ddata_unavailable_and_a_bad_request_400() {
        let unavailable = (
            StatusCode::SERVICE_UNAVAILABLE,
            "ddata_unavailable".to_owned(),
        );
        assert_eq!(answer(DdataError::TooManyKeys { max: 1 }), unavailable);
        assert_eq!(answer(DdataError::TooManyRequests { max: 1 }), unavailable);
        assert_eq!(
            answer(DdataError::TooManySubscribers { max: 1 }),
            unavailable
        );
        let invalid = (StatusCode::BAD_REQUEST, "invalid_ddata_request".to_owned());
        assert_eq!(answer(DdataError::InvalidKey { bytes: 0, max: 1 }), invalid);
        let deleted = DdataError::Deleted { key: "k".into() };
        assert_eq!(
            answer(deleted),
            (StatusCode::CONFLICT, "key_deleted".to_owned())
        );
    }
}
