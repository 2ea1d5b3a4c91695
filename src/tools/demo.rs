//! The headless demo: oracle upstreams on loopback, a faulty primary, healthy
//! fallbacks, a reasoning model whose faults land inside its thinking, N
//! concurrent sessions over real HTTP/SSE, and a byte-exact check of every
//! answer against the oracle.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::engine::event::{EngineEvent, EventBus, EventKind, HandoverCost, Subscriber, BATON_SESSION};
use crate::engine::splice::{Splicer, EVENT_CAPACITY};
use crate::oracle::fault::{FaultPlan, FaultScript};
use crate::oracle::script::Pacing;
use crate::oracle::server::{spawn, MockConfig};
use crate::oracle::{answer, Style};
use crate::policy::breaker::{BreakerConfig, BreakerState};
use crate::policy::budget::BudgetConfig;
use crate::policy::deadline::Deadlines;
use crate::policy::health::RouteHealth;
use crate::policy::ladder::{Ladder, Route};
use crate::policy::reasoning::Phase;
use crate::provider::openai::OpenAiProvider;
use crate::record::{RecordOptions, RecordStats, Recorder};
use crate::request::{ChatRequest, Message, Role};
use crate::stats::percentile;
use crate::tools::scenario;

/// The demo's primary route, the one that goes down.
pub const PRIMARY: &str = "primary";

/// The reasoning route's fault scripts, one per session in turn (the mock
/// reads the script from the model name): `K` counts the thinking's chunks
/// first, and the thinking is some 40 to 70 chunks, so most land inside it;
/// `drop@120` cuts the answer, and the sessions without a fault think for
/// longer than the route's first-token deadline without a handover.
pub const THINKING_SCENARIOS: &[&str] = &[
    "stall@4",
    "none",
    "drop@11",
    "malformed@7",
    "error@16",
    "loop@5",
    "thinkonly",
    "none",
    "stall@30",
    "drop@120",
];

/// The reasoning model the demo's `thinking` ladder asks for, with `script` as its fault.
pub fn thinking_model(script: &str) -> String {
    format!("oracle-think+{script}")
}

/// What the demo runs.
#[derive(Clone, Copy, Debug)]
pub struct DemoOptions {
    /// Concurrent sessions.
    pub sessions: usize,
    /// Seed of the primary's fault mix.
    pub seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { sessions: 200, seed: 1 }
    }
}

/// The demo's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DemoReport {
    /// Sessions run.
    pub sessions: usize,
    /// Sessions whose final text equals the oracle's answer byte for byte.
    pub intact: usize,
    /// Handovers in all sessions.
    pub handovers: usize,
    /// Handovers by failure class.
    pub handovers_by_class: BTreeMap<String, usize>,
    /// Handovers by failure kind.
    pub handovers_by_reason: BTreeMap<String, usize>,
    /// Handovers while the client had reasoning and no answer text yet.
    pub handovers_during_reasoning: usize,
    /// Same-route retries and mode switches are not handovers; failures of every kind are counted here.
    pub failures_by_reason: BTreeMap<String, usize>,
    /// Bytes of the oracle's answers missing from what clients received.
    pub lost_bytes: usize,
    /// Bytes clients received that the oracle's answers do not have.
    pub doubled_bytes: usize,
    /// Median handover gap: failure detected → continuation's first byte to the client.
    pub gap_ms_p50: f64,
    /// 99th percentile handover gap.
    pub gap_ms_p99: f64,
    /// Median of the handover gap's own cost: the gap minus the fallback's own
    /// time to first token (from the events' whole-ms times, so within 2 ms each).
    pub handover_overhead_ms_p50: f64,
    /// 99th percentile of the handover gap's own cost.
    pub handover_overhead_ms_p99: f64,
    /// Handovers whose own cost the events showed (the others' events were lost to a lagging feed).
    pub handover_overheads_measured: usize,
    /// Sessions that ended in an error.
    pub failed: usize,
    /// Times a route's circuit breaker opened.
    pub breaker_opened: usize,
    /// Times one closed again after a successful probe.
    pub breaker_closed: usize,
    /// From the end of the primary's outage to the first text it sent after
    /// it (ms); `None` if it never sent any.
    pub back_on_primary_ms: Option<f64>,
    /// From the end of the primary's outage to its breaker's first closing
    /// after it (ms); `None` if it did not close after the outage.
    pub primary_closed_ms: Option<f64>,
    /// Wall time of the run.
    pub elapsed_ms: u64,
}

