//! What end-to-end tests of Mixdown share (the operator's, the API's): a namespace on the test
//! kit's control plane with the worker's RBAC and credentials, a real S3-compatible server with
//! generated recordings, a pod runner running the real worker, and the operator itself as a real
//! process (so that it can be killed).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::{ControlPlane, TestNamespace};
use crate::pods::{PodRunner, PodRunnerHandle};
use crate::s3::S3Server;
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, CustomResourceExt};
use mixdown_crds::{RecordingJob, RecordingJobStatus};
use serde_json::json;

pub const WORKER_IMAGE: &str = "mixdown-worker:test";
pub const CREDENTIALS_SECRET: &str = "mixdown-s3-credentials";
pub const WORKER_ACCOUNT: &str = "mixdown-worker";

/// A test's world: see the module docs. Dropping it stops the operator, the pod runner and the
/// S3 server, and deletes the namespace.
pub struct World {
    pub cp: &'static ControlPlane,
    pub ns: TestNamespace,
    pub client: Client,
    pub s3: S3Server,
    pub bucket: String,
    pub dir: tempfile::TempDir,
    pub runner: Option<PodRunnerHandle>,
    pub worker: PathBuf,
}

impl World {
    /// A fresh namespace with the worker's ServiceAccount (allowed only to patch RecordingJob
    /// status), the credentials Secret, a bucket, and a pod runner mapping `images` (plus the
    /// real worker as [`WORKER_IMAGE`]) to local programs.
    pub async fn new(scripts: &[(&str, &str)]) -> World {
        let s3 = S3Server::start().await.expect("starting the S3 server");
        let bucket = s3.create_bucket().await;
        World::new_on(scripts, s3, bucket).await
    }

    /// Like [`World::new`], over the given storage and bucket (the local run's, kept in a
    /// folder across runs).
    pub async fn new_on(scripts: &[(&str, &str)], s3: S3Server, bucket: String) -> World {
        let cp = ControlPlane::shared().await;
        cp.install_crd(&RecordingJob::crd())
            .await
            .expect("installing the RecordingJob CRD");
        let ns = cp.namespace().await;
        let client = cp.client();
        let dir = tempfile::tempdir().expect("temp dir");
        // Building the worker waits on cargo's lock; only tests that run it pay for that.
        let needs_worker =
            scripts.is_empty() || scripts.iter().any(|(_, body)| body.contains("$WORKER"));
        let worker = if needs_worker {
            crate::bins::workspace_binary("mixdown-worker", "mixdown-worker")
        } else {
            PathBuf::from("/bin/false")
        };

        install_worker_rbac(cp, &client, ns.name()).await;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(CREDENTIALS_SECRET.into()),
                ..ObjectMeta::default()
            },
            string_data: Some(BTreeMap::from([
                ("AWS_ACCESS_KEY_ID".to_string(), s3.access_key().to_string()),
                (
                    "AWS_SECRET_ACCESS_KEY".to_string(),
                    s3.secret_key().to_string(),
                ),
            ])),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(client.clone(), ns.name())
            .create(&PostParams::default(), &secret)
            .await
            .expect("creating the credentials Secret");

