//! Keeping a lease: [`LeaseState`], the sans-IO state machine that decides when to acquire, renew and
//! step down, and [`LeaseManager`], the task that drives it against a [`Lease`] backend.
//!
//! # Timing
//!
//! The backend judges expiry on its own clock; the holder cannot read that clock, so it keeps its own
//! *local deadline* on the monotonic clock and steps down before it:
//!
//! ```text
//! deadline = sent_at + ttl - safety_margin
//! ```
//!
//! where `sent_at` is when the acquire or the last successful renewal was *sent*: the backend started
//! counting the time to live no earlier than that, so the backend's expiry is no earlier than
//! `sent_at + ttl` (as long as the two clocks run at the same rate; the safety margin absorbs rate
//! differences and the time it takes the holder to stop acting on its step-down).
//!
//! A holder renews every `renew_interval` (default `ttl / 3`). A renewal that fails with an error (the
//! backend is unreachable, the connection broke) is retried every `retry_interval` while the deadline
//! has not passed. If no renewal succeeded by the deadline the holder steps down, even though the
//! backend may still consider it the holder: it cannot know, and the next holder may already be
//! writing. A renewal that answers "not held" is a loss at once.
//!
//! # One manager, one tenure
//!
//! A manager acquires once (retrying while another owner holds the lease), holds the lease, and ends
//! when it is lost or released. Its status goes `Acquiring → Held → Lost | Released` and the loss is
//! reported exactly once. To contend again after a loss, start a new manager: whoever uses the lease
//! (a single-writer entity, a singleton) decides that, after it has stopped acting as the holder.

use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::{Grant, Lease, LeaseError};

/// Where a manager's lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Not held yet: acquiring, retrying while another owner holds the lease.
    Acquiring,
    /// Held with this token, until the local deadline unless renewed. Stamp the token on every write
    /// the lease guards.
    Held { fencing_token: u64 },
    /// Was held and is not any more (the local deadline passed without a renewal, or the backend
    /// answered that another owner holds it). Final.
    Lost,
    /// Given up on request. Final.
    Released,
}

impl LeaseStatus {
    /// The token to write with, while the lease is held.
    pub fn fencing_token(self) -> Option<u64> {
        match self {
            LeaseStatus::Held { fencing_token } => Some(fencing_token),
            _ => None,
        }
    }

    /// `Lost` and `Released` never change again.
    pub fn is_final(self) -> bool {
        matches!(self, LeaseStatus::Lost | LeaseStatus::Released)
    }
}

/// How a holder times its calls. [`LeaseTiming::for_ttl`] gives the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// The time to live asked of the backend at every acquire and renewal.
    pub ttl: Duration,
    /// Time between renewals, and between acquire attempts while another owner holds the lease.
    /// Default `ttl / 3`: two renewals can fail before the deadline comes near.
    pub renew_interval: Duration,
    /// How long before the backend's earliest possible expiry the holder steps down. Default `ttl / 5`.
    pub safety_margin: Duration,
    /// Time between retries after an error. Default `ttl / 10`, at least 1 ms.
    pub retry_interval: Duration,
}

impl LeaseTiming {
    pub fn for_ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            renew_interval: ttl / 3,
            safety_margin: ttl / 5,
            retry_interval: (ttl / 10).max(Duration::from_millis(1)),
        }
    }

    /// Checks that a renewal is due before the deadline and that every interval is positive.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let invalid = |message: String| Err(LeaseError::Invalid(message));
        if self.safety_margin >= self.ttl {
            return invalid(format!(
                "safety margin {:?} must be below the time to live {:?}",
                self.safety_margin, self.ttl
            ));
        }
        if self.renew_interval.is_zero() || self.renew_interval >= self.ttl - self.safety_margin {
            return invalid(format!(
                "renew interval {:?} must be positive and below the time to live minus the safety \
                 margin ({:?})",
                self.renew_interval,
                self.ttl - self.safety_margin
            ));
        }
        if self.retry_interval.is_zero() {
            return invalid("the retry interval must be positive".to_owned());
        }
        Ok(())
    }
}

