//! Every setting of the worker: a command-line flag with an environment variable behind it.
//!
//! In a Pod the operator sets the environment (names in [`mixdown_crds::names::env`]); by hand,
//! flags are easier. `mixdown-worker --help` lists them all; `ffmpeg-image/README.md` explains
//! them.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser, ValueEnum};
use mixdown_crds::names::env;

use crate::media::EncodeSettings;

const ABOUT: &str = "Turns a recording's uploaded WebM chunks into finished files: streams the \
chunks of each track from S3-compatible storage through ffmpeg into a multipart upload, verifies \
each output, deletes the chunks, and writes a JSON report to the termination message path.";

const AFTER_HELP: &str = "\
Required: the job (--job or --job-file), the bucket (--s3-bucket), and credentials: the \
standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or the other \
sources of the AWS SDK's default chain. Everything else has a default.

Exit codes: 0 every output written and verified, or found finished by an earlier run (the \
manifest.json beside the outputs: the same outputs are reported again), also when the job's \
mixdown could not be made (the report's mixdownFailure says why; the participants' files are \
there); 2 bad input (no chunks, a \
missing first chunk, a gap or a wrong count in a sealed track, an unreadable chunk, an invalid \
job, a finished recording whose outputs are gone since): retrying will not help; 1 anything else \
(storage, also storage refusing the credentials or the bucket, ffmpeg, verification): transient, \
retry.

Log verbosity: RUST_LOG (default info), e.g. RUST_LOG=mixdown_worker=debug.

Example, by hand:
  AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... mixdown-worker \\
    --job-file job.json --s3-endpoint https://ACCOUNT.r2.cloudflarestorage.com \\
    --s3-bucket recordings --termination-message-path report.json";

/// Heading of the settings a run cannot do without.
const REQUIRED: &str = "Required";

/// The command line as `--help` shows it: each variable named without its value (`[env:
/// MIXDOWN_S3_ENDPOINT]`), whether set or not, rather than clap's `MIXDOWN_S3_ENDPOINT=` for an
/// unset one; the job and the credentials are not values to print anyway.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Args::command().mut_args(|arg| arg.hide_env_values(true))
}

/// Parses the process's command line and environment ([`command`]).
pub fn parse() -> Result<Args, clap::Error> {
    use clap::FromArgMatches;
    Args::from_arg_matches(&command().try_get_matches()?)
}

/// The command line; each flag falls back to its environment variable.
#[derive(Debug, Clone, Parser)]
#[command(name = "mixdown-worker", version, about = ABOUT, after_help = AFTER_HELP, next_help_heading = "Settings")]
pub struct Args {
    /// The job as JSON (a WorkerJob: roomId, recordingId, tracks[{participantId,
    /// source{prefix, chunkCount (unset: not sealed, processed up to its first gap)},
    /// startOffsetMs, displayName}], output{prefix, profile: mp4|webm|audio},
    /// cleanup{deleteChunks}, composite (make the mixdown)). Set by the operator.
    /// Required, or --job-file.
    #[arg(long, env = env::JOB, value_name = "JSON", help_heading = REQUIRED)]
    pub job: Option<String>,

    /// Read the job from this file instead (for running by hand); takes precedence over --job.
    #[arg(long, value_name = "PATH", help_heading = REQUIRED)]
    pub job_file: Option<PathBuf>,

    /// S3 endpoint URL, e.g. https://ACCOUNT.r2.cloudflarestorage.com. Unset: AWS S3 (or
    /// AWS_ENDPOINT_URL).
    #[arg(long, env = env::S3_ENDPOINT, value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// Region to sign requests for; R2 uses `auto`.
    #[arg(long, env = env::S3_REGION, default_value = "auto", value_name = "REGION")]
    pub s3_region: String,

    /// Bucket holding the chunks and the outputs. Required.
    #[arg(long, env = env::S3_BUCKET, value_name = "BUCKET", help_heading = REQUIRED)]
    pub s3_bucket: Option<String>,

    /// Path-style addressing ({endpoint}/{bucket}/{key}) instead of virtual-hosted style;
    /// needed by most S3-compatible servers other than AWS and R2.
    #[arg(long, env = env::S3_PATH_STYLE, value_parser = BoolishValueParser::new(), action = ArgAction::Set, default_value = "false", value_name = "BOOL")]
    pub s3_path_style: bool,

    /// Attempts per storage request (the AWS SDK's standard retry, exponential backoff), and per
    /// chunk download.
    #[arg(long, env = "MIXDOWN_S3_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20), value_name = "N")]
    pub s3_max_attempts: u32,

