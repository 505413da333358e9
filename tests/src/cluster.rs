//! A real Kubernetes control plane for integration tests: etcd, kube-apiserver and
//! kube-controller-manager on loopback, from the binaries in `KUBEBUILDER_ASSETS`.
//!
//! One control plane serves a whole test binary ([`ControlPlane::shared`]); each test takes its own
//! namespace ([`ControlPlane::namespace`]). There is no scheduler and no kubelet: Pods stay Pending
//! until a [`crate::pods::PodRunner`] binds and runs them, while the real controllers (Jobs, garbage
//! collection, ServiceAccounts) do the rest.
//!
//! `cargo test` runs the tests of a binary as threads, each `#[tokio::test]` with a runtime that ends
//! with its test. So the control plane belongs to none of them: it is spawned from a dedicated thread
//! that lives as long as the process, and clients are made per caller ([`ControlPlane::client`]),
//! because a `kube::Client` runs its connection tasks on the runtime that created it.
//! See [`children`] for how no process outlives the test binary.
//!
//! Everything lives in `$TMPDIR/mixdown-cp-<pid>-*`, etcd's data included: with `TMPDIR=/dev/shm`
//! (tmpfs) etcd's fsyncs cost nothing and the control plane starts about a second sooner.

mod boot;
pub(crate) mod children;
mod pki;
mod version;

pub use version::KubeVersion;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};
use tokio::sync::{OnceCell, mpsc, oneshot};

/// The field manager of everything the test kit applies.
const FIELD_MANAGER: &str = "mixdown-testkit";
/// Label on every namespace the test kit creates.
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mixdown-testkit");
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running control plane. See the module docs.
pub struct ControlPlane {
    dir: PathBuf,
    server_url: String,
    ca_pem: String,
    kubeconfig: PathBuf,
    config: Config,
    version: KubeVersion,
    /// Names of namespaces to delete, handled on the control plane's thread so that deletion does
    /// not depend on the runtime of the test that dropped a [`TestNamespace`].
    doomed_namespaces: mpsc::UnboundedSender<String>,
}

static SHARED: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();

/// The Kubernetes version of the binaries in `KUBEBUILDER_ASSETS`, without starting them: what
/// [`ControlPlane::version`] will say, for code that needs it first or without a control plane
/// (a `helm template --kube-version` that must target the test server).
pub fn assets_version() -> Result<KubeVersion> {
    KubeVersion::of_binary(&boot::assets_dir()?.join("kube-apiserver"))
}

