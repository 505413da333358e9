//! `mixdown-api bucket-setup`, the command the chart's bucket set-up hook runs: the real binary
//! against the test kit's S3-compatible server, whose answers a user would check with their
//! storage's console: the CORS rule and the lifecycle rules as applied.

use std::process::Output;

use aws_sdk_s3::types::ExpirationStatus;
use mixdown_testkit::s3::S3Server;

fn bucket_setup(s3: &S3Server, bucket: &str, extra: &[&str]) -> Output {
    let api = mixdown_testkit::bins::workspace_binary("mixdown-api", "mixdown-api");
    std::process::Command::new(api)
        .arg("bucket-setup")
        .env_clear()
        .env("MIXDOWN_S3_ENDPOINT", s3.endpoint())
        .env("MIXDOWN_S3_REGION", s3.region())
        .env("MIXDOWN_S3_BUCKET", bucket)
        .env("MIXDOWN_S3_PATH_STYLE", "true")
        .env("AWS_ACCESS_KEY_ID", s3.access_key())
        .env("AWS_SECRET_ACCESS_KEY", s3.secret_key())
        .env("MIXDOWN_KEY_PREFIX", "studio-a")
        .args(extra)
        .output()
        .expect("running mixdown-api bucket-setup")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bucket_gets_the_cors_rule_and_lifecycle_rules_the_studio_needs() {
    let s3 = S3Server::start().await.expect("the S3 server");
    let bucket = s3.create_bucket().await;
    let output = bucket_setup(
        &s3,
        &bucket,
        &[
            "--cors-origin",
            "https://studio.example.com,https://backup.example.com/",
            "--expire-chunks-days",
            "14",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    let said = text(&output);
    assert!(said.contains("ok   cors"), "{said}");
    assert!(
        said.contains("chunks under studio-a/chunks/ expire after 14 days"),
        "{said}"
    );

    let client = s3.client();
    let cors = client
        .get_bucket_cors()
        .bucket(&bucket)
        .send()
        .await
        .expect("the bucket's CORS rules");
    let [rule] = cors.cors_rules() else {
        panic!("one CORS rule: {cors:?}");
    };
    assert_eq!(
        rule.allowed_origins(),
        ["https://studio.example.com", "https://backup.example.com"]
    );
    assert_eq!(rule.allowed_methods(), ["PUT", "GET", "HEAD"]);
    assert_eq!(
        rule.expose_headers(),
        ["ETag"],
        "the page reads each chunk's ETag"
    );

    let lifecycle = client
        .get_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .send()
        .await
        .expect("the bucket's lifecycle rules");
    let rules = lifecycle.rules();
    assert_eq!(rules.len(), 2, "{rules:?}");
    let abort = &rules[0];
    assert_eq!(abort.status(), &ExpirationStatus::Enabled);
    assert_eq!(
        abort
            .abort_incomplete_multipart_upload()
            .and_then(|a| a.days_after_initiation()),
        Some(1)
    );
    let expire = &rules[1];
    assert_eq!(
        expire.filter().and_then(|f| f.prefix()),
        Some("studio-a/chunks/"),
        "only chunks expire, never finished files"
    );
    assert_eq!(expire.expiration().and_then(|e| e.days()), Some(14));

    // Run again with chunk expiry off: the same call replaces the rules (a helm upgrade).
    let again = bucket_setup(
        &s3,
        &bucket,
        &[
            "--cors-origin",
            "https://studio.example.com",
            "--expire-chunks-days",
            "0",
        ],
    );
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("chunks never expire"),
        "{}",
        text(&again)
    );
    let lifecycle = client
        .get_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .send()
        .await
        .expect("the bucket's lifecycle rules");
    assert_eq!(lifecycle.rules().len(), 1, "{:?}", lifecycle.rules());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_origin_or_bucket_is_said_with_what_to_check() {
    let s3 = S3Server::start().await.expect("the S3 server");
    let bucket = s3.create_bucket().await;

    let no_origin = bucket_setup(&s3, &bucket, &[]);
    assert_eq!(no_origin.status.code(), Some(1));
    assert!(
        text(&no_origin).contains("no studio origin for the CORS rule: give --cors-origin"),
        "{}",
        text(&no_origin)
    );

    let no_bucket = bucket_setup(
        &s3,
        "no-such-bucket",
        &["--cors-origin", "https://studio.example.com"],
    );
    assert_eq!(no_bucket.status.code(), Some(1));
    let said = text(&no_bucket);
    assert!(
        said.contains("PutBucketCors on bucket no-such-bucket failed: the bucket does not exist"),
        "{said}"
    );
}
