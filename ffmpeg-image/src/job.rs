//! The job the worker is given: parsing, the checks the CRD schema makes (the worker also runs
//! by hand, with JSON nobody validated), and the object keys derived from it.

use std::collections::HashSet;

use mixdown_crds::{MAX_TRACKS, Profile, WorkerJob, is_valid_id};

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

/// What the RecordingJob schema guarantees, checked again.
pub fn validate(job: &WorkerJob) -> Result<(), WorkerError> {
    let invalid = |message: String| Err(WorkerError::InvalidInput(message));
    for (what, id) in [("roomId", &job.room_id), ("recordingId", &job.recording_id)] {
        if !is_valid_id(id) {
            return invalid(format!(
                "{what} {id:?} is not 1 to 64 of A-Z, a-z, 0-9, '_' and '-'"
            ));
        }
    }
    if job.tracks.is_empty() || job.tracks.len() > MAX_TRACKS {
        return invalid(format!(
            "the job has {} tracks; it needs 1 to {MAX_TRACKS}",
            job.tracks.len()
        ));
    }
    if !is_valid_prefix(&job.output.prefix) {
        return invalid(format!(
            "output prefix {:?} is not a relative key prefix ('/'-separated segments of A-Z, a-z, 0-9, '_', '=' and '-')",
            job.output.prefix
        ));
    }
    let mut seen = HashSet::new();
    for track in &job.tracks {
        let participant = &track.participant_id;
        if !is_valid_id(participant) {
            return invalid(format!(
                "participantId {participant:?} is not 1 to 64 of A-Z, a-z, 0-9, '_' and '-'"
            ));
        }
        if !seen.insert(participant.as_str()) {
            return invalid(format!(
                "participant {participant} has two tracks; their outputs would have the same key"
            ));
        }
        if !is_valid_prefix(&track.source.prefix) {
            return invalid(format!(
                "chunk prefix {:?} of track {participant} is not a relative key prefix",
                track.source.prefix
            ));
        }
        // Unset is an unsealed track, processed from what storage holds; a seal says at least 1.
        if track.source.chunk_count == Some(0) {
            return invalid(format!(
                "track {participant} has chunkCount 0; a sealed track has at least 1 chunk"
            ));
        }
    }
    Ok(())
}

/// `crds::PREFIX_PATTERN`: `/`-separated segments of id characters (and `=`), no leading `/`,
/// an optional trailing one.
fn is_valid_prefix(prefix: &str) -> bool {
    let body = prefix.strip_suffix('/').unwrap_or(prefix);
    prefix.len() <= 512
        && !body.is_empty()
        && body.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'=' | b'-'))
        })
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
            (job_json("", "out/"), "has 0 tracks"),
            (job_json(ALICE, "/abs/"), "output prefix"),
            (job_json(ALICE, "a/../b"), "output prefix"),
            (job_json(&bob_twice, "out/"), "alice has two tracks"),
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
                "chunkCount 0",
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

    #[test]
    fn prefixes_follow_the_schema_pattern() {
        for good in ["a", "a/", "a/b/c/", "x=1/y-2_z"] {
            assert!(is_valid_prefix(good), "{good}");
        }
        for bad in ["", "/", "/a", "a//b", "a/../b", "a b", "a/./b"] {
            assert!(!is_valid_prefix(bad), "{bad}");
        }
    }
}
