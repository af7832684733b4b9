//! The counter entity: the smallest useful weft plugin.
//!
//! Commands (JSON over the HTTP API, MessagePack inside): `{"op":"increment","by":3}`,
//! `{"op":"decrement","by":1}`, `{"op":"reset"}`, `{"op":"get"}`. The value never goes below
//! the floor of 0: a decrement that would is rejected and persists nothing.
//!
//! As a single-writer entity it says, when this host loses the write lease, which value it had
//! and which tenure ended (`LeaseLostNotice`, published with the host's `lease-lost` event).

use serde::{Deserialize, Serialize};
use weft_guest::{Context, Decision, Entity, LeaseLost, Notice};

/// The lowest value a counter may hold.
pub const FLOOR: i64 = 0;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub value: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Increment { by: i64 },
    Decrement { by: i64 },
    Reset,
    Get,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Incremented { by: i64 },
    Decremented { by: i64 },
    Reset,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub value: i64,
}

/// What the counter publishes when its host loses the write lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseLostNotice {
    pub value: i64,
    pub fencing_token: u64,
    pub reason: String,
}

pub struct Counter;

impl Entity for Counter {
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
        let value = state.value;
        match command {
            Command::Increment { by } if by <= 0 => {
                Err(format!("increment by {by}: must be positive"))
            }
            Command::Decrement { by } if by <= 0 => {
                Err(format!("decrement by {by}: must be positive"))
            }
            Command::Increment { by } => {
                let value = value
                    .checked_add(by)
                    .ok_or_else(|| format!("increment by {by}: the value would overflow"))?;
                Ok(Decision::emit(
                    vec![Event::Incremented { by }],
                    Reply { value },
                ))
            }
            Command::Decrement { by } if value - by < FLOOR => Err(format!(
                "decrement by {by}: the value {value} would go below the floor {FLOOR}"
            )),
            Command::Decrement { by } => Ok(Decision::emit(
                vec![Event::Decremented { by }],
                Reply { value: value - by },
            )),
            Command::Reset => Ok(Decision::emit(vec![Event::Reset], Reply { value: FLOOR })),
            Command::Get => Ok(Decision::reply(Reply { value })),
        }
    }

    fn apply(state: State, _ctx: &Context, event: &Event) -> State {
        match event {
            Event::Incremented { by } => State {
                value: state.value + by,
            },
            Event::Decremented { by } => State {
                value: state.value - by,
            },
            Event::Reset => State { value: FLOOR },
        }
    }

    fn on_lease_lost(state: &State, _ctx: &Context, lost: &LeaseLost) -> Option<Notice> {
        Some(Notice::of(&LeaseLostNotice {
            value: state.value,
            fencing_token: lost.fencing_token,
            reason: lost.reason.clone(),
        }))
    }
}

weft_guest::export_entity!(Counter);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: State, command: Command) -> Result<(State, Reply), String> {
        let ctx = Context::for_test("counter", "c1");
        let decision = Counter::handle(&state, &ctx, command)?;
        let state = decision
            .events
            .iter()
            .fold(state, |state, event| Counter::apply(state, &ctx, event));
        Ok((state, decision.reply))
    }

    #[test]
    fn increments_and_decrements() {
        let (state, reply) = run(State::default(), Command::Increment { by: 5 }).unwrap();
        assert_eq!((state.value, reply.value), (5, 5));
        let (state, reply) = run(state, Command::Decrement { by: 2 }).unwrap();
        assert_eq!((state.value, reply.value), (3, 3));
    }

    #[test]
    fn rejects_a_decrement_below_the_floor() {
        let error = run(State { value: 3 }, Command::Decrement { by: 4 }).unwrap_err();
        assert_eq!(
            error,
            "decrement by 4: the value 3 would go below the floor 0"
        );
    }

    #[test]
    fn rejects_non_positive_amounts_and_overflow() {
        assert!(run(State::default(), Command::Increment { by: 0 }).is_err());
        assert!(run(State::default(), Command::Decrement { by: -1 }).is_err());
        let error = run(State { value: i64::MAX }, Command::Increment { by: 1 }).unwrap_err();
        assert!(error.contains("overflow"), "{error}");
    }

    #[test]
    fn says_what_it_had_when_the_lease_is_lost() {
        let ctx = Context::for_test("counter", "c1");
        let lost = LeaseLost {
            fencing_token: 7,
            reason: "expired".into(),
        };
        let notice = Counter::on_lease_lost(&State { value: 3 }, &ctx, &lost).unwrap();
        let expected = LeaseLostNotice {
            value: 3,
            fencing_token: 7,
            reason: "expired".into(),
        };
        assert_eq!(notice, Notice::of(&expected));
    }

    #[test]
    fn reset_and_get() {
        let (state, reply) = run(State { value: 9 }, Command::Reset).unwrap();
        assert_eq!((state.value, reply.value), (0, 0));
        let ctx = Context::for_test("counter", "c1");
        let decision = Counter::handle(&State { value: 4 }, &ctx, Command::Get).unwrap();
        assert!(decision.events.is_empty());
        assert_eq!(decision.reply.value, 4);
    }

    #[test]
    fn commands_decode_from_tagged_maps() {
        let bytes = weft_guest::codec::encode(&Command::Increment { by: 2 }).unwrap();
        let (events, reply) = weft_guest::entity::handle_bytes::<Counter>(
            &Context::for_test("counter", "c1"),
            &weft_guest::codec::encode(&State::default()).unwrap(),
            &bytes,
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        let reply: Reply = weft_guest::codec::decode("reply", &reply).unwrap();
        assert_eq!(reply.value, 2);
    }
}
