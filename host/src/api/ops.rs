//! `/health` (liveness), `/ready` (start-up loading done), `/metrics` (Prometheus text format:
//! the counters and gauges written here, then the latency histograms of
//! `observability::metrics`), `/openapi.json`, and the JSON 404.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::IntoResponse;
use serde_json::json;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::AppState;
use super::error::ApiError;
use crate::readiness::ReadinessReport;

/// The OpenAPI 3.1 description of this API.
const OPENAPI: &str = include_str!("openapi.json");

pub async fn health(State(app): State<AppState>) -> Json<serde_json::Value> {
    // Replicas that set events aside because they could not fold them hold incomplete states.
    let parked = app.entities.parked();
    let status = if parked.is_empty() { "ok" } else { "degraded" };
    Json(json!({
        "status": status,
        "parked_events": parked,
        "writer_id": app.entities.settings().writer_id.to_string(),
        "replica": app.entities.settings().replica,
        "uptime_secs": app.started.elapsed().as_secs(),
        "plugins": app.plugins.list().len(),
        "active_entities": app.entities.active_entities(),
    }))
}

/// 200 once start-up loading is done (failed plugins listed, not waited for), 503 before, with
/// the plugins still loading.
pub async fn ready(State(app): State<AppState>) -> (StatusCode, Json<ReadinessReport>) {
    let report = app.readiness.report();
    let status = match report.ready {
        true => StatusCode::OK,
        false => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Json(report))
}

pub async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    let entity = app.entities.metrics();
    let mut text = String::new();
    let counters: [(&str, &str, &AtomicU64); 11] = [
        (
            "weft_commands_ok_total",
            "Commands that got a reply.",
            &entity.commands_ok,
        ),
        (
            "weft_commands_failed_total",
            "Commands that ended in an error.",
            &entity.commands_failed,
        ),
        (
            "weft_events_persisted_total",
            "Events appended to the journal.",
            &entity.events_persisted,
        ),
        (
            "weft_entity_activations_total",
            "Entity actors started.",
            &entity.activations,
        ),
        (
            "weft_entity_passivations_total",
            "Entity actors stopped.",
            &entity.passivations,
        ),
        (
            "weft_leases_released_total",
            "Single-writer leases handed back as their entities passivated or the node stopped.",
            &entity.leases_released,
        ),
        (
            "weft_replicated_events_folded_total",
            "Events of other replicas folded into this node's replicas.",
            &entity.replicated_events_folded,
        ),
        (
            "weft_replicated_folds_failed_total",
            "Events of other replicas whose fold failed (then parked: see /health).",
            &entity.replicated_folds_failed,
        ),
        (
            "weft_replication_pulls_answered_total",
            "Pulls of other replicas answered.",
            &entity.replication_pulls_answered,
        ),
        (
            "weft_replicated_events_parked_total",
            "Events of other replicas parked because their fold failed (see /health).",
            &entity.replicated_events_parked,
        ),
        (
            "weft_replicated_events_compacted_total",
            "Events folded into replicas' compacted base states.",
            &entity.replicated_events_compacted,
        ),
    ];
    for (name, help, value) in counters {
        let value = value.load(Ordering::Relaxed);
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let _ = writeln!(
        text,
        "# HELP weft_active_entities Entity actors running.\n# TYPE weft_active_entities gauge\nweft_active_entities {}",
        app.entities.active_entities()
    );
    let budget = app.entities.budget();
    let _ = writeln!(
        text,
        "# HELP weft_resident_state_bytes Entity state kept in plugins by the active entities (estimated from their encoded size).\n# TYPE weft_resident_state_bytes gauge\nweft_resident_state_bytes {}\n# HELP weft_resident_state_bytes_max The node's budget for resident entity state.\n# TYPE weft_resident_state_bytes_max gauge\nweft_resident_state_bytes_max {}\n# HELP weft_resident_budget_passivations_total Entities passivated to keep resident state within its budget.\n# TYPE weft_resident_budget_passivations_total counter\nweft_resident_budget_passivations_total {}",
        budget.total_bytes(),
        budget.max_bytes(),
        budget.passivations()
    );
    let _ = writeln!(
        text,
        "# HELP weft_plugin_loaded Loaded plugin versions.\n# TYPE weft_plugin_loaded gauge"
    );
    for plugin in app.plugins.list() {
        let _ = writeln!(
            text,
            "weft_plugin_loaded{{name=\"{}\",version=\"{}\",world=\"{}\"}} 1",
            plugin.name,
            plugin.version,
            plugin.world.name()
        );
    }
    if let Some(cluster) = app.router.cluster() {
        let view = cluster.view();
        let _ = writeln!(
            text,
            "# HELP weft_cluster_member Live cluster members in this node's view.\n# TYPE weft_cluster_member gauge"
        );
        for member in &view.members {
            let _ = writeln!(
                text,
                "weft_cluster_member{{name=\"{}\",role=\"{}\",incarnation=\"{}\",local=\"{}\"}} 1",
                member.name(),
                member.role,
                member.id.incarnation,
                member.id == view.local.id
            );
        }
        let refusals = cluster.transport().refusals();
        let _ = writeln!(
            text,
            "# HELP weft_cluster_connections_refused_total Cluster transport connections refused: the peer failed the TLS handshake or claimed a node its certificate does not name.\n# TYPE weft_cluster_connections_refused_total counter\nweft_cluster_connections_refused_total{{direction=\"inbound\"}} {}\nweft_cluster_connections_refused_total{{direction=\"outbound\"}} {}",
            refusals.inbound, refusals.outbound
        );
    }
    crate::observability::metrics::render(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", uri.path()),
    )
}
