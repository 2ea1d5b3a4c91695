//! `baton replay --verify`: re-drive recorded sessions through the current
//! splicer under virtual time and compare with what was recorded.
//!
//! For each session, every route of the recorded ladder gets a scripted
//! provider that plays the recorded upstream attempts back: the same items at
//! the same offsets from the attempt's start, ending the same way. A failure
//! the watchdog detected (first-token timeout, stall, total deadline) is
//! replayed as silence, so the re-driven watchdog has to fire again; any
//! other failure is handed to the splicer as the recorded [`FailureKind`].
//!
//! Every attempt runs under the deadlines recorded when it opened (adaptive
//! ones are decided from a route's recent history, which a re-drive does not
//! have); a recording made before those were recorded uses the route's own.
//! The stall deadline is the exception: a live attempt's watchdog may have
//! lowered or raised it mid-stream from the stream's own cadence (see
//! [`crate::policy::deadline::own_stall`]), from gaps a recording keeps only to the
//! millisecond and stretched by a slow client. So the re-drive does not
//! re-learn the cadence; it replays each decision: an attempt that stalled
//! runs under the stall deadline that fired (recorded in its failure), any
//! other under the largest its route allows (its ceiling), which no recorded
//! gap reaches once shortened (below).
//!
//! Timing is replayed as recorded, with one exception: a silence the
//! recording shows did *not* trip a deadline (in the recorded run the stall
//! clock starts only when the client asks for more, so a slow client
//! stretches the recorded gaps) is shortened to 1 ms under that deadline.
//!
//! What is compared, in order of the client's byte offset: the text the client
//! received, every attempt (route, mode, prefix, and the request as sent),
//! every failure, retry and handover (not the gap: that is wall time), who
//! wrote each part, and how the session ended.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

use super::reader::RecordedSession;
use super::spec::{LadderSpec, RequestSpec};
use super::FORMAT_VERSION;
use crate::continuation::ContinuationMode;
use crate::engine::event::{EngineEvent, EventBus, EventKind, UpstreamItem};
use crate::engine::splice::{Splicer, EVENT_CAPACITY};
use crate::failure::{FailureClass, FailureKind};
use crate::policy::deadline::Deadlines;
use crate::policy::health::{Decisions, ModelHealth};
use crate::provider::{Chunk, ChunkStream, Provider, UpstreamRequest};
use crate::request::Usage;
use crate::rungs::cache::{CacheLimits, CacheRung, CacheUse, CachedAnswer, ResponseCache, CACHE_ROUTE};
use crate::usage::Tally;

/// The oldest recording format `--verify` can re-drive.
pub const MIN_VERIFY_VERSION: u32 = 1;

/// How long a re-drive may run in virtual time before it is called stuck.
const VIRTUAL_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// A replayed item never comes later than this before a deadline it did not trip.
const MARGIN: Duration = Duration::from_millis(1);

/// The verdict on one session.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// The session.
    pub session: Uuid,
    /// Its file.
    pub file: PathBuf,
    /// Its ladder.
    pub ladder: String,
    /// Attempts recorded.
    pub attempts: usize,
    /// Handovers recorded.
    pub handovers: usize,
    /// Bytes the client received, as recorded.
    pub bytes: u64,
    /// The result.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The result of verifying one session.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The re-drive matches. `partial`: the recording stops before the session ended
    /// (its client went away, or the recorder stopped), and matched as far as it goes.
    Ok {
        /// Only a prefix could be compared.
        partial: bool,
    },
    /// The re-drive differs.
    Diverged(Divergence),
    /// The recording misses events (the recorder dropped some): nothing to compare against.
    Unverifiable {
        /// Why.
        reason: String,
    },
    /// Recorded by a baton whose recordings this one cannot re-drive.
    Incompatible {
        /// Why.
        reason: String,
    },
    /// A line of the recording could not be read.
    Corrupt {
        /// Why.
        reason: String,
    },
}

/// The first difference between the recording and the re-drive.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Divergence {
    /// Bytes the client had received (in both) when they parted.
    pub at: u64,
    /// What differs, in one line.
    pub what: String,
    /// The recorded side.
    pub recorded: String,
    /// The re-driven side.
    pub now: String,
}

// ------------------------------------------------------------ transcripts

/// What a session looked like from outside: the client's text and the decisions, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transcript {
    /// Everything the client received.
    pub text: String,
    /// The decisions and client items other than text, each at the client's byte offset.
    pub marks: Vec<Mark>,
}

/// One decision or client item, at a byte offset of the client text.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    /// Client bytes before it.
    pub at: u64,
    /// What.
    pub step: Step,
}

/// A decision or client item.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// An upstream attempt opened.
    Attempt {
        /// Number in the session.
        number: u32,
        /// Route.
        route: String,
        /// Upstream model.
        model: String,
        /// Continuation mode.
        mode: ContinuationMode,
        /// Prefix handed over.
        prefix_bytes: u64,
        /// The request as sent.
        request: UpstreamRequest,
    },
    /// An attempt failed.
    Failure {
        /// Route.
        route: String,
        /// The failure.
        cause: FailureKind,
        /// Its deltas.
        tokens: u64,
    },
    /// The response cache answered.
    CacheHit {
        /// After every route failed.
        last_resort: bool,
        /// Bytes it added.
        bytes: u64,
    },
    /// The safe reply answered.
    SafeReply {
        /// It closed a partial answer.
        partial: bool,
        /// Bytes it added.
        bytes: u64,
    },
    /// A same-route retry.
    Retry {
        /// Route.
        route: String,
        /// Pause.
        delay_ms: u64,
    },
    /// A late first token started a hedge.
    Hedge {
        /// The late attempt's route.
        route: String,
        /// The hedge's route.
        hedge_route: String,
        /// After how long.
        after_ms: u64,
    },
    /// A hedge race ended.
    HedgeWon {
        /// The route that went on.
        route: String,
        /// It was the hedge.
        by_hedge: bool,
        /// The route cancelled for it, if still running.
        cancelled: Option<String>,
    },
    /// A handover reached the client.
    Handover {
        /// From.
        from: String,
        /// To.
        to: String,
        /// Class.
        class: FailureClass,
        /// Reason.
        reason: String,
        /// Prefix.
        prefix_bytes: u64,
    },
    /// The text from here on is this route's.
    Writes {
        /// Route.
        route: String,
    },
    /// The answer completed.
    Finished {
        /// Finish reason.
        finish_reason: String,
        /// Route chain.
        route_chain: Vec<String>,
        /// Bytes.
        bytes: u64,
        /// Usage.
        usage: Usage,
        /// Tool calls sent.
        tool_calls: Vec<serde_json::Value>,
        /// Every attempt's tokens (`None`: recorded before they were).
        tokens: Option<Tally>,
    },
    /// The session failed.
    Failed {
        /// Error.
        error: String,
        /// Bytes.
        bytes: u64,
        /// Every attempt's tokens (`None`: recorded before they were).
        tokens: Option<Tally>,
    },
}

