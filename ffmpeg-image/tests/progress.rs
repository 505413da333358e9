//! Progress on a real API server: the worker patches `status.progress` of its RecordingJob with
//! server-side apply under its own field manager, holding only `patch` on
//! `recordingjobs/status`, and a RecordingJob it cannot patch does not fail the job; a job with a
//! mixdown gets `status.readyOutputs` before its mixdown is made, which every later patch keeps.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;
use kube::{Client, CustomResourceExt};
use mixdown_crds::{RecordingJob, names};
use mixdown_testkit::cluster::{ControlPlane, TestNamespace};
use mixdown_testkit::s3::S3Server;
use serde_json::json;

/// A kubeconfig for the namespace's default ServiceAccount, which may only patch
/// `recordingjobs/status` there: what the worker's Pod gets.
async fn worker_kubeconfig(
    cp: &ControlPlane,
    ns: &TestNamespace,
    dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let client = cp.client();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "mixdown-worker"},
        "rules": [{"apiGroups": [names::GROUP], "resources": ["recordingjobs/status"], "verbs": ["patch"]}],
    }))?;
    Api::<Role>::namespaced(client.clone(), ns.name())
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "mixdown-worker"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mixdown-worker"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns.name()}],
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), ns.name())
        .create(&PostParams::default(), &binding)
        .await?;

    let account = Api::<ServiceAccount>::namespaced(client.clone(), ns.name())
        .get("default")
        .await?;
    let secret_name = account
        .secrets
        .and_then(|s| s.into_iter().next())
        .and_then(|s| s.name)
        .ok_or_else(|| anyhow::anyhow!("the default ServiceAccount has no token secret"))?;
    let secret = Api::<Secret>::namespaced(client, ns.name())
        .get(&secret_name)
        .await?;
    let token = secret
        .data
        .and_then(|d| d.get("token").cloned())
        .ok_or_else(|| anyhow::anyhow!("no token in {secret_name}"))?;
    let token = String::from_utf8(token.0)?;

    let ca = dir.join("ca.crt");
    std::fs::write(&ca, cp.ca_pem())?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        serde_json::to_string(&json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": cp.server_url(), "certificate-authority": ca}}],
            "users": [{"name": "worker", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "worker", "namespace": ns.name()}}],
            "current-context": "test",
        }))?,
    )?;
    Ok(kubeconfig)
}

