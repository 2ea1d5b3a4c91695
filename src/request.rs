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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// Other fields (`name`, `tool_calls`, `tool_call_id` …), passed upstream unchanged.
    #[serde(flatten, default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            extra: Map::new(),
        }
    }
}

/// Tokens a message costs beyond its text (role, separators), as chat templates typically add.
pub const MESSAGE_OVERHEAD_TOKENS: u32 = 4;

/// A rough token count of `messages`: about four bytes of text per token plus a
/// small overhead per message. Deliberately tokenizer-free: it only has to be
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
}

impl ChatRequest {
    /// A request for `messages` with a fresh session id and no extra parameters.
    pub fn new(messages: Vec<Message>) -> Self {
        ChatRequest {
            session: Uuid::new_v4(),
            model: None,
            messages,
            params: Map::new(),
        }
    }
}

/// Token counts reported by an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        // Upstreams report these figures: adding them up must not overflow.
        self.prompt_tokens = self.prompt_tokens.saturating_add(rhs.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(rhs.completion_tokens);
    }
}
