//! Anthropic Messages API over SSE (`provider = "anthropic"`).
//!
//! The proxy still speaks OpenAI to its clients; this module turns a request
//! into Anthropic's shape (system prompt apart, `max_tokens` required) and its
//! stream (`message_start`, `content_block_delta`, `message_delta`,
//! `message_stop`, `ping`, `error`) into [`Chunk`]s. Continuation is native
//! prefill; Anthropic rejects a final assistant message that ends in
//! whitespace, so that whitespace is stripped here — the continuation then
//! starts with it, and the overlap trim's seam rule keeps exactly one.
//!
//! Extended thinking: a caller's `thinking` parameter is passed through, and
//! `thinking` blocks (their `thinking_delta`s) become [`Chunk::Reasoning`] in
//! [`ReasoningField::Thinking`], their `signature_delta`s
//! [`Chunk::ReasoningSignature`], and a `redacted_thinking` block one
//! [`Chunk::RedactedReasoning`]: reasoning activity with no text (its
//! encrypted `data` is never shown to a client nor sent to another model). Anthropic does not take a prefill with
//! thinking on, so a continuation is sent without it (see [`request_body`]).

use serde_json::{json, Map, Value};

use super::sse::{snippet, SseLimits};
use super::{Chunk, ChunkStream, Provider, ReasoningField, Unsupported, UpstreamRequest};
use crate::failure::FailureKind;
use crate::redact::Redactor;
use crate::request::{part_type, Message, Role, Usage};

/// The API version header sent with every request.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` when the client did not set one (Anthropic requires it).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;
/// The most bytes one `signature_delta` may carry: real signatures are a few
/// hundred bytes to a few KiB, and the core keeps them for the whole turn.
pub const MAX_SIGNATURE_BYTES: usize = 64 * 1024;

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
///
/// A caller's `thinking` (`{"type":"enabled","budget_tokens":N}`, `adaptive`, …)
/// goes through unchanged, with two exceptions Anthropic forces: it takes no
/// prefill with thinking on, so a request ending in an assistant message (a
/// continuation: the text has begun, the thinking is over) goes without it; and `max_tokens` must exceed
/// `budget_tokens`, so when the caller set no `max_tokens` the default grows
/// to leave [`DEFAULT_MAX_TOKENS`] for the answer. A `max_tokens` the caller
/// set is theirs: Anthropic's 400 tells them. (Anthropic also refuses
/// `temperature`/`top_k` with thinking on; those pass as the caller sent them.)
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
    let prefill = messages.last_mut().filter(|m| m["role"] == "assistant");
    let prefilling = prefill.is_some();
    if let Some(last) = prefill {
        trim_prefill(&mut last["content"]);
    }
    let params = &request.params;
    let thinking = params.get("thinking").filter(|_| !prefilling);
    let max_tokens = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| params.get(*k).and_then(Value::as_u64))
        .unwrap_or_else(|| default_max_tokens(thinking));
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
    if let Some(thinking) = thinking {
        body.insert("thinking".into(), thinking.clone());
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

/// `max_tokens` for a caller who set none: the default, above a thinking budget when one is set.
fn default_max_tokens(thinking: Option<&Value>) -> u64 {
    let budget = thinking
        .and_then(|t| t.get("budget_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if budget >= DEFAULT_MAX_TOKENS {
        budget.saturating_add(DEFAULT_MAX_TOKENS)
    } else {
        DEFAULT_MAX_TOKENS
    }
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
        // The Messages usage counts thinking inside `output_tokens` and gives no
        // separate figure; one guessed from the thinking text would not be a reported count.
        reasoning_tokens: None,
    };
    Ok(match kind {
        "message_start" => match value.pointer("/message/usage") {
            Some(u) => vec![Chunk::Usage(usage(u))],
            None => Vec::new(),
        },
        "content_block_start" => value.get("content_block").map_or(Ok(Vec::new()), block_start)?,
        "content_block_delta" => value.get("delta").map_or(Ok(Vec::new()), delta)?,
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
        // ping, content_block_stop and future event types carry no text.
        _ => Vec::new(),
    })
}

/// The chunks a `content_block_start` carries: a thinking block's opening text
/// (usually empty) and signature, a redacted block's opaque data. A text block's
/// start is empty in practice and its text comes in deltas; a `tool_use` or
/// an unknown block carries nothing baton forwards.
fn block_start(block: &Value) -> Result<Vec<Chunk>, FailureKind> {
    Ok(match block.get("type").and_then(Value::as_str).unwrap_or("") {
        "thinking" => {
            let mut out = Vec::new();
            if let Some(text) = block.get("thinking") {
                out.extend(reasoning(string(text, "thinking block's `thinking`")?));
            }
            if let Some(value) = block.get("signature") {
                out.extend(signature(value)?);
            }
            out
        }
        // Encrypted thinking: activity, not text (an absent or odd `data` is still the block).
        "redacted_thinking" => vec![Chunk::RedactedReasoning(super::Opaque(
            block
                .get("data")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        ))],
        _ => Vec::new(),
    })
}

/// The chunks a `content_block_delta` carries, by the delta's `type`. A
/// `thinking_delta` or `signature_delta` without its string is malformed (the
/// type promised it); any other delta is text when it has a `text` string, as
/// before thinking existed (`input_json_delta` and unknown deltas carry none).
fn delta(delta: &Value) -> Result<Vec<Chunk>, FailureKind> {
    let field = |name: &str| delta.get(name).unwrap_or(&Value::Null);
    Ok(match delta.get("type").and_then(Value::as_str).unwrap_or("") {
        "thinking_delta" => reasoning(string(field("thinking"), "`thinking_delta`'s `thinking`")?)
            .into_iter()
            .collect(),
        "signature_delta" => signature(field("signature"))?.into_iter().collect(),
        _ => match delta.get("text").and_then(Value::as_str) {
            Some(text) if !text.is_empty() => vec![Chunk::Text(text.to_string())],
            _ => Vec::new(),
        },
    })
}

/// `value` as a string, or malformed naming `what`.
fn string<'a>(value: &'a Value, what: &str) -> Result<&'a str, FailureKind> {
    value.as_str().ok_or_else(|| FailureKind::Malformed {
        detail: format!("{what} is not a string: {:?}", snippet(&value.to_string())),
    })
}

