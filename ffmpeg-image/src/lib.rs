//! The Mixdown worker: turns one recording's uploaded chunks into finished files.
//!
//! It runs as the container of each processing Job (see "The worker contract" in DESIGN.md):
//! 1. read the job and the storage settings ([`config`], [`job`]);
//! 2. list every track's chunks and check them, before any work ([`chunks`]);
//! 3. process the tracks, a few at once, each streaming through its own ffmpeg into a multipart
//!    upload ([`track`], [`upload`]), reporting progress all along ([`progress`]);
//! 4. verify every output, and only then delete the chunks that went into them (an unsealed
//!    track's chunks after its first gap are kept);
//! 5. report the outputs or the one error ([`error`]) on the termination message ([`report`]).
#![forbid(unsafe_code)]

pub mod chunks;
pub mod config;
pub mod error;
pub mod job;
pub mod media;
pub mod progress;
pub mod report;
pub mod storage;
pub mod track;
pub mod upload;
pub mod webm;

use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use mixdown_crds::{RecordingOutput, Track, WorkerJob};
use tokio_util::sync::CancellationToken;

use crate::config::Args;
use crate::error::WorkerError;
use crate::progress::{Progress, Sink};
use crate::storage::{Storage, StorageSettings};
use crate::track::{Context, TrackPlan};
use crate::upload::PartPlan;

/// Tracks listed at once while checking the chunks.
const LISTING_CONCURRENCY: usize = 8;

/// Runs the job the settings describe. `cancel` stops it (a signal): uploads are aborted and
/// chunks left alone.
pub async fn run(
    args: &Args,
    cancel: CancellationToken,
) -> Result<Vec<RecordingOutput>, WorkerError> {
    let job = load_job(args)?;
    let bucket = args
        .s3_bucket
        .clone()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            WorkerError::InvalidInput(format!(
                "no bucket: set {} or --s3-bucket",
                mixdown_crds::names::env::S3_BUCKET
            ))
        })?;
    tracing::info!(
        room = %job.room_id,
        recording = %job.recording_id,
        tracks = job.tracks.len(),
        profile = job.output.profile.extension(),
        %bucket,
        "starting"
    );
    let storage = Storage::connect(&StorageSettings {
        endpoint: args.s3_endpoint.clone().filter(|e| !e.is_empty()),
        region: args.s3_region.clone(),
        bucket,
        path_style: args.s3_path_style,
        max_attempts: args.s3_max_attempts,
    })
    .await;

    let progress = Arc::new(Progress::default());
    let sink = Sink::new(args.recording_job.as_deref(), args.namespace.as_deref()).await;
    let stop_progress = CancellationToken::new();
    let reporter = tokio::spawn(progress::run(
        progress.clone(),
        sink.clone(),
        args.progress_interval(),
        stop_progress.clone(),
    ));

    let result = process_job(args, &job, storage, progress, cancel).await;

    stop_progress.cancel();
    let _ = reporter.await;
    if result.is_ok() {
        sink.report(100).await;
    }
    result
}

fn load_job(args: &Args) -> Result<WorkerJob, WorkerError> {
    let json = match (&args.job_file, &args.job) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(|err| {
            WorkerError::InvalidInput(format!(
                "cannot read the job file {}: {err}",
                path.display()
            ))
        })?,
        (None, Some(json)) => json.clone(),
        (None, None) => {
            return Err(WorkerError::InvalidInput(format!(
                "no job: set {} or pass --job-file",
                mixdown_crds::names::env::JOB
            )));
        }
    };
    job::parse(&json)
}

