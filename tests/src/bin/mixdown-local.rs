//! `mixdown-local`: all of Mixdown on one machine, no cluster needed. Starts the test kit's local
//! control plane (etcd, kube-apiserver, kube-controller-manager), its S3-compatible server (data in
//! a folder kept across runs), the pod runner (which runs the real worker for each Job), the
//! operator and the API with the studio page; prints the studio's address, the admin key and a
//! host link; and stops everything on Ctrl-C. `cargo xtask up` builds what it needs and runs it.
//!
//! With `--kubeconfig` and storage settings it starts only the operator and the API, here,
//! against that cluster and that storage (R2 or any S3-compatible service): the worker then runs
//! in the cluster, from `--worker-image`. It checks first what the cluster must already have (the
//! CRD, the namespace, the credentials Secret, the worker's ServiceAccount) and names the command
//! that adds what is missing.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use mixdown_testkit::s3::{S3Server, S3ServerOptions};
use mixdown_testkit::stack::{WORKER_IMAGE, World, free_port};

/// Runs Mixdown locally until interrupted (Ctrl-C stops everything it started).
#[derive(Debug, Parser)]
#[command(name = "mixdown-local")]
struct Args {
    /// Where storage keeps its objects (chunks and finished files) across runs, and where the
    /// keys and logs go.
    #[arg(long, value_name = "DIR", default_value = ".mixdown")]
    data_dir: PathBuf,
    /// Port of the studio page and the API.
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Format of the finished files: mp4, webm or audio.
    #[arg(long, default_value = "mp4")]
    output_profile: String,
    /// How often processing progress is reported and passed on to the room, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=2000), value_name = "MS")]
    progress_interval_ms: u64,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// A real cluster and real storage: given `--kubeconfig`, only the operator and the API run here.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Run the operator and the API against the cluster of this kubeconfig instead of starting a
    /// local control plane; needs the storage settings and `--worker-image` too. The API presigns
    /// uploads with the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY of this environment.
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["s3_endpoint", "s3_bucket", "worker_image"]
    )]
    kubeconfig: Option<PathBuf>,
    /// The cluster namespace of the RecordingJobs, their Jobs and the operator's Lease.
    #[arg(long, default_value = "default", requires = "kubeconfig")]
    namespace: String,
    /// Storage endpoint, e.g. https://<account>.r2.cloudflarestorage.com.
    #[arg(long, value_name = "URL", requires = "kubeconfig")]
    s3_endpoint: Option<String>,
    /// Storage region (R2: auto).
    #[arg(long, default_value = "auto", requires = "kubeconfig")]
    s3_region: String,
    /// The bucket of the chunks and the finished files.
    #[arg(long, requires = "kubeconfig")]
    s3_bucket: Option<String>,
    /// Path-style addressing (most self-hosted S3 servers); R2 needs none.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, requires = "kubeconfig")]
    s3_path_style: bool,
    /// The Secret (in the namespace) with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the
    /// worker's Pods.
    #[arg(
        long,
        default_value = "mixdown-s3-credentials",
        requires = "kubeconfig"
    )]
    s3_credentials_secret: String,
    /// The worker image the cluster pulls, e.g. registry.example.com/mixdown-worker:0.1.0.
    #[arg(long, requires = "kubeconfig")]
    worker_image: Option<String>,
    /// The ServiceAccount the worker's Pods run as (it may patch RecordingJob status).
    #[arg(long, default_value = "mixdown-worker", requires = "kubeconfig")]
    worker_service_account: String,
    /// The address browsers reach the studio at, when not http://127.0.0.1:<port>.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
}

/// Where the operator and the API run against: the cluster, its namespace and the storage.
struct Backend {
    kubeconfig: PathBuf,
    namespace: String,
    endpoint: String,
    region: String,
    bucket: String,
    path_style: bool,
    access_key: String,
    secret_key: String,
}

