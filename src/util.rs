//! Small helpers several modules share: cutting text to a byte budget, locking a mutex.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// `s` cut to at most `max` bytes on a character boundary, ending with `marker` when cut.
pub(crate) fn cut(s: &str, max: usize, marker: &str) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(marker.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &s[..end])
}

/// Locks `mutex`. A poisoned lock only means another thread panicked while holding it; the data
/// (maps and counters) stays usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("short", 10, "…"), "short");
        let s = "é".repeat(400);
        let c = cut(&s, 512, "…");
        assert!(c.len() <= 512 && c.ends_with('…'));
        assert_eq!(cut("abcdef", 5, "..."), "ab...");
    }
}
