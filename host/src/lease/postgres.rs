//! The PostgreSQL lease backend: one row per lease name in `weft_leases`, each call one statement,
//! expiry judged by the server's `now()` only.
//!
//! A row keeps its name's `fencing_token` for good: a release clears `owner` and `expires_at` but
//! keeps the token, and acquiring sets it to the stored one plus one in the same
//! `INSERT … ON CONFLICT DO UPDATE … WHERE` that checks the lease is free — so the check and the new
//! token are one atomic step on the row, and tokens strictly increase per name.
//!
//! Being one statement each, no call holds the row's lock across a round trip to the client: a
//! host frozen mid-call leaves no lock behind. The sessions carry the bounds of
//! [`crate::postgres::SessionBounds`] besides.
//!
//! The SQL is portable to PostgreSQL-compatible distributed databases (CockroachDB, YugabyteDB): no
//! advisory locks, no extensions. Unlike an advisory lock, a lease does not end with the connection
//! that took it: a broken connection fails the call in flight ([`LeaseError::Unavailable`]) and the
//! holder retries on a new one while its lease lasts.

use std::time::Duration;

use async_trait::async_trait;

use super::rules::{validate_grant_request, validate_holder, validate_name};
use super::{ENTITY_LEASE_TTL_DEFAULT, Grant, HeldLease, Holder, Lease, LeaseError};
use crate::postgres::{PgPool, PooledConnection, SessionBounds, describe};

/// The lease table's schema version, kept in `weft_schema_versions`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS weft_leases (
        name TEXT NOT NULL PRIMARY KEY,
        owner TEXT,
        fencing_token BIGINT NOT NULL,
        expires_at TIMESTAMPTZ
    );
";

/// Takes the lease if it is free, expired, or held by the same owner. $1 name, $2 owner, $3 ttl ms.
const ACQUIRE: &str = "INSERT INTO weft_leases AS lease (name, owner, fencing_token, expires_at) \
     VALUES ($1, $2, 1, now() + $3::BIGINT * INTERVAL '1 millisecond') \
     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, \
         fencing_token = lease.fencing_token + 1, expires_at = excluded.expires_at \
     WHERE lease.owner IS NULL OR lease.expires_at <= now() OR lease.owner = excluded.owner \
     RETURNING fencing_token";
/// $1 name, $2 owner, $3 token, $4 ttl ms.
const RENEW: &str = "UPDATE weft_leases \
     SET expires_at = now() + $4::BIGINT * INTERVAL '1 millisecond' \
     WHERE name = $1 AND owner = $2 AND fencing_token = $3 AND expires_at > now()";
/// $1 name, $2 owner, $3 token.
const RELEASE: &str = "UPDATE weft_leases SET owner = NULL, expires_at = NULL \
     WHERE name = $1 AND owner = $2 AND fencing_token = $3 AND expires_at > now()";
const HOLDER: &str = "SELECT owner, fencing_token, \
         CAST(FLOOR(EXTRACT(EPOCH FROM (expires_at - now())) * 1000) AS BIGINT) \
     FROM weft_leases WHERE name = $1 AND owner IS NOT NULL AND expires_at > now()";
/// The live leases named after $1 in byte order (the "C" collation, whatever the database's), at
/// most $2.
const HELD: &str = "SELECT name, owner, fencing_token, \
         CAST(FLOOR(EXTRACT(EPOCH FROM (expires_at - now())) * 1000) AS BIGINT) \
     FROM weft_leases WHERE name COLLATE \"C\" > $1 AND owner IS NOT NULL AND expires_at > now() \
     ORDER BY name COLLATE \"C\" LIMIT $2";

/// The name connections of this backend show in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "weft-lease";

/// Leases in a PostgreSQL database.
#[derive(Debug)]
pub struct PostgresLease {
    pool: PgPool,
}

impl PostgresLease {
    /// Connects to `url` with at most `connections_max` connections, their sessions bounded for
    /// the default lease time to live of a single-writer entity type, and creates the lease table
    /// if the database has none.
    pub async fn connect(url: &str, connections_max: usize) -> Result<Self, LeaseError> {
        let bounds = SessionBounds::for_lease_ttl(ENTITY_LEASE_TTL_DEFAULT);
        Self::connect_bounded(url, connections_max, bounds).await
    }

    /// [`PostgresLease::connect`] with the sessions bounded by `bounds`.
    pub async fn connect_bounded(
        url: &str,
        connections_max: usize,
        bounds: SessionBounds,
    ) -> Result<Self, LeaseError> {
        let pool = PgPool::connect(url, APPLICATION_NAME, connections_max, bounds)
            .await
            .map_err(LeaseError::Unavailable)?;
        pool.get()
            .await
            .map_err(LeaseError::Unavailable)?
            .prepare_schema("lease", SCHEMA_VERSION, SCHEMA)
            .await
            .map_err(LeaseError::Unavailable)?;
        Ok(Self { pool })
    }

