//! What a guest may hand the host in one call, each limit named with its unit, and the check of
//! every reply, event and state at the boundary.
//!
//! A guest's output is checked before anything else sees it: it must be exactly one well-formed
//! MessagePack value (see [`crate::msgpack`]) within its size limit, and a command may emit only
//! so many events. Anything else is the plugin's error, answered with a code naming the limit;
//! nothing of the call is persisted or answered, and the host is unharmed.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::error::PluginError;
use crate::msgpack;
use crate::settings::check_ranges;

/// The `[limits.output]` table of `weft.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputLimits {
    /// Bytes of one command's reply.
    pub reply_bytes_max: usize,
    /// Bytes of one event's payload.
    pub event_bytes_max: usize,
    /// Events one command may emit (or one resolver decision may put in an event's place).
    pub events_per_command_max: usize,
    /// Bytes of an entity's state, as `init` and `apply-event` return it.
    pub state_bytes_max: usize,
    /// Bytes of the text a handler rejects a command with.
    pub error_text_bytes_max: usize,
    /// Bytes of one guest log line; a longer line is cut, saying how much was cut.
    pub log_line_bytes_max: usize,
    /// Log lines one call may write; the rest are dropped with one warning.
    pub log_lines_per_call_max: u32,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            reply_bytes_max: 1 << 20,
            event_bytes_max: 1 << 20,
            events_per_command_max: 1_000,
            state_bytes_max: 16 << 20,
            error_text_bytes_max: 16 << 10,
            log_line_bytes_max: 4 << 10,
            log_lines_per_call_max: 64,
        }
    }
}

/// Entity types' own output limits, where they set them: read by every plugin version at each
/// call, by the call context's entity type.
#[derive(Default)]
pub struct TypeOutputLimits {
    by_type: RwLock<HashMap<String, Arc<OutputLimits>>>,
}

impl TypeOutputLimits {
    pub fn set(&self, entity_type: &str, limits: Option<OutputLimits>) {
        let mut by_type = self.by_type.write().unwrap_or_else(|p| p.into_inner());
        match limits {
            Some(limits) => by_type.insert(entity_type.to_owned(), Arc::new(limits)),
            None => by_type.remove(entity_type),
        };
    }

    /// The limits of `entity_type`, else `node`'s.
    pub fn of(&self, entity_type: &str, node: &Arc<OutputLimits>) -> Arc<OutputLimits> {
        let by_type = self.by_type.read().unwrap_or_else(|p| p.into_inner());
        by_type.get(entity_type).unwrap_or(node).clone()
    }
}

/// One of the limits, as codes and messages name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputLimit {
    ReplyBytes,
    EventBytes,
    EventsPerCommand,
    StateBytes,
    ErrorTextBytes,
}

impl OutputLimit {
    /// The setting's name in `[limits.output]`.
    pub fn name(self) -> &'static str {
        match self {
            OutputLimit::ReplyBytes => "reply_bytes_max",
            OutputLimit::EventBytes => "event_bytes_max",
            OutputLimit::EventsPerCommand => "events_per_command_max",
            OutputLimit::StateBytes => "state_bytes_max",
            OutputLimit::ErrorTextBytes => "error_text_bytes_max",
        }
    }

    /// The API error code of going over it.
    pub fn code(self) -> &'static str {
        match self {
            OutputLimit::ReplyBytes => "plugin_reply_bytes_max_exceeded",
            OutputLimit::EventBytes => "plugin_event_bytes_max_exceeded",
            OutputLimit::EventsPerCommand => "plugin_events_per_command_max_exceeded",
            OutputLimit::StateBytes => "plugin_state_bytes_max_exceeded",
            OutputLimit::ErrorTextBytes => "plugin_error_text_bytes_max_exceeded",
        }
    }
}

/// The ceilings the settings are checked against: what the host can carry without one call
/// taking a large share of a node's memory.
const BYTES_CEILING: u64 = 256 << 20;

