//! The PostgreSQL journal backend: one database shared by every node of a cluster, through a small
//! pool of connections.
//!
//! # Appends and fences
//!
//! Each append is one statement ([`APPEND`]): it locks the persistence id's row in `weft_fences`
//! (creating it at token 0 if needed: an `INSERT … ON CONFLICT DO UPDATE` that changes nothing but
//! takes the row lock and returns the recorded fence), reads the stream's highest seq nr, and
//! inserts the events only if the fence is not above the append's token and the stream is where
//! the writer expected it; it returns what it found, and [`check_append_against_stream`] turns a
//! refusal into its error. Appends and fence recordings of one persistence id are thereby
//! serialized on that row. The primary key `(persistence_id, seq_nr)` of `weft_events` is the
//! second fence behind them — and the one that catches an append whose statement began before a
//! concurrent append committed (its read of the highest seq nr is from the statement's start):
//! the duplicate key is reported as a [`JournalError::SeqConflict`]. Appends to different
//! persistence ids do not wait for each other. Recording and advancing a fence are one statement
//! on that row each (`INSERT … ON CONFLICT DO UPDATE SET fencing_token = …`), so concurrent ones
//! wait for each other and never return the same token.
//!
//! No write holds a lock across a round trip to the client: the row lock lives only while the
//! server runs the statement. So a host frozen mid-append (a GC pause, `SIGSTOP`) leaves no lock
//! behind for the new lease holder to wait on; the session bounds of [`crate::postgres`] are the
//! second line behind that.
//!
//! The SQL is portable to PostgreSQL-compatible distributed databases (CockroachDB, YugabyteDB): no
//! advisory locks, no extensions; integers are `BIGINT`, version vectors JSON `TEXT` (exactly what the
//! SQLite backend stores), payloads `BYTEA`.
//!
//! # Durability
//!
//! A commit is as durable as the server makes it: with PostgreSQL's defaults (`fsync = on`,
//! `synchronous_commit = on`) an acknowledged append survives a crash of the server's machine.

use std::collections::BTreeMap;
use std::fmt::Display;

use async_trait::async_trait;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use ulid::Ulid;

use super::rules::{
    check_append_against_stream, check_fence_advance, validate_append, validate_fencing_token,
    validate_snapshot,
};
use super::{
    EventEnvelope, IdempotencyRecord, Journal, JournalError, SnapshotEnvelope, StreamHead,
};
use crate::lease::ENTITY_LEASE_TTL_DEFAULT;
use crate::postgres::{PgPool, PooledConnection, SessionBounds, describe, is_out_of_time};

