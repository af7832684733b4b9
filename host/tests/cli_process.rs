//! The `weft` command line against a real `weft serve`, as a person or a script uses it: ids with
//! `?`, `#` and `%` reach the entity they name and are listed and paged through whole; a reader closing the pipe ends the
//! command quietly; tables on request, with readable times; `events --follow` prints events as
//! they are written; a mistyped URL and a node that is not running are named as such.

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::node::{ServeProcess, plugins_dir, weft_binary};

/// `weft ARGS --url URL`, run to completion.
fn weft(url: &str, args: &[&str]) -> Output {
    Command::new(weft_binary())
        .args(args)
        .args(["--url", url])
        .env_remove("WEFT_OUTPUT")
        .stdin(Stdio::null())
        .output()
        .expect("run weft")
}

/// The JSON a successful `weft … --output json` printed.
fn weft_json(url: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let output = weft(url, &args);
    assert!(
        output.status.success(),
        "weft {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

/// A node serving `counter`, once it answers commands.
async fn counter_node(root: &std::path::Path) -> ServeProcess {
    let node = ServeProcess::start(&root.join("data"), &plugins_dir(root, &["counter"]));
    let http = reqwest::Client::new();
    let state = format!("{}/entities/counter/warm-up", node.url);
    support::eventually("the counter plugin serves", || async {
        http.get(&state)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success())
    })
    .await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_sent_whole_and_answers_print_as_json_or_tables() {
    let root = tempfile::tempdir().unwrap();
    let node = counter_node(root.path()).await;
    let url = node.url.as_str();
    let ids = ["a?b", "x#y", "50%25", "a"];
    for (by, id) in (1..).zip(ids) {
        let command = json!({"op": "increment", "by": by}).to_string();
        weft_json(url, &["send", "counter", id, &command]);
    }
    // Each id is its own entity, holding its own increment: none was cut at `?` or `#`, and
    // `%25` stayed three characters.
    for (by, id) in (1..).zip(ids) {
        let state = weft_json(url, &["state", "counter", id]);
        assert_eq!(state["entity_id"], id, "{state}");
        assert_eq!(state["state"]["value"], by, "{id}: {state}");
    }

    // The listing, in pages, the `after` of the second sent whole too.
    let first = weft_json(url, &["entities", "counter", "--limit", "3"]);
    let ids_of = |page: &Value| -> Vec<String> {
        page["entities"]
            .as_array()
            .unwrap_or_else(|| panic!("a listing: {page}"))
            .iter()
            .map(|entity| entity["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids_of(&first), ["50%25", "a", "a?b"], "{first}");
    assert_eq!(first["next"], "a?b");
    let second = weft_json(url, &["entities", "counter", "--after", "a?b"]);
    assert_eq!(ids_of(&second), ["x#y"], "{second}");
    assert_eq!(second["next"], Value::Null);
    let table = weft(url, &["entities", "counter", "--output", "table"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|line| line.starts_with('1') && line.ends_with("x#y")),
        "a table of ids and seq nrs:\n{table}"
    );

    // JSON keeps the HLC value and adds the time it stands for.
    let events = weft_json(url, &["events", "counter", "a?b"]);
    let event = &events["events"][0];
    let hlc = event["timestamp"].as_u64().expect("an HLC timestamp");
    let expected_time =
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(hlc >> 16))
            .to_string();
    assert_eq!(event["time"], expected_time.as_str(), "{events}");

    // A table: the plain fields, then the events under a header, times readable.
    let table = weft(url, &["events", "counter", "a?b", "--output", "table"]);
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    let header = lines
        .iter()
        .position(|line| line.starts_with("SEQ_NR"))
        .unwrap_or_else(|| panic!("no events table:\n{table}"));
    assert!(lines[header].contains("TIME"), "{table}");
    assert!(lines[header + 1].starts_with('1'), "{table}");
    assert!(lines[header + 1].contains(&expected_time), "{table}");
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("entity_id") && line.ends_with("a?b"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_quietly_and_bad_urls_are_named() {
    let root = tempfile::tempdir().unwrap();
    let node = counter_node(root.path()).await;

    // stdout is a pipe whose reader is already gone: every write fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let closed = Command::new(weft_binary())
        .args(["plugin", "list", "--output", "table", "--url", &node.url])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run weft");
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert!(closed.status.success(), "{:?}: {stderr}", closed.status);
    assert!(stderr.is_empty(), "a closed pipe printed: {stderr}");

    let no_scheme = weft(node.url.trim_start_matches("http://"), &["plugin", "list"]);
    let stderr = String::from_utf8_lossy(&no_scheme.stderr);
    assert!(!no_scheme.status.success());
    assert!(
        stderr.contains("has no scheme: did you mean http://"),
        "{stderr}"
    );

    let port = support::cluster::free_port();
    let nobody = weft(&format!("http://127.0.0.1:{port}"), &["plugin", "list"]);
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(!nobody.status.success());
    assert!(
        stderr.contains("is `weft serve` running there?"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_prints_each_event_as_it_is_written() {
    let root = tempfile::tempdir().unwrap();
    let node = counter_node(root.path()).await;
    let url = node.url.clone();
    weft_json(
        &url,
        &["send", "counter", "f", r#"{"op":"increment","by":1}"#],
    );

    let mut follower = Command::new(weft_binary())
        .args(["events", "counter", "f", "--follow", "--output", "json"])
        .args(["--url", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run weft events --follow");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next_event = || -> Value {
        let line = lines
            .recv_timeout(support::EVENTUALLY_MAX)
            .expect("a followed event within the deadline");
        serde_json::from_str(&line).expect("one JSON event per line")
    };
    // The event written before, then each one written while following, in order, once each.
    assert_eq!(next_event()["payload"]["by"], 1);
    for by in 2..=4 {
        let command = json!({"op": "increment", "by": by}).to_string();
        weft_json(&url, &["send", "counter", "f", &command]);
        let event = next_event();
        assert_eq!(event["seq_nr"], by, "{event}");
        assert_eq!(event["payload"]["by"], by, "{event}");
    }
    follower.kill().unwrap();
    follower.wait().unwrap();
}
