//! From a listing of a track's chunk prefix to the ordered chunks to feed ffmpeg, or a clear
//! reason why the recording cannot be processed. Pure: no storage, no clock.
//!
//! Chunks are named `{seq}.webm`, normally `{seq:08}.webm`, starting at 0. They are ordered by the
//! number, not by the key, so `10.webm` follows `9.webm` whatever the padding. Only chunk 0 holds
//! the WebM header, so a missing first chunk is always fatal. A gap is fatal in a sealed track
//! (its uploader said how many chunks there are); an unsealed track (the upload timeout passed
//! first) is processed up to its first gap, and the chunks after it are kept.

use mixdown_crds::LeftOut;

use crate::error::WorkerError;

/// One object found under a track's prefix, as the listing gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

/// One chunk to download and feed, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub seq: u64,
    /// Full object key.
    pub key: String,
    /// Object name below the prefix, e.g. `00000012.webm`; what messages call the chunk.
    pub name: String,
    pub size: u64,
    /// Where the chunk starts in the concatenated input ffmpeg reads.
    pub offset: u64,
}

/// The canonical name of chunk `seq`, for chunks that are not there to be named by their key.
pub fn canonical_name(seq: u64) -> String {
    format!("{seq:08}.webm")
}

/// `prefix` as a directory: with exactly one trailing `/`, or empty.
pub fn dir_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// The sequence number of a chunk object name (`00000012.webm` → 12), or `None` when the name
/// is not a chunk's.
pub fn parse_seq(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".webm")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A track's chunks, checked: what to feed ffmpeg, in order, and what an unsealed track leaves
/// out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackChunks {
    /// The chunks to feed, in order, with their offsets. These are the chunks in the file, and
    /// the only ones deleted once every output is verified.
    pub chunks: Vec<Chunk>,
    /// For an unsealed track, the chunks storage held after its run: never fed, never deleted.
    /// `None` for a sealed track, and for an unsealed one whose run is everything storage held.
    pub left_out: Option<LeftOut>,
}

/// Orders the chunks of one track and decides which of them make its file.
///
/// `prefix` must be a [`dir_prefix`]; objects that are not `{prefix}{digits}.webm` are ignored
/// (they are not chunks). Storage holding no chunk at all is [`WorkerError::NoChunks`], sealed or
/// not.
///
/// `expected` is the track's `chunkCount`:
/// - `Some(n)`, a sealed track: the uploader said it is done, so storage must hold exactly chunks
///   0 to n-1, none empty. Fails on two chunks with one sequence number, a missing chunk 0, a
///   gap, a count other than `n`, an empty chunk.
/// - `None`, an unsealed track: the upload timeout passed before the uploader said it was done,
///   and the later chunks may never come. The file is the contiguous run from chunk 0: chunks 0,
///   1, 2, … up to the first number that is missing or whose object is empty (an empty object
///   carries no media, and the recording cannot go on past a hole). The chunks after it are
///   counted in [`TrackChunks::left_out`] and kept, for someone to look at. Fails when chunk 0 is
///   missing or empty (it holds the recording's header, so there is no file to make), and on two
///   objects with one sequence number anywhere the run reaches, empty or not: which one is the
///   chunk cannot be told. Two objects with one number after the run are only counted.
///
/// A run holds at most `u32::MAX` chunks (`chunks` and `missingChunk` are `u32`): an object
/// numbered `u32::MAX` or above is never in a run and counts as left out. No recording gets
/// there (one-second chunks for 136 years); the limit only keeps odd listings from panicking.
pub fn plan(
    participant: &str,
    prefix: &str,
    listed: impl IntoIterator<Item = Listed>,
    expected: Option<u32>,
) -> Result<TrackChunks, WorkerError> {
    let mut chunks: Vec<Chunk> = listed
        .into_iter()
        .filter_map(|object| {
            let name = object.key.strip_prefix(prefix)?.to_owned();
            let seq = parse_seq(&name)?;
            Some(Chunk {
                seq,
                key: object.key,
                name,
                size: object.size,
                offset: 0,
            })
        })
        .collect();
    chunks.sort_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.name.cmp(&b.name)));

    if chunks.is_empty() {
        return Err(WorkerError::NoChunks {
            participant: participant.to_owned(),
            prefix: prefix.to_owned(),
        });
    }
    let left_out = match expected {
        Some(expected) => {
            check_sealed(participant, &chunks, expected)?;
            None
        }
        None => {
            let (run, left_out) = contiguous_run(participant, &chunks)?;
            chunks.truncate(run);
            left_out
        }
    };

    let mut offset: u64 = 0;
    for chunk in &mut chunks {
        chunk.offset = offset;
        offset = offset.saturating_add(chunk.size);
    }
    Ok(TrackChunks { chunks, left_out })
}

