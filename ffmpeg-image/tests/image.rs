//! The worker image, run the way a Job runs it: with podman, as its non-root user, on a read-only
//! root filesystem with a tmpfs for scratch (the Pod's emptyDir), on the host network (the test's
//! S3 server listens on loopback).
//!
//! The image is built by `ffmpeg-image/build.sh` (which `cargo xtask test` runs first). Without
//! podman or without the image these tests fail, saying so: they never skip, since a skipped image
//! test would let a broken image through unnoticed.
//!
//! Every test is `multi_thread`: podman runs as a subprocess, and nothing here may hold up the
//! runtime that the S3 client and server use meanwhile.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use mixdown_crds::{Cleanup, Profile, Track, TrackSource, WorkerJob, WorkerReport};
use mixdown_testkit::s3::S3Server;
use tokio::process::Command;

mod podman_support;
use podman_support::{check_oci_labels, describe, inspect, podman, stdout};

/// Tag that build.sh gives the image; `MIXDOWN_WORKER_IMAGE` tests another one.
const DEFAULT_IMAGE: &str = "localhost/mixdown-worker:dev";
/// The fixed UID and GID of the image's user, which Pod security contexts rely on.
const WORKER_UID: &str = "65532";
/// Where a Pod mounts its scratch emptyDir; here a tmpfs.
const SCRATCH: &str = "/tmp";
/// Where the kubelet mounts the termination message file, and so where the worker reports.
const TERMINATION_LOG: &str = "/dev/termination-log";
/// Longest a single container run may take: the end-to-end run encodes a few seconds of video on
/// two shared cores, everything else is instant.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn image() -> String {
    std::env::var("MIXDOWN_WORKER_IMAGE").unwrap_or_else(|_| DEFAULT_IMAGE.to_string())
}

/// Fails the test, saying what to do, unless podman works and the image exists. Warns when the
/// worker's sources changed after the image was built: the test would then run an old binary.
async fn require_image() -> String {
    let image = image();
    let version = podman().arg("--version").output().await;
    match version {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "podman does not work: {}\n(see ffmpeg-image/build.sh --help)",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => panic!(
            "podman is needed to test the worker image but cannot run ({err}): \
             apt-get install podman runc debootstrap, then run ffmpeg-image/build.sh"
        ),
    }
    let exists = podman()
        .args(["image", "exists", &image])
        .status()
        .await
        .expect("podman image exists");
    assert!(
        exists.success(),
        "the worker image {image} does not exist: run ffmpeg-image/build.sh (its first run \
         needs root, to make the base image)"
    );

    let created = inspect(&image, "{{.Created.Unix}}").await;
    if let (Ok(created), Some(changed)) = (created.parse::<u64>(), newest_source_change())
        && changed > created
    {
        eprintln!(
            "warning: ffmpeg-image/src changed after {image} was built; this tests the older \
             worker. Run ffmpeg-image/build.sh."
        );
    }
    image
}

/// Seconds since the epoch of the newest modification under the worker's `src/`.
fn newest_source_change() -> Option<u64> {
    fn walk(dir: &Path, newest: &mut SystemTime) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                walk(&entry.path(), newest);
            } else if let Ok(modified) = meta.modified() {
                *newest = (*newest).max(modified);
            }
        }
    }
    let mut newest = SystemTime::UNIX_EPOCH;
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut newest,
    );
    newest
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// One `podman run` of the image with a Pod's constraints: read-only root, tmpfs scratch, host
/// network, the image's own user unless `user` says otherwise.
#[derive(Default)]
struct Run {
    entrypoint: Option<String>,
    user: Option<String>,
    env: Vec<(String, String)>,
    volumes: Vec<String>,
    args: Vec<String>,
}

impl Run {
    fn args<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> Run {
        Run {
            args: args.into_iter().map(Into::into).collect(),
            ..Run::default()
        }
    }

    fn entrypoint(mut self, entrypoint: &str) -> Run {
        self.entrypoint = Some(entrypoint.into());
        self
    }

