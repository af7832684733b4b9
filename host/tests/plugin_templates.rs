//! `weft plugin new`, as a person runs it: the Python and JavaScript templates pass their own unit
//! tests with plain `python3 -m unittest` and `node --test`; the JavaScript entity builds with
//! the command its README gives and serves a command in the host; the Rust template points at
//! this checkout's SDK. (`cargo xtask test` also runs the Rust template's own `cargo test`.)

mod support;

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use support::{context, envelope, from_msgpack, msgpack};
use weft::plugin::{PluginRegistry, PluginRuntime, RuntimeLimits, World};

/// Runs `weft plugin new NAME --lang LANGUAGE --kind KIND --dir DIR/NAME`; returns the folder.
fn new_plugin(dir: &Path, name: &str, language: &str, kind: &str) -> PathBuf {
    let plugin_dir = dir.join(name);
    let output = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "plugin", "new", name, "--lang", language, "--kind", kind, "--dir",
        ])
        .arg(&plugin_dir)
        .output()
        .expect("run weft");
    assert!(
        output.status.success(),
        "weft plugin new {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("test it:"), "{stdout}");
    plugin_dir
}

/// Runs `program args…` in `dir`; fails the test with its output unless it succeeds.
fn run_in(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "`{program} {}` failed in {}:\n{text}",
        args.join(" "),
        dir.display()
    );
    text
}

/// Generated inside this checkout (`target/tmp`), where a Rust template finds the SDK.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn python_and_javascript_templates_pass_their_own_tests() {
    let root = scratch();
    for kind in ["entity", "resolver"] {
        let python = new_plugin(root.path(), &format!("py-{kind}"), "python", kind);
        let report = run_in(&python, "python3", &["-m", "unittest"]);
        assert!(report.contains("OK"), "{report}");
        let javascript = new_plugin(root.path(), &format!("js-{kind}"), "js", kind);
        let report = run_in(&javascript, "node", &["--test"]);
        assert!(report.contains("# fail 0"), "{report}");
    }
}

#[test]
fn the_javascript_entity_template_builds_and_serves_a_command() {
    let root = scratch();
    let dir = new_plugin(root.path(), "tally", "js", "entity");
    let componentize_qjs = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/js-tooling/node_modules/.bin/componentize-qjs");
    assert!(
        componentize_qjs.exists(),
        "{} is missing: `cargo xtask plugins` installs it",
        componentize_qjs.display()
    );
    // The `build` script of the template's package.json.
    let package: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("package.json")).unwrap()).unwrap();
    let build = package["scripts"]["build"].as_str().unwrap();
    let args: Vec<&str> = build.split_whitespace().collect();
    assert_eq!(args[0], "componentize-qjs");
    run_in(&dir, componentize_qjs.to_str().unwrap(), &args[1..]);

    let runtime = PluginRuntime::new(RuntimeLimits::default(), None).unwrap();
    let registry = PluginRegistry::new(Arc::new(runtime));
    let bytes = std::fs::read(dir.join("tally.wasm")).unwrap();
    let report = registry.load("tally", &bytes).unwrap();
    assert_eq!(report.world, World::Entity);
    let tally = registry.get("tally").unwrap();
    let ctx = context("tally", "t1", 1 << 16);
    let state = tally.init(&ctx).unwrap();
    let decision = tally
        .handle_command(&ctx, &state, &msgpack(&json!({"op": "add", "by": 2})))
        .unwrap();
    assert_eq!(from_msgpack(&decision.reply), json!({"total": 2}));
    let state = tally
        .apply_event(&ctx, &state, &envelope(1, decision.events[0].clone()))
        .unwrap();
    assert_eq!(from_msgpack(&state), json!({"total": 2}));
    let rejected = tally
        .handle_command(&ctx, &state, &msgpack(&json!({"op": "add", "by": 0})))
        .unwrap_err();
    assert!(
        rejected.to_string().contains("must be a positive integer"),
        "{rejected}"
    );
}

#[test]
fn the_rust_template_depends_on_this_checkouts_sdk() {
    let root = scratch();
    for kind in ["entity", "resolver"] {
        let dir = new_plugin(root.path(), &format!("rs-{kind}"), "rust", kind);
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        let weft_guest = &manifest["dependencies"]["weft-guest"];
        let sdk = dir.join(weft_guest["path"].as_str().unwrap());
        assert_eq!(
            sdk.canonicalize().unwrap(),
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../guest-sdk")
                .canonicalize()
                .unwrap()
        );
        assert_eq!(weft_guest["features"][0].as_str(), Some(kind));
        assert!(dir.join("src/lib.rs").exists());
    }
}
