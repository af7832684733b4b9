//! The [`Resolver`] trait a conflict-resolver plugin implements, and its [`Resolution`].
//!
//! A resolver is consulted when an event of a replicated entity is concurrent with events already
//! applied since their common causal past. It reads payloads as MessagePack maps, so one resolver
//! serves entities written in any language, as long as the fields it reads are there.

use serde::{Serialize, de::DeserializeOwned};

use crate::codec::{decode, encode};
use crate::context::{Context, Envelope, EventMeta};

/// What happens to the incoming event.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution<E> {
    /// Apply it as it is.
    Keep,
    /// Skip it.
    Drop,
    /// Apply these events instead.
    Replace(Vec<E>),
}

/// Decides between concurrent events. Must be deterministic: every replica calls it at the same
/// point of the same total order and must reach the same answer.
pub trait Resolver {
    type State: DeserializeOwned;
    type Event: Serialize + DeserializeOwned;

    fn resolve(
        state: &Self::State,
        ctx: &Context,
        incoming: &Envelope<Self::Event>,
        concurrent: &[Envelope<Self::Event>],
    ) -> Resolution<Self::Event>;
}

/// The signature of [`resolve_bytes`] for one resolver type.
pub type ResolveBytes =
    fn(&Context, &[u8], (EventMeta, Vec<u8>), Vec<(EventMeta, Vec<u8>)>) -> Resolution<Vec<u8>>;

/// `resolve` over bytes. Undecodable input is a bug upstream: it traps with the message.
pub fn resolve_bytes<T: Resolver>(
    ctx: &Context,
    state: &[u8],
    incoming: (EventMeta, Vec<u8>),
    concurrent: Vec<(EventMeta, Vec<u8>)>,
) -> Resolution<Vec<u8>> {
    let run = || -> Result<Resolution<Vec<u8>>, String> {
        let open = |(meta, payload): (EventMeta, Vec<u8>)| -> Result<Envelope<T::Event>, String> {
            Ok(Envelope {
                meta,
                event: decode("event", &payload)?,
            })
        };
        let state: T::State = decode("state", state)?;
        let incoming = open(incoming)?;
        let concurrent = concurrent
            .into_iter()
            .map(open)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match T::resolve(&state, ctx, &incoming, &concurrent) {
            Resolution::Keep => Resolution::Keep,
            Resolution::Drop => Resolution::Drop,
            Resolution::Replace(events) => {
                Resolution::Replace(events.iter().map(encode).collect::<Result<_, _>>()?)
            }
        })
    };
    run().unwrap_or_else(|e| panic!("resolve: {e}"))
}

/// Exports a [`Resolver`] implementation as the plugin's `resolver` interface.
///
/// Needs the `resolver` feature of `weft-guest`.
#[macro_export]
macro_rules! export_resolver {
    ($resolver:ty) => {
        // Only wasm builds export anything: natively the plugin is a plain library, tested
        // with `cargo test`.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct WeftResolverExport;
            impl $crate::__private::resolver_world::exports::weft::plugin::resolver::Guest
                for WeftResolverExport
            {
                fn resolve(
                    ctx: $crate::__private::resolver_world::weft::plugin::types::Context,
                    state: Vec<u8>,
                    incoming: $crate::__private::resolver_world::weft::plugin::types::Envelope,
                    concurrent: Vec<
                        $crate::__private::resolver_world::weft::plugin::types::Envelope,
                    >,
                ) -> $crate::__private::resolver_world::exports::weft::plugin::resolver::Resolution
                {
                    $crate::__private::resolver_world::resolve(
                        ctx,
                        state,
                        incoming,
                        concurrent,
                        $crate::resolver::resolve_bytes::<$resolver>,
                    )
                }
            }
            $crate::__private::resolver_world::export_resolver_world!(
                WeftResolverExport with_types_in $crate::__private::resolver_world
            );
        };
    };
}
