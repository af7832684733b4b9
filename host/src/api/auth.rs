//! Who may call which route: bearer tokens from `[auth]` in `weft.toml`, their scopes, the one
//! table of the scope every route needs ([`ROUTE_ACCESS`]), and the middleware that checks them.
//!
//! A token is a name (the caller's identity), a scope and a secret, stored as its SHA-256 (hex) or
//! read at start from an environment variable. `Authorization: Bearer <secret>` authenticates a
//! request; the presented secret is hashed and compared with every token's hash in constant time.
//! A missing or unknown token is answered 401 `unauthorized` (with `WWW-Authenticate: Bearer`), a
//! known token whose scope is too small 403 `forbidden`. A route the table does not name needs the
//! admin scope, so a route added without an entry is closed rather than open. With no tokens
//! configured every request passes (the node then serves on loopback only, see `node.rs`).
//!
//! The caller's [`Identity`] is put in the request's extensions for handlers that act on its
//! behalf (named leases are owned by it).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// What a token may do. `Admin` includes everything `Client` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Commands, entity state and events, DistributedData, notifications, metrics, the OpenAPI
    /// document.
    Client,
    /// Everything: plugins, entity-type bindings, resolvers, leases, the cluster view and faults.
    Admin,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token at all: probes.
    Open,
    /// A token of at least this scope.
    Token(Scope),
}

const OPEN: Access = Access::Open;
const CLIENT: Access = Access::Token(Scope::Client);
const ADMIN: Access = Access::Token(Scope::Admin);

/// Every route of the API with the access it needs, by method and path pattern as registered in
/// [`super::routes`]. `HEAD` follows `GET`.
pub const ROUTE_ACCESS: &[(Method, &str, Access)] = &[
    (Method::GET, "/health", OPEN),
    (Method::GET, "/ready", OPEN),
    // The console is static; the API calls it makes carry the user's token.
    (Method::GET, "/", OPEN),
    (Method::GET, "/console/{asset}", OPEN),
    (Method::GET, "/metrics", CLIENT),
    (Method::GET, "/openapi.json", CLIENT),
    (Method::GET, "/entities/{entity_type}", CLIENT),
    (Method::POST, "/entities/{entity_type}/{entity_id}", CLIENT),
    (Method::GET, "/entities/{entity_type}/{entity_id}", CLIENT),
    (
        Method::GET,
        "/entities/{entity_type}/{entity_id}/events",
        CLIENT,
    ),
    (
        Method::PUT,
        "/entities/{entity_type}/{entity_id}/resolver",
        ADMIN,
    ),
    (Method::GET, "/entity-types", CLIENT),
    (Method::PUT, "/entity-types/{entity_type}", ADMIN),
    (Method::GET, "/ddata/{key}", CLIENT),
    (Method::POST, "/ddata/{key}", CLIENT),
    (Method::DELETE, "/ddata/{key}", CLIENT),
    (Method::GET, "/ddata/{key}/subscribe", CLIENT),
    (Method::GET, "/notifications", CLIENT),
    (Method::GET, "/plugins", ADMIN),
    (Method::PUT, "/plugins/{name}", ADMIN),
    (Method::GET, "/plugins/{name}/history", ADMIN),
    (Method::POST, "/plugins/{name}/upgrade", ADMIN),
    (Method::POST, "/plugins/{name}/rollback", ADMIN),
    (Method::GET, "/leases", ADMIN),
    (Method::GET, "/leases/{name}", ADMIN),
    (Method::POST, "/leases/{name}/acquire", ADMIN),
    (Method::POST, "/leases/{name}/renew", ADMIN),
    (Method::POST, "/leases/{name}/release", ADMIN),
    (Method::GET, "/cluster", ADMIN),
    (Method::POST, "/cluster/faults", ADMIN),
];

/// The access `method` on the route `path` needs; admin for anything the table does not name.
pub fn access_for(method: &Method, path: &str) -> Access {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    ROUTE_ACCESS
        .iter()
        .find(|(m, p, _)| m == method && *p == path)
        .map_or(ADMIN, |(_, _, access)| *access)
}

/// One token from `[auth]`: exactly one of `sha256` and `secret_env`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The caller's identity: leases taken with this token are owned by it.
    pub name: String,
    pub scope: Scope,
    /// The SHA-256 of the secret, 64 hex digits (`printf %s "$SECRET" | sha256sum`).
    #[serde(default)]
    pub sha256: Option<String>,
    /// An environment variable holding the secret itself, read at start.
    #[serde(default)]
    pub secret_env: Option<String>,
}

