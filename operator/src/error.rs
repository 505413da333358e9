//! The operator's one error type, classified once: what is worth a retry, and the label it is
//! counted under in the `reconcile_errors_total` metric.

/// Everything that can go wrong while reconciling a RecordingJob.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be turned into a Job. Retrying does not help; the RecordingJob is marked
    /// Failed with reason InvalidSpec until its spec changes.
    #[error("invalid RecordingJob spec: {0}")]
    InvalidSpec(String),

    /// The RecordingJob lacks metadata the API server always sets (name, namespace, uid).
    #[error("RecordingJob has no {0}")]
    MissingMetadata(&'static str),

    /// A call to the API server failed; transient, retried with backoff.
    #[error("{action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },

    /// The RecordingJob could not be read at all (it does not match the operator's types).
    #[error("unreadable RecordingJob: {0}")]
    InvalidObject(String),

    /// A Job of the RecordingJob's name exists and belongs to something else.
    #[error("Job {0} exists and is not controlled by this RecordingJob")]
    ForeignJob(String),

    /// The caches were not ready (the operator is starting or lost its watches).
    #[error("waiting for the {0} cache to fill")]
    CacheNotReady(&'static str),

    /// Serializing something the operator built itself; a bug, but never a panic.
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Short, stable label for metrics: `reconcile_errors_total{error="..."}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::MissingMetadata(_) => "missing_metadata",
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) if status.code == 409 => "kube_conflict",
                kube::Error::Api(status) if status.code == 404 => "kube_not_found",
                kube::Error::Api(status) if status.code == 403 => "kube_forbidden",
                kube::Error::Api(status) if status.code == 422 => "kube_invalid",
                kube::Error::Api(_) => "kube_api",
                _ => "kube_client",
            },
            Error::InvalidObject(_) => "invalid_object",
            Error::ForeignJob(_) => "foreign_job",
            Error::CacheNotReady(_) => "cache_not_ready",
            Error::Serialize { .. } => "serialize",
        }
    }

    /// Whether waiting and retrying can help. A bad spec waits for the user to change it.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            Error::InvalidSpec(_) | Error::MissingMetadata(_) | Error::InvalidObject(_)
        )
    }

    pub(crate) fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> Error {
        Error::Kube {
            action: "creating Job",
            source: kube::Error::Api(
                kube::core::Status::failure("boom", "Reason")
                    .with_code(code)
                    .boxed(),
            ),
        }
    }

    #[test]
    fn errors_have_stable_metric_labels() {
        let cases = [
            (Error::InvalidSpec("x".into()), "invalid_spec", false),
            (
                Error::MissingMetadata("namespace"),
                "missing_metadata",
                false,
            ),
            (api_error(409), "kube_conflict", true),
            (api_error(500), "kube_api", true),
            (Error::CacheNotReady("Job"), "cache_not_ready", true),
        ];
        for (error, label, transient) in cases {
            assert_eq!(error.metric_label(), label, "{error}");
            assert_eq!(error.is_transient(), transient, "{error}");
        }
    }
}
