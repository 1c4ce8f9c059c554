//! Processing time: the wall clock as operators see it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static LATEST: AtomicI64 = AtomicI64::new(i64::MIN);

/// Milliseconds since the Unix epoch, never going back within the process
/// (a wall clock stepped backwards reads as standing still), so that
/// processing-time windows never see time regress.
pub fn processing_time_ms() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    LATEST.fetch_max(now, Ordering::Relaxed).max(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back() {
        let a = processing_time_ms();
        let b = processing_time_ms();
        assert!(b >= a);
        assert!(a > 1_600_000_000_000, "{a} is not a current epoch time");
    }
}
