//! The API server's configuration: command-line flags with environment-variable fallbacks (the way
//! the Helm chart sets them), and the [`Config`] the rest of the server reads.
//!
//! [`Args`] is what the user types; [`Config`] is what the handlers need, with the keys loaded and
//! checked, kept free of clap so that tests can build one literally.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mixdown_crds::Profile;

/// The Mixdown API server: rooms, presigned chunk uploads, stop → RecordingJob, and live
/// socket.io events about processing.
#[derive(Parser, Debug, Clone)]
#[command(name = "mixdown-api", version, about, long_about = None)]
pub struct Args {
    /// Address to serve REST, socket.io and the studio page on.
    #[arg(long, env = "MIXDOWN_LISTEN_ADDR", default_value = "0.0.0.0:3000")]
    pub listen_addr: SocketAddr,

    /// Address of `/metrics`, `/healthz` and `/readyz` (kept off the public listener).
    #[arg(long, env = "MIXDOWN_METRICS_ADDR", default_value = "0.0.0.0:8081")]
    pub metrics_addr: SocketAddr,

    /// Namespace where RecordingJobs and recording markers live (in a cluster: the API's own).
    /// Unset: the namespace of the kubeconfig or service account.
    #[arg(long, env = "MIXDOWN_NAMESPACE")]
    pub namespace: Option<String>,

    #[command(flatten)]
    pub storage: StorageArgs,

    /// File holding the key that signs participant tokens (HS256, at least 32 bytes).
    #[arg(long, env = "MIXDOWN_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// The signing key itself, when no file is given.
    #[arg(long, env = "MIXDOWN_SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<String>,

    /// File holding the admin key that authorises `POST /api/rooms` (at least 16 bytes).
    #[arg(long, env = "MIXDOWN_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,

    /// The admin key itself, when no file is given.
    #[arg(long, env = "MIXDOWN_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// Local runs only: generate the signing and admin keys at start and print them. Tokens do
    /// not survive a restart and replicas do not share keys.
    #[arg(long, env = "MIXDOWN_GENERATE_KEYS", default_value_t = false)]
    pub generate_keys: bool,

    /// Lifetime of host and participant tokens, in seconds.
    #[arg(long, env = "MIXDOWN_TOKEN_TTL_SECONDS", default_value_t = 12 * 3600)]
    pub token_ttl_seconds: u64,

    /// Lifetime of presigned chunk upload URLs, in seconds.
    #[arg(long, env = "MIXDOWN_UPLOAD_URL_TTL_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub upload_url_ttl_seconds: u64,

    /// Lifetime of presigned download URLs of finished files, in seconds.
    #[arg(long, env = "MIXDOWN_DOWNLOAD_URL_TTL_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub download_url_ttl_seconds: u64,

    /// Largest chunk a browser may upload, in bytes (the length is signed into its URL).
    #[arg(long, env = "MIXDOWN_MAX_CHUNK_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_chunk_bytes: u64,

    /// Format of the finished files: mp4, webm or audio.
    #[arg(long, env = "MIXDOWN_OUTPUT_PROFILE", value_enum, default_value_t = ProfileArg::Mp4)]
    pub output_profile: ProfileArg,

    /// `ttlSecondsAfterFinished` of the RecordingJobs the API creates. Unset: kept.
    #[arg(long, env = "MIXDOWN_JOB_TTL_SECONDS")]
    pub job_ttl_seconds: Option<i32>,

