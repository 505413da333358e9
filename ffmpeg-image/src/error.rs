//! The worker's one error type, classified once: every failure knows its `reason` (one of
//! [`mixdown_crds::names::reasons`]) and its exit code, which tells the Job controller whether a
//! retry can help.
//!
//! Bad input (no chunks, a missing first chunk, a gap or a wrong count in a sealed track, a chunk
//! ffmpeg cannot read, a job that cannot be parsed) exits with [`exit_codes::BAD_INPUT`]: the same
//! chunks would fail the same way again.
//! So does a finished recording whose outputs are no longer what its manifest recorded.
//! Everything else (storage, ffmpeg, scratch space, verification) is transient and exits with
//! [`exit_codes::TRANSIENT`], so the Job retries it: storage refusing the credentials or the
//! bucket too, since a Secret fixed in the meantime reaches the next attempt's Pod.

use mixdown_crds::WorkerReport;
use mixdown_crds::names::{exit_codes, reasons};

/// Why a worker run failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The job or the settings cannot be used as given (unparsable job, missing bucket, a
    /// recording without the stream its profile needs).
    #[error("{0}")]
    InvalidInput(String),

    /// Storage holds no chunk for a track.
    #[error("track {participant}: no chunks under {prefix}")]
    NoChunks { participant: String, prefix: String },

    /// A sequence number is missing: the first chunk, or a gap in a sealed track. An unsealed
    /// track's empty first chunk is missing too: its file would have nothing to start from.
    #[error("track {participant}: {detail}")]
    MissingChunk { participant: String, detail: String },

    /// Storage holds a different number of chunks than the client confirmed, or two chunks with
    /// the same sequence number.
    #[error("track {participant}: {detail}")]
    ChunkCountMismatch { participant: String, detail: String },

    /// ffmpeg cannot read a chunk (corrupt, empty, not a recording).
    #[error("track {participant}: {detail}")]
    UnreadableChunk {
        participant: String,
        /// Object name of the chunk, e.g. `00000012.webm`.
        chunk: String,
        detail: String,
    },

    /// Talking to storage failed after the SDK's retries.
    #[error("storage: {0}")]
    Storage(String),

    /// Storage refused the settings: wrong credentials, a bucket that does not exist, a key
    /// without the permission. The message says what to check. Transient, like any storage
    /// failure: the Pod of the Job's next attempt reads the Secret again, so fixing it while
    /// the Job retries lets the recording through, and `backoffLimit` bounds the attempts (each
    /// fails at its first request, before any work).
    #[error("{0}")]
    StorageAccess(String),

    /// The recording was finished by an earlier run (its manifest is there) but an output the
    /// manifest lists is gone or holds something else. Bad input: nothing is redone, no chunk
    /// is deleted, and a retry would find the same.
    #[error("{0}")]
    OutputChanged(String),

    /// ffmpeg or ffprobe failed for a reason that is not the input's, or scratch space failed.
    #[error("processing: {0}")]
    Processing(String),

    /// An uploaded output does not look like what was produced.
    #[error("verification of {key} failed: {detail}")]
    Verification { key: String, detail: String },

    /// Another track failed first and this one stopped; never reported on its own.
    #[error("cancelled because another track failed")]
    Cancelled,

    /// SIGTERM or SIGINT: the Pod is being deleted or its deadline passed.
    #[error("interrupted by {0}")]
    Interrupted(&'static str),
}

