//! Overlap trim: drop what a continuation echoes of the prefix, fix the seam.
//!
//! Real text repeats itself (`violet violet`, a list's repeated line), so a
//! continuation that starts like the prefix's tail is not, by that alone, an
//! echo. Text is removed only on evidence that it is one.
//!
//! # The rule
//!
//! Let *P* be the text the client already has and *C* the continuation.
//!
//! * **Seam.** If *P* ends with whitespace *W* and *C* starts with the same *W*,
//!   that *W* is set aside and dropped when it is the continuation giving back
//!   what the upstream never saw or a route's known echo: the upstream was sent
//!   *P* without *W* (**stripped**: Anthropic's native prefill), or the route
//!   echoes (`always`, or seen echoing). With `auto` and no such evidence only
//!   a *W* without a line break is dropped — a space said twice between words
//!   is not text, but a blank line after a line break is (`willow;\n` +
//!   `\n- falcon`), so it is kept; with `off` only a stripped *W* is dropped.
//!   Any other leading whitespace of *C* is text: an indentation after a line
//!   break is kept. Call the rest *B*.
//! * **Candidates.** A candidate *E* is the whole of *P*, or a suffix of *P*
//!   within its last [`MAX_OVERLAP`] bytes that starts at a word start (just
//!   after ASCII whitespace). *E* is **confirmed** when *B* starts with it.
//! * **Evidence.** A confirmed *E* is an echo, and dropped, only when one of
//!   these holds (with `overlap = "auto"`, the default):
//!   1. *E* is the whole prefix: a **restart**, whatever its length (`R` +
//!      `Réponse…`);
//!   2. *E* is at least [`MIN_OVERLAP`] bytes and **glued**: *P* ends inside
//!      a word and *B* goes on from a word start of *P* with no separator
//!      (`… nickel violet` + `violet raven`) — text does not repeat a word
//!      glued to itself;
//!   3. *E* is at least [`MIN_OVERLAP`] bytes, **several words**
//!      ([`ECHO_WORDS`] or more), and not a **line said again** (*E* spans a
//!      line break and its first line began as the cut's line did: a list
//!      item, a code line) — words said back to back mid-sentence are rare, a
//!      repeated line is not;
//!   4. *E* is at least [`MIN_OVERLAP`] bytes and this (route, model) has been
//!      **seen echoing** in this continuation mode: an echo proved by 1–3 is
//!      remembered for every later session.
//!
//!   Anything else is ambiguous and kept: one word repeated after a space
//!   (`… nickel violet ` + `violet raven`) or a repeated line, on a route
//!   never seen echoing. The longest confirmed echo is dropped with its *W*.
//!   `overlap = "always"` takes every confirmed *E* of [`MIN_OVERLAP`] bytes
//!   or more (or the whole prefix) as an echo; `overlap = "off"` never drops one.
//!
//! The continuation's head is held back only while a candidate that would be
//! an echo could still be confirmed, so an ambiguous repeat costs no delay.
//! Comparison is on bytes; candidates start at character boundaries, so a cut
//! never splits a multi-byte character.

use serde::{Deserialize, Serialize};

/// The shortest repeat that is trimmed, unless it is the whole prefix.
pub const MIN_OVERLAP: usize = 4;
/// How far back into the prefix a repeat may reach (a restart of the whole prefix reaches further).
pub const MAX_OVERLAP: usize = 256;
/// How many words (not making whole lines) make an echo unambiguous.
pub const ECHO_WORDS: usize = 2;

/// A route's overlap setting (`overlap` in its config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverlapMode {
    /// Drop a repeat only on evidence that it is an echo.
    #[default]
    Auto,
    /// Never drop a repeat: the route is known never to echo.
    Off,
    /// Drop every repeat of at least [`MIN_OVERLAP`] bytes: the route is known always to echo.
    Always,
}

impl OverlapMode {
    /// Lower-case name, as in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            OverlapMode::Auto => "auto",
            OverlapMode::Off => "off",
            OverlapMode::Always => "always",
        }
    }

    /// Whether this is the default, so recordings leave it out.
    pub fn is_auto(&self) -> bool {
        *self == OverlapMode::Auto
    }
}

