//! Every operation of the API, once: REST handlers ([`crate::rest`]) and socket.io handlers
//! ([`crate::socket`]) only translate in and out of these functions, which take the caller's
//! verified claims and return a result or an [`ApiError`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use mixdown_crds::{
    Cleanup, MAX_TRACKS, Output, RecordingJobSpec, Track, TrackSource, recording_job_name,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use tokio::sync::Mutex as AsyncMutex;

use crate::auth::{Claims, Role, Tokens};
use crate::book::{Book, Entry, Marker, Out, View};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::ApiError;
use crate::ids;
use crate::metrics::Metrics;
use crate::seal::{Decision, SealedTrack, check_against_storage, decide};
use crate::storage::Storage;

/// Content types a chunk may be uploaded as: what MediaRecorder produces.
const CHUNK_TYPES: &[&str] = &["video/webm", "audio/webm", "video/x-matroska"];

/// Everything the handlers share. Cheap to clone (an `Arc`).
pub type App = Arc<AppState>;

pub struct AppState {
    pub config: Config,
    pub tokens: Tokens,
    pub storage: Storage,
    pub cluster: Cluster,
    /// What this replica knows of every recording; emitting happens under its lock, so a socket
    /// joining a room gets its snapshot and then exactly the changes after it.
    pub book: AsyncMutex<Book>,
    pub io: SocketIo,
    pub metrics: Metrics,
    confirmed: Mutex<HashMap<(String, String), Confirmed>>,
    /// Confirmed counts not yet written to their markers, by marker name and participant.
    unwritten: Mutex<HashMap<String, BTreeMap<String, u32>>>,
    /// Display names of the participants whose confirms are in `unwritten`, by marker.
    unwritten_names: Mutex<HashMap<String, BTreeMap<String, String>>>,
}

/// The chunks of one track this replica knows to be in storage.
struct Confirmed {
    seqs: Vec<u64>,
    count: u32,
    touched: Instant,
}

impl Confirmed {
    fn insert(&mut self, seq: u32) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seqs.len() <= word {
            self.seqs.resize(word + 1, 0);
        }
        if self.seqs[word] & (1 << bit) == 0 {
            self.seqs[word] |= 1 << bit;
            self.count += 1;
        }
    }
}

