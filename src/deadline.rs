//! Adaptive deadlines: the stall and first-token deadlines of one attempt.
//!
//! Fixed deadlines ([`Deadlines`] on the route) stay the default. A route may
//! also let them adapt ([`Adaptive`]):
//!
//! * the stall deadline follows the inter-token gaps the route has shown
//!   recently (per upstream model), shared by every session through its
//!   [`ModelHealth`]:
//!   `clamp(k × p99 gap, floor, stall)`, where the configured stall deadline is
//!   the ceiling and the value used until enough gaps were seen. A stream that
//!   ticks every 20 ms is declared stalled in a fraction of a second; a slow
//!   but steady one keeps a deadline well above its own gaps.
//! * the first-token deadline grows with the prompt: `first_token + per-1k ×
//!   prompt tokens / 1000`, with the prompt estimated by
//!   [`estimate_tokens`] (continuation prefix included).
//!
//! The effective deadlines are decided once, when an attempt opens ([`decide`]),
//! and recorded in its `attempt_opened` event, so a replay re-drives with them
//! instead of recomputing from a history it does not have.
//!
//! Gaps are measured from the watchdog's point of view: from the moment the
//! consumer asks for the next item until an item arrives that was not already
//! waiting. Baton's own backpressure (a slow client) therefore never counts as
//! an upstream gap; at worst it hides one, which only errs towards the floor.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::health::ModelHealth;
use crate::ladder::Route;
use crate::provider::ChunkStream;
use crate::record::spec::ms;
use crate::request::{estimate_tokens, Message};
use crate::stats::percentile;
use crate::watchdog::{Deadlines, Watchdog};

/// How many recent gaps a route keeps (across all its sessions).
pub const GAP_SAMPLES: usize = 512;
/// The default multiplier on the p99 gap.
pub const DEFAULT_K: f64 = 8.0;
/// The default lowest adaptive stall deadline.
pub const DEFAULT_FLOOR: Duration = Duration::from_millis(500);
/// The default number of gaps seen before the stall deadline adapts.
pub const DEFAULT_MIN_SAMPLES: u32 = 100;
/// The percentile of recent gaps the stall deadline is a multiple of.
pub const GAP_PERCENTILE: f64 = 99.0;

/// How a route's deadlines adapt. The default adapts nothing: fixed deadlines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Adaptive {
    /// The stall deadline follows recent gaps; `None`: it is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall: Option<AdaptiveStall>,
    /// Extra time to first token per 1000 prompt tokens; zero: fixed.
    #[serde(
        rename = "ttft_per_1k_prompt_ms",
        with = "ms",
        default,
        skip_serializing_if = "Duration::is_zero"
    )]
    pub ttft_per_1k_prompt: Duration,
}

impl Adaptive {
    /// Whether nothing adapts (the deadlines are the route's fixed ones).
    pub fn is_fixed(&self) -> bool {
        self.stall.is_none() && self.ttft_per_1k_prompt.is_zero()
    }
}

/// The rule of an adaptive stall deadline.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveStall {
    /// The deadline is this many times the p99 of recent gaps.
    pub k: f64,
    /// It never goes below this (nor above the route's stall deadline).
    #[serde(rename = "floor_ms", with = "ms")]
    pub floor: Duration,
    /// Gaps the route must have shown before the deadline adapts.
    pub min_samples: u32,
}

impl Default for AdaptiveStall {
    fn default() -> Self {
        AdaptiveStall {
            k: DEFAULT_K,
            floor: DEFAULT_FLOOR,
            min_samples: DEFAULT_MIN_SAMPLES,
        }
    }
}

