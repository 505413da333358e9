//! One track, end to end: chunks from storage → ffmpeg → scratch file → multipart upload →
//! verification. Memory stays bounded whatever the recording's length: at most
//! `download_ahead` chunks wait in memory, and the upload holds `concurrency` parts.
//!
//! ```text
//! GET chunk 0..n (download_ahead at once, in order) ──▶ ffmpeg stdin ──▶ scratch file ──▶ UploadPart…
//!                                                  └─▶ webm::Timing (packet timing of the input)
//! ```
//!
//! The codecs are read from the first chunk's header before ffmpeg starts (H.264 is copied into
//! MP4, anything else is encoded); ffprobe reads the first chunks when the header does not parse.
//! As the bytes go to ffmpeg, [`webm::Timing`] reads the cluster and block timestamps in them:
//! the input's duration, which the output is verified against. ffmpeg's log is read as it comes:
//! a demuxer or decoder error means a chunk is unreadable, and the byte position in the message
//! names the chunk.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use mixdown_crds::{LeftOut, Profile, RecordingOutput};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio_util::sync::CancellationToken;

use crate::chunks::{self, Chunk};
use crate::error::WorkerError;
use crate::media::{self, EncodeSettings, InputStreams, OutputInfo, Verdict};
use crate::progress::Progress;
use crate::storage::{Storage, Upload};
use crate::upload::{self, PartPlan, Sent};
use crate::webm;

/// When the header does not parse, the first chunks go to ffprobe until they hold this much…
const PROBE_MAX_BYTES: usize = 1024 * 1024;
/// …or this many chunks.
const PROBE_MAX_CHUNKS: usize = 8;
/// Lines of ffmpeg's log kept for an error message.
const LOG_TAIL_LINES: usize = 8;
/// How long the ffprobe of an uploaded output may take.
const OUTPUT_PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// Validity of the presigned URL ffprobe reads an output through.
const PRESIGNED_URL_VALIDITY: Duration = Duration::from_secs(900);

/// What every track of a job shares.
#[derive(Debug, Clone)]
pub struct Context {
    pub storage: Storage,
    pub profile: Profile,
    pub encode: EncodeSettings,
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    /// This run's own directory in the scratch dir.
    pub scratch: PathBuf,
    pub download_ahead: usize,
    pub parts: PartPlan,
    pub abort_timeout: Duration,
    pub progress: Arc<Progress>,
}

/// One track, checked and ready: its chunks in order and its output key.
#[derive(Debug, Clone)]
pub struct TrackPlan {
    pub participant: String,
    /// The chunks to feed, and the only ones deleted once every output is verified: for an
    /// unsealed track its run from chunk 0, never the chunks left out after it.
    pub chunks: Vec<Chunk>,
    /// Whether the uploader sealed the track (the job gave its `chunkCount`).
    pub sealed: bool,
    /// What an unsealed track left out of its file ([`chunks::TrackChunks::left_out`]).
    pub left_out: Option<LeftOut>,
    pub output_key: String,
}

/// A track's output, uploaded and verified.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The report's entry.
    pub output: RecordingOutput,
    /// The output's ETag, as storage answered the HEAD that verified it (for the manifest).
    pub e_tag: String,
}

/// Processes one track. On any failure (or `cancel`), the multipart upload is aborted and the
/// chunks are left alone.
#[tracing::instrument(name = "track", skip_all, fields(participant = %plan.participant))]
pub async fn process(
    ctx: &Context,
    plan: &TrackPlan,
    cancel: &CancellationToken,
) -> Result<Finished, WorkerError> {
    let mut open_upload = None;
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(WorkerError::Cancelled),
        result = process_inner(ctx, plan, &mut open_upload) => result,
    };
    if let Err(err) = &result {
        if !err.is_cancelled() {
            tracing::error!(error = %err, "track failed");
        }
        if let Some(upload) = open_upload {
            upload.abort(ctx.abort_timeout).await;
        }
    }
    result
}

