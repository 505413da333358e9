//! Nothing the test kit starts outlives its test binary: no etcd, kube-apiserver,
//! kube-controller-manager or container process, and no temporary directory.
//!
//! The test re-runs this very binary on one ignored test that starts the control plane and a pod
//! runner whose Pod forks a background process, and then ends the binary badly: first by aborting
//! (no destructors, no atexit: only the kernel's parent-death signal and the next run's sweep can
//! clean up), then by panicking (the usual failing test). Each run gets a fresh TMPDIR, so
//! whatever it leaves is easy to find: files in that directory, processes whose command line,
//! environment or working directory mention it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::runtime::wait::await_condition;
use kube::{Api, ResourceExt};
use mixdown_testkit::cluster::ControlPlane;
use mixdown_testkit::pods::PodRunner;

/// Set by the parent test to tell the child how to end: `abort` or `panic`.
const MODE: &str = "MIXDOWN_LEFTOVERS_MODE";
const CHILD: &str = "starts_everything_then_dies";
/// What the child prints once everything runs, so the parent knows the run got that far.
const READY: &str = "LEFTOVERS-CHILD-READY";
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
#[ignore = "run by no_process_or_directory_outlives_the_test_binary, as a child process"]
async fn starts_everything_then_dies() {
    let Ok(mode) = std::env::var(MODE) else {
        return; // run by hand: nothing to prove
    };
    let marker = std::env::temp_dir();
    let cp = ControlPlane::shared().await;
    let ns = cp.namespace().await;
    let _runner = PodRunner::new(cp.client(), ns.name())
        .image("testkit/shell:1", "/bin/sh")
        .start()
        .await
        .expect("the pod runner starts");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "sleeper" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": "testkit/shell:1",
                // A background grandchild, which no parent-death signal reaches.
                "command": ["sh", "-c", "sleep 600 & sleep 601; wait"],
                "env": [{ "name": "LEFTOVERS_MARKER", "value": marker }],
            }],
        },
    }))
    .expect("a valid pod");
    let pods: Api<Pod> = Api::namespaced(cp.client(), ns.name());
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("creating the pod");
    let running =
        |p: Option<&Pod>| p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Running");
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(pods, &pod.name_any(), running),
    )
    .await
    .expect("the pod runs within 60 s")
    .expect("watching the pod");
    // sh and both sleeps.
    let container_env = format!("LEFTOVERS_MARKER={}", marker.display());
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while with_env(&container_env).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "not all container processes started: {:?}",
            with_env(&container_env)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{READY}");
    match mode.as_str() {
        "abort" => std::process::abort(),
        _ => panic!("this test panics on purpose, with everything running"),
    }
}

#[test]
fn no_process_or_directory_outlives_the_test_binary() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let tmp = tmp.path();

    // Killed outright: the kernel kills the control plane and the Pod's shell (PR_SET_PDEATHSIG),
    // but the shell's background child and the directories stay until the next run sweeps them.
    let status = run_child(tmp, "abort");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGABRT),
        "{status}"
    );
    wait_until_settled(|| {
        control_plane_processes(tmp)
            .is_empty()
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "control plane processes outlived the aborted binary: {:?}",
                    control_plane_processes(tmp)
                )
            })
    });
    assert!(
        entries(tmp) > 0,
        "an aborted binary cannot clean its directories; the next run must"
    );

    // A test panics: destructors and the atexit handler clean up everything, and the start of
    // this run swept what the aborted one left.
    let status = run_child(tmp, "panic");
    assert_eq!(status.code(), Some(101), "{status}");
    wait_until_settled(|| {
        let left = mentioning(tmp);
        left.is_empty()
            .then_some(())
            .ok_or_else(|| format!("processes left running: {left:#?}"))
    });
    let left: Vec<PathBuf> = std::fs::read_dir(tmp)
        .expect("reading TMPDIR")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// Runs the child test with `mode` and `tmp` as its TMPDIR; it must get as far as [`READY`].
fn run_child(tmp: &Path, mode: &str) -> ExitStatus {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out_path = tmp.with_extension(format!("{mode}.out"));
    let out = std::fs::File::create(&out_path).expect("creating the child's output file");
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            CHILD,
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TMPDIR", tmp)
        .env(MODE, mode)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("cloning a file handle"))
        .stderr(out)
        .spawn()
        .expect("running the test binary again");
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the child ({mode}) ran over {CHILD_TIMEOUT:?}:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    assert!(
        output.contains(READY),
        "the child ({mode}) did not get everything running ({status}):\n{output}"
    );
    status
}

/// Polls `check` for a few seconds: killed processes take a moment to disappear.
fn wait_until_settled(check: impl Fn() -> Result<(), String>) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Processes whose command line mentions `dir`: the control plane's, with their flags.
fn control_plane_processes(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    processes()
        .filter_map(|pid| {
            let cmdline = read_lossy(&format!("/proc/{pid}/cmdline"));
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Processes whose command line, environment or working directory mention `dir`.
fn mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    processes()
        .filter_map(|pid| {
            let cmdline = read_lossy(&format!("/proc/{pid}/cmdline"));
            let environ = read_lossy(&format!("/proc/{pid}/environ"));
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            // This test's own process has TMPDIR unchanged; its children got it in their
            // environment, which is exactly what must be gone.
            [&cmdline, &environ, &cwd]
                .iter()
                .any(|s| s.contains(&needle))
                .then_some((pid, cmdline))
        })
        .collect()
}

/// Processes with `var` (`NAME=value`) in their environment.
fn with_env(var: &str) -> Vec<u32> {
    processes()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == var.as_bytes()))
        })
        .collect()
}

fn processes() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

fn read_lossy(path: &str) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}
