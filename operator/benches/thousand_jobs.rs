//! Benchmark (not a test): 1,000 RecordingJobs created at once, with the concurrency cap lifted and
//! a trivial worker (`/bin/true`), on the test kit's control plane. It prints:
//!
//! - the time from the first RecordingJob create until all 1,000 Jobs exist;
//! - beside it, in the same run and on the same control plane, the time a plain client loop needs
//!   to create the same 1,000 Jobs directly (one create after the other, and 64 at a time);
//! - the operator's peak resident memory (VmHWM) once every RecordingJob has finished;
//! - for each phase, the writes the API server served while it ran, by verb and resource (from
//!   its own `apiserver_request_total`), which is where the phases differ.
//!
//! Targets (issue 4): within 1.2x of the plain loop, under 64 MB.
//!
//! Each phase starts on a quiet control plane: the Job controller's own work for the previous
//! phase's Jobs (1,000 Pods at its default 20 requests per second) is waited out first.
//!
//! `cargo bench -p mixdown-operator` (needs `KUBEBUILDER_ASSETS`, like the tests);
//! `MIXDOWN_BENCH_PHASES=operator` runs the operator's phase alone, to iterate on it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, CustomResourceExt};
use mixdown_crds::{Phase, RecordingJob};
use mixdown_operator::Config;
use mixdown_operator::job::build_job;
use mixdown_testkit::cluster::ControlPlane;
use mixdown_testkit::pods::{PodRunner, PodRunnerHandle};
use serde_json::json;

const COUNT: usize = 1000;
const IMAGE: &str = "trivial-worker:bench";
const SECRET: &str = "mixdown-s3-credentials";
const QUIET_TIMEOUT: Duration = Duration::from_secs(900);

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bench());
}

async fn bench() {
    // MIXDOWN_BENCH_PHASES=operator runs only that phase (to iterate on the operator); the
    // figures to report come from a run of all three, which is the default.
    let phases = std::env::var("MIXDOWN_BENCH_PHASES")
        .unwrap_or_else(|_| "sequential,parallel,operator".into());
    let phases: Vec<&str> = phases.split(',').map(str::trim).collect();
    let cp = ControlPlane::shared().await;
    cp.install_crd(&RecordingJob::crd())
        .await
        .expect("installing the CRD");
    let client = cp.client();

    let sequential = if phases.contains(&"sequential") {
        Some(plain_loop(cp, &client, 1).await)
    } else {
        None
    };
    let parallel = if phases.contains(&"parallel") {
        Some(plain_loop(cp, &client, 64).await)
    } else {
        None
    };
    if !phases.contains(&"operator") {
        return;
    }
    let (through_operator, rss) = operator(cp, &client).await;
    for (baseline, label) in [(sequential, "sequential"), (parallel, "64 in flight")] {
        if let Some(baseline) = baseline {
            println!(
                "operator / plain loop, {label:<13} {:.2}x (target <= 1.2x)",
                through_operator.as_secs_f64() / baseline.as_secs_f64()
            );
        }
    }
    println!(
        "operator peak RSS (VmHWM):     {:.1} MB after all {COUNT} RecordingJobs finished (target < 64 MB)",
        rss as f64 / 1024.0
    );
}

/// The plain client loop: creates the 1,000 Jobs directly, `in_flight` at a time, and returns how
/// long that took. Then waits until the Job controller's work for them is done, so the next phase
/// starts on a quiet control plane.
async fn plain_loop(cp: &ControlPlane, client: &Client, in_flight: usize) -> Duration {
    let ns = cp.namespace().await;
    let _runner = prepare(client, ns.name()).await;
    let jobs = template_jobs(ns.name());
    let api: Api<Job> = Api::namespaced(client.clone(), ns.name());
    let before = api_writes(client).await;
    let start = Instant::now();
    futures::stream::iter(jobs.iter().map(|job| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), job).await.map(|_| ()) }
    }))
    .buffer_unordered(in_flight)
    .try_collect::<Vec<()>>()
    .await
    .expect("creating Jobs");
    let took = start.elapsed();
    let label = if in_flight == 1 {
        "sequential:".to_string()
    } else {
        format!("{in_flight} in flight:")
    };
    println!(
        "plain loop, {label:<18} {COUNT} Jobs in {:>7.2} s",
        took.as_secs_f64()
    );
    print_writes(&before, &api_writes(client).await);
    wait_jobs_finished(client, ns.name()).await;
    took
}

