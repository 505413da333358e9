//! What the operator does differently by Kubernetes version, on the version the test kit runs
//! (`cargo xtask test` runs this file on a current Kubernetes and on 1.20):
//!
//! - Bad input (worker exit code 2). From 1.26 the Job's own `podFailurePolicy` fails it at once:
//!   exactly one Pod, and the Job Failed with reason PodFailurePolicy. Before, the Job controller
//!   ignores the policy and the operator stops the retries itself (parallelism 0 and a deadline
//!   already past: the Job fails with DeadlineExceeded).
//! - A spec edit after the Job exists. From 1.25 the CRD's CEL rules refuse an edit of a field
//!   that cannot change, naming it, so the RecordingJob and its Job stay as they were. Before,
//!   the edit is stored and the SpecApplied condition says it was not applied (e2e.rs).

mod common;

use std::time::Duration;

use common::{WORKER_IMAGE, World, recording, spec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use mixdown_crds::Phase;

const LONG: Duration = Duration::from_secs(180);
/// Longer than the Job controller's first backoff (10 s) before it replaces a failed Pod: a
/// replacement would exist by then.
const REPLACEMENT_WINDOW: Duration = Duration::from_secs(15);

fn job_condition(job: &Job, type_: &str) -> Option<(String, String)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

async fn worker_pods(world: &World, job: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), world.namespace());
    pods.list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .expect("listing Pods")
        .items
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_after_one_pod_by_the_jobs_own_policy_or_the_operators_fallback() {
    let world = World::new(&[]).await;
    let version = world.cp.version();
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let chunks = recording(3, "320x240").await;
    let prefix = world
        .upload_track("room1", "bad", "alice", &chunks, &[1])
        .await;
    world
        .create_rj(
            "bad",
            spec(
                "room1",
                "bad",
                &[("alice", &prefix, chunks.len())],
                serde_json::json!({}),
            ),
        )
        .await;
    let rj = world
        .wait_rj("bad", LONG, "a final phase", |s| {
            s.phase.is_some_and(Phase::is_finished)
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
    assert_eq!(
        status.reason.as_deref(),
        Some("MissingChunk"),
        "{status:#?}"
    );
    assert_eq!(status.attempts, Some(1), "{status:#?}");

    let jobs: Api<Job> = Api::namespaced(world.client.clone(), world.namespace());
    let job = world
        .eventually(LONG, "the Job Failed", || async {
            jobs.get("bad")
                .await
                .ok()
                .filter(|j| job_condition(j, "Failed").is_some())
        })
        .await;
    let (reason, message) = job_condition(&job, "Failed").expect("Failed");
    let spec = job.spec.clone().expect("the Job's spec");
    if version.has_pod_failure_policy() {
        assert_eq!(
            reason, "PodFailurePolicy",
            "Kubernetes {version} fails the Job by its podFailurePolicy: {message}"
        );
        assert!(
            spec.pod_failure_policy.is_some(),
            "Kubernetes {version} keeps the Job's podFailurePolicy"
        );
        // The operator also applies its fallback here (parallelism 0, a deadline already
        // past) when it sees the failed Pod; the Job controller judges the Pod failure policy
        // before the deadline, so the Job still fails by its policy, as checked above.
        // No replacement Pod, now or after the Job controller's backoff.
        tokio::time::sleep(REPLACEMENT_WINDOW).await;
        let pods = worker_pods(&world, "bad").await;
        assert_eq!(
            pods.len(),
            1,
            "exactly one Pod on Kubernetes {version}: {:?}",
            pods.iter().map(|p| &p.metadata.name).collect::<Vec<_>>()
        );
    } else {
        // The server dropped the policy; the operator stopped the retries: no more Pods, and a
        // deadline already past, which the Job controller fails the Job for.
        assert!(
            spec.pod_failure_policy.is_none(),
            "Kubernetes {version} has no podFailurePolicy"
        );
        assert_eq!(reason, "DeadlineExceeded", "{message}");
        assert_eq!(spec.parallelism, Some(0), "{spec:#?}");
        // That Job controller may replace the first failed Pod before anyone can stop it; the
        // replacement is not counted as an attempt.
        tokio::time::sleep(REPLACEMENT_WINDOW).await;
        assert!(worker_pods(&world, "bad").await.len() <= 2);
    }
    let again = world.rjs().get("bad").await.expect("the RecordingJob");
    assert_eq!(again.status.and_then(|s| s.attempts), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_edit_once_the_job_runs_is_refused_from_1_25_or_said_not_applied_before() {
    const SLEEPING: (&str, &str) = ("sleeping-worker:test", "exec sleep 600");
    let world = World::new(&[SLEEPING]).await;
    let version = world.cp.version();
    let _operator = world.operator(SLEEPING.0, &[]);
    let prefix = "riverside/chunks/room1/frozen/alice/";
    world
        .create_rj(
            "frozen",
            spec(
                "room1",
                "frozen",
                &[("alice", prefix, 3)],
                serde_json::json!({}),
            ),
        )
        .await;
    world
        .wait_rj("frozen", LONG, "Running", |s| {
            s.phase == Some(Phase::Running)
        })
        .await;

    let edit = world
        .rjs()
        .patch(
            "frozen",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"backoffLimit": 7}})),
        )
        .await;
    let applied = |s: &mixdown_crds::RecordingJobStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "SpecApplied")
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    if version.enforces_validation_rules() {
        match edit {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{status:?}");
                assert!(
                    status.message.contains("spec.backoffLimit")
                        && status.message.contains(
                            "backoffLimit cannot be changed once the RecordingJob exists"
                        ),
                    "the refusal names the field: {}",
                    status.message
                );
            }
            other => panic!("Kubernetes {version} accepted an edit of backoffLimit: {other:?}"),
        }
        // Nothing changed, so nothing is said.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rj = world.rjs().get("frozen").await.expect("the RecordingJob");
        assert_eq!(rj.metadata.generation, Some(1));
        assert_eq!(rj.spec.backoff_limit, 3);
        let status = rj.status.expect("status");
        assert_eq!(
            applied(&status),
            Some(("True".to_string(), "SpecApplied".to_string())),
            "{status:#?}"
        );
    } else {
        let edited = edit.unwrap_or_else(|e| panic!("Kubernetes {version} stores the edit: {e}"));
        assert_eq!(edited.metadata.generation, Some(2));
        world
            .wait_rj(
                "frozen",
                Duration::from_secs(20),
                "SpecApplied False",
                |s| {
                    applied(s).is_some_and(|(status, reason)| {
                        status == "False" && reason == "SpecChangeNotApplied"
                    })
                },
            )
            .await;
    }
    let jobs: Api<Job> = Api::namespaced(world.client.clone(), world.namespace());
    let job = jobs.get("frozen").await.expect("the Job");
    assert_eq!(
        job.spec.and_then(|s| s.backoff_limit),
        Some(3),
        "the Job is unchanged"
    );
}
