//! {{name}}: a weft entity in Rust.
//!
//! Commands (JSON over the HTTP API, MessagePack inside): `{"op":"add","by":3}` adds to the
//! total, `{"op":"get"}` reads it.

use serde::{Deserialize, Serialize};
use weft_guest::{Context, Decision, Entity};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub total: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Add { by: i64 },
    Get,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Added { by: i64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub total: i64,
}

pub struct {{type_name}};

impl Entity for {{type_name}} {
    type State = State;
    type Command = Command;
    type Event = Event;
    type Reply = Reply;
    type Error = String;

    fn handle(
        state: &State,
        _ctx: &Context,
        command: Command,
    ) -> Result<Decision<Event, Reply>, String> {
        match command {
            Command::Add { by } if by <= 0 => Err("add: `by` must be a positive integer".into()),
            Command::Add { by } => {
                let total = state
                    .total
                    .checked_add(by)
                    .ok_or("add: the total would overflow")?;
                Ok(Decision::emit(vec![Event::Added { by }], Reply { total }))
            }
            Command::Get => Ok(Decision::reply(Reply { total: state.total })),
        }
    }

    fn apply(state: State, _ctx: &Context, event: &Event) -> State {
        match event {
            Event::Added { by } => State {
                total: state.total + by,
            },
        }
    }
}

weft_guest::export_entity!({{type_name}});

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: State, command: Command) -> Result<(State, Reply), String> {
        let ctx = Context::for_test("{{name}}", "e1");
        let decision = {{type_name}}::handle(&state, &ctx, command)?;
        let state = decision
            .events
            .iter()
            .fold(state, |state, event| {{type_name}}::apply(state, &ctx, event));
        Ok((state, decision.reply))
    }

    #[test]
    fn add_then_get() {
        let (state, reply) = run(State::default(), Command::Add { by: 3 }).unwrap();
        assert_eq!((state.total, reply.total), (3, 3));
        let (state, reply) = run(state, Command::Get).unwrap();
        assert_eq!((state.total, reply.total), (3, 3));
    }

    #[test]
    fn rejects_bad_commands() {
        assert!(run(State::default(), Command::Add { by: 0 }).is_err());
        assert!(run(State { total: i64::MAX }, Command::Add { by: 1 }).is_err());
    }
}
