//! The operator end to end: the test kit's control plane (real Job controller and garbage
//! collector, Kubernetes 1.20), its pod runner running the real worker with ffmpeg, a real
//! S3-compatible server, and the operator as a real process.

mod common;

use std::time::Duration;

use common::{WORKER_IMAGE, World, recording, spec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use mixdown_crds::Phase;
use mixdown_crds::names::reasons;

const LONG: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread")]
async fn a_two_track_recording_is_processed_and_its_story_told() {
    let world = World::new(&[]).await;
    let operator = world.operator(WORKER_IMAGE, &[]);
    let chunks = recording(20, "640x360").await;
    let alice = world
        .upload_track("room1", "rec1", "alice", &chunks, &[])
        .await;
    let bob = world
        .upload_track("room1", "rec1", "bob", &chunks, &[])
        .await;
    let n = chunks.len();

    let statuses = world.record_statuses("rec-1");
    world
        .create_rj(
            "rec-1",
            spec(
                "room1",
                "rec1",
                &[("alice", &alice, n), ("bob", &bob, n)],
                serde_json::json!({"output": {"prefix": "riverside/processed/room1/rec1/", "profile": "mp4"}}),
            ),
        )
        .await;

    let rj = world
        .wait_rj("rec-1", LONG, "Succeeded", |s| {
            s.phase.is_some_and(Phase::is_finished)
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.attempts, Some(1));
    assert_eq!(status.job_name.as_deref(), Some("rec-1"));
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    // Two tracks: the mixdown of both (the operator's default), first, then each file.
    assert_eq!(status.outputs.len(), 3, "{status:#?}");
    let mixdown = &status.outputs[0];
    assert!(mixdown.is_mixdown(), "{status:#?}");
    assert_eq!(mixdown.key, "riverside/processed/room1/rec1/mixdown.mp4");
    assert!(mixdown.participant_id.is_empty() && mixdown.size_bytes > 0);
    assert!(
        (mixdown.duration_seconds - 20.0).abs() < 1.0,
        "mixdown duration {}",
        mixdown.duration_seconds
    );
    for (output, participant) in status.outputs[1..].iter().zip(["alice", "bob"]) {
        assert_eq!(output.participant_id, participant);
        assert_eq!(
            output.key,
            format!("riverside/processed/room1/rec1/{participant}.mp4")
        );
        assert!(output.size_bytes > 0);
        assert!(
            (output.duration_seconds - 20.0).abs() < 1.0,
            "duration {}",
            output.duration_seconds
        );
    }
    let conditions: Vec<(&str, &str)> = status
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str()))
        .collect();
    assert!(conditions.contains(&("Complete", "True")), "{conditions:?}");
    assert!(
        conditions.contains(&("MixdownReady", "True")),
        "{conditions:?}"
    );

    // The story as a watcher saw it.
    let seen = statuses.values();
    let phases: Vec<Phase> = seen
        .iter()
        .filter_map(|s| s.phase)
        .fold(Vec::new(), |mut v, p| {
            if v.last() != Some(&p) {
                v.push(p);
            }
            v
        });
    assert_eq!(
        phases,
        [Phase::Pending, Phase::Running, Phase::Succeeded],
        "{seen:#?}"
    );
    // The participants' files were listed, ready, while the mixdown was being made, and the
    // condition said so.
    let mixing = seen
        .iter()
        .find(|s| s.phase == Some(Phase::Running) && s.ready_outputs.len() == 2)
        .unwrap_or_else(|| panic!("readyOutputs never listed both files: {seen:#?}"));
    assert!(
        mixing
            .conditions
            .iter()
            .any(|c| c.type_ == "MixdownReady" && c.status == "False" && c.reason == "Mixing")
            || seen.iter().any(|s| s
                .conditions
                .iter()
                .any(|c| c.type_ == "MixdownReady" && c.reason == "Mixing")),
        "{seen:#?}"
    );
    let progress: Vec<i32> = seen.iter().filter_map(|s| s.progress).collect();
    assert!(
        progress.iter().any(|p| (1..=99).contains(p)),
        "no progress between 1 and 99 seen: {progress:?}"
    );

    // Chunks are gone; the outputs are there, with the worker's manifest of what it made.
    assert!(world.keys("riverside/chunks/room1/rec1/").await.is_empty());
    let mut processed = world.keys("riverside/processed/room1/rec1/").await;
    processed.sort();
    let mut expected: Vec<String> = status.outputs.iter().map(|o| o.key.clone()).collect();
    expected.push("riverside/processed/room1/rec1/manifest.json".into());
    expected.sort();
    assert_eq!(processed, expected);

    // Events: created, started, succeeded.
    let events: Api<Event> = Api::namespaced(world.client.clone(), world.namespace());
    let reasons = world
        .eventually(Duration::from_secs(30), "Events for rec-1", || {
            let events = events.clone();
            async move {
                let list = events.list(&ListParams::default()).await.ok()?;
                let reasons: Vec<String> = list
                    .items
                    .iter()
                    .filter(|e| {
                        e.regarding.as_ref().is_some_and(|r| {
                            r.kind.as_deref() == Some("RecordingJob")
                                && r.name.as_deref() == Some("rec-1")
                        })
                    })
                    .filter_map(|e| e.reason.clone())
                    .collect();
                ["JobCreated", "Started", "Succeeded"]
                    .iter()
                    .all(|r| reasons.iter().any(|x| x == r))
                    .then_some(reasons)
            }
        })
        .await;
    assert_eq!(reasons.len(), 3, "each Event once: {reasons:?}");

    let jobs: Api<Job> = Api::namespaced(world.client.clone(), world.namespace());
    assert_eq!(
        jobs.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), world.namespace());
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    drop(operator);
}

