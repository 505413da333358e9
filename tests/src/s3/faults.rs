//! The gate in front of the S3 service: it refuses requests while storage is "away" and records
//! every request with the S3 operation it turned out to be.
//!
//! The operation name is only known inside `s3s`, after routing and the signature check. The
//! gate puts an empty [`OperationSlot`] into each request's extensions and [`RecordOperation`],
//! the service's access check, fills it in; the gate reads it back once the response is there.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use s3s::access::{S3Access, S3AccessContext};
use s3s::service::S3Service;
use s3s::{S3Result, StdError};
use tower::ServiceExt;
use tower_http::cors::Cors;

/// One request the server received, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method, e.g. `PUT`.
    pub method: String,
    /// Path and query string as sent, e.g. `/bucket/key?partNumber=1&uploadId=...`.
    pub path_and_query: String,
    /// The S3 operation, e.g. `PutObject`, `UploadPart`, `DeleteObjects`; `None` when the request
    /// was refused before it got that far (bad signature, unknown route, CORS preflight, outage).
    pub operation: Option<String>,
    /// Status of the response; `None` when the connection was closed without one (outage).
    pub status: Option<u16>,
}

/// Availability and the request log, shared by the gate and the [`super::S3Server`] handle.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    state: Mutex<State>,
    log: Mutex<Vec<RequestRecord>>,
}

#[derive(Debug, Default)]
struct State {
    /// Down until `set_available(true)`.
    down: bool,
    /// Down until this instant.
    down_until: Option<Instant>,
    /// An outage that starts once this many more UploadPart requests have succeeded.
    armed: Option<(usize, Duration)>,
}

impl Faults {
    pub(crate) fn set_available(&self, available: bool) {
        let mut state = lock(&self.state);
        if available {
            *state = State::default();
        } else {
            state.down = true;
        }
    }

    pub(crate) fn outage_after_upload_parts(&self, parts: usize, duration: Duration) {
        let mut state = lock(&self.state);
        if parts == 0 {
            state.down_until = Some(Instant::now() + duration);
            state.armed = None;
        } else {
            state.armed = Some((parts, duration));
        }
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.log).clone()
    }

    fn refusing(&self) -> bool {
        let state = lock(&self.state);
        state.down || state.down_until.is_some_and(|until| Instant::now() < until)
    }

    fn upload_part_succeeded(&self) {
        let mut state = lock(&self.state);
        match state.armed {
            Some((1, duration)) => {
                tracing::info!(?duration, "injected storage outage begins");
                state.down_until = Some(Instant::now() + duration);
                state.armed = None;
            }
            Some((parts, duration)) => state.armed = Some((parts - 1, duration)),
            None => {}
        }
    }

    fn record(&self, record: RequestRecord) {
        lock(&self.log).push(record);
    }
}

/// A poisoned lock only means a test panicked while holding it; the data is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where [`RecordOperation`] leaves the name of the operation a request was routed to.
#[derive(Clone, Default)]
struct OperationSlot(Arc<OnceLock<String>>);

/// The access check of the S3 service: records the operation, then applies the default rule of
/// `s3s` (signed requests only), which a custom access check replaces.
pub(crate) struct RecordOperation;

#[async_trait::async_trait]
impl S3Access for RecordOperation {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let name = cx.s3_op().name().to_owned();
        if let Some(slot) = cx.extensions_mut().get::<OperationSlot>() {
            let _ = slot.0.set(name);
        }
        match cx.credentials() {
            Some(_) => Ok(()),
            None => Err(s3s::s3_error!(AccessDenied, "Signature is required")),
        }
    }
}

/// The S3 service as the gate sees it: `s3s` behind the CORS layer.
pub(crate) type Inner = Cors<S3Service>;

/// Serves one request. During an outage the request is refused by returning an error, which
/// makes hyper close the connection without a response.
pub(crate) async fn handle(
    faults: Arc<Faults>,
    inner: Inner,
    mut req: Request<Incoming>,
) -> Result<Response<s3s::Body>, StdError> {
    let method = req.method().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), ToString::to_string);
    if faults.refusing() {
        faults.record(RequestRecord {
            method,
            path_and_query,
            operation: None,
            status: None,
        });
        return Err("storage outage injected by the test kit".into());
    }

    let slot = OperationSlot::default();
    req.extensions_mut().insert(slot.clone());
    let result = inner.oneshot(req).await;
    let operation = slot.0.get().cloned();
    let status = result.as_ref().ok().map(|resp| resp.status());
    if operation.as_deref() == Some("UploadPart") && status.is_some_and(|s| s.is_success()) {
        faults.upload_part_succeeded();
    }
    faults.record(RequestRecord {
        method,
        path_and_query,
        operation,
        status: status.map(|s| s.as_u16()),
    });
    result.map_err(StdError::from)
}
