//! Prometheus metrics of the proxy (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::splice::Handover;
use crate::failure::Failure;
use crate::usage::Tally;

/// Labels of a session outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// The ladder.
    pub ladder: String,
    /// `complete`, `failed`, `refused` or `cancelled`.
    pub outcome: String,
    /// The front door it came through ([`Door::label`](crate::Door::label)).
    pub door: String,
}

/// Labels of a handover.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandoverLabels {
    /// The route that failed.
    pub from: String,
    /// The route that continued.
    pub to: String,
    /// The failure class.
    pub class: String,
}

/// Labels of a failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The route.
    pub route: String,
    /// The failure class.
    pub class: String,
    /// The failure kind.
    pub kind: String,
}

/// Labels of a hedge race's end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HedgeLabels {
    /// The ladder.
    pub ladder: String,
    /// `hedge_won`, `primary_won`, `primary_failed` or `hedge_failed`.
    pub outcome: String,
}

/// Labels of upstream tokens.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// The route.
    pub route: String,
    /// The upstream model asked for.
    pub model: String,
    /// `prompt` or `completion`.
    pub kind: String,
}

/// Labels naming a route and its upstream model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteModelLabels {
    /// The route.
    pub route: String,
    /// The upstream model asked for.
    pub model: String,
}

/// Labels naming a ladder.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LadderLabels {
    /// The ladder.
    pub ladder: String,
}

/// Models named per route in the token metrics; later ones are counted as
/// `other`. A pass-through route's model is the client's to choose, and every
/// new label value is a new series kept for the life of the process.
const MAX_MODELS_PER_ROUTE: usize = 32;

fn seconds() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    /// Sessions by ladder and outcome.
    pub sessions: Family<SessionLabels, Counter>,
    /// Handovers by from, to and class.
    pub handovers: Family<HandoverLabels, Counter>,
    /// Failed attempts by route, class and kind.
    pub failures: Family<FailureLabels, Counter>,
    /// Time from the request to the first byte of answer text, as the client sees it.
    pub ttft: Family<LadderLabels, Histogram, fn() -> Histogram>,
    /// Handover gaps.
    pub handover_gap: Histogram,
    /// Streams being served now.
    pub active_streams: Gauge,
    /// Sessions alive in the process ([`crate::live`]; set when /metrics is read).
    pub live_sessions: Gauge,
    /// Upstream responses open in the process ([`crate::live`]; set when /metrics is read).
    pub upstream_connections_open: Gauge,
    /// Panics caught at a session's boundary.
    pub session_panics: Counter,
    /// Streamed answers ended because their client stopped taking chunks.
    pub slow_clients: Counter,
    /// Connections closed by a server limit, by reason.
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// Client connections open now (`server.max_connections` caps it).
    pub client_connections_open: Gauge,
    /// Events the `/events` feed had to drop for slow subscribers.
    pub events_dropped: Counter,
    /// Requests rejected before reaching a ladder (bad JSON, auth, size …).
    pub rejected: Family<RejectLabels, Counter>,
    /// Each route's circuit breaker: 0 closed, 1 half-open, 2 open (set when /metrics is read).
    pub breaker_state: Family<ModelLabels, Gauge>,
    /// Each (route, model)'s stall deadline for an attempt opening now, in ms (adaptive or fixed; set when /metrics is read).
    pub stall_deadline: Family<ModelLabels, Gauge>,
    /// Each (route, model)'s context window as its errors stated it (tokens; only where one was learned).
    pub learned_window: Family<ModelLabels, Gauge>,
    /// 1 for each (route, model) learned to reject prefill (continued by instruction since).
    pub rejects_prefill: Family<ModelLabels, Gauge>,
    /// Answers each ladder's response cache holds now.
    pub cache_entries: Family<LadderLabels, Gauge>,
    /// Attempts each (route, model)'s breaker let through (brought up to its count when /metrics is read).
    pub model_attempts: Family<ModelLabels, Counter>,
    /// Probes of each (route, model)'s open breaker by outcome, `ok` or `failed` (brought up to its count when /metrics is read).
    pub probes: Family<ProbeLabels, Counter>,
    /// Hedge races by ladder and outcome (brought up to the ladders' counts when /metrics is read).
    pub hedges: Family<HedgeLabels, Counter>,
    /// Session recordings that could not be written (brought up to the recorder's count when /metrics is read).
    pub recordings_lost: Counter,
    /// Tokens the upstreams reported, every attempt's (cut ones are billed too), by route, model and kind.
    pub upstream_tokens: Family<TokenLabels, Counter>,
    /// Text deltas of attempts that reported no usage, by route and model (chunks, not tokens).
    pub upstream_unreported_deltas: Family<RouteModelLabels, Counter>,
    /// Whether state is shared with other instances (1) or kept in this one's memory (0).
    pub state_shared: Gauge,
    /// Whether the shared-state store answers now (always 1 unshared).
    pub state_connected: Gauge,
    /// Shared-state updates waiting to be written.
    pub state_pending: Gauge,
    /// How long the last batch of shared-state updates waited to be written (ms).
    pub state_lag_ms: Gauge,
    /// Shared-state updates by what became of them: `sent`, `received`, `dropped`, `ignored`; and store `errors`.
    pub state_updates: Family<StateLabels, Counter>,
    /// One reader at a time brings `hedges` (and `recordings_lost`) up to date, so none is counted twice.
    hedges_sync: std::sync::Mutex<()>,
    /// The models each route's token metrics name (at most [`MAX_MODELS_PER_ROUTE`]).
    token_models: std::sync::Mutex<std::collections::HashMap<String, std::collections::HashSet<String>>>,
}

