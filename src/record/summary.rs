//! `baton replay --summary`: per session, the route chain, failures,
//! handovers, gap, bytes and tokens; totals at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

use super::human_bytes;
use super::reader::{RecordedSession, Recording};
use crate::door::Door;
use crate::engine::event::{EngineEvent, EventKind, UpstreamItem};
use crate::usage::{self, AttemptTokens, Tally};

/// One session, summarized.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionSummary {
    /// Its id.
    pub session: Uuid,
    /// Its file.
    pub file: PathBuf,
    /// Its ladder.
    pub ladder: String,
    /// The client API it came through (none for library callers and older recordings).
    pub door: Option<Door>,
    /// `finished`, `failed` or `incomplete` (the recording stops before the end).
    pub outcome: &'static str,
    /// The finish reason, when it finished.
    pub finish_reason: Option<String>,
    /// The error, when it failed.
    pub error: Option<String>,
    /// The routes that wrote the answer, in order.
    pub route_chain: Vec<String>,
    /// Upstream attempts.
    pub attempts: u32,
    /// Same-route retries.
    pub retries: u32,
    /// Failed attempts: route and kind.
    pub failures: Vec<FailureSummary>,
    /// Handovers.
    pub handovers: Vec<HandoverSummary>,
    /// The longest handover gap.
    pub gap_ms: Option<u64>,
    /// Bytes the client received.
    pub bytes: u64,
    /// Prompt tokens, as the upstreams reported them, over every attempt (cut ones included).
    pub prompt_tokens: u64,
    /// Completion tokens, as the upstreams reported them, over every attempt.
    pub completion_tokens: u64,
    /// Text deltas of the attempts that reported no usage (chunks, not tokens).
    pub unreported_deltas: u64,
    /// From the start to the last recorded event.
    pub duration_ms: u64,
    /// The recorder lost events here.
    pub gaps: usize,
    /// Events the recorder lost from the feed while this session was open (of any session).
    pub dropped: u64,
}

/// One failed attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailureSummary {
    /// Route.
    pub route: String,
    /// Kind label.
    pub kind: String,
    /// Ms since the session started.
    pub at_ms: u64,
}

/// One handover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HandoverSummary {
    /// From.
    pub from: String,
    /// To.
    pub to: String,
    /// Reason.
    pub reason: String,
    /// Client bytes before it.
    pub prefix_bytes: u64,
    /// Failure detected → continuation's first byte.
    pub gap_ms: u64,
}

/// All sessions, added up.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Sessions.
    pub sessions: usize,
    /// Finished.
    pub finished: usize,
    /// Failed.
    pub failed: usize,
    /// Recording stops before the end.
    pub incomplete: usize,
    /// Attempts.
    pub attempts: u64,
    /// Handovers.
    pub handovers: usize,
    /// Sessions by the door they came through (`library` for none).
    pub sessions_by_door: BTreeMap<String, usize>,
    /// Handovers by reason.
    pub handovers_by_reason: BTreeMap<String, usize>,
    /// Failures by kind.
    pub failures_by_kind: BTreeMap<String, usize>,
    /// Median handover gap.
    pub gap_ms_p50: u64,
    /// 99th percentile handover gap.
    pub gap_ms_p99: u64,
    /// Longest handover gap.
    pub gap_ms_max: u64,
    /// Client bytes.
    pub bytes: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Text deltas of attempts that reported no usage.
    pub unreported_deltas: u64,
    /// Sessions whose recording misses events (the recorder dropped some while they were open).
    pub sessions_with_gaps: usize,
    /// Recording files read.
    pub files: usize,
    /// Bytes of recording read.
    pub recording_bytes: u64,
}

/// The summary of a whole recording.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Per session.
    pub sessions: Vec<SessionSummary>,
    /// Added up.
    pub totals: Totals,
}

