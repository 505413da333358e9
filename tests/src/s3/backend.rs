//! The S3 implementation behind the server: `s3s-fs`, with multipart uploads made to behave like
//! R2 where `s3s-fs` differs in ways a client would notice.
//!
//! - CompleteMultipartUpload is checked before `s3s-fs` sees it. `s3s-fs` forgets the upload
//!   first and checks the parts while it concatenates them, so a refused Complete (a part too
//!   small, a wrong ETag, which it does not check at all) would leave no upload to retry or abort
//!   and its parts orphaned, and a failed run would look clean. Here the upload stays open.
//! - An unknown upload id is NoSuchUpload (404), not AccessDenied.
//! - ListMultipartUploads is implemented (without delimiter grouping).
//! - CompleteMultipartUpload is cheap, as on R2 where it is a metadata operation: each part's
//!   MD5 (its ETag) is remembered when UploadPart stores it, so checking the ETags reads nothing
//!   again; the parts are concatenated with `std::io::copy` (`copy_file_range` on Linux, no
//!   copy through user space); and the object's ETag is computed the S3 way, the MD5 of the
//!   parts' MD5s and `-N`, without hashing the object. `s3s-fs` reads and hashes every byte
//!   twice for a Complete (the check above, then its own copy), over a second on 200 MB.
//!   Conditional Completes (If-Match, If-None-Match) and unusual keys still go to `s3s-fs`.
//!
//! - PutObject and CreateMultipartUpload into a bucket that does not exist are NoSuchBucket (404);
//!   `s3s-fs` would create the bucket's directory on the way and store the object.
//!
//! - A bucket's CORS and lifecycle configurations (Put/Get/DeleteBucketCors,
//!   Put/GetBucketLifecycleConfiguration) are stored as given and served back, the calls the
//!   chart's bucket set-up makes; they are not enforced (the server answers every origin, and
//!   nothing expires).
//!
//! One difference stays: parts must be numbered 1, 2, 3, ... without gaps (R2 allows gaps); that
//! is refused as InvalidPartOrder, with the upload left open.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use s3s::crypto::{Checksum, Md5};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use super::storage;

/// Parts other than the last must be at least this big.
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

pub(crate) struct Backend {
    fs: FileSystem,
    root: PathBuf,
    /// What UploadPart stored, by upload and part number.
    parts: Mutex<HashMap<(Uuid, i32), PartDigest>>,
    /// Each bucket's CORS rules and lifecycle rules, as last put.
    settings: Mutex<HashMap<String, BucketSettings>>,
}

#[derive(Default)]
struct BucketSettings {
    cors: Option<CORSRules>,
    lifecycle: Option<LifecycleRules>,
}

/// A part as UploadPart stored it: the file (device and inode: a part uploaded again is a new
/// file, renamed over the old one), its size and its MD5.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartDigest {
    file: (u64, u64),
    size: u64,
    md5: [u8; 16],
}

/// A part checked for a Complete: where it is and its MD5.
struct CheckedPart {
    path: PathBuf,
    md5: [u8; 16],
}

