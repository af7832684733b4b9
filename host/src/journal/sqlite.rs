//! The SQLite journal backend, the embedded default: one database file in WAL mode, written by one
//! dedicated writer thread that group-commits concurrent writes, read through a small pool of
//! read-only connections on tokio's blocking threads.
//!
//! # Group commit
//!
//! Every write (append, fence, snapshot) is a request on a bounded queue to the writer thread. The
//! thread takes the first request, then every request already queued behind it (at most
//! [`SqliteJournalOptions::group_commit_requests_max`]), and writes them all in one transaction: the
//! requests that arrived while the previous transaction was being committed share the next one, and
//! one commit (one WAL sync) serves them all. Each request runs in its own savepoint and is checked on
//! its own, so a request that fails (a `SeqConflict`, a stale fencing token) is rolled back alone and
//! the others in the group still commit. Only a failure of the transaction itself (the commit, an I/O
//! error) fails the whole group.
//!
//! # Durability
//!
//! The default is `synchronous = FULL` ([`SqliteSynchronous::Full`]): the WAL is synced at every commit,
//! so an acknowledged append survives a power loss or an OS crash, not only a process crash. Group
//! commit is what makes that affordable: under load one sync covers many appends. `NORMAL` syncs only at
//! checkpoints — faster when writes arrive one at a time, and the database stays consistent, but the
//! last acknowledged transactions can be lost on power loss; choose it only where the journal is not the
//! record of truth (caches, tests, replicas that can re-fetch).
//!
//! # Schema
//!
//! `events` with `PRIMARY KEY (persistence_id, seq_nr)` — the second fence behind the sequence check —
//! `fences` (the fencing token recorded per persistence id) and `snapshots` (the latest per persistence
//! id). Integers are SQLite's signed 64-bit; version vectors are JSON text, so that the file can be
//! inspected with the `sqlite3` shell; `PRAGMA user_version` holds the schema version.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Type;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior, params,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use ulid::Ulid;

use super::rules::{
    check_append_against_stream, check_fence_advance, next_fence, validate_append,
    validate_fencing_token, validate_snapshot,
};
use super::{
    EventEnvelope, IdempotencyRecord, Journal, JournalError, SnapshotEnvelope, StreamHead,
};

/// The schema version this code reads and writes, kept in `PRAGMA user_version`. Version 2 added
/// the events' `idempotency` column; a version 1 journal is migrated when opened.
const SCHEMA_VERSION: i64 = 2;

/// Brings a version 1 journal to version 2: events written before have no idempotency record.
const MIGRATE_1_TO_2: &str = "ALTER TABLE events ADD COLUMN idempotency BLOB;";

const SCHEMA: &str = "
    CREATE TABLE events (
        persistence_id TEXT NOT NULL,
        seq_nr INTEGER NOT NULL,
        writer TEXT NOT NULL,
        fencing_token INTEGER NOT NULL,
        timestamp INTEGER NOT NULL,
        origin_replica TEXT NOT NULL,
        origin_seq_nr INTEGER NOT NULL,
        version TEXT NOT NULL,
        concurrent INTEGER NOT NULL,
        plugin TEXT NOT NULL,
        payload BLOB NOT NULL,
        idempotency BLOB,
        PRIMARY KEY (persistence_id, seq_nr)
    ) STRICT;
    CREATE TABLE fences (
        persistence_id TEXT NOT NULL PRIMARY KEY,
        fencing_token INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE snapshots (
        persistence_id TEXT NOT NULL PRIMARY KEY,
        seq_nr INTEGER NOT NULL,
        writer TEXT NOT NULL,
        version TEXT NOT NULL,
        seen TEXT NOT NULL,
        plugin TEXT NOT NULL,
        payload BLOB NOT NULL
    ) STRICT;
";

const EVENT_COLUMNS: &str = "persistence_id, seq_nr, writer, fencing_token, timestamp, \
     origin_replica, origin_seq_nr, version, concurrent, plugin, payload, idempotency";

/// How long a statement waits for a lock held by another connection (another process inspecting or
/// backing up the file, or a checkpoint) before failing: long enough to ride out a checkpoint, short
/// enough that a stuck lock surfaces as an error instead of a hang.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `synchronous` setting of the writer connection. See the module docs for the trade-off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqliteSynchronous {
    /// Sync the WAL at every commit: acknowledged writes survive power loss.
    #[default]
    Full,
    /// Sync only at checkpoints: acknowledged writes survive a process crash but the last ones may be
    /// lost on power loss or an OS crash.
    Normal,
}

