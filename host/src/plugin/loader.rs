//! Turning bytes into a checked, ready-to-instantiate plugin: recognise what
//! the bytes are, compile (or load the precompiled artifact from the host's
//! cache), check the component against the `plugin` world, and say in plain
//! words what is wrong when it does not fit.

use super::bindings::{PluginPre, CONTRACT_VERSION, GUEST_INTERFACE};
use super::cache::{Cache, OpenError};
use super::incremental::FunctionCache;
use super::state::GuestState;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use wasmtime::component::{types::ComponentItem, Component, Linker};
use wasmtime::Engine;

/// Why a plugin cannot be loaded. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read plugin {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        reason: String,
    },
    /// The file is not WebAssembly.
    #[error("not a WebAssembly file (it does not start with `\\0asm`)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component: build the guest with \
         `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    /// A core module, not a component.
    CoreModule,
    /// The component does not compile (or breaks a limit).
    #[error("invalid component: {0}")]
    Compile(String),
    /// The component does not export the guest interface.
    #[error("the component does not export `{GUEST_INTERFACE}@{CONTRACT_VERSION}`{found}: is it built against wit/plugin.wit?")]
    MissingExport {
        /// What it exports instead, if anything like it.
        found: String,
    },
    /// The component is built for another contract version.
    #[error("the component is built for contract {found}, but this host serves {GUEST_INTERFACE}@{CONTRACT_VERSION}: rebuild it against this host's wit/")]
    Version {
        /// The version it is built for.
        found: String,
    },
    /// The component imports what the `plugin` world does not offer.
    #[error("the component does not fit the `plugin` world: {0}")]
    World(String),
    /// The component failed the call made before it serves.
    #[error("the plugin failed its smoke call: {0}")]
    Smoke(String),
    /// These very bytes were refused before (for the reason logged then):
    /// they are not compiled again until the file changes.
    #[error("the plugin file has not changed since it was refused; change it and it is tried again")]
    AlreadyRejected,
    /// The host's plugin configuration is wrong.
    #[error("invalid plugin configuration: {0}")]
    Config(String),
    /// The precompiled cache refused or failed.
    #[error("plugin cache {path}: {reason}")]
    Cache {
        /// The cache file or directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl From<OpenError> for LoadError {
    fn from(OpenError { path, reason }: OpenError) -> Self {
        LoadError::Cache { path, reason }
    }
}

/// A compiled, checked plugin version.
pub struct Prepared {
    pub pre: PluginPre<GuestState>,
    /// sha256 of the component bytes.
    pub digest: String,
    /// Compiled now rather than loaded from the cache: what to write there
    /// (after the version is serving; writing tens of MB waits for the disk).
    pub unsaved: Option<Unsaved>,
}

/// A freshly compiled component, not yet in the cache.
pub struct Unsaved {
    name: String,
    component: Component,
}

impl Unsaved {
    /// Write the artifact, and the compiled functions the next version reuses.
    pub fn save(self, cache: Option<&Cache>, functions: &FunctionCache) {
        functions.compiled();
        if let (Some(cache), Ok(artifact)) = (cache, self.component.serialize()) {
            cache.store(&self.name, &artifact);
        }
    }
}

/// Core module, component, or neither — from the 8-byte preamble.
fn check_preamble(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Err(LoadError::CoreModule),
        _ => Ok(()),
    }
}

/// Compile, or reuse the artifact cached for these exact bytes and this
/// exact engine (the cache proves it wrote the artifact before handing it out).
fn compile(
    engine: &Engine,
    bytes: &[u8],
    digest: &str,
    cache: Option<&Cache>,
) -> Result<(Component, Option<Unsaved>), LoadError> {
    let compat = {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
        std::hash::Hasher::finish(&hasher)
    };
    let name = format!("{digest}-{compat:016x}.cwasm");
    if let Some(artifact) = cache.and_then(|c| c.load(&name)) {
        // SAFETY: the bytes carry a valid HMAC under the host's own key, so
        // they are what `Component::serialize` produced below, for a name
        // that pins both the source bytes and the engine's compatibility hash.
        match unsafe { Component::deserialize(engine, &artifact) } {
            Ok(component) => return Ok((component, None)),
            Err(e) => tracing::warn!(name, error = %e, "plugin cache artifact unusable; compiling"),
        }
    }
    let started = std::time::Instant::now();
    let component = Component::new(engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
    tracing::info!(bytes = bytes.len(), ms = started.elapsed().as_millis() as u64, "plugin compiled");
    Ok((component.clone(), Some(Unsaved { name, component })))
}

/// The guest export must be our interface, in a version this host serves.
fn check_exports(engine: &Engine, component: &Component) -> Result<(), LoadError> {
    let names: Vec<String> = component.component_type().exports(engine).map(|(name, _)| name.to_owned()).collect();
    let major_minor = CONTRACT_VERSION.rsplit_once('.').expect("x.y.z").0;
    let ours = names.iter().find(|n| n.strip_prefix(GUEST_INTERFACE).and_then(|v| v.strip_prefix('@')).is_some());
    match ours {
        Some(name) => {
            let version = &name[GUEST_INTERFACE.len() + 1..];
            if version.starts_with(&format!("{major_minor}.")) {
                Ok(())
            } else {
                Err(LoadError::Version { found: name.clone() })
            }
        }
        None if names.iter().any(|n| n == GUEST_INTERFACE) => Err(LoadError::Version { found: GUEST_INTERFACE.into() }),
        None => Err(LoadError::MissingExport {
            found: if names.is_empty() {
                " (it exports nothing)".into()
            } else {
                format!(" (it exports {})", names.join(", "))
            },
        }),
    }
}

/// Read, compile, and check a plugin against the world. Blocking: call it
/// off the async workers.
pub fn prepare(
    engine: &Engine,
    linker: &Linker<GuestState>,
    bytes: &[u8],
    cache: Option<&Cache>,
) -> Result<Prepared, LoadError> {
    check_preamble(bytes)?;
    let digest = format!("{:x}", Sha256::digest(bytes));
    let (component, unsaved) = compile(engine, bytes, &digest, cache)?;
    check_exports(engine, &component)?;
    let unknown_imports: Vec<String> = component
        .component_type()
        .imports(engine)
        .filter(|(name, _)| !name.starts_with("wasi:") && !name.starts_with("presence:plugin/"))
        .map(|(name, item)| match item.ty {
            ComponentItem::ComponentInstance(_) => name.to_owned(),
            _ => format!("{name} (not an interface)"),
        })
        .collect();
    if !unknown_imports.is_empty() {
        return Err(LoadError::World(format!(
            "it imports {}, which this host does not provide",
            unknown_imports.join(", ")
        )));
    }
    let instance_pre = linker.instantiate_pre(&component).map_err(|e| LoadError::World(format!("{e:#}")))?;
    let pre = PluginPre::new(instance_pre).map_err(|e| LoadError::World(format!("{e:#}")))?;
    Ok(Prepared { pre, digest, unsaved })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_tells_modules_components_and_garbage_apart() {
        assert!(matches!(check_preamble(b"hello world"), Err(LoadError::NotWasm)));
        assert!(matches!(check_preamble(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule)));
        assert!(check_preamble(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