/// What the driver of a [`LeaseState`] must do, in the order returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Call [`Lease::acquire`]; feed the outcome to [`LeaseState::acquired`],
    /// [`LeaseState::acquire_refused`] or [`LeaseState::acquire_failed`].
    Acquire,
    /// Call [`Lease::renew`] with this token; feed the outcome to [`LeaseState::renewed`] or
    /// [`LeaseState::renew_failed`].
    Renew { fencing_token: u64 },
    /// Stop acting as the holder now: write nothing more with the token. Always comes before the
    /// `Report(Lost)` or `Report(Released)` of the same step.
    StepDown,
    /// Release the lease on the backend (best effort: it expires anyway).
    Release { fencing_token: u64 },
    /// Publish this status.
    Report(LeaseStatus),
}

/// Why a renewal failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewFailure {
    /// The backend answered that the lease is not held with this token any more.
    NotHeld,
    /// The call failed; the lease may still be held. Retried until the deadline.
    Unavailable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Acquiring {
        next_attempt_at: Instant,
        attempt_in_flight: bool,
    },
    Held {
        fencing_token: u64,
        deadline: Instant,
        next_renewal_at: Instant,
        renewal_in_flight: bool,
    },
    Ended(LeaseStatus),
}

/// The sans-IO core of a [`LeaseManager`]: fed the outcomes of backend calls and the time, it returns
/// the [`LeaseAction`]s to take. It never reads a clock: every input carries `now` (or the instant a
/// call was sent). Call [`LeaseState::tick`] at [`LeaseState::next_wakeup`].
///
/// Outcomes that arrive when they no longer apply (a renewal answered after the lease was given up)
/// change nothing, except that a grant nobody waits for any more is released.
#[derive(Clone, Debug)]
pub struct LeaseState {
    timing: LeaseTiming,
    phase: Phase,
}

impl LeaseState {
    /// A state about to acquire; call [`LeaseTiming::validate`] first.
    pub fn new(timing: LeaseTiming, now: Instant) -> Self {
        Self {
            timing,
            phase: Phase::Acquiring {
                next_attempt_at: now,
                attempt_in_flight: false,
            },
        }
    }

    /// Until when the lease may be acted on as held: the local deadline, while held.
    pub fn valid_until(&self) -> Option<Instant> {
        match self.phase {
            Phase::Held { deadline, .. } => Some(deadline),
            Phase::Acquiring { .. } | Phase::Ended(_) => None,
        }
    }

    pub fn status(&self) -> LeaseStatus {
        match self.phase {
            Phase::Acquiring { .. } => LeaseStatus::Acquiring,
            Phase::Held { fencing_token, .. } => LeaseStatus::Held { fencing_token },
            Phase::Ended(status) => status,
        }
    }

    /// When [`LeaseState::tick`] has something to do next; `None` while waiting only for a call's
    /// outcome before the deadline matters, or once ended.
    pub fn next_wakeup(&self) -> Option<Instant> {
        match self.phase {
            Phase::Acquiring {
                next_attempt_at,
                attempt_in_flight: false,
            } => Some(next_attempt_at),
            Phase::Acquiring { .. } | Phase::Ended(_) => None,
            Phase::Held {
                deadline,
                renewal_in_flight: true,
                ..
            } => Some(deadline),
            Phase::Held {
                deadline,
                next_renewal_at,
                ..
            } => Some(deadline.min(next_renewal_at)),
        }
    }

    /// Steps down once the deadline has passed; starts the acquire or renewal that is due.
    pub fn tick(&mut self, now: Instant) -> Vec<LeaseAction> {
        if let Some(lost) = self.step_down_if_past_deadline(now) {
            return lost;
        }
        match &mut self.phase {
            Phase::Acquiring {
                next_attempt_at,
                attempt_in_flight,
            } if !*attempt_in_flight && now >= *next_attempt_at => {
                *attempt_in_flight = true;
                vec![LeaseAction::Acquire]
            }
            Phase::Held {
                fencing_token,
                next_renewal_at,
                renewal_in_flight,
                ..
            } if !*renewal_in_flight && now >= *next_renewal_at => {
                *renewal_in_flight = true;
                vec![LeaseAction::Renew {
                    fencing_token: *fencing_token,
                }]
            }
            _ => Vec::new(),
        }
    }

