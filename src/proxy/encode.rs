//! Client encoders: how the items of a spliced answer become the bytes of one
//! client wire format. The streamed response body ([`super::session`]) drives
//! a [`ClientEncoder`] and knows nothing of the format, so the Anthropic
//! Messages and OpenAI Responses encoders plug into the same body as the
//! chat-completions one ([`ChatEncoder`]).

use bytes::{BufMut, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};

use super::wire::{self, ApiError};
use crate::engine::splice::{ClientItem, SpliceError};
use crate::policy::reasoning::OutgoingField;
use crate::provider::ReasoningField;

/// Whether a stream goes on after an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// More items may follow.
    Go,
    /// The item ended the answer: nothing more is written.
    End,
}

/// Writes one answer's items in a client wire format.
pub trait ClientEncoder: Send {
    /// Appends the bytes of `item` to `out`; [`Flow::End`] after the last item (done or failed).
    fn item(&mut self, item: &ClientItem, out: &mut BytesMut) -> Flow;

    /// Appends the event that ends an answer baton itself stopped (shutdown,
    /// slow client, internal error), with `message` and the stable `code`.
    fn error(&mut self, message: &str, code: &'static str, out: &mut BytesMut);
}

/// A whole answer, gathered from its items, for a door to render.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    /// The answer text.
    pub text: String,
    /// The reasoning and the field it goes out in (the first route's that reasoned).
    pub reasoning: Option<(String, ReasoningField)>,
    /// The tool calls, merged (one object per call, numbered densely from 0).
    pub tool_calls: Vec<Value>,
    /// The upstream model that wrote the answer's last part.
    pub model: String,
    /// The last route's finish reason.
    pub finish_reason: String,
    /// Every attempt's tokens.
    pub tokens: crate::usage::Tally,
    /// The routes that wrote it, in order.
    pub route_chain: Vec<String>,
    /// How many attempts failed on the way.
    pub failures: usize,
}

/// Gathers a whole answer from its items, one at a time: how a non-streamed
/// answer is made, by the proxy and by anyone embedding the splicer.
#[derive(Clone, Debug, Default)]
pub struct Gather {
    answer: Answer,
    tool_deltas: Vec<Value>,
    reasoning_field: OutgoingField,
}

impl Gather {
    /// A gatherer whose reasoning goes out in the field `reasoning_field` says.
    pub fn new(reasoning_field: OutgoingField) -> Self {
        Gather {
            reasoning_field,
            ..Gather::default()
        }
    }

    /// Takes the next item; the item that ends the answer returns it, or the
    /// error the client gets instead: a partial answer is never presented as complete.
    pub fn item(&mut self, item: ClientItem) -> Option<Result<Answer, ApiError>> {
        let answer = &mut self.answer;
        match item {
            ClientItem::Text { text, model, .. } => {
                answer.text.push_str(&text);
                model.as_ref().clone_into(&mut answer.model);
            }
            ClientItem::ToolCalls { deltas, model, .. } => {
                self.tool_deltas.extend(deltas);
                model.as_ref().clone_into(&mut answer.model);
            }
            ClientItem::Reasoning { text, field, model, .. } => {
                answer
                    .reasoning
                    .get_or_insert_with(|| (String::new(), self.reasoning_field.apply(field)))
                    .0
                    .push_str(&text);
                if answer.model.is_empty() {
                    model.as_ref().clone_into(&mut answer.model);
                }
            }
            ClientItem::Handover(_) => {}
            ClientItem::Done(done) => {
                answer.tool_calls = wire::merge_tool_calls(&self.tool_deltas);
                answer.finish_reason = done.finish_reason;
                answer.tokens = done.tokens;
                answer.route_chain = done.route_chain;
                answer.failures = done.failures.len();
                return Some(Ok(std::mem::take(answer)));
            }
            ClientItem::Failed(error) => return Some(Err(ApiError::from_splice(&error))),
        }
        None
    }

