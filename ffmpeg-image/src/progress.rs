//! Progress: the percentage of the recording's bytes fed to ffmpeg, across all tracks, and of
//! the mixdown's output time when the job makes one.
//!
//! In the cluster the worker patches `status.progress` of its own RecordingJob with server-side
//! apply under its own field manager, so it owns that field, and `status.readyOutputs` once the
//! tracks of a job with a mixdown are verified, and nothing else (the operator owns the rest of
//! the status). Every patch carries both: under server-side apply, a field the manager owned and
//! leaves out of its next patch is removed. The patch needs only `patch` on
//! `recordingjobs/status`. Outside the cluster, progress is logged. Either way, failing to report
//! never fails the job.
//!
//! With a mixdown, the tracks are the first [`TRACKS_SHARE`] percent and the mixdown (an encode
//! of the whole recording, most of the time) the rest. Progress stays at 99 until every output
//! is verified; 100 means done. A retry starts again at 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use mixdown_crds::names::{API_VERSION, KIND, field_managers};
use mixdown_crds::{RecordingJob, RecordingOutput};
use tokio_util::sync::CancellationToken;

/// How long one status patch may take before it is given up (the next tick tries again).
const PATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Of a job with a mixdown, the tracks' share of the percentage.
pub const TRACKS_SHARE: u64 = 30;

/// Bytes fed so far and bytes in total, shared by the tracks; the mixdown's part done.
#[derive(Debug, Default)]
pub struct Progress {
    fed: AtomicU64,
    total: AtomicU64,
    /// Whether the job makes a mixdown (the tracks are then [`TRACKS_SHARE`] percent).
    mixdown: std::sync::atomic::AtomicBool,
    /// The mixdown's part done, per mille.
    mixed: AtomicU64,
}

impl Progress {
    /// The job makes a mixdown after its tracks.
    pub fn plan_mixdown(&self) {
        self.mixdown.store(true, Ordering::Relaxed);
    }

    /// The tracks were finished by an earlier run.
    pub fn tracks_done(&self) {
        self.total.store(1, Ordering::Relaxed);
        self.fed.store(1, Ordering::Relaxed);
    }

    /// The mixdown's part done, 0 to 1000; it never goes back.
    pub fn set_mixed(&self, permille: u64) {
        self.mixed.fetch_max(permille.min(1000), Ordering::Relaxed);
    }

    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn add(&self, bytes: u64) {
        self.fed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// 0 to 99 while running.
    pub fn percent(&self) -> i32 {
        let (fed, total) = (
            self.fed.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        );
        if self.mixdown.load(Ordering::Relaxed) {
            staged_percent(fed, total, self.mixed.load(Ordering::Relaxed))
        } else {
            percent(fed, total)
        }
    }
}

/// A job with a mixdown: `fed` of `total` bytes of the tracks, then `mixed` per mille of the
/// mixdown, as a whole percentage, 0 to 99.
pub fn staged_percent(fed: u64, total: u64, mixed: u64) -> i32 {
    let tracks = if total == 0 {
        0
    } else {
        u128::from(fed.min(total)) * 1000 / u128::from(total)
    };
    let permille = tracks * u128::from(TRACKS_SHARE)
        + u128::from(mixed.min(1000)) * u128::from(100 - TRACKS_SHARE);
    ((permille / 1000) as i32).min(99)
}

/// `fed` of `total` as a whole percentage, 0 to 99: 100 is kept for "verified and done".
pub fn percent(fed: u64, total: u64) -> i32 {
    if total == 0 {
        return 0;
    }
    let whole = (u128::from(fed.min(total)) * 100 / u128::from(total)) as i32;
    whole.min(99)
}

/// The server-side apply patch of `status.progress` (and `status.readyOutputs` once there are
/// any): apiVersion, kind, and those fields.
pub fn status_patch(percent: i32, ready: &[RecordingOutput]) -> serde_json::Value {
    let mut status = serde_json::json!({ "progress": percent });
    if !ready.is_empty() {
        status["readyOutputs"] = serde_json::to_value(ready).expect("outputs serialize");
    }
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "status": status,
    })
}

/// Where progress goes.
#[derive(Clone)]
pub enum Sink {
    /// Logged at info level.
    Log,
    /// Patched into the RecordingJob `name` (and logged at debug level).
    RecordingJob {
        api: Box<Api<RecordingJob>>,
        name: String,
        /// The verified outputs every patch carries once set ([`Sink::ready`]).
        ready: Arc<std::sync::Mutex<Vec<RecordingOutput>>>,
    },
}

