//! Real headless Chromium for tests, driven through ChromeDriver over the W3C WebDriver protocol
//! (plain JSON over HTTP with reqwest): open a page, read what its scripts rendered, type and
//! click, read the browser's console log, keep screenshots under `target/test-artifacts/`.
//!
//! Chromium and ChromeDriver are Debian's `chromium` and `chromium-driver` packages, which
//! `cargo xtask test` installs; a test run without them fails saying how to install them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};

use super::cluster::free_port;

/// Chromium's flags for a test: headless, no sandbox (containers run tests as root), nothing
/// reaching out to the network by itself, a window tall enough to see the whole console.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,2200",
];

/// A Chromium browsing session. [`Browser::close`] ends it; dropping it stops ChromeDriver,
/// which takes Chromium with it.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _profile: tempfile::TempDir,
}

/// A program on PATH, or a failure saying how to install it.
fn required_program(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH: the console's test drives a real Chromium. Install it \
                 with `apt-get install -y chromium chromium-driver` (Debian's `{package}`), or run \
                 the tests through `cargo xtask test`, which installs it"
            )
        })
}

impl Browser {
    /// Starts ChromeDriver on a free port and a fresh Chromium session with its own profile.
    pub async fn start() -> Browser {
        let chromium = required_program("chromium", "chromium");
        let chromedriver = required_program("chromedriver", "chromium-driver");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        super::eventually("chromedriver answers /status", || async {
            let status = http.get(format!("{base}/status")).send().await;
            match status {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|body| body["value"]["ready"] == json!(true)),
                Err(_) => false,
            }
        })
        .await;
        let profile = tempfile::tempdir().expect("a Chromium profile directory");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|flag| flag.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let created = answer_of(http.post(format!("{base}/session")).json(&capabilities)).await;
        let id = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("Chromium did not start: {created}"));
        Browser {
            session: format!("{base}/session/{id}"),
            driver,
            http,
            _profile: profile,
        }
    }

    /// A WebDriver command of the session: its `value`, or a failure with WebDriver's error.
    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let request = self.http.request(method, format!("{}{path}", self.session));
        let request = if body.is_null() {
            request
        } else {
            request.json(&body)
        };
        answer_of(request).await
    }

    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// The rendered text of the first element matching `selector`; empty when there is none.
    pub async fn text(&self, selector: &str) -> String {
        let text = self
            .execute(
                "const node = document.querySelector(arguments[0]); \
                 return node ? node.innerText : '';",
                json!([selector]),
            )
            .await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the element `selector` renders text containing every one of `needles`; on
    /// failure, says what it rendered last.
    pub async fn wait_for_text(&self, selector: &str, needles: &[&str]) -> String {
        let started = std::time::Instant::now();
        loop {
            let text = self.text(selector).await;
            if needles.iter().all(|needle| text.contains(needle)) {
                return text;
            }
            assert!(
                started.elapsed() < super::EVENTUALLY_MAX,
                "{selector} does not show {needles:?} within {:?}; it shows:\n{text}",
                super::EVENTUALLY_MAX
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The WebDriver element reference of the first match of `selector`.
    async fn element(&self, selector: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": selector}),
            )
            .await;
        let reference = found
            .as_object()
            .and_then(|fields| fields.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {selector}: {found}"));
        reference.to_owned()
    }

    /// Performs `action` (`click`, `clear`, `value`) with `body` on the element `element`.
    async fn act_on(&self, element: &str, action: &str, body: Value) {
        let path = format!("/element/{element}/{action}");
        self.command(reqwest::Method::POST, &path, body).await;
    }

    pub async fn click(&self, selector: &str) {
        let element = self.element(selector).await;
        self.act_on(&element, "click", json!({})).await;
    }

    /// Clears the field `selector` and types `text` into it, key by key.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let element = self.element(selector).await;
        self.act_on(&element, "clear", json!({})).await;
        self.act_on(&element, "value", json!({ "text": text }))
            .await;
    }

    /// What the page logged to the browser's console at level `SEVERE` (uncaught errors, failed
    /// loads) since the last call.
    pub async fn severe_log_entries(&self) -> Vec<String> {
        let entries = self
            .command(reqwest::Method::POST, "/se/log", json!({"type": "browser"}))
            .await;
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Saves a screenshot of the page as `<dir>/<name>.png` and returns its path.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("a base64 screenshot"))
            .expect("a base64 screenshot");
        std::fs::create_dir_all(dir).expect("create the artifacts directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Ends the session (Chromium quits) and stops ChromeDriver.
    pub async fn close(self) {
        self.command(reqwest::Method::DELETE, "", Value::Null).await;
    }
}

/// The `value` of ChromeDriver's answer to `request`; a failure naming WebDriver's error.
async fn answer_of(request: reqwest::RequestBuilder) -> Value {
    let described = format!("{request:?}");
    let mut answer: Value = request
        .send()
        .await
        .expect("chromedriver answers")
        .json()
        .await
        .expect("a JSON answer");
    if answer["value"]["error"].is_string() {
        panic!("WebDriver refused {described}: {answer}");
    }
    answer["value"].take()
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
