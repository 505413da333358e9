//! The bucket, as the worker uses it: list chunks, download them, multipart uploads, HEAD,
//! presigned GETs for ffprobe, batched deletes, the manifest. Every failure becomes
//! [`WorkerError::Storage`] naming the step and the key, or [`WorkerError::StorageAccess`] when
//! storage refused the worker's settings (credentials, bucket, permissions: [`access_problem`]),
//! in words that say what to check.
//!
//! Retries: the AWS SDK's standard strategy (exponential backoff with jitter) for requests, each
//! retry logged as it happens ([`crate::retry_log`]); a download whose body breaks off after the
//! headers is retried here, because the SDK does not.
//! Checksums are computed only where S3 requires them: R2 and other S3-compatible servers do not
//! all accept the SDK's newer default trailing checksums.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;

use crate::chunks::Listed;
use crate::error::WorkerError;

/// Most keys one DeleteObjects request may carry.
const DELETE_BATCH: usize = 1000;

/// How the worker reaches its bucket.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    pub path_style: bool,
    pub max_attempts: u32,
}

/// The bucket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Storage {
    client: Client,
    bucket: String,
    /// As configured; `None`: the SDK's default (AWS S3, or AWS_ENDPOINT_URL).
    endpoint: Option<String>,
    max_attempts: u32,
}

/// An object as HEAD describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    /// As storage answers it, quotes included (`"…-3"` for a multipart upload).
    pub e_tag: String,
}

/// What storage refused about the worker's settings, as opposed to storage being unwell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessProblem {
    /// The access key is unknown, or the secret does not match it (the signature is wrong).
    Credentials,
    /// The request's time is too far from storage's clock: the signature is refused for it.
    Clock,
    /// The bucket does not exist at this endpoint.
    Bucket,
    /// The key is known but not allowed to do this.
    Denied,
}

/// Classifies an error answer by its S3 error code, or by its status when it has no body (HEAD).
/// `None`: not a problem of the settings (a server error, throttling, a network failure, a
/// missing object).
pub fn access_problem(code: Option<&str>, status: Option<u16>) -> Option<AccessProblem> {
    match code {
        Some(
            "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "InvalidToken"
            | "ExpiredToken"
            | "TokenRefreshRequired"
            | "AuthorizationHeaderMalformed"
            | "InvalidArgument.Authorization"
            | "NotSignedUp"
            | "Unauthorized",
        ) => Some(AccessProblem::Credentials),
        Some("RequestTimeTooSkewed") => Some(AccessProblem::Clock),
        Some("NoSuchBucket") => Some(AccessProblem::Bucket),
        Some("AccessDenied" | "AllAccessDisabled" | "AccountProblem" | "Forbidden") => {
            Some(AccessProblem::Denied)
        }
        _ => match status {
            Some(401) => Some(AccessProblem::Credentials),
            Some(403) => Some(AccessProblem::Denied),
            _ => None,
        },
    }
}

/// Any failure that is not an answer of storage's (building a request, reading a body).
fn storage_error<E>(step: impl std::fmt::Display, err: E) -> WorkerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    tracing::debug!(error = %DisplayErrorContext(&err), "{step}");
    WorkerError::Storage(format!("{step}: {}", error_chain(&err)))
}

