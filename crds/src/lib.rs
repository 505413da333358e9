//! The `RecordingJob` custom resource (`mixdown.dev/v1alpha1`) and the names Mixdown's components share.
//!
//! The API writes the spec, the operator turns it into a Job and writes the status, and the worker
//! reads the [`WorkerJob`] the operator derives from the spec and answers with a [`WorkerReport`].
//! The CRD YAML in `crds/recordingjob.yaml` is generated from these types (`cargo xtask crdgen`).
#![forbid(unsafe_code)]

pub mod names;
mod naming;
mod report;
pub mod rules;
pub mod validation;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use naming::recording_job_name;
pub use report::{Failure, WorkerJob, WorkerReport};
pub use validation::{Invalid, is_valid_id, is_valid_prefix};

/// What ids (`roomId`, `recordingId`, `participantId`) may look like: safe in object keys, URLs
/// and label values.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
/// Object key prefixes: `/`-separated segments of id characters, no `..`, no leading `/`.
pub const PREFIX_PATTERN: &str = "^([A-Za-z0-9_=-]+/)*[A-Za-z0-9_=-]+/?$";
/// Most participants one recording may have.
pub const MAX_TRACKS: usize = 32;

/// A request to turn one recording's uploaded chunks into finished files.
///
/// Created by the Mixdown API when a recording stops; reconciled by the Mixdown operator into a
/// Kubernetes Job that runs the worker.
// Printer columns repeat `type_ = "integer"`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mixdown.dev",
    version = "v1alpha1",
    kind = "RecordingJob",
    namespaced,
    plural = "recordingjobs",
    shortname = "rj",
    category = "mixdown",
    status = "RecordingJobStatus",
    derive = "PartialEq",
    doc = "A request to turn one recording's uploaded chunks into finished files. Created by the Mixdown API when a recording stops; the Mixdown operator runs it as a Kubernetes Job and reports progress and results in its status.",
    printcolumn(
        name = "Room",
        type_ = "string",
        description = "Room of the recording",
        json_path = ".spec.roomId"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        description = "Where processing is",
        json_path = ".status.phase"
    ),
    printcolumn(
        name = "Sealed",
        type_ = "string",
        description = "Whether every track is sealed by its uploader",
        json_path = ".status.conditions[?(@.type==\"UploadsComplete\")].status"
    ),
    printcolumn(
        name = "Progress",
        type_ = "integer",
        description = "Percentage of the input processed",
        json_path = ".status.progress"
    ),
    printcolumn(
        name = "Attempts",
        type_ = "integer",
        description = "Worker Pods started so far",
        json_path = ".status.attempts"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
// What may change after creation (see `rules`): the API seals and adds tracks while the
// RecordingJob is Uploading, and the worker Pod's placement may be fixed until its Job exists.
#[schemars(extend("x-kubernetes-validations" = [
    rules::unchanged_optional("ttlSecondsAfterFinished"),
]))]
pub struct RecordingJobSpec {
    /// Room the recording was made in. Letters, digits, `_` and `-`, at most 64. Cannot be
    /// changed.
    #[schemars(regex(pattern = crate::ID_PATTERN), length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [rules::unchanged("roomId")]))]
    pub room_id: String,

    /// Id of the recording within the room. Letters, digits, `_` and `-`, at most 64. The
    /// RecordingJob's name is derived from it, so stopping a recording twice creates one job.
    /// Cannot be changed.
    #[schemars(regex(pattern = crate::ID_PATTERN), length(max = 64))]
    #[schemars(extend("x-kubernetes-validations" = [rules::unchanged("recordingId")]))]
    pub recording_id: String,

    /// One track per participant: where its chunks are and, once its uploader sealed it, how
    /// many there are. Between 1 and 32 tracks. The API adds tracks and seals them while the
    /// RecordingJob is Uploading; once its Job exists the spec is not changed again. A track is
    /// never removed, and its participant, prefix and (once sealed) chunk count never change.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [rules::tracks_only_sealed_or_added()]))]
    pub tracks: Vec<Track>,

    /// Longest time, in seconds from the RecordingJob's creation, that processing waits for
    /// unsealed tracks. When it passes, processing starts anyway: an unsealed track is processed
    /// from its contiguous run of chunks from chunk 0, and the chunks after a gap are kept. 0 to
    /// 86400, default 600. Cannot be changed.
    #[serde(default = "default_upload_timeout_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    #[schemars(extend("x-kubernetes-validations" = [rules::unchanged("uploadTimeoutSeconds")]))]
    pub upload_timeout_seconds: i64,

