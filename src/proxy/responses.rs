//! The OpenAI Responses door, `POST /v1/responses`: its request translated
//! into baton's chat-shaped [`ParsedRequest`], the spliced items encoded as
//! Responses' semantic stream events ([`ResponsesEncoder`]), and the whole
//! answer as a response object ([`response_object`]).
//!
//! What it does not take: stored conversations (`previous_response_id`,
//! `conversation`), built-in tools (web search, file search …), `item_reference`
//! and file inputs. `store` is accepted and ignored: baton keeps nothing.

use std::fmt::Write as _;

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

/// Parses a `POST /v1/responses` body into the chat-shaped request every ladder takes.
pub fn parse_request(body: &[u8]) -> Result<ParsedRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(bad("invalid_request", "the request body must be a JSON object"));
    };
    for field in ["previous_response_id", "conversation"] {
        if object.get(field).is_some_and(|v| !v.is_null()) {
            return Err(bad(
                "unsupported_parameter",
                format!(
                    "`{field}` is not supported: baton stores no responses or conversations; \
                     send the whole conversation in `input` (`store` itself is accepted and ignored)"
                ),
            ));
        }
    }
    if object.get("background").and_then(Value::as_bool) == Some(true) {
        return Err(bad(
            "unsupported_parameter",
            "`background: true` is not supported: baton answers while the client waits",
        ));
    }
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
    let mut messages = Vec::new();
    match object.remove("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(Message::new(Role::System, s)),
        Some(_) => return Err(bad("invalid_instructions", "`instructions` must be a string")),
    }
    match object.remove("input") {
        Some(Value::String(s)) => messages.push(Message::new(Role::User, s)),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(i, item, &mut messages)?;
            }
        }
        Some(_) => return Err(bad("invalid_input", "`input` must be a string or an array of items")),
        None => return Err(bad("missing_input", "`input` is required")),
    }
    if !messages
        .iter()
        .any(|m| m.role != Role::System && m.role != Role::Developer)
    {
        return Err(bad("invalid_input", "`input` has no message to answer"));
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

/// Appends the chat messages of the input item `item` (the `i`-th) to `messages`.
fn input_item(i: usize, item: &Value, messages: &mut Vec<Message>) -> Result<(), ApiError> {
    let invalid = |what: String| bad("invalid_input", format!("`input[{i}]`: {what}"));
    let Value::Object(fields) = item else {
        return Err(invalid("must be an object".into()));
    };
    let kind = fields.get("type").and_then(Value::as_str);
    match kind {
        None | Some("message") => {
            let role = match fields.get("role").and_then(Value::as_str) {
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some("system") => Role::System,
                Some("developer") => Role::Developer,
                Some(other) => return Err(invalid(format!("unknown role {other:?}"))),
                None => return Err(invalid("`role` is required".into())),
            };
            let content = content(fields.get("content")).map_err(invalid)?;
            let message = Message::with_content(role, content, Map::new()).map_err(|e| invalid(e.to_string()))?;
            messages.push(message);
        }
        Some("function_call") => {
            let text = |key: &str| fields.get(key).and_then(Value::as_str);
            let (Some(call_id), Some(name)) = (text("call_id"), text("name")) else {
                return Err(invalid("a `function_call` needs string `call_id` and `name`".into()));
            };
            let call = json!({
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": text("arguments").unwrap_or("")},
            });
            // Chat completions want one assistant message with its text and all its calls.
            match messages.last_mut() {
                Some(last) if last.role == Role::Assistant => {
                    let calls = last.extra.entry("tool_calls").or_insert_with(|| json!([]));
                    match calls.as_array_mut() {
                        Some(list) => list.push(call),
                        None => *calls = json!([call]),
                    }
                }
                _ => {
                    let mut extra = Map::new();
                    extra.insert("tool_calls".into(), json!([call]));
                    messages.push(Message {
                        role: Role::Assistant,
                        content: String::new(),
                        parts: None,
                        extra,
                    });
                }
            }
        }
        Some("function_call_output") => {
            let Some(call_id) = fields.get("call_id").and_then(Value::as_str) else {
                return Err(invalid("a `function_call_output` needs a string `call_id`".into()));
            };
            let output = match fields.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => return Err(invalid("a `function_call_output` needs an `output`".into())),
            };
            let mut extra = Map::new();
            extra.insert("tool_call_id".into(), json!(call_id));
            messages.push(Message {
                role: Role::Tool,
                content: output,
                parts: None,
                extra,
            });
        }
        // The model's own reasoning from an earlier turn: no chat upstream takes it back.
        Some("reasoning") => {}
        Some(other) => {
            return Err(invalid(format!(
                "input items of type {other:?} are not supported (messages, function_call, \
                 function_call_output and reasoning are)"
            )))
        }
    }
    Ok(())
}

