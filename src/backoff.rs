//! Retrying a call to a service until it answers, for as long as it takes:
//! a worker blocked here holds its epoch back, and the source stalls behind
//! it, so an outage costs time and never data.

use std::fmt::Display;
use std::time::Duration;

/// Longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs `attempt` until it succeeds, doubling the pause between failures up to
/// [`MAX_BACKOFF`] and logging each with `service` and `hint`.
pub fn retry<T, E: Display>(service: &str, what: &str, hint: &str, mut attempt: impl FnMut() -> Result<T, E>) -> T {
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        match attempt() {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!(service, what, failures, "answered after retries");
                }
                return value;
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(service, what, failures, %error, retry_in_ms = backoff.as_millis() as u64,
                    "failed; retrying{hint}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
