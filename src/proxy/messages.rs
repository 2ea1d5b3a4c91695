//! The Anthropic Messages door, `POST /v1/messages`: its request translated
//! into baton's chat-shaped [`ParsedRequest`] (the inverse of what the
//! Anthropic upstream provider does, so an Anthropic route behind this door
//! round-trips), the spliced items encoded as Messages stream events
//! ([`MessagesEncoder`]), the whole answer as a message object
//! ([`message_object`]), and errors in Anthropic's shape ([`error_response`]).
//!
//! What it does not take: `document` and `search_result` blocks, server tools
//! (web search, code execution …), `container` and `mcp_servers`. Thinking
//! blocks sent back in history are dropped (no chat upstream takes them), and
//! a streamed thinking block carries no signature (baton has none to give).

use std::fmt::Write as _;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use serde_json::{json, Map, Value};

use super::encode::{Answer, ClientEncoder, Flow};
use super::wire::{self, ApiError, ParsedRequest};
use crate::engine::splice::ClientItem;
use crate::request::{Message, Role};
use crate::usage::Tally;

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

/// Parses a `POST /v1/messages` body into the chat-shaped request every ladder takes.
pub fn parse_request(body: &[u8]) -> Result<ParsedRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(bad("invalid_request", "the request body must be a JSON object"));
    };
    let model = match object.remove("model") {
        Some(Value::String(m)) if !m.is_empty() => m,
        Some(_) => return Err(bad("invalid_model", "`model` must be a non-empty string")),
        None => return Err(bad("missing_model", "`model` is required")),
    };
    let stream = match object.remove("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(bad("invalid_stream", "`stream` must be true or false")),
    };
    // Anthropic requires it; so does this door, so a client that works here works there.
    match object.get("max_tokens") {
        Some(v) if v.as_u64().is_some_and(|n| n > 0) => {}
        Some(_) => return Err(bad("invalid_max_tokens", "`max_tokens` must be a positive integer")),
        None => return Err(bad("missing_max_tokens", "`max_tokens` is required")),
    }
    let mut messages = Vec::new();
    match object.remove("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(Message::new(Role::System, s)),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (j, block) in blocks.iter().enumerate() {
                match (
                    block.get("type").and_then(Value::as_str),
                    block.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(text)) => texts.push(text),
                    _ => {
                        return Err(bad(
                            "invalid_system",
                            format!("`system[{j}]` must be a text block with a string `text`"),
                        ))
                    }
                }
            }
            messages.push(Message::new(Role::System, texts.join("\n\n")));
        }
        Some(_) => {
            return Err(bad(
                "invalid_system",
                "`system` must be a string or an array of text blocks",
            ))
        }
    }
    match object.remove("messages") {
        Some(Value::Array(list)) if !list.is_empty() => {
            for (i, m) in list.iter().enumerate() {
                message(i, m, &mut messages)?;
            }
        }
        Some(Value::Array(_)) => return Err(bad("invalid_messages", "`messages` must not be empty")),
        Some(_) => return Err(bad("invalid_messages", "`messages` must be an array")),
        None => return Err(bad("missing_messages", "`messages` is required")),
    }
    let params = params(object)?;
    Ok(ParsedRequest {
        model,
        messages,
        params,
        stream,
        include_usage: true,
    })
}

