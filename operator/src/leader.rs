//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one reconciles at a time.
//!
//! The algorithm is the one Kubernetes' own controllers use:
//! - a candidate takes the Lease when it is free, released, or has not been renewed for
//!   `lease_duration` *as observed on the candidate's own clock* (we remember when we last saw the
//!   record change rather than trusting the holder's `renewTime`, so clock skew between nodes
//!   cannot hand the Lease to two replicas);
//! - every write is a replace carrying the `resourceVersion` we read, so two candidates racing for
//!   the same free Lease cannot both win: the API server rejects the second with 409 Conflict;
//! - the leader renews every `renew_interval`, each call bounded by what is left of the
//!   `renew_deadline`; when no renewal succeeded within `renew_deadline` of the start of the last
//!   one that did (or it finds someone else holding the Lease) it reports the Lease lost, and the
//!   operator exits. The deadline is shorter than `lease_duration` and is counted from when the
//!   last successful renewal was *sent*, before the server wrote it, so the leader stops before
//!   any standby, which counts `lease_duration` from when it *saw* that write, may take over: a
//!   hung request (a stalled connection, an overloaded server) never makes two leaders;
//! - on SIGTERM the leader releases the Lease (empty holder, 1 s duration) so a standby takes over
//!   at once instead of waiting for expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the Lease lives and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica: the Pod name in a cluster.
    pub identity: String,
    /// How long a Lease stays valid without renewal; the longest a dead leader blocks a standby.
    pub lease_duration: Duration,
    /// How often the leader renews, and how often a standby retries.
    pub renew_interval: Duration,
    /// How long the leader keeps leading without a successful renewal; shorter than
    /// `lease_duration`, longer than `renew_interval`. See the [module documentation](self).
    pub renew_deadline: Duration,
}

impl LeaseConfig {
    /// Checks `renew_interval < renew_deadline < lease_duration`: otherwise a leader could still
    /// lead when a standby takes over, or give up between two renewals.
    pub fn validate(&self) -> Result<(), String> {
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the lease renew deadline ({:?}) must be shorter than the lease duration ({:?}), \
                 or a leader that cannot renew would still lead when a standby takes over",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.renew_interval >= self.renew_deadline {
            return Err(format!(
                "the lease renew interval ({:?}) must be shorter than the renew deadline ({:?}), \
                 or one slow renewal would end the leadership",
                self.renew_interval, self.renew_deadline
            ));
        }
        Ok(())
    }
}

/// Errors of leader election. Only API failures: losing the Lease is reported by
/// [`Leadership::lost`], not as an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading or writing Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Held while this replica is the leader. Renewal runs in the background until it is dropped or
/// released.
pub struct Leadership {
    lost: watch::Receiver<bool>,
    renewer: JoinHandle<()>,
    api: Api<Lease>,
    config: Arc<LeaseConfig>,
}