/// Summarizes one session.
pub fn session(s: &RecordedSession) -> SessionSummary {
    let mut out = SessionSummary {
        session: s.id,
        file: s.file().to_path_buf(),
        ladder: s.ladder().to_string(),
        door: s.door(),
        outcome: "incomplete",
        finish_reason: None,
        error: None,
        route_chain: Vec::new(),
        attempts: 0,
        retries: 0,
        failures: Vec::new(),
        handovers: Vec::new(),
        gap_ms: None,
        bytes: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        unreported_deltas: 0,
        duration_ms: s.events.last().map_or(0, |e| e.t_ms),
        gaps: s.gaps.len(),
        dropped: s.gaps.iter().map(|g| g.dropped).sum(),
    };
    for e in &s.events {
        match &e.kind {
            EventKind::AttemptOpened { .. } => out.attempts += 1,
            EventKind::Retry { .. } => out.retries += 1,
            EventKind::Failure { failure, .. } => out.failures.push(FailureSummary {
                route: failure.route.clone(),
                kind: failure.kind.clone(),
                at_ms: e.t_ms,
            }),
            EventKind::Handover {
                from,
                to,
                reason,
                prefix_bytes,
                gap_ms,
                ..
            } => out.handovers.push(HandoverSummary {
                from: from.clone(),
                to: to.clone(),
                reason: reason.clone(),
                prefix_bytes: *prefix_bytes,
                gap_ms: *gap_ms,
            }),
            EventKind::Delta { route, text } => {
                out.bytes += text.len() as u64;
                if out.route_chain.last() != Some(route) {
                    out.route_chain.push(route.clone());
                }
            }
            EventKind::Finished {
                finish_reason,
                route_chain,
                bytes,
                ..
            } => {
                out.outcome = "finished";
                out.finish_reason = Some(finish_reason.clone());
                out.route_chain = route_chain.clone();
                out.bytes = *bytes;
            }
            EventKind::Failed { error, bytes, .. } => {
                out.outcome = "failed";
                out.error = Some(error.clone());
                out.bytes = *bytes;
            }
            _ => {}
        }
    }
    // From the upstream items, which every recording version has: the same
    // figures for a session that finished, failed or was cut off.
    let tokens = tally(&s.events);
    let reported = tokens.reported().unwrap_or_default();
    out.prompt_tokens = reported.prompt_tokens;
    out.completion_tokens = reported.completion_tokens;
    out.unreported_deltas = tokens.unreported_deltas();
    out.gap_ms = out.handovers.iter().map(|h| h.gap_ms).max();
    out
}

/// Every attempt's tokens in one session's `events`, from what its upstream sent.
pub fn tally(events: &[EngineEvent]) -> Tally {
    let mut attempts: Vec<AttemptTokens> = Vec::new();
    for e in events {
        match &e.kind {
            EventKind::AttemptOpened {
                route, model, attempt, ..
            } => attempts.push(AttemptTokens {
                attempt: *attempt,
                route: route.clone(),
                model: model.clone(),
                reported: None,
                deltas: 0,
            }),
            EventKind::Upstream { attempt, item } => {
                let Some(a) = attempts.iter_mut().find(|a| a.attempt == *attempt) else {
                    continue;
                };
                match item {
                    UpstreamItem::Text(_) | UpstreamItem::Reasoning { .. } => a.deltas += 1,
                    UpstreamItem::Usage(u) => a.reported = Some(usage::merge(a.reported, *u)),
                    UpstreamItem::ToolCalls(_) | UpstreamItem::Finished(_) => {}
                }
            }
            _ => {}
        }
    }
    let mut tally = Tally::default();
    for a in attempts {
        tally.push(a);
    }
    tally
}

/// Summarizes every session of `recording`.
pub fn summarize(recording: &Recording) -> Summary {
    let sessions: Vec<SessionSummary> = recording.sessions.iter().map(session).collect();
    let totals = totals(&sessions, recording.files, recording.bytes);
    Summary { sessions, totals }
}