async fn process_job(
    args: &Args,
    job: &WorkerJob,
    storage: Storage,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> Result<Vec<RecordingOutput>, WorkerError> {
    // Every track is checked before any is processed: a gap in the last track should not cost
    // the encoding of the first.
    let plans: Vec<TrackPlan> = stream::iter(&job.tracks)
        .map(|track| plan_track(&storage, job, track))
        .buffered(LISTING_CONCURRENCY)
        .try_collect()
        .await?;
    let total: u64 = plans.iter().map(|p| chunks::total_size(&p.chunks)).sum();
    progress.set_total(total);
    tracing::info!(
        chunks = plans.iter().map(|p| p.chunks.len()).sum::<usize>(),
        bytes = total,
        "chunks checked"
    );

    let scratch_dir = args.scratch_dir();
    let scratch = tempfile::Builder::new()
        .prefix("mixdown-")
        .tempdir_in(&scratch_dir)
        .map_err(|err| {
            WorkerError::Processing(format!(
                "cannot use the scratch dir {}: {err}",
                scratch_dir.display()
            ))
        })?;
    let ctx = Context {
        storage: storage.clone(),
        profile: job.output.profile,
        encode: args.encode_settings(),
        ffmpeg: args.ffmpeg.clone(),
        ffprobe: args.ffprobe.clone(),
        scratch: scratch.path().to_owned(),
        download_ahead: args.download_ahead as usize,
        parts: PartPlan {
            part_size: args.part_size(),
            concurrency: args.upload_concurrency as usize,
        },
        abort_timeout: args.abort_timeout(),
        progress,
    };

    // One failed track stops the others: the job fails as a whole and is retried as a whole.
    let stop_tracks = cancel.child_token();
    let results: Vec<Result<RecordingOutput, WorkerError>> = stream::iter(&plans)
        .map(|plan| {
            let (ctx, stop_tracks) = (&ctx, &stop_tracks);
            async move {
                let result = track::process(ctx, plan, stop_tracks).await;
                if result.is_err() {
                    stop_tracks.cancel();
                }
                result
            }
        })
        .buffered(args.parallel_tracks as usize)
        .collect()
        .await;
    drop(scratch);

    let mut outputs = Vec::with_capacity(results.len());
    let mut cancelled = None;
    for result in results {
        match result {
            Ok(output) => outputs.push(output),
            Err(err) if err.is_cancelled() => cancelled = Some(err),
            Err(err) => return Err(err),
        }
    }
    if let Some(err) = cancelled {
        return Err(err);
    }

    if job.cleanup.delete_chunks {
        // Only the chunks in the files: an unsealed track's chunks after its gap stay, for
        // someone to look at (the report counts them).
        let keys: Vec<String> = plans
            .iter()
            .flat_map(|plan| plan.chunks.iter().map(|c| c.key.clone()))
            .collect();
        // The outputs are verified: failing here must not fail the job, whose retry would find
        // chunks missing. Leftovers are for the bucket's lifecycle rules.
        match storage.delete(&keys).await {
            Ok(()) => tracing::info!(chunks = keys.len(), "chunks deleted"),
            Err(err) => tracing::error!(error = %err, "outputs are verified but chunks remain"),
        }
    }
    Ok(outputs)
}

async fn plan_track(
    storage: &Storage,
    job: &WorkerJob,
    track: &Track,
) -> Result<TrackPlan, WorkerError> {
    let prefix = chunks::dir_prefix(&track.source.prefix);
    let listed = storage.list(&prefix).await?;
    let planned = chunks::plan(
        &track.participant_id,
        &prefix,
        listed,
        track.source.chunk_count,
    )?;
    if !track.is_sealed() {
        tracing::info!(
            participant = %track.participant_id,
            chunks = planned.chunks.len(),
            missing_chunk = planned.left_out.as_ref().map(|l| l.missing_chunk),
            chunks_kept = planned.left_out.as_ref().map_or(0, |l| l.chunks_kept),
            "track not sealed: processing its chunks from 00000000.webm up to the first one missing or empty"
        );
    }
    Ok(TrackPlan {
        participant: track.participant_id.clone(),
        chunks: planned.chunks,
        sealed: track.is_sealed(),
        left_out: planned.left_out,
        output_key: job::output_key(
            &job.output.prefix,
            &track.participant_id,
            job.output.profile,
        ),
    })
}