    /// The acquire sent at `sent_at` was granted.
    pub fn acquired(&mut self, sent_at: Instant, now: Instant, grant: Grant) -> Vec<LeaseAction> {
        let release_unwanted = vec![LeaseAction::Release {
            fencing_token: grant.fencing_token,
        }];
        let Phase::Acquiring {
            attempt_in_flight: true,
            ..
        } = self.phase
        else {
            return release_unwanted;
        };
        let deadline = self.deadline_after(sent_at, grant);
        if now >= deadline {
            // Granted too late to use: the answer took longer than the time to live allows.
            self.phase = Phase::Acquiring {
                next_attempt_at: now,
                attempt_in_flight: false,
            };
            return release_unwanted;
        }
        self.phase = Phase::Held {
            fencing_token: grant.fencing_token,
            deadline,
            next_renewal_at: sent_at + self.timing.renew_interval,
            renewal_in_flight: false,
        };
        vec![LeaseAction::Report(LeaseStatus::Held {
            fencing_token: grant.fencing_token,
        })]
    }

    /// The acquire was refused: another owner holds the lease. Tries again after `renew_interval`.
    pub fn acquire_refused(&mut self, now: Instant) {
        self.schedule_next_attempt(now + self.timing.renew_interval);
    }

    /// The acquire failed with an error. Tries again after `retry_interval`.
    pub fn acquire_failed(&mut self, now: Instant) {
        self.schedule_next_attempt(now + self.timing.retry_interval);
    }

    /// The renewal sent at `sent_at` succeeded: the deadline moves to `sent_at + ttl - margin`.
    pub fn renewed(&mut self, sent_at: Instant, now: Instant, grant: Grant) -> Vec<LeaseAction> {
        if let Some(lost) = self.step_down_if_past_deadline(now) {
            return lost;
        }
        let new_deadline = self.deadline_after(sent_at, grant);
        let renew_interval = self.timing.renew_interval;
        if let Phase::Held {
            fencing_token,
            deadline,
            next_renewal_at,
            renewal_in_flight: renewal_in_flight @ true,
        } = &mut self.phase
            && *fencing_token == grant.fencing_token
        {
            *deadline = (*deadline).max(new_deadline);
            *next_renewal_at = sent_at + renew_interval;
            *renewal_in_flight = false;
        }
        Vec::new()
    }

    /// The renewal failed: at once a loss if the lease is not held any more; after an error, retried
    /// after `retry_interval` unless the deadline passes first.
    pub fn renew_failed(&mut self, now: Instant, failure: RenewFailure) -> Vec<LeaseAction> {
        if let Some(lost) = self.step_down_if_past_deadline(now) {
            return lost;
        }
        let Phase::Held {
            next_renewal_at,
            renewal_in_flight: renewal_in_flight @ true,
            ..
        } = &mut self.phase
        else {
            return Vec::new();
        };
        match failure {
            RenewFailure::NotHeld => self.end(LeaseStatus::Lost),
            RenewFailure::Unavailable => {
                *renewal_in_flight = false;
                *next_renewal_at = now + self.timing.retry_interval;
                Vec::new()
            }
        }
    }

    /// Gives the lease up: steps down and releases it if held. Nothing once ended.
    pub fn release(&mut self) -> Vec<LeaseAction> {
        match self.phase {
            Phase::Held { fencing_token, .. } => {
                self.phase = Phase::Ended(LeaseStatus::Released);
                vec![
                    LeaseAction::StepDown,
                    LeaseAction::Release { fencing_token },
                    LeaseAction::Report(LeaseStatus::Released),
                ]
            }
            Phase::Acquiring { .. } => {
                self.phase = Phase::Ended(LeaseStatus::Released);
                vec![LeaseAction::Report(LeaseStatus::Released)]
            }
            Phase::Ended(_) => Vec::new(),
        }
    }

