//! Building wasm guests from source during the test run: `cargo build
//! --target wasm32-wasip2 --release` on a guest crate, into one shared target
//! directory so dependencies compile once. No binaries are checked in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Cargo serialises builds in one target dir anyway; this keeps the output tidy.
static BUILD: Mutex<()> = Mutex::new(());

/// The workspace root (this file is `tests/support/guests.rs`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// Build the guest crate at `crate_dir` (relative to the workspace) and return
/// the path of its component.
pub fn build_guest(crate_dir: &str) -> PathBuf {
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let root = workspace();
    let manifest = root.join(crate_dir).join("Cargo.toml");
    let target_dir = root.join("target").join("guests");
    let output = Command::new(env!("CARGO"))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "building guest {crate_dir} failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let package = std::fs::read_to_string(&manifest).unwrap();
    let name = package
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("guest manifest names its package")
        .replace('-', "_");
    let wasm = target_dir.join("wasm32-wasip2").join("release").join(format!("{name}.wasm"));
    assert!(wasm.exists(), "expected {}", wasm.display());
    wasm
}

/// A scratch directory for a test, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("presence-{label}-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replace `dest` with `src` atomically, the way deploys do (copy, rename).
pub fn deploy(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// Build the Python guest at `app_dir` with componentize-py (installed by
/// `.ci/run` from PyPI) and return the component's path.
pub fn build_python_guest(app_dir: &str, module: &str) -> PathBuf {
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let root = workspace();
    let out_dir = root.join("target").join("guests");
    std::fs::create_dir_all(&out_dir).unwrap();
    let wasm = out_dir.join(format!("{module}_py.wasm"));
    let output = Command::new("componentize-py")
        .current_dir(&root)
        .args(["-d", "wit", "-w", "plugin", "componentize", "-p", app_dir, module, "-o"])
        .arg(&wasm)
        .output()
        .expect("componentize-py is installed (`pip install componentize-py`; .ci/run does it)");
    assert!(output.status.success(), "componentize-py failed:\n{}", String::from_utf8_lossy(&output.stderr));
    wasm
}

/// Build a component from the hand-written guest `tests/guests/wat/plugin.wat`
/// with its placeholders filled (`fields`: extra module fields, `authorize`:
/// instructions run first in `authorize`), named `name`.
pub fn build_wat_guest(name: &str, fields: &str, authorize: &str) -> PathBuf {
    let root = workspace();
    let source = std::fs::read_to_string(root.join("tests/guests/wat/plugin.wat")).unwrap();
    let source = source.replace("@FIELDS@", fields).replace("@AUTHORIZE@", authorize);
    let mut module = wat::parse_str(&source).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(root.join("wit")).expect("wit/ parses");
    let world = resolve.select_world(&[package], Some("plugin")).expect("world `plugin`");
    wit_component::embed_component_metadata(&mut module, &resolve, world, wit_component::StringEncoding::UTF8)
        .expect("metadata embeds");
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|encoder| encoder.validate(true).encode())
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let out = root.join("target").join("guests");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join(format!("{name}.wasm"));
    std::fs::write(&path, component).unwrap();
    path
}

/// Build the TypeScript guest at `guest_dir` (relative to the workspace; its
/// entry is `src/index.ts`) with the toolchain `examples/` installs (`npm ci`
/// there; `.ci/run` does it): types generated from `wit/` by `jco
/// guest-types`, checked by `tsc --noEmit`, then `jco componentize` with
/// every optional WASI feature disabled. Returns the component's path.
pub fn build_js_guest(guest_dir: &str) -> PathBuf {
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let root = workspace();
    let bin = root.join("examples/node_modules/.bin");
    assert!(bin.join("jco").exists(), "the JS toolchain is missing: run `npm ci` in examples/ (.ci/run does it)");
    let dir = root.join(guest_dir);
    let out_dir = root.join("target").join("guests");
    std::fs::create_dir_all(&out_dir).unwrap();
    let name = Path::new(guest_dir).file_name().unwrap().to_string_lossy().replace('-', "_");
    let wasm = out_dir.join(format!("{name}.wasm"));
    let run = |what: &str, command: &mut Command| {
        let output = command.current_dir(&dir).output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            output.status.success(),
            "{what} failed for {guest_dir}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let wit = root.join("wit");
    run(
        "jco guest-types",
        Command::new(bin.join("jco")).arg("guest-types").arg(&wit).args(["--world-name", "plugin", "-o", "types"]),
    );
    run("tsc --noEmit", Command::new(bin.join("tsc")).arg("--noEmit"));
    run(
        "jco componentize",
        Command::new(bin.join("jco"))
            .args(["componentize", "src/index.ts", "--wit"])
            .arg(&wit)
            .args(["--world-name", "plugin", "--disable", "all", "-o"])
            .arg(&wasm),
    );
    wasm
}

/// The interfaces a component imports, by name (`wasi:…`, `presence:plugin/…`).
pub fn component_imports(wasm: &Path) -> Vec<String> {
    let bytes = std::fs::read(wasm).unwrap();
    let decoded = wit_component::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e:#}", wasm.display()));
    let wit_component::DecodedWasm::Component(resolve, world) = decoded else {
        panic!("{} is a WIT package, not a component", wasm.display());
    };
    resolve.worlds[world].imports.keys().map(|key| resolve.name_world_key(key)).collect()
}

/// The JS guest at `guest_dir` with `edit` applied to its `src/index.ts`
/// (a one-line change of a policy), built as `name`. The copy lives inside
/// `examples/node_modules/.cache/`, so it resolves the same npm packages.
pub fn edited_js_guest(guest_dir: &str, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let root = workspace();
    let relative = format!("examples/node_modules/.cache/presence-guests/{name}");
    let (from, to) = (root.join(guest_dir), root.join(&relative));
    std::fs::create_dir_all(to.join("src")).unwrap();
    std::fs::copy(from.join("tsconfig.json"), to.join("tsconfig.json")).unwrap();
    let source = std::fs::read_to_string(from.join("src/index.ts")).unwrap();
    std::fs::write(to.join("src/index.ts"), edit(source)).unwrap();
    build_js_guest(&relative)
}
