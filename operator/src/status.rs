//! The RecordingJob's status, rebuilt from what is observed: the Job, its Pods and the worker's
//! reports. Pure, so every rule below is a table row in the tests.
//!
//! Rules worth knowing:
//! - `progress` is the worker's field (its own field manager); the operator's status never holds it.
//! - a condition's `lastTransitionTime` moves only when its `status` flips (cert-manager's rule),
//!   so rebuilding the same world gives the same status and no write;
//! - a worker exit code 2 (bad input) is final whatever the Job does next; on servers without
//!   `podFailurePolicy` the Job itself only learns it through the operator;
//! - Succeeded and Failed are final: once written, the status stays as written even when the
//!   evidence (the Job, its Pods) is gone, so a finished recording is never processed again;
//! - a RecordingJob that failed without a Job (a refusal: its spec is invalid, its Job was refused
//!   as invalid or forbidden, or its name is taken by another Job) is final at the generation it
//!   was judged at (`observedGeneration`): an edit of the spec (a new `metadata.generation`)
//!   judges it again, nothing else does.

use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use mixdown_crds::names::{conditions, reasons};
use mixdown_crds::{Failure, Phase, RecordingJob, RecordingJobStatus, WorkerReport};

use crate::attempts::{Attempt, attempts, attempts_of_pods};
use crate::error::Refusal;
use crate::uploads::upload_gate;

/// Where a RecordingJob without a Job stands, as decided by the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Tracks are still unsealed and the upload timeout has not passed: no Job yet.
    Uploading,
    /// A slot is free: its Job is being created.
    Admitted,
    /// Every slot is taken; it waits its turn.
    Queued { max_running_jobs: usize },
    /// The spec cannot become a Job (invalid, forbidden, or its name taken by another Job):
    /// Failed with the refusal's reason until the spec changes.
    Refused(Refusal),
}

/// The status the operator owns, rebuilt from the RecordingJob, its Job and the Job's Pods.
///
/// `rj.status` is read only for what the world cannot tell again: when conditions last flipped,
/// and a final result whose evidence may be gone.
///
/// `create_failure` is the message of the Job controller's latest `FailedCreate` Event about the
/// Job, when the reconciler looked one up (it does only while the Job has no Pod).
pub fn derive_status(
    rj: &RecordingJob,
    job: Option<&Job>,
    pods: &[&Pod],
    create_failure: Option<&str>,
    admission: &Admission,
    now: jiff::Timestamp,
) -> RecordingJobStatus {
    let previous = rj.status.as_ref();
    let generation = rj.metadata.generation;
    if let Some(previous) = previous
        && is_final(rj)
    {
        let mut status = RecordingJobStatus {
            progress: None,
            ..previous.clone()
        };
        // Edited after it finished: nothing runs again, and the status says so.
        if let (Some(current), Some(judged)) = (generation, previous.observed_generation)
            && current != judged
        {
            let mut conds = Conditions::keeping(Some(previous), generation, now);
            conds.set(
                conditions::SPEC_APPLIED,
                false,
                reasons::SPEC_CHANGE_NOT_APPLIED,
                &format!(
                    "the spec was edited (generation {current}) after the RecordingJob finished \
                     at generation {judged}; nothing is processed again. To process the \
                     recording with the new spec, create the RecordingJob again"
                ),
            );
            status.conditions = conds.into_vec();
        }
        return status;
    }

    let mut status = RecordingJobStatus {
        observed_generation: generation,
        // The runs before a retry: history, never derived again.
        retries: previous.map(|p| p.retries.clone()).unwrap_or_default(),
        ..RecordingJobStatus::default()
    };
    let mut conds = Conditions::new(previous, generation, now);
    let (sealed, reason, message) = upload_gate(rj, now).condition();
    conds.set(conditions::UPLOADS_COMPLETE, sealed, reason, &message);

    let Some(job) = job else {
        match admission {
            Admission::Uploading => status.phase = Some(Phase::Uploading),
            Admission::Refused(Refusal { reason, message }) => {
                status.phase = Some(Phase::Failed);
                status.reason = Some(reason.to_string());
                status.message = Some(message.clone());
                conds.set(conditions::FAILED, true, reason, message);
                status.completion_time = conds.transition_time(conditions::FAILED);
            }
            Admission::Queued { max_running_jobs } => {
                status.phase = Some(Phase::Queued);
                conds.set(
                    conditions::QUEUED,
                    true,
                    reasons::WAITING_FOR_SLOT,
                    &format!("waiting for one of the {max_running_jobs} processing slots"),
                );
            }
            Admission::Admitted => status.phase = Some(Phase::Pending),
        }
        status.conditions = conds.into_vec();
        return status;
    };

    let job_name = job.name_any();
    status.job_name = Some(job_name.clone());
    // The Job runs the spec it was built from; an edit since is not applied, and is not claimed
    // as observed.
    if let Some(built_from) = crate::job::spec_generation(job) {
        status.observed_generation = Some(built_from);
        match generation {
            Some(current) if current != built_from => conds.set(
                conditions::SPEC_APPLIED,
                false,
                reasons::SPEC_CHANGE_NOT_APPLIED,
                &format!(
                    "the spec was edited (generation {current}) after Job {job_name} was made \
                     from generation {built_from}; the Job keeps generation {built_from}'s spec. \
                     To process the recording with the new spec, create the RecordingJob again"
                ),
            ),
            _ => conds.set(
                conditions::SPEC_APPLIED,
                true,
                reasons::SPEC_APPLIED,
                &format!("Job {job_name} runs generation {built_from}'s spec"),
            ),
        }
    }
    let job_status = job.status.as_ref();
    conds.set(
        conditions::QUEUED,
        false,
        reasons::JOB_CREATED,
        &format!("Job {job_name} created"),
    );

    let attempts = attempts(job, pods);
    let started = attempts.iter().filter(|a| a.started).count();
    // When the first worker started, not when the Job object was made: a Pod waiting for its
    // image or its node is not processing. Once its Pod is gone (a deadline deletes it), the start
    // seen before stays; a Pod that ran without container states falls back to the Job's start.
    let counted_so_far = job_status.map_or(0, |s| s.failed.unwrap_or(0) + s.succeeded.unwrap_or(0));
    status.start_time = attempts
        .iter()
        .filter_map(|a| a.started_at.clone())
        .min_by_key(|t| t.0)
        .or_else(|| previous.and_then(|p| p.start_time.clone()))
        .or_else(|| {
            (started > 0 || counted_so_far > 0)
                .then(|| job_status.and_then(|s| s.start_time.clone()))
                .flatten()
        });
    let counted = job_status.map_or(0, |s| s.failed.unwrap_or(0) + s.succeeded.unwrap_or(0));
    status.attempts = Some(i32::try_from(started).unwrap_or(i32::MAX).max(counted));

    let last_failure = attempts
        .iter()
        .filter_map(|a| a.ended.as_ref())
        .filter(|e| e.exit_code != 0)
        .max_by(|a, b| a.finished_at.cmp(&b.finished_at));
    let bad_input = attempts
        .iter()
        .filter_map(|a| a.ended.as_ref())
        .find(|e| e.is_bad_input());
    let complete = job_condition(job, "Complete");
    let failed = job_condition(job, "Failed");

    if let Some(ended) = bad_input {
        // The attempt that found bad input is the last one. On servers without podFailurePolicy
        // the Job controller replaces a first failed Pod at once, before the operator can stop
        // it; such a replacement is stopped and is not counted.
        let through_bad = attempts
            .iter()
            .position(|a| a.ended.as_ref().is_some_and(|e| e.is_bad_input()))
            .map_or(started, |i| {
                attempts[..=i].iter().filter(|a| a.started).count()
            });
        status.attempts = Some(i32::try_from(through_bad).unwrap_or(i32::MAX));
        let (reason, message) = ended.failure();
        fail(&mut status, &mut conds, &reason, &message);
        status.completion_time = ended
            .finished_at
            .clone()
            .or_else(|| conds.transition_time(conditions::FAILED));
    } else if complete.is_some() {
        status.phase = Some(Phase::Succeeded);
        let (outputs, mixdown_failure) = attempts
            .iter()
            .filter_map(|a| a.ended.as_ref())
            .find_map(|e| match &e.report {
                Some(WorkerReport::Succeeded {
                    outputs,
                    mixdown_failure,
                }) if e.exit_code == 0 => Some((outputs.clone(), mixdown_failure.clone())),
                _ => None,
            })
            .unwrap_or_default();
        let (outputs, unlisted) = listed_outputs(rj, outputs);
        status.outputs = outputs;
        set_mixdown(&mut conds, &status.outputs, mixdown_failure.as_ref());
        let message = completion_message(&status.outputs, mixdown_failure.as_ref())
            + &unlisted_note(&unlisted);
        conds.set(conditions::RUNNING, false, reasons::COMPLETED, &message);
        conds.set(conditions::COMPLETE, true, reasons::COMPLETED, &message);
        status.completion_time = job_status
            .and_then(|s| s.completion_time.clone())
            .or_else(|| complete.and_then(|c| c.last_transition_time.clone()));
    } else if let Some(failed) = failed {
        let reason = failed
            .reason
            .clone()
            .unwrap_or_else(|| "JobFailed".to_string());
        let mut message = failed
            .message
            .clone()
            .unwrap_or_else(|| "the Job failed".to_string());
        if let Some(last) = last_failure {
            let (last_reason, last_message) = last.failure();
            message = format!("{message}; last attempt: {last_reason}: {last_message}");
        }
        fail(&mut status, &mut conds, &reason, &message);
        status.completion_time = failed
            .last_transition_time
            .clone()
            .or_else(|| conds.transition_time(conditions::FAILED));
    } else if started > 0 || counted > 0 {
        // Running, or between two attempts: still Running, so phase does not flap per retry.
        status.phase = Some(Phase::Running);
        // The worker lists the participants' files once they are verified, before its mixdown
        // (and, without one, in its last write: no mixdown is being made then).
        let ready = previous.map_or(0, |p| p.ready_outputs.len());
        if ready > 0 && crate::job::makes_mixdown(job) {
            conds.set(
                conditions::MIXDOWN_READY,
                false,
                reasons::MIXING,
                &format!(
                    "{ready} participant file(s) are verified and can be downloaded; the mixdown is being made"
                ),
            );
        }
        let attempt = attempts.iter().filter(|a| a.started).count().max(1);
        let limit = job.spec.as_ref().and_then(|s| s.backoff_limit).unwrap_or(0) + 1;
        conds.set(
            conditions::RUNNING,
            true,
            reasons::POD_RUNNING,
            &format!("attempt {attempt} of at most {limit}"),
        );
        // An earlier attempt's failure is history: said as such, not as the current state.
        if let Some(last) = last_failure {
            let (reason, message) = last.failure();
            status.reason = Some(reason);
            let running = attempts.iter().any(|a| a.running);
            status.message = Some(if running {
                format!("attempt {attempt} is running; the previous one failed: {message}")
            } else {
                format!(
                    "attempt {attempt} failed: {message}; the Job starts the next one (at most \
                     {limit} in all)"
                )
            });
        }
    } else {
        // No worker has started yet: say what holds it up, and give up at the start deadline.
        status.phase = Some(Phase::Pending);
        let problem = start_problem(pods, create_failure);
        if let Some(problem) = &problem {
            status.reason = Some(problem.reason.clone());
            status.message = Some(problem.message.clone());
            conds.set(
                conditions::RUNNING,
                false,
                &problem.reason,
                &problem.message,
            );
        }
        let timeout = rj.spec.start_timeout_seconds.max(1);
        let since = job
            .metadata
            .creation_timestamp
            .as_ref()
            .or_else(|| job_status.and_then(|s| s.start_time.as_ref()))
            .map(|t| t.0);
        if let Some(since) = since
            && now.duration_since(since) >= jiff::SignedDuration::from_secs(timeout)
        {
            let cause = match &problem {
                Some(p) => format!("last cause: {}: {}", p.reason, p.message),
                None => "Kubernetes reported no cause".to_string(),
            };
            let message = format!(
                "no worker Pod started within {timeout}s of Job {job_name}'s creation ({cause}); \
                 the Job was deleted and the chunks are kept"
            );
            fail(&mut status, &mut conds, reasons::POD_NOT_STARTED, &message);
            status.completion_time = conds.transition_time(conditions::FAILED);
        }
    }
    status.conditions = conds.into_vec();
    status
}

