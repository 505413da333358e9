//! [`Timing`] reads, from the same bytes as they are fed to ffmpeg, the time span of the
//! recording's packets (first block's time to the end of the last), which each output is
//! verified against. It follows the Segment and its Clusters, takes `TimecodeScale` from `Info`
//! and each track's `DefaultDuration` from `Tracks`, and looks at the first bytes of every
//! SimpleBlock and Block (track, relative time, lacing, and an Opus packet's TOC byte, from which
//! ffmpeg takes an Opus packet's duration); everything else, frame data included, is skipped
//! without being copied. It keeps a few bytes of state between calls, so chunks may end anywhere.
//!
//! Fed chunk by chunk ([`Timing::feed_chunk`]), it also tells what each chunk added: its first
//! packet's time and the latest one before it, which [`ChunkSpan::check`] holds against the
//! bounds of a recording in order (see [`MAX_BACKWARDS_NS`] and [`MAX_JUMP_NS`]).
//!
//! Every number here comes from the recording's bytes, so a crafted or damaged chunk can hold
//! any value: sizes, timecodes, the scale, durations and delays are combined with checked
//! arithmetic, and a value that does not fit is damaged data: the reader resynchronises at the
//! next Cluster as it does for any other damage, it never wraps or panics.

use std::collections::HashMap;

use super::*;

/// Where [`Timing`] is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of an element: its id and size come next (a part may be in `pending`).
    Header,
    /// Collecting the first `want` bytes of the body of `id` in `pending`, then skipping `rest`.
    Body { id: u32, want: usize, rest: u64 },
    /// Skipping this many bytes.
    Skip(u64),
    /// Lost in damaged data: looking for the next Cluster id, as ffmpeg's demuxer does. `window`
    /// holds the last four bytes seen.
    Resync { window: u32 },
}

/// A master element being read: its id and where it ends (`None`: unknown size; it ends where an
/// element that cannot be its child begins).
#[derive(Debug, Clone, Copy)]
struct Open {
    id: u32,
    end: Option<u64>,
}

/// What the timing needs of a track.
#[derive(Debug, Clone, Copy, Default)]
struct Track {
    default_duration_ns: Option<u64>,
    /// `CodecDelay` (Opus's pre-skip), which ffmpeg takes off every packet's time.
    codec_delay_ns: u64,
    opus: bool,
}

/// A block's span in nanoseconds: its time, and its end as far as its duration is known.
#[derive(Debug, Clone, Copy)]
struct Packet {
    start_ns: i128,
    end_ns: i128,
}

/// Largest Info or Tracks element read; a larger one is skipped and defaults apply.
const MAX_HEADER_ELEMENT: u64 = 1 << 20;
/// Bytes read of a block: track number (at most 8), relative time (2), flags (1), and the first
/// two bytes of the frame (an Opus TOC byte and frame count) or the lace count.
const BLOCK_PREFIX: u64 = 13;
/// Longest element header: a 4-byte id and an 8-byte size.
const MAX_HEADER: usize = 12;
/// `TimecodeScale` when `Info` does not say: milliseconds.
const DEFAULT_TIMECODE_SCALE: u64 = 1_000_000;

/// The time span of a WebM/Matroska stream's packets, read from its bytes as they go by: what
/// ffprobe's `-show_entries packet=pts_time,duration_time` would give as the first packet's time
/// and the end of the last, without a second program reading every byte. See the module
/// documentation.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Offset in the stream of the first byte of `pending` (of the next byte when it is empty).
    pos: u64,
    state: State,
    pending: Vec<u8>,
    stack: Vec<Open>,
    timecode_scale: u64,
    tracks: HashMap<u64, Track>,
    cluster_ticks: Option<i64>,
    /// The Block of the BlockGroup being read, and the group's BlockDuration.
    group: Option<Packet>,
    group_duration_ns: Option<u64>,
    start_ns: Option<i128>,
    end_ns: Option<i128>,
    /// Latest packet time so far (the latest start, not the end: packets of two tracks
    /// interleave, a long audio packet must not hide the next video frame's time).
    latest_ns: Option<i128>,
    packets: u64,
    resyncs: u64,
    /// What the chunk being fed added ([`Timing::feed_chunk`]).
    chunk: ChunkSpan,
}

/// What one chunk fed with [`Timing::feed_chunk`] added to the timing, in nanoseconds of the
/// recording's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkSpan {
    /// The latest packet time read before this chunk.
    pub before_ns: Option<i128>,
    /// The time of the first packet read in this chunk.
    pub first_ns: Option<i128>,
    /// The latest packet time read in this chunk.
    pub last_ns: Option<i128>,
    /// Packets read in this chunk.
    pub packets: u64,
    /// Times the reader lost its way in this chunk.
    pub resyncs: u64,
}

/// How far a chunk's first packet may go back before the latest packet of the chunks before
/// it. Within a recording in order, packet times go back only a little: audio and video
/// interleave, and video frames are stored in decoding order. One second is well beyond both,
/// and below what a chunk out of place costs: with the studio's one-second chunks, a chunk fed
/// one place early or late, or again, goes back by a chunk's length or more.
pub const MAX_BACKWARDS_NS: i128 = 1_000_000_000;
/// How far a chunk's first packet may go past the latest packet before it. A recording in
/// order goes on by a frame; ten seconds is ten of the studio's chunks, far beyond any chunk's
/// length, so only a chunk from far later in the recording (or another one) goes that far.
pub const MAX_JUMP_NS: i128 = 10_000_000_000;

