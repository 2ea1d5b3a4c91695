//! Context fitting end to end, under virtual time with the in-process oracle:
//! a fallback with a small context window gets the conversation without its
//! oldest turns (never the system prompt, the latest user turn or the prefix),
//! and a route that cannot fit the request at all is skipped as a `business`
//! failure without being asked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::sync::{Arc, Mutex};

use serde_json::json;

use baton::engine::event::EngineEvent;
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::{answer, Style};
use baton::policy::breaker::BreakerState;
use baton::policy::fit::DEFAULT_RESERVE;
use baton::provider::{ChunkStream, Provider, UpstreamRequest};
use baton::record::verify::Outcome;
use baton::request::estimate_tokens;
use baton::{ChatRequest, EventKind, FailureClass, FailureKind, Ladder, Message, Role, Route, Splicer};

use support::{bytes_after_chunks, drain, verify_events};

/// Chunks the primary sends before it drops.
const K: usize = 20;

fn mock(fault: &str) -> Arc<MockProvider> {
    let script: FaultScript = fault.parse().unwrap_or_else(|e| panic!("{e}"));
    Arc::new(MockProvider::new(FaultPlan::Fixed(script), Style::default()))
}

fn said(role: Role, turn: usize, words: usize) -> Message {
    let text: Vec<String> = (0..words).map(|w| format!("t{turn}w{w}")).collect();
    Message::new(role, text.join(" "))
}

/// A system prompt, four earlier turns (the second with a tool call and its
/// result), and the latest question.
fn conversation() -> Vec<Message> {
    let mut call = said(Role::Assistant, 2, 10);
    call.extra.insert(
        "tool_calls".into(),
        json!([{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"tides\"}"}}]),
    );
    let mut result = said(Role::Tool, 2, 80);
    result.extra.insert("tool_call_id".into(), json!("call_1"));
    vec![
        Message::new(Role::System, "You are a careful narrator of coastlines."),
        said(Role::User, 1, 120),
        said(Role::Assistant, 1, 150),
        said(Role::User, 2, 60),
        call,
        result,
        said(Role::Assistant, 2, 100),
        said(Role::User, 3, 90),
        said(Role::Assistant, 3, 90),
        said(Role::User, 4, 40),
        said(Role::Assistant, 4, 40),
        Message::new(Role::User, "Now describe a harbor at dawn."),
    ]
}

/// An oracle route that keeps the requests it gets. The oracle's answer is a
/// function of the whole conversation, so it answers as if it still had the
/// turns fitting dropped (a continuation of the prefix does not depend on
/// them): that keeps the client's text checkable against the oracle's answer,
/// while the requests show exactly what was sent.
struct Recall {
    oracle: MockProvider,
    original: Vec<Message>,
    seen: Mutex<Vec<UpstreamRequest>>,
}

impl Recall {
    fn new(original: Vec<Message>) -> Arc<Self> {
        Arc::new(Recall {
            oracle: MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()),
            original,
            seen: Mutex::new(Vec::new()),
        })
    }

    fn seen(&self) -> Vec<UpstreamRequest> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Provider for Recall {
    fn stream(&self, mut request: UpstreamRequest) -> ChunkStream {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(request.clone());
        }
        let prefix = request.messages.last().filter(|m| m.role == Role::Assistant).cloned();
        request.messages = self.original.clone();
        request.messages.extend(prefix);
        self.oracle.stream(request)
    }
}

fn failures(done: &baton::engine::splice::Collected) -> Vec<(String, String, FailureClass)> {
    let completion = done
        .outcome
        .as_ref()
        .unwrap_or_else(|e| panic!("expected a completion, got {e:?}"));
    completion
        .failures
        .iter()
        .map(|f| (f.route.clone(), f.kind.clone(), f.class))
        .collect()
}

