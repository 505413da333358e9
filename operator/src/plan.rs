//! The reconciler's decisions, as pure functions of what it read: which steps to take on the Job
//! and the status once the desired status is derived ([`steps`]), which Events tell what changed
//! ([`announcement`]), and when to look again ([`next`]). The [`crate::controller`] fetches,
//! calls these, and applies what they say; their tests are tables of situations.
//!
//! Admission (the concurrency cap) is [`crate::slots`], the status itself
//! [`crate::status::derive_status`], the upload wait [`crate::uploads::upload_gate`] and a retry
//! [`crate::retry::plan_retry`]: pure too, each with its own tests.

use std::time::Duration;

use kube::runtime::events::{Event, EventType};
use mixdown_crds::names::{conditions, reasons};
use mixdown_crds::{Phase, RecordingJobStatus};

use crate::status::completion_message;
use crate::uploads::Gate;

/// How often a Pending RecordingJob looks again for why its worker Pod has not started.
pub const PENDING_RECHECK: Duration = Duration::from_secs(5);
/// How often a Queued RecordingJob looks for a free slot even without a wake-up (a deleted
/// RecordingJob's Job frees its slot without telling anyone).
pub const QUEUED_RECHECK: Duration = Duration::from_secs(5);
/// Periodic re-reconcile of everything else, in case a watch event was missed.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Added to every timed requeue, so that the deadline it waits for has passed when it runs.
const PAST_DEADLINE: Duration = Duration::from_millis(100);

/// What a reconcile knows once it derived the desired status (see [`steps`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Facts {
    /// The RecordingJob has a Job of its own, and it still holds a slot
    /// ([`crate::controller::job_is_running`]).
    pub job_running: bool,
    /// An attempt of that Job ended with bad input (exit 2): retrying cannot help.
    pub bad_input: bool,
    /// The Job kept its `podFailurePolicy` (the server enforces it, from Kubernetes 1.26; an
    /// older one drops the field): it fails on bad input by itself.
    pub pod_failure_policy: bool,
    /// Attempts (Pods) the Job made.
    pub attempts: usize,
    /// The progress in the status was written by an attempt before the current one.
    pub progress_stale: bool,
    /// The desired status differs from the one in place ([`crate::status::needs_write`]).
    pub needs_write: bool,
    /// Other Job creates are in flight (a burst).
    pub others_creating: bool,
    /// The RecordingJob was created recently enough for its status to wait for a burst.
    pub young: bool,
    /// This reconcile created the Job.
    pub created: bool,
}

/// Whether and how the desired status is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusWrite {
    /// It equals the status in place.
    Unchanged,
    /// Applied now.
    Write,
    /// Held back while a burst of Job creates goes on; tried again after [`STATUS_HELD_BACK`].
    HeldBack,
}

/// How soon a status write held back by a burst of Job creates is tried again (a change of the
/// RecordingJob, its Job or its Pods tries sooner).
pub const STATUS_HELD_BACK: Duration = Duration::from_secs(1);

/// What to do after deriving the desired status, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steps {
    /// Stop the Job from starting more Pods: an attempt failed on bad input, and the server
    /// dropped the Job's `podFailurePolicy`.
    pub stop_retries: bool,
    /// Remove the previous attempt's progress: a new attempt runs.
    pub clear_stale_progress: bool,
    /// The status write, and whether it is held back.
    pub status: StatusWrite,
    /// Delete the Job after the status is written: its worker Pod never started, and it must
    /// not hold a slot (nor keep pulling an image).
    pub delete_unstarted_job: bool,
}

