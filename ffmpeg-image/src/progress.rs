//! Progress: the percentage of the recording's bytes fed to ffmpeg, across all tracks.
//!
//! In the cluster the worker patches `status.progress` of its own RecordingJob with server-side
//! apply under its own field manager, so it owns that one field and nothing else (the operator
//! owns the rest of the status). The patch needs only `patch` on `recordingjobs/status`. Outside
//! the cluster, progress is logged. Either way, failing to report progress never fails the job.
//!
//! Progress stays at 99 until every output is verified; 100 means done. A retry starts again at 0.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use mixdown_crds::RecordingJob;
use mixdown_crds::names::{API_VERSION, KIND, field_managers};
use tokio_util::sync::CancellationToken;

/// How long one status patch may take before it is given up (the next tick tries again).
const PATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes fed so far and bytes in total; shared by the tracks.
#[derive(Debug, Default)]
pub struct Progress {
    fed: AtomicU64,
    total: AtomicU64,
}

impl Progress {
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn add(&self, bytes: u64) {
        self.fed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// 0 to 99 while running.
    pub fn percent(&self) -> i32 {
        percent(
            self.fed.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// `fed` of `total` as a whole percentage, 0 to 99: 100 is kept for "verified and done".
pub fn percent(fed: u64, total: u64) -> i32 {
    if total == 0 {
        return 0;
    }
    let whole = (u128::from(fed.min(total)) * 100 / u128::from(total)) as i32;
    whole.min(99)
}

/// The server-side apply patch of `status.progress`: apiVersion, kind, and that one field.
pub fn status_patch(percent: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "status": { "progress": percent },
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
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "no Kubernetes client, progress is only logged");
                Sink::Log
            }
        }
    }

    /// Reports `percent`; failures are logged, never returned.
    pub async fn report(&self, percent: i32) {
        match self {
            Sink::Log => tracing::info!(percent, "progress"),
            Sink::RecordingJob { api, name } => {
                tracing::debug!(percent, "progress");
                let params = PatchParams::apply(field_managers::WORKER);
                let patch = Patch::Apply(status_patch(percent));
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
    fn the_patch_carries_only_progress() {
        let patch = status_patch(42);
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
