//! Finished is finished: a run of a recording that an earlier run finished (its manifest is
//! there) reports the same outputs, whether the earlier run ended normally, was killed right
//! after deleting the chunks and before its report, in the middle of deleting them, or right
//! after writing the manifest; and an output that is gone since is said so, with every chunk
//! left kept.
//!
//! The worker is the real binary against the test kit's S3 server; it is killed with SIGKILL at
//! the moment a tap between the two (`common/tap.rs`) has passed its DeleteObjects on to storage
//! and kept the answer from it.

mod common;

use common::tap::{Rule, Tap};
use common::*;
use mixdown_testkit::s3::S3Server;
use serde_json::Value;

const ROOM: &str = "room-fin";

struct Setup {
    server: S3Server,
    bucket: String,
    client: aws_sdk_s3::Client,
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
    })
}

impl Setup {
    /// Puts `chunks` as alice's track of `recording`; returns the job (webm, sealed, chunks
    /// deleted when done) and the chunk keys.
    async fn record(
        &self,
        recording: &str,
        chunks: &[Vec<u8>],
        delete_chunks: bool,
    ) -> anyhow::Result<(Value, Vec<String>)> {
        let prefix = chunk_prefix(ROOM, recording, "alice");
        put_chunks(&self.client, &self.bucket, &prefix, chunks).await?;
        let mut job = job(
            ROOM,
            recording,
            vec![track("alice", &prefix, chunks.len() as u32)],
            "webm",
        );
        job["cleanup"]["deleteChunks"] = Value::Bool(delete_chunks);
        let keys = self.keys(&prefix).await;
        assert_eq!(keys.len(), chunks.len());
        Ok((job, keys))
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        keys(&self.client, &self.bucket, prefix)
            .await
            .expect("listing")
    }

    /// [`Setup::killed_at`] the `nth` DeleteObjects.
    async fn killed_at_delete(&self, job: &Value, nth: usize) -> anyhow::Result<WorkerRun> {
        self.killed_at("?delete", nth, job).await
    }

    /// Runs the worker through a tap that holds the answer to the `nth` request holding
    /// `needle`, kills the worker with SIGKILL once storage has carried that request out, and
    /// returns the killed run.
    async fn killed_at(
        &self,
        needle: &'static str,
        nth: usize,
        job: &Value,
    ) -> anyhow::Result<WorkerRun> {
        let tap = Tap::start(self.server.endpoint(), Rule::HoldAnswer { needle, nth }).await?;
        let mut worker = spawn_worker(
            self.server.env_at(&self.bucket, tap.endpoint()),
            job,
            &[],
            &[],
        )?;
        tokio::select! {
            () = tap.triggered() => {}
            status = worker.child.wait() => anyhow::bail!("the worker ended before its delete: {status:?}"),
            () = tokio::time::sleep(std::time::Duration::from_secs(300)) => {
                anyhow::bail!("no DeleteObjects within 5 minutes")
            }
        }
        // SIGKILL: the worker gets no chance to do anything more.
        worker.child.start_kill()?;
        let run = worker.wait().await?;
        assert_eq!(
            run.status.code(),
            None,
            "killed by a signal: {}",
            run.explain()
        );
        assert!(run.report.is_none(), "no report: {}", run.explain());
        Ok(run)
    }
}

fn outputs(run: &WorkerRun) -> Vec<Value> {
    assert_eq!(run.code(), Some(0), "{}", run.explain());
    run.report.as_ref().expect("report")["outputs"]
        .as_array()
        .expect("outputs")
        .clone()
}

