//! An S3-compatible server on loopback that checks signatures and presigned URLs like R2 does.
//!
//! [`S3Server`] serves `s3s-fs` (objects as files in a directory) behind `s3s`, which verifies
//! SigV4 headers, presigned URLs and their expiry. Around it: CORS for browsers, a request log by
//! S3 operation, and injected outages. Addressing is path-style (`{endpoint}/{bucket}/{key}`).
//!
//! The server runs on a thread and Tokio runtime of its own (see `background`), so it keeps
//! serving while the test that started it blocks (on a subprocess, say), and it may outlive the
//! test runtime that started it. Dropping the [`S3Server`] stops it and, for a temporary
//! directory, removes it.
//!
//! Multipart uploads behave like R2's where `s3s-fs` alone would differ (see `backend`). The
//! bucket CORS API is not implemented: CORS is always on, as configured on a production R2
//! bucket for the studio.

mod backend;
mod faults;
mod storage;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::background::Background;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use http::{HeaderName, Method, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tower::Layer;
use tower_http::cors::{AllowHeaders, Any, CorsLayer};

pub use faults::RequestRecord;

/// The region the server advertises. `s3s` takes the region from each request's credential scope
/// and does not compare it with anything, so clients may sign with any region, R2's `auto`
/// included.
pub const REGION: &str = "us-east-1";

/// How to start an [`S3Server`]; the default is what tests want.
#[derive(Debug, Clone)]
pub struct S3ServerOptions {
    /// Storage directory, created if missing and kept when the server stops. `None`: a fresh
    /// temporary directory, removed when the server stops.
    pub dir: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free one. Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// The only access key and secret key accepted. `None`: random ones.
    pub credentials: Option<(String, String)>,
}

impl Default for S3ServerOptions {
    fn default() -> Self {
        S3ServerOptions {
            dir: None,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            credentials: None,
        }
    }
}

/// A running S3-compatible server. See the [module documentation](self).
pub struct S3Server {
    endpoint: String,
    access_key: String,
    secret_key: String,
    root: PathBuf,
    faults: Arc<faults::Faults>,
    /// Stops the server thread when dropped, which happens before the directory below goes.
    _server: Background,
    /// Removed after the server thread has stopped, so nothing writes into it any more.
    _temp_dir: Option<tempfile::TempDir>,
}

impl S3Server {
    /// Starts a server over a fresh temporary directory on a free loopback port, with random
    /// credentials.
    pub async fn start() -> anyhow::Result<S3Server> {
        S3Server::start_with(S3ServerOptions::default()).await
    }

