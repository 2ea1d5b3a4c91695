//! Active probes: baton asks an open (route, model) itself whether it is back.
//!
//! With `probe = "active"` on a route, users never get an open breaker's
//! probe slot (see [`crate::policy::breaker`]); instead a [`Prober`] sends one tiny
//! request of its own (one short user message, `max_tokens: 1`) when the
//! breaker's cool-down ends, and judges it at its first token. So no user
//! waits on a probe of a slow failure mode, such as an upstream that accepts
//! and never answers. When and how often to probe is the breaker's (pure)
//! decision; this is the thin driver around it.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::engine::event::{EventBus, EventKind, SessionLog, BATON_SESSION};
use crate::engine::watchdog::{Watchdog, Watched};
use crate::failure::FailureKind;
use crate::policy::health::{ModelHealth, Permit};
use crate::policy::ladder::{Ladder, Route};
use crate::provider::UpstreamRequest;
use crate::request::{Message, Role};

/// The user message of an active probe: any answer at all will do.
pub const PROBE_MESSAGE: &str = "ping";

/// Probes the open breakers of some routes until dropped.
#[derive(Debug)]
pub struct Prober {
    /// One task per route; dropping the set stops them and their probes in flight.
    _tasks: JoinSet<()>,
}

impl Prober {
    /// Starts probing the actively probed routes of `ladders` (a route shared
    /// by several ladders once); `None` when none is.
    pub fn for_ladders<'a>(ladders: impl IntoIterator<Item = &'a Ladder>, events: EventBus) -> Option<Prober> {
        let mut routes: Vec<Route> = Vec::new();
        for route in ladders.into_iter().flat_map(|l| l.routes.iter()) {
            if route.health.probes_actively() && !routes.iter().any(|r| Arc::ptr_eq(&r.health, &route.health)) {
                routes.push(route.clone());
            }
        }
        Prober::start(routes, events)
    }

    /// Starts probing `routes` (whatever their probe mode); `None` when there are none.
    pub fn start(routes: Vec<Route>, events: EventBus) -> Option<Prober> {
        if routes.is_empty() {
            return None;
        }
        let log = SessionLog::new(BATON_SESSION, events);
        let mut tasks = JoinSet::new();
        for route in routes {
            tasks.spawn(probe_route(route, log.clone()));
        }
        Some(Prober { _tasks: tasks })
    }
}

/// Probes `route`'s models whenever one's cool-down ends, forever.
async fn probe_route(route: Route, log: SessionLog) {
    let route = Arc::new(route);
    let mut probes = JoinSet::new();
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for model in route.health.models() {
            match model.next_probe() {
                Some(due) if due <= now => {
                    if let Some((permit, transition)) = model.admit_probe() {
                        breaker_changed(&log, &route, &model, transition);
                        probes.spawn(probe(route.clone(), model, permit, log.clone()));
                    }
                }
                Some(due) => next = Some(next.map_or(due, |n| n.min(due))),
                None => {}
            }
        }
        // A probe that fails reopens its breaker, which wakes this loop too.
        tokio::select! {
            () = route.health.breaker_opened() => {}
            () = sleep_until(next) => {}
            Some(_) = probes.join_next(), if !probes.is_empty() => {}
        }
    }
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The tiny request an active probe sends to `model`.
pub fn probe_request(model: &str) -> UpstreamRequest {
    let mut params = Map::new();
    params.insert("max_tokens".into(), Value::from(1));
    UpstreamRequest {
        model: model.to_string(),
        messages: vec![Message::new(Role::User, PROBE_MESSAGE)],
        params,
        continue_final_message: false,
    }
}

/// Whether `request` is an active probe's (for tests and fault servers).
pub fn is_probe(request: &UpstreamRequest) -> bool {
    request.params.get("max_tokens") == Some(&Value::from(1))
        && request.messages.len() == 1
        && request.messages[0].content == PROBE_MESSAGE
}

/// Sends one probe to `model` on `route` under the route's deadlines and
/// settles `permit` with it: a success at its first content.
async fn probe(route: Arc<Route>, model: Arc<ModelHealth>, mut permit: Permit, log: SessionLog) {
    let started = Instant::now();
    let mut watchdog = Watchdog::new(route.provider.stream(probe_request(model.name())), route.deadlines);
    let failure = loop {
        match watchdog.next().await {
            Some(Watched::Text(t)) if t.is_empty() => {}
            // Content, or a proper end: it answers again.
            Some(Watched::Text(_) | Watched::Reasoning { .. } | Watched::ToolCalls(_) | Watched::Finished(_)) => {
                break None
            }
            Some(Watched::Usage(_)) => {}
            Some(Watched::Failed(kind)) => break Some(kind),
            None => break Some(FailureKind::Truncated { detail: None }),
        }
    };
    // Cancel the rest of the answer: one token told all a probe asks.
    drop(watchdog);
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(route = %route.name, model = %model.name(), ok = failure.is_none(), ms, "active probe");
    log.emit(EventKind::Probe {
        route: route.name.to_string(),
        model: model.name().to_string(),
        ok: failure.is_none(),
        ms,
        error: failure.as_ref().map(ToString::to_string),
    });
    let transition = match &failure {
        None => {
            let closed = permit.first_token();
            permit.settle(None);
            closed
        }
        Some(kind) => permit.settle(Some(kind)),
    };
    breaker_changed(&log, &route, &model, transition);
}

fn breaker_changed(
    log: &SessionLog,
    route: &Route,
    model: &ModelHealth,
    transition: Option<crate::policy::breaker::Transition>,
) {
    if let Some(t) = transition {
        tracing::info!(route = %route.name, model = %model.name(), from = t.from.as_str(), to = t.to.as_str(), "circuit breaker");
        log.emit(EventKind::Breaker {
            route: route.name.to_string(),
            model: Some(model.name().to_string()),
            from: t.from,
            to: t.to,
        });
    }
}