/// The stall deadline for `rule` under `ceiling` (the configured stall), given the
/// p99 of recent gaps (`None`: too few seen yet, so the ceiling holds).
pub fn stall(rule: &AdaptiveStall, ceiling: Duration, p99: Option<Duration>) -> Duration {
    let Some(p99) = p99 else {
        return ceiling;
    };
    let k = if rule.k.is_finite() { rule.k.max(0.0) } else { 1.0 };
    // Duration::mul_f64 panics on overflow; a huge product is capped by the ceiling anyway.
    let scaled = Duration::try_from_secs_f64(p99.as_secs_f64() * k).unwrap_or(Duration::MAX);
    scaled.clamp(rule.floor.min(ceiling), ceiling)
}

/// The first-token deadline for a prompt of `prompt_tokens`: `base` plus `per_1k` per 1000 tokens.
pub fn first_token(base: Duration, per_1k: Duration, prompt_tokens: u32) -> Duration {
    let extra = per_1k.as_nanos().saturating_mul(u128::from(prompt_tokens)) / 1000;
    base.saturating_add(Duration::from_nanos(u64::try_from(extra).unwrap_or(u64::MAX)))
}

/// The effective deadlines of an attempt on `route` to `health`'s model sending
/// `messages`: the ones a replay recorded, if the route's health replays a
/// recording, else computed now.
pub fn decide(route: &Route, health: &ModelHealth, messages: &[Message]) -> Deadlines {
    if let Some(recorded) = route.health.recorded_deadlines() {
        return recorded;
    }
    let mut d = route.deadlines;
    if !route.adaptive.ttft_per_1k_prompt.is_zero() {
        d.first_token = first_token(
            d.first_token,
            route.adaptive.ttft_per_1k_prompt,
            estimate_tokens(messages),
        );
    }
    d.stall = current_stall(route, health);
    d
}

/// The stall deadline an attempt opening on `route` to `health`'s model now would get.
pub fn current_stall(route: &Route, health: &ModelHealth) -> Duration {
    match &route.adaptive.stall {
        Some(rule) => stall(rule, route.deadlines.stall, health.gap_p99(rule.min_samples)),
        None => route.deadlines.stall,
    }
}

/// The watchdog for an attempt on `route` to `health`'s model: it reports the
/// gaps it sees to that health when the route's stall deadline adapts.
pub fn watchdog(route: &Route, health: &Arc<ModelHealth>, stream: ChunkStream, deadlines: Deadlines) -> Watchdog {
    let watchdog = Watchdog::new(stream, deadlines);
    match route.adaptive.stall {
        Some(_) => watchdog.learning(health.clone()),
        None => watchdog,
    }
}

/// A bounded sample of a route's most recent inter-token gaps.
#[derive(Debug)]
pub struct GapSample {
    /// Gaps in microseconds (saturating at about 71 minutes), oldest overwritten first.
    ring: Vec<u32>,
    /// Where the next gap goes once the ring is full.
    next: usize,
    /// The p99 as of the last push, computed lazily: attempts open far more
    /// often than a batch of gaps arrives.
    p99: Option<Option<Duration>>,
}

impl Default for GapSample {
    fn default() -> Self {
        GapSample::new(GAP_SAMPLES)
    }
}

impl GapSample {
    /// An empty sample keeping the last `capacity` gaps (at least one).
    pub fn new(capacity: usize) -> Self {
        GapSample {
            ring: Vec::with_capacity(capacity.max(1)),
            next: 0,
            p99: None,
        }
    }

    /// Adds one gap, dropping the oldest if full.
    pub fn push(&mut self, gap: Duration) {
        let micros = u32::try_from(gap.as_micros()).unwrap_or(u32::MAX);
        if self.ring.len() < self.ring.capacity() {
            self.ring.push(micros);
        } else {
            self.ring[self.next] = micros;
            self.next = (self.next + 1) % self.ring.len();
        }
        self.p99 = None;
    }

