//! Routing an entity call to the node that owns the entity: [`Router`] runs it here when this
//! node is the owner (or there is no cluster), and forwards it over the transport otherwise; the
//! owner's answer, or its error with its status and code, comes back the same way.
//!
//! A node that receives a forwarded call runs it locally even if its own view names another
//! owner: views converge within a few membership rounds, forwarding again could loop, and the
//! entity's lease (single-writer types) keeps two nodes from writing one entity meanwhile.
//!
//! Replicated types are not placed: a command runs on this node's replica, or on a live replica
//! when this node has none. In lease mode an observing replica's refusal names the holder, and
//! the command is forwarded there once.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::deployments::{Deployer, DeploymentAnswer, DeploymentFailure, DeploymentRequest};
use super::handoff::{moved_away, owned_elsewhere};
use super::identity::Member;
use super::placement::owner;
use super::service::Cluster;
use super::transport::{Inbound, Topic, Transport, TransportError};
use crate::entity::{
    CommandOptions, CommandReply, EntityError, EntityState, EntitySystem, IdempotencyKey,
    ReplicaStatus, persistence_id,
};
use crate::observability::current_request_id;
use crate::plugin::{PluginInfo, PluginRegistry};
use crate::readiness::Readiness;

/// An entity call as it travels to the owner: the payload of a transport request. Public as the
/// wire protocol between nodes, which tests write by hand.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    Command {
        entity_type: String,
        entity_id: String,
        #[serde(with = "serde_bytes")]
        command: Vec<u8>,
        /// The client's idempotency key, checked again by the owner.
        #[serde(default)]
        idempotency_key: Option<String>,
        /// The id of the HTTP request that sent it, for the owner's log lines.
        #[serde(default)]
        request_id: Option<String>,
    },
    State {
        entity_type: String,
        entity_id: String,
    },
    /// What the node hosts, for `GET /cluster`.
    Describe,
    /// Its deployments, or a chunk of one's bytes.
    Deployments(DeploymentRequest),
}

/// What a node hosts: the plugins it has loaded, its active entities (type, id), and the
/// deployments it received but could not load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub plugins: Vec<PluginInfo>,
    pub active: Vec<(String, String)>,
    pub deployment_failures: Vec<DeploymentFailure>,
}

impl NodeReport {
    pub fn of(
        entities: &EntitySystem,
        plugins: &PluginRegistry,
        deployer: &Deployer,
    ) -> NodeReport {
        NodeReport {
            plugins: plugins.list(),
            active: entities.active(),
            deployment_failures: deployer.failures(),
        }
    }
}

/// The owner's answer.
#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Command {
        #[serde(with = "serde_bytes")]
        reply: Vec<u8>,
        seq_nr: u64,
        plugin: String,
        /// The reply of an earlier attempt with the same idempotency key.
        #[serde(default)]
        replayed: bool,
    },
    State {
        #[serde(with = "serde_bytes")]
        state: Vec<u8>,
        seq_nr: u64,
        plugin: String,
        /// A replica's fold status (replicated entities).
        #[serde(default)]
        replica: Option<ReplicaStatus>,
    },
    Described(NodeReport),
    Deployments(DeploymentAnswer),
    Failed(RemoteError),
}

/// An error the owner answered with, as its API would have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// Why a routed call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// This node ran the call and it failed.
    #[error(transparent)]
    Local(#[from] EntityError),
    /// The owner ran the call and it failed.
    #[error("{}", .0.message)]
    Remote(RemoteError),
    /// This node is still loading its plugins at start-up, and the call's entity type or its
    /// plugin is not loaded yet. Nothing was done; retry shortly.
    #[error(
        "this node is still loading its plugins ({}): entity type `{entity_type}` is not served yet; retry shortly (GET /ready shows the progress)",
        loading_list(loading)
    )]
    PluginsLoading {
        entity_type: String,
        loading: Vec<String>,
    },
    /// No actor node is live: nobody can run the call. Nothing was done; retry when one is.
    #[error("no actor node is live to host {entity_type}/{entity_id}; retry shortly")]
    NoOwner {
        entity_type: String,
        entity_id: String,
    },
    /// The owner could not be reached or did not answer in time: the call may or may not have
    /// run there. Retry; membership moves the entity if the owner is gone.
    #[error(
        "the owner of {entity_type}/{entity_id}, node {owner}, did not answer: {reason}; retry shortly"
    )]
    OwnerUnreachable {
        entity_type: String,
        entity_id: String,
        owner: String,
        reason: String,
    },
}