/// The steps for a reconcile that derived `desired` from what it read (`facts`).
///
/// Burst mode: each RecordingJob costs the API server a create of the RecordingJob, one of its
/// Job and an apply of its status, and the apply is the dearest. While other Jobs are being
/// created, a young RecordingJob's status that does not finish it waits, so that a thousand
/// RecordingJobs at once get their Jobs (and their work started) first and their `Pending` and
/// `Running` a moment later. One RecordingJob at a time never waits. Final statuses never wait:
/// they free slots and carry the outputs; nor does the status that explains why a Job goes.
pub fn steps(desired: &RecordingJobStatus, facts: Facts) -> Steps {
    let delete_unstarted_job =
        facts.job_running && desired.reason.as_deref() == Some(reasons::POD_NOT_STARTED);
    let finishes = desired.phase.is_some_and(Phase::is_finished);
    let status = if !facts.needs_write {
        StatusWrite::Unchanged
    } else if !delete_unstarted_job && !finishes && facts.others_creating && facts.young {
        StatusWrite::HeldBack
    } else {
        StatusWrite::Write
    };
    Steps {
        stop_retries: facts.job_running && facts.bad_input && !facts.pod_failure_policy,
        clear_stale_progress: desired.phase == Some(Phase::Running)
            && facts.attempts > 1
            && facts.progress_stale,
        status,
        delete_unstarted_job,
    }
}

/// The Events of one reconcile and what they mean for the rest of the operator.
#[derive(Default)]
pub struct Announcement {
    pub events: Vec<Event>,
    /// A refused spec was edited and refused again: the Events are about this version of the
    /// RecordingJob, so the recorder does not fold them into the first refusal's series.
    pub about_this_version: bool,
    /// The RecordingJob has just finished: its slot is free, and it took this long (seconds from
    /// the worker's start, when known).
    pub finished: Option<(Phase, Option<f64>)>,
}

