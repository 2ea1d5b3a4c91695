//! Deadlines and shape checks around one upstream stream.
//!
//! The watchdog turns a provider's [`ChunkStream`] into [`Watched`] items and
//! every way the stream can go bad into a [`FailureKind`]: no first token in
//! time (headers alone do not count), a stall between tokens, the total
//! deadline, the optional reasoning budget (reasoning but no answer token by
//! then), an end without a finish reason, and whatever the provider
//! reported (malformed chunk, error event, HTTP status …), and tool-call
//! deltas past the bounds of [`crate::provider::tool_calls`].
//!
//! The stall clock starts when the consumer asks for the next item, not when
//! the previous one arrived: a slow client reading the spliced stream is
//! baton's own backpressure, never the upstream's stall. The gaps a learning
//! watchdog reports (for an adaptive stall deadline, see [`crate::policy::deadline`])
//! are measured on the same clock, and only for items that were not already
//! waiting when asked for. The same gaps drive the stream's own cadence
//! ([`Cadence`]): after its first few, the stall deadline for the rest of the
//! attempt follows them, which a [`Watched::Failed`] stall reports in its `after`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use std::pin::Pin;

use tokio::time::{sleep_until, Instant, Sleep};

use crate::failure::FailureKind;
use crate::policy::deadline::Cadence;
use crate::policy::health::ModelHealth;
use crate::policy::ladder::Route;
use crate::provider::tool_calls::ToolCallBudget;
use crate::provider::{Chunk, ChunkStream, ReasoningField};
use crate::request::Usage;

