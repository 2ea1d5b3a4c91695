//! The safe-reply rung: a configured, clearly labelled degraded answer for
//! when no route (and no cached answer) can give a real one.
//!
//! If the client has no text yet, it gets the reply; if part of an answer was
//! already sent, it gets the note instead, closing that answer rather than
//! starting a new one. Either streams under the route name
//! [`SAFE_REPLY_ROUTE`] and the model [`SAFE_REPLY_MODEL`], so no client or
//! dashboard can mistake it for a model's words.

/// The route name a safe reply is written under, in events and the route chain.
pub const SAFE_REPLY_ROUTE: &str = "safe-reply";

/// The model name a safe reply's chunks carry.
pub const SAFE_REPLY_MODEL: &str = "baton/safe-reply";

/// The note that closes a partly sent answer when none is configured.
pub const DEFAULT_NOTE: &str = "\n\n[The answer was cut short: no model could finish it.]";

/// A ladder's degraded answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SafeReply {
    /// The whole answer, when the client has nothing yet.
    pub reply: String,
    /// What closes a partly sent answer.
    pub note: String,
}

impl SafeReply {
    /// The text for a client that already has `sent` bytes of an answer.
    pub fn text_after(&self, sent: usize) -> &str {
        if sent == 0 {
            &self.reply
        } else {
            &self.note
        }
    }
}

/// `text` cut into word-sized deltas (each word with the whitespace before it),
/// so a degraded answer streams like a live one.
pub fn deltas(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                out.push(text[start..i].to_string());
                start = i;
                in_word = false;
            }
        } else {
            in_word = true;
        }
    }
    if start < text.len() {
        out.push(text[start..].to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_put_back_together_exactly() {
        for text in ["", "one", "Sorry, try again.", "  lead\n\n[note]  ", "é ü  漢字"] {
            let d = deltas(text);
            assert_eq!(d.concat(), text);
            assert!(d.iter().all(|p| !p.is_empty()));
        }
        assert_eq!(deltas("a b  c"), vec!["a", " b", "  c"]);
    }

    #[test]
    fn the_note_closes_a_partial_answer() {
        let s = SafeReply {
            reply: "Sorry.".into(),
            note: " [cut]".into(),
        };
        assert_eq!(s.text_after(0), "Sorry.");
        assert_eq!(s.text_after(10), " [cut]");
    }
}
