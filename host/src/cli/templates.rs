//! `weft plugin new`: writes a ready-to-build plugin — Rust, Python or JavaScript, entity or
//! resolver — with a unit test, from the templates in `guest-sdk/templates/`.
//!
//! Python and JavaScript plugins get a copy of their SDK and of the WIT contract, so the folder
//! tests and builds on its own. A Rust plugin depends on the `weft-guest` crate by path, so it
//! must be created inside a weft checkout (the default folder is `plugins/NAME`).

use anyhow::{Context as _, bail};
use std::path::{Component, Path, PathBuf};

/// The language a plugin is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Python,
    #[value(alias = "javascript")]
    Js,
}

/// The world a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Entity,
    Resolver,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Entity => "entity",
            Kind::Resolver => "resolver",
        }
    }

    /// Every SDK builds an entity whose state stays resident in the guest.
    fn world(self) -> &'static str {
        match self {
            Kind::Entity => "resident-entity-plugin",
            Kind::Resolver => "resolver-plugin",
        }
    }
}

/// A file of a template: where it goes in the plugin folder, and its text.
type TemplateFile = (&'static str, &'static str);

macro_rules! template {
    ($dest:literal, $source:literal) => {
        (
            $dest,
            include_str!(concat!("../../../guest-sdk/templates/", $source)),
        )
    };
}

macro_rules! sdk_file {
    ($dest:literal, $source:literal) => {
        ($dest, include_str!(concat!("../../../", $source)))
    };
}

const RUST_COMMON: &[TemplateFile] = &[
    template!("Cargo.toml", "rust/Cargo.toml"),
    template!("README.md", "rust/README.md"),
    template!(".gitignore", "rust/gitignore"),
];
const RUST_ENTITY: &[TemplateFile] = &[template!("src/lib.rs", "rust/entity/lib.rs")];
const RUST_RESOLVER: &[TemplateFile] = &[template!("src/lib.rs", "rust/resolver/lib.rs")];

const PYTHON_COMMON: &[TemplateFile] = &[
    template!("README.md", "python/README.md"),
    template!("weft-plugin.toml", "weft-plugin.toml"),
];
const PYTHON_ENTITY: &[TemplateFile] = &[
    template!("app.py", "python/entity/app.py"),
    template!("test_app.py", "python/entity/test_app.py"),
];
const PYTHON_RESOLVER: &[TemplateFile] = &[
    template!("app.py", "python/resolver/app.py"),
    template!("test_app.py", "python/resolver/test_app.py"),
];

const JS_COMMON: &[TemplateFile] = &[
    template!("README.md", "js/README.md"),
    template!("package.json", "js/package.json"),
    template!("weft-plugin.toml", "weft-plugin.toml"),
];
const JS_ENTITY: &[TemplateFile] = &[
    template!("index.js", "js/entity/index.js"),
    template!("index.test.js", "js/entity/index.test.js"),
];
const JS_RESOLVER: &[TemplateFile] = &[
    template!("index.js", "js/resolver/index.js"),
    template!("index.test.js", "js/resolver/index.test.js"),
];

/// Copied as they are: the SDKs and the contract.
const PYTHON_SDK: &[TemplateFile] = &[
    sdk_file!("weft/__init__.py", "guest-sdk/python/weft/__init__.py"),
    sdk_file!("weft/codec.py", "guest-sdk/python/weft/codec.py"),
    sdk_file!("weft/context.py", "guest-sdk/python/weft/context.py"),
    sdk_file!("weft/entity.py", "guest-sdk/python/weft/entity.py"),
    sdk_file!("weft/host.py", "guest-sdk/python/weft/host.py"),
    sdk_file!("weft/resolver.py", "guest-sdk/python/weft/resolver.py"),
];
const JS_SDK: &[TemplateFile] = &[
    sdk_file!("weft.js", "guest-sdk/js/weft.js"),
    sdk_file!("msgpack.js", "guest-sdk/js/msgpack.js"),
];
const WIT: &[TemplateFile] = &[sdk_file!("wit/plugin.wit", "wit/plugin.wit")];

/// Tool releases the build instructions name, as `cargo xtask plugins` installs them.
const TOOL_VERSIONS: &str = include_str!("../../../guest-sdk/tool-versions.toml");

/// What to create.
#[derive(Debug, Clone)]
pub struct NewPlugin {
    pub name: String,
    pub language: Language,
    pub kind: Kind,
    pub dir: PathBuf,
}

