//! The web console: `GET /` and its two static assets under `/console/`, embedded in the binary
//! (plain HTML, CSS and JavaScript in `console/`, no build step, nothing fetched from elsewhere).
//!
//! The console is static and served without a token; everything it shows comes from the API's
//! own routes, called by the page with the bearer token the user typed in (kept in the browser
//! tab's `sessionStorage`), so it can show no more than that token may see.

use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The page may load its scripts, styles and data from this node only: no inline script, no
/// third-party origin, not framed by another site.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

/// `GET /`: the console's page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /console/{asset}`: the page's script and style sheet.
pub async fn static_asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    match name.as_str() {
        "console.js" => Ok(asset("text/javascript; charset=utf-8", CONSOLE_JS)),
        "console.css" => Ok(asset("text/css; charset=utf-8", CONSOLE_CSS)),
        _ => Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("the console has no asset {name:?}"),
        )),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A new binary may bring a new console: the browser asks again rather than keep a stale one.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
