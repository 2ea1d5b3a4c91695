#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test
//! Recovery under virtual time: an open breaker's probe cadence follows what
//! a failure costs (fast 503s probed every second, timeouts ever more
//! rarely), a probe is judged at its first token, and with active probing no
//! user waits on a probe.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::engine::splice::Collected;
use baton::engine::watchdog::Deadlines;
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::{answer, Style};
use baton::policy::breaker::{BreakerConfig, BreakerState, ProbeMode};
use baton::policy::budget::BudgetConfig;
use baton::policy::health::RouteHealth;
use baton::provider::{ChunkStream, Provider, UpstreamRequest};
use baton::{ChatRequest, EngineEvent, EventKind, FailureKind, Ladder, Message, Role, Route, Splicer};
use tokio::time::Instant;

/// How the primary fails while it is down.
#[derive(Clone, Copy, Debug)]
enum Down {
    /// A 503, answered after 5 ms.
    Fast503,
    /// It accepts and never sends a thing.
    Silent,
}

/// A primary down for `down` from `epoch` and a healthy oracle after; it notes every request.
struct Outage {
    epoch: Instant,
    down: Duration,
    how: Down,
    healthy: MockProvider,
    /// When each request came (since `epoch`) and whether it was baton's own probe.
    requests: Mutex<Vec<(Duration, bool)>>,
}

impl Outage {
    fn new(down: Duration, how: Down) -> Arc<Self> {
        Arc::new(Outage {
            epoch: Instant::now(),
            down,
            how,
            healthy: MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()),
            requests: Mutex::new(Vec::new()),
        })
    }

    fn requests(&self) -> Vec<(Duration, bool)> {
        self.requests.lock().unwrap().clone()
    }
}

impl Provider for Outage {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let at = self.epoch.elapsed();
        self.requests
            .lock()
            .unwrap()
            .push((at, baton::engine::probe::is_probe(&request)));
        if at >= self.down {
            return self.healthy.stream(request);
        }
        match self.how {
            Down::Fast503 => Box::pin(futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Err(FailureKind::ServerError {
                    status: 503,
                    retry_after: None,
                })
            })),
            Down::Silent => Box::pin(futures::stream::pending()),
        }
    }
}

fn healthy() -> Arc<MockProvider> {
    Arc::new(MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()))
}

fn conversation(i: usize) -> Vec<Message> {
    vec![Message::new(Role::User, format!("recovery {i}"))]
}

/// Primary (with `breaker`) and fallback.
fn ladder(primary: Arc<dyn Provider>, breaker: BreakerConfig, deadlines: Deadlines) -> Ladder {
    let mut p = Route::new("primary", "big", primary).with_deadlines(deadlines);
    p.health = Arc::new(RouteHealth::new(breaker, BudgetConfig::default()));
    Ladder::new(vec![p, Route::new("fallback", "small", healthy())])
}

/// One session: when it started (since the epoch) and what its client got.
struct Session {
    start: Duration,
    collected: Collected,
    expected: String,
}

impl Session {
    fn chain(&self) -> Vec<String> {
        self.collected.outcome.as_ref().expect("complete").route_chain.clone()
    }

    fn on_primary(&self) -> bool {
        self.chain() == ["primary"]
    }
}

/// Runs a session every `every` from the epoch until `until`, concurrently; returns them by start.
async fn traffic(splicer: &Splicer, epoch: Instant, every: Duration, until: Duration) -> Vec<Session> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0;
    while every * i < until {
        let (splicer, start) = (splicer.clone(), every * i);
        let messages = conversation(i as usize);
        tasks.spawn(async move {
            tokio::time::sleep_until(epoch + start).await;
            let expected = answer(&messages);
            let collected = splicer.collect(ChatRequest::new(messages)).await;
            Session {
                start,
                collected,
                expected,
            }
        });
        i += 1;
    }
    let mut out = Vec::new();
    while let Some(s) = tasks.join_next().await {
        out.push(s.unwrap());
    }
    out.sort_by_key(|s| s.start);
    out
}