    fn user(mut self, user: &str) -> Run {
        self.user = Some(user.into());
        self
    }

    fn env(mut self, name: &str, value: &str) -> Run {
        self.env.push((name.into(), value.into()));
        self
    }

    fn envs(mut self, vars: Vec<(String, String)>) -> Run {
        self.env.extend(vars);
        self
    }

    fn volume(mut self, host: &Path, container: &str) -> Run {
        self.volumes
            .push(format!("{}:{container}:rw", host.display()));
        self
    }

    async fn run(self, image: &str) -> Output {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mixdown-image-test-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = podman();
        cmd.args(["run", "--rm", "--name", &name])
            .args(["--read-only", "--read-only-tmpfs=false"])
            .args(["--tmpfs", &format!("{SCRATCH}:rw,size=512m,mode=1777")])
            .args(["--network", "host"])
            .args([
                "--ulimit",
                "nofile=20000:20000",
                "--ulimit",
                "nproc=32768:32768",
            ]);
        if let Some(entrypoint) = &self.entrypoint {
            cmd.args(["--entrypoint", entrypoint]);
        }
        if let Some(user) = &self.user {
            cmd.args(["--user", user]);
        }
        for volume in &self.volumes {
            cmd.args(["--volume", volume]);
        }
        // `--env NAME` takes the value from podman's own environment: credentials stay off the
        // command line, and no value needs quoting.
        for (key, value) in &self.env {
            cmd.args(["--env", key]).env(key, value);
        }
        cmd.arg(image).args(&self.args);

        match tokio::time::timeout(RUN_TIMEOUT, cmd.output()).await {
            Ok(out) => out.expect("podman run"),
            Err(_) => {
                // Killing the podman client does not stop the container; remove it by name.
                let _ = podman().args(["rm", "--force", &name]).output().await;
                panic!(
                    "podman run {image} {:?} took longer than {RUN_TIMEOUT:?}",
                    self.args
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn help_exits_zero() {
    let image = require_image().await;
    let out = Run::args(["--help"]).run(&image).await;
    assert!(out.status.success(), "--help: {}", describe(&out));
    assert!(!stdout(&out).is_empty(), "--help printed nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn image_config_is_what_a_job_expects() {
    let image = require_image().await;
    assert_eq!(inspect(&image, "{{.Config.User}}").await, "65532:65532");
    assert_eq!(
        inspect(&image, "{{json .Config.Entrypoint}}").await,
        r#"["/usr/local/bin/mixdown-worker"]"#
    );
    assert_eq!(inspect(&image, "{{.Config.WorkingDir}}").await, SCRATCH);
    check_oci_labels(&image, "mixdown-worker").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_as_its_non_root_user_on_a_read_only_root() {
    let image = require_image().await;

    let out = Run::args([
        "-c",
        "id -u; id -g; touch /tmp/scratch-is-writable && echo ok",
    ])
    .entrypoint("sh")
    .run(&image)
    .await;
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [WORKER_UID, WORKER_UID, "ok"]
    );

    // As root, so that a refusal can only come from the read-only mount, not from permissions.
    let out = Run::args(["/usr/local/bin/probe"])
        .entrypoint("touch")
        .user("0:0")
        .run(&image)
        .await;
    assert!(!out.status.success(), "root filesystem is writable");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn has_ffmpeg_with_the_codecs_the_worker_uses_and_no_network_tools() {
    let image = require_image().await;

    let out = Run::args(["-hide_banner", "-version"])
        .entrypoint("ffmpeg")
        .run(&image)
        .await;
    assert!(out.status.success(), "ffmpeg -version: {}", describe(&out));

    // Browser recordings are VP8/VP9 + Opus in WebM; outputs are H.264 + AAC in MP4 (and M4A) or
    // WebM copies. A real encode also proves that dropping the GPU drivers broke nothing and that
    // the index can be moved to the front in the scratch directory; a small mixdown (a name drawn
    // in DejaVu Sans, overlay, xstack, amix, loudnorm) that the image has what the mixdown uses.
    let script = r#"
        set -e
        ffmpeg -hide_banner -loglevel error \
            -f lavfi -i testsrc=size=160x120:rate=15 -f lavfi -i sine=frequency=440:sample_rate=48000 \
            -t 1 -c:v libvpx -c:a libopus /tmp/in.webm
        ffmpeg -hide_banner -loglevel error -i /tmp/in.webm \
            -c:v libx264 -preset veryfast -c:a aac -movflags +faststart /tmp/out.mp4
        ffprobe -v error -show_entries stream=codec_name -of csv=p=0 /tmp/out.mp4
        # The mixdown's filters, with the font it draws names in (fonts-dejavu-core).
        test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
        ffmpeg -hide_banner -loglevel error -i /tmp/in.webm -i /tmp/in.webm -filter_complex \
            "color=c=0x2b2f3a:s=160x120:r=15:d=1,drawtext=fontfile=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:text=Alice:fontcolor=white[bg];[bg][0:v]overlay=eof_action=pass[c0];[c0][1:v]xstack=inputs=2:layout=0_0|160_0[v];[0:a][1:a]amix=inputs=2:normalize=0,loudnorm=I=-16:TP=-1.5:LRA=11,aresample=48000,aformat=channel_layouts=stereo[a]" \
            -map "[v]" -map "[a]" -c:v libx264 -preset veryfast -c:a aac -movflags +faststart /tmp/mix.mp4
        ffprobe -v error -show_entries stream=codec_name -of csv=p=0 /tmp/mix.mp4
        for tool in curl wget apt apt-get; do
            if command -v "$tool" >/dev/null; then echo "found $tool"; fi
        done
    "#;
    let out = Run::args(["-c", script]).entrypoint("sh").run(&image).await;
    assert!(
        out.status.success(),
        "encode in the image: {}",
        describe(&out)
    );
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["h264", "aac", "h264", "aac"]
    );
}

// ---------------------------------------------------------------------------------------------
// End to end: chunks in S3 → the image → a finished file in S3.

/// Encodes `seconds` of test video and tone as WebM with VP8 and Opus, what a browser's
/// MediaRecorder produces.
async fn recording(dir: &Path, seconds: u32) -> Vec<u8> {
    let path = dir.join("recording.webm");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libvpx",
            "-b:v",
            "500k",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
        ])
        .args(["-c:a", "libopus", "-b:a", "64k"])
        .args(["-f", "webm"])
        .arg(&path)
        .output()
        .await
        .expect("ffmpeg is needed to make test recordings: apt-get install ffmpeg");
    assert!(
        out.status.success(),
        "making the recording: {}",
        describe(&out)
    );
    std::fs::read(&path).expect("read the recording")
}

/// Splits `bytes` into `count` byte ranges, the way MediaRecorder hands out a recording: only the
/// first chunk has the WebM header, the others start anywhere.
fn chunks(bytes: &[u8], count: usize) -> Vec<&[u8]> {
    bytes.chunks(bytes.len().div_ceil(count)).collect()
}

/// ffprobe's view of `path`: `(codec_type, codec_name)` per stream, and the duration in seconds.
async fn probe(path: &Path) -> (Vec<(String, String)>, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-of", "json"])
        .args([
            "-show_entries",
            "stream=codec_type,codec_name:format=duration",
        ])
        .arg(path)
        .output()
        .await
        .expect("ffprobe");
    assert!(out.status.success(), "ffprobe: {}", describe(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    let streams = json["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| {
            (
                s["codec_type"].as_str().unwrap_or_default().to_string(),
                s["codec_name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let duration = json["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("duration");
    (streams, duration)
}

/// Types of the top-level MP4 boxes, in file order.
fn mp4_boxes(bytes: &[u8]) -> Vec<String> {
    let mut boxes = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as u64;
        boxes.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        let size = match size {
            1 if at + 16 <= bytes.len() => {
                u64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap())
            }
            0 => break, // to the end of the file
            size => size,
        };
        if size < 8 {
            break;
        }
        at = at.saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
    }
    boxes
}

/// A termination message file for the container, writable by its user as the kubelet's is.
fn termination_log(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("termination-log");
    std::fs::write(&path, b"").expect("create termination log");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .expect("chmod termination log");
    path
}

const ROOM: &str = "room-1";
const RECORDING: &str = "rec-1";
const PARTICIPANT: &str = "alice";

/// Where the browser uploads the chunks of [`PARTICIPANT`]'s track.
fn chunk_prefix() -> String {
    format!("riverside/chunks/{ROOM}/{RECORDING}/{PARTICIPANT}/")
}

/// Uploads `parts` as the track's chunks `{seq:08}.webm`, leaving out sequence number `gap`.
async fn upload_chunks(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    parts: &[&[u8]],
    gap: Option<usize>,
) {
    for (seq, chunk) in parts.iter().enumerate() {
        if Some(seq) == gap {
            continue;
        }
        client
            .put_object()
            .bucket(bucket)
            .key(format!("{}{seq:08}.webm", chunk_prefix()))
            .content_type("video/webm")
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .expect("upload chunk");
    }
}

/// The job the operator would hand the worker for one track sealed with `chunk_count` chunks.
fn mp4_job(chunk_count: usize) -> WorkerJob {
    WorkerJob {
        room_id: ROOM.into(),
        recording_id: RECORDING.into(),
        tracks: vec![Track {
            participant_id: PARTICIPANT.into(),
            source: TrackSource {
                prefix: chunk_prefix(),
                chunk_count: Some(u32::try_from(chunk_count).expect("chunk count")),
            },
            start_offset_ms: None,
            display_name: None,
        }],
        output: mixdown_crds::Output {
            prefix: format!("riverside/processed/{ROOM}/{RECORDING}/"),
            profile: Profile::Mp4,
            composite: None,
        },
        cleanup: Cleanup::default(),
        composite: false,
    }
}

/// Runs the image on `job` with the environment the operator gives a Pod (storage settings and
/// credentials, the job, the scratch dir, the termination message file). Returns how podman
/// exited and the termination message.
async fn run_worker(
    image: &str,
    s3: &S3Server,
    bucket: &str,
    job: &WorkerJob,
    dir: &Path,
) -> (Output, String) {
    use mixdown_crds::names::env;
    let report_path = termination_log(dir);
    let out = Run::default()
        .envs(s3.env(bucket))
        .env(env::JOB, &serde_json::to_string(job).expect("job JSON"))
        .env(env::SCRATCH_DIR, SCRATCH)
        .env(env::TERMINATION_MESSAGE_PATH, TERMINATION_LOG)
        .volume(&report_path, TERMINATION_LOG)
        .run(image)
        .await;
    // Shown only when the test fails.
    eprintln!("worker: {}", describe(&out));
    let report = std::fs::read_to_string(&report_path).unwrap_or_default();
    (out, report)
}

fn parse_report(report: &str) -> WorkerReport {
    serde_json::from_str(report)
        .unwrap_or_else(|err| panic!("termination message is not a report ({err}): {report:?}"))
}

async fn chunks_left(client: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(chunk_prefix())
        .send()
        .await
        .expect("list chunks")
        .contents()
        .iter()
        .filter_map(|object| object.key().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn turns_chunks_in_storage_into_a_checked_mp4() {
    let image = require_image().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start().await.expect("start S3 server");
    let bucket = s3.create_bucket().await;
    let client = s3.client();

    let seconds = 5;
    let webm = recording(dir.path(), seconds).await;
    let parts = chunks(&webm, 6);
    upload_chunks(&client, &bucket, &parts, None).await;

    let (out, report) = run_worker(&image, &s3, &bucket, &mp4_job(parts.len()), dir.path()).await;
    assert!(
        out.status.success(),
        "the worker failed: {}\n--- termination message\n{report}",
        describe(&out)
    );

    // The report the operator will read.
    let report = parse_report(&report);
    let WorkerReport::Succeeded { outputs, .. } = report else {
        panic!("the worker exited 0 but reported {report:?}");
    };
    let key = format!("riverside/processed/{ROOM}/{RECORDING}/{PARTICIPANT}.mp4");
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    assert_eq!(outputs[0].participant_id, PARTICIPANT);
    assert_eq!(outputs[0].key, key);
    assert!(outputs[0].sealed, "{outputs:?}");
    assert_eq!(outputs[0].chunks, Some(parts.len() as u32), "{outputs:?}");
    assert_eq!(outputs[0].left_out, None, "{outputs:?}");

    // The file in storage is the one reported, and plays: H.264 and AAC, the recording's length,
    // the index in front of the media data.
    let object = client
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .unwrap_or_else(|err| panic!("output {key} is not in the bucket: {err:?}"));
    let mp4 = object.body.collect().await.expect("download").into_bytes();
    assert_eq!(outputs[0].size_bytes, mp4.len() as i64);
    let local = dir.path().join("out.mp4");
    std::fs::write(&local, &mp4).expect("write output");
    let (streams, duration) = probe(&local).await;
    assert!(
        streams.contains(&("video".into(), "h264".into())),
        "{streams:?}"
    );
    assert!(
        streams.contains(&("audio".into(), "aac".into())),
        "{streams:?}"
    );
    assert!(
        (duration - f64::from(seconds)).abs() < 0.5,
        "duration {duration}s, recorded {seconds}s"
    );
    assert!(
        (outputs[0].duration_seconds - duration).abs() < 0.1,
        "reported {}s, ffprobe {duration}s",
        outputs[0].duration_seconds
    );
    let boxes = mp4_boxes(&mp4);
    let moov = boxes.iter().position(|b| b == "moov");
    let mdat = boxes.iter().position(|b| b == "mdat");
    assert!(
        matches!((moov, mdat), (Some(moov), Some(mdat)) if moov < mdat),
        "index (moov) must come before the media (mdat): {boxes:?}"
    );

    // Chunks go once the output is verified; no multipart upload is left open.
    assert_eq!(chunks_left(&client, &bucket).await, Vec::<String>::new());
    assert_eq!(s3.incomplete_uploads(&bucket), Vec::<String>::new());
}

/// Bad input crosses the container boundary as the contract says: exit code 2 (the Job does not
/// retry), a report naming the reason, the chunks kept, nothing written.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_chunk_exits_2_and_keeps_the_chunks() {
    use mixdown_crds::names::{exit_codes, reasons};
    let image = require_image().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start().await.expect("start S3 server");
    let bucket = s3.create_bucket().await;
    let client = s3.client();

    let webm = recording(dir.path(), 2).await;
    let parts = chunks(&webm, 4);
    upload_chunks(&client, &bucket, &parts, Some(2)).await;

    let (out, report) = run_worker(&image, &s3, &bucket, &mp4_job(parts.len()), dir.path()).await;
    assert_eq!(
        out.status.code(),
        Some(exit_codes::BAD_INPUT),
        "{}\n--- termination message\n{report}",
        describe(&out)
    );
    match parse_report(&report) {
        WorkerReport::Failed { reason, message } => {
            assert_eq!(reason, reasons::MISSING_CHUNK, "{message}");
            assert!(
                message.contains("00000002"),
                "the message names the chunk: {message}"
            );
        }
        report => panic!("exit code 2 but the report says {report:?}"),
    }
    assert_eq!(chunks_left(&client, &bucket).await.len(), parts.len() - 1);
    let written = client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("riverside/processed/")
        .send()
        .await
        .expect("list outputs");
    assert_eq!(written.key_count(), Some(0), "{:?}", written.contents());
    assert_eq!(s3.incomplete_uploads(&bucket), Vec::<String>::new());
}
