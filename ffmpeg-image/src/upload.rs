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
use std::hash::{DefaultHasher, Hasher};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use crate::error::WorkerError;
use crate::storage::Upload;

/// A part is only sent once the file is this far past its end: the muxer may still be finishing
/// the bytes just written.
const SETTLE_MARGIN: u64 = 256 * 1024;
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

/// A part already sent: where it ended and what its bytes hashed to.
#[derive(Debug, Clone)]
pub struct SentPart {
    end: u64,
    hash: u64,
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
/// then completes the upload. Returns the file's size.
pub async fn finish(
    upload: &Upload,
    path: &Path,
    plan: PartPlan,
    sent: Sent,
) -> Result<u64, WorkerError> {
    let len = file_len(path).await?;
    let parts = plan.parts(len);
    let mut etags: BTreeMap<i32, String> = BTreeMap::new();
    let mut todo = Vec::new();
    for number in 1..=parts {
        let (start, end) = plan.range(number, len);
        match sent.get(&number) {
            Some(part)
                if part.end == end && hash(&read_range(path, start, end).await?) == part.hash =>
            {
                etags.insert(number, part.etag.clone());
            }
            Some(_) => {
                tracing::info!(
                    key = upload.key(),
                    part = number,
                    "part changed after it was sent, sending it again"
                );
                todo.push(number);
            }
            None => todo.push(number),
        }
    }
    let reused = etags.len();
    let mut uploads = futures::stream::iter(todo)
        .map(|number| {
            let (start, end) = plan.range(number, len);
            send_part(upload, path, number, start, end)
        })
        .buffer_unordered(plan.concurrency);
    while let Some(result) = uploads.next().await {
        let (number, part) = result?;
        etags.insert(number, part.etag);
    }
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

async fn send_part(
    upload: &Upload,
    path: &Path,
    number: i32,
    start: u64,
    end: u64,
) -> Result<(i32, SentPart), WorkerError> {
    let body = read_range(path, start, end).await?;
    let hash = hash(&body);
    let etag = upload.put_part(number, body).await?;
    Ok((number, SentPart { end, hash, etag }))
}

fn hash(bytes: &[u8]) -> u64 {
    // Compared only within this process, so the std hasher's unstable algorithm does not matter.
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
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

async fn read_range(path: &Path, start: u64, end: u64) -> Result<Bytes, WorkerError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|err| scratch_error("opening", path, err))?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|err| scratch_error("reading", path, err))?;
    let mut buffer = vec![0; usize::try_from(end - start).unwrap_or(0)];
    file.read_exact(&mut buffer)
        .await
        .map_err(|err| scratch_error("reading", path, err))?;
    Ok(Bytes::from(buffer))
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

    #[test]
    fn equal_bytes_hash_equal() {
        assert_eq!(hash(b"cluster"), hash(b"cluster"));
        assert_ne!(hash(b"cluster"), hash(b"Cluster"));
    }
}
