//! What the dashboard knows, built from `EngineEvent`s alone.
//!
//! Memory is bounded whatever the traffic: the last [`DETAILED_SESSIONS`]
//! sessions are kept in detail (transcript included, itself capped), older
//! ones only as counters; the handover log, latency samples and rate buckets
//! are rings.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use uuid::Uuid;

use crate::door::Door;
use crate::engine::event::{EngineEvent, EventKind};
use crate::failure::{FailureClass, FailureKind};
use crate::policy::breaker::BreakerState;
use crate::policy::health::MAX_MODELS;
use crate::policy::reasoning::Phase;

/// Sessions kept in detail.
pub const DETAILED_SESSIONS: usize = 500;
/// Handovers kept in the log.
pub const HANDOVER_LOG: usize = 200;
/// Transcript bytes kept per session.
pub const TRANSCRIPT_CAP: usize = 64 * 1024;
/// Seconds of history in the rate sparklines.
pub const RATE_SECONDS: usize = 60;
/// Time-to-first-token samples kept per route.
const TTFT_SAMPLES: usize = 256;

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Text is flowing from its first route.
    Streaming,
    /// At least one handover happened and it is still going.
    HandedOver,
    /// Complete.
    Done,
    /// Ended without a complete answer.
    Failed,
}

impl Status {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Streaming => "streaming",
            Status::HandedOver => "handed over",
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }
}

/// A run of transcript text written by one route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The route that wrote it.
    pub route: String,
    /// The text.
    pub text: String,
}

/// One piece of a transcript: text, reasoning, or a splice marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text from a route.
    Text(Part),
    /// Reasoning from a route (a seam marker included): not the answer, drawn apart from it.
    Reasoning(Part),
    /// A splice point and what caused it (`⟫ stall 3.0 s after 143 tokens`).
    Splice(String),
}

/// One session in detail.
#[derive(Clone, Debug)]
pub struct SessionView {
    /// Its id.
    pub id: Uuid,
    /// The ladder serving it.
    pub ladder: String,
    /// The client API it came through (none for library callers).
    pub door: Option<Door>,
    /// Where it stands.
    pub status: Status,
    /// Thinking or answering, as its client's deltas show.
    pub phase: Phase,
    /// Routes that wrote text, in order.
    pub chain: Vec<String>,
    /// Text deltas received by the client.
    pub tokens: u64,
    /// Handovers so far.
    pub handovers: u32,
    /// When the dashboard first saw it.
    pub seen_at: Duration,
    /// When it ended, if it did.
    pub ended_at: Option<Duration>,
    /// The transcript as the client received it.
    pub pieces: Vec<Piece>,
    /// Bytes in the transcript.
    pub bytes: usize,
    /// The first failure since text last flowed, waiting to become a splice marker.
    last_failure: Option<String>,
    /// The upstream model of its latest attempt on each route, as (route, model):
    /// what its first tokens, text and failures are counted to.
    models: Vec<(String, String)>,
}

impl SessionView {
    fn new(id: Uuid, ladder: String, now: Duration) -> Self {
        SessionView {
            id,
            ladder,
            door: None,
            status: Status::Streaming,
            phase: Phase::Waiting,
            chain: Vec::new(),
            tokens: 0,
            handovers: 0,
            seen_at: now,
            ended_at: None,
            pieces: Vec::new(),
            bytes: 0,
            last_failure: None,
            models: Vec::new(),
        }
    }

    /// The first 8 hex digits of the id.
    pub fn short_id(&self) -> String {
        self.id.simple().to_string()[..8].to_string()
    }

