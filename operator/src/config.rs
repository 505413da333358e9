//! The operator's configuration: command-line flags with environment-variable fallbacks (the way a
//! Helm chart sets them), and the [`Config`] the pure parts of the operator read.
//!
//! [`Args`] is what the user types; [`Config`] is what [`crate::job::build_job`] needs, kept free
//! of clap so that unit tests can build one literally.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The Mixdown operator: runs each RecordingJob as a Kubernetes Job and reports its progress.
#[derive(Parser, Debug, Clone)]
#[command(name = "mixdown-operator", version, about, long_about = None)]
pub struct Args {
    /// Container image of the worker (ffmpeg-image), e.g. `ghcr.io/mixdown-dev/worker:0.1.0`.
    #[arg(long, env = "MIXDOWN_WORKER_IMAGE")]
    pub worker_image: String,

    /// Pull policy of the worker image: Always, IfNotPresent or Never.
    #[arg(
        long,
        env = "MIXDOWN_WORKER_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub worker_image_pull_policy: String,

    /// ServiceAccount the worker Pods run as. It needs only `patch` on `recordingjobs/status`.
    #[arg(
        long,
        env = "MIXDOWN_WORKER_SERVICE_ACCOUNT",
        default_value = "mixdown-worker"
    )]
    pub worker_service_account: String,

    /// S3-compatible endpoint the workers read chunks from and write outputs to
    /// (e.g. `https://<account>.r2.cloudflarestorage.com`).
    #[arg(long, env = "MIXDOWN_S3_ENDPOINT")]
    pub s3_endpoint: String,

    /// Region of the bucket; R2 wants `auto`.
    #[arg(long, env = "MIXDOWN_S3_REGION", default_value = "auto")]
    pub s3_region: String,

    /// Bucket holding chunks and outputs.
    #[arg(long, env = "MIXDOWN_S3_BUCKET")]
    pub s3_bucket: String,

    /// Path-style addressing (`{endpoint}/{bucket}/{key}`), for MinIO-like servers.
    #[arg(long, env = "MIXDOWN_S3_PATH_STYLE", default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,

    /// Secret, in each RecordingJob's namespace, whose keys become the worker's environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`). Referenced, never copied.
    #[arg(
        long,
        env = "MIXDOWN_S3_CREDENTIALS_SECRET",
        default_value = "mixdown-s3-credentials"
    )]
    pub s3_credentials_secret: String,

    /// CPU request of a worker container whose RecordingJob sets no `resources`.
    #[arg(long, env = "MIXDOWN_WORKER_CPU_REQUEST", default_value = "500m")]
    pub worker_cpu_request: String,

    /// Memory request of a worker container whose RecordingJob sets no `resources`.
    #[arg(long, env = "MIXDOWN_WORKER_MEMORY_REQUEST", default_value = "512Mi")]
    pub worker_memory_request: String,

    /// Memory limit of a worker container whose RecordingJob sets no `resources`.
    #[arg(long, env = "MIXDOWN_WORKER_MEMORY_LIMIT", default_value = "2Gi")]
    pub worker_memory_limit: String,

    /// Size limit of the worker's scratch emptyDir (MP4 outputs are written there before upload).
    #[arg(long, env = "MIXDOWN_WORKER_SCRATCH_SIZE", default_value = "20Gi")]
    pub worker_scratch_size: String,

    /// How often the worker reports progress on its RecordingJob, in milliseconds (a status
    /// patch each time the percentage changed).
    #[arg(long, env = "MIXDOWN_WORKER_PROGRESS_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=2000), value_name = "MS")]
    pub worker_progress_interval_ms: u64,

    /// Whether a RecordingJob that leaves `output.composite` unset gets a mixdown (one video of
    /// everyone) when it has two or more tracks. A RecordingJob that sets it decides for itself.
    #[arg(long, env = "MIXDOWN_COMPOSITE_DEFAULT", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub composite_default: bool,

    /// Most Jobs running at once; RecordingJobs beyond it wait as Queued, in creation order.
    #[arg(long, env = "MIXDOWN_MAX_RUNNING_JOBS", default_value_t = 10)]
    pub max_running_jobs: usize,

    /// Namespace to watch. Unset: every namespace.
    #[arg(long, env = "MIXDOWN_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "MIXDOWN_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Log format: `json` (one object per line, for log collectors) or `text`.
    #[arg(long, env = "MIXDOWN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Elect a leader among replicas on a Lease; only the leader reconciles. Turn off only when
    /// exactly one replica runs.
    #[arg(long, env = "MIXDOWN_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease (in a cluster: the operator's own namespace).
    #[arg(long, env = "MIXDOWN_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, env = "MIXDOWN_LEASE_NAME", default_value = "mixdown-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease; unique per replica (the chart passes the Pod name).
    /// Unset: hostname and process id.
    #[arg(long, env = "MIXDOWN_LEASE_IDENTITY")]
    pub lease_identity: Option<String>,

    /// Seconds a Lease stays valid without renewal: how long a dead leader blocks a standby.
    #[arg(long, env = "MIXDOWN_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// Seconds between renewals by the leader (and attempts by a standby).
    #[arg(long, env = "MIXDOWN_LEASE_RENEW_SECONDS", default_value_t = 2)]
    pub lease_renew_seconds: u64,

    /// Seconds the leader keeps reconciling without a successful renewal, every call included;
    /// then it exits. Must lie between the renew interval and the lease duration, so a leader cut
    /// off from the API server stops before a standby may take over.
    #[arg(
        long,
        env = "MIXDOWN_LEASE_RENEW_DEADLINE_SECONDS",
        default_value_t = 10
    )]
    pub lease_renew_deadline_seconds: u64,

    /// How many RecordingJobs are reconciled at the same time.
    #[arg(long, env = "MIXDOWN_RECONCILE_CONCURRENCY", default_value_t = 128)]
    pub reconcile_concurrency: u16,
}

