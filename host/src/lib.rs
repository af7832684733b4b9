//! weft: a WebAssembly-hosted actor platform.
//!
//! The host runs everything that must be correct and fast; users' business logic runs as Wasm
//! components loaded through the WIT contract in `wit/`.
//!
//! # Layout
//! - [`plugin`]: loading, sandboxing, calling and hot-swapping plugins.

pub mod plugin;
