//! The byte-passing calls (`init`, `apply-event`, `handle-command`, `on-lease-lost`) served by a
//! `resident-entity` plugin, for the callers that still fold state bytes (replicated entities,
//! upgrade checks): each restores a transient resource from the bytes for the length of one call
//! and drops it after.

use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::bindings::types::{Context, Envelope, EventMeta};
use super::bindings::{Decision, LeaseLoss, LeaseLost, ResidentDecision, ResidentEntityPlugin};
use super::sandbox::GuestState;

/// The host's view of a `resident-entity` decision.
pub(super) fn decision_of(decision: ResidentDecision) -> Decision {
    Decision {
        events: decision.events,
        reply: decision.reply,
    }
}

/// Runs `f` on a resource restored from `state` (`None`: a new entity) for the length of one
/// byte call, and drops it after.
fn with_transient<R>(
    store: &mut Store<GuestState>,
    plugin: &ResidentEntityPlugin,
    ctx: &Context,
    state: Option<&[u8]>,
    f: impl FnOnce(&mut Store<GuestState>, ResourceAny) -> wasmtime::Result<R>,
) -> wasmtime::Result<R> {
    let state = state.map(<[u8]>::to_vec);
    let entity = plugin
        .weft_plugin_resident_entity()
        .entity()
        .call_constructor(&mut *store, ctx, state.as_ref())?;
    let outcome = f(&mut *store, entity)?;
    entity.resource_drop(&mut *store)?;
    Ok(outcome)
}

/// `entity.init` on a `resident-entity` plugin.
pub(super) fn init_bytes(
    store: &mut Store<GuestState>,
    plugin: &ResidentEntityPlugin,
    ctx: &Context,
) -> wasmtime::Result<Vec<u8>> {
    with_transient(store, plugin, ctx, None, |store, entity| {
        plugin
            .weft_plugin_resident_entity()
            .entity()
            .call_snapshot(store, entity)
    })
}

/// `entity.apply-event` on a `resident-entity` plugin.
pub(super) fn apply_bytes(
    store: &mut Store<GuestState>,
    plugin: &ResidentEntityPlugin,
    ctx: &Context,
    state: &[u8],
    event: &Envelope,
) -> wasmtime::Result<Vec<u8>> {
    apply_all_bytes(store, plugin, ctx, state, std::slice::from_ref(event))
}

/// A run of `apply-event`s on a `resident-entity` plugin: the state restored once, the events
/// folded in one call, the state encoded once.
pub(super) fn apply_all_bytes(
    store: &mut Store<GuestState>,
    plugin: &ResidentEntityPlugin,
    ctx: &Context,
    state: &[u8],
    events: &[Envelope],
) -> wasmtime::Result<Vec<u8>> {
    with_transient(store, plugin, ctx, Some(state), |store, entity| {
        let calls = plugin.weft_plugin_resident_entity().entity();
        calls.call_apply(&mut *store, entity, ctx, events)?;
        calls.call_snapshot(store, entity)
    })
}

/// `entity.handle-command` on a `resident-entity` plugin. The transient state folds the
/// decision's events with metadata the caller never sees (it applies the events it writes
/// itself), so they carry the context's time and no position.
pub(super) fn handle_bytes(
    store: &mut Store<GuestState>,
    plugin: &ResidentEntityPlugin,
    ctx: &Context,
    state: &[u8],
    command: &[u8],
) -> wasmtime::Result<Result<Decision, String>> {
    let first_event = EventMeta {
        persistence_id: format!("{}|{}", ctx.entity_type, ctx.entity_id),
        seq_nr: 0,
        writer: String::new(),
        fencing_token: 0,
        timestamp: ctx.now,
        origin_replica: String::new(),
        origin_seq_nr: 0,
        version: Vec::new(),
        concurrent: false,
    };
    with_transient(store, plugin, ctx, Some(state), |store, entity| {
        let mut outcomes = plugin.weft_plugin_resident_entity().entity().call_handle(
            store,
            entity,
            ctx,
            &first_event,
            &[command.to_vec()],
        )?;
        match outcomes.pop() {
            Some(outcome) if outcomes.is_empty() => Ok(outcome.map(decision_of)),
            _ => Err(wasmtime::Error::msg(
                "the guest returned a number of outcomes other than one for one command",
            )),
        }
    })
}

/// `lease-hooks.on-lease-lost` on a `resident-entity` plugin.
pub(super) fn lease_lost_bytes(
    store: &mut Store<GuestState>,
    plugin: &ResidentEntityPlugin,
    ctx: &Context,
    state: &[u8],
    lost: &LeaseLost,
) -> wasmtime::Result<Option<Vec<u8>>> {
    let loss = LeaseLoss {
        fencing_token: lost.fencing_token,
        reason: lost.reason.clone(),
    };
    with_transient(store, plugin, ctx, Some(state), |store, entity| {
        plugin
            .weft_plugin_resident_entity()
            .entity()
            .call_on_lease_lost(store, entity, ctx, &loss)
    })
}
