//! What a recording needs to rebuild a session: the ladder's routes and rules,
//! and the caller's request before any continuation.
//!
//! Both travel in [`EventKind::SessionStarted`](crate::engine::event::EventKind::SessionStarted).
//! Providers (URLs, API keys) are never part of them: a re-drive plugs in
//! scripted providers instead.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::continuation::ContinuationMode;
use crate::policy::deadline::{Adaptive, Deadlines};
use crate::policy::hedge::HedgePolicy;
use crate::policy::ladder::{Ladder, RetryPolicy, Route};
use crate::policy::loopguard::LoopConfig;
use crate::policy::overlap::OverlapMode;
use crate::provider::Provider;
use crate::request::{ChatRequest, Message};
use crate::rungs::safe_reply::SafeReply;
use crate::serde_ms as ms;

/// A ladder without its providers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LadderSpec {
    /// The routes, best first.
    pub routes: Vec<RouteSpec>,
    /// Same-route retries.
    pub retry: RetrySpec,
    /// The user message that asks an `instruct` route to continue.
    pub instruction: String,
    /// The degraded answer when nothing else can answer (absent in older recordings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_reply: Option<SafeReply>,
    /// The loop guard's settings; absent: off (as in recordings made before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_guard: Option<LoopConfig>,
    /// Hedging; absent: off (as in recordings made before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgeSpec>,
    /// The seam marker of a handover during reasoning; absent: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_marker: Option<String>,
    /// Whether reasoning of an attempt opened after the answer began is forwarded; absent: no.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_late_reasoning: bool,
}

/// A ladder's hedging settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HedgeSpec {
    /// Floor under the p95 and fallback without samples, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_ms: Option<u64>,
    /// First-token samples needed before the p95 is used.
    pub min_samples: usize,
}

/// A route without its provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Its name.
    pub name: String,
    /// The upstream model (`{model}`: the caller's).
    pub model: String,
    /// How it continues a prefix.
    pub continuation: ContinuationMode,
    /// Whether prefill requests carry `continue_final_message`.
    pub continue_final_message: bool,
    /// Its deadlines, as the same `first_token_ms`, `stall_ms`, `total_ms`
    /// and optional `reasoning_budget_ms` keys as ever.
    #[serde(flatten)]
    pub deadlines: Deadlines,
    /// Configured context window in tokens (absent: unknown; recordings made
    /// before windows could be unknown always have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u32>,
    /// How its deadlines adapt (absent: fixed, as in recordings made before they
    /// could, or before adapting became the default; not the default of a new route).
    #[serde(default = "Adaptive::fixed", skip_serializing_if = "Adaptive::is_fixed")]
    pub adaptive: Adaptive,
    /// When a repeat at the seam is trimmed (absent: `auto`).
    #[serde(default, skip_serializing_if = "OverlapMode::is_auto")]
    pub overlap: OverlapMode,
    /// The context window the session's model had stated on this route when
    /// the session began (absent: none), so a replay skips the same routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned_context_tokens: Option<u32>,
    /// Request fields never sent to it (absent: none, as in recordings made before there were any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_params: Vec<String>,
}

/// The ladder's retry policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrySpec {
    /// Retries per route per session.
    pub max_retries: u32,
    /// The first backoff ceiling.
    #[serde(rename = "base_delay_ms", with = "ms")]
    pub base_delay: Duration,
    /// The largest backoff.
    #[serde(rename = "max_delay_ms", with = "ms")]
    pub max_delay: Duration,
    /// The longest `Retry-After` waited for.
    #[serde(rename = "retry_after_ceiling_ms", with = "ms")]
    pub retry_after_ceiling: Duration,
    /// The shortest wait before a rate-limited last rung is asked again
    /// (absent in recordings made before there was one: 0, as then).
    #[serde(rename = "rate_limit_floor_ms", with = "ms", default)]
    pub rate_limit_floor: Duration,
}