/// A sealed track's chunks (sorted, at least one) against the count its uploader sealed it with.
fn check_sealed(participant: &str, chunks: &[Chunk], expected: u32) -> Result<(), WorkerError> {
    if let Some(pair) = chunks.windows(2).find(|pair| pair[0].seq == pair[1].seq) {
        return Err(duplicate(participant, &pair[0], &pair[1]));
    }
    if chunks[0].seq != 0 {
        return Err(WorkerError::MissingChunk {
            participant: participant.to_owned(),
            detail: format!(
                "chunk {} is missing (the first chunk, which holds the recording's header); the first one in storage is {}",
                canonical_name(0),
                chunks[0].name
            ),
        });
    }
    // Sorted without duplicates and starting at 0, so the first chunk off its index is the first
    // one after a gap, and it has a chunk before it.
    if let Some(i) = chunks
        .iter()
        .enumerate()
        .position(|(i, c)| c.seq != i as u64)
    {
        let (first_missing, next_present) = (i as u64, chunks[i].seq);
        let detail = if next_present - first_missing == 1 {
            format!(
                "chunk {} is missing (between {} and {})",
                canonical_name(first_missing),
                chunks[i - 1].name,
                chunks[i].name
            )
        } else {
            format!(
                "chunks {} to {} are missing (between {} and {})",
                canonical_name(first_missing),
                canonical_name(next_present - 1),
                chunks[i - 1].name,
                chunks[i].name
            )
        };
        return Err(WorkerError::MissingChunk {
            participant: participant.to_owned(),
            detail,
        });
    }
    let found = chunks.len() as u64;
    let expected_count = u64::from(expected);
    if found != expected_count {
        let detail = if found < expected_count {
            format!(
                "storage holds {found} chunks ({} to {}) but the client confirmed {expected}: {} is missing",
                chunks[0].name,
                chunks[chunks.len() - 1].name,
                if expected_count - found == 1 {
                    canonical_name(found)
                } else {
                    format!(
                        "{} to {}",
                        canonical_name(found),
                        canonical_name(expected_count - 1)
                    )
                }
            )
        } else {
            format!(
                "storage holds {found} chunks ({} to {}) but the client confirmed {expected}",
                chunks[0].name,
                chunks[chunks.len() - 1].name,
            )
        };
        return Err(WorkerError::ChunkCountMismatch {
            participant: participant.to_owned(),
            detail,
        });
    }
    if let Some(empty) = chunks.iter().find(|c| c.size == 0) {
        return Err(WorkerError::UnreadableChunk {
            participant: participant.to_owned(),
            chunk: empty.name.clone(),
            detail: format!("chunk {} is empty (0 bytes)", empty.name),
        });
    }
    Ok(())
}

