//! The worker against the straightforward approach and against ffmpeg alone, on 720p recordings
//! in one-second chunks. Prints figures; asserts nothing (see issue 3 for the targets).
//!
//! ```text
//! cargo bench -p mixdown-worker                          # 1- and 10-minute recordings
//! cargo bench -p mixdown-worker -- --minutes 1           # quick run
//! cargo bench -p mixdown-worker -- --minutes 1 --cases webm,mp4-h264
//! MIXDOWN_BENCH_MINUTES=2 cargo bench -p mixdown-worker  # same, from the environment
//! MIXDOWN_BENCH_LOG=debug cargo bench …                  # the worker's log level (default warn)
//! cargo bench -p mixdown-worker -- --minutes 1 --repeat 3  # best of 3 of each (a shared machine)
//! cargo bench -p mixdown-worker -- --link-mbit 400        # storage behind a 400 Mbit/s link
//! ```
//!
//! For each recording length and case:
//! - **worker**: `mixdown-worker` as a process against the test kit's S3 server (chunk deletion
//!   off, so the next runs find the chunks), with its peak RSS (`VmHWM`) and its ffmpeg's apart;
//! - **baseline**: the straightforward way, in this process: list, download every chunk to disk
//!   (8 at a time), concatenate, run ffmpeg on the file, upload the result with one PUT;
//! - **ffmpeg alone**: the same ffmpeg arguments on a local copy of the whole recording.
//!
//! By default the worker and the baseline reach the S3 server over loopback, where a download and
//! an upload cost the same CPU time whether they overlap or not. With `--link-mbit N` both reach it
//! through the test kit's [`Link`]: a full-duplex link of N Mbit/s each way, shared by all their
//! connections, as between a Pod and R2. Uploading the chunks beforehand bypasses it.
//!
//! Recordings are generated once (testsrc2 + sine, VP8 or H.264 at 2.5 Mbit/s, like a browser's
//! 720p camera) into the test media cache under `target/`, which takes a while for 10 minutes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use aws_sdk_s3::primitives::ByteStream;
use clap::Parser;
use common::{Spec, Video};
use futures::stream::{self, StreamExt, TryStreamExt};
use mixdown_crds::Profile;
use mixdown_testkit::link::Link;
use mixdown_testkit::s3::S3Server;
use mixdown_worker::media::{self, InputStreams};

#[derive(Debug, Parser)]
#[command(about = "Benchmark of mixdown-worker: worker vs baseline vs ffmpeg alone")]
struct Options {
    /// Recording lengths in minutes.
    #[arg(
        long,
        env = "MIXDOWN_BENCH_MINUTES",
        value_delimiter = ',',
        default_value = "1,10"
    )]
    minutes: Vec<u32>,
    /// Cases: webm (VP8 copied), mp4 (VP8 encoded to H.264), mp4-h264 (H.264 copied, audio encoded).
    #[arg(
        long,
        env = "MIXDOWN_BENCH_CASES",
        value_delimiter = ',',
        default_value = "webm,mp4,mp4-h264"
    )]
    cases: Vec<String>,
    /// Runs of each (worker, baseline, ffmpeg alone, in turn); the table shows the fastest of
    /// each, which on a machine shared with other work is the least disturbed.
    #[arg(long, env = "MIXDOWN_BENCH_REPEAT", default_value_t = 1)]
    repeat: u32,
    /// Puts a full-duplex link of this many megabits per second each way between the S3 server
    /// and both the worker and the baseline (storage across a network); none: loopback.
    #[arg(long, env = "MIXDOWN_BENCH_LINK_MBIT")]
    link_mbit: Option<u64>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Webm,
    Mp4FromVp8,
    Mp4FromH264,
}

impl Case {
    fn parse(name: &str) -> anyhow::Result<Case> {
        Ok(match name {
            "webm" => Case::Webm,
            "mp4" => Case::Mp4FromVp8,
            "mp4-h264" => Case::Mp4FromH264,
            other => anyhow::bail!("unknown case {other:?}: webm, mp4 or mp4-h264"),
        })
    }

