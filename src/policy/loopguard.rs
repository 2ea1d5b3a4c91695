//! Loop guard: notices an answer that has started repeating itself.
//!
//! # The rule
//!
//! A **loop** is a stretch at the end of an attempt's own text with a period
//! of *p* bytes (every byte equals the byte *p* before it), for some *p* from
//! 1 to [`MAX_PERIOD`], that spans at least `max(min_span_bytes,
//! min_repeats × p)` bytes: at least `min_repeats` copies of the unit, and
//! never fewer than `min_span_bytes` bytes, so short legitimate runs
//! (`"======"`, `"ha ha ha"`, a row of table dashes) never count. The smallest
//! such period is reported.
//!
//! The loop **begins** where that periodic stretch begins (followed backwards
//! as far as it goes, within the attempt's own text), moved back to a
//! character boundary. The splicer cuts the continuation prefix back to
//! exactly there: no copy of the repeated unit is kept. The stretch can reach
//! a few bytes into genuine text when that text happens to end like the unit
//! does; cutting those too is harmless (the next route writes them again),
//! whereas keeping one copy of the unit would hand the next route a prefix
//! that ends mid-repetition and invites it to go on repeating.
//!
//! # Cost
//!
//! This runs on the per-token path, so [`LoopGuard::observe`] only looks again
//! after [`CHECK_EVERY`] new bytes, and a look reads at most the last
//! `max(min_span_bytes, min_repeats × p)` bytes for each period, stopping at
//! the first mismatch (for ordinary text, within a byte or two). A loop is
//! therefore caught at most [`CHECK_EVERY`] bytes after it crosses the
//! threshold. Only a detected loop is followed further back, once.

use serde::{Deserialize, Serialize};

/// The longest repeated unit looked for, in bytes.
pub const MAX_PERIOD: usize = 200;
/// New bytes between two looks.
pub const CHECK_EVERY: usize = 32;
/// Default `loop_min_repeats`.
pub const DEFAULT_MIN_REPEATS: u32 = 6;
/// Default `loop_min_span_bytes`.
pub const DEFAULT_MIN_SPAN_BYTES: u32 = 300;
/// Default `loop_marker`: what the client gets where its looped text was cut.
pub const DEFAULT_MARKER: &str = " […] ";
/// The largest `loop_min_span_bytes` accepted (a look must stay cheap).
pub const MAX_MIN_SPAN_BYTES: u32 = 64 * 1024;
/// The largest `loop_min_repeats` accepted.
pub const MAX_MIN_REPEATS: u32 = 1000;

/// A ladder's loop-guard settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopConfig {
    /// Copies of the repeated unit, at least, for a loop.
    pub min_repeats: u32,
    /// Bytes a loop spans, at least.
    pub min_span_bytes: u32,
    /// Text sent to the client where the looped text it already has ends.
    pub marker: String,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            min_repeats: DEFAULT_MIN_REPEATS,
            min_span_bytes: DEFAULT_MIN_SPAN_BYTES,
            marker: DEFAULT_MARKER.to_string(),
        }
    }
}

/// A detected loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loop {
    /// Bytes in the repeated unit.
    pub period: usize,
    /// Whole copies of the unit seen.
    pub repeats: u32,
    /// Where the loop begins in the text given to [`LoopGuard::observe`]: the cut.
    pub start: usize,
}

/// Watches one attempt's text for a loop.
#[derive(Clone, Debug)]
pub struct LoopGuard {
    min_repeats: usize,
    min_span: usize,
    /// Where the attempt's own text begins: earlier text is another attempt's.
    from: usize,
    /// The text length at which to look again.
    next_look: usize,
    every: usize,
}

impl LoopGuard {
    /// A guard with `config` for an attempt whose text starts at byte `from` of the observed text.
    pub fn new(config: &LoopConfig, from: usize) -> Self {
        LoopGuard::with_stride(config, from, CHECK_EVERY)
    }

    /// The same, looking again after every `every` new bytes (tests look at every byte).
    pub fn with_stride(config: &LoopConfig, from: usize, every: usize) -> Self {
        let every = every.max(1);
        LoopGuard {
            min_repeats: config.min_repeats.max(2) as usize,
            min_span: config.min_span_bytes.max(1) as usize,
            from,
            next_look: from + every,
            every,
        }
    }

    /// Looks at `text` (the previous text plus what arrived since), if enough is new.
    pub fn observe(&mut self, text: &str) -> Option<Loop> {
        if text.len() < self.next_look {
            return None;
        }
        self.next_look = text.len() + self.every;
        let own = text.as_bytes().get(self.from..)?;
        let (period, start) = find(own, self.min_repeats, self.min_span)?;
        let mut start = self.from + start;
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let repeats = (text.len() - start) / period;
        Some(Loop {
            period,
            repeats: u32::try_from(repeats).unwrap_or(u32::MAX),
            start,
        })
    }
}

