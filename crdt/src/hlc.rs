//! The hybrid logical clock: `HlcTimestamp` (a packed `u64`), `Hlc`, and the physical clocks it reads
//! (`PhysicalClock`, `ManualClock`, and `SystemClock` with the `std` feature).

use core::fmt;

use serde::{Deserialize, Serialize};

/// A hybrid logical clock timestamp, packed into one `u64`:
///
/// ```text
///  63                                16 15             0
/// +------------------------------------+----------------+
/// |  physical time, ms since Unix epoch |  logical count |
/// |              (48 bits)              |   (16 bits)    |
/// +------------------------------------+----------------+
/// ```
///
/// Comparing the `u64`s compares (physical, logical) lexicographically, so the packed value is what
/// goes into weft's event metadata (`timestamp: u64`) and what ties are broken on. 48 bits of
/// milliseconds last until the year 10889; 16 bits allow 65,536 timestamps per millisecond, and a
/// node that issues more simply carries into the next millisecond (runs slightly ahead).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct HlcTimestamp(u64);

impl HlcTimestamp {
    /// Bits of the logical counter.
    pub const LOGICAL_BITS: u32 = 16;
    /// The largest physical time a timestamp can hold, in ms since the Unix epoch.
    pub const PHYSICAL_MS_MAX: u64 = u64::MAX >> Self::LOGICAL_BITS;

    /// The timestamp `(physical_ms, logical)`; a `physical_ms` beyond 48 bits is clamped to
    /// `PHYSICAL_MS_MAX`.
    pub fn new(physical_ms: u64, logical: u16) -> Self {
        Self(physical_ms.min(Self::PHYSICAL_MS_MAX) << Self::LOGICAL_BITS | u64::from(logical))
    }

    /// The timestamp packed in `packed` (as stored in event metadata).
    pub fn from_u64(packed: u64) -> Self {
        Self(packed)
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    pub fn physical_ms(self) -> u64 {
        self.0 >> Self::LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        // Truncation keeps exactly the low 16 bits, the logical counter.
        self.0 as u16
    }
}

impl From<HlcTimestamp> for u64 {
    fn from(timestamp: HlcTimestamp) -> Self {
        timestamp.0
    }
}

impl fmt::Display for HlcTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

/// A source of physical time in milliseconds since the Unix epoch. It may jump backwards (NTP) or
/// stall: `Hlc` stays monotonic regardless.
pub trait PhysicalClock {
    fn now_ms(&self) -> u64;
}

/// The machine's wall clock (`std::time::SystemTime`; available on `wasm32-wasip2` too). A time
/// before the Unix epoch reads as 0.
#[cfg(feature = "std")]
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

#[cfg(feature = "std")]
impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since_epoch| {
                u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
            })
    }
}

/// A clock that reads whatever it was last set to: for tests, simulations, and guests that are
/// handed the time by the host (set it to the call context's `now` before using the `Hlc`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManualClock {
    now_ms: u64,
}

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        Self { now_ms }
    }

    /// Sets the time; it may go backwards.
    pub fn set_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    pub fn advance_ms(&mut self, elapsed_ms: u64) {
        self.now_ms = self.now_ms.saturating_add(elapsed_ms);
    }
}

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }
}

/// `Hlc::observe` refused a remote timestamp. The clock's state is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HlcError {
    /// The remote timestamp's physical time is further ahead of the local physical clock than the
    /// configured maximum drift: a peer with a broken clock, which would otherwise drag this clock
    /// (and every timestamp it issues) into the future.
    DriftExceeded {
        remote: HlcTimestamp,
        local_physical_ms: u64,
        max_drift_ms: u64,
    },
}

impl fmt::Display for HlcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DriftExceeded {
                remote,
                local_physical_ms,
                max_drift_ms,
            } => write!(
                f,
                "remote HLC timestamp {remote} is {ahead_ms} ms ahead of the local clock \
                 ({local_physical_ms} ms), beyond the maximum drift of {max_drift_ms} ms; \
                 the local clock is unchanged",
                ahead_ms = remote.physical_ms().saturating_sub(*local_physical_ms),
            ),
        }
    }
}

impl core::error::Error for HlcError {}

/// A hybrid logical clock for one node: timestamps close to physical time that never go backwards,
/// are unique per node, and are greater than every timestamp the node has observed (so an event
/// always sorts after the events it has seen).
///
/// Sans-IO: it reads time only through its `PhysicalClock`.
#[derive(Clone, Debug)]
pub struct Hlc<C> {
    clock: C,
    last: HlcTimestamp,
    max_drift_ms: u64,
}

