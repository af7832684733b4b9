//! A resolver for auctions: when bids are concurrent, the highest wins.
//!
//! It reads only the `amount` field of each event, so it serves any entity whose bid events carry
//! one, in any language. An incoming bid is kept when it beats every concurrent bid (ties go to
//! the lower origin replica id, so every replica decides the same); otherwise it is dropped.
//! Events without an amount are not bids and are always kept.

use serde::{Deserialize, Serialize};
use weft_guest::{Context, Envelope, Resolution, Resolver};

#[derive(Debug, Deserialize, Serialize)]
pub struct Event {
    #[serde(default)]
    pub amount: Option<u64>,
}

pub struct HighestBid;

impl Resolver for HighestBid {
    type State = serde::de::IgnoredAny;
    type Event = Event;

    fn resolve(
        _: &Self::State,
        _: &Context,
        incoming: &Envelope<Event>,
        concurrent: &[Envelope<Event>],
    ) -> Resolution<Event> {
        let Some(amount) = incoming.event.amount else {
            return Resolution::Keep;
        };
        let rank = |bid: u64, envelope: &Envelope<Event>| {
            (bid, std::cmp::Reverse(envelope.meta.origin_replica.clone()))
        };
        let beaten = concurrent.iter().any(|other| {
            other
                .event
                .amount
                .is_some_and(|bid| rank(bid, other) > rank(amount, incoming))
        });
        if beaten {
            Resolution::Drop
        } else {
            Resolution::Keep
        }
    }
}

weft_guest::export_resolver!(HighestBid);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_guest::EventMeta;

    fn bid(amount: u64, replica: &str) -> Envelope<Event> {
        Envelope {
            meta: EventMeta {
                origin_replica: replica.into(),
                ..EventMeta::default()
            },
            event: Event {
                amount: Some(amount),
            },
        }
    }

    fn resolve(incoming: Envelope<Event>, concurrent: &[Envelope<Event>]) -> Resolution<Event> {
        HighestBid::resolve(
            &Default::default(),
            &Context::for_test("auction", "a1"),
            &incoming,
            concurrent,
        )
    }

    #[test]
    fn the_highest_bid_wins() {
        assert!(matches!(
            resolve(bid(10, "b"), &[bid(7, "a")]),
            Resolution::Keep
        ));
        assert!(matches!(
            resolve(bid(7, "a"), &[bid(10, "b")]),
            Resolution::Drop
        ));
    }

    #[test]
    fn ties_go_to_the_lower_replica() {
        assert!(matches!(
            resolve(bid(5, "a"), &[bid(5, "b")]),
            Resolution::Keep
        ));
        assert!(matches!(
            resolve(bid(5, "b"), &[bid(5, "a")]),
            Resolution::Drop
        ));
    }

    #[test]
    fn non_bids_are_kept() {
        let note = Envelope {
            meta: EventMeta::default(),
            event: Event { amount: None },
        };
        assert!(matches!(resolve(note, &[bid(5, "a")]), Resolution::Keep));
    }
}
