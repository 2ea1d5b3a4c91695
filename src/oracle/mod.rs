//! The mock oracle: an upstream whose answer is a pure function of the conversation.
//!
//! Given a prefix of its own answer (as a final assistant message, or as an
//! assistant message followed by a "continue" instruction), it streams the rest,
//! optionally repeating the last few words first. That is what makes "nothing
//! lost, nothing doubled" checkable: whatever faults were injected, a client
//! of the splicer must end with exactly [`answer`] of its conversation.
//!
//! * [`fault`]: fault scripts (`stall@5`, `429:1`, `noprefill` …) and plans.
//! * [`script`]: the wire-level steps one request produces, faults applied.
//! * [`server`]: those steps served as OpenAI-compatible SSE over HTTP.

pub mod fault;
pub mod provider;
pub mod script;
pub mod server;

use crate::policy::overlap::MIN_OVERLAP;
use crate::request::{Message, Role};
pub use crate::rng::SplitMix;

/// The visible answer to a continuation whose prefix is not a prefix of the oracle's answer.
pub const MISMATCH: &str = "[[baton-oracle: prefix mismatch]]";

/// The words answers are made of: multi-byte characters included, and no word
/// that repeats itself inside, so no accidental overlap can look like a repeat.
const WORDS: &[&str] = &[
    "baton",
    "river",
    "signal",
    "café",
    "naïve",
    "über",
    "relay",
    "stream",
    "token",
    "garden",
    "日本語",
    "mañana",
    "façade",
    "résumé",
    "océan",
    "Zürich",
    "runner",
    "lantern",
    "harbor",
    "copper",
    "meadow",
    "silent",
    "orbit",
    "quartz",
    "falcon",
    "ember",
    "glacier",
    "canyon",
    "pixel",
    "velvet",
    "thunder",
    "willow",
    "crystal",
    "nimbus",
    "saffron",
    "tundra",
    "smørbrød",
    "añejo",
    "crème",
    "δέλτα",
    "λόγος",
    "ветер",
    "🚀",
    "harvest",
    "compass",
    "beacon",
    "marble",
    "juniper",
    "ocelot",
    "zephyr",
    "granite",
    "prairie",
    "sparrow",
    "cobalt",
    "kestrel",
    "mistral",
    "obsidian",
    "paprika",
    "quiver",
    "ribbon",
    "sextant",
    "trellis",
];

/// FNV-1a over `text`: stable across runs, versions and platforms.
pub fn text_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// FNV-1a over the conversation: stable across runs, versions and platforms.
pub fn conversation_hash(messages: &[Message]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for m in messages {
        eat(format!("{:?}", m.role).as_bytes());
        eat(&[0]);
        eat(m.content.as_bytes());
        eat(&[0x1e]);
    }
    h
}

/// The oracle's full answer to `conversation`: a few hundred bytes of sentences
/// that repeat themselves as real text does, so the overlap trim is tested
/// against genuine repeats: a word said twice (`violet violet`), a phrase said
/// again in a later sentence, and a list or code block with a line repeated.
///
/// Repeats come at most twice in a row (no `w w w`, no line three times),
/// and the answer never opens with one: those are the shapes an echo takes.
pub fn answer(conversation: &[Message]) -> String {
    let mut rng = SplitMix::new(conversation_hash(conversation));
    let target = 300 + rng.below(300) as usize;
    let mut text = Text::default();
    let mut in_sentence = 0;
    while text.out.len() < target {
        if in_sentence == 0 && !text.out.is_empty() {
            match rng.below(6) {
                0 => {
                    text.block(&mut rng);
                    continue;
                }
                1 => text.phrase_again(&mut rng),
                _ => {}
            }
        }
        let word = text.fresh(&mut rng);
        text.say(word);
        in_sentence += 1;
        // A word said twice in a row, now and then (never the answer's first).
        if text.said.len() > 1 && rng.below(7) == 0 {
            text.say(word);
        }
        if in_sentence >= 5 && rng.below(4) == 0 {
            text.out.push(if rng.below(3) == 0 { ',' } else { '.' });
            text.sentences.push(text.said.len());
            in_sentence = 0;
        }
    }
    text.out.push('.');
    text.out
}

/// An answer being written.
#[derive(Default)]
struct Text {
    out: String,
    /// Every word said, in order (indices into [`WORDS`]).
    said: Vec<usize>,
    /// Where each finished sentence ends in `said`.
    sentences: Vec<usize>,
}

