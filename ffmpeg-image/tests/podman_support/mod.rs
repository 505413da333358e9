//! What the image tests share: podman with the project's settings, image inspection, the OCI
//! labels every Mixdown image carries, and readable command output.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

use tokio::process::Command;

/// podman with the settings these machines need (runc, cgroupfs, ulimits it may set), from the
/// project's own config file unless the caller points CONTAINERS_CONF elsewhere.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        cmd.env(
            "CONTAINERS_CONF",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("podman/containers.conf"),
        );
    }
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
        .kill_on_drop(true);
    cmd
}

/// `podman image inspect --format <format>` of `image`, trimmed; fails the test if podman does.
pub async fn inspect(image: &str, format: &str) -> String {
    let out = podman()
        .args(["image", "inspect", "--format", format, image])
        .output()
        .await
        .expect("podman image inspect");
    assert!(
        out.status.success(),
        "podman image inspect {image}: {}",
        describe(&out)
    );
    stdout(&out)
}

/// Checks the OCI labels build.sh gives every image: each present and non-empty, the title, the
/// workspace version and the licence. Returns them for further checks.
pub async fn check_oci_labels(image: &str, title: &str) -> serde_json::Value {
    let labels: serde_json::Value =
        serde_json::from_str(&inspect(image, "{{json .Config.Labels}}").await)
            .expect("labels are JSON");
    for label in [
        "title",
        "description",
        "source",
        "licenses",
        "version",
        "revision",
    ] {
        let key = format!("org.opencontainers.image.{label}");
        assert!(
            labels[&key].as_str().is_some_and(|v| !v.is_empty()),
            "label {key} missing in {labels}"
        );
    }
    assert_eq!(labels["org.opencontainers.image.title"], title);
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    labels
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The exit status and both streams, for a failure message.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
