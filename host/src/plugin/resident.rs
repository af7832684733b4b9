//! Entity state resident in guest instances, so that a command's cost does not grow with it.
//!
//! A `resident-entity` plugin keeps each active entity's state in a resource of one of its
//! version's *homes*: a few instances (at most the plugin's busy share) held out of the pool for
//! as long as they hold states, each shared by many entities and called under its own lock. A
//! [`Resident`] is one entity's handle on its state there: a batch of commands, a run of events, a
//! snapshot or a lease-loss notice is one call that carries only commands or events.
//!
//! The journal stays the durable truth. When a call in a home fails in a way that leaves the
//! instance unusable (a trap, a bound, output the host refused), the home throws the instance
//! away with every state in it and starts a new *generation*; the other entities' next calls
//! return [`PluginError::ResidentLost`], and their actors recover them from snapshot and events.
//! A failed call also leaves its own entity's state unusable (a handler may have folded events
//! the host will not write): every call of a [`Resident`] after an error returns `ResidentLost`.
//!
//! For a plugin of the byte-passing `entity` interface a [`Resident`] keeps the state's bytes
//! itself and calls the plugin per command and per event, as that contract requires. The byte
//! calls on a `resident-entity` plugin (replicated entities, upgrade checks) go the other way:
//! `*_bytes` below restore a transient resource from the bytes and drop it after the call.

use std::sync::Arc;
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::bindings::types::{Context, Envelope, EventMeta};
use super::bindings::{Decision, LeaseLoss, LeaseLost, ResidentDecision, ResidentEntityPlugin};
use super::byte_calls::decision_of;
use super::error::PluginError;
use super::home::{Home, Occupant};
use super::instance::{Exports, Instance};
use super::sandbox::{CallFor, GuestState};
use super::validate::World;
use super::version::PluginVersion;

/// Where one entity's state is.
enum Held {
    /// A resource in a home's instance, valid while the home is at `generation`.
    Guest {
        home: Arc<Home>,
        generation: u64,
        entity: ResourceAny,
    },
    /// Bytes kept by the host, for a plugin of the byte-passing `entity` interface.
    Bytes(Vec<u8>),
    /// Gone: an earlier call failed, or the instance holding it was thrown away.
    Lost,
}

/// One active entity's state, resident in its plugin version (see the module doc).
pub struct Resident {
    version: Arc<PluginVersion>,
    held: Held,
}

impl Resident {
    /// The state of an entity with no events yet (`snapshot` is `None`), or one restored from a
    /// snapshot's bytes.
    pub fn new(
        version: Arc<PluginVersion>,
        ctx: &Context,
        snapshot: Option<&[u8]>,
    ) -> Result<Resident, PluginError> {
        if !version.is_resident() {
            let state = match snapshot {
                Some(bytes) => bytes.to_vec(),
                None => version.init(ctx)?,
            };
            return Ok(Resident {
                version,
                held: Held::Bytes(state),
            });
        }
        let home = version.home();
        let mut occupant = home.lock();
        let mut instance = match occupant.instance.take() {
            Some(instance) => instance,
            None => version.checkout_home_instance()?,
        };
        let snapshot = snapshot.map(<[u8]>::to_vec);
        let made = version.run(&mut instance, CallFor::of(ctx), |store, exports| {
            resident_exports(exports).map(|plugin| {
                plugin
                    .weft_plugin_resident_entity()
                    .entity()
                    .call_constructor(store, ctx, snapshot.as_ref())
            })
        });
        match made {
            Ok(entity) => {
                occupant.instance = Some(instance);
                occupant.residents += 1;
                let generation = occupant.generation;
                drop(occupant);
                Ok(Resident {
                    version,
                    held: Held::Guest {
                        home,
                        generation,
                        entity,
                    },
                })
            }
            Err(error) => {
                evict(&version, &mut occupant, instance);
                Err(error)
            }
        }
    }

    /// The plugin version holding the state.
    pub fn version(&self) -> &Arc<PluginVersion> {
        &self.version
    }

    /// Whether the state is gone (a failed call, a thrown-away instance, [`discard`](Self::discard))
    /// and must be recovered from the journal. A state whose instance was thrown away by another
    /// entity's failure only finds out at its next call, which returns
    /// [`PluginError::ResidentLost`].
    pub fn is_lost(&self) -> bool {
        matches!(self.held, Held::Lost)
    }

    /// Drops the state: it holds what the journal does not (an append failed).
    pub fn discard(&mut self) {
        self.lose();
    }