/// A Responses message content as chat content: a string, or chat content parts.
fn content(content: Option<&Value>) -> Result<Value, String> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(json!(s)),
        None | Some(Value::Null) => return Ok(json!("")),
        Some(Value::Array(parts)) => parts,
        Some(_) => return Err("`content` must be a string or an array of parts".into()),
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text") => match part.get("text").and_then(Value::as_str) {
                Some(text) => out.push(json!({"type": "text", "text": text})),
                None => return Err(format!("content part {j} has no string `text`")),
            },
            Some("refusal") => {
                if let Some(text) = part.get("refusal").and_then(Value::as_str) {
                    out.push(json!({"type": "text", "text": text}));
                }
            }
            Some("input_image") => match part.get("image_url").and_then(Value::as_str) {
                Some(url) => {
                    let mut image = json!({"url": url});
                    if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                        image["detail"] = detail.clone();
                    }
                    out.push(json!({"type": "image_url", "image_url": image}));
                }
                None => {
                    return Err(format!(
                        "content part {j}: only images given by `image_url` are supported (no `file_id`)"
                    ))
                }
            },
            Some(other) => return Err(format!("content parts of type {other:?} are not supported")),
            None => return Err(format!("content part {j} has no string `type`")),
        }
    }
    // Text alone goes as one string: every upstream takes that for every role.
    if out.iter().all(|p| p["type"] == "text") {
        let texts: Vec<&str> = out.iter().filter_map(|p| p["text"].as_str()).collect();
        return Ok(json!(texts.join("\n")));
    }
    Ok(Value::Array(out))
}

/// The chat parameters of the Responses fields left in `object`.
fn params(mut object: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut params = Map::new();
    for key in [
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "user",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    ] {
        if let Some(v) = object.remove(key).filter(|v| !v.is_null()) {
            params.insert(key.into(), v);
        }
    }
    if let Some(v) = object.remove("max_output_tokens").filter(|v| !v.is_null()) {
        if !v.is_u64() {
            return Err(bad(
                "invalid_max_output_tokens",
                "`max_output_tokens` must be a positive integer",
            ));
        }
        params.insert("max_tokens".into(), v);
    }
    if let Some(effort) = object
        .get("reasoning")
        .and_then(|r| r.get("effort"))
        .filter(|e| e.is_string())
    {
        params.insert("reasoning_effort".into(), effort.clone());
    }
    if let Some(Value::Array(tools)) = object.remove("tools") {
        let mut out = Vec::with_capacity(tools.len());
        for (i, tool) in tools.iter().enumerate() {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
            if kind != "function" {
                return Err(bad(
                    "unsupported_tool",
                    format!("`tools[{i}]` is of type {kind:?}: baton passes only `function` tools"),
                ));
            }
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                return Err(bad("invalid_tools", format!("`tools[{i}]` needs a string `name`")));
            };
            let mut function = json!({"name": name});
            for key in ["description", "parameters", "strict"] {
                if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                    function[key] = v.clone();
                }
            }
            out.push(json!({"type": "function", "function": function}));
        }
        if !out.is_empty() {
            params.insert("tools".into(), Value::Array(out));
        }
    }
    match object.remove("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if matches!(s.as_str(), "auto" | "none" | "required") => {
            params.insert("tool_choice".into(), json!(s));
        }
        Some(choice) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            let Some(name) = choice.get("name").and_then(Value::as_str) else {
                return Err(bad("invalid_tool_choice", "a function `tool_choice` needs a `name`"));
            };
            params.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": name}}),
            );
        }
        Some(choice) => {
            return Err(bad(
                "invalid_tool_choice",
                format!("`tool_choice` {choice} is not supported (auto, none, required or a function)"),
            ))
        }
    }
    if let Some(format) = object.get("text").and_then(|t| t.get("format")) {
        match format.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let mut schema = json!({
                    "name": format.get("name").cloned().unwrap_or_else(|| json!("response")),
                    "schema": format.get("schema").cloned().unwrap_or_else(|| json!({})),
                });
                if let Some(strict) = format.get("strict").filter(|s| s.is_boolean()) {
                    schema["strict"] = strict.clone();
                }
                params.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": schema}),
                );
            }
            Some("json_object") => {
                params.insert("response_format".into(), json!({"type": "json_object"}));
            }
            _ => {}
        }
    }
    // The rest (`store`, `metadata`, `include`, `truncation`, `stream_options` …)
    // means nothing to a chat upstream, and some would be refused there.
    Ok(params)
}

