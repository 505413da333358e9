//! `mixdown-api`: see `--help` and api/README.md.
//!
//! With no subcommand it serves. Exit codes: 0 after a clean shutdown (SIGTERM or Ctrl-C), 1 when
//! it cannot start (missing keys, no cluster, a port in use), said in one line on stderr.
//!
//! `mixdown-api selftest` checks an install (see `mixdown_api::selftest`): 0 when every step
//! passed, 1 when one failed, named on its line. `mixdown-api bucket-setup` applies the bucket's
//! CORS and lifecycle rules (see `mixdown_api::bucket_setup`): 0 when both were applied and read
//! back, 1 with the call that failed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mixdown_api::app::AppState;
use mixdown_api::cluster::Cluster;
use mixdown_api::config::{Args, Invocation};
use mixdown_api::metrics::{Metrics, Ops, ops_router};
use mixdown_api::storage::Storage;
use mixdown_api::{live, socket, telemetry};
use prometheus_client::registry::Registry;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::info;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("mixdown-api: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    // With more than one rustls backend compiled in, none is the default: choose ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Invocation::parse() {
        Invocation::Serve(args) => serve(*args).await,
        Invocation::Selftest(args) => {
            let passed = mixdown_api::selftest::run(&args, &mut std::io::stdout()).await;
            std::process::exit(if passed { 0 } else { 1 });
        }
        Invocation::BucketSetup(args) => {
            mixdown_api::bucket_setup::run(&args, &mut std::io::stdout()).await
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    telemetry::init(args.log_format);

    let keys = args.keys()?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (kubeconfig or in-cluster service account)")?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let config = args.config(&keys, namespace.clone());
    if keys.generated {
        // A local run: the person starting it needs the admin key to create a room.
        println!("mixdown-api: generated keys for this run only");
        println!("  admin key: {}", keys.admin_key);
    }
    let storage = Storage::new(&config.storage)?;
    let cluster = Cluster::new(client, &namespace);

    let mut registry = Registry::default();
    let metrics = Metrics::default();
    metrics.register(&mut registry);
    let ops = Ops::new(registry);

    // Clients send small JSON only: a small read buffer per WebSocket keeps thousands of
    // sockets cheap, and a full outgoing queue (64 packets; progress is at most one a second
    // per recording) means a client that stopped reading.
    let (io_layer, io) = socketioxide::SocketIo::builder()
        .max_payload(mixdown_api::MAX_BODY_BYTES as u64)
        .ws_read_buffer_size(1024)
        .max_buffer_size(64)
        .build_layer();
    let app = Arc::new(AppState::new(config, storage, cluster, io.clone(), metrics));
    socket::install(&io, app.clone());

    let stop = CancellationToken::new();
    let watches = tokio::spawn(live::run(app.clone(), ops.clone(), stop.clone()));

    let ops_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("listening on {}", args.metrics_addr))?;
    let listener = tokio::net::TcpListener::bind(args.listen_addr)
        .await
        .with_context(|| format!("listening on {}", args.listen_addr))?;
    info!(listen = %args.listen_addr, metrics = %args.metrics_addr, %namespace, "mixdown-api serving");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(ops_listener, ops_router(ops)).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    let router = mixdown_api::router(app.clone(), io_layer, &args.studio_origins);
    let server = axum::serve(listener, router);

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = server => result.context("serving")?,
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupted: shutting down"),
    }
    // Tell the sockets, so pages reconnect (to another replica) at once instead of after a
    // ping timeout; then close. Closing the transport, not a socket.io disconnect, keeps the
    // client's automatic reconnection on.
    let _ = io
        .emit("server-shutdown", &serde_json::json!({"reconnect": true}))
        .await;
    // At least a moment, so that the event leaves the socket buffers before the process does.
    tokio::time::sleep(
        Duration::from_secs(args.shutdown_grace_seconds).max(Duration::from_millis(300)),
    )
    .await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), watches).await;
    info!("stopped");
    Ok(())
}
