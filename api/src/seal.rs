//! Sealing a track: a participant's page says "my upload queue drained, my track has N chunks".
//! The rules, pure so that each is a unit test:
//!
//! - a seal must match storage: chunks `0..N-1` all there and none empty, nothing from `N` on;
//!   otherwise it is refused with the first chunk at fault, so the page can upload it again;
//! - it lands on the RecordingJob's track (`chunkCount`), adding the track if the participant had
//!   uploaded nothing when the recording stopped;
//! - the spec may change only while no Job can have been built from it: the RecordingJob is
//!   Uploading, or not yet judged by the operator with a track unsealed. The write carries the
//!   `resourceVersion` it was decided on, and the operator ends the uploads with a write guarded
//!   the same way, so a seal and the start of processing can never both win;
//! - sealing again with the same count is answered as done, however late (a retry after success).

use mixdown_crds::{MAX_TRACKS, RecordingJob, Track, TrackSource};

use crate::error::ApiError;

/// Largest chunk count a seal may give (the CRD's bound).
pub const MAX_CHUNK_COUNT: u32 = 1_000_000;

/// Checks a seal of `count` chunks against what storage holds of the track: `stored` and
/// `empty` are sorted, deduplicated sequence numbers.
pub fn check_against_storage(
    participant: &str,
    count: u32,
    stored: &[u32],
    empty: &[u32],
) -> Result<(), ApiError> {
    if count == 0 || count > MAX_CHUNK_COUNT {
        return Err(ApiError::bad_request(format!(
            "chunkCount must be 1 to {MAX_CHUNK_COUNT}; it is {count}"
        )));
    }
    // The first chunk number below `count` that is not stored with bytes.
    let mut expected = 0u32;
    for &seq in stored.iter().take_while(|&&s| s < count) {
        if seq != expected {
            break;
        }
        expected += 1;
    }
    if expected < count {
        if empty.binary_search(&expected).is_ok() {
            return Err(ApiError::chunk_conflict(
                "chunk_empty",
                expected,
                format!(
                    "chunk {expected:08} of {participant} is empty in storage; upload it again, then seal"
                ),
            ));
        }
        return Err(ApiError::chunk_conflict(
            "chunk_missing",
            expected,
            format!(
                "chunk {expected:08} of {participant} is not in storage; upload it again, then seal (the track was sealed with {count} chunks)"
            ),
        ));
    }
    let beyond = stored
        .iter()
        .chain(empty)
        .filter(|&&s| s >= count)
        .min()
        .copied();
    if let Some(extra) = beyond {
        return Err(ApiError::chunk_conflict(
            "chunk_count_mismatch",
            extra,
            format!(
                "storage holds chunk {extra:08} of {participant}, beyond the {count} chunks sealed; seal with the number of chunks recorded"
            ),
        ));
    }
    Ok(())
}

/// What a seal does to a RecordingJob.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// The track is already sealed with this count: nothing to write. Its start offset, as
    /// sealed.
    AlreadySealed(Option<i64>),
    /// Write these tracks (the seal applied) on the spec.
    Write(Vec<Track>),
}

/// What a seal writes on the track besides its chunk count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SealedTrack {
    /// Where the track starts, in milliseconds after the recording's start.
    pub start_offset_ms: Option<i64>,
    /// The participant's display name, for the mixdown's tile.
    pub display_name: Option<String>,
}

