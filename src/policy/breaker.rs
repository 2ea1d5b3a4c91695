//! Circuit breaker per (route, model): closed → open → half-open → closed.
//!
//! Closed, it counts outcomes over a sliding window; it opens when the
//! failure rate over the window exceeds the threshold (once the window holds
//! enough requests) or after a run of consecutive failures. Open, the route
//! is skipped until a cool-down passes; then half-open lets a few probe
//! requests through: a success closes it (traffic returns to the route by
//! itself), a failure opens it again. Time is passed in, so the logic is pure
//! and tests need no clock.
//!
//! # The cool-down follows what a failure costs
//!
//! A probe of a broken upstream costs whoever waits on it as long as the
//! failure takes to show: a 503 in milliseconds is cheap to ask again every
//! second, a ten-second timeout is not. So each outcome carries its cost (from
//! the attempt's admission to its end), and the cool-down after the breaker
//! opens, or after its `n`-th failed probe in a row, is
//!
//! ```text
//! cool_down(cost, n) = min(cap(cost), max(base, 3 × cost) × 2^n)
//! cap(cost)          = clamp(30 × cost, base, max)
//! ```
//!
//! counted from the start of the failed attempt (so it is the time between
//! probe starts; at least half of it still follows the failure's end), where `base` is [`BreakerConfig::cool_down`] (default 1 s)
//! and `max` is [`BreakerConfig::max_cool_down`] (default 5 min). Fast
//! failures (cost ≤ base / 30) are probed every `base`, however long the
//! outage lasts, so a recovered upstream is back within `base`; a 10 s
//! timeout is probed after 30 s, then 60, 120, 240 and every 300 s. A failing
//! probe thus takes at most a third of the time at first and a thirtieth once
//! capped. A success resets `n`.
//!
//! # Who probes
//!
//! With [`ProbeMode::Passive`] (the default) the probe is the next user
//! request. With [`ProbeMode::Active`] users never get the probe slot: baton
//! sends its own tiny request when [`Breaker::next_probe`] is due (see
//! [`crate::engine::probe`]), so no user waits on a slow failure mode. Either way a
//! probe is judged at its first token, not at the attempt's end.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The first cool-down is at least this many times a failure's cost.
pub const START_COSTS: u32 = 3;

/// The cool-down never grows past this many times a failure's cost (nor past the configured maximum).
pub const CAP_COSTS: u32 = 30;

/// Who probes an open breaker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeMode {
    /// The next user request past the cool-down is the probe.
    #[default]
    Passive,
    /// baton sends its own tiny probe request; users skip the route until it
    /// closes. It needs a running [`crate::engine::probe::Prober`] (`baton serve`
    /// starts one; a library calls `Splicer::start_prober`), or an open breaker stays open.
    Active,
}

impl ProbeMode {
    /// Lower-case name, as configs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeMode::Passive => "passive",
            ProbeMode::Active => "active",
        }
    }
}

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
    /// The shortest cool-down: fast failures are probed this often (see the module doc).
    pub cool_down: Duration,
    /// The longest cool-down, however slow or repeated the failures.
    #[serde(default = "default_max_cool_down")]
    pub max_cool_down: Duration,
    /// Probe requests let through while half-open.
    pub probes: u32,
    /// Who probes: a user request or baton itself.
    #[serde(default)]
    pub probe: ProbeMode,
}

/// The default longest cool-down: 5 minutes.
fn default_max_cool_down() -> Duration {
    Duration::from_secs(300)
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(60),
            failure_rate: 0.5,
            min_requests: 20,
            consecutive_failures: 5,
            cool_down: Duration::from_secs(1),
            max_cool_down: default_max_cool_down(),
            probes: 1,
            probe: ProbeMode::Passive,
        }
    }
}

impl BreakerConfig {
    /// The cool-down after the `failed_probes`-th failed probe in a row (0: the
    /// opening), for failures that took `cost` each (the rule in the module doc).
    pub fn cool_down_after(&self, cost: Duration, failed_probes: u32) -> Duration {
        let base = self.cool_down;
        let cap = cost.saturating_mul(CAP_COSTS).clamp(base, self.max_cool_down.max(base));
        let start = base.max(cost.saturating_mul(START_COSTS));
        start.saturating_mul(1u32 << failed_probes.min(20)).min(cap)
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

/// One (route, model)'s breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    phase: Phase,
    /// Outcomes in the window (true: failed), oldest first.
    outcomes: VecDeque<(Instant, bool)>,
    consecutive: u32,
    /// Probes failed in a row since it last closed: the cool-down's exponent.
    failed_probes: u32,
}

/// The answer to [`Breaker::try_acquire`] and [`Breaker::try_probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Allowed {
        /// It holds a half-open probe slot: its outcome decides the state.
        probe: bool,
        /// The open → half-open change this caused, if any.
        transition: Option<Transition>,
    },
    /// The route is open (or its probes are taken): go to the next rung.
    Skipped,
}

