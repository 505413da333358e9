//! Starting etcd, kube-apiserver and kube-controller-manager on loopback, and knowing when they
//! are ready.
//!
//! Everything here runs on the control plane's own thread (see [`super::ControlPlane::shared`]):
//! the processes are tied to the thread that spawns them.

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use super::children;
use super::pki::Pki;
use super::version::{Flags, KubeVersion};

/// The environment variable envtest tools use for the folder holding the binaries.
pub(super) const ASSETS_VAR: &str = "KUBEBUILDER_ASSETS";
const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);
/// How many log lines of each component a startup error carries.
const LOG_TAIL_LINES: usize = 25;

/// What [`boot`] hands over: the connection details, and the processes (kept alive by the caller).
pub(super) struct Booted {
    pub dir: PathBuf,
    pub server_url: String,
    pub ca_pem: String,
    pub kubeconfig: PathBuf,
    pub config: Config,
    pub version: KubeVersion,
    pub components: Vec<Component>,
}

/// One control plane process, its output captured in `<dir>/<name>.log`.
pub(super) struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Component {
    fn spawn(name: &'static str, assets: &Path, args: Vec<String>, dir: &Path) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(assets.join(name));
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        // SAFETY: die_with_parent only calls prctl, which is async-signal-safe.
        unsafe { cmd.pre_exec(children::die_with_parent) };
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", assets.join(name).display()))?;
        children::track_group(child.id());
        Ok(Component { name, child, log })
    }

    /// Fails, with the end of its log, when the process has exited.
    fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            ),
        }
    }

    /// Stops it now; used when startup fails half-way.
    fn kill(&mut self) {
        children::signal_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
        children::untrack_group(self.child.id());
    }
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

/// The folder named by `KUBEBUILDER_ASSETS`, checked to hold every binary.
pub(super) fn assets_dir() -> Result<PathBuf> {
    const HOW: &str = "run `tests/envtest/setup.sh` and `export KUBEBUILDER_ASSETS=<the path it \
                       prints last>` (or point KUBEBUILDER_ASSETS at a folder from setup-envtest)";
    let Some(dir) = std::env::var_os(ASSETS_VAR) else {
        bail!(
            "{ASSETS_VAR} is not set: the control plane needs etcd, kube-apiserver and kube-controller-manager; {HOW}"
        );
    };
    let dir = PathBuf::from(dir);
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{ASSETS_VAR}={} lacks {}; {HOW}",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(dir)
}

fn free_port() -> Result<u16> {
    // Bind-and-release: the port could be taken in between, but nothing else on a test machine
    // races for fresh ephemeral ports within these few milliseconds.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn path_arg(flag: &str, path: &Path) -> String {
    format!("--{flag}={}", path.display())
}

/// Starts the control plane in a fresh temporary directory and waits until it serves requests and
/// its controllers run. On failure every process started so far is stopped and the directory is
/// removed.
pub(super) async fn boot() -> Result<Booted> {
    let assets = assets_dir()?;
    // The flags depend on the version, so it is read from the binary before anything starts.
    let version = KubeVersion::of_binary(&assets.join("kube-apiserver"))?;
    let dir = children::temp_dir("mixdown-cp-")?;
    let mut components = Vec::new();
    match boot_in(&assets, version, &dir, &mut components).await {
        Ok((server_url, ca_pem, kubeconfig, config)) => Ok(Booted {
            dir,
            server_url,
            ca_pem,
            kubeconfig,
            config,
            version,
            components,
        }),
        Err(e) => {
            for c in &mut components {
                c.kill();
            }
            children::remove_dir(&dir);
            Err(e)
        }
    }
}

