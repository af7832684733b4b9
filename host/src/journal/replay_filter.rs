//! The replay filter: the sans-IO state machine recovery feeds a stream's events through, in sequence
//! order, to detect two hosts having written the same stream (a broken single-writer guarantee) and to
//! apply the configured [`ReplayFilterMode`] to what it finds.
//!
//! # Semantics
//!
//! The rules follow Akka's `ReplayFilter`. Every host stamps its per-boot writer id on the events it
//! writes, so a stream normally reads as runs of writers, each newer than the last: `A A A B B C …`.
//!
//! - **A new writer taking over is normal.** The first event's writer becomes the *current* writer;
//!   an event from a writer not seen before makes that writer current and the previous one *old*.
//!   The filter remembers the last [`ReplayFilterSettings::old_writers_max`] old writers; one forgotten
//!   beyond that is treated as new again.
//! - **An old writer reappearing is the conflict**: an event from an old writer after a newer writer has
//!   written (`A A B B A`) means the old host kept writing after it was replaced. The conflict names the
//!   current writer (expected), the old writer (actual) and the event's seq nr.
//! - **A higher fencing token is a new tenure.** With leases, an old writer reappearing with a token
//!   above the current writer's took the lease back legitimately — the journal refused every append
//!   carrying a lower token — so it is a takeover, not a conflict (`A@1 B@2 A@3`). One reappearing
//!   with a token no higher than the current writer's is still the conflict. Streams written without
//!   a lease carry token 0 throughout and are judged by writer ids alone.
//! - **Look-ahead window.** The filter holds back the last [`ReplayFilterSettings::window_size`] events
//!   before releasing them to be applied. When a new writer's event arrives, every held-back event of
//!   another writer with a seq nr at or above it is also a conflict: the older writer wrote at or after
//!   the point where the newer one took over (`A1 A2 A3 B2`: A's 2 and 3 overlap B's takeover at 2). An
//!   overlapping event already released, more than `window_size` events back, is beyond the window and
//!   goes undetected. The journals here refuse duplicate `(persistence_id, seq_nr)`, so overlap only
//!   shows in streams imported from, or written by, stores without that guarantee; reappearing old
//!   writers are detected at any distance.
//!
//! What each mode does with a conflict:
//!
//! | mode                     | conflict                                                        |
//! |--------------------------|-----------------------------------------------------------------|
//! | `fail` (default)         | [`ReplayFilter::push`] returns [`WriterConflict`]; recovery stops |
//! | `warn`                   | a warn-level log line; the event is replayed                    |
//! | `repair-by-discard-old`  | an error-level log line; the old writer's event is discarded    |
//! | `off`                    | no checks, no window: every event is released as it is pushed   |
//!
//! Events come out of the filter in the order they went in, minus the discarded ones; the caller
//! applies them in that order: those [`ReplayFilter::push`] releases, then, at the end of the stream,
//! those [`ReplayFilter::finish`] returns.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::EventEnvelope;

/// What the replay filter does when it finds a writer conflict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(try_from = "String", into = "&'static str")]
pub enum ReplayFilterMode {
    /// Stop recovery with a [`WriterConflict`]: the entity does not start. The safe default.
    #[default]
    Fail,
    /// Log a warning and replay everything.
    Warn,
    /// Discard the old writer's conflicting events, logging each at error level. Loses data: for
    /// repairing a stream once the old writer is known to be gone.
    RepairByDiscardOld,
    /// No detection at all: for trusted single-host deployments and tests.
    Off,
}

impl ReplayFilterMode {
    /// Every mode, in the order the docs list them.
    pub const ALL: [Self; 4] = [Self::Fail, Self::Warn, Self::RepairByDiscardOld, Self::Off];

    /// The mode's name in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Warn => "warn",
            Self::RepairByDiscardOld => "repair-by-discard-old",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for ReplayFilterMode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for ReplayFilterMode {
    type Err = UnknownReplayFilterMode;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|mode| mode.name() == name)
            .ok_or_else(|| UnknownReplayFilterMode(name.to_owned()))
    }
}

impl TryFrom<String> for ReplayFilterMode {
    type Error = UnknownReplayFilterMode;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        name.parse()
    }
}