/// Collects the breaker changes on `events` with when they were seen (since `epoch`).
fn watch_breaker(mut events: baton::Subscriber, epoch: Instant) -> Arc<Mutex<Vec<(Duration, BreakerState)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if let EventKind::Breaker { to, .. } = e.kind {
                seen.lock().unwrap().push((epoch.elapsed(), to));
            }
        }
    });
    out
}

fn assert_intact(sessions: &[Session]) {
    for s in sessions {
        assert!(
            s.collected.outcome.is_ok(),
            "session at {:?}: {:?}",
            s.start,
            s.collected.outcome
        );
        assert_eq!(s.collected.text, s.expected, "session at {:?}", s.start);
    }
}

const OUTAGE: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn fast_503s_are_probed_every_second_and_traffic_returns_on_the_next_session() {
    let primary = Outage::new(OUTAGE, Down::Fast503);
    let splicer = Splicer::new(ladder(primary.clone(), BreakerConfig::default(), Deadlines::default()));
    let breaker = watch_breaker(splicer.subscribe(), primary.epoch);
    let sessions = traffic(
        &splicer,
        primary.epoch,
        Duration::from_secs(4),
        Duration::from_secs(100),
    )
    .await;
    assert_intact(&sessions);

    // During the outage every session completes on the fallback.
    for s in sessions.iter().filter(|s| s.start < OUTAGE) {
        assert_eq!(
            s.chain().last().map(String::as_str),
            Some("fallback"),
            "at {:?}",
            s.start
        );
    }
    // The breaker opened within the first sessions; from then on each cool-down step has one primary attempt at most.
    let opened = breaker
        .lock()
        .unwrap()
        .iter()
        .find(|(_, to)| *to == BreakerState::Open)
        .map(|(t, _)| *t)
        .expect("the breaker opened");
    assert!(opened < Duration::from_secs(8), "opened at {opened:?}");
    let during: Vec<Duration> = primary
        .requests()
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t > opened && *t < OUTAGE)
        .collect();
    assert!(!during.is_empty(), "the outage was probed");
    for pair in during.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(1),
            "two probes within a cool-down: {pair:?}"
        );
    }
    // One probe per session at most (a session every 4 s), and no session waited on a retry of it.
    let late: Vec<&Session> = sessions
        .iter()
        .filter(|s| s.start > opened && s.start < OUTAGE)
        .collect();
    assert!(
        during.len() <= late.len(),
        "{} probes for {} sessions",
        during.len(),
        late.len()
    );
    for s in &late {
        let failures = &s.collected.outcome.as_ref().unwrap().failures;
        assert!(failures.len() <= 1, "at {:?}: {failures:?}", s.start);
    }
    // Recovered: the first session after it is the probe, and it is served by the primary; so is every later one.
    let after: Vec<&Session> = sessions.iter().filter(|s| s.start >= OUTAGE).collect();
    assert!(after[0].on_primary(), "first after recovery: {:?}", after[0].chain());
    assert!(after.iter().all(|s| s.on_primary()));
    assert_eq!(
        breaker.lock().unwrap().last().map(|(_, to)| *to),
        Some(BreakerState::Closed)
    );
}

