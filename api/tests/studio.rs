//! The studio page in a real browser (Debian's headless Chromium with its fake camera and
//! microphone, driven by playwright-core): a host and a guest record, stop, and get their files,
//! on the test kit with the operator, the real worker and the S3-compatible server.
//! Screenshots of each stage are kept in `target/test-artifacts/studio/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn artifacts(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-artifacts")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// The duration of each stream ffprobe finds in the file at `url`: `(codec_type, seconds)`.
async fn stream_durations(url: &str, dir: &Path) -> Vec<(String, f64)> {
    let bytes = reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .expect("the file's link works")
        .bytes()
        .await
        .expect("downloading the file");
    let file = dir.join(format!("download-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, &bytes).expect("writing the file");
    let out = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(&file)
        .output()
        .await
        .expect("ffprobe runs");
    let json: Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    let format_duration: f64 = json["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    json["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let duration = s["duration"]
                .as_str()
                .and_then(|d| d.parse().ok())
                .unwrap_or(format_duration);
            (
                s["codec_type"].as_str().unwrap_or("?").to_string(),
                duration,
            )
        })
        .collect()
}

/// Runs `studio.mjs` with `scenario` against `api`, taking storage away for 3 s when the script
/// asks, and returns its result.
async fn run_studio(
    world: Option<&World>,
    url: &str,
    admin_key: &str,
    scenario: &str,
    seconds: u32,
    label: &str,
) -> (Value, PathBuf) {
    let dir = artifacts(&format!("studio-{label}"));
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client");
    assert!(
        client.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in {} (`.ci/run` and `cargo xtask test` do)",
        client.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is missing: apt-get install chromium (`.ci/run` does)"
    );
    let mut child = tokio::process::Command::new("node")
        .arg(client.join("studio.mjs"))
        .args([url, admin_key, dir.to_str().expect("utf-8 path")])
        .arg(seconds.to_string())
        .arg(scenario)
        .current_dir(&client)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("browser.log")).expect("browser log"))
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (apt-get install nodejs)");
    let stdout = child.stdout.take().expect("stdout");
    let read = async {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut result = None;
        while let Some(line) = lines.next_line().await.expect("reading the browser run") {
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if value["event"] == "cut-storage" {
                let world = world.expect("a storage outage needs the test's world");
                world.s3.set_available(false);
                tokio::time::sleep(Duration::from_secs(3)).await;
                world.s3.set_available(true);
            } else if value.get("ok").is_some() {
                result = Some(value);
            }
        }
        result
    };
    let result = tokio::time::timeout(Duration::from_secs(420), read)
        .await
        .expect("the browser run ends within 7 minutes");
    let _ = child.wait().await;
    let log = std::fs::read_to_string(dir.join("browser.log")).unwrap_or_default();
    let result =
        result.unwrap_or_else(|| panic!("no result from the browser run:\n{}", tail(&log, 80)));
    assert_eq!(result["ok"], true, "{result:#}\n{}", tail(&log, 80));
    (result, dir)
}

