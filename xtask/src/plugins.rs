//! Builds every plugin under `plugins/` into `target/plugins/<name>.wasm`, with a progress line
//! per plugin.
//!
//! Rust plugins are the packages of the `plugins/` cargo workspace. A package may list extra
//! builds in `[package.metadata.weft] variants = ["v2"]`: each variant is the cargo feature of
//! that name, built to `target/plugins/<name>-<variant>.wasm`.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::process::{self, step};
use crate::toolchain::{TARGET, Toolchain};

/// One wasm file to produce.
struct Build {
    package: String,
    /// The cargo feature selecting a variant, if any.
    variant: Option<String>,
}

impl Build {
    fn output_name(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{}-{variant}.wasm", self.package),
            None => format!("{}.wasm", self.package),
        }
    }
}

pub fn build_all(root: &Path, toolchain: &Toolchain) -> Result<()> {
    let manifest = root.join("plugins/Cargo.toml");
    let builds = rust_builds(root, &manifest)?;
    let out_dir = root.join("target/plugins");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let total = builds.len();
    step(&format!(
        "building {total} plugin(s) with the {} toolchain into {}",
        toolchain.name(),
        out_dir.display()
    ));
    for (index, build) in builds.iter().enumerate() {
        let started = Instant::now();
        let name = build.output_name();
        step(&format!("[{}/{total}] {name} …", index + 1));
        // One package per cargo call: a workspace build would unify the SDK's world features.
        let mut cmd = toolchain
            .cargo_build(root)
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["--package", &build.package]);
        if let Some(variant) = &build.variant {
            cmd = cmd.args(["--features", variant]);
        }
        cmd.run()
            .with_context(|| format!("building plugin {name}"))?;
        let built = built_wasm(root, toolchain, &build.package);
        let dest = out_dir.join(&name);
        std::fs::copy(&built, &dest)
            .with_context(|| format!("cannot copy {} to {}", built.display(), dest.display()))?;
        let size_kb = std::fs::metadata(&dest)
            .map(|m| m.len() / 1024)
            .unwrap_or(0);
        step(&format!(
            "[{}/{total}] {name}: {size_kb} KiB in {:.1}s",
            index + 1,
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

fn built_wasm(root: &Path, toolchain: &Toolchain, package: &str) -> PathBuf {
    root.join("target/wasm-guests")
        .join(toolchain.name())
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")))
}

/// The builds the `plugins/` workspace asks for, in name order.
fn rust_builds(root: &Path, manifest: &Path) -> Result<Vec<Build>> {
    let metadata = process::cargo(root)
        .clean_cargo_env()
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()?;
    let metadata: Value =
        serde_json::from_str(&metadata).context("cannot parse `cargo metadata` output")?;
    let Some(packages) = metadata["packages"].as_array() else {
        bail!(
            "`cargo metadata` listed no packages for {}",
            manifest.display()
        );
    };
    let mut builds = Vec::new();
    for package in packages {
        let name = package["name"]
            .as_str()
            .context("a package without a name in `cargo metadata`")?;
        builds.push(Build {
            package: name.to_owned(),
            variant: None,
        });
        let variants = package["metadata"]["weft"]["variants"].as_array();
        for variant in variants.into_iter().flatten() {
            let Some(variant) = variant.as_str() else {
                bail!("plugin {name}: [package.metadata.weft] variants must be strings");
            };
            builds.push(Build {
                package: name.to_owned(),
                variant: Some(variant.to_owned()),
            });
        }
    }
    builds.sort_by_key(Build::output_name);
    Ok(builds)
}
