//! Reads the codecs of a WebM/Matroska recording from its header, without ffprobe.
//!
//! The worker must know the codecs before ffmpeg starts (H.264 is copied into MP4, anything else
//! encoded). Starting ffprobe for that costs a process launch on every track, in series with
//! everything else; the header answers in microseconds. Only what is needed is parsed: the
//! EBML header, then the Segment's children up to the first Cluster, where `Tracks` lists each
//! track's type and codec id. Anything unexpected returns `None` and the caller asks ffprobe.

use super::{CLUSTER, CODEC_ID, EBML, Reader, SEGMENT, TRACK_ENTRY, TRACK_TYPE, TRACKS, uint};
use crate::media::InputStreams;

/// `TrackType` values.
const VIDEO: u64 = 1;
const AUDIO: u64 = 2;

/// The streams the header declares, named as ffmpeg names their codecs; `None` when the header
/// is incomplete, not Matroska, or names a codec this function does not know.
pub fn codecs(data: &[u8]) -> Option<InputStreams> {
    let mut reader = Reader { data, pos: 0 };
    let (id, size) = reader.element()?;
    if id != EBML {
        return None;
    }
    reader.skip(size?)?;
    let (id, _segment_size) = reader.element()?;
    if id != SEGMENT {
        return None;
    }
    // Children of the Segment (its size may be unknown: a live stream's is).
    loop {
        let (id, size) = reader.element()?;
        match id {
            TRACKS => return tracks(reader.take(size?)?),
            CLUSTER => return None,
            _ => reader.skip(size?)?,
        }
    }
}

fn tracks(data: &[u8]) -> Option<InputStreams> {
    let mut reader = Reader { data, pos: 0 };
    let mut streams = InputStreams::default();
    while !reader.at_end() {
        let (id, size) = reader.element()?;
        let body = reader.take(size?)?;
        if id != TRACK_ENTRY {
            continue;
        }
        let mut entry = Reader { data: body, pos: 0 };
        let (mut kind, mut codec) = (None, None);
        while !entry.at_end() {
            let (id, size) = entry.element()?;
            let value = entry.take(size?)?;
            match id {
                TRACK_TYPE => kind = Some(uint(value)?),
                CODEC_ID => {
                    codec = Some(
                        std::str::from_utf8(value)
                            .ok()?
                            .trim_end_matches('\0')
                            .to_owned(),
                    )
                }
                _ => {}
            }
        }
        let name = ffmpeg_codec(codec.as_deref()?)?;
        match kind? {
            VIDEO if streams.video.is_none() => streams.video = Some(name.to_owned()),
            AUDIO if streams.audio.is_none() => streams.audio = Some(name.to_owned()),
            _ => {}
        }
    }
    (streams.video.is_some() || streams.audio.is_some()).then_some(streams)
}

/// ffmpeg's name for a Matroska codec id, for the codecs browsers record.
fn ffmpeg_codec(codec_id: &str) -> Option<&'static str> {
    Some(match codec_id {
        "V_VP8" => "vp8",
        "V_VP9" => "vp9",
        "V_AV1" => "av1",
        "V_MPEG4/ISO/AVC" => "h264",
        "A_OPUS" => "opus",
        "A_VORBIS" => "vorbis",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::super::build::element;
    use super::*;

    fn track(kind: u8, codec: &str) -> Vec<u8> {
        let mut body = element(&[0x83], &[kind]);
        body.extend(element(&[0x86], codec.as_bytes()));
        element(&[0xAE], &body)
    }

    /// EBML header, a Segment of unknown size, Info, Tracks, then a Cluster.
    fn header(tracks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = element(&[0x1A, 0x45, 0xDF, 0xA3], &element(&[0x42, 0x82], b"webm"));
        out.extend([
            0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        out.extend(element(
            &[0x15, 0x49, 0xA9, 0x66],
            &element(&[0x2A, 0xD7, 0xB1], &[0x0F, 0x42, 0x40]),
        ));
        out.extend(element(&[0xEC], &[0; 10])); // Void
        out.extend(element(&[0x16, 0x54, 0xAE, 0x6B], &tracks.concat()));
        out.extend([
            0x1F, 0x43, 0xB6, 0x75, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        out
    }

    #[test]
    fn reads_the_codecs_browsers_record() {
        let cases = [
            (
                vec![track(1, "V_VP8"), track(2, "A_OPUS")],
                Some("vp8"),
                Some("opus"),
            ),
            (
                vec![track(2, "A_OPUS"), track(1, "V_VP9")],
                Some("vp9"),
                Some("opus"),
            ),
            (
                vec![track(1, "V_MPEG4/ISO/AVC"), track(2, "A_OPUS")],
                Some("h264"),
                Some("opus"),
            ),
            (vec![track(2, "A_OPUS")], None, Some("opus")),
            (vec![track(1, "V_AV1")], Some("av1"), None),
        ];
        for (tracks, video, audio) in cases {
            let streams = codecs(&header(&tracks)).expect("readable header");
            assert_eq!(streams.video.as_deref(), video);
            assert_eq!(streams.audio.as_deref(), audio);
        }
    }

    #[test]
    fn gives_up_on_what_it_does_not_know() {
        let full = header(&[track(1, "V_VP8"), track(2, "A_OPUS")]);
        // Cut inside Tracks, garbage, another format, an unknown codec, no Tracks at all.
        assert_eq!(codecs(&full[..full.len() - 30]), None);
        assert_eq!(codecs(b"\x00\x01\x02 not a recording"), None);
        assert_eq!(codecs(&[]), None);
        assert_eq!(codecs(b"\x00\x00\x00\x20ftypisom"), None);
        assert_eq!(
            codecs(&header(&[track(1, "V_VP8"), track(2, "A_PCM/INT/LIT")])),
            None
        );
        assert_eq!(codecs(&header(&[])), None);
    }
}