/// The status of a RecordingJob whose Job `job_name` is gone though its status is not final: it
/// was deleted by hand (the operator deletes a Job only after a final status). `pods` are the
/// recording's worker Pods still around (on their way out, or orphaned by a
/// `--cascade=orphan` delete).
///
/// No new Job is made: a worker may still be running, and two workers on one recording could
/// each delete chunks the other reads. While any Pod is live the phase stays and the reason says
/// what it waits for; when none is, a worker that finished and verified its outputs makes it
/// Succeeded (so a recording processed is never reported lost), and anything else fails it with
/// `JobDeleted`, the chunks untouched by any worker that did not finish.
pub fn job_deleted_status(
    rj: &RecordingJob,
    job_name: &str,
    pods: &[&Pod],
    now: jiff::Timestamp,
) -> RecordingJobStatus {
    let previous = rj.status.clone().unwrap_or_default();
    let generation = rj.metadata.generation;
    let mut conds = Conditions::keeping(rj.status.as_ref(), generation, now);
    let mut status = RecordingJobStatus {
        progress: None,
        observed_generation: generation,
        ..previous.clone()
    };
    let tries = attempts_of_pods(pods);
    let started = tries.iter().filter(|a| a.started).count();
    status.attempts = Some(
        previous
            .attempts
            .unwrap_or(0)
            .max(i32::try_from(started).unwrap_or(i32::MAX)),
    );
    let live: Vec<&str> = tries
        .iter()
        .filter(|a| !a.finished)
        .map(|a| a.name.as_str())
        .collect();
    if !live.is_empty() {
        status.reason = Some(reasons::JOB_DELETED.to_string());
        status.message = Some(format!(
            "Job {job_name} was deleted; waiting for worker Pod {} to end before the result is \
             decided (no new Job is made while a worker may run)",
            live.join(", ")
        ));
        status.conditions = conds.into_vec();
        return status;
    }
    let succeeded = tries
        .iter()
        .filter_map(|a| a.ended.as_ref())
        .find_map(|e| match &e.report {
            Some(WorkerReport::Succeeded {
                outputs,
                mixdown_failure,
            }) if e.exit_code == 0 => Some((
                outputs.clone(),
                mixdown_failure.clone(),
                e.finished_at.clone(),
            )),
            _ => None,
        });
    if let Some((outputs, mixdown_failure, finished_at)) = succeeded {
        status.phase = Some(Phase::Succeeded);
        status.reason = None;
        let (outputs, unlisted) = listed_outputs(rj, outputs);
        status.outputs = outputs;
        set_mixdown(&mut conds, &status.outputs, mixdown_failure.as_ref());
        let message = format!(
            "{}{} (its Job {job_name} was deleted after the worker finished)",
            completion_message(&status.outputs, mixdown_failure.as_ref()),
            unlisted_note(&unlisted)
        );
        status.message = None;
        conds.set(conditions::RUNNING, false, reasons::COMPLETED, &message);
        conds.set(conditions::COMPLETE, true, reasons::COMPLETED, &message);
        status.completion_time =
            finished_at.or_else(|| conds.transition_time(conditions::COMPLETE));
    } else {
        let attempts = status.attempts.unwrap_or(0);
        let message = format!(
            "Job {job_name} was deleted before its worker finished ({attempts} attempt(s) \
             started); no new Job is made: create the RecordingJob again to process the \
             recording again"
        );
        fail(&mut status, &mut conds, reasons::JOB_DELETED, &message);
        status.completion_time = conds.transition_time(conditions::FAILED);
    }
    status.conditions = conds.into_vec();
    status
}

/// What keeps a worker Pod from starting, in Kubernetes' words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartProblem {
    /// Kubernetes' reason: the container's waiting reason (`ErrImagePull`, `ImagePullBackOff`,
    /// `CreateContainerConfigError`, ...), `Unschedulable`, or `FailedCreate`.
    pub reason: String,
    pub message: String,
}

/// Waiting reasons of a container that is simply on its way.
const STARTING: &[&str] = &["ContainerCreating", "PodInitializing"];

/// Why the newest live worker Pod has not started (its container's waiting reason, or that it
/// cannot be scheduled); without a live Pod, the Job controller's `FailedCreate` message.
pub fn start_problem(pods: &[&Pod], create_failure: Option<&str>) -> Option<StartProblem> {
    let mut live: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    live.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
    });
    for pod in &live {
        let name = pod.name_any();
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        let waiting = status
            .container_statuses
            .iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
            .find(|w| {
                w.reason
                    .as_deref()
                    .is_some_and(|r| !r.is_empty() && !STARTING.contains(&r))
            });
        if let Some(waiting) = waiting {
            let reason = waiting.reason.clone().unwrap_or_default();
            let detail = waiting.message.as_deref().unwrap_or(&reason);
            return Some(StartProblem {
                message: format!("worker Pod {name} cannot start: {detail}"),
                reason,
            });
        }
        let unschedulable = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some(reasons::UNSCHEDULABLE)
        });
        if let Some(condition) = unschedulable {
            let detail = condition.message.as_deref().unwrap_or("no node fits it");
            return Some(StartProblem {
                reason: reasons::UNSCHEDULABLE.to_string(),
                message: format!("worker Pod {name} cannot be scheduled: {detail}"),
            });
        }
    }
    if live.is_empty()
        && let Some(message) = create_failure
    {
        return Some(StartProblem {
            reason: reasons::FAILED_CREATE.to_string(),
            message: format!("the Job controller cannot create the worker Pod: {message}"),
        });
    }
    None
}