impl Text {
    /// A word not among the last ten said: keeps the text free of short periods.
    fn fresh(&self, rng: &mut SplitMix) -> usize {
        loop {
            let w = rng.below(WORDS.len() as u64) as usize;
            if !self.said.iter().rev().take(10).any(|&r| r == w) {
                return w;
            }
        }
    }

    fn say(&mut self, word: usize) {
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push(' ');
        }
        self.out.push_str(WORDS[word]);
        self.said.push(word);
    }

    /// Says again two to four words of an earlier sentence (a sentence apart, so never back to back).
    fn phrase_again(&mut self, rng: &mut SplitMix) {
        let Some(&end) = self.sentences.iter().rev().nth(1).or(self.sentences.first()) else {
            return;
        };
        let len = 2 + rng.below(3) as usize;
        if end < len {
            return;
        }
        let from = rng.below((end - len + 1) as u64) as usize;
        let phrase: Vec<usize> = self.said[from..from + len].to_vec();
        for w in phrase {
            self.say(w);
        }
    }

    /// A list or code block of two to four lines, one of them twice in a row, then a new line.
    fn block(&mut self, rng: &mut SplitMix) {
        let code = rng.below(2) == 0;
        let lines = 2 + rng.below(3) as usize;
        let twice = rng.below(lines as u64) as usize;
        self.out.push('\n');
        for i in 0..lines {
            let (a, b) = (self.fresh(rng), self.fresh(rng));
            let line = if code {
                format!("    {} = {};\n", WORDS[a], WORDS[b])
            } else {
                format!("- {} {}\n", WORDS[a], WORDS[b])
            };
            self.said.extend([a, b]);
            self.out.push_str(&line);
            if i == twice {
                self.out.push_str(&line);
            }
        }
        self.sentences.push(self.said.len());
    }
}

/// How the oracle phrases a continuation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// Repeat this many of the prefix's last words before continuing (0: none).
    pub repeat_words: usize,
    /// Start the continuation with the prefix's trailing whitespace again, as
    /// after a provider stripped it from a prefill.
    pub extra_space: bool,
}

/// What the oracle streams for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The text to stream.
    pub text: String,
    /// Whether the request ended with an assistant message (prefill).
    pub prefill: bool,
}

/// The oracle's reply to `messages`: a fresh answer, the rest of a prefix, or [`MISMATCH`].
pub fn reply(messages: &[Message], style: Style) -> Reply {
    let n = messages.len();
    let last = messages.last();
    let prefill = last.is_some_and(|m| m.role == Role::Assistant);
    let (conversation, prefix) = if prefill {
        (&messages[..n - 1], messages[n - 1].content.as_str())
    } else if n >= 2
        && last.is_some_and(|m| m.role == Role::User)
        && messages[n - 2].role == Role::Assistant
        && !messages[n - 2].content.is_empty()
        && answer(&messages[..n - 2]).starts_with(&messages[n - 2].content)
    {
        (&messages[..n - 2], messages[n - 2].content.as_str())
    } else {
        (messages, "")
    };
    let full = answer(conversation);
    if !full.starts_with(prefix) {
        return Reply {
            text: MISMATCH.to_string(),
            prefill,
        };
    }
    Reply {
        text: continuation(&full, prefix.len(), style),
        prefill,
    }
}

/// What the oracle streams to continue `full[..at]` in `style`.
pub fn continuation(full: &str, at: usize, style: Style) -> String {
    let prefix = &full[..at];
    let mut text = String::new();
    if style.extra_space {
        text.push_str(&prefix[prefix.trim_end_matches(|c: char| c.is_ascii_whitespace()).len()..]);
    }
    text.push_str(&full[repeat_start(full, at, style.repeat_words)..]);
    text
}

/// Where a continuation of `full[..at]` starts when it repeats the last `words` words.
///
/// A repeat always starts at a word start and is at least [`MIN_OVERLAP`]
/// bytes long (more words are taken if needed), or is the whole prefix — a
/// restart, as an instruct model does after a prefix of a few bytes. Shorter
/// echoes are what the overlap trim keeps as genuine text, so the oracle never
/// produces one.
pub fn repeat_start(full: &str, at: usize, words: usize) -> usize {
    if words == 0 || at == 0 {
        return at;
    }
    let bytes = full.as_bytes();
    let is_word_start = |p: usize| p == 0 || (bytes[p - 1].is_ascii_whitespace() && !bytes[p].is_ascii_whitespace());
    let mut start = at;
    let mut taken = 0;
    while start > 0 && (taken < words || at - start < MIN_OVERLAP) {
        start -= 1;
        while start > 0 && !(full.is_char_boundary(start) && is_word_start(start)) {
            start -= 1;
        }
        taken += 1;
    }
    if start > 0 && at - start < MIN_OVERLAP {
        at
    } else {
        start
    }
}

