//! Builds every plugin under `plugins/` into `target/plugins/<name>.wasm`, with a progress line
//! per plugin.
//!
//! - Rust: the packages of the `plugins/` cargo workspace, and any folder of `plugins/` that is
//!   a cargo workspace of its own (as `weft plugin new --lang rust` writes one). A package may
//!   list extra builds in `[package.metadata.weft] variants = ["v2"]`: each variant is the cargo
//!   feature of that name, built to `target/plugins/<name>-<variant>.wasm`; `test-variants`
//!   likewise, to `target/plugins/test-only/` (builds that exist to be refused, kept out of the
//!   directory the demo serves). Cargo decides what to rebuild.
//! - Python: a folder with `app.py`, built with componentize-py and the SDK in
//!   `guest-sdk/python`.
//! - JavaScript: a folder with `index.js`, built with componentize-qjs; it imports the SDK from
//!   `guest-sdk/js` (or its own copy).
//!
//! Python and JavaScript folders name their world in `weft-plugin.toml` (one of [`SCRIPT_WORLDS`]:
//! `world = "resident-entity-plugin"` for an entity whose state stays in the guest,
//! `"entity-plugin"` for the byte-passing contract, `"resolver-plugin"`). Their builds take
//! seconds, so next to each output `<name>.inputs` keeps a hash of what it was built from
//! (sources, SDK, WIT, tool version); a plugin whose inputs are unchanged is not rebuilt.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::guest_tools;
use crate::process::{self, Cmd, step};
use crate::toolchain::{TARGET, Toolchain};

/// The worlds a Python or JavaScript plugin may name in its `weft-plugin.toml`.
const SCRIPT_WORLDS: [&str; 3] = ["resident-entity-plugin", "entity-plugin", "resolver-plugin"];

/// Where test-only builds go, below `target/plugins/`: out of the directory a node (the demo)
/// serves, since they exist to be refused.
const TEST_ONLY_DIR: &str = "test-only/";

/// One wasm file to produce.
struct Build {
    /// The output file's name without `.wasm`.
    name: String,
    source: Source,
}

enum Source {
    Rust {
        manifest: PathBuf,
        package: String,
        /// The cargo feature selecting a variant, if any.
        variant: Option<String>,
    },
    Script(ScriptPlugin),
}

/// A plugin written in a language componentized from source: Python or JavaScript.
pub struct ScriptPlugin {
    pub language: Language,
    pub dir: PathBuf,
    /// One of [`SCRIPT_WORLDS`].
    pub world: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    JavaScript,
}

impl Language {
    fn name(self) -> &'static str {
        match self {
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
        }
    }

    /// The file that makes a folder a plugin of this language.
    fn entry(self) -> &'static str {
        match self {
            Language::Python => "app.py",
            Language::JavaScript => "index.js",
        }
    }

    fn sdk_dir(self, root: &Path) -> PathBuf {
        match self {
            Language::Python => root.join("guest-sdk/python"),
            Language::JavaScript => root.join("guest-sdk/js"),
        }
    }
}

/// What building a script plugin did.
pub enum Built {
    Fresh { size_bytes: u64 },
    Unchanged,
}

