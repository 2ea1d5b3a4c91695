//! Anthropic Messages API over SSE (`provider = "anthropic"`).
//!
//! The proxy still speaks OpenAI to its clients; this module turns a request
//! into Anthropic's shape (system prompt apart, `max_tokens` required) and its
//! stream (`message_start`, `content_block_delta`, `message_delta`,
//! `message_stop`, `ping`, `error`) into [`Chunk`]s. Continuation is native
//! prefill; Anthropic rejects a final assistant message that ends in
//! whitespace, so that whitespace is stripped here — the continuation then
//! starts with it, and the overlap trim's seam rule keeps exactly one.

use serde_json::{json, Map, Value};

use super::sse::{snippet, SseLimits};
use super::{Chunk, ChunkStream, Provider, Unsupported, UpstreamRequest};
use crate::failure::FailureKind;
use crate::redact::Redactor;
use crate::request::{part_type, Message, Role, Usage};

/// The API version header sent with every request.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when the client did not set one (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// A provider speaking the Anthropic Messages streaming protocol.
#[derive(Clone)]
pub struct AnthropicProvider {
    client: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
    /// Caps on what the upstream may send in one line or event.
    limits: SseLimits,
    /// Scrubs secrets (this route's key at least) from every failure's text.
    redactor: Redactor,
}

impl std::fmt::Debug for AnthropicProvider {
    // The key is deliberately left out: secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// A provider for `base_url` (e.g. `https://api.anthropic.com/v1`), with an optional key.
    pub fn new(client: reqwest::Client, base_url: &str, api_key: Option<String>) -> Self {
        AnthropicProvider {
            client,
            endpoint: format!("{}/messages", base_url.trim_end_matches('/')),
            redactor: Redactor::new(api_key.iter()),
            api_key,
            limits: SseLimits::default(),
        }
    }

    /// The same provider, also redacting `redactor`'s secrets (the config's other keys).
    pub fn with_redactor(mut self, redactor: &Redactor) -> Self {
        self.redactor = self.redactor.union(redactor);
        self
    }

    /// The same provider with other caps on the size of a line and an event.
    pub fn with_limits(mut self, limits: SseLimits) -> Self {
        self.limits = limits;
        self
    }
}

/// The wire's name in errors.
const WIRE: &str = "the Anthropic Messages API";

/// The JSON body sent upstream for `request`, or the content part Anthropic cannot take.
pub fn request_body(request: &UpstreamRequest) -> Result<Value, Unsupported> {
    let mut system: Vec<&str> = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    for (i, m) in request.messages.iter().enumerate() {
        let blocks: Option<Vec<Block>> = m
            .parts
            .as_ref()
            .map(|parts| {
                parts
                    .iter()
                    .enumerate()
                    .map(|(j, p)| Block::of(i, m.role, j, p))
                    .collect()
            })
            .transpose()?;
        if matches!(m.role, Role::System | Role::Developer) {
            system.push(m.content.as_str());
            continue;
        }
        let role = if m.role == Role::Assistant { "assistant" } else { "user" };
        let content = match blocks {
            None => json!(m.content),
            Some(blocks) => Value::Array(blocks.iter().map(Block::to_json).collect()),
        };
        messages.push(json!({"role": role, "content": content}));
    }
    // A prefill may not end in whitespace.
    if let Some(last) = messages.last_mut().filter(|m| m["role"] == "assistant") {
        trim_prefill(&mut last["content"]);
    }
    let params = &request.params;
    let max_tokens = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| params.get(*k).and_then(Value::as_u64))
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert("max_tokens".into(), json!(max_tokens));
    body.insert("messages".into(), json!(messages));
    body.insert("stream".into(), json!(true));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    for key in ["temperature", "top_p", "top_k", "metadata"] {
        if let Some(v) = params.get(key) {
            body.insert(key.into(), v.clone());
        }
    }
    match params.get("stop") {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(list @ Value::Array(_)) => {
            body.insert("stop_sequences".into(), list.clone());
        }
        _ => {}
    }
    Ok(Value::Object(body))
}

/// Strips the whitespace ending a prefill: the whole string, or its last block when that is text.
fn trim_prefill(content: &mut Value) {
    let text = match content {
        Value::Array(blocks) => blocks
            .last_mut()
            .filter(|b| b["type"] == "text")
            .and_then(|b| b.get_mut("text")),
        other => Some(other),
    };
    if let Some(Value::String(s)) = text {
        s.truncate(s.trim_end().len());
    }
}

