//! One log line for each storage request that failed and is about to be retried, as it happens:
//! which request, which attempt of how many, what failed, and how long at most until the next
//! attempt. Without it, a storage outage shows as seconds of `progress 0` and then one error.
//!
//! An AWS SDK interceptor ([`Intercept::read_after_attempt`]) sees every attempt's outcome. It
//! asks the client's own retry classifiers, as the SDK's standard retry strategy does next,
//! whether the failure is one to retry; the last attempt and failures that are not retried
//! (a refused signature, a missing object) are left to the caller, which reports them. The SDK's
//! strategy waits a random time up to `initial_backoff × 2^(attempt-1)` (capped at
//! `max_backoff`), or what the server asked for: the line gives that bound, since the random
//! draw itself is not visible outside the strategy.

use std::time::Duration;

use aws_sdk_s3::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_s3::config::retry::{ClassifyRetry, RetryAction, RetryConfig};
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::retries::classifiers::RetryReason;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

use crate::storage::error_chain;

/// Logs each retry of a storage request; see the [module documentation](self).
#[derive(Debug, Clone, Copy)]
pub struct LogRetries;

/// `METHOD /path` of the attempt being made: the request itself is gone once sent.
#[derive(Debug, Clone)]
struct Target(String);

impl Storable for Target {
    type Storer = StoreReplace<Self>;
}

impl Intercept for LogRetries {
    fn name(&self) -> &'static str {
        "LogRetries"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let request = context.request();
        let uri = request.uri();
        // The path names the bucket and key; the query (upload ids, part numbers) is noise.
        let path = uri.split('?').next().unwrap_or(uri);
        let path = path
            .find("://")
            .and_then(|scheme| {
                path[scheme + 3..]
                    .find('/')
                    .map(|p| &path[scheme + 3 + p..])
            })
            .unwrap_or(path);
        cfg.interceptor_state()
            .store_put(Target(format!("{} {path}", request.method())));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let Some(Err(error)) = context.output_or_error() else {
            return Ok(());
        };
        let attempt = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        let Some(retry) = cfg.load::<RetryConfig>() else {
            return Ok(());
        };
        if attempt >= retry.max_attempts() {
            return Ok(());
        }
        let mut action = RetryAction::NoActionIndicated;
        for classifier in runtime_components.retry_classifiers() {
            let next = classifier.classify_retry_v2(context.inner(), &action);
            if next == RetryAction::NoActionIndicated {
                continue;
            }
            action = next;
            if action == RetryAction::RetryForbidden {
                break;
            }
        }
        let RetryAction::RetryIndicated(RetryReason::RetryableError { retry_after, .. }) = action
        else {
            return Ok(());
        };
        let wait = retry_after.map_or_else(
            || next_wait_bound(retry.initial_backoff(), retry.max_backoff(), attempt),
            |asked| asked.min(retry.max_backoff()),
        );
        let operation = cfg.load::<Metadata>().map_or("request", |m| m.name());
        let target = cfg.load::<Target>().map(|t| t.0.as_str());
        let status = context.response().map(|r| r.status().as_u16());
        tracing::warn!(
            operation,
            request = target.unwrap_or(""),
            status,
            attempt,
            max_attempts = retry.max_attempts(),
            next_wait_secs_at_most = wait.as_secs_f64(),
            error = %error_chain(error),
            "storage request failed, retrying"
        );
        Ok(())
    }
}

/// The longest the SDK's standard strategy waits after failed attempt `attempt` (from 1): the
/// exponential backoff it draws a random fraction of.
pub fn next_wait_bound(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    initial.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_the_maximum() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(20));
        let waits: Vec<u64> = (1..=7)
            .map(|attempt| next_wait_bound(initial, max, attempt).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 20, 20]);
        assert_eq!(next_wait_bound(initial, max, 100), max);
    }
}
