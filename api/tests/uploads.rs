//! No chunk left behind: a stopped recording waits for every participant's upload, end to end
//! (the test kit's control plane, the operator, the real worker and ffmpeg, the S3 server, API
//! servers as processes and the real socket.io client).

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use mixdown_crds::{Phase, RecordingJob, RecordingJobStatus, recording_job_name};
use serde_json::json;

const LONG: Duration = Duration::from_secs(180);

fn uploads_condition(status: &RecordingJobStatus) -> Option<(String, String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "UploadsComplete")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The reasons and notes of the Events about RecordingJob `name`, once at least `want` are there.
async fn events_of(world: &World, name: &str, want: &[&str]) -> Vec<(String, String, String)> {
    let events: Api<Event> = Api::namespaced(world.client.clone(), world.namespace());
    world
        .eventually(WAIT, &format!("Events {want:?} for {name}"), || {
            let events = events.clone();
            async move {
                let list = events.list(&ListParams::default()).await.ok()?;
                let found: Vec<(String, String, String)> = list
                    .items
                    .iter()
                    .filter(|e| {
                        e.regarding
                            .as_ref()
                            .is_some_and(|r| r.name.as_deref() == Some(name))
                    })
                    .map(|e| {
                        (
                            e.type_.clone().unwrap_or_default(),
                            e.reason.clone().unwrap_or_default(),
                            e.note.clone().unwrap_or_default(),
                        )
                    })
                    .collect();
                want.iter()
                    .all(|w| found.iter().any(|(_, r, _)| r == w))
                    .then_some(found)
            }
        })
        .await
}