    /// The door it came through, short: `chat`, `messages`, `responses`, or `-`.
    pub fn door_text(&self) -> &'static str {
        match self.door {
            Some(Door::Chat) => "chat",
            Some(Door::Messages) => "messages",
            Some(Door::Responses) => "responses",
            None => "-",
        }
    }

    /// The route chain as `a → b`.
    pub fn chain_text(&self) -> String {
        if self.chain.is_empty() {
            "—".to_string()
        } else {
            self.chain.join(" → ")
        }
    }

    /// Whether it is still going.
    pub fn is_live(&self) -> bool {
        matches!(self.status, Status::Streaming | Status::HandedOver)
    }

    /// What its status cell says: a live session's phase, an ended one's status.
    pub fn state_text(&self) -> &'static str {
        if self.is_live() {
            self.phase.as_str()
        } else {
            self.status.as_str()
        }
    }

    fn push_text(&mut self, route: &str, text: &str, reasoning: bool) {
        if self.bytes >= TRANSCRIPT_CAP {
            return;
        }
        let mut take = text.len().min(TRANSCRIPT_CAP - self.bytes);
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes += take;
        let text = &text[..take];
        match (self.pieces.last_mut(), reasoning) {
            (Some(Piece::Text(part)), false) | (Some(Piece::Reasoning(part)), true) if part.route == route => {
                part.text.push_str(text);
            }
            _ => {
                let part = Part {
                    route: route.to_string(),
                    text: text.to_string(),
                };
                self.pieces.push(if reasoning {
                    Piece::Reasoning(part)
                } else {
                    Piece::Text(part)
                });
            }
        }
    }
}

/// One handover in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandoverRow {
    /// When the dashboard saw it.
    pub at: Duration,
    /// Short session id.
    pub session: String,
    /// From route.
    pub from: String,
    /// To route.
    pub to: String,
    /// Failure class.
    pub class: FailureClass,
    /// Failure label.
    pub reason: String,
    /// Bytes the client had.
    pub prefix_bytes: u64,
    /// Gap in ms.
    pub gap_ms: u64,
    /// The client had reasoning and no answer text yet: the fallback started the answer afresh.
    pub during_reasoning: bool,
}

/// Health and latency of one route.
#[derive(Clone, Debug, Default)]
pub struct RouteView {
    /// Attempts opened.
    pub attempts: u64,
    /// Recent attempt outcomes (true: failed), newest last.
    recent: VecDeque<bool>,
    /// Failures with their time and class, for the last minute.
    failures: VecDeque<(Duration, FailureClass)>,
    /// Time-to-first-token samples (ms).
    ttft: VecDeque<u64>,
    /// Tokens with their second, for the tokens/s figure.
    tokens: VecDeque<(u64, u64)>,
    /// The circuit breaker's last reported state (for a route serving several
    /// models: open only when every model's is, see [`RouteView::models`]).
    pub breaker: Option<BreakerState>,
    /// The same figures per upstream model, in order of first appearance (at
    /// most [`MAX_MODELS`]); empty in a model's own view. A pass-through route
    /// serves several, and one model's failures say nothing of the others.
    pub models: Vec<(String, RouteView)>,
    /// When it was last in an event, for dropping the least recently used model.
    touched: Duration,
}