/// Errors that stop the demo before it runs.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A mock upstream could not bind a loopback port.
    #[error("could not start an oracle upstream on 127.0.0.1: {0}")]
    Bind(#[from] std::io::Error),
    /// The recording directory could not be created.
    #[error("cannot record to {dir}: {source}")]
    Record {
        /// The directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The demo's conversation number `i`.
pub fn conversation(i: usize, seed: u64) -> Vec<Message> {
    vec![
        Message::new(Role::System, "You are the baton demo. Answer in plain prose."),
        Message::new(
            Role::User,
            format!("Question {i} (seed {seed}): tell me about relay races."),
        ),
    ]
}

/// Bytes lost and doubled between `expected` and `got` (zero and zero when equal).
pub fn byte_damage(expected: &str, got: &str) -> (usize, usize) {
    let (e, g) = (expected.as_bytes(), got.as_bytes());
    let prefix = e.iter().zip(g).take_while(|(a, b)| a == b).count();
    let max_suffix = e.len().min(g.len()) - prefix;
    let suffix = e
        .iter()
        .rev()
        .zip(g.iter().rev())
        .take(max_suffix)
        .take_while(|(a, b)| a == b)
        .count();
    (e.len() - prefix - suffix, g.len() - prefix - suffix)
}

/// The demo's upstreams and the splicers over them.
pub struct DemoWorld {
    /// Splicers over two ladder orders, so both fallbacks take part, then the reasoning ladder's.
    pub splicers: Vec<Splicer>,
    /// The one event feed of every splicer.
    pub events: EventBus,
    /// When the primary's first outage ends.
    pub recovered: Instant,
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// When the demo's primary goes down, and how quickly its breaker probes it again.
#[derive(Clone, Copy, Debug)]
pub struct Outages {
    /// The first outage begins this long after the upstreams start.
    pub offset: Duration,
    /// One outage per period.
    pub period: Duration,
    /// Each lasts this long.
    pub down: Duration,
    /// The primary's breaker's shortest cool-down: its fast 503s are probed this often.
    pub cool_down: Duration,
}

impl Outages {
    /// One short outage early in a headless run, while sessions are still starting.
    pub const HEADLESS: Outages = Outages {
        offset: Duration::from_millis(300),
        period: Duration::from_secs(3600),
        down: Duration::from_millis(500),
        cool_down: Duration::from_millis(100),
    };

    /// For the live dashboard: down 8 s of every 40 s.
    pub const LIVE: Outages = Outages {
        offset: Duration::from_secs(12),
        period: Duration::from_secs(40),
        down: Duration::from_secs(8),
        cool_down: Duration::from_secs(2),
    };
}

impl DemoWorld {
    /// Starts the oracle upstreams on loopback and builds the ladders.
    pub async fn start(seed: u64, outages: Outages) -> Result<Self, DemoError> {
        let pacing = Pacing {
            first_token: Duration::from_millis(30),
            interval: Duration::from_millis(4),
        };
        let epoch = Instant::now();
        let client = OpenAiProvider::default_client();
        let mut providers = HashMap::new();
        let mut stops = Vec::new();
        for upstream in scenario::UPSTREAMS {
            let plan = match upstream.faults {
                scenario::Faults::Flaky => FaultPlan::Outage {
                    seed,
                    epoch,
                    offset: outages.offset,
                    period: outages.period,
                    down: outages.down,
                },
                scenario::Faults::Fixed(script) => FaultPlan::Fixed(script.parse().unwrap_or(FaultScript::NONE)),
                scenario::Faults::ByModel => FaultPlan::ByModel,
            };
            let style = Style {
                repeat_words: upstream.repeat_words,
                extra_space: upstream.extra_space,
            };
            let pacing = Pacing {
                interval: upstream.interval_ms.map_or(pacing.interval, Duration::from_millis),
                ..pacing
            };
            let (addr, stop) = spawn(MockConfig { plan, style, pacing }).await?;
            let provider = Arc::new(OpenAiProvider::new(client.clone(), &format!("http://{addr}/v1"), None));
            providers.insert(upstream.name, provider);
            stops.push(stop);
        }
        let mut routes = HashMap::new();
        for r in scenario::ROUTES {
            let Some(provider) = providers.get(r.upstream) else {
                continue;
            };
            let deadlines = Deadlines {
                first_token: Duration::from_millis(r.ttft_ms),
                stall: Duration::from_millis(r.stall_ms),
                total: Duration::from_millis(r.total_ms),
                reasoning_budget: None,
            };
            let mut route = Route::new(r.name, r.model, provider.clone())
                .with_deadlines(deadlines)
                .with_continuation(r.continuation)
                .with_overlap(r.overlap);
            let breaker = match r.breaker {
                scenario::Breaker::Default => None,
                // The primary is flaky by design (most of its answers break somewhere).
                scenario::Breaker::Flaky => Some(BreakerConfig {
                    consecutive_failures: scenario::FLAKY_CONSECUTIVE_FAILURES,
                    // A rate can never exceed 1: only a run of failures opens this breaker.
                    failure_rate: 1.0,
                    cool_down: outages.cool_down,
                    // Slow failures (a first-token timeout) are probed more rarely, but
                    // not much: the headless run lasts two seconds, and half the
                    // primary's answers break outside its outage too.
                    max_cool_down: outages.cool_down * 4,
                    // Several probes at once: one slow probe must not keep every session off the primary.
                    probes: 4,
                    ..BreakerConfig::default()
                }),
                // Each scenario is a model of its own, with health of its own: a breaker
                // opening on a scenario that always fails would hide its handovers.
                scenario::Breaker::Never => Some(BreakerConfig {
                    consecutive_failures: u32::MAX,
                    failure_rate: 1.0,
                    ..BreakerConfig::default()
                }),
            };
            if let Some(breaker) = breaker {
                route.health = Arc::new(RouteHealth::new(breaker, BudgetConfig::default()));
            }
            routes.insert(r.name, route);
        }
        let events = EventBus::new(EVENT_CAPACITY);
        let splicers = scenario::LADDERS
            .iter()
            .map(|l| {
                let rungs = l.routes.iter().filter_map(|name| routes.get(name).cloned()).collect();
                Splicer::with_events(Ladder::new(rungs).named(l.name), events.clone())
            })
            .collect();
        Ok(DemoWorld {
            splicers,
            events,
            recovered: epoch + outages.offset + outages.down,
            _stops: stops,
        })
    }

    /// Session number `i`: its splicer (the ladders in turn) and its request;
    /// the reasoning ladder's sessions ask for [`THINKING_SCENARIOS`] in turn.
    pub fn session(&self, i: usize, seed: u64) -> (Splicer, ChatRequest) {
        let n = self.splicers.len().max(1);
        let splicer = self.splicers[i % n].clone();
        let mut request = ChatRequest::new(conversation(i, seed));
        if splicer.ladder().name == "thinking" {
            let turn = (i / n + seed as usize) % THINKING_SCENARIOS.len();
            request.model = Some(thinking_model(THINKING_SCENARIOS[turn]));
        }
        (splicer, request)
    }
}

/// Runs the headless demo and reports its figures.
pub async fn run_headless(options: DemoOptions) -> Result<DemoReport, DemoError> {
    Ok(run_headless_recorded(options, None).await?.0)
}

/// Runs the headless demo, recording every session when `record` is given
/// (the files are all written when it returns).
pub async fn run_headless_recorded(
    options: DemoOptions,
    record: Option<RecordOptions>,
) -> Result<(DemoReport, Option<RecordStats>), DemoError> {
    let world = DemoWorld::start(options.seed, Outages::HEADLESS).await?;
    let breakers = tokio::spawn(count_breaker_changes(world.events.subscribe(), world.recovered));
    let recorder = match record {
        Some(record) => {
            let dir = record.dir.display().to_string();
            Some(Recorder::attach(&world.events, record).map_err(|source| DemoError::Record { dir, source })?)
        }
        None => None,
    };
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    // Sessions start over the first 2 s, so some meet the primary's outage and some its recovery.
    let spread = Duration::from_millis(2000) / options.sessions.max(1) as u32;
    for i in 0..options.sessions {
        let (splicer, request) = world.session(i, options.seed);
        let start = started + spread * i as u32;
        tasks.spawn(async move {
            tokio::time::sleep_until(start).await;
            let expected = answer(&request.messages);
            let collected = splicer.collect(request).await;
            (expected, collected)
        });
    }
    let mut report = DemoReport {
        sessions: options.sessions,
        ..DemoReport::default()
    };
    let mut gaps = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((expected, collected)) = joined else {
            report.failed += 1;
            continue;
        };
        let (lost, doubled) = byte_damage(&expected, &collected.text);
        report.lost_bytes += lost;
        report.doubled_bytes += doubled;
        match &collected.outcome {
            Ok(completion) => {
                if collected.text == expected {
                    report.intact += 1;
                }
                for f in &completion.failures {
                    *report.failures_by_reason.entry(f.kind.clone()).or_default() += 1;
                }
            }
            Err(e) => {
                report.failed += 1;
                tracing::warn!("session failed: {e}");
            }
        }
        for h in &collected.handovers {
            report.handovers += 1;
            *report
                .handovers_by_class
                .entry(h.class.as_str().to_string())
                .or_default() += 1;
            *report.handovers_by_reason.entry(h.reason.to_string()).or_default() += 1;
            gaps.push(h.gap.as_secs_f64() * 1000.0);
        }
    }
    gaps.sort_by(f64::total_cmp);
    // Two decimals: the figures are for people, and noise below 10 µs is not signal.
    report.gap_ms_p50 = (percentile(&gaps, 50.0).unwrap_or(0.0) * 100.0).round() / 100.0;
    report.gap_ms_p99 = (percentile(&gaps, 99.0).unwrap_or(0.0) * 100.0).round() / 100.0;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    drop(world);
    let recovery = breakers.await.unwrap_or_default();
    (report.breaker_opened, report.breaker_closed) = (recovery.opened, recovery.closed);
    report.handovers_during_reasoning = recovery.during_reasoning;
    let mut overheads = recovery.overheads;
    report.handover_overheads_measured = overheads.len();
    overheads.sort_by(f64::total_cmp);
    report.handover_overhead_ms_p50 = percentile(&overheads, 50.0).unwrap_or(0.0);
    report.handover_overhead_ms_p99 = percentile(&overheads, 99.0).unwrap_or(0.0);
    let ms = |d: Duration| (d.as_secs_f64() * 100_000.0).round() / 100.0;
    report.back_on_primary_ms = recovery.back_on_primary.map(ms);
    report.primary_closed_ms = recovery.primary_closed.map(ms);
    let stats = match recorder {
        Some(recorder) => Some(recorder.finish().await),
        None => None,
    };
    Ok((report, stats))
}

/// What the event feed showed of the breakers and of the primary's recovery.
#[derive(Debug, Default)]
struct Recovery {
    opened: usize,
    closed: usize,
    /// From the outage's end to the primary's first text after it.
    back_on_primary: Option<Duration>,
    /// From the outage's end to the primary's breaker's first closing after it.
    primary_closed: Option<Duration>,
    /// Handovers while the session's client had reasoning and no answer text yet.
    during_reasoning: usize,
    /// Each handover's own cost in ms (see [`HandoverCost`]), unsorted.
    overheads: Vec<f64>,
}

/// Counts breaker openings and closings on `events` until the feed closes,
/// times the primary's return after its outage ends at `recovered`, and
/// counts the handovers that came while a session was thinking, and
/// measures each handover's own cost.
async fn count_breaker_changes(mut events: Subscriber, recovered: Instant) -> Recovery {
    let mut r = Recovery::default();
    // Only live sessions: an entry goes when its session ends.
    let mut phases: HashMap<uuid::Uuid, Phase> = HashMap::new();
    let mut costs: HashMap<uuid::Uuid, HandoverCost> = HashMap::new();
    loop {
        // Events are published as they happen: the time one is received is its time.
        let since = || Instant::now().checked_duration_since(recovered);
        let event = events.recv().await;
        if let Ok(e) = &event {
            if e.session != BATON_SESSION {
                if let Some(ms) = costs.entry(e.session).or_default().push(e) {
                    r.overheads.push(ms as f64);
                }
            }
            match &e.kind {
                EventKind::Reasoning { .. } => {
                    let phase = phases.entry(e.session).or_default();
                    *phase = phase.reasoning();
                }
                EventKind::Delta { .. } => {
                    let phase = phases.entry(e.session).or_default();
                    *phase = phase.text();
                }
                EventKind::Handover { .. } if phases.get(&e.session) == Some(&Phase::Thinking) => {
                    r.during_reasoning += 1;
                }
                EventKind::Finished { .. } | EventKind::Failed { .. } => {
                    phases.remove(&e.session);
                    costs.remove(&e.session);
                }
                _ => {}
            }
        }
        match event {
            Ok(EngineEvent {
                kind: EventKind::Breaker { to, route, .. },
                ..
            }) => match to {
                BreakerState::Open => r.opened += 1,
                BreakerState::Closed => {
                    r.closed += 1;
                    if route == PRIMARY && r.primary_closed.is_none() {
                        r.primary_closed = since();
                    }
                }
                BreakerState::HalfOpen => {}
            },
            Ok(EngineEvent {
                kind: EventKind::FirstToken { route, .. },
                ..
            }) if route == PRIMARY && r.back_on_primary.is_none() => r.back_on_primary = since(),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return r,
        }
    }
}

/// Runs demo sessions forever at `per_second`, each on a new conversation, for the live dashboard.
pub async fn run_continuous(world: DemoWorld, per_second: f64, seed: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second.max(0.01)));
    let mut running = tokio::task::JoinSet::new();
    for i in 0usize.. {
        tick.tick().await;
        while running.try_join_next().is_some() {}
        let (splicer, request) = world.session(i, seed);
        running.spawn(async move { splicer.collect(request).await });
    }
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |m: &BTreeMap<String, usize>| {
            if m.is_empty() {
                return "none".to_string();
            }
            m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        writeln!(f, "sessions        {}", self.sessions)?;
        writeln!(
            f,
            "intact          {}/{} (final text equals the oracle's answer byte for byte)",
            self.intact, self.sessions
        )?;
        writeln!(f, "failed          {}", self.failed)?;
        writeln!(
            f,
            "handovers       {} ({}; {} during reasoning)",
            self.handovers,
            list(&self.handovers_by_class),
            self.handovers_during_reasoning
        )?;
        writeln!(f, "  by reason     {}", list(&self.handovers_by_reason))?;
        writeln!(f, "failures seen   {}", list(&self.failures_by_reason))?;
        writeln!(f, "lost bytes      {}", self.lost_bytes)?;
        writeln!(f, "doubled bytes   {}", self.doubled_bytes)?;
        writeln!(
            f,
            "handover gap    p50 {:.1} ms, p99 {:.1} ms",
            self.gap_ms_p50, self.gap_ms_p99
        )?;
        writeln!(
            f,
            "handover overhead p50 {:.1} ms, p99 {:.1} ms (the gap minus the fallback's own time to first token, in whole ms; {} of {} handovers measured)",
            self.handover_overhead_ms_p50, self.handover_overhead_ms_p99, self.handover_overheads_measured, self.handovers
        )?;
        writeln!(
            f,
            "breakers        opened {}, closed {} (the primary goes down for 0.5 s and comes back)",
            self.breaker_opened, self.breaker_closed
        )?;
        let after = |ms: Option<f64>| ms.map_or("never".to_string(), |ms| format!("{ms:.1} ms"));
        writeln!(
            f,
            "recovery        back on the primary {} after its outage ended (breaker closed {})",
            after(self.back_on_primary_ms),
            after(self.primary_closed_ms)
        )?;
        write!(f, "elapsed         {:.1} s", self.elapsed_ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_damage_counts_the_differing_middle() {
        assert_eq!(byte_damage("abcdef", "abcdef"), (0, 0));
        assert_eq!(byte_damage("abcdef", "abcf"), (2, 0));
        assert_eq!(byte_damage("abcdef", "abcdcdef"), (0, 2));
        assert_eq!(byte_damage("abcdef", "abc"), (3, 0));
        assert_eq!(byte_damage("aaaa", "aaaaaa"), (0, 2));
    }
}
