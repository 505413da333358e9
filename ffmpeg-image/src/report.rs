//! The report on the termination message path: compact JSON that always parses.
//!
//! Kubernetes keeps at most 4096 bytes of a termination message and cuts the rest, which would
//! leave JSON that no longer parses. So the report is made to fit: durations are rounded to the
//! millisecond, a failure message is shortened, and if many long keys still do not fit, the
//! outputs that do are kept (the log has them all).

use std::path::Path;

use mixdown_crds::WorkerReport;

/// Largest termination message Kubernetes keeps.
pub const MAX_BYTES: usize = 4096;

/// The report as JSON of at most [`MAX_BYTES`] bytes.
pub fn render(report: &WorkerReport) -> String {
    let mut report = report.clone();
    match &mut report {
        WorkerReport::Succeeded { outputs } => {
            for output in outputs.iter_mut() {
                output.duration_seconds = (output.duration_seconds * 1000.0).round() / 1000.0;
            }
            while to_json(&report).len() > MAX_BYTES {
                let WorkerReport::Succeeded { outputs } = &mut report else {
                    unreachable!()
                };
                let Some(dropped) = outputs.pop() else { break };
                tracing::warn!(key = %dropped.key, "output left out of the termination message, which holds 4096 bytes");
            }
        }
        WorkerReport::Failed { reason, message } => {
            let overhead = to_json(&WorkerReport::Failed {
                reason: reason.clone(),
                message: String::new(),
            })
            .len();
            if overhead + escaped_len(message) > MAX_BYTES {
                let budget = MAX_BYTES.saturating_sub(overhead + '…'.len_utf8());
                let mut used = 0;
                let cut = message
                    .char_indices()
                    .find(|&(_, c)| {
                        used += escaped_char_len(c);
                        used > budget
                    })
                    .map_or(message.len(), |(index, _)| index);
                message.truncate(cut);
                message.push('…');
            }
        }
    }
    to_json(&report)
}

/// Bytes `c` takes inside a JSON string, as serde_json writes it.
fn escaped_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if c < ' ' => 6,
        c => c.len_utf8(),
    }
}

fn escaped_len(s: &str) -> usize {
    s.chars().map(escaped_char_len).sum()
}

fn to_json(report: &WorkerReport) -> String {
    serde_json::to_string(report).expect("a WorkerReport always serializes")
}

/// Writes the rendered report to `path`. A missing directory (running by hand without
/// `/dev/termination-log`) is logged, not fatal: the report is on stdout too.
pub fn write(path: &Path, json: &str) {
    if let Err(err) = std::fs::write(path, json) {
        tracing::warn!(path = %path.display(), error = %err, "cannot write the termination message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixdown_crds::RecordingOutput;

    fn output(i: usize, key_len: usize) -> RecordingOutput {
        RecordingOutput {
            participant_id: format!("participant-{i}"),
            key: format!("{}/{i}.mp4", "k".repeat(key_len)),
            size_bytes: 123_456_789,
            duration_seconds: 1_799.123_456_7,
        }
    }

    #[test]
    fn small_reports_are_kept_whole_with_rounded_durations() {
        let report = WorkerReport::Succeeded {
            outputs: vec![output(1, 40)],
        };
        let json = render(&report);
        let parsed: WorkerReport = serde_json::from_str(&json).expect("parses");
        let WorkerReport::Succeeded { outputs } = parsed else {
            panic!("{json}")
        };
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].duration_seconds, 1799.123);
    }

    #[test]
    fn many_long_outputs_are_cut_to_fit_and_still_parse() {
        let report = WorkerReport::Succeeded {
            outputs: (0..32).map(|i| output(i, 300)).collect(),
        };
        let json = render(&report);
        assert!(json.len() <= MAX_BYTES, "{}", json.len());
        let parsed: WorkerReport = serde_json::from_str(&json).expect("parses");
        let WorkerReport::Succeeded { outputs } = parsed else {
            panic!()
        };
        assert!(!outputs.is_empty() && outputs.len() < 32);
        assert_eq!(outputs[0].participant_id, "participant-0");
    }

    #[test]
    fn long_failure_messages_are_shortened_to_fit() {
        for filler in ["x", "\"", "é", "\u{1}"] {
            let report = WorkerReport::Failed {
                reason: "FfmpegFailed".into(),
                message: filler.repeat(10_000),
            };
            let json = render(&report);
            assert!(json.len() <= MAX_BYTES, "{filler}: {}", json.len());
            let parsed: WorkerReport = serde_json::from_str(&json).expect("parses");
            let WorkerReport::Failed { reason, message } = parsed else {
                panic!()
            };
            assert_eq!(reason, "FfmpegFailed");
            assert!(message.ends_with('…'));
            assert!(message.len() > 500, "{filler}: kept only {}", message.len());
        }
    }
}