impl RouteView {
    /// The breaker's state when it is not closed; else `ok`, `degraded` (a
    /// failure in the last minute) or `failing` (most recent attempts failed).
    pub fn health(&self, now: Duration) -> &'static str {
        match self.breaker {
            Some(BreakerState::Open) => return "open",
            Some(BreakerState::HalfOpen) => return "half-open",
            _ => {}
        }
        let recent_failed = self.recent.iter().rev().take(5).filter(|f| **f).count();
        if recent_failed >= 3 {
            "failing"
        } else if self.failures_in_last_minute(now).next().is_some() {
            "degraded"
        } else {
            "ok"
        }
    }

    fn failures_in_last_minute(&self, now: Duration) -> impl Iterator<Item = FailureClass> + '_ {
        self.failures
            .iter()
            .filter(move |(t, _)| now.saturating_sub(*t) <= Duration::from_secs(60))
            .map(|(_, c)| *c)
    }

    /// Failures in the last minute, by class.
    pub fn failures_by_class(&self, now: Duration) -> Vec<(FailureClass, usize)> {
        let mut out: Vec<(FailureClass, usize)> = Vec::new();
        for class in self.failures_in_last_minute(now) {
            match out.iter_mut().find(|(c, _)| *c == class) {
                Some((_, n)) => *n += 1,
                None => out.push((class, 1)),
            }
        }
        out
    }

    /// Time-to-first-token percentile in ms.
    pub fn ttft_ms(&self, p: f64) -> Option<u64> {
        let mut sorted: Vec<u64> = self.ttft.iter().copied().collect();
        sorted.sort_unstable();
        crate::stats::percentile(&sorted, p)
    }

    /// Tokens per second over the last 10 seconds.
    pub fn tokens_per_second(&self, now: Duration) -> f64 {
        let second = now.as_secs();
        let sum: u64 = self
            .tokens
            .iter()
            .filter(|(s, _)| second.saturating_sub(*s) < 10)
            .map(|(_, n)| n)
            .sum();
        sum as f64 / 10.0
    }

    /// The view of upstream `model` on this route, created on first sight;
    /// past [`MAX_MODELS`] the least recently seen one is forgotten.
    fn model(&mut self, model: &str, now: Duration) -> &mut RouteView {
        let at = match self.models.iter().position(|(n, _)| n == model) {
            Some(at) => at,
            None => {
                if self.models.len() >= MAX_MODELS {
                    let oldest = self
                        .models
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, (_, m))| m.touched)
                        .map(|(i, _)| i);
                    if let Some(oldest) = oldest {
                        self.models.remove(oldest);
                    }
                }
                self.models.push((model.to_string(), RouteView::default()));
                self.models.len() - 1
            }
        };
        let view = &mut self.models[at].1;
        view.touched = now;
        view
    }

    /// Whether it serves several upstream models (its table shows a row per model).
    pub fn serves_several_models(&self) -> bool {
        self.models.len() > 1
    }

    /// A route's breaker, seen through its models': open (or half-open) only
    /// when no model's is closed, so one model's open breaker does not paint
    /// the whole route.
    fn derive_breaker(&mut self) {
        let states: Vec<BreakerState> = self.models.iter().filter_map(|(_, m)| m.breaker).collect();
        if states.is_empty() {
            return;
        }
        let closed = states.len() < self.models.len() || states.contains(&BreakerState::Closed);
        self.breaker = Some(if closed {
            BreakerState::Closed
        } else if states.contains(&BreakerState::HalfOpen) {
            BreakerState::HalfOpen
        } else {
            BreakerState::Open
        });
    }

    fn push_ttft(&mut self, ttft_ms: u64) {
        self.ttft.push_back(ttft_ms);
        if self.ttft.len() > TTFT_SAMPLES {
            self.ttft.pop_front();
        }
    }

    fn push_token(&mut self, now: Duration) {
        let second = now.as_secs();
        match self.tokens.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => {
                self.tokens.push_back((second, 1));
                while self
                    .tokens
                    .front()
                    .is_some_and(|(s, _)| second.saturating_sub(*s) >= 10)
                {
                    self.tokens.pop_front();
                }
            }
        }
    }

    fn push_failure(&mut self, now: Duration, class: FailureClass) {
        self.failures.push_back((now, class));
        while self
            .failures
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > Duration::from_secs(60))
        {
            self.failures.pop_front();
        }
        self.attempt_ended(true);
    }

    fn attempt_ended(&mut self, failed: bool) {
        self.recent.push_back(failed);
        if self.recent.len() > 20 {
            self.recent.pop_front();
        }
    }
}

/// Per-second counts for the sparklines.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    /// (second, sessions, handovers, tokens), oldest first.
    buckets: VecDeque<(u64, u64, u64, u64)>,
}

