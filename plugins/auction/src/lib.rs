//! The auction entity: bids, each of which must beat the highest bid this replica has seen.
//!
//! Commands: `{"op":"bid","bidder":"ann","amount":120}`, `{"op":"get"}`. A bid event carries an
//! `amount`, so the highest-bid resolver serves it: replicated across nodes, two bids placed
//! concurrently on different replicas are both accepted locally, and the resolver keeps only the
//! higher one (ties go to the lower replica name) on every replica. Applying a bid trusts that it
//! won — which is what the resolver makes true; under plain last-writer-wins the later of two
//! concurrent bids would win even if it were lower.

use serde::{Deserialize, Serialize};
use weft_guest::{Context, Decision, Entity};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    pub bidder: String,
    pub amount: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub highest: Option<Bid>,
    /// Bids that stood when they were folded.
    pub bids: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Bid { bidder: String, amount: u64 },
    Get,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    BidPlaced { bidder: String, amount: u64 },
}

pub struct Auction;

impl Entity for Auction {
    type State = State;
    type Command = Command;
    type Event = Event;
    type Reply = State;
    type Error = String;

    fn handle(
        state: &State,
        ctx: &Context,
        command: Command,
    ) -> Result<Decision<Event, State>, String> {
        match command {
            Command::Bid { bidder, .. } if bidder.is_empty() => {
                Err("a bid needs a bidder".to_owned())
            }
            Command::Bid { amount: 0, .. } => Err("a bid must be above 0".to_owned()),
            Command::Bid { bidder, amount } => match &state.highest {
                Some(high) if high.amount >= amount => Err(format!(
                    "a bid of {amount} does not beat {}'s {}",
                    high.bidder, high.amount
                )),
                _ => {
                    let event = Event::BidPlaced { bidder, amount };
                    let after = Auction::apply(state.clone(), ctx, &event);
                    Ok(Decision::emit(vec![event], after))
                }
            },
            Command::Get => Ok(Decision::reply(state.clone())),
        }
    }

    fn apply(state: State, _ctx: &Context, event: &Event) -> State {
        match event {
            Event::BidPlaced { bidder, amount } => State {
                highest: Some(Bid {
                    bidder: bidder.clone(),
                    amount: *amount,
                }),
                bids: state.bids + 1,
            },
        }
    }
}

weft_guest::export_entity!(Auction);

#[cfg(test)]
mod tests {
    use super::*;

    fn bid(state: &State, bidder: &str, amount: u64) -> Result<State, String> {
        let ctx = Context::for_test("auction", "lot-1");
        let command = Command::Bid {
            bidder: bidder.into(),
            amount,
        };
        let decision = Auction::handle(state, &ctx, command)?;
        Ok(decision.events.iter().fold(state.clone(), |state, event| {
            Auction::apply(state, &ctx, event)
        }))
    }

    #[test]
    fn a_bid_must_beat_the_highest() {
        let state = bid(&State::default(), "ann", 100).unwrap();
        assert_eq!(state.highest.as_ref().unwrap().amount, 100);
        assert_eq!(
            bid(&state, "bob", 100).unwrap_err(),
            "a bid of 100 does not beat ann's 100"
        );
        let state = bid(&state, "bob", 120).unwrap();
        assert_eq!(
            (state.highest.unwrap().bidder.as_str(), state.bids),
            ("bob", 2)
        );
    }

    #[test]
    fn refuses_empty_bidders_and_zero_bids() {
        assert!(bid(&State::default(), "", 5).is_err());
        assert!(bid(&State::default(), "ann", 0).is_err());
    }

    #[test]
    fn the_bid_event_carries_an_amount_for_the_resolver() {
        let event = Event::BidPlaced {
            bidder: "ann".into(),
            amount: 7,
        };
        let bytes = weft_guest::codec::encode(&event).unwrap();
        #[derive(Deserialize)]
        struct Amount {
            amount: Option<u64>,
        }
        let read: Amount = weft_guest::codec::decode("event", &bytes).unwrap();
        assert_eq!(read.amount, Some(7));
    }
}
