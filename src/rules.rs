//! Business rules of a ladder: a latency ceiling and a cost ceiling, checked
//! before a route is tried.
//!
//! A route that breaks one is skipped as an attempt that fails at once with a
//! `business` failure ([`FailureKind::TooSlow`], [`FailureKind::OverCost`]):
//! no request is sent, the breaker does not count it, the session moves on,
//! and a recording replays the skip as it happened.
//!
//! The latency ceiling looks at the (route, model)'s *recent* first-token times
//! ([`TtftWindow`], shared by every session): samples older than the window
//! expire, so a route skipped for being slow is tried again once its bad
//! samples have aged out, and its next first tokens decide again.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::failure::FailureKind;
use crate::health::ModelHealth;
use crate::ladder::Route;
use crate::provider::UpstreamRequest;
use crate::request::estimate_tokens;

/// A ladder's ceilings. The default has none.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rules {
    /// Skip a route whose recent p95 time to first token is above this (interactive ladders).
    pub latency_ceiling: Option<Duration>,
    /// Skip a route whose estimated cost for the request is above this, in dollars.
    pub max_cost_per_request: Option<f64>,
}

impl Rules {
    /// The business failure that skips `route` (to `health`'s model) for `request`, if a ceiling is broken.
    pub fn check(&self, route: &Route, health: &ModelHealth, request: &UpstreamRequest) -> Option<FailureKind> {
        if let (Some(ceiling), Some(price)) = (self.max_cost_per_request, route.price_per_1k) {
            // The completion side is the answer reserve context fitting uses.
            let completion = crate::fit::reserve(&request.params);
            let tokens = f64::from(estimate_tokens(&request.messages).saturating_add(completion));
            let cost = tokens / 1000.0 * price;
            if cost > ceiling {
                return Some(FailureKind::OverCost {
                    estimated_micros: micros(cost),
                    ceiling_micros: micros(ceiling),
                });
            }
        }
        if let Some(ceiling) = self.latency_ceiling {
            if let Some(p95) = health.ttft_p95() {
                if p95 > ceiling {
                    return Some(FailureKind::TooSlow {
                        p95_ms: p95.as_millis() as u64,
                        ceiling_ms: ceiling.as_millis() as u64,
                    });
                }
            }
        }
        None
    }
}

fn micros(dollars: f64) -> u64 {
    (dollars * 1e6).round().clamp(0.0, u64::MAX as f64) as u64
}

/// A route's recent times to first token, bounded in count and age.
#[derive(Debug)]
pub struct TtftWindow {
    samples: VecDeque<(Instant, Duration)>,
    capacity: usize,
    max_age: Duration,
    min_samples: usize,
}

impl Default for TtftWindow {
    fn default() -> Self {
        TtftWindow::new(100, Duration::from_secs(60), 5)
    }
}

impl TtftWindow {
    /// A window of at most `capacity` samples no older than `max_age`; no verdict before `min_samples`.
    pub fn new(capacity: usize, max_age: Duration, min_samples: usize) -> Self {
        TtftWindow {
            samples: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            max_age,
            min_samples: min_samples.max(1),
        }
    }

    /// Records one first-token time (a first-token timeout counts as its deadline).
    pub fn record(&mut self, now: Instant, ttft: Duration) {
        self.expire(now);
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((now, ttft));
    }

    /// The p95 of the recent samples, once there are enough of them.
    pub fn p95(&mut self, now: Instant) -> Option<Duration> {
        self.p95_of(now, self.min_samples)
    }

    /// The p95 of the recent samples, once there are at least `min_samples` of them.
    pub fn p95_of(&mut self, now: Instant, min_samples: usize) -> Option<Duration> {
        self.expire(now);
        if self.samples.len() < min_samples.max(1) {
            return None;
        }
        let mut sorted: Vec<Duration> = self.samples.iter().map(|(_, d)| *d).collect();
        sorted.sort_unstable();
        crate::stats::percentile(&sorted, 95.0)
    }

    fn expire(&mut self, now: Instant) {
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.max_age)
        {
            self.samples.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn p95_needs_enough_recent_samples_and_forgets_old_ones() {
        let mut w = TtftWindow::new(10, Duration::from_secs(60), 3);
        let now = Instant::now();
        w.record(now, Duration::from_millis(100));
        w.record(now, Duration::from_millis(200));
        assert_eq!(w.p95(now), None, "two samples are not a verdict");
        w.record(now, Duration::from_millis(3000));
        assert_eq!(w.p95(now), Some(Duration::from_millis(3000)));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(w.p95(Instant::now()), None, "samples older than the window expire");
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_keeps_only_the_latest_samples() {
        let mut w = TtftWindow::new(3, Duration::from_secs(60), 1);
        let now = Instant::now();
        for ms in [5000, 10, 10, 10] {
            w.record(now, Duration::from_millis(ms));
        }
        assert_eq!(w.p95(now), Some(Duration::from_millis(10)));
    }
}
