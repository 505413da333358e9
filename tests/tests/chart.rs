//! The Helm chart (`charts/mixdown`) with the real `helm` CLI, as a user runs it: `helm lint`, `helm
//! template` with every `ci/*-values.yaml`, the values schema refusing wrong values by name, the same
//! bytes on every render (GitOps), the CRD in sync with `crds/recordingjob.yaml`, every rendered object
//! accepted by a real API server (server-side dry run), and `helm install`, `upgrade` and `uninstall`
//! into the local control plane leaving what a user expects.
//!
//! The helm binary comes from `MIXDOWN_HELM`, or else from `tests/helm/setup.sh` (built from its Go
//! module, cached). No helm is a failure with instructions, never a skipped test. Pods do not run
//! here (the control plane has no pod runner for images), so the install test checks objects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::Role;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::discovery::{self, Scope};
use kube::{Api, Client, ResourceExt};
use mixdown_crds::RecordingJob;
use mixdown_testkit::cluster::ControlPlane;
use serde_json::{Value, json};

/// The API server version of the test control plane (whichever `KUBEBUILDER_ASSETS` holds);
/// renders without a cluster target it.
fn kube_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| match mixdown_testkit::cluster::assets_version() {
        Ok(version) => version.to_string(),
        Err(e) => panic!("the test control plane's version: {e:#}"),
    })
}

use mixdown_testkit::helm::{self, chart_dir, repo_root};

/// Every `ci/*-values.yaml`, sorted.
fn ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("ci"))
        .expect("charts/mixdown/ci exists")
        .map(|e| e.expect("readable ci/ entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("-values.yaml"))
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "ci/ holds the defaults, all-on and cluster-wide values: {files:?}"
    );
    files
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `helm template` of the chart with `args` (values files, --set ...), as text.
fn template_text(namespace: &str, args: &[&str]) -> String {
    let chart = chart_dir();
    let mut all = vec![
        "template",
        "mixdown",
        path_str(&chart),
        "--namespace",
        namespace,
        "--kube-version",
        kube_version(),
    ];
    all.extend_from_slice(args);
    helm::ok(&all)
}

/// The YAML documents of a render, empty ones dropped.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("helm rendered invalid YAML: {e}\n{text}"));
            serde_json::to_value(value).expect("YAML maps to JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn render(namespace: &str, args: &[&str]) -> Vec<Value> {
    documents(&template_text(namespace, args))
}

fn kind_name(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind}/{name} rendered; got {:?}",
                docs.iter().map(kind_name).collect::<Vec<_>>()
            )
        })
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter().map(kind_name).collect()
}