/// A loop guard over a channel the splicer does not keep, such as an
/// attempt's reasoning (thinking loops are common): it holds only the tail a
/// look can reach, so hours of thinking cost a bounded buffer.
#[derive(Clone, Debug)]
pub struct TailGuard {
    config: LoopConfig,
    guard: LoopGuard,
    tail: String,
    /// The most a look reads back, so the least the tail must keep.
    reach: usize,
}

impl TailGuard {
    /// A guard with `config` over a channel that starts empty.
    pub fn new(config: &LoopConfig) -> Self {
        let reach = (config.min_span_bytes as usize).max(config.min_repeats as usize * MAX_PERIOD) + CHECK_EVERY;
        TailGuard {
            config: config.clone(),
            guard: LoopGuard::new(config, 0),
            tail: String::new(),
            reach,
        }
    }

    /// Adds `text` to the channel; the loop it now ends with, if any.
    pub fn push(&mut self, text: &str) -> Option<Loop> {
        self.tail.push_str(text);
        if self.tail.len() > 2 * self.reach {
            // Keep what a look can reach; the guard starts over on what is kept.
            let mut cut = self.tail.len() - self.reach;
            while !self.tail.is_char_boundary(cut) {
                cut += 1;
            }
            self.tail.drain(..cut);
            self.guard = LoopGuard::new(&self.config, 0);
        }
        self.guard.observe(&self.tail)
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.tail.len()
    }
}