impl Mark {
    /// Whether `now` does what this recorded mark did. A recording made
    /// before tokens were tallied summed `usage` differently (deltas of cut
    /// attempts counted as tokens): its end is compared without the usage.
    pub fn matches(&self, now: &Mark) -> bool {
        if self == now {
            return true;
        }
        let mut now = now.clone();
        match (&self.step, &mut now.step) {
            (
                Step::Finished {
                    usage, tokens: None, ..
                },
                Step::Finished {
                    usage: u, tokens: t, ..
                },
            ) => {
                *u = *usage;
                *t = None;
            }
            (Step::Failed { tokens: None, .. }, Step::Failed { tokens: t, .. }) => *t = None,
            _ => return false,
        }
        *self == now
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Attempt {
                number,
                route,
                model,
                mode,
                prefix_bytes,
                ..
            } => write!(
                f,
                "attempt {number} on {route} (model {model}, {}, prefix {prefix_bytes} bytes)",
                mode.as_str()
            ),
            Step::Failure { route, cause, tokens } => {
                write!(f, "{route} failed: {} [{}] after {tokens} deltas", cause, cause.label())
            }
            Step::Retry { route, delay_ms } => write!(f, "retry {route} after {delay_ms} ms"),
            Step::Hedge {
                route,
                hedge_route,
                after_ms,
            } => write!(f, "hedge {route} with {hedge_route} after {after_ms} ms"),
            Step::HedgeWon {
                route,
                by_hedge,
                cancelled,
            } => {
                let side = if *by_hedge { "the hedge" } else { "the late attempt" };
                match cancelled {
                    Some(c) => write!(f, "{side} on {route} wins, {c} cancelled"),
                    None => write!(f, "{side} on {route} goes on alone"),
                }
            }
            Step::CacheHit { last_resort, bytes } => {
                let when = if *last_resort { "as the last resort" } else { "first" };
                write!(f, "the cache answers {when} with {bytes} bytes")
            }
            Step::SafeReply { partial, bytes } => {
                let what = if *partial {
                    "note closes the answer"
                } else {
                    "reply answers"
                };
                write!(f, "the safe {what} with {bytes} bytes")
            }
            Step::Handover {
                from,
                to,
                class,
                reason,
                prefix_bytes,
            } => write!(
                f,
                "handover {from} → {to} ({}, {reason}) with a {prefix_bytes}-byte prefix",
                class.as_str()
            ),
            Step::Writes { route } => write!(f, "{route} writes the text"),
            Step::Finished {
                finish_reason,
                route_chain,
                bytes,
                usage,
                tool_calls,
                tokens,
            } => {
                write!(
                    f,
                    "finished ({finish_reason}), chain {}, {bytes} bytes, usage {}+{} tokens",
                    route_chain.join(" → "),
                    usage.prompt_tokens,
                    usage.completion_tokens
                )?;
                if let Some(t) = tokens {
                    write!(f, ", {}", describe(t))?;
                }
                if !tool_calls.is_empty() {
                    write!(f, ", {} tool-call deltas", tool_calls.len())?;
                }
                Ok(())
            }
            Step::Failed { error, bytes, tokens } => {
                write!(f, "failed after {bytes} bytes: {error}")?;
                match tokens {
                    Some(t) => write!(f, " ({})", describe(t)),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Each attempt's tokens, in a line.
fn describe(tokens: &Tally) -> String {
    let each: Vec<String> = tokens
        .attempts
        .iter()
        .map(|a| match a.reported {
            Some(u) => format!(
                "attempt {} on {}: {}+{}",
                a.attempt, a.route, u.prompt_tokens, u.completion_tokens
            ),
            None => format!("attempt {} on {}: {} deltas, no usage", a.attempt, a.route, a.deltas),
        })
        .collect();
    if each.is_empty() {
        return "no tokens".to_string();
    }
    each.join("; ")
}

/// The transcript of `events` (one session's, in order).
pub fn transcript(events: &[EngineEvent]) -> Transcript {
    let mut t = Transcript::default();
    let mut writer: Option<&str> = None;
    for e in events {
        let at = t.text.len() as u64;
        let step = match &e.kind {
            EventKind::AttemptOpened {
                route,
                model,
                attempt,
                mode,
                prefix_bytes,
                request,
                ..
            } => Step::Attempt {
                number: *attempt,
                route: route.clone(),
                model: model.clone(),
                mode: *mode,
                prefix_bytes: *prefix_bytes,
                request: request.clone(),
            },
            EventKind::Failure { failure, cause } => Step::Failure {
                route: failure.route.clone(),
                cause: cause.clone(),
                tokens: failure.tokens,
            },
            EventKind::Retry { route, delay_ms } => Step::Retry {
                route: route.clone(),
                delay_ms: *delay_ms,
            },
            EventKind::Hedge {
                route,
                hedge_route,
                after_ms,
                ..
            } => Step::Hedge {
                route: route.clone(),
                hedge_route: hedge_route.clone(),
                after_ms: *after_ms,
            },
            EventKind::HedgeWon {
                route,
                by_hedge,
                cancelled,
                ..
            } => Step::HedgeWon {
                route: route.clone(),
                by_hedge: *by_hedge,
                cancelled: cancelled.clone(),
            },
            EventKind::Handover {
                from,
                to,
                class,
                reason,
                prefix_bytes,
                ..
            } => Step::Handover {
                from: from.clone(),
                to: to.clone(),
                class: *class,
                reason: reason.clone(),
                prefix_bytes: *prefix_bytes,
            },
            EventKind::Delta { route, text } => {
                if writer != Some(route.as_str()) {
                    writer = Some(route.as_str());
                    t.marks.push(Mark {
                        at,
                        step: Step::Writes { route: route.clone() },
                    });
                }
                t.text.push_str(text);
                continue;
            }
            EventKind::Finished {
                finish_reason,
                route_chain,
                bytes,
                usage,
                tool_calls,
                tokens,
            } => Step::Finished {
                finish_reason: finish_reason.clone(),
                route_chain: route_chain.clone(),
                bytes: *bytes,
                usage: *usage,
                tool_calls: tool_calls.clone(),
                tokens: tokens.clone(),
            },
            EventKind::CacheHit {
                last_resort, bytes, ..
            } => Step::CacheHit {
                last_resort: *last_resort,
                bytes: *bytes,
            },
            EventKind::SafeReply { partial, bytes } => Step::SafeReply {
                partial: *partial,
                bytes: *bytes,
            },
            EventKind::Failed { error, bytes, tokens } => Step::Failed {
                error: error.clone(),
                bytes: *bytes,
                tokens: tokens.clone(),
            },
            // Breaker changes come from traffic shared across sessions: a skip
            // shows in the session as its own `circuit_open` failure instead.
            EventKind::SessionStarted { .. }
            | EventKind::Upstream { .. }
            // Reasoning is not the answer; the upstream's is re-driven with its timing.
            | EventKind::Reasoning { .. }
            | EventKind::FirstToken { .. }
            | EventKind::Breaker { .. }
            // baton's own probes and its shared-state news belong to no session.
            | EventKind::Probe { .. }
            | EventKind::SharedState { .. }
            // A denied retry shows as the handover that follows it.
            | EventKind::RetryDenied { .. }
            // What fitting dropped shows in the attempt's request, which is compared.
            | EventKind::ContextFitted { .. } => continue,
        };
        t.marks.push(Mark { at, step });
    }
    t
}

// ------------------------------------------------------------ plans

/// One recorded upstream attempt, as a script.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptScript {
    /// Its number.
    pub number: u32,
    /// Its route.
    pub route: String,
    /// When it opened (ms since the session started).
    pub opened_ms: u64,
    /// What the watchdog let through, with times.
    pub items: Vec<(u64, UpstreamItem)>,
    /// How it ended.
    pub end: AttemptEnd,
    /// The deadlines it ran under, as recorded when it opened (`None`: an older recording).
    pub deadlines: Option<Deadlines>,
}

impl AttemptScript {
    /// The deadlines to replay it under, given its route's (whose stall deadline
    /// is the ceiling): the recorded ones, its stall deadline the one that fired
    /// if it stalled, else the larger of the recorded and the ceiling; without
    /// recorded ones (an older recording), its route's.
    pub fn deadlines_or(&self, route: Deadlines) -> Deadlines {
        let Some(mut d) = self.deadlines else {
            return route;
        };
        d.stall = match &self.end {
            AttemptEnd::Failed {
                cause: FailureKind::Stall { after },
                ..
            } => *after,
            _ => d.stall.max(route.stall),
        };
        d
    }
}

/// How a recorded attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptEnd {
    /// With a finish reason (the last item).
    Finished,
    /// With this failure, at this time.
    Failed {
        /// Ms since the session started.
        at_ms: u64,
        /// The failure.
        cause: FailureKind,
    },
    /// A hedge race cancelled it (replayed as silence: the re-drive's race cancels it again).
    Cancelled,
    /// The recording stops first.
    Unknown,
}

/// Everything needed to re-drive one session.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The session id (it seeds the retry jitter).
    pub session: Uuid,
    /// The ladder's name.
    pub ladder: String,
    /// The ladder.
    pub spec: LadderSpec,
    /// The caller's request.
    pub request: RequestSpec,
    /// The upstream attempts.
    pub attempts: Vec<AttemptScript>,
    /// Per route, the retry budget's recorded answers in order (`true`: allowed).
    pub budget: std::collections::HashMap<String, Vec<bool>>,
    /// The answer the response cache gave, if it answered: where (`true`: as
    /// the last resort) and the answer as it was stored.
    pub cached: Option<(bool, CachedAnswer)>,
    /// Routes already known, when the session began, to reject prefill.
    pub no_prefill: Vec<String>,
    /// (route, model, mode) already known, when the session began, to echo.
    pub echoes: Vec<(String, String, ContinuationMode)>,
    /// Routes whose provider stripped a prefill's trailing whitespace.
    pub stripped: Vec<String>,
    /// The hedge delays used, by the number of the attempt that was hedged.
    pub hedges: std::collections::HashMap<u32, Duration>,
    /// The recorded transcript.
    pub recorded: Transcript,
    /// Whether the recording includes the session's end.
    pub ended: bool,
    /// Events recorded.
    pub events: usize,
}

/// The plan for `session`, or why it cannot be re-driven.
pub fn plan(session: &RecordedSession) -> Result<Plan, Outcome> {
    if session.corrupt {
        return Err(Outcome::Corrupt {
            reason: "a line of its recording could not be read (see the errors above)".into(),
        });
    }
    if session.version < MIN_VERIFY_VERSION {
        return Err(Outcome::Incompatible {
            reason: format!(
                "recorded in format v{}; --verify re-drives v{MIN_VERIFY_VERSION} to v{FORMAT_VERSION}",
                session.version
            ),
        });
    }
    if let Some(gap) = session.gaps.first() {
        let dropped: u64 = session.gaps.iter().map(|g| g.dropped).sum();
        return Err(Outcome::Unverifiable {
            reason: if dropped > 0 {
                format!(
                    "the recorder dropped events while it ran ({dropped} lost from the feed): {}",
                    gap.reason
                )
            } else {
                gap.reason.clone()
            },
        });
    }
    let Some(first) = session.events.first() else {
        return Err(Outcome::Unverifiable {
            reason: "no events recorded".into(),
        });
    };
    let EventKind::SessionStarted {
        ladder, spec, request, ..
    } = &first.kind
    else {
        return Err(Outcome::Unverifiable {
            reason: "its start was not recorded".into(),
        });
    };
    let (Some(spec), Some(request)) = (spec, request) else {
        return Err(Outcome::Incompatible {
            reason: "its session_started line has no ladder description or request (recorded by an older baton): it cannot be re-driven".into(),
        });
    };
    let mut attempts: Vec<AttemptScript> = Vec::new();
    for e in &session.events {
        match &e.kind {
            EventKind::AttemptOpened {
                route,
                attempt,
                deadlines,
                ..
            } => attempts.push(AttemptScript {
                number: *attempt,
                route: route.clone(),
                opened_ms: e.t_ms,
                items: Vec::new(),
                end: AttemptEnd::Unknown,
                deadlines: deadlines.as_deref().copied(),
            }),
            EventKind::Upstream { attempt, item } => {
                let Some(a) = attempts.iter_mut().rev().find(|a| a.number == *attempt) else {
                    return Err(Outcome::Corrupt {
                        reason: format!("an upstream item of attempt {attempt}, which was never opened"),
                    });
                };
                if matches!(item, UpstreamItem::Finished(_)) {
                    a.end = AttemptEnd::Finished;
                }
                a.items.push((e.t_ms, item.clone()));
            }
            EventKind::Failure { failure, cause } => {
                // The latest attempt on the failure's route: with a hedge running, it may not be the last opened.
                let on_route = attempts.iter().rposition(|a| a.route == failure.route);
                let i = on_route.or(attempts.len().checked_sub(1));
                if let Some(a) = i.and_then(|i| attempts.get_mut(i)) {
                    a.end = AttemptEnd::Failed {
                        at_ms: e.t_ms,
                        cause: cause.clone(),
                    };
                }
            }
            EventKind::HedgeWon {
                cancelled_attempt: Some(n),
                ..
            } => {
                if let Some(a) = attempts.iter_mut().rev().find(|a| a.number == *n) {
                    a.end = AttemptEnd::Cancelled;
                }
            }
            _ => {}
        }
    }
    // The splicer skips a route the request cannot fit by itself, without asking
    // the provider; the re-drive does the same, so such attempts get no script.
    attempts.retain(|a| !matches!(&a.end, AttemptEnd::Failed { cause, .. } if cause.decided_before_upstream()));
    let mut budget: std::collections::HashMap<String, Vec<bool>> = std::collections::HashMap::new();
    let mut hedges = std::collections::HashMap::new();
    for e in &session.events {
        match &e.kind {
            EventKind::Hedge { attempt, after_ms, .. } => {
                hedges.insert(*attempt, Duration::from_millis(*after_ms));
            }
            EventKind::Retry { route, .. } => budget.entry(route.clone()).or_default().push(true),
            EventKind::RetryDenied { route } => budget.entry(route.clone()).or_default().push(false),
            _ => {}
        }
    }
    Ok(Plan {
        cached: cached_answer(&session.events),
        no_prefill: known_no_prefill(spec, &session.events),
        echoes: known_echoes(&session.events),
        stripped: stripping_routes(&session.events),
        hedges,
        session: session.id,
        ladder: ladder.clone(),
        spec: (**spec).clone(),
        request: (**request).clone(),
        attempts,
        budget,
        recorded: transcript(&session.events),
        ended: session.ended(),
        events: session.events.len(),
    })
}

/// Routes configured for prefill whose first attempt in the session was by
/// instruction: an earlier session had taught the route that it rejects prefill.
fn known_no_prefill(spec: &LadderSpec, events: &[EngineEvent]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut known = Vec::new();
    for e in events {
        if let EventKind::AttemptOpened { route, mode, .. } = &e.kind {
            let prefill = spec
                .routes
                .iter()
                .any(|r| r.name == *route && r.continuation == ContinuationMode::Prefill);
            if seen.insert(route.clone()) && prefill && *mode == ContinuationMode::Instruct {
                known.push(route.clone());
            }
        }
    }
    known
}

/// Routes an attempt of the session recorded as stripping a prefill's trailing whitespace.
fn stripping_routes(events: &[EngineEvent]) -> Vec<String> {
    let mut routes: Vec<String> = Vec::new();
    for e in events {
        if let EventKind::AttemptOpened {
            route, stripped: true, ..
        } = &e.kind
        {
            if !routes.contains(route) {
                routes.push(route.clone());
            }
        }
    }
    routes
}

/// (route, model, mode) whose first attempt in the session opened already
/// knowing it echoes: an earlier session had taught the route.
fn known_echoes(events: &[EngineEvent]) -> Vec<(String, String, ContinuationMode)> {
    let mut seen = std::collections::HashSet::new();
    let mut known = Vec::new();
    for e in events {
        if let EventKind::AttemptOpened {
            route,
            model,
            mode,
            seen_echoing,
            ..
        } = &e.kind
        {
            let key = (route.clone(), model.clone(), *mode);
            if seen.insert(key.clone()) && *seen_echoing {
                known.push(key);
            }
        }
    }
    known
}

/// The cache's answer in a recorded session: the text the client had when it
/// answered, then the deltas it sent, so a re-drive's cache holds the same answer.
fn cached_answer(events: &[crate::engine::event::EngineEvent]) -> Option<(bool, CachedAnswer)> {
    let mut before = String::new();
    let mut hit = None;
    let mut deltas = Vec::new();
    let mut finish_reason = String::new();
    for e in events {
        match &e.kind {
            EventKind::CacheHit { last_resort, .. } => hit = Some(*last_resort),
            EventKind::Delta { route, text } if hit.is_some() && route == CACHE_ROUTE => deltas.push(text.clone()),
            EventKind::Delta { text, .. } if hit.is_none() => before.push_str(text),
            EventKind::Finished { finish_reason: r, .. } => finish_reason = r.clone(),
            _ => {}
        }
    }
    Some((hit?, CachedAnswer::as_served(before, deltas, finish_reason)))
}

// ------------------------------------------------------------ scripted providers

/// Why a re-drive stopped early.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// The recording of the last attempt stops here (the session's end was not recorded).
    RecordingEnds,
    /// The splicer asked for an attempt the recording does not have.
    Unrecorded(String),
}

