//! The splicer: one continuous client stream out of a ladder of upstream attempts.
//!
//! States: `Streaming(route) → HandingOver → Streaming(next) → Done | Failed`.
//! Each attempt is a provider stream wrapped in a [`Watchdog`]; a failure goes
//! to [`Ladder::decide`]; a handover builds the continuation request from the
//! text the client already has and streams the new route's answer through the
//! [`OverlapTrim`]. The splicer owns no socket and no clock but tokio's.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::breaker::Transition;
use crate::cache::{CachedAnswer, ResponseCache, CACHE_MODEL, CACHE_ROUTE};
use crate::continuation;
use crate::event::{EngineEvent, EventKind, SessionLog, UpstreamItem};
use crate::failure::{Failure, FailureClass, FailureKind};
use crate::fit::{self, TooSmall};
use crate::health::{Permit, RouteHealth};
use crate::hedge::Side;
use crate::ladder::{AttemptState, Decision, Ladder, Route};
use crate::loopguard::{Loop, LoopGuard};
use crate::oracle::SplitMix;
use crate::overlap::OverlapTrim;
use crate::provider::UpstreamRequest;
use crate::record::spec::{LadderSpec, RequestSpec};
use crate::request::{ChatRequest, Message, Usage};
use crate::rules::Rules;
use crate::safe_reply::{self, SAFE_REPLY_MODEL, SAFE_REPLY_ROUTE};
use crate::watchdog::{Watchdog, Watched};

/// How many events the broadcast keeps for slow subscribers.
pub const EVENT_CAPACITY: usize = 16 * 1024;

/// What the client receives.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientItem {
    /// Answer text.
    Text {
        /// The text.
        text: String,
        /// The route that wrote it.
        route: Arc<str>,
        /// That route's upstream model.
        model: Arc<str>,
    },
    /// Complete tool-call deltas from one attempt. Tool calls are held until
    /// the attempt finishes, so a failure inside one never splices half a JSON
    /// argument: the next route makes the call again from the start.
    ToolCalls {
        /// The deltas, as the upstream sent them.
        deltas: Vec<serde_json::Value>,
        /// The route that wrote them.
        route: Arc<str>,
        /// That route's upstream model.
        model: Arc<str>,
    },
    /// Another route took over; the next text is its.
    Handover(Handover),
    /// The answer is complete. Last item.
    Done(Completion),
    /// The session ended without a complete answer. Last item.
    Failed(SpliceError),
}

/// A handover, as the client may be told of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Handover {
    /// The route that failed.
    pub from: Arc<str>,
    /// The route that continues.
    pub to: Arc<str>,
    /// The failure's class.
    pub class: FailureClass,
    /// The failure's label.
    pub reason: &'static str,
    /// Bytes the client had.
    pub prefix_bytes: u64,
    /// From the failure's detection to this continuation's first byte.
    pub gap: Duration,
}

/// How a complete answer ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The last route's finish reason.
    pub finish_reason: String,
    /// Token counts of the attempts that contributed text.
    pub usage: Usage,
    /// The routes that wrote the answer, in order.
    pub route_chain: Vec<String>,
    /// Every failed attempt on the way.
    pub failures: Vec<Failure>,
}

/// Why a session ended without a complete answer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SpliceError {
    /// A provider refused on policy grounds; its reason is passed on.
    #[error("refused by {route}: {message}")]
    Refused {
        /// The refusing route.
        route: String,
        /// The provider's reason.
        message: String,
        /// Every failed attempt.
        failures: Vec<Failure>,
        /// Bytes the client had received.
        emitted_bytes: u64,
    },
    /// Every route failed.
    #[error("every route failed: {}", list(failures))]
    Exhausted {
        /// Every failed attempt.
        failures: Vec<Failure>,
        /// Bytes the client had received.
        emitted_bytes: u64,
    },
}

fn list(failures: &[Failure]) -> String {
    if failures.is_empty() {
        return "the ladder has no routes".to_string();
    }
    failures.iter().map(Failure::to_string).collect::<Vec<_>>().join("; ")
}

/// The client-side stream of one session.
pub type SpliceStream = Pin<Box<dyn Stream<Item = ClientItem> + Send>>;

/// Runs sessions along one ladder and publishes their events.
#[derive(Clone, Debug)]
pub struct Splicer {
    ladder: Arc<Ladder>,
    events: broadcast::Sender<EngineEvent>,
}

