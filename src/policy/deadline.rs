//! Adaptive deadlines: the stall and first-token deadlines of one attempt.
//!
//! The stall deadline adapts by default ([`Adaptive::default`]); a route may
//! also keep it fixed ([`Adaptive::fixed`], `stall_adaptive = false`). It
//! never goes below a floor (1 s by default) nor above the route's configured
//! stall deadline, its ceiling:
//!
//! * when an attempt opens, it follows the inter-token gaps the route has shown
//!   recently for its upstream model, shared by every session through its
//!   [`ModelHealth`](crate::policy::health::ModelHealth): `clamp(k × p99 gap, floor, stall)` ([`stall`]); the
//!   ceiling until enough gaps were seen.
//! * once the attempt's own stream has shown its first [`AdaptiveStall::own_gaps`]
//!   gaps, it follows that stream's own cadence as well ([`own_stall`]):
//!   `clamp(k × max(largest own gap, route p99), floor, stall)`. The larger of
//!   the two learned values wins, so a stream that paused 700 ms once keeps a
//!   deadline far above 700 ms, while a fast stream on a route that has learnt
//!   nothing yet is declared stalled about a floor after its last token, not
//!   after the full ceiling.
//! * the first-token deadline grows with the prompt: `first_token + per-1k ×
//!   prompt tokens / 1000`, with the prompt estimated by
//!   [`estimate_tokens`](crate::request::estimate_tokens) (continuation prefix included).
//!
//! The deadlines an attempt opens with are decided once
//! ([`Route::deadlines_for`](crate::policy::ladder::Route::deadlines_for)) and
//! recorded in its `attempt_opened` event, so a replay re-drives with them
//! instead of recomputing from a history it does not have. A stall the
//! stream's own cadence declared is recorded with the deadline that fired
//! ([`FailureKind::Stall`]), which is what a
//! replay re-drives that attempt under (see [`crate::record::verify`]).
//!
//! Gaps are measured from the watchdog's point of view: from the moment the
//! consumer asks for the next item until an item arrives that was not already
//! waiting. Baton's own backpressure (a slow client) therefore never counts as
//! an upstream gap; at worst it hides one, which only errs towards the floor.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::failure::FailureKind;
use crate::serde_ms as ms;
use crate::stats::percentile;

/// How many recent gaps a route keeps (across all its sessions).
pub const GAP_SAMPLES: usize = 512;
/// The default multiplier on the p99 gap.
pub const DEFAULT_K: f64 = 8.0;
/// The default lowest adaptive stall deadline: below about a second, healthy
/// streams that pause (a tool call being written, a reasoning step) get cut.
pub const DEFAULT_FLOOR: Duration = Duration::from_millis(1000);
/// The default number of gaps a route must have shown before its stall deadline adapts.
pub const DEFAULT_MIN_SAMPLES: u32 = 100;
/// The default number of its own gaps an attempt shows before its cadence counts.
pub const DEFAULT_OWN_GAPS: u32 = 12;
/// The percentile of recent gaps the stall deadline is a multiple of.
pub const GAP_PERCENTILE: f64 = 99.0;
/// The stall deadline never goes below this many times the longest gap the
/// route has shown lately: a route that pauses now and then (too rarely to
/// reach its p99) keeps a deadline above its pauses.
pub const LONGEST_MARGIN: u32 = 2;
/// Gaps per block of a route's long memory (see [`GapSample::longest`]).
const BLOCK: u32 = 64;
/// Blocks of the long memory: its longest gap is that of the last `BLOCKS × BLOCK` gaps.
const BLOCKS: usize = 64;

/// What a route's recent gaps say, once it has shown enough of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GapHistory {
    /// The p99 of the most recent gaps ([`GAP_SAMPLES`] of them).
    pub p99: Duration,
    /// The longest of a longer stretch (the last 4096 gaps).
    pub longest: Duration,
}

impl GapHistory {
    /// A history whose longest gap is its p99 (all its gaps alike).
    pub fn steady(p99: Duration) -> Self {
        GapHistory { p99, longest: p99 }
    }
}

