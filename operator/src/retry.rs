//! A retry the user asks for: the `mixdown.dev/retry` annotation on a Failed RecordingJob, with
//! any value not asked for before (the time, say), processes it again once the cause is fixed (a
//! missing chunk uploaded, a Secret created). Pure, so each case is a table row.
//!
//! The Job of the failed run is deleted first, and the new one is made only once it and its
//! Pods are gone, so two workers never overlap. The run before is kept in `status.retries`. A
//! RecordingJob that succeeded is never processed again (its chunks may be gone): the request is
//! recorded as refused, with a Warning Event. A request on a RecordingJob still in progress waits
//! for its end.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mixdown_crds::names::annotations;
use mixdown_crds::{Phase, RecordingJob, RecordingJobStatus, Retry};

use crate::status::{is_final, truncate_to_seconds};

/// What to do about a retry request.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryPlan {
    /// None asked for, already handled, or the RecordingJob is not finished yet.
    Nothing,
    /// The failed run's Job must go first.
    DeleteJob,
    /// Its Job is being deleted: look again soon.
    WaitForJob,
    /// Start again from this status (Pending, the run before in `retries`).
    Start(RecordingJobStatus),
    /// Not done: this status records why.
    Refuse(RecordingJobStatus),
}

/// The retry request on `rj`, if any: the annotation's value, trimmed, when not empty.
pub fn requested(rj: &RecordingJob) -> Option<&str> {
    rj.metadata
        .annotations
        .as_ref()?
        .get(annotations::RETRY)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// What to do about `rj`'s retry request, given its Job (`None` when it has none).
pub fn plan_retry(rj: &RecordingJob, job: Option<&Job>, now: jiff::Timestamp) -> RetryPlan {
    let Some(request) = requested(rj) else {
        return RetryPlan::Nothing;
    };
    let Some(status) = rj.status.as_ref() else {
        return RetryPlan::Nothing;
    };
    if status.retries.iter().any(|r| r.request == request) || !is_final(rj) {
        return RetryPlan::Nothing;
    }
    let at = Some(Time(truncate_to_seconds(now)));
    if status.phase == Some(Phase::Succeeded) {
        let mut refused = status.clone();
        refused.progress = None;
        refused.retries.push(Retry {
            request: request.to_string(),
            at,
            refused: Some(
                "the RecordingJob succeeded: it is never processed again, since its chunks may \
                 be gone; create a new RecordingJob to process the recording again"
                    .to_string(),
            ),
            ..Retry::default()
        });
        return RetryPlan::Refuse(refused);
    }
    match job {
        Some(job) if job.metadata.deletion_timestamp.is_some() => return RetryPlan::WaitForJob,
        Some(_) => return RetryPlan::DeleteJob,
        None => {}
    }
    let mut retries = status.retries.clone();
    retries.push(Retry {
        request: request.to_string(),
        at,
        job_name: status.job_name.clone(),
        attempts: status.attempts,
        reason: status.reason.clone(),
        message: status.message.clone(),
        refused: None,
    });
    RetryPlan::Start(RecordingJobStatus {
        phase: Some(Phase::Pending),
        observed_generation: rj.metadata.generation,
        retries,
        ..RecordingJobStatus::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{job, recording_job};

    const FAILED: &str = r#"
metadata: {name: rec-1, namespace: studio, uid: rj-uid, generation: 1, creationTimestamp: "2026-01-01T10:00:00Z", annotations: {mixdown.dev/retry: "2026-01-01T11:00"}}
spec:
  roomId: room1
  recordingId: r1
  tracks: [{participantId: alice, source: {prefix: c/alice/, chunkCount: 3}}]
  output: {prefix: out/}
status: {phase: Failed, jobName: rec-1, attempts: 1, reason: MissingChunk, message: chunk 1 of alice is missing, observedGeneration: 1}
"#;

    fn now() -> jiff::Timestamp {
        "2026-01-01T11:00:05Z".parse().unwrap()
    }

    #[test]
    fn a_failed_recording_job_is_retried_once_its_job_is_gone_and_its_history_kept() {
        let rj = recording_job(FAILED);
        let old = job("rec-1", "job-uid", "{failed: 1}");
        assert_eq!(plan_retry(&rj, Some(&old), now()), RetryPlan::DeleteJob);
        let mut leaving = old.clone();
        leaving.metadata.deletion_timestamp = Some(Time(now()));
        assert_eq!(
            plan_retry(&rj, Some(&leaving), now()),
            RetryPlan::WaitForJob
        );

        let RetryPlan::Start(status) = plan_retry(&rj, None, now()) else {
            panic!("a start once the Job is gone");
        };
        assert_eq!(status.phase, Some(Phase::Pending));
        assert_eq!(status.job_name, None);
        assert_eq!(status.reason, None);
        assert_eq!(status.attempts, None);
        assert!(status.conditions.is_empty());
        assert_eq!(
            status.retries,
            [Retry {
                request: "2026-01-01T11:00".into(),
                at: Some(Time("2026-01-01T11:00:05Z".parse().unwrap())),
                job_name: Some("rec-1".into()),
                attempts: Some(1),
                reason: Some("MissingChunk".into()),
                message: Some("chunk 1 of alice is missing".into()),
                refused: None,
            }]
        );

        // Handled once: the same request again is nothing, whatever the status says.
        let mut failed_again = rj.clone();
        failed_again.status = Some(RecordingJobStatus {
            phase: Some(Phase::Failed),
            job_name: Some("rec-1".into()),
            retries: status.retries.clone(),
            ..RecordingJobStatus::default()
        });
        assert_eq!(plan_retry(&failed_again, None, now()), RetryPlan::Nothing);
        // A new value asks again, and the history grows.
        failed_again
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(annotations::RETRY.into(), "second".into());
        let RetryPlan::Start(status) = plan_retry(&failed_again, None, now()) else {
            panic!("a second retry");
        };
        assert_eq!(status.retries.len(), 2);
        assert_eq!(status.retries[1].request, "second");
    }

    #[test]
    fn no_request_a_run_in_progress_and_a_success_are_not_retried() {
        let mut rj = recording_job(FAILED);
        rj.metadata.annotations = None;
        assert_eq!(plan_retry(&rj, None, now()), RetryPlan::Nothing);

        let mut blank = recording_job(FAILED);
        blank
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(annotations::RETRY.into(), "  ".into());
        assert_eq!(plan_retry(&blank, None, now()), RetryPlan::Nothing);

        let mut running = recording_job(FAILED);
        running.status.as_mut().unwrap().phase = Some(Phase::Running);
        assert_eq!(plan_retry(&running, None, now()), RetryPlan::Nothing);

        let mut succeeded = recording_job(FAILED);
        succeeded.status.as_mut().unwrap().phase = Some(Phase::Succeeded);
        let RetryPlan::Refuse(status) = plan_retry(&succeeded, None, now()) else {
            panic!("a success is refused");
        };
        assert_eq!(status.phase, Some(Phase::Succeeded));
        assert_eq!(status.retries.len(), 1);
        assert!(
            status.retries[0]
                .refused
                .as_deref()
                .is_some_and(|r| r.starts_with("the RecordingJob succeeded")),
            "{status:#?}"
        );
        // Recorded: not refused twice.
        succeeded.status = Some(status);
        assert_eq!(plan_retry(&succeeded, None, now()), RetryPlan::Nothing);
    }
}