    /// Handles `commands` in order, each against the state its predecessors left, folding each
    /// decision's events before the next command: one outcome per command, a handler's refusal
    /// being [`PluginError::Rejected`]. `first_event` is the metadata of the batch's first event;
    /// the others follow by [`nth_event_meta`]. An `Err` fails the whole batch and loses the state.
    pub fn handle(
        &mut self,
        ctx: &Context,
        first_event: &EventMeta,
        commands: &[Vec<u8>],
    ) -> Result<Vec<Result<Decision, PluginError>>, PluginError> {
        let version = self.version.clone();
        let outcomes = match &mut self.held {
            // The byte calls check each outcome themselves.
            Held::Bytes(state) => handle_on_bytes(&version, state, ctx, first_event, commands),
            _ => self
                .guest_call(CallFor::of(ctx), |store, plugin, entity| {
                    plugin.weft_plugin_resident_entity().entity().call_handle(
                        store,
                        entity,
                        ctx,
                        first_event,
                        commands,
                    )
                })
                .and_then(|outcomes| check_batch(&version, ctx, outcomes, commands.len())),
        };
        // On an error the guest may have folded events the host will not write.
        outcomes.inspect_err(|_| self.lose())
    }

    /// Folds `events` into the state, in order (`ctx.now` is each event's timestamp).
    pub fn apply(&mut self, ctx: &Context, events: &[Envelope]) -> Result<(), PluginError> {
        if events.is_empty() {
            return Ok(());
        }
        let version = self.version.clone();
        let applied = match &mut self.held {
            Held::Bytes(state) => version
                .apply_events(ctx, state, events)
                .map(|folded| *state = folded),
            _ => self.guest_call(CallFor::of(ctx), |store, plugin, entity| {
                plugin
                    .weft_plugin_resident_entity()
                    .entity()
                    .call_apply(store, entity, ctx, events)
            }),
        };
        applied.inspect_err(|_| self.lose())
    }

    /// The state's bytes: for snapshots, state queries and hot swaps.
    pub fn snapshot(&mut self, ctx: &Context) -> Result<Vec<u8>, PluginError> {
        let state = match &self.held {
            Held::Bytes(state) => return Ok(state.clone()),
            _ => self.guest_call(CallFor::of(ctx), |store, plugin, entity| {
                plugin
                    .weft_plugin_resident_entity()
                    .entity()
                    .call_snapshot(store, entity)
            })?,
        };
        self.version
            .output_limits(ctx)
            .check_state(self.version.id(), &state)?;
        Ok(state)
    }

    /// Tells the plugin the entity lost its write lease; what it wants published, if anything.
    pub fn on_lease_lost(
        &mut self,
        ctx: &Context,
        lost: &LeaseLost,
    ) -> Result<Option<Vec<u8>>, PluginError> {
        let notice = match &self.held {
            Held::Bytes(state) => return self.version.on_lease_lost(ctx, state, lost),
            _ => self.guest_call(CallFor::of(ctx), |store, plugin, entity| {
                let loss = LeaseLoss {
                    fencing_token: lost.fencing_token,
                    reason: lost.reason.clone(),
                };
                plugin
                    .weft_plugin_resident_entity()
                    .entity()
                    .call_on_lease_lost(store, entity, ctx, &loss)
            })?,
        };
        if let Some(notice) = &notice {
            self.version
                .output_limits(ctx)
                .check_reply(self.version.id(), notice)?;
        }
        Ok(notice)
    }

    /// Runs `f` on the state's resource in its home. A failure that poisons the instance throws
    /// it away with every state in it.
    fn guest_call<R>(
        &mut self,
        call: CallFor<'_>,
        f: impl FnOnce(
            &mut Store<GuestState>,
            &ResidentEntityPlugin,
            ResourceAny,
        ) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let lost = || PluginError::ResidentLost {
            plugin: self.version.id().to_owned(),
        };
        let Held::Guest {
            home,
            generation,
            entity,
        } = &self.held
        else {
            return Err(lost());
        };
        let (home, generation, entity) = (home.clone(), *generation, *entity);
        let mut occupant = home.lock();
        let current = occupant.generation == generation;
        let Some(mut instance) = occupant.instance.take_if(|_| current) else {
            drop(occupant);
            self.held = Held::Lost;
            return Err(lost());
        };
        let outcome = self.version.run(&mut instance, call, |store, exports| {
            resident_exports(exports).map(|plugin| f(store, plugin, entity))
        });
        match outcome {
            Err(error) if error.poisons_instance() => {
                evict(&self.version, &mut occupant, instance);
                drop(occupant);
                self.held = Held::Lost;
                Err(error)
            }
            outcome => {
                occupant.instance = Some(instance);
                outcome
            }
        }
    }

    /// Drops the state's resource (if its instance still lives) and marks it lost.
    fn lose(&mut self) {
        let held = std::mem::replace(&mut self.held, Held::Lost);
        let Held::Guest {
            home,
            generation,
            entity,
        } = held
        else {
            return;
        };
        let mut occupant = home.lock();
        if occupant.generation != generation {
            return;
        }
        let Some(mut instance) = occupant.instance.take() else {
            return;
        };
        let dropped = self
            .version
            .run(&mut instance, CallFor::housekeeping(), |store, _| {
                Ok(entity.resource_drop(store))
            });
        occupant.residents -= 1;
        match dropped {
            Ok(()) if occupant.residents > 0 => occupant.instance = Some(instance),
            // The last state left: the instance goes back to the pool, warm.
            Ok(()) => self.version.release_home_instance(instance, true),
            Err(_) => evict(&self.version, &mut occupant, instance),
        }
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        self.lose();
    }
}