pub use crate::policy::deadline::Deadlines;

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
    /// Whether an answer token (text or tool call) came: the reasoning budget is met.
    seen_answer: bool,
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
            seen_answer: false,
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
            let (after, kind) = self.deadlines.next_wait(
                asked.saturating_duration_since(self.started),
                self.seen_text,
                self.seen_answer,
            );
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
                    self.seen_answer = true;
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
                // Encrypted thinking: the model is working (the first-token wait is over, and the
                // stall clock restarts on the next turn of this loop), but there is nothing to show
                // and it is no answer. Its data is of use to its own model alone: it goes no further.
                Some(Ok(Chunk::RedactedReasoning(_))) => self.seen_text = true,
                Some(Ok(Chunk::ToolCalls(calls))) => {
                    if let Err(kind) = self.tool_calls.admit(&calls) {
                        return self.end_or(kind);
                    }
                    self.seen_text = true;
                    self.seen_answer = true;
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

/// A watched upstream stream: how the splicer reads an attempt.
pub type WatchedStream = Pin<Box<dyn futures::Stream<Item = Watched> + Send>>;

impl Watchdog {
    /// The watchdog as a [`futures::Stream`] of [`Watched`] items, ending after
    /// `Finished` or `Failed`. A wait survives a dropped `next` (a hedge race
    /// polls several): its clocks keep the time the item was first asked for.
    pub fn into_stream(self) -> WatchedStream {
        Box::pin(futures::stream::unfold(self, |mut watchdog| async move {
            let item = watchdog.next().await?;
            Some((item, watchdog))
        }))
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

/// The watchdog for an attempt on `route` to `health`'s model: when the
/// route's stall deadline adapts, it reports the gaps it sees to that health
/// and follows the stream's own cadence. A replay does not re-learn the
/// cadence: it re-drives under the deadlines the recording shows (see
/// [`crate::record::verify`]).
pub fn for_route(route: &Route, health: &Arc<ModelHealth>, stream: ChunkStream, deadlines: Deadlines) -> Watchdog {
    let watchdog = Watchdog::new(stream, deadlines);
    match route.adaptive.stall {
        Some(rule) if rule.own_gaps > 0 && route.decisions.own_cadence() => {
            let history = health.gap_history(rule.min_samples);
            watchdog
                .learning(health.clone())
                .with_cadence(Cadence::new(rule, route.deadlines.stall, history))
        }
        Some(_) => watchdog.learning(health.clone()),
        None => watchdog,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that thinks a chunk every 100 ms for `thoughts` chunks, then answers a chunk every 100 ms.
    fn thinker(thoughts: u32, answer: Chunk) -> ChunkStream {
        Box::pin(futures::stream::unfold(0u32, move |n| {
            let answer = answer.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let chunk = if n < thoughts {
                    Chunk::Reasoning {
                        text: format!("t{n} "),
                        field: ReasoningField::ReasoningContent,
                    }
                } else {
                    answer
                };
                Some((Ok(chunk), n + 1))
            }
        }))
    }

    /// What the watchdog lets through until it fails or has let `max` items through, and when it failed.
    async fn watch(stream: ChunkStream, deadlines: Deadlines, max: usize) -> (Vec<Watched>, Option<Duration>) {
        let started = Instant::now();
        let mut dog = Watchdog::new(stream, deadlines);
        let mut seen = Vec::new();
        while let Some(item) = dog.next().await {
            let failed = matches!(item, Watched::Failed(_));
            seen.push(item);
            if failed {
                return (seen, Some(started.elapsed()));
            }
            if seen.len() >= max {
                break;
            }
        }
        (seen, None)
    }

    fn budget(ms: u64) -> Deadlines {
        Deadlines {
            reasoning_budget: Some(Duration::from_millis(ms)),
            ..Deadlines::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reasoning_past_the_budget_without_an_answer_fails_at_the_budget() {
        let (seen, failed_at) = watch(thinker(1000, Chunk::Text("x".into())), budget(1050), 10_000).await;
        assert_eq!(
            failed_at,
            Some(Duration::from_millis(1050)),
            "the budget runs from the request"
        );
        assert_eq!(
            seen.last(),
            Some(&Watched::Failed(FailureKind::ReasoningTimeout {
                after: Duration::from_millis(1050)
            }))
        );
        assert_eq!(seen.len(), 11, "ten thoughts, then the failure");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_token_in_time_ends_the_budget() {
        for answer in [
            Chunk::Text("x".into()),
            Chunk::ToolCalls(vec![serde_json::json!({"index": 0, "function": {"arguments": "{}"}})]),
        ] {
            // Thinking for 0.5 s, then answering for far longer than the budget.
            let (seen, failed_at) = watch(thinker(5, answer.clone()), budget(1000), 60).await;
            assert_eq!(failed_at, None, "{answer:?}: {:?}", seen.last());
            assert_eq!(seen.len(), 60);
        }
        // No budget: thinking may last.
        let (_, failed_at) = watch(thinker(1000, Chunk::Text("x".into())), Deadlines::default(), 200).await;
        assert_eq!(failed_at, None);
    }

    #[tokio::test(start_paused = true)]
    async fn redacted_thinking_is_reasoning_activity_and_no_answer() {
        // A redacted block every 2 s for 16 s, past the 10 s first-token deadline and never 3 s apart, then text.
        let stream = || -> ChunkStream {
            Box::pin(futures::stream::unfold(0u32, |n| async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let chunk = if n < 8 {
                    Chunk::RedactedReasoning(crate::provider::Opaque(format!("enc{n}")))
                } else {
                    Chunk::Text("Yes.".into())
                };
                Some((Ok(chunk), n + 1))
            }))
        };
        let (seen, failed_at) = watch(stream(), Deadlines::default(), 3).await;
        assert_eq!(failed_at, None, "{seen:?}");
        assert_eq!(
            seen,
            vec![Watched::Text("Yes.".into()); 3],
            "nothing of the blocks goes out"
        );
        // It is not an answer: the reasoning budget still runs.
        let (seen, failed_at) = watch(stream(), budget(5000), 3).await;
        assert_eq!(failed_at, Some(Duration::from_secs(5)));
        assert_eq!(
            seen,
            vec![Watched::Failed(FailureKind::ReasoningTimeout {
                after: Duration::from_secs(5)
            })]
        );
    }

    #[test]
    fn deadlines_without_a_budget_read_and_write_as_before() {
        let old = r#"{"first_token_ms":10000,"stall_ms":3000,"total_ms":300000}"#;
        let d: Deadlines = serde_json::from_str(old).expect("an older recording's deadlines");
        assert_eq!(d, Deadlines::default());
        assert_eq!(serde_json::to_string(&d).expect("json"), old);
        let with = budget(1500);
        let json = serde_json::to_string(&with).expect("json");
        assert!(json.contains(r#""reasoning_budget_ms":1500"#), "{json}");
        assert_eq!(serde_json::from_str::<Deadlines>(&json).expect("back"), with);
    }
}
