//! The worker's side of the contract: the job it is given and the report it leaves behind.
//!
//! The operator passes a [`WorkerJob`] as JSON in the environment; the worker writes a
//! [`WorkerReport`] as JSON to its termination message, which the operator reads back from the
//! Pod's status. A termination message holds at most 4096 bytes, so the report stays compact.

use serde::{Deserialize, Serialize};

use crate::{Cleanup, Output, RecordingJobSpec, RecordingOutput, Track};

/// What a worker must do: the processing part of a RecordingJob's spec, without placement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerJob {
    pub room_id: String,
    pub recording_id: String,
    pub tracks: Vec<Track>,
    pub output: Output,
    #[serde(default)]
    pub cleanup: Cleanup,
    /// Whether to make the mixdown (the operator resolves `output.composite` and its default).
    #[serde(default)]
    pub composite: bool,
}

impl From<&RecordingJobSpec> for WorkerJob {
    fn from(spec: &RecordingJobSpec) -> Self {
        WorkerJob {
            room_id: spec.room_id.clone(),
            recording_id: spec.recording_id.clone(),
            tracks: spec.tracks.clone(),
            output: spec.output.clone(),
            cleanup: spec.cleanup.clone(),
            composite: spec.output.wants_composite(spec.tracks.len(), true),
        }
    }
}

/// How a worker run ended, as written to the termination message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum WorkerReport {
    /// Every participant's output was uploaded and verified (and the chunks deleted if asked),
    /// and the mixdown too unless `mixdownFailure` says why not: a mixdown that could not be
    /// made never hides the participants' files.
    #[serde(rename_all = "camelCase")]
    Succeeded {
        outputs: Vec<RecordingOutput>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mixdown_failure: Option<Failure>,
    },
    /// Nothing was finished; `reason` is one of [`crate::names::reasons`], `message` names the
    /// chunk or step that failed.
    #[serde(rename_all = "camelCase")]
    Failed { reason: String, message: String },
}

/// Why something was not made: `reason` one of [`crate::names::reasons`], `message` in words.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub reason: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_in_the_documented_shape() {
        let ok = WorkerReport::Succeeded {
            mixdown_failure: None,
            outputs: vec![RecordingOutput {
                kind: Default::default(),
                participant_id: "alice".into(),
                key: "riverside/processed/r/rec/alice.mp4".into(),
                size_bytes: 1234,
                duration_seconds: 30.02,
                sealed: true,
                chunks: Some(30),
                left_out: None,
            }],
        };
        let json = serde_json::to_value(&ok).expect("serializes");
        assert_eq!(json["result"], "succeeded");
        assert_eq!(json["outputs"][0]["sizeBytes"], 1234);
        assert_eq!(
            serde_json::from_value::<WorkerReport>(json).expect("parses"),
            ok
        );

        let failed: WorkerReport = serde_json::from_str(
            r#"{"result":"failed","reason":"MissingChunk","message":"chunk 00000003.webm of alice is missing"}"#,
        )
        .expect("parses");
        assert!(
            matches!(failed, WorkerReport::Failed { ref reason, .. } if reason == "MissingChunk")
        );
    }
}
