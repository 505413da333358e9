//! `mixdown-api bucket-setup`: the bucket settings a studio needs, applied to R2 or any
//! S3-compatible storage (the chart runs it as a hook Job when `storage.bucketSetup.enabled`):
//!
//! - **CORS**: the studio page PUTs chunks straight to storage through presigned URLs, from the
//!   studio's origin, and reads each answer's `ETag`. One rule: methods PUT, GET and HEAD from
//!   the given origins, any request header (a presigned PUT carries the signed ones), `ETag`
//!   exposed, preflights cached for an hour.
//! - **Lifecycle**: multipart uploads a worker started and never completed or aborted (a Pod
//!   killed mid-upload) are aborted after `abort_incomplete_uploads_days`, so their parts stop
//!   costing storage; and chunks under `{keyPrefix}/chunks/` older than `expire_chunks_days` are
//!   deleted. Chunks are normally deleted by the worker once the finished file is verified; what
//!   stays is a recording that failed and was never retried, or one never stopped. Expiring them
//!   loses those recordings, so the default is long (30 days) and 0 turns the rule off.
//!
//! Both replace the bucket's configuration of that kind (S3 has one CORS and one lifecycle
//! document per bucket): a bucket with rules of its own needs them merged by hand, which the
//! README describes. After applying, both are read back and compared, one line each.

use std::io::Write;

use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, CorsConfiguration, CorsRule,
    ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
};

use crate::config::BucketSetupArgs;
use crate::storage::Storage;

/// Id of the lifecycle rule that aborts incomplete multipart uploads.
pub const ABORT_RULE: &str = "mixdown-abort-incomplete-uploads";
/// Id of the lifecycle rule that expires chunks.
pub const EXPIRE_RULE: &str = "mixdown-expire-chunks";

/// Applies the settings and reads them back, one line each to `out`. An error names the call that
/// failed and what to check.
pub async fn run(args: &BucketSetupArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let config = args.storage.config();
    let storage = Storage::new(&config)?;
    let (client, bucket) = storage.bucket_client();
    let origins: Vec<String> = args
        .cors_origins
        .iter()
        .map(|o| o.trim().trim_end_matches('/').to_string())
        .filter(|o| !o.is_empty())
        .collect();
    anyhow::ensure!(
        !origins.is_empty(),
        "no studio origin for the CORS rule: give --cors-origin (or MIXDOWN_STUDIO_ORIGINS), the \
         origin the studio page is served from, e.g. https://studio.example.com"
    );

    let cors = cors_rule(&origins)?;
    client
        .put_bucket_cors()
        .bucket(bucket)
        .cors_configuration(
            CorsConfiguration::builder()
                .cors_rules(cors.clone())
                .build()?,
        )
        .send()
        .await
        .map_err(|e| failed("PutBucketCors", bucket, e))?;
    let read = client
        .get_bucket_cors()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| failed("GetBucketCors", bucket, e))?;
    anyhow::ensure!(
        read.cors_rules() == [cors],
        "bucket {bucket}: the CORS configuration read back is not the one applied: {:?}",
        read.cors_rules()
    );
    writeln!(
        out,
        "ok   cors      PUT, GET, HEAD from {}; ETag exposed",
        origins.join(", ")
    )?;

    let rules = lifecycle_rules(
        &storage.layout.chunks_root(),
        args.abort_incomplete_uploads_days,
        args.expire_chunks_days,
    )?;
    client
        .put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .set_rules(Some(rules.clone()))
                .build()?,
        )
        .send()
        .await
        .map_err(|e| failed("PutBucketLifecycleConfiguration", bucket, e))?;
    let read = client
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| failed("GetBucketLifecycleConfiguration", bucket, e))?;
    anyhow::ensure!(
        read.rules() == rules.as_slice(),
        "bucket {bucket}: the lifecycle configuration read back is not the one applied: {:?}",
        read.rules()
    );
    let expiry = match args.expire_chunks_days {
        0 => "chunks never expire".to_string(),
        days => format!(
            "chunks under {} expire after {days} days",
            storage.layout.chunks_root()
        ),
    };
    writeln!(
        out,
        "ok   lifecycle incomplete multipart uploads aborted after {} days; {expiry}",
        args.abort_incomplete_uploads_days
    )?;
    Ok(())
}

/// The one CORS rule the studio page needs.
pub fn cors_rule(origins: &[String]) -> anyhow::Result<CorsRule> {
    Ok(CorsRule::builder()
        .id("mixdown-studio")
        .set_allowed_origins(Some(origins.to_vec()))
        .set_allowed_methods(Some(vec!["PUT".into(), "GET".into(), "HEAD".into()]))
        .allowed_headers("*")
        .expose_headers("ETag")
        .max_age_seconds(3600)
        .build()?)
}

/// The lifecycle rules: incomplete multipart uploads aborted after `abort_days` (bucket-wide:
/// only workers make multipart uploads here), and chunks under `chunks_prefix` expired after
/// `expire_days` (none when 0).
pub fn lifecycle_rules(
    chunks_prefix: &str,
    abort_days: u32,
    expire_days: u32,
) -> anyhow::Result<Vec<LifecycleRule>> {
    let days = |d: u32| i32::try_from(d).map_err(|_| anyhow::anyhow!("{d} days is too many"));
    let mut rules = vec![
        LifecycleRule::builder()
            .id(ABORT_RULE)
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("").build())
            .abort_incomplete_multipart_upload(
                AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(days(abort_days)?)
                    .build(),
            )
            .build()?,
    ];
    if expire_days > 0 {
        rules.push(
            LifecycleRule::builder()
                .id(EXPIRE_RULE)
                .status(ExpirationStatus::Enabled)
                .filter(LifecycleRuleFilter::builder().prefix(chunks_prefix).build())
                .expiration(
                    LifecycleExpiration::builder()
                        .days(days(expire_days)?)
                        .build(),
                )
                .build()?,
        );
    }
    Ok(rules)
}

fn failed<E: std::error::Error + Send + Sync + 'static>(
    call: &str,
    bucket: &str,
    error: aws_sdk_s3::error::SdkError<E>,
) -> anyhow::Error {
    let detail = aws_sdk_s3::error::DisplayErrorContext(&error).to_string();
    let hint = if detail.contains("AccessDenied") {
        ": the credentials may not change the bucket's settings (R2: an API token with Admin \
         Read & Write on the bucket; S3: s3:PutBucketCORS and s3:PutLifecycleConfiguration)"
    } else if detail.contains("NoSuchBucket") {
        ": the bucket does not exist; check storage.bucket and the endpoint"
    } else {
        ""
    };
    anyhow::anyhow!("{call} on bucket {bucket} failed{hint}: {detail}")
}
