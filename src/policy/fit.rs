//! Context fitting: make a request fit a route's context window by dropping
//! the oldest turns of the conversation.
//!
//! # The rule
//!
//! A request fits a window of *W* tokens when its estimated size
//! ([`estimate_tokens`], about four bytes a token) plus the **answer reserve**
//! is at most *W*. The reserve is the request's `max_completion_tokens`, else
//! its `max_tokens`, else [`DEFAULT_RESERVE`] tokens: room for the answer, so
//! a request that only just fits is not cut off after a few words.
//!
//! When it does not fit, whole **turns** are dropped, oldest first, until it
//! does. A turn is a user message and everything after it up to the next user
//! message (so an assistant message with `tool_calls` and the tool results
//! that answer it always go together, and the kept conversation still starts
//! with a user turn); messages before the first user message form one turn of
//! their own. Never dropped:
//!
//! * system and developer messages, wherever they are;
//! * the latest user turn: the last user message and everything after it
//!   (tool calls and results of the turn in progress, the caller's own
//!   assistant prefill);
//! * the continuation: the prefix and any `instruct` message appended to it.
//!
//! If the request still does not fit with every other turn dropped, the route
//! cannot take it: the splicer skips it as a `business` failure
//! ([`FailureKind::ContextTooSmall`](crate::failure::FailureKind::ContextTooSmall)).

use serde_json::{Map, Value};

use crate::request::{estimate_tokens, Message, Role};

/// Answer reserve when the request sets no `max_tokens`.
pub const DEFAULT_RESERVE: u32 = 1024;

/// A plan that makes a request fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fitted {
    /// Every message before this index that is not a system or developer message goes.
    pub drop_before: usize,
    /// How many messages go.
    pub dropped_messages: usize,
    /// Their estimated tokens.
    pub dropped_tokens: u32,
    /// The estimated tokens of what is kept (without the reserve).
    pub kept_tokens: u32,
}

/// A request that cannot fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooSmall {
    /// Tokens needed with every droppable turn dropped, reserve included.
    pub needed: u32,
    /// The window.
    pub window: u32,
}

impl Fitted {
    /// Whether anything is dropped.
    pub fn drops(&self) -> bool {
        self.dropped_messages > 0
    }

    /// `messages` with the plan applied.
    pub fn apply(&self, messages: Vec<Message>) -> Vec<Message> {
        if !self.drops() {
            return messages;
        }
        messages
            .into_iter()
            .enumerate()
            .filter(|(i, m)| *i >= self.drop_before || is_system(m))
            .map(|(_, m)| m)
            .collect()
    }
}

fn is_system(m: &Message) -> bool {
    matches!(m.role, Role::System | Role::Developer)
}

/// Where the protected tail of a request built from the caller's `original`
/// conversation begins: its latest user message, or the caller's own final
/// assistant message if that comes first (a continuation only ever extends
/// that message or appends after it).
pub fn protected_from(original: &[Message]) -> usize {
    let latest_user = original.iter().rposition(|m| m.role == Role::User);
    let own_prefill = original
        .last()
        .filter(|m| m.role == Role::Assistant)
        .map(|_| original.len() - 1);
    latest_user
        .unwrap_or(original.len())
        .min(own_prefill.unwrap_or(original.len()))
}

