//! Adaptive deadlines, under virtual time: a stall deadline learnt from a
//! route's recent gaps, a first-token deadline that grows with the prompt, and
//! replays that re-drive with the deadlines each attempt was given.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;

use baton::engine::event::EngineEvent;
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::script::Pacing;
use baton::oracle::{answer, Style};
use baton::policy::deadline::{Adaptive, AdaptiveStall};
use baton::policy::health::RouteHealth;
use baton::provider::{ChunkStream, Provider, UpstreamRequest};
use baton::record::reader::RecordedSession;
use baton::record::verify::{self, Outcome};
use baton::request::estimate_tokens;
use baton::{ChatRequest, ClientItem, Deadlines, EventKind, FailureKind, Ladder, Message, Role, Route, Splicer};

const MS: fn(u64) -> Duration = Duration::from_millis;

fn mock(fault: &str, first_token: Duration, interval: Duration) -> Arc<MockProvider> {
    let script: FaultScript = fault.parse().unwrap_or_else(|e| panic!("{e}"));
    Arc::new(
        MockProvider::new(FaultPlan::Fixed(script), Style::default()).with_pacing(Pacing { first_token, interval }),
    )
}

fn conversation(tag: &str) -> Vec<Message> {
    vec![Message::new(Role::User, format!("adaptive {tag}"))]
}

fn deadlines(first_token: u64, stall: u64, total: u64) -> Deadlines {
    Deadlines {
        first_token: MS(first_token),
        stall: MS(stall),
        total: MS(total),
        reasoning_budget: None,
    }
}

/// A stall deadline learnt from the route's history only (the stream's own cadence off),
/// so these tests see what the history does.
fn adaptive_stall(floor_ms: u64, min_samples: u32) -> Adaptive {
    Adaptive {
        stall: Some(AdaptiveStall {
            k: 8.0,
            floor: MS(floor_ms),
            min_samples,
            own_gaps: 0,
        }),
        ttft_per_1k_prompt: Duration::ZERO,
    }
}

fn drain(rx: &mut broadcast::Receiver<EngineEvent>) -> Vec<EngineEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

/// The deadlines each attempt opened with, by route.
fn opened(events: &[EngineEvent]) -> Vec<(String, Deadlines)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::AttemptOpened {
                route,
                deadlines: Some(d),
                ..
            } => Some((route.clone(), **d)),
            _ => None,
        })
        .collect()
}

/// Every failure's cause and when (ms since its session started) it was detected.
fn failures(events: &[EngineEvent]) -> Vec<(FailureKind, u64)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Failure { cause, .. } => Some((cause.clone(), e.t_ms)),
            _ => None,
        })
        .collect()
}

/// `events` as a recording would hand them to `baton replay --verify`, through their JSON lines.
fn recorded(events: &[EngineEvent]) -> RecordedSession {
    let events: Vec<EngineEvent> = events
        .iter()
        .map(|e| serde_json::from_str(&serde_json::to_string(e).expect("serialize")).expect("read back"))
        .collect();
    RecordedSession {
        id: events[0].session,
        path: PathBuf::from("in-memory"),
        events,
        gaps: Vec::new(),
        version: baton::record::FORMAT_VERSION,
        corrupt: false,
    }
}