/// A finished session, collected.
#[derive(Clone, Debug, PartialEq)]
pub struct Collected {
    /// Everything the client received, concatenated.
    pub text: String,
    /// Tool-call deltas the client received.
    pub tool_calls: Vec<serde_json::Value>,
    /// The handovers, in order.
    pub handovers: Vec<Handover>,
    /// How it ended.
    pub outcome: Result<Completion, SpliceError>,
}

impl Splicer {
    /// A splicer over `ladder` with its own event broadcast.
    pub fn new(ladder: Ladder) -> Self {
        Splicer::with_events(ladder, broadcast::channel(EVENT_CAPACITY).0)
    }

    /// A splicer publishing to an existing broadcast (several ladders, one feed).
    pub fn with_events(ladder: Ladder, events: broadcast::Sender<EngineEvent>) -> Self {
        Splicer {
            ladder: Arc::new(ladder),
            events,
        }
    }

    /// A new subscription to the event feed.
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }

    /// The ladder it runs.
    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    /// Runs `request` to completion and collects what the client would receive.
    pub async fn collect(&self, request: ChatRequest) -> Collected {
        let mut stream = self.splice(request);
        let mut text = String::new();
        let mut handovers = Vec::new();
        let mut tool_calls = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                ClientItem::Text { text: t, .. } => text.push_str(&t),
                ClientItem::ToolCalls { deltas, .. } => tool_calls.extend(deltas),
                ClientItem::Handover(h) => handovers.push(h),
                ClientItem::Done(c) => {
                    return Collected {
                        text,
                        tool_calls,
                        handovers,
                        outcome: Ok(c),
                    }
                }
                ClientItem::Failed(e) => {
                    return Collected {
                        text,
                        tool_calls,
                        handovers,
                        outcome: Err(e),
                    }
                }
            }
        }
        let failures = Vec::new();
        let emitted_bytes = text.len() as u64;
        Collected {
            text,
            tool_calls,
            handovers,
            outcome: Err(SpliceError::Exhausted {
                failures,
                emitted_bytes,
            }),
        }
    }

    /// The client stream for `request`. Dropping it cancels the upstream.
    pub fn splice(&self, request: ChatRequest) -> SpliceStream {
        let ladder = self.ladder.clone();
        let log = SessionLog::new(request.session, self.events.clone());
        Box::pin(async_stream::stream! {
            if log.listened() {
                log.emit(EventKind::SessionStarted {
                    ladder: ladder.name.clone(),
                    messages: request.messages.len(),
                    spec: Some(Box::new(LadderSpec::of(&ladder))),
                    request: Some(Box::new(RequestSpec::of(&request))),
                });
            }
            let mut session = Session::new(&request, log, ladder.cache.is_some());
            if let Some(items) = session.cached(&ladder, false) {
                for item in items {
                    yield item;
                }
                return;
            }
            let Some(first) = ladder.routes.first() else {
                for item in session.last_resort(&ladder) {
                    yield item;
                }
                return;
            };
            let mut state = AttemptState { route: 0, retries: 0, mode: first.health.continuation(first.continuation), produced_text: false };
            loop {
                let mut route = &ladder.routes[state.route];
                let mut attempt = session.open(route, &state, &ladder.instruction, &ladder.rules);
                let mut race = Race::arm(&ladder, route, &state, &attempt);
                let mut guard = ladder.loop_guard.as_ref().map(|c| LoopGuard::new(c, session.emitted.len()));
                let ended = loop {
                    // A hedge race may switch the attempt (and its route and state) to the hedge.
                    let next = session.next_item(&ladder, &mut route, &mut attempt, &mut state, &mut race).await;
                    session.upstream(&attempt, next.as_ref());
                    match next {
                        Some(Watched::Text(text)) => {
                            let out = attempt.text(&session, text);
                            for item in session.deliver(&attempt, out) {
                                yield item;
                            }
                            if let Some(found) = guard.as_mut().and_then(|g| g.observe(&session.emitted)) {
                                let marker = ladder.loop_guard.as_ref().map_or("", |c| c.marker.as_str());
                                if let Some(item) = session.cut_loop(&attempt, &found, marker) {
                                    yield item;
                                }
                                let period = u32::try_from(found.period).unwrap_or(u32::MAX);
                                break Err(FailureKind::Loop { period, repeats: found.repeats });
                            }
                        }
                        Some(Watched::ToolCalls(calls)) => {
                            attempt.tokens += 1;
                            attempt.tool_calls.extend(calls);
                        }
                        Some(Watched::Usage(usage)) => attempt.usage = Some(usage),
                        Some(Watched::Finished(reason)) => break Ok(reason),
                        Some(Watched::Failed(kind)) => break Err(kind),
                        None => break Err(FailureKind::Truncated { detail: None }),
                    }
                };
                session.settle(route, &mut attempt, ended.as_ref().err());
                match ended {
                    Ok(reason) => {
                        let rest = attempt.trim.finish();
                        for item in session.deliver(&attempt, rest) {
                            yield item;
                        }
                        if !attempt.tool_calls.is_empty() {
                            let deltas = std::mem::take(&mut attempt.tool_calls);
                            for item in session.deliver_tool_calls(&attempt, deltas) {
                                yield item;
                            }
                        }
                        // A fallback that had nothing left to add still took over: it confirmed the end.
                        if session.pending.is_some() {
                            if let Some(item) = session.arrive(&attempt.route) {
                                yield item;
                            }
                        }
                        session.account(&attempt);
                        session.remember(&ladder, &reason);
                        yield session.finish(reason);
                        return;
                    }
                    Err(kind) => {
                        if let FailureKind::FirstTokenTimeout { after } = kind {
                            route.health.record_ttft(after);
                        }
                        session.account(&attempt);
                        state.produced_text = attempt.tokens > 0;
                        let jitter = session.rng.below(1 << 20) as f64 / f64::from(1u32 << 20);
                        let mut decision = ladder.decide(&kind, &state, jitter);
                        if matches!(decision, Decision::Retry { .. }) && !route.health.allow_retry() {
                            // The route's retry budget is spent: hand over instead of adding load.
                            session.log.emit(EventKind::RetryDenied { route: route.name.to_string() });
                            let spent = AttemptState { retries: u32::MAX, ..state };
                            decision = ladder.decide(&kind, &spent, jitter);
                        }
                        session.record_failure(route, &kind, attempt.tokens);
                        match decision {
                            Decision::Retry { delay } => {
                                session.log.emit(EventKind::Retry { route: route.name.to_string(), delay_ms: delay.as_millis() as u64 });
                                tokio::time::sleep(delay).await;
                                state.retries += 1;
                            }
                            Decision::SwitchToInstruct => {
                                route.health.remember_no_prefill();
                                state.mode = continuation::ContinuationMode::Instruct;
                            }
                            Decision::HandOver { to } => {
                                session.pending.get_or_insert(Pending { from: route.name.clone(), reason: kind.label(), class: kind.class(), at: Instant::now() });
                                let next = &ladder.routes[to];
                                state = AttemptState { route: to, retries: 0, mode: next.health.continuation(next.continuation), produced_text: false };
                            }
                            Decision::Refuse => {
                                let failures = std::mem::take(&mut session.failures);
                                let error = SpliceError::Refused { route: route.name.to_string(), message: refusal(&kind), failures, emitted_bytes: session.sent };
                                yield session.fail(error);
                                return;
                            }
                            Decision::Exhausted => {
                                session.pending.get_or_insert(Pending { from: route.name.clone(), reason: kind.label(), class: kind.class(), at: Instant::now() });
                                for item in session.last_resort(&ladder) {
                                    yield item;
                                }
                                return;
                            }
                        }
                    }
                }
            }
        })
    }
}