    /// The error for items that stopped before one ended the answer.
    pub fn cut_short(&self) -> ApiError {
        ApiError::from_splice(&SpliceError::Exhausted {
            failures: Vec::new(),
            emitted_bytes: self.answer.text.len() as u64,
            tokens: Default::default(),
        })
    }
}

/// The whole answer of `items` (a [`crate::Splicer::splice`] stream), gathered by a [`Gather`].
pub async fn gather(items: impl Stream<Item = ClientItem>, reasoning_field: OutgoingField) -> Result<Answer, ApiError> {
    let mut gather = Gather::new(reasoning_field);
    let mut items = std::pin::pin!(items);
    while let Some(item) = items.next().await {
        if let Some(done) = gather.item(item) {
            return done;
        }
    }
    Err(gather.cut_short())
}

/// A whole answer as one `chat.completion` object with the id `id`.
pub fn chat_completion(answer: &Answer, id: &str, created: u64) -> Value {
    let mut message = json!({"role": "assistant", "content": answer.text});
    if let Some((thought, field)) = &answer.reasoning {
        message[wire::reasoning_key(*field)] = json!(thought);
    }
    if !answer.tool_calls.is_empty() {
        message["tool_calls"] = json!(answer.tool_calls);
        if answer.text.is_empty() {
            // As OpenAI answers a call without words.
            message["content"] = Value::Null;
        }
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason}],
        "usage": wire::usage_json(&answer.tokens),
        "baton": {
            "route_chain": answer.route_chain,
            "failures": answer.failures,
            "usage": wire::usage_account(&answer.tokens),
        },
    })
}

/// The text that closes a delta chunk whose finish reason is still open.
const OPEN_TAIL: &[u8] = b"},\"finish_reason\":null}]}\n\n";