/// Reports a storage outage and exits 1, like the worker on a transient failure.
const FAILING: (&str, &str) = (
    "failing-worker:test",
    r#"echo '{"result":"failed","reason":"StorageError","message":"simulated storage outage"}' > "$MIXDOWN_TERMINATION_MESSAGE_PATH"
echo "simulated storage outage" >&2
exit 1"#,
);
/// Runs until killed.
const SLEEPING: (&str, &str) = ("sleeping-worker:test", "exec sleep 600");

fn one_track(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let prefix = format!("riverside/chunks/room1/{name}/alice/");
    spec("room1", name, &[("alice", &prefix, 3)], extra)
}

/// Merge-patches RecordingJob `name` as `kubectl patch --type merge` does; `what` says why, for
/// a failure.
async fn merge_patch(
    world: &World,
    name: &str,
    patch: serde_json::Value,
    what: &str,
) -> mixdown_crds::RecordingJob {
    world
        .rjs()
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap_or_else(|e| panic!("{what} ({name}): {e}"))
}

async fn job_names(world: &World) -> Vec<String> {
    let jobs: Api<Job> = Api::namespaced(world.client.clone(), world.namespace());
    jobs.list(&ListParams::default())
        .await
        .expect("listing Jobs")
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect()
}

async fn pod_count(world: &World) -> usize {
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), world.namespace());
    pods.list(&ListParams::default())
        .await
        .expect("listing Pods")
        .items
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_failure_is_retried_until_the_backoff_limit() {
    let world = World::new(&[FAILING]).await;
    let _operator = world.operator(FAILING.0, &[]);
    world
        .create_rj(
            "flaky",
            one_track("flaky", serde_json::json!({"backoffLimit": 1})),
        )
        .await;
    let rj = world
        .wait_rj("flaky", LONG, "a final phase", |s| {
            s.phase.is_some_and(Phase::is_finished)
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
    assert_eq!(
        status.attempts,
        Some(2),
        "backoffLimit + 1 attempts: {status:#?}"
    );
    assert_eq!(
        status.reason.as_deref(),
        Some(reasons::BACKOFF_LIMIT_EXCEEDED)
    );
    let message = status.message.unwrap_or_default();
    assert!(message.contains("simulated storage outage"), "{message}");
    assert_eq!(pod_count(&world).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_fails_the_recording_job() {
    let world = World::new(&[SLEEPING]).await;
    let _operator = world.operator(SLEEPING.0, &[]);
    world
        .create_rj(
            "slow",
            one_track("slow", serde_json::json!({"activeDeadlineSeconds": 3})),
        )
        .await;
    let rj = world
        .wait_rj("slow", LONG, "a final phase", |s| {
            s.phase.is_some_and(Phase::is_finished)
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
    assert_eq!(
        status.reason.as_deref(),
        Some(reasons::DEADLINE_EXCEEDED),
        "{status:#?}"
    );
    // The Job controller deletes the running Pod, and the pod runner kills its process.
    world
        .eventually(LONG, "the Pod deleted after the deadline", || async {
            (pod_count(&world).await == 0).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_recording_job_deletes_its_job_and_pods() {
    let world = World::new(&[SLEEPING]).await;
    let _operator = world.operator(SLEEPING.0, &[]);
    world
        .create_rj("doomed", one_track("doomed", serde_json::json!({})))
        .await;
    world
        .wait_rj("doomed", LONG, "Running", |s| {
            s.phase == Some(Phase::Running)
        })
        .await;
    assert_eq!(job_names(&world).await, ["doomed"]);
    assert_eq!(pod_count(&world).await, 1);

    world
        .rjs()
        .delete("doomed", &kube::api::DeleteParams::default())
        .await
        .expect("deleting the RecordingJob");
    world
        .eventually(LONG, "the Job and its Pod garbage-collected", || async {
            (job_names(&world).await.is_empty() && pod_count(&world).await == 0).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_is_not_rewritten_when_nothing_changed() {
    let world = World::new(&[SLEEPING]).await;
    let operator = world.operator(SLEEPING.0, &[]);
    world
        .create_rj("steady", one_track("steady", serde_json::json!({})))
        .await;
    world
        .wait_rj("steady", LONG, "Running", |s| {
            s.phase == Some(Phase::Running) && s.attempts == Some(1)
        })
        .await;
    operator.wait_up().await;

    // Each round: touch the RecordingJob (which wakes the operator), wait until the operator has
    // finished reconciling after it, and check that the object was not written since the touch.
    let done = "mixdown_operator_reconcile_duration_seconds_count";
    for round in 0..3 {
        let before = operator.metric(done).await.expect("the reconcile metric");
        let patch =
            serde_json::json!({"metadata": {"annotations": {"test/round": round.to_string()}}});
        let touched = merge_patch(&world, "steady", patch, "touching the RecordingJob").await;
        let touched_version = touched.metadata.resource_version.clone();
        world
            .eventually(LONG, "a reconcile after the touch", || async {
                let now = operator.metric(done).await?;
                (now > before).then_some(())
            })
            .await;
        let current = world
            .rjs()
            .get("steady")
            .await
            .expect("reading the RecordingJob");
        assert_eq!(
            current.metadata.resource_version, touched_version,
            "round {round}: the operator wrote an unchanged status: {:#?}",
            current.status
        );
    }
}

/// The real worker, a little slower to start, so that runs overlap and can be interrupted.
const SLOW_WORKER: (&str, &str) = ("slow-worker:test", "sleep 2\nexec \"$WORKER\"");

fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_chunk_fails_after_one_attempt_and_keeps_the_chunks() {
    let world = World::new(&[]).await;
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let chunks = recording(4, "320x240").await;
    let prefix = world
        .upload_track("room1", "gappy", "alice", &chunks, &[2])
        .await;
    world
        .create_rj(
            "gappy",
            spec(
                "room1",
                "gappy",
                &[("alice", &prefix, chunks.len())],
                serde_json::json!({}),
            ),
        )
        .await;
    let rj = world
        .wait_rj("gappy", LONG, "a final phase", |s| {
            s.phase.is_some_and(Phase::is_finished)
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Failed), "{status:#?}");
    assert_eq!(status.attempts, Some(1), "{status:#?}");
    assert_eq!(
        status.reason.as_deref(),
        Some("MissingChunk"),
        "{status:#?}"
    );
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("00000002"),
        "the message names the chunk: {message}"
    );
    assert_eq!(
        world.keys(&prefix).await.len(),
        chunks.len() - 1,
        "no chunk deleted"
    );

    // The Job stops for good: Kubernetes 1.20 ignores podFailurePolicy, so the operator stopped
    // it. (That Job controller replaces a first failed Pod at once, before anyone can stop it;
    // such a replacement is deleted or, if it already ran, is not counted as an attempt.)
    let jobs: Api<Job> = Api::namespaced(world.client.clone(), world.namespace());
    world
        .eventually(LONG, "the Job finished", || async {
            jobs.get("gappy").await.ok().filter(finished).map(|_| ())
        })
        .await;
    assert!(pod_count(&world).await <= 2);
    let again = world.rjs().get("gappy").await.expect("the RecordingJob");
    assert_eq!(again.status.and_then(|s| s.attempts), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn at_most_max_running_jobs_run_and_the_queue_keeps_creation_order() {
    let world = World::new(&[SLOW_WORKER]).await;
    let _operator = world.operator(SLOW_WORKER.0, &["--max-running-jobs", "2"]);
    let chunks = recording(3, "320x240").await;
    let jobs = world.record_jobs();
    let names: Vec<String> = (1..=5).map(|i| format!("cap-{i}")).collect();
    let last_statuses = world.record_statuses("cap-5");
    for name in &names {
        let prefix = world
            .upload_track("room1", name, "alice", &chunks, &[])
            .await;
        world
            .create_rj(
                name,
                spec(
                    "room1",
                    name,
                    &[("alice", &prefix, chunks.len())],
                    serde_json::json!({}),
                ),
            )
            .await;
    }
    for name in &names {
        let rj = world
            .wait_rj(name, LONG, "Succeeded", |s| {
                s.phase.is_some_and(Phase::is_finished)
            })
            .await;
        let status = rj.status.expect("status");
        assert_eq!(status.phase, Some(Phase::Succeeded), "{name}: {status:#?}");
        assert_eq!(status.outputs.len(), 1, "{name}");
    }

    // Replay the Jobs as the watch saw them: never more than 2 unfinished at once, created in
    // the RecordingJobs' order.
    let mut running = std::collections::BTreeSet::new();
    let mut most = 0;
    let mut created = std::collections::BTreeMap::new();
    for job in jobs.values() {
        let name = job.metadata.name.clone().unwrap_or_default();
        created
            .entry(name.clone())
            .or_insert(job.metadata.creation_timestamp.clone());
        if finished(&job) {
            running.remove(&name);
        } else {
            running.insert(name);
        }
        most = most.max(running.len());
    }
    assert!(most <= 2, "{most} Jobs ran at once");
    assert_eq!(most, 2, "the cap was used");
    // Two slots freeing together admit two RecordingJobs at once, whose creates may land in
    // either order within the same moment; across moments the order is the queue's.
    let times: Vec<_> = names
        .iter()
        .map(|n| created.get(n).cloned().flatten())
        .collect();
    assert!(
        times.iter().all(Option::is_some),
        "every RecordingJob got a Job: {created:?}"
    );
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "Jobs created in the RecordingJobs' order: {created:?}"
    );
    let phases: Vec<Phase> = last_statuses
        .values()
        .iter()
        .filter_map(|s| s.phase)
        .collect();
    assert!(
        phases.contains(&Phase::Queued),
        "cap-5 waited as Queued: {phases:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_operator_creates_no_second_job_and_the_status_converges() {
    let world = World::new(&[SLOW_WORKER]).await;
    let mut first = world.operator(SLOW_WORKER.0, &[]);
    let chunks = recording(4, "320x240").await;
    let prefix = world
        .upload_track("room1", "phoenix", "alice", &chunks, &[])
        .await;
    let jobs = world.record_jobs();
    world
        .create_rj(
            "phoenix",
            spec(
                "room1",
                "phoenix",
                &[("alice", &prefix, chunks.len())],
                serde_json::json!({}),
            ),
        )
        .await;
    world
        .wait_rj("phoenix", LONG, "Running", |s| {
            s.phase == Some(Phase::Running)
        })
        .await;
    first.kill();

    // The worker finishes while no operator runs; a new one (after the dead one's Lease
    // expires) finds the Job and reports the result.
    let second = world.operator(SLOW_WORKER.0, &[]);
    let rj = world
        .wait_rj("phoenix", LONG, "a final phase", |s| {
            s.phase.is_some_and(Phase::is_finished)
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    assert_eq!(status.outputs.len(), 1);
    assert_eq!(status.attempts, Some(1));

    let uids: std::collections::BTreeSet<String> = jobs
        .values()
        .iter()
        .filter_map(|j| j.metadata.uid.clone())
        .collect();
    assert_eq!(uids.len(), 1, "exactly one Job was ever created");
    assert_eq!(
        second.metric("mixdown_operator_jobs_created_total").await,
        Some(0.0),
        "the restarted operator created no Job"
    );
}

/// The notes of the Warning Events with `reason` about RecordingJob `name`, once there are at
/// least `count` of them.
async fn warnings(world: &World, name: &str, reason: &str, count: usize) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(world.client.clone(), world.namespace());
    world
        .eventually(
            Duration::from_secs(30),
            &format!("{count} {reason} Warning Event(s) for {name}"),
            || {
                let events = events.clone();
                async move {
                    let list = events.list(&ListParams::default()).await.ok()?;
                    let notes: Vec<String> = list
                        .items
                        .into_iter()
                        .filter(|e| {
                            e.regarding.as_ref().is_some_and(|r| {
                                r.kind.as_deref() == Some("RecordingJob")
                                    && r.name.as_deref() == Some(name)
                            }) && e.type_.as_deref() == Some("Warning")
                                && e.reason.as_deref() == Some(reason)
                        })
                        .filter_map(|e| e.note)
                        .collect();
                    (notes.len() >= count).then_some(notes)
                }
            },
        )
        .await
}

/// A spec whose Job the API server refuses (a CPU request above its limit: 422 Invalid; then,
/// edited, a quantity that does not parse: 400 BadRequest) fails the RecordingJob within seconds
/// with the server's words, a condition and a Warning Event, creates no Job and is not retried;
/// each edit of the spec judges it again, and a valid one gets its Job.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_the_api_server_refuses_fails_the_recording_job_until_the_spec_changes() {
    let world = World::new(&[SLEEPING]).await;
    let operator = world.operator(SLEEPING.0, &[]);
    operator.wait_up().await;
    let start = std::time::Instant::now();
    world
        .create_rj(
            "greedy",
            one_track(
                "greedy",
                serde_json::json!({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}),
            ),
        )
        .await;
    let rj = world
        .wait_rj("greedy", Duration::from_secs(20), "Failed", |s| {
            s.phase == Some(Phase::Failed)
        })
        .await;
    println!("Failed {:?} after the create", start.elapsed());
    let status = rj.status.clone().expect("status");
    assert_eq!(status.reason.as_deref(), Some("InvalidSpec"), "{status:#?}");
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.starts_with("the API server refused Job greedy: ")
            && message.contains("must be less than or equal to cpu limit"),
        "{message}"
    );
    assert_eq!(status.observed_generation, rj.metadata.generation);
    assert_eq!(status.job_name, None);
    assert!(status.completion_time.is_some());
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Failed")
        .expect("a Failed condition");
    assert_eq!(
        (failed.status.as_str(), failed.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert_eq!(failed.message, message);
    let notes = warnings(&world, "greedy", "InvalidSpec", 1).await;
    assert!(notes[0].contains("cpu limit"), "{notes:?}");
    assert!(job_names(&world).await.is_empty());

    // Not retried: no second create (the refusal is counted once), no write, no second Event.
    let refusals = "mixdown_operator_reconcile_errors_total{error=\"kube_invalid\"}";
    assert_eq!(operator.metric(refusals).await, Some(1.0));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let still = world.rjs().get("greedy").await.expect("the RecordingJob");
    assert_eq!(
        still.metadata.resource_version, rj.metadata.resource_version,
        "{:#?}",
        still.status
    );
    assert_eq!(operator.metric(refusals).await, Some(1.0));
    assert!(job_names(&world).await.is_empty());
    assert_eq!(warnings(&world, "greedy", "InvalidSpec", 1).await.len(), 1);

    // An edit is judged again: a quantity that does not parse is refused too, at the new
    // generation, with an Event of its own.
    let edit = |cpu: &str| serde_json::json!({"spec": {"resources": {"requests": {"cpu": cpu}}}});
    let edited = merge_patch(&world, "greedy", edit("lots"), "editing the spec").await;
    let generation = edited.metadata.generation;
    let rj = world
        .wait_rj("greedy", Duration::from_secs(20), "Failed again", |s| {
            s.observed_generation == generation && s.phase == Some(Phase::Failed)
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("InvalidSpec"), "{status:#?}");
    let message = status.message.unwrap_or_default();
    assert!(message.contains("quantities must match"), "{message}");
    let notes = warnings(&world, "greedy", "InvalidSpec", 2).await;
    assert!(
        notes.iter().any(|n| n.contains("quantities must match")),
        "{notes:?}"
    );
    assert!(job_names(&world).await.is_empty());

    // A valid spec gets its Job.
    merge_patch(&world, "greedy", edit("500m"), "fixing the spec").await;
    let rj = world
        .wait_rj("greedy", LONG, "Running", |s| {
            s.phase == Some(Phase::Running)
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.job_name.as_deref(), Some("greedy"));
    assert_eq!(status.reason, None, "{status:#?}");
    assert_eq!(job_names(&world).await, ["greedy"]);
}

/// A worker Pod that cannot start (its credentials Secret is missing) is named in the status
/// within seconds, with a condition and a Warning Event; at `startTimeoutSeconds` the RecordingJob
/// fails with PodNotStarted and that cause, its Job and Pod are deleted, the slot it held goes to
/// the next RecordingJob, and the chunks are all still there.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_pod_that_cannot_start_says_why_and_gives_its_slot_up_at_the_start_timeout() {
    use k8s_openapi::api::core::v1::Secret;
    let world = World::new(&[SLEEPING]).await;
    let secrets: Api<Secret> = Api::namespaced(world.client.clone(), world.namespace());
    let secret = secrets
        .get(common::CREDENTIALS_SECRET)
        .await
        .expect("the credentials Secret");
    secrets
        .delete(common::CREDENTIALS_SECRET, &Default::default())
        .await
        .expect("deleting the credentials Secret");
    let operator = world.operator(SLEEPING.0, &["--max-running-jobs", "1"]);
    operator.wait_up().await;
    let chunks = world
        .upload_track("room1", "stuck", "alice", &vec![b"chunk".to_vec(); 3], &[])
        .await;

    let start = std::time::Instant::now();
    world
        .create_rj(
            "stuck",
            one_track("stuck", serde_json::json!({"startTimeoutSeconds": 12})),
        )
        .await;
    let rj = world
        .wait_rj("stuck", Duration::from_secs(20), "the cause named", |s| {
            s.reason.as_deref() == Some("CreateContainerConfigError")
        })
        .await;
    println!("cause named {:?} after the create", start.elapsed());
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Pending), "{status:#?}");
    let message = status.message.clone().unwrap_or_default();
    assert!(
        message.contains("cannot start") && message.contains(common::CREDENTIALS_SECRET),
        "{message}"
    );
    let running = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Running")
        .expect("a Running condition");
    assert_eq!(
        (running.status.as_str(), running.reason.as_str()),
        ("False", "CreateContainerConfigError")
    );
    let notes = warnings(&world, "stuck", "CreateContainerConfigError", 1).await;
    assert!(notes[0].contains(common::CREDENTIALS_SECRET), "{notes:?}");
    // The one slot is taken: the next RecordingJob waits. (It is created once the first holds
    // the slot: two created in the same second are queued by name, and "next" sorts first.)
    world
        .create_rj("next", one_track("next", serde_json::json!({})))
        .await;
    world
        .wait_rj("next", Duration::from_secs(20), "Queued", |s| {
            s.phase == Some(Phase::Queued)
        })
        .await;

    let rj = world
        .wait_rj("stuck", Duration::from_secs(40), "Failed", |s| {
            s.phase == Some(Phase::Failed)
        })
        .await;
    println!("failed {:?} after the create", start.elapsed());
    let status = rj.status.expect("status");
    assert_eq!(
        status.reason.as_deref(),
        Some("PodNotStarted"),
        "{status:#?}"
    );
    let message = status.message.unwrap_or_default();
    assert!(
        message.starts_with("no worker Pod started within 12s of Job stuck's creation (last cause: CreateContainerConfigError: "),
        "{message}"
    );
    assert_eq!(status.attempts, Some(0));
    assert!(status.completion_time.is_some());
    let notes = warnings(&world, "stuck", "PodNotStarted", 1).await;
    assert!(notes[0].contains("last cause"), "{notes:?}");
    world
        .eventually(LONG, "the stuck Job and its Pod deleted", || async {
            let jobs = job_names(&world).await;
            let pods: Api<Pod> = Api::namespaced(world.client.clone(), world.namespace());
            let stuck_pods = pods
                .list(&ListParams::default().labels("mixdown.dev/recording-job=stuck"))
                .await
                .ok()?
                .items
                .len();
            (!jobs.contains(&"stuck".to_string()) && stuck_pods == 0).then_some(())
        })
        .await;
    println!("Job and Pod gone {:?} after the create", start.elapsed());
    assert_eq!(world.keys(&chunks).await.len(), 3, "the chunks are kept");

    // The freed slot goes to the next RecordingJob, which starts once its Secret exists.
    let mut secret = secret;
    secret.metadata = kube::api::ObjectMeta {
        name: secret.metadata.name,
        ..Default::default()
    };
    secrets
        .create(&Default::default(), &secret)
        .await
        .expect("creating the Secret again");
    let rj = world
        .wait_rj("next", LONG, "Running", |s| s.phase == Some(Phase::Running))
        .await;
    println!("next Running {:?} after the create", start.elapsed());
    assert_eq!(rj.status.and_then(|s| s.job_name).as_deref(), Some("next"));
    // Final: the stuck one is not processed again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!job_names(&world).await.contains(&"stuck".to_string()));
}

/// Without the worker's ServiceAccount the Job controller cannot create the Pod at all; its
/// FailedCreate Event is what the RecordingJob shows.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_worker_service_account_is_named_from_the_job_controllers_events() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let world = World::new(&[SLEEPING]).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(world.client.clone(), world.namespace());
    accounts
        .delete(common::WORKER_ACCOUNT, &Default::default())
        .await
        .expect("deleting the worker ServiceAccount");
    let _operator = world.operator(SLEEPING.0, &[]);
    let start = std::time::Instant::now();
    world
        .create_rj("orphan", one_track("orphan", serde_json::json!({})))
        .await;
    let rj = world
        .wait_rj(
            "orphan",
            Duration::from_secs(40),
            "FailedCreate named",
            |s| s.reason.as_deref() == Some("FailedCreate"),
        )
        .await;
    println!("cause named {:?} after the create", start.elapsed());
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Pending), "{status:#?}");
    let message = status.message.unwrap_or_default();
    assert!(
        message.starts_with("the Job controller cannot create the worker Pod: ")
            && message.contains(common::WORKER_ACCOUNT),
        "{message}"
    );
    let notes = warnings(&world, "orphan", "FailedCreate", 1).await;
    assert!(notes[0].contains("serviceaccount"), "{notes:?}");
    assert_eq!(pod_count(&world).await, 0);
}

/// A Job deleted by hand while its worker runs never means a second worker: with its Pod
/// orphaned (`kubectl delete job --cascade=orphan`) the RecordingJob says it waits for that Pod,
/// and once the Pod is gone it fails with JobDeleted, its attempt counted, and no new Job.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_deleted_by_hand_is_never_replaced_while_its_worker_may_run() {
    let world = World::new(&[SLEEPING]).await;
    let _operator = world.operator(SLEEPING.0, &[]);
    let jobs_seen = world.record_jobs();
    world
        .create_rj("manual", one_track("manual", serde_json::json!({})))
        .await;
    world
        .wait_rj("manual", LONG, "Running", |s| {
            s.phase == Some(Phase::Running)
        })
        .await;

    let jobs: Api<Job> = Api::namespaced(world.client.clone(), world.namespace());
    jobs.delete(
        "manual",
        &kube::api::DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
            ..Default::default()
        },
    )
    .await
    .expect("deleting the Job, orphaning its Pod");
    let rj = world
        .wait_rj("manual", Duration::from_secs(30), "JobDeleted", |s| {
            s.reason.as_deref() == Some("JobDeleted")
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Running), "{status:#?}");
    let message = status.message.unwrap_or_default();
    assert!(
        message.starts_with("Job manual was deleted; waiting for worker Pod manual-"),
        "{message}"
    );
    let notes = warnings(&world, "manual", "JobDeleted", 1).await;
    assert!(notes[0].contains("waiting for worker Pod"), "{notes:?}");
    // While the orphaned worker runs, no second Job.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(job_names(&world).await.is_empty());
    assert_eq!(pod_count(&world).await, 1);

    let pods: Api<Pod> = Api::namespaced(world.client.clone(), world.namespace());
    pods.delete_collection(&Default::default(), &ListParams::default())
        .await
        .expect("deleting the orphaned Pod");
    let rj = world
        .wait_rj("manual", LONG, "Failed", |s| s.phase == Some(Phase::Failed))
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("JobDeleted"), "{status:#?}");
    assert_eq!(status.attempts, Some(1));
    assert_eq!(status.job_name.as_deref(), Some("manual"));
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("was deleted before its worker finished (1 attempt(s) started)"),
        "{message}"
    );
    // Final: nothing is created afterwards either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(job_names(&world).await.is_empty());
    let uids: std::collections::BTreeSet<String> = jobs_seen
        .values()
        .iter()
        .filter_map(|j| j.metadata.uid.clone())
        .collect();
    assert_eq!(uids.len(), 1, "exactly one Job was ever created");
}

/// An edit of the spec once the Job runs is not applied, and the RecordingJob says so: a
/// SpecApplied=False condition naming both generations, a Warning Event, and an
/// observedGeneration that stays at the generation the Job was made from.
#[tokio::test(flavor = "multi_thread")]
async fn a_spec_edit_after_the_job_exists_is_said_not_applied() {
    let world = World::new(&[SLEEPING]).await;
    let _operator = world.operator(SLEEPING.0, &[]);
    world
        .create_rj("edited", one_track("edited", serde_json::json!({})))
        .await;
    let rj = world
        .wait_rj("edited", LONG, "Running", |s| {
            s.phase == Some(Phase::Running)
        })
        .await;
    let applied = |s: &mixdown_crds::RecordingJobStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "SpecApplied")
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let status = rj.status.expect("status");
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        applied(&status).map(|(s, r, _)| (s, r)),
        Some(("True".to_string(), "SpecApplied".to_string()))
    );

    // A placement field, which every version lets one edit: from 1.25 the CRD's rules refuse an
    // edit of the others outright (server_versions.rs).
    let edited = merge_patch(
        &world,
        "edited",
        serde_json::json!({"spec": {"nodeSelector": {"media": "fast"}}}),
        "editing the spec",
    )
    .await;
    assert_eq!(edited.metadata.generation, Some(2));
    let rj = world
        .wait_rj(
            "edited",
            Duration::from_secs(20),
            "SpecApplied False",
            |s| applied(s).is_some_and(|(status, _, _)| status == "False"),
        )
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Running), "{status:#?}");
    assert_eq!(status.observed_generation, Some(1), "{status:#?}");
    let (_, reason, message) = applied(&status).unwrap();
    assert_eq!(reason, "SpecChangeNotApplied");
    assert!(
        message.starts_with(
            "the spec was edited (generation 2) after Job edited was made from generation 1"
        ),
        "{message}"
    );
    let notes = warnings(&world, "edited", "SpecChangeNotApplied", 1).await;
    assert!(notes[0].contains("generation 2"), "{notes:?}");
    let jobs: Api<Job> = Api::namespaced(world.client.clone(), world.namespace());
    let job = jobs.get("edited").await.expect("the Job");
    assert_eq!(
        job.spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.node_selector),
        None,
        "the Job is unchanged"
    );
}

/// A recording that failed for a cause the user can fix (a chunk missing from storage) is
/// processed again once fixed, by annotating the RecordingJob: its failed Job is replaced, the run
/// before stays in status.retries, and the files are made. A retry of a RecordingJob that
/// succeeded is refused with a Warning Event and no Job.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_recording_job_is_retried_by_annotation_after_the_cause_is_fixed() {
    let world = World::new(&[]).await;
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let jobs_seen = world.record_jobs();
    let chunks = recording(6, "320x240").await;
    let n = chunks.len();
    let prefix = world
        .upload_track("room1", "again", "alice", &chunks, &[1])
        .await;
    world
        .create_rj(
            "again",
            spec(
                "room1",
                "again",
                &[("alice", &prefix, n)],
                serde_json::json!({}),
            ),
        )
        .await;
    let rj = world
        .wait_rj("again", LONG, "Failed", |s| s.phase == Some(Phase::Failed))
        .await;
    let failed = rj.status.expect("status");
    assert_eq!(
        failed.reason.as_deref(),
        Some("MissingChunk"),
        "{failed:#?}"
    );

    // The cause fixed: the missing chunk uploaded. Then the retry asked for.
    world
        .upload_track("room1", "again", "alice", &chunks, &[])
        .await;
    let annotate = |value: &str| serde_json::json!({"metadata": {"annotations": {"mixdown.dev/retry": value}}});
    merge_patch(&world, "again", annotate("first"), "asking for a retry").await;
    let rj = world
        .wait_rj("again", LONG, "Succeeded", |s| {
            s.phase == Some(Phase::Succeeded)
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.outputs.len(), 1, "{status:#?}");
    assert_eq!(status.attempts, Some(1));
    assert_eq!(status.retries.len(), 1, "{status:#?}");
    let before = &status.retries[0];
    assert_eq!(before.request, "first");
    assert_eq!(before.reason.as_deref(), Some("MissingChunk"));
    assert_eq!(before.attempts, Some(1));
    assert_eq!(before.job_name.as_deref(), Some("again"));
    assert!(before.refused.is_none());
    let uids: std::collections::BTreeSet<String> = jobs_seen
        .values()
        .iter()
        .filter_map(|j| j.metadata.uid.clone())
        .collect();
    assert_eq!(uids.len(), 2, "the failed Job was replaced by one new Job");
    let notes = {
        let events: Api<Event> = Api::namespaced(world.client.clone(), world.namespace());
        world
            .eventually(Duration::from_secs(30), "a Retrying Event", || {
                let events = events.clone();
                async move {
                    let list = events.list(&ListParams::default()).await.ok()?;
                    let notes: Vec<String> = list
                        .items
                        .into_iter()
                        .filter(|e| e.reason.as_deref() == Some("Retrying"))
                        .filter_map(|e| e.note)
                        .collect();
                    (!notes.is_empty()).then_some(notes)
                }
            })
            .await
    };
    assert!(notes[0].contains("mixdown.dev/retry=first"), "{notes:?}");

    // A success is never processed again.
    merge_patch(
        &world,
        "again",
        annotate("second"),
        "asking for another retry",
    )
    .await;
    let rj = world
        .wait_rj("again", Duration::from_secs(20), "the retry refused", |s| {
            s.retries.len() == 2
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded));
    assert!(
        status.retries[1]
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("never processed again")),
        "{status:#?}"
    );
    let notes = warnings(&world, "again", "RetryRefused", 1).await;
    assert!(notes[0].contains("succeeded"), "{notes:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let uids: std::collections::BTreeSet<String> = jobs_seen
        .values()
        .iter()
        .filter_map(|j| j.metadata.uid.clone())
        .collect();
    assert_eq!(uids.len(), 2, "no Job for a refused retry");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_room_of_32_lists_every_file_though_the_termination_message_holds_only_some() {
    let world = World::new(&[]).await;
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let chunks = recording(3, "160x120").await;
    let n = chunks.len();
    let participants: Vec<String> = (0..32)
        .map(|i| format!("participant-{i:02}-with-a-long-name"))
        .collect();
    let mut prefixes = Vec::new();
    for participant in &participants {
        prefixes.push(
            world
                .upload_track("room1", "rec32", participant, &chunks, &[])
                .await,
        );
    }
    let tracks: Vec<(&str, &str, usize)> = participants
        .iter()
        .zip(&prefixes)
        .map(|(p, prefix)| (p.as_str(), prefix.as_str(), n))
        .collect();
    world
        .create_rj(
            "rec-32",
            spec(
                "room1",
                "rec32",
                &tracks,
                serde_json::json!({"output": {"prefix": "riverside/processed/room1/rec32/", "profile": "webm", "composite": false}}),
            ),
        )
        .await;
    let rj = world
        .wait_rj("rec-32", LONG, "finished", |s| {
            s.phase.is_some_and(Phase::is_finished)
        })
        .await;
    let status = rj.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");

    // The worker's report did not hold every file...
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), world.namespace());
    let pod = pods
        .list(&ListParams::default().labels("mixdown.dev/recording-job=rec-32"))
        .await
        .expect("listing Pods")
        .items
        .into_iter()
        .next()
        .expect("the worker Pod");
    let message = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state)
        .and_then(|s| s.terminated)
        .and_then(|t| t.message)
        .expect("a termination message");
    let report: serde_json::Value = serde_json::from_str(&message).expect("the report parses");
    let reported = report["outputs"].as_array().expect("outputs").len();
    assert!(reported < 32, "{reported} outputs in the report: {message}");

    // ...and the status lists all 32, in the spec's order, each as stored.
    let listed: Vec<&str> = status
        .outputs
        .iter()
        .map(|o| o.participant_id.as_str())
        .collect();
    assert_eq!(listed, participants, "{status:#?}");
    let stored = world.keys("riverside/processed/room1/rec32/").await;
    for output in &status.outputs {
        assert!(stored.contains(&output.key), "{} not stored", output.key);
        assert!(
            output.size_bytes > 0 && (output.duration_seconds - 3.0).abs() < 1.0,
            "{output:?}"
        );
    }
    let complete = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Complete")
        .expect("Complete");
    assert!(
        complete
            .message
            .starts_with("32 output(s) written and verified"),
        "{}",
        complete.message
    );
    assert!(
        !complete.message.contains("not listed"),
        "{}",
        complete.message
    );
    // Nothing was said to be mixing in a recording without a mixdown.
    assert!(
        status.conditions.iter().all(|c| c.type_ != "MixdownReady"),
        "{status:#?}"
    );
    assert!(world.keys("riverside/chunks/room1/rec32/").await.is_empty());
}
