//! Hedged requests: when an attempt's first token is late, the next route is
//! started in parallel and whichever produces content first is streamed.
//!
//! # The timing rule
//!
//! An attempt is hedged once its first token is later than the route's recent
//! p95 time to first token ([`ModelHealth::ttft_p95_of`]), over at least
//! `min_samples` recent samples; `after` (the ladder's `hedge_after_ms`) is
//! then a floor under that p95. With fewer samples, `after` alone decides, and
//! without it the attempt is not hedged: a route's normal pace must be known
//! before it is called late. Delays are whole milliseconds (at least 1), so the
//! one recorded in the `hedge` event is the one a replay uses.
//!
//! # The race
//!
//! Only before the attempt's first content: the client has nothing of it yet,
//! so either side can be streamed. Content (text or tool calls) or a finish
//! decides the race; the other attempt is dropped, which frees its breaker
//! permit without counting a failure. A side that fails first is recorded as a
//! failure as usual and the other goes on alone (a failed primary becomes a
//! handover to the hedge). Each attempt the ladder opens is hedged at most
//! once; a hedge is never hedged itself. A handover attempt that continues a
//! prefix may be hedged too: both sides continue the same prefix.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::policy::health::ModelHealth;

/// Default `hedge_min_samples`: recent first-token times needed before a route's p95 counts.
pub const DEFAULT_MIN_SAMPLES: usize = 5;

/// A ladder's hedging settings, and how its hedges ended.
#[derive(Clone, Debug)]
pub struct HedgePolicy {
    /// Floor under the p95, and the delay used while too few samples are known (`None`: wait for samples).
    pub after: Option<Duration>,
    /// Recent first-token times needed before the route's p95 is used.
    pub min_samples: usize,
    counts: Arc<HedgeCounts>,
}

/// How a hedge race ended, as counted in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The hedge's content came first; the original attempt was cancelled.
    HedgeWon,
    /// The original attempt's content came first; the hedge was cancelled.
    PrimaryWon,
    /// The original attempt failed first; the hedge went on.
    PrimaryFailed,
    /// The hedge failed first; the original attempt went on.
    HedgeFailed,
}

impl Outcome {
    /// Every outcome, in metrics order.
    pub const ALL: [Outcome; 4] = [
        Outcome::HedgeWon,
        Outcome::PrimaryWon,
        Outcome::PrimaryFailed,
        Outcome::HedgeFailed,
    ];

    /// The outcome of a race: `by_hedge` if the hedge went on, `cancelled` if the other was still running.
    pub fn of(by_hedge: bool, cancelled: bool) -> Self {
        match (by_hedge, cancelled) {
            (true, true) => Outcome::HedgeWon,
            (false, true) => Outcome::PrimaryWon,
            (true, false) => Outcome::PrimaryFailed,
            (false, false) => Outcome::HedgeFailed,
        }
    }

    /// Its metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::HedgeWon => "hedge_won",
            Outcome::PrimaryWon => "primary_won",
            Outcome::PrimaryFailed => "primary_failed",
            Outcome::HedgeFailed => "hedge_failed",
        }
    }
}

/// Races ended, per outcome, shared by every clone of a ladder.
#[derive(Debug, Default)]
struct HedgeCounts([AtomicU64; 4]);

impl HedgePolicy {
    /// Hedging with `after` as floor and fallback, once `min_samples` first-token times are known.
    pub fn new(after: Option<Duration>, min_samples: usize) -> Self {
        HedgePolicy {
            after,
            min_samples: min_samples.max(1),
            counts: Arc::default(),
        }
    }

    /// When an attempt on a route with `health` is hedged under live traffic,
    /// if at all (a replay hedges as recorded: see [`crate::policy::health::Decisions`]).
    pub fn delay(&self, health: &ModelHealth) -> Option<Duration> {
        delay(health.ttft_p95_of(self.min_samples), self.after)
    }

    /// Counts a race's end.
    pub fn count(&self, outcome: Outcome) {
        self.counts.0[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Races ended so far with `outcome`, by this ladder and its clones.
    pub fn ended(&self, outcome: Outcome) -> u64 {
        self.counts.0[outcome as usize].load(Ordering::Relaxed)
    }
}

/// The hedge delay for a route whose p95 time to first token is `p95` (`None`:
/// too few samples), with the ladder's floor/fallback `after`. See the module docs.
pub fn delay(p95: Option<Duration>, after: Option<Duration>) -> Option<Duration> {
    let d = match (p95, after) {
        (Some(p95), Some(floor)) => p95.max(floor),
        (Some(p95), None) => p95,
        (None, after) => after?,
    };
    // Whole milliseconds: the recorded `after_ms` must be exactly what was used.
    Some(Duration::from_millis((d.as_millis() as u64).max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_p95_decides_once_known_with_the_floor_under_it() {
        assert_eq!(delay(Some(ms(800)), None), Some(ms(800)));
        assert_eq!(delay(Some(ms(800)), Some(ms(300))), Some(ms(800)));
        assert_eq!(delay(Some(ms(100)), Some(ms(300))), Some(ms(300)));
    }

    #[test]
    fn without_samples_the_fallback_decides_or_nothing_is_hedged() {
        assert_eq!(delay(None, Some(ms(300))), Some(ms(300)));
        assert_eq!(delay(None, None), None);
    }

    #[test]
    fn delays_are_whole_milliseconds_of_at_least_one() {
        assert_eq!(delay(Some(Duration::from_micros(1500)), None), Some(ms(1)));
        assert_eq!(delay(Some(Duration::from_micros(300)), None), Some(ms(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn too_few_samples_are_no_p95() {
        let health = crate::policy::health::RouteHealth::default().model("m");
        health.record_ttft(ms(50));
        health.record_ttft(ms(60));
        let policy = HedgePolicy::new(None, 3);
        assert_eq!(policy.delay(&health), None);
        health.record_ttft(ms(70));
        assert_eq!(policy.delay(&health), Some(ms(70)));
        assert_eq!(HedgePolicy::new(None, 1).delay(&health), Some(ms(70)));
    }

    #[test]
    fn outcomes_are_counted_per_ladder() {
        let policy = HedgePolicy::new(None, 5);
        let clone = policy.clone();
        clone.count(Outcome::of(true, true));
        policy.count(Outcome::of(false, false));
        assert_eq!(policy.ended(Outcome::HedgeWon), 1);
        assert_eq!(policy.ended(Outcome::HedgeFailed), 1);
        assert_eq!(policy.ended(Outcome::PrimaryWon), 0);
    }
}
