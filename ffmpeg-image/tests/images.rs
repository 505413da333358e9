//! The operator and API images (operator/Dockerfile, api/Dockerfile), run the way their
//! Deployments run them: with podman, as UID 65532, on a read-only root filesystem with every
//! capability dropped and no privilege escalation, on the host network.
//!
//! The images are built by `ffmpeg-image/build.sh --component all`, next to the worker's (whose own
//! tests are in image.rs). Without podman or without the images these tests fail, saying so: they
//! never skip. That they reach the API server with in-cluster configuration under a Pod's
//! ServiceAccount is tested with the pod runner's image mode (tests/tests/pods_image.rs).

use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

mod podman_support;
use podman_support::{check_oci_labels, describe, inspect, podman, stdout};

/// The fixed UID and GID of the images' user, which Pod security contexts rely on.
const UID: &str = "65532";
/// Longest a single container run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// `localhost/mixdown-<component>:dev`, what build.sh tags first; `MIXDOWN_<COMPONENT>_IMAGE`
/// tests another one.
fn image(component: &str) -> String {
    std::env::var(format!("MIXDOWN_{}_IMAGE", component.to_uppercase()))
        .unwrap_or_else(|_| format!("localhost/mixdown-{component}:dev"))
}

/// Fails the test, saying what to do, unless podman works and the image exists.
async fn require_image(component: &str) -> String {
    let image = image(component);
    let version = podman().arg("--version").output().await;
    assert!(
        version.as_ref().is_ok_and(|out| out.status.success()),
        "podman is needed to test the {component} image: apt-get install podman runc debootstrap \
         ({version:?})"
    );
    let exists = podman()
        .args(["image", "exists", &image])
        .status()
        .await
        .expect("podman image exists");
    assert!(
        exists.success(),
        "the {component} image {image} does not exist: run ffmpeg-image/build.sh --component all \
         (its first run needs root, to make the base image)"
    );
    image
}

