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

/// The file at `url`, downloaded into `dir`.
async fn download(url: &str, dir: &Path) -> PathBuf {
    let bytes = reqwest::get(url)
        .await
        .and_then(|r| r.error_for_status())
        .expect("the file's link works")
        .bytes()
        .await
        .expect("downloading the file");
    let file = dir.join(format!("download-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, &bytes).expect("writing the file");
    file
}

/// The duration of each stream ffprobe finds in the file at `url`: `(codec_type, seconds)`.
async fn stream_durations(url: &str, dir: &Path) -> Vec<(String, f64)> {
    let file = download(url, dir).await;
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
    let args = [
        url.to_string(),
        admin_key.to_string(),
        dir.to_str().expect("utf-8 path").to_string(),
        seconds.to_string(),
        scenario.to_string(),
    ];
    (run_script(world, "studio.mjs", &args, &dir).await, dir)
}

/// Runs the browser script `script` (in `tests/client`) with `args`, its log in `dir`, taking
/// storage away for 3 s when the script asks, and returns its result: the JSON line with `ok`,
/// which must be true.
async fn run_script(world: Option<&World>, script: &str, args: &[String], dir: &Path) -> Value {
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
        .arg(client.join(script))
        .args(args)
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
    result
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
        // The mixdown, when the recording has one, comes first under Ready.
        if result["mixdown"][who]["url"].is_string() {
            assert_eq!(
                result["readyOrder"][who][0], "mixdown",
                "{who}'s Ready list starts with the mixdown: {}",
                result["readyOrder"][who]
            );
        }
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
    // The reloaded page sealed with its recorder's start, kept in its spool.
    for rj in recording_jobs(&world).await {
        for track in &rj.spec.tracks {
            assert!(
                track.start_offset_ms.is_some(),
                "{} has no start offset: {:?}",
                track.participant_id,
                rj.spec.tracks
            );
        }
    }
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

/// Samples a second of the audio [`mono_pcm`] decodes.
const PCM_RATE: usize = 16_000;

/// The first audio stream of `file`, mixed to mono, [`PCM_RATE`] samples a second.
async fn mono_pcm(file: &Path) -> Vec<f32> {
    let out = tokio::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args([
            "-map",
            "0:a:0",
            "-ac",
            "1",
            "-ar",
            &PCM_RATE.to_string(),
            "-f",
            "f32le",
            "-",
        ])
        .output()
        .await
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg decodes the audio of {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Window of [`tone_bursts`]: 10 ms.
const WINDOW: usize = PCM_RATE / 100;

/// Where a tone of `freq` Hz sounds in `samples`: `(start, end)` in seconds of each run of 10 ms
/// windows (Hann-windowed Goertzel) at least a quarter as loud as its loudest, lasting 100 ms
/// or more (a click is broadband and short; a burst is 250 ms).
fn tone_bursts(samples: &[f32], freq: f64) -> Vec<(f64, f64)> {
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * freq / PCM_RATE as f64).cos();
    let levels: Vec<f64> = samples
        .chunks_exact(WINDOW)
        .map(|w| {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for (i, x) in w.iter().enumerate() {
                let hann =
                    0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (WINDOW - 1) as f64).cos();
                let s = *x as f64 * hann + coeff * s1 - s2;
                s2 = s1;
                s1 = s;
            }
            (s1 * s1 + s2 * s2 - coeff * s1 * s2).max(0.0).sqrt()
        })
        .collect();
    let loudest = levels.iter().cloned().fold(0.0, f64::max);
    if loudest <= 1e-3 {
        return Vec::new();
    }
    let secs = |i: usize| (i * WINDOW) as f64 / PCM_RATE as f64;
    let mut runs = Vec::new();
    let mut start = None;
    for (i, level) in levels.iter().chain([0.0].iter()).enumerate() {
        match (start, *level >= loudest / 4.0) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                if i - s >= 10 {
                    runs.push((secs(s), secs(i)));
                }
                start = None;
            }
            _ => {}
        }
    }
    runs
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn epoch_ms(time: &Value) -> f64 {
    let time = time.as_str().unwrap_or_else(|| panic!("a time: {time}"));
    time.parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("{time}: {e}"))
        .as_microsecond() as f64
        / 1000.0
}

/// The page's clock estimate, from its console line at the seal: `(offset, error)` in ms.
fn clock_of(lines: &Value) -> Option<(f64, f64)> {
    let line = lines
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .rfind(|l| l.contains("clock offset"))?;
    let number_after = |what: &str| -> Option<f64> {
        let rest = &line[line.find(what)? + what.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    Some((number_after("clock offset ")?, number_after("±")?))
}

/// The mixdown places every track where its recorder started, on the server's clock: a guest who
/// joins 2 s late, with a page clock 40 s off, is heard at the same instant as the host. Each
/// page's microphone is a tone (440 Hz the host's, 1320 Hz the guest's) that bursts for 250 ms
/// at instants of this machine's clock: once in both pages together, once more in the guest's.
/// In the mixdown each burst must be where it was made, counted from the recording's start as
/// the server recorded it, within 100 ms, and the two bursts made together within 100 ms of each
/// other. The Ready list shows the mixdown first.
#[tokio::test(flavor = "multi_thread")]
async fn the_mixdown_puts_a_late_guest_with_a_skewed_clock_in_sync_with_the_host() {
    let world = World::new(&[]).await;
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let api = ApiServer::start(&world, &["--output-profile", "mp4"]).await;
    let dir = artifacts("studio-sync");
    let args = [
        api.url.clone(),
        ADMIN_KEY.to_string(),
        dir.to_str().expect("utf-8 path").to_string(),
    ];
    let result = run_script(Some(&world), "sync.mjs", &args, &dir).await;
    let summary = serde_json::json!({
        "startedAt": result["startedAt"],
        "bursts": result["bursts"],
        "clockLog": result["clockLog"],
        "readyOrder": result["readyOrder"],
        "readySeen": result["readySeen"],
        "mixdown": result["mixdown"],
        "audio": result["audio"],
        "pageClockAhead": result["pageClockAhead"],
        "errors": result["errors"],
    });
    eprintln!("sync run: {summary:#}");

    for who in ["host", "guest"] {
        assert!(
            result["errors"][who].is_null(),
            "{who}: {}",
            result["errors"][who]
        );
        assert_eq!(
            result["mixdown"][who]["phase"], "Succeeded",
            "{who}: {summary:#}"
        );
        assert_eq!(
            result["readyOrder"][who][0]["kind"], "mixdown",
            "{who}'s Ready list starts with the mixdown: {summary:#}"
        );
        assert!(
            result["readyOrder"][who][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("Everyone (mixdown)")),
            "{summary:#}"
        );
        let tracks = result["readyOrder"][who]
            .as_array()
            .expect("the Ready list")
            .iter()
            .filter(|f| f["kind"] == "track")
            .count();
        assert_eq!(tracks, 2, "{who}'s Ready list has both participants' files");
    }

    // Each page set its clock by the server's: the guest's runs 40 s ahead, the host's not at
    // all (but for the ms Chromium's high-resolution clock is off the wall clock, which the
    // script measured), and each estimate is right within its bound.
    for who in ["host", "guest"] {
        let ahead = result["pageClockAhead"][who]
            .as_f64()
            .expect("how far the page's clock is ahead");
        let (offset, error) = clock_of(&result["clockLog"][who])
            .unwrap_or_else(|| panic!("{who}'s page said its clock at the seal: {summary:#}"));
        eprintln!(
            "{who}: clock offset {offset} ms ±{error} ms, true {:.1} ms: {:.1} ms off",
            -ahead,
            offset + ahead
        );
        assert!(
            (offset + ahead).abs() <= error + 2.0,
            "{who}'s clock offset {offset} ms ±{error} ms, but its clock is {ahead} ms ahead"
        );
    }

    // Where the API placed each track: the guest about 2 s after the host.
    let rj = recording_jobs(&world)
        .await
        .into_iter()
        .find(|rj| Some(rj.spec.recording_id.as_str()) == result["recordingId"].as_str())
        .expect("the recording's RecordingJob");
    let offsets: Vec<(String, Option<i64>)> = rj
        .spec
        .tracks
        .iter()
        .map(|t| (t.participant_id.clone(), t.start_offset_ms))
        .collect();
    eprintln!("start offsets: {offsets:?}");
    assert!(
        offsets.iter().all(|(_, o)| o.is_some()),
        "every track has its start offset: {offsets:?}"
    );

    // The mixdown: each burst where it was made, from the recording's start.
    let url = result["mixdown"]["host"]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("the host's page links the mixdown: {summary:#}"));
    let file = download(url, &dir).await;
    std::fs::copy(&file, dir.join("mixdown.mp4")).expect("keeping the mixdown");
    let samples = mono_pcm(&file).await;
    let started = epoch_ms(&result["startedAt"]);
    let at = |i: usize| (result["bursts"][i]["at"].as_f64().expect("a burst") - started) / 1000.0;
    let host = tone_bursts(
        &samples,
        result["frequencies"]["host"].as_f64().expect("Hz"),
    );
    let guest = tone_bursts(
        &samples,
        result["frequencies"]["guest"].as_f64().expect("Hz"),
    );
    eprintln!(
        "bursts made at {:.3} s (both) and {:.3} s (guest); heard: host {host:?}, guest {guest:?}",
        at(0),
        at(1)
    );
    assert_eq!(host.len(), 1, "the host's one burst: {host:?}");
    assert_eq!(guest.len(), 2, "the guest's two bursts: {guest:?}");
    let near = |heard: f64, made: f64, what: &str| {
        assert!(
            (heard - made).abs() <= 0.1,
            "{what} is heard at {heard:.3} s into the mixdown, made at {made:.3} s: {:.0} ms off",
            (heard - made) * 1000.0
        );
    };
    assert!(
        (host[0].0 - guest[0].0).abs() <= 0.1,
        "the bursts made together are heard {:.0} ms apart",
        (guest[0].0 - host[0].0) * 1000.0
    );
    near(host[0].0, at(0), "the host's burst");
    near(guest[0].0, at(0), "the guest's first burst");
    near(guest[1].0, at(1), "the guest's second burst");
}