impl Storage {
    /// The error of a request to storage: a refused setting says what to check; a request that
    /// never got an answer says that storage was unreachable.
    fn request_error<E, R>(&self, step: impl std::fmt::Display, err: SdkError<E, R>) -> WorkerError
    where
        E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
        R: std::fmt::Debug + HttpStatus + Send + Sync + 'static,
    {
        let status = err.raw_response().and_then(HttpStatus::status_code);
        let code = err.code().map(str::to_owned);
        if let Some(problem) = access_problem(code.as_deref(), status) {
            tracing::debug!(error = %DisplayErrorContext(&err), "{step}");
            let answer = code.unwrap_or_else(|| format!("HTTP {}", status.unwrap_or(0)));
            return WorkerError::StorageAccess(self.access_message(
                problem,
                &step.to_string(),
                &answer,
            ));
        }
        let unreachable = matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
        );
        let step = if unreachable {
            format!("{step}: storage at {} is unreachable", self.endpoint_name())
        } else {
            step.to_string()
        };
        storage_error(step, err)
    }

    fn endpoint_name(&self) -> &str {
        self.endpoint
            .as_deref()
            .unwrap_or("the default AWS S3 endpoint")
    }

    /// What to check, in the words of the settings a person edits.
    fn access_message(&self, problem: AccessProblem, step: &str, answer: &str) -> String {
        use mixdown_crds::names::env;
        let (bucket, endpoint) = (&self.bucket, self.endpoint_name());
        match problem {
            AccessProblem::Credentials => format!(
                "storage at {endpoint} refused the credentials ({answer}) when {step}: check the \
                 Secret's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (a key pair of this \
                 endpoint's account, copied without a trailing newline or space) and that \
                 {} is that account's endpoint",
                env::S3_ENDPOINT
            ),
            AccessProblem::Clock => format!(
                "storage at {endpoint} refused the request's time ({answer}) when {step}: this \
                 machine's clock is more than 15 minutes off; check the node's time \
                 synchronisation"
            ),
            AccessProblem::Bucket => format!(
                "bucket {bucket} does not exist at {endpoint} ({answer}) when {step}: check {} \
                 (the bucket's name) and {} (the endpoint of the account that holds it)",
                env::S3_BUCKET,
                env::S3_ENDPOINT
            ),
            AccessProblem::Denied => format!(
                "storage at {endpoint} denied access to bucket {bucket} ({answer}) when {step}: \
                 check that the key in the Secret (AWS_ACCESS_KEY_ID) may read, write and delete \
                 objects in bucket {bucket} (on R2: an API token with Object Read & Write on it), \
                 and {} and {}",
                env::S3_BUCKET,
                env::S3_ENDPOINT
            ),
        }
    }
}

/// The HTTP status of a raw response, whatever its type.
pub trait HttpStatus {
    fn status_code(&self) -> Option<u16>;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> Option<u16> {
        Some(self.status().as_u16())
    }
}

/// An error and its sources as one line (`dispatch failure: io error: … reset by peer`), without
/// the SDK's Debug dump that [`DisplayErrorContext`] appends.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(err) = current {
        let text = err.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