/// The stream of an attempt skipped without a request (an open breaker, a
/// business rule): it fails at once with `kind`, as a recorded failure of its
/// own, so a replay takes the same path.
fn fails_at_once(kind: FailureKind) -> crate::provider::ChunkStream {
    Box::pin(futures::stream::once(async move { Err(kind) }))
}

fn refusal(kind: &FailureKind) -> String {
    match kind {
        FailureKind::ContentPolicy { message } => message.clone(),
        other => other.to_string(),
    }
}

/// Hedging of the attempt the ladder opened (see [`crate::hedge`]).
enum Race {
    /// Not hedged (hedging off, no next route, no delay known, or the race is over).
    Off,
    /// The hedge starts at `at` unless content comes first.
    Armed {
        /// When.
        at: Instant,
        /// Since the attempt opened, as recorded.
        after: Duration,
        /// The hedge's route index.
        to: usize,
    },
    /// Both run; the first content decides.
    Running {
        /// The hedge attempt.
        hedge: Box<Attempt>,
        /// Its state, which becomes the session's if it goes on.
        state: AttemptState,
    },
}

impl Race {
    /// The race for `attempt`, just opened on `route` as `state` says.
    fn arm(ladder: &Ladder, route: &Route, state: &AttemptState, attempt: &Attempt) -> Race {
        let Some(policy) = &ladder.hedge else {
            return Race::Off;
        };
        let Some(to) = ladder.hedge_route(state.route) else {
            return Race::Off;
        };
        match policy.delay_for(attempt.number, &route.health) {
            Some(after) => Race::Armed {
                at: attempt.opened + after,
                after,
                to,
            },
            None => Race::Off,
        }
    }
}

