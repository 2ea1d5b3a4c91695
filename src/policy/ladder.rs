//! The ladder: ordered routes, and what to do after each failure.
//!
//! [`Ladder::decide`] is a pure function of the failure and the attempt's
//! state; [`Ladder::decide_within`] is the same decision within the routes'
//! retry budgets (asked only for a route the decision would ask again), the
//! one call the splicer's state machine makes per failure. What a decision
//! teaches a model's health is [`Decision::teach`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::continuation::{ContinuationMode, DEFAULT_INSTRUCTION};
use crate::failure::{FailureClass, FailureKind};
use crate::policy::deadline::{self, Adaptive, Deadlines};
use crate::policy::health::{Decisions, Live, ModelHealth, RouteHealth};
use crate::policy::hedge::HedgePolicy;
use crate::policy::loopguard::LoopConfig;
use crate::policy::overlap::OverlapMode;
use crate::policy::rules::Rules;
use crate::provider::Provider;
use crate::request::{estimate_tokens, Message};
use crate::rungs::cache::CacheRung;
use crate::rungs::safe_reply::SafeReply;

/// The route model that means "the model the client asked for".
pub const PASS_THROUGH_MODEL: &str = "{model}";

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
    /// Its configured context window in tokens (`None`: unknown until an
    /// upstream error states it); requests are fitted to a configured one.
    pub context_tokens: Option<u32>,
    /// Its health per upstream model, shared by every session (and clone).
    pub health: Arc<RouteHealth>,
    /// Its price in dollars per 1k tokens, for a ladder's cost ceiling.
    pub price_per_1k: Option<f64>,
    /// When a repeat at the seam is taken for an echo and trimmed.
    pub overlap: OverlapMode,
    /// Who decides its retries, deadlines and hedges: [`Live`] health, or a replay's script.
    pub decisions: Arc<dyn Decisions>,
    /// Request fields never sent to it (ones its upstream refuses).
    pub drop_params: Arc<[String]>,
}