/// The operator: 1,000 RecordingJobs created (64 at a time), and the time from the first create
/// until all 1,000 Jobs exist; then the operator's peak RSS once every RecordingJob finished.
async fn operator(cp: &ControlPlane, client: &Client) -> (Duration, u64) {
    let operator_ns = cp.namespace().await;
    let _runner = prepare(client, operator_ns.name()).await;
    let mut operator = start_operator(cp, operator_ns.name());
    wait_operator_ready(&operator.metrics_url).await;
    let job_api: Api<Job> = Api::namespaced(client.clone(), operator_ns.name());
    let mut all_jobs = when_seen(
        job_api,
        |_| true,
        &[1, COUNT / 4, COUNT / 2, 3 * COUNT / 4, COUNT],
    );
    let rj_api: Api<RecordingJob> = Api::namespaced(client.clone(), operator_ns.name());
    // When every RecordingJob's status names its Job: the operator may put status writes off
    // during a burst, and this shows by how much.
    let mut all_reported = when_seen(
        rj_api.clone(),
        |rj: &RecordingJob| rj.status.as_ref().is_some_and(|s| s.job_name.is_some()),
        &[COUNT],
    );
    let before = api_writes(client).await;
    let start = Instant::now();
    futures::stream::iter((0..COUNT).map(|i| {
        let api = rj_api.clone();
        let mut rj = recording_job(&format!("bench-{i:04}"), None);
        rj.metadata.uid = None;
        async move { api.create(&PostParams::default(), &rj).await.map(|_| ()) }
    }))
    .buffer_unordered(64)
    .try_collect::<Vec<()>>()
    .await
    .expect("creating RecordingJobs");
    let created = start.elapsed();
    let quarters = tokio::time::timeout(QUIET_TIMEOUT, &mut all_jobs)
        .await
        .expect("all Jobs within the timeout")
        .expect("the Job watch");
    let cpu = cpu_seconds(operator.child.id());
    let after = api_writes(client).await;
    let through_operator = quarters[quarters.len() - 1].duration_since(start);
    println!(
        "operator:                      {COUNT} Jobs in {:>7.2} s  ({COUNT} RecordingJobs created in {:.2} s)",
        through_operator.as_secs_f64(),
        created.as_secs_f64()
    );
    let marks: Vec<String> = quarters
        .iter()
        .map(|t| format!("{:.2}", t.duration_since(start).as_secs_f64()))
        .collect();
    println!(
        "  (first, 1/4, 1/2, 3/4, all Jobs at {} s; operator CPU by then {:.2} s)",
        marks.join(", "),
        cpu.unwrap_or(f64::NAN)
    );
    print_writes(&before, &after);
    match tokio::time::timeout(QUIET_TIMEOUT, &mut all_reported).await {
        Ok(Ok(at)) => println!(
            "  (every RecordingJob's status named its Job at {:.2} s)",
            at[0].duration_since(start).as_secs_f64()
        ),
        _ => println!("  (the RecordingJobs' statuses did not all name their Job)"),
    }
    all_reported.abort();
    if let Ok(body) = reqwest::get(operator.metrics_url.replace("/readyz", "/metrics"))
        .await
        .and_then(|r| r.error_for_status())
    {
        let body = body.text().await.unwrap_or_default();
        let value = |series: &str| {
            body.lines()
                .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        let count = value("mixdown_operator_reconcile_duration_seconds_count");
        let sum = value("mixdown_operator_reconcile_duration_seconds_sum");
        println!(
            "  (by then: {count:.0} reconciles, {:.0} ms each on average; {:.0} statuses applied, {:.0} writes held back during the burst)",
            1000.0 * sum / count,
            value("mixdown_operator_status_writes_total"),
            value("mixdown_operator_status_writes_held_back_total"),
        );
    }
    wait_recording_jobs_finished(client, operator_ns.name()).await;
    let rss = peak_rss_kib(operator.child.id()).unwrap_or(0);
    operator.stop();
    (through_operator, rss)
}

/// A pod runner running `/bin/true` for the namespace's Pods, and the Secret they reference.
async fn prepare(client: &Client, namespace: &str) -> PodRunnerHandle {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([(
            "AWS_ACCESS_KEY_ID".to_string(),
            "bench".to_string(),
        )])),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the Secret");
    PodRunner::new(client.clone(), namespace)
        .image(IMAGE, "/bin/true")
        .start()
        .await
        .expect("starting the pod runner")
}

fn config() -> Config {
    Config {
        worker_image: IMAGE.into(),
        worker_service_account: "default".into(),
        s3_credentials_secret: SECRET.into(),
        max_running_jobs: 0,
        ..Config::default()
    }
}

fn recording_job(name: &str, namespace: Option<&str>) -> RecordingJob {
    serde_json::from_value(json!({
        "apiVersion": "mixdown.dev/v1alpha1",
        "kind": "RecordingJob",
        "metadata": {"name": name, "namespace": namespace, "uid": "bench"},
        "spec": {
            "roomId": "bench",
            "recordingId": name,
            "tracks": [{"participantId": "alice", "source": {"prefix": format!("riverside/chunks/bench/{name}/alice/"), "chunkCount": 60}}],
            "output": {"prefix": format!("riverside/processed/bench/{name}/")},
        },
    }))
    .expect("a RecordingJob")
}