#[tokio::test(start_paused = true)]
async fn a_fast_stream_is_declared_stalled_well_under_a_second_once_its_gaps_are_learnt() {
    // The primary ticks every 20 ms; its configured stall deadline (the ceiling) is 10 s.
    let health = Arc::new(RouteHealth::default());
    let primary = |provider: Arc<MockProvider>| {
        let mut route = Route::new("primary", "big", provider)
            .with_deadlines(deadlines(5_000, 10_000, 300_000))
            .with_adaptive(adaptive_stall(100, 50));
        route.health = health.clone();
        route
    };
    let fallback = || Route::new("fallback", "small", mock("none", MS(20), MS(5)));

    // Warm-up: two healthy sessions teach the route its pace.
    let healthy = Splicer::new(Ladder::new(vec![primary(mock("none", MS(20), MS(20))), fallback()]));
    let mut events = healthy.subscribe();
    for i in 0..2 {
        let c = conversation(&format!("warm-up {i}"));
        let done = healthy.collect(ChatRequest::new(c.clone())).await;
        assert_eq!(done.text, answer(&c));
        assert!(done.outcome.expect("complete").failures.is_empty());
    }
    let warm_up = opened(&drain(&mut events));
    assert_eq!(
        warm_up[0],
        ("primary".into(), deadlines(5_000, 10_000, 300_000)),
        "cold: the ceiling"
    );
    let big = health.model("big");
    assert!(big.gap_count() >= 50, "{} gaps", big.gap_count());
    assert_eq!(big.gap_p99(50), Some(MS(20)));
    let learnt = primary(mock("none", MS(20), MS(20)));
    assert_eq!(
        learnt.current_stall(&learnt.health_for(None)),
        MS(160),
        "8 × p99 of 20 ms gaps"
    );

    // Now the primary stalls after 10 chunks; the same route health carries the learnt pace.
    let stalling = Splicer::new(Ladder::new(vec![primary(mock("stall@10", MS(20), MS(20))), fallback()]));
    let mut events = stalling.subscribe();
    let c = conversation("stalls");
    let done = stalling.collect(ChatRequest::new(c.clone())).await;
    assert_eq!(done.text, answer(&c), "nothing lost, nothing doubled");
    assert_eq!(done.outcome.expect("complete").route_chain, ["primary", "fallback"]);
    let session = drain(&mut events);
    assert_eq!(opened(&session)[0].1.stall, MS(160));
    let failed = failures(&session);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (cause, at_ms) = &failed[0];
    assert_eq!(*cause, FailureKind::Stall { after: MS(160) });
    // 20 ms to the first token, 9 gaps of 20 ms, then 160 ms of silence.
    assert_eq!(*at_ms, 20 + 9 * 20 + 160);
    assert!(*at_ms < 1000);

    // The replay re-drives with the recorded 160 ms, not the 10 s a history-less route would get.
    let verdict = verify::verify_session(&recorded(&session)).await;
    assert_eq!(verdict.outcome, Outcome::Ok { partial: false }, "{verdict:?}");
    let mut old_style = recorded(&session);
    for e in &mut old_style.events {
        if let EventKind::AttemptOpened { deadlines, .. } = &mut e.kind {
            *deadlines = None;
        }
    }
    let verdict = verify::verify_session(&old_style).await;
    assert!(
        matches!(&verdict.outcome, Outcome::Diverged(d) if d.now.contains("10000")),
        "without the recorded deadlines the re-drive waits the full 10 s: {verdict:?}"
    );

    // The same stall on a route that has learnt nothing waits out the full ceiling.
    let mut cold = primary(mock("stall@10", MS(20), MS(20)));
    cold.health = Arc::new(RouteHealth::default());
    let splicer = Splicer::new(Ladder::new(vec![cold, fallback()]));
    let mut events = splicer.subscribe();
    let done = splicer.collect(ChatRequest::new(c.clone())).await;
    assert_eq!(done.text, answer(&c));
    assert_eq!(
        failures(&drain(&mut events)),
        [(FailureKind::Stall { after: MS(10_000) }, 20 + 9 * 20 + 10_000)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_but_steady_stream_is_not_cut_and_its_gaps_are_learnt() {
    // A reasoning model: a token every 2 s. The floor is low (100 ms) and the ceiling high (30 s).
    let route = Route::new("thinker", "slow", mock("none", MS(1000), MS(2000)))
        .with_deadlines(deadlines(5_000, 30_000, 3_600_000))
        .with_adaptive(adaptive_stall(100, 20));
    let health = route.health_for(None);
    let splicer = Splicer::new(Ladder::new(vec![route.clone()]));
    let mut events = splicer.subscribe();
    for i in 0..3 {
        let c = conversation(&format!("slow {i}"));
        let done = splicer.collect(ChatRequest::new(c.clone())).await;
        assert_eq!(done.text, answer(&c));
        let completion = done.outcome.expect("complete");
        assert!(completion.failures.is_empty(), "{:?}", completion.failures);
        assert_eq!(completion.route_chain, ["thinker"]);
    }
    assert_eq!(health.gap_p99(20), Some(MS(2000)));
    // Learnt, not floored and not pinned at the ceiling: 8 × 2 s.
    assert_eq!(route.current_stall(&route.health_for(None)), MS(16_000));
    let stalls: Vec<Duration> = opened(&drain(&mut events)).iter().map(|(_, d)| d.stall).collect();
    assert_eq!(stalls, [MS(30_000), MS(16_000), MS(16_000)]);
}

/// An upstream that streams at its own pace whether or not anyone reads: its
/// items wait in a buffer, as a real network upstream's do in the socket.
struct Eager(Arc<MockProvider>);

impl Provider for Eager {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let mut inner = self.0.stream(request);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(item) = inner.next().await {
                if tx.send(item).is_err() {
                    return;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_client_is_neither_a_stall_nor_a_gap() {
    let route = Route::new("primary", "big", Arc::new(Eager(mock("none", MS(20), MS(20)))))
        .with_deadlines(deadlines(5_000, 10_000, 300_000))
        .with_adaptive(adaptive_stall(100, 50));
    let health = route.health_for(None);
    let splicer = Splicer::new(Ladder::new(vec![route.clone()]));
    let warm = conversation("warm");
    assert_eq!(
        splicer.collect(ChatRequest::new(warm.clone())).await.text,
        answer(&warm)
    );
    assert_eq!(route.current_stall(&route.health_for(None)), MS(160));
    let learnt = health.gap_count();

    // A client that takes 500 ms over every delta: far beyond the learnt 160 ms.
    let c = conversation("slow reader");
    let mut stream = splicer.splice(ChatRequest::new(c.clone()));
    let mut text = String::new();
    let mut end = None;
    while let Some(item) = stream.next().await {
        match item {
            ClientItem::Text { text: t, .. } => {
                text.push_str(&t);
                tokio::time::sleep(MS(500)).await;
            }
            ClientItem::Done(done) => end = Some(done),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(text, answer(&c));
    assert!(end.expect("complete").failures.is_empty());
    // Only the wait for the second delta was the upstream's; the rest were already there.
    assert!(
        health.gap_count() - learnt <= 1,
        "{} new gaps",
        health.gap_count() - learnt
    );
    assert_eq!(
        route.current_stall(&route.health_for(None)),
        MS(160),
        "the slow client taught it nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_token_deadline_grows_with_the_prompt() {
    // The primary takes 3 s to its first token; the base deadline is 1 s, plus 1 s per 1k prompt tokens.
    let slow = mock("slow:3000", MS(20), MS(5));
    let grows = Adaptive {
        stall: None,
        ttft_per_1k_prompt: MS(1000),
    };
    let ladder = |adaptive: Adaptive| {
        Splicer::new(Ladder::new(vec![
            Route::new("primary", "big", slow.clone())
                .with_deadlines(deadlines(1_000, 3_000, 300_000))
                .with_adaptive(adaptive),
            Route::new("fallback", "small", mock("none", MS(20), MS(5))),
        ]))
    };
    let small = conversation("a short question");
    let big = vec![Message::new(
        Role::User,
        format!("Summarise this: {}", "lorem ipsum dolor sit amet ".repeat(450)),
    )];
    let big_tokens = estimate_tokens(&big);
    assert!(big_tokens > 3000, "{big_tokens} tokens");

    // A small prompt gets about the base deadline: the slow first token is too late.
    let splicer = ladder(grows);
    let mut events = splicer.subscribe();
    let done = splicer.collect(ChatRequest::new(small.clone())).await;
    assert_eq!(done.text, answer(&small));
    assert_eq!(done.outcome.expect("complete").route_chain, ["fallback"]);
    let session = drain(&mut events);
    let ttft = opened(&session)[0].1.first_token;
    assert_eq!(ttft, MS(1000) + MS(u64::from(estimate_tokens(&small))));
    assert_eq!(
        failures(&session),
        [(FailureKind::FirstTokenTimeout { after: ttft }, ttft.as_millis() as u64)]
    );

    // A big prompt earns the time a big prompt takes: the primary answers it.
    let done = splicer.collect(ChatRequest::new(big.clone())).await;
    assert_eq!(done.text, answer(&big));
    let completion = done.outcome.expect("complete");
    assert!(completion.failures.is_empty(), "{:?}", completion.failures);
    assert_eq!(completion.route_chain, ["primary"]);
    let session = drain(&mut events);
    assert_eq!(opened(&session)[0].1.first_token, MS(1000 + u64::from(big_tokens)));
    let verdict = verify::verify_session(&recorded(&session)).await;
    assert_eq!(verdict.outcome, Outcome::Ok { partial: false }, "{verdict:?}");

    // With a fixed first-token deadline (the default) the same big prompt times out.
    let fixed = ladder(Adaptive::default());
    let done = fixed.collect(ChatRequest::new(big.clone())).await;
    assert_eq!(done.text, answer(&big));
    let completion = done.outcome.expect("complete");
    assert_eq!(completion.route_chain, ["fallback"]);
    assert_eq!(completion.failures[0].kind, "first_token_timeout");
}

#[tokio::test(start_paused = true)]
async fn fixed_deadlines_learn_nothing() {
    let route = Route::new("primary", "big", mock("none", MS(20), MS(20))).with_adaptive(Adaptive::fixed());
    assert!(route.adaptive.is_fixed());
    let health = route.health_for(None);
    let splicer = Splicer::new(Ladder::new(vec![route.clone()]));
    let mut events = splicer.subscribe();
    let c = conversation("fixed");
    assert_eq!(splicer.collect(ChatRequest::new(c.clone())).await.text, answer(&c));
    assert_eq!(
        opened(&drain(&mut events)),
        [("primary".to_string(), Deadlines::default())]
    );
    assert_eq!(health.gap_count(), 0, "a fixed route keeps no gap sample");
    assert_eq!(route.current_stall(&route.health_for(None)), Deadlines::default().stall);
}

/// `/metrics` shows each route's current stall deadline: the ceiling while cold,
/// the learnt one after traffic (real time over loopback, so only bounds are checked).
#[tokio::test]
async fn metrics_show_the_effective_stall_deadline() {
    let toml = r#"
        [[route]]
        name = "primary"
        provider = "mock"
        model = "oracle"
        stall_ms = 3000
        stall_adaptive = true
        stall_floor_ms = 250
        stall_min_samples = 20

        [[ladder]]
        name = "chat"
        routes = ["primary"]
    "#;
    let config = baton::config::Config::parse("adaptive.toml", toml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        baton::proxy::serve(listener, &config, async move {
            let _ = stopped.await;
        })
        .await
    });
    let client = reqwest::Client::new();
    let gauge = || async {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        let line = text
            .lines()
            .find(|l| l.starts_with("baton_route_stall_deadline_ms{route=\"primary\",model=\"oracle\"}"))
            .unwrap_or_else(|| panic!("no stall deadline gauge in {text}"))
            .to_string();
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .expect("a value")
    };
    assert_eq!(gauge().await, 3000, "cold: the configured stall_ms");
    let body = serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "metrics"}]});
    let answered = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert!(answered.status().is_success());
    answered.text().await.expect("body");
    // The mock ticks every 5 ms: the learnt deadline sits between the floor and the ceiling.
    let learnt = gauge().await;
    assert!((250..3000).contains(&learnt), "{learnt} ms");
    let _ = stop.send(());
    let _ = server.await;
}

// ------------------------------------------------------------ on defaults

/// An upstream whose `i`-th text chunk comes `gap(i)` after the one before (the
/// first: `gap(0)` after the request): the oracle's text, at any cadence.
struct Paced {
    inner: Arc<MockProvider>,
    gap: fn(usize) -> Duration,
}

impl Provider for Paced {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let mut inner = self.inner.stream(request);
        let gap = self.gap;
        Box::pin(async_stream::stream! {
            let mut i = 0;
            while let Some(item) = inner.next().await {
                if matches!(item, Ok(baton::provider::Chunk::Text(_))) {
                    tokio::time::sleep(gap(i)).await;
                    i += 1;
                }
                yield item;
            }
        })
    }
}

/// The oracle behind [`Paced`]: it sends at once, the wrapper sets the pace.
fn paced(fault: &str, gap: fn(usize) -> Duration) -> Arc<Paced> {
    Arc::new(Paced {
        inner: mock(fault, Duration::ZERO, Duration::ZERO),
        gap,
    })
}

/// The deltas `route` wrote in a session, with when (ms since it started).
fn deltas_of(events: &[EngineEvent], route: &str) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Delta { route: r, .. } if r == route => Some(e.t_ms),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn on_defaults_a_fast_streams_stall_is_declared_about_a_second_after_its_last_token() {
    // A route as a config with no stall keys makes it, and no history: a 15 ms stream that stalls after 40 chunks.
    let ladder = |adaptive: Adaptive| {
        let primary = Route::new("primary", "big", mock("stall@40", MS(20), MS(15))).with_adaptive(adaptive);
        assert_eq!(primary.health_for(None).gap_count(), 0, "no history");
        Splicer::new(Ladder::new(vec![
            primary,
            Route::new("fallback", "small", mock("none", MS(20), MS(5))),
        ]))
    };
    assert_eq!(
        Route::new("r", "m", mock("none", MS(20), MS(5))).adaptive,
        Adaptive::default()
    );
    let splicer = ladder(Adaptive::default());
    let mut events = splicer.subscribe();
    let c = conversation("a fast stream stalls");
    let done = splicer.collect(ChatRequest::new(c.clone())).await;
    assert_eq!(done.text, answer(&c), "nothing lost, nothing doubled");
    assert_eq!(done.outcome.expect("complete").route_chain, ["primary", "fallback"]);
    let session = drain(&mut events);
    assert_eq!(
        opened(&session)[0].1.stall,
        Deadlines::default().stall,
        "it opened cold: the ceiling"
    );
    let primary = deltas_of(&session, "primary");
    assert_eq!(primary.len(), 40);
    let failed = failures(&session);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (cause, at_ms) = &failed[0];
    // Its own 15 ms cadence, after its first 12 gaps: the 1 s floor, not the 3 s ceiling.
    assert_eq!(*cause, FailureKind::Stall { after: MS(1000) });
    let detected = at_ms - primary[primary.len() - 1];
    assert!(
        (1000..=1200).contains(&detected),
        "declared {detected} ms after the last token"
    );

    // The recording re-drives to the same decisions.
    let verdict = verify::verify_session(&recorded(&session)).await;
    assert_eq!(verdict.outcome, Outcome::Ok { partial: false }, "{verdict:?}");

    // A fixed stall deadline waits out the full 3 s.
    let fixed = ladder(Adaptive::fixed());
    let mut events = fixed.subscribe();
    let done = fixed.collect(ChatRequest::new(c.clone())).await;
    assert_eq!(done.text, answer(&c));
    let session = drain(&mut events);
    let primary = deltas_of(&session, "primary");
    let failed = failures(&session);
    assert_eq!(failed[0].0, FailureKind::Stall { after: MS(3000) });
    assert_eq!(failed[0].1 - primary[primary.len() - 1], 3000);
}

#[tokio::test(start_paused = true)]
async fn on_defaults_a_steady_800_ms_stream_is_never_cut() {
    // A reasoning model's pace: a token every 800 ms, under the default 3 s ceiling.
    let route = Route::new("thinker", "slow", mock("none", MS(800), MS(800)));
    let health = route.health_for(None);
    let splicer = Splicer::new(Ladder::new(vec![
        route.clone(),
        Route::new("fallback", "small", mock("none", MS(20), MS(5))),
    ]));
    let mut events = splicer.subscribe();
    for i in 0..3 {
        let c = conversation(&format!("steady {i}"));
        let done = splicer.collect(ChatRequest::new(c.clone())).await;
        assert_eq!(done.text, answer(&c));
        let completion = done.outcome.expect("complete");
        assert!(completion.failures.is_empty(), "{:?}", completion.failures);
        assert_eq!(completion.route_chain, ["thinker"]);
        let session = drain(&mut events);
        let tokens = deltas_of(&session, "thinker").len();
        assert!(tokens >= 30, "{tokens} tokens");
        let verdict = verify::verify_session(&recorded(&session)).await;
        assert_eq!(verdict.outcome, Outcome::Ok { partial: false }, "{verdict:?}");
    }
    // Its history now says the same as its own cadence: 8 × 800 ms, capped by the ceiling.
    assert_eq!(health.gap_p99(100), Some(MS(800)));
    assert_eq!(route.current_stall(&health), Deadlines::default().stall);
}

#[tokio::test(start_paused = true)]
async fn on_defaults_a_fast_stream_with_occasional_pauses_is_not_cut() {
    // 20 ms gaps, and pauses of 900, 600 and 750 ms (a tool call being written, a
    // reasoning step), the first long after the stream's cadence counts: the
    // deadline is then at its 1 s floor, and a 900 ms pause must pass under it.
    fn gap(i: usize) -> Duration {
        match i {
            20 => MS(900),
            35 => MS(600),
            50 => MS(750),
            _ => MS(20),
        }
    }
    let route = Route::new("primary", "big", paced("none", gap));
    let splicer = Splicer::new(Ladder::new(vec![
        route,
        Route::new("fallback", "small", mock("none", MS(20), MS(5))),
    ]));
    let mut events = splicer.subscribe();
    for i in 0..3 {
        let c = conversation(&format!("pauses {i}"));
        let done = splicer.collect(ChatRequest::new(c.clone())).await;
        assert_eq!(done.text, answer(&c));
        let completion = done.outcome.expect("complete");
        assert!(completion.failures.is_empty(), "{:?}", completion.failures);
        assert_eq!(completion.route_chain, ["primary"]);
        let session = drain(&mut events);
        let at = deltas_of(&session, "primary");
        assert!(at.len() > 51, "{} chunks: every pause happened", at.len());
        assert_eq!(at[20] - at[19], 900);
        let verdict = verify::verify_session(&recorded(&session)).await;
        assert_eq!(verdict.outcome, Outcome::Ok { partial: false }, "{verdict:?}");
    }

    // The same stream stalling for good after its first pause: its own 900 ms pause
    // raised its deadline to the ceiling, so the stall is declared there, not at the floor.
    let route = Route::new("primary", "big", paced("stall@30", gap));
    let splicer = Splicer::new(Ladder::new(vec![
        route,
        Route::new("fallback", "small", mock("none", MS(20), MS(5))),
    ]));
    let mut events = splicer.subscribe();
    let c = conversation("pauses, then stalls");
    let done = splicer.collect(ChatRequest::new(c.clone())).await;
    assert_eq!(done.text, answer(&c));
    let session = drain(&mut events);
    assert_eq!(failures(&session)[0].0, FailureKind::Stall { after: MS(3000) });
    let verdict = verify::verify_session(&recorded(&session)).await;
    assert_eq!(verdict.outcome, Outcome::Ok { partial: false }, "{verdict:?}");
}

#[tokio::test(start_paused = true)]
async fn a_recording_whose_client_paused_re_drives_without_a_stall() {
    // An eager 20 ms upstream: its cadence sets the deadline to the 1 s floor. The
    // client stops reading for 2 s mid-answer; the upstream's items wait in the
    // buffer, so live nothing stalls, but the recording shows a 2 s gap.
    let route = Route::new("primary", "big", Arc::new(Eager(mock("none", MS(20), MS(20)))));
    let splicer = Splicer::new(Ladder::new(vec![
        route,
        Route::new("fallback", "small", mock("none", MS(20), MS(5))),
    ]));
    let mut events = splicer.subscribe();
    let c = conversation("a client that pauses");
    let mut stream = splicer.splice(ChatRequest::new(c.clone()));
    let mut text = String::new();
    let mut deltas = 0;
    let mut end = None;
    while let Some(item) = stream.next().await {
        match item {
            ClientItem::Text { text: t, .. } => {
                text.push_str(&t);
                deltas += 1;
                if deltas == 30 {
                    tokio::time::sleep(MS(2000)).await;
                }
            }
            ClientItem::Done(done) => end = Some(done),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(text, answer(&c));
    assert!(end.expect("complete").failures.is_empty());
    let session = drain(&mut events);
    let at = deltas_of(&session, "primary");
    assert!(at[30] - at[29] >= 2000, "the recording shows the client's pause");
    // The re-drive does not re-learn the 20 ms cadence from the recorded gaps (it would
    // cut the 2 s gap at the 1 s floor): an attempt that did not stall replays under the ceiling.
    let verdict = verify::verify_session(&recorded(&session)).await;
    assert_eq!(verdict.outcome, Outcome::Ok { partial: false }, "{verdict:?}");
}
