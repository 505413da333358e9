//! The operator's runtime wiring: the watches of RecordingJobs (the primary), their Jobs (`owns`)
//! and the Jobs' Pods (by the `mixdown.dev/recording-job` label), the caches they fill, the
//! readiness and phase gauges they feed, and the controller loop that calls
//! [`crate::controller::reconcile`]. Objects are trimmed before they reach the caches (no Pod
//! specs, no managed fields but the worker's) so that thousands of recordings cost little memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use mixdown_crds::Phase;
use mixdown_crds::names::{field_managers, labels};
use tokio::sync::Notify;
use tracing::{debug, info};

use crate::config::Config;
use crate::controller::{Context, Guarded, error_policy, reconcile};
use crate::events::Events;
use crate::metrics::Metrics;

/// Drops what the operator never reads, before objects reach the caches.
fn trim_recording_job(guard: &mut Guarded) {
    let meta = guard.meta_mut();
    // Only the worker's entry is read (when it last wrote progress), and not its field set.
    if let Some(fields) = meta.managed_fields.as_mut() {
        fields.retain(|m| m.manager.as_deref() == Some(field_managers::WORKER));
        for m in fields.iter_mut() {
            m.fields_v1 = None;
        }
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn trim_job(job: &mut Job) {
    job.metadata.managed_fields = None;
    // Only the spec generation it was built from, and whether it makes a mixdown, are read.
    if let Some(annotations) = job.metadata.annotations.as_mut() {
        use mixdown_crds::names::annotations::{COMPOSITE, SPEC_GENERATION};
        annotations.retain(|k, _| k == SPEC_GENERATION || k == COMPOSITE);
    }
    if let Some(spec) = job.spec.as_mut() {
        spec.template = PodTemplateSpec::default();
        spec.selector = None;
    }
}

fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    pod.spec = None;
    if let Some(status) = pod.status.as_mut() {
        // Only a Pod that cannot be scheduled needs its conditions read (see `start_problem`).
        if let Some(conditions) = status.conditions.as_mut() {
            conditions.retain(|c| c.type_ == "PodScheduled" && c.status == "False");
        }
        status.pod_ips = None;
        status.host_ips = None;
    }
}

/// Where the operator watches and how it runs.
pub struct Settings {
    pub config: Config,
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub concurrency: u16,
    /// The `reportingInstance` of Events: this replica's identity.
    pub instance: String,
}

/// Runs the controller until `shutdown` resolves, then lets running reconciles finish.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    http: Option<crate::http::AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api = |client: Client| -> (Api<Guarded>, Api<Job>, Api<Pod>) {
        match &settings.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client, ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client),
            ),
        }
    };
    let (rj_api, job_api, pod_api) = api(client.clone());
    let children = watcher::Config::default().labels(labels::RECORDING_JOB);

    let (rj_reader, rj_writer) = reflector::store::<Guarded>();
    let (job_reader, job_writer) = reflector::store::<Job>();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();
    let slot_freed = Arc::new(Notify::new());

    let rj_stream = watcher(rj_api, watcher::Config::default())
        .default_backoff()
        .modify(trim_recording_job)
        .reflect(rj_writer)
        .applied_objects();
    let freed = slot_freed.clone();
    let job_stream = watcher(job_api, children.clone())
        .default_backoff()
        .modify(trim_job)
        .map(move |event| {
            if let Ok(watcher::Event::Delete(_)) = &event {
                freed.notify_one();
            }
            event
        })
        .reflect(job_writer)
        .touched_objects();
    let pod_stream = watcher(pod_api, children)
        .default_backoff()
        .modify(trim_pod)
        .reflect(pod_writer)
        .touched_objects();

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: field_managers::OPERATOR.to_string(),
            instance: Some(settings.instance.clone()),
        },
    );
    let (events, publisher) = Events::start(recorder);
    let ctx = Arc::new(Context::new(
        client,
        settings.config,
        rj_reader.clone(),
        job_reader.clone(),
        pod_reader.clone(),
        events,
        metrics.clone(),
        slot_freed.clone(),
    ));

    if let Some(http) = &http {
        let rjs = rj_reader.clone();
        let metrics = metrics.clone();
        http.on_scrape(move || {
            let mut counts: HashMap<Option<Phase>, i64> = HashMap::new();
            for guard in rjs.state() {
                if let Ok(rj) = &guard.0 {
                    *counts
                        .entry(rj.status.as_ref().and_then(|s| s.phase))
                        .or_default() += 1;
                }
            }
            metrics.set_phases(&counts.into_iter().collect::<Vec<_>>());
        });
        let http = http.clone();
        let (rjs, jobs, pods) = (rj_reader.clone(), job_reader.clone(), pod_reader.clone());
        tokio::spawn(async move {
            let _ = futures::future::join3(
                rjs.wait_until_ready(),
                jobs.wait_until_ready(),
                pods.wait_until_ready(),
            )
            .await;
            http.set_ready(true);
        });
    }

    let (wake_tx, wake_rx) = mpsc::unbounded::<ObjectRef<Guarded>>();
    let waker = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                ctx.slot_freed().await;
                // Let the caches take in the change that freed the slot.
                tokio::time::sleep(Duration::from_millis(200)).await;
                ctx.wake_next(&wake_tx);
            }
        })
    };

    Controller::for_stream(rj_stream, rj_reader)
        .owns_stream(job_stream)
        .watches_stream(pod_stream, |pod: Pod| {
            let namespace = pod.namespace()?;
            let name = pod.labels().get(labels::RECORDING_JOB)?;
            Some(ObjectRef::<Guarded>::new(name).within(&namespace))
        })
        .reconcile_on(wake_rx)
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                debug!(%error, "controller event");
            }
        })
        .await;
    waker.abort();
    // Let the Events of the last reconciles out, briefly.
    drop(ctx);
    if tokio::time::timeout(Duration::from_secs(2), publisher)
        .await
        .is_err()
    {
        debug!("Events still queued at shutdown were dropped");
    }
    info!("controller stopped");
}
