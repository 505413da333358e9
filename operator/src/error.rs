//! The operator's one error type, classified once: what is worth a retry, what the user must fix
//! first (a [`Refusal`], which fails the RecordingJob until its spec changes), and the label it is
//! counted under in the `reconcile_errors_total` metric.

use kube::core::response::reason as api;
use mixdown_crds::names::reasons;

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

    /// The API server refused the RecordingJob's Job itself (see [`refused_because`]): the same
    /// create can only fail again. Final until the spec changes.
    #[error("{message}")]
    JobRefused {
        /// `InvalidSpec` or `Forbidden`.
        reason: &'static str,
        message: String,
    },

    /// The RecordingJob could not be read at all (it does not match the operator's types).
    #[error("unreadable RecordingJob: {0}")]
    InvalidObject(String),

    /// A Job of the RecordingJob's name exists and belongs to something else; the message says
    /// whose. The operator neither adopts nor deletes it: final (JobConflict) until the spec
    /// changes.
    #[error("{0}")]
    ForeignJob(String),

    /// A Job of the RecordingJob's name is left from an earlier RecordingJob of that name and is
    /// being garbage collected; transient.
    #[error("Job {0} of an earlier RecordingJob of this name is still being deleted")]
    PreviousJob(String),

    /// Serializing something the operator built itself; a bug, but never a panic.
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Why a RecordingJob cannot be processed as its spec stands: the `status.reason` (also the
/// Failed condition's and the Warning Event's) and the message that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// Every `error` label of `reconcile_errors_total`, each of which exists at zero from the start,
/// so that a rate or an alert on one needs no first failure to have a series.
pub const METRIC_LABELS: &[&str] = &[
    "invalid_spec",
    "missing_metadata",
    "kube_conflict",
    "kube_not_found",
    "kube_forbidden",
    "kube_invalid",
    "kube_api",
    "kube_client",
    "invalid_object",
    "foreign_job",
    "previous_job",
    "serialize",
];

impl Error {
    /// Short, stable label for metrics: `reconcile_errors_total{error="..."}`, one of
    /// [`METRIC_LABELS`].
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
            Error::JobRefused { reason, .. } if *reason == reasons::FORBIDDEN => "kube_forbidden",
            Error::JobRefused { .. } => "kube_invalid",
            Error::InvalidObject(_) => "invalid_object",
            Error::ForeignJob(_) => "foreign_job",
            Error::PreviousJob(_) => "previous_job",
            Error::Serialize { .. } => "serialize",
        }
    }

    /// What the user must change before the RecordingJob can be processed, if that is what this
    /// error means: an invalid spec (the operator's own validation, or the API server's refusal
    /// of the Job built from it), a forbidden Job, or a Job of its name that is someone else's.
    /// The reconciler turns it into a Failed status, a condition and a Warning Event, recorded
    /// at the spec's generation, and does not try again until the generation changes.
    pub fn refusal(&self) -> Option<Refusal> {
        let (reason, message) = match self {
            Error::InvalidSpec(message) => (reasons::INVALID_SPEC, message.clone()),
            Error::JobRefused { reason, message } => (*reason, message.clone()),
            Error::ForeignJob(message) => (reasons::JOB_CONFLICT, message.clone()),
            _ => return None,
        };
        Some(Refusal { reason, message })
    }

    /// Whether waiting and retrying can help. A refusal waits for the user to change the spec;
    /// an unreadable object, for any change of it.
    pub fn is_transient(&self) -> bool {
        self.refusal().is_none()
            && !matches!(self, Error::MissingMetadata(_) | Error::InvalidObject(_))
    }

    pub(crate) fn kube(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }

    /// The API server's answer to creating the Job `job`: a refusal of the Job itself
    /// ([`Error::JobRefused`], with the server's message), or a transient failure.
    pub(crate) fn creating_job(job: &str, source: kube::Error) -> Error {
        match (refused_because(&source), &source) {
            (Some(reason), kube::Error::Api(status)) => Error::JobRefused {
                reason,
                message: format!("the API server refused Job {job}: {}", status.message),
            },
            _ => Error::Kube {
                action: "creating Job",
                source,
            },
        }
    }
}