/// Throws a home's instance away with every state in it.
fn evict(version: &PluginVersion, occupant: &mut Occupant, instance: Instance) {
    occupant.generation += 1;
    occupant.residents = 0;
    version.release_home_instance(instance, false);
}

fn resident_exports(exports: &Exports) -> Result<&ResidentEntityPlugin, World> {
    match exports {
        Exports::Resident(plugin) => Ok(plugin),
        _ => Err(World::Entity),
    }
}

/// The metadata of a batch's `index`-th event (from 0), given its first event's: `seq-nr` and
/// `origin-seq-nr` advance by `index`, and so does the version vector's entry of `replica`, if
/// it has one (the rule of `resident-entity.handle` in the WIT).
fn nth_event_meta(first: &EventMeta, index: u64, replica: &str) -> EventMeta {
    let mut meta = first.clone();
    meta.seq_nr += index;
    meta.origin_seq_nr += index;
    if let Some(entry) = meta.version.iter_mut().find(|e| e.replica == replica) {
        entry.counter += index;
    }
    meta
}

/// A batch's outcomes from the guest, checked against the output limits: one per command, a
/// handler's refusal being [`PluginError::Rejected`]; any other failure fails the batch.
fn check_batch(
    version: &PluginVersion,
    ctx: &Context,
    outcomes: Vec<Result<ResidentDecision, String>>,
    commands: usize,
) -> Result<Vec<Result<Decision, PluginError>>, PluginError> {
    if outcomes.len() != commands {
        return Err(PluginError::InvalidOutput {
            plugin: version.id().to_owned(),
            reason: format!(
                "{} outcomes for a batch of {commands} commands",
                outcomes.len()
            ),
        });
    }
    outcomes
        .into_iter()
        .map(
            |outcome| match version.check_outcome(ctx, outcome.map(decision_of)) {
                Err(error @ PluginError::Rejected { .. }) => Ok(Err(error)),
                Err(error) => Err(error),
                Ok(decision) => Ok(Ok(decision)),
            },
        )
        .collect()
}

/// [`Resident::handle`] for a plugin of the byte-passing `entity` interface: per command, then
/// per event, against the bytes.
fn handle_on_bytes(
    version: &PluginVersion,
    state: &mut Vec<u8>,
    ctx: &Context,
    first_event: &EventMeta,
    commands: &[Vec<u8>],
) -> Result<Vec<Result<Decision, PluginError>>, PluginError> {
    let mut session = version.session();
    let mut next = 0;
    let mut outcomes = Vec::with_capacity(commands.len());
    for command in commands {
        match version.handle_command(ctx, state, command) {
            Ok(decision) => {
                for payload in &decision.events {
                    let event = Envelope {
                        meta: nth_event_meta(first_event, next, &ctx.replica),
                        payload: payload.clone(),
                    };
                    *state = session.apply_event(ctx, state, &event)?;
                    next += 1;
                }
                outcomes.push(Ok(decision));
            }
            Err(rejected @ PluginError::Rejected { .. }) => outcomes.push(Err(rejected)),
            Err(error) => return Err(error),
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::VersionEntry;

    /// What the rule may change: positions and the version vector.
    fn moved(meta: &EventMeta) -> (u64, u64, Vec<(String, u64)>) {
        let version = meta
            .version
            .iter()
            .map(|entry| (entry.replica.clone(), entry.counter))
            .collect();
        (meta.seq_nr, meta.origin_seq_nr, version)
    }

    #[test]
    fn a_batch_s_events_advance_their_positions_and_their_replica_s_counter_only() {
        let entry = |replica: &str, counter| VersionEntry {
            replica: replica.into(),
            counter,
        };
        let first = EventMeta {
            persistence_id: "t|e".into(),
            seq_nr: 10,
            writer: "w".into(),
            fencing_token: 3,
            timestamp: 7 << 16,
            origin_replica: "a".into(),
            origin_seq_nr: 4,
            version: vec![entry("a", 4), entry("b", 9)],
            concurrent: false,
        };
        assert_eq!(moved(&nth_event_meta(&first, 0, "a")), moved(&first));
        let third = nth_event_meta(&first, 2, "a");
        assert_eq!(
            moved(&third),
            (12, 6, vec![("a".into(), 6), ("b".into(), 9)])
        );
        assert_eq!(
            (
                third.persistence_id.as_str(),
                third.writer.as_str(),
                third.fencing_token,
                third.timestamp,
                third.origin_replica.as_str()
            ),
            ("t|e", "w", 3, 7 << 16, "a")
        );
        // A replica without an entry (an entity that is not replicated) keeps the vector.
        assert_eq!(moved(&nth_event_meta(&first, 2, "c")).2, moved(&first).2);
    }
}
