//! The job the worker is given: parsing, the checks the CRD schema makes (the worker also runs
//! by hand, with JSON nobody validated), and the object keys derived from it.

use mixdown_crds::{Profile, WorkerJob};

use crate::chunks::dir_prefix;
use crate::error::WorkerError;

/// Parses and checks a job given as JSON ([`WorkerJob`]).
pub fn parse(json: &str) -> Result<WorkerJob, WorkerError> {
    let job: WorkerJob = serde_json::from_str(json).map_err(|err| {
        WorkerError::InvalidInput(format!("the job is not valid JSON of a WorkerJob: {err}"))
    })?;
    validate(&job)?;
    Ok(job)
}

/// What the RecordingJob schema guarantees, checked again with the validator it shares with
/// the operator and the API ([`mixdown_crds::validation`]).
pub fn validate(job: &WorkerJob) -> Result<(), WorkerError> {
    job.validate()
        .map_err(|invalid| WorkerError::InvalidInput(format!("the job's {invalid}")))
}

/// Key of a track's finished file: `{prefix}/{participantId}.{ext}`, whether or not the prefix
/// ends with `/`.
pub fn output_key(output_prefix: &str, participant_id: &str, profile: Profile) -> String {
    format!(
        "{}{participant_id}.{}",
        dir_prefix(output_prefix),
        profile.extension()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixdown_crds::names::reasons;

    fn job_json(tracks: &str, prefix: &str) -> String {
        format!(
            r#"{{"roomId":"room1","recordingId":"rec_1","tracks":[{tracks}],"output":{{"prefix":"{prefix}","profile":"webm"}}}}"#
        )
    }

    const ALICE: &str = r#"{"participantId":"alice","source":{"prefix":"riverside/chunks/room1/rec_1/alice/","chunkCount":3}}"#;

    #[test]
    fn parses_a_job_with_defaults() {
        let job = parse(&job_json(ALICE, "riverside/processed/room1/rec_1/")).expect("valid");
        assert_eq!(job.output.profile, Profile::Webm);
        assert!(job.cleanup.delete_chunks, "deleteChunks defaults to true");
        assert_eq!(job.tracks[0].source.chunk_count, Some(3));
        assert!(job.tracks[0].is_sealed());
    }

    #[test]
    fn a_track_without_chunk_count_is_unsealed_and_valid() {
        let bob =
            r#"{"participantId":"bob","source":{"prefix":"riverside/chunks/room1/rec_1/bob/"}}"#;
        let job = parse(&job_json(&format!("{ALICE},{bob}"), "out/")).expect("valid");
        assert_eq!(job.tracks[1].source.chunk_count, None);
        assert!(!job.tracks[1].is_sealed());
        assert!(job.tracks[0].is_sealed());
        // An explicit null is unsealed too.
        let null = r#"{"participantId":"bob","source":{"prefix":"p/","chunkCount":null}}"#;
        let job = parse(&job_json(null, "out/")).expect("valid");
        assert_eq!(job.tracks[0].source.chunk_count, None);
    }

    #[test]
    fn rejects_jobs_the_schema_would_reject() {
        let bob_twice = format!("{ALICE},{ALICE}");
        let cases = [
            ("not json".to_owned(), "not valid JSON"),
            (job_json("", "out/"), "tracks has 0 entries"),
            (
                job_json(ALICE, "/abs/"),
                "output.prefix \"/abs/\" is not a relative key prefix",
            ),
            (job_json(ALICE, "a/../b"), "output.prefix \"a/../b\""),
            (job_json(&bob_twice, "out/"), "\"alice\" appears twice"),
            (
                job_json(
                    r#"{"participantId":"a b","source":{"prefix":"p/","chunkCount":1}}"#,
                    "out/",
                ),
                "participantId \"a b\"",
            ),
            (
                job_json(
                    r#"{"participantId":"a","source":{"prefix":"p/","chunkCount":0}}"#,
                    "out/",
                ),
                "chunkCount is 0",
            ),
        ];
        for (json, message) in cases {
            let error = parse(&json).expect_err(&json);
            assert_eq!(error.reason(), reasons::INVALID_INPUT);
            assert!(error.to_string().contains(message), "{error} vs {message}");
            assert_eq!(error.exit_code(), 2);
        }
    }

    #[test]
    fn output_keys_with_or_without_trailing_slash() {
        assert_eq!(
            output_key("riverside/processed/r/rec/", "alice", Profile::Mp4),
            "riverside/processed/r/rec/alice.mp4"
        );
        assert_eq!(
            output_key("riverside/processed/r/rec", "alice", Profile::Webm),
            "riverside/processed/r/rec/alice.webm"
        );
        assert_eq!(output_key("out", "bob", Profile::Audio), "out/bob.m4a");
    }
}