fn fitted(events: &[EngineEvent]) -> Vec<(String, usize, u32, u32, u32)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ContextFitted {
                route,
                dropped_messages,
                dropped_tokens,
                reserve,
                window,
                ..
            } => Some((route.clone(), *dropped_messages, *dropped_tokens, *reserve, *window)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_small_window_loses_the_oldest_turns_and_the_answer_stays_whole() {
    let messages = conversation();
    let full = answer(&messages);
    let cut = bytes_after_chunks(&messages, K);
    let prefix = Message::new(Role::Assistant, &full[..cut]);
    // What fits: the system prompt, turns 3 and 4, the question and the prefix.
    let mut kept = vec![messages[0].clone()];
    kept.extend_from_slice(&messages[7..]);
    kept.push(prefix.clone());
    let window = estimate_tokens(&kept) + DEFAULT_RESERVE;
    let dropped = &messages[1..7];

    let fallback = Recall::new(messages.clone());
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("primary", "oracle-big", mock(&format!("drop@{K}"))),
        Route::new("fallback", "oracle-small", fallback.clone()).with_context(window),
    ]));
    let mut events = splicer.subscribe();
    let done = splicer.collect(ChatRequest::new(messages.clone())).await;
    let events = drain(&mut events);

    assert_eq!(done.text, full, "nothing lost, nothing doubled");
    assert_eq!(
        failures(&done),
        [("primary".into(), "truncated".into(), FailureClass::Technical)]
    );
    // Turns 1 and 2 went, the tool call together with its result; nothing else did.
    let seen = fallback.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].messages, kept);
    assert_eq!(
        fitted(&events),
        [("fallback".into(), 6, estimate_tokens(dropped), DEFAULT_RESERVE, window)]
    );
    // The event comes just before the attempt it fitted.
    let at = events
        .iter()
        .position(|e| matches!(e.kind, EventKind::ContextFitted { .. }))
        .expect("fitted");
    assert!(matches!(&events[at + 1].kind, EventKind::AttemptOpened { route, .. } if route == "fallback"));
    assert_eq!(verify_events(&events), Outcome::Ok { partial: false });

    // One token less and turn 3 has to go too.
    let fallback = Recall::new(messages.clone());
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("primary", "oracle-big", mock(&format!("drop@{K}"))),
        Route::new("fallback", "oracle-small", fallback.clone()).with_context(window - 1),
    ]));
    let done = splicer.collect(ChatRequest::new(messages.clone())).await;
    assert_eq!(done.text, full);
    let mut tighter = vec![messages[0].clone()];
    tighter.extend_from_slice(&messages[9..]);
    tighter.push(prefix);
    assert_eq!(fallback.seen()[0].messages, tighter);
}

#[tokio::test(start_paused = true)]
async fn a_route_the_request_cannot_fit_is_skipped_and_the_next_one_answers() {
    let messages = conversation();
    let full = answer(&messages);
    let cut = bytes_after_chunks(&messages, K);
    // The least that must go: system prompt, the question and the prefix, plus the asked-for answer room.
    let floor = vec![
        messages[0].clone(),
        messages[11].clone(),
        Message::new(Role::Assistant, &full[..cut]),
    ];
    let needed = estimate_tokens(&floor) + 300;

    let small = mock("none");
    let spare = Recall::new(messages.clone());
    let ladder = Ladder::new(vec![
        Route::new("primary", "oracle-big", mock(&format!("drop@{K}"))),
        Route::new("small", "oracle-tiny", small.clone()).with_context(needed - 1),
        Route::new("spare", "oracle-spare", spare.clone()),
    ]);
    let small_health = ladder.routes[1].health_for(None);
    let splicer = Splicer::new(ladder);
    let mut events = splicer.subscribe();
    // Four sessions: a fifth truncation in a row would open the primary's breaker.
    for i in 0..4 {
        let mut request = ChatRequest::new(messages.clone());
        request.params.insert("max_tokens".into(), json!(300));
        let done = splicer.collect(request).await;
        assert_eq!(done.text, full, "session {i}");
        assert_eq!(
            failures(&done),
            [
                ("primary".into(), "truncated".into(), FailureClass::Technical),
                ("small".into(), "context_too_small".into(), FailureClass::Business),
            ],
            "session {i}"
        );
        assert_eq!(done.handovers.len(), 1);
        assert_eq!((&*done.handovers[0].from, &*done.handovers[0].to), ("primary", "spare"));
    }
    let events = drain(&mut events);
    // Skipped without a request, and without counting against the route's breaker.
    assert_eq!(small.requests(), 0);
    assert_eq!(small_health.state(), BreakerState::Closed);
    let causes: Vec<FailureKind> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Failure { failure, cause } if failure.route == "small" => Some(cause.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(causes.len(), 4);
    assert!(causes.iter().all(|c| *c
        == FailureKind::ContextTooSmall {
            needed,
            window: needed - 1
        }));
    // The spare has the room: it gets the whole conversation.
    assert!(spare
        .seen()
        .iter()
        .all(|r| r.messages[..messages.len()] == messages[..]));
    assert!(fitted(&events).is_empty());
    let first: Vec<EngineEvent> = events
        .iter()
        .filter(|e| e.session == events[0].session)
        .cloned()
        .collect();
    assert_eq!(verify_events(&first), Outcome::Ok { partial: false });
}
