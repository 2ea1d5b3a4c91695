//! Route health shared across sessions, under virtual time: circuit breakers,
//! retry budgets, and a prefill rejection remembered.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::sync::Arc;
use std::time::Duration;

use baton::engine::splice::SpliceError;
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::{answer, Style};
use baton::policy::breaker::{BreakerConfig, BreakerState};
use baton::policy::budget::BudgetConfig;
use baton::policy::health::RouteHealth;
use baton::{ChatRequest, EventKind, FailureClass, FailureKind, Ladder, Message, Role, Route, Splicer};

fn mock(fault: &str) -> Arc<MockProvider> {
    Arc::new(MockProvider::new(
        FaultPlan::Fixed(fault.parse::<FaultScript>().expect("fault")),
        Style::default(),
    ))
}

fn conversation(i: usize) -> Vec<Message> {
    vec![Message::new(Role::User, format!("resilience {i}"))]
}

fn kinds(failures: &[baton::Failure]) -> Vec<&str> {
    failures.iter().map(|f| f.kind.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_skips_the_route_and_a_probe_brings_traffic_back() {
    // The primary drops mid-answer for its first 5 requests, then recovers.
    let primary = mock("drop@3x5");
    let fallback = mock("none");
    let ladder = Ladder::new(vec![
        Route::new("primary", "p", primary.clone()),
        Route::new("fallback", "f", fallback.clone()),
    ]);
    let splicer = Splicer::new(ladder);
    let mut events = splicer.subscribe();

    // Five sessions, five mid-stream failures in a row: the breaker opens.
    for i in 0..5 {
        let done = splicer.collect(ChatRequest::new(conversation(i))).await;
        assert_eq!(done.text, answer(&conversation(i)));
        assert_eq!(kinds(&done.outcome.expect("complete").failures), ["truncated"]);
    }
    // While open, sessions go straight to the fallback without a request to the primary.
    let done = splicer.collect(ChatRequest::new(conversation(5))).await;
    assert_eq!(done.text, answer(&conversation(5)));
    let completion = done.outcome.expect("complete");
    assert_eq!(kinds(&completion.failures), ["circuit_open"]);
    assert_eq!(completion.route_chain, ["fallback"]);
    assert_eq!(primary.requests(), 5);

    // After the cool-down, one probe goes through, succeeds, and closes the breaker.
    tokio::time::advance(Duration::from_secs(31)).await;
    let done = splicer.collect(ChatRequest::new(conversation(6))).await;
    assert_eq!(done.text, answer(&conversation(6)));
    let completion = done.outcome.expect("complete");
    assert!(completion.failures.is_empty(), "{:?}", completion.failures);
    assert_eq!(completion.route_chain, ["primary"]);
    assert_eq!(primary.requests(), 6);

    let mut transitions = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let EventKind::Breaker { route, from, to, .. } = event.kind {
            transitions.push((route, from, to));
        }
    }
    assert_eq!(
        transitions,
        [
            ("primary".to_string(), BreakerState::Closed, BreakerState::Open),
            ("primary".to_string(), BreakerState::Open, BreakerState::HalfOpen),
            ("primary".to_string(), BreakerState::HalfOpen, BreakerState::Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_spent_retry_budget_turns_retries_into_handovers() {
    let primary = mock("503");
    let fallback = mock("none");
    // A breaker that never opens here, and a flat budget of 4 retries per 10 s.
    let health = Arc::new(RouteHealth::new(
        BreakerConfig {
            consecutive_failures: 1000,
            min_requests: 1000,
            ..BreakerConfig::default()
        },
        BudgetConfig {
            window: Duration::from_secs(10),
            ratio: 0.0,
            floor: 4,
        },
    ));
    let mut route = Route::new("primary", "p", primary.clone());
    route.health = health;
    let splicer = Splicer::new(Ladder::new(vec![route, Route::new("fallback", "f", fallback)]));

    let mut retried = Vec::new();
    for i in 0..4 {
        let done = splicer.collect(ChatRequest::new(conversation(i))).await;
        assert_eq!(done.text, answer(&conversation(i)));
        let failures = done.outcome.expect("complete").failures;
        retried.push(failures.len() - 1);
    }
    // Sessions 1 and 2 spend the 4 retries (2 each); after that a 503 hands over at once.
    assert_eq!(retried, [2, 2, 0, 0]);
    assert_eq!(primary.requests(), 2 * 3 + 2);
}

#[tokio::test(start_paused = true)]
async fn a_route_that_rejected_prefill_is_continued_by_instruction_from_then_on() {
    let primary = mock("drop@4");
    let repeat = Style {
        repeat_words: 2,
        extra_space: false,
    };
    let fallback = Arc::new(MockProvider::new(
        FaultPlan::Fixed("noprefill".parse::<FaultScript>().expect("fault")),
        repeat,
    ));
    let ladder = Ladder::new(vec![
        Route::new("primary", "p", primary),
        Route::new("fallback", "f", fallback.clone()),
    ]);
    let splicer = Splicer::new(ladder);
    let mut events = splicer.subscribe();

    // The first session learns it: a prefill attempt, rejected, then instruct.
    let done = splicer.collect(ChatRequest::new(conversation(40))).await;
    assert_eq!(done.text, answer(&conversation(40)));
    assert_eq!(
        kinds(&done.outcome.expect("complete").failures),
        ["truncated", "prefill_rejected"]
    );
    assert_eq!(fallback.requests(), 2);
    support::drain(&mut events);

    // Every later session goes to instruct at once.
    let done = splicer.collect(ChatRequest::new(conversation(41))).await;
    assert_eq!(done.text, answer(&conversation(41)));
    assert_eq!(kinds(&done.outcome.expect("complete").failures), ["truncated"]);
    assert_eq!(fallback.requests(), 3, "one request, no rejected prefill first");
    let session = support::drain(&mut events);
    let modes: Vec<_> = session
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::AttemptOpened { route, mode, .. } => Some((route.clone(), *mode)),
            _ => None,
        })
        .collect();
    assert_eq!(
        modes,
        [
            ("primary".to_string(), baton::ContinuationMode::Prefill),
            ("fallback".to_string(), baton::ContinuationMode::Instruct)
        ]
    );
    // A replay knows the route had learnt it before the session began.
    assert_eq!(
        support::verify_events(&session),
        baton::record::verify::Outcome::Ok { partial: false }
    );
}

/// An upstream attempt that fails the way a connect fails when baton is out of descriptors.
struct OutOfDescriptors(std::sync::atomic::AtomicUsize);

impl baton::provider::Provider for OutOfDescriptors {
    fn stream(&self, _request: baton::provider::UpstreamRequest) -> baton::provider::ChunkStream {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let kind = FailureKind::LocalResources {
            resource: "descriptors".into(),
            detail: "error sending request: client error (Connect): Too many open files (os error 24)".into(),
        };
        Box::pin(futures::stream::once(async move { Err(kind) }))
    }
}

#[tokio::test(start_paused = true)]
async fn local_exhaustion_never_opens_a_breaker_nor_walks_the_ladder() {
    let primary = Arc::new(OutOfDescriptors(Default::default()));
    let fallback = mock("none");
    let ladder = Ladder::new(vec![
        Route::new("primary", "p", primary.clone()),
        Route::new("fallback", "f", fallback.clone()),
    ]);
    let health = ladder.routes[0].health_for(None);
    let splicer = Splicer::new(ladder);
    // Four times the consecutive failures that open a breaker.
    for i in 0..20 {
        let done = splicer.collect(ChatRequest::new(conversation(i))).await;
        match done.outcome {
            Err(SpliceError::Local { resource, failures, .. }) => {
                assert_eq!(resource, "descriptors");
                assert_eq!(kinds(&failures), ["local_resources"]);
                assert_eq!(failures[0].class, FailureClass::Local);
            }
            other => panic!("session {i}: {other:?}"),
        }
        assert_eq!(health.state(), BreakerState::Closed, "after session {i}");
    }
    // Every session asked the primary (no breaker skipped it), none the fallback.
    assert_eq!(primary.0.load(std::sync::atomic::Ordering::Relaxed), 20);
    assert_eq!(fallback.requests(), 0);
}
