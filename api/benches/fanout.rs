//! Benchmark (not a test): one API replica with 5,000 real socket.io clients in 500 rooms (10 a
//! room, in a separate node process, `tests/client/bench-clients.mjs`), on the test kit's control
//! plane and S3-compatible server. It prints:
//!
//! - stop → `video-processing-started` at the last client of the room, for 200 stops (p50, p99);
//! - while those 200 RecordingJobs report progress every 2 s (the benchmark writes their status,
//!   as the worker does), the time from each status write until the last socket of the room has
//!   the update (p50, p99), and how many changes did not reach every socket;
//! - beside both, in the same run, the floor: when a plain kube watcher in this process saw the
//!   same RecordingJob or status change;
//! - the replica's peak RSS and its CPU while fanning out;
//! - presigned upload URLs per second on one core (token check + presign, as a request does),
//!   beside the AWS SDK's presigner on the same core; and through the HTTP endpoint.
//!
//! Targets (issue 9): fan-out p99 ≤ 250 ms, stop → started p99 ≤ 250 ms, RSS ≤ 150 MB,
//! ≥ 5,000 presigns/s.
//!
//! `cargo bench -p mixdown-api --bench fanout` (needs `KUBEBUILDER_ASSETS` and `npm ci` in `api/tests/client`).
//! `MIXDOWN_BENCH_CLIENTS` (default 5000) and `MIXDOWN_BENCH_SECONDS` (default 30) scale it down.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, CustomResourceExt};
use mixdown_api::auth::{Role, Tokens};
use mixdown_api::presign::Presigner;
use mixdown_crds::RecordingJob;
use mixdown_testkit::cluster::ControlPlane;
use mixdown_testkit::s3::S3Server;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const SIGNING_KEY: &str = "bench-signing-key-0123456789abcdef0123456789";
const ADMIN_KEY: &str = "bench-admin-key-0123456789";
const ROOM_SIZE: usize = 10;
const JOBS: usize = 200;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

