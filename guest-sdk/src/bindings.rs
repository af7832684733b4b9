//! The generated WIT glue: one module per world, each behind the cargo feature of that world,
//! plus the conversions between generated types and the SDK's plain ones, and the `entity`
//! resource that holds a [`crate::resident::Resident`].

/// Conversions shared by both worlds' generated `types` (the two modules hold distinct types).
macro_rules! conversions {
    () => {
        use self::weft::plugin::types as wit;
        use crate::context::{Context, EventMeta, Role};

        impl From<wit::EventMeta> for EventMeta {
            fn from(meta: wit::EventMeta) -> Self {
                EventMeta {
                    persistence_id: meta.persistence_id,
                    seq_nr: meta.seq_nr,
                    writer: meta.writer,
                    fencing_token: meta.fencing_token,
                    timestamp: meta.timestamp,
                    origin_replica: meta.origin_replica,
                    origin_seq_nr: meta.origin_seq_nr,
                    version: meta
                        .version
                        .into_iter()
                        .map(|entry| (entry.replica, entry.counter))
                        .collect(),
                    concurrent: meta.concurrent,
                }
            }
        }

        impl From<wit::Context> for Context {
            fn from(ctx: wit::Context) -> Self {
                Context {
                    entity_type: ctx.entity_type,
                    entity_id: ctx.entity_id,
                    replica: ctx.replica,
                    all_replicas: ctx.all_replicas,
                    now: ctx.now,
                    recovery_running: ctx.recovery_running,
                    role: match ctx.role {
                        wit::Role::Writer => Role::Writer,
                        wit::Role::Observer => Role::Observer,
                    },
                    event: None,
                }
            }
        }

        /// Splits an envelope into its metadata and payload.
        pub fn open(envelope: wit::Envelope) -> (EventMeta, Vec<u8>) {
            (envelope.meta.into(), envelope.payload)
        }

        #[cfg(target_arch = "wasm32")]
        pub fn log(level: crate::Level, message: &str) {
            use self::weft::plugin::host::{Level, log};
            let level = match level {
                crate::Level::Trace => Level::Trace,
                crate::Level::Debug => Level::Debug,
                crate::Level::Info => Level::Info,
                crate::Level::Warn => Level::Warn,
                crate::Level::Error => Level::Error,
            };
            log(level, message);
        }
    };
}

#[cfg(feature = "entity")]
pub mod entity_world {
    wit_bindgen::generate!({
        path: "../wit",
        // Each active entity's state stays in the guest, in a resource, between calls.
        world: "weft:plugin/resident-entity-plugin",
        runtime_path: "weft_guest::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_entity_world",
        default_bindings_module: "weft_guest::__private::entity_world",
    });
    conversions!();

    use self::exports::weft::plugin::resident_entity::{Decision, GuestEntity, LeaseLoss};
    use crate::resident::Resident;
    use std::cell::RefCell;

    /// The `entity` resource of an [`crate::Entity`] type: its resident state. The generated
    /// methods take `&self`; a guest runs one call at a time, so the cell is never contended.
    pub struct ResidentEntity<T: crate::Entity>(RefCell<Resident<T>>);

    /// Bytes the guest cannot make sense of are a bug in the plugin or a corrupted journal, not a
    /// user error: the call traps, the host reports the message and recovers the entity.
    fn or_trap<V>(call: &str, result: Result<V, String>) -> V {
        result.unwrap_or_else(|e| panic!("{call}: {e}"))
    }

    impl<T: crate::Entity + 'static> GuestEntity for ResidentEntity<T> {
        fn new(ctx: wit::Context, snapshot: Option<Vec<u8>>) -> Self {
            let resident = Resident::restore(&ctx.into(), snapshot.as_deref());
            ResidentEntity(RefCell::new(or_trap("restore", resident)))
        }

        fn handle(
            &self,
            ctx: wit::Context,
            first_event: wit::EventMeta,
            commands: Vec<Vec<u8>>,
        ) -> Vec<Result<Decision, String>> {
            let results = self
                .0
                .borrow_mut()
                .handle(&ctx.into(), &first_event.into(), &commands);
            results
                .into_iter()
                .map(|result| {
                    result.map(|decision| Decision {
                        events: decision.events,
                        reply: decision.reply,
                    })
                })
                .collect()
        }

        fn apply(&self, ctx: wit::Context, events: Vec<wit::Envelope>) {
            let events = events.into_iter().map(open);
            or_trap("apply", self.0.borrow_mut().apply(&ctx.into(), events));
        }

        fn snapshot(&self) -> Vec<u8> {
            or_trap("snapshot", self.0.borrow().snapshot())
        }

