//! The OpenAI wire format on the client side: requests in, chunks and errors out.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::engine::splice::{Handover, SpliceError};
use crate::provider::ReasoningField;
use crate::request::{ChatRequest, Message, Role};
use crate::usage::Tally;

/// An OpenAI-style error response: `{"error": {"message", "type", "code"}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
    /// OpenAI's error `type`.
    pub kind: &'static str,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// Seconds to send as `Retry-After`, when a retry soon is the right answer.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A 400 `invalid_request_error` with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            code,
            retry_after: None,
        }
    }

    /// The 413 for a body over `server.max_body_bytes`, declared or sent.
    pub fn too_large() -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: "the request body is larger than the server's limit (server.max_body_bytes)".into(),
            kind: "invalid_request_error",
            code: "request_too_large",
            retry_after: None,
        }
    }

    /// The 503 past the concurrent-session cap: retry in a second.
    pub fn overloaded(limit: usize) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "baton is serving its limit of {limit} concurrent sessions (server.max_sessions); retry shortly"
            ),
            kind: "server_error",
            code: "server_overloaded",
            retry_after: Some(1),
        }
    }

    /// The 503 for a request still unanswered when the shutdown grace ran out.
    pub fn shutting_down() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "baton is shutting down (server.shutdown_grace_ms is over); retry on another instance".into(),
            kind: "server_error",
            code: SHUTTING_DOWN,
            retry_after: Some(1),
        }
    }

    /// The 500 for a session that panicked before any of its answer was sent.
    pub fn internal() -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "baton failed while serving this request (the error was logged); please retry".into(),
            kind: "server_error",
            code: "internal_error",
            retry_after: None,
        }
    }

    /// The JSON body, in OpenAI's error shape.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }

    /// The same error as the SSE event that ends a stream already begun.
    pub fn event(&self) -> Bytes {
        Bytes::from(format!("data: {}\n\n", self.body()))
    }

    /// Whether a client retry cannot help: baton's own upstream credentials or
    /// route configuration are wrong, whatever the 5xx status says.
    fn retry_is_useless(&self) -> bool {
        self.status == StatusCode::BAD_GATEWAY && matches!(self.code, "upstream_auth_failed" | "upstream_rejected")
    }

    /// The error for a session that ended without an answer, before any text was sent.
    pub fn from_splice(error: &SpliceError) -> Self {
        match error {
            SpliceError::Refused { message, .. } => ApiError {
                status: StatusCode::BAD_REQUEST,
                message: message.clone(),
                kind: "invalid_request_error",
                code: "content_policy_violation",
                retry_after: None,
            },
            SpliceError::Local { .. } => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: error.to_string(),
                kind: "server_error",
                code: LOCAL_EXHAUSTED,
                retry_after: Some(1),
            },
            SpliceError::Exhausted { failures, .. } => super::status::exhausted(failures),
        }
    }
}

/// The code of a session the end of the shutdown grace ended (HTTP error and error event alike).
pub const SHUTTING_DOWN: &str = "server_shutdown";

/// The code of a session baton's own resource limits ended.
pub const LOCAL_EXHAUSTED: &str = "local_resources_exhausted";

/// The error event code of a streamed session that ended with `error` after text was sent.
pub fn splice_error_code(error: &SpliceError) -> &'static str {
    match error {
        SpliceError::Local { .. } => LOCAL_EXHAUSTED,
        SpliceError::Refused { .. } | SpliceError::Exhausted { .. } => "all_routes_failed",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.retry_is_useless() {
            // The openai SDKs obey this header over their status rule (they retry every 5xx).
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}

/// A chat request as the proxy understood it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedRequest {
    /// The model (ladder) asked for.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Fields passed upstream unchanged.
    pub params: Map<String, Value>,
    /// Stream the answer?
    pub stream: bool,
    /// Send a usage chunk before `[DONE]`?
    pub include_usage: bool,
}

