//! What a [`MergeLog`](super::MergeLog) folds with: an entity plugin's `apply-event`, and the
//! [`Resolver`] that decides about events concurrent with events already applied — the entity
//! type's, until a configuration event ([`FoldConfig`]) in the streams names another build.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::journal::EventEnvelope;
use crate::plugin::{self, Context, Envelope, PluginError, PluginRegistry, PluginVersion};

/// The `plugin` of a configuration event: not a plugin name (those have no `:`).
pub const CONFIG_EVENT: &str = "weft:config";

/// What a configuration event says (its payload, MessagePack with named fields): from its
/// position in the total order on, on every replica, concurrent events are resolved by
/// `resolver` — a built-in's name or a resolver plugin's build (`name@version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldConfig {
    pub resolver: String,
}

impl FoldConfig {
    pub fn is_config(event: &EventEnvelope) -> bool {
        event.plugin == CONFIG_EVENT
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a config encodes")
    }

    pub fn decode(payload: &[u8]) -> Result<FoldConfig, PluginError> {
        rmp_serde::from_slice(payload).map_err(|error| PluginError::Invalid {
            plugin: CONFIG_EVENT.into(),
            reason: format!("a configuration event does not decode: {error}"),
        })
    }
}

/// What happens to an event that is concurrent with events already applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Apply it as it is.
    Keep,
    /// Skip it.
    Drop,
    /// Apply these payloads instead, each with the incoming event's metadata.
    Replace(Vec<Vec<u8>>),
}

/// Folds events into state. Both calls must be deterministic: every replica makes the same calls
/// in the same order and must get the same answers.
pub trait Fold {
    fn apply(&self, state: &[u8], event: &EventEnvelope) -> Result<Vec<u8>, PluginError>;

    /// Folds a run of events in order: what [`Fold::apply`] one after another gives, in as few
    /// calls as the fold can make (a plugin with resident state: one, with the state encoded
    /// once).
    fn apply_run(&self, state: &[u8], events: &[EventEnvelope]) -> Result<Vec<u8>, PluginError> {
        events
            .iter()
            .try_fold(state.to_vec(), |state, event| self.apply(&state, event))
    }

    /// Called only when `concurrent` (events already applied, concurrent with `incoming`) is
    /// not empty.
    fn resolve(
        &self,
        state: &[u8],
        incoming: &EventEnvelope,
        concurrent: &[&EventEnvelope],
    ) -> Result<Resolution, PluginError>;

    /// Checks that a configuration event's payload can be folded with here (the builds it
    /// names are loaded). An error stops the fold at the configuration event.
    fn check_config(&self, _config: &[u8]) -> Result<(), PluginError> {
        Ok(())
    }

    /// [`Fold::resolve`] under the configuration in effect at `incoming`'s position (`None`
    /// before any configuration event: the entity type's resolver).
    fn resolve_under(
        &self,
        _config: Option<&[u8]>,
        state: &[u8],
        incoming: &EventEnvelope,
        concurrent: &[&EventEnvelope],
    ) -> Result<Resolution, PluginError> {
        self.resolve(state, incoming, concurrent)
    }
}

/// The built-in resolvers' names, as entity types name them.
pub const LAST_WRITER_WINS: &str = "last-writer-wins";
pub const FIRST_WRITER_WINS: &str = "first-writer-wins";

/// Who decides about concurrent events, per entity type.
#[derive(Clone)]
pub enum Resolver {
    /// Keep every event: the total order already makes the later HLC timestamp win.
    LastWriterWins,
    /// Drop an event concurrent with one already applied: the earlier HLC timestamp wins.
    FirstWriterWins,
    /// A resolver plugin, in any language.
    Plugin(Arc<PluginVersion>),
}

impl Resolver {
    /// The built-in's name, or the resolver plugin's id (`name@version`).
    pub fn name(&self) -> &str {
        match self {
            Resolver::LastWriterWins => LAST_WRITER_WINS,
            Resolver::FirstWriterWins => FIRST_WRITER_WINS,
            Resolver::Plugin(plugin) => plugin.id(),
        }
    }
}

