//! The S3 implementation behind the server: `s3s-fs`, with multipart uploads made to behave like
//! R2 where `s3s-fs` differs in ways a client would notice.
//!
//! - CompleteMultipartUpload is checked before `s3s-fs` sees it. `s3s-fs` forgets the upload
//!   first and checks the parts while it concatenates them, so a refused Complete (a part too
//!   small, a wrong ETag, which it does not check at all) would leave no upload to retry or abort
//!   and its parts orphaned, and a failed run would look clean. Here the upload stays open.
//! - An unknown upload id is NoSuchUpload (404), not AccessDenied.
//! - ListMultipartUploads is implemented (without delimiter grouping).
//!
//! One difference stays: parts must be numbered 1, 2, 3, ... without gaps (R2 allows gaps); that
//! is refused as InvalidPartOrder, with the upload left open.

use std::path::PathBuf;

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
}

impl Backend {
    /// `root` must be the directory `fs` serves.
    pub(crate) fn new(fs: FileSystem, root: PathBuf) -> Backend {
        Backend { fs, root }
    }

    fn open_upload(&self, upload_id: &str) -> S3Result<Uuid> {
        storage::open_upload(&self.root, upload_id).ok_or_else(|| s3_error!(NoSuchUpload))
    }

    /// Refuses a Complete request that `s3s-fs` would refuse halfway, or not at all.
    async fn check_complete(
        &self,
        upload_id: Uuid,
        upload: Option<&CompletedMultipartUpload>,
    ) -> S3Result<()> {
        let parts = upload.and_then(|u| u.parts.as_deref()).unwrap_or_default();
        if parts.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "You must specify at least one part"
            ));
        }
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
            let (size, md5) = digest(&storage::part_path(&self.root, upload_id, number))
                .await
                .map_err(|_| s3_error!(InvalidPart, "part {number} was not uploaded"))?;
            if part.e_tag.as_ref().map(ETag::value) != Some(md5.as_str()) {
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
        }
        Ok(())
    }
}

/// Size and hex MD5 (a part's ETag) of a file.
async fn digest(path: &std::path::Path) -> std::io::Result<(u64, String)> {
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
    let hex = md5.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((size, hex))
}

#[async_trait::async_trait]
impl S3 for Backend {
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
        self.fs.put_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.open_upload(&req.input.upload_id)?;
        self.fs.upload_part(req).await
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
        self.check_complete(upload_id, req.input.multipart_upload.as_ref())
            .await?;
        let response = self.fs.complete_multipart_upload(req).await?;
        // R2 discards parts that were uploaded but not named; `s3s-fs` would keep them forever.
        let _ = storage::remove_parts(&self.root, upload_id);
        Ok(response)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.open_upload(&req.input.upload_id)?;
        self.fs.abort_multipart_upload(req).await
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