/// A chunk whose packet times do not follow the chunks before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Discontinuity {
    /// Its first packet is more than [`MAX_BACKWARDS_NS`] before the latest one before it.
    Backwards { before: f64, first: f64 },
    /// Its first packet is more than [`MAX_JUMP_NS`] after the latest one before it.
    Jump { before: f64, first: f64 },
}

impl std::fmt::Display for Discontinuity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Discontinuity::Backwards { before, first } => write!(
                f,
                "its first packet is at {first:.3} s, more than {} s before the packets of the chunks before it, which had reached {before:.3} s",
                MAX_BACKWARDS_NS / 1_000_000_000
            ),
            Discontinuity::Jump { before, first } => write!(
                f,
                "its first packet is at {first:.3} s, more than {} s after the packets of the chunks before it, which had reached {before:.3} s",
                MAX_JUMP_NS / 1_000_000_000
            ),
        }
    }
}

impl ChunkSpan {
    /// Whether the chunk's first packet follows the chunks before it, within
    /// [`MAX_BACKWARDS_NS`] and [`MAX_JUMP_NS`]. A chunk without packets, or the first chunk with
    /// any, has nothing to hold against and passes.
    pub fn check(&self) -> Result<(), Discontinuity> {
        let (Some(before), Some(first)) = (self.before_ns, self.first_ns) else {
            return Ok(());
        };
        let seconds = |ns: i128| ns as f64 / 1e9;
        let (before_s, first_s) = (seconds(before), seconds(first));
        if first < before.saturating_sub(MAX_BACKWARDS_NS) {
            return Err(Discontinuity::Backwards {
                before: before_s,
                first: first_s,
            });
        }
        if first > before.saturating_add(MAX_JUMP_NS) {
            return Err(Discontinuity::Jump {
                before: before_s,
                first: first_s,
            });
        }
        Ok(())
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::new()
    }
}

impl Timing {
    pub fn new() -> Timing {
        Timing {
            pos: 0,
            state: State::Header,
            pending: Vec::with_capacity(64),
            stack: Vec::new(),
            timecode_scale: DEFAULT_TIMECODE_SCALE,
            tracks: HashMap::new(),
            cluster_ticks: None,
            group: None,
            group_duration_ns: None,
            start_ns: None,
            end_ns: None,
            latest_ns: None,
            packets: 0,
            resyncs: 0,
            chunk: ChunkSpan::default(),
        }
    }

    /// [`Timing::feed`] of one whole chunk, and what it added (see [`ChunkSpan::check`]).
    pub fn feed_chunk(&mut self, data: &[u8]) -> ChunkSpan {
        self.chunk = ChunkSpan {
            before_ns: self.latest_ns,
            ..ChunkSpan::default()
        };
        self.feed(data);
        std::mem::take(&mut self.chunk)
    }

