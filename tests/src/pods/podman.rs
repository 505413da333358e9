//! The image mode of the pod runner: a Pod's first container run with podman from its image, the
//! way a kubelet's container runtime would run it.
//!
//! [`run_args`] turns the container into `podman run` flags, a pure function of the Pod: `command`
//! replaces the image's ENTRYPOINT and `args` its CMD (both with `$(VAR)` references expanded),
//! `workingDir`, the security context (pod-level, overridden per container: `runAsUser`/
//! `runAsGroup` → `--user`, `fsGroup`/`supplementalGroups` → `--group-add`,
//! `readOnlyRootFilesystem` → `--read-only` without podman's extra tmpfs mounts, capabilities →
//! `--cap-drop`/`--cap-add`, `allowPrivilegeEscalation: false` → `no-new-privileges`), and every
//! mount as a bind mount of a directory of this machine: the emptyDirs (writable by anyone, as the
//! kubelet makes them), Secret and ConfigMap volumes (their files as of the container's start,
//! `items`, modes and `subPath` honoured, read-only), the termination message file, and the
//! ServiceAccount token directory (`token`, `ca.crt`, `namespace`, read-only) where the
//! ServiceAccount admission plugin mounted its volume. The container shares the host's network, so the API server is where
//! `KUBERNETES_SERVICE_HOST`/`PORT` say: loopback.
//!
//! Images are never pulled (no registry can be reached): they must have been built, e.g. by
//! `ffmpeg-image/build.sh --component all`.
//!
//! Containers are named after the Pod (`mixdown-pod-<namespace>-<pod>-<uid prefix>`) and labelled
//! with the test binary's pid. Killing the `podman run` client does not stop a container (conmon
//! keeps it), so stopping one is `podman stop` and `podman rm --force` by name, the runner's Drop
//! removes every container it started, an `atexit` handler removes what is left when the test
//! binary exits, and a new runner removes the containers of test binaries that are gone.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;

use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};

use super::container::{PathMap, expand};

/// Where the kubelet projects the ServiceAccount token, the cluster's CA and the namespace.
pub(super) const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Label carrying the pid of the test binary that started a container.
const PID_LABEL: &str = "mixdown.dev/pod-runner-pid";

/// The project's podman settings (runc, cgroupfs, ulimits these machines allow), unless the caller
/// points `CONTAINERS_CONF` elsewhere; the global flags say the same, so that no caller's
/// configuration brings crun or systemd cgroups back.
fn configure(cmd: &mut std::process::Command) {
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        cmd.env(
            "CONTAINERS_CONF",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../ffmpeg-image/podman/containers.conf"),
        );
    }
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
}

/// `podman` with the project's settings, for the async parts of the runner.
pub(super) fn command() -> tokio::process::Command {
    let mut std_cmd = std::process::Command::new("podman");
    configure(&mut std_cmd);
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.stdin(Stdio::null());
    cmd
}

