//! The manifest: what a finished run made, written beside the outputs before any chunk is
//! deleted, so that finished stays finished.
//!
//! Without it, a run after success (a retry after a crash between deleting the chunks and
//! writing the report, or a rerun by hand) would find no chunks and fail as bad input, and a
//! finished recording would end `Failed`. With it, a run that finds the manifest of its job
//! checks that every output it lists is still there as recorded (HEAD: size and ETag), deletes
//! whatever source chunks are left (a crash in the middle of deleting), and reports the same
//! outputs. Outputs that are gone or differ are not a success: the run says which, and keeps
//! every chunk that remains.
//!
//! `{output.prefix}manifest.json`, beside `{participantId}.{ext}`: no profile's extension is
//! `json`, so it cannot be an output's key.
//!
//! A job with a mixdown writes the manifest twice: once its tracks are verified (before any
//! chunk goes), and again with `mixdown` once the mixdown is verified. A run that finds a
//! manifest without `mixdown` makes only the mixdown, from the tracks' outputs; one with it
//! checks the mixdown like the tracks. `mixdown` is optional, so a manifest written before it
//! existed is still version 1 and still parses.
//!
//! ```json
//! {"version":1,"roomId":"room-1","recordingId":"demo","profile":"mp4",
//!  "outputs":[{"participantId":"alice","key":"riverside/processed/room-1/demo/alice.mp4",
//!    "sizeBytes":123,"durationSeconds":30.0,"sealed":true,"chunks":30,
//!    "eTag":"\"…-1\"","sourcePrefix":"riverside/chunks/room-1/demo/alice/","sourceChunks":30}]}
//! ```

use mixdown_crds::{Profile, RecordingOutput, WorkerJob};
use serde::{Deserialize, Serialize};

use crate::chunks;
use crate::storage::Head;

/// Object name of the manifest, below the job's output prefix.
pub const NAME: &str = "manifest.json";
/// The one version written so far; a manifest of another version is not understood.
pub const VERSION: u32 = 1;

/// Key of the manifest of a job whose outputs go under `output_prefix`.
pub fn key(output_prefix: &str) -> String {
    format!("{}{NAME}", chunks::dir_prefix(output_prefix))
}

/// What a finished run made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub version: u32,
    pub room_id: String,
    pub recording_id: String,
    pub profile: Profile,
    /// One per track, in the job's order.
    pub outputs: Vec<Entry>,
    /// The mixdown, once it is verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixdown: Option<MixdownEntry>,
}

/// The finished mixdown.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MixdownEntry {
    /// The report's entry (`kind: mixdown`).
    #[serde(flatten)]
    pub output: RecordingOutput,
    /// Its ETag as storage answered HEAD once it was verified.
    pub e_tag: String,
}

/// One finished output and where it came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The report's entry, as the run that made the file reported it.
    #[serde(flatten)]
    pub output: RecordingOutput,
    /// The output's ETag as storage answered HEAD once it was verified.
    pub e_tag: String,
    /// The track's chunk prefix, as a directory (`…/alice/`).
    pub source_prefix: String,
    /// Chunks `0..sourceChunks` went into the file: the ones to delete. An unsealed track's
    /// chunks after its gap have higher numbers and are kept.
    pub source_chunks: u64,
}

