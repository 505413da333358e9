//! The reconciler: a thin loop around the pure parts. For each RecordingJob it fetches (from the
//! caches), validates, builds and creates the Job once, derives the status, asks [`crate::plan`]
//! what to do about the Job, the status, the Events and the next look, and does it.
//!
//! The watches, the caches and the HTTP readiness they feed are wired up in [`crate::runtime`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::channel::mpsc;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use mixdown_crds::names::{API_VERSION, KIND, conditions, field_managers, labels, reasons};
use mixdown_crds::{Phase, RecordingJob, RecordingJobStatus};
use serde_json::json;
use tokio::sync::Notify;
use tracing::{Span, debug, field, info, instrument, warn};

use crate::attempts::attempts;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::job::{Ownership, build_job, job_ref, ownership, validate};
use crate::metrics::Metrics;
use crate::plan::{self, Facts, Next, RESYNC, STATUS_HELD_BACK, StatusWrite, event};
use crate::retry::{self, RetryPlan, plan_retry};
use crate::slots::{Census, QueueKey, Slots, next_in_line};
use crate::status::{
    Admission, derive_status, is_final, job_deleted_status, needs_write, progress_is_stale,
};
use crate::uploads::upload_gate;

/// RecordingJobs as watched: one that fails to deserialize is reported, not a stalled watch.
pub type Guarded = DeserializeGuard<RecordingJob>;

/// How soon a reconcile that found a child cache still filling comes back.
const CACHE_WAIT: Duration = Duration::from_millis(250);
/// How long a Job may have no Pod before the Job controller's `FailedCreate` Events are looked up:
/// normally its Pod exists within a second, and every look costs the API server a list.
const NO_POD_GRACE: Duration = Duration::from_secs(3);

/// How long the operator trusts the status it wrote over a cache that has not caught up yet.
const APPLIED_TRUST: Duration = Duration::from_secs(30);
/// A RecordingJob's status waits for others' Job creates only this long after its creation.
const HOLD_BACK_AT_MOST: Duration = Duration::from_secs(30);

/// What every reconciliation shares.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub rjs: Store<Guarded>,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub slots: Slots,
    pub events: Events,
    pub metrics: Metrics,
    /// The status last applied per RecordingJob (by uid), until the cache shows it: reconciles
    /// triggered in between must not see the old status and write or announce it twice.
    applied: Mutex<HashMap<String, (RecordingJobStatus, Instant)>>,
    /// Consecutive failures per RecordingJob, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Woken when a slot may have freed up.
    slot_freed: Arc<Notify>,
    /// Job creates in flight. While there are any, status writes that do not finish a
    /// RecordingJob wait: in a burst, the API server's time goes to starting work first.
    creating: AtomicUsize,
}

/// Counts a Job create in flight for as long as it lives.
struct Creating<'a>(&'a AtomicUsize);