/// The caller's request, before any continuation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// The model the caller asked for.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Pass-through request fields.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// The client API it came through (absent for library callers and older recordings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub door: Option<crate::door::Door>,
}

impl LadderSpec {
    /// Describes `ladder`.
    pub fn of(ladder: &Ladder) -> Self {
        LadderSpec {
            routes: ladder.routes.iter().map(RouteSpec::of).collect(),
            retry: RetrySpec {
                max_retries: ladder.retry.max_retries,
                base_delay: ladder.retry.base_delay,
                max_delay: ladder.retry.max_delay,
                retry_after_ceiling: ladder.retry.retry_after_ceiling,
                rate_limit_floor: ladder.retry.rate_limit_floor,
            },
            instruction: ladder.instruction.clone(),
            safe_reply: ladder.safe_reply.clone(),
            loop_guard: ladder.loop_guard.clone(),
            hedge: ladder.hedge.as_ref().map(|h| HedgeSpec {
                after_ms: h.after.map(|d| d.as_millis() as u64),
                min_samples: h.min_samples,
            }),
            reasoning_marker: (ladder.reasoning_marker != crate::policy::reasoning::SEAM_MARKER)
                .then(|| ladder.reasoning_marker.clone()),
            forward_late_reasoning: ladder.forward_late_reasoning,
        }
    }

    /// The same description, with each route's learned window for the session's model (`asked`).
    pub fn with_learned_windows(mut self, ladder: &Ladder, asked: Option<&str>) -> Self {
        for (spec, route) in self.routes.iter_mut().zip(&ladder.routes) {
            spec.learned_context_tokens = route.health_for(asked).learned_window();
        }
        self
    }

    /// The ladder named `name` this describes, with `provider(route)` behind each route.
    pub fn build(&self, name: &str, mut provider: impl FnMut(&RouteSpec) -> Arc<dyn Provider>) -> Ladder {
        let mut ladder = Ladder::new(self.routes.iter().map(|r| r.build(provider(r))).collect()).named(name);
        ladder.retry = RetryPolicy {
            max_retries: self.retry.max_retries,
            base_delay: self.retry.base_delay,
            max_delay: self.retry.max_delay,
            retry_after_ceiling: self.retry.retry_after_ceiling,
            rate_limit_floor: self.retry.rate_limit_floor,
        };
        ladder.instruction = self.instruction.clone();
        ladder.safe_reply = self.safe_reply.clone();
        ladder.loop_guard = self.loop_guard.clone();
        if let Some(marker) = &self.reasoning_marker {
            ladder.reasoning_marker = marker.clone();
        }
        ladder.forward_late_reasoning = self.forward_late_reasoning;
        ladder.hedge = self
            .hedge
            .map(|h| HedgePolicy::new(h.after_ms.map(Duration::from_millis), h.min_samples));
        ladder
    }
}

impl RouteSpec {
    /// Describes `route`.
    pub fn of(route: &Route) -> Self {
        RouteSpec {
            name: route.name.to_string(),
            model: route.model.to_string(),
            continuation: route.continuation,
            continue_final_message: route.continue_final_message,
            deadlines: route.deadlines,
            context_tokens: route.context_tokens,
            adaptive: route.adaptive,
            overlap: route.overlap,
            learned_context_tokens: None,
            drop_params: route.drop_params.to_vec(),
        }
    }

    /// Its deadlines.
    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    /// The route this describes, with `provider` behind it.
    pub fn build(&self, provider: Arc<dyn Provider>) -> Route {
        let mut route = Route::new(&self.name, &self.model, provider)
            .with_continuation(self.continuation)
            .with_deadlines(self.deadlines())
            .with_adaptive(self.adaptive)
            .with_overlap(self.overlap)
            .with_drop_params(self.drop_params.iter().cloned());
        route.context_tokens = self.context_tokens;
        route.continue_final_message = self.continue_final_message;
        route
    }
}