/// How an admitted request ended, for [`Breaker::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// It failed in a way that speaks of the upstream's health.
    pub failed: bool,
    /// From its admission to its outcome: what a failure like it costs the one waiting.
    pub cost: Duration,
    /// It held a half-open probe slot (see [`Admission::Allowed`]).
    pub probe: bool,
}

impl Outcome {
    /// An ordinary (not probe) outcome.
    pub fn of(failed: bool, cost: Duration) -> Self {
        Outcome {
            failed,
            cost,
            probe: false,
        }
    }

    /// A probe's outcome.
    pub fn probe(failed: bool, cost: Duration) -> Self {
        Outcome {
            failed,
            cost,
            probe: true,
        }
    }
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
            failed_probes: 0,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
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

    /// When an open breaker's cool-down ends and a probe is due; `None` unless open.
    pub fn next_probe(&self) -> Option<Instant> {
        match self.phase {
            Phase::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Probes failed in a row since it last closed.
    pub fn failed_probes(&self) -> u32 {
        self.failed_probes
    }

    /// A user request asks to be sent at `now`; with active probing, users never take a probe slot.
    pub fn try_acquire(&mut self, now: Instant) -> Admission {
        match self.phase {
            Phase::Closed => Admission::Allowed {
                probe: false,
                transition: None,
            },
            _ if self.config.probe == ProbeMode::Active => Admission::Skipped,
            _ => self.try_probe(now),
        }
    }

    /// A probe asks to be sent at `now`: allowed once the cool-down has passed, while probe slots are free.
    pub fn try_probe(&mut self, now: Instant) -> Admission {
        match self.phase {
            Phase::Open { until } if now >= until => {
                self.phase = Phase::HalfOpen { in_flight: 1 };
                Admission::Allowed {
                    probe: true,
                    transition: Some(Transition {
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                    }),
                }
            }
            Phase::HalfOpen { in_flight } if in_flight < self.config.probes => {
                self.phase = Phase::HalfOpen {
                    in_flight: in_flight + 1,
                };
                Admission::Allowed {
                    probe: true,
                    transition: None,
                }
            }
            Phase::Closed | Phase::Open { .. } | Phase::HalfOpen { .. } => Admission::Skipped,
        }
    }

    /// Gives back a probe slot whose request ended without an outcome
    /// (cancelled, or baton's own resources ran out); with none left in
    /// flight a probe is due again after the shortest cool-down.
    pub fn release(&mut self, now: Instant) {
        if let Phase::HalfOpen { in_flight } = self.phase {
            self.phase = match in_flight.saturating_sub(1) {
                // An active prober probes again then; not at once, or a
                // probe failing locally would loop.
                0 => Phase::Open {
                    until: now + self.config.cool_down,
                },
                in_flight => Phase::HalfOpen { in_flight },
            };
        }
    }

    /// Records the outcome of a request allowed earlier; returns the state change it caused.
    ///
    /// Only a probe's outcome moves a half-open breaker: a request admitted
    /// before it opened says nothing of the upstream now.
    pub fn record(&mut self, now: Instant, outcome: Outcome) -> Option<Transition> {
        let before = self.state(now);
        let failed = outcome.failed;
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
            Phase::HalfOpen { .. } if outcome.probe && failed => {
                self.failed_probes = self.failed_probes.saturating_add(1);
                self.open(now, outcome.cost)
            }
            Phase::HalfOpen { .. } if outcome.probe => {
                // Recovered: forget the bad window, so one old failure cannot reopen it.
                self.outcomes.clear();
                self.failed_probes = 0;
                Phase::Closed
            }
            Phase::Closed if failed && self.should_open() => {
                self.failed_probes = 0;
                self.open(now, outcome.cost)
            }
            other => other,
        };
        let after = self.state(now);
        (before != after).then_some(Transition {
            from: before,
            to: after,
        })
    }

    /// Opens it until `until`, as another instance sharing its state decided:
    /// a closed or open breaker is open until the later of the two ends; one
    /// with probes in flight is left to them. Returns the change it made.
    pub fn force_open(&mut self, now: Instant, until: Instant) -> Option<Transition> {
        let before = self.state(now);
        self.phase = match self.phase {
            Phase::Closed => Phase::Open { until },
            Phase::Open { until: own } => Phase::Open { until: own.max(until) },
            half_open @ Phase::HalfOpen { .. } => half_open,
        };
        let after = self.state(now);
        (before != after).then_some(Transition {
            from: before,
            to: after,
        })
    }

    /// Closes it, as another instance's successful probe did: the bad window
    /// is forgotten, as after a probe of its own. Returns the change it made.
    pub fn force_close(&mut self, now: Instant) -> Option<Transition> {
        let before = self.state(now);
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.outcomes.clear();
            self.consecutive = 0;
            self.failed_probes = 0;
        }
        (before != BreakerState::Closed).then_some(Transition {
            from: before,
            to: BreakerState::Closed,
        })
    }