    /// Reads the next bytes of the stream; they may end anywhere, inside an element header too.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Skip(left) => {
                    let step = left.min(data.len() as u64);
                    data = &data[step as usize..];
                    self.pos = self.pos.saturating_add(step);
                    self.state = if step == left {
                        State::Header
                    } else {
                        State::Skip(left - step)
                    };
                }
                State::Resync { mut window } => {
                    let mut found = None;
                    for (index, &byte) in data.iter().enumerate() {
                        window = (window << 8) | u32::from(byte);
                        if window == CLUSTER {
                            found = Some(index + 1);
                            break;
                        }
                    }
                    match found {
                        Some(end) => {
                            // The Cluster id is the start of the next element header (it may
                            // have begun in an earlier call).
                            self.pos = self.pos.saturating_add(end as u64).saturating_sub(4);
                            self.pending.clear();
                            self.pending.extend_from_slice(&CLUSTER.to_be_bytes());
                            self.state = State::Header;
                            data = &data[end..];
                        }
                        None => {
                            self.pos = self.pos.saturating_add(data.len() as u64);
                            self.state = State::Resync { window };
                            data = &[];
                        }
                    }
                }
                State::Body { id, want, rest } => {
                    let step = (want - self.pending.len()).min(data.len());
                    self.pending.extend_from_slice(&data[..step]);
                    data = &data[step..];
                    if self.pending.len() == want {
                        let body = std::mem::take(&mut self.pending);
                        self.pos = self.pos.saturating_add(want as u64);
                        self.state = if rest > 0 {
                            State::Skip(rest)
                        } else {
                            State::Header
                        };
                        self.body(id, &body);
                        self.pending = body;
                        self.pending.clear();
                    }
                }
                State::Header => {
                    self.close_ended();
                    let had = self.pending.len();
                    let step = (MAX_HEADER - had).min(data.len());
                    self.pending.extend_from_slice(&data[..step]);
                    match header(&self.pending) {
                        HeaderRead::Complete { id, size, len } => {
                            data = &data[len - had..];
                            self.pending.clear();
                            self.pos = self.pos.saturating_add(len as u64);
                            self.begin(id, size);
                        }
                        HeaderRead::Incomplete => data = &data[step..],
                        HeaderRead::Invalid => {
                            // Look for a Cluster from the byte after this one on.
                            let held = std::mem::take(&mut self.pending);
                            data = &data[step..];
                            self.pos = self.pos.saturating_add(1);
                            self.lost();
                            self.feed(&held[1..]);
                        }
                    }
                }
            }
        }
    }

    /// Packets seen so far.
    pub fn packets(&self) -> u64 {
        self.summary().2
    }

    /// Times the reader lost its way in damaged data and looked for the next Cluster.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Seconds from the first packet's time to the end of the last, if any packet was seen.
    pub fn duration(&self) -> Option<f64> {
        let (start, end, _) = self.summary();
        Some(end?.checked_sub(start?)? as f64 / 1e9)
    }

    /// Time of the first packet, in seconds.
    pub fn start(&self) -> Option<f64> {
        Some(self.summary().0? as f64 / 1e9)
    }

    /// First packet's time, end of the last and the count, in nanoseconds, with the Block of a
    /// BlockGroup that has not ended yet (the stream may end inside it, or right after it).
    fn summary(&self) -> (Option<i128>, Option<i128>, u64) {
        let mut summary = (self.start_ns, self.end_ns, self.packets);
        if let Some(Packet {
            start_ns: start,
            end_ns: end,
        }) = self.group_packet()
        {
            summary.0 = Some(summary.0.map_or(start, |s| s.min(start)));
            summary.1 = Some(summary.1.map_or(end, |e| e.max(end)));
            summary.2 = summary.2.saturating_add(1);
        }
        summary
    }

    /// Pops the master elements that end where the reader is.
    fn close_ended(&mut self) {
        while let Some(open) = self.stack.last() {
            match open.end {
                Some(end) if self.pos >= end => self.pop(),
                _ => break,
            }
        }
    }

    fn pop(&mut self) {
        match self.stack.pop().map(|open| open.id) {
            Some(BLOCK_GROUP) => self.finish_group(),
            Some(CLUSTER) => self.cluster_ticks = None,
            _ => {}
        }
    }

    /// Damaged data: back to the Segment, and on to the next Cluster.
    fn lost(&mut self) {
        while self.stack.last().is_some_and(|open| open.id != SEGMENT) {
            self.pop();
        }
        self.group = None;
        self.pending.clear();
        self.resyncs = self.resyncs.saturating_add(1);
        self.chunk.resyncs = self.chunk.resyncs.saturating_add(1);
        self.state = State::Resync { window: 0 };
    }

    /// An element starts (its header read, the reader at its body).
    fn begin(&mut self, id: u32, size: Option<u64>) {
        if matches!(
            id,
            EBML | SEGMENT
                | CLUSTER
                | CUES
                | TAGS
                | SEEK_HEAD
                | INFO
                | TRACKS
                | CHAPTERS
                | ATTACHMENTS
        ) {
            // Ends an unknown-sized Cluster (and any BlockGroup); a new stream ends everything.
            while self
                .stack
                .last()
                .is_some_and(|open| open.id != SEGMENT || matches!(id, EBML | SEGMENT))
            {
                self.pop();
            }
        }
        let parent = self.stack.last().copied();
        if let (Some(size), Some(end)) = (size, parent.and_then(|open| open.end))
            && self.pos.saturating_add(size) > end
        {
            return self.lost();
        }
        let parent = parent.map(|open| open.id);
        let end = match size.map(|size| self.pos.checked_add(size)) {
            Some(None) => return self.lost(),
            Some(Some(end)) => Some(end),
            None => None,
        };
        let want = |limit: u64| size.map(|size| (size.min(limit) as usize, size - size.min(limit)));
        let read = match (id, parent) {
            (SEGMENT, _) | (CLUSTER, _) => {
                self.stack.push(Open { id, end });
                if id == CLUSTER {
                    self.cluster_ticks = None;
                }
                None
            }
            (BLOCK_GROUP, Some(CLUSTER)) if end.is_some() => {
                self.stack.push(Open { id, end });
                self.group = None;
                self.group_duration_ns = None;
                None
            }
            (INFO | TRACKS, Some(SEGMENT)) if size.is_some_and(|s| s <= MAX_HEADER_ELEMENT) => {
                want(MAX_HEADER_ELEMENT)
            }
            (CLUSTER_TIMECODE, Some(CLUSTER)) | (BLOCK_DURATION, Some(BLOCK_GROUP))
                if size.is_some_and(|s| s <= 8) =>
            {
                want(8)
            }
            (SIMPLE_BLOCK, Some(CLUSTER)) | (BLOCK, Some(BLOCK_GROUP)) => want(BLOCK_PREFIX),
            _ => {
                match size {
                    Some(size) => self.state = State::Skip(size),
                    None => self.lost(),
                }
                return;
            }
        };
        match read {
            None if matches!(id, SEGMENT | CLUSTER | BLOCK_GROUP) => self.state = State::Header,
            None => self.lost(),
            Some((want, rest)) => {
                self.state = State::Body { id, want, rest };
                if want == 0 {
                    // The state first: reading the body may find it damaged and resync.
                    self.state = if rest > 0 {
                        State::Skip(rest)
                    } else {
                        State::Header
                    };
                    self.body(id, &[]);
                }
            }
        }
    }

    /// The bytes wanted of an element's body.
    fn body(&mut self, id: u32, body: &[u8]) {
        match id {
            INFO => {
                let mut reader = Reader { data: body, pos: 0 };
                while let Some((id, Some(size))) = reader.element() {
                    let Some(value) = reader.take(size) else {
                        break;
                    };
                    // A scale that is zero or longer than 8 bytes is ignored: milliseconds.
                    if id == TIMECODE_SCALE
                        && let Some(scale) = uint(value).filter(|&scale| scale > 0)
                    {
                        self.timecode_scale = scale;
                    }
                }
            }
            TRACKS => self.tracks = track_timing(body),
            CLUSTER_TIMECODE => match uint(body).and_then(|ticks| i64::try_from(ticks).ok()) {
                Some(ticks) => self.cluster_ticks = Some(ticks),
                None => self.lost(),
            },
            SIMPLE_BLOCK => match self.block(body) {
                BlockRead::Timed(packet) => self.record(packet),
                BlockRead::Untimed => {}
                BlockRead::Damaged => self.lost(),
            },
            BLOCK => match self.block(body) {
                BlockRead::Timed(packet) => self.group = Some(packet),
                BlockRead::Untimed => self.group = None,
                BlockRead::Damaged => self.lost(),
            },
            BLOCK_DURATION => {
                match uint(body).and_then(|ticks| ticks.checked_mul(self.timecode_scale)) {
                    Some(ns) => self.group_duration_ns = Some(ns),
                    None => {
                        // The group's Block goes with it.
                        self.group = None;
                        self.lost();
                    }
                }
            }
            _ => {}
        }
    }

    /// A block's time and duration from its first bytes.
    fn block(&self, prefix: &[u8]) -> BlockRead {
        let mut reader = Reader {
            data: prefix,
            pos: 0,
        };
        let (Some(track), Some(relative), Some(&flags)) = (
            reader.vint(8, true),
            reader
                .take(2)
                .and_then(|b| b.try_into().ok())
                .map(i16::from_be_bytes),
            reader.take(1).and_then(<[u8]>::first),
        ) else {
            return BlockRead::Untimed;
        };
        // A block of a track the header does not declare is damaged data read as a block.
        if !self.tracks.is_empty() && !self.tracks.contains_key(&track) {
            return BlockRead::Damaged;
        }
        let frame = &prefix[reader.pos..];
        let laced = flags & 0x06 != 0;
        let info = self.tracks.get(&track).copied().unwrap_or_default();
        let duration_ns = match (laced, info.default_duration_ns) {
            (true, Some(each)) => {
                let Some(&lace_count) = frame.first() else {
                    return BlockRead::Untimed;
                };
                each.checked_mul(u64::from(lace_count) + 1)
            }
            (true, None) => Some(0),
            (false, Some(each)) => Some(each),
            (false, None) if info.opus => Some(opus_duration_ns(frame).unwrap_or(0)),
            (false, None) => Some(0),
        };
        let Some(cluster_ticks) = self.cluster_ticks else {
            return BlockRead::Untimed;
        };
        // As ffmpeg's demuxer does: the delay in ticks, rounded to the nearest (the scale is
        // never zero).
        let scale = self.timecode_scale;
        let delay = info
            .codec_delay_ns
            .checked_add(scale / 2)
            .map(|ns| ns / scale)
            .and_then(|ticks| i64::try_from(ticks).ok());
        let ticks = delay.and_then(|delay| {
            cluster_ticks
                .checked_add(i64::from(relative))?
                .checked_sub(delay)
        });
        let span = ticks.zip(duration_ns).and_then(|(ticks, duration_ns)| {
            let start = i128::from(ticks).checked_mul(i128::from(scale))?;
            Some(Packet {
                start_ns: start,
                end_ns: start.checked_add(i128::from(duration_ns))?,
            })
        });
        match span {
            Some(packet) => BlockRead::Timed(packet),
            None => BlockRead::Damaged,
        }
    }

    /// The Block of the current BlockGroup, with the group's BlockDuration if it has one.
    fn group_packet(&self) -> Option<Packet> {
        let mut packet = self.group?;
        if let Some(ns) = self.group_duration_ns {
            // Cannot saturate: a start is at most i64::MAX ticks of at most u64::MAX ns, and
            // that plus u64::MAX ns is still below i128::MAX.
            packet.end_ns = packet.start_ns.saturating_add(i128::from(ns));
        }
        Some(packet)
    }

    fn finish_group(&mut self) {
        if let Some(packet) = self.group_packet() {
            self.record(packet);
        }
        self.group = None;
        self.group_duration_ns = None;
    }

    fn record(&mut self, packet: Packet) {
        let (start, end) = (packet.start_ns, packet.end_ns);
        self.start_ns = Some(self.start_ns.map_or(start, |s| s.min(start)));
        self.end_ns = Some(self.end_ns.map_or(end, |e| e.max(end)));
        self.latest_ns = Some(self.latest_ns.map_or(start, |l| l.max(start)));
        self.packets = self.packets.saturating_add(1);
        let chunk = &mut self.chunk;
        chunk.first_ns.get_or_insert(start);
        chunk.last_ns = Some(chunk.last_ns.map_or(start, |l| l.max(start)));
        chunk.packets = chunk.packets.saturating_add(1);
    }
}

