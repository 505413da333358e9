//! Properties of the WebM reader over generated input: the worker feeds it whatever storage
//! holds, so it must give the same answer however the bytes are cut, and survive any damage.
//!
//! - A valid recording cut at random points gives exactly the timing of the whole, and chunks
//!   in order never fail [`ChunkSpan::check`].
//! - Random damage (flipped bytes, truncations, inserted garbage, elements with huge sizes and
//!   values) never panics (debug builds panic on overflow, so this is the checked arithmetic's
//!   test too), never reports an end before the start, and gives the same answer cut anywhere.
//! - [`codecs`] never panics, on arbitrary bytes or on damaged headers.
//!
//! The recordings are made once with ffmpeg (two seconds: VP8 and Opus written to a pipe, as
//! MediaRecorder writes them; H.264 and Opus in a Matroska file, with sized Clusters, Cues and
//! BlockGroups). Each property runs `PROPTEST_CASES` cases (default 1024), which takes a few
//! seconds; failures are not persisted in the source tree, the seed is printed instead.

use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

use super::{BLOCK_GROUP, CLUSTER, ChunkSpan, Reader, SEGMENT, Timing, codecs};

/// Cases per property, `PROPTEST_CASES` or 1024.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(1024);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// The recordings, made on first use.
fn recordings() -> &'static [Vec<u8>] {
    static RECORDINGS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    RECORDINGS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let vp8: &[&str] = &["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8"];
        let h264: &[&str] = &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ];
        [
            ("vp8.webm", vp8, "webm", true),
            ("h264.mkv", h264, "matroska", false),
        ]
        .into_iter()
        .map(|(name, video, format, pipe)| {
            let path = dir.path().join(name);
            let mut command = std::process::Command::new("ffmpeg");
            command
                .args(["-hide_banner", "-loglevel", "error", "-y"])
                .args(["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=15"])
                .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
                .args(["-t", "2"])
                .args(video)
                .args(["-g", "15", "-c:a", "libopus", "-b:a", "32k"])
                .args(["-output_ts_offset", "3.5", "-f", format]);
            if pipe {
                let file = std::fs::File::create(&path).expect("created");
                command.arg("pipe:1").stdout(file);
            } else {
                command.arg(&path);
            }
            let status = command
                .status()
                .expect("ffmpeg runs (Debian's ffmpeg package)");
            assert!(status.success(), "ffmpeg for {name}: {status}");
            std::fs::read(&path).expect("read back")
        })
        .collect()
    })
}

/// What the reader says of a stream, as the worker reads it.
#[derive(Debug, Clone, PartialEq)]
struct Read {
    packets: u64,
    resyncs: u64,
    start: Option<f64>,
    duration: Option<f64>,
    spans: Vec<ChunkSpan>,
}

/// Feeds `bytes` cut at `cuts` (indices into it, in any order), chunk by chunk.
fn read(bytes: &[u8], cuts: &[Index]) -> Read {
    let mut at: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
    at.extend([0, bytes.len()]);
    at.sort_unstable();
    at.dedup();
    let mut timing = Timing::new();
    let spans = at
        .windows(2)
        .map(|w| timing.feed_chunk(&bytes[w[0]..w[1]]))
        .collect();
    Read {
        packets: timing.packets(),
        resyncs: timing.resyncs(),
        start: timing.start(),
        duration: timing.duration(),
        spans,
    }
}

/// Where damage goes: anywhere (mostly inside frame data, which the reader skips), or in the
/// header of an element of the recording or right after its start, where the reader acts on it.
#[derive(Debug, Clone)]
enum Place {
    Anywhere(Index),
    Element(Index, usize),
}

impl Place {
    /// The offset in a recording of `len` bytes whose elements start at `starts`.
    fn at(&self, len: usize, starts: &[usize]) -> usize {
        match self {
            Place::Anywhere(at) => at.index(len + 1),
            Place::Element(_, _) if starts.is_empty() => 0,
            Place::Element(which, offset) => (starts[which.index(starts.len())] + offset).min(len),
        }
    }
}

fn place() -> impl Strategy<Value = Place> {
    prop_oneof![
        any::<Index>().prop_map(Place::Anywhere),
        (any::<Index>(), 0..12usize).prop_map(|(which, offset)| Place::Element(which, offset)),
    ]
}

