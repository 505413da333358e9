//! A pod runner that plays the kubelet for one test namespace, so that the real controllers
//! (Jobs, garbage collection) act on Pods that really run.
//!
//! It registers a Ready Node of its own, binds the namespace's pending Pods to it (there is no
//! scheduler), and runs each Pod's first container in one of two ways, chosen per image:
//! - as a local process (fast, the default): the image names a local program
//!   ([`PodRunner::image`]), the container's `command`/`args`/`env` are honoured, and the process
//!   acts with the Pod's ServiceAccount identity through a `KUBECONFIG`;
//! - with podman, from the image itself ([`PodRunner::podman_image`]): command and args over the
//!   image's ENTRYPOINT and CMD, the security context, emptyDirs, Secret and ConfigMap volumes,
//!   the termination message file, and the ServiceAccount token projected at
//!   `/var/run/secrets/kubernetes.io/serviceaccount/` with `KUBERNETES_SERVICE_HOST`/`PORT` set, on
//!   the host's network, so the program finds the API server with kube's in-cluster configuration
//!   (see the `podman` module).
//!
//! Either way RBAC applies as in a cluster. It reports status like the kubelet (Running; then
//! Succeeded or Failed with the exit code and termination message), restarts containers per
//! `restartPolicy`, and when a Pod is deleted it stops the process (or the container) and finishes
//! the deletion, without which a bound Pod would stay Terminating forever.
//!
//! For local processes, container paths are mapped onto this machine: the termination message file
//! and emptyDir mounts get local stand-ins, and environment values and whole arguments naming them
//! are rewritten (podman bind-mounts the same stand-ins at the real paths instead). Not played:
//! init containers and containers after the first, other volumes (and Secret and ConfigMap
//! volumes for local processes), probes, resource limits, and the Pod's own
//! `activeDeadlineSeconds` (the Job's is the Job controller's). With podman, every Pod shares the
//! host's network but has a loopback address of its own as its `status.podIP` (127.x.y.z): Pods
//! that listen on `$(POD_IP):<port>` (the downward API) do not collide and answer at the address
//! their status names, while two Pods binding `0.0.0.0:<same port>` do collide, and the second
//! one's container fails to bind.
//!
//! The runner's API endpoint and CA come from the cluster, the way a Pod finds its API server:
//! the `kubernetes` Service's target port (on loopback, where the test control plane listens) and
//! the namespace's `kube-root-ca.crt` ConfigMap.

mod container;
pub(crate) mod podman;
mod run;
mod services;
mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ConfigMap, Node, ObjectReference, Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::cluster::children;
use container::LOOPBACK;

const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The Kubernetes version the runner's Node claims, matching the test control plane.
const KUBELET_VERSION: &str = "v1.20.2";

/// How the containers of one image are run.
#[derive(Clone, Debug)]
enum Launch {
    /// As this local program.
    Program(PathBuf),
    /// With podman, from the image.
    Podman,
}

/// Configures a pod runner for one namespace; [`PodRunner::start`] runs it.
pub struct PodRunner {
    client: Client,
    namespace: String,
    images: BTreeMap<String, Launch>,
}