impl SqliteSynchronous {
    fn pragma_value(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// Tuning of a [`SqliteJournal`]. The defaults suit a host serving many entities.
#[derive(Clone, Debug)]
pub struct SqliteJournalOptions {
    /// Durability of a commit. Default [`SqliteSynchronous::Full`], stated here so that an upgrade
    /// cannot weaken it silently.
    pub synchronous: SqliteSynchronous,
    /// Most write requests one group transaction takes (at least 1). Bounds how long one transaction
    /// holds the write lock and how many replies wait on one commit. Default 256.
    pub group_commit_requests_max: usize,
    /// Most write requests queued for the writer thread (at least 1); further writers wait for room,
    /// which is the back-pressure on a journal that cannot keep up. Default 1024.
    pub write_queue_depth_max: usize,
    /// Most read connections open at once (at least 1); further reads wait. Each read occupies one
    /// tokio blocking thread while it runs. Default 4.
    pub read_connections_max: usize,
}

impl Default for SqliteJournalOptions {
    fn default() -> Self {
        Self {
            synchronous: SqliteSynchronous::Full,
            group_commit_requests_max: 256,
            write_queue_depth_max: 1024,
            read_connections_max: 4,
        }
    }
}

/// A journal in one SQLite database file. Open it once per file and share it (`Arc<dyn Journal>`).
///
/// The writer thread stops once the last handle is dropped and the writes queued before are done.
#[derive(Debug)]
pub struct SqliteJournal {
    writes: mpsc::Sender<WriteRequest>,
    readers: Arc<ReadConnections>,
    transactions_committed: Arc<AtomicU64>,
}

impl SqliteJournal {
    /// Opens the journal at `path` with the default options, creating the parent directory, the
    /// database file and its schema as needed.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        Self::open_with_options(path, SqliteJournalOptions::default()).await
    }

    /// Opens the journal at `path`, creating the parent directory, the database file and its schema as
    /// needed. Fails with a clear [`JournalError::Storage`] for a file that is not a weft journal.
    pub async fn open_with_options(
        path: impl AsRef<Path>,
        options: SqliteJournalOptions,
    ) -> Result<Self, JournalError> {
        let path = path.as_ref().to_owned();
        let writer_path = path.clone();
        let connection = tokio::task::spawn_blocking(move || {
            open_writer_connection(&writer_path, options.synchronous)
        })
        .await
        .map_err(|error| storage_error("opening the journal", error))??;

        let (writes, requests) = mpsc::channel(options.write_queue_depth_max.max(1));
        let transactions_committed = Arc::new(AtomicU64::new(0));
        let writer = GroupCommitWriter {
            connection,
            requests,
            group_requests_max: options.group_commit_requests_max.max(1),
            transactions_committed: Arc::clone(&transactions_committed),
        };
        std::thread::Builder::new()
            .name("weft-journal-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|error| storage_error("starting the journal writer thread", error))?;

        Ok(Self {
            writes,
            readers: Arc::new(ReadConnections {
                path,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(options.read_connections_max.max(1))),
            }),
            transactions_committed,
        })
    }

    /// How many group transactions the writer thread has committed so far; with group commit, fewer
    /// than the writes it was sent when writes arrive concurrently.
    pub fn transactions_committed(&self) -> u64 {
        self.transactions_committed.load(Ordering::Relaxed)
    }

    async fn write(&self, operation: WriteOperation) -> Result<(), JournalError> {
        self.write_returning(operation).await.map(drop)
    }

    /// Sends `operation` to the writer thread and waits for its outcome.
    async fn write_returning(&self, operation: WriteOperation) -> WriteOutcome {
        let (reply, outcome) = oneshot::channel();
        self.writes
            .send(WriteRequest { operation, reply })
            .await
            .map_err(|_| writer_stopped())?;
        outcome.await.map_err(|_| writer_stopped())?
    }
}

#[async_trait]
impl Journal for SqliteJournal {
    async fn append(
        &self,
        persistence_id: &str,
        expected_seq_nr: u64,
        fencing_token: u64,
        events: Vec<EventEnvelope>,
    ) -> Result<(), JournalError> {
        validate_append(persistence_id, expected_seq_nr, fencing_token, &events)?;
        self.write(WriteOperation::Append {
            persistence_id: persistence_id.to_owned(),
            expected_seq_nr,
            fencing_token,
            events,
        })
        .await
    }

