//! The API's end-to-end world: the test kit's stack (control plane, S3-compatible server, pod
//! runner with the real worker, the operator as a process), API servers as real processes (so
//! that one can be killed), and real socket.io clients (the `socket.io-client` npm package, driven
//! by `tests/client/driver.mjs`).

#![allow(dead_code)] // each test uses part of it

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Api;
use mixdown_crds::RecordingJob;
pub use mixdown_testkit::stack::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Notify;

pub const SIGNING_KEY: &str = "test-signing-key-0123456789abcdef0123456789";
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// An API server process. Killed when dropped; its log is printed when a test fails.
pub struct ApiServer {
    child: Option<Child>,
    pub url: String,
    pub metrics_url: String,
    pub log: PathBuf,
}

impl ApiServer {
    /// Starts `mixdown-api` on `world`'s namespace and bucket and waits until it is ready.
    pub async fn start(world: &World, extra: &[&str]) -> ApiServer {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = world.dir.path().join(format!("api-{n}.log"));
        let (port, metrics_port) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mixdown-api"));
        cmd.env("KUBECONFIG", world.cp.kubeconfig_path())
            .env(
                "RUST_LOG",
                std::env::var("MIXDOWN_TEST_API_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("AWS_ACCESS_KEY_ID", world.s3.access_key())
            .env("AWS_SECRET_ACCESS_KEY", world.s3.secret_key())
            .env("MIXDOWN_SIGNING_KEY", SIGNING_KEY)
            .env("MIXDOWN_ADMIN_KEY", ADMIN_KEY)
            .args(["--namespace", world.namespace()])
            .args(["--s3-endpoint", world.s3.endpoint()])
            .args(["--s3-region", world.s3.region()])
            .args(["--s3-bucket", &world.bucket])
            .args(["--listen-addr", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--log-format", "text"])
            .args(["--shutdown-grace-seconds", "1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("api log file"));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let server = ApiServer {
            child: Some(cmd.spawn().expect("starting mixdown-api")),
            url: format!("http://127.0.0.1:{port}"),
            metrics_url: format!("http://127.0.0.1:{metrics_port}"),
            log,
        };
        let start = Instant::now();
        loop {
            let ready = reqwest::get(format!("{}/readyz", server.metrics_url)).await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "mixdown-api did not become ready; its log:\n{}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, as when a node dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// A metric's value (exact series with labels).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let body = reqwest::get(format!("{}/metrics", self.metrics_url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// `POST {path}` with a JSON body (or none) and a bearer token (or none): status and body.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut req = reqwest::Client::new().post(format!("{}{path}", self.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        answer(req.send().await.expect("the API answers")).await
    }

    /// `POST {path}` with a raw body and content type.
    pub async fn post_raw(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let req = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body);
        answer(req.send().await.expect("the API answers")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        answer(req.send().await.expect("the API answers")).await
    }

    /// Creates a room: (room id, host token, invite token).
    pub async fn create_room(&self) -> (String, String, String) {
        let (status, body) = self
            .post("/api/rooms", Some(ADMIN_KEY), Some(json!({"name": "Host"})))
            .await;
        assert_eq!(status, 201, "creating a room: {body}");
        (
            body["roomId"].as_str().expect("roomId").to_string(),
            body["hostToken"].as_str().expect("hostToken").to_string(),
            body["inviteToken"]
                .as_str()
                .expect("inviteToken")
                .to_string(),
        )
    }

    /// Exchanges an invite for a guest: (participant id, token).
    pub async fn join(&self, invite: &str, name: &str) -> (String, String) {
        let (status, body) = self
            .post("/api/join", Some(invite), Some(json!({"name": name})))
            .await;
        assert_eq!(status, 201, "joining: {body}");
        (
            body["participantId"]
                .as_str()
                .expect("participantId")
                .to_string(),
            body["token"].as_str().expect("token").to_string(),
        )
    }

    /// Uploads chunks `seqs` of `chunks` as the token's track, presign, PUT, confirm, with
    /// `pause` before each: a page on a slow connection.
    pub async fn upload_some(
        &self,
        token: &str,
        recording: &str,
        chunks: &[Vec<u8>],
        seqs: impl IntoIterator<Item = usize>,
        pause: Duration,
    ) -> Vec<u64> {
        let mut counts = Vec::new();
        for seq in seqs {
            tokio::time::sleep(pause).await;
            let chunk = &chunks[seq];
            let (status, url) = self
                .post(
                    &format!("/api/recordings/{recording}/chunks/{seq}/upload-url"),
                    Some(token),
                    Some(json!({"size": chunk.len(), "contentType": "video/webm;codecs=vp8,opus"})),
                )
                .await;
            assert_eq!(status, 200, "presigning chunk {seq}: {url}");
            let put = put_chunk(&url, chunk.clone()).await;
            assert_eq!(put.0, 200, "uploading chunk {seq}: {}", put.1);
            let (status, confirmed) = self
                .post(
                    &format!("/api/recordings/{recording}/chunks/{seq}/confirm"),
                    Some(token),
                    Some(json!({"size": chunk.len()})),
                )
                .await;
            assert_eq!(status, 200, "confirming chunk {seq}: {confirmed}");
            counts.push(confirmed["confirmed"].as_u64().unwrap_or_default());
        }
        counts
    }

    /// Seals the token's track with `chunk_count` chunks over REST, as a page does once its
    /// upload queue drained.
    pub async fn seal(&self, token: &str, recording: &str, chunk_count: usize) -> (u16, Value) {
        self.post(
            &format!("/api/recordings/{recording}/tracks/complete"),
            Some(token),
            Some(json!({ "chunkCount": chunk_count })),
        )
        .await
    }

    /// Uploads `chunks` as the token's track the way a page does: presign, PUT, confirm.
    pub async fn upload(&self, token: &str, recording: &str, chunks: &[Vec<u8>]) {
        let counts = self
            .upload_some(token, recording, chunks, 0..chunks.len(), Duration::ZERO)
            .await;
        for (seq, confirmed) in counts.iter().enumerate() {
            assert_eq!(
                *confirmed,
                seq as u64 + 1,
                "confirmed count after chunk {seq}"
            );
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- api log ({}) ---\n{}",
                self.log.display(),
                tail(&self.log_text(), 80)
            );
        }
    }
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// PUTs `body` to a presigned URL answer (`{url, headers}`): status and storage's answer.
pub async fn put_chunk(presigned: &Value, body: Vec<u8>) -> (u16, String) {
    let mut req = reqwest::Client::new().put(presigned["url"].as_str().expect("url"));
    if let Some(headers) = presigned["headers"].as_object() {
        for (k, v) in headers {
            req = req.header(k, v.as_str().unwrap_or_default());
        }
    }
    let response = req.body(body).send().await.expect("storage answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Real socket.io clients in one node process; see `tests/client/driver.mjs`.
pub struct Clients {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: Arc<Mutex<Vec<Value>>>,
    changed: Arc<Notify>,
    next_ack: u64,
}

pub const WAIT: Duration = Duration::from_secs(30);

impl Clients {
    pub fn start() -> Clients {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client");
        assert!(
            dir.join("node_modules/socket.io-client").is_dir(),
            "the socket.io client is not installed: run `npm ci` in {} (`.ci/run` and `cargo xtask test` do)",
            dir.display()
        );
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("driver.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting node (apt-get install nodejs)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let (l, c) = (lines.clone(), changed.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    l.lock().unwrap().push(v);
                    c.notify_waiters();
                }
            }
        });
        Clients {
            child,
            stdin,
            lines,
            changed,
            next_ack: 1,
        }
    }

    async fn send(&mut self, cmd: Value) {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("writing to the client driver");
        self.stdin.flush().await.expect("flush");
    }

    /// Connects `client` with `token` and waits for `connect` or `connect_error`: `Ok(())` or the
    /// refusal's message.
    pub async fn connect(
        &mut self,
        client: &str,
        url: &str,
        token: Option<&str>,
    ) -> Result<(), String> {
        let mut cmd = json!({"cmd": "connect", "client": client, "url": url});
        if let Some(token) = token {
            cmd["token"] = json!(token);
        }
        self.send(cmd).await;
        let line = self
            .wait_line(&format!("{client} to connect"), |l| {
                l["client"] == client && (l["type"] == "connect" || l["type"] == "connect_error")
            })
            .await;
        if line["type"] == "connect" {
            Ok(())
        } else {
            Err(line["message"].as_str().unwrap_or_default().to_string())
        }
    }

    pub async fn close(&mut self, client: &str) {
        self.send(json!({"cmd": "close", "client": client})).await;
    }

    /// Emits `event` with `data` and waits for the ack.
    pub async fn emit_ack(&mut self, client: &str, event: &str, data: Value) -> Value {
        let ack = self.next_ack;
        self.next_ack += 1;
        self.send(
            json!({"cmd": "emit", "client": client, "event": event, "data": data, "ack": ack}),
        )
        .await;
        let line = self
            .wait_line(&format!("{client}'s ack of {event}"), |l| {
                l["client"] == client && l["type"] == "ack" && l["ack"] == ack
            })
            .await;
        line["data"].clone()
    }

    /// The reasons `client` was disconnected, in order.
    pub fn disconnects(&self, client: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["client"] == client && l["type"] == "disconnect")
            .map(|l| l["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Every `event` `client` has received so far, in order (payloads).
    pub fn events(&self, client: &str, event: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["client"] == client && l["type"] == "event" && l["event"] == event)
            .map(|l| l["data"].clone())
            .collect()
    }

    /// Every event `client` has received so far: (name, payload).
    pub fn all_events(&self, client: &str) -> Vec<(String, Value)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l["client"] == client && l["type"] == "event")
            .map(|l| {
                (
                    l["event"].as_str().unwrap_or_default().to_string(),
                    l["data"].clone(),
                )
            })
            .collect()
    }

    /// Waits until `client` has received an `event` whose payload satisfies `pred`; returns it.
    pub async fn wait_event(
        &self,
        client: &str,
        event: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let notified = self.changed.notified();
            if let Some(found) = self.events(client, event).into_iter().find(|v| pred(v)) {
                return found;
            }
            assert!(
                start.elapsed() < timeout,
                "{client} did not receive the expected {event} in {timeout:?}; it received: {:#?}",
                self.all_events(client)
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }

    async fn wait_line(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let notified = self.changed.notified();
            if let Some(found) = self.lines.lock().unwrap().iter().find(|l| pred(l)).cloned() {
                return found;
            }
            assert!(
                start.elapsed() < WAIT,
                "waiting for {what}: not within {WAIT:?}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The RecordingJobs of the world's namespace.
pub async fn recording_jobs(world: &World) -> Vec<RecordingJob> {
    Api::<RecordingJob>::namespaced(world.client.clone(), world.namespace())
        .list(&Default::default())
        .await
        .expect("listing RecordingJobs")
        .items
}

/// Every object key in the world's bucket.
pub async fn all_keys(world: &World) -> Vec<String> {
    world.keys("").await
}

/// The playing time ffprobe reads from a file at `url`.
pub async fn probe_duration(url: &str, dir: &Path) -> f64 {
    let bytes = reqwest::get(url)
        .await
        .expect("downloading an output")
        .error_for_status()
        .expect("the output URL works")
        .bytes()
        .await
        .expect("reading an output");
    let file = dir.join(format!("probe-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&file, &bytes).expect("writing the output");
    let out = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&file)
        .output()
        .await
        .expect("ffprobe runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "ffprobe could not read {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}
