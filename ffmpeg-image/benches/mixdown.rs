//! The mixdown through the worker against ffmpeg alone running the same two passes on local
//! files. Prints figures; asserts nothing (target: the worker within 1.1× of ffmpeg alone).
//!
//! ```text
//! cargo bench -p mixdown-worker --bench mixdown                      # 2 and 4 tracks of 1 minute, 720p
//! cargo bench -p mixdown-worker --bench mixdown -- --tracks 2 --seconds 30
//! ```
//!
//! Each participant is the same 720p VP8 recording (testsrc2 and a sine, 2.5 Mbit/s, one-second
//! chunks), started 1 s after the one before. Their tracks are made once with the `webm` profile
//! (copied, so this setup is quick) and the manifest of that run kept; each measured worker run
//! starts from that manifest, so it makes only the mixdown: the HEADs of the tracks, ffprobe of
//! each over HTTP, the loudness pass, the encode (libx264 veryfast, CRF 23, AAC), the multipart
//! upload and the verification, everything a user waits for. **ffmpeg alone** is the same two
//! ffmpeg runs (the same filter graph, from `mixdown::graph`) on local copies of the tracks,
//! writing to a local file and uploading nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::{Spec, Video};
use mixdown_testkit::s3::S3Server;
use mixdown_worker::media::EncodeSettings;
use mixdown_worker::mixdown::graph;
use serde_json::{Value, json};

