//! Bounded exponential backoff with jitter for 5xx, 429 and connection failures.

use std::time::Duration;

/// How often and how long the client retries one request before giving up with
/// [`RegistryError::Unavailable`](super::RegistryError::Unavailable).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (≥ 1).
    pub attempts: u32,
    /// The delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
    /// No single delay is longer than this, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 250 ms → 500 ms → 1 s (each with jitter): at most ≈ 1.75 s of waiting.
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based), or `None` when no attempt is left.
    /// `jitter` in `[0, 1)` picks a point in the upper half of the exponential step ("equal
    /// jitter"), so concurrent clients spread out but never retry at once. A `Retry-After` from
    /// the server is honoured up to `max_delay`.
    pub fn delay(&self, attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Option<Duration> {
        if attempt >= self.attempts.max(1) {
            return None;
        }
        let jittered = crate::backoff::equal_jitter(self.base_delay, self.max_delay, attempt, jitter);
        Some(match retry_after {
            Some(after) => after.min(self.max_delay).max(jittered),
            None => jittered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_jittered_and_bounded() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, 0.0, None), Some(Duration::from_millis(125)));
        assert_eq!(p.delay(1, 1.0, None), Some(Duration::from_millis(250)));
        assert_eq!(p.delay(2, 1.0, None), Some(Duration::from_millis(500)));
        assert_eq!(p.delay(3, 0.5, None), Some(Duration::from_millis(750)));
        assert_eq!(p.delay(4, 0.5, None), None, "4 attempts in all");
        assert_eq!(
            p.delay(1, 0.0, Some(Duration::from_secs(60))),
            Some(Duration::from_secs(2)),
            "Retry-After is capped"
        );
        let one_attempt = RetryPolicy { attempts: 1, ..p };
        assert_eq!(one_attempt.delay(1, 0.5, None), None);
        let big = RetryPolicy { attempts: 100, ..p };
        assert_eq!(big.delay(99, 1.0, None), Some(Duration::from_secs(2)));
    }
}