/// Events for what changed from `previous` to `desired`, once each: the Job created (`created`
/// names it), waiting for uploads or a slot (`max_running_jobs` slots), started, why a worker
/// cannot start, succeeded, failed, a spec change not applied, a Job deleted by hand.
pub fn announcement(
    previous: &RecordingJobStatus,
    desired: &RecordingJobStatus,
    created: Option<&str>,
    max_running_jobs: usize,
) -> Announcement {
    let mut events = Vec::new();
    if let Some(job) = created {
        events.push(event(
            EventType::Normal,
            reasons::JOB_CREATED,
            "CreateJob",
            format!("Created Job {job}"),
        ));
    }
    let uploads = |s: &RecordingJobStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == conditions::UPLOADS_COMPLETE)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) = uploads(desired)
        && uploads(previous).map(|(r, _)| r) != Some(reason.clone())
    {
        match reason.as_str() {
            reasons::UPLOAD_TIMEOUT => events.push(event(
                EventType::Warning,
                reasons::UPLOAD_TIMEOUT,
                "StartWithoutSeals",
                capitalize(&message),
            )),
            reasons::ALL_TRACKS_SEALED if previous.phase == Some(Phase::Uploading) => {
                events.push(event(
                    EventType::Normal,
                    reasons::ALL_TRACKS_SEALED,
                    "Seal",
                    capitalize(&message),
                ));
            }
            _ => {}
        }
    }
    let (before, after) = (previous.phase, desired.phase);
    let failed_event = || {
        event(
            EventType::Warning,
            desired.reason.as_deref().unwrap_or("Failed"),
            "Fail",
            desired.message.clone().unwrap_or_default(),
        )
    };
    // An edited spec refused again is news too, though the phase stays Failed.
    let refused_again = before == Some(Phase::Failed)
        && after == Some(Phase::Failed)
        && desired.job_name.is_none()
        && previous.observed_generation != desired.observed_generation;
    if refused_again {
        events.push(failed_event());
    }
    // A spec edit the Job cannot take (or one after the end), once per edit.
    let not_applied = |s: &RecordingJobStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == conditions::SPEC_APPLIED && c.status == "False")
            .map(|c| c.message.clone())
    };
    if let Some(message) = not_applied(desired)
        && not_applied(previous).as_ref() != Some(&message)
    {
        events.push(event(
            EventType::Warning,
            reasons::SPEC_CHANGE_NOT_APPLIED,
            "IgnoreSpecChange",
            capitalize(&message),
        ));
    }
    // A Job deleted by hand, while its Pods are still there.
    if !after.is_some_and(Phase::is_finished)
        && desired.reason.as_deref() == Some(reasons::JOB_DELETED)
        && previous.reason != desired.reason
    {
        events.push(event(
            EventType::Warning,
            reasons::JOB_DELETED,
            "WaitForPods",
            capitalize(desired.message.as_deref().unwrap_or_default()),
        ));
    }
    // Why the worker Pod cannot start, each time the cause changes.
    if after == Some(Phase::Pending)
        && let Some(reason) = desired.reason.as_deref()
        && reason != reasons::JOB_DELETED
        && (previous.reason.as_deref() != Some(reason) || before != after)
    {
        events.push(event(
            EventType::Warning,
            reason,
            "StartWorker",
            capitalize(desired.message.as_deref().unwrap_or_default()),
        ));
    }
    let mut finished = None;
    if before != after {
        match after {
            Some(Phase::Uploading) => {
                let message = uploads(desired).map(|(_, m)| m).unwrap_or_default();
                events.push(event(
                    EventType::Normal,
                    reasons::WAITING_FOR_UPLOADS,
                    "WaitForUploads",
                    capitalize(&message),
                ));
            }
            Some(Phase::Queued) => events.push(event(
                EventType::Normal,
                reasons::WAITING_FOR_SLOT,
                "Queue",
                format!("Waiting for one of the {max_running_jobs} processing slots"),
            )),
            Some(Phase::Running) => events.push(event(
                EventType::Normal,
                "Started",
                "Start",
                format!("Worker started (attempt {})", desired.attempts.unwrap_or(1)),
            )),
            Some(Phase::Succeeded) => {
                let mixdown_failed = desired
                    .conditions
                    .iter()
                    .find(|c| c.type_ == conditions::MIXDOWN_READY && c.status == "False");
                let message = desired
                    .conditions
                    .iter()
                    .find(|c| c.type_ == conditions::COMPLETE)
                    .map_or_else(
                        || completion_message(&desired.outputs, None),
                        |c| c.message.clone(),
                    );
                events.push(event(
                    // A track processed without its seal, a mixdown not made, or a file the
                    // status could not list, is worth a look.
                    if desired.outputs.iter().all(|o| o.sealed)
                        && mixdown_failed.is_none()
                        && !message.contains(crate::status::UNLISTED)
                    {
                        EventType::Normal
                    } else {
                        EventType::Warning
                    },
                    "Succeeded",
                    "Complete",
                    capitalize(&message),
                ));
                if let Some(failed) = mixdown_failed {
                    events.push(event(
                        EventType::Warning,
                        reasons::MIXDOWN_FAILED,
                        "Mix",
                        capitalize(&failed.message),
                    ));
                }
            }
            Some(Phase::Failed) => events.push(failed_event()),
            Some(Phase::Pending) | None => {}
        }
        if let Some(phase) = after
            && phase.is_finished()
            && !before.is_some_and(Phase::is_finished)
        {
            let took = match (&desired.start_time, &desired.completion_time) {
                (Some(start), Some(end)) => Some(end.0.duration_since(start.0).as_secs_f64()),
                _ => None,
            };
            finished = Some((phase, took));
        }
    }
    Announcement {
        events,
        about_this_version: refused_again,
        finished,
    }
}

/// What the reconciler does when it is done with a RecordingJob for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Look again after this long.
    Requeue(Duration),
    /// Nothing is due: wait for a change of the RecordingJob, its Job or its Pods.
    AwaitChange,
    /// The finished RecordingJob's TTL is over: delete it (its Job and Pods with it).
    DeleteExpired,
}

