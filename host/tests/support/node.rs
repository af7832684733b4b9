//! Running weft nodes for tests: in this process ([`TestNode`]) or as a real `weft serve`
//! process ([`ServeProcess`]), each on a free loopback port with its own data directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft::config::Config;
use weft::node::Node;

use super::plugins::{plugin_path, shared_compile_cache};

/// A plugins directory holding copies of the named built plugins.
pub fn plugins_dir(root: &Path, names: &[&str]) -> PathBuf {
    let dir = root.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for name in names {
        std::fs::copy(plugin_path(name), dir.join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

/// A node config on a free port under `root`, compiling through the shared compile cache.
pub fn config(root: &Path, plugins: &[&str]) -> Config {
    let mut config = Config::default();
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    config.node.data_dir = root.join("data");
    config.node.compile_cache_dir = Some(shared_compile_cache());
    config.node.plugins_dir = Some(plugins_dir(root, plugins));
    config
}

/// A node in this process.
pub struct TestNode {
    pub node: Node,
    pub url: String,
    pub http: reqwest::Client,
}

impl TestNode {
    /// Starts a node and waits until its start-up loading is done.
    pub async fn start(config: Config) -> TestNode {
        let node = Node::start(config).await.expect("node starts");
        node.ready().await;
        let url = format!("http://{}", node.addr);
        TestNode {
            node,
            url,
            http: reqwest::Client::new(),
        }
    }
}

/// `POST /entities/{entity_type}/{entity_id}` with a JSON command: the status and the JSON body.
pub async fn send_command(
    http: &reqwest::Client,
    url: &str,
    entity_type: &str,
    entity_id: &str,
    command: &serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    let response = http
        .post(format!("{url}/entities/{entity_type}/{entity_id}"))
        .json(command)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// [`send_command`] for a command that must succeed: the body.
pub async fn command_ok(
    http: &reqwest::Client,
    url: &str,
    entity_type: &str,
    entity_id: &str,
    command: &serde_json::Value,
) -> serde_json::Value {
    let (status, body) = send_command(http, url, entity_type, entity_id, command).await;
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "{command} to {entity_type}/{entity_id} failed: {body}"
    );
    body
}

/// `PUT /plugins/{name}` with `bytes`; asserts it succeeded and returns the load report.
pub async fn upload_plugin(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    bytes: Vec<u8>,
) -> serde_json::Value {
    let response = http
        .put(format!("{url}/plugins/{name}"))
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        reqwest::StatusCode::OK,
        "upload of {name}"
    );
    response.json().await.unwrap()
}

/// The `weft` binary: cargo names it to integration tests; a benchmark program finds it in the
/// profile directory above its own (`target/release/examples/x` → `target/release/weft`).
/// `GET url` on a node, its body as JSON; panics if the node does not answer with JSON.
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url)
        .send()
        .await
        .expect("the node answers")
        .json()
        .await
        .expect("a JSON body")
}

/// The `/metrics` text of the node at `url`.
pub async fn metrics_text(http: &reqwest::Client, url: &str) -> String {
    http.get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the counter or gauge `name` on the `/metrics` of the node at `url`.
pub async fn metric(http: &reqwest::Client, url: &str, name: &str) -> u64 {
    metrics_text(http, url)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics of {url}"))
}

pub fn weft_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_weft") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the program's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a program under target/<profile>/examples");
    profile_dir.join("weft")
}

/// `weft serve --listen 127.0.0.1:0 --data-dir … --plugins …`.
fn serve_args(data_dir: &Path, plugins_dir: &Path) -> Vec<std::ffi::OsString> {
    let mut args = vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into()];
    args.extend(["--data-dir".into(), data_dir.as_os_str().to_owned()]);
    args.extend(["--plugins".into(), plugins_dir.as_os_str().to_owned()]);
    args
}

/// What [`ServeProcess::spawn`] waits for.
#[derive(Clone, Copy, PartialEq)]
enum Wait {
    Listening,
    Ready,
}

