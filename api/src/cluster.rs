//! The cluster as the API's state: recording markers and RecordingJobs.
//!
//! When a recording starts, the API writes a marker, a ConfigMap named like the recording's
//! RecordingJob (`recording_job_name`), holding the room, the recording id, who started it and
//! when. Every replica watches markers and RecordingJobs, so any replica can answer for any
//! recording, and a start on one replica reaches the sockets of all (`start-rec`). When the
//! recording stops, the marker is made a dependent of the RecordingJob, so deleting the
//! RecordingJob (by hand or by its TTL) garbage-collects the marker too.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use mixdown_crds::names::{annotations, field_managers, labels};
use mixdown_crds::{RecordingJob, RecordingJobSpec};

use crate::book::Marker;

/// `app.kubernetes.io/component` of recording markers; the marker watch selects on it.
pub const MARKER_COMPONENT: &str = "recording";
/// The label selector of recording markers.
pub const MARKER_SELECTOR: &str =
    "app.kubernetes.io/component=recording,app.kubernetes.io/managed-by=mixdown-api";

/// Annotation prefix of a participant's confirmed chunk count on a marker.
pub const CONFIRMED_PREFIX: &str = "confirmed.mixdown.dev/";
/// Annotation prefix of a participant's display name on a marker (the room's panel shows it).
pub const NAME_PREFIX: &str = "name.mixdown.dev/";

mod keys {
    pub const ROOM: &str = "roomId";
    pub const RECORDING: &str = "recordingId";
    pub const STARTED_AT: &str = "startedAt";
    pub const STARTED_BY: &str = "startedBy";
}

/// Kubernetes API failures, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct ClusterError {
    pub what: String,
    #[source]
    pub source: kube::Error,
}

/// Whether `e` is the API server's 409 AlreadyExists.
pub fn already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The namespace's markers and RecordingJobs.
#[derive(Clone)]
pub struct Cluster {
    pub namespace: String,
    pub rjs: Api<RecordingJob>,
    pub markers: Api<ConfigMap>,
}

impl Cluster {
    pub fn new(client: Client, namespace: &str) -> Cluster {
        Cluster {
            namespace: namespace.to_string(),
            rjs: Api::namespaced(client.clone(), namespace),
            markers: Api::namespaced(client, namespace),
        }
    }

    /// Writes the marker of a recording that starts now.
    pub async fn create_marker(&self, marker: &Marker) -> Result<(), ClusterError> {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(marker.name.clone()),
                labels: Some(common_labels(MARKER_COMPONENT)),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (keys::ROOM.to_string(), marker.room_id.clone()),
                (keys::RECORDING.to_string(), marker.recording_id.clone()),
                (keys::STARTED_AT.to_string(), marker.started_at.clone()),
                (keys::STARTED_BY.to_string(), marker.started_by.clone()),
            ])),
            ..ConfigMap::default()
        };
        self.markers
            .create(&PostParams::default(), &cm)
            .await
            .map(|_| ())
            .map_err(|source| ClusterError {
                what: format!("creating recording marker {}", marker.name),
                source,
            })
    }

    /// The marker named `name`, straight from the API server (for one another replica wrote a
    /// moment ago, before this replica's watch has it).
    pub async fn get_marker(&self, name: &str) -> Result<Option<Marker>, ClusterError> {
        self.markers
            .get_opt(name)
            .await
            .map(|cm| cm.as_ref().and_then(marker_of))
            .map_err(|source| ClusterError {
                what: format!("reading recording marker {name}"),
                source,
            })
    }

    pub async fn get_job(&self, name: &str) -> Result<Option<RecordingJob>, ClusterError> {
        self.rjs.get_opt(name).await.map_err(|source| ClusterError {
            what: format!("reading RecordingJob {name}"),
            source,
        })
    }

    /// Creates the RecordingJob `name`; `Ok(None)` when it already exists (a second stop, or
    /// another replica's at the same moment).
    pub async fn create_job(
        &self,
        name: &str,
        spec: RecordingJobSpec,
        stopped_by: &str,
    ) -> Result<Option<RecordingJob>, ClusterError> {
        let mut rj = RecordingJob::new(name, spec);
        rj.metadata.namespace = Some(self.namespace.clone());
        rj.metadata.labels = Some(common_labels("recording-job"));
        rj.metadata.annotations = Some(BTreeMap::from([(
            annotations::STOPPED_BY.to_string(),
            stopped_by.to_string(),
        )]));
        match self.rjs.create(&PostParams::default(), &rj).await {
            Ok(created) => Ok(Some(created)),
            Err(e) if already_exists(&e) => Ok(None),
            Err(source) => Err(ClusterError {
                what: format!("creating RecordingJob {name}"),
                source,
            }),
        }
    }

    /// Writes `tracks` on the spec of RecordingJob `name` if it is still at `resource_version`;
    /// `Ok(false)` when it changed since (the caller reads it again and decides again).
    pub async fn write_tracks(
        &self,
        name: &str,
        resource_version: &str,
        tracks: &[mixdown_crds::Track],
    ) -> Result<bool, ClusterError> {
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": resource_version},
            "spec": {"tracks": tracks},
        });
        let params = PatchParams {
            field_manager: Some(field_managers::API.to_string()),
            ..PatchParams::default()
        };
        match self.rjs.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(source) => Err(ClusterError {
                what: format!("sealing a track of RecordingJob {name}"),
                source,
            }),
        }
    }

    /// Writes confirmed chunk counts (by participant) on the marker `name`, with the display
    /// names of those participants; every replica's marker watch turns a rise into
    /// `upload-progress` for its sockets.
    pub async fn write_confirmed(
        &self,
        name: &str,
        counts: &BTreeMap<String, u32>,
        names: &BTreeMap<String, String>,
    ) -> Result<(), ClusterError> {
        // Participant ids are minted by the API (`g-…`, `h-…`), always valid annotation names
        // (at most 63 characters, alphanumeric at both ends); anything else is left out rather
        // than failing the whole write.
        let annotations: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .filter(|(p, _)| annotation_name(p))
            .map(|(p, c)| (format!("{CONFIRMED_PREFIX}{p}"), c.to_string().into()))
            .chain(
                names
                    .iter()
                    .filter(|(p, _)| counts.contains_key(*p) && annotation_name(p))
                    .map(|(p, n)| (format!("{NAME_PREFIX}{p}"), n.clone().into())),
            )
            .collect();
        if annotations.is_empty() {
            return Ok(());
        }
        let patch = serde_json::json!({"metadata": {"annotations": annotations}});
        self.markers
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|source| ClusterError {
                what: format!("writing confirmed counts on marker {name}"),
                source,
            })
    }

    /// Makes the marker a dependent of its RecordingJob, for garbage collection.
    pub async fn adopt_marker(&self, rj: &RecordingJob) -> Result<(), ClusterError> {
        let name = rj.name_any();
        let owner = OwnerReference {
            api_version: RecordingJob::api_version(&()).to_string(),
            kind: RecordingJob::kind(&()).to_string(),
            name: name.clone(),
            uid: rj.uid().unwrap_or_default(),
            ..OwnerReference::default()
        };
        let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
        self.markers
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|source| ClusterError {
                what: format!("making marker {name} a dependent of its RecordingJob"),
                source,
            })
    }
}

