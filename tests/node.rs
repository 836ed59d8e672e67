//! The Node package (`host/node`) against real redis-server processes,
//! presenced and wasm plugins: this test builds what it needs (the addon,
//! the guests) and runs the package's own `node --test` suite, written from
//! the extension's tracker API (`../shared/reference/node-tracker.md`).

use presence_tests::guests::{build_guest, workspace};
use std::process::Command;

/// The native addon, built with the workspace's dev profile (it shares the
/// engine's compiled crates with the tests).
fn addon() -> std::path::PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "presence-node", "-p", "presence", "--bin", "presenced", "--lib"])
        .current_dir(workspace())
        .status()
        .expect("cargo");
    assert!(status.success(), "building the Node addon failed");
    workspace().join("target/debug/libpresence_node.so")
}

#[test]
fn the_node_package_keeps_the_extension_contract() {
    if Command::new("node").arg("--version").output().is_err() {
        panic!("node is not installed (Node 20+ is needed for host/node)");
    }
    let addon = addon();
    let package = workspace().join("host/node");
    assert!(
        package.join("node_modules/ws").exists(),
        "host/node has no node_modules: run `npm ci` there (the tests' WebSocket client is `ws`)"
    );
    let select = build_guest("examples/select-guest");
    let token_gate = build_guest("examples/token-gate");
    let mut suites: Vec<_> = std::fs::read_dir(package.join("test"))
        .expect("host/node/test")
        .map(|entry| entry.expect("a test file").path())
        .filter(|path| path.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    suites.sort();
    let output = Command::new("node")
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .args(&suites)
        .current_dir(&package)
        .env("PRESENCE_ADDON", &addon)
        .env("PRESENCED", workspace().join("target/debug/presenced"))
        .env("GUEST_SELECT", &select)
        .env("GUEST_TOKEN_GATE", &token_gate)
        .output()
        .expect("node");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    assert!(output.status.success(), "the Node package's tests failed:\n{report}");
}
