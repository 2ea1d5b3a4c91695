//! Deadlines and shape checks around one upstream stream.
//!
//! The watchdog turns a provider's [`ChunkStream`] into [`Watched`] items and
//! every way the stream can go bad into a [`FailureKind`]: no first token in
//! time (headers alone do not count), a stall between tokens, the total
//! deadline, an end without a finish reason, and whatever the provider
//! reported (malformed chunk, error event, HTTP status …), and tool-call
//! deltas past the bounds of [`crate::provider::tool_calls`].
//!
//! The stall clock starts when the consumer asks for the next item, not when
//! the previous one arrived: a slow client reading the spliced stream is
//! baton's own backpressure, never the upstream's stall. The gaps a learning
//! watchdog reports (for an adaptive stall deadline, see [`crate::deadline`])
//! are measured on the same clock, and only for items that were not already
//! waiting when asked for. The same gaps drive the stream's own cadence
//! ([`Cadence`]): after its first few, the stall deadline for the rest of the
//! attempt follows them, which a [`Watched::Failed`] stall reports in its `after`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use std::pin::Pin;

use tokio::time::{sleep_until, Instant, Sleep};

use crate::deadline::Cadence;
use crate::failure::FailureKind;
use crate::health::ModelHealth;
use crate::provider::tool_calls::ToolCallBudget;
use crate::provider::{Chunk, ChunkStream, ReasoningField};
use crate::request::Usage;

pub use crate::deadline::Deadlines;

/// What the watchdog lets through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watched {
    /// Content text.
    Text(String),
    /// Reasoning text, with the field it came in: a token like any other for the deadlines.
    Reasoning {
        /// The text.
        text: String,
        /// The field it came in.
        field: ReasoningField,
    },
    /// Tool-call deltas.
    ToolCalls(Vec<serde_json::Value>),
    /// Token counts.
    Usage(Usage),
    /// The stream ended properly, with this finish reason.
    Finished(String),
    /// The stream went bad; nothing follows.
    Failed(FailureKind),
}

/// Watches one upstream stream.
pub struct Watchdog {
    inner: ChunkStream,
    /// One timer for the whole stream, moved for each wait: a new timer per
    /// token would cost a timer-wheel insertion on the hottest path.
    timer: Pin<Box<Sleep>>,
    deadlines: Deadlines,
    started: Instant,
    /// Whether a token of any channel (text, reasoning, tool calls) came: the first-token wait is over.
    seen_text: bool,
    finish: Option<String>,
    over: bool,
    /// Where the gaps seen go, when the route's stall deadline adapts.
    gaps: Option<GapBatch>,
    /// The stream's own cadence, when the stall deadline follows it.
    cadence: Option<Cadence>,
    /// The attempt's tool-call deltas are held until it ends: their index, number and size are bounded.
    tool_calls: ToolCallBudget,
}

impl Watchdog {
    /// Starts watching `inner` now.
    pub fn new(inner: ChunkStream, deadlines: Deadlines) -> Self {
        let started = Instant::now();
        Watchdog {
            timer: Box::pin(sleep_until(started + deadlines.first_token)),
            inner,
            deadlines,
            started,
            seen_text: false,
            finish: None,
            over: false,
            gaps: None,
            cadence: None,
            tool_calls: ToolCallBudget::default(),
        }
    }

    /// The same watchdog, reporting the inter-token gaps it sees to `health`.
    pub fn learning(mut self, health: Arc<ModelHealth>) -> Self {
        self.gaps = Some(GapBatch::new(health));
        self
    }

    /// The same watchdog, its stall deadline following the stream's own cadence as `cadence` says.
    pub fn with_cadence(mut self, cadence: Cadence) -> Self {
        self.cadence = Some(cadence);
        self
    }

    /// The next item; `None` after `Finished` or `Failed`.
    pub async fn next(&mut self) -> Option<Watched> {
        if self.over {
            return None;
        }
        let item = self.next_item().await;
        if matches!(item, Watched::Finished(_) | Watched::Failed(_)) {
            self.over = true;
            // The next session on this route should already see these gaps.
            if let Some(gaps) = &mut self.gaps {
                gaps.flush();
            }
        }
        Some(item)
    }