    async fn connection(&self) -> Result<PooledConnection, LeaseError> {
        self.pool.get().await.map_err(LeaseError::Unavailable)
    }

    /// Runs the statement `sql` and returns how many rows it changed.
    async fn execute(
        &self,
        doing: &str,
        sql: &'static str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, LeaseError> {
        let unavailable = |error| LeaseError::Unavailable(describe(doing, &error));
        let mut connection = self.connection().await?;
        let statement = connection.statement(sql).await.map_err(unavailable)?;
        connection
            .client
            .execute(&statement, params)
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl Lease for PostgresLease {
    async fn acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Grant>, LeaseError> {
        let ttl_ms = stored(validate_grant_request(name, owner, ttl)?);
        let unavailable = |error| {
            LeaseError::Unavailable(describe(format_args!("acquiring lease {name}"), &error))
        };
        let mut connection = self.connection().await?;
        let statement = connection.statement(ACQUIRE).await.map_err(unavailable)?;
        let granted = connection
            .client
            .query_opt(&statement, &[&name, &owner, &ttl_ms])
            .await
            .map_err(unavailable)?;
        granted
            .map(|row| {
                Ok(Grant {
                    fencing_token: token_from(row.get(0))?,
                    ttl,
                })
            })
            .transpose()
    }

    async fn renew(
        &self,
        name: &str,
        owner: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> Result<Option<Grant>, LeaseError> {
        let ttl_ms = stored(validate_grant_request(name, owner, ttl)?);
        // Tokens above the stored range are never granted, so nobody holds a lease with one.
        let Ok(token) = i64::try_from(fencing_token) else {
            return Ok(None);
        };
        let renewed = self
            .execute(
                &format!("renewing lease {name}"),
                RENEW,
                &[&name, &owner, &token, &ttl_ms],
            )
            .await?;
        Ok((renewed == 1).then_some(Grant { fencing_token, ttl }))
    }

    async fn release(
        &self,
        name: &str,
        owner: &str,
        fencing_token: u64,
    ) -> Result<bool, LeaseError> {
        validate_holder(name, owner)?;
        let Ok(token) = i64::try_from(fencing_token) else {
            return Ok(false);
        };
        let released = self
            .execute(
                &format!("releasing lease {name}"),
                RELEASE,
                &[&name, &owner, &token],
            )
            .await?;
        Ok(released == 1)
    }

    async fn holder(&self, name: &str) -> Result<Option<Holder>, LeaseError> {
        validate_name(name)?;
        let unavailable =
            |error| LeaseError::Unavailable(describe(format_args!("reading lease {name}"), &error));
        let mut connection = self.connection().await?;
        let statement = connection.statement(HOLDER).await.map_err(unavailable)?;
        let row = connection
            .client
            .query_opt(&statement, &[&name])
            .await
            .map_err(unavailable)?;
        row.map(|row| holder_from(&row, 0)).transpose()
    }

    async fn held(&self, after: &str, max: usize) -> Result<Vec<HeldLease>, LeaseError> {
        let unavailable = |error| LeaseError::Unavailable(describe("listing leases", &error));
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut connection = self.connection().await?;
        let statement = connection.statement(HELD).await.map_err(unavailable)?;
        connection
            .client
            .query(&statement, &[&after, &limit])
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| {
                Ok(HeldLease {
                    name: row.get(0),
                    holder: holder_from(row, 1)?,
                })
            })
            .collect()
    }
}

/// The holder in the columns from `first` on: owner, fencing token, milliseconds left.
fn holder_from(row: &tokio_postgres::Row, first: usize) -> Result<Holder, LeaseError> {
    let millis_left: i64 = row.get(first + 2);
    Ok(Holder {
        owner: row.get(first),
        fencing_token: token_from(row.get(first + 1))?,
        expires_in: Duration::from_millis(u64::try_from(millis_left).unwrap_or(0)),
    })
}

/// A time to live in milliseconds, at most a day: it fits.
fn stored(ttl_ms: u64) -> i64 {
    i64::try_from(ttl_ms).unwrap_or(i64::MAX)
}

fn token_from(stored: i64) -> Result<u64, LeaseError> {
    u64::try_from(stored).map_err(|_| {
        LeaseError::Unavailable(format!(
            "the lease table holds a negative fencing token {stored}"
        ))
    })
}