fn manifest_key(recording: &str) -> String {
    format!("riverside/processed/{ROOM}/{recording}/manifest.json")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_after_success_reports_the_same_outputs() -> anyhow::Result<()> {
    let setup = setup().await?;
    let (job, chunk_keys) = setup.record("rec-again", &chunks(&VP8_30S)?, true).await?;

    let first = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;
    let reported = outputs(&first);
    assert_eq!(setup.keys(&chunk_keys[0]).await, Vec::<String>::new());
    let manifest = get(&setup.client, &setup.bucket, &manifest_key("rec-again")).await?;
    let manifest: Value = serde_json::from_slice(&manifest)?;
    assert_eq!(manifest["outputs"][0]["sourceChunks"], 30, "{manifest}");
    let uploads = setup.server.request_count("CreateMultipartUpload");

    let rerun = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    assert_eq!(outputs(&rerun), reported, "{}", rerun.explain());
    assert_eq!(
        setup.server.request_count("CreateMultipartUpload"),
        uploads,
        "nothing is made again"
    );
    assert!(
        rerun.stderr.contains("finished by an earlier run"),
        "{}",
        rerun.explain()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_after_deleting_the_chunks_and_before_the_report_a_rerun_succeeds()
-> anyhow::Result<()> {
    let setup = setup().await?;
    let (job, _) = setup.record("rec-crash", &chunks(&VP8_30S)?, true).await?;
    let prefix = chunk_prefix(ROOM, "rec-crash", "alice");

    setup.killed_at_delete(&job, 1).await?;
    assert_eq!(
        setup.keys(&prefix).await,
        Vec::<String>::new(),
        "storage deleted the chunks before the worker was killed"
    );
    let output = format!("riverside/processed/{ROOM}/rec-crash/alice.webm");
    let stored = get(&setup.client, &setup.bucket, &output).await?;

    let rerun = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    let reported = outputs(&rerun);
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0]["key"], output.as_str());
    assert_eq!(reported[0]["sizeBytes"].as_u64(), Some(stored.len() as u64));
    assert_eq!(reported[0]["chunks"], 30);
    assert!(
        (reported[0]["durationSeconds"].as_f64().unwrap_or(0.0) - 30.0).abs() <= 0.5,
        "{}",
        rerun.explain()
    );
    assert_eq!(
        setup.server.incomplete_uploads(&setup.bucket),
        Vec::<String>::new()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_in_the_middle_of_deleting_a_rerun_deletes_the_rest_and_succeeds()
-> anyhow::Result<()> {
    let setup = setup().await?;
    // 1,100 chunks: two DeleteObjects of at most 1,000 keys. The worker is killed once storage
    // has done the first, so 100 chunks are left.
    let bytes = std::fs::read(recording(&VP8_30S)?)?;
    let chunks = split(&bytes, 1_100);
    let (job, chunk_keys) = setup.record("rec-half", &chunks, true).await?;
    let prefix = chunk_prefix(ROOM, "rec-half", "alice");

    setup.killed_at_delete(&job, 1).await?;
    let left = setup.keys(&prefix).await;
    assert_eq!(left.len(), chunks.len() - 1_000, "the first batch went");
    // The chunk left since a new browser upload, numbered after the recording: never deleted.
    let late = format!("{prefix}{:08}.webm", chunks.len());
    put(&setup.client, &setup.bucket, &late, b"late".to_vec()).await?;

    let rerun = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    let reported = outputs(&rerun);
    assert_eq!(reported[0]["chunks"].as_u64(), Some(chunks.len() as u64));
    assert_eq!(
        setup.keys(&prefix).await,
        vec![late],
        "the chunks the first run left are deleted, nothing else"
    );
    assert!(chunk_keys.len() == chunks.len());
    assert!(
        rerun
            .stderr
            .contains("source chunks an earlier run left deleted"),
        "{}",
        rerun.explain()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_after_writing_the_manifest_and_before_deleting_a_rerun_deletes_and_succeeds()
-> anyhow::Result<()> {
    let setup = setup().await?;
    let (job, chunk_keys) = setup.record("rec-early", &chunks(&VP8_30S)?, true).await?;
    let prefix = chunk_prefix(ROOM, "rec-early", "alice");

    // The run's first request reads the manifest (there is none); its second writes it.
    setup.killed_at("manifest.json", 2, &job).await?;
    assert_eq!(
        setup.keys(&prefix).await,
        chunk_keys,
        "no chunk deleted yet"
    );
    get(&setup.client, &setup.bucket, &manifest_key("rec-early")).await?;

    let rerun = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    assert_eq!(outputs(&rerun)[0]["chunks"], 30, "{}", rerun.explain());
    assert_eq!(
        setup.keys(&prefix).await,
        Vec::<String>::new(),
        "deleted now"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_gone_since_is_a_clear_failure_and_every_chunk_stays() -> anyhow::Result<()> {
    let setup = setup().await?;
    let (job, chunk_keys) = setup.record("rec-gone", &chunks(&VP8_30S)?, false).await?;
    let first = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;
    outputs(&first);
    let output = format!("riverside/processed/{ROOM}/rec-gone/alice.webm");
    delete(&setup.client, &setup.bucket, &output).await?;

    let rerun = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;

    assert_eq!(rerun.code(), Some(2), "{}", rerun.explain());
    assert_eq!(rerun.reason(), "OutputChanged", "{}", rerun.explain());
    for words in [
        "was finished by an earlier run",
        &format!("{output} is gone"),
        "nothing was redone and no chunk deleted",
        &format!("delete {}", manifest_key("rec-gone")),
    ] {
        assert!(
            rerun.message().contains(words),
            "{words}: {}",
            rerun.explain()
        );
    }
    let prefix = chunk_prefix(ROOM, "rec-gone", "alice");
    assert_eq!(setup.keys(&prefix).await, chunk_keys, "every chunk stays");

    // As the message says: without the manifest, the recording is made again.
    delete(&setup.client, &setup.bucket, &manifest_key("rec-gone")).await?;
    let again = run_worker(&setup.server, &setup.bucket, &job, &[]).await?;
    assert_eq!(outputs(&again)[0]["key"], output.as_str());
    Ok(())
}