/// An OpenAI content part as Anthropic can take it, borrowed from the request.
enum Block<'a> {
    /// A text block.
    Text(&'a str),
    /// An image given inline: `data:<media_type>;base64,<data>`.
    Base64 { media_type: &'a str, data: &'a str },
    /// An image at an http(s) URL.
    Url(&'a str),
}

impl<'a> Block<'a> {
    /// Part `j` of message `i` (written by `role`), or why Anthropic cannot take it.
    fn of(i: usize, role: Role, j: usize, part: &'a Value) -> Result<Self, Unsupported> {
        let kind = part_type(part).unwrap_or("");
        let unsupported = || Unsupported::Part {
            message: i,
            part: j,
            kind: kind.to_string(),
            provider: WIRE,
        };
        match kind {
            "text" => Ok(Block::Text(part.get("text").and_then(Value::as_str).unwrap_or(""))),
            // Anthropic's system prompt is text only.
            _ if matches!(role, Role::System | Role::Developer) => Err(unsupported()),
            "image_url" => {
                let url = part
                    .pointer("/image_url/url")
                    .or_else(|| part.get("image_url"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                Block::image(url).ok_or_else(|| Unsupported::ImageUrl {
                    message: i,
                    part: j,
                    scheme: url.split(':').next().unwrap_or("").chars().take(16).collect(),
                    provider: WIRE,
                })
            }
            _ => Err(unsupported()),
        }
    }

    /// The image block for `url`: base64 for a `data:<type>;base64,` URL, a URL source for http(s).
    fn image(url: &'a str) -> Option<Self> {
        if let Some(rest) = url.strip_prefix("data:") {
            let (head, data) = rest.split_once(',')?;
            let media_type = head.strip_suffix(";base64")?;
            let media_type = media_type.split(';').next().filter(|t| !t.is_empty())?;
            return Some(Block::Base64 { media_type, data });
        }
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        matches!(scheme.as_deref(), Some("http" | "https")).then_some(Block::Url(url))
    }

    fn to_json(&self) -> Value {
        match self {
            Block::Text(text) => json!({"type": "text", "text": text}),
            Block::Base64 { media_type, data } => {
                json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
            }
            Block::Url(url) => json!({"type": "image", "source": {"type": "url", "url": url}}),
        }
    }
}

impl Provider for AnthropicProvider {
    /// Anthropic rejects a prefill ending in whitespace, so [`trim_prefill`] strips it.
    fn strips_trailing_whitespace(&self, mode: crate::continuation::ContinuationMode) -> bool {
        mode == crate::continuation::ContinuationMode::Prefill
    }

    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let body = match request_body(&request) {
            Ok(body) => body,
            // Never sent: a library caller's ladder moves on as after any rejection.
            Err(unsupported) => return Box::pin(futures::stream::once(async move { Err(unsupported.failure()) })),
        };
        let mut builder = self
            .client
            .post(&self.endpoint)
            .header("anthropic-version", API_VERSION)
            .json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.header("x-api-key", key);
        }
        super::sse::stream(builder, parse_sse_event, self.limits, self.redactor.clone())
    }

    fn check(&self, messages: &[Message]) -> Result<(), Unsupported> {
        for (i, m) in messages.iter().enumerate() {
            for (j, part) in m.parts.iter().flatten().enumerate() {
                Block::of(i, m.role, j, part)?;
            }
        }
        Ok(())
    }
}

/// Parses one SSE event of an Anthropic stream: the `type` inside its data
/// names it, so the SSE event name is not needed.
pub fn parse_sse_event(_event: &str, data: &str) -> Result<Vec<Chunk>, FailureKind> {
    parse_event(data)
}

/// OpenAI's name for an Anthropic stop reason.
fn finish_reason(stop: &str) -> &str {
    match stop {
        "end_turn" | "stop_sequence" | "pause_turn" => "stop",
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => other,
    }
}

/// Parses the `data:` payload of one Anthropic stream event (its `type` names the event).
pub fn parse_event(data: &str) -> Result<Vec<Chunk>, FailureKind> {
    let value: Value = serde_json::from_str(data).map_err(|e| FailureKind::Malformed {
        detail: format!("{e} in {:?}", snippet(data)),
    })?;
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    let usage = |u: &Value| Usage {
        prompt_tokens: u.get("input_tokens").and_then(Value::as_u64).unwrap_or(0),
        completion_tokens: u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
    };
    Ok(match kind {
        "message_start" => match value.pointer("/message/usage") {
            Some(u) => vec![Chunk::Usage(usage(u))],
            None => Vec::new(),
        },
        "content_block_delta" => match value.pointer("/delta/text").and_then(Value::as_str) {
            Some(text) if !text.is_empty() => vec![Chunk::Text(text.to_string())],
            _ => Vec::new(),
        },
        "message_delta" => {
            let mut out = Vec::new();
            if let Some(u) = value.get("usage") {
                out.push(Chunk::Usage(usage(u)));
            }
            if let Some(stop) = value.pointer("/delta/stop_reason").and_then(Value::as_str) {
                out.push(Chunk::Finish(finish_reason(stop).to_string()));
            }
            out
        }
        "message_stop" => vec![Chunk::Done],
        "error" => {
            let message = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map_or_else(|| snippet(data), str::to_string);
            return Err(FailureKind::ErrorEvent { message });
        }
        // ping, content_block_start/stop and future event types carry no text.
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_becomes_chunks() {
        let events = [
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":12,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Héllo"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let chunks: Vec<Chunk> = events.iter().flat_map(|e| parse_event(e).unwrap_or_default()).collect();
        assert_eq!(
            chunks,
            vec![
                Chunk::Usage(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 1
                }),
                Chunk::Text("Héllo".into()),
                Chunk::Usage(Usage {
                    prompt_tokens: 0,
                    completion_tokens: 7
                }),
                Chunk::Finish("stop".into()),
                Chunk::Done,
            ]
        );
        let overloaded = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            parse_event(overloaded),
            Err(FailureKind::ErrorEvent {
                message: "Overloaded".into()
            })
        );
        assert!(matches!(parse_event("{nope"), Err(FailureKind::Malformed { .. })));
    }

    #[test]
    fn requests_take_anthropics_shape_and_a_prefill_loses_its_trailing_space() {
        let request = UpstreamRequest {
            model: "claude".into(),
            messages: vec![
                Message::new(Role::System, "persona"),
                Message::new(Role::User, "hi"),
                Message::new(Role::Assistant, "Half an answer "),
            ],
            params: serde_json::from_str(r#"{"temperature":0.5,"stop":"END","max_tokens":99,"tools":[]}"#)
                .unwrap_or_default(),
            continue_final_message: false,
        };
        let body = request_body(&request).expect("text only");
        assert_eq!(body["system"], "persona");
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(2));
        assert_eq!(body["messages"][1]["content"], "Half an answer");
        assert_eq!(body["max_tokens"], 99);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["temperature"], 0.5);
        assert!(
            body.get("tools").is_none(),
            "OpenAI-shaped tools are not sent to Anthropic"
        );
    }

    fn with_parts(role: Role, parts: Value) -> Message {
        Message::with_content(role, parts, Map::new()).expect("typed parts")
    }

    fn request(messages: Vec<Message>) -> UpstreamRequest {
        UpstreamRequest {
            model: "claude".into(),
            messages,
            params: Map::new(),
            continue_final_message: false,
        }
    }

    #[test]
    fn images_become_base64_or_url_sources_and_text_parts_stay_blocks() {
        let user = with_parts(
            Role::User,
            json!([
                {"type": "text", "text": "Hello"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "world"},
            ]),
        );
        let prefill = with_parts(Role::Assistant, json!([{"type": "text", "text": "It is "}]));
        let body = request_body(&request(vec![user, prefill])).expect("Anthropic takes text and images");
        assert_eq!(
            body["messages"][0]["content"],
            json!([
                {"type": "text", "text": "Hello"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "world"},
            ])
        );
        assert_eq!(
            body["messages"][1]["content"],
            json!([{"type": "text", "text": "It is"}])
        );
        let provider = AnthropicProvider::new(reqwest::Client::new(), "http://127.0.0.1:9/v1", None);
        assert_eq!(provider.check(&request(vec![]).messages), Ok(()));
    }

    #[test]
    fn parts_anthropic_cannot_take_are_named() {
        let audio = with_parts(
            Role::User,
            json!([{"type": "text", "text": "listen"}, {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]),
        );
        let conversation = vec![Message::new(Role::System, "persona"), audio];
        let error = request_body(&request(conversation.clone())).expect_err("no audio on Anthropic");
        assert_eq!(
            error,
            Unsupported::Part {
                message: 1,
                part: 1,
                kind: "input_audio".into(),
                provider: WIRE
            }
        );
        assert!(error.to_string().contains("`input_audio`"), "{error}");
        let provider = AnthropicProvider::new(reqwest::Client::new(), "http://127.0.0.1:9/v1", None);
        assert_eq!(provider.check(&conversation), Err(error));
        let ftp = with_parts(
            Role::User,
            json!([{"type": "image_url", "image_url": {"url": "ftp://user:token@host/x.png"}}]),
        );
        let error = request_body(&request(vec![ftp])).expect_err("no ftp images");
        assert!(matches!(
            error,
            Unsupported::ImageUrl {
                message: 0,
                part: 0,
                ..
            }
        ));
        assert!(
            error.to_string().contains("\"ftp\"") && !error.to_string().contains("token"),
            "only the scheme is echoed: {error}"
        );
        let system_image = with_parts(
            Role::System,
            json!([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]),
        );
        assert!(matches!(
            provider.check(&[system_image]),
            Err(Unsupported::Part {
                message: 0,
                part: 0,
                ..
            })
        ));
    }
}