fn blocking_command() -> std::process::Command {
    let mut cmd = std::process::Command::new("podman");
    configure(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// A loopback address of its own for a Pod (`127.<from the pid>.<n>.<n>`), reported as its
/// `status.podIP` and given to `fieldRef: status.podIP`: every container shares the host's
/// network, so Pods that listen on `$(POD_IP):<port>` do not collide, and each one is reachable
/// at the address its Pod's status (and so its Service's endpoints) names.
pub(super) fn pod_ip() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let process = 1 + std::process::id() % 254;
    format!("127.{process}.{}.{}", (n / 254) % 256, 1 + n % 254)
}

/// The container name of a Pod: unique per Pod (its uid), readable in `podman ps`.
pub(super) fn container_name(pod: &Pod) -> String {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("pod");
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    format!(
        "mixdown-pod-{namespace}-{name}-{}",
        uid.get(..8).unwrap_or(uid)
    )
}

/// Removes containers at once, running or not, and waits for podman to finish. Blocking: also
/// called from Drop and at exit, when no runtime may be left.
pub(crate) fn remove_blocking(names: &[String]) {
    if names.is_empty() {
        return;
    }
    let status = blocking_command()
        .args(["rm", "--force", "--ignore", "--time", "0"])
        .args(names)
        .status();
    if let Err(e) = status {
        tracing::warn!(error = %e, ?names, "pod runner: podman rm");
    }
}

/// Removes the containers of test binaries that are no longer running (killed outright: neither
/// Drop nor the exit handler ran).
pub(super) fn remove_stale_containers() {
    let Ok(out) = blocking_command()
        .args(["ps", "--all", "--filter", &format!("label={PID_LABEL}")])
        .args([
            "--format",
            &format!("{{{{.Names}}}} {{{{index .Labels \"{PID_LABEL}\"}}}}"),
        ])
        .stdout(Stdio::piped())
        .output()
    else {
        return;
    };
    let stale: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, pid)| {
            pid.trim()
                .parse::<u32>()
                .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(|(name, _)| name.to_string())
        .collect();
    remove_blocking(&stale);
}

/// Whether the image is in podman's local storage.
pub(super) async fn image_exists(image: &str) -> std::io::Result<bool> {
    Ok(command()
        .args(["image", "exists", image])
        .status()
        .await?
        .success())
}

/// The user the image runs as (`USER`), empty for root.
pub(super) async fn image_user(image: &str) -> std::io::Result<String> {
    let out = command()
        .args(["image", "inspect", "--format", "{{.Config.User}}", image])
        .output()
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The security settings that apply to the container: its own, else the Pod's.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Security {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    pub groups: Vec<i64>,
    pub read_only_root: bool,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    pub no_new_privileges: bool,
    pub privileged: bool,
}

pub(super) fn security(pod: &Pod, container: &Container) -> Security {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc: Option<&SecurityContext> = container.security_context.as_ref();
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let mut groups: Vec<i64> = pod_sc
        .and_then(|s| s.fs_group)
        .into_iter()
        .chain(
            pod_sc
                .and_then(|s| s.supplemental_groups.clone())
                .unwrap_or_default(),
        )
        .collect();
    groups.dedup();
    Security {
        run_as_user: sc
            .and_then(|s| s.run_as_user)
            .or(pod_sc.and_then(|s| s.run_as_user)),
        run_as_group: sc
            .and_then(|s| s.run_as_group)
            .or(pod_sc.and_then(|s| s.run_as_group)),
        run_as_non_root: sc
            .and_then(|s| s.run_as_non_root)
            .or(pod_sc.and_then(|s| s.run_as_non_root))
            .unwrap_or(false),
        groups,
        read_only_root: sc.and_then(|s| s.read_only_root_filesystem) == Some(true),
        cap_drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
        cap_add: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        no_new_privileges: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        privileged: sc.and_then(|s| s.privileged) == Some(true),
    }
}

impl Security {
    /// The kubelet's `runAsNonRoot` check, against the user the image would otherwise run as:
    /// the error is what the kubelet reports as CreateContainerConfigError.
    pub(super) fn check_non_root(&self, image_user: &str) -> Result<(), String> {
        if !self.run_as_non_root {
            return Ok(());
        }
        match self.run_as_user {
            Some(0) => Err("container's runAsUser breaks non-root policy".into()),
            Some(_) => Ok(()),
            None => {
                let user = image_user.split(':').next().unwrap_or_default();
                match user.parse::<u64>() {
                    Ok(0) => Err("container has runAsNonRoot and image will run as root".into()),
                    Ok(_) => Ok(()),
                    Err(_) if user.is_empty() || user == "root" => {
                        Err("container has runAsNonRoot and image will run as root".into())
                    }
                    Err(_) => Err(format!(
                        "container has runAsNonRoot and image has non-numeric user ({user}), \
                         cannot verify user is non-root"
                    )),
                }
            }
        }
    }
}

/// Everything about one `podman run` that the Pod decides.
pub(super) struct RunSpec<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub name: &'a str,
    /// The container's environment, as the kubelet would give it.
    pub env: &'a [(String, String)],
    /// Container paths and the local files and directories bind-mounted there.
    pub mounts: &'a PathMap,
    /// Mount paths that are read-only.
    pub read_only: &'a [String],
    /// Host names of the namespace's Services and their addresses, for `/etc/hosts`.
    pub hosts: &'a [(String, std::net::IpAddr)],
}

/// Environment variables that podman itself reads: these are passed with their values on the
/// command line; all others by name only (`--env NAME`, the value from podman's environment), so
/// that credentials stay out of the command line.
const PODMAN_OWN_ENV: &[&str] = &["PATH", "HOME", "TMPDIR", "CONTAINERS_CONF", "USER", "LANG"];

