//! The worker as a process against the test kit's S3 server, on recordings generated with
//! ffmpeg and split into one-second chunks like MediaRecorder's: each profile, two tracks, bad
//! input, unsealed tracks, a storage outage mid-upload, progress, and the settings.

mod common;

use std::time::Duration;

use common::*;
use mixdown_testkit::s3::S3Server;
use serde_json::Value;

const ROOM: &str = "room1";

struct Setup {
    server: S3Server,
    bucket: String,
    client: aws_sdk_s3::Client,
    dir: tempfile::TempDir,
}

async fn setup() -> anyhow::Result<Setup> {
    require_ffmpeg();
    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let client = server.client();
    Ok(Setup {
        server,
        bucket,
        client,
        dir: tempfile::tempdir()?,
    })
}

impl Setup {
    /// Puts `spec`'s chunks for `participant` of `recording`; returns the prefix and chunk count.
    async fn record(
        &self,
        spec: &Spec,
        recording: &str,
        participant: &str,
    ) -> anyhow::Result<(String, u32)> {
        let chunks = chunks(spec)?;
        let prefix = chunk_prefix(ROOM, recording, participant);
        put_chunks(&self.client, &self.bucket, &prefix, &chunks).await?;
        Ok((prefix, chunks.len() as u32))
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        keys(&self.client, &self.bucket, prefix)
            .await
            .expect("listing")
    }

    fn assert_no_incomplete_upload(&self) {
        assert_eq!(
            self.server.incomplete_uploads(&self.bucket),
            Vec::<String>::new(),
            "a multipart upload was left behind"
        );
    }
}

fn output_key(recording: &str, participant: &str, ext: &str) -> String {
    format!("riverside/processed/{ROOM}/{recording}/{participant}.{ext}")
}

/// The report's outputs, checked against the object in storage; each lasts 30 s ± 0.5 s.
async fn assert_reported(setup: &Setup, run: &WorkerRun, expected: &[(&str, &str)]) {
    assert_reported_lasting(setup, run, expected, 30.0, 0.5).await;
}

/// [`assert_reported`] for outputs of `seconds` ± `tolerance`.
async fn assert_reported_lasting(
    setup: &Setup,
    run: &WorkerRun,
    expected: &[(&str, &str)],
    seconds: f64,
    tolerance: f64,
) {
    let report = run
        .report
        .as_ref()
        .unwrap_or_else(|| panic!("no report\n{}", run.explain()));
    assert_eq!(report["result"], "succeeded", "{}", run.explain());
    let outputs = report["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), expected.len(), "{}", run.explain());
    for (output, (participant, key)) in outputs.iter().zip(expected) {
        assert_eq!(output["participantId"], *participant);
        assert_eq!(output["key"], *key);
        let stored = get(&setup.client, &setup.bucket, key)
            .await
            .expect("output exists");
        assert_eq!(
            output["sizeBytes"].as_u64(),
            Some(stored.len() as u64),
            "sizeBytes"
        );
        let duration = output["durationSeconds"].as_f64().expect("durationSeconds");
        assert!(
            (duration - seconds).abs() <= tolerance,
            "reported duration {duration}, expected {seconds} ± {tolerance}"
        );
        // Every output says whether its track was sealed and how many chunks its file holds.
        assert!(output["sealed"].is_boolean(), "sealed: {output}");
        assert!(output["chunks"].as_u64().is_some(), "chunks: {output}");
    }
    assert_eq!(
        run.stdout.trim(),
        run.report_text.trim(),
        "the report is printed on stdout too"
    );
}

/// The report's output of `participant`: whether its track was sealed, how many chunks its file
/// holds, and `(missingChunk, chunksKept)` of what was left out.
fn assert_chunks_reported(
    run: &WorkerRun,
    participant: &str,
    sealed: bool,
    chunks: u64,
    left_out: Option<(u64, u64)>,
) {
    let outputs = run
        .report
        .as_ref()
        .and_then(|r| r["outputs"].as_array())
        .unwrap_or_else(|| panic!("no outputs\n{}", run.explain()));
    let output = outputs
        .iter()
        .find(|o| o["participantId"] == participant)
        .unwrap_or_else(|| panic!("no output of {participant}\n{}", run.explain()));
    assert_eq!(output["sealed"], sealed, "{output}");
    assert_eq!(output["chunks"].as_u64(), Some(chunks), "{output}");
    match left_out {
        Some((missing, kept)) => {
            assert_eq!(
                output["leftOut"]["missingChunk"].as_u64(),
                Some(missing),
                "{output}"
            );
            assert_eq!(
                output["leftOut"]["chunksKept"].as_u64(),
                Some(kept),
                "{output}"
            );
        }
        None => assert!(output.get("leftOut").is_none(), "{output}"),
    }
}

/// Plays from 0, lasts 30 s ± 0.5 s.
fn assert_timing(probe: &Probe) {
    assert!(
        (probe.duration - 30.0).abs() <= 0.5,
        "duration {} in {probe:?}",
        probe.duration
    );
    assert!(
        probe.start_time.abs() < 0.1,
        "starts at {} in {probe:?}",
        probe.start_time
    );
    for (kind, _, start) in &probe.streams {
        assert!(start.abs() < 0.1, "{kind} starts at {start}: {probe:?}");
    }
}

/// Top-level MP4 boxes, in file order.
fn mp4_boxes(bytes: &[u8]) -> Vec<String> {
    let mut boxes = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        boxes.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        let size = if size == 1 && at + 16 <= bytes.len() {
            u64::from_be_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes")) as usize
        } else {
            size
        };
        if size < 8 {
            break;
        }
        at += size;
    }
    boxes
}