/// The recorded attempts, handed out in order to whichever route asks.
struct Book {
    attempts: Vec<AttemptScript>,
    next: AtomicUsize,
    stop: Mutex<Option<Stop>>,
    notify: Notify,
}

impl Book {
    fn halt(&self, stop: Stop) {
        if let Ok(mut s) = self.stop.lock() {
            s.get_or_insert(stop);
        }
        self.notify.notify_one();
    }

    fn stopped(&self) -> Option<Stop> {
        self.stop.lock().ok().and_then(|s| s.clone())
    }
}

struct Scripted {
    route: String,
    deadlines: Deadlines,
    book: Arc<Book>,
    /// The recorded route's provider stripped a prefill's trailing whitespace.
    stripped: bool,
}

/// One step of a replayed attempt, at an offset from its start.
#[derive(Clone, Debug, PartialEq)]
struct Timed {
    at: Duration,
    what: What,
}

#[derive(Clone, Debug, PartialEq)]
enum What {
    Chunk(Chunk),
    End,
    Fail(FailureKind),
    Silent,
    RecordingEnds,
}

/// The replay of `script` for a route with deadlines `d`.
fn schedule(script: &AttemptScript, d: Deadlines) -> Vec<Timed> {
    // Shortened silences move everything after them earlier by as much.
    let mut shift = Duration::ZERO;
    let offset =
        |t_ms: u64, shift: Duration| Duration::from_millis(t_ms.saturating_sub(script.opened_ms)).saturating_sub(shift);
    // The latest the next item may come without tripping a deadline the recording shows it did not trip.
    let latest = |prev: Duration, seen_text: bool, seen_answer: bool| {
        let (deadline, _) = d.next_wait(prev, seen_text, seen_answer);
        deadline.checked_sub(MARGIN).unwrap_or(deadline).max(prev)
    };
    let mut out = Vec::new();
    let mut prev = Duration::ZERO;
    let mut seen_text = false;
    let mut seen_answer = false;
    for (t, item) in &script.items {
        let want = offset(*t, shift).max(prev);
        let chunk = match item {
            UpstreamItem::Finished(reason) => {
                // The finish reason arrived with or before the previous item at the
                // latest; the watchdog released it when the stream ended.
                out.push(Timed {
                    at: prev,
                    what: What::Chunk(Chunk::Finish(reason.clone())),
                });
                out.push(Timed {
                    at: want,
                    what: What::End,
                });
                return out;
            }
            UpstreamItem::Text(text) => Chunk::Text(text.clone()),
            UpstreamItem::ToolCalls(calls) => Chunk::ToolCalls(calls.clone()),
            UpstreamItem::Usage(usage) => Chunk::Usage(*usage),
            UpstreamItem::Reasoning { text, field } => Chunk::Reasoning {
                text: text.clone(),
                field: *field,
            },
        };
        let at = want.min(latest(prev, seen_text, seen_answer));
        shift += want - at;
        seen_text |= matches!(
            item,
            UpstreamItem::Text(_) | UpstreamItem::ToolCalls(_) | UpstreamItem::Reasoning { .. }
        );
        seen_answer |= matches!(item, UpstreamItem::Text(_) | UpstreamItem::ToolCalls(_));
        out.push(Timed {
            at,
            what: What::Chunk(chunk),
        });
        prev = at;
    }
    let end = match &script.end {
        AttemptEnd::Failed { cause, .. } if cause.detected_by_engine() => Timed {
            at: prev,
            what: What::Silent,
        },
        AttemptEnd::Failed { at_ms, cause } => Timed {
            at: offset(*at_ms, shift)
                .max(prev)
                .min(latest(prev, seen_text, seen_answer)),
            what: What::Fail(cause.clone()),
        },
        AttemptEnd::Finished => Timed {
            at: prev,
            what: What::End,
        },
        AttemptEnd::Cancelled => Timed {
            at: prev,
            what: What::Silent,
        },
        AttemptEnd::Unknown => Timed {
            at: prev,
            what: What::RecordingEnds,
        },
    };
    out.push(end);
    out
}