/// What the first bytes of a block say.
enum BlockRead {
    Timed(Packet),
    /// No time to give: outside a timed Cluster, or too short to read.
    Untimed,
    /// A value that cannot be, or does not fit: damaged data.
    Damaged,
}

/// What reading an element header from the start of a buffer gave.
enum HeaderRead {
    Complete {
        id: u32,
        size: Option<u64>,
        len: usize,
    },
    Incomplete,
    Invalid,
}

fn header(buf: &[u8]) -> HeaderRead {
    let Some(&first) = buf.first() else {
        return HeaderRead::Incomplete;
    };
    let id_len = first.leading_zeros() as usize + 1;
    if id_len > 4 {
        return HeaderRead::Invalid;
    }
    let Some(&size_first) = buf.get(id_len) else {
        return HeaderRead::Incomplete;
    };
    if size_first == 0 {
        return HeaderRead::Invalid;
    }
    let len = id_len + size_first.leading_zeros() as usize + 1;
    if buf.len() < len {
        return HeaderRead::Incomplete;
    }
    let mut reader = Reader { data: buf, pos: 0 };
    match reader.element() {
        Some((id, size)) => HeaderRead::Complete { id, size, len },
        None => HeaderRead::Invalid,
    }
}

/// Each track's `DefaultDuration` and whether it is Opus, by track number.
fn track_timing(data: &[u8]) -> HashMap<u64, Track> {
    let mut reader = Reader { data, pos: 0 };
    let mut tracks = HashMap::new();
    while let Some((id, Some(size))) = reader.element() {
        let Some(body) = reader.take(size) else {
            break;
        };
        if id != TRACK_ENTRY {
            continue;
        }
        let mut entry = Reader { data: body, pos: 0 };
        let (mut number, mut track) = (None, Track::default());
        while let Some((id, Some(size))) = entry.element() {
            let Some(value) = entry.take(size) else {
                break;
            };
            match id {
                // Values longer than 8 bytes are damaged and ignored.
                TRACK_NUMBER => number = uint(value),
                DEFAULT_DURATION => {
                    track.default_duration_ns = uint(value).filter(|&ns| ns > 0);
                }
                CODEC_DELAY => track.codec_delay_ns = uint(value).unwrap_or(0),
                CODEC_ID => track.opus = value.starts_with(b"A_OPUS"),
                _ => {}
            }
        }
        if let Some(number) = number {
            tracks.insert(number, track);
        }
    }
    tracks
}

