//! A live instance of a plugin version: its store, and its exports typed by the world (and, for
//! an entity plugin, the contract) it implements. The pool, the sessions of a version and the
//! homes of resident states all hold these.

use wasmtime::Store;

use super::bindings::{EntityPlugin, LeaseHooks, ResidentEntityPlugin, ResolverPlugin};
use super::sandbox::GuestState;

/// The exports of a live instance.
pub(super) enum Exports {
    Entity {
        plugin: EntityPlugin,
        hooks: Option<LeaseHooks>,
    },
    Resident(ResidentEntityPlugin),
    Resolver(ResolverPlugin),
}

/// A live instance: what the node's pool holds.
pub struct Instance {
    pub(super) store: Store<GuestState>,
    pub(super) exports: Exports,
}