    /// Where the finished files go and in which format.
    pub output: Output,

    /// What happens to the chunks once every output is verified.
    #[serde(default)]
    pub cleanup: Cleanup,

    /// Retries of transient failures (storage outages, evicted Pods) before the job fails.
    /// Bad input (a missing or unreadable chunk) is never retried. 0 to 10, default 3. Cannot be
    /// changed.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 10))]
    #[schemars(extend("x-kubernetes-validations" = [rules::unchanged("backoffLimit")]))]
    pub backoff_limit: i32,

    /// Longest time, in seconds, processing may take across all attempts before it fails with
    /// DeadlineExceeded. 1 to 86400, default 3600. Cannot be changed.
    #[serde(default = "default_active_deadline_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    #[schemars(extend("x-kubernetes-validations" = [rules::unchanged("activeDeadlineSeconds")]))]
    pub active_deadline_seconds: i64,

    /// Longest time, in seconds from its Job's creation, that the first worker Pod may take to
    /// start. A Pod that cannot start (its image cannot be pulled, its Secret or ServiceAccount is
    /// missing, it cannot be scheduled) fails the RecordingJob with PodNotStarted and the last
    /// cause seen when this passes, and its Job is deleted so that it no longer takes a processing
    /// slot. The chunks stay. 1 to 86400, default 600. Cannot be changed.
    #[serde(default = "default_start_timeout_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    #[schemars(extend("x-kubernetes-validations" = [rules::unchanged("startTimeoutSeconds")]))]
    pub start_timeout_seconds: i64,

    /// When set, the RecordingJob (and so its Job and Pods) is deleted this many seconds after it
    /// succeeded or failed. Unset keeps it until someone deletes it. Cannot be changed (nor set
    /// or unset) after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// CPU and memory for the worker container. Unset uses the operator's defaults. This and the
    /// other placement fields below may be edited until the Job exists (to fix a Job the API
    /// server refused, or a Pod that cannot be scheduled); an edit after that is not applied,
    /// and the SpecApplied condition says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the worker Pod must run on (for example nodes with fast CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Taints the worker Pod tolerates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// PriorityClass of the worker Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// One participant's recording.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Track {
    /// The participant who recorded this track. Letters, digits, `_` and `-`, at most 64; names
    /// the output file.
    #[schemars(regex(pattern = crate::ID_PATTERN), length(max = 64))]
    pub participant_id: String,

    /// Where this track's chunks are in the bucket.
    pub source: TrackSource,

    /// When this participant's recorder started, in milliseconds after the recording started
    /// (the host's start, on the API server's clock). The API sets it when the page seals the
    /// track, from the page's own estimate of its clock's offset (see DESIGN.md, "Tracks on one
    /// clock"); the mixdown places the track there. Unset (an unsealed track, or a page that did
    /// not say): the track starts with the recording. 0 to 86400000; cannot change once sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86_400_000))]
    pub start_offset_ms: Option<i64>,

    /// The participant's name as the room shows it; the mixdown writes it on the participant's
    /// tile while there is no picture. At most 64 characters; cannot change once sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub display_name: Option<String>,
}

/// Where a track's chunks are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackSource {
    /// Key prefix of the chunks, e.g. `riverside/chunks/{room}/{recording}/{participant}/`.
    /// Chunks below it are named by sequence number (`00000000.webm`, `00000001.webm`, ...).
    #[schemars(
        regex(pattern = crate::PREFIX_PATTERN),
        length(max = 512)
    )]
    pub prefix: String,

    /// Number of chunks the uploader sealed the track with, once its upload queue drained.
    /// Unset: the track is still uploading, and processing waits for it (at most
    /// `uploadTimeoutSeconds`). The worker fails a sealed track, without retrying, when storage
    /// holds a different number or a sequence number is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub chunk_count: Option<u32>,
}

impl RecordingJob {
    /// Whether the API may still seal or add tracks, judged on `status` (the operator passes the
    /// status it last wrote, which its cache may not show yet): no Job yet, and the RecordingJob
    /// is Uploading, or not judged yet with a track unsealed. The operator builds the Job of such
    /// a RecordingJob only after a status write guarded by the spec's `resourceVersion` ends this,
    /// and the API's seal writes are guarded the same way, so the spec a Job is built from is the
    /// final one.
    pub fn tracks_may_change(&self, status: Option<&RecordingJobStatus>) -> bool {
        let phase = status.and_then(|s| s.phase);
        status.and_then(|s| s.job_name.as_ref()).is_none()
            && (phase == Some(Phase::Uploading)
                || (phase.is_none() && self.spec.tracks.iter().any(|t| !t.is_sealed())))
    }
}

