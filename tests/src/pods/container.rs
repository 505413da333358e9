//! What a container sees, built the way the kubelet builds it: its environment (`env`, `envFrom`,
//! Secrets, ConfigMaps, the downward API, `$(VAR)` references) and its arguments, with container
//! paths that exist only inside an image mapped onto directories of this machine.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVarSource, Pod, Secret};
use kube::{Api, Client};

/// Where the kubelet has a container write its termination message unless told otherwise.
pub(super) const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// The address the pod runner reports for its Node and its Pods.
pub(super) const LOOPBACK: &str = "127.0.0.1";

/// Container paths (`/dev/termination-log`, emptyDir mount paths) and the local paths that stand
/// in for them. A value naming such a path, or something below it, is rewritten; longer container
/// paths win, as the innermost mount would in a container.
#[derive(Clone, Debug, Default)]
pub(super) struct PathMap {
    entries: Vec<(String, PathBuf)>,
}

impl PathMap {
    pub(super) fn insert(&mut self, container_path: &str, local: PathBuf) {
        let container_path = container_path.trim_end_matches('/');
        let container_path = if container_path.is_empty() {
            "/"
        } else {
            container_path
        };
        self.entries.push((container_path.to_string(), local));
        self.entries
            .sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    }

    /// Every container path and its local stand-in, innermost first.
    pub(super) fn entries(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.entries
            .iter()
            .map(|(container_path, local)| (container_path.as_str(), local.as_path()))
    }

    pub(super) fn rewrite(&self, value: &str) -> String {
        for (container_path, local) in &self.entries {
            if value == container_path {
                return local.display().to_string();
            }
            if let Some(rest) = value.strip_prefix(container_path.as_str())
                && rest.starts_with('/')
            {
                return format!("{}{rest}", local.display());
            }
        }
        value.to_string()
    }
}

/// Expands `$(NAME)` references like the kubelet: defined names are replaced, undefined ones are
/// left as written, and `$$` escapes a `$`.
pub(super) fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The arguments after the program: `command[1..] ++ args` when the container sets `command`
/// (the mapped program stands in for `command[0]`), else `args` (the image's entrypoint is the
/// mapped program). References to the environment are expanded, then container paths mapped.
pub(super) fn arguments(
    container: &Container,
    env: &[(String, String)],
    paths: &PathMap,
) -> Vec<String> {
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let command = container.command.as_deref().unwrap_or_default();
    let args = container.args.as_deref().unwrap_or_default();
    command
        .iter()
        .skip(1)
        .chain(args)
        .map(|arg| {
            let expanded = expand(arg, |name| vars.get(name).map(|v| v.to_string()));
            paths.rewrite(&expanded)
        })
        .collect()
}

/// Reads Secrets and ConfigMaps once per Pod start, as a container's environment is fixed when it
/// starts.
struct Sources<'a> {
    client: &'a Client,
    namespace: &'a str,
    /// What `status.podIP` says.
    pod_ip: &'a str,
    secrets: HashMap<String, Option<BTreeMap<String, String>>>,
    config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
}

impl Sources<'_> {
    async fn secret(&mut self, name: &str) -> Result<Option<&BTreeMap<String, String>>> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
            let data = api
                .get_opt(name)
                .await
                .with_context(|| format!("reading Secret {name}"))?
                .map(|secret| {
                    let mut data: BTreeMap<String, String> = secret.string_data.unwrap_or_default();
                    for (k, v) in secret.data.unwrap_or_default() {
                        data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
                    }
                    data
                });
            self.secrets.insert(name.to_string(), data);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }

    async fn config_map(&mut self, name: &str) -> Result<Option<&BTreeMap<String, String>>> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.namespace);
            let data = api
                .get_opt(name)
                .await
                .with_context(|| format!("reading ConfigMap {name}"))?
                .map(|cm| cm.data.unwrap_or_default());
            self.config_maps.insert(name.to_string(), data);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }
}