/// Classifies the API server's refusal of a Job create: `Some(InvalidSpec)` when the Job does not
/// validate (422 Invalid, e.g. `resources`, `nodeSelector` or `tolerations` from the spec; 400
/// BadRequest, e.g. a quantity that does not parse), `Some(Forbidden)` when the operator may not
/// create it (403: missing RBAC, an admission policy, a terminating namespace). `None` for
/// everything worth a retry: 5xx, 429, timeouts, 409 conflicts, 404, 401 (credentials are
/// refreshed), connection errors, and a 403 for an exceeded ResourceQuota, which frees up as
/// other work finishes.
///
/// Like client-go's `IsInvalid` and friends, the `reason` decides when the server gave a known
/// one, the code otherwise.
pub fn refused_because(error: &kube::Error) -> Option<&'static str> {
    let kube::Error::Api(status) = error else {
        return None;
    };
    let reason = if !status.reason.is_empty() && api::is_known(&status.reason) {
        status.reason.as_str()
    } else {
        match status.code {
            400 => api::BAD_REQUEST,
            403 => api::FORBIDDEN,
            422 => api::INVALID,
            _ => api::UNKNOWN,
        }
    };
    match reason {
        api::INVALID | api::BAD_REQUEST => Some(reasons::INVALID_SPEC),
        api::FORBIDDEN if status.message.contains("exceeded quota") => None,
        api::FORBIDDEN => Some(reasons::FORBIDDEN),
        _ => None,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    fn api_error(code: u16) -> Error {
        Error::Kube {
            action: "creating Job",
            source: status(code, "Reason", "boom"),
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
            (api_error(422), "kube_invalid", true),
            (Error::ForeignJob("x".into()), "foreign_job", false),
            (Error::PreviousJob("x".into()), "previous_job", true),
            (
                Error::creating_job("j", status(422, "Invalid", "bad")),
                "kube_invalid",
                false,
            ),
            (
                Error::creating_job("j", status(403, "Forbidden", "no")),
                "kube_forbidden",
                false,
            ),
        ];
        for (error, label, transient) in cases {
            assert_eq!(error.metric_label(), label, "{error}");
            assert!(
                METRIC_LABELS.contains(&label),
                "{label} is not in METRIC_LABELS"
            );
            assert_eq!(error.is_transient(), transient, "{error}");
        }
    }

    /// What the API server may answer to a Job create, and what the operator makes of it.
    #[test]
    fn api_errors_on_creating_the_job_are_refusals_or_transient() {
        let invalid = Some(reasons::INVALID_SPEC);
        let forbidden = Some(reasons::FORBIDDEN);
        let cases: &[(u16, &str, &str, Option<&str>)] = &[
            (
                422,
                "Invalid",
                r#"Job.batch "rec-1" is invalid: spec.template.spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu limit"#,
                invalid,
            ),
            (
                400,
                "BadRequest",
                "quantities must match the regular expression",
                invalid,
            ),
            (
                403,
                "Forbidden",
                r#"jobs.batch is forbidden: User "system:serviceaccount:mixdown:mixdown-operator" cannot create resource "jobs""#,
                forbidden,
            ),
            (
                403,
                "Forbidden",
                "unable to create new content in namespace studio because it is being terminated",
                forbidden,
            ),
            (
                403,
                "Forbidden",
                r#"jobs.batch "rec-1" is forbidden: exceeded quota: jobs, requested: count/jobs.batch=1, used: count/jobs.batch=10, limited: count/jobs.batch=10"#,
                None,
            ),
            // No reason, or one the operator does not know: the code decides.
            (422, "", "invalid", invalid),
            (400, "", "bad request", invalid),
            (403, "", "forbidden", forbidden),
            (422, "SomethingNew", "invalid", invalid),
            // A known reason decides over the code.
            (500, "Invalid", "invalid", invalid),
            (422, "InternalError", "oops", None),
            // Worth a retry.
            (409, "AlreadyExists", "exists", None),
            (409, "Conflict", "the object has been modified", None),
            (429, "TooManyRequests", "slow down", None),
            (500, "InternalError", "etcd is down", None),
            (503, "ServiceUnavailable", "starting", None),
            (504, "Timeout", "timed out", None),
            (500, "ServerTimeout", "try again", None),
            (404, "NotFound", "namespace not found", None),
            (401, "Unauthorized", "token expired", None),
            (410, "Gone", "too old", None),
        ];
        for &(code, reason, message, expected) in cases {
            let error = status(code, reason, message);
            assert_eq!(
                refused_because(&error),
                expected,
                "{code} {reason:?} {message:?}"
            );
            let classified = Error::creating_job("rec-1", error);
            assert_eq!(
                classified.is_transient(),
                expected.is_none(),
                "{code} {reason:?}: {classified}"
            );
            match (classified.refusal(), expected) {
                (Some(refusal), Some(reason)) => {
                    assert_eq!(refusal.reason, reason);
                    assert!(
                        refusal
                            .message
                            .starts_with("the API server refused Job rec-1: ")
                            && refusal.message.ends_with(message),
                        "the server's own words: {:?}",
                        refusal.message
                    );
                }
                (None, None) => {}
                (got, _) => panic!("{code} {reason:?}: refusal {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn errors_that_are_not_api_answers_are_transient() {
        let connection = kube::Error::Service("connection refused".into());
        assert_eq!(refused_because(&connection), None);
        assert!(Error::creating_job("rec-1", connection).is_transient());
        let read = kube::Error::ReadEvents(std::io::Error::other("reset"));
        assert_eq!(refused_because(&read), None);
    }

    #[test]
    fn refusals_carry_their_reason_and_message() {
        let cases = [
            (
                Error::InvalidSpec("spec.tracks has 0 entries".into()),
                "InvalidSpec",
                "spec.tracks has 0 entries",
            ),
            (
                Error::ForeignJob(
                    "Job rec-1 exists and is not controlled by this RecordingJob".into(),
                ),
                "JobConflict",
                "Job rec-1 exists and is not controlled by this RecordingJob",
            ),
        ];
        for (error, reason, message) in cases {
            let refusal = error.refusal().expect("a refusal");
            assert_eq!(
                (refusal.reason, refusal.message.as_str()),
                (reason, message)
            );
        }
        assert_eq!(
            api_error(422).refusal(),
            None,
            "only the Job create is judged"
        );
    }
}
