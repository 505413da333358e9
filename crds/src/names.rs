//! Names that more than one component of Mixdown must spell the same way: the API group, labels,
//! condition types, reasons, field managers and the worker's environment.
//!
//! They live here once so that the operator, the API, the worker and the chart cannot drift apart.

/// API group of every Mixdown resource.
pub const GROUP: &str = "mixdown.dev";
/// Served and stored version of the RecordingJob resource.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests and server-side apply patches.
pub const API_VERSION: &str = "mixdown.dev/v1alpha1";
/// Kind of the custom resource.
pub const KIND: &str = "RecordingJob";
/// The application name used in `app.kubernetes.io/name` and as the default key prefix's owner.
pub const APP_NAME: &str = "mixdown";
/// Where chunks and processed files live under the bucket unless configured otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "riverside";

/// Labels put on every child object (Jobs, Pods) so that `kubectl get -l` finds them.
pub mod labels {
    /// Names the RecordingJob a Job or Pod belongs to; the operator selects Pods with it.
    pub const RECORDING_JOB: &str = "mixdown.dev/recording-job";
    /// The room of the recording, for operators who look for one room's work.
    pub const ROOM: &str = "mixdown.dev/room";
    /// The recording id.
    pub const RECORDING: &str = "mixdown.dev/recording";
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// `app.kubernetes.io/component` of processing Jobs and their Pods.
    pub const COMPONENT_WORKER: &str = "worker";
}

/// Annotations Mixdown reads or writes.
pub mod annotations {
    /// Set by the API on the RecordingJobs it creates: which participant stopped the recording.
    pub const STOPPED_BY: &str = "mixdown.dev/stopped-by";
    /// Set by the operator on the Jobs it creates: the RecordingJob's `metadata.generation` the
    /// Job was built from, so that a later edit of the spec is seen as not applied.
    pub const SPEC_GENERATION: &str = "mixdown.dev/spec-generation";
    /// Set by the operator on the Jobs it creates: `"true"` when its worker makes a mixdown,
    /// `"false"` when not (the operator resolved `spec.output.composite`).
    pub const COMPOSITE: &str = "mixdown.dev/composite";
    /// Set by a user on a Failed RecordingJob to process it again (any new value, e.g. the
    /// time): its Job is replaced and the run before is kept in `status.retries`.
    pub const RETRY: &str = "mixdown.dev/retry";
}

/// Server-side apply field managers. Each writer owns its own fields: the operator owns the
/// status it derives, the worker owns `status.progress`, the API owns the spec.
pub mod field_managers {
    pub const OPERATOR: &str = "mixdown-operator";
    pub const WORKER: &str = "mixdown-worker";
    pub const API: &str = "mixdown-api";
}

/// `type` of the conditions in `status.conditions`.
pub mod conditions {
    /// Whether the Job runs the spec as it stands: False after an edit the Job cannot take.
    pub const SPEC_APPLIED: &str = "SpecApplied";
    /// Every track was sealed by its uploader (True), or processing waits for some (False,
    /// WaitingForUploads), or started without them (False, UploadTimeout).
    pub const UPLOADS_COMPLETE: &str = "UploadsComplete";
    /// The RecordingJob waits for a free slot under the concurrency limit.
    pub const QUEUED: &str = "Queued";
    /// A worker Pod is processing the recording.
    pub const RUNNING: &str = "Running";
    /// Every output was written and verified.
    pub const COMPLETE: &str = "Complete";
    /// Processing ended without a result; `reason` and `message` say why.
    pub const FAILED: &str = "Failed";
    /// Only on RecordingJobs that make a mixdown: True once it is written, False with why not.
    pub const MIXDOWN_READY: &str = "MixdownReady";
}

