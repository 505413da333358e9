//! The operator's HTTP endpoints: `/metrics` (Prometheus text format), `/healthz` (the process
//! serves) and `/readyz` (it reached the API server and, when leading, its caches are filled).
//!
//! [`app`] is a plain `Router` so tests drive it without a socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

type Refresh = Box<dyn Fn() + Send + Sync>;

/// What the endpoints read.
#[derive(Clone)]
pub struct AppState {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    /// Brings gauges computed from caches up to date just before a scrape.
    refresh: Arc<OnceLock<Refresh>>,
}

impl AppState {
    pub fn new(registry: Registry) -> Self {
        AppState {
            registry: Arc::new(registry),
            ready: Arc::new(AtomicBool::new(false)),
            refresh: Arc::new(OnceLock::new()),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Installs the function that updates cache-derived gauges before each scrape (set once).
    pub fn on_scrape(&self, refresh: impl Fn() + Send + Sync + 'static) {
        let _ = self.refresh.set(Box::new(refresh));
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(refresh) = state.refresh.get() {
        refresh();
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
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

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Serves [`app`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn endpoints_answer() {
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix("mixdown_operator");
        metrics.register(&mut registry);
        let state = AppState::new(registry);
        let refreshed = Arc::new(AtomicBool::new(false));
        let flag = refreshed.clone();
        state.on_scrape(move || flag.store(true, Ordering::Relaxed));

        assert_eq!(get(app(state.clone()), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(app(state.clone()), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.set_ready(true);
        assert_eq!(get(app(state.clone()), "/readyz").await.0, StatusCode::OK);
        let (status, body) = get(app(state), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("mixdown_operator_reconciles_total"), "{body}");
        assert!(refreshed.load(Ordering::Relaxed));
    }
}
