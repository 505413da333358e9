//! From a RecordingJob to the batch/v1 Job that runs its worker: validation and building, both pure.
//!
//! The Job is created once and never updated (its Pod template is immutable), so everything the
//! worker needs is decided here: image, storage settings, the credentials Secret by reference,
//! placement, retries and the deadline, and a restricted security context.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvFromSource, EnvVar, PodSecurityContext,
    PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretEnvSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use mixdown_crds::names::{APP_NAME, GROUP, KIND, env, exit_codes, field_managers, labels};
use mixdown_crds::{RecordingJob, WorkerJob};

use crate::config::Config;
use crate::error::{Error, Result};

/// Name of the worker container, which `podFailurePolicy` and status derivation look for.
pub const CONTAINER: &str = "worker";
/// Where the scratch emptyDir is mounted in the worker container.
pub const SCRATCH_DIR: &str = "/scratch";
/// The container's termination message path; the worker writes its report there.
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Longest Job name: the Job controller copies it into the `job-name` label of its Pods.
const MAX_JOB_NAME: usize = 63;

/// Checks that the RecordingJob can become a Job at all: its name fits the Job's, and its spec
/// keeps every rule of [`mixdown_crds::validation`] (a server may not enforce all of the schema,
/// and an object written before a rule existed may break it).
pub fn validate(rj: &RecordingJob) -> Result<()> {
    let name = rj.metadata.name.as_deref().unwrap_or_default();
    if name.len() > MAX_JOB_NAME {
        return Err(Error::InvalidSpec(format!(
            "name {name:?} is longer than {MAX_JOB_NAME} characters, too long for its Job"
        )));
    }
    rj.spec
        .validate()
        .map_err(|invalid| Error::InvalidSpec(format!("spec.{invalid}")))
}

/// The labels of a RecordingJob's Job and Pods.
pub fn child_labels(rj: &RecordingJob) -> BTreeMap<String, String> {
    let name = rj.name_any();
    let mut labels = BTreeMap::from([
        (labels::NAME.to_string(), APP_NAME.to_string()),
        (labels::INSTANCE.to_string(), name.clone()),
        (
            labels::COMPONENT.to_string(),
            labels::COMPONENT_WORKER.to_string(),
        ),
        (labels::PART_OF.to_string(), APP_NAME.to_string()),
        (
            labels::MANAGED_BY.to_string(),
            field_managers::OPERATOR.to_string(),
        ),
        (labels::RECORDING_JOB.to_string(), name),
    ]);
    // Ids may start or end with `_` or `-`, which label values may not: such ids go unlabelled
    // rather than making the Job invalid.
    for (key, value) in [
        (labels::ROOM, &rj.spec.room_id),
        (labels::RECORDING, &rj.spec.recording_id),
    ] {
        if is_label_value(value) {
            labels.insert(key.to_string(), value.clone());
        }
    }
    labels
}

fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The RecordingJob's name and namespace, which every object read from the API server has.
pub fn name_and_namespace(rj: &RecordingJob) -> Result<(String, String)> {
    let name = rj
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let namespace = rj
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata("namespace"))?;
    Ok((name, namespace))
}

/// Whether the worker of `job` makes a mixdown: its `mixdown.dev/composite` annotation (the
/// operator resolved `spec.output.composite` when it built the Job; the caches keep the
/// annotation, not the Pod template). A Job from before the annotation may make one.
pub fn makes_mixdown(job: &Job) -> bool {
    job.annotations()
        .get(mixdown_crds::names::annotations::COMPOSITE)
        .is_none_or(|v| v != "false")
}

