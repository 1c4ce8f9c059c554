//! Connecting to an external server, with retries and backoff.

use std::future::Future;
use std::time::Duration;

use streamflow_core::{Error, Result};

/// Attempts before giving up: about 10 s in all with the waits between.
const ATTEMPTS: u32 = 6;
/// Bound on one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls `connect` until it succeeds, each attempt bounded by 5 s, waiting
/// 0.1 s, 0.2 s, 0.4 s … (at most 2 s) between attempts, each failure
/// logged; the last becomes `cannot connect to <system> at <address>: why`.
pub(crate) async fn connect_with_backoff<T, E, F>(
    system: &str,
    address: &str,
    mut connect: impl FnMut() -> F,
) -> Result<T>
where
    E: std::fmt::Display,
    F: Future<Output = std::result::Result<T, E>>,
{
    let mut wait = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        let why = match tokio::time::timeout(ATTEMPT_TIMEOUT, connect()).await {
            Ok(Ok(connected)) => return Ok(connected),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        if attempt >= ATTEMPTS {
            return Err(Error::Other(format!(
                "cannot connect to {system} at {address}: {why}"
            )));
        }
        tracing::warn!(system, address, attempt, error = %why, "unreachable, retrying");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
        attempt += 1;
    }
}
