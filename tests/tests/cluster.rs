//! The local cluster behaves like a real one where Mixdown depends on it: the real Job controller
//! completes, retries, enforces deadlines and garbage-collects, over Pods that the pod runner really
//! runs, with termination messages and ServiceAccount identities like a kubelet's.
//!
//! Every test takes its own namespace on the binary's shared control plane, and its own runner.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Resource, ResourceExt};
use mixdown_testkit::cluster::{ControlPlane, TestNamespace};
use mixdown_testkit::pods::{PodRunner, PodRunnerHandle};
use serde::de::DeserializeOwned;
use serde_json::json;

const SHELL_IMAGE: &str = "testkit/shell:1";
const TIMEOUT: Duration = Duration::from_secs(60);

struct Env {
    ns: TestNamespace,
    client: Client,
    // Declared last: dropped first, while the namespace is still there.
    _runner: PodRunnerHandle,
}

impl Env {
    async fn new() -> Env {
        // `RUST_LOG=mixdown_testkit=debug` shows what the control plane and the runner do.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let cp = ControlPlane::shared().await;
        let ns = cp.namespace().await;
        let client = cp.client();
        let runner = PodRunner::new(client.clone(), ns.name())
            .image(SHELL_IMAGE, "/bin/sh")
            .start()
            .await
            .expect("the pod runner starts");
        Env {
            ns,
            client,
            _runner: runner,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    async fn create<K>(&self, value: serde_json::Value) -> K
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + serde::Serialize,
        <K as Resource>::DynamicType: Default,
    {
        let object: K = serde_json::from_value(value).expect("a valid object");
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating {}: {e}", object.name_any()))
    }

    /// Waits for `condition` on the named object; on timeout, fails with the object and the
    /// namespace's Pods as they are.
    async fn wait_for<K>(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&K) -> bool,
    ) -> K
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Debug
            + DeserializeOwned
            + Send
            + 'static,
        <K as Resource>::DynamicType: Default,
    {
        let cond = move |obj: Option<&K>| obj.is_some_and(&condition);
        match tokio::time::timeout(timeout, await_condition(self.api::<K>(), name, cond)).await {
            Ok(Ok(Some(obj))) => obj,
            Ok(Ok(None)) => panic!("{name} was deleted while waiting until {what}"),
            Ok(Err(e)) => panic!("watching {name} until {what}: {e}"),
            Err(_) => {
                let now = self.api::<K>().get_opt(name).await;
                panic!(
                    "{name} not {what} after {timeout:?}\nobject: {now:#?}\npods: {:#?}",
                    self.pod_summary().await
                );
            }
        }
    }

    /// Waits until no Pod matches `selector`.
    async fn wait_for_no_pods(&self, selector: &str) {
        let api = self.api::<Pod>();
        let lp = ListParams::default().labels(selector);
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let pods = api.list(&lp).await.expect("listing pods");
            if pods.items.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "pods {selector} still there after {TIMEOUT:?}: {:#?}",
                    self.pod_summary().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Name → (phase, deleting, container state) of the namespace's Pods, for failure messages.
    async fn pod_summary(&self) -> BTreeMap<String, String> {
        let pods = self.api::<Pod>().list(&ListParams::default()).await;
        pods.map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let status = p.status.clone().unwrap_or_default();
                let state = status
                    .container_statuses
                    .and_then(|c| c.into_iter().next())
                    .and_then(|c| c.state);
                let summary = format!(
                    "phase={:?} deleting={} state={:?}",
                    status.phase,
                    p.metadata.deletion_timestamp.is_some(),
                    state
                );
                (p.name_any(), summary)
            })
            .collect()
    }
}

/// A Job running `script` with `sh -c`, Pods never restarted in place.
fn shell_job(name: &str, script: &str, backoff_limit: i32) -> serde_json::Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": backoff_limit,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main",
                    "image": SHELL_IMAGE,
                    "command": ["sh", "-c", script],
                }],
            }},
        },
    })
}

fn job_condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

fn terminated(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .terminated
        .clone()
}

fn pod_phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// Processes whose environment holds `marker`: proof that a container's process (or one it
/// forked) still runs.
fn processes_with_env(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

#[tokio::test]
async fn a_job_whose_container_exits_0_completes() {
    let env = Env::new().await;
    env.create::<Job>(shell_job("ok", "echo working; exit 0", 0))
        .await;

    let job = env
        .wait_for::<Job>("ok", "Complete", TIMEOUT, |j| {
            job_condition(j, "Complete").is_some()
        })
        .await;
    assert_eq!(job.status.and_then(|s| s.succeeded), Some(1));
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels("job-name=ok"))
        .await
        .expect("listing pods");
    let [pod] = pods.items.as_slice() else {
        panic!("expected one pod, got {:#?}", env.pod_summary().await);
    };
    assert_eq!(pod_phase(pod), Some("Succeeded"));
    let state = terminated(pod).expect("a terminated state");
    assert_eq!(
        (state.exit_code, state.reason.as_deref()),
        (0, Some("Completed"))
    );
}