/// When to look at a RecordingJob again, from its `status`:
/// - Queued: soon, for a free slot;
/// - Pending: when the worker Pod's start deadline passes (`job_created` plus
///   `start_timeout_seconds`), and at least every [`PENDING_RECHECK`] for why it has not started
///   (the Job controller's Events wake nobody);
/// - Uploading: when the upload wait ends (`uploads`);
/// - finished: when the TTL is over (`ttl_seconds`, from `completionTime`), then delete it;
///   never, without a TTL;
/// - anything else: at the periodic resync.
pub fn next(
    status: &RecordingJobStatus,
    uploads: &Gate,
    job_created: Option<jiff::Timestamp>,
    start_timeout_seconds: i64,
    ttl_seconds: Option<i32>,
    now: jiff::Timestamp,
) -> Next {
    let until =
        |at: jiff::Timestamp| Duration::try_from(now.duration_until(at)).unwrap_or_default();
    match status.phase {
        Some(Phase::Queued) => Next::Requeue(QUEUED_RECHECK),
        Some(Phase::Pending) => {
            let left = job_created
                .filter(|_| status.job_name.is_some())
                .and_then(|created| {
                    created
                        .checked_add(jiff::SignedDuration::from_secs(
                            start_timeout_seconds.max(1),
                        ))
                        .ok()
                })
                .map_or(PENDING_RECHECK, until);
            Next::Requeue(left.min(PENDING_RECHECK) + PAST_DEADLINE)
        }
        Some(Phase::Uploading) => match uploads {
            Gate::Waiting { until: end, .. } => {
                Next::Requeue(until(*end).min(RESYNC) + PAST_DEADLINE)
            }
            _ => Next::Requeue(PAST_DEADLINE),
        },
        Some(phase) if phase.is_finished() => {
            let Some(ttl) = ttl_seconds else {
                return Next::AwaitChange;
            };
            let finished = status.completion_time.as_ref().map_or(now, |t| t.0);
            let expires = finished
                .checked_add(jiff::SignedDuration::from_secs(i64::from(ttl.max(0))))
                .unwrap_or(finished);
            if expires > now {
                Next::Requeue(until(expires).min(RESYNC) + PAST_DEADLINE)
            } else {
                Next::DeleteExpired
            }
        }
        _ => Next::Requeue(RESYNC),
    }
}