/// Where this node's entity calls go. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    entities: EntitySystem,
    cluster: Option<Cluster>,
    readiness: Readiness,
}

impl Router {
    pub fn new(entities: EntitySystem, cluster: Option<Cluster>, readiness: Readiness) -> Self {
        Router {
            entities,
            cluster,
            readiness,
        }
    }

    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// Runs a command where its entity lives, with its deadline and idempotency key: a
    /// forwarded command takes what is left of its deadline to the owner (see
    /// `cluster::transport`).
    pub async fn ask(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: Vec<u8>,
        options: CommandOptions,
    ) -> Result<CommandReply, RouteError> {
        match self.owner(entity_type, entity_id)? {
            None => {
                self.ask_here(entity_type, entity_id, command, options)
                    .await
            }
            Some((cluster, owner)) => {
                forward_command(cluster, &owner, entity_type, entity_id, command, &options).await
            }
        }
    }

    /// Runs a command on this node. A replicated entity in lease mode whose replica here only
    /// observes sends it on, once, to the replica its refusal names as the lease holder: clients
    /// may send commands to any replica.
    async fn ask_here(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: Vec<u8>,
        options: CommandOptions,
    ) -> Result<CommandReply, RouteError> {
        let leased = self.cluster.as_ref().zip(
            self.entities
                .replication(entity_type)
                .filter(|_| self.entities.is_single_writer(entity_type)),
        );
        let Some((cluster, replication)) = leased else {
            let outcome = self
                .entities
                .ask_with(entity_type, entity_id, command, options)
                .await;
            return while_loading(&self.readiness, entity_type, outcome);
        };
        let outcome = self
            .entities
            .ask_with(entity_type, entity_id, command.clone(), options.clone())
            .await;
        match while_loading(&self.readiness, entity_type, outcome) {
            Err(RouteError::Local(refusal @ EntityError::NotWriter { .. })) => {
                let EntityError::NotWriter {
                    writer: Some(writer),
                    ..
                } = &refusal
                else {
                    return Err(refusal.into());
                };
                // A replica's lease owner is `<replica>@<writer id>`.
                let holder = writer.split_once('@').map(|(replica, _)| replica);
                let view = cluster.view();
                let member = view.members.iter().find(|member| {
                    member.id != view.local.id
                        && holder == Some(member.name().as_str())
                        && replication.hosts(member.name().as_str())
                });
                match member {
                    Some(member) => {
                        forward_command(cluster, member, entity_type, entity_id, command, &options)
                            .await
                    }
                    // The holder is not a live member (it died, its lease will expire).
                    None => Err(refusal.into()),
                }
            }
            outcome => Ok(outcome?),
        }
    }

    pub async fn state(
        &self,
        entity_type: &str,
        entity_id: &str,
    ) -> Result<EntityState, RouteError> {
        match self.owner(entity_type, entity_id)? {
            None => {
                let outcome = self.entities.state(entity_type, entity_id).await;
                while_loading(&self.readiness, entity_type, outcome)
            }
            Some((cluster, owner)) => {
                let call = Call::State {
                    entity_type: entity_type.to_owned(),
                    entity_id: entity_id.to_owned(),
                };
                let timeout = cluster.config().forward_timeout();
                match forward(cluster, &owner, entity_type, entity_id, &call, timeout).await? {
                    Answer::State {
                        state,
                        seq_nr,
                        plugin,
                        replica,
                    } => Ok(EntityState {
                        state,
                        seq_nr,
                        plugin,
                        replica,
                    }),
                    other => Err(mismatch(&owner, entity_type, entity_id, &other)),
                }
            }
        }
    }

    /// Asks `member` what it hosts (bounded by `timeout`).
    pub async fn describe(
        &self,
        member: &Member,
        timeout: std::time::Duration,
    ) -> Result<NodeReport, String> {
        let cluster = self.cluster.as_ref().ok_or("not clustered")?;
        let payload = rmp_serde::to_vec_named(&Call::Describe).map_err(|e| e.to_string())?;
        let answer = cluster
            .transport()
            .request(member.name().as_str(), member.addr, payload, timeout)
            .await
            .map_err(|error| error.to_string())?;
        match rmp_serde::from_slice(&answer) {
            Ok(Answer::Described(report)) => Ok(report),
            Ok(other) => Err(format!("answered {other:?}")),
            Err(error) => Err(format!("an answer that does not decode: {error}")),
        }
    }