impl Track {
    /// Whether the uploader sealed this track (said how many chunks it has).
    pub fn is_sealed(&self) -> bool {
        self.source.chunk_count.is_some()
    }
}

/// Where the finished files go. Cannot be changed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [rules::unchanged("output")]))]
pub struct Output {
    /// Key prefix of the finished files, e.g. `riverside/processed/{room}/{recording}/`; each
    /// track becomes `{prefix}{participantId}.{ext}`.
    #[schemars(
        regex(pattern = crate::PREFIX_PATTERN),
        length(max = 512)
    )]
    pub prefix: String,

    /// Format of the finished files: `mp4` (H.264 and AAC, index at the front so it plays while
    /// downloading; the default), `webm` (the recorded streams copied, no re-encoding) or `audio`
    /// (audio only).
    #[serde(default)]
    pub profile: Profile,

    /// Whether to make the mixdown too: one video of everyone together (`{prefix}mixdown.mp4`,
    /// or `mixdown.m4a` for the `audio` profile), every track at its `startOffsetMs`, the
    /// pictures in a grid and the audio mixed to -16 LUFS. Unset: the operator's default, which
    /// makes one for recordings of two or more tracks. A track of participant `mixdown` cannot
    /// be in a recording that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composite: Option<bool>,
}

impl Output {
    /// Whether a recording of `tracks` tracks gets a mixdown: `composite` if set, else
    /// `default_on` for two or more tracks.
    pub fn wants_composite(&self, tracks: usize, default_on: bool) -> bool {
        self.composite.unwrap_or(default_on && tracks >= 2)
    }

    /// Object key of the mixdown: `{prefix}mixdown.mp4` (`.m4a` for the audio profile).
    pub fn mixdown_key(&self) -> String {
        let ext = match self.profile {
            Profile::Audio => "m4a",
            Profile::Mp4 | Profile::Webm => "mp4",
        };
        format!("{}{MIXDOWN_NAME}.{ext}", self.prefix)
    }
}

/// Format of the finished files.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// H.264 video and AAC audio in MP4 with the index at the front.
    #[default]
    Mp4,
    /// The recorded streams copied into WebM, no re-encoding.
    Webm,
    /// Audio only.
    Audio,
}

impl Profile {
    /// File extension of this profile's outputs.
    pub fn extension(self) -> &'static str {
        match self {
            Profile::Mp4 => "mp4",
            Profile::Webm => "webm",
            Profile::Audio => "m4a",
        }
    }
}

/// What happens to the chunks after processing. Cannot be changed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [rules::unchanged("cleanup")]))]
pub struct Cleanup {
    /// Delete the chunks once every output is uploaded and verified (default true). Chunks are
    /// never deleted when processing fails.
    #[serde(default = "default_true")]
    pub delete_chunks: bool,
}

impl Default for Cleanup {
    fn default() -> Self {
        Cleanup {
            delete_chunks: true,
        }
    }
}

/// What the operator observes of the RecordingJob's processing, rebuilt from the Job and its Pods
/// each time; `progress` is the worker's own.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingJobStatus {
    /// Where processing is: Uploading (waiting for tracks to be sealed), Pending, Queued (over
    /// the concurrency limit), Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Latest observations, one per type: UploadsComplete, Queued, Running, Complete, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Name of the Job that processes the recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,

    /// Worker Pods started so far, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,

    /// When the Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When processing succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// Percentage (0 to 100) of the input the current attempt has processed; written by the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub progress: Option<i32>,

    /// The finished files, once processing succeeded: the mixdown first when there is one, then
    /// each participant's file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<RecordingOutput>,

    /// The participants' files the current attempt has verified while its mixdown is still being
    /// made; written by the worker, like `progress`, so that they can be downloaded before the
    /// mixdown is done. `outputs` lists them again, with the mixdown, once processing succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready_outputs: Vec<RecordingOutput>,

    /// Machine-readable reason of the last failure (for example MissingChunk, DeadlineExceeded,
    /// BackoffLimitExceeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Human-readable explanation of the last failure, in the worker's own words where it gave any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The `metadata.generation` this status was derived from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Each retry asked for with the `mixdown.dev/retry` annotation, oldest first, with how the
    /// run before it ended: the attempt history of a RecordingJob processed more than once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<Retry>,
}

