//! Business rules of a ladder: a latency ceiling and a cost ceiling, checked
//! before a route is tried.
//!
//! A route that breaks one is skipped as an attempt that fails at once with a
//! `business` failure ([`FailureKind::TooSlow`], [`FailureKind::OverCost`]):
//! no request is sent, the breaker does not count it, the session moves on,
//! and a recording replays the skip as it happened.
//!
//! The latency ceiling looks at the (route, model)'s *recent* first-token times
//! ([`TtftWindow`](crate::policy::health::TtftWindow), shared by every session): samples older than the window
//! expire, so a route skipped for being slow is tried again once its bad
//! samples have aged out, and its next first tokens decide again.

use std::time::Duration;

use crate::failure::FailureKind;
use crate::policy::health::ModelHealth;
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
    /// The business failure that skips a route priced `price_per_1k` (to
    /// `health`'s model) for `request`, if a ceiling is broken.
    pub fn check(
        &self,
        price_per_1k: Option<f64>,
        health: &ModelHealth,
        request: &UpstreamRequest,
    ) -> Option<FailureKind> {
        if let (Some(ceiling), Some(price)) = (self.max_cost_per_request, price_per_1k) {
            // The completion side is the answer reserve context fitting uses.
            let completion = crate::policy::fit::reserve(&request.params);
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
