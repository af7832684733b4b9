//! The Redis lease backend: one key per lease, expiring on the Redis server's clock (`PX`), changed
//! only by Lua scripts, which Redis runs atomically.
//!
//! For a lease `name`:
//!
//! - `weft:lease:{name}` holds `"<fencing token>:<owner>"` while the lease is held, with the time to
//!   live as the key's expiry. Acquire sets it (`SET … PX`) only if it is absent or held by the same
//!   owner; renew (`PEXPIRE`) and release (`DEL`) compare the whole value first, so only the holder
//!   with its current token changes it.
//! - `weft:lease:{name}:token` is the counter (`INCR`) the tokens come from, in the same script as
//!   the `SET`, so a grant's token is always above every earlier grant's. It never expires.
//!
//! The `{name}` hash tag puts both keys in one slot, as a script's keys must be in Redis Cluster.
//!
//! `rediss://` URLs connect over TLS (rustls), checking the server's certificate against the
//! system's roots or, with `sslrootcert=<PEM file>` in the URL, against that file's CAs, and its
//! name against the URL's host: `verify-full`, the only mode the Redis client offers without its
//! `tls-rustls-insecure` feature, so `sslmode` other than `verify-full` is refused.
//!
//! One multiplexed connection serves every call. When it breaks (the server restarted, the client was
//! killed), the call fails with [`LeaseError::Unavailable`] and the next call connects again.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands as _, AsyncConnectionConfig, Client, RedisError, Script};

use crate::tls::{self, Verification};

use super::rules::{validate_grant_request, validate_holder, validate_name};
use super::{Grant, HeldLease, Holder, Lease, LeaseError};

/// How long connecting and each call may take before they fail: a server that does not answer
/// surfaces as an error, in time for a holder to step down before its lease runs out.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Grants the lease if it is free or held by the same owner. KEYS: lease, counter. ARGV: owner, ttl ms.
const ACQUIRE: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
    local separator = string.find(current, ':', 1, true)
    if not separator or string.sub(current, separator + 1) ~= ARGV[1] then
        return false
    end
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
";

/// Extends the lease if it holds exactly ARGV[1] (`token:owner`). ARGV: value, ttl ms.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
";

/// Deletes the lease if it holds exactly ARGV[1] (`token:owner`).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
";

/// The lease's value and its time left in milliseconds, read together.
const HOLDER: &str = r"
local current = redis.call('GET', KEYS[1])
if not current then
    return false
end
return {current, redis.call('PTTL', KEYS[1])}
";

/// Leases in a Redis server.
pub struct RedisLease {
    client: Client,
    config: AsyncConnectionConfig,
    /// The connection in use; `None` after it broke, until the next call connects again. A tokio mutex
    /// because connecting happens under it, so that concurrent calls open one connection, not many.
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    acquire: Script,
    renew: Script,
    release: Script,
    holder: Script,
}

impl RedisLease {
    /// Connects to `url` (`redis://host:port/db`, or `rediss://…` for TLS, see the module doc).
    pub async fn connect(url: &str) -> Result<Self, LeaseError> {
        let client = open_client(url)
            .map_err(|error| LeaseError::Invalid(format!("invalid Redis URL {url:?}: {error}")))?;
        let lease = Self {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CALL_TIMEOUT))
                .set_response_timeout(Some(CALL_TIMEOUT)),
            connection: tokio::sync::Mutex::new(None),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            holder: Script::new(HOLDER),
        };
        lease.connection().await?;
        Ok(lease)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, LeaseError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|error| {
                let server = self.client.get_connection_info().addr();
                unavailable(&format!("connecting to Redis at {server}"), &error)
            })?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `script` on `name`'s keys; a broken connection is dropped so that the next call reconnects.
    async fn run<T: redis::FromRedisValue>(
        &self,
        doing: &str,
        script: &Script,
        name: &str,
        args: &[&str],
    ) -> Result<T, LeaseError> {
        let mut connection = self.connection().await?;
        let key = lease_key(name);
        let mut invocation = script.key(&key);
        invocation.key(format!("{key}:token"));
        for arg in args {
            invocation.arg(*arg);
        }
        match invocation.invoke_async(&mut connection).await {
            Ok(value) => Ok(value),
            Err(error) => {
                if error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_unrecoverable_error()
                    || error.is_timeout()
                {
                    *self.connection.lock().await = None;
                }
                Err(unavailable(doing, &error))
            }
        }
    }
}