/// A failure waiting for the next route's first byte, to become a handover.
struct Pending {
    from: Arc<str>,
    reason: &'static str,
    class: FailureClass,
    at: Instant,
}

/// The zero, one or two items one delivery yields.
type Delivered = std::iter::Flatten<std::array::IntoIter<Option<ClientItem>, 2>>;

/// One session's state between attempts.
struct Session<'r> {
    request: &'r ChatRequest,
    log: SessionLog,
    /// The prefix every continuation builds on: everything the client has
    /// received, except a loop cut out of it (and the marker that ended it).
    emitted: String,
    /// Bytes the client has received.
    sent: u64,
    chain: Vec<String>,
    failures: Vec<Failure>,
    usage: Usage,
    pending: Option<Pending>,
    attempts: u32,
    rng: SplitMix,
    /// Tool-call deltas sent to the client, for the `Finished` event (only kept when someone listens).
    tool_calls: Vec<serde_json::Value>,
    /// Whether any tool call reached the client (such an answer is not cached).
    tool_calls_sent: bool,
    /// The text deltas as sent, for the cache (only kept when the ladder has one).
    deltas: Option<Vec<String>>,
}

/// One upstream attempt.
struct Attempt {
    /// Its number in the session, from 1.
    number: u32,
    /// The breaker's permission; `None` when the breaker skipped the route.
    permit: Option<Permit>,
    watchdog: Watchdog,
    trim: OverlapTrim,
    opened: Instant,
    tokens: u64,
    contributed: bool,
    usage: Option<Usage>,
    route: Arc<str>,
    /// The upstream model actually asked for (`{model}` resolved).
    model: Arc<str>,
    /// Tool-call deltas held until the attempt finishes.
    tool_calls: Vec<serde_json::Value>,
    /// The route's shared health, which learns its first-token times.
    health: Arc<RouteHealth>,
}

impl Attempt {
    /// Feeds one upstream delta through the overlap trim.
    fn text(&mut self, session: &Session<'_>, text: String) -> String {
        self.tokens += 1;
        if self.tokens == 1 {
            let ttft = self.opened.elapsed();
            self.health.record_ttft(ttft);
            session.log.emit(EventKind::FirstToken {
                route: self.route.to_string(),
                ttft_ms: ttft.as_millis() as u64,
            });
        }
        let out = self.trim.push(text);
        self.contributed |= !out.is_empty();
        out
    }
}

impl<'r> Session<'r> {
    fn new(request: &'r ChatRequest, log: SessionLog, cached: bool) -> Self {
        let (hi, lo) = request.session.as_u64_pair();
        Session {
            request,
            log,
            emitted: String::new(),
            sent: 0,
            chain: Vec::new(),
            failures: Vec::new(),
            usage: Usage::default(),
            pending: None,
            attempts: 0,
            rng: SplitMix::new(hi ^ lo),
            tool_calls: Vec::new(),
            tool_calls_sent: false,
            deltas: cached.then(Vec::new),
        }
    }

