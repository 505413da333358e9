//! The API end to end: the test kit's control plane, the operator, the pod runner running the real
//! worker, the real S3-compatible server and ffmpeg, API servers as processes, and the real
//! socket.io client.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const LONG: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_goes_from_room_to_finished_files_and_the_mixdown_and_everyone_hears_it() {
    let world = World::new(&[]).await;
    let _operator = world.operator(WORKER_IMAGE, &[]);
    let api = ApiServer::start(&world, &["--output-profile", "mp4"]).await;
    let (room, host, invite) = api.create_room().await;
    let (guest_id, guest) = api.join(&invite, "Guest").await;

    let mut clients = Clients::start();
    clients
        .connect("host", &api.url, Some(&host))
        .await
        .expect("host connects");
    clients
        .connect("guest", &api.url, Some(&guest))
        .await
        .expect("guest connects");

    let ack = clients.emit_ack("host", "start_recording", json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let rec = ack["recordingId"]
        .as_str()
        .expect("recordingId")
        .to_string();
    for who in ["host", "guest"] {
        clients
            .wait_event(who, "start-rec", WAIT, |e| e["recordingId"] == rec.as_str())
            .await;
    }

    let chunks = recording(20, "640x360").await;
    api.upload(&host, &rec, &chunks).await;
    api.upload(&guest, &rec, &chunks).await;
    // The host's page hears the guest's uploads.
    clients
        .wait_event("host", "upload-progress", WAIT, |e| {
            e["participantId"] == guest_id.as_str() && e["confirmed"] == chunks.len()
        })
        .await;

    let ack = clients
        .emit_ack("host", "recording_stopped", json!({"recordingId": rec}))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let job_name = ack["jobName"].as_str().expect("jobName").to_string();
    assert_eq!(job_name, mixdown_crds::recording_job_name(&rec));

    for who in ["host", "guest"] {
        clients
            .wait_event(who, "stop-rec", WAIT, |e| e["recordingId"] == rec.as_str())
            .await;
        let started = clients
            .wait_event(who, "video-processing-started", WAIT, |e| {
                e["recordingId"] == rec.as_str()
            })
            .await;
        assert_eq!(started["jobName"], job_name.as_str());
        assert_eq!(started["phase"], "Uploading", "{started:#}");
    }
    // Each page seals its track once its queue drained: the host by socket.io, the guest by REST,
    // each with when its recorder started on the server's clock: the host 120 ms after the
    // recording started, the guest, who joined late, 1.5 s after.
    let (status, state) = api
        .get(&format!("/api/recordings/{rec}"), Some(&host))
        .await;
    assert_eq!(status, 200, "{state}");
    let started_ms = state["startedAt"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .expect("the recording's start")
        .as_microsecond() as f64
        / 1000.0;
    let sealed = clients
        .emit_ack(
            "host",
            "upload_complete",
            json!({"recordingId": rec, "chunkCount": chunks.len(), "recorderStartedAt": started_ms + 120.0, "clockErrorMs": 2.5}),
        )
        .await;
    assert_eq!(sealed["ok"], true, "{sealed}");
    assert_eq!(sealed["startOffsetMs"], 120, "{sealed}");
    assert!(sealed["serverTime"].as_f64().is_some(), "{sealed}");
    let (status, sealed) = api
        .post(
            &format!("/api/recordings/{rec}/tracks/complete"),
            Some(&guest),
            Some(json!({"chunkCount": chunks.len(), "recorderStartedAt": started_ms + 1500.0, "clockErrorMs": 4.0})),
        )
        .await;
    assert_eq!(status, 200, "{sealed}");
    assert_eq!(sealed["startOffsetMs"], 1500, "{sealed}");
    // The RecordingJob holds where each track starts, and the names for the mixdown's tiles.
    let rj = world.rjs().get(&job_name).await.expect("the RecordingJob");
    let placed: Vec<_> = rj
        .spec
        .tracks
        .iter()
        .map(|t| (t.display_name.clone(), t.start_offset_ms))
        .collect();
    assert!(
        placed.contains(&(Some("Host".into()), Some(120)))
            && placed.contains(&(Some("Guest".into()), Some(1500))),
        "{placed:?}"
    );
    // Every page hears each track sealed.
    clients
        .wait_event("host", "video-processing-update", WAIT, |e| {
            e["tracks"]
                .as_array()
                .is_some_and(|t| t.len() == 2 && t.iter().all(|t| t["sealed"] == true))
        })
        .await;
    let done = clients
        .wait_event("guest", "video-processing-update", LONG, |e| {
            e["phase"] == "Succeeded" || e["phase"] == "Failed"
        })
        .await;
    assert_eq!(done["phase"], "Succeeded", "{done:#}");
    assert_eq!(done["progress"], 100);

    for who in ["host", "guest"] {
        clients
            .wait_event(who, "video-processing-update", WAIT, |e| {
                e["phase"] == "Succeeded"
            })
            .await;
        let updates = clients.events(who, "video-processing-update");
        assert!(
            updates
                .iter()
                .any(|u| (1..=99).contains(&u["progress"].as_i64().unwrap_or(0))),
            "{who} saw no progress between 1 and 99: {updates:#?}"
        );
        let finals: Vec<_> = updates
            .iter()
            .filter(|u| u["phase"] == "Succeeded")
            .collect();
        assert_eq!(finals.len(), 1, "{who} heard Succeeded once: {updates:#?}");
        assert!(clients.events(who, "video-processing-error").is_empty());
    }

    // The participants' files reached the room before the mixdown was done.
    let updates = clients.events("guest", "video-processing-update");
    let mixing = updates
        .iter()
        .find(|u| u["phase"] == "Running" && u["mixdown"]["state"] == "mixing")
        .unwrap_or_else(|| panic!("no update while mixing: {updates:#?}"));
    let early = mixing["outputs"]
        .as_array()
        .expect("the files ready while mixing");
    assert_eq!(early.len(), 2, "{mixing:#}");
    assert!(
        early
            .iter()
            .all(|o| o["kind"] == "track" && o["url"].is_string()),
        "{mixing:#}"
    );
    assert_eq!(done["mixdown"]["state"], "ready", "{done:#}");

    let outputs = done["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 3, "{done:#}");
    let dir = tempfile::tempdir().expect("temp dir");
    // The mixdown first: everyone together, as long as the last track's end (1.5 s + 20 s).
    let mixdown = &outputs[0];
    assert_eq!(mixdown["kind"], "mixdown", "{done:#}");
    assert!(mixdown.get("participantId").is_none(), "{mixdown}");
    assert_eq!(
        mixdown["key"],
        format!("riverside/processed/{room}/{rec}/mixdown.mp4").as_str()
    );
    let duration = probe_duration(mixdown["url"].as_str().expect("url"), dir.path()).await;
    assert!(
        (duration - 21.5).abs() <= 0.5,
        "the mixdown plays {duration} s, not 21.5"
    );
    for output in &outputs[1..] {
        assert_eq!(output["kind"], "track", "{output}");
        let key = output["key"].as_str().expect("key");
        assert!(
            key.starts_with(&format!("riverside/processed/{room}/{rec}/")),
            "{key}"
        );
        assert!(key.ends_with(".mp4"), "{key}");
        let duration = probe_duration(output["url"].as_str().expect("url"), dir.path()).await;
        assert!(
            (duration - 20.0).abs() <= 0.5,
            "{key} plays {duration} s, not 20"
        );
    }
    let chunks_left = world.keys(&format!("riverside/chunks/{room}/{rec}/")).await;
    assert!(
        chunks_left.is_empty(),
        "chunks left behind: {chunks_left:?}"
    );

    // REST tells the same story.
    let (status, state) = api
        .get(&format!("/api/recordings/{rec}"), Some(&guest))
        .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["phase"], "Succeeded");
    let (status, list) = api
        .get(&format!("/api/rooms/{room}/recordings"), Some(&host))
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["recordings"][0]["recordingId"], rec.as_str());
    assert_eq!(
        list["recordings"][0]["outputs"].as_array().map(Vec::len),
        Some(3)
    );
    assert!(
        api.metric("mixdown_api_stops_total{result=\"created\"}")
            .await
            == Some(1.0)
    );
}

/// The real worker, slower to start, so that processing outlives a killed replica.
const SLOW_WORKER: (&str, &str) = ("slow-worker:test", "sleep 4\nexec \"$WORKER\"");

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_tells_its_sockets_once_and_a_killed_one_loses_nothing() {
    let world = World::new(&[SLOW_WORKER]).await;
    let _operator = world.operator(SLOW_WORKER.0, &[]);
    let mut a = ApiServer::start(&world, &["--output-profile", "webm"]).await;
    let b = ApiServer::start(&world, &["--output-profile", "webm"]).await;
    let (room, host, invite) = a.create_room().await;
    let (guest1_id, guest1) = b.join(&invite, "One").await;
    let (_, guest2) = a.join(&invite, "Two").await;

    let mut clients = Clients::start();
    clients
        .connect("host", &a.url, Some(&host))
        .await
        .expect("host on a");
    clients
        .connect("g1", &b.url, Some(&guest1))
        .await
        .expect("guest 1 on b");
    clients
        .connect("g2", &b.url, Some(&guest2))
        .await
        .expect("guest 2 on b");

    // Started over REST on b; heard on a as well.
    let (status, started) = b
        .post(&format!("/api/rooms/{room}/recordings"), Some(&host), None)
        .await;
    assert_eq!(status, 201, "{started}");
    let rec = started["recordingId"].as_str().expect("id").to_string();
    for who in ["host", "g1", "g2"] {
        clients
            .wait_event(who, "start-rec", WAIT, |e| e["recordingId"] == rec.as_str())
            .await;
    }
    let chunks = recording_chunks().await;
    a.upload(&host, &rec, &chunks).await;
    b.upload(&guest1, &rec, &chunks).await;
    // Guest 1 confirmed on b; the host on a hears it, and so does guest 2 on b, once per count.
    for who in ["host", "g2"] {
        clients
            .wait_event(who, "upload-progress", WAIT, |e| {
                e["participantId"] == guest1_id.as_str() && e["confirmed"] == chunks.len()
            })
            .await;
        let counts: Vec<i64> = clients
            .events(who, "upload-progress")
            .iter()
            .filter(|e| e["participantId"] == guest1_id.as_str())
            .filter_map(|e| e["confirmed"].as_i64())
            .collect();
        assert!(
            counts.windows(2).all(|w| w[0] < w[1]),
            "{who}: counts rise, each once: {counts:?}"
        );
    }

    let ack = clients
        .emit_ack("host", "recording_stopped", json!({"recordingId": rec}))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    clients
        .wait_event("g1", "video-processing-started", WAIT, |e| {
            e["recordingId"] == rec.as_str()
        })
        .await;
    clients
        .wait_event("host", "video-processing-started", WAIT, |e| {
            e["recordingId"] == rec.as_str()
        })
        .await;
    // The host seals on a, guest 1 on b.
    let (status, sealed) = a.seal(&host, &rec, chunks.len()).await;
    assert_eq!(status, 200, "{sealed}");
    let sealed = clients
        .emit_ack(
            "g1",
            "upload_complete",
            json!({"recordingId": rec, "chunkCount": chunks.len()}),
        )
        .await;
    assert_eq!(sealed["ok"], true, "{sealed}");
    clients
        .wait_event("g2", "video-processing-update", WAIT, |e| {
            e["phase"] == "Running"
        })
        .await;

    // Replica a dies while the worker is still starting.
    a.kill();
    let done = clients
        .wait_event("g1", "video-processing-update", LONG, |e| {
            e["phase"] == "Succeeded" || e["phase"] == "Failed"
        })
        .await;
    assert_eq!(done["phase"], "Succeeded", "{done:#}");
    clients
        .wait_event("g2", "video-processing-update", WAIT, |e| {
            e["phase"] == "Succeeded"
        })
        .await;

    // Each socket on the surviving replica heard each change exactly once.
    for who in ["g1", "g2"] {
        let events = clients.all_events(who);
        for name in ["start-rec", "stop-rec", "video-processing-started"] {
            let n = events.iter().filter(|(e, _)| e == name).count();
            assert_eq!(n, 1, "{who} heard {name} {n} times: {events:#?}");
        }
        let succeeded = events
            .iter()
            .filter(|(e, d)| e == "video-processing-update" && d["phase"] == "Succeeded")
            .count();
        assert_eq!(succeeded, 1, "{who}: {events:#?}");
        let phases: Vec<&str> = events
            .iter()
            .filter(|(e, _)| e == "video-processing-update")
            .filter_map(|(_, d)| d["phase"].as_str())
            .collect();
        let order = ["Uploading", "Pending", "Running", "Succeeded"];
        let steps: Vec<usize> = phases
            .iter()
            .map(|p| order.iter().position(|o| o == p).unwrap_or(usize::MAX))
            .collect();
        assert!(
            steps.windows(2).all(|w| w[0] <= w[1]) && phases.last() == Some(&"Succeeded"),
            "{who}: phases out of order: {phases:?}"
        );
    }

    // The host, cut off with replica a, reconnects to b and asks.
    clients
        .connect("host2", &b.url, Some(&host))
        .await
        .expect("host reconnects to b");
    let snapshot = clients
        .wait_event("host2", "video-processing-update", WAIT, |e| {
            e["recordingId"] == rec.as_str()
        })
        .await;
    assert_eq!(
        snapshot["phase"], "Succeeded",
        "the snapshot on connect: {snapshot:#}"
    );
    let answer = clients
        .emit_ack(
            "host2",
            "request_processing_status",
            json!({"recordingId": rec}),
        )
        .await;
    assert_eq!(answer["phase"], "Succeeded", "{answer:#}");
    // Both participants' files, and the mixdown of the two first.
    let kinds: Vec<&str> = answer["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["mixdown", "track", "track"], "{answer:#}");
    let response = clients
        .wait_event("host2", "processing-status-response", WAIT, |e| {
            e["recordingId"] == rec.as_str()
        })
        .await;
    assert_eq!(response["phase"], "Succeeded");
}

/// A 6-second 320x240 recording in MediaRecorder-like chunks.
async fn recording_chunks() -> Vec<Vec<u8>> {
    recording(6, "320x240").await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_stop_twice_or_on_two_replicas_at_once_creates_one_recording_job() {
    let world = World::new(&[("never:test", "exit 1")]).await;
    // The worker defaults a platform team sets (the chart's worker.backoffLimit, ...).
    let job_settings = [
        "--job-backoff-limit",
        "1",
        "--job-active-deadline-seconds",
        "900",
        "--job-start-timeout-seconds",
        "120",
    ];
    let a = ApiServer::start(&world, &job_settings).await;
    let b = ApiServer::start(&world, &job_settings).await;
    let (room, host, _) = a.create_room().await;
    let (_, started) = a
        .post(&format!("/api/rooms/{room}/recordings"), Some(&host), None)
        .await;
    let rec = started["recordingId"].as_str().expect("id").to_string();
    a.upload(&host, &rec, &recording_chunks().await).await;

    let path = format!("/api/recordings/{rec}/stop");
    let (first, second) = tokio::join!(
        a.post(&path, Some(&host), None),
        b.post(&path, Some(&host), None)
    );
    for (status, body) in [&first, &second] {
        assert!(*status == 200 || *status == 201, "{status} {body}");
        assert_eq!(
            body["jobName"],
            mixdown_crds::recording_job_name(&rec).as_str()
        );
    }
    let created = [&first, &second]
        .iter()
        .filter(|(_, b)| b["created"] == true)
        .count();
    assert_eq!(
        created, 1,
        "exactly one stop created it: {first:?} {second:?}"
    );
    let (status, again) = b.post(&path, Some(&host), None).await;
    assert_eq!((status, &again["created"]), (200, &json!(false)), "{again}");

    let jobs = recording_jobs(&world).await;
    assert_eq!(jobs.len(), 1, "one RecordingJob");
    let spec = &jobs[0].spec;
    assert_eq!(spec.room_id, room);
    assert_eq!(spec.tracks.len(), 1);
    assert_eq!(
        spec.tracks[0].source.chunk_count, None,
        "a stop leaves the track for its page to seal"
    );
    assert_eq!(
        (
            spec.backoff_limit,
            spec.active_deadline_seconds,
            spec.start_timeout_seconds
        ),
        (1, 900, 120),
        "the RecordingJob carries the API's job settings"
    );

    // Someone deletes the unfinished RecordingJob by hand: the room hears that processing was
    // cancelled, and the chunks are still there.
    let mut clients = Clients::start();
    clients
        .connect("host", &b.url, Some(&host))
        .await
        .expect("connects");
    let name = mixdown_crds::recording_job_name(&rec);
    kube::Api::<mixdown_crds::RecordingJob>::namespaced(world.client.clone(), world.namespace())
        .delete(&name, &Default::default())
        .await
        .expect("deleting the RecordingJob");
    let error = clients
        .wait_event("host", "video-processing-error", WAIT, |e| {
            e["recordingId"] == rec.as_str()
        })
        .await;
    assert_eq!(error["reason"], "RecordingJobDeleted", "{error}");
    let left = world.keys(&format!("riverside/chunks/{room}/{rec}/")).await;
    assert_eq!(left.len(), recording_chunks().await.len(), "chunks kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_reaches_nothing_of_another_room_and_bad_tokens_are_refused() {
    let world = World::new(&[("never:test", "exit 1")]).await;
    let api = ApiServer::start(&world, &["--upload-url-ttl-seconds", "2"]).await;
    let (room_a, host_a, invite_a) = api.create_room().await;
    let (room_b, host_b, _) = api.create_room().await;
    let (_, guest_a) = api.join(&invite_a, "Guest").await;
    let mut clients = Clients::start();
    clients
        .connect("a", &api.url, Some(&host_a))
        .await
        .expect("a connects");

    let (_, started) = api
        .post(
            &format!("/api/rooms/{room_b}/recordings"),
            Some(&host_b),
            None,
        )
        .await;
    let rec_b = started["recordingId"].as_str().expect("id").to_string();
    let chunks = recording_chunks().await;
    api.upload(&host_b, &rec_b, &chunks[..2]).await;
    let before = all_keys(&world).await;

    // Room a's host reaches nothing of room b.
    let not_found = [
        api.post(
            &format!("/api/recordings/{rec_b}/chunks/2/upload-url"),
            Some(&host_a),
            Some(json!({"size": 10})),
        )
        .await,
        api.post(
            &format!("/api/recordings/{rec_b}/chunks/0/confirm"),
            Some(&host_a),
            Some(json!({"size": chunks[0].len()})),
        )
        .await,
        api.post(
            &format!("/api/recordings/{rec_b}/stop"),
            Some(&host_a),
            None,
        )
        .await,
        api.get(&format!("/api/recordings/{rec_b}"), Some(&host_a))
            .await,
    ];
    for (status, body) in &not_found {
        assert_eq!(*status, 404, "{body}");
        assert_eq!(body["code"], "not_found");
    }
    let (status, body) = api
        .get(&format!("/api/rooms/{room_b}/recordings"), Some(&host_a))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = api
        .post(
            &format!("/api/rooms/{room_b}/recordings"),
            Some(&host_a),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let ack = clients
        .emit_ack("a", "recording_stopped", json!({"recordingId": rec_b}))
        .await;
    assert_eq!(ack["error"]["code"], "not_found", "{ack}");
    let ack = clients
        .emit_ack(
            "a",
            "request_processing_status",
            json!({"recordingId": rec_b}),
        )
        .await;
    assert_eq!(ack["error"]["code"], "not_found", "{ack}");
    assert!(
        clients
            .all_events("a")
            .iter()
            .all(|(_, d)| d["recordingId"] != rec_b.as_str() || d["error"]["code"] == "not_found"),
        "room a heard of room b: {:#?}",
        clients.all_events("a")
    );

    // A guest cannot start or stop.
    let (_, started) = api
        .post(
            &format!("/api/rooms/{room_a}/recordings"),
            Some(&host_a),
            None,
        )
        .await;
    let rec_a = started["recordingId"].as_str().expect("id").to_string();
    let (status, body) = api
        .post(
            &format!("/api/recordings/{rec_a}/stop"),
            Some(&guest_a),
            None,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, _) = api
        .post(
            &format!("/api/rooms/{room_a}/recordings"),
            Some(&guest_a),
            None,
        )
        .await;
    assert_eq!(status, 403);
    clients
        .connect("guest", &api.url, Some(&guest_a))
        .await
        .expect("guest connects");
    let ack = clients
        .emit_ack("guest", "recording_stopped", json!({"recordingId": rec_a}))
        .await;
    assert_eq!(ack["error"]["code"], "forbidden", "{ack}");
    let ack = clients
        .emit_ack("guest", "start_recording", json!({}))
        .await;
    assert_eq!(ack["error"]["code"], "forbidden", "{ack}");

    // Missing, forged, expired and invite tokens: refused at the handshake and on REST.
    let forged = mixdown_api::auth::Tokens::new(
        b"another-key-another-key-another-key",
        Duration::from_secs(60),
    )
    .issue(&room_a, "mallory", mixdown_api::auth::Role::Host, None);
    let expired = mixdown_api::auth::Tokens::new(SIGNING_KEY.as_bytes(), Duration::from_secs(60))
        .issue_for(
            &room_a,
            "late",
            mixdown_api::auth::Role::Host,
            None,
            Duration::ZERO,
        );
    tokio::time::sleep(Duration::from_secs(6)).await; // past the 5 s leeway
    for (name, token, says) in [
        ("none", None, "no token"),
        ("forged", Some(forged.as_str()), "signature"),
        ("expired", Some(expired.as_str()), "expired"),
        ("invite", Some(invite_a.as_str()), "invite"),
    ] {
        let refused = clients
            .connect(name, &api.url, token)
            .await
            .expect_err("refused");
        assert!(refused.contains(says), "{name}: {refused}");
        let (status, body) = api
            .get(&format!("/api/rooms/{room_a}/recordings"), token)
            .await;
        assert!(status == 401 || status == 403, "{name}: {status} {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(says)),
            "{name}: {body}"
        );
    }
    assert!(api.metric("mixdown_api_handshakes_refused_total").await >= Some(4.0));

    // A presigned URL writes exactly its key, with exactly its length, until it expires.
    let chunk = chunks[2].clone();
    let (_, url) = api
        .post(
            &format!("/api/recordings/{rec_b}/chunks/2/upload-url"),
            Some(&host_b),
            Some(json!({"size": chunk.len()})),
        )
        .await;
    let mut other_key = url.clone();
    other_key["url"] = json!(
        url["url"]
            .as_str()
            .expect("url")
            .replace("/00000002.webm", "/00000009.webm")
    );
    let (status, _) = put_chunk(&other_key, chunk.clone()).await;
    assert_eq!(status, 403, "a URL for one key wrote another");
    let (status, _) = put_chunk(&url, chunk[..chunk.len() - 1].to_vec()).await;
    assert_eq!(status, 403, "a URL for one length took another");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, _) = put_chunk(&url, chunk.clone()).await;
    assert_eq!(status, 403, "an expired URL was accepted");
    assert_eq!(all_keys(&world).await, before, "storage changed");
    assert!(
        recording_jobs(&world).await.is_empty(),
        "a RecordingJob was created"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_by_name_and_changes_nothing() {
    let world = World::new(&[("never:test", "exit 1")]).await;
    let api = ApiServer::start(&world, &["--max-chunk-bytes", "1000000"]).await;
    let (room, host, _) = api.create_room().await;
    let (_, started) = api
        .post(&format!("/api/rooms/{room}/recordings"), Some(&host), None)
        .await;
    let rec = started["recordingId"].as_str().expect("id").to_string();
    let mut clients = Clients::start();
    clients
        .connect("host", &api.url, Some(&host))
        .await
        .expect("connects");

    let cases: Vec<((u16, serde_json::Value), u16, &str)> = vec![
        (
            api.post("/api/recordings/nosuchrecording/stop", Some(&host), None)
                .await,
            404,
            "no recording nosuchrecording",
        ),
        (
            api.post(&format!("/api/recordings/{rec}/stop"), Some(&host), None)
                .await,
            409,
            "has no chunks",
        ),
        (
            api.post_raw(
                &format!("/api/recordings/{rec}/chunks/0/upload-url"),
                &host,
                "application/json",
                b"{\"size\": 10".to_vec(),
            )
            .await,
            400,
            "EOF",
        ),
        (
            api.post(
                &format!("/api/recordings/{rec}/chunks/0/upload-url"),
                Some(&host),
                Some(json!({"size": "ten"})),
            )
            .await,
            400,
            "size",
        ),
        (
            api.post(
                &format!("/api/recordings/{rec}/chunks/0/upload-url"),
                Some(&host),
                Some(json!({"size": 10, "bucket": "x"})),
            )
            .await,
            400,
            "unknown field",
        ),
        (
            api.post(
                &format!("/api/recordings/{rec}/chunks/0/upload-url"),
                Some(&host),
                Some(json!({"size": 2_000_000})),
            )
            .await,
            400,
            "at most 1000000 bytes",
        ),
        (
            api.post(
                &format!("/api/recordings/{rec}/chunks/0/upload-url"),
                Some(&host),
                Some(json!({"size": 10, "contentType": "text/html"})),
            )
            .await,
            400,
            "not a recording chunk",
        ),
        (
            api.post(
                &format!("/api/recordings/{rec}/chunks/-1/upload-url"),
                Some(&host),
                Some(json!({"size": 10})),
            )
            .await,
            400,
            "chunk number",
        ),
        (
            api.post(
                "/api/recordings/a%2Fb/chunks/0/upload-url",
                Some(&host),
                Some(json!({"size": 10})),
            )
            .await,
            400,
            "recording id \"a/b\" is not valid",
        ),
        (
            api.post("/api/recordings/../stop", Some(&host), None).await,
            404,
            "no such endpoint",
        ),
        (
            api.post("/api/recordings/a..b/stop", Some(&host), None)
                .await,
            400,
            "recording id \"a..b\" is not valid",
        ),
        (
            api.post_raw(
                &format!("/api/recordings/{rec}/chunks/0/confirm"),
                &host,
                "application/json",
                vec![b' '; 64 * 1024],
            )
            .await,
            413,
            "larger than",
        ),
        (
            api.post(
                &format!("/api/recordings/{rec}/chunks/0/confirm"),
                Some(&host),
                Some(json!({"size": 10})),
            )
            .await,
            409,
            "not in storage",
        ),
    ];
    for ((status, body), want, says) in &cases {
        assert_eq!(status, want, "{body}");
        if *want != 404 || body.get("detail").is_some() {
            assert_eq!(body["status"], *want, "a problem+json body: {body}");
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(says), "{detail:?} should say {says:?}");
        }
    }
    // The socket door says the same.
    for (data, says) in [
        (json!({}), "recordingId"),
        (json!({"recordingId": 5}), "as a string"),
        (json!({"recordingId": "../x"}), "not valid"),
        (json!({"recordingId": rec}), "has no chunks"),
    ] {
        let ack = clients
            .emit_ack("host", "recording_stopped", data.clone())
            .await;
        let message = ack["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{data}: {ack}");
    }
    // A chunk uploaded, then confirmed with the wrong size.
    let chunks = recording_chunks().await;
    let (_, url) = api
        .post(
            &format!("/api/recordings/{rec}/chunks/0/upload-url"),
            Some(&host),
            Some(json!({"size": chunks[0].len()})),
        )
        .await;
    assert_eq!(put_chunk(&url, chunks[0].clone()).await.0, 200);
    let (status, body) = api
        .post(
            &format!("/api/recordings/{rec}/chunks/0/confirm"),
            Some(&host),
            Some(json!({"size": 5})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("size_mismatch")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("{} bytes in storage", chunks[0].len())))
    );

    // The same chunk uploaded and confirmed twice counts once.
    let (status, first) = api
        .post(
            &format!("/api/recordings/{rec}/chunks/0/confirm"),
            Some(&host),
            Some(json!({"size": chunks[0].len()})),
        )
        .await;
    assert_eq!((status, &first["confirmed"]), (200, &json!(1)), "{first}");
    let (_, url) = api
        .post(
            &format!("/api/recordings/{rec}/chunks/0/upload-url"),
            Some(&host),
            Some(json!({"size": chunks[0].len()})),
        )
        .await;
    assert_eq!(put_chunk(&url, chunks[0].clone()).await.0, 200);
    let (status, again) = api
        .post(
            &format!("/api/recordings/{rec}/chunks/0/confirm"),
            Some(&host),
            Some(json!({"size": chunks[0].len()})),
        )
        .await;
    assert_eq!((status, &again["confirmed"]), (200, &json!(1)), "{again}");

    assert!(
        recording_jobs(&world).await.is_empty(),
        "a RecordingJob was created"
    );
    assert_eq!(
        all_keys(&world).await.len(),
        1,
        "only the one chunk uploaded is in storage"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seal_is_checked_against_every_page_of_storage_and_a_wrong_one_names_the_chunk() {
    let world = World::new(&[("never:test", "exit 1")]).await;
    let api = ApiServer::start(&world, &[]).await;
    let (room, host, invite) = api.create_room().await;
    let (guest_id, guest) = api.join(&invite, "Guest").await;
    let (late_id, late) = api.join(&invite, "Late").await;
    let (_, started) = api
        .post(&format!("/api/rooms/{room}/recordings"), Some(&host), None)
        .await;
    let rec = started["recordingId"].as_str().expect("id").to_string();
    // More chunks than one listing page holds (1,000), as a 20-minute track has; chunk 3 never
    // arrived and chunk 7 arrived empty.
    let s3 = world.s3.client();
    let put = |seq: u32, body: Vec<u8>| {
        let (s3, bucket) = (s3.clone(), world.bucket.clone());
        let key = format!("riverside/chunks/{room}/{rec}/{guest_id}/{seq:08}.webm");
        async move {
            s3.put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .send()
                .await
                .expect("put a chunk");
        }
    };
    let mut puts = tokio::task::JoinSet::new();
    for seq in (0..1205u32).filter(|s| *s != 3) {
        puts.spawn(put(seq, if seq == 7 { Vec::new() } else { vec![1u8; 16] }));
        if puts.len() >= 32 {
            puts.join_next().await.expect("a put").expect("joined");
        }
    }
    while let Some(done) = puts.join_next().await {
        done.expect("joined");
    }

    let (status, early) = api.seal(&guest, &rec, 1205).await;
    assert_eq!(
        (status, early["code"].as_str()),
        (409, Some("not_stopped")),
        "{early}"
    );
    let (status, stopped) = api
        .post(&format!("/api/recordings/{rec}/stop"), Some(&host), None)
        .await;
    assert_eq!(status, 201, "{stopped}");

    // Each wrong seal is refused with the first chunk at fault; the page fixes it and seals again.
    let refusals = [
        (1205, "chunk_missing", 3, "chunk 00000003"),
        (1205, "chunk_empty", 7, "chunk 00000007"),
        (1204, "chunk_count_mismatch", 1204, "chunk 00001204"),
    ];
    for (count, code, chunk, named) in refusals {
        let (status, refused) = api.seal(&guest, &rec, count).await;
        assert_eq!(status, 409, "{refused}");
        assert_eq!(refused["code"], code, "{refused}");
        assert_eq!(refused["chunk"], chunk, "{refused}");
        let detail = refused["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(named), "{detail}");
        match code {
            "chunk_missing" => put(3, vec![1u8; 16]).await,
            "chunk_empty" => put(7, vec![1u8; 16]).await,
            _ => {}
        }
        let rj = &recording_jobs(&world).await[0];
        assert_eq!(
            rj.spec.tracks[0].source.chunk_count, None,
            "a refused seal changes nothing"
        );
    }
    // A participant whose first chunk landed after the stop is added, sealed, while the
    // recording still waits for uploads (the guest's track is still open).
    let (status, url) = api
        .post(
            &format!("/api/recordings/{rec}/chunks/0/upload-url"),
            Some(&late),
            Some(json!({"size": 16})),
        )
        .await;
    assert_eq!(status, 200, "{url}");
    assert_eq!(put_chunk(&url, vec![2u8; 16]).await.0, 200);
    let (status, added) = api.seal(&late, &rec, 1).await;
    assert_eq!(status, 200, "{added}");
    let (status, sealed) = api.seal(&guest, &rec, 1205).await;
    assert_eq!(status, 200, "{sealed}");
    assert_eq!(sealed["alreadySealed"], false, "{sealed}");
    // A retry after success is answered as done; another count is not.
    let (status, again) = api.seal(&guest, &rec, 1205).await;
    assert_eq!(
        (status, &again["alreadySealed"]),
        (200, &json!(true)),
        "{again}"
    );
    let (status, other) = api.seal(&guest, &rec, 1206).await;
    assert_eq!(
        (status, other["code"].as_str()),
        (409, Some("already_sealed")),
        "{other}"
    );
    // A bad body is named.
    let (status, bad) = api
        .post(
            &format!("/api/recordings/{rec}/tracks/complete"),
            Some(&guest),
            Some(json!({"chunkCount": -1})),
        )
        .await;
    assert_eq!(status, 400, "{bad}");
    let (status, zero) = api.seal(&guest, &rec, 0).await;
    assert_eq!(
        (status, zero["code"].as_str()),
        (400, Some("bad_request")),
        "{zero}"
    );

    let rj = &recording_jobs(&world).await[0];
    let tracks: Vec<(String, Option<u32>)> = rj
        .spec
        .tracks
        .iter()
        .map(|t| (t.participant_id.clone(), t.source.chunk_count))
        .collect();
    assert_eq!(
        tracks,
        [(guest_id.clone(), Some(1205)), (late_id.clone(), Some(1))],
        "the seal landed on the RecordingJob and the late participant was added"
    );
    assert_eq!(
        rj.spec.tracks[1].source.prefix,
        format!("riverside/chunks/{room}/{rec}/{late_id}/")
    );
    assert_eq!(
        api.metric("mixdown_api_seals_total{result=\"sealed\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_tells_the_sockets_and_cors_admits_only_the_studio() {
    let world = World::new(&[("never:test", "exit 1")]).await;
    let mut api = ApiServer::start(&world, &["--studio-origins", "https://studio.example"]).await;
    let (_, host, _) = api.create_room().await;

    for (origin, allowed) in [
        ("https://studio.example", true),
        ("https://elsewhere.example", false),
    ] {
        let response = reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, format!("{}/api/rooms", api.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
            .await
            .expect("preflight");
        let echoed = response
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert_eq!(
            echoed.as_deref() == Some(origin),
            allowed,
            "{origin}: {echoed:?}"
        );
    }

    let mut clients = Clients::start();
    clients
        .connect("host", &api.url, Some(&host))
        .await
        .expect("connects");
    // A round trip and a moment, so that the client is past its upgrade to WebSocket.
    clients.emit_ack("host", "start_recording", json!({})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = api
        .terminate(Duration::from_secs(10))
        .expect("the API exits on SIGTERM");
    assert!(status.success(), "exit status {status}");
    clients
        .wait_event("host", "server-shutdown", WAIT, |e| e["reconnect"] == true)
        .await;
    let start = std::time::Instant::now();
    while clients.disconnects("host").is_empty() && start.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A closed transport, not a server-side disconnect: socket.io clients reconnect by themselves.
    assert_eq!(clients.disconnects("host"), ["transport close"]);
}
