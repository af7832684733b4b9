//! The [`Entity`] trait a plugin implements, and the [`Decision`] a command produces.

use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Display;

use crate::codec::{decode, encode};
use crate::context::{Context, LeaseLost};

/// The outcome of a command: events to persist, in order, and the reply to the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<E, R> {
    pub events: Vec<E>,
    pub reply: R,
}

impl<E, R> Decision<E, R> {
    /// Persist `events`, then answer `reply`.
    pub fn emit(events: Vec<E>, reply: R) -> Self {
        Decision { events, reply }
    }

    /// Answer without persisting anything (a query).
    pub fn reply(reply: R) -> Self {
        Decision {
            events: Vec::new(),
            reply,
        }
    }
}

/// An event-sourced entity's business logic: pure functions over its state.
///
/// `handle` decides, `apply` folds. Both must be deterministic: the host replays `apply` on
/// recovery and on every replica, and reads no clock but [`Context::now`].
pub trait Entity {
    type State: Serialize + DeserializeOwned + Default;
    type Command: DeserializeOwned;
    type Event: Serialize + DeserializeOwned;
    type Reply: Serialize;
    type Error: Display;

    /// The state of an entity with no events yet.
    fn init(_ctx: &Context) -> Self::State {
        Self::State::default()
    }

    /// Decides what `command` does. An error rejects it: nothing is persisted and the caller
    /// gets the message.
    fn handle(
        state: &Self::State,
        ctx: &Context,
        command: Self::Command,
    ) -> Result<Decision<Self::Event, Self::Reply>, Self::Error>;

    /// Folds one event into the state.
    fn apply(state: Self::State, ctx: &Context, event: &Self::Event) -> Self::State;

    /// Called once each time this host loses the write lease of a single-writer entity, after
    /// it switched to observer. The [`Notice`] returned, if any, is published with the host's
    /// `lease-lost` event (`GET /events`). The default says nothing.
    fn on_lease_lost(_state: &Self::State, _ctx: &Context, _lost: &LeaseLost) -> Option<Notice> {
        None
    }
}

/// A value published with the host's `lease-lost` event, encoded like replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice(Vec<u8>);

impl Notice {
    /// Encodes `value`. A value that does not encode is a bug in the plugin: it traps, and the
    /// host logs the message.
    pub fn of<T: Serialize>(value: &T) -> Notice {
        Notice(encode(value).unwrap_or_else(|e| panic!("lease-lost notice: {e}")))
    }

    /// The MessagePack bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A command's outcome as it crosses the boundary: events and reply encoded.
pub type EncodedDecision = Decision<Vec<u8>, Vec<u8>>;

/// Decodes `command` and decides it against `state`; on `Ok`, the events and reply encoded.
/// Every failure (a command that does not decode, a rejection, a value that does not encode) is
/// a message for the caller.
pub(crate) fn decide<T: Entity>(
    state: &T::State,
    ctx: &Context,
    command: &[u8],
) -> Result<EncodedDecision, String> {
    let command: T::Command = decode("command", command)?;
    let decision = T::handle(state, ctx, command).map_err(|e| e.to_string())?;
    let events = decision
        .events
        .iter()
        .map(encode)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Decision::emit(events, encode(&decision.reply)?))
}

/// `handle` over bytes, for native tests and benchmarks: decodes the state and the command,
/// decides, encodes; every failure is a message for the caller.
pub fn handle_bytes<T: Entity>(
    ctx: &Context,
    state: &[u8],
    command: &[u8],
) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let state: T::State = decode("state", state)?;
    let decision = decide::<T>(&state, ctx, command)?;
    Ok((decision.events, decision.reply))
}

/// `apply` over bytes. An event or state that does not decode is a bug in the plugin or a
/// corrupted journal, not a user error: it traps, and the host reports the message.
pub fn apply_bytes<T: Entity>(ctx: &Context, state: &[u8], event: &[u8]) -> Vec<u8> {
    let fold = || -> Result<Vec<u8>, String> {
        let state: T::State = decode("state", state)?;
        let event: T::Event = decode("event", event)?;
        encode(&T::apply(state, ctx, &event))
    };
    fold().unwrap_or_else(|e| panic!("apply-event: {e}"))
}

/// Exports an [`Entity`] implementation as the plugin's `resident-entity` interface: each active
/// entity's state stays decoded in the guest, in a [`crate::resident::Resident`], between calls.
///
/// Needs the `entity` feature of `weft-guest`.
#[macro_export]
macro_rules! export_entity {
    ($entity:ty) => {
        // Only wasm builds export anything: natively the plugin is a plain library, tested
        // with `cargo test`.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct WeftEntityExport;
            impl $crate::__private::entity_world::exports::weft::plugin::resident_entity::Guest
                for WeftEntityExport
            {
                type Entity = $crate::__private::entity_world::ResidentEntity<$entity>;
            }
            $crate::__private::entity_world::export_entity_world!(
                WeftEntityExport with_types_in $crate::__private::entity_world
            );
        };
    };
}
