//! What the worker's tests and benchmark share: recordings generated with ffmpeg and split the
//! way MediaRecorder splits them, chunks put into the test kit's S3 server, the worker run as a
//! real process, and ffprobe on what it produced.
//!
//! Recordings are generated once into a cache under the target directory, keyed by name; ffmpeg
//! and ffprobe must be installed (Debian's `ffmpeg` package): without them the tests fail, they
//! do not skip.
#![allow(dead_code)]

pub mod tap;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use aws_sdk_s3::primitives::ByteStream;
use mixdown_testkit::s3::S3Server;
use serde_json::{Value, json};

/// The worker binary cargo built for these tests.
pub const WORKER: &str = env!("CARGO_BIN_EXE_mixdown-worker");

/// How a recording is made: `seconds` of `testsrc2` and a sine, encoded as a browser would.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Cache key; also says what it is (`vp8-30s-240p`).
    pub name: &'static str,
    pub seconds: u32,
    /// `WIDTHxHEIGHT`.
    pub size: &'static str,
    pub video: Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Video {
    /// VP8 at about this many kbit/s (MediaRecorder's default in Chromium and Firefox).
    Vp8 { kbps: u32 },
    /// VP8 at a high, forced bit rate: big chunks, for multipart uploads of many parts.
    Vp8Large,
    /// VP9.
    Vp9 { kbps: u32 },
    /// H.264 in Matroska, as Chromium records `video/webm;codecs=h264`.
    H264,
    /// H.264 in Matroska at a bit rate, encoded fast (as a browser's real-time encoder would).
    H264Realtime { kbps: u32 },
}

pub const VP8_30S: Spec = Spec {
    name: "vp8-30s-240p",
    seconds: 30,
    size: "320x240",
    video: Video::Vp8 { kbps: 500 },
};
pub const VP9_30S: Spec = Spec {
    name: "vp9-30s-240p",
    seconds: 30,
    size: "320x240",
    video: Video::Vp9 { kbps: 400 },
};
pub const H264_30S: Spec = Spec {
    name: "h264-30s-240p",
    seconds: 30,
    size: "320x240",
    video: Video::H264,
};
/// About 13 MB: three 5 MiB parts.
pub const VP8_LARGE_30S: Spec = Spec {
    name: "vp8-30s-360p-large",
    seconds: 30,
    size: "640x360",
    video: Video::Vp8Large,
};

/// Browsers start a recording's timestamps where the page's clock was, not at 0.
pub const START_OFFSET_SECONDS: f64 = 3.5;

/// Fails, with a message saying what to install, when ffmpeg or ffprobe is missing.
pub fn require_ffmpeg() {
    for program in ["ffmpeg", "ffprobe"] {
        let found = std::process::Command::new(program)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{program} is not installed; these tests need Debian's ffmpeg package (apt-get install ffmpeg)"
        );
    }
}