/// One retry asked for with the `mixdown.dev/retry` annotation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// The annotation's value that asked for it.
    pub request: String,
    /// When the operator acted on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
    /// The Job of the run before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Worker Pods that run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// How that run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How that run ended, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Set when the retry was not done, and why (a RecordingJob that succeeded is never processed
    /// again: its chunks may be gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Where processing is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Waiting for participants to seal their tracks (at most `uploadTimeoutSeconds`); no Job yet.
    Uploading,
    /// Accepted; the Job is being created.
    Pending,
    /// Waiting for a free slot under the operator's concurrency limit.
    Queued,
    /// A worker is processing the recording.
    Running,
    /// Every output was written and verified.
    Succeeded,
    /// Processing ended without a result; see `reason` and `message`.
    Failed,
}

impl Phase {
    /// Succeeded and Failed are final: nothing more will happen.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Uploading => "Uploading",
            Phase::Pending => "Pending",
            Phase::Queued => "Queued",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// One finished file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingOutput {
    /// What the file is: one participant's track (`track`, the default), or the mixdown of all
    /// of them (`mixdown`).
    #[serde(default, skip_serializing_if = "OutputKind::is_track")]
    pub kind: OutputKind,
    /// The participant whose track this is; empty for the mixdown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub participant_id: String,
    /// Object key of the file in the bucket.
    pub key: String,
    /// Size of the file in bytes, as stored.
    pub size_bytes: i64,
    /// Playing time of the file in seconds, as measured after upload.
    pub duration_seconds: f64,
    /// Whether the uploader sealed the track. An unsealed track was processed from what storage
    /// held when processing started: its contiguous run of chunks from chunk 0.
    #[serde(default = "default_true")]
    pub sealed: bool,
    /// Number of chunks in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u32>,
    /// Chunks of an unsealed track that were in storage but not in the file, because a chunk
    /// before them was missing or empty. They are kept in storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_out: Option<LeftOut>,
}

/// What a finished file is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// One participant's track.
    #[default]
    Track,
    /// Every track together: the pictures in a grid, the audio mixed.
    Mixdown,
}

impl OutputKind {
    pub fn is_track(&self) -> bool {
        *self == OutputKind::Track
    }
}

/// The participant id the mixdown's file name would take from a track.
pub const MIXDOWN_NAME: &str = "mixdown";

/// The chunks of an unsealed track that processing left out, and kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeftOut {
    /// The first chunk number that was missing (or empty) in storage: the file ends before it.
    pub missing_chunk: u32,
    /// How many chunks after it storage held; none of them was processed or deleted.
    pub chunks_kept: u32,
}

impl RecordingOutput {
    /// Whether this is the mixdown.
    pub fn is_mixdown(&self) -> bool {
        self.kind == OutputKind::Mixdown
    }

    /// What happened to an unsealed track's chunks, in words; `None` for a sealed track.
    pub fn unsealed_note(&self) -> Option<String> {
        if self.sealed || self.is_mixdown() {
            return None;
        }
        let chunks = self.chunks.unwrap_or(0);
        let made = format!(
            "track {} was not sealed: its file holds chunks 00000000.webm to {:08}.webm",
            self.participant_id,
            chunks.saturating_sub(1)
        );
        Some(match &self.left_out {
            None => format!("{made}, all that storage held"),
            Some(left) => format!(
                "{made}; {:08}.webm was missing or empty, so the {} chunk(s) after it were left out and kept in storage",
                left.missing_chunk, left.chunks_kept
            ),
        })
    }
}

fn default_backoff_limit() -> i32 {
    3
}

fn default_active_deadline_seconds() -> i64 {
    3600
}

/// Default of `spec.startTimeoutSeconds`.
pub const DEFAULT_START_TIMEOUT_SECONDS: i64 = 600;

fn default_start_timeout_seconds() -> i64 {
    DEFAULT_START_TIMEOUT_SECONDS
}

/// Default of `spec.uploadTimeoutSeconds`.
pub const DEFAULT_UPLOAD_TIMEOUT_SECONDS: i64 = 600;

fn default_upload_timeout_seconds() -> i64 {
    DEFAULT_UPLOAD_TIMEOUT_SECONDS
}

fn default_true() -> bool {
    true
}

/// The CustomResourceDefinition as committed in `crds/recordingjob.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = serde_yaml::to_string(&RecordingJob::crd()).expect("a CRD always serializes to YAML");
    format!("# Generated from crds/src/lib.rs by `cargo xtask crdgen`; do not edit.\n{crd}")
}