    fn open(&mut self, route: &Route, state: &AttemptState, instruction: &str, rules: &Rules) -> Attempt {
        self.attempts += 1;
        let messages = continuation::messages(&self.request.messages, &self.emitted, state.mode, instruction);
        let (messages, too_small) = self.fit(route, messages);
        let model: Arc<str> = match (&*route.model, &self.request.model) {
            (crate::config::PASS_THROUGH_MODEL, Some(asked)) => asked.as_str().into(),
            _ => route.model.clone(),
        };
        let upstream = UpstreamRequest {
            model: model.to_string(),
            messages,
            params: self.request.params.clone(),
            continue_final_message: route.continue_final_message
                && state.mode == continuation::ContinuationMode::Prefill
                && !self.emitted.is_empty(),
        };
        // Decided once, here, and recorded: a replay re-drives with these, not with a history it lacks.
        let deadlines = crate::deadline::decide(route, &upstream.messages);
        if self.log.listened() {
            self.log.emit(EventKind::AttemptOpened {
                route: route.name.to_string(),
                model: model.to_string(),
                attempt: self.attempts,
                mode: state.mode,
                prefix_bytes: self.emitted.len() as u64,
                request: upstream.clone(),
                deadlines: Some(Box::new(deadlines)),
            });
        }
        let (permit, stream) = if let Some(broken) = too_small.or_else(|| rules.check(route, &upstream)) {
            (None, fails_at_once(broken))
        } else {
            match route.health.admit(state.retries == 0) {
                Some((permit, transition)) => {
                    self.breaker_changed(route, transition);
                    (Some(permit), route.provider.stream(upstream))
                }
                None => (None, fails_at_once(FailureKind::CircuitOpen)),
            }
        };
        Attempt {
            number: self.attempts,
            permit,
            watchdog: crate::deadline::watchdog(route, stream, deadlines),
            trim: OverlapTrim::new(&self.emitted),
            opened: Instant::now(),
            tokens: 0,
            contributed: false,
            usage: None,
            route: route.name.clone(),
            model,
            tool_calls: Vec::new(),
            health: route.health.clone(),
        }
    }