/// Raises `counter` to `total` (a counter only grows; the source keeps the truth).
fn catch_up(counter: &Counter, total: u64) {
    let behind = total.saturating_sub(counter.get());
    if behind > 0 {
        counter.inc_by(behind);
    }
}

/// Labels naming a route and one upstream model it serves.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    /// The route.
    pub route: String,
    /// The upstream model.
    pub model: String,
}

/// Labels of a breaker probe's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// The route.
    pub route: String,
    /// The upstream model.
    pub model: String,
    /// `ok` or `failed`.
    pub outcome: String,
}

/// Labels naming why a connection was closed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `header_timeout`, `idle` or `write_stall`.
    pub reason: String,
}

/// Labels of a shared-state count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `sent`, `received`, `dropped`, `ignored` or `errors`.
    pub what: String,
}

/// Labels of a rejected request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// The error code sent back.
    pub code: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let sessions = Family::<SessionLabels, Counter>::default();
        let handovers = Family::<HandoverLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let ttft =
            Family::<LadderLabels, Histogram, fn() -> Histogram>::new_with_constructor(seconds as fn() -> Histogram);
        let handover_gap = seconds();
        let active_streams = Gauge::default();
        let live_sessions = Gauge::default();
        let upstream_connections_open = Gauge::default();
        let session_panics = Counter::default();
        let slow_clients = Counter::default();
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        let client_connections_open = Gauge::default();
        let events_dropped = Counter::default();
        let rejected = Family::<RejectLabels, Counter>::default();
        let breaker_state = Family::<ModelLabels, Gauge>::default();
        let stall_deadline = Family::<ModelLabels, Gauge>::default();
        let learned_window = Family::<ModelLabels, Gauge>::default();
        let rejects_prefill = Family::<ModelLabels, Gauge>::default();
        let cache_entries = Family::<LadderLabels, Gauge>::default();
        let model_attempts = Family::<ModelLabels, Counter>::default();
        let probes = Family::<ProbeLabels, Counter>::default();
        let hedges = Family::<HedgeLabels, Counter>::default();
        let recordings_lost = Counter::default();
        let state_shared = Gauge::default();
        let state_connected = Gauge::default();
        let state_pending = Gauge::default();
        let state_lag_ms = Gauge::default();
        let state_updates = Family::<StateLabels, Counter>::default();
        registry.register(
            "state_shared",
            "Whether health, learned facts and the cache are shared with other instances ([state] redis_url)",
            state_shared.clone(),
        );
        registry.register(
            "state_connected",
            "Whether the shared-state store answers now (while 0, this instance works on its local state)",
            state_connected.clone(),
        );
        registry.register(
            "state_pending",
            "Shared-state updates waiting to be written",
            state_pending.clone(),
        );
        registry.register(
            "state_lag_ms",
            "How long the last batch of shared-state updates waited to be written (ms)",
            state_lag_ms.clone(),
        );
        registry.register(
            "state_updates",
            "Shared-state updates sent, received from other instances, dropped (queue full) or ignored (not understood), and store errors",
            state_updates.clone(),
        );
        let upstream_tokens = Family::<TokenLabels, Counter>::default();
        let upstream_unreported_deltas = Family::<RouteModelLabels, Counter>::default();
        registry.register("sessions", "Sessions by ladder and outcome", sessions.clone());
        registry.register(
            "handovers",
            "Mid-stream handovers by from, to and failure class",
            handovers.clone(),
        );
        registry.register(
            "failures",
            "Failed upstream attempts by route, class and kind",
            failures.clone(),
        );
        registry.register(
            "ttft_seconds",
            "Request to first answer byte, as the client sees it",
            ttft.clone(),
        );
        registry.register(
            "handover_gap_seconds",
            "Failure detected to the continuation's first byte",
            handover_gap.clone(),
        );
        registry.register("active_streams", "Streams being served now", active_streams.clone());
        registry.register(
            "live_sessions",
            "Sessions alive in this process (a leak keeps it above 0 when idle)",
            live_sessions.clone(),
        );
        registry.register(
            "upstream_connections_open",
            "Upstream responses open in this process, from request sent to stream dropped",
            upstream_connections_open.clone(),
        );
        registry.register(
            "session_panics",
            "Panics caught at a session's boundary (the client got an error, the server went on)",
            session_panics.clone(),
        );
        registry.register(
            "slow_clients",
            "Streamed answers ended because the client stopped taking chunks (server.slow_client_timeout_ms)",
            slow_clients.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed by a server limit: header_timeout, idle, write_stall, shed_idle, over_capacity or shutdown",
            connections_closed.clone(),
        );
        registry.register(
            "client_connections_open",
            "Client connections open now (server.max_connections caps them)",
            client_connections_open.clone(),
        );
        registry.register(
            "events_dropped",
            "Events dropped for slow /events subscribers",
            events_dropped.clone(),
        );
        registry.register(
            "rejected_requests",
            "Requests rejected before reaching a ladder",
            rejected.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker per route and upstream model: 0 closed, 1 half-open, 2 open",
            breaker_state.clone(),
        );
        registry.register(
            "route_stall_deadline_ms",
            "Stall deadline per route and upstream model for an attempt opening now (ms; follows recent gaps when adaptive)",
            stall_deadline.clone(),
        );
        registry.register(
            "learned_context_window_tokens",
            "Context window per route and upstream model, as the upstream's own context-length error stated it",
            learned_window.clone(),
        );
        registry.register(
            "rejects_prefill",
            "1 for each route and upstream model learned to reject a prefill (continued by instruction since)",
            rejects_prefill.clone(),
        );
        registry.register(
            "cache_entries",
            "Answers each ladder's response cache holds now",
            cache_entries.clone(),
        );
        registry.register(
            "model_attempts",
            "Attempts sent per route and upstream model (those its breaker let through)",
            model_attempts.clone(),
        );
        registry.register(
            "breaker_probes",
            "Probes of an open breaker (a user request or baton's own) by route, upstream model and outcome, judged at the first token",
            probes.clone(),
        );
        registry.register(
            "hedges",
            "Hedge races (a late first token started the next route) by ladder and outcome",
            hedges.clone(),
        );
        registry.register(
            "recordings_lost",
            "Session recordings that could not be written to record_dir (partial files are removed)",
            recordings_lost.clone(),
        );
        registry.register(
            "upstream_tokens",
            "Tokens the upstreams reported, over every attempt (cut ones included), by route, model and kind (prompt, completion, and reasoning: the part of completion an upstream reports as reasoning)",
            upstream_tokens.clone(),
        );
        registry.register(
            "upstream_unreported_deltas",
            "Text deltas streamed by attempts that reported no usage, by route and model (chunks, not tokens)",
            upstream_unreported_deltas.clone(),
        );
        Metrics {
            state_shared,
            state_connected,
            state_pending,
            state_lag_ms,
            state_updates,
            registry,
            sessions,
            handovers,
            failures,
            ttft,
            handover_gap,
            active_streams,
            live_sessions,
            upstream_connections_open,
            session_panics,
            slow_clients,
            connections_closed,
            client_connections_open,
            events_dropped,
            rejected,
            breaker_state,
            stall_deadline,
            learned_window,
            rejects_prefill,
            cache_entries,
            model_attempts,
            probes,
            hedges,
            recordings_lost,
            upstream_tokens,
            upstream_unreported_deltas,
            hedges_sync: std::sync::Mutex::new(()),
            token_models: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Brings `baton_hedges_total{ladder}` up to `policy`'s counts.
    pub fn hedges(&self, ladder: &str, policy: &crate::policy::hedge::HedgePolicy) {
        let _one = self.hedges_sync.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for outcome in crate::policy::hedge::Outcome::ALL {
            let counter = self.hedges.get_or_create(&HedgeLabels {
                ladder: ladder.to_string(),
                outcome: outcome.as_str().to_string(),
            });
            catch_up(&counter, policy.ended(outcome));
        }
    }

    /// Brings `baton_recordings_lost_total` up to the recorder's `lost`.
    pub fn recordings_lost(&self, lost: u64) {
        let _one = self.hedges_sync.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        catch_up(&self.recordings_lost, lost);
    }

    /// Shows the shared-state backend's `status`.
    pub fn state(&self, status: &crate::state::Status) {
        self.state_shared.set(i64::from(status.shared));
        self.state_connected.set(i64::from(status.connected));
        self.state_pending.set(status.pending as i64);
        self.state_lag_ms.set(status.lag_ms as i64);
        let _one = self.hedges_sync.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (what, total) in [
            ("sent", status.sent),
            ("received", status.received),
            ("dropped", status.dropped),
            ("ignored", status.ignored),
            ("errors", status.errors),
        ] {
            catch_up(
                &self.state_updates.get_or_create(&StateLabels { what: what.into() }),
                total,
            );
        }
    }

    /// Forgets every (route, model) gauge, before they are set again from the
    /// models the routes still keep (a forgotten model leaves no stale line).
    pub fn clear_models(&self) {
        self.breaker_state.clear();
        self.stall_deadline.clear();
        self.learned_window.clear();
        self.rejects_prefill.clear();
    }

    /// Sets what `route` knows of `health`'s model: breaker state, the stall
    /// deadline an attempt opening now would get, a learned window, attempts.
    pub fn model_health(&self, route: &str, health: &crate::policy::health::ModelHealth, stall: std::time::Duration) {
        let labels = ModelLabels {
            route: route.to_string(),
            model: health.name().to_string(),
        };
        let state = match health.state() {
            crate::policy::breaker::BreakerState::Closed => 0,
            crate::policy::breaker::BreakerState::HalfOpen => 1,
            crate::policy::breaker::BreakerState::Open => 2,
        };
        self.breaker_state.get_or_create(&labels).set(state);
        self.stall_deadline
            .get_or_create(&labels)
            .set(i64::try_from(stall.as_millis()).unwrap_or(i64::MAX));
        if health.rejects_prefill() {
            self.rejects_prefill.get_or_create(&labels).set(1);
        }
        if let Some(window) = health.learned_window() {
            self.learned_window.get_or_create(&labels).set(i64::from(window));
        }
        let _one = self.hedges_sync.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        catch_up(&self.model_attempts.get_or_create(&labels), health.attempts());
        let (ok, failed) = health.probes();
        for (outcome, total) in [("ok", ok), ("failed", failed)] {
            let counter = self.probes.get_or_create(&ProbeLabels {
                route: labels.route.clone(),
                model: labels.model.clone(),
                outcome: outcome.to_string(),
            });
            catch_up(&counter, total);
        }
    }

    /// Counts the end of a session that came through `door`.
    pub fn session(&self, ladder: &str, door: crate::Door, outcome: &str) {
        self.sessions
            .get_or_create(&SessionLabels {
                ladder: ladder.to_string(),
                outcome: outcome.to_string(),
                door: door.label().to_string(),
            })
            .inc();
    }

    /// Counts a handover.
    pub fn handover(&self, h: &Handover) {
        self.handovers
            .get_or_create(&HandoverLabels {
                from: h.from.to_string(),
                to: h.to.to_string(),
                class: h.class.as_str().to_string(),
            })
            .inc();
        self.handover_gap.observe(h.gap.as_secs_f64());
    }

    /// Counts failed attempts.
    pub fn failures(&self, failures: &[Failure]) {
        for f in failures {
            self.failures
                .get_or_create(&FailureLabels {
                    route: f.route.clone(),
                    class: f.class.as_str().to_string(),
                    kind: f.kind.clone(),
                })
                .inc();
        }
    }

    /// Counts every attempt's tokens of a session that ended.
    pub fn tokens(&self, tally: &Tally) {
        for a in &tally.attempts {
            let model = self.model_label(&a.route, &a.model);
            let Some(usage) = a.reported else {
                self.upstream_unreported_deltas
                    .get_or_create(&RouteModelLabels {
                        route: a.route.clone(),
                        model,
                    })
                    .inc_by(a.deltas);
                continue;
            };
            // Reasoning tokens are part of the completion tokens, a kind of their own only when the upstream says how many.
            let reasoning = usage.reasoning_tokens.map(|n| ("reasoning", n));
            let kinds = [("prompt", usage.prompt_tokens), ("completion", usage.completion_tokens)];
            for (kind, n) in kinds.into_iter().chain(reasoning) {
                self.upstream_tokens
                    .get_or_create(&TokenLabels {
                        route: a.route.clone(),
                        model: model.clone(),
                        kind: kind.to_string(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// `model` as the token metrics of `route` name it: itself, or `other`
    /// once the route has named [`MAX_MODELS_PER_ROUTE`] others.
    fn model_label(&self, route: &str, model: &str) -> String {
        let mut seen = self
            .token_models
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let models = seen.entry(route.to_string()).or_default();
        if models.contains(model) || models.len() < MAX_MODELS_PER_ROUTE {
            models.insert(model.to_string());
            return model.to_string();
        }
        "other".to_string()
    }

    /// Counts a rejected request.
    pub fn reject(&self, code: &str) {
        self.rejected
            .get_or_create(&RejectLabels { code: code.to_string() })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Usage;
    use crate::usage::AttemptTokens;

    fn on(model: &str) -> Tally {
        let mut tally = Tally::default();
        tally.push(AttemptTokens {
            attempt: 1,
            route: "pass".into(),
            model: model.into(),
            reported: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 1,
                reasoning_tokens: None,
            }),
            deltas: 1,
        });
        tally
    }

    #[test]
    fn a_pass_through_routes_models_are_bounded_in_the_token_metrics() {
        let metrics = Metrics::new();
        for i in 0..MAX_MODELS_PER_ROUTE + 10 {
            metrics.tokens(&on(&format!("client-model-{i}")));
        }
        metrics.tokens(&on("client-model-0"));
        let text = metrics.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("baton_upstream_tokens_total{") && l.contains("kind=\"prompt\""))
            .count();
        assert_eq!(series, MAX_MODELS_PER_ROUTE + 1, "{text}");
        assert!(
            text.contains(r#"baton_upstream_tokens_total{route="pass",model="other",kind="prompt"} 30"#),
            "{text}"
        );
        assert!(
            text.contains(r#"baton_upstream_tokens_total{route="pass",model="client-model-0",kind="prompt"} 6"#),
            "{text}"
        );
    }
}