impl Provider for Scripted {
    fn strips_trailing_whitespace(&self, _mode: ContinuationMode) -> bool {
        self.stripped
    }

    fn stream(&self, _request: UpstreamRequest) -> ChunkStream {
        let k = self.book.next.fetch_add(1, Ordering::SeqCst);
        let Some(script) = self.book.attempts.get(k) else {
            self.book.halt(Stop::Unrecorded(format!(
                "the splicer opened attempt {} (on {}), but the recording has {}",
                k + 1,
                self.route,
                self.book.attempts.len()
            )));
            return Box::pin(futures::stream::pending());
        };
        if script.route != self.route {
            self.book.halt(Stop::Unrecorded(format!(
                "attempt {} went to {}, but was recorded on {}",
                k + 1,
                self.route,
                script.route
            )));
            return Box::pin(futures::stream::pending());
        }
        let steps = schedule(script, script.deadlines_or(self.deadlines));
        let book = self.book.clone();
        let start = Instant::now();
        Box::pin(async_stream::stream! {
            for step in steps {
                let at = start + step.at;
                if at > Instant::now() {
                    tokio::time::sleep_until(at).await;
                }
                match step.what {
                    What::Chunk(chunk) => yield Ok(chunk),
                    What::End => return,
                    What::Fail(kind) => {
                        yield Err(kind);
                        return;
                    }
                    What::Silent => futures::future::pending::<()>().await,
                    What::RecordingEnds => {
                        book.halt(Stop::RecordingEnds);
                        futures::future::pending::<()>().await;
                    }
                }
            }
        })
    }
}

