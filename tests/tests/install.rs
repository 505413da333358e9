//! The chart installed and run as a cluster runs it: `helm install` into the local control
//! plane, the pod runner in image mode running the operator and API Pods from their Deployments
//! (two replicas each, their own ServiceAccounts, kube's in-cluster configuration) and the
//! worker Pods of their Jobs, all from the project's images; the API reached through its
//! Service, as a studio page reaches it. A recording made through the API is processed to
//! Succeeded while the leading operator Pod and an API Pod are killed, nothing is lost, and
//! `helm test` passes.
//!
//! Needs the images of `ffmpeg-image/build.sh --component all` (`localhost/mixdown-*:dev`, which
//! `cargo xtask test` builds) and the helm CLI (see `mixdown_testkit::helm`); without them this
//! test fails, saying so.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use mixdown_crds::{Phase, RecordingJob};
use mixdown_testkit::cluster::{ControlPlane, TestNamespace};
use mixdown_testkit::helm;
use mixdown_testkit::pods::{PodRunner, PodRunnerHandle};
use mixdown_testkit::s3::S3Server;
use mixdown_testkit::stack::{eventually, recording};
use serde_json::{Value, json};

const RELEASE: &str = "studio";
const IMAGES: [&str; 3] = [
    "localhost/mixdown-operator:dev",
    "localhost/mixdown-api:dev",
    "localhost/mixdown-worker:dev",
];
const ADMIN_KEY: &str = "install-test-admin-key-0123456789";
const LONG: Duration = Duration::from_secs(180);
/// How long the API gets to answer after its Pods run.
const API_UP: Duration = Duration::from_secs(60);

async fn secret(client: &Client, namespace: &str, name: &str, data: &[(&str, &str)]) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("creating Secret {name}: {e}"));
}

/// The last lines of every container's log the runner kept, for a failure's message.
fn pod_logs(runner: &PodRunnerHandle) -> String {
    pod_logs_of(runner, "")
}

/// The last lines of the logs of the Pods whose names contain `part`.
fn pod_logs_of(runner: &PodRunnerHandle, part: &str) -> String {
    let mut text = String::new();
    let Ok(entries) = std::fs::read_dir(runner.dir()) else {
        return text;
    };
    let mut dirs: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(part))
        .collect();
    dirs.sort();
    for dir in dirs {
        let log = std::fs::read_to_string(dir.join("container.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        text.push_str(&format!(
            "--- {} ---\n{}\n",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            lines[lines.len().saturating_sub(15)..].join("\n")
        ));
    }
    text
}

/// The Running, not terminating Pods of one component of the release.
async fn running(pods: &Api<Pod>, component: &str) -> Vec<Pod> {
    let list = pods
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"
        )))
        .await
        .expect("listing Pods");
    list.items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .collect()
}

/// The API, as a page reaches it: through its Service.
struct Studio {
    base: String,
    http: reqwest::Client,
}

