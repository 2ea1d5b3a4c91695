//! OpenAI-compatible chat completions over SSE (OpenAI, vLLM, SGLang, Ollama, the mock oracle …).
//!
//! The wire parsing ([`parse_data`], [`classify_http`]) is pure and shared with
//! the in-process mock, so the parser the tests exercise is the one production uses.

use std::time::Duration;

use serde_json::{json, Value};

use super::sse::{snippet, SseLimits};
use super::{Chunk, ChunkStream, Provider, ReasoningField, UpstreamRequest};
use crate::failure::{upstream_code, FailureKind};
use crate::redact::Redactor;
use crate::request::Usage;

/// A provider speaking the OpenAI chat-completions streaming protocol.
#[derive(Clone)]
pub struct OpenAiProvider {
    client: reqwest::Client,
    endpoint: String,
    api_key: Option<String>,
    /// Caps on what the upstream may send in one line or event.
    limits: SseLimits,
    /// Scrubs secrets (this route's key at least) from every failure's text.
    redactor: Redactor,
    /// Split a leading `<think>…</think>` out of the content into reasoning (the route's `think_tags`).
    think_tags: bool,
}

impl std::fmt::Debug for OpenAiProvider {
    // The key is deliberately left out: secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("limits", &self.limits)
            .field("think_tags", &self.think_tags)
            .finish()
    }
}

impl OpenAiProvider {
    /// A provider for `base_url` (e.g. `http://127.0.0.1:9001/v1`), with an optional bearer key.
    pub fn new(client: reqwest::Client, base_url: &str, api_key: Option<String>) -> Self {
        OpenAiProvider {
            client,
            endpoint: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            redactor: Redactor::new(api_key.iter()),
            api_key,
            limits: SseLimits::default(),
            think_tags: false,
        }
    }

    /// The same provider, splitting a `<think>…</think>` block at the start of
    /// the content out into reasoning (`reasoning_content`), for servers that
    /// stream a model's thinking inside its content.
    pub fn with_think_tags(mut self, on: bool) -> Self {
        self.think_tags = on;
        self
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

    /// The HTTP client baton uses by default: rustls, connect timeout, no overall
    /// timeout (the watchdog owns deadlines).
    pub fn default_client() -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    }
}

/// The JSON body sent upstream for `request`.
pub fn request_body(request: &UpstreamRequest) -> Value {
    let mut body = serde_json::Map::new();
    // Pass-through fields first, so baton's own fields win.
    for (k, v) in &request.params {
        body.insert(k.clone(), v.clone());
    }
    body.insert("model".into(), json!(request.model));
    body.insert("messages".into(), json!(request.messages));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    if request.continue_final_message {
        body.insert("continue_final_message".into(), json!(true));
        body.insert("add_generation_prompt".into(), json!(false));
    }
    Value::Object(body)
}

impl Provider for OpenAiProvider {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let mut builder = self.client.post(&self.endpoint).json(&request_body(&request));
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let stream = super::sse::stream(builder, parse_sse_event, self.limits, self.redactor.clone());
        if self.think_tags {
            Box::pin(super::think_tags::ThinkTagStream::new(stream))
        } else {
            stream
        }
    }
}

/// Parses one SSE event of an OpenAI stream. The protocol names no events:
/// unnamed ones (and `message`, the SSE default) carry chunks, `error` an
/// error; any other name is some server's extension, skipped.
pub fn parse_sse_event(event: &str, data: &str) -> Result<Vec<Chunk>, FailureKind> {
    match event {
        "" | "message" | "error" => parse_data(data),
        _ => Ok(Vec::new()),
    }
}