impl PodRunner {
    /// A runner for the Pods of `namespace`, acting through `client` (which needs the rights of a
    /// kubelet and more: the test control plane's admin client).
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        PodRunner {
            client,
            namespace: namespace.into(),
            images: BTreeMap::new(),
        }
    }

    /// Runs containers of `image` (exactly as written in the Pod, tag included) as `program`.
    /// Pods with an image no call mapped fail at once, with a message saying so.
    pub fn image(mut self, image: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        self.images
            .insert(image.into(), Launch::Program(program.into()));
        self
    }

    /// Runs containers of `image` (exactly as written in the Pod) with podman from the image
    /// itself, as a kubelet would: see the module docs. The image must be in podman's local
    /// storage (it is never pulled); a Pod naming a missing one fails with `ErrImageNeverPull`.
    pub fn podman_image(mut self, image: impl Into<String>) -> Self {
        self.images.insert(image.into(), Launch::Podman);
        self
    }

    /// Registers the Node and starts watching the namespace's Pods, on the caller's runtime.
    pub async fn start(self) -> Result<PodRunnerHandle> {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let node = node_name(&self.namespace, NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = children::temp_dir("mixdown-pods-")?;
        if self.images.values().any(|l| matches!(l, Launch::Podman)) {
            let _ = tokio::task::spawn_blocking(podman::remove_stale_containers).await;
        }
        let started = async {
            let (server_port, ca_pem) = api_endpoint(&self.client, &self.namespace).await?;
            let ca_file = dir.join("ca.crt");
            std::fs::write(&ca_file, ca_pem)?;
            register_node(&self.client, &node).await?;
            anyhow::Ok((server_port, ca_file))
        }
        .await;
        let (server_port, ca_file) = match started {
            Ok(s) => s,
            Err(e) => {
                children::remove_dir(&dir);
                return Err(e.context(format!("starting the pod runner for {}", self.namespace)));
            }
        };
        let groups = Groups::default();
        let containers = Containers::default();
        let services = Arc::new(services::Services::default());
        let (runner_client, runner_namespace) = (self.client.clone(), self.namespace.clone());
        let runner = Arc::new(Runner {
            client: self.client,
            namespace: self.namespace,
            node: node.clone(),
            images: self.images,
            server_url: format!("https://{LOOPBACK}:{server_port}"),
            server_port,
            ca_file,
            dir: dir.clone(),
            groups: groups.clone(),
            containers: containers.clone(),
            services: services.clone(),
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(watch_pods(runner, stopped));
        tracing::info!(%node, dir = %dir.display(), "pod runner started");
        Ok(PodRunnerHandle {
            node,
            dir,
            groups,
            containers,
            services,
            client: runner_client,
            namespace: runner_namespace,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// The runner's Node name: unique by `n`, and, since it is also the Node's
/// `kubernetes.io/hostname` label, at most 63 characters (a long namespace is cut).
fn node_name(namespace: &str, n: u32) -> String {
    let mut name = format!("pod-runner-{n}-{namespace}");
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// A running pod runner. Dropping it (or [`PodRunnerHandle::stop`]) kills every process and
/// removes every container it started, and their files; the Pods' objects stay as they are, like
/// after a node crash.
pub struct PodRunnerHandle {
    node: String,
    dir: PathBuf,
    groups: Groups,
    containers: Containers,
    services: Arc<services::Services>,
    client: Client,
    namespace: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl PodRunnerHandle {
    /// Where Service `name` of the namespace answers on `port` (the Service's port), as Pods
    /// reach it by name (see the `services` module): connections there go to its ready Pods, as
    /// through kube-proxy. Serves the namespace's Services first if no Pod did yet.
    pub async fn service_address(&self, name: &str, port: u16) -> Result<std::net::SocketAddr> {
        if let Some(addr) = self.services.address(name, port) {
            return Ok(addr);
        }
        self.services.hosts(&self.client, &self.namespace).await?;
        self.services
            .address(name, port)
            .with_context(|| format!("no Service {name} with a selector in {}", self.namespace))
    }

    /// The name of the runner's Node, which its Pods are bound to.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Where the Pods' files live: per Pod `<pod>-<uid prefix>/` with `container.log` (stdout
    /// and stderr), `termination-log`, `kubeconfig`, `volumes/`, `cwd/`.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Stops watching, kills every process and removes every container, waiting for the
    /// runner's task to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.groups.kill_all();
        let containers = self.containers.clone();
        let _ = tokio::task::spawn_blocking(move || containers.remove_all()).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PodRunnerHandle {
    fn drop(&mut self) {
        // Synchronously, so that nothing survives even when the runtime is going away (a test
        // that panicked): the task's own cleanup might never run.
        self.groups.kill_all();
        self.containers.remove_all();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        children::remove_dir(&self.dir);
    }
}

/// What every part of a running pod runner shares.
struct Runner {
    client: Client,
    namespace: String,
    node: String,
    images: BTreeMap<String, Launch>,
    /// `https://127.0.0.1:<port>`, for kubeconfigs.
    server_url: String,
    /// The API server's port on loopback, for `KUBERNETES_SERVICE_PORT`.
    server_port: u16,
    ca_file: PathBuf,
    dir: PathBuf,
    groups: Groups,
    containers: Containers,
    /// The namespace's Services, for the containers run with podman.
    services: Arc<services::Services>,
}

/// The process groups of the containers a runner started, so that they can all be killed at once.
#[derive(Clone, Default)]
struct Groups(Arc<Mutex<BTreeSet<u32>>>);

impl Groups {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&self, pid: u32) {
        children::track_group(pid);
        self.lock().insert(pid);
    }

    fn kill(&self, pid: u32) {
        children::signal_group(pid, libc::SIGKILL);
        children::untrack_group(pid);
        self.lock().remove(&pid);
    }

    fn kill_all(&self) {
        let pids = std::mem::take(&mut *self.lock());
        for pid in pids {
            children::signal_group(pid, libc::SIGKILL);
            children::untrack_group(pid);
        }
    }
}

/// The podman containers of a runner, by name, so that they can all be removed at once.
#[derive(Clone, Default)]
struct Containers(Arc<Mutex<BTreeSet<String>>>);

impl Containers {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&self, name: &str) {
        children::track_container(name);
        self.lock().insert(name.to_string());
    }

    /// Forgets a container that is gone (removed by `podman run --rm` or by the caller).
    fn forget(&self, name: &str) {
        children::untrack_container(name);
        self.lock().remove(name);
    }

    /// Removes every container, blocking until podman is done.
    fn remove_all(&self) {
        let names: Vec<String> = std::mem::take(&mut *self.lock()).into_iter().collect();
        podman::remove_blocking(&names);
        for name in &names {
            children::untrack_container(name);
        }
    }
}

/// The API server as a Pod finds it: the `kubernetes` Service, whose ClusterIP is not routable
/// here, so its target port on loopback; and the CA the controller manager publishes in every
/// namespace.
async fn api_endpoint(client: &Client, namespace: &str) -> Result<(u16, String)> {
    let service = Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .context("reading Service default/kubernetes")?;
    let port = service
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("https"))
        .and_then(|p| p.target_port)
        .context("Service default/kubernetes has no https port")?;
    let IntOrString::Int(port) = port else {
        bail!("Service default/kubernetes has a named target port");
    };
    let port = u16::try_from(port).context("Service default/kubernetes: target port")?;

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let start = Instant::now();
    loop {
        let ca = config_maps
            .get_opt("kube-root-ca.crt")
            .await?
            .and_then(|cm| cm.data)
            .and_then(|mut d| d.remove("ca.crt"));
        if let Some(ca) = ca {
            return Ok((port, ca));
        }
        if start.elapsed() > DISCOVERY_TIMEOUT {
            bail!("no ConfigMap kube-root-ca.crt in {namespace} after {DISCOVERY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates the runner's Node and marks it Ready. Nothing ever marks it NotReady: the node
/// lifecycle controller, which would expect heartbeats, is off in the test control plane.
async fn register_node(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                [
                    ("kubernetes.io/hostname", name),
                    ("kubernetes.io/os", "linux"),
                    ("mixdown.dev/pod-runner", "true"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            ),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    nodes
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating Node {name}"))?;
    let resources = json!({ "cpu": "4", "memory": "8Gi", "pods": "110" });
    let status = json!({ "status": {
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "mixdown pod runner is ready",
            "lastHeartbeatTime": status::now(),
            "lastTransitionTime": status::now(),
        }],
        "addresses": [
            { "type": "InternalIP", "address": LOOPBACK },
            { "type": "Hostname", "address": name },
        ],
        "capacity": resources,
        "allocatable": resources,
        "nodeInfo": {
            "machineID": name, "systemUUID": name, "bootID": name,
            "kernelVersion": "", "osImage": "mixdown pod runner",
            "containerRuntimeVersion": "mixdown://1", "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION, "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .with_context(|| format!("marking Node {name} Ready"))?;
    Ok(())
}

/// The runner's main loop: follows the namespace's Pods and hands each one bound to its Node to a
/// pod worker.
async fn watch_pods(runner: Arc<Runner>, mut stop: oneshot::Receiver<()>) {
    let api: Api<Pod> = Api::namespaced(runner.client.clone(), &runner.namespace);
    let mut events = pin!(watcher(api.clone(), watcher::Config::default()).default_backoff());
    // Per Pod uid, the sender that tells its worker about deletion. Entries stay after the worker
    // ends, so that a stale event of a finished Pod never starts it again.
    let mut workers: HashMap<String, watch::Sender<Option<i64>>> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done && e.is_panic() {
                    tracing::error!(error = %e, "pod runner: a task panicked");
                }
            }
            event = events.next() => match event {
                None => break,
                Some(Err(e)) => tracing::warn!(error = %e, "pod runner: watch error, retrying"),
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                    observe(&runner, &api, pod, &mut workers, &mut tasks);
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    // Dropping the sender tells a still running worker that its Pod is gone.
                    if let Some(uid) = pod.uid() {
                        workers.remove(&uid);
                    }
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
            }
        }
    }
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn observe(
    runner: &Arc<Runner>,
    api: &Api<Pod>,
    pod: Pod,
    workers: &mut HashMap<String, watch::Sender<Option<i64>>>,
    tasks: &mut JoinSet<()>,
) {
    let Some(uid) = pod.uid() else { return };
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if pod.metadata.deletion_timestamp.is_some() {
        if node.as_deref() != Some(runner.node.as_str()) {
            return; // unbound Pods are deleted at once by the API server
        }
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
        let running = workers
            .get(&uid)
            .is_some_and(|worker| worker.send(Some(grace)).is_ok());
        if !running {
            // Nothing runs (the Pod finished or never started): finish the deletion now.
            let api = api.clone();
            tasks.spawn(async move {
                if let Err(e) = run::delete_pod_now(&api, &pod).await {
                    tracing::warn!(error = format!("{e:#}"), "pod runner: deleting a pod");
                }
            });
        }
        return;
    }
    match node {
        None => {
            let runner = runner.clone();
            tasks.spawn(async move { bind(&runner, &pod).await });
        }
        Some(node) if node == runner.node && !workers.contains_key(&uid) && !is_terminal(&pod) => {
            let (deleted, deletion) = watch::channel(None);
            workers.insert(uid, deleted);
            tasks.spawn(run::run_pod(runner.clone(), pod, deletion));
        }
        Some(_) => {}
    }
}

/// Plays the scheduler: assigns a pending Pod to the runner's Node.
async fn bind(runner: &Runner, pod: &Pod) {
    let name = pod.name_any();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(runner.node.clone()),
            ..ObjectReference::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(runner.client.clone(), &runner.namespace);
    match api
        .create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding)
        .await
    {
        Ok(_) => tracing::debug!(pod = %name, node = %runner.node, "pod runner: bound"),
        // Another event already bound it, or it is gone.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
        Err(e) => tracing::warn!(pod = %name, error = %e, "pod runner: binding failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::node_name;

    #[test]
    fn node_names_fit_the_hostname_label_and_stay_unique() {
        let long = "a-long-test-name-that-fills-a-namespace-name-to-the-brim-12";
        let names: Vec<String> = (9..12).map(|n| node_name(long, n)).collect();
        for name in &names {
            assert!(name.len() <= 63, "{name} is {} characters", name.len());
            assert!(!name.ends_with('-'), "{name}");
        }
        assert_eq!(
            names[0],
            "pod-runner-9-a-long-test-name-that-fills-a-namespace-name-to-th"
        );
        assert_ne!(names[1], names[2]);
        assert_eq!(node_name("ns", 1), "pod-runner-1-ns");
    }
}
