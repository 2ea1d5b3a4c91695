//! The conversation a caller hands to the splicer.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The caller's instructions (persona); never dropped or overridden.
    System,
    /// OpenAI's newer name for a system message.
    Developer,
    /// The human side.
    User,
    /// The model side.
    Assistant,
    /// A tool result.
    Tool,
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "WireMessage")]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text: the content string, or the text parts joined by newlines.
    pub content: String,
    /// The caller's content array, forwarded as sent; `None` when the content is a string.
    pub parts: Option<Vec<Value>>,
    /// Other fields (`name`, `tool_calls`, `tool_call_id` …), passed upstream unchanged.
    pub extra: Map<String, Value>,
}

/// Why a message's `content` cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// Neither a string, null, nor an array.
    #[error("`content` must be a string, null or an array of content parts")]
    NotContent,
    /// A part that is not an object with a string `type`.
    #[error("content part {part} is not an object with a string `type`")]
    UntypedPart {
        /// The part's position in the array.
        part: usize,
    },
    /// A `text` part whose `text` is missing or not a string.
    #[error("content part {part} is a text part without a string `text`")]
    TextlessPart {
        /// The part's position in the array.
        part: usize,
    },
}

/// The JSON shape of a message, as OpenAI's wire has it: `content` a string or an array.
#[derive(Deserialize)]
struct WireMessage {
    role: Role,
    #[serde(default)]
    content: Value,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl TryFrom<WireMessage> for Message {
    type Error = ContentError;

    fn try_from(wire: WireMessage) -> Result<Self, ContentError> {
        Message::with_content(wire.role, wire.content, wire.extra)
    }
}

/// `content` as serialized: the caller's array when there was one, else the text.
#[derive(Serialize)]
#[serde(untagged)]
enum ContentRef<'a> {
    Text(&'a str),
    Parts(&'a [Value]),
}

#[derive(Serialize)]
struct WireMessageRef<'a> {
    role: Role,
    content: ContentRef<'a>,
    #[serde(flatten)]
    extra: &'a Map<String, Value>,
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let content = match &self.parts {
            Some(parts) => ContentRef::Parts(parts),
            None => ContentRef::Text(&self.content),
        };
        WireMessageRef {
            role: self.role,
            content,
            extra: &self.extra,
        }
        .serialize(serializer)
    }
}

/// A part's `type`, if it is an object that has one.
pub fn part_type(part: &Value) -> Option<&str> {
    part.get("type").and_then(Value::as_str)
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            parts: None,
            extra: Map::new(),
        }
    }

    /// A message from its wire `content` (a string, null, or an array of typed parts, kept as sent).
    pub fn with_content(role: Role, content: Value, extra: Map<String, Value>) -> Result<Self, ContentError> {
        let (content, parts) = match content {
            Value::Null => (String::new(), None),
            Value::String(s) => (s, None),
            Value::Array(parts) => {
                let mut texts = Vec::new();
                for (i, part) in parts.iter().enumerate() {
                    match part_type(part) {
                        Some("text") => match part.get("text").and_then(Value::as_str) {
                            Some(text) => texts.push(text),
                            None => return Err(ContentError::TextlessPart { part: i }),
                        },
                        Some(_) => {}
                        None => return Err(ContentError::UntypedPart { part: i }),
                    }
                }
                (texts.join("\n"), Some(parts))
            }
            _ => return Err(ContentError::NotContent),
        };
        Ok(Message {
            role,
            content,
            parts,
            extra,
        })
    }

    /// Appends `text` to the message, to its last text part when it has parts.
    pub fn push_text(&mut self, text: &str) {
        self.content.push_str(text);
        let Some(parts) = &mut self.parts else { return };
        if let Some(Value::Object(last)) = parts.last_mut().filter(|p| part_type(p) == Some("text")) {
            if let Some(Value::String(s)) = last.get_mut("text") {
                s.push_str(text);
                return;
            }
        }
        parts.push(serde_json::json!({"type": "text", "text": text}));
    }

    /// Its parts that are not text (images, audio, files …).
    pub fn media_parts(&self) -> usize {
        self.parts
            .iter()
            .flatten()
            .filter(|p| part_type(p) != Some("text"))
            .count()
    }
}