async fn process_inner(
    ctx: &Context,
    plan: &TrackPlan,
    open_upload: &mut Option<Upload>,
) -> Result<Finished, WorkerError> {
    let started = std::time::Instant::now();
    let mut downloads = download(ctx, &plan.chunks);
    let first = downloads
        .next()
        .await
        .ok_or_else(|| WorkerError::Processing("no chunk to download".into()))??;
    let mut head_bytes = first.len();
    let mut head = vec![first];
    // The first chunk's header names the codecs; ffprobe is for headers that do not parse.
    let input = match webm::codecs(&head[0]) {
        Some(input) => input,
        None => {
            while head.len() < PROBE_MAX_CHUNKS && head_bytes < PROBE_MAX_BYTES {
                let Some(chunk) = downloads.next().await else {
                    break;
                };
                let chunk = chunk?;
                head_bytes += chunk.len();
                head.push(chunk);
            }
            probe_input(ctx, plan, &head).await?
        }
    };
    let path = ctx
        .scratch
        .join(format!("{}.{}", plan.participant, ctx.profile.extension()));
    let output =
        media::output_plan(ctx.profile, &input, &ctx.encode, &path).map_err(|message| {
            WorkerError::InvalidInput(format!("track {}: {message}", plan.participant))
        })?;
    tracing::info!(
        video = input.video.as_deref().unwrap_or("none"),
        audio = input.audio.as_deref().unwrap_or("none"),
        copies_video = output.copies_video,
        chunks = plan.chunks.len(),
        bytes = chunks::total_size(&plan.chunks),
        "processing"
    );
    tracing::debug!(args = ?output.args, "ffmpeg");

    if output.upload_while_writing {
        *open_upload = Some(
            ctx.storage
                .create_upload(&plan.output_key, output.content_type)
                .await?,
        );
    }

    let mut ffmpeg = spawn(&ctx.ffmpeg, &output.args, false)?;
    let contexts = input.log_contexts();
    let feeding = AtomicUsize::new(0);
    let writer_done = CancellationToken::new();
    let (Some(ffmpeg_in), Some(ffmpeg_err)) = (ffmpeg.stdin.take(), ffmpeg.stderr.take()) else {
        return Err(WorkerError::Processing("ffmpeg's pipes are missing".into()));
    };

    let early_upload = open_upload.clone();
    let ((fed_all, timing), ffmpeg_log, ffmpeg_status, sent) = tokio::try_join!(
        feed(ctx, plan, head, downloads, ffmpeg_in, &feeding),
        watch_log("ffmpeg", ffmpeg_err, &contexts, plan, &feeding),
        async {
            let status = wait(&mut ffmpeg, "ffmpeg").await;
            writer_done.cancel();
            status
        },
        async {
            match &early_upload {
                Some(upload) => {
                    upload::upload_while_writing(upload, &path, ctx.parts, writer_done.clone())
                        .await
                }
                None => Ok(Sent::new()),
            }
        },
    )?;

    if !ffmpeg_status.success() {
        return Err(WorkerError::Processing(format!(
            "ffmpeg exited with {ffmpeg_status} on track {}: {}",
            plan.participant,
            ffmpeg_log.join(" | ")
        )));
    }
    if !fed_all {
        let at = &plan.chunks[feeding.load(Ordering::Relaxed).min(plan.chunks.len() - 1)];
        return Err(WorkerError::Processing(format!(
            "ffmpeg stopped reading track {} at chunk {} before the end",
            plan.participant, at.name
        )));
    }
    if timing.resyncs() > 0 {
        tracing::warn!(
            resyncs = timing.resyncs(),
            "the recording's timing was read past damaged data"
        );
    }
    let input_duration = timing
        .duration()
        .ok_or_else(|| WorkerError::UnreadableChunk {
            participant: plan.participant.clone(),
            chunk: plan.chunks[0].name.clone(),
            detail: "the recording holds no audio or video packets".into(),
        })?;
    tracing::info!(
        input_seconds = input_duration,
        packets = timing.packets(),
        elapsed_seconds = started.elapsed().as_secs_f64(),
        "ffmpeg finished"
    );

    let upload = match open_upload.clone() {
        Some(upload) => upload,
        None => {
            let upload = ctx
                .storage
                .create_upload(&plan.output_key, output.content_type)
                .await?;
            *open_upload = Some(upload.clone());
            upload
        }
    };
    let size = upload::finish(&upload, &path, ctx.parts, sent).await?;
    tracing::debug!(
        elapsed_seconds = started.elapsed().as_secs_f64(),
        "upload completed"
    );
    // Completed: nothing to abort any more. The scratch copy is no longer needed either.
    *open_upload = None;
    if let Err(err) = tokio::fs::remove_file(&path).await {
        tracing::warn!(path = %path.display(), error = %err, "cannot remove the scratch file");
    }

    let (duration, e_tag) = verify(ctx, plan, size, &output.expected, input_duration).await?;
    tracing::info!(
        key = %plan.output_key,
        size,
        duration_seconds = duration,
        elapsed_seconds = started.elapsed().as_secs_f64(),
        "output uploaded and verified"
    );
    let output = RecordingOutput {
        kind: Default::default(),
        participant_id: plan.participant.clone(),
        key: plan.output_key.clone(),
        size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
        duration_seconds: duration,
        sealed: plan.sealed,
        chunks: Some(u32::try_from(plan.chunks.len()).unwrap_or(u32::MAX)),
        left_out: plan.left_out.clone(),
    };
    // A file made without its uploader's seal may be shorter than the recording: worth a line
    // in the log whether or not chunks were left out.
    if let Some(note) = output.unsealed_note() {
        tracing::warn!(
            missing_chunk = output.left_out.as_ref().map(|l| l.missing_chunk),
            chunks_kept = output.left_out.as_ref().map_or(0, |l| l.chunks_kept),
            "{note}"
        );
    }
    Ok(Finished { output, e_tag })
}