/// Log output format.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// What building a Job needs to know beyond the RecordingJob.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub worker_image: String,
    pub worker_image_pull_policy: String,
    pub worker_service_account: String,
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_bucket: String,
    pub s3_path_style: bool,
    pub s3_credentials_secret: String,
    pub worker_cpu_request: String,
    pub worker_memory_request: String,
    pub worker_memory_limit: String,
    pub worker_scratch_size: String,
    pub worker_progress_interval_ms: u64,
    /// Mixdown for two or more tracks unless the RecordingJob says otherwise.
    pub composite_default: bool,
    /// Zero means no limit.
    pub max_running_jobs: usize,
}

impl Default for Config {
    /// The flags' defaults, with placeholder image and storage for tests.
    fn default() -> Self {
        Config {
            worker_image: "mixdown-worker:latest".into(),
            worker_image_pull_policy: "IfNotPresent".into(),
            worker_service_account: "mixdown-worker".into(),
            s3_endpoint: "http://127.0.0.1:9000".into(),
            s3_region: "auto".into(),
            s3_bucket: "mixdown".into(),
            s3_path_style: false,
            s3_credentials_secret: "mixdown-s3-credentials".into(),
            worker_cpu_request: "500m".into(),
            worker_memory_request: "512Mi".into(),
            worker_memory_limit: "2Gi".into(),
            worker_scratch_size: "20Gi".into(),
            worker_progress_interval_ms: 1000,
            composite_default: true,
            max_running_jobs: 10,
        }
    }
}