/// Tokens a message costs beyond its text (role, separators), as chat templates typically add.
pub const MESSAGE_OVERHEAD_TOKENS: u32 = 4;

/// Tokens a non-text content part (an image, audio) is counted as: its bytes
/// (base64, or a URL) say nothing about its cost, and a high-detail image costs
/// several hundred tokens.
pub const MEDIA_PART_TOKENS: u32 = 1024;

/// A rough token count of `messages`: about four bytes of text per token plus a
/// small overhead per message and [`MEDIA_PART_TOKENS`] per non-text part. Deliberately tokenizer-free: it only has to be
/// good enough to compare against a context window or a price, and it errs
/// high for ordinary English text.
pub fn estimate_tokens(messages: &[Message]) -> u32 {
    messages
        .iter()
        .map(|m| {
            let extra = if m.extra.is_empty() {
                0
            } else {
                serde_json::to_string(&m.extra).map_or(0, |s| s.len())
            };
            let bytes = (m.content.len() + extra) as u64;
            u32::try_from(bytes.div_ceil(4))
                .unwrap_or(u32::MAX)
                .saturating_add(MESSAGE_OVERHEAD_TOKENS)
                .saturating_add(MEDIA_PART_TOKENS.saturating_mul(u32::try_from(m.media_parts()).unwrap_or(u32::MAX)))
        })
        .fold(0u32, u32::saturating_add)
}

/// One chat request: what the caller asked, and which ladder should answer it.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    /// Identifies the session in events and recordings.
    pub session: Uuid,
    /// The model the caller asked for; routes whose model is `{model}` use it.
    pub model: Option<String>,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Request fields baton does not interpret (temperature, stop, tools …), passed upstream unchanged.
    pub params: Map<String, Value>,
    /// The client API it came through, when it came through one (the proxy's doors).
    pub door: Option<crate::door::Door>,
}

impl ChatRequest {
    /// A request for `messages` with a fresh session id and no extra parameters.
    pub fn new(messages: Vec<Message>) -> Self {
        ChatRequest {
            session: Uuid::new_v4(),
            model: None,
            messages,
            params: Map::new(),
            door: None,
        }
    }
}

/// Token counts reported by an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated, reasoning included.
    pub completion_tokens: u64,
    /// Of those, the tokens spent reasoning, when the upstream says
    /// (`completion_tokens_details.reasoning_tokens`); `None`: not reported
    /// (Anthropic counts thinking in its output tokens without a separate figure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// Prompt and completion tokens together, saturating (the figures are the upstream's).
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        // Upstreams report these figures: adding them up must not overflow.
        self.prompt_tokens = self.prompt_tokens.saturating_add(rhs.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(rhs.completion_tokens);
        // The sum of what was reported: an attempt that gave no figure adds none.
        self.reasoning_tokens = match (self.reasoning_tokens, rhs.reasoning_tokens) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_pushed_onto_parts_extends_the_last_text_part_or_adds_one() {
        let mut m = Message::with_content(Role::Assistant, json!([{"type": "text", "text": "Sure,"}]), Map::new())
            .expect("typed");
        m.push_text(" here");
        assert_eq!(m.content, "Sure, here");
        assert_eq!(m.parts, Some(vec![json!({"type": "text", "text": "Sure, here"})]));
        let mut m = Message::with_content(
            Role::User,
            json!([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]),
            Map::new(),
        )
        .expect("typed");
        m.push_text("more");
        assert_eq!(m.parts.as_ref().map(Vec::len), Some(2));
        assert_eq!(m.content, "more");
    }

    #[test]
    fn media_parts_count_a_fixed_cost_not_their_bytes() {
        let image = format!("data:image/png;base64,{}", "A".repeat(400_000));
        let m = Message::with_content(
            Role::User,
            json!([{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": image}}]),
            Map::new(),
        )
        .expect("typed");
        let tokens = estimate_tokens(&[m]);
        assert!(
            (MEDIA_PART_TOKENS..MEDIA_PART_TOKENS + 20).contains(&tokens),
            "{tokens}"
        );
    }
}