/// The field a reasoning oracle streams its thinking in, for `model`: a model
/// named with `think` reasons in `reasoning_content` (DeepSeek, vLLM, Qwen …),
/// one named with `reason` in `reasoning` (OpenRouter, Ollama, gpt-oss …);
/// any other does not reason.
pub fn reasoning_field(model: &str) -> Option<&'static str> {
    if model.contains("think") {
        Some("reasoning_content")
    } else if model.contains("reason") {
        Some("reasoning")
    } else {
        None
    }
}

/// What a reasoning oracle thinks before answering `messages` (the request as
/// sent, continuation included): a pure function of it, a few dozen words.
pub fn thinking(messages: &[Message]) -> String {
    const WORDS: [&str; 16] = [
        "consider",
        "the",
        "question",
        "carefully",
        "first",
        "then",
        "weigh",
        "each",
        "option",
        "and",
        "check",
        "facts",
        "again",
        "before",
        "answering",
        "plainly",
    ];
    let mut rng = SplitMix::new(conversation_hash(messages) ^ 0x7468_696e_6b69_6e67);
    let n = 24 + rng.below(24) as usize;
    let mut out = String::from("Thinking:");
    for _ in 0..n {
        out.push(' ');
        out.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    out.push('.');
    out
}

/// Cuts `text` into chunks of 1–9 bytes at character boundaries (mid-word included).
pub fn chunks(text: &str, seed: u64) -> Vec<&str> {
    let mut rng = SplitMix::new(seed ^ text.len() as u64);
    let mut out = Vec::new();
    let mut at = 0;
    while at < text.len() {
        let mut end = (at + 1 + rng.below(9) as usize).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push(&text[at..end]);
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> Vec<Message> {
        vec![
            Message::new(Role::System, "be brief"),
            Message::new(Role::User, "tell me"),
        ]
    }

    #[test]
    fn answer_is_pure_and_varies_with_the_conversation() {
        let a = answer(&conv());
        assert_eq!(a, answer(&conv()));
        assert!(a.len() >= 300 && a.len() < 700, "{}", a.len());
        let mut other = conv();
        other[1].content.push('!');
        assert_ne!(a, answer(&other));
    }

    #[test]
    fn continues_a_prefix_in_both_modes() {
        let full = answer(&conv());
        let cut = full.char_indices().nth(57).map(|(i, _)| i).unwrap_or(0);
        let mut prefill = conv();
        prefill.push(Message::new(Role::Assistant, &full[..cut]));
        let r = reply(&prefill, Style::default());
        assert!(r.prefill);
        assert_eq!(format!("{}{}", &full[..cut], r.text), full);

        let mut instruct = conv();
        instruct.push(Message::new(Role::Assistant, &full[..cut]));
        instruct.push(Message::new(Role::User, "continue"));
        let r = reply(&instruct, Style::default());
        assert!(!r.prefill);
        assert_eq!(format!("{}{}", &full[..cut], r.text), full);

        let mut wrong = conv();
        wrong.push(Message::new(Role::Assistant, "not my words"));
        assert_eq!(reply(&wrong, Style::default()).text, MISMATCH);
    }

    #[test]
    fn repeats_start_at_word_starts_and_are_long_enough() {
        let full = "alpha beta gamma delta";
        // "ga" alone is shorter than MIN_OVERLAP, so the repeat reaches back to "beta ga".
        assert_eq!(repeat_start(full, 13, 1), 6);
        assert_eq!(repeat_start(full, 16, 1), 11);
        assert_eq!(repeat_start(full, 16, 2), 6);
        // A prefix too short for a repeat is restarted whole.
        assert_eq!(repeat_start(full, 2, 1), 0);
    }

    #[test]
    fn chunks_cover_the_text_at_char_boundaries() {
        let text = answer(&conv());
        let parts = chunks(&text, 9);
        assert_eq!(parts.concat(), text);
        assert!(parts.iter().all(|p| !p.is_empty() && p.len() <= 12));
    }
}