        fn on_lease_lost(&self, ctx: wit::Context, loss: LeaseLoss) -> Option<Vec<u8>> {
            let lost = crate::LeaseLost {
                fencing_token: loss.fencing_token,
                reason: loss.reason,
            };
            self.0.borrow().on_lease_lost(&ctx.into(), &lost)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::codec::{decode, encode};

        /// Keeps `(amount, seq_nr, version["a"])` of every event it folds.
        struct Tally;

        impl crate::Entity for Tally {
            type State = Vec<(u64, u64, u64)>;
            type Command = u64;
            type Event = u64;
            type Reply = usize;
            type Error = String;

            fn handle(
                state: &Self::State,
                _: &crate::Context,
                amount: u64,
            ) -> Result<crate::Decision<u64, usize>, String> {
                Ok(crate::Decision::emit(vec![amount], state.len() + 1))
            }

            fn apply(mut state: Self::State, ctx: &crate::Context, amount: &u64) -> Self::State {
                let meta = ctx.event.as_ref().expect("apply sees the event's metadata");
                state.push((*amount, meta.seq_nr, meta.version["a"]));
                state
            }
        }

        fn ctx() -> wit::Context {
            wit::Context {
                entity_type: "tally".into(),
                entity_id: "t1".into(),
                replica: "a".into(),
                all_replicas: vec!["a".into(), "b".into()],
                now: 1,
                recovery_running: false,
                role: wit::Role::Writer,
            }
        }

        fn meta(seq_nr: u64) -> wit::EventMeta {
            wit::EventMeta {
                persistence_id: "tally|t1".into(),
                seq_nr,
                writer: "01W".into(),
                fencing_token: 0,
                timestamp: 0,
                origin_replica: "a".into(),
                origin_seq_nr: seq_nr,
                version: vec![
                    wit::VersionEntry {
                        replica: "a".into(),
                        counter: seq_nr,
                    },
                    wit::VersionEntry {
                        replica: "b".into(),
                        counter: 9,
                    },
                ],
                concurrent: false,
            }
        }

        fn folded(entity: &ResidentEntity<Tally>) -> Vec<(u64, u64, u64)> {
            decode("state", &entity.snapshot()).unwrap()
        }

        #[test]
        fn the_resource_runs_batches_and_folds_envelopes_through_the_generated_types() {
            let entity = ResidentEntity::<Tally>::new(ctx(), None);
            let commands = vec![encode(&3u64).unwrap(), vec![0xc1], encode(&4u64).unwrap()];
            let results = entity.handle(ctx(), meta(5), commands);
            assert_eq!(results.len(), 3);
            let first = results[0].as_ref().unwrap();
            assert_eq!(first.events, [encode(&3u64).unwrap()]);
            assert_eq!(decode::<usize>("reply", &first.reply).unwrap(), 1);
            assert!(
                results[1]
                    .as_ref()
                    .unwrap_err()
                    .starts_with("cannot decode command")
            );
            assert_eq!(folded(&entity), [(3, 5, 5), (4, 6, 6)]);

            let event = wit::Envelope {
                meta: meta(7),
                payload: encode(&8u64).unwrap(),
            };
            entity.apply(ctx(), vec![event]);
            assert_eq!(folded(&entity), [(3, 5, 5), (4, 6, 6), (8, 7, 7)]);

            let restored = ResidentEntity::<Tally>::new(ctx(), Some(entity.snapshot()));
            assert_eq!(folded(&restored), folded(&entity));
        }

        #[test]
        #[should_panic(expected = "restore: cannot decode state")]
        fn a_snapshot_that_does_not_decode_traps() {
            ResidentEntity::<Tally>::new(ctx(), Some(vec![0xc1]));
        }

        #[test]
        #[should_panic(expected = "apply: event 7 of tally|t1: cannot decode event")]
        fn an_event_that_does_not_decode_traps() {
            let entity = ResidentEntity::<Tally>::new(ctx(), None);
            let event = wit::Envelope {
                meta: meta(7),
                payload: vec![0xc1],
            };
            entity.apply(ctx(), vec![event]);
        }
    }
}

#[cfg(feature = "resolver")]
pub mod resolver_world {
    wit_bindgen::generate!({
        path: "../wit",
        world: "weft:plugin/resolver-plugin",
        runtime_path: "weft_guest::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_resolver_world",
        default_bindings_module: "weft_guest::__private::resolver_world",
    });
    conversions!();

    use self::exports::weft::plugin::resolver::Resolution as WitResolution;
    use crate::resolver::Resolution;

    /// Adapts the generated signature to [`crate::resolver::resolve_bytes`].
    pub fn resolve(
        ctx: wit::Context,
        state: Vec<u8>,
        incoming: wit::Envelope,
        concurrent: Vec<wit::Envelope>,
        resolve_bytes: crate::resolver::ResolveBytes,
    ) -> WitResolution {
        let concurrent = concurrent.into_iter().map(open).collect();
        match resolve_bytes(&ctx.into(), &state, open(incoming), concurrent) {
            Resolution::Keep => WitResolution::Keep,
            Resolution::Drop => WitResolution::Drop,
            Resolution::Replace(events) => WitResolution::Replace(events),
        }
    }
}

#[cfg(all(target_arch = "wasm32", feature = "entity"))]
pub use entity_world::log;
#[cfg(all(target_arch = "wasm32", feature = "resolver", not(feature = "entity")))]
pub use resolver_world::log;