    async fn read(
        &self,
        persistence_id: &str,
        from_seq_nr: u64,
        max: usize,
    ) -> Result<Vec<EventEnvelope>, JournalError> {
        let persistence_id = persistence_id.to_owned();
        // Seq nrs beyond the stored range cannot exist: reading from one reads nothing.
        let Ok(from_seq_nr) = i64::try_from(from_seq_nr) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        self.readers
            .run("reading events", move |connection| {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM events \
                     WHERE persistence_id = ?1 AND seq_nr >= ?2 ORDER BY seq_nr LIMIT ?3"
                );
                let mut statement = connection.prepare_cached(&sql)?;
                let events = statement
                    .query_map(params![persistence_id, from_seq_nr, limit], event_from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(events)
            })
            .await
    }

    async fn highest_seq_nr(&self, persistence_id: &str) -> Result<u64, JournalError> {
        let persistence_id = persistence_id.to_owned();
        self.readers
            .run("reading the highest seq nr", move |connection| {
                highest_seq_nr(connection, &persistence_id)
            })
            .await
    }

    async fn save_snapshot(&self, snapshot: SnapshotEnvelope) -> Result<(), JournalError> {
        validate_snapshot(&snapshot)?;
        self.write(WriteOperation::SaveSnapshot(snapshot)).await
    }

    async fn latest_snapshot(
        &self,
        persistence_id: &str,
    ) -> Result<Option<SnapshotEnvelope>, JournalError> {
        let persistence_id = persistence_id.to_owned();
        self.readers
            .run("reading the latest snapshot", move |connection| {
                connection
                    .prepare_cached(
                        "SELECT persistence_id, seq_nr, writer, version, seen, plugin, payload \
                         FROM snapshots WHERE persistence_id = ?1",
                    )?
                    .query_row(params![persistence_id], snapshot_from_row)
                    .optional()
            })
            .await
    }

    async fn record_fence(
        &self,
        persistence_id: &str,
        fencing_token: u64,
    ) -> Result<(), JournalError> {
        validate_fencing_token(fencing_token)?;
        self.write(WriteOperation::RecordFence {
            persistence_id: persistence_id.to_owned(),
            fencing_token,
        })
        .await
    }

    async fn advance_fence(&self, persistence_id: &str) -> Result<u64, JournalError> {
        let advanced = self
            .write_returning(WriteOperation::AdvanceFence {
                persistence_id: persistence_id.to_owned(),
            })
            .await?;
        advanced.ok_or_else(|| JournalError::Storage("the writer returned no fence".to_owned()))
    }

    async fn fence(&self, persistence_id: &str) -> Result<u64, JournalError> {
        let persistence_id = persistence_id.to_owned();
        self.readers
            .run("reading the fence", move |connection| {
                recorded_fence(connection, &persistence_id)
            })
            .await
    }

    async fn persistence_ids(&self) -> Result<Vec<String>, JournalError> {
        self.readers
            .run("listing persistence ids", |connection| {
                connection
                    .prepare_cached(
                        "SELECT DISTINCT persistence_id FROM events ORDER BY persistence_id",
                    )?
                    .query_map([], |row| row.get(0))?
                    .collect()
            })
            .await
    }

    async fn stream_heads(
        &self,
        from: &str,
        until: &str,
        max: usize,
    ) -> Result<Vec<StreamHead>, JournalError> {
        let (from, until) = (from.to_owned(), until.to_owned());
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        self.readers
            .run("listing streams", move |connection| {
                connection
                    .prepare_cached(STREAM_HEADS)?
                    .query_map(params![from, until, limit], |row| {
                        Ok(StreamHead {
                            persistence_id: row.get(0)?,
                            seq_nr: row.get(1)?,
                        })
                    })?
                    .collect()
            })
            .await
    }
}

/// The streams in `?1..?2` with events or a snapshot, at most `?3`: the first `?3` of each table
/// (walked along their primary keys, whose BINARY collation compares bytes), merged.
const STREAM_HEADS: &str = "SELECT persistence_id, MAX(seq_nr) FROM ( \
         SELECT * FROM (SELECT persistence_id, MAX(seq_nr) AS seq_nr FROM events \
             WHERE persistence_id >= ?1 AND persistence_id < ?2 \
             GROUP BY persistence_id ORDER BY persistence_id LIMIT ?3) \
         UNION ALL \
         SELECT * FROM (SELECT persistence_id, seq_nr FROM snapshots \
             WHERE persistence_id >= ?1 AND persistence_id < ?2 \
             ORDER BY persistence_id LIMIT ?3) \
     ) GROUP BY persistence_id ORDER BY persistence_id LIMIT ?3";

/// Read-only connections, opened on demand and kept for reuse, at most `permits` in use at once.
#[derive(Debug)]
struct ReadConnections {
    path: PathBuf,
    /// A std mutex: held only to push or pop a connection, never across an `.await`.
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadConnections {
    /// Runs `query` on a read connection on a blocking thread; `doing` names the query in errors.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        doing: &'static str,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, JournalError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|error| storage_error(doing, error))?;
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let connection = match readers.take_idle() {
                Some(connection) => connection,
                None => open_read_connection(&readers.path)?,
            };
            let result = query(&connection);
            readers.put_back(connection);
            result
        })
        .await
        .map_err(|error| storage_error(doing, error))?
        .map_err(|error| storage_error(doing, error))
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn put_back(&self, connection: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(connection);
    }
}

