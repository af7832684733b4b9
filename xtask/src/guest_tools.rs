//! Finds or installs the tools that build Python and JavaScript plugins: componentize-py (from
//! PyPI, into a virtualenv under `target/py-tooling/`) and componentize-qjs (from npm, into
//! `target/js-tooling/node_modules/`). Both versions are pinned in
//! `guest-sdk/tool-versions.toml`, so every machine builds the same way; a different version
//! found in place is replaced. `WEFT_NO_INSTALL=1` forbids installing.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

use crate::process::{self, Cmd, step};

/// The pinned version of `tool` in `guest-sdk/tool-versions.toml`.
pub fn pinned_version(root: &Path, tool: &str) -> Result<String> {
    let path = root.join("guest-sdk/tool-versions.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let versions: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    versions
        .get(tool)
        .and_then(|version| version.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{} pins no version of {tool}", path.display()))
}

/// `componentize-py`, installed at its pinned version; returns the tool and the version.
pub fn componentize_py(root: &Path) -> Result<(PathBuf, String)> {
    let version = pinned_version(root, "componentize-py")?;
    let venv = root.join("target/py-tooling/venv");
    let tool = venv.join("bin/componentize-py");
    let installed = Cmd::new(&tool)
        .arg("--version")
        .output()
        .is_ok_and(|installed| installed.split_whitespace().last() == Some(version.as_str()));
    if installed {
        return Ok((tool, version));
    }
    prepare_install(
        &format!("componentize-py {version}"),
        &venv,
        "python3",
        &["python3", "python3-venv"],
    )?;
    Cmd::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .run()
        .context("cannot create a Python virtualenv (on Debian: apt-get install python3-venv)")?;
    Cmd::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("componentize-py=={version}"))
        .run()?;
    Ok((tool, version))
}

/// `componentize-qjs`, installed at its pinned version; returns the tool and the version.
pub fn componentize_qjs(root: &Path) -> Result<(PathBuf, String)> {
    let version = pinned_version(root, "componentize-qjs")?;
    let prefix = root.join("target/js-tooling");
    let tool = prefix.join("node_modules/.bin/componentize-qjs");
    let manifest = prefix.join("node_modules/componentize-qjs/package.json");
    let installed_version = std::fs::read_to_string(&manifest)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|package| package["version"].as_str().map(str::to_owned));
    if tool.exists() && installed_version.as_deref() == Some(version.as_str()) {
        return Ok((tool, version));
    }
    prepare_install(
        &format!("componentize-qjs {version}"),
        &prefix,
        "npm",
        &["nodejs", "npm"],
    )?;
    std::fs::create_dir_all(&prefix)
        .with_context(|| format!("cannot create {}", prefix.display()))?;
    Cmd::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&prefix)
        .arg(format!("componentize-qjs@{version}"))
        .run()?;
    if !tool.exists() {
        bail!(
            "npm installed componentize-qjs but {} is missing",
            tool.display()
        );
    }
    Ok((tool, version))
}

/// Checks that installing `tool` is allowed and that `installer` is on PATH (installing
/// Debian's `packages` for it if not), then says what is being installed where.
fn prepare_install(tool: &str, dest: &Path, installer: &str, packages: &[&str]) -> Result<()> {
    if std::env::var_os("WEFT_NO_INSTALL").is_some() {
        bail!("{tool} is not installed; WEFT_NO_INSTALL forbids installing it here");
    }
    if !process::on_path(installer) {
        process::apt_install(packages)?;
    }
    step(&format!("installing {tool} into {}", dest.display()));
    Ok(())
}