    /// Open, until the cool-down for a failure that cost `cost` and just ended at `now` has passed.
    fn open(&self, now: Instant, cost: Duration) -> Phase {
        let started = now.checked_sub(cost).unwrap_or(now);
        let cool_down = self.config.cool_down_after(cost, self.failed_probes);
        // Counted from the failed attempt's start (uncapped, at least two
        // thirds of it are still ahead), but at least half of it after the
        // failure ended, however long the failure took.
        Phase::Open {
            until: (started + cool_down).max(now + cool_down / 2),
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

    const FAST: Duration = Duration::from_millis(5);

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(60),
            failure_rate: 0.5,
            min_requests: 10,
            consecutive_failures: 4,
            cool_down: Duration::from_secs(30),
            probes: 1,
            ..BreakerConfig::default()
        }
    }

    fn allowed(probe: bool, transition: Option<Transition>) -> Admission {
        Admission::Allowed { probe, transition }
    }

    const TO_HALF_OPEN: Transition = Transition {
        from: BreakerState::Open,
        to: BreakerState::HalfOpen,
    };

    #[test]
    fn another_instances_opening_and_closing_apply_and_a_later_end_wins() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        let opened = b.force_open(t0, t0 + Duration::from_secs(10));
        assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));
        assert_eq!(b.try_acquire(t0 + Duration::from_secs(1)), Admission::Skipped);
        // An earlier end does not shorten it; a later one lengthens it.
        assert_eq!(b.force_open(t0, t0 + Duration::from_secs(5)), None);
        assert_eq!(b.next_probe(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(b.force_open(t0, t0 + Duration::from_secs(20)), None);
        assert_eq!(b.next_probe(), Some(t0 + Duration::from_secs(20)));
        let closed = b.force_close(t0 + Duration::from_secs(2));
        assert_eq!(
            closed.map(|t| (t.from, t.to)),
            Some((BreakerState::Open, BreakerState::Closed))
        );
        assert_eq!(b.force_close(t0 + Duration::from_secs(3)), None);
        // The window was forgotten: it takes the full count of failures to open again.
        for i in 0..3 {
            assert_eq!(b.record(t0 + Duration::from_secs(4 + i), Outcome::of(true, FAST)), None);
        }
        assert!(b.record(t0 + Duration::from_secs(8), Outcome::of(true, FAST)).is_some());
    }

    #[test]
    fn a_half_open_breaker_is_left_to_its_probe() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        b.force_open(t0, t0 + Duration::from_secs(1));
        let later = t0 + Duration::from_secs(2);
        assert_eq!(b.try_probe(later), allowed(true, Some(TO_HALF_OPEN)));
        assert_eq!(b.force_open(later, later + Duration::from_secs(30)), None);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
    }

    #[test]
    fn consecutive_failures_open_it_and_a_probe_closes_it() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for i in 0..3 {
            assert_eq!(b.try_acquire(t0), allowed(false, None));
            assert_eq!(b.record(t0 + Duration::from_secs(i), Outcome::of(true, FAST)), None);
        }
        let opened = b.record(t0 + Duration::from_secs(3), Outcome::of(true, FAST));
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
        assert_eq!(b.try_acquire(probe_time), allowed(true, Some(TO_HALF_OPEN)));
        assert_eq!(
            b.try_acquire(probe_time),
            Admission::Skipped,
            "only one probe at a time"
        );
        // A request admitted before it opened ends now: it decides nothing.
        assert_eq!(b.record(probe_time, Outcome::of(false, FAST)), None);
        assert_eq!(b.state(probe_time), BreakerState::HalfOpen);
        let closed = b.record(probe_time, Outcome::probe(false, FAST));
        assert_eq!(
            closed,
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Closed
            })
        );
        assert_eq!(b.try_acquire(probe_time), allowed(false, None));
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for i in 0..4 {
            b.record(t0 + Duration::from_millis(i), Outcome::of(true, FAST));
        }
        let probe = t0 + Duration::from_secs(31);
        assert!(matches!(b.try_acquire(probe), Admission::Allowed { probe: true, .. }));
        assert_eq!(
            b.record(probe, Outcome::probe(true, FAST)),
            Some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Open
            })
        );
        assert_eq!(b.try_acquire(probe + Duration::from_secs(29)), Admission::Skipped);
    }

    /// Opens a default breaker with failures costing `cost` at `t0`; returns it.
    fn opened(t0: Instant, cost: Duration) -> Breaker {
        let mut b = Breaker::new(BreakerConfig::default());
        for _ in 0..BreakerConfig::default().consecutive_failures {
            b.try_acquire(t0);
            b.record(t0 + cost, Outcome::of(true, cost));
        }
        assert_eq!(b.state(t0 + cost), BreakerState::Open);
        b
    }

    /// The times between probe starts while every probe fails after `cost`, over `probes` probes.
    fn probe_intervals(cost: Duration, probes: usize) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut b = opened(t0, cost);
        let mut last = t0;
        let mut out = Vec::new();
        for _ in 0..probes {
            let due = b.next_probe().expect("open");
            assert_eq!(
                b.try_probe(due - Duration::from_millis(1)),
                Admission::Skipped,
                "not before it is due"
            );
            assert_eq!(b.try_probe(due), allowed(true, Some(TO_HALF_OPEN)));
            assert_eq!(b.try_probe(due), Admission::Skipped, "one probe per step");
            out.push(due - last);
            last = due;
            b.record(due + cost, Outcome::probe(true, cost));
        }
        out
    }

    #[test]
    fn fast_failures_are_probed_every_second_however_long_the_outage() {
        let intervals = probe_intervals(FAST, 100);
        assert!(intervals.iter().all(|d| *d == Duration::from_secs(1)), "{intervals:?}");
    }

    #[test]
    fn slow_failures_are_probed_rarely_growing_to_the_cap() {
        let secs: Vec<u64> = probe_intervals(Duration::from_secs(10), 8)
            .iter()
            .map(Duration::as_secs)
            .collect();
        // The opening failure began at t0: 3 × 10 s from there, then doubling to 30 × 10 s.
        assert_eq!(secs, [30, 60, 120, 240, 300, 300, 300, 300]);
        // A middling cost grows from the base to its own cap.
        let ms: Vec<u128> = probe_intervals(Duration::from_millis(100), 5)
            .iter()
            .map(Duration::as_millis)
            .collect();
        assert_eq!(ms, [1000, 2000, 3000, 3000, 3000]);
    }

    #[test]
    fn the_rule_is_capped_by_the_configured_maximum_and_floored_by_the_base() {
        let c = BreakerConfig {
            cool_down: Duration::from_millis(200),
            max_cool_down: Duration::from_secs(60),
            ..BreakerConfig::default()
        };
        assert_eq!(c.cool_down_after(Duration::ZERO, 0), Duration::from_millis(200));
        assert_eq!(c.cool_down_after(Duration::ZERO, 30), Duration::from_millis(200));
        assert_eq!(c.cool_down_after(Duration::from_secs(10), 0), Duration::from_secs(30));
        assert_eq!(c.cool_down_after(Duration::from_secs(10), 1), Duration::from_secs(60));
        assert_eq!(c.cool_down_after(Duration::from_secs(10), 9), Duration::from_secs(60));
        // A maximum below the base is read as the base.
        let odd = BreakerConfig {
            max_cool_down: Duration::from_millis(1),
            ..c
        };
        assert_eq!(
            odd.cool_down_after(Duration::from_secs(10), 3),
            Duration::from_millis(200)
        );
        // A failure slower than the cap still waits half the cap after it ends.
        let mut b = Breaker::new(BreakerConfig {
            consecutive_failures: 1,
            ..c
        });
        let t0 = Instant::now();
        b.record(
            t0 + Duration::from_secs(600),
            Outcome::of(true, Duration::from_secs(600)),
        );
        assert_eq!(b.next_probe(), Some(t0 + Duration::from_secs(630)));
    }

    #[test]
    fn a_success_resets_the_growth() {
        let t0 = Instant::now();
        let cost = Duration::from_secs(10);
        let mut b = opened(t0, cost);
        for _ in 0..3 {
            let due = b.next_probe().expect("open");
            b.try_probe(due);
            b.record(due + cost, Outcome::probe(true, cost));
        }
        assert_eq!(b.failed_probes(), 3);
        let due = b.next_probe().expect("open");
        b.try_probe(due);
        b.record(
            due + Duration::from_millis(50),
            Outcome::probe(false, Duration::from_millis(50)),
        );
        assert_eq!((b.state(due), b.failed_probes()), (BreakerState::Closed, 0));
        // The next outage starts from the short end again.
        let t1 = due + Duration::from_secs(1);
        for _ in 0..5 {
            b.record(t1 + cost, Outcome::of(true, cost));
        }
        assert_eq!(b.next_probe(), Some(t1 + Duration::from_secs(30)));
    }

    #[test]
    fn with_active_probing_users_never_take_the_probe_slot() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            probe: ProbeMode::Active,
            consecutive_failures: 1,
            ..BreakerConfig::default()
        });
        b.record(t0, Outcome::of(true, FAST));
        let due = b.next_probe().expect("open");
        assert_eq!(b.state(due), BreakerState::HalfOpen);
        assert_eq!(b.try_acquire(due), Admission::Skipped, "a user past the cool-down");
        assert_eq!(b.try_probe(due), allowed(true, Some(TO_HALF_OPEN)));
        assert_eq!(b.try_acquire(due), Admission::Skipped, "a user while baton probes");
        assert_eq!(b.next_probe(), None, "a probe is in flight");
        b.record(due, Outcome::probe(false, FAST));
        assert_eq!(b.try_acquire(due), allowed(false, None));
        assert_eq!(b.try_probe(due), Admission::Skipped, "closed: nothing to probe");

        // A probe cancelled before its verdict: due again after the shortest cool-down, still for baton only.
        b.record(due, Outcome::of(true, FAST));
        let due = b.next_probe().expect("open");
        assert!(matches!(b.try_probe(due), Admission::Allowed { probe: true, .. }));
        b.release(due);
        let again = due + Duration::from_secs(1);
        assert_eq!((b.next_probe(), b.state(again)), (Some(again), BreakerState::HalfOpen));
        assert_eq!(b.try_acquire(again), Admission::Skipped);
        assert!(matches!(b.try_probe(again), Admission::Allowed { probe: true, .. }));
    }

    #[test]
    fn old_configs_deserialize_with_the_new_defaults() {
        let old = r#"{"window":{"secs":60,"nanos":0},"failure_rate":0.5,"min_requests":20,
            "consecutive_failures":5,"cool_down":{"secs":30,"nanos":0},"probes":1}"#;
        let c: BreakerConfig = serde_json::from_str(old).expect("an old config");
        assert_eq!(c.max_cool_down, Duration::from_secs(300));
        assert_eq!(c.probe, ProbeMode::Passive);
        assert_eq!(c.cool_down, Duration::from_secs(30));
    }

    #[test]
    fn the_rate_needs_enough_requests_and_old_outcomes_leave_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        // Alternate: 50 % failures never exceeds the 0.5 threshold, and never 4 in a row.
        for i in 0..20 {
            assert_eq!(
                b.record(t0 + Duration::from_millis(i), Outcome::of(i % 2 == 1, FAST)),
                None
            );
        }
        // Three failures in a row tip the rate over 0.5 within the window.
        let mut opened = None;
        for i in 0..3 {
            opened = opened.or(b.record(t0 + Duration::from_millis(100 + i), Outcome::of(true, FAST)));
        }
        assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));

        // A fresh breaker: failures spread wider than the window never accumulate.
        let mut b = Breaker::new(config());
        for i in 0..30u64 {
            let failed = i % 3 != 0;
            let t = t0 + Duration::from_secs(i * 61);
            assert_eq!(b.record(t, Outcome::of(failed, FAST)), None, "at {i}");
        }
        assert_eq!(b.state(t0 + Duration::from_secs(30 * 61)), BreakerState::Closed);
    }
}