    /// Starts a server as `options` say.
    pub async fn start_with(options: S3ServerOptions) -> anyhow::Result<S3Server> {
        let (root, temp_dir) = match options.dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                (dir, None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("mixdown-s3-")
                    .tempdir()
                    .context("creating a temporary directory")?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        let (access_key, secret_key) = options.credentials.unwrap_or_else(|| {
            (
                format!("MIXDOWN{}", uuid::Uuid::new_v4().simple()).to_uppercase(),
                uuid::Uuid::new_v4().simple().to_string(),
            )
        });

        let fs = s3s_fs::FileSystem::new(&root)
            .map_err(|err| anyhow!("opening storage at {}: {err:?}", root.display()))?;
        // The path `s3s-fs` works under, so that file names read here match the ones it writes.
        let root = root.canonicalize()?;
        let mut builder = S3ServiceBuilder::new(backend::Backend::new(fs, root.clone()));
        builder.set_auth(SimpleAuth::from_single(
            access_key.clone(),
            secret_key.clone(),
        ));
        builder.set_access(faults::RecordOperation);
        let service = cors().layer(builder.build());

        let listener = std::net::TcpListener::bind(options.listen)
            .with_context(|| format!("listening on {}", options.listen))?;
        listener.set_nonblocking(true)?;
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            // Listening everywhere; clients on this machine still come in over loopback.
            addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let faults = Arc::new(faults::Faults::default());
        // Requests still in flight at shutdown are cancelled; their blocking file operations get
        // a moment so that the directory can be removed cleanly afterwards.
        let server = Background::start("mixdown-s3", Duration::from_secs(5), {
            let faults = faults.clone();
            move |shutdown| serve(listener, service, faults, shutdown)
        })?;

        Ok(S3Server {
            endpoint: format!("http://{addr}"),
            access_key,
            secret_key,
            root,
            faults,
            _server: server,
            _temp_dir: temp_dir,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:38211`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The region to sign with; see [`REGION`].
    pub fn region(&self) -> &str {
        REGION
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The storage directory: one subdirectory per bucket, one file per object.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates a fresh bucket with a unique name and returns the name.
    ///
    /// The bucket is made directly in storage, so this works during an injected outage too and
    /// does not show in the request log.
    ///
    /// # Panics
    /// If the bucket directory cannot be created.
    pub async fn create_bucket(&self) -> String {
        let name = format!("test-{}", uuid::Uuid::new_v4().simple());
        self.ensure_bucket(&name)
            .unwrap_or_else(|err| panic!("{err:#}"));
        name
    }

    /// Creates bucket `name` unless it exists.
    pub fn ensure_bucket(&self, name: &str) -> anyhow::Result<()> {
        storage::ensure_bucket(&self.root, name)
    }

    /// A client for this server: its endpoint, credentials and region, path-style addressing.
    pub fn client(&self) -> aws_sdk_s3::Client {
        self.client_at(&self.endpoint)
    }

    /// A client for this server reached at `endpoint` (through a [`crate::link::Link`], say).
    pub fn client_at(&self, endpoint: &str) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "mixdown-testkit",
            ))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// The environment a subprocess needs to use `bucket` on this server: the AWS SDK's standard
    /// variables and Mixdown's own.
    pub fn env(&self, bucket: &str) -> Vec<(String, String)> {
        self.env_at(bucket, &self.endpoint)
    }

    /// [`S3Server::env`] for this server reached at `endpoint`.
    pub fn env_at(&self, bucket: &str, endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", &self.secret_key),
            ("AWS_REGION", REGION),
            ("AWS_ENDPOINT_URL", endpoint),
            ("MIXDOWN_S3_ENDPOINT", endpoint),
            ("MIXDOWN_S3_REGION", REGION),
            ("MIXDOWN_S3_BUCKET", bucket),
            ("MIXDOWN_S3_PATH_STYLE", "true"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
    }

    /// Object keys of the multipart uploads in `bucket` that were created and neither completed
    /// nor aborted, sorted, one entry per upload: what ListMultipartUploads answers.
    ///
    /// # Panics
    /// If the storage directory cannot be read.
    pub fn incomplete_uploads(&self, bucket: &str) -> Vec<String> {
        let uploads =
            storage::open_uploads(&self.root, bucket).unwrap_or_else(|err| panic!("{err:#}"));
        uploads.into_iter().map(|upload| upload.key).collect()
    }

    /// Storage goes away after `parts` more UploadPart requests have succeeded (at once for 0),
    /// for `duration`, then comes back. Replaces an outage armed before.
    ///
    /// While away, every request, on new and kept-alive connections alike, has its connection
    /// closed without a response. That is what clients see when R2 becomes unreachable (a network
    /// failure, an edge dropping connections), and it is the harder case for them: no status
    /// code, no error document, perhaps half a request body sent. The AWS SDK treats it as a
    /// transient I/O error and retries it, as it would a 503. Requests already being served when
    /// the outage begins finish normally.
    pub fn outage_after_upload_parts(&self, parts: usize, duration: Duration) {
        self.faults.outage_after_upload_parts(parts, duration);
    }

    /// `false`: storage goes away (as in [`S3Server::outage_after_upload_parts`]) until
    /// `set_available(true)`, which also ends or cancels any timed outage.
    pub fn set_available(&self, available: bool) {
        self.faults.set_available(available);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.faults.requests()
    }

    /// How many requests were routed to the S3 operation `operation` (e.g. `"UploadPart"`,
    /// `"DeleteObjects"`, `"PutObject"`), whatever their outcome.
    pub fn request_count(&self, operation: &str) -> usize {
        self.faults
            .requests()
            .iter()
            .filter(|r| r.operation.as_deref() == Some(operation))
            .count()
    }
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("endpoint", &self.endpoint)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// What a browser uploading chunks from the studio page needs: any origin, the methods of
/// presigned uploads and downloads, whatever request headers it asks for (content-type,
/// `x-amz-*`), and the ETag readable by scripts (multipart uploads need it).
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::PUT,
            Method::HEAD,
            Method::POST,
            Method::DELETE,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([header::ETAG, HeaderName::from_static("x-amz-version-id")])
        .max_age(Duration::from_secs(3600))
}

/// Accepts connections until `shutdown`; connections still open then are dropped.
async fn serve(
    listener: std::net::TcpListener,
    service: faults::Inner,
    faults: Arc<faults::Faults>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(%err, "cannot serve S3");
            return;
        }
    };
    let http = ConnBuilder::new(TokioExecutor::new());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let socket = match accepted {
                    Ok((socket, _)) => socket,
                    Err(err) => {
                        // Out of file descriptors, typically: wait instead of spinning.
                        tracing::warn!(%err, "accepting an S3 connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small responses (ETags, HEADs) would otherwise wait on delayed ACKs.
                let _ = socket.set_nodelay(true);
                let service = service.clone();
                let faults = faults.clone();
                let handler = hyper::service::service_fn(move |req| faults::handle(faults.clone(), service.clone(), req));
                let http = http.clone();
                connections.spawn(async move {
                    // Errors here are clients going away and injected outages: nothing to report.
                    let _ = http.serve_connection(TokioIo::new(socket), handler).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    use s3s::crypto::{Checksum, Md5};

    use super::S3Server;

    const MIB: usize = 1024 * 1024;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    fn md5(bytes: &[u8]) -> Vec<u8> {
        let mut md5 = Md5::new();
        md5.update(bytes);
        md5.finalize().to_vec()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Uploads `parts` (part 2 sent twice, the second time with `parts[1]`), completes, and
    /// returns the ETag Complete answered.
    async fn upload(
        s3: &S3Server,
        bucket: &str,
        key: &str,
        parts: &[Vec<u8>],
        if_none_match: bool,
    ) -> String {
        let client = s3.client();
        let created = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type("video/webm")
            .send()
            .await
            .unwrap();
        let id = created.upload_id().unwrap();
        let mut completed = Vec::new();
        for (index, part) in parts.iter().enumerate() {
            let number = index as i32 + 1;
            let send = |body: Vec<u8>| {
                client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .part_number(number)
                    .body(ByteStream::from(body))
                    .send()
            };
            if number == 2 {
                // A first version, replaced: the Complete must see the second.
                send(pattern(part.len(), 0x5A)).await.unwrap();
            }
            let out = send(part.clone()).await.unwrap();
            assert_eq!(
                out.e_tag(),
                Some(format!("\"{}\"", hex(&md5(part))).as_str())
            );
            completed.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(out.e_tag().unwrap())
                    .build(),
            );
        }
        let mut complete = client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            );
        if if_none_match {
            complete = complete.if_none_match("*");
        }
        let out = complete.send().await.unwrap();
        out.e_tag().unwrap().to_owned()
    }

    /// The fast Complete and the one of `s3s-fs` (taken for conditional requests) agree, with
    /// each other and with S3: the object is the parts in order, its ETag the MD5 of the parts'
    /// MD5s and the part count, the same on Complete, HEAD and GET, and its attributes are the
    /// upload's.
    #[tokio::test(flavor = "multi_thread")]
    async fn complete_writes_the_parts_with_the_multipart_etag() {
        let s3 = S3Server::start().await.unwrap();
        let bucket = s3.create_bucket().await;
        let client = s3.client();
        let parts = [pattern(5 * MIB, 1), pattern(5 * MIB, 2), pattern(777, 3)];
        let expected = format!(
            "\"{}-3\"",
            hex(&md5(&parts
                .iter()
                .map(|p| md5(p))
                .collect::<Vec<_>>()
                .concat()))
        );
        for (key, conditional) in [("out/fast.webm", false), ("out/s3s-fs.webm", true)] {
            let e_tag = upload(&s3, &bucket, key, &parts, conditional).await;
            assert_eq!(e_tag, expected, "{key}");
            let head = client
                .head_object()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            assert_eq!(head.e_tag(), Some(expected.as_str()), "{key}");
            assert_eq!(head.content_type(), Some("video/webm"), "{key}");
            let got = client
                .get_object()
                .bucket(&bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            assert_eq!(got.e_tag(), Some(expected.as_str()), "{key}");
            let bytes = got.body.collect().await.unwrap().into_bytes();
            assert!(bytes == parts.concat(), "{key}: object bytes differ");
        }
        assert!(s3.incomplete_uploads(&bucket).is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(s3.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains("upload") || name.starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Completing over an existing object replaces it, ETag included.
        let smaller = [pattern(5 * MIB, 7), pattern(10, 8)];
        let e_tag = upload(&s3, &bucket, "out/fast.webm", &smaller, false).await;
        let head = client
            .head_object()
            .bucket(&bucket)
            .key("out/fast.webm")
            .send()
            .await
            .unwrap();
        assert_eq!(head.e_tag(), Some(e_tag.as_str()));
        assert!(e_tag.ends_with("-2\""), "{e_tag}");
        assert_eq!(head.content_length(), Some(5 * MIB as i64 + 10));
    }
}