impl<'a> Creating<'a> {
    fn start(count: &'a AtomicUsize) -> Creating<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Creating(count)
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[instrument(skip(guard, ctx), fields(namespace = field::Empty, name = field::Empty))]
pub async fn reconcile(guard: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer();
    let span = Span::current();
    span.record(
        "namespace",
        guard.meta().namespace.as_deref().unwrap_or_default(),
    );
    span.record("name", guard.meta().name.as_deref().unwrap_or_default());
    let rj = match &guard.0 {
        Ok(rj) => rj,
        Err(invalid) => return Err(Error::InvalidObject(invalid.error.clone())),
    };
    debug!("reconciling");
    let result = reconcile_recording_job(rj, &ctx).await;
    if result.is_ok()
        && let Some(uid) = rj.uid()
    {
        lock(&ctx.failures).remove(&uid);
    }
    result
}

/// Requeues transient failures with exponential backoff (1 s doubling to 5 min); waits for a
/// change of the object on the others.
pub fn error_policy(guard: Arc<Guarded>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error);
    warn!(
        name = guard.meta().name.as_deref().unwrap_or_default(),
        namespace = guard.meta().namespace.as_deref().unwrap_or_default(),
        error = %error,
        "reconcile failed"
    );
    if !error.is_transient() {
        return Action::await_change();
    }
    let uid = guard.meta().uid.clone().unwrap_or_default();
    let mut failures = lock(&ctx.failures);
    let n = failures.entry(uid).or_insert(0);
    *n = n.saturating_add(1);
    Action::requeue(Duration::from_secs(1 << (*n - 1).min(8)).min(RESYNC))
}

async fn reconcile_recording_job(rj: &RecordingJob, ctx: &Context) -> Result<Action> {
    let (name, namespace) = crate::job::name_and_namespace(rj)?;
    let uid = rj.uid().ok_or(Error::MissingMetadata("uid"))?;
    if rj.metadata.deletion_timestamp.is_some() {
        // Garbage collection deletes the Job and its Pods.
        lock(&ctx.applied).remove(&uid);
        return Ok(Action::await_change());
    }
    // Never wait for the child caches inside a reconcile: their watches are driven by the same
    // controller stream, so waiting here could hold them up. Not ready yet (the operator is
    // starting, or just became the leader): look again in a moment. That is no failure, so it is
    // neither logged as one nor counted in reconcile_errors_total.
    for (ready, what) in [
        (ctx.jobs.wait_until_ready().now_or_never(), "Job"),
        (ctx.pods.wait_until_ready().now_or_never(), "Pod"),
    ] {
        if !matches!(ready, Some(Ok(()))) {
            debug!(
                cache = what,
                "waiting for the cache to fill before reconciling"
            );
            return Ok(Action::requeue(CACHE_WAIT));
        }
    }

    let mut view = ctx.view(rj, &uid);
    let mut previous = view.status.clone().unwrap_or_default();
    let mut job = ctx.jobs.get(&job_ref(rj));
    let mut foreign = None;
    match job.as_deref().map(|j| ownership(j, rj)) {
        None | Some(Ownership::Ours) => {}
        Some(Ownership::Leaving) => {
            debug!("waiting for the previous Job of this name to be garbage collected");
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        Some(Ownership::Foreign(message)) => {
            // Never derive a status from someone else's Job.
            job = None;
            foreign = Some(Error::ForeignJob(message));
        }
    }

    // A Job this RecordingJob had is gone while its status is not final: deleted by hand.
    // A retry the user asked for (the `mixdown.dev/retry` annotation on a Failed RecordingJob).
    let ours = job.as_deref().filter(|_| foreign.is_none());
    match plan_retry(&view, ours, jiff::Timestamp::now()) {
        RetryPlan::Nothing => {}
        RetryPlan::DeleteJob => {
            if let Some(job) = ours {
                ctx.delete_job(job, "the Job of the failed run, for a retry")
                    .await?;
            }
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        RetryPlan::WaitForJob => return Ok(Action::requeue(Duration::from_secs(1))),
        RetryPlan::Start(fresh) => {
            let request = retry::requested(rj).unwrap_or_default().to_string();
            ctx.apply_status(&namespace, &name, &fresh).await?;
            ctx.metrics.status_writes.inc();
            // The last attempt's progress is the worker's field: it goes too.
            ctx.clear_stale_progress(&namespace, &name).await?;
            lock(&ctx.applied).insert(uid.clone(), (fresh, Instant::now()));
            info!(%request, "retrying as asked");
            ctx.events.publish(
                rj.object_ref(&()),
                vec![event(
                    EventType::Normal,
                    reasons::RETRYING,
                    "Retry",
                    format!(
                        "Retrying as asked ({}={request}); the run before is kept in status.retries",
                        mixdown_crds::names::annotations::RETRY
                    ),
                )],
            );
            return Ok(Action::requeue(Duration::from_millis(100)));
        }
        RetryPlan::Refuse(refused) => {
            let why = refused
                .retries
                .last()
                .and_then(|r| r.refused.clone())
                .unwrap_or_default();
            ctx.apply_status(&namespace, &name, &refused).await?;
            ctx.metrics.status_writes.inc();
            lock(&ctx.applied).insert(uid.clone(), (refused, Instant::now()));
            ctx.events.publish(
                rj.object_ref(&()),
                vec![event(
                    EventType::Warning,
                    reasons::RETRY_REFUSED,
                    "Retry",
                    format!("Retry not done: {why}"),
                )],
            );
            return Ok(Action::await_change());
        }
    }

    // A Job on its way out counts as gone: once it has a deletionTimestamp, garbage collection
    // may already be taking its Pods away (or orphaning them), so it no longer tells the story.
    let terminating = job
        .as_deref()
        .is_some_and(|j| j.metadata.deletion_timestamp.is_some());
    if (job.is_none() || terminating)
        && foreign.is_none()
        && !is_final(&view)
        && let Some(job_name) = view.status.as_ref().and_then(|s| s.job_name.clone())
    {
        return ctx
            .after_job_deleted(rj, &view, &previous, &job_name, terminating)
            .await;
    }

    let mut created = false;
    let mut admission = Admission::Admitted;
    if job.is_none() && !is_final(&view) {
        let gate = upload_gate(rj, jiff::Timestamp::now());
        let judged = match foreign {
            Some(conflict) => Err(conflict),
            None => validate(rj),
        };
        match judged {
            Err(error) => admission = ctx.refused(error)?,
            Ok(()) if !gate.is_open() => admission = Admission::Uploading,
            Ok(()) => {
                if rj.tracks_may_change(Some(&previous)) {
                    // The API may still be sealing or adding tracks: close that door first, on
                    // the spec this reconcile read, or not at all (see `close_uploads`).
                    let Some(closed) = ctx.close_uploads(rj, &previous).await? else {
                        debug!(
                            "the spec changed while uploads were being closed; reading it again"
                        );
                        return Ok(Action::requeue(Duration::from_millis(200)));
                    };
                    lock(&ctx.applied).insert(uid.clone(), (closed.clone(), Instant::now()));
                    view.status = Some(closed.clone());
                    previous = closed;
                }
                match ctx.admit(rj) {
                    None => {
                        admission = Admission::Queued {
                            max_running_jobs: ctx.slots.max(),
                        }
                    }
                    Some(reservation) => match ctx.create_job(rj).await {
                        Ok((j, fresh)) => {
                            created = fresh;
                            job = Some(Arc::new(j));
                        }
                        Err(error) => {
                            ctx.slots.release(reservation);
                            admission = ctx.refused(error)?;
                        }
                    },
                }
            }
        }
    }

    let pods: Vec<Arc<Pod>> = match &job {
        Some(_) => ctx.pods.state_filter(|p| {
            p.metadata.namespace.as_deref() == Some(namespace.as_str())
                && p.labels().get(labels::RECORDING_JOB) == Some(&name)
        }),
        None => Vec::new(),
    };
    let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let create_failure = match job.as_deref() {
        Some(job) if !is_final(&view) && waits_for_its_pod(job, &pod_refs) => {
            ctx.create_failure(job).await
        }
        _ => None,
    };
    let derive = |view: &RecordingJob| {
        derive_status(
            view,
            job.as_deref(),
            &pod_refs,
            create_failure.as_deref(),
            &admission,
            jiff::Timestamp::now(),
        )
    };
    let mut desired = derive(&view);
    // A report too large for the termination message lists the files that fit; the worker put
    // every one in status.readyOutputs before it exited, a write the cache may not have yet.
    if desired.phase == Some(Phase::Succeeded)
        && !is_final(&view)
        && crate::status::misses_files(&view, &desired.outputs)
    {
        let api: Api<RecordingJob> = Api::namespaced(ctx.client.clone(), &namespace);
        let fresh = api
            .get(&name)
            .await
            .map_err(Error::kube("reading the worker's readyOutputs"))?;
        if let (Some(status), Some(fresh)) = (view.status.as_mut(), fresh.status) {
            status.ready_outputs = fresh.ready_outputs;
            desired = derive(&view);
        }
    }

    let tries = job
        .as_deref()
        .map(|job| attempts(job, &pod_refs))
        .unwrap_or_default();
    let steps = plan::steps(
        &desired,
        Facts {
            job_running: job.as_deref().is_some_and(job_is_running),
            bad_input: tries
                .iter()
                .any(|a| a.ended.as_ref().is_some_and(|e| e.is_bad_input())),
            pod_failure_policy: job
                .as_deref()
                .and_then(|j| j.spec.as_ref())
                .is_some_and(|spec| spec.pod_failure_policy.is_some()),
            attempts: tries.len(),
            progress_stale: progress_is_stale(rj, tries.last(), field_managers::WORKER),
            needs_write: needs_write(Some(&previous), &desired),
            others_creating: ctx.creating.load(Ordering::SeqCst) > 0,
            young: is_young(rj),
            created,
        },
    );
    let created = created.then_some(name.as_str());
    if let Some(job) = job.as_deref() {
        if steps.stop_retries {
            ctx.stop_retries(job).await?;
        }
        if steps.clear_stale_progress {
            ctx.clear_stale_progress(&namespace, &name).await?;
        }
    }
    match steps.status {
        StatusWrite::Write => {
            ctx.apply_status(&namespace, &name, &desired).await?;
            ctx.metrics.status_writes.inc();
            lock(&ctx.applied).insert(uid, (desired.clone(), Instant::now()));
            ctx.announce(rj, &previous, &desired, created);
        }
        StatusWrite::HeldBack => {
            debug!("status write held back while Jobs are being created");
            ctx.metrics.status_writes_held_back.inc();
            if created.is_some() {
                ctx.announce(rj, &previous, &previous, created);
            }
            return Ok(Action::requeue(STATUS_HELD_BACK));
        }
        StatusWrite::Unchanged if created.is_some() => {
            ctx.announce(rj, &previous, &desired, created);
        }
        StatusWrite::Unchanged => {}
    }
    if steps.delete_unstarted_job
        && let Some(job) = job.as_deref()
    {
        // The status saying why is written first; this is tried again until done.
        ctx.delete_job(job, "the Job whose worker Pod never started")
            .await?;
    }

    next_action(rj, ctx, &desired).await
}

/// Whether `rj` was created less than [`HOLD_BACK_AT_MOST`] ago: only then may its status wait for
/// a burst of Job creates, so that a steady stream of them cannot keep a status stale for long.
fn is_young(rj: &RecordingJob) -> bool {
    rj.metadata
        .creation_timestamp
        .as_ref()
        .is_some_and(|created| {
            jiff::Timestamp::now().duration_since(created.0)
                < jiff::SignedDuration::try_from(HOLD_BACK_AT_MOST).unwrap_or_default()
        })
}

/// What [`plan::next`] says, done: the requeue, or the deletion of an expired RecordingJob.
async fn next_action(
    rj: &RecordingJob,
    ctx: &Context,
    status: &RecordingJobStatus,
) -> Result<Action> {
    let now = jiff::Timestamp::now();
    let job_created = ctx
        .jobs
        .get(&job_ref(rj))
        .and_then(|job| job.metadata.creation_timestamp.clone())
        .map(|created| created.0);
    match plan::next(
        status,
        &upload_gate(rj, now),
        job_created,
        rj.spec.start_timeout_seconds,
        rj.spec.ttl_seconds_after_finished,
        now,
    ) {
        Next::Requeue(after) => Ok(Action::requeue(after)),
        Next::AwaitChange => Ok(Action::await_change()),
        Next::DeleteExpired => {
            ctx.delete_expired(rj).await?;
            Ok(Action::await_change())
        }
    }
}

impl Context {
    /// A context over the given caches; `slot_freed` is notified whenever a slot may have freed
    /// up (a Job deleted, a RecordingJob finished).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: Client,
        config: Config,
        rjs: Store<Guarded>,
        jobs: Store<Job>,
        pods: Store<Pod>,
        events: Events,
        metrics: Metrics,
        slot_freed: Arc<Notify>,
    ) -> Context {
        Context {
            client,
            slots: Slots::new(config.max_running_jobs),
            config,
            rjs,
            jobs,
            pods,
            events,
            metrics,
            applied: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            creating: AtomicUsize::new(0),
            slot_freed,
        }
    }

    /// Waits until a slot may have freed up.
    pub(crate) async fn slot_freed(&self) {
        self.slot_freed.notified().await;
    }

    /// The RecordingJob with the status this operator last wrote, if the cache lags behind it.
    fn view(&self, rj: &RecordingJob, uid: &str) -> RecordingJob {
        let mut view = rj.clone();
        let mut applied = lock(&self.applied);
        if let Some((status, at)) = applied.get(uid) {
            let cached_now = rj
                .status
                .as_ref()
                .is_some_and(|s| !needs_write(Some(s), status));
            if cached_now || at.elapsed() > APPLIED_TRUST {
                applied.remove(uid);
            } else {
                // The worker's fields are as the cache has them: the operator never writes them.
                let progress = rj.status.as_ref().and_then(|s| s.progress);
                let ready_outputs = rj
                    .status
                    .as_ref()
                    .map(|s| s.ready_outputs.clone())
                    .unwrap_or_default();
                view.status = Some(RecordingJobStatus {
                    progress,
                    ready_outputs,
                    ..status.clone()
                });
            }
        }
        view
    }

    /// Asks for a slot under the concurrency cap.
    fn admit(&self, rj: &RecordingJob) -> Option<crate::slots::Reservation> {
        let candidate = queue_key(rj);
        let mut waiting = Vec::new();
        self.slots.try_admit(&candidate, || {
            waiting = self.waiting();
            Census {
                running: self.running(),
                waiting: &waiting,
            }
        })
    }

    /// Jobs that hold a slot: not finished, not being deleted.
    fn running(&self) -> Vec<QueueKey> {
        self.jobs
            .state()
            .iter()
            .filter(|j| job_is_running(j))
            .map(|j| QueueKey {
                created: j.metadata.creation_timestamp.clone(),
                namespace: j.namespace().unwrap_or_default(),
                name: j.name_any(),
            })
            .collect()
    }

    /// RecordingJobs waiting for a slot: valid, unfinished, and without a Job.
    fn waiting(&self) -> Vec<QueueKey> {
        let now = jiff::Timestamp::now();
        self.rjs
            .state()
            .iter()
            .filter_map(|g| g.0.as_ref().ok())
            .filter(|rj| {
                rj.metadata.deletion_timestamp.is_none()
                    && !is_final(rj)
                    && validate(rj).is_ok()
                    && upload_gate(rj, now).is_open()
                    && self.jobs.get(&job_ref(rj)).is_none()
            })
            .map(queue_key)
            .collect()
    }

    /// Triggers a reconcile of the RecordingJobs next in line for the slots now free.
    pub(crate) fn wake_next(&self, trigger: &mpsc::UnboundedSender<ObjectRef<Guarded>>) {
        if self.slots.max() == 0 {
            return;
        }
        let free = self.slots.free(self.running().len());
        if free == 0 {
            return;
        }
        let mut waiting = self.waiting();
        for key in next_in_line(&mut waiting, free) {
            let _ = trigger.unbounded_send(ObjectRef::new(&key.name).within(&key.namespace));
        }
    }

    /// Creates the Job; `Ok((job, true))` if this call created it, `Ok((job, false))` if it
    /// already existed (409: an earlier reconcile, or another replica before a failover).
    async fn create_job(&self, rj: &RecordingJob) -> Result<(Job, bool)> {
        let job = build_job(rj, &self.config)?;
        let _creating = Creating::start(&self.creating);
        let namespace = rj.namespace().unwrap_or_default();
        let api: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                self.metrics.jobs_created.inc();
                info!(job = %created.name_any(), "created Job");
                Ok((created, true))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // Never re-apply a template: the existing Job is the Job.
                let existing = api
                    .get(&rj.name_any())
                    .await
                    .map_err(Error::kube("reading the existing Job"))?;
                match ownership(&existing, rj) {
                    Ownership::Ours => Ok((existing, false)),
                    Ownership::Leaving => Err(Error::PreviousJob(existing.name_any())),
                    Ownership::Foreign(message) => Err(Error::ForeignJob(message)),
                }
            }
            Err(error) => Err(Error::creating_job(&job.name_any(), error)),
        }
    }

