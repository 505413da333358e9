//! One Pod's life on the pod runner's Node, from its first container's start to its end, like the
//! kubelet's pod worker: build the container's configuration (retrying while a Secret or the
//! ServiceAccount is missing), start the process (a local program, or `podman run` of the image),
//! report Running, then either report how it ended (and restart it if the restart policy says so)
//! or, when the Pod is being deleted, stop the process (and the container) and finish the
//! deletion.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, Pod, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::container::{self, LOOPBACK, PathMap};
use super::podman;
use super::status::{self, ContainerId};
use super::{Launch, Runner};
use crate::cluster::children;

/// The grace period a deleted Pod gets at most, whatever it asks for: tests should not wait 30 s.
const MAX_GRACE: Duration = Duration::from_secs(3);
const CONFIG_RETRY: Duration = Duration::from_secs(1);
/// Restart backoff for `OnFailure`/`Always`: doubles from this, up to [`MAX_RESTART_DELAY`]. The
/// kubelet starts at 10 s; tests want their retries sooner.
const RESTART_DELAY: Duration = Duration::from_millis(500);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);
const TOKEN_SECONDS: i64 = 3600;

/// Tells a Pod's worker that its Pod is being deleted: `Some(grace seconds)`. A dropped sender
/// means the Pod is already gone.
pub(super) type Deletion = watch::Receiver<Option<i64>>;

/// Runs one Pod bound to this runner's Node until it ends or is deleted.
pub(super) async fn run_pod(runner: Arc<Runner>, pod: Pod, mut deletion: Deletion) {
    let name = pod.name_any();
    if let Err(e) = PodWorker::new(&runner, &pod).run(&mut deletion).await {
        tracing::warn!(pod = %name, error = format!("{e:#}"), "pod runner: pod worker failed");
    }
}

struct PodWorker<'a> {
    runner: &'a Runner,
    pod: &'a Pod,
    api: Api<Pod>,
    name: String,
}

enum Outcome {
    Exited(ExitStatus),
    Deleted,
}

