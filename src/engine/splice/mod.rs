//! The splicer: one continuous client stream out of a ladder of upstream attempts.
//!
//! Its decisions are a pure state machine (`machine`): `Opening` (an attempt
//! is open, no token yet) `→ Streaming → Done`, or on a failure `→ Deciding`,
//! then by the ladder's decision `→ Waiting` (a retry, a return to a deferred
//! route, a switch to instruct) `→ Opening`, `→ HandingOver → Opening` on the
//! next route, `→ Failed` (a refusal, local resources) or `→ Exhausted` (the
//! cache and safe-reply rungs answer, or the session fails). Every state has
//! the session's phase: `Thinking` until the client has answer text (a
//! handover starts the answer afresh, behind the reasoning seam marker),
//! `Answering` after (a handover continues the text).
//!
//! The thin async driver here executes the machine's actions: each attempt is
//! a provider stream wrapped in a [`Watchdog`](crate::engine::watchdog::Watchdog) stream (raced against a hedge while
//! `race` says so); a failure goes to [`Ladder::decide_within`], once, within
//! the routes' retry budgets; a handover builds the continuation request from
//! the text the client already has and streams the new route's answer through
//! the [`OverlapTrim`]. The splicer owns no socket and no clock but tokio's.
//!
//! A session's IO steps are in `session`, the hedge race in `race`, and the
//! cache and safe-reply rungs in `rungs`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

use crate::continuation;
use crate::engine::event::{EventBus, EventKind, SessionLog, Subscriber, UpstreamItem};
use crate::engine::watchdog::{Watched, WatchedStream};
use crate::failure::{Failure, FailureClass, FailureKind};
use crate::policy::breaker::Transition;
use crate::policy::fit::{self, TooSmall};
use crate::policy::health::{ModelHealth, Permit};
use crate::policy::ladder::{AttemptState, Decision, Deferred, Known, Ladder, Route, RouteSet};
use crate::policy::loopguard::{Loop, LoopGuard};
use crate::policy::overlap::{Evidence, OverlapTrim, Proof};
use crate::policy::reasoning::Placement;
use crate::policy::rules::Rules;
use crate::provider::{ReasoningField, UpstreamRequest};
use crate::request::{ChatRequest, Message, Usage};
use crate::rng::SplitMix;
use crate::rungs::cache::{CachedAnswer, ResponseCache, CACHE_MODEL, CACHE_ROUTE};
use crate::rungs::safe_reply::{self, SAFE_REPLY_MODEL, SAFE_REPLY_ROUTE};
use crate::spec::{LadderSpec, RequestSpec};
use crate::usage::{self, AttemptTokens, Tally};

mod machine;
mod race;
mod rungs;
mod session;

use machine::{Action, Event, Machine};
use race::Race;

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
    /// Reasoning: the model thinking, on its own channel, never part of the
    /// answer. A handover during reasoning puts the ladder's seam marker here
    /// (with the field of the reasoning it cuts) before the next route's.
    Reasoning {
        /// The text.
        text: String,
        /// The field the upstream sent it in, so the client gets it the same way.
        field: ReasoningField,
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
    /// Every attempt's tokens, with what they did not report.
    pub tokens: Tally,
    /// The routes that wrote the answer, in order.
    pub route_chain: Vec<String>,
    /// Every failed attempt on the way.
    pub failures: Vec<Failure>,
}

impl Completion {
    /// Token counts the upstreams reported, summed over every attempt (cut
    /// ones included); `None` when none reported any.
    pub fn usage(&self) -> Option<Usage> {
        self.tokens.reported()
    }
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
        /// Every attempt's tokens (a refused or cut attempt may be billed too).
        tokens: Tally,
    },
    /// baton ran out of its own resources (descriptors, memory, local ports)
    /// opening an attempt; no route was blamed and none other was tried.
    #[error("baton is out of local resources ({resource}); retry shortly")]
    Local {
        /// Which resource ran out (see [`FailureKind::LocalResources`]).
        resource: String,
        /// Every failed attempt, the local one last.
        failures: Vec<Failure>,
        /// Bytes the client had received.
        emitted_bytes: u64,
        /// Every attempt's tokens (a cut attempt is billed too).
        tokens: Tally,
    },
    /// Every route failed.
    #[error("every route failed: {}", list(failures))]
    Exhausted {
        /// Every failed attempt.
        failures: Vec<Failure>,
        /// Bytes the client had received.
        emitted_bytes: u64,
        /// Every attempt's tokens (a cut attempt is billed too).
        tokens: Tally,
    },
}