/// One write for the writer thread and where to send its outcome.
#[derive(Debug)]
struct WriteRequest {
    operation: WriteOperation,
    reply: oneshot::Sender<WriteOutcome>,
}

/// What one write did: the token it recorded for an [`WriteOperation::AdvanceFence`], `None` for
/// the other writes.
type WriteOutcome = Result<Option<u64>, JournalError>;

#[derive(Debug)]
enum WriteOperation {
    Append {
        persistence_id: String,
        expected_seq_nr: u64,
        fencing_token: u64,
        events: Vec<EventEnvelope>,
    },
    RecordFence {
        persistence_id: String,
        fencing_token: u64,
    },
    AdvanceFence {
        persistence_id: String,
    },
    SaveSnapshot(SnapshotEnvelope),
}

/// The writer thread's state: the only connection that writes.
struct GroupCommitWriter {
    connection: Connection,
    requests: mpsc::Receiver<WriteRequest>,
    group_requests_max: usize,
    transactions_committed: Arc<AtomicU64>,
}

impl GroupCommitWriter {
    /// Commits groups of queued requests until every [`SqliteJournal`] handle is gone.
    fn run(mut self) {
        let mut group = Vec::with_capacity(self.group_requests_max);
        while let Some(first) = self.requests.blocking_recv() {
            group.push(first);
            while group.len() < self.group_requests_max {
                match self.requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            let operations: Vec<&WriteOperation> =
                group.iter().map(|request| &request.operation).collect();
            let outcomes = match write_group(&mut self.connection, &operations) {
                Ok(outcomes) => {
                    self.transactions_committed.fetch_add(1, Ordering::Relaxed);
                    outcomes
                }
                Err(group_error) => vec![Err(group_error); group.len()],
            };
            for (request, outcome) in group.drain(..).zip(outcomes) {
                // A caller that stopped waiting has nobody to tell.
                let _ = request.reply.send(outcome);
            }
        }
    }
}

/// Writes `operations` in one transaction, each in its own savepoint so that one that fails is rolled
/// back alone. Returns each operation's outcome once the transaction committed; an error if the
/// transaction itself failed, in which case nothing was written.
fn write_group(
    connection: &mut Connection,
    operations: &[&WriteOperation],
) -> Result<Vec<WriteOutcome>, JournalError> {
    let mut transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|error| storage_error("beginning a group transaction", error))?;
    let mut outcomes = Vec::with_capacity(operations.len());
    for operation in operations {
        let savepoint = transaction
            .savepoint()
            .map_err(|error| storage_error("opening a savepoint", error))?;
        let outcome = apply(&savepoint, operation);
        let closed = if outcome.is_ok() {
            savepoint.commit()
        } else {
            // The default drop behaviour: roll back to the savepoint, then release it.
            savepoint.finish()
        };
        closed.map_err(|error| storage_error("closing a savepoint", error))?;
        outcomes.push(outcome);
    }
    transaction
        .commit()
        .map_err(|error| storage_error("committing a group transaction", error))?;
    Ok(outcomes)
}

