//! Range checks for numeric settings: every number accepted in `weft.toml` or over the API is
//! checked against what the code can honour, and refused naming its range.

use std::ops::RangeInclusive;

/// A setting's name, its value, and the values the code can honour.
pub type Setting<'a> = (&'a str, u64, RangeInclusive<u64>);

/// Refuses the first setting whose value is outside its range: `[table] name = value is outside
/// start ..= end`.
pub fn check_ranges(table: &str, settings: &[Setting<'_>]) -> Result<(), String> {
    for (name, value, range) in settings {
        if !range.contains(value) {
            return Err(format!(
                "[{table}] {name} = {value} is outside {} ..= {}",
                range.start(),
                range.end()
            ));
        }
    }
    Ok(())
}