impl From<ReplayFilterMode> for &'static str {
    fn from(mode: ReplayFilterMode) -> Self {
        mode.name()
    }
}

/// A configuration string that names no [`ReplayFilterMode`].
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
#[error(
    "unknown replay filter mode `{0}`: expected one of {names}",
    names = ReplayFilterMode::ALL.map(ReplayFilterMode::name).join(", ")
)]
pub struct UnknownReplayFilterMode(pub String);

/// Configuration of a [`ReplayFilter`]. The defaults are Akka's.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ReplayFilterSettings {
    pub mode: ReplayFilterMode,
    /// Events held back before release, so that a new writer's event can still find the overlapping
    /// events of an older writer among them. Bounds the filter's memory. Default 100.
    pub window_size: usize,
    /// Old writers remembered to detect their reappearance. Default 10.
    pub old_writers_max: usize,
}

impl Default for ReplayFilterSettings {
    fn default() -> Self {
        Self {
            mode: ReplayFilterMode::Fail,
            window_size: 100,
            old_writers_max: 10,
        }
    }
}

/// Two writers in conflict over a stream: `actual_writer` wrote the event at `seq_nr` after
/// `expected_writer` had taken over. In `fail` mode recovery stops and the entity does not start.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
#[error(
    "writer conflict in {persistence_id} at seq nr {seq_nr}: the event was written by {actual_writer} \
     after writer {expected_writer} had taken over"
)]
pub struct WriterConflict {
    pub persistence_id: String,
    /// The newer writer, which should be the only one writing from its takeover on.
    pub expected_writer: Ulid,
    /// The older writer that wrote anyway.
    pub actual_writer: Ulid,
    /// The seq nr of the old writer's event.
    pub seq_nr: u64,
}

/// The replay filter of one recovery. Feed it the stream's events in seq order with
/// [`push`](Self::push), apply what it releases, then apply what [`finish`](Self::finish) returns.
#[derive(Debug)]
pub struct ReplayFilter {
    persistence_id: String,
    /// `None` in mode `off`: no checks, nothing held back.
    on_conflict: Option<OnConflict>,
    window_size: usize,
    old_writers_max: usize,
    /// Events not yet released, oldest first; at most `window_size` between calls.
    held_back: VecDeque<EventEnvelope>,
    current_writer: Option<Ulid>,
    /// The highest fencing token seen so far: the current writer's tenure.
    current_fencing_token: u64,
    /// Writers replaced by a newer one, least recently replaced first; at most `old_writers_max`.
    old_writers: VecDeque<Ulid>,
}

/// What a checking mode does with a conflicting event.
#[derive(Clone, Copy, Debug)]
enum OnConflict {
    Fail,
    Replay,
    Discard,
}

impl ReplayFilter {
    pub fn new(persistence_id: impl Into<String>, settings: ReplayFilterSettings) -> Self {
        let on_conflict = match settings.mode {
            ReplayFilterMode::Fail => Some(OnConflict::Fail),
            ReplayFilterMode::Warn => Some(OnConflict::Replay),
            ReplayFilterMode::RepairByDiscardOld => Some(OnConflict::Discard),
            ReplayFilterMode::Off => None,
        };
        Self {
            persistence_id: persistence_id.into(),
            on_conflict,
            window_size: settings.window_size,
            old_writers_max: settings.old_writers_max,
            held_back: VecDeque::new(),
            current_writer: None,
            current_fencing_token: 0,
            old_writers: VecDeque::new(),
        }
    }