impl Route {
    /// A route with default deadlines, prefill continuation and an unknown context window.
    pub fn new(name: &str, model: &str, provider: Arc<dyn Provider>) -> Self {
        Route {
            name: name.into(),
            model: model.into(),
            provider,
            continuation: ContinuationMode::Prefill,
            continue_final_message: false,
            deadlines: Deadlines::default(),
            adaptive: Adaptive::default(),
            context_tokens: None,
            health: Arc::new(RouteHealth::default()),
            price_per_1k: None,
            overlap: OverlapMode::Auto,
            decisions: Arc::new(Live),
            drop_params: Arc::new([]),
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

    /// The same route deciding its retries, deadlines and hedges as `decisions` says.
    pub fn with_decisions(mut self, decisions: Arc<dyn Decisions>) -> Self {
        self.decisions = decisions;
        self
    }

    /// The same route never sending the request fields `names`.
    pub fn with_drop_params<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.drop_params = names.into_iter().map(Into::into).collect();
        self
    }

    /// The pass-through fields an attempt on this route sends: `params` without its `drop_params`.
    pub fn sent_params(&self, params: &Map<String, Value>) -> Map<String, Value> {
        params
            .iter()
            .filter(|(k, _)| !self.drop_params.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The same route with a context window of `tokens`.
    pub fn with_context(mut self, tokens: u32) -> Self {
        self.context_tokens = Some(tokens);
        self
    }

    /// The upstream model an attempt asks for: the route's, or the caller's
    /// `asked` on a pass-through route (`{model}`).
    pub fn upstream_model(&self, asked: Option<&str>) -> Arc<str> {
        match (&*self.model, asked) {
            (PASS_THROUGH_MODEL, Some(asked)) => asked.into(),
            _ => self.model.clone(),
        }
    }

    /// The health of the upstream model an attempt for `asked` goes to.
    pub fn health_for(&self, asked: Option<&str>) -> Arc<ModelHealth> {
        self.health.model(&self.upstream_model(asked))
    }

    /// The effective deadlines of an attempt on this route to `health`'s model
    /// sending `messages`: the ones its decisions give (a replay's recorded
    /// ones), else computed now.
    pub fn deadlines_for(&self, health: &ModelHealth, messages: &[Message]) -> Deadlines {
        if let Some(recorded) = self.decisions.deadlines() {
            return recorded;
        }
        let mut d = self.deadlines;
        if !self.adaptive.ttft_per_1k_prompt.is_zero() {
            d.first_token = deadline::first_token(
                d.first_token,
                self.adaptive.ttft_per_1k_prompt,
                estimate_tokens(messages),
            );
        }
        d.stall = self.current_stall(health);
        d
    }

    /// The stall deadline an attempt opening on this route to `health`'s model now would get.
    pub fn current_stall(&self, health: &ModelHealth) -> Duration {
        match &self.adaptive.stall {
            Some(rule) => deadline::stall(rule, self.deadlines.stall, health.gap_history(rule.min_samples)),
            None => self.deadlines.stall,
        }
    }

    /// Spends one retry on `model` (this route's), if its decisions allow one.
    pub fn allow_retry(&self, model: &ModelHealth) -> bool {
        self.decisions.allow_retry(model)
    }

    /// When attempt number `attempt` on this route to `health`'s model is
    /// hedged under `policy`, if at all.
    pub fn hedge_delay(&self, policy: &HedgePolicy, attempt: u32, health: &ModelHealth) -> Option<Duration> {
        self.decisions.hedge_delay(attempt, &|| policy.delay(health))
    }

    /// The window an attempt to `health`'s model must fit: the configured one,
    /// or the smaller one its errors stated; `None` when neither is known.
    pub fn window(&self, health: &ModelHealth) -> Option<u32> {
        match (self.context_tokens, health.learned_window()) {
            (Some(c), Some(l)) => Some(c.min(l)),
            (c, l) => c.or(l),
        }
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
            .field("drop_params", &self.drop_params)
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
    /// The shortest wait before asking a route that rate-limited again (429
    /// without `Retry-After`, on the last rung): full jitter above it.
    pub rate_limit_floor: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            retry_after_ceiling: Duration::from_secs(5),
            rate_limit_floor: Duration::from_millis(500),
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
    /// What the client's reasoning channel gets where a handover cut the reasoning off.
    pub reasoning_marker: String,
    /// Forward the reasoning of an attempt that started after the answer text had begun (default false: counted only).
    pub forward_late_reasoning: bool,
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
            reasoning_marker: crate::policy::reasoning::SEAM_MARKER.to_string(),
            forward_late_reasoning: false,
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
    /// The first attempt on `route` (at index `index`) for the model `health`
    /// describes: no retries yet, and the route's continuation — instruct if
    /// that model has rejected a prefill before.
    pub fn first_on(index: usize, route: &Route, health: &ModelHealth) -> Self {
        AttemptState {
            route: index,
            retries: 0,
            mode: health.continuation(route.continuation),
            produced_text: false,
        }
    }
}

/// A set of route indices (a ladder's first 64 routes; later ones are never in it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteSet(u64);

impl RouteSet {
    /// Adds route `index`.
    pub fn insert(&mut self, index: usize) {
        if let Some(bit) = u32::try_from(index).ok().and_then(|i| 1u64.checked_shl(i)) {
            self.0 |= bit;
        }
    }

    /// Whether route `index` is in it.
    pub fn contains(self, index: usize) -> bool {
        u32::try_from(index)
            .ok()
            .and_then(|i| 1u64.checked_shl(i))
            .is_some_and(|bit| self.0 & bit != 0)
    }
}

/// What a session knows of its ladder's routes when it decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// Each route's context window for this session's model, by index (`None`: unknown).
    pub windows: Vec<Option<u32>>,
    /// Routes that already failed beside the attempt in charge (a lost hedge).
    pub lost: RouteSet,
    /// A route that rate-limited and was handed over from without a retry,
    /// while the client has nothing yet: the last rung, if every later one fails.
    pub deferred: Option<Deferred>,
}

/// A rate-limited route not asked again because another rung remained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deferred {
    /// Its index.
    pub route: usize,
    /// Retries it had spent.
    pub retries: u32,
    /// Its `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
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
    /// Every later route failed: go back to the rate-limited route at this
    /// index (see [`Known::deferred`]) after `delay`, as the last rung.
    Return {
        /// Its index.
        to: usize,
        /// The pause.
        delay: Duration,
    },
    /// No route is left.
    Exhausted,
}

impl Decision {
    /// What the decision teaches the health of the model that failed, for
    /// every later session: switching to instruct means it rejects prefill.
    pub fn teach(&self, health: &ModelHealth) {
        if let Decision::SwitchToInstruct = self {
            health.remember_no_prefill();
        }
    }
}

impl Ladder {
    /// The same ladder named `name`.
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The route a hedge of an attempt on route `from` goes to: the next one
    /// that did not already fail in the session (`lost`), if any.
    pub fn hedge_route(&self, from: usize, lost: RouteSet) -> Option<usize> {
        (from.checked_add(1)?..self.routes.len()).find(|to| !lost.contains(*to))
    }

    /// The next step after `failure` on the attempt described by `state`,
    /// given what the session `known`s of the routes. `jitter` in `[0, 1)`
    /// scales the exponential backoff (full jitter).
    pub fn decide(&self, failure: &FailureKind, state: &AttemptState, known: &Known, jitter: f64) -> Decision {
        self.decide_within(failure, state, known, jitter, &mut |_| true)
    }

    /// [`Ladder::decide`] within the routes' retry budgets: `retry_allowed(i)`
    /// is asked (and spends route `i`'s budget) only when the decision would
    /// ask route `i` again — a retry, or a return to a deferred route. A
    /// refused retry hands over (or returns, or ends) in the same decision; a
    /// refused return ends the ladder.
    pub fn decide_within(
        &self,
        failure: &FailureKind,
        state: &AttemptState,
        known: &Known,
        jitter: f64,
        retry_allowed: &mut dyn FnMut(usize) -> bool,
    ) -> Decision {
        match failure.class() {
            FailureClass::Policy => return Decision::Refuse,
            FailureClass::Local => return Decision::Local,
            _ => {}
        }
        if matches!(failure, FailureKind::PrefillRejected { .. }) && state.mode == ContinuationMode::Prefill {
            return Decision::SwitchToInstruct;
        }
        let next = self.next_route(failure, state, known);
        let rate_limited = matches!(failure, FailureKind::RateLimited { .. });
        let retryable = rate_limited || matches!(failure, FailureKind::ServerError { .. } | FailureKind::Reset { .. });
        // A rate limiter is not helped by being asked again: another rung is
        // asked at once, and the same route only when it is the last one.
        if retryable
            && !(rate_limited && next.is_some())
            && !state.produced_text
            && state.retries < self.retry.max_retries
        {
            let jitter = jitter.clamp(0.0, 1.0);
            let delay = match failure.retry_after() {
                Some(wait) if wait <= self.retry.retry_after_ceiling => Some(wait),
                Some(_) => None, // too long to keep the user waiting: hand over
                None if rate_limited => Some(self.rate_limit_backoff(state.retries, jitter)),
                None => {
                    let ceiling = self
                        .retry
                        .base_delay
                        .saturating_mul(1u32 << state.retries.min(16))
                        .min(self.retry.max_delay);
                    Some(ceiling.mul_f64(jitter))
                }
            };
            // A spent retry budget: hand over instead of adding load.
            if let Some(delay) = delay.filter(|_| retry_allowed(state.route)) {
                return Decision::Retry { delay };
            }
        }
        match (next, known.deferred) {
            (Some(to), _) => Decision::HandOver { to },
            (None, Some(d)) if d.retries < self.retry.max_retries && retry_allowed(d.route) => Decision::Return {
                to: d.route,
                delay: d
                    .retry_after
                    .unwrap_or_else(|| self.rate_limit_backoff(d.retries, jitter.clamp(0.0, 1.0))),
            },
            (None, _) => Decision::Exhausted,
        }
    }

    /// The wait before a rate-limited route without `Retry-After` is asked
    /// again after `retries`: the floor, plus full jitter up to twice the
    /// floor per retry spent (capped by the backoff ceiling).
    fn rate_limit_backoff(&self, retries: u32, jitter: f64) -> Duration {
        let floor = self.retry.rate_limit_floor;
        let ceiling = floor
            .saturating_mul(2u32 << retries.min(15))
            .min(self.retry.max_delay.max(floor));
        floor + (ceiling - floor).mul_f64(jitter)
    }

    /// What a handover after `failure` leaves to come back to: a rate-limited
    /// route that had retries left and no `Retry-After` too long to wait for.
    pub fn deferral(&self, failure: &FailureKind, state: &AttemptState) -> Option<Deferred> {
        let FailureKind::RateLimited { retry_after } = failure else {
            return None;
        };
        let waitable = retry_after.is_none_or(|wait| wait <= self.retry.retry_after_ceiling);
        (waitable && !state.produced_text && state.retries < self.retry.max_retries).then_some(Deferred {
            route: state.route,
            retries: state.retries,
            retry_after: *retry_after,
        })
    }

    /// The route a handover after `failure` goes to: the next one that did
    /// not already fail in this session and is not known to be too small.
    fn next_route(&self, failure: &FailureKind, state: &AttemptState, known: &Known) -> Option<usize> {
        // A request that did not fit a window will not fit one as small or
        // smaller either; a route whose window is unknown may take it.
        let too_small = match failure {
            FailureKind::ContextLength { .. } => known.windows.get(state.route).copied().flatten(),
            FailureKind::ContextTooSmall { window, .. } => Some(*window),
            _ => None,
        };
        (state.route + 1..self.routes.len()).find(|&to| {
            let window = known.windows.get(to).copied().flatten();
            !known.lost.contains(to) && !matches!((too_small, window), (Some(failed), Some(w)) if w <= failed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::provider::MockProvider;
    use crate::oracle::{
        fault::{FaultPlan, FaultScript},
        Style,
    };

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

    /// The windows the ladder's routes were configured with.
    fn known(l: &Ladder) -> Known {
        Known {
            windows: l.routes.iter().map(|r| r.context_tokens).collect(),
            lost: RouteSet::default(),
            deferred: None,
        }
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
    fn a_route_sends_every_param_but_its_dropped_ones() {
        let provider: Arc<dyn Provider> =
            Arc::new(MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()));
        let params: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "temperature": 0.2, "top_k": 40, "thinking": {"type": "enabled", "budget_tokens": 2048}
        }))
        .expect("a map");
        let plain = Route::new("a", "m", provider.clone());
        assert_eq!(plain.sent_params(&params), params, "nothing dropped by default");
        let dropping = plain.with_drop_params(["top_k", "thinking", "not_sent_anyway"]);
        let sent = dropping.sent_params(&params);
        assert_eq!(sent.keys().collect::<Vec<_>>(), ["temperature"], "{sent:?}");
        assert_eq!(sent["temperature"], params["temperature"]);
    }

    #[test]
    fn retries_before_the_first_token_with_capped_backoff() {
        let l = ladder(&[1000, 1000]);
        let busy = FailureKind::ServerError {
            status: 503,
            retry_after: None,
        };
        assert_eq!(
            l.decide(&busy, &state(0, 0, false), &known(&l), 0.5),
            Decision::Retry {
                delay: Duration::from_millis(50)
            }
        );
        assert_eq!(
            l.decide(&busy, &state(0, 1, false), &known(&l), 0.5),
            Decision::Retry {
                delay: Duration::from_millis(100)
            }
        );
        assert_eq!(
            l.decide(&busy, &state(0, 2, false), &known(&l), 0.5),
            Decision::HandOver { to: 1 }
        );
        assert_eq!(
            l.decide(&busy, &state(0, 0, true), &known(&l), 0.5),
            Decision::HandOver { to: 1 }
        );
        assert_eq!(
            l.decide(&busy, &state(1, 2, false), &known(&l), 0.5),
            Decision::Exhausted
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_ceiling_on_the_last_rung() {
        let l = ladder(&[1000, 1000]);
        let short = FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            l.decide(&short, &state(1, 0, false), &known(&l), 0.9),
            Decision::Retry {
                delay: Duration::from_secs(2)
            }
        );
        let long = FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
        };
        assert_eq!(
            l.decide(&long, &state(1, 0, false), &known(&l), 0.9),
            Decision::Exhausted
        );
    }

    #[test]
    fn a_429_hands_over_at_once_and_retries_only_on_the_last_rung_after_a_floor() {
        let l = ladder(&[1000, 1000]);
        for retry_after in [None, Some(Duration::from_millis(10))] {
            let limited = FailureKind::RateLimited { retry_after };
            assert_eq!(
                l.decide(&limited, &state(0, 0, false), &known(&l), 0.0),
                Decision::HandOver { to: 1 },
                "another rung exists: no same-route retry ({retry_after:?})"
            );
        }
        let limited = FailureKind::RateLimited { retry_after: None };
        let floor = l.retry.rate_limit_floor;
        assert!(
            floor >= Duration::from_millis(200),
            "a floor of hundreds of milliseconds"
        );
        // Full jitter above the floor: jitter 0 waits the floor, jitter near 1 twice it, then four times.
        assert_eq!(
            l.decide(&limited, &state(1, 0, false), &known(&l), 0.0),
            Decision::Retry { delay: floor }
        );
        assert_eq!(
            l.decide(&limited, &state(1, 0, false), &known(&l), 0.5),
            Decision::Retry {
                delay: floor.mul_f64(1.5)
            }
        );
        assert_eq!(
            l.decide(&limited, &state(1, 1, false), &known(&l), 1.0),
            Decision::Retry { delay: floor * 4 }
        );
        assert_eq!(
            l.decide(&limited, &state(1, 2, false), &known(&l), 0.5),
            Decision::Exhausted
        );
        // A lost rung is no rung: the same route is retried.
        let mut lost = known(&l);
        lost.lost.insert(1);
        assert!(matches!(
            l.decide(&limited, &state(0, 0, false), &lost, 0.5),
            Decision::Retry { .. }
        ));
    }

    #[test]
    fn a_rate_limited_route_handed_over_from_is_the_last_rung_when_every_later_one_fails() {
        let l = ladder(&[1000, 1000]);
        let limited = FailureKind::RateLimited { retry_after: None };
        let deferred = l.deferral(&limited, &state(0, 0, false));
        assert_eq!(
            deferred,
            Some(Deferred {
                route: 0,
                retries: 0,
                retry_after: None
            })
        );
        let mut k = known(&l);
        k.deferred = deferred;
        // The fallback was skipped (its breaker is open): back to the primary after the floor.
        assert_eq!(
            l.decide(&FailureKind::CircuitOpen, &state(1, 0, false), &k, 0.0),
            Decision::Return {
                to: 0,
                delay: l.retry.rate_limit_floor
            }
        );
        // With its Retry-After, that long.
        let after = FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
        };
        k.deferred = l.deferral(&after, &state(0, 0, false));
        assert_eq!(
            l.decide(&FailureKind::CircuitOpen, &state(1, 0, false), &k, 0.0),
            Decision::Return {
                to: 0,
                delay: Duration::from_secs(2)
            }
        );
        // Nothing to come back to: too long a Retry-After, retries spent, text already sent, another failure.
        let long = FailureKind::RateLimited {
            retry_after: Some(Duration::from_secs(60)),
        };
        assert_eq!(l.deferral(&long, &state(0, 0, false)), None);
        assert_eq!(l.deferral(&limited, &state(0, 2, false)), None);
        assert_eq!(l.deferral(&limited, &state(0, 0, true)), None);
        assert_eq!(l.deferral(&FailureKind::CircuitOpen, &state(0, 0, false)), None);
        k.deferred = None;
        assert_eq!(
            l.decide(&FailureKind::CircuitOpen, &state(1, 0, false), &k, 0.0),
            Decision::Exhausted
        );
    }

    #[test]
    fn the_retry_budget_is_asked_once_per_decision_and_only_for_a_route_asked_again() {
        let l = ladder(&[1000, 1000]);
        let busy = FailureKind::ServerError {
            status: 503,
            retry_after: None,
        };
        let mut asked = Vec::new();
        let refused = l.decide_within(&busy, &state(0, 0, false), &known(&l), 0.5, &mut |i| {
            asked.push(i);
            false
        });
        assert_eq!((refused, asked), (Decision::HandOver { to: 1 }, vec![0]));
        // On the last rung a refused retry returns to the deferred route, if its budget allows.
        let limited = FailureKind::RateLimited { retry_after: None };
        let mut k = known(&l);
        k.deferred = l.deferral(&limited, &state(0, 0, false));
        let mut asked = Vec::new();
        let back = l.decide_within(&busy, &state(1, 0, false), &k, 0.0, &mut |i| {
            asked.push(i);
            i == 0
        });
        assert_eq!(
            (back, asked),
            (
                Decision::Return {
                    to: 0,
                    delay: l.retry.rate_limit_floor
                },
                vec![1, 0]
            )
        );
        let mut asked = Vec::new();
        let spent = l.decide_within(&FailureKind::CircuitOpen, &state(1, 0, false), &k, 0.0, &mut |i| {
            asked.push(i);
            false
        });
        assert_eq!((spent, asked), (Decision::Exhausted, vec![0]));
        // A too-long Retry-After is no retry: the budget is not asked.
        let long = FailureKind::ServerError {
            status: 503,
            retry_after: Some(Duration::from_secs(60)),
        };
        let mut asked = 0;
        l.decide_within(&long, &state(0, 0, false), &known(&l), 0.5, &mut |_| {
            asked += 1;
            true
        });
        assert_eq!(asked, 0);
    }

    #[test]
    fn switching_to_instruct_teaches_the_model_it_rejects_prefill() {
        let health = ModelHealth::new("m".into(), Default::default(), Default::default());
        Decision::HandOver { to: 1 }.teach(&health);
        assert!(!health.rejects_prefill());
        Decision::SwitchToInstruct.teach(&health);
        assert!(health.rejects_prefill());
        assert_eq!(
            health.continuation(ContinuationMode::Prefill),
            ContinuationMode::Instruct
        );
    }

    #[test]
    fn a_route_that_lost_a_hedge_is_not_handed_to() {
        let l = ladder(&[1000, 1000, 1000]);
        let cut = FailureKind::Truncated { detail: None };
        let mut k = known(&l);
        assert_eq!(
            l.decide(&cut, &state(0, 0, true), &k, 0.5),
            Decision::HandOver { to: 1 }
        );
        k.lost.insert(1);
        assert_eq!(
            l.decide(&cut, &state(0, 0, true), &k, 0.5),
            Decision::HandOver { to: 2 }
        );
        k.lost.insert(2);
        assert_eq!(l.decide(&cut, &state(0, 0, true), &k, 0.5), Decision::Exhausted);
        let mut far = RouteSet::default();
        far.insert(200);
        assert!(
            !far.contains(200) && !far.contains(0),
            "indices past 63 are never in a set"
        );
    }

    #[test]
    fn an_unknown_window_is_a_candidate_and_only_a_known_smaller_one_is_skipped() {
        let l = ladder(&[1000, 1000, 1000]);
        let ctx = FailureKind::ContextLength {
            message: "maximum context length is 8192 tokens".into(),
        };
        let mut k = Known {
            windows: vec![Some(8192), None, None],
            lost: RouteSet::default(),
            deferred: None,
        };
        assert_eq!(
            l.decide(&ctx, &state(0, 0, false), &k, 0.1),
            Decision::HandOver { to: 1 }
        );
        k.windows[1] = Some(8192);
        assert_eq!(
            l.decide(&ctx, &state(0, 0, false), &k, 0.1),
            Decision::HandOver { to: 2 }
        );
        k.windows[2] = Some(4096);
        assert_eq!(l.decide(&ctx, &state(0, 0, false), &k, 0.1), Decision::Exhausted);
        // The failing route's window unknown: every later route is a candidate.
        k.windows[0] = None;
        assert_eq!(
            l.decide(&ctx, &state(0, 0, false), &k, 0.1),
            Decision::HandOver { to: 1 }
        );
    }

    #[test]
    fn a_400_is_never_retried_and_policy_stops() {
        let l = ladder(&[1000, 1000]);
        let bad = FailureKind::Rejected {
            status: 400,
            message: "bad".into(),
            code: None,
        };
        assert_eq!(
            l.decide(&bad, &state(0, 0, false), &known(&l), 0.1),
            Decision::HandOver { to: 1 }
        );
        let policy = FailureKind::ContentPolicy { message: "no".into() };
        assert_eq!(
            l.decide(&policy, &state(0, 0, false), &known(&l), 0.1),
            Decision::Refuse
        );
    }

    #[test]
    fn a_local_failure_stops_without_retry_or_handover() {
        let l = ladder(&[1000, 1000]);
        let local = FailureKind::LocalResources {
            resource: "descriptors".into(),
            detail: "Too many open files (os error 24)".into(),
        };
        for produced_text in [false, true] {
            assert_eq!(
                l.decide(&local, &state(0, 0, produced_text), &known(&l), 0.1),
                Decision::Local
            );
        }
    }

    #[test]
    fn prefill_rejection_switches_mode_once() {
        let l = ladder(&[1000, 1000]);
        let rejected = FailureKind::PrefillRejected {
            message: "no prefill".into(),
        };
        assert_eq!(
            l.decide(&rejected, &state(0, 0, true), &known(&l), 0.1),
            Decision::SwitchToInstruct
        );
        let instruct = AttemptState {
            mode: ContinuationMode::Instruct,
            ..state(0, 0, true)
        };
        assert_eq!(
            l.decide(&rejected, &instruct, &known(&l), 0.1),
            Decision::HandOver { to: 1 }
        );
    }

    #[test]
    fn context_length_moves_to_a_larger_window() {
        let l = ladder(&[8000, 4000, 8000, 32000]);
        let ctx = FailureKind::ContextLength {
            message: "too long".into(),
        };
        assert_eq!(
            l.decide(&ctx, &state(0, 0, false), &known(&l), 0.1),
            Decision::HandOver { to: 3 }
        );
        assert_eq!(
            l.decide(&ctx, &state(3, 0, false), &known(&l), 0.1),
            Decision::Exhausted
        );
        let small = FailureKind::ContextTooSmall {
            needed: 5000,
            window: 4000,
        };
        assert_eq!(
            l.decide(&small, &state(1, 0, false), &known(&l), 0.1),
            Decision::HandOver { to: 2 }
        );
        let looped = FailureKind::Loop { period: 7, repeats: 50 };
        assert_eq!(looped.class(), FailureClass::Quality);
        assert_eq!(
            l.decide(&looped, &state(0, 0, true), &known(&l), 0.1),
            Decision::HandOver { to: 1 }
        );
        // An empty answer is never asked again of the same route, thought or not.
        let empty = FailureKind::EmptyAnswer { reasoning_bytes: 0 };
        assert_eq!((empty.class(), empty.label()), (FailureClass::Quality, "empty_answer"));
        for produced in [false, true] {
            assert_eq!(
                l.decide(&empty, &state(0, 0, produced), &known(&l), 0.1),
                Decision::HandOver { to: 1 }
            );
        }
    }
}
