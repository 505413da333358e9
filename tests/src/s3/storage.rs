//! The storage directory of `s3s-fs`, as the test kit reads and writes it directly.
//!
//! `s3s-fs` keeps a bucket as a directory under its root and an object as a file in it. Its
//! bookkeeping lives in dot-files at the root:
//! - `.upload-{uploadId}.json`: an open multipart upload (removed by Complete and Abort);
//! - `.bucket-{b64(bucket)}.object-{b64(key)}.upload-{uploadId}.metadata.json`: the attributes
//!   given to CreateMultipartUpload, the only place that ties an upload to its bucket and key;
//! - `.upload_id-{uploadId}.part-{n}`: the uploaded parts;
//! - `.bucket-{b64(bucket)}.object-{b64(key)}.internal.json`: the object's ETag and checksums.
//!
//! `b64` is unpadded URL-safe base64. The layout is that of the pinned `s3s-fs` version; the
//! integration tests notice if it changes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use uuid::Uuid;

/// A multipart upload that was created and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct OpenUpload {
    pub(crate) key: String,
    pub(crate) upload_id: String,
    pub(crate) initiated: SystemTime,
}

/// Creates the directory of bucket `name` (nothing happens if it exists) after checking the name
/// follows the S3 rules, so that it can neither leave the root nor be refused later by clients.
pub(crate) fn ensure_bucket(root: &Path, name: &str) -> anyhow::Result<()> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let valid_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&name.len()) || !valid_chars || !valid_ends || name.contains("..") {
        bail!(
            "invalid bucket name {name:?}: 3 to 63 of a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
        );
    }
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating bucket directory {}", dir.display()))
}

/// The open multipart uploads of `bucket`, sorted by key, then upload id.
pub(crate) fn open_uploads(root: &Path, bucket: &str) -> anyhow::Result<Vec<OpenUpload>> {
    let bucket_prefix = format!(
        ".bucket-{}.object-",
        base64_simd::URL_SAFE_NO_PAD.encode_to_string(bucket)
    );
    let mut uploads = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(&bucket_prefix) else {
            continue;
        };
        let Some(rest) = rest.strip_suffix(".metadata.json") else {
            continue;
        };
        // Attributes of a finished object have no `.upload-` part; base64 never contains a '.'.
        let Some((encoded_key, upload_id)) = rest.split_once(".upload-") else {
            continue;
        };
        // Complete removes the upload file before it moves the attributes, so an upload whose
        // attributes are still there but whose upload file is gone is being completed right now.
        let Ok(info) = std::fs::metadata(root.join(format!(".upload-{upload_id}.json"))) else {
            continue;
        };
        let key = base64_simd::URL_SAFE_NO_PAD
            .decode_to_vec(encoded_key)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .with_context(|| format!("unexpected upload metadata file name {name:?}"))?;
        uploads.push(OpenUpload {
            key,
            upload_id: upload_id.to_owned(),
            initiated: info.modified()?,
        });
    }
    uploads.sort();
    Ok(uploads)
}

/// The upload id, if `upload_id` names an open upload.
pub(crate) fn open_upload(root: &Path, upload_id: &str) -> Option<Uuid> {
    // Parsing first keeps request input from forming arbitrary file names.
    let id = Uuid::parse_str(upload_id).ok()?;
    root.join(format!(".upload-{id}.json"))
        .exists()
        .then_some(id)
}

pub(crate) fn part_path(root: &Path, upload_id: Uuid, part_number: i32) -> PathBuf {
    root.join(format!(".upload_id-{upload_id}.part-{part_number}"))
}

/// Removes the parts left of an upload: those uploaded but not named when it was completed.
pub(crate) fn remove_parts(root: &Path, upload_id: Uuid) -> std::io::Result<()> {
    let prefix = format!(".upload_id-{upload_id}.part-");
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(&prefix))
        {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The access key that created upload `upload_id` (`Some(None)`: created anonymously), if it is
/// open.
pub(crate) fn upload_owner(root: &Path, upload_id: Uuid) -> Option<Option<String>> {
    let content = std::fs::read(root.join(format!(".upload-{upload_id}.json"))).ok()?;
    serde_json::from_slice(&content).ok()
}

/// The bookkeeping of a Complete, as `s3s-fs` does it: the upload is forgotten, the attributes
/// given to CreateMultipartUpload become the object's, and the object's ETag is recorded (its
/// checksums from an earlier object at the key are dropped: they are not this object's).
pub(crate) fn finish_upload(
    root: &Path,
    upload_id: Uuid,
    bucket: &str,
    key: &str,
    e_tag: &str,
) -> std::io::Result<()> {
    let encode = |s: &str| base64_simd::URL_SAFE_NO_PAD.encode_to_string(s);
    let object = format!(".bucket-{}.object-{}", encode(bucket), encode(key));
    std::fs::remove_file(root.join(format!(".upload-{upload_id}.json")))?;
    let attributes = root.join(format!("{object}.upload-{upload_id}.metadata.json"));
    if attributes.exists() {
        std::fs::rename(attributes, root.join(format!("{object}.metadata.json")))?;
    }
    let info = serde_json::json!({ "e_tag": e_tag });
    let temp = root.join(format!(".tmp.mixdown-{}.internal.part", Uuid::new_v4()));
    std::fs::write(&temp, serde_json::to_vec(&info)?)?;
    std::fs::rename(temp, root.join(format!("{object}.internal.json")))
}
