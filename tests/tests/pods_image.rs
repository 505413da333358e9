//! The pod runner's image mode: a Pod's container run with podman from the project's image, the
//! way a kubelet runs it. What a user checks: the program finds the API server with kube's
//! in-cluster configuration and acts as the Pod's ServiceAccount (RBAC applies both ways), the
//! security context holds (user, read-only root, capabilities, no privilege escalation), emptyDirs
//! are writable, the termination message and exit code reach the Pod's status, and no container
//! outlives its Pod or the runner.
//!
//! The images come from `ffmpeg-image/build.sh --component all` (`localhost/mixdown-operator:dev`
//! and `localhost/mixdown-worker:dev` here); without podman or the images these tests fail,
//! saying so.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, Resource, ResourceExt};
use mixdown_testkit::cluster::{ControlPlane, TestNamespace};
use mixdown_testkit::pods::{PodRunner, PodRunnerHandle};
use serde_json::json;

const OPERATOR_IMAGE: &str = "localhost/mixdown-operator:dev";
const TIMEOUT: Duration = Duration::from_secs(60);

fn podman() -> std::process::Command {
    let mut cmd = std::process::Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        cmd.env(
            "CONTAINERS_CONF",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../ffmpeg-image/podman/containers.conf"
            ),
        );
    }
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    cmd
}

/// Fails the test, saying what to do, unless podman has the image.
fn require_image(image: &str) {
    let exists = podman().args(["image", "exists", image]).status();
    assert!(
        exists.is_ok_and(|s| s.success()),
        "podman and the image {image} are needed: apt-get install podman runc, then \
         ffmpeg-image/build.sh --component all (its first run needs root)"
    );
}