    async fn next_item(&mut self) -> Watched {
        loop {
            // When the stall clock started, and whether the stream made us wait:
            // an item that was already there says nothing about the upstream's pace.
            let asked = if self.seen_text { Instant::now() } else { self.started };
            let mut waited = false;
            let (after, kind) = self
                .deadlines
                .next_wait(asked.saturating_duration_since(self.started), self.seen_text);
            let deadline = self.started + after;
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            let next = tokio::select! {
                // The stream first: an item that is ready wins over a deadline that also passed.
                biased;
                next = std::future::poll_fn(|cx| {
                    let polled = self.inner.poll_next_unpin(cx);
                    waited |= polled.is_pending();
                    polled
                }) => next,
                // A finish reason already arrived: a silent tail cannot lose text.
                () = self.timer.as_mut() => return self.end_or(kind),
            };
            if waited && self.seen_text && matches!(next, Some(Ok(_))) {
                let gap = asked.elapsed();
                if let Some(gaps) = &mut self.gaps {
                    gaps.push(gap);
                }
                if let Some(stall) = self.cadence.as_mut().and_then(|c| c.see(gap)) {
                    self.deadlines.stall = stall;
                }
            }
            match next {
                None => return self.end_or(FailureKind::Truncated { detail: None }),
                Some(Ok(Chunk::Opened)) => {}
                Some(Ok(Chunk::Text(text))) if text.is_empty() => {}
                Some(Ok(Chunk::Text(text))) => {
                    self.seen_text = true;
                    return Watched::Text(text);
                }
                Some(Ok(Chunk::Reasoning { text, .. })) if text.is_empty() => {}
                Some(Ok(Chunk::Reasoning { text, field })) => {
                    // A model thinking is a model working: its first thought ends the first-token wait.
                    self.seen_text = true;
                    return Watched::Reasoning { text, field };
                }
                // Only the model that signed it can use a signature; it is never forwarded.
                Some(Ok(Chunk::ReasoningSignature(_))) => {}
                Some(Ok(Chunk::ToolCalls(calls))) => {
                    if let Err(kind) = self.tool_calls.admit(&calls) {
                        return self.end_or(kind);
                    }
                    self.seen_text = true;
                    return Watched::ToolCalls(calls);
                }
                Some(Ok(Chunk::Finish(reason))) => self.finish = Some(reason),
                Some(Ok(Chunk::Usage(usage))) => return Watched::Usage(usage),
                Some(Ok(Chunk::Done)) => {
                    return self.end_or(FailureKind::Truncated {
                        detail: Some("[DONE] without a finish reason".into()),
                    })
                }
                Some(Err(kind)) => return self.end_or(kind),
            }
        }
    }

    /// `Finished` if a finish reason was seen, else the failure.
    fn end_or(&mut self, kind: FailureKind) -> Watched {
        match self.finish.take() {
            Some(reason) => Watched::Finished(reason),
            None => Watched::Failed(kind),
        }
    }
}

/// Gaps one watchdog saw, handed to the model's health in batches so the
/// per-token path takes no shared lock.
#[derive(Debug)]
pub struct GapBatch {
    health: Arc<ModelHealth>,
    gaps: Vec<Duration>,
}

/// Gaps collected before a batch goes to the route's health.
const BATCH: usize = 16;

impl GapBatch {
    /// An empty batch for `health`.
    pub fn new(health: Arc<ModelHealth>) -> Self {
        GapBatch {
            health,
            gaps: Vec::with_capacity(BATCH),
        }
    }

    /// Adds one gap; hands the batch over when full.
    pub fn push(&mut self, gap: Duration) {
        self.gaps.push(gap);
        if self.gaps.len() >= BATCH {
            self.flush();
        }
    }

    /// Hands the gaps collected so far to the route's health.
    pub fn flush(&mut self) {
        if !self.gaps.is_empty() {
            self.health.record_gaps(&self.gaps);
            self.gaps.clear();
        }
    }
}

impl Drop for GapBatch {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_next_deadline_is_first_token_then_stall_never_past_total() {
        let d = Deadlines {
            first_token: MS(1000),
            stall: MS(300),
            total: MS(2000),
        };
        assert_eq!(
            d.next_wait(MS(0), false),
            (MS(1000), FailureKind::FirstTokenTimeout { after: MS(1000) })
        );
        assert_eq!(
            d.next_wait(MS(900), true),
            (MS(1200), FailureKind::Stall { after: MS(300) })
        );
        assert_eq!(
            d.next_wait(MS(1700), true),
            (MS(2000), FailureKind::Stall { after: MS(300) }),
            "a tie: the stall"
        );
        assert_eq!(
            d.next_wait(MS(1800), true),
            (MS(2000), FailureKind::TotalTimeout { after: MS(2000) })
        );
        let late = Deadlines { total: MS(500), ..d };
        assert_eq!(
            late.next_wait(MS(0), false),
            (MS(500), FailureKind::TotalTimeout { after: MS(500) })
        );
        for (_, kind) in [
            d.next_wait(MS(0), false),
            d.next_wait(MS(0), true),
            late.next_wait(MS(0), false),
        ] {
            assert!(
                kind.detected_by_engine(),
                "{kind:?}: a re-drive leaves it to the watchdog"
            );
        }
    }

    #[test]
    fn a_batch_reaches_the_route_when_full_or_dropped() {
        let health = crate::health::RouteHealth::default().model("m");
        let mut batch = GapBatch::new(health.clone());
        for _ in 0..BATCH - 1 {
            batch.push(MS(30));
        }
        assert_eq!(health.gap_count(), 0, "held back until the batch is full");
        batch.push(MS(30));
        assert_eq!(health.gap_count(), BATCH);
        batch.push(MS(40));
        drop(batch);
        assert_eq!(health.gap_count(), BATCH + 1);
        assert_eq!(health.gap_p99(1), Some(MS(40)));
    }
}