/// Parses the `data:` payload of one SSE event into chunks.
///
/// A chunk must be a JSON object with a `choices` array (empty is legal: usage
/// and prompt-filter chunks have none), a `usage` object, or an `error`; one
/// with none of them is malformed. Fields of the wrong type are malformed too.
pub fn parse_data(data: &str) -> Result<Vec<Chunk>, FailureKind> {
    if data.trim() == "[DONE]" {
        return Ok(vec![Chunk::Done]);
    }
    let malformed = |what: String| FailureKind::Malformed {
        detail: format!("{what} in {:?}", snippet(data)),
    };
    // A struct also deserializes from a JSON array; a chunk is an object.
    if !data.trim_start().starts_with('{') {
        return Err(malformed("expected a JSON object".to_string()));
    }
    let chunk: wire::Chunk<'_> = serde_json::from_str(data).map_err(|e| malformed(e.to_string()))?;
    if let Some(error) = chunk.error {
        let (message, code) = error_fields(&error);
        return Err(if is_policy(&code, &message) {
            FailureKind::ContentPolicy { message }
        } else {
            FailureKind::ErrorEvent { message }
        });
    }
    if chunk.choices.is_none() && chunk.usage.is_none() {
        return Err(malformed("a chunk with neither choices nor usage".to_string()));
    }
    let mut chunks = Vec::new();
    if let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) {
        if let Some(delta) = choice.delta {
            // Reasoning comes before the answer; a server sends one of the two fields.
            let reasoning = [
                (delta.reasoning_content, ReasoningField::ReasoningContent),
                (delta.reasoning, ReasoningField::Reasoning),
            ];
            for (text, field) in reasoning {
                if let Some(text) = text.filter(|t| !t.is_empty()) {
                    chunks.push(Chunk::Reasoning {
                        text: text.into_owned(),
                        field,
                    });
                }
            }
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                chunks.push(Chunk::Text(text.into_owned()));
            }
            if let Some(calls) = delta.tool_calls.filter(|c| !c.is_empty()) {
                chunks.push(Chunk::ToolCalls(calls));
            }
        }
        if let Some(reason) = choice.finish_reason {
            chunks.push(Chunk::Finish(reason.into_owned()));
        }
    }
    if let Some(usage) = chunk.usage {
        chunks.push(Chunk::Usage(Usage {
            prompt_tokens: usage.prompt_tokens.unwrap_or(0),
            completion_tokens: usage.completion_tokens.unwrap_or(0),
            reasoning_tokens: usage.reasoning_tokens(),
        }));
    }
    Ok(chunks)
}

/// The streamed chunk, typed: strings borrow from the event's data unless
/// they hold escapes, so a text delta costs one allocation (its `Chunk::Text`)
/// instead of a whole `serde_json::Value` tree per chunk.
mod wire {
    use std::borrow::Cow;

    use serde::Deserialize;
    use serde_json::Value;

    /// One `chat.completion.chunk`; other fields are ignored.
    #[derive(Deserialize)]
    pub struct Chunk<'a> {
        #[serde(borrow, default)]
        pub choices: Option<Vec<Choice<'a>>>,
        #[serde(default)]
        pub usage: Option<Usage>,
        #[serde(default)]
        pub error: Option<Value>,
    }

    /// One choice; baton streams the first.
    #[derive(Deserialize)]
    pub struct Choice<'a> {
        #[serde(borrow, default)]
        pub delta: Option<Delta<'a>>,
        #[serde(borrow, default)]
        pub finish_reason: Option<Cow<'a, str>>,
    }

    /// What the choice adds.
    #[derive(Deserialize)]
    pub struct Delta<'a> {
        #[serde(borrow, default)]
        pub content: Option<Cow<'a, str>>,
        /// DeepSeek, vLLM, SGLang: the model's reasoning.
        #[serde(borrow, default)]
        pub reasoning_content: Option<Cow<'a, str>>,
        /// OpenRouter, Ollama: the same, under another name.
        #[serde(borrow, default)]
        pub reasoning: Option<Cow<'a, str>>,
        #[serde(default)]
        pub tool_calls: Option<Vec<Value>>,
    }

    /// Token counts.
    #[derive(Deserialize)]
    pub struct Usage {
        #[serde(default)]
        pub prompt_tokens: Option<u64>,
        #[serde(default)]
        pub completion_tokens: Option<u64>,
        /// Read leniently: a detail some server shapes oddly must not fail an attempt that streamed well.
        #[serde(default)]
        pub completion_tokens_details: Option<Value>,
    }

    impl Usage {
        /// `completion_tokens_details.reasoning_tokens` when it is a count a
        /// `u64` holds; a negative, fractional, huge or mistyped one is no figure.
        pub fn reasoning_tokens(&self) -> Option<u64> {
            self.completion_tokens_details
                .as_ref()
                .and_then(|d| d.get("reasoning_tokens"))
                .and_then(Value::as_u64)
        }
    }
}

/// The message and the code/type of an OpenAI-style error object, lower-cased code.
fn error_fields(error: &Value) -> (String, String) {
    match error {
        Value::String(s) => (s.clone(), String::new()),
        _ => {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| snippet(&error.to_string()));
            let code = ["code", "type"]
                .iter()
                .filter_map(|k| error.get(*k).and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase();
            (message, code)
        }
    }
}

fn is_policy(code: &str, message: &str) -> bool {
    let message = message.to_lowercase();
    code.contains("content_policy")
        || code.contains("content_filter")
        || message.contains("content policy")
        || message.contains("content management policy")
}