/// The journal's schema version, kept in `weft_schema_versions`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS weft_events (
        persistence_id TEXT NOT NULL,
        seq_nr BIGINT NOT NULL,
        writer TEXT NOT NULL,
        fencing_token BIGINT NOT NULL,
        timestamp BIGINT NOT NULL,
        origin_replica TEXT NOT NULL,
        origin_seq_nr BIGINT NOT NULL,
        version TEXT NOT NULL,
        concurrent BOOLEAN NOT NULL,
        plugin TEXT NOT NULL,
        payload BYTEA NOT NULL,
        idempotency BYTEA,
        PRIMARY KEY (persistence_id, seq_nr)
    );
    ALTER TABLE weft_events ADD COLUMN IF NOT EXISTS idempotency BYTEA;
    CREATE TABLE IF NOT EXISTS weft_fences (
        persistence_id TEXT NOT NULL PRIMARY KEY,
        fencing_token BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS weft_snapshots (
        persistence_id TEXT NOT NULL PRIMARY KEY,
        seq_nr BIGINT NOT NULL,
        writer TEXT NOT NULL,
        version TEXT NOT NULL,
        seen TEXT NOT NULL,
        plugin TEXT NOT NULL,
        payload BYTEA NOT NULL
    );
";

/// One append: locks the fence row (creating it at token 0) and inserts the events — $2.. $12 the
/// columns as arrays, unnested into rows — iff the recorded fence is at most the token $13 and the
/// stream's highest seq nr is the expected $14. Returns the recorded fence, the highest seq nr
/// before the append, and how many events it inserted (all or none).
const APPEND: &str = "WITH fence AS ( \
         INSERT INTO weft_fences (persistence_id, fencing_token) VALUES ($1, 0) \
         ON CONFLICT (persistence_id) DO UPDATE SET fencing_token = weft_fences.fencing_token \
         RETURNING fencing_token \
     ), stream AS ( \
         SELECT COALESCE(MAX(seq_nr), 0) AS highest FROM weft_events WHERE persistence_id = $1 \
     ), appended AS ( \
         INSERT INTO weft_events (persistence_id, seq_nr, writer, fencing_token, timestamp, \
             origin_replica, origin_seq_nr, version, concurrent, plugin, payload, idempotency) \
         SELECT $1, * FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], \
             $6::TEXT[], $7::BIGINT[], $8::TEXT[], $9::BOOLEAN[], $10::TEXT[], $11::BYTEA[], \
             $12::BYTEA[]) \
         WHERE (SELECT fencing_token FROM fence) <= $13::BIGINT \
             AND (SELECT highest FROM stream) = $14::BIGINT \
         RETURNING 1 \
     ) \
     SELECT (SELECT fencing_token FROM fence), (SELECT highest FROM stream), \
         (SELECT COUNT(*) FROM appended)";
/// Raises the persistence id's fence by one (from 0 when it has none) in one statement, under the
/// row lock, and returns the new token.
const ADVANCE_FENCE: &str = "INSERT INTO weft_fences (persistence_id, fencing_token) VALUES ($1, 1) \
     ON CONFLICT (persistence_id) DO UPDATE SET fencing_token = weft_fences.fencing_token + 1 \
     RETURNING fencing_token";
/// Raises the persistence id's fence to $2 unless it is higher already, in one statement under the
/// row lock, and returns the fence as it is now.
const RECORD_FENCE: &str = "INSERT INTO weft_fences (persistence_id, fencing_token) VALUES ($1, $2) \
     ON CONFLICT (persistence_id) DO UPDATE \
     SET fencing_token = GREATEST(weft_fences.fencing_token, excluded.fencing_token) \
     RETURNING fencing_token";
const READ_FENCE: &str = "SELECT fencing_token FROM weft_fences WHERE persistence_id = $1";
const HIGHEST_SEQ_NR: &str =
    "SELECT COALESCE(MAX(seq_nr), 0) FROM weft_events WHERE persistence_id = $1";
const READ_EVENTS: &str = "SELECT persistence_id, seq_nr, writer, fencing_token, timestamp, \
     origin_replica, origin_seq_nr, version, concurrent, plugin, payload, idempotency FROM weft_events \
     WHERE persistence_id = $1 AND seq_nr >= $2 ORDER BY seq_nr LIMIT $3";
const SAVE_SNAPSHOT: &str = "INSERT INTO weft_snapshots \
     (persistence_id, seq_nr, writer, version, seen, plugin, payload) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (persistence_id) DO UPDATE SET \
         seq_nr = excluded.seq_nr, writer = excluded.writer, version = excluded.version, \
         seen = excluded.seen, plugin = excluded.plugin, payload = excluded.payload \
     WHERE excluded.seq_nr >= weft_snapshots.seq_nr";
const READ_SNAPSHOT: &str = "SELECT persistence_id, seq_nr, writer, version, seen, plugin, payload \
     FROM weft_snapshots WHERE persistence_id = $1";
const PERSISTENCE_IDS: &str = "SELECT DISTINCT persistence_id FROM weft_events";
/// The streams in `$1..$2` with events or a snapshot, at most `$3`: the first `$3` of each table,
/// merged. Ids are compared and ordered under the "C" collation, byte by byte like the other
/// backends, whatever the database's collation (an index serves the range when that is "C" too).
const STREAM_HEADS: &str = "SELECT persistence_id, MAX(seq_nr) FROM ( \
         (SELECT persistence_id, MAX(seq_nr) AS seq_nr FROM weft_events \
             WHERE persistence_id COLLATE \"C\" >= $1 AND persistence_id COLLATE \"C\" < $2 \
             GROUP BY persistence_id ORDER BY persistence_id COLLATE \"C\" LIMIT $3) \
         UNION ALL \
         (SELECT persistence_id, seq_nr FROM weft_snapshots \
             WHERE persistence_id COLLATE \"C\" >= $1 AND persistence_id COLLATE \"C\" < $2 \
             ORDER BY persistence_id COLLATE \"C\" LIMIT $3) \
     ) AS heads GROUP BY persistence_id ORDER BY persistence_id COLLATE \"C\" LIMIT $3";

/// Tuning of a [`PostgresJournal`].
#[derive(Clone, Debug)]
pub struct PostgresJournalOptions {
    /// Most connections open at once; further operations wait for one. Each append holds one for its
    /// statement, so this bounds concurrent appends. Default 8.
    pub connections_max: usize,
    /// The time bounds of every session; default those for the default lease time to live of a
    /// single-writer entity type.
    pub session_bounds: SessionBounds,
}

impl Default for PostgresJournalOptions {
    fn default() -> Self {
        Self {
            connections_max: 8,
            session_bounds: SessionBounds::for_lease_ttl(ENTITY_LEASE_TTL_DEFAULT),
        }
    }
}

/// A journal in a PostgreSQL database. Open it once per process and share it (`Arc<dyn Journal>`).
#[derive(Debug)]
pub struct PostgresJournal {
    pool: PgPool,
}

impl PostgresJournal {
    /// Connects to `url` (`postgres://user@host:port/database`) with the default options and creates
    /// the schema if the database has none.
    pub async fn open(url: &str) -> Result<Self, JournalError> {
        Self::open_with_options(url, PostgresJournalOptions::default()).await
    }

    /// Connects to `url` and creates the schema if the database has none; refuses a database whose
    /// journal schema has another version.
    pub async fn open_with_options(
        url: &str,
        options: PostgresJournalOptions,
    ) -> Result<Self, JournalError> {
        let pool = PgPool::connect(
            url,
            "weft-journal",
            options.connections_max,
            options.session_bounds,
        )
        .await
        .map_err(JournalError::Storage)?;
        pool.get()
            .await
            .map_err(JournalError::Storage)?
            .prepare_schema("journal", SCHEMA_VERSION, SCHEMA)
            .await
            .map_err(JournalError::Storage)?;
        Ok(Self { pool })
    }

    async fn connection(&self) -> Result<PooledConnection, JournalError> {
        self.pool.get().await.map_err(JournalError::Storage)
    }

    /// The one row's first column of the statement `sql`, run with `params`; errors as `doing`.
    async fn query_one_integer(
        &self,
        doing: &str,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<i64, JournalError> {
        let in_context = |error| storage_error(doing, error);
        let mut connection = self.connection().await?;
        let statement = connection.statement(sql).await.map_err(in_context)?;
        let row = connection
            .client
            .query_one(&statement, params)
            .await
            .map_err(in_context)?;
        Ok(row.get(0))
    }
}

#[async_trait]
impl Journal for PostgresJournal {
    async fn append(
        &self,
        persistence_id: &str,
        expected_seq_nr: u64,
        fencing_token: u64,
        events: Vec<EventEnvelope>,
    ) -> Result<(), JournalError> {
        validate_append(persistence_id, expected_seq_nr, fencing_token, &events)?;
        let in_context =
            |error| storage_error(format_args!("appending to {persistence_id}"), error);
        let columns = EventColumns::of(&events)?;
        let mut connection = self.connection().await?;
        let append = connection.statement(APPEND).await.map_err(in_context)?;
        let appended = connection
            .client
            .query_one(
                &append,
                &[
                    &persistence_id,
                    &columns.seq_nrs,
                    &columns.writers,
                    &columns.fencing_tokens,
                    &columns.timestamps,
                    &columns.origin_replicas,
                    &columns.origin_seq_nrs,
                    &columns.versions,
                    &columns.concurrent,
                    &columns.plugins,
                    &columns.payloads,
                    &columns.idempotency,
                    &stored_i64(fencing_token),
                    &stored_i64(expected_seq_nr),
                ],
            )
            .await;
        let row = match appended {
            Ok(row) => row,
            // The statement began before a concurrent append of the stream committed.
            Err(error) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                drop(connection);
                return Err(JournalError::SeqConflict {
                    persistence_id: persistence_id.to_owned(),
                    expected_seq_nr,
                    actual_seq_nr: self.highest_seq_nr(persistence_id).await?,
                });
            }
            Err(error) => return Err(in_context(error)),
        };
        let (recorded_fence, highest_seq_nr, inserted): (i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2));
        check_append_against_stream(
            persistence_id,
            expected_seq_nr,
            fencing_token,
            stored_u64(highest_seq_nr, "seq nr")?,
            stored_u64(recorded_fence, "fencing token")?,
        )?;
        if inserted != columns.seq_nrs.len() as i64 {
            return Err(JournalError::Storage(format!(
                "appending to {persistence_id}: {inserted} of {} events inserted",
                columns.seq_nrs.len()
            )));
        }
        Ok(())
    }

    async fn read(
        &self,
        persistence_id: &str,
        from_seq_nr: u64,
        max: usize,
    ) -> Result<Vec<EventEnvelope>, JournalError> {
        // Seq nrs beyond the stored range cannot exist: reading from one reads nothing.
        let Ok(from_seq_nr) = i64::try_from(from_seq_nr) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let in_context =
            |error| storage_error(format_args!("reading events of {persistence_id}"), error);
        let mut connection = self.connection().await?;
        let statement = connection
            .statement(READ_EVENTS)
            .await
            .map_err(in_context)?;
        connection
            .client
            .query(&statement, &[&persistence_id, &from_seq_nr, &limit])
            .await
            .map_err(in_context)?
            .iter()
            .map(event_from_row)
            .collect()
    }

    async fn highest_seq_nr(&self, persistence_id: &str) -> Result<u64, JournalError> {
        let doing = &format!("reading the highest seq nr of {persistence_id}");
        let highest = self
            .query_one_integer(doing, HIGHEST_SEQ_NR, &[&persistence_id])
            .await?;
        stored_u64(highest, "seq nr")
    }

    async fn save_snapshot(&self, snapshot: SnapshotEnvelope) -> Result<(), JournalError> {
        validate_snapshot(&snapshot)?;
        let in_context = |error| {
            storage_error(
                format_args!("saving a snapshot of {}", snapshot.persistence_id),
                error,
            )
        };
        let version = to_json(&snapshot.version)?;
        let seen = to_json(&snapshot.seen)?;
        let mut connection = self.connection().await?;
        let statement = connection
            .statement(SAVE_SNAPSHOT)
            .await
            .map_err(in_context)?;
        connection
            .client
            .execute(
                &statement,
                &[
                    &snapshot.persistence_id,
                    &stored_i64(snapshot.seq_nr),
                    &snapshot.writer.to_string(),
                    &version,
                    &seen,
                    &snapshot.plugin,
                    &snapshot.payload,
                ],
            )
            .await
            .map_err(in_context)?;
        Ok(())
    }

    async fn latest_snapshot(
        &self,
        persistence_id: &str,
    ) -> Result<Option<SnapshotEnvelope>, JournalError> {
        let in_context = |error| {
            storage_error(
                format_args!("reading the snapshot of {persistence_id}"),
                error,
            )
        };
        let mut connection = self.connection().await?;
        let statement = connection
            .statement(READ_SNAPSHOT)
            .await
            .map_err(in_context)?;
        connection
            .client
            .query_opt(&statement, &[&persistence_id])
            .await
            .map_err(in_context)?
            .as_ref()
            .map(snapshot_from_row)
            .transpose()
    }

    async fn record_fence(
        &self,
        persistence_id: &str,
        fencing_token: u64,
    ) -> Result<(), JournalError> {
        validate_fencing_token(fencing_token)?;
        let doing = &format!("recording the fence of {persistence_id}");
        let recorded = self
            .query_one_integer(
                doing,
                RECORD_FENCE,
                &[&persistence_id, &stored_i64(fencing_token)],
            )
            .await?;
        // The fence is now the higher of the two: above the token, the token was stale.
        check_fence_advance(
            persistence_id,
            fencing_token,
            stored_u64(recorded, "fencing token")?,
        )
        .map(drop)
    }

    async fn advance_fence(&self, persistence_id: &str) -> Result<u64, JournalError> {
        let doing = &format!("advancing the fence of {persistence_id}");
        let advanced = self
            .query_one_integer(doing, ADVANCE_FENCE, &[&persistence_id])
            .await?;
        stored_u64(advanced, "fencing token")
    }

    async fn fence(&self, persistence_id: &str) -> Result<u64, JournalError> {
        let in_context =
            |error| storage_error(format_args!("reading the fence of {persistence_id}"), error);
        let mut connection = self.connection().await?;
        let statement = connection.statement(READ_FENCE).await.map_err(in_context)?;
        let recorded: Option<i64> = connection
            .client
            .query_opt(&statement, &[&persistence_id])
            .await
            .map_err(in_context)?
            .map(|row| row.get(0));
        stored_u64(recorded.unwrap_or(0), "fencing token")
    }

    async fn persistence_ids(&self) -> Result<Vec<String>, JournalError> {
        let in_context = |error| storage_error("listing persistence ids", error);
        let mut connection = self.connection().await?;
        let statement = connection
            .statement(PERSISTENCE_IDS)
            .await
            .map_err(in_context)?;
        let mut ids: Vec<String> = connection
            .client
            .query(&statement, &[])
            .await
            .map_err(in_context)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        // Sorted here, byte-wise like the other backends, whatever the database's collation.
        ids.sort_unstable();
        Ok(ids)
    }

    async fn stream_heads(
        &self,
        from: &str,
        until: &str,
        max: usize,
    ) -> Result<Vec<StreamHead>, JournalError> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let in_context = |error| storage_error("listing streams", error);
        let mut connection = self.connection().await?;
        let statement = connection
            .statement(STREAM_HEADS)
            .await
            .map_err(in_context)?;
        connection
            .client
            .query(&statement, &[&from, &until, &limit])
            .await
            .map_err(in_context)?
            .iter()
            .map(|row| {
                Ok(StreamHead {
                    persistence_id: row.get(0),
                    seq_nr: stored_u64(row.get(1), "seq nr")?,
                })
            })
            .collect()
    }
}

