//! The RecordingJob CRD on a real API server: it installs, accepts valid objects with their
//! defaults, rejects invalid ones naming the field, and reads well in `kubectl get` and
//! `kubectl explain`.

use std::process::Command;

use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Api, CustomResourceExt};
use mixdown_crds::{Phase, RecordingJob, RecordingJobStatus, names};
use mixdown_testkit::cluster::ControlPlane;
use serde_json::{Value, json};

async fn control_plane_with_crd() -> &'static ControlPlane {
    let cp = ControlPlane::shared().await;
    cp.install_crd(&RecordingJob::crd())
        .await
        .expect("the RecordingJob CRD installs and becomes Established");
    cp
}

/// A valid RecordingJob as the API would write it, with `tweak` applied to its JSON.
fn recording_job(name: &str, tweak: impl FnOnce(&mut Value)) -> DynamicObject {
    let mut value = json!({
        "apiVersion": names::API_VERSION,
        "kind": names::KIND,
        "metadata": { "name": name },
        "spec": {
            "roomId": "room-1",
            "recordingId": "rec_A1",
            "tracks": [{
                "participantId": "alice",
                "source": { "prefix": "riverside/chunks/room-1/rec_A1/alice/", "chunkCount": 30 }
            }],
            "output": { "prefix": "riverside/processed/room-1/rec_A1/" }
        }
    });
    tweak(&mut value);
    serde_json::from_value(value).expect("a RecordingJob is a valid object")
}

fn dynamic_api(cp: &ControlPlane, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        cp.client(),
        namespace,
        &ApiResource::erase::<RecordingJob>(&()),
    )
}

fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(args)
        .output()
        .expect("kubectl runs (Debian: apt-get install kubernetes-client)");
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_recording_job_is_accepted_with_its_defaults() {
    let cp = control_plane_with_crd().await;
    let ns = cp.namespace().await;
    let created = dynamic_api(cp, ns.name())
        .create(&PostParams::default(), &recording_job("rec-valid", |_| {}))
        .await
        .expect("a valid RecordingJob is accepted");

    let typed: RecordingJob =
        serde_json::from_value(serde_json::to_value(created).expect("serializes"))
            .expect("the stored object reads back as a RecordingJob");
    assert_eq!(typed.spec.backoff_limit, 3, "backoffLimit defaults to 3");
    assert_eq!(typed.spec.active_deadline_seconds, 3600);
    assert_eq!(
        typed.spec.upload_timeout_seconds, 600,
        "uploadTimeoutSeconds defaults to 600"
    );
    assert_eq!(typed.spec.output.profile, mixdown_crds::Profile::Mp4);
    assert!(
        typed.spec.cleanup.delete_chunks,
        "chunks are deleted by default"
    );
    assert_eq!(typed.spec.ttl_seconds_after_finished, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_recording_jobs_are_rejected_naming_the_field() {
    let cp = control_plane_with_crd().await;
    let ns = cp.namespace().await;
    let api = dynamic_api(cp, ns.name());

    let track = |i: usize| {
        json!({
            "participantId": format!("p{i}"),
            "source": { "prefix": format!("riverside/chunks/r/x/p{i}/"), "chunkCount": 1 }
        })
    };
    type Tweak = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Tweak, &str)> = vec![
        (
            "slash in an id",
            Box::new(|v| v["spec"]["recordingId"] = json!("a/b")),
            "spec.recordingId",
        ),
        (
            "dots in an id",
            Box::new(|v| v["spec"]["roomId"] = json!("..")),
            "spec.roomId",
        ),
        (
            "dots in a participant id",
            Box::new(|v| v["spec"]["tracks"][0]["participantId"] = json!("../x")),
            "spec.tracks[0].participantId",
        ),
        (
            "a prefix climbing out",
            Box::new(|v| v["spec"]["tracks"][0]["source"]["prefix"] = json!("riverside/../etc/")),
            "spec.tracks[0].source.prefix",
        ),
        (
            "zero tracks",
            Box::new(|v| v["spec"]["tracks"] = json!([])),
            "spec.tracks",
        ),
        (
            "33 tracks",
            Box::new(move |v| v["spec"]["tracks"] = Value::Array((0..33).map(track).collect())),
            "spec.tracks",
        ),
        (
            "an unknown profile",
            Box::new(|v| v["spec"]["output"]["profile"] = json!("gif")),
            "spec.output.profile",
        ),
        (
            "a negative backoffLimit",
            Box::new(|v| v["spec"]["backoffLimit"] = json!(-1)),
            "spec.backoffLimit",
        ),
        (
            "a zero chunk count",
            Box::new(|v| v["spec"]["tracks"][0]["source"]["chunkCount"] = json!(0)),
            "spec.tracks[0].source.chunkCount",
        ),
    ];

    for (i, (what, tweak, field)) in cases.into_iter().enumerate() {
        let object = recording_job(&format!("rec-invalid-{i}"), tweak);
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => panic!("a RecordingJob with {what} was accepted"),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{what}: {status:?}");
                // v1.20 names list items without their index (`spec.tracks.participantId`),
                // newer servers with it (`spec.tracks[0].participantId`): accept both.
                let unindexed = field.replace("[0]", "");
                assert!(
                    status.message.contains(field) || status.message.contains(&unindexed),
                    "{what}: the message should name {field}, got: {}",
                    status.message
                );
            }
            Err(other) => panic!("{what}: unexpected error {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_get_shows_the_printer_columns_by_plural_and_short_name() {
    let cp = control_plane_with_crd().await;
    let ns = cp.namespace().await;
    let api = dynamic_api(cp, ns.name());
    api.create(
        &PostParams::default(),
        &recording_job("rec-columns", |_| {}),
    )
    .await
    .expect("created");

    // Give it a status, as the operator and worker would, so every column has a value.
    let typed: Api<RecordingJob> = Api::namespaced(cp.client(), ns.name());
    let status = RecordingJobStatus {
        phase: Some(Phase::Running),
        progress: Some(42),
        attempts: Some(2),
        conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: names::conditions::UPLOADS_COMPLETE.into(),
            status: "True".into(),
            reason: names::reasons::ALL_TRACKS_SEALED.into(),
            message: "every track is sealed".into(),
            last_transition_time: serde_json::from_value(json!("2026-12-01T10:00:00Z"))
                .expect("a time"),
            observed_generation: Some(1),
        }],
        ..RecordingJobStatus::default()
    };
    typed
        .patch_status(
            "rec-columns",
            &PatchParams::apply("mixdown-test").force(),
            &Patch::Apply(json!({
                "apiVersion": names::API_VERSION,
                "kind": names::KIND,
                "status": status,
            })),
        )
        .await
        .expect("status is writable through the status subresource");

    for resource in ["recordingjobs", "rj", "recordingjob.mixdown.dev"] {
        let table = kubectl(cp, &["get", resource, "-n", ns.name()]);
        let mut lines = table.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "NAME", "ROOM", "PHASE", "SEALED", "PROGRESS", "ATTEMPTS", "AGE"
            ],
            "kubectl get {resource}:\n{table}"
        );
        let row: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            row[..6],
            ["rec-columns", "room-1", "Running", "True", "42", "2"],
            "kubectl get {resource}:\n{table}"
        );
    }

    // The `mixdown` category lists it too.
    let by_category = kubectl(cp, &["get", "mixdown", "-n", ns.name(), "-o", "name"]);
    assert!(
        by_category.contains("recordingjob.mixdown.dev/rec-columns"),
        "kubectl get mixdown: {by_category}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_explain_shows_the_field_descriptions() {
    let cp = control_plane_with_crd().await;
    // The API server publishes a new CRD's schema to its OpenAPI document a moment after
    // the CRD is Established; retry briefly instead of racing it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let explained = loop {
        let output = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .args(["explain", "recordingjob.spec.tracks"])
            .output()
            .expect("kubectl runs (Debian: apt-get install kubernetes-client)");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && text.contains("participantId") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl explain never described recordingjob.spec.tracks: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(
        explained.contains("One track per participant"),
        "the tracks description is missing:\n{explained}"
    );
    assert!(
        explained.contains("The participant who recorded this track"),
        "the participantId description is missing:\n{explained}"
    );

    let chunk_count = kubectl(
        cp,
        &["explain", "recordingjob.spec.tracks.source.chunkCount"],
    );
    assert!(
        chunk_count.contains("Number of chunks the uploader sealed the track with"),
        "{chunk_count}"
    );
    let timeout = kubectl(cp, &["explain", "recordingjob.spec.uploadTimeoutSeconds"]);
    assert!(
        timeout.contains("waits for") && timeout.contains("unsealed tracks"),
        "{timeout}"
    );
}