impl Leadership {
    /// Resolves when this replica no longer holds the Lease (taken over, or not renewable for a
    /// whole lease duration). The caller must stop reconciling at once.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the renewer ended, which only happens once the Lease is lost.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Gives the Lease up so a standby replica takes over without waiting for it to expire.
    pub async fn release(self) {
        self.renewer.abort();
        match self.api.get(&self.config.name).await {
            Ok(mut lease) if holder(&lease) == Some(self.config.identity.as_str()) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(now());
                match self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => tracing::info!(lease = %self.config.name, "released the leader lease"),
                    Err(error) => {
                        tracing::warn!(%error, "could not release the leader lease; it will expire")
                    }
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not read the leader lease to release it"),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Waits until this replica holds the Lease, then keeps renewing it in the background.
pub async fn acquire(client: Client, config: &LeaseConfig) -> Result<Leadership, Error> {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let config = Arc::new(config.clone());
    let mut observed = Observed::default();
    let acquired_at = loop {
        let started = Instant::now();
        // A standby's attempt is bounded too: an answer that comes later than the deadline could
        // be a write the server made long ago.
        match tokio::time::timeout(
            config.renew_deadline,
            try_acquire_or_renew(&api, &config, &mut observed),
        )
        .await
        {
            Ok(Ok(true)) => break started,
            Ok(Ok(false)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "leader election attempt failed; retrying"),
            Err(_) => tracing::warn!(
                deadline = ?config.renew_deadline,
                "leader election attempt got no answer within the renew deadline; retrying"
            ),
        }
        tokio::time::sleep(config.renew_interval).await;
    };
    tracing::info!(lease = %config.name, identity = %config.identity, "became the leader");

    let (lost_tx, lost) = watch::channel(false);
    let renewer = tokio::spawn(renew(
        api.clone(),
        config.clone(),
        observed,
        acquired_at,
        lost_tx,
    ));
    Ok(Leadership {
        lost,
        renewer,
        api,
        config,
    })
}

/// Keeps the Lease ours; flags `lost` and ends when that is no longer possible. `renewed` is
/// when the last successful write was sent.
async fn renew(
    api: Api<Lease>,
    config: Arc<LeaseConfig>,
    mut observed: Observed,
    mut renewed: Instant,
    lost: watch::Sender<bool>,
) {
    loop {
        let deadline = renewed + config.renew_deadline;
        let next = (Instant::now() + config.renew_interval).min(deadline);
        tokio::time::sleep_until(next.into()).await;
        let started = Instant::now();
        let attempt = tokio::time::timeout_at(
            deadline.into(),
            try_acquire_or_renew(&api, &config, &mut observed),
        );
        match attempt.await {
            Ok(Ok(true)) => renewed = started,
            Ok(Ok(false)) => {
                tracing::error!(lease = %config.name, holder = ?observed.holder, "another replica took the leader lease");
                break;
            }
            Ok(Err(error)) if Instant::now() < deadline => {
                tracing::warn!(%error, "renewing the leader lease failed; retrying");
            }
            Ok(Err(error)) => {
                tracing::error!(%error, deadline = ?config.renew_deadline, "could not renew the leader lease within the renew deadline");
                break;
            }
            Err(_) => {
                tracing::error!(
                    deadline = ?config.renew_deadline,
                    "could not renew the leader lease within the renew deadline: the API server did not answer in time"
                );
                break;
            }
        }
    }
    let _ = lost.send(true);
}

/// What this replica last saw of the Lease, and when (on its own clock).
#[derive(Default)]
struct Observed {
    resource_version: Option<String>,
    holder: Option<String>,
    at: Option<Instant>,
}

/// One round of the election. `Ok(true)`: we hold the Lease now. `Ok(false)`: someone else does.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Observed,
) -> Result<bool, Error> {
    let api_error = |source| Error::Api {
        namespace: config.namespace.clone(),
        name: config.name.clone(),
        source,
    };
    let duration_seconds =
        i32::try_from(config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);

    let Some(mut lease) = api.get_opt(&config.name).await.map_err(api_error)? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(created) => {
                observed.record(&created);
                Ok(true)
            }
            // Another candidate created it first: it holds the Lease.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(api_error(error)),
        };
    };

    if observed.resource_version != lease.metadata.resource_version {
        observed.record(&lease);
    }
    let holder = holder(&lease).map(str::to_owned);
    let ours = holder.as_deref() == Some(config.identity.as_str());
    let held_duration = lease
        .spec
        .as_ref()
        .and_then(|spec| spec.lease_duration_seconds)
        .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
        .unwrap_or(config.lease_duration);
    let expired = observed.at.is_some_and(|at| at.elapsed() > held_duration);
    if !ours && holder.is_some() && !expired {
        return Ok(false);
    }

    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if !ours {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.holder_identity = Some(config.identity.clone());
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(now());
    // The replace carries the resourceVersion we read: if anyone wrote in between, 409 and we
    // lose this round instead of overwriting their claim.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(written) => {
            observed.record(&written);
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(api_error(error)),
    }
}

impl Observed {
    fn record(&mut self, lease: &Lease) {
        self.resource_version = lease.metadata.resource_version.clone();
        self.holder = holder(lease).map(str::to_owned);
        self.at = Some(Instant::now());
    }
}

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .filter(|holder| !holder.is_empty())
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}