impl NewPlugin {
    /// Writes the plugin's folder; returns the files written. Refuses a folder that exists and
    /// is not empty, and writes nothing then.
    pub fn create(&self) -> anyhow::Result<Vec<PathBuf>> {
        validate_name(&self.name)?;
        let occupied =
            std::fs::read_dir(&self.dir).is_ok_and(|mut entries| entries.next().is_some());
        if occupied {
            bail!(
                "{} exists and is not empty: choose another --dir",
                self.dir.display()
            );
        }
        let weft_guest_path = match self.language {
            Language::Rust => Some(weft_guest_path(&self.dir)?),
            Language::Python | Language::Js => None,
        };
        let files = self.render(weft_guest_path.as_deref())?;
        let mut written = Vec::new();
        for (relative, text) in files {
            let path = self.dir.join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            written.push(path);
        }
        Ok(written)
    }

    /// The files of the plugin, placeholders filled: `(path in the folder, text)`.
    fn render(&self, weft_guest_path: Option<&str>) -> anyhow::Result<Vec<(&'static str, String)>> {
        let versions: toml::Table =
            toml::from_str(TOOL_VERSIONS).context("guest-sdk/tool-versions.toml is not TOML")?;
        let version = |tool: &str| versions.get(tool).and_then(|v| v.as_str()).unwrap_or("");
        let lib_name = self.name.replace('-', "_");
        let type_name = type_name(&self.name);
        let substitutions = [
            ("{{name}}", self.name.as_str()),
            ("{{lib_name}}", &lib_name),
            ("{{type_name}}", &type_name),
            ("{{kind}}", self.kind.name()),
            ("{{world}}", self.kind.world()),
            ("{{weft_guest_path}}", weft_guest_path.unwrap_or("")),
            ("{{componentize_py}}", version("componentize-py")),
            ("{{componentize_qjs}}", version("componentize-qjs")),
        ];
        let fill = |text: &str| {
            substitutions
                .iter()
                .fold(text.to_owned(), |text, (placeholder, value)| {
                    text.replace(placeholder, value)
                })
        };
        let (common, by_kind, copied): (_, _, &[&[TemplateFile]]) = match (self.language, self.kind)
        {
            (Language::Rust, Kind::Entity) => (RUST_COMMON, RUST_ENTITY, &[]),
            (Language::Rust, Kind::Resolver) => (RUST_COMMON, RUST_RESOLVER, &[]),
            (Language::Python, Kind::Entity) => (PYTHON_COMMON, PYTHON_ENTITY, &[PYTHON_SDK, WIT]),
            (Language::Python, Kind::Resolver) => {
                (PYTHON_COMMON, PYTHON_RESOLVER, &[PYTHON_SDK, WIT])
            }
            (Language::Js, Kind::Entity) => (JS_COMMON, JS_ENTITY, &[JS_SDK, WIT]),
            (Language::Js, Kind::Resolver) => (JS_COMMON, JS_RESOLVER, &[JS_SDK, WIT]),
        };
        let templated = common
            .iter()
            .chain(by_kind)
            .map(|(path, text)| (*path, fill(text)));
        let verbatim = copied
            .iter()
            .flat_map(|files| files.iter())
            .map(|(path, text)| (*path, (*text).to_owned()));
        Ok(templated.chain(verbatim).collect())
    }

    /// What to run next, for the person who asked.
    pub fn next_steps(&self) -> String {
        let dir = self.dir.display();
        let (test, build) = match self.language {
            Language::Rust => ("cargo test", "cargo build --release --target wasm32-wasip2"),
            Language::Python => (
                "python3 -m unittest",
                "componentize-py -d wit -w WORLD componentize app -o NAME.wasm --stub-wasi",
            ),
            Language::Js => ("node --test", "npm install && npm run build"),
        };
        let build = build
            .replace("WORLD", self.kind.world())
            .replace("NAME", &self.name);
        format!(
            "test it:   cd {dir} && {test}\nbuild it:  cd {dir} && {build}\n           \
             (or, in a weft checkout's plugins/ folder: cargo xtask plugins)\nsee {dir}/README.md"
        )
    }
}

/// Plugin names as the registry takes them, starting with a letter (a Rust crate name cannot
/// start with a digit).
fn validate_name(name: &str) -> anyhow::Result<()> {
    let valid = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        bail!(
            "plugin name `{name}`: use 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter"
        );
    }
    Ok(())
}

