//! How the CLI prints what a node answered: JSON for scripts, or tables for people — chosen by
//! `--output`, and by default by whether stdout is a terminal. HLC timestamps get a readable UTC
//! time beside them. A reader that goes away (`weft plugin list | head -1`) ends the command
//! quietly: writing fails with [`OutputClosed`], which the binary turns into exit status 0.

use serde_json::Value;
use std::io::Write as _;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns; nested values as compact JSON.
    Table,
    /// The node's JSON, pretty-printed (one compact line per item when following).
    Json,
}

impl Format {
    /// The format asked for, else tables on a terminal and JSON into a pipe or file.
    pub fn chosen(asked: Option<Format>) -> Format {
        asked.unwrap_or_else(|| {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                Format::Table
            } else {
                Format::Json
            }
        })
    }
}

/// Stdout was closed by its reader: nothing more can be shown, and nothing went wrong.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct OutputClosed;

/// Prints one answer.
pub fn print(value: &Value, format: Format) -> anyhow::Result<()> {
    let value = with_times(value);
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&value)?,
        Format::Table => render(&value),
    };
    write_line(&text)
}

/// Prints one item of a stream (a followed event, a subscribed value) on a line of its own.
pub fn print_item(value: &Value, format: Format) -> anyhow::Result<()> {
    let value = with_times(value);
    let text = match format {
        Format::Json => serde_json::to_string(&value)?,
        Format::Table => match &value {
            Value::Object(fields) => fields
                .iter()
                .filter(|(key, _)| key.as_str() != "timestamp")
                .map(|(key, value)| format!("{key}={}", cell(value)))
                .collect::<Vec<_>>()
                .join("  "),
            other => cell(other),
        },
    };
    write_line(&text)
}

fn write_line(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(OutputClosed.into()),
        other => Ok(other?),
    }
}

/// `value` with a `time` (UTC, RFC 3339) beside every `timestamp`, which is an HLC value: its
/// upper 48 bits are milliseconds since the Unix epoch.
fn with_times(value: &Value) -> Value {
    match value {
        Value::Object(fields) => {
            let mut out = serde_json::Map::new();
            for (key, field) in fields {
                out.insert(key.clone(), with_times(field));
                if key == "timestamp"
                    && let Some(hlc) = field.as_u64()
                    && !fields.contains_key("time")
                {
                    out.insert("time".into(), Value::String(hlc_time(hlc)));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(with_times).collect()),
        other => other.clone(),
    }
}

/// The wall-clock time an HLC value was taken at, in UTC.
pub fn hlc_time(hlc: u64) -> String {
    let physical_ms = weft_crdt::HlcTimestamp::from_u64(hlc).physical_ms();
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(physical_ms)).to_string()
}

/// An answer as text for people: an object's plain fields as `name  value` lines, then each of
/// its lists of objects as a table under its name; a list of objects as a table.
fn render(value: &Value) -> String {
    match value {
        Value::Object(fields) => {
            let (lists, plain): (Vec<_>, Vec<_>) =
                fields.iter().partition(|(_, field)| is_table(field));
            let width = plain.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
            let mut blocks: Vec<String> = Vec::new();
            if !plain.is_empty() {
                blocks.push(
                    plain
                        .iter()
                        .map(|(key, field)| format!("{key:width$}  {}", cell(field)))
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
            for (key, list) in lists {
                blocks.push(format!("{key}:\n{}", render(list)));
            }
            blocks.join("\n\n")
        }
        Value::Array(rows) if is_table(value) => table(rows),
        other => cell(other),
    }
}

fn is_table(value: &Value) -> bool {
    matches!(value, Value::Array(rows) if !rows.is_empty() && rows.iter().all(Value::is_object))
}

/// Columns a table shows first, in this order, when its rows have them; the others follow by
/// name.
const LEADING_COLUMNS: [&str; 6] = [
    "name",
    "entity_type",
    "entity_id",
    "seq_nr",
    "version",
    "time",
];

/// Rows of objects as aligned columns, one per key.
fn table(rows: &[Value]) -> String {
    let mut columns: Vec<&str> = Vec::new();
    for row in rows.iter().filter_map(Value::as_object) {
        for key in row.keys() {
            if !columns.contains(&key.as_str()) {
                columns.push(key);
            }
        }
    }
    columns.sort_by_key(|column| {
        let leading = LEADING_COLUMNS.iter().position(|first| first == column);
        (leading.unwrap_or(LEADING_COLUMNS.len()), *column)
    });
    // The HLC value stays in JSON output; a table shows the time it stands for.
    if columns.contains(&"time") {
        columns.retain(|column| *column != "timestamp");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|column| cell(&row[*column])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(index, column)| {
            cells
                .iter()
                .map(|row| row[index].chars().count())
                .chain([column.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |texts: Vec<String>| {
        texts
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let header = line(columns.iter().map(|column| column.to_uppercase()).collect());
    std::iter::once(header)
        .chain(cells.into_iter().map(line))
        .collect::<Vec<_>>()
        .join("\n")
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hlc_values_read_as_utc_times() {
        // 2026-12-07T13:48:28.123Z, logical count 5.
        let hlc = (1_796_651_308_123u64 << 16) | 5;
        assert_eq!(hlc_time(hlc), "2026-12-07T13:48:28.123Z");
        let shown = with_times(&json!({"events": [{"seq_nr": 1, "timestamp": hlc}]}));
        assert_eq!(shown["events"][0]["time"], "2026-12-07T13:48:28.123Z");
        assert_eq!(shown["events"][0]["timestamp"], hlc);
    }

    #[test]
    fn lists_of_objects_become_aligned_tables_under_their_name() {
        let text = render(&json!({
            "entity_type": "counter",
            "events": [
                {"seq_nr": 1, "payload": {"by": 2}},
                {"seq_nr": 10, "payload": null, "plugin": "counter@1"},
            ],
        }));
        assert_eq!(
            text,
            "entity_type  counter\n\nevents:\n\
             SEQ_NR  PAYLOAD   PLUGIN\n\
             1       {\"by\":2}  -\n\
             10      -         counter@1"
        );
    }
}