impl SpliceError {
    /// Every attempt's tokens.
    pub fn tokens(&self) -> &Tally {
        match self {
            SpliceError::Refused { tokens, .. }
            | SpliceError::Exhausted { tokens, .. }
            | SpliceError::Local { tokens, .. } => tokens,
        }
    }
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
    events: EventBus,
}

/// A finished session, collected.
#[derive(Clone, Debug, PartialEq)]
pub struct Collected {
    /// Everything the client received, concatenated.
    pub text: String,
    /// The reasoning the client received (seam markers included), concatenated.
    pub reasoning: String,
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
        Splicer::with_events(ladder, EventBus::new(EVENT_CAPACITY))
    }

    /// A splicer publishing to an existing broadcast (several ladders, one feed).
    pub fn with_events(ladder: Ladder, events: EventBus) -> Self {
        Splicer {
            ladder: Arc::new(ladder),
            events,
        }
    }

    /// A new subscription to the event feed (counted: events are built while one lives).
    pub fn subscribe(&self) -> Subscriber {
        self.events.subscribe()
    }

    /// The feed it publishes to.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Starts baton's own probes of the ladder's routes with `probe = "active"`,
    /// published to this splicer's feed; they stop when it is dropped (`None`: no such route).
    pub fn start_prober(&self) -> Option<crate::engine::probe::Prober> {
        crate::engine::probe::Prober::for_ladders([&*self.ladder], self.events.clone())
    }

    /// The ladder it runs.
    pub fn ladder(&self) -> &Ladder {
        &self.ladder
    }

    /// Runs `request` to completion and collects what the client would receive.
    pub async fn collect(&self, request: ChatRequest) -> Collected {
        let mut stream = self.splice(request);
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut handovers = Vec::new();
        let mut tool_calls = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                ClientItem::Text { text: t, .. } => text.push_str(&t),
                ClientItem::Reasoning { text: t, .. } => reasoning.push_str(&t),
                ClientItem::ToolCalls { deltas, .. } => tool_calls.extend(deltas),
                ClientItem::Handover(h) => handovers.push(h),
                ClientItem::Done(c) => {
                    return Collected {
                        text,
                        reasoning,
                        tool_calls,
                        handovers,
                        outcome: Ok(c),
                    }
                }
                ClientItem::Failed(e) => {
                    return Collected {
                        text,
                        reasoning,
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
            reasoning,
            tool_calls,
            handovers,
            outcome: Err(SpliceError::Exhausted {
                failures,
                emitted_bytes,
                tokens: Tally::default(),
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
                    spec: Some(Box::new(LadderSpec::of(&ladder).with_learned_windows(&ladder, request.model.as_deref()))),
                    request: Some(Box::new(RequestSpec::of(&request))),
                });
            }
            let mut session = Session::new(&request, &ladder, log);
            if let Some(items) = session.cached(&ladder, false, false) {
                for item in items {
                    yield item;
                }
                return;
            }
            let Some(first) = ladder.routes.first() else {
                for item in session.last_resort(&ladder, false) {
                    yield item;
                }
                return;
            };
            // The driver: it opens, reads and delivers as the machine says, and feeds it what came.
            let mut state = AttemptState::first_on(0, first, &session.health(0));
            let mut machine = Machine::new(state, ladder.forward_late_reasoning);
            let mut route = first;
            let (mut attempt, mut race, mut guard) = session.start(&ladder, route, &state);
            let mut actions = machine.on(Event::Opened(state));
            loop {
                let mut next = None;
                for action in actions {
                    match action {
                        Action::Open { route: index, retries, mode } => {
                            route = &ladder.routes[index];
                            state = AttemptState { retries, ..AttemptState::first_on(index, route, &session.health(index)) };
                            if let Some(mode) = mode {
                                state.mode = mode;
                            }
                            (attempt, race, guard) = session.start(&ladder, route, &state);
                            next = Some(Event::Opened(state));
                        }
                        Action::Read => {
                            let number = attempt.number;
                            // A hedge race may switch the attempt (and its route and state) to the hedge.
                            let item = session.next_item(&ladder, &mut route, &mut attempt, &mut state, &mut race, machine.has_content()).await;
                            session.upstream(&attempt, item.as_ref());
                            if attempt.number != number {
                                machine.on(Event::Switched(state));
                            }
                            next = Some(item.map_or(Event::Ended, Event::Item));
                        }
                        Action::FirstToken { timed } => attempt.first_token(&session, timed),
                        Action::Text { text, seam } => {
                            let out = attempt.text(text);
                            for item in session.deliver(&attempt, out, seam) {
                                yield item;
                            }
                            if let Some(found) = guard.as_mut().and_then(|g| g.observe(&session.emitted)) {
                                let marker = ladder.loop_guard.as_ref().map_or("", |c| c.marker.as_str());
                                if let Some(item) = session.cut_loop(&attempt, &found, marker) {
                                    yield item;
                                }
                                next = Some(Event::Item(Watched::Failed(looped(&found))));
                                break;
                            }
                        }
                        Action::Reasoning { text, field, placement } => {
                            // Thinking loops too: watched on its own bounded tail (it is never the prefix).
                            let found = attempt.thought.as_mut().and_then(|g| g.push(&text));
                            for item in session.deliver_reasoning(&attempt, text, field, placement) {
                                yield item;
                            }
                            if let Some(found) = found {
                                next = Some(Event::Item(Watched::Failed(looped(&found))));
                                break;
                            }
                        }
                        Action::Usage(usage) => attempt.usage = Some(usage::merge(attempt.usage, usage)),
                        Action::Close { failure, deltas } => {
                            session.settle(route, &mut attempt, failure.as_ref());
                            if let Some(failure) = &failure {
                                attempt.health.learn_from(failure);
                            }
                            session.account(&attempt, deltas);
                        }
                        Action::Decide { failure, state: at, deferred, deltas } => {
                            let jitter = session.rng.below(1 << 20) as f64 / f64::from(1u32 << 20);
                            let known = session.known(&ladder, deferred);
                            let decision = session.decide(&ladder, &failure, &at, &known, jitter);
                            decision.teach(&attempt.health);
                            let deferral = ladder.deferral(&failure, &at);
                            session.record_failure(route, &failure, deltas);
                            next = Some(Event::Decided { decision, deferral });
                        }
                        Action::Pend { reason, class } => {
                            session.pending.get_or_insert_with(|| Pending::new(route, reason, class));
                        }
                        Action::Unpend => session.pending = None,
                        Action::Wait { route: index, delay } => {
                            let name = ladder.routes[index].name.to_string();
                            session.log.emit(EventKind::Retry { route: name, delay_ms: delay.as_millis() as u64 });
                            tokio::time::sleep(delay).await;
                        }
                        Action::Finish { reason, tool_calls } => {
                            let rest = attempt.finish_trim();
                            for item in session.deliver(&attempt, rest, false) {
                                yield item;
                            }
                            if !tool_calls.is_empty() {
                                for item in session.deliver_tool_calls(&attempt, tool_calls) {
                                    yield item;
                                }
                            }
                            // A fallback that had nothing left to add still took over: it confirmed the end.
                            if session.pending.is_some() {
                                if let Some(item) = session.arrive(&attempt.route) {
                                    yield item;
                                }
                            }
                            session.remember(&ladder, &reason);
                            yield session.finish(reason);
                            return;
                        }
                        Action::Refuse { failure } => {
                            let failures = std::mem::take(&mut session.failures);
                            let tokens = std::mem::take(&mut session.tokens);
                            let error = SpliceError::Refused { route: route.name.to_string(), message: refusal(&failure), failures, emitted_bytes: session.sent, tokens };
                            yield session.fail(error);
                            return;
                        }
                        Action::Local { failure } => {
                            tracing::warn!(route = %route.name, "local resources exhausted, the session ends without blaming the route: {failure}");
                            let resource = match &failure {
                                FailureKind::LocalResources { resource, .. } => resource.clone(),
                                other => other.label().to_string(),
                            };
                            let failures = std::mem::take(&mut session.failures);
                            let tokens = std::mem::take(&mut session.tokens);
                            yield session.fail(SpliceError::Local { resource, failures, emitted_bytes: session.sent, tokens });
                            return;
                        }
                        Action::LastResort { seam } => {
                            for item in session.last_resort(&ladder, seam) {
                                yield item;
                            }
                            return;
                        }
                    }
                }
                match next {
                    Some(event) => actions = machine.on(event),
                    None => {
                        // Every action list ends in a report or the session's end; should one
                        // not, the client still gets a last item rather than a silent end.
                        for item in session.last_resort(&ladder, false) {
                            yield item;
                        }
                        return;
                    }
                }
            }
        })
    }
}