/// `my-plugin` -> `MyPlugin`.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The path from `dir` to the `guest-sdk` crate of the weft checkout that contains `dir`.
fn weft_guest_path(dir: &Path) -> anyhow::Result<String> {
    let current = std::env::current_dir().context("cannot read the current directory")?;
    let dir = normalize(&current.join(dir));
    let sdk = dir
        .ancestors()
        .skip(1)
        .map(|ancestor| ancestor.join("guest-sdk"))
        .find(|candidate| is_weft_guest(candidate))
        .with_context(|| {
            format!(
                "no weft checkout around {}: a Rust plugin depends on the weft-guest crate by \
                 path, so create it inside one (e.g. plugins/NAME of the weft repository)",
                dir.display()
            )
        })?;
    Ok(relative_path(&dir, &sdk))
}

fn is_weft_guest(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|manifest| manifest.contains("name = \"weft-guest\""))
}

/// Resolves `.` and `..` without touching the file system (`dir` need not exist yet).
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// The path from `from` to `to`, both absolute and normalized, with `/` separators (as
/// Cargo.toml wants them on every platform).
fn relative_path(from: &Path, to: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let ups = std::iter::repeat_n("..".to_owned(), from.len() - common);
    let downs = to[common..]
        .iter()
        .map(|component| component.as_os_str().to_string_lossy().into_owned());
    ups.chain(downs).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(language: Language, kind: Kind) -> NewPlugin {
        NewPlugin {
            name: "my-plugin".into(),
            language,
            kind,
            dir: PathBuf::from("plugins/my-plugin"),
        }
    }

    fn paths(files: &[(&'static str, String)]) -> Vec<&'static str> {
        let mut paths: Vec<_> = files.iter().map(|(path, _)| *path).collect();
        paths.sort();
        paths
    }

    #[test]
    fn every_template_is_filled_in() {
        for language in [Language::Rust, Language::Python, Language::Js] {
            for kind in [Kind::Entity, Kind::Resolver] {
                let files = plugin(language, kind)
                    .render(Some("../../guest-sdk"))
                    .unwrap();
                for (path, text) in &files {
                    assert!(!text.contains("{{"), "{language:?} {kind:?} {path}: {text}");
                }
                let all: String = files.iter().map(|(_, text)| text.as_str()).collect();
                assert!(all.contains("my-plugin"), "{language:?} {kind:?}");
                assert!(all.contains(kind.world()), "{language:?} {kind:?}");
            }
        }
    }

    #[test]
    fn each_language_gets_its_files() {
        let rust = plugin(Language::Rust, Kind::Entity)
            .render(Some("../../guest-sdk"))
            .unwrap();
        assert_eq!(
            paths(&rust),
            [".gitignore", "Cargo.toml", "README.md", "src/lib.rs"]
        );
        let manifest = &rust
            .iter()
            .find(|(path, _)| *path == "Cargo.toml")
            .unwrap()
            .1;
        assert!(
            manifest
                .contains(r#"weft-guest = { path = "../../guest-sdk", features = ["entity"] }"#)
        );
        let lib = &rust
            .iter()
            .find(|(path, _)| *path == "src/lib.rs")
            .unwrap()
            .1;
        assert!(lib.contains("impl Entity for MyPlugin"));

        let python = plugin(Language::Python, Kind::Resolver)
            .render(None)
            .unwrap();
        let python_paths = paths(&python);
        for expected in [
            "app.py",
            "test_app.py",
            "weft-plugin.toml",
            "weft/codec.py",
            "wit/plugin.wit",
        ] {
            assert!(python_paths.contains(&expected), "{python_paths:?}");
        }
        let app = &python.iter().find(|(path, _)| *path == "app.py").unwrap().1;
        assert!(app.contains("Resolver = weft.export_resolver("));

        let js = plugin(Language::Js, Kind::Entity).render(None).unwrap();
        let js_paths = paths(&js);
        for expected in [
            "index.js",
            "index.test.js",
            "package.json",
            "weft.js",
            "msgpack.js",
        ] {
            assert!(js_paths.contains(&expected), "{js_paths:?}");
        }
    }

    #[test]
    fn names_must_suit_every_language() {
        assert!(validate_name("tally-2").is_ok());
        for bad in ["", "2fast", "Tally", "../x", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert_eq!(type_name("my-plugin_v2"), "MyPluginV2");
    }

    #[test]
    fn paths_between_folders() {
        let root = Path::new("/work/weft");
        assert_eq!(
            relative_path(&root.join("plugins/x"), &root.join("guest-sdk")),
            "../../guest-sdk"
        );
        assert_eq!(
            normalize(Path::new("/work/weft/plugins/../plugins/./x")),
            root.join("plugins/x")
        );
    }

    #[test]
    fn refuses_a_folder_that_is_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let new = NewPlugin {
            dir: dir.path().into(),
            ..plugin(Language::Python, Kind::Entity)
        };
        let error = new.create().unwrap_err().to_string();
        assert!(error.contains("not empty"), "{error}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
