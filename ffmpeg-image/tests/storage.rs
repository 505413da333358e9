//! Storage as a person running the worker meets it: settings that storage refuses (the wrong
//! secret, an unknown key, a bucket that does not exist) say what to check; storage lost while
//! an output is verified is a storage failure, not a broken output; every retry is logged as it
//! happens; and a run by hand leaves no /dev/termination-log behind.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::tap::{Rule, Tap};
use common::*;
use mixdown_testkit::s3::S3Server;
use serde_json::Value;

const ROOM: &str = "room-st";

async fn recorded(server: &S3Server, bucket: &str, recording: &str) -> anyhow::Result<Value> {
    let chunks = chunks(&VP8_30S)?;
    let prefix = chunk_prefix(ROOM, recording, "alice");
    put_chunks(&server.client(), bucket, &prefix, &chunks).await?;
    Ok(job(
        ROOM,
        recording,
        vec![track("alice", &prefix, chunks.len() as u32)],
        "webm",
    ))
}

/// A run refused by storage for its settings: exit 1 (retried: the Secret may be fixed by the
/// next attempt), `StorageMisconfigured`, a message with `words`, no raw SDK dump.
fn assert_misconfigured(run: &WorkerRun, words: &[&str]) {
    assert_eq!(run.code(), Some(1), "{}", run.explain());
    assert_eq!(run.reason(), "StorageMisconfigured", "{}", run.explain());
    for words in words {
        assert!(run.message().contains(words), "{words}: {}", run.explain());
    }
    assert!(
        !run.message().contains("ServiceError") && !run.message().contains("raw:"),
        "{}",
        run.explain()
    );
    assert!(
        !run.stderr.contains("storage request failed, retrying"),
        "a refused setting is not retried within the run: {}",
        run.explain()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_or_an_unknown_key_says_to_check_the_secret() -> anyhow::Result<()> {
    require_ffmpeg();
    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let job = recorded(&server, &bucket, "rec-keys").await?;
    let prefix = chunk_prefix(ROOM, "rec-keys", "alice");

    let wrong_secret = run_worker(
        &server,
        &bucket,
        &job,
        &[("AWS_SECRET_ACCESS_KEY", "not-the-secret")],
    )
    .await?;
    assert_misconfigured(
        &wrong_secret,
        &[
            "refused the credentials (SignatureDoesNotMatch)",
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            "MIXDOWN_S3_ENDPOINT",
            server.endpoint(),
        ],
    );

    let unknown_key = run_worker(
        &server,
        &bucket,
        &job,
        &[("AWS_ACCESS_KEY_ID", "AKIDNOTAKEYOFTHISSERVER")],
    )
    .await?;
    assert_misconfigured(
        &unknown_key,
        &["refused the credentials (", "AWS_ACCESS_KEY_ID"],
    );
    assert_eq!(
        keys(&server.client(), &bucket, &prefix).await?.len(),
        30,
        "every chunk stays"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_that_does_not_exist_says_to_check_the_bucket_and_endpoint() -> anyhow::Result<()>
{
    require_ffmpeg();
    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let job = recorded(&server, &bucket, "rec-bucket").await?;

    let run = run_worker(
        &server,
        &bucket,
        &job,
        &[("MIXDOWN_S3_BUCKET", "recordings-typo")],
    )
    .await?;

    assert_misconfigured(
        &run,
        &[
            "bucket recordings-typo does not exist at",
            "(NoSuchBucket)",
            "check MIXDOWN_S3_BUCKET",
            "MIXDOWN_S3_ENDPOINT",
        ],
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_lost_while_an_output_is_verified_is_a_storage_failure() -> anyhow::Result<()> {
    require_ffmpeg();
    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let job = recorded(&server, &bucket, "rec-verify").await?;
    let prefix = chunk_prefix(ROOM, "rec-verify", "alice");
    // Storage goes at the presigned GET ffprobe sends to read the output, and stays away.
    let tap = Tap::start(
        server.endpoint(),
        Rule::CutAt {
            needle: "X-Amz-Signature=",
        },
    )
    .await?;

    let run = spawn_worker(
        server.env_at(&bucket, tap.endpoint()),
        &job,
        &[("MIXDOWN_S3_MAX_ATTEMPTS", "2")],
        &[],
    )?
    .wait()
    .await?;

    assert!(tap.fired(), "storage must go away during verification");
    assert_eq!(run.code(), Some(1), "{}", run.explain());
    assert_eq!(run.reason(), "StorageError", "{}", run.explain());
    assert!(
        run.message().contains("storage was unreachable")
            && run.message().contains("verifying riverside/processed/"),
        "{}",
        run.explain()
    );
    tap.restore();
    assert_eq!(
        keys(&server.client(), &bucket, &prefix).await?.len(),
        30,
        "every chunk stays"
    );
    assert_eq!(
        keys(
            &server.client(),
            &bucket,
            &format!("riverside/processed/{ROOM}/rec-verify/manifest.json")
        )
        .await?,
        Vec::<String>::new(),
        "not finished: no manifest"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_retry_of_a_storage_request_is_logged_as_it_happens() -> anyhow::Result<()> {
    require_ffmpeg();
    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let job = recorded(&server, &bucket, "rec-retries").await?;
    server.set_available(false);

    let run = run_worker(&server, &bucket, &job, &[("MIXDOWN_S3_MAX_ATTEMPTS", "3")]).await?;

    assert_eq!(run.code(), Some(1), "{}", run.explain());
    assert_eq!(run.reason(), "StorageError", "{}", run.explain());
    assert!(
        run.message().contains("is unreachable"),
        "{}",
        run.explain()
    );
    let retries: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("storage request failed, retrying"))
        .collect();
    assert_eq!(retries.len(), 2, "attempts 1 and 2 of 3: {}", run.explain());
    for (line, attempt) in retries.iter().zip(1..) {
        for field in [
            "operation=\"GetObject\"".to_owned(),
            format!("attempt={attempt}"),
            "max_attempts=3".to_owned(),
            "next_wait_secs_at_most=".to_owned(),
            "error=".to_owned(),
            "manifest.json".to_owned(),
        ] {
            assert!(line.contains(&field), "{field} in {line}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn run_by_hand_the_report_is_printed_and_no_termination_log_is_made() -> anyhow::Result<()> {
    let default = Path::new("/dev/termination-log");
    if default.exists() {
        // Inside a Pod, or a runtime that made it: the worker rightly writes there.
        eprintln!("/dev/termination-log exists here; nothing to check");
        return Ok(());
    }
    let server = S3Server::start().await?;
    let bucket = server.create_bucket().await;
    let job = job(
        ROOM,
        "rec-hand",
        vec![track(
            "alice",
            "riverside/chunks/room-st/rec-hand/alice/",
            3,
        )],
        "webm",
    );

    let output = tokio::process::Command::new(WORKER)
        .envs(server.env(&bucket))
        .env_remove("MIXDOWN_TERMINATION_MESSAGE_PATH")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("MIXDOWN_JOB", job.to_string())
        .stdin(Stdio::null())
        .output()
        .await?;

    assert_eq!(output.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(report["reason"], "NoChunks", "{report}");
    assert!(!default.exists(), "the worker created /dev/termination-log");
    Ok(())
}