fn annotation_name(p: &str) -> bool {
    p.len() <= 63
        && p.starts_with(|c: char| c.is_ascii_alphanumeric())
        && p.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The marker a ConfigMap holds, if it holds one.
pub fn marker_of(cm: &ConfigMap) -> Option<Marker> {
    let data = cm.data.as_ref()?;
    let get = |k: &str| data.get(k).cloned();
    let confirmed = cm
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter_map(|(k, v)| {
            let participant = k.strip_prefix(CONFIRMED_PREFIX)?;
            mixdown_crds::is_valid_id(participant)
                .then(|| Some((participant.to_string(), v.parse().ok()?)))?
        })
        .collect();
    let names = cm
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter_map(|(k, v)| {
            let participant = k.strip_prefix(NAME_PREFIX)?;
            mixdown_crds::is_valid_id(participant).then(|| (participant.to_string(), v.clone()))
        })
        .collect();
    Some(Marker {
        name: cm.metadata.name.clone()?,
        room_id: get(keys::ROOM).filter(|r| mixdown_crds::is_valid_id(r))?,
        recording_id: get(keys::RECORDING).filter(|r| mixdown_crds::is_valid_id(r))?,
        started_at: get(keys::STARTED_AT).unwrap_or_default(),
        started_by: get(keys::STARTED_BY).unwrap_or_default(),
        confirmed,
        names,
    })
}

fn common_labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            labels::NAME.to_string(),
            mixdown_crds::names::APP_NAME.to_string(),
        ),
        (labels::COMPONENT.to_string(), component.to_string()),
        (
            labels::PART_OF.to_string(),
            mixdown_crds::names::APP_NAME.to_string(),
        ),
        (
            labels::MANAGED_BY.to_string(),
            field_managers::API.to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_through_their_configmap_and_bad_ones_are_ignored() {
        let mut cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("rec-x".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                ("roomId".to_string(), "room-1".to_string()),
                ("recordingId".to_string(), "x".to_string()),
                ("startedBy".to_string(), "alice".to_string()),
            ])),
            ..ConfigMap::default()
        };
        let marker = marker_of(&cm).expect("a marker");
        assert_eq!(
            (marker.room_id.as_str(), marker.recording_id.as_str()),
            ("room-1", "x")
        );
        assert!(marker.confirmed.is_empty());
        cm.metadata.annotations = Some(BTreeMap::from([
            (format!("{CONFIRMED_PREFIX}alice"), "12".to_string()),
            (format!("{CONFIRMED_PREFIX}bad.id"), "3".to_string()),
            (format!("{CONFIRMED_PREFIX}bob"), "x".to_string()),
        ]));
        let marker = marker_of(&cm).expect("a marker");
        assert_eq!(
            marker.confirmed,
            BTreeMap::from([("alice".to_string(), 12)])
        );
        cm.data
            .as_mut()
            .expect("data")
            .insert("roomId".into(), "../other".into());
        assert!(
            marker_of(&cm).is_none(),
            "an invalid room id is not a marker"
        );
        assert!(MARKER_SELECTOR.contains(MARKER_COMPONENT));
    }
}