/// The chunks' bytes, in order, with up to `download_ahead` downloads running at once. Each
/// download is a task of its own, so downloads go on while the feeder waits on ffmpeg.
fn download<'a>(
    ctx: &'a Context,
    chunks: &'a [Chunk],
) -> BoxStream<'a, Result<Bytes, WorkerError>> {
    stream::iter(chunks)
        .map(move |chunk| {
            let storage = ctx.storage.clone();
            let (key, size) = (chunk.key.clone(), chunk.size);
            AbortOnDrop(tokio::spawn(async move { storage.get(&key, size).await }))
        })
        .buffered(ctx.download_ahead)
        .map(|joined| {
            joined.unwrap_or_else(|err| {
                Err(WorkerError::Processing(format!(
                    "a download task failed: {err}"
                )))
            })
        })
        .boxed()
}

/// A spawned task that is cancelled when its handle is dropped (a failed track stops its
/// downloads).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Feeds the chunks to ffmpeg in order, reading their timing on the way. Returns whether every
/// chunk went in (ffmpeg may stop reading early when it fails; its exit status then says why) and
/// the timing.
///
/// A chunk holding exactly the bytes of the one before it is bad input: MediaRecorder never makes
/// two equal chunks, so it is one chunk stored under two numbers (a retried upload sent to the
/// wrong key), and the recording would have a hole where the real chunk belongs.
///
/// So is a chunk whose packet times do not follow the chunks before it ([`webm::ChunkSpan::check`]:
/// back by more than a second, or on by more than ten): a chunk out of order, stored again under a
/// later number, or from another recording. ffmpeg would carry on past it and make a file with a
/// hole and times that go backwards. Each chunk's timing is read before ffmpeg gets the chunk, so
/// the chunk is named before ffmpeg can complain about what follows from it.
async fn feed(
    ctx: &Context,
    plan: &TrackPlan,
    head: Vec<Bytes>,
    rest: BoxStream<'_, Result<Bytes, WorkerError>>,
    mut ffmpeg_in: ChildStdin,
    feeding: &AtomicUsize,
) -> Result<(bool, webm::Timing), WorkerError> {
    let mut timing = webm::Timing::new();
    let mut chunks = stream::iter(head.into_iter().map(Ok)).chain(rest);
    let mut index = 0;
    let mut previous: Option<Bytes> = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if let Some(before) = previous.replace(chunk.clone())
            && before == chunk
            && index > 0
            && index < plan.chunks.len()
        {
            return Err(WorkerError::UnreadableChunk {
                participant: plan.participant.clone(),
                chunk: plan.chunks[index].name.clone(),
                detail: format!(
                    "chunk {} of {} holds exactly the bytes of chunk {} (one chunk stored under two numbers); the real {} is missing",
                    plan.chunks[index].name,
                    plan.participant,
                    plan.chunks[index - 1].name,
                    plan.chunks[index].name
                ),
            });
        }
        feeding.store(index, Ordering::Relaxed);
        // Microseconds a chunk: only element headers and the first bytes of blocks are read.
        let span = timing.feed_chunk(&chunk);
        if let Err(discontinuity) = span.check() {
            let name = &plan.chunks[index.min(plan.chunks.len() - 1)].name;
            return Err(WorkerError::UnreadableChunk {
                participant: plan.participant.clone(),
                chunk: name.clone(),
                detail: format!(
                    "chunk {name} of {} is out of place (out of order, stored again, or from another recording): {discontinuity}",
                    plan.participant
                ),
            });
        }
        match ffmpeg_in.write_all(&chunk).await {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok((false, timing));
            }
            Err(err) => return Err(WorkerError::Processing(format!("writing to ffmpeg: {err}"))),
        }
        ctx.progress.add(chunk.len() as u64);
        index += 1;
    }
    // Dropping the pipe tells ffmpeg the recording is over.
    Ok((true, timing))
}

