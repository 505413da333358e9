//! What a Job's Pods say about its attempts: which started, how each ended, and the worker's own
//! report from its termination message.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use mixdown_crds::WorkerReport;
use mixdown_crds::names::exit_codes;

use crate::job::CONTAINER;

/// How one attempt (one worker Pod) ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub exit_code: i32,
    pub finished_at: Option<Time>,
    /// The worker's report, when the termination message held one.
    pub report: Option<WorkerReport>,
    /// The termination message as written, for when it is not a report (the worker crashed, or
    /// the kubelet fell back to the log's tail).
    pub raw_message: Option<String>,
}

impl Ended {
    pub fn is_bad_input(&self) -> bool {
        self.exit_code == exit_codes::BAD_INPUT
    }

    /// `reason` and `message` of a failed attempt, in the worker's words where it left any.
    pub fn failure(&self) -> (String, String) {
        match &self.report {
            Some(WorkerReport::Failed { reason, message }) => (reason.clone(), message.clone()),
            _ => {
                let reason = if self.is_bad_input() {
                    mixdown_crds::names::reasons::INVALID_INPUT
                } else {
                    "WorkerFailed"
                };
                let mut message = format!("the worker exited with code {}", self.exit_code);
                if let Some(raw) = self.raw_message.as_deref().map(str::trim)
                    && !raw.is_empty()
                {
                    message.push_str(": ");
                    message.push_str(&truncate(raw, 512));
                }
                (reason.to_string(), message)
            }
        }
    }
}

/// One worker Pod as far as the status is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub name: String,
    pub created: Option<Time>,
    /// The kubelet started the container (it ran, or runs).
    pub started: bool,
    pub running: bool,
    /// The Pod is done: its container terminated, or the Pod itself ended (evicted, say).
    pub finished: bool,
    /// When the worker container started (its running or terminated state says).
    pub started_at: Option<Time>,
    pub ended: Option<Ended>,
}

/// The attempts of `job`: its own Pods (by controller uid, so Pods of an earlier Job of the same
/// name do not count), oldest first.
pub fn attempts(job: &Job, pods: &[&Pod]) -> Vec<Attempt> {
    let Some(job_uid) = job.metadata.uid.as_deref() else {
        return Vec::new();
    };
    let mut attempts: Vec<Attempt> = pods
        .iter()
        .filter(|pod| {
            pod.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == job_uid)
        })
        .map(|pod| attempt(pod))
        .collect();
    attempts.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    attempts
}

/// The attempts of worker Pods whatever their owner (a deleted Job's Pods, orphaned or on their
/// way out), oldest first.
pub fn attempts_of_pods(pods: &[&Pod]) -> Vec<Attempt> {
    let mut attempts: Vec<Attempt> = pods.iter().map(|pod| attempt(pod)).collect();
    attempts.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    attempts
}

fn attempt(pod: &Pod) -> Attempt {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER));
    let state = container.and_then(|c| c.state.as_ref());
    let terminated: Option<&ContainerStateTerminated> = state.and_then(|s| s.terminated.as_ref());
    let running = phase == "Running" && terminated.is_none();
    let ended = terminated.map(|t| {
        let report = t
            .message
            .as_deref()
            .and_then(|m| serde_json::from_str::<WorkerReport>(m.trim()).ok());
        Ended {
            exit_code: t.exit_code,
            finished_at: t.finished_at.clone(),
            report,
            raw_message: t.message.clone(),
        }
    });
    let started = running
        || ended.is_some()
        || state.is_some_and(|s| s.running.is_some())
        || matches!(phase, "Succeeded" | "Failed");
    Attempt {
        name: pod.name_any(),
        created: pod.metadata.creation_timestamp.clone(),
        started,
        running,
        finished: ended.is_some() || matches!(phase, "Succeeded" | "Failed"),
        started_at: state
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.clone())
            .or_else(|| terminated.and_then(|t| t.started_at.clone())),
        ended,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{job, pod};

    #[test]
    fn pods_of_other_jobs_are_not_attempts() {
        let job = job("rec-1", "job-uid", "{}");
        let mine = pod("rec-1-aaaaa", "job-uid", "Running", "{running: {}}");
        let stale = pod(
            "rec-1-bbbbb",
            "old-uid",
            "Failed",
            "{terminated: {exitCode: 1}}",
        );
        let found = attempts(&job, &[&mine, &stale]);
        assert_eq!(found.len(), 1);
        assert!(found[0].running && found[0].started);
    }

    #[test]
    fn reports_are_read_from_the_termination_message() {
        let job = job("rec-1", "u", "{}");
        let cases = [
            (
                r#"{terminated: {exitCode: 2, message: '{"result":"failed","reason":"MissingChunk","message":"chunk 00000001.webm of alice is missing"}'}}"#,
                ("MissingChunk", "chunk 00000001.webm of alice is missing"),
            ),
            (
                "{terminated: {exitCode: 2, message: 'panicked at main.rs'}}",
                (
                    "InvalidInput",
                    "the worker exited with code 2: panicked at main.rs",
                ),
            ),
            (
                "{terminated: {exitCode: 137}}",
                ("WorkerFailed", "the worker exited with code 137"),
            ),
        ];
        for (state, (reason, message)) in cases {
            let p = pod("rec-1-a", "u", "Failed", state);
            let found = attempts(&job, &[&p]);
            let ended = found[0].ended.as_ref().expect("ended");
            assert_eq!(ended.failure(), (reason.to_string(), message.to_string()));
        }
    }

    #[test]
    fn pending_pods_have_not_started() {
        let job = job("rec-1", "u", "{}");
        let p = pod(
            "rec-1-a",
            "u",
            "Pending",
            "{waiting: {reason: ContainerCreating}}",
        );
        let found = attempts(&job, &[&p]);
        assert!(!found[0].started);
    }
}