    /// `uploadTimeoutSeconds` of the RecordingJobs the API creates: how long processing waits
    /// for participants to seal their tracks after a stop (0 to 86400).
    #[arg(long, env = "MIXDOWN_UPLOAD_TIMEOUT_SECONDS", default_value_t = mixdown_crds::DEFAULT_UPLOAD_TIMEOUT_SECONDS,
          value_parser = clap::value_parser!(i64).range(0..=86_400))]
    pub upload_timeout_seconds: i64,

    /// `backoffLimit` of the RecordingJobs the API creates: retries of transient worker failures
    /// before processing fails (0 to 10).
    #[arg(long, env = "MIXDOWN_JOB_BACKOFF_LIMIT", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(0..=10))]
    pub job_backoff_limit: i32,

    /// `activeDeadlineSeconds` of the RecordingJobs the API creates: longest time processing may
    /// take across all attempts (1 to 86400).
    #[arg(long, env = "MIXDOWN_JOB_ACTIVE_DEADLINE_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(i64).range(1..=86_400))]
    pub job_active_deadline_seconds: i64,

    /// `startTimeoutSeconds` of the RecordingJobs the API creates: longest time a worker Pod may
    /// take to start before the job fails with the cause (1 to 86400).
    #[arg(long, env = "MIXDOWN_JOB_START_TIMEOUT_SECONDS", default_value_t = mixdown_crds::DEFAULT_START_TIMEOUT_SECONDS,
          value_parser = clap::value_parser!(i64).range(1..=86_400))]
    pub job_start_timeout_seconds: i64,

    /// Progress-only updates of one recording go to its room at most this often, in
    /// milliseconds (phase changes never wait).
    #[arg(long, env = "MIXDOWN_PROGRESS_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(100..=10_000), value_name = "MS")]
    pub progress_interval_ms: u64,

    /// Origins allowed to call the API from a browser (comma-separated), e.g.
    /// `https://studio.example.com`. Empty: same-origin only.
    #[arg(long, env = "MIXDOWN_STUDIO_ORIGINS", value_delimiter = ',')]
    pub studio_origins: Vec<String>,

    /// Public base URL of the studio, for invite links. Unset: `http://{listen addr}`.
    #[arg(long, env = "MIXDOWN_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Log format: `json` (one object per line, for log collectors) or `text`.
    #[arg(long, env = "MIXDOWN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// On SIGTERM, how long sockets get to hear `server-shutdown` before connections close.
    #[arg(long, env = "MIXDOWN_SHUTDOWN_GRACE_SECONDS", default_value_t = 2)]
    pub shutdown_grace_seconds: u64,
}

/// Where storage is and how to sign for it: the same flags for the server and for `selftest`.
#[derive(clap::Args, Debug, Clone)]
pub struct StorageArgs {
    /// S3-compatible endpoint the API itself uses to check and list chunks
    /// (e.g. `https://<account>.r2.cloudflarestorage.com`, or a cluster-internal one).
    #[arg(long, env = "MIXDOWN_S3_ENDPOINT")]
    pub s3_endpoint: String,

    /// Endpoint browsers reach storage at; presigned URLs are made for it. Unset: `--s3-endpoint`.
    #[arg(long, env = "MIXDOWN_S3_PUBLIC_ENDPOINT")]
    pub s3_public_endpoint: Option<String>,

    /// Region to sign with; R2 wants `auto`.
    #[arg(long, env = "MIXDOWN_S3_REGION", default_value = "auto")]
    pub s3_region: String,

    /// Bucket holding chunks and outputs.
    #[arg(long, env = "MIXDOWN_S3_BUCKET")]
    pub s3_bucket: String,

    /// Path-style addressing (`{endpoint}/{bucket}/{key}`); off: `{bucket}.{endpoint host}/{key}`.
    #[arg(long, env = "MIXDOWN_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,

    /// Storage access key id (the chart takes it from a Secret).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: String,

    /// Storage secret access key (the chart takes it from a Secret).
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: String,

    /// First segment of every object key: `{prefix}/chunks/...`, `{prefix}/processed/...`.
    #[arg(long, env = "MIXDOWN_KEY_PREFIX", default_value = mixdown_crds::names::DEFAULT_KEY_PREFIX)]
    pub key_prefix: String,
}

impl StorageArgs {
    /// The [`StorageConfig`] these flags describe (endpoints without a trailing slash, the
    /// prefix without slashes at either end).
    pub fn config(&self) -> StorageConfig {
        StorageConfig {
            endpoint: self.s3_endpoint.trim_end_matches('/').to_string(),
            public_endpoint: self
                .s3_public_endpoint
                .as_deref()
                .unwrap_or(&self.s3_endpoint)
                .trim_end_matches('/')
                .to_string(),
            region: self.s3_region.clone(),
            bucket: self.s3_bucket.clone(),
            path_style: self.s3_path_style,
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            key_prefix: self.key_prefix.trim_matches('/').to_string(),
        }
    }
}

/// `mixdown-api selftest`: checks an install from where it runs (the chart's `helm test` Pod)
/// with the server's storage settings and credentials: a probe object presigned, uploaded, read
/// back and deleted, and a socket.io handshake with the API. One line per step; exit 1 names the
/// step that failed.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "selftest",
    about = "Checks an install: a probe object presigned, PUT, HEAD and deleted in the bucket, and a socket.io handshake with the API; one line per step, exit 1 names the failed step",
    long_about = None
)]
pub struct SelftestArgs {
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Base URL of the API to complete a socket.io handshake with, e.g.
    /// `http://mixdown-api.mixdown.svc:80`.
    #[arg(long, env = "MIXDOWN_SELFTEST_API_URL")]
    pub api_url: String,