    fn label(self) -> &'static str {
        match self {
            Case::Webm => "webm (VP8 copy)",
            Case::Mp4FromVp8 => "mp4 from VP8",
            Case::Mp4FromH264 => "mp4 from H.264",
        }
    }

    fn profile(self) -> Profile {
        match self {
            Case::Webm => Profile::Webm,
            Case::Mp4FromVp8 | Case::Mp4FromH264 => Profile::Mp4,
        }
    }

    fn spec(self, minutes: u32) -> Spec {
        let h264 = self == Case::Mp4FromH264;
        Spec {
            name: Box::leak(
                format!(
                    "bench-{}-{minutes}min-720p",
                    if h264 { "h264" } else { "vp8" }
                )
                .into_boxed_str(),
            ),
            seconds: minutes * 60,
            size: "1280x720",
            video: if h264 {
                Video::H264Realtime { kbps: 2500 }
            } else {
                Video::Vp8 { kbps: 2500 }
            },
        }
    }

    fn input(self) -> InputStreams {
        InputStreams {
            video: Some(
                if self == Case::Mp4FromH264 {
                    "h264"
                } else {
                    "vp8"
                }
                .into(),
            ),
            audio: Some("opus".into()),
        }
    }
}

/// One row of the table.
#[derive(Debug)]
struct Row {
    minutes: u32,
    case: Case,
    input_mb: f64,
    worker: Duration,
    baseline: Duration,
    alone: Duration,
    worker_rss_mb: f64,
    ffmpeg_rss_mb: f64,
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let cases = options
        .cases
        .iter()
        .map(|c| Case::parse(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    common::require_ffmpeg();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &minutes in &options.minutes {
        for &case in &cases {
            let row = runtime.block_on(bench(
                minutes,
                case,
                options.repeat.max(1),
                options.link_mbit,
            ))?;
            print_rows(std::slice::from_ref(&row), false);
            rows.push(row);
        }
    }
    println!("\n=== mixdown-worker benchmark (wall times in seconds; RSS = peak VmHWM) ===");
    match options.link_mbit {
        Some(mbit) => println!(
            "storage behind a full-duplex link of {mbit} Mbit/s ({:.1} MB/s) each way",
            mbit as f64 / 8.0
        ),
        None => println!("storage over loopback (no link: see --link-mbit)"),
    }
    print_rows(&rows, true);
    print_targets(&rows);
    Ok(())
}

async fn bench(
    minutes: u32,
    case: Case,
    repeat: u32,
    link_mbit: Option<u64>,
) -> anyhow::Result<Row> {
    let spec = case.spec(minutes);
    let generating = Instant::now();
    let recording = common::recording(&spec)?;
    eprintln!(
        "bench: {} ready ({:.0} s)",
        recording.display(),
        generating.elapsed().as_secs_f64()
    );
    let bytes = std::fs::read(&recording)?;
    let input_mb = bytes.len() as f64 / 1e6;
    let chunks = common::split(&bytes, spec.seconds);
    drop(bytes);

    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let client = server.client();
    let prefix = common::chunk_prefix("bench", "rec", "alice");
    stream::iter(chunks.iter().enumerate())
        .map(|(seq, chunk)| {
            let (client, bucket, key) = (&client, &bucket, format!("{prefix}{seq:08}.webm"));
            async move { common::put(client, bucket, &key, chunk.clone()).await }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    let count = chunks.len() as u32;
    drop(chunks);
    // From here on, the worker and the baseline reach storage through the link, if there is one.
    let link = link_mbit
        .map(|mbit| Link::start(server.endpoint(), mbit * 1_000_000 / 8))
        .transpose()?;
    let endpoint = link
        .as_ref()
        .map_or(server.endpoint(), Link::endpoint)
        .to_owned();
    let client = server.client_at(&endpoint);
    let work = tempfile::tempdir()?;

    // Worker.
    let mut job = common::job(
        "bench",
        "rec",
        vec![common::track("alice", &prefix, count)],
        profile_name(case.profile()),
    );
    job["cleanup"]["deleteChunks"] = false.into();
    let (mut worker, mut baseline, mut alone) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let (mut worker_rss, mut ffmpeg_rss) = (0, 0);
    for run in 1..=repeat {
        if repeat > 1 {
            eprintln!("bench: run {run} of {repeat}");
        }
        // The run before left its manifest, which would make this run report the recording as
        // finished without processing it.
        let manifest = format!(
            "{}manifest.json",
            job["output"]["prefix"].as_str().unwrap_or_default()
        );
        common::delete(&client, &bucket, &manifest).await?;
        let (elapsed, rss, children_rss) =
            run_worker(&server, &endpoint, &bucket, &job, work.path()).await?;
        eprintln!(
            "bench: worker {:.2} s, RSS {rss} kB (children {children_rss:?})",
            elapsed.as_secs_f64(),
        );
        worker = worker.min(elapsed);
        worker_rss = worker_rss.max(rss);
        ffmpeg_rss = ffmpeg_rss.max(children_rss.get("ffmpeg").copied().unwrap_or(0));

        // Baseline.
        let elapsed = self::baseline(&client, &bucket, &prefix, case, work.path()).await?;
        eprintln!("bench: baseline {:.2} s", elapsed.as_secs_f64());
        baseline = baseline.min(elapsed);

        // ffmpeg alone.
        let out = work
            .path()
            .join(format!("alone.{}", case.profile().extension()));
        let started = Instant::now();
        run_ffmpeg(case, &recording, &out).await?;
        let elapsed = started.elapsed();
        eprintln!("bench: ffmpeg alone {:.2} s", elapsed.as_secs_f64());
        alone = alone.min(elapsed);
    }

    Ok(Row {
        minutes,
        case,
        input_mb,
        worker,
        baseline,
        alone,
        worker_rss_mb: worker_rss as f64 / 1024.0,
        ffmpeg_rss_mb: ffmpeg_rss as f64 / 1024.0,
    })
}

fn profile_name(profile: Profile) -> &'static str {
    match profile {
        Profile::Mp4 => "mp4",
        Profile::Webm => "webm",
        Profile::Audio => "audio",
    }
}

/// Runs the worker, sampling the peak RSS of it and of its children (by program name), in kB.
async fn run_worker(
    server: &S3Server,
    endpoint: &str,
    bucket: &str,
    job: &serde_json::Value,
    dir: &Path,
) -> anyhow::Result<(Duration, u64, HashMap<String, u64>)> {
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(common::WORKER)
        .envs(server.env_at(bucket, endpoint))
        .env("MIXDOWN_JOB", job.to_string())
        .env("MIXDOWN_TERMINATION_MESSAGE_PATH", dir.join("report.json"))
        .env("MIXDOWN_SCRATCH_DIR", &scratch)
        .env(
            "RUST_LOG",
            std::env::var("MIXDOWN_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env_remove("MIXDOWN_RECORDING_JOB")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("worker pid")?;
    let mut peak = 0;
    let mut children: HashMap<String, u64> = HashMap::new();
    let status = loop {
        if let Some((_, hwm)) = vm_hwm(pid) {
            peak = peak.max(hwm);
        }
        for child_pid in child_pids(pid) {
            if let Some((name, hwm)) = vm_hwm(child_pid) {
                let entry = children.entry(name).or_default();
                *entry = (*entry).max(hwm);
            }
        }
        tokio::select! {
            status = child.wait() => break status?,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    let elapsed = started.elapsed();
    ensure!(
        status.success(),
        "the worker failed: {status}; report: {}",
        std::fs::read_to_string(dir.join("report.json")).unwrap_or_default()
    );
    Ok((elapsed, peak, children))
}

/// `(Name, VmHWM in kB)` of a process, while it runs.
fn vm_hwm(pid: u32) -> Option<(String, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let hwm = field("VmHWM:")?
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((field("Name:")?, hwm))
}

fn child_pids(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The straightforward approach: every chunk to disk, concatenate, ffmpeg on the file, one PUT.
async fn baseline(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    case: Case,
    dir: &Path,
) -> anyhow::Result<Duration> {
    let chunks_dir = dir.join("baseline-chunks");
    std::fs::create_dir_all(&chunks_dir)?;
    let started = Instant::now();
    let mut keys = common::keys(client, bucket, prefix).await?;
    keys.sort_by_key(|k| {
        k.rsplit('/')
            .next()
            .and_then(|n| n.trim_end_matches(".webm").parse::<u64>().ok())
            .unwrap_or(u64::MAX)
    });
    let files: Vec<PathBuf> = stream::iter(keys.iter().enumerate())
        .map(|(i, key)| {
            let path = chunks_dir.join(format!("{i:08}.webm"));
            async move {
                let bytes = common::get(client, bucket, key).await?;
                tokio::fs::write(&path, bytes).await?;
                anyhow::Ok(path)
            }
        })
        .buffered(8)
        .try_collect()
        .await?;
    let downloaded = started.elapsed();
    let whole = dir.join("baseline-input.webm");
    {
        let mut out = std::fs::File::create(&whole)?;
        for file in &files {
            std::io::copy(&mut std::fs::File::open(file)?, &mut out)?;
        }
    }
    let concatenated = started.elapsed();
    let output = dir.join(format!("baseline.{}", case.profile().extension()));
    run_ffmpeg(case, &whole, &output).await?;
    let encoded = started.elapsed();
    client
        .put_object()
        .bucket(bucket)
        .key(format!("baseline/alice.{}", case.profile().extension()))
        .body(ByteStream::from_path(&output).await?)
        .send()
        .await?;
    let elapsed = started.elapsed();
    eprintln!(
        "bench: baseline phases: download {:.2} s, concatenate {:.2} s, ffmpeg {:.2} s, upload {:.2} s",
        downloaded.as_secs_f64(),
        (concatenated - downloaded).as_secs_f64(),
        (encoded - concatenated).as_secs_f64(),
        (elapsed - encoded).as_secs_f64()
    );
    std::fs::remove_dir_all(&chunks_dir)?;
    std::fs::remove_file(&whole)?;
    Ok(elapsed)
}

/// ffmpeg with the worker's own arguments for `case`, reading `input` instead of stdin.
async fn run_ffmpeg(case: Case, input: &Path, output: &Path) -> anyhow::Result<()> {
    let defaults = mixdown_worker::config::Args::try_parse_from(["mixdown-worker"])?;
    let plan = media::output_plan(
        case.profile(),
        &case.input(),
        &defaults.encode_settings(),
        output,
    )
    .map_err(anyhow::Error::msg)?;
    let args = plan.args_reading(input);
    let status = tokio::process::Command::new("ffmpeg")
        .args(&args)
        .stdin(Stdio::null())
        .status()
        .await?;
    ensure!(status.success(), "ffmpeg {args:?}: {status}");
    Ok(())
}

fn print_rows(rows: &[Row], header: bool) {
    if header {
        println!(
            "{:<9} {:<17} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>11}",
            "length",
            "case",
            "input MB",
            "worker",
            "baseline",
            "ffmpeg",
            "w/baseline",
            "w/ffmpeg",
            "worker RSS",
            "ffmpeg RSS"
        );
    }
    for row in rows {
        println!(
            "{:<9} {:<17} {:>8.1} {:>9.2} {:>9.2} {:>9.2} {:>10.2} {:>10.2} {:>7.1} MB {:>8.1} MB",
            format!("{} min", row.minutes),
            row.case.label(),
            row.input_mb,
            row.worker.as_secs_f64(),
            row.baseline.as_secs_f64(),
            row.alone.as_secs_f64(),
            row.worker.as_secs_f64() / row.baseline.as_secs_f64(),
            row.worker.as_secs_f64() / row.alone.as_secs_f64(),
            row.worker_rss_mb,
            row.ffmpeg_rss_mb,
        );
    }
}

fn print_targets(rows: &[Row]) {
    println!("\nTargets (issue 3):");
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut minutes: Vec<u32> = rows.iter().map(|r| r.minutes).collect();
    minutes.dedup();
    for m in minutes {
        let find = |case: Case| rows.iter().find(|r| r.minutes == m && r.case == case);
        if let Some(r) = find(Case::Webm) {
            let ratio = r.worker.as_secs_f64() / r.baseline.as_secs_f64();
            println!(
                "  {m} min: webm worker/baseline = {ratio:.2} (target <= 0.60): {}",
                verdict(ratio <= 0.6)
            );
        }
        if let Some(r) = find(Case::Mp4FromVp8) {
            let ratio = r.worker.as_secs_f64() / r.alone.as_secs_f64();
            println!(
                "  {m} min: mp4 from VP8 worker/ffmpeg alone = {ratio:.3} (target <= 1.05): {}",
                verdict(ratio <= 1.05)
            );
        }
        if let (Some(vp8), Some(h264)) = (find(Case::Mp4FromVp8), find(Case::Mp4FromH264)) {
            let speedup = vp8.worker.as_secs_f64() / h264.worker.as_secs_f64();
            println!(
                "  {m} min: mp4 from H.264 is {speedup:.1}x faster than from VP8 (target >= 10x): {}",
                verdict(speedup >= 10.0)
            );
        }
    }
    let peak = rows.iter().map(|r| r.worker_rss_mb).fold(0.0, f64::max);
    println!(
        "  worker peak RSS (ffmpeg apart) at most {peak:.1} MB (target <= 100 MB): {}",
        verdict(peak <= 100.0)
    );
    for case in [Case::Webm, Case::Mp4FromVp8, Case::Mp4FromH264] {
        let by_length: Vec<String> = rows
            .iter()
            .filter(|r| r.case == case)
            .map(|r| format!("{} min {:.1} MB", r.minutes, r.worker_rss_mb))
            .collect();
        if by_length.len() > 1 {
            println!(
                "  worker RSS by length, {}: {}",
                case.label(),
                by_length.join(", ")
            );
        }
    }
}
