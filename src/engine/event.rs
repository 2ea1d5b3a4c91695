//! `EngineEvent`: the one schema for what happened in a session.
//!
//! The same type is the live feed, the recording line and the replay input,
//! so a consumer never knows which source it reads.

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

/// Stamps and publishes the events of one session.
#[derive(Clone, Debug)]
pub struct SessionLog {
    session: Uuid,
    started: Instant,
    events: broadcast::Sender<EngineEvent>,
}

impl SessionLog {
    /// Starts the clock for `session`.
    pub fn new(session: Uuid, events: broadcast::Sender<EngineEvent>) -> Self {
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

    /// Whether anyone listens (cheap: lets the per-token path skip building events).
    pub fn listened(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Publishes `kind`; an event nobody listens to is dropped.
    pub fn emit(&self, kind: EventKind) {
        if self.listened() {
            let _ = self.events.send(EngineEvent {
                session: self.session,
                t_ms: self.t_ms(),
                kind,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ReasoningField;

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
}