/// An unsealed track's run (see [`plan`]) in its chunks (sorted, at least one): how many of the
/// first chunks are in it, and what storage held after it.
fn contiguous_run(
    participant: &str,
    chunks: &[Chunk],
) -> Result<(usize, Option<LeftOut>), WorkerError> {
    // `next` is the number the run needs next and `run` how many chunks it holds so far; the run
    // stops short of u32::MAX, so `next + 1` cannot overflow.
    let (mut run, mut next) = (0usize, 0u32);
    while let Some(chunk) = chunks.get(run) {
        if chunk.seq != u64::from(next) || next == u32::MAX {
            break;
        }
        if let Some(other) = chunks.get(run + 1).filter(|c| c.seq == chunk.seq) {
            return Err(duplicate(participant, chunk, other));
        }
        if chunk.size == 0 {
            break;
        }
        run += 1;
        next += 1;
    }
    if run == 0 {
        let first = &chunks[0];
        let detail = if first.seq == 0 {
            format!(
                "the track was not sealed and its chunk {} is empty (0 bytes); it is the first chunk, which holds the recording's header",
                first.name
            )
        } else {
            format!(
                "the track was not sealed and its chunk {} is missing (the first chunk, which holds the recording's header); the first one in storage is {}",
                canonical_name(0),
                first.name
            )
        };
        return Err(WorkerError::MissingChunk {
            participant: participant.to_owned(),
            detail,
        });
    }
    let kept = chunks.len() - run;
    let left_out = (kept > 0).then(|| LeftOut {
        missing_chunk: next,
        chunks_kept: u32::try_from(kept).unwrap_or(u32::MAX),
    });
    Ok((run, left_out))
}

/// Two objects for one sequence number: which of them is the chunk cannot be told.
fn duplicate(participant: &str, a: &Chunk, b: &Chunk) -> WorkerError {
    WorkerError::ChunkCountMismatch {
        participant: participant.to_owned(),
        detail: format!(
            "two chunks have sequence number {}: {} and {}",
            a.seq, a.name, b.name
        ),
    }
}

/// The chunk holding byte `position` of the concatenated input (the last chunk for positions
/// past the end).
pub fn chunk_at(chunks: &[Chunk], position: u64) -> Option<&Chunk> {
    let index = chunks.partition_point(|c| c.offset <= position);
    chunks.get(index.checked_sub(1)?)
}

