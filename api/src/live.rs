//! The watches that make every replica tell its sockets the same story: kube-runtime watchers
//! (with backoff) over recording markers and RecordingJobs, each event handed to the [`Book`],
//! and whatever the book says the rooms must hear emitted while it is locked.
//!
//! The book is this replica's reflector store: it keeps every RecordingJob and marker the way a
//! `reflector::Store` would (applied on `InitDone`, so a relist replaces it atomically), plus what
//! each room was last told, which a plain store cannot say. Reads (`request_processing_status`,
//! `GET /api/recordings/{id}`, snapshots) never call the API server.
//!
//! Locking while emitting is what lets a connecting socket join its room and get its snapshot
//! under the same lock ([`crate::socket`]): it then hears every change after the snapshot, and
//! none before it twice.
//!
//! [`Book`]: crate::book::Book

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::book::JobInfo;
use crate::cluster::{MARKER_SELECTOR, marker_of};
use crate::metrics::Ops;

/// How often progress that waited for its interval is looked at.
const TICK: Duration = Duration::from_millis(100);
/// How often confirmed chunk counts are written to their markers: at most one write per
/// recording per replica in this time, however many chunks arrive.
const CONFIRMED_INTERVAL: Duration = Duration::from_millis(500);

/// Runs both watches and the progress ticker until `stop` is cancelled. Marks `ops` ready once
/// both have listed everything.
pub async fn run(app: App, ops: Ops, stop: CancellationToken) {
    let rj_stream = watcher(app.cluster.rjs.clone(), watcher::Config::default()).default_backoff();
    let marker_stream = watcher(
        app.cluster.markers.clone(),
        watcher::Config::default().labels(MARKER_SELECTOR),
    )
    .default_backoff();
    let mut rj_stream = std::pin::pin!(rj_stream);
    let mut marker_stream = std::pin::pin!(marker_stream);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    // Writing confirmed counts waits on the API server; it must not hold up the watches.
    tokio::spawn({
        let (app, stop) = (app.clone(), stop.clone());
        async move {
            let mut flush = tokio::time::interval(CONFIRMED_INTERVAL);
            flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = flush.tick() => app.flush_confirmed().await,
                }
            }
        }
    });
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            event = rj_stream.next() => match event {
                Some(Ok(event)) => {
                    let event = map_event(event, |rj| JobInfo::of(&rj));
                    if let Some(event) = event {
                        let mut book = app.book.lock().await;
                        let outs = book.job_event(event, Instant::now());
                        app.emit_all(&outs).await;
                        ops.ready.store(book.synced(), Ordering::Relaxed);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "RecordingJob watch failed; retrying with backoff"),
                None => return,
            },
            event = marker_stream.next() => match event {
                Some(Ok(event)) => {
                    let event = map_event(event, |cm| marker_of(&cm));
                    if let Some(event) = event {
                        let mut book = app.book.lock().await;
                        let outs = book.marker_event(event);
                        app.emit_all(&outs).await;
                        ops.ready.store(book.synced(), Ordering::Relaxed);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "recording marker watch failed; retrying with backoff"),
                None => return,
            },
            _ = tick.tick() => {
                let mut book = app.book.lock().await;
                let outs = book.tick(Instant::now());
                app.emit_all(&outs).await;
            }
            _ = sweep.tick() => app.sweep_confirmed(),
        }
    }
}

/// The event with its object read as `f` reads it; objects `f` cannot read are skipped (an event
/// of nothing is no event, but `Init` and `InitDone` always pass).
fn map_event<K, T>(event: Event<K>, f: impl Fn(K) -> Option<T>) -> Option<Event<T>> {
    Some(match event {
        Event::Apply(k) => Event::Apply(f(k)?),
        Event::Delete(k) => Event::Delete(f(k)?),
        Event::InitApply(k) => Event::InitApply(f(k)?),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    })
}