/// How a route's deadlines adapt. The default adapts the stall deadline
/// ([`AdaptiveStall::default`]) and keeps the first-token deadline fixed.
///
/// Serialized (in recordings), a missing `stall` means fixed: recordings made
/// before the default changed kept their stall deadlines fixed unless they say otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
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

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            stall: Some(AdaptiveStall::default()),
            ttft_per_1k_prompt: Duration::ZERO,
        }
    }
}

impl Adaptive {
    /// Nothing adapts: the route's deadlines are used as they are.
    pub const FIXED: Adaptive = Adaptive {
        stall: None,
        ttft_per_1k_prompt: Duration::ZERO,
    };

    /// [`Adaptive::FIXED`], what a recording without an `adaptive` key means.
    pub fn fixed() -> Self {
        Adaptive::FIXED
    }

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
    /// Gaps the attempt's own stream must have shown before its cadence counts
    /// too (see [`own_stall`]); 0: only the route's history (absent in
    /// recordings made before the stream's own cadence counted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub own_gaps: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for AdaptiveStall {
    fn default() -> Self {
        AdaptiveStall {
            k: DEFAULT_K,
            floor: DEFAULT_FLOOR,
            min_samples: DEFAULT_MIN_SAMPLES,
            own_gaps: DEFAULT_OWN_GAPS,
        }
    }
}

/// The stall deadline for `rule` under `ceiling` (the configured stall), given
/// the route's recent gaps (`None`: too few seen yet, so the ceiling holds):
/// `clamp(max(k × p99, LONGEST_MARGIN × longest), floor, ceiling)`.
pub fn stall(rule: &AdaptiveStall, ceiling: Duration, history: Option<GapHistory>) -> Duration {
    let Some(history) = history else {
        return ceiling;
    };
    let k = if rule.k.is_finite() { rule.k.max(0.0) } else { 1.0 };
    // Duration::mul_f64 panics on overflow; a huge product is capped by the ceiling anyway.
    let scaled = Duration::try_from_secs_f64(history.p99.as_secs_f64() * k).unwrap_or(Duration::MAX);
    let above_longest = history.longest.saturating_mul(LONGEST_MARGIN);
    scaled.max(above_longest).clamp(rule.floor.min(ceiling), ceiling)
}

/// What an attempt's own stream has shown so far: how many gaps, and the largest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnGaps {
    /// Gaps measured.
    pub count: u32,
    /// The largest of them.
    pub max: Duration,
}

impl OwnGaps {
    /// Adds one gap.
    pub fn push(&mut self, gap: Duration) {
        self.count = self.count.saturating_add(1);
        self.max = self.max.max(gap);
    }
}

/// The stall deadline for the rest of an attempt under `rule` and `ceiling`,
/// given its own gaps so far and the route's recent gaps (`None`: not known
/// yet); `None` while the stream has shown fewer than `rule.own_gaps` gaps.
///
/// `clamp(max(k × max(largest own gap, route p99), LONGEST_MARGIN × route's
/// longest), floor, ceiling)`: never below what the route's history alone
/// gives ([`stall`]). The largest own gap, not a percentile of them: one
/// 700 ms pause in a fast stream is evidence that it pauses, and the next such
/// pause must not be cut. Rounded up to whole milliseconds, so a recorded
/// deadline reads exactly.
pub fn own_stall(rule: &AdaptiveStall, ceiling: Duration, own: OwnGaps, route: Option<GapHistory>) -> Option<Duration> {
    if rule.own_gaps == 0 || own.count < rule.own_gaps {
        return None;
    }
    let learned = match route {
        Some(h) => GapHistory {
            p99: h.p99.max(own.max),
            longest: h.longest,
        },
        None => GapHistory {
            p99: own.max,
            longest: Duration::ZERO,
        },
    };
    let d = stall(rule, ceiling, Some(learned));
    let up = Duration::from_millis(u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX));
    Some(up.min(ceiling))
}