impl ParsedRequest {
    /// The request the splicer takes: the conversation, the fields passed
    /// upstream, the model asked for and the `door` it came through.
    pub fn into_chat_request(self, door: crate::door::Door) -> ChatRequest {
        let mut request = ChatRequest::new(self.messages);
        request.params = self.params;
        request.model = Some(self.model);
        request.door = Some(door);
        request
    }
}

/// Parses a `POST /v1/chat/completions` body.
pub fn parse_request(body: &[u8]) -> Result<ParsedRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the request body must be a JSON object",
        ));
    };
    let model = match object.remove("model") {
        Some(Value::String(m)) if !m.is_empty() => m,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_model",
                "`model` must be a non-empty string",
            ))
        }
        None => return Err(ApiError::bad_request("missing_model", "`model` is required")),
    };
    let messages = match object.remove("messages") {
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, m)| parse_message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_request(
                "invalid_messages",
                "`messages` must not be empty",
            ))
        }
        Some(_) => return Err(ApiError::bad_request("invalid_messages", "`messages` must be an array")),
        None => return Err(ApiError::bad_request("missing_messages", "`messages` is required")),
    };
    let stream = match object.remove("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_stream",
                "`stream` must be true or false",
            ))
        }
    };
    let include_usage = object
        .remove("stream_options")
        .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
        .unwrap_or(false);
    if let Some(n) = object.get("n") {
        if n.as_u64() != Some(1) && !n.is_null() {
            return Err(ApiError::bad_request(
                "unsupported_n",
                "baton splices one choice: `n` must be 1",
            ));
        }
    }
    Ok(ParsedRequest {
        model,
        messages,
        params: object,
        stream,
        include_usage,
    })
}

fn parse_message(i: usize, value: &Value) -> Result<Message, ApiError> {
    let bad = |what: String| ApiError::bad_request("invalid_messages", format!("`messages[{i}]`: {what}"));
    let Value::Object(fields) = value else {
        return Err(bad("must be an object".into()));
    };
    let role = match fields.get("role").and_then(Value::as_str) {
        Some("system") => Role::System,
        Some("developer") => Role::Developer,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool") => Role::Tool,
        Some(other) => return Err(bad(format!("unknown role {other:?}"))),
        None => return Err(bad("`role` is required".into())),
    };
    let content = fields.get("content").cloned().unwrap_or(Value::Null);
    let extra: Map<String, Value> = fields
        .iter()
        .filter(|(k, _)| *k != "role" && *k != "content")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Message::with_content(role, content, extra).map_err(|e| bad(e.to_string()))
}

/// A fresh answer id: `prefix` and a random UUID's hex.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// The chat-completions field reasoning in `field` goes out in.
pub fn reasoning_key(field: ReasoningField) -> &'static str {
    match field {
        ReasoningField::Reasoning => "reasoning",
        ReasoningField::ReasoningContent | ReasoningField::Thinking => "reasoning_content",
    }
}

/// Writes the chunks of one spliced answer, all with one stable id.
#[derive(Clone, Debug)]
pub struct ChunkWriter {
    id: String,
    created: u64,
    role_sent: bool,
    /// `data: {"id":…,"object":…,"created":…,"model":` — the same for every chunk, built once.
    head: String,
}

/// Seconds since the epoch, now (0 on a clock before 1970).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Appends `s` as a JSON string. Writing a `&str` into a `Vec` cannot fail.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

impl ChunkWriter {
    /// A writer for the answer `id`.
    pub fn new(id: String) -> Self {
        Self::at(id, now_secs())
    }

    /// A writer for the answer `id` started at `created` (seconds since the epoch).
    pub fn at(id: String, created: u64) -> Self {
        let head = format!(
            "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":",
            Value::from(id.as_str())
        );
        ChunkWriter {
            id,
            created,
            role_sent: false,
            head,
        }
    }

    /// The answer's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seconds since the epoch at the answer's start.
    pub fn created(&self) -> u64 {
        self.created
    }

    fn chunk(&self, model: &str, choices: Value, usage: Option<Value>) -> Bytes {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        Bytes::from(format!("data: {chunk}\n\n"))
    }