impl Rates {
    fn bump(&mut self, now: Duration, sessions: u64, handovers: u64, tokens: u64) {
        let second = now.as_secs();
        match self.buckets.back_mut() {
            Some(b) if b.0 == second => {
                b.1 += sessions;
                b.2 += handovers;
                b.3 += tokens;
            }
            _ => {
                self.buckets.push_back((second, sessions, handovers, tokens));
                while self.buckets.len() > RATE_SECONDS {
                    self.buckets.pop_front();
                }
            }
        }
    }

    /// The last `RATE_SECONDS` seconds up to `now` (zeros where nothing happened) of one series.
    pub fn series(&self, now: Duration, which: usize) -> Vec<u64> {
        let end = now.as_secs();
        let start = end.saturating_sub(RATE_SECONDS as u64 - 1);
        (start..=end)
            .map(|s| {
                self.buckets.iter().find(|b| b.0 == s).map_or(0, |b| match which {
                    0 => b.1,
                    1 => b.2,
                    _ => b.3,
                })
            })
            .collect()
    }
}

/// Everything the dashboard shows.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Detailed sessions, oldest first.
    pub sessions: VecDeque<SessionView>,
    index: HashMap<Uuid, usize>,
    /// Sessions evicted from detail (older than the detailed window).
    evicted: usize,
    /// Routes in order of first appearance (the colour order).
    pub routes: Vec<(String, RouteView)>,
    /// The handover log, oldest first.
    pub handovers: VecDeque<HandoverRow>,
    /// Rates for the sparklines.
    pub rates: Rates,
    /// Events applied.
    pub events: u64,
    /// Events the source had to drop (slow reader, lagged broadcast).
    pub dropped: u64,
    /// Sessions seen in all.
    pub total_sessions: u64,
    /// Handovers seen in all.
    pub total_handovers: u64,
    /// Sessions that ended failed.
    pub total_failed: u64,
    /// The source's connection status, if it has one.
    pub status: Option<String>,
    /// Where the watched instance shares its state, and whether that store
    /// answers (`None`: not shared, or not said yet).
    pub shared_state: Option<(String, bool)>,
}

/// How a failure reads at a splice point: `⟫ stall 3.0 s after 143 tokens`.
pub fn splice_marker(cause: &FailureKind, tokens: u64) -> String {
    let secs = |d: &Duration| format!("{:.1} s", d.as_secs_f64());
    let what = match cause {
        FailureKind::Stall { after } => format!("stall {}", secs(after)),
        FailureKind::FirstTokenTimeout { after } => format!("no first token in {}", secs(after)),
        FailureKind::ReasoningTimeout { after } => format!("no answer after {} of reasoning", secs(after)),
        FailureKind::TotalTimeout { after } => format!("total deadline {}", secs(after)),
        FailureKind::ServerError { status, .. } => format!("HTTP {status}"),
        FailureKind::RateLimited { .. } => "HTTP 429".to_string(),
        other => other.label().replace('_', " "),
    };
    format!("⟫ {what} after {tokens} tokens")
}

impl Model {
    /// The session with `id`, if it is kept in detail.
    pub fn session(&self, id: &Uuid) -> Option<&SessionView> {
        self.index.get(id).and_then(|i| self.sessions.get(i - self.evicted))
    }

    fn session_mut(&mut self, id: &Uuid) -> Option<&mut SessionView> {
        let evicted = self.evicted;
        self.index.get(id).and_then(|i| self.sessions.get_mut(i - evicted))
    }

    fn route(&mut self, name: &str) -> &mut RouteView {
        let at = match self.routes.iter().position(|(n, _)| n == name) {
            Some(at) => at,
            None => {
                self.routes.push((name.to_string(), RouteView::default()));
                self.routes.len() - 1
            }
        };
        &mut self.routes[at].1
    }