impl Sink {
    /// A sink for RecordingJob `name` in `namespace` (default: the client's), or [`Sink::Log`]
    /// when there is no job to patch or no cluster to reach.
    pub async fn new(name: Option<&str>, namespace: Option<&str>) -> Sink {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Sink::Log;
        };
        match kube::Client::try_default().await {
            Ok(client) => {
                let namespace = namespace
                    .filter(|n| !n.is_empty())
                    .unwrap_or(client.default_namespace())
                    .to_owned();
                tracing::info!(recording_job = name, %namespace, "reporting progress to the RecordingJob");
                Sink::RecordingJob {
                    api: Box::new(Api::namespaced(client, &namespace)),
                    name: name.to_owned(),
                    ready: Arc::default(),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "no Kubernetes client, progress is only logged");
                Sink::Log
            }
        }
    }

    /// The tracks' outputs are verified and the mixdown is next: `status.readyOutputs` is
    /// `outputs` from now on, in this patch (with `percent`) and every later one.
    pub async fn ready(&self, outputs: &[RecordingOutput], percent: i32) {
        match self {
            Sink::Log => {
                tracing::info!(
                    outputs = outputs.len(),
                    "the tracks are ready, making the mixdown"
                )
            }
            Sink::RecordingJob { ready, .. } => {
                *ready.lock().unwrap_or_else(|p| p.into_inner()) = outputs.to_vec();
                self.report(percent).await;
            }
        }
    }

    /// Everything is verified: 100, with every participant's file in `status.readyOutputs`. The
    /// termination message holds 4096 bytes, so the report of a large room lists only the files
    /// that fit; the operator takes the others from here.
    pub async fn finish(&self, outputs: &[RecordingOutput]) {
        if let Sink::RecordingJob { ready, .. } = self {
            *ready.lock().unwrap_or_else(|p| p.into_inner()) = outputs
                .iter()
                .filter(|o| !o.is_mixdown())
                .cloned()
                .collect();
        }
        self.report(100).await;
    }

    /// Reports `percent`; failures are logged, never returned.
    pub async fn report(&self, percent: i32) {
        match self {
            Sink::Log => tracing::info!(percent, "progress"),
            Sink::RecordingJob { api, name, ready } => {
                tracing::debug!(percent, "progress");
                let params = PatchParams::apply(field_managers::WORKER);
                let ready = ready.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let patch = Patch::Apply(status_patch(percent, &ready));
                match tokio::time::timeout(PATCH_TIMEOUT, api.patch_status(name, &params, &patch))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => {
                        tracing::warn!(percent, error = %err, "patching status.progress failed")
                    }
                    Err(_) => tracing::warn!(percent, "patching status.progress timed out"),
                }
            }
        }
    }
}

/// Reports 0 at once, then the current percentage every `interval` until `stop`: on every tick
/// when logging, on every change when patching (an unchanged status is already reported).
pub async fn run(progress: Arc<Progress>, sink: Sink, interval: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let percent = if last.is_none() {
            0
        } else {
            progress.percent()
        };
        if matches!(sink, Sink::Log) || last != Some(percent) {
            sink.report(percent).await;
            last = Some(percent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_stop_at_99_until_done() {
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(0, 100), 0);
        assert_eq!(percent(50, 100), 50);
        assert_eq!(percent(999, 1000), 99);
        assert_eq!(percent(1000, 1000), 99);
        assert_eq!(percent(2000, 1000), 99);
        assert_eq!(percent(u64::MAX / 2, u64::MAX), 49);
    }

    #[test]
    fn with_a_mixdown_the_tracks_come_first_and_the_mixdown_weighs_most() {
        // (fed, total, mixed per mille) → percent
        for (fed, total, mixed, expected) in [
            (0, 0, 0, 0),
            (0, 100, 0, 0),
            (50, 100, 0, 15),
            (100, 100, 0, 30),
            (100, 100, 500, 65),
            (100, 100, 1000, 99),
            (100, 100, 5000, 99),
            (1, 1, 100, 37),
        ] {
            assert_eq!(
                staged_percent(fed, total, mixed),
                expected,
                "{fed}/{total}, {mixed}"
            );
        }
        let progress = Progress::default();
        progress.set_total(100);
        progress.add(100);
        assert_eq!(progress.percent(), 99, "no mixdown: the tracks are all");
        progress.plan_mixdown();
        assert_eq!(progress.percent(), 30);
        progress.set_mixed(500);
        progress.set_mixed(200);
        assert_eq!(progress.percent(), 65, "never back");
    }

    #[test]
    fn the_patch_carries_only_progress_and_the_ready_outputs() {
        let ready = vec![RecordingOutput {
            kind: Default::default(),
            participant_id: "alice".into(),
            key: "k/alice.mp4".into(),
            size_bytes: 10,
            duration_seconds: 1.5,
            sealed: true,
            chunks: Some(2),
            left_out: None,
        }];
        let patch = status_patch(40, &ready);
        assert_eq!(patch["status"]["progress"], 40);
        assert_eq!(patch["status"]["readyOutputs"][0]["key"], "k/alice.mp4");
        assert_eq!(patch["status"]["readyOutputs"][0]["participantId"], "alice");
        let patch = status_patch(42, &[]);
        assert_eq!(patch["apiVersion"], "mixdown.dev/v1alpha1");
        assert_eq!(patch["kind"], "RecordingJob");
        assert_eq!(patch["status"], serde_json::json!({"progress": 42}));
        assert_eq!(
            patch.as_object().map(|o| o.len()),
            Some(3),
            "no metadata, no spec"
        );
    }

    #[test]
    fn progress_accumulates_across_tracks() {
        let progress = Progress::default();
        progress.set_total(200);
        progress.add(50);
        progress.add(50);
        assert_eq!(progress.percent(), 50);
    }
}
