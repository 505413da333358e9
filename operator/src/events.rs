//! Kubernetes Events, published in the background with a bounded number of requests in flight.
//!
//! Events are best effort: a reconcile hands them over and goes on. Publishing them one task per
//! reconcile would let a burst (a thousand RecordingJobs at once) put thousands of Event creates
//! in flight, competing with the Job creates that matter more. Here they wait in a queue and at
//! most [`IN_FLIGHT`] are sent at a time; the Events of one hand-over keep their order. When the
//! queue is full, new Events are dropped with a warning rather than holding up reconciles.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Event creates in flight at most.
pub const IN_FLIGHT: usize = 4;
/// Hand-overs waiting at most.
pub const QUEUE: usize = 16_384;

/// The queue's sending side; cheap to clone.
#[derive(Clone)]
pub struct Events {
    queue: mpsc::Sender<(ObjectReference, Vec<Event>)>,
}

impl Events {
    /// Starts the publisher. It ends when every [`Events`] is dropped and the queue is empty.
    pub fn start(recorder: Recorder) -> (Events, JoinHandle<()>) {
        let (queue, mut pending) = mpsc::channel::<(ObjectReference, Vec<Event>)>(QUEUE);
        let publisher = tokio::spawn(async move {
            futures::stream::poll_fn(move |cx| pending.poll_recv(cx))
                .for_each_concurrent(IN_FLIGHT, |(regarding, events)| {
                    let recorder = recorder.clone();
                    async move {
                        for event in events {
                            if let Err(error) = recorder.publish(&event, &regarding).await {
                                tracing::warn!(
                                    %error,
                                    reason = %event.reason,
                                    name = regarding.name.as_deref().unwrap_or_default(),
                                    "could not record an Event"
                                );
                            }
                        }
                    }
                })
                .await;
        });
        (Events { queue }, publisher)
    }

    /// Queues `events` about `regarding`, in this order.
    pub fn publish(&self, regarding: ObjectReference, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let (why, (regarding, events)) = match self.queue.try_send((regarding, events)) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(v)) => ("the Event queue is full", v),
            Err(mpsc::error::TrySendError::Closed(v)) => ("the Event publisher has stopped", v),
        };
        tracing::warn!(
            name = regarding.name.as_deref().unwrap_or_default(),
            dropped = events.len(),
            "{why}; dropping Events"
        );
    }
}
