//! The mixdown, as a user would check it: the real worker against the test kit's S3 server, on
//! recordings generated with ffmpeg, and the file it leaves measured with ffmpeg: where each
//! participant's sound is, what each tile shows and when, the loudness, the length. Then what
//! happens when the mixdown cannot be made, when the worker is killed while making it, with 32
//! participants, and without one.

mod common;

use std::time::Duration;

use common::tap::{Rule, Tap};
use common::*;
use mixdown_testkit::s3::S3Server;
use serde_json::{Value, json};

const ROOM: &str = "room-mix";
/// The encodes of these tests need no quality, only speed.
const FAST: [(&str, &str); 1] = [("MIXDOWN_VIDEO_PRESET", "ultrafast")];

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

/// One participant: who, when they started (ms after the recording), their name, the recording.
struct Participant<'a> {
    id: &'a str,
    offset_ms: Option<i64>,
    name: Option<&'a str>,
    recording: std::path::PathBuf,
    seconds: u32,
}

impl Setup {
    /// Puts every participant's chunks and returns the job (composite, chunks deleted).
    async fn job(
        &self,
        recording: &str,
        participants: &[Participant<'_>],
        profile: &str,
    ) -> anyhow::Result<Value> {
        let mut tracks = Vec::new();
        for p in participants {
            let prefix = chunk_prefix(ROOM, recording, p.id);
            let chunks = split(&std::fs::read(&p.recording)?, p.seconds);
            put_chunks(&self.client, &self.bucket, &prefix, &chunks).await?;
            let mut t = track(p.id, &prefix, chunks.len() as u32);
            if let Some(offset) = p.offset_ms {
                t["startOffsetMs"] = json!(offset);
            }
            if let Some(name) = p.name {
                t["displayName"] = json!(name);
            }
            tracks.push(t);
        }
        let mut job = job(ROOM, recording, tracks, profile);
        job["composite"] = json!(true);
        Ok(job)
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        keys(&self.client, &self.bucket, prefix)
            .await
            .expect("listing")
    }

    async fn download(&self, key: &str) -> anyhow::Result<std::path::PathBuf> {
        let (_, path) = probe_object(&self.client, &self.bucket, key, self.dir.path()).await?;
        Ok(path)
    }
}

fn processed(recording: &str) -> String {
    format!("riverside/processed/{ROOM}/{recording}/")
}

fn outputs(run: &WorkerRun) -> Vec<Value> {
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    run.report.as_ref().expect("report")["outputs"]
        .as_array()
        .expect("outputs")
        .clone()
}

/// The report's mixdown entry, checked for its shape, and the tracks after it (as many as the
/// termination message holds).
fn mixdown_and_tracks(run: &WorkerRun, key: &str, tracks: usize) -> (Value, Vec<Value>) {
    let outputs = outputs(run);
    if tracks <= 4 {
        assert_eq!(outputs.len(), tracks + 1, "{}", run.explain());
    }
    let mixdown = outputs[0].clone();
    assert_eq!(mixdown["kind"], "mixdown", "{mixdown}");
    assert_eq!(mixdown["key"], key, "{mixdown}");
    assert_eq!(mixdown["sealed"], true);
    assert!(mixdown.get("participantId").is_none(), "{mixdown}");
    assert!(mixdown.get("chunks").is_none(), "{mixdown}");
    assert!(
        run.report
            .as_ref()
            .expect("report")
            .get("mixdownFailure")
            .is_none(),
        "{}",
        run.explain()
    );
    let rest = outputs[1..].to_vec();
    assert!(rest.iter().all(|o| o.get("kind").is_none()), "{outputs:?}");
    (mixdown, rest)
}

/// The file's sound, mono, 48 kHz.
fn pcm(path: &std::path::Path) -> anyhow::Result<Vec<f32>> {
    let output = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-map", "0:a:0", "-ac", "1", "-ar", "48000", "-f", "f32le", "pipe:1",
        ])
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Where the sound between `from` and `to` seconds starts (its first sample above a tenth of
/// the loudest there), and its frequency (from its zero crossings over the next 200 ms).
fn onset(samples: &[f32], from: f64, to: f64) -> (f64, f64) {
    let (a, b) = (
        (from * 48_000.0) as usize,
        ((to * 48_000.0) as usize).min(samples.len()),
    );
    let window = &samples[a..b];
    let peak = window.iter().fold(0f32, |m, s| m.max(s.abs()));
    assert!(peak > 0.01, "no sound between {from} and {to} s");
    let first = window
        .iter()
        .position(|s| s.abs() > peak / 10.0)
        .expect("above a tenth of the peak");
    let burst = &window[first..(first + 9_600).min(window.len())];
    let crossings = burst
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count();
    let seconds = burst.len() as f64 / 48_000.0;
    (
        (a + first) as f64 / 48_000.0,
        crossings as f64 / 2.0 / seconds,
    )
}

/// Mean and standard deviation of the luma in a rectangle of the frame at `at` seconds.
fn region(path: &std::path::Path, at: f64, x: usize, y: usize, w: usize, h: usize) -> (f64, f64) {
    let output = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-ss", &at.to_string(), "-i"])
        .arg(path)
        .args([
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "pipe:1",
        ])
        .output()
        .expect("ffmpeg");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout.len(), 1280 * 720, "a 1280x720 frame");
    let values: Vec<f64> = (y..y + h)
        .flat_map(|row| (x..x + w).map(move |col| (row, col)))
        .map(|(row, col)| f64::from(output.stdout[row * 1280 + col]))
        .collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
    (mean, var.sqrt())
}