/// What is known of a continuation before it starts, besides its prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The route's setting.
    pub setting: OverlapMode,
    /// This (route, model) has been seen echoing in this continuation mode.
    pub seen_echoing: bool,
    /// The upstream was sent the prefix without its trailing whitespace
    /// (Anthropic's native prefill): a continuation that starts with it gives it back.
    pub stripped: bool,
}

impl Evidence {
    /// Whether a continuation starting with the prefix's trailing whitespace
    /// `white` gives it back (dropped) rather than says it again (text).
    pub fn gives_back(&self, white: &str) -> bool {
        self.stripped
            || match self.setting {
                OverlapMode::Off => false,
                OverlapMode::Always => true,
                OverlapMode::Auto => self.seen_echoing || !white.contains(['\n', '\r']),
            }
    }
}

/// Why a dropped repeat was taken for an echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// It was proved by the continuation itself (rules 1–3): worth remembering.
    Proved,
    /// It was taken on what was known before (rule 4, or `always`).
    Known,
}

/// Streams one continuation through the overlap rule.
#[derive(Debug, Clone)]
pub struct OverlapTrim {
    /// The whole prefix: a restart is compared against all of it.
    prefix: String,
    /// Offsets into `prefix` of the tail candidates that would be echoes, shortest first.
    echoes: Vec<(usize, Proof)>,
    /// Whether a restart of the whole prefix would be an echo.
    restart: bool,
    /// How many bytes of the continuation are known to restart the prefix.
    verified: usize,
    /// The prefix's trailing whitespace, which the continuation may bring again.
    seam: usize,
    /// The continuation's head, held back until the rule can decide.
    held: String,
    /// Once decided, everything passes through.
    decided: bool,
    /// Set when an echo was dropped.
    dropped: Option<Proof>,
}