fn assert_fast_start(bytes: &[u8]) {
    let boxes = mp4_boxes(bytes);
    let moov = boxes.iter().position(|b| b == "moov");
    let mdat = boxes.iter().position(|b| b == "mdat");
    assert!(
        moov.is_some() && moov < mdat,
        "the index (moov) must come before the media (mdat): {boxes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mp4_profile_turns_a_vp8_recording_into_h264_and_aac_that_starts_fast() -> anyhow::Result<()>
{
    let setup = setup().await?;
    let (prefix, count) = setup.record(&VP8_30S, "rec-mp4", "alice").await?;
    let job = job(ROOM, "rec-mp4", vec![track("alice", &prefix, count)], "mp4");

    let run = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    assert_eq!(run.code(), Some(0), "{}", run.explain());
    let key = output_key("rec-mp4", "alice", "mp4");
    assert_reported(&setup, &run, &[("alice", &key)]).await;
    let (probe, path) = probe_object(&setup.client, &setup.bucket, &key, setup.dir.path()).await?;
    assert_eq!(probe.codec("video"), Some("h264"), "{probe:?}");
    assert_eq!(probe.codec("audio"), Some("aac"), "{probe:?}");
    assert_timing(&probe);
    assert_fast_start(&std::fs::read(path)?);
    assert_eq!(
        setup.keys(&prefix).await,
        Vec::<String>::new(),
        "chunks must be deleted"
    );
    setup.assert_no_incomplete_upload();

    // Progress: 0 first, never backwards, 100 at the end, and values in between.
    let progress = logged_progress(&run.stderr);
    assert_eq!(progress.first(), Some(&0), "{progress:?}");
    assert_eq!(progress.last(), Some(&100), "{progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {progress:?}"
    );
    assert!(
        progress.iter().any(|p| (1..100).contains(p)),
        "no progress between 0 and 100: {progress:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mp4_profile_copies_h264_video_and_converts_only_the_audio() -> anyhow::Result<()> {
    let setup = setup().await?;
    let (prefix, count) = setup.record(&H264_30S, "rec-h264", "alice").await?;
    let job = job(
        ROOM,
        "rec-h264",
        vec![track("alice", &prefix, count)],
        "mp4",
    );

    let run = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    assert_eq!(run.code(), Some(0), "{}", run.explain());
    let key = output_key("rec-h264", "alice", "mp4");
    assert_reported(&setup, &run, &[("alice", &key)]).await;
    let (probe, path) = probe_object(&setup.client, &setup.bucket, &key, setup.dir.path()).await?;
    assert_eq!(probe.codec("video"), Some("h264"));
    assert_eq!(
        probe.codec("audio"),
        Some("aac"),
        "the Opus audio is converted"
    );
    assert_timing(&probe);
    assert_fast_start(&std::fs::read(&path)?);
    // Copied, not encoded again: the very same video packets.
    let recorded = video_packet_hashes(&recording(&H264_30S)?)?;
    let produced = video_packet_hashes(&path)?;
    assert_eq!(recorded.len(), produced.len(), "video packet count");
    assert!(
        recorded == produced,
        "the video packets differ: the video was encoded, not copied"
    );
    assert!(
        run.stderr.contains("copies_video=true"),
        "{}",
        run.explain()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn webm_profile_copies_the_streams_into_a_file_with_a_duration() -> anyhow::Result<()> {
    let setup = setup().await?;
    let (prefix, count) = setup.record(&VP8_30S, "rec-webm", "alice").await?;
    let job = job(
        ROOM,
        "rec-webm",
        vec![track("alice", &prefix, count)],
        "webm",
    );

    let run = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    assert_eq!(run.code(), Some(0), "{}", run.explain());
    let key = output_key("rec-webm", "alice", "webm");
    assert_reported(&setup, &run, &[("alice", &key)]).await;
    // `probe` fails on a file without a duration, which is what a WebM written to a pipe is.
    let (probe, _) = probe_object(&setup.client, &setup.bucket, &key, setup.dir.path()).await?;
    assert_eq!(probe.codec("video"), Some("vp8"), "{probe:?}");
    assert_eq!(probe.codec("audio"), Some("opus"), "{probe:?}");
    assert!(probe.format.contains("webm"), "{probe:?}");
    assert!((probe.duration - 30.0).abs() <= 0.5, "{probe:?}");
    assert!(probe.start_time.abs() < 0.1, "{probe:?}");
    assert_eq!(
        setup.keys(&prefix).await,
        Vec::<String>::new(),
        "chunks must be deleted"
    );
    setup.assert_no_incomplete_upload();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn audio_profile_keeps_only_the_audio_run_by_hand_with_a_job_file() -> anyhow::Result<()> {
    let setup = setup().await?;
    let (prefix, count) = setup.record(&VP9_30S, "rec-audio", "alice").await?;
    let job = job(
        ROOM,
        "rec-audio",
        vec![track("alice", &prefix, count)],
        "audio",
    );
    let job_file = setup.dir.path().join("job.json");
    std::fs::write(&job_file, job.to_string())?;

    let run = run_worker_with_args(
        &setup.server,
        &setup.bucket,
        &Value::Null,
        &[],
        &["--job-file", job_file.to_str().expect("utf-8 path")],
    )
    .await?;

    assert_eq!(run.code(), Some(0), "{}", run.explain());
    let key = output_key("rec-audio", "alice", "m4a");
    assert_reported(&setup, &run, &[("alice", &key)]).await;
    let (probe, path) = probe_object(&setup.client, &setup.bucket, &key, setup.dir.path()).await?;
    assert_eq!(probe.codec("audio"), Some("aac"), "{probe:?}");
    assert_eq!(probe.codec("video"), None, "audio only: {probe:?}");
    assert_timing(&probe);
    assert_fast_start(&std::fs::read(path)?);
    assert_eq!(
        setup.keys(&prefix).await,
        Vec::<String>::new(),
        "chunks must be deleted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tracks_in_one_job_both_come_out_right() -> anyhow::Result<()> {
    let setup = setup().await?;
    let (alice, alice_count) = setup.record(&VP8_30S, "rec-two", "alice").await?;
    let (bob, bob_count) = setup.record(&VP9_30S, "rec-two", "bob").await?;
    let job = job(
        ROOM,
        "rec-two",
        vec![
            track("alice", &alice, alice_count),
            track("bob", &bob, bob_count),
        ],
        "mp4",
    );

    let run = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    assert_eq!(run.code(), Some(0), "{}", run.explain());
    let keys = [
        output_key("rec-two", "alice", "mp4"),
        output_key("rec-two", "bob", "mp4"),
    ];
    assert_reported(&setup, &run, &[("alice", &keys[0]), ("bob", &keys[1])]).await;
    assert_chunks_reported(&run, "alice", true, u64::from(alice_count), None);
    assert_chunks_reported(&run, "bob", true, u64::from(bob_count), None);
    for key in &keys {
        let (probe, _) = probe_object(&setup.client, &setup.bucket, key, setup.dir.path()).await?;
        assert_eq!(probe.codec("video"), Some("h264"), "{key}: {probe:?}");
        assert_eq!(probe.codec("audio"), Some("aac"), "{key}: {probe:?}");
        assert_timing(&probe);
    }
    assert_eq!(
        setup.keys(&chunk_prefix(ROOM, "rec-two", "")).await,
        Vec::<String>::new()
    );
    setup.assert_no_incomplete_upload();
    Ok(())
}

/// What a bad-input case does to the 30 chunks before the worker runs.
enum Damage {
    Remove(usize),
    Replace(usize, Vec<u8>),
    /// The two chunks' objects hold each other's bytes.
    Swap(usize, usize),
    RemoveAll,
    None,
}

/// Deterministic bytes that are not WebM.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as u8
        })
        .collect()
}

/// Runs the worker (webm profile, whose upload opens before ffmpeg starts) on damaged chunks of
/// a track sealed with their count plus `count_delta`, and checks: exit 2, the reason, a message
/// naming the problem, every chunk still there, no output, no incomplete upload.
async fn bad_input(
    recording: &str,
    damage: Damage,
    count_delta: i32,
    reason: &str,
    names: &str,
) -> anyhow::Result<()> {
    bad_input_of(recording, damage, Some(count_delta), reason, names).await
}

/// [`bad_input`]; `count_delta` `None` leaves the track unsealed.
async fn bad_input_of(
    recording: &str,
    damage: Damage,
    count_delta: Option<i32>,
    reason: &str,
    names: &str,
) -> anyhow::Result<()> {
    bad_input_naming_one_of(recording, damage, count_delta, reason, &[names]).await
}

/// [`bad_input_of`] for damage that two checks can find first: the message names one of `names`.
async fn bad_input_naming_one_of(
    recording: &str,
    damage: Damage,
    count_delta: Option<i32>,
    reason: &str,
    names: &[&str],
) -> anyhow::Result<()> {
    let setup = setup().await?;
    let mut chunks: Vec<Option<Vec<u8>>> = chunks(&VP8_30S)?.into_iter().map(Some).collect();
    let confirmed = count_delta.map(|delta| (chunks.len() as i32 + delta) as u32);
    match damage {
        Damage::Remove(i) => chunks[i] = None,
        Damage::Replace(i, bytes) => chunks[i] = Some(bytes),
        Damage::Swap(i, j) => chunks.swap(i, j),
        Damage::RemoveAll => chunks.iter_mut().for_each(|c| *c = None),
        Damage::None => {}
    }
    let prefix = chunk_prefix(ROOM, recording, "alice");
    let mut expected_keys = Vec::new();
    for (seq, chunk) in chunks.iter().enumerate() {
        if let Some(bytes) = chunk {
            let key = format!("{prefix}{seq:08}.webm");
            put(&setup.client, &setup.bucket, &key, bytes.clone()).await?;
            expected_keys.push(key);
        }
    }
    let track = match confirmed {
        Some(count) => track("alice", &prefix, count),
        None => unsealed_track("alice", &prefix),
    };
    let job = job(ROOM, recording, vec![track], "webm");

    let run = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    assert_eq!(run.code(), Some(2), "{}", run.explain());
    assert_eq!(run.reason(), reason, "{}", run.explain());
    assert!(
        names.iter().any(|names| run.message().contains(names)),
        "the message should name one of {names:?}: {}",
        run.explain()
    );
    assert!(
        run.message().contains("alice"),
        "the message should name the track: {}",
        run.message()
    );
    assert_eq!(
        setup.keys(&prefix).await,
        expected_keys,
        "every chunk must stay"
    );
    assert_eq!(
        setup.keys(&format!("riverside/processed/{ROOM}/")).await,
        Vec::<String>::new(),
        "no output"
    );
    setup.assert_no_incomplete_upload();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_is_bad_input() -> anyhow::Result<()> {
    bad_input(
        "rec-gap",
        Damage::Remove(7),
        0,
        "MissingChunk",
        "00000007.webm",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_first_chunk_is_bad_input() -> anyhow::Result<()> {
    bad_input(
        "rec-first",
        Damage::Remove(0),
        0,
        "MissingChunk",
        "00000000.webm",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_chunk_is_bad_input_and_named() -> anyhow::Result<()> {
    let size = chunks(&VP8_30S)?[12].len();
    bad_input(
        "rec-corrupt",
        Damage::Replace(12, garbage(size, 12)),
        0,
        "UnreadableChunk",
        "00000012.webm",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn damage_inside_a_middle_chunk_names_that_chunk_exactly() -> anyhow::Result<()> {
    // The middle third of chunk 5 overwritten, its size kept: ffmpeg's demuxer complains at a
    // byte position (`at pos. 0x…`, `Element at 0x…`) that lies in chunk 5, and the worker
    // names chunk 5, not the chunk it was feeding when the complaint came.
    let mut chunk = chunks(&VP8_30S)?[5].clone();
    let (from, to) = (chunk.len() / 3, 2 * chunk.len() / 3);
    chunk[from..to].copy_from_slice(&garbage(to - from, 5));
    bad_input(
        "rec-damaged",
        Damage::Replace(5, chunk),
        0,
        "UnreadableChunk",
        "chunk 00000005.webm is unreadable (byte ",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_element_in_a_middle_chunk_names_that_chunk_exactly() -> anyhow::Result<()> {
    // The ID and size of chunk 5's first Cluster overwritten with an unknown element's, larger
    // than the file: ffmpeg says `Unknown element 14A68DB3 at pos. 0x… considered as invalid
    // data. Last known good position 0x…`, a position in chunk 5 (the worker once read none in
    // it and named the chunk it was feeding, two later).
    let mut chunk = chunks(&VP8_30S)?[5].clone();
    let cluster = chunk
        .windows(4)
        .position(|w| w == [0x1F, 0x43, 0xB6, 0x75])
        .expect("chunk 5 holds a Cluster start");
    let unknown = [
        0x14, 0xA6, 0x8D, 0xB3, 0x01, 0x00, 0x00, 0x01, 0x27, 0x4F, 0x6C, 0xBB,
    ];
    chunk[cluster..cluster + unknown.len()].copy_from_slice(&unknown);
    bad_input(
        "rec-unknown-element",
        Damage::Replace(5, chunk),
        0,
        "UnreadableChunk",
        &format!("chunk 00000005.webm is unreadable (byte {cluster} of the chunk): ffmpeg: Unknown element 14A68DB3 at pos. 0x"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_stored_twice_under_two_numbers_is_bad_input_and_named() -> anyhow::Result<()> {
    // Chunk 8's object holds a copy of chunk 7: the real chunk 8 never arrived.
    let copy = chunks(&VP8_30S)?[7].clone();
    bad_input(
        "rec-duplicate",
        Damage::Replace(8, copy),
        0,
        "UnreadableChunk",
        "chunk 00000008.webm of alice holds exactly the bytes of chunk 00000007.webm",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_out_of_order_are_bad_input_and_named() -> anyhow::Result<()> {
    // Chunk 7's object holds what chunk 8 recorded and the other way round. Two checks can
    // find it, whichever is first: ffmpeg, at the byte of chunk 7 where its bytes meet chunk 6's,
    // or the worker, at chunk 8, whose packets go back in time after chunk 7's by more than a
    // second (its check runs before ffmpeg gets chunk 8, not before ffmpeg reads chunk 7).
    bad_input_naming_one_of(
        "rec-swapped",
        Damage::Swap(7, 8),
        Some(0),
        "UnreadableChunk",
        &[
            "chunk 00000007.webm is unreadable (byte ",
            "chunk 00000008.webm of alice is out of place",
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_stored_again_under_a_later_number_is_bad_input_and_named() -> anyhow::Result<()> {
    // Chunk 12's object holds chunk 3's bytes: its packets are 9 s before chunk 11's. The worker
    // finds it before ffmpeg gets the chunk.
    let earlier = chunks(&VP8_30S)?[3].clone();
    bad_input(
        "rec-again",
        Damage::Replace(12, earlier),
        0,
        "UnreadableChunk",
        "chunk 00000012.webm of alice is out of place (out of order, stored again, or from another recording): its first packet is at",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_from_far_later_in_the_recording_is_bad_input_and_named() -> anyhow::Result<()> {
    // Chunk 5's object holds chunk 25's bytes: its packets are 20 s after chunk 4's.
    let later = chunks(&VP8_30S)?[25].clone();
    bad_input(
        "rec-later",
        Damage::Replace(5, later),
        0,
        "UnreadableChunk",
        "chunk 00000005.webm of alice is out of place",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_first_chunk_is_bad_input() -> anyhow::Result<()> {
    let size = chunks(&VP8_30S)?[0].len();
    bad_input(
        "rec-header",
        Damage::Replace(0, garbage(size, 0)),
        0,
        "UnreadableChunk",
        "00000000.webm",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_chunk_is_bad_input() -> anyhow::Result<()> {
    bad_input(
        "rec-empty",
        Damage::Replace(4, Vec::new()),
        0,
        "UnreadableChunk",
        "00000004.webm is empty",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_chunks_is_bad_input() -> anyhow::Result<()> {
    bad_input(
        "rec-none",
        Damage::RemoveAll,
        0,
        "NoChunks",
        "no chunks under riverside/chunks/room1/rec-none/alice/",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_count_is_bad_input() -> anyhow::Result<()> {
    bad_input(
        "rec-count",
        Damage::None,
        1,
        "ChunkCountMismatch",
        "confirmed 31",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsealed_track_is_processed_up_to_its_first_gap_and_the_chunks_after_it_are_kept()
-> anyhow::Result<()> {
    let setup = setup().await?;
    // Chunks 0 to 4 and 6 to 7 of a 30-chunk recording: 5 never arrived, nor did 8 to 29.
    let chunks = chunks(&VP8_30S)?;
    let prefix = chunk_prefix(ROOM, "rec-unsealed-gap", "alice");
    for seq in (0..5).chain(6..8) {
        let key = format!("{prefix}{seq:08}.webm");
        put(&setup.client, &setup.bucket, &key, chunks[seq].clone()).await?;
    }
    let job = job(
        ROOM,
        "rec-unsealed-gap",
        vec![unsealed_track("alice", &prefix)],
        "mp4",
    );

    let run = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    assert_eq!(run.code(), Some(0), "{}", run.explain());
    let key = output_key("rec-unsealed-gap", "alice", "mp4");
    // One-second chunks: the file is the 5 chunks before the gap, not the 8 in storage.
    assert_reported_lasting(&setup, &run, &[("alice", &key)], 5.0, 0.75).await;
    assert_chunks_reported(&run, "alice", false, 5, Some((5, 2)));
    let (probe, _) = probe_object(&setup.client, &setup.bucket, &key, setup.dir.path()).await?;
    assert_eq!(probe.codec("video"), Some("h264"), "{probe:?}");
    assert!((probe.duration - 5.0).abs() <= 0.75, "{probe:?}");
    assert!(probe.start_time.abs() < 0.1, "{probe:?}");
    assert_eq!(
        setup.keys(&prefix).await,
        vec![
            format!("{prefix}00000006.webm"),
            format!("{prefix}00000007.webm")
        ],
        "chunks 0 to 4 are deleted, the ones after the gap kept"
    );
    assert!(
        run.stderr.contains("track alice was not sealed")
            && run.stderr.contains("00000005.webm was missing"),
        "the log should say what was left out: {}",
        run.explain()
    );
    setup.assert_no_incomplete_upload();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsealed_track_with_every_chunk_is_processed_whole_next_to_a_sealed_one()
-> anyhow::Result<()> {
    let setup = setup().await?;
    let (alice, alice_count) = setup.record(&VP8_30S, "rec-mixed", "alice").await?;
    let (bob, bob_count) = setup.record(&VP9_30S, "rec-mixed", "bob").await?;
    let job = job(
        ROOM,
        "rec-mixed",
        vec![
            track("alice", &alice, alice_count),
            unsealed_track("bob", &bob),
        ],
        "webm",
    );

    let run = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    assert_eq!(run.code(), Some(0), "{}", run.explain());
    let keys = [
        output_key("rec-mixed", "alice", "webm"),
        output_key("rec-mixed", "bob", "webm"),
    ];
    assert_reported(&setup, &run, &[("alice", &keys[0]), ("bob", &keys[1])]).await;
    assert_chunks_reported(&run, "alice", true, u64::from(alice_count), None);
    assert_chunks_reported(&run, "bob", false, u64::from(bob_count), None);
    for key in &keys {
        let (probe, _) = probe_object(&setup.client, &setup.bucket, key, setup.dir.path()).await?;
        assert!((probe.duration - 30.0).abs() <= 0.5, "{key}: {probe:?}");
    }
    assert_eq!(
        setup.keys(&chunk_prefix(ROOM, "rec-mixed", "")).await,
        Vec::<String>::new(),
        "every chunk of both tracks is deleted"
    );
    assert!(
        run.stderr
            .contains("track bob was not sealed: its file holds chunks 00000000.webm to 00000029.webm, all that storage held"),
        "{}",
        run.explain()
    );
    setup.assert_no_incomplete_upload();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsealed_track_without_its_first_chunk_is_bad_input() -> anyhow::Result<()> {
    bad_input_of(
        "rec-unsealed-first",
        Damage::Remove(0),
        None,
        "MissingChunk",
        "the track was not sealed and its chunk 00000000.webm is missing",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsealed_track_with_an_empty_first_chunk_is_bad_input() -> anyhow::Result<()> {
    bad_input_of(
        "rec-unsealed-empty",
        Damage::Replace(0, Vec::new()),
        None,
        "MissingChunk",
        "the track was not sealed and its chunk 00000000.webm is empty",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_going_away_mid_upload_is_transient_and_a_rerun_succeeds() -> anyhow::Result<()> {
    let setup = setup().await?;
    let (prefix, count) = setup.record(&VP8_LARGE_30S, "rec-outage", "alice").await?;
    let chunk_keys = setup.keys(&prefix).await;
    let job = job(
        ROOM,
        "rec-outage",
        vec![track("alice", &prefix, count)],
        "webm",
    );
    // Three 5 MiB parts; storage goes away once the first part is in, for 8 s. The worker gives
    // up on the upload quickly (two attempts per request) and keeps trying to abort it.
    let settings = [
        ("MIXDOWN_PART_SIZE_MIB", "5"),
        ("MIXDOWN_S3_MAX_ATTEMPTS", "2"),
    ];
    setup
        .server
        .outage_after_upload_parts(1, Duration::from_secs(8));

    let run = run_worker(&setup.server, &setup.bucket, &job, &settings).await?;

    assert_eq!(run.code(), Some(1), "{}", run.explain());
    assert_eq!(run.reason(), "StorageError", "{}", run.explain());
    assert!(
        setup.server.request_count("UploadPart") >= 1,
        "the outage must come mid-upload"
    );
    setup.server.set_available(true);
    assert_eq!(
        setup.keys(&prefix).await,
        chunk_keys,
        "every chunk must stay"
    );
    setup.assert_no_incomplete_upload();
    let output = output_key("rec-outage", "alice", "webm");
    assert!(
        !setup.keys(&output).await.contains(&output),
        "no output after a failed run"
    );

    let rerun = run_worker(&setup.server, &setup.bucket, &job, &settings).await?;

    assert_eq!(rerun.code(), Some(0), "{}", rerun.explain());
    assert_reported(&setup, &rerun, &[("alice", &output)]).await;
    let (probe, _) = probe_object(&setup.client, &setup.bucket, &output, setup.dir.path()).await?;
    assert_eq!(probe.codec("video"), Some("vp8"));
    assert!((probe.duration - 30.0).abs() <= 0.5, "{probe:?}");
    assert_eq!(
        setup.keys(&prefix).await,
        Vec::<String>::new(),
        "chunks deleted after the rerun"
    );
    setup.assert_no_incomplete_upload();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_settings_are_bad_input_with_a_report() -> anyhow::Result<()> {
    let setup = setup().await?;
    let job = job(
        ROOM,
        "rec-settings",
        vec![track("alice", "riverside/chunks/x/", 1)],
        "mp4",
    );

    let no_bucket = run_worker(
        &setup.server,
        &setup.bucket,
        &job,
        &[("MIXDOWN_S3_BUCKET", "")],
    )
    .await?;
    assert_eq!(no_bucket.code(), Some(2), "{}", no_bucket.explain());
    assert_eq!(no_bucket.reason(), "InvalidInput");
    assert!(
        no_bucket.message().contains("MIXDOWN_S3_BUCKET"),
        "{}",
        no_bucket.explain()
    );

    let bad_job = run_worker(
        &setup.server,
        &setup.bucket,
        &serde_json::json!({"roomId": "r"}),
        &[],
    )
    .await?;
    assert_eq!(bad_job.code(), Some(2), "{}", bad_job.explain());
    assert_eq!(bad_job.reason(), "InvalidInput");

    let bad_flag = run_worker_with_args(
        &setup.server,
        &setup.bucket,
        &job,
        &[],
        &["--part-size-mib", "1"],
    )
    .await?;
    assert_eq!(bad_flag.code(), Some(2), "{}", bad_flag.explain());
    assert_eq!(bad_flag.reason(), "InvalidInput", "{}", bad_flag.explain());
    Ok(())
}

#[test]
fn help_documents_every_setting() {
    let output = std::process::Command::new(WORKER)
        .arg("--help")
        .output()
        .expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--job-file",
        "MIXDOWN_JOB",
        "MIXDOWN_S3_ENDPOINT",
        "MIXDOWN_S3_REGION",
        "MIXDOWN_S3_BUCKET",
        "MIXDOWN_S3_PATH_STYLE",
        "MIXDOWN_SCRATCH_DIR",
        "MIXDOWN_TERMINATION_MESSAGE_PATH",
        "MIXDOWN_RECORDING_JOB",
        "MIXDOWN_NAMESPACE",
        "MIXDOWN_DOWNLOAD_AHEAD",
        "MIXDOWN_PARALLEL_TRACKS",
        "MIXDOWN_PART_SIZE_MIB",
        "AWS_ACCESS_KEY_ID",
        "Exit codes",
    ] {
        assert!(
            help.contains(needle),
            "--help does not mention {needle}:\n{help}"
        );
    }
}

#[test]
fn the_first_chunk_of_each_recording_names_its_codecs() {
    for (spec, video) in [(&VP8_30S, "vp8"), (&VP9_30S, "vp9"), (&H264_30S, "h264")] {
        let chunks = chunks(spec).expect("recording");
        let streams = mixdown_worker::webm::codecs(&chunks[0]).expect("the header parses");
        assert_eq!(streams.video.as_deref(), Some(video), "{}", spec.name);
        assert_eq!(streams.audio.as_deref(), Some("opus"), "{}", spec.name);
    }
}
