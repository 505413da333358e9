//! What this replica knows of every recording, and which socket.io events a change calls for.
//!
//! The [`Book`] is fed the events of two watches: recording markers (ConfigMaps the API writes when
//! a recording starts) and RecordingJobs (created when it stops, their status written by the
//! operator and the worker). It answers each with the events the room must hear. It is pure (no
//! I/O, the clock passed in) so that its rules are unit-tested here:
//!
//! - each change is announced once, in order; the first listing after start announces nothing
//!   (those events were told by whoever was running then), and a relist after a dropped watch
//!   announces only what really changed meanwhile;
//! - phase, outputs, attempts and failure changes go out at once; a change of progress alone goes
//!   out at most once per progress interval (default [`PROGRESS_INTERVAL`]) per recording, the latest value winning;
//! - a snapshot of a room is what the room was last told, so a socket that joins hears exactly
//!   the state the others have, and then the same changes as they.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use kube::runtime::watcher::Event;
use mixdown_crds::{RecordingJob, RecordingOutput};

/// Most one recording's progress-only updates are sent.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// A recording marker, as read from its ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The resource name (shared with the RecordingJob of the same recording).
    pub name: String,
    pub room_id: String,
    pub recording_id: String,
    pub started_at: String,
    pub started_by: String,
    /// Chunks confirmed so far, by participant, as the replicas that took the confirms wrote them.
    pub confirmed: BTreeMap<String, u32>,
    /// Display names, by participant, as their tokens gave them with their first confirm.
    pub names: BTreeMap<String, String>,
}

/// What a socket is told of a RecordingJob.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub phase: String,
    pub progress: i32,
    pub attempts: i32,
    pub outputs: Vec<RecordingOutput>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// Each participant's track: sealed (with its chunk count) or still uploading.
    pub tracks: Vec<TrackView>,
    /// Where the mixdown is, for a recording that makes one.
    pub mixdown: Option<MixdownView>,
}

/// Where a recording's mixdown is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MixdownView {
    /// `mixing` (the participants' files are ready, the mixdown is being made), `ready` or
    /// `failed`.
    pub state: &'static str,
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl MixdownView {
    /// From the operator's MixdownReady condition, or the worker's `readyOutputs` before the
    /// operator said anything. `None` for a recording without a mixdown.
    fn of(status: &mixdown_crds::RecordingJobStatus) -> Option<MixdownView> {
        let finished = status.phase.is_some_and(mixdown_crds::Phase::is_finished);
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == mixdown_crds::names::conditions::MIXDOWN_READY);
        match condition {
            Some(c) if c.status == "True" => Some(MixdownView {
                state: "ready",
                reason: None,
                message: None,
            }),
            Some(c) if c.reason != mixdown_crds::names::reasons::MIXING || finished => {
                Some(MixdownView {
                    state: "failed",
                    reason: Some(c.reason.clone()),
                    message: Some(c.message.clone()),
                })
            }
            // The worker lists the files before its mixdown (below 100 %); a worker without
            // one lists them in its last write, at 100 %.
            _ if !finished
                && (condition.is_some()
                    || (!status.ready_outputs.is_empty() && status.progress != Some(100))) =>
            {
                Some(MixdownView {
                    state: "mixing",
                    reason: None,
                    message: None,
                })
            }
            _ if status.outputs.iter().any(|o| o.is_mixdown()) => Some(MixdownView {
                state: "ready",
                reason: None,
                message: None,
            }),
            _ => None,
        }
    }
}

/// One track as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackView {
    pub participant_id: String,
    /// Set once the participant's page sealed the track.
    pub chunk_count: Option<u32>,
}

impl View {
    pub fn of(rj: &RecordingJob) -> View {
        let status = rj.status.clone().unwrap_or_default();
        let unsealed = rj.spec.tracks.iter().any(|t| !t.is_sealed());
        // Not judged by the operator yet: what it will say first.
        let phase = status
            .phase
            .map_or(
                if unsealed { "Uploading" } else { "Pending" },
                mixdown_crds::Phase::as_str,
            )
            .to_string();
        let finished = status.phase.is_some_and(mixdown_crds::Phase::is_finished);
        View {
            progress: match status.phase {
                Some(mixdown_crds::Phase::Succeeded) => 100,
                _ => status.progress.unwrap_or(0).clamp(0, 100),
            },
            attempts: status.attempts.unwrap_or(0),
            mixdown: MixdownView::of(&status),
            outputs: outputs_of(&status),
            // A reason on a job still running belongs to a retried attempt, not to the result.
            reason: status.reason.filter(|_| finished),
            message: status.message.filter(|_| finished),
            phase,
            tracks: rj
                .spec
                .tracks
                .iter()
                .map(|t| TrackView {
                    participant_id: t.participant_id.clone(),
                    chunk_count: t.source.chunk_count,
                })
                .collect(),
        }
    }