/// What to start, once the container's configuration is built.
enum Start {
    /// A local program with its arguments and environment.
    Program {
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
    /// `podman run` with these arguments (the container's environment passed by name) and these
    /// variables added to podman's own environment.
    Podman {
        container: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
}

impl Start {
    fn container(&self) -> Option<&str> {
        match self {
            Start::Program { .. } => None,
            Start::Podman { container, .. } => Some(container),
        }
    }
}

impl<'a> PodWorker<'a> {
    fn new(runner: &'a Runner, pod: &'a Pod) -> Self {
        PodWorker {
            api: Api::namespaced(runner.client.clone(), &runner.namespace),
            name: pod.name_any(),
            runner,
            pod,
        }
    }

    /// Patches the Pod's status. The uid in the patch is a precondition, as in the kubelet's
    /// status manager: a newer Pod that reuses the name is left alone.
    async fn patch_status(&self, mut patch: Value) -> Result<()> {
        patch["metadata"] = json!({ "uid": self.pod.uid() });
        self.api
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
            .with_context(|| format!("updating the status of pod {}", self.name))?;
        Ok(())
    }

    /// Finishes a graceful deletion, as the kubelet does once the containers are gone: without
    /// this a bound Pod stays Terminating forever. The uid precondition spares a new Pod that
    /// reuses the name.
    async fn delete_now(&self, deletion: &Deletion) -> Result<()> {
        if deletion.has_changed().is_err() {
            return Ok(()); // the watch saw the Pod go
        }
        delete_pod_now(&self.api, self.pod).await
    }

    async fn run(&self, deletion: &mut Deletion) -> Result<()> {
        let spec = self.pod.spec.as_ref().context("the pod has no spec")?;
        let container = spec
            .containers
            .first()
            .context("the pod has no containers")?;
        let image = container.image.as_deref().unwrap_or_default();
        let mut id = ContainerId {
            name: &container.name,
            image,
            pid: None,
        };
        let Some(launch) = self.runner.images.get(image) else {
            let mapped: Vec<&str> = self.runner.images.keys().map(String::as_str).collect();
            let message = format!(
                "image {image:?} is not mapped to a local program by this pod runner (it maps {mapped:?}); \
                 add .image({image:?}, \"/path/to/program\") or .podman_image({image:?}) to the PodRunner"
            );
            tracing::warn!(pod = %self.name, "{message}");
            return self
                .patch_status(status::failed_to_start(&id, "ErrImagePull", &message))
                .await;
        };
        if matches!(launch, Launch::Podman) && !podman::image_exists(image).await.unwrap_or(false) {
            // What a kubelet says with `imagePullPolicy: Never`: nothing is ever pulled here.
            let message = format!(
                "Container image {image:?} is not present with pull policy of Never \
                 (build it with ffmpeg-image/build.sh --component all, or check `podman images`)"
            );
            tracing::warn!(pod = %self.name, "{message}");
            return self
                .patch_status(status::failed_to_start(&id, "ErrImageNeverPull", &message))
                .await;
        }

        let uid = self.pod.uid().unwrap_or_default();
        let dir = self
            .runner
            .dir
            .join(format!("{}-{}", self.name, uid.get(..8).unwrap_or(&uid)));
        for sub in ["cwd", "home"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let (paths, termination_log) = container::map_paths(self.pod, container, &dir)?;
        if matches!(launch, Launch::Podman) {
            open_to_the_container_user(&paths)?;
        }
        let log_path = dir.join("container.log");
        let pod_ip = match launch {
            Launch::Program(_) => LOOPBACK.to_string(),
            Launch::Podman => podman::pod_ip(),
        };

        let start = loop {
            let configured = match launch {
                Launch::Program(program) => self.configure(program, container, &dir, &paths).await,
                Launch::Podman => {
                    self.configure_podman(container, &dir, &paths, &pod_ip)
                        .await
                }
            };
            match configured {
                Ok(start) => break start,
                Err(e) => {
                    let message = format!("{e:#}");
                    tracing::info!(pod = %self.name, %message, "pod runner: container config not ready, retrying");
                    let _ = self
                        .patch_status(status::waiting(&id, "CreateContainerConfigError", &message))
                        .await;
                    tokio::select! {
                        _ = tokio::time::sleep(CONFIG_RETRY) => {}
                        _ = deletion.changed() => return self.delete_now(deletion).await,
                    }
                }
            }
        };

        let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
        let fallback_to_logs =
            container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        let start_time = status::now();
        let mut restart_count = 0;
        let mut last: Option<Value> = None;
        loop {
            std::fs::write(&termination_log, b"")?;
            let started_at = status::now();
            if restart_count > 0
                && let Some(name) = start.container()
            {
                // `--rm` removed it, unless podman itself failed: a name must be free to reuse.
                self.remove_container(name).await;
            }
            let mut child = match self.spawn(&start, &dir, &log_path) {
                Ok(child) => child,
                Err(e) => {
                    let message = format!("{e:#}");
                    tracing::warn!(pod = %self.name, %message, "pod runner: cannot start the container");
                    return self
                        .patch_status(status::failed_to_start(&id, "StartError", &message))
                        .await;
                }
            };
            let pid = child.id();
            id.pid = pid;
            match &start {
                Start::Program { program, args, .. } => {
                    tracing::info!(pod = %self.name, ?pid, program = %program.display(), ?args, "pod runner: container started");
                }
                Start::Podman {
                    container, args, ..
                } => {
                    tracing::info!(pod = %self.name, ?pid, %container, ?args, "pod runner: container started with podman");
                }
            }
            // Not fatal: the process runs, and its end or the Pod's deletion is still handled.
            if let Err(e) = self
                .patch_status(status::running(
                    &id,
                    &start_time,
                    &started_at,
                    restart_count,
                    last.as_ref(),
                    &pod_ip,
                ))
                .await
            {
                tracing::warn!(pod = %self.name, error = format!("{e:#}"), "pod runner: reporting Running");
            }

            let outcome = tokio::select! {
                exited = child.wait() => Outcome::Exited(exited?),
                _ = deletion.changed() => Outcome::Deleted,
            };
            let exited = match outcome {
                Outcome::Deleted => {
                    let grace = deletion.borrow().unwrap_or(0);
                    self.stop(&mut child, start.container(), grace).await;
                    return self.delete_now(deletion).await;
                }
                Outcome::Exited(exited) => exited,
            };
            // Whatever the main process left running goes with it, as with a container.
            if let Some(pid) = pid {
                self.runner.groups.kill(pid);
            }
            if let Some(name) = start.container() {
                self.remove_container(name).await;
            }
            let exit_code = exited
                .code()
                .unwrap_or_else(|| 128 + exited.signal().unwrap_or(0));
            let message = status::termination_message(
                &std::fs::read(&termination_log).unwrap_or_default(),
                &std::fs::read(&log_path).unwrap_or_default(),
                fallback_to_logs,
                exit_code,
            );
            tracing::info!(pod = %self.name, exit_code, %message, "pod runner: container exited");
            let terminated = status::terminated_state(exit_code, &message, &started_at, pid);
            let restart = match restart_policy {
                "Always" => true,
                "OnFailure" => exit_code != 0,
                _ => false,
            };
            if !restart {
                return self
                    .patch_status(status::finished(
                        &id,
                        restart_count,
                        terminated,
                        last.as_ref(),
                    ))
                    .await;
            }
            let delay = RESTART_DELAY
                .saturating_mul(1 << restart_count.min(8))
                .min(MAX_RESTART_DELAY);
            restart_count += 1;
            last = Some(terminated);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = deletion.changed() => return self.delete_now(deletion).await,
            }
        }
    }

    /// The local program's environment and arguments. The Pod runs with its ServiceAccount's
    /// identity: a token from the TokenRequest API, bound to the Pod, in a kubeconfig named by
    /// `KUBECONFIG`.
    async fn configure(
        &self,
        program: &Path,
        container: &Container,
        dir: &Path,
        paths: &PathMap,
    ) -> Result<Start> {
        let kubeconfig = self.write_kubeconfig(dir).await?;
        // What the image and the container runtime would provide; the container can override it.
        let base = vec![
            (
                "PATH".to_string(),
                std::env::var("PATH").unwrap_or_default(),
            ),
            ("HOSTNAME".to_string(), self.name.clone()),
            ("HOME".to_string(), dir.join("home").display().to_string()),
            ("KUBECONFIG".to_string(), kubeconfig.display().to_string()),
        ];
        let env = container::environment(
            &self.runner.client,
            self.pod,
            container,
            base,
            paths,
            LOOPBACK,
        )
        .await?;
        let args = container::arguments(container, &env, paths);
        Ok(Start::Program {
            program: program.to_path_buf(),
            args,
            env,
        })
    }

    /// `podman run` of the image, configured as a kubelet configures a container: the environment
    /// with the `kubernetes` Service's variables (pointing at loopback, as the container shares the
    /// host's network), and the ServiceAccount token, the CA and the namespace where the
    /// ServiceAccount admission plugin mounted them, so kube's in-cluster configuration works.
    async fn configure_podman(
        &self,
        container: &Container,
        dir: &Path,
        paths: &PathMap,
        pod_ip: &str,
    ) -> Result<Start> {
        let image = container.image.as_deref().unwrap_or_default();
        let image_user = podman::image_user(image)
            .await
            .with_context(|| format!("inspecting image {image}"))?;
        podman::security(self.pod, container)
            .check_non_root(&image_user)
            .map_err(anyhow::Error::msg)?;

        let mut mounts = paths.clone();
        if podman::service_account_mount(self.pod, container).is_some() {
            let (_, token) = self.request_token().await?;
            let sa_dir = dir.join("serviceaccount");
            std::fs::create_dir_all(&sa_dir)?;
            std::fs::write(sa_dir.join("token"), token)?;
            std::fs::copy(&self.runner.ca_file, sa_dir.join("ca.crt"))?;
            std::fs::write(sa_dir.join("namespace"), &self.runner.namespace)?;
            // Readable by whatever user the container runs as, like the kubelet's 0644 files.
            for file in ["token", "ca.crt", "namespace"] {
                set_mode(&sa_dir.join(file), 0o644)?;
            }
            set_mode(&sa_dir, 0o755)?;
            mounts.insert(podman::SERVICE_ACCOUNT_DIR, sa_dir);
        }
        let mut read_only: Vec<String> = container
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|m| m.read_only == Some(true))
            .map(|m| m.mount_path.clone())
            // A projected token is read-only whatever the mount says.
            .chain([podman::SERVICE_ACCOUNT_DIR.to_string()])
            .collect();
        // Secret and ConfigMap volumes: their files as of the container's start, read-only.
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_deref())
            .unwrap_or_default();
        for mount in container.volume_mounts.as_deref().unwrap_or_default() {
            if mount.mount_path.trim_end_matches('/') == podman::SERVICE_ACCOUNT_DIR {
                continue;
            }
            let Some(volume) = volumes.iter().find(|v| v.name == mount.name) else {
                continue;
            };
            let local = dir.join("volumes").join(&mount.name);
            let fs_group = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|c| c.fs_group);
            if !podman::write_volume(
                &self.runner.client,
                &self.runner.namespace,
                volume,
                &local,
                fs_group,
            )
            .await?
            {
                continue;
            }
            let local = match mount.sub_path.as_deref() {
                Some(sub) if !sub.is_empty() => local.join(sub),
                _ => local,
            };
            mounts.insert(&mount.mount_path, local);
            read_only.push(mount.mount_path.clone());
        }