// ---- requests and answers (camelCase JSON, as the socket.io contract) ----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRoom {
    /// The host's display name.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RoomCreated {
    pub room_id: String,
    pub participant_id: String,
    pub host_token: String,
    pub invite_token: String,
    pub invite_url: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Invite {
    pub room_id: String,
    pub invite_token: String,
    pub invite_url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Join {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    pub room_id: String,
    pub participant_id: String,
    pub token: String,
    /// The server's clock when it answered (see [`server_time`]).
    pub server_time: f64,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    pub ok: bool,
    pub recording_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UploadUrlRequest {
    /// Exact byte length of the chunk; signed into the URL.
    pub size: u64,
    /// Content type of the chunk; signed into the URL. Default `video/webm`.
    #[serde(default)]
    pub content_type: Option<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct UploadUrl {
    pub url: String,
    pub method: &'static str,
    /// Headers to send exactly as given (the length goes with the body).
    pub headers: HashMap<String, String>,
    pub key: String,
    pub expires_at: String,
    /// The server's clock when it answered (see [`server_time`]).
    pub server_time: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfirmRequest {
    pub size: u64,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmAnswer {
    pub ok: bool,
    pub recording_id: String,
    pub participant_id: String,
    pub seq: u32,
    /// Chunks of this track confirmed so far (as this replica knows; never more than stored).
    pub confirmed: u32,
    /// The server's clock when it answered (see [`server_time`]).
    pub server_time: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SealRequest {
    /// How many chunks the track has: chunks `0..chunkCount-1` must all be in storage.
    pub chunk_count: u32,
    /// When the page's recorder started, on the server's clock (Unix milliseconds), as the page
    /// estimated it from the `serverTime` of its round trips. Becomes the track's
    /// `startOffsetMs`; without it the track starts with the recording in the mixdown.
    #[serde(default)]
    pub recorder_started_at: Option<f64>,
    /// How far off `recorderStartedAt` may be, in milliseconds: half the shortest round trip
    /// the page's estimate came from. Logged.
    #[serde(default)]
    pub clock_error_ms: Option<f64>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Sealed {
    pub ok: bool,
    pub recording_id: String,
    pub participant_id: String,
    pub chunk_count: u32,
    /// True when the track was already sealed with this count (a retry): nothing changed.
    pub already_sealed: bool,
    /// Where the track starts in the mixdown, in milliseconds after the recording's start, as
    /// the spec holds it (unset: with the recording).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_offset_ms: Option<i64>,
    /// The server's clock when it answered (see [`server_time`]).
    pub server_time: f64,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Stopped {
    pub ok: bool,
    pub recording_id: String,
    pub job_name: String,
    /// False when the recording had already been stopped (this answer names the same job).
    pub created: bool,
}

impl AppState {
    pub fn new(
        config: Config,
        storage: Storage,
        cluster: Cluster,
        io: SocketIo,
        metrics: Metrics,
    ) -> AppState {
        let book = Book::with_progress_interval(config.progress_interval);
        AppState {
            tokens: Tokens::new(&config.signing_key, config.token_ttl),
            config,
            storage,
            cluster,
            book: AsyncMutex::new(book),
            io,
            metrics,
            confirmed: Mutex::new(HashMap::new()),
            unwritten: Mutex::new(HashMap::new()),
            unwritten_names: Mutex::new(HashMap::new()),
        }
    }

    fn invite_url(&self, token: &str) -> String {
        // The token rides in the fragment: browsers never send it to a server or its logs.
        format!("{}/#invite={token}", self.config.public_url)
    }

    pub fn create_room(&self, req: CreateRoom) -> Result<RoomCreated, ApiError> {
        let name = display_name(req.name)?;
        let room = ids::mint_room();
        let host = format!("h-{}", &ids::mint_participant()[2..]);
        let host_token = self.tokens.issue(&room, &host, Role::Host, name.as_deref());
        let invite_token = self.tokens.issue(&room, &host, Role::Invite, None);
        Ok(RoomCreated {
            invite_url: self.invite_url(&invite_token),
            room_id: room,
            participant_id: host,
            host_token,
            invite_token,
        })
    }

    pub fn invite(&self, claims: &Claims, room: &str) -> Result<Invite, ApiError> {
        same_room(claims, room)?;
        claims.require(Role::Host, "invite participants")?;
        let invite_token =
            self.tokens
                .issue(&claims.room, claims.participant(), Role::Invite, None);
        Ok(Invite {
            room_id: claims.room.clone(),
            invite_url: self.invite_url(&invite_token),
            invite_token,
        })
    }

    pub fn join(&self, claims: &Claims, req: Join) -> Result<Joined, ApiError> {
        claims.require(Role::Invite, "join with an invite")?;
        let name = display_name(req.name)?;
        let participant = ids::mint_participant();
        Ok(Joined {
            token: self
                .tokens
                .issue(&claims.room, &participant, Role::Guest, name.as_deref()),
            room_id: claims.room.clone(),
            participant_id: participant,
            server_time: server_time(),
        })
    }

    /// Starts a recording in the caller's room: writes its marker, which every replica's watch
    /// turns into `start-rec` for its sockets in the room.
    pub async fn start_recording(&self, claims: &Claims) -> Result<Started, ApiError> {
        claims.require(Role::Host, "start a recording")?;
        let recording_id = ids::mint();
        let marker = Marker {
            name: recording_job_name(&recording_id),
            room_id: claims.room.clone(),
            recording_id: recording_id.clone(),
            started_at: jiff::Timestamp::now().to_string(),
            started_by: claims.participant().to_string(),
            confirmed: BTreeMap::new(),
            names: BTreeMap::new(),
        };
        self.cluster
            .create_marker(&marker)
            .await
            .map_err(|e| ApiError::internal("starting the recording", e))?;
        tracing::info!(room = %claims.room, recording = %recording_id, by = %claims.participant(), "recording started");
        Ok(Started {
            ok: true,
            recording_id,
        })
    }

    /// The marker of `recording_id` in the caller's room: from this replica's book, or from the
    /// API server for one started a moment ago elsewhere. Other rooms' recordings are not found.
    async fn recording(&self, claims: &Claims, recording_id: &str) -> Result<Marker, ApiError> {
        ids::check("recording id", recording_id)?;
        let name = recording_job_name(recording_id);
        let known = {
            let book = self.book.lock().await;
            book.get(&name)
                .map(|e| (e.room_id.clone(), e.marker.clone()))
        };
        let marker = match known {
            Some((room, Some(marker))) if room == claims.room => Some(marker),
            Some((room, None)) if room == claims.room => None,
            Some(_) => None,
            None => self
                .cluster
                .get_marker(&name)
                .await
                .map_err(|e| ApiError::internal("looking up the recording", e))?,
        };
        marker
            .filter(|m| m.room_id == claims.room && m.recording_id == recording_id)
            .ok_or_else(|| not_found(recording_id))
    }

    /// A presigned PUT for chunk `seq` of the caller's own track.
    pub async fn upload_url(
        &self,
        claims: &Claims,
        recording_id: &str,
        seq: &str,
        req: UploadUrlRequest,
    ) -> Result<UploadUrl, ApiError> {
        claims.require_member()?;
        let seq = parse_seq(seq)?;
        if req.size == 0 {
            return Err(ApiError::bad_request("size must be at least 1 byte"));
        }
        if req.size > self.config.max_chunk_bytes {
            return Err(ApiError::bad_request(format!(
                "a chunk may be at most {} bytes; this one is {}",
                self.config.max_chunk_bytes, req.size
            )));
        }
        let content_type = req.content_type.unwrap_or_else(|| "video/webm".into());
        let base = content_type.split(';').next().unwrap_or("").trim();
        if !CHUNK_TYPES.contains(&base) || content_type.len() > 128 || !content_type.is_ascii() {
            return Err(ApiError::bad_request(format!(
                "content type {content_type:?} is not a recording chunk; use one of {}",
                CHUNK_TYPES.join(", ")
            )));
        }
        let marker = self.recording(claims, recording_id).await?;
        let key =
            self.storage
                .layout
                .chunk(&marker.room_id, recording_id, claims.participant(), seq);
        let ttl = self.config.upload_url_ttl;
        let signed = self.storage.presign_put(&key, &content_type, req.size, ttl);
        self.metrics.presigns.inc();
        Ok(UploadUrl {
            url: signed.url,
            method: "PUT",
            headers: signed.headers.into_iter().collect(),
            key,
            expires_at: expiry(ttl),
            server_time: server_time(),
        })
    }

    /// Checks that chunk `seq` of the caller's track really is in storage with `size` bytes.
    pub async fn confirm(
        &self,
        claims: &Claims,
        recording_id: &str,
        seq: &str,
        req: ConfirmRequest,
    ) -> Result<ConfirmAnswer, ApiError> {
        claims.require_member()?;
        let seq = parse_seq(seq)?;
        let marker = self.recording(claims, recording_id).await?;
        let participant = claims.participant();
        let key = self
            .storage
            .layout
            .chunk(&marker.room_id, recording_id, participant, seq);
        let stored = self.storage.size(&key).await.map_err(|e| {
            self.metrics.confirms.get_or_create(&result("error")).inc();
            ApiError::internal("checking the chunk in storage", e)
        })?;
        match stored {
            None => {
                self.metrics
                    .confirms
                    .get_or_create(&result("missing"))
                    .inc();
                return Err(ApiError::conflict(
                    "chunk_missing",
                    format!("chunk {seq:08} of {participant} is not in storage; upload it again"),
                ));
            }
            Some(size) if size != req.size => {
                self.metrics
                    .confirms
                    .get_or_create(&result("size_mismatch"))
                    .inc();
                return Err(ApiError::conflict(
                    "size_mismatch",
                    format!(
                        "chunk {seq:08} of {participant} has {size} bytes in storage, not {}; upload it again",
                        req.size
                    ),
                ));
            }
            Some(_) => {}
        }
        let confirmed = self
            .count_confirmed(&marker.room_id, recording_id, participant, seq)
            .await?;
        self.metrics.confirms.get_or_create(&result("ok")).inc();
        // The room hears it through the marker, from every replica (see `flush_confirmed`).
        self.unwritten
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(marker.name.clone())
            .or_default()
            .insert(participant.to_string(), confirmed);
        if let Some(name) = &claims.name {
            self.unwritten_names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(marker.name.clone())
                .or_default()
                .insert(participant.to_string(), name.clone());
        }
        Ok(ConfirmAnswer {
            ok: true,
            recording_id: recording_id.to_string(),
            participant_id: participant.to_string(),
            seq,
            confirmed,
            server_time: server_time(),
        })
    }

    async fn count_confirmed(
        &self,
        room: &str,
        recording_id: &str,
        participant: &str,
        seq: u32,
    ) -> Result<u32, ApiError> {
        let key = (recording_id.to_string(), participant.to_string());
        {
            let mut confirmed = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(track) = confirmed.get_mut(&key) {
                track.insert(seq);
                track.touched = Instant::now();
                return Ok(track.count);
            }
        }
        // First confirm of this track on this replica: what is already stored counts too (it
        // was confirmed elsewhere, or before a restart).
        let prefix = self.storage.layout.recording_chunks(room, recording_id);
        let listing = self
            .storage
            .list_chunks(&prefix, Some(participant))
            .await
            .map_err(|e| ApiError::internal("counting the track's chunks", e))?;
        let mut track = Confirmed {
            seqs: Vec::new(),
            count: 0,
            touched: Instant::now(),
        };
        for seq in listing.tracks.values().flatten() {
            track.insert(*seq);
        }
        track.insert(seq);
        let mut confirmed = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        let count = confirmed.entry(key).or_insert(track);
        count.insert(seq);
        Ok(count.count)
    }

    /// Writes the confirmed counts taken since the last call onto their markers: one patch per
    /// recording, however many chunks came in. Every replica's watch then tells its sockets
    /// (`upload-progress`), so a participant hears the others' uploads wherever they confirm.
    /// Counts never go down, so a replica that saw fewer confirms cannot take one back.
    pub async fn flush_confirmed(&self) {
        let unwritten =
            std::mem::take(&mut *self.unwritten.lock().unwrap_or_else(|p| p.into_inner()));
        let mut names = std::mem::take(
            &mut *self
                .unwritten_names
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (name, mut counts) in unwritten {
            let mut display = names.remove(&name).unwrap_or_default();
            if let Some(known) = self
                .book
                .lock()
                .await
                .get(&name)
                .and_then(|e| e.marker.as_ref())
            {
                counts.retain(|p, c| known.confirmed.get(p).is_none_or(|k| *c > *k));
                display.retain(|p, n| known.names.get(p) != Some(n));
            }
            if counts.is_empty() {
                continue;
            }
            if let Err(e) = self.cluster.write_confirmed(&name, &counts, &display).await {
                tracing::debug!(error = %e, "confirmed counts not written; the next confirm writes them");
                self.unwritten_names
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(name.clone())
                    .or_default()
                    .extend(display);
                let mut unwritten = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
                let entry = unwritten.entry(name).or_default();
                for (p, c) in counts {
                    let slot = entry.entry(p).or_insert(c);
                    *slot = (*slot).max(c);
                }
            }
        }
    }

    /// Forgets confirmation counts of tracks idle for an hour.
    pub fn sweep_confirmed(&self) {
        let mut confirmed = self.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        confirmed.retain(|_, t| t.touched.elapsed() < Duration::from_secs(3600));
    }

    /// Seals the caller's track of a stopped recording: checks storage holds exactly chunks
    /// `0..chunkCount-1`, then records the count on the RecordingJob (see [`crate::seal`]).
    pub async fn seal(
        &self,
        claims: &Claims,
        recording_id: &str,
        req: SealRequest,
    ) -> Result<Sealed, ApiError> {
        let outcome = self.try_seal(claims, recording_id, req).await;
        let label = match &outcome {
            Ok(s) if s.already_sealed => "already_sealed",
            Ok(_) => "sealed",
            Err(ApiError::Unavailable { .. }) => "error",
            Err(_) => "refused",
        };
        self.metrics.seals.get_or_create(&result(label)).inc();
        outcome
    }

    async fn try_seal(
        &self,
        claims: &Claims,
        recording_id: &str,
        req: SealRequest,
    ) -> Result<Sealed, ApiError> {
        claims.require_member()?;
        let marker = self.recording(claims, recording_id).await?;
        let participant = claims.participant();
        let count = req.chunk_count;
        if count == 0 || count > crate::seal::MAX_CHUNK_COUNT {
            return Err(ApiError::bad_request(format!(
                "chunkCount must be 1 to {}; it is {count}",
                crate::seal::MAX_CHUNK_COUNT
            )));
        }
        let prefix = self
            .storage
            .layout
            .track(&marker.room_id, recording_id, participant);
        let start_offset_ms = match req.recorder_started_at {
            Some(at) => start_offset_ms(at, &marker.started_at, recording_id)?,
            None => None,
        };
        let with = SealedTrack {
            start_offset_ms,
            display_name: claims.name.clone(),
        };
        let sealed = |already_sealed, start_offset_ms| Sealed {
            ok: true,
            recording_id: recording_id.to_string(),
            participant_id: participant.to_string(),
            chunk_count: count,
            already_sealed,
            start_offset_ms,
            server_time: server_time(),
        };
        let mut checked = false;
        // A write loses only to another write of the same RecordingJob in between (another
        // seal, the operator's status): read again and decide again.
        for _ in 0..8 {
            let rj = self
                .cluster
                .get_job(&marker.name)
                .await
                .map_err(|e| ApiError::internal("looking up the recording's job", e))?
                .filter(|rj| rj.spec.room_id == claims.room)
                .ok_or_else(|| {
                    ApiError::conflict(
                        "not_stopped",
                        format!(
                            "recording {recording_id} has not stopped yet; seal the track after stop-rec"
                        ),
                    )
                })?;
            let tracks = match decide(&rj, participant, &prefix, count, &with)? {
                Decision::AlreadySealed(offset) => return Ok(sealed(true, offset)),
                Decision::Write(tracks) => tracks,
            };
            if !checked {
                let listing = self
                    .storage
                    .list_chunks(
                        &self
                            .storage
                            .layout
                            .recording_chunks(&marker.room_id, recording_id),
                        Some(participant),
                    )
                    .await
                    .map_err(|e| ApiError::internal("listing the track's chunks", e))?;
                let none = Vec::new();
                check_against_storage(
                    participant,
                    count,
                    listing.tracks.get(participant).unwrap_or(&none),
                    listing.empty.get(participant).unwrap_or(&none),
                )?;
                checked = true;
            }
            let version = rj.resource_version().unwrap_or_default();
            if self
                .cluster
                .write_tracks(&marker.name, &version, &tracks)
                .await
                .map_err(|e| ApiError::internal("sealing the track", e))?
            {
                tracing::info!(
                    recording = %recording_id,
                    participant = %participant,
                    chunks = count,
                    start_offset_ms = ?start_offset_ms,
                    clock_error_ms = ?req.clock_error_ms.map(|e| e.round()),
                    "track sealed"
                );
                return Ok(sealed(false, start_offset_ms));
            }
        }
        Err(ApiError::internal(
            "sealing the track",
            "the RecordingJob changed under every attempt",
        ))
    }

    /// Stops a recording: lists its chunks and creates its RecordingJob. Idempotent: a second
    /// stop, or two at once on two replicas, answer with the same RecordingJob.
    pub async fn stop(&self, claims: &Claims, recording_id: &str) -> Result<Stopped, ApiError> {
        let started = Instant::now();
        let outcome = self.try_stop(claims, recording_id).await;
        let label = match &outcome {
            Ok(s) if s.created => "created",
            Ok(_) => "existing",
            Err(ApiError::Unavailable { .. }) => "error",
            Err(_) => "refused",
        };
        self.metrics.stops.get_or_create(&result(label)).inc();
        if outcome.is_ok() {
            self.metrics
                .stop_duration
                .observe(started.elapsed().as_secs_f64());
        }
        outcome
    }

    async fn try_stop(&self, claims: &Claims, recording_id: &str) -> Result<Stopped, ApiError> {
        claims.require(Role::Host, "stop a recording")?;
        let marker = self.recording(claims, recording_id).await?;
        let name = marker.name.clone();
        let stopped = |created| Stopped {
            ok: true,
            recording_id: recording_id.to_string(),
            job_name: name.clone(),
            created,
        };
        let known = self
            .book
            .lock()
            .await
            .get(&name)
            .is_some_and(|e| e.job.is_some());
        if known {
            return Ok(stopped(false));
        }

        let prefix = self
            .storage
            .layout
            .recording_chunks(&marker.room_id, recording_id);
        let listing = self
            .storage
            .list_chunks(&prefix, None)
            .await
            .map_err(|e| ApiError::internal("listing the recording's chunks", e))?;
        if listing.tracks.is_empty() {
            // Perhaps it was stopped elsewhere and processed already (chunks deleted).
            if self
                .cluster
                .get_job(&name)
                .await
                .map_err(|e| ApiError::internal("looking up the recording's job", e))?
                .is_some()
            {
                return Ok(stopped(false));
            }
            return Err(ApiError::conflict(
                "no_chunks",
                format!("recording {recording_id} has no chunks in storage; nothing to process"),
            ));
        }
        if listing.tracks.len() > MAX_TRACKS {
            return Err(ApiError::conflict(
                "too_many_tracks",
                format!(
                    "recording {recording_id} has {} tracks; at most {MAX_TRACKS} can be processed together",
                    listing.tracks.len()
                ),
            ));
        }
        // Every track starts unsealed: pages are still uploading. Each page seals its own track
        // once its queue drained (`seal`); processing waits for that, up to the upload timeout.
        let tracks = listing
            .tracks
            .keys()
            .map(|participant| Track {
                participant_id: participant.clone(),
                source: TrackSource {
                    prefix: format!("{prefix}{participant}/"),
                    chunk_count: None,
                },
                start_offset_ms: None,
                display_name: marker.names.get(participant).cloned(),
            })
            .collect();
        let spec = RecordingJobSpec {
            room_id: marker.room_id.clone(),
            recording_id: recording_id.to_string(),
            tracks,
            output: Output {
                prefix: self.storage.layout.outputs(&marker.room_id, recording_id),
                profile: self.config.output_profile,
                composite: None,
            },
            cleanup: Cleanup::default(),
            upload_timeout_seconds: self.config.upload_timeout_seconds,
            backoff_limit: self.config.job_backoff_limit,
            active_deadline_seconds: self.config.job_active_deadline_seconds,
            start_timeout_seconds: self.config.job_start_timeout_seconds,
            ttl_seconds_after_finished: self.config.job_ttl_seconds,
            resources: None,
            node_selector: None,
            tolerations: None,
            priority_class_name: None,
        };
        let created = self
            .cluster
            .create_job(&name, spec, claims.participant())
            .await
            .map_err(|e| ApiError::internal("creating the RecordingJob", e))?;
        let Some(rj) = created else {
            return Ok(stopped(false));
        };
        tracing::info!(room = %marker.room_id, recording = %recording_id, job = %name, "recording stopped; RecordingJob created");
        if let Err(e) = self.cluster.adopt_marker(&rj).await {
            tracing::warn!(error = %e, "the marker stays until deleted by hand");
        }
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(rec, _), _| rec != recording_id);
        Ok(stopped(true))
    }

    /// The whole current state of one recording of the caller's room, from this replica's book.
    pub async fn status(&self, claims: &Claims, recording_id: &str) -> Result<Value, ApiError> {
        claims.require_member()?;
        ids::check("recording id", recording_id)?;
        let name = recording_job_name(recording_id);
        let book = self.book.lock().await;
        book.get(&name)
            .filter(|e| e.room_id == claims.room)
            .map(|e| self.status_of(e))
            .ok_or_else(|| not_found(recording_id))
    }

    /// Every recording of the caller's room with its state and files.
    pub async fn list(&self, claims: &Claims, room: &str) -> Result<Value, ApiError> {
        same_room(claims, room)?;
        claims.require_member()?;
        let book = self.book.lock().await;
        let recordings: Vec<Value> = book
            .room(&claims.room)
            .into_iter()
            .map(|e| self.status_of(e))
            .collect();
        Ok(json!({"roomId": claims.room, "recordings": recordings}))
    }

    /// The `processing-status-response` payload of an entry.
    pub fn status_of(&self, entry: &Entry) -> Value {
        let mut value = match &entry.job {
            Some(job) => self.state_json(&entry.recording_id, &job.job_name, &job.sent),
            None => json!({"recordingId": entry.recording_id, "phase": "Recording", "progress": 0}),
        };
        if let Some(marker) = &entry.marker {
            value["startedAt"] = json!(marker.started_at);
            value["startedBy"] = json!(marker.started_by);
        }
        value
    }

    /// A recording's whole state as events carry it; finished files with playable URLs.
    pub fn state_json(&self, recording_id: &str, job_name: &str, view: &View) -> Value {
        let mut value = json!({
            "recordingId": recording_id,
            "jobName": job_name,
            "phase": view.phase,
            "progress": view.progress,
            "attempts": view.attempts,
            "tracks": view.tracks.iter().map(|t| json!({
                "participantId": t.participant_id,
                "sealed": t.chunk_count.is_some(),
                "chunkCount": t.chunk_count,
            })).collect::<Vec<_>>(),
        });
        if !view.outputs.is_empty() {
            let ttl = self.config.download_url_ttl;
            let outputs: Vec<Value> = view
                .outputs
                .iter()
                .map(|o| {
                    let mut output = json!({
                        "kind": if o.is_mixdown() { "mixdown" } else { "track" },
                        "key": o.key,
                        "sizeBytes": o.size_bytes,
                        "durationSeconds": o.duration_seconds,
                        "sealed": o.sealed,
                        "chunks": o.chunks,
                        "leftOut": o.left_out.as_ref().map(|l| json!({
                            "missingChunk": l.missing_chunk,
                            "chunksKept": l.chunks_kept,
                        })),
                        "url": self.storage.presign_get(&o.key, ttl).url,
                        "urlExpiresAt": expiry(ttl),
                    });
                    if !o.is_mixdown() {
                        output["participantId"] = json!(o.participant_id);
                    }
                    output
                })
                .collect();
            value["outputs"] = Value::Array(outputs);
        }
        if let Some(mixdown) = &view.mixdown {
            let mut m = json!({"state": mixdown.state});
            if let Some(reason) = &mixdown.reason {
                m["reason"] = json!(reason);
            }
            if let Some(message) = &mixdown.message {
                m["message"] = json!(message);
            }
            value["mixdown"] = m;
        }
        if let Some(reason) = &view.reason {
            value["reason"] = json!(reason);
        }
        if let Some(message) = &view.message {
            value["message"] = json!(message);
        }
        value
    }

    /// The event name and payload of a book's [`Out`].
    pub fn event_of(&self, out: &Out) -> (&'static str, Value) {
        match out {
            Out::StartRec { recording_id, .. } => {
                ("start-rec", json!({"recordingId": recording_id}))
            }
            Out::StopRec { recording_id, .. } => ("stop-rec", json!({"recordingId": recording_id})),
            Out::Started {
                recording_id,
                job_name,
                view,
                ..
            } => (
                "video-processing-started",
                self.state_json(recording_id, job_name, view),
            ),
            Out::Update {
                recording_id,
                job_name,
                view,
                ..
            } => (
                "video-processing-update",
                self.state_json(recording_id, job_name, view),
            ),
            Out::UploadProgress {
                recording_id,
                participant_id,
                confirmed,
                name,
                ..
            } => (
                "upload-progress",
                json!({"recordingId": recording_id, "participantId": participant_id, "confirmed": confirmed, "name": name}),
            ),
            Out::Error {
                recording_id,
                reason,
                message,
                ..
            } => (
                "video-processing-error",
                json!({"recordingId": recording_id, "reason": reason, "message": message}),
            ),
        }
    }

    /// Emits `outs` to their rooms' sockets on this replica. Call with the book locked.
    pub async fn emit_all(&self, outs: &[Out]) {
        for out in outs {
            let (event, payload) = self.event_of(out);
            match self.io.to(room_of(out.room())).emit(event, &payload).await {
                Ok(()) => self.metrics.emitted(event),
                Err(e) => tracing::debug!(error = %e, event, "emit failed"),
            }
        }
    }
}

/// The socket.io room of a Mixdown room.
pub fn room_of(room: &str) -> String {
    format!("room:{room}")
}

/// Refuses a path room that is not the token's (after checking it is a valid id).
pub(crate) fn same_room(claims: &Claims, room: &str) -> Result<(), ApiError> {
    ids::check("room id", room)?;
    if claims.room != room {
        return Err(ApiError::Forbidden(format!(
            "this token is for another room, not {room}"
        )));
    }
    Ok(())
}

fn not_found(recording_id: &str) -> ApiError {
    ApiError::NotFound(format!("no recording {recording_id} in this room"))
}

fn parse_seq(seq: &str) -> Result<u32, ApiError> {
    seq.parse::<u32>()
        .ok()
        .filter(|s| *s < 100_000_000)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "chunk number {:?} is not a number from 0 to 99999999",
                seq.chars().take(20).collect::<String>()
            ))
        })
}

fn display_name(name: Option<String>) -> Result<Option<String>, ApiError> {
    match name.map(|n| n.trim().to_string()) {
        Some(n) if n.chars().count() > 64 || n.chars().any(char::is_control) => Err(
            ApiError::bad_request("a name is at most 64 characters, without control characters"),
        ),
        Some(n) if n.is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// The server's clock now, in Unix milliseconds with a fraction: what pages set their clocks by.
/// A page estimates its clock's offset from the answers that carry it, NTP style: with the
/// request sent at t0 and the answer read at t3 on its own clock, offset = serverTime -
/// (t0 + t3) / 2, off by at most (t3 - t0) / 2; it keeps the estimate of its shortest round trip.
pub fn server_time() -> f64 {
    jiff::Timestamp::now().as_microsecond() as f64 / 1000.0
}

/// Where a recorder that started at `started_at` (server clock, Unix ms) starts in the recording
/// that started at `recording_start` (an RFC 3339 timestamp): milliseconds after it, 0 when the
/// estimate falls a little before it (a clock estimate is off by up to its error, and a recorder
/// starts after the recording did). A time that cannot be this recording's is refused.
pub fn start_offset_ms(
    started_at: f64,
    recording_start: &str,
    recording: &str,
) -> Result<Option<i64>, ApiError> {
    let Ok(start) = recording_start.parse::<jiff::Timestamp>() else {
        // A marker from before recordings had a start time: nothing to place the track by.
        return Ok(None);
    };
    let start_ms = start.as_microsecond() as f64 / 1000.0;
    let offset = started_at - start_ms;
    // Recorders start when they hear of the recording, so an offset below zero is the
    // estimate's error; a minute before, or more than a day after, is another clock or a bug.
    if !offset.is_finite()
        || offset < -60_000.0
        || offset > mixdown_crds::validation::MAX_START_OFFSET_MS as f64
    {
        return Err(ApiError::bad_request(format!(
            "recorderStartedAt {started_at} is not a time of recording {recording}, which started at {recording_start} ({start_ms:.0} ms on the server's clock): send the recorder's start on the server's clock, in Unix milliseconds"
        )));
    }
    Ok(Some(offset.max(0.0).round() as i64))
}

fn expiry(ttl: Duration) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(ttl.as_secs() as i64)).to_string()
}

fn result(label: &'static str) -> crate::metrics::ResultLabels {
    crate::metrics::ResultLabels { result: label }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_numbers_and_names_are_checked() {
        assert_eq!(parse_seq("0").ok(), Some(0));
        assert_eq!(parse_seq("7199").ok(), Some(7199));
        for bad in ["-1", "x", "", "100000000", "1.5"] {
            assert!(parse_seq(bad).is_err(), "{bad}");
        }
        assert!(display_name(Some("x".repeat(65))).is_err());
        assert_eq!(display_name(Some("  ".into())).ok(), Some(None));
    }

    #[test]
    fn a_recorder_start_on_the_servers_clock_becomes_the_tracks_offset() {
        let start = "2026-12-03T10:00:00.250Z";
        let start_ms = 1_796_292_000_250.0;
        assert_eq!(
            start.parse::<jiff::Timestamp>().unwrap().as_millisecond() as f64,
            start_ms
        );
        let offset = |at: f64| start_offset_ms(at, start, "rec1").map_err(|e| e.to_string());
        assert_eq!(offset(start_ms + 3000.4), Ok(Some(3000)));
        assert_eq!(offset(start_ms + 0.6), Ok(Some(1)));
        // A little before the start is the estimate's error: the recorder started with it.
        assert_eq!(offset(start_ms - 35.0), Ok(Some(0)));
        // Another clock, or not a time at all: refused, naming the field.
        for bad in [
            start_ms - 3_600_000.0,
            start_ms + 90_000_000.0,
            f64::NAN,
            1234.0,
        ] {
            let refused = offset(bad).unwrap_err();
            assert!(refused.contains("recorderStartedAt"), "{refused}");
        }
        // A marker without a start time places nothing.
        assert_eq!(start_offset_ms(start_ms, "", "rec1").ok(), Some(None));
        // The server's clock is what pages set theirs by: Unix milliseconds, now.
        let now = jiff::Timestamp::now().as_millisecond() as f64;
        assert!((server_time() - now).abs() < 1000.0);
    }

    #[test]
    fn confirmed_counts_each_chunk_once() {
        let mut c = Confirmed {
            seqs: Vec::new(),
            count: 0,
            touched: Instant::now(),
        };
        for seq in [0, 1, 1, 200, 0, 7199] {
            c.insert(seq);
        }
        assert_eq!(c.count, 4);
    }
}