    /// The member to forward to, `None` to run here.
    fn owner(
        &self,
        entity_type: &str,
        entity_id: &str,
    ) -> Result<Option<(&Cluster, Member)>, RouteError> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        let view = cluster.view();
        let no_owner = || RouteError::NoOwner {
            entity_type: entity_type.to_owned(),
            entity_id: entity_id.to_owned(),
        };
        let owner = match self.entities.replication(entity_type) {
            // A replicated entity is served by this node's replica, or else by one of the live
            // replicas, picked by placement among them.
            Some(replication) => {
                if replication.hosts(&self.entities.settings().replica) {
                    return Ok(None);
                }
                let replicas: Vec<Member> = view
                    .members
                    .iter()
                    .filter(|member| replication.hosts(member.name().as_str()))
                    .cloned()
                    .collect();
                let owner = owner(entity_type, entity_id, &replicas).ok_or_else(no_owner)?;
                return view
                    .member(owner)
                    .cloned()
                    .map(|member| Some((cluster, member)))
                    .ok_or_else(no_owner);
            }
            None => owner(entity_type, entity_id, &view.members).ok_or_else(no_owner)?,
        };
        if *owner == view.local.id {
            return Ok(None);
        }
        let member = view.member(owner).cloned().ok_or_else(no_owner)?;
        Ok(Some((cluster, member)))
    }
}

/// Asks the node `peer_name` at `addr` about its deployments (bounded by `timeout`).
pub async fn request_deployments(
    transport: &Transport,
    peer_name: &str,
    addr: SocketAddr,
    request: DeploymentRequest,
    timeout: Duration,
) -> Result<DeploymentAnswer, String> {
    let payload =
        rmp_serde::to_vec_named(&Call::Deployments(request)).map_err(|e| e.to_string())?;
    let answer = transport
        .request(peer_name, addr, payload, timeout)
        .await
        .map_err(|error| error.to_string())?;
    match rmp_serde::from_slice(&answer) {
        Ok(Answer::Deployments(answer)) => Ok(answer),
        Ok(Answer::Failed(error)) => Err(error.message),
        Ok(other) => Err(format!("answered {other:?}")),
        Err(error) => Err(format!("an answer that does not decode: {error}")),
    }
}

/// Forwards a command to `owner` and returns its reply. It waits for the owner up to the
/// forwarding timeout or the command's deadline, whichever comes first; a deadline already
/// passed sends nothing.
async fn forward_command(
    cluster: &Cluster,
    owner: &Member,
    entity_type: &str,
    entity_id: &str,
    command: Vec<u8>,
    options: &CommandOptions,
) -> Result<CommandReply, RouteError> {
    let mut timeout = cluster.config().forward_timeout();
    if let Some(deadline) = options.deadline {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(
                EntityError::DeadlineExceeded(persistence_id(entity_type, entity_id)).into(),
            );
        }
        timeout = timeout.min(left);
    }
    let call = Call::Command {
        entity_type: entity_type.to_owned(),
        entity_id: entity_id.to_owned(),
        command,
        idempotency_key: options
            .idempotency_key
            .as_ref()
            .map(|key| key.as_str().to_owned()),
        request_id: current_request_id().map(|id| id.to_string()),
    };
    match forward(cluster, owner, entity_type, entity_id, &call, timeout).await? {
        Answer::Command {
            reply,
            seq_nr,
            plugin,
            replayed,
        } => Ok(CommandReply {
            reply,
            seq_nr,
            plugin,
            replayed,
        }),
        other => Err(mismatch(owner, entity_type, entity_id, &other)),
    }
}

