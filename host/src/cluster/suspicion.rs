//! Adaptive suspicion: how long a suspect has to refute before it is declared down, lengthened
//! while this node sees its down verdicts contradicted. foca (2.0.0) has a fixed
//! `suspect_to_down_after` and none of Lifeguard's adaptive timeouts; this is the small part of
//! that idea the cluster needs.
//!
//! A member whose traffic arrives later than the suspicion timeout (a heal where one side's
//! messages are delayed by seconds) refutes too late every time: it is declared down, rejoins
//! with a renewed incarnation, is suspected again, and the views never settle. Each time a member
//! comes back within [`AdaptiveSuspicion::window`] of being declared down, the timeout doubles, up
//! to [`AdaptiveSuspicion::MULTIPLIER_MAX`] times the configured one; after
//! [`AdaptiveSuspicion::CALM_WINDOWS`] quiet windows it halves again. A crashed node that restarts
//! quickly counts as a contradiction too, which only makes detection slower for a while.
//!
//! Sans-IO: fed member changes and the time, it returns the timeout to use when it changes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::identity::NodeName;

pub struct AdaptiveSuspicion {
    /// The configured timeout: the multiplier's unit.
    base: Duration,
    multiplier: u32,
    /// Members declared down within the current window, and when.
    declared_down: BTreeMap<NodeName, Instant>,
    /// When the timeout last changed (or the state machine started).
    changed_at: Instant,
}

impl AdaptiveSuspicion {
    /// The timeout grows to at most this many times the configured one: 8 × a 5 s default is
    /// 40 s before a crash is acted on, the longest a cluster should wait.
    pub const MULTIPLIER_MAX: u32 = 8;

    /// A return within this many current timeouts of the down verdict contradicts it: long enough
    /// for the declared-down member to learn it and rejoin (a few rejoin rounds).
    const WINDOW_TIMEOUTS: u32 = 10;

    /// Quiet windows (no contradicted verdict) before the timeout halves.
    pub const CALM_WINDOWS: u32 = 6;

    /// Members remembered as recently down, at most: one entry per name, and names are few.
    const DECLARED_DOWN_MAX: usize = 1024;

    pub fn new(base: Duration, now: Instant) -> Self {
        Self {
            base,
            multiplier: 1,
            declared_down: BTreeMap::new(),
            changed_at: now,
        }
    }

    /// The timeout in effect.
    pub fn timeout(&self) -> Duration {
        self.base * self.multiplier
    }

    /// How long after a down verdict a member's return contradicts it.
    pub fn window(&self) -> Duration {
        self.timeout() * Self::WINDOW_TIMEOUTS
    }

    /// `name` left the live view (not for a newer incarnation of itself).
    pub fn member_down(&mut self, name: &NodeName, now: Instant) {
        self.forget_old(now);
        if self.declared_down.len() < Self::DECLARED_DOWN_MAX {
            self.declared_down.insert(name.clone(), now);
        }
    }

    /// `name` entered the live view. Returns the new, longer timeout if this return contradicts a
    /// recent down verdict.
    pub fn member_up(&mut self, name: &NodeName, now: Instant) -> Option<Duration> {
        self.forget_old(now);
        self.declared_down.remove(name)?;
        if self.multiplier >= Self::MULTIPLIER_MAX {
            return None;
        }
        self.multiplier = (self.multiplier * 2).min(Self::MULTIPLIER_MAX);
        self.changed_at = now;
        Some(self.timeout())
    }

    /// Returns the new, shorter timeout once it has been calm long enough.
    pub fn tick(&mut self, now: Instant) -> Option<Duration> {
        let calm = self.window() * Self::CALM_WINDOWS;
        if self.multiplier == 1 || now.saturating_duration_since(self.changed_at) < calm {
            return None;
        }
        self.multiplier /= 2;
        self.changed_at = now;
        Some(self.timeout())
    }

    fn forget_old(&mut self, now: Instant) {
        let window = self.window();
        self.declared_down
            .retain(|_, at| now.saturating_duration_since(*at) < window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> NodeName {
        NodeName::new(text).expect("a valid name")
    }

    #[test]
    fn contradicted_verdicts_lengthen_the_timeout_up_to_the_cap_and_calm_shortens_it() {
        let start = Instant::now();
        let base = Duration::from_secs(1);
        let mut suspicion = AdaptiveSuspicion::new(base, start);
        let a = name("a");
        let mut now = start;
        // A member that was never declared down changes nothing.
        assert_eq!(suspicion.member_up(&a, now), None);
        let mut timeouts = Vec::new();
        for _ in 0..5 {
            suspicion.member_down(&a, now);
            now += Duration::from_secs(2);
            timeouts.extend(suspicion.member_up(&a, now));
        }
        let seconds: Vec<u64> = timeouts.iter().map(Duration::as_secs).collect();
        assert_eq!(seconds, [2, 4, 8]);
        assert_eq!(
            suspicion.timeout(),
            base * AdaptiveSuspicion::MULTIPLIER_MAX
        );

        // A return long after the verdict is a restart or a real recovery: no change.
        suspicion.member_down(&a, now);
        now += suspicion.window();
        assert_eq!(suspicion.member_up(&a, now), None);

        // Calm: halves once per calm period, back to the configured timeout.
        assert_eq!(suspicion.tick(now), None, "not calm yet");
        let mut shortened = Vec::new();
        for _ in 0..10 {
            now += suspicion.window() * AdaptiveSuspicion::CALM_WINDOWS;
            shortened.extend(suspicion.tick(now));
        }
        let seconds: Vec<u64> = shortened.iter().map(Duration::as_secs).collect();
        assert_eq!(seconds, [4, 2, 1]);
    }
}