impl ControlPlane {
    /// The control plane of this test binary, started on first use (a few seconds) and shared by
    /// all its tests. Its processes and temporary directory go away when the binary exits.
    ///
    /// # Panics
    /// When it cannot start: `KUBEBUILDER_ASSETS` unset or incomplete (the message says how to
    /// fix it), or a component failing (the message carries the end of its log). Every test that
    /// asks gets the same message; none is skipped silently.
    pub async fn shared() -> &'static ControlPlane {
        let started = SHARED
            .get_or_init(|| async {
                let (reply, started) = oneshot::channel();
                let spawned = std::thread::Builder::new()
                    .name("mixdown-control-plane".into())
                    .spawn(move || run(reply));
                if let Err(e) = spawned {
                    return Err(format!("spawning the control plane thread: {e}"));
                }
                started
                    .await
                    .unwrap_or_else(|_| Err("the control plane thread died while starting".into()))
            })
            .await;
        match started {
            Ok(cp) => cp,
            Err(e) => panic!("the test control plane did not start: {e}"),
        }
    }

    /// A client with cluster-admin rights (group `system:masters`), bound to the caller's tokio
    /// runtime: call it from the test that uses it.
    pub fn client(&self) -> Client {
        // Only fails on a TLS setup that the test kit itself generated.
        Client::try_from(self.config.clone()).expect("the admin client config is valid")
    }

    /// The admin client configuration, for building clients differently (timeouts, user agent).
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// An admin kubeconfig file, for `kubectl --kubeconfig` or a process under test.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The CA that signed the API server's serving certificate (and the admin certificate).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The Kubernetes version it runs (`KUBEBUILDER_ASSETS`' kube-apiserver): tests whose
    /// expectations differ by version ask it, e.g. [`KubeVersion::enforces_validation_rules`].
    pub fn version(&self) -> KubeVersion {
        self.version
    }

    /// Whether the ServiceAccount admission plugin admits Pods of `sa`: always once it exists,
    /// but before 1.24 only once the controller manager gave it its token Secret.
    pub fn admits_pods_of(&self, sa: &ServiceAccount) -> bool {
        boot::service_account_ready(self.version, sa)
    }

    /// A token of ServiceAccount `name` in `namespace`, from the TokenRequest API (what the
    /// kubelet mounts into Pods on every version), valid for an hour.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let issued: TokenRequest = accounts
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token of ServiceAccount {namespace}/{name}"))?;
        issued.status.map(|s| s.token).ok_or_else(|| {
            anyhow!("the TokenRequest for {namespace}/{name} came back without a token")
        })
    }

    /// The control plane's working directory: component logs (`<component>.log`), certificates,
    /// etcd data. Removed when the test binary exits.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Installs a CRD and waits until it is Established, so its resources can be used at once.
    /// Idempotent: tests sharing the control plane may all call it.
    ///
    /// Server-side apply where the server knows every field of a current CRD. Before 1.25 the
    /// CRD is created, or replaced, as Helm installs a chart's CRDs: those servers drop the
    /// `x-kubernetes-validations` (CEL) they do not know from a create or an update, but their
    /// server-side apply refuses the whole object ("field not declared in schema").
    pub async fn install_crd(&self, crd: &CustomResourceDefinition) -> Result<()> {
        let name = crd
            .metadata
            .name
            .as_deref()
            .ok_or_else(|| anyhow!("the CRD has no metadata.name"))?;
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        if self.version.enforces_validation_rules() {
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(crd),
            )
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        } else {
            create_or_replace(&api, name, crd).await?;
        }
        tokio::time::timeout(
            SETUP_TIMEOUT,
            await_condition(api, name, conditions::is_crd_established()),
        )
        .await
        .with_context(|| format!("CRD {name} not Established after {SETUP_TIMEOUT:?}"))?
        .with_context(|| format!("watching CRD {name}"))?;
        Ok(())
    }

    /// A fresh namespace for one test, named after the test, ready for Pods (its default
    /// ServiceAccount has its token). Deleted when dropped.
    ///
    /// # Panics
    /// When the namespace cannot be created or does not become ready in 30 s.
    pub async fn namespace(&self) -> TestNamespace {
        match self.try_namespace().await {
            Ok(ns) => ns,
            Err(e) => panic!("creating a test namespace: {e:#}"),
        }
    }

    async fn try_namespace(&self) -> Result<TestNamespace> {
        let name = namespace_name(std::thread::current().name());
        let client = self.client();
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(MANAGED_BY.0.into(), MANAGED_BY.1.into())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        // Dropped on every path from here, so even a namespace that never got ready is deleted.
        let ns = TestNamespace {
            name,
            doomed: self.doomed_namespaces.clone(),
        };
        // The ServiceAccount admission plugin rejects Pods until the namespace's default
        // ServiceAccount exists (and before 1.24 has its token Secret), which controllers create
        // shortly after the namespace.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
        let start = Instant::now();
        loop {
            let sa = accounts.get_opt("default").await?;
            if sa.as_ref().is_some_and(|sa| self.admits_pods_of(sa)) {
                break;
            }
            if start.elapsed() > SETUP_TIMEOUT {
                bail!(
                    "namespace {}: no default ServiceAccount after {SETUP_TIMEOUT:?}",
                    ns.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !self.version.creates_token_secrets() {
            self.give_default_account_a_token_secret(&client, &ns.name)
                .await?;
        }
        Ok(ns)
    }

    /// What the controllers of servers before 1.24 did for every ServiceAccount, done for the
    /// default one of a test namespace: a long-lived token Secret, listed in the account's
    /// `secrets`, so that a test may build a kubeconfig from it on either version. The controller
    /// manager still fills such a Secret when one is made by hand. Pods never need it (the pod
    /// runner gets their tokens from the TokenRequest API); new tests use
    /// [`ControlPlane::service_account_token`].
    async fn give_default_account_a_token_secret(
        &self,
        client: &Client,
        namespace: &str,
    ) -> Result<()> {
        const NAME: &str = "default-token";
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(NAME.into()),
                annotations: Some(
                    [(
                        "kubernetes.io/service-account.name".into(),
                        "default".into(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/service-account-token".into()),
            ..Secret::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .with_context(|| format!("creating the token Secret of {namespace}/default"))?;
        let start = Instant::now();
        loop {
            let filled = secrets
                .get_opt(NAME)
                .await?
                .and_then(|s| s.data)
                .is_some_and(|d: std::collections::BTreeMap<String, ByteString>| {
                    d.contains_key("token")
                });
            if filled {
                break;
            }
            if start.elapsed() > SETUP_TIMEOUT {
                bail!(
                    "namespace {namespace}: the token Secret of the default ServiceAccount got no token after {SETUP_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .patch(
                "default",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"secrets": [{"name": NAME}]})),
            )
            .await
            .with_context(|| format!("listing the token Secret on {namespace}/default"))?;
        Ok(())
    }
}

/// Creates `crd`, or replaces the one there (retrying when another test replaced it meanwhile).
async fn create_or_replace(
    api: &Api<CustomResourceDefinition>,
    name: &str,
    crd: &CustomResourceDefinition,
) -> Result<()> {
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match api.create(&pp, crd).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(e).with_context(|| format!("creating CRD {name}")),
    }
    for _ in 0..10 {
        let current = api
            .get(name)
            .await
            .with_context(|| format!("reading CRD {name}"))?;
        let mut replacement = crd.clone();
        replacement.metadata.resource_version = current.metadata.resource_version;
        match api.replace(name, &pp, &replacement).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("replacing CRD {name}")),
        }
    }
    bail!("CRD {name} kept changing while it was being replaced")
}

/// A DNS label from the test's name (the thread name libtest gives it) and a counter.
fn namespace_name(test: Option<&str>) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let test = test.and_then(|t| t.rsplit("::").next()).unwrap_or("test");
    let mut base: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    base = base.trim_matches('-').to_string();
    if base.is_empty() {
        base = "test".into();
    }
    format!("{base}-{n}")
}

/// A namespace owned by one test; see [`ControlPlane::namespace`].
pub struct TestNamespace {
    name: String,
    doomed: mpsc::UnboundedSender<String>,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestNamespace {
    /// Hands the namespace to the control plane's thread for deletion and returns at once; the
    /// namespace controller then deletes everything in it, in the background.
    fn drop(&mut self) {
        let _ = self.doomed.send(self.name.clone());
    }
}

/// The control plane's thread: starts it, then deletes test namespaces until the process exits.
/// It must never return while the control plane runs: its children are tied to it
/// (`PR_SET_PDEATHSIG`).
fn run(reply: oneshot::Sender<Result<ControlPlane, String>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = reply.send(Err(format!("building the control plane's runtime: {e}")));
            return;
        }
    };
    // kube asks for rustls with ring, the AWS SDK with aws-lc-rs: with both compiled in, rustls
    // cannot choose a process-wide provider by itself, and every client would panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();
    let booted = match runtime.block_on(boot::boot()) {
        Ok(booted) => booted,
        Err(e) => {
            let _ = reply.send(Err(format!("{e:#}")));
            return;
        }
    };
    let boot::Booted {
        dir,
        server_url,
        ca_pem,
        kubeconfig,
        config,
        version,
        components,
    } = booted;
    tracing::info!(elapsed = ?started.elapsed(), %server_url, %version, dir = %dir.display(), "control plane ready");
    let (doomed_namespaces, doomed) = mpsc::unbounded_channel();
    let cp = ControlPlane {
        dir,
        server_url,
        ca_pem,
        kubeconfig,
        config: config.clone(),
        version,
        doomed_namespaces,
    };
    if reply.send(Ok(cp)).is_err() {
        return;
    }
    runtime.block_on(delete_namespaces(config, doomed));
    // Unreachable in practice (the static ControlPlane holds a sender), but if the channel ever
    // closes, the processes must still live on.
    let _components = components;
    loop {
        std::thread::park();
    }
}

async fn delete_namespaces(config: Config, mut doomed: mpsc::UnboundedReceiver<String>) {
    let client = match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no client to delete test namespaces");
            return;
        }
    };
    let api: Api<Namespace> = Api::all(client);
    while let Some(name) = doomed.recv().await {
        let api = api.clone();
        tokio::spawn(async move {
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..DeleteParams::default()
            };
            if let Err(e) = api.delete(&name, &dp).await {
                tracing::debug!(namespace = %name, error = %e, "deleting test namespace");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::namespace_name;

    #[test]
    fn namespace_names_are_dns_labels() {
        let name = namespace_name(Some("jobs::a_job_that_exits_0_COMPLETES"));
        assert!(name.starts_with("a-job-that-exits-0-completes-"), "{name}");
        let long = namespace_name(Some(&"x".repeat(100)));
        assert!(long.len() <= 63, "{long}");
        assert!(namespace_name(Some("__")).starts_with("test-"));
        assert!(namespace_name(None).starts_with("test-"));
    }
}