/// A unique container name for this test binary.
fn container_name() -> String {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    format!(
        "mixdown-images-test-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    )
}

/// `podman run` with a restricted Pod's settings: the image's own user, read-only root without
/// podman's extra tmpfs mounts, no capabilities, no privilege escalation, host network.
fn restricted_run(name: &str) -> Command {
    let mut cmd = podman();
    cmd.args(["run", "--rm", "--name", name, "--pull=never"])
        .args(["--read-only", "--read-only-tmpfs=false"])
        .args(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"])
        .args(["--network", "host"]);
    cmd
}

/// Runs the image's entrypoint with `args` to its end.
async fn run(image: &str, args: &[&str]) -> Output {
    let name = container_name();
    let mut cmd = restricted_run(&name);
    cmd.arg(image).args(args);
    match tokio::time::timeout(RUN_TIMEOUT, cmd.output()).await {
        Ok(out) => out.expect("podman run"),
        Err(_) => {
            let _ = podman().args(["rm", "--force", &name]).output().await;
            panic!("podman run {image} {args:?} took longer than {RUN_TIMEOUT:?}");
        }
    }
}

/// What a Deployment relies on: the non-root user, the binary as the entrypoint (exec form, no
/// shell), the labels, and both tags build.sh gives.
async fn check_config(component: &str) {
    let image = require_image(component).await;
    assert_eq!(
        inspect(&image, "{{.Config.User}}").await,
        format!("{UID}:{UID}")
    );
    assert_eq!(
        inspect(&image, "{{json .Config.Entrypoint}}").await,
        format!(r#"["/usr/local/bin/mixdown-{component}"]"#)
    );
    // An ENTRYPOINT resets the base image's CMD: nothing is appended to the container's args.
    assert!(
        matches!(
            inspect(&image, "{{json .Config.Cmd}}").await.as_str(),
            "null" | "[]"
        ),
        "the image has a CMD"
    );
    check_oci_labels(&image, &format!("mixdown-{component}")).await;
    // The chart's appVersion is the workspace version: an install that names no tag finds it.
    let id = inspect(&image, "{{.Id}}").await;
    let versioned = format!(
        "localhost/mixdown-{component}:{}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        inspect(&versioned, "{{.Id}}").await,
        id,
        "{versioned} is not the same image as {image}"
    );
}

/// `--help` and `--version` work as the image's user on a read-only root with no capabilities.
async fn check_help_and_version(component: &str) {
    let image = require_image(component).await;
    let out = run(&image, &["--help"]).await;
    assert!(out.status.success(), "--help: {}", describe(&out));
    assert!(stdout(&out).contains("Usage:"), "{}", describe(&out));
    let out = run(&image, &["--version"]).await;
    assert!(out.status.success(), "--version: {}", describe(&out));
    assert_eq!(
        stdout(&out),
        format!("mixdown-{component} {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_image_config_is_what_a_deployment_expects() {
    check_config("operator").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_image_config_is_what_a_deployment_expects() {
    check_config("api").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_image_runs_restricted() {
    check_help_and_version("operator").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_image_runs_restricted() {
    check_help_and_version("api").await;
}

/// A port that was free a moment ago, on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` on loopback: the status code and the body, or None while nothing listens.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()?
        .ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Stops the container however the test ends.
struct Removed(String);

impl Drop for Removed {
    fn drop(&mut self) {
        let mut cmd = std::process::Command::new("podman");
        if std::env::var_os("CONTAINERS_CONF").is_none() {
            cmd.env(
                "CONTAINERS_CONF",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("podman/containers.conf"),
            );
        }
        let _ = cmd
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(["rm", "--force", "--ignore", "--time", "0", &self.0])
            .output();
    }
}

/// The API with only what it needs to start (storage settings, its two keys, a cluster to talk
/// to), restricted: it serves `/healthz` on the metrics port and the studio page, compiled into the
/// binary, on the public one. The cluster here is a kubeconfig naming a port nobody listens on: the
/// API starts anyway (its watches retry), and says it is not ready.
#[tokio::test(flavor = "multi_thread")]
async fn api_image_serves_health_and_the_studio_page() {
    use std::os::unix::fs::PermissionsExt;
    let image = require_image("api").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n    namespace: mixdown\ncurrent-context: c\n",
            free_port()
        ),
    )
    .expect("write kubeconfig");
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o644))
        .expect("chmod kubeconfig");

    let (listen, metrics) = (free_port(), free_port());
    let name = container_name();
    let _removed = Removed(name.clone());
    let mut cmd = restricted_run(&name);
    cmd.args([
        "--volume",
        &format!("{}:/etc/mixdown/kubeconfig:ro", kubeconfig.display()),
    ])
    .args(["--env", "KUBECONFIG=/etc/mixdown/kubeconfig"])
    // Secrets by name, from podman's environment.
    .args(["--env", "MIXDOWN_SIGNING_KEY", "--env", "MIXDOWN_ADMIN_KEY"])
    .args([
        "--env",
        "AWS_ACCESS_KEY_ID",
        "--env",
        "AWS_SECRET_ACCESS_KEY",
    ])
    .env("MIXDOWN_SIGNING_KEY", "s".repeat(32))
    .env("MIXDOWN_ADMIN_KEY", "a".repeat(16))
    .env("AWS_ACCESS_KEY_ID", "test")
    .env("AWS_SECRET_ACCESS_KEY", "test-secret")
    .arg(&image)
    .args(["--s3-endpoint", "http://127.0.0.1:9", "--s3-bucket", "b"])
    .args(["--listen-addr", &format!("127.0.0.1:{listen}")])
    .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
    .args(["--log-format", "text"])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("podman run");

    let start = Instant::now();
    let health = loop {
        if let Some(response) = get(metrics, "/healthz").await {
            break response;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().await.expect("podman output");
            panic!(
                "the API exited ({status}) before serving: {}",
                describe(&out)
            );
        }
        assert!(
            start.elapsed() < RUN_TIMEOUT,
            "the API did not serve /healthz within {RUN_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "the API served /healthz {:?} after podman run",
        start.elapsed()
    );
    assert_eq!(health, (200, "ok".to_string()));

    // Not ready: it cannot list RecordingJobs without a cluster.
    let (status, _) = get(metrics, "/readyz").await.expect("/readyz");
    assert_eq!(status, 503);

    let (status, html) = get(listen, "/").await.expect("the studio page");
    assert_eq!(status, 200);
    assert!(html.contains("studio.js"), "{html}");
    for asset in ["/studio.js", "/studio.css", "/vendor/socket.io.min.js"] {
        let (status, _) = get(listen, asset).await.expect("asset");
        assert_eq!(status, 200, "{asset}");
    }

    // SIGTERM, as the kubelet stops it: a clean exit.
    let stopped = podman()
        .args(["stop", "--time", "10", &name])
        .output()
        .await
        .expect("podman stop");
    assert!(stopped.status.success(), "{}", describe(&stopped));
    let out = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("the API stops")
        .expect("podman output");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

/// The operator without a cluster it can reach stops with exit code 1 and says why, in its JSON
/// log: the binary starts on a read-only root as its non-root user.
#[tokio::test(flavor = "multi_thread")]
async fn operator_image_says_when_it_cannot_reach_the_cluster() {
    let image = require_image("operator").await;
    let out = run(
        &image,
        &[
            "--worker-image",
            "localhost/mixdown-worker:dev",
            "--s3-endpoint",
            "http://127.0.0.1:9",
            "--s3-bucket",
            "b",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("connecting to Kubernetes"),
        "{}",
        describe(&out)
    );
}