    /// Longest time each step may take, in seconds.
    #[arg(long, env = "MIXDOWN_SELFTEST_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout_seconds: u64,
}

/// `mixdown-api bucket-setup`: applies the CORS rule the studio page needs and the lifecycle
/// rules that clean up after failures (see `mixdown_api::bucket_setup`), then reads both back.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "bucket-setup",
    about = "Applies the bucket's CORS rule (PUT from the studio origins, ETag exposed) and lifecycle rules (abort incomplete multipart uploads, expire old chunks), then reads them back",
    long_about = None
)]
pub struct BucketSetupArgs {
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Origins the studio page is served from, allowed to PUT chunks (comma-separated), e.g.
    /// `https://studio.example.com`. Required.
    #[arg(
        long = "cors-origin",
        env = "MIXDOWN_STUDIO_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Days after which a multipart upload nobody completed or aborted is aborted.
    #[arg(long, env = "MIXDOWN_ABORT_INCOMPLETE_UPLOADS_DAYS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub abort_incomplete_uploads_days: u32,

    /// Days after which chunks still in storage are deleted: those of recordings that failed
    /// and were never retried. 0: never.
    #[arg(long, env = "MIXDOWN_EXPIRE_CHUNKS_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(0..=3650))]
    pub expire_chunks_days: u32,
}

/// What `mixdown-api` was asked to do: serve (no subcommand, as every existing invocation), or
/// a subcommand.
#[derive(Debug, Clone)]
pub enum Invocation {
    Serve(Box<Args>),
    Selftest(SelftestArgs),
    BucketSetup(BucketSetupArgs),
}

impl Invocation {
    /// The command line: the server's flags, and its subcommands. The server's flags are
    /// required only when it is the server that runs.
    pub fn command() -> clap::Command {
        use clap::CommandFactory;
        Args::command()
            .subcommand(SelftestArgs::command())
            .subcommand(BucketSetupArgs::command())
            .args_conflicts_with_subcommands(true)
            .subcommand_negates_reqs(true)
    }

    pub fn try_parse_from<I, T>(argv: I) -> Result<Invocation, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::FromArgMatches;
        let mut matches = Invocation::command().try_get_matches_from(argv)?;
        match matches.remove_subcommand() {
            Some((name, mut sub)) if name == "selftest" => Ok(Invocation::Selftest(
                SelftestArgs::from_arg_matches_mut(&mut sub)?,
            )),
            Some((name, mut sub)) if name == "bucket-setup" => Ok(Invocation::BucketSetup(
                BucketSetupArgs::from_arg_matches_mut(&mut sub)?,
            )),
            Some((name, _)) => unreachable!("clap knows no subcommand {name}"),
            None => Ok(Invocation::Serve(Box::new(Args::from_arg_matches_mut(
                &mut matches,
            )?))),
        }
    }

    /// Parses the process's arguments; on a bad command line prints clap's message and exits.
    pub fn parse() -> Invocation {
        Invocation::try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    Mp4,
    Webm,
    Audio,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Profile {
        match p {
            ProfileArg::Mp4 => Profile::Mp4,
            ProfileArg::Webm => Profile::Webm,
            ProfileArg::Audio => Profile::Audio,
        }
    }
}

/// Storage as the API sees it: where it talks to, where browsers talk to, and how to sign.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub endpoint: String,
    pub public_endpoint: String,
    pub region: String,
    pub bucket: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub key_prefix: String,
}

/// What the handlers read; see the module docs.
#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub storage: StorageConfig,
    pub signing_key: Vec<u8>,
    pub admin_key: String,
    pub token_ttl: Duration,
    pub upload_url_ttl: Duration,
    pub download_url_ttl: Duration,
    pub max_chunk_bytes: u64,
    pub output_profile: Profile,
    pub job_ttl_seconds: Option<i32>,
    pub upload_timeout_seconds: i64,
    /// `backoffLimit`, `activeDeadlineSeconds` and `startTimeoutSeconds` of new RecordingJobs.
    pub job_backoff_limit: i32,
    pub job_active_deadline_seconds: i64,
    pub job_start_timeout_seconds: i64,
    pub progress_interval: Duration,
    pub public_url: String,
}