/// Appends the chat messages of the Messages message `m` (the `i`-th) to `messages`.
fn message(i: usize, m: &Value, messages: &mut Vec<Message>) -> Result<(), ApiError> {
    let invalid = |what: String| bad("invalid_messages", format!("`messages[{i}]`: {what}"));
    let role = match m.get("role").and_then(Value::as_str) {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some(other) => return Err(invalid(format!("unknown role {other:?} (user or assistant)"))),
        None => return Err(invalid("`role` is required".into())),
    };
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            messages.push(Message::new(role, s.clone()));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(invalid("`content` must be a string or an array of blocks".into())),
    };
    let mut parts = Vec::with_capacity(blocks.len());
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let field = |key: &str| block.get(key).and_then(Value::as_str);
        match (role, field("type")) {
            (_, Some("text")) => match field("text") {
                Some(text) => parts.push(json!({"type": "text", "text": text})),
                None => return Err(invalid(format!("content block {j} has no string `text`"))),
            },
            (Role::User, Some("image")) => {
                parts.push(image(block).map_err(|e| invalid(format!("content block {j}: {e}")))?)
            }
            (Role::Assistant, Some("tool_use")) => {
                let (Some(id), Some(name)) = (field("id"), field("name")) else {
                    return Err(invalid(format!("`tool_use` block {j} needs string `id` and `name`")));
                };
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            (Role::User, Some("tool_result")) => {
                let Some(id) = field("tool_use_id") else {
                    return Err(invalid(format!("`tool_result` block {j} needs a string `tool_use_id`")));
                };
                let mut output = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => {
                        let mut texts = Vec::with_capacity(inner.len());
                        for (k, b) in inner.iter().enumerate() {
                            match (b.get("type").and_then(Value::as_str), b.get("text").and_then(Value::as_str)) {
                                (Some("text"), Some(t)) => texts.push(t),
                                _ => {
                                    return Err(invalid(format!(
                                        "`tool_result` block {j}: content block {k} is not text (only text tool results are supported)"
                                    )))
                                }
                            }
                        }
                        texts.join("\n")
                    }
                    Some(_) => {
                        return Err(invalid(format!(
                            "`tool_result` block {j}: `content` must be a string or text blocks"
                        )))
                    }
                };
                if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                    output.insert_str(0, "Error: ");
                }
                // Chat wants tool results as their own messages, before the user's words.
                let mut extra = Map::new();
                extra.insert("tool_call_id".into(), json!(id));
                messages.push(Message {
                    role: Role::Tool,
                    content: output,
                    parts: None,
                    extra,
                });
            }
            // The model's own thinking from an earlier turn: no chat upstream takes it back.
            (Role::Assistant, Some("thinking" | "redacted_thinking")) => {}
            (_, Some(other)) => {
                return Err(invalid(format!(
                    "content blocks of type {other:?} are not supported in {} messages",
                    if role == Role::User { "user" } else { "assistant" }
                )))
            }
            (_, None) => return Err(invalid(format!("content block {j} has no string `type`"))),
        }
    }
    if parts.is_empty() && calls.is_empty() {
        // Only tool results (or only dropped thinking): nothing more to say.
        return Ok(());
    }
    // Text alone goes as one string: every upstream takes that for every role.
    let content = if parts.iter().all(|p| p["type"] == "text") {
        let texts: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        json!(texts.join("\n"))
    } else {
        Value::Array(parts)
    };
    let mut extra = Map::new();
    if !calls.is_empty() {
        extra.insert("tool_calls".into(), Value::Array(calls));
    }
    let message = Message::with_content(role, content, extra).map_err(|e| invalid(e.to_string()))?;
    messages.push(message);
    Ok(())
}