/// The answer reserve for a request with these pass-through `params`.
pub fn reserve(params: &Map<String, Value>) -> u32 {
    params
        .get("max_completion_tokens")
        .or_else(|| params.get("max_tokens"))
        .and_then(Value::as_u64)
        .map_or(DEFAULT_RESERVE, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// The largest context window a stated limit is believed (tokens): anything
/// larger in an upstream's error is garbage, not a window.
pub const MAX_STATED_WINDOW: u32 = 100_000_000;

/// The context window an upstream's context-length error states, if it does:
/// OpenAI and vLLM ("maximum context length is 8192 tokens"), Anthropic
/// ("prompt is too long: 210000 tokens > 200000 maximum", "exceed context
/// limit: 190000 + 20000 > 200000") and llama.cpp ("exceeds the available
/// context size (4096 tokens)"). An error is hostile input: a number that is
/// missing, zero, absurd or malformed states nothing.
pub fn stated_window(message: &str) -> Option<u32> {
    let lower = message.to_ascii_lowercase();
    const AFTER: [&str; 7] = [
        "maximum context length is ",
        "maximum context length of ",
        "context length is ",
        "context length of ",
        "context window is ",
        "context window of ",
        "context size (",
    ];
    let stated = AFTER
        .iter()
        .find_map(|phrase| lower.find(phrase).map(|at| &lower[at + phrase.len()..]))
        .and_then(leading_number)
        .or_else(|| {
            // Anthropic's forms: the window follows the last '>' of the sentence.
            let at = lower.find("too long").or_else(|| lower.find("context limit"))?;
            let tail = &lower[at..];
            leading_number(tail[tail.rfind('>')? + 1..].trim_start())
        })?;
    (1..=MAX_STATED_WINDOW).contains(&stated).then_some(stated)
}

/// The number `text` starts with (digits, with `,` or `_` as thousands separators).
fn leading_number(text: &str) -> Option<u32> {
    let mut value: u64 = 0;
    let mut digits = 0;
    for c in text.chars() {
        match c {
            '0'..='9' => {
                value = value.checked_mul(10)?.checked_add(u64::from(c as u8 - b'0'))?;
                digits += 1;
                if digits > 12 {
                    return None;
                }
            }
            ',' | '_' if digits > 0 => {}
            _ => break,
        }
    }
    if digits == 0 {
        return None;
    }
    u32::try_from(value).ok()
}

/// How `messages` fit a `window` with `reserve` tokens left for the answer;
/// messages from `protected` on are never dropped (see [`protected_from`]).
pub fn fit(messages: &[Message], protected: usize, window: u32, reserve: u32) -> Result<Fitted, TooSmall> {
    let cost = |m: &Message| estimate_tokens(std::slice::from_ref(m));
    let total = estimate_tokens(messages);
    let fits = |tokens: u32| tokens.saturating_add(reserve) <= window;
    let mut plan = Fitted {
        drop_before: 0,
        dropped_messages: 0,
        dropped_tokens: 0,
        kept_tokens: total,
    };
    let protected = protected.min(messages.len());
    while !fits(plan.kept_tokens) {
        let start = plan.drop_before;
        if start >= protected {
            return Err(TooSmall {
                needed: plan.kept_tokens.saturating_add(reserve),
                window,
            });
        }
        let end = (start + 1..protected)
            .find(|&i| messages[i].role == Role::User)
            .unwrap_or(protected);
        for m in messages[start..end].iter().filter(|m| !is_system(m)) {
            let tokens = cost(m);
            plan.dropped_messages += 1;
            plan.dropped_tokens = plan.dropped_tokens.saturating_add(tokens);
            plan.kept_tokens = plan.kept_tokens.saturating_sub(tokens);
        }
        plan.drop_before = end;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stated_window_is_read_from_each_providers_wording() {
        let cases = [
            ("This model's maximum context length is 8192 tokens. However, you requested 9000 tokens (8000 in the messages, 1000 in the completion).", Some(8192)),
            ("prompt is too long: 210000 tokens > 200000 maximum", Some(200_000)),
            ("input length and `max_tokens` exceed context limit: 190000 + 20000 > 200000, decrease input length or `max_tokens` and try again", Some(200_000)),
            ("request (5000 tokens) exceeds the available context size (4096 tokens), try increasing it", Some(4096)),
            ("The maximum context length of 32,768 tokens was exceeded", Some(32_768)),
            ("context length exceeded", None),
            ("maximum context length is 0 tokens", None),
            ("maximum context length is 99999999999999999999 tokens", None),
            ("maximum context length is 4294967296 tokens", None),
            ("maximum context length is 200000001 tokens", None),
            ("prompt is too long", None),
            ("prompt is too long: 5 tokens > maximum", None),
        ];
        for (message, expected) in cases {
            assert_eq!(stated_window(message), expected, "{message}");
        }
    }
    use crate::continuation::{self, ContinuationMode};
    use serde_json::json;

    fn m(role: Role, text: &str) -> Message {
        Message::new(role, text)
    }

    /// A message of about `tokens` estimated tokens.
    fn sized(role: Role, tokens: u32) -> Message {
        let overhead = estimate_tokens(&[m(role, "")]);
        m(role, &"x".repeat(4 * (tokens - overhead) as usize))
    }

    fn tool_call() -> Message {
        let mut call = sized(Role::Assistant, 50);
        call.extra
            .insert("tool_calls".into(), json!([{"id": "c1", "type": "function"}]));
        call
    }

    fn tool_result() -> Message {
        let mut result = sized(Role::Tool, 50);
        result.extra.insert("tool_call_id".into(), json!("c1"));
        result
    }

    /// system, 3 old turns (one with a tool call), the latest user turn.
    fn conversation() -> Vec<Message> {
        vec![
            sized(Role::System, 100),
            sized(Role::User, 100),
            sized(Role::Assistant, 100),
            sized(Role::User, 100),
            tool_call(),
            tool_result(),
            sized(Role::Assistant, 100),
            sized(Role::Developer, 100),
            sized(Role::User, 100),
            sized(Role::Assistant, 100),
            sized(Role::User, 100),
        ]
    }

    #[test]
    fn a_request_that_fits_is_left_alone() {
        let c = conversation();
        let total = estimate_tokens(&c);
        let plan = fit(&c, protected_from(&c), total + 1024, 1024).expect("fits");
        assert!(!plan.drops());
        assert_eq!(plan.kept_tokens, total);
        assert_eq!(plan.apply(c.clone()), c);
    }

    #[test]
    fn the_oldest_turns_go_first_and_whole() {
        let c = conversation();
        let total = estimate_tokens(&c);
        // One token short: the first turn (user + assistant, 200 tokens) goes.
        let plan = fit(&c, protected_from(&c), total - 1 + 100, 100).expect("fits");
        assert_eq!(
            (plan.drop_before, plan.dropped_messages, plan.dropped_tokens),
            (3, 2, 200)
        );
        let kept = plan.apply(c.clone());
        assert_eq!(kept[0], c[0], "the system prompt stays");
        assert_eq!(kept[1], c[3]);
        assert_eq!(estimate_tokens(&kept), plan.kept_tokens);
        // 201 tokens short: the second turn, tool call and result included, goes too.
        let plan = fit(&c, protected_from(&c), total - 201 + 100, 100).expect("fits");
        assert_eq!((plan.drop_before, plan.dropped_messages), (8, 6));
        let kept = plan.apply(c.clone());
        let roles: Vec<Role> = kept.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::Developer, Role::User, Role::Assistant, Role::User]
        );
        assert!(kept
            .iter()
            .all(|m| m.role != Role::Tool && !m.extra.contains_key("tool_calls")));
    }

    #[test]
    fn system_prompts_the_latest_turn_and_the_prefix_are_never_dropped() {
        let c = conversation();
        let protected = protected_from(&c);
        assert_eq!(protected, 10);
        let messages = continuation::messages(&c, "half an answer", ContinuationMode::Instruct, "go on");
        let keep = [&messages[0], &messages[7], &messages[10], &messages[11], &messages[12]];
        let floor = estimate_tokens(&keep.iter().map(|m| (*m).clone()).collect::<Vec<_>>());
        let plan = fit(&messages, protected, floor + 10, 10).expect("fits with everything else gone");
        let kept = plan.apply(messages.clone());
        assert_eq!(kept.iter().collect::<Vec<_>>(), keep);
        assert_eq!(plan.dropped_messages, 8);
        assert_eq!(
            fit(&messages, protected, floor + 9, 10),
            Err(TooSmall {
                needed: floor + 10,
                window: floor + 9
            })
        );
    }

    #[test]
    fn the_callers_own_prefill_is_protected_and_a_reserve_alone_can_be_too_much() {
        let mut c = vec![sized(Role::User, 100), sized(Role::Assistant, 100)];
        c.push(m(Role::Assistant, "Sure,"));
        assert_eq!(protected_from(&c), 0, "the latest user message comes first");
        let no_user = vec![
            sized(Role::System, 10),
            sized(Role::Assistant, 10),
            m(Role::Assistant, "So"),
        ];
        assert_eq!(protected_from(&no_user), 2);
        assert_eq!(protected_from(&[]), 0);
        let small = vec![m(Role::User, "hi")];
        let too_small = fit(&small, 0, 1000, 2000).expect_err("the reserve alone is larger");
        assert!(too_small.needed > 2000);
    }

    #[test]
    fn the_reserve_comes_from_max_tokens() {
        let params = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert_eq!(reserve(&params(json!({}))), DEFAULT_RESERVE);
        assert_eq!(reserve(&params(json!({"max_tokens": 300}))), 300);
        assert_eq!(
            reserve(&params(json!({"max_tokens": 300, "max_completion_tokens": 500}))),
            500
        );
        assert_eq!(reserve(&params(json!({"max_tokens": "lots"}))), DEFAULT_RESERVE);
        assert_eq!(reserve(&params(json!({"max_tokens": 1u64 << 40}))), u32::MAX);
    }
}
