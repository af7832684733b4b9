//! A plugin whose reply names the build it came from, for hot-swap tests.
//!
//! Built twice: `versioned.wasm` answers `{"build":1,"echo":n}`, `versioned-v2.wasm` (feature
//! `v2`) answers `{"build":2,"echo":n}`. Every command `{"n":…}` also persists one event, so
//! `apply-event` is exercised too.

use serde::{Deserialize, Serialize};
use weft_guest::{Context, Decision, Entity};

/// Which build this is.
pub const BUILD: u32 = if cfg!(feature = "v2") { 2 } else { 1 };

#[derive(Debug, Deserialize)]
pub struct Command {
    pub n: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Event {
    pub n: u64,
    pub build: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The events applied so far.
    pub applied: u64,
    /// The build that applied the last event.
    pub last_build: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub build: u32,
    pub echo: u64,
}

pub struct Versioned;

impl Entity for Versioned {
    type State = State;
    type Command = Command;
    type Event = Event;
    type Reply = Reply;
    type Error = String;

    fn handle(_: &State, _: &Context, command: Command) -> Result<Decision<Event, Reply>, String> {
        Ok(Decision::emit(
            vec![Event {
                n: command.n,
                build: BUILD,
            }],
            Reply {
                build: BUILD,
                echo: command.n,
            },
        ))
    }

    fn apply(state: State, _: &Context, _: &Event) -> State {
        State {
            applied: state.applied + 1,
            last_build: BUILD,
        }
    }
}

weft_guest::export_entity!(Versioned);
