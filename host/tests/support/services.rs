//! Throwaway PostgreSQL and Redis servers for tests and benchmark programs: each in its own temporary
//! directory, on a free loopback port, stopped by its pid when dropped.
//!
//! The server binaries come from Debian's packages (`cargo xtask test` installs `postgresql` and
//! `redis-server` when they are missing): PostgreSQL's from `/usr/lib/postgresql/<major>/bin/` (the
//! newest major), else from PATH; `redis-server` from PATH. PostgreSQL refuses to run as root, so when
//! the tests run as root the server runs as the `postgres` system user the package creates.
//!
//! Readiness is the server's own "ready" log line, awaited with a deadline; a server that exits before
//! it (typically: the free port was taken by another test in between) is started again on another
//! port, a bounded number of times.
//!
//! Benchmark programs include this file with `#[path]`, so it uses nothing else from the test support.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to say it is ready: generous, because the machine may be busy building.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to stop after the polite signal before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Starts on a fresh port after a server exited before it was ready: the port a probe found free
/// can be taken by a parallel test before the server binds it.
const START_ATTEMPTS_MAX: u32 = 5;

/// A PostgreSQL server of its own. `url()` is its `postgres` database; [`Postgres::fresh_database`]
/// makes an empty database per test or check.
pub struct Postgres {
    server: Server,
    port: u16,
    databases_created: AtomicU32,
    /// Removed after the server stopped: `server` is dropped first.
    _directory: tempfile::TempDir,
}

impl Postgres {
    /// A server for tests: `fsync` off, since its data lives in a temporary directory that is deleted
    /// with it anyway.
    pub fn start() -> Postgres {
        Postgres::start_with(&["-c", "fsync=off", "-c", "synchronous_commit=off"])
    }

    /// A server with PostgreSQL's durable defaults (`fsync`, `synchronous_commit` on), for benchmarks
    /// that compare durable commits.
    pub fn start_durable() -> Postgres {
        Postgres::start_with(&["-c", "fsync=on", "-c", "synchronous_commit=on"])
    }

    fn start_with(settings: &[&str]) -> Postgres {
        let directory = tempfile::tempdir().expect("create a directory for PostgreSQL");
        let run_as = postgres_run_as();
        if let Some(user) = &run_as {
            std::os::unix::fs::chown(directory.path(), Some(user.uid), Some(user.gid))
                .expect("hand the PostgreSQL directory to the postgres user");
        }
        let data = directory.path().join("data");
        let mut initdb = Command::new(postgres_program("initdb"));
        initdb
            .arg("--pgdata")
            .arg(&data)
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync"]);
        run_as_user(&mut initdb, run_as.as_ref());
        let output = initdb.stdin(Stdio::null()).output().expect(
            "start initdb (is the postgresql package installed? `cargo xtask test` installs it)",
        );
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (server, port) = Server::start("PostgreSQL", "ready to accept connections", |port| {
            let mut postgres = Command::new(postgres_program("postgres"));
            postgres
                .arg("-D")
                .arg(&data)
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                // No Unix socket: the tests connect over TCP, and the default socket directory may
                // not be writable.
                .args(["-k", ""])
                .args(settings);
            run_as_user(&mut postgres, run_as.as_ref());
            postgres
        });
        Postgres {
            server,
            port,
            databases_created: AtomicU32::new(0),
            _directory: directory,
        }
    }

    /// The URL of the server's `postgres` database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub async fn fresh_database(&self) -> String {
        let number = self.databases_created.fetch_add(1, Ordering::Relaxed);
        let database = format!("weft_test_{number}");
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| panic!("connect to {}: {error}", self.server.name));
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .unwrap_or_else(|error| panic!("create database {database}: {error}"));
        drop(client);
        let _ = connection.await;
        self.database_url(&database)
    }
}

