//! One loaded plugin version: its `InstancePre`, a pool of warm instances, and typed calls.
//!
//! A call takes an idle instance (or instantiates one from the `InstancePre`, microseconds with
//! the pooling allocator), arms the CPU deadline, resets the per-call sandbox state, calls, and
//! puts the instance back. An instance whose call failed is dropped, never reused: a trap leaves
//! it unusable, and the next call starts from a clean one.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use wasmtime::component::{Component, InstancePre};
use wasmtime::{Engine, Store, Trap};

use super::bindings::types::{Context, Envelope};
use super::bindings::{
    Decision, EntityPlugin, EntityPluginIndices, LeaseHooks, LeaseHooksIndices, LeaseLost,
    Resolution, ResolverPlugin, ResolverPluginPre,
};
use super::engine::{PluginRuntime, RuntimeLimits};
use super::error::PluginError;
use super::sandbox::{self, GuestState};
use super::validate::World;

/// How instances of a world are made.
enum Pre {
    Entity {
        instance_pre: InstancePre<GuestState>,
        entity: EntityPluginIndices,
        /// Present when the plugin exports the optional `lease-hooks` interface.
        hooks: Option<LeaseHooksIndices>,
    },
    Resolver(ResolverPluginPre<GuestState>),
}

/// The exports of a live instance.
enum Exports {
    Entity {
        plugin: EntityPlugin,
        hooks: Option<LeaseHooks>,
    },
    Resolver(ResolverPlugin),
}

struct Instance {
    store: Store<GuestState>,
    exports: Exports,
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
    idle: Mutex<Vec<Instance>>,
}

impl PluginVersion {
    /// Links a compiled component after checking its world and imports.
    pub(super) fn new(
        runtime: &PluginRuntime,
        name: &str,
        component: &Component,
        content_hash: String,
        size_bytes: usize,
    ) -> Result<Self, PluginError> {
        let engine = runtime.engine();
        let world = World::of(name, engine, component)?;
        super::validate::check_imports(name, engine, component)?;
        let instance_pre = runtime
            .linker()
            .instantiate_pre(component)
            .map_err(|error| PluginError::Invalid {
                plugin: name.to_owned(),
                reason: format!("its imports do not match what weft provides: {error:#}"),
            })?;
        let pre = match world {
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
        Ok(PluginVersion {
            id: format!("{name}@{}", &content_hash[..12]).into(),
            name: name.to_owned(),
            content_hash,
            world,
            size_bytes,
            loaded_at: SystemTime::now(),
            pre,
            engine: engine.clone(),
            limits: runtime.limits().clone(),
            idle: Mutex::new(Vec::new()),
        })
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
        self.call(ctx.now, |store, exports| match exports {
            Exports::Entity { plugin, .. } => Ok(plugin.weft_plugin_entity().call_init(store, ctx)),
            Exports::Resolver(_) => Err(World::Entity),
        })
    }

    /// Runs the command handler. A handler's own refusal is [`PluginError::Rejected`].
    pub fn handle_command(
        &self,
        ctx: &Context,
        state: &[u8],
        command: &[u8],
    ) -> Result<Decision, PluginError> {
        let outcome =
            self.call(ctx.now, |store, exports| match exports {
                Exports::Entity { plugin, .. } => Ok(plugin
                    .weft_plugin_entity()
                    .call_handle_command(store, ctx, &state.to_vec(), &command.to_vec())),
                Exports::Resolver(_) => Err(World::Entity),
            })?;
        outcome.map_err(|message| PluginError::Rejected {
            plugin: self.id.to_string(),
            message,
        })
    }

    /// Folds one event into the state.
    pub fn apply_event(
        &self,
        ctx: &Context,
        state: &[u8],
        event: &Envelope,
    ) -> Result<Vec<u8>, PluginError> {
        self.call(ctx.now, |store, exports| match exports {
            Exports::Entity { plugin, .. } => {
                Ok(plugin
                    .weft_plugin_entity()
                    .call_apply_event(store, ctx, &state.to_vec(), event))
            }
            Exports::Resolver(_) => Err(World::Entity),
        })
    }

    /// Whether the plugin exports the optional `lease-hooks` interface.
    pub fn has_lease_hooks(&self) -> bool {
        matches!(&self.pre, Pre::Entity { hooks: Some(_), .. })
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
        self.call(ctx.now, |store, exports| match exports {
            Exports::Entity {
                hooks: Some(hooks), ..
            } => Ok(hooks.call_on_lease_lost(store, ctx, &state.to_vec(), lost)),
            Exports::Entity { hooks: None, .. } => Ok(Ok(None)),
            Exports::Resolver(_) => Err(World::Entity),
        })
    }

    /// Asks a resolver what to do with an incoming event concurrent with `concurrent`.
    pub fn resolve(
        &self,
        ctx: &Context,
        state: &[u8],
        incoming: &Envelope,
        concurrent: &[Envelope],
    ) -> Result<Resolution, PluginError> {
        self.call(ctx.now, |store, exports| match exports {
            Exports::Resolver(plugin) => Ok(plugin.weft_plugin_resolver().call_resolve(
                store,
                ctx,
                &state.to_vec(),
                incoming,
                concurrent,
            )),
            Exports::Entity { .. } => Err(World::Resolver),
        })
    }

    /// Runs `f` on a pooled instance. `f` returns `Err(world)` when the plugin is not of the
    /// world the call needs, else the wasm call's own result.
    fn call<R>(
        &self,
        now_hlc: u64,
        f: impl FnOnce(&mut Store<GuestState>, &Exports) -> Result<wasmtime::Result<R>, World>,
    ) -> Result<R, PluginError> {
        let mut instance = match self.take_idle() {
            Some(instance) => instance,
            None => self.instantiate()?,
        };
        instance.store.data_mut().begin_call(now_hlc);
        instance
            .store
            .set_epoch_deadline(self.limits.epoch_deadline_ticks());
        let outcome = f(&mut instance.store, &instance.exports);
        let stderr = instance.store.data_mut().take_stderr();
        match outcome {
            Err(expected) => {
                self.recycle(instance);
                Err(PluginError::WrongKind {
                    plugin: self.id.to_string(),
                    expected: expected.name(),
                    actual: self.world.name(),
                })
            }
            Ok(Ok(value)) => {
                if !stderr.is_empty() {
                    tracing::debug!(target: "weft::guest", plugin = %self.id, "stderr: {stderr}");
                }
                self.recycle(instance);
                Ok(value)
            }
            // The instance is dropped here: after a trap it must not run again.
            Ok(Err(error)) => Err(self.classify(&error, instance.store.data(), stderr)),
        }
    }

    fn take_idle(&self) -> Option<Instance> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn recycle(&self, instance: Instance) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.limits.idle_instances_per_version {
            idle.push(instance);
        }
    }

    fn instantiate(&self) -> Result<Instance, PluginError> {
        let state = GuestState::new(self.id.clone(), self.limits.memory_per_instance_bytes);
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
            return PluginError::Host(format!(
                "{plugin}: all {} instance slots are busy; retry shortly",
                self.limits.max_instances
            ));
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
