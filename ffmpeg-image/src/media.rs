//! What the worker asks of ffmpeg and ffprobe, and how it reads their answers. Pure: argument
//! lists, log-line classification and output parsing, all unit-tested without running ffmpeg.
//!
//! Browser recordings start at a timestamp other than zero and have a variable frame rate.
//! ffmpeg (without `-copyts`) shifts every stream by the input's start time, so outputs start at
//! 0 with the streams' offsets to each other kept; `-fps_mode vfr` keeps the recorded frame
//! timing instead of duplicating frames to a guessed constant rate; `aresample=async=1` fills
//! audio gaps with silence and `first_pts=0` pads a late-starting audio track, so audio stays on
//! the video's clock.

use std::path::Path;

use mixdown_crds::Profile;
use serde::Deserialize;

/// Codecs of the recording's first video and audio stream, as ffprobe names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InputStreams {
    pub video: Option<String>,
    pub audio: Option<String>,
}

#[derive(Deserialize)]
struct ProbeJson {
    #[serde(default)]
    streams: Vec<ProbeStream>,
    #[serde(default)]
    format: Option<ProbeFormat>,
}

#[derive(Deserialize)]
struct ProbeStream {
    #[serde(default)]
    codec_type: Option<String>,
    #[serde(default)]
    codec_name: Option<String>,
}

#[derive(Deserialize)]
struct ProbeFormat {
    #[serde(default)]
    duration: Option<String>,
}

impl InputStreams {
    /// Reads `ffprobe -of json -show_entries stream=codec_type,codec_name` output.
    pub fn from_ffprobe_json(json: &str) -> Result<InputStreams, String> {
        let probe: ProbeJson = serde_json::from_str(json)
            .map_err(|err| format!("unexpected ffprobe output: {err}"))?;
        let mut input = InputStreams::default();
        for stream in probe.streams {
            let (Some(kind), Some(codec)) = (stream.codec_type, stream.codec_name) else {
                continue;
            };
            match kind.as_str() {
                "video" if input.video.is_none() => input.video = Some(codec),
                "audio" if input.audio.is_none() => input.audio = Some(codec),
                _ => {}
            }
        }
        Ok(input)
    }

    /// Names under which ffmpeg logs about reading this input: the demuxer and the decoders.
    pub fn log_contexts(&self) -> Vec<String> {
        let mut contexts = vec!["matroska,webm".to_owned()];
        contexts.extend(self.video.iter().chain(&self.audio).cloned());
        contexts
    }
}

/// Encoder settings of the profiles that encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeSettings {
    /// x264 preset (`ultrafast` … `veryslow`).
    pub video_preset: String,
    /// x264 constant rate factor, 0–51.
    pub video_crf: u8,
    /// AAC bit rate, ffmpeg syntax (`128k`).
    pub audio_bitrate: String,
}

/// How one track becomes one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPlan {
    /// ffmpeg's arguments, reading the recording from stdin and writing `output`.
    pub args: Vec<String>,
    /// `Content-Type` of the uploaded object.
    pub content_type: &'static str,
    /// Whether the file can be uploaded while ffmpeg writes it. Matroska only goes back to the
    /// header at the end (duration, seek head); MP4 with the index at the front rewrites the
    /// whole file when it finishes, so it is uploaded after.
    pub upload_while_writing: bool,
    /// Codecs the output must have, video first: what verification checks.
    pub expected: Vec<(&'static str, String)>,
    /// Whether the video is copied rather than encoded.
    pub copies_video: bool,
}

impl OutputPlan {
    /// The same ffmpeg arguments reading the recording from the file `input` instead of stdin:
    /// how the benchmarks run "ffmpeg alone" on a local copy.
    pub fn args_reading(&self, input: &Path) -> Vec<String> {
        self.args
            .iter()
            .map(|a| {
                if a == "pipe:0" {
                    input.to_string_lossy().into_owned()
                } else {
                    a.clone()
                }
            })
            .collect()
    }
}

/// Video codecs and audio codecs the WebM muxer accepts; anything else goes in Matroska.
const WEBM_VIDEO: [&str; 3] = ["vp8", "vp9", "av1"];
const WEBM_AUDIO: [&str; 2] = ["opus", "vorbis"];

