//! Upstream providers: one module per wire format, one trait for the splicer.
//!
//! A provider turns an [`UpstreamRequest`] into a stream of [`Chunk`]s. It
//! never retries by itself: retries and handovers belong to the ladder.

pub mod anthropic;
pub mod openai;
pub mod sse;
pub mod think_tags;
pub mod tool_calls;

use std::pin::Pin;

use futures::Stream;
use serde_json::{Map, Value};

use crate::failure::FailureKind;
use crate::request::{Message, Usage};

/// What one attempt sends upstream.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpstreamRequest {
    /// The upstream's model name.
    pub model: String,
    /// The conversation, continuation included.
    pub messages: Vec<Message>,
    /// Pass-through request fields.
    pub params: Map<String, Value>,
    /// Ask a vLLM/SGLang-style server to continue the final assistant message
    /// (`continue_final_message: true, add_generation_prompt: false`).
    pub continue_final_message: bool,
}

/// Which field a reasoning delta came in, so the client gets it the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningField {
    /// `reasoning_content` (DeepSeek, vLLM, SGLang, Qwen …).
    #[default]
    ReasoningContent,
    /// `reasoning` (OpenRouter, Ollama, gpt-oss …).
    Reasoning,
    /// An Anthropic `thinking` block.
    Thinking,
}

/// One piece of an upstream stream, already parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Response headers arrived with a success status.
    Opened,
    /// Content text.
    Text(String),
    /// Reasoning text: the model thinking before (or while) it answers, never the answer.
    Reasoning {
        /// The text.
        text: String,
        /// The field it came in.
        field: ReasoningField,
    },
    /// An Anthropic thinking block's signature: only valid for the model that signed it, never forwarded to another.
    ReasoningSignature(String),
    /// An Anthropic `redacted_thinking` block: reasoning with no text to show,
    /// its encrypted `data` of use to the model that wrote it alone (never
    /// forwarded to another provider, never sent to a client).
    RedactedReasoning(Opaque),
    /// Tool-call deltas, as the upstream sent them.
    ToolCalls(Vec<serde_json::Value>),
    /// The upstream's finish reason (`stop`, `length`, `content_filter`, …).
    Finish(String),
    /// Token counts.
    Usage(Usage),
    /// The `[DONE]` sentinel.
    Done,
}

/// Bytes baton carries but never shows: `Debug` gives their length only.
#[derive(Clone, PartialEq, Eq)]
pub struct Opaque(pub String);

impl std::fmt::Debug for Opaque {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opaque({} bytes)", self.0.len())
    }
}

/// The stream a provider returns: chunks, or the failure that ended it.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, FailureKind>> + Send>>;

/// Why a provider cannot send a conversation in its wire format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// A content part the wire has no equivalent for (e.g. `input_audio` to Anthropic).
    #[error("messages[{message}].content[{part}] has type `{kind}`, which {provider} cannot take")]
    Part {
        /// The message's position in the conversation.
        message: usize,
        /// The part's position in the message's content.
        part: usize,
        /// The part's `type`.
        kind: String,
        /// The wire's name.
        provider: &'static str,
    },
    /// An `image_url` part whose URL is neither a base64 data URL nor http(s).
    #[error(
        "messages[{message}].content[{part}]: {provider} takes images as base64 data URLs or http(s) URLs, not a {scheme:?} URL"
    )]
    ImageUrl {
        /// The message's position in the conversation.
        message: usize,
        /// The part's position in the message's content.
        part: usize,
        /// The URL's scheme, or its start: never the rest, which may hold a token.
        scheme: String,
        /// The wire's name.
        provider: &'static str,
    },
}

impl Unsupported {
    /// The failure of an attempt that was never sent because of it.
    pub fn failure(&self) -> FailureKind {
        FailureKind::Rejected {
            status: 400,
            message: self.to_string(),
            code: Some("unsupported_content".to_string()),
        }
    }
}

/// A source of upstream token streams.
pub trait Provider: Send + Sync {
    /// Starts one attempt. Dropping the stream cancels it.
    fn stream(&self, request: UpstreamRequest) -> ChunkStream;

    /// Whether the wire can carry `messages` (every content part); the proxy
    /// asks before a session starts, so a client learns it with a 400.
    fn check(&self, _messages: &[Message]) -> Result<(), Unsupported> {
        Ok(())
    }

    /// Whether a continuation in `mode` reaches the upstream with the
    /// prefix's trailing whitespace stripped, so the continuation gives it back.
    fn strips_trailing_whitespace(&self, _mode: crate::continuation::ContinuationMode) -> bool {
        false
    }
}