    /// Scratch directory for outputs while ffmpeg writes them (an emptyDir in the Pod). It must
    /// hold the finished file of every track processed at once. Default: the system temp dir
    /// ($TMPDIR or /tmp).
    #[arg(long, env = env::SCRATCH_DIR, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,

    /// Where the JSON report (a WorkerReport) is written; it is printed on stdout too. Unset:
    /// /dev/termination-log inside a Pod (KUBERNETES_SERVICE_HOST set, or the file exists),
    /// nowhere else, so that a run by hand does not create it.
    #[arg(long, env = env::TERMINATION_MESSAGE_PATH, value_name = "PATH")]
    pub termination_message_path: Option<PathBuf>,

    /// Name of the RecordingJob whose status.progress the worker patches (server-side apply).
    /// Unset: progress is only logged.
    #[arg(long, env = env::RECORDING_JOB, value_name = "NAME")]
    pub recording_job: Option<String>,

    /// Namespace of that RecordingJob. Unset: the namespace of the kubeconfig or service account.
    #[arg(long, env = env::NAMESPACE, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Progress is reported (patched or logged) this often, in milliseconds.
    #[arg(long, env = env::PROGRESS_INTERVAL_MS, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=2000), value_name = "MS")]
    pub progress_interval_ms: u64,

    /// Chunks downloaded ahead of ffmpeg, per track. Memory: about this many chunks per track.
    #[arg(long, env = "MIXDOWN_DOWNLOAD_AHEAD", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64), value_name = "N")]
    pub download_ahead: u32,

    /// Tracks of the job processed at once (each runs its own ffmpeg).
    #[arg(long, env = "MIXDOWN_PARALLEL_TRACKS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=32), value_name = "N")]
    pub parallel_tracks: u32,

    /// Multipart upload part size in MiB (at least 5, the S3 and R2 minimum). Memory: up to
    /// this times --upload-concurrency per track.
    #[arg(long, env = "MIXDOWN_PART_SIZE_MIB", default_value_t = 8, value_parser = clap::value_parser!(u64).range(5..=1024), value_name = "MIB")]
    pub part_size_mib: u64,

    /// Parts uploaded at once, per track.
    #[arg(long, env = "MIXDOWN_UPLOAD_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16), value_name = "N")]
    pub upload_concurrency: u32,

    /// After a failure, keep trying this long (seconds) to abort the multipart upload, so that
    /// no incomplete upload stays behind when storage comes back.
    #[arg(
        long,
        env = "MIXDOWN_ABORT_TIMEOUT_SECS",
        default_value_t = 60,
        value_name = "SECS"
    )]
    pub abort_timeout_secs: u64,

    /// The ffmpeg program.
    #[arg(
        long,
        env = "MIXDOWN_FFMPEG",
        default_value = "ffmpeg",
        value_name = "PATH"
    )]
    pub ffmpeg: PathBuf,

    /// The ffprobe program.
    #[arg(
        long,
        env = "MIXDOWN_FFPROBE",
        default_value = "ffprobe",
        value_name = "PATH"
    )]
    pub ffprobe: PathBuf,

    /// x264 preset of the mp4 profile when the video must be encoded (ultrafast … veryslow).
    #[arg(long, env = "MIXDOWN_VIDEO_PRESET", default_value = "veryfast")]
    pub video_preset: String,

    /// x264 constant rate factor of the mp4 profile (0 lossless … 51 worst; 23 is x264's default).
    #[arg(long, env = "MIXDOWN_VIDEO_CRF", default_value_t = 23, value_parser = clap::value_parser!(u8).range(0..=51))]
    pub video_crf: u8,

    /// AAC bit rate of the mp4 and audio profiles.
    #[arg(long, env = "MIXDOWN_AUDIO_BITRATE", default_value = "128k")]
    pub audio_bitrate: String,

    /// Font the mixdown writes participants' names in (a TrueType file; the image has DejaVu
    /// Sans from Debian's fonts-dejavu-core).
    #[arg(
        long,
        env = "MIXDOWN_FONT",
        default_value = DEFAULT_FONT,
        value_name = "PATH"
    )]
    pub font: PathBuf,

    /// Log format on stderr.
    #[arg(long, env = "MIXDOWN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where Debian's fonts-dejavu-core puts DejaVu Sans.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where Kubernetes reads a container's termination message unless told otherwise.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// Where the report goes: the path asked for; else Kubernetes' default path when running in a