// ------------------------------------------------------------ re-drive

/// What a re-drive produced.
#[derive(Clone, Debug)]
pub struct Redriven {
    /// The transcript now.
    pub transcript: Transcript,
    /// Why it stopped early, if it did.
    pub stop: Option<Stop>,
    /// It ran past the virtual-time limit.
    pub stuck: bool,
    /// Events the re-drive itself lost (never expected).
    pub lost: u64,
}

/// A route's decisions in a re-drive: what its recording shows, in order, so
/// decisions made under live traffic (from a history the re-drive does not
/// have) repeat.
#[derive(Debug)]
pub struct Script {
    /// Retry-budget answers (`true`: allowed); allowed once the recording has no more.
    budget: Mutex<VecDeque<bool>>,
    /// Each attempt's effective deadlines (`None`: not recorded, computed as usual).
    deadlines: Mutex<VecDeque<Option<Deadlines>>>,
    /// The session's recorded hedge delays by attempt number (attempts absent were not hedged).
    hedges: Arc<HashMap<u32, Duration>>,
}

impl Script {
    /// The script of retry `budget` answers, attempt `deadlines` (this route's,
    /// in order) and the session's `hedges`.
    pub fn new(
        budget: impl IntoIterator<Item = bool>,
        deadlines: impl IntoIterator<Item = Option<Deadlines>>,
        hedges: Arc<HashMap<u32, Duration>>,
    ) -> Self {
        Script {
            budget: Mutex::new(budget.into_iter().collect()),
            deadlines: Mutex::new(deadlines.into_iter().collect()),
            hedges,
        }
    }
}

/// A poisoned lock only means another re-drive task panicked; the queue is still usable.
fn take<T>(queue: &Mutex<VecDeque<T>>) -> Option<T> {
    queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .pop_front()
}

impl Decisions for Script {
    fn allow_retry(&self, _model: &ModelHealth) -> bool {
        take(&self.budget).unwrap_or(true)
    }

    fn deadlines(&self) -> Option<Deadlines> {
        take(&self.deadlines).flatten()
    }

    fn own_cadence(&self) -> bool {
        false
    }

    fn hedge_delay(&self, attempt: u32, _live: &dyn Fn() -> Option<Duration>) -> Option<Duration> {
        self.hedges.get(&attempt).copied()
    }
}