/// Sends `call` to `owner` and decodes its answer, waiting up to `timeout`.
async fn forward(
    cluster: &Cluster,
    owner: &Member,
    entity_type: &str,
    entity_id: &str,
    call: &Call,
    timeout: Duration,
) -> Result<Answer, RouteError> {
    let unreachable = |reason: String| RouteError::OwnerUnreachable {
        entity_type: entity_type.to_owned(),
        entity_id: entity_id.to_owned(),
        owner: owner.name().to_string(),
        reason,
    };
    let payload = rmp_serde::to_vec_named(call).map_err(|e| unreachable(e.to_string()))?;
    let answer = cluster
        .transport()
        .request(owner.name().as_str(), owner.addr, payload, timeout)
        .await
        .map_err(|error: TransportError| unreachable(error.to_string()))?;
    match rmp_serde::from_slice(&answer) {
        Ok(Answer::Failed(error)) => Err(RouteError::Remote(error)),
        Ok(answer) => Ok(answer),
        Err(error) => Err(unreachable(format!(
            "an answer that does not decode: {error}"
        ))),
    }
}

fn mismatch(owner: &Member, entity_type: &str, entity_id: &str, answer: &Answer) -> RouteError {
    RouteError::OwnerUnreachable {
        entity_type: entity_type.to_owned(),
        entity_id: entity_id.to_owned(),
        owner: owner.name().to_string(),
        reason: format!("it answered with the wrong kind of answer: {answer:?}"),
    }
}

/// What arrives at this node over the transport: membership packets go to the cluster service,
/// DistributedData messages to its service, deployments to the [`Deployer`], forwarded calls run
/// on this node's entities.
pub struct NodeInbound {
    pub entities: EntitySystem,
    pub plugins: Arc<PluginRegistry>,
    /// Deployments peers announce and ask for.
    pub deployer: Deployer,
    /// Forwarded calls for types not loaded yet answer `plugins_loading` while this is not ready.
    pub readiness: Readiness,
    pub packets: mpsc::Sender<Vec<u8>>,
    /// DistributedData messages, with the sending node's name.
    pub ddata: mpsc::Sender<crate::ddata::PeerMessage>,
    /// Set once the cluster service runs (it needs the transport this serves first).
    pub cluster: Arc<OnceLock<Cluster>>,
}

impl NodeInbound {
    /// After running a call for an entity this node's view gives to another node (the caller's
    /// view was behind, or ours is), passivates it so the owner can take it over.
    fn passivate_if_moved(&self, entity_type: &str, entity_id: &str) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        if self.entities.replication(entity_type).is_some() {
            // Replicas stay where they are configured.
            return;
        }
        let view = cluster.view();
        if owned_elsewhere(entity_type, entity_id, &view.members, &view.local.id) {
            self.entities.passivate(entity_type, entity_id);
        }
    }
}