/// Damage done to a recording.
#[derive(Debug, Clone)]
enum Damage {
    Flip(Place, u8),
    Truncate(Place),
    Insert(Place, Vec<u8>),
    /// An element the reader acts on, with a size or a value as large as can be, put where an
    /// element of the recording starts.
    Element(Index, &'static [u8]),
}

/// Where each element of `bytes` starts, children of the Segment, Clusters and BlockGroups
/// included.
fn element_starts(bytes: &[u8]) -> Vec<usize> {
    let mut reader = Reader {
        data: bytes,
        pos: 0,
    };
    let mut starts = Vec::new();
    loop {
        let start = reader.pos;
        let Some((id, size)) = reader.element() else {
            break;
        };
        starts.push(start);
        if matches!(id, SEGMENT | CLUSTER | BLOCK_GROUP) {
            continue;
        }
        if size.and_then(|size| reader.skip(size)).is_none() {
            break;
        }
    }
    starts
}

/// Elements with the largest sizes and values, which is where arithmetic would overflow.
const HUGE: &[&[u8]] = &[
    // A Cluster of 2^56 - 2 bytes, and one of unknown size.
    &[
        0x1F, 0x43, 0xB6, 0x75, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE,
    ],
    &[
        0x1F, 0x43, 0xB6, 0x75, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    ],
    // Cluster Timecode u64::MAX and i64::MAX.
    &[0xE7, 0x88, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
    &[0xE7, 0x88, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
    // A SimpleBlock of track 1 at +32767 ticks, and one of 2^56 - 2 bytes.
    &[0xA3, 0x85, 0x81, 0x7F, 0xFF, 0x80, 0xFC],
    &[
        0xA3, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, 0x81, 0x80, 0x00, 0x80,
    ],
    // A BlockGroup with a Block at -32768 ticks and a BlockDuration of u64::MAX.
    &[
        0xA0, 0x91, 0xA1, 0x85, 0x82, 0x80, 0x00, 0x80, 0xFC, 0x9B, 0x88, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFF, 0xFF, 0xFF, 0xFF,
    ],
    // A laced SimpleBlock of 256 frames.
    &[0xA3, 0x86, 0x81, 0x00, 0x00, 0x82, 0xFF, 0x10],
    // Info with a TimecodeScale of u64::MAX, and Tracks with a DefaultDuration and a
    // CodecDelay of u64::MAX for track 1.
    &[
        0x15, 0x49, 0xA9, 0x66, 0x8C, 0x2A, 0xD7, 0xB1, 0x88, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFF, 0xFF,
    ],
    &[
        0x16, 0x54, 0xAE, 0x6B, 0x9C, 0xAE, 0x9A, 0xD7, 0x81, 0x01, 0x23, 0xE3, 0x83, 0x88, 0xFF,
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x56, 0xAA, 0x88, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFF, 0xFF, 0xFF,
    ],
    // A new EBML header and Segment of unknown size.
    &[
        0x1A, 0x45, 0xDF, 0xA3, 0x80, 0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFF, 0xFF,
    ],
    // Tracks declaring DefaultDuration u64::MAX for track 1 and CodecDelay u64::MAX for
    // track 2, then a Cluster at 0 with a laced block of track 1 (2 frames) and a block of
    // track 2: where these multiply and add, they overflow.
    &[
        0x16, 0x54, 0xAE, 0x6B, 0xAF, // Tracks
        0xAE, 0x92, 0xD7, 0x81, 0x01, 0x83, 0x81, 0x01, // TrackEntry 1, video
        0x23, 0xE3, 0x83, 0x88, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        0xFF, // DefaultDuration
        0xAE, 0x99, 0xD7, 0x81, 0x02, 0x83, 0x81, 0x02, // TrackEntry 2, audio
        0x86, 0x86, b'A', b'_', b'O', b'P', b'U', b'S', // CodecID
        0x56, 0xAA, 0x88, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, // CodecDelay
        0x1F, 0x43, 0xB6, 0x75, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, // Cluster
        0xE7, 0x81, 0x00, // Timecode 0
        0xA3, 0x87, 0x81, 0x00, 0x00, 0x82, 0x01, 0x10, 0x10, // laced SimpleBlock, track 1
        0xA3, 0x86, 0x82, 0x00, 0x00, 0x80, 0xFC, 0x01, // SimpleBlock, track 2
    ],
];

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (place(), 1..=255u8).prop_map(|(at, mask)| Damage::Flip(at, mask)),
        place().prop_map(Damage::Truncate),
        (place(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, bytes)| Damage::Insert(at, bytes)),
        (any::<Index>(), prop::sample::select(HUGE)).prop_map(|(at, e)| Damage::Element(at, e)),
    ]
}

/// `bytes` with `damage` done, each placed in the undamaged recording and done from the end
/// back, so that one does not move the next.
fn damaged(bytes: &[u8], damage: &[Damage]) -> Vec<u8> {
    let starts = element_starts(bytes);
    let len = bytes.len();
    let mut placed: Vec<(usize, &Damage)> = damage
        .iter()
        .map(|damage| {
            let at = match damage {
                Damage::Flip(place, _) | Damage::Truncate(place) | Damage::Insert(place, _) => {
                    place.at(len, &starts)
                }
                Damage::Element(which, _) => Place::Element(*which, 0).at(len, &starts),
            };
            (at, damage)
        })
        .collect();
    placed.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    let mut bytes = bytes.to_vec();
    for (at, damage) in placed {
        let at = at.min(bytes.len());
        match damage {
            Damage::Flip(_, mask) => {
                if let Some(byte) = bytes.get_mut(at) {
                    *byte ^= mask;
                }
            }
            Damage::Truncate(_) => bytes.truncate(at),
            Damage::Insert(_, insert) => {
                bytes.splice(at..at, insert.iter().copied());
            }
            Damage::Element(_, element) => {
                bytes.splice(at..at, element.iter().copied());
            }
        }
    }
    bytes
}

/// What holds of any read: an end never before the start, and chunks that add up.
fn assert_sane(read: &Read) -> Result<(), TestCaseError> {
    prop_assert_eq!(read.start.is_some(), read.duration.is_some(), "{:?}", read);
    if let Some(duration) = read.duration {
        prop_assert!(duration >= 0.0, "ends before it starts: {:?}", read);
    }
    for span in &read.spans {
        prop_assert_eq!(span.first_ns.is_some(), span.packets > 0, "{:?}", span);
        prop_assert_eq!(span.last_ns.is_some(), span.packets > 0, "{:?}", span);
        if let (Some(first), Some(last)) = (span.first_ns, span.last_ns) {
            prop_assert!(first <= last, "{:?}", span);
        }
    }
    let counted: u64 = read.spans.iter().map(|s| s.packets).sum();
    // A BlockGroup the stream ends inside counts in the whole, not yet in a chunk.
    prop_assert!(
        counted == read.packets || counted + 1 == read.packets,
        "{:?}",
        read
    );
    prop_assert_eq!(
        read.spans.iter().map(|s| s.resyncs).sum::<u64>(),
        read.resyncs
    );
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_recording_cut_anywhere_reads_as_the_whole(
        which in 0..2usize,
        cuts in prop::collection::vec(any::<Index>(), 0..40),
    ) {
        let bytes = &recordings()[which];
        let whole = read(bytes, &[]);
        prop_assert!(whole.packets > 20);
        prop_assert!(element_starts(bytes).len() as u64 > whole.packets);
        prop_assert_eq!(whole.resyncs, 0);
        let cut = read(bytes, &cuts);
        prop_assert_eq!(
            (cut.packets, cut.resyncs, cut.start, cut.duration),
            (whole.packets, whole.resyncs, whole.start, whole.duration)
        );
        assert_sane(&cut)?;
        // In order, no chunk goes back or jumps, however the recording is cut.
        for span in &cut.spans {
            prop_assert_eq!(span.check(), Ok(()), "{:?}", span);
        }
    }

    #[test]
    fn damage_never_panics_nor_ends_before_the_start(
        which in 0..2usize,
        damage in prop::collection::vec(damage(), 1..8),
        cuts in prop::collection::vec(any::<Index>(), 0..40),
    ) {
        let bytes = damaged(&recordings()[which], &damage);
        let whole = read(&bytes, &[]);
        assert_sane(&whole)?;
        let cut = read(&bytes, &cuts);
        assert_sane(&cut)?;
        // Damage or not, where the chunks end changes nothing.
        prop_assert_eq!(
            (cut.packets, cut.resyncs, cut.start, cut.duration),
            (whole.packets, whole.resyncs, whole.start, whole.duration)
        );
        // A check never panics either, whatever the times.
        for span in &cut.spans {
            let _ = span.check().map_err(|e| e.to_string());
        }
    }

    #[test]
    fn codecs_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Some(streams) = codecs(&bytes) {
            prop_assert!(streams.video.is_some() || streams.audio.is_some());
        }
    }

    #[test]
    fn codecs_never_panics_on_damaged_headers(
        which in 0..2usize,
        damage in prop::collection::vec(damage(), 1..8),
    ) {
        let header = &recordings()[which][..4096];
        prop_assert!(codecs(header).is_some());
        if let Some(streams) = codecs(&damaged(header, &damage)) {
            prop_assert!(streams.video.is_some() || streams.audio.is_some());
        }
    }
}