/// The failure a loop the guard found is.
fn looped(found: &Loop) -> FailureKind {
    FailureKind::Loop {
        period: u32::try_from(found.period).unwrap_or(u32::MAX),
        repeats: found.repeats,
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

/// A failure waiting for the next route's first byte, to become a handover.
struct Pending {
    from: Arc<str>,
    reason: &'static str,
    class: FailureClass,
    at: Instant,
}

impl Pending {
    /// The handover `kind` on `route` calls for, detected now.
    fn after(route: &Route, kind: &FailureKind) -> Self {
        Pending::new(route, kind.label(), kind.class())
    }

    /// A handover from `route` after a failure labelled `reason`, detected now.
    fn new(route: &Route, reason: &'static str, class: FailureClass) -> Self {
        Pending {
            from: route.name.clone(),
            reason,
            class,
            at: Instant::now(),
        }
    }
}

/// The zero to three items one delivery yields (a handover notice, a reasoning seam, the item).
type Delivered = std::iter::Flatten<std::array::IntoIter<Option<ClientItem>, 3>>;

/// One session's state between attempts.
struct Session<'r> {
    request: &'r ChatRequest,
    /// The health of the model each route of the ladder serves this session, by route index.
    healths: Vec<Arc<ModelHealth>>,
    /// Routes whose attempt failed beside the one in charge (a lost hedge): never handed to again.
    lost: RouteSet,
    log: SessionLog,
    /// The prefix every continuation builds on: everything the client has
    /// received, except a loop cut out of it (and the marker that ended it).
    emitted: String,
    /// Bytes the client has received.
    sent: u64,
    chain: Vec<String>,
    failures: Vec<Failure>,
    /// Every finished attempt's tokens.
    tokens: Tally,
    pending: Option<Pending>,
    attempts: u32,
    rng: SplitMix,
    /// Tool-call deltas sent to the client, for the `Finished` event (only kept when someone listens).
    tool_calls: Vec<serde_json::Value>,
    /// Whether any tool call reached the client (such an answer is not cached).
    tool_calls_sent: bool,
    /// The text deltas as sent, for the cache (only kept when the ladder has one).
    deltas: Option<Vec<String>>,
    /// Reasoning bytes the client has received (seam markers included).
    reasoning_sent: u64,
    /// The field of the reasoning the client got last: a seam marker goes out in it.
    reasoning_field: ReasoningField,
    /// The ladder's seam marker (borrowed: not copied per session).
    seam_marker: &'r str,
}

/// One upstream attempt.
struct Attempt {
    /// Its number in the session, from 1.
    number: u32,
    /// The loop guard over its reasoning, when the ladder guards loops.
    thought: Option<crate::policy::loopguard::TailGuard>,
    /// The breaker's permission; `None` when the breaker skipped the route.
    permit: Option<Permit>,
    watchdog: WatchedStream,
    trim: OverlapTrim,
    /// How it continues the prefix: what an echo it proves is remembered for.
    mode: continuation::ContinuationMode,
    /// Whether its trim's verdict was already looked at.
    learned: bool,
    opened: Instant,
    usage: Option<Usage>,
    route: Arc<str>,
    /// The upstream model actually asked for (`{model}` resolved).
    model: Arc<str>,
    /// The health of its (route, model), which learns from it.
    health: Arc<ModelHealth>,
}

impl Attempt {
    /// Feeds one upstream delta through the overlap trim.
    fn text(&mut self, text: String) -> String {
        let out = self.trim.push(text);
        self.learn();
        out
    }

    /// Its first token of any channel: the breaker's verdict (a probe closes
    /// the breaker now, whatever the rest of the stream does), and when
    /// `timed`, the time to first token.
    fn first_token(&mut self, session: &Session<'_>, timed: bool) {
        if timed {
            let ttft = self.opened.elapsed();
            self.health.record_ttft(ttft);
            session.log.emit(EventKind::FirstToken {
                route: self.route.to_string(),
                ttft_ms: ttft.as_millis() as u64,
            });
        }
        if let Some(permit) = &mut self.permit {
            let transition = permit.first_token();
            session.breaker_changed(&self.route, &self.model, transition);
        }
    }

    /// The attempt finished: releases what the trim still held.
    fn finish_trim(&mut self) -> String {
        let out = self.trim.finish();
        self.learn();
        out
    }

    /// An echo the continuation proved by itself teaches the route that this model echoes.
    fn learn(&mut self) {
        if !self.learned && self.trim.dropped() == Some(Proof::Proved) {
            self.learned = true;
            self.health.remember_echo(self.mode);
        }
    }
}
