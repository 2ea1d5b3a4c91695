//! What went wrong with one upstream attempt, and which class of failure it is.
//!
//! The class decides what the ladder does next (see [`crate::policy::ladder`]):
//! technical failures are retried or handed over, policy failures are never
//! retried on the same route, business failures move to a route that fits,
//! quality failures hand over with the prefix cut back, and local failures
//! (baton's own descriptors or memory ran out) end the session without
//! counting against any route.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The five failure classes of the design.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The transport or the upstream broke: connect, 429/5xx, deadlines, truncation, garbage.
    Technical,
    /// The provider refused on policy grounds: never retried on the same route.
    Policy,
    /// A budget, latency or context-window limit was hit.
    Business,
    /// The answer itself went bad (a repetition loop).
    Quality,
    /// baton's own resources ran out (descriptors, memory, local ports): never counted against a route.
    Local,
}

impl FailureClass {
    /// Lower-case name, as used in events and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Technical => "technical",
            FailureClass::Policy => "policy",
            FailureClass::Business => "business",
            FailureClass::Quality => "quality",
            FailureClass::Local => "local",
        }
    }
}

/// What happened to one upstream stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FailureKind {
    /// The TCP/TLS connection could not be made.
    #[error("connect failed: {detail}")]
    Connect {
        /// Transport error text.
        detail: String,
    },
    /// The connection was reset or closed before response headers arrived.
    #[error("connection reset before headers: {detail}")]
    Reset {
        /// Transport error text.
        detail: String,
    },
    /// HTTP 429.
    #[error("rate limited (429){}", retry_after_text(*retry_after))]
    RateLimited {
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// HTTP 5xx.
    #[error("server error ({status}){}", retry_after_text(*retry_after))]
    ServerError {
        /// The status code.
        status: u16,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// HTTP 400 saying the prompt does not fit the model's context window.
    #[error("context length exceeded: {message}")]
    ContextLength {
        /// The provider's message.
        message: String,
    },
    /// The provider refused the request or the answer on content-policy grounds.
    #[error("content policy: {message}")]
    ContentPolicy {
        /// The provider's reason, passed on to the caller.
        message: String,
    },
    /// The route does not accept a final assistant message (prefill).
    #[error("prefill rejected: {message}")]
    PrefillRejected {
        /// The provider's message.
        message: String,
    },
    /// HTTP 401/403: the route's key is missing or wrong.
    #[error("unauthorized ({status}): {message}")]
    Auth {
        /// The status code.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// Any other HTTP error status.
    #[error("rejected ({status}): {message}")]
    Rejected {
        /// The status code.
        status: u16,
        /// The provider's message.
        message: String,
        /// The error `code` (else `type`) the provider's body named, bounded
        /// (see [`upstream_code`]): what a client is told the refusal was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    /// No content arrived within the time-to-first-token deadline.
    #[error("no first token within {} ms", after.as_millis())]
    FirstTokenTimeout {
        /// The deadline that fired.
        after: Duration,
    },
    /// The model reasoned past the route's reasoning budget without an answer token (text or tool call).
    #[error("no answer token within the reasoning budget of {} ms", after.as_millis())]
    ReasoningTimeout {
        /// The budget that ran out, from the request.
        after: Duration,
    },
    /// The stream went silent for longer than the stall deadline.
    #[error("stalled for {} ms", after.as_millis())]
    Stall {
        /// The deadline that fired.
        after: Duration,
    },
    /// The whole attempt took longer than its total deadline.
    #[error("total deadline of {} ms exceeded", after.as_millis())]
    TotalTimeout {
        /// The deadline that fired.
        after: Duration,
    },
    /// The stream ended (EOF, reset, cut body) without a finish reason.
    #[error("stream ended without a finish reason{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Truncated {
        /// Transport error text, when the end was an error rather than EOF.
        detail: Option<String>,
    },
    /// A chunk that is not valid SSE/JSON of the expected shape.
    #[error("malformed chunk: {detail}")]
    Malformed {
        /// What was wrong with it.
        detail: String,
    },
    /// The upstream sent a line or an event over baton's size limit (an SSE
    /// line of megabytes without a newline, tool calls past their bounds): cut off before memory grows.
    #[error("upstream {what} over the limit of {limit} bytes")]
    TooLarge {
        /// `line`, `event`, or `tool-call deltas` (what an attempt holds).
        what: String,
        /// The limit it broke, in bytes.
        limit: u64,
    },
    /// The response came compressed although baton asked for `identity`.
    #[error("response is {encoding:?}-encoded; baton asks for identity and does not decompress")]
    ContentEncoding {
        /// The response's `Content-Encoding`.
        encoding: String,
    },
    /// The route's circuit breaker is open: it was skipped without a request.
    #[error("circuit open: skipped")]
    CircuitOpen,
    /// The route's recent p95 time to first token is above the ladder's latency ceiling: skipped without a request.
    #[error("too slow: recent p95 time to first token {p95_ms} ms is above the ceiling of {ceiling_ms} ms")]
    TooSlow {
        /// The route's recent p95 time to first token.
        p95_ms: u64,
        /// The ladder's ceiling.
        ceiling_ms: u64,
    },
    /// The request's estimated cost on the route is above the ladder's ceiling: skipped without a request.
    #[error("over cost: an estimated {} is above the ceiling of {} per request", usd(*estimated_micros), usd(*ceiling_micros))]
    OverCost {
        /// The estimated cost of the request on this route, in millionths of a dollar.
        estimated_micros: u64,
        /// The ladder's ceiling per request, in millionths of a dollar.
        ceiling_micros: u64,
    },
    /// The request does not fit the route's context window even with every
    /// droppable turn dropped: skipped without a request.
    #[error("context window too small: {needed} tokens needed (answer reserve included), the window has {window}")]
    ContextTooSmall {
        /// Estimated tokens of the smallest request, plus the answer reserve.
        needed: u32,
        /// The route's context window.
        window: u32,
    },
    /// The answer started repeating itself (the loop guard stopped it).
    #[error("repetition loop: a {period}-byte unit repeated {repeats} times")]
    Loop {
        /// Bytes in the repeated unit.
        period: u32,
        /// Copies of it seen in a row.
        repeats: u32,
    },
    /// The attempt finished with no answer text and no tool call while the
    /// client had no answer either: reasoning alone (or nothing) is not an answer.
    #[error("empty answer: finished with no text ({reasoning_bytes} bytes of reasoning)")]
    EmptyAnswer {
        /// Reasoning bytes the attempt produced.
        reasoning_bytes: u64,
    },
    /// The upstream sent an error object inside the stream.
    #[error("error event in stream: {message}")]
    ErrorEvent {
        /// The provider's message.
        message: String,
    },
    /// baton could not open the connection for want of its own resources
    /// (`EMFILE`, `ENFILE`, `ENOMEM`, `EADDRNOTAVAIL`): says nothing of the route.
    #[error("local resources exhausted ({resource}): {detail}")]
    LocalResources {
        /// Which resource ran out: `descriptors`, `memory` or `local_ports`.
        resource: String,
        /// Transport error text.
        detail: String,
    },
}

/// `EMFILE` (this process is out of descriptors): 24 on Linux, the BSDs and macOS.
const EMFILE: i32 = 24;
/// `ENFILE` (the system is out of descriptors): 23 on Linux, the BSDs and macOS.
const ENFILE: i32 = 23;

/// The local resource whose exhaustion `error` or any error in its `source()`
/// chain reports, if one does: such an error is baton's, not the upstream's.
pub fn local_exhaustion(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(resource) = io_exhaustion(io) {
                return Some(resource);
            }
        }
        next = e.source();
    }
    None
}