/// The kind of the output item open in a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Message,
}

/// The output item being streamed.
#[derive(Clone, Debug)]
struct Open {
    kind: Kind,
    index: usize,
    id: String,
    text: String,
}

/// The OpenAI Responses SSE encoder: one response id, output indices that
/// continue across handovers, a sequence number over the whole stream.
#[derive(Clone, Debug)]
pub struct ResponsesEncoder {
    id: String,
    created: u64,
    model: String,
    sequence: u64,
    started: bool,
    open: Option<Open>,
    /// The finished output items, in output order.
    output: Vec<Value>,
}

impl ResponsesEncoder {
    /// An encoder for the response `id` to a request for `model`, started at `created`.
    pub fn new(id: &str, model: &str, created: u64) -> Self {
        ResponsesEncoder {
            id: id.to_string(),
            created,
            model: model.to_string(),
            sequence: 0,
            started: false,
            open: None,
            output: Vec::new(),
        }
    }

    /// Appends one event: `event: <type>` and its JSON with the next sequence number.
    fn event(&mut self, kind: &'static str, mut data: Value, out: &mut BytesMut) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        let _ = serde_json::to_writer(bytes::BufMut::writer(&mut *out), &data);
        out.extend_from_slice(b"\n\n");
    }

    fn snapshot(&self, status: &str, output: Vec<Value>) -> Value {
        base_object(&self.id, self.created, &self.model, status, output)
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.snapshot("in_progress", Vec::new());
        self.event("response.created", json!({"response": response}), out);
        let response = self.snapshot("in_progress", Vec::new());
        self.event("response.in_progress", json!({"response": response}), out);
    }

    fn next_index(&self) -> usize {
        self.output.len() + usize::from(self.open.is_some())
    }

    /// Makes an item of `kind` the open one, closing another first.
    fn ensure(&mut self, kind: Kind, out: &mut BytesMut) {
        if self.open.as_ref().is_some_and(|o| o.kind == kind) {
            return;
        }
        self.close("completed", out);
        let index = self.next_index();
        let (id, item, part) = match kind {
            Kind::Message => {
                let id = wire::new_id("msg_");
                let item =
                    json!({"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []});
                (id, item, json!({"type": "output_text", "text": "", "annotations": []}))
            }
            Kind::Reasoning => {
                let id = wire::new_id("rs_");
                let item =
                    json!({"id": id, "type": "reasoning", "status": "in_progress", "summary": [], "content": []});
                (id, item, json!({"type": "reasoning_text", "text": ""}))
            }
        };
        self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
            out,
        );
        self.event(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
            out,
        );
        self.open = Some(Open {
            kind,
            index,
            id,
            text: String::new(),
        });
    }

    fn delta(&mut self, kind: Kind, text: &str, out: &mut BytesMut) {
        self.ensure(kind, out);
        let Some(open) = self.open.as_mut() else {
            return;
        };
        open.text.push_str(text);
        let kind = match kind {
            Kind::Message => "response.output_text.delta",
            Kind::Reasoning => "response.reasoning_text.delta",
        };
        // The per-token path: written directly, no JSON value built (the same
        // fields `event` would write; ids and kinds are ours, never escaped).
        out.reserve(kind.len() * 2 + open.id.len() + text.len() + 160);
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: {\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"item_id\":\"");
        out.extend_from_slice(open.id.as_bytes());
        out.extend_from_slice(b"\",\"output_index\":");
        // Numbers formatted into the frame itself: no String per token.
        let _ = write!(out, "{}", open.index);
        out.extend_from_slice(b",\"content_index\":0,\"delta\":");
        let _ = serde_json::to_writer(bytes::BufMut::writer(&mut *out), text);
        if kind == "response.output_text.delta" {
            out.extend_from_slice(b",\"logprobs\":[]");
        }
        out.extend_from_slice(b",\"sequence_number\":");
        let _ = write!(out, "{}", self.sequence);
        out.extend_from_slice(b"}\n\n");
        self.sequence += 1;
    }

    /// Closes the open item, if any, as `status`: its done events, and it joins the output.
    fn close(&mut self, status: &str, out: &mut BytesMut) {
        let Some(open) = self.open.take() else {
            return;
        };
        let item = finished_item(&open, status);
        let (index, id, text) = (open.index, open.id, open.text);
        let (done, part) = match open.kind {
            Kind::Message => (
                "response.output_text.done",
                json!({"type": "output_text", "text": text, "annotations": []}),
            ),
            Kind::Reasoning => (
                "response.reasoning_text.done",
                json!({"type": "reasoning_text", "text": text}),
            ),
        };
        let mut data = json!({"item_id": id, "output_index": index, "content_index": 0, "text": text});
        if open.kind == Kind::Message {
            data["logprobs"] = json!([]);
        }
        self.event(done, data, out);
        self.event(
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
            out,
        );
        self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
            out,
        );
        self.output.push(item);
    }