/// The container's environment, in the kubelet's order: what the "image" provides (`base`), then
/// `envFrom`, then `env`, each `env` value able to refer to the variables before it. Container
/// paths in values are mapped last. An error is what the kubelet reports as
/// CreateContainerConfigError (a missing Secret, ConfigMap or key that is not optional).
pub(super) async fn environment(
    client: &Client,
    pod: &Pod,
    container: &Container,
    base: Vec<(String, String)>,
    paths: &PathMap,
    pod_ip: &str,
) -> Result<Vec<(String, String)>> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut sources = Sources {
        client,
        namespace,
        pod_ip,
        secrets: HashMap::new(),
        config_maps: HashMap::new(),
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for (k, v) in base {
        set(&mut env, k, v);
    }

    for from in container.env_from.as_deref().unwrap_or_default() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (kind, name, optional, data) = if let Some(r) = &from.secret_ref {
            let data = sources.secret(&r.name).await?.cloned();
            ("Secret", &r.name, r.optional.unwrap_or(false), data)
        } else if let Some(r) = &from.config_map_ref {
            let data = sources.config_map(&r.name).await?.cloned();
            ("ConfigMap", &r.name, r.optional.unwrap_or(false), data)
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    set(&mut env, format!("{prefix}{k}"), v);
                }
            }
            None if optional => {}
            None => bail!("{kind} \"{name}\" not found"),
        }
    }

    for var in container.env.as_deref().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(source)) => match value_from(&mut sources, pod, source).await? {
                Some(v) => v,
                None => continue,
            },
            (Some(value), None) => expand(value, |name| {
                env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            }),
            (None, None) => String::new(),
        };
        set(&mut env, var.name.clone(), value);
    }

    Ok(env
        .into_iter()
        .map(|(k, v)| {
            let v = paths.rewrite(&v);
            (k, v)
        })
        .collect())
}

/// Sets a variable; a later definition replaces an earlier one where it stands.
fn set(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => env.push((key, value)),
    }
}

/// One `valueFrom`; `None` when an optional source is missing (the variable is then not set).
async fn value_from(
    sources: &mut Sources<'_>,
    pod: &Pod,
    source: &EnvVarSource,
) -> Result<Option<String>> {
    if let Some(r) = &source.secret_key_ref {
        let optional = r.optional.unwrap_or(false);
        return match sources.secret(&r.name).await? {
            Some(data) => match data.get(&r.key) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(anyhow!(
                    "couldn't find key {} in Secret {}/{}",
                    r.key,
                    sources.namespace,
                    r.name
                )),
            },
            None if optional => Ok(None),
            None => Err(anyhow!("secret \"{}\" not found", r.name)),
        };
    }
    if let Some(r) = &source.config_map_key_ref {
        let optional = r.optional.unwrap_or(false);
        return match sources.config_map(&r.name).await? {
            Some(data) => match data.get(&r.key) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(anyhow!(
                    "couldn't find key {} in ConfigMap {}/{}",
                    r.key,
                    sources.namespace,
                    r.name
                )),
            },
            None if optional => Ok(None),
            None => Err(anyhow!("configmap \"{}\" not found", r.name)),
        };
    }
    if let Some(r) = &source.field_ref {
        return field_value(pod, &r.field_path, sources.pod_ip).map(Some);
    }
    bail!("this kind of valueFrom (resourceFieldRef) is not supported by the pod runner")
}

/// The downward API fields a test is likely to use.
fn field_value(pod: &Pod, path: &str, pod_ip: &str) -> Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let from_map = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => LOOPBACK.to_string(),
        "status.podIP" => pod_ip.to_string(),
        _ => {
            let key = |prefix: &str| {
                path.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix("']"))
            };
            if let Some(k) = key("metadata.labels['") {
                from_map(&meta.labels, k)
            } else if let Some(k) = key("metadata.annotations['") {
                from_map(&meta.annotations, k)
            } else {
                bail!("fieldRef {path} is not supported by the pod runner");
            }
        }
    };
    Ok(value)
}

