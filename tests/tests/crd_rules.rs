//! The RecordingJob CRD's validation rules (CEL, `crds/src/rules.rs`) on a real API server: from
//! Kubernetes 1.25 on, an edit of a field that cannot change is refused with a message naming
//! it, while the API's own edits (sealing a track, adding one) and placement edits pass. On older
//! servers the rules are dropped and every edit passes, which these tests check too: there the
//! operator's SpecApplied condition is all that tells of an edit.

use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Api, CustomResourceExt};
use mixdown_crds::{RecordingJob, names};
use mixdown_testkit::cluster::ControlPlane;
use serde_json::{Value, json};

async fn control_plane_with_crd() -> &'static ControlPlane {
    let cp = ControlPlane::shared().await;
    cp.install_crd(&RecordingJob::crd())
        .await
        .expect("the RecordingJob CRD installs and becomes Established");
    cp
}

fn api(cp: &ControlPlane, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        cp.client(),
        namespace,
        &ApiResource::erase::<RecordingJob>(&()),
    )
}

/// A RecordingJob as the API creates it at a stop: alice's track sealed, bob's still uploading.
fn at_stop(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": names::API_VERSION,
        "kind": names::KIND,
        "metadata": { "name": name },
        "spec": {
            "roomId": "room-1",
            "recordingId": name,
            "tracks": [
                { "participantId": "alice", "source": { "prefix": "c/room-1/r/alice/", "chunkCount": 3 } },
                { "participantId": "bob", "source": { "prefix": "c/room-1/r/bob/" } },
            ],
            "output": { "prefix": "p/room-1/r/" },
            "ttlSecondsAfterFinished": 600,
        }
    }))
    .expect("a RecordingJob is a valid object")
}

/// The spec's tracks with `edit` applied to a copy.
fn tracks(edit: impl FnOnce(&mut Vec<Value>)) -> Value {
    let mut tracks = vec![
        json!({ "participantId": "alice", "source": { "prefix": "c/room-1/r/alice/", "chunkCount": 3 } }),
        json!({ "participantId": "bob", "source": { "prefix": "c/room-1/r/bob/" } }),
    ];
    edit(&mut tracks);
    Value::Array(tracks)
}

