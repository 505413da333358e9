//! The mixdown: every participant together in one file, made from their verified outputs in
//! storage once the tracks are done (the chunks are gone by then).
//!
//! ```text
//! track outputs ──presigned GET (one HTTP stream each)──▶ ffmpeg pass 1: audio only, loudnorm measures
//!               ──presigned GET (one HTTP stream each)──▶ ffmpeg pass 2: grid + mix + loudnorm applied
//!                                                            ▼
//!                                   scratch mixdown.mp4 (faststart) ──▶ multipart upload ──▶ HEAD + ffprobe
//! ```
//!
//! No track is downloaded whole: ffmpeg reads each output as a stream over HTTP (reconnecting
//! when storage drops it), so the worker's memory does not grow with the tracks, and ffmpeg
//! holds only its decoding buffers. Its filter graph is [`graph`]'s. The mixdown's length is the
//! end of the track that ends last (its `startOffsetMs` plus its duration). The `audio` profile's
//! mixdown is the mixed sound alone (`mixdown.m4a`).
//!
//! The caller decides what a failure means: never a failed run (see `lib.rs`).

pub mod graph;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use mixdown_crds::{OutputKind, Profile, RecordingOutput, WorkerJob};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::error::WorkerError;
use crate::media::{self, OutputInfo};
use crate::storage::Upload;
use crate::track::{Context, Finished};
use crate::upload::{self, Sent};

/// Validity of the URLs ffmpeg reads the tracks through: long enough for the slowest mixdown of
/// the longest recording (R2 and S3 accept up to 7 days).
const INPUT_URL_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Validity of the URL ffprobe verifies the mixdown through.
const PROBE_URL_VALIDITY: Duration = Duration::from_secs(900);
/// How long ffprobe may take to read one output's streams.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// Tracks probed at once.
const PROBE_CONCURRENCY: usize = 8;
/// Of the mixdown's progress (per mille), the first pass's share: it only decodes the sound.
const MEASURE_SHARE: u64 = 100;
/// The end of ffmpeg's log kept for an error message.
const LOG_KEEP_BYTES: usize = 64 * 1024;

/// What the mixdown needs beyond the tracks' [`Context`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// The font the names are drawn in.
    pub font: PathBuf,
}

/// One track as the mixdown reads it.
#[derive(Debug, Clone)]
struct Input {
    url: String,
    label: String,
    offset: f64,
    video: bool,
    audio: bool,
}

/// Makes, uploads and verifies the mixdown of `tracks` (the verified outputs, in the job's
/// order). On failure or `cancel` its multipart upload is aborted.
#[tracing::instrument(name = "mixdown", skip_all)]
pub async fn make(
    ctx: &Context,
    settings: &Settings,
    job: &WorkerJob,
    tracks: &[RecordingOutput],
    cancel: &CancellationToken,
) -> Result<Finished, WorkerError> {
    let mut open_upload = None;
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(WorkerError::Cancelled),
        result = make_inner(ctx, settings, job, tracks, &mut open_upload) => result,
    };
    if result.is_err()
        && let Some(upload) = open_upload
    {
        upload.abort(ctx.abort_timeout).await;
    }
    let path = scratch_file(ctx, job.output.profile);
    if let Err(err) = tokio::fs::remove_file(&path).await
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %err, "cannot remove the scratch file");
    }
    result
}

fn scratch_file(ctx: &Context, profile: Profile) -> PathBuf {
    let ext = match profile {
        Profile::Audio => "m4a",
        Profile::Mp4 | Profile::Webm => "mp4",
    };
    ctx.scratch
        .join(format!("{}.{ext}", mixdown_crds::MIXDOWN_NAME))
}

/// The mixdown's length: where the last track ends.
pub fn duration(job: &WorkerJob, tracks: &[RecordingOutput]) -> f64 {
    job.tracks
        .iter()
        .zip(tracks)
        .map(|(track, output)| offset_seconds(track) + output.duration_seconds)
        .fold(0.0, f64::max)
}

fn offset_seconds(track: &mixdown_crds::Track) -> f64 {
    track.start_offset_ms.unwrap_or(0).max(0) as f64 / 1000.0
}