/// Decides the seal of `participant`'s track (chunks under `prefix`) with `count` chunks.
pub fn decide(
    rj: &RecordingJob,
    participant: &str,
    prefix: &str,
    count: u32,
    with: &SealedTrack,
) -> Result<Decision, ApiError> {
    let recording = &rj.spec.recording_id;
    let existing = rj
        .spec
        .tracks
        .iter()
        .position(|t| t.participant_id == participant);
    if let Some(i) = existing
        && let Some(sealed) = rj.spec.tracks[i].source.chunk_count
    {
        if sealed == count {
            return Ok(Decision::AlreadySealed(rj.spec.tracks[i].start_offset_ms));
        }
        return Err(ApiError::conflict(
            "already_sealed",
            format!(
                "the track of {participant} in recording {recording} is already sealed with {sealed} chunks, not {count}"
            ),
        ));
    }
    if !rj.tracks_may_change(rj.status.as_ref()) {
        return Err(ApiError::conflict(
            "processing_started",
            format!(
                "recording {recording} is already being processed from the chunks storage held when its upload timeout passed; the track of {participant} was not sealed, and its chunks stay in storage"
            ),
        ));
    }
    let mut tracks = rj.spec.tracks.clone();
    match existing {
        Some(i) => {
            let track = &mut tracks[i];
            track.source.chunk_count = Some(count);
            track.start_offset_ms = with.start_offset_ms;
            if track.display_name.is_none() {
                track.display_name = with.display_name.clone();
            }
        }
        None if tracks.len() >= MAX_TRACKS => {
            return Err(ApiError::conflict(
                "too_many_tracks",
                format!(
                    "recording {recording} already has {MAX_TRACKS} tracks; at most {MAX_TRACKS} can be processed together"
                ),
            ));
        }
        None => tracks.push(Track {
            participant_id: participant.to_string(),
            source: TrackSource {
                prefix: prefix.to_string(),
                chunk_count: Some(count),
            },
            start_offset_ms: with.start_offset_ms,
            display_name: with.display_name.clone(),
        }),
    }
    Ok(Decision::Write(tracks))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_and_chunk(result: Result<(), ApiError>) -> Option<(&'static str, Option<u32>)> {
        match result {
            Ok(()) => None,
            Err(ApiError::Conflict { code, chunk, .. }) => Some((code, chunk)),
            Err(other) => Some((other.code(), None)),
        }
    }

    #[test]
    fn a_seal_must_match_storage_and_names_the_first_chunk_at_fault() {
        // name, count, stored, empty, the refusal (code, chunk) or None
        type Row<'a> = (
            &'a str,
            u32,
            &'a [u32],
            &'a [u32],
            Option<(&'a str, Option<u32>)>,
        );
        let rows: [Row; 9] = [
            ("all there", 3, &[0, 1, 2], &[], None),
            (
                "the last one missing",
                3,
                &[0, 1],
                &[],
                Some(("chunk_missing", Some(2))),
            ),
            (
                "the first one missing",
                3,
                &[1, 2],
                &[],
                Some(("chunk_missing", Some(0))),
            ),
            (
                "a gap",
                5,
                &[0, 1, 3, 4],
                &[],
                Some(("chunk_missing", Some(2))),
            ),
            (
                "an empty chunk",
                3,
                &[0, 2],
                &[1],
                Some(("chunk_empty", Some(1))),
            ),
            (
                "more than sealed",
                2,
                &[0, 1, 2],
                &[],
                Some(("chunk_count_mismatch", Some(2))),
            ),
            (
                "an empty one beyond",
                2,
                &[0, 1],
                &[5],
                Some(("chunk_count_mismatch", Some(5))),
            ),
            ("a zero count", 0, &[], &[], Some(("bad_request", None))),
            (
                "too many",
                MAX_CHUNK_COUNT + 1,
                &[],
                &[],
                Some(("bad_request", None)),
            ),
        ];
        for (name, count, stored, empty, want) in rows {
            let got = code_and_chunk(check_against_storage("g-1", count, stored, empty));
            assert_eq!(got, want, "{name}");
        }
        let message = check_against_storage("g-1", 3, &[0, 1], &[])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("chunk 00000002 of g-1 is not in storage"),
            "{message}"
        );
    }

    fn rj(tracks: &str, status: &str) -> RecordingJob {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: mixdown.dev/v1alpha1
kind: RecordingJob
metadata: {{name: rec-1, namespace: studio, resourceVersion: "5"}}
spec:
  roomId: room1
  recordingId: r1
  tracks: {tracks}
  output: {{prefix: out/}}
{status}"#
        ))
        .expect("a RecordingJob")
    }

    const OPEN: &str = "[{participantId: h-1, source: {prefix: c/h-1/, chunkCount: 4}}, {participantId: g-1, source: {prefix: c/g-1/}}]";
    const SEALED: &str = "[{participantId: h-1, source: {prefix: c/h-1/, chunkCount: 4}}, {participantId: g-1, source: {prefix: c/g-1/, chunkCount: 9}}]";

    #[test]
    fn a_seal_lands_only_while_no_job_can_have_been_built() {
        let uploading = "status: {phase: Uploading}";
        let started = "status: {phase: Running, jobName: rec-1}";
        let closed = "status: {phase: Pending}";

        // An unsealed track is sealed, while Uploading or not yet judged.
        for status in [uploading, ""] {
            let Ok(Decision::Write(tracks)) = decide(
                &rj(OPEN, status),
                "g-1",
                "c/g-1/",
                9,
                &SealedTrack::default(),
            ) else {
                panic!("a seal while uploading is written ({status:?})");
            };
            assert_eq!(tracks[1].source.chunk_count, Some(9));
        }
        // A seal writes where the track starts, and the name the token gave, on the track.
        let with = SealedTrack {
            start_offset_ms: Some(2040),
            display_name: Some("Guest One".into()),
        };
        let Ok(Decision::Write(tracks)) = decide(&rj(OPEN, ""), "g-1", "c/g-1/", 9, &with) else {
            panic!("a seal while uploading is written");
        };
        assert_eq!(tracks[1].start_offset_ms, Some(2040));
        assert_eq!(tracks[1].display_name.as_deref(), Some("Guest One"));
        assert_eq!(
            tracks[0].start_offset_ms, None,
            "another track is left alone"
        );
        let Ok(Decision::Write(tracks)) = decide(&rj(OPEN, ""), "g-3", "c/g-3/", 1, &with) else {
            panic!("a late participant is added");
        };
        assert_eq!(tracks[2].start_offset_ms, Some(2040));
        // A participant who had nothing in storage at stop is added, sealed.
        let Ok(Decision::Write(tracks)) = decide(
            &rj(OPEN, uploading),
            "g-2",
            "c/g-2/",
            2,
            &SealedTrack::default(),
        ) else {
            panic!("a late participant is added");
        };
        assert_eq!(tracks.len(), 3);
        assert_eq!(tracks[2].participant_id, "g-2");
        assert_eq!(tracks[2].source.prefix, "c/g-2/");
        // The same seal again, even after processing: done, nothing written.
        for status in [uploading, started] {
            assert_eq!(
                decide(
                    &rj(SEALED, status),
                    "g-1",
                    "c/g-1/",
                    9,
                    &SealedTrack::default()
                )
                .ok(),
                Some(Decision::AlreadySealed(None))
            );
        }
        // Another count on a sealed track is refused.
        let refused = decide(
            &rj(SEALED, uploading),
            "g-1",
            "c/g-1/",
            8,
            &SealedTrack::default(),
        )
        .unwrap_err();
        assert_eq!(refused.code(), "already_sealed");
        // Once the uploads are closed (Pending, Queued, a Job), nothing changes any more.
        for status in [closed, started] {
            let refused = decide(
                &rj(OPEN, status),
                "g-1",
                "c/g-1/",
                9,
                &SealedTrack::default(),
            )
            .unwrap_err();
            assert_eq!(refused.code(), "processing_started", "{status}");
            assert!(refused.to_string().contains("chunks stay in storage"));
        }
        // Not yet judged, every track sealed: the operator may start it without closing, so
        // no participant is added.
        let refused =
            decide(&rj(SEALED, ""), "g-2", "c/g-2/", 1, &SealedTrack::default()).unwrap_err();
        assert_eq!(refused.code(), "processing_started");
    }
}