    fn delta(&mut self, mut delta: Value) -> Value {
        if !self.role_sent {
            self.role_sent = true;
            delta["role"] = json!("assistant");
        }
        delta
    }

    /// A content delta written by `model`.
    pub fn text(&mut self, model: &str, text: &str) -> Bytes {
        if self.role_sent {
            // The per-token path: bytes written directly, the same JSON `chunk` would build.
            let mut out = Vec::with_capacity(self.head.len() + model.len() + text.len() + 72);
            out.extend_from_slice(self.head.as_bytes());
            push_json_str(&mut out, model);
            out.extend_from_slice(br#","choices":[{"index":0,"delta":{"content":"#);
            push_json_str(&mut out, text);
            out.extend_from_slice(b"},\"finish_reason\":null}]}\n\n");
            return Bytes::from(out);
        }
        let delta = self.delta(json!({"content": text}));
        self.chunk(
            model,
            json!([{"index": 0, "delta": delta, "finish_reason": null}]),
            None,
        )
    }

    /// A reasoning delta written by `model`, in the field the upstream used
    /// (`thinking` goes out as `reasoning_content`, the field most clients read).
    pub fn reasoning(&mut self, model: &str, text: &str, field: ReasoningField) -> Bytes {
        let delta = self.delta(json!({ reasoning_key(field): text }));
        self.chunk(
            model,
            json!([{"index": 0, "delta": delta, "finish_reason": null}]),
            None,
        )
    }

    /// Tool calls written by `model`, merged from the upstream's deltas: one
    /// chunk per call with its index, id, name and complete arguments. Clients
    /// join fragments by `index` across chunks (LangChain, the OpenAI SDK), so
    /// fragments of one call in one chunk would become several calls.
    pub fn tool_calls(&mut self, model: &str, deltas: &[Value]) -> Bytes {
        let mut out = Vec::new();
        for (index, mut call) in merge_tool_calls(deltas).into_iter().enumerate() {
            if let Value::Object(fields) = &mut call {
                // Dense from 0, whatever the upstream numbered: the SDK stores calls at `index` in a list.
                fields.insert("index".into(), json!(index));
            }
            let delta = self.delta(json!({"tool_calls": [call]}));
            let chunk = self.chunk(
                model,
                json!([{"index": 0, "delta": delta, "finish_reason": null}]),
                None,
            );
            out.extend_from_slice(&chunk);
        }
        Bytes::from(out)
    }

    /// The final chunk with the finish reason.
    pub fn finish(&mut self, model: &str, reason: &str) -> Bytes {
        let delta = self.delta(json!({}));
        self.chunk(
            model,
            json!([{"index": 0, "delta": delta, "finish_reason": reason}]),
            None,
        )
    }

    /// The usage chunk (`stream_options.include_usage`), with baton's account of what it misses.
    pub fn usage(&self, model: &str, tokens: &Tally) -> Bytes {
        // `usage: null` when no attempt reported any, as OpenAI's chunks have it.
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": model,
            "choices": [],
            "usage": usage_json(tokens),
            "baton": {"usage": usage_account(tokens)},
        });
        Bytes::from(format!("data: {chunk}\n\n"))
    }
}

/// OpenAI's usage object: what the upstreams reported, summed over every
/// attempt (cut ones included); `null` when no attempt reported usage, never
/// a count of deltas presented as tokens.
pub fn usage_json(tokens: &Tally) -> Value {
    match tokens.reported() {
        Some(usage) => {
            let mut out = json!({
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total(),
            });
            if let Some(reasoning) = usage.reasoning_tokens {
                out["completion_tokens_details"] = json!({"reasoning_tokens": reasoning});
            }
            out
        }
        None => Value::Null,
    }
}

/// baton's note on `usage`: how many attempts reported it, and what those
/// that did not streamed (text deltas: chunks, not tokens).
pub fn usage_account(tokens: &Tally) -> Value {
    json!({
        "reported_attempts": tokens.reported_attempts(),
        "unreported_attempts": tokens.unreported_attempts(),
        "unreported_deltas": tokens.unreported_deltas(),
    })
}