fn main() {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(bench());
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn bench() {
    let clients = env_usize("MIXDOWN_BENCH_CLIENTS", 5000);
    let seconds = env_usize("MIXDOWN_BENCH_SECONDS", 30) as u64;
    let rooms = clients.div_ceil(ROOM_SIZE);
    let jobs = JOBS.min(rooms);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let cp = ControlPlane::shared().await;
    cp.install_crd(&RecordingJob::crd())
        .await
        .expect("installing the CRD");
    let ns = cp.namespace().await;
    let client = cp.client();
    let s3 = S3Server::start().await.expect("starting the S3 server");
    let bucket = s3.create_bucket().await;
    let dir = tempfile::tempdir().expect("temp dir");

    // The replica under test.
    let port = free_port();
    let metrics_port = free_port();
    let log = dir.path().join("api.log");
    let mut api_cmd = Command::new(env!("CARGO_BIN_EXE_mixdown-api"));
    api_cmd
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .env("AWS_ACCESS_KEY_ID", s3.access_key())
        .env("AWS_SECRET_ACCESS_KEY", s3.secret_key())
        .env("MIXDOWN_SIGNING_KEY", SIGNING_KEY)
        .env("MIXDOWN_ADMIN_KEY", ADMIN_KEY)
        .args(["--namespace", ns.name()])
        .args(["--s3-endpoint", s3.endpoint()])
        .args(["--s3-region", s3.region()])
        .args(["--s3-bucket", &bucket])
        .args(["--listen-addr", &format!("127.0.0.1:{port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        api_cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut api = api_cmd.spawn().expect("starting mixdown-api");
    let pid = api.id();
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let start = Instant::now();
    while !http
        .get(format!("http://127.0.0.1:{metrics_port}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the API did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_idle = rss_kb(pid).0;

    // Rooms and tokens, minted with the replica's key (as any replica would).
    let tokens = Tokens::new(SIGNING_KEY.as_bytes(), Duration::from_secs(3600));
    let room_ids: Vec<String> = (0..rooms).map(|r| format!("bench-room-{r}")).collect();
    let mut all = Vec::new();
    for room in &room_ids {
        for p in 0..ROOM_SIZE {
            let role = if p == 0 { Role::Host } else { Role::Guest };
            all.push(
                json!({"room": room, "token": tokens.issue(room, &format!("p{p}"), role, None)}),
            );
        }
    }
    all.truncate(clients);
    let tokens_file = dir.path().join("tokens.json");
    std::fs::write(&tokens_file, serde_json::to_vec(&all).expect("json")).expect("tokens file");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/bench-clients.mjs");
    let mut node = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&url)
        .arg(&tokens_file)
        .current_dir(script.parent().expect("client dir"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting node");
    let node_stdin = node.stdin.take();
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let ready: Value = loop {
        let line = lines
            .next_line()
            .await
            .expect("reading the clients")
            .expect("the clients ended");
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if v["type"] == "ready" {
            break v;
        }
        if v["type"] == "connect_error" {
            eprintln!("a client was refused: {v}");
        }
    };
    assert_eq!(
        ready["connected"], clients,
        "not every client connected: {ready}"
    );
    let (rss_connected, _) = rss_kb(pid);
    println!(
        "{clients} clients in {rooms} rooms connected in {:.1} s over WebSocket",
        ready["ms"].as_f64().unwrap_or(0.0) / 1000.0
    );

    // Everything the clients report, by kind, as it arrives.
    let reports: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = reports.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                sink.lock().unwrap().push(v);
            }
        }
    });

    // The floor: a plain watcher here, on the same RecordingJobs.
    let rjs: Api<RecordingJob> = Api::namespaced(client.clone(), ns.name());
    let watched: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let seen = watched.clone();
    let stream = watcher(rjs.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(rj)) = stream.next().await {
            let at = now_ms();
            let status = rj.status.clone().unwrap_or_default();
            let key = match status.progress {
                Some(p) => format!("u:{}:{p}", rj.spec.recording_id),
                None => format!("s:{}", rj.spec.recording_id),
            };
            seen.lock().unwrap().entry(key).or_insert(at);
        }
    });

    // 1. Stops: start a recording, put one chunk, stop it; time to `video-processing-started`.
    let s3c = s3.client();
    let mut stop_sent: HashMap<String, f64> = HashMap::new();
    let mut names = Vec::new();
    for room in room_ids.iter().take(jobs) {
        let host = tokens.issue(room, "p0", Role::Host, None);
        let started: Value = http
            .post(format!("{url}/api/rooms/{room}/recordings"))
            .bearer_auth(&host)
            .send()
            .await
            .expect("start")
            .json()
            .await
            .expect("start answer");
        let rec = started["recordingId"]
            .as_str()
            .expect("recordingId")
            .to_string();
        s3c.put_object()
            .bucket(&bucket)
            .key(format!("riverside/chunks/{room}/{rec}/p0/00000000.webm"))
            .body(ByteStream::from(vec![1u8; 1024]))
            .send()
            .await
            .expect("put a chunk");
        let t0 = now_ms();
        let stopped: Value = http
            .post(format!("{url}/api/recordings/{rec}/stop"))
            .bearer_auth(&host)
            .send()
            .await
            .expect("stop")
            .json()
            .await
            .expect("stop answer");
        assert_eq!(stopped["ok"], true, "{stopped}");
        names.push((
            stopped["jobName"].as_str().expect("jobName").to_string(),
            rec.clone(),
        ));
        stop_sent.insert(rec, t0);
    }
    wait_for(&reports, Duration::from_secs(30), |r| {
        r.iter().filter(|v| v["type"] == "started").count() >= jobs
    })
    .await;
    let (mut started, mut started_floor) = (Vec::new(), Vec::new());
    for v in reports
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "started")
    {
        let rec = v["recordingId"].as_str().unwrap_or_default();
        if let Some(t0) = stop_sent.get(rec) {
            started.push(v["last"].as_f64().unwrap_or(0.0) - t0);
            if let Some(w) = watched.lock().unwrap().get(&format!("s:{rec}")) {
                started_floor.push(w - t0);
            }
        }
    }

    // 2. Progress every 2 s for each RecordingJob, spread evenly; the fan-out of each change.
    let cpu_before = cpu_seconds(pid);
    let wall = Instant::now();
    let gap = PROGRESS_EVERY / jobs as u32;
    let patched: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let mut tick = tokio::time::interval(gap);
    let rounds = (Duration::from_secs(seconds).as_millis() / PROGRESS_EVERY.as_millis()) as usize;
    let mut writes = tokio::task::JoinSet::new();
    for round in 0..rounds {
        for (name, rec) in &names {
            tick.tick().await;
            let progress = (round + 1).min(99) as i32;
            let (rjs, name, rec, patched) =
                (rjs.clone(), name.clone(), rec.clone(), patched.clone());
            writes.spawn(async move {
                let t = now_ms();
                let patch = json!({"status": {"phase": "Running", "progress": progress}});
                if rjs
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    patched
                        .lock()
                        .unwrap()
                        .insert(format!("u:{rec}:{progress}"), t);
                }
            });
        }
    }
    while writes.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let busy = wall.elapsed().as_secs_f64();
    let (mut fanout, mut fanout_floor) = (Vec::new(), Vec::new());
    let delivered: HashMap<String, f64> = reports
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "update" && v["phase"] == "Running")
        .map(|v| {
            (
                format!(
                    "u:{}:{}",
                    v["recordingId"].as_str().unwrap_or_default(),
                    v["progress"]
                ),
                v["last"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let patched = patched.lock().unwrap().clone();
    let mut missed = 0;
    for (key, t) in &patched {
        match delivered.get(key) {
            Some(last) => fanout.push(last - t),
            None => missed += 1,
        }
        if let Some(w) = watched.lock().unwrap().get(key) {
            fanout_floor.push(w - t);
        }
    }
    let (rss_now, rss_peak) = rss_kb(pid);

    // 3. Presigns: the per-request work on one core, beside the SDK's presigner.
    let presigner = Presigner::new(
        s3.endpoint(),
        &bucket,
        true,
        "auto",
        s3.access_key(),
        s3.secret_key(),
    )
    .expect("presigner");
    let guest = tokens.issue("bench-room-0", "p1", Role::Guest, None);
    let ours = per_second(|i| {
        let claims = tokens.verify(&guest).expect("valid token");
        let key = format!(
            "riverside/chunks/{}/r/{}/{i:08}.webm",
            claims.room, claims.sub
        );
        std::hint::black_box(presigner.put(
            &key,
            "video/webm",
            123_456,
            Duration::from_secs(300),
            jiff::Timestamp::now(),
        ));
    });
    let sdk = sdk_presigns_per_second(&s3, &bucket).await;
    let (_, first) = names.first().cloned().expect("a recording");
    let endpoint = http_presigns_per_second(&http, &url, &first, &tokens).await;

    drop(node_stdin);
    let _ = node.wait().await;
    let _ = api.kill();
    let _ = api.wait();

    println!();
    println!(
        "stop → video-processing-started at the room's last client ({} stops)",
        started.len()
    );
    println!(
        "  api:     {}   (target p99 <= 250 ms)",
        percentiles(&mut started)
    );
    println!(
        "  floor:   {}   (a plain watcher here sees the RecordingJob)",
        percentiles(&mut started_floor)
    );
    println!(
        "status change → the room's last socket ({} changes over {seconds} s, {jobs} RecordingJobs every 2 s)",
        fanout.len() + missed
    );
    println!(
        "  api:     {}   (target p99 <= 250 ms)",
        percentiles(&mut fanout)
    );
    println!(
        "  floor:   {}   (a plain watcher here sees the change)",
        percentiles(&mut fanout_floor)
    );
    println!("  changes not delivered to every socket of the room: {missed}");
    println!(
        "replica memory: {:.1} MB idle, {:.1} MB with {clients} sockets, {:.1} MB at the end, peak {:.1} MB (target <= 150 MB)",
        rss_idle as f64 / 1024.0,
        rss_connected as f64 / 1024.0,
        rss_now as f64 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    println!(
        "replica CPU while fanning out: {cpu:.1} s in {busy:.1} s ({:.0}% of one core)",
        100.0 * cpu / busy
    );
    println!("presigned upload URLs per second, one core:");
    println!("  api (token check + presign): {ours:>9.0}   (target >= 5,000)");
    println!("  aws-sdk-s3 presigner alone:  {sdk:>9.0}");
    println!(
        "  through POST …/upload-url (HTTP, 32 in flight, client on the same 2 cores): {endpoint:.0}"
    );
    let _ = std::io::stdout().flush();
}

fn percentiles(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "p50 {:>6.1} ms   p99 {:>6.1} ms   max {:>6.1} ms",
        at(0.50),
        at(0.99),
        at(1.0)
    )
}

async fn wait_for(
    reports: &Arc<Mutex<Vec<Value>>>,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) {
    let start = Instant::now();
    while !done(&reports.lock().unwrap()) && start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many times `f` runs in one second on this thread.
fn per_second(mut f: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        f(n);
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn sdk_presigns_per_second(s3: &S3Server, bucket: &str) -> f64 {
    let client = s3.client();
    let config = aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(300))
        .expect("config");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        let _ = std::hint::black_box(
            client
                .put_object()
                .bucket(bucket)
                .key(format!("riverside/chunks/r/x/p/{n:08}.webm"))
                .content_type("video/webm")
                .content_length(123_456)
                .presigned(config.clone())
                .await,
        );
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn http_presigns_per_second(
    http: &reqwest::Client,
    url: &str,
    rec: &str,
    tokens: &Tokens,
) -> f64 {
    let token = tokens.issue("bench-room-0", "p1", Role::Guest, None);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (http, url, rec, token) = (
            http.clone(),
            url.to_string(),
            rec.to_string(),
            token.clone(),
        );
        tasks.spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < Duration::from_secs(3) {
                let ok = http
                    .post(format!(
                        "{url}/api/recordings/{rec}/chunks/{}/upload-url",
                        n % 1000
                    ))
                    .bearer_auth(&token)
                    .json(&json!({"size": 123_456}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                n += u64::from(ok);
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n.unwrap_or(0);
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// (VmRSS, VmHWM) in KiB.
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU seconds of `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat (utime, stime), counted after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