async fn create_recording_job(
    client: Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<Api<RecordingJob>> {
    let api = Api::<RecordingJob>::namespaced(client, ns);
    let object: RecordingJob = serde_json::from_value(json!({
        "apiVersion": names::API_VERSION,
        "kind": names::KIND,
        "metadata": {"name": name},
        "spec": {
            "roomId": "room1",
            "recordingId": "rec-progress",
            "tracks": [{"participantId": "alice", "source": {"prefix": "riverside/chunks/room1/rec-progress/alice/", "chunkCount": 30}}],
            "output": {"prefix": "riverside/processed/room1/rec-progress/"},
        },
    }))?;
    api.create(&PostParams::default(), &object).await?;
    Ok(api)
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_is_applied_to_the_recording_job_status_with_patch_rights_only()
-> anyhow::Result<()> {
    require_ffmpeg();
    let cp = ControlPlane::shared().await;
    cp.install_crd(&RecordingJob::crd()).await?;
    let ns = cp.namespace().await;
    let dir = tempfile::tempdir()?;
    let kubeconfig = worker_kubeconfig(cp, &ns, dir.path()).await?;
    let name = "rec-progress";
    let jobs = create_recording_job(cp.client(), ns.name(), name).await?;

    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let chunks = chunks(&VP8_30S)?;
    let prefix = chunk_prefix("room1", "rec-progress", "alice");
    put_chunks(&server.client(), &bucket, &prefix, &chunks).await?;
    let job = job(
        "room1",
        "rec-progress",
        vec![track("alice", &prefix, chunks.len() as u32)],
        "mp4",
    );

    // Watch status.progress while the worker runs.
    let seen = Arc::new(Mutex::new(Vec::<i64>::new()));
    let watcher = tokio::spawn({
        let (jobs, seen) = (jobs.clone(), seen.clone());
        async move {
            loop {
                if let Ok(job) = jobs.get(name).await
                    && let Some(progress) = job.status.and_then(|s| s.progress)
                {
                    let mut seen = seen.lock().expect("not poisoned");
                    if seen.last() != Some(&i64::from(progress)) {
                        seen.push(i64::from(progress));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let run = run_worker(
        &server,
        &bucket,
        &job,
        &[
            ("KUBECONFIG", &kubeconfig),
            ("MIXDOWN_RECORDING_JOB", name),
            ("MIXDOWN_NAMESPACE", ns.name()),
        ],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    watcher.abort();

    assert_eq!(run.code(), Some(0), "{}", run.explain());
    assert!(
        !run.stderr.contains("patching status.progress failed"),
        "{}",
        run.explain()
    );
    let object = jobs.get(name).await?;
    assert_eq!(object.status.as_ref().and_then(|s| s.progress), Some(100));
    let seen = seen.lock().expect("not poisoned").clone();
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {seen:?}"
    );
    assert!(
        seen.iter().any(|p| (0..100).contains(p)),
        "no progress seen before the end: {seen:?}"
    );

    // The worker owns status.progress and nothing else.
    let managed = object.metadata.managed_fields.unwrap_or_default();
    let worker = managed
        .iter()
        .find(|m| m.manager.as_deref() == Some(names::field_managers::WORKER))
        .unwrap_or_else(|| {
            panic!(
                "no managedFields entry of {}: {managed:?}",
                names::field_managers::WORKER
            )
        });
    assert_eq!(worker.operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_value(&worker.fields_v1)?;
    // ("." only says the worker also keeps `status` itself in existence, having created it.)
    let owned: Vec<&String> = fields["f:status"]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    // readyOutputs: the files, from its last write (a job without a mixdown).
    assert!(owned.contains(&&"f:progress".to_owned()), "{fields}");
    assert!(
        owned
            .iter()
            .all(|f| ["f:progress", "f:readyOutputs", "."].contains(&f.as_str())),
        "the worker owns more than progress and readyOutputs: {fields}"
    );
    assert_eq!(
        fields.as_object().map(|o| o.len()),
        Some(1),
        "the worker owns more than status: {fields}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_that_cannot_be_reported_does_not_fail_the_job() -> anyhow::Result<()> {
    require_ffmpeg();
    let cp = ControlPlane::shared().await;
    cp.install_crd(&RecordingJob::crd()).await?;
    let ns = cp.namespace().await;
    let dir = tempfile::tempdir()?;
    let kubeconfig = worker_kubeconfig(cp, &ns, dir.path()).await?;

    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let chunks = chunks(&VP8_30S)?;
    let prefix = chunk_prefix("room1", "rec-gone", "alice");
    put_chunks(&server.client(), &bucket, &prefix, &chunks).await?;
    let job = job(
        "room1",
        "rec-gone",
        vec![track("alice", &prefix, chunks.len() as u32)],
        "audio",
    );
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();

    // No such RecordingJob: every patch fails with 404.
    let run = run_worker(
        &server,
        &bucket,
        &job,
        &[
            ("KUBECONFIG", &kubeconfig),
            ("MIXDOWN_RECORDING_JOB", "no-such-job"),
            ("MIXDOWN_NAMESPACE", ns.name()),
        ],
    )
    .await?;

    assert_eq!(run.code(), Some(0), "{}", run.explain());
    assert!(
        run.stderr.contains("patching status.progress failed"),
        "{}",
        run.explain()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_outputs_are_applied_before_the_mixdown_and_kept_by_every_later_patch()
-> anyhow::Result<()> {
    require_ffmpeg();
    let cp = ControlPlane::shared().await;
    cp.install_crd(&RecordingJob::crd()).await?;
    let ns = cp.namespace().await;
    let dir = tempfile::tempdir()?;
    let kubeconfig = worker_kubeconfig(cp, &ns, dir.path()).await?;
    let name = "rec-ready";
    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let chunks = chunks(&VP8_30S)?;
    let mut tracks = Vec::new();
    for participant in ["alice", "bob"] {
        let prefix = chunk_prefix("room1", name, participant);
        put_chunks(&server.client(), &bucket, &prefix, &chunks).await?;
        tracks.push(track(participant, &prefix, chunks.len() as u32));
    }
    let jobs = Api::<RecordingJob>::namespaced(cp.client(), ns.name());
    let object: RecordingJob = serde_json::from_value(json!({
        "apiVersion": names::API_VERSION,
        "kind": names::KIND,
        "metadata": {"name": name},
        "spec": {
            "roomId": "room1",
            "recordingId": name,
            "tracks": tracks,
            "output": {"prefix": format!("riverside/processed/room1/{name}/"), "profile": "webm"},
        },
    }))?;
    jobs.create(&PostParams::default(), &object).await?;
    let mut job = job("room1", name, tracks, "webm");
    job["composite"] = json!(true);

    // (progress, readyOutputs) as the status shows them while the worker runs.
    let (watcher, seen) = watch_progress_and_ready(&jobs, name);
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let run = run_worker(
        &server,
        &bucket,
        &job,
        &[
            ("KUBECONFIG", &kubeconfig),
            ("MIXDOWN_RECORDING_JOB", name),
            ("MIXDOWN_NAMESPACE", ns.name()),
            ("MIXDOWN_VIDEO_PRESET", "ultrafast"),
        ],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    watcher.abort();

    assert_eq!(run.code(), Some(0), "{}", run.explain());
    assert!(
        !run.stderr.contains("patching status.progress failed"),
        "{}",
        run.explain()
    );
    let report = run.report.as_ref().expect("report");
    assert_eq!(report["outputs"][0]["kind"], "mixdown", "{}", run.explain());
    let seen = seen.lock().expect("not poisoned").clone();
    // Ready before done, and never dropped again by a progress patch.
    let first_ready = seen
        .iter()
        .position(|&(_, ready)| ready == 2)
        .unwrap_or_else(|| panic!("readyOutputs never seen: {seen:?}"));
    assert!(seen[first_ready].0 < 100, "ready only at the end: {seen:?}");
    assert!(
        seen[first_ready..].iter().all(|&(_, ready)| ready == 2),
        "a later patch dropped readyOutputs: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    let object = jobs.get(name).await?;
    let status = object.status.clone().unwrap_or_default();
    assert_eq!(status.progress, Some(100));
    let ready: Vec<&str> = status
        .ready_outputs
        .iter()
        .map(|o| o.participant_id.as_str())
        .collect();
    assert_eq!(ready, ["alice", "bob"]);
    assert_eq!(
        status.ready_outputs[0].key,
        format!("riverside/processed/room1/{name}/alice.webm")
    );

    // The worker owns progress and readyOutputs, nothing else.
    let managed = object.metadata.managed_fields.unwrap_or_default();
    let worker = managed
        .iter()
        .find(|m| m.manager.as_deref() == Some(names::field_managers::WORKER))
        .expect("the worker's managedFields");
    let fields = serde_json::to_value(&worker.fields_v1)?;
    let owned: Vec<&String> = fields["f:status"]
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert!(owned.contains(&&"f:readyOutputs".to_owned()), "{fields}");
    assert!(
        owned
            .iter()
            .all(|f| ["f:progress", "f:readyOutputs", "."].contains(&f.as_str())),
        "{fields}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_rooms_last_write_lists_every_file_the_report_has_no_room_for() -> anyhow::Result<()>
{
    require_ffmpeg();
    let cp = ControlPlane::shared().await;
    cp.install_crd(&RecordingJob::crd()).await?;
    let ns = cp.namespace().await;
    let dir = tempfile::tempdir()?;
    let kubeconfig = worker_kubeconfig(cp, &ns, dir.path()).await?;
    let name = "rec-large-room";
    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let chunks = chunks(&VP8_30S)?;
    // 32 participants, the most a RecordingJob has: their outputs take over 6 KB as JSON, more
    // than the 4096 bytes of a termination message.
    let participants: Vec<String> = (0..32)
        .map(|i| format!("participant-{i:02}-with-a-long-name"))
        .collect();
    let mut tracks = Vec::new();
    for participant in &participants {
        let prefix = chunk_prefix("room1", name, participant);
        put_chunks(&server.client(), &bucket, &prefix, &chunks).await?;
        tracks.push(track(participant, &prefix, chunks.len() as u32));
    }
    let jobs = Api::<RecordingJob>::namespaced(cp.client(), ns.name());
    let object: RecordingJob = serde_json::from_value(json!({
        "apiVersion": names::API_VERSION,
        "kind": names::KIND,
        "metadata": {"name": name},
        "spec": {
            "roomId": "room1",
            "recordingId": name,
            "tracks": tracks,
            "output": {"prefix": format!("riverside/processed/room1/{name}/"), "profile": "webm", "composite": false},
        },
    }))?;
    jobs.create(&PostParams::default(), &object).await?;
    let job = job("room1", name, tracks, "webm");
    assert_ne!(job["composite"], json!(true), "no mixdown in this job");

    // (progress, readyOutputs) as the status shows them while the worker runs.
    let (watcher, seen) = watch_progress_and_ready(&jobs, name);
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    let run = run_worker(
        &server,
        &bucket,
        &job,
        &[
            ("KUBECONFIG", &kubeconfig),
            ("MIXDOWN_RECORDING_JOB", name),
            ("MIXDOWN_NAMESPACE", ns.name()),
        ],
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    watcher.abort();

    assert_eq!(run.code(), Some(0), "{}", run.explain());
    // The report is whole JSON of at most 4096 bytes, and lists only some of the files.
    assert!(run.report_text.len() <= 4096, "{}", run.report_text.len());
    let report = run.report.as_ref().expect("report");
    let reported = report["outputs"].as_array().expect("outputs").len();
    assert!(
        (1..participants.len()).contains(&reported),
        "{reported} of {} outputs in the report: the test means one that does not fit",
        participants.len()
    );
    assert!(
        run.stderr
            .contains("output left out of the termination message"),
        "{}",
        run.explain()
    );
    // The status lists every file, in the job's order, each as stored.
    let status = jobs.get(name).await?.status.unwrap_or_default();
    assert_eq!(status.progress, Some(100));
    let ready: Vec<&str> = status
        .ready_outputs
        .iter()
        .map(|o| o.participant_id.as_str())
        .collect();
    assert_eq!(ready, participants);
    for output in &status.ready_outputs {
        let head = server
            .client()
            .head_object()
            .bucket(&bucket)
            .key(&output.key)
            .send()
            .await?;
        assert_eq!(
            head.content_length(),
            Some(output.size_bytes),
            "{}",
            output.key
        );
        assert!((output.duration_seconds - 30.0).abs() < 1.0, "{output:?}");
    }
    // Without a mixdown the files are listed by the last write only: nothing said they were
    // ready while the worker still had work to do.
    let seen = seen.lock().expect("not poisoned").clone();
    assert!(
        seen.iter()
            .all(|&(progress, ready)| ready == 0 || progress == 100),
        "{seen:?}"
    );
    assert_eq!(seen.last(), Some(&(100, participants.len())), "{seen:?}");
    Ok(())
}

/// Each (progress, number of readyOutputs) a watcher saw, in order.
type Seen = Arc<Mutex<Vec<(i32, usize)>>>;

/// Polls RecordingJob `name` every 50 ms until aborted, recording each new (progress, number of
/// readyOutputs) the status shows.
fn watch_progress_and_ready(
    jobs: &Api<RecordingJob>,
    name: &'static str,
) -> (tokio::task::JoinHandle<()>, Seen) {
    let seen = Seen::default();
    let watcher = tokio::spawn({
        let (jobs, seen) = (jobs.clone(), seen.clone());
        async move {
            loop {
                if let Ok(job) = jobs.get(name).await
                    && let Some(status) = job.status
                    && let Some(progress) = status.progress
                {
                    let now = (progress, status.ready_outputs.len());
                    let mut seen = seen.lock().expect("not poisoned");
                    if seen.last() != Some(&now) {
                        seen.push(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    (watcher, seen)
}