    pub fn failed(&self) -> bool {
        self.phase == "Failed"
    }

    fn same_but_progress(&self, other: &View) -> bool {
        self.phase == other.phase
            && self.attempts == other.attempts
            && self.outputs == other.outputs
            && self.reason == other.reason
            && self.message == other.message
            && self.tracks == other.tracks
            && self.mixdown == other.mixdown
    }
}

/// The files a room can download: once processing succeeded, the operator's `outputs` (the
/// mixdown first); before, the participants' files the worker verified (`readyOutputs`) while
/// its mixdown is being made, and still those if the mixdown's attempts ended in failure: a
/// mixdown never hides good files.
fn outputs_of(status: &mixdown_crds::RecordingJobStatus) -> Vec<RecordingOutput> {
    let mut outputs = if !status.outputs.is_empty() {
        status.outputs.clone()
    } else {
        status.ready_outputs.clone()
    };
    outputs.sort_by_key(|o| !o.is_mixdown());
    outputs
}

/// A RecordingJob as the book keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobInfo {
    pub name: String,
    pub room_id: String,
    pub recording_id: String,
    pub view: View,
}

impl JobInfo {
    pub fn of(rj: &RecordingJob) -> Option<JobInfo> {
        Some(JobInfo {
            name: rj.metadata.name.clone()?,
            room_id: rj.spec.room_id.clone(),
            recording_id: rj.spec.recording_id.clone(),
            view: View::of(rj),
        })
    }
}

/// One event for a room (or, in a snapshot, for one socket).
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    /// `start-rec`: a recording started; every page starts its recorder.
    StartRec { room: String, recording_id: String },
    /// `stop-rec`: the recording stopped and its RecordingJob exists.
    StopRec { room: String, recording_id: String },
    /// `video-processing-started`, with the whole state.
    Started {
        room: String,
        recording_id: String,
        job_name: String,
        view: View,
    },
    /// `video-processing-update`, with the whole state.
    Update {
        room: String,
        recording_id: String,
        job_name: String,
        view: View,
    },
    /// `upload-progress`: a participant's confirmed chunk count went up.
    UploadProgress {
        room: String,
        recording_id: String,
        participant_id: String,
        confirmed: u32,
        /// The participant's display name, when their token has one.
        name: Option<String>,
    },
    /// `video-processing-error`: processing failed, or its RecordingJob was deleted unfinished.
    Error {
        room: String,
        recording_id: String,
        reason: String,
        message: String,
    },
}

impl Out {
    pub fn room(&self) -> &str {
        match self {
            Out::StartRec { room, .. }
            | Out::StopRec { room, .. }
            | Out::Started { room, .. }
            | Out::Update { room, .. }
            | Out::UploadProgress { room, .. }
            | Out::Error { room, .. } => room,
        }
    }
}

/// A RecordingJob's state: what it is, and what the room was last told.
#[derive(Clone, Debug)]
pub struct Tracked {
    pub job_name: String,
    pub current: View,
    pub sent: View,
    sent_at: Instant,
    pending: bool,
}

/// One recording: its marker, its RecordingJob, or both.
#[derive(Clone, Debug)]
pub struct Entry {
    pub room_id: String,
    pub recording_id: String,
    pub marker: Option<Marker>,
    pub job: Option<Tracked>,
}

/// Where one watch is in its listing.
#[derive(Default, Debug)]
struct Sync {
    /// Listed everything at least once.
    synced: bool,
    /// Names seen since the current (re)list began.
    listing: Option<HashSet<String>>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Book {
    /// Progress-only updates of one recording go out at most this often.
    progress_interval: Duration,
    entries: BTreeMap<String, Entry>,
    rooms: BTreeMap<String, BTreeSet<String>>,
    markers: Sync,
    jobs: Sync,
}

impl Default for Book {
    fn default() -> Book {
        Book::with_progress_interval(PROGRESS_INTERVAL)
    }
}

impl Book {
    pub fn with_progress_interval(progress_interval: Duration) -> Book {
        Book {
            progress_interval,
            entries: BTreeMap::new(),
            rooms: BTreeMap::new(),
            markers: Sync::default(),
            jobs: Sync::default(),
        }
    }

