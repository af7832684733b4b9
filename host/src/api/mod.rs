//! The HTTP API (axum): entities, plugins, entity types, named leases, health, readiness, metrics
//! and the OpenAPI document.
//!
//! Errors are JSON, `{"error": {"code": "...", "message": "...", "request_id": "..."}}`, with a
//! stable code, a message for people and the request's id (also in every response's
//! `x-request-id`). Bad input is refused before anything is written.
//!
//! # Layout
//! - `auth`: bearer tokens, their scopes and the table of what each route needs.
//! - `error`: [`ApiError`] and its mapping to status codes.
//! - `cluster`: `/cluster`, this node's view of the cluster, and `/cluster/faults` for tests.
//! - `ddata`: `/ddata/{key}`, DistributedData reads, updates, deletes and subscriptions.
//! - `payload`: JSON and MessagePack bodies, and the conversion between them.
//! - `entities`: `/entities/...` and `/entity-types/...`.
//! - `plugins`: `/plugins/...`, upload and hot-load.
//! - `upgrades`: `/plugins/{name}/upgrade` and `/rollback`, verified against the journal.
//! - `leases`: `/leases/{name}/...`, named leases with fencing tokens for external workers.
//! - `notifications`: `/notifications`, lease changes of single-writer entities as server-sent
//!   events.
//! - `ops`: `/health`, `/ready`, `/metrics`, `/openapi.json`.
//! - `observe`: the outermost middleware: request ids, the access log, request latencies.
//! - `console`: the web console at `/` and its assets under `/console/`.

mod auth;
mod cluster;
mod console;
mod ddata;
mod entities;
mod error;
mod leases;
mod notifications;
mod observe;
mod ops;
mod payload;
mod plugins;
mod upgrades;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use std::sync::Arc;

pub use auth::{Authenticator, Identity, Scope, TokenConfig};
pub use entities::IDEMPOTENCY_KEY_HEADER;
pub use error::{ApiError, entity_error_status};

use crate::cluster::{Deployer, Router as EntityRouter};
use crate::ddata::DistributedData;
use crate::deployments::Deployments;
use crate::entity::EntitySystem;
use crate::lease::Lease;
use crate::plugin::PluginRegistry;
use crate::readiness::Readiness;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub entities: EntitySystem,
    /// Where entity calls go: here, or to their owner in the cluster.
    pub router: EntityRouter,
    /// The node's DistributedData, when it is part of a cluster.
    pub ddata: Option<DistributedData>,
    pub plugins: Arc<PluginRegistry>,
    /// What was loaded and bound over the API, kept across restarts.
    pub deployments: Arc<Deployments>,
    /// Deploys builds under a name here and across the cluster.
    pub deployer: Deployer,
    /// Whether start-up loading is done, for `/ready`.
    pub readiness: Readiness,
    /// The node's lease backend, for `/leases`; single-writer entities use the same one.
    pub lease: Arc<dyn Lease>,
    /// The node's tokens; `None` lets every request through.
    pub authenticator: Option<Arc<Authenticator>>,
    pub limits: BodyLimits,
    /// How long a command or state read waits for its answer.
    pub ask_timeout: std::time::Duration,
    pub started: std::time::Instant,
    /// Cancelled when the node stops taking requests: long-lived responses (event streams) end
    /// then, so the graceful shutdown does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Largest bodies accepted, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub command_bytes: usize,
    pub plugin_bytes: usize,
}

pub fn router(state: AppState) -> Router {
    let authenticator = state.authenticator.clone();
    routes(state.limits)
        .route_layer(axum::middleware::from_fn_with_state(
            authenticator,
            auth::require_access,
        ))
        .fallback(ops::not_found)
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(state)
}

/// Every route of the API; each one must have its entry in [`auth::ROUTE_ACCESS`].
fn routes(limits: BodyLimits) -> Router<AppState> {
    let commands = Router::new()
        .route("/entities/{entity_type}", get(entities::list_entities))
        .route(
            "/entities/{entity_type}/{entity_id}",
            post(entities::send_command).get(entities::get_state),
        )
        .route(
            "/entities/{entity_type}/{entity_id}/events",
            get(entities::get_events),
        )
        .route(
            "/entities/{entity_type}/{entity_id}/resolver",
            put(entities::change_resolver),
        )
        .route("/entity-types", get(entities::list_types))
        .route("/entity-types/{entity_type}", put(entities::bind_type))
        .route("/leases", get(leases::list))
        .route("/leases/{name}", get(leases::show))
        .route("/leases/{name}/acquire", post(leases::acquire))
        .route("/leases/{name}/renew", post(leases::renew))
        .route("/leases/{name}/release", post(leases::release))
        .layer(DefaultBodyLimit::max(limits.command_bytes));
    let uploads = Router::new()
        .route("/plugins/{name}", put(plugins::upload))
        .route("/plugins/{name}/history", get(plugins::history))
        .route("/plugins/{name}/upgrade", post(upgrades::upgrade))
        .route("/plugins/{name}/rollback", post(upgrades::rollback))
        .layer(DefaultBodyLimit::max(limits.plugin_bytes));
    Router::new()
        .merge(commands)
        .merge(uploads)
        .route("/plugins", get(plugins::list))
        .route("/notifications", get(notifications::stream))
        .route("/cluster", get(cluster::show))
        .route(
            "/ddata/{key}",
            get(ddata::get).post(ddata::update).delete(ddata::delete),
        )
        .route("/ddata/{key}/subscribe", get(ddata::subscribe))
        .route("/cluster/faults", post(cluster::inject_fault))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/", get(console::index))
        .route("/console/{asset}", get(console::static_asset))
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