/// The Job that runs a RecordingJob's worker. Its name is the RecordingJob's, so a second create
/// finds the first (409) instead of starting a second worker.
pub fn build_job(rj: &RecordingJob, config: &Config) -> Result<Job> {
    validate(rj)?;
    let (name, namespace) = name_and_namespace(rj)?;
    let mut owner = rj
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("uid"))?;
    // Foreground deletion of the RecordingJob waits for the Job.
    owner.block_owner_deletion = Some(true);
    let spec = &rj.spec;
    let labels = child_labels(rj);

    let composite = spec
        .output
        .wants_composite(spec.tracks.len(), config.composite_default);
    let worker_job = WorkerJob {
        composite,
        ..WorkerJob::from(spec)
    };
    let worker_job = serde_json::to_string(&worker_job).map_err(|source| Error::Serialize {
        what: "the worker job",
        source,
    })?;
    let env_var = |name: &str, value: String| EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..EnvVar::default()
    };
    let env = vec![
        env_var(env::JOB, worker_job),
        env_var(env::S3_ENDPOINT, config.s3_endpoint.clone()),
        env_var(env::S3_REGION, config.s3_region.clone()),
        env_var(env::S3_BUCKET, config.s3_bucket.clone()),
        env_var(env::S3_PATH_STYLE, config.s3_path_style.to_string()),
        env_var(env::SCRATCH_DIR, SCRATCH_DIR.to_string()),
        env_var(
            env::TERMINATION_MESSAGE_PATH,
            TERMINATION_MESSAGE_PATH.to_string(),
        ),
        env_var(env::RECORDING_JOB, name.clone()),
        env_var(env::NAMESPACE, namespace.clone()),
        env_var(
            env::PROGRESS_INTERVAL_MS,
            config.worker_progress_interval_ms.to_string(),
        ),
    ];

    let resources = spec.resources.clone().unwrap_or_else(|| {
        let quantity = |q: &str| Quantity(q.to_string());
        ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(&config.worker_cpu_request)),
                (
                    "memory".to_string(),
                    quantity(&config.worker_memory_request),
                ),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                quantity(&config.worker_memory_limit),
            )])),
            ..ResourceRequirements::default()
        }
    });

    let container = Container {
        name: CONTAINER.to_string(),
        image: Some(config.worker_image.clone()),
        image_pull_policy: Some(config.worker_image_pull_policy.clone()),
        env: Some(env),
        env_from: Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: config.s3_credentials_secret.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        resources: Some(resources),
        volume_mounts: Some(vec![VolumeMount {
            name: "scratch".to_string(),
            mount_path: SCRATCH_DIR.to_string(),
            ..VolumeMount::default()
        }]),
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.to_string()),
        // The report is the message; if the worker dies before writing it, the end of its log
        // says why, which beats an empty message.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let pod_spec = PodSpec {
        restart_policy: Some("Never".to_string()),
        service_account_name: Some(config.worker_service_account.clone()),
        // The worker patches its RecordingJob's progress with this token.
        automount_service_account_token: Some(true),
        containers: vec![container],
        volumes: Some(vec![Volume {
            name: "scratch".to_string(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(config.worker_scratch_size.clone())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        }]),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        node_selector: spec.node_selector.clone(),
        tolerations: spec.tolerations.clone(),
        priority_class_name: spec.priority_class_name.clone(),
        ..PodSpec::default()
    };

    let mut annotations = std::collections::BTreeMap::from([(
        mixdown_crds::names::annotations::COMPOSITE.to_string(),
        composite.to_string(),
    )]);
    if let Some(generation) = rj.metadata.generation {
        annotations.insert(
            mixdown_crds::names::annotations::SPEC_GENERATION.to_string(),
            generation.to_string(),
        );
    }
    let annotations = Some(annotations);
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            labels: Some(labels.clone()),
            annotations,
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(spec.backoff_limit),
            active_deadline_seconds: Some(spec.active_deadline_seconds),
            completions: Some(1),
            parallelism: Some(1),
            // Honoured from Kubernetes 1.26 on: bad input fails the Job at once, and evictions
            // do not count as attempts. Older servers drop the field, and the operator stops
            // the retries itself (see `controller::stop_retries`).
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![
                    PodFailurePolicyRule {
                        action: "FailJob".to_string(),
                        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                            container_name: Some(CONTAINER.to_string()),
                            operator: "In".to_string(),
                            values: vec![exit_codes::BAD_INPUT],
                        }),
                        on_pod_conditions: None,
                    },
                    PodFailurePolicyRule {
                        action: "Ignore".to_string(),
                        on_exit_codes: None,
                        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                            type_: "DisruptionTarget".to_string(),
                            status: "True".to_string(),
                        }]),
                    },
                ],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            // No ttlSecondsAfterFinished: the Job's Pods hold the result the status is derived
            // from, so the Job lives as long as its RecordingJob, whose own TTL deletes both.
            ..JobSpec::default()
        }),
        status: None,
    })
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        ..SeccompProfile::default()
    }
}

