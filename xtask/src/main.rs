//! `cargo xtask`: the project's own automation, so that a fresh machine with only rustup's
//! stable toolchain can build, run and test weft with one command each.
//!
//! # Layout
//! - `toolchain`: finds or installs a toolchain that builds wasm32-wasip2 guests.
//! - `plugins`: builds every plugin under `plugins/` (Rust, Python, JavaScript) into
//!   `target/plugins/*.wasm`.
//! - `guest_tools`: finds or installs componentize-py and componentize-qjs.
//! - `native_tests`: the Python and JavaScript unit tests, and the Rust plugin template's.
//! - `process`: running child commands with a clean environment and clear errors.
//! - `services`: installs the database servers the tests and benchmarks start (PostgreSQL, Redis).

mod guest_tools;
mod native_tests;
mod plugins;
mod process;
mod services;
mod toolchain;

use anyhow::{Result, bail};
use std::path::PathBuf;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup            make a wasm32-wasip2 guest toolchain available (installs it if needed)
  plugins          build every plugin under plugins/ (Rust, Python, JavaScript) into target/plugins/
  test             setup, build plugins, run the whole test suite
  demo [ARGS…]     setup, build plugins, run a weft node with them (ARGS go to `weft serve`)
  bench NAME       run a benchmark program (plugin, entity, asks, state_size, http, lease, languages, cluster, ddata, replication, sandbox, upgrade) and print its figures
";

fn main() {
    if let Err(error) = run(std::env::args().skip(1).collect()) {
        eprintln!("xtask: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let root = workspace_root();
    let Some(command) = args.first() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    match command.as_str() {
        "setup" => toolchain::setup().map(drop),
        "plugins" => plugins::build_all(&root, &toolchain::setup()?),
        "test" => test(&root),
        "demo" => demo(&root, &args[1..]),
        "bench" => bench(&root, &args[1..]),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}

/// Everything CI runs: guest toolchain, plugins, the workspace's tests, the plugins' and SDKs'
/// own tests in every language, the Rust plugin template's tests.
fn test(root: &std::path::Path) -> Result<()> {
    let toolchain = toolchain::setup()?;
    plugins::build_all(root, &toolchain)?;
    services::ensure_installed()?;
    process::step("running the workspace tests");
    let mut counts = process::cargo(root)
        .args(["test", "--workspace", "--all-features"])
        .run_tests()?;
    process::step("running the Rust plugins' native unit tests");
    counts.add(
        process::cargo(root)
            .args([
                "test",
                "--manifest-path",
                "plugins/Cargo.toml",
                "--workspace",
            ])
            .run_tests()?,
    );
    native_tests::python_and_javascript(root)?;
    native_tests::rust_template(root)?;
    // The closing line CI reads: the cargo test totals over every test binary above (the
    // Python and JavaScript runners print their own and fail the run on any failure).
    println!("weft: {} passed, {} failed", counts.passed, counts.failed);
    Ok(())
}

/// Builds the plugins and runs one node on the embedded defaults with them.
fn demo(root: &std::path::Path, serve_args: &[String]) -> Result<()> {
    let toolchain = toolchain::setup()?;
    plugins::build_all(root, &toolchain)?;
    // Not waited on: the node answers at once, and `GET /ready` turns 200 once it has loaded
    // the plugins (its log says when, with the time it took).
    process::step(
        "starting weft on the embedded defaults (GET /ready says when the plugins are loaded; Ctrl-C stops it)",
    );
    // The dev profile shares its build with the tests and optimizes every dependency.
    process::cargo(root)
        .args(["run", "--package", "weft", "--", "serve", "--plugins"])
        .arg(root.join("target/plugins"))
        .args(serve_args)
        .run()
}

/// Runs a benchmark program in release mode.
fn bench(root: &std::path::Path, args: &[String]) -> Result<()> {
    let Some(name) = args.first() else {
        bail!("name a benchmark: cargo xtask bench plugin");
    };
    let toolchain = toolchain::setup()?;
    plugins::build_all(root, &toolchain)?;
    if name == "http" && !process::on_path("wrk") {
        process::apt_install(&["wrk"])?;
    }
    if matches!(name.as_str(), "lease" | "cluster" | "replication") {
        services::ensure_installed()?;
    }
    if matches!(name.as_str(), "cluster" | "replication" | "sandbox") {
        // The benchmark runs `weft serve` processes of the same build.
        process::step("building the weft binary (release build)");
        process::cargo(root)
            .args(["build", "--release", "--package", "weft", "--bin", "weft"])
            .run()?;
    }
    process::step(&format!("running benchmark `{name}` (release build)"));
    process::cargo(root)
        .args(["run", "--release", "--package", "weft", "--example"])
        .arg(format!("bench_{name}"))
        .arg("--")
        .args(&args[1..])
        .run()
}

/// The repository root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