/// Plans the ffmpeg run of one track. `Err` is a message for bad input: the profile needs a
/// stream the recording does not have.
pub fn output_plan(
    profile: Profile,
    input: &InputStreams,
    encode: &EncodeSettings,
    output: &Path,
) -> Result<OutputPlan, String> {
    if input.video.is_none() && input.audio.is_none() {
        return Err("the recording has neither audio nor video".to_owned());
    }
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "level+warning",
        "-i",
        "pipe:0",
    ]
    .map(String::from)
    .to_vec();
    let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
    let audio_encode = [
        "-c:a",
        "aac",
        "-b:a",
        encode.audio_bitrate.as_str(),
        "-af",
        "aresample=async=1:first_pts=0",
    ];
    let mut expected = Vec::new();
    let mut copies_video = false;
    let (content_type, upload_while_writing) = match profile {
        Profile::Mp4 => {
            if let Some(video) = &input.video {
                push(&["-map", "0:v:0"]);
                if video == "h264" {
                    // Chromium records `video/webm;codecs=h264`: already what MP4 wants.
                    push(&["-c:v", "copy"]);
                    copies_video = true;
                } else {
                    let crf = encode.video_crf.to_string();
                    push(&[
                        "-c:v",
                        "libx264",
                        "-preset",
                        &encode.video_preset,
                        "-crf",
                        &crf,
                        // Browsers can record odd sizes (a shared window); H.264 in 4:2:0 cannot.
                        "-vf",
                        "scale=trunc(iw/2)*2:trunc(ih/2)*2,format=yuv420p",
                        "-fps_mode",
                        "vfr",
                    ]);
                }
                expected.push(("video", "h264".to_owned()));
            }
            if input.audio.is_some() {
                push(&["-map", "0:a:0"]);
                push(&audio_encode);
                expected.push(("audio", "aac".to_owned()));
            }
            push(&["-movflags", "+faststart", "-f", "mp4"]);
            ("video/mp4", false)
        }
        Profile::Webm => {
            if let Some(video) = &input.video {
                push(&["-map", "0:v:0"]);
                expected.push(("video", video.clone()));
            }
            if let Some(audio) = &input.audio {
                push(&["-map", "0:a:0"]);
                expected.push(("audio", audio.clone()));
            }
            push(&["-c", "copy"]);
            copies_video = input.video.is_some();
            let webm_ok = input
                .video
                .as_deref()
                .is_none_or(|v| WEBM_VIDEO.contains(&v))
                && input
                    .audio
                    .as_deref()
                    .is_none_or(|a| WEBM_AUDIO.contains(&a));
            // H.264 cannot go into WebM proper; Matroska under the .webm name is what Chromium
            // itself produces for `video/webm;codecs=h264`, and browsers play it.
            let format = if webm_ok { "webm" } else { "matroska" };
            push(&["-f", format]);
            ("video/webm", true)
        }
        Profile::Audio => {
            if input.audio.is_none() {
                return Err("the recording has no audio, which the audio profile needs".to_owned());
            }
            push(&["-map", "0:a:0", "-vn"]);
            push(&audio_encode);
            push(&["-movflags", "+faststart", "-f", "mp4"]);
            expected.push(("audio", "aac".to_owned()));
            ("audio/mp4", false)
        }
    };
    args.push("-y".to_owned());
    args.push(output.to_string_lossy().into_owned());
    Ok(OutputPlan {
        args,
        content_type,
        upload_while_writing,
        expected,
        copies_video,
    })
}

/// ffprobe arguments that read the first chunks from stdin and print the streams as JSON.
pub fn input_probe_args() -> Vec<String> {
    [
        "-hide_banner",
        "-loglevel",
        "error",
        "-of",
        "json",
        "-show_entries",
        "stream=codec_type,codec_name",
        "-i",
        "pipe:0",
    ]
    .map(String::from)
    .to_vec()
}