/// Re-drives `plan` through the current splicer. Run it on a runtime with a paused clock
/// (`tokio::time::pause`), or it takes as long as the recorded session did.
pub async fn redrive(plan: &Plan) -> Redriven {
    let book = Arc::new(Book {
        attempts: plan.attempts.clone(),
        next: AtomicUsize::new(0),
        stop: Mutex::new(None),
        notify: Notify::new(),
    });
    let mut ladder = plan.spec.build(&plan.ladder, |r| {
        Arc::new(Scripted {
            route: r.name.clone(),
            deadlines: r.deadlines(),
            book: book.clone(),
            stripped: plan.stripped.contains(&r.name),
        }) as Arc<dyn Provider>
    });
    let request = plan.request.build(plan.session);
    let asked = request.model.as_deref();
    // Hedge when the recording did, after the recorded delay: a re-drive has no first-token history.
    let hedges = Arc::new(plan.hedges.clone());
    for (route, spec) in ladder.routes.iter_mut().zip(&plan.spec.routes) {
        let answers = plan.budget.get(&*route.name).cloned().unwrap_or_default();
        let deadlines = plan
            .attempts
            .iter()
            .filter(|a| a.route == *route.name)
            .map(|a| a.deadlines.map(|_| a.deadlines_or(route.deadlines)));
        route.decisions = Arc::new(Script::new(answers, deadlines, hedges.clone()));
        let health = route.health_for(asked);
        if plan.no_prefill.iter().any(|r| *r == *route.name) {
            health.remember_no_prefill();
        }
        for (_, model, mode) in plan.echoes.iter().filter(|(r, _, _)| *r == *route.name) {
            route.health.model(model).remember_echo(*mode);
        }
        if let Some(window) = spec.learned_context_tokens {
            health.learn_window(window);
        }
    }
    if let Some((last_resort, answer)) = &plan.cached {
        let store = Arc::new(ResponseCache::new(CacheLimits::default()));
        store.put(ResponseCache::key(&request), answer.clone());
        let uses = if *last_resort {
            CacheUse::LastResort
        } else {
            CacheUse::First
        };
        ladder.cache = Some(CacheRung { uses, store });
    }
    let bus = EventBus::new(EVENT_CAPACITY.max(plan.events * 2 + 1024));
    let mut rx = bus.subscribe();
    let splicer = Splicer::with_events(ladder, bus);
    let mut stream = splicer.splice(request);
    let limit = tokio::time::sleep(VIRTUAL_LIMIT);
    tokio::pin!(limit);
    let mut events = Vec::new();
    let mut lost = 0;
    let mut stuck = false;
    loop {
        tokio::select! {
            biased;
            received = rx.recv() => match received {
                Ok(event) => events.push(event),
                Err(RecvError::Lagged(n)) => lost += n,
                Err(RecvError::Closed) => break,
            },
            item = stream.next() => if item.is_none() { break },
            _ = book.notify.notified() => break,
            _ = &mut limit => {
                stuck = true;
                break;
            }
        }
    }
    drop(stream);
    loop {
        match rx.try_recv() {
            Ok(event) => events.push(event),
            Err(TryRecvError::Lagged(n)) => lost += n,
            Err(_) => break,
        }
    }
    Redriven {
        transcript: transcript(&events),
        stop: book.stopped(),
        stuck,
        lost,
    }
}

/// Verifies one session. Run it on a runtime with a paused clock (see [`redrive`]).
pub async fn verify_session(session: &RecordedSession) -> Verdict {
    let recorded = transcript(&session.events);
    let mut verdict = Verdict {
        session: session.id,
        file: session.file().to_path_buf(),
        ladder: session.ladder().to_string(),
        attempts: recorded
            .marks
            .iter()
            .filter(|m| matches!(m.step, Step::Attempt { .. }))
            .count(),
        handovers: recorded
            .marks
            .iter()
            .filter(|m| matches!(m.step, Step::Handover { .. }))
            .count(),
        bytes: recorded.text.len() as u64,
        outcome: Outcome::Ok { partial: false },
    };
    let plan = match plan(session) {
        Ok(plan) => plan,
        Err(outcome) => {
            verdict.outcome = outcome;
            return verdict;
        }
    };
    let now = redrive(&plan).await;
    verdict.outcome = judge(&plan, &now);
    verdict
}

fn judge(plan: &Plan, now: &Redriven) -> Outcome {
    if now.lost > 0 {
        return Outcome::Unverifiable {
            reason: format!("the re-drive lost {} of its own events", now.lost),
        };
    }
    let partial = !plan.ended;
    let stopped = match (&now.stop, now.stuck) {
        (_, true) => Some("the re-drive did not end within 24 h of virtual time".to_string()),
        (Some(Stop::Unrecorded(why)), _) => Some(why.clone()),
        (Some(Stop::RecordingEnds), _) => Some("the recording stops here".to_string()),
        (None, false) => None,
    };
    if let Some(d) = compare(&plan.recorded, &now.transcript, partial, stopped.as_deref()) {
        return Outcome::Diverged(d);
    }
    match (&now.stop, now.stuck, partial) {
        (_, _, true) => Outcome::Ok { partial: true },
        (None, false, false) => Outcome::Ok { partial: false },
        _ => Outcome::Diverged(Divergence {
            at: now.transcript.text.len() as u64,
            what: "the re-drive stopped early".into(),
            recorded: "the session went on".into(),
            now: stopped.unwrap_or_default(),
        }),
    }
}

/// Runs `f` with a fresh current-thread runtime whose clock is paused, on its own
/// thread (so it may be called from anywhere, async code included).
pub fn in_virtual_time<T: Send>(f: impl FnOnce(&tokio::runtime::Runtime) -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .start_paused(true)
                    .build()?;
                Ok(f(&runtime))
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the re-drive panicked")))
    })
}

/// Verifies `sessions` in virtual time (see [`in_virtual_time`]).
pub fn verify(sessions: &[RecordedSession]) -> Vec<Verdict> {
    let verified = in_virtual_time(|rt| {
        sessions
            .iter()
            .map(|s| rt.block_on(verify_session(s)))
            .collect::<Vec<_>>()
    });
    verified.unwrap_or_else(|e| {
        sessions
            .iter()
            .map(|s| Verdict {
                session: s.id,
                file: s.file().to_path_buf(),
                ladder: s.ladder().to_string(),
                attempts: 0,
                handovers: 0,
                bytes: 0,
                outcome: Outcome::Unverifiable {
                    reason: format!("no runtime for the re-drive: {e}"),
                },
            })
            .collect()
    })
}

// ------------------------------------------------------------ comparison