/// Checks and writes one operation inside the group transaction.
fn apply(connection: &Connection, operation: &WriteOperation) -> WriteOutcome {
    match operation {
        WriteOperation::Append {
            persistence_id,
            expected_seq_nr,
            fencing_token,
            events,
        } => {
            let in_context =
                |error| storage_error(format_args!("appending to {persistence_id}"), error);
            check_append_against_stream(
                persistence_id,
                *expected_seq_nr,
                *fencing_token,
                highest_seq_nr(connection, persistence_id).map_err(in_context)?,
                recorded_fence(connection, persistence_id).map_err(in_context)?,
            )?;
            let mut insert = connection
                .prepare_cached(&format!(
                    "INSERT INTO events ({EVENT_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                ))
                .map_err(in_context)?;
            for event in events {
                let version = to_json(&event.version).map_err(in_context)?;
                let idempotency = event
                    .idempotency
                    .as_ref()
                    .map(IdempotencyRecord::to_column)
                    .transpose()?;
                insert
                    .execute(params![
                        event.persistence_id,
                        event.seq_nr,
                        event.writer.to_string(),
                        event.fencing_token,
                        event.timestamp,
                        event.origin_replica,
                        event.origin_seq_nr,
                        version,
                        event.concurrent,
                        event.plugin,
                        event.payload,
                        idempotency,
                    ])
                    .map_err(in_context)?;
            }
            Ok(None)
        }
        WriteOperation::RecordFence {
            persistence_id,
            fencing_token,
        } => {
            let in_context = |error| {
                storage_error(
                    format_args!("recording the fence of {persistence_id}"),
                    error,
                )
            };
            let current = recorded_fence(connection, persistence_id).map_err(in_context)?;
            if check_fence_advance(persistence_id, *fencing_token, current)? {
                connection
                    .prepare_cached(UPSERT_FENCE)
                    .and_then(|mut upsert| upsert.execute(params![persistence_id, fencing_token]))
                    .map_err(in_context)?;
            }
            Ok(None)
        }
        WriteOperation::AdvanceFence { persistence_id } => {
            let in_context = |error| {
                storage_error(
                    format_args!("advancing the fence of {persistence_id}"),
                    error,
                )
            };
            let advanced =
                next_fence(recorded_fence(connection, persistence_id).map_err(in_context)?)?;
            connection
                .prepare_cached(UPSERT_FENCE)
                .and_then(|mut upsert| upsert.execute(params![persistence_id, advanced]))
                .map_err(in_context)?;
            Ok(Some(advanced))
        }
        WriteOperation::SaveSnapshot(snapshot) => {
            let in_context = |error| {
                storage_error(
                    format_args!("saving a snapshot of {}", snapshot.persistence_id),
                    error,
                )
            };
            connection
                .prepare_cached(
                    "INSERT INTO snapshots (persistence_id, seq_nr, writer, version, seen, plugin, payload) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (persistence_id) DO UPDATE SET \
                         seq_nr = excluded.seq_nr, writer = excluded.writer, version = excluded.version, \
                         seen = excluded.seen, plugin = excluded.plugin, payload = excluded.payload \
                     WHERE excluded.seq_nr >= snapshots.seq_nr",
                )
                .and_then(|mut upsert| {
                    upsert.execute(params![
                        snapshot.persistence_id,
                        snapshot.seq_nr,
                        snapshot.writer.to_string(),
                        to_json(&snapshot.version)?,
                        to_json(&snapshot.seen)?,
                        snapshot.plugin,
                        snapshot.payload,
                    ])
                })
                .map_err(in_context)?;
            Ok(None)
        }
    }
}

/// Sets the fence of `?1` to `?2`; the caller checked that it does not go down.
const UPSERT_FENCE: &str = "INSERT INTO fences (persistence_id, fencing_token) VALUES (?1, ?2) \
     ON CONFLICT (persistence_id) DO UPDATE SET fencing_token = excluded.fencing_token";

fn highest_seq_nr(connection: &Connection, persistence_id: &str) -> rusqlite::Result<u64> {
    connection
        .prepare_cached("SELECT COALESCE(MAX(seq_nr), 0) FROM events WHERE persistence_id = ?1")?
        .query_row(params![persistence_id], |row| row.get(0))
}

fn recorded_fence(connection: &Connection, persistence_id: &str) -> rusqlite::Result<u64> {
    connection
        .prepare_cached("SELECT fencing_token FROM fences WHERE persistence_id = ?1")?
        .query_row(params![persistence_id], |row| row.get(0))
        .optional()
        .map(Option::unwrap_or_default)
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<EventEnvelope> {
    Ok(EventEnvelope {
        persistence_id: row.get(0)?,
        seq_nr: row.get(1)?,
        writer: ulid_at(row, 2)?,
        fencing_token: row.get(3)?,
        timestamp: row.get(4)?,
        origin_replica: row.get(5)?,
        origin_seq_nr: row.get(6)?,
        version: json_at(row, 7)?,
        concurrent: row.get(8)?,
        plugin: row.get(9)?,
        payload: row.get(10)?,
        idempotency: row
            .get::<_, Option<Vec<u8>>>(11)?
            .map(|bytes| IdempotencyRecord::from_column(&bytes))
            .transpose()
            .map_err(|error| {
                rusqlite::Error::FromSqlConversionFailure(11, Type::Blob, Box::new(error))
            })?,
    })
}

fn snapshot_from_row(row: &Row<'_>) -> rusqlite::Result<SnapshotEnvelope> {
    Ok(SnapshotEnvelope {
        persistence_id: row.get(0)?,
        seq_nr: row.get(1)?,
        writer: ulid_at(row, 2)?,
        version: json_at(row, 3)?,
        seen: json_at(row, 4)?,
        plugin: row.get(5)?,
        payload: row.get(6)?,
    })
}

fn ulid_at(row: &Row<'_>, index: usize) -> rusqlite::Result<Ulid> {
    let text: String = row.get(index)?;
    Ulid::from_string(&text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(error))
    })
}

fn json_at<T: serde::de::DeserializeOwned>(row: &Row<'_>, index: usize) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(error))
    })
}

