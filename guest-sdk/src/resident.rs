//! An entity's state kept in the guest between calls: the logic behind the `resident-entity`
//! resource, in plain Rust so that it runs, and is tested, natively.
//!
//! [`Resident`] owns one active entity's decoded state. A batch of commands runs against it in
//! order, each command's events folded in before the next command runs; events from other
//! replicas and from recovery are folded with [`Resident::apply`]. The state crosses the
//! boundary as bytes only through [`Resident::restore`] and [`Resident::snapshot`].

use crate::codec::{decode, encode};
use crate::context::{Context, EventMeta, LeaseLost};
use crate::entity::{EncodedDecision, Entity, Notice, decide};

/// The decoded state of one active entity.
pub struct Resident<T: Entity> {
    state: T::State,
}

impl<T: Entity> Resident<T> {
    /// The state of an entity with no events yet (`snapshot` is `None`), or the one a
    /// [`Resident::snapshot`] encoded. Bytes that do not decode are an error naming the state.
    pub fn restore(ctx: &Context, snapshot: Option<&[u8]>) -> Result<Self, String> {
        let state = match snapshot {
            None => T::init(ctx),
            Some(bytes) => decode("state", bytes)?,
        };
        Ok(Resident { state })
    }

    /// The current state.
    pub fn state(&self) -> &T::State {
        &self.state
    }

    /// Runs `commands` in order, one result each. An accepted command's events are folded into
    /// the state before the next command runs, each with the metadata [`event_meta`] derives
    /// from `first_event` (and its timestamp as `ctx.now`); a rejected one (including a command that does not decode) changes
    /// nothing and takes no event position.
    ///
    /// What is folded is each event decoded from the bytes returned, the bytes the journal will
    /// hold, so the resident state is the state a replay of the journal rebuilds. An event that
    /// does not decode again rejects its command before anything is folded.
    pub fn handle<C: AsRef<[u8]>>(
        &mut self,
        ctx: &Context,
        first_event: &EventMeta,
        commands: &[C],
    ) -> Vec<Result<EncodedDecision, String>> {
        let mut apply_ctx = ctx.clone();
        let mut index = 0;
        commands
            .iter()
            .map(|command| {
                let decision = decide::<T>(&self.state, ctx, command.as_ref())?;
                let events = decode_events::<T>(&decision.events)?;
                for event in &events {
                    let meta = event_meta(first_event, &ctx.replica, index);
                    apply_ctx.now = meta.timestamp;
                    apply_ctx.event = Some(meta);
                    self.fold(&apply_ctx, event);
                    index += 1;
                }
                Ok(decision)
            })
            .collect()
    }

    /// Folds events, in order, each with its metadata in `ctx.event` and its timestamp as
    /// `ctx.now` (as the byte contract's `apply-event` had them). An event that does not
    /// decode is an error naming it; the events before it stay folded.
    pub fn apply(
        &mut self,
        ctx: &Context,
        events: impl IntoIterator<Item = (EventMeta, Vec<u8>)>,
    ) -> Result<(), String> {
        let mut apply_ctx = ctx.clone();
        for (meta, payload) in events {
            let event: T::Event = decode("event", &payload)
                .map_err(|e| format!("event {} of {}: {e}", meta.seq_nr, meta.persistence_id))?;
            apply_ctx.now = meta.timestamp;
            apply_ctx.event = Some(meta);
            self.fold(&apply_ctx, &event);
        }
        Ok(())
    }

    /// The state as MessagePack, for snapshots, state queries and hot swaps.
    pub fn snapshot(&self) -> Result<Vec<u8>, String> {
        encode(&self.state)
    }

    /// [`Entity::on_lease_lost`] over the resident state, its notice encoded.
    pub fn on_lease_lost(&self, ctx: &Context, lost: &LeaseLost) -> Option<Vec<u8>> {
        T::on_lease_lost(&self.state, ctx, lost).map(Notice::into_bytes)
    }

    /// Folds one event. The state is moved through [`Entity::apply`], not copied: it is taken
    /// out (leaving its cheap default) and the result put back.
    fn fold(&mut self, ctx: &Context, event: &T::Event) {
        let state = std::mem::take(&mut self.state);
        self.state = T::apply(state, ctx, event);
    }
}