/// The first difference between `rec` and `now` (`partial`: `rec` is a prefix of the session).
pub fn compare(rec: &Transcript, now: &Transcript, partial: bool, stopped: Option<&str>) -> Option<Divergence> {
    let common = rec
        .text
        .bytes()
        .zip(now.text.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let text_at = (common < rec.text.len() || (!partial && common < now.text.len())).then_some(common);
    let mut mark_at = None;
    for i in 0.. {
        match (rec.marks.get(i), now.marks.get(i)) {
            (Some(a), Some(b)) if a.matches(b) => continue,
            (None, None) => break,
            (None, Some(_)) if partial => break,
            (a, b) => {
                let at = match (a, b) {
                    (Some(a), Some(b)) => a.at.min(b.at),
                    (Some(m), None) | (None, Some(m)) => m.at,
                    (None, None) => 0,
                };
                mark_at = Some((at, i, a, b));
                break;
            }
        }
    }
    match (text_at, mark_at) {
        (None, None) => None,
        (text, Some((at, i, a, b))) if text.is_none_or(|t| at <= t as u64) => {
            // Only handovers before the step that differs.
            let before = &rec.marks[..i.min(rec.marks.len())];
            Some(mark_divergence(before, at, a, b, stopped))
        }
        (Some(t), _) => Some(text_divergence(rec, now, t, stopped)),
        (None, Some(_)) => None,
    }
}

fn mark_divergence(before: &[Mark], at: u64, a: Option<&Mark>, b: Option<&Mark>, stopped: Option<&str>) -> Divergence {
    let show = |m: Option<&Mark>, missing: &str| match m {
        Some(m) if m.at != at => format!("{} (at byte {})", m.step, m.at),
        Some(m) => m.step.to_string(),
        None => missing.to_string(),
    };
    let recorded = show(a, "nothing more: the recording ends here");
    let gone = match stopped {
        Some(why) => format!("nothing: the re-drive stopped ({why})"),
        None => "nothing: the session ended".to_string(),
    };
    let mut now = show(b, &gone);
    let mut what = format!("first divergence at byte {at}{}", seam(before, at));
    if let (
        Some(Mark {
            step: Step::Attempt {
                request: ra, number, ..
            },
            ..
        }),
        Some(Mark {
            step: Step::Attempt { request: rb, .. },
            ..
        }),
    ) = (a, b)
    {
        if ra != rb {
            let (what_differs, r, n) = request_diff(ra, rb);
            what = format!("{what}: the request of attempt {number} differs ({what_differs})");
            return Divergence {
                at,
                what,
                recorded: r,
                now: n,
            };
        }
    }
    if a.is_some() && b.is_some() {
        what.push_str(": a different decision");
    } else if b.is_none() {
        what.push_str(": the re-drive is missing a step");
        now = gone;
    } else {
        what.push_str(": the re-drive took an extra step");
    }
    Divergence {
        at,
        what,
        recorded,
        now,
    }
}

fn text_divergence(rec: &Transcript, now: &Transcript, at: usize, stopped: Option<&str>) -> Divergence {
    let at_boundary =
        floor_boundary(&rec.text, at.min(rec.text.len())).min(floor_boundary(&now.text, at.min(now.text.len())));
    let before = &rec.text[floor_boundary(&rec.text, at_boundary.saturating_sub(32))..at_boundary];
    let after = |t: &str| {
        let end = ceil_boundary(t, (at_boundary + 32).min(t.len()));
        let rest = &t[at_boundary..end];
        if rest.is_empty() {
            "(end)".to_string()
        } else if end < t.len() {
            format!("{rest:?}…")
        } else {
            format!("{rest:?}")
        }
    };
    let lead = if at_boundary > 32 { "…" } else { "" };
    let mut now_side = format!("{lead}{before:?} | {}", after(&now.text));
    if at >= now.text.len() {
        if let Some(why) = stopped {
            now_side.push_str(&format!(" (the re-drive stopped: {why})"));
        }
    }
    Divergence {
        at: at as u64,
        what: format!(
            "first divergence at byte {at} of the client text{}",
            seam(&rec.marks, at as u64)
        ),
        recorded: format!("{lead}{before:?} | {}", after(&rec.text)),
        now: now_side,
    }
}

/// ` (N bytes after the seam of handover A → B at byte S)`, when there was one before `at`.
fn seam(marks: &[Mark], at: u64) -> String {
    let last = marks.iter().rev().find_map(|m| match &m.step {
        Step::Handover { from, to, reason, .. } if m.at <= at => Some((m.at, from, to, reason)),
        _ => None,
    });
    match last {
        Some((s, from, to, reason)) if s == at => {
            format!(", at the seam of the handover {from} → {to} ({reason})")
        }
        Some((s, from, to, reason)) => {
            format!(
                ", {} bytes after the seam of the handover {from} → {to} ({reason}) at byte {s}",
                at - s
            )
        }
        None => String::new(),
    }
}

/// What differs between two requests: (what, recorded, now).
fn request_diff(a: &UpstreamRequest, b: &UpstreamRequest) -> (String, String, String) {
    if a.model != b.model {
        return ("model".into(), a.model.clone(), b.model.clone());
    }
    if a.continue_final_message != b.continue_final_message {
        return (
            "continue_final_message".into(),
            a.continue_final_message.to_string(),
            b.continue_final_message.to_string(),
        );
    }
    for (i, (ma, mb)) in a.messages.iter().zip(&b.messages).enumerate() {
        if ma.role != mb.role {
            return (
                format!("messages[{i}].role"),
                format!("{:?}", ma.role),
                format!("{:?}", mb.role),
            );
        }
        if ma.content != mb.content {
            let t = compare(
                &Transcript {
                    text: ma.content.clone(),
                    marks: Vec::new(),
                },
                &Transcript {
                    text: mb.content.clone(),
                    marks: Vec::new(),
                },
                false,
                None,
            );
            if let Some(d) = t {
                return (format!("messages[{i}].content at byte {}", d.at), d.recorded, d.now);
            }
        }
        if ma.extra != mb.extra {
            return (
                format!("messages[{i}] fields"),
                serde_json::to_string(&ma.extra).unwrap_or_default(),
                serde_json::to_string(&mb.extra).unwrap_or_default(),
            );
        }
    }
    if a.messages.len() != b.messages.len() {
        let show = |r: &UpstreamRequest| {
            format!(
                "{} messages, the last: {}",
                r.messages.len(),
                r.messages
                    .last()
                    .map(|m| format!("{:?} {:?}", m.role, m.content))
                    .unwrap_or_default()
            )
        };
        return ("messages".into(), show(a), show(b));
    }
    (
        "params".into(),
        serde_json::to_string(&a.params).unwrap_or_default(),
        serde_json::to_string(&b.params).unwrap_or_default(),
    )
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_script_gives_the_recorded_decisions_in_order_whatever_the_health_says() {
        let health = crate::policy::health::RouteHealth::default().model("m");
        for _ in 0..10 {
            health.record_ttft(Duration::from_millis(50));
        }
        let recorded = Deadlines {
            first_token: Duration::from_millis(1234),
            ..Deadlines::default()
        };
        let script = Script::new(
            [false, true],
            [Some(recorded), None],
            Arc::new(HashMap::from([(3, Duration::from_millis(70))])),
        );
        let live = || Some(Duration::from_millis(50));
        assert!(
            !script.allow_retry(&health),
            "refused as recorded, though the budget is unspent"
        );
        assert!(script.allow_retry(&crate::policy::health::RouteHealth::default().model("other")));
        assert!(script.allow_retry(&health), "past the recording: allowed");
        assert_eq!(script.deadlines(), Some(recorded));
        assert_eq!(script.deadlines(), None, "not recorded: computed");
        assert_eq!(script.hedge_delay(1, &live), None, "not hedged in the recording");
        assert_eq!(script.hedge_delay(3, &live), Some(Duration::from_millis(70)));
        assert!(!script.own_cadence());
        let live_decisions = crate::policy::health::Live;
        assert_eq!(live_decisions.hedge_delay(1, &live), live());
        assert!(live_decisions.allow_retry(&health) && live_decisions.own_cadence());
    }

    fn script(items: Vec<(u64, UpstreamItem)>, end: AttemptEnd) -> AttemptScript {
        AttemptScript {
            number: 1,
            route: "r".into(),
            opened_ms: 100,
            items,
            end,
            deadlines: None,
        }
    }

    fn deadlines() -> Deadlines {
        Deadlines {
            first_token: Duration::from_millis(1000),
            stall: Duration::from_millis(400),
            total: Duration::from_secs(60),
            reasoning_budget: None,
        }
    }

    fn text(s: &str) -> UpstreamItem {
        UpstreamItem::Text(s.into())
    }

    #[test]
    fn gaps_a_slow_client_stretched_are_shortened_under_the_deadline() {
        let s = script(
            vec![(1500, text("a")), (1700, text("b")), (2500, text("c"))],
            AttemptEnd::Failed {
                at_ms: 2600,
                cause: FailureKind::Malformed { detail: "x".into() },
            },
        );
        let steps = schedule(&s, deadlines());
        let at: Vec<u64> = steps.iter().map(|t| t.at.as_millis() as u64).collect();
        // First token shortened to under 1000 ms; "b" 200 ms later, as recorded; "c" under the
        // stall; the failure 100 ms after "c", as recorded.
        assert_eq!(at, vec![999, 1199, 1598, 1698]);
        assert_eq!(steps[3].what, What::Fail(FailureKind::Malformed { detail: "x".into() }));
    }

    #[test]
    fn an_attempt_replays_under_its_recorded_deadlines() {
        // Opened with an adaptive stall of 100 ms and a first-token deadline of 700 ms.
        let recorded = Deadlines {
            first_token: Duration::from_millis(700),
            stall: Duration::from_millis(100),
            ..deadlines()
        };
        // It stalled under 250 ms (the stream's own cadence raised it mid-attempt):
        // the re-drive waits exactly that, and keeps the gaps before it under it.
        let stalled = AttemptScript {
            deadlines: Some(recorded),
            ..script(
                vec![(130, text("a")), (430, text("b"))],
                AttemptEnd::Failed {
                    at_ms: 680,
                    cause: FailureKind::Stall {
                        after: Duration::from_millis(250),
                    },
                },
            )
        };
        let d = stalled.deadlines_or(deadlines());
        assert_eq!(
            d,
            Deadlines {
                stall: Duration::from_millis(250),
                ..recorded
            }
        );
        let at: Vec<u64> = schedule(&stalled, d).iter().map(|t| t.at.as_millis() as u64).collect();
        assert_eq!(at, vec![30, 279, 279]);
        // Finished: no stall fired, under whatever the cadence made of it; the re-drive
        // takes the route's ceiling (400 ms), and the 300 ms gap is replayed as recorded.
        let finished = AttemptScript {
            deadlines: Some(recorded),
            ..script(vec![(130, text("a")), (430, text("b"))], AttemptEnd::Finished)
        };
        let d = finished.deadlines_or(deadlines());
        assert_eq!(
            d,
            Deadlines {
                stall: Duration::from_millis(400),
                ..recorded
            }
        );
        let at: Vec<u64> = schedule(&finished, d).iter().map(|t| t.at.as_millis() as u64).collect();
        assert_eq!(at, vec![30, 330, 330]);
        // An older recording: the route's own.
        let old = script(vec![(130, text("a"))], AttemptEnd::Finished);
        assert_eq!(old.deadlines_or(deadlines()), deadlines());
    }

    #[test]
    fn deadline_failures_replay_as_silence_and_finishes_arrive_early() {
        let stall = script(
            vec![(130, text("a"))],
            AttemptEnd::Failed {
                at_ms: 530,
                cause: FailureKind::Stall {
                    after: Duration::from_millis(400),
                },
            },
        );
        let steps = schedule(&stall, deadlines());
        assert_eq!(steps.last().map(|t| &t.what), Some(&What::Silent));
        let finished = script(
            vec![(130, text("a")), (900, UpstreamItem::Finished("stop".into()))],
            AttemptEnd::Finished,
        );
        let steps = schedule(&finished, deadlines());
        assert_eq!(steps[1].at, Duration::from_millis(30));
        assert_eq!(steps[1].what, What::Chunk(Chunk::Finish("stop".into())));
        assert_eq!((steps[2].at, &steps[2].what), (Duration::from_millis(800), &What::End));
    }

    #[test]
    fn a_text_divergence_points_at_the_seam() {
        let mark = |at, step| Mark { at, step };
        let handover = Step::Handover {
            from: "a".into(),
            to: "b".into(),
            class: FailureClass::Technical,
            reason: "stall".into(),
            prefix_bytes: 10,
        };
        let rec = Transcript {
            text: "0123456789 and on".into(),
            marks: vec![mark(10, handover.clone())],
        };
        let now = Transcript {
            text: "0123456789 XYZ and on".into(),
            marks: vec![mark(10, handover)],
        };
        let d = compare(&rec, &now, false, None).expect("diverges");
        assert_eq!(d.at, 11);
        assert!(
            d.what.contains("1 bytes after the seam of the handover a → b"),
            "{}",
            d.what
        );
        assert_eq!(d.recorded, r#""0123456789 " | "and on""#);
        assert_eq!(d.now, r#""0123456789 " | "XYZ and on""#);
        assert!(compare(&rec, &rec, false, None).is_none());
        // A partial recording only has to be a prefix.
        let head = Transcript {
            text: "0123".into(),
            marks: Vec::new(),
        };
        assert!(compare(&head, &rec, true, None).is_none());
        assert!(compare(&head, &rec, false, None).is_some());
    }
}