fn to_json(value: &impl serde::Serialize) -> rusqlite::Result<String> {
    serde_json::to_string(value)
        .map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))
}

/// Opens the writer connection: creates the parent directory and the file if needed, switches to WAL,
/// applies `synchronous` and creates or checks the schema.
fn open_writer_connection(
    path: &Path,
    synchronous: SqliteSynchronous,
) -> Result<Connection, JournalError> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(|error| {
            storage_error(
                format_args!("creating the journal directory {}", parent.display()),
                error,
            )
        })?;
    }
    let opening = |error| open_error(path, error);
    let mut connection = Connection::open(path).map_err(opening)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(opening)?;
    // The first statement that reads the file: a file that is not a database fails here.
    let journal_mode: String = connection
        .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
        .map_err(opening)?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(JournalError::Storage(format!(
            "{}: SQLite kept journal mode {journal_mode} instead of WAL",
            path.display()
        )));
    }
    connection
        .pragma_update(None, "synchronous", synchronous.pragma_value())
        .map_err(opening)?;
    prepare_schema(&mut connection, path)?;
    Ok(connection)
}

/// Creates the schema in a new database, accepts an existing weft journal of [`SCHEMA_VERSION`] and
/// refuses anything else.
fn prepare_schema(connection: &mut Connection, path: &Path) -> Result<(), JournalError> {
    let opening = |error| open_error(path, error);
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(opening)?;
    let schema_version: i64 = transaction
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(opening)?;
    match schema_version {
        0 => {
            let existing_objects: i64 = transaction
                .query_row("SELECT COUNT(*) FROM sqlite_schema", [], |row| row.get(0))
                .map_err(opening)?;
            if existing_objects > 0 {
                return Err(JournalError::Storage(format!(
                    "{} is a SQLite database but not a weft journal (it has tables and no journal \
                     schema version)",
                    path.display()
                )));
            }
            transaction.execute_batch(SCHEMA).map_err(opening)?;
            transaction
                .pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(opening)?;
        }
        1 => {
            transaction.execute_batch(MIGRATE_1_TO_2).map_err(opening)?;
            transaction
                .pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(opening)?;
        }
        SCHEMA_VERSION => {}
        other => {
            return Err(JournalError::Storage(format!(
                "{} has journal schema version {other}; this weft reads version {SCHEMA_VERSION}",
                path.display()
            )));
        }
    }
    transaction.commit().map_err(opening)
}

fn open_read_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    Ok(connection)
}

fn open_error(path: &Path, error: rusqlite::Error) -> JournalError {
    if error.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
        JournalError::Storage(format!(
            "{} is not a weft journal: the file is not a SQLite database",
            path.display()
        ))
    } else {
        storage_error(
            format_args!("opening the journal database {}", path.display()),
            error,
        )
    }
}

fn storage_error(context: impl Display, error: impl Display) -> JournalError {
    JournalError::Storage(format!("{context}: {error}"))
}

