//! Unit tests that run natively outside `cargo test --workspace`: the Python and JavaScript
//! SDKs' and plugins' (`python3 -m unittest`, `node --test`), and the Rust plugin template's
//! (`cargo test` on a freshly generated one).

use anyhow::{Context, Result};
use std::path::Path;

use crate::plugins::{self, Language};
use crate::process::{self, Cmd, step};

/// Runs the Python and JavaScript unit tests of the SDKs and of every such plugin.
pub fn python_and_javascript(root: &Path) -> Result<()> {
    let python_sdk = root.join("guest-sdk/python");
    let js_sdk = root.join("guest-sdk/js");
    let script_plugins = plugins::script_plugins(root)?;

    step("running the Python SDK's and plugins' unit tests (python3 -m unittest)");
    Cmd::new("python3")
        .args(["-m", "unittest", "discover", "tests"])
        .current_dir(&python_sdk)
        .run()?;
    for plugin in script_plugins
        .iter()
        .filter(|plugin| plugin.language == Language::Python)
    {
        Cmd::new("python3")
            .args(["-m", "unittest"])
            .env("PYTHONPATH", &python_sdk)
            .current_dir(&plugin.dir)
            .run()?;
    }

    step("running the JavaScript SDK's and plugins' unit tests (node --test)");
    let mut test_files = js_test_files(&js_sdk)?;
    for plugin in script_plugins
        .iter()
        .filter(|plugin| plugin.language == Language::JavaScript)
    {
        test_files.extend(js_test_files(&plugin.dir)?);
    }
    Cmd::new("node")
        .arg("--test")
        .args(test_files)
        .current_dir(root)
        .run()
}

fn js_test_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(".test.js") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Generates the Rust entity and resolver templates with `weft plugin new` and runs their own
/// `cargo test`, sharing the plugins' native target dir so the SDK is not compiled again.
pub fn rust_template(root: &Path) -> Result<()> {
    let scratch = root.join("target/template-check");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("cannot clear {}", scratch.display()))?;
    }
    for kind in ["entity", "resolver"] {
        let name = format!("template-check-{kind}");
        step(&format!(
            "checking the Rust {kind} template: weft plugin new, then its cargo test"
        ));
        let dir = scratch.join(&name);
        process::cargo(root)
            .args(["run", "--quiet", "--package", "weft", "--", "plugin", "new"])
            .args([name.as_str(), "--lang", "rust", "--kind", kind, "--dir"])
            .arg(&dir)
            .output()?;
        process::cargo(root)
            .arg("test")
            .arg("--manifest-path")
            .arg(dir.join("Cargo.toml"))
            .arg("--target-dir")
            .arg(root.join("plugins/target"))
            .run()?;
    }
    Ok(())
}