impl Manifest {
    /// The manifest of `job`, whose tracks made `outputs` (in the job's order), each with the
    /// ETag storage gave it.
    pub fn new(job: &WorkerJob, outputs: &[(RecordingOutput, String)]) -> Manifest {
        Manifest {
            version: VERSION,
            room_id: job.room_id.clone(),
            recording_id: job.recording_id.clone(),
            profile: job.output.profile,
            outputs: job
                .tracks
                .iter()
                .zip(outputs)
                .map(|(track, (output, e_tag))| Entry {
                    output: output.clone(),
                    e_tag: e_tag.clone(),
                    source_prefix: chunks::dir_prefix(&track.source.prefix),
                    source_chunks: u64::from(output.chunks.unwrap_or(0)),
                })
                .collect(),
            mixdown: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// The manifest in `bytes`; an error says why it cannot be used.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let version: Version = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
        if version.version != VERSION {
            return Err(format!(
                "version {} (this worker writes and reads version {VERSION})",
                version.version
            ));
        }
        serde_json::from_slice(bytes).map_err(|err| err.to_string())
    }

    /// Whether this is the manifest of `job`: the same recording, profile and tracks (each
    /// participant from the same chunk prefix, to the key the job would give it).
    pub fn describes(&self, job: &WorkerJob) -> bool {
        self.room_id == job.room_id
            && self.recording_id == job.recording_id
            && self.profile == job.output.profile
            && self.outputs.len() == job.tracks.len()
            && self.outputs.iter().zip(&job.tracks).all(|(entry, track)| {
                entry.output.participant_id == track.participant_id
                    && entry.source_prefix == chunks::dir_prefix(&track.source.prefix)
                    && entry.output.key
                        == crate::job::output_key(
                            &job.output.prefix,
                            &track.participant_id,
                            job.output.profile,
                        )
            })
    }

    /// The report's outputs of the tracks.
    pub fn report_outputs(&self) -> Vec<RecordingOutput> {
        self.outputs.iter().map(|e| e.output.clone()).collect()
    }
}

/// How the mixdown stands against its manifest entry (see [`output_problem`]).
pub fn mixdown_problem(entry: &MixdownEntry, head: Option<&Head>) -> Option<String> {
    output_problem(
        &Entry {
            output: entry.output.clone(),
            e_tag: entry.e_tag.clone(),
            source_prefix: String::new(),
            source_chunks: 0,
        },
        head,
    )
}

/// How an output stands against its manifest entry: `None` when it is there as recorded,
/// otherwise what is wrong, in words.
pub fn output_problem(entry: &Entry, head: Option<&Head>) -> Option<String> {
    let key = &entry.output.key;
    let recorded = entry.output.size_bytes;
    match head {
        None => Some(format!("{key} is gone")),
        Some(head) if head.size != u64::try_from(recorded).unwrap_or(u64::MAX) => Some(format!(
            "{key} holds {} bytes (ETag {}) where the manifest recorded {recorded} (ETag {})",
            head.size, head.e_tag, entry.e_tag
        )),
        Some(head) if head.e_tag != entry.e_tag => Some(format!(
            "{key} has ETag {} where the manifest recorded {} (same size, {recorded} bytes: \
             written again)",
            head.e_tag, entry.e_tag
        )),
        Some(_) => None,
    }
}

/// Of the objects listed under an entry's source prefix, the keys of the chunks that went into
/// its file: those numbered below `sourceChunks`.
pub fn sources_left<'a>(entry: &Entry, listed: &'a [chunks::Listed]) -> Vec<&'a str> {
    listed
        .iter()
        .filter(|object| {
            object
                .key
                .strip_prefix(&entry.source_prefix)
                .and_then(chunks::parse_seq)
                .is_some_and(|seq| seq < entry.source_chunks)
        })
        .map(|object| object.key.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixdown_crds::LeftOut;

    fn job() -> WorkerJob {
        crate::job::parse(
            r#"{"roomId":"room1","recordingId":"rec1","tracks":[
                {"participantId":"alice","source":{"prefix":"riverside/chunks/room1/rec1/alice","chunkCount":3}},
                {"participantId":"bob","source":{"prefix":"riverside/chunks/room1/rec1/bob/"}}],
              "output":{"prefix":"riverside/processed/room1/rec1","profile":"webm"}}"#,
        )
        .expect("valid job")
    }

    fn outputs() -> Vec<(RecordingOutput, String)> {
        vec![
            (
                RecordingOutput {
                    kind: Default::default(),
                    participant_id: "alice".into(),
                    key: "riverside/processed/room1/rec1/alice.webm".into(),
                    size_bytes: 1000,
                    duration_seconds: 3.0,
                    sealed: true,
                    chunks: Some(3),
                    left_out: None,
                },
                "\"a-1\"".into(),
            ),
            (
                RecordingOutput {
                    kind: Default::default(),
                    participant_id: "bob".into(),
                    key: "riverside/processed/room1/rec1/bob.webm".into(),
                    size_bytes: 500,
                    duration_seconds: 2.0,
                    sealed: false,
                    chunks: Some(2),
                    left_out: Some(LeftOut {
                        missing_chunk: 2,
                        chunks_kept: 1,
                    }),
                },
                "\"b-1\"".into(),
            ),
        ]
    }

    #[test]
    fn a_manifest_round_trips_and_describes_its_job_only() {
        let job = job();
        let manifest = Manifest::new(&job, &outputs());
        assert_eq!(
            key(&job.output.prefix),
            "riverside/processed/room1/rec1/manifest.json"
        );
        let json = String::from_utf8(manifest.to_json()).expect("utf-8");
        assert!(json.contains(r#""sourceChunks":3"#), "{json}");
        assert!(json.contains(r#""eTag":"\"a-1\"""#), "{json}");
        let parsed = Manifest::parse(json.as_bytes()).expect("parses");
        assert_eq!(parsed, manifest);
        assert!(parsed.describes(&job));
        assert_eq!(
            parsed.report_outputs(),
            outputs().into_iter().map(|(o, _)| o).collect::<Vec<_>>()
        );
        assert_eq!(
            parsed.outputs[1].source_prefix,
            "riverside/chunks/room1/rec1/bob/"
        );

        let mut other = job.clone();
        other.output.profile = Profile::Mp4;
        assert!(!parsed.describes(&other), "another profile");
        let mut other = job.clone();
        other.tracks.pop();
        assert!(!parsed.describes(&other), "another set of tracks");
        let mut other = job.clone();
        other.tracks[0].source.prefix = "riverside/chunks/room1/rec2/alice/".into();
        assert!(!parsed.describes(&other), "other chunks");

        assert!(
            Manifest::parse(br#"{"version":2}"#)
                .unwrap_err()
                .contains("version 2")
        );
        assert!(Manifest::parse(b"not json").is_err());
    }

    #[test]
    fn a_manifest_with_a_mixdown_round_trips_and_one_without_still_parses() {
        let job = job();
        let mut manifest = Manifest::new(&job, &outputs());
        let old = String::from_utf8(manifest.to_json()).expect("utf-8");
        assert!(!old.contains("mixdown"), "{old}");
        assert_eq!(
            Manifest::parse(old.as_bytes()).expect("parses").mixdown,
            None
        );

        manifest.mixdown = Some(MixdownEntry {
            output: RecordingOutput {
                kind: mixdown_crds::OutputKind::Mixdown,
                participant_id: String::new(),
                key: "riverside/processed/room1/rec1/mixdown.mp4".into(),
                size_bytes: 2000,
                duration_seconds: 3.0,
                sealed: true,
                chunks: None,
                left_out: None,
            },
            e_tag: "\"m-1\"".into(),
        });
        let json = String::from_utf8(manifest.to_json()).expect("utf-8");
        assert!(
            json.contains(r#""mixdown":{"kind":"mixdown","key":"#),
            "{json}"
        );
        let parsed = Manifest::parse(json.as_bytes()).expect("parses");
        assert_eq!(parsed, manifest);
        assert!(parsed.describes(&job));
        let entry = parsed.mixdown.as_ref().expect("mixdown");
        let head = Head {
            size: 2000,
            e_tag: "\"m-1\"".into(),
        };
        assert_eq!(mixdown_problem(entry, Some(&head)), None);
        assert!(
            mixdown_problem(entry, None)
                .expect("gone")
                .ends_with("mixdown.mp4 is gone")
        );
    }

    #[test]
    fn an_output_is_judged_by_its_size_and_etag() {
        let manifest = Manifest::new(&job(), &outputs());
        let entry = &manifest.outputs[0];
        let head = |size, e_tag: &str| Head {
            size,
            e_tag: e_tag.into(),
        };
        assert_eq!(output_problem(entry, Some(&head(1000, "\"a-1\""))), None);
        assert!(
            output_problem(entry, None)
                .unwrap()
                .ends_with("alice.webm is gone")
        );
        assert!(
            output_problem(entry, Some(&head(999, "\"x-1\"")))
                .unwrap()
                .contains("holds 999 bytes (ETag \"x-1\") where the manifest recorded 1000")
        );
        assert!(
            output_problem(entry, Some(&head(1000, "\"x-1\"")))
                .unwrap()
                .contains("has ETag \"x-1\"")
        );
    }

    #[test]
    fn only_the_chunks_that_went_into_the_file_are_left_to_delete() {
        let manifest = Manifest::new(&job(), &outputs());
        let bob = &manifest.outputs[1];
        let listed: Vec<chunks::Listed> = [
            "riverside/chunks/room1/rec1/bob/00000001.webm",
            "riverside/chunks/room1/rec1/bob/00000003.webm",
            "riverside/chunks/room1/rec1/bob/notes.txt",
            "riverside/chunks/room1/rec1/bob/2.webm",
        ]
        .iter()
        .map(|key| chunks::Listed {
            key: (*key).into(),
            size: 1,
        })
        .collect();
        assert_eq!(
            sources_left(bob, &listed),
            ["riverside/chunks/room1/rec1/bob/00000001.webm"]
        );
    }
}