/// A tone of `hz` between `at` and `at + 0.3` seconds, silence elsewhere.
fn burst(hz: u32, at: f64, seconds: u32) -> String {
    format!(
        "aevalsrc='if(between(t\\,{at}\\,{})\\,0.5*sin(2*PI*{hz}*t)\\,0)':s=48000:d={seconds}",
        at + 0.3
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_participant_is_where_their_offset_puts_them_in_sound_and_picture()
-> anyhow::Result<()> {
    let setup = setup().await?;
    // A starts with the recording, B 3.0 s later; A's tone at 2.0 s of A's track, B's at 1.5 s
    // of B's: 2.0 s and 4.5 s in the mixdown, which ends with B, at 3.0 + 6.0 s.
    let a = recording_with_sound("mix-burst-a-8s", 8, "320x240", &burst(1000, 2.0, 8))?;
    let b = recording_with_sound("mix-burst-b-6s", 6, "320x240", &burst(2500, 1.5, 6))?;
    let job = setup
        .job(
            "rec-offsets",
            &[
                Participant {
                    id: "alice",
                    offset_ms: None,
                    name: Some("Alice"),
                    recording: a,
                    seconds: 8,
                },
                Participant {
                    id: "bob",
                    offset_ms: Some(3000),
                    name: Some("Bob"),
                    recording: b,
                    seconds: 6,
                },
            ],
            "mp4",
        )
        .await?;

    let started = std::time::Instant::now();
    let run = run_worker(&setup.server, &setup.bucket, &job, &FAST).await?;
    let key = format!("{}mixdown.mp4", processed("rec-offsets"));
    let (mixdown, tracks) = mixdown_and_tracks(&run, &key, 2);
    eprintln!("two tracks and their mixdown in {:?}", started.elapsed());
    assert_eq!(tracks[0]["participantId"], "alice");
    assert_eq!(tracks[1]["participantId"], "bob");

    let path = setup.download(&key).await?;
    let probe = probe(&path)?;
    assert_eq!(probe.codec("video"), Some("h264"));
    assert_eq!(probe.codec("audio"), Some("aac"));
    assert!((probe.duration - 9.0).abs() <= 0.1, "{probe:?}");
    assert!(
        (mixdown["durationSeconds"].as_f64().unwrap_or(0.0) - 9.0).abs() <= 0.1,
        "{mixdown}"
    );
    let stored = get(&setup.client, &setup.bucket, &key).await?;
    assert_eq!(mixdown["sizeBytes"].as_u64(), Some(stored.len() as u64));

    // The sound: each tone where the offsets put it, ±40 ms, and told apart by its pitch.
    let samples = pcm(&path)?;
    let (at_a, hz_a) = onset(&samples, 1.0, 3.5);
    let (at_b, hz_b) = onset(&samples, 3.5, 6.0);
    eprintln!("alice's tone at {at_a:.3} s ({hz_a:.0} Hz), bob's at {at_b:.3} s ({hz_b:.0} Hz)");
    assert!((at_a - 2.0).abs() <= 0.04, "alice's tone at {at_a}");
    assert!((at_b - 4.5).abs() <= 0.04, "bob's tone at {at_b}");
    assert!((hz_a - 1000.0).abs() < 100.0, "{hz_a}");
    assert!((hz_b - 2500.0).abs() < 250.0, "{hz_b}");
    // Silence elsewhere: nothing before alice's tone.
    assert!(samples[..48_000].iter().all(|s| s.abs() < 0.01));

    // The picture: 1280x720, alice on the left half, bob on the right. The video of each fills
    // rows 120 to 600 of its 640x720 tile (4:3 scaled to fit); a band above the name shows a
    // picture (busy) or the placeholder (flat).
    let band = |at: f64, left: usize| region(&path, at, left + 40, 160, 560, 100);
    let (_, alice_early) = band(1.5, 0);
    let (bob_early_mean, bob_early) = band(1.5, 640);
    let (_, alice_both) = band(5.0, 0);
    let (_, bob_both) = band(5.0, 640);
    eprintln!(
        "luma spread: alice {alice_early:.1} then {alice_both:.1}, bob {bob_early:.1} (mean {bob_early_mean:.1}) then {bob_both:.1}"
    );
    assert!(alice_early > 15.0 && alice_both > 15.0, "alice's picture");
    assert!(
        bob_early < 3.0,
        "bob's tile is his placeholder before 3.0 s"
    );
    assert!(bob_both > 15.0, "bob's picture once he joined");
    // The placeholder's name is drawn: the middle of bob's tile is not flat before he joins.
    let (_, name) = region(&path, 1.5, 640 + 220, 330, 200, 60);
    assert!(name > 15.0, "bob's name on his placeholder ({name})");

    // The manifest knows the mixdown; the chunks are gone.
    let manifest: Value = serde_json::from_slice(
        &get(
            &setup.client,
            &setup.bucket,
            &format!("{}manifest.json", processed("rec-offsets")),
        )
        .await?,
    )?;
    assert_eq!(manifest["mixdown"]["key"], key.as_str(), "{manifest}");
    assert_eq!(
        setup
            .keys(&format!("riverside/chunks/{ROOM}/rec-offsets/"))
            .await,
        Vec::<String>::new()
    );
    assert!(
        run.stderr.contains("loudness of the mix measured"),
        "{}",
        run.explain()
    );
    let progress = logged_progress(&run.stderr);
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(
        progress.iter().any(|p| (31..99).contains(p)),
        "mixdown progress: {progress:?}"
    );
    assert_eq!(
        setup.server.incomplete_uploads(&setup.bucket),
        Vec::<String>::new()
    );
    Ok(())
}

/// Integrated loudness (LUFS) of a file, as ffmpeg's ebur128 filter measures it.
fn integrated_loudness(path: &std::path::Path) -> anyhow::Result<f64> {
    let output = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-nostats", "-i"])
        .arg(path)
        .args(["-map", "0:a:0", "-af", "ebur128", "-f", "null", "-"])
        .output()?;
    let log = String::from_utf8_lossy(&output.stderr);
    let summary = &log[log
        .rfind("Summary:")
        .ok_or_else(|| anyhow::anyhow!("{log}"))?..];
    let value = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("I:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no integrated loudness in {summary}"))?;
    Ok(value)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_and_a_loud_participant_come_out_at_minus_16_lufs_in_the_audio_profile()
-> anyhow::Result<()> {
    let setup = setup().await?;
    let quiet = recording_with_sound(
        "mix-quiet-35lufs-10s",
        10,
        "160x120",
        "sine=frequency=300:sample_rate=48000:duration=10,volume=0.22",
    )?;
    let loud = recording_with_sound(
        "mix-loud-10lufs-10s",
        10,
        "160x120",
        "sine=frequency=700:sample_rate=48000:duration=10,volume=3.8",
    )?;
    let job = setup
        .job(
            "rec-loud",
            &[
                Participant {
                    id: "quiet",
                    offset_ms: Some(0),
                    name: None,
                    recording: quiet.clone(),
                    seconds: 10,
                },
                Participant {
                    id: "loud",
                    offset_ms: Some(1000),
                    name: None,
                    recording: loud.clone(),
                    seconds: 10,
                },
            ],
            "audio",
        )
        .await?;
    let before = (integrated_loudness(&quiet)?, integrated_loudness(&loud)?);

    let run = run_worker(&setup.server, &setup.bucket, &job, &FAST).await?;

    let key = format!("{}mixdown.m4a", processed("rec-loud"));
    let (mixdown, _) = mixdown_and_tracks(&run, &key, 2);
    let path = setup.download(&key).await?;
    let probe = probe(&path)?;
    assert_eq!(
        probe.codec("video"),
        None,
        "the audio profile's mixdown has no picture"
    );
    assert_eq!(probe.codec("audio"), Some("aac"));
    assert!((probe.duration - 11.0).abs() <= 0.1, "{probe:?}");
    assert!((mixdown["durationSeconds"].as_f64().unwrap_or(0.0) - 11.0).abs() <= 0.1);
    let after = integrated_loudness(&path)?;
    eprintln!(
        "quiet {:.1} LUFS and loud {:.1} LUFS mixed to {after:.1} LUFS",
        before.0, before.1
    );
    assert!(
        before.0 < -30.0 && before.1 > -12.0,
        "the inputs: {before:?}"
    );
    assert!((after + 16.0).abs() <= 1.0, "{after} LUFS");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mixdown_that_cannot_be_made_leaves_the_job_succeeded_and_a_rerun_makes_only_it()
-> anyhow::Result<()> {
    let setup = setup().await?;
    let job = setup
        .job(
            "rec-nofont",
            &[
                Participant {
                    id: "alice",
                    offset_ms: Some(0),
                    name: Some("Alice"),
                    recording: recording(&VP8_30S)?,
                    seconds: 30,
                },
                Participant {
                    id: "bob",
                    offset_ms: Some(500),
                    name: None,
                    recording: recording(&VP9_30S)?,
                    seconds: 30,
                },
            ],
            "webm",
        )
        .await?;
    // An ffmpeg that makes the tracks but fails every mixdown run (its filter graph mixes with
    // amix), as a mixdown that cannot be made would.
    let wrapper = setup.dir.path().join("ffmpeg-without-mixdowns");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\ncase \"$*\" in *amix*) echo '[error] refusing the mixdown' >&2; exit 1;; esac\nexec ffmpeg \"$@\"\n",
    )?;
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let wrapper = wrapper.to_string_lossy().into_owned();
    let mut env = FAST.to_vec();
    env.push(("MIXDOWN_FFMPEG", &wrapper));

    let run = run_worker(&setup.server, &setup.bucket, &job, &env).await?;

    let outputs = outputs(&run);
    assert_eq!(outputs.len(), 2, "every track: {}", run.explain());
    assert_eq!(outputs[0]["participantId"], "alice");
    assert_eq!(outputs[1]["participantId"], "bob");
    let failure = &run.report.as_ref().expect("report")["mixdownFailure"];
    assert_eq!(failure["reason"], "MixdownFailed", "{}", run.explain());
    let message = failure["message"].as_str().unwrap_or("");
    assert!(
        message.contains("the participants' files are ready"),
        "{message}"
    );
    assert!(
        message.contains("mixdown.mp4 could not be made"),
        "{message}"
    );
    assert!(
        !message.contains("X-Amz-Signature"),
        "no presigned URL in the report: {message}"
    );
    assert!(
        run.stderr.contains("the mixdown failed, trying again"),
        "{}",
        run.explain()
    );
    let key = format!("{}mixdown.mp4", processed("rec-nofont"));
    assert_eq!(
        setup.keys(&processed("rec-nofont")).await,
        vec![
            format!("{}alice.webm", processed("rec-nofont")),
            format!("{}bob.webm", processed("rec-nofont")),
            format!("{}manifest.json", processed("rec-nofont")),
        ],
        "no mixdown"
    );
    assert_eq!(
        setup.server.incomplete_uploads(&setup.bucket),
        Vec::<String>::new()
    );
    assert_eq!(
        setup
            .keys(&format!("riverside/chunks/{ROOM}/rec-nofont/"))
            .await,
        Vec::<String>::new(),
        "the tracks are done: their chunks are gone"
    );

    // With the font: the tracks are found in the manifest, and only the mixdown is made.
    let uploads = setup.server.request_count("CreateMultipartUpload");
    let rerun = run_worker(&setup.server, &setup.bucket, &job, &FAST).await?;
    let (_, tracks) = mixdown_and_tracks(&rerun, &key, 2);
    assert_eq!(tracks, outputs, "the same tracks");
    assert_eq!(
        setup.server.request_count("CreateMultipartUpload"),
        uploads + 1,
        "one upload: the mixdown's"
    );
    assert!(
        rerun.stderr.contains("finished by an earlier run"),
        "{}",
        rerun.explain()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_while_making_the_mixdown_a_rerun_makes_only_the_mixdown() -> anyhow::Result<()> {
    let setup = setup().await?;
    let job = setup
        .job(
            "rec-killed",
            &[
                Participant {
                    id: "alice",
                    offset_ms: None,
                    name: None,
                    recording: recording(&VP8_30S)?,
                    seconds: 30,
                },
                Participant {
                    id: "bob",
                    offset_ms: Some(2000),
                    name: None,
                    recording: recording(&VP8_30S)?,
                    seconds: 30,
                },
            ],
            "webm",
        )
        .await?;
    let key = format!("{}mixdown.mp4", processed("rec-killed"));

    // Storage starts the mixdown's multipart upload; the worker never hears, and is killed.
    let tap = Tap::start(
        setup.server.endpoint(),
        Rule::HoldAnswer {
            needle: "mixdown.mp4?uploads",
            nth: 1,
        },
    )
    .await?;
    let mut worker = spawn_worker(
        setup.server.env_at(&setup.bucket, tap.endpoint()),
        &job,
        &FAST,
        &[],
    )?;
    tokio::select! {
        () = tap.triggered() => {}
        status = worker.child.wait() => anyhow::bail!("the worker ended before the mixdown's upload: {status:?}"),
        () = tokio::time::sleep(Duration::from_secs(300)) => anyhow::bail!("no mixdown upload in 5 minutes"),
    }
    worker.child.start_kill()?;
    let killed = worker.wait().await?;
    assert_eq!(killed.code(), None, "{}", killed.explain());
    assert!(killed.report.is_none());
    assert_eq!(
        setup.server.incomplete_uploads(&setup.bucket),
        vec![key.clone()],
        "the killed run's upload is open"
    );
    let uploads = setup.server.request_count("CreateMultipartUpload");

    let rerun = run_worker(&setup.server, &setup.bucket, &job, &FAST).await?;

    let (_, tracks) = mixdown_and_tracks(&rerun, &key, 2);
    assert_eq!(tracks[0]["participantId"], "alice");
    assert_eq!(tracks[1]["participantId"], "bob");
    assert_eq!(tracks[1]["chunks"], 30);
    assert_eq!(
        setup.server.request_count("CreateMultipartUpload"),
        uploads + 1,
        "only the mixdown is made again"
    );
    assert_eq!(
        setup.server.incomplete_uploads(&setup.bucket),
        Vec::<String>::new(),
        "the rerun aborted the killed run's upload"
    );
    let path = setup.download(&key).await?;
    assert!((probe(&path)?.duration - 32.0).abs() <= 0.2);

    // And once more: the manifest has the mixdown, which is checked and reported, not made.
    let again = run_worker(&setup.server, &setup.bucket, &job, &FAST).await?;
    assert_eq!(outputs(&again), outputs(&rerun));
    assert_eq!(
        setup.server.request_count("CreateMultipartUpload"),
        uploads + 1
    );
    assert!(
        again
            .stderr
            .contains("the mixdown of the earlier run is there as recorded"),
        "{}",
        again.explain()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_two_participants_mix_with_bounded_worker_memory() -> anyhow::Result<()> {
    let setup = setup().await?;
    let small = recording_with_sound(
        "mix-small-3s",
        3,
        "160x120",
        "sine=frequency=440:sample_rate=48000:duration=3,volume=0.2",
    )?;
    let ids: Vec<String> = (0..32).map(|i| format!("p{i:02}")).collect();
    let names: Vec<String> = (0..32)
        .map(|i| match i {
            // Names that would need escaping anywhere else; drawtext reads them from a file.
            0 => "O'Brien: \"DJ\" [host]; 100%{pts} \\ é".to_owned(),
            1 => "x".repeat(64),
            _ => format!("Guest {i}"),
        })
        .collect();
    let participants: Vec<Participant<'_>> = (0..32)
        .map(|i| Participant {
            id: &ids[i],
            offset_ms: Some((i as i64 % 8) * 250),
            name: Some(&names[i]),
            recording: small.clone(),
            seconds: 3,
        })
        .collect();
    let job = setup.job("rec-32", &participants, "webm").await?;

    let started = std::time::Instant::now();
    let mut worker = spawn_worker(setup.server.env(&setup.bucket), &job, &FAST, &[])?;
    let pid = worker.child.id().expect("running");
    let (mut worker_peak, mut ffmpeg_peak) = (0u64, 0u64);
    let status = loop {
        tokio::select! {
            status = worker.child.wait() => break status?,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                worker_peak = worker_peak.max(peak_rss_kib(pid).unwrap_or(0));
                for (child, name) in children(pid) {
                    if name == "ffmpeg" {
                        ffmpeg_peak = ffmpeg_peak.max(peak_rss_kib(child).unwrap_or(0));
                    }
                }
            }
        }
    };
    let run = worker.wait().await?;
    eprintln!(
        "32 tracks and their mixdown in {:?}: worker peak RSS {} MiB, ffmpeg's {} MiB ({status})",
        started.elapsed(),
        worker_peak / 1024,
        ffmpeg_peak / 1024
    );
    let key = format!("{}mixdown.mp4", processed("rec-32"));
    let (mixdown, tracks) = mixdown_and_tracks(&run, &key, 32);
    // 32 keys do not all fit in the termination message beside the mixdown; the manifest
    // lists every one.
    assert!(tracks.len() >= 8, "{}", tracks.len());
    let manifest: Value = serde_json::from_slice(
        &get(
            &setup.client,
            &setup.bucket,
            &format!("{}manifest.json", processed("rec-32")),
        )
        .await?,
    )?;
    assert_eq!(manifest["outputs"].as_array().map(Vec::len), Some(32));
    assert_eq!(manifest["mixdown"]["key"], key.as_str());
    assert!(
        (mixdown["durationSeconds"].as_f64().unwrap_or(0.0) - 4.75).abs() <= 0.2,
        "{mixdown}"
    );
    assert!(worker_peak > 0, "VmHWM was read");
    assert!(
        worker_peak < 150 * 1024,
        "worker peak RSS {} KiB",
        worker_peak
    );
    assert!(ffmpeg_peak > 0, "the mixdown's ffmpeg was seen");
    let path = setup.download(&key).await?;
    let probe = probe(&path)?;
    assert_eq!(probe.codec("video"), Some("h264"));
    // The last row of the 6x6 grid holds p30 and p31, then four black cells.
    let (mean, spread) = region(&path, 4.0, 1280 - 212 * 2, 720 - 110, 200, 100);
    assert!(
        mean < 20.0 && spread < 3.0,
        "unused cells are black: {mean} {spread}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn without_composite_there_is_no_mixdown_and_nothing_else_changes() -> anyhow::Result<()> {
    let setup = setup().await?;
    let participants = [
        Participant {
            id: "alice",
            offset_ms: Some(0),
            name: Some("Alice"),
            recording: recording(&VP8_30S)?,
            seconds: 30,
        },
        Participant {
            id: "bob",
            offset_ms: Some(1200),
            name: Some("Bob"),
            recording: recording(&VP8_30S)?,
            seconds: 30,
        },
    ];
    let mut job = setup.job("rec-plain", &participants, "webm").await?;
    job["composite"] = json!(false);

    let run = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    let outputs = outputs(&run);
    assert_eq!(outputs.len(), 2);
    assert!(
        outputs.iter().all(|o| o.get("kind").is_none()),
        "{outputs:?}"
    );
    assert!(
        run.report
            .as_ref()
            .expect("report")
            .get("mixdownFailure")
            .is_none()
    );
    assert_eq!(
        setup.keys(&processed("rec-plain")).await,
        vec![
            format!("{}alice.webm", processed("rec-plain")),
            format!("{}bob.webm", processed("rec-plain")),
            format!("{}manifest.json", processed("rec-plain")),
        ]
    );
    let manifest = get(
        &setup.client,
        &setup.bucket,
        &format!("{}manifest.json", processed("rec-plain")),
    )
    .await?;
    assert!(!String::from_utf8_lossy(&manifest).contains("mixdown"));

    // One track and a job that says nothing of the mixdown (the operator's default for one).
    let mut single = setup.job("rec-single", &participants[..1], "webm").await?;
    single.as_object_mut().expect("object").remove("composite");
    let run = run_worker(&setup.server, &setup.bucket, &single, &[]).await?;
    let single_outputs = self::outputs(&run);
    assert_eq!(single_outputs.len(), 1);
    assert_eq!(
        single_outputs[0]["key"],
        format!("{}alice.webm", processed("rec-single")).as_str()
    );
    Ok(())
}