fn writer_stopped() -> JournalError {
    JournalError::Storage("the journal writer thread has stopped".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ulid::Ulid;

    use super::*;
    use crate::journal::conformance::{self, sample_batch, sample_snapshot};

    async fn open_in(directory: &Path) -> SqliteJournal {
        SqliteJournal::open(directory.join("journal.db"))
            .await
            .expect("open the journal")
    }

    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("create a temporary directory")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_conformance_suite() {
        let root = temp_dir();
        conformance::run_all(async || {
            // A fresh, not yet existing directory per check: open creates it.
            let directory = root.path().join(Ulid::new().to_string()).join("nested");
            Arc::new(open_in(&directory).await) as Arc<dyn Journal>
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_survives_reopening() {
        let directory = temp_dir();
        let writer = Ulid::new();
        let events = sample_batch("order|1", 0, 3, 4, writer);
        let snapshot = sample_snapshot("order|1", 2, writer);
        {
            let journal = open_in(directory.path()).await;
            journal
                .record_fence("order|1", 3)
                .await
                .expect("record fence");
            journal
                .append("order|1", 0, 3, events.clone())
                .await
                .expect("append");
            journal
                .save_snapshot(snapshot.clone())
                .await
                .expect("save snapshot");
        }

        let reopened = open_in(directory.path()).await;
        assert_eq!(reopened.read("order|1", 1, 100).await, Ok(events));
        assert_eq!(reopened.fence("order|1").await, Ok(3));
        assert_eq!(
            reopened.latest_snapshot("order|1").await,
            Ok(Some(snapshot))
        );
        assert_eq!(
            reopened.persistence_ids().await,
            Ok(vec!["order|1".to_owned()])
        );
        reopened
            .append("order|1", 4, 3, sample_batch("order|1", 4, 3, 1, writer))
            .await
            .expect("the reopened stream continues at its highest seq nr");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_coalesces_concurrent_appends() {
        let directory = temp_dir();
        let journal = Arc::new(open_in(directory.path()).await);
        conformance::check_concurrent_appends_to_distinct_ids(
            Arc::clone(&journal) as Arc<dyn Journal>
        )
        .await;

        let appends = conformance::CONCURRENT_TASKS * conformance::APPENDS_PER_TASK;
        let transactions = journal.transactions_committed();
        assert!(transactions > 0);
        assert!(
            transactions < appends,
            "{appends} concurrent appends took {transactions} transactions: none were coalesced"
        );
    }

    #[tokio::test]
    async fn a_failing_write_in_a_group_fails_alone() {
        let directory = temp_dir();
        let path = directory.path().join("journal.db");
        let mut connection = open_writer_connection(&path, SqliteSynchronous::Full)
            .expect("open the writer connection");
        let writer = Ulid::new();
        let append = |pid: &str, expected_seq_nr, fencing_token, count| WriteOperation::Append {
            persistence_id: pid.to_owned(),
            expected_seq_nr,
            fencing_token,
            events: sample_batch(pid, expected_seq_nr, fencing_token, count, writer),
        };
        let group = [
            append("order|a", 0, 0, 2),
            // Races the append above for the same position: checked after it, it conflicts.
            append("order|a", 0, 0, 1),
            append("order|b", 0, 0, 1),
            WriteOperation::RecordFence {
                persistence_id: "order|c".to_owned(),
                fencing_token: 4,
            },
            append("order|c", 0, 3, 1),
            append("order|c", 0, 4, 1),
            WriteOperation::SaveSnapshot(sample_snapshot("order|a", 2, writer)),
            // Skips the validation `append` does: its second event repeats the first one's seq nr.
            // The primary key refuses it, and the first event is rolled back with it.
            WriteOperation::Append {
                persistence_id: "order|d".to_owned(),
                expected_seq_nr: 0,
                fencing_token: 0,
                events: [
                    sample_batch("order|d", 0, 0, 1, writer),
                    sample_batch("order|d", 0, 0, 1, writer),
                ]
                .concat(),
            },
        ];
        let operations: Vec<&WriteOperation> = group.iter().collect();

        let mut outcomes = write_group(&mut connection, &operations).expect("the group commits");
        let duplicate_outcome = outcomes.pop();
        assert!(
            matches!(
                &duplicate_outcome,
                Some(Err(JournalError::Storage(message)))
                    if message.contains("UNIQUE constraint failed: events.persistence_id, events.seq_nr")
            ),
            "{duplicate_outcome:?}"
        );

        assert_eq!(
            outcomes,
            vec![
                Ok(None),
                Err(JournalError::SeqConflict {
                    persistence_id: "order|a".to_owned(),
                    expected_seq_nr: 0,
                    actual_seq_nr: 2,
                }),
                Ok(None),
                Ok(None),
                Err(JournalError::StaleFencingToken {
                    persistence_id: "order|c".to_owned(),
                    token: 3,
                    current: 4,
                }),
                Ok(None),
                Ok(None),
            ]
        );
        drop(connection);
        let journal = open_in(directory.path()).await;
        assert_eq!(
            journal.read("order|a", 1, 10).await,
            Ok(sample_batch("order|a", 0, 0, 2, writer))
        );
        assert_eq!(journal.highest_seq_nr("order|b").await, Ok(1));
        assert_eq!(
            journal.read("order|c", 1, 10).await,
            Ok(sample_batch("order|c", 0, 4, 1, writer))
        );
        assert_eq!(journal.fence("order|c").await, Ok(4));
        assert_eq!(journal.highest_seq_nr("order|d").await, Ok(0));
        assert_eq!(
            journal.latest_snapshot("order|a").await,
            Ok(Some(sample_snapshot("order|a", 2, writer)))
        );
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_refused() {
        let directory = temp_dir();
        let path = directory.path().join("notes.txt");
        std::fs::write(
            &path,
            "these are not the tables you are looking for\n".repeat(100),
        )
        .expect("write a text file");

        let error = SqliteJournal::open(&path)
            .await
            .expect_err("a text file is refused");

        assert_eq!(
            error,
            JournalError::Storage(format!(
                "{} is not a weft journal: the file is not a SQLite database",
                path.display()
            ))
        );
    }

    #[tokio::test]
    async fn another_sqlite_database_is_refused() {
        let directory = temp_dir();
        let path = directory.path().join("other.db");
        Connection::open(&path)
            .and_then(|other| other.execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY)"))
            .expect("create another application's database");

        let error = SqliteJournal::open(&path)
            .await
            .expect_err("a foreign database is refused");

        assert!(
            error
                .to_string()
                .contains("is a SQLite database but not a weft journal"),
            "{error}"
        );
    }

    /// A journal written before events had an idempotency column opens, keeps its events, and
    /// takes keyed ones.
    #[tokio::test]
    async fn a_version_1_journal_is_migrated() {
        let directory = temp_dir();
        let path = directory.path().join("journal.db");
        let version_1 = SCHEMA.replace("idempotency BLOB,", "");
        Connection::open(&path)
            .and_then(|old| {
                old.execute_batch(&version_1)?;
                old.execute(
                    &format!(
                        "INSERT INTO events ({}) VALUES ('p', 1, ?1, 0, 0, '', 1, '{{}}', 0, 'c', x'c0')",
                        EVENT_COLUMNS.replace(", idempotency", "")
                    ),
                    params![Ulid::nil().to_string()],
                )?;
                old.pragma_update(None, "user_version", 1)
            })
            .expect("write a version 1 journal");

        let journal = SqliteJournal::open(&path).await.expect("migrated");
        let mut keyed = crate::journal::conformance::sample_event("p", 2, Ulid::nil());
        keyed.idempotency = Some(IdempotencyRecord {
            key: "k".into(),
            digest: vec![1; 32],
            reply: vec![0xc0],
        });
        journal
            .append("p", 1, 0, vec![keyed.clone()])
            .await
            .unwrap();
        let events = journal.read("p", 1, 10).await.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].idempotency, None);
        assert_eq!(events[1], keyed);
    }

    #[tokio::test]
    async fn a_journal_of_a_newer_schema_is_refused() {
        let directory = temp_dir();
        drop(open_in(directory.path()).await);
        let path = directory.path().join("journal.db");
        Connection::open(&path)
            .and_then(|newer| newer.pragma_update(None, "user_version", 3))
            .expect("mark the journal as schema version 3");

        let error = SqliteJournal::open(&path)
            .await
            .expect_err("a newer schema is refused");

        assert!(
            error
                .to_string()
                .contains("has journal schema version 3; this weft reads version 2"),
            "{error}"
        );
    }

    #[test]
    fn the_writer_connection_uses_wal_and_the_chosen_synchronous_setting() {
        let directory = temp_dir();
        for (synchronous, pragma_value) in
            [(SqliteSynchronous::Full, 2), (SqliteSynchronous::Normal, 1)]
        {
            let connection =
                open_writer_connection(&directory.path().join("journal.db"), synchronous)
                    .expect("open the writer connection");
            let journal_mode: String = connection
                .pragma_query_value(None, "journal_mode", |row| row.get(0))
                .expect("journal_mode");
            let synchronous_value: i64 = connection
                .pragma_query_value(None, "synchronous", |row| row.get(0))
                .expect("synchronous");
            assert_eq!(journal_mode, "wal");
            assert_eq!(synchronous_value, pragma_value, "{synchronous:?}");
        }
    }
}
