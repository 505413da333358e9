//! `mixdown-local`: all of Mixdown on one machine, no cluster needed. Starts the test kit's local
//! control plane (etcd, kube-apiserver, kube-controller-manager), its S3-compatible server (data in
//! a folder kept across runs), the pod runner (which runs the real worker for each Job), the
//! operator and the API with the studio page; prints the studio's address, the admin key and a
//! host link; and stops everything on Ctrl-C. `cargo xtask up` builds what it needs and runs it.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use mixdown_testkit::s3::{S3Server, S3ServerOptions};
use mixdown_testkit::stack::{WORKER_IMAGE, World, free_port};

/// Runs Mixdown locally until interrupted (Ctrl-C stops everything it started).
#[derive(Debug, Parser)]
#[command(name = "mixdown-local")]
struct Args {
    /// Where storage keeps its objects (chunks and finished files) across runs.
    #[arg(long, value_name = "DIR", default_value = ".mixdown")]
    data_dir: PathBuf,
    /// Port of the studio page and the API.
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Format of the finished files: mp4, webm or audio.
    #[arg(long, default_value = "mp4")]
    output_profile: String,
}

const BUCKET: &str = "mixdown";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The operator, the API and the worker are this binary's neighbours, built with it.
    let here = std::env::current_exe()?
        .parent()
        .map(std::path::Path::to_path_buf)
        .context("the folder of mixdown-local")?;
    // SAFETY: no other thread exists yet (the runtime starts below).
    unsafe { std::env::set_var(mixdown_testkit::bins::BIN_DIR_ENV, &here) };
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if std::env::var_os("KUBEBUILDER_ASSETS").is_none() {
        bail!(
            "KUBEBUILDER_ASSETS is not set: run `cargo xtask up`, which prepares it (tests/envtest/setup.sh)"
        );
    }
    let started = Instant::now();
    let data = std::path::absolute(&args.data_dir)?;
    std::fs::create_dir_all(data.join("s3")).context("creating the data folder")?;
    let keys = data.join("keys");
    std::fs::create_dir_all(&keys)?;
    let admin_key = key_file(&keys.join("admin-key"), 24)?;
    key_file(&keys.join("signing-key"), 48)?;
    let credentials = (
        "mixdown-local".to_string(),
        key_file(&keys.join("s3-secret"), 24)?,
    );

    eprintln!("mixdown: starting storage, the control plane and the pod runner…");
    let s3 = S3Server::start_with(S3ServerOptions {
        dir: Some(data.join("s3")),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        credentials: Some(credentials),
    })
    .await?;
    s3.ensure_bucket(BUCKET)?;
    let world = World::new_on(&[], s3, BUCKET.to_string()).await;
    let operator = world.operator(WORKER_IMAGE, &[]);
    operator.wait_up().await;

    let api_port = args.port;
    let metrics_port = free_port();
    let api_log = data.join("api.log");
    let api = mixdown_testkit::bins::workspace_binary("mixdown-api", "mixdown-api");
    let mut api = Command::new(api);
    api.env("KUBECONFIG", world.cp.kubeconfig_path())
        .env("RUST_LOG", "info")
        .env("AWS_ACCESS_KEY_ID", world.s3.access_key())
        .env("AWS_SECRET_ACCESS_KEY", world.s3.secret_key())
        .env("MIXDOWN_SIGNING_KEY_FILE", keys.join("signing-key"))
        .env("MIXDOWN_ADMIN_KEY_FILE", keys.join("admin-key"))
        .args(["--namespace", world.namespace()])
        .args(["--s3-endpoint", world.s3.endpoint()])
        .args(["--s3-region", world.s3.region()])
        .args(["--s3-bucket", BUCKET])
        .args(["--listen-addr", &format!("127.0.0.1:{api_port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--public-url", &format!("http://127.0.0.1:{api_port}")])
        .args(["--output-profile", &args.output_profile])
        .args(["--log-format", "text"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&api_log)?);
    // The API must not outlive this process, even when it is killed.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        api.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut api = api.spawn().context("starting mixdown-api")?;
    let ready = format!("http://127.0.0.1:{metrics_port}/readyz");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = api.try_wait()? {
            stop(&mut api);
            bail!(
                "mixdown-api exited ({status}); is port {api_port} free? Its log: {}",
                api_log.display()
            );
        }
        if reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if Instant::now() > deadline {
            stop(&mut api);
            bail!(
                "mixdown-api did not get ready; its log: {}",
                api_log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A room for the person at the keyboard: the host link opens it as its host.
    let room: serde_json::Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{api_port}/api/rooms"))
        .bearer_auth(&admin_key)
        .json(&serde_json::json!({"name": "Host"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let studio = format!("http://127.0.0.1:{api_port}/");
    println!("studio:      {studio}");
    println!(
        "host link:   {studio}#host={}",
        room["hostToken"].as_str().unwrap_or_default()
    );
    println!(
        "invite link: {}",
        room["inviteUrl"].as_str().unwrap_or_default()
    );
    println!("admin key:   {admin_key}");
    println!("kubeconfig:  {}", world.cp.kubeconfig_path().display());
    println!("namespace:   {}", world.namespace());
    println!(
        "storage:     {} (bucket {BUCKET}, files in {})",
        world.s3.endpoint(),
        data.join("s3").display()
    );
    println!("logs:        {}", data.display());
    println!(
        "ready in {:.1} s; Ctrl-C stops everything",
        started.elapsed().as_secs_f64()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("mixdown: stopping…");
    stop(&mut api);
    drop(operator);
    drop(world);
    eprintln!("mixdown: stopped");
    // Exiting runs the control plane's cleanup (its processes and folder).
    std::process::exit(0);
}

/// A random key kept in `path` (created on first run, mode 0600), as text.
fn key_file(path: &std::path::Path, bytes: usize) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path)
        && existing.trim().len() >= 16
    {
        return Ok(existing.trim().to_string());
    }
    let mut raw = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .context("reading /dev/urandom")?;
    let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, &key).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(key)
}

fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
