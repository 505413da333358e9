//! The report on the termination message path: compact JSON that always parses.
//!
//! Kubernetes keeps at most 4096 bytes of a termination message and cuts the rest, which would
//! leave JSON that no longer parses. So the report is made to fit: durations are rounded to the
//! millisecond, a failure message is shortened, and if many long keys still do not fit, the
//! outputs that do are kept (the log has them all). Sealed tracks' outputs go first: an unsealed
//! track's output is the only place that says its file may be short and which chunks were kept
//! in storage, while a sealed track's key follows from the spec.

use std::path::Path;

use mixdown_crds::WorkerReport;

/// Largest termination message Kubernetes keeps.
pub const MAX_BYTES: usize = 4096;

/// The report as JSON of at most [`MAX_BYTES`] bytes.
pub fn render(report: &WorkerReport) -> String {
    let mut report = report.clone();
    match &mut report {
        WorkerReport::Succeeded { outputs, .. } => {
            for output in outputs.iter_mut() {
                output.duration_seconds = (output.duration_seconds * 1000.0).round() / 1000.0;
            }
            while to_json(&report).len() > MAX_BYTES {
                let WorkerReport::Succeeded { outputs, .. } = &mut report else {
                    unreachable!()
                };
                let last_sealed = outputs.iter().rposition(|o| o.sealed);
                let Some(index) = last_sealed.or(outputs.len().checked_sub(1)) else {
                    break;
                };
                let dropped = outputs.remove(index);
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

/// Writes the rendered report to `path`. A failure (a directory that does not exist) is logged,
/// not fatal: the report is on stdout too. By hand and outside a Pod, no path is given and
/// nothing is written (`config::report_path`).
pub fn write(path: &Path, json: &str) {
    if let Err(err) = std::fs::write(path, json) {
        tracing::warn!(path = %path.display(), error = %err, "cannot write the termination message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixdown_crds::{LeftOut, RecordingOutput};

    /// Output `i`; every other one is of an unsealed track with chunks left out, the largest
    /// shape an output has.
    fn output(i: usize, key_len: usize) -> RecordingOutput {
        let sealed = i.is_multiple_of(2);
        RecordingOutput {
            kind: Default::default(),
            participant_id: format!("participant-{i}"),
            key: format!("{}/{i}.mp4", "k".repeat(key_len)),
            size_bytes: 123_456_789,
            duration_seconds: 1_799.123_456_7,
            sealed,
            chunks: Some(if sealed { 1_800 } else { 999_999 }),
            left_out: (!sealed).then_some(LeftOut {
                missing_chunk: 999_999,
                chunks_kept: 999_999,
            }),
        }
    }

    fn parsed_outputs(json: &str) -> Vec<RecordingOutput> {
        match serde_json::from_str(json).expect("parses") {
            WorkerReport::Succeeded { outputs, .. } => outputs,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn small_reports_are_kept_whole_with_rounded_durations() {
        let report = WorkerReport::Succeeded {
            mixdown_failure: None,
            outputs: vec![output(1, 40)],
        };
        let json = render(&report);
        let outputs = parsed_outputs(&json);
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].duration_seconds, 1799.123);
        assert!(!outputs[0].sealed, "{json}");
        assert_eq!(outputs[0].chunks, Some(999_999));
        assert_eq!(outputs[0].left_out, output(1, 40).left_out);
    }

    #[test]
    fn many_long_outputs_are_cut_to_fit_and_still_parse() {
        let report = WorkerReport::Succeeded {
            mixdown_failure: None,
            outputs: (0..32).map(|i| output(i, 300)).collect(),
        };
        let json = render(&report);
        assert!(json.len() <= MAX_BYTES, "{}", json.len());
        let outputs = parsed_outputs(&json);
        assert!(!outputs.is_empty() && outputs.len() < 32);
        // The outputs kept are whole, every field as given (durations rounded), in order; the
        // unsealed tracks' (the odd ones) are kept before any sealed one.
        let mut previous = None;
        for kept in &outputs {
            let i: usize = kept.participant_id["participant-".len()..]
                .parse()
                .expect("index");
            let mut given = output(i, 300);
            given.duration_seconds = 1799.123;
            assert_eq!(*kept, given);
            assert!(previous < Some(i), "out of order: {json}");
            previous = Some(i);
        }
        let unsealed = outputs.iter().filter(|o| !o.sealed).count();
        assert!(
            unsealed == 16 || outputs.iter().all(|o| !o.sealed),
            "a sealed output was kept while an unsealed one was dropped: {json}"
        );
    }

    #[test]
    fn unsealed_outputs_are_the_last_to_be_left_out() {
        // Sealed outputs 0 to 29, two unsealed ones at the end: the cut takes sealed ones.
        let outputs: Vec<RecordingOutput> = (0..32)
            .map(|i| {
                let mut output = output(i, 200);
                output.duration_seconds = 1.5;
                if i < 30 {
                    output.sealed = true;
                    output.left_out = None;
                } else {
                    output.sealed = false;
                }
                output
            })
            .collect();
        let json = render(&WorkerReport::Succeeded {
            mixdown_failure: None,
            outputs: outputs.clone(),
        });
        assert!(json.len() <= MAX_BYTES, "{}", json.len());
        let kept = parsed_outputs(&json);
        assert!(kept.len() > 2 && kept.len() < 32, "{}", kept.len());
        let sealed = kept.len() - 2;
        assert_eq!(kept[..sealed], outputs[..sealed]);
        assert_eq!(kept[sealed..], outputs[30..]);
    }

    #[test]
    fn thirty_two_tracks_with_the_longest_ids_fit_as_far_as_they_can() {
        // Ids of 64 characters, the most the schema allows, in DESIGN.md's output layout; all
        // sealed, then all unsealed with chunks left out (the largest an output gets).
        let id = |c: char, i: usize| format!("{}{i:02}", c.to_string().repeat(62));
        for sealed in [true, false] {
            let outputs: Vec<RecordingOutput> = (0..32)
                .map(|i| {
                    let mut output = output(if sealed { 0 } else { 1 }, 0);
                    output.duration_seconds = 1799.5;
                    output.participant_id = id('p', i);
                    output.key = format!(
                        "riverside/processed/{}/{}/{}.mp4",
                        id('r', 0),
                        id('c', 0),
                        output.participant_id
                    );
                    output
                })
                .collect();
            let json = render(&WorkerReport::Succeeded {
                mixdown_failure: None,
                outputs: outputs.clone(),
            });
            assert!(json.len() <= MAX_BYTES, "{}", json.len());
            let kept = parsed_outputs(&json);
            assert!(kept.len() >= 8, "sealed {sealed}: only {} fit", kept.len());
            assert_eq!(kept[..], outputs[..kept.len()], "sealed {sealed}");
            // As many as fit: one more would not.
            let one_more = to_json(&WorkerReport::Succeeded {
                mixdown_failure: None,
                outputs: outputs[..=kept.len()].to_vec(),
            });
            assert!(one_more.len() > MAX_BYTES, "{}", one_more.len());
        }
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
