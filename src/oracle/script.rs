//! The wire-level steps one oracle request produces, with its fault applied.
//!
//! Both the in-process mock provider and the HTTP mock server play the same
//! steps, so a fault means the same thing in a unit test and over loopback.

use std::time::Duration;

use serde_json::json;

use super::fault::Fault;
use super::{chunks, conversation_hash, reply, Style};
use crate::request::Message;

/// One thing the upstream does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Answer with this HTTP error status and JSON body.
    Status {
        /// The status code.
        status: u16,
        /// `Retry-After` in seconds.
        retry_after: Option<u32>,
        /// The JSON error body.
        body: String,
    },
    /// Reset the connection before any header.
    Reset,
    /// Say nothing more, keep the connection open.
    Hang,
    /// Send `200 OK` with `text/event-stream` headers.
    Open,
    /// Pause.
    Wait(Duration),
    /// Send one SSE event with this `data:` payload.
    Data(String),
    /// Drop the connection mid-body.
    Cut,
    /// End the body cleanly.
    End,
}

/// How fast the oracle streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    /// Before the first chunk.
    pub first_token: Duration,
    /// Between chunks.
    pub interval: Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            first_token: Duration::from_millis(20),
            interval: Duration::from_millis(5),
        }
    }
}

/// The phrase a `loop@K` oracle repeats. It ends with `!`, which the oracle's
/// answers never contain, so the repetition begins exactly after the K chunks.
pub const LOOP_PHRASE: &str = " and again!";

/// How many times a `loop@K` oracle repeats [`LOOP_PHRASE`] before it stops
/// with `finish_reason: length` (about 4 KiB, far past any loop guard).
pub const LOOP_REPEATS: usize = 400;

fn error_body(message: &str, kind: &str, code: &str) -> String {
    json!({"error": {"message": message, "type": kind, "code": code}}).to_string()
}

/// One `chat.completion.chunk` payload.
pub fn chunk_json(model: &str, content: Option<&str>, finish: Option<&str>) -> String {
    json!({
        "id": "chatcmpl-oracle",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": content.map(|c| json!({"content": c})).unwrap_or(json!({})), "finish_reason": finish}],
    })
    .to_string()
}

/// One `chat.completion.chunk` payload carrying reasoning in `field`.
pub fn reasoning_chunk_json(model: &str, field: &str, text: &str) -> String {
    json!({
        "id": "chatcmpl-oracle",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": {field: text}, "finish_reason": null}],
    })
    .to_string()
}