/// An Anthropic image block as a chat `image_url` part.
fn image(block: &Value) -> Result<Value, String> {
    let source = block.get("source").ok_or("an image needs a `source`")?;
    let field = |key: &str| source.get(key).and_then(Value::as_str);
    let url = match field("type") {
        Some("base64") => match (field("media_type"), field("data")) {
            (Some(media), Some(data)) => format!("data:{media};base64,{data}"),
            _ => return Err("a base64 image needs string `media_type` and `data`".into()),
        },
        Some("url") => field("url").ok_or("a url image needs a string `url`")?.to_string(),
        other => {
            return Err(format!(
                "image sources of type {other:?} are not supported (base64 or url)"
            ))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// The chat parameters of the Messages fields left in `object`.
fn params(mut object: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut params = Map::new();
    for key in ["max_tokens", "temperature", "top_p", "top_k"] {
        if let Some(v) = object.remove(key).filter(|v| !v.is_null()) {
            params.insert(key.into(), v);
        }
    }
    match object.remove("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            if !list.is_empty() {
                params.insert("stop".into(), Value::Array(list));
            }
        }
        Some(_) => {
            return Err(bad(
                "invalid_stop_sequences",
                "`stop_sequences` must be an array of strings",
            ))
        }
    }
    if let Some(user) = object
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .filter(|u| u.is_string())
    {
        params.insert("user".into(), user.clone());
    }
    match object.remove("thinking") {
        None | Some(Value::Null) => {}
        Some(thinking) => match thinking.get("type").and_then(Value::as_str) {
            // As sent: the Anthropic upstream provider passes `thinking` on.
            Some("enabled") if thinking.get("budget_tokens").is_some_and(Value::is_u64) => {
                params.insert("thinking".into(), thinking);
            }
            Some("disabled") => {}
            _ => {
                return Err(bad(
                    "invalid_thinking",
                    "`thinking` must be {\"type\": \"enabled\", \"budget_tokens\": N} or {\"type\": \"disabled\"}",
                ))
            }
        },
    }
    match object.remove("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            let mut out = Vec::with_capacity(tools.len());
            for (i, tool) in tools.iter().enumerate() {
                if let Some(kind) = tool.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
                    return Err(bad(
                        "unsupported_tool",
                        format!(
                            "`tools[{i}]` is of type {kind:?}: baton passes only client tools (name, input_schema)"
                        ),
                    ));
                }
                let Some(name) = tool.get("name").and_then(Value::as_str) else {
                    return Err(bad("invalid_tools", format!("`tools[{i}]` needs a string `name`")));
                };
                let mut function = json!({"name": name});
                if let Some(d) = tool.get("description").filter(|d| d.is_string()) {
                    function["description"] = d.clone();
                }
                function["parameters"] = tool
                    .get("input_schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"}));
                out.push(json!({"type": "function", "function": function}));
            }
            if !out.is_empty() {
                params.insert("tools".into(), Value::Array(out));
            }
        }
        Some(_) => return Err(bad("invalid_tools", "`tools` must be an array")),
    }
    match object.remove("tool_choice") {
        None | Some(Value::Null) => {}
        Some(choice) => {
            let translated = match choice.get("type").and_then(Value::as_str) {
                Some("auto") => json!("auto"),
                Some("any") => json!("required"),
                Some("none") => json!("none"),
                Some("tool") => match choice.get("name").and_then(Value::as_str) {
                    Some(name) => json!({"type": "function", "function": {"name": name}}),
                    None => return Err(bad("invalid_tool_choice", "a `tool` `tool_choice` needs a `name`")),
                },
                _ => {
                    return Err(bad(
                        "invalid_tool_choice",
                        format!("`tool_choice` {choice} is not supported (auto, any, none or tool)"),
                    ))
                }
            };
            if choice.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
                params.insert("parallel_tool_calls".into(), json!(false));
            }
            params.insert("tool_choice".into(), translated);
        }
    }
    // The rest (`metadata` itself, `service_tier`, `container` …) means nothing to a chat upstream.
    Ok(params)
}

/// Anthropic's error `type` for an HTTP status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The Anthropic-shaped body of `error`: `{"type":"error","error":{"type","message"}}`.
pub fn error_body(error: &ApiError) -> Value {
    json!({"type": "error", "error": {"type": error_type(error.status), "message": error.message}})
}

/// `error` as Anthropic's SDKs read it, with the headers OpenAI's shape gets (`Retry-After`, `x-should-retry`).
pub fn error_response(error: ApiError) -> Response {
    let body = error_body(&error).to_string();
    let (mut parts, _) = error.into_response().into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// The kind of the content block open in a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Thinking,
    Text,
}

