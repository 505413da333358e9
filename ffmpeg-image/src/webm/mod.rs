//! Reads WebM/Matroska recordings as the worker needs them, from their bytes, without a second
//! program. Two jobs, a file each: [`codecs`] answers from the header which codecs a recording
//! holds (`header.rs`), and [`Timing`] follows the stream as it is fed to ffmpeg to learn its
//! packets' time span (`timing.rs`). What both share lives here: element ids, the EBML
//! variable-length integers and a reader of elements in a buffer.

mod header;
#[cfg(test)]
mod proptests;
mod timing;

pub use header::codecs;
pub use timing::{ChunkSpan, Discontinuity, MAX_BACKWARDS_NS, MAX_JUMP_NS, Timing};

const EBML: u32 = 0x1A45_DFA3;
const SEGMENT: u32 = 0x1853_8067;
const CLUSTER: u32 = 0x1F43_B675;
const TRACKS: u32 = 0x1654_AE6B;
const TRACK_ENTRY: u32 = 0xAE;
const TRACK_NUMBER: u32 = 0xD7;
const TRACK_TYPE: u32 = 0x83;
const CODEC_ID: u32 = 0x86;
const DEFAULT_DURATION: u32 = 0x0023_E383;
const CODEC_DELAY: u32 = 0x56AA;
const INFO: u32 = 0x1549_A966;
const TIMECODE_SCALE: u32 = 0x002A_D7B1;
const SEEK_HEAD: u32 = 0x114D_9B74;
const CUES: u32 = 0x1C53_BB6B;
const TAGS: u32 = 0x1254_C367;
const CHAPTERS: u32 = 0x1043_A770;
const ATTACHMENTS: u32 = 0x1941_A469;
const CLUSTER_TIMECODE: u32 = 0xE7;
const SIMPLE_BLOCK: u32 = 0xA3;
const BLOCK_GROUP: u32 = 0xA0;
const BLOCK: u32 = 0xA1;
const BLOCK_DURATION: u32 = 0x9B;

/// An unsigned integer element's value.
/// `None` when it has more than 8 bytes: damaged, since no value the worker reads needs more,
/// and folding them would drop the high bytes silently.
fn uint(value: &[u8]) -> Option<u64> {
    (value.len() <= 8).then(|| value.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)))
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// An element's id and size (`None` inside for "unknown size").
    fn element(&mut self) -> Option<(u32, Option<u64>)> {
        let id = self.vint(4, false)?;
        let size = self.vint(8, true)?;
        let unknown = size == u64::MAX;
        Some((u32::try_from(id).ok()?, (!unknown).then_some(size)))
    }

    /// A variable-length integer of at most `max_len` bytes. Ids keep their length marker;
    /// sizes drop it, and all ones ("unknown") becomes `u64::MAX`.
    fn vint(&mut self, max_len: u32, is_size: bool) -> Option<u64> {
        let first = *self.data.get(self.pos)?;
        let len = first.leading_zeros() + 1;
        if len > max_len {
            return None;
        }
        let bytes = self.data.get(self.pos..self.pos + len as usize)?;
        self.pos += len as usize;
        if !is_size {
            return Some(bytes.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)));
        }
        let marker_cleared = u64::from(first) & ((1u64 << (8 - len)) - 1);
        let value = bytes[1..]
            .iter()
            .fold(marker_cleared, |n, &b| (n << 8) | u64::from(b));
        let all_ones = (1u64 << (7 * len)) - 1;
        Some(if value == all_ones { u64::MAX } else { value })
    }

    fn take(&mut self, size: u64) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(usize::try_from(size).ok()?)?;
        let bytes = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    fn skip(&mut self, size: u64) -> Option<()> {
        self.take(size).map(|_| ())
    }
}

/// Test recordings built element by element.
#[cfg(test)]
mod build {
    /// An element with a one-byte size.
    pub fn element(id: &[u8], body: &[u8]) -> Vec<u8> {
        assert!(body.len() < 127);
        let mut out = id.to_vec();
        out.push(0x80 | body.len() as u8);
        out.extend_from_slice(body);
        out
    }

    /// An element with an 8-byte size, so any body fits.
    pub fn long_element(id: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = id.to_vec();
        out.push(0x01);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_length_integers() {
        let mut reader = Reader {
            data: &[0x81, 0x40, 0x02, 0xFF, 0x1A, 0x45, 0xDF, 0xA3],
            pos: 0,
        };
        assert_eq!(reader.vint(8, true), Some(1));
        assert_eq!(reader.vint(8, true), Some(2));
        assert_eq!(
            reader.vint(8, true),
            Some(u64::MAX),
            "all ones: unknown size"
        );
        assert_eq!(reader.vint(4, false), Some(0x1A45_DFA3));
    }
}