#[tokio::test(start_paused = true)]
async fn with_a_session_every_250_ms_the_primary_is_back_within_a_second_of_recovery() {
    let primary = Outage::new(OUTAGE, Down::Fast503);
    let splicer = Splicer::new(ladder(primary.clone(), BreakerConfig::default(), Deadlines::default()));
    let sessions = traffic(
        &splicer,
        primary.epoch,
        Duration::from_millis(250),
        Duration::from_secs(64),
    )
    .await;
    assert_intact(&sessions);
    let back = sessions
        .iter()
        .find(|s| s.on_primary())
        .expect("some session was served by the primary");
    assert!(
        back.start >= OUTAGE,
        "served by the primary while it was down? {:?}",
        back.start
    );
    let delay = back.start - OUTAGE;
    assert!(
        delay <= Duration::from_secs(1),
        "back on the primary {delay:?} after recovery"
    );
    // ~4 sessions per cool-down step, one probe each step.
    let probes = primary.requests().iter().filter(|(t, _)| *t < OUTAGE).count();
    assert!(
        (55..=70).contains(&probes),
        "{probes} primary requests in a 60 s outage"
    );
    println!(
        "recovery: first session on the primary {delay:?} after the outage ended; {probes} primary requests during it"
    );
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_probed_by_baton_ever_more_rarely_and_no_user_waits_on_one() {
    let down = Duration::from_secs(230);
    let primary = Outage::new(down, Down::Silent);
    let breaker_config = BreakerConfig {
        probe: ProbeMode::Active,
        ..BreakerConfig::default()
    };
    let deadlines = Deadlines {
        first_token: Duration::from_secs(10),
        ..Deadlines::default()
    };
    let splicer = Splicer::new(ladder(primary.clone(), breaker_config, deadlines));
    let breaker = watch_breaker(splicer.subscribe(), primary.epoch);
    let _prober = splicer.start_prober().expect("the primary is actively probed");
    let sessions = traffic(
        &splicer,
        primary.epoch,
        Duration::from_secs(4),
        Duration::from_secs(500),
    )
    .await;
    assert_intact(&sessions);

    let changes = breaker.lock().unwrap().clone();
    let opened = changes
        .iter()
        .find(|(_, to)| *to == BreakerState::Open)
        .map(|(t, _)| *t)
        .expect("opened");
    let closed = changes
        .iter()
        .find(|(_, to)| *to == BreakerState::Closed)
        .map(|(t, _)| *t)
        .expect("closed again");
    let requests = primary.requests();
    // Users reach the primary only before it opened; afterwards only baton's probes do.
    for (t, probe) in &requests {
        assert!(
            *probe || *t < opened || *t >= closed,
            "a user request at {t:?} (opened {opened:?}, closed {closed:?})"
        );
    }
    let probes: Vec<Duration> = requests.iter().filter(|(_, p)| *p).map(|(t, _)| *t).collect();
    let intervals: Vec<u64> = probes.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    // A 10 s timeout: 3 × its cost to the first probe, doubling after each failed one.
    assert!(
        probes[0] - opened >= Duration::from_secs(10),
        "first probe {:?} after opening",
        probes[0] - opened
    );
    assert_eq!(intervals, [60, 120, 240], "probe times {probes:?}");
    assert!(probes.last().unwrap() >= &down, "the last probe found it recovered");
    // No session that started after the opening waited on the primary.
    for s in sessions.iter().filter(|s| s.start > opened && s.start < closed) {
        assert_eq!(s.chain(), ["fallback"], "at {:?}", s.start);
        let failures = &s.collected.outcome.as_ref().unwrap().failures;
        assert!(
            failures.iter().all(|f| f.kind == "circuit_open"),
            "at {:?}: {failures:?}",
            s.start
        );
    }
    // Traffic returns once the probe finds it recovered.
    let after: Vec<&Session> = sessions.iter().filter(|s| s.start > closed).collect();
    assert!(!after.is_empty() && after.iter().all(|s| s.on_primary()));
    println!(
        "timeouts: opened at {opened:?}, probes at {probes:?}, closed at {closed:?}, {} sessions after",
        after.len()
    );
}

/// Serves request `n` from `providers[n]` (the last one from then on).
struct Sequence {
    providers: Vec<Arc<dyn Provider>>,
    next: Mutex<usize>,
}

impl Provider for Sequence {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let mut n = self.next.lock().unwrap();
        let p = self.providers[(*n).min(self.providers.len() - 1)].clone();
        *n += 1;
        p.stream(request)
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_is_judged_at_its_first_token_even_if_it_stalls_later() {
    let fault = |f: &str| -> Arc<dyn Provider> {
        Arc::new(MockProvider::new(
            FaultPlan::Fixed(f.parse::<FaultScript>().unwrap()),
            Style::default(),
        ))
    };
    let primary = Arc::new(Sequence {
        providers: vec![fault("503"), fault("503"), fault("stall@3"), fault("none")],
        next: Mutex::new(0),
    });
    let breaker_config = BreakerConfig {
        consecutive_failures: 2,
        ..BreakerConfig::default()
    };
    let deadlines = Deadlines {
        stall: Duration::from_secs(2),
        ..Deadlines::default()
    };
    let splicer = Splicer::new(ladder(primary, breaker_config, deadlines));
    let health = splicer.ladder().routes[0].health.model("big");
    // Two 503s (a first try and its retry) open it.
    let first = splicer.collect(ChatRequest::new(conversation(0))).await;
    assert_eq!(first.text, answer(&conversation(0)));
    assert_eq!(health.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(2)).await;

    let mut events = splicer.subscribe();
    let request = ChatRequest::new(conversation(1));
    let id = request.session;
    let probe = splicer.collect(request).await;
    assert_eq!(probe.text, answer(&conversation(1)), "the stall handed over seamlessly");
    assert_eq!(probe.outcome.as_ref().unwrap().route_chain, ["primary", "fallback"]);
    let mine: Vec<EngineEvent> = std::iter::from_fn(|| events.try_recv().ok())
        .filter(|e| e.session == id)
        .collect();
    let at = |pred: &dyn Fn(&EventKind) -> bool| mine.iter().find(|e| pred(&e.kind)).map(|e| e.t_ms);
    let first_token = at(&|k| matches!(k, EventKind::FirstToken { route, .. } if route == "primary")).unwrap();
    let closed = at(&|k| {
        matches!(
            k,
            EventKind::Breaker {
                to: BreakerState::Closed,
                ..
            }
        )
    })
    .expect("closed");
    let stalled = at(&|k| matches!(k, EventKind::Failure { .. })).unwrap();
    let finished = at(&|k| matches!(k, EventKind::Finished { .. })).unwrap();
    assert_eq!(closed, first_token, "closed the moment the first token came");
    assert!(
        closed + 2000 <= stalled && stalled <= finished,
        "{closed} {stalled} {finished}"
    );
    // The stall afterwards is an ordinary failure of a closed breaker: one, not two in a row.
    assert_eq!(health.state(), BreakerState::Closed);
    assert!(
        !mine.iter().any(|e| matches!(
            e.kind,
            EventKind::Breaker {
                to: BreakerState::Open,
                ..
            }
        )),
        "the stall did not reopen it"
    );
    let next = splicer.collect(ChatRequest::new(conversation(2))).await;
    assert_eq!(next.outcome.unwrap().route_chain, ["primary"]);
}

/// The value of the `/metrics` line that starts with `prefix`, 0 when absent.
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn baton_serve_probes_an_actively_probed_route_itself() {
    // Six 503s: five open the breaker (two sessions with their retries), baton's first probe meets the sixth.
    let served = support::serve(
        r#"
        [[route]]
        name = "primary"
        provider = "mock"
        model = "big"
        fault = "503x6"
        probe = "active"
        breaker_cooldown_ms = 200

        [[route]]
        name = "fallback"
        provider = "mock"
        model = "small"

        [[ladder]]
        name = "chat"
        routes = ["primary", "fallback"]
        "#,
        Vec::new(),
    )
    .await;
    let body = serde_json::json!({"model": "chat", "messages": [{"role": "user", "content": "hello"}]});
    for _ in 0..2 {
        assert!(served.chat(&body).await.status().is_success());
    }
    let ok = "baton_breaker_probes_total{route=\"primary\",model=\"big\",outcome=\"ok\"}";
    let failed = "baton_breaker_probes_total{route=\"primary\",model=\"big\",outcome=\"failed\"}";
    let attempts = "baton_model_attempts_total{route=\"primary\",model=\"big\"}";
    let mut metrics = String::new();
    // Real time: the probe is due a second after the breaker opened; up to 30 s on a loaded machine.
    for _ in 0..600 {
        metrics = served.get("/metrics").await;
        if metric(&metrics, ok) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((metric(&metrics, failed), metric(&metrics, ok)), (1, 1), "{metrics}");
    // No user request reached it while it was open: the five before it opened only.
    assert_eq!(metric(&metrics, attempts), 5, "{metrics}");
    assert_eq!(
        metric(&metrics, "baton_breaker_state{route=\"primary\",model=\"big\"}"),
        0,
        "closed again"
    );
    assert!(served.chat(&body).await.status().is_success());
    assert_eq!(
        metric(&served.get("/metrics").await, attempts),
        6,
        "traffic is back on it"
    );
}
