//! Retrying what a sink's receiver refused for now: exponential backoff
//! with jitter, bounded in attempts and in the longest wait.

use std::time::Duration;

use serde::Deserialize;
use streamflow_dsl::HumanDuration;

/// Retries of a failed delivery (`retry: {max_attempts, initial_backoff,
/// max_backoff}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled each time, with jitter.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: HumanDuration,
    /// The longest wait between attempts (a receiver's `Retry-After`
    /// included).
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl RetryConfig {
    /// The waits between the attempts of one delivery.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff {
            next: self.initial_backoff.0,
            max: self.max_backoff.0,
        }
    }
}

fn default_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
fn default_max_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// Successive waits: the initial backoff doubled each time up to the
/// maximum, each scaled by a random factor in [0.5, 1.5).
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// The wait before the next attempt.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = jitter(self.next).min(self.max);
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

/// `d` scaled by a random factor in [0.5, 1.5).
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(d.as_nanos() as u64);
    let unit = (h.finish() % 1000) as f64 / 1000.0;
    d.mul_f64(0.5 + unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_one_and_a_half() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(500) && j < Duration::from_millis(1500));
        }
    }

    #[test]
    fn waits_double_up_to_the_maximum() {
        let mut backoff = RetryConfig {
            max_attempts: 10,
            initial_backoff: HumanDuration(Duration::from_millis(100)),
            max_backoff: HumanDuration(Duration::from_millis(300)),
        }
        .backoff();
        let first = backoff.next_wait();
        assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(150));
        let waits: Vec<Duration> = (0..5).map(|_| backoff.next_wait()).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(300)));
        assert!(waits[2..].iter().all(|w| *w >= Duration::from_millis(150)));
    }
}