/// The Anthropic Messages SSE encoder: one `message_start`, content block
/// indices that continue across handovers, `message_stop` only for an answer.
#[derive(Clone, Debug)]
pub struct MessagesEncoder {
    id: String,
    model: String,
    started: bool,
    open: Option<(Kind, usize)>,
    next: usize,
}

impl MessagesEncoder {
    /// An encoder for the message `id` to a request for `model`.
    pub fn new(id: &str, model: &str) -> Self {
        MessagesEncoder {
            id: id.to_string(),
            model: model.to_string(),
            started: false,
            open: None,
            next: 0,
        }
    }

    /// Appends one event: `event: <type>` and its JSON.
    fn event(kind: &'static str, mut data: Value, out: &mut BytesMut) {
        data["type"] = json!(kind);
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let _ = serde_json::to_writer(bytes::BufMut::writer(&mut *out), &data);
        out.extend_from_slice(b"\n\n");
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        Self::event("message_start", json!({"message": message}), out);
        Self::event("ping", json!({}), out);
    }

    fn close(&mut self, out: &mut BytesMut) {
        if let Some((_, index)) = self.open.take() {
            Self::event("content_block_stop", json!({"index": index}), out);
        }
    }

    /// Opens a content block `block` at the next index, closing another first.
    fn open_block(&mut self, block: Value, out: &mut BytesMut) -> usize {
        self.close(out);
        let index = self.next;
        self.next += 1;
        Self::event(
            "content_block_start",
            json!({"index": index, "content_block": block}),
            out,
        );
        index
    }

    fn delta(&mut self, kind: Kind, text: &str, out: &mut BytesMut) {
        let index = match self.open {
            Some((open, index)) if open == kind => index,
            _ => {
                let block = match kind {
                    Kind::Text => json!({"type": "text", "text": ""}),
                    Kind::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                };
                let index = self.open_block(block, out);
                self.open = Some((kind, index));
                index
            }
        };
        let (kind, field) = match kind {
            Kind::Text => ("text_delta", "text"),
            Kind::Thinking => ("thinking_delta", "thinking"),
        };
        // The per-token path: written directly, no JSON value built.
        out.reserve(text.len() + 112);
        out.extend_from_slice(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":");
        let _ = write!(out, "{index}");
        out.extend_from_slice(b",\"delta\":{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"");
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":");
        let _ = serde_json::to_writer(bytes::BufMut::writer(&mut *out), text);
        out.extend_from_slice(b"}}\n\n");
    }

    fn tool_calls(&mut self, deltas: &[Value], out: &mut BytesMut) {
        for call in wire::merge_tool_calls(deltas) {
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| wire::new_id("toolu_"), str::to_string);
            let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or("");
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            let index = self.open_block(json!({"type": "tool_use", "id": id, "name": name, "input": {}}), out);
            if !arguments.is_empty() {
                Self::event(
                    "content_block_delta",
                    json!({"index": index, "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                    out,
                );
            }
            Self::event("content_block_stop", json!({"index": index}), out);
        }
    }

    /// An `error` event: never a `message_stop`, so the SDK raises.
    fn failed(&mut self, error: &ApiError, out: &mut BytesMut) {
        self.start(out);
        Self::event("error", json!({"error": error_body(error)["error"]}), out);
    }
}

/// The stop reason a finish reason is in Anthropic's words.
fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        "stop_sequence" => "stop_sequence",
        _ => "end_turn",
    }
}

