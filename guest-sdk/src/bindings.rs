//! The generated WIT glue: one module per world, each behind the cargo feature of that world,
//! plus the conversions between generated types and the SDK's plain ones.

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
        // The entity world plus the optional lease hooks, whose default does nothing.
        world: "weft:plugin/entity-plugin-with-hooks",
        runtime_path: "weft_guest::__private::wit_bindgen::rt",
        pub_export_macro: true,
        export_macro_name: "export_entity_world",
        default_bindings_module: "weft_guest::__private::entity_world",
    });
    conversions!();

    /// The context of an `apply-event` call, carrying the event's metadata, and the payload.
    pub fn event_context(ctx: wit::Context, event: wit::Envelope) -> (Context, Vec<u8>) {
        let (meta, payload) = open(event);
        let mut ctx = Context::from(ctx);
        ctx.event = Some(meta);
        (ctx, payload)
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