/// The columns of a batch of events, as the arrays [`APPEND`] unnests.
struct EventColumns {
    seq_nrs: Vec<i64>,
    writers: Vec<String>,
    fencing_tokens: Vec<i64>,
    timestamps: Vec<i64>,
    origin_replicas: Vec<String>,
    origin_seq_nrs: Vec<i64>,
    versions: Vec<String>,
    concurrent: Vec<bool>,
    plugins: Vec<String>,
    payloads: Vec<Vec<u8>>,
    idempotency: Vec<Option<Vec<u8>>>,
}

impl EventColumns {
    /// Splits a batch already checked by [`validate_append`] (every integer is in the stored range).
    fn of(events: &[EventEnvelope]) -> Result<Self, JournalError> {
        let mut columns = EventColumns {
            seq_nrs: Vec::with_capacity(events.len()),
            writers: Vec::with_capacity(events.len()),
            fencing_tokens: Vec::with_capacity(events.len()),
            timestamps: Vec::with_capacity(events.len()),
            origin_replicas: Vec::with_capacity(events.len()),
            origin_seq_nrs: Vec::with_capacity(events.len()),
            versions: Vec::with_capacity(events.len()),
            concurrent: Vec::with_capacity(events.len()),
            plugins: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            idempotency: Vec::with_capacity(events.len()),
        };
        for event in events {
            columns.seq_nrs.push(stored_i64(event.seq_nr));
            columns.writers.push(event.writer.to_string());
            columns.fencing_tokens.push(stored_i64(event.fencing_token));
            columns.timestamps.push(stored_i64(event.timestamp));
            columns.origin_replicas.push(event.origin_replica.clone());
            columns.origin_seq_nrs.push(stored_i64(event.origin_seq_nr));
            columns.versions.push(to_json(&event.version)?);
            columns.concurrent.push(event.concurrent);
            columns.plugins.push(event.plugin.clone());
            columns.payloads.push(event.payload.clone());
            let idempotency = event.idempotency.as_ref();
            columns
                .idempotency
                .push(idempotency.map(IdempotencyRecord::to_column).transpose()?);
        }
        Ok(columns)
    }
}