/// Names of the containers podman has, running or not, whose name contains `part`.
fn containers_named(part: &str) -> Vec<String> {
    let out = podman()
        .args(["ps", "--all", "--format", "{{.Names}}"])
        .output()
        .expect("podman ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|name| name.contains(part))
        .map(str::to_owned)
        .collect()
}

struct Env {
    ns: TestNamespace,
    client: Client,
    runner: Option<PodRunnerHandle>,
}

impl Env {
    async fn new() -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        require_image(OPERATOR_IMAGE);
        let cp = ControlPlane::shared().await;
        let ns = cp.namespace().await;
        let client = cp.client();
        let runner = PodRunner::new(client.clone(), ns.name())
            .podman_image(OPERATOR_IMAGE)
            .podman_image("localhost/mixdown-missing:dev")
            .start()
            .await
            .expect("the pod runner starts");
        Env {
            ns,
            client,
            runner: Some(runner),
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
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize,
        <K as Resource>::DynamicType: Default,
    {
        let object: K = serde_json::from_value(value).expect("a valid object");
        let start = Instant::now();
        loop {
            match self
                .api::<K>()
                .create(&PostParams::default(), &object)
                .await
            {
                Ok(created) => return created,
                // Before 1.24 the ServiceAccount admission plugin refuses Pods of a new
                // ServiceAccount until its token Secret exists, and says to retry.
                Err(kube::Error::Api(e))
                    if e.code == 500
                        && e.message.contains("No API token found")
                        && start.elapsed() < TIMEOUT =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("creating {}: {e}", object.name_any()),
            }
        }
    }

    async fn wait_for_pod(&self, name: &str, what: &str, condition: impl Fn(&Pod) -> bool) -> Pod {
        let cond = move |pod: Option<&Pod>| pod.is_some_and(&condition);
        match tokio::time::timeout(TIMEOUT, await_condition(self.api::<Pod>(), name, cond)).await {
            Ok(Ok(Some(pod))) => pod,
            other => {
                let now = self.api::<Pod>().get_opt(name).await;
                panic!(
                    "pod {name} not {what} after {TIMEOUT:?} ({:?})\npod: {now:#?}\nlog:\n{}",
                    other.err(),
                    self.log_of(name).await
                );
            }
        }
    }

    /// The container's output (stdout and stderr), as `kubectl logs` would show it.
    async fn log_of(&self, pod: &str) -> String {
        let Ok(pod) = self.api::<Pod>().get(pod).await else {
            return String::new();
        };
        let uid = pod.uid().unwrap_or_default();
        let dir = self.runner.as_ref().expect("runner").dir().join(format!(
            "{}-{}",
            pod.name_any(),
            &uid[..8]
        ));
        std::fs::read_to_string(dir.join("container.log")).unwrap_or_default()
    }

    /// Waits until the container's log says all of `needles`.
    async fn wait_for_log(&self, pod: &str, needles: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let log = self.log_of(pod).await;
            if needles.iter().all(|n| log.contains(n)) {
                return log;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "the log of {pod} does not say {needles:?} after {TIMEOUT:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn container_name(pod: &Pod) -> String {
    let uid = pod.uid().unwrap_or_default();
    format!(
        "mixdown-pod-{}-{}-{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        &uid[..8]
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The restricted security context the chart gives its containers.
fn restricted() -> serde_json::Value {
    json!({
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    })
}

/// The operator image under a ServiceAccount with no rights: it reaches the API server with
/// in-cluster configuration (the projected token, CA and namespace, KUBERNETES_SERVICE_HOST/PORT)
/// and is refused as that ServiceAccount; once a Role grants it Leases, it takes the Lease under
/// its Pod's hostname. Deleting the Pod removes its container.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_image_acts_as_its_service_account() {
    let env = Env::new().await;
    let ns = env.ns.name();
    env.create::<ServiceAccount>(json!({"metadata": {"name": "no-rights"}}))
        .await;
    let started = Instant::now();
    env.create::<Pod>(json!({
        "metadata": {"name": "operator"},
        "spec": {
            "serviceAccountName": "no-rights",
            "securityContext": {"runAsNonRoot": true},
            "containers": [{
                "name": "operator",
                "image": OPERATOR_IMAGE,
                "args": [
                    "--worker-image", "localhost/mixdown-worker:dev",
                    "--s3-endpoint", "http://127.0.0.1:9", "--s3-bucket", "b",
                    "--namespace", ns, "--lease-namespace", ns, "--lease-renew-seconds", "1",
                    "--metrics-addr", format!("127.0.0.1:{}", free_port()),
                ],
                "securityContext": restricted(),
            }],
        },
    }))
    .await;
    let pod = env
        .wait_for_pod("operator", "Running", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await;
    let user = format!("system:serviceaccount:{ns}:no-rights");
    let log = env
        .wait_for_log(
            "operator",
            &["connected to the API server", "forbidden", &user],
        )
        .await;
    eprintln!(
        "the operator's Pod was refused as {user} {:?} after it was created",
        started.elapsed()
    );
    assert!(log.contains("leases"), "{log}");

    // RBAC applies the other way too: allowed Leases, it leads, as the Pod's hostname.
    env.create::<Role>(json!({
        "metadata": {"name": "leases"},
        "rules": [{
            "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "verbs": ["get", "create", "update", "patch"],
        }],
    }))
    .await;
    env.create::<RoleBinding>(json!({
        "metadata": {"name": "leases"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leases"},
        "subjects": [{"kind": "ServiceAccount", "name": "no-rights", "namespace": ns}],
    }))
    .await;
    env.wait_for_log("operator", &["became the leader"]).await;
    let lease = env
        .api::<Lease>()
        .get("mixdown-operator")
        .await
        .expect("the operator's Lease");
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(holder.starts_with("operator-"), "holder {holder:?}");

    let name = container_name(&pod);
    assert_eq!(containers_named(&name), vec![name.clone()]);
    env.api::<Pod>()
        .delete("operator", &DeleteParams::default())
        .await
        .expect("delete the pod");
    let gone = await_condition(env.api::<Pod>(), "operator", |p: Option<&Pod>| p.is_none());
    tokio::time::timeout(TIMEOUT, gone)
        .await
        .expect("the pod goes within a minute")
        .expect("watching the pod");
    assert_eq!(containers_named(&name), Vec::<String>::new());
}

/// A container as its security context says: the user and group, a read-only root, an emptyDir
/// it can write, the token read-only, no capabilities, no privilege escalation, its environment
/// from envFrom and env, Secret and ConfigMap volumes (items, subPath) read-only; the exit code
/// and the termination message reach the Pod's status.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_gets_what_its_pod_spec_says() {
    let env = Env::new().await;
    env.create::<ConfigMap>(json!({
        "metadata": {"name": "settings"},
        "data": {"GREETING": "hello"},
    }))
    .await;
    env.create::<k8s_openapi::api::core::v1::Secret>(json!({
        "metadata": {"name": "keys"},
        "stringData": {"signing-key": "k1", "other": "not mounted"},
    }))
    .await;
    // The image has Debian's shell; nothing in it needs one, but this check does.
    let script = r#"
        sa=/var/run/secrets/kubernetes.io/serviceaccount
        {
            echo "user $(id -u):$(id -g)"
            mount_options() { grep -E "^[^ ]+ $1 " /proc/mounts | cut -d' ' -f4 | cut -d, -f1; }
            echo "root $(mount_options /)"
            touch /scratch/file && echo "scratch writable"
            echo "token $(mount_options "$(readlink -f $sa)")"
            test -s $sa/token && echo "token $(cat $sa/namespace)"
            grep -E '^(CapEff|NoNewPrivs)' /proc/self/status | tr -s '\t' ' '
            echo "secret $(cat /etc/mixdown/keys/signing) $(mount_options /etc/mixdown/keys)"
            echo "config $(cat /etc/mixdown/settings.txt)"
            echo "env $GREETING $WHO $KUBERNETES_SERVICE_HOST"
            echo "args $*"
        } > /dev/termination-log
        exit 3
    "#;
    env.create::<Pod>(json!({
        "metadata": {"name": "checks"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsUser": 65532, "runAsGroup": 65532},
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "keys", "secret": {
                    "secretName": "keys", "items": [{"key": "signing-key", "path": "signing"}],
                }},
                {"name": "settings", "configMap": {"name": "settings"}},
            ],
            "containers": [{
                "name": "checks",
                "image": OPERATOR_IMAGE,
                "command": ["sh", "-c", script, "sh"],
                "args": ["$(WHO)", "two"],
                "envFrom": [{"configMapRef": {"name": "settings"}}],
                "env": [{"name": "WHO", "value": "$(GREETING)-world"}],
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "keys", "mountPath": "/etc/mixdown/keys"},
                    {"name": "settings", "mountPath": "/etc/mixdown/settings.txt", "subPath": "GREETING"},
                ],
                "securityContext": restricted(),
            }],
        },
    }))
    .await;
    let pod = env
        .wait_for_pod("checks", "Failed", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
        })
        .await;
    let terminated = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .expect("a terminated container");
    assert_eq!(terminated.exit_code, 3, "{terminated:?}");
    let message = terminated.message.unwrap_or_default();
    let ns = env.ns.name();
    assert_eq!(
        message.lines().collect::<Vec<_>>(),
        [
            "user 65532:65532",
            "root ro",
            "scratch writable",
            "token ro",
            &format!("token {ns}"),
            "CapEff: 0000000000000000",
            "NoNewPrivs: 1",
            "secret k1 ro",
            "config hello",
            "env hello hello-world 127.0.0.1",
            "args hello-world two",
        ],
        "{message}"
    );
    // A finished container is removed, as `podman run --rm` and the runner do.
    assert_eq!(
        containers_named(&container_name(&pod)),
        Vec::<String>::new()
    );
}

/// An image podman does not have fails the Pod at once, saying so; a running container goes when
/// the runner is dropped (a test that ends or panics).
#[tokio::test(flavor = "multi_thread")]
async fn missing_images_fail_and_the_runner_leaves_no_container_behind() {
    let mut env = Env::new().await;
    env.create::<Pod>(json!({
        "metadata": {"name": "missing"},
        "spec": {"containers": [{"name": "c", "image": "localhost/mixdown-missing:dev"}]},
    }))
    .await;
    let pod = env
        .wait_for_pod("missing", "Failed", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
        })
        .await;
    let status = pod.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("ErrImageNeverPull"));
    assert!(
        status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("localhost/mixdown-missing:dev")),
        "{status:?}"
    );

    env.create::<Pod>(json!({
        "metadata": {"name": "sleeper"},
        "spec": {"containers": [{
            "name": "c", "image": OPERATOR_IMAGE,
            "command": ["sleep", "600"],
        }]},
    }))
    .await;
    let pod = env
        .wait_for_pod("sleeper", "Running", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await;
    let name = container_name(&pod);
    let start = Instant::now();
    while containers_named(&name).is_empty() {
        assert!(start.elapsed() < TIMEOUT, "no container {name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir: PathBuf = env.runner.as_ref().expect("runner").dir().to_path_buf();
    drop(env.runner.take());
    assert_eq!(containers_named(&name), Vec::<String>::new());
    assert!(!dir.exists(), "{} is left", dir.display());
}

/// Set by [`no_container_outlives_the_test_binary`] to tell its child how to end.
const MODE: &str = "MIXDOWN_PODS_IMAGE_CHILD_MODE";
const CHILD: &str = "starts_a_container_then_dies";
const READY: &str = "PODS-IMAGE-CHILD-READY";

/// Names of the containers started by the test binary with this pid.
fn containers_of(pid: u32) -> Vec<String> {
    let out = podman()
        .args(["ps", "--all", "--format", "{{.Names}}"])
        .args([
            "--filter",
            &format!("label=mixdown.dev/pod-runner-pid={pid}"),
        ])
        .output()
        .expect("podman ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by no_container_outlives_the_test_binary, as a child process"]
async fn starts_a_container_then_dies() {
    let Ok(mode) = std::env::var(MODE) else {
        return; // run by hand: nothing to prove
    };
    let mut env = Env::new().await;
    let pod = env
        .create::<Pod>(json!({
            "metadata": {"name": "sleeper"},
            "spec": {"containers": [{
                "name": "c", "image": OPERATOR_IMAGE, "command": ["sleep", "600"],
            }]},
        }))
        .await;
    env.wait_for_pod("sleeper", "Running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    let name = container_name(&env.api::<Pod>().get(&pod.name_any()).await.expect("pod"));
    let start = Instant::now();
    while containers_named(&name).is_empty() {
        assert!(start.elapsed() < TIMEOUT, "no container {name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{READY}");
    // The runner's Drop must not be what removes the container here.
    std::mem::forget(env.runner.take());
    match mode.as_str() {
        // No destructors, no atexit: only the next runner can clean up.
        "abort" => std::process::abort(),
        // libtest exits through exit(): the atexit handler removes it.
        _ => panic!("the child ends badly, as it was told"),
    }
}

/// A test binary that ends badly leaves no container behind: one that panics removes its
/// containers at exit; one killed outright leaves them to the next pod runner, which removes the
/// containers of test binaries that are gone.
#[tokio::test(flavor = "multi_thread")]
async fn no_container_outlives_the_test_binary() {
    require_image(OPERATOR_IMAGE);
    for mode in ["panic", "abort"] {
        let child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                CHILD,
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(MODE, mode)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the child");
        let pid = child.id().expect("child pid");
        let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
            .await
            .expect("the child ends")
            .expect("child output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(READY) && !out.status.success(),
            "the child ({mode}) did not get as far as its container: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if mode == "abort" {
            // Killed outright, its container is still there, until a runner starts.
            assert!(
                !containers_of(pid).is_empty(),
                "nothing to sweep after abort"
            );
            let _env = Env::new().await;
        }
        assert_eq!(containers_of(pid), Vec::<String>::new(), "after {mode}");
    }
}

/// The worker image as the operator's Job runs it (restricted, a scratch emptyDir, storage
/// settings and credentials from a Secret, the job in its environment), against the test's S3
/// server on loopback: a track with no chunks is bad input, so exit code 2 and the report in the
/// termination message, where the operator reads them.
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_image_reports_bad_input_through_the_pod_status() {
    use mixdown_crds::names::{env as worker_env, exit_codes, reasons};
    use mixdown_crds::{Cleanup, Output, Profile, Track, TrackSource, WorkerJob, WorkerReport};
    const WORKER_IMAGE: &str = "localhost/mixdown-worker:dev";
    require_image(WORKER_IMAGE);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cp = ControlPlane::shared().await;
    let ns = cp.namespace().await;
    let client = cp.client();
    let runner = PodRunner::new(client.clone(), ns.name())
        .podman_image(WORKER_IMAGE)
        .start()
        .await
        .expect("the pod runner starts");
    let env = Env {
        ns,
        client,
        runner: Some(runner),
    };
    let s3 = mixdown_testkit::s3::S3Server::start()
        .await
        .expect("start S3 server");
    let bucket = s3.create_bucket().await;
    let storage: serde_json::Map<String, serde_json::Value> = s3
        .env(&bucket)
        .into_iter()
        .map(|(k, v)| (k, json!(v)))
        .collect();
    env.create::<k8s_openapi::api::core::v1::Secret>(json!({
        "metadata": {"name": "storage"},
        "stringData": storage,
    }))
    .await;
    let job = WorkerJob {
        room_id: "room-1".into(),
        recording_id: "rec-1".into(),
        tracks: vec![Track {
            participant_id: "alice".into(),
            source: TrackSource {
                prefix: "riverside/chunks/room-1/rec-1/alice/".into(),
                chunk_count: Some(3),
            },
            start_offset_ms: None,
            display_name: None,
        }],
        output: Output {
            prefix: "riverside/processed/room-1/rec-1/".into(),
            profile: Profile::Mp4,
            composite: None,
        },
        cleanup: Cleanup::default(),
        composite: false,
    };
    env.create::<Pod>(json!({
        "metadata": {"name": "worker"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true},
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{
                "name": "worker",
                "image": WORKER_IMAGE,
                "envFrom": [{"secretRef": {"name": "storage"}}],
                "env": [
                    {"name": worker_env::JOB, "value": serde_json::to_string(&job).expect("job JSON")},
                    {"name": worker_env::SCRATCH_DIR, "value": "/scratch"},
                    {"name": worker_env::TERMINATION_MESSAGE_PATH, "value": "/dev/termination-log"},
                ],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                "securityContext": restricted(),
            }],
        },
    }))
    .await;
    let pod = env
        .wait_for_pod("worker", "Failed", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
        })
        .await;
    let terminated = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .expect("a terminated container");
    let log = env.log_of("worker").await;
    assert_eq!(
        terminated.exit_code,
        exit_codes::BAD_INPUT,
        "{terminated:?}\n{log}"
    );
    let message = terminated.message.unwrap_or_default();
    match serde_json::from_str::<WorkerReport>(&message) {
        Ok(WorkerReport::Failed { reason, message }) => {
            assert_eq!(reason, reasons::NO_CHUNKS, "{message}");
            assert!(message.contains("alice"), "{message}");
        }
        other => panic!("the termination message is not a failure report: {other:?}\n{message}"),
    }
}

/// `GET /healthz` at `addr`: the status line's code, or None while nothing answers.
async fn healthz(addr: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()?
        .ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// Two replicas listening on the same port, as a Deployment's do: each Pod has a loopback address
/// of its own as its podIP, binds `$(POD_IP):8080`, and answers there.
#[tokio::test(flavor = "multi_thread")]
async fn two_pods_listen_on_one_port_at_their_own_addresses() {
    let env = Env::new().await;
    for name in ["replica-a", "replica-b"] {
        env.create::<Pod>(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{
                "name": "operator",
                "image": OPERATOR_IMAGE,
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "args": [
                    "--worker-image", "localhost/mixdown-worker:dev",
                    "--s3-endpoint", "http://127.0.0.1:9", "--s3-bucket", "b",
                    "--metrics-addr", "$(POD_IP):8080",
                ],
                "securityContext": restricted(),
            }]},
        }))
        .await;
    }
    let mut addresses = Vec::new();
    for name in ["replica-a", "replica-b"] {
        let pod = env
            .wait_for_pod(name, "Running", |p| {
                p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .await;
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .expect("a Running Pod has an IP");
        let addr = format!("{ip}:8080");
        let start = Instant::now();
        while healthz(&addr).await != Some(200) {
            assert!(
                start.elapsed() < TIMEOUT,
                "{name} does not answer at {addr}:\n{}",
                env.log_of(name).await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        addresses.push(ip);
    }
    assert_ne!(addresses[0], addresses[1]);
}