/// The loop ending at the end of `text`: its period and where it begins.
pub fn find(text: &[u8], min_repeats: usize, min_span: usize) -> Option<(usize, usize)> {
    let n = text.len();
    for p in 1..=MAX_PERIOD {
        let need = min_span.max(min_repeats.saturating_mul(p));
        if need > n {
            // `need` never shrinks as `p` grows: no longer period fits either.
            break;
        }
        let head = n - need;
        // The last byte first: ordinary text fails here, without a call to memcmp.
        if text[n - 1] != text[n - 1 - p] || text[head..n - p] != text[head + p..n] {
            continue;
        }
        let mut start = head;
        while start > 0 && text[start - 1] == text[start - 1 + p] {
            start -= 1;
        }
        return Some((p, start));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_guard_catches_a_loop_and_holds_a_bounded_tail() {
        let config = LoopConfig::default();
        let mut thinking = TailGuard::new(&config);
        // Long genuine thinking: no loop, and only a bounded tail is kept.
        let mut found = None;
        for i in 0..20_000 {
            found = found.or(thinking.push(&format!("step {i} weighs option {} ", i * 7 % 13)));
        }
        assert_eq!(found, None);
        assert!(
            thinking.held() <= 2 * (300usize.max(6 * MAX_PERIOD) + CHECK_EVERY),
            "{}",
            thinking.held()
        );
        // Then it loops.
        let mut looped = None;
        for _ in 0..200 {
            looped = looped.or(thinking.push("wait, let me reconsider. "));
        }
        let looped = looped.expect("a loop");
        assert_eq!(looped.period, "wait, let me reconsider. ".len());
    }
    use proptest::prelude::*;

    fn config(min_repeats: u32, min_span_bytes: u32) -> LoopConfig {
        LoopConfig {
            min_repeats,
            min_span_bytes,
            marker: DEFAULT_MARKER.into(),
        }
    }

    /// Feeds `text` in `chunk`-byte pieces (at char boundaries); the first loop seen and the bytes fed by then.
    fn feed(guard: &mut LoopGuard, text: &str, chunk: usize) -> Option<(Loop, usize)> {
        let mut at = 0;
        while at < text.len() {
            let mut end = (at + chunk).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            at = end;
            if let Some(l) = guard.observe(&text[..at]) {
                return Some((l, at));
            }
        }
        None
    }

    #[test]
    fn a_repeated_phrase_is_caught_soon_after_the_threshold_and_cut_where_it_began() {
        let intro = "The river runs to the sea, and the harbor waits.";
        let unit = " and again!";
        let text = format!("{intro}{}", unit.repeat(100));
        let mut guard = LoopGuard::new(&LoopConfig::default(), 0);
        let (found, fed) = feed(&mut guard, &text, 7).expect("a loop");
        assert_eq!(found.period, unit.len());
        assert_eq!(found.start, intro.len());
        let threshold = intro.len() + DEFAULT_MIN_SPAN_BYTES as usize;
        assert!(fed >= threshold && fed < threshold + CHECK_EVERY + 7, "caught at {fed}");
        assert_eq!(found.repeats as usize, (fed - intro.len()) / unit.len());
    }

    #[test]
    fn long_units_need_min_repeats_copies() {
        // 54 bytes: six copies (324 bytes) are needed, more than the 300-byte span.
        let unit = "Je pense, donc je suis; mais qui pense quand je dors? ";
        let mut guard = LoopGuard::with_stride(&LoopConfig::default(), 0, 1);
        assert_eq!(feed(&mut guard, &unit.repeat(5), 1), None, "five copies are not enough");
        let mut guard = LoopGuard::with_stride(&LoopConfig::default(), 0, 1);
        let (found, fed) = feed(&mut guard, &unit.repeat(7), 1).expect("six copies are");
        assert_eq!(found.period, unit.len());
        assert_eq!(fed, unit.len() * 6);
        assert_eq!(found.start, 0);
    }

    #[test]
    fn the_smallest_period_is_reported() {
        let text = "ab".repeat(400);
        let found = find(text.as_bytes(), 6, 300).expect("a loop");
        assert_eq!(found, (2, 0));
    }

    #[test]
    fn the_cut_follows_the_repetition_into_text_that_ends_like_the_unit() {
        // "… sat. " ends like the unit "The cat sat. ": the stretch starts at ". " before it.
        let intro = "It was late and the cat sat. ";
        let text = format!("{intro}{}", "The cat sat. ".repeat(40));
        let (p, start) = find(text.as_bytes(), 6, 300).expect("a loop");
        assert_eq!(p, 13);
        assert_eq!(start, intro.len() - "he cat sat. ".len());
    }

    #[test]
    fn the_cut_never_splits_a_character_or_reaches_into_an_earlier_attempt() {
        // The unit "éé" is 4 bytes; the stretch's first byte may be a continuation byte of 'é'.
        let earlier = "ééééééééé";
        let text = format!("{earlier}{}", "é".repeat(400));
        let mut guard = LoopGuard::new(&LoopConfig::default(), earlier.len());
        let found = guard.observe(&text).expect("a loop");
        assert_eq!(
            found.start,
            earlier.len(),
            "the earlier attempt's text is not looked at"
        );
        // 'ѩ' (D1 A9) ends with the same byte as the unit's 'é' (C3 A9): the stretch
        // starts on that continuation byte, and the cut moves back to the character.
        let text = format!("zѩ{}", "bé".repeat(200));
        let mut guard = LoopGuard::new(&LoopConfig::default(), 0);
        let found = guard.observe(&text).expect("a loop");
        assert_eq!((found.period, found.start), (3, 1));
    }

    #[test]
    fn ordinary_repetitive_text_is_not_a_loop() {
        let list: String = (1..=200).map(|i| format!("{i}. apple\n")).collect();
        let table = format!(
            "| name | qty |\n|------|-----|\n{}",
            (0..100)
                .map(|i| format!("| item{i} | {} |\n", i % 7))
                .collect::<String>()
        );
        let rule = "=".repeat(120);
        let laugh = "ha ".repeat(30);
        let zeros = format!("[{}0]", "0, ".repeat(90));
        let bullets: String = ["yes", "no", "maybe"]
            .iter()
            .cycle()
            .take(60)
            .map(|w| format!("- {w}\n"))
            .collect::<String>();
        for text in [list, table, rule, laugh, zeros] {
            let mut guard = LoopGuard::with_stride(&LoopConfig::default(), 0, 1);
            assert_eq!(feed(&mut guard, &text, 1), None, "{text}");
        }
        // A list cycling through three items IS periodic: it is a loop once long enough.
        let mut guard = LoopGuard::with_stride(&LoopConfig::default(), 0, 1);
        assert!(feed(&mut guard, &bullets, 1).is_some());
    }

    #[test]
    fn nothing_is_looked_at_before_enough_new_bytes() {
        let mut guard = LoopGuard::new(&config(2, 4), 0);
        assert_eq!(guard.observe(&"a".repeat(CHECK_EVERY - 1)), None);
        assert!(guard.observe(&"a".repeat(CHECK_EVERY)).is_some());
    }

    /// The periodic stretch ending at the end of `text` for period `p`, by brute force.
    fn naive(text: &[u8], min_repeats: usize, min_span: usize) -> Option<(usize, usize)> {
        (1..=MAX_PERIOD.min(text.len())).find_map(|p| {
            let mut start = text.len() - p;
            while start > 0 && text[start - 1] == text[start - 1 + p] {
                start -= 1;
            }
            (text.len() - start >= min_span.max(min_repeats * p)).then_some((p, start))
        })
    }

    proptest! {
        #[test]
        fn find_agrees_with_brute_force(
            text in "[ab]{0,300}",
            loop_unit in "[abc]{1,9}",
            copies in 0usize..40,
            min_repeats in 2usize..6,
            min_span in 1usize..60,
        ) {
            let text = format!("{text}{}", loop_unit.repeat(copies));
            let bytes = text.as_bytes();
            prop_assert_eq!(find(bytes, min_repeats, min_span), naive(bytes, min_repeats, min_span));
        }

        #[test]
        fn a_planted_loop_is_always_caught_and_cut_where_it_began(
            intro in "[a-z ]{0,200}",
            unit in "[a-z ]{1,40}",
            chunk in 1usize..20,
        ) {
            let text = format!("{intro}!{}", unit.repeat(400 / unit.len() + 40));
            let mut guard = LoopGuard::new(&LoopConfig::default(), 0);
            let found = feed(&mut guard, &text, chunk);
            prop_assert!(found.is_some());
            let (found, _) = found.unwrap_or((Loop { period: 0, repeats: 0, start: 0 }, 0));
            // '!' is never part of the unit, so the repetition begins right after it.
            prop_assert_eq!(found.start, intro.len() + 1);
            prop_assert!(unit.len() % found.period == 0);
        }
    }
}
