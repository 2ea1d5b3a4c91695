//! Hedged requests under virtual time: a late first token starts the next
//! route in parallel, the first content wins, the other attempt is cancelled
//! without counting against its route, and a recorded hedge replays.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::sync::Arc;
use std::time::Duration;

use baton::engine::splice::{ClientItem, Completion};
use baton::engine::watchdog::Deadlines;
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::script::Pacing;
use baton::oracle::{answer, Style};
use baton::policy::breaker::{BreakerConfig, BreakerState};
use baton::policy::budget::BudgetConfig;
use baton::policy::health::RouteHealth;
use baton::policy::hedge::{HedgePolicy, Outcome};
use baton::record::verify::Outcome as Verdict;
use baton::{ChatRequest, EngineEvent, EventKind, Ladder, Message, Role, Route, Splicer};
use futures::StreamExt;
use tokio::time::Instant;

fn mock(fault: &str) -> Arc<MockProvider> {
    Arc::new(MockProvider::new(
        FaultPlan::Fixed(fault.parse::<FaultScript>().expect("fault")),
        Style::default(),
    ))
}

/// A well-behaved oracle whose first token comes after `first_token`.
fn paced(first_token: Duration) -> Arc<MockProvider> {
    Arc::new(
        MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()).with_pacing(Pacing {
            first_token,
            interval: Duration::from_millis(5),
        }),
    )
}

fn conversation(i: usize) -> Vec<Message> {
    vec![Message::new(Role::User, format!("hedging {i}"))]
}

/// Health whose breaker opens after two failures in a row: a cancelled
/// attempt counted as a failure would show at once.
fn touchy_health() -> Arc<RouteHealth> {
    let breaker = BreakerConfig {
        consecutive_failures: 2,
        ..BreakerConfig::default()
    };
    Arc::new(RouteHealth::new(breaker, BudgetConfig::default()))
}

/// The route `name` with `provider` behind it, sharing `health`.
fn route(name: &str, provider: Arc<MockProvider>, health: &Arc<RouteHealth>) -> Route {
    let mut r = Route::new(name, name, provider);
    r.health = health.clone();
    r
}

fn hedged(routes: Vec<Route>, after: Option<Duration>) -> Ladder {
    let mut ladder = Ladder::new(routes);
    ladder.hedge = Some(HedgePolicy::new(after, 5));
    ladder
}

/// One session: its text, when its first text and its end came (since it
/// started), how it ended, and its own events.
struct Run {
    text: String,
    first_text: Option<Duration>,
    took: Duration,
    done: Option<Completion>,
    handovers: usize,
    events: Vec<EngineEvent>,
}

async fn run(splicer: &Splicer, events: &mut tokio::sync::broadcast::Receiver<EngineEvent>, i: usize) -> Run {
    let request = ChatRequest::new(conversation(i));
    let session = request.session;
    let started = Instant::now();
    let mut stream = splicer.splice(request);
    let mut out = Run {
        text: String::new(),
        first_text: None,
        took: Duration::ZERO,
        done: None,
        handovers: 0,
        events: Vec::new(),
    };
    while let Some(item) = stream.next().await {
        match item {
            ClientItem::Text { text, .. } => {
                out.first_text.get_or_insert_with(|| started.elapsed());
                out.text.push_str(&text);
            }
            ClientItem::Handover(_) => out.handovers += 1,
            ClientItem::Done(c) => out.done = Some(c),
            ClientItem::Failed(e) => panic!("session {i} failed: {e}"),
            ClientItem::ToolCalls { .. } | ClientItem::Reasoning { .. } => {}
        }
    }
    out.took = started.elapsed();
    out.events = support::drain(events)
        .into_iter()
        .filter(|e| e.session == session)
        .collect();
    out
}

fn hedge_events(events: &[EngineEvent]) -> Vec<&EventKind> {
    events
        .iter()
        .map(|e| &e.kind)
        .filter(|k| matches!(k, EventKind::Hedge { .. } | EventKind::HedgeWon { .. }))
        .collect()
}

fn failures(events: &[EngineEvent]) -> Vec<&EventKind> {
    events
        .iter()
        .map(|e| &e.kind)
        .filter(|k| matches!(k, EventKind::Failure { .. }))
        .collect()
}

/// Five quick sessions on a primary sharing `health`: its p95 becomes 20 ms.
async fn learn_quick_primary(health: &Arc<RouteHealth>) {
    let fallback = mock("none");
    let ladder = hedged(
        vec![
            route("primary", mock("none"), health),
            route("fallback", fallback.clone(), &touchy_health()),
        ],
        None,
    );
    let splicer = Splicer::new(ladder);
    for i in 0..5 {
        let done = splicer.collect(ChatRequest::new(conversation(100 + i))).await;
        assert_eq!(done.text, answer(&conversation(100 + i)));
    }
    assert_eq!(
        fallback.requests(),
        0,
        "too few samples and no hedge_after_ms: no hedge"
    );
    assert_eq!(health.model("primary").ttft_p95_of(5), Some(Duration::from_millis(20)));
}

