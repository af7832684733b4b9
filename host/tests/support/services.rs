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
//! [`TestCertificates`] makes a CA and a server certificate for `localhost` and 127.0.0.1 (rcgen);
//! [`Postgres::start_tls`] and [`Redis::start_tls`] start servers that present it.
//!
//! Benchmark programs include this file with `#[path]`, so it uses nothing else from the test support.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
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
        Postgres::start_with(&["-c", "fsync=off", "-c", "synchronous_commit=off"], None)
    }

    /// [`Postgres::start`] with TLS on (`ssl=on`), presenting `certificates`' server certificate.
    /// Clients may still connect without TLS.
    pub fn start_tls(certificates: &TestCertificates) -> Postgres {
        Postgres::start_with(
            &["-c", "fsync=off", "-c", "synchronous_commit=off"],
            Some(certificates),
        )
    }

    /// A server with PostgreSQL's durable defaults (`fsync`, `synchronous_commit` on), for benchmarks
    /// that compare durable commits.
    pub fn start_durable() -> Postgres {
        Postgres::start_with(&["-c", "fsync=on", "-c", "synchronous_commit=on"], None)
    }

    fn start_with(settings: &[&str], tls: Option<&TestCertificates>) -> Postgres {
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
        let mut tls_settings = Vec::new();
        if let Some(certificates) = tls {
            // PostgreSQL wants its key owned by the user it runs as, readable by nobody else.
            let (cert, key) = certificates.server_files_in(directory.path());
            if let Some(user) = &run_as {
                for file in [&cert, &key] {
                    std::os::unix::fs::chown(file, Some(user.uid), Some(user.gid))
                        .expect("hand the certificate files to the postgres user");
                }
            }
            tls_settings = vec![
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", cert.display()),
                format!("ssl_key_file={}", key.display()),
            ];
        }
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
            for setting in &tls_settings {
                postgres.arg("-c").arg(setting);
            }
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

    pub fn port(&self) -> u16 {
        self.port
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
    /// Whether the port speaks TLS only.
    tls: bool,
    _directory: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(None)
    }

    /// A Redis server that speaks only TLS (`--tls-port`, no plain port), presenting
    /// `certificates`' server certificate and asking clients for none.
    pub fn start_tls(certificates: &TestCertificates) -> Redis {
        Redis::start_with(Some(certificates))
    }

    fn start_with(tls: Option<&TestCertificates>) -> Redis {
        let directory = tempfile::tempdir().expect("create a directory for Redis");
        let tls_files = tls.map(|certificates| {
            let (cert, key) = certificates.server_files_in(directory.path());
            (cert, key, certificates.ca_file())
        });
        let (server, port) = Server::start("Redis", "Ready to accept connections", |port| {
            let mut redis = Command::new("redis-server");
            match &tls_files {
                Some((cert, key, ca)) => {
                    redis
                        .args(["--port", "0", "--tls-port", &port.to_string()])
                        .arg("--tls-cert-file")
                        .arg(cert)
                        .arg("--tls-key-file")
                        .arg(key)
                        .arg("--tls-ca-cert-file")
                        .arg(ca)
                        .args(["--tls-auth-clients", "no"]);
                }
                None => {
                    redis.args(["--port", &port.to_string()]);
                }
            }
            redis
                .args(["--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(directory.path());
            redis
        });
        Redis {
            _server: server,
            port,
            tls: tls.is_some(),
            _directory: directory,
        }
    }

    /// `redis://127.0.0.1:<port>/`, or `rediss://…` for a TLS server (no CA named: add
    /// `?sslrootcert=`).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Stops the server now (the polite signal, then SIGKILL after [`STOP_TIMEOUT`]).
    pub fn stop(self) {
        drop(self);
    }
}

/// A certificate authority of its own and a server certificate it signed for `localhost` and
/// 127.0.0.1, as PEM files in a temporary directory.
pub struct TestCertificates {
    directory: tempfile::TempDir,
    server_cert: String,
    server_key: String,
}

impl TestCertificates {
    pub fn generate() -> TestCertificates {
        let ca_key = rcgen::KeyPair::generate().expect("generate the CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A name of its own: a client that trusts another test CA must find no issuer at all, not
        // one of the same name whose signature does not match.
        static CAS_MADE: AtomicU32 = AtomicU32::new(0);
        let number = CAS_MADE.fetch_add(1, Ordering::Relaxed);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("weft test CA {} {number}", std::process::id()),
        );
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("sign the CA");
        let server_key = rcgen::KeyPair::generate().expect("generate the server key");
        let mut server_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        server_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let server_cert = server_params
            .signed_by(&server_key, &ca)
            .expect("sign the server certificate");
        let directory = tempfile::tempdir().expect("create a directory for certificates");
        std::fs::write(directory.path().join("ca.pem"), ca.pem()).expect("write the CA");
        TestCertificates {
            directory,
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
        }
    }

    /// The CA's certificate, for clients' `sslrootcert`.
    pub fn ca_file(&self) -> PathBuf {
        self.directory.path().join("ca.pem")
    }

    /// Writes the server certificate and its key (mode 0600) into `directory`; returns their paths.
    fn server_files_in(&self, directory: &Path) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let (cert, key) = (directory.join("server.crt"), directory.join("server.key"));
        std::fs::write(&cert, &self.server_cert).expect("write the server certificate");
        std::fs::write(&key, &self.server_key).expect("write the server key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("make the server key private");
        (cert, key)
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
