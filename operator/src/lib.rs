//! The Mixdown operator: reconciles each RecordingJob into a Kubernetes Job that runs the worker,
//! and tells the RecordingJob's story in its status, conditions and Events.
//!
//! Pure parts (unit-tested from inline YAML and tables): [`job::build_job`],
//! [`status::derive_status`], [`slots`] (the concurrency cap), [`uploads`], [`retry`] and
//! [`plan`] (the steps, Events and requeues of a reconcile). The [`controller`] only fetches,
//! calls them and applies.
#![forbid(unsafe_code)]

pub mod attempts;
pub mod config;
pub mod controller;
pub mod error;
pub mod events;
pub mod http;
pub mod job;
pub mod leader;
pub mod metrics;
pub mod plan;
pub mod retry;
pub mod runtime;
pub mod slots;
pub mod status;
pub mod telemetry;
pub mod uploads;

#[cfg(test)]
mod testing;

pub use config::{Args, Config};
pub use error::{Error, Result};
