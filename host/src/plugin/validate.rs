//! Checks made when a plugin is loaded, before it is compiled: the bytes are a component, it
//! exports the interface of the world it claims, it imports nothing outside an allow-list, and
//! none of its functions is too large to compile in reasonable time. All are read from the
//! binary with `wasmparser`, without compiling anything. (The exports' function types are checked
//! after compilation, when the version is instantiated once: see `version`.)

use wasmparser::{Parser, Payload};

use super::error::PluginError;

/// The worlds a plugin can implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    Entity,
    Resolver,
}

impl World {
    pub fn name(self) -> &'static str {
        match self {
            World::Entity => "entity",
            World::Resolver => "resolver",
        }
    }

    /// "an entity", "a resolver".
    pub fn with_article(self) -> &'static str {
        match self {
            World::Entity => "an entity",
            World::Resolver => "a resolver",
        }
    }

    /// The exports that make a component a plugin of this world (any one of them): an entity
    /// plugin keeps its entities' state resident (what the SDKs build) or takes it as bytes on
    /// every call (the first contract, still loaded).
    pub fn exports(self) -> &'static [&'static str] {
        match self {
            World::Entity => &[
                "weft:plugin/resident-entity@0.1.0",
                "weft:plugin/entity@0.1.0",
            ],
            World::Resolver => &["weft:plugin/resolver@0.1.0"],
        }
    }

    /// "`a` or `b`": the exports of [`exports`](Self::exports), for messages.
    pub fn exports_text(self) -> String {
        self.exports()
            .iter()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(" or ")
    }

    /// Which world a component implements, judged by the names it exports.
    fn of(plugin: &str, exports: &[&str]) -> Result<World, PluginError> {
        let has = |world: World| exports.iter().any(|name| world.exports().contains(name));
        match (has(World::Entity), has(World::Resolver)) {
            (true, false) => Ok(World::Entity),
            (false, true) => Ok(World::Resolver),
            (true, true) => Err(invalid(
                plugin,
                "it exports both an entity and the resolver interface; a plugin implements one world"
                    .into(),
            )),
            (false, false) => Err(invalid(
                plugin,
                format!(
                    "it exports neither {} nor {} (its exports: {}); build it against the \
                     `resident-entity-plugin`, `entity-plugin` or `resolver-plugin` world of \
                     weft:plugin@0.1.0",
                    World::Entity.exports_text(),
                    World::Resolver.exports_text(),
                    list_or_none(exports)
                ),
            )),
        }
    }
}

/// Interfaces a guest may import. WASI is linked with nothing granted (see `sandbox`);
/// sockets and HTTP are refused outright.
const ALLOWED_IMPORT_PREFIXES: &[&str] = &[
    "weft:plugin/host@",
    "weft:plugin/types@",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
];

/// The checks that need no compilation; the world the component implements.
pub fn check_before_compile(
    plugin: &str,
    bytes: &[u8],
    function_body_bytes_max: usize,
) -> Result<World, PluginError> {
    check_header(plugin, bytes)?;
    let outline = outline(bytes)
        .map_err(|error| invalid(plugin, format!("not a valid component: {error}")))?;
    if outline.largest_function_body > function_body_bytes_max {
        return Err(invalid(
            plugin,
            format!(
                "one of its functions has a body of {} bytes, more than \
                 function_body_bytes_max = {function_body_bytes_max}",
                outline.largest_function_body
            ),
        ));
    }
    check_imports(plugin, &outline.imports)?;
    World::of(plugin, &outline.exports)
}

/// What the checks read of a component: its own imports and exports (not those of the
/// components and modules inside it) and its largest function body.
struct Outline<'a> {
    imports: Vec<&'a str>,
    exports: Vec<&'a str>,
    largest_function_body: usize,
}

fn outline(bytes: &[u8]) -> wasmparser::Result<Outline<'_>> {
    let mut outline = Outline {
        imports: Vec::new(),
        exports: Vec::new(),
        largest_function_body: 0,
    };
    // Nested modules and components come inline, each up to its own `End`.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(imports) if depth == 0 => {
                for import in imports {
                    outline.imports.push(import?.name.name);
                }
            }
            Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports {
                    outline.exports.push(export?.name.name);
                }
            }
            Payload::CodeSectionEntry(body) => {
                outline.largest_function_body =
                    outline.largest_function_body.max(body.range().len());
            }
            _ => {}
        }
    }
    Ok(outline)
}

/// Refuses components that import anything outside [`ALLOWED_IMPORT_PREFIXES`].
fn check_imports(plugin: &str, imports: &[&str]) -> Result<(), PluginError> {
    let forbidden = forbidden_imports(imports.iter().copied());
    if forbidden.is_empty() {
        return Ok(());
    }
    Err(invalid(
        plugin,
        format!(
            "it imports {} which weft does not provide to plugins (no network, no HTTP, \
             no ambient authority)",
            forbidden.join(", ")
        ),
    ))
}

fn forbidden_imports<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    names
        .filter(|name| {
            !ALLOWED_IMPORT_PREFIXES
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
        .collect()
}

/// Tells a core module, other data and a truncated file apart from a component, before the
/// compiler does with a less helpful message.
fn check_header(plugin: &str, bytes: &[u8]) -> Result<(), PluginError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(invalid(
            plugin,
            format!(
                "it is not WebAssembly ({} bytes without the `\\0asm` header)",
                bytes.len()
            ),
        ));
    }
    if bytes[4..8] == CORE_MODULE_VERSION {
        return Err(invalid(
            plugin,
            "it is a core WebAssembly module, not a component: build it for wasm32-wasip2 \
             (or componentize it) against the weft:plugin WIT"
                .into(),
        ));
    }
    Ok(())
}

fn invalid(plugin: &str, reason: String) -> PluginError {
    PluginError::Invalid {
        plugin: plugin.to_owned(),
        reason,
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_imports_pass() {
        let names = [
            "weft:plugin/host@0.1.0",
            "wasi:cli/stderr@0.2.6",
            "wasi:io/streams@0.2.6",
            "wasi:sockets/tcp@0.2.6",
            "wasi:http/outgoing-handler@0.2.6",
            "acme:evil/exfiltrate",
        ];
        assert_eq!(
            forbidden_imports(names.into_iter()),
            [
                "wasi:sockets/tcp@0.2.6",
                "wasi:http/outgoing-handler@0.2.6",
                "acme:evil/exfiltrate"
            ]
        );
    }

    #[test]
    fn header_check_names_what_the_bytes_are() {
        let reason = |bytes: &[u8]| check_header("p", bytes).unwrap_err().to_string();
        assert!(reason(b"hello world").contains("not WebAssembly"));
        assert!(reason(b"\0asm").contains("not WebAssembly"));
        assert!(reason(b"\0asm\x01\0\0\0").contains("core WebAssembly module"));
        assert!(check_header("p", b"\0asm\x0d\0\x01\0").is_ok());
    }
}