/// Total size of the chunks in bytes.
pub fn total_size(chunks: &[Chunk]) -> u64 {
    chunks.iter().fold(0, |sum, c| sum.saturating_add(c.size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixdown_crds::names::reasons;

    const PREFIX: &str = "riverside/chunks/room/rec/alice/";

    fn listed(names: &[&str]) -> Vec<Listed> {
        names
            .iter()
            .map(|name| Listed {
                key: format!("{PREFIX}{name}"),
                size: 100,
            })
            .collect()
    }

    fn seqs(n: u64) -> Vec<String> {
        (0..n).map(canonical_name).collect()
    }

    /// A sealed track's plan: never anything left out.
    fn plan_names(names: &[&str], expected: u32) -> Result<Vec<Chunk>, WorkerError> {
        plan("alice", PREFIX, listed(names), Some(expected)).map(|track| {
            assert_eq!(track.left_out, None, "a sealed track leaves nothing out");
            track.chunks
        })
    }

    #[test]
    fn orders_numerically_whatever_the_padding() {
        let chunks = plan_names(
            &[
                "10.webm",
                "2.webm",
                "00000000.webm",
                "1.webm",
                "3.webm",
                "0004.webm",
                "5.webm",
                "6.webm",
                "7.webm",
                "8.webm",
                "009.webm",
            ],
            11,
        )
        .expect("valid");
        let order: Vec<u64> = chunks.iter().map(|c| c.seq).collect();
        assert_eq!(order, (0..11).collect::<Vec<_>>());
        assert_eq!(chunks[10].name, "10.webm");
        assert_eq!(chunks[10].key, format!("{PREFIX}10.webm"));
        assert_eq!(chunks[3].offset, 300);
        assert_eq!(total_size(&chunks), 1100);
    }

    #[test]
    fn ignores_objects_that_are_not_chunks() {
        let chunks = plan_names(
            &[
                "00000000.webm",
                "00000001.webm",
                "manifest.json",
                "x.webm",
                ".webm",
                "1.webm.tmp",
                "sub/2.webm",
            ],
            2,
        )
        .expect("valid");
        assert_eq!(chunks.len(), 2);
    }

    #[test]
    fn rejects_bad_listings_with_a_message_naming_the_chunk() {
        let cases: Vec<(Vec<String>, u32, &str, &str)> = vec![
            (
                vec![],
                3,
                reasons::NO_CHUNKS,
                "no chunks under riverside/chunks/room/rec/alice/",
            ),
            (
                vec!["00000001.webm".into(), "00000002.webm".into()],
                3,
                reasons::MISSING_CHUNK,
                "chunk 00000000.webm is missing (the first chunk",
            ),
            (
                vec![
                    "00000000.webm".into(),
                    "00000001.webm".into(),
                    "00000003.webm".into(),
                ],
                4,
                reasons::MISSING_CHUNK,
                "chunk 00000002.webm is missing (between 00000001.webm and 00000003.webm)",
            ),
            (
                vec!["00000000.webm".into(), "00000004.webm".into()],
                5,
                reasons::MISSING_CHUNK,
                "chunks 00000001.webm to 00000003.webm are missing",
            ),
            (
                seqs(3),
                4,
                reasons::CHUNK_COUNT_MISMATCH,
                "storage holds 3 chunks (00000000.webm to 00000002.webm) but the client confirmed 4: 00000003.webm is missing",
            ),
            (
                seqs(5),
                3,
                reasons::CHUNK_COUNT_MISMATCH,
                "storage holds 5 chunks (00000000.webm to 00000004.webm) but the client confirmed 3",
            ),
            (
                vec![
                    "00000000.webm".into(),
                    "1.webm".into(),
                    "00000001.webm".into(),
                ],
                2,
                reasons::CHUNK_COUNT_MISMATCH,
                "two chunks have sequence number 1",
            ),
        ];
        for (names, expected, reason, message) in cases {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let error = plan_names(&names, expected).expect_err("must fail");
            assert_eq!(error.reason(), reason, "{names:?}: {error}");
            assert!(
                error.to_string().contains(message),
                "{names:?}: {error:?} does not contain {message:?}"
            );
            assert!(error.to_string().starts_with("track alice: "), "{error}");
            assert!(error.is_bad_input());
        }
    }

    #[test]
    fn rejects_an_empty_chunk() {
        let mut objects = listed(&["00000000.webm", "00000001.webm"]);
        objects[1].size = 0;
        let error = plan("alice", PREFIX, objects, Some(2)).expect_err("must fail");
        assert_eq!(error.reason(), reasons::UNREADABLE_CHUNK);
        assert!(
            error.to_string().contains("00000001.webm is empty"),
            "{error}"
        );
    }

    /// `(name, size)` objects under [`PREFIX`], for listings where sizes matter.
    fn sized(objects: &[(&str, u64)]) -> Vec<Listed> {
        objects
            .iter()
            .map(|&(name, size)| Listed {
                key: format!("{PREFIX}{name}"),
                size,
            })
            .collect()
    }

    /// Objects as `(name below the prefix, size)`.
    type Objects = Vec<(String, u64)>;

    /// `n` canonical chunks of 100 bytes, from chunk `from` on.
    fn run_of(from: u64, n: u64) -> Objects {
        (from..from + n)
            .map(|seq| (canonical_name(seq), 100))
            .collect()
    }

    fn left_out(missing_chunk: u32, chunks_kept: u32) -> Option<LeftOut> {
        Some(LeftOut {
            missing_chunk,
            chunks_kept,
        })
    }

    /// What an unsealed track's listing should give: the sequence numbers in the file and what
    /// was left out, or the reason and a part of the message.
    enum Unsealed {
        Run(Vec<u64>, Option<LeftOut>),
        Fails(&'static str, &'static str),
    }

    #[test]
    fn unsealed_tracks_are_processed_up_to_their_first_missing_or_empty_chunk() {
        use Unsealed::{Fails, Run};
        let with = |parts: &[&[(String, u64)]]| -> Objects { parts.concat() };
        let named = |names: &[(&str, u64)]| -> Objects {
            names.iter().map(|&(n, s)| (n.to_owned(), s)).collect()
        };
        let cases: Vec<(&str, Objects, Unsealed)> = vec![
            (
                "all contiguous: everything, nothing left out",
                run_of(0, 5),
                Run((0..5).collect(), None),
            ),
            (
                "a gap: the file ends before it, the chunks after it are kept",
                with(&[&run_of(0, 5), &run_of(6, 2)]),
                Run((0..5).collect(), left_out(5, 2)),
            ),
            (
                "a gap of several numbers names the first missing one",
                with(&[&run_of(0, 2), &run_of(5, 1), &run_of(9, 1)]),
                Run(vec![0, 1], left_out(2, 2)),
            ),
            (
                "an empty chunk in the middle ends the run; it and those after it are kept",
                named(&[
                    ("00000000.webm", 100),
                    ("00000001.webm", 100),
                    ("00000002.webm", 0),
                    ("00000003.webm", 100),
                    ("00000004.webm", 100),
                ]),
                Run(vec![0, 1], left_out(2, 3)),
            ),
            (
                "an empty last chunk is left out",
                named(&[("00000000.webm", 100), ("00000001.webm", 0)]),
                Run(vec![0], left_out(1, 1)),
            ),
            (
                "numbered by value whatever the padding",
                named(&[
                    ("0.webm", 100),
                    ("1.webm", 100),
                    ("00000002.webm", 100),
                    ("10.webm", 100),
                ]),
                Run(vec![0, 1, 2], left_out(3, 1)),
            ),
            (
                "objects that are not chunks are ignored, not counted",
                with(&[
                    &run_of(0, 2),
                    &named(&[
                        ("manifest.json", 10),
                        ("x.webm", 10),
                        (".webm", 10),
                        ("3.webm.tmp", 10),
                        ("sub/3.webm", 10),
                    ]),
                ]),
                Run(vec![0, 1], None),
            ),
            (
                "two objects with one number after the run are only counted",
                with(&[
                    &run_of(0, 2),
                    &named(&[("3.webm", 100), ("00000003.webm", 100)]),
                ]),
                Run(vec![0, 1], left_out(2, 2)),
            ),
            (
                "a number above u32::MAX is never in a run: it counts as kept",
                with(&[&run_of(0, 2), &named(&[("4294967296.webm", 100)])]),
                Run(vec![0, 1], left_out(2, 1)),
            ),
            (
                "chunk 0 missing",
                run_of(1, 3),
                Fails(
                    reasons::MISSING_CHUNK,
                    "the track was not sealed and its chunk 00000000.webm is missing (the first chunk, which holds the recording's header); the first one in storage is 00000001.webm",
                ),
            ),
            (
                "chunk 0 empty",
                named(&[("00000000.webm", 0), ("00000001.webm", 100)]),
                Fails(
                    reasons::MISSING_CHUNK,
                    "the track was not sealed and its chunk 00000000.webm is empty (0 bytes)",
                ),
            ),
            (
                "two objects with one number inside the run",
                with(&[
                    &run_of(0, 1),
                    &named(&[("1.webm", 100), ("00000001.webm", 100)]),
                    &run_of(2, 2),
                ]),
                Fails(
                    reasons::CHUNK_COUNT_MISMATCH,
                    "two chunks have sequence number 1: 00000001.webm and 1.webm",
                ),
            ),
            (
                "two objects with the number where the run ends, one of them empty",
                with(&[
                    &run_of(0, 1),
                    &named(&[("1.webm", 0), ("00000001.webm", 100)]),
                ]),
                Fails(
                    reasons::CHUNK_COUNT_MISMATCH,
                    "two chunks have sequence number 1",
                ),
            ),
            (
                "no chunk at all",
                named(&[("manifest.json", 10)]),
                Fails(
                    reasons::NO_CHUNKS,
                    "no chunks under riverside/chunks/room/rec/alice/",
                ),
            ),
        ];
        for (name, objects, expected) in cases {
            let objects: Vec<(&str, u64)> = objects.iter().map(|(n, s)| (n.as_str(), *s)).collect();
            let result = plan("alice", PREFIX, sized(&objects), None);
            match (expected, result) {
                (Run(seqs, left_out), Ok(track)) => {
                    let got: Vec<u64> = track.chunks.iter().map(|c| c.seq).collect();
                    assert_eq!(got, seqs, "{name}");
                    assert_eq!(track.left_out, left_out, "{name}");
                    let mut offset = 0;
                    for chunk in &track.chunks {
                        assert_eq!(chunk.offset, offset, "{name}: offset of {}", chunk.name);
                        offset += chunk.size;
                    }
                }
                (Fails(reason, message), Err(error)) => {
                    assert_eq!(error.reason(), reason, "{name}: {error}");
                    assert!(
                        error.to_string().contains(message),
                        "{name}: {error} does not contain {message:?}"
                    );
                    assert!(error.to_string().starts_with("track alice: "), "{error}");
                    assert!(error.is_bad_input(), "{name}");
                }
                (Run(..), Err(error)) => panic!("{name}: failed with {error}"),
                (Fails(..), Ok(track)) => panic!("{name}: planned {track:?}"),
            }
        }
    }

    #[test]
    fn left_out_chunks_of_an_unsealed_track_are_not_among_the_planned_ones() {
        let mut objects = run_of(0, 3);
        objects.extend(run_of(4, 2));
        let objects: Vec<(&str, u64)> = objects.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let track = plan("alice", PREFIX, sized(&objects), None).expect("valid");
        // What gets deleted once the outputs are verified is `chunks`' keys: 0 to 2, never 4 or 5.
        let keys: Vec<&str> = track.chunks.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            (0..3)
                .map(|seq| format!("{PREFIX}{}", canonical_name(seq)))
                .collect::<Vec<_>>()
        );
        assert_eq!(track.left_out, left_out(3, 2));
        assert_eq!(total_size(&track.chunks), 300);
    }

    #[test]
    fn a_sealed_track_with_a_gap_or_an_empty_chunk_still_fails() {
        // The rules of the unsealed run never apply to a sealed track.
        let mut objects = run_of(0, 5);
        objects.extend(run_of(6, 2));
        let objects: Vec<(&str, u64)> = objects.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let error = plan("alice", PREFIX, sized(&objects), Some(7)).expect_err("gap");
        assert_eq!(error.reason(), reasons::MISSING_CHUNK, "{error}");
        let error = plan(
            "alice",
            PREFIX,
            sized(&[("00000000.webm", 100), ("00000001.webm", 0)]),
            Some(2),
        )
        .expect_err("empty");
        assert_eq!(error.reason(), reasons::UNREADABLE_CHUNK, "{error}");
    }

    #[test]
    fn finds_the_chunk_holding_a_byte() {
        let chunks =
            plan_names(&["00000000.webm", "00000001.webm", "00000002.webm"], 3).expect("valid");
        assert_eq!(chunk_at(&chunks, 0).map(|c| c.seq), Some(0));
        assert_eq!(chunk_at(&chunks, 99).map(|c| c.seq), Some(0));
        assert_eq!(chunk_at(&chunks, 100).map(|c| c.seq), Some(1));
        assert_eq!(chunk_at(&chunks, 299).map(|c| c.seq), Some(2));
        assert_eq!(chunk_at(&chunks, 10_000).map(|c| c.seq), Some(2));
        assert_eq!(chunk_at(&[], 0), None);
    }

    #[test]
    fn prefixes_become_directories() {
        assert_eq!(dir_prefix("a/b"), "a/b/");
        assert_eq!(dir_prefix("a/b/"), "a/b/");
        assert_eq!(dir_prefix("a/b//"), "a/b/");
        assert_eq!(dir_prefix(""), "");
    }

    #[test]
    fn parses_sequence_numbers() {
        assert_eq!(parse_seq("00000012.webm"), Some(12));
        assert_eq!(parse_seq("12.webm"), Some(12));
        assert_eq!(parse_seq("0.webm"), Some(0));
        for bad in [
            ".webm",
            "a1.webm",
            "12.mp4",
            "12",
            "-1.webm",
            "99999999999999999999999.webm",
        ] {
            assert_eq!(parse_seq(bad), None, "{bad}");
        }
    }
}
