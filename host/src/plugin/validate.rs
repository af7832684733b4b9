//! Checks made when a plugin is loaded, before any of its code runs: the bytes are a component,
//! it exports the interface of the world it claims, and it imports nothing outside an allow-list.

use wasmtime::Engine;
use wasmtime::component::Component;

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

    /// The export that makes a component a plugin of this world.
    pub fn export(self) -> &'static str {
        match self {
            World::Entity => "weft:plugin/entity@0.1.0",
            World::Resolver => "weft:plugin/resolver@0.1.0",
        }
    }

    /// Which world a component implements, judged by its exports.
    pub fn of(plugin: &str, engine: &Engine, component: &Component) -> Result<World, PluginError> {
        let exports: Vec<String> = component
            .component_type()
            .exports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let has = |world: World| exports.iter().any(|name| name == world.export());
        match (has(World::Entity), has(World::Resolver)) {
            (true, false) => Ok(World::Entity),
            (false, true) => Ok(World::Resolver),
            (true, true) => Err(invalid(
                plugin,
                "it exports both the entity and the resolver interface; a plugin implements one world"
                    .into(),
            )),
            (false, false) => Err(invalid(
                plugin,
                format!(
                    "it exports neither `{}` nor `{}` (its exports: {}); build it against the \
                     `entity-plugin` or `resolver-plugin` world of weft:plugin@0.1.0",
                    World::Entity.export(),
                    World::Resolver.export(),
                    list_or_none(&exports)
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

/// Refuses components that import anything outside [`ALLOWED_IMPORT_PREFIXES`].
pub fn check_imports(
    plugin: &str,
    engine: &Engine,
    component: &Component,
) -> Result<(), PluginError> {
    let component_type = component.component_type();
    let forbidden = forbidden_imports(component_type.imports(engine).map(|(name, _)| name));
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
pub fn check_header(plugin: &str, bytes: &[u8]) -> Result<(), PluginError> {
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

fn list_or_none(names: &[String]) -> String {
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