/// ffprobe arguments that read an uploaded output (by URL) and print its duration and streams.
pub fn output_probe_args(url: &str) -> Vec<String> {
    [
        "-hide_banner",
        "-loglevel",
        "error",
        "-of",
        "json",
        "-show_entries",
        "format=duration:stream=codec_type,codec_name",
        url,
    ]
    .map(String::from)
    .to_vec()
}

/// What ffprobe says about an uploaded output.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputInfo {
    pub duration: Option<f64>,
    /// `(codec_type, codec_name)` of each stream.
    pub streams: Vec<(String, String)>,
}

impl OutputInfo {
    /// Reads `ffprobe -of json -show_entries format=duration:stream=codec_type,codec_name`.
    pub fn from_ffprobe_json(json: &str) -> Result<OutputInfo, String> {
        let probe: ProbeJson = serde_json::from_str(json)
            .map_err(|err| format!("unexpected ffprobe output: {err}"))?;
        Ok(OutputInfo {
            duration: probe
                .format
                .and_then(|f| f.duration)
                .and_then(|d| d.parse().ok()),
            streams: probe
                .streams
                .into_iter()
                .filter_map(|s| Some((s.codec_type?, s.codec_name?)))
                .collect(),
        })
    }
}

/// Largest difference between the output's duration and the input's that verification accepts.
pub const DURATION_TOLERANCE_SECONDS: f64 = 1.0;

/// Checks an output against its plan and the input's duration; returns the output's duration or
/// what is wrong.
pub fn verify_output(
    info: &OutputInfo,
    expected: &[(&'static str, String)],
    input_duration: f64,
) -> Result<f64, String> {
    let duration = info
        .duration
        .ok_or_else(|| "ffprobe reports no duration".to_owned())?;
    if duration.is_nan() || duration <= 0.0 {
        return Err(format!("ffprobe reports a duration of {duration} s"));
    }
    if (duration - input_duration).abs() > DURATION_TOLERANCE_SECONDS {
        return Err(format!(
            "it lasts {duration:.3} s but the recording lasts {input_duration:.3} s"
        ));
    }
    for (kind, codec) in expected {
        if !info.streams.iter().any(|(k, c)| k == kind && c == codec) {
            return Err(format!(
                "it has no {kind} stream in {codec} (streams: {:?})",
                info.streams
            ));
        }
    }
    Ok(duration)
}

/// One line of ffmpeg's log (`-loglevel level+…`): `[ctx @ 0x…] [level] message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLine<'a> {
    /// The component that logged (`matroska,webm`, `vp8`, `libx264`), if any.
    pub context: Option<&'a str>,
    /// `error`, `warning`, …; `None` for continuation lines.
    pub level: Option<&'a str>,
    pub message: &'a str,
}

const LEVELS: [&str; 8] = [
    "panic", "fatal", "error", "warning", "info", "verbose", "debug", "trace",
];

/// Splits a log line into its parts.
pub fn parse_log_line(line: &str) -> LogLine<'_> {
    let mut rest = line.trim_end();
    let mut context = None;
    if let Some(inner) = rest.strip_prefix('[')
        && let Some(close) = inner.find(']')
        && let Some((name, _address)) = inner[..close].split_once(" @ ")
    {
        context = Some(name);
        rest = inner[close + 1..].trim_start();
    }
    let mut level = None;
    if let Some(inner) = rest.strip_prefix('[')
        && let Some(close) = inner.find(']')
        && LEVELS.contains(&&inner[..close])
    {
        level = Some(&inner[..close]);
        rest = inner[close + 1..].trim_start();
    }
    LogLine {
        context,
        level,
        message: rest,
    }
}

/// What a log line means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Reading the recording failed: a chunk is corrupt. Bad input.
    InputError,
    /// Another error (encoder, muxer, output file).
    Error,
    /// Worth logging, nothing more.
    Note,
}

