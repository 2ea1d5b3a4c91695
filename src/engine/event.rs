//! `EngineEvent`: the one schema for what happened in a session.
//!
//! The same type is the live feed, the recording line and the replay input,
//! so a consumer never knows which source it reads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;
use uuid::Uuid;

use crate::continuation::ContinuationMode;
use crate::failure::{Failure, FailureClass, FailureKind};
use crate::policy::breaker::BreakerState;
use crate::policy::deadline::Deadlines;
use crate::provider::UpstreamRequest;
use crate::request::Usage;
use crate::spec::{LadderSpec, RequestSpec};
use crate::usage::Tally;

/// The session id of events baton makes on its own, outside any session
/// (active probes and the breaker changes they cause); recordings skip them.
pub const BATON_SESSION: Uuid = Uuid::nil();

/// One thing that happened in a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineEvent {
    /// The session it belongs to.
    pub session: Uuid,
    /// Milliseconds since the session started.
    pub t_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The splicer took a request.
    SessionStarted {
        /// The ladder that serves it.
        ladder: String,
        /// Messages in the conversation.
        messages: usize,
        /// The ladder's routes and rules, enough to rebuild it for a replay (no providers, no keys).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spec: Option<Box<LadderSpec>>,
        /// The caller's request before any continuation: model, messages, params.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<Box<RequestSpec>>,
    },
    /// An upstream attempt began.
    AttemptOpened {
        /// The route.
        route: String,
        /// The upstream model.
        model: String,
        /// Attempt number in the session, from 1.
        attempt: u32,
        /// How the prefix is continued.
        mode: ContinuationMode,
        /// Bytes of prefix handed to it.
        prefix_bytes: u64,
        /// The request as sent upstream (no keys or headers: those never reach events).
        request: UpstreamRequest,
        /// The deadlines the attempt runs under, decided as it opened (adaptive
        /// ones included); absent in recordings made before they were recorded.
        /// Boxed: every event pays for its largest variant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadlines: Option<Box<Deadlines>>,
        /// The route had been seen echoing this model's continuations in this
        /// mode, so its short echoes are trimmed (a replay must know it too).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        seen_echoing: bool,
        /// The route's provider strips a prefill's trailing whitespace, so a
        /// continuation that starts with it gives it back (a replay must know it too).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        stripped: bool,
    },
    /// The oldest turns were dropped so the request fits the route's context
    /// window (just before that attempt's `attempt_opened`).
    ContextFitted {
        /// The route.
        route: String,
        /// Messages dropped.
        dropped_messages: usize,
        /// Their estimated tokens.
        dropped_tokens: u32,
        /// Estimated tokens of the request as sent.
        kept_tokens: u32,
        /// Tokens left for the answer.
        reserve: u32,
        /// The route's context window.
        window: u32,
    },
    /// One item from the upstream, as the watchdog let it through (before the overlap trim).
    Upstream {
        /// The attempt it belongs to.
        attempt: u32,
        /// What arrived.
        item: UpstreamItem,
    },
    /// The attempt's first content arrived.
    FirstToken {
        /// The route.
        route: String,
        /// Since the attempt opened.
        ttft_ms: u64,
    },
    /// Text sent to the client.
    Delta {
        /// The route that wrote it.
        route: String,
        /// The text.
        text: String,
    },
    /// Reasoning sent to the client (a seam marker included): not part of the answer.
    Reasoning {
        /// The route that wrote it.
        route: String,
        /// The text.
        text: String,
    },
    /// An attempt failed.
    Failure {
        /// What failed, where and when.
        failure: Failure,
        /// The failure itself, enough to replay it.
        cause: FailureKind,
    },
    /// The same route is tried again after a pause.
    Retry {
        /// The route.
        route: String,
        /// The pause.
        delay_ms: u64,
    },
    /// The route's retry budget refused a retry: the failure hands over instead.
    RetryDenied {
        /// The route.
        route: String,
    },
    /// The response cache answered (its text follows as deltas of the route `cache`).
    CacheHit {
        /// How old the cached answer is.
        age_ms: u64,
        /// After every route failed (else as the first rung).
        last_resort: bool,
        /// Bytes it adds to what the client had.
        bytes: u64,
    },
    /// Nothing could answer: the ladder's safe reply follows (deltas of the route `safe-reply`).
    SafeReply {
        /// Part of an answer had been sent: the note closes it.
        partial: bool,
        /// Bytes it adds.
        bytes: u64,
    },
    /// A route's circuit breaker changed state.
    Breaker {
        /// The route.
        route: String,
        /// The upstream model whose breaker changed (absent in recordings made
        /// when breakers were per route).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// The state before.
        from: BreakerState,
        /// The state after.
        to: BreakerState,
    },
    /// Where this instance's health, facts and cache are shared, and whether
    /// that store answers (session [`BATON_SESSION`]; sent on every change and
    /// every few seconds, so a dashboard that attaches later learns it too).
    SharedState {
        /// `redis`.
        backend: String,
        /// The store answers; while not, the instance works on its local state.
        connected: bool,
    },
    /// baton's own probe of an open breaker ended (session [`BATON_SESSION`]).
    Probe {
        /// The route.
        route: String,
        /// The upstream model probed.
        #[serde(default)]
        model: String,
        /// It answered (its first token or a proper end arrived).
        #[serde(default)]
        ok: bool,
        /// From sending it to its verdict.
        #[serde(default)]
        ms: u64,
        /// Why it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Another route took over and its first text reached the client.
    Handover {
        /// The route that failed.
        from: String,
        /// The route that continued.
        to: String,
        /// Class of the failure that caused it.
        class: FailureClass,
        /// Label of that failure.
        reason: String,
        /// Bytes the client had before the handover.
        prefix_bytes: u64,
        /// From the failure's detection to the continuation's first byte.
        gap_ms: u64,
    },
    /// An attempt's first token was late: the next route was started in parallel
    /// (just before that hedge's `attempt_opened`).
    Hedge {
        /// The late attempt's route.
        route: String,
        /// The late attempt's number.
        attempt: u32,
        /// The route started in parallel.
        hedge_route: String,
        /// The hedge's attempt number.
        hedge_attempt: u32,
        /// How long after the late attempt opened (whole ms; a replay hedges after exactly this).
        after_ms: u64,
    },
    /// A hedge race ended: `route` goes on, the other attempt was cancelled (or had failed).
    HedgeWon {
        /// The route that goes on.
        route: String,
        /// Its attempt number.
        attempt: u32,
        /// It is the hedge (else the attempt that was late).
        by_hedge: bool,
        /// The route of the attempt cancelled for it; `None`: the other had failed first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cancelled: Option<String>,
        /// The cancelled attempt's number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cancelled_attempt: Option<u32>,
    },
    /// The answer is complete.
    Finished {
        /// The last route's finish reason.
        finish_reason: String,
        /// The routes that wrote the answer, in order.
        route_chain: Vec<String>,
        /// Bytes sent to the client.
        bytes: u64,
        /// Token counts the upstreams reported, summed over every attempt
        /// (before `tokens` was recorded: over the attempts that contributed
        /// text, an unreported one counting its deltas).
        usage: Usage,
        /// Tool-call deltas sent to the client (just before the end).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<serde_json::Value>,
        /// Every attempt's tokens; `None` in a recording made before they were recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokens: Option<Tally>,
    },
    /// The session ended without a complete answer.
    Failed {
        /// Why.
        error: String,
        /// Bytes the client had received.
        bytes: u64,
        /// Every attempt's tokens; `None` in a recording made before they were recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokens: Option<Tally>,
    },
}

