//! From a listing of a track's chunk prefix to the ordered chunks to feed ffmpeg, or a clear
//! reason why the recording cannot be processed. Pure: no storage, no clock.
//!
//! Chunks are named `{seq}.webm`, normally `{seq:08}.webm`, starting at 0. They are ordered by the
//! number, not by the key, so `10.webm` follows `9.webm` whatever the padding. Only chunk 0 holds
//! the WebM header, so a missing first chunk is as fatal as a gap.

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

/// Orders the chunks of one track and checks them against the count the client confirmed.
///
/// `prefix` must be a [`dir_prefix`]; objects that are not `{prefix}{digits}.webm` are ignored
/// (they are not chunks). Fails on: no chunks, two chunks with one sequence number, a missing
/// chunk 0, a gap, a count other than `expected`, an empty chunk.
pub fn plan(
    participant: &str,
    prefix: &str,
    listed: impl IntoIterator<Item = Listed>,
    expected: u32,
) -> Result<Vec<Chunk>, WorkerError> {
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
    if let Some(pair) = chunks.windows(2).find(|pair| pair[0].seq == pair[1].seq) {
        return Err(WorkerError::ChunkCountMismatch {
            participant: participant.to_owned(),
            detail: format!(
                "two chunks have sequence number {}: {} and {}",
                pair[0].seq, pair[0].name, pair[1].name
            ),
        });
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

    let mut offset = 0;
    for chunk in &mut chunks {
        chunk.offset = offset;
        offset += chunk.size;
    }
    Ok(chunks)
}

/// The chunk holding byte `position` of the concatenated input (the last chunk for positions
/// past the end).
pub fn chunk_at(chunks: &[Chunk], position: u64) -> Option<&Chunk> {
    let index = chunks.partition_point(|c| c.offset <= position);
    chunks.get(index.checked_sub(1)?)
}

/// Total size of the chunks in bytes.
pub fn total_size(chunks: &[Chunk]) -> u64 {
    chunks.iter().map(|c| c.size).sum()
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

    fn plan_names(names: &[&str], expected: u32) -> Result<Vec<Chunk>, WorkerError> {
        plan("alice", PREFIX, listed(names), expected)
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
        let error = plan("alice", PREFIX, objects, 2).expect_err("must fail");
        assert_eq!(error.reason(), reasons::UNREADABLE_CHUNK);
        assert!(
            error.to_string().contains("00000001.webm is empty"),
            "{error}"
        );
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
