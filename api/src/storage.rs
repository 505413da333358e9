//! The bucket as the API sees it: where each object lives (the storage layout of DESIGN.md), what
//! is really there (HEAD, paginated LIST), and presigned URLs for browsers.
//!
//! Keys are built only from ids that passed [`crate::ids`], so no request can reach outside its
//! own room's prefix.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::config::StorageConfig;
use crate::presign::{BadEndpoint, Presigned, Presigner};

/// Object keys of the storage layout.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(key_prefix: &str) -> Layout {
        Layout {
            prefix: key_prefix.trim_matches('/').to_string(),
        }
    }

    fn root(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// `{prefix}/chunks/{room}/{recording}/`
    pub fn recording_chunks(&self, room: &str, recording: &str) -> String {
        format!("{}{room}/{recording}/", self.chunks_root())
    }

    /// `{prefix}/chunks/`: every recording's chunks.
    pub fn chunks_root(&self) -> String {
        format!("{}chunks/", self.root())
    }

    /// `{prefix}/chunks/{room}/{recording}/{participant}/`
    pub fn track(&self, room: &str, recording: &str, participant: &str) -> String {
        format!("{}{participant}/", self.recording_chunks(room, recording))
    }

    /// `{prefix}/chunks/{room}/{recording}/{participant}/{seq:08}.webm`
    pub fn chunk(&self, room: &str, recording: &str, participant: &str, seq: u32) -> String {
        format!("{}{seq:08}.webm", self.track(room, recording, participant))
    }

    /// `{prefix}/processed/{room}/{recording}/`
    pub fn outputs(&self, room: &str, recording: &str) -> String {
        format!("{}processed/{room}/{recording}/", self.root())
    }

    /// `{prefix}/selftest/{name}`: probe objects of `mixdown-api selftest`.
    pub fn selftest(&self, name: &str) -> String {
        format!("{}selftest/{name}", self.root())
    }
}

/// What a LIST found under a recording's chunk prefix: per participant, the sequence numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub tracks: BTreeMap<String, Vec<u32>>,
    /// Chunks stored empty (0 bytes), by participant: named when a seal counts them.
    pub empty: BTreeMap<String, Vec<u32>>,
}

/// Reads `{participant}/{seq:08}.webm` below a recording's prefix; anything else is not a chunk.
pub fn parse_chunk_key(relative: &str) -> Option<(&str, u32)> {
    let (participant, file) = relative.split_once('/')?;
    let seq = file.strip_suffix(".webm")?;
    if seq.len() != 8 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    mixdown_crds::is_valid_id(participant).then_some((participant, seq.parse().ok()?))
}

/// Storage failures, with the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {key}: {message}")]
pub struct StorageError {
    pub op: &'static str,
    pub key: String,
    pub message: String,
}

/// The bucket: an SDK client on the API's endpoint, and a presigner on the public one.
#[derive(Clone, Debug)]
pub struct Storage {
    client: aws_sdk_s3::Client,
    bucket: String,
    presigner: Presigner,
    pub layout: Layout,
}

impl Storage {
    pub fn new(config: &StorageConfig) -> Result<Storage, BadEndpoint> {
        let presigner = Presigner::new(
            &config.public_endpoint,
            &config.bucket,
            config.path_style,
            &config.region,
            &config.access_key_id,
            &config.secret_access_key,
        )?;
        // Checked the same way, so a typo in the internal endpoint is said at start too.
        Presigner::new(&config.endpoint, &config.bucket, true, "auto", "", "")?;
        let s3 = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&config.endpoint)
            .region(Region::new(config.region.clone()))
            .force_path_style(config.path_style)
            .credentials_provider(Credentials::new(
                &config.access_key_id,
                &config.secret_access_key,
                None,
                None,
                "mixdown-api",
            ))
            .build();
        Ok(Storage {
            client: aws_sdk_s3::Client::from_conf(s3),
            bucket: config.bucket.clone(),
            presigner,
            layout: Layout::new(&config.key_prefix),
        })
    }

    /// The S3 client and the bucket, for calls about the bucket itself
    /// ([`crate::bucket_setup`]).
    pub fn bucket_client(&self) -> (&aws_sdk_s3::Client, &str) {
        (&self.client, &self.bucket)
    }

    /// The size of `key`, or `None` when there is no such object.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(e) => Err(StorageError {
                op: "HEAD",
                key: key.into(),
                message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            }),
        }
    }

    /// Deletes `key` (no error when it is already gone, as S3 answers).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StorageError {
                op: "DELETE",
                key: key.into(),
                message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            })
    }

    /// Every chunk below a recording's prefix (or only `participant`'s), by participant, every
    /// page of the listing.
    pub async fn list_chunks(
        &self,
        prefix: &str,
        participant: Option<&str>,
    ) -> Result<Listing, StorageError> {
        let mut listing = Listing::default();
        let list_prefix = match participant {
            Some(p) => format!("{prefix}{p}/"),
            None => prefix.to_string(),
        };
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&list_prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StorageError {
                op: "LIST",
                key: prefix.into(),
                message: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
            })?;
            for object in page.contents() {
                let Some(relative) = object.key().and_then(|k| k.strip_prefix(prefix)) else {
                    continue;
                };
                // Empty objects are not chunks a recorder made; the worker would refuse them.
                let empty = object.size().unwrap_or(0) <= 0;
                if let Some((participant, seq)) = parse_chunk_key(relative) {
                    let list = if empty {
                        &mut listing.empty
                    } else {
                        &mut listing.tracks
                    };
                    list.entry(participant.to_string()).or_default().push(seq);
                }
            }
        }
        for seqs in listing
            .tracks
            .values_mut()
            .chain(listing.empty.values_mut())
        {
            seqs.sort_unstable();
            seqs.dedup();
        }
        Ok(listing)
    }

    pub fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        length: u64,
        ttl: Duration,
    ) -> Presigned {
        self.presigner
            .put(key, content_type, length, ttl, jiff::Timestamp::now())
    }

    pub fn presign_get(&self, key: &str, ttl: Duration) -> Presigned {
        let file = key.rsplit('/').next().unwrap_or(key);
        self.presigner.get(
            key,
            Some(&format!("inline; filename=\"{file}\"")),
            ttl,
            jiff::Timestamp::now(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_storage_layout() {
        let layout = Layout::new("riverside");
        assert_eq!(
            layout.chunk("room1", "rec1", "alice", 7),
            "riverside/chunks/room1/rec1/alice/00000007.webm"
        );
        assert_eq!(
            layout.outputs("room1", "rec1"),
            "riverside/processed/room1/rec1/"
        );
        assert_eq!(Layout::new("").track("r", "x", "p"), "chunks/r/x/p/");
        assert_eq!(layout.selftest("p.txt"), "riverside/selftest/p.txt");
    }

    #[test]
    fn only_chunk_names_are_chunks() {
        assert_eq!(parse_chunk_key("alice/00000012.webm"), Some(("alice", 12)));
        for other in [
            "alice/12.webm",
            "alice/0000001a.webm",
            "alice/00000001.mp4",
            "a/b/00000001.webm",
            "00000001.webm",
            "al.ice/00000001.webm",
        ] {
            assert_eq!(parse_chunk_key(other), None, "{other}");
        }
    }
}