/// The Jobs the operator would create, without owner (nothing owns them here).
fn template_jobs(namespace: &str) -> Vec<Job> {
    (0..COUNT)
        .map(|i| {
            let rj = recording_job(&format!("plain-{i:04}"), Some(namespace));
            let mut job = build_job(&rj, &config()).expect("a Job");
            job.metadata.owner_references = None;
            job
        })
        .collect()
}

/// Waits until every Job in `namespace` finished, so the next phase starts on a quiet server.
async fn wait_jobs_finished(client: &Client, namespace: &str) {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let start = Instant::now();
    loop {
        let jobs = api.list(&Default::default()).await.expect("listing Jobs");
        let done = jobs
            .items
            .iter()
            .filter(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0)
            .count();
        if done == COUNT {
            println!(
                "  (its Pods ran and finished after {:.0} s)",
                start.elapsed().as_secs_f64()
            );
            return;
        }
        assert!(
            start.elapsed() < QUIET_TIMEOUT,
            "Jobs did not finish: {done} of {COUNT}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn wait_recording_jobs_finished(client: &Client, namespace: &str) {
    let api: Api<RecordingJob> = Api::namespaced(client.clone(), namespace);
    let start = Instant::now();
    loop {
        let list = api
            .list(&Default::default())
            .await
            .expect("listing RecordingJobs");
        let done = list
            .items
            .iter()
            .filter(|rj| rj.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
            .count();
        if done == COUNT {
            println!(
                "  (all RecordingJobs Succeeded after {:.0} s)",
                start.elapsed().as_secs_f64()
            );
            return;
        }
        assert!(
            start.elapsed() < QUIET_TIMEOUT,
            "RecordingJobs did not finish: {done} of {COUNT}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct Operator {
    child: Child,
    metrics_url: String,
}

impl Operator {
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_operator(cp: &ControlPlane, namespace: &str) -> Operator {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mixdown-operator"));
    cmd.env("KUBECONFIG", cp.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .args(["--namespace", namespace])
        .args(["--worker-image", IMAGE])
        .args(["--worker-service-account", "default"])
        .args(["--s3-endpoint", "http://127.0.0.1:9"])
        .args(["--s3-bucket", "bench"])
        .args(["--s3-credentials-secret", SECRET])
        .args(["--max-running-jobs", "0"])
        .args(["--leader-election", "false"])
        .args(["--log-format", "text"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Operator {
        child: cmd.spawn().expect("starting mixdown-operator"),
        metrics_url: format!("http://127.0.0.1:{port}/readyz"),
    }
}

async fn wait_operator_ready(url: &str) {
    let start = Instant::now();
    loop {
        if let Ok(response) = reqwest::get(url).await
            && response.status().is_success()
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the operator did not get ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Watches `api` and ends when the last of `marks` distinct objects (by name) have passed
/// `accept`, with the instant each count in `marks` was reached, in order.
fn when_seen<K>(
    api: Api<K>,
    accept: fn(&K) -> bool,
    marks: &[usize],
) -> tokio::task::JoinHandle<Vec<Instant>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let marks = marks.to_vec();
    tokio::spawn(async move {
        let mut names = BTreeSet::new();
        let mut reached = Vec::new();
        let mut stream = std::pin::pin!(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
        );
        while let Some(object) = stream.next().await {
            if let Ok(object) = object
                && accept(&object)
                && names.insert(object.meta().name.clone().unwrap_or_default())
            {
                if marks.contains(&names.len()) {
                    reached.push(Instant::now());
                }
                if Some(&names.len()) == marks.last() {
                    return reached;
                }
            }
        }
        panic!("the watch ended after {} objects", names.len());
    })
}

/// User and system CPU time of process `pid` so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / per_second as f64)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Write requests the API server has served, by `(verb, resource[/subresource])`, from its
/// `apiserver_request_total` (all namespaces and clients: the control plane serves only the
/// benchmark). Empty if the metrics cannot be read.
async fn api_writes(client: &Client) -> BTreeMap<(String, String), f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a metrics request");
    let Ok(text) = client.request_text(request).await else {
        return BTreeMap::new();
    };
    let mut writes = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let verb = label("verb");
        if !matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY") {
            continue;
        }
        let mut resource = label("resource");
        let subresource = label("subresource");
        if !subresource.is_empty() {
            resource = format!("{resource}/{subresource}");
        }
        *writes.entry((verb, resource)).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    writes
}

/// Prints the writes served between two [`api_writes`] readings.
fn print_writes(before: &BTreeMap<(String, String), f64>, after: &BTreeMap<(String, String), f64>) {
    let mut lines = Vec::new();
    let mut total = 0.0;
    for (key, value) in after {
        let served = value - before.get(key).copied().unwrap_or(0.0);
        if served >= 1.0 {
            total += served;
            lines.push(format!("{} {} {served:.0}", key.0, key.1));
        }
    }
    if lines.is_empty() {
        println!("  (the API server's request counts could not be read)");
    } else {
        println!(
            "  (API server writes meanwhile: {total:.0}: {})",
            lines.join(", ")
        );
    }
}