async fn make_inner(
    ctx: &Context,
    settings: &Settings,
    job: &WorkerJob,
    tracks: &[RecordingOutput],
    open_upload: &mut Option<Upload>,
) -> Result<Finished, WorkerError> {
    let started = std::time::Instant::now();
    let key = job.output.mixdown_key();
    let video_wanted = job.output.profile != Profile::Audio;
    let duration = duration(job, tracks);
    let inputs: Vec<Input> = stream::iter(job.tracks.iter().zip(tracks))
        .map(|(track, output)| async move {
            let url = ctx
                .storage
                .presigned_get(&output.key, INPUT_URL_VALIDITY)
                .await?;
            let info = probe(ctx, &url, &output.key).await?;
            let has = |kind: &str| info.streams.iter().any(|(k, _)| k == kind);
            Ok::<_, WorkerError>(Input {
                url,
                label: track
                    .display_name
                    .clone()
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(|| track.participant_id.clone()),
                offset: offset_seconds(track),
                video: video_wanted && has("video"),
                audio: has("audio"),
            })
        })
        .buffered(PROBE_CONCURRENCY)
        .try_collect()
        .await?;
    let any_audio = inputs.iter().any(|i| i.audio);
    if !video_wanted && !any_audio {
        return Err(WorkerError::InvalidInput(
            "no track has sound, which the audio profile's mixdown is made of".into(),
        ));
    }

    let mut label_files = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let path = label_file(&ctx.scratch, i);
        tokio::fs::write(&path, &input.label).await.map_err(|err| {
            WorkerError::Processing(format!(
                "writing {} in the scratch dir: {err}",
                path.display()
            ))
        })?;
        label_files.push(path);
    }
    let tiles: Vec<graph::Tile<'_>> = inputs
        .iter()
        .zip(&label_files)
        .map(|(input, label_file)| graph::Tile {
            label_file,
            label_chars: input.label.chars().count(),
            offset: input.offset,
            video: input.video,
            audio: input.audio,
        })
        .collect();
    let urls: Vec<String> = inputs.iter().map(|i| i.url.clone()).collect();
    let redact = |text: String| {
        inputs
            .iter()
            .zip(tracks)
            .fold(text, |text, (input, output)| {
                text.replace(&input.url, &output.key)
            })
    };
    tracing::info!(
        tracks = inputs.len(),
        with_video = inputs.iter().filter(|i| i.video).count(),
        with_audio = inputs.iter().filter(|i| i.audio).count(),
        duration_seconds = duration,
        "making the mixdown"
    );

    // Pass 1: the mix's loudness.
    let loudness = if any_audio {
        let audio = graph::audio_graph(&tiles, graph::Loudness::Measure).unwrap_or_default();
        let args = graph::measure_args(&urls, &audio);
        let (ok, log) = run_ffmpeg(ctx, &args, duration, (0, MEASURE_SHARE)).await?;
        if !ok {
            return Err(WorkerError::Processing(format!(
                "measuring the mixdown's loudness: {}",
                redact(log_tail(&log))
            )));
        }
        let measured = graph::parse_measurement(&log).map_err(WorkerError::Processing)?;
        tracing::info!(
            measured_i = measured.i,
            measured_tp = measured.tp,
            measured_lra = measured.lra,
            "loudness of the mix measured"
        );
        measured.loudness()
    } else {
        graph::Loudness::Skip
    };

    // Pass 2: the file.
    let mut parts = Vec::new();
    if video_wanted {
        parts.push(graph::video_graph(&tiles, duration, &settings.font));
    }
    if let Some(audio) = graph::audio_graph(&tiles, loudness) {
        parts.push(audio);
    }
    let path = scratch_file(ctx, job.output.profile);
    let encode = graph::Encode {
        video: video_wanted,
        audio: any_audio,
        settings: &ctx.encode,
        duration,
        output: &path,
    };
    let args = graph::encode_args(&urls, &parts.join(";"), &encode);
    tracing::debug!(args = ?redact(args.join(" ")), "ffmpeg");
    let (ok, log) = run_ffmpeg(ctx, &args, duration, (MEASURE_SHARE, 1000)).await?;
    if !ok {
        return Err(WorkerError::Processing(format!(
            "making the mixdown: {}",
            redact(log_tail(&log))
        )));
    }
    ctx.progress.set_mixed(1000);
    tracing::info!(
        elapsed_seconds = started.elapsed().as_secs_f64(),
        "mixdown encoded"
    );

    // An upload of the mixdown an earlier run was killed in the middle of.
    ctx.storage.abort_uploads_of(&key, ctx.abort_timeout).await;
    let content_type = if video_wanted {
        "video/mp4"
    } else {
        "audio/mp4"
    };
    let upload = ctx.storage.create_upload(&key, content_type).await?;
    *open_upload = Some(upload.clone());
    let size = upload::finish(&upload, &path, ctx.parts, Sent::new()).await?;
    *open_upload = None;

    let mut expected = Vec::new();
    if video_wanted {
        expected.push(("video", "h264".to_owned()));
    }
    if any_audio {
        expected.push(("audio", "aac".to_owned()));
    }
    let (measured, e_tag) = verify(ctx, &key, size, &expected, duration).await?;
    tracing::info!(
        %key,
        size,
        duration_seconds = measured,
        elapsed_seconds = started.elapsed().as_secs_f64(),
        "mixdown uploaded and verified"
    );
    Ok(Finished {
        output: RecordingOutput {
            kind: OutputKind::Mixdown,
            participant_id: String::new(),
            key,
            size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
            duration_seconds: measured,
            sealed: true,
            chunks: None,
            left_out: None,
        },
        e_tag,
    })
}