    /// The next item of the current attempt, racing it against a hedge while `race`
    /// says so; when the hedge goes on, `route`, `attempt` and `state` become its.
    async fn next_item<'l>(
        &mut self,
        ladder: &'l Ladder,
        route: &mut &'l Route,
        attempt: &mut Attempt,
        state: &mut AttemptState,
        race: &mut Race,
    ) -> Option<Watched> {
        loop {
            match std::mem::replace(race, Race::Off) {
                Race::Off => return attempt.watchdog.next().await,
                // Content already came: nothing left to hedge.
                Race::Armed { .. } if attempt.tokens > 0 => {}
                Race::Armed { at, after, to } => {
                    tokio::select! {
                        // The attempt first: content ready at the deadline needs no hedge.
                        biased;
                        next = attempt.watchdog.next() => {
                            *race = Race::Armed { at, after, to };
                            return next;
                        }
                        () = tokio::time::sleep_until(at) => {
                            *race = self.start_hedge(ladder, route, attempt, after, to);
                        }
                    }
                }
                Race::Running {
                    mut hedge,
                    state: hedge_state,
                } => {
                    let (side, next) = crate::hedge::race(&mut attempt.watchdog, &mut hedge.watchdog).await;
                    match (side, next) {
                        (Side::Primary, Some(Watched::Usage(usage))) => {
                            *race = Race::Running {
                                hedge,
                                state: hedge_state,
                            };
                            return Some(Watched::Usage(usage));
                        }
                        (Side::Hedge, Some(Watched::Usage(usage))) => {
                            self.upstream(&hedge, Some(&Watched::Usage(usage)));
                            hedge.usage = Some(usage);
                            *race = Race::Running {
                                hedge,
                                state: hedge_state,
                            };
                        }
                        (Side::Primary, Some(Watched::Failed(kind))) if kind.class() != FailureClass::Policy => {
                            // The hedge is already the handover the failure calls for.
                            let mut failed = std::mem::replace(attempt, *hedge);
                            self.race_lost(route, &mut failed, &kind);
                            self.pending.get_or_insert(Pending {
                                from: route.name.clone(),
                                reason: kind.label(),
                                class: kind.class(),
                                at: Instant::now(),
                            });
                            *route = &ladder.routes[hedge_state.route];
                            *state = hedge_state;
                            self.hedge_won(ladder, attempt, true, None);
                        }
                        (Side::Primary, None) => {
                            // A watchdog yields `None` only after its end, which ends the race first.
                            return None;
                        }
                        (Side::Primary, next) => {
                            // Content, a finish or a refusal: the hedge is not needed.
                            self.hedge_won(ladder, attempt, false, Some(&hedge));
                            return next;
                        }
                        (Side::Hedge, Some(Watched::Failed(kind))) => {
                            let hedge_route = &ladder.routes[hedge_state.route];
                            self.race_lost(hedge_route, &mut hedge, &kind);
                            self.hedge_won(ladder, attempt, false, None);
                        }
                        (Side::Hedge, None) => {}
                        (Side::Hedge, next) => {
                            let cancelled = std::mem::replace(attempt, *hedge);
                            *route = &ladder.routes[hedge_state.route];
                            *state = hedge_state;
                            self.hedge_won(ladder, attempt, true, Some(&cancelled));
                            // Dropping it frees its breaker permit without counting a failure.
                            drop(cancelled);
                            return next;
                        }
                    }
                }
            }
        }
    }

    /// Starts the hedge of `attempt` on route `to`, `after` its opening.
    fn start_hedge(&mut self, ladder: &Ladder, route: &Route, attempt: &Attempt, after: Duration, to: usize) -> Race {
        let next = &ladder.routes[to];
        let state = AttemptState {
            route: to,
            retries: 0,
            mode: next.health.continuation(next.continuation),
            produced_text: false,
        };
        self.log.emit(EventKind::Hedge {
            route: route.name.to_string(),
            attempt: attempt.number,
            hedge_route: next.name.to_string(),
            hedge_attempt: self.attempts + 1,
            after_ms: after.as_millis() as u64,
        });
        let hedge = self.open(next, &state, &ladder.instruction, &ladder.rules);
        Race::Running {
            hedge: Box::new(hedge),
            state,
        }
    }

    /// One side of a race failed before any content: recorded like any failed attempt.
    fn race_lost(&mut self, route: &Route, attempt: &mut Attempt, kind: &FailureKind) {
        self.settle(route, attempt, Some(kind));
        if let FailureKind::FirstTokenTimeout { after } = kind {
            route.health.record_ttft(*after);
        }
        self.record_failure(route, kind, attempt.tokens);
    }

    /// A race ended: `winner` goes on; `cancelled` was still running.
    fn hedge_won(&self, ladder: &Ladder, winner: &Attempt, by_hedge: bool, cancelled: Option<&Attempt>) {
        if let Some(policy) = &ladder.hedge {
            policy.count(crate::hedge::Outcome::of(by_hedge, cancelled.is_some()));
        }
        self.log.emit(EventKind::HedgeWon {
            route: winner.route.to_string(),
            attempt: winner.number,
            by_hedge,
            cancelled: cancelled.map(|c| c.route.to_string()),
            cancelled_attempt: cancelled.map(|c| c.number),
        });
    }

    /// The client items for `text` from `attempt`: a handover notice first if one is pending.
    fn deliver(&mut self, attempt: &Attempt, text: String) -> Delivered {
        self.deliver_as(&attempt.route, &attempt.model, text)
    }

    /// The client items for `text` written by `route` as `model`.
    fn deliver_as(&mut self, route: &Arc<str>, model: &Arc<str>, text: String) -> Delivered {
        if text.is_empty() {
            return [None, None].into_iter().flatten();
        }
        let handover = self.arrive(route);
        if self.log.listened() {
            self.log.emit(EventKind::Delta {
                route: route.to_string(),
                text: text.clone(),
            });
        }
        self.emitted.push_str(&text);
        self.sent += text.len() as u64;
        if let Some(deltas) = &mut self.deltas {
            deltas.push(text.clone());
        }
        let item = ClientItem::Text {
            text,
            route: route.clone(),
            model: model.clone(),
        };
        [handover, Some(item)].into_iter().flatten()
    }

    /// The client items for a finished attempt's tool calls.
    fn deliver_tool_calls(&mut self, attempt: &Attempt, deltas: Vec<serde_json::Value>) -> Delivered {
        if self.log.listened() {
            self.tool_calls.extend(deltas.iter().cloned());
        }
        let item = ClientItem::ToolCalls {
            deltas,
            route: attempt.route.clone(),
            model: attempt.model.clone(),
        };
        self.tool_calls_sent = true;
        [self.arrive(&attempt.route), Some(item)].into_iter().flatten()
    }

    /// `attempt` is about to reach the client: completes a pending handover and extends the route chain.
    fn arrive(&mut self, route: &Arc<str>) -> Option<ClientItem> {
        if self.chain.last().map(String::as_str) != Some(&**route) {
            self.chain.push(route.to_string());
        }
        let p = self.pending.take()?;
        let handover = Handover {
            from: p.from,
            to: route.clone(),
            class: p.class,
            reason: p.reason,
            prefix_bytes: self.sent,
            gap: p.at.elapsed(),
        };
        self.log.emit(EventKind::Handover {
            from: handover.from.to_string(),
            to: handover.to.to_string(),
            class: handover.class,
            reason: handover.reason.to_string(),
            prefix_bytes: handover.prefix_bytes,
            gap_ms: handover.gap.as_millis() as u64,
        });
        Some(ClientItem::Handover(handover))
    }

    fn account(&mut self, attempt: &Attempt) {
        if attempt.contributed {
            // An attempt cut off mid-stream reports no usage: count its deltas.
            self.usage += attempt.usage.unwrap_or(Usage {
                prompt_tokens: 0,
                completion_tokens: attempt.tokens,
            });
        }
    }

    /// Publishes what the upstream sent (failures are published with their decision).
    fn upstream(&self, attempt: &Attempt, item: Option<&Watched>) {
        if !self.log.listened() {
            return;
        }
        let item = match item {
            Some(Watched::Text(t)) => UpstreamItem::Text(t.clone()),
            Some(Watched::ToolCalls(c)) => UpstreamItem::ToolCalls(c.clone()),
            Some(Watched::Usage(u)) => UpstreamItem::Usage(*u),
            Some(Watched::Finished(r)) => UpstreamItem::Finished(r.clone()),
            Some(Watched::Failed(_)) | None => return,
        };
        self.log.emit(EventKind::Upstream {
            attempt: attempt.number,
            item,
        });
    }

    /// Settles the attempt's breaker permit with its outcome.
    fn settle(&self, route: &Route, attempt: &mut Attempt, failure: Option<&FailureKind>) {
        if let Some(permit) = attempt.permit.take() {
            let transition = permit.settle(failure);
            self.breaker_changed(route, transition);
        }
    }

    fn breaker_changed(&self, route: &Route, transition: Option<Transition>) {
        if let Some(t) = transition {
            tracing::info!(route = %route.name, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker");
            self.log.emit(EventKind::Breaker {
                route: route.name.to_string(),
                from: t.from,
                to: t.to,
            });
        }
    }

    fn record_failure(&mut self, route: &Route, kind: &FailureKind, tokens: u64) {
        let failure = Failure::new(kind, &route.name, tokens, self.sent, self.log.t_ms());
        self.log.emit(EventKind::Failure {
            failure: failure.clone(),
            cause: kind.clone(),
        });
        self.failures.push(failure);
    }

    fn finish(&mut self, finish_reason: String) -> ClientItem {
        self.log.emit(EventKind::Finished {
            finish_reason: finish_reason.clone(),
            route_chain: self.chain.clone(),
            bytes: self.sent,
            usage: self.usage,
            tool_calls: std::mem::take(&mut self.tool_calls),
        });
        ClientItem::Done(Completion {
            finish_reason,
            usage: self.usage,
            route_chain: std::mem::take(&mut self.chain),
            failures: std::mem::take(&mut self.failures),
        })
    }

    /// A cached answer, as the first rung (`last_resort` false) or after every
    /// route failed: it must continue what the client already has.
    fn cached(&mut self, ladder: &Ladder, last_resort: bool) -> Option<Vec<ClientItem>> {
        let rung = ladder.cache.as_ref()?;
        let wanted = if last_resort {
            rung.uses.last_resort()
        } else {
            rung.uses.first()
        };
        if !wanted {
            return None;
        }
        let hit = rung.store.get(&ResponseCache::key(self.request))?;
        let rest = hit.answer.text().strip_prefix(self.emitted.as_str())?.to_string();
        let sent = self.emitted.len();
        self.log.emit(EventKind::CacheHit {
            age_ms: hit.age.as_millis() as u64,
            last_resort,
            bytes: rest.len() as u64,
        });
        let (route, model): (Arc<str>, Arc<str>) = (CACHE_ROUTE.into(), CACHE_MODEL.into());
        let mut items = Vec::new();
        // The stored deltas, minus what the client already has, keep their live chunking.
        let mut skip = sent;
        for delta in &hit.answer.deltas {
            let text = if skip >= delta.len() {
                skip -= delta.len();
                continue;
            } else {
                let text = delta.get(skip..).unwrap_or_default().to_string();
                skip = 0;
                text
            };
            items.extend(self.deliver_as(&route, &model, text));
        }
        if self.pending.is_some() {
            items.extend(self.arrive(&route));
        }
        items.push(self.finish(hit.answer.finish_reason.clone()));
        Some(items)
    }

    /// Every route failed: a cached answer that continues the client's text,
    /// else the safe reply, else the failure.
    fn last_resort(&mut self, ladder: &Ladder) -> Vec<ClientItem> {
        if let Some(items) = self.cached(ladder, true) {
            return items;
        }
        let Some(safe) = &ladder.safe_reply else {
            let failures = std::mem::take(&mut self.failures);
            let error = SpliceError::Exhausted {
                failures,
                emitted_bytes: self.sent,
            };
            return vec![self.fail(error)];
        };
        // What the client saw decides, not the prefix: after a loop cut back to
        // nothing, the client still has text that the note must close.
        let text = safe.text_after(self.sent as usize);
        self.log.emit(EventKind::SafeReply {
            partial: self.sent > 0,
            bytes: text.len() as u64,
        });
        let (route, model): (Arc<str>, Arc<str>) = (SAFE_REPLY_ROUTE.into(), SAFE_REPLY_MODEL.into());
        let mut items = Vec::new();
        for delta in safe_reply::deltas(text) {
            items.extend(self.deliver_as(&route, &model, delta));
        }
        if self.pending.is_some() {
            items.extend(self.arrive(&route));
        }
        // Never cached: it is not an answer.
        self.deltas = None;
        items.push(self.finish("stop".to_string()));
        items
    }

    /// Stores a complete text answer in the ladder's cache.
    fn remember(&mut self, ladder: &Ladder, finish_reason: &str) {
        let (Some(rung), Some(deltas)) = (&ladder.cache, self.deltas.take()) else {
            return;
        };
        if self.tool_calls_sent || deltas.is_empty() {
            return;
        }
        rung.store.put(
            ResponseCache::key(self.request),
            CachedAnswer {
                deltas,
                finish_reason: finish_reason.to_string(),
            },
        );
    }

    /// `messages` fitted to `route`'s context window (announcing what was
    /// dropped); unchanged, with the failure that skips the route, if they cannot fit.
    fn fit(&self, route: &Route, messages: Vec<Message>) -> (Vec<Message>, Option<FailureKind>) {
        let reserve = fit::reserve(&self.request.params);
        let protected = fit::protected_from(&self.request.messages);
        match fit::fit(&messages, protected, route.context_tokens, reserve) {
            Ok(plan) if plan.drops() => {
                self.log.emit(EventKind::ContextFitted {
                    route: route.name.to_string(),
                    dropped_messages: plan.dropped_messages,
                    dropped_tokens: plan.dropped_tokens,
                    kept_tokens: plan.kept_tokens,
                    reserve,
                    window: route.context_tokens,
                });
                (plan.apply(messages), None)
            }
            Ok(_) => (messages, None),
            Err(TooSmall { needed, window }) => (messages, Some(FailureKind::ContextTooSmall { needed, window })),
        }
    }

    /// Cuts a loop out of the prefix, back to where it began; the client, which
    /// already has the looped text, gets `marker` where that text ends.
    fn cut_loop(&mut self, attempt: &Attempt, found: &Loop, marker: &str) -> Option<ClientItem> {
        if self.emitted.is_char_boundary(found.start) {
            self.emitted.truncate(found.start);
        }
        // What the client got is not an answer to serve again.
        self.deltas = None;
        if marker.is_empty() {
            return None;
        }
        self.log.emit(EventKind::Delta {
            route: attempt.route.to_string(),
            text: marker.to_string(),
        });
        self.sent += marker.len() as u64;
        Some(ClientItem::Text {
            text: marker.to_string(),
            route: attempt.route.clone(),
            model: attempt.model.clone(),
        })
    }

    fn fail(&mut self, error: SpliceError) -> ClientItem {
        self.log.emit(EventKind::Failed {
            error: error.to_string(),
            bytes: self.sent,
        });
        ClientItem::Failed(error)
    }
}
