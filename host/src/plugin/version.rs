//! One loaded plugin version: its `InstancePre`, its warm instances in the node's pool, and typed
//! calls whose output is checked at the boundary.
//!
//! A call takes an idle instance of the version from the pool (or a slot to instantiate one from
//! the `InstancePre`, microseconds with the pooling allocator), arms the CPU deadline, resets the
//! per-call sandbox state, calls, checks what the guest returned against `[limits.output]`, and
//! gives the instance back. An instance whose call failed is dropped, never reused: a trap leaves
//! it unusable, and the next call starts from a clean one.
//!
//! A version is instantiated once when it is made: that links every export the host calls,
//! the optional hooks included, and so checks their function types against the WIT before the
//! version can replace anything.
//!
//! An entity plugin exports one of two interfaces. `entity` takes the state as bytes on every
//! call; `resident-entity` keeps each active entity's state in the guest (see `resident`). Each
//! side is served on top of the other where a caller needs it: the byte calls below run on a
//! `resident-entity` plugin by restoring a transient resource from the bytes, and
//! [`Resident`](super::resident::Resident) keeps the bytes itself for an `entity` plugin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use wasmtime::component::{Component, InstancePre};
use wasmtime::{Engine, Store, Trap};

use super::bindings::types::{Context, Envelope};
use super::bindings::{
    Decision, EntityPluginIndices, LeaseHooksIndices, LeaseLost, ResidentEntityPluginPre,
    Resolution, ResolverPluginPre,
};
use super::byte_calls;
use super::engine::{PluginRuntime, RuntimeLimits};
use super::error::PluginError;
use super::home::Home;
use super::instance::{Exports, Instance};
use super::limits::{OutputLimits, TypeOutputLimits};
use super::pool::{Checkout, Pool};
use super::sandbox::{self, CallFor, GuestState};
use super::validate::World;
use crate::observability::metrics::observe_plugin_call;

/// How instances of a world are made.
enum Pre {
    Entity {
        instance_pre: InstancePre<GuestState>,
        entity: EntityPluginIndices,
        /// Present when the plugin exports the optional `lease-hooks` interface.
        hooks: Option<LeaseHooksIndices>,
    },
    Resident(ResidentEntityPluginPre<GuestState>),
    Resolver(ResolverPluginPre<GuestState>),
}

/// The instance pool every version of a node shares.
pub type InstancePool = Pool<Instance>;

/// What every version of a registry shares: the instance slots, and entity types' own output
/// limits.
pub struct Shared {
    pub pool: InstancePool,
    pub type_output_limits: TypeOutputLimits,
}

/// A plugin version ready to be called. Shared (`Arc`) by every entity using it; a hot swap
/// replaces the registry's `Arc`, and calls holding the old one finish on it.
pub struct PluginVersion {
    name: String,
    content_hash: String,
    /// `name@<first 12 hex digits of the content hash>`: what events record.
    id: Arc<str>,
    world: World,
    size_bytes: usize,
    loaded_at: SystemTime,
    pre: Pre,
    engine: Engine,
    limits: RuntimeLimits,
    /// The node's `[limits.output]`, and entity types' own.
    output_limits: Arc<OutputLimits>,
    shared: Arc<Shared>,
    /// Tells this version's instances apart from other versions' in the pool.
    pool_key: u64,
    /// The instances holding resident entity states (`resident-entity` plugins), at most
    /// `busy_instances_per_plugin_max`; empty for other plugins.
    homes: Mutex<Vec<Arc<Home>>>,
    /// The pool share the homes' instances count against, apart from the plugin's calls: this
    /// loaded version's own.
    home_share: String,
}

impl Drop for PluginVersion {
    fn drop(&mut self) {
        self.shared.pool.release_version(self.pool_key);
    }
}

/// Calls on one instance of a [`PluginVersion`] (see [`PluginVersion::session`]). The instance
/// is taken from the pool at the first call and given back when the session is dropped; a call
/// that fails drops it, and the next call takes a fresh one.
pub struct Session<'v> {
    version: &'v PluginVersion,
    /// Whose share of the pool's busy instances the session's instance counts against.
    share: &'v str,
    instance: Option<Instance>,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            self.version.recycle(self.share, instance);
        }
    }
}

