//! The studio page, served by the API itself at `/`: everything it loads comes from here (no CDN),
//! compiled into the binary so that a replica serves the page that matches its API.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../studio/index.html");
const SCRIPT: &str = include_str!("../studio/studio.js");
const STYLE: &str = include_str!("../studio/studio.css");
/// socket.io-client 4.8.4's browser build, unchanged but for its source-map comment.
const SOCKET_IO: &str = include_str!("../studio/vendor/socket.io.min.js");

/// What the page may load: only this origin, plus the storage it uploads to and plays from.
const CSP: &str = "default-src 'self'; connect-src 'self' http: https: ws: wss:; media-src 'self' blob: http: https:; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/studio.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/studio.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        // No icon: answered, so that browsers do not log a 404 on every visit.
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route(
            "/vendor/socket.io.min.js",
            get(|| async { asset(SOCKET_IO, "text/javascript; charset=utf-8") }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small, and must match the API it talks to: revalidate every time.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
