//! The database servers the tests and benchmarks start for themselves (PostgreSQL and Redis, see
//! `host/tests/support/services.rs`): installs their Debian packages when the binaries are missing.

use anyhow::Result;

use crate::process::{apt_install, on_path};

/// Installs `postgresql` and `redis-server` with apt-get unless their server binaries are already
/// there (`WEFT_NO_INSTALL` forbids installing, see [`apt_install`]).
pub fn ensure_installed() -> Result<()> {
    let mut missing = Vec::new();
    if !postgres_installed() {
        missing.push("postgresql");
    }
    if !on_path("redis-server") {
        missing.push("redis-server");
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
