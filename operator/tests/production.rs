//! The operator as platform teams run it: two replicas behind a Lease, Prometheus metrics and
//! health endpoints, finished RecordingJobs cleaned up after their TTL, and a retry that starts
//! from a fresh progress. Same world as `e2e.rs`: the test kit's control plane (Kubernetes 1.20),
//! its pod runner, a real S3-compatible server, and the operator as real processes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Operator, World, eventually, recording, spec};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use mixdown_crds::Phase;
use mixdown_testkit::gate::Gate;
use mixdown_testkit::stack::FAST_LEASE;

const LONG: Duration = Duration::from_secs(180);
/// The Lease settings of the replicas in these tests (`FAST_LEASE`).
const LEASE_DURATION: Duration = Duration::from_secs(4);
const RENEW_INTERVAL: Duration = Duration::from_secs(1);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);

/// The flags of one replica in a failover test: its identity and the short Lease.
fn replica(identity: &str) -> Vec<&str> {
    let mut flags = vec!["--lease-identity", identity];
    flags.extend_from_slice(FAST_LEASE);
    flags
}

/// Runs until killed.
const SLEEPING: (&str, &str) = ("sleeping-worker:test", "exec sleep 600");
/// Reports a storage outage and exits 1, like the worker on a transient failure.
const FAILING: (&str, &str) = (
    "failing-worker:test",
    r#"echo '{"result":"failed","reason":"StorageError","message":"simulated storage outage"}' > "$MIXDOWN_TERMINATION_MESSAGE_PATH"
exit 1"#,
);

fn one_track(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let prefix = format!("riverside/chunks/room1/{name}/alice/");
    spec("room1", name, &[("alice", &prefix, 3)], extra)
}