/// The OpenAI chat-completions SSE encoder: every chunk starts with one
/// template rendered once per stream (and again only when the model changes),
/// the delta written into it directly, with no JSON value built per delta.
#[derive(Clone, Debug)]
pub struct ChatEncoder {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":`, for every chunk.
    head: Vec<u8>,
    /// The model the template was rendered for.
    model: String,
    /// [`Self::head`], the model as JSON, then `,"choices":[{"index":0,"delta":{`.
    template: Vec<u8>,
    /// Whether `"role":"assistant"` went out (in the first delta, as OpenAI sends it).
    role_sent: bool,
    include_usage: bool,
    reasoning_field: OutgoingField,
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it (writing into memory cannot fail).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// [`push_json_str`] into the frame being written.
fn put_json_str(out: &mut BytesMut, s: &str) {
    let _ = serde_json::to_writer(out.writer(), s);
}

/// Appends `value` as compact JSON to the frame being written (writing into memory cannot fail).
fn put_json(out: &mut BytesMut, value: &Value) {
    let _ = serde_json::to_writer(out.writer(), value);
}

impl ChatEncoder {
    /// An encoder for the answer `id` started at `created` (seconds since the
    /// epoch); a usage chunk before `[DONE]` when `include_usage`.
    pub fn new(id: &str, created: u64, include_usage: bool, reasoning_field: OutgoingField) -> Self {
        let mut head = Vec::with_capacity(id.len() + 80);
        head.extend_from_slice(b"data: {\"id\":");
        push_json_str(&mut head, id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        head.extend_from_slice(created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        let mut encoder = ChatEncoder {
            head,
            model: String::new(),
            template: Vec::new(),
            role_sent: false,
            include_usage,
            reasoning_field,
        };
        encoder.render();
        encoder
    }

    fn render(&mut self) {
        self.template.clear();
        self.template.extend_from_slice(&self.head);
        push_json_str(&mut self.template, &self.model);
        self.template
            .extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":{");
    }

    /// Makes `model` the one chunks name from now on.
    fn model(&mut self, model: &str) {
        if model != self.model {
            model.clone_into(&mut self.model);
            self.render();
        }
    }

    /// The role field after a delta's own fields, on the first delta only.
    fn role(&mut self, out: &mut BytesMut, after_field: bool) {
        if !self.role_sent {
            self.role_sent = true;
            if after_field {
                out.extend_from_slice(b",");
            }
            out.extend_from_slice(b"\"role\":\"assistant\"");
        }
    }

    /// One chunk whose delta is `{key: text}` (`key` is one of ours: plain ASCII, never escaped).
    fn delta_str(&mut self, key: &'static str, text: &str, out: &mut BytesMut) {
        // Room for the chunk as written when nothing needs escaping: one reservation per chunk.
        out.reserve(self.template.len() + key.len() + text.len() + 64);
        out.extend_from_slice(&self.template);
        out.put_u8(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        put_json_str(out, text);
        self.role(out, true);
        out.extend_from_slice(OPEN_TAIL);
    }

    fn tool_calls(&mut self, deltas: &[Value], out: &mut BytesMut) {
        for (index, mut call) in wire::merge_tool_calls(deltas).into_iter().enumerate() {
            if let Value::Object(fields) = &mut call {
                // Dense from 0, whatever the upstream numbered: the SDK stores calls at `index` in a list.
                fields.insert("index".into(), Value::from(index));
            }
            out.extend_from_slice(&self.template);
            out.extend_from_slice(b"\"tool_calls\":[");
            put_json(out, &call);
            out.put_u8(b']');
            self.role(out, true);
            out.extend_from_slice(OPEN_TAIL);
        }
    }

    fn finish(&mut self, reason: &str, out: &mut BytesMut) {
        out.extend_from_slice(&self.template);
        self.role(out, false);
        out.extend_from_slice(b"},\"finish_reason\":");
        put_json_str(out, reason);
        out.extend_from_slice(b"}]}\n\n");
    }

    fn usage(&self, tokens: &crate::usage::Tally, out: &mut BytesMut) {
        out.extend_from_slice(&self.head);
        put_json_str(out, &self.model);
        out.extend_from_slice(b",\"choices\":[],\"usage\":");
        put_json(out, &wire::usage_json(tokens));
        out.extend_from_slice(b",\"baton\":{\"usage\":");
        put_json(out, &wire::usage_account(tokens));
        out.extend_from_slice(b"}}\n\n");
    }
}

impl ClientEncoder for ChatEncoder {
    fn item(&mut self, item: &ClientItem, out: &mut BytesMut) -> Flow {
        match item {
            ClientItem::Text { text, model, .. } => {
                self.model(model);
                self.delta_str("content", text, out);
            }
            ClientItem::Reasoning { text, field, model, .. } => {
                self.model(model);
                let key = wire::reasoning_key(self.reasoning_field.apply(*field));
                self.delta_str(key, text, out);
            }
            ClientItem::ToolCalls { deltas, model, .. } => {
                self.model(model);
                self.tool_calls(deltas, out);
            }
            ClientItem::Handover(h) => out.extend_from_slice(&wire::handover_comment(h)),
            ClientItem::Done(done) => {
                self.finish(&done.finish_reason, out);
                if self.include_usage {
                    self.usage(&done.tokens, out);
                }
                out.extend_from_slice(wire::DONE);
                return Flow::End;
            }
            ClientItem::Failed(error) => {
                // Text was already sent: end with an error, never with [DONE]; its
                // type and code are what the status would have said before any text.
                out.extend_from_slice(&ApiError::from_splice(error).event());
                return Flow::End;
            }
        }
        Flow::Go
    }

    fn error(&mut self, message: &str, code: &'static str, out: &mut BytesMut) {
        out.extend_from_slice(&wire::server_error_event(message, code));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::engine::splice::{Completion, Handover, SpliceError};
    use crate::failure::FailureClass;
    use crate::provider::ReasoningField;
    use crate::request::Usage;
    use crate::usage::{AttemptTokens, Tally};
    use wire::ChunkWriter;

    /// The bytes the old pump task wrote before the encoder existed, item by item
    /// (its `deliver`, over [`ChunkWriter`]): the golden oracle.
    fn old_path(
        writer: &mut ChunkWriter,
        model: &mut String,
        field: OutgoingField,
        usage: bool,
        item: &ClientItem,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        match item {
            ClientItem::Text { text, model: m, .. } => {
                m.to_string().clone_into(model);
                out.extend_from_slice(&writer.text(model, text));
            }
            ClientItem::Reasoning {
                text,
                field: f,
                model: m,
                ..
            } => {
                m.to_string().clone_into(model);
                out.extend_from_slice(&writer.reasoning(model, text, field.apply(*f)));
            }
            ClientItem::ToolCalls { deltas, model: m, .. } => {
                m.to_string().clone_into(model);
                out.extend_from_slice(&writer.tool_calls(model, deltas));
            }
            ClientItem::Handover(h) => out.extend_from_slice(&wire::handover_comment(h)),
            ClientItem::Done(done) => {
                out.extend_from_slice(&writer.finish(model, &done.finish_reason));
                if usage {
                    out.extend_from_slice(&writer.usage(model, &done.tokens));
                }
                out.extend_from_slice(wire::DONE);
            }
            ClientItem::Failed(error) => out.extend_from_slice(&ApiError::from_splice(error).event()),
        }
        out
    }

    /// Texts with everything JSON escapes: quotes, backslashes, every control character, unicode.
    fn texts() -> Vec<String> {
        let mut texts: Vec<String> = [
            "",
            "plain",
            "quote \" and \\ backslash \\\" both",
            "naïve 日本語 🚀 \u{2028}\u{2029} \u{feff}",
            "line\nbreak\r\ttab\u{8}\u{c}",
            "</script> & <b> 'single'",
            "\u{7f}\u{80}\u{ffff}",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        texts.push((0u8..0x20).map(char::from).collect());
        texts.push("x".repeat(5000));
        texts
    }

    fn text(t: &str, model: &str) -> ClientItem {
        ClientItem::Text {
            text: t.into(),
            route: Arc::from("r"),
            model: Arc::from(model),
        }
    }

    fn reasoning(t: &str, field: ReasoningField, model: &str) -> ClientItem {
        ClientItem::Reasoning {
            text: t.into(),
            field,
            route: Arc::from("r"),
            model: Arc::from(model),
        }
    }

    fn done(reason: &str, tokens: Tally) -> ClientItem {
        ClientItem::Done(Completion {
            finish_reason: reason.into(),
            tokens,
            route_chain: vec!["r".into()],
            failures: Vec::new(),
        })
    }

    /// Runs `items` through both paths with the same id and clock, and compares every item's bytes.
    fn same_bytes(id: &str, field: OutgoingField, usage: bool, items: &[ClientItem]) {
        let created = 1_700_000_000;
        let mut writer = ChunkWriter::at(id.into(), created);
        let mut model = String::new();
        let mut encoder = ChatEncoder::new(id, created, usage, field);
        for (i, item) in items.iter().enumerate() {
            let want = old_path(&mut writer, &mut model, field, usage, item);
            let mut got = BytesMut::new();
            let flow = encoder.item(item, &mut got);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "item {i}: {item:?}"
            );
            assert_eq!(got.as_ref(), want.as_slice(), "item {i}");
            let last = matches!(item, ClientItem::Done(_) | ClientItem::Failed(_));
            assert_eq!(flow == Flow::End, last, "item {i}");
        }
    }

    fn attempt(reported: Option<Usage>, deltas: u64) -> AttemptTokens {
        AttemptTokens {
            attempt: 1,
            route: "r".into(),
            model: "m".into(),
            reported,
            deltas,
        }
    }

    fn tallies() -> Vec<Tally> {
        let full = Usage {
            prompt_tokens: 12,
            completion_tokens: 34,
            reasoning_tokens: Some(5),
        };
        let plain = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            reasoning_tokens: None,
        };
        let mut reported = Tally::default();
        reported.push(attempt(Some(full), 3));
        let mut mixed = Tally::default();
        mixed.push(attempt(None, 7));
        mixed.push(attempt(Some(plain), 2));
        let mut none = Tally::default();
        none.push(attempt(None, 9));
        vec![Tally::default(), reported, mixed, none]
    }

    #[test]
    fn text_chunks_are_the_old_bytes() {
        for id in ["chatcmpl-abc", "chatcmpl-\"x\\"] {
            for model in ["m", "mo\"del\\\n", "模型"] {
                let mut items: Vec<ClientItem> = texts().iter().map(|t| text(t, model)).collect();
                items.push(done("stop", Tally::default()));
                same_bytes(id, OutgoingField::AsUpstream, false, &items);
            }
        }
    }

    #[test]
    fn reasoning_chunks_are_the_old_bytes_in_both_fields() {
        let fields = [
            ReasoningField::Reasoning,
            ReasoningField::ReasoningContent,
            ReasoningField::Thinking,
        ];
        for outgoing in [
            OutgoingField::AsUpstream,
            OutgoingField::Reasoning,
            OutgoingField::ReasoningContent,
        ] {
            let mut items = Vec::new();
            for (i, t) in texts().iter().enumerate() {
                items.push(reasoning(t, fields[i % fields.len()], "m"));
            }
            for t in texts() {
                items.push(text(&t, "m"));
            }
            items.push(done("stop", Tally::default()));
            same_bytes("chatcmpl-r", outgoing, false, &items);
        }
    }

    #[test]
    fn tool_call_chunks_are_the_old_bytes() {
        let deltas = vec![
            json!({"index":3,"id":"call_a","type":"function","function":{"name":"weather","arguments":""}}),
            json!({"index":7,"id":"call_b","type":"function","function":{"name":"ti\"me","arguments":"{\"tz\":"}}),
            json!({"index":3,"function":{"arguments":"{\"city\":\"Par\\is\n\"}"}}),
            json!({"index":7,"function":{"arguments":"\"CET 日本\"}"}}),
        ];
        let calls = |model: &str| ClientItem::ToolCalls {
            deltas: deltas.clone(),
            route: Arc::from("r"),
            model: Arc::from(model),
        };
        // Tool calls first (the role rides on them), and after text.
        same_bytes(
            "chatcmpl-t",
            OutgoingField::AsUpstream,
            false,
            &[calls("m"), done("tool_calls", Tally::default())],
        );
        same_bytes(
            "chatcmpl-t",
            OutgoingField::AsUpstream,
            true,
            &[text("a", "m"), calls("other"), done("tool_calls", Tally::default())],
        );
    }

    #[test]
    fn finish_usage_and_handover_are_the_old_bytes() {
        for tokens in tallies() {
            for usage in [false, true] {
                for reason in ["stop", "length", "we\"ird\\\u{1}"] {
                    // The finish chunk alone (it carries the role), and after text.
                    same_bytes(
                        "chatcmpl-f",
                        OutgoingField::AsUpstream,
                        usage,
                        &[done(reason, tokens.clone())],
                    );
                    let handover = ClientItem::Handover(Handover {
                        from: Arc::from("a"),
                        to: Arc::from("b"),
                        class: FailureClass::Technical,
                        reason: "stall",
                        prefix_bytes: 42,
                        gap: std::time::Duration::from_millis(7),
                    });
                    same_bytes(
                        "chatcmpl-f",
                        OutgoingField::AsUpstream,
                        usage,
                        &[
                            text("x", "a"),
                            handover,
                            text("y\"", "b\\"),
                            done(reason, tokens.clone()),
                        ],
                    );
                }
            }
        }
    }

    #[test]
    fn errors_are_the_old_bytes() {
        for message in texts() {
            let failed = ClientItem::Failed(SpliceError::Local {
                resource: message.clone(),
                failures: Vec::new(),
                emitted_bytes: 3,
                tokens: Tally::default(),
            });
            same_bytes("chatcmpl-e", OutgoingField::AsUpstream, true, &[text("x", "m"), failed]);
            let mut encoder = ChatEncoder::new("chatcmpl-e", 1, false, OutgoingField::AsUpstream);
            let mut got = BytesMut::new();
            encoder.error(&message, "slow_client", &mut got);
            let want: Bytes = wire::server_error_event(&message, "slow_client");
            assert_eq!(got.as_ref(), want.as_ref());
        }
    }
}