const BUCKET: &str = "mixdown";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One TLS provider for every client here (the cluster's and storage's).
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    let started = Instant::now();
    let data = std::path::absolute(&args.data_dir)?;
    let keys = data.join("keys");
    std::fs::create_dir_all(&keys).context("creating the data folder")?;
    let admin_key = key_file(&keys.join("admin-key"), 24)?;
    key_file(&keys.join("signing-key"), 48)?;

    // Exactly one of the two is kept alive until Ctrl-C: the local stack, or the operator
    // started here against a real cluster.
    let mut local = None;
    let mut operator_child = None;
    let backend = match &args.cluster.kubeconfig {
        None => {
            if std::env::var_os("KUBEBUILDER_ASSETS").is_none() {
                bail!(
                    "KUBEBUILDER_ASSETS is not set: run `cargo xtask up`, which prepares it (tests/envtest/setup.sh)"
                );
            }
            std::fs::create_dir_all(data.join("s3")).context("creating the storage folder")?;
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
            let interval = args.progress_interval_ms.to_string();
            let operator =
                world.operator(WORKER_IMAGE, &["--worker-progress-interval-ms", &interval]);
            operator.wait_up().await;
            let backend = Backend {
                kubeconfig: world.cp.kubeconfig_path().to_path_buf(),
                namespace: world.namespace().to_string(),
                endpoint: world.s3.endpoint().to_string(),
                region: world.s3.region().to_string(),
                bucket: BUCKET.to_string(),
                path_style: true,
                access_key: world.s3.access_key().to_string(),
                secret_key: world.s3.secret_key().to_string(),
            };
            local = Some((world, operator));
            backend
        }
        Some(kubeconfig) => {
            let cluster = &args.cluster;
            let backend = Backend {
                kubeconfig: std::path::absolute(kubeconfig)?,
                namespace: cluster.namespace.clone(),
                endpoint: cluster.s3_endpoint.clone().unwrap_or_default(),
                region: cluster.s3_region.clone(),
                bucket: cluster.s3_bucket.clone().unwrap_or_default(),
                path_style: cluster.s3_path_style,
                access_key: env_or_bail("AWS_ACCESS_KEY_ID")?,
                secret_key: env_or_bail("AWS_SECRET_ACCESS_KEY")?,
            };
            eprintln!(
                "mixdown: checking the cluster of {} (namespace {})…",
                backend.kubeconfig.display(),
                backend.namespace
            );
            preflight(&backend, cluster).await?;
            eprintln!("mixdown: starting the operator…");
            operator_child =
                Some(start_operator(&backend, cluster, &data, args.progress_interval_ms).await?);
            backend
        }
    };

    let api_port = args.port;
    let metrics_port = free_port();
    let public_url = args
        .cluster
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{api_port}"));
    let api_log = data.join("api.log");
    let api = mixdown_testkit::bins::workspace_binary("mixdown-api", "mixdown-api");
    let mut api = Command::new(api);
    api.env("KUBECONFIG", &backend.kubeconfig)
        .env("RUST_LOG", "info")
        .env("AWS_ACCESS_KEY_ID", &backend.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &backend.secret_key)
        .env("MIXDOWN_SIGNING_KEY_FILE", keys.join("signing-key"))
        .env("MIXDOWN_ADMIN_KEY_FILE", keys.join("admin-key"))
        .args(["--namespace", &backend.namespace])
        .args(["--s3-endpoint", &backend.endpoint])
        .args(["--s3-region", &backend.region])
        .args(["--s3-bucket", &backend.bucket])
        .args(["--s3-path-style", &backend.path_style.to_string()])
        .args(["--listen-addr", &format!("127.0.0.1:{api_port}")])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--public-url", &public_url])
        .args(["--output-profile", &args.output_profile])
        .args([
            "--progress-interval-ms",
            &args.progress_interval_ms.to_string(),
        ])
        .args(["--log-format", "text"]);
    let mut api = spawn_tied(api, &api_log).context("starting mixdown-api")?;
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
    let studio = format!("{}/", public_url.trim_end_matches('/'));
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
    println!("kubeconfig:  {}", backend.kubeconfig.display());
    println!("namespace:   {}", backend.namespace);
    match &local {
        Some(_) => println!(
            "storage:     {} (bucket {}, files in {})",
            backend.endpoint,
            backend.bucket,
            data.join("s3").display()
        ),
        None => println!(
            "storage:     {} (bucket {})",
            backend.endpoint, backend.bucket
        ),
    }
    println!(
        "mode:        {}",
        if local.is_some() {
            "local (control plane, storage, pod runner, operator, API)"
        } else {
            "cluster (operator and API here; the worker runs in the cluster)"
        }
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
    if let Some(mut operator) = operator_child {
        stop(&mut operator);
    }
    drop(local);
    eprintln!("mixdown: stopped");
    // Exiting runs the control plane's cleanup (its processes and folder).
    std::process::exit(0);
}

