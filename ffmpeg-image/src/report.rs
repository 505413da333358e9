//! The report on the termination message path: compact JSON that always parses.
//!
//! Kubernetes keeps at most 4096 bytes of a termination message and cuts the rest, which would
//! leave JSON that no longer parses. So the report is made to fit: durations are rounded to the
//! millisecond, a failure message is shortened, and if many long keys still do not fit, the
//! outputs that do are kept (the log has them all). Sealed tracks' outputs go first: an unsealed
//! track's output is the only place that says its file may be short and which chunks were kept
//! in storage, while a sealed track's key follows from the spec.
//!
//! The mixdown's output is first in the list and never left out: it is the one file of the
//! recording that holds everyone. Why a mixdown could not be made (`mixdownFailure`) is
//! shortened to [`MIXDOWN_FAILURE_BYTES`] first, and further only if nothing else fits.

use std::path::Path;

use mixdown_crds::WorkerReport;

/// Largest termination message Kubernetes keeps.
pub const MAX_BYTES: usize = 4096;
/// What `mixdownFailure.message` may take before track outputs have to make room for it.
pub const MIXDOWN_FAILURE_BYTES: usize = 1024;

/// The report as JSON of at most [`MAX_BYTES`] bytes.
pub fn render(report: &WorkerReport) -> String {
    let mut report = report.clone();
    match &mut report {
        WorkerReport::Succeeded {
            outputs,
            mixdown_failure,
        } => {
            for output in outputs.iter_mut() {
                output.duration_seconds = (output.duration_seconds * 1000.0).round() / 1000.0;
            }
            // The mixdown first (a stable sort keeps the tracks in the job's order).
            outputs.sort_by_key(|o| !o.is_mixdown());
            if let Some(failure) = mixdown_failure {
                shorten(&mut failure.message, MIXDOWN_FAILURE_BYTES);
            }
            while to_json(&report).len() > MAX_BYTES {
                let WorkerReport::Succeeded { outputs, .. } = &mut report else {
                    unreachable!()
                };
                let tracks = |o: &mixdown_crds::RecordingOutput| !o.is_mixdown();
                let last_sealed = outputs.iter().rposition(|o| tracks(o) && o.sealed);
                let Some(index) = last_sealed.or_else(|| outputs.iter().rposition(tracks)) else {
                    break;
                };
                let dropped = outputs.remove(index);
                tracing::warn!(key = %dropped.key, "output left out of the termination message, which holds 4096 bytes");
            }
            // Only the mixdown is left, and still too much: its failure's message gives way.
            let size = to_json(&report).len();
            if size > MAX_BYTES
                && let WorkerReport::Succeeded {
                    mixdown_failure: Some(failure),
                    ..
                } = &mut report
            {
                let budget = escaped_len(&failure.message).saturating_sub(size - MAX_BYTES);
                shorten(&mut failure.message, budget);
            }
        }
        WorkerReport::Failed { reason, message } => {
            let overhead = to_json(&WorkerReport::Failed {
                reason: reason.clone(),
                message: String::new(),
            })
            .len();
            shorten(message, MAX_BYTES.saturating_sub(overhead));
        }
    }
    to_json(&report)
}

/// Cuts `message` so that it takes at most `budget` bytes inside a JSON string, `…` included.
fn shorten(message: &mut String, budget: usize) {
    if escaped_len(message) <= budget {
        return;
    }
    let budget = budget.saturating_sub('…'.len_utf8());
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

    fn mixdown(key_len: usize) -> RecordingOutput {
        RecordingOutput {
            kind: mixdown_crds::OutputKind::Mixdown,
            participant_id: String::new(),
            key: format!("{}/mixdown.mp4", "k".repeat(key_len)),
            size_bytes: 987_654_321,
            duration_seconds: 1_803.000_4,
            sealed: true,
            chunks: None,
            left_out: None,
        }
    }

    #[test]
    fn the_mixdown_goes_first_and_is_never_left_out() {
        let mut outputs: Vec<RecordingOutput> = (0..32).map(|i| output(i, 300)).collect();
        outputs.push(mixdown(300));
        let json = render(&WorkerReport::Succeeded {
            mixdown_failure: None,
            outputs,
        });
        assert!(json.len() <= MAX_BYTES, "{}", json.len());
        let kept = parsed_outputs(&json);
        assert!(kept.len() > 1 && kept.len() < 33, "{}", kept.len());
        let mut expected = mixdown(300);
        expected.duration_seconds = 1803.0;
        assert_eq!(kept[0], expected);
        assert!(kept[1..].iter().all(|o| !o.is_mixdown()));
        assert!(json.contains(r#""kind":"mixdown""#), "{json}");
    }

    #[test]
    fn a_mixdown_failure_is_shortened_and_the_tracks_are_kept() {
        for filler in ["x", "\"", "é"] {
            let report = WorkerReport::Succeeded {
                outputs: (0..2).map(|i| output(i, 40)).collect(),
                mixdown_failure: Some(mixdown_crds::Failure {
                    reason: "MixdownFailed".into(),
                    message: filler.repeat(10_000),
                }),
            };
            let json = render(&report);
            assert!(json.len() <= MAX_BYTES, "{filler}: {}", json.len());
            let parsed: WorkerReport = serde_json::from_str(&json).expect("parses");
            let WorkerReport::Succeeded {
                outputs,
                mixdown_failure: Some(failure),
            } = parsed
            else {
                panic!("{json}")
            };
            assert_eq!(outputs.len(), 2, "both tracks are kept");
            assert_eq!(failure.reason, "MixdownFailed");
            assert!(failure.message.ends_with('…'));
            assert!(escaped_len(&failure.message) <= MIXDOWN_FAILURE_BYTES);
            assert!(failure.message.len() > 300, "{filler}");
        }
        // Many long tracks and a long failure: the failure still says something.
        let report = WorkerReport::Succeeded {
            outputs: (0..32).map(|i| output(i, 300)).collect(),
            mixdown_failure: Some(mixdown_crds::Failure {
                reason: "MixdownFailed".into(),
                message: "y".repeat(10_000),
            }),
        };
        let json = render(&report);
        assert!(json.len() <= MAX_BYTES, "{}", json.len());
        assert!(json.contains("MixdownFailed"), "{json}");
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