        let mut runner = PodRunner::new(client.clone(), ns.name()).image(WORKER_IMAGE, &worker);
        for (image, body) in scripts {
            let body = body.replace("$WORKER", &worker.display().to_string());
            runner = runner.image(*image, script(dir.path(), image, &body));
        }
        let runner = runner.start().await.expect("starting the pod runner");
        World {
            cp,
            ns,
            client,
            s3,
            bucket,
            dir,
            runner: Some(runner),
            worker,
        }
    }

    pub fn namespace(&self) -> &str {
        self.ns.name()
    }

    pub fn rjs(&self) -> Api<RecordingJob> {
        Api::namespaced(self.client.clone(), self.namespace())
    }

    /// Starts the operator on this namespace with the given worker image and extra flags.
    pub fn operator(&self, image: &str, extra: &[&str]) -> Operator {
        Operator::start(self, self.cp.kubeconfig_path(), image, extra)
    }

    /// Starts the operator as [`World::operator`] does, but reaching the API server through
    /// `gate`, so a test can freeze or cut that replica's connection alone.
    pub fn operator_through(
        &self,
        gate: &crate::gate::Gate,
        image: &str,
        extra: &[&str],
    ) -> Operator {
        let kubeconfig = std::fs::read_to_string(self.cp.kubeconfig_path())
            .expect("reading the control plane's kubeconfig");
        let server = self.cp.server_url();
        assert!(kubeconfig.contains(server), "the kubeconfig names {server}");
        let through = kubeconfig.replace(server, &gate.url_for(server));
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-via-{}", gate.addr().port()));
        std::fs::write(&path, through).expect("writing the gated kubeconfig");
        Operator::start(self, &path, image, extra)
    }

    /// Uploads `recording` as the chunks of one participant and returns their prefix.
    pub async fn upload_track(
        &self,
        room: &str,
        recording_id: &str,
        participant: &str,
        chunks: &[Vec<u8>],
        skip: &[usize],
    ) -> String {
        let prefix = format!("riverside/chunks/{room}/{recording_id}/{participant}/");
        let s3 = self.s3.client();
        for (seq, chunk) in chunks.iter().enumerate() {
            if skip.contains(&seq) {
                continue;
            }
            s3.put_object()
                .bucket(&self.bucket)
                .key(format!("{prefix}{seq:08}.webm"))
                .body(ByteStream::from(chunk.clone()))
                .send()
                .await
                .expect("uploading a chunk");
        }
        prefix
    }

    /// Object keys under `prefix`.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self
            .s3
            .client()
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("listing objects");
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }

    /// Creates a RecordingJob named `name` from a JSON spec.
    pub async fn create_rj(&self, name: &str, spec: serde_json::Value) -> RecordingJob {
        let rj: RecordingJob = serde_json::from_value(json!({
            "apiVersion": "mixdown.dev/v1alpha1",
            "kind": "RecordingJob",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .expect("a RecordingJob");
        self.rjs()
            .create(&PostParams::default(), &rj)
            .await
            .unwrap_or_else(|e| panic!("creating RecordingJob {name}: {e}"))
    }

    /// Polls RecordingJob `name` until `done` holds, failing with `what` and the last status
    /// after `timeout`.
    pub async fn wait_rj(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&RecordingJobStatus) -> bool,
    ) -> RecordingJob {
        let api = self.rjs();
        let start = Instant::now();
        let mut last = None;
        loop {
            if let Some(rj) = api.get_opt(name).await.expect("reading the RecordingJob") {
                if rj.status.as_ref().is_some_and(&done) {
                    return rj;
                }
                last = rj.status;
            }
            assert!(
                start.elapsed() < timeout,
                "RecordingJob {name}: {what} not reached in {timeout:?}; last status: {last:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Watches RecordingJob `name` and keeps every status it had, in order.
    pub fn record_statuses(&self, name: &str) -> Recorded<RecordingJobStatus> {
        let recorded = Recorded::default();
        let seen = recorded.clone();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(self.rjs(), config)
            .default_backoff()
            .applied_objects();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(rj) = event
                    && let Some(status) = rj.status
                {
                    seen.push(status);
                }
            }
        });
        recorded.hold(task);
        recorded
    }

    /// Watches the namespace's Jobs and keeps every version of each, in order.
    pub fn record_jobs(&self) -> Recorded<Job> {
        let recorded = Recorded::default();
        let seen = recorded.clone();
        let api: Api<Job> = Api::namespaced(self.client.clone(), self.namespace());
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(job) = event {
                    seen.push(job);
                }
            }
        });
        recorded.hold(task);
        recorded
    }

    /// Polls `check` until it returns `Some`, failing with `what` after `timeout`.
    pub async fn eventually<T, F, Fut>(&self, timeout: Duration, what: &str, check: F) -> T
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        eventually(timeout, what, check).await
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Dropping the handle kills every worker process at once.
        self.runner.take();
    }
}

pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Values seen by a background watch.
#[derive(Clone, Default)]
pub struct Recorded<T> {
    values: Arc<Mutex<Vec<T>>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl<T: Clone + Debug> Recorded<T> {
    fn push(&self, value: T) {
        self.values.lock().unwrap().push(value);
    }

    fn hold(&self, task: tokio::task::JoinHandle<()>) {
        *self.task.lock().unwrap() = Some(task);
    }

    pub fn values(&self) -> Vec<T> {
        self.values.lock().unwrap().clone()
    }
}

impl<T> Drop for Recorded<T> {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1
            && let Some(task) = self.task.lock().ok().and_then(|mut t| t.take())
        {
            task.abort();
        }
    }
}

/// Lease settings for a test of failover: a killed leader's Lease expires in 4 s. A renewal
/// must succeed within 2 s, which a busy machine's API server does not always answer in.
pub const FAST_LEASE: &[&str] = &[
    "--lease-duration-seconds",
    "4",
    "--lease-renew-seconds",
    "1",
    "--lease-renew-deadline-seconds",
    "2",
];

/// Lease settings for every other test operator: a renewal may take up to 6 s.
const TOLERANT_LEASE: &[&str] = &[
    "--lease-duration-seconds",
    "8",
    "--lease-renew-seconds",
    "1",
    "--lease-renew-deadline-seconds",
    "6",
];

/// The operator as a real process, with the admin kubeconfig, watching one namespace. Killed
/// when dropped; its log is kept for failure messages.
pub struct Operator {
    child: Option<Child>,
    pub log: PathBuf,
    pub metrics_url: String,
}

impl Operator {
    fn start(world: &World, kubeconfig: &Path, image: &str, extra: &[&str]) -> Operator {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = world.dir.path().join(format!("operator-{n}.log"));
        let port = free_port();
        let operator = crate::bins::workspace_binary("mixdown-operator", "mixdown-operator");
        let mut cmd = Command::new(operator);
        cmd.env("KUBECONFIG", kubeconfig)
            // MIXDOWN_TEST_OPERATOR_LOG=debug when a test needs the whole story.
            .env(
                "RUST_LOG",
                std::env::var("MIXDOWN_TEST_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args(["--namespace", world.namespace()])
            .args(["--worker-image", image])
            .args(["--s3-endpoint", world.s3.endpoint()])
            .args(["--s3-region", world.s3.region()])
            .args(["--s3-bucket", &world.bucket])
            .args(["--s3-path-style", "true"])
            .args(["--s3-credentials-secret", CREDENTIALS_SECRET])
            .args(["--worker-service-account", WORKER_ACCOUNT])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--log-format", "text"])
            .args(["--lease-namespace", world.namespace()]);
        // A test of failover passes FAST_LEASE; the others keep a Lease that survives the
        // API server's pauses on a loaded machine (a leader that misses its renew deadline
        // exits, and no Deployment restarts it here).
        if !extra.contains(&"--lease-duration-seconds") {
            cmd.args(TOLERANT_LEASE);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("operator log file"));
        // The operator must not outlive the test binary, even when it is killed.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting mixdown-operator");
        Operator {
            child: Some(child),
            log,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, as when a node dies: no lease release, no clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The exit status once the process has ended on its own, without waiting.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of a metric line (exact name with labels), once the endpoint answers.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let body = self.metrics_text().await;
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The whole `/metrics` page, or nothing when it cannot be read.
    pub async fn metrics_text(&self) -> String {
        match reqwest::get(&self.metrics_url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the operator serves metrics (it is up and connected).
    pub async fn wait_up(&self) {
        let start = Instant::now();
        while self
            .metric("mixdown_operator_reconciles_total")
            .await
            .is_none()
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the operator did not come up; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- operator log ({}) ---\n{}",
                self.log.display(),
                tail(&self.log_text(), 120)
            );
        }
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An executable shell script standing in for an image.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name.replace([':', '/'], "_"));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("writing a script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The worker's ServiceAccount may patch RecordingJob status and nothing else.
async fn install_worker_rbac(cp: &ControlPlane, client: &Client, namespace: &str) {
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        ..ObjectMeta::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: meta(WORKER_ACCOUNT),
                ..ServiceAccount::default()
            },
        )
        .await
        .expect("creating the worker ServiceAccount");
    Api::<Role>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &Role {
                metadata: meta(WORKER_ACCOUNT),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec!["mixdown.dev".into()]),
                    resources: Some(vec!["recordingjobs/status".into()]),
                    verbs: vec!["patch".into()],
                    ..PolicyRule::default()
                }]),
            },
        )
        .await
        .expect("creating the worker Role");
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: meta(WORKER_ACCOUNT),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: WORKER_ACCOUNT.into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: WORKER_ACCOUNT.into(),
                    namespace: Some(namespace.into()),
                    ..Subject::default()
                }]),
            },
        )
        .await
        .expect("creating the worker RoleBinding");
    // Before 1.24, Pods of a ServiceAccount are refused until its token Secret exists.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    eventually(
        Duration::from_secs(30),
        "the worker ServiceAccount, ready for Pods",
        || {
            let accounts = accounts.clone();
            async move {
                let sa = accounts.get_opt(WORKER_ACCOUNT).await.ok()??;
                cp.admits_pods_of(&sa).then_some(())
            }
        },
    )
    .await;
}

