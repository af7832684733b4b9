//! Finds or installs a toolchain that builds `wasm32-wasip2` guests.
//!
//! First choice: rustup's `wasm32-wasip2` target (already installed, or added now). Where rustup
//! cannot download it (an offline machine), Debian's packaged toolchain builds the standard
//! library from source (`-Zbuild-std`); it is installed with apt-get when missing and allowed.
//! `WEFT_GUEST_TOOLCHAIN=rustup|debian` forces a choice; `WEFT_NO_INSTALL=1` forbids installing.

use anyhow::{Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::process::{Cmd, step};

pub const TARGET: &str = "wasm32-wasip2";

/// Debian packages of the fallback toolchain.
const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "rust-web-llvm",
    "lld",
    "wasi-libc",
];

/// How long `rustup target add` may try before we fall back (it hangs on some offline machines).
const RUSTUP_ADD_TIMEOUT: Duration = Duration::from_secs(180);

/// A toolchain that can build guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup's cargo with the `wasm32-wasip2` target.
    Rustup,
    /// Debian's `/usr/bin/cargo` and `rustc-web`, building std from source.
    Debian,
}

impl Toolchain {
    pub fn name(self) -> &'static str {
        match self {
            Toolchain::Rustup => "rustup",
            Toolchain::Debian => "debian",
        }
    }

    /// `cargo build --release --target wasm32-wasip2` for this toolchain, with a clean
    /// environment and its own target dir (the two toolchains must not share fingerprints).
    pub fn cargo_build(self, root: &Path) -> Cmd {
        let target_dir = root.join("target/wasm-guests").join(self.name());
        let common = ["build", "--release", "--quiet", "--target", TARGET];
        match self {
            Toolchain::Rustup => Cmd::new("cargo")
                .clean_cargo_env()
                .args(common)
                .arg("--target-dir")
                .arg(target_dir),
            Toolchain::Debian => Cmd::new("/usr/bin/cargo")
                .clean_cargo_env()
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTFLAGS", "-L /usr/lib/wasm32-wasi")
                .args(common)
                .arg("-Zbuild-std=std,panic_abort")
                .arg("--target-dir")
                .arg(target_dir),
        }
    }
}

/// Makes a guest toolchain available and says which one and why.
pub fn setup() -> Result<Toolchain> {
    let forced = std::env::var("WEFT_GUEST_TOOLCHAIN").ok();
    match forced.as_deref() {
        Some("rustup") => {
            if !rustup_target_installed() {
                add_rustup_target()?;
            }
            return announce(Toolchain::Rustup, "WEFT_GUEST_TOOLCHAIN=rustup");
        }
        Some("debian") => {
            ensure_debian()?;
            return announce(Toolchain::Debian, "WEFT_GUEST_TOOLCHAIN=debian");
        }
        Some(other) => bail!("WEFT_GUEST_TOOLCHAIN={other}: expected `rustup` or `debian`"),
        None => {}
    }
    if rustup_target_installed() {
        return announce(Toolchain::Rustup, "the rustup target is installed");
    }
    match add_rustup_target() {
        Ok(()) => announce(Toolchain::Rustup, "the rustup target was just added"),
        Err(error) => {
            step(&format!(
                "rustup could not add {TARGET} ({error:#}); falling back to Debian's toolchain"
            ));
            ensure_debian()?;
            announce(Toolchain::Debian, "rustup cannot download the target here")
        }
    }
}

fn announce(toolchain: Toolchain, why: &str) -> Result<Toolchain> {
    step(&format!(
        "guest toolchain: {} ({why})",
        match toolchain {
            Toolchain::Rustup => "rustup target wasm32-wasip2",
            Toolchain::Debian => "Debian rustc-web with -Zbuild-std",
        }
    ));
    Ok(toolchain)
}

fn rustup_target_installed() -> bool {
    Cmd::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|installed| installed.lines().any(|line| line.trim() == TARGET))
}

/// `rustup target add`, given up after [`RUSTUP_ADD_TIMEOUT`].
fn add_rustup_target() -> Result<()> {
    step(&format!("adding the rustup target {TARGET}"));
    let mut child = std::process::Command::new("rustup")
        .args(["target", "add", TARGET])
        .stdin(std::process::Stdio::null())
        .spawn()?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() && rustup_target_installed() {
                return Ok(());
            }
            bail!("`rustup target add {TARGET}` failed ({status})");
        }
        if started.elapsed() > RUSTUP_ADD_TIMEOUT {
            // Best effort: the child may already have exited between the check and the kill.
            let _ = child.kill();
            let _ = child.wait();
            bail!("`rustup target add {TARGET}` did not finish within {RUSTUP_ADD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn debian_toolchain_present() -> bool {
    Path::new("/usr/bin/cargo").exists()
        && Path::new("/usr/lib/rustlib/src/rust/library").exists()
        && Path::new("/usr/lib/wasm32-wasi/libc.a").exists()
        && Cmd::new("/usr/bin/rustc").arg("--version").succeeds()
}

fn ensure_debian() -> Result<()> {
    if debian_toolchain_present() {
        return Ok(());
    }
    step("no wasm guest toolchain yet: installing Debian's packaged one");
    crate::process::apt_install(DEBIAN_PACKAGES)?;
    if !debian_toolchain_present() {
        bail!(
            "Debian's toolchain was installed but is incomplete (no /usr/lib/rustlib/src or wasi-libc)"
        );
    }
    Ok(())
}