#[tokio::test]
async fn a_job_that_keeps_failing_fails_after_backoff_limit_plus_one_pods() {
    let env = Env::new().await;
    env.create::<Job>(shell_job("flaky", "echo failing >&2; exit 1", 2))
        .await;

    // The Job controller waits 10 s, then 20 s, between failed Pods.
    let job = env
        .wait_for::<Job>("flaky", "Failed", Duration::from_secs(120), |j| {
            job_condition(j, "Failed").is_some()
        })
        .await;
    let failed = job_condition(&job, "Failed").expect("a Failed condition");
    assert_eq!(
        failed.reason.as_deref(),
        Some("BackoffLimitExceeded"),
        "{failed:?}"
    );

    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels("job-name=flaky"))
        .await
        .expect("listing pods");
    assert_eq!(pods.items.len(), 3, "{:#?}", env.pod_summary().await);
    for pod in &pods.items {
        assert_eq!(pod_phase(pod), Some("Failed"), "{}", pod.name_any());
        let state = terminated(pod).expect("a terminated state");
        assert_eq!(
            (state.exit_code, state.reason.as_deref()),
            (1, Some("Error"))
        );
    }
}

#[tokio::test]
async fn a_job_past_its_deadline_fails_and_its_pod_is_killed() {
    let env = Env::new().await;
    let marker = format!("MIXDOWN_TEST_MARKER={}", env.ns.name());
    let mut job = shell_job("slow", "sleep 300", 5);
    job["spec"]["activeDeadlineSeconds"] = json!(5);
    job["spec"]["template"]["spec"]["containers"][0]["env"] =
        json!([{ "name": "MIXDOWN_TEST_MARKER", "value": env.ns.name() }]);
    env.create::<Job>(job).await;

    env.wait_for::<Pod>(
        &first_pod(&env, "job-name=slow").await,
        "Running",
        TIMEOUT,
        |p| pod_phase(p) == Some("Running"),
    )
    .await;
    assert!(
        !processes_with_env(&marker).is_empty(),
        "the container runs as a local process"
    );

    let job = env
        .wait_for::<Job>("slow", "Failed", TIMEOUT, |j| {
            job_condition(j, "Failed").is_some()
        })
        .await;
    let failed = job_condition(&job, "Failed").expect("a Failed condition");
    assert_eq!(
        failed.reason.as_deref(),
        Some("DeadlineExceeded"),
        "{failed:?}"
    );

    // The Job controller deletes the running Pod; the runner kills it and finishes the deletion.
    env.wait_for_no_pods("job-name=slow").await;
    assert_eq!(
        processes_with_env(&marker),
        Vec::<u32>::new(),
        "processes left running"
    );
}

/// The name of the first Pod matching `selector`, once there is one.
async fn first_pod(env: &Env, selector: &str) -> String {
    let api = env.api::<Pod>();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let pods = api
            .list(&ListParams::default().labels(selector))
            .await
            .expect("listing pods");
        if let Some(pod) = pods.items.first() {
            return pod.name_any();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pod {selector} after {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_job_is_garbage_collected_with_its_owner() {
    let env = Env::new().await;
    let owner: ConfigMap = env
        .create(json!({ "metadata": { "name": "owner" }, "data": { "k": "v" } }))
        .await;
    let mut job = shell_job("owned", "sleep 300", 0);
    job["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.uid().expect("a uid"),
    }]);
    env.create::<Job>(job).await;
    env.wait_for::<Pod>(
        &first_pod(&env, "job-name=owned").await,
        "Running",
        TIMEOUT,
        |p| pod_phase(p) == Some("Running"),
    )
    .await;

    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    env.api::<ConfigMap>()
        .delete("owner", &background)
        .await
        .expect("deleting the owner");

    let jobs = env.api::<Job>();
    let gone = await_condition(jobs, "owned", |j: Option<&Job>| j.is_none());
    tokio::time::timeout(TIMEOUT, gone)
        .await
        .unwrap_or_else(|_| panic!("job not garbage-collected after {TIMEOUT:?}"))
        .expect("watching the job");
    env.wait_for_no_pods("job-name=owned").await;
}

#[tokio::test]
async fn the_termination_message_and_mapped_paths_reach_the_pod_status() {
    let env = Env::new().await;
    env.create::<ConfigMap>(
        json!({ "metadata": { "name": "settings" }, "data": { "greeting": "hello" } }),
    )
    .await;
    env.create::<Pod>(json!({
        "metadata": { "name": "messenger" },
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{ "name": "work", "emptyDir": {} }],
            "containers": [{
                "name": "main",
                "image": SHELL_IMAGE,
                "command": ["sh", "-c", "echo \"$GREETING from $POD\" > \"$WORK/f\" && cat \"$WORK/f\" > \"$MSG\""],
                "env": [
                    { "name": "MSG", "value": "/dev/termination-log" },
                    { "name": "WORK", "value": "/work/out" },
                    { "name": "POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "GREETING", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "greeting" } } },
                ],
                "volumeMounts": [{ "name": "work", "mountPath": "/work/out" }],
            }],
        },
    }))
    .await;

    let pod = env
        .wait_for::<Pod>("messenger", "finished", TIMEOUT, |p| {
            matches!(pod_phase(p), Some("Succeeded" | "Failed"))
        })
        .await;
    let state = terminated(&pod).expect("a terminated state");
    assert_eq!(pod_phase(&pod), Some("Succeeded"), "{state:?}");
    assert_eq!(state.message.as_deref(), Some("hello from messenger\n"));
}