#[async_trait]
impl Lease for RedisLease {
    async fn acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Grant>, LeaseError> {
        let ttl_ms = validate_grant_request(name, owner, ttl)?;
        let token: Option<u64> = self
            .run(
                &format!("acquiring lease {name}"),
                &self.acquire,
                name,
                &[owner, &ttl_ms.to_string()],
            )
            .await?;
        Ok(token.map(|fencing_token| Grant { fencing_token, ttl }))
    }

    async fn renew(
        &self,
        name: &str,
        owner: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> Result<Option<Grant>, LeaseError> {
        let ttl_ms = validate_grant_request(name, owner, ttl)?;
        let renewed: bool = self
            .run(
                &format!("renewing lease {name}"),
                &self.renew,
                name,
                &[&lease_value(fencing_token, owner), &ttl_ms.to_string()],
            )
            .await?;
        Ok(renewed.then_some(Grant { fencing_token, ttl }))
    }

    async fn release(
        &self,
        name: &str,
        owner: &str,
        fencing_token: u64,
    ) -> Result<bool, LeaseError> {
        validate_holder(name, owner)?;
        self.run(
            &format!("releasing lease {name}"),
            &self.release,
            name,
            &[&lease_value(fencing_token, owner)],
        )
        .await
    }

    async fn holder(&self, name: &str) -> Result<Option<Holder>, LeaseError> {
        validate_name(name)?;
        let holder: Option<(String, i64)> = self
            .run(&format!("reading lease {name}"), &self.holder, name, &[])
            .await?;
        let Some((value, millis_left)) = holder else {
            return Ok(None);
        };
        let (token, owner) = value
            .split_once(':')
            .and_then(|(token, owner)| Some((token.parse().ok()?, owner)))
            .ok_or_else(|| {
                LeaseError::Unavailable(format!(
                    "the key of lease {name} holds {value:?}, which weft did not write"
                ))
            })?;
        Ok(Some(Holder {
            owner: owner.to_owned(),
            fencing_token: token,
            // -1 (no expiry) cannot happen for keys written by the scripts; read it as no time left.
            expires_in: Duration::from_millis(u64::try_from(millis_left).unwrap_or(0)),
        }))
    }

    /// Redis keeps no order of its keys: every lease key is scanned (`SCAN`, which does not block
    /// the server), then the live ones after `after` are sorted and cut to `max`.
    async fn held(&self, after: &str, max: usize) -> Result<Vec<HeldLease>, LeaseError> {
        let doing = "listing leases";
        let mut names = Vec::new();
        {
            let mut connection = self.connection().await?;
            let mut keys = connection
                .scan_match::<_, String>(LEASE_KEY_PATTERN)
                .await
                .map_err(|error| unavailable(doing, &error))?;
            while let Some(key) = keys.next_item().await {
                let key = key.map_err(|error| unavailable(doing, &error))?;
                if let Some(name) = lease_name_of(&key)
                    && name > after
                {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort_unstable();
        let mut held = Vec::new();
        for name in names {
            if held.len() == max {
                break;
            }
            if let Some(holder) = self.holder(&name).await? {
                held.push(HeldLease { name, holder });
            }
        }
        Ok(held)
    }
}

/// Every lease's key, and none of the token keys beside them.
const LEASE_KEY_PATTERN: &str = "weft:lease:{*}";

/// The lease name in a key [`LEASE_KEY_PATTERN`] matched.
fn lease_name_of(key: &str) -> Option<&str> {
    key.strip_prefix("weft:lease:{")?.strip_suffix('}')
}

fn lease_key(name: &str) -> String {
    format!("weft:lease:{{{name}}}")
}

fn lease_value(fencing_token: u64, owner: &str) -> String {
    format!("{fencing_token}:{owner}")
}

/// The client for `url`, with the CA file `sslrootcert` names if any.
fn open_client(url: &str) -> Result<Client, String> {
    let split = tls::split_url(url)?;
    let is_tls_url = split.url.starts_with("rediss://");
    match split.tls {
        None => Client::open(split.url).map_err(|error| error.to_string()),
        Some(_) if !is_tls_url => Err("sslmode and sslrootcert need a rediss:// URL".to_owned()),
        Some(settings) if settings.verification != Verification::Full => Err(format!(
            "sslmode={} is not supported for Redis, which always verifies the certificate \
             and the host name (verify-full)",
            settings.verification.sslmode()
        )),
        Some(settings) => {
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: settings.roots_pem()?,
            };
            Client::build_with_tls(split.url, certificates).map_err(|error| error.to_string())
        }
    }
}

fn unavailable(doing: &str, error: &RedisError) -> LeaseError {
    LeaseError::Unavailable(format!("{doing}: {error}"))
}