fn capitalize(message: &str) -> String {
    let mut chars = message.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// An Event, its note cut to the 1 kB an Event holds.
pub fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    let mut note = note;
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use mixdown_crds::RecordingOutput;

    fn status(phase: Option<Phase>) -> RecordingJobStatus {
        RecordingJobStatus {
            phase,
            ..RecordingJobStatus::default()
        }
    }

    fn with_reason(phase: Phase, reason: &str, message: &str) -> RecordingJobStatus {
        RecordingJobStatus {
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..status(Some(phase))
        }
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(ts("2026-01-01T10:00:00Z")),
            observed_generation: None,
        }
    }

    fn ts(at: &str) -> jiff::Timestamp {
        at.parse().expect("a timestamp")
    }

    fn output(sealed: bool) -> RecordingOutput {
        serde_json::from_value(serde_json::json!({
            "participantId": "alice",
            "key": "out/alice.webm",
            "sizeBytes": 10,
            "durationSeconds": 5.0,
            "sealed": sealed,
        }))
        .expect("an output")
    }

    #[test]
    fn steps_for_each_situation() {
        let running = status(Some(Phase::Running));
        let pending_unstarted = with_reason(
            Phase::Pending,
            reasons::POD_NOT_STARTED,
            "no start within 600 s: secret \"storage\" not found",
        );
        let succeeded = status(Some(Phase::Succeeded));
        let failed = status(Some(Phase::Failed));
        let base = Facts {
            job_running: true,
            attempts: 1,
            needs_write: true,
            ..Facts::default()
        };
        let rows: Vec<(&str, &RecordingJobStatus, Facts, Steps)> = vec![
            (
                "a status change is written",
                &running,
                base,
                Steps {
                    stop_retries: false,
                    clear_stale_progress: false,
                    status: StatusWrite::Write,
                    delete_unstarted_job: false,
                },
            ),
            (
                "nothing changed: no write",
                &running,
                Facts {
                    needs_write: false,
                    ..base
                },
                Steps {
                    stop_retries: false,
                    clear_stale_progress: false,
                    status: StatusWrite::Unchanged,
                    delete_unstarted_job: false,
                },
            ),
            (
                "bad input on a running Job stops its retries",
                &running,
                Facts {
                    bad_input: true,
                    ..base
                },
                Steps {
                    stop_retries: true,
                    clear_stale_progress: false,
                    status: StatusWrite::Write,
                    delete_unstarted_job: false,
                },
            ),
            (
                "bad input on a server that keeps podFailurePolicy: the Job fails by itself",
                &running,
                Facts {
                    bad_input: true,
                    pod_failure_policy: true,
                    ..base
                },
                Steps {
                    stop_retries: false,
                    clear_stale_progress: false,
                    status: StatusWrite::Write,
                    delete_unstarted_job: false,
                },
            ),
            (
                "bad input on a Job already finished: nothing to stop",
                &failed,
                Facts {
                    bad_input: true,
                    job_running: false,
                    ..base
                },
                Steps {
                    stop_retries: false,
                    clear_stale_progress: false,
                    status: StatusWrite::Write,
                    delete_unstarted_job: false,
                },
            ),
            (
                "a second attempt running under the first one's progress clears it",
                &running,
                Facts {
                    attempts: 2,
                    progress_stale: true,
                    ..base
                },
                Steps {
                    stop_retries: false,
                    clear_stale_progress: true,
                    status: StatusWrite::Write,
                    delete_unstarted_job: false,
                },
            ),
            (
                "a first attempt's progress is its own",
                &running,
                Facts {
                    attempts: 1,
                    progress_stale: true,
                    ..base
                },
                Steps {
                    stop_retries: false,
                    clear_stale_progress: false,
                    status: StatusWrite::Write,
                    delete_unstarted_job: false,
                },
            ),
            (
                "in a burst a young RecordingJob's Running waits",
                &running,
                Facts {
                    others_creating: true,
                    young: true,
                    ..base
                },
                Steps {
                    stop_retries: false,
                    clear_stale_progress: false,
                    status: StatusWrite::HeldBack,
                    delete_unstarted_job: false,
                },
            ),
            (
                "in a burst an old RecordingJob's status does not wait",
                &running,
                Facts {
                    others_creating: true,
                    young: false,
                    ..base
                },
                Steps {
                    stop_retries: false,
                    clear_stale_progress: false,
                    status: StatusWrite::Write,
                    delete_unstarted_job: false,
                },
            ),
            (
                "in a burst a final status never waits",
                &succeeded,
                Facts {
                    others_creating: true,
                    young: true,
                    job_running: false,
                    ..base
                },
                Steps {
                    stop_retries: false,
                    clear_stale_progress: false,
                    status: StatusWrite::Write,
                    delete_unstarted_job: false,
                },
            ),
            (
                "a worker that never started: the status says why, then the Job goes",
                &pending_unstarted,
                Facts {
                    others_creating: true,
                    young: true,
                    ..base
                },
                Steps {
                    stop_retries: false,
                    clear_stale_progress: false,
                    status: StatusWrite::Write,
                    delete_unstarted_job: true,
                },
            ),
            (
                "the Job of a worker that never started goes even when the status is written",
                &pending_unstarted,
                Facts {
                    needs_write: false,
                    ..base
                },
                Steps {
                    stop_retries: false,
                    clear_stale_progress: false,
                    status: StatusWrite::Unchanged,
                    delete_unstarted_job: true,
                },
            ),
            (
                "a Job already being deleted is not deleted again",
                &pending_unstarted,
                Facts {
                    job_running: false,
                    ..base
                },
                Steps {
                    stop_retries: false,
                    clear_stale_progress: false,
                    status: StatusWrite::Write,
                    delete_unstarted_job: false,
                },
            ),
        ];
        for (situation, desired, facts, expected) in rows {
            assert_eq!(steps(desired, facts), expected, "{situation}");
        }
    }

    /// (type, reason, note) of each Event, in order.
    fn said(
        previous: &RecordingJobStatus,
        desired: &RecordingJobStatus,
        created: Option<&str>,
    ) -> Vec<(String, String, String)> {
        announcement(previous, desired, created, 10)
            .events
            .into_iter()
            .map(|e| {
                let type_ = match e.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                };
                (type_.to_string(), e.reason, e.note.unwrap_or_default())
            })
            .collect()
    }

    fn row(type_: &str, reason: &str, note: &str) -> (String, String, String) {
        (type_.into(), reason.into(), note.into())
    }

    #[test]
    fn events_for_each_transition() {
        let none = status(None);
        let queued = status(Some(Phase::Queued));
        let pending = status(Some(Phase::Pending));
        let running = RecordingJobStatus {
            attempts: Some(2),
            ..status(Some(Phase::Running))
        };
        let unsealed = RecordingJobStatus {
            outputs: vec![output(true), output(false)],
            ..status(Some(Phase::Succeeded))
        };
        let failed = with_reason(
            Phase::Failed,
            "MissingChunk",
            "track alice: chunk 00000003 is missing",
        );
        let secret = with_reason(
            Phase::Pending,
            "CreateContainerConfigError",
            "secret \"storage\" not found",
        );
        let image = with_reason(Phase::Pending, "ImagePullBackOff", "cannot pull worker:9");
        let job_deleted = with_reason(
            Phase::Running,
            reasons::JOB_DELETED,
            "job deleted while pod w-1 runs",
        );
        let uploading = RecordingJobStatus {
            conditions: vec![condition(
                conditions::UPLOADS_COMPLETE,
                "False",
                reasons::WAITING_FOR_UPLOADS,
                "waiting for bob",
            )],
            ..status(Some(Phase::Uploading))
        };
        let sealed = RecordingJobStatus {
            conditions: vec![condition(
                conditions::UPLOADS_COMPLETE,
                "True",
                reasons::ALL_TRACKS_SEALED,
                "every track is sealed",
            )],
            ..status(Some(Phase::Pending))
        };
        let timed_out = RecordingJobStatus {
            conditions: vec![condition(
                conditions::UPLOADS_COMPLETE,
                "False",
                reasons::UPLOAD_TIMEOUT,
                "bob never sealed",
            )],
            ..status(Some(Phase::Pending))
        };
        let not_applied = |message: &str| RecordingJobStatus {
            conditions: vec![condition(
                conditions::SPEC_APPLIED,
                "False",
                reasons::SPEC_CHANGE_NOT_APPLIED,
                message,
            )],
            ..status(Some(Phase::Running))
        };
        let edit = not_applied("spec.profile changed");
        let refused = |generation: i64| RecordingJobStatus {
            observed_generation: Some(generation),
            ..with_reason(
                Phase::Failed,
                reasons::INVALID_SPEC,
                "resources: quantities must match",
            )
        };
        let (refused_1, refused_2) = (refused(1), refused(2));
        let mixdown_failed = RecordingJobStatus {
            conditions: vec![
                condition(
                    conditions::COMPLETE,
                    "True",
                    reasons::COMPLETED,
                    "2 output(s) written and verified; the mixdown was not made (MixdownFailed: ffmpeg exited 1), the participants' files are complete",
                ),
                condition(
                    conditions::MIXDOWN_READY,
                    "False",
                    reasons::MIXDOWN_FAILED,
                    "ffmpeg exited 1; the participants' files are complete and listed in outputs",
                ),
            ],
            ..status(Some(Phase::Succeeded))
        };
        let unlisted_message = format!(
            "1 output(s) written and verified{}",
            crate::status::unlisted_note(&["bob".into()])
        );
        let unlisted = RecordingJobStatus {
            outputs: vec![output(true)],
            conditions: vec![condition(
                conditions::COMPLETE,
                "True",
                reasons::COMPLETED,
                &unlisted_message,
            )],
            ..status(Some(Phase::Succeeded))
        };

        /// (transition, previous, desired, Job created, Events said).
        type Row<'a> = (
            &'a str,
            &'a RecordingJobStatus,
            &'a RecordingJobStatus,
            Option<&'a str>,
            Vec<(String, String, String)>,
        );
        let rows: Vec<Row> = vec![
            (
                "a Job created, its status held back",
                &none,
                &none,
                Some("rj-1"),
                vec![row("Normal", reasons::JOB_CREATED, "Created Job rj-1")],
            ),
            (
                "queued",
                &none,
                &queued,
                None,
                vec![row(
                    "Normal",
                    reasons::WAITING_FOR_SLOT,
                    "Waiting for one of the 10 processing slots",
                )],
            ),
            ("queued, again: nothing new", &queued, &queued, None, vec![]),
            (
                "uploading",
                &none,
                &uploading,
                None,
                vec![row(
                    "Normal",
                    reasons::WAITING_FOR_UPLOADS,
                    "Waiting for bob",
                )],
            ),
            (
                "every track sealed",
                &uploading,
                &sealed,
                None,
                vec![row(
                    "Normal",
                    reasons::ALL_TRACKS_SEALED,
                    "Every track is sealed",
                )],
            ),
            (
                "sealed at once, never uploading: nothing to say",
                &none,
                &sealed,
                None,
                vec![],
            ),
            (
                "started without some seals",
                &uploading,
                &timed_out,
                None,
                vec![row("Warning", reasons::UPLOAD_TIMEOUT, "Bob never sealed")],
            ),
            (
                "running",
                &pending,
                &running,
                None,
                vec![row("Normal", "Started", "Worker started (attempt 2)")],
            ),
            (
                "a worker that cannot start says why",
                &pending,
                &secret,
                None,
                vec![row(
                    "Warning",
                    "CreateContainerConfigError",
                    "Secret \"storage\" not found",
                )],
            ),
            (
                "the same cause again: nothing new",
                &secret,
                &secret,
                None,
                vec![],
            ),
            (
                "another cause",
                &secret,
                &image,
                None,
                vec![row("Warning", "ImagePullBackOff", "Cannot pull worker:9")],
            ),
            (
                "succeeded with a track unsealed: a warning",
                &running,
                &unsealed,
                None,
                vec![row(
                    "Warning",
                    "Succeeded",
                    &capitalize(&completion_message(&unsealed.outputs, None)),
                )],
            ),
            (
                "succeeded with a file the status cannot list: a warning naming it",
                &running,
                &unlisted,
                None,
                vec![row("Warning", "Succeeded", &capitalize(&unlisted_message))],
            ),
            (
                "succeeded without its mixdown: a warning, and why",
                &running,
                &mixdown_failed,
                None,
                vec![
                    row(
                        "Warning",
                        "Succeeded",
                        "2 output(s) written and verified; the mixdown was not made (MixdownFailed: ffmpeg exited 1), the participants' files are complete",
                    ),
                    row(
                        "Warning",
                        reasons::MIXDOWN_FAILED,
                        "Ffmpeg exited 1; the participants' files are complete and listed in outputs",
                    ),
                ],
            ),
            (
                "failed",
                &running,
                &failed,
                None,
                vec![row(
                    "Warning",
                    "MissingChunk",
                    "track alice: chunk 00000003 is missing",
                )],
            ),
            (
                "a Job deleted by hand while its Pod runs",
                &running,
                &job_deleted,
                None,
                vec![row(
                    "Warning",
                    reasons::JOB_DELETED,
                    "Job deleted while pod w-1 runs",
                )],
            ),
            (
                "a spec change not applied, once per edit",
                &running,
                &edit,
                None,
                vec![row(
                    "Warning",
                    reasons::SPEC_CHANGE_NOT_APPLIED,
                    "Spec.profile changed",
                )],
            ),
            (
                "the same edit again: nothing new",
                &edit,
                &edit,
                None,
                vec![],
            ),
            (
                "a refused spec, edited and refused again",
                &refused_1,
                &refused_2,
                None,
                vec![row(
                    "Warning",
                    reasons::INVALID_SPEC,
                    "resources: quantities must match",
                )],
            ),
            (
                "a refused spec, not edited: nothing new",
                &refused_1,
                &refused_1,
                None,
                vec![],
            ),
        ];
        for (transition, previous, desired, created, expected) in rows {
            assert_eq!(said(previous, desired, created), expected, "{transition}");
        }
    }

    #[test]
    fn a_finish_is_announced_once_with_how_long_it_took() {
        let running = status(Some(Phase::Running));
        let done = RecordingJobStatus {
            start_time: Some(Time(ts("2026-01-01T10:00:00Z"))),
            completion_time: Some(Time(ts("2026-01-01T10:00:42Z"))),
            outputs: vec![output(true)],
            ..status(Some(Phase::Succeeded))
        };
        assert_eq!(
            announcement(&running, &done, None, 1).finished,
            Some((Phase::Succeeded, Some(42.0)))
        );
        assert_eq!(
            announcement(&done, &done, None, 1).finished,
            None,
            "finished once"
        );
        let failed_early = with_reason(Phase::Failed, reasons::INVALID_SPEC, "bad");
        assert_eq!(
            announcement(&status(None), &failed_early, None, 1).finished,
            Some((Phase::Failed, None))
        );
        let refused_again = announcement(
            &RecordingJobStatus {
                observed_generation: Some(1),
                ..failed_early.clone()
            },
            &RecordingJobStatus {
                observed_generation: Some(2),
                ..failed_early
            },
            None,
            1,
        );
        assert!(refused_again.about_this_version);
        assert_eq!(refused_again.finished, None);
    }

    #[test]
    fn next_look_for_each_phase() {
        let now = ts("2026-01-01T10:00:00Z");
        let done_at = |at: &str| RecordingJobStatus {
            completion_time: Some(Time(ts(at))),
            ..status(Some(Phase::Succeeded))
        };
        let pending_with_job = RecordingJobStatus {
            job_name: Some("rj".into()),
            ..status(Some(Phase::Pending))
        };
        let sealed = Gate::Sealed { tracks: 1 };
        let waiting = Gate::Waiting {
            open: vec!["bob".into()],
            tracks: 2,
            until: ts("2026-01-01T10:00:30Z"),
        };
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        /// (situation, status, upload gate, Job created at, TTL, next look).
        type Row<'a> = (
            &'a str,
            RecordingJobStatus,
            &'a Gate,
            Option<jiff::Timestamp>,
            Option<i32>,
            Next,
        );
        let rows: Vec<Row> = vec![
            (
                "queued: soon, for a slot",
                status(Some(Phase::Queued)),
                &sealed,
                None,
                None,
                Next::Requeue(QUEUED_RECHECK),
            ),
            (
                "pending, start deadline far: the recheck",
                pending_with_job.clone(),
                &sealed,
                Some(ts("2026-01-01T09:59:00Z")),
                None,
                Next::Requeue(PENDING_RECHECK + ms(100)),
            ),
            (
                "pending, start deadline in 2 s",
                pending_with_job.clone(),
                &sealed,
                Some(ts("2026-01-01T09:50:02Z")),
                None,
                Next::Requeue(s(2) + ms(100)),
            ),
            (
                "pending, start deadline passed: at once",
                pending_with_job,
                &sealed,
                Some(ts("2026-01-01T09:00:00Z")),
                None,
                Next::Requeue(ms(100)),
            ),
            (
                "pending without a Job yet: the recheck",
                status(Some(Phase::Pending)),
                &sealed,
                Some(ts("2026-01-01T09:00:00Z")),
                None,
                Next::Requeue(PENDING_RECHECK + ms(100)),
            ),
            (
                "uploading: when the wait ends",
                status(Some(Phase::Uploading)),
                &waiting,
                None,
                None,
                Next::Requeue(s(30) + ms(100)),
            ),
            (
                "uploading, all sealed now: at once",
                status(Some(Phase::Uploading)),
                &sealed,
                None,
                None,
                Next::Requeue(ms(100)),
            ),
            (
                "running: the resync",
                status(Some(Phase::Running)),
                &sealed,
                None,
                None,
                Next::Requeue(RESYNC),
            ),
            (
                "finished without a TTL: never",
                done_at("2026-01-01T09:00:00Z"),
                &sealed,
                None,
                None,
                Next::AwaitChange,
            ),
            (
                "finished, TTL left: when it ends",
                done_at("2026-01-01T09:59:00Z"),
                &sealed,
                None,
                Some(90),
                Next::Requeue(s(30) + ms(100)),
            ),
            (
                "finished, TTL far: the resync at most",
                done_at("2026-01-01T09:59:00Z"),
                &sealed,
                None,
                Some(86_400),
                Next::Requeue(RESYNC + ms(100)),
            ),
            (
                "finished, TTL over: delete",
                done_at("2026-01-01T09:00:00Z"),
                &sealed,
                None,
                Some(60),
                Next::DeleteExpired,
            ),
            (
                "finished, TTL 0: delete",
                done_at("2026-01-01T10:00:00Z"),
                &sealed,
                None,
                Some(0),
                Next::DeleteExpired,
            ),
        ];
        for (situation, status, gate, job_created, ttl, expected) in rows {
            assert_eq!(
                next(&status, gate, job_created, 600, ttl, now),
                expected,
                "{situation}"
            );
        }
    }
}