/// Pod (`in_pod`: KUBERNETES_SERVICE_HOST is set) or when that file exists (a runtime that
/// creates it); else nowhere (by hand, the report is on stdout).
pub fn report_path(
    asked: Option<&std::path::Path>,
    in_pod: bool,
    default_exists: bool,
) -> Option<PathBuf> {
    match asked {
        Some(path) => Some(path.to_owned()),
        None if in_pod || default_exists => Some(PathBuf::from(DEFAULT_TERMINATION_MESSAGE_PATH)),
        None => None,
    }
}

/// [`report_path`] for this process's environment and file system.
pub fn report_path_here(asked: Option<&std::path::Path>) -> Option<PathBuf> {
    report_path(
        asked,
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty()),
        std::path::Path::new(DEFAULT_TERMINATION_MESSAGE_PATH).exists(),
    )
}

impl Args {
    /// Where the report goes ([`report_path`]).
    pub fn report_path(&self) -> Option<PathBuf> {
        report_path_here(self.termination_message_path.as_deref())
    }

    pub fn scratch_dir(&self) -> PathBuf {
        self.scratch_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    pub fn part_size(&self) -> u64 {
        self.part_size_mib * 1024 * 1024
    }

    pub fn progress_interval(&self) -> Duration {
        Duration::from_millis(self.progress_interval_ms)
    }

    pub fn abort_timeout(&self) -> Duration {
        Duration::from_secs(self.abort_timeout_secs)
    }

    pub fn encode_settings(&self) -> EncodeSettings {
        EncodeSettings {
            video_preset: self.video_preset.clone(),
            video_crf: self.video_crf,
            audio_bitrate: self.audio_bitrate.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_are_sane() {
        let args = Args::try_parse_from(["mixdown-worker", "--s3-bucket", "b"]).expect("parses");
        assert_eq!(args.s3_region, "auto");
        assert!(!args.s3_path_style);
        assert_eq!(args.part_size(), 8 * 1024 * 1024);
        assert_eq!(args.download_ahead, 8);
        assert_eq!(args.parallel_tracks, 2);
        assert_eq!(args.termination_message_path, None);
        assert!(args.progress_interval() <= Duration::from_secs(2));
    }

    #[test]
    fn the_report_goes_to_the_termination_log_only_inside_a_pod_or_when_asked() {
        let asked = std::path::Path::new("report.json");
        let default = Some(PathBuf::from("/dev/termination-log"));
        // (asked, in a Pod, /dev/termination-log exists) → where.
        for (given, in_pod, exists, expected) in [
            (Some(asked), false, false, Some(asked.to_owned())),
            (Some(asked), true, true, Some(asked.to_owned())),
            (None, true, false, default.clone()),
            (None, false, true, default.clone()),
            (None, false, false, None),
        ] {
            assert_eq!(
                report_path(given, in_pod, exists),
                expected,
                "{given:?} {in_pod} {exists}"
            );
        }
    }

    #[test]
    fn flags_parse_and_limits_hold() {
        let args = Args::try_parse_from([
            "mixdown-worker",
            "--s3-bucket",
            "b",
            "--s3-path-style",
            "true",
            "--part-size-mib",
            "16",
            "--job-file",
            "job.json",
        ])
        .expect("parses");
        assert!(args.s3_path_style);
        assert_eq!(args.part_size(), 16 * 1024 * 1024);
        assert!(Args::try_parse_from(["mixdown-worker", "--part-size-mib", "4"]).is_err());
        assert!(
            Args::try_parse_from(["mixdown-worker", "--progress-interval-ms", "5000"]).is_err()
        );
    }

    #[test]
    fn help_documents_every_environment_variable() {
        let help = command().render_long_help().to_string();
        assert!(
            !help.contains("=]"),
            "an unset variable shows as NAME=: {help}"
        );
        let required = &help[help.find("Required:").expect("a Required heading")..];
        let required = &required[..required.find("Settings:").unwrap_or(required.len())];
        for flag in ["--job ", "--job-file", "--s3-bucket"] {
            assert!(
                required.contains(flag),
                "{flag} is not under Required: {help}"
            );
        }
        for name in [
            env::JOB,
            env::S3_ENDPOINT,
            env::S3_REGION,
            env::S3_BUCKET,
            env::S3_PATH_STYLE,
            env::SCRATCH_DIR,
            env::TERMINATION_MESSAGE_PATH,
            env::RECORDING_JOB,
            env::NAMESPACE,
            "AWS_ACCESS_KEY_ID",
            "MIXDOWN_DOWNLOAD_AHEAD",
            "MIXDOWN_PARALLEL_TRACKS",
        ] {
            assert!(help.contains(name), "--help does not mention {name}");
        }
    }
}