impl OverlapTrim {
    /// A trim for a continuation of `prefix`, with what is known of its route.
    pub fn new(prefix: &str, evidence: Evidence) -> Self {
        let white = &prefix[prefix.trim_end_matches(|c: char| c.is_ascii_whitespace()).len()..];
        // Whitespace that would be text if said again is no seam: nothing is set aside.
        let seam = if evidence.gives_back(white) { white.len() } else { 0 };
        OverlapTrim {
            prefix: prefix.to_string(),
            echoes: echo_candidates(prefix, evidence),
            restart: evidence.setting != OverlapMode::Off,
            verified: 0,
            seam,
            held: String::new(),
            decided: prefix.is_empty(),
            dropped: None,
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

    /// Whether an echo was dropped, and on what grounds.
    pub fn dropped(&self) -> Option<Proof> {
        self.dropped
    }

    fn release(&mut self, drop: usize) -> String {
        self.decided = true;
        let out = self.held.split_off(drop);
        self.held = String::new();
        out
    }

    /// How many bytes of the held text to drop, or `None` to wait for more.
    fn decide(&mut self, complete: bool) -> Option<usize> {
        let white = &self.prefix[self.prefix.len() - self.seam..];
        let lead = if !white.is_empty() && self.held.starts_with(white) {
            white.len()
        } else if !complete && white.starts_with(self.held.as_str()) {
            return None; // the seam's whitespace may still come
        } else {
            0
        };
        let body = &self.held[lead..];
        if body.is_empty() && !complete {
            return None;
        }
        let mut best = None;
        let mut wait = false;
        for &(s, proof) in &self.echoes {
            let candidate = &self.prefix[s..];
            if body.starts_with(candidate) {
                best = Some((candidate.len(), proof));
            } else if candidate.starts_with(body) {
                wait = true; // could still be confirmed
            }
        }
        // A restart: only the bytes not compared yet are, so a long one held long costs linear time.
        let n = body.len().min(self.prefix.len());
        if self.restart && body.as_bytes().get(self.verified..n) == self.prefix.as_bytes().get(self.verified..n) {
            self.verified = n;
            if n == self.prefix.len() {
                best = Some((n, Proof::Proved));
            } else {
                wait = true;
            }
        }
        if wait && !complete {
            return None;
        }
        self.dropped = best.map(|(_, proof)| proof);
        Some(lead + best.map_or(0, |(k, _)| k))
    }
}

/// The tail candidates of `prefix` that would be echoes if confirmed, shortest first.
fn echo_candidates(prefix: &str, evidence: Evidence) -> Vec<(usize, Proof)> {
    if prefix.is_empty() || evidence.setting == OverlapMode::Off {
        return Vec::new();
    }
    let always = evidence.setting == OverlapMode::Always;
    let glued = !prefix.ends_with(|c: char| c.is_whitespace());
    let bytes = prefix.as_bytes();
    let from = prefix.len().saturating_sub(MAX_OVERLAP);
    let mut out = Vec::new();
    for s in (from.max(1)..prefix.len()).rev() {
        // Just after an ASCII byte, `s` is a char boundary.
        let word_start = bytes[s - 1].is_ascii_whitespace() && !bytes[s].is_ascii_whitespace();
        if !word_start || prefix.len() - s < MIN_OVERLAP {
            continue;
        }
        let candidate = &prefix[s..];
        let several = candidate.split_ascii_whitespace().count() >= ECHO_WORDS && !whole_lines(prefix, s);
        if glued || several {
            out.push((s, if always { Proof::Known } else { Proof::Proved }));
        } else if always || evidence.seen_echoing {
            out.push((s, Proof::Known));
        }
    }
    out
}

/// Whether `prefix[s..]` reads as a line said again: it spans a line break,
/// and its first line begins with what the cut's line began with (nothing, an
/// indentation, a bullet, `x = `), so a repeat of it repeats that line.
fn whole_lines(prefix: &str, s: usize) -> bool {
    let Some(last) = prefix[s..].rfind('\n') else {
        return false;
    };
    let head = &prefix[s + last + 1..];
    let before = &prefix[..s];
    before.ends_with(head) && {
        let line = &before[..before.len() - head.len()];
        line.is_empty() || line.ends_with('\n')
    }
}

/// Trims a whole continuation at once (the streaming rule applied to one delta).
pub fn trim(prefix: &str, continuation: &str, evidence: Evidence) -> String {
    let mut t = OverlapTrim::new(prefix, evidence);
    let mut out = t.push(continuation.to_string());
    out.push_str(&t.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTO: Evidence = Evidence {
        setting: OverlapMode::Auto,
        seen_echoing: false,
        stripped: false,
    };
    const SEEN: Evidence = Evidence {
        setting: OverlapMode::Auto,
        seen_echoing: true,
        stripped: false,
    };
    const OFF: Evidence = Evidence {
        setting: OverlapMode::Off,
        seen_echoing: true,
        stripped: false,
    };
    const ALWAYS: Evidence = Evidence {
        setting: OverlapMode::Always,
        seen_echoing: false,
        stripped: false,
    };
    const STRIPPED: Evidence = Evidence {
        setting: OverlapMode::Auto,
        seen_echoing: false,
        stripped: true,
    };

    #[test]
    fn a_genuine_repeated_word_is_kept() {
        // The answer is "nickel violet violet raven", cut after the first "violet".
        assert_eq!(trim("nickel violet", " violet raven", AUTO), " violet raven");
        assert_eq!(trim("nickel violet", " violet raven", SEEN), " violet raven");
        // Cut after its space: ambiguous on a route never seen echoing, so kept.
        assert_eq!(trim("nickel violet ", "violet raven", AUTO), "violet raven");
    }

    #[test]
    fn a_glued_echo_is_dropped() {
        assert_eq!(trim("the quick brown", "quick brown fox", AUTO), " fox");
        assert_eq!(trim("the quick brown", "brown fox", AUTO), " fox");
        assert_eq!(trim("the quick bro", "quick brown fox", AUTO), "wn fox");
        assert_eq!(trim("un café crè", "café crème", AUTO), "me");
        let mut t = OverlapTrim::new("the quick brown", AUTO);
        assert_eq!(t.push("brown fox".into()), " fox");
        assert_eq!(t.dropped(), Some(Proof::Proved));
    }

    #[test]
    fn several_words_are_an_echo_after_a_space_unless_they_are_a_line_again() {
        assert_eq!(trim("the quick brown ", "quick brown fox", AUTO), "fox");
        assert_eq!(trim("a;\n    x = 1;\n", "= 1;\n    y = 2;", AUTO), "    y = 2;");
        // A repeated line is text, wherever in it the cut is.
        assert_eq!(trim("a;\nx = 1;\n", "x = 1;\ny = 2;", AUTO), "x = 1;\ny = 2;");
        assert_eq!(trim("a;\n    x = 1;\n    ", "x = 1;\n", AUTO), "x = 1;\n");
        assert_eq!(trim("a\n- one two\n- ", "one two\n- six", AUTO), "one two\n- six");
    }

    #[test]
    fn a_route_seen_echoing_gets_its_short_echoes_dropped() {
        let mut t = OverlapTrim::new("nickel violet ", SEEN);
        assert_eq!(t.push("violet violet raven".into()), "violet raven");
        assert_eq!(t.dropped(), Some(Proof::Known));
        assert_eq!(trim("nickel violet ", "violet raven", ALWAYS), "raven");
    }

    #[test]
    fn a_restart_is_dropped_whatever_its_length() {
        assert_eq!(trim("R", "Réponse", AUTO), "éponse");
        assert_eq!(trim("Ré", "Réponse", AUTO), "ponse");
        assert_eq!(trim("Ré", "ponse", AUTO), "ponse");
        let long = "word ".repeat(100);
        assert_eq!(trim(&long, &format!("{long}end"), AUTO), "end");
    }

    #[test]
    fn off_keeps_every_repeat() {
        assert_eq!(trim("the quick brown", "brown fox", OFF), "brown fox");
        assert_eq!(trim("R", "Réponse", OFF), "Réponse");
    }

    #[test]
    fn short_or_inner_repeats_are_kept() {
        assert_eq!(trim("and I said no", " no, never", SEEN), " no, never");
        assert_eq!(trim("and I said no", "no, never", AUTO), "no, never");
        assert_eq!(trim("the brown", "owner of it", AUTO), "owner of it");
    }

    #[test]
    fn the_seam_never_doubles_whitespace_and_keeps_indentation() {
        assert_eq!(trim("hello ", " world", AUTO), "world");
        assert_eq!(trim("hello", " world", AUTO), " world");
        assert_eq!(trim("hello ", "world", AUTO), "world");
        assert_eq!(trim("x = 1;\n", "    y = 2;", AUTO), "    y = 2;");
        // A line break said again is a blank line, text, unless the upstream never saw the first.
        assert_eq!(trim("x = 1;\n", "\n    y = 2;", AUTO), "\n    y = 2;");
        assert_eq!(trim("willow;\n", "\n- falcon", AUTO), "\n- falcon");
        assert_eq!(trim("x = 1;\n", "\n    y = 2;", STRIPPED), "    y = 2;");
        assert_eq!(trim("x = 1;\n", "\n    y = 2;", SEEN), "    y = 2;");
        assert_eq!(trim("x = 1;\n", "\n    y = 2;", ALWAYS), "    y = 2;");
        // `off` trusts the route never to echo: its whitespace is text, unless stripped.
        assert_eq!(trim("hello ", " world", OFF), " world");
        let stripped_off = Evidence {
            setting: OverlapMode::Off,
            ..STRIPPED
        };
        assert_eq!(trim("hello ", " world", stripped_off), "world");
    }

    #[test]
    fn the_head_is_held_until_the_rule_can_decide() {
        let mut t = OverlapTrim::new("one two three", AUTO);
        assert_eq!(t.push("two".into()), "");
        assert_eq!(t.push(" thr".into()), "");
        assert!(t.holding());
        assert_eq!(t.push("ee four".into()), " four");
        assert_eq!(t.push(" five".into()), " five");
        assert_eq!(t.finish(), "");
        // A head that cannot be an echo is released at once.
        let mut t = OverlapTrim::new("one two three", AUTO);
        assert_eq!(t.push("zzz".into()), "zzz");
        // An ambiguous repeat is not even held.
        let mut t = OverlapTrim::new("one two ", AUTO);
        assert_eq!(t.push("two".into()), "two");
    }

    #[test]
    fn an_ending_continuation_releases_what_was_held() {
        let mut t = OverlapTrim::new("one two three", AUTO);
        assert_eq!(t.push("thr".into()), "");
        assert_eq!(t.finish(), "thr");
        assert_eq!(t.dropped(), None);
    }
}
