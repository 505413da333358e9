//! `mixdown-operator`: parses the configuration, serves `/metrics`, `/healthz` and `/readyz`,
//! waits to lead (unless leader election is off), and reconciles until SIGTERM or until the
//! Lease is lost.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM or Ctrl-C); 1 when the Lease was lost (another
//! replica leads now: stopping at once is the only safe move) or anything failed to start.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::Client;
use mixdown_operator::http::{self, AppState};
use mixdown_operator::metrics::Metrics;
use mixdown_operator::runtime::{self, Settings};
use mixdown_operator::{Args, Config, leader, telemetry};
use prometheus_client::registry::Registry;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

/// How long running reconciles get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    telemetry::init(args.log_format);
    // With more than one rustls backend compiled in, none is the default: choose ring, the one
    // kube is built with.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            error!(error = format!("{error:#}"), "the operator failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Checked before anything connects: a Lease setting that could make two leaders is refused.
    let lease = args.lease_config();
    if let Some(lease) = &lease {
        lease.validate().map_err(anyhow::Error::msg)?;
    }
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut shutdown = Box::pin(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("interrupted: shutting down"),
        }
    });

    let client = Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or in-cluster configuration)")?;
    let version = client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    info!(server = %version.git_version, "connected to the API server");

    let metrics = Metrics::default();
    let mut registry = Registry::with_prefix("mixdown_operator");
    metrics.register(&mut registry);
    let state = AppState::new(registry);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("listening on {}", args.metrics_addr))?;
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, state.clone(), async move {
        let _ = http_stopped.await;
    }));

    let leadership = match &lease {
        Some(lease) => {
            // A standby is healthy and ready: it is waiting for its turn.
            state.set_ready(true);
            info!(lease = %lease.name, identity = %lease.identity, "waiting to become the leader");
            tokio::select! {
                acquired = leader::acquire(client.clone(), lease) => {
                    // Leading now: not ready until this replica's caches are filled
                    // (runtime::run says when).
                    state.set_ready(false);
                    Some(acquired?)
                }
                () = &mut shutdown => {
                    let _ = stop_http.send(());
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        None => None,
    };

    metrics.leader.set(1);

    let settings = Settings {
        config: Config::from(&args),
        namespace: args.namespace.clone(),
        concurrency: args.reconcile_concurrency,
        instance: lease.as_ref().map_or_else(
            || format!("pid-{}", std::process::id()),
            |l| l.identity.clone(),
        ),
    };
    info!(
        namespace = settings.namespace.as_deref().unwrap_or("(all)"),
        max_running_jobs = settings.config.max_running_jobs,
        "reconciling RecordingJobs"
    );
    let (stop_controller, controller_stopped) = oneshot::channel::<()>();
    let mut controller = tokio::spawn(runtime::run(
        client,
        settings,
        metrics,
        Some(state),
        async move {
            let _ = controller_stopped.await;
        },
    ));

    let lost = lease_lost(leadership.as_ref());
    let code = tokio::select! {
        () = &mut shutdown => {
            let _ = stop_controller.send(());
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut controller).await.is_err() {
                warn!("reconciles did not finish within {SHUTDOWN_GRACE:?}; stopping anyway");
            }
            if let Some(leadership) = leadership {
                leadership.release().await;
            }
            ExitCode::SUCCESS
        }
        () = lost => {
            error!("lost the leader lease; exiting so that only the new leader reconciles");
            ExitCode::FAILURE
        }
        ended = &mut controller => {
            error!(?ended, "the controller stopped on its own");
            ExitCode::FAILURE
        }
    };
    let _ = stop_http.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(code)
}

async fn lease_lost(leadership: Option<&leader::Leadership>) {
    match leadership {
        Some(leadership) => leadership.lost().await,
        None => std::future::pending().await,
    }
}