    /// Feeds the next event of the stream. Returns the event (if any) that leaves the look-ahead window
    /// and is ready to apply, or, in `fail` mode, the conflict; after a conflict the recovery must stop.
    pub fn push(&mut self, event: EventEnvelope) -> Result<Option<EventEnvelope>, WriterConflict> {
        let Some(on_conflict) = self.on_conflict else {
            return Ok(Some(event));
        };
        let new_tenure = event.fencing_token > self.current_fencing_token;
        self.current_fencing_token = self.current_fencing_token.max(event.fencing_token);
        match self.current_writer {
            Some(current) if current == event.writer => self.held_back.push_back(event),
            Some(current) if self.old_writers.contains(&event.writer) && !new_tenure => {
                let conflict = self.conflict(current, &event);
                match on_conflict {
                    OnConflict::Fail => return Err(conflict),
                    OnConflict::Discard => log_discarded(&conflict),
                    OnConflict::Replay => {
                        log_replayed(&conflict);
                        self.held_back.push_back(event);
                    }
                }
            }
            previous => {
                self.resolve_overlap_with(&event, on_conflict)?;
                // A writer back with a newer tenure is current again, no longer old.
                self.old_writers.retain(|old| *old != event.writer);
                if let Some(previous) = previous {
                    self.old_writers.push_back(previous);
                    if self.old_writers.len() > self.old_writers_max {
                        self.old_writers.pop_front();
                    }
                }
                self.current_writer = Some(event.writer);
                self.held_back.push_back(event);
            }
        }
        Ok(self.release_beyond_window())
    }

    /// Ends the stream: returns the held-back events, to apply in order after those already released.
    pub fn finish(self) -> Vec<EventEnvelope> {
        self.held_back.into()
    }

    /// Applies `on_conflict` to the held-back events of other writers that overlap the takeover by
    /// `new_writer_event`'s writer. On [`OnConflict::Fail`] returns the first conflict and changes
    /// nothing.
    fn resolve_overlap_with(
        &mut self,
        new_writer_event: &EventEnvelope,
        on_conflict: OnConflict,
    ) -> Result<(), WriterConflict> {
        let overlaps = |held: &EventEnvelope| {
            held.writer != new_writer_event.writer && held.seq_nr >= new_writer_event.seq_nr
        };
        let new_writer = new_writer_event.writer;
        match on_conflict {
            OnConflict::Fail => match self.held_back.iter().find(|held| overlaps(held)) {
                Some(held) => Err(self.conflict(new_writer, held)),
                None => Ok(()),
            },
            OnConflict::Replay => {
                for held in self.held_back.iter().filter(|held| overlaps(held)) {
                    log_replayed(&self.conflict(new_writer, held));
                }
                Ok(())
            }
            OnConflict::Discard => {
                let (discarded, kept) = std::mem::take(&mut self.held_back)
                    .into_iter()
                    .partition::<VecDeque<_>, _>(|held| overlaps(held));
                for held in &discarded {
                    log_discarded(&self.conflict(new_writer, held));
                }
                self.held_back = kept;
                Ok(())
            }
        }
    }

    /// At most one event leaves per push, since a push holds back at most one.
    fn release_beyond_window(&mut self) -> Option<EventEnvelope> {
        if self.held_back.len() > self.window_size {
            self.held_back.pop_front()
        } else {
            None
        }
    }

    fn conflict(&self, expected_writer: Ulid, event: &EventEnvelope) -> WriterConflict {
        WriterConflict {
            persistence_id: self.persistence_id.clone(),
            expected_writer,
            actual_writer: event.writer,
            seq_nr: event.seq_nr,
        }
    }
}

fn log_replayed(conflict: &WriterConflict) {
    tracing::warn!(
        persistence_id = %conflict.persistence_id,
        seq_nr = conflict.seq_nr,
        expected_writer = %conflict.expected_writer,
        actual_writer = %conflict.actual_writer,
        "{conflict}; replaying the event anyway (replay filter mode warn)"
    );
}