/// Adds up `sessions`, read from `files` files of `bytes` bytes.
pub fn totals(sessions: &[SessionSummary], files: usize, bytes: u64) -> Totals {
    let mut t = Totals {
        sessions: sessions.len(),
        files,
        recording_bytes: bytes,
        ..Totals::default()
    };
    let mut gaps = Vec::new();
    for s in sessions {
        match s.outcome {
            "finished" => t.finished += 1,
            "failed" => t.failed += 1,
            _ => t.incomplete += 1,
        }
        let door = s.door.map_or("library", Door::label);
        *t.sessions_by_door.entry(door.to_string()).or_default() += 1;
        t.attempts += u64::from(s.attempts);
        t.handovers += s.handovers.len();
        for h in &s.handovers {
            *t.handovers_by_reason.entry(h.reason.clone()).or_default() += 1;
            gaps.push(h.gap_ms);
        }
        for f in &s.failures {
            *t.failures_by_kind.entry(f.kind.clone()).or_default() += 1;
        }
        t.bytes += s.bytes;
        // Usage figures come from upstreams (through the recording): saturate, never overflow.
        t.prompt_tokens = t.prompt_tokens.saturating_add(s.prompt_tokens);
        t.completion_tokens = t.completion_tokens.saturating_add(s.completion_tokens);
        t.unreported_deltas = t.unreported_deltas.saturating_add(s.unreported_deltas);
        if s.gaps > 0 {
            t.sessions_with_gaps += 1;
        }
    }
    gaps.sort_unstable();
    t.gap_ms_p50 = crate::stats::percentile(&gaps, 50.0).unwrap_or(0);
    t.gap_ms_p99 = crate::stats::percentile(&gaps, 99.0).unwrap_or(0);
    t.gap_ms_max = gaps.last().copied().unwrap_or(0);
    t
}

impl std::fmt::Display for SessionSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut id = self.session.simple().to_string();
        id.truncate(8);
        let outcome = match (&self.finish_reason, &self.error) {
            (Some(r), _) => format!("finished ({r})"),
            (_, Some(_)) => "failed".to_string(),
            _ => "incomplete".to_string(),
        };
        let chain = if self.route_chain.is_empty() {
            "-".to_string()
        } else {
            self.route_chain.join(" → ")
        };
        let door = self.door.map_or("-", Door::label);
        write!(f, "{id}  {:<14} {door:<16} {:<16} {chain}", self.ladder, outcome)?;
        if self.failures.is_empty() {
            write!(f, "  no failures")?;
        } else {
            let list: Vec<String> = self
                .failures
                .iter()
                .map(|x| format!("{} {}", x.route, x.kind))
                .collect();
            write!(f, "  failures: {}", list.join(", "))?;
        }
        match self.handovers.len() {
            0 => {}
            n => write!(
                f,
                "  handovers: {n} (gap {} ms)",
                self.gap_ms.map_or("-".into(), |g| g.to_string())
            )?,
        }
        write!(
            f,
            "  {} bytes  {}+{} tokens  {:.1} s",
            self.bytes,
            self.prompt_tokens,
            self.completion_tokens,
            self.duration_ms as f64 / 1000.0
        )?;
        if self.unreported_deltas > 0 {
            write!(f, "  (+{} deltas without usage)", self.unreported_deltas)?;
        }
        if let Some(e) = &self.error {
            write!(f, "  error: {e}")?;
        }
        if self.gaps > 0 {
            write!(f, "  (events missing: the recorder dropped some)")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |m: &BTreeMap<String, usize>| {
            if m.is_empty() {
                return "none".to_string();
            }
            m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        writeln!(
            f,
            "sessions        {} ({} finished, {} failed, {} incomplete) in {} files, {}",
            self.sessions,
            self.finished,
            self.failed,
            self.incomplete,
            self.files,
            human_bytes(self.recording_bytes)
        )?;
        writeln!(f, "doors           {}", list(&self.sessions_by_door))?;
        writeln!(f, "attempts        {}", self.attempts)?;
        writeln!(
            f,
            "handovers       {} ({})",
            self.handovers,
            list(&self.handovers_by_reason)
        )?;
        writeln!(f, "failures        {}", list(&self.failures_by_kind))?;
        writeln!(
            f,
            "handover gap    p50 {} ms, p99 {} ms, max {} ms",
            self.gap_ms_p50, self.gap_ms_p99, self.gap_ms_max
        )?;
        writeln!(f, "client bytes    {}", self.bytes)?;
        writeln!(
            f,
            "tokens          {} prompt + {} completion as reported, {} deltas of attempts that reported none",
            self.prompt_tokens, self.completion_tokens, self.unreported_deltas
        )?;
        write!(
            f,
            "missing events  {} sessions (the recorder dropped events while they were open)",
            self.sessions_with_gaps
        )
    }
}