/// An attempt's own cadence, as its watchdog tracks it: the rule, the ceiling
/// and the route's history as of the attempt's opening, and the gaps seen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cadence {
    rule: AdaptiveStall,
    ceiling: Duration,
    route: Option<GapHistory>,
    own: OwnGaps,
}

impl Cadence {
    /// Nothing seen yet.
    pub fn new(rule: AdaptiveStall, ceiling: Duration, route: Option<GapHistory>) -> Self {
        Cadence {
            rule,
            ceiling,
            route,
            own: OwnGaps::default(),
        }
    }

    /// Adds one gap; the stall deadline from now on, once the stream's cadence counts.
    pub fn see(&mut self, gap: Duration) -> Option<Duration> {
        self.own.push(gap);
        own_stall(&self.rule, self.ceiling, self.own, self.route)
    }
}

/// The first-token deadline for a prompt of `prompt_tokens`: `base` plus `per_1k` per 1000 tokens.
pub fn first_token(base: Duration, per_1k: Duration, prompt_tokens: u32) -> Duration {
    let extra = per_1k.as_nanos().saturating_mul(u128::from(prompt_tokens)) / 1000;
    base.saturating_add(Duration::from_nanos(u64::try_from(extra).unwrap_or(u64::MAX)))
}

/// The deadlines of one route, or of one attempt (serialized in milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlines {
    /// From the request to the first content token.
    #[serde(rename = "first_token_ms", with = "ms")]
    pub first_token: Duration,
    /// Longest silence between tokens.
    #[serde(rename = "stall_ms", with = "ms")]
    pub stall: Duration,
    /// The whole attempt.
    #[serde(rename = "total_ms", with = "ms")]
    pub total: Duration,
    /// The reasoning budget: from the request to the first *answer* token (text
    /// or tool call) of a stream that reasons first; `None` (the default): thinking may last.
    #[serde(
        rename = "reasoning_budget_ms",
        default,
        with = "crate::serde_ms::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub reasoning_budget: Option<Duration>,
}