fn io_exhaustion(e: &std::io::Error) -> Option<&'static str> {
    match (e.raw_os_error(), e.kind()) {
        (Some(EMFILE | ENFILE), _) => Some("descriptors"),
        (_, std::io::ErrorKind::OutOfMemory) => Some("memory"),
        (_, std::io::ErrorKind::AddrNotAvailable) => Some("local_ports"),
        _ => None,
    }
}

fn usd(micros: u64) -> String {
    format!("${:.6}", micros as f64 / 1e6)
}

fn retry_after_text(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {} ms", d.as_millis()))
        .unwrap_or_default()
}

impl FailureKind {
    /// The class that decides the next action.
    pub fn class(&self) -> FailureClass {
        match self {
            FailureKind::ContentPolicy { .. } => FailureClass::Policy,
            FailureKind::ContextLength { .. }
            | FailureKind::TooSlow { .. }
            | FailureKind::OverCost { .. }
            | FailureKind::ContextTooSmall { .. } => FailureClass::Business,
            FailureKind::Loop { .. } | FailureKind::EmptyAnswer { .. } => FailureClass::Quality,
            FailureKind::LocalResources { .. } => FailureClass::Local,
            _ => FailureClass::Technical,
        }
    }

    /// A short stable label (`stall`, `http_429`, …) for events, metrics and summaries.
    pub fn label(&self) -> &'static str {
        match self {
            FailureKind::Connect { .. } => "connect",
            FailureKind::Reset { .. } => "reset",
            FailureKind::RateLimited { .. } => "rate_limited",
            FailureKind::ServerError { .. } => "server_error",
            FailureKind::ContextLength { .. } => "context_length",
            FailureKind::ContentPolicy { .. } => "content_policy",
            FailureKind::PrefillRejected { .. } => "prefill_rejected",
            FailureKind::Auth { .. } => "auth",
            FailureKind::Rejected { .. } => "rejected",
            FailureKind::FirstTokenTimeout { .. } => "first_token_timeout",
            FailureKind::ReasoningTimeout { .. } => "reasoning_timeout",
            FailureKind::Stall { .. } => "stall",
            FailureKind::TotalTimeout { .. } => "total_timeout",
            FailureKind::Truncated { .. } => "truncated",
            FailureKind::Malformed { .. } => "malformed",
            FailureKind::TooLarge { .. } => "too_large",
            FailureKind::ContentEncoding { .. } => "content_encoding",
            FailureKind::ErrorEvent { .. } => "error_event",
            FailureKind::CircuitOpen => "circuit_open",
            FailureKind::TooSlow { .. } => "too_slow",
            FailureKind::OverCost { .. } => "over_cost",
            FailureKind::ContextTooSmall { .. } => "context_too_small",
            FailureKind::Loop { .. } => "loop",
            FailureKind::EmptyAnswer { .. } => "empty_answer",
            FailureKind::LocalResources { .. } => "local_resources",
        }
    }

    /// Whether baton detects this itself rather than hearing it from the
    /// upstream: a deadline (the watchdog, [`crate::policy::deadline::Deadlines::next_wait`]),
    /// a loop (the loop guard) or an answer without text (decided from its
    /// finish). A re-drive replays the stream and leaves these to the engine.
    pub fn detected_by_engine(&self) -> bool {
        matches!(
            self,
            FailureKind::FirstTokenTimeout { .. }
                | FailureKind::ReasoningTimeout { .. }
                | FailureKind::Stall { .. }
                | FailureKind::TotalTimeout { .. }
                | FailureKind::Loop { .. }
                | FailureKind::EmptyAnswer { .. }
        )
    }

    /// Whether the splicer decides this from the request and the ladder alone,
    /// before asking the provider (so a re-drive decides it again by itself).
    pub fn decided_before_upstream(&self) -> bool {
        matches!(self, FailureKind::ContextTooSmall { .. })
    }

    /// The HTTP status the upstream answered with, for the failures that are one.
    pub fn status(&self) -> Option<u16> {
        match self {
            FailureKind::RateLimited { .. } => Some(429),
            FailureKind::ServerError { status, .. }
            | FailureKind::Auth { status, .. }
            | FailureKind::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The upstream's error code, for a refusal that named one.
    pub fn code(&self) -> Option<&str> {
        match self {
            FailureKind::Rejected { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The server's `Retry-After`, for the failures that carry one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FailureKind::RateLimited { retry_after } | FailureKind::ServerError { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// One failed attempt, with where and when it happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The route the attempt ran on.
    pub route: String,
    /// The failure class.
    pub class: FailureClass,
    /// The short label of the kind (`stall`, `rate_limited`, …).
    pub kind: String,
    /// Human-readable description.
    pub detail: String,
    /// Text deltas this attempt had produced before it failed.
    pub tokens: u64,
    /// Bytes the client had received in the whole session when it failed.
    pub bytes: u64,
    /// Milliseconds since the session started.
    pub at_ms: u64,
    /// The HTTP status the upstream answered with, when the failure was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The upstream's error code, when its refusal named one (bounded, see [`upstream_code`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl Failure {
    /// Describes `kind` as a failure on `route`.
    pub fn new(kind: &FailureKind, route: &str, tokens: u64, bytes: u64, at_ms: u64) -> Self {
        Failure {
            route: route.to_string(),
            class: kind.class(),
            kind: kind.label().to_string(),
            detail: kind.to_string(),
            tokens,
            bytes,
            at_ms,
            status: kind.status(),
            code: kind.code().map(str::to_string),
        }
    }
}

/// Longest upstream error code kept: codes are identifiers, not prose.
const MAX_CODE_BYTES: usize = 64;

/// `code` if it looks like an error code (`context_length_exceeded`,
/// `invalid_value`): ASCII letters, digits, `_`, `-` and `.`, at most 64
/// bytes. Anything else (prose, a number, an echoed value that might hold a
/// secret) is not kept.
pub fn upstream_code(code: &str) -> Option<String> {
    let plausible = !code.is_empty()
        && code.len() <= MAX_CODE_BYTES
        && code.bytes().any(|b| b.is_ascii_alphabetic())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    plausible.then(|| code.to_ascii_lowercase())
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.route, self.detail, self.class.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error wrapping another, as reqwest wraps hyper's which wraps the socket's.
    #[derive(Debug)]
    struct Wrapped(&'static str, Box<dyn std::error::Error + Send + Sync + 'static>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(self.1.as_ref())
        }
    }

    fn chain(raw: i32) -> Wrapped {
        let io = std::io::Error::from_raw_os_error(raw);
        Wrapped(
            "error sending request",
            Box::new(Wrapped("client error (Connect)", Box::new(io))),
        )
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn local_exhaustion_is_found_deep_in_the_source_chain() {
        // Linux's ENFILE, EMFILE, ENOMEM, EADDRNOTAVAIL.
        for (raw, resource) in [
            (23, "descriptors"),
            (24, "descriptors"),
            (12, "memory"),
            (99, "local_ports"),
        ] {
            assert_eq!(local_exhaustion(&chain(raw)), Some(resource), "errno {raw}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_upstream_refusing_or_resetting_is_not_local() {
        // ECONNREFUSED, ECONNRESET, ETIMEDOUT, EHOSTUNREACH.
        for raw in [111, 104, 110, 113] {
            assert_eq!(local_exhaustion(&chain(raw)), None, "errno {raw}");
        }
        assert_eq!(
            local_exhaustion(&Wrapped("no io error", Box::new(std::fmt::Error))),
            None
        );
    }

    #[test]
    fn a_local_failure_is_its_own_class() {
        let kind = FailureKind::LocalResources {
            resource: "descriptors".into(),
            detail: "Too many open files".into(),
        };
        assert_eq!(kind.class(), FailureClass::Local);
        assert_eq!(kind.label(), "local_resources");
        assert_eq!(FailureClass::Local.as_str(), "local");
    }
}