/// The Job's `metadata.name` and `metadata.namespace` for a RecordingJob, for look-ups.
pub fn job_ref(rj: &RecordingJob) -> kube::runtime::reflector::ObjectRef<Job> {
    let mut r = kube::runtime::reflector::ObjectRef::new(&rj.name_any());
    if let Some(ns) = rj.namespace() {
        r = r.within(&ns);
    }
    r
}

/// Whose the Job of a RecordingJob's name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Controlled by this RecordingJob.
    Ours,
    /// Left from an earlier RecordingJob of the same name (deleted, since names are unique), or
    /// being deleted: garbage collection is about to remove it, so the new Job waits.
    Leaving,
    /// Someone else's (another controller, or none: created by hand, or orphaned when its
    /// RecordingJob was deleted with `propagationPolicy: Orphan`). The operator neither adopts
    /// nor deletes it; the message says whose it is and what to do.
    Foreign(String),
}

/// Judges a Job named like `rj` (from the cache, or read after a create answered 409).
pub fn ownership(job: &Job, rj: &RecordingJob) -> Ownership {
    if is_owned_by(job, rj) {
        return Ownership::Ours;
    }
    if job.metadata.deletion_timestamp.is_some() {
        return Ownership::Leaving;
    }
    let name = job.name_any();
    let controller = job
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    let whose = match controller {
        Some(o)
            if o.kind == KIND
                && o.api_version.starts_with(&format!("{GROUP}/"))
                && o.name == rj.name_any() =>
        {
            return Ownership::Leaving;
        }
        Some(o) => format!("its controller is {} {}", o.kind, o.name),
        None => "it has no controller".to_string(),
    };
    Ownership::Foreign(format!(
        "Job {name} exists and is not controlled by this RecordingJob ({whose}); delete that Job \
         or give the RecordingJob another name"
    ))
}

/// The RecordingJob generation `job` was built from, when the operator that made it said so.
pub fn spec_generation(job: &Job) -> Option<i64> {
    job.metadata
        .annotations
        .as_ref()?
        .get(mixdown_crds::names::annotations::SPEC_GENERATION)?
        .parse()
        .ok()
}

/// Whether `job` is controlled by `rj` (and not by an earlier RecordingJob of the same name).
pub fn is_owned_by(job: &Job, rj: &RecordingJob) -> bool {
    let Some(uid) = rj.meta().uid.as_deref() else {
        return false;
    };
    job.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::recording_job;

    fn job_of(yaml: &str) -> Job {
        build_job(&recording_job(yaml), &Config::default()).expect("builds")
    }

    fn container(job: &Job) -> &Container {
        &job.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    fn env_value<'a>(job: &'a Job, name: &str) -> Option<&'a str> {
        container(job)
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == name)?
            .value
            .as_deref()
    }

    const MINIMAL: &str = r#"
metadata: {name: rec-abc-12345678, namespace: studio, uid: 0000-1111}
spec:
  roomId: room1
  recordingId: abc
  tracks:
    - participantId: alice
      source: {prefix: riverside/chunks/room1/abc/alice/, chunkCount: 3}
  output: {prefix: riverside/processed/room1/abc/}