    /// The view of the model session `id`'s latest attempt on `route` went to, if known.
    fn session_model(&mut self, id: &Uuid, route: &str, now: Duration) -> Option<&mut RouteView> {
        let evicted = self.evicted;
        let session = self.index.get(id).and_then(|i| self.sessions.get(i - evicted))?;
        let model = session.models.iter().find(|(r, _)| r == route).map(|(_, m)| m)?;
        let (_, view) = self.routes.iter_mut().find(|(n, _)| n == route)?;
        Some(view.model(model, now))
    }

    /// The colour slot of `route` (its order of appearance).
    pub fn route_slot(&self, route: &str) -> usize {
        self.routes.iter().position(|(n, _)| n == route).unwrap_or(0)
    }

    /// Counts events the source dropped.
    pub fn note_dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    /// Adds a hedge's row to the handover log.
    fn log_hedge(&mut self, id: &Uuid, now: Duration, from: &str, to: &str, reason: String) {
        let mut session = id.simple().to_string();
        session.truncate(8);
        let prefix_bytes = self.session_mut(id).map_or(0, |s| s.bytes as u64);
        self.handovers.push_back(HandoverRow {
            at: now,
            session,
            from: from.to_string(),
            to: to.to_string(),
            class: FailureClass::Business,
            reason,
            prefix_bytes,
            gap_ms: 0,
            during_reasoning: false,
        });
        if self.handovers.len() > HANDOVER_LOG {
            self.handovers.pop_front();
        }
    }

