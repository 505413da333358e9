//! Which Kubernetes the control plane runs, and what follows from it for the flags it is started
//! with and the behaviour tests may expect.
//!
//! The test kit runs two versions (`tests/envtest/setup.sh`, `KUBE_VERSION`): 1.34, what clusters
//! run today, and 1.20, the oldest server Mixdown supports, where the operator takes its fallbacks.
//! Code that differs by version asks one of the questions below instead of comparing numbers.

use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, anyhow};

/// A Kubernetes release, as `kube-apiserver --version` (`Kubernetes v1.34.4`) or the server's
/// `/version` (`gitVersion`) names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KubeVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        KubeVersion {
            major,
            minor,
            patch,
        }
    }

    /// Reads `v1.34.4` (or `1.34.4`, or `v1.34.4-rc.0+abc`) anywhere in `text`: the first word
    /// that is one.
    pub fn parse(text: &str) -> Option<Self> {
        text.split_whitespace().find_map(|word| {
            let word = word.trim_start_matches('v');
            let core = word.split(['-', '+']).next()?;
            let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
            let version = KubeVersion::new(parts.next()??, parts.next()??, parts.next()??);
            parts.next().is_none().then_some(version)
        })
    }

    /// What `<assets>/kube-apiserver --version` says.
    pub(crate) fn of_binary(kube_apiserver: &Path) -> Result<Self> {
        let output = Command::new(kube_apiserver)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", kube_apiserver.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        // A build without the version ldflags says v0.0.0-master.
        KubeVersion::parse(&text).filter(|v| v.major > 0).ok_or_else(|| {
            anyhow!(
                "{} --version printed {:?}, not a Kubernetes version (v1.N.M); was it built with \
                 the version ldflags? tests/envtest/setup.sh builds it so",
                kube_apiserver.display(),
                text.trim()
            )
        })
    }

    fn at_least(self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// CRD validation rules (`x-kubernetes-validations`, CEL) are enforced: beta and on by
    /// default in 1.25, GA in 1.29. Older servers drop the field from the CRD and accept
    /// anything its OpenAPI schema accepts.
    pub fn enforces_validation_rules(self) -> bool {
        self.at_least(1, 25)
    }

    /// Jobs have `spec.podFailurePolicy` (beta and on by default in 1.26, GA in 1.31): a worker's
    /// exit code can fail the Job at once, without a replacement Pod. Older servers drop the
    /// field, and the Job controller retries every failure up to `backoffLimit`.
    pub fn has_pod_failure_policy(self) -> bool {
        self.at_least(1, 26)
    }

    /// The server publishes OpenAPI v3 (beta and on by default in 1.24, GA in 1.27), which
    /// `kubectl explain` prefers. In the v2 document a CRD's `nullable` objects lose their
    /// fields (v2 has no `nullable`), so there `kubectl explain` lists none of them.
    pub fn publishes_openapi_v3(self) -> bool {
        self.at_least(1, 24)
    }

    /// Every ServiceAccount gets a long-lived token Secret from the controller manager, listed
    /// in its `secrets`: true before 1.24. Since then Pods get short-lived tokens through the
    /// TokenRequest API only.
    pub fn creates_token_secrets(self) -> bool {
        !self.at_least(1, 24)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The command-line flags that differ between the versions the test kit runs.
pub(super) struct Flags {
    /// kube-controller-manager: the controllers to run. Everything but node IPAM (no node CIDRs
    /// to hand out) and node lifecycle (the pod runner sends no heartbeats: its Nodes would go
    /// NotReady and their Pods be evicted). 1.29 renamed the controllers
    /// (`node-ipam-controller`; the old names are aliases).
    pub controllers: &'static str,
    /// kube-controller-manager: `--port=0` turns off its insecure port, which 1.24 removed
    /// together with the flag.
    pub insecure_port_off: Option<&'static str>,
}

impl Flags {
    pub(super) fn for_version(version: KubeVersion) -> Self {
        Flags {
            controllers: if version.at_least(1, 29) {
                "*,-node-ipam-controller,-node-lifecycle-controller"
            } else {
                "*,-nodeipam,-nodelifecycle"
            },
            insecure_port_off: (!version.at_least(1, 24)).then_some("--port=0"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KubeVersion;

    #[test]
    fn versions_are_read_from_what_the_binaries_and_the_server_say() {
        let v134 = KubeVersion::new(1, 34, 4);
        assert_eq!(KubeVersion::parse("Kubernetes v1.34.4"), Some(v134));
        assert_eq!(KubeVersion::parse("v1.34.4"), Some(v134));
        assert_eq!(
            KubeVersion::parse("Kubernetes v1.34.4-rc.1+abc"),
            Some(v134)
        );
        assert_eq!(
            KubeVersion::parse("Kubernetes v1.20.2\n"),
            Some(KubeVersion::new(1, 20, 2))
        );
        assert_eq!(
            KubeVersion::parse("Kubernetes v0.0.0-master+$Format:%H$"),
            Some(KubeVersion::new(0, 0, 0))
        );
        assert_eq!(KubeVersion::parse("etcd Version: 3.6"), None);
        assert_eq!(KubeVersion::parse(""), None);
    }

    #[test]
    fn what_each_version_does() {
        let old = KubeVersion::new(1, 20, 2);
        let current = KubeVersion::new(1, 34, 4);
        assert!(!old.enforces_validation_rules() && current.enforces_validation_rules());
        assert!(!old.has_pod_failure_policy() && current.has_pod_failure_policy());
        assert!(old.creates_token_secrets() && !current.creates_token_secrets());
        assert!(!old.publishes_openapi_v3() && current.publishes_openapi_v3());
        assert!(KubeVersion::new(1, 25, 0).enforces_validation_rules());
        assert!(!KubeVersion::new(1, 25, 9).has_pod_failure_policy());
        assert!(old < current);
    }
}