impl Deadlines {
    /// The watchdog's choice of deadline for the next item, as an offset from
    /// the attempt's start, and the failure when it passes: before any token,
    /// the first-token deadline; after one, the stall deadline from `asked`
    /// (when the next item was asked for); never past the total deadline
    /// (on a tie, the first-token or stall failure); and while a stream that
    /// has reasoned has no answer token yet (`seen_answer` false), never past
    /// the reasoning budget. A re-drive keeps its replayed items under the same
    /// choice (see [`crate::record::verify`]).
    pub fn next_wait(&self, asked: Duration, seen_token: bool, seen_answer: bool) -> (Duration, FailureKind) {
        let (at, kind) = if seen_token {
            (
                asked.saturating_add(self.stall),
                FailureKind::Stall { after: self.stall },
            )
        } else {
            (
                self.first_token,
                FailureKind::FirstTokenTimeout {
                    after: self.first_token,
                },
            )
        };
        let (at, kind) = if at <= self.total {
            (at, kind)
        } else {
            (self.total, FailureKind::TotalTimeout { after: self.total })
        };
        match self.reasoning_budget {
            Some(budget) if seen_token && !seen_answer && budget < at => {
                (budget, FailureKind::ReasoningTimeout { after: budget })
            }
            _ => (at, kind),
        }
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            first_token: Duration::from_secs(10),
            stall: Duration::from_secs(3),
            total: Duration::from_secs(300),
            reasoning_budget: None,
        }
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
    /// The long memory: the longest gap of each of the last [`BLOCKS`] blocks
    /// of [`BLOCK`] gaps, newest last (µs).
    blocks: std::collections::VecDeque<u32>,
    /// Gaps in the newest block.
    in_block: u32,
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
            blocks: std::collections::VecDeque::with_capacity(BLOCKS),
            in_block: 0,
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
        match self.blocks.back_mut() {
            Some(longest) if self.in_block > 0 => *longest = (*longest).max(micros),
            _ => {
                if self.blocks.len() == BLOCKS {
                    self.blocks.pop_front();
                }
                self.blocks.push_back(micros);
            }
        }
        self.in_block = (self.in_block + 1) % BLOCK;
    }

    /// Gaps held.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether no gap was seen yet.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The longest of the last `BLOCKS × BLOCK` gaps (more than are held for
    /// the p99), once at least `min_samples` gaps are held.
    pub fn longest(&self, min_samples: u32) -> Option<Duration> {
        if self.ring.len() < min_samples.max(1) as usize {
            return None;
        }
        self.blocks.iter().max().map(|us| Duration::from_micros(u64::from(*us)))
    }

    /// The p99 and the longest gap, once at least `min_samples` gaps are held.
    pub fn history(&mut self, min_samples: u32) -> Option<GapHistory> {
        Some(GapHistory {
            p99: self.p99(min_samples)?,
            longest: self.longest(min_samples)?,
        })
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
            own_gaps: 0,
        };
        // Too few gaps: the configured deadline.
        assert_eq!(stall(&rule, MS(3000), None), MS(3000));
        // A 20 ms stream: 160 ms.
        assert_eq!(stall(&rule, MS(3000), Some(GapHistory::steady(MS(20)))), MS(160));
        // A 5 ms stream: the floor.
        assert_eq!(stall(&rule, MS(3000), Some(GapHistory::steady(MS(5)))), MS(100));
        // A 2 s stream: capped by the ceiling.
        assert_eq!(stall(&rule, MS(3000), Some(GapHistory::steady(MS(2000)))), MS(3000));
        // A floor above the ceiling yields to the ceiling.
        assert_eq!(
            stall(
                &AdaptiveStall {
                    floor: MS(9000),
                    ..rule
                },
                MS(3000),
                Some(GapHistory::steady(MS(1)))
            ),
            MS(3000)
        );
        // An absurd gap does not overflow.
        assert_eq!(
            stall(&rule, MS(3000), Some(GapHistory::steady(Duration::MAX))),
            MS(3000)
        );
        // A route that paused 900 ms lately, too rarely to reach its p99: twice that.
        let paused = GapHistory {
            p99: MS(20),
            longest: MS(900),
        };
        assert_eq!(stall(&rule, MS(3000), Some(paused)), MS(1800));
        assert_eq!(
            stall(
                &rule,
                MS(3000),
                Some(GapHistory {
                    longest: Duration::MAX,
                    ..paused
                })
            ),
            MS(3000)
        );
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
    fn the_longest_gap_is_remembered_longer_than_the_p99_sample() {
        let mut s = GapSample::default();
        assert_eq!(s.history(1), None);
        s.push(MS(1200));
        for _ in 0..3000 {
            s.push(MS(20));
        }
        // The pause left the p99's ring long ago, not the long memory.
        assert_eq!(
            s.history(100),
            Some(GapHistory {
                p99: MS(20),
                longest: MS(1200)
            })
        );
        // It holds the last 64 blocks of 64 gaps: past 4096 more, the pause is forgotten.
        for _ in 0..1096 {
            s.push(MS(20));
        }
        assert_eq!(s.longest(100), Some(MS(20)));
        assert_eq!(GapSample::default().longest(1), None);
    }

    #[test]
    fn adaptive_stall_is_the_default_and_round_trips() {
        let default = Adaptive::default();
        assert!(!default.is_fixed());
        assert_eq!(
            default.stall,
            Some(AdaptiveStall {
                k: 8.0,
                floor: MS(1000),
                min_samples: 100,
                own_gaps: 12
            })
        );
        assert!(Adaptive::fixed().is_fixed());
        let a = Adaptive {
            ttft_per_1k_prompt: MS(250),
            ..default
        };
        let json = serde_json::to_string(&a).expect("json");
        assert_eq!(
            json,
            r#"{"stall":{"k":8.0,"floor_ms":1000,"min_samples":100,"own_gaps":12},"ttft_per_1k_prompt_ms":250}"#
        );
        assert_eq!(serde_json::from_str::<Adaptive>(&json).expect("back"), a);
        // Read from a recording, a missing key means what recordings made before it meant.
        assert_eq!(
            serde_json::from_str::<Adaptive>("{}").expect("empty"),
            Adaptive::fixed(),
            "no `stall`: fixed"
        );
        let old = r#"{"stall":{"k":8.0,"floor_ms":500,"min_samples":100}}"#;
        let old = serde_json::from_str::<Adaptive>(old).expect("old");
        assert_eq!(
            old.stall.map(|r| (r.floor, r.own_gaps)),
            Some((MS(500), 0)),
            "no `own_gaps`: the route's history only"
        );
        assert_eq!(
            serde_json::to_string(&old).expect("json"),
            r#"{"stall":{"k":8.0,"floor_ms":500,"min_samples":100}}"#,
            "and it writes back as it was"
        );
    }

    #[test]
    fn the_streams_own_cadence_counts_after_its_first_gaps_and_the_larger_learnt_value_wins() {
        let rule = AdaptiveStall {
            own_gaps: 4,
            ..AdaptiveStall::default()
        };
        let ceiling = MS(3000);
        let own = |gaps: &[u64]| {
            let mut o = OwnGaps::default();
            for g in gaps {
                o.push(MS(*g));
            }
            o
        };
        // Too few of its own gaps: nothing to say (the deadline the attempt opened with holds).
        assert_eq!(own_stall(&rule, ceiling, own(&[15, 15, 15]), None), None);
        // A 15 ms stream on a route with no history: the floor, not the ceiling.
        assert_eq!(own_stall(&rule, ceiling, own(&[15, 16, 14, 15]), None), Some(MS(1000)));
        // One 700 ms pause: 8 × 700 ms is past the ceiling, so the next such pause is safe.
        assert_eq!(
            own_stall(&rule, ceiling, own(&[15, 700, 15, 15, 15]), None),
            Some(ceiling)
        );
        // A steady 800 ms stream (a reasoning model): the ceiling.
        assert_eq!(own_stall(&rule, ceiling, own(&[800; 4]), None), Some(ceiling));
        // In between: 8 × 200 ms.
        assert_eq!(own_stall(&rule, ceiling, own(&[20, 200, 20, 20]), None), Some(MS(1600)));
        // The route's p99 counts when it is the larger; never lowers the stream's own.
        assert_eq!(
            own_stall(&rule, ceiling, own(&[15; 4]), Some(GapHistory::steady(MS(250)))),
            Some(MS(2000))
        );
        assert_eq!(
            own_stall(
                &rule,
                ceiling,
                own(&[20, 200, 20, 20]),
                Some(GapHistory::steady(MS(30)))
            ),
            Some(MS(1600))
        );
        // So does twice the route's longest recent gap.
        let paused = GapHistory {
            p99: MS(20),
            longest: MS(1100),
        };
        assert_eq!(own_stall(&rule, ceiling, own(&[15; 4]), Some(paused)), Some(MS(2200)));
        // Rounded up to whole milliseconds, never past the ceiling.
        let mut fractional = own(&[15, 15, 15]);
        fractional.push(Duration::from_micros(150_100));
        assert_eq!(
            own_stall(&rule, ceiling, fractional, None),
            Some(MS(1201)),
            "8 × 150.1 ms"
        );
        assert_eq!(
            own_stall(&rule, Duration::from_micros(2_500_500), own(&[900; 4]), None),
            Some(Duration::from_micros(2_500_500))
        );
        // Off: only the route's history.
        let off = AdaptiveStall { own_gaps: 0, ..rule };
        assert_eq!(own_stall(&off, ceiling, own(&[15; 100]), None), None);
        // The watchdog's tracker says the same, gap by gap.
        let mut cadence = Cadence::new(rule, ceiling, None);
        let seen: Vec<Option<Duration>> = [15, 15, 15, 15, 400].iter().map(|g| cadence.see(MS(*g))).collect();
        assert_eq!(seen, [None, None, None, Some(MS(1000)), Some(ceiling)]);
    }
}
