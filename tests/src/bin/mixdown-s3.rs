//! `mixdown-s3`: the test kit's S3-compatible server as a foreground process, for local runs and
//! for tests of other binaries. Same server as `mixdown_testkit::s3::S3Server`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use mixdown_testkit::s3::{REGION, S3Server, S3ServerOptions};

/// Serves an S3-compatible API (path-style, SigV4 and presigned URLs checked, CORS open to any
/// origin) over the objects in DIR, until interrupted.
///
/// Prints the endpoint URL as the first line of standard output once it accepts connections.
/// Clients sign with the given keys and any region (us-east-1 is advertised).
#[derive(Debug, Parser)]
#[command(
    name = "mixdown-s3",
    after_help = "Objects are files: DIR/BUCKET/KEY. Set RUST_LOG (e.g. debug) for logs on standard error."
)]
struct Args {
    /// Storage directory; created if missing, kept afterwards.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, value_name = "P")]
    port: u16,
    /// Address to listen on; 0.0.0.0 lets containers on this machine reach it.
    #[arg(long, value_name = "IP", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// The access key clients sign with.
    #[arg(long, value_name = "K")]
    access_key: String,
    /// The secret key clients sign with.
    #[arg(long, value_name = "S")]
    secret_key: String,
    /// A bucket to create at start unless it exists; repeatable.
    #[arg(long = "bucket", value_name = "B")]
    buckets: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let server = S3Server::start_with(S3ServerOptions {
        dir: Some(args.dir),
        listen: SocketAddr::new(args.host, args.port),
        credentials: Some((args.access_key, args.secret_key)),
    })
    .await?;
    for bucket in &args.buckets {
        server.ensure_bucket(bucket)?;
    }
    println!("{}", server.endpoint());
    eprintln!(
        "mixdown-s3: serving {} at {} (region {REGION})",
        server.root().display(),
        server.endpoint()
    );

    wait_for_stop().await?;
    eprintln!("mixdown-s3: stopping");
    Ok(())
}

/// Ctrl-C or SIGTERM (how process supervisors and test harnesses stop it).
async fn wait_for_stop() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("handling SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("handling Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
