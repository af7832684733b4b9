//! PostgreSQL plumbing shared by the PostgreSQL journal and lease backends: a small pool of
//! `tokio-postgres` connections that keep their prepared statements, the bounds the server keeps
//! on their sessions, schema versions, and error messages that say what failed.
//!
//! Connections use TLS when the URL asks for it (`sslmode`, `sslrootcert`: see [`crate::tls`]);
//! the server must then agree to TLS, and a refused handshake fails naming the server and the
//! reason.
//!
//! # No lock outlives its holder's lease
//!
//! A host can freeze anywhere (a long GC pause, a stopped VM, `SIGSTOP`) with its connections
//! open. Whatever row lock one of its sessions held would then stay held while it is frozen, and
//! every other host's write to that row would wait — the new lease holder's included, with no
//! error, for as long as the pause lasts. Two things keep that from happening:
//!
//! - every write of the backends is one statement, run and committed by the server without a
//!   client round trip in between, so a lock lives only while the server works on the statement;
//! - every session carries [`SessionBounds`], derived from the shortest lease time to live: a
//!   statement waits for a lock at most half a lease, a session that sits inside a transaction
//!   while its client says nothing is ended by the server after half a lease (its locks go with
//!   it), and no statement runs longer than two leases (at least 5 s). A statement cut short
//!   fails with [`is_out_of_time`] true: nothing was written, and it may be retried.
//!
//! The SQL of both backends stays portable to PostgreSQL-compatible distributed databases
//! (CockroachDB, YugabyteDB): plain tables, `INSERT … ON CONFLICT`, row locks; no advisory locks, no
//! extensions, no `LISTEN`.

use std::collections::HashMap;
use std::fmt::Display;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, NoTls, Socket, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{self, Verification};

/// How long opening one connection may take before the attempt fails: a server that does not answer
/// surfaces as an error instead of a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle time after which TCP keepalives probe the server, so that a connection to a vanished server
/// is noticed and replaced.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// How often a racing schema creation (another node opening the same database) is retried.
const SCHEMA_ATTEMPTS_MAX: usize = 3;
/// The least `statement_timeout` [`SessionBounds`] set, however short the leases: reading a page
/// of a long stream on a busy server must not be cut short.
const STATEMENT_TIMEOUT_MIN: Duration = Duration::from_secs(5);

/// Time bounds the server keeps on every session of a pool (PostgreSQL's `lock_timeout`,
/// `idle_in_transaction_session_timeout` and `statement_timeout`), so that no session waits on a
/// lock, or keeps one, for longer than a lease lives. See the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionBounds {
    /// `lock_timeout`: a statement that waited this long for a lock fails (SQLSTATE 55P03).
    pub lock_wait: Duration,
    /// `idle_in_transaction_session_timeout`: the server ends a session that sat this long inside
    /// a transaction without a word from its client, rolling the transaction back.
    pub idle_in_transaction: Duration,
    /// `statement_timeout`: a statement that ran this long is cancelled (SQLSTATE 57014).
    pub statement: Duration,
}

impl SessionBounds {
    /// The bounds for leases that live at least `ttl`: half of it for a lock wait and for an idle
    /// transaction — so a frozen host's transaction ends within half a lease of the freeze, before
    /// the lease it renews every third of one has run out — and twice it (at least 5 s) for a
    /// statement. None is below a millisecond
    /// (PostgreSQL reads 0 as "no bound").
    pub fn for_lease_ttl(ttl: Duration) -> SessionBounds {
        let at_least_a_millisecond = |bound: Duration| bound.max(Duration::from_millis(1));
        SessionBounds {
            lock_wait: at_least_a_millisecond(ttl / 2),
            idle_in_transaction: at_least_a_millisecond(ttl / 2),
            statement: (ttl * 2).max(STATEMENT_TIMEOUT_MIN),
        }
    }

