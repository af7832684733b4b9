//! `/leases/{name}`: named leases for external workers that use weft as their coordinator (acquire,
//! renew, release, show), on the node's lease backend; `/leases`: the live ones, listed.
//!
//! A worker acquires with its owner name and a time to live, renews well before the time to live runs
//! out, and passes the fencing token to whatever it writes, so that its writes are refused once a
//! newer holder took over. Expiry is judged by the backend's clock; a worker that cannot renew must
//! stop before its own deadline (see `docs/leases.md`).
//!
//! On a node with tokens the owner is the caller's token name: a request may leave `owner` out, and
//! one naming another owner is refused (403 `forbidden`), so no caller can renew or release a lease
//! another token holds.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::Identity;
use super::entities::{ListQuery, page_limit};
use super::error::ApiError;
use crate::lease::{Grant, HeldLease, Holder, LeaseError};

/// The time to live when a request names none.
const DEFAULT_TTL_MS: u64 = 10_000;

fn default_ttl_ms() -> u64 {
    DEFAULT_TTL_MS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    #[serde(default)]
    owner: Option<String>,
    #[serde(default = "default_ttl_ms")]
    ttl_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    #[serde(default)]
    owner: Option<String>,
    fencing_token: u64,
    #[serde(default = "default_ttl_ms")]
    ttl_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    #[serde(default)]
    owner: Option<String>,
    fencing_token: u64,
}

/// 200 with the grant, or 409 `lease_held` naming the holder.
pub async fn acquire(
    State(app): State<AppState>,
    Path(name): Path<String>,
    identity: Option<Extension<Identity>>,
    body: Result<Json<AcquireRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = body.map_err(invalid_json)?;
    let owner = owner_of(request.owner, identity)?;
    let ttl = Duration::from_millis(request.ttl_ms);
    if let Some(grant) = app.lease.acquire(&name, &owner, ttl).await? {
        return Ok(grant_body(grant));
    }
    let held_by = match app.lease.holder(&name).await? {
        Some(holder) => format!(
            "held by {} (fencing token {}, expires in {} ms)",
            holder.owner,
            holder.fencing_token,
            holder.expires_in.as_millis()
        ),
        // Freed between the two calls: the caller may simply try again.
        None => "held by another owner".to_owned(),
    };
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "lease_held",
        format!("lease {name} is {held_by}"),
    ))
}

/// 200 with the renewed grant, or 409 `lease_lost` when the caller no longer holds the lease.
pub async fn renew(
    State(app): State<AppState>,
    Path(name): Path<String>,
    identity: Option<Extension<Identity>>,
    body: Result<Json<RenewRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = body.map_err(invalid_json)?;
    let owner = owner_of(request.owner, identity)?;
    let ttl = Duration::from_millis(request.ttl_ms);
    match app
        .lease
        .renew(&name, &owner, request.fencing_token, ttl)
        .await?
    {
        Some(grant) => Ok(grant_body(grant)),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "lease_lost",
            format!(
                "lease {name} is not held by {} with fencing token {} (it expired, was released \
                 or was taken over): stop writing with that token",
                owner, request.fencing_token
            ),
        )),
    }
}

/// 200 `{"released": bool}`: false when the caller did not hold the lease (nothing changed).
pub async fn release(
    State(app): State<AppState>,
    Path(name): Path<String>,
    identity: Option<Extension<Identity>>,
    body: Result<Json<ReleaseRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(request) = body.map_err(invalid_json)?;
    let owner = owner_of(request.owner, identity)?;
    let released = app
        .lease
        .release(&name, &owner, request.fencing_token)
        .await?;
    Ok(Json(json!({"name": name, "released": released})))
}

/// 200 with the live holder, `null` when the lease is free.
/// `GET /leases`: the live leases, by name, a page at a time (`?limit=&after=` as the entity
/// listing).
pub async fn list(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = page_limit(query.limit)?;
    // One more than the page shows whether there is a next one.
    let mut held = app
        .lease
        .held(query.after.as_deref().unwrap_or_default(), limit + 1)
        .await?;
    let next = (held.len() > limit).then(|| {
        held.truncate(limit);
        held.last().map(|last| last.name.clone())
    });
    let leases: Vec<Value> = held
        .into_iter()
        .map(|HeldLease { name, holder }| json!({"name": name, "holder": holder_json(holder)}))
        .collect();
    Ok(Json(json!({"leases": leases, "next": next.flatten()})))
}

fn holder_json(
    Holder {
        owner,
        fencing_token,
        expires_in,
    }: Holder,
) -> Value {
    json!({
        "owner": owner,
        "fencing_token": fencing_token,
        "expires_in_ms": expires_in.as_millis() as u64,
    })
}

pub async fn show(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let holder = app.lease.holder(&name).await?;
    Ok(Json(json!({
        "name": name,
        "holder": holder.map(holder_json),
    })))
}

/// The owner a request acts as: the caller's token name on a node with tokens (a different
/// `owner` in the body is refused), else the body's `owner`, which is then required.
fn owner_of(
    requested: Option<String>,
    identity: Option<Extension<Identity>>,
) -> Result<String, ApiError> {
    match (requested, identity) {
        (Some(requested), Some(Extension(identity))) if requested != identity.name => {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "leases taken with token {:?} are owned by {:?}, not {requested:?}: leave owner \
                     out or name the token's own",
                    identity.name, identity.name
                ),
            ))
        }
        (_, Some(Extension(identity))) => Ok(identity.name),
        (Some(requested), None) => Ok(requested),
        (None, None) => Err(ApiError::bad_request(
            "invalid_json",
            "missing field `owner`: name the lease's owner",
        )),
    }
}

fn grant_body(grant: Grant) -> Json<Value> {
    Json(json!({
        "fencing_token": grant.fencing_token,
        "ttl_ms": grant.ttl.as_millis() as u64,
    }))
}

fn invalid_json(rejection: JsonRejection) -> ApiError {
    ApiError::bad_request("invalid_json", rejection.body_text())
}

impl From<LeaseError> for ApiError {
    fn from(error: LeaseError) -> Self {
        let (status, code) = match &error {
            LeaseError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_lease_request"),
            LeaseError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "lease_backend_unavailable")
            }
        };
        ApiError::new(status, code, error.to_string())
    }
}