/// `reason` values of conditions, of `status.reason` and of Events.
pub mod reasons {
    /// The spec was edited after its Job was made; the running Job keeps the earlier spec.
    pub const SPEC_CHANGE_NOT_APPLIED: &str = "SpecChangeNotApplied";
    /// A retry asked for with `mixdown.dev/retry` started (Normal Event).
    pub const RETRYING: &str = "Retrying";
    /// A retry asked for with `mixdown.dev/retry` was not done (Warning Event).
    pub const RETRY_REFUSED: &str = "RetryRefused";
    /// The Job runs the RecordingJob's spec as it stands.
    pub const SPEC_APPLIED: &str = "SpecApplied";
    /// Tracks are still unsealed; the message names them.
    pub const WAITING_FOR_UPLOADS: &str = "WaitingForUploads";
    /// Every track is sealed.
    pub const ALL_TRACKS_SEALED: &str = "AllTracksSealed";
    /// `uploadTimeoutSeconds` passed with tracks unsealed; processing started without them.
    pub const UPLOAD_TIMEOUT: &str = "UploadTimeout";
    pub const JOB_CREATED: &str = "JobCreated";
    pub const WAITING_FOR_SLOT: &str = "WaitingForSlot";
    pub const POD_RUNNING: &str = "PodRunning";
    pub const COMPLETED: &str = "Completed";
    /// The Job used up `backoffLimit` retries of transient failures.
    pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
    /// The RecordingJob's Job was deleted (by hand) before its worker finished.
    pub const JOB_DELETED: &str = "JobDeleted";
    /// No worker Pod started within `startTimeoutSeconds` of the Job's creation.
    pub const POD_NOT_STARTED: &str = "PodNotStarted";
    /// The Job controller could not create the worker Pod (its Event's reason, e.g. a missing
    /// ServiceAccount); shown while the RecordingJob is Pending.
    pub const FAILED_CREATE: &str = "FailedCreate";
    /// The worker Pod cannot be scheduled (its `PodScheduled` condition's reason); shown while
    /// the RecordingJob is Pending.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// The Job ran longer than `activeDeadlineSeconds`.
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// The worker exited with the bad-input code without a readable report.
    pub const INVALID_INPUT: &str = "InvalidInput";
    /// The spec cannot be turned into a Job (the operator's own validation), or the API server
    /// refused the Job built from it as invalid (422, 400).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The API server refused the operator's create of the Job (403: missing RBAC, a policy).
    pub const FORBIDDEN: &str = "Forbidden";
    /// A Job of the RecordingJob's name exists and is controlled by something else.
    pub const JOB_CONFLICT: &str = "JobConflict";

    // Reasons the worker reports for bad input (exit code 2).
    pub const NO_CHUNKS: &str = "NoChunks";
    pub const MISSING_CHUNK: &str = "MissingChunk";
    pub const CHUNK_COUNT_MISMATCH: &str = "ChunkCountMismatch";
    pub const UNREADABLE_CHUNK: &str = "UnreadableChunk";
    /// The recording was finished before (its manifest lists its outputs), but an output is
    /// gone or differs from what the manifest recorded: nothing is redone and no chunk deleted.
    pub const OUTPUT_CHANGED: &str = "OutputChanged";
    // Reasons the worker reports for transient failures (any other exit code).
    pub const STORAGE_ERROR: &str = "StorageError";
    /// Storage refused the worker's settings: the credentials (the Secret's keys), the bucket
    /// (it does not exist at the endpoint), or the permissions of the key. Transient on purpose
    /// (exit 1): a Secret fixed while the Job retries is picked up by the next Pod, and the
    /// Job's backoffLimit bounds the attempts.
    pub const STORAGE_MISCONFIGURED: &str = "StorageMisconfigured";
    pub const FFMPEG_FAILED: &str = "FfmpegFailed";
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
    /// The mixdown is written and verified.
    pub const MIXDOWN_WRITTEN: &str = "MixdownWritten";
    /// The mixdown is still being made (the participants' files are ready).
    pub const MIXING: &str = "Mixing";
    /// The mixdown could not be made; the participants' files are fine.
    pub const MIXDOWN_FAILED: &str = "MixdownFailed";
}

/// The worker's exit codes, the contract between the worker and the operator.
pub mod exit_codes {
    /// Every output written and verified.
    pub const SUCCESS: i32 = 0;
    /// Transient failure: the Job retries.
    pub const TRANSIENT: i32 = 1;
    /// The input is bad (no chunks, a gap, an unreadable chunk): retrying will not help.
    pub const BAD_INPUT: i32 = 2;
}

/// Environment variables the operator sets on the worker container and the worker reads.
pub mod env {
    /// The job as JSON ([`crate::WorkerJob`]).
    pub const JOB: &str = "MIXDOWN_JOB";
    pub const S3_ENDPOINT: &str = "MIXDOWN_S3_ENDPOINT";
    pub const S3_REGION: &str = "MIXDOWN_S3_REGION";
    pub const S3_BUCKET: &str = "MIXDOWN_S3_BUCKET";
    pub const S3_PATH_STYLE: &str = "MIXDOWN_S3_PATH_STYLE";
    /// Scratch directory (an emptyDir in the Pod) for outputs that need a seekable file.
    pub const SCRATCH_DIR: &str = "MIXDOWN_SCRATCH_DIR";
    /// Where the worker writes its JSON report ([`crate::WorkerReport`]).
    pub const TERMINATION_MESSAGE_PATH: &str = "MIXDOWN_TERMINATION_MESSAGE_PATH";
    /// Name and namespace of the RecordingJob whose `status.progress` the worker patches.
    pub const RECORDING_JOB: &str = "MIXDOWN_RECORDING_JOB";
    pub const NAMESPACE: &str = "MIXDOWN_NAMESPACE";
    /// How often the worker reports progress, in milliseconds (50 to 2000; default 1000).
    pub const PROGRESS_INTERVAL_MS: &str = "MIXDOWN_PROGRESS_INTERVAL_MS";
}
