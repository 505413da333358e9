//! The Mixdown worker: turns one recording's uploaded chunks into finished files.
//!
//! It runs as the container of each processing Job (see "The worker contract" in DESIGN.md):
//! 1. read the job and the storage settings ([`config`], [`job`]);
//! 2. list every track's chunks and check them, before any work ([`chunks`]);
//! 3. process the tracks, a few at once, each streaming through its own ffmpeg into a multipart
//!    upload ([`track`], [`upload`]), reporting progress all along ([`progress`]);
//! 4. verify every output, write the manifest ([`manifest`]), and only then delete the chunks
//!    that went into them (an unsealed track's chunks after its first gap are kept);
//! 5. if the job makes a mixdown, tell the RecordingJob the tracks are ready
//!    (`status.readyOutputs`), then make the mixdown from the verified outputs in storage
//!    ([`mixdown`]) and add it to the manifest; a mixdown that cannot be made (after a second
//!    try) is reported beside the tracks, never as the run's failure;
//! 6. report the outputs or the one error ([`error`]) on the termination message ([`report`]).
//!
//! A run that finds its job's manifest does none of that: the recording was finished before, and
//! the run checks the outputs, deletes the source chunks an earlier run left, and reports the
//! manifest's outputs ([`finish_from_manifest`]); and makes the mixdown if the job wants one and
//! the manifest has none yet (a run killed while making it).
#![forbid(unsafe_code)]

pub mod chunks;
pub mod config;
pub mod error;
pub mod job;
pub mod manifest;
pub mod media;
pub mod mixdown;
pub mod progress;
pub mod report;
pub mod retry_log;
pub mod storage;
pub mod track;
pub mod upload;
pub mod webm;

use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};
use mixdown_crds::names::reasons;
use mixdown_crds::{Failure, RecordingOutput, Track, WorkerJob};
use tokio_util::sync::CancellationToken;

use crate::config::Args;
use crate::error::WorkerError;
use crate::manifest::Manifest;
use crate::progress::{Progress, Sink};
use crate::storage::{Storage, StorageSettings};
use crate::track::{Context, Finished, TrackPlan};
use crate::upload::PartPlan;

/// Tracks listed at once while checking the chunks.
const LISTING_CONCURRENCY: usize = 8;
/// Tries at the mixdown: a second one for a storage hiccup or an ffmpeg that lost its input.
const MIXDOWN_ATTEMPTS: u32 = 2;

/// What a successful run made.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    /// The mixdown first when there is one, then each track's output in the job's order.
    pub outputs: Vec<RecordingOutput>,
    /// Why the job's mixdown is not among them.
    pub mixdown_failure: Option<Failure>,
}