fn event_from_row(row: &Row) -> Result<EventEnvelope, JournalError> {
    Ok(EventEnvelope {
        persistence_id: row.get(0),
        seq_nr: stored_u64(row.get(1), "seq nr")?,
        writer: ulid_from(row.get(2))?,
        fencing_token: stored_u64(row.get(3), "fencing token")?,
        timestamp: stored_u64(row.get(4), "timestamp")?,
        origin_replica: row.get(5),
        origin_seq_nr: stored_u64(row.get(6), "origin seq nr")?,
        version: from_json(row.get(7))?,
        concurrent: row.get(8),
        plugin: row.get(9),
        payload: row.get(10),
        idempotency: row
            .get::<_, Option<Vec<u8>>>(11)
            .map(|bytes| IdempotencyRecord::from_column(&bytes))
            .transpose()?,
    })
}

fn snapshot_from_row(row: &Row) -> Result<SnapshotEnvelope, JournalError> {
    Ok(SnapshotEnvelope {
        persistence_id: row.get(0),
        seq_nr: stored_u64(row.get(1), "snapshot seq nr")?,
        writer: ulid_from(row.get(2))?,
        version: from_json(row.get(3))?,
        seen: from_json(row.get(4))?,
        plugin: row.get(5),
        payload: row.get(6),
    })
}

