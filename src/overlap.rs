//! Overlap trim: drop what a continuation repeats of the prefix, fix the seam.
//!
//! # The rule
//!
//! Let *P* be the text the client already has and *C* the head of the
//! continuation. Leading whitespace of *C* is set aside; call the rest *B*.
//! A **candidate** is a suffix of *P* (within its last [`MAX_OVERLAP`] bytes)
//! that starts at a word start (the start of *P* or just after whitespace)
//! and is at least [`MIN_OVERLAP`] bytes long. The continuation's head is held
//! back until every candidate is either confirmed (*B* starts with it) or
//! ruled out. Then:
//!
//! * if some candidate is confirmed, the longest one is the repeat: it is
//!   dropped together with the set-aside whitespace;
//! * otherwise nothing is dropped, except that when *P* ends with whitespace
//!   the set-aside whitespace is dropped too, so the seam never doubles it.
//!
//! Echoes shorter than [`MIN_OVERLAP`] (`"no"` after `"… said no"`) are kept:
//! they are as likely to be genuine text, and doubling two letters is a
//! smaller harm than losing them. Comparison is on bytes; candidates start at
//! character boundaries, so a cut never splits a multi-byte character.

/// The shortest repeat that is trimmed.
pub const MIN_OVERLAP: usize = 4;
/// How far back into the prefix a repeat may reach.
pub const MAX_OVERLAP: usize = 256;

/// Streams one continuation through the overlap rule.
#[derive(Debug, Clone)]
pub struct OverlapTrim {
    /// The prefix's last bytes: where candidates live.
    tail: String,
    /// Whether `tail` is the whole prefix (so its start is a word start).
    whole: bool,
    /// The continuation's head, held back until the rule can decide.
    held: String,
    /// Once decided, everything passes through.
    decided: bool,
}

impl OverlapTrim {
    /// A trim for a continuation of `prefix`.
    pub fn new(prefix: &str) -> Self {
        let mut from = prefix.len().saturating_sub(MAX_OVERLAP);
        while !prefix.is_char_boundary(from) {
            from += 1;
        }
        OverlapTrim {
            tail: prefix[from..].to_string(),
            whole: from == 0,
            held: String::new(),
            decided: prefix.is_empty(),
        }
    }

    /// Feeds one continuation delta; returns the text that may go to the client now.
    pub fn push(&mut self, delta: String) -> String {
        // Once decided, a delta passes through as it is: no copy on the per-token path.
        if self.decided {
            return delta;
        }
        self.held.push_str(&delta);
        match self.decide(false) {
            Some(drop) => self.release(drop),
            None => String::new(),
        }
    }

    /// The continuation ended: decides with what was seen and releases the rest.
    pub fn finish(&mut self) -> String {
        if self.decided {
            return String::new();
        }
        let drop = self.decide(true).unwrap_or(0);
        self.release(drop)
    }

    /// Whether text is still held back.
    pub fn holding(&self) -> bool {
        !self.decided && !self.held.is_empty()
    }

    fn release(&mut self, drop: usize) -> String {
        self.decided = true;
        let out = self.held.split_off(drop);
        self.held = String::new();
        out
    }

    /// How many bytes of the held text to drop, or `None` to wait for more.
    fn decide(&self, complete: bool) -> Option<usize> {
        let body = self.held.trim_start();
        let lead = self.held.len() - body.len();
        if body.is_empty() && !complete {
            return None;
        }
        let tail = self.tail.as_bytes();
        let mut best = None;
        for s in (0..tail.len().saturating_sub(MIN_OVERLAP - 1)).rev() {
            let word_start = if s == 0 {
                self.whole
            } else {
                tail[s - 1].is_ascii_whitespace() && !tail[s].is_ascii_whitespace()
            };
            if !word_start {
                continue;
            }
            let candidate = &self.tail[s..];
            if body.starts_with(candidate) {
                best = Some(candidate.len());
            } else if !complete && candidate.starts_with(body) {
                return None; // could still be confirmed
            }
        }
        Some(match best {
            Some(k) => lead + k,
            None if self.tail.ends_with(|c: char| c.is_whitespace()) => lead,
            None => 0,
        })
    }
}

/// Trims a whole continuation at once (the streaming rule applied to one delta).
pub fn trim(prefix: &str, continuation: &str) -> String {
    let mut t = OverlapTrim::new(prefix);
    let mut out = t.push(continuation.to_string());
    out.push_str(&t.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_words_are_dropped() {
        assert_eq!(trim("the quick brown", "quick brown fox"), " fox");
        assert_eq!(trim("the quick brown ", "quick brown fox"), "fox");
        assert_eq!(trim("the quick brown", " brown fox"), " fox");
    }

    #[test]
    fn a_repeated_partial_word_is_dropped() {
        assert_eq!(trim("the quick bro", "quick brown fox"), "wn fox");
        assert_eq!(trim("un café crè", "café crème"), "me");
    }

    #[test]
    fn a_genuine_continuation_that_starts_like_the_tail_is_kept() {
        // "no" echoes the prefix's last word but is too short to be a repeat.
        assert_eq!(trim("and I said no", " no, never"), " no, never");
        // Not at a word start of the prefix: "own" is inside "brown".
        assert_eq!(trim("the brown", "owner of it"), "owner of it");
    }

    #[test]
    fn the_seam_never_doubles_whitespace() {
        assert_eq!(trim("hello ", " world"), "world");
        assert_eq!(trim("hello", " world"), " world");
        assert_eq!(trim("hello ", "world"), "world");
    }

    #[test]
    fn the_head_is_held_until_the_rule_can_decide() {
        let mut t = OverlapTrim::new("one two three");
        assert_eq!(t.push("two".into()), "");
        assert_eq!(t.push(" thr".into()), "");
        assert!(t.holding());
        assert_eq!(t.push("ee four".into()), " four");
        assert_eq!(t.push(" five".into()), " five");
        assert_eq!(t.finish(), "");
        // A head that cannot be a repeat is released at once.
        let mut t = OverlapTrim::new("one two three");
        assert_eq!(t.push("zzz".into()), "zzz");
    }

    #[test]
    fn an_ending_continuation_releases_what_was_held() {
        let mut t = OverlapTrim::new("one two three");
        assert_eq!(t.push("thr".into()), "");
        assert_eq!(t.finish(), "thr");
    }
}