/// The outputs of a worker that succeeded, as the status lists them: the mixdown first, then each
/// track's file in the spec's order. A termination message holds 4096 bytes, so the report of a
/// large room lists only the files that fit (the mixdown always); the worker applies every
/// participant's file to `status.readyOutputs` before it exits, and a file the report left out is
/// taken from there. Also returns the participants whose file neither lists (the worker's last
/// status write did not arrive), for the message to name: a file is never silently missing.
pub fn listed_outputs(
    rj: &RecordingJob,
    report: Vec<mixdown_crds::RecordingOutput>,
) -> (Vec<mixdown_crds::RecordingOutput>, Vec<String>) {
    let ready = rj
        .status
        .as_ref()
        .map_or(&[][..], |s| s.ready_outputs.as_slice());
    let (mut listed, mut tracks): (Vec<_>, Vec<_>) =
        report.into_iter().partition(|o| o.is_mixdown());
    let mut unlisted = Vec::new();
    for track in &rj.spec.tracks {
        let id = &track.participant_id;
        if let Some(index) = tracks.iter().position(|o| is_file_of(o, id)) {
            listed.push(tracks.remove(index));
        } else if let Some(output) = ready.iter().find(|o| is_file_of(o, id)) {
            listed.push(output.clone());
        } else {
            unlisted.push(id.clone());
        }
    }
    // Nothing the worker reported is dropped, even a file of no track in the spec.
    listed.extend(tracks);
    (listed, unlisted)
}

/// Whether `outputs` lack a file of some track of `rj`.
pub fn misses_files(rj: &RecordingJob, outputs: &[mixdown_crds::RecordingOutput]) -> bool {
    rj.spec
        .tracks
        .iter()
        .any(|t| !outputs.iter().any(|o| is_file_of(o, &t.participant_id)))
}

/// Whether `output` is the file of participant `id`'s track.
fn is_file_of(output: &mixdown_crds::RecordingOutput, id: &str) -> bool {
    !output.is_mixdown() && output.participant_id == id
}

/// Words of the Complete condition when some participants' files are not listed.
pub const UNLISTED: &str = "not listed in outputs";

/// What the Complete condition adds when some participants' files are not listed.
pub fn unlisted_note(unlisted: &[String]) -> String {
    if unlisted.is_empty() {
        return String::new();
    }
    format!(
        "; {} participant file(s) {UNLISTED} ({}): the worker's report (its \
         termination message holds 4096 bytes) and its last status write left them out; the \
         worker verified them, and its log and the manifest.json beside the files list them",
        unlisted.len(),
        unlisted.join(", ")
    )
}

/// What the Complete condition and the Succeeded Event say: how many files, and for each
/// unsealed track what it holds and which chunks were left out (and kept).
pub fn completion_message(
    outputs: &[mixdown_crds::RecordingOutput],
    mixdown_failure: Option<&Failure>,
) -> String {
    let mut message = format!("{} output(s) written and verified", outputs.len());
    if outputs.iter().any(|o| o.is_mixdown()) {
        message.push_str(", the mixdown among them");
    }
    if let Some(failure) = mixdown_failure {
        message.push_str(&format!(
            "; the mixdown was not made ({}: {}), the participants' files are complete",
            failure.reason, failure.message
        ));
    }
    for note in outputs.iter().filter_map(|o| o.unsealed_note()) {
        message.push_str("; ");
        message.push_str(&note);
    }
    message
}

/// The MixdownReady condition of a worker that succeeded: True when its outputs hold the
/// mixdown, False with the worker's reason when it could not make it. A recording without a
/// mixdown has none (conditions are rebuilt each time, so one from while it ran goes).
fn set_mixdown(
    conds: &mut Conditions,
    outputs: &[mixdown_crds::RecordingOutput],
    failure: Option<&Failure>,
) {
    if let Some(mixdown) = outputs.iter().find(|o| o.is_mixdown()) {
        conds.set(
            conditions::MIXDOWN_READY,
            true,
            reasons::MIXDOWN_WRITTEN,
            &format!("{} written and verified", mixdown.key),
        );
    } else if let Some(failure) = failure {
        conds.set(
            conditions::MIXDOWN_READY,
            false,
            &failure.reason,
            &format!(
                "{}; the participants' files are complete and listed in outputs",
                failure.message
            ),
        );
    }
}

/// Whether the RecordingJob's status is final: it succeeded or failed, and that judgement still
/// holds (a Job ran, or it was refused and its spec has not been edited since: the status's
/// `observedGeneration` is still the RecordingJob's `metadata.generation`).
pub fn is_final(rj: &RecordingJob) -> bool {
    rj.status.as_ref().is_some_and(|s| {
        s.phase.is_some_and(Phase::is_finished)
            && (s.job_name.is_some() || s.observed_generation == rj.metadata.generation)
    })
}

fn fail(status: &mut RecordingJobStatus, conds: &mut Conditions, reason: &str, message: &str) {
    status.phase = Some(Phase::Failed);
    status.reason = Some(reason.to_string());
    status.message = Some(message.to_string());
    conds.set(conditions::RUNNING, false, reason, message);
    conds.set(conditions::FAILED, true, reason, message);
}

fn job_condition<'a>(job: &'a Job, type_: &str) -> Option<&'a JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Conditions being rebuilt, each keeping the previous `lastTransitionTime` unless its status
/// flips.
struct Conditions<'a> {
    previous: &'a [Condition],
    generation: Option<i64>,
    now: Time,
    list: Vec<Condition>,
}

impl<'a> Conditions<'a> {
    fn new(
        previous: Option<&'a RecordingJobStatus>,
        generation: Option<i64>,
        now: jiff::Timestamp,
    ) -> Self {
        Conditions {
            previous: previous.map_or(&[], |p| p.conditions.as_slice()),
            generation,
            now: Time(truncate_to_seconds(now)),
            list: Vec::new(),
        }
    }

    fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let status = if status { "True" } else { "False" };
        let last_transition_time = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| self.now.clone(), |c| c.last_transition_time.clone());
        self.list.retain(|c| c.type_ != type_);
        self.list.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            last_transition_time,
            observed_generation: self.generation,
        });
    }

    /// Like [`Conditions::new`], starting from the previous conditions instead of none.
    fn keeping(
        previous: Option<&'a RecordingJobStatus>,
        generation: Option<i64>,
        now: jiff::Timestamp,
    ) -> Self {
        let mut conditions = Conditions::new(previous, generation, now);
        conditions.list = conditions.previous.to_vec();
        conditions
    }

    fn transition_time(&self, type_: &str) -> Option<Time> {
        self.list
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.last_transition_time.clone())
    }

    fn into_vec(self) -> Vec<Condition> {
        self.list
    }
}