/// Duration of an Opus packet from its TOC byte (RFC 6716, section 3.1), as ffmpeg computes it.
fn opus_duration_ns(packet: &[u8]) -> Option<u64> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // Frame length in units of 100 µs (2.5 ms is the shortest).
    let frame = match config {
        0..=11 => [100, 200, 400, 600][usize::from(config % 4)],
        12..=15 => [100, 200][usize::from(config % 2)],
        _ => [25, 50, 100, 200][usize::from(config % 4)],
    };
    let frames = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u64::from(*packet.get(1)? & 0x3F),
    };
    Some(frame * frames * 100_000)
}

#[cfg(test)]
mod tests {
    use super::super::build::{element, long_element};
    use super::*;

    /// A SimpleBlock (or, with `id` 0xA1, a Block) without lacing.
    fn block(id: u8, track: u8, relative: i16, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![0x80 | track];
        body.extend(relative.to_be_bytes());
        body.push(0x80);
        body.extend_from_slice(payload);
        long_element(&[id], &body)
    }

    const UNKNOWN_SIZE: [u8; 8] = [0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];

    /// A Tracks element: video track 1 (VP8, with `video_extra` appended to its entry) and audio
    /// track 2 (Opus).
    fn tracks_element(video_extra: &[u8]) -> Vec<u8> {
        let mut video = element(&[0xD7], &[1]);
        video.extend(element(&[0x83], &[1]));
        video.extend(element(&[0x86], b"V_VP8"));
        video.extend_from_slice(video_extra);
        let mut audio = element(&[0xD7], &[2]);
        audio.extend(element(&[0x83], &[2]));
        audio.extend(element(&[0x86], b"A_OPUS"));
        element(
            &[0x16, 0x54, 0xAE, 0x6B],
            &[element(&[0xAE], &video), element(&[0xAE], &audio)].concat(),
        )
    }

    /// A stream with what browsers and ffmpeg write: an unknown-sized Segment, a TimecodeScale
    /// of 100 µs, a video track with a DefaultDuration and an Opus track without, an
    /// unknown-sized Cluster, then a sized one with a BlockGroup, Void, Cues.
    fn synthetic() -> Vec<u8> {
        let mut out = element(&[0x1A, 0x45, 0xDF, 0xA3], &element(&[0x42, 0x82], b"webm"));
        out.extend([0x18, 0x53, 0x80, 0x67]);
        out.extend(UNKNOWN_SIZE);
        out.extend(element(
            &[0x15, 0x49, 0xA9, 0x66],
            &element(&[0x2A, 0xD7, 0xB1], &[0x01, 0x86, 0xA0]),
        ));
        out.extend(tracks_element(&element(
            &[0x23, 0xE3, 0x83],
            &33_333_333u32.to_be_bytes(),
        )));
        // Cluster at 3.5 s (35000 ticks), unknown size: a video frame, a 20 ms Opus packet
        // (TOC 0xFC: CELT, 20 ms, one frame), a 2×10 ms one (0xF1: 10 ms, two frames).
        out.extend([0x1F, 0x43, 0xB6, 0x75]);
        out.extend(UNKNOWN_SIZE);
        out.extend(element(&[0xE7], &35_000u32.to_be_bytes()));
        out.extend(block(0xA3, 1, 0, &[0x55; 300]));
        out.extend(block(0xA3, 2, 10, &[0xFC, 1, 2, 3]));
        out.extend(block(0xA3, 2, 210, &[0xF1, 1, 2, 3]));
        out.extend(element(&[0xEC], &[0; 20]));
        // Cluster at 4.5 s, sized: an Opus Block 10 ms earlier lasting 15 ms, a video frame at
        // 4.53 s (ending 4.5633 s, the end of the recording).
        let mut cluster = element(&[0xE7], &45_000u32.to_be_bytes());
        let mut group = block(0xA1, 2, -100, &[0xFC, 9, 9]);
        group.extend(element(&[0x9B], &[150]));
        cluster.extend(long_element(&[0xA0], &group));
        cluster.extend(block(0xA3, 1, 300, &[0x66; 1000]));
        out.extend(long_element(&[0x1F, 0x43, 0xB6, 0x75], &cluster));
        out.extend(long_element(&[0x1C, 0x53, 0xBB, 0x6B], &[0xBB; 40]));
        out
    }