/// A thinking chunk for `text`, none for an empty one (the splicer counts chunks as tokens).
fn reasoning(text: &str) -> Option<Chunk> {
    (!text.is_empty()).then(|| Chunk::Reasoning {
        text: text.to_string(),
        field: ReasoningField::Thinking,
    })
}

/// A signature chunk, none for an empty one; a non-string is malformed and
/// one over [`MAX_SIGNATURE_BYTES`] too large (it is held for the whole turn).
fn signature(value: &Value) -> Result<Option<Chunk>, FailureKind> {
    let signature = string(value, "thinking signature")?;
    if signature.len() > MAX_SIGNATURE_BYTES {
        return Err(FailureKind::TooLarge {
            what: "thinking signature".into(),
            limit: MAX_SIGNATURE_BYTES as u64,
        });
    }
    Ok((!signature.is_empty()).then(|| Chunk::ReasoningSignature(signature.to_string())))
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
                    completion_tokens: 1,
                    reasoning_tokens: None,
                }),
                Chunk::Text("Héllo".into()),
                Chunk::Usage(Usage {
                    prompt_tokens: 0,
                    completion_tokens: 7,
                    reasoning_tokens: None,
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

    fn thinking(text: &str) -> Chunk {
        Chunk::Reasoning {
            text: text.into(),
            field: ReasoningField::Thinking,
        }
    }

    #[test]
    fn thinking_blocks_become_reasoning_with_their_signature_and_text_stays_the_answer() {
        let events = [
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":5,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me see: "}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"2+2=4."}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix/SECRET"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"text_delta","text":"Four."}}"#,
            r#"{"type":"content_block_stop","index":2}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":30}}"#,
            r#"{"type":"message_stop"}"#,
        ];
        let chunks: Vec<Chunk> = events
            .iter()
            .flat_map(|e| parse_event(e).expect("a well-formed event"))
            .collect();
        assert_eq!(
            chunks,
            vec![
                Chunk::Usage(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 1,
                    reasoning_tokens: None,
                }),
                thinking("Let me see: "),
                thinking("2+2=4."),
                Chunk::ReasoningSignature("EqQBCgIYAhIM1gbcDa9GJwZA".into()),
                Chunk::RedactedReasoning(crate::provider::Opaque("EmwKAhgBEgy3va3pzix/SECRET".into())),
                Chunk::Text("Four.".into()),
                Chunk::Usage(Usage {
                    prompt_tokens: 0,
                    completion_tokens: 30,
                    reasoning_tokens: None,
                }),
                Chunk::Finish("stop".into()),
                Chunk::Done,
            ]
        );
        assert!(
            !format!("{chunks:?}").contains("SECRET"),
            "a redacted block's encrypted data never shows in logs"
        );
        // It is no text of either channel.
        assert!(chunks.iter().all(|c| match c {
            Chunk::Text(t) | Chunk::Reasoning { text: t, .. } => !t.contains("SECRET") && !t.contains("redacted"),
            _ => true,
        }));
        // A block without its data is still a redacted block.
        let bare = r#"{"type":"content_block_start","index":0,"content_block":{"type":"redacted_thinking"}}"#;
        assert_eq!(
            parse_event(bare),
            Ok(vec![Chunk::RedactedReasoning(crate::provider::Opaque(String::new()))])
        );
        let opened = r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"Hmm","signature":"c2ln"}}"#;
        assert_eq!(
            parse_event(opened),
            Ok(vec![thinking("Hmm"), Chunk::ReasoningSignature("c2ln".into())])
        );
    }

    #[test]
    fn thinking_never_leaks_into_the_answer_and_unknown_blocks_and_deltas_are_ignored() {
        // A thinking delta that also has a `text` is still reasoning: its type decides.
        let both =
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"t","text":"x"}}"#;
        assert_eq!(parse_event(both), Ok(vec![thinking("t")]));
        for ignored in [
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"future_block","thinking":42}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":"not an object"}"#,
            r#"{"type":"content_block_start","index":0}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta","citation":{}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":7}}"#,
            r#"{"type":"content_block_delta","index":0}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":""}}"#,
        ] {
            assert_eq!(parse_event(ignored), Ok(vec![]), "{ignored}");
        }
    }

    #[test]
    fn hostile_thinking_is_malformed_and_a_huge_signature_too_large() {
        for malformed in [
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":42}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":["a"]}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":{"s":1}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta"}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":null}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":5}}"#,
        ] {
            assert!(
                matches!(parse_event(malformed), Err(FailureKind::Malformed { .. })),
                "{malformed}: {:?}",
                parse_event(malformed)
            );
        }
        let signed = |n: usize| {
            format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"signature_delta","signature":"{}"}}}}"#,
                "A".repeat(n)
            )
        };
        assert_eq!(
            parse_event(&signed(MAX_SIGNATURE_BYTES)),
            Ok(vec![Chunk::ReasoningSignature("A".repeat(MAX_SIGNATURE_BYTES))])
        );
        let error = parse_event(&signed(MAX_SIGNATURE_BYTES + 1)).expect_err("over the cap");
        assert_eq!(
            error,
            FailureKind::TooLarge {
                what: "thinking signature".into(),
                limit: MAX_SIGNATURE_BYTES as u64
            }
        );
        let long_start = format!(
            r#"{{"type":"content_block_start","index":0,"content_block":{{"type":"thinking","thinking":"","signature":"{}"}}}}"#,
            "A".repeat(MAX_SIGNATURE_BYTES + 1)
        );
        assert!(matches!(parse_event(&long_start), Err(FailureKind::TooLarge { .. })));
    }

    /// The chunks of an SSE `body` delivered in reads of `split` bytes, through the provider's decoder.
    fn decoded(body: &str, split: usize) -> Vec<Result<Chunk, FailureKind>> {
        use futures::StreamExt;
        let reads: Vec<Result<bytes::Bytes, std::io::Error>> = body
            .as_bytes()
            .chunks(split)
            .map(|b| Ok(bytes::Bytes::copy_from_slice(b)))
            .collect();
        let stream =
            super::super::sse::decode_body(futures::stream::iter(reads), parse_sse_event, SseLimits::default());
        futures::executor::block_on(stream.collect())
    }

    #[test]
    fn a_thinking_stream_on_the_wire_keeps_its_order_and_a_huge_signature_ends_it() {
        let event = |name: &str, data: &str| format!("event: {name}\ndata: {data}\n\n");
        let body = [
            event(
                "message_start",
                r#"{"type":"message_start","message":{"usage":{"input_tokens":3,"output_tokens":1}}}"#,
            ),
            event(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            ),
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Hmm, é…"}}"#,
            ),
            event("ping", r#"{"type":"ping"}"#),
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2lnbmVk"}}"#,
            ),
            event(
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
            ),
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Yes."}}"#,
            ),
            event(
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":9}}"#,
            ),
            event("message_stop", r#"{"type":"message_stop"}"#),
        ]
        .concat();
        let expected = vec![
            Ok(Chunk::Usage(Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
                reasoning_tokens: None,
            })),
            Ok(thinking("Hmm, é…")),
            Ok(Chunk::ReasoningSignature("c2lnbmVk".into())),
            Ok(Chunk::Text("Yes.".into())),
            Ok(Chunk::Usage(Usage {
                prompt_tokens: 0,
                completion_tokens: 9,
                reasoning_tokens: None,
            })),
            Ok(Chunk::Finish("length".into())),
            Ok(Chunk::Done),
        ];
        // Reads of 7 bytes split events, lines and the UTF-8 of "é…" alike.
        for split in [body.len(), 7] {
            assert_eq!(decoded(&body, split), expected, "reads of {split} bytes");
        }
        let huge = format!(
            r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"signature_delta","signature":"{}"}}}}"#,
            "A".repeat(MAX_SIGNATURE_BYTES + 1)
        );
        let cut = [
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"so"}}"#,
            ),
            event("content_block_delta", &huge),
            event(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"never"}}"#,
            ),
        ]
        .concat();
        assert_eq!(
            decoded(&cut, 4096),
            vec![
                Ok(thinking("so")),
                Err(FailureKind::TooLarge {
                    what: "thinking signature".into(),
                    limit: MAX_SIGNATURE_BYTES as u64,
                }),
            ]
        );
    }

    fn with_params(messages: Vec<Message>, params: Value) -> UpstreamRequest {
        UpstreamRequest {
            params: params.as_object().cloned().expect("an object"),
            ..request(messages)
        }
    }

    #[test]
    fn thinking_passes_through_a_default_max_tokens_grows_past_its_budget_and_a_prefill_goes_without() {
        let ask = || vec![Message::new(Role::User, "Prove it")];
        let enabled = json!({"type": "enabled", "budget_tokens": 10_000});
        let body = request_body(&with_params(ask(), json!({"thinking": enabled}))).expect("text only");
        assert_eq!(body["thinking"], enabled, "passed through unchanged");
        assert_eq!(body["max_tokens"], 10_000 + DEFAULT_MAX_TOKENS, "above the budget");
        let small = json!({"type": "enabled", "budget_tokens": 1024});
        let body = request_body(&with_params(ask(), json!({"thinking": small}))).expect("text only");
        assert_eq!(
            body["max_tokens"], DEFAULT_MAX_TOKENS,
            "the default is already above it"
        );
        let set = json!({"thinking": enabled, "max_tokens": 2000});
        let body = request_body(&with_params(ask(), set)).expect("text only");
        assert_eq!(body["max_tokens"], 2000, "the caller's own max_tokens is kept");
        let adaptive = json!({"type": "adaptive"});
        let body = request_body(&with_params(ask(), json!({"thinking": adaptive}))).expect("text only");
        assert_eq!(body["thinking"], adaptive);
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        let body = request_body(&with_params(ask(), json!({}))).expect("text only");
        assert!(body.get("thinking").is_none());
        // A continuation prefills the answer, which Anthropic refuses with thinking on.
        let mut continuation = ask();
        continuation.push(Message::new(Role::Assistant, "Suppose not. "));
        let body = request_body(&with_params(continuation, json!({"thinking": enabled}))).expect("text only");
        assert!(body.get("thinking").is_none(), "{body}");
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["messages"][1]["content"], "Suppose not.");
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