/// The caller a request was authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub scope: Scope,
}

struct Token {
    identity: Identity,
    hash: [u8; 32],
}

/// The tokens of a node, checked on every request.
pub struct Authenticator {
    tokens: Vec<Token>,
}

impl Authenticator {
    /// The node's tokens, with secrets from the environment read now; `None` when there are none
    /// (every request passes). Names must be unique and non-empty.
    pub fn from_config(tokens: &[TokenConfig]) -> anyhow::Result<Option<Authenticator>> {
        Self::from_config_with_env(tokens, |name| std::env::var(name).ok())
    }

    fn from_config_with_env(
        tokens: &[TokenConfig],
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<Authenticator>> {
        let mut checked = Vec::with_capacity(tokens.len());
        for token in tokens {
            let name = token.name.trim();
            anyhow::ensure!(!name.is_empty(), "[auth] a token has an empty name");
            anyhow::ensure!(
                !checked.iter().any(|t: &Token| t.identity.name == name),
                "[auth] two tokens are named {name:?}: names are identities and must be unique"
            );
            let hash = match (&token.sha256, &token.secret_env) {
                (Some(hex_digest), None) => parse_sha256(hex_digest).ok_or_else(|| {
                    anyhow::anyhow!(
                        "[auth] token {name:?}: sha256 must be 64 hex digits (the SHA-256 of the \
                         secret)"
                    )
                })?,
                (None, Some(variable)) => match env(variable) {
                    Some(secret) if !secret.is_empty() => sha256(secret.as_bytes()),
                    _ => anyhow::bail!(
                        "[auth] token {name:?}: the environment variable {variable} holding its \
                         secret is not set or empty"
                    ),
                },
                _ => anyhow::bail!(
                    "[auth] token {name:?}: give exactly one of sha256 = \"<hex>\" or \
                     secret_env = \"<VARIABLE>\""
                ),
            };
            checked.push(Token {
                identity: Identity {
                    name: name.to_owned(),
                    scope: token.scope,
                },
                hash,
            });
        }
        Ok((!checked.is_empty()).then_some(Authenticator { tokens: checked }))
    }

    /// The identity whose secret `presented` is. Every token is compared, each in constant time,
    /// so the time taken says nothing about which bytes matched.
    fn identify(&self, presented: &str) -> Option<&Identity> {
        let presented = sha256(presented.as_bytes());
        let mut found = None;
        for token in &self.tokens {
            if equal_in_constant_time(&token.hash, &presented) {
                found = Some(&token.identity);
            }
        }
        found
    }

    /// Whether a request with these headers may use `access`, and as whom.
    fn check(
        &self,
        access: Access,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<Identity>, Refusal> {
        let Access::Token(needed) = access else {
            return Ok(None);
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(presented) = presented else {
            return Err(Refusal::Unauthorized(
                "this route needs a token: send Authorization: Bearer <token>",
            ));
        };
        let Some(identity) = self.identify(presented) else {
            return Err(Refusal::Unauthorized("the bearer token is not valid"));
        };
        if identity.scope < needed {
            return Err(Refusal::Forbidden(format!(
                "token {:?} has the {:?} scope; this route needs {:?}",
                identity.name, identity.scope, needed
            )));
        }
        Ok(Some(identity.clone()))
    }
}

/// Why a request was refused.
enum Refusal {
    /// No token, or one no token of the node matches: 401 with `WWW-Authenticate: Bearer`.
    Unauthorized(&'static str),
    /// A known token whose scope is too small: 403.
    Forbidden(String),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized(message) => {
                let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
                    .into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                response
            }
            Refusal::Forbidden(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
            }
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_sha256(hex_digest: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_digest.trim()).ok()?;
    bytes.try_into().ok()
}

fn equal_in_constant_time(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// The middleware on every route: refuses what the caller may not do, and hands the handlers (and
/// the response, for the access log) the caller's [`Identity`].
pub async fn require_access(
    State(authenticator): State<Option<Arc<Authenticator>>>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(authenticator) = authenticator else {
        return next.run(request).await;
    };
    let access = match &matched {
        Some(path) => access_for(request.method(), path.as_str()),
        None => ADMIN,
    };
    match authenticator.check(access, request.headers()) {
        Ok(identity) => {
            if let Some(identity) = &identity {
                request.extensions_mut().insert(identity.clone());
            }
            let mut response = next.run(request).await;
            // For the access log, written once the response is ready.
            if let Some(identity) = identity {
                response.extensions_mut().insert(identity);
            }
            response
        }
        Err(refusal) => refusal.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, scope: Scope, secret: &str) -> TokenConfig {
        TokenConfig {
            name: name.to_owned(),
            scope,
            sha256: Some(hex::encode(sha256(secret.as_bytes()))),
            secret_env: None,
        }
    }

    #[test]
    fn every_route_of_the_router_has_an_access_entry() {
        let limits = super::super::BodyLimits {
            command_bytes: 1,
            plugin_bytes: 1,
        };
        // axum lists its route patterns in the router's debug output, as `"/…"` strings, next to
        // its own fallback router's (`/` and a private catch-all).
        let described = format!("{:?}", super::super::routes(limits));
        let mut registered: Vec<&str> = described
            .split('"')
            .filter(|piece| piece.starts_with('/') && *piece != "/")
            .filter(|piece| !piece.contains("__private__axum"))
            .collect();
        registered.sort_unstable();
        registered.dedup();
        // The console's `/` cannot be told from the fallback's in that output: left out of both.
        let mut tabled: Vec<&str> = ROUTE_ACCESS
            .iter()
            .map(|(_, path, _)| *path)
            .filter(|path| *path != "/")
            .collect();
        tabled.sort_unstable();
        tabled.dedup();
        assert!(!registered.is_empty(), "no routes found in {described}");
        assert_eq!(registered, tabled, "routes and ROUTE_ACCESS disagree");
    }

    #[test]
    fn probes_are_open_and_unknown_routes_need_admin() {
        assert_eq!(access_for(&Method::GET, "/health"), OPEN);
        assert_eq!(access_for(&Method::HEAD, "/ready"), OPEN);
        assert_eq!(access_for(&Method::GET, "/"), OPEN);
        assert_eq!(access_for(&Method::DELETE, "/health"), ADMIN);
        assert_eq!(access_for(&Method::GET, "/not-a-route"), ADMIN);
    }

    #[test]
    fn tokens_identify_their_holder_and_nobody_else() {
        let auth = Authenticator::from_config(&[
            token("ops", Scope::Admin, "s3cret-admin"),
            token("shop", Scope::Client, "s3cret-client"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(auth.identify("s3cret-admin").unwrap().name, "ops");
        assert_eq!(auth.identify("s3cret-client").unwrap().scope, Scope::Client);
        assert!(auth.identify("s3cret").is_none());
        assert!(auth.identify("").is_none());
    }

    #[test]
    fn a_secret_from_the_environment_is_read_at_start() {
        let from_env = TokenConfig {
            secret_env: Some("WEFT_ADMIN_TOKEN".into()),
            sha256: None,
            ..token("ops", Scope::Admin, "unused")
        };
        let auth = Authenticator::from_config_with_env(&[from_env], |name| {
            (name == "WEFT_ADMIN_TOKEN").then(|| "from-the-environment".to_owned())
        })
        .unwrap()
        .unwrap();
        assert_eq!(auth.identify("from-the-environment").unwrap().name, "ops");
        assert!(auth.identify("WEFT_ADMIN_TOKEN").is_none());
    }

    #[test]
    fn bad_token_configs_are_named() {
        let error = |tokens: &[TokenConfig]| {
            Authenticator::from_config_with_env(tokens, |_| None)
                .err()
                .unwrap()
                .to_string()
        };
        let mut both = token("a", Scope::Admin, "x");
        both.secret_env = Some("X".into());
        assert!(error(&[both]).contains("exactly one"));
        let mut short = token("a", Scope::Admin, "x");
        short.sha256 = Some("abc".into());
        assert!(error(&[short]).contains("64 hex digits"));
        let unset = TokenConfig {
            secret_env: Some("WEFT_UNSET".into()),
            sha256: None,
            ..token("a", Scope::Admin, "x")
        };
        assert!(error(&[unset]).contains("WEFT_UNSET"));
        let twice = [
            token("a", Scope::Admin, "x"),
            token("a", Scope::Client, "y"),
        ];
        assert!(error(&twice).contains("unique"));
        assert!(Authenticator::from_config(&[]).unwrap().is_none());
    }
}