    fn timing_of(pieces: impl IntoIterator<Item = impl AsRef<[u8]>>) -> Timing {
        let mut timing = Timing::new();
        for piece in pieces {
            timing.feed(piece.as_ref());
        }
        timing
    }

    fn assert_close(actual: Option<f64>, expected: f64, what: &str) {
        let actual = actual.unwrap_or_else(|| panic!("{what}: nothing measured"));
        assert!(
            (actual - expected).abs() < 2e-6,
            "{what}: {actual} instead of {expected}"
        );
    }

    #[test]
    fn timing_of_blocks_in_sized_and_unknown_sized_clusters() {
        let bytes = synthetic();
        let whole = timing_of([&bytes]);
        assert_eq!(whole.packets(), 5);
        assert_eq!(whole.resyncs(), 0);
        assert_close(whole.start(), 3.5, "start");
        assert_close(whole.duration(), 4.563_333_333 - 3.5, "duration");
        // Split anywhere, one byte at a time too: the same answer.
        for at in 0..=bytes.len() {
            let split = timing_of([&bytes[..at], &bytes[at..]]);
            assert_eq!(split.packets(), 5, "split at {at}");
            assert_eq!(split.duration(), whole.duration(), "split at {at}");
        }
        let bytewise = timing_of(bytes.chunks(1));
        assert_eq!(bytewise.duration(), whole.duration());
        assert_eq!(Timing::new().duration(), None);
    }

    #[test]
    fn timing_finds_the_next_cluster_after_damage() {
        let bytes = synthetic();
        // The second Cluster starts after the unknown-sized one's Void element.
        let second = bytes
            .windows(4)
            .rposition(|w| w == [0x1F, 0x43, 0xB6, 0x75])
            .expect("a second cluster");
        let mut damaged = bytes[..second].to_vec();
        damaged.extend([0x00, 0x00, 0x13, 0x37, 0x1F, 0x43]);
        damaged.extend_from_slice(&bytes[second..]);
        for size in [1, 3, 5, damaged.len()] {
            let timing = timing_of(damaged.chunks(size));
            assert!(timing.resyncs() >= 1, "pieces of {size}");
            assert_eq!(timing.packets(), 5, "pieces of {size}");
            assert_close(timing.duration(), 4.563_333_333 - 3.5, "duration");
        }
    }

    #[test]
    fn opus_packet_durations_from_the_toc_byte() {
        let ms = |toc: &[u8]| opus_duration_ns(toc).map(|ns| ns as f64 / 1e6);
        assert_eq!(ms(&[0xFC]), Some(20.0), "CELT FB 20 ms");
        assert_eq!(ms(&[0x78]), Some(20.0), "Hybrid FB 20 ms");
        assert_eq!(ms(&[0x18]), Some(60.0), "SILK NB 60 ms");
        assert_eq!(ms(&[0xE0 | 0x01]), Some(5.0), "CELT 2.5 ms, two frames");
        assert_eq!(
            ms(&[0xFB, 0x03]),
            Some(60.0),
            "CELT 20 ms, three frames (code 3)"
        );
        assert_eq!(ms(&[0xFB]), None);
        assert_eq!(ms(&[]), None);
    }