impl Resolver {
    /// The resolver a configuration names: a built-in, or the loaded build of a resolver
    /// plugin whose id is exactly `name` (another build of it does not do).
    pub fn named(name: &str, registry: &PluginRegistry) -> Result<Resolver, PluginError> {
        match name {
            LAST_WRITER_WINS => Ok(Resolver::LastWriterWins),
            FIRST_WRITER_WINS => Ok(Resolver::FirstWriterWins),
            id => {
                let plugin = id.split_once('@').map_or(id, |(plugin, _)| plugin);
                let missing = |loaded: String| PluginError::VersionMissing {
                    wanted: id.to_owned(),
                    loaded,
                };
                match registry.get(plugin) {
                    Ok(version) if version.id() == id => Ok(Resolver::Plugin(version)),
                    Ok(version) => Err(missing(format!("it has {}", version.id()))),
                    Err(_) => Err(missing(format!("no plugin named `{plugin}`"))),
                }
            }
        }
    }
}

/// An entity plugin's `apply-event` with a [`Resolver`].
pub struct PluginFold {
    entity: Arc<PluginVersion>,
    resolver: Resolver,
    /// The calls' context; `now` is set to each event's timestamp.
    context: Context,
    /// Where the builds configuration events name are found; without it, configuration
    /// events are refused.
    registry: Option<Arc<PluginRegistry>>,
}

impl PluginFold {
    pub fn new(entity: Arc<PluginVersion>, resolver: Resolver, context: Context) -> Self {
        PluginFold {
            entity,
            resolver,
            context,
            registry: None,
        }
    }

    /// Folds configuration events with the builds `registry` holds.
    pub fn with_registry(self, registry: Arc<PluginRegistry>) -> Self {
        PluginFold {
            registry: Some(registry),
            ..self
        }
    }

    fn configured(&self, config: &[u8]) -> Result<Resolver, PluginError> {
        let config = FoldConfig::decode(config)?;
        let registry = self
            .registry
            .as_ref()
            .ok_or_else(|| PluginError::VersionMissing {
                wanted: config.resolver.clone(),
                loaded: "no plugin registry to look it up in".into(),
            })?;
        Resolver::named(&config.resolver, registry)
    }

    fn context_at(&self, event: &EventEnvelope) -> Context {
        Context {
            now: event.timestamp,
            ..self.context.clone()
        }
    }
}

impl Fold for PluginFold {
    fn apply(&self, state: &[u8], event: &EventEnvelope) -> Result<Vec<u8>, PluginError> {
        self.entity
            .apply_event(&self.context_at(event), state, &Envelope::from(event))
    }

    fn apply_run(&self, state: &[u8], events: &[EventEnvelope]) -> Result<Vec<u8>, PluginError> {
        let Some(first) = events.first() else {
            return Ok(state.to_vec());
        };
        let envelopes: Vec<Envelope> = events.iter().map(Envelope::from).collect();
        self.entity
            .apply_events(&self.context_at(first), state, &envelopes)
    }

    fn resolve(
        &self,
        state: &[u8],
        incoming: &EventEnvelope,
        concurrent: &[&EventEnvelope],
    ) -> Result<Resolution, PluginError> {
        self.resolve_with(&self.resolver, state, incoming, concurrent)
    }

    fn check_config(&self, config: &[u8]) -> Result<(), PluginError> {
        self.configured(config).map(drop)
    }

    fn resolve_under(
        &self,
        config: Option<&[u8]>,
        state: &[u8],
        incoming: &EventEnvelope,
        concurrent: &[&EventEnvelope],
    ) -> Result<Resolution, PluginError> {
        match config {
            None => self.resolve(state, incoming, concurrent),
            Some(config) => {
                let resolver = self.configured(config)?;
                self.resolve_with(&resolver, state, incoming, concurrent)
            }
        }
    }
}

impl PluginFold {
    fn resolve_with(
        &self,
        resolver: &Resolver,
        state: &[u8],
        incoming: &EventEnvelope,
        concurrent: &[&EventEnvelope],
    ) -> Result<Resolution, PluginError> {
        match resolver {
            Resolver::LastWriterWins => Ok(Resolution::Keep),
            Resolver::FirstWriterWins => Ok(Resolution::Drop),
            Resolver::Plugin(resolver) => {
                let concurrent: Vec<Envelope> = concurrent
                    .iter()
                    .map(|event| Envelope::from(*event))
                    .collect();
                let resolution = resolver.resolve(
                    &self.context_at(incoming),
                    state,
                    &Envelope::from(incoming),
                    &concurrent,
                )?;
                Ok(match resolution {
                    plugin::Resolution::Keep => Resolution::Keep,
                    plugin::Resolution::Drop => Resolution::Drop,
                    plugin::Resolution::Replace(payloads) => Resolution::Replace(payloads),
                })
            }
        }
    }
}