/// `--tracks 2,4 --seconds 60`; anything else on the command line (cargo's `--bench`, the other
/// benchmark's options) is ignored.
fn options() -> (Vec<usize>, u32) {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let tracks = value("--tracks")
        .map(|v| v.split(',').filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_else(|| vec![2, 4]);
    let seconds = value("--seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    (tracks, seconds)
}

fn main() -> anyhow::Result<()> {
    let (tracks, seconds) = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for n in tracks {
        rows.push(runtime.block_on(bench(n, seconds))?);
    }
    println!(
        "\n=== mixdown benchmark ({seconds} s tracks, 720p VP8 in, 1280x720 H.264 out; wall seconds) ==="
    );
    println!(
        "{:>6} | {:>9} | {:>12} | {:>6} | {:>10} | {:>10}",
        "tracks", "worker", "ffmpeg alone", "ratio", "worker RSS", "ffmpeg RSS"
    );
    for row in &rows {
        println!(
            "{:>6} | {:>9.2} | {:>12.2} | {:>5.2}× | {:>7} MB | {:>7} MB",
            row.tracks,
            row.worker.as_secs_f64(),
            row.alone.as_secs_f64(),
            row.worker.as_secs_f64() / row.alone.as_secs_f64(),
            row.worker_rss_kb / 1024,
            row.ffmpeg_rss_kb / 1024,
        );
    }
    println!("target: ratio ≤ 1.1×");
    Ok(())
}

struct Row {
    tracks: usize,
    worker: Duration,
    alone: Duration,
    worker_rss_kb: u64,
    ffmpeg_rss_kb: u64,
}

async fn bench(n: usize, seconds: u32) -> anyhow::Result<Row> {
    let spec = Spec {
        name: Box::leak(format!("bench-vp8-{seconds}s-720p-mix").into_boxed_str()),
        seconds,
        size: "1280x720",
        video: Video::Vp8 { kbps: 2500 },
    };
    let generating = Instant::now();
    let chunks = common::chunks(&spec)?;
    eprintln!(
        "bench: recording ready ({:.0} s)",
        generating.elapsed().as_secs_f64()
    );
    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let client = server.client();
    let mut tracks = Vec::new();
    for i in 0..n {
        let id = format!("p{i}");
        let prefix = common::chunk_prefix("bench", "mix", &id);
        common::put_chunks(&client, &bucket, &prefix, &chunks).await?;
        let mut track = common::track(&id, &prefix, chunks.len() as u32);
        track["startOffsetMs"] = json!(i * 1000);
        track["displayName"] = json!(format!("Participant {i}"));
        tracks.push(track);
    }
    let mut job = common::job("bench", "mix", tracks, "webm");
    job["cleanup"]["deleteChunks"] = false.into();
    let prefix = job["output"]["prefix"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let manifest_key = format!("{prefix}manifest.json");

    // The tracks, once.
    let run = common::run_worker(&server, &bucket, &job, &[]).await?;
    ensure!(run.code() == Some(0), "tracks: {}", run.explain());
    let tracks_manifest = common::get(&client, &bucket, &manifest_key).await?;
    let outputs: Vec<Value> = run.report.as_ref().context("report")?["outputs"]
        .as_array()
        .cloned()
        .unwrap_or_default();

    // The mixdown through the worker, from the manifest of the tracks.
    job["composite"] = true.into();
    common::put(&client, &bucket, &manifest_key, tracks_manifest.clone()).await?;
    let started = Instant::now();
    let mut worker = common::spawn_worker(server.env(&bucket), &job, &[("RUST_LOG", "warn")], &[])?;
    let pid = worker.child.id().context("pid")?;
    let (mut worker_rss, mut ffmpeg_rss) = (0, 0);
    loop {
        tokio::select! {
            _ = worker.child.wait() => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                worker_rss = worker_rss.max(common::peak_rss_kib(pid).unwrap_or(0));
                for (child, name) in common::children(pid) {
                    if name == "ffmpeg" {
                        ffmpeg_rss = ffmpeg_rss.max(common::peak_rss_kib(child).unwrap_or(0));
                    }
                }
            }
        }
    }
    let worker_time = started.elapsed();
    let run = worker.wait().await?;
    ensure!(run.code() == Some(0), "mixdown: {}", run.explain());
    let report = run.report.as_ref().context("report")?;
    ensure!(
        report["outputs"][0]["kind"] == "mixdown",
        "no mixdown: {}",
        run.explain()
    );
    eprintln!(
        "bench: {n} tracks, worker {:.2} s",
        worker_time.as_secs_f64()
    );

    // ffmpeg alone: the same passes on local files.
    let work = tempfile::tempdir()?;
    let mut inputs = Vec::new();
    let mut labels = Vec::new();
    for (i, output) in outputs.iter().enumerate() {
        let key = output["key"].as_str().unwrap_or_default();
        let path = work.path().join(format!("p{i}.webm"));
        std::fs::write(&path, common::get(&client, &bucket, key).await?)?;
        inputs.push(path.to_string_lossy().into_owned());
        let label = work.path().join(format!("label-{i}.txt"));
        std::fs::write(&label, format!("Participant {i}"))?;
        labels.push(label);
    }
    let duration = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| i as f64 + o["durationSeconds"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    let tiles: Vec<graph::Tile<'_>> = labels
        .iter()
        .enumerate()
        .map(|(i, label)| graph::Tile {
            label_file: label,
            label_chars: 13,
            offset: i as f64,
            video: true,
            audio: true,
        })
        .collect();
    let settings = EncodeSettings {
        video_preset: "veryfast".into(),
        video_crf: 23,
        audio_bitrate: "128k".into(),
    };
    let font = Path::new(mixdown_worker::config::DEFAULT_FONT);
    let out = work.path().join("mixdown.mp4");
    let started = Instant::now();
    let audio = graph::audio_graph(&tiles, graph::Loudness::Measure).context("audio")?;
    let measure = ffmpeg(&graph::measure_args(&inputs, &audio))?;
    let measured = graph::parse_measurement(&measure).map_err(anyhow::Error::msg)?;
    let full = format!(
        "{};{}",
        graph::video_graph(&tiles, duration, font),
        graph::audio_graph(&tiles, measured.loudness()).context("audio")?
    );
    ffmpeg(&graph::encode_args(
        &inputs,
        &full,
        &graph::Encode {
            video: true,
            audio: true,
            settings: &settings,
            duration,
            output: &out,
        },
    ))?;
    let alone = started.elapsed();
    eprintln!(
        "bench: {n} tracks, ffmpeg alone {:.2} s",
        alone.as_secs_f64()
    );
    Ok(Row {
        tracks: n,
        worker: worker_time,
        alone,
        worker_rss_kb: worker_rss,
        ffmpeg_rss_kb: ffmpeg_rss,
    })
}

/// Runs ffmpeg; returns its log.
fn ffmpeg(args: &[String]) -> anyhow::Result<String> {
    let output = std::process::Command::new("ffmpeg")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(output.status.success(), "ffmpeg failed: {log}");
    Ok(log)
}
