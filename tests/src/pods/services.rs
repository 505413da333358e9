//! Services, the way kube-proxy and cluster DNS make them reachable, for the Pods the runner runs
//! with podman (and for the test itself): each Service of the namespace that selects Pods gets a
//! loopback address of its own (`127.<process>.255.<n>`), a listener there on every port it
//! declares, and host names in the containers' `/etc/hosts` (`name`, `name.namespace`,
//! `name.namespace.svc`, `name.namespace.svc.cluster.local`). A connection goes to one of the
//! Service's ready endpoints (the Running Pods its selector matches, at the `targetPort`, by
//! number or by the container port's name): with `sessionAffinity: ClientIP` every connection
//! from one client address goes to the same Pod while it stays ready, as kube-proxy does;
//! otherwise they take turns. Only what Mixdown's chart uses is played: ClusterIP Services with
//! a selector, TCP ports.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The namespace's Services as the runner serves them.
#[derive(Default)]
pub(super) struct Services {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By Service name: its address, and the listeners serving it.
    served: BTreeMap<String, Served>,
    next: u8,
}

struct Served {
    ip: IpAddr,
    listeners: Vec<JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
    }
}

impl Services {
    /// Serves every Service of `namespace` not served yet, and returns the host names and
    /// addresses containers get (`--add-host`).
    pub(super) async fn hosts(
        &self,
        client: &Client,
        namespace: &str,
    ) -> Result<Vec<(String, IpAddr)>> {
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let list = services
            .list(&ListParams::default())
            .await
            .with_context(|| format!("listing the Services of {namespace}"))?;
        let mut hosts = Vec::new();
        for service in list.items {
            let Some(ip) = self.serve(client, namespace, &service).await? else {
                continue;
            };
            let name = service.name_any();
            for host in [
                name.clone(),
                format!("{name}.{namespace}"),
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
            ] {
                hosts.push((host, ip));
            }
        }
        Ok(hosts)
    }

    /// The address of Service `name` on `port` (its `port`, not the target), once served.
    pub(super) fn address(&self, name: &str, port: u16) -> Option<SocketAddr> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.served.get(name).map(|s| SocketAddr::new(s.ip, port))
    }

    /// Starts serving `service` unless it is served already or has nothing to serve (no
    /// selector); its address.
    async fn serve(
        &self,
        client: &Client,
        namespace: &str,
        service: &Service,
    ) -> Result<Option<IpAddr>> {
        let name = service.name_any();
        let Some(spec) = service.spec.as_ref() else {
            return Ok(None);
        };
        let Some(selector) = spec.selector.clone().filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let ip = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(served) = inner.served.get(&name) {
                return Ok(Some(served.ip));
            }
            inner.next = inner
                .next
                .checked_add(1)
                .context("more than 254 Services")?;
            let process = (std::process::id() % 254 + 1) as u8;
            IpAddr::from([127, process, 255, inner.next])
        };
        let affinity = spec.session_affinity.as_deref() == Some("ClientIP");
        let mut listeners = Vec::new();
        for port in spec.ports.as_deref().unwrap_or_default() {
            if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            let port_number = u16::try_from(port.port).context("a Service port out of range")?;
            let listener = TcpListener::bind((ip, port_number))
                .await
                .with_context(|| format!("listening for Service {name} at {ip}:{port_number}"))?;
            let route = Arc::new(Route {
                client: client.clone(),
                namespace: namespace.to_string(),
                service: name.clone(),
                selector: selector.clone(),
                target: target(port),
                affinity,
                pinned: Mutex::new(HashMap::new()),
                turn: AtomicUsize::new(0),
            });
            listeners.push(tokio::spawn(accept(listener, route)));
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.served.insert(name, Served { ip, listeners });
        Ok(Some(ip))
    }
}

/// A Service port's `targetPort` (its `port` when unset).
fn target(port: &ServicePort) -> IntOrString {
    port.target_port
        .clone()
        .unwrap_or(IntOrString::Int(port.port))
}

/// Where one Service port's connections go.
struct Route {
    client: Client,
    namespace: String,
    service: String,
    selector: BTreeMap<String, String>,
    target: IntOrString,
    affinity: bool,
    /// ClientIP affinity: the Pod (by name) each client address was sent to.
    pinned: Mutex<HashMap<IpAddr, String>>,
    turn: AtomicUsize,
}

impl Route {
    /// The ready endpoints, sorted by Pod name: (Pod name, address).
    async fn endpoints(&self) -> Vec<(String, SocketAddr)> {
        let selector = self
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await else {
            return Vec::new();
        };
        let mut endpoints: Vec<(String, SocketAddr)> = list
            .items
            .iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none() && is_ready(pod))
            .filter_map(|pod| {
                let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
                let port = match &self.target {
                    IntOrString::Int(port) => u16::try_from(*port).ok()?,
                    IntOrString::String(name) => pod
                        .spec
                        .as_ref()?
                        .containers
                        .iter()
                        .flat_map(|c| c.ports.as_deref().unwrap_or_default())
                        .find(|p| p.name.as_deref() == Some(name.as_str()))
                        .and_then(|p| u16::try_from(p.container_port).ok())?,
                };
                Some((pod.name_any(), SocketAddr::new(ip, port)))
            })
            .collect();
        endpoints.sort();
        endpoints
    }

    /// The endpoint for a connection from `client`.
    async fn pick(&self, client: IpAddr) -> Option<SocketAddr> {
        let endpoints = self.endpoints().await;
        if endpoints.is_empty() {
            return None;
        }
        if self.affinity {
            let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(pod) = pinned.get(&client)
                && let Some((_, addr)) = endpoints.iter().find(|(name, _)| name == pod)
            {
                return Some(*addr);
            }
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            let (pod, addr) = endpoints[turn % endpoints.len()].clone();
            pinned.insert(client, pod);
            return Some(addr);
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        Some(endpoints[turn % endpoints.len()].1)
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

async fn accept(listener: TcpListener, route: Arc<Route>) {
    loop {
        let Ok((mut inbound, peer)) = listener.accept().await else {
            continue;
        };
        let route = route.clone();
        tokio::spawn(async move {
            let Some(endpoint) = route.pick(peer.ip()).await else {
                tracing::debug!(service = %route.service, "no ready endpoint; connection closed");
                return;
            };
            let Ok(mut outbound) = TcpStream::connect(endpoint).await else {
                return; // Closed, as kube-proxy's rules reject an endpoint that went away.
            };
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}