impl OutputLimits {
    /// Refuses settings outside what the host can honour, naming the range.
    pub fn validate(&self) -> Result<(), String> {
        let ranges = [
            (
                "reply_bytes_max",
                self.reply_bytes_max as u64,
                1..=BYTES_CEILING,
            ),
            (
                "event_bytes_max",
                self.event_bytes_max as u64,
                1..=BYTES_CEILING,
            ),
            (
                "events_per_command_max",
                self.events_per_command_max as u64,
                1..=100_000,
            ),
            (
                "state_bytes_max",
                self.state_bytes_max as u64,
                1..=BYTES_CEILING,
            ),
            (
                "error_text_bytes_max",
                self.error_text_bytes_max as u64,
                1..=1 << 20,
            ),
            (
                "log_line_bytes_max",
                self.log_line_bytes_max as u64,
                16..=1 << 20,
            ),
            (
                "log_lines_per_call_max",
                u64::from(self.log_lines_per_call_max),
                0..=10_000,
            ),
        ];
        check_ranges("limits.output", &ranges)
    }

    /// A reply: one MessagePack value within [`reply_bytes_max`](Self::reply_bytes_max).
    pub fn check_reply(&self, plugin: &str, reply: &[u8]) -> Result<(), PluginError> {
        self.check_value(
            plugin,
            "the reply",
            reply,
            OutputLimit::ReplyBytes,
            self.reply_bytes_max,
        )
    }

    /// A command's (or a resolver's replacement) events: how many, and each one's bytes.
    pub fn check_events(&self, plugin: &str, events: &[Vec<u8>]) -> Result<(), PluginError> {
        if events.len() > self.events_per_command_max {
            return Err(exceeded(
                plugin,
                OutputLimit::EventsPerCommand,
                self.events_per_command_max,
                format!("{} events", events.len()),
            ));
        }
        for (index, event) in events.iter().enumerate() {
            let what = format!("event {index}");
            self.check_value(
                plugin,
                &what,
                event,
                OutputLimit::EventBytes,
                self.event_bytes_max,
            )?;
        }
        Ok(())
    }

    /// An entity's state as `init` or `apply-event` returned it.
    pub fn check_state(&self, plugin: &str, state: &[u8]) -> Result<(), PluginError> {
        self.check_value(
            plugin,
            "the state",
            state,
            OutputLimit::StateBytes,
            self.state_bytes_max,
        )
    }

    /// A handler's rejection text.
    pub fn check_error_text(&self, plugin: &str, text: &str) -> Result<(), PluginError> {
        if text.len() > self.error_text_bytes_max {
            return Err(exceeded(
                plugin,
                OutputLimit::ErrorTextBytes,
                self.error_text_bytes_max,
                format!("a rejection of {} bytes", text.len()),
            ));
        }
        Ok(())
    }

    /// A log line, cut to [`log_line_bytes_max`](Self::log_line_bytes_max) at a character
    /// boundary, saying how much was cut.
    pub fn cut_log_line(&self, line: String) -> String {
        if line.len() <= self.log_line_bytes_max {
            return line;
        }
        let mut end = self.log_line_bytes_max;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} more bytes cut)", &line[..end], line.len() - end)
    }

    fn check_value(
        &self,
        plugin: &str,
        what: &str,
        bytes: &[u8],
        limit: OutputLimit,
        max: usize,
    ) -> Result<(), PluginError> {
        if bytes.len() > max {
            return Err(exceeded(
                plugin,
                limit,
                max,
                format!("{what} of {} bytes", bytes.len()),
            ));
        }
        msgpack::check_one_value(bytes).map_err(|error| PluginError::InvalidOutput {
            plugin: plugin.to_owned(),
            reason: format!("{what} is not one MessagePack value: {error}"),
        })
    }
}