impl Backend {
    /// `root` must be the directory `fs` serves.
    pub(crate) fn new(fs: FileSystem, root: PathBuf) -> Backend {
        Backend {
            fs,
            root,
            parts: Mutex::new(HashMap::new()),
            settings: Mutex::new(HashMap::new()),
        }
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, HashMap<String, BucketSettings>> {
        self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn part_digests(&self) -> std::sync::MutexGuard<'_, HashMap<(Uuid, i32), PartDigest>> {
        self.parts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// NoSuchBucket unless `bucket` exists.
    fn bucket_exists(&self, bucket: &str) -> S3Result<()> {
        if self.root.join(bucket).is_dir() {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    fn forget_parts(&self, upload_id: Uuid) {
        self.part_digests().retain(|(id, _), _| *id != upload_id);
    }

    /// Size and MD5 of a stored part: remembered from UploadPart if the file is still the one
    /// it wrote, read otherwise (UploadPartCopy, a server restarted on the same directory).
    async fn part_digest(&self, upload_id: Uuid, number: i32) -> std::io::Result<(u64, [u8; 16])> {
        let path = storage::part_path(&self.root, upload_id, number);
        let meta = tokio::fs::metadata(&path).await?;
        let remembered = self.part_digests().get(&(upload_id, number)).cloned();
        if let Some(part) = remembered
            && part.file == (meta.dev(), meta.ino())
            && part.size == meta.len()
        {
            return Ok((part.size, part.md5));
        }
        digest(&path).await
    }

    fn open_upload(&self, upload_id: &str) -> S3Result<Uuid> {
        storage::open_upload(&self.root, upload_id).ok_or_else(|| s3_error!(NoSuchUpload))
    }

    /// Refuses a Complete request that `s3s-fs` would refuse halfway, or not at all; returns the
    /// parts it names.
    async fn check_complete(
        &self,
        upload_id: Uuid,
        upload: Option<&CompletedMultipartUpload>,
    ) -> S3Result<Vec<CheckedPart>> {
        let parts = upload.and_then(|u| u.parts.as_deref()).unwrap_or_default();
        if parts.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "You must specify at least one part"
            ));
        }
        let mut checked = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let number = part
                .part_number
                .ok_or_else(|| s3_error!(MalformedXML, "a part has no part number"))?;
            if usize::try_from(number).ok() != Some(index + 1) {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "parts must be numbered 1, 2, 3, ... in order"
                ));
            }
            let (size, md5) = self
                .part_digest(upload_id, number)
                .await
                .map_err(|_| s3_error!(InvalidPart, "part {number} was not uploaded"))?;
            if part.e_tag.as_ref().map(ETag::value) != Some(hex(&md5).as_str()) {
                return Err(s3_error!(
                    InvalidPart,
                    "the ETag of part {number} does not match"
                ));
            }
            if index + 1 < parts.len() && size < MIN_PART_SIZE {
                return Err(s3_error!(
                    EntityTooSmall,
                    "part {number} is {size} bytes, less than 5 MiB"
                ));
            }
            checked.push(CheckedPart {
                path: storage::part_path(&self.root, upload_id, number),
                md5,
            });
        }
        Ok(checked)
    }

    /// Completes a checked upload: concatenates its parts into the object, gives it the
    /// multipart ETag, and forgets the upload, in the order `s3s-fs` does (the upload file goes
    /// first, see `storage::open_uploads`). Until the object is written nothing changes, so a
    /// failure leaves the upload open to retry or abort.
    async fn complete(
        &self,
        upload_id: Uuid,
        bucket: &str,
        key: &str,
        parts: Vec<CheckedPart>,
    ) -> std::io::Result<String> {
        let mut e_tag = Md5::new();
        for part in &parts {
            e_tag.update(&part.md5);
        }
        let e_tag = format!("{}-{}", hex(&e_tag.finalize()), parts.len());
        let object = self.root.join(bucket).join(key);
        let temp = self
            .root
            // The name `s3s-fs` removes when it starts, should one be left behind.
            .join(format!(".tmp.mixdown-{}.internal.part", Uuid::new_v4()));
        let paths: Vec<PathBuf> = parts.into_iter().map(|part| part.path).collect();
        let concatenated = tokio::task::spawn_blocking({
            let temp = temp.clone();
            move || concatenate(&paths, &temp)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|result| result);
        if let Err(err) = concatenated {
            let _ = std::fs::remove_file(&temp);
            return Err(err);
        }

        storage::finish_upload(&self.root, upload_id, bucket, key, &e_tag)?;
        if let Some(dir) = object.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(&temp, &object)?;
        Ok(e_tag)
    }
}

/// Writes the files at `parts`, one after the other, into a new file at `to`.
fn concatenate(parts: &[PathBuf], to: &Path) -> std::io::Result<()> {
    let mut out = std::fs::File::create(to)?;
    for part in parts {
        // File to file: `copy_file_range`, the kernel copies (or shares) the blocks.
        std::io::copy(&mut std::fs::File::open(part)?, &mut out)?;
    }
    Ok(())
}