/// The container paths this Pod's first container expects, mapped into `dir`: its termination
/// message file and every emptyDir mount (a volume mounted twice shares one directory).
pub(super) fn map_paths(
    pod: &Pod,
    container: &Container,
    dir: &Path,
) -> std::io::Result<(PathMap, PathBuf)> {
    let mut paths = PathMap::default();
    let termination_log = dir.join("termination-log");
    std::fs::write(&termination_log, b"")?;
    let message_path = container
        .termination_message_path
        .as_deref()
        .unwrap_or(DEFAULT_TERMINATION_MESSAGE_PATH);
    paths.insert(message_path, termination_log.clone());

    let empty_dirs: Vec<&str> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|v| v.empty_dir.is_some())
        .map(|v| v.name.as_str())
        .collect();
    for mount in container.volume_mounts.as_deref().unwrap_or_default() {
        if !empty_dirs.contains(&mount.name.as_str()) {
            continue;
        }
        let local = dir.join("volumes").join(&mount.name);
        std::fs::create_dir_all(&local)?;
        let local = match &mount.sub_path {
            Some(sub) if !sub.is_empty() => {
                let sub = local.join(sub);
                std::fs::create_dir_all(&sub)?;
                sub
            }
            _ => local,
        };
        paths.insert(&mount.mount_path, local);
    }
    Ok((paths, termination_log))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_the_kubelet() {
        let lookup = |name: &str| (name == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)/$(B)", lookup), "x/$(B)");
        assert_eq!(expand("$$(A) $$ $", lookup), "$(A) $ $");
        assert_eq!(expand("$(A", lookup), "$(A");
        assert_eq!(expand("no refs", lookup), "no refs");
    }

    #[test]
    fn rewrites_container_paths_and_below_only() {
        let mut paths = PathMap::default();
        paths.insert("/dev/termination-log", "/tmp/p/termination-log".into());
        paths.insert("/work", "/tmp/p/volumes/work".into());
        paths.insert("/work/inner/", "/tmp/p/volumes/inner".into());
        assert_eq!(
            paths.rewrite("/dev/termination-log"),
            "/tmp/p/termination-log"
        );
        assert_eq!(paths.rewrite("/work"), "/tmp/p/volumes/work");
        assert_eq!(paths.rewrite("/work/a/b"), "/tmp/p/volumes/work/a/b");
        assert_eq!(paths.rewrite("/work/inner/c"), "/tmp/p/volumes/inner/c");
        assert_eq!(paths.rewrite("/workshop"), "/workshop");
        assert_eq!(paths.rewrite("relative/work"), "relative/work");
    }

    #[test]
    fn arguments_replace_command_zero() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "command": ["sh", "-c"],
            "args": ["echo $(GREETING) > /dev/termination-log"],
        }))
        .expect("valid container");
        let env = vec![("GREETING".to_string(), "hi".to_string())];
        let mut paths = PathMap::default();
        paths.insert("/dev/termination-log", "/tmp/t".into());
        // Whole arguments are mapped, not paths inside a shell script.
        assert_eq!(
            arguments(&container, &env, &paths),
            vec!["-c", "echo hi > /dev/termination-log"]
        );
        let only_args: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "args": ["--out", "/dev/termination-log"],
        }))
        .expect("valid container");
        assert_eq!(arguments(&only_args, &env, &paths), vec!["--out", "/tmp/t"]);
    }

    #[test]
    fn downward_api_fields() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"a": "b"}},
            "spec": {"nodeName": "node", "containers": []},
        }))
        .expect("valid pod");
        assert_eq!(
            field_value(&pod, "metadata.name", LOOPBACK).ok().as_deref(),
            Some("p")
        );
        assert_eq!(
            field_value(&pod, "metadata.namespace", LOOPBACK)
                .ok()
                .as_deref(),
            Some("n")
        );
        assert_eq!(
            field_value(&pod, "spec.nodeName", LOOPBACK).ok().as_deref(),
            Some("node")
        );
        assert_eq!(
            field_value(&pod, "metadata.labels['a']", LOOPBACK)
                .ok()
                .as_deref(),
            Some("b")
        );
        assert!(field_value(&pod, "status.phase", LOOPBACK).is_err());
    }
}