fn exceeded(plugin: &str, limit: OutputLimit, max: usize, actual: String) -> PluginError {
    PluginError::OutputLimitExceeded {
        plugin: plugin.to_owned(),
        limit,
        max,
        actual,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OutputLimits {
        OutputLimits {
            reply_bytes_max: 8,
            event_bytes_max: 4,
            events_per_command_max: 2,
            state_bytes_max: 16,
            error_text_bytes_max: 5,
            log_line_bytes_max: 16,
            log_lines_per_call_max: 1,
        }
    }

    fn code(result: Result<(), PluginError>) -> &'static str {
        result.unwrap_err().code()
    }

    #[test]
    fn output_over_a_limit_names_the_limit() {
        let limits = limits();
        assert!(limits.check_reply("p", &[0xa3, b'a', b'b', b'c']).is_ok());
        assert_eq!(
            code(limits.check_reply("p", &[0xc4, 7, 0, 0, 0, 0, 0, 0, 0])),
            "plugin_reply_bytes_max_exceeded"
        );
        assert_eq!(
            code(limits.check_events("p", &[vec![1], vec![2], vec![3]])),
            "plugin_events_per_command_max_exceeded"
        );
        assert_eq!(
            code(limits.check_events("p", &[vec![1], vec![0xa4, 1, 2, 3, 4]])),
            "plugin_event_bytes_max_exceeded"
        );
        assert_eq!(
            code(limits.check_state(
                "p",
                &[0xc4, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            )),
            "plugin_state_bytes_max_exceeded"
        );
        assert_eq!(
            code(limits.check_error_text("p", "too long")),
            "plugin_error_text_bytes_max_exceeded"
        );
    }

    #[test]
    fn output_must_be_one_msgpack_value() {
        let limits = limits();
        for bad in [&[][..], &[0xc1], &[0xc0, 0xc0], &[0x92, 1]] {
            assert_eq!(code(limits.check_reply("p", bad)), "plugin_invalid_output");
        }
        assert_eq!(
            code(limits.check_events("p", &[vec![1], vec![0xc1]])),
            "plugin_invalid_output"
        );
    }

    #[test]
    fn long_log_lines_are_cut_at_a_character() {
        let line = limits().cut_log_line("ééééééééééé".into());
        assert!(line.starts_with("éééééééé…"), "{line}");
        assert!(line.ends_with("(6 more bytes cut)"), "{line}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1_000))]

        /// The runtime's settings: refused naming the range, or usable without a panic.
        #[test]
        fn runtime_settings_are_refused_or_honoured(
            cpu in proptest::prelude::any::<u64>(), wait in proptest::prelude::any::<u64>(),
            ttl in 0..u64::MAX, reply in proptest::prelude::any::<usize>(),
        ) {
            use crate::plugin::RuntimeLimits;
            let limits = RuntimeLimits {
                cpu_per_call_ms: cpu % 1_000_000,
                instance_wait_ms: wait,
                idle_instance_ttl_ms: ttl,
                output: OutputLimits { reply_bytes_max: reply, ..OutputLimits::default() },
                ..RuntimeLimits::default()
            };
            match limits.validate() {
                Ok(()) => {
                    let now = std::time::Instant::now();
                    let _ = now + std::time::Duration::from_millis(limits.instance_wait_ms);
                    let _ = now + std::time::Duration::from_millis(limits.idle_instance_ttl_ms);
                    let _ = limits.epoch_deadline_ticks();
                }
                Err(error) => proptest::prop_assert!(error.contains("is outside"), "{error}"),
            }
        }
    }

    #[test]
    fn settings_outside_their_range_are_refused() {
        assert!(OutputLimits::default().validate().is_ok());
        let zero = OutputLimits {
            events_per_command_max: 0,
            ..OutputLimits::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .contains("events_per_command_max = 0")
        );
        let huge = OutputLimits {
            reply_bytes_max: usize::MAX,
            ..OutputLimits::default()
        };
        assert!(huge.validate().unwrap_err().contains("reply_bytes_max"));
    }
}