"#;

    #[test]
    fn the_job_is_named_owned_and_labelled_after_its_recording_job() {
        let job = job_of(MINIMAL);
        assert_eq!(job.metadata.name.as_deref(), Some("rec-abc-12345678"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("studio"));
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "RecordingJob");
        assert_eq!(owner.api_version, "mixdown.dev/v1alpha1");
        assert_eq!(owner.uid, "0000-1111");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        let labels = job.metadata.labels.as_ref().unwrap();
        let pod_labels = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        assert_eq!(Some(labels), pod_labels.labels.as_ref());
        for (key, value) in [
            ("app.kubernetes.io/name", "mixdown"),
            ("app.kubernetes.io/instance", "rec-abc-12345678"),
            ("app.kubernetes.io/component", "worker"),
            ("app.kubernetes.io/part-of", "mixdown"),
            ("app.kubernetes.io/managed-by", "mixdown-operator"),
            ("mixdown.dev/recording-job", "rec-abc-12345678"),
            ("mixdown.dev/room", "room1"),
            ("mixdown.dev/recording", "abc"),
        ] {
            assert_eq!(labels.get(key).map(String::as_str), Some(value), "{key}");
        }
    }

    #[test]
    fn the_worker_gets_its_job_storage_and_credentials_by_reference() {
        let config = Config {
            worker_image: "registry.local/worker:7".into(),
            s3_endpoint: "https://acct.r2.example".into(),
            s3_bucket: "recordings".into(),
            s3_path_style: true,
            s3_credentials_secret: "r2-keys".into(),
            worker_service_account: "custom-sa".into(),
            ..Config::default()
        };
        let job = build_job(&recording_job(MINIMAL), &config).unwrap();
        let c = container(&job);
        assert_eq!(c.image.as_deref(), Some("registry.local/worker:7"));
        let worker_job: WorkerJob =
            serde_json::from_str(env_value(&job, env::JOB).unwrap()).unwrap();
        assert_eq!(worker_job.recording_id, "abc");
        assert_eq!(worker_job.tracks[0].source.chunk_count, Some(3));
        assert!(worker_job.cleanup.delete_chunks, "cleanup defaults to true");
        for (name, value) in [
            (env::S3_ENDPOINT, "https://acct.r2.example"),
            (env::S3_REGION, "auto"),
            (env::S3_BUCKET, "recordings"),
            (env::S3_PATH_STYLE, "true"),
            (env::SCRATCH_DIR, "/scratch"),
            (env::TERMINATION_MESSAGE_PATH, "/dev/termination-log"),
            (env::RECORDING_JOB, "rec-abc-12345678"),
            (env::NAMESPACE, "studio"),
        ] {
            assert_eq!(env_value(&job, name), Some(value), "{name}");
        }
        let env_from = &c.env_from.as_ref().unwrap()[0];
        assert_eq!(env_from.secret_ref.as_ref().unwrap().name, "r2-keys");
        assert!(
            !serde_json::to_string(&job).unwrap().contains("AWS_SECRET"),
            "credentials are referenced, never copied"
        );
        assert_eq!(
            c.termination_message_path.as_deref(),
            Some("/dev/termination-log")
        );
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("custom-sa"));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn the_mixdown_is_made_as_the_spec_says_or_by_default_for_two_tracks_or_more() {
        let two = MINIMAL.replace(
            "  output:",
            "    - participantId: bob\n      source: {prefix: riverside/chunks/room1/abc/bob/, chunkCount: 2}\n  output:",
        );
        let composite = |yaml: &str, spec: Option<bool>, default_on: bool| {
            let mut rj = recording_job(yaml);
            rj.spec.output.composite = spec;
            let config = Config {
                composite_default: default_on,
                ..Config::default()
            };
            let job = build_job(&rj, &config).unwrap();
            let worker_job: WorkerJob =
                serde_json::from_str(env_value(&job, env::JOB).unwrap()).unwrap();
            assert_eq!(makes_mixdown(&job), worker_job.composite, "makes_mixdown");
            worker_job.composite
        };
        // (tracks, spec.output.composite, the operator's default) → mixdown
        let rows = [
            (MINIMAL, None, true, false),
            (two.as_str(), None, true, true),
            (two.as_str(), None, false, false),
            (two.as_str(), Some(false), true, false),
            (MINIMAL, Some(true), false, true),
            (two.as_str(), Some(true), false, true),
        ];
        for (yaml, spec, default_on, expected) in rows {
            let tracks = recording_job(yaml).spec.tracks.len();
            assert_eq!(
                composite(yaml, spec, default_on),
                expected,
                "{tracks} track(s), composite {spec:?}, default {default_on}"
            );
        }
    }

    #[test]
    fn retries_deadline_and_placement_come_from_the_spec() {
        struct Case {
            yaml: &'static str,
            backoff_limit: i32,
            deadline: i64,
            node_selector: Option<&'static str>,
            priority_class: Option<&'static str>,
            tolerations: usize,
            memory_limit: &'static str,
        }
        let cases = [
            Case {
                yaml: MINIMAL,
                backoff_limit: 3,
                deadline: 3600,
                node_selector: None,
                priority_class: None,
                tolerations: 0,
                memory_limit: "2Gi",
            },
            Case {
                yaml: r#"
metadata: {name: rec-x, namespace: studio, uid: u1}
spec:
  roomId: room1
  recordingId: x
  tracks: [{participantId: bob, source: {prefix: p/, chunkCount: 1}}]
  output: {prefix: out/, profile: webm}
  backoffLimit: 0
  activeDeadlineSeconds: 60
  ttlSecondsAfterFinished: 30
  nodeSelector: {pool: media}
  priorityClassName: batch-low
  tolerations: [{key: dedicated, operator: Equal, value: media, effect: NoSchedule}]
  resources: {limits: {memory: 4Gi}, requests: {cpu: "2"}}
"#,
                backoff_limit: 0,
                deadline: 60,
                node_selector: Some("media"),
                priority_class: Some("batch-low"),
                tolerations: 1,
                memory_limit: "4Gi",
            },
        ];
        for case in cases {
            let job = job_of(case.yaml);
            let spec = job.spec.as_ref().unwrap();
            assert_eq!(spec.backoff_limit, Some(case.backoff_limit));
            assert_eq!(spec.active_deadline_seconds, Some(case.deadline));
            assert_eq!(
                spec.ttl_seconds_after_finished, None,
                "TTL is the RecordingJob's"
            );
            let pod = spec.template.spec.as_ref().unwrap();
            assert_eq!(
                pod.node_selector
                    .as_ref()
                    .and_then(|n| n.get("pool"))
                    .map(String::as_str),
                case.node_selector
            );
            assert_eq!(pod.priority_class_name.as_deref(), case.priority_class);
            assert_eq!(
                pod.tolerations.as_ref().map_or(0, Vec::len),
                case.tolerations
            );
            let limits = container(&job).resources.as_ref().unwrap().limits.as_ref();
            assert_eq!(limits.unwrap()["memory"].0, case.memory_limit);
        }
    }

    #[test]
    fn the_worker_runs_restricted_with_scratch_space() {
        let job = job_of(MINIMAL);
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let sc = container(&job).security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let pod_sc = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        let volume = &pod.volumes.as_ref().unwrap()[0];
        assert!(volume.empty_dir.is_some());
        let mount = &container(&job).volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str()),
            ("scratch", "/scratch")
        );
    }

    #[test]
    fn bad_input_fails_the_job_through_pod_failure_policy() {
        let job = job_of(MINIMAL);
        let policy = job
            .spec
            .as_ref()
            .unwrap()
            .pod_failure_policy
            .as_ref()
            .unwrap();
        let rule = &policy.rules[0];
        assert_eq!(rule.action, "FailJob");
        let codes = rule.on_exit_codes.as_ref().unwrap();
        assert_eq!(codes.values, vec![2]);
        assert_eq!(codes.container_name.as_deref(), Some(CONTAINER));
    }

    #[test]
    fn ids_that_are_not_label_values_are_left_out_of_labels() {
        let job = job_of(
            r#"
metadata: {name: rec-x, namespace: studio, uid: u1}
spec:
  roomId: _room
  recordingId: rec-
  tracks: [{participantId: bob, source: {prefix: p/, chunkCount: 1}}]
  output: {prefix: out/}
"#,
        );
        let labels = job.metadata.labels.unwrap();
        assert!(!labels.contains_key("mixdown.dev/room"));
        assert!(!labels.contains_key("mixdown.dev/recording"));
        assert_eq!(labels["mixdown.dev/recording-job"], "rec-x");
    }

    #[test]
    fn specs_that_cannot_become_a_job_are_rejected_with_the_field() {
        let cases = [
            (
                r#"
metadata: {name: rec-x, namespace: s, uid: u}
spec:
  roomId: r
  recordingId: x
  tracks:
    - {participantId: bob, source: {prefix: p/, chunkCount: 1}}
    - {participantId: bob, source: {prefix: q/, chunkCount: 1}}
  output: {prefix: out/}
"#,
                "spec.tracks[1].participantId",
            ),
            (
                r#"
metadata: {name: rec-x, namespace: s, uid: u}
spec:
  roomId: "a/b"
  recordingId: x
  tracks: [{participantId: bob, source: {prefix: p/, chunkCount: 1}}]
  output: {prefix: out/}
"#,
                "spec.roomId",
            ),
            (
                r#"
metadata: {name: rec-x, namespace: s, uid: u}
spec:
  roomId: r
  recordingId: x
  tracks: []
  output: {prefix: out/}
"#,
                "spec.tracks",
            ),
        ];
        for (yaml, field) in cases {
            match build_job(&recording_job(yaml), &Config::default()) {
                Err(Error::InvalidSpec(message)) => {
                    assert!(message.contains(field), "{message:?} should name {field}")
                }
                other => panic!("expected InvalidSpec naming {field}, got {other:?}"),
            }
        }
        let long_name = MINIMAL.replace("rec-abc-12345678", &"r".repeat(64));
        assert!(matches!(
            build_job(&recording_job(&long_name), &Config::default()),
            Err(Error::InvalidSpec(_))
        ));
    }

    #[test]
    fn the_same_recording_job_always_builds_the_same_job() {
        assert_eq!(job_of(MINIMAL), job_of(MINIMAL));
    }

    #[test]
    fn a_job_of_the_same_name_is_ours_leaving_or_someone_elses() {
        let rj = recording_job(MINIMAL);
        let owned_by = |owners: &str, deleting: bool| -> Job {
            let deletion = if deleting {
                ", deletionTimestamp: '2026-01-01T10:00:00Z'"
            } else {
                ""
            };
            serde_yaml::from_str(&format!(
                "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: rec-abc-12345678, namespace: studio, ownerReferences: {owners}{deletion}}}"
            ))
            .expect("a Job")
        };
        let ours = "[{apiVersion: mixdown.dev/v1alpha1, kind: RecordingJob, name: rec-abc-12345678, uid: 0000-1111, controller: true}]";
        let earlier = "[{apiVersion: mixdown.dev/v1alpha1, kind: RecordingJob, name: rec-abc-12345678, uid: old-uid, controller: true}]";
        let cronjob =
            "[{apiVersion: batch/v1, kind: CronJob, name: nightly, uid: c, controller: true}]";
        let not_controller = "[{apiVersion: mixdown.dev/v1alpha1, kind: RecordingJob, name: rec-abc-12345678, uid: 0000-1111}]";
        let other_rj = "[{apiVersion: mixdown.dev/v1alpha1, kind: RecordingJob, name: other, uid: o, controller: true}]";
        let cases = [
            ("ours", owned_by(ours, false), Some(Ownership::Ours)),
            (
                "an earlier RecordingJob's",
                owned_by(earlier, false),
                Some(Ownership::Leaving),
            ),
            (
                "being deleted",
                owned_by(cronjob, true),
                Some(Ownership::Leaving),
            ),
            ("a CronJob's", owned_by(cronjob, false), None),
            ("no controller", owned_by("[]", false), None),
            (
                "an owner that is not the controller",
                owned_by(not_controller, false),
                None,
            ),
            ("another RecordingJob's", owned_by(other_rj, false), None),
        ];
        for (name, job, expected) in cases {
            let got = ownership(&job, &rj);
            match (expected, &got) {
                (Some(expected), _) => assert_eq!(got, expected, "{name}"),
                (None, Ownership::Foreign(message)) => assert!(
                    message.starts_with(
                        "Job rec-abc-12345678 exists and is not controlled by this RecordingJob ("
                    ),
                    "{name}: {message}"
                ),
                (None, other) => panic!("{name}: {other:?}, expected Foreign"),
            }
        }
        assert!(matches!(
            ownership(&owned_by(cronjob, false), &rj),
            Ownership::Foreign(m) if m.contains("(its controller is CronJob nightly)")
        ));
        assert!(matches!(
            ownership(&owned_by("[]", false), &rj),
            Ownership::Foreign(m) if m.contains("(it has no controller)")
        ));
    }
}