/// Classifies a log line of an ffmpeg or ffprobe reading the recording from stdin.
///
/// Demuxer and decoder errors mean a chunk is unreadable, even though ffmpeg itself carries on
/// past them (it resynchronises at the next cluster and exits 0 with a damaged output). One is
/// tolerated: "File ended prematurely", the last frame cut short when a recording stopped
/// abruptly, which loses a frame and nothing else.
pub fn classify(line: &LogLine<'_>, input_contexts: &[String]) -> Verdict {
    if !matches!(line.level, Some("error" | "fatal" | "panic")) {
        return Verdict::Note;
    }
    if line.message.contains("File ended prematurely") {
        return Verdict::Note;
    }
    let from_input = match line.context {
        Some(context) => input_contexts.iter().any(|c| c == context),
        None => {
            line.message.starts_with("pipe:")
                || line.message.starts_with("Error while decoding")
                || line
                    .message
                    .contains("Invalid data found when processing input")
        }
    };
    if from_input {
        Verdict::InputError
    } else {
        Verdict::Error
    }
}

/// The byte position in the input that a demuxer message names, if any, in the forms ffmpeg's
/// Matroska demuxer words them: `at pos 751942 (0xb7946)`, `Unknown element … at pos. 0x6a489
/// … Last known good position 0x60879` (where the unknown data is, not the last good one),
/// `Element at 0xba175 ending at …`. The first position in the message is the one meant.
pub fn byte_position(message: &str) -> Option<u64> {
    const FORMS: [(&str, u32); 4] = [("pos. 0x", 16), ("pos 0x", 16), ("pos ", 10), ("at 0x", 16)];
    FORMS
        .iter()
        .filter_map(|&(marker, radix)| {
            let index = message.find(marker)?;
            let digits: String = message[index + marker.len()..]
                .chars()
                .take_while(|c| c.is_digit(radix))
                .collect();
            Some((index, u64::from_str_radix(&digits, radix).ok()?))
        })
        .min_by_key(|&(index, _)| index)
        .map(|(_, position)| position)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn encode() -> EncodeSettings {
        EncodeSettings {
            video_preset: "veryfast".into(),
            video_crf: 23,
            audio_bitrate: "128k".into(),
        }
    }

    fn streams(video: Option<&str>, audio: Option<&str>) -> InputStreams {
        InputStreams {
            video: video.map(String::from),
            audio: audio.map(String::from),
        }
    }

    fn plan(profile: Profile, input: &InputStreams) -> OutputPlan {
        output_plan(
            profile,
            input,
            &encode(),
            &PathBuf::from("/scratch/alice.out"),
        )
        .expect("plannable")
    }

    fn joined(plan: &OutputPlan) -> String {
        plan.args.join(" ")
    }

    #[test]
    fn every_plan_reads_stdin_and_writes_the_scratch_file() {
        for profile in [Profile::Mp4, Profile::Webm, Profile::Audio] {
            let plan = plan(profile, &streams(Some("vp8"), Some("opus")));
            let args = joined(&plan);
            assert!(args.contains("-i pipe:0"), "{args}");
            assert!(args.ends_with("-y /scratch/alice.out"), "{args}");
            assert!(!args.contains("-copyts"), "outputs must start at 0: {args}");
        }
    }

    #[test]
    fn a_plan_can_read_a_file_instead_of_stdin() {
        let plan = plan(Profile::Mp4, &streams(Some("h264"), Some("opus")));
        let args = plan.args_reading(Path::new("/tmp/whole.webm")).join(" ");
        assert!(args.contains("-i /tmp/whole.webm "), "{args}");
        assert!(!args.contains("pipe:0"), "{args}");
        assert_eq!(
            args.replace("/tmp/whole.webm", "pipe:0"),
            joined(&plan),
            "nothing else changes"
        );
    }

    #[test]
    fn mp4_from_vp8_encodes_h264_with_variable_frame_rate_and_fast_start() {
        let plan = plan(Profile::Mp4, &streams(Some("vp8"), Some("opus")));
        let args = joined(&plan);
        for needle in [
            "-map 0:v:0",
            "-map 0:a:0",
            "-c:v libx264 -preset veryfast -crf 23",
            "format=yuv420p",
            "-fps_mode vfr",
            "-c:a aac -b:a 128k",
            "aresample=async=1:first_pts=0",
            "-movflags +faststart -f mp4",
        ] {
            assert!(args.contains(needle), "{needle} missing from {args}");
        }
        assert!(!plan.copies_video);
        assert!(!plan.upload_while_writing, "faststart rewrites the file");
        assert_eq!(plan.content_type, "video/mp4");
        assert_eq!(
            plan.expected,
            vec![("video", "h264".to_owned()), ("audio", "aac".to_owned())]
        );
    }

    #[test]
    fn mp4_from_h264_copies_the_video_and_converts_only_the_audio() {
        let plan = plan(Profile::Mp4, &streams(Some("h264"), Some("opus")));
        let args = joined(&plan);
        assert!(args.contains("-c:v copy"), "{args}");
        assert!(!args.contains("libx264"), "{args}");
        assert!(args.contains("-c:a aac"), "{args}");
        assert!(plan.copies_video);
    }

    #[test]
    fn webm_copies_streams_and_uploads_while_writing() {
        let plan = plan(Profile::Webm, &streams(Some("vp9"), Some("opus")));
        let args = joined(&plan);
        assert!(args.contains("-c copy -f webm"), "{args}");
        assert!(!args.contains("libx264") && !args.contains("aac"), "{args}");
        assert!(plan.upload_while_writing);
        assert_eq!(
            plan.expected,
            vec![("video", "vp9".to_owned()), ("audio", "opus".to_owned())]
        );

        let h264 = plan_for_h264_webm();
        assert!(
            joined(&h264).contains("-c copy -f matroska"),
            "{}",
            joined(&h264)
        );
    }

    fn plan_for_h264_webm() -> OutputPlan {
        plan(Profile::Webm, &streams(Some("h264"), Some("opus")))
    }

    #[test]
    fn audio_drops_video_and_needs_audio() {
        let plan = plan(Profile::Audio, &streams(Some("vp8"), Some("opus")));
        let args = joined(&plan);
        assert!(args.contains("-map 0:a:0 -vn"), "{args}");
        assert!(!args.contains("0:v"), "{args}");
        assert_eq!(plan.content_type, "audio/mp4");
        assert_eq!(plan.expected, vec![("audio", "aac".to_owned())]);

        let error = output_plan(
            Profile::Audio,
            &streams(Some("vp8"), None),
            &encode(),
            &PathBuf::from("x"),
        )
        .expect_err("no audio");
        assert!(error.contains("no audio"), "{error}");
    }

    #[test]
    fn missing_streams_are_not_mapped() {
        let video_only = plan(Profile::Mp4, &streams(Some("vp8"), None));
        assert!(!joined(&video_only).contains("0:a"));
        assert_eq!(video_only.expected, vec![("video", "h264".to_owned())]);
        let audio_only = plan(Profile::Mp4, &streams(None, Some("opus")));
        assert!(!joined(&audio_only).contains("0:v"));
        assert!(
            output_plan(
                Profile::Webm,
                &InputStreams::default(),
                &encode(),
                &PathBuf::from("x")
            )
            .is_err()
        );
    }

    #[test]
    fn reads_input_streams_from_ffprobe() {
        let json = r#"{"programs":[],"streams":[{"codec_name":"vp8","codec_type":"video"},{"codec_name":"opus","codec_type":"audio"}]}"#;
        let input = InputStreams::from_ffprobe_json(json).expect("parses");
        assert_eq!(input, streams(Some("vp8"), Some("opus")));
        assert_eq!(input.log_contexts(), ["matroska,webm", "vp8", "opus"]);
        assert!(InputStreams::from_ffprobe_json("garbage").is_err());
    }

    #[test]
    fn verifies_duration_and_streams() {
        let json = r#"{"streams":[{"codec_type":"video","codec_name":"h264"},{"codec_type":"audio","codec_name":"aac"}],"format":{"duration":"30.007000"}}"#;
        let info = OutputInfo::from_ffprobe_json(json).expect("parses");
        let expected = vec![("video", "h264".to_owned()), ("audio", "aac".to_owned())];
        assert_eq!(verify_output(&info, &expected, 30.02), Ok(30.007));
        let short = verify_output(&info, &expected, 32.0).expect_err("too short");
        assert!(
            short.contains("lasts 30.007 s but the recording lasts 32.000 s"),
            "{short}"
        );
        let wrong = verify_output(&info, &[("video", "vp8".to_owned())], 30.0).expect_err("codec");
        assert!(wrong.contains("no video stream in vp8"), "{wrong}");

        let none = OutputInfo::from_ffprobe_json(r#"{"format":{}}"#).expect("parses");
        assert!(verify_output(&none, &[], 1.0).is_err());
        let zero =
            OutputInfo::from_ffprobe_json(r#"{"format":{"duration":"0.000"}}"#).expect("parses");
        assert!(verify_output(&zero, &[], 0.0).is_err());
    }

    #[test]
    fn parses_log_lines() {
        assert_eq!(
            parse_log_line("[matroska,webm @ 0x55adcc14da80] [error] Element at 0xba175 ending"),
            LogLine {
                context: Some("matroska,webm"),
                level: Some("error"),
                message: "Element at 0xba175 ending"
            }
        );
        assert_eq!(
            parse_log_line("[error] pipe:0: Invalid data found when processing input\n"),
            LogLine {
                context: None,
                level: Some("error"),
                message: "pipe:0: Invalid data found when processing input"
            }
        );
        assert_eq!(
            parse_log_line("To ignore this, add a trailing '?' to the map."),
            LogLine {
                context: None,
                level: None,
                message: "To ignore this, add a trailing '?' to the map."
            }
        );
        assert_eq!(
            parse_log_line("[libx264 @ 0x1] [warning] x").context,
            Some("libx264")
        );
    }

    #[test]
    fn classifies_input_errors_apart_from_other_errors() {
        let input = streams(Some("vp8"), Some("opus")).log_contexts();
        let cases = [
            (
                "[matroska,webm @ 0x1] [error] 0x00 at pos 751942 (0xb7946) invalid as first byte of an EBML number",
                Verdict::InputError,
            ),
            (
                "[vp8 @ 0x1] [error] Discarding interframe without a prior keyframe!",
                Verdict::InputError,
            ),
            (
                "[opus @ 0x1] [error] Error parsing Opus packet header.",
                Verdict::InputError,
            ),
            (
                "[error] pipe:0: Invalid data found when processing input",
                Verdict::InputError,
            ),
            (
                "[error] Error while decoding stream #0:0: Invalid data found when processing input",
                Verdict::InputError,
            ),
            (
                "[matroska,webm @ 0x1] [error] File ended prematurely",
                Verdict::Note,
            ),
            (
                "[matroska,webm @ 0x1] [warning] Unknown element",
                Verdict::Note,
            ),
            (
                "[libx264 @ 0x1] [error] malloc of size 100 failed",
                Verdict::Error,
            ),
            ("[mp4 @ 0x1] [error] muxer failed", Verdict::Error),
            (
                "[fatal] Stream map '0:s:0' matches no streams.",
                Verdict::Error,
            ),
            (
                "[error] /scratch/x.mp4: No space left on device",
                Verdict::Error,
            ),
        ];
        for (line, verdict) in cases {
            assert_eq!(classify(&parse_log_line(line), &input), verdict, "{line}");
        }
    }

    #[test]
    fn finds_byte_positions_in_demuxer_messages() {
        assert_eq!(
            byte_position("0x00 at pos 751942 (0xb7946) invalid"),
            Some(751_942)
        );
        assert_eq!(
            byte_position(
                "Element at 0xba175 ending at 0xb1ccf43 exceeds containing master element ending at 0xbe280"
            ),
            Some(0xba175)
        );
        assert_eq!(
            byte_position(
                "Length 5 indicated by an EBML number's first byte 0x0f at pos 752059 (0xb79bb) exceeds max length 4."
            ),
            Some(752_059)
        );
        assert_eq!(
            byte_position(
                "Unknown element 14B4AB5B at pos. 0x6a489 with length 0x20bc71c2b considered as invalid data. Last known good position 0x60879, 14 unknown elements in a row"
            ),
            Some(0x6a489)
        );
        assert_eq!(
            byte_position(
                "Length 6 indicated by an EBML number's first byte 0x05 at pos 415237 (0x65605) exceeds max length 4."
            ),
            Some(415_237)
        );
        assert_eq!(byte_position("Error parsing Opus packet header."), None);
    }
}
