//! Small helpers several modules share: cutting and cleaning text, locking a mutex.

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

/// `text` on one line: runs of white space (newlines included) become one space.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error and its causes on one line, joined with ": " (a cause whose text the line already
/// holds is left out), never a Debug dump: what the command line and status messages show.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = one_line(&error.to_string());
    let mut source = error.source();
    while let Some(cause) = source {
        let text = one_line(&cause.to_string());
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// `text` without terminal control sequences and control characters: ANSI escape sequences (CSI
/// `ESC [ … final`, OSC `ESC ] … BEL|ESC \`, and other two-byte `ESC x`) are removed, and so is
/// every other C0 or C1 control character except newline and tab. Build output (a user's
/// Dockerfile prints what it likes) goes through this before it reaches a status, a condition or
/// an event, so it cannot rewrite a terminal that displays them.
pub fn clean_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte in @..~
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC, DCS, SOS, PM, APC: up to BEL or ST (ESC \)
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
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
    fn clean_text_drops_escapes_and_controls_but_keeps_newlines_and_tabs() {
        let dirty = "\u{1b}[31mred\u{1b}[0m\tok\r\n\u{7}bell\u{1b}]0;title\u{7}after\u{1b}]8;;http://x\u{1b}\\link\u{9b}c1\u{0}nul\u{1b}Mesc";
        assert_eq!(clean_text(dirty), "red\tok\nbellafterlinkc1nulesc");
        assert_eq!(clean_text("plain ünïcode ✓"), "plain ünïcode ✓");
        assert_eq!(clean_text("\u{1b}[12;3"), "", "an unterminated sequence is dropped");
    }

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("short", 10, "…"), "short");
        let s = "é".repeat(400);
        let c = cut(&s, 512, "…");
        assert!(c.len() <= 512 && c.ends_with('…'));
        assert_eq!(cut("abcdef", 5, "..."), "ab...");
    }
}