fn env_of(container: &Value) -> BTreeMap<String, Value> {
    container["env"]
        .as_array()
        .map(|env| {
            env.iter()
                .map(|e| {
                    let value = e
                        .get("value")
                        .cloned()
                        .unwrap_or_else(|| e["valueFrom"].clone());
                    (e["name"].as_str().unwrap_or_default().to_string(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A values file in a temporary folder.
fn values_file(dir: &tempfile::TempDir, name: &str, yaml: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, yaml).expect("writing a values file");
    path
}

#[test]
fn lint_passes_with_the_defaults_and_every_ci_values_file() {
    let chart = chart_dir();
    let out = helm::ok(&["lint", "--strict", path_str(&chart)]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    for values in ci_values() {
        let out = helm::ok(&[
            "lint",
            "--strict",
            path_str(&chart),
            "--values",
            path_str(&values),
        ]);
        assert!(
            out.contains("0 chart(s) failed"),
            "{}: {out}",
            values.display()
        );
    }
}

#[test]
fn every_ci_values_file_renders_what_it_switches_on() {
    for values in ci_values() {
        let docs = render("mixdown", &["--values", path_str(&values)]);
        for doc in &docs {
            assert!(
                doc["apiVersion"].is_string() && doc["kind"].is_string(),
                "{}: an object without apiVersion/kind: {doc}",
                values.display()
            );
        }
        let kinds = kinds(&docs);
        let name = values.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let has = |prefix: &str| kinds.iter().any(|k| k.starts_with(prefix));
        assert!(
            has("CustomResourceDefinition/recordingjobs.mixdown.dev"),
            "{name}: {kinds:?}"
        );
        assert_eq!(
            kinds
                .iter()
                .filter(|k| k.starts_with("Deployment/"))
                .count(),
            2,
            "{name}: the operator and the API: {kinds:?}"
        );
        match name {
            "all-on-values.yaml" => {
                for prefix in [
                    "Ingress/",
                    "NetworkPolicy/",
                    "ServiceMonitor/",
                    "PodDisruptionBudget/",
                    "Pod/",
                    "ConfigMap/mixdown-extra",
                    "ConfigMap/mixdown-extra-string",
                ] {
                    assert!(has(prefix), "{name} renders {prefix}: {kinds:?}");
                }
            }
            "cluster-wide-values.yaml" => {
                assert!(
                    has("ClusterRole/") && has("ClusterRoleBinding/"),
                    "{kinds:?}"
                );
            }
            _ => {
                assert!(
                    !has("ClusterRole") && !has("Ingress/") && !has("ServiceMonitor/"),
                    "{name}: nothing cluster-wide or optional by default: {kinds:?}"
                );
            }
        }
    }
}

#[test]
fn the_defaults_are_highly_available_least_privileged_and_restricted() {
    let docs = render("studio", &[]);
    let operator = find(&docs, "Deployment", "mixdown-operator");
    let api = find(&docs, "Deployment", "mixdown-api");
    assert_eq!(operator["spec"]["replicas"], 2);
    assert_eq!(api["spec"]["replicas"], 2);

    let operator_env = env_of(&operator["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(operator_env["MIXDOWN_LEADER_ELECTION"], "true");
    assert_eq!(operator_env["MIXDOWN_WATCH_NAMESPACE"], "studio");
    assert_eq!(
        operator_env["MIXDOWN_LEASE_IDENTITY"]["fieldRef"]["fieldPath"], "metadata.name",
        "each replica is its Pod in the Lease"
    );
    assert_eq!(
        operator_env["MIXDOWN_WORKER_SERVICE_ACCOUNT"],
        "mixdown-worker"
    );
    assert_eq!(
        operator_env["MIXDOWN_WORKER_IMAGE"], "ghcr.io/mixdown-dev/mixdown-worker:0.1.0",
        "image tags default to appVersion"
    );

    for (deployment, sa) in [(operator, "mixdown-operator"), (api, "mixdown-api")] {
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], sa);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let container = &pod["containers"][0];
        let sc = &container["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{sa}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{sa}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{sa}");
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{sa}"
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{sa}"
        );
    }

    // No secret material rendered: keys and credentials come from Secrets the user names.
    assert!(
        !kinds(&docs).iter().any(|k| k.starts_with("Secret/")),
        "{:?}",
        kinds(&docs)
    );
    let api_env = env_of(&api["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(
        api_env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"],
        "mixdown-s3-credentials"
    );
    assert_eq!(
        api_env["MIXDOWN_SIGNING_KEY_FILE"],
        "/etc/mixdown/keys/signing-key"
    );

    let service = find(&docs, "Service", "mixdown-api");
    assert_eq!(service["spec"]["sessionAffinity"], "ClientIP");

    let worker = find(&docs, "Role", "mixdown-worker");
    assert_eq!(
        worker["rules"],
        json!([{"apiGroups": ["mixdown.dev"], "resources": ["recordingjobs/status"], "verbs": ["patch"]}]),
        "the worker may only patch RecordingJob status"
    );
    for sa in ["mixdown-operator", "mixdown-api", "mixdown-worker"] {
        find(&docs, "ServiceAccount", sa);
    }
    let old = render("studio", &["--kube-version", "v1.20.2"]);
    let pdb = find(&old, "PodDisruptionBudget", "mixdown-api");
    assert_eq!(
        pdb["apiVersion"], "policy/v1beta1",
        "Kubernetes 1.20 has no policy/v1"
    );
    let current = render("studio", &["--kube-version", "v1.34.0"]);
    assert_eq!(
        find(&current, "PodDisruptionBudget", "mixdown-api")["apiVersion"],
        "policy/v1"
    );
}

#[test]
fn a_value_of_the_wrong_type_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wrong = values_file(&dir, "wrong-type.yaml", "operator:\n  replicas: two\n");
    let chart = chart_dir();
    for verb in ["template", "lint"] {
        let mut args = vec![verb];
        if verb == "template" {
            args.push("mixdown");
        }
        args.extend([path_str(&chart), "--values", path_str(&wrong)]);
        let err = helm::fails(&args);
        assert!(
            err.contains("/operator/replicas") || err.contains("operator.replicas"),
            "helm {verb} names the field: {err}"
        );
    }
    let err = helm::fails(&[
        "template",
        "mixdown",
        path_str(&chart),
        "--set",
        "worker.profile=mkv",
    ]);
    assert!(
        err.contains("profile"),
        "an unknown profile is refused: {err}"
    );
}

#[test]
fn worker_defaults_reach_the_api_as_its_job_settings_and_out_of_range_ones_are_refused() {
    let job_env = |docs: &[Value]| {
        let api = find(docs, "Deployment", "mixdown-api");
        let env = env_of(&api["spec"]["template"]["spec"]["containers"][0]);
        [
            "MIXDOWN_JOB_BACKOFF_LIMIT",
            "MIXDOWN_JOB_ACTIVE_DEADLINE_SECONDS",
            "MIXDOWN_JOB_START_TIMEOUT_SECONDS",
        ]
        .map(|name| env.get(name).cloned().unwrap_or(Value::Null))
    };
    assert_eq!(
        job_env(&render("mixdown", &[])),
        [json!("3"), json!("3600"), json!("600")],
        "the defaults are the CRD's"
    );
    assert_eq!(
        job_env(&render(
            "mixdown",
            &[
                "--set",
                "worker.backoffLimit=0",
                "--set",
                "worker.activeDeadlineSeconds=86400",
                "--set",
                "worker.startTimeoutSeconds=120",
            ]
        )),
        [json!("0"), json!("86400"), json!("120")]
    );
    let chart = chart_dir();
    for (value, field) in [
        ("worker.backoffLimit=11", "backoffLimit"),
        ("worker.backoffLimit=-1", "backoffLimit"),
        ("worker.activeDeadlineSeconds=0", "activeDeadlineSeconds"),
        (
            "worker.activeDeadlineSeconds=86401",
            "activeDeadlineSeconds",
        ),
        ("worker.startTimeoutSeconds=0", "startTimeoutSeconds"),
        ("worker.startTimeoutSeconds=90000", "startTimeoutSeconds"),
    ] {
        let err = helm::fails(&["template", "mixdown", path_str(&chart), "--set", value]);
        assert!(
            err.contains(field),
            "{value} is refused naming {field}: {err}"
        );
    }
}

/// The `[env: NAME=...]` names `mixdown-api <args> --help` lists.
fn env_names_in_help(args: &[&str]) -> Vec<String> {
    let api = mixdown_testkit::bins::workspace_binary("mixdown-api", "mixdown-api");
    let out = Command::new(api)
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .expect("running mixdown-api --help");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.split(['=', ']'])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn every_environment_variable_the_chart_gives_the_api_and_its_test_pod_is_one_they_read() {
    let values = chart_dir().join("ci/all-on-values.yaml");
    let docs = render("mixdown", &["--values", path_str(&values)]);
    let api = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && kind_name(d).ends_with("-api"))
        .expect("the API Deployment");
    let test_pod = docs
        .iter()
        .find(|d| d["kind"] == "Pod" && kind_name(d).ends_with("-selftest"))
        .expect("the helm test Pod");
    assert_eq!(
        test_pod["spec"]["containers"][0]["args"],
        json!(["selftest"])
    );
    let bucket_setup = docs
        .iter()
        .find(|d| d["kind"] == "Job" && kind_name(d).ends_with("-bucket-setup"))
        .expect("the bucket set-up hook Job");
    let setup = &bucket_setup["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(setup["args"], json!(["bucket-setup"]));
    // The studio's origins for the CORS rule: api.studioOrigins and api.publicUrl's origin.
    assert_eq!(
        env_of(setup)["MIXDOWN_STUDIO_ORIGINS"],
        json!("https://studio.example.com,https://www.example.com")
    );
    assert_eq!(
        bucket_setup["metadata"]["annotations"]["helm.sh/hook"],
        "post-install,post-upgrade"
    );
    for (what, container, args, extra) in [
        (
            "the API",
            &api["spec"]["template"]["spec"]["containers"][0],
            &[][..],
            // all-on-values.yaml's api.extraEnv.
            &["RUST_LOG"][..],
        ),
        (
            "mixdown-api selftest",
            &test_pod["spec"]["containers"][0],
            &["selftest"][..],
            // Given to every component with the storage settings; selftest prints plain lines.
            &["MIXDOWN_LOG_FORMAT"][..],
        ),
        (
            "mixdown-api bucket-setup",
            setup,
            &["bucket-setup"][..],
            &["MIXDOWN_LOG_FORMAT"][..],
        ),
    ] {
        let read = env_names_in_help(args);
        let env = env_of(container);
        // A variable that another one's value refers to (`$(POD_IP)`, the downward API) is read
        // through that one.
        let referenced = |name: &str| {
            env.values().any(|v| {
                v.as_str()
                    .is_some_and(|v| v.contains(&format!("$({name})")))
            })
        };
        let unread: Vec<String> = env
            .keys()
            .filter(|name| {
                !read.contains(name) && !extra.contains(&name.as_str()) && !referenced(name)
            })
            .cloned()
            .collect();
        assert!(
            unread.is_empty(),
            "{what} does not read {unread:?}; it reads {read:?}"
        );
    }
}

#[test]
fn the_bucket_set_up_without_a_studio_origin_is_refused_saying_what_to_set() {
    let text = helm::fails(&[
        "template",
        "mixdown",
        &chart_dir().display().to_string(),
        "--set",
        "storage.endpoint=https://storage.example.com",
        "--set",
        "storage.bucket=recordings",
        "--set",
        "storage.bucketSetup.enabled=true",
    ]);
    assert!(
        text.contains("storage.bucketSetup.enabled needs the studio's origin")
            && text.contains("set api.studioOrigins or api.publicUrl"),
        "{text}"
    );
}

#[test]
fn an_unknown_key_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A typo a user makes: `replica` for `replicas`.
    let typo = values_file(&dir, "typo.yaml", "api:\n  replica: 3\n");
    let chart = chart_dir();
    let err = helm::fails(&[
        "template",
        "mixdown",
        path_str(&chart),
        "--values",
        path_str(&typo),
    ]);
    assert!(
        err.contains("replica") && err.contains("additional properties"),
        "the unknown key is named: {err}"
    );
    let err = helm::fails(&[
        "template",
        "mixdown",
        path_str(&chart),
        "--set",
        "storage.accessKey=AKIA",
    ]);
    assert!(err.contains("accessKey"), "{err}");
}

#[test]
fn rendering_twice_gives_the_same_bytes() {
    for values in ci_values() {
        let args = ["--values", path_str(&values)];
        let first = template_text("mixdown", &args);
        let second = template_text("mixdown", &args);
        assert!(
            first == second,
            "{}: two renders differ (random values or lookup in a template?)",
            values.display()
        );
    }
    for template in std::fs::read_dir(chart_dir().join("templates"))
        .expect("templates/")
        .flatten()
        .filter(|e| e.path().is_file())
    {
        let text = std::fs::read_to_string(template.path()).expect("readable template");
        for word in [
            "randAlpha",
            "randNumeric",
            "randAscii",
            "uuidv4",
            "lookup ",
            "now",
        ] {
            assert!(
                !text.contains(word),
                "{} uses {word}: renders would not be deterministic",
                template.path().display()
            );
        }
    }
}

/// Strips what the chart adds to the generated CRD: its labels and the keep annotation.
fn without_chart_metadata(mut crd: Value) -> Value {
    let meta = crd["metadata"].as_object_mut().expect("CRD metadata");
    meta.remove("labels");
    meta.remove("annotations");
    crd
}

/// Numbers as the API server stores them: a float with no fraction is the same number as the
/// integer (the generator writes `maximum: 100.0`).
fn normalize_numbers(value: Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => json!(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(normalize_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalize_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

#[test]
fn the_chart_installs_the_crd_that_crdgen_generates() {
    let committed = std::fs::read_to_string(repo_root().join("crds/recordingjob.yaml"))
        .expect("crds/recordingjob.yaml");
    // `cargo xtask crdgen` writes both files; the template reads the chart's copy through
    // files/recordingjob.yaml, a link, because Helm must not see crds/ (see .helmignore).
    let in_chart = std::fs::read_to_string(chart_dir().join("crds/recordingjob.yaml"))
        .expect("charts/mixdown/crds/recordingjob.yaml");
    assert!(
        in_chart == committed,
        "charts/mixdown/crds/recordingjob.yaml differs from crds/recordingjob.yaml: run `cargo xtask crdgen`"
    );
    let link = std::fs::read_link(chart_dir().join("files/recordingjob.yaml"))
        .expect("charts/mixdown/files/recordingjob.yaml is a link");
    assert_eq!(link, Path::new("../crds/recordingjob.yaml"));

    // With --include-crds Helm adds what it would install from crds/ on its own: nothing, so the
    // CRD is there once, from the template, with its annotations.
    let docs = render("mixdown", &["--include-crds"]);
    let crds: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(
        crds.len(),
        1,
        "one CRD, from templates/crds.yaml: {:?}",
        kinds(&docs)
    );
    let crd = crds[0];
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "kept on uninstall"
    );
    let expected = documents(&committed).remove(0);
    assert_eq!(
        normalize_numbers(without_chart_metadata(crd.clone())),
        normalize_numbers(expected),
        "the rendered CRD is crds/recordingjob.yaml plus the chart's labels and annotations"
    );

    let without = render(
        "mixdown",
        &["--include-crds", "--set", "crds.enabled=false"],
    );
    assert!(
        !kinds(&without)
            .iter()
            .any(|k| k.starts_with("CustomResourceDefinition/")),
        "crds.enabled=false leaves the CRD out"
    );
    let kept = render("mixdown", &["--set", "crds.keep=false"]);
    assert!(
        find(
            &kept,
            "CustomResourceDefinition",
            "recordingjobs.mixdown.dev"
        )["metadata"]
            .get("annotations")
            .is_none(),
        "crds.keep=false drops the keep annotation"
    );
}

/// Resolves a rendered object's kind on the server.
async fn api_for(client: &Client, doc: &Value, namespace: &str) -> Api<DynamicObject> {
    let (group, version) = match doc["apiVersion"]
        .as_str()
        .expect("apiVersion")
        .split_once('/')
    {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            doc["apiVersion"].as_str().unwrap_or_default().to_string(),
        ),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, doc["kind"].as_str().expect("kind"));
    let (resource, caps): (ApiResource, _) = discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("the API server does not serve {gvk:?}: {e}"));
    match caps.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rendered_object_passes_a_server_side_dry_run() {
    let cp = ControlPlane::shared().await;
    let client = cp.client();
    // Kinds whose CRDs the test control plane does not have (the Prometheus Operator's): not sent,
    // and listed here so that nothing else is ever left unchecked.
    let unchecked_groups = ["monitoring.coreos.com/"];
    let mut unchecked = Vec::new();
    let mut checked = 0;
    for values in ci_values() {
        let ns = cp.namespace().await;
        let docs = render(ns.name(), &["--values", path_str(&values)]);
        for doc in &docs {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            if unchecked_groups.iter().any(|g| api_version.starts_with(g)) {
                unchecked.push(kind_name(doc));
                continue;
            }
            let api = api_for(&client, doc, ns.name()).await;
            let name = doc["metadata"]["name"].as_str().expect("a name");
            // Server-side apply in dry-run mode: full validation and admission, whether or not
            // the object (the CRD, shared by the whole control plane) already exists.
            let params = PatchParams::apply("mixdown-chart-test").force().dry_run();
            api.patch(name, &params, &Patch::Apply(doc))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: the API server refuses {}: {e}",
                        values.display(),
                        kind_name(doc)
                    )
                });
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked} objects checked");
    assert_eq!(
        unchecked,
        [
            "ServiceMonitor/mixdown-studio-operator",
            "ServiceMonitor/mixdown-studio-api"
        ],
        "only ServiceMonitors go unchecked: the test control plane has no Prometheus Operator CRDs"
    );
}

/// One question to the API server's RBAC authorizer, as `kubectl auth can-i --as` asks it:
/// may ServiceAccount `sa` of `namespace` do `verb` on `resource` (`"group/resource/subresource"`,
/// core group empty) named `name` in `target` (None: cluster-wide)?
async fn can(
    client: &Client,
    namespace: &str,
    sa: &str,
    verb: &str,
    resource: &str,
    name: Option<&str>,
    target: Option<&str>,
) -> bool {
    let mut parts = resource.splitn(3, '/');
    let group = parts.next().unwrap_or_default();
    let resource_name = parts.next().unwrap_or_default();
    let subresource = parts.next();
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{namespace}:{sa}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.into()),
                resource: Some(resource_name.into()),
                subresource: subresource.map(Into::into),
                verb: Some(verb.into()),
                name: name.map(Into::into),
                namespace: target.map(Into::into),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .expect("the API server answers a SubjectAccessReview");
    answer.status.is_some_and(|s| s.allowed)
}

/// Checks each `(sa, verb, resource, name, allowed)` row in `target`, collecting every mismatch.
async fn check_rbac(
    client: &Client,
    namespace: &str,
    target: Option<&str>,
    table: &[(&str, &str, &str, Option<&str>, bool)],
) {
    let mut wrong = Vec::new();
    for &(sa, verb, resource, name, expected) in table {
        let allowed = can(client, namespace, sa, verb, resource, name, target).await;
        if allowed != expected {
            wrong.push(format!(
                "{sa} {} {verb} {resource}{} in {}",
                if expected { "cannot" } else { "can" },
                name.map(|n| format!("/{n}")).unwrap_or_default(),
                target.unwrap_or("every namespace")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC is not what the components need: {wrong:#?}"
    );
}

/// What each component calls (allowed) and a few things it must not do (denied).
fn namespaced_rbac_table() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    bool,
)> {
    let op = "mixdown-operator";
    let api = "mixdown-api";
    let worker = "mixdown-worker";
    vec![
        (op, "list", "mixdown.dev/recordingjobs", None, true),
        (op, "watch", "mixdown.dev/recordingjobs", None, true),
        (op, "delete", "mixdown.dev/recordingjobs", Some("rec"), true),
        (
            op,
            "patch",
            "mixdown.dev/recordingjobs/status",
            Some("rec"),
            true,
        ),
        (op, "create", "batch/jobs", None, true),
        (op, "patch", "batch/jobs", Some("job"), true),
        (op, "delete", "batch/jobs", Some("job"), true),
        (op, "watch", "batch/jobs", None, true),
        (op, "watch", "/pods", None, true),
        (op, "list", "/events", None, true),
        (op, "create", "events.k8s.io/events", None, true),
        (op, "patch", "events.k8s.io/events", Some("e"), true),
        (op, "create", "coordination.k8s.io/leases", None, true),
        (op, "get", "coordination.k8s.io/leases", Some(op), true),
        (op, "update", "coordination.k8s.io/leases", Some(op), true),
        (
            op,
            "update",
            "coordination.k8s.io/leases",
            Some("someone-else"),
            false,
        ),
        (op, "patch", "mixdown.dev/recordingjobs", Some("rec"), false),
        (op, "get", "/secrets", Some("mixdown-s3-credentials"), false),
        (op, "create", "/pods", None, false),
        (api, "create", "mixdown.dev/recordingjobs", None, true),
        (api, "patch", "mixdown.dev/recordingjobs", Some("rec"), true),
        (api, "watch", "mixdown.dev/recordingjobs", None, true),
        (api, "get", "mixdown.dev/recordingjobs", Some("rec"), true),
        (api, "create", "/configmaps", None, true),
        (api, "patch", "/configmaps", Some("marker"), true),
        (api, "watch", "/configmaps", None, true),
        (
            api,
            "patch",
            "mixdown.dev/recordingjobs/status",
            Some("rec"),
            false,
        ),
        (
            api,
            "delete",
            "mixdown.dev/recordingjobs",
            Some("rec"),
            false,
        ),
        (api, "create", "batch/jobs", None, false),
        (api, "get", "/secrets", Some("mixdown-keys"), false),
        (
            worker,
            "patch",
            "mixdown.dev/recordingjobs/status",
            Some("rec"),
            true,
        ),
        (
            worker,
            "get",
            "mixdown.dev/recordingjobs",
            Some("rec"),
            false,
        ),
        (
            worker,
            "patch",
            "mixdown.dev/recordingjobs",
            Some("rec"),
            false,
        ),
        (worker, "list", "/pods", None, false),
        (
            worker,
            "get",
            "/secrets",
            Some("mixdown-s3-credentials"),
            false,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn install_upgrade_and_uninstall_leave_what_a_user_expects() {
    let cp = ControlPlane::shared().await;
    let client = cp.client();
    let ns = cp.namespace().await;
    let kubeconfig = path_str(cp.kubeconfig_path()).to_string();
    let chart = chart_dir();
    let ns_name = ns.name().to_string();
    let base = [
        "--namespace",
        ns_name.as_str(),
        "--kubeconfig",
        kubeconfig.as_str(),
    ];
    let storage = [
        "--set",
        "storage.endpoint=http://127.0.0.1:9000",
        "--set",
        "storage.bucket=recordings",
        "--set",
        "storage.pathStyle=true",
    ];

    let mut install = vec!["install", "mixdown", path_str(&chart)];
    install.extend(base);
    install.extend(storage);
    helm::ok(&install);

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .get("recordingjobs.mixdown.dev")
        .await
        .expect("helm install created the RecordingJob CRD");
    assert_eq!(
        crd.annotations()
            .get("helm.sh/resource-policy")
            .map(String::as_str),
        Some("keep")
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns_name);
    for name in ["mixdown-operator", "mixdown-api"] {
        let d = deployments.get(name).await.expect("Deployment created");
        assert_eq!(d.spec.and_then(|s| s.replicas), Some(2), "{name}");
    }
    let services: Api<Service> = Api::namespaced(client.clone(), &ns_name);
    let svc = services.get("mixdown-api").await.expect("API Service");
    assert_eq!(
        svc.spec.and_then(|s| s.session_affinity).as_deref(),
        Some("ClientIP")
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns_name);
    for name in ["mixdown-operator", "mixdown-api", "mixdown-worker"] {
        accounts.get(name).await.expect("ServiceAccount created");
    }
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns_name);
    roles.get("mixdown-worker").await.expect("worker Role");
    check_rbac(&client, &ns_name, Some(&ns_name), &namespaced_rbac_table()).await;
    // Namespaced by default: nothing in another namespace.
    check_rbac(
        &client,
        &ns_name,
        Some("default"),
        &[
            (
                "mixdown-operator",
                "list",
                "mixdown.dev/recordingjobs",
                None,
                false,
            ),
            (
                "mixdown-api",
                "create",
                "mixdown.dev/recordingjobs",
                None,
                false,
            ),
        ],
    )
    .await;

    // A RecordingJob, as the API would create one; it must outlive the release.
    let rj_api: Api<RecordingJob> = Api::namespaced(client.clone(), &ns_name);
    let rj: RecordingJob = serde_json::from_value(json!({
        "apiVersion": "mixdown.dev/v1alpha1",
        "kind": "RecordingJob",
        "metadata": {"name": "rec-kept"},
        "spec": {
            "roomId": "room-1",
            "recordingId": "rec_kept",
            "tracks": [{"participantId": "alice", "source": {"prefix": "riverside/chunks/room-1/rec_kept/alice/"}}],
            "output": {"prefix": "riverside/processed/room-1/rec_kept/"}
        }
    }))
    .expect("a valid RecordingJob");
    rj_api
        .create(&PostParams::default(), &rj)
        .await
        .expect("RecordingJobs can be created once the chart is installed");

    // Upgrade with changed values: no manual step, the change is applied.
    let mut upgrade = vec!["upgrade", "mixdown", path_str(&chart)];
    upgrade.extend(base);
    upgrade.extend(storage);
    upgrade.extend([
        "--set",
        "api.replicas=3",
        "--set",
        "worker.maxRunningJobs=3",
    ]);
    helm::ok(&upgrade);
    let api_deployment = deployments
        .get("mixdown-api")
        .await
        .expect("API Deployment");
    assert_eq!(api_deployment.spec.and_then(|s| s.replicas), Some(3));
    let operator = deployments.get("mixdown-operator").await.expect("operator");
    let env = operator
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "MIXDOWN_MAX_RUNNING_JOBS" && e.value.as_deref() == Some("3")),
        "{env:?}"
    );
    let status = helm::ok(&[
        "status",
        "mixdown",
        "--namespace",
        &ns_name,
        "--kubeconfig",
        &kubeconfig,
    ]);
    assert!(status.contains("REVISION: 2"), "{status}");

    let mut uninstall = vec!["uninstall", "mixdown"];
    uninstall.extend(base);
    let out = helm::ok(&uninstall);
    assert!(
        out.contains("recordingjobs.mixdown.dev") || out.contains("kept"),
        "helm says what it kept: {out}"
    );
    for name in ["mixdown-operator", "mixdown-api"] {
        let gone = deployments
            .get_opt(name)
            .await
            .expect("reading Deployments");
        assert!(gone.is_none(), "{name} is deleted with the release");
    }
    crds.get("recordingjobs.mixdown.dev")
        .await
        .expect("the CRD is kept after uninstall");
    rj_api
        .get("rec-kept")
        .await
        .expect("RecordingJobs are kept after uninstall");
}

#[tokio::test(flavor = "multi_thread")]
async fn watching_all_namespaces_grants_the_operator_every_namespace_and_nothing_more() {
    let cp = ControlPlane::shared().await;
    let client = cp.client();
    let ns = cp.namespace().await;
    let other = cp.namespace().await;
    let kubeconfig = path_str(cp.kubeconfig_path()).to_string();
    let chart = chart_dir();
    let values = chart.join("ci/cluster-wide-values.yaml");
    // A second release of a cluster whose CRD another release owns: crds.enabled=false.
    helm::ok(&[
        "install",
        "cluster-wide",
        path_str(&chart),
        "--namespace",
        ns.name(),
        "--kubeconfig",
        &kubeconfig,
        "--values",
        path_str(&values),
        "--set",
        "crds.enabled=false",
        "--set",
        "fullnameOverride=mixdown",
    ]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let operator = deployments.get("mixdown-operator").await.expect("operator");
    let env = operator
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        !env.iter().any(|e| e.name == "MIXDOWN_WATCH_NAMESPACE"),
        "no namespace set: the operator watches all: {env:?}"
    );
    check_rbac(
        &client,
        ns.name(),
        Some(ns.name()),
        &namespaced_rbac_table(),
    )
    .await;
    check_rbac(
        &client,
        ns.name(),
        Some(other.name()),
        &[
            (
                "mixdown-operator",
                "watch",
                "mixdown.dev/recordingjobs",
                None,
                true,
            ),
            ("mixdown-operator", "create", "batch/jobs", None, true),
            (
                "mixdown-operator",
                "create",
                "events.k8s.io/events",
                None,
                true,
            ),
            (
                "mixdown-operator",
                "update",
                "coordination.k8s.io/leases",
                Some("mixdown-operator"),
                false,
            ),
            ("mixdown-operator", "get", "/secrets", None, false),
            // The API stays in its own namespace.
            (
                "mixdown-api",
                "create",
                "mixdown.dev/recordingjobs",
                None,
                false,
            ),
        ],
    )
    .await;
    check_rbac(
        &client,
        ns.name(),
        None,
        &[(
            "mixdown-operator",
            "watch",
            "mixdown.dev/recordingjobs",
            None,
            true,
        )],
    )
    .await;
    helm::ok(&[
        "uninstall",
        "cluster-wide",
        "--namespace",
        ns.name(),
        "--kubeconfig",
        &kubeconfig,
    ]);
}

/// Leaf paths of a values tree: `a.b.c` for every scalar, list or empty map.
fn leaf_paths(prefix: &str, value: &serde_yaml::Value, out: &mut Vec<String>) {
    match value {
        serde_yaml::Value::Mapping(map) if !map.is_empty() => {
            for (key, child) in map {
                let key = key.as_str().expect("string keys");
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_paths(&path, child, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_value_is_documented_in_the_chart_readme() {
    let values: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml is YAML");
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("chart README");
    let mut leaves = Vec::new();
    leaf_paths("", &values, &mut leaves);
    let undocumented: Vec<&String> = leaves
        .iter()
        .filter(|leaf| {
            // A value is documented by its own row, or by the row of the Kubernetes object it
            // belongs to (`operator.resources` documents `operator.resources.requests.cpu`).
            let parts: Vec<&str> = leaf.split('.').collect();
            !(1..=parts.len()).any(|n| {
                let path = parts[..n].join(".");
                (n > 1 || parts.len() == 1) && readme.contains(&format!("| `{path}` |"))
            })
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "values without a row in charts/mixdown/README.md: {undocumented:?}"
    );
}
