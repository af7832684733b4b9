//! {{name}}: a weft conflict resolver in Rust.
//!
//! It is consulted when an event of a replicated entity is concurrent with events already
//! applied. This one lets a deletion win: an incoming event concurrent with a
//! `{"type":"deleted"}` event is dropped; everything else is kept. It must be deterministic:
//! every replica asks it at the same point and must get the same answer.

use serde::{Deserialize, Serialize};
use weft_guest::{Context, Envelope, Resolution, Resolver};

/// The one field this resolver reads; events carry any others they like.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Event {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

pub struct {{type_name}};

impl Resolver for {{type_name}} {
    type State = serde::de::IgnoredAny;
    type Event = Event;

    fn resolve(
        _state: &Self::State,
        _ctx: &Context,
        _incoming: &Envelope<Event>,
        concurrent: &[Envelope<Event>],
    ) -> Resolution<Event> {
        let deleted = concurrent
            .iter()
            .any(|other| other.event.kind.as_deref() == Some("deleted"));
        if deleted {
            Resolution::Drop
        } else {
            Resolution::Keep
        }
    }
}

weft_guest::export_resolver!({{type_name}});

#[cfg(test)]
mod tests {
    use super::*;
    use weft_guest::EventMeta;

    fn event(kind: &str) -> Envelope<Event> {
        Envelope {
            meta: EventMeta::default(),
            event: Event {
                kind: Some(kind.into()),
            },
        }
    }

    fn resolve(concurrent: &[Envelope<Event>]) -> Resolution<Event> {
        let ctx = Context::for_test("{{name}}", "e1");
        {{type_name}}::resolve(&Default::default(), &ctx, &event("renamed"), concurrent)
    }

    #[test]
    fn a_concurrent_deletion_wins() {
        assert!(matches!(resolve(&[event("deleted")]), Resolution::Drop));
    }

    #[test]
    fn everything_else_is_kept() {
        assert!(matches!(resolve(&[]), Resolution::Keep));
        assert!(matches!(resolve(&[event("renamed")]), Resolution::Keep));
    }
}