#[tokio::test(start_paused = true)]
async fn a_late_primary_is_hedged_and_the_faster_fallback_streams_the_answer() {
    let primary_health = touchy_health();
    learn_quick_primary(&primary_health).await;

    // Now the primary's first token takes 3 s, far beyond its 20 ms p95.
    let slow = mock("slow:3000");
    let fallback = mock("none");
    let ladder = hedged(
        vec![
            route("primary", slow.clone(), &primary_health),
            route("fallback", fallback.clone(), &touchy_health()),
        ],
        None,
    );
    let policy = ladder.hedge.clone().expect("hedging on");
    let splicer = Splicer::new(ladder);
    let mut events = splicer.subscribe();
    for i in 0..3 {
        let r = run(&splicer, &mut events, i).await;
        assert_eq!(r.text, answer(&conversation(i)), "byte for byte the oracle's answer");
        let done = r.done.expect("complete");
        assert_eq!(done.route_chain, ["fallback"]);
        assert!(
            done.failures.is_empty(),
            "a cancelled attempt is no failure: {:?}",
            done.failures
        );
        assert_eq!(
            r.handovers, 0,
            "nothing was handed over: the client never saw the primary"
        );
        // Hedged after 20 ms, the fallback's first token 20 ms later.
        assert_eq!(r.first_text, Some(Duration::from_millis(40)));
        assert!(
            r.took < Duration::from_secs(1),
            "the session did not wait for the primary: {:?}",
            r.took
        );
        let hedges = hedge_events(&r.events);
        assert!(
            matches!(
                hedges.as_slice(),
                [
                    EventKind::Hedge { route, hedge_route, after_ms: 20, attempt: 1, hedge_attempt: 2 },
                    EventKind::HedgeWon { route: won, attempt: 2, by_hedge: true, cancelled: Some(c), cancelled_attempt: Some(1) },
                ] if route == "primary" && hedge_route == "fallback" && won == "fallback" && c == "primary"
            ),
            "{hedges:?}"
        );
        assert!(failures(&r.events).is_empty(), "{:?}", failures(&r.events));
        assert_eq!(support::verify_events(&r.events), Verdict::Ok { partial: false });
    }
    assert_eq!(slow.requests(), 3, "the primary was asked every time");
    assert_eq!(fallback.requests(), 3);
    assert_eq!(
        primary_health.model("primary").state(),
        BreakerState::Closed,
        "three cancellations did not open it"
    );
    assert_eq!(policy.ended(Outcome::HedgeWon), 3);
    assert_eq!(policy.ended(Outcome::PrimaryWon), 0);

    // /metrics catches up with the ladder's counts, once however often it is read.
    let metrics = baton::proxy::metrics::Metrics::new();
    metrics.hedges("default", &policy);
    metrics.hedges("default", &policy);
    let text = metrics.render();
    assert!(
        text.contains(r#"baton_hedges_total{ladder="default",outcome="hedge_won"} 3"#),
        "{text}"
    );
    assert!(text.contains(r#"baton_hedges_total{ladder="default",outcome="primary_won"} 0"#));
}

#[tokio::test(start_paused = true)]
async fn the_dashboard_logs_a_hedge_and_its_winner() {
    let health = touchy_health();
    learn_quick_primary(&health).await;
    let splicer = Splicer::new(hedged(
        vec![
            route("primary", mock("slow:3000"), &health),
            route("fallback", mock("none"), &touchy_health()),
        ],
        None,
    ));
    let mut events = splicer.subscribe();
    let r = run(&splicer, &mut events, 0).await;
    let mut model = baton::dashboard::model::Model::default();
    for e in &r.events {
        model.apply(e, Duration::ZERO);
    }
    let rows: Vec<(&str, &str, &str)> = model
        .handovers
        .iter()
        .map(|h| (h.from.as_str(), h.to.as_str(), h.reason.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("primary", "fallback", "hedge: no first token after 20 ms"),
            ("primary", "fallback", "hedge won, late attempt cancelled"),
        ]
    );
    assert_eq!(model.total_handovers, 0, "a hedge is not a handover");
}

#[tokio::test(start_paused = true)]
async fn a_primary_that_answers_at_its_usual_pace_is_never_hedged() {
    let health = touchy_health();
    learn_quick_primary(&health).await;
    for after in [None, Some(Duration::from_millis(200))] {
        let fallback = mock("none");
        let splicer = Splicer::new(hedged(
            vec![
                route("primary", mock("none"), &health),
                route("fallback", fallback.clone(), &touchy_health()),
            ],
            after,
        ));
        let mut events = splicer.subscribe();
        for i in 0..5 {
            let r = run(&splicer, &mut events, i).await;
            assert_eq!(r.text, answer(&conversation(i)));
            assert_eq!(r.done.expect("complete").route_chain, ["primary"]);
            assert!(
                hedge_events(&r.events).is_empty(),
                "{after:?}: {:?}",
                hedge_events(&r.events)
            );
        }
        // A first token exactly at the p95 is not late.
        assert_eq!(fallback.requests(), 0, "with hedge_after_ms {after:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn hedging_is_off_by_default() {
    let health = touchy_health();
    learn_quick_primary(&health).await;
    let fallback = mock("none");
    let ladder = Ladder::new(vec![
        route("primary", mock("slow:3000"), &health),
        route("fallback", fallback.clone(), &touchy_health()),
    ]);
    assert!(ladder.hedge.is_none());
    let splicer = Splicer::new(ladder);
    let mut events = splicer.subscribe();
    let r = run(&splicer, &mut events, 0).await;
    assert_eq!(r.text, answer(&conversation(0)));
    assert_eq!(
        r.first_text,
        Some(Duration::from_millis(3000)),
        "it waited for the slow primary"
    );
    assert_eq!(fallback.requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_slower_than_the_late_primary_is_cancelled() {
    let health = touchy_health();
    learn_quick_primary(&health).await;
    // Late (100 ms against a 20 ms p95), but the fallback would take 500 ms.
    let fallback = paced(Duration::from_millis(500));
    let fallback_health = touchy_health();
    let ladder = hedged(
        vec![
            route("primary", mock("slow:100"), &health),
            route("fallback", fallback.clone(), &fallback_health),
        ],
        None,
    );
    let policy = ladder.hedge.clone().expect("on");
    let splicer = Splicer::new(ladder);
    let mut events = splicer.subscribe();
    let r = run(&splicer, &mut events, 0).await;
    assert_eq!(r.text, answer(&conversation(0)));
    assert_eq!(r.done.expect("complete").route_chain, ["primary"]);
    assert_eq!(r.first_text, Some(Duration::from_millis(100)));
    assert_eq!(fallback.requests(), 1, "the hedge was started");
    let hedges = hedge_events(&r.events);
    assert!(
        matches!(
            hedges.as_slice(),
            [
                EventKind::Hedge { after_ms: 20, .. },
                EventKind::HedgeWon { route, by_hedge: false, cancelled: Some(c), cancelled_attempt: Some(2), .. },
            ] if route == "primary" && c == "fallback"
        ),
        "{hedges:?}"
    );
    assert!(failures(&r.events).is_empty());
    assert_eq!(fallback_health.model("fallback").state(), BreakerState::Closed);
    assert_eq!(policy.ended(Outcome::PrimaryWon), 1);
    assert_eq!(support::verify_events(&r.events), Verdict::Ok { partial: false });
}

#[tokio::test(start_paused = true)]
async fn a_primary_failing_during_the_race_hands_over_to_the_running_hedge() {
    let health = touchy_health();
    learn_quick_primary(&health).await;
    // The primary never answers; its first-token deadline (1 s) ends it while the
    // hedge, started at 20 ms, is still waiting for its own first token (at 1.52 s).
    let mut primary = route("primary", mock("hang"), &health);
    primary.deadlines = Deadlines {
        first_token: Duration::from_secs(1),
        ..Deadlines::default()
    };
    let fallback = paced(Duration::from_millis(1500));
    let ladder = hedged(
        vec![primary, route("fallback", fallback.clone(), &touchy_health())],
        None,
    );
    let policy = ladder.hedge.clone().expect("on");
    let splicer = Splicer::new(ladder);
    let mut events = splicer.subscribe();
    let r = run(&splicer, &mut events, 0).await;
    assert_eq!(r.text, answer(&conversation(0)));
    let done = r.done.expect("complete");
    assert_eq!(done.route_chain, ["fallback"]);
    let kinds: Vec<&str> = done.failures.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(kinds, ["first_token_timeout"]);
    assert_eq!(r.handovers, 1, "the primary's failure is handed over to the hedge");
    assert_eq!(fallback.requests(), 1, "no second request: the hedge is the handover");
    assert_eq!(r.first_text, Some(Duration::from_millis(1520)));
    assert_eq!(policy.ended(Outcome::PrimaryFailed), 1);
    assert_eq!(support::verify_events(&r.events), Verdict::Ok { partial: false });
}