impl Studio {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                (
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            // A replica that went away mid-request: the page would retry.
            Err(error) => (0, Value::String(error.to_string())),
        }
    }

    /// A host creates a room and starts a recording: (room id, host token, recording id).
    async fn start_recording(&self) -> (String, String, String) {
        let (status, room) = self
            .post("/api/rooms", ADMIN_KEY, json!({"name": "Host"}))
            .await;
        assert_eq!(status, 201, "creating a room: {room}");
        let room_id = room["roomId"].as_str().expect("roomId").to_string();
        let host = room["hostToken"].as_str().expect("hostToken").to_string();
        let (status, started) = self
            .post(
                &format!("/api/rooms/{room_id}/recordings"),
                &host,
                json!({}),
            )
            .await;
        assert_eq!(status, 201, "starting a recording: {started}");
        let rec = started["recordingId"]
            .as_str()
            .expect("recordingId")
            .to_string();
        (room_id, host, rec)
    }

    /// Uploads `chunks` as the token's track the way a page does: presign, PUT, confirm.
    async fn upload(&self, host: &str, rec: &str, chunks: &[Vec<u8>]) {
        for (seq, chunk) in chunks.iter().enumerate() {
            let (status, url) = self
                .post(
                    &format!("/api/recordings/{rec}/chunks/{seq}/upload-url"),
                    host,
                    json!({"size": chunk.len(), "contentType": "video/webm;codecs=vp8,opus"}),
                )
                .await;
            assert_eq!(status, 200, "presigning chunk {seq}: {url}");
            let mut put = reqwest::Client::new().put(url["url"].as_str().expect("url"));
            for (k, v) in url["headers"].as_object().into_iter().flatten() {
                put = put.header(k, v.as_str().unwrap_or_default());
            }
            let stored = put
                .body(chunk.clone())
                .send()
                .await
                .expect("storage answers");
            assert!(stored.status().is_success(), "storing chunk {seq}");
            let (status, confirmed) = self
                .post(
                    &format!("/api/recordings/{rec}/chunks/{seq}/confirm"),
                    host,
                    json!({"size": chunk.len()}),
                )
                .await;
            assert_eq!(status, 200, "confirming chunk {seq}: {confirmed}");
        }
    }

    /// Retries what a killed replica or a Service without ready endpoints refused, as the
    /// studio page's upload queue does; any answer from a live replica is returned.
    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let start = Instant::now();
        loop {
            let (status, answer) = self
                .call(reqwest::Method::POST, path, token, Some(body.clone()))
                .await;
            if status != 0 && status != 502 && status != 503 || start.elapsed() > LONG {
                return (status, answer);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A release installed and running: two operator and two API Pods, the API answering through
/// its Service.
struct Installed {
    _ns: TestNamespace,
    namespace: String,
    client: Client,
    s3: S3Server,
    bucket: String,
    runner: PodRunnerHandle,
    studio: Studio,
    kubeconfig: String,
    pods: Api<Pod>,
    _dir: tempfile::TempDir,
}

/// Installs the chart with the project's images into a fresh namespace, its storage the test kit's
/// S3 server, and waits until the API answers through its Service.
async fn install() -> Installed {
    for image in IMAGES {
        let found = std::process::Command::new("podman")
            .args(["image", "exists", image])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "image {image} is missing: build the images with `ffmpeg-image/build.sh --component all` \
             (`cargo xtask test` does)"
        );
    }
    let cp = ControlPlane::shared().await;
    let ns = cp.namespace().await;
    let namespace = ns.name().to_string();
    let client = cp.client();

    // Storage on loopback: Pods share the host's network, as the worker's Pods reach R2.
    let s3 = S3Server::start().await.expect("starting the S3 server");
    let bucket = s3.create_bucket().await;
    secret(
        &client,
        &namespace,
        "mixdown-s3-credentials",
        &[
            ("AWS_ACCESS_KEY_ID", s3.access_key()),
            ("AWS_SECRET_ACCESS_KEY", s3.secret_key()),
        ],
    )
    .await;
    secret(
        &client,
        &namespace,
        "mixdown-keys",
        &[
            ("signing-key", "install-test-signing-key-0123456789abcdef"),
            ("admin-key", ADMIN_KEY),
        ],
    )
    .await;
    let mut runner = PodRunner::new(client.clone(), &namespace);
    for image in IMAGES {
        runner = runner.podman_image(image);
    }
    let runner = runner.start().await.expect("starting the pod runner");

    let dir = tempfile::tempdir().expect("a temporary folder");
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        format!(
            r#"logFormat: text
listenOnPodIP: true
storage:
  endpoint: {endpoint}
  region: {region}
  bucket: {bucket}
  pathStyle: true
worker:
  image: {{repository: localhost/mixdown-worker, tag: dev, pullPolicy: Never}}
  resources: {{cpuRequest: 100m, memoryRequest: 64Mi, memoryLimit: 1Gi}}
  scratchSize: 1Gi
operator:
  image: {{repository: localhost/mixdown-operator, tag: dev, pullPolicy: Never}}
  leaderElection: {{enabled: true, leaseDurationSeconds: 6, renewSeconds: 1, renewDeadlineSeconds: 4}}
api:
  image: {{repository: localhost/mixdown-api, tag: dev, pullPolicy: Never}}
  publicUrl: http://studio.example
"#,
            endpoint = s3.endpoint(),
            region = s3.region(),
        ),
    )
    .expect("writing the values");
    let kubeconfig = cp.kubeconfig_path().display().to_string();
    let values = values.display().to_string();
    let chart = helm::chart_dir().display().to_string();
    let installed = Instant::now();
    helm::ok(&[
        "install",
        RELEASE,
        &chart,
        "--namespace",
        &namespace,
        "--kubeconfig",
        &kubeconfig,
        "--values",
        &values,
    ]);

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    for component in ["operator", "api"] {
        eventually(LONG, &format!("two {component} Pods running"), || async {
            (running(&pods, component).await.len() == 2).then_some(())
        })
        .await;
    }
    println!(
        "two operator and two API Pods running {:.1?} after helm install",
        installed.elapsed()
    );

    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let api_service = services
        .list(&ListParams::default().labels("app.kubernetes.io/component=api"))
        .await
        .expect("listing Services")
        .items
        .into_iter()
        .next()
        .expect("the chart's API Service");
    let address: SocketAddr = runner
        .service_address(&api_service.name_any(), 80)
        .await
        .expect("the API Service's address");
    let studio = Studio {
        base: format!("http://{address}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("an HTTP client"),
    };
    // The API answers once it has its caches; until then the Service has nobody ready.
    let start = Instant::now();
    loop {
        let (status, answer) = studio
            .call(
                reqwest::Method::GET,
                "/api/rooms/none/recordings",
                ADMIN_KEY,
                None,
            )
            .await;
        if status != 0 && status != 502 && status != 503 {
            break;
        }
        assert!(
            start.elapsed() < API_UP,
            "the API does not answer through its Service at {address}: {status} {answer}\n{}",
            pod_logs(&runner)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    Installed {
        _ns: ns,
        namespace,
        client,
        s3,
        bucket,
        runner,
        studio,
        kubeconfig,
        pods,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_installed_release_processes_a_recording_while_its_leader_and_an_api_pod_are_killed() {
    let Installed {
        namespace,
        client,
        s3,
        bucket,
        runner,
        studio,
        kubeconfig,
        pods,
        // Kept to the end: dropping them deletes the namespace and the values file.
        _ns: _namespace,
        _dir: _values,
    } = install().await;
    // A host records 20 s and stops, as the studio page does over REST.
    let (room_id, host, rec) = studio.start_recording().await;
    let chunks = recording(20, "640x360").await;
    studio.upload(&host, &rec, &chunks).await;
    let (status, stopped) = studio
        .post(&format!("/api/recordings/{rec}/stop"), &host, json!({}))
        .await;
    assert!(
        status == 200 || status == 201,
        "stopping: {status} {stopped}"
    );
    let job_name = stopped["jobName"].as_str().expect("jobName").to_string();
    let (status, sealed) = studio
        .post(
            &format!("/api/recordings/{rec}/tracks/complete"),
            &host,
            json!({"chunkCount": chunks.len()}),
        )
        .await;
    assert_eq!(status, 200, "sealing: {sealed}");

    // While the worker runs: the leading operator Pod and one API Pod die, as on a node failure.
    let rjs: Api<RecordingJob> = Api::namespaced(client.clone(), &namespace);
    eventually(LONG, "the RecordingJob Running", || async {
        let rj = rjs.get_opt(&job_name).await.ok()??;
        (rj.status?.phase == Some(Phase::Running)).then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &namespace);
    let leader = leases
        .list(&ListParams::default())
        .await
        .expect("listing Leases")
        .items
        .into_iter()
        .find_map(|l| l.spec?.holder_identity.filter(|h| !h.is_empty()))
        .expect("a leader holds the Lease");
    let api_pod = running(&pods, "api").await[0].name_any();
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    for pod in [&leader, &api_pod] {
        pods.delete(pod, &now).await.expect("deleting a Pod");
    }
    let progress = rjs
        .get(&job_name)
        .await
        .ok()
        .and_then(|rj| rj.status)
        .map(|s| format!("{:?} at {}%", s.phase, s.progress.unwrap_or(0)))
        .unwrap_or_default();
    println!(
        "killed the leading operator Pod {leader} and the API Pod {api_pod}; the RecordingJob was {progress}"
    );

    let done = eventually(LONG, "the recording processed", || async {
        let (status, body) = studio
            .call(
                reqwest::Method::GET,
                &format!("/api/rooms/{room_id}/recordings"),
                &host,
                None,
            )
            .await;
        if status != 200 {
            return None;
        }
        let recording = body["recordings"]
            .as_array()?
            .iter()
            .find(|r| r["recordingId"] == rec.as_str())?
            .clone();
        matches!(recording["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(recording)
    })
    .await;
    let rj = rjs.get(&job_name).await.expect("the RecordingJob");
    let status = rj.status.expect("a status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{done}\n{status:#?}");
    assert_eq!(status.outputs.len(), 1, "{status:#?}");
    let output = &status.outputs[0];
    assert!(
        (output.duration_seconds - 20.0).abs() < 0.5,
        "the file holds the 20 s recorded: {output:?}"
    );
    assert_eq!(output.chunks, Some(chunks.len() as u32), "{output:?}");

    // Nothing lost, nothing left: the output is in storage, the chunks are not, one Job ever.
    let keys: Vec<String> = s3
        .client()
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("listing the bucket")
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert!(keys.contains(&output.key), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.contains("/chunks/")),
        "chunks left after success: {keys:?}"
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let jobs = jobs
        .list(&ListParams::default())
        .await
        .expect("listing Jobs");
    assert_eq!(jobs.items.len(), 1, "one Job for the recording");
    assert_eq!(
        status.attempts,
        Some(1),
        "the worker was not restarted: {status:#?}"
    );
    // The killed Pods were replaced.
    for component in ["operator", "api"] {
        eventually(LONG, &format!("two {component} Pods again"), || async {
            (running(&pods, component).await.len() == 2).then_some(())
        })
        .await;
    }

    // `helm test`: the selftest Pod presigns, PUTs, HEADs and deletes a probe object, and
    // completes a socket.io handshake through the API Service.
    let tested = Instant::now();
    let out = helm::ok(&[
        "test",
        RELEASE,
        "--namespace",
        &namespace,
        "--kubeconfig",
        &kubeconfig,
        "--timeout",
        "3m",
    ]);
    println!("helm test passed in {:.1?}:\n{out}", tested.elapsed());
    assert!(out.contains("Phase:          Succeeded"), "{out}");
    // Its log, one line per step (helm reads logs from a kubelet, which the runner is not).
    let logs = pod_logs(&runner);
    for step in ["presign", "put", "head", "delete", "socket.io"] {
        assert!(
            logs.lines()
                .any(|l| l.starts_with("ok") && l[4..].trim_start().starts_with(step)),
            "the selftest passed step {step}:\n{logs}"
        );
    }

    helm::ok(&[
        "uninstall",
        RELEASE,
        "--namespace",
        &namespace,
        "--kubeconfig",
        &kubeconfig,
        "--wait",
        "--timeout",
        "2m",
    ]);
    runner.stop().await;
}

/// Replaces the verbs of the rule for `resource` in Role `name` (an empty list removes the rule).
async fn set_verbs(client: &Client, namespace: &str, name: &str, resource: &str, verbs: &[&str]) {
    let roles: Api<Role> = Api::namespaced(client.clone(), namespace);
    let mut role = roles.get(name).await.expect("the chart's Role");
    let mut rules = role.rules.take().unwrap_or_default();
    for rule in &mut rules {
        if rule.resources.as_deref().unwrap_or_default() == [resource] {
            rule.verbs = verbs.iter().map(|v| v.to_string()).collect();
        }
    }
    rules.retain(|r| !r.verbs.is_empty());
    role.rules = Some(rules);
    roles
        .replace(name, &PostParams::default(), &role)
        .await
        .expect("replacing the Role");
}

/// RBAC is both needed and enough: with one key rule of the chart's Roles removed, the component
/// that needs it fails with a Forbidden said in its log, and in the RecordingJob's status where
/// the operator is the one refused; with the rule back, the same work goes through.
#[tokio::test(flavor = "multi_thread")]
async fn each_key_rbac_rule_is_needed_and_its_absence_is_said() {
    let Installed {
        namespace,
        client,
        runner,
        studio,
        // Kept to the end: dropping them stops storage, deletes the namespace and the values.
        s3: _storage,
        _ns: _namespace,
        _dir: _values,
        ..
    } = install().await;
    let rjs: Api<RecordingJob> = Api::namespaced(client.clone(), &namespace);
    let operator_role = format!("{RELEASE}-mixdown-operator");
    let api_role = format!("{RELEASE}-mixdown-api");

    // The operator may not create Jobs: the RecordingJob fails with Forbidden, saying so.
    set_verbs(
        &client,
        &namespace,
        &operator_role,
        "jobs",
        &["get", "list", "watch", "patch", "delete"],
    )
    .await;
    let spec = mixdown_testkit::stack::spec(
        "room1",
        "rbac1",
        &[("alice", "riverside/chunks/room1/rbac1/alice/", 3)],
        json!({}),
    );
    let rj: RecordingJob = serde_json::from_value(json!({
        "apiVersion": "mixdown.dev/v1alpha1",
        "kind": "RecordingJob",
        "metadata": {"name": "rbac1"},
        "spec": spec,
    }))
    .expect("a RecordingJob");
    rjs.create(&PostParams::default(), &rj)
        .await
        .expect("creating a RecordingJob");
    let status = eventually(LONG, "the RecordingJob Failed", || async {
        let status = rjs.get("rbac1").await.ok()?.status?;
        (status.phase == Some(Phase::Failed)).then_some(status)
    })
    .await;
    assert_eq!(status.reason.as_deref(), Some("Forbidden"), "{status:#?}");
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("forbidden"),
        "{status:#?}"
    );
    let logs = pod_logs_of(&runner, "-operator-");
    assert!(
        logs.contains("forbidden"),
        "the operator's log says Forbidden:\n{logs}"
    );
    set_verbs(
        &client,
        &namespace,
        &operator_role,
        "jobs",
        &["get", "list", "watch", "create", "patch", "delete"],
    )
    .await;

    // The API may not create RecordingJobs: stopping a recording is refused, and its log says why.
    set_verbs(
        &client,
        &namespace,
        &api_role,
        "recordingjobs",
        &["get", "list", "watch", "patch"],
    )
    .await;
    let (_room, host, rec) = studio.start_recording().await;
    studio
        .upload(&host, &rec, &recording(3, "320x240").await)
        .await;
    let stop = format!("/api/recordings/{rec}/stop");
    let (refused_status, refused) = studio
        .call(reqwest::Method::POST, &stop, &host, Some(json!({})))
        .await;
    let status = refused_status;
    assert!(
        status >= 400,
        "a stop without the right to create the RecordingJob: {status} {refused}"
    );
    let logs = pod_logs_of(&runner, "-api-");
    assert!(
        logs.contains("forbidden") && logs.contains("recordingjobs"),
        "the API's log says it may not create RecordingJobs (the stop answered {status} {refused}):\n{logs}"
    );
    assert!(
        rjs.get_opt(&mixdown_crds::recording_job_name(&rec))
            .await
            .expect("reading")
            .is_none(),
        "no RecordingJob without the right"
    );

    // With the rule back, the same stop goes through: the rule was needed, and is enough.
    set_verbs(
        &client,
        &namespace,
        &api_role,
        "recordingjobs",
        &["get", "list", "watch", "create", "patch"],
    )
    .await;
    let (status, stopped) = studio.post(&stop, &host, json!({})).await;
    assert!(
        status == 200 || status == 201 || status == 422,
        "stopping again: {status} {stopped}"
    );
    println!(
        "refused stop: {refused_status} {refused}; after the rule is back: {status} {stopped}"
    );
}