    fn tool_calls(&mut self, deltas: &[Value], out: &mut BytesMut) {
        self.close("completed", out);
        for call in wire::merge_tool_calls(deltas) {
            let index = self.next_index();
            let id = wire::new_id("fc_");
            let call_id = call
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| wire::new_id("call_"), str::to_string);
            let name = call.pointer("/function/name").and_then(Value::as_str).unwrap_or("");
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("");
            let item = |status: &str, arguments: &str| json!({"id": id, "type": "function_call", "status": status, "call_id": call_id, "name": name, "arguments": arguments});
            self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": item("in_progress", "")}),
                out,
            );
            self.event(
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": index, "delta": arguments}),
                out,
            );
            self.event(
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments}),
                out,
            );
            let done = item("completed", arguments);
            self.event(
                "response.output_item.done",
                json!({"output_index": index, "item": done}),
                out,
            );
            self.output.push(done);
        }
    }

    /// `response.failed`: the items so far (an open one as incomplete) and the error.
    fn failed(&mut self, message: &str, code: &str, out: &mut BytesMut) {
        self.start(out);
        let mut output = self.output.clone();
        if let Some(open) = self.open.take() {
            output.push(finished_item(&open, "incomplete"));
        }
        let mut response = self.snapshot("failed", output);
        response["error"] = json!({"code": code, "message": message});
        self.event("response.failed", json!({"response": response}), out);
    }
}

/// The output item `open` is, with `status`.
fn finished_item(open: &Open, status: &str) -> Value {
    match open.kind {
        Kind::Message => json!({
            "id": open.id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": open.text, "annotations": []}],
        }),
        Kind::Reasoning => json!({
            "id": open.id, "type": "reasoning", "status": status, "summary": [],
            "content": [{"type": "reasoning_text", "text": open.text}],
        }),
    }
}

/// A response object with no usage yet: the fields every one carries.
fn base_object(id: &str, created: u64, model: &str, status: &str, output: Vec<Value>) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "metadata": {},
        "parallel_tool_calls": true,
        "temperature": null,
        "top_p": null,
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "usage": null,
    })
}

/// The status a finish reason gives a response, and its `incomplete_details`.
fn status(finish_reason: &str) -> (&'static str, Value) {
    match finish_reason {
        "length" => ("incomplete", json!({"reason": "max_output_tokens"})),
        "content_filter" => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// Responses' usage object, summed over every attempt; `null` when none reported.
fn usage(tokens: &Tally) -> Value {
    match tokens.reported() {
        Some(u) => json!({
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens.unwrap_or(0)},
            "total_tokens": u.total(),
        }),
        None => Value::Null,
    }
}

/// Fills in a finished response's status, usage and baton's account.
fn finish(response: &mut Value, finish_reason: &str, tokens: &Tally, route_chain: &[String], failures: usize) {
    let (status, details) = status(finish_reason);
    response["status"] = json!(status);
    response["incomplete_details"] = details;
    response["usage"] = usage(tokens);
    response["baton"] = json!({
        "route_chain": route_chain,
        "failures": failures,
        "finish_reason": finish_reason,
        "usage": wire::usage_account(tokens),
    });
}

/// The event type a finished response goes out as.
fn finished_event(finish_reason: &str) -> &'static str {
    match status(finish_reason).0 {
        "incomplete" => "response.incomplete",
        _ => "response.completed",
    }
}