    /// A RecordingJob that cannot be processed as its spec stands ([`Error::refusal`]) becomes
    /// Failed with the refusal's reason and message, a condition and a Warning Event, recorded at
    /// its generation: the reconciler does not try again until the spec changes. Counted once
    /// under the error's label, since someone has to act. Anything else is passed on, to be
    /// retried with backoff.
    fn refused(&self, error: Error) -> Result<Admission> {
        let Some(refusal) = error.refusal() else {
            return Err(error);
        };
        self.metrics.reconcile_failed(&error);
        info!(reason = refusal.reason, message = %refusal.message, "refused; failed until the spec changes");
        Ok(Admission::Refused(refusal))
    }

    /// Stops the Job from retrying after bad input, on servers that ignore `podFailurePolicy`
    /// (before Kubernetes 1.26): no more Pods (`parallelism: 0`), and a deadline already past so
    /// the Job controller marks the Job Failed. Both fields are mutable; the template is not
    /// touched. The Job controller waits 10 s before replacing a failed Pod, and this runs on
    /// the failed Pod's own status update, so no second attempt starts.
    async fn stop_retries(&self, job: &Job) -> Result<()> {
        let elapsed = job
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map_or(1, |start| {
                jiff::Timestamp::now()
                    .duration_since(start.0)
                    .as_secs()
                    .max(1)
            });
        let patch = json!({"spec": {"parallelism": 0, "activeDeadlineSeconds": elapsed}});
        let api: Api<Job> =
            Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        match api
            .patch(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                info!(job = %job.name_any(), "bad input: stopped the Job's retries");
                self.slot_freed.notify_one();
                Ok(())
            }
            // A server that refuses the change enforces podFailurePolicy itself.
            Err(kube::Error::Api(status)) if status.code == 422 => {
                warn!(job = %job.name_any(), message = %status.message, "could not stop the Job's retries");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(Error::kube("stopping the Job's retries")(error)),
        }
    }