async fn boot_in(
    assets: &Path,
    version: KubeVersion,
    dir: &Path,
    components: &mut Vec<Component>,
) -> Result<(String, String, PathBuf, Config)> {
    let flags = Flags::for_version(version);
    let pki = Pki::generate(dir)?;
    let etcd_port = free_port()?;
    let etcd_peer_port = free_port()?;
    let api_port = free_port()?;
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let server_url = format!("https://127.0.0.1:{api_port}");

    components.push(Component::spawn(
        "etcd",
        assets,
        vec![
            path_arg("data-dir", &dir.join("etcd")),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
            format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}"),
            "--logger=zap".into(),
            "--log-level=warn".into(),
        ],
        dir,
    )?);
    // The API server retries etcd until it answers, so both start at once.
    components.push(Component::spawn(
        "kube-apiserver",
        assets,
        vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".into(),
            // It refuses loopback as the address it publishes for the `kubernetes` Service, and
            // with no reconciler it never writes that Service's Endpoints anyway.
            "--advertise-address=10.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            path_arg("cert-dir", &dir.join("apiserver-certs")),
            path_arg("tls-cert-file", &pki.serving_cert),
            path_arg("tls-private-key-file", &pki.serving_key),
            path_arg("client-ca-file", &pki.ca_cert),
            // The key pair that signs (TokenRequest, token secrets) and verifies ServiceAccount tokens.
            path_arg("service-account-key-file", &pki.sa_pub),
            path_arg("service-account-signing-key-file", &pki.sa_key),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            // RBAC, so that Pods run by the pod runner get exactly their ServiceAccount's rights.
            "--authorization-mode=RBAC".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ],
        dir,
    )?);

    let kubeconfig = dir.join("admin.kubeconfig");
    let admin = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "mixdown-test", "cluster": {
            "server": server_url,
            "certificate-authority": pki.ca_cert,
        }}],
        "users": [{"name": "admin", "user": {
            "client-certificate": pki.admin_cert,
            "client-key": pki.admin_key,
        }}],
        "contexts": [{"name": "mixdown-test", "context": {
            "cluster": "mixdown-test", "user": "admin", "namespace": "default",
        }}],
        "current-context": "mixdown-test",
    });
    fs::write(&kubeconfig, serde_yaml::to_string(&admin)?)?;
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await
    .context("loading the admin kubeconfig")?;
    let client = Client::try_from(config.clone())?;

    wait_until("kube-apiserver /readyz", components, || async {
        let req = http::Request::get("/readyz").body(Vec::new());
        match req {
            Ok(req) => client.request_text(req).await.is_ok_and(|t| t == "ok"),
            Err(_) => false,
        }
    })
    .await?;

    // The controller manager gives up if the API server is not healthy soon, so it starts now.
    let mut controller_manager_args = vec![
        path_arg("kubeconfig", &kubeconfig),
        path_arg("service-account-private-key-file", &pki.sa_key),
        path_arg("root-ca-file", &pki.ca_cert),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        "--secure-port=0".into(),
        format!("--controllers={}", flags.controllers),
    ];
    controller_manager_args.extend(flags.insecure_port_off.map(String::from));
    components.push(Component::spawn(
        "kube-controller-manager",
        assets,
        controller_manager_args,
        dir,
    )?);

    // Every namespace needs its default ServiceAccount before a Pod can be admitted (and, before
    // 1.24, its token Secret); seeing the controllers make them in `default` means the controller
    // manager is up.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let what = if version.creates_token_secrets() {
        "the default ServiceAccount and its token"
    } else {
        "the default ServiceAccount"
    };
    wait_until(what, components, || async {
        accounts
            .get_opt("default")
            .await
            .ok()
            .flatten()
            .is_some_and(|sa| service_account_ready(version, &sa))
    })
    .await?;

    Ok((server_url, pki.ca_pem, kubeconfig, config))
}

/// Whether Pods of `sa` are admitted: it exists and, on servers that make them, has its token Secret
/// (the ServiceAccount admission plugin of 1.20 refuses Pods until then).
pub(super) fn service_account_ready(version: KubeVersion, sa: &ServiceAccount) -> bool {
    !version.creates_token_secrets() || sa.secrets.as_ref().is_some_and(|s| !s.is_empty())
}

/// Polls `probe` until it holds, failing early (with its log) when a component exits, or with
/// every component's log on timeout.
async fn wait_until<F, Fut>(what: &str, components: &mut [Component], probe: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        for c in components.iter_mut() {
            c.check_running()
                .with_context(|| format!("while waiting for {what}"))?;
        }
        if probe().await {
            tracing::debug!(elapsed = ?start.elapsed(), "{what} ready");
            return Ok(());
        }
        if start.elapsed() > READY_TIMEOUT {
            let logs: Vec<String> = components
                .iter()
                .map(|c| format!("--- end of {}:\n{}", c.log.display(), log_tail(&c.log)))
                .collect();
            bail!(
                "timed out after {READY_TIMEOUT:?} waiting for {what}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
