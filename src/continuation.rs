//! How the next route is asked to continue the text the client already has.

use serde::{Deserialize, Serialize};

use crate::request::{Message, Role};

/// How a route continues a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContinuationMode {
    /// The prefix as a final assistant message, which the model extends.
    Prefill,
    /// The prefix as an assistant message, then a short user message asking to continue.
    Instruct,
}

impl ContinuationMode {
    /// Lower-case name, as in configs and events.
    pub fn as_str(self) -> &'static str {
        match self {
            ContinuationMode::Prefill => "prefill",
            ContinuationMode::Instruct => "instruct",
        }
    }
}

/// The default `instruct` message: short, and a user turn, never a system
/// message that would override the caller's persona.
pub const DEFAULT_INSTRUCTION: &str =
    "Continue your last message exactly where it stopped, even mid-word. Do not repeat any of it and add nothing before it.";

/// The conversation for an attempt that continues `prefix` in `mode`.
///
/// An empty prefix leaves the conversation as the caller sent it (in
/// `instruct` mode, a caller's final assistant message still gets the
/// instruction after it). If the
/// caller's conversation already ends with an assistant message (their own
/// prefill), the prefix extends that message rather than adding another.
pub fn messages(original: &[Message], prefix: &str, mode: ContinuationMode, instruction: &str) -> Vec<Message> {
    let mut out = original.to_vec();
    if !prefix.is_empty() {
        match out.last_mut() {
            Some(last) if last.role == Role::Assistant => last.push_text(prefix),
            _ => out.push(Message::new(Role::Assistant, prefix)),
        }
    }
    // Also when the caller's own conversation ends with an assistant message:
    // a route without prefill support must not get the same rejected shape again.
    if mode == ContinuationMode::Instruct && out.last().is_some_and(|m| m.role == Role::Assistant) {
        out.push(Message::new(Role::User, instruction));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_and_instruct_shapes() {
        let original = vec![Message::new(Role::System, "persona"), Message::new(Role::User, "q")];
        assert_eq!(messages(&original, "", ContinuationMode::Instruct, "go on"), original);
        let prefill = messages(&original, "half an ans", ContinuationMode::Prefill, "go on");
        assert_eq!(prefill.len(), 3);
        assert_eq!(prefill[2], Message::new(Role::Assistant, "half an ans"));
        let instruct = messages(&original, "half an ans", ContinuationMode::Instruct, "go on");
        assert_eq!(instruct[2], Message::new(Role::Assistant, "half an ans"));
        assert_eq!(instruct[3], Message::new(Role::User, "go on"));
        assert_eq!(instruct[0], Message::new(Role::System, "persona"));
        let mut own_prefill = original.clone();
        own_prefill.push(Message::new(Role::Assistant, "Sure,"));
        let again = messages(&own_prefill, "", ContinuationMode::Instruct, "go on");
        assert_eq!(again.last(), Some(&Message::new(Role::User, "go on")));
        let extended = messages(&own_prefill, " here", ContinuationMode::Prefill, "go on");
        assert_eq!(extended.last(), Some(&Message::new(Role::Assistant, "Sure, here")));
    }
}