async fn jobs(world: &World) -> Vec<Job> {
    Api::<Job>::namespaced(world.client.clone(), world.namespace())
        .list(&ListParams::default())
        .await
        .expect("listing Jobs")
        .items
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_guest_is_waited_for_and_every_second_recorded_is_in_the_file() {
    let world = World::new(&[]).await;
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let api = ApiServer::start(&world, &["--output-profile", "webm"]).await;
    let (room, host, invite) = api.create_room().await;
    let (guest_id, guest) = api.join(&invite, "Slow").await;
    let mut clients = Clients::start();
    clients
        .connect("host", &api.url, Some(&host))
        .await
        .expect("host connects");
    let ack = clients.emit_ack("host", "start_recording", json!({})).await;
    let rec = ack["recordingId"]
        .as_str()
        .expect("recordingId")
        .to_string();
    let name = recording_job_name(&rec);

    let chunks = recording(12, "320x240").await;
    assert_eq!(chunks.len(), 12);
    api.upload(&host, &rec, &chunks).await;
    // The guest is behind: two chunks are in, ten still queued when the host stops.
    api.upload_some(&guest, &rec, &chunks, 0..2, Duration::ZERO)
        .await;
    let ack = clients
        .emit_ack("host", "recording_stopped", json!({"recordingId": rec}))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let (status, sealed) = api.seal(&host, &rec, chunks.len()).await;
    assert_eq!(status, 200, "{sealed}");

    let statuses = world.record_statuses(&name);
    let guest_uploads = async {
        api.upload_some(&guest, &rec, &chunks, 2..12, Duration::from_millis(400))
            .await;
        let (status, sealed) = api.seal(&guest, &rec, chunks.len()).await;
        assert_eq!(status, 200, "{sealed}");
    };
    let while_uploading = async {
        let rj = world
            .wait_rj(&name, WAIT, "Uploading, the host sealed", |s| {
                s.phase == Some(Phase::Uploading)
                    && uploads_condition(s).is_some_and(|(_, _, m)| m.contains("1 of 2"))
            })
            .await;
        let (status, reason, message) = uploads_condition(rj.status.as_ref().unwrap()).unwrap();
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "WaitingForUploads")
        );
        assert!(message.contains(&guest_id), "{message}");
        assert!(
            jobs(&world).await.is_empty(),
            "no Job while a track is open"
        );
        // The host sees who is still uploading, and that it is not them.
        let update = clients
            .wait_event("host", "video-processing-update", WAIT, |e| {
                e["phase"] == "Uploading"
                    && e["tracks"].as_array().is_some_and(|t| {
                        t.iter().any(|t| t["sealed"] == true)
                            && t.iter().any(|t| {
                                t["participantId"] == guest_id.as_str() && t["sealed"] == false
                            })
                    })
            })
            .await;
        assert_eq!(
            update["tracks"].as_array().map(Vec::len),
            Some(2),
            "{update}"
        );
        clients
            .wait_event("host", "upload-progress", WAIT, |e| {
                e["participantId"] == guest_id.as_str() && e["confirmed"].as_u64() > Some(2)
            })
            .await;
    };
    tokio::join!(guest_uploads, while_uploading);

    let done = clients
        .wait_event("host", "video-processing-update", LONG, |e| {
            e["phase"] == "Succeeded" || e["phase"] == "Failed"
        })
        .await;
    assert_eq!(done["phase"], "Succeeded", "{done:#}");
    let dir = tempfile::tempdir().expect("temp dir");
    let outputs = done["outputs"].as_array().expect("outputs");
    assert_eq!(
        outputs[0]["kind"], "mixdown",
        "the mixdown of the two first: {done:#}"
    );
    for output in &outputs[1..] {
        assert_eq!(output["kind"], "track", "{output}");
        assert_eq!(output["sealed"], true, "{output}");
        assert_eq!(output["chunks"], 12, "{output}");
        let duration = probe_duration(output["url"].as_str().expect("url"), dir.path()).await;
        assert!(
            (duration - 12.0).abs() <= 0.5,
            "{} plays {duration} s, not the 12 recorded",
            output["participantId"]
        );
    }
    let left = world.keys(&format!("riverside/chunks/{room}/{rec}/")).await;
    assert!(left.is_empty(), "chunks left behind: {left:?}");

    // Uploading, then processing, each once; one Job.
    let phases: Vec<Phase> = statuses.values().iter().filter_map(|s| s.phase).collect();
    let mut distinct = phases.clone();
    distinct.dedup();
    assert_eq!(
        distinct.first(),
        Some(&Phase::Uploading),
        "phases: {phases:?}"
    );
    assert_eq!(
        distinct.last(),
        Some(&Phase::Succeeded),
        "phases: {phases:?}"
    );
    assert!(
        !distinct[1..].contains(&Phase::Uploading),
        "Uploading comes once, first: {phases:?}"
    );
    assert_eq!(jobs(&world).await.len(), 1);
    let events = events_of(
        &world,
        &name,
        &["WaitingForUploads", "AllTracksSealed", "Succeeded"],
    )
    .await;
    let created = events.iter().filter(|(_, r, _)| r == "JobCreated").count();
    assert_eq!(created, 1, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_never_seals_is_processed_from_what_arrived_and_the_rest_is_kept() {
    let world = World::new(&[]).await;
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let api = ApiServer::start(
        &world,
        &["--output-profile", "webm", "--upload-timeout-seconds", "8"],
    )
    .await;
    let (room, host, invite) = api.create_room().await;
    let (guest_id, guest) = api.join(&invite, "Gone").await;
    let mut clients = Clients::start();
    clients
        .connect("host", &api.url, Some(&host))
        .await
        .expect("host connects");
    let (_, started) = api
        .post(&format!("/api/rooms/{room}/recordings"), Some(&host), None)
        .await;
    let rec = started["recordingId"].as_str().expect("id").to_string();
    let name = recording_job_name(&rec);

    let chunks = recording(8, "320x240").await;
    assert_eq!(chunks.len(), 8);
    api.upload(&host, &rec, &chunks).await;
    // Chunk 5 of the guest never arrives, 6 and 7 do; then the guest's page is gone.
    api.upload_some(&guest, &rec, &chunks, [0, 1, 2, 3, 4, 6, 7], Duration::ZERO)
        .await;
    let (status, stopped) = api
        .post(&format!("/api/recordings/{rec}/stop"), Some(&host), None)
        .await;
    assert_eq!(status, 201, "{stopped}");
    let (status, sealed) = api.seal(&host, &rec, chunks.len()).await;
    assert_eq!(status, 200, "{sealed}");

    let rj = world
        .wait_rj(&name, LONG, "Succeeded or Failed", |s| {
            s.phase.is_some_and(Phase::is_finished)
        })
        .await;
    let status = rj.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:#?}");
    let (sealed, reason, message) = uploads_condition(&status).unwrap();
    assert_eq!(
        (sealed.as_str(), reason.as_str()),
        ("False", "UploadTimeout")
    );
    assert!(
        message.contains(&format!("not sealed: {guest_id}")),
        "{message}"
    );
    let complete = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Complete")
        .expect("Complete");
    assert!(
        complete.message.contains(&format!(
            "track {guest_id} was not sealed: its file holds chunks 00000000.webm to 00000004.webm; 00000005.webm was missing or empty, so the 2 chunk(s) after it were left out and kept in storage"
        )),
        "{}",
        complete.message
    );
    let by_participant = |p: &str| {
        status
            .outputs
            .iter()
            .find(|o| o.participant_id == p)
            .cloned()
            .unwrap_or_else(|| panic!("no output of {p}: {status:#?}"))
    };
    let guest_output = by_participant(&guest_id);
    assert!(!guest_output.sealed);
    assert_eq!(guest_output.chunks, Some(5));
    let left_out = guest_output.left_out.clone().expect("leftOut");
    assert_eq!((left_out.missing_chunk, left_out.chunks_kept), (5, 2));
    assert!(
        (3.5..6.5).contains(&guest_output.duration_seconds),
        "the guest's file holds about 5 of 8 seconds: {}",
        guest_output.duration_seconds
    );
    let host_output = status
        .outputs
        .iter()
        .find(|o| o.participant_id != guest_id)
        .expect("the host's output");
    assert!(host_output.sealed);
    assert!((host_output.duration_seconds - 8.0).abs() <= 0.5);

    // What was processed is gone; what was left out is still there.
    let left = world.keys(&format!("riverside/chunks/{room}/{rec}/")).await;
    assert_eq!(
        left,
        [
            format!("riverside/chunks/{room}/{rec}/{guest_id}/00000006.webm"),
            format!("riverside/chunks/{room}/{rec}/{guest_id}/00000007.webm"),
        ],
        "only the chunks after the gap are kept"
    );

    // The room heard the same; the events say it too.
    let done = clients
        .wait_event("host", "video-processing-update", WAIT, |e| {
            e["phase"] == "Succeeded"
        })
        .await;
    let guest_file = done["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["participantId"] == guest_id.as_str()))
        .cloned()
        .expect("the guest's file");
    assert_eq!(guest_file["sealed"], false, "{guest_file}");
    assert_eq!(guest_file["leftOut"]["missingChunk"], 5, "{guest_file}");
    assert_eq!(guest_file["leftOut"]["chunksKept"], 2, "{guest_file}");
    let events = events_of(&world, &name, &["UploadTimeout", "Succeeded"]).await;
    let timeout = events
        .iter()
        .find(|(_, r, _)| r == "UploadTimeout")
        .expect("UploadTimeout");
    assert_eq!(timeout.0, "Warning");
    assert!(timeout.2.contains(&guest_id), "{timeout:?}");
    let succeeded = events.iter().find(|(_, r, _)| r == "Succeeded").unwrap();
    assert_eq!(succeeded.0, "Warning", "an unsealed track is worth a look");
    assert!(succeeded.2.contains("left out and kept"), "{succeeded:?}");

    // The guest comes back too late: told so, and nothing changes.
    let (status, late) = api.seal(&guest, &rec, 8).await;
    assert_eq!(
        (status, late["code"].as_str()),
        (409, Some("processing_started")),
        "{late}"
    );
    assert_eq!(
        world
            .keys(&format!("riverside/chunks/{room}/{rec}/"))
            .await
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_operator_and_a_replica_while_uploading_loses_no_seal() {
    let world = World::new(&[]).await;
    let mut operator = world.operator(WORKER_IMAGE, &[]);
    let mut a = ApiServer::start(&world, &["--output-profile", "webm"]).await;
    let b = ApiServer::start(&world, &["--output-profile", "webm"]).await;
    let (room, host, invite) = a.create_room().await;
    let (_, guest) = b.join(&invite, "Guest").await;
    let mut clients = Clients::start();
    clients
        .connect("guest", &b.url, Some(&guest))
        .await
        .expect("guest on b");
    let (_, started) = a
        .post(&format!("/api/rooms/{room}/recordings"), Some(&host), None)
        .await;
    let rec = started["recordingId"].as_str().expect("id").to_string();
    let name = recording_job_name(&rec);
    let chunks = recording(6, "320x240").await;
    a.upload(&host, &rec, &chunks).await;
    b.upload(&guest, &rec, &chunks).await;
    let (status, stopped) = a
        .post(&format!("/api/recordings/{rec}/stop"), Some(&host), None)
        .await;
    assert_eq!(status, 201, "{stopped}");
    world
        .wait_rj(&name, WAIT, "Uploading", |s| {
            s.phase == Some(Phase::Uploading)
        })
        .await;

    // The operator dies; the guest seals through b, then replica a dies and the host seals
    // through b as well.
    operator.kill();
    let sealed = clients
        .emit_ack(
            "guest",
            "upload_complete",
            json!({"recordingId": rec, "chunkCount": chunks.len()}),
        )
        .await;
    assert_eq!(sealed["ok"], true, "{sealed}");
    a.kill();
    let (status, sealed) = b.seal(&host, &rec, chunks.len()).await;
    assert_eq!(status, 200, "{sealed}");
    let rjs: Api<RecordingJob> = world.rjs();
    let rj = rjs.get(&name).await.expect("the RecordingJob");
    assert!(
        rj.spec
            .tracks
            .iter()
            .all(|t| t.source.chunk_count == Some(6)),
        "both seals landed: {:?}",
        rj.spec.tracks
    );
    assert_eq!(
        rj.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Uploading)
    );
    assert!(jobs(&world).await.is_empty(), "no operator, no Job");

    // A new operator starts it, once.
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let done = clients
        .wait_event("guest", "video-processing-update", LONG, |e| {
            e["phase"] == "Succeeded" || e["phase"] == "Failed"
        })
        .await;
    assert_eq!(done["phase"], "Succeeded", "{done:#}");
    assert_eq!(done["attempts"], 1, "{done:#}");
    // Two participants' files and their mixdown.
    assert_eq!(
        done["outputs"].as_array().map(Vec::len),
        Some(3),
        "{done:#}"
    );
    let succeeded = clients
        .events("guest", "video-processing-update")
        .iter()
        .filter(|e| e["phase"] == "Succeeded")
        .count();
    assert_eq!(succeeded, 1);
    assert_eq!(jobs(&world).await.len(), 1, "processing started once");
    let left = world.keys(&format!("riverside/chunks/{room}/{rec}/")).await;
    assert!(left.is_empty(), "chunks left behind: {left:?}");
}