fn decode_events<T: Entity>(events: &[Vec<u8>]) -> Result<Vec<T::Event>, String> {
    events
        .iter()
        .map(|event| decode("event", event))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("an event of the decision does not decode again: {e}"))
}

/// The metadata of a batch's `index`-th event (from 0, across all its commands), by the rule of
/// the WIT contract: `first`'s, with `seq_nr` and `origin_seq_nr` advanced by `index`, and the
/// version vector's entry for `replica`, when it has one, advanced by `index`.
pub fn event_meta(first: &EventMeta, replica: &str, index: u64) -> EventMeta {
    let mut meta = first.clone();
    meta.seq_nr += index;
    meta.origin_seq_nr += index;
    if let Some(counter) = meta.version.get_mut(replica) {
        *counter += index;
    }
    meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Decision;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    /// A list entity: order-sensitive, and it records the metadata each event was folded with.
    struct Log;

    #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
    struct State {
        items: Vec<String>,
        /// `(seq_nr, origin_seq_nr, version["a"])` of each event folded.
        metas: Vec<(u64, u64, Option<u64>)>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case")]
    enum Command {
        /// Appends each item, one event per item; rejected when the list already holds one.
        Push {
            items: Vec<String>,
        },
        Get,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Pushed {
        /// An empty item is left out when encoding and missing when decoding again: an event
        /// that does not survive the journal.
        #[serde(skip_serializing_if = "String::is_empty")]
        item: String,
    }

    impl Entity for Log {
        type State = State;
        type Command = Command;
        type Event = Pushed;
        type Reply = Vec<String>;
        type Error = String;

        fn handle(
            state: &State,
            _: &Context,
            command: Command,
        ) -> Result<Decision<Pushed, Vec<String>>, String> {
            match command {
                Command::Push { items } => {
                    if let Some(item) = items.iter().find(|item| state.items.contains(item)) {
                        return Err(format!("{item} is already there"));
                    }
                    let mut after = state.items.clone();
                    after.extend(items.iter().cloned());
                    let events = items.into_iter().map(|item| Pushed { item }).collect();
                    Ok(Decision::emit(events, after))
                }
                Command::Get => Ok(Decision::reply(state.items.clone())),
            }
        }

        fn apply(mut state: State, ctx: &Context, event: &Pushed) -> State {
            let meta = ctx.event.as_ref().expect("apply sees the event's metadata");
            state.items.push(event.item.clone());
            state.metas.push((
                meta.seq_nr,
                meta.origin_seq_nr,
                meta.version.get("a").copied(),
            ));
            state
        }
    }

    fn ctx() -> Context {
        Context {
            replica: "a".into(),
            ..Context::for_test("log", "l1")
        }
    }

    fn first_event(version: &[(&str, u64)]) -> EventMeta {
        EventMeta {
            persistence_id: "log|l1".into(),
            seq_nr: 10,
            origin_replica: "a".into(),
            origin_seq_nr: 7,
            version: version.iter().map(|(r, c)| (r.to_string(), *c)).collect(),
            ..EventMeta::default()
        }
    }

    fn push(items: &[&str]) -> Vec<u8> {
        let items = items.iter().map(|item| item.to_string()).collect();
        encode(&Command::Push { items }).unwrap()
    }

    fn reply(result: &Result<EncodedDecision, String>) -> Vec<String> {
        decode("reply", &result.as_ref().unwrap().reply).unwrap()
    }

    #[test]
    fn each_command_sees_the_state_its_predecessors_left() {
        let mut log = Resident::<Log>::restore(&ctx(), None).unwrap();
        let commands = [
            push(&["x"]),
            push(&["x"]),
            push(&["y", "z"]),
            encode(&Command::Get).unwrap(),
        ];
        let results = log.handle(&ctx(), &first_event(&[]), &commands);
        assert_eq!(results.len(), 4);
        assert_eq!(reply(&results[0]), ["x"]);
        assert_eq!(results[1], Err("x is already there".into()));
        assert_eq!(reply(&results[2]), ["x", "y", "z"]);
        assert_eq!(results[2].as_ref().unwrap().events.len(), 2);
        assert_eq!(reply(&results[3]), ["x", "y", "z"]);
        assert!(results[3].as_ref().unwrap().events.is_empty());
        assert_eq!(log.state().items, ["x", "y", "z"]);
    }

    #[test]
    fn the_i_th_event_of_a_batch_gets_the_first_events_meta_advanced_by_i() {
        let mut log = Resident::<Log>::restore(&ctx(), None).unwrap();
        let first = first_event(&[("a", 4), ("b", 9)]);
        // The rejected command in the middle takes no position.
        let commands = [push(&["p", "q"]), push(&["p"]), push(&["r"])];
        log.handle(&ctx(), &first, &commands);
        assert_eq!(
            log.state().metas,
            [(10, 7, Some(4)), (11, 8, Some(5)), (12, 9, Some(6))]
        );
    }

    #[test]
    fn event_meta_advances_only_the_counted_fields() {
        let first = EventMeta {
            writer: "01W".into(),
            fencing_token: 3,
            timestamp: 99,
            concurrent: true,
            ..first_event(&[("a", 4), ("b", 9)])
        };
        let third = event_meta(&first, "a", 2);
        let expected_version: BTreeMap<String, u64> = [("a".into(), 6), ("b".into(), 9)].into();
        assert_eq!(
            third,
            EventMeta {
                seq_nr: 12,
                origin_seq_nr: 9,
                version: expected_version,
                ..first.clone()
            }
        );
        // A vector without this replica's entry is left as it is.
        let unversioned = event_meta(&first, "c", 2);
        assert_eq!(unversioned.version, first.version);
    }

    #[test]
    fn a_command_that_does_not_decode_is_its_own_error() {
        let mut log = Resident::<Log>::restore(&ctx(), None).unwrap();
        let results = log.handle(&ctx(), &first_event(&[]), &[vec![0xc1], push(&["x"])]);
        let error = results[0].as_ref().unwrap_err();
        assert!(error.starts_with("cannot decode command:"), "{error}");
        assert_eq!(reply(&results[1]), ["x"]);
        assert_eq!(log.state().metas, [(10, 7, None)]);
    }

    #[test]
    fn an_event_that_does_not_decode_again_rejects_its_command_before_any_fold() {
        let mut log = Resident::<Log>::restore(&ctx(), None).unwrap();
        let results = log.handle(&ctx(), &first_event(&[]), &[push(&["y", ""]), push(&["x"])]);
        let error = results[0].as_ref().unwrap_err();
        assert!(error.contains("does not decode again"), "{error}");
        assert_eq!(reply(&results[1]), ["x"]);
        assert_eq!(log.state().items, ["x"]);
        assert_eq!(log.state().metas, [(10, 7, None)]);
    }

    #[test]
    fn apply_folds_in_order_with_each_events_meta() {
        let mut log = Resident::<Log>::restore(&ctx(), None).unwrap();
        let envelope = |seq_nr: u64, item: &str| {
            let meta = EventMeta {
                seq_nr,
                origin_seq_nr: seq_nr,
                ..first_event(&[("a", seq_nr)])
            };
            let payload = encode(&Pushed { item: item.into() }).unwrap();
            (meta, payload)
        };
        log.apply(&ctx(), [envelope(1, "b"), envelope(2, "a")])
            .unwrap();
        assert_eq!(log.state().items, ["b", "a"]);
        assert_eq!(log.state().metas, [(1, 1, Some(1)), (2, 2, Some(2))]);
        let error = log
            .apply(&ctx(), [(first_event(&[]), vec![0xc1])])
            .unwrap_err();
        assert!(
            error.starts_with("event 10 of log|l1: cannot decode event:"),
            "{error}"
        );
    }

    #[test]
    fn a_snapshot_restores_the_same_state() {
        let mut log = Resident::<Log>::restore(&ctx(), None).unwrap();
        log.handle(&ctx(), &first_event(&[]), &[push(&["x", "y"])]);
        let bytes = log.snapshot().unwrap();
        let restored = Resident::<Log>::restore(&ctx(), Some(&bytes)).unwrap();
        assert_eq!(restored.state(), log.state());
        let error = Resident::<Log>::restore(&ctx(), Some(&[0xc1]))
            .err()
            .unwrap();
        assert!(error.starts_with("cannot decode state:"), "{error}");
    }
}
