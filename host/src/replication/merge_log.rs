//! [`MergeLog`]: folds delivered events in one total order that every replica computes the same
//! way, rewinding and folding again when a late event sorts before events already folded.
//!
//! The order is (HLC timestamp, origin replica, origin sequence number). States are cached every
//! [`CHECKPOINT_EVERY`] events, so a late event costs a re-fold from the checkpoint before it,
//! not from the beginning. A fold that fails (the plugin traps) leaves the log exactly as it was.
//! [`MergeLog::compact`] folds the causally stable prefix (nothing that can still arrive, and
//! nothing held after it, can sort before it or be concurrent with it) into the base state.

use std::collections::BTreeMap;

use super::fold::{Fold, FoldConfig, Resolution};
use crate::journal::EventEnvelope;
use crate::plugin::PluginError;

/// A cached state every this many events.
pub const CHECKPOINT_EVERY: usize = 32;

/// How a folded event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Applied,
    Dropped,
}

#[derive(Debug, Clone)]
struct Folded {
    event: EventEnvelope,
    outcome: Outcome,
}

/// Where a fold stands between two events: the state, and the configuration in effect (the
/// payload of the last configuration event folded; `None` before any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub state: Vec<u8>,
    pub config: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct MergeLog {
    /// Where the fold stands before `events[0]` (everything compacted folded in).
    base: Position,
    /// Compacted events that were applied and that some event held is concurrent with, in fold
    /// order: a re-fold of that event must still count them as concurrent.
    settled: Vec<EventEnvelope>,
    /// Delivered events in total order, with how each was folded.
    events: Vec<Folded>,
    /// `checkpoints[k]` is where the fold stands before `events[(k + 1) * CHECKPOINT_EVERY]`.
    checkpoints: Vec<Position>,
    /// Where the fold stands after every event.
    current: Position,
}

/// Applies the events collected in `run` to `at`'s state, in one call of the fold.
fn flush(
    fold: &impl Fold,
    at: &mut Position,
    run: &mut Vec<EventEnvelope>,
) -> Result<(), PluginError> {
    if !run.is_empty() {
        at.state = fold.apply_run(&at.state, run)?;
        run.clear();
    }
    Ok(())
}

/// The order every replica folds in: HLC timestamp, origin replica, origin sequence number. Sort
/// by it wherever events must be in fold order.
pub fn order_key(event: &EventEnvelope) -> (u64, &str, u64) {
    (event.timestamp, &event.origin_replica, event.origin_seq_nr)
}

