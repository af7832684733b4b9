//! The checks every lease backend applies to a request before it touches storage, written once so
//! that all backends refuse exactly the same requests.

use std::time::Duration;

use super::LeaseError;

/// The longest lease name, in bytes: names are keys in every backend and appear in URLs and logs.
pub const NAME_BYTES_MAX: usize = 256;
/// The longest owner, in bytes.
pub const OWNER_BYTES_MAX: usize = 256;
/// The longest time to live: a lease outlives its holder's crash by up to its time to live, so a
/// longer one would leave a resource without a writer for too long. Hold longer by renewing.
pub const TTL_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest time to live. Backends count in whole milliseconds.
pub const TTL_MIN: Duration = Duration::from_millis(1);

/// Checks the name and owner of any request.
pub fn validate_holder(name: &str, owner: &str) -> Result<(), LeaseError> {
    validate_name(name)?;
    check_text("owner", owner, OWNER_BYTES_MAX)
}

/// Checks a lease name.
pub fn validate_name(name: &str) -> Result<(), LeaseError> {
    check_text("lease name", name, NAME_BYTES_MAX)
}

/// Checks an acquire or renew request; returns the time to live in whole milliseconds.
pub fn validate_grant_request(name: &str, owner: &str, ttl: Duration) -> Result<u64, LeaseError> {
    validate_holder(name, owner)?;
    if !(TTL_MIN..=TTL_MAX).contains(&ttl) {
        return Err(LeaseError::Invalid(format!(
            "time to live {ttl:?} is out of range: from {TTL_MIN:?} to {TTL_MAX:?}"
        )));
    }
    // At most TTL_MAX, so it fits.
    Ok(ttl.as_millis() as u64)
}

fn check_text(what: &str, text: &str, bytes_max: usize) -> Result<(), LeaseError> {
    if text.is_empty() {
        return Err(LeaseError::Invalid(format!("the {what} is empty")));
    }
    if text.len() > bytes_max {
        return Err(LeaseError::Invalid(format!(
            "the {what} is {} bytes long, at most {bytes_max}",
            text.len()
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(LeaseError::Invalid(format!(
            "the {what} {text:?} contains control characters"
        )));
    }
    Ok(())
}