    fn deadline_after(&self, sent_at: Instant, grant: Grant) -> Instant {
        // The backend counts the time to live it granted; never trust more than was asked.
        sent_at + grant.ttl.min(self.timing.ttl) - self.timing.safety_margin
    }

    fn schedule_next_attempt(&mut self, at: Instant) {
        if let Phase::Acquiring {
            next_attempt_at,
            attempt_in_flight: attempt_in_flight @ true,
        } = &mut self.phase
        {
            *next_attempt_at = at;
            *attempt_in_flight = false;
        }
    }

    fn step_down_if_past_deadline(&mut self, now: Instant) -> Option<Vec<LeaseAction>> {
        match self.phase {
            Phase::Held { deadline, .. } if now >= deadline => Some(self.end(LeaseStatus::Lost)),
            _ => None,
        }
    }

    fn end(&mut self, status: LeaseStatus) -> Vec<LeaseAction> {
        self.phase = Phase::Ended(status);
        vec![LeaseAction::StepDown, LeaseAction::Report(status)]
    }
}

/// The status of a [`LeaseManager`], to read now or to wait on. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LeaseWatch {
    status: watch::Receiver<LeaseStatus>,
    /// The local deadline while held ([`LeaseState::valid_until`]), kept by the manager's task.
    valid_until: ValidUntil,
}

type ValidUntil = std::sync::Arc<std::sync::Mutex<Option<Instant>>>;

impl LeaseWatch {
    pub fn current(&self) -> LeaseStatus {
        *self.status.borrow()
    }

    /// The token to act with at `now`: held, and the local deadline not passed. Unlike
    /// [`LeaseWatch::current`], this does not wait for the manager's task to notice the deadline:
    /// after the process was paused past it, the lease is not held from the first instant on,
    /// whichever task runs first.
    pub fn held_at(&self, now: Instant) -> Option<u64> {
        let valid_until = *self
            .valid_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.current()
            .fencing_token()
            .filter(|_| valid_until.is_some_and(|deadline| now < deadline))
    }

    /// Waits for the next change of status and returns it; `None` once the manager has ended and
    /// no change will come.
    pub async fn changed(&mut self) -> Option<LeaseStatus> {
        self.status.changed().await.ok()?;
        Some(*self.status.borrow_and_update())
    }

    /// Waits until the status satisfies `condition` and returns it; returns the last status if the
    /// manager ended without it ever doing so.
    pub async fn wait_for(&mut self, condition: impl FnMut(&LeaseStatus) -> bool) -> LeaseStatus {
        let reached = self.status.wait_for(condition).await.map(|status| *status);
        reached.unwrap_or_else(|_| *self.status.borrow())
    }
}

/// Keeps one lease: acquires `name` for `owner` (retrying while another owner holds it), renews it,
/// steps down before its local deadline, and reports the status through [`LeaseWatch`]. See the module
/// docs for the timing.
///
/// Dropping the manager stops its task without releasing: the lease expires after its time to live.
/// [`LeaseManager::release`] gives it up at once.
pub struct LeaseManager {
    name: String,
    watch: LeaseWatch,
    release: Option<oneshot::Sender<()>>,
    task: JoinHandle<LeaseStatus>,
}