#[async_trait]
impl Inbound for NodeInbound {
    async fn request(
        &self,
        from: &str,
        payload: Vec<u8>,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<u8>, String> {
        let call: Call = rmp_serde::from_slice(&payload)
            .map_err(|error| format!("a call from {from} that does not decode: {error}"))?;
        let answer = match call {
            Call::Command {
                entity_type,
                entity_id,
                command,
                idempotency_key,
                request_id,
            } => {
                let key = idempotency_key
                    .as_deref()
                    .map(IdempotencyKey::parse)
                    .transpose()
                    .map_err(|error| format!("a command from {from}: {error}"))?;
                let options = CommandOptions {
                    deadline: Some(deadline),
                    idempotency_key: key,
                };
                let span =
                    tracing::info_span!("forwarded", request_id = request_id.as_deref(), from);
                let outcome = self
                    .entities
                    .ask_with(&entity_type, &entity_id, command, options)
                    .instrument(span)
                    .await;
                match while_loading(&self.readiness, &entity_type, outcome) {
                    Ok(reply) => {
                        self.passivate_if_moved(&entity_type, &entity_id);
                        Answer::Command {
                            reply: reply.reply,
                            seq_nr: reply.seq_nr,
                            plugin: reply.plugin,
                            replayed: reply.replayed,
                        }
                    }
                    Err(error) => Answer::Failed(remote_error(&error)),
                }
            }
            Call::State {
                entity_type,
                entity_id,
            } => match while_loading(
                &self.readiness,
                &entity_type,
                self.entities.state(&entity_type, &entity_id).await,
            ) {
                Ok(state) => Answer::State {
                    state: state.state,
                    seq_nr: state.seq_nr,
                    plugin: state.plugin,
                    replica: state.replica,
                },
                Err(error) => Answer::Failed(remote_error(&error)),
            },
            Call::Describe => Answer::Described(NodeReport::of(
                &self.entities,
                &self.plugins,
                &self.deployer,
            )),
            Call::Deployments(request) => match self.deployer.answer(request) {
                Ok(answer) => Answer::Deployments(answer),
                Err(message) => Answer::Failed(RemoteError {
                    status: 404,
                    code: "unknown_deployment".into(),
                    message,
                }),
            },
        };
        rmp_serde::to_vec_named(&answer).map_err(|error| error.to_string())
    }

    async fn message(&self, from: &str, topic: Topic, payload: Vec<u8>) {
        // Full queues drop: SWIM tolerates lost packets, and anti-entropy repairs lost deltas.
        let queued = match topic {
            Topic::Membership => self.packets.try_send(payload).is_ok(),
            Topic::Ddata => self.ddata.try_send((from.to_owned(), payload)).is_ok(),
            Topic::Deployments => {
                self.deployer.announced(from, &payload);
                true
            }
            Topic::Replication => match rmp_serde::from_slice(&payload) {
                Ok(message) => {
                    let (entities, from) = (self.entities.clone(), from.to_owned());
                    // Not awaited here: this connection's next frames must not wait for an
                    // entity to activate.
                    tokio::spawn(async move { entities.replicate(&from, message).await });
                    true
                }
                Err(error) => {
                    tracing::warn!("a replication message from {from} does not decode: {error}");
                    true
                }
            },
        };
        if !queued {
            tracing::debug!(?topic, "cluster: message dropped, its service is behind");
        }
    }
}

fn remote_error(error: &RouteError) -> RemoteError {
    match error {
        RouteError::Local(error) => RemoteError {
            status: crate::api::entity_error_status(error).as_u16(),
            code: error.code().to_owned(),
            message: error.to_string(),
        },
        RouteError::Remote(remote) => remote.clone(),
        other => RemoteError {
            status: 503,
            code: other.code().to_owned(),
            message: other.to_string(),
        },
    }
}

impl RouteError {
    /// The API's code for a failure not of an entity (those carry their own).
    pub fn code(&self) -> &str {
        match self {
            RouteError::Local(error) => error.code(),
            RouteError::Remote(remote) => &remote.code,
            RouteError::PluginsLoading { .. } => "plugins_loading",
            RouteError::NoOwner { .. } => "no_owner",
            RouteError::OwnerUnreachable { .. } => "owner_unreachable",
        }
    }
}

/// An entity call's outcome as this node answers it: while start-up loading runs, an entity type
/// it does not know yet, or whose plugin is not loaded yet, may be one it is about to serve, and
/// the caller is told to retry rather than that the type does not exist.
fn while_loading<T>(
    readiness: &Readiness,
    entity_type: &str,
    outcome: Result<T, EntityError>,
) -> Result<T, RouteError> {
    match outcome {
        Err(EntityError::UnknownEntityType(_))
        | Err(EntityError::Plugin {
            code: "unknown_plugin",
            ..
        }) if !readiness.is_ready() => Err(RouteError::PluginsLoading {
            entity_type: entity_type.to_owned(),
            loading: readiness.loading(),
        }),
        outcome => Ok(outcome?),
    }
}

fn loading_list(loading: &[String]) -> String {
    match loading.is_empty() {
        true => "finishing start-up".to_owned(),
        false => format!("still to load: {}", loading.join(", ")),
    }
}

/// Keeps this node's active entities where placement puts them: after every change of the view,
/// entities this node no longer owns are passivated (their queued commands finish here, their
/// leases are released) so their new owner can take them over.
pub async fn hand_off_moved_entities(mut cluster: Cluster, entities: EntitySystem) {
    while let Some(view) = cluster.changed().await {
        // Replicas stay where they are configured; only placed entities move.
        let placed: Vec<(String, String)> = entities
            .active()
            .into_iter()
            .filter(|(entity_type, _)| entities.replication(entity_type).is_none())
            .collect();
        for (entity_type, entity_id) in moved_away(&placed, &view.members, &view.local.id) {
            tracing::info!(
                entity_type,
                entity_id,
                "handing off: another node owns it now"
            );
            entities.passivate(&entity_type, &entity_id);
        }
    }
}
