//! The programs the tests and benchmarks start for themselves — the database servers (PostgreSQL
//! and Redis, see `host/tests/support/services.rs`) and the browser the console's test drives
//! (Chromium and ChromeDriver, see `host/tests/support/browser.rs`): installs their Debian packages
//! when the binaries are missing.

use anyhow::Result;

use crate::process::{apt_install, on_path};

/// Installs `postgresql`, `redis-server`, `chromium` and `chromium-driver` with apt-get unless
/// their binaries are already there (`WEFT_NO_INSTALL` forbids installing, see [`apt_install`]).
pub fn ensure_installed() -> Result<()> {
    let mut missing = Vec::new();
    if !postgres_installed() {
        missing.push("postgresql");
    }
    if !on_path("redis-server") {
        missing.push("redis-server");
    }
    if !on_path("chromium") {
        missing.push("chromium");
    }
    if !on_path("chromedriver") {
        missing.push("chromium-driver");
    }
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Debian installs the server programs under `/usr/lib/postgresql/<major>/bin/`, off PATH.
fn postgres_installed() -> bool {
    let debian_layout = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|major| major.path().join("bin/initdb").exists());
    debian_layout || (on_path("initdb") && on_path("postgres"))
}