        // What the kubelet sets for the `kubernetes` Service, before the container's own variables.
        let port = self.runner.server_port.to_string();
        let address = format!("tcp://{LOOPBACK}:{port}");
        let base = vec![
            ("KUBERNETES_SERVICE_HOST".to_string(), LOOPBACK.to_string()),
            ("KUBERNETES_SERVICE_PORT".to_string(), port.clone()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".to_string(), port.clone()),
            ("KUBERNETES_PORT".to_string(), address.clone()),
            (format!("KUBERNETES_PORT_{port}_TCP"), address),
            (
                format!("KUBERNETES_PORT_{port}_TCP_PROTO"),
                "tcp".to_string(),
            ),
            (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.clone()),
            (
                format!("KUBERNETES_PORT_{port}_TCP_ADDR"),
                LOOPBACK.to_string(),
            ),
        ];
        // No path mapping: the container sees its paths where the Pod says.
        let env = container::environment(
            &self.runner.client,
            self.pod,
            container,
            base,
            &PathMap::default(),
            pod_ip,
        )
        .await?;
        let name = podman::container_name(self.pod);
        let hosts = self
            .runner
            .services
            .hosts(&self.runner.client, &self.runner.namespace)
            .await?;
        let (args, env) = podman::run_args(&podman::RunSpec {
            pod: self.pod,
            container,
            name: &name,
            env: &env,
            mounts: &mounts,
            read_only: &read_only,
            hosts: &hosts,
        });
        Ok(Start::Podman {
            container: name,
            args,
            env,
        })
    }