/// Classifies an HTTP error status and its body into a failure kind.
pub fn classify_http(status: u16, retry_after: Option<&str>, body: &str) -> FailureKind {
    let retry_after = retry_after
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)));
    let parsed = serde_json::from_str::<Value>(body).ok();
    // OpenAI nests the error under `error`; vLLM's error body is the object itself.
    let error = parsed
        .as_ref()
        .and_then(|v| v.get("error").or_else(|| v.get("message").map(|_| v)));
    let (message, code) = match error {
        Some(error) => error_fields(error),
        None => (snippet(body), String::new()),
    };
    let named = error.and_then(|e| {
        ["code", "type"]
            .iter()
            .find_map(|k| e.get(*k).and_then(Value::as_str).and_then(upstream_code))
    });
    let lower = message.to_lowercase();
    match status {
        429 => FailureKind::RateLimited { retry_after },
        500..=599 => FailureKind::ServerError { status, retry_after },
        401 | 403 => FailureKind::Auth { status, message },
        _ if code.contains("context_length")
            || lower.contains("context length")
            || lower.contains("maximum context")
            // Anthropic's: "prompt is too long: 210000 tokens > 200000 maximum".
            || lower.contains("prompt is too long") =>
        {
            FailureKind::ContextLength { message }
        }
        _ if is_policy(&code, &message) => FailureKind::ContentPolicy { message },
        _ if code.contains("prefill") || lower.contains("prefill") || lower.contains("continue_final_message") => {
            FailureKind::PrefillRejected { message }
        }
        _ => FailureKind::Rejected {
            status,
            message,
            code: named,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_finish_and_usage() {
        let data = r#"{"choices":[{"index":0,"delta":{"content":"Hé"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#;
        assert_eq!(
            parse_data(data),
            Ok(vec![
                Chunk::Text("Hé".into()),
                Chunk::Finish("stop".into()),
                Chunk::Usage(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 5,
                    reasoning_tokens: None,
                })
            ])
        );
        assert_eq!(parse_data("[DONE]"), Ok(vec![Chunk::Done]));
        assert_eq!(parse_data(r#"{"choices":[]}"#), Ok(vec![]));
    }

    #[test]
    fn error_objects_and_garbage_are_failures() {
        assert_eq!(
            parse_data(r#"{"error":{"message":"overloaded","type":"server_error"}}"#),
            Err(FailureKind::ErrorEvent {
                message: "overloaded".into()
            })
        );
        assert!(matches!(
            parse_data(r#"{"error":{"message":"no","code":"content_filter"}}"#),
            Err(FailureKind::ContentPolicy { .. })
        ));
        assert!(matches!(
            parse_data(r#"{"choices":[{"delta":{"content":"#),
            Err(FailureKind::Malformed { .. })
        ));
        assert!(matches!(parse_data("42"), Err(FailureKind::Malformed { .. })));
    }

    #[test]
    fn choices_may_be_empty_but_not_missing_without_usage() {
        // Usage and prompt-filter chunks have empty choices.
        assert_eq!(parse_data(r#"{"choices":[],"prompt_filter_results":[]}"#), Ok(vec![]));
        assert_eq!(
            parse_data(r#"{"usage":{"prompt_tokens":2,"completion_tokens":null}}"#),
            Ok(vec![Chunk::Usage(Usage {
                prompt_tokens: 2,
                completion_tokens: 0,
                reasoning_tokens: None,
            })])
        );
        for garbage in [
            r#"{"id":"x","object":"chat.completion.chunk"}"#,
            r#"{"choices":null,"usage":null}"#,
            r#"{"choices":"text"}"#,
            r#"{"choices":[{"delta":{"content":5}}]}"#,
            r#"[[{"delta":{"content":"x"}}]]"#,
            "",
        ] {
            assert!(
                matches!(parse_data(garbage), Err(FailureKind::Malformed { .. })),
                "{garbage}: {:?}",
                parse_data(garbage)
            );
        }
        // Escapes are decoded; nulls are absent values; unknown fields are ignored.
        assert_eq!(
            parse_data(
                r#"{"choices":[{"delta":{"role":"assistant","content":"a\"b\n\u00e9","tool_calls":null},"logprobs":null,"finish_reason":null}],"usage":null,"error":null}"#
            ),
            Ok(vec![Chunk::Text("a\"b\né".into())])
        );
    }

    #[test]
    fn only_unnamed_message_and_error_events_are_chunks() {
        let data = r#"{"choices":[{"delta":{"content":"x"}}]}"#;
        for event in ["", "message", "error"] {
            assert_eq!(parse_sse_event(event, data), Ok(vec![Chunk::Text("x".into())]));
        }
        assert_eq!(parse_sse_event("ping", r#"{"type":"ping"}"#), Ok(vec![]));
    }

    #[test]
    fn http_errors_are_classified_by_status_and_body() {
        assert_eq!(
            classify_http(429, Some("2"), ""),
            FailureKind::RateLimited {
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(
            classify_http(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), ""),
            FailureKind::RateLimited { retry_after: None }
        );
        assert!(matches!(
            classify_http(503, None, "busy"),
            FailureKind::ServerError { status: 503, .. }
        ));
        assert!(matches!(
            classify_http(401, None, "{}"),
            FailureKind::Auth { status: 401, .. }
        ));
        let ctx = r#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#;
        assert!(matches!(
            classify_http(400, None, ctx),
            FailureKind::ContextLength { .. }
        ));
        let policy = r#"{"error":{"message":"Your request was rejected by our content policy","code":"content_policy_violation"}}"#;
        assert_eq!(
            classify_http(400, None, policy),
            FailureKind::ContentPolicy {
                message: "Your request was rejected by our content policy".into()
            }
        );
        let prefill = r#"{"error":{"message":"This model does not support assistant message prefill","code":"prefill_not_supported"}}"#;
        assert!(matches!(
            classify_http(400, None, prefill),
            FailureKind::PrefillRejected { .. }
        ));
        assert!(matches!(
            classify_http(400, None, "nope"),
            FailureKind::Rejected { status: 400, .. }
        ));
    }

    #[test]
    fn a_refusal_keeps_the_upstreams_code_when_it_is_one() {
        let code = |body: &str| match classify_http(400, None, body) {
            FailureKind::Rejected { code, .. } => code,
            other => panic!("{other:?}"),
        };
        let openai = r#"{"error":{"message":"Invalid value","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}"#;
        assert_eq!(code(openai).as_deref(), Some("invalid_value"));
        // No code: the type stands in.
        let anthropic = r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#;
        assert_eq!(code(anthropic).as_deref(), Some("invalid_request_error"));
        // vLLM's top-level object with a numeric code: the type, lower-cased.
        let vllm = r#"{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}"#;
        assert_eq!(code(vllm).as_deref(), Some("badrequesterror"));
        // Prose or an echoed value is no code.
        let prose = r#"{"error":{"message":"bad","code":"the key sk-abc is wrong"}}"#;
        assert_eq!(code(prose), None);
        assert_eq!(code("not json"), None);
    }

    #[test]
    fn every_providers_context_length_error_is_one() {
        for body in [
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#,
            r#"{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","code":400}"#,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
        ] {
            assert!(
                matches!(classify_http(400, None, body), FailureKind::ContextLength { .. }),
                "{body}"
            );
        }
    }

    #[test]
    fn reasoning_deltas_keep_their_field_and_come_before_content() {
        let deepseek = r#"{"choices":[{"delta":{"reasoning_content":"hmm","content":"Hi"}}]}"#;
        assert_eq!(
            parse_data(deepseek),
            Ok(vec![
                Chunk::Reasoning {
                    text: "hmm".into(),
                    field: ReasoningField::ReasoningContent
                },
                Chunk::Text("Hi".into()),
            ])
        );
        let openrouter = r#"{"choices":[{"delta":{"reasoning":"so \"x\""}}]}"#;
        assert_eq!(
            parse_data(openrouter),
            Ok(vec![Chunk::Reasoning {
                text: "so \"x\"".into(),
                field: ReasoningField::Reasoning
            }])
        );
        // vLLM sends `null` or an empty string in the field it is not using.
        let empty = r#"{"choices":[{"delta":{"reasoning_content":"","reasoning":null,"content":"a"}}]}"#;
        assert_eq!(parse_data(empty), Ok(vec![Chunk::Text("a".into())]));
        let wrong = r#"{"choices":[{"delta":{"reasoning_content":5}}]}"#;
        assert!(matches!(parse_data(wrong), Err(FailureKind::Malformed { .. })));
    }

    #[test]
    fn reasoning_tokens_are_read_from_the_completion_details_and_odd_ones_ignored() {
        let reasoning = |details: &str| {
            let data = format!(
                r#"{{"choices":[],"usage":{{"prompt_tokens":4,"completion_tokens":90,"completion_tokens_details":{details}}}}}"#
            );
            match parse_data(&data) {
                Ok(chunks) => match chunks.as_slice() {
                    [Chunk::Usage(u)] => u.reasoning_tokens,
                    other => panic!("{other:?}"),
                },
                Err(e) => panic!("{details}: {e:?}"),
            }
        };
        assert_eq!(
            reasoning(r#"{"reasoning_tokens":64,"accepted_prediction_tokens":0}"#),
            Some(64)
        );
        // What a hostile or odd server may send is no figure, and never fails the attempt.
        for odd in [
            "null",
            "{}",
            "5",
            r#"{"reasoning_tokens":null}"#,
            r#"{"reasoning_tokens":-3}"#,
            r#"{"reasoning_tokens":1.5}"#,
            r#"{"reasoning_tokens":"64"}"#,
            r#"{"reasoning_tokens":1e300}"#,
            r#"{"reasoning_tokens":99999999999999999999999999}"#,
        ] {
            assert_eq!(reasoning(odd), None, "{odd}");
        }
        assert_eq!(
            reasoning(&format!(r#"{{"reasoning_tokens":{}}}"#, u64::MAX)),
            Some(u64::MAX)
        );
    }
}