fn log_discarded(conflict: &WriterConflict) {
    tracing::error!(
        persistence_id = %conflict.persistence_id,
        seq_nr = conflict.seq_nr,
        expected_writer = %conflict.expected_writer,
        actual_writer = %conflict.actual_writer,
        "{conflict}; DISCARDING the event (replay filter mode repair-by-discard-old)"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

    use super::*;
    use crate::journal::conformance::sample_event;

    const PID: &str = "order|1";
    const WRITER_NAMES: [char; 3] = ['A', 'B', 'C'];

    /// Writers A, B, C, in the order their hosts booted.
    fn writer(name: char) -> Ulid {
        Ulid::from_parts(1_700_000_000_000 + u64::from(name), u128::from(name))
    }

    /// A stream written as `"A1 A2 B3"`: writer name, then seq nr, then optionally `@` and the
    /// fencing token the event was written with (`"A1@1 B2@2"`; 0 without).
    fn stream(spec: &str) -> Vec<EventEnvelope> {
        spec.split_whitespace()
            .map(|token| {
                let mut chars = token.chars();
                let name = chars.next().expect("a writer name");
                let (seq_nr, fencing_token) = match chars.as_str().split_once('@') {
                    Some((seq_nr, fencing_token)) => (seq_nr, fencing_token),
                    None => (chars.as_str(), "0"),
                };
                EventEnvelope {
                    fencing_token: fencing_token.parse().expect("a fencing token"),
                    ..sample_event(PID, seq_nr.parse().expect("a seq nr"), writer(name))
                }
            })
            .collect()
    }

    fn spec_of(events: &[EventEnvelope]) -> String {
        events
            .iter()
            .map(|event| {
                let name = WRITER_NAMES
                    .into_iter()
                    .find(|name| writer(*name) == event.writer)
                    .expect("a known writer");
                match event.fencing_token {
                    0 => format!("{name}{}", event.seq_nr),
                    token => format!("{name}{}@{token}", event.seq_nr),
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Records every log line's level and message.
    #[derive(Clone, Default)]
    struct CapturedLogs(Arc<Mutex<Vec<(Level, String)>>>);

    impl CapturedLogs {
        fn lines(&self) -> Vec<(Level, String)> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    impl<S: Subscriber> Layer<S> for CapturedLogs {
        fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
            struct Message(String);
            impl Visit for Message {
                fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((*event.metadata().level(), message.0));
        }
    }

    /// Replays `spec` through a filter, applying what it releases, and captures the filter's logs.
    fn replay(
        spec: &str,
        settings: ReplayFilterSettings,
    ) -> (Result<String, WriterConflict>, Vec<(Level, String)>) {
        let logs = CapturedLogs::default();
        let subscriber = tracing_subscriber::registry().with(logs.clone());
        let outcome = tracing::subscriber::with_default(subscriber, || {
            let mut filter = ReplayFilter::new(PID, settings);
            let mut applied = Vec::new();
            for event in stream(spec) {
                applied.extend(filter.push(event)?);
            }
            applied.extend(filter.finish());
            Ok(spec_of(&applied))
        });
        (outcome, logs.lines())
    }

    fn conflict(expected: char, actual: char, seq_nr: u64) -> WriterConflict {
        WriterConflict {
            persistence_id: PID.to_owned(),
            expected_writer: writer(expected),
            actual_writer: writer(actual),
            seq_nr,
        }
    }

    /// The log line the filter writes for `(expected, actual, seq nr)`: a warning when the event is
    /// replayed, an error when it is discarded.
    fn log_line(level: Level, (expected, actual, seq_nr): (char, char, u64)) -> (Level, String) {
        let conflict = conflict(expected, actual, seq_nr);
        let message = if level == Level::WARN {
            format!("{conflict}; replaying the event anyway (replay filter mode warn)")
        } else {
            format!("{conflict}; DISCARDING the event (replay filter mode repair-by-discard-old)")
        };
        (level, message)
    }

    struct Case {
        name: &'static str,
        mode: ReplayFilterMode,
        window_size: usize,
        old_writers_max: usize,
        stream: &'static str,
        /// What is applied, or the conflict `(expected, actual, seq nr)` that stops recovery.
        outcome: Result<&'static str, (char, char, u64)>,
        /// Conflicts logged, as `(expected, actual, seq nr)`, at the mode's level.
        logged: &'static [(char, char, u64)],
    }

    const DEFAULT_WINDOW: usize = 100;
    const DEFAULT_OLD_WRITERS: usize = 10;

    fn case(
        name: &'static str,
        mode: ReplayFilterMode,
        stream: &'static str,
        outcome: Result<&'static str, (char, char, u64)>,
        logged: &'static [(char, char, u64)],
    ) -> Case {
        Case {
            name,
            mode,
            window_size: DEFAULT_WINDOW,
            old_writers_max: DEFAULT_OLD_WRITERS,
            stream,
            outcome,
            logged,
        }
    }

    fn cases() -> Vec<Case> {
        use ReplayFilterMode::{Fail, Off, RepairByDiscardOld as Repair, Warn};
        let one_writer = "A1 A2 A3";
        let takeovers = "A1 A2 B3 B4 C5";
        let reappearing = "A1 A2 B3 B4 A5 B6";
        let interleaved = "A1 B2 A3 B4 A5";
        let overlap = "A1 A2 A3 B2";
        let lease_taken_back = "A1@1 A2@1 B3@2 A4@3 A5@3";
        let fenced_writer_reappears = "A1@1 B2@2 A3@1";
        let mut cases = Vec::new();
        for mode in ReplayFilterMode::ALL {
            cases.push(case(
                "an old writer takes the lease back with a higher token",
                mode,
                lease_taken_back,
                Ok(lease_taken_back),
                &[],
            ));
            cases.push(case("one writer", mode, one_writer, Ok(one_writer), &[]));
            cases.push(case(
                "new writers taking over",
                mode,
                takeovers,
                Ok(takeovers),
                &[],
            ));
        }
        cases.extend([
            case(
                "an old writer reappears with its old token",
                Fail,
                fenced_writer_reappears,
                Err(('B', 'A', 3)),
                &[],
            ),
            case(
                "old writer reappears",
                Fail,
                reappearing,
                Err(('B', 'A', 5)),
                &[],
            ),
            case(
                "old writer reappears",
                Warn,
                reappearing,
                Ok(reappearing),
                &[('B', 'A', 5)],
            ),
            case(
                "old writer reappears",
                Repair,
                reappearing,
                Ok("A1 A2 B3 B4 B6"),
                &[('B', 'A', 5)],
            ),
            case(
                "old writer reappears",
                Off,
                reappearing,
                Ok(reappearing),
                &[],
            ),
            case(
                "interleaved writers",
                Fail,
                interleaved,
                Err(('B', 'A', 3)),
                &[],
            ),
            case(
                "interleaved writers",
                Warn,
                interleaved,
                Ok(interleaved),
                &[('B', 'A', 3), ('B', 'A', 5)],
            ),
            case(
                "interleaved writers",
                Repair,
                interleaved,
                Ok("A1 B2 B4"),
                &[('B', 'A', 3), ('B', 'A', 5)],
            ),
            case(
                "interleaved writers",
                Off,
                interleaved,
                Ok(interleaved),
                &[],
            ),
            Case {
                window_size: 1,
                ..case(
                    "old writer reappears far beyond the window: still detected",
                    Fail,
                    "A1 B2 B3 B4 B5 A6",
                    Err(('B', 'A', 6)),
                    &[],
                )
            },
            Case {
                old_writers_max: 2,
                ..case(
                    "old writer still remembered",
                    Fail,
                    "A1 B2 C3 A4",
                    Err(('C', 'A', 4)),
                    &[],
                )
            },
            Case {
                old_writers_max: 1,
                ..case(
                    "old writer forgotten beyond old_writers_max takes over as new",
                    Fail,
                    "A1 B2 C3 A4",
                    Ok("A1 B2 C3 A4"),
                    &[],
                )
            },
            Case {
                window_size: 2,
                ..case(
                    "overlap inside the window",
                    Fail,
                    overlap,
                    Err(('B', 'A', 2)),
                    &[],
                )
            },
            Case {
                window_size: 1,
                ..case(
                    "overlap partly beyond the window",
                    Fail,
                    overlap,
                    Err(('B', 'A', 3)),
                    &[],
                )
            },
            Case {
                window_size: 0,
                ..case("overlap beyond the window", Fail, overlap, Ok(overlap), &[])
            },
            Case {
                window_size: 2,
                ..case(
                    "overlap inside the window",
                    Repair,
                    overlap,
                    Ok("A1 B2"),
                    &[('B', 'A', 2), ('B', 'A', 3)],
                )
            },
            Case {
                window_size: 1,
                ..case(
                    "overlap partly beyond the window",
                    Repair,
                    overlap,
                    Ok("A1 A2 B2"),
                    &[('B', 'A', 3)],
                )
            },
            Case {
                window_size: 2,
                ..case(
                    "overlap inside the window",
                    Warn,
                    overlap,
                    Ok(overlap),
                    &[('B', 'A', 2), ('B', 'A', 3)],
                )
            },
        ]);
        cases
    }

    #[test]
    fn replays_each_case_as_the_mode_says() {
        for case in cases() {
            let settings = ReplayFilterSettings {
                mode: case.mode,
                window_size: case.window_size,
                old_writers_max: case.old_writers_max,
            };
            let (outcome, logs) = replay(case.stream, settings);
            let label = format!(
                "{} ({}, window {}, {} old writers): {}",
                case.name, case.mode, case.window_size, case.old_writers_max, case.stream
            );
            let expected_outcome = case
                .outcome
                .map(str::to_owned)
                .map_err(|(expected, actual, seq_nr)| conflict(expected, actual, seq_nr));
            assert_eq!(outcome, expected_outcome, "{label}");

            let level = match case.mode {
                ReplayFilterMode::RepairByDiscardOld => Level::ERROR,
                _ => Level::WARN,
            };
            let expected_logs: Vec<_> = case
                .logged
                .iter()
                .map(|logged| log_line(level, *logged))
                .collect();
            assert_eq!(logs, expected_logs, "{label}");
        }
    }

    #[test]
    fn releases_an_event_once_the_window_has_passed_it() {
        let settings = ReplayFilterSettings {
            window_size: 2,
            ..ReplayFilterSettings::default()
        };
        let mut filter = ReplayFilter::new(PID, settings);
        let released: Vec<Option<u64>> = stream("A1 A2 A3 B4 B5")
            .into_iter()
            .map(|event| {
                let released = filter.push(event).expect("no conflict");
                released.map(|event| event.seq_nr)
            })
            .collect();
        assert_eq!(released, [None, None, Some(1), Some(2), Some(3)]);
        assert_eq!(spec_of(&filter.finish()), "B4 B5");

        let mut off = ReplayFilter::new(
            PID,
            ReplayFilterSettings {
                mode: ReplayFilterMode::Off,
                ..settings
            },
        );
        let event = sample_event(PID, 1, writer('A'));
        assert_eq!(
            off.push(event.clone()),
            Ok(Some(event)),
            "off holds nothing back"
        );
        assert_eq!(off.finish(), Vec::new());
    }

    #[test]
    fn a_writer_conflict_names_both_writers_and_the_seq_nr() {
        let message = conflict('B', 'A', 5).to_string();
        assert_eq!(
            message,
            format!(
                "writer conflict in order|1 at seq nr 5: the event was written by {} after writer {} \
                 had taken over",
                writer('A'),
                writer('B')
            )
        );
    }

    #[test]
    fn modes_parse_from_their_configuration_names() {
        for (name, mode) in [
            ("fail", ReplayFilterMode::Fail),
            ("warn", ReplayFilterMode::Warn),
            (
                "repair-by-discard-old",
                ReplayFilterMode::RepairByDiscardOld,
            ),
            ("off", ReplayFilterMode::Off),
        ] {
            assert_eq!(name.parse(), Ok(mode));
            assert_eq!(mode.to_string(), name);
            assert_eq!(
                serde_json::to_string(&mode).ok(),
                Some(format!("\"{name}\""))
            );
        }
        assert_eq!(ReplayFilterMode::default(), ReplayFilterMode::Fail);
        assert_eq!(
            "Repair"
                .parse::<ReplayFilterMode>()
                .map_err(|error| error.to_string()),
            Err(
                "unknown replay filter mode `Repair`: expected one of fail, warn, \
                 repair-by-discard-old, off"
                    .to_owned()
            )
        );
    }

    #[test]
    fn settings_deserialize_from_configuration() {
        let settings: ReplayFilterSettings =
            serde_json::from_str(r#"{ "mode": "repair-by-discard-old", "window-size": 5 }"#)
                .expect("valid settings");
        assert_eq!(
            settings,
            ReplayFilterSettings {
                mode: ReplayFilterMode::RepairByDiscardOld,
                window_size: 5,
                old_writers_max: 10,
            }
        );
        let error = serde_json::from_str::<ReplayFilterSettings>(r#"{ "mode": "strict" }"#)
            .expect_err("an unknown mode is refused");
        assert!(
            error
                .to_string()
                .contains("unknown replay filter mode `strict`"),
            "{error}"
        );
    }
}