/// Keys that are missing or too weak, said in words that tell the operator what to set.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "no {what}: set {flag} (a file, as the chart mounts from a Secret) or {env}; for a local run only, --generate-keys"
    )]
    Missing {
        what: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    #[error("the {what} is {len} bytes; it must be at least {min}")]
    TooShort {
        what: &'static str,
        len: usize,
        min: usize,
    },
    #[error("reading the {what} from {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The keys the server runs with, and whether they were generated (then they are printed).
pub struct Keys {
    pub signing_key: Vec<u8>,
    pub admin_key: String,
    pub generated: bool,
}

impl Args {
    /// Loads the signing and admin keys from files or environment, or generates them for a
    /// local run. Refuses to go on without them.
    pub fn keys(&self) -> Result<Keys, KeyError> {
        if self.generate_keys && self.signing_key_file.is_none() && self.signing_key.is_none() {
            return Ok(Keys {
                signing_key: random_hex(32).into_bytes(),
                admin_key: self.admin_key.clone().unwrap_or_else(|| random_hex(16)),
                generated: true,
            });
        }
        let signing_key = load_key(
            "token signing key",
            self.signing_key_file.as_ref(),
            self.signing_key.as_deref(),
            "--signing-key-file",
            "MIXDOWN_SIGNING_KEY",
            32,
        )?;
        let admin_key = load_key(
            "admin key",
            self.admin_key_file.as_ref(),
            self.admin_key.as_deref(),
            "--admin-key-file",
            "MIXDOWN_ADMIN_KEY",
            16,
        )?;
        Ok(Keys {
            signing_key: signing_key.into_bytes(),
            admin_key,
            generated: false,
        })
    }

    /// The [`Config`] for these flags and keys, in `namespace`.
    pub fn config(&self, keys: &Keys, namespace: String) -> Config {
        Config {
            namespace,
            storage: self.storage.config(),
            signing_key: keys.signing_key.clone(),
            admin_key: keys.admin_key.clone(),
            token_ttl: Duration::from_secs(self.token_ttl_seconds),
            upload_url_ttl: Duration::from_secs(self.upload_url_ttl_seconds),
            download_url_ttl: Duration::from_secs(self.download_url_ttl_seconds),
            max_chunk_bytes: self.max_chunk_bytes,
            output_profile: self.output_profile.into(),
            job_ttl_seconds: self.job_ttl_seconds,
            upload_timeout_seconds: self.upload_timeout_seconds,
            job_backoff_limit: self.job_backoff_limit,
            job_active_deadline_seconds: self.job_active_deadline_seconds,
            job_start_timeout_seconds: self.job_start_timeout_seconds,
            progress_interval: Duration::from_millis(self.progress_interval_ms),
            public_url: self
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", self.listen_addr))
                .trim_end_matches('/')
                .to_string(),
        }
    }
}

fn load_key(
    what: &'static str,
    file: Option<&PathBuf>,
    value: Option<&str>,
    flag: &'static str,
    env: &'static str,
    min: usize,
) -> Result<String, KeyError> {
    let key = match (file, value) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|source| KeyError::Read {
                what,
                path: path.clone(),
                source,
            })?
            .trim()
            .to_string(),
        (None, Some(value)) => value.trim().to_string(),
        (None, None) => return Err(KeyError::Missing { what, flag, env }),
    };
    if key.len() < min {
        return Err(KeyError::TooShort {
            what,
            len: key.len(),
            min,
        });
    }
    Ok(key)
}