    /// Applies one event seen at dashboard time `now`.
    pub fn apply(&mut self, event: &EngineEvent, now: Duration) {
        self.events += 1;
        let id = event.session;
        match &event.kind {
            EventKind::SessionStarted { ladder, request, .. } => {
                self.total_sessions += 1;
                self.rates.bump(now, 1, 0, 0);
                if self.index.contains_key(&id) {
                    return;
                }
                if self.sessions.len() == DETAILED_SESSIONS {
                    if let Some(old) = self.sessions.pop_front() {
                        self.index.remove(&old.id);
                        self.evicted += 1;
                    }
                }
                self.index.insert(id, self.evicted + self.sessions.len());
                let mut view = SessionView::new(id, ladder.clone(), now);
                view.door = request.as_ref().and_then(|r| r.door);
                self.sessions.push_back(view);
            }
            EventKind::AttemptOpened { route, model, .. } => {
                let r = self.route(route);
                r.attempts += 1;
                r.model(model, now).attempts += 1;
                if let Some(s) = self.session_mut(&id) {
                    match s.models.iter_mut().find(|(r, _)| r == route) {
                        Some((_, m)) => m.clone_from(model),
                        None => s.models.push((route.clone(), model.clone())),
                    }
                }
            }
            // The cache and the safe reply show as routes of their own.
            EventKind::CacheHit { .. } => self.route(crate::rungs::cache::CACHE_ROUTE).attempts += 1,
            EventKind::SafeReply { .. } => self.route(crate::rungs::safe_reply::SAFE_REPLY_ROUTE).attempts += 1,
            EventKind::FirstToken { route, ttft_ms } => {
                self.route(route).push_ttft(*ttft_ms);
                if let Some(m) = self.session_model(&id, route, now) {
                    m.push_ttft(*ttft_ms);
                }
            }
            EventKind::Reasoning { route, text } => {
                if let Some(s) = self.session_mut(&id) {
                    s.phase = s.phase.reasoning();
                    s.push_text(route, text, true);
                }
            }
            EventKind::Upstream { .. }
            | EventKind::Retry { .. }
            | EventKind::RetryDenied { .. }
            // A probe's verdict shows as the breaker change it causes.
            | EventKind::Probe { .. }
            | EventKind::ContextFitted { .. } => {}
            EventKind::SharedState { backend, connected } => self.shared_state = Some((backend.clone(), *connected)),
            EventKind::Breaker { route, model, to, .. } => {
                let r = self.route(route);
                match model {
                    Some(model) => {
                        r.model(model, now).breaker = Some(*to);
                        r.derive_breaker();
                    }
                    // Recorded before health was kept per model: the route's own.
                    None => r.breaker = Some(*to),
                }
            }
            EventKind::Delta { route, text } => {
                self.rates.bump(now, 0, 0, 1);
                self.route(route).push_token(now);
                if let Some(m) = self.session_model(&id, route, now) {
                    m.push_token(now);
                }
                if let Some(s) = self.session_mut(&id) {
                    // Text flowed again without a handover (a retry worked): nothing pending.
                    s.last_failure = None;
                    s.tokens += 1;
                    s.phase = s.phase.text();
                    if s.chain.last() != Some(route) {
                        s.chain.push(route.clone());
                    }
                    s.push_text(route, text, false);
                }
            }
            EventKind::Failure { failure, cause } => {
                self.route(&failure.route).push_failure(now, failure.class);
                if let Some(m) = self.session_model(&id, &failure.route, now) {
                    m.push_failure(now, failure.class);
                }
                if let Some(s) = self.session_mut(&id) {
                    // The first failure since text last flowed is the one the handover answers.
                    s.last_failure
                        .get_or_insert_with(|| splice_marker(cause, failure.tokens));
                }
            }
            EventKind::Handover {
                from,
                to,
                class,
                reason,
                prefix_bytes,
                gap_ms,
            } => {
                self.total_handovers += 1;
                self.rates.bump(now, 0, 1, 0);
                let mut short = id.simple().to_string();
                short.truncate(8);
                // The notice comes before the fallback's first delta: the phase is still the cut attempt's.
                let during_reasoning = self.session(&id).is_some_and(|s| s.phase == Phase::Thinking);
                if let Some(s) = self.session_mut(&id) {
                    s.handovers += 1;
                    s.status = Status::HandedOver;
                    let marker = s.last_failure.take().unwrap_or_else(|| format!("⟫ {reason}"));
                    let during = if during_reasoning { " during reasoning" } else { "" };
                    s.pieces.push(Piece::Splice(format!("{marker}{during} → {to}")));
                }
                self.handovers.push_back(HandoverRow {
                    at: now,
                    session: short,
                    from: from.clone(),
                    to: to.clone(),
                    class: *class,
                    reason: reason.clone(),
                    prefix_bytes: *prefix_bytes,
                    gap_ms: *gap_ms,
                    during_reasoning,
                });
                if self.handovers.len() > HANDOVER_LOG {
                    self.handovers.pop_front();
                }
            }
            // Hedges go to the handover log (as `business`: a latency matter), not the handover count.
            EventKind::Hedge {
                route,
                hedge_route,
                after_ms,
                ..
            } => {
                let reason = format!("hedge: no first token after {after_ms} ms");
                self.log_hedge(&id, now, route, hedge_route, reason);
            }
            EventKind::HedgeWon {
                route,
                by_hedge,
                cancelled: Some(cancelled),
                ..
            } => {
                let reason = if *by_hedge {
                    "hedge won, late attempt cancelled"
                } else {
                    "first token came, hedge cancelled"
                };
                self.log_hedge(&id, now, cancelled, route, reason.to_string());
            }
            // The other side failed: its failure, and any handover, show as such.
            EventKind::HedgeWon { cancelled: None, .. } => {}
            EventKind::Finished { route_chain, .. } => {
                if let Some(last) = route_chain.last() {
                    self.route(last).attempt_ended(false);
                    if let Some(m) = self.session_model(&id, last, now) {
                        m.attempt_ended(false);
                    }
                }
                if let Some(s) = self.session_mut(&id) {
                    s.status = Status::Done;
                    s.ended_at = Some(now);
                }
            }
            EventKind::Failed { .. } => {
                self.total_failed += 1;
                if let Some(s) = self.session_mut(&id) {
                    s.status = Status::Failed;
                    s.ended_at = Some(now);
                }
            }
        }
    }
}
