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

    /// Runs a `cargo test`, passing its output through, and returns the passed and failed
    /// counts summed over its `test result:` lines. Fails unless it exits 0.
    pub fn run_tests(mut self) -> Result<TestCounts> {
        use std::io::{BufRead, BufReader};
        let line = self.describe();
        let mut child = self
            .0
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        let mut counts = TestCounts::default();
        if let Some(stdout) = child.stdout.take() {
            for output in BufReader::new(stdout).lines() {
                let output = output?;
                println!("{output}");
                counts.add_result_line(&output);
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!(
                "`{line}` failed ({status}); {} passed, {} failed",
                counts.passed,
                counts.failed
            );
        }
        Ok(counts)
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

/// Tests counted from `cargo test` output.
#[derive(Debug, Default, Clone, Copy)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
}

impl TestCounts {
    /// Adds a libtest summary such as `test result: ok. 21 passed; 0 failed; 1 ignored; …`.
    fn add_result_line(&mut self, line: &str) {
        let Some(summary) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in summary.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let number: u64 = number.parse().unwrap_or(0);
            match label {
                "passed" => self.passed += number,
                "failed" => self.failed += number,
                _ => {}
            }
        }
    }

    pub fn add(&mut self, other: TestCounts) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

#[cfg(test)]
mod tests {
    use super::TestCounts;

    #[test]
    fn result_lines_are_summed() {
        let mut counts = TestCounts::default();
        counts.add_result_line("test result: ok. 21 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.40s");
        counts.add_result_line(
            "test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        counts.add_result_line("running 3 tests");
        assert_eq!((counts.passed, counts.failed), (26, 2));
    }
}