/// Reads a program's log as it comes: returns the last lines, or the first input error as
/// [`WorkerError::UnreadableChunk`].
async fn watch_log(
    program: &'static str,
    stderr: impl AsyncRead + Unpin,
    contexts: &[String],
    plan: &TrackPlan,
    feeding: &AtomicUsize,
) -> Result<Vec<String>, WorkerError> {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut tail = VecDeque::with_capacity(LOG_TAIL_LINES);
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|err| WorkerError::Processing(format!("reading {program}'s log: {err}")))?;
        if read == 0 {
            return Ok(tail.into());
        }
        let text = String::from_utf8_lossy(&line);
        let parsed = media::parse_log_line(&text);
        if parsed.message.is_empty() {
            continue;
        }
        match media::classify(&parsed, contexts) {
            Verdict::InputError => return Err(unreadable(plan, parsed.message, feeding)),
            Verdict::Error => tracing::warn!(program, "{}", parsed.message),
            Verdict::Note => tracing::debug!(program, "{}", parsed.message),
        }
        if tail.len() == LOG_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(parsed.message.chars().take(300).collect::<String>());
    }
}

/// The error for a demuxer or decoder complaint: the chunk its byte position falls in (ffmpeg's
/// positions are offsets in the bytes fed to its stdin, where each chunk's range is known) or,
/// for messages without one (a decoder's), the chunk being fed: ffmpeg reads ahead of what it
/// decodes, so the damage is in that chunk or one shortly before it ("at or before").
fn unreadable(plan: &TrackPlan, message: &str, feeding: &AtomicUsize) -> WorkerError {
    let located = media::byte_position(message)
        .and_then(|position| Some((position, chunks::chunk_at(&plan.chunks, position)?)));
    let (chunk, detail) = match located {
        Some((position, chunk)) => (
            chunk.name.clone(),
            format!(
                "chunk {} is unreadable (byte {} of the chunk): ffmpeg: {message}",
                chunk.name,
                position.saturating_sub(chunk.offset)
            ),
        ),
        None => {
            let index = feeding.load(Ordering::Relaxed).min(plan.chunks.len() - 1);
            let name = plan.chunks[index].name.clone();
            let detail = format!(
                "a chunk at or before {name} is unreadable (ffmpeg names no byte position; it was being given {name}, and reads a little ahead of what it decodes): ffmpeg: {message}"
            );
            (name, detail)
        }
    };
    WorkerError::UnreadableChunk {
        participant: plan.participant.clone(),
        chunk,
        detail,
    }
}

fn spawn(program: &Path, args: &[String], stdout: bool) -> Result<Child, WorkerError> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(if stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            WorkerError::Processing(format!("cannot start {}: {err}", program.display()))
        })
}

async fn wait(child: &mut Child, program: &str) -> Result<ExitStatus, WorkerError> {
    child
        .wait()
        .await
        .map_err(|err| WorkerError::Processing(format!("waiting for {program}: {err}")))
}

