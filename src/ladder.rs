//! The ladder: ordered routes, and what to do after each failure.
//!
//! [`Ladder::decide`] is a pure function of the failure and the attempt's
//! state; the splicer is a thin async driver around it.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::CacheRung;
use crate::continuation::{ContinuationMode, DEFAULT_INSTRUCTION};
use crate::deadline::Adaptive;
use crate::failure::{FailureClass, FailureKind};
use crate::health::RouteHealth;
use crate::hedge::HedgePolicy;
use crate::loopguard::LoopConfig;
use crate::overlap::OverlapMode;
use crate::provider::Provider;
use crate::rules::Rules;
use crate::safe_reply::SafeReply;
use crate::watchdog::Deadlines;

/// One upstream model behind one provider.
#[derive(Clone)]
pub struct Route {
    /// Its name in events and configs.
    pub name: Arc<str>,
    /// The upstream's model name.
    pub model: Arc<str>,
    /// Where requests go.
    pub provider: Arc<dyn Provider>,
    /// How it continues a prefix (it may switch to `Instruct` if prefill is rejected).
    pub continuation: ContinuationMode,
    /// In prefill mode, send `continue_final_message: true, add_generation_prompt: false` (vLLM, SGLang).
    pub continue_final_message: bool,
    /// Its deadlines (with adaptive stall, `stall` is the ceiling and the value before enough gaps were seen).
    pub deadlines: Deadlines,
    /// How its deadlines adapt per attempt; by default the stall deadline adapts, the others are fixed.
    pub adaptive: Adaptive,
    /// Its context window in tokens; a context-length failure moves to a larger one.
    pub context_tokens: u32,
    /// Its circuit breaker and retry budget, shared by every session (and clone).
    pub health: Arc<RouteHealth>,
    /// Its price in dollars per 1k tokens, for a ladder's cost ceiling.
    pub price_per_1k: Option<f64>,
    /// When a repeat at the seam is taken for an echo and trimmed.
    pub overlap: OverlapMode,
}

impl Route {
    /// A route with default deadlines, prefill continuation and a 128k context.
    pub fn new(name: &str, model: &str, provider: Arc<dyn Provider>) -> Self {
        Route {
            name: name.into(),
            model: model.into(),
            provider,
            continuation: ContinuationMode::Prefill,
            continue_final_message: false,
            deadlines: Deadlines::default(),
            adaptive: Adaptive::default(),
            context_tokens: 128_000,
            health: Arc::new(RouteHealth::default()),
            price_per_1k: None,
            overlap: OverlapMode::Auto,
        }
    }

    /// The same route continuing in `mode`.
    pub fn with_continuation(mut self, mode: ContinuationMode) -> Self {
        self.continuation = mode;
        self
    }

    /// The same route with `deadlines`.
    pub fn with_deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// The same route with deadlines that adapt as `adaptive` says.
    pub fn with_adaptive(mut self, adaptive: Adaptive) -> Self {
        self.adaptive = adaptive;
        self
    }

    /// The same route with the overlap setting `overlap`.
    pub fn with_overlap(mut self, overlap: OverlapMode) -> Self {
        self.overlap = overlap;
        self
    }

    /// The same route with a context window of `tokens`.
    pub fn with_context(mut self, tokens: u32) -> Self {
        self.context_tokens = tokens;
        self
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("model", &self.model)
            .field("continuation", &self.continuation)
            .field("deadlines", &self.deadlines)
            .field("adaptive", &self.adaptive)
            .field("context_tokens", &self.context_tokens)
            .field("overlap", &self.overlap)
            .finish_non_exhaustive()
    }
}

/// Retries of the same route, before its first token only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries per route per session.
    pub max_retries: u32,
    /// The first backoff ceiling; doubles with each retry.
    pub base_delay: Duration,
    /// The largest backoff.
    pub max_delay: Duration,
    /// A `Retry-After` up to this long is waited for; a longer one hands over instead.
    pub retry_after_ceiling: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            retry_after_ceiling: Duration::from_secs(5),
        }
    }
}