/// A `weft serve` process; killed (SIGKILL) when dropped.
pub struct ServeProcess {
    child: Child,
    pub url: String,
    /// Everything the process wrote to stderr, for failure messages.
    pub log: Arc<Mutex<String>>,
}

impl ServeProcess {
    /// Starts `weft serve` on a free port and waits (bounded) until it is ready.
    pub fn start(data_dir: &Path, plugins_dir: &Path) -> ServeProcess {
        ServeProcess::spawn(&serve_args(data_dir, plugins_dir), Wait::Ready)
    }

    /// Starts `weft serve` on a free port and waits (bounded) until it listens, not until its
    /// plugins are loaded.
    pub fn start_listening(data_dir: &Path, plugins_dir: &Path) -> ServeProcess {
        ServeProcess::spawn(&serve_args(data_dir, plugins_dir), Wait::Listening)
    }

    /// Starts `weft serve --config config` (which sets the HTTP address) and waits until it is
    /// ready.
    pub fn start_with_config(config: &Path) -> ServeProcess {
        ServeProcess::spawn_with_env(
            &[
                "serve".into(),
                "--config".into(),
                config.as_os_str().to_owned(),
            ],
            Wait::Ready,
            &[],
        )
    }

    /// [`ServeProcess::start`] with environment variables set for the process (`RUST_LOG`
    /// among them, over the default `info`).
    pub fn start_with_env(
        data_dir: &Path,
        plugins_dir: &Path,
        env: &[(&str, &str)],
    ) -> ServeProcess {
        ServeProcess::spawn_with_env(&serve_args(data_dir, plugins_dir), Wait::Ready, env)
    }

    fn spawn(args: &[std::ffi::OsString], wait: Wait) -> ServeProcess {
        ServeProcess::spawn_with_env(args, wait, &[])
    }

    fn spawn_with_env(
        args: &[std::ffi::OsString],
        wait: Wait,
        env: &[(&str, &str)],
    ) -> ServeProcess {
        let mut child = Command::new(weft_binary())
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weft serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let url = line
                    .split("listening on ")
                    .nth(1)
                    // The URL ends at a space, or at the quote closing a JSON log line's message.
                    .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '"').next());
                if let Some(url) = url {
                    let _ = addr_tx.send(url.to_owned());
                }
                if line.contains("ready in ") && line.contains("plugin(s) loaded") {
                    let _ = ready_tx.send(());
                }
                let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let Ok(url) = addr_rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!(
                "weft serve did not start listening within 60 s:\n{}",
                log.lock().unwrap_or_else(|p| p.into_inner())
            );
        };
        // Cold compiles of Python and JavaScript plugins take a while on a loaded machine.
        if wait == Wait::Ready && ready_rx.recv_timeout(Duration::from_secs(300)).is_err() {
            let _ = child.kill();
            panic!(
                "weft serve did not become ready within 300 s:\n{}",
                log.lock().unwrap_or_else(|p| p.into_inner())
            );
        }
        ServeProcess { child, url, log }
    }

    /// The process id, e.g. to read its memory from `/proc/{pid}/status`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGINT (Ctrl-C): the node stops cleanly; waits until the process has exited.
    pub fn interrupt(self) -> std::process::ExitStatus {
        self.stop_with("INT")
    }

    /// SIGTERM (what service managers send): the node stops cleanly; waits until the process
    /// has exited.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.stop_with("TERM")
    }

    /// SIGSTOP: the process freezes wherever it is (as in a long GC pause or a frozen VM), its
    /// sockets and database connections left open.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// SIGCONT: a frozen process runs on from where it stopped.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn stop_with(mut self, signal: &str) -> std::process::ExitStatus {
        self.signal(signal);
        self.child.wait().expect("wait")
    }

    /// Sends `signal` (`TERM`, `INT`, …) without waiting for the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
