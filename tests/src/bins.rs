//! Mixdown's own binaries, built by cargo, for tests that run them as real processes (the worker
//! inside a Pod, the operator beside the control plane).
//!
//! Cargo only hands a test the binaries of its own package (`CARGO_BIN_EXE_*`), so binaries of
//! other workspace members are built here, once per test binary, with the same profile, unless
//! `MIXDOWN_BIN_DIR` names a folder that holds them already (`cargo xtask test` points it at the
//! ones `cargo test --workspace` built).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Where already-built binaries are taken from instead of building them (the local run sets it to
/// its own folder, where `cargo xtask up` built them all at once).
pub const BIN_DIR_ENV: &str = "MIXDOWN_BIN_DIR";

/// Builds (if needed) and returns the path of binary `bin` from workspace package `package`.
///
/// Panics with cargo's output when the build fails: a test cannot go on without the binary.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        let path = PathBuf::from(dir).join(bin);
        assert!(
            path.is_file(),
            "{} is missing; build it with `cargo build -p {package} --bin {bin}`",
            path.display()
        );
        return path;
    }
    // One build at a time: concurrent tests asking for the same binary would only wait on
    // cargo's lock anyway, and this keeps its output readable.
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());

    let root = workspace_root();
    let release = cfg!(not(debug_assertions));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut build = Command::new(cargo);
    build
        .current_dir(&root)
        // Every workspace binary at once, so cargo resolves their dependencies' features once:
        // `--package X --bin Y` per binary would compile the shared dependencies again for each
        // package whose features differ, and keep every copy in the target folder.
        .args(["build", "--quiet", "--workspace", "--bins"]);
    if release {
        build.arg("--release");
    }
    let output = build
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {bin}: {e}"));
    assert!(
        output.status.success(),
        "building {bin} (package {package}) failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target
        .join(if release { "release" } else { "debug" })
        .join(bin);
    assert!(
        path.is_file(),
        "cargo built {bin} but {} does not exist",
        path.display()
    );
    path
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test kit lives one level below the workspace root")
        .to_path_buf()
}