pub fn build_all(root: &Path, toolchain: &Toolchain) -> Result<()> {
    let builds = discover(root)?;
    let out_dir = root.join("target/plugins");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let total = builds.len();
    step(&format!(
        "building {total} plugin(s) into {} (Rust with the {} toolchain)",
        out_dir.display(),
        toolchain.name()
    ));
    for (index, build) in builds.iter().enumerate() {
        let started = Instant::now();
        let progress = format!("[{}/{total}] {}.wasm", index + 1, build.name);
        let dest = out_dir.join(format!("{}.wasm", build.name));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let size_bytes = match &build.source {
            Source::Rust {
                manifest,
                package,
                variant,
            } => {
                step(&format!("{progress} (Rust) …"));
                build_rust(
                    root,
                    toolchain,
                    manifest,
                    package,
                    variant.as_deref(),
                    &dest,
                )
                .with_context(|| format!("building plugin {}", build.name))?
            }
            Source::Script(plugin) => {
                step(&format!("{progress} ({}) …", plugin.language.name()));
                match build_script(root, plugin, &dest)
                    .with_context(|| format!("building plugin {}", build.name))?
                {
                    Built::Fresh { size_bytes } => size_bytes,
                    Built::Unchanged => {
                        step(&format!("{progress}: inputs unchanged, not rebuilt"));
                        continue;
                    }
                }
            }
        };
        step(&format!(
            "{progress}: {} KiB in {:.1}s",
            size_bytes / 1024,
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// Every build under `plugins/`, in name order.
fn discover(root: &Path) -> Result<Vec<Build>> {
    let plugins = root.join("plugins");
    let workspace = plugins.join("Cargo.toml");
    let (mut builds, member_dirs) = rust_builds(root, &workspace)?;
    let is_member = |dir: &Path| {
        dir.canonicalize()
            .is_ok_and(|dir| member_dirs.contains(&dir))
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&plugins)
        .with_context(|| format!("cannot list {}", plugins.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    dirs.sort();
    for dir in dirs.into_iter().filter(|dir| dir.is_dir()) {
        let name = file_name(&dir)?;
        if let Some(plugin) = ScriptPlugin::find(&dir)? {
            builds.push(Build {
                name,
                source: Source::Script(plugin),
            });
        } else if dir.join("Cargo.toml").exists() && !is_member(&dir) {
            builds.extend(rust_builds(root, &dir.join("Cargo.toml"))?.0);
        }
    }
    builds.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(builds)
}

/// The Python and JavaScript plugins under `plugins/`, in folder order.
pub fn script_plugins(root: &Path) -> Result<Vec<ScriptPlugin>> {
    let mut found = Vec::new();
    for build in discover(root)? {
        if let Source::Script(plugin) = build.source {
            found.push(plugin);
        }
    }
    Ok(found)
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|name| name.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no UTF-8 file name", path.display()))
}

impl ScriptPlugin {
    /// The Python or JavaScript plugin in `dir`, if it holds one.
    pub fn find(dir: &Path) -> Result<Option<ScriptPlugin>> {
        let languages = [Language::Python, Language::JavaScript];
        let Some(language) = languages
            .into_iter()
            .find(|language| dir.join(language.entry()).exists())
        else {
            return Ok(None);
        };
        let manifest = dir.join("weft-plugin.toml");
        let worlds = SCRIPT_WORLDS.map(|world| format!("\"{world}\"")).join(", ");
        let text = std::fs::read_to_string(&manifest).with_context(|| {
            format!(
                "{} has {} but no readable weft-plugin.toml naming its world \
                 (world = one of {worlds})",
                dir.display(),
                language.entry()
            )
        })?;
        let table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", manifest.display()))?;
        let world = match table.get("world").and_then(|world| world.as_str()) {
            Some(world) if SCRIPT_WORLDS.contains(&world) => world.to_owned(),
            _ => bail!("{}: `world` must be one of {worlds}", manifest.display()),
        };
        Ok(Some(ScriptPlugin {
            language,
            dir: dir.to_owned(),
            world,
        }))
    }
}

/// Builds a Python or JavaScript plugin to `dest`, unless `dest` was built from the same inputs.
pub fn build_script(root: &Path, plugin: &ScriptPlugin, dest: &Path) -> Result<Built> {
    let (tool, tool_version) = match plugin.language {
        Language::Python => guest_tools::componentize_py(root)?,
        Language::JavaScript => guest_tools::componentize_qjs(root)?,
    };
    let inputs = inputs_hash(root, plugin, &tool_version)?;
    let inputs_file = dest.with_extension("inputs");
    let previous = std::fs::read_to_string(&inputs_file).unwrap_or_default();
    if dest.exists() && previous.trim() == inputs {
        return Ok(Built::Unchanged);
    }
    // Written under another name and renamed, so a watcher never loads half a component.
    let partial = dest.with_extension("wasm.partial");
    let wit = root.join("wit");
    let cmd = match plugin.language {
        Language::Python => Cmd::new(tool)
            .arg("--wit-path")
            .arg(&wit)
            .args([
                "--world",
                &plugin.world,
                "componentize",
                "app",
                "--stub-wasi",
            ])
            .arg("--python-path")
            .arg(&plugin.dir)
            .arg("--python-path")
            .arg(plugin.language.sdk_dir(root))
            .arg("--output")
            .arg(&partial),
        Language::JavaScript => {
            // Imports resolve inside the module root: the repository, for plugins importing the
            // SDK from guest-sdk/js; the plugin's own folder when it lives elsewhere.
            let module_root = if plugin.dir.starts_with(root) {
                root
            } else {
                &plugin.dir
            };
            Cmd::new(tool)
                .arg("--wit")
                .arg(&wit)
                .args(["--world", &plugin.world, "--stub-wasi", "--sync", "--js"])
                .arg(plugin.dir.join("index.js"))
                .arg("--module-root")
                .arg(module_root)
                .arg("--output")
                .arg(&partial)
        }
    };
    // Quiet unless it fails: the error then carries the tool's stderr.
    cmd.current_dir(&plugin.dir).output()?;
    std::fs::rename(&partial, dest)
        .with_context(|| format!("cannot move {} to {}", partial.display(), dest.display()))?;
    std::fs::write(&inputs_file, format!("{inputs}\n"))
        .with_context(|| format!("cannot write {}", inputs_file.display()))?;
    let size_bytes = std::fs::metadata(dest)?.len();
    Ok(Built::Fresh { size_bytes })
}

/// A hash of everything a script plugin's component is made from.
fn inputs_hash(root: &Path, plugin: &ScriptPlugin, tool_version: &str) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(format!(
        "{}\0{tool_version}\0{}\0",
        plugin.language.name(),
        plugin.world
    ));
    for tree in [
        plugin.dir.clone(),
        plugin.language.sdk_dir(root),
        root.join("wit"),
    ] {
        for file in source_files(&tree)? {
            let relative = file.strip_prefix(&tree).unwrap_or(&file);
            let contents =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            hasher.update(relative.to_string_lossy().as_bytes());
            hasher.update((contents.len() as u64).to_le_bytes());
            hasher.update(&contents);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The files under `dir` that go into a component, sorted: not tests, caches, installed
/// packages or hidden files.
fn source_files(dir: &Path) -> Result<Vec<PathBuf>> {
    const SKIPPED_DIRS: &[&str] = &["__pycache__", "node_modules", "tests", "testdata"];
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)
            .with_context(|| format!("cannot list {}", current.display()))?
        {
            let path = entry?.path();
            let name = file_name(&path)?;
            let is_test = name.starts_with("test_") || name.ends_with(".test.js");
            if name.starts_with('.') || is_test {
                continue;
            }
            if path.is_dir() {
                if !SKIPPED_DIRS.contains(&name.as_str()) {
                    pending.push(path);
                }
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Builds one Rust package (or variant) and copies its wasm to `dest`; returns its size.
fn build_rust(
    root: &Path,
    toolchain: &Toolchain,
    manifest: &Path,
    package: &str,
    variant: Option<&str>,
    dest: &Path,
) -> Result<u64> {
    // One package per cargo call: a workspace build would unify the SDK's world features.
    let mut cmd = toolchain
        .cargo_build(root)
        .arg("--manifest-path")
        .arg(manifest)
        .args(["--package", package]);
    if let Some(variant) = variant {
        cmd = cmd.args(["--features", variant]);
    }
    cmd.run()?;
    let built = root
        .join("target/wasm-guests")
        .join(toolchain.name())
        .join(TARGET)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    std::fs::copy(&built, dest)
        .with_context(|| format!("cannot copy {} to {}", built.display(), dest.display()))
}

/// The builds of the cargo workspace at `manifest`, and the folders of its members.
fn rust_builds(root: &Path, manifest: &Path) -> Result<(Vec<Build>, Vec<PathBuf>)> {
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
    let mut member_dirs = Vec::new();
    for package in packages {
        let name = package["name"]
            .as_str()
            .context("a package without a name in `cargo metadata`")?;
        if let Some(dir) = package["manifest_path"]
            .as_str()
            .and_then(|path| Path::new(path).parent())
        {
            member_dirs.push(dir.to_owned());
        }
        let rust = |variant: Option<&str>| Build {
            name: match variant {
                Some(variant) => format!("{name}-{variant}"),
                None => name.to_owned(),
            },
            source: Source::Rust {
                manifest: manifest.to_owned(),
                package: name.to_owned(),
                variant: variant.map(str::to_owned),
            },
        };
        builds.push(rust(None));
        for (key, folder) in [("variants", ""), ("test-variants", TEST_ONLY_DIR)] {
            let variants = package["metadata"]["weft"][key].as_array();
            for variant in variants.into_iter().flatten() {
                let Some(variant) = variant.as_str() else {
                    bail!("plugin {name}: [package.metadata.weft] {key} must be strings");
                };
                let mut build = rust(Some(variant));
                build.name = format!("{folder}{}", build.name);
                builds.push(build);
            }
        }
    }
    Ok((builds, member_dirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch folder holding `entry` and a `weft-plugin.toml` naming `world`.
    fn plugin_dir(name: &str, entry: &str, world: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(entry), "").unwrap();
        std::fs::write(
            dir.join("weft-plugin.toml"),
            format!("world = \"{world}\"\n"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn script_plugins_name_any_of_the_three_worlds() {
        for (language, entry) in [
            (Language::Python, "app.py"),
            (Language::JavaScript, "index.js"),
        ] {
            for world in ["resident-entity-plugin", "entity-plugin", "resolver-plugin"] {
                let dir = plugin_dir(&format!("{entry}-{world}"), entry, world);
                let plugin = ScriptPlugin::find(&dir).unwrap().unwrap();
                assert_eq!((plugin.language, plugin.world.as_str()), (language, world));
                std::fs::remove_dir_all(dir).unwrap();
            }
        }
    }

    #[test]
    fn another_world_is_refused_with_the_ones_allowed() {
        let dir = plugin_dir("unknown-world", "app.py", "entity");
        let error = ScriptPlugin::find(&dir).err().unwrap().to_string();
        std::fs::remove_dir_all(dir).unwrap();
        assert!(
            error.ends_with(
                "`world` must be one of \"resident-entity-plugin\", \"entity-plugin\", \"resolver-plugin\""
            ),
            "{error}"
        );
    }
}