/// Lowercase hex, as ETags are written.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the fast Complete can write `key` of `bucket` as a plain path under the root
/// (`s3s-fs` resolves `.` and `..` in keys its own way; those keys go to it).
fn plain_object_path(root: &Path, bucket: &str, key: &str) -> bool {
    root.join(bucket).is_dir()
        && !key.is_empty()
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// The MD5 in a part's ETag (32 hex digits).
fn parse_md5(e_tag: &str) -> Option<[u8; 16]> {
    let mut md5 = [0; 16];
    if e_tag.len() != 32 {
        return None;
    }
    for (index, byte) in md5.iter_mut().enumerate() {
        *byte = u8::from_str_radix(e_tag.get(2 * index..2 * index + 2)?, 16).ok()?;
    }
    Some(md5)
}

/// Size and MD5 of a file.
async fn digest(path: &Path) -> std::io::Result<(u64, [u8; 16])> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut md5 = Md5::new();
    let mut size = 0;
    let mut buf = vec![0; 1 << 16];
    loop {
        let read = file.read(&mut buf).await?;
        if read == 0 {
            break;
        }
        md5.update(&buf[..read]);
        size += read as u64;
    }
    Ok((size, md5.finalize()))
}

#[async_trait::async_trait]
impl S3 for Backend {
    async fn put_bucket_cors(
        &self,
        req: S3Request<PutBucketCorsInput>,
    ) -> S3Result<S3Response<PutBucketCorsOutput>> {
        let input = req.input;
        self.bucket_exists(&input.bucket)?;
        self.settings().entry(input.bucket).or_default().cors =
            Some(input.cors_configuration.cors_rules);
        Ok(S3Response::new(PutBucketCorsOutput::default()))
    }

    async fn get_bucket_cors(
        &self,
        req: S3Request<GetBucketCorsInput>,
    ) -> S3Result<S3Response<GetBucketCorsOutput>> {
        self.bucket_exists(&req.input.bucket)?;
        let rules = self
            .settings()
            .get(&req.input.bucket)
            .and_then(|s| s.cors.clone())
            .ok_or_else(|| s3_error!(NoSuchCORSConfiguration))?;
        Ok(S3Response::new(GetBucketCorsOutput {
            cors_rules: Some(rules),
        }))
    }

    async fn delete_bucket_cors(
        &self,
        req: S3Request<DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        self.bucket_exists(&req.input.bucket)?;
        if let Some(settings) = self.settings().get_mut(&req.input.bucket) {
            settings.cors = None;
        }
        Ok(S3Response::new(DeleteBucketCorsOutput::default()))
    }

    async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketLifecycleConfigurationOutput>> {
        let input = req.input;
        self.bucket_exists(&input.bucket)?;
        self.settings().entry(input.bucket).or_default().lifecycle =
            input.lifecycle_configuration.map(|c| c.rules);
        Ok(S3Response::new(
            PutBucketLifecycleConfigurationOutput::default(),
        ))
    }

