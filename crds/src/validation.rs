//! The one validator of a recording's ids, prefixes and tracks. The CRD schema states the same
//! rules as patterns and bounds ([`crate::ID_PATTERN`], [`crate::PREFIX_PATTERN`],
//! [`crate::MAX_TRACKS`], `chunkCount` at least 1); the API checks ids with [`is_valid_id`] before
//! it builds a key or a name from them, the operator checks a RecordingJob's spec with
//! [`crate::RecordingJobSpec::validate`] before it builds a Job (a server may not enforce every
//! rule, and an object written before a rule existed may break it), and the worker checks the job
//! it is given with [`crate::WorkerJob::validate`] (it also runs by hand, with JSON nobody
//! validated).

use std::collections::BTreeSet;

use crate::{MAX_TRACKS, Output, RecordingJobSpec, Track, WorkerJob};

/// Longest object key prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 512;

/// A field that breaks a rule: `field` is its path in the spec (`tracks[1].participantId`), and
/// `problem` what is wrong with it, the value included. Shown as "`field` `problem`".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

/// Whether `id` is a valid room, recording or participant id: [`crate::ID_PATTERN`], 1 to 64
/// ASCII letters, digits, `_` or `-`; safe in object keys, URLs and label values.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `prefix` is a valid object key prefix: [`crate::PREFIX_PATTERN`], `/`-separated
/// segments of id characters and `=`, no empty segment (so no leading `/`), an optional trailing
/// `/`, at most [`MAX_PREFIX_LEN`] bytes. `..` and `.` are not segments it allows.
pub fn is_valid_prefix(prefix: &str) -> bool {
    let body = prefix.strip_suffix('/').unwrap_or(prefix);
    prefix.len() <= MAX_PREFIX_LEN
        && !body.is_empty()
        && body.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'=' | b'-'))
        })
}

impl RecordingJobSpec {
    /// Checks every rule of [`crate::validation`]; field paths are relative to `spec`.
    pub fn validate(&self) -> Result<(), Invalid> {
        validate(
            &self.room_id,
            &self.recording_id,
            &self.tracks,
            &self.output,
            self.output.composite != Some(false),
        )
    }
}

impl WorkerJob {
    /// Checks every rule of [`crate::validation`], as for a RecordingJob's spec.
    pub fn validate(&self) -> Result<(), Invalid> {
        validate(
            &self.room_id,
            &self.recording_id,
            &self.tracks,
            &self.output,
            self.composite,
        )
    }
}

/// `composite`: whether the job may make a mixdown, whose file a participant `mixdown` would
/// overwrite (an unset `output.composite` may turn into one, so only `false` frees the name).
/// Latest a track may start after the recording's start.
pub const MAX_START_OFFSET_MS: i64 = 86_400_000;
/// Longest display name on a track.
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;