/// Every description the types give (`crds/src/lib.rs` doc comments) is what `kubectl explain`
/// shows for its field: each object of the schema is explained once, and the explanation lists
/// each of its fields with its description. The validation rules (which the servers publish
/// differently, or not at all) must not cost a description. Servers before 1.24 publish only
/// OpenAPI v2, where a nullable object (`status`, `spec.resources`, ...) has no fields to list:
/// there only its own description is checked.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_explain_shows_every_description() {
    let cp = control_plane_with_crd().await;
    let crd = RecordingJob::crd();
    let root = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.clone())
        .expect("the CRD has a schema");
    // Embedded Kubernetes types: their fields are described by Kubernetes, not by Mixdown.
    const EMBEDDED: &[&str] = &["spec.resources", "spec.tolerations", "status.conditions"];
    let mut objects = vec![(
        "spec".to_string(),
        root.properties.as_ref().unwrap()["spec"].clone(),
    )];
    objects.push((
        "status".to_string(),
        root.properties.as_ref().unwrap()["status"].clone(),
    ));
    let normalize = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut checked = 0;
    while let Some((path, schema)) = objects.pop() {
        // An array's fields are its items' fields; kubectl explain walks into items by name.
        let schema = match schema.items {
            Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) => *items,
            _ => schema,
        };
        let Some(properties) = schema.properties else {
            continue;
        };
        // Its description was checked with its parent's fields; its own fields are not
        // published where the server has only OpenAPI v2.
        if schema.nullable == Some(true) && !cp.version().publishes_openapi_v3() {
            continue;
        }
        let resource = format!("recordingjob.{path}");
        // A new CRD's schema reaches the OpenAPI documents a moment after it is Established.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let explained = loop {
            let output = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(cp.kubeconfig_path())
                .args(["explain", &resource])
                .output()
                .expect("kubectl runs (Debian: apt-get install kubernetes-client)");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if output.status.success() && properties.keys().all(|k| text.contains(k.as_str())) {
                break normalize(&text);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl explain {resource} on Kubernetes {} never listed all of {:?}: {text}{}",
                cp.version(),
                properties.keys().collect::<Vec<_>>(),
                String::from_utf8_lossy(&output.stderr)
            );
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        };
        for (field, property) in properties {
            let field_path = format!("{path}.{field}");
            let description = property
                .description
                .as_deref()
                .unwrap_or_else(|| panic!("{field_path} has no description in the types"));
            assert!(
                explained.contains(&normalize(description)),
                "kubectl explain {resource} on Kubernetes {} lacks the description of {field}: \
                 {description:?}\n{explained}",
                cp.version()
            );
            checked += 1;
            if !EMBEDDED.contains(&field_path.as_str()) {
                objects.push((field_path, property));
            }
        }
    }
    // All of them (spec and status) from 1.24; the spec's alone before.
    let expected = if cp.version().publishes_openapi_v3() {
        40
    } else {
        20
    };
    assert!(
        checked > expected,
        "only {checked} descriptions were checked"
    );
}
