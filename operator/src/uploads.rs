//! The upload gate: whether a RecordingJob may be processed yet, judged from its spec and the
//! clock alone. Pure, so each case is a table row in the tests.
//!
//! A track is sealed when its uploader said how many chunks it has (`chunkCount`). Processing
//! waits while any track is unsealed, for at most `uploadTimeoutSeconds` from the RecordingJob's
//! creation (its `creationTimestamp`, so an operator restart does not restart the wait). After
//! that it starts anyway, and the worker processes each unsealed track from what storage holds.

use mixdown_crds::RecordingJob;
use mixdown_crds::names::reasons;

/// Where a RecordingJob's uploads stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Every track is sealed: processing may start.
    Sealed { tracks: usize },
    /// `open` (participant ids) are still uploading; processing waits until `until` at the latest.
    Waiting {
        open: Vec<String>,
        tracks: usize,
        until: jiff::Timestamp,
    },
    /// The wait is over with `open` still unsealed: processing starts without their seals.
    TimedOut {
        open: Vec<String>,
        tracks: usize,
        timeout_seconds: i64,
    },
}

impl Gate {
    /// Whether processing may start (every track sealed, or the wait is over).
    pub fn is_open(&self) -> bool {
        !matches!(self, Gate::Waiting { .. })
    }

    /// The `UploadsComplete` condition: status, reason and message.
    pub fn condition(&self) -> (bool, &'static str, String) {
        match self {
            Gate::Sealed { tracks } => (
                true,
                reasons::ALL_TRACKS_SEALED,
                format!("every track is sealed ({tracks} of {tracks})"),
            ),
            Gate::Waiting {
                open,
                tracks,
                until,
            } => (
                false,
                reasons::WAITING_FOR_UPLOADS,
                format!(
                    "waiting for {} of {tracks} track(s) to be sealed: {}; processing starts at {until} at the latest",
                    open.len(),
                    open.join(", ")
                ),
            ),
            Gate::TimedOut {
                open,
                tracks,
                timeout_seconds,
            } => (
                false,
                reasons::UPLOAD_TIMEOUT,
                format!(
                    "the upload timeout ({timeout_seconds} s) passed with {} of {tracks} track(s) not sealed: {}; they are processed from the chunks storage holds, and chunks after a gap are kept",
                    open.len(),
                    open.join(", ")
                ),
            ),
        }
    }
}

/// Judges `rj`'s uploads at `now`.
pub fn upload_gate(rj: &RecordingJob, now: jiff::Timestamp) -> Gate {
    let tracks = rj.spec.tracks.len();
    let open: Vec<String> = rj
        .spec
        .tracks
        .iter()
        .filter(|t| !t.is_sealed())
        .map(|t| t.participant_id.clone())
        .collect();
    if open.is_empty() {
        return Gate::Sealed { tracks };
    }
    let timeout_seconds = rj.spec.upload_timeout_seconds.clamp(0, 86_400);
    let created = rj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let until = created
        .checked_add(jiff::SignedDuration::from_secs(timeout_seconds))
        .unwrap_or(created);
    if now < until {
        Gate::Waiting {
            open,
            tracks,
            until,
        }
    } else {
        Gate::TimedOut {
            open,
            tracks,
            timeout_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::recording_job;

    fn rj(tracks: &str, timeout: Option<i64>) -> RecordingJob {
        let timeout = timeout.map_or(String::new(), |t| format!("  uploadTimeoutSeconds: {t}\n"));
        recording_job(&format!(
            r#"
metadata: {{name: rec-1, namespace: studio, uid: u, generation: 1, creationTimestamp: "2026-01-01T10:00:00Z"}}
spec:
  roomId: room1
  recordingId: r1
  tracks: {tracks}
  output: {{prefix: out/}}
{timeout}"#
        ))
    }

    const BOTH_SEALED: &str = "[{participantId: alice, source: {prefix: c/alice/, chunkCount: 3}}, {participantId: bob, source: {prefix: c/bob/, chunkCount: 9}}]";
    const BOB_OPEN: &str = "[{participantId: alice, source: {prefix: c/alice/, chunkCount: 3}}, {participantId: bob, source: {prefix: c/bob/}}]";
    const BOTH_OPEN: &str = "[{participantId: alice, source: {prefix: c/alice/}}, {participantId: bob, source: {prefix: c/bob/}}]";

    #[test]
    fn the_gate_opens_when_every_track_is_sealed_or_the_wait_is_over() {
        struct Row {
            name: &'static str,
            tracks: &'static str,
            timeout: Option<i64>,
            at: &'static str,
            open: bool,
            reason: &'static str,
            message_contains: &'static str,
        }
        let rows = [
            Row {
                name: "every track sealed, at once",
                tracks: BOTH_SEALED,
                timeout: None,
                at: "2026-01-01T10:00:00Z",
                open: true,
                reason: "AllTracksSealed",
                message_contains: "every track is sealed (2 of 2)",
            },
            Row {
                name: "one track unsealed, within the default 600 s",
                tracks: BOB_OPEN,
                timeout: None,
                at: "2026-01-01T10:09:59Z",
                open: false,
                reason: "WaitingForUploads",
                message_contains: "waiting for 1 of 2 track(s) to be sealed: bob; processing starts at 2026-01-01T10:10:00Z",
            },
            Row {
                name: "one track unsealed, the default 600 s over",
                tracks: BOB_OPEN,
                timeout: None,
                at: "2026-01-01T10:10:00Z",
                open: true,
                reason: "UploadTimeout",
                message_contains: "(600 s) passed with 1 of 2 track(s) not sealed: bob",
            },
            Row {
                name: "both unsealed, a short timeout not yet over",
                tracks: BOTH_OPEN,
                timeout: Some(5),
                at: "2026-01-01T10:00:04Z",
                open: false,
                reason: "WaitingForUploads",
                message_contains: "2 of 2 track(s) to be sealed: alice, bob",
            },
            Row {
                name: "both unsealed, a short timeout over",
                tracks: BOTH_OPEN,
                timeout: Some(5),
                at: "2026-01-01T10:00:06Z",
                open: true,
                reason: "UploadTimeout",
                message_contains: "not sealed: alice, bob",
            },
            Row {
                name: "timeout 0: no wait at all",
                tracks: BOB_OPEN,
                timeout: Some(0),
                at: "2026-01-01T10:00:00Z",
                open: true,
                reason: "UploadTimeout",
                message_contains: "(0 s) passed",
            },
            Row {
                name: "sealed after the timeout: sealed wins",
                tracks: BOTH_SEALED,
                timeout: Some(5),
                at: "2026-01-01T11:00:00Z",
                open: true,
                reason: "AllTracksSealed",
                message_contains: "every track is sealed",
            },
        ];
        for row in rows {
            let gate = upload_gate(&rj(row.tracks, row.timeout), row.at.parse().unwrap());
            let (status, reason, message) = gate.condition();
            assert_eq!(gate.is_open(), row.open, "{}: {gate:?}", row.name);
            assert_eq!(status, row.reason == "AllTracksSealed", "{}", row.name);
            assert_eq!(reason, row.reason, "{}", row.name);
            assert!(
                message.contains(row.message_contains),
                "{}: {message:?} lacks {:?}",
                row.name,
                row.message_contains
            );
        }
    }
}
