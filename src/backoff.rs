//! Exponential backoff with "equal jitter", shared by every retry loop: registry requests, the
//! Batch job poller and failed reconciles.

use std::time::Duration;

/// The delay before retry `n` (1-based): d = base·2^(n-1), at most `max`, then a point in
/// [d/2, d] picked by `jitter` in [0, 1], so concurrent clients spread out but never retry at once.
pub fn equal_jitter(base: Duration, max: Duration, n: u32, jitter: f64) -> Duration {
    let exponent = n.saturating_sub(1).min(16);
    let delay = base.saturating_mul(1 << exponent).min(max);
    let half = delay / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_the_upper_half() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(equal_jitter(base, max, 1, 1.0), Duration::from_secs(1));
        assert_eq!(equal_jitter(base, max, 1, 0.0), Duration::from_millis(500));
        assert_eq!(equal_jitter(base, max, 3, 1.0), Duration::from_secs(4));
        assert_eq!(equal_jitter(base, max, 3, 0.5), Duration::from_secs(3));
        assert_eq!(equal_jitter(base, max, 30, 1.0), Duration::from_secs(60));
        assert_eq!(
            equal_jitter(base, max, u32::MAX, 2.0),
            Duration::from_secs(60),
            "jitter clamped"
        );
    }
}