impl From<&Args> for Config {
    fn from(args: &Args) -> Self {
        Config {
            worker_image: args.worker_image.clone(),
            worker_image_pull_policy: args.worker_image_pull_policy.clone(),
            worker_service_account: args.worker_service_account.clone(),
            s3_endpoint: args.s3_endpoint.clone(),
            s3_region: args.s3_region.clone(),
            s3_bucket: args.s3_bucket.clone(),
            s3_path_style: args.s3_path_style,
            s3_credentials_secret: args.s3_credentials_secret.clone(),
            worker_cpu_request: args.worker_cpu_request.clone(),
            worker_memory_request: args.worker_memory_request.clone(),
            worker_memory_limit: args.worker_memory_limit.clone(),
            worker_scratch_size: args.worker_scratch_size.clone(),
            worker_progress_interval_ms: args.worker_progress_interval_ms,
            composite_default: args.composite_default,
            max_running_jobs: args.max_running_jobs,
        }
    }
}

impl Args {
    /// The leader-election settings, or `None` when leader election is off.
    pub fn lease_config(&self) -> Option<crate::leader::LeaseConfig> {
        if !self.leader_election {
            return None;
        }
        let identity = self.lease_identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "mixdown-operator".into());
            format!("{host}-{}", std::process::id())
        });
        Some(crate::leader::LeaseConfig {
            namespace: self.lease_namespace.clone(),
            name: self.lease_name.clone(),
            identity,
            lease_duration: Duration::from_secs(self.lease_duration_seconds.max(1)),
            renew_interval: Duration::from_secs(self.lease_renew_seconds.max(1)),
            renew_deadline: Duration::from_secs(self.lease_renew_deadline_seconds.max(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_documented_defaults() {
        let args = Args::try_parse_from([
            "mixdown-operator",
            "--worker-image",
            "worker:1",
            "--s3-endpoint",
            "http://s3",
            "--s3-bucket",
            "b",
        ])
        .expect("parses");
        assert_eq!(args.max_running_jobs, 10);
        assert_eq!(args.worker_service_account, "mixdown-worker");
        assert_eq!(args.log_format, LogFormat::Json);
        assert!(args.leader_election);
        let lease = args
            .lease_config()
            .expect("leader election is on by default");
        assert_eq!(lease.lease_duration, Duration::from_secs(15));
        assert_eq!(lease.renew_deadline, Duration::from_secs(10));
        assert_eq!(lease.renew_interval, Duration::from_secs(2));
        lease.validate().expect("the defaults are consistent");
        let config = Config::from(&args);
        assert_eq!(config.s3_region, "auto");
        assert!(!config.s3_path_style);
    }

    #[test]
    fn booleans_take_explicit_values() {
        let args = Args::try_parse_from([
            "mixdown-operator",
            "--worker-image=w",
            "--s3-endpoint=e",
            "--s3-bucket=b",
            "--s3-path-style=true",
            "--leader-election=false",
            "--log-format=text",
            "--max-running-jobs=2",
        ])
        .expect("parses");
        assert!(args.s3_path_style);
        assert!(args.lease_config().is_none());
        assert_eq!(args.log_format, LogFormat::Text);
        assert_eq!(args.max_running_jobs, 2);
    }

    #[test]
    fn a_renew_deadline_outside_interval_and_duration_is_refused() {
        let lease = |duration: &str, renew: &str, deadline: &str| {
            Args::try_parse_from([
                "mixdown-operator",
                "--worker-image=w",
                "--s3-endpoint=e",
                "--s3-bucket=b",
                &format!("--lease-duration-seconds={duration}"),
                &format!("--lease-renew-seconds={renew}"),
                &format!("--lease-renew-deadline-seconds={deadline}"),
            ])
            .expect("parses")
            .lease_config()
            .expect("leader election is on")
            .validate()
        };
        assert!(lease("4", "1", "2").is_ok());
        let too_long = lease("15", "2", "15").unwrap_err();
        assert!(
            too_long.contains("shorter than the lease duration"),
            "{too_long}"
        );
        let too_short = lease("15", "5", "5").unwrap_err();
        assert!(
            too_short.contains("shorter than the renew deadline"),
            "{too_short}"
        );
    }
}