impl Storage {
    /// A client for the bucket; credentials from the SDK's default chain (the AWS_* variables).
    pub async fn connect(settings: &StorageSettings) -> Storage {
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .load()
            .await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.path_style)
            .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts))
            .interceptor(crate::retry_log::LogRetries)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    // A part is at most a few MiB; a request taking longer than this is stuck.
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Storage {
            client: Client::from_conf(config.build()),
            bucket: settings.bucket.clone(),
            endpoint: settings.endpoint.clone(),
            max_attempts: settings.max_attempts,
        }
    }

    /// A storage over a client made elsewhere (tests: the test kit's server).
    #[cfg(test)]
    pub(crate) fn from_client(client: Client, bucket: &str) -> Storage {
        Storage {
            client,
            bucket: bucket.to_owned(),
            endpoint: None,
            max_attempts: 1,
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Every object directly under `prefix` (a directory prefix), following pagination.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, WorkerError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| self.request_error(format!("listing {prefix}"), err))?;
            objects.extend(page.contents().iter().filter_map(|object| {
                Some(Listed {
                    key: object.key()?.to_owned(),
                    size: u64::try_from(object.size().unwrap_or(0)).unwrap_or(0),
                })
            }));
        }
        Ok(objects)
    }

    /// The whole object `key`, which the listing said has `expected_size` bytes.
    pub async fn get(&self, key: &str, expected_size: u64) -> Result<Bytes, WorkerError> {
        let mut attempt = 1;
        loop {
            let response = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|err| self.request_error(format!("downloading {key}"), err))?;
            match response.body.collect().await {
                Ok(body) => {
                    let body = body.into_bytes();
                    if body.len() as u64 != expected_size {
                        return Err(WorkerError::Storage(format!(
                            "{key} changed while processing: listed with {expected_size} bytes, downloaded {}",
                            body.len()
                        )));
                    }
                    return Ok(body);
                }
                Err(err) if attempt < self.max_attempts => {
                    tracing::warn!(key, attempt, error = %error_chain(&err), "download broke off, retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(err) => return Err(storage_error(format!("downloading {key}"), err)),
            }
        }
    }

    /// Size and ETag of object `key` as stored; `None` when there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<Head>, WorkerError> {
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let head = match result {
            Ok(head) => head,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => {
                return Ok(None);
            }
            Err(err) => return Err(self.request_error(format!("HEAD {key}"), err)),
        };
        Ok(Some(Head {
            size: u64::try_from(head.content_length().unwrap_or(-1)).unwrap_or(0),
            e_tag: head.e_tag().unwrap_or_default().to_owned(),
        }))
    }

    /// The whole of a small object `key`, or `None` when there is no such object.
    pub async fn get_optional(&self, key: &str) -> Result<Option<Bytes>, WorkerError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let response = match result {
            Ok(response) => response,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Ok(None);
            }
            Err(err) => return Err(self.request_error(format!("reading {key}"), err)),
        };
        let body = response
            .body
            .collect()
            .await
            .map_err(|err| storage_error(format!("reading {key}"), err))?;
        Ok(Some(body.into_bytes()))
    }

    /// Writes a small object `key` in one PutObject.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), WorkerError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|err| self.request_error(format!("writing {key}"), err))?;
        Ok(())
    }

    /// A GET URL for `key` that ffprobe can read without credentials, valid for `expires_in`.
    pub async fn presigned_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<String, WorkerError> {
        let config = PresigningConfig::expires_in(expires_in)
            .map_err(|err| storage_error("presigning", err))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|err| self.request_error(format!("presigning a GET of {key}"), err))?;
        Ok(request.uri().to_owned())
    }

    /// Deletes `keys` in batches; fails if any key could not be deleted.
    pub async fn delete(&self, keys: &[String]) -> Result<(), WorkerError> {
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| storage_error("building DeleteObjects", err))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|err| storage_error("building DeleteObjects", err))?;
            let output = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|err| {
                    self.request_error(format!("deleting {} chunks", batch.len()), err)
                })?;
            if let Some(first) = output.errors().first() {
                return Err(WorkerError::Storage(format!(
                    "deleting chunks: {} of {} failed, first {}: {} {}",
                    output.errors().len(),
                    batch.len(),
                    first.key().unwrap_or("?"),
                    first.code().unwrap_or("?"),
                    first.message().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    /// Starts a multipart upload of `key`.
    pub async fn create_upload(
        &self,
        key: &str,
        content_type: &str,
    ) -> Result<Upload, WorkerError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|err| self.request_error(format!("starting the upload of {key}"), err))?;
        let upload_id = created.upload_id().ok_or_else(|| {
            WorkerError::Storage(format!(
                "starting the upload of {key}: no upload id in the answer"
            ))
        })?;
        Ok(Upload {
            storage: self.clone(),
            key: key.to_owned(),
            upload_id: upload_id.to_owned(),
        })
    }
}

impl Storage {
    /// Aborts every multipart upload of `key` still open: the ones a run killed before it could
    /// abort them (SIGKILL, a lost node) left. Never fails: an upload that stays is for the
    /// bucket's lifecycle rule.
    pub async fn abort_uploads_of(&self, key: &str, patience: Duration) {
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(key)
            .send()
            .await;
        let listed = match listed {
            Ok(listed) => listed,
            Err(err) => {
                tracing::warn!(key, error = %error_chain(&err), "cannot list the open uploads of an earlier run");
                return;
            }
        };
        for open in listed.uploads() {
            let (Some(found), Some(upload_id)) = (open.key(), open.upload_id()) else {
                continue;
            };
            if found != key {
                continue;
            }
            tracing::info!(
                key,
                upload_id,
                "aborting an upload an earlier run left open"
            );
            Upload {
                storage: self.clone(),
                key: key.to_owned(),
                upload_id: upload_id.to_owned(),
            }
            .abort(patience)
            .await;
        }
    }
}

/// One multipart upload in progress. Complete it or abort it: dropping it leaves it open.
#[derive(Debug, Clone)]
pub struct Upload {
    storage: Storage,
    key: String,
    upload_id: String,
}

impl Upload {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Uploads part `number` (from 1); returns its ETag. A body streamed from a file is signed
    /// as UNSIGNED-PAYLOAD, which spares both ends hashing every byte with SHA-256.
    pub async fn put_part(&self, number: i32, body: ByteStream) -> Result<String, WorkerError> {
        let output = self
            .storage
            .client
            .upload_part()
            .bucket(&self.storage.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(body)
            .send()
            .await
            .map_err(|err| {
                self.storage
                    .request_error(format!("uploading part {number} of {}", self.key), err)
            })?;
        output.e_tag().map(str::to_owned).ok_or_else(|| {
            WorkerError::Storage(format!(
                "uploading part {number} of {}: no ETag in the answer",
                self.key
            ))
        })
    }

    /// Completes the upload from `parts` (`(number, etag)`, in order).
    pub async fn complete(&self, parts: &[(i32, String)]) -> Result<(), WorkerError> {
        let parts = parts
            .iter()
            .map(|(number, etag)| {
                CompletedPart::builder()
                    .part_number(*number)
                    .e_tag(etag)
                    .build()
            })
            .collect();
        self.storage
            .client
            .complete_multipart_upload()
            .bucket(&self.storage.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|err| {
                self.storage
                    .request_error(format!("completing the upload of {}", self.key), err)
            })?;
        Ok(())
    }

    /// Aborts the upload, trying for up to `patience` so that an outage that ends soon does not
    /// leave an incomplete upload behind. Never fails: a worker that cannot abort has already
    /// failed for another reason, which is the one to report.
    pub async fn abort(&self, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        let mut attempt = 1;
        loop {
            let result = self
                .storage
                .client
                .abort_multipart_upload()
                .bucket(&self.storage.bucket)
                .key(&self.key)
                .upload_id(&self.upload_id)
                .send()
                .await;
            match result {
                Ok(_) => {
                    tracing::info!(key = %self.key, "multipart upload aborted");
                    return;
                }
                Err(err) if err.code() == Some("NoSuchUpload") => return,
                Err(err) if tokio::time::Instant::now() + backoff(attempt) < deadline => {
                    tracing::warn!(key = %self.key, attempt, error = %error_chain(&err), "aborting the multipart upload failed, retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(err) => {
                    tracing::error!(key = %self.key, upload_id = %self.upload_id, error = %error_chain(&err),
                        "giving up aborting the multipart upload; a lifecycle rule on the bucket removes it later");
                    return;
                }
            }
        }
    }
}

/// Pause before retry `attempt` (from 1): 0.5 s, 1 s, 2 s, … up to 5 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.saturating_sub(1).min(4)))
        .min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn error_chains_read_as_one_line() {
        let err = Layer(
            "dispatch failure",
            Some(Box::new(Layer(
                "io error",
                Some(Box::new(Layer("connection reset", None))),
            ))),
        );
        assert_eq!(
            error_chain(&err),
            "dispatch failure: io error: connection reset"
        );
        let repeated = Layer(
            "timeout: operation timed out",
            Some(Box::new(Layer("operation timed out", None))),
        );
        assert_eq!(error_chain(&repeated), "timeout: operation timed out");
    }

    #[test]
    fn refused_settings_are_told_from_storage_being_unwell() {
        use AccessProblem::*;
        for (code, status, expected) in [
            (Some("SignatureDoesNotMatch"), Some(403), Some(Credentials)),
            (Some("InvalidAccessKeyId"), Some(403), Some(Credentials)),
            (Some("NotSignedUp"), Some(403), Some(Credentials)),
            (Some("RequestTimeTooSkewed"), Some(403), Some(Clock)),
            (Some("NoSuchBucket"), Some(404), Some(Bucket)),
            (Some("AccessDenied"), Some(403), Some(Denied)),
            // HEAD answers carry no body, so no code.
            (None, Some(403), Some(Denied)),
            (None, Some(401), Some(Credentials)),
            (Some("NoSuchKey"), Some(404), None),
            (None, Some(404), None),
            (Some("InternalError"), Some(500), None),
            (Some("SlowDown"), Some(503), None),
            (None, None, None),
        ] {
            assert_eq!(
                access_problem(code, status),
                expected,
                "{code:?} {status:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(5));
        assert_eq!(backoff(50), Duration::from_secs(5));
    }
}