/// One upstream item, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum UpstreamItem {
    /// Content text.
    Text(String),
    /// Tool-call deltas.
    ToolCalls(Vec<serde_json::Value>),
    /// Token counts.
    Usage(Usage),
    /// The finish reason: the attempt ended properly.
    Finished(String),
    /// Reasoning text, with the field it came in (absent from recordings made before it existed).
    Reasoning {
        /// The text.
        text: String,
        /// The field it came in.
        #[serde(default)]
        field: crate::provider::ReasoningField,
    },
}

/// The event broadcast with a count of its subscribers, read without a lock.
///
/// `broadcast::Sender::receiver_count()` takes the channel's tail mutex, and
/// every splicer of a proxy shares one channel: asked per token, it is a
/// process-wide lock per chunk. The count here is an atomic that only
/// [`EventBus::subscribe`] and the drop of its [`Subscriber`] touch.
#[derive(Clone, Debug)]
pub struct EventBus {
    sender: broadcast::Sender<EngineEvent>,
    listeners: Arc<AtomicUsize>,
}

impl EventBus {
    /// A new broadcast keeping `capacity` events for slow subscribers.
    pub fn new(capacity: usize) -> Self {
        EventBus {
            sender: broadcast::channel(capacity.max(1)).0,
            listeners: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A new subscription, counted until it is dropped.
    pub fn subscribe(&self) -> Subscriber {
        let receiver = self.sender.subscribe();
        Subscriber {
            receiver,
            counted: Counted::new(&self.listeners),
        }
    }

    /// How many subscriptions are alive (a relaxed read: a subscriber that
    /// arrives mid-session may miss the events of that instant, as it would anyway).
    pub fn listeners(&self) -> usize {
        self.listeners.load(Ordering::Relaxed)
    }

    /// Whether anyone listens.
    pub fn listened(&self) -> bool {
        self.listeners() > 0
    }

    /// Publishes `event` to the subscribers of this instant (none: it is dropped).
    pub fn send(&self, event: EngineEvent) {
        let _ = self.sender.send(event);
    }
}

/// One subscription to an [`EventBus`]: a broadcast receiver (it derefs to
/// one) that counts as a listener while it lives.
#[derive(Debug)]
pub struct Subscriber {
    receiver: broadcast::Receiver<EngineEvent>,
    counted: Counted,
}

impl Subscriber {
    /// The receiver and the guard that keeps it counted, for a consumer that
    /// wraps the receiver (a stream adapter): keep the guard as long as the receiver.
    pub fn into_parts(self) -> (broadcast::Receiver<EngineEvent>, Counted) {
        (self.receiver, self.counted)
    }
}

impl std::ops::Deref for Subscriber {
    type Target = broadcast::Receiver<EngineEvent>;
    fn deref(&self) -> &Self::Target {
        &self.receiver
    }
}

impl std::ops::DerefMut for Subscriber {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.receiver
    }
}

/// Counts one listener of an [`EventBus`] until dropped.
#[derive(Debug)]
pub struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(listeners: &Arc<AtomicUsize>) -> Self {
        listeners.fetch_add(1, Ordering::Relaxed);
        Counted(listeners.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Stamps and publishes the events of one session.
#[derive(Clone, Debug)]
pub struct SessionLog {
    session: Uuid,
    started: Instant,
    events: EventBus,
}

impl SessionLog {
    /// Starts the clock for `session`.
    pub fn new(session: Uuid, events: EventBus) -> Self {
        SessionLog {
            session,
            started: Instant::now(),
            events,
        }
    }

    /// Milliseconds since the session started.
    pub fn t_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether anyone listens (an atomic read: lets the per-token path skip building events).
    pub fn listened(&self) -> bool {
        self.events.listened()
    }

    /// Publishes `kind`; an event nobody listens to is dropped.
    pub fn emit(&self, kind: EventKind) {
        if self.listened() {
            self.events.send(EngineEvent {
                session: self.session,
                t_ms: self.t_ms(),
                kind,
            });
        }
    }
}

/// One attempt as [`HandoverCost`] needs it.
#[derive(Clone, Debug)]
struct OpenedAttempt {
    number: u32,
    route: String,
    opened_ms: u64,
    /// When the failure it follows was detected, pauses of retries since excluded.
    after_failure_ms: Option<u64>,
    /// Its latest upstream item so far: at a handover, the one that made the first byte.
    last_item_ms: Option<u64>,
}

/// The handover gap's own cost in one session's events: per handover, from
/// the failure's detection to the fallback's first byte to the client, minus
/// the fallback's own time to first token and minus any retry pause (policy,
/// not cost) in between.
///
/// The fallback's time to first token runs from its opening to the upstream
/// item that made the client's first byte from it (the last one before the
/// handover): what it sends that the client never gets (thinking again
/// after the answer began, a repeated prefix) is the upstream's time, not baton's.
///
/// Feed it the session's events in order; it keeps only what it needs.
/// Event times are whole milliseconds, each truncated, so one figure is
/// within 2 ms of the truth (and is clamped at zero).
#[derive(Clone, Debug, Default)]
pub struct HandoverCost {
    /// The last failure's time, plus the retry pauses announced since.
    failure_ms: Option<u64>,
    /// Attempts that may still hand over, latest last (a session has few).
    attempts: Vec<OpenedAttempt>,
}

impl HandoverCost {
    /// Takes the next event of the session; a handover yields its cost in ms
    /// (`None`: no failure or no upstream item of its fallback was seen, e.g. lost to lag).
    pub fn push(&mut self, event: &EngineEvent) -> Option<u64> {
        let t = event.t_ms;
        match &event.kind {
            EventKind::Failure { .. } => self.failure_ms = Some(t),
            EventKind::Retry { delay_ms, .. } => {
                self.failure_ms = self.failure_ms.map(|f| f.saturating_add(*delay_ms));
            }
            EventKind::AttemptOpened { route, attempt, .. } => {
                // Bounded: a session opens few attempts, but hostile replays may open many.
                if self.attempts.len() >= 64 {
                    self.attempts.remove(0);
                }
                self.attempts.push(OpenedAttempt {
                    number: *attempt,
                    route: route.clone(),
                    opened_ms: t,
                    after_failure_ms: self.failure_ms,
                    last_item_ms: None,
                });
            }
            EventKind::Upstream { attempt, .. } => {
                if let Some(a) = self.attempts.iter_mut().rev().find(|a| a.number == *attempt) {
                    a.last_item_ms = Some(t);
                }
            }
            EventKind::Handover { to, .. } => {
                let a = self.attempts.iter().rev().find(|a| &a.route == to)?;
                let made = a.last_item_ms?;
                // The failure the fallback answers: the one before it opened,
                // or, for a hedge opened before it, the one seen since.
                let failed = a.after_failure_ms.or(self.failure_ms)?;
                let cost = if a.opened_ms >= failed {
                    t.saturating_sub(failed)
                        .saturating_sub(made.saturating_sub(a.opened_ms))
                } else {
                    t.saturating_sub(failed.max(made))
                };
                self.failure_ms = None;
                return Some(cost);
            }
            _ => {}
        }
        None
    }
}

/// [`HandoverCost`] over one session's events: each handover's own cost in ms, in order.
pub fn handover_costs<'a>(events: impl IntoIterator<Item = &'a EngineEvent>) -> Vec<u64> {
    let mut cost = HandoverCost::default();
    events.into_iter().filter_map(|e| cost.push(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ReasoningField;

    /// A hand-made session's event: `kind` at `t_ms`.
    fn at(t_ms: u64, kind: EventKind) -> EngineEvent {
        EngineEvent {
            session: Uuid::nil(),
            t_ms,
            kind,
        }
    }

    fn opened(route: &str, attempt: u32) -> EventKind {
        EventKind::AttemptOpened {
            route: route.into(),
            model: "m".into(),
            attempt,
            mode: ContinuationMode::Prefill,
            prefix_bytes: 0,
            request: UpstreamRequest {
                model: "m".into(),
                messages: Vec::new(),
                params: serde_json::Map::new(),
                continue_final_message: false,
            },
            deadlines: None,
            seen_echoing: false,
            stripped: false,
        }
    }

    fn failed(route: &str, at_ms: u64) -> EventKind {
        let cause = FailureKind::Truncated { detail: None };
        EventKind::Failure {
            failure: Failure::new(&cause, route, 3, 10, at_ms),
            cause,
        }
    }

    fn handover(to: &str) -> EventKind {
        EventKind::Handover {
            from: "primary".into(),
            to: to.into(),
            class: FailureClass::Technical,
            reason: "truncated".into(),
            prefix_bytes: 10,
            gap_ms: 0,
        }
    }

    fn item(attempt: u32, text: &str) -> EventKind {
        EventKind::Upstream {
            attempt,
            item: UpstreamItem::Text(text.into()),
        }
    }

    #[test]
    fn the_handover_cost_leaves_out_the_fallbacks_ttft_and_the_retry_pause() {
        let delta = |text: &str| EventKind::Delta {
            route: "fallback".into(),
            text: text.into(),
        };
        let events = [
            at(0, opened("primary", 1)),
            at(30, item(1, "Hello")),
            at(31, delta("Hello")),
            // Fails, is retried after 100 ms, fails again: the second failure counts, not the pause.
            at(50, failed("primary", 50)),
            at(
                50,
                EventKind::Retry {
                    route: "primary".into(),
                    delay_ms: 100,
                },
            ),
            at(150, opened("primary", 2)),
            at(170, failed("primary", 170)),
            // Opened 2 ms after the failure, first token 40 ms later, first byte out 3 ms after it.
            at(172, opened("fallback", 3)),
            at(212, item(3, " world")),
            at(215, handover("fallback")),
            at(215, delta(" world")),
            // A second handover in the same session: 1 + 20 ttft + 4.
            at(300, failed("fallback", 300)),
            at(301, opened("steady", 4)),
            at(321, item(4, "!")),
            at(325, handover("steady")),
        ];
        assert_eq!(handover_costs(&events), vec![5, 5]);
        // The same session without the second retry: the pause is not cost either way.
        let direct = [
            at(0, failed("primary", 0)),
            at(
                0,
                EventKind::Retry {
                    route: "primary".into(),
                    delay_ms: 100,
                },
            ),
            at(100, opened("fallback", 2)),
            at(130, item(2, "x")),
            at(131, handover("fallback")),
        ];
        assert_eq!(handover_costs(&direct), vec![1]);
    }

    #[test]
    fn a_handover_during_reasoning_counts_to_its_first_reasoning_byte() {
        let events = [
            at(0, opened("thinker", 1)),
            at(
                30,
                EventKind::Upstream {
                    attempt: 1,
                    item: UpstreamItem::Reasoning {
                        text: "hmm".into(),
                        field: crate::provider::ReasoningField::ReasoningContent,
                    },
                },
            ),
            at(
                31,
                EventKind::Reasoning {
                    route: "thinker".into(),
                    text: "hmm".into(),
                },
            ),
            at(400, failed("thinker", 400)),
            at(401, opened("steady-think", 2)),
            // Its first item is reasoning, and that is the client's first byte from it.
            at(
                431,
                EventKind::Upstream {
                    attempt: 2,
                    item: UpstreamItem::Reasoning {
                        text: " so".into(),
                        field: crate::provider::ReasoningField::ReasoningContent,
                    },
                },
            ),
            at(433, handover("steady-think")),
            at(
                433,
                EventKind::Reasoning {
                    route: "steady-think".into(),
                    text: " so".into(),
                },
            ),
        ];
        assert_eq!(handover_costs(&events), vec![3]);
        // A fallback that thinks again after the answer began: its thinking is
        // withheld, and its time to the first text it gives is its own, not baton's.
        let rethinks = [
            at(0, opened("thinker", 1)),
            at(30, item(1, "The answer")),
            at(
                31,
                EventKind::Delta {
                    route: "thinker".into(),
                    text: "The answer".into(),
                },
            ),
            at(400, failed("thinker", 400)),
            at(401, opened("steady-think", 2)),
            at(
                431,
                EventKind::Upstream {
                    attempt: 2,
                    item: UpstreamItem::Reasoning {
                        text: "again".into(),
                        field: crate::provider::ReasoningField::ReasoningContent,
                    },
                },
            ),
            at(700, item(2, " is")),
            at(701, handover("steady-think")),
            at(
                701,
                EventKind::Delta {
                    route: "steady-think".into(),
                    text: " is".into(),
                },
            ),
        ];
        assert_eq!(handover_costs(&rethinks), vec![2]);
    }

    #[test]
    fn a_handover_without_what_it_needs_costs_nothing_known() {
        // No failure seen (lost to lag), then no upstream item of the fallback seen.
        let events = [
            at(10, opened("fallback", 2)),
            at(40, item(2, "x")),
            at(41, handover("fallback")),
            at(50, failed("fallback", 50)),
            at(51, opened("steady", 3)),
            at(60, handover("steady")),
        ];
        assert_eq!(handover_costs(&events), Vec::<u64>::new());
        // A hedge opened before the failure: from the later of the failure and its first item.
        let hedged = [
            at(0, opened("primary", 1)),
            at(100, opened("fallback", 2)),
            at(130, item(2, "x")),
            at(150, failed("primary", 150)),
            at(152, handover("fallback")),
        ];
        assert_eq!(handover_costs(&hedged), vec![2]);
    }

    #[test]
    fn a_reasoning_item_round_trips_and_reads_without_its_field() {
        let item = UpstreamItem::Reasoning {
            text: "hmm".into(),
            field: ReasoningField::Reasoning,
        };
        let line = serde_json::to_string(&item).unwrap();
        assert_eq!(serde_json::from_str::<UpstreamItem>(&line).unwrap(), item);
        let bare: UpstreamItem = serde_json::from_str(r#"{"type":"reasoning","value":{"text":"x"}}"#).unwrap();
        assert_eq!(
            bare,
            UpstreamItem::Reasoning {
                text: "x".into(),
                field: ReasoningField::ReasoningContent
            }
        );
        // Older items read as before.
        let old: UpstreamItem = serde_json::from_str(r#"{"type":"text","value":"a"}"#).unwrap();
        assert_eq!(old, UpstreamItem::Text("a".into()));
    }

    #[test]
    fn the_listener_count_follows_subscribes_and_drops() {
        let bus = EventBus::new(8);
        assert_eq!(bus.listeners(), 0);
        let a = bus.subscribe();
        let b = bus.clone().subscribe();
        assert_eq!(bus.listeners(), 2);
        drop(a);
        assert_eq!(bus.listeners(), 1);
        let (receiver, counted) = b.into_parts();
        assert_eq!(bus.listeners(), 1, "the parts still count");
        drop(receiver);
        assert_eq!(bus.listeners(), 1, "the guard, not the receiver, counts");
        drop(counted);
        assert_eq!(bus.listeners(), 0);
        assert!(!SessionLog::new(Uuid::nil(), bus).listened());
    }

    #[test]
    fn a_log_nobody_listens_to_sends_nothing_and_one_listened_to_does() {
        let bus = EventBus::new(8);
        let log = SessionLog::new(Uuid::nil(), bus.clone());
        // A raw receiver is no listener: what nobody counted is never sent.
        let mut raw = bus.sender.subscribe();
        log.emit(EventKind::RetryDenied { route: "a".into() });
        assert!(raw.try_recv().is_err(), "an event was built and sent with no listener");
        let mut sub = bus.subscribe();
        log.emit(EventKind::RetryDenied { route: "b".into() });
        assert_eq!(
            sub.try_recv().map(|e| e.kind).ok(),
            Some(EventKind::RetryDenied { route: "b".into() })
        );
        assert_eq!(
            raw.try_recv().map(|e| e.kind).ok(),
            Some(EventKind::RetryDenied { route: "b".into() })
        );
    }

    /// A whole session nobody listens to puts nothing on the channel; the
    /// same session listened to publishes its deltas.
    #[tokio::test(start_paused = true)]
    async fn a_session_nobody_listens_to_builds_no_event() {
        use crate::oracle::fault::{FaultPlan, FaultScript};
        use crate::oracle::provider::MockProvider;
        use crate::oracle::Style;
        use crate::policy::ladder::{Ladder, Route};
        use crate::request::{ChatRequest, Message, Role};

        let script: FaultScript = "drop@3".parse().unwrap();
        let primary = Arc::new(MockProvider::new(FaultPlan::Fixed(script), Style::default()));
        let fallback = Arc::new(MockProvider::new(
            FaultPlan::Fixed("none".parse().unwrap()),
            Style::default(),
        ));
        let bus = EventBus::new(1 << 12);
        let splicer = crate::engine::splice::Splicer::with_events(
            Ladder::new(vec![
                Route::new("primary", "big", primary),
                Route::new("fallback", "small", fallback),
            ]),
            bus.clone(),
        );
        let request = || ChatRequest::new(vec![Message::new(Role::User, "Tell me about quiet.")]);
        let mut raw = bus.sender.subscribe();
        let unheard = splicer.collect(request()).await;
        assert!(!unheard.text.is_empty() && unheard.handovers.len() == 1, "{unheard:?}");
        assert!(raw.try_recv().is_err(), "an unheard session published events");

        let _listening = splicer.subscribe();
        let heard = splicer.collect(request()).await;
        assert_eq!(heard.text, unheard.text);
        let mut deltas = String::new();
        let mut events = 0;
        while let Ok(e) = raw.try_recv() {
            events += 1;
            if let EventKind::Delta { text, .. } = e.kind {
                deltas.push_str(&text);
            }
        }
        assert!(events > 3, "{events} events");
        assert_eq!(deltas, heard.text);
    }
}