/// A value the rules already checked to be at most `i64::MAX`.
fn stored_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored integer read back; negative only if something else wrote the table.
fn stored_u64(value: i64, field: &str) -> Result<u64, JournalError> {
    u64::try_from(value).map_err(|_| {
        JournalError::Storage(format!("the journal holds a negative {field}: {value}"))
    })
}

fn ulid_from(text: &str) -> Result<Ulid, JournalError> {
    Ulid::from_string(text).map_err(|error| {
        JournalError::Storage(format!(
            "the journal holds an invalid writer id {text:?}: {error}"
        ))
    })
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, JournalError> {
    serde_json::from_str(text).map_err(|error| {
        JournalError::Storage(format!("the journal holds invalid JSON {text:?}: {error}"))
    })
}

fn to_json(value: &BTreeMap<String, u64>) -> Result<String, JournalError> {
    serde_json::to_string(value)
        .map_err(|error| JournalError::Storage(format!("encoding a version vector: {error}")))
}

/// A failed statement as the journal reports it: [`JournalError::Busy`] when the server gave up on
/// it at a session bound (nothing written, retry), else [`JournalError::Storage`].
fn storage_error(doing: impl Display, error: tokio_postgres::Error) -> JournalError {
    if is_out_of_time(&error) {
        JournalError::Busy(describe(doing, &error))
    } else {
        JournalError::Storage(describe(doing, &error))
    }
}
