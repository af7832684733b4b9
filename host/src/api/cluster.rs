//! `GET /cluster`: this node's view of the cluster — members with role, status, incarnation, the
//! plugins each has loaded (with their hashes), the deployments each failed to load and how many
//! entities each hosts (asked of each member, bounded), whether every member runs the same builds
//! (`converged`), and the entities this node hosts with their owners. `POST /cluster/faults`
//! injects transport faults, only on nodes configured with `fault_injection = true` (tests).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

use super::AppState;
use super::error::ApiError;
use crate::cluster::deployments::converged;
use crate::cluster::placement::owner;
use crate::cluster::{Member, NodeReport};

/// How long `GET /cluster` waits for each member to say what it hosts.
const DESCRIBE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// What each member of this node's view hosts (a member that did not answer in time: why), in
/// the view's order; none on a node running alone.
async fn member_reports(app: &AppState) -> Vec<(Member, Result<NodeReport, String>)> {
    let Some(cluster) = app.router.cluster() else {
        return Vec::new();
    };
    let view = cluster.view();
    let reports = futures::future::join_all(view.members.iter().map(|member| async {
        if member.id == view.local.id {
            Ok(NodeReport::of(&app.entities, &app.plugins, &app.deployer))
        } else {
            app.router.describe(member, DESCRIBE_TIMEOUT).await
        }
    }))
    .await;
    view.members.iter().cloned().zip(reports).collect()
}

/// For `GET /plugins` in a cluster: each member's hash of each plugin it has loaded, the
/// deployments it failed to load, and whether all members agree.
pub async fn deployments_across(app: &AppState) -> Value {
    let (members, reports): (Vec<Member>, Vec<_>) = member_reports(app).await.into_iter().unzip();
    let nodes: Vec<Value> = members
        .iter()
        .zip(&reports)
        .map(|(member, report)| match report {
            Ok(report) => json!({
                "name": member.name().as_str(),
                "plugins": report
                    .plugins
                    .iter()
                    .map(|plugin| (plugin.name.clone(), json!(plugin.content_hash)))
                    .collect::<serde_json::Map<_, _>>(),
                "deployment_failures": report.deployment_failures,
            }),
            Err(error) => json!({"name": member.name().as_str(), "unreachable": error}),
        })
        .collect();
    json!({"converged": converged(&reports), "members": nodes})
}

pub async fn show(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let cluster = app.router.cluster().ok_or_else(not_clustered)?;
    let view = cluster.view();
    let (members, reports): (Vec<Member>, Vec<_>) = member_reports(&app).await.into_iter().unzip();
    let all_converged = converged(&reports);
    let members: Vec<Value> = members
        .iter()
        .zip(reports)
        .map(|(member, report)| {
            let mut entry = json!({
                "name": member.name().as_str(),
                "incarnation": member.id.incarnation.to_string(),
                "role": member.role.as_str(),
                "addr": member.addr.to_string(),
                "status": "up",
                "local": member.id == view.local.id,
            });
            match report {
                Ok(report) => {
                    entry["plugins"] = json!(
                        report
                            .plugins
                            .iter()
                            .map(|plugin| json!({
                                "name": plugin.name,
                                "version": plugin.version,
                                "content_hash": plugin.content_hash,
                            }))
                            .collect::<Vec<_>>()
                    );
                    entry["deployment_failures"] = json!(report.deployment_failures);
                    entry["active_entities"] = json!(report.active.len());
                }
                Err(error) => entry["unreachable"] = json!(error),
            }
            entry
        })
        .collect();
    let entities: Vec<Value> = app
        .entities
        .active()
        .into_iter()
        .map(|(entity_type, entity_id)| {
            if app.entities.replication(&entity_type).is_some() {
                // A replica here, not placed: every replica node runs its own.
                let replica = &app.entities.settings().replica;
                return json!({"entity_type": entity_type, "entity_id": entity_id, "replica": replica});
            }
            let owner = owner(&entity_type, &entity_id, &view.members)
                .map(|owner| owner.name.as_str().to_owned());
            json!({"entity_type": entity_type, "entity_id": entity_id, "owner": owner})
        })
        .collect();
    Ok(Json(json!({
        "local": {
            "name": view.local.name().as_str(),
            "incarnation": view.local.id.incarnation.to_string(),
            "role": view.local.role.as_str(),
            "addr": view.local.addr.to_string(),
        },
        "members": members,
        // Every member answered, loaded every deployment, and runs the same build of each plugin.
        "converged": all_converged,
        "active_entities": entities,
        // What this node's replicas could not fold (a missing resolver build, a failing fold).
        "parked_events": app.entities.parked(),
    })))
}

/// A fault to inject into this node's transport.
#[derive(Debug, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case", deny_unknown_fields)]
pub enum FaultRequest {
    /// Cut this node off from the named nodes.
    Partition { from: Vec<String> },
    /// Drop every n-th frame this node sends.
    DropEvery { n: u64 },
    /// Delay every frame this node sends.
    Delay { ms: u64 },
    /// Undo every fault.
    Heal,
}

pub async fn inject_fault(
    State(app): State<AppState>,
    body: Result<Json<FaultRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let cluster = app.router.cluster().ok_or_else(not_clustered)?;
    if !cluster.config().fault_injection {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "fault_injection_disabled",
            "fault injection is off on this node: set [cluster] fault_injection = true (tests only)",
        ));
    }
    let Json(fault) =
        body.map_err(|error| ApiError::bad_request("invalid_fault", error.body_text()))?;
    let faults = cluster.transport().faults();
    match &fault {
        FaultRequest::Partition { from } => {
            let names: Vec<&str> = from.iter().map(String::as_str).collect();
            faults.partition(&names);
        }
        FaultRequest::DropEvery { n } => faults.drop_every(*n),
        FaultRequest::Delay { ms } => faults.delay(Duration::from_millis(*ms)),
        FaultRequest::Heal => faults.heal(),
    }
    Ok(Json(json!({"applied": format!("{fault:?}")})))
}

fn not_clustered() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_clustered",
        "this node runs alone: configure [cluster] in weft.toml",
    )
}