    /// What ffprobe's packet list says: first packet's time and end of the last, and the count.
    fn ffprobe_span(path: &std::path::Path) -> (f64, f64, u64) {
        let output = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "packet=pts_time,duration_time",
            ])
            .args(["-of", "csv=p=0"])
            .arg(path)
            .output()
            .expect("ffprobe runs (Debian's ffmpeg package)");
        assert!(output.status.success(), "{output:?}");
        let (mut start, mut end, mut packets) = (f64::MAX, f64::MIN, 0);
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let mut fields = line.split(',');
            let Some(pts) = fields.next().and_then(|f| f.parse::<f64>().ok()) else {
                continue;
            };
            let duration = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0.0);
            start = start.min(pts);
            end = end.max(pts + duration);
            packets += 1;
        }
        (start, end, packets)
    }

    /// A recording made by ffmpeg: testsrc2 and a sine in `video` + Opus, starting at 3.5 s like
    /// a browser's, written to a pipe (unknown sizes, as MediaRecorder writes) or to a file.
    fn ffmpeg_recording(dir: &std::path::Path, name: &str, video: &[&str], pipe: bool) -> Vec<u8> {
        ffmpeg_recording_of(dir, name, video, pipe, 4)
    }

    /// [`ffmpeg_recording`] lasting `seconds`.
    fn ffmpeg_recording_of(
        dir: &std::path::Path,
        name: &str,
        video: &[&str],
        pipe: bool,
        seconds: u32,
    ) -> Vec<u8> {
        let path = dir.join(name);
        let format = if video.contains(&"libx264") {
            "matroska"
        } else {
            "webm"
        };
        let mut command = std::process::Command::new("ffmpeg");
        command
            .args(["-hide_banner", "-loglevel", "error", "-y"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=15"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args(["-t", &seconds.to_string()])
            .args(video)
            .args(["-g", "30", "-c:a", "libopus", "-b:a", "32k"])
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
    }

    #[test]
    fn timing_matches_ffprobe_on_ffmpeg_recordings_split_anywhere() {
        let dir = tempfile::tempdir().expect("temp dir");
        let vp8 = ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8"];
        let vp9 = [
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
        ];
        let h264 = [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ];
        let cases: [(&str, &[&str], bool); 4] = [
            ("vp8-pipe.webm", &vp8, true),
            ("vp9-file.webm", &vp9, false),
            ("h264-pipe.mkv", &h264, true),
            ("h264-file.mkv", &h264, false),
        ];
        for (name, video, pipe) in cases {
            let bytes = ffmpeg_recording(dir.path(), name, video, pipe);
            let (start, end, packets) = ffprobe_span(&dir.path().join(name));
            assert!(packets > 100, "{name}: {packets} packets");
            // Whole, in MediaRecorder-like chunks, in odd sizes, and in pseudo-random pieces.
            let mut cuts = vec![bytes.len()];
            cuts.extend([1, 7, 4096, bytes.len() / 4 + 3]);
            for size in cuts {
                let timing = timing_of(bytes.chunks(size));
                assert_eq!(timing.packets(), packets, "{name} in pieces of {size}");
                assert_eq!(timing.resyncs(), 0, "{name}");
                assert_close(timing.start(), start, name);
                assert_close(timing.duration(), end - start, name);
            }
            let mut timing = Timing::new();
            let (mut at, mut seed) = (0, 12345u64);
            while at < bytes.len() {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let len = ((seed >> 33) % 40_000 + 1) as usize;
                let stop = (at + len).min(bytes.len());
                timing.feed(&bytes[at..stop]);
                at = stop;
            }
            assert_eq!(timing.packets(), packets, "{name} in random pieces");
            assert_close(timing.duration(), end - start, name);
        }
    }

    /// The spans of `chunks` fed in order, and the index and error of each chunk that fails
    /// [`ChunkSpan::check`].
    fn checked(chunks: &[&[u8]]) -> (Vec<ChunkSpan>, Vec<(usize, Discontinuity)>) {
        let mut timing = Timing::new();
        let spans: Vec<ChunkSpan> = chunks.iter().map(|c| timing.feed_chunk(c)).collect();
        let failed = spans
            .iter()
            .enumerate()
            .filter_map(|(i, span)| span.check().err().map(|e| (i, e)))
            .collect();
        (spans, failed)
    }

    #[test]
    fn chunk_checks_hold_a_chunk_against_the_ones_before_it() {
        let span = |before: Option<f64>, first: Option<f64>| ChunkSpan {
            before_ns: before.map(|s| (s * 1e9) as i128),
            first_ns: first.map(|s| (s * 1e9) as i128),
            ..ChunkSpan::default()
        };
        let cases = [
            (span(None, Some(3.5)), None),
            (span(Some(7.0), None), None),
            (span(Some(7.0), Some(7.033)), None),
            (span(Some(7.0), Some(6.5)), None),
            (span(Some(7.0), Some(6.0)), None),
            (span(Some(7.0), Some(5.9)), Some("more than 1 s before")),
            (span(Some(7.0), Some(17.0)), None),
            (span(Some(7.0), Some(17.1)), Some("more than 10 s after")),
            (span(Some(7.0), Some(-20.0)), Some("more than 1 s before")),
        ];
        for (span, failure) in cases {
            match (span.check(), failure) {
                (Ok(()), None) => {}
                (Err(err), Some(words)) => assert!(err.to_string().contains(words), "{err}"),
                (result, _) => panic!("{span:?}: {result:?}, expected {failure:?}"),
            }
        }
        let extreme = ChunkSpan {
            before_ns: Some(i128::MAX),
            first_ns: Some(i128::MIN),
            ..ChunkSpan::default()
        };
        assert!(matches!(
            extreme.check(),
            Err(Discontinuity::Backwards { .. })
        ));
    }

    #[test]
    fn chunks_in_order_pass_and_chunks_out_of_place_are_found() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A key frame, so a Cluster, every second; ten chunks of two seconds: each chunk holds
        // a Cluster start, from which the reader can read a chunk fed out of place.
        let vp8 = [
            "-c:v",
            "libvpx",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-force_key_frames",
            "expr:gte(t,n_forced)",
        ];
        let bytes = ffmpeg_recording_of(dir.path(), "vp8-20s.webm", &vp8, true, 20);
        let chunks: Vec<&[u8]> = bytes.chunks(bytes.len().div_ceil(10)).collect();
        let cluster = CLUSTER.to_be_bytes();
        assert!(
            chunks.iter().all(|c| c.windows(4).any(|w| w == cluster)),
            "a chunk without a Cluster start"
        );
        let (spans, failed) = checked(&chunks);
        assert_eq!(failed, [], "{spans:#?}");
        assert!(spans.iter().all(|s| s.resyncs == 0), "{spans:#?}");
        // Every packet but the last, a BlockGroup's, which ends with the stream.
        assert_eq!(
            spans.iter().map(|s| s.packets).sum::<u64>() + 1,
            timing_of(&chunks).packets()
        );

        // Each case: where the chunk out of place is found, and whether it goes back in time
        // (or jumps ahead).
        let mut swapped = chunks.clone();
        swapped.swap(4, 5);
        let mut again = chunks.clone();
        again[7] = chunks[2];
        let mut later = chunks.clone();
        later[1] = chunks[9];
        let cases = [
            ("two chunks swapped", swapped, 5, true),
            ("a chunk stored again under a later number", again, 7, true),
            ("a chunk from far later", later, 1, false),
        ];
        for (what, fed, at, back) in cases {
            let (spans, failed) = checked(&fed);
            match failed.first() {
                Some((index, found))
                    if *index == at && matches!(found, Discontinuity::Backwards { .. }) == back => {
                }
                _ => panic!("{what}: {failed:?} {spans:#?}"),
            }
        }
    }

    /// A stream whose first Cluster holds `cluster`'s children after a Timecode of
    /// `cluster_ticks` (its raw bytes), with `info` in Info and `track` in video track 1's
    /// entry; then a Cluster at 5 s with one 20 ms Opus packet of track 2.
    fn crafted(info: &[u8], track: &[u8], cluster_ticks: &[u8], cluster: &[u8]) -> Vec<u8> {
        let mut out = element(&[0x1A, 0x45, 0xDF, 0xA3], &element(&[0x42, 0x82], b"webm"));
        out.extend([0x18, 0x53, 0x80, 0x67]);
        out.extend(UNKNOWN_SIZE);
        out.extend(element(&[0x15, 0x49, 0xA9, 0x66], info));
        out.extend(tracks_element(track));
        out.extend([0x1F, 0x43, 0xB6, 0x75]);
        out.extend(UNKNOWN_SIZE);
        out.extend(element(&[0xE7], cluster_ticks));
        out.extend_from_slice(cluster);
        out.extend([0x1F, 0x43, 0xB6, 0x75]);
        out.extend(UNKNOWN_SIZE);
        out.extend(element(&[0xE7], &5_000u16.to_be_bytes()));
        out.extend(block(0xA3, 2, 0, &[0xFC, 1, 2]));
        out
    }

    /// A SimpleBlock of track 1 with Xiph lacing and `frames` frames.
    fn laced(frames: u8) -> Vec<u8> {
        let body = [0x81, 0x00, 0x00, 0x82, frames - 1, 0x10, 0x10, 0x10];
        long_element(&[0xA3], &body)
    }

    #[test]
    fn values_that_do_not_fit_are_damaged_data_not_a_wrap() {
        let max = u64::MAX.to_be_bytes();
        let ticks_max = (i64::MAX as u64).to_be_bytes();
        let scale = |bytes: &[u8]| element(&[0x2A, 0xD7, 0xB1], bytes);
        let default_duration = |bytes: &[u8]| element(&[0x23, 0xE3, 0x83], bytes);
        let codec_delay = |bytes: &[u8]| element(&[0x56, 0xAA], bytes);
        let simple = block(0xA3, 1, 1, &[0x10; 4]);
        let mut group = block(0xA1, 1, 0, &[0x10; 4]);
        group.extend(element(&[0x9B], &max));
        let group = long_element(&[0xA0], &group);
        let stray = block(0xA3, 9, 0, &[0x10; 4]);
        let none = &[][..];
        let damaged = [
            (
                "timecode + relative past i64",
                crafted(none, none, &ticks_max, &simple),
            ),
            ("timecode past i64", crafted(none, none, &max, &simple)),
            (
                "lace count × DefaultDuration",
                crafted(none, &default_duration(&max), &[0], &laced(255)),
            ),
            (
                "CodecDelay",
                crafted(none, &codec_delay(&max), &[0], &simple),
            ),
            ("BlockDuration × scale", crafted(none, none, &[0], &group)),
            ("an undeclared track", crafted(none, none, &[0], &stray)),
        ];
        let fine = [
            // The largest scale times the largest time still fits in nanoseconds as i128.
            (
                "largest scale and time",
                crafted(
                    &scale(&max),
                    none,
                    &ticks_max,
                    &block(0xA3, 1, 0, &[0x10; 4]),
                ),
            ),
            // Values of nine bytes are ignored (defaults apply), not folded into eight.
            (
                "nine-byte scale",
                crafted(&scale(&[1; 9]), none, &[0], &simple),
            ),
            (
                "nine-byte DefaultDuration",
                crafted(none, &default_duration(&[1; 9]), &[0], &laced(3)),
            ),
        ];
        let cases = damaged.iter().map(|(what, bytes)| (what, bytes, true));
        let cases = cases.chain(fine.iter().map(|(what, bytes)| (what, bytes, false)));
        for (what, bytes, damaged) in cases {
            for size in [1, 5, bytes.len()] {
                let timing = timing_of(bytes.chunks(size));
                assert_eq!(timing.resyncs() > 0, damaged, "{what}");
                if damaged {
                    assert_eq!(timing.packets(), 1, "{what}: only the packet after it");
                    assert_close(timing.start(), 5.0, what);
                } else {
                    assert_eq!(timing.packets(), 2, "{what}");
                }
                let (start, end, _) = timing.summary();
                assert!(start <= end, "{what}: {start:?} {end:?}");
            }
        }
    }
}