async fn merge(api: &Api<DynamicObject>, name: &str, patch: Value) -> Result<(), kube::Error> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apis_edits_pass_on_every_version() {
    let cp = control_plane_with_crd().await;
    let ns = cp.namespace().await;
    let api = api(cp, ns.name());
    api.create(&PostParams::default(), &at_stop("seals"))
        .await
        .expect("created");

    // bob's page seals his track, with where it starts and his name, then carol's page (she
    // joined late) adds hers, sealed.
    let sealed = tracks(|t| {
        t[1]["source"]["chunkCount"] = json!(5);
        t[1]["startOffsetMs"] = json!(1500);
        t[1]["displayName"] = json!("Bob B.");
    });
    merge(&api, "seals", json!({"spec": {"tracks": sealed}}))
        .await
        .expect("sealing an unsealed track is accepted");
    let added = tracks(|t| {
        t[1]["source"]["chunkCount"] = json!(5);
        t[1]["startOffsetMs"] = json!(1500);
        t[1]["displayName"] = json!("Bob B.");
        t.push(json!({ "participantId": "carol", "source": { "prefix": "c/room-1/r/carol/", "chunkCount": 2 } }));
    });
    merge(&api, "seals", json!({"spec": {"tracks": added}}))
        .await
        .expect("adding a sealed track is accepted");
    // Sealing again with the same count (a retried request) changes nothing and passes.
    merge(&api, "seals", json!({"spec": {"tracks": added.clone()}}))
        .await
        .expect("the same tracks again are accepted");

    // The operator's and the retry's writes: status, annotations.
    merge(
        &api,
        "seals",
        json!({"metadata": {"annotations": {"mixdown.dev/retry": "1"}}}),
    )
    .await
    .expect("annotating is accepted");
    api.patch_status(
        "seals",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Pending"}})),
    )
    .await
    .expect("the status is writable");

    let stored = api.get("seals").await.expect("read back");
    assert_eq!(stored.data["spec"]["tracks"], added, "{stored:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn placement_stays_editable_on_every_version() {
    let cp = control_plane_with_crd().await;
    let ns = cp.namespace().await;
    let api = api(cp, ns.name());
    api.create(&PostParams::default(), &at_stop("placed"))
        .await
        .expect("created");
    let edits = [
        json!({"resources": {"requests": {"cpu": "2"}}}),
        json!({"nodeSelector": {"media": "fast"}}),
        json!({"tolerations": [{"key": "media", "operator": "Exists", "effect": "NoSchedule"}]}),
        json!({"priorityClassName": "batch-low"}),
        json!({"resources": null, "nodeSelector": null, "tolerations": null, "priorityClassName": null}),
    ];
    for edit in edits {
        merge(&api, "placed", json!({ "spec": edit }))
            .await
            .unwrap_or_else(|e| panic!("the placement edit {edit} is accepted: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edit_of_a_field_that_cannot_change_is_refused_naming_it_from_1_25() {
    let cp = control_plane_with_crd().await;
    let ns = cp.namespace().await;
    let api = api(cp, ns.name());
    let enforced = cp.version().enforces_validation_rules();

    // The edit, and the field its refusal must name.
    let cases: Vec<(&str, Value, &str)> = vec![
        ("roomId", json!({"roomId": "room-2"}), "roomId"),
        (
            "recordingId",
            json!({"recordingId": "other"}),
            "recordingId",
        ),
        (
            "output.prefix",
            json!({"output": {"prefix": "elsewhere/"}}),
            "output",
        ),
        (
            "output.profile",
            json!({"output": {"profile": "webm"}}),
            "output",
        ),
        (
            "cleanup",
            json!({"cleanup": {"deleteChunks": false}}),
            "cleanup",
        ),
        ("backoffLimit", json!({"backoffLimit": 7}), "backoffLimit"),
        (
            "activeDeadlineSeconds",
            json!({"activeDeadlineSeconds": 60}),
            "activeDeadlineSeconds",
        ),
        (
            "startTimeoutSeconds",
            json!({"startTimeoutSeconds": 60}),
            "startTimeoutSeconds",
        ),
        (
            "uploadTimeoutSeconds",
            json!({"uploadTimeoutSeconds": 0}),
            "uploadTimeoutSeconds",
        ),
        (
            "ttlSecondsAfterFinished changed",
            json!({"ttlSecondsAfterFinished": 1}),
            "ttlSecondsAfterFinished",
        ),
        (
            "ttlSecondsAfterFinished unset",
            json!({"ttlSecondsAfterFinished": null}),
            "ttlSecondsAfterFinished",
        ),
        (
            "a sealed track's count",
            json!({"tracks": tracks(|t| t[0]["source"]["chunkCount"] = json!(4))}),
            "tracks",
        ),
        (
            "a sealed track's start offset",
            json!({"tracks": tracks(|t| t[0]["startOffsetMs"] = json!(250))}),
            "tracks",
        ),
        (
            "a sealed track's display name",
            json!({"tracks": tracks(|t| t[0]["displayName"] = json!("Someone else"))}),
            "tracks",
        ),
        (
            "a sealed track unsealed",
            json!({"tracks": tracks(|t| {
                t[0]["source"].as_object_mut().map(|s| s.remove("chunkCount"));
            })}),
            "tracks",
        ),
        (
            "a track's prefix",
            json!({"tracks": tracks(|t| t[1]["source"]["prefix"] = json!("c/room-1/r/eve/"))}),
            "tracks",
        ),
        (
            "a track's participant",
            json!({"tracks": tracks(|t| t[1]["participantId"] = json!("eve"))}),
            "tracks",
        ),
        (
            "a track removed",
            json!({"tracks": tracks(|t| { t.pop(); })}),
            "tracks",
        ),
    ];

    for (i, (what, edit, field)) in cases.into_iter().enumerate() {
        let name = format!("frozen-{i}");
        api.create(&PostParams::default(), &at_stop(&name))
            .await
            .expect("created");
        let result = merge(&api, &name, json!({ "spec": edit })).await;
        match (enforced, result) {
            (true, Err(kube::Error::Api(status))) => {
                assert_eq!(status.code, 422, "{what}: {status:?}");
                assert!(
                    status.message.contains(&format!("{field} cannot be")),
                    "{what}: the refusal should name {field}, got: {}",
                    status.message
                );
            }
            (true, Ok(())) => panic!(
                "{what}: an edit of a field that cannot change was accepted by Kubernetes {}",
                cp.version()
            ),
            // Kubernetes before 1.25 dropped the rules from the CRD: the edit passes, and the
            // operator's SpecApplied condition is what tells of it.
            (false, Ok(())) => {}
            (_, Err(e)) => panic!("{what}: unexpected error {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_keeps_the_rules_only_from_1_25() {
    let cp = control_plane_with_crd().await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(cp.client());
    let stored = crds
        .get("recordingjobs.mixdown.dev")
        .await
        .expect("the CRD is there");
    let spec = stored.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref())
        .and_then(|p| p.get("spec"))
        .cloned()
        .expect("the CRD has a spec schema");
    let rules = spec.x_kubernetes_validations.unwrap_or_default();
    if cp.version().enforces_validation_rules() {
        assert!(
            rules
                .iter()
                .any(|r| r.rule.contains("ttlSecondsAfterFinished")),
            "the spec's rules are stored: {rules:?}"
        );
    } else {
        assert!(
            rules.is_empty(),
            "Kubernetes {} keeps no rules: {rules:?}",
            cp.version()
        );
    }
}

/// The README's way to install the CRD, `kubectl apply -f crds/recordingjob.yaml`, works on every
/// version; before 1.23 (which added `x-kubernetes-validations` to the CRD type) kubectl checks the
/// file against the server's own schema of CRDs and refuses the unknown field unless told
/// `--validate=false`, and the server then drops the rules.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_of_the_committed_crd_works_on_every_version() {
    let cp = control_plane_with_crd().await;
    let yaml = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/recordingjob.yaml");
    let apply = |extra: &[&str]| {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .args(["apply", "-f", yaml])
            .args(extra)
            .output()
            .expect("kubectl runs (Debian: apt-get install kubernetes-client)")
    };
    let knows_rules = cp.version() >= mixdown_testkit::cluster::KubeVersion::new(1, 23, 0);
    let output = if knows_rules {
        apply(&[])
    } else {
        let refused = apply(&[]);
        assert!(
            !refused.status.success()
                && String::from_utf8_lossy(&refused.stderr).contains("x-kubernetes-validations"),
            "kubectl's own check of the file names the field Kubernetes {} does not know",
            cp.version()
        );
        apply(&["--validate=false"])
    };
    assert!(
        output.status.success(),
        "kubectl apply -f crds/recordingjob.yaml on Kubernetes {}: {}{}",
        cp.version(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