/// Time as the API server stores it (`metav1.Time` has whole seconds), so that what is written
/// compares equal to what is read back.
pub fn truncate_to_seconds(t: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Whether `desired` says anything `current` does not, ignoring `progress` (the worker's) and
/// timestamps that only moved (linkerd's rule: a write that changes nothing but times wakes every
/// watcher for nothing).
pub fn needs_write(current: Option<&RecordingJobStatus>, desired: &RecordingJobStatus) -> bool {
    let Some(current) = current else {
        return true;
    };
    comparable(current) != comparable(desired)
}

fn comparable(status: &RecordingJobStatus) -> RecordingJobStatus {
    let epoch = || Time(jiff::Timestamp::UNIX_EPOCH);
    let mut s = status.clone();
    s.progress = None;
    s.ready_outputs.clear();
    s.start_time = s.start_time.map(|_| epoch());
    s.completion_time = s.completion_time.map(|_| epoch());
    for c in &mut s.conditions {
        c.last_transition_time = epoch();
    }
    s.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    s
}

/// Whether the `progress` shown is left over from an earlier attempt: the worker last wrote it
/// before the current attempt's Pod existed, or in the same second (managed-field times have
/// whole seconds, and a failed Pod is often replaced within one). Then the operator clears it
/// (see `controller::clear_stale_progress`) so nobody sees the last attempt's 100 % while a retry
/// runs. Clearing a new attempt's first report by mistake costs nothing: it reports again.
/// Only asked when there was an earlier attempt.
pub fn progress_is_stale(
    rj: &RecordingJob,
    current_attempt: Option<&Attempt>,
    worker_field_manager: &str,
) -> bool {
    let Some(_) = rj.status.as_ref().and_then(|s| s.progress) else {
        return false;
    };
    let Some(created) = current_attempt.and_then(|a| a.created.as_ref()) else {
        return false;
    };
    let last_write = rj
        .managed_fields()
        .iter()
        .filter(|m| m.manager.as_deref() == Some(worker_field_manager))
        .filter_map(|m| m.time.as_ref())
        .max();
    last_write.is_some_and(|written| written.0 <= created.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{job, pod, pod_created, recording_job};

    const RJ: &str = r#"
metadata: {name: rec-1, namespace: studio, uid: rj-uid, generation: 1}
spec:
  roomId: room1
  recordingId: r1
  tracks: [{participantId: alice, source: {prefix: c/alice/, chunkCount: 3}}]
  output: {prefix: out/}
  backoffLimit: 2
"#;

    fn now() -> jiff::Timestamp {
        "2026-01-01T10:05:00Z".parse().unwrap()
    }

    fn rj_with_status(status: &str) -> RecordingJob {
        recording_job(&format!("{RJ}status: {status}\n"))
    }

    fn condition<'a>(s: &'a RecordingJobStatus, type_: &str) -> Option<&'a Condition> {
        s.conditions.iter().find(|c| c.type_ == type_)
    }

    const SUCCEEDED_REPORT: &str = r#"'{"result":"succeeded","outputs":[{"participantId":"alice","key":"out/alice.mp4","sizeBytes":1000,"durationSeconds":30.0},{"participantId":"bob","key":"out/bob.mp4","sizeBytes":2000,"durationSeconds":29.9}]}'"#;
    const MISSING_REPORT: &str = r#"'{"result":"failed","reason":"MissingChunk","message":"chunk 00000001.webm of alice is missing"}'"#;
    const STORAGE_REPORT: &str =
        r#"'{"result":"failed","reason":"StorageError","message":"connection refused"}'"#;

    struct Row {
        name: &'static str,
        job_status: Option<&'static str>,
        pods: Vec<Pod>,
        admission: Admission,
        phase: Phase,
        attempts: Option<i32>,
        reason: Option<&'static str>,
        message_contains: Option<&'static str>,
        outputs: usize,
        true_conditions: &'static [&'static str],
    }

    fn rows() -> Vec<Row> {
        let term = |code: i32, msg: &str| {
            format!(
                "{{terminated: {{exitCode: {code}, finishedAt: '2026-01-01T10:01:00Z', message: {msg}}}}}"
            )
        };
        vec![
            Row {
                name: "no Job, a free slot",
                job_status: None,
                pods: vec![],
                admission: Admission::Admitted,
                phase: Phase::Pending,
                attempts: None,
                reason: None,
                message_contains: None,
                outputs: 0,
                true_conditions: &["UploadsComplete"],
            },
            Row {
                name: "no Job, every slot taken",
                job_status: None,
                pods: vec![],
                admission: Admission::Queued {
                    max_running_jobs: 2,
                },
                phase: Phase::Queued,
                attempts: None,
                reason: None,
                message_contains: None,
                outputs: 0,
                true_conditions: &["UploadsComplete", "Queued"],
            },
            Row {
                name: "invalid spec",
                job_status: None,
                pods: vec![],
                admission: Admission::Refused(Refusal {
                    reason: "InvalidSpec",
                    message: "spec.tracks[1] is bad".into(),
                }),
                phase: Phase::Failed,
                attempts: None,
                reason: Some("InvalidSpec"),
                message_contains: Some("spec.tracks[1]"),
                outputs: 0,
                true_conditions: &["UploadsComplete", "Failed"],
            },
            Row {
                name: "Job created, Pod not started",
                job_status: Some("{startTime: '2026-01-01T10:00:00Z', active: 1}"),
                pods: vec![pod("rec-1-a", "job-uid", "Pending", "{waiting: {}}")],
                admission: Admission::Admitted,
                phase: Phase::Pending,
                attempts: Some(0),
                reason: None,
                message_contains: None,
                outputs: 0,
                true_conditions: &["UploadsComplete"],
            },
            Row {
                name: "Pod running",
                job_status: Some("{startTime: '2026-01-01T10:00:00Z', active: 1}"),
                pods: vec![pod("rec-1-a", "job-uid", "Running", "{running: {}}")],
                admission: Admission::Admitted,
                phase: Phase::Running,
                attempts: Some(1),
                reason: None,
                message_contains: None,
                outputs: 0,
                true_conditions: &["UploadsComplete", "Running"],
            },
            Row {
                name: "retrying after a transient failure",
                job_status: Some("{startTime: '2026-01-01T10:00:00Z', active: 1, failed: 1}"),
                pods: vec![
                    pod("rec-1-a", "job-uid", "Failed", &term(1, STORAGE_REPORT)),
                    pod_created(
                        "rec-1-b",
                        "job-uid",
                        "Running",
                        "{running: {}}",
                        "2026-01-01T10:02:00Z",
                    ),
                ],
                admission: Admission::Admitted,
                phase: Phase::Running,
                attempts: Some(2),
                reason: Some("StorageError"),
                message_contains: Some("connection refused"),
                outputs: 0,
                true_conditions: &["UploadsComplete", "Running"],
            },
            Row {
                name: "succeeded with the worker's outputs",
                job_status: Some(
                    "{startTime: '2026-01-01T10:00:00Z', completionTime: '2026-01-01T10:01:00Z', succeeded: 1, conditions: [{type: Complete, status: 'True'}]}",
                ),
                pods: vec![pod(
                    "rec-1-a",
                    "job-uid",
                    "Succeeded",
                    &term(0, SUCCEEDED_REPORT),
                )],
                admission: Admission::Admitted,
                phase: Phase::Succeeded,
                attempts: Some(1),
                reason: None,
                message_contains: None,
                outputs: 2,
                true_conditions: &["UploadsComplete", "Complete"],
            },
            Row {
                name: "bad input fails after one attempt, whatever the Job says",
                job_status: Some(
                    "{startTime: '2026-01-01T10:00:00Z', failed: 1, conditions: [{type: Failed, status: 'True', reason: DeadlineExceeded, message: 'Job was active longer than specified deadline'}]}",
                ),
                pods: vec![pod(
                    "rec-1-a",
                    "job-uid",
                    "Failed",
                    &term(2, MISSING_REPORT),
                )],
                admission: Admission::Admitted,
                phase: Phase::Failed,
                attempts: Some(1),
                reason: Some("MissingChunk"),
                message_contains: Some("chunk 00000001.webm of alice is missing"),
                outputs: 0,
                true_conditions: &["UploadsComplete", "Failed"],
            },
            Row {
                name: "bad input before the Job noticed",
                job_status: Some("{startTime: '2026-01-01T10:00:00Z', failed: 1}"),
                pods: vec![pod(
                    "rec-1-a",
                    "job-uid",
                    "Failed",
                    &term(2, MISSING_REPORT),
                )],
                admission: Admission::Admitted,
                phase: Phase::Failed,
                attempts: Some(1),
                reason: Some("MissingChunk"),
                message_contains: Some("missing"),
                outputs: 0,
                true_conditions: &["UploadsComplete", "Failed"],
            },
            Row {
                name: "bad input, and a replacement the Job controller started before it was stopped",
                job_status: Some("{startTime: '2026-01-01T10:00:00Z', failed: 1, active: 1}"),
                pods: vec![
                    pod("rec-1-a", "job-uid", "Failed", &term(2, MISSING_REPORT)),
                    pod_created(
                        "rec-1-b",
                        "job-uid",
                        "Running",
                        "{running: {}}",
                        "2026-01-01T10:02:00Z",
                    ),
                ],
                admission: Admission::Admitted,
                phase: Phase::Failed,
                attempts: Some(1),
                reason: Some("MissingChunk"),
                message_contains: Some("missing"),
                outputs: 0,
                true_conditions: &["UploadsComplete", "Failed"],
            },
            Row {
                name: "retries used up",
                job_status: Some(
                    "{startTime: '2026-01-01T10:00:00Z', failed: 3, conditions: [{type: Failed, status: 'True', reason: BackoffLimitExceeded, message: 'Job has reached the specified backoff limit', lastTransitionTime: '2026-01-01T10:04:00Z'}]}",
                ),
                pods: vec![
                    pod("rec-1-a", "job-uid", "Failed", &term(1, STORAGE_REPORT)),
                    pod("rec-1-b", "job-uid", "Failed", &term(1, STORAGE_REPORT)),
                    pod("rec-1-c", "job-uid", "Failed", &term(1, STORAGE_REPORT)),
                ],
                admission: Admission::Admitted,
                phase: Phase::Failed,
                attempts: Some(3),
                reason: Some(reasons::BACKOFF_LIMIT_EXCEEDED),
                message_contains: Some("last attempt: StorageError: connection refused"),
                outputs: 0,
                true_conditions: &["UploadsComplete", "Failed"],
            },
            Row {
                name: "deadline, the running Pod deleted by the Job controller",
                job_status: Some(
                    "{startTime: '2026-01-01T10:00:00Z', failed: 1, conditions: [{type: Failed, status: 'True', reason: DeadlineExceeded, message: 'Job was active longer than specified deadline'}]}",
                ),
                pods: vec![],
                admission: Admission::Admitted,
                phase: Phase::Failed,
                attempts: Some(1),
                reason: Some(reasons::DEADLINE_EXCEEDED),
                message_contains: Some("deadline"),
                outputs: 0,
                true_conditions: &["UploadsComplete", "Failed"],
            },
        ]
    }

    #[test]
    fn status_follows_the_job_and_its_pods() {
        let rj = recording_job(RJ);
        for row in rows() {
            let job = row.job_status.map(|s| job("rec-1", "job-uid", s));
            let pods: Vec<&Pod> = row.pods.iter().collect();
            let status = derive_status(&rj, job.as_ref(), &pods, None, &row.admission, now());
            let name = row.name;
            assert_eq!(status.phase, Some(row.phase), "{name}");
            assert_eq!(status.attempts, row.attempts, "{name}: attempts");
            assert_eq!(status.reason.as_deref(), row.reason, "{name}: reason");
            if let Some(part) = row.message_contains {
                let message = status.message.as_deref().unwrap_or_default();
                assert!(message.contains(part), "{name}: {message:?} lacks {part:?}");
            }
            assert_eq!(status.outputs.len(), row.outputs, "{name}: outputs");
            assert_eq!(status.progress, None, "{name}: progress is the worker's");
            assert_eq!(status.observed_generation, Some(1), "{name}");
            let true_conditions: Vec<&str> = status
                .conditions
                .iter()
                .filter(|c| c.status == "True")
                .map(|c| c.type_.as_str())
                .collect();
            assert_eq!(true_conditions, row.true_conditions, "{name}: conditions");
            assert_eq!(status.job_name.is_some(), job.is_some(), "{name}: jobName");
            if row.phase.is_finished() {
                assert!(status.completion_time.is_some(), "{name}: completionTime");
            }
        }
    }

    const UNSEALED_RJ: &str = r#"
metadata: {name: rec-1, namespace: studio, uid: rj-uid, generation: 1, creationTimestamp: "2026-01-01T10:00:00Z"}
spec:
  roomId: room1
  recordingId: r1
  tracks:
    - {participantId: alice, source: {prefix: c/alice/, chunkCount: 3}}
    - {participantId: bob, source: {prefix: c/bob/}}
  output: {prefix: out/}
  uploadTimeoutSeconds: 600
"#;

    #[test]
    fn an_unsealed_track_keeps_the_recording_uploading_and_says_so() {
        let rj = recording_job(UNSEALED_RJ);
        let status = derive_status(&rj, None, &[], None, &Admission::Uploading, now());
        assert_eq!(status.phase, Some(Phase::Uploading));
        let uploads = condition(&status, "UploadsComplete").expect("UploadsComplete");
        assert_eq!(uploads.status, "False");
        assert_eq!(uploads.reason, "WaitingForUploads");
        assert!(uploads.message.contains(": bob;"), "{}", uploads.message);
        assert_eq!(status.job_name, None);

        // Sealed: the same RecordingJob is admitted like any other, and the condition flips.
        let mut sealed = recording_job(UNSEALED_RJ);
        sealed.spec.tracks[1].source.chunk_count = Some(7);
        sealed.status = Some(status.clone());
        let later = now()
            .checked_add(jiff::SignedDuration::from_secs(5))
            .unwrap();
        let admitted = derive_status(&sealed, None, &[], None, &Admission::Admitted, later);
        assert_eq!(admitted.phase, Some(Phase::Pending));
        let uploads = condition(&admitted, "UploadsComplete").unwrap();
        assert_eq!(
            (uploads.status.as_str(), uploads.reason.as_str()),
            ("True", "AllTracksSealed")
        );
        assert_eq!(uploads.last_transition_time, Time(later));
    }

    #[test]
    fn a_recording_processed_without_a_seal_says_which_chunks_were_left_out() {
        let mut rj = recording_job(UNSEALED_RJ);
        rj.spec.upload_timeout_seconds = 60; // over at now()
        let report = r#"'{"result":"succeeded","outputs":[{"participantId":"alice","key":"out/alice.mp4","sizeBytes":1000,"durationSeconds":3.0,"sealed":true,"chunks":3},{"participantId":"bob","key":"out/bob.mp4","sizeBytes":900,"durationSeconds":5.0,"sealed":false,"chunks":5,"leftOut":{"missingChunk":5,"chunksKept":2}}]}'"#;
        let job = job(
            "rec-1",
            "job-uid",
            "{completionTime: '2026-01-01T10:04:00Z', succeeded: 1, conditions: [{type: Complete, status: 'True'}]}",
        );
        let p = pod(
            "rec-1-a",
            "job-uid",
            "Succeeded",
            &format!("{{terminated: {{exitCode: 0, message: {report}}}}}"),
        );
        let status = derive_status(&rj, Some(&job), &[&p], None, &Admission::Admitted, now());
        assert_eq!(status.phase, Some(Phase::Succeeded));
        let uploads = condition(&status, "UploadsComplete").unwrap();
        assert_eq!(
            (uploads.status.as_str(), uploads.reason.as_str()),
            ("False", "UploadTimeout")
        );
        assert!(
            uploads.message.contains("not sealed: bob"),
            "{}",
            uploads.message
        );
        let complete = &condition(&status, "Complete").unwrap().message;
        assert!(
            complete.contains("2 output(s) written and verified; track bob was not sealed: its file holds chunks 00000000.webm to 00000004.webm; 00000005.webm was missing or empty, so the 2 chunk(s) after it were left out and kept in storage"),
            "{complete}"
        );
        assert!(!status.outputs[1].sealed);
        assert_eq!(
            status.outputs[1].left_out.as_ref().map(|l| l.chunks_kept),
            Some(2)
        );
    }

    #[test]
    fn the_mixdown_is_mixing_while_the_files_are_ready_then_written_or_said_why_not() {
        let rj = recording_job(RJ);
        let finished = |report: &str| {
            let job = job(
                "rec-1",
                "job-uid",
                "{completionTime: '2026-01-01T10:04:00Z', succeeded: 1, conditions: [{type: Complete, status: 'True'}]}",
            );
            let p = pod(
                "rec-1-a",
                "job-uid",
                "Succeeded",
                &format!("{{terminated: {{exitCode: 0, message: {report}}}}}"),
            );
            derive_status(&rj, Some(&job), &[&p], None, &Admission::Admitted, now())
        };
        let written = finished(
            r#"'{"result":"succeeded","outputs":[{"kind":"mixdown","key":"out/mixdown.mp4","sizeBytes":3000,"durationSeconds":31.5},{"participantId":"alice","key":"out/alice.mp4","sizeBytes":1000,"durationSeconds":30.0}]}'"#,
        );
        assert!(written.outputs[0].is_mixdown());
        let mixdown = condition(&written, "MixdownReady").expect("MixdownReady");
        assert_eq!(
            (mixdown.status.as_str(), mixdown.reason.as_str()),
            ("True", "MixdownWritten")
        );
        let complete = &condition(&written, "Complete").unwrap().message;
        assert!(complete.contains("the mixdown among them"), "{complete}");

        let not_made = finished(
            r#"'{"result":"succeeded","outputs":[{"participantId":"alice","key":"out/alice.mp4","sizeBytes":1000,"durationSeconds":30.0}],"mixdownFailure":{"reason":"MixdownFailed","message":"ffmpeg exited 1"}}'"#,
        );
        assert_eq!(not_made.phase, Some(Phase::Succeeded), "the files are fine");
        assert_eq!(not_made.outputs.len(), 1);
        let mixdown = condition(&not_made, "MixdownReady").expect("MixdownReady");
        assert_eq!(
            (mixdown.status.as_str(), mixdown.reason.as_str()),
            ("False", "MixdownFailed")
        );
        assert!(
            mixdown.message.contains("ffmpeg exited 1"),
            "{}",
            mixdown.message
        );

        // No mixdown asked for: no condition.
        let plain = finished(SUCCEEDED_REPORT);
        assert!(condition(&plain, "MixdownReady").is_none());

        // Running, with the worker's readyOutputs: Mixing.
        let mut view = recording_job(RJ);
        view.status = Some(RecordingJobStatus {
            ready_outputs: not_made.outputs.clone(),
            ..RecordingJobStatus::default()
        });
        let p = pod(
            "rec-1-a",
            "job-uid",
            "Running",
            "{running: {startedAt: '2026-01-01T10:00:05Z'}}",
        );
        // The Job says whether its worker makes a mixdown.
        let worker_job = |composite: bool| {
            let mut j = job("rec-1", "job-uid", "{active: 1}");
            j.annotations_mut().insert(
                mixdown_crds::names::annotations::COMPOSITE.into(),
                composite.to_string(),
            );
            j
        };
        let running_under = |composite: bool| {
            let job = worker_job(composite);
            assert_eq!(crate::job::makes_mixdown(&job), composite);
            derive_status(&view, Some(&job), &[&p], None, &Admission::Admitted, now())
        };
        let running = running_under(true);
        assert_eq!(running.phase, Some(Phase::Running));
        let mixing = condition(&running, "MixdownReady").expect("MixdownReady");
        assert_eq!(
            (mixing.status.as_str(), mixing.reason.as_str()),
            ("False", "Mixing")
        );
        assert!(
            running.ready_outputs.is_empty(),
            "readyOutputs are the worker's to write"
        );
        // Without a mixdown, the worker's last write lists the files too: nothing is mixing.
        let plain = running_under(false);
        assert_eq!(plain.phase, Some(Phase::Running));
        assert!(condition(&plain, "MixdownReady").is_none(), "{plain:#?}");
    }

    #[test]
    fn outputs_carry_sizes_and_durations() {
        let rj = recording_job(RJ);
        let job = job(
            "rec-1",
            "job-uid",
            "{completionTime: '2026-01-01T10:01:00Z', conditions: [{type: Complete, status: 'True'}]}",
        );
        let p = pod(
            "rec-1-a",
            "job-uid",
            "Succeeded",
            &format!("{{terminated: {{exitCode: 0, message: {SUCCEEDED_REPORT}}}}}"),
        );
        let status = derive_status(&rj, Some(&job), &[&p], None, &Admission::Admitted, now());
        assert_eq!(status.outputs[1].participant_id, "bob");
        assert_eq!(status.outputs[1].size_bytes, 2000);
        assert_eq!(status.outputs[1].duration_seconds, 29.9);
        assert_eq!(
            status.completion_time,
            Some(Time("2026-01-01T10:01:00Z".parse().unwrap()))
        );
    }

    #[test]
    fn transition_times_move_only_when_a_condition_flips() {
        let running_job = job("rec-1", "job-uid", "{active: 1}");
        let running_pod = pod("rec-1-a", "job-uid", "Running", "{running: {}}");
        let rj = recording_job(RJ);
        let first = derive_status(
            &rj,
            Some(&running_job),
            &[&running_pod],
            None,
            &Admission::Admitted,
            now(),
        );
        let ran_at = condition(&first, "Running")
            .unwrap()
            .last_transition_time
            .clone();
        assert_eq!(ran_at, Time(now()));

        // Later, same world: nothing moves, so nothing needs writing.
        let mut rj2 = rj.clone();
        rj2.status = Some(first.clone());
        let later = now()
            .checked_add(jiff::SignedDuration::from_secs(30))
            .unwrap();
        let second = derive_status(
            &rj2,
            Some(&running_job),
            &[&running_pod],
            None,
            &Admission::Admitted,
            later,
        );
        assert_eq!(second, first);
        assert!(!needs_write(Some(&first), &second));

        // The Pod succeeds: Running flips to False with a new time, Queued keeps its own.
        let done_job = job(
            "rec-1",
            "job-uid",
            "{succeeded: 1, conditions: [{type: Complete, status: 'True'}]}",
        );
        let done_pod = pod(
            "rec-1-a",
            "job-uid",
            "Succeeded",
            "{terminated: {exitCode: 0}}",
        );
        let third = derive_status(
            &rj2,
            Some(&done_job),
            &[&done_pod],
            None,
            &Admission::Admitted,
            later,
        );
        assert_eq!(condition(&third, "Running").unwrap().status, "False");
        assert_eq!(
            condition(&third, "Running").unwrap().last_transition_time,
            Time(later)
        );
        assert_eq!(
            condition(&third, "Queued").unwrap().last_transition_time,
            condition(&first, "Queued").unwrap().last_transition_time
        );
        assert!(needs_write(Some(&first), &third));
    }

    #[test]
    fn finished_statuses_are_final_even_when_the_job_is_gone() {
        let rj = rj_with_status(
            r#"{phase: Succeeded, jobName: rec-1, attempts: 1, progress: 100, observedGeneration: 1,
               outputs: [{participantId: alice, key: out/alice.mp4, sizeBytes: 5, durationSeconds: 1.0}]}"#,
        );
        let status = derive_status(&rj, None, &[], None, &Admission::Admitted, now());
        assert_eq!(status.phase, Some(Phase::Succeeded));
        assert_eq!(status.outputs.len(), 1);
        assert_eq!(status.progress, None);
    }

    #[test]
    fn an_invalid_spec_is_judged_again_after_an_edit() {
        let mut rj = rj_with_status("{phase: Failed, reason: InvalidSpec, observedGeneration: 1}");
        rj.metadata.generation = Some(2);
        let status = derive_status(&rj, None, &[], None, &Admission::Admitted, now());
        assert_eq!(status.phase, Some(Phase::Pending));
        assert_eq!(status.observed_generation, Some(2));
    }

    #[test]
    fn a_refused_job_fails_the_recording_job_until_its_spec_changes() {
        for reason in ["InvalidSpec", "Forbidden", "JobConflict"] {
            let refused = Admission::Refused(Refusal {
                reason,
                message: format!("the API server refused Job rec-1: {reason}"),
            });
            let mut rj = recording_job(RJ);
            let status = derive_status(&rj, None, &[], None, &refused, now());
            assert_eq!(status.phase, Some(Phase::Failed), "{reason}");
            assert_eq!(status.reason.as_deref(), Some(reason));
            assert!(status.message.as_deref().unwrap().ends_with(reason));
            assert_eq!(status.job_name, None);
            assert_eq!(status.completion_time, Some(Time(now())));
            let failed = condition(&status, "Failed").expect("a Failed condition");
            assert_eq!(
                (failed.status.as_str(), failed.reason.as_str()),
                ("True", reason)
            );
            assert_eq!(failed.message, status.message.clone().unwrap());
            assert_eq!(failed.observed_generation, Some(1));
            assert_eq!(status.observed_generation, Some(1));

            // Recorded: final at its generation, whatever the reconciler decides next.
            rj.status = Some(status.clone());
            assert!(is_final(&rj), "{reason}");
            let later = now()
                .checked_add(jiff::SignedDuration::from_secs(60))
                .unwrap();
            let again = derive_status(&rj, None, &[], None, &Admission::Admitted, later);
            assert_eq!(again, status, "{reason}: not judged again");
            assert!(!needs_write(Some(&status), &again));

            // An edit: judged again, and refused again at the new generation.
            rj.metadata.generation = Some(2);
            assert!(!is_final(&rj), "{reason}");
            let edited = derive_status(&rj, None, &[], None, &refused, later);
            assert_eq!(edited.phase, Some(Phase::Failed));
            assert_eq!(edited.observed_generation, Some(2));
            assert!(needs_write(Some(&status), &edited), "{reason}");
        }
    }

    #[test]
    fn only_timestamp_changes_need_no_write() {
        let base = derive_status(
            &recording_job(RJ),
            None,
            &[],
            None,
            &Admission::Queued {
                max_running_jobs: 2,
            },
            now(),
        );
        let mut moved = base.clone();
        moved.conditions[0].last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        assert!(!needs_write(Some(&base), &moved));
        let mut with_progress = base.clone();
        with_progress.progress = Some(40);
        assert!(
            !needs_write(Some(&with_progress), &base),
            "progress is not ours"
        );
        let mut other = base.clone();
        other.phase = Some(Phase::Pending);
        assert!(needs_write(Some(&base), &other));
        assert!(needs_write(None, &base));
    }

    #[test]
    fn progress_of_an_earlier_attempt_is_stale() {
        let with_progress = |time: &str| {
            let mut rj = rj_with_status("{progress: 100}");
            rj.metadata.managed_fields = Some(vec![serde_yaml::from_str(&format!(
                "{{manager: mixdown-worker, operation: Apply, subresource: status, time: '{time}'}}"
            ))
            .unwrap()]);
            rj
        };
        let attempt = |created: &str| Attempt {
            name: "p".into(),
            created: Some(Time(created.parse().unwrap())),
            started: true,
            running: true,
            finished: false,
            started_at: None,
            ended: None,
        };
        let stale = with_progress("2026-01-01T10:00:30Z");
        assert!(progress_is_stale(
            &stale,
            Some(&attempt("2026-01-01T10:01:00Z")),
            "mixdown-worker"
        ));
        let same_second = with_progress("2026-01-01T10:01:00Z");
        assert!(progress_is_stale(
            &same_second,
            Some(&attempt("2026-01-01T10:01:00Z")),
            "mixdown-worker"
        ));
        let fresh = with_progress("2026-01-01T10:01:01Z");
        assert!(!progress_is_stale(
            &fresh,
            Some(&attempt("2026-01-01T10:01:00Z")),
            "mixdown-worker"
        ));
        assert!(!progress_is_stale(&stale, None, "mixdown-worker"));
        assert!(!progress_is_stale(
            &recording_job(RJ),
            Some(&attempt("2026-01-01T10:01:00Z")),
            "mixdown-worker"
        ));
    }

    const PENDING_JOB: &str = "{startTime: '2026-01-01T10:00:00Z', active: 1}";

    fn waiting(reason: &str, message: &str) -> String {
        format!("{{waiting: {{reason: {reason}, message: '{message}'}}}}")
    }

    #[test]
    fn a_pod_that_cannot_start_says_why_while_pending() {
        let rj = recording_job(RJ);
        let job = job("rec-1", "job-uid", PENDING_JOB);
        let mut unschedulable = pod("rec-1-c", "job-uid", "Pending", "{waiting: {}}");
        unschedulable.status.as_mut().unwrap().conditions = Some(vec![
            serde_yaml::from_str(
                "{type: PodScheduled, status: 'False', reason: Unschedulable, message: '0/3 nodes are available: 3 Insufficient cpu.'}",
            )
            .unwrap(),
        ]);
        // (case, Pods, the Job controller's FailedCreate message, expected reason and message part)
        type Case<'a> = (
            &'a str,
            Vec<Pod>,
            Option<&'a str>,
            Option<(&'a str, &'a str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "a missing Secret",
                vec![pod(
                    "rec-1-a",
                    "job-uid",
                    "Pending",
                    &waiting("CreateContainerConfigError", "secret \"s3\" not found"),
                )],
                None,
                Some((
                    "CreateContainerConfigError",
                    "worker Pod rec-1-a cannot start: secret \"s3\" not found",
                )),
            ),
            (
                "an image that cannot be pulled",
                vec![pod(
                    "rec-1-a",
                    "job-uid",
                    "Pending",
                    &waiting(
                        "ImagePullBackOff",
                        "Back-off pulling image mixdown-worker:nope",
                    ),
                )],
                None,
                Some((
                    "ImagePullBackOff",
                    "Back-off pulling image mixdown-worker:nope",
                )),
            ),
            (
                "no node fits",
                vec![unschedulable],
                None,
                Some((
                    "Unschedulable",
                    "worker Pod rec-1-c cannot be scheduled: 0/3 nodes are available",
                )),
            ),
            (
                "the Job controller cannot create the Pod",
                vec![],
                Some("Error creating: serviceaccount \"worker\" not found"),
                Some((
                    "FailedCreate",
                    "cannot create the worker Pod: Error creating: serviceaccount \"worker\" not found",
                )),
            ),
            (
                "a Pod on its way",
                vec![pod(
                    "rec-1-a",
                    "job-uid",
                    "Pending",
                    &waiting("ContainerCreating", ""),
                )],
                Some("an old FailedCreate, before the Pod existed"),
                None,
            ),
            ("no Pod yet, no Event", vec![], None, None),
        ];
        for (name, pods, create_failure, expected) in cases {
            let pods: Vec<&Pod> = pods.iter().collect();
            let status = derive_status(
                &rj,
                Some(&job),
                &pods,
                create_failure,
                &Admission::Admitted,
                now(),
            );
            assert_eq!(status.phase, Some(Phase::Pending), "{name}");
            assert_eq!(status.completion_time, None, "{name}");
            let running = condition(&status, "Running");
            match expected {
                Some((reason, part)) => {
                    assert_eq!(status.reason.as_deref(), Some(reason), "{name}");
                    let message = status.message.as_deref().unwrap_or_default();
                    assert!(message.contains(part), "{name}: {message:?} lacks {part:?}");
                    let running = running.unwrap_or_else(|| panic!("{name}: a Running condition"));
                    assert_eq!(
                        (running.status.as_str(), running.reason.as_str()),
                        ("False", reason),
                        "{name}"
                    );
                    assert_eq!(running.message, message, "{name}");
                }
                None => {
                    assert_eq!(status.reason, None, "{name}");
                    assert_eq!(status.message, None, "{name}");
                    assert!(running.is_none(), "{name}: {running:?}");
                }
            }
        }
    }

    #[test]
    fn a_pod_not_started_by_the_start_timeout_fails_the_recording_job_with_the_last_cause() {
        // The Job was created at 10:00; it is 10:05.
        let job = job("rec-1", "job-uid", PENDING_JOB);
        let stuck = pod(
            "rec-1-a",
            "job-uid",
            "Pending",
            &waiting("ErrImagePull", "pull access denied for mixdown-worker"),
        );
        let with_timeout = |seconds: i64| {
            recording_job(&RJ.replace(
                "backoffLimit: 2",
                &format!("backoffLimit: 2\n  startTimeoutSeconds: {seconds}"),
            ))
        };

        let within = with_timeout(301);
        let status = derive_status(
            &within,
            Some(&job),
            &[&stuck],
            None,
            &Admission::Admitted,
            now(),
        );
        assert_eq!(status.phase, Some(Phase::Pending), "{status:#?}");

        let past = with_timeout(300);
        let status = derive_status(
            &past,
            Some(&job),
            &[&stuck],
            None,
            &Admission::Admitted,
            now(),
        );
        assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
        assert_eq!(status.reason.as_deref(), Some("PodNotStarted"));
        let message = status.message.clone().unwrap_or_default();
        assert!(
            message.starts_with("no worker Pod started within 300s of Job rec-1's creation (last cause: ErrImagePull: worker Pod rec-1-a cannot start: pull access denied"),
            "{message}"
        );
        assert!(message.ends_with("the chunks are kept"), "{message}");
        assert_eq!(status.attempts, Some(0));
        assert_eq!(status.job_name.as_deref(), Some("rec-1"));
        assert!(status.completion_time.is_some());
        let failed = condition(&status, "Failed").expect("a Failed condition");
        assert_eq!(
            (failed.status.as_str(), failed.reason.as_str()),
            ("True", "PodNotStarted")
        );

        // Final: once written, it stays, even when the Job is deleted and its Pod with it.
        let mut written = past.clone();
        written.status = Some(status.clone());
        assert!(is_final(&written));
        let after = derive_status(&written, None, &[], None, &Admission::Admitted, now());
        assert_eq!(after, status);

        // Without any cause seen, the message says so.
        let status = derive_status(&past, Some(&job), &[], None, &Admission::Admitted, now());
        assert!(
            status
                .message
                .unwrap_or_default()
                .contains("(Kubernetes reported no cause)"),
        );

        // The deadline is for the first start only: a started attempt is the Job's to time.
        let running = pod("rec-1-a", "job-uid", "Running", "{running: {}}");
        let status = derive_status(
            &past,
            Some(&job),
            &[&running],
            None,
            &Admission::Admitted,
            now(),
        );
        assert_eq!(status.phase, Some(Phase::Running));
    }

    #[test]
    fn a_job_deleted_by_hand_waits_for_its_pods_then_tells_what_they_did() {
        let running = rj_with_status(
            "{phase: Running, jobName: rec-1, attempts: 1, startTime: '2026-01-01T10:00:00Z'}",
        );
        let term = |code: i32, msg: &str| {
            format!(
                "{{terminated: {{exitCode: {code}, finishedAt: '2026-01-01T10:04:00Z', message: {msg}}}}}"
            )
        };

        // Its Pod is still running (orphaned, or terminating): nothing is decided, no new Job.
        let live = pod("rec-1-a", "job-uid", "Running", "{running: {}}");
        let waiting = job_deleted_status(&running, "rec-1", &[&live], now());
        assert_eq!(waiting.phase, Some(Phase::Running), "{waiting:#?}");
        assert_eq!(
            waiting.conditions,
            running.status.as_ref().unwrap().conditions
        );
        assert_eq!(waiting.reason.as_deref(), Some("JobDeleted"));
        let message = waiting.message.clone().unwrap_or_default();
        assert!(
            message.starts_with("Job rec-1 was deleted; waiting for worker Pod rec-1-a to end"),
            "{message}"
        );
        assert!(!is_final(&RecordingJob {
            status: Some(waiting.clone()),
            ..running.clone()
        }));

        // Its Pods are gone before the worker finished: Failed, final, the attempts kept.
        let failed = job_deleted_status(&running, "rec-1", &[], now());
        assert_eq!(failed.phase, Some(Phase::Failed), "{failed:#?}");
        assert_eq!(failed.reason.as_deref(), Some("JobDeleted"));
        assert_eq!(failed.attempts, Some(1));
        assert_eq!(failed.job_name.as_deref(), Some("rec-1"));
        assert!(failed.completion_time.is_some());
        let condition_of_failure = condition(&failed, "Failed").expect("a Failed condition");
        assert_eq!(
            (
                condition_of_failure.status.as_str(),
                condition_of_failure.reason.as_str()
            ),
            ("True", "JobDeleted")
        );
        assert!(
            failed
                .message
                .unwrap_or_default()
                .contains("before its worker finished (1 attempt(s) started); no new Job is made")
        );

        // A worker killed by the deletion (exit 137) is a failure too.
        let killed = pod("rec-1-a", "job-uid", "Failed", &term(137, "''"));
        let status = job_deleted_status(&running, "rec-1", &[&killed], now());
        assert_eq!(status.phase, Some(Phase::Failed));

        // An orphaned worker that finished and verified its outputs: the recording is processed.
        let done = pod(
            "rec-1-a",
            "job-uid",
            "Succeeded",
            &term(0, SUCCEEDED_REPORT),
        );
        let status = job_deleted_status(&running, "rec-1", &[&done], now());
        assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
        assert_eq!(status.reason, None);
        assert_eq!(status.outputs.len(), 2);
        let complete = condition(&status, "Complete").expect("Complete");
        assert!(
            complete
                .message
                .contains("was deleted after the worker finished")
        );
    }

    #[test]
    fn a_spec_edit_after_the_job_is_made_is_said_not_applied_and_not_claimed_observed() {
        let mut built = job("rec-1", "job-uid", PENDING_JOB);
        built.metadata.annotations = Some(std::collections::BTreeMap::from([(
            "mixdown.dev/spec-generation".to_string(),
            "1".to_string(),
        )]));
        let running = pod("rec-1-a", "job-uid", "Running", "{running: {}}");
        let applied = |status: &RecordingJobStatus| {
            condition(status, "SpecApplied").map(|c| (c.status.clone(), c.reason.clone()))
        };

        let rj = recording_job(RJ);
        let status = derive_status(
            &rj,
            Some(&built),
            &[&running],
            None,
            &Admission::Admitted,
            now(),
        );
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(
            applied(&status),
            Some(("True".into(), "SpecApplied".into()))
        );

        let mut edited = rj.clone();
        edited.metadata.generation = Some(2);
        let status = derive_status(
            &edited,
            Some(&built),
            &[&running],
            None,
            &Admission::Admitted,
            now(),
        );
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(
            status.observed_generation,
            Some(1),
            "the edit is not claimed as observed"
        );
        assert_eq!(
            applied(&status),
            Some(("False".into(), "SpecChangeNotApplied".into()))
        );
        let message = &condition(&status, "SpecApplied").unwrap().message;
        assert!(
            message.starts_with(
                "the spec was edited (generation 2) after Job rec-1 was made from generation 1"
            ),
            "{message}"
        );

        // After the end: the status stays final, and says the edit changed nothing.
        let done = rj_with_status(
            "{phase: Succeeded, jobName: rec-1, observedGeneration: 1, conditions: [{type: Complete, status: 'True', reason: Completed, message: done, lastTransitionTime: '2026-01-01T10:04:00Z'}]}",
        );
        let mut edited_after = done.clone();
        edited_after.metadata.generation = Some(2);
        let status = derive_status(&edited_after, None, &[], None, &Admission::Admitted, now());
        assert_eq!(status.phase, Some(Phase::Succeeded));
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(condition(&status, "Complete").unwrap().status, "True");
        assert_eq!(
            applied(&status),
            Some(("False".into(), "SpecChangeNotApplied".into()))
        );
        // Unedited, nothing is added.
        let status = derive_status(&done, None, &[], None, &Admission::Admitted, now());
        assert_eq!(applied(&status), None);
    }

    #[test]
    fn start_time_is_when_the_worker_started_and_an_earlier_failure_is_said_as_such() {
        let rj = recording_job(RJ);
        let mut job = job(
            "rec-1",
            "job-uid",
            "{startTime: '2026-01-01T10:00:00Z', active: 1, failed: 1}",
        );
        job.spec.as_mut().unwrap().backoff_limit = Some(2);
        let first = pod(
            "rec-1-a",
            "job-uid",
            "Failed",
            &format!(
                "{{terminated: {{exitCode: 1, startedAt: '2026-01-01T10:00:40Z', finishedAt: '2026-01-01T10:01:00Z', message: {STORAGE_REPORT}}}}}"
            ),
        );
        let second = pod_created(
            "rec-1-b",
            "job-uid",
            "Running",
            "{running: {startedAt: '2026-01-01T10:02:10Z'}}",
            "2026-01-01T10:02:00Z",
        );
        let status = derive_status(
            &rj,
            Some(&job),
            &[&first, &second],
            None,
            &Admission::Admitted,
            now(),
        );
        assert_eq!(
            status.start_time,
            Some(Time("2026-01-01T10:00:40Z".parse().unwrap())),
            "the first worker's start, not the Job's creation"
        );
        assert_eq!(status.reason.as_deref(), Some("StorageError"));
        assert_eq!(
            status.message.as_deref(),
            Some("attempt 2 is running; the previous one failed: connection refused")
        );

        // Between two attempts.
        let status = derive_status(
            &rj,
            Some(&job),
            &[&first],
            None,
            &Admission::Admitted,
            now(),
        );
        assert_eq!(
            status.message.as_deref(),
            Some(
                "attempt 1 failed: connection refused; the Job starts the next one (at most 3 in all)"
            )
        );

        // A Pod still waiting to start has no start time.
        let waiting = pod(
            "rec-1-a",
            "job-uid",
            "Pending",
            "{waiting: {reason: ContainerCreating}}",
        );
        let pending = job_fixture_active();
        let status = derive_status(
            &rj,
            Some(&pending),
            &[&waiting],
            None,
            &Admission::Admitted,
            now(),
        );
        assert_eq!(status.phase, Some(Phase::Pending));
        assert_eq!(status.start_time, None);
    }

    fn job_fixture_active() -> Job {
        job("rec-1", "job-uid", PENDING_JOB)
    }

    #[test]
    fn files_a_full_report_left_out_come_from_the_workers_ready_outputs() {
        const THREE: &str = r#"
metadata: {name: rec-1, namespace: studio, uid: rj-uid, generation: 1}
spec:
  roomId: room1
  recordingId: r1
  tracks:
  - {participantId: alice, source: {prefix: c/alice/, chunkCount: 3}}
  - {participantId: bob, source: {prefix: c/bob/, chunkCount: 3}}
  - {participantId: carol, source: {prefix: c/carol/, chunkCount: 3}}
  output: {prefix: out/}
"#;
        let file = |id: &str, size: i64| mixdown_crds::RecordingOutput {
            participant_id: id.into(),
            key: format!("out/{id}.mp4"),
            size_bytes: size,
            duration_seconds: 3.0,
            sealed: true,
            chunks: Some(3),
            kind: mixdown_crds::OutputKind::Track,
            left_out: None,
        };
        let mixdown = mixdown_crds::RecordingOutput {
            kind: mixdown_crds::OutputKind::Mixdown,
            participant_id: String::new(),
            key: "out/mixdown.mp4".into(),
            size_bytes: 9,
            duration_seconds: 3.0,
            sealed: true,
            chunks: None,
            left_out: None,
        };
        let ready =
            serde_json::to_string(&[file("alice", 1), file("bob", 2), file("carol", 3)]).unwrap();
        let with_ready = recording_job(&format!("{THREE}status: {{readyOutputs: {ready}}}\n"));
        let without = recording_job(THREE);
        let ids = |outputs: &[mixdown_crds::RecordingOutput]| -> Vec<(String, i64)> {
            outputs
                .iter()
                .map(|o| (o.key.clone(), o.size_bytes))
                .collect()
        };
        let keys = |list: &[(&str, i64)]| -> Vec<(String, i64)> {
            list.iter().map(|(k, s)| (k.to_string(), *s)).collect()
        };
        /// The name, the RecordingJob, the report's outputs, what is listed, what is not.
        type Row<'a> = (
            &'a str,
            &'a RecordingJob,
            Vec<mixdown_crds::RecordingOutput>,
            Vec<(&'a str, i64)>,
            Vec<&'a str>,
        );
        let rows: Vec<Row> = vec![
            (
                "a report with every file: as reported, mixdown first",
                &without,
                vec![
                    file("alice", 1),
                    file("bob", 2),
                    mixdown.clone(),
                    file("carol", 3),
                ],
                vec![
                    ("out/mixdown.mp4", 9),
                    ("out/alice.mp4", 1),
                    ("out/bob.mp4", 2),
                    ("out/carol.mp4", 3),
                ],
                vec![],
            ),
            (
                "files the report left out come from readyOutputs, in the spec's order",
                &with_ready,
                vec![mixdown.clone(), file("carol", 3)],
                vec![
                    ("out/mixdown.mp4", 9),
                    ("out/alice.mp4", 1),
                    ("out/bob.mp4", 2),
                    ("out/carol.mp4", 3),
                ],
                vec![],
            ),
            (
                "the report's entry wins over readyOutputs",
                &with_ready,
                vec![file("alice", 10), file("bob", 20), file("carol", 30)],
                vec![
                    ("out/alice.mp4", 10),
                    ("out/bob.mp4", 20),
                    ("out/carol.mp4", 30),
                ],
                vec![],
            ),
            (
                "left out and no readyOutputs: named, never silently missing",
                &without,
                vec![mixdown.clone(), file("bob", 2)],
                vec![("out/mixdown.mp4", 9), ("out/bob.mp4", 2)],
                vec!["alice", "carol"],
            ),
        ];
        for (name, rj, report, listed, unlisted) in rows {
            let (outputs, missing) = listed_outputs(rj, report);
            assert_eq!(ids(&outputs), keys(&listed), "{name}");
            assert_eq!(missing, unlisted, "{name}");
            assert_eq!(misses_files(rj, &outputs), !unlisted.is_empty(), "{name}");
        }
        let note = unlisted_note(&["alice".into(), "carol".into()]);
        assert!(
            note.contains("2 participant file(s) not listed in outputs (alice, carol)"),
            "{note}"
        );
        assert!(note.contains("manifest.json"), "{note}");
        assert_eq!(unlisted_note(&[]), "");
    }
}
