//! Mixdown's test kit: the real parts that integration tests run against.
//!
//! - [`cluster`]: a local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)
//!   started once per test binary, with a fresh namespace per test.
//! - [`pods`]: a pod runner that plays the kubelet, so the real Job controller retries, enforces
//!   deadlines and garbage-collects.
//! - [`bins`]: Mixdown's own binaries, built with cargo, for tests that run them as processes.
//! - [`s3`]: an embedded S3-compatible server that checks signatures like R2 does.
//! - [`link`]: a network link of limited bandwidth in front of it, for benchmarks.
//! - [`gate`]: a proxy that freezes or cuts the traffic to a server, for network faults.
//! - [`helm`]: the real Helm CLI, for the chart's tests.
//! - [`stack`]: all of it together with the real worker and operator, for end-to-end tests.

mod background;
pub mod bins;
pub mod cluster;
pub mod gate;
pub mod helm;
pub mod link;
pub mod pods;
pub mod s3;
pub mod stack;