/// What every run must show on both pages: each stage, no error left, safe to close, screenshots,
/// and two files of at least about `seconds` of video and audio each, and no longer than the time
/// between the record and stop clicks allows.
async fn check_both_pages(result: &Value, dir: &Path, seconds: f64) {
    let downloads = tempfile::tempdir().expect("temp dir");
    let longest = result["recordedSeconds"]
        .as_f64()
        .expect("the browser run says how long it recorded")
        .max(seconds);
    for who in ["host", "guest"] {
        let stages: Vec<&str> = result["stages"][who]
            .as_array()
            .expect("stages")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for stage in ["recording", "uploading", "processing", "ready"] {
            assert!(
                stages.contains(&stage),
                "{who}'s page never showed {stage}: {stages:?}"
            );
        }
        assert!(
            result["errors"][who].is_null(),
            "{who}: {}",
            result["errors"][who]
        );
        assert_eq!(
            result["safe"][who], "true",
            "{who}'s page says it is safe to close"
        );
        let progress: Vec<i64> = result["progress"][who]
            .as_array()
            .expect("progress")
            .iter()
            .filter_map(Value::as_i64)
            .collect();
        assert!(
            progress.windows(2).all(|w| w[0] <= w[1]),
            "{who}'s progress bar went back: {progress:?}"
        );
        // Everyone in the panel by name: "You (…)" for oneself, the others as they joined.
        let names: Vec<&str> = result["names"][who]
            .as_array()
            .expect("names")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let (me, other) = if who == "host" {
            ("You (Host)", "Guest")
        } else {
            ("You (Guest)", "Host")
        };
        assert!(
            names.contains(&me) && names.contains(&other),
            "{who}'s panel names both participants: {names:?}"
        );
        // The recorder takes H.264 where the browser offers it (the worker then copies the
        // video instead of encoding it), VP8 otherwise.
        // A participant may pick another format in the page.
        let offered = result["mimeType"].as_str().unwrap_or_default();
        let chosen = result["chosen"][who].as_str().unwrap_or_default();
        let recorded = result["recordedAs"][who].as_str().unwrap_or_default();
        let h264 = recorded.contains("h264") || recorded.contains("avc1");
        if chosen == "vp8" {
            assert!(
                recorded.contains("vp8"),
                "{who} chose VP8, recorded {recorded:?}"
            );
        } else {
            assert_eq!(
                h264,
                offered.contains("h264"),
                "{who} recorded as {recorded:?}, the browser offered {offered:?}"
            );
            if !h264 {
                assert!(
                    recorded.contains("vp8") || recorded.contains("vp9"),
                    "{recorded}"
                );
            }
        }
        for stage in ["recording", "processing", "ready"] {
            assert!(
                dir.join(format!("{who}-{stage}.png")).is_file(),
                "no screenshot of {who} at {stage}"
            );
        }
        let links: Vec<&str> = result["links"][who]
            .as_array()
            .expect("links")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(links.len(), 2, "{who}'s page links both files: {links:?}");
        for link in links {
            let streams = stream_durations(link, downloads.path()).await;
            for kind in ["video", "audio"] {
                let duration = streams
                    .iter()
                    .find(|(k, _)| k == kind)
                    .map(|(_, d)| *d)
                    .unwrap_or_else(|| panic!("no {kind} in {link}: {streams:?}"));
                assert!(
                    duration >= seconds - 1.0 && duration <= longest + 2.5,
                    "{kind} of {link} lasts {duration} s, not {seconds} s to {longest} s \
                     (the time between the record and stop clicks): {streams:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_and_a_guest_record_in_the_browser_and_both_get_their_files() {
    let world = World::new(&[]).await;
    // Progress reported and passed on five times a second, so a few seconds of processing
    // show on the bar (a one-minute recording moves it at the default of once a second).
    let _operator = world.operator(WORKER_IMAGE, &["--worker-progress-interval-ms", "200"]);
    let api = ApiServer::start(
        &world,
        &["--output-profile", "mp4", "--progress-interval-ms", "200"],
    )
    .await;
    let (result, dir) = run_studio(Some(&world), &api.url, ADMIN_KEY, "basic", 5, "basic").await;
    check_both_pages(&result, &dir, 5.0).await;
    for who in ["host", "guest"] {
        let seen: Vec<i64> = result["progress"][who]
            .as_array()
            .expect("progress")
            .iter()
            .filter_map(Value::as_i64)
            .collect();
        assert!(
            seen.iter().any(|p| *p > 0 && *p < 100),
            "{who}'s progress bar moved while processing (the guest's VP8 is encoded): {seen:?}"
        );
    }
    assert_eq!(
        result["inviteLeftInUrl"], false,
        "the invite token leaves the address bar"
    );
    eprintln!(
        "studio: recorded as {}, progress seen {}; screenshots in {}",
        result["mimeType"],
        result["progress"],
        dir.display()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_outage_mid_recording_loses_no_second() {
    let world = World::new(&[]).await;
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let api = ApiServer::start(&world, &["--output-profile", "mp4"]).await;
    let (result, dir) = run_studio(Some(&world), &api.url, ADMIN_KEY, "outage", 8, "outage").await;
    let seen = result["errorsSeen"].to_string();
    assert!(
        seen.contains("Storage is unreachable"),
        "the pages said nothing of the outage: {seen}"
    );
    check_both_pages(&result, &dir, 8.0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_reloaded_mid_upload_resumes_from_its_spool_and_loses_no_second() {
    let world = World::new(&[]).await;
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let api = ApiServer::start(&world, &["--output-profile", "mp4"]).await;
    let (result, dir) = run_studio(Some(&world), &api.url, ADMIN_KEY, "reload", 6, "reload").await;
    assert_eq!(
        result["unsentBeforeReload"], true,
        "chunks were still queued: {result:#}"
    );
    assert_eq!(
        result["beforeUnloadAsked"], true,
        "the page warned before unloading with unsent chunks"
    );
    check_both_pages(&result, &dir, 6.0).await;
}

/// Processes whose command line mentions `needle`, but for this test's own.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != me.as_str())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmd| cmd.contains(needle))
        .collect()
}

/// The pids of `pid`'s children, with their command lines.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split(' ').nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .map(|child| {
            let cmd = std::fs::read(format!("/proc/{child}/cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
                .unwrap_or_default();
            (child, cmd)
        })
        .collect()
}

/// `mixdown-local` started with `args` (its neighbours built first), once it printed that it is
/// ready: the child, what it printed (`key: value` lines) and how long it took.
async fn start_local(
    args: &[&str],
    env: &[(&str, &str)],
    log: &Path,
) -> (
    tokio::process::Child,
    std::collections::BTreeMap<String, String>,
    Duration,
) {
    use tokio::io::AsyncBufReadExt;
    // mixdown-local runs its neighbours: make sure they are built, in this profile.
    for (package, bin) in [
        ("mixdown-operator", "mixdown-operator"),
        ("mixdown-worker", "mixdown-worker"),
        ("mixdown-api", "mixdown-api"),
    ] {
        mixdown_testkit::bins::workspace_binary(package, bin);
    }
    let local = mixdown_testkit::bins::workspace_binary("mixdown-testkit", "mixdown-local");
    let started = std::time::Instant::now();
    let mut child = tokio::process::Command::new(&local)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("starting mixdown-local");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = std::collections::BTreeMap::new();
    let read = async {
        while let Some(line) = lines.next_line().await.expect("reading mixdown-local") {
            if let Some((key, value)) = line.split_once(": ") {
                printed.insert(key.trim().to_string(), value.trim().to_string());
            }
            if line.starts_with("ready in") {
                return;
            }
        }
        panic!(
            "mixdown-local ended before it was ready:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    tokio::time::timeout(Duration::from_secs(180), read)
        .await
        .expect("mixdown-local is ready within 3 minutes");
    (child, printed, started.elapsed())
}

/// Ctrl-C to `child`: it exits cleanly within a minute.
async fn interrupt(child: &mut tokio::process::Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id().expect("running") as i32, libc::SIGINT);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("mixdown-local stops within a minute of Ctrl-C")
        .expect("its exit status");
    assert!(status.success(), "mixdown-local exited with {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_run_starts_records_from_the_page_and_leaves_nothing_behind() {
    let data = tempfile::tempdir().expect("temp dir");
    let port = free_port().to_string();
    let (mut child, printed, ready_after) = start_local(
        &[
            "--data-dir",
            data.path().to_str().expect("utf-8 path"),
            "--port",
            &port,
        ],
        &[],
        &data.path().join("local.log"),
    )
    .await;
    let studio = printed.get("studio").expect("the studio address").clone();
    let admin_key = printed.get("admin key").expect("the admin key").clone();
    let namespace = printed.get("namespace").expect("the namespace").clone();
    let kubeconfig = PathBuf::from(printed.get("kubeconfig").expect("the kubeconfig"));
    let cluster_dir = kubeconfig
        .parent()
        .expect("the control plane's folder")
        .to_path_buf();
    assert!(studio.starts_with("http://127.0.0.1:"), "{studio}");
    assert!(
        printed
            .get("host link")
            .is_some_and(|l| l.contains("#host=")),
        "{printed:?}"
    );

    let (result, dir) = run_studio(
        None,
        studio.trim_end_matches('/'),
        &admin_key,
        "basic",
        5,
        "local-run",
    )
    .await;
    check_both_pages(&result, &dir, 5.0).await;

    // Ctrl-C stops everything it started.
    interrupt(&mut child).await;
    for needle in [cluster_dir.to_str().expect("utf-8"), namespace.as_str()] {
        let left = processes_mentioning(needle);
        assert!(left.is_empty(), "still running after Ctrl-C: {left:#?}");
    }
    assert!(
        data.path().join("s3/mixdown").is_dir(),
        "storage keeps its folder for the next run"
    );
    eprintln!(
        "local run ready in {:.1} s (debug build)",
        ready_after.as_secs_f64()
    );
}

/// The same command with a kubeconfig and storage settings: only the operator and the API run
/// here, against a cluster that is not its own (the test kit's, with its pod runner standing in
/// for the nodes) and storage that is not its own (the test kit's S3-compatible server standing
/// in for R2).
#[tokio::test(flavor = "multi_thread")]
async fn the_local_run_against_a_cluster_and_storage_runs_only_the_operator_and_the_api() {
    let world = World::new(&[]).await;
    let data = tempfile::tempdir().expect("temp dir");
    let port = free_port().to_string();
    let kubeconfig = world
        .cp
        .kubeconfig_path()
        .to_str()
        .expect("utf-8")
        .to_string();
    let cluster_args = |secret: &'static str| {
        vec![
            "--data-dir".to_string(),
            data.path().to_str().expect("utf-8 path").to_string(),
            "--port".to_string(),
            port.clone(),
            "--kubeconfig".to_string(),
            kubeconfig.clone(),
            "--namespace".to_string(),
            world.namespace().to_string(),
            "--s3-endpoint".to_string(),
            world.s3.endpoint().to_string(),
            "--s3-region".to_string(),
            world.s3.region().to_string(),
            "--s3-bucket".to_string(),
            world.bucket.clone(),
            "--s3-path-style".to_string(),
            "true".to_string(),
            "--s3-credentials-secret".to_string(),
            secret.to_string(),
            "--worker-image".to_string(),
            WORKER_IMAGE.to_string(),
        ]
    };
    let env = [
        ("AWS_ACCESS_KEY_ID", world.s3.access_key()),
        ("AWS_SECRET_ACCESS_KEY", world.s3.secret_key()),
    ];

    // What the cluster lacks is named, with the command that adds it, before anything starts.
    let local = mixdown_testkit::bins::workspace_binary("mixdown-testkit", "mixdown-local");
    let refused = tokio::process::Command::new(&local)
        .args(cluster_args("no-such-secret"))
        .envs(env)
        .output()
        .await
        .expect("mixdown-local runs");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "it refuses to start: {said}");
    assert!(
        said.contains("Secret no-such-secret")
            && said.contains("create secret generic no-such-secret"),
        "the missing Secret is named with the command that creates it: {said}"
    );

    let args = cluster_args(CREDENTIALS_SECRET);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut child, printed, _) = start_local(&args, &env, &data.path().join("local.log")).await;
    assert_eq!(printed.get("kubeconfig"), Some(&kubeconfig), "{printed:?}");
    assert!(
        printed
            .get("mode")
            .is_some_and(|m| m.starts_with("cluster")),
        "{printed:?}"
    );
    let children = children_of(child.id().expect("running"));
    let names: Vec<&str> = children.iter().map(|(_, cmd)| cmd.as_str()).collect();
    assert_eq!(
        children.len(),
        2,
        "only the operator and the API: {names:#?}"
    );
    assert!(
        names.iter().any(|c| c.contains("mixdown-operator"))
            && names.iter().any(|c| c.contains("mixdown-api")),
        "{names:#?}"
    );

    let studio = printed.get("studio").expect("the studio address").clone();
    let admin_key = printed.get("admin key").expect("the admin key").clone();
    let (result, dir) = run_studio(
        Some(&world),
        studio.trim_end_matches('/'),
        &admin_key,
        "basic",
        5,
        "cluster-run",
    )
    .await;
    check_both_pages(&result, &dir, 5.0).await;

    interrupt(&mut child).await;
    for (pid, cmd) in children {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "{cmd} is still running after Ctrl-C"
        );
    }
}