/// An ordered list of routes and the rules for moving along it.
#[derive(Clone, Debug)]
pub struct Ladder {
    /// Its name (the model clients ask for), in events and metrics.
    pub name: String,
    /// The routes, best first.
    pub routes: Vec<Route>,
    /// Same-route retries.
    pub retry: RetryPolicy,
    /// The user message that asks an `instruct` route to continue.
    pub instruction: String,
    /// Ceilings on latency and cost that skip routes.
    pub rules: Rules,
    /// The response cache, as first rung and/or last resort.
    pub cache: Option<CacheRung>,
    /// The degraded answer when nothing else can answer.
    pub safe_reply: Option<SafeReply>,
    /// The loop guard's settings; `None` turns it off.
    pub loop_guard: Option<LoopConfig>,
    /// Hedging of late first tokens; `None` (the default) turns it off.
    pub hedge: Option<HedgePolicy>,
}

impl Ladder {
    /// A ladder named "default" over `routes` with the default retry policy and instruction.
    pub fn new(routes: Vec<Route>) -> Self {
        Ladder {
            name: "default".to_string(),
            routes,
            retry: RetryPolicy::default(),
            instruction: DEFAULT_INSTRUCTION.to_string(),
            rules: Rules::default(),
            cache: None,
            safe_reply: None,
            loop_guard: Some(LoopConfig::default()),
            hedge: None,
        }
    }
}

/// Where an attempt stood when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptState {
    /// Index of its route.
    pub route: usize,
    /// Retries already spent on this route.
    pub retries: u32,
    /// Its continuation mode.
    pub mode: ContinuationMode,
    /// Whether it produced any content.
    pub produced_text: bool,
}

impl AttemptState {
    /// The first attempt on `route` (at index `index`): no retries yet, and the
    /// route's continuation — instruct if it has rejected a prefill before.
    pub fn first_on(index: usize, route: &Route) -> Self {
        AttemptState {
            route: index,
            retries: 0,
            mode: route.health.continuation(route.continuation),
            produced_text: false,
        }
    }
}

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try the same route again after `delay`.
    Retry {
        /// The pause.
        delay: Duration,
    },
    /// Try the same route again at once, continuing by instruction instead of prefill.
    SwitchToInstruct,
    /// Move to the route at this index.
    HandOver {
        /// Its index.
        to: usize,
    },
    /// A policy refusal: stop and tell the caller the provider's reason.
    Refuse,
    /// baton itself ran out of resources: stop, blaming no route (the next
    /// would meet the same limit, and its health would pay for it).
    Local,
    /// No route is left.
    Exhausted,
}

impl Ladder {
    /// The same ladder named `name`.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The route a hedge of an attempt on route `from` goes to: the next one, if any.
    pub fn hedge_route(&self, from: usize) -> Option<usize> {
        let next = from.checked_add(1)?;
        (next < self.routes.len()).then_some(next)
    }

