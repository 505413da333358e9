//! Multipart upload of a scratch file, optionally while ffmpeg is still writing it.
//!
//! Parts have a fixed size (R2 wants every part but the last to be the same size), so part `n`
//! always covers bytes `[(n-1)·size, n·size)`. While ffmpeg writes a Matroska/WebM file, parts 2
//! and up are uploaded as soon as the file has grown past them: that muxer only goes back to the
//! first few kilobytes at the end (duration, seek head), which part 1 covers, and part 1 goes last.
//! The promise is not taken on trust: each part's content is hashed when sent and compared with
//! the finished file, and any part that changed is sent again before the upload is completed.
//! So the output is both streamed (the upload ends moments after ffmpeg) and a proper seekable
//! file with its duration and cues, which a WebM written to a pipe is not.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::primitives::{ByteStream, Length};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use crate::error::WorkerError;
use crate::storage::Upload;

/// A part is only sent once the file is this far past its end: the muxer may still be finishing
/// the bytes just written.
const SETTLE_MARGIN: u64 = 256 * 1024;
/// Reads of the scratch file (hashing, and the SDK streaming a part) go in blocks of this size.
const READ_BLOCK: usize = 256 * 1024;
/// How often a growing file is looked at.
const POLL: Duration = Duration::from_millis(50);

/// How parts are cut and sent.
#[derive(Debug, Clone, Copy)]
pub struct PartPlan {
    pub part_size: u64,
    pub concurrency: usize,
}

impl PartPlan {
    /// Number of parts of a file of `len` bytes (at least one).
    pub fn parts(&self, len: u64) -> i32 {
        i32::try_from(len.div_ceil(self.part_size).max(1)).unwrap_or(i32::MAX)
    }

    /// Byte range of part `number` in a file of `len` bytes.
    pub fn range(&self, number: i32, len: u64) -> (u64, u64) {
        let start = u64::try_from(number - 1).unwrap_or(0) * self.part_size;
        (start.min(len), (start + self.part_size).min(len))
    }
}

/// A part already sent: where it ended and the CRC-32 of its bytes.
#[derive(Debug, Clone)]
pub struct SentPart {
    end: u64,
    hash: u32,
    etag: String,
}

/// Parts sent so far, by number.
pub type Sent = BTreeMap<i32, SentPart>;

/// Sends the parts of `path` (after the first) that ffmpeg has finished writing, until
/// `writer_done` is cancelled. The rest is [`finish`]'s job.
pub async fn upload_while_writing(
    upload: &Upload,
    path: &Path,
    plan: PartPlan,
    writer_done: CancellationToken,
) -> Result<Sent, WorkerError> {
    let mut sent = Sent::new();
    let mut in_flight = FuturesUnordered::new();
    let mut next = 2;
    while !writer_done.is_cancelled() {
        let len = file_len(path).await?;
        while in_flight.len() < plan.concurrency {
            let (start, end) = (
                u64::try_from(next - 1).unwrap_or(0) * plan.part_size,
                u64::try_from(next).unwrap_or(0) * plan.part_size,
            );
            if end + SETTLE_MARGIN > len {
                break;
            }
            in_flight.push(send_part(upload, path, next, start, end));
            next += 1;
        }
        tokio::select! {
            Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                let (number, part) = result?;
                sent.insert(number, part);
            }
            _ = tokio::time::sleep(POLL) => {}
            _ = writer_done.cancelled() => {}
        }
    }
    while let Some(result) = in_flight.next().await {
        let (number, part) = result?;
        sent.insert(number, part);
    }
    Ok(sent)
}

/// Sends every part of the finished file `path` that was not already sent with the same bytes,
/// then completes the upload. Returns the file's size. The parts never sent go at once, while the
/// ones sent during writing are compared with the finished file; any of those that changed is
/// sent again after.
pub async fn finish(
    upload: &Upload,
    path: &Path,
    plan: PartPlan,
    sent: Sent,
) -> Result<u64, WorkerError> {
    let len = file_len(path).await?;
    let (sent_before, unsent): (Vec<i32>, Vec<i32>) =
        (1..=plan.parts(len)).partition(|number| sent.contains_key(number));
    let check = async {
        let mut kept = BTreeMap::new();
        let mut changed = Vec::new();
        for number in sent_before {
            let (start, end) = plan.range(number, len);
            let part = &sent[&number];
            if part.end == end && hash_range(path, start, end).await? == part.hash {
                kept.insert(number, part.etag.clone());
            } else {
                tracing::info!(
                    key = upload.key(),
                    part = number,
                    "part changed after it was sent, sending it again"
                );
                changed.push(number);
            }
        }
        Ok::<_, WorkerError>((kept, changed))
    };
    let ((mut etags, changed), sent_now) =
        tokio::try_join!(check, send_parts(upload, path, plan, len, unsent))?;
    let reused = etags.len();
    etags.extend(sent_now);
    etags.extend(send_parts(upload, path, plan, len, changed).await?);
    let parts: Vec<(i32, String)> = etags.into_iter().collect();
    tracing::debug!(
        key = upload.key(),
        parts = parts.len(),
        reused,
        bytes = len,
        "completing upload"
    );
    upload.complete(&parts).await?;
    Ok(len)
}

/// Sends parts `numbers` of the finished file, `plan.concurrency` at once; returns their ETags.
async fn send_parts(
    upload: &Upload,
    path: &Path,
    plan: PartPlan,
    len: u64,
    numbers: Vec<i32>,
) -> Result<BTreeMap<i32, String>, WorkerError> {
    let mut etags = BTreeMap::new();
    let mut uploads = futures::stream::iter(numbers)
        .map(|number| {
            let (start, end) = plan.range(number, len);
            send_part(upload, path, number, start, end)
        })
        .buffer_unordered(plan.concurrency);
    while let Some(result) = uploads.next().await {
        let (number, part) = result?;
        etags.insert(number, part.etag);
    }
    Ok(etags)
}