/// Anthropic's usage object, summed over every attempt (zeros when none reported).
fn usage(tokens: &Tally) -> Value {
    let u = tokens.reported().unwrap_or_default();
    json!({"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens})
}

impl ClientEncoder for MessagesEncoder {
    fn item(&mut self, item: &ClientItem, out: &mut BytesMut) -> Flow {
        self.start(out);
        match item {
            ClientItem::Text { text, .. } => self.delta(Kind::Text, text, out),
            ClientItem::Reasoning { text, .. } => self.delta(Kind::Thinking, text, out),
            ClientItem::ToolCalls { deltas, .. } => {
                self.close(out);
                self.tool_calls(deltas, out);
            }
            ClientItem::Handover(h) => out.extend_from_slice(&wire::handover_comment(h)),
            ClientItem::Done(done) => {
                self.close(out);
                Self::event(
                    "message_delta",
                    json!({
                        "delta": {"stop_reason": stop_reason(&done.finish_reason), "stop_sequence": null},
                        "usage": usage(&done.tokens),
                        "baton": {
                            "route_chain": done.route_chain,
                            "failures": done.failures.len(),
                            "finish_reason": done.finish_reason,
                            "usage": wire::usage_account(&done.tokens),
                        },
                    }),
                    out,
                );
                Self::event("message_stop", json!({}), out);
                return Flow::End;
            }
            ClientItem::Failed(error) => {
                self.failed(&ApiError::from_splice(error), out);
                return Flow::End;
            }
        }
        Flow::Go
    }

    fn error(&mut self, message: &str, code: &'static str, out: &mut BytesMut) {
        let error = ApiError {
            status: if code == wire::SHUTTING_DOWN {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            },
            message: message.to_string(),
            kind: "server_error",
            code,
            retry_after: None,
        };
        self.failed(&error, out);
    }
}

/// A whole answer as one Messages `message` object with the id `id`.
pub fn message_object(answer: &Answer, id: &str) -> Value {
    let mut content = Vec::new();
    if let Some((thought, _)) = &answer.reasoning {
        content.push(json!({"type": "thinking", "thinking": thought, "signature": ""}));
    }
    if !answer.text.is_empty() || answer.tool_calls.is_empty() {
        content.push(json!({"type": "text", "text": answer.text}));
    }
    for call in &answer.tool_calls {
        let arguments = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("");
        // Arguments that are not a JSON object still reach the client, as a string in `input`.
        let input = match serde_json::from_str::<Value>(arguments) {
            Ok(v @ Value::Object(_)) => v,
            _ if arguments.is_empty() => json!({}),
            _ => json!(arguments),
        };
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").and_then(Value::as_str).map_or_else(|| wire::new_id("toolu_"), str::to_string),
            "name": call.pointer("/function/name").and_then(Value::as_str).unwrap_or(""),
            "input": input,
        }));
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": stop_reason(&answer.finish_reason),
        "stop_sequence": null,
        "usage": usage(&answer.tokens),
        "baton": {
            "route_chain": answer.route_chain,
            "failures": answer.failures,
            "finish_reason": answer.finish_reason,
            "usage": wire::usage_account(&answer.tokens),
        },
    })
}