    /// The bounds as run-time options of a connection (`-c name=value …`).
    fn as_options(&self) -> String {
        format!(
            "-c lock_timeout={}ms -c idle_in_transaction_session_timeout={}ms \
             -c statement_timeout={}ms",
            self.lock_wait.as_millis(),
            self.idle_in_transaction.as_millis(),
            self.statement.as_millis()
        )
    }
}

/// A pool of at most `connections_max` connections to one database. Connections are opened on demand
/// and kept while healthy; a closed one (server restart, terminated backend) is dropped and the next
/// checkout opens a fresh one.
#[derive(Debug)]
pub struct PgPool {
    config: Config,
    /// `None`: plain TCP.
    tls: Option<PgTls>,
    /// A std mutex: held only to push or pop a connection, never across an `.await`.
    idle: Arc<Mutex<Vec<PgConnection>>>,
    permits: Arc<Semaphore>,
}

impl PgPool {
    /// Parses `url` (`postgres://user@host:port/database`, with `sslmode` and `sslrootcert` for
    /// TLS), names the connections
    /// `application_name` (visible in `pg_stat_activity`), bounds their sessions with `bounds`
    /// (options the URL sets itself win over them) and opens one connection to check that the
    /// database is reachable.
    pub async fn connect(
        url: &str,
        application_name: &str,
        connections_max: usize,
        bounds: SessionBounds,
    ) -> Result<PgPool, String> {
        let split =
            tls::split_url(url).map_err(|error| format!("invalid PostgreSQL URL: {error}"))?;
        let mut config: Config = split
            .url
            .parse()
            .map_err(|error| format!("invalid PostgreSQL URL: {error}"))?;
        let options = match config.get_options() {
            Some(own) => format!("{} {own}", bounds.as_options()),
            None => bounds.as_options(),
        };
        config
            .application_name(application_name)
            .options(&options)
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE);
        let tls = match split.tls {
            Some(settings) => {
                // The server must agree to TLS; without this the driver would fall back to none.
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let client_config = settings
                    .client_config()
                    .map_err(|error| format!("PostgreSQL TLS: {error}"))?;
                Some(PgTls {
                    connector: MakeRustlsConnect::new(client_config),
                    verification: settings.verification,
                })
            }
            None => None,
        };
        let pool = PgPool {
            config,
            tls,
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(Semaphore::new(connections_max.max(1))),
        };
        drop(pool.get().await?);
        Ok(pool)
    }

    /// A connection for one operation; back in the pool when dropped, unless it was closed.
    pub async fn get(&self) -> Result<PooledConnection, String> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|error| format!("the connection pool is closed: {error}"))?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let connection = match idle.filter(|connection| !connection.client.is_closed()) {
            Some(connection) => connection,
            None => self.open().await?,
        };
        Ok(PooledConnection {
            connection: Some(connection),
            idle: Arc::clone(&self.idle),
            _permit: permit,
        })
    }

    async fn open(&self) -> Result<PgConnection, String> {
        let client = match &self.tls {
            Some(tls) => connect(&self.config, tls.connector.clone())
                .await
                .map_err(|error| {
                    describe(
                        format_args!(
                            "connecting to PostgreSQL at {} over TLS (sslmode={})",
                            self.server(),
                            tls.verification.sslmode()
                        ),
                        &error,
                    )
                })?,
            None => connect(&self.config, NoTls).await.map_err(|error| {
                describe(
                    format_args!("connecting to PostgreSQL at {}", self.server()),
                    &error,
                )
            })?,
        };
        Ok(PgConnection {
            client,
            statements: HashMap::new(),
        })
    }

    /// The hosts and ports of the URL, for error messages.
    fn server(&self) -> String {
        let hosts = self.config.get_hosts().iter().map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        });
        let ports = self.config.get_ports();
        hosts
            .enumerate()
            .map(|(index, host)| match ports.get(index).or(ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The TLS connector of a pool and the verification it does, named in errors.
#[derive(Clone)]
struct PgTls {
    connector: MakeRustlsConnect,
    verification: Verification,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "PgTls(sslmode={})", self.verification.sslmode())
    }
}

