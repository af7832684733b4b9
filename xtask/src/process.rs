//! Running child commands: progress lines, a clean environment, errors that name the command.

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

/// Prints a progress line for a step that may take a while.
pub fn step(message: &str) {
    eprintln!("xtask: {message}");
}

/// A child command; `run` fails with the command line when it does not succeed.
pub struct Cmd(Command);

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd(Command::new(program))
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.0.arg(arg);
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.0.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.0.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.0.current_dir(dir);
        self
    }

    /// Drops what an outer cargo exported (flags, target dir, toolchain pins), so a nested
    /// cargo of another toolchain neither inherits nor overwrites the outer build's settings.
    pub fn clean_cargo_env(mut self) -> Self {
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            let inherited = (key.starts_with("CARGO") && key != "CARGO_HOME")
                || key.starts_with("RUSTC")
                || key.starts_with("RUSTDOC")
                || key == "RUSTFLAGS"
                || key == "RUSTUP_TOOLCHAIN";
            if inherited {
                self.0.env_remove(key);
            }
        }
        self
    }

    fn describe(&self) -> String {
        let mut line = self.0.get_program().to_string_lossy().into_owned();
        for arg in self.0.get_args() {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }

    /// Runs with inherited stdio; fails unless it exits 0.
    pub fn run(mut self) -> Result<()> {
        let line = self.describe();
        let status = self
            .0
            .status()
            .with_context(|| format!("cannot start `{line}`"))?;
        if !status.success() {
            bail!("`{line}` failed ({status})");
        }
        Ok(())
    }

    /// Runs quietly and returns stdout; fails with stderr in the message unless it exits 0.
    pub fn output(mut self) -> Result<String> {
        let line = self.describe();
        let output = self
            .0
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot start `{line}`"))?;
        if !output.status.success() {
            bail!(
                "`{line}` failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// True when the command can be started and exits 0.
    pub fn succeeds(mut self) -> bool {
        self.0
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

/// The cargo that runs this xtask, in `root`.
pub fn cargo(root: &Path) -> Cmd {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Cmd::new(cargo).current_dir(root)
}

/// Installs Debian packages with apt-get (as root, or with passwordless sudo), unless
/// `WEFT_NO_INSTALL` is set.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    if std::env::var_os("WEFT_NO_INSTALL").is_some() {
        bail!(
            "missing Debian packages: {}; WEFT_NO_INSTALL forbids installing them here",
            packages.join(" ")
        );
    }
    step(&format!(
        "installing Debian packages: {}",
        packages.join(" ")
    ));
    let root = Cmd::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|uid| uid.trim() == "0");
    let apt = || {
        let cmd = if root {
            Cmd::new("apt-get")
        } else {
            Cmd::new("sudo").args(["-n", "apt-get"])
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
    };
    apt().args(["update", "-q"]).run()?;
    apt()
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages)
        .run()
}

/// True when `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    Cmd::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .succeeds()
}
