//! The outermost middleware of the API: gives every request its id (the client's sane
//! `x-request-id`, else a new ULID), serves it inside a `request` span carrying that id, the
//! method and the matched route, writes one access line on target `weft::access` when the
//! response's headers are ready, records its latency in `/metrics`, and sends the id back in
//! `x-request-id`.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

use super::Identity;
use crate::observability::metrics::{UNMATCHED_ROUTE, observe_request};
use crate::observability::{REQUEST_ID_HEADER, in_request, parse_request_id};

/// Routes probed often by orchestrators: their access lines are written at debug, not info.
const QUIET_ROUTES: [&str; 2] = ["/health", "/ready"];

pub async fn observe(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id: Arc<str> = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|sent| parse_request_id(sent.as_bytes()))
        .map(Arc::from)
        .unwrap_or_else(|| ulid::Ulid::new().to_string().into());
    let route = matched
        .as_ref()
        .map_or(UNMATCHED_ROUTE, |matched| matched.as_str())
        .to_owned();
    let method = request.method().clone();
    let entity_type = entity_type(&route, request.uri().path()).map(str::to_owned);
    let span = tracing::info_span!("request", request_id = %request_id, %method, %route);
    let mut response = in_request(request_id.clone(), next.run(request).instrument(span)).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    observe_request(method.as_str(), &route, status, took);
    let latency_ms = took.as_secs_f64() * 1000.0;
    let token = response
        .extensions()
        .get::<Identity>()
        .map(|identity| identity.name.as_str());
    let entity_type = entity_type.as_deref();
    if QUIET_ROUTES.contains(&route.as_str()) {
        tracing::debug!(target: "weft::access", request_id = %request_id, %method, %route, entity_type, status, latency_ms, token, "{method} {route} {status}");
    } else {
        tracing::info!(target: "weft::access", request_id = %request_id, %method, %route, entity_type, status, latency_ms, token, "{method} {route} {status}");
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// The entity type a request names: the path's segment where the route has `{entity_type}`.
fn entity_type<'p>(route: &str, path: &'p str) -> Option<&'p str> {
    let position = route.split('/').position(|part| part == "{entity_type}")?;
    path.split('/')
        .nth(position)
        .filter(|part| !part.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entity_type_is_the_segment_the_route_names() {
        let route = "/entities/{entity_type}/{entity_id}";
        assert_eq!(entity_type(route, "/entities/counter/a"), Some("counter"));
        assert_eq!(
            entity_type("/entity-types/{entity_type}", "/entity-types/x"),
            Some("x")
        );
        assert_eq!(entity_type("/plugins/{name}", "/plugins/counter"), None);
        assert_eq!(entity_type(UNMATCHED_ROUTE, "/entities/counter/a"), None);
    }
}