fn validate(
    room_id: &str,
    recording_id: &str,
    tracks: &[Track],
    output: &Output,
    composite: bool,
) -> Result<(), Invalid> {
    let invalid = |field: &str, problem: String| {
        Err(Invalid {
            field: field.to_string(),
            problem,
        })
    };
    let not_an_id = |id: &str| format!("{id:?} is not 1 to 64 letters, digits, '_' or '-'");
    let not_a_prefix = |prefix: &str| {
        format!(
            "{prefix:?} is not a relative key prefix: '/'-separated segments of letters, digits, \
             '_', '=' and '-', at most {MAX_PREFIX_LEN} bytes"
        )
    };
    for (field, id) in [("roomId", room_id), ("recordingId", recording_id)] {
        if !is_valid_id(id) {
            return invalid(field, not_an_id(id));
        }
    }
    if tracks.is_empty() || tracks.len() > MAX_TRACKS {
        return invalid(
            "tracks",
            format!(
                "has {} entries; 1 to {MAX_TRACKS} are allowed",
                tracks.len()
            ),
        );
    }
    if !is_valid_prefix(&output.prefix) {
        return invalid("output.prefix", not_a_prefix(&output.prefix));
    }
    let mut seen = BTreeSet::new();
    for (i, track) in tracks.iter().enumerate() {
        let participant = &track.participant_id;
        if !is_valid_id(participant) {
            return invalid(
                &format!("tracks[{i}].participantId"),
                not_an_id(participant),
            );
        }
        // Two tracks of one participant would write the same output key.
        if !seen.insert(participant.as_str()) {
            return invalid(
                &format!("tracks[{i}].participantId"),
                format!("{participant:?} appears twice; each participant has one track"),
            );
        }
        if !is_valid_prefix(&track.source.prefix) {
            return invalid(
                &format!("tracks[{i}].source.prefix"),
                not_a_prefix(&track.source.prefix),
            );
        }
        if composite && participant == crate::MIXDOWN_NAME {
            return invalid(
                &format!("tracks[{i}].participantId"),
                format!(
                    "{participant:?} is the mixdown's file name; set output.composite to false to record a participant of that id"
                ),
            );
        }
        if let Some(offset) = track.start_offset_ms
            && !(0..=MAX_START_OFFSET_MS).contains(&offset)
        {
            return invalid(
                &format!("tracks[{i}].startOffsetMs"),
                format!("is {offset}; 0 to {MAX_START_OFFSET_MS} (24 hours) is allowed"),
            );
        }
        if let Some(name) = &track.display_name
            && name.chars().count() > MAX_DISPLAY_NAME_CHARS
        {
            return invalid(
                &format!("tracks[{i}].displayName"),
                format!(
                    "has {} characters; at most {MAX_DISPLAY_NAME_CHARS} are allowed",
                    name.chars().count()
                ),
            );
        }
        // Unset is an unsealed track, processed from what storage holds; a seal says at least 1.
        if track.source.chunk_count == Some(0) {
            return invalid(
                &format!("tracks[{i}].source.chunkCount"),
                "is 0; a sealed track has at least 1 chunk".to_string(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tracks: serde_json::Value, prefix: &str) -> WorkerJob {
        serde_json::from_value(serde_json::json!({
            "roomId": "room1",
            "recordingId": "rec_1",
            "tracks": tracks,
            "output": {"prefix": prefix},
        }))
        .expect("a WorkerJob")
    }

    fn track(participant: &str, prefix: &str, count: Option<u32>) -> serde_json::Value {
        serde_json::json!({"participantId": participant, "source": {"prefix": prefix, "chunkCount": count}})
    }

    #[test]
    fn ids_follow_the_schema_pattern() {
        assert!(is_valid_id("room-1_A"));
        assert!(is_valid_id(&"x".repeat(64)));
        for bad in ["", "a/b", "..", "a.b", "a b", "é", &"x".repeat(65)] {
            assert!(!is_valid_id(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn prefixes_follow_the_schema_pattern() {
        for good in ["a", "a/", "a/b/c/", "x=1/y-2_z"] {
            assert!(is_valid_prefix(good), "{good}");
        }
        for bad in [
            "",
            "/",
            "/a",
            "a//b",
            "a/../b",
            "a b",
            "a/./b",
            &"a".repeat(513),
        ] {
            assert!(!is_valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn each_rule_names_its_field() {
        let alice = track("alice", "chunks/alice/", Some(3));
        let rows = [
            (job(serde_json::json!([alice]), "out/"), None),
            (
                job(
                    serde_json::json!([track("bob", "chunks/bob/", None)]),
                    "out/",
                ),
                None,
            ),
            (
                job(serde_json::json!([]), "out/"),
                Some("tracks has 0 entries"),
            ),
            (
                job(serde_json::json!(vec![alice.clone(); 33]), "out/"),
                Some("tracks has 33 entries; 1 to 32"),
            ),
            (
                job(serde_json::json!([alice]), "/abs/"),
                Some("output.prefix \"/abs/\" is not a relative key prefix"),
            ),
            (
                job(serde_json::json!([alice, alice]), "out/"),
                Some("tracks[1].participantId \"alice\" appears twice"),
            ),
            (
                job(serde_json::json!([track("a b", "p/", Some(1))]), "out/"),
                Some("tracks[0].participantId \"a b\" is not 1 to 64"),
            ),
            (
                job(serde_json::json!([track("a", "p/../q/", Some(1))]), "out/"),
                Some("tracks[0].source.prefix \"p/../q/\""),
            ),
            (
                job(serde_json::json!([track("a", "p/", Some(0))]), "out/"),
                Some("tracks[0].source.chunkCount is 0"),
            ),
        ];
        for (job, expected) in rows {
            match (job.validate(), expected) {
                (Ok(()), None) => {}
                (Err(error), Some(expected)) => {
                    assert!(
                        error.to_string().starts_with(expected),
                        "{error} vs {expected}"
                    );
                }
                (got, expected) => panic!("{got:?}, expected {expected:?}"),
            }
        }
        let mut bad_room = job(serde_json::json!([track("a", "p/", Some(1))]), "out/");
        bad_room.room_id = "../x".into();
        assert_eq!(
            bad_room.validate().unwrap_err().field,
            "roomId",
            "ids are checked first"
        );
    }
}
