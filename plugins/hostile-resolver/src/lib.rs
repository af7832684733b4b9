//! A resolver that misbehaves when the incoming event asks it to, so tests can check that a
//! failing resolver fails the fold loudly and leaves the replica's state untouched.
//!
//! An incoming event with `"hostile": "spin"` loops forever, `"hostile": "trap"` panics; any other
//! event is kept.

use serde::{Deserialize, Serialize};
use weft_guest::{Context, Envelope, Resolution, Resolver};

#[derive(Debug, Deserialize, Serialize)]
pub struct Event {
    #[serde(default)]
    pub hostile: Option<String>,
}

pub struct HostileResolver;

impl Resolver for HostileResolver {
    type State = serde::de::IgnoredAny;
    type Event = Event;

    fn resolve(
        _: &Self::State,
        _: &Context,
        incoming: &Envelope<Event>,
        _: &[Envelope<Event>],
    ) -> Resolution<Event> {
        match incoming.event.hostile.as_deref() {
            Some("spin") => loop {
                std::hint::black_box(());
            },
            Some("trap") => panic!("deliberate trap in a resolver"),
            _ => Resolution::Keep,
        }
    }
}

weft_guest::export_resolver!(HostileResolver);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_guest::EventMeta;

    #[test]
    fn keeps_events_that_do_not_ask_for_trouble() {
        let ctx = Context::for_test("auction", "1");
        let incoming = Envelope {
            meta: EventMeta::default(),
            event: Event { hostile: None },
        };
        let resolution = HostileResolver::resolve(&serde::de::IgnoredAny, &ctx, &incoming, &[]);
        assert!(matches!(resolution, Resolution::Keep));
    }
}
