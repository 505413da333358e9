//! `mixdown-worker`: the entry point of a processing Job's container. Parses the settings, runs
//! the job, writes the report and exits with the code the operator reads.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::error::ErrorKind;
use mixdown_crds::WorkerReport;
use mixdown_crds::names::{env, exit_codes, reasons};
use mixdown_worker::config::{self, Args, LogFormat};
use mixdown_worker::error::WorkerError;
use mixdown_worker::report;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = match config::parse() {
        Ok(args) => args,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => return invalid_settings(&err),
    };
    init_tracing(args.log_format);
    // Both rustls backends are compiled in (the AWS SDK brings aws-lc-rs, kube is built with
    // ring), so rustls cannot pick one by itself; the Kubernetes client would panic without this.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return exit(exit_codes::TRANSIENT);
        }
    };
    let code = runtime.block_on(run(args));
    // Downloads still running after a failure are not worth waiting for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    exit(code)
}

async fn run(args: Args) -> i32 {
    let cancel = CancellationToken::new();
    let signal: Arc<OnceLock<&'static str>> = Arc::default();
    tokio::spawn(watch_signals(cancel.clone(), signal.clone()));

    let result = mixdown_worker::run(&args, cancel).await;
    let result = match (result, signal.get()) {
        (Err(_), Some(name)) => Err(WorkerError::Interrupted(name)),
        (result, _) => result,
    };
    match result {
        Ok(done) => {
            tracing::info!(
                outputs = done.outputs.len(),
                mixdown_failed = done.mixdown_failure.is_some(),
                "done"
            );
            finish(
                args.report_path(),
                &WorkerReport::Succeeded {
                    outputs: done.outputs,
                    mixdown_failure: done.mixdown_failure,
                },
            );
            exit_codes::SUCCESS
        }
        Err(err) => {
            tracing::error!(reason = err.reason(), exit_code = err.exit_code(), "{err}");
            if let Some(report) = err.report() {
                finish(args.report_path(), &report);
            }
            err.exit_code()
        }
    }
}

/// The report goes to the termination message (in a Pod, or where asked: [`config::report_path`])
/// and, for people running the worker by hand, to stdout.
fn finish(path: Option<PathBuf>, report: &WorkerReport) {
    let json = report::render(report);
    match path {
        Some(path) => report::write(&path, &json),
        None => tracing::debug!(
            "not in a Pod and no {} given: the report is on stdout only",
            env::TERMINATION_MESSAGE_PATH
        ),
    }
    println!("{json}");
}

/// Settings clap rejects are bad input like any other: reported, exit 2.
fn invalid_settings(err: &clap::Error) -> ExitCode {
    let _ = err.print();
    let asked = std::env::var_os(env::TERMINATION_MESSAGE_PATH).map(PathBuf::from);
    let path = config::report_path_here(asked.as_deref());
    let message = err.render().to_string();
    let message = message
        .lines()
        .next()
        .unwrap_or("invalid settings")
        .to_owned();
    let json = report::render(&WorkerReport::Failed {
        reason: reasons::INVALID_INPUT.to_owned(),
        message: format!(
            "invalid settings: {}",
            message.trim_start_matches("error: ")
        ),
    });
    if let Some(path) = path {
        report::write(&path, &json);
    }
    exit(exit_codes::BAD_INPUT)
}

async fn watch_signals(cancel: CancellationToken, signal: Arc<OnceLock<&'static str>>) {
    use tokio::signal::unix::{SignalKind, signal as unix_signal};
    let (Ok(mut term), Ok(mut int)) = (
        unix_signal(SignalKind::terminate()),
        unix_signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for signals");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::warn!(
        signal = name,
        "stopping: aborting uploads, leaving the chunks"
    );
    let _ = signal.set(name);
    cancel.cancel();
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