impl ClientEncoder for ResponsesEncoder {
    fn item(&mut self, item: &ClientItem, out: &mut BytesMut) -> Flow {
        self.start(out);
        match item {
            ClientItem::Text { text, model, .. } => {
                model.as_ref().clone_into(&mut self.model);
                self.delta(Kind::Message, text, out);
            }
            ClientItem::Reasoning { text, model, .. } => {
                model.as_ref().clone_into(&mut self.model);
                self.delta(Kind::Reasoning, text, out);
            }
            ClientItem::ToolCalls { deltas, model, .. } => {
                model.as_ref().clone_into(&mut self.model);
                self.tool_calls(deltas, out);
            }
            ClientItem::Handover(h) => out.extend_from_slice(&wire::handover_comment(h)),
            ClientItem::Done(done) => {
                // A cut-short answer's last item is incomplete, as OpenAI marks it.
                let (status, _) = status(&done.finish_reason);
                self.close(
                    if status == "incomplete" {
                        "incomplete"
                    } else {
                        "completed"
                    },
                    out,
                );
                let mut response = self.snapshot("completed", self.output.clone());
                finish(
                    &mut response,
                    &done.finish_reason,
                    &done.tokens,
                    &done.route_chain,
                    done.failures.len(),
                );
                self.event(finished_event(&done.finish_reason), json!({"response": response}), out);
                return Flow::End;
            }
            ClientItem::Failed(error) => {
                let api = ApiError::from_splice(error);
                self.failed(&api.message, api.code, out);
                return Flow::End;
            }
        }
        Flow::Go
    }

    fn error(&mut self, message: &str, code: &'static str, out: &mut BytesMut) {
        self.failed(message, code, out);
    }
}