/// The holder of the operator's Lease in the test namespace, if any.
async fn lease_holder(world: &World) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(world.client.clone(), world.namespace());
    leases
        .get_opt("mixdown-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// Waits until `identity` holds the Lease and returns how long that took.
async fn wait_for_holder(world: &World, identity: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    eventually(timeout, &format!("{identity} holds the Lease"), || async {
        (lease_holder(world).await.as_deref() == Some(identity)).then_some(())
    })
    .await;
    start.elapsed()
}

async fn reconciles(operator: &Operator) -> f64 {
    operator
        .metric("mixdown_operator_reconciles_total")
        .await
        .expect("the reconcile counter")
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_replicas_one_reconciles_and_the_other_takes_over_when_it_dies() {
    let world = World::new(&[SLEEPING]).await;
    let mut leader = world.operator(SLEEPING.0, &replica("replica-a"));
    leader.wait_up().await;
    wait_for_holder(&world, "replica-a", LONG).await;
    let standby = world.operator(SLEEPING.0, &replica("replica-b"));
    standby.wait_up().await;

    let jobs = world.record_jobs();
    world
        .create_rj("relay", one_track("relay", serde_json::json!({})))
        .await;
    world
        .wait_rj("relay", LONG, "Running", |s| {
            s.phase == Some(Phase::Running)
        })
        .await;
    assert!(reconciles(&leader).await > 0.0, "the leader reconciles");
    assert_eq!(
        reconciles(&standby).await,
        0.0,
        "the standby must not reconcile while the leader holds the Lease"
    );
    assert_eq!(lease_holder(&world).await.as_deref(), Some("replica-a"));
    // The leader gauge says which replica leads.
    assert_eq!(leader.metric("mixdown_operator_leader").await, Some(1.0));
    assert_eq!(standby.metric("mixdown_operator_leader").await, Some(0.0));

    // SIGKILL: no release, the standby must wait for the Lease to expire.
    leader.kill();
    let took = wait_for_holder(&world, "replica-b", LONG).await;
    println!("the standby took the Lease {took:.1?} after the leader was killed");
    assert!(
        took <= LEASE_DURATION + RENEW_INTERVAL + Duration::from_secs(2),
        "takeover took {took:?}; lease duration {LEASE_DURATION:?}, renewed every {RENEW_INTERVAL:?}"
    );

    // The new leader carries on with the same Job: deleting the RecordingJob now is handled by
    // it (the status says Running, attempt 1), and no second Job was ever created.
    world
        .eventually(LONG, "the new leader reconciles", || async {
            (reconciles(&standby).await > 0.0).then_some(())
        })
        .await;
    let rj = world.rjs().get("relay").await.expect("the RecordingJob");
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Running), "{status:#?}");
    assert_eq!(status.attempts, Some(1));
    assert_eq!(
        standby.metric("mixdown_operator_jobs_created_total").await,
        Some(0.0),
        "the new leader created no Job"
    );
    let uids: BTreeSet<String> = jobs
        .values()
        .iter()
        .filter_map(|j| j.metadata.uid.clone())
        .collect();
    assert_eq!(uids.len(), 1, "exactly one Job was ever created");

    // And it acts: a new RecordingJob gets its Job from the new leader.
    world
        .create_rj("after", one_track("after", serde_json::json!({})))
        .await;
    world
        .wait_rj("after", LONG, "Running", |s| {
            s.phase == Some(Phase::Running)
        })
        .await;
    assert_eq!(
        standby.metric("mixdown_operator_jobs_created_total").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_cut_off_from_the_api_server_stops_before_a_standby_takes_over() {
    let world = World::new(&[SLEEPING]).await;
    // Replica A reaches the API server through a gate the test can freeze: its requests then
    // hang, neither failing nor succeeding, as on a node whose network stalls.
    let gate = Gate::start(world.cp.server_url()).expect("a gate in front of the API server");
    let mut leader = world.operator_through(&gate, SLEEPING.0, &replica("replica-a"));
    leader.wait_up().await;
    wait_for_holder(&world, "replica-a", LONG).await;
    let standby = world.operator(SLEEPING.0, &replica("replica-b"));
    standby.wait_up().await;
    let jobs = world.record_jobs();
    world
        .create_rj("before", one_track("before", serde_json::json!({})))
        .await;
    world
        .wait_rj("before", LONG, "Running", |s| {
            s.phase == Some(Phase::Running)
        })
        .await;

    gate.freeze();
    let frozen = Instant::now();
    let mut exited = None;
    let mut took_over = None;
    while took_over.is_none() {
        assert!(frozen.elapsed() < LONG, "nobody took the Lease over");
        if exited.is_none()
            && let Some(status) = leader.exit_status()
        {
            exited = Some((frozen.elapsed(), status));
        }
        if lease_holder(&world).await.as_deref() == Some("replica-b") {
            took_over = Some(frozen.elapsed());
        } else if exited.is_none() {
            assert_eq!(
                reconciles(&standby).await,
                0.0,
                "the standby reconciled while the cut-off leader was still running"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took_over = took_over.expect("the standby took over");
    let Some((exited, status)) = exited else {
        panic!(
            "the standby took the Lease {took_over:?} after the freeze while the cut-off leader \
             still ran: two leaders\n{}",
            leader.log_text()
        );
    };
    println!(
        "the frozen leader exited {exited:.1?} after the freeze (renew deadline {RENEW_DEADLINE:?}), \
         the standby took the Lease {took_over:.1?} after the freeze (lease duration {LEASE_DURATION:?})"
    );
    assert!(
        !status.success(),
        "losing the Lease is a failure exit: {status:?}"
    );
    assert!(
        exited <= RENEW_DEADLINE + Duration::from_millis(500),
        "the leader stops within its renew deadline of the last renewal: {exited:?}"
    );
    assert!(exited < took_over);
    assert!(
        leader.log_text().contains("within the renew deadline"),
        "the leader says why it stopped:\n{}",
        leader.log_text()
    );

    // Whatever the frozen connection held goes on now; the new leader alone acts.
    gate.open();
    world
        .create_rj("after", one_track("after", serde_json::json!({})))
        .await;
    world
        .wait_rj("after", LONG, "Running", |s| {
            s.phase == Some(Phase::Running)
        })
        .await;
    let rj = world
        .rjs()
        .get("before")
        .await
        .expect("the first RecordingJob");
    let status = rj.status.expect("status");
    assert_eq!(status.attempts, Some(1), "{status:#?}");
    let uids: BTreeSet<String> = jobs
        .values()
        .iter()
        .filter_map(|j| j.metadata.uid.clone())
        .collect();
    assert_eq!(uids.len(), 2, "one Job per RecordingJob, ever: {uids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_stopped_with_sigterm_hands_the_lease_over_at_once() {
    let world = World::new(&[SLEEPING]).await;
    let mut leader = world.operator(SLEEPING.0, &replica("replica-a"));
    wait_for_holder(&world, "replica-a", LONG).await;
    let standby = world.operator(SLEEPING.0, &replica("replica-b"));
    standby.wait_up().await;

    let stopped = Instant::now();
    let status = leader
        .terminate(Duration::from_secs(30))
        .expect("the leader exits after SIGTERM");
    assert!(
        status.success(),
        "a clean shutdown exits 0: {status:?}\n{}",
        leader.log_text()
    );
    wait_for_holder(&world, "replica-b", LONG).await;
    let took = stopped.elapsed();
    println!("the standby took the released Lease {took:.1?} after SIGTERM");
    assert!(
        took < LEASE_DURATION,
        "a released Lease is taken before it would have expired: {took:?}"
    );
    assert!(
        leader.log_text().contains("released the leader lease"),
        "{}",
        leader.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_health_endpoints_tell_what_the_operator_did() {
    let world = World::new(&[FAILING]).await;
    let operator = world.operator(FAILING.0, &[]);
    operator.wait_up().await;
    // Ready once it leads and its caches are filled; healthy all along.
    for path in ["/healthz", "/readyz"] {
        let url = operator.metrics_url.replace("/metrics", path);
        world
            .eventually(
                Duration::from_secs(30),
                &format!("{path} answering 200"),
                || async {
                    let response = reqwest::get(&url).await.ok()?;
                    response.status().is_success().then_some(())
                },
            )
            .await;
    }
    assert_eq!(
        operator.metric("mixdown_operator_leader").await,
        Some(1.0),
        "the only replica leads"
    );

    // One RecordingJob fails for good; another finds a Job of its name that it does not own,
    // which the operator cannot resolve by itself: it fails with JobConflict, counted once.
    world
        .create_rj(
            "broken",
            one_track("broken", serde_json::json!({"backoffLimit": 0})),
        )
        .await;
    let squatter = Job {
        metadata: ObjectMeta {
            name: Some("squatter".into()),
            ..ObjectMeta::default()
        },
        spec: Some(serde_json::from_value(serde_json::json!({
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": SLEEPING.0}]}}
        })).expect("a Job spec")),
        ..Job::default()
    };
    Api::<Job>::namespaced(world.client.clone(), world.namespace())
        .create(&PostParams::default(), &squatter)
        .await
        .expect("creating a Job that no RecordingJob owns");
    world
        .create_rj("squatter", one_track("squatter", serde_json::json!({})))
        .await;
    world
        .wait_rj("broken", LONG, "Failed", |s| s.phase == Some(Phase::Failed))
        .await;
    let squatted = world
        .wait_rj("squatter", LONG, "Failed", |s| {
            s.phase == Some(Phase::Failed)
        })
        .await
        .status
        .expect("status");
    assert_eq!(
        squatted.reason.as_deref(),
        Some("JobConflict"),
        "{squatted:#?}"
    );
    assert_eq!(
        squatted.message.as_deref(),
        Some(
            "Job squatter exists and is not controlled by this RecordingJob (it has no \
             controller); delete that Job or give the RecordingJob another name"
        )
    );
    assert_eq!(squatted.job_name, None);

    let expect = [
        ("mixdown_operator_recording_jobs{phase=\"Failed\"}", 2.0),
        ("mixdown_operator_jobs_created_total", 1.0),
        (
            "mixdown_operator_processing_seconds_count{result=\"failed\"}",
            1.0,
        ),
    ];
    for (series, value) in expect {
        world
            .eventually(LONG, &format!("{series} = {value}"), || async {
                (operator.metric(series).await == Some(value)).then_some(())
            })
            .await;
    }
    let foreign = "mixdown_operator_reconcile_errors_total{error=\"foreign_job\"}";
    world
        .eventually(LONG, "the foreign Job counted as an error", || async {
            (operator.metric(foreign).await? == 1.0).then_some(())
        })
        .await;
    assert!(reconciles(&operator).await >= 2.0);
    let durations = operator
        .metric("mixdown_operator_reconcile_duration_seconds_count")
        .await
        .expect("the reconcile duration histogram");
    assert!(durations >= 2.0, "{durations}");
    // The squatter's own Job was left alone.
    let job = Api::<Job>::namespaced(world.client.clone(), world.namespace())
        .get("squatter")
        .await
        .expect("the foreign Job is still there");
    assert!(job.owner_references().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_recording_job_is_deleted_after_its_ttl_and_not_before() {
    const TTL: u64 = 3;
    let world = World::new(&[FAILING]).await;
    let _operator = world.operator(FAILING.0, &[]);
    world
        .create_rj(
            "ephemeral",
            one_track(
                "ephemeral",
                serde_json::json!({"backoffLimit": 0, "ttlSecondsAfterFinished": TTL}),
            ),
        )
        .await;
    world
        .create_rj(
            "kept",
            one_track("kept", serde_json::json!({"backoffLimit": 0})),
        )
        .await;
    let rj = world
        .wait_rj("ephemeral", LONG, "Failed", |s| {
            s.phase == Some(Phase::Failed)
        })
        .await;
    let finished = rj
        .status
        .and_then(|s| s.completion_time)
        .expect("a completion time");
    world
        .eventually(LONG, "the expired RecordingJob deleted", || async {
            world
                .rjs()
                .get_opt("ephemeral")
                .await
                .ok()
                .filter(Option::is_none)
                .map(|_| ())
        })
        .await;
    let after = jiff::Timestamp::now().duration_since(finished.0);
    println!("deleted {after:?} after it finished (TTL {TTL} s)");
    // completionTime has whole seconds: allow one second of rounding.
    assert!(
        after >= jiff::SignedDuration::from_secs(TTL as i64 - 1),
        "deleted too early: {after:?} after finishing"
    );
    assert!(
        after <= jiff::SignedDuration::from_secs(TTL as i64 + 10),
        "deleted too late: {after:?} after finishing"
    );
    // Its Job goes with it; the RecordingJob without a TTL stays, Job and all.
    let jobs: Api<Job> = Api::namespaced(world.client.clone(), world.namespace());
    world
        .eventually(LONG, "the expired RecordingJob's Job collected", || async {
            jobs.get_opt("ephemeral")
                .await
                .ok()
                .filter(Option::is_none)
                .map(|_| ())
        })
        .await;
    world
        .wait_rj("kept", LONG, "Failed", |s| s.phase == Some(Phase::Failed))
        .await;
    tokio::time::sleep(Duration::from_secs(TTL + 2)).await;
    assert!(world.rjs().get_opt("kept").await.unwrap().is_some());
    assert!(jobs.get_opt("kept").await.unwrap().is_some());
}

/// The real worker, made to fail after a complete first run (it exits 1 once the outputs are
/// written, as a worker killed at the very end would): the retry must not show the first
/// attempt's progress as its own.
const FAILS_ONCE: (&str, &str) = (
    "fails-once:test",
    r#"marker="$(dirname "$0")/first-attempt-$MIXDOWN_RECORDING_JOB"
if [ ! -e "$marker" ]; then
  touch "$marker"
  "$WORKER"
  exit 1
fi
exec "$WORKER""#,
);

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_starts_from_a_fresh_progress() {
    let world = World::new(&[FAILS_ONCE]).await;
    let _operator = world.operator(FAILS_ONCE.0, &[]);
    let chunks = recording(12, "320x240").await;
    let prefix = world
        .upload_track("room1", "again", "alice", &chunks, &[])
        .await;
    let statuses = world.record_statuses("again");
    world
        .create_rj(
            "again",
            spec(
                "room1",
                "again",
                &[("alice", &prefix, chunks.len())],
                serde_json::json!({"backoffLimit": 2, "cleanup": {"deleteChunks": false}}),
            ),
        )
        .await;
    let rj = world
        .wait_rj("again", LONG, "a final phase", |s| {
            s.phase.is_some_and(Phase::is_finished)
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.attempts, Some(2), "{status:#?}");

    let seen = statuses.values();
    let progress_of = |attempt: i32| -> Vec<Option<i32>> {
        seen.iter()
            .filter(|s| s.attempts == Some(attempt) && s.phase == Some(Phase::Running))
            .map(|s| s.progress)
            .collect()
    };
    let first = progress_of(1);
    let last_of_first = first
        .iter()
        .rev()
        .find_map(|p| *p)
        .expect("the first attempt reported progress");
    assert!(last_of_first >= 90, "the first attempt got far: {first:?}");
    let second = progress_of(2);
    assert!(!second.is_empty(), "the second attempt was seen running");
    assert!(
        second[0].is_none_or(|p| p < last_of_first),
        "the retry showed the first attempt's progress ({last_of_first}) as its own: {second:?}"
    );
    assert!(
        second.iter().any(|p| p.is_some_and(|p| p > 0)),
        "the retry reported its own progress: {second:?}"
    );
    // The operator never took `progress` over from the worker.
    let rj = world.rjs().get("again").await.expect("the RecordingJob");
    for entry in rj.managed_fields() {
        let fields = serde_json::to_string(&entry.fields_v1).unwrap_or_default();
        if entry.manager.as_deref() == Some("mixdown-operator") {
            assert!(!fields.contains("f:progress"), "{fields}");
        }
    }
    let jobs: Api<Job> = Api::namespaced(world.client.clone(), world.namespace());
    assert_eq!(
        jobs.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

/// A burst: 100 RecordingJobs at once. Their Jobs come first (status writes wait while Jobs are
/// being created), and then every RecordingJob's status names its Job all the same: nothing is
/// held back for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_gets_its_jobs_first_and_every_status_after() {
    const BURST: usize = 100;
    let world = World::new(&[SLEEPING]).await;
    let operator = world.operator(SLEEPING.0, &["--max-running-jobs", "0"]);
    operator.wait_up().await;
    futures::stream::iter((0..BURST).map(|i| {
        let world = &world;
        async move {
            let name = format!("burst-{i:03}");
            world
                .create_rj(&name, one_track(&name, serde_json::json!({})))
                .await;
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<()>>()
    .await;

    let jobs: Api<Job> = Api::namespaced(world.client.clone(), world.namespace());
    world
        .eventually(LONG, &format!("{BURST} Jobs"), || async {
            (jobs.list(&ListParams::default()).await.ok()?.items.len() == BURST).then_some(())
        })
        .await;
    world
        .eventually(LONG, "every status names its Job", || async {
            let rjs = world.rjs().list(&ListParams::default()).await.ok()?.items;
            let named = rjs
                .iter()
                .filter(|rj| {
                    rj.status.as_ref().is_some_and(|s| {
                        s.job_name.as_deref() == Some(rj.name_any().as_str())
                            && matches!(s.phase, Some(Phase::Pending | Phase::Running))
                    })
                })
                .count();
            (named == BURST).then_some(())
        })
        .await;
    let held_back = operator
        .metric("mixdown_operator_status_writes_held_back_total")
        .await
        .expect("the held-back counter");
    let written = operator
        .metric("mixdown_operator_status_writes_total")
        .await
        .expect("the status write counter");
    eprintln!("{BURST} RecordingJobs: {written} statuses written, {held_back} writes held back");
    assert!(
        held_back >= 1.0,
        "{BURST} RecordingJobs created 32 at a time, and no status write waited for a Job create"
    );
    assert!(written >= BURST as f64, "{written} status writes");
}

/// An operator that starts (or takes over) with many RecordingJobs waits for its caches instead
/// of failing reconciles: 200 RecordingJobs at its start give no warning in its log and not one
/// reconcile error, and every one of them gets its status.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_with_200_recording_jobs_logs_no_warning_and_counts_no_error() {
    let world = World::new(&[SLEEPING]).await;
    for i in 0..200 {
        let name = format!("many-{i}");
        let unsealed = serde_json::json!({
            "tracks": [{"participantId": "alice", "source": {"prefix": format!("riverside/chunks/room1/{name}/alice/")}}],
            "uploadTimeoutSeconds": 3600,
        });
        world
            .create_rj(&name, spec("room1", &name, &[], unsealed))
            .await;
    }
    let operator = world.operator(SLEEPING.0, &[]);
    operator.wait_up().await;
    eventually(LONG, "200 RecordingJobs Uploading", || async {
        let list = world.rjs().list(&ListParams::default()).await.ok()?;
        let uploading = list
            .items
            .iter()
            .filter(|rj| rj.status.as_ref().and_then(|s| s.phase) == Some(Phase::Uploading))
            .count();
        (uploading == 200).then_some(())
    })
    .await;
    let log = operator.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
    let errors = operator.metrics_text().await;
    let counted: Vec<&str> = errors
        .lines()
        .filter(|l| l.starts_with("mixdown_operator_reconcile_errors_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(counted.is_empty(), "{counted:#?}");
    assert!(
        errors.contains("mixdown_operator_reconcile_errors_total{error=\"kube_api\"} 0"),
        "every error series exists at zero:\n{errors}"
    );
}