    /// Both watches have listed everything once: snapshots are complete.
    pub fn synced(&self) -> bool {
        self.markers.synced && self.jobs.synced
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// The recordings of `room`, oldest name first.
    pub fn room(&self, room: &str) -> Vec<&Entry> {
        self.rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter_map(|name| self.entries.get(name))
            .collect()
    }

    /// What a socket joining `room` is told: the running recordings (`start-rec`, so a late
    /// joiner records too, and each participant's confirmed chunks) and each RecordingJob's state
    /// as last told to the room.
    pub fn snapshot(&self, room: &str) -> Vec<Out> {
        let mut out = Vec::new();
        for entry in self.room(room) {
            let (room, recording_id) = (entry.room_id.clone(), entry.recording_id.clone());
            match &entry.job {
                Some(job) => out.push(Out::Update {
                    room: room.clone(),
                    recording_id: recording_id.clone(),
                    job_name: job.job_name.clone(),
                    view: job.sent.clone(),
                }),
                None => out.push(Out::StartRec {
                    room: room.clone(),
                    recording_id: recording_id.clone(),
                }),
            }
            // Each participant's confirmed chunks and name, while processing too: a page that
            // joins late names everyone in the room's panel.
            if let Some(marker) = &entry.marker {
                for (participant, confirmed) in &marker.confirmed {
                    out.push(Out::UploadProgress {
                        room: room.clone(),
                        recording_id: recording_id.clone(),
                        participant_id: participant.clone(),
                        confirmed: *confirmed,
                        name: marker.names.get(participant).cloned(),
                    });
                }
            }
        }
        out
    }

    pub fn marker_event(&mut self, event: Event<Marker>) -> Vec<Out> {
        let mut out = Vec::new();
        match event {
            Event::Init => self.markers.listing = Some(HashSet::new()),
            Event::InitApply(marker) => {
                if let Some(seen) = &mut self.markers.listing {
                    seen.insert(marker.name.clone());
                }
                let live = self.markers.synced;
                self.apply_marker(marker, live, &mut out);
            }
            Event::Apply(marker) => self.apply_marker(marker, true, &mut out),
            Event::Delete(marker) => self.delete_marker(&marker.name),
            Event::InitDone => {
                let seen = self.markers.listing.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .entries
                    .iter()
                    .filter(|(name, e)| e.marker.is_some() && !seen.contains(*name))
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in gone {
                    self.delete_marker(&name);
                }
                self.markers.synced = true;
            }
        }
        out
    }

    pub fn job_event(&mut self, event: Event<JobInfo>, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        match event {
            Event::Init => self.jobs.listing = Some(HashSet::new()),
            Event::InitApply(job) => {
                if let Some(seen) = &mut self.jobs.listing {
                    seen.insert(job.name.clone());
                }
                let live = self.jobs.synced;
                self.apply_job(job, live, now, &mut out);
            }
            Event::Apply(job) => self.apply_job(job, true, now, &mut out),
            Event::Delete(job) => {
                let live = self.jobs.synced;
                self.delete_job(&job.name, live, &mut out);
            }
            Event::InitDone => {
                let seen = self.jobs.listing.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .entries
                    .iter()
                    .filter(|(name, e)| e.job.is_some() && !seen.contains(*name))
                    .map(|(name, _)| name.clone())
                    .collect();
                let live = self.jobs.synced;
                for name in gone {
                    self.delete_job(&name, live, &mut out);
                }
                self.jobs.synced = true;
            }
        }
        out
    }

    /// Sends the progress that waited for its interval; call a few times a second.
    pub fn tick(&mut self, now: Instant) -> Vec<Out> {
        let interval = self.progress_interval;
        let mut out = Vec::new();
        for entry in self.entries.values_mut() {
            if let Some(job) = &mut entry.job
                && job.pending
                && now.duration_since(job.sent_at) >= interval
            {
                job.sent = job.current.clone();
                job.sent_at = now;
                job.pending = false;
                out.push(Out::Update {
                    room: entry.room_id.clone(),
                    recording_id: entry.recording_id.clone(),
                    job_name: job.job_name.clone(),
                    view: job.sent.clone(),
                });
            }
        }
        out
    }

    fn entry(&mut self, name: &str, room: &str, recording: &str) -> &mut Entry {
        self.rooms
            .entry(room.to_string())
            .or_default()
            .insert(name.to_string());
        self.entries
            .entry(name.to_string())
            .or_insert_with(|| Entry {
                room_id: room.to_string(),
                recording_id: recording.to_string(),
                marker: None,
                job: None,
            })
    }

    fn forget_if_empty(&mut self, name: &str) {
        if let Some(entry) = self.entries.get(name)
            && entry.marker.is_none()
            && entry.job.is_none()
        {
            let room = entry.room_id.clone();
            self.entries.remove(name);
            if let Some(names) = self.rooms.get_mut(&room) {
                names.remove(name);
                if names.is_empty() {
                    self.rooms.remove(&room);
                }
            }
        }
    }

    fn apply_marker(&mut self, mut marker: Marker, live: bool, out: &mut Vec<Out>) {
        let name = marker.name.clone();
        let (room, recording) = (marker.room_id.clone(), marker.recording_id.clone());
        let entry = self.entry(&name, &room, &recording);
        let old = entry.marker.take();
        if old.is_none() && live && entry.job.is_none() {
            out.push(Out::StartRec {
                room: room.clone(),
                recording_id: recording.clone(),
            });
        }
        // Counts only go up: a replica that saw fewer confirms never takes one back.
        let (before, names_before) = old.map(|m| (m.confirmed, m.names)).unwrap_or_default();
        for (participant, name) in names_before {
            marker.names.entry(participant).or_insert(name);
        }
        for (participant, count) in &before {
            let now = marker
                .confirmed
                .entry(participant.clone())
                .or_insert(*count);
            *now = (*now).max(*count);
        }
        if live {
            for (participant, count) in &marker.confirmed {
                if before.get(participant).is_none_or(|b| count > b) {
                    out.push(Out::UploadProgress {
                        room: room.clone(),
                        recording_id: recording.clone(),
                        participant_id: participant.clone(),
                        confirmed: *count,
                        name: marker.names.get(participant).cloned(),
                    });
                }
            }
        }
        entry.marker = Some(marker);
    }

    fn delete_marker(&mut self, name: &str) {
        if let Some(entry) = self.entries.get_mut(name) {
            entry.marker = None;
        }
        self.forget_if_empty(name);
    }

    fn apply_job(&mut self, job: JobInfo, live: bool, now: Instant, out: &mut Vec<Out>) {
        let interval = self.progress_interval;
        let name = job.name.clone();
        let entry = self.entry(&name, &job.room_id, &job.recording_id);
        let (room, recording_id) = (entry.room_id.clone(), entry.recording_id.clone());
        match &mut entry.job {
            None => {
                entry.job = Some(Tracked {
                    job_name: name.clone(),
                    current: job.view.clone(),
                    sent: job.view.clone(),
                    sent_at: now,
                    pending: false,
                });
                if live {
                    out.push(Out::StopRec {
                        room: room.clone(),
                        recording_id: recording_id.clone(),
                    });
                    out.push(Out::Started {
                        room: room.clone(),
                        recording_id: recording_id.clone(),
                        job_name: name.clone(),
                        view: job.view.clone(),
                    });
                    if job.view.failed() {
                        out.push(error_of(&room, &recording_id, &job.view));
                    }
                }
            }
            Some(tracked) => {
                tracked.current = job.view.clone();
                if tracked.current == tracked.sent {
                    tracked.pending = false;
                    return;
                }
                let urgent = !tracked.current.same_but_progress(&tracked.sent);
                let due = now.duration_since(tracked.sent_at) >= interval;
                if !live {
                    // The first listing: this is what the room was told before we started.
                    tracked.sent = tracked.current.clone();
                    tracked.pending = false;
                    return;
                }
                if urgent || due {
                    let newly_failed = tracked.current.failed() && !tracked.sent.failed();
                    tracked.sent = tracked.current.clone();
                    tracked.sent_at = now;
                    tracked.pending = false;
                    out.push(Out::Update {
                        room: room.clone(),
                        recording_id: recording_id.clone(),
                        job_name: name,
                        view: tracked.sent.clone(),
                    });
                    if newly_failed {
                        out.push(error_of(&room, &recording_id, &tracked.sent));
                    }
                } else {
                    tracked.pending = true;
                }
            }
        }
    }

    fn delete_job(&mut self, name: &str, live: bool, out: &mut Vec<Out>) {
        if let Some(entry) = self.entries.get_mut(name)
            && let Some(job) = entry.job.take()
            && live
            && !matches!(job.sent.phase.as_str(), "Succeeded" | "Failed")
        {
            out.push(Out::Error {
                room: entry.room_id.clone(),
                recording_id: entry.recording_id.clone(),
                reason: "RecordingJobDeleted".into(),
                message: format!(
                    "processing was cancelled: the RecordingJob {name} was deleted before it finished; the chunks are still in storage"
                ),
            });
        }
        self.forget_if_empty(name);
    }
}

fn error_of(room: &str, recording_id: &str, view: &View) -> Out {
    Out::Error {
        room: room.to_string(),
        recording_id: recording_id.to_string(),
        reason: view.reason.clone().unwrap_or_else(|| "Failed".into()),
        message: view
            .message
            .clone()
            .unwrap_or_else(|| "processing failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(name: &str, room: &str) -> Marker {
        Marker {
            name: name.into(),
            room_id: room.into(),
            recording_id: format!("id-{name}"),
            started_at: "2026-01-01T00:00:00Z".into(),
            started_by: "host".into(),
            confirmed: BTreeMap::new(),
            names: BTreeMap::new(),
        }
    }

    fn job(name: &str, room: &str, phase: &str, progress: i32) -> JobInfo {
        JobInfo {
            name: name.into(),
            room_id: room.into(),
            recording_id: format!("id-{name}"),
            view: View {
                phase: phase.into(),
                progress,
                attempts: 1,
                outputs: Vec::new(),
                reason: (phase == "Failed").then(|| "MissingChunk".into()),
                message: (phase == "Failed").then(|| "chunk 3 is missing".into()),
                tracks: Vec::new(),
                mixdown: None,
            },
        }
    }

    #[test]
    fn the_room_sees_the_participants_files_while_the_mixdown_is_made_and_the_mixdown_first() {
        let rj = |status: &str| -> RecordingJob {
            serde_yaml::from_str(&format!(
                r#"
apiVersion: mixdown.dev/v1alpha1
kind: RecordingJob
metadata: {{name: rec-1}}
spec:
  roomId: room1
  recordingId: rec1
  tracks: [{{participantId: a, source: {{prefix: c/a/, chunkCount: 2}}}}, {{participantId: b, source: {{prefix: c/b/, chunkCount: 2}}}}]
  output: {{prefix: out/}}
status: {status}
"#
            ))
            .expect("a RecordingJob")
        };
        let track = |p: &str| {
            format!("{{participantId: {p}, key: out/{p}.mp4, sizeBytes: 10, durationSeconds: 2.0}}")
        };
        let mixdown = "{kind: mixdown, key: out/mixdown.mp4, sizeBytes: 30, durationSeconds: 5.0}";
        let ready = format!("[{}, {}]", track("a"), track("b"));
        let keys = |v: &View| v.outputs.iter().map(|o| o.key.clone()).collect::<Vec<_>>();

        // Running, the worker listed the participants' files: they are ready, the mixdown not.
        let running = View::of(&rj(&format!("{{phase: Running, readyOutputs: {ready}}}")));
        assert_eq!(keys(&running), ["out/a.mp4", "out/b.mp4"]);
        assert_eq!(running.mixdown.as_ref().map(|m| m.state), Some("mixing"));
        // Succeeded: the operator's outputs, the mixdown first whatever their order.
        let done = View::of(&rj(&format!(
            "{{phase: Succeeded, readyOutputs: {ready}, outputs: [{}, {mixdown}, {}], conditions: [{{type: MixdownReady, status: 'True', reason: MixdownWritten, message: m, lastTransitionTime: '2026-01-01T00:00:00Z'}}]}}",
            track("a"),
            track("b")
        )));
        assert_eq!(keys(&done), ["out/mixdown.mp4", "out/a.mp4", "out/b.mp4"]);
        assert_eq!(done.mixdown.as_ref().map(|m| m.state), Some("ready"));
        // A mixdown that could not be made: the files stay, and the room hears why.
        let failed = View::of(&rj(&format!(
            "{{phase: Succeeded, outputs: {ready}, conditions: [{{type: MixdownReady, status: 'False', reason: MixdownFailed, message: 'track b cannot be read', lastTransitionTime: '2026-01-01T00:00:00Z'}}]}}"
        )));
        assert_eq!(keys(&failed), ["out/a.mp4", "out/b.mp4"]);
        let m = failed.mixdown.expect("a mixdown state");
        assert_eq!(
            (m.state, m.reason.as_deref(), m.message.as_deref()),
            (
                "failed",
                Some("MixdownFailed"),
                Some("track b cannot be read")
            )
        );
        // Every attempt failed after the files were verified: still downloadable.
        let gave_up = View::of(&rj(&format!(
            "{{phase: Failed, reason: BackoffLimitExceeded, readyOutputs: {ready}}}"
        )));
        assert_eq!(keys(&gave_up), ["out/a.mp4", "out/b.mp4"]);
        // A worker without a mixdown lists the files in its last write, at 100 %: ready, and
        // nothing said to be mixing.
        let unmixed = View::of(&rj(&format!(
            "{{phase: Running, progress: 100, readyOutputs: {ready}}}"
        )));
        assert_eq!(keys(&unmixed), ["out/a.mp4", "out/b.mp4"]);
        assert_eq!(unmixed.mixdown, None);
        // No mixdown asked for: none said.
        let plain = View::of(&rj(&format!(
            "{{phase: Succeeded, outputs: [{}]}}",
            track("a")
        )));
        assert_eq!(plain.mixdown, None);
        // A change of the mixdown's state is news on its own.
        assert!(!running.same_but_progress(&View {
            mixdown: None,
            ..running.clone()
        }));
    }

    fn synced() -> Book {
        let mut book = Book::default();
        let t = Instant::now();
        for e in [Event::Init, Event::InitDone] {
            book.marker_event(e.clone());
        }
        book.job_event(Event::Init, t);
        book.job_event(Event::InitDone, t);
        assert!(book.synced());
        book
    }

    fn names(out: &[Out]) -> Vec<&'static str> {
        out.iter()
            .map(|o| match o {
                Out::StartRec { .. } => "start-rec",
                Out::StopRec { .. } => "stop-rec",
                Out::Started { .. } => "started",
                Out::Update { .. } => "update",
                Out::UploadProgress { .. } => "upload-progress",
                Out::Error { .. } => "error",
            })
            .collect()
    }

    #[test]
    fn the_first_listing_announces_nothing_and_later_changes_once_each() {
        let mut book = Book::default();
        let t = Instant::now();
        assert!(book.marker_event(Event::Init).is_empty());
        assert!(
            book.marker_event(Event::InitApply(marker("a", "r")))
                .is_empty()
        );
        book.marker_event(Event::InitDone);
        book.job_event(Event::Init, t);
        assert!(
            book.job_event(Event::InitApply(job("a", "r", "Running", 40)), t)
                .is_empty()
        );
        book.job_event(Event::InitDone, t);

        let out = book.marker_event(Event::Apply(marker("b", "r")));
        assert_eq!(names(&out), ["start-rec"]);
        // The same marker again (a resync) is not a new start.
        assert!(book.marker_event(Event::Apply(marker("b", "r"))).is_empty());
        let out = book.job_event(Event::Apply(job("b", "r", "Pending", 0)), t);
        assert_eq!(names(&out), ["stop-rec", "started"]);
        let out = book.job_event(Event::Apply(job("b", "r", "Running", 0)), t);
        assert_eq!(names(&out), ["update"]);
        assert!(
            book.job_event(Event::Apply(job("b", "r", "Running", 0)), t)
                .is_empty()
        );
    }

    #[test]
    fn progress_is_coalesced_to_one_update_a_second_and_phases_never_wait() {
        let mut book = synced();
        let t0 = Instant::now();
        book.job_event(Event::Apply(job("a", "r", "Running", 0)), t0);
        let mut sent = Vec::new();
        for (ms, p) in [(100, 5), (200, 10), (300, 15)] {
            sent.extend(book.job_event(
                Event::Apply(job("a", "r", "Running", p)),
                t0 + Duration::from_millis(ms),
            ));
        }
        assert!(sent.is_empty(), "progress within a second waits: {sent:?}");
        assert!(book.tick(t0 + Duration::from_millis(900)).is_empty());
        let flushed = book.tick(t0 + Duration::from_millis(1000));
        assert!(
            matches!(&flushed[..], [Out::Update { view, .. }] if view.progress == 15),
            "the latest progress goes out: {flushed:?}"
        );
        assert!(
            book.tick(t0 + Duration::from_millis(2500)).is_empty(),
            "sent once"
        );

        // A terminal phase right after a progress update goes out at once.
        book.job_event(
            Event::Apply(job("a", "r", "Running", 20)),
            t0 + Duration::from_millis(2600),
        );
        let out = book.job_event(
            Event::Apply(job("a", "r", "Succeeded", 100)),
            t0 + Duration::from_millis(2700),
        );
        assert!(
            matches!(&out[..], [Out::Update { view, .. }] if view.phase == "Succeeded"),
            "{out:?}"
        );
        assert!(
            book.tick(t0 + Duration::from_secs(10)).is_empty(),
            "the pending progress was superseded"
        );
    }

    #[test]
    fn a_failure_is_an_update_and_an_error_with_the_reason() {
        let mut book = synced();
        let t = Instant::now();
        book.job_event(Event::Apply(job("a", "r", "Running", 10)), t);
        let out = book.job_event(Event::Apply(job("a", "r", "Failed", 10)), t);
        assert_eq!(names(&out), ["update", "error"]);
        assert!(
            matches!(&out[1], Out::Error { reason, message, .. } if reason == "MissingChunk" && message.contains("chunk 3"))
        );
    }

    #[test]
    fn a_relist_announces_only_what_changed_and_what_went() {
        let mut book = synced();
        let t = Instant::now();
        book.job_event(Event::Apply(job("a", "r", "Running", 10)), t);
        book.job_event(Event::Apply(job("b", "r", "Running", 10)), t);
        book.job_event(Event::Apply(job("c", "r", "Succeeded", 100)), t);
        // The watch dropped; meanwhile a succeeded, b was deleted by hand, c's TTL removed it.
        let later = t + Duration::from_secs(5);
        let mut out = book.job_event(Event::Init, later);
        out.extend(book.job_event(Event::InitApply(job("a", "r", "Succeeded", 100)), later));
        out.extend(book.job_event(Event::InitDone, later));
        assert_eq!(names(&out), ["update", "error"]);
        assert!(matches!(&out[1], Out::Error { reason, .. } if reason == "RecordingJobDeleted"));
        assert!(book.get("b").is_none() && book.get("c").is_none());
    }

    #[test]
    fn upload_progress_from_any_replica_goes_out_when_a_count_rises() {
        let mut book = synced();
        book.marker_event(Event::Apply(marker("a", "r")));
        let with = |counts: &[(&str, u32)]| {
            let mut m = marker("a", "r");
            m.confirmed = counts.iter().map(|(p, c)| (p.to_string(), *c)).collect();
            Event::Apply(m)
        };
        let out = book.marker_event(with(&[("alice", 3)]));
        assert!(
            matches!(&out[..], [Out::UploadProgress { participant_id, confirmed: 3, .. }] if participant_id == "alice"),
            "{out:?}"
        );
        // Another replica writes bob's count and an older count of alice's: only bob is news.
        let out = book.marker_event(with(&[("alice", 2), ("bob", 1)]));
        assert!(
            matches!(&out[..], [Out::UploadProgress { participant_id, confirmed: 1, .. }] if participant_id == "bob"),
            "{out:?}"
        );
        assert!(
            book.marker_event(with(&[("alice", 3), ("bob", 1)]))
                .is_empty()
        );
        let snapshot = book.snapshot("r");
        assert_eq!(
            names(&snapshot),
            ["start-rec", "upload-progress", "upload-progress"]
        );
    }

    #[test]
    fn a_snapshot_is_what_the_room_was_told_and_only_that_room() {
        let mut book = synced();
        let t = Instant::now();
        book.marker_event(Event::Apply(marker("a", "r")));
        book.marker_event(Event::Apply(marker("b", "r")));
        book.marker_event(Event::Apply(marker("x", "other")));
        book.job_event(Event::Apply(job("b", "r", "Running", 0)), t);
        book.job_event(
            Event::Apply(job("b", "r", "Running", 30)),
            t + Duration::from_millis(10),
        );
        let snapshot = book.snapshot("r");
        assert_eq!(names(&snapshot), ["start-rec", "update"]);
        assert!(snapshot.iter().all(|o| o.room() == "r"));
        assert!(
            matches!(&snapshot[1], Out::Update { view, .. } if view.progress == 0),
            "the pending progress is not in the snapshot until the room hears it"
        );
    }
}
