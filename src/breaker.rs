//! Circuit breaker per route: closed → open → half-open → closed.
//!
//! Closed, it counts outcomes over a sliding window; it opens when the
//! failure rate over the window exceeds the threshold (once the window holds
//! enough requests) or after a run of consecutive failures. Open, the route
//! is skipped until a cool-down passes; then half-open lets a few probe
//! requests through: a success closes it (traffic returns to the route by
//! itself), a failure opens it again. Time is passed in, so the logic is pure
//! and tests need no clock.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// When a breaker opens and how it recovers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BreakerConfig {
    /// The sliding window outcomes are counted over.
    pub window: Duration,
    /// Open when failures / requests in the window exceed this.
    pub failure_rate: f64,
    /// …but only once the window holds at least this many requests.
    pub min_requests: u32,
    /// Open after this many failures in a row, whatever the rate.
    pub consecutive_failures: u32,
    /// How long an open breaker stays open before probing.
    pub cool_down: Duration,
    /// Probe requests let through while half-open.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(60),
            failure_rate: 0.5,
            min_requests: 20,
            consecutive_failures: 5,
            cool_down: Duration::from_secs(30),
            probes: 1,
        }
    }
}

/// A breaker's state, as events and metrics show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// The route is skipped.
    Open,
    /// A few probes are let through.
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32 },
}

/// One route's breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    phase: Phase,
    /// Outcomes in the window (true: failed), oldest first.
    outcomes: VecDeque<(Instant, bool)>,
    consecutive: u32,
}

/// The answer to [`Breaker::try_acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send it; with the open → half-open change this caused, if any.
    Allowed(Option<Transition>),
    /// The route is open (or its probes are taken): go to the next rung.
    Skipped,
}

/// A change of state, to publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            phase: Phase::Closed,
            outcomes: VecDeque::new(),
            consecutive: 0,
        }
    }

    /// The state at `now` (an open breaker past its cool-down reads half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now >= until => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to send a request at `now`.
    pub fn try_acquire(&mut self, now: Instant) -> Admission {
        match self.phase {
            Phase::Closed => Admission::Allowed(None),
            Phase::Open { until } if now >= until => {
                self.phase = Phase::HalfOpen { in_flight: 1 };
                Admission::Allowed(Some(Transition {
                    from: BreakerState::Open,
                    to: BreakerState::HalfOpen,
                }))
            }
            Phase::Open { .. } => Admission::Skipped,
            Phase::HalfOpen { in_flight } if in_flight < self.config.probes => {
                self.phase = Phase::HalfOpen {
                    in_flight: in_flight + 1,
                };
                Admission::Allowed(None)
            }
            Phase::HalfOpen { .. } => Admission::Skipped,
        }
    }

    /// Gives back a probe slot whose request ended without an outcome (cancelled).
    pub fn release(&mut self) {
        if let Phase::HalfOpen { in_flight } = self.phase {
            self.phase = Phase::HalfOpen {
                in_flight: in_flight.saturating_sub(1),
            };
        }
    }

    /// Records the outcome of a request allowed earlier; returns the state change it caused.
    pub fn record(&mut self, now: Instant, failed: bool) -> Option<Transition> {
        let before = self.state(now);
        self.outcomes.push_back((now, failed));
        while self
            .outcomes
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.config.window)
        {
            self.outcomes.pop_front();
        }
        self.consecutive = if failed { self.consecutive + 1 } else { 0 };
        self.phase = match self.phase {
            Phase::HalfOpen { .. } if failed => self.open(now),
            Phase::HalfOpen { .. } => {
                // Recovered: forget the bad window, so one old failure cannot reopen it.
                self.outcomes.clear();
                Phase::Closed
            }
            Phase::Closed if failed && self.should_open() => self.open(now),
            other => other,
        };
        let after = self.state(now);
        (before != after).then_some(Transition {
            from: before,
            to: after,
        })
    }

    fn open(&self, now: Instant) -> Phase {
        Phase::Open {
            until: now + self.config.cool_down,
        }
    }

    fn should_open(&self) -> bool {
        if self.consecutive >= self.config.consecutive_failures {
            return true;
        }
        let total = self.outcomes.len() as u32;
        let failed = self.outcomes.iter().filter(|(_, f)| *f).count() as f64;
        total >= self.config.min_requests && failed / f64::from(total) > self.config.failure_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(60),
            failure_rate: 0.5,
            min_requests: 10,
            consecutive_failures: 4,
            cool_down: Duration::from_secs(30),
            probes: 1,
        }
    }

    #[test]
    fn consecutive_failures_open_it_and_a_probe_closes_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for i in 0..3 {
            assert_eq!(b.try_acquire(t0), Admission::Allowed(None));
            assert_eq!(b.record(t0 + Duration::from_secs(i), true), None);
        }
        let opened = b.record(t0 + Duration::from_secs(3), true);
        assert_eq!(
            opened,
            Some(Transition {
                from: BreakerState::Closed,
                to: BreakerState::Open
            })
        );
        assert_eq!(b.try_acquire(t0 + Duration::from_secs(10)), Admission::Skipped);
        let probe_time = t0 + Duration::from_secs(40);
        assert_eq!(b.state(probe_time), BreakerState::HalfOpen);
        assert_eq!(
            b.try_acquire(probe_time),
            Admission::Allowed(Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen
            }))
        );
        assert_eq!(
            b.try_acquire(probe_time),
            Admission::Skipped,
            "only one probe at a time"
        );
        let closed = b.record(probe_time, false);
        assert_eq!(
            closed,
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Closed
            })
        );
        assert_eq!(b.try_acquire(probe_time), Admission::Allowed(None));
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for i in 0..4 {
            b.record(t0 + Duration::from_millis(i), true);
        }
        let probe = t0 + Duration::from_secs(31);
        assert!(matches!(b.try_acquire(probe), Admission::Allowed(_)));
        assert_eq!(
            b.record(probe, true),
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Open
            })
        );
        assert_eq!(b.try_acquire(probe + Duration::from_secs(29)), Admission::Skipped);
    }

    #[test]
    fn the_rate_needs_enough_requests_and_old_outcomes_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        // Alternate: 50 % failures never exceeds the 0.5 threshold, and never 4 in a row.
        for i in 0..20 {
            assert_eq!(b.record(t0 + Duration::from_millis(i), i % 2 == 1), None);
        }
        // Three failures in a row tip the rate over 0.5 within the window.
        let mut opened = None;
        for i in 0..3 {
            opened = opened.or(b.record(t0 + Duration::from_millis(100 + i), true));
        }
        assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));

        // A fresh breaker: failures spread wider than the window never accumulate.
        let mut b = Breaker::new(config());
        for i in 0..30u64 {
            let failed = i % 3 != 0;
            let t = t0 + Duration::from_secs(i * 61);
            assert_eq!(b.record(t, failed), None, "at {i}");
        }
        assert_eq!(b.state(t0 + Duration::from_secs(30 * 61)), BreakerState::Closed);
    }
}