/// The path of Anthropic's token-counting endpoint, beside the door.
pub const COUNT_TOKENS_PATH: &str = "/v1/messages/count_tokens";

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, baton's estimate
/// of the conversation (no upstream asked, so no tokenizer's exact count).
pub fn count_tokens(body: &[u8]) -> Response {
    let counted = serde_json::from_slice::<Value>(body)
        .map_err(|e| bad("invalid_json", format!("the request body is not valid JSON: {e}")))
        .and_then(|mut value| {
            // Counting needs no `max_tokens`; the Messages parser does.
            if let Some(object) = value.as_object_mut() {
                object.entry("max_tokens").or_insert(json!(1));
            }
            parse_request(value.to_string().as_bytes())
        });
    match counted {
        Ok(parsed) => {
            let tools = parsed.params.get("tools").map_or(0, |t| t.to_string().len());
            // Tool definitions count too; at the same four bytes a token the estimate takes.
            let tokens = crate::request::estimate_tokens(&parsed.messages)
                .saturating_add(u32::try_from(tools / 4).unwrap_or(u32::MAX));
            axum::Json(json!({"input_tokens": tokens})).into_response()
        }
        Err(error) => error_response(error),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::splice::{Completion, Handover, SpliceError};
    use crate::failure::FailureClass;
    use crate::provider::ReasoningField;
    use crate::request::Usage;
    use crate::usage::AttemptTokens;

    fn parse(body: Value) -> Result<ParsedRequest, ApiError> {
        parse_request(body.to_string().as_bytes())
    }

    fn code(body: Value) -> &'static str {
        parse(body).map(|_| ()).expect_err("refused").code
    }

    #[test]
    fn system_blocks_and_tool_results_become_chat_messages() {
        let parsed = parse(json!({
            "model": "m", "max_tokens": 10, "stream": true,
            "system": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/i.png"}}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": [
                    {"type": "redacted_thinking", "data": "x"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                    {"type": "tool_result", "tool_use_id": "t2", "is_error": true},
                ]},
                {"role": "assistant", "content": "Done"},
            ],
        }))
        .expect("valid");
        assert!(parsed.stream);
        let sent: Vec<Value> = parsed
            .messages
            .iter()
            .map(|m| serde_json::to_value(m).expect("serializes"))
            .collect();
        assert_eq!(
            sent,
            [
                json!({"role": "system", "content": "One.\n\nTwo."}),
                json!({"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "https://x/i.png"}},
                    {"type": "text", "text": "What?"},
                ]}),
                json!({"role": "assistant", "content": "", "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
                ]}),
                json!({"role": "tool", "content": "ok", "tool_call_id": "t1"}),
                json!({"role": "tool", "content": "Error: ", "tool_call_id": "t2"}),
                json!({"role": "assistant", "content": "Done"}),
            ]
        );
    }

    #[test]
    fn parameters_are_translated_to_chat_ones() {
        let parsed = parse(json!({
            "model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "x"}],
            "temperature": 0.5, "top_p": 0.9, "top_k": 5, "stop_sequences": ["A", "B"],
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "metadata": {"user_id": "u"},
            "tools": [{"name": "f", "description": "F", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true},
            "service_tier": "auto",
        }))
        .expect("valid");
        assert_eq!(
            Value::Object(parsed.params),
            json!({
                "max_tokens": 64, "temperature": 0.5, "top_p": 0.9, "top_k": 5, "stop": ["A", "B"],
                "thinking": {"type": "enabled", "budget_tokens": 2048}, "user": "u",
                "tools": [{"type": "function", "function": {"name": "f", "description": "F", "parameters": {"type": "object"}}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
                "parallel_tool_calls": false,
            })
        );
        for (choice, want) in [
            ("auto", json!("auto")),
            ("any", json!("required")),
            ("none", json!("none")),
        ] {
            let parsed = parse(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": choice}}))
                .expect("valid");
            assert_eq!(parsed.params["tool_choice"], want, "{choice}");
        }
    }

    #[test]
    fn what_baton_cannot_take_is_refused_naming_the_field() {
        let user =
            |content: Value| json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": content}]});
        assert_eq!(
            code(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})),
            "missing_max_tokens"
        );
        assert_eq!(
            code(json!({"model": "m", "max_tokens": 0, "messages": []})),
            "invalid_max_tokens"
        );
        assert_eq!(
            code(json!({"model": "m", "max_tokens": 1, "messages": []})),
            "invalid_messages"
        );
        assert_eq!(code(json!({"max_tokens": 1, "messages": []})), "missing_model");
        assert_eq!(
            code(user(json!([{"type": "document", "source": {}}]))),
            "invalid_messages"
        );
        assert_eq!(
            code(user(
                json!([{"type": "image", "source": {"type": "file", "file_id": "f"}}])
            )),
            "invalid_messages"
        );
        assert_eq!(
            code(user(json!([{"type": "tool_use", "id": "a", "name": "b"}]))),
            "invalid_messages"
        );
        assert_eq!(code(user(json!(5))), "invalid_messages");
        let mut body = user(json!("x"));
        body["system"] = json!([{"type": "image"}]);
        assert_eq!(code(body), "invalid_system");
        let mut body = user(json!("x"));
        body["thinking"] = json!({"type": "enabled"});
        assert_eq!(code(body), "invalid_thinking");
        let mut body = user(json!("x"));
        body["tools"] = json!([{"type": "bash_20250124", "name": "bash"}]);
        assert_eq!(code(body), "unsupported_tool");
        let mut body = user(json!("x"));
        body["stop_sequences"] = json!("END");
        assert_eq!(code(body), "invalid_stop_sequences");
        let message = parse(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}))
            .expect_err("refused")
            .message;
        assert!(
            message.contains("messages[0]") && message.contains("system"),
            "{message}"
        );
    }

    #[test]
    fn errors_carry_anthropics_type_for_their_status() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
        ] {
            assert_eq!(
                error_type(StatusCode::from_u16(status).expect("status")),
                kind,
                "{status}"
            );
        }
        let response = error_response(ApiError::overloaded(3));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1", "Retry-After kept");
    }

    fn text(t: &str) -> ClientItem {
        ClientItem::Text {
            text: t.into(),
            route: Arc::from("r"),
            model: Arc::from("up"),
        }
    }

    fn thought(t: &str) -> ClientItem {
        ClientItem::Reasoning {
            text: t.into(),
            field: ReasoningField::ReasoningContent,
            route: Arc::from("r"),
            model: Arc::from("up"),
        }
    }

    fn done(reason: &str) -> ClientItem {
        let mut tokens = Tally::default();
        tokens.push(AttemptTokens {
            attempt: 1,
            route: "r".into(),
            model: "up".into(),
            reported: Some(Usage {
                prompt_tokens: 10,
                completion_tokens: 20,
                reasoning_tokens: Some(5),
            }),
            deltas: 3,
        });
        ClientItem::Done(Completion {
            finish_reason: reason.into(),
            tokens,
            route_chain: vec!["r".into()],
            failures: Vec::new(),
        })
    }

    fn frames(out: &[u8]) -> (Vec<(String, Value)>, Vec<String>) {
        let body = String::from_utf8_lossy(out);
        let mut events = Vec::new();
        let mut comments = Vec::new();
        for frame in body.split("\n\n").filter(|f| !f.is_empty()) {
            if let Some(c) = frame.strip_prefix(": ") {
                comments.push(c.to_string());
                continue;
            }
            let (head, data) = frame.split_once('\n').expect("two lines");
            let kind = head.strip_prefix("event: ").expect("event line");
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data")).expect("json");
            assert_eq!(data["type"], kind);
            events.push((kind.to_string(), data));
        }
        (events, comments)
    }

    fn run(items: &[ClientItem]) -> (Vec<(String, Value)>, Vec<String>) {
        let mut encoder = MessagesEncoder::new("msg_t", "asked");
        let mut out = BytesMut::new();
        for (i, item) in items.iter().enumerate() {
            let flow = encoder.item(item, &mut out);
            let last = matches!(item, ClientItem::Done(_) | ClientItem::Failed(_));
            assert_eq!(flow == Flow::End, last, "item {i}");
        }
        frames(&out)
    }

    fn kinds(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn thinking_then_text_across_a_handover_is_two_blocks_in_one_message() {
        let handover = ClientItem::Handover(Handover {
            from: Arc::from("a"),
            to: Arc::from("b"),
            class: FailureClass::Technical,
            reason: "stall",
            prefix_bytes: 3,
            gap: std::time::Duration::from_millis(1),
        });
        let tricky = "quote \" \\ 日本 \u{1}\n";
        let (events, comments) = run(&[
            thought("hm"),
            handover,
            thought("m"),
            text(tricky),
            text("!"),
            done("stop"),
        ]);
        assert_eq!(
            kinds(&events),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(comments.len(), 1, "the handover is a comment: {comments:?}");
        assert_eq!(
            events[0].1["message"],
            json!({"id": "msg_t", "type": "message", "role": "assistant", "model": "asked", "content": [],
                   "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}})
        );
        assert_eq!(
            events[2].1["content_block"],
            json!({"type": "thinking", "thinking": "", "signature": ""})
        );
        assert_eq!(
            events[3].1,
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}})
        );
        assert_eq!(
            events[6].1,
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(
            events[7].1,
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": tricky}}),
            "the direct-written delta is the JSON the general path writes"
        );
        assert_eq!(events[9].1["index"], 1);
        let delta = &events[10].1;
        assert_eq!(
            delta["delta"],
            json!({"stop_reason": "end_turn", "stop_sequence": null})
        );
        assert_eq!(delta["usage"], json!({"input_tokens": 10, "output_tokens": 20}));
    }

    #[test]
    fn finish_reasons_are_anthropic_stop_reasons() {
        for (reason, want) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("content_filter", "refusal"),
        ] {
            let (events, _) = run(&[text("x"), done(reason)]);
            let delta = events
                .iter()
                .find(|(k, _)| k == "message_delta")
                .expect("message_delta");
            assert_eq!(delta.1["delta"]["stop_reason"], want, "{reason}");
        }
    }

    #[test]
    fn tool_calls_close_the_text_and_each_is_a_tool_use_block() {
        let calls = ClientItem::ToolCalls {
            deltas: vec![
                json!({"index": 2, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":"}}),
                json!({"index": 2, "function": {"arguments": "1}"}}),
                json!({"index": 5, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": ""}}),
            ],
            route: Arc::from("r"),
            model: Arc::from("up"),
        };
        let (events, _) = run(&[text("Let me check."), calls, done("tool_calls")]);
        let starts: Vec<&Value> = events
            .iter()
            .filter(|(k, _)| k == "content_block_start")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(starts.len(), 3);
        assert_eq!(
            starts[1],
            &json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "call_a", "name": "f", "input": {}}})
        );
        assert_eq!(starts[2]["index"], 2);
        let json_deltas: Vec<&Value> = events
            .iter()
            .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(json_deltas.len(), 1, "no delta for empty arguments");
        assert_eq!(json_deltas[0]["delta"]["partial_json"], "{\"x\":1}");
        assert_eq!(json_deltas[0]["index"], 1);
        let stops = events.iter().filter(|(k, _)| k == "content_block_stop").count();
        assert_eq!(stops, 3);
    }

    #[test]
    fn failures_are_error_events_never_message_stop() {
        let failed = ClientItem::Failed(SpliceError::Local {
            resource: "memory".into(),
            failures: Vec::new(),
            emitted_bytes: 3,
            tokens: Tally::default(),
        });
        let (events, _) = run(&[text("par"), failed]);
        let (kind, data) = events.last().expect("events");
        assert_eq!(kind, "error");
        assert_eq!(data["error"]["type"], "overloaded_error");
        assert!(!kinds(&events).contains(&"message_stop"));

        let mut encoder = MessagesEncoder::new("msg_e", "m");
        let mut out = BytesMut::new();
        encoder.error("shutting down", wire::SHUTTING_DOWN, &mut out);
        let (events, _) = frames(&out);
        assert_eq!(kinds(&events), ["message_start", "ping", "error"]);
        assert_eq!(
            events[2].1,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "shutting down"}})
        );
    }

    #[test]
    fn a_whole_answer_is_a_message_object() {
        let answer = Answer {
            text: "Hello".into(),
            reasoning: Some(("hm".into(), ReasoningField::Reasoning)),
            tool_calls: vec![
                json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}),
                json!({"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "not json"}}),
            ],
            model: "up".into(),
            finish_reason: "tool_calls".into(),
            tokens: Tally::default(),
            route_chain: vec!["r".into()],
            failures: 0,
        };
        let v = message_object(&answer, "msg_w");
        assert_eq!(v["id"], "msg_w");
        assert_eq!(v["type"], "message");
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
        assert_eq!(
            v["content"],
            json!([
                {"type": "thinking", "thinking": "hm", "signature": ""},
                {"type": "text", "text": "Hello"},
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "call_2", "name": "g", "input": "not json"},
            ])
        );
    }
}