impl<C: PhysicalClock> Hlc<C> {
    /// A clock reading `clock`, refusing remote timestamps more than `max_drift_ms` ahead of it.
    pub fn new(clock: C, max_drift_ms: u64) -> Self {
        Self {
            clock,
            last: HlcTimestamp::default(),
            max_drift_ms,
        }
    }

    /// A new timestamp, strictly greater than every one issued or observed before.
    ///
    /// # Panics
    ///
    /// If the timestamp space is exhausted, which needs the previous timestamp to be `u64::MAX`:
    /// physical readings are capped one millisecond below `PHYSICAL_MS_MAX` and `observe` refuses
    /// remote timestamps beyond the local clock plus the drift, so only 65,536 timestamps issued
    /// after the year 10889 get there.
    pub fn now(&mut self) -> HlcTimestamp {
        let next = self
            .last
            .0
            .checked_add(1)
            .expect("HLC timestamp space exhausted");
        self.last = HlcTimestamp(next.max(self.physical().0));
        self.last
    }

    /// Takes in a timestamp received from another node and returns a local timestamp strictly
    /// greater than both it and every timestamp issued or observed before.
    pub fn observe(&mut self, remote: HlcTimestamp) -> Result<HlcTimestamp, HlcError> {
        let local = self.physical();
        let accepted_ms = local
            .physical_ms()
            .saturating_add(self.max_drift_ms)
            .min(HlcTimestamp::PHYSICAL_MS_MAX - 1);
        if remote.physical_ms() > accepted_ms {
            return Err(HlcError::DriftExceeded {
                remote,
                local_physical_ms: local.physical_ms(),
                max_drift_ms: self.max_drift_ms,
            });
        }
        // `remote` is at most (PHYSICAL_MS_MAX - 1, 0xFFFF), so `+ 1` cannot overflow.
        let next = self
            .last
            .max(remote)
            .0
            .checked_add(1)
            .expect("HLC timestamp space exhausted");
        self.last = HlcTimestamp(next.max(local.0));
        Ok(self.last)
    }

