//! The test kit's S3 server behaves like R2 where Mixdown depends on it: presigned uploads from
//! plain HTTP clients and browsers, multipart uploads, listing, batch delete, authentication,
//! and injected outages.

use std::time::Duration;

use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::presigning::{PresignedRequest, PresigningConfig};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use mixdown_testkit::s3::{S3Server, S3ServerOptions};

const MIB: usize = 1024 * 1024;

/// The HTTP status of a failed SDK call, if the server answered at all.
fn status<E>(err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    match err {
        SdkError::ServiceError(e) => Some(e.raw().status().as_u16()),
        _ => None,
    }
}

/// Bytes that differ from part to part, so misordered or truncated parts are noticed.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

async fn presign_put(
    s3: &S3Server,
    bucket: &str,
    key: &str,
    content_type: &str,
    expires: Duration,
) -> PresignedRequest {
    s3.client()
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type(content_type)
        .presigned(PresigningConfig::expires_in(expires).unwrap())
        .await
        .unwrap()
}

/// Sends a presigned request the way a browser would: its URL, its signed headers (with
/// `content-type` replaced when `content_type` is given), and a body.
async fn send(
    presigned: &PresignedRequest,
    url: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(presigned.method().parse().unwrap(), url);
    for (name, value) in presigned.headers() {
        let value = if name.eq_ignore_ascii_case("content-type") {
            content_type.unwrap_or(value)
        } else {
            value
        };
        req = req.header(name, value);
    }
    req.body(body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn presigned_put_is_accepted_only_as_signed() {
    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    let key = "riverside/chunks/room/rec/alice/00000000.webm";
    let body = pattern(70_000, 1);

    let presigned = presign_put(&s3, &bucket, key, "video/webm", Duration::from_secs(300)).await;
    assert!(
        presigned
            .headers()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type")),
        "content type is part of the signature"
    );

    let resp = send(&presigned, presigned.uri(), None, body.clone()).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let head = s3
        .client()
        .head_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(body.len() as i64));
    assert_eq!(head.content_type(), Some("video/webm"));
    assert_eq!(s3.request_count("PutObject"), 1);

    // A presigned GET (how finished files are handed out) returns the bytes.
    let get = s3
        .client()
        .get_object()
        .bucket(&bucket)
        .key(key)
        .presigned(PresigningConfig::expires_in(Duration::from_secs(60)).unwrap())
        .await
        .unwrap();
    let fetched = reqwest::get(get.uri()).await.unwrap();
    assert_eq!(fetched.status(), 200);
    assert!(fetched.bytes().await.unwrap() == body);

    // Tampered signature: flip the last hex digit.
    let uri = presigned.uri();
    let last = uri.chars().last().unwrap();
    let tampered = format!(
        "{}{}",
        &uri[..uri.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let resp = send(&presigned, &tampered, None, body.clone()).await;
    assert_eq!(resp.status(), 403);

    // Another content type than the one signed.
    let resp = send(&presigned, presigned.uri(), Some("text/html"), body.clone()).await;
    assert_eq!(resp.status(), 403);

    // Expired: X-Amz-Date has whole seconds, so wait well past the expiry.
    let short = presign_put(
        &s3,
        &bucket,
        "expired.webm",
        "video/webm",
        Duration::from_secs(1),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let resp = send(&short, short.uri(), None, body.clone()).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("expired"));
    let missing = s3
        .client()
        .head_object()
        .bucket(&bucket)
        .key("expired.webm")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&missing), Some(404));
}

#[tokio::test(flavor = "multi_thread")]
async fn browsers_pass_cors() {
    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    let url = format!("{}/{bucket}/chunk.webm", s3.endpoint());
    let http = reqwest::Client::new();

    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let header = |name: &str| {
        preflight
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    assert_eq!(header("access-control-allow-origin").as_deref(), Some("*"));
    assert!(
        header("access-control-allow-methods")
            .unwrap()
            .contains("put")
    );
    assert!(
        header("access-control-allow-headers")
            .unwrap()
            .contains("content-type")
    );

    // The upload itself: its response lets scripts read the ETag.
    let presigned = presign_put(
        &s3,
        &bucket,
        "chunk.webm",
        "video/webm",
        Duration::from_secs(60),
    )
    .await;
    let mut req = http
        .put(presigned.uri())
        .header("origin", "http://localhost:5173");
    for (name, value) in presigned.headers() {
        req = req.header(name, value);
    }
    let resp = req.body(vec![7u8; 100]).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(
        resp.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("etag")
    );
    assert!(resp.headers().contains_key("etag"));
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_uploads_complete_abort_and_show_when_left_open() {
    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    let client = s3.client();
    let key = "riverside/processed/room/rec/alice.mp4";

    let parts = [pattern(5 * MIB, 1), pattern(5 * MIB, 2), pattern(1234, 3)];
    let upload = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key(key)
        .content_type("video/mp4")
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    assert_eq!(s3.incomplete_uploads(&bucket), [key]);
    let mut completed = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let number = i as i32 + 1;
        let out = client
            .upload_part()
            .bucket(&bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(part.clone()))
            .send()
            .await
            .unwrap();
        completed.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(out.e_tag().unwrap())
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(&bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(s3.incomplete_uploads(&bucket).is_empty());
    let object = client
        .get_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(object.content_type(), Some("video/mp4"));
    let bytes = object.body.collect().await.unwrap().into_bytes();
    assert!(
        bytes == parts.concat(),
        "object bytes differ from the parts"
    );
    assert_eq!(s3.request_count("UploadPart"), 3);

    // Aborted: nothing left.
    let aborted = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key("aborted.mp4")
        .send()
        .await
        .unwrap();
    let aborted_id = aborted.upload_id().unwrap();
    client
        .upload_part()
        .bucket(&bucket)
        .key("aborted.mp4")
        .upload_id(aborted_id)
        .part_number(1)
        .body(ByteStream::from(pattern(MIB, 4)))
        .send()
        .await
        .unwrap();
    client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key("aborted.mp4")
        .upload_id(aborted_id)
        .send()
        .await
        .unwrap();
    assert!(s3.incomplete_uploads(&bucket).is_empty());

    // Started, a part uploaded, never finished: shows, in its own bucket only.
    let open = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key("dir/open.mp4")
        .send()
        .await
        .unwrap();
    client
        .upload_part()
        .bucket(&bucket)
        .key("dir/open.mp4")
        .upload_id(open.upload_id().unwrap())
        .part_number(1)
        .body(ByteStream::from(pattern(MIB, 5)))
        .send()
        .await
        .unwrap();
    assert_eq!(s3.incomplete_uploads(&bucket), ["dir/open.mp4"]);
    let other = s3.create_bucket().await;
    assert!(s3.incomplete_uploads(&other).is_empty());
    let listed = client
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, [key], "open and aborted uploads are not objects");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_complete_leaves_the_upload_open_as_on_r2() {
    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    let client = s3.client();
    let key = "out/alice.mp4";
    let upload = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let mut etags = Vec::new();
    for (number, len) in [(1, 5 * MIB), (2, MIB), (3, MIB), (4, 10)] {
        let out = client
            .upload_part()
            .bucket(&bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(pattern(len, number as u8)))
            .send()
            .await
            .unwrap();
        etags.push(out.e_tag().unwrap().to_owned());
    }
    let complete = |parts: &[(i32, &str)]| {
        let parts = parts
            .iter()
            .map(|(number, etag)| {
                CompletedPart::builder()
                    .part_number(*number)
                    .e_tag(*etag)
                    .build()
            })
            .collect();
        client
            .complete_multipart_upload()
            .bucket(&bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
    };
    let refusals: [(&[(i32, &str)], &str); 3] = [
        (
            &[(1, &etags[0]), (2, &etags[1]), (3, &etags[2])],
            "EntityTooSmall",
        ),
        (&[(1, &etags[0]), (2, &etags[0])], "InvalidPart"),
        (&[(1, &etags[0]), (3, &etags[2])], "InvalidPartOrder"),
    ];
    for (parts, code) in refusals {
        let err = complete(parts).await.unwrap_err();
        assert_eq!(
            err.as_service_error().and_then(|e| e.meta().code()),
            Some(code)
        );
        assert_eq!(
            s3.incomplete_uploads(&bucket),
            [key],
            "still open after {code}"
        );
    }

    let listed = client
        .list_multipart_uploads()
        .bucket(&bucket)
        .prefix("out/")
        .send()
        .await
        .unwrap();
    let uploads: Vec<_> = listed
        .uploads()
        .iter()
        .map(|u| (u.key().unwrap(), u.upload_id().unwrap()))
        .collect();
    assert_eq!(uploads, [(key, upload_id)]);

    // Complete with the parts that fit (part 3 and 4 are left out, and discarded).
    complete(&[(1, &etags[0]), (2, &etags[1])]).await.unwrap();
    let head = client
        .head_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(6 * MIB as i64));
    assert!(s3.incomplete_uploads(&bucket).is_empty());
    let leftovers = std::fs::read_dir(s3.root())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("upload")
        })
        .count();
    assert_eq!(leftovers, 0, "no part or upload file left behind");

    // The upload is gone now: NoSuchUpload, as on R2.
    let err = client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&err), Some(404));
    assert_eq!(
        err.as_service_error().and_then(|e| e.meta().code()),
        Some("NoSuchUpload")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_multipart_uploads_pages_and_filters() {
    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    let client = s3.client();
    let mut expected = Vec::new();
    for key in [
        "out/a.mp4",
        "out/b.mp4",
        "out/b.mp4",
        "out/c.mp4",
        "other/x.mp4",
    ] {
        let upload = client
            .create_multipart_upload()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        if key.starts_with("out/") {
            expected.push((key.to_owned(), upload.upload_id().unwrap().to_owned()));
        }
    }
    expected.sort();

    let mut seen = Vec::new();
    let (mut key_marker, mut id_marker) = (None, None);
    loop {
        let page = client
            .list_multipart_uploads()
            .bucket(&bucket)
            .prefix("out/")
            .max_uploads(3)
            .set_key_marker(key_marker)
            .set_upload_id_marker(id_marker)
            .send()
            .await
            .unwrap();
        seen.extend(page.uploads().iter().map(|u| {
            (
                u.key().unwrap().to_owned(),
                u.upload_id().unwrap().to_owned(),
            )
        }));
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(str::to_owned);
        id_marker = page.next_upload_id_marker().map(str::to_owned);
    }
    assert_eq!(seen, expected);
    assert_eq!(
        s3.incomplete_uploads(&bucket),
        [
            "other/x.mp4",
            "out/a.mp4",
            "out/b.mp4",
            "out/b.mp4",
            "out/c.mp4"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_pages_through_every_key_once_in_order() {
    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    let client = s3.client();
    let mut expected = Vec::new();
    for seq in 0..25 {
        let key = format!("chunks/rec/alice/{seq:08}.webm");
        client
            .put_object()
            .bucket(&bucket)
            .key(&key)
            .body(ByteStream::from(vec![seq as u8; 10]))
            .send()
            .await
            .unwrap();
        expected.push(key);
    }
    for other in [
        "chunks/rec/bob/00000000.webm",
        "chunks/rec/alice-old.webm",
        "processed/rec/alice.mp4",
    ] {
        client
            .put_object()
            .bucket(&bucket)
            .key(other)
            .body(ByteStream::from_static(b"x"))
            .send()
            .await
            .unwrap();
    }

    let mut keys = Vec::new();
    let mut page_sizes = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(&bucket)
            .prefix("chunks/rec/alice/")
            .max_keys(10)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        page_sizes.push(page.contents().len());
        keys.extend(page.contents().iter().map(|o| o.key().unwrap().to_owned()));
        assert!(page.contents().iter().all(|o| o.size() == Some(10)));
        match page.next_continuation_token() {
            Some(next) => {
                assert_eq!(page.is_truncated(), Some(true));
                token = Some(next.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(page_sizes, [10, 10, 5]);
    assert_eq!(keys, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_delete_removes_every_key_in_one_request() {
    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    let client = s3.client();
    let keys: Vec<String> = (0..120)
        .map(|seq| format!("chunks/rec/alice/{seq:08}.webm"))
        .collect();
    for key in &keys {
        client
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(ByteStream::from_static(b"chunk"))
            .send()
            .await
            .unwrap();
    }
    client
        .put_object()
        .bucket(&bucket)
        .key("keep.mp4")
        .body(ByteStream::from_static(b"out"))
        .send()
        .await
        .unwrap();

    let objects = keys
        .iter()
        .map(|key| ObjectIdentifier::builder().key(key).build().unwrap())
        .collect();
    let deleted = client
        .delete_objects()
        .bucket(&bucket)
        .delete(
            Delete::builder()
                .set_objects(Some(objects))
                .quiet(false)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.deleted().len(), keys.len());
    assert!(deleted.errors().is_empty());

    let left = client
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let left: Vec<_> = left.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(left, ["keep.mp4"]);
    assert_eq!(s3.request_count("DeleteObjects"), 1);
    assert_eq!(s3.request_count("DeleteObject"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn writing_into_a_bucket_that_does_not_exist_is_no_such_bucket() {
    let s3 = S3Server::start().await.unwrap();
    let client = s3.client();
    let err = client
        .put_object()
        .bucket("no-such-bucket")
        .key("k")
        .body(ByteStream::from_static(b"v"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&err), Some(404));
    assert_eq!(
        err.as_service_error().and_then(|e| e.meta().code()),
        Some("NoSuchBucket")
    );
    let err = client
        .create_multipart_upload()
        .bucket("no-such-bucket")
        .key("k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&err), Some(404));
    // Nothing was made on the way: the bucket still does not exist.
    assert!(!s3.root().join("no-such-bucket").exists());
    let err = client
        .list_objects_v2()
        .bucket("no-such-bucket")
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&err), Some(404));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_refused_and_any_region_signs() {
    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    let with = |access_key: &str, secret_key: &str, region: &str| {
        let config = s3
            .client()
            .config()
            .to_builder()
            .credentials_provider(Credentials::new(access_key, secret_key, None, None, "test"))
            .region(aws_sdk_s3::config::Region::new(region.to_owned()))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    };

    let wrong_secret = with(s3.access_key(), "not-the-secret", "us-east-1");
    let err = wrong_secret
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&err), Some(403));
    let wrong_key = with("NOTTHEKEY", s3.secret_key(), "us-east-1");
    let err = wrong_key
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&err), Some(403));

    let anonymous = reqwest::get(format!("{}/{bucket}?list-type=2", s3.endpoint()))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 403);

    // R2 clients sign with region `auto`.
    let r2_style = with(s3.access_key(), s3.secret_key(), "auto");
    r2_style
        .put_object()
        .bucket(&bucket)
        .key("k")
        .body(ByteStream::from_static(b"v"))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_outage_refuses_requests_then_ends() {
    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    // No retries, so that each call shows what the server did.
    let client = aws_sdk_s3::Client::from_conf(
        s3.client()
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    let key = "out.mp4";
    let upload = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let part = |number: i32| {
        client
            .upload_part()
            .bucket(&bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(pattern(5 * MIB, number as u8)))
            .send()
    };

    s3.outage_after_upload_parts(1, Duration::from_secs(2));
    let first = part(1).await.unwrap();
    let err = part(2).await.unwrap_err();
    assert_eq!(status(&err), None, "no response during an outage: {err:?}");
    let err = client
        .head_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status(&err), None);
    let plain = reqwest::get(format!("{}/{bucket}", s3.endpoint())).await;
    assert!(
        plain.is_err(),
        "connection closed without a response: {plain:?}"
    );

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let second = part(2).await.unwrap();
    client
        .complete_multipart_upload()
        .bucket(&bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(
                    CompletedPart::builder()
                        .part_number(1)
                        .e_tag(first.e_tag().unwrap())
                        .build(),
                )
                .parts(
                    CompletedPart::builder()
                        .part_number(2)
                        .e_tag(second.e_tag().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let head = client
        .head_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(10 * MIB as i64));

    let refused = s3.requests().iter().filter(|r| r.status.is_none()).count();
    assert_eq!(refused, 3);
    assert_eq!(
        s3.request_count("UploadPart"),
        2,
        "refused requests never reach an operation"
    );

    // Manual control.
    s3.set_available(false);
    assert!(
        client
            .list_objects_v2()
            .bucket(&bucket)
            .send()
            .await
            .is_err()
    );
    s3.set_available(true);
    client
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_retries_through_a_short_outage() {
    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    let retries = RetryConfig::standard()
        .with_max_attempts(30)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_millis(200));
    let client = aws_sdk_s3::Client::from_conf(
        s3.client()
            .config()
            .to_builder()
            .retry_config(retries)
            .build(),
    );

    s3.outage_after_upload_parts(0, Duration::from_millis(700));
    client
        .put_object()
        .bucket(&bucket)
        .key("k")
        .body(ByteStream::from(pattern(MIB, 9)))
        .send()
        .await
        .unwrap();
    let refused = s3.requests().iter().filter(|r| r.status.is_none()).count();
    assert!(
        refused >= 2,
        "the outage was seen and retried: {refused} refused"
    );
    assert_eq!(s3.request_count("PutObject"), 1);
}

/// Deliberately single-threaded: the server must answer while the test's only runtime thread is
/// blocked, as it is when a test waits for a subprocess that talks to the server.
#[tokio::test]
async fn serves_while_the_test_runtime_is_blocked() {
    use std::io::{Read, Write};

    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    let addr = s3.endpoint().trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "GET /{bucket} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_server_removes_its_directory() {
    let s3 = S3Server::start().await.unwrap();
    let bucket = s3.create_bucket().await;
    s3.client()
        .put_object()
        .bucket(&bucket)
        .key("a/b")
        .body(ByteStream::from_static(b"v"))
        .send()
        .await
        .unwrap();
    let root = s3.root().to_owned();
    assert!(root.join(&bucket).join("a/b").is_file());
    let endpoint = s3.endpoint().to_owned();
    drop(s3);
    assert!(!root.exists());
    assert!(reqwest::get(endpoint).await.is_err(), "stopped");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_given_directory_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let options = S3ServerOptions {
        dir: Some(dir.path().join("store")),
        ..Default::default()
    };
    let s3 = S3Server::start_with(options).await.unwrap();
    s3.ensure_bucket("media").unwrap();
    s3.client()
        .put_object()
        .bucket("media")
        .key("k")
        .body(ByteStream::from_static(b"v"))
        .send()
        .await
        .unwrap();
    drop(s3);
    assert_eq!(
        std::fs::read(dir.path().join("store/media/k")).unwrap(),
        b"v"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_serves_a_directory() {
    use std::io::BufRead;

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_mixdown-s3"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(
        String::from_utf8(help.stdout)
            .unwrap()
            .contains("--access-key")
    );

    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mixdown-s3"))
        .args([
            "--port",
            "0",
            "--access-key",
            "AKTEST",
            "--secret-key",
            "sktest",
            "--bucket",
            "media",
            "--bucket",
            "other",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut endpoint = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut endpoint)
        .unwrap();
    let endpoint = endpoint.trim().to_owned();
    assert!(endpoint.starts_with("http://127.0.0.1:"), "{endpoint:?}");

    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(aws_sdk_s3::config::Region::new("auto"))
        .credentials_provider(Credentials::new("AKTEST", "sktest", None, None, "test"))
        .force_path_style(true)
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    client
        .put_object()
        .bucket("media")
        .key("x/y")
        .body(ByteStream::from_static(b"hello"))
        .send()
        .await
        .unwrap();
    client.head_bucket().bucket("other").send().await.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("media/x/y")).unwrap(),
        b"hello"
    );
}