#[tokio::test]
async fn a_container_that_fails_is_restarted_in_place_on_failure() {
    let env = Env::new().await;
    // The emptyDir outlives the container, so the second run sees what the first one left.
    env.create::<Pod>(json!({
        "metadata": { "name": "retrier" },
        "spec": {
            "restartPolicy": "OnFailure",
            "volumes": [{ "name": "state", "emptyDir": {} }],
            "containers": [{
                "name": "main",
                "image": SHELL_IMAGE,
                "command": ["sh", "-c", "[ -f \"$STATE/once\" ] && exit 0; touch \"$STATE/once\"; exit 3"],
                "env": [{ "name": "STATE", "value": "/state" }],
                "volumeMounts": [{ "name": "state", "mountPath": "/state" }],
            }],
        },
    }))
    .await;
    let pod = env
        .wait_for::<Pod>("retrier", "Succeeded", TIMEOUT, |p| {
            pod_phase(p) == Some("Succeeded")
        })
        .await;
    let status = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .expect("a container status");
    assert_eq!(status.restart_count, 1, "{status:?}");
    let last = status
        .last_state
        .and_then(|s| s.terminated)
        .expect("the first run's state");
    assert_eq!(last.exit_code, 3);
}

#[tokio::test]
async fn a_pod_with_an_unmapped_image_fails_with_a_clear_message() {
    let env = Env::new().await;
    env.create::<Pod>(json!({
        "metadata": { "name": "unknown" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{ "name": "main", "image": "registry.example/nothing:1" }],
        },
    }))
    .await;
    let pod = env
        .wait_for::<Pod>("unknown", "Failed", TIMEOUT, |p| {
            pod_phase(p) == Some("Failed")
        })
        .await;
    let state = terminated(&pod).expect("a terminated state");
    assert_eq!(state.reason.as_deref(), Some("ErrImagePull"));
    let message = state.message.unwrap_or_default();
    assert!(
        message.contains("registry.example/nothing:1") && message.contains(".image("),
        "{message}"
    );
}

#[tokio::test]
async fn a_pod_acts_with_its_service_accounts_rights() {
    let env = Env::new().await;
    env.create::<k8s_openapi::api::core::v1::ServiceAccount>(
        json!({ "metadata": { "name": "reader" } }),
    )
    .await;
    env.create::<k8s_openapi::api::rbac::v1::Role>(json!({
        "metadata": { "name": "read-configmaps" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"] }],
    }))
    .await;
    env.create::<k8s_openapi::api::rbac::v1::RoleBinding>(json!({
        "metadata": { "name": "reader" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps" },
        "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": env.ns.name() }],
    }))
    .await;
    env.create::<ConfigMap>(json!({ "metadata": { "name": "x" } }))
        .await;
    // Before 1.24 the ServiceAccount admission plugin refuses Pods until the account's token
    // Secret exists, which a controller creates shortly after the account.
    let cp = ControlPlane::shared().await;
    env.wait_for::<k8s_openapi::api::core::v1::ServiceAccount>(
        "reader",
        "ready for Pods",
        TIMEOUT,
        |sa| cp.admits_pods_of(sa),
    )
    .await;

    // kubectl finds the Pod's identity through KUBECONFIG, like kube-rs would.
    let script = r#"
        kubectl get configmap x -o name > "$MSG" || exit 10
        if kubectl get secrets 2> denied; then exit 11; fi
        grep -q Forbidden denied || { cat denied >&2; exit 12; }
        grep -q 'system:serviceaccount:'"$NS"':reader' denied || { cat denied >&2; exit 13; }
        echo forbidden >> "$MSG"
    "#;
    env.create::<Pod>(json!({
        "metadata": { "name": "identity" },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "reader",
            "containers": [{
                "name": "main",
                "image": SHELL_IMAGE,
                "command": ["sh", "-c", script],
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "env": [
                    { "name": "MSG", "value": "/dev/termination-log" },
                    { "name": "NS", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                ],
            }],
        },
    }))
    .await;

    let pod = env
        .wait_for::<Pod>("identity", "finished", TIMEOUT, |p| {
            matches!(pod_phase(p), Some("Succeeded" | "Failed"))
        })
        .await;
    let state = terminated(&pod).expect("a terminated state");
    assert_eq!(
        (state.exit_code, state.message.as_deref()),
        (0, Some("configmap/x\nforbidden\n")),
        "{state:?}"
    );
}