/// True when `a` happened before or equals `b` by version vector.
fn causally_before(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> bool {
    a.iter()
        .all(|(replica, counter)| *counter <= b.get(replica).copied().unwrap_or(0))
}

impl MergeLog {
    /// A log whose events will be folded onto `base` (the initial state or a snapshot's).
    pub fn new(base: Vec<u8>) -> Self {
        Self::restored(
            Position {
                state: base,
                config: None,
            },
            Vec::new(),
        )
    }

    /// A log over a compacted `base` whose `settled` events (a snapshot's) the events to come
    /// may still be concurrent with.
    pub fn restored(base: Position, settled: Vec<EventEnvelope>) -> Self {
        MergeLog {
            current: base.clone(),
            base,
            settled,
            events: Vec::new(),
            checkpoints: Vec::new(),
        }
    }

    /// The state before the events held: the initial state with everything compacted folded in.
    pub fn base(&self) -> &Position {
        &self.base
    }

    /// Compacted events that events held are concurrent with, in fold order.
    pub fn settled(&self) -> &[EventEnvelope] {
        &self.settled
    }

    /// The state after every delivered event.
    pub fn state(&self) -> &[u8] {
        &self.current.state
    }

    /// The configuration in effect after every delivered event (`None`: the entity type's).
    pub fn config(&self) -> Option<&[u8]> {
        self.current.config.as_deref()
    }

    /// Events held (not yet compacted).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events held, in fold order, with `concurrent` set as they were folded.
    pub fn events(&self) -> impl Iterator<Item = &EventEnvelope> {
        self.events.iter().map(|folded| &folded.event)
    }

    /// Folds a delivered event in. Returns how many events were folded (1 when it sorts last;
    /// more when the log had to rewind). An event already in the log is ignored (returns 0).
    pub fn insert(&mut self, fold: &impl Fold, event: EventEnvelope) -> Result<usize, PluginError> {
        let position = match self
            .events
            .binary_search_by(|folded| order_key(&folded.event).cmp(&order_key(&event)))
        {
            Ok(_) => return Ok(0),
            Err(position) => position,
        };
        let mut run = Vec::new();
        if position == self.events.len() {
            let mut at = self.current.clone();
            let folded = self.fold_one(fold, &mut at, &mut run, event, position)?;
            flush(fold, &mut at, &mut run)?;
            self.events.push(folded);
            self.current = at;
            self.checkpoint_if_due();
            return Ok(1);
        }
        // Rewind to the checkpoint at or before `position`, fold the rest again, and only then
        // replace the log, so a failing fold leaves it untouched.
        let kept_checkpoints = position / CHECKPOINT_EVERY;
        let start = kept_checkpoints * CHECKPOINT_EVERY;
        let mut at = match kept_checkpoints {
            0 => self.base.clone(),
            k => self.checkpoints[k - 1].clone(),
        };
        let mut pending: Vec<EventEnvelope> = self.events[start..]
            .iter()
            .map(|folded| folded.event.clone())
            .collect();
        pending.insert(position - start, event);
        let mut refolded = MergeLog {
            base: self.base.clone(),
            settled: self.settled.clone(),
            events: self.events[..start].to_vec(),
            checkpoints: self.checkpoints[..kept_checkpoints].to_vec(),
            current: Position::default(),
        };
        // Events to apply collect in a run, folded in one call where the state is needed: at a
        // checkpoint, before a resolver looks at it, and at the end.
        let count = pending.len();
        for event in pending {
            let index = refolded.events.len();
            let folded = refolded.fold_one(fold, &mut at, &mut run, event, index)?;
            refolded.events.push(folded);
            if refolded.events.len().is_multiple_of(CHECKPOINT_EVERY) {
                flush(fold, &mut at, &mut run)?;
                refolded.current = at.clone();
                refolded.checkpoint_if_due();
            }
        }
        flush(fold, &mut at, &mut run)?;
        refolded.current = at;
        *self = refolded;
        Ok(count)
    }

    /// Folds `event`, to be placed at `index`, from `at` and the events of `run` still to be
    /// applied to it: an event to apply joins `run`. A configuration event changes the
    /// configuration from there on (once the fold has checked it can follow it) and nothing
    /// else: it is never resolved, applied, or shown to a resolver among the concurrent events.
    fn fold_one(
        &self,
        fold: &impl Fold,
        at: &mut Position,
        run: &mut Vec<EventEnvelope>,
        mut event: EventEnvelope,
        index: usize,
    ) -> Result<Folded, PluginError> {
        if FoldConfig::is_config(&event) {
            fold.check_config(&event.payload)?;
            at.config = Some(event.payload.clone());
            return Ok(Folded {
                event,
                outcome: Outcome::Dropped,
            });
        }
        let applied = self.events[..index]
            .iter()
            .filter(|folded| folded.outcome == Outcome::Applied)
            .map(|folded| &folded.event);
        let concurrent: Vec<&EventEnvelope> = self
            .settled
            .iter()
            .chain(applied)
            .filter(|earlier| !causally_before(&earlier.version, &event.version))
            .collect();
        event.concurrent = !concurrent.is_empty();
        let resolution = if concurrent.is_empty() {
            Resolution::Keep
        } else {
            // The resolver sees the state with every earlier event applied.
            flush(fold, at, run)?;
            fold.resolve_under(at.config.as_deref(), &at.state, &event, &concurrent)?
        };
        let outcome = match resolution {
            Resolution::Keep => {
                run.push(event.clone());
                Outcome::Applied
            }
            Resolution::Drop => Outcome::Dropped,
            Resolution::Replace(payloads) => {
                run.extend(payloads.into_iter().map(|payload| EventEnvelope {
                    payload,
                    ..event.clone()
                }));
                Outcome::Applied
            }
        };
        Ok(Folded { event, outcome })
    }

    fn checkpoint_if_due(&mut self) {
        // Callers flush the run before: a checkpoint holds a state with every event applied.
        if self.events.len().is_multiple_of(CHECKPOINT_EVERY) {
            self.checkpoints.push(self.current.clone());
        }
    }

    /// Folds into the base state the leading events that are causally stable here. `stable` is
    /// a version vector such that every event this replica has not delivered yet is causally
    /// after every event it covers (see [`Replica::compact`](super::Replica::compact)): nothing
    /// that can still arrive sorts before such an event or is concurrent with it. Events held
    /// after the prefix may be concurrent with it, though, and a rewind folds them again: the
    /// prefix's applied events they do not causally follow stay visible to those folds (the
    /// settled events) until every event held follows them. Only whole checkpoint intervals are
    /// compacted, so no fold is needed. Returns how many events were folded into the base.
    pub fn compact(&mut self, stable: &BTreeMap<String, u64>) -> usize {
        let prefix = self
            .events
            .iter()
            .take_while(|folded| causally_before(&folded.event.version, stable))
            .count();
        let prefix = prefix - prefix % CHECKPOINT_EVERY;
        if prefix > 0 {
            self.base = self.checkpoints[prefix / CHECKPOINT_EVERY - 1].clone();
            self.settled.extend(
                self.events
                    .drain(..prefix)
                    .filter(|folded| folded.outcome == Outcome::Applied)
                    .map(|folded| folded.event),
            );
            self.checkpoints.drain(..prefix / CHECKPOINT_EVERY);
        }
        let events = &self.events;
        self.settled.retain(|settled| {
            events
                .iter()
                .any(|held| !causally_before(&settled.version, &held.event.version))
        });
        prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// State: the payloads applied, joined by ','. Not commutative, so order mistakes show.
    /// Resolves by keeping the larger payload; can be told to fail on one payload.
    struct Concat {
        fail_on: Option<Vec<u8>>,
        applies: Cell<usize>,
        /// Calls of `apply_run`: how often the state was handed to the fold.
        runs: Cell<usize>,
    }

    impl Concat {
        fn new() -> Self {
            Concat {
                fail_on: None,
                applies: Cell::new(0),
                runs: Cell::new(0),
            }
        }
    }

    impl Fold for Concat {
        fn apply_run(
            &self,
            state: &[u8],
            events: &[EventEnvelope],
        ) -> Result<Vec<u8>, PluginError> {
            self.runs.set(self.runs.get() + 1);
            events
                .iter()
                .try_fold(state.to_vec(), |state, event| self.apply(&state, event))
        }

        fn apply(&self, state: &[u8], event: &EventEnvelope) -> Result<Vec<u8>, PluginError> {
            if self.fail_on.as_ref() == Some(&event.payload) {
                return Err(PluginError::Trapped {
                    plugin: "concat".into(),
                    message: "boom".into(),
                });
            }
            self.applies.set(self.applies.get() + 1);
            let mut next = state.to_vec();
            if !next.is_empty() {
                next.push(b',');
            }
            next.extend_from_slice(&event.payload);
            Ok(next)
        }

        fn resolve(
            &self,
            _: &[u8],
            incoming: &EventEnvelope,
            concurrent: &[&EventEnvelope],
        ) -> Result<Resolution, PluginError> {
            let beaten = concurrent
                .iter()
                .any(|other| other.payload > incoming.payload);
            Ok(if beaten {
                Resolution::Drop
            } else {
                Resolution::Keep
            })
        }
    }

    fn event(
        origin: &str,
        seq: u64,
        timestamp: u64,
        version: &[(&str, u64)],
        payload: &str,
    ) -> EventEnvelope {
        EventEnvelope {
            persistence_id: "t|1".into(),
            seq_nr: seq,
            writer: ulid::Ulid::nil(),
            fencing_token: 0,
            timestamp,
            origin_replica: origin.into(),
            origin_seq_nr: seq,
            version: version.iter().map(|(r, c)| (r.to_string(), *c)).collect(),
            concurrent: false,
            plugin: "t@0".into(),
            payload: payload.as_bytes().to_vec(),
            idempotency: None,
        }
    }

    #[test]
    fn a_late_event_rewinds_and_refolds_in_total_order() {
        let fold = Concat::new();
        let mut log = MergeLog::new(Vec::new());
        // a1 -> a2 on replica a; b1 concurrent with both, timestamp between them.
        assert_eq!(
            log.insert(&fold, event("a", 1, 10, &[("a", 1)], "a1"))
                .unwrap(),
            1
        );
        assert_eq!(
            log.insert(&fold, event("a", 2, 30, &[("a", 2)], "a2"))
                .unwrap(),
            1
        );
        assert_eq!(
            log.insert(&fold, event("b", 1, 20, &[("b", 1)], "b1"))
                .unwrap(),
            3,
            "b1 sorts before a2: refold from the base"
        );
        // b1 is concurrent with a1 ("b1" > "a1": kept); a2 then is concurrent with b1 and loses.
        assert_eq!(log.state(), b"a1,b1");
        let flags: Vec<bool> = log.events().map(|e| e.concurrent).collect();
        assert_eq!(flags, [false, true, true]);
        assert_eq!(
            log.insert(&fold, event("b", 1, 20, &[("b", 1)], "b1"))
                .unwrap(),
            0,
            "duplicates are ignored"
        );
    }

    #[test]
    fn a_rewind_hands_the_state_to_the_fold_once_per_checkpoint_not_per_event() {
        let total = 3 * CHECKPOINT_EVERY as u64;
        // a1..a5 before b1; every later event of a has seen b1, so only b1 is concurrent.
        let a = |seq: u64| {
            let version: &[(&str, u64)] = if seq <= 5 {
                &[("a", seq)]
            } else {
                &[("a", seq), ("b", 1)]
            };
            event("a", seq, seq * 10, version, &format!("a{seq:03}"))
        };
        let late = event("b", 1, 55, &[("b", 1)], "b1");
        let fold = Concat::new();
        let mut log = MergeLog::new(Vec::new());
        for seq in 1..=total {
            log.insert(&fold, a(seq)).unwrap();
        }
        let (runs, applies) = (fold.runs.get(), fold.applies.get());
        assert_eq!(
            log.insert(&fold, late.clone()).unwrap(),
            total as usize + 1,
            "b1 sorts after a5: refold from the base"
        );
        let refold_runs = fold.runs.get() - runs;
        assert_eq!(fold.applies.get() - applies, total as usize + 1);
        // One run up to b1 (its resolver sees the state), then one per checkpoint and the end.
        assert!(
            refold_runs <= 5,
            "{refold_runs} runs for a refold of {} events",
            total + 1
        );
        // The same events delivered in order fold to the same state.
        let in_order = Concat::new();
        let mut expected = MergeLog::new(Vec::new());
        for seq in 1..=5 {
            expected.insert(&in_order, a(seq)).unwrap();
        }
        expected.insert(&in_order, late).unwrap();
        for seq in 6..=total {
            expected.insert(&in_order, a(seq)).unwrap();
        }
        assert_eq!(log.state(), expected.state());
        assert_eq!(
            log.events().map(|e| e.concurrent).collect::<Vec<_>>(),
            expected.events().map(|e| e.concurrent).collect::<Vec<_>>()
        );
    }

    #[test]
    fn causally_ordered_events_are_not_concurrent() {
        let fold = Concat::new();
        let mut log = MergeLog::new(Vec::new());
        log.insert(&fold, event("a", 1, 10, &[("a", 1)], "a1"))
            .unwrap();
        // b saw a1 before writing b1.
        log.insert(&fold, event("b", 1, 11, &[("a", 1), ("b", 1)], "0-smaller"))
            .unwrap();
        assert_eq!(log.state(), b"a1,0-smaller");
        assert!(log.events().all(|e| !e.concurrent));
    }

    #[test]
    fn a_failing_fold_leaves_the_log_untouched() {
        let mut fold = Concat::new();
        let mut log = MergeLog::new(b"base".to_vec());
        for seq in 1..=40 {
            log.insert(
                &fold,
                event("a", seq, seq * 10, &[("a", seq)], &format!("a{seq:02}")),
            )
            .unwrap();
        }
        let before = log.clone();
        fold.fail_on = Some(b"z".to_vec());
        let error = log
            .insert(&fold, event("b", 1, 5, &[("b", 1)], "z"))
            .unwrap_err();
        assert!(error.to_string().contains("boom"));
        assert_eq!(log.state(), before.state());
        assert_eq!(log.len(), before.len());
    }

    #[test]
    fn rewinds_start_from_the_checkpoint_before_the_late_event() {
        let fold = Concat::new();
        let mut log = MergeLog::new(Vec::new());
        let total = 3 * CHECKPOINT_EVERY as u64;
        for seq in 1..=total {
            log.insert(
                &fold,
                event("a", seq, seq * 10, &[("a", seq)], &format!("a{seq:03}")),
            )
            .unwrap();
        }
        // Sorts just before the last event: only the last interval is folded again.
        let late = event("b", 1, total * 10 - 5, &[("b", 1)], "b");
        let refolded = log.insert(&fold, late).unwrap();
        assert!(refolded <= CHECKPOINT_EVERY + 1, "refolded {refolded}");
        let mut expected: Vec<String> = (1..total).map(|s| format!("a{s:03}")).collect();
        // "b" > "a..." so b is kept; the last a is then concurrent with b and loses ("a" < "b").
        expected.push("b".into());
        assert_eq!(
            String::from_utf8(log.state().to_vec()).unwrap(),
            expected.join(",")
        );
    }

    #[test]
    fn compaction_keeps_the_state_and_drops_stable_events() {
        let fold = Concat::new();
        let mut log = MergeLog::new(Vec::new());
        for seq in 1..=70 {
            log.insert(
                &fold,
                event("a", seq, seq * 10, &[("a", seq)], &format!("a{seq:02}")),
            )
            .unwrap();
        }
        let state = log.state().to_vec();
        let stable: BTreeMap<String, u64> = [("a".to_string(), 50)].into();
        assert_eq!(log.compact(&stable), CHECKPOINT_EVERY);
        assert!(log.settled().is_empty(), "every event held follows them");
        assert_eq!(log.len(), 70 - CHECKPOINT_EVERY);
        assert_eq!(log.state(), state);
        // A later event still folds onto the right state.
        log.insert(&fold, event("a", 71, 710, &[("a", 71)], "a71"))
            .unwrap();
        assert!(log.state().ends_with(b"a70,a71"));
    }

    #[test]
    fn compacted_events_stay_concurrent_for_the_events_held_after_them() {
        let fold = Concat::new();
        let every = CHECKPOINT_EVERY as u64;
        let a_events =
            (1..=every).map(|seq| event("a", seq, seq * 10, &[("a", seq)], &format!("a{seq:02}")));
        // b1 saw no a (and loses to them: "0b" < "a.."); c1 saw every a, not b1, and sorts
        // before it: it arrives late and makes b1 fold again ("0b" > "0a": only the a's beat it).
        let b1 = event("b", 1, every * 10 + 5, &[("b", 1)], "0b");
        let b0 = event("c", 1, every * 10 + 1, &[("a", every), ("c", 1)], "0a");
        let mut compacted = MergeLog::new(Vec::new());
        let mut whole = MergeLog::new(Vec::new());
        for event in a_events.chain([b1]) {
            compacted.insert(&fold, event.clone()).unwrap();
            whole.insert(&fold, event).unwrap();
        }
        let stable: BTreeMap<String, u64> = [("a".to_string(), every)].into();
        assert_eq!(compacted.compact(&stable), CHECKPOINT_EVERY);
        assert_eq!(
            compacted.settled().len(),
            CHECKPOINT_EVERY,
            "b1 is concurrent with every a"
        );
        // c1 sorts before b1: b1 is folded again, and must still see the a's as concurrent.
        compacted.insert(&fold, b0.clone()).unwrap();
        whole.insert(&fold, b0).unwrap();
        assert_eq!(compacted.state(), whole.state());
        assert!(
            !String::from_utf8_lossy(whole.state()).contains("0b"),
            "b1 lost to the a's"
        );
        let flags = |log: &MergeLog| log.events().map(|e| e.concurrent).collect::<Vec<_>>();
        assert_eq!(flags(&compacted), flags(&whole)[CHECKPOINT_EVERY..]);
    }

    /// Concat, until a configuration event says `keep`: then every concurrent event is kept.
    /// A configuration naming `missing` cannot be followed here.
    struct Configurable(Concat);

    impl Fold for Configurable {
        fn apply(&self, state: &[u8], event: &EventEnvelope) -> Result<Vec<u8>, PluginError> {
            self.0.apply(state, event)
        }

        fn resolve(
            &self,
            state: &[u8],
            incoming: &EventEnvelope,
            concurrent: &[&EventEnvelope],
        ) -> Result<Resolution, PluginError> {
            self.0.resolve(state, incoming, concurrent)
        }

        fn check_config(&self, config: &[u8]) -> Result<(), PluginError> {
            match config {
                b"missing" => Err(PluginError::VersionMissing {
                    wanted: "missing".into(),
                    loaded: "none".into(),
                }),
                _ => Ok(()),
            }
        }

        fn resolve_under(
            &self,
            config: Option<&[u8]>,
            state: &[u8],
            incoming: &EventEnvelope,
            concurrent: &[&EventEnvelope],
        ) -> Result<Resolution, PluginError> {
            match config {
                Some(b"keep") => Ok(Resolution::Keep),
                _ => self.resolve(state, incoming, concurrent),
            }
        }
    }

    fn config_event(
        seq: u64,
        timestamp: u64,
        version: &[(&str, u64)],
        says: &str,
    ) -> EventEnvelope {
        EventEnvelope {
            plugin: crate::replication::CONFIG_EVENT.into(),
            ..event("a", seq, timestamp, version, says)
        }
    }

    #[test]
    fn a_configuration_event_changes_the_resolver_from_its_position_on_only() {
        let fold = Configurable(Concat::new());
        let mut log = MergeLog::new(Vec::new());
        log.insert(&fold, event("a", 1, 10, &[("a", 1)], "a1"))
            .unwrap();
        // Concurrent with a1 and before the change: the old resolver drops it ("a1" > "0b").
        log.insert(&fold, event("b", 1, 20, &[("b", 1)], "0b"))
            .unwrap();
        log.insert(&fold, config_event(2, 30, &[("a", 2)], "keep"))
            .unwrap();
        assert_eq!(log.state(), b"a1", "the change itself changes no state");
        assert_eq!(log.config(), Some(&b"keep"[..]));
        // Concurrent with a1 and after the change: kept.
        log.insert(&fold, event("b", 2, 40, &[("b", 2)], "0c"))
            .unwrap();
        assert_eq!(log.state(), b"a1,0c");
        // A late event before the change: everything is folded again, and what sorts before
        // the change is still decided by the old resolver.
        log.insert(&fold, event("c", 1, 15, &[("c", 1)], "0x"))
            .unwrap();
        assert_eq!(log.state(), b"a1,0c");
        let concurrent: Vec<bool> = log.events().map(|e| e.concurrent).collect();
        assert_eq!(concurrent, [false, true, true, false, true]);
        // A configuration this replica cannot follow stops the fold there, changing nothing.
        let before = log.state().to_vec();
        let error = log
            .insert(&fold, config_event(3, 50, &[("a", 3)], "missing"))
            .unwrap_err();
        assert_eq!(error.code(), "plugin_version_missing");
        assert_eq!(
            (log.state(), log.len(), log.config()),
            (before.as_slice(), 5, Some(&b"keep"[..]))
        );
    }
}