    /// Removes the previous attempt's `progress` and `readyOutputs` so that a retry starts from
    /// nothing.
    ///
    /// They belong to the worker's field manager, and the operator must not take it over.
    /// Server-side apply removes a field when its only manager applies without it, so the
    /// operator applies an empty status *as that manager*: the field goes, and ownership stays
    /// where it was for the next attempt's first write.
    async fn clear_stale_progress(&self, namespace: &str, name: &str) -> Result<()> {
        let api: Api<RecordingJob> = Api::namespaced(self.client.clone(), namespace);
        let body = json!({"apiVersion": API_VERSION, "kind": KIND, "status": {}});
        api.patch_status(
            name,
            &PatchParams::apply(field_managers::WORKER),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::kube("clearing the previous attempt's progress"))?;
        debug!("cleared the previous attempt's progress");
        Ok(())
    }

    /// Ends the uploads of `rj`: applies the status that admits it (Pending, with its
    /// UploadsComplete condition) on the condition that the RecordingJob is still the one this
    /// reconcile read (its `resourceVersion`). The API refuses to seal or add tracks once the
    /// phase is no longer Uploading, and a seal that landed first makes this write fail with a
    /// conflict (`Ok(None)`): then the reconcile reads the new spec and judges again. Either way
    /// the Job is built from the spec as sealed, and the spec does not change afterwards.
    async fn close_uploads(
        &self,
        rj: &RecordingJob,
        previous: &RecordingJobStatus,
    ) -> Result<Option<RecordingJobStatus>> {
        let (name, namespace) = crate::job::name_and_namespace(rj)?;
        let resource_version = rj
            .resource_version()
            .ok_or(Error::MissingMetadata("resourceVersion"))?;
        let mut view = rj.clone();
        view.status = Some(previous.clone());
        let status = RecordingJobStatus {
            progress: None,
            ready_outputs: Vec::new(),
            ..derive_status(
                &view,
                None,
                &[],
                None,
                &Admission::Admitted,
                jiff::Timestamp::now(),
            )
        };
        let api: Api<RecordingJob> = Api::namespaced(self.client.clone(), &namespace);
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"resourceVersion": resource_version},
            "status": status,
        });
        match api
            .patch_status(
                &name,
                &PatchParams::apply(field_managers::OPERATOR).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => {
                self.metrics.status_writes.inc();
                info!(
                    reason = status
                        .conditions
                        .iter()
                        .find(|c| c.type_ == conditions::UPLOADS_COMPLETE)
                        .map_or("", |c| c.reason.as_str()),
                    "uploads closed"
                );
                self.announce(rj, previous, &status, None);
                Ok(Some(status))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(error) => Err(Error::kube("closing the uploads")(error)),
        }
    }

    /// Server-side applies the operator's status fields; `progress` and `readyOutputs`, the
    /// worker's, are never among them.
    async fn apply_status(
        &self,
        namespace: &str,
        name: &str,
        status: &RecordingJobStatus,
    ) -> Result<()> {
        let api: Api<RecordingJob> = Api::namespaced(self.client.clone(), namespace);
        let status = RecordingJobStatus {
            progress: None,
            ready_outputs: Vec::new(),
            ..status.clone()
        };
        let body = json!({"apiVersion": API_VERSION, "kind": KIND, "status": status});
        api.patch_status(
            name,
            &PatchParams::apply(field_managers::OPERATOR).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(Error::kube("applying status"))?;
        debug!(phase = ?status.phase, "status applied");
        Ok(())
    }

    async fn delete_expired(&self, rj: &RecordingJob) -> Result<()> {
        let api: Api<RecordingJob> =
            Api::namespaced(self.client.clone(), &rj.namespace().unwrap_or_default());
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: rj.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&rj.name_any(), &params).await {
            Ok(_) => {
                info!("deleted after ttlSecondsAfterFinished");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
            Err(error) => Err(Error::kube("deleting the expired RecordingJob")(error)),
        }
    }

    /// A RecordingJob whose Job `job_name` the cache no longer holds (see `job_deleted_status`).
    async fn after_job_deleted(
        &self,
        rj: &RecordingJob,
        view: &RecordingJob,
        previous: &RecordingJobStatus,
        job_name: &str,
        terminating: bool,
    ) -> Result<Action> {
        let (name, namespace) = crate::job::name_and_namespace(rj)?;
        // The cache may simply not have seen the Job this operator just created: ask the server.
        let api: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        if !terminating
            && api
                .get_opt(job_name)
                .await
                .map_err(Error::kube("reading the RecordingJob's Job"))?
                .is_some_and(|j| j.metadata.deletion_timestamp.is_none())
        {
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
        let created = rj.metadata.creation_timestamp.clone();
        let pods = self.pods.state_filter(|p| {
            p.metadata.namespace.as_deref() == Some(namespace.as_str())
                && p.labels().get(labels::RECORDING_JOB) == Some(&name)
                && p.metadata.creation_timestamp >= created
        });
        let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
        let desired = job_deleted_status(view, job_name, &pod_refs, jiff::Timestamp::now());
        if needs_write(Some(previous), &desired) {
            if previous.reason.as_deref() != Some(reasons::JOB_DELETED) {
                warn!(job = %job_name, "the RecordingJob's Job was deleted before its worker finished");
            }
            self.apply_status(&namespace, &name, &desired).await?;
            self.metrics.status_writes.inc();
            let uid = rj.uid().unwrap_or_default();
            lock(&self.applied).insert(uid, (desired.clone(), Instant::now()));
            self.announce(rj, previous, &desired, None);
        }
        if desired.phase.is_some_and(Phase::is_finished) {
            next_action(rj, self, &desired).await
        } else {
            Ok(Action::requeue(Duration::from_secs(2)))
        }
    }

    /// The message of the Job controller's latest `FailedCreate` Event about `job`: why it cannot
    /// create the worker Pod (a missing ServiceAccount, a quota). Best effort: a failed lookup
    /// only means no cause is shown yet.
    async fn create_failure(&self, job: &Job) -> Option<String> {
        let (namespace, uid) = (job.namespace()?, job.uid()?);
        let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), &namespace);
        let params = ListParams::default().fields(&format!(
            "involvedObject.uid={uid},reason={}",
            reasons::FAILED_CREATE
        ));
        match api.list(&params).await {
            Ok(list) => list
                .items
                .into_iter()
                .max_by_key(|e| {
                    e.last_timestamp
                        .as_ref()
                        .map(|t| t.0)
                        .or_else(|| e.event_time.as_ref().map(|t| t.0))
                })
                .and_then(|e| e.message),
            Err(error) => {
                debug!(%error, "cannot read the Job's FailedCreate Events");
                None
            }
        }
    }

    /// Deletes `job` with its Pods (in the background); `what` says which Job, for the log.
    async fn delete_job(&self, job: &Job, what: &'static str) -> Result<()> {
        let (namespace, name) = (job.namespace().unwrap_or_default(), job.name_any());
        let api: Api<Job> = Api::namespaced(self.client.clone(), &namespace);
        let params = DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Background),
            preconditions: job.uid().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                info!(job = %name, "deleted {what}");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
            Err(error) => Err(Error::kube("deleting a Job")(error)),
        }
    }

    /// Publishes the Events of [`plan::announcement`], and counts a finished RecordingJob.
    fn announce(
        &self,
        rj: &RecordingJob,
        previous: &RecordingJobStatus,
        desired: &RecordingJobStatus,
        created: Option<&str>,
    ) {
        let said = plan::announcement(previous, desired, created, self.slots.max());
        if let Some((phase, took)) = said.finished {
            if let Some(seconds) = took {
                self.metrics.processed(phase, seconds);
            }
            self.slot_freed.notify_one();
        }
        let mut regarding = rj.object_ref(&());
        if said.about_this_version {
            // The recorder folds Events of one reason about one object into a series that keeps
            // the first note; about this version of the object, it is a new Event with the new
            // cause (client-go's references carry the resourceVersion too).
            regarding.resource_version = rj.resource_version();
        }
        // Best effort, in the background: never slows the reconcile down.
        self.events.publish(regarding, said.events);
    }
}

/// Whether `job` has been waiting for its first Pod longer than a Job normally does: it is not
/// finished, and none of its Pods exists.
fn waits_for_its_pod(job: &Job, pods: &[&Pod]) -> bool {
    let old_enough = job.metadata.creation_timestamp.as_ref().is_some_and(|t| {
        jiff::Timestamp::now().duration_since(t.0)
            >= jiff::SignedDuration::try_from(NO_POD_GRACE).unwrap_or_default()
    });
    old_enough
        && job_is_running(job)
        && pods.iter().all(|p| p.metadata.deletion_timestamp.is_some())
}

fn queue_key(rj: &RecordingJob) -> QueueKey {
    QueueKey {
        created: rj.metadata.creation_timestamp.clone(),
        namespace: rj.namespace().unwrap_or_default(),
        name: rj.name_any(),
    }
}

/// A Job holds a slot until it finished, its retries were stopped, or it is being deleted.
pub fn job_is_running(job: &Job) -> bool {
    let finished = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        });
    let stopped = job.spec.as_ref().and_then(|s| s.parallelism) == Some(0);
    !finished && !stopped && job.metadata.deletion_timestamp.is_none()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