/// The end-of-stream sentinel.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// The SSE comment announcing a handover (compliant clients ignore comments).
pub fn handover_comment(h: &Handover) -> Bytes {
    Bytes::from(format!(
        ": baton handover from={} to={} reason={} class={} prefix_bytes={} gap_ms={}\n\n",
        h.from,
        h.to,
        h.reason,
        h.class.as_str(),
        h.prefix_bytes,
        h.gap.as_millis()
    ))
}

/// The error event that ends a stream baton itself had to stop (shutdown, slow client, internal error).
pub fn server_error_event(message: &str, code: &'static str) -> Bytes {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: message.to_string(),
        kind: "server_error",
        code,
        retry_after: None,
    }
    .event()
}

/// Merges streamed tool-call deltas into complete `tool_calls` entries (by `index`, bounded).
pub use crate::provider::tool_calls::merge as merge_tool_calls;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_unknown_fields_for_the_upstream() {
        let body = br#"{"model":"chat","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"temperature":0.2,"tools":[],"stream":true,"stream_options":{"include_usage":true}}"#;
        let parsed = parse_request(body).expect("valid");
        assert_eq!(parsed.model, "chat");
        assert!(parsed.stream && parsed.include_usage);
        assert_eq!(parsed.messages[0].content, "hi");
        assert_eq!(parsed.params.get("temperature"), Some(&json!(0.2)));
        assert!(parsed.params.contains_key("tools"));
        assert!(!parsed.params.contains_key("stream_options"));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let code = |body: &str| parse_request(body.as_bytes()).map(|_| ()).expect_err(body).code;
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code("[]"), "invalid_request");
        assert_eq!(code(r#"{"messages":[{"role":"user","content":"x"}]}"#), "missing_model");
        assert_eq!(code(r#"{"model":"m"}"#), "missing_messages");
        assert_eq!(code(r#"{"model":"m","messages":[]}"#), "invalid_messages");
        assert_eq!(
            code(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#),
            "invalid_messages"
        );
        assert_eq!(
            code(r#"{"model":"m","messages":[{"role":"user","content":[{"text":"untyped"}]}]}"#),
            "invalid_messages"
        );
        assert_eq!(
            code(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":5}]}]}"#),
            "invalid_messages"
        );
        assert_eq!(
            code(r#"{"model":"m","messages":[{"role":"user","content":7}]}"#),
            "invalid_messages"
        );
        assert_eq!(
            code(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":3}"#),
            "unsupported_n"
        );
        assert_eq!(
            code(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#),
            "invalid_stream"
        );
    }

    #[test]
    fn the_fast_text_chunk_is_the_same_bytes_as_the_general_one() {
        for text in [
            "plain",
            "quote \" and \\ backslash",
            "naïve 日本語 🚀",
            "line\nbreak\t\u{1}",
        ] {
            let mut fast = ChunkWriter::new("chatcmpl-\"x".into());
            let _ = fast.text("m", "first");
            let general = fast.chunk(
                "mo\"del",
                json!([{"index": 0, "delta": {"content": text}, "finish_reason": null}]),
                None,
            );
            assert_eq!(fast.text("mo\"del", text), general, "{text:?}");
        }
    }

    #[test]
    fn content_arrays_are_kept_as_sent_and_read_as_text_with_separators() {
        let content = json!([
            {"type": "text", "text": "Hello", "cache_control": {"type": "ephemeral"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "text", "text": "world"},
        ]);
        let body = json!({"model": "m", "messages": [{"role": "user", "content": content, "name": "ann"}]});
        let parsed = parse_request(body.to_string().as_bytes()).expect("multi-part content is accepted");
        let message = &parsed.messages[0];
        assert_eq!(message.content, "Hello\nworld");
        assert_eq!(message.parts.as_ref(), content.as_array());
        // What goes upstream is what came in.
        assert_eq!(
            serde_json::to_value(message).ok(),
            Some(json!({"role": "user", "content": content, "name": "ann"}))
        );
    }

    #[test]
    fn tool_calls_go_out_one_complete_call_per_chunk_with_dense_indexes() {
        let deltas = vec![
            json!({"index":3,"id":"call_a","type":"function","function":{"name":"weather","arguments":""}}),
            json!({"index":7,"id":"call_b","type":"function","function":{"name":"time","arguments":"{\"tz\":"}}),
            json!({"index":3,"function":{"arguments":"{\"city\":\"Paris\"}"}}),
            json!({"index":7,"function":{"arguments":"\"CET\"}"}}),
        ];
        let mut writer = ChunkWriter::new("chatcmpl-t".into());
        let bytes = writer.tool_calls("m", &deltas);
        let text = String::from_utf8_lossy(&bytes);
        let chunks: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect();
        assert_eq!(chunks.len(), 2, "{text}");
        let calls: Vec<&Value> = chunks
            .iter()
            .map(|c| {
                let list = c.pointer("/choices/0/delta/tool_calls").and_then(Value::as_array);
                assert_eq!(list.map(Vec::len), Some(1), "one call per chunk: {c}");
                &list.expect("tool_calls")[0]
            })
            .collect();
        assert_eq!(
            *calls[0],
            json!({"index":0,"id":"call_a","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Paris\"}"}})
        );
        assert_eq!(
            *calls[1],
            json!({"index":1,"id":"call_b","type":"function","function":{"name":"time","arguments":"{\"tz\":\"CET\"}"}})
        );
        assert_eq!(chunks[0].pointer("/choices/0/delta/role"), Some(&json!("assistant")));
        assert_eq!(chunks[1].pointer("/choices/0/delta/role"), None);
    }

    #[test]
    fn merging_tolerates_garbage_and_huge_indexes() {
        let deltas = vec![
            json!("not an object"),
            json!({"index": u64::MAX, "id": "call_x", "function": {"name": "f", "arguments": "{}"}}),
            json!({"index": u64::MAX, "id": null, "function": {"arguments": null}}),
        ];
        // The watchdog fails such an attempt first; the merge itself never pads or panics.
        assert_eq!(
            merge_tool_calls(&deltas),
            Vec::<Value>::new(),
            "out-of-bound deltas are never merged"
        );
    }

    #[test]
    fn tool_call_deltas_merge_by_index() {
        let deltas = vec![
            json!({"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}),
            json!({"index":0,"function":{"arguments":"{\"city\":"}}),
            json!({"index":0,"function":{"arguments":"\"Paris\"}"}}),
        ];
        let merged = merge_tool_calls(&deltas);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(merged[0]["id"], "call_1");
    }

    #[test]
    fn reasoning_goes_out_in_the_upstreams_field() {
        let mut writer = ChunkWriter::new("chatcmpl-r".into());
        let parse = |bytes: &Bytes| -> Value {
            let text = String::from_utf8_lossy(bytes);
            serde_json::from_str(text.trim().strip_prefix("data: ").expect("data")).expect("json")
        };
        let first = parse(&writer.reasoning("m", "hmm", ReasoningField::ReasoningContent));
        assert_eq!(
            first.pointer("/choices/0/delta"),
            Some(&json!({"role": "assistant", "reasoning_content": "hmm"}))
        );
        let other = parse(&writer.reasoning("m", "so", ReasoningField::Reasoning));
        assert_eq!(other.pointer("/choices/0/delta"), Some(&json!({"reasoning": "so"})));
        let thinking = parse(&writer.reasoning("m", "t", ReasoningField::Thinking));
        assert_eq!(
            thinking.pointer("/choices/0/delta"),
            Some(&json!({"reasoning_content": "t"}))
        );
        // The first content delta no longer carries the role.
        let text = parse(&writer.text("m", "Hi"));
        assert_eq!(text.pointer("/choices/0/delta"), Some(&json!({"content": "Hi"})));
    }
}
