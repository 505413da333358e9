//! Prometheus metrics, all under the `mixdown_operator_` prefix (controller-rs's layout):
//! reconciles, failures by error kind, reconcile duration, RecordingJobs by phase and the time
//! processing took.

use std::time::Instant;

use mixdown_crds::Phase;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The operator's metrics. Cheap to clone (every metric is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub recording_jobs: Family<PhaseLabels, Gauge>,
    pub processing_seconds: Family<ResultLabels, Histogram>,
    pub jobs_created: Counter,
    pub status_writes: Counter,
    pub status_writes_held_back: Counter,
    /// 1 while this replica holds the Lease (or runs without leader election), else 0.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Metrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            // 1 ms .. ~16 s
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            recording_jobs: Family::default(),
            // 1 s .. ~4.5 h
            processing_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 2.0, 15))
            }),
            jobs_created: Counter::default(),
            status_writes: Counter::default(),
            status_writes_held_back: Counter::default(),
            leader: Gauge::default(),
        };
        // Every series exists from the start, at zero: a rate over a counter that appears with
        // its first increment misses that increment, and an absent series looks like a scrape
        // problem.
        for error in crate::error::METRIC_LABELS {
            let _ = metrics.errors.get_or_create(&ErrorLabels { error });
        }
        for result in ["succeeded", "failed"] {
            let _ = metrics
                .processing_seconds
                .get_or_create(&ResultLabels { result });
        }
        metrics
    }
}

impl Metrics {
    /// Registers every metric in `registry` (give it the `mixdown_operator` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconciles",
            "RecordingJob reconciliations",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by error kind",
            self.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took",
            self.reconcile_duration.clone(),
        );
        registry.register(
            "recording_jobs",
            "RecordingJobs by phase, as last observed",
            self.recording_jobs.clone(),
        );
        registry.register(
            "processing_seconds",
            "Time from a Job's start to its RecordingJob's success or failure",
            self.processing_seconds.clone(),
        );
        registry.register(
            "jobs_created",
            "Jobs created for RecordingJobs",
            self.jobs_created.clone(),
        );
        registry.register(
            "status_writes",
            "RecordingJob statuses applied",
            self.status_writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica leads (holds the Lease), else 0",
            self.leader.clone(),
        );
        registry.register(
            "status_writes_held_back",
            "Status writes put off while Jobs were being created (a burst)",
            self.status_writes_held_back.clone(),
        );
    }

    /// Starts timing a reconciliation; the duration is recorded when the timer is dropped.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, error: &crate::error::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: error.metric_label(),
            })
            .inc();
    }

    /// Sets the per-phase gauge from a count of every phase (`None`: no status yet).
    pub fn set_phases(&self, counts: &[(Option<Phase>, i64)]) {
        for phase in [
            None,
            Some(Phase::Pending),
            Some(Phase::Queued),
            Some(Phase::Running),
            Some(Phase::Succeeded),
            Some(Phase::Failed),
        ] {
            let n = counts
                .iter()
                .filter(|(p, _)| *p == phase)
                .map(|(_, n)| n)
                .sum();
            let label = phase.map_or("Unknown", Phase::as_str);
            self.recording_jobs
                .get_or_create(&PhaseLabels { phase: label })
                .set(n);
        }
    }

    pub fn processed(&self, phase: Phase, seconds: f64) {
        let result = if phase == Phase::Succeeded {
            "succeeded"
        } else {
            "failed"
        };
        self.processing_seconds
            .get_or_create(&ResultLabels { result })
            .observe(seconds.max(0.0));
    }
}

/// Records a reconciliation's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_at_zero_before_the_first_event() {
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix("mixdown_operator");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for error in crate::error::METRIC_LABELS {
            let line = format!("mixdown_operator_reconcile_errors_total{{error=\"{error}\"}} 0");
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        for line in [
            "mixdown_operator_reconciles_total 0",
            "mixdown_operator_jobs_created_total 0",
            "mixdown_operator_leader 0",
            "mixdown_operator_processing_seconds_count{result=\"succeeded\"} 0",
            "mixdown_operator_processing_seconds_count{result=\"failed\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn metrics_are_exposed_under_the_prefix() {
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix("mixdown_operator");
        metrics.register(&mut registry);
        drop(metrics.reconcile_timer());
        metrics.reconcile_failed(&crate::error::Error::InvalidSpec("x".into()));
        metrics.set_phases(&[(Some(Phase::Running), 2), (Some(Phase::Running), 1)]);
        metrics.processed(Phase::Succeeded, 12.0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "mixdown_operator_reconciles_total 1",
            "mixdown_operator_reconcile_errors_total{error=\"invalid_spec\"} 1",
            "mixdown_operator_reconcile_duration_seconds_count 1",
            "mixdown_operator_recording_jobs{phase=\"Running\"} 3",
            "mixdown_operator_recording_jobs{phase=\"Queued\"} 0",
            "mixdown_operator_processing_seconds_count{result=\"succeeded\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
