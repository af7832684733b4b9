//! What a [`MergeLog`](super::MergeLog) folds with: an entity plugin's `apply-event`, and the
//! [`Resolver`] that decides about events concurrent with events already applied.

use std::sync::Arc;

use crate::journal::EventEnvelope;
use crate::plugin::{self, Context, Envelope, PluginError, PluginVersion};

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

    /// Called only when `concurrent` (events already applied, concurrent with `incoming`) is
    /// not empty.
    fn resolve(
        &self,
        state: &[u8],
        incoming: &EventEnvelope,
        concurrent: &[&EventEnvelope],
    ) -> Result<Resolution, PluginError>;
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

/// An entity plugin's `apply-event` with a [`Resolver`].
pub struct PluginFold {
    entity: Arc<PluginVersion>,
    resolver: Resolver,
    /// The calls' context; `now` is set to each event's timestamp.
    context: Context,
}

impl PluginFold {
    pub fn new(entity: Arc<PluginVersion>, resolver: Resolver, context: Context) -> Self {
        PluginFold {
            entity,
            resolver,
            context,
        }
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

    fn resolve(
        &self,
        state: &[u8],
        incoming: &EventEnvelope,
        concurrent: &[&EventEnvelope],
    ) -> Result<Resolution, PluginError> {
        match &self.resolver {
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