    /// The next step after `failure` on the attempt described by `state`.
    /// `jitter` in `[0, 1)` scales the exponential backoff (full jitter).
    pub fn decide(&self, failure: &FailureKind, state: &AttemptState, jitter: f64) -> Decision {
        match failure.class() {
            FailureClass::Policy => return Decision::Refuse,
            FailureClass::Local => return Decision::Local,
            _ => {}
        }
        if matches!(failure, FailureKind::PrefillRejected { .. }) && state.mode == ContinuationMode::Prefill {
            return Decision::SwitchToInstruct;
        }
        let retryable = matches!(
            failure,
            FailureKind::RateLimited { .. } | FailureKind::ServerError { .. } | FailureKind::Reset { .. }
        );
        if retryable && !state.produced_text && state.retries < self.retry.max_retries {
            match failure.retry_after() {
                Some(wait) if wait <= self.retry.retry_after_ceiling => return Decision::Retry { delay: wait },
                Some(_) => {} // too long to keep the user waiting: hand over
                None => {
                    let ceiling = self
                        .retry
                        .base_delay
                        .saturating_mul(1u32 << state.retries.min(16))
                        .min(self.retry.max_delay);
                    return Decision::Retry {
                        delay: ceiling.mul_f64(jitter.clamp(0.0, 1.0)),
                    };
                }
            }
        }
        let current = self.routes.get(state.route).map_or(0, |r| r.context_tokens);
        // A request that did not fit will not fit a window as small or smaller either.
        let needs_bigger = matches!(
            failure,
            FailureKind::ContextLength { .. } | FailureKind::ContextTooSmall { .. }
        );
        self.routes
            .iter()
            .enumerate()
            .skip(state.route + 1)
            .find(|(_, r)| !needs_bigger || r.context_tokens > current)
            .map_or(Decision::Exhausted, |(to, _)| Decision::HandOver { to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::{
        fault::{FaultPlan, FaultScript},
        Style,
    };
    use crate::provider::mock::MockProvider;

    fn ladder(contexts: &[u32]) -> Ladder {
        let provider: Arc<dyn Provider> =
            Arc::new(MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()));
        Ladder::new(
            contexts
                .iter()
                .enumerate()
                .map(|(i, c)| Route::new(&format!("r{i}"), "m", provider.clone()).with_context(*c))
                .collect(),
        )
    }

    fn state(route: usize, retries: u32, produced_text: bool) -> AttemptState {
        AttemptState {
            route,
            retries,
            mode: ContinuationMode::Prefill,
            produced_text,
        }
    }

    #[test]
    fn retries_before_the_first_token_with_capped_backoff() {
        let l = ladder(&[1000, 1000]);
        let busy = FailureKind::ServerError {
            status: 503,
            retry_after: None,
        };
        assert_eq!(
            l.decide(&busy, &state(0, 0, false), 0.5),
            Decision::Retry {
                delay: Duration::from_millis(50)
            }
        );
        assert_eq!(
            l.decide(&busy, &state(0, 1, false), 0.5),
            Decision::Retry {
                delay: Duration::from_millis(100)
            }
        );
        assert_eq!(l.decide(&busy, &state(0, 2, false), 0.5), Decision::HandOver { to: 1 });
        assert_eq!(l.decide(&busy, &state(0, 0, true), 0.5), Decision::HandOver { to: 1 });
        assert_eq!(l.decide(&busy, &state(1, 2, false), 0.5), Decision::Exhausted);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_ceiling() {
        let l = ladder(&[1000, 1000]);
        let short = FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            l.decide(&short, &state(0, 0, false), 0.9),
            Decision::Retry {
                delay: Duration::from_secs(2)
            }
        );
        let long = FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
        };
        assert_eq!(l.decide(&long, &state(0, 0, false), 0.9), Decision::HandOver { to: 1 });
    }

    #[test]
    fn a_400_is_never_retried_and_policy_stops() {
        let l = ladder(&[1000, 1000]);
        let bad = FailureKind::Rejected {
            status: 400,
            message: "bad".into(),
            code: None,
        };
        assert_eq!(l.decide(&bad, &state(0, 0, false), 0.1), Decision::HandOver { to: 1 });
        let policy = FailureKind::ContentPolicy { message: "no".into() };
        assert_eq!(l.decide(&policy, &state(0, 0, false), 0.1), Decision::Refuse);
    }

    #[test]
    fn a_local_failure_stops_without_retry_or_handover() {
        let l = ladder(&[1000, 1000]);
        let local = FailureKind::LocalResources {
            resource: "descriptors".into(),
            detail: "Too many open files (os error 24)".into(),
        };
        for produced_text in [false, true] {
            assert_eq!(l.decide(&local, &state(0, 0, produced_text), 0.1), Decision::Local);
        }
    }

    #[test]
    fn prefill_rejection_switches_mode_once() {
        let l = ladder(&[1000, 1000]);
        let rejected = FailureKind::PrefillRejected {
            message: "no prefill".into(),
        };
        assert_eq!(l.decide(&rejected, &state(0, 0, true), 0.1), Decision::SwitchToInstruct);
        let instruct = AttemptState {
            mode: ContinuationMode::Instruct,
            ..state(0, 0, true)
        };
        assert_eq!(l.decide(&rejected, &instruct, 0.1), Decision::HandOver { to: 1 });
    }

    #[test]
    fn context_length_moves_to_a_larger_window() {
        let l = ladder(&[8000, 4000, 8000, 32000]);
        let ctx = FailureKind::ContextLength {
            message: "too long".into(),
        };
        assert_eq!(l.decide(&ctx, &state(0, 0, false), 0.1), Decision::HandOver { to: 3 });
        assert_eq!(l.decide(&ctx, &state(3, 0, false), 0.1), Decision::Exhausted);
        let small = FailureKind::ContextTooSmall {
            needed: 5000,
            window: 4000,
        };
        assert_eq!(l.decide(&small, &state(1, 0, false), 0.1), Decision::HandOver { to: 2 });
        let looped = FailureKind::Loop { period: 7, repeats: 50 };
        assert_eq!(looped.class(), FailureClass::Quality);
        assert_eq!(l.decide(&looped, &state(0, 0, true), 0.1), Decision::HandOver { to: 1 });
    }
}