    /// A token of the Pod's ServiceAccount from the TokenRequest API, bound to the Pod (it stops
    /// working when the Pod is deleted), for the API server's own audience: what the kubelet
    /// projects. Returns the account's name and the token.
    async fn request_token(&self) -> Result<(String, String)> {
        let account = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default");
        let request = TokenRequest {
            spec: TokenRequestSpec {
                // Empty: the API server's own audience, which is what it accepts back.
                audiences: Vec::new(),
                expiration_seconds: Some(TOKEN_SECONDS),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.name.clone()),
                    uid: self.pod.uid(),
                }),
            },
            ..TokenRequest::default()
        };
        let accounts: Api<ServiceAccount> =
            Api::namespaced(self.runner.client.clone(), &self.runner.namespace);
        let response: TokenRequest = accounts
            .create_subresource("token", account, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for ServiceAccount {account}"))?;
        let token = response
            .status
            .map(|s| s.token)
            .context("the TokenRequest came back without a token")?;
        Ok((account.to_string(), token))
    }

    async fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        let (account, token) = self.request_token().await?;
        let kubeconfig = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": {
                "server": self.runner.server_url,
                "certificate-authority": self.runner.ca_file,
            }}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {
                "cluster": "cluster", "user": account, "namespace": self.runner.namespace,
            }}],
            "current-context": "pod",
        });
        let path = dir.join("kubeconfig");
        std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
        Ok(path)
    }

    fn spawn(&self, start: &Start, dir: &Path, log_path: &Path) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        let mut cmd = match start {
            Start::Program { program, args, env } => {
                let mut cmd = Command::new(program);
                cmd.args(args)
                    .env_clear()
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .current_dir(dir.join("cwd"));
                cmd
            }
            Start::Podman {
                container,
                args,
                env,
            } => {
                // Tracked before it exists, so that no path can leave it behind.
                self.runner.containers.add(container);
                let mut cmd = podman::command();
                cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .process_group(0);
        // SAFETY: die_with_parent only calls prctl, which is async-signal-safe.
        unsafe { cmd.pre_exec(children::die_with_parent) };
        let child = cmd.spawn().with_context(|| match start {
            Start::Program { program, .. } => format!("starting {}", program.display()),
            Start::Podman { .. } => "starting podman".to_string(),
        })?;
        if let Some(pid) = child.id() {
            self.runner.groups.add(pid);
        }
        Ok(child)
    }

    /// SIGTERM, then SIGKILL once the grace period (capped) is over: to the whole group, or to
    /// the container (`podman stop`), which then is removed.
    async fn stop(&self, child: &mut Child, container: Option<&str>, grace_seconds: i64) {
        let Some(pid) = child.id() else { return };
        let grace = Duration::from_secs(grace_seconds.max(0).unsigned_abs()).min(MAX_GRACE);
        tracing::info!(pod = %self.name, pid, ?container, ?grace, "pod runner: pod deleted, stopping its container");
        match container {
            Some(name) => {
                let stop = podman::command()
                    .args([
                        "stop",
                        "--ignore",
                        "--time",
                        &grace.as_secs().to_string(),
                        name,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .status();
                let _ = tokio::time::timeout(grace + Duration::from_secs(10), stop).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                self.remove_container(name).await;
            }
            None => {
                children::signal_group(pid, libc::SIGTERM);
                let _ = tokio::time::timeout(grace, child.wait()).await;
            }
        }
        self.runner.groups.kill(pid);
        let _ = child.wait().await;
    }

    /// Removes the container if it is still there, and forgets it.
    async fn remove_container(&self, name: &str) {
        let names = vec![name.to_string()];
        let _ = tokio::task::spawn_blocking(move || podman::remove_blocking(&names)).await;
        self.runner.containers.forget(name);
    }
}

/// Makes the emptyDirs writable (0777, as the kubelet creates them) and the termination message
/// file writable (0666) by whatever user the container runs as.
fn open_to_the_container_user(paths: &PathMap) -> std::io::Result<()> {
    for (_, local) in paths.entries() {
        let mode = if local.is_dir() { 0o777 } else { 0o666 };
        set_mode(local, mode)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Deletes a Pod at once (grace period 0), if it is still the same Pod.
pub(super) async fn delete_pod_now(api: &Api<Pod>, pod: &Pod) -> Result<()> {
    let name = pod.name_any();
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting pod {name}")),
    }
}
