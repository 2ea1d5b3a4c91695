//! The OpenAI Responses door, `POST /v1/responses`: its request translated
//! into baton's chat-shaped [`ParsedRequest`], the spliced items encoded as
//! Responses' semantic stream events ([`ResponsesEncoder`]), and the whole
//! answer as a response object ([`response_object`]).
//!
//! What it does not take: stored conversations (`previous_response_id`,
//! `conversation`), built-in tools (web search, file search …), `item_reference`
//! and file inputs. `store` is accepted and ignored: baton keeps nothing.

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
        self.close(out);
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
        let (index, id) = (open.index, open.id.clone());
        match kind {
            Kind::Message => self.event(
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
                out,
            ),
            Kind::Reasoning => self.event(
                "response.reasoning_text.delta",
                json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text}),
                out,
            ),
        }
    }

    /// Closes the open item, if any: its done events, and it joins the output.
    fn close(&mut self, out: &mut BytesMut) {
        let Some(open) = self.open.take() else {
            return;
        };
        let item = finished_item(&open, "completed");
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
        self.close(out);
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
                self.close(out);
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
        output.push(json!({
            "id": wire::new_id("msg_"), "type": "message", "status": "completed", "role": "assistant",
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
