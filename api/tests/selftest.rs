//! `mixdown-api selftest`, the command the chart's `helm test` Pod runs: the real binary, with the
//! environment that Pod gets, against a running API server (a process, on the test kit's control
//! plane) and the test kit's S3-compatible server.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// What a run printed and how it ended.
struct Run {
    passed: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    /// The line of `step` (`ok   put  ...`, `FAIL put  ...`, `skip ...`).
    fn step(&self, step: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| {
                l.get(5..)
                    .is_some_and(|rest| rest.split_whitespace().next() == Some(step))
            })
            .unwrap_or_else(|| panic!("no line for step {step}:\n{self}"))
    }

    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.took, self.stdout, self.stderr
        )
    }
}

/// Runs `mixdown-api selftest` with the environment the chart's test Pod sets
/// (templates/tests/selftest-pod.yaml), for `bucket` and `api_url`.
async fn selftest(world: &World, bucket: &str, key_prefix: &str, api_url: &str) -> Run {
    let started = Instant::now();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mixdown-api"))
        .arg("selftest")
        .env_clear()
        .env("MIXDOWN_LOG_FORMAT", "text")
        .env("MIXDOWN_S3_ENDPOINT", world.s3.endpoint())
        .env("MIXDOWN_S3_REGION", "auto")
        .env("MIXDOWN_S3_BUCKET", bucket)
        .env("MIXDOWN_S3_PATH_STYLE", "true")
        .env("MIXDOWN_KEY_PREFIX", key_prefix)
        .env("AWS_ACCESS_KEY_ID", world.s3.access_key())
        .env("AWS_SECRET_ACCESS_KEY", world.s3.secret_key())
        .env("MIXDOWN_SELFTEST_API_URL", api_url)
        .env("MIXDOWN_SELFTEST_TIMEOUT_SECONDS", "5")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("selftest ends within a minute")
        .expect("running mixdown-api selftest");
    Run {
        passed: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

const STEPS: [&str; 5] = ["presign", "put", "head", "delete", "socket.io"];

#[tokio::test(flavor = "multi_thread")]
async fn selftest_passes_on_a_working_install_and_leaves_nothing_behind() {
    let world = World::new(&[("never:test", "exit 1")]).await;
    let api = ApiServer::start(&world, &[]).await;

    let run = selftest(&world, &world.bucket, "studio/prod", &api.url).await;
    assert!(run.passed, "{run}");
    assert_eq!(run.code, Some(0), "{run}");
    for step in STEPS {
        let line = run.step(step);
        assert!(line.starts_with("ok "), "{step}: {line}\n{run}");
        assert!(
            line.ends_with(" ms)"),
            "each step says how long it took: {line}"
        );
    }
    assert!(
        run.last_line().contains("passed, 5 steps"),
        "{}",
        run.last_line()
    );
    // The probe went under the key prefix, through the presigned URL, and is gone.
    let puts: Vec<_> = world
        .s3
        .requests()
        .into_iter()
        .filter(|r| r.operation.as_deref() == Some("PutObject"))
        .collect();
    assert_eq!(puts.len(), 1, "{puts:?}");
    assert!(
        puts[0]
            .path_and_query
            .starts_with(&format!("/{}/studio/prod/selftest/probe-", world.bucket))
            && puts[0].path_and_query.contains("X-Amz-Signature="),
        "{puts:?}"
    );
    assert!(world.keys("").await.is_empty(), "the probe is deleted");
    // The socket.io namespace needs a participant token, which the test Pod has not got: its
    // refusal is the answer that proves the handshake reached the API's socket.io server.
    let socket = run.step("socket.io");
    assert!(
        socket.contains("Engine.IO open packet (session "),
        "{socket}"
    );
    assert!(socket.contains("no token"), "{socket}");
    eprintln!("{run}");
}

#[tokio::test(flavor = "multi_thread")]
async fn selftest_names_the_step_that_fails_and_why() {
    let world = World::new(&[("never:test", "exit 1")]).await;
    let api = ApiServer::start(&world, &[]).await;

    // A bucket that does not exist: the upload fails, saying so, and nothing after it is tried
    // against storage; the API itself is fine.
    let run = selftest(&world, "no-such-bucket", "riverside", &api.url).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.step("presign").starts_with("ok "), "{run}");
    let put = run.step("put");
    assert!(
        put.starts_with("FAIL") && put.contains("NoSuchBucket") && put.contains("404"),
        "{run}"
    );
    assert!(run.step("head").starts_with("skip"), "{run}");
    assert!(run.step("delete").starts_with("skip"), "{run}");
    assert!(run.step("socket.io").starts_with("ok "), "{run}");
    assert!(run.last_line().contains("FAILED at put "), "{run}");
    eprintln!("{run}");

    // An address that answers HTTP but is not the API's socket.io (its metrics listener): the
    // storage steps pass, the socket.io step fails, saying what it got.
    let run = selftest(&world, &world.bucket, "riverside", &api.metrics_url).await;
    assert_eq!(run.code, Some(1), "{run}");
    for step in ["presign", "put", "head", "delete"] {
        assert!(run.step(step).starts_with("ok "), "{run}");
    }
    let socket = run.step("socket.io");
    assert!(
        socket.starts_with("FAIL") && socket.contains("not an Engine.IO open packet"),
        "{run}"
    );
    assert!(run.last_line().contains("FAILED at socket.io "), "{run}");
    eprintln!("{run}");

    // Nothing listening there at all.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let run = selftest(&world, &world.bucket, "riverside", &closed).await;
    assert_eq!(run.code, Some(1), "{run}");
    let socket = run.step("socket.io");
    assert!(
        socket.starts_with("FAIL") && socket.contains("Connection refused"),
        "{run}"
    );
    assert!(run.last_line().contains("FAILED at socket.io "), "{run}");
    assert!(world.keys("").await.is_empty(), "no probe is left behind");
    eprintln!("{run}");
}