    /// Gaps held.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether no gap was seen yet.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The p99 of the gaps held, once there are at least `min_samples` of them.
    pub fn p99(&mut self, min_samples: u32) -> Option<Duration> {
        if self.ring.len() < min_samples.max(1) as usize {
            return None;
        }
        *self.p99.get_or_insert_with(|| {
            let mut sorted = self.ring.clone();
            sorted.sort_unstable();
            percentile(&sorted, GAP_PERCENTILE).map(|us| Duration::from_micros(u64::from(us)))
        })
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
    fn the_stall_deadline_is_k_times_the_p99_within_floor_and_ceiling() {
        let rule = AdaptiveStall {
            k: 8.0,
            floor: MS(100),
            min_samples: 10,
        };
        // Too few gaps: the configured deadline.
        assert_eq!(stall(&rule, MS(3000), None), MS(3000));
        // A 20 ms stream: 160 ms.
        assert_eq!(stall(&rule, MS(3000), Some(MS(20))), MS(160));
        // A 5 ms stream: the floor.
        assert_eq!(stall(&rule, MS(3000), Some(MS(5))), MS(100));
        // A 2 s stream: capped by the ceiling.
        assert_eq!(stall(&rule, MS(3000), Some(MS(2000))), MS(3000));
        // A floor above the ceiling yields to the ceiling.
        assert_eq!(
            stall(
                &AdaptiveStall {
                    floor: MS(9000),
                    ..rule
                },
                MS(3000),
                Some(MS(1))
            ),
            MS(3000)
        );
        // An absurd gap does not overflow.
        assert_eq!(stall(&rule, MS(3000), Some(Duration::MAX)), MS(3000));
    }

    #[test]
    fn the_first_token_deadline_grows_with_the_prompt() {
        assert_eq!(first_token(MS(2000), MS(500), 0), MS(2000));
        assert_eq!(first_token(MS(2000), MS(500), 1000), MS(2500));
        assert_eq!(first_token(MS(2000), MS(500), 12_345), Duration::from_micros(8_172_500));
        assert_eq!(first_token(MS(2000), Duration::ZERO, u32::MAX), MS(2000));
        assert_eq!(first_token(Duration::MAX, MS(500), u32::MAX), Duration::MAX);
    }

    #[test]
    fn the_sample_keeps_the_most_recent_gaps_and_waits_for_enough() {
        let mut s = GapSample::new(100);
        assert_eq!(s.p99(1), None);
        for _ in 0..98 {
            s.push(MS(20));
        }
        s.push(MS(900));
        assert_eq!(s.p99(100), None, "99 gaps are fewer than 100");
        assert_eq!(s.p99(99), Some(MS(20)), "one outlier in 99 lies above the p99");
        s.push(MS(900));
        assert_eq!(s.len(), 100);
        // Nearest rank: the 99th of 100 sorted gaps.
        assert_eq!(s.p99(100), Some(MS(900)), "two outliers in 100 reach the p99");
        // 100 more fast gaps push the outlier out of the ring.
        for _ in 0..100 {
            s.push(MS(20));
        }
        assert_eq!(s.len(), 100);
        assert_eq!(s.p99(100), Some(MS(20)));
        // Gaps are kept to the microsecond, and saturate rather than wrap.
        let mut one = GapSample::new(1);
        one.push(Duration::from_secs(1 << 40));
        assert_eq!(one.p99(1), Some(Duration::from_micros(u64::from(u32::MAX))));
        one.push(Duration::from_micros(1500));
        assert_eq!((one.len(), one.p99(1)), (1, Some(Duration::from_micros(1500))));
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

    #[test]
    fn fixed_is_the_default_and_round_trips() {
        assert!(Adaptive::default().is_fixed());
        let a = Adaptive {
            stall: Some(AdaptiveStall::default()),
            ttft_per_1k_prompt: MS(250),
        };
        let json = serde_json::to_string(&a).expect("json");
        assert_eq!(
            json,
            r#"{"stall":{"k":8.0,"floor_ms":500,"min_samples":100},"ttft_per_1k_prompt_ms":250}"#
        );
        assert_eq!(serde_json::from_str::<Adaptive>(&json).expect("back"), a);
        assert_eq!(
            serde_json::from_str::<Adaptive>("{}").expect("empty"),
            Adaptive::default()
        );
    }
}