impl WorkerError {
    /// The machine-readable reason, one of [`mixdown_crds::names::reasons`].
    pub fn reason(&self) -> &'static str {
        match self {
            WorkerError::InvalidInput(_) => reasons::INVALID_INPUT,
            WorkerError::NoChunks { .. } => reasons::NO_CHUNKS,
            WorkerError::MissingChunk { .. } => reasons::MISSING_CHUNK,
            WorkerError::ChunkCountMismatch { .. } => reasons::CHUNK_COUNT_MISMATCH,
            WorkerError::UnreadableChunk { .. } => reasons::UNREADABLE_CHUNK,
            WorkerError::Storage(_) => reasons::STORAGE_ERROR,
            WorkerError::StorageAccess(_) => reasons::STORAGE_MISCONFIGURED,
            WorkerError::OutputChanged(_) => reasons::OUTPUT_CHANGED,
            WorkerError::Processing(_) | WorkerError::Cancelled | WorkerError::Interrupted(_) => {
                reasons::FFMPEG_FAILED
            }
            WorkerError::Verification { .. } => reasons::VERIFICATION_FAILED,
        }
    }

    /// Whether retrying with the same chunks could succeed.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            WorkerError::InvalidInput(_)
                | WorkerError::NoChunks { .. }
                | WorkerError::MissingChunk { .. }
                | WorkerError::ChunkCountMismatch { .. }
                | WorkerError::UnreadableChunk { .. }
                | WorkerError::OutputChanged(_)
        )
    }

    /// The process exit code the operator reads (see [`mixdown_crds::names::exit_codes`]).
    pub fn exit_code(&self) -> i32 {
        if self.is_bad_input() {
            exit_codes::BAD_INPUT
        } else {
            exit_codes::TRANSIENT
        }
    }

    /// The report for the termination message. `None` when interrupted: the Pod is going away
    /// and the operator knows better why (deadline, deletion) than the worker does.
    pub fn report(&self) -> Option<WorkerReport> {
        match self {
            WorkerError::Interrupted(_) => None,
            _ => Some(WorkerReport::Failed {
                reason: self.reason().to_owned(),
                message: self.to_string(),
            }),
        }
    }

    /// Whether this error is only the echo of another track's failure.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, WorkerError::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> String {
        "alice".to_owned()
    }

    #[test]
    fn every_error_has_its_reason_and_exit_code() {
        let table: Vec<(WorkerError, &str, i32)> = vec![
            (
                WorkerError::InvalidInput("bad json".into()),
                reasons::INVALID_INPUT,
                2,
            ),
            (
                WorkerError::NoChunks {
                    participant: p(),
                    prefix: "c/".into(),
                },
                reasons::NO_CHUNKS,
                2,
            ),
            (
                WorkerError::MissingChunk {
                    participant: p(),
                    detail: "d".into(),
                },
                reasons::MISSING_CHUNK,
                2,
            ),
            (
                WorkerError::ChunkCountMismatch {
                    participant: p(),
                    detail: "d".into(),
                },
                reasons::CHUNK_COUNT_MISMATCH,
                2,
            ),
            (
                WorkerError::UnreadableChunk {
                    participant: p(),
                    chunk: "00000003.webm".into(),
                    detail: "d".into(),
                },
                reasons::UNREADABLE_CHUNK,
                2,
            ),
            (
                WorkerError::Storage("timeout".into()),
                reasons::STORAGE_ERROR,
                1,
            ),
            (
                WorkerError::StorageAccess("check the Secret".into()),
                reasons::STORAGE_MISCONFIGURED,
                1,
            ),
            (
                WorkerError::OutputChanged("the output is gone".into()),
                reasons::OUTPUT_CHANGED,
                2,
            ),
            (
                WorkerError::Processing("ffmpeg exited with 1".into()),
                reasons::FFMPEG_FAILED,
                1,
            ),
            (
                WorkerError::Verification {
                    key: "k".into(),
                    detail: "d".into(),
                },
                reasons::VERIFICATION_FAILED,
                1,
            ),
        ];
        for (error, reason, code) in table {
            assert_eq!(error.reason(), reason, "{error:?}");
            assert_eq!(error.exit_code(), code, "{error:?}");
            match error.report() {
                Some(WorkerReport::Failed { reason: r, message }) => {
                    assert_eq!(r, reason);
                    assert_eq!(message, error.to_string());
                }
                other => panic!("{error:?} reported as {other:?}"),
            }
        }
    }

    #[test]
    fn interruptions_are_transient_and_leave_no_report() {
        let error = WorkerError::Interrupted("SIGTERM");
        assert_eq!(error.exit_code(), exit_codes::TRANSIENT);
        assert!(error.report().is_none());
    }

    #[test]
    fn messages_name_the_track_and_chunk() {
        let error = WorkerError::UnreadableChunk {
            participant: p(),
            chunk: "00000003.webm".into(),
            detail: "chunk 00000003.webm is unreadable".into(),
        };
        assert_eq!(
            error.to_string(),
            "track alice: chunk 00000003.webm is unreadable"
        );
    }
}