/// `bytes` random bytes from the system's generator, as hex.
pub fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("the system random generator works");
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec![
            "mixdown-api",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-bucket",
            "b",
            "--s3-access-key-id",
            "ak",
            "--s3-secret-access-key",
            "sk",
        ];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("valid flags")
    }

    #[test]
    fn no_subcommand_serves_and_selftest_takes_the_storage_flags() {
        let serve = Invocation::try_parse_from([
            "mixdown-api",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-bucket",
            "b",
            "--s3-access-key-id",
            "ak",
            "--s3-secret-access-key",
            "sk",
        ])
        .expect("the server's flags");
        assert!(matches!(serve, Invocation::Serve(args) if args.storage.s3_bucket == "b"));

        let Invocation::Selftest(selftest) = Invocation::try_parse_from([
            "mixdown-api",
            "selftest",
            "--s3-endpoint",
            "http://127.0.0.1:9000/",
            "--s3-bucket",
            "b",
            "--s3-access-key-id",
            "ak",
            "--s3-secret-access-key",
            "sk",
            "--key-prefix",
            "/studio/prod/",
            "--api-url",
            "http://mixdown-api.mixdown.svc:80",
        ])
        .expect("selftest's flags") else {
            panic!("selftest is the subcommand");
        };
        assert_eq!(selftest.api_url, "http://mixdown-api.mixdown.svc:80");
        assert_eq!(selftest.timeout_seconds, 10);
        let storage = selftest.storage.config();
        assert_eq!(storage.public_endpoint, "http://127.0.0.1:9000");
        assert_eq!(storage.key_prefix, "studio/prod");

        let err = Invocation::try_parse_from(["mixdown-api", "selftest", "--s3-bucket", "b"])
            .expect_err("selftest needs its settings");
        assert!(err.to_string().contains("--api-url"), "{err}");
        // The server needs its own settings only when it is the server that runs.
        let err =
            Invocation::try_parse_from(["mixdown-api"]).expect_err("the server needs its settings");
        assert!(err.to_string().contains("--s3-endpoint"), "{err}");
    }

    #[test]
    fn job_settings_default_to_the_crd_defaults_and_refuse_values_out_of_range() {
        let keys = args(&["--generate-keys"]).keys().expect("generated");
        let config = args(&[]).config(&keys, "ns".into());
        assert_eq!(
            (
                config.job_backoff_limit,
                config.job_active_deadline_seconds,
                config.job_start_timeout_seconds
            ),
            (3, 3600, 600)
        );
        let config = args(&[
            "--job-backoff-limit",
            "0",
            "--job-active-deadline-seconds",
            "86400",
            "--job-start-timeout-seconds",
            "1",
        ])
        .config(&keys, "ns".into());
        assert_eq!(
            (
                config.job_backoff_limit,
                config.job_active_deadline_seconds,
                config.job_start_timeout_seconds
            ),
            (0, 86400, 1)
        );

        for (flag, bad, range) in [
            ("--job-backoff-limit", "11", "0..=10"),
            ("--job-backoff-limit", "-1", "0..=10"),
            ("--job-active-deadline-seconds", "0", "1..=86400"),
            ("--job-active-deadline-seconds", "86401", "1..=86400"),
            ("--job-start-timeout-seconds", "0", "1..=86400"),
            ("--job-start-timeout-seconds", "90000", "1..=86400"),
        ] {
            let err = Args::try_parse_from([
                "mixdown-api",
                "--s3-endpoint",
                "http://127.0.0.1:9000",
                "--s3-bucket",
                "b",
                "--s3-access-key-id",
                "ak",
                "--s3-secret-access-key",
                "sk",
                &format!("{flag}={bad}"),
            ])
            .expect_err("out of range");
            let text = err.to_string();
            assert!(
                text.contains(flag) && text.contains(bad) && text.contains(range),
                "{flag} {bad}: {text}"
            );
        }
    }

    #[test]
    fn the_server_refuses_to_start_without_keys() {
        let err = args(&[]).keys().err().expect("no keys is an error");
        assert!(err.to_string().contains("--signing-key-file"), "{err}");
        let err = args(&[
            "--signing-key",
            "short",
            "--admin-key",
            "x".repeat(16).as_str(),
        ])
        .keys()
        .err()
        .expect("a short key is an error");
        assert!(err.to_string().contains("at least 32"), "{err}");
    }

    #[test]
    fn keys_come_from_files_or_flags_or_are_generated() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("signing");
        std::fs::write(&file, format!("{}\n", "k".repeat(40))).expect("write");
        let keys = args(&[
            "--signing-key-file",
            file.to_str().expect("utf-8"),
            "--admin-key",
            &"a".repeat(20),
        ])
        .keys()
        .expect("keys");
        assert_eq!(keys.signing_key, "k".repeat(40).into_bytes());
        assert!(!keys.generated);

        let generated = args(&["--generate-keys"]).keys().expect("generated");
        assert!(generated.generated && generated.signing_key.len() == 64);
        let config = args(&["--s3-public-endpoint", "https://storage.example.com/"])
            .config(&generated, "ns".into());
        assert_eq!(
            config.storage.public_endpoint,
            "https://storage.example.com"
        );
        assert_eq!(config.storage.endpoint, "http://127.0.0.1:9000");
    }
}