    /// The latest timestamp issued or observed.
    pub fn last(&self) -> HlcTimestamp {
        self.last
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The clock, for example to step a `ManualClock`.
    pub fn clock_mut(&mut self) -> &mut C {
        &mut self.clock
    }

    /// The physical clock as a timestamp with logical 0, capped so that `observe` and `now` always
    /// leave room for one more timestamp.
    fn physical(&self) -> HlcTimestamp {
        HlcTimestamp::new(
            self.clock.now_ms().min(HlcTimestamp::PHYSICAL_MS_MAX - 1),
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    const MAX_DRIFT_MS: u64 = 1_000;

    #[derive(Clone, Debug)]
    enum Event {
        /// Set the physical clock (it may go backwards).
        Tick(u64),
        Now,
        /// Observe a remote timestamp this many ms ahead of (or behind, if negative) local time.
        Observe {
            offset_ms: i64,
            logical: u16,
        },
    }

    fn events() -> impl Strategy<Value = Vec<Event>> {
        proptest::collection::vec(
            prop_oneof![
                (0..10_000u64).prop_map(Event::Tick),
                Just(Event::Now),
                (-2_000..2_000i64, any::<u16>())
                    .prop_map(|(offset_ms, logical)| Event::Observe { offset_ms, logical }),
            ],
            0..60,
        )
    }

    proptest! {
        #[test]
        fn timestamps_strictly_increase_and_observe_dominates_the_remote(events in events()) {
            let mut hlc = Hlc::new(ManualClock::new(5_000), MAX_DRIFT_MS);
            let mut previous = hlc.last();
            for event in events {
                match event {
                    Event::Tick(now_ms) => hlc.clock_mut().set_ms(now_ms),
                    Event::Now => {
                        let timestamp = hlc.now();
                        prop_assert!(timestamp > previous);
                        prop_assert!(timestamp.physical_ms() >= hlc.clock().now_ms());
                        previous = timestamp;
                    }
                    Event::Observe { offset_ms, logical } => {
                        let local_ms = hlc.clock().now_ms();
                        let remote = HlcTimestamp::new(local_ms.saturating_add_signed(offset_ms), logical);
                        match hlc.observe(remote) {
                            Ok(timestamp) => {
                                prop_assert!(remote.physical_ms() <= local_ms + MAX_DRIFT_MS);
                                prop_assert!(timestamp > remote && timestamp > previous);
                                previous = timestamp;
                            }
                            Err(HlcError::DriftExceeded { remote: refused, local_physical_ms, max_drift_ms }) => {
                                prop_assert!(remote.physical_ms() > local_ms + MAX_DRIFT_MS);
                                prop_assert_eq!((refused, local_physical_ms, max_drift_ms), (remote, local_ms, MAX_DRIFT_MS));
                                prop_assert_eq!(hlc.last(), previous, "a refused timestamp changes nothing");
                            }
                        }
                    }
                }
            }
        }

        #[test]
        fn packing_round_trips_and_orders_like_the_pair(
            a in (0..=HlcTimestamp::PHYSICAL_MS_MAX, any::<u16>()),
            b in (0..=HlcTimestamp::PHYSICAL_MS_MAX, any::<u16>()),
        ) {
            let (ta, tb) = (HlcTimestamp::new(a.0, a.1), HlcTimestamp::new(b.0, b.1));
            prop_assert_eq!((ta.physical_ms(), ta.logical()), a);
            prop_assert_eq!(HlcTimestamp::from_u64(ta.as_u64()), ta);
            prop_assert_eq!(ta.cmp(&tb), a.cmp(&b));
            prop_assert_eq!(ta.as_u64().cmp(&tb.as_u64()), a.cmp(&b));
        }
    }

    #[test]
    fn follows_physical_time_when_it_moves_forward() {
        let mut hlc = Hlc::new(ManualClock::new(1_000), MAX_DRIFT_MS);
        assert_eq!(hlc.now(), HlcTimestamp::new(1_000, 0));
        assert_eq!(hlc.now(), HlcTimestamp::new(1_000, 1));
        hlc.clock_mut().advance_ms(5);
        assert_eq!(hlc.now(), HlcTimestamp::new(1_005, 0));
    }

    #[test]
    fn a_clock_stepped_backwards_keeps_counting_from_the_last_timestamp() {
        let mut hlc = Hlc::new(ManualClock::new(1_000), MAX_DRIFT_MS);
        let before = hlc.now();
        hlc.clock_mut().set_ms(400);
        let after = hlc.now();
        assert!(after > before);
        assert_eq!(after, HlcTimestamp::new(1_000, 1));
    }

    #[test]
    fn the_logical_counter_carries_into_the_next_millisecond() {
        let mut hlc = Hlc::new(ManualClock::new(7), MAX_DRIFT_MS);
        let mut last = hlc.now();
        for _ in 0..u16::MAX {
            last = hlc.now();
        }
        assert_eq!(last, HlcTimestamp::new(7, u16::MAX));
        assert_eq!(hlc.now(), HlcTimestamp::new(8, 0));
    }

    #[test]
    fn observe_jumps_past_a_remote_within_the_drift() {
        let mut hlc = Hlc::new(ManualClock::new(1_000), MAX_DRIFT_MS);
        hlc.now();
        let remote = HlcTimestamp::new(1_900, 3);
        assert_eq!(hlc.observe(remote), Ok(HlcTimestamp::new(1_900, 4)));
        assert_eq!(hlc.now(), HlcTimestamp::new(1_900, 5));
    }

    #[test]
    fn observe_rejects_a_remote_beyond_the_drift_with_a_clear_error() {
        let mut hlc = Hlc::new(ManualClock::new(1_000), MAX_DRIFT_MS);
        let last = hlc.now();
        let remote = HlcTimestamp::new(2_001, 0);
        let error = hlc.observe(remote).unwrap_err();
        assert_eq!(
            error,
            HlcError::DriftExceeded {
                remote,
                local_physical_ms: 1_000,
                max_drift_ms: MAX_DRIFT_MS
            }
        );
        assert_eq!(
            alloc::string::ToString::to_string(&error),
            "remote HLC timestamp 2001.0 is 1001 ms ahead of the local clock (1000 ms), \
             beyond the maximum drift of 1000 ms; the local clock is unchanged"
        );
        assert_eq!(hlc.last(), last);
    }

    #[test]
    fn an_unlimited_drift_still_leaves_room_for_the_next_timestamp() {
        let mut hlc = Hlc::new(ManualClock::new(0), u64::MAX);
        assert!(hlc.observe(HlcTimestamp::from_u64(u64::MAX)).is_err());
        let edge = HlcTimestamp::new(HlcTimestamp::PHYSICAL_MS_MAX - 1, u16::MAX);
        let observed = hlc.observe(edge).unwrap();
        assert!(observed > edge);
        assert!(hlc.now() > observed);
    }

    #[cfg(feature = "std")]
    #[test]
    fn the_system_clock_reads_a_time_after_2020() {
        const JANUARY_2020_MS: u64 = 1_577_836_800_000;
        assert!(SystemClock.now_ms() > JANUARY_2020_MS);
    }
}