/// A whole answer as one response object with the id `id`.
pub fn response_object(answer: &Answer, id: &str, created: u64) -> Value {
    let mut output = Vec::new();
    if let Some((thought, _)) = &answer.reasoning {
        output.push(json!({
            "id": wire::new_id("rs_"), "type": "reasoning", "status": "completed", "summary": [],
            "content": [{"type": "reasoning_text", "text": thought}],
        }));
    }
    if !answer.text.is_empty() || answer.tool_calls.is_empty() {
        let item_status = match status(&answer.finish_reason).0 {
            "incomplete" => "incomplete",
            _ => "completed",
        };
        output.push(json!({
            "id": wire::new_id("msg_"), "type": "message", "status": item_status, "role": "assistant",
            "content": [{"type": "output_text", "text": answer.text, "annotations": []}],
        }));
    }
    for call in &answer.tool_calls {
        output.push(json!({
            "id": wire::new_id("fc_"),
            "type": "function_call",
            "status": "completed",
            "call_id": call.get("id").and_then(Value::as_str).map_or_else(|| wire::new_id("call_"), str::to_string),
            "name": call.pointer("/function/name").and_then(Value::as_str).unwrap_or(""),
            "arguments": call.pointer("/function/arguments").and_then(Value::as_str).unwrap_or(""),
        }));
    }
    let mut response = base_object(id, created, &answer.model, "completed", output);
    finish(
        &mut response,
        &answer.finish_reason,
        &answer.tokens,
        &answer.route_chain,
        answer.failures,
    );
    // The SDKs compute `output_text` themselves; plain-HTTP clients get it too.
    response["output_text"] = json!(answer.text);
    response
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
    fn a_string_input_and_instructions_are_a_system_and_a_user_message() {
        let parsed =
            parse(json!({"model": "m", "input": "hi", "instructions": "Be brief.", "stream": true, "store": true}))
                .expect("valid");
        assert_eq!(parsed.model, "m");
        assert!(parsed.stream);
        let roles: Vec<Role> = parsed.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::User]);
        assert_eq!(parsed.messages[0].content, "Be brief.");
        assert_eq!(parsed.messages[1].content, "hi");
        assert!(parsed.params.is_empty(), "{:?}", parsed.params);
    }

    #[test]
    fn items_become_chat_messages() {
        let parsed = parse(json!({"model": "m", "input": [
            {"role": "developer", "content": "Rules."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Look:"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
            ]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Calling."}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\":1}"},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "dropped"}]},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
        ]}))
        .expect("valid");
        let sent: Vec<Value> = parsed
            .messages
            .iter()
            .map(|m| serde_json::to_value(m).expect("serializes"))
            .collect();
        assert_eq!(
            sent,
            [
                json!({"role": "developer", "content": "Rules."}),
                json!({"role": "user", "content": [
                    {"type": "text", "text": "Look:"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                ]}),
                json!({"role": "assistant", "content": "Calling.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{\"a\":1}"}},
                ]}),
                json!({"role": "tool", "content": "one", "tool_call_id": "c1"}),
                json!({"role": "tool", "content": "two", "tool_call_id": "c2"}),
            ]
        );
    }

    #[test]
    fn parameters_are_translated_to_chat_ones() {
        let parsed = parse(json!({
            "model": "m", "input": "x", "max_output_tokens": 64, "temperature": 0.5, "top_p": 0.9,
            "reasoning": {"effort": "high", "summary": "auto"}, "user": "u", "metadata": {"a": "b"},
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": false}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true}},
            "truncation": "auto", "include": ["reasoning.encrypted_content"],
        }))
        .expect("valid");
        assert_eq!(
            Value::Object(parsed.params),
            json!({
                "max_tokens": 64, "temperature": 0.5, "top_p": 0.9, "reasoning_effort": "high", "user": "u",
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": false}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
                "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}},
            })
        );
    }

    #[test]
    fn what_baton_cannot_do_is_refused_with_a_reason() {
        assert_eq!(
            code(json!({"model": "m", "input": "x", "previous_response_id": "resp_1"})),
            "unsupported_parameter"
        );
        assert_eq!(
            code(json!({"model": "m", "input": "x", "conversation": {"id": "c"}})),
            "unsupported_parameter"
        );
        assert_eq!(
            code(json!({"model": "m", "input": "x", "background": true})),
            "unsupported_parameter"
        );
        assert_eq!(
            code(json!({"model": "m", "input": "x", "tools": [{"type": "file_search"}]})),
            "unsupported_tool"
        );
        assert_eq!(
            code(json!({"model": "m", "input": "x", "tool_choice": {"type": "web_search"}})),
            "invalid_tool_choice"
        );
        assert_eq!(
            code(json!({"model": "m", "input": [{"type": "item_reference", "id": "i"}]})),
            "invalid_input"
        );
        assert_eq!(
            code(
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]})
            ),
            "invalid_input"
        );
        assert_eq!(
            code(json!({"model": "m", "input": [{"role": "wizard", "content": "x"}]})),
            "invalid_input"
        );
        assert_eq!(
            code(json!({"model": "m", "input": [{"type": "reasoning", "summary": []}]})),
            "invalid_input"
        );
        assert_eq!(code(json!({"model": "m", "input": 5})), "invalid_input");
        assert_eq!(code(json!({"model": "m"})), "missing_input");
        assert_eq!(code(json!({"input": "x"})), "missing_model");
        assert_eq!(
            code(json!({"model": "m", "input": "x", "stream": "yes"})),
            "invalid_stream"
        );
        assert_eq!(
            code(json!({"model": "m", "input": "x", "max_output_tokens": -1})),
            "invalid_max_output_tokens"
        );
        let message = parse(json!({"model": "m", "input": "x", "previous_response_id": "r"}))
            .expect_err("refused")
            .message;
        assert!(
            message.contains("previous_response_id") && message.contains("store"),
            "{message}"
        );
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

    /// Runs `items` through an encoder: every event as (type, data), and the comments.
    fn run(items: &[ClientItem]) -> (Vec<(String, Value)>, Vec<String>) {
        let mut encoder = ResponsesEncoder::new("resp_t", "asked", 7);
        let mut out = BytesMut::new();
        for (i, item) in items.iter().enumerate() {
            let flow = encoder.item(item, &mut out);
            let last = matches!(item, ClientItem::Done(_) | ClientItem::Failed(_));
            assert_eq!(flow == Flow::End, last, "item {i}");
        }
        frames(&out)
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

    fn kinds(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn reasoning_then_text_across_a_handover_is_two_items_in_one_response() {
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
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(comments.len(), 1, "the handover is a comment: {comments:?}");
        for (i, (_, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], json!(i));
        }
        assert_eq!(events[0].1["response"]["model"], "asked");
        assert_eq!(events[0].1["response"]["created_at"], 7);
        let delta = &events[11].1;
        let item_id = events[9].1["item"]["id"].as_str().expect("id");
        assert_eq!(
            *delta,
            json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 1, "content_index": 0,
                   "delta": tricky, "logprobs": [], "sequence_number": 11}),
            "the direct-written delta is the JSON the general path writes"
        );
        let completed = &events[16].1["response"];
        assert_eq!(completed["status"], "completed");
        assert_eq!(completed["model"], "up");
        assert_eq!(completed["output"][0]["content"][0]["text"], "hmm");
        assert_eq!(completed["output"][1]["content"][0]["text"], format!("{tricky}!"));
        assert_eq!(
            completed["usage"],
            json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 20,
                   "output_tokens_details": {"reasoning_tokens": 5}, "total_tokens": 30})
        );
    }

    #[test]
    fn length_and_content_filter_are_incomplete_responses() {
        for (reason, why) in [("length", "max_output_tokens"), ("content_filter", "content_filter")] {
            let (events, _) = run(&[text("cut"), done(reason)]);
            let (kind, data) = events.last().expect("events");
            assert_eq!(kind, "response.incomplete");
            assert_eq!(data["response"]["status"], "incomplete");
            assert_eq!(data["response"]["incomplete_details"], json!({"reason": why}));
            assert_eq!(data["response"]["output"][0]["status"], "incomplete");
        }
    }

    #[test]
    fn tool_calls_close_the_message_and_each_is_an_item() {
        let calls = ClientItem::ToolCalls {
            deltas: vec![
                json!({"index": 2, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":"}}),
                json!({"index": 2, "function": {"arguments": "1}"}}),
                json!({"index": 5, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}),
            ],
            route: Arc::from("r"),
            model: Arc::from("up"),
        };
        let (events, _) = run(&[text("Let me check."), calls, done("tool_calls")]);
        let added: Vec<&Value> = events
            .iter()
            .filter(|(k, _)| k == "response.output_item.added")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(added.len(), 3);
        assert_eq!(added[1]["output_index"], 1);
        assert_eq!(added[1]["item"]["arguments"], "");
        assert_eq!(added[2]["item"]["call_id"], "call_b");
        let output = &events.last().expect("events").1["response"]["output"];
        assert_eq!(output[0]["type"], "message");
        assert_eq!(output[1]["arguments"], "{\"x\":1}");
        assert_eq!(output[2]["name"], "g");
    }

    #[test]
    fn failures_are_response_failed_never_completed() {
        let failed = ClientItem::Failed(SpliceError::Local {
            resource: "memory".into(),
            failures: Vec::new(),
            emitted_bytes: 3,
            tokens: Tally::default(),
        });
        let (events, _) = run(&[text("par"), failed]);
        let (kind, data) = events.last().expect("events");
        assert_eq!(kind, "response.failed");
        assert_eq!(data["response"]["status"], "failed");
        assert_eq!(data["response"]["error"]["code"], wire::LOCAL_EXHAUSTED);
        assert_eq!(data["response"]["output"][0]["status"], "incomplete");
        assert_eq!(data["response"]["output"][0]["content"][0]["text"], "par");
        assert!(!kinds(&events).contains(&"response.completed"));

        // baton's own stop, even before any item: created first, then failed.
        let mut encoder = ResponsesEncoder::new("resp_e", "m", 1);
        let mut out = BytesMut::new();
        encoder.error("shutting down", "server_shutdown", &mut out);
        let (events, _) = frames(&out);
        assert_eq!(
            kinds(&events),
            ["response.created", "response.in_progress", "response.failed"]
        );
        assert_eq!(
            events[2].1["response"]["error"],
            json!({"code": "server_shutdown", "message": "shutting down"})
        );
    }

    #[test]
    fn a_whole_answer_is_a_response_object() {
        let answer = Answer {
            text: "Hello".into(),
            reasoning: Some(("hm".into(), ReasoningField::Reasoning)),
            tool_calls: vec![json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}})],
            model: "up".into(),
            finish_reason: "tool_calls".into(),
            tokens: Tally::default(),
            route_chain: vec!["r".into()],
            failures: 0,
        };
        let v = response_object(&answer, "resp_w", 9);
        assert_eq!(v["id"], "resp_w");
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["output_text"], "Hello");
        assert_eq!(v["usage"], Value::Null, "no attempt reported usage");
        let kinds: Vec<&str> = v["output"]
            .as_array()
            .expect("output")
            .iter()
            .map(|i| i["type"].as_str().expect("type"))
            .collect();
        assert_eq!(kinds, ["reasoning", "message", "function_call"]);
        assert_eq!(v["output"][2]["call_id"], "call_1");
    }
}
