//! Fixtures for unit tests: objects from inline YAML, the way they come from the API server.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use mixdown_crds::RecordingJob;

/// A RecordingJob from YAML holding `metadata`, `spec` and optionally `status`.
pub fn recording_job(yaml: &str) -> RecordingJob {
    let mut value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("fixture is YAML");
    let map = value.as_mapping_mut().expect("fixture is a mapping");
    map.insert("apiVersion".into(), "mixdown.dev/v1alpha1".into());
    map.insert("kind".into(), "RecordingJob".into());
    serde_yaml::from_value(value).expect("fixture is a RecordingJob")
}

/// A Job named `name` with uid `uid` and the given `status` (YAML).
pub fn job(name: &str, uid: &str, status: &str) -> Job {
    serde_yaml::from_str(&format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}, namespace: studio, uid: {uid}}}\nspec: {{template: {{}}}}\nstatus: {status}\n"
    ))
    .expect("fixture is a Job")
}

/// A worker Pod of the Job with uid `job_uid`, in `phase`, whose worker container is in `state`
/// (YAML of a ContainerState).
pub fn pod(name: &str, job_uid: &str, phase: &str, state: &str) -> Pod {
    pod_created(name, job_uid, phase, state, "2026-01-01T10:00:00Z")
}

/// Like [`pod`], created at `created` (RFC 3339).
pub fn pod_created(name: &str, job_uid: &str, phase: &str, state: &str, created: &str) -> Pod {
    serde_yaml::from_str(&format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: studio
  creationTimestamp: "{created}"
  ownerReferences: [{{apiVersion: batch/v1, kind: Job, name: j, uid: {job_uid}, controller: true}}]
spec: {{containers: []}}
status:
  phase: {phase}
  containerStatuses:
    - {{name: worker, image: w, imageID: "", ready: false, restartCount: 0, state: {state}}}
"#
    ))
    .expect("fixture is a Pod")
}
