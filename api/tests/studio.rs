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

#[tokio::test(flavor = "multi_thread")]
async fn a_host_and_a_guest_record_in_the_browser_and_both_get_their_files() {
    let world = World::new(&[]).await;
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let api = ApiServer::start(&world, &["--output-profile", "mp4"]).await;
    let dir = artifacts("studio");
    let downloads = tempfile::tempdir().expect("temp dir");
    let downloads = downloads.path();
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
    let run = tokio::process::Command::new("node")
        .arg(client.join("studio.mjs"))
        .args([&api.url, ADMIN_KEY, dir.to_str().expect("utf-8 path"), "5"])
        .current_dir(&client)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(420), run)
        .await
        .expect("the browser run ends within 7 minutes")
        .expect("node runs (apt-get install nodejs)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no result from the browser run; its log:\n{}",
                tail(&stderr, 80)
            )
        });
    assert_eq!(result["ok"], true, "{result:#}\n{}", tail(&stderr, 80));

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
            let streams = stream_durations(link, downloads).await;
            for kind in ["video", "audio"] {
                let duration = streams
                    .iter()
                    .find(|(k, _)| k == kind)
                    .map(|(_, d)| *d)
                    .unwrap_or_else(|| panic!("no {kind} in {link}: {streams:?}"));
                assert!(
                    (3.5..=7.0).contains(&duration),
                    "{kind} of {link} lasts {duration} s, not about 5: {streams:?}"
                );
            }
        }
    }
    assert_eq!(
        result["inviteLeftInUrl"], false,
        "the invite token leaves the address bar"
    );
    eprintln!(
        "studio: recorded as {}, progress seen {:?}; screenshots in {}",
        result["mimeType"],
        result["progress"],
        dir.display()
    );
}