/// `podman run` arguments for the container and the environment to give podman: see the module
/// docs.
pub(super) fn run_args(spec: &RunSpec<'_>) -> (Vec<String>, Vec<(String, String)>) {
    let RunSpec {
        pod,
        container,
        name,
        env,
        mounts,
        read_only,
        hosts,
    } = spec;
    let mut args: Vec<String> = vec![
        "run".into(),
        "--rm".into(),
        "--name".into(),
        name.to_string(),
        "--label".into(),
        format!("{PID_LABEL}={}", std::process::id()),
        "--pull=never".into(),
        "--network".into(),
        "host".into(),
    ];
    if let Some(hostname) = pod.metadata.name.as_deref() {
        args.extend(["--hostname".into(), hostname.to_string()]);
    }
    for (host, ip) in hosts.iter() {
        args.extend(["--add-host".into(), format!("{host}:{ip}")]);
    }
    let sec = security(pod, container);
    match (sec.run_as_user, sec.run_as_group) {
        (Some(user), Some(group)) => args.extend(["--user".into(), format!("{user}:{group}")]),
        (Some(user), None) => args.extend(["--user".into(), user.to_string()]),
        (None, Some(_)) | (None, None) => {} // the image's user (a group alone cannot be given)
    }
    for group in &sec.groups {
        args.extend(["--group-add".into(), group.to_string()]);
    }
    if sec.read_only_root {
        // Podman adds writable tmpfs mounts (/tmp, /run, /var/tmp) to a read-only root; a
        // kubelet does not.
        args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    for cap in &sec.cap_drop {
        args.extend(["--cap-drop".into(), cap.clone()]);
    }
    for cap in &sec.cap_add {
        args.extend(["--cap-add".into(), cap.clone()]);
    }
    if sec.no_new_privileges {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    if sec.privileged {
        args.push("--privileged".into());
    }
    if let Some(dir) = container.working_dir.as_deref().filter(|d| !d.is_empty()) {
        args.extend(["--workdir".into(), dir.to_string()]);
    }
    // Outer mounts before the ones inside them.
    let outer_first: Vec<(&str, &Path)> = mounts.entries().collect();
    for (container_path, local) in outer_first.into_iter().rev() {
        let mode = if read_only
            .iter()
            .any(|p| p.trim_end_matches('/') == container_path)
        {
            "ro"
        } else {
            "rw"
        };
        args.extend([
            "--volume".into(),
            format!("{}:{container_path}:{mode}", local.display()),
        ]);
    }

    let mut podman_env = Vec::new();
    for (key, value) in env.iter() {
        if PODMAN_OWN_ENV.contains(&key.as_str())
            || key.starts_with("CONTAINERS_")
            || key.starts_with("XDG_")
        {
            args.extend(["--env".into(), format!("{key}={value}")]);
        } else {
            args.extend(["--env".into(), key.clone()]);
            podman_env.push((key.clone(), value.clone()));
        }
    }

    // `command` replaces the ENTRYPOINT, `args` the CMD; `command` alone drops the image's CMD,
    // which podman does too when given an entrypoint.
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let expand_all = |values: &[String]| -> Vec<String> {
        values
            .iter()
            .map(|v| expand(v, |name| vars.get(name).map(|v| v.to_string())))
            .collect()
    };
    if let Some(command) = container.command.as_deref().filter(|c| !c.is_empty()) {
        let entrypoint = serde_json::to_string(&expand_all(command)).unwrap_or_default();
        args.extend(["--entrypoint".into(), entrypoint]);
    }
    args.push(container.image.clone().unwrap_or_default());
    args.extend(expand_all(container.args.as_deref().unwrap_or_default()));
    (args, podman_env)
}

/// The container's mounts other than emptyDirs and the termination message (which
/// [`super::container::map_paths`] maps): the ServiceAccount token directory, where a volume is
/// mounted at [`SERVICE_ACCOUNT_DIR`] (the ServiceAccount admission plugin adds it unless
/// `automountServiceAccountToken` is false). Returns the mount's `readOnly`, or None.
pub(super) fn service_account_mount(pod: &Pod, container: &Container) -> Option<bool> {
    let volumes = pod.spec.as_ref()?.volumes.as_deref().unwrap_or_default();
    container
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| {
            m.mount_path.trim_end_matches('/') == SERVICE_ACCOUNT_DIR
                && volumes
                    .iter()
                    .any(|v| v.name == m.name && (v.secret.is_some() || v.projected.is_some()))
        })
        .map(|m| m.read_only.unwrap_or(false))
}

/// Writes the files of a Secret or ConfigMap volume into `dir` as the kubelet would (every key,
/// or the `items` asked for at their paths, with `defaultMode`/`mode`, 0644 unless told), to be
/// bind-mounted read-only. With the Pod's `fsGroup`, the files belong to that group and are
/// readable by it, as the kubelet's volume ownership makes them (so a non-root container reads a
/// `0400` Secret). `Ok(false)` when the volume is of another kind; an error when its source is
/// missing and not optional (the kubelet keeps the Pod waiting then).
pub(super) async fn write_volume(
    client: &kube::Client,
    namespace: &str,
    volume: &k8s_openapi::api::core::v1::Volume,
    dir: &Path,
    fs_group: Option<i64>,
) -> anyhow::Result<bool> {
    use anyhow::{Context, bail};
    use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Secret};
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    /// What the volume's Secret or ConfigMap holds, and how the volume asks for it.
    struct Source<'a> {
        kind: &'static str,
        name: &'a str,
        optional: bool,
        items: Option<&'a [KeyToPath]>,
        default_mode: Option<i32>,
        data: Option<BTreeMap<String, Vec<u8>>>,
    }

    let Source {
        kind,
        name,
        optional,
        items,
        default_mode,
        data,
    } = if let Some(source) = &volume.secret {
        let name = source.secret_name.as_deref().unwrap_or_default();
        let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
        let data = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading Secret {name}"))?
            .map(|secret| {
                let mut data: BTreeMap<String, Vec<u8>> = secret
                    .string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                data.extend(
                    secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                data
            });
        let optional = source.optional.unwrap_or(false);
        Source {
            kind: "Secret",
            name,
            optional,
            items: source.items.as_deref(),
            default_mode: source.default_mode,
            data,
        }
    } else if let Some(source) = &volume.config_map {
        let name = source.name.as_str();
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), namespace);
        let data = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading ConfigMap {name}"))?
            .map(|cm| {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                data.extend(
                    cm.binary_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0)),
                );
                data
            });
        let optional = source.optional.unwrap_or(false);
        Source {
            kind: "ConfigMap",
            name,
            optional,
            items: source.items.as_deref(),
            default_mode: source.default_mode,
            data,
        }
    } else {
        return Ok(false);
    };
    let data = match data {
        Some(data) => data,
        None if optional => BTreeMap::new(),
        None => bail!(
            "MountVolume.SetUp failed for volume \"{}\": {} \"{name}\" not found",
            volume.name,
            kind.to_lowercase()
        ),
    };
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let group = fs_group.and_then(|g| u32::try_from(g).ok());
    let default_mode = default_mode.unwrap_or(0o644);
    let files: Vec<(String, &[u8], i32)> = match items {
        Some(items) => {
            let mut files = Vec::new();
            for item in items {
                match data.get(&item.key) {
                    Some(value) => files.push((
                        item.path.clone(),
                        value.as_slice(),
                        item.mode.unwrap_or(default_mode),
                    )),
                    None if optional => {}
                    None => bail!(
                        "MountVolume.SetUp failed for volume \"{}\": configured to use key {} of \
                         {kind} {name}, which does not exist",
                        volume.name,
                        item.key
                    ),
                }
            }
            files
        }
        None => data
            .iter()
            .map(|(key, value)| (key.clone(), value.as_slice(), default_mode))
            .collect(),
    };
    for (path, value, mode) in files {
        if path.starts_with('/') || path.split('/').any(|part| part == "..") {
            bail!("volume {}: path {path:?} must be relative", volume.name);
        }
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, value)?;
        let mut mode = u32::try_from(mode).unwrap_or(0o644) & 0o777;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&file, None, Some(gid))?;
            mode |= 0o440;
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))?;
    }
    if let Some(gid) = group {
        std::os::unix::fs::chown(dir, None, Some(gid))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "0123456789abcdef"},
            "spec": spec,
        }))
        .expect("valid pod")
    }

    fn args_of(pod: &Pod, env: &[(String, String)], mounts: &PathMap) -> Vec<String> {
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        run_args(&RunSpec {
            pod,
            container,
            name: &container_name(pod),
            env,
            mounts,
            read_only: &[SERVICE_ACCOUNT_DIR.to_string()],
            hosts: &[],
        })
        .0
    }

    #[test]
    fn command_is_the_entrypoint_and_args_follow_the_image() {
        let pod = pod(serde_json::json!({"containers": [{
            "name": "c", "image": "localhost/x:dev",
            "command": ["sh", "-c"], "args": ["echo $(GREETING)"],
        }]}));
        let env = vec![("GREETING".to_string(), "hi".to_string())];
        let args = args_of(&pod, &env, &PathMap::default());
        let at = args
            .iter()
            .position(|a| a == "--entrypoint")
            .expect("entrypoint");
        assert_eq!(args[at + 1], r#"["sh","-c"]"#);
        assert_eq!(&args[args.len() - 2..], ["localhost/x:dev", "echo hi"]);
        assert!(
            args.contains(&"mixdown-pod-n-p-01234567".to_string()),
            "{args:?}"
        );

        let only_args = self::pod(serde_json::json!({"containers": [{
            "name": "c", "image": "localhost/x:dev", "args": ["--help"],
        }]}));
        let args = args_of(&only_args, &[], &PathMap::default());
        assert!(!args.contains(&"--entrypoint".to_string()), "{args:?}");
        assert_eq!(&args[args.len() - 2..], ["localhost/x:dev", "--help"]);
    }

    #[test]
    fn security_context_becomes_podman_flags() {
        let pod = pod(serde_json::json!({
            "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
            "containers": [{
                "name": "c", "image": "i",
                "securityContext": {
                    "runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                },
            }],
        }));
        let args = args_of(&pod, &[], &PathMap::default()).join(" ");
        for flag in [
            "--user 65532:65532",
            "--group-add 2000",
            "--read-only --read-only-tmpfs=false",
            "--cap-drop ALL",
            "--security-opt no-new-privileges",
            "--network host",
            "--pull=never",
        ] {
            assert!(args.contains(flag), "{flag} missing in {args}");
        }
        let plain = self::pod(serde_json::json!({"containers": [{"name": "c", "image": "i"}]}));
        let args = args_of(&plain, &[], &PathMap::default()).join(" ");
        assert!(
            !args.contains("--user") && !args.contains("--read-only"),
            "{args}"
        );
    }

    #[test]
    fn mounts_and_environment() {
        let pod = pod(serde_json::json!({"containers": [{"name": "c", "image": "i"}]}));
        let mut mounts = PathMap::default();
        mounts.insert("/tmp", "/host/volumes/scratch".into());
        mounts.insert(SERVICE_ACCOUNT_DIR, "/host/serviceaccount".into());
        let env = vec![
            ("AWS_SECRET_ACCESS_KEY".to_string(), "s3cr3t".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let (args, podman_env) = run_args(&RunSpec {
            pod: &pod,
            container,
            name: "x",
            env: &env,
            mounts: &mounts,
            read_only: &[SERVICE_ACCOUNT_DIR.to_string()],
            hosts: &[],
        });
        let joined = args.join(" ");
        assert!(
            joined.contains("--volume /host/volumes/scratch:/tmp:rw"),
            "{joined}"
        );
        assert!(
            joined.contains(&format!(
                "--volume /host/serviceaccount:{SERVICE_ACCOUNT_DIR}:ro"
            )),
            "{joined}"
        );
        // Secrets go through podman's environment, not its command line.
        assert!(!joined.contains("s3cr3t"), "{joined}");
        assert!(joined.contains("--env AWS_SECRET_ACCESS_KEY"), "{joined}");
        assert_eq!(
            podman_env,
            [("AWS_SECRET_ACCESS_KEY".to_string(), "s3cr3t".to_string())]
        );
        assert!(joined.contains("--env PATH=/bin"), "{joined}");
    }

    #[test]
    fn run_as_non_root_is_checked_against_the_image() {
        let non_root = Security {
            run_as_non_root: true,
            ..Security::default()
        };
        assert!(non_root.check_non_root("65532:65532").is_ok());
        assert!(non_root.check_non_root("").is_err());
        assert!(non_root.check_non_root("0").is_err());
        assert!(non_root.check_non_root("mixdown").is_err());
        let as_root = Security {
            run_as_non_root: true,
            run_as_user: Some(0),
            ..Security::default()
        };
        assert!(as_root.check_non_root("65532").is_err());
        assert!(Security::default().check_non_root("").is_ok());
    }
}