/// A Redis server of its own, without persistence.
pub struct Redis {
    /// Stopped when dropped.
    _server: Server,
    port: u16,
    _directory: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let directory = tempfile::tempdir().expect("create a directory for Redis");
        let (server, port) = Server::start("Redis", "Ready to accept connections", |port| {
            let mut redis = Command::new("redis-server");
            redis
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(directory.path());
            redis
        });
        Redis {
            _server: server,
            port,
            _directory: directory,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server now (the polite signal, then SIGKILL after [`STOP_TIMEOUT`]).
    pub fn stop(self) {
        drop(self);
    }
}

/// A server process that logs a line when it is ready; stopped when dropped.
struct Server {
    name: &'static str,
    child: Child,
}

impl Server {
    /// Starts `command(port)` on a free port and waits until it logs `ready_marker`.
    fn start(
        name: &'static str,
        ready_marker: &'static str,
        command: impl Fn(u16) -> Command,
    ) -> (Server, u16) {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS_MAX {
            let port = free_port();
            let mut child = command(port)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|error| {
                    panic!("cannot start {name} (is it installed? `cargo xtask test` installs it): {error}")
                });
            let (lines, log) = mpsc::channel();
            for output in [
                child
                    .stdout
                    .take()
                    .map(|out| Box::new(out) as Box<dyn Read + Send>),
                child
                    .stderr
                    .take()
                    .map(|err| Box::new(err) as Box<dyn Read + Send>),
            ]
            .into_iter()
            .flatten()
            {
                let lines = lines.clone();
                // Keeps draining the pipe after the server is ready, so that it never blocks on a
                // full pipe; ends when the server closes it.
                std::thread::spawn(move || {
                    for line in BufReader::new(output).lines().map_while(Result::ok) {
                        let _ = lines.send(line);
                    }
                });
            }
            drop(lines);
            let mut server = Server { name, child };
            match wait_for_line(&log, ready_marker) {
                Ok(()) => return (server, port),
                Err(before) => {
                    server.stop();
                    failures.push(format!("on port {port}:\n{before}"));
                }
            }
        }
        panic!(
            "{name} did not become ready in {START_ATTEMPTS_MAX} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// The polite signal (SIGINT: PostgreSQL's fast shutdown; Redis shuts down too), then SIGKILL if
    /// the process has not exited within [`STOP_TIMEOUT`].
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "{} (pid {}) did not stop within {STOP_TIMEOUT:?}: killing it",
            self.name,
            self.child.id()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until a line containing `marker` arrives; on a deadline or the end of the output, returns
/// everything logged so far.
fn wait_for_line(log: &mpsc::Receiver<String>, marker: &str) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(marker) => return Ok(()),
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                seen.push_str(&format!("(not ready after {READY_TIMEOUT:?})\n"));
                return Err(seen);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                seen.push_str("(the server exited)\n");
                return Err(seen);
            }
        }
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("find a free loopback port")
        .port()
}

/// A PostgreSQL program from the newest `/usr/lib/postgresql/<major>/bin/`, else the name alone
/// (found on PATH).
fn postgres_program(program: &str) -> PathBuf {
    let newest_bin = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join(program).exists())
        .max_by_key(|(major, _)| *major);
    match newest_bin {
        Some((_, bin)) => bin.join(program),
        None => PathBuf::from(program),
    }
}

struct User {
    uid: u32,
    gid: u32,
}

/// The `postgres` system user when running as root (initdb and postgres refuse root), else nobody:
/// the server runs as the current user.
fn postgres_run_as() -> Option<User> {
    if id(&["-u"]) != "0" {
        return None;
    }
    let parse = |flag| {
        id(&[flag, "postgres"]).parse().unwrap_or_else(|_| {
            panic!("running as root, and there is no `postgres` user to run PostgreSQL as")
        })
    };
    Some(User {
        uid: parse("-u"),
        gid: parse("-g"),
    })
}

fn run_as_user(command: &mut Command, user: Option<&User>) {
    if let Some(user) = user {
        // As root, std also drops the supplementary groups before switching.
        command.uid(user.uid).gid(user.gid);
    }
}

fn id(args: &[&str]) -> String {
    let output = Command::new("id").args(args).output().expect("run `id`");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