/// A WebM recording (VP8 + Opus) of `seconds`, split into byte chunks of about a second each,
/// the way MediaRecorder's timeslice splits it: only the first chunk has the header.
pub async fn recording(seconds: u32, size: &str) -> Vec<Vec<u8>> {
    type Chunks = Vec<Vec<u8>>;
    static CACHE: Mutex<BTreeMap<(u32, String), Chunks>> = Mutex::new(BTreeMap::new());
    let cache = &CACHE;
    if let Some(chunks) = cache.lock().unwrap().get(&(seconds, size.to_string())) {
        return chunks.clone();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("recording.webm");
    let status = tokio::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={size}:rate=30:duration={seconds}"),
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:sample_rate=48000:duration={seconds}"),
        ])
        .args([
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "600k",
        ])
        .args(["-c:a", "libopus", "-b:a", "64k", "-f", "webm"])
        .arg(&out)
        .status()
        .await
        .expect("ffmpeg runs (apt-get install ffmpeg)");
    assert!(status.success(), "ffmpeg could not generate a recording");
    let bytes = std::fs::read(&out).expect("reading the recording");
    let per_chunk = bytes.len().div_ceil(seconds as usize);
    let chunks: Vec<Vec<u8>> = bytes.chunks(per_chunk).map(<[u8]>::to_vec).collect();
    cache
        .lock()
        .unwrap()
        .insert((seconds, size.to_string()), chunks.clone());
    chunks
}

/// The spec of a RecordingJob over the given tracks (participant, prefix, chunk count).
pub fn spec(
    room: &str,
    recording_id: &str,
    tracks: &[(&str, &str, usize)],
    extra: serde_json::Value,
) -> serde_json::Value {
    let tracks: Vec<serde_json::Value> = tracks
        .iter()
        .map(|(participant, prefix, count)| {
            json!({"participantId": participant, "source": {"prefix": prefix, "chunkCount": count}})
        })
        .collect();
    let mut spec = json!({
        "roomId": room,
        "recordingId": recording_id,
        "tracks": tracks,
        "output": {"prefix": format!("riverside/processed/{room}/{recording_id}/"), "profile": "webm"},
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    spec
}