/// Runs the job the settings describe. `cancel` stops it (a signal): uploads are aborted and
/// chunks left alone.
pub async fn run(args: &Args, cancel: CancellationToken) -> Result<Done, WorkerError> {
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

    let result = process_job(args, &job, storage, progress, &sink, cancel).await;

    stop_progress.cancel();
    let _ = reporter.await;
    if let Ok(done) = &result {
        sink.finish(&done.outputs).await;
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
    sink: &Sink,
    cancel: CancellationToken,
) -> Result<Done, WorkerError> {
    let manifest_key = manifest::key(&job.output.prefix);
    if job.composite {
        progress.plan_mixdown();
    }
    let (mut manifest, tracks) = match read_manifest(&storage, job, &manifest_key).await? {
        Some(manifest) => {
            let tracks = finish_from_manifest(&storage, job, &manifest, &manifest_key).await?;
            progress.tracks_done();
            (manifest, tracks)
        }
        None => make_tracks(args, job, &storage, &progress, &cancel, &manifest_key).await?,
    };

    if let Some(entry) = &manifest.mixdown {
        let problem = match storage.head(&entry.output.key).await {
            Ok(head) => manifest::mixdown_problem(entry, head.as_ref()),
            Err(err) => Some(err.to_string()),
        };
        match problem {
            None => {
                tracing::info!(key = %entry.output.key, "the mixdown of the earlier run is there as recorded");
                let mut outputs = vec![entry.output.clone()];
                outputs.extend(tracks);
                return Ok(Done {
                    outputs,
                    mixdown_failure: None,
                });
            }
            Some(problem) if job.composite => {
                tracing::warn!(%problem, "the mixdown of the earlier run is not as recorded: making it again")
            }
            Some(problem) => {
                tracing::warn!(%problem, "the mixdown of the earlier run is not as recorded")
            }
        }
    }
    if !job.composite {
        return Ok(Done {
            outputs: tracks,
            mixdown_failure: None,
        });
    }

    // The participants' files can be downloaded while the mixdown is made.
    sink.ready(&tracks, progress.percent()).await;
    let key = job.output.mixdown_key();
    match make_mixdown(args, job, &storage, &progress, &tracks, &cancel).await {
        Ok(Finished { output, e_tag }) => {
            manifest.mixdown = Some(manifest::MixdownEntry {
                output: output.clone(),
                e_tag,
            });
            // The mixdown is verified: a manifest that cannot say so only costs a rerun the
            // mixdown, which it makes again.
            match storage
                .put(&manifest_key, manifest.to_json(), "application/json")
                .await
            {
                Ok(()) => tracing::info!(key = %manifest_key, "manifest written with the mixdown"),
                Err(err) => {
                    tracing::error!(error = %err, "the mixdown is verified but the manifest does not list it")
                }
            }
            let mut outputs = vec![output];
            outputs.extend(tracks);
            Ok(Done {
                outputs,
                mixdown_failure: None,
            })
        }
        Err(err) if cancel.is_cancelled() => Err(err),
        Err(err) => {
            tracing::error!(error = %err, "the mixdown could not be made; the participants' files are ready");
            Ok(Done {
                outputs: tracks,
                mixdown_failure: Some(Failure {
                    reason: reasons::MIXDOWN_FAILED.to_owned(),
                    message: format!(
                        "the participants' files are ready, but the mixdown {key} could not be made ({}): {err}",
                        err.reason()
                    ),
                }),
            })
        }
    }
}

/// This run's own directory in the scratch dir.
fn scratch(args: &Args) -> Result<tempfile::TempDir, WorkerError> {
    let scratch_dir = args.scratch_dir();
    tempfile::Builder::new()
        .prefix("mixdown-")
        .tempdir_in(&scratch_dir)
        .map_err(|err| {
            WorkerError::Processing(format!(
                "cannot use the scratch dir {}: {err}",
                scratch_dir.display()
            ))
        })
}

fn context(
    args: &Args,
    job: &WorkerJob,
    storage: &Storage,
    progress: &Arc<Progress>,
    scratch: &tempfile::TempDir,
) -> Context {
    Context {
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
        progress: progress.clone(),
    }
}

/// The mixdown, tried again once after a failure that another try may not meet (storage, ffmpeg
/// losing an input, verification); not after `cancel`.
async fn make_mixdown(
    args: &Args,
    job: &WorkerJob,
    storage: &Storage,
    progress: &Arc<Progress>,
    tracks: &[RecordingOutput],
    cancel: &CancellationToken,
) -> Result<Finished, WorkerError> {
    let settings = mixdown::Settings {
        font: args.font.clone(),
    };
    let mut attempt = 1;
    loop {
        let scratch = scratch(args)?;
        let ctx = context(args, job, storage, progress, &scratch);
        match mixdown::make(&ctx, &settings, job, tracks, cancel).await {
            Ok(finished) => return Ok(finished),
            Err(err) if cancel.is_cancelled() => return Err(err),
            Err(err)
                if attempt < MIXDOWN_ATTEMPTS && !matches!(err, WorkerError::InvalidInput(_)) =>
            {
                tracing::warn!(attempt, error = %err, "the mixdown failed, trying again");
            }
            Err(err) => return Err(err),
        }
        attempt += 1;
    }
}

/// The first stage: every track's output made and verified, the manifest written, the chunks
/// deleted. Returns the manifest and the outputs, in the job's order.
async fn make_tracks(
    args: &Args,
    job: &WorkerJob,
    storage: &Storage,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
    manifest_key: &str,
) -> Result<(Manifest, Vec<RecordingOutput>), WorkerError> {
    // Every track is checked before any is processed: a gap in the last track should not cost
    // the encoding of the first.
    let plans: Vec<TrackPlan> = stream::iter(&job.tracks)
        .map(|track| plan_track(storage, job, track))
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

    let scratch = scratch(args)?;
    let ctx = context(args, job, storage, progress, &scratch);

    // One failed track stops the others: the job fails as a whole and is retried as a whole.
    let stop_tracks = cancel.child_token();
    let results: Vec<Result<Finished, WorkerError>> = stream::iter(&plans)
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

    let mut finished = Vec::with_capacity(results.len());
    let mut cancelled = None;
    for result in results {
        match result {
            Ok(Finished { output, e_tag }) => finished.push((output, e_tag)),
            Err(err) if err.is_cancelled() => cancelled = Some(err),
            Err(err) => return Err(err),
        }
    }
    if let Some(err) = cancelled {
        return Err(err);
    }

    // Before any chunk goes: from here on, a run that finds this manifest reports these outputs
    // rather than failing on the chunks that are gone. Failing to write it fails the run with
    // every chunk still there, and the retry makes the files again.
    let manifest = Manifest::new(job, &finished);
    storage
        .put(manifest_key, manifest.to_json(), "application/json")
        .await?;
    tracing::info!(key = %manifest_key, "manifest written");
    let outputs: Vec<RecordingOutput> = finished.into_iter().map(|(output, _)| output).collect();

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
    Ok((manifest, outputs))
}

/// The manifest of `job` at `key`, if an earlier run finished it. A manifest of another job
/// (another profile, other tracks) is logged and left to be replaced; one that cannot be read is
/// bad input, since the worker cannot tell what it records.
async fn read_manifest(
    storage: &Storage,
    job: &WorkerJob,
    key: &str,
) -> Result<Option<Manifest>, WorkerError> {
    let Some(bytes) = storage.get_optional(key).await? else {
        return Ok(None);
    };
    let manifest = Manifest::parse(&bytes).map_err(|err| {
        WorkerError::InvalidInput(format!(
            "the manifest {key} of an earlier run cannot be read ({err}); it says what was finished, so the worker does not go on without it: look at it, and delete it to process the recording again"
        ))
    })?;
    if manifest.describes(job) {
        Ok(Some(manifest))
    } else {
        tracing::warn!(
            key,
            profile = manifest.profile.extension(),
            outputs = manifest.outputs.len(),
            "the manifest of an earlier run describes another job (profile, tracks or chunk prefixes); processing this job, whose manifest will replace it"
        );
        Ok(None)
    }
}

/// A run of a job that was finished before: every output the manifest lists must be there as
/// recorded (HEAD: size and ETag). Then the source chunks an earlier run left (it stopped in
/// the middle of deleting, or before) are deleted if the job says so, and the manifest's outputs
/// are the result. An output gone or different is [`WorkerError::OutputChanged`], and every
/// chunk left stays.
pub async fn finish_from_manifest(
    storage: &Storage,
    job: &WorkerJob,
    manifest: &Manifest,
    key: &str,
) -> Result<Vec<RecordingOutput>, WorkerError> {
    tracing::info!(
        manifest = key,
        outputs = manifest.outputs.len(),
        "the recording was finished by an earlier run: checking its outputs"
    );
    let mut problems = Vec::new();
    for entry in &manifest.outputs {
        let head = storage.head(&entry.output.key).await?;
        problems.extend(manifest::output_problem(entry, head.as_ref()));
    }
    // The source chunks still there, or why they could not be listed.
    let mut left: Vec<String> = Vec::new();
    let mut unlisted = None;
    for entry in &manifest.outputs {
        match storage.list(&entry.source_prefix).await {
            Ok(listed) => left.extend(
                manifest::sources_left(entry, &listed)
                    .into_iter()
                    .map(str::to_owned),
            ),
            Err(err) => {
                unlisted = Some(err);
                break;
            }
        }
    }
    let sources: u64 = manifest.outputs.iter().map(|e| e.source_chunks).sum();

    if !problems.is_empty() {
        let kept = match &unlisted {
            Some(err) => format!("the chunks left could not be listed ({err})"),
            None if left.len() as u64 >= sources => format!(
                "all {sources} source chunks are still there: to make the files again, delete {key} and run again"
            ),
            None if left.is_empty() => format!(
                "none of its {sources} source chunks is left, so the files cannot be made again from storage"
            ),
            None => format!(
                "{} of its {sources} source chunks are still there (kept), but not all, so the files cannot be made again from storage",
                left.len()
            ),
        };
        return Err(WorkerError::OutputChanged(format!(
            "recording {} was finished by an earlier run (manifest {key}), but {}; nothing was redone and no chunk deleted; {kept}",
            job.recording_id,
            problems.join("; ")
        )));
    }

    match unlisted {
        Some(err) => tracing::error!(
            error = %err,
            "the outputs are there as recorded, but the source chunks left cannot be listed; they remain"
        ),
        None if !job.cleanup.delete_chunks || left.is_empty() => {}
        None => match storage.delete(&left).await {
            Ok(()) => tracing::info!(
                chunks = left.len(),
                "source chunks an earlier run left deleted"
            ),
            Err(err) => {
                tracing::error!(error = %err, "the outputs are there as recorded but chunks remain")
            }
        },
    }
    tracing::info!(
        outputs = manifest.outputs.len(),
        "outputs of the earlier run are there as recorded"
    );
    Ok(manifest.report_outputs())
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
