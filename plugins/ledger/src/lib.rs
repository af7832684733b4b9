//! An account ledger that keeps every entry: an entity whose state grows without bound, for the
//! benchmarks of a command's cost against the state's size and for the tests of recovery.
//!
//! - `{"op":"record","amount":n}` appends one entry and answers the balance and entry count.
//! - `{"op":"fill","count":n}` appends `n` entries of amount 1 in one event (to grow a state
//!   quickly), at most [`FILL_MAX`] per command.
//! - `{"op":"balance"}` answers without changing anything.
//! - `{"op":"fail","message":"…"}` panics in the handler: the guest traps, as a plugin with a bug
//!   would, so tests can check that only this command fails and every entity recovers.

use serde::{Deserialize, Serialize};
use weft_guest::{Context, Decision, Entity};

/// Entries one `fill` command may add.
pub const FILL_MAX: u64 = 1_000_000;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub entries: Vec<i64>,
    pub balance: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Record { amount: i64 },
    Fill { count: u64 },
    Balance,
    Fail { message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Recorded { amount: i64 },
    Filled { count: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub balance: i64,
    pub entries: u64,
}

pub struct Ledger;

impl Entity for Ledger {
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
        let entries = state.entries.len() as u64;
        match command {
            Command::Record { amount } => {
                let balance = state
                    .balance
                    .checked_add(amount)
                    .ok_or_else(|| format!("record {amount}: the balance would overflow"))?;
                Ok(Decision::emit(
                    vec![Event::Recorded { amount }],
                    Reply {
                        balance,
                        entries: entries + 1,
                    },
                ))
            }
            Command::Fill { count } if count == 0 || count > FILL_MAX => {
                Err(format!("fill {count}: must be 1 to {FILL_MAX}"))
            }
            Command::Fill { count } => Ok(Decision::emit(
                vec![Event::Filled { count }],
                Reply {
                    balance: state.balance + count as i64,
                    entries: entries + count,
                },
            )),
            Command::Balance => Ok(Decision::reply(Reply {
                balance: state.balance,
                entries,
            })),
            Command::Fail { message } => panic!("{message}"),
        }
    }

    fn apply(mut state: State, _ctx: &Context, event: &Event) -> State {
        match event {
            Event::Recorded { amount } => {
                state.entries.push(*amount);
                state.balance += amount;
            }
            Event::Filled { count } => {
                state
                    .entries
                    .extend(std::iter::repeat_n(1, *count as usize));
                state.balance += *count as i64;
            }
        }
        state
    }
}

weft_guest::export_entity!(Ledger);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: State, command: Command) -> Result<(State, Reply), String> {
        let ctx = Context::for_test("ledger", "l1");
        let decision = Ledger::handle(&state, &ctx, command)?;
        let state = decision
            .events
            .iter()
            .fold(state, |state, event| Ledger::apply(state, &ctx, event));
        Ok((state, decision.reply))
    }

    #[test]
    fn records_and_fills_keep_every_entry() {
        let (state, reply) = run(State::default(), Command::Record { amount: -5 }).unwrap();
        assert_eq!(
            reply,
            Reply {
                balance: -5,
                entries: 1
            }
        );
        let (state, reply) = run(state, Command::Fill { count: 3 }).unwrap();
        assert_eq!(
            reply,
            Reply {
                balance: -2,
                entries: 4
            }
        );
        assert_eq!(state.entries, vec![-5, 1, 1, 1]);
        let (_, reply) = run(state, Command::Balance).unwrap();
        assert_eq!(
            reply,
            Reply {
                balance: -2,
                entries: 4
            }
        );
    }

    #[test]
    fn refuses_fills_out_of_range_and_overflow() {
        assert!(run(State::default(), Command::Fill { count: 0 }).is_err());
        assert!(
            run(
                State::default(),
                Command::Fill {
                    count: FILL_MAX + 1
                }
            )
            .is_err()
        );
        let full = State {
            entries: vec![i64::MAX],
            balance: i64::MAX,
        };
        assert!(
            run(full, Command::Record { amount: 1 })
                .unwrap_err()
                .contains("overflow")
        );
    }

    #[test]
    #[should_panic(expected = "planted")]
    fn fail_panics() {
        let _ = run(
            State::default(),
            Command::Fail {
                message: "planted".into(),
            },
        );
    }
}