/// The steps for a request with `messages` to `model`, misbehaving as `fault`.
///
/// A reasoning model ([`crate::oracle::reasoning_field`]) first streams its
/// [`crate::oracle::thinking`] in chunks, then its answer; a fault's `K` counts
/// chunks of both, thinking first, so `stall@3` stalls inside the thinking of a
/// model that thinks in more than three chunks, and `thinkonly` finishes after
/// the thinking without an answer.
pub fn steps(model: &str, messages: &[Message], fault: Fault, style: Style, pacing: Pacing) -> Vec<Step> {
    let status = |status: u16, retry_after: Option<u32>, body: String| {
        vec![Step::Status {
            status,
            retry_after,
            body,
        }]
    };
    let reply = reply(messages, style);
    match fault {
        Fault::Status {
            status: code,
            retry_after,
        } => {
            let body = error_body(&format!("oracle fault: status {code}"), "server_error", "oracle_fault");
            return status(code, retry_after, body);
        }
        Fault::Reset => return vec![Step::Reset],
        Fault::Hang => return vec![Step::Hang],
        Fault::Policy => {
            let body = error_body(
                "Your request was rejected by the oracle's content policy",
                "invalid_request_error",
                "content_policy_violation",
            );
            return status(400, None, body);
        }
        Fault::ContextLength(tokens) => {
            let body = error_body(
                &format!(
                    "This model's maximum context length is {tokens} tokens. However, your messages resulted in more tokens. Please reduce the length of the messages."
                ),
                "invalid_request_error",
                "context_length_exceeded",
            );
            return status(400, None, body);
        }
        Fault::RejectPrefill if reply.prefill => {
            let body = error_body(
                "This model does not support assistant message prefill",
                "invalid_request_error",
                "prefill_not_supported",
            );
            return status(400, None, body);
        }
        _ => {}
    }
    let hash = conversation_hash(messages);
    let thought = crate::oracle::reasoning_field(model).map(|field| (field, crate::oracle::thinking(messages)));
    let thinking: Vec<(Option<&str>, &str)> = match &thought {
        Some((field, text)) => chunks(text, hash).into_iter().map(|c| (Some(*field), c)).collect(),
        None => Vec::new(),
    };
    let answer: Vec<&str> = if fault == Fault::ThinkOnly {
        Vec::new()
    } else {
        chunks(&reply.text, hash)
    };
    let thought_parts = thinking.len();
    let parts: Vec<(Option<&str>, &str)> = thinking
        .into_iter()
        .chain(answer.into_iter().map(|c| (None, c)))
        .collect();
    let mut out = vec![Step::Open];
    let first = match fault {
        Fault::SlowFirstToken(d) => d,
        _ => pacing.first_token,
    };
    out.push(Step::Wait(first));
    let mut finish = "stop";
    let mut sent = parts.len();
    let mut thought_sent = thought_parts;
    for k in 0..=parts.len() {
        match fault {
            Fault::LoopAfter(at) if at.min(parts.len()) == k => {
                // Inside the thinking, it is the thinking that loops.
                let thinking_field = thought.as_ref().map(|(f, _)| *f).filter(|_| k < thought_parts);
                for i in 0..LOOP_REPEATS {
                    if k > 0 || i > 0 {
                        out.push(Step::Wait(pacing.interval));
                    }
                    out.push(Step::Data(match thinking_field {
                        Some(field) => reasoning_chunk_json(model, field, LOOP_PHRASE),
                        None => chunk_json(model, Some(LOOP_PHRASE), None),
                    }));
                }
                finish = "length";
                sent = k + LOOP_REPEATS;
                if thinking_field.is_some() {
                    thought_sent = sent;
                }
                break;
            }
            Fault::StallAfter(at) if at.min(parts.len()) == k => {
                out.push(Step::Hang);
                return out;
            }
            Fault::DropAfter(at) if at.min(parts.len()) == k => {
                out.push(Step::Cut);
                return out;
            }
            Fault::MalformedAt(at) if at.min(parts.len()) == k => {
                out.push(Step::Data(
                    r#"{"choices":[{"index":0,"delta":{"content":"gar"#.to_string(),
                ));
                out.push(Step::Cut);
                return out;
            }
            Fault::ErrorEventAt(at) if at.min(parts.len()) == k => {
                out.push(Step::Data(error_body(
                    "oracle fault: upstream overloaded",
                    "server_error",
                    "overloaded",
                )));
                out.push(Step::End);
                return out;
            }
            _ => {}
        }
        if let Some((field, part)) = parts.get(k) {
            if k > 0 {
                out.push(Step::Wait(pacing.interval));
            }
            out.push(Step::Data(match field {
                Some(field) => reasoning_chunk_json(model, field, part),
                None => chunk_json(model, Some(part), None),
            }));
        }
    }
    out.push(Step::Data(chunk_json(model, None, Some(finish))));
    let prompt: usize = messages.iter().map(|m| m.content.len()).sum();
    let mut usage =
        json!({"prompt_tokens": prompt / 4 + 1, "completion_tokens": sent, "total_tokens": prompt / 4 + 1 + sent});
    // A thinking model says how many of its tokens (chunks) were thinking, as OpenAI's reasoning models do.
    if thought.is_some() {
        usage["completion_tokens_details"] = json!({"reasoning_tokens": thought_sent});
    }
    out.push(Step::Data(
        json!({
            "id": "chatcmpl-oracle",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [],
            "usage": usage,
        })
        .to_string(),
    ));
    if fault != Fault::NoDone {
        out.push(Step::Data("[DONE]".to_string()));
    }
    out.push(Step::End);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{answer, thinking};
    use crate::request::Role;

    fn payloads(steps: &[Step]) -> Vec<serde_json::Value> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Data(d) if d != "[DONE]" => serde_json::from_str(d).ok(),
                _ => None,
            })
            .collect()
    }

    fn channel(values: &[serde_json::Value], field: &str) -> String {
        values
            .iter()
            .filter_map(|v| v.pointer(&format!("/choices/0/delta/{field}")).and_then(|t| t.as_str()))
            .collect()
    }

    #[test]
    fn a_reasoning_model_thinks_in_its_field_then_answers_and_faults_count_thinking_first() {
        let messages = vec![Message::new(Role::User, "why is the sky blue?")];
        let style = Style::default();
        let all = payloads(&steps("oracle-think", &messages, Fault::None, style, Pacing::default()));
        assert_eq!(channel(&all, "reasoning_content"), thinking(&messages));
        assert_eq!(channel(&all, "content"), answer(&messages));
        let first_content = all.iter().position(|v| v.pointer("/choices/0/delta/content").is_some());
        let last_thought = all
            .iter()
            .rposition(|v| v.pointer("/choices/0/delta/reasoning_content").is_some());
        assert!(last_thought < first_content, "thinking comes first");
        let other = payloads(&steps(
            "oracle-reason",
            &messages,
            Fault::None,
            style,
            Pacing::default(),
        ));
        assert_eq!(channel(&other, "reasoning"), thinking(&messages));
        let plain = payloads(&steps("oracle", &messages, Fault::None, style, Pacing::default()));
        assert_eq!(
            (channel(&plain, "reasoning_content"), channel(&plain, "reasoning")),
            (String::new(), String::new())
        );
        // A stall at K = 2 lands inside the thinking: two reasoning chunks, no answer.
        let stalled = steps(
            "oracle-think",
            &messages,
            Fault::StallAfter(2),
            style,
            Pacing::default(),
        );
        assert!(matches!(stalled.last(), Some(Step::Hang)));
        let stalled = payloads(&stalled);
        assert_eq!(stalled.len(), 2);
        assert!(thinking(&messages).starts_with(&channel(&stalled, "reasoning_content")));
        assert_eq!(channel(&stalled, "content"), "");
        // Think-only: all the thinking, a `stop`, no answer.
        let only = payloads(&steps(
            "oracle-think",
            &messages,
            Fault::ThinkOnly,
            style,
            Pacing::default(),
        ));
        assert_eq!(channel(&only, "reasoning_content"), thinking(&messages));
        assert_eq!(channel(&only, "content"), "");
        assert!(only
            .iter()
            .any(|v| v.pointer("/choices/0/finish_reason").and_then(|f| f.as_str()) == Some("stop")));
    }

    #[test]
    fn a_thinking_model_reports_its_thinking_chunks_as_reasoning_tokens() {
        let messages = vec![Message::new(Role::User, "why is the sky blue?")];
        let style = Style::default();
        let usage = |model: &str, fault: Fault| {
            payloads(&steps(model, &messages, fault, style, Pacing::default()))
                .into_iter()
                .find_map(|v| v.get("usage").cloned())
                .unwrap_or_default()
        };
        let count = |values: &[serde_json::Value], field: &str| {
            values
                .iter()
                .filter(|v| v.pointer(&format!("/choices/0/delta/{field}")).is_some())
                .count() as u64
        };
        let all = payloads(&steps("oracle-think", &messages, Fault::None, style, Pacing::default()));
        let thought = count(&all, "reasoning_content");
        assert!(thought > 1);
        let u = usage("oracle-think", Fault::None);
        assert_eq!(u["completion_tokens_details"]["reasoning_tokens"], thought);
        assert_eq!(u["completion_tokens"], thought + count(&all, "content"));
        assert_eq!(
            usage("oracle-think", Fault::ThinkOnly)["completion_tokens_details"]["reasoning_tokens"],
            thought
        );
        // A loop inside the thinking is thinking; one inside the answer is not.
        let looped = usage("oracle-think", Fault::LoopAfter(1));
        assert_eq!(
            looped["completion_tokens_details"]["reasoning_tokens"],
            looped["completion_tokens"]
        );
        let late = usage("oracle-think", Fault::LoopAfter(thought as usize + 1));
        assert_eq!(late["completion_tokens_details"]["reasoning_tokens"], thought);
        // A model that does not reason reports no detail.
        assert_eq!(usage("oracle", Fault::None).get("completion_tokens_details"), None);
    }
}