impl Session<'_> {
    /// The initial state of an entity.
    pub fn init(&mut self, ctx: &Context) -> Result<Vec<u8>, PluginError> {
        self.state_call(ctx, |store, exports| match exports {
            Exports::Entity { plugin, .. } => Ok(plugin.weft_plugin_entity().call_init(store, ctx)),
            Exports::Resident(plugin) => Ok(byte_calls::init_bytes(store, plugin, ctx)),
            Exports::Resolver(_) => Err(World::Entity),
        })
    }

    /// Folds one event into the state.
    pub fn apply_event(
        &mut self,
        ctx: &Context,
        state: &[u8],
        event: &Envelope,
    ) -> Result<Vec<u8>, PluginError> {
        self.state_call(ctx, |store, exports| match exports {
            Exports::Entity { plugin, .. } => {
                Ok(plugin
                    .weft_plugin_entity()
                    .call_apply_event(store, ctx, &state.to_vec(), event))
            }
            Exports::Resident(plugin) => {
                Ok(byte_calls::apply_bytes(store, plugin, ctx, state, event))
            }
            Exports::Resolver(_) => Err(World::Entity),
        })
    }

    /// An entity-world call that returns a state, checked against the output limits.
    fn state_call(
        &mut self,
        ctx: &Context,
        f: impl FnOnce(&mut Store<GuestState>, &Exports) -> Result<wasmtime::Result<Vec<u8>>, World>,
    ) -> Result<Vec<u8>, PluginError> {
        let state = self.call(CallFor::of(ctx), f)?;
        let version = self.version;
        version
            .output_limits(ctx)
            .check_state(&version.id, &state)?;
        Ok(state)
    }

    /// Runs `f` on the session's instance. `f` returns `Err(world)` when the plugin is not of
    /// the world the call needs, else the wasm call's own result.
    fn call<R>(
        &mut self,
        call: CallFor<'_>,
        f: impl FnOnce(&mut Store<GuestState>, &Exports) -> Result<wasmtime::Result<R>, World>,
    ) -> Result<R, PluginError> {
        let version = self.version;
        let mut instance = match self.instance.take() {
            Some(instance) => instance,
            None => version.checkout(self.share)?,
        };
        match version.run(&mut instance, call, f) {
            Err(error) if error.poisons_instance() => {
                // The instance is dropped: after a trap it must not run again.
                version
                    .shared
                    .pool
                    .checkin(self.share, version.pool_key, None);
                Err(error)
            }
            outcome => {
                self.instance = Some(instance);
                outcome
            }
        }
    }
}

impl PluginVersion {
    /// Links a compiled component after checking its world and imports, and instantiates it
    /// once to check its exports' function types.
    pub(super) fn new(
        runtime: &PluginRuntime,
        shared: Arc<Shared>,
        name: &str,
        world: World,
        component: &Component,
        content_hash: String,
        size_bytes: usize,
    ) -> Result<Self, PluginError> {
        static POOL_KEYS: AtomicU64 = AtomicU64::new(0);
        let engine = runtime.engine();
        let instance_pre = runtime
            .linker()
            .instantiate_pre(component)
            .map_err(|error| PluginError::Invalid {
                plugin: name.to_owned(),
                reason: format!("its imports do not match what weft provides: {error:#}"),
            })?;
        let resident = component
            .get_export_index(None, World::Entity.exports()[0])
            .is_some();
        let pre = match world {
            World::Entity if resident => {
                ResidentEntityPluginPre::new(instance_pre).map(Pre::Resident)
            }
            World::Entity => EntityPluginIndices::new(&instance_pre).map(|entity| Pre::Entity {
                hooks: LeaseHooksIndices::new(&instance_pre).ok(),
                instance_pre,
                entity,
            }),
            World::Resolver => ResolverPluginPre::new(instance_pre).map(Pre::Resolver),
        }
        .map_err(|error| PluginError::Invalid {
            plugin: name.to_owned(),
            reason: format!(
                "its exports do not match the {} world: {error:#}",
                world.name()
            ),
        })?;
        let id: Arc<str> = format!("{name}@{}", &content_hash[..12]).into();
        let pool_key = POOL_KEYS.fetch_add(1, Ordering::Relaxed);
        let version = PluginVersion {
            // Per loaded object, not per build: the same build loaded again (a deployment that
            // went back to it) must not find its share taken by the homes of the earlier load.
            home_share: format!("{id}#resident-{pool_key}"),
            homes: Mutex::new(Vec::new()),
            id,
            name: name.to_owned(),
            content_hash,
            world,
            size_bytes,
            loaded_at: SystemTime::now(),
            pre,
            engine: engine.clone(),
            limits: runtime.limits().clone(),
            output_limits: Arc::new(runtime.limits().output.clone()),
            shared,
            pool_key,
        };
        version.check_export_types()?;
        Ok(version)
    }