impl LeaseManager {
    /// Starts keeping `name` for `owner` with `timing` on `lease`.
    pub fn start(
        lease: std::sync::Arc<dyn Lease>,
        name: &str,
        owner: &str,
        timing: LeaseTiming,
    ) -> Result<LeaseManager, LeaseError> {
        timing.validate()?;
        super::rules::validate_grant_request(name, owner, timing.ttl)?;
        let (status, status_updates) = watch::channel(LeaseStatus::Acquiring);
        let (release, release_requested) = oneshot::channel();
        let valid_until = ValidUntil::default();
        let driver = Driver {
            lease,
            name: name.to_owned(),
            owner: owner.to_owned(),
            timing,
            status,
            valid_until: valid_until.clone(),
        };
        Ok(LeaseManager {
            name: name.to_owned(),
            watch: LeaseWatch {
                status: status_updates,
                valid_until,
            },
            release: Some(release),
            task: tokio::spawn(driver.run(release_requested)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> LeaseStatus {
        self.watch.current()
    }

    /// A watch on the status, for tasks that act on changes.
    pub fn watch(&self) -> LeaseWatch {
        self.watch.clone()
    }

    /// Steps down, releases the lease on the backend if held, and returns the final status (`Lost` if
    /// it had been lost before).
    pub async fn release(mut self) -> LeaseStatus {
        if let Some(release) = self.release.take() {
            // The task may have ended already (lost); then it reports its final status below.
            let _ = release.send(());
        }
        match (&mut self.task).await {
            Ok(status) => status,
            Err(_) => self.watch.current(),
        }
    }
}

impl Drop for LeaseManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The task of a [`LeaseManager`]: performs the actions of its [`LeaseState`], one backend call at a
/// time, and feeds the outcomes back.
struct Driver {
    lease: std::sync::Arc<dyn Lease>,
    name: String,
    owner: String,
    timing: LeaseTiming,
    status: watch::Sender<LeaseStatus>,
    valid_until: ValidUntil,
}

/// The outcome of the backend call in flight, with when it was sent.
enum Outcome {
    Acquire(Instant, Result<Option<Grant>, LeaseError>),
    Renew(Instant, Result<Option<Grant>, LeaseError>),
}

type InFlight = std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>>;

impl Driver {
    async fn run(self, mut release_requested: oneshot::Receiver<()>) -> LeaseStatus {
        let mut state = LeaseState::new(self.timing, Instant::now());
        let mut actions = state.tick(Instant::now());
        let mut in_flight: Option<InFlight> = None;
        let mut release_pending = true;
        loop {
            // Before a `Held` report goes out, so that a holder never reads one without its deadline.
            *self
                .valid_until
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = state.valid_until();
            for action in actions.drain(..) {
                if let Some(call) = self.perform(action).await {
                    in_flight = Some(call);
                }
            }
            if state.status().is_final() {
                return state.status();
            }
            let wakeup = state.next_wakeup();
            tokio::select! {
                outcome = async { in_flight.as_mut().expect("guarded by the condition").await },
                    if in_flight.is_some() =>
                {
                    in_flight = None;
                    actions = feed(&mut state, outcome);
                }
                () = sleep_until(wakeup) => actions = state.tick(Instant::now()),
                requested = &mut release_requested, if release_pending => {
                    release_pending = false;
                    // A dropped manager handle aborts the task; an error here cannot come first.
                    if requested.is_ok() {
                        // An acquire or renewal in flight is abandoned: a grant it might have won
                        // expires after its time to live.
                        in_flight = None;
                        actions = state.release();
                    }
                }
            }
        }
    }

    /// Carries out one action; returns the backend call to await, if the action is one.
    async fn perform(&self, action: LeaseAction) -> Option<InFlight> {
        let sent_at = Instant::now();
        let (lease, name, owner) = (
            std::sync::Arc::clone(&self.lease),
            self.name.clone(),
            self.owner.clone(),
        );
        let ttl = self.timing.ttl;
        match action {
            LeaseAction::Acquire => Some(Box::pin(async move {
                Outcome::Acquire(sent_at, lease.acquire(&name, &owner, ttl).await)
            })),
            LeaseAction::Renew { fencing_token } => Some(Box::pin(async move {
                Outcome::Renew(
                    sent_at,
                    lease.renew(&name, &owner, fencing_token, ttl).await,
                )
            })),
            LeaseAction::StepDown => {
                if self.status.borrow().fencing_token().is_some() {
                    tracing::info!(lease = %self.name, owner = %self.owner, "stepping down");
                }
                None
            }
            LeaseAction::Release { fencing_token } => {
                // Bounded: a backend that does not answer must not keep the manager from ending.
                let released =
                    tokio::time::timeout(ttl, lease.release(&name, &owner, fencing_token)).await;
                if !matches!(released, Ok(Ok(_))) {
                    tracing::warn!(lease = %name, "releasing failed; the lease expires after its time to live");
                }
                None
            }
            LeaseAction::Report(status) => {
                if status == LeaseStatus::Lost {
                    tracing::error!(lease = %self.name, owner = %self.owner, "LEASE LOST: stopped acting as its holder");
                }
                self.status.send_replace(status);
                None
            }
        }
    }
}

fn feed(state: &mut LeaseState, outcome: Outcome) -> Vec<LeaseAction> {
    let now = Instant::now();
    match outcome {
        Outcome::Acquire(sent_at, Ok(Some(grant))) => state.acquired(sent_at, now, grant),
        Outcome::Acquire(_, Ok(None)) => {
            state.acquire_refused(now);
            Vec::new()
        }
        Outcome::Acquire(_, Err(error)) => {
            tracing::warn!("acquiring a lease failed, retrying: {error}");
            state.acquire_failed(now);
            Vec::new()
        }
        Outcome::Renew(sent_at, Ok(Some(grant))) => state.renewed(sent_at, now, grant),
        Outcome::Renew(_, Ok(None)) => state.renew_failed(now, RenewFailure::NotHeld),
        Outcome::Renew(_, Err(error)) => {
            tracing::warn!("renewing a lease failed, retrying until its deadline: {error}");
            state.renew_failed(now, RenewFailure::Unavailable)
        }
    }
}

async fn sleep_until(wakeup: Option<Instant>) {
    match wakeup {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(3000);

    fn timing() -> LeaseTiming {
        LeaseTiming::for_ttl(TTL)
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn grant(fencing_token: u64) -> Grant {
        Grant {
            fencing_token,
            ttl: TTL,
        }
    }

    /// A state that acquired token 7 with the acquire sent at `t0`: deadline t0 + 2400 ms, renewal
    /// due at t0 + 1000 ms.
    fn held_at(t0: Instant) -> LeaseState {
        let mut state = LeaseState::new(timing(), t0);
        assert_eq!(state.tick(t0), vec![LeaseAction::Acquire]);
        assert_eq!(
            state.acquired(t0, t0 + ms(5), grant(7)),
            vec![LeaseAction::Report(LeaseStatus::Held { fencing_token: 7 })]
        );
        state
    }

    #[test]
    fn the_default_timing_renews_at_a_third_and_steps_down_a_fifth_early() {
        let timing = timing();
        assert_eq!(timing.renew_interval, ms(1000));
        assert_eq!(timing.safety_margin, ms(600));
        assert_eq!(timing.retry_interval, ms(300));
        assert_eq!(timing.validate(), Ok(()));
        for broken in [
            LeaseTiming {
                safety_margin: TTL,
                ..timing
            },
            LeaseTiming {
                renew_interval: ms(2400),
                ..timing
            },
            LeaseTiming {
                renew_interval: Duration::ZERO,
                ..timing
            },
            LeaseTiming {
                retry_interval: Duration::ZERO,
                ..timing
            },
        ] {
            assert!(
                matches!(broken.validate(), Err(LeaseError::Invalid(_))),
                "{broken:?}"
            );
        }
    }

    #[test]
    fn acquiring_retries_while_another_owner_holds_the_lease() {
        let t0 = Instant::now();
        let mut state = LeaseState::new(timing(), t0);
        assert_eq!(state.status(), LeaseStatus::Acquiring);
        assert_eq!(state.tick(t0), vec![LeaseAction::Acquire]);
        assert_eq!(state.tick(t0 + ms(1)), vec![], "one attempt at a time");
        assert_eq!(state.next_wakeup(), None);

        state.acquire_refused(t0 + ms(10));
        assert_eq!(state.next_wakeup(), Some(t0 + ms(1010)));
        assert_eq!(state.tick(t0 + ms(1009)), vec![]);
        assert_eq!(state.tick(t0 + ms(1010)), vec![LeaseAction::Acquire]);

        state.acquire_failed(t0 + ms(1020));
        assert_eq!(
            state.next_wakeup(),
            Some(t0 + ms(1320)),
            "an error retries sooner"
        );
        assert_eq!(state.tick(t0 + ms(1320)), vec![LeaseAction::Acquire]);
        let sent = t0 + ms(1320);
        assert_eq!(
            state.acquired(sent, sent + ms(3), grant(4)),
            vec![LeaseAction::Report(LeaseStatus::Held { fencing_token: 4 })]
        );
        assert_eq!(state.next_wakeup(), Some(sent + ms(1000)));
    }

    #[test]
    fn renewals_come_every_renew_interval_and_move_the_deadline() {
        let t0 = Instant::now();
        let mut state = held_at(t0);
        assert_eq!(state.tick(t0 + ms(999)), vec![]);
        assert_eq!(
            state.tick(t0 + ms(1000)),
            vec![LeaseAction::Renew { fencing_token: 7 }]
        );
        assert_eq!(state.tick(t0 + ms(1100)), vec![], "one renewal at a time");
        assert_eq!(
            state.next_wakeup(),
            Some(t0 + ms(2400)),
            "while a renewal is in flight, only the deadline matters"
        );
        assert_eq!(
            state.renewed(t0 + ms(1000), t0 + ms(1200), grant(7)),
            vec![]
        );
        assert_eq!(state.next_wakeup(), Some(t0 + ms(2000)));
        assert_eq!(
            state.tick(t0 + ms(2000)),
            vec![LeaseAction::Renew { fencing_token: 7 }]
        );
        assert_eq!(
            state.renewed(t0 + ms(2000), t0 + ms(2010), grant(7)),
            vec![]
        );
        assert_eq!(
            state.tick(t0 + ms(2500)),
            vec![],
            "past the first deadline, the renewal moved it to t0 + 4400 ms"
        );
        assert_eq!(state.status(), LeaseStatus::Held { fencing_token: 7 });
    }

    #[test]
    fn failing_renewals_are_retried_then_the_holder_steps_down_before_the_deadline() {
        let t0 = Instant::now();
        let mut state = held_at(t0);
        let mut now = t0 + ms(1000);
        let mut renewals = 0;
        let mut actions = state.tick(now);
        // Bounded: the deadline comes after a handful of retries.
        for _ in 0..100 {
            if actions != vec![LeaseAction::Renew { fencing_token: 7 }] {
                break;
            }
            renewals += 1;
            assert_eq!(
                state.renew_failed(now + ms(50), RenewFailure::Unavailable),
                vec![]
            );
            now = state.next_wakeup().expect("a retry or the deadline is due");
            actions = state.tick(now);
        }
        assert_eq!(
            actions,
            vec![
                LeaseAction::StepDown,
                LeaseAction::Report(LeaseStatus::Lost)
            ]
        );
        assert_eq!(now, t0 + ms(2400), "stepped down at the local deadline");
        assert!(
            now < t0 + TTL,
            "the deadline is before the backend's earliest expiry"
        );
        assert_eq!(
            renewals, 4,
            "renewed at 1000 ms, retried at 1350, 1700 and 2050 ms"
        );
        assert_eq!(state.status(), LeaseStatus::Lost);
    }

    #[test]
    fn a_loss_is_reported_once_and_late_outcomes_change_nothing() {
        let t0 = Instant::now();
        let mut state = held_at(t0);
        assert_eq!(
            state.tick(t0 + ms(1000)),
            vec![LeaseAction::Renew { fencing_token: 7 }]
        );
        assert_eq!(
            state.tick(t0 + ms(2400)),
            vec![
                LeaseAction::StepDown,
                LeaseAction::Report(LeaseStatus::Lost)
            ],
            "the renewal is still in flight at the deadline"
        );
        assert_eq!(
            state.renewed(t0 + ms(1000), t0 + ms(2500), grant(7)),
            vec![],
            "a renewal answered after the deadline does not revive the lease"
        );
        assert_eq!(
            state.renew_failed(t0 + ms(2600), RenewFailure::NotHeld),
            vec![]
        );
        assert_eq!(state.tick(t0 + ms(9000)), vec![]);
        assert_eq!(state.release(), vec![], "nothing to release once lost");
        assert_eq!(state.status(), LeaseStatus::Lost);
        assert_eq!(state.next_wakeup(), None);
    }

    #[test]
    fn a_renewal_answering_not_held_is_a_loss_at_once() {
        let t0 = Instant::now();
        let mut state = held_at(t0);
        state.tick(t0 + ms(1000));
        assert_eq!(
            state.renew_failed(t0 + ms(1001), RenewFailure::NotHeld),
            vec![
                LeaseAction::StepDown,
                LeaseAction::Report(LeaseStatus::Lost)
            ]
        );
    }

    #[test]
    fn a_renewal_that_succeeds_after_the_deadline_is_still_a_loss() {
        let t0 = Instant::now();
        let mut state = held_at(t0);
        state.tick(t0 + ms(1000));
        assert_eq!(
            state.renewed(t0 + ms(1000), t0 + ms(2400), grant(7)),
            vec![
                LeaseAction::StepDown,
                LeaseAction::Report(LeaseStatus::Lost)
            ],
            "the deadline passed before the answer came: the holder must already have stepped down"
        );
    }

    #[test]
    fn a_grant_too_late_to_use_or_nobody_waits_for_is_released() {
        let t0 = Instant::now();
        let mut state = LeaseState::new(timing(), t0);
        state.tick(t0);
        assert_eq!(
            state.acquired(t0, t0 + ms(2400), grant(3)),
            vec![LeaseAction::Release { fencing_token: 3 }]
        );
        assert_eq!(state.status(), LeaseStatus::Acquiring);
        assert_eq!(state.tick(t0 + ms(2400)), vec![LeaseAction::Acquire]);
        assert_eq!(
            state.release(),
            vec![LeaseAction::Report(LeaseStatus::Released)]
        );
        assert_eq!(
            state.acquired(t0 + ms(2400), t0 + ms(2401), grant(4)),
            vec![LeaseAction::Release { fencing_token: 4 }]
        );
        assert_eq!(state.status(), LeaseStatus::Released);
    }

    #[test]
    fn releasing_steps_down_then_releases_the_token() {
        let t0 = Instant::now();
        let mut state = held_at(t0);
        assert_eq!(
            state.release(),
            vec![
                LeaseAction::StepDown,
                LeaseAction::Release { fencing_token: 7 },
                LeaseAction::Report(LeaseStatus::Released)
            ]
        );
        assert_eq!(state.release(), vec![]);
    }

    #[test]
    fn a_backend_granting_more_than_asked_is_not_trusted() {
        let t0 = Instant::now();
        let mut state = LeaseState::new(timing(), t0);
        state.tick(t0);
        state.acquired(
            t0,
            t0,
            Grant {
                fencing_token: 1,
                ttl: TTL * 10,
            },
        );
        state.tick(t0 + ms(1000));
        assert_eq!(
            state.tick(t0 + ms(2400)),
            vec![
                LeaseAction::StepDown,
                LeaseAction::Report(LeaseStatus::Lost)
            ]
        );
    }

    #[test]
    fn the_lease_is_valid_until_the_local_deadline_while_held() {
        let t0 = Instant::now();
        let mut state = held_at(t0);
        assert_eq!(state.valid_until(), Some(t0 + ms(2400)));
        state.tick(t0 + ms(2400));
        assert_eq!(state.valid_until(), None);
    }

    /// After a pause past the deadline, the watch says the lease is not held from the first
    /// instant, before the manager's task has run and reported the loss.
    #[tokio::test]
    async fn a_holder_reads_its_lease_as_gone_once_the_deadline_passed() {
        let lease = std::sync::Arc::new(super::super::InMemoryLease::new());
        let manager = LeaseManager::start(lease, "order|7", "node-1", timing()).unwrap();
        let mut watch = manager.watch();
        let status = watch
            .wait_for(|status| status.fencing_token().is_some())
            .await;
        let fencing_token = status.fencing_token().unwrap();
        let now = Instant::now();
        assert_eq!(watch.held_at(now), Some(fencing_token));
        assert_eq!(manager.status(), LeaseStatus::Held { fencing_token });
        assert_eq!(watch.held_at(now + TTL), None);
    }
}
