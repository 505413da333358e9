//! Prometheus metrics under the `mixdown_api_` prefix, and the `/metrics`, `/healthz` and
//! `/readyz` endpoints on their own listener (so the public one never serves them).
//!
//! `/readyz` is ready once both watches (RecordingJobs and recording markers) have listed
//! everything once: before that, a snapshot for a connecting socket could miss recordings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The API server's metrics. Cheap to clone (every metric is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    pub sockets_connected: Gauge,
    pub events_emitted: Family<EventLabels, Counter>,
    pub presigns: Counter,
    pub confirms: Family<ResultLabels, Counter>,
    pub stops: Family<ResultLabels, Counter>,
    pub seals: Family<ResultLabels, Counter>,
    pub stop_duration: Histogram,
    pub handshakes_refused: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            sockets_connected: Gauge::default(),
            events_emitted: Family::default(),
            presigns: Counter::default(),
            confirms: Family::default(),
            stops: Family::default(),
            seals: Family::default(),
            // 1 ms .. ~16 s
            stop_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            handshakes_refused: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("mixdown_api");
        r.register(
            "sockets_connected",
            "socket.io sockets connected to this replica",
            self.sockets_connected.clone(),
        );
        r.register(
            "events_emitted",
            "socket.io events emitted to rooms or sockets, by event name",
            self.events_emitted.clone(),
        );
        r.register(
            "presigns",
            "presigned chunk upload URLs handed out",
            self.presigns.clone(),
        );
        r.register(
            "confirms",
            "chunk confirmations, by result (ok, missing, size_mismatch, error)",
            self.confirms.clone(),
        );
        r.register(
            "stops",
            "recording stops, by result (created, existing, refused, error)",
            self.stops.clone(),
        );
        r.register(
            "seals",
            "track seals, by result (sealed, already_sealed, refused, error)",
            self.seals.clone(),
        );
        r.register(
            "stop_duration_seconds",
            "time from a stop request to its RecordingJob existing",
            self.stop_duration.clone(),
        );
        r.register(
            "handshakes_refused",
            "socket.io handshakes refused for a missing, expired or forged token",
            self.handshakes_refused.clone(),
        );
    }

    pub fn emitted(&self, event: &'static str) {
        self.events_emitted
            .get_or_create(&EventLabels { event })
            .inc();
    }
}

/// What the operational endpoints read.
#[derive(Clone)]
pub struct Ops {
    registry: Arc<Registry>,
    pub ready: Arc<AtomicBool>,
}

impl Ops {
    pub fn new(registry: Registry) -> Ops {
        Ops {
            registry: Arc::new(registry),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }
}

pub fn ops_router(ops: Ops) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ops)
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &ops.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed").into_response(),
    }
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    if ops.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the watches have not listed everything yet",
        )
    }
}
