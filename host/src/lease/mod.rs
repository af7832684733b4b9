//! Named leases with fencing tokens: at most one owner holds a name at a time, until its lease's
//! time to live runs out on the backend's clock, and every grant carries a fencing token that is
//! strictly higher than every earlier grant of the name.
//!
//! The token is what makes a lease safe to build on: a holder that stalls (a GC pause, a frozen VM)
//! can wake up believing it still holds the lease after another owner took over, and nothing it does
//! locally can prevent that. So the resource the lease guards checks the token: the journal refuses
//! appends carrying a token below the one a newer holder recorded (`Journal::record_fence`), an
//! external worker passes the token to whatever it writes. The lease itself only promises exclusion
//! while the clocks behave; the token makes a stale holder harmless when they do not.
//!
//! # Layout
//!
//! - `mod.rs` (this file): [`Grant`], [`Holder`], [`LeaseError`], the [`Lease`] trait.
//! - [`rules`]: the argument checks every backend applies, so all refuse the same requests.
//! - [`memory`]: one process, expiry on an injectable clock (tests step time).
//! - [`postgres`]: a lease table; expiry judged by the server's `now()`; portable SQL.
//! - [`redis`]: one key per lease with a server-side expiry, changed only by Lua scripts.
//! - [`manager`]: keeping a lease: the sans-IO [`LeaseState`] and the async [`LeaseManager`].
//! - [`conformance`]: the behaviour every backend must show, run against each with real servers.
//!
//! The trait is dyn-compatible through `#[async_trait]`: a node holds an `Arc<dyn Lease>`.

pub mod conformance;
pub mod manager;
pub mod memory;
pub mod postgres;
pub mod redis;
pub mod rules;

use std::time::Duration;

use async_trait::async_trait;

pub use manager::{
    LeaseAction, LeaseManager, LeaseState, LeaseStatus, LeaseTiming, LeaseWatch, RenewFailure,
};
pub use memory::{InMemoryLease, LeaseClock, ManualClock, SystemClock};
pub use postgres::PostgresLease;
pub use redis::RedisLease;

/// The time to live of a single-writer entity type's leases unless its config says otherwise, and
/// the one the PostgreSQL backends bound their sessions for unless given bounds.
pub const ENTITY_LEASE_TTL_DEFAULT: Duration = Duration::from_secs(10);

/// A lease granted or extended: the caller holds it for `ttl` from when the backend handled the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Strictly higher than every token granted for the name before; stays the same across renewals.
    pub fencing_token: u64,
    /// The time to live the backend granted, counted on its clock. A holder counts it from the instant
    /// it *sent* the call, which is no later than the backend's start of it.
    pub ttl: Duration,
}

/// Who holds a lease right now, as the backend sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    pub fencing_token: u64,
    /// Time left before the lease expires unless renewed, on the backend's clock.
    pub expires_in: Duration,
}

/// Why a lease call failed. Every variant says what is known about the lease afterwards.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum LeaseError {
    /// The request was refused before anything was sent (an empty name or owner, a time to live out of
    /// range). The lease is unchanged; the caller has a bug or passed on bad input.
    #[error("invalid lease request: {0}")]
    Invalid(String),
    /// The backend could not be reached or failed during the call. The call may or may not have taken
    /// effect: a holder must keep counting down its local deadline as if it had not renewed.
    #[error("lease backend unavailable: {0}")]
    Unavailable(String),
}

/// A lease backend. Shared as `Arc<dyn Lease>`; every method may be called concurrently.
///
/// An owner is identified by its `owner` string alone: an `acquire` by the owner that holds the lease
/// grants it again with a new, higher token (the old token is stale from then on), so a restarted
/// process that reuses its owner name does not wait for its own old lease to expire.
#[async_trait]
pub trait Lease: Send + Sync {
    /// `Some(grant)` if `owner` now holds `name` (a new, strictly higher token); `None` if another
    /// owner's lease is live.
    async fn acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Grant>, LeaseError>;

    /// Extends the lease to `ttl` from now if `owner` still holds it with `fencing_token`; `None` if it
    /// was lost (expired, taken over or released).
    async fn renew(
        &self,
        name: &str,
        owner: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> Result<Option<Grant>, LeaseError>;

    /// Releases the lease if `owner` holds it with `fencing_token` (`true`); otherwise changes nothing
    /// (`false`).
    async fn release(
        &self,
        name: &str,
        owner: &str,
        fencing_token: u64,
    ) -> Result<bool, LeaseError>;

    /// The live holder of `name`, if any.
    async fn holder(&self, name: &str) -> Result<Option<Holder>, LeaseError>;

    /// The live leases whose names come after `after` in byte order, ascending, at most `max`.
    async fn held(&self, after: &str, max: usize) -> Result<Vec<HeldLease>, LeaseError>;
}

/// A live lease as [`Lease::held`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLease {
    pub name: String,
    pub holder: Holder,
}