impl RequestSpec {
    /// Describes `request` (its session id travels in every event).
    pub fn of(request: &ChatRequest) -> Self {
        RequestSpec {
            model: request.model.clone(),
            messages: request.messages.clone(),
            params: request.params.clone(),
            door: request.door,
        }
    }

    /// The request this describes, for `session`.
    pub fn build(&self, session: uuid::Uuid) -> ChatRequest {
        let mut request = ChatRequest::new(self.messages.clone());
        request.session = session;
        request.model = self.model.clone();
        request.params = self.params.clone();
        request.door = self.door;
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::fault::{FaultPlan, FaultScript};
    use crate::oracle::provider::MockProvider;
    use crate::oracle::Style;
    use crate::policy::deadline::AdaptiveStall;

    #[test]
    fn a_ladder_round_trips_through_its_spec() {
        let p: Arc<dyn Provider> = Arc::new(MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()));
        let mut ladder = Ladder::new(vec![
            Route::new("a", "m1", p.clone()).with_deadlines(Deadlines {
                first_token: Duration::from_micros(1500),
                stall: Duration::from_millis(400),
                total: Duration::from_secs(60),
                reasoning_budget: None,
            }),
            Route::new("b", "{model}", p.clone())
                .with_continuation(ContinuationMode::Instruct)
                .with_context(8000)
                .with_adaptive(Adaptive {
                    stall: Some(AdaptiveStall::default()),
                    ttft_per_1k_prompt: Duration::from_millis(300),
                })
                .with_drop_params(["top_k"]),
        ])
        .named("chat");
        ladder.retry.max_retries = 5;
        ladder.instruction = "go on".into();
        ladder.loop_guard = Some(LoopConfig {
            min_repeats: 9,
            ..LoopConfig::default()
        });
        ladder.hedge = Some(HedgePolicy::new(Some(Duration::from_millis(250)), 7));
        let spec = LadderSpec::of(&ladder);
        let json = serde_json::to_string(&spec).expect("serialize");
        assert!(json.contains("\"min_repeats\":9"), "{json}");
        assert!(json.contains("\"first_token_ms\":1.5"), "{json}");
        assert!(json.contains("\"stall_ms\":400"), "{json}");
        assert!(json.contains("\"ttft_per_1k_prompt_ms\":300"), "{json}");
        assert!(json.contains(r#""hedge":{"after_ms":250,"min_samples":7}"#), "{json}");
        assert_eq!(
            json.matches(r#""drop_params":["top_k"]"#).count(),
            1,
            "only b drops: {json}"
        );
        assert_eq!(
            json.matches("\"adaptive\"").count(),
            2,
            "both adapt their stall deadline (the default): {json}"
        );
        let back: LadderSpec = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, spec);
        let rebuilt = back.build("chat", |_| p.clone());
        assert_eq!(LadderSpec::of(&rebuilt), spec);
        assert_eq!(rebuilt.name, "chat");
        // A fixed route leaves it out.
        let fixed = RouteSpec::of(&Route::new("f", "m", p.clone()).with_adaptive(Adaptive::fixed()));
        assert!(!serde_json::to_string(&fixed).expect("json").contains("adaptive"));
    }

    #[test]
    fn a_route_recorded_without_adaptive_settings_stays_fixed() {
        // As recorded before adapting became the default: no `adaptive` key.
        let old = r#"{"name":"a","model":"m","continuation":"prefill","continue_final_message":false,
            "first_token_ms":10000,"stall_ms":3000,"total_ms":300000,"context_tokens":128000}"#;
        let spec: RouteSpec = serde_json::from_str(old).expect("old route");
        assert!(spec.adaptive.is_fixed(), "{spec:?}");
        assert!(spec.drop_params.is_empty(), "{spec:?}");
        let p: Arc<dyn Provider> = Arc::new(MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()));
        assert!(spec.build(p).adaptive.is_fixed());
    }
}