/// Directory of generated recordings.
pub fn media_cache() -> PathBuf {
    std::env::var_os("MIXDOWN_MEDIA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("mixdown-media"))
}

/// The recording `spec` as one WebM (or Matroska) file, generated on first use.
pub fn recording(spec: &Spec) -> anyhow::Result<PathBuf> {
    // One generation at a time in this process; other processes see the file only once renamed.
    static GENERATING: Mutex<()> = Mutex::new(());
    let _guard = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
    require_ffmpeg();
    let dir = media_cache();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.webm", spec.name));
    if path.is_file() {
        return Ok(path);
    }
    let partial = dir.join(format!("{}.{}.partial", spec.name, std::process::id()));
    let (rate, gop) = ("30", "60");
    let mut args: Vec<String> = vec![
        "-hide_banner".into(),
        "-loglevel".into(),
        "error".into(),
        "-y".into(),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("testsrc2=size={}:rate={rate}", spec.size),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        "sine=frequency=440:sample_rate=48000".into(),
        "-t".into(),
        spec.seconds.to_string(),
    ];
    let video: Vec<String> = match spec.video {
        Video::Vp8 { kbps } => vec![
            "-c:v".into(),
            "libvpx".into(),
            "-b:v".into(),
            format!("{kbps}k"),
            "-deadline".into(),
            "realtime".into(),
            "-cpu-used".into(),
            "8".into(),
        ],
        Video::Vp8Large => [
            "-c:v",
            "libvpx",
            "-b:v",
            "6M",
            "-qmin",
            "0",
            "-qmax",
            "6",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
        ]
        .map(String::from)
        .to_vec(),
        Video::Vp9 { kbps } => vec![
            "-c:v".into(),
            "libvpx-vp9".into(),
            "-b:v".into(),
            format!("{kbps}k"),
            "-deadline".into(),
            "realtime".into(),
            "-cpu-used".into(),
            "8".into(),
        ],
        Video::H264 => [
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
        ]
        .map(String::from)
        .to_vec(),
        Video::H264Realtime { kbps } => vec![
            "-c:v".into(),
            "libx264".into(),
            "-profile:v".into(),
            "baseline".into(),
            "-preset".into(),
            "ultrafast".into(),
            "-tune".into(),
            "zerolatency".into(),
            "-b:v".into(),
            format!("{kbps}k"),
            "-pix_fmt".into(),
            "yuv420p".into(),
        ],
    };
    args.extend(video);
    args.extend([
        "-g".into(),
        gop.into(),
        "-c:a".into(),
        "libopus".into(),
        "-b:a".into(),
        "64k".into(),
    ]);
    args.extend(["-output_ts_offset".into(), START_OFFSET_SECONDS.to_string()]);
    // Written to a pipe like MediaRecorder's stream: no duration, no cues, unknown sizes.
    let format = if matches!(spec.video, Video::H264 | Video::H264Realtime { .. }) {
        "matroska"
    } else {
        "webm"
    };
    args.extend(["-f".into(), format.into(), "pipe:1".into()]);
    let out = std::fs::File::create(&partial)?;
    let status = std::process::Command::new("ffmpeg")
        .args(&args)
        .stdout(out)
        .status()
        .context("running ffmpeg")?;
    ensure!(status.success(), "ffmpeg {args:?} failed: {status}");
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// The recording's bytes split into `seconds` chunks of equal size, about one second each, as
/// MediaRecorder's timeslice cuts them: only the first holds the header.
pub fn split(bytes: &[u8], seconds: u32) -> Vec<Vec<u8>> {
    let size = bytes.len().div_ceil(seconds as usize);
    bytes.chunks(size).map(<[u8]>::to_vec).collect()
}

/// Generates (or finds) `spec` and returns its chunks.
pub fn chunks(spec: &Spec) -> anyhow::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(recording(spec)?)?;
    Ok(split(&bytes, spec.seconds))
}

/// Where a track's chunks go, per DESIGN.md's storage layout.
pub fn chunk_prefix(room: &str, recording: &str, participant: &str) -> String {
    format!("riverside/chunks/{room}/{recording}/{participant}/")
}

/// Puts `chunks` under `prefix` as `00000000.webm`, `00000001.webm`, …
pub async fn put_chunks(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    chunks: &[Vec<u8>],
) -> anyhow::Result<()> {
    for (seq, chunk) in chunks.iter().enumerate() {
        put(
            client,
            bucket,
            &format!("{prefix}{seq:08}.webm"),
            chunk.clone(),
        )
        .await?;
    }
    Ok(())
}

pub async fn put(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .with_context(|| format!("putting {key}"))?;
    Ok(())
}

pub async fn delete(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> anyhow::Result<()> {
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await?;
    Ok(())
}

/// Keys under `prefix`, sorted.
pub async fn keys(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut keys = Vec::new();
    while let Some(page) = pages.next().await {
        keys.extend(
            page?
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    keys.sort();
    Ok(keys)
}

pub async fn get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .with_context(|| format!("getting {key}"))?;
    Ok(object.body.collect().await?.into_bytes().to_vec())
}

/// One sealed track of a job: participant, chunk prefix, the count its uploader sealed it with.
pub fn track(participant: &str, prefix: &str, chunk_count: u32) -> Value {
    json!({"participantId": participant, "source": {"prefix": prefix, "chunkCount": chunk_count}})
}

/// One unsealed track of a job (no `chunkCount`: the upload timeout passed before its uploader
/// sealed it).
pub fn unsealed_track(participant: &str, prefix: &str) -> Value {
    json!({"participantId": participant, "source": {"prefix": prefix}})
}

/// A job (WorkerJob JSON) writing into `riverside/processed/{room}/{recording}/`.
pub fn job(room: &str, recording: &str, tracks: Vec<Value>, profile: &str) -> Value {
    json!({
        "roomId": room,
        "recordingId": recording,
        "tracks": tracks,
        "output": {"prefix": format!("riverside/processed/{room}/{recording}/"), "profile": profile},
        "cleanup": {"deleteChunks": true},
    })
}

/// A finished worker process.
#[derive(Debug)]
pub struct WorkerRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The termination message, parsed.
    pub report: Option<Value>,
    pub report_text: String,
}

impl WorkerRun {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// `report.reason` of a failed run.
    pub fn reason(&self) -> &str {
        self.report
            .as_ref()
            .and_then(|r| r["reason"].as_str())
            .unwrap_or("")
    }

    pub fn message(&self) -> &str {
        self.report
            .as_ref()
            .and_then(|r| r["message"].as_str())
            .unwrap_or("")
    }

    /// Everything worth reading when an assertion fails.
    pub fn explain(&self) -> String {
        format!(
            "exit {:?}\nreport: {}\nstdout: {}\nstderr (last 6000 bytes): {}",
            self.status.code(),
            self.report_text,
            self.stdout,
            tail(&self.stderr, 6000)
        )
    }
}

fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Runs the worker on `job` against `bucket` of `server`, with `extra` environment on top of
/// the storage settings. Progress is reported every 200 ms so short runs show several values.
pub async fn run_worker(
    server: &S3Server,
    bucket: &str,
    job: &Value,
    extra: &[(&str, &str)],
) -> anyhow::Result<WorkerRun> {
    run_worker_with_args(server, bucket, job, extra, &[]).await
}

/// [`run_worker`] with command-line arguments; a `Value::Null` job sets no `MIXDOWN_JOB`.
pub async fn run_worker_with_args(
    server: &S3Server,
    bucket: &str,
    job: &Value,
    extra: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<WorkerRun> {
    spawn_worker(server.env(bucket), job, extra, args)?
        .wait()
        .await
}

/// A worker process started by [`spawn_worker`], not waited for yet.
pub struct Spawned {
    pub child: tokio::process::Child,
    dir: tempfile::TempDir,
    report_path: PathBuf,
    scratch: PathBuf,
}

/// Starts the worker on `job` with the storage environment `storage_env` (from
/// [`S3Server::env`] or [`S3Server::env_at`]) and `extra` on top.
pub fn spawn_worker(
    storage_env: Vec<(String, String)>,
    job: &Value,
    extra: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<Spawned> {
    let dir = tempfile::tempdir()?;
    let report_path = dir.path().join("termination-log");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch)?;
    let mut command = tokio::process::Command::new(WORKER);
    for name in [
        "MIXDOWN_RECORDING_JOB",
        "MIXDOWN_NAMESPACE",
        "MIXDOWN_JOB",
        "AWS_PROFILE",
        "RUST_LOG",
    ] {
        command.env_remove(name);
    }
    command
        .envs(storage_env)
        .env("MIXDOWN_TERMINATION_MESSAGE_PATH", &report_path)
        .env("MIXDOWN_SCRATCH_DIR", &scratch)
        .env("MIXDOWN_PROGRESS_INTERVAL_MS", "200")
        .env("RUST_LOG", "info")
        .envs(extra.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if !job.is_null() {
        command.env("MIXDOWN_JOB", job.to_string());
    }
    let child = command.spawn().context("starting the worker")?;
    Ok(Spawned {
        child,
        dir,
        report_path,
        scratch,
    })
}

impl Spawned {
    /// Waits for the worker to end (at most 10 minutes) and collects what it left.
    pub async fn wait(self) -> anyhow::Result<WorkerRun> {
        let Spawned {
            child,
            dir,
            report_path,
            scratch,
        } = self;
        let output = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output())
            .await
            .context("the worker ran for more than 10 minutes")??;
        let report_text = std::fs::read_to_string(&report_path).unwrap_or_default();
        if std::env::var_os("MIXDOWN_TEST_SHOW_LOGS").is_some() {
            eprintln!(
                "--- worker stderr ---\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // A worker killed with SIGKILL cannot clean up: only a run that ended by itself must
        // leave its scratch dir empty.
        if output.status.code().is_some() {
            let leftovers: Vec<_> = std::fs::read_dir(&scratch)?.collect();
            ensure!(
                leftovers.is_empty(),
                "the worker left files in its scratch dir: {leftovers:?}"
            );
        }
        drop(dir);
        Ok(WorkerRun {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            report: serde_json::from_str(&report_text).ok(),
            report_text,
        })
    }
}

/// What ffprobe says about a media file.
#[derive(Debug, Clone)]
pub struct Probe {
    pub duration: f64,
    pub start_time: f64,
    /// `(codec_type, codec_name, start_time)`.
    pub streams: Vec<(String, String, f64)>,
    pub format: String,
}

impl Probe {
    pub fn codec(&self, kind: &str) -> Option<&str> {
        self.streams
            .iter()
            .find(|(k, _, _)| k == kind)
            .map(|(_, c, _)| c.as_str())
    }
}

pub fn probe(path: &Path) -> anyhow::Result<Probe> {
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-of",
            "json",
            "-show_entries",
            "format=duration,start_time,format_name:stream=codec_type,codec_name,start_time",
        ])
        .arg(path)
        .output()?;
    ensure!(
        output.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout)?;
    let number = |v: &Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
    let Some(duration) = number(&json["format"]["duration"]) else {
        bail!("{} has no duration: {json}", path.display());
    };
    Ok(Probe {
        duration,
        start_time: number(&json["format"]["start_time"]).unwrap_or(f64::NAN),
        format: json["format"]["format_name"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        streams: json["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["codec_type"].as_str().unwrap_or("").to_owned(),
                    s["codec_name"].as_str().unwrap_or("").to_owned(),
                    number(&s["start_time"]).unwrap_or(f64::NAN),
                )
            })
            .collect(),
    })
}

/// Downloads `key` into `dir` and probes it.
pub async fn probe_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    dir: &Path,
) -> anyhow::Result<(Probe, PathBuf)> {
    let bytes = get(client, bucket, key).await?;
    let path = dir.join(key.rsplit('/').next().unwrap_or("output"));
    std::fs::write(&path, bytes)?;
    Ok((probe(&path)?, path))
}

/// `(size, md5)` of each video packet, the way `-f framemd5` lists them: equal lists mean the
/// video was copied, not encoded.
pub fn video_packet_hashes(path: &Path) -> anyhow::Result<Vec<String>> {
    let output = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-c", "copy", "-f", "framemd5", "pipe:1"])
        .output()?;
    ensure!(
        output.status.success(),
        "framemd5 of {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            l.split(',')
                .skip(4)
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect())
}

/// The percentages the worker logged, in order.
pub fn logged_progress(stderr: &str) -> Vec<i64> {
    stderr
        .lines()
        .filter(|l| l.contains("progress"))
        .filter_map(|l| {
            let rest = &l[l.find("percent=")? + "percent=".len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// A recording of `seconds` of `testsrc2` at `size` (VP8, as a browser records it) with the
/// sound of the lavfi source `audio` (an `aevalsrc` expression or `sine`, mono, 48 kHz) in Opus,
/// generated once into the media cache under `name`. For the mixdown's tests, which need sound
/// at known instants and known levels.
pub fn recording_with_sound(
    name: &str,
    seconds: u32,
    size: &str,
    audio: &str,
) -> anyhow::Result<PathBuf> {
    static GENERATING: Mutex<()> = Mutex::new(());
    let _guard = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
    require_ffmpeg();
    let dir = media_cache();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.webm"));
    if path.is_file() {
        return Ok(path);
    }
    let partial = dir.join(format!("{name}.{}.partial", std::process::id()));
    let args: Vec<String> = vec![
        "-hide_banner".into(),
        "-loglevel".into(),
        "error".into(),
        "-y".into(),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("testsrc2=size={size}:rate=30"),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        audio.to_owned(),
        "-t".into(),
        seconds.to_string(),
        "-c:v".into(),
        "libvpx".into(),
        "-b:v".into(),
        "300k".into(),
        "-deadline".into(),
        "realtime".into(),
        "-cpu-used".into(),
        "8".into(),
        "-g".into(),
        "60".into(),
        "-c:a".into(),
        "libopus".into(),
        "-b:a".into(),
        "64k".into(),
        "-output_ts_offset".into(),
        START_OFFSET_SECONDS.to_string(),
        "-f".into(),
        "webm".into(),
        "pipe:1".into(),
    ];
    let out = std::fs::File::create(&partial)?;
    let status = std::process::Command::new("ffmpeg")
        .args(&args)
        .stdout(out)
        .status()
        .context("running ffmpeg")?;
    ensure!(status.success(), "ffmpeg {args:?} failed: {status}");
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// Peak resident memory (`VmHWM`, KiB) of process `pid`, while it runs.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The processes whose parent is `pid`, with their command name.
pub fn children(pid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces, so split after its `)`.
            let close = stat.rfind(')')?;
            let comm = stat[stat.find('(')? + 1..close].to_owned();
            let ppid: u32 = stat[close + 1..].split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some((child, comm))
        })
        .collect()
}