/// Opens one connection with `tls` and runs its connection task, which ends when the client is
/// dropped or the server closes the connection.
async fn connect<T>(config: &Config, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!("PostgreSQL connection ended: {error}");
        }
    });
    Ok(client)
}

/// One connection and the statements prepared on it, by their SQL text.
#[derive(Debug)]
pub struct PgConnection {
    pub client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl PgConnection {
    /// The statement for `sql`, prepared on first use on this connection.
    pub async fn statement(
        &mut self,
        sql: &'static str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Creates the tables of `component` (`ddl`, made of `CREATE TABLE IF NOT EXISTS` statements) and
    /// records its schema `version`; refuses a database whose recorded version differs.
    pub async fn prepare_schema(
        &mut self,
        component: &str,
        version: i64,
        ddl: &str,
    ) -> Result<(), String> {
        let in_context = |error: tokio_postgres::Error| {
            describe(format_args!("creating the {component} schema"), &error)
        };
        let script = format!(
            "CREATE TABLE IF NOT EXISTS weft_schema_versions (
                 component TEXT NOT NULL PRIMARY KEY,
                 version BIGINT NOT NULL
             );
             {ddl}"
        );
        let mut attempt = 1;
        // Two nodes creating the same tables at once can collide in the catalog: the loser retries
        // and then finds them.
        while let Err(error) = self.client.batch_execute(&script).await {
            if attempt >= SCHEMA_ATTEMPTS_MAX || !is_catalog_race(&error) {
                return Err(in_context(error));
            }
            attempt += 1;
        }
        self.client
            .execute(
                "INSERT INTO weft_schema_versions (component, version) VALUES ($1, $2) \
                 ON CONFLICT (component) DO NOTHING",
                &[&component, &version],
            )
            .await
            .map_err(in_context)?;
        let recorded: i64 = self
            .client
            .query_one(
                "SELECT version FROM weft_schema_versions WHERE component = $1",
                &[&component],
            )
            .await
            .map_err(in_context)?
            .get(0);
        if recorded != version {
            return Err(format!(
                "the database has {component} schema version {recorded}; this weft uses version {version}"
            ));
        }
        Ok(())
    }
}

/// A checked-out connection; returns to the pool when dropped unless the server closed it.
#[derive(Debug)]
pub struct PooledConnection {
    connection: Option<PgConnection>,
    idle: Arc<Mutex<Vec<PgConnection>>>,
    _permit: OwnedSemaphorePermit,
}

impl Deref for PooledConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.connection
            .as_ref()
            .expect("the connection is only taken out on drop")
    }
}

impl DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.connection
            .as_mut()
            .expect("the connection is only taken out on drop")
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take()
            && !connection.client.is_closed()
        {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(connection);
        }
    }
}

/// `"<doing>: <what the server or the driver said>"`, with the server's SQLSTATE when there is one,
/// and the causes the driver wraps (a refused TLS handshake's reason, an I/O error).
pub fn describe(doing: impl Display, error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!(
            "{doing}: {} {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => {
            let mut described = format!("{doing}: {error}");
            let mut cause = std::error::Error::source(error);
            while let Some(inner) = cause {
                let said = inner.to_string();
                if !described.ends_with(&said) {
                    described.push_str(": ");
                    described.push_str(&said);
                }
                cause = inner.source();
            }
            described
        }
    }
}

/// Whether the server gave up on the statement at one of the [`SessionBounds`] — a lock waited
/// for too long, a statement that ran too long, a transaction left idle — rather than refusing
/// it: the statement was rolled back, and may be tried again.
pub fn is_out_of_time(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    error.code().is_some_and(|code| {
        *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::QUERY_CANCELED
            || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
    })
}

/// Concurrent `CREATE TABLE IF NOT EXISTS` of one table can fail on the catalog's unique indexes,
/// or wait for the other creation longer than the sessions' lock bound.
fn is_catalog_race(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    error.code().is_some_and(|code| {
        *code == SqlState::UNIQUE_VIOLATION
            || *code == SqlState::DUPLICATE_TABLE
            || *code == SqlState::LOCK_NOT_AVAILABLE
    })
}
