//! The id of the HTTP request being served: the client's own `x-request-id` when it is sane, a
//! new ULID otherwise. It lives in a task-local for the time the request is served, so an error
//! body and a forwarded command can carry it without every function passing it along.

use std::future::Future;
use std::sync::Arc;

/// The header a client may send an id in, and every response carries one in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest client id kept; a longer one is replaced, so a client cannot grow every log
/// line of its requests.
const REQUEST_ID_BYTES_MAX: usize = 128;

tokio::task_local! {
    static REQUEST_ID: Arc<str>;
}

/// The client's id if it is 1 to [`REQUEST_ID_BYTES_MAX`] bytes of visible ASCII (no spaces, no
/// control characters), else `None`.
pub fn parse_request_id(sent: &[u8]) -> Option<&str> {
    let sane = !sent.is_empty()
        && sent.len() <= REQUEST_ID_BYTES_MAX
        && sent.iter().all(|byte| byte.is_ascii_graphic());
    sane.then(|| std::str::from_utf8(sent).ok()).flatten()
}

/// Runs `serve` with `id` as the current request id.
pub async fn in_request<F: Future>(id: Arc<str>, serve: F) -> F::Output {
    REQUEST_ID.scope(id, serve).await
}

/// The id of the request this task is serving, if it is serving one.
pub fn current_request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_visible_ascii_ids_are_kept() {
        assert_eq!(parse_request_id(b"abc-123_X.9"), Some("abc-123_X.9"));
        assert_eq!(parse_request_id(b""), None);
        assert_eq!(parse_request_id(b"has space"), None);
        assert_eq!(parse_request_id(b"tab\there"), None);
        assert_eq!(parse_request_id("caf\u{e9}".as_bytes()), None);
        let longest = "a".repeat(REQUEST_ID_BYTES_MAX);
        assert_eq!(parse_request_id(longest.as_bytes()), Some(longest.as_str()));
        assert_eq!(
            parse_request_id("a".repeat(REQUEST_ID_BYTES_MAX + 1).as_bytes()),
            None
        );
    }
}