/// The codecs of the recording, from its first chunks. A first chunk ffprobe cannot read is bad
/// input: it holds the header every other chunk depends on.
async fn probe_input(
    ctx: &Context,
    plan: &TrackPlan,
    head: &[Bytes],
) -> Result<InputStreams, WorkerError> {
    let mut child = spawn(&ctx.ffprobe, &media::input_probe_args(), true)?;
    let stdin = child.stdin.take();
    let write = async move {
        if let Some(mut stdin) = stdin {
            for chunk in head {
                // ffprobe stops reading once it knows the streams.
                if stdin.write_all(chunk).await.is_err() {
                    break;
                }
            }
        }
    };
    let ((), output) = tokio::join!(write, child.wait_with_output());
    let output =
        output.map_err(|err| WorkerError::Processing(format!("running ffprobe: {err}")))?;
    let first = &plan.chunks[0].name;
    let unreadable = |detail: String| WorkerError::UnreadableChunk {
        participant: plan.participant.clone(),
        chunk: first.clone(),
        detail,
    };
    if !output.status.success() {
        return Err(unreadable(format!(
            "chunk {first} (the recording's header) is unreadable: ffprobe: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let input = InputStreams::from_ffprobe_json(&String::from_utf8_lossy(&output.stdout))
        .map_err(WorkerError::Processing)?;
    if input.video.is_none() && input.audio.is_none() {
        return Err(unreadable(format!(
            "chunk {first} (the recording's header) declares no audio or video stream"
        )));
    }
    Ok(input)
}

/// Checks the uploaded object: its size as stored, and what ffprobe reads from it. Returns the
/// output's duration and its ETag.
///
/// ffprobe reads the object over the network like any client: when it cannot, storage may have
/// gone away rather than the file be broken. So a failed ffprobe is followed by a HEAD (with the
/// SDK's retries): if storage does not answer, the failure is storage's
/// ([`WorkerError::Storage`], transient, saying it was unreachable); if it answers, ffprobe gets
/// a second try, and only a second failure with storage reachable fails the verification.
async fn verify(
    ctx: &Context,
    plan: &TrackPlan,
    size: u64,
    expected: &[(&'static str, String)],
    input_duration: f64,
) -> Result<(f64, String), WorkerError> {
    let key = &plan.output_key;
    let failed = |detail: String| WorkerError::Verification {
        key: key.clone(),
        detail,
    };
    let Some(head) = ctx.storage.head(key).await? else {
        return Err(failed(
            "storage has no such object right after its upload completed".into(),
        ));
    };
    if head.size != size {
        return Err(failed(format!(
            "storage holds {} bytes, {size} were uploaded",
            head.size
        )));
    }
    let mut probed = probe_output(ctx, key).await?;
    if let Err(first) = &probed {
        tracing::warn!(key = %key, error = %first, "ffprobe cannot read the output; checking that storage is reachable");
        match ctx.storage.head(key).await {
            Ok(Some(again)) if again == head => probed = probe_output(ctx, key).await?,
            Ok(Some(again)) => {
                return Err(failed(format!(
                    "the object changed while it was verified: {} bytes (ETag {}), then {} bytes (ETag {})",
                    head.size, head.e_tag, again.size, again.e_tag
                )));
            }
            Ok(None) => {
                return Err(failed(
                    "the object disappeared while it was verified".into(),
                ));
            }
            Err(WorkerError::Storage(detail)) => {
                return Err(WorkerError::Storage(format!(
                    "verifying {key}: storage was unreachable (ffprobe could not read the object: {first}; then {detail})"
                )));
            }
            Err(other) => return Err(other),
        }
    }
    let stdout = probed.map_err(|detail| failed(format!("ffprobe cannot read it: {detail}")))?;
    let info = OutputInfo::from_ffprobe_json(&stdout).map_err(failed)?;
    let duration = media::verify_output(&info, expected, input_duration).map_err(failed)?;
    Ok((duration, head.e_tag))
}

/// ffprobe's JSON about the object `key`, read through a presigned URL; `Err` holds ffprobe's
/// complaint (the URL's signature replaced by the key).
async fn probe_output(ctx: &Context, key: &str) -> Result<Result<String, String>, WorkerError> {
    let url = ctx
        .storage
        .presigned_get(key, PRESIGNED_URL_VALIDITY)
        .await?;
    let probe = Command::new(&ctx.ffprobe)
        .args(media::output_probe_args(&url))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let Ok(output) = tokio::time::timeout(OUTPUT_PROBE_TIMEOUT, probe).await else {
        return Ok(Err("ffprobe did not finish reading it in time".into()));
    };
    let output =
        output.map_err(|err| WorkerError::Processing(format!("running ffprobe: {err}")))?;
    if output.status.success() {
        Ok(Ok(String::from_utf8_lossy(&output.stdout).into_owned()))
    } else {
        // ffprobe names the URL; its signature stays out of logs and reports.
        Ok(Err(String::from_utf8_lossy(&output.stderr)
            .trim()
            .replace(&url, key)))
    }
}