    /// Instantiates the version once, which types every export the host calls against the WIT,
    /// and keeps the instance warm.
    fn check_export_types(&self) -> Result<(), PluginError> {
        match self.checkout(&self.name) {
            Ok(instance) => {
                self.recycle(&self.name, instance);
                Ok(())
            }
            Err(PluginError::Trapped { message, .. }) => Err(PluginError::Invalid {
                plugin: self.name.clone(),
                reason: format!(
                    "its exports do not have the function types of the {} world of \
                     weft:plugin@0.1.0, or its start-up failed: {message}",
                    self.world.name()
                ),
            }),
            Err(other) => Err(other),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name@hash-prefix`, recorded on every event this version produces.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    pub fn world(&self) -> World {
        self.world
    }

    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// The initial state of an entity.
    pub fn init(&self, ctx: &Context) -> Result<Vec<u8>, PluginError> {
        self.session().init(ctx)
    }

    /// Runs the command handler. A handler's own refusal is [`PluginError::Rejected`].
    pub fn handle_command(
        &self,
        ctx: &Context,
        state: &[u8],
        command: &[u8],
    ) -> Result<Decision, PluginError> {
        let outcome =
            self.call(CallFor::of(ctx), |store, exports| match exports {
                Exports::Entity { plugin, .. } => Ok(plugin
                    .weft_plugin_entity()
                    .call_handle_command(store, ctx, &state.to_vec(), &command.to_vec())),
                Exports::Resident(plugin) => {
                    Ok(byte_calls::handle_bytes(store, plugin, ctx, state, command))
                }
                Exports::Resolver(_) => Err(World::Entity),
            })?;
        self.check_outcome(ctx, outcome)
    }

    /// Checks one command's outcome against the output limits; a handler's own refusal becomes
    /// [`PluginError::Rejected`].
    pub(super) fn check_outcome(
        &self,
        ctx: &Context,
        outcome: Result<Decision, String>,
    ) -> Result<Decision, PluginError> {
        let output = self.output_limits(ctx);
        match outcome {
            Ok(decision) => {
                output.check_events(&self.id, &decision.events)?;
                output.check_reply(&self.id, &decision.reply)?;
                Ok(decision)
            }
            Err(message) => {
                output.check_error_text(&self.id, &message)?;
                Err(PluginError::Rejected {
                    plugin: self.id.to_string(),
                    message,
                })
            }
        }
    }

    /// Folds events into the state, in order (each with its own timestamp as the time): one call
    /// on a `resident-entity` plugin, the state restored and encoded once; one call per event on
    /// a byte-passing one.
    pub fn apply_events(
        &self,
        ctx: &Context,
        state: &[u8],
        events: &[Envelope],
    ) -> Result<Vec<u8>, PluginError> {
        let mut session = self.session();
        if !self.is_resident() {
            let mut ctx = ctx.clone();
            return events.iter().try_fold(state.to_vec(), |state, event| {
                ctx.now = event.meta.timestamp;
                session.apply_event(&ctx, &state, event)
            });
        }
        session.state_call(ctx, |store, exports| match exports {
            Exports::Resident(plugin) => Ok(byte_calls::apply_all_bytes(
                store, plugin, ctx, state, events,
            )),
            _ => Err(World::Entity),
        })
    }

    /// Folds one event into the state.
    pub fn apply_event(
        &self,
        ctx: &Context,
        state: &[u8],
        event: &Envelope,
    ) -> Result<Vec<u8>, PluginError> {
        self.session().apply_event(ctx, state, event)
    }

    /// What a call for the context's entity type may hand the host.
    pub(super) fn output_limits(&self, ctx: &Context) -> Arc<OutputLimits> {
        self.shared
            .type_output_limits
            .of(&ctx.entity_type, &self.output_limits)
    }

    /// Whether the plugin hears about lease losses: the optional `lease-hooks` interface, or the
    /// method every `resident-entity` plugin has.
    pub fn has_lease_hooks(&self) -> bool {
        matches!(
            &self.pre,
            Pre::Entity { hooks: Some(_), .. } | Pre::Resident(_)
        )
    }

    /// Whether the plugin keeps its entities' state resident (`resident-entity`).
    pub fn is_resident(&self) -> bool {
        matches!(&self.pre, Pre::Resident(_))
    }

    /// Tells the plugin its entity lost the write lease; `Ok(None)` when the plugin has no hook or
    /// nothing to say.
    pub fn on_lease_lost(
        &self,
        ctx: &Context,
        state: &[u8],
        lost: &LeaseLost,
    ) -> Result<Option<Vec<u8>>, PluginError> {
        if !self.has_lease_hooks() {
            return Ok(None);
        }
        let notice = self.call(CallFor::of(ctx), |store, exports| match exports {
            Exports::Entity {
                hooks: Some(hooks), ..
            } => Ok(hooks.call_on_lease_lost(store, ctx, &state.to_vec(), lost)),
            Exports::Entity { hooks: None, .. } => Ok(Ok(None)),
            Exports::Resident(plugin) => Ok(byte_calls::lease_lost_bytes(
                store, plugin, ctx, state, lost,
            )),
            Exports::Resolver(_) => Err(World::Entity),
        })?;
        if let Some(notice) = &notice {
            self.output_limits(ctx).check_reply(&self.id, notice)?;
        }
        Ok(notice)
    }

    /// Asks a resolver what to do with an incoming event concurrent with `concurrent`.
    pub fn resolve(
        &self,
        ctx: &Context,
        state: &[u8],
        incoming: &Envelope,
        concurrent: &[Envelope],
    ) -> Result<Resolution, PluginError> {
        let resolution = self.call(CallFor::of(ctx), |store, exports| match exports {
            Exports::Resolver(plugin) => Ok(plugin.weft_plugin_resolver().call_resolve(
                store,
                ctx,
                &state.to_vec(),
                incoming,
                concurrent,
            )),
            Exports::Entity { .. } | Exports::Resident(_) => Err(World::Resolver),
        })?;
        if let Resolution::Replace(events) = &resolution {
            self.output_limits(ctx).check_events(&self.id, events)?;
        }
        Ok(resolution)
    }

    /// Runs `f` on a pooled instance. `f` returns `Err(world)` when the plugin is not of the
    /// world the call needs, else the wasm call's own result.
    fn call<R>(
        &self,
        call: CallFor<'_>,
        f: impl FnOnce(&mut Store<GuestState>, &Exports) -> Result<wasmtime::Result<R>, World>,
    ) -> Result<R, PluginError> {
        self.session().call(call, f)
    }

    /// A run of calls on one instance of this version, held until the session is dropped: a
    /// replay folds many events without going back to the pool for each.
    pub fn session(&self) -> Session<'_> {
        self.session_in(&self.name)
    }

    /// A session whose instance counts against the busy share named `share` instead of the
    /// plugin's own: a long replay then never takes the instances the plugin's calls need.
    pub fn session_in<'v>(&'v self, share: &'v str) -> Session<'v> {
        Session {
            version: self,
            share,
            instance: None,
        }
    }

    /// Runs `f` on `instance` under the call's limits: the clocks read the call's time, the CPU
    /// deadline is armed, stderr is collected, the time taken goes to `/metrics`. An error that
    /// [poisons](PluginError::poisons_instance) the instance means it must not run again.
    pub(super) fn run<R>(
        &self,
        instance: &mut Instance,
        call: CallFor<'_>,
        f: impl FnOnce(&mut Store<GuestState>, &Exports) -> Result<wasmtime::Result<R>, World>,
    ) -> Result<R, PluginError> {
        instance.store.data_mut().begin_call(call);
        instance
            .store
            .set_epoch_deadline(self.limits.epoch_deadline_ticks());
        let started = std::time::Instant::now();
        let outcome = f(&mut instance.store, &instance.exports);
        observe_plugin_call(&self.name, started.elapsed());
        let stderr = instance.store.data_mut().take_stderr();
        match outcome {
            Err(expected) => Err(PluginError::WrongKind {
                plugin: self.id.to_string(),
                expected: expected.name(),
                actual: self.world.name(),
            }),
            Ok(Ok(value)) => {
                if !stderr.is_empty() {
                    tracing::debug!(target: "weft::guest", plugin = %self.id, "stderr: {stderr}");
                }
                Ok(value)
            }
            Ok(Err(error)) => {
                let reported = instance.store.data_mut().take_last_error_line();
                Err(self
                    .classify(&error, instance.store.data(), stderr)
                    .with_guest_report(reported))
            }
        }
    }

    /// The home (instance) a new resident state goes to: the one holding the fewest, or a new
    /// one while there are fewer than the plugin's busy share.
    pub(super) fn home(&self) -> Arc<Home> {
        let mut homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
        let least = homes.iter().min_by_key(|home| home.residents()).cloned();
        match least {
            Some(home)
                if home.residents() == 0
                    || homes.len() >= self.limits.busy_instances_per_plugin_max as usize =>
            {
                home
            }
            _ => {
                let home = Arc::new(Home::default());
                homes.push(home.clone());
                home
            }
        }
    }

    /// An instance for a home: counted against the homes' own share of the pool.
    pub(super) fn checkout_home_instance(&self) -> Result<Instance, PluginError> {
        self.checkout(&self.home_share)
    }

    /// Gives a home's instance back: kept idle when `healthy`, dropped otherwise.
    pub(super) fn release_home_instance(&self, instance: Instance, healthy: bool) {
        if healthy {
            self.recycle(&self.home_share, instance);
        } else {
            drop(instance);
            self.shared
                .pool
                .checkin(&self.home_share, self.pool_key, None);
        }
    }

    /// An idle instance of this version from the pool, or a new one in a free slot, counted
    /// against `share`.
    fn checkout(&self, share: &str) -> Result<Instance, PluginError> {
        match self.shared.pool.checkout(share, self.pool_key) {
            Ok(Checkout::Idle(instance)) => Ok(instance),
            Ok(Checkout::Fresh) => self.instantiate().inspect_err(|_| {
                self.shared.pool.checkin(share, self.pool_key, None);
            }),
            Err(exhausted) => Err(PluginError::Busy {
                plugin: self.id.to_string(),
                reason: exhausted.to_string(),
            }),
        }
    }

    /// Gives a healthy instance back to the pool, with the memory it holds.
    fn recycle(&self, share: &str, instance: Instance) {
        let bytes = instance.store.data().memory_cap().current_bytes;
        self.shared
            .pool
            .checkin(share, self.pool_key, Some((instance, bytes)));
    }

    fn instantiate(&self) -> Result<Instance, PluginError> {
        let state = GuestState::new(
            self.id.clone(),
            self.limits.memory_per_instance_bytes,
            &self.limits.output,
        );
        let mut store = sandbox::new_store(&self.engine, state);
        // Instantiation runs guest code (constructors): bound it like a call.
        store.set_epoch_deadline(self.limits.epoch_deadline_ticks());
        let exports = match &self.pre {
            Pre::Entity {
                instance_pre,
                entity,
                hooks,
            } => instance_pre.instantiate(&mut store).and_then(|instance| {
                Ok(Exports::Entity {
                    plugin: entity.load(&mut store, &instance)?,
                    hooks: match hooks {
                        Some(hooks) => Some(hooks.load(&mut store, &instance)?),
                        None => None,
                    },
                })
            }),
            Pre::Resident(pre) => pre.instantiate(&mut store).map(Exports::Resident),
            Pre::Resolver(pre) => pre.instantiate(&mut store).map(Exports::Resolver),
        };
        match exports {
            Ok(exports) => Ok(Instance { store, exports }),
            Err(error) => {
                let stderr = store.data_mut().take_stderr();
                Err(self.classify(&error, store.data(), stderr))
            }
        }
    }

    /// Turns a wasmtime error into what the plugin author needs to know.
    fn classify(&self, error: &wasmtime::Error, state: &GuestState, stderr: String) -> PluginError {
        let plugin = self.id.to_string();
        if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return PluginError::CpuBoundExceeded {
                plugin,
                limit: self.limits.cpu_per_call(),
            };
        }
        if let Some(requested_bytes) = state.memory_cap().exceeded_by_request {
            return PluginError::MemoryCapExceeded {
                plugin,
                cap_bytes: state.memory_cap().cap_bytes,
                requested_bytes,
            };
        }
        if error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return PluginError::Busy {
                plugin,
                reason: format!(
                    "the pooling allocator has no free slot of the {} instances",
                    self.limits.max_instances
                ),
            };
        }
        let trap = match error.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{error:#}"),
        };
        let message = if stderr.is_empty() {
            trap
        } else {
            format!("{trap}; the guest wrote: {stderr}")
        };
        PluginError::Trapped { plugin, message }
    }
}
