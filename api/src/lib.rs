//! The Mixdown API server: rooms and tokens, presigned chunk uploads, stop → RecordingJob, and
//! live socket.io events about processing, from every replica.
//!
//! - [`app`]: every operation once, called by both doors, [`rest`] and [`socket`];
//! - [`book`]: what this replica knows of each recording and which events a change calls for
//!   (pure, unit-tested); [`live`] feeds it from the cluster's watches and emits;
//! - [`cluster`]: recording markers and RecordingJobs; [`storage`] and [`presign`]: the bucket;
//! - [`selftest`]: `mixdown-api selftest`, the chart's `helm test`;
//! - [`auth`]: tokens and the admin key; [`ids`]: the one id validator; [`error`]: the one error.
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod book;
pub mod bucket_setup;
pub mod cluster;
pub mod config;
pub mod error;
pub mod ids;
pub mod live;
pub mod metrics;
pub mod presign;
pub mod rest;
pub mod seal;
pub mod selftest;
pub mod socket;
pub mod storage;
pub mod studio;
pub mod telemetry;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use socketioxide::layer::SocketIoLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

/// Largest REST request body taken (every request is a small JSON object).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The public router: REST under `/api`, socket.io under `/socket.io`.
pub fn router(app: app::App, io_layer: SocketIoLayer, origins: &[String]) -> Router {
    rest::router()
        .with_state(app)
        .layer(io_layer)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(cors(origins))
        .layer(TraceLayer::new_for_http())
}

/// CORS for the configured studio origins only; none configured: same-origin only.
pub fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter(|o| !o.trim().is_empty())
        .filter_map(|o| HeaderValue::from_str(o.trim().trim_end_matches('/')).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .allow_credentials(true)
}