/// Runs ffmpeg with `-progress pipe:1`, moving the mixdown's progress from `range.0` to
/// `range.1` per mille as its output time goes to `duration`. Returns whether it succeeded and
/// the end of its log.
async fn run_ffmpeg(
    ctx: &Context,
    args: &[String],
    duration: f64,
    range: (u64, u64),
) -> Result<(bool, String), WorkerError> {
    let mut child = Command::new(&ctx.ffmpeg)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            WorkerError::Processing(format!("cannot start {}: {err}", ctx.ffmpeg.display()))
        })?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(WorkerError::Processing("ffmpeg's pipes are missing".into()));
    };
    let progress = async {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(seconds) = graph::progress_seconds(&line)
                && duration > 0.0
            {
                let done = (seconds / duration).clamp(0.0, 1.0);
                let permille = range.0 + ((range.1 - range.0) as f64 * done) as u64;
                ctx.progress.set_mixed(permille);
            }
        }
    };
    let log = async {
        // The end of the log: the measurement is printed last, errors come before it stops.
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * LOG_KEEP_BYTES {
                kept.drain(..kept.len() - LOG_KEEP_BYTES);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    };
    let ((), log, status) = tokio::join!(progress, log, child.wait());
    let status =
        status.map_err(|err| WorkerError::Processing(format!("waiting for ffmpeg: {err}")))?;
    if !status.success() {
        tracing::warn!(%status, "ffmpeg failed on the mixdown");
    }
    Ok((
        status.success(),
        format!("ffmpeg exited with {status}\n{log}"),
    ))
}

/// The last lines of ffmpeg's log worth reading, on one line.
fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let from = lines.len().saturating_sub(8);
    lines[from..]
        .iter()
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// ffprobe's streams and duration of the object behind `url`.
async fn probe(ctx: &Context, url: &str, key: &str) -> Result<OutputInfo, WorkerError> {
    let probe = Command::new(&ctx.ffprobe)
        .args(media::output_probe_args(url))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| WorkerError::Processing(format!("ffprobe did not finish reading {key}")))?
        .map_err(|err| WorkerError::Processing(format!("running ffprobe: {err}")))?;
    if !output.status.success() {
        return Err(WorkerError::Processing(format!(
            "ffprobe cannot read the track output {key}: {}",
            String::from_utf8_lossy(&output.stderr)
                .trim()
                .replace(url, key)
        )));
    }
    OutputInfo::from_ffprobe_json(&String::from_utf8_lossy(&output.stdout))
        .map_err(WorkerError::Processing)
}

/// The stored mixdown: its size (HEAD), its codecs and its duration (ffprobe through a presigned
/// URL), within [`media::DURATION_TOLERANCE_SECONDS`] of the planned length. Returns the
/// measured duration and the ETag.
async fn verify(
    ctx: &Context,
    key: &str,
    size: u64,
    expected: &[(&'static str, String)],
    duration: f64,
) -> Result<(f64, String), WorkerError> {
    let failed = |detail: String| WorkerError::Verification {
        key: key.to_owned(),
        detail,
    };
    let head = ctx.storage.head(key).await?.ok_or_else(|| {
        failed("storage has no such object right after its upload completed".into())
    })?;
    if head.size != size {
        return Err(failed(format!(
            "storage holds {} bytes, {size} were uploaded",
            head.size
        )));
    }
    let url = ctx.storage.presigned_get(key, PROBE_URL_VALIDITY).await?;
    let info = probe(ctx, &url, key)
        .await
        .map_err(|err| failed(err.to_string()))?;
    let measured = media::verify_output(&info, expected, duration).map_err(failed)?;
    Ok((measured, head.e_tag))
}

/// The file holding the name of track `index`, in this mixdown's scratch dir.
fn label_file(scratch: &Path, index: usize) -> PathBuf {
    scratch.join(format!("label-{index}.txt"))
}
