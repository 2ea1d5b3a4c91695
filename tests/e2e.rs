//! End to end over loopback HTTP: the OpenAI provider against the oracle
//! server (the one `baton mock` runs), one fault at a time. Real time, with
//! deadlines far above the oracle's pacing so a loaded machine cannot flake.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::continuation::ContinuationMode;
use baton::engine::splice::Collected;
use baton::oracle::{answer, Style};
use baton::provider::openai::OpenAiProvider;
use baton::{ChatRequest, Deadlines, FailureClass, Ladder, Message, Role, Route, Splicer};

const DEADLINES: Deadlines = Deadlines {
    first_token: Duration::from_secs(3),
    stall: Duration::from_millis(1500),
    total: Duration::from_secs(60),
    reasoning_budget: None,
};

struct World {
    splicer: Splicer,
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn upstream(fault: &str, style: Style) -> (String, tokio::sync::oneshot::Sender<()>) {
    support::oracle_upstream(fault, style).await
}

/// A primary with `fault`, and a fallback with `fallback_fault` continuing in `mode`.
async fn world(fault: &str, fallback_fault: &str, mode: ContinuationMode) -> World {
    let client = OpenAiProvider::default_client();
    let (primary, stop_p) = upstream(fault, Style::default()).await;
    let (fallback, stop_f) = upstream(
        fallback_fault,
        Style {
            repeat_words: 2,
            extra_space: false,
        },
    )
    .await;
    let route = |name: &str, url: &str| {
        Route::new(name, name, Arc::new(OpenAiProvider::new(client.clone(), url, None))).with_deadlines(DEADLINES)
    };
    let ladder = Ladder::new(vec![
        route("primary", &primary),
        route("fallback", &fallback).with_continuation(mode),
    ]);
    World {
        splicer: Splicer::new(ladder),
        _stops: vec![stop_p, stop_f],
    }
}

fn conversation(tag: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, "You are terse."),
        Message::new(Role::User, format!("end to end: {tag}")),
    ]
}

/// Runs one session and checks the answer is the oracle's, byte for byte.
async fn run(world: &World, tag: &str) -> Collected {
    let messages = conversation(tag);
    let collected = world.splicer.collect(ChatRequest::new(messages.clone())).await;
    assert!(collected.outcome.is_ok(), "{tag}: {:?}", collected.outcome);
    assert_eq!(
        collected.text,
        answer(&messages),
        "{tag}: text differs from the oracle's answer"
    );
    collected
}

fn failure_kinds(c: &Collected) -> Vec<String> {
    match &c.outcome {
        Ok(done) => done.failures.iter().map(|f| f.kind.clone()).collect(),
        Err(e) => vec![e.to_string()],
    }
}

#[tokio::test]
async fn stall_mid_answer_hands_over_and_the_text_is_whole() {
    let w = world("stall@20", "none", ContinuationMode::Prefill).await;
    let c = run(&w, "stall").await;
    assert_eq!(failure_kinds(&c), ["stall"]);
    assert_eq!(c.handovers.len(), 1);
    assert!(c.handovers[0].prefix_bytes > 0);
    assert_eq!(
        c.outcome.map(|d| d.route_chain).ok(),
        Some(vec!["primary".to_string(), "fallback".to_string()])
    );
}

#[tokio::test]
async fn dropped_connection_is_truncation() {
    let w = world("drop@12", "none", ContinuationMode::Instruct).await;
    let c = run(&w, "drop").await;
    assert_eq!(failure_kinds(&c), ["truncated"]);
    assert_eq!(c.handovers[0].class, FailureClass::Technical);
}

#[tokio::test]
async fn malformed_chunk_hands_over() {
    let w = world("malformed@7", "none", ContinuationMode::Prefill).await;
    let c = run(&w, "malformed").await;
    assert_eq!(failure_kinds(&c), ["malformed"]);
}

#[tokio::test]
async fn error_event_in_the_stream_hands_over() {
    let w = world("error@9", "none", ContinuationMode::Prefill).await;
    let c = run(&w, "error").await;
    assert_eq!(failure_kinds(&c), ["error_event"]);
}

#[tokio::test]
async fn reset_before_headers_is_retried_then_handed_over() {
    let w = world("reset", "none", ContinuationMode::Prefill).await;
    let c = run(&w, "reset").await;
    // One attempt and two retries, all reset; then the fallback answers from the start.
    assert_eq!(failure_kinds(&c), ["reset", "reset", "reset"]);
    assert_eq!(c.handovers[0].prefix_bytes, 0);
}

#[tokio::test]
async fn a_server_that_never_answers_hits_the_first_token_deadline() {
    let w = world("hang", "none", ContinuationMode::Prefill).await;
    let c = run(&w, "hang").await;
    assert_eq!(failure_kinds(&c), ["first_token_timeout"]);
}

#[tokio::test]
async fn a_429_hands_over_at_once_and_retry_after_is_honoured_on_the_last_rung() {
    // Both routes rate-limit once: the primary's 429 goes straight to the
    // fallback, whose own 429 is waited out on the same route (the last rung).
    let w = world("429:1x1", "429:1x1", ContinuationMode::Prefill).await;
    let started = Instant::now();
    let c = run(&w, "429").await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried before Retry-After"
    );
    assert_eq!(failure_kinds(&c), ["rate_limited", "rate_limited"]);
    assert_eq!(c.handovers.len(), 1);
    assert_eq!(
        c.outcome.map(|d| d.route_chain).ok(),
        Some(vec!["fallback".to_string()])
    );
}

#[tokio::test]
async fn a_fallback_rejecting_prefill_continues_by_instruction() {
    let w = world("stall@15", "noprefill", ContinuationMode::Prefill).await;
    let c = run(&w, "noprefill").await;
    assert_eq!(failure_kinds(&c), ["stall", "prefill_rejected"]);
    assert_eq!(c.handovers.len(), 1);
    assert_eq!(c.handovers[0].to.as_ref(), "fallback");
}

#[tokio::test]
async fn a_policy_refusal_reaches_the_caller_with_the_providers_reason() {
    let w = world("policy", "none", ContinuationMode::Prefill).await;
    let c = w.splicer.collect(ChatRequest::new(conversation("policy"))).await;
    let error = c.outcome.expect_err("a refusal is not hidden behind a fallback");
    assert!(error.to_string().contains("content policy"), "{error}");
    assert!(c.text.is_empty());
}

#[tokio::test]
async fn connect_refused_hands_over() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}/v1", listener.local_addr().expect("addr"));
    drop(listener);
    let (fallback, _stop) = upstream("none", Style::default()).await;
    let client = OpenAiProvider::default_client();
    let ladder = Ladder::new(vec![
        Route::new("dead", "m", Arc::new(OpenAiProvider::new(client.clone(), &dead, None))).with_deadlines(DEADLINES),
        Route::new("fallback", "m", Arc::new(OpenAiProvider::new(client, &fallback, None))).with_deadlines(DEADLINES),
    ]);
    let w = World {
        splicer: Splicer::new(ladder),
        _stops: Vec::new(),
    };
    let c = run(&w, "connect").await;
    assert_eq!(failure_kinds(&c), ["connect"]);
}