fn env_or_bail(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => bail!(
            "{name} is not set: with --kubeconfig the API presigns uploads to the storage with \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (an R2 API token's key id and secret)"
        ),
    }
}

/// What the cluster must already have for the operator and the worker: each missing piece is
/// named with the command that adds it.
async fn preflight(backend: &Backend, cluster: &ClusterArgs) -> anyhow::Result<()> {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&backend.kubeconfig)
            .with_context(|| format!("reading {}", backend.kubeconfig.display()))?,
        &KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("using {}", backend.kubeconfig.display()))?;
    let client = kube::Client::try_from(config)?;
    let ns = &backend.namespace;
    let mut missing = Vec::new();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = "recordingjobs.mixdown.dev";
    if crds
        .get_opt(crd_name)
        .await
        .with_context(|| format!("reaching the cluster of {}", backend.kubeconfig.display()))?
        .is_none()
    {
        missing.push(format!(
            "the RecordingJob CRD ({crd_name}): kubectl apply -f crds/recordingjob.yaml"
        ));
    }
    if Api::<Namespace>::all(client.clone())
        .get_opt(ns)
        .await?
        .is_none()
    {
        missing.push(format!("the namespace {ns}: kubectl create namespace {ns}"));
    }
    let secret = &cluster.s3_credentials_secret;
    if Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(secret)
        .await?
        .is_none()
    {
        missing.push(format!(
            "the worker's storage credentials, Secret {secret}: kubectl -n {ns} create secret generic {secret} \
             --from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=..."
        ));
    }
    let account = &cluster.worker_service_account;
    if Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get_opt(account)
        .await?
        .is_none()
    {
        missing.push(format!(
            "the worker's ServiceAccount {account}: kubectl -n {ns} create serviceaccount {account} \
             (with a Role that may patch recordingjobs/status)"
        ));
    }
    if !missing.is_empty() {
        bail!(
            "the cluster is missing what Mixdown needs:\n  - {}",
            missing.join("\n  - ")
        );
    }
    Ok(())
}

/// The operator, run here against the cluster; its log goes to `operator.log` in `data`.
async fn start_operator(
    backend: &Backend,
    cluster: &ClusterArgs,
    data: &Path,
    progress_interval_ms: u64,
) -> anyhow::Result<Child> {
    let metrics_port = free_port();
    let log = data.join("operator.log");
    let mut cmd = Command::new(mixdown_testkit::bins::workspace_binary(
        "mixdown-operator",
        "mixdown-operator",
    ));
    cmd.env("KUBECONFIG", &backend.kubeconfig)
        .env("RUST_LOG", "info")
        .args(["--namespace", &backend.namespace])
        .args([
            "--worker-image",
            cluster.worker_image.as_deref().unwrap_or_default(),
        ])
        .args(["--s3-endpoint", &backend.endpoint])
        .args(["--s3-region", &backend.region])
        .args(["--s3-bucket", &backend.bucket])
        .args(["--s3-path-style", &backend.path_style.to_string()])
        .args(["--s3-credentials-secret", &cluster.s3_credentials_secret])
        .args(["--worker-service-account", &cluster.worker_service_account])
        .args(["--lease-namespace", &backend.namespace])
        .args([
            "--worker-progress-interval-ms",
            &progress_interval_ms.to_string(),
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--log-format", "text"]);
    let mut child = spawn_tied(cmd, &log).context("starting mixdown-operator")?;
    // Up once it answers on its metrics address (leadership may take a Lease's duration more).
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "mixdown-operator exited ({status}); its log: {}",
                log.display()
            );
        }
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(child);
        }
        if Instant::now() > deadline {
            stop(&mut child);
            bail!(
                "mixdown-operator did not come up; its log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `cmd` with its output in `log`, killed when this process dies however it dies.
fn spawn_tied(mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
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
