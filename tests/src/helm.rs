//! The real Helm CLI for the chart's tests: the binary from `MIXDOWN_HELM`, or else built by
//! `tests/helm/setup.sh` from its Go module (cached), run with config, cache and data folders of
//! its own so no user setting or repository leaks in. No helm is a failure with instructions,
//! never a skipped test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `charts/mixdown`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/mixdown")
}

/// The helm binary: `MIXDOWN_HELM`, or the last line of `tests/helm/setup.sh`.
pub fn helm_bin() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(path) = std::env::var_os("MIXDOWN_HELM").filter(|p| !p.is_empty()) {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "MIXDOWN_HELM={} is not a file; unset it to build helm with tests/helm/setup.sh",
                path.display()
            );
            return path;
        }
        let script = repo_root().join("tests/helm/setup.sh");
        let output = Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let last = stdout.lines().last().unwrap_or_default().trim();
        assert!(
            output.status.success() && !last.is_empty() && Path::new(last).is_file(),
            "no helm CLI for the chart tests: {} failed (its messages are above). Install Go and \
             run it, or set MIXDOWN_HELM to a helm v4 binary.",
            script.display()
        );
        PathBuf::from(last)
    })
}

/// Helm with its own config, cache and data folders, and no `KUBECONFIG` from the environment
/// (pass `--kubeconfig`).
pub fn command() -> Command {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    let home = HOME.get_or_init(|| tempfile::tempdir().expect("a temporary helm home"));
    let mut cmd = Command::new(helm_bin());
    cmd.env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env_remove("KUBECONFIG");
    cmd
}

/// Runs `cmd` to its end; panics when it cannot start.
pub fn run(mut cmd: Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs helm and returns stdout; panics with stderr when it fails.
pub fn ok(args: &[&str]) -> String {
    let mut cmd = command();
    cmd.args(args);
    let output = run(cmd);
    assert!(
        output.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("helm prints UTF-8")
}

/// Runs helm expecting a failure; returns stdout and stderr together.
pub fn fails(args: &[&str]) -> String {
    let mut cmd = command();
    cmd.args(args);
    let output = run(cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "helm {args:?} succeeded:\n{text}");
    text
}