async fn send_part(
    upload: &Upload,
    path: &Path,
    number: i32,
    start: u64,
    end: u64,
) -> Result<(i32, SentPart), WorkerError> {
    // Hashed just before the SDK reads the same range: if the range changes in between, the final
    // comparison in `finish` sees it and the part is sent again.
    let hash = hash_range(path, start, end).await?;
    let body = ByteStream::read_from()
        .path(path)
        .offset(start)
        .length(Length::Exact(end - start))
        .buffer_size(READ_BLOCK)
        .build()
        .await
        .map_err(|err| {
            WorkerError::Processing(format!(
                "reading {} in the scratch dir: {err}",
                path.display()
            ))
        })?;
    let etag = upload.put_part(number, body).await?;
    Ok((number, SentPart { end, hash, etag }))
}

fn scratch_error(what: &str, path: &Path, err: std::io::Error) -> WorkerError {
    WorkerError::Processing(format!(
        "{what} {} in the scratch dir: {err}",
        path.display()
    ))
}

async fn file_len(path: &Path) -> Result<u64, WorkerError> {
    match tokio::fs::metadata(path).await {
        Ok(meta) => Ok(meta.len()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(scratch_error("reading", path, err)),
    }
}

/// CRC-32 of bytes `[start, end)` of `path`, read in blocks.
async fn hash_range(path: &Path, start: u64, end: u64) -> Result<u32, WorkerError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|err| scratch_error("opening", path, err))?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|err| scratch_error("reading", path, err))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0; READ_BLOCK];
    let mut left = end - start;
    while left > 0 {
        let want = usize::try_from(left.min(READ_BLOCK as u64)).unwrap_or(READ_BLOCK);
        file.read_exact(&mut buffer[..want])
            .await
            .map_err(|err| scratch_error("reading", path, err))?;
        hasher.update(&buffer[..want]);
        left -= want as u64;
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn parts_have_a_fixed_size_and_the_last_takes_the_rest() {
        let plan = PartPlan {
            part_size: 5 * MIB,
            concurrency: 2,
        };
        assert_eq!(plan.parts(0), 1);
        assert_eq!(plan.parts(1), 1);
        assert_eq!(plan.parts(5 * MIB), 1);
        assert_eq!(plan.parts(5 * MIB + 1), 2);
        assert_eq!(plan.range(1, 12 * MIB), (0, 5 * MIB));
        assert_eq!(plan.range(2, 12 * MIB), (5 * MIB, 10 * MIB));
        assert_eq!(plan.range(3, 12 * MIB), (10 * MIB, 12 * MIB));
        assert_eq!(plan.range(1, 100), (0, 100));
    }

    #[tokio::test]
    async fn ranges_hash_by_content() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("file");
        let mut bytes: Vec<u8> = (0..3 * READ_BLOCK + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("written");
        let whole = hash_range(&path, 0, bytes.len() as u64)
            .await
            .expect("hashes");
        assert_eq!(whole, crc32fast::hash(&bytes));
        let middle = hash_range(&path, 10, 10 + READ_BLOCK as u64 + 5)
            .await
            .expect("hashes");
        assert_eq!(middle, crc32fast::hash(&bytes[10..10 + READ_BLOCK + 5]));
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).expect("rewritten");
        assert_ne!(
            hash_range(&path, 10, 10 + READ_BLOCK as u64 + 5)
                .await
                .expect("hashes"),
            middle
        );
        assert!(
            hash_range(&path, 0, bytes.len() as u64 + 1).await.is_err(),
            "past the end"
        );
    }

    /// Parts sent while the file was written are kept if unchanged and sent again if changed;
    /// parts never sent go at the end; the object is the finished file.
    #[tokio::test(flavor = "multi_thread")]
    async fn finish_sends_what_was_not_sent_and_what_changed() {
        let server = mixdown_testkit::s3::S3Server::start()
            .await
            .expect("S3 server");
        let bucket = server.create_bucket().await;
        let storage = crate::storage::Storage::from_client(server.client(), &bucket);
        let upload = storage
            .create_upload("out/alice.webm", "video/webm")
            .await
            .expect("created");
        let plan = PartPlan {
            part_size: 5 * MIB,
            concurrency: 2,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("alice.webm");
        let mut bytes: Vec<u8> = (0..(15 * MIB + 1000) as usize)
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&path, &bytes).expect("written");
        let mut sent = Sent::new();
        for number in [2, 3] {
            let (start, end) = plan.range(number, bytes.len() as u64);
            let (number, part) = send_part(&upload, &path, number, start, end)
                .await
                .expect("sent");
            sent.insert(number, part);
        }
        // The writer goes back into part 2 (and part 1) after they were sent.
        bytes[10] ^= 0xFF;
        bytes[5 * MIB as usize + 7] ^= 0xFF;
        std::fs::write(&path, &bytes).expect("rewritten");

        let size = finish(&upload, &path, plan, sent).await.expect("finished");
        assert_eq!(size, bytes.len() as u64);
        let object = server
            .client()
            .get_object()
            .bucket(&bucket)
            .key("out/alice.webm")
            .send()
            .await
            .expect("stored");
        let stored = object.body.collect().await.expect("read").into_bytes();
        assert!(stored == bytes, "the object is not the finished file");
        assert_eq!(
            server.request_count("UploadPart"),
            2 + 3,
            "parts 1, 2 (again) and 4"
        );
    }
}