    async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketLifecycleConfigurationOutput>> {
        self.bucket_exists(&req.input.bucket)?;
        let rules = self
            .settings()
            .get(&req.input.bucket)
            .and_then(|s| s.lifecycle.clone())
            .ok_or_else(|| s3_error!(NoSuchLifecycleConfiguration))?;
        Ok(S3Response::new(GetBucketLifecycleConfigurationOutput {
            rules: Some(rules),
            ..GetBucketLifecycleConfigurationOutput::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.fs.copy_object(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.fs.delete_bucket(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.fs.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.fs.delete_objects(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.fs.get_object(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.fs.head_object(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fs.list_objects_v2(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.bucket_exists(&req.input.bucket)?;
        self.fs.put_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.bucket_exists(&req.input.bucket)?;
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let upload_id = self.open_upload(&req.input.upload_id)?;
        let number = req.input.part_number;
        let response = self.fs.upload_part(req).await?;
        // Remember the part's MD5 (its ETag) for the Complete to come.
        let md5 = response
            .output
            .e_tag
            .as_ref()
            .and_then(|e_tag| parse_md5(e_tag.value()));
        let meta = tokio::fs::metadata(storage::part_path(&self.root, upload_id, number)).await;
        if let (Some(md5), Ok(meta)) = (md5, meta) {
            self.part_digests().insert(
                (upload_id, number),
                PartDigest {
                    file: (meta.dev(), meta.ino()),
                    size: meta.len(),
                    md5,
                },
            );
        }
        Ok(response)
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.open_upload(&req.input.upload_id)?;
        self.fs.upload_part_copy(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.open_upload(&req.input.upload_id)?;
        self.fs.list_parts(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let upload_id = self.open_upload(&req.input.upload_id)?;
        let parts = self
            .check_complete(upload_id, req.input.multipart_upload.as_ref())
            .await?;
        let input = &req.input;
        let owner = storage::upload_owner(&self.root, upload_id);
        let caller = req.credentials.as_ref().map(|c| c.access_key.as_str());
        let response = if input.if_match.is_none()
            && input.if_none_match.is_none()
            && owner
                .as_ref()
                .is_some_and(|owner| owner.as_deref() == caller)
            && plain_object_path(&self.root, &input.bucket, &input.key)
        {
            let (bucket, key) = (input.bucket.clone(), input.key.clone());
            let e_tag = self
                .complete(upload_id, &bucket, &key, parts)
                .await
                .map_err(|err| s3_error!(InternalError, "completing the upload: {err}"))?;
            S3Response::new(CompleteMultipartUploadOutput {
                bucket: Some(bucket),
                key: Some(key),
                e_tag: Some(ETag::Strong(e_tag)),
                ..Default::default()
            })
        } else {
            self.fs.complete_multipart_upload(req).await?
        };
        // R2 discards parts that were uploaded but not named; `s3s-fs` would keep them forever.
        let _ = storage::remove_parts(&self.root, upload_id);
        self.forget_parts(upload_id);
        Ok(response)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let upload_id = self.open_upload(&req.input.upload_id)?;
        let response = self.fs.abort_multipart_upload(req).await?;
        self.forget_parts(upload_id);
        Ok(response)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        if !self.root.join(&input.bucket).is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        let uploads = storage::open_uploads(&self.root, &input.bucket)
            .map_err(|err| s3_error!(InternalError, "{err:#}"))?;
        let prefix = input.prefix.as_deref().unwrap_or_default();
        // After the marker: later keys, or the marker's key with a later upload id if one is given.
        let after_marker =
            |upload: &storage::OpenUpload| match (&input.key_marker, &input.upload_id_marker) {
                (None, _) => true,
                (Some(key), None) => upload.key > *key,
                (Some(key), Some(id)) => {
                    upload.key > *key || (upload.key == *key && upload.upload_id > *id)
                }
            };
        let max_uploads = input.max_uploads.unwrap_or(1000).clamp(0, 1000);
        let mut matching = uploads
            .into_iter()
            .filter(|u| u.key.starts_with(prefix) && after_marker(u));
        let page: Vec<_> = matching
            .by_ref()
            .take(usize::try_from(max_uploads).unwrap_or(0))
            .collect();
        let is_truncated = matching.next().is_some();
        let last = page.last().filter(|_| is_truncated);
        let output = ListMultipartUploadsOutput {
            next_key_marker: last.map(|u| u.key.clone()),
            next_upload_id_marker: last.map(|u| u.upload_id.clone()),
            uploads: Some(
                page.into_iter()
                    .map(|u| MultipartUpload {
                        key: Some(u.key),
                        upload_id: Some(u.upload_id),
                        initiated: Some(u.initiated.into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: Some(max_uploads),
            is_truncated: Some(is_truncated),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }
}
