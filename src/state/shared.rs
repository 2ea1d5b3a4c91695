//! This instance's side of the shared state: what changed here since the last
//! look ([`Shared::changes`]), and what another instance reported, applied to
//! this instance's own health and caches ([`Shared::apply`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::update::{unix_ms, Envelope, Fact, Update};
use crate::engine::event::{EventBus, EventKind, SessionLog, BATON_SESSION};
use crate::policy::breaker::{BreakerState, Transition};
use crate::policy::health::{ModelHealth, RouteHealth, OUTBOX_SAMPLES};
use crate::policy::ladder::Ladder;
use crate::rungs::cache::{CachedAnswer, ResponseCache};

/// Cool-downs another instance reports that end further ahead than this are not ours.
const MAX_COOL_DOWN: Duration = Duration::from_secs(24 * 3600);
/// A first-token time or gap longer than this (µs) is not one any deadline allows.
const MAX_SAMPLE_US: u64 = 3_600_000_000;

/// The routes and caches of this instance's ladders, by name, and what it last told or heard of each.
#[derive(Debug)]
pub struct Shared {
    instance: Uuid,
    routes: HashMap<Arc<str>, Arc<RouteHealth>>,
    caches: HashMap<String, Arc<ResponseCache>>,
    events: EventBus,
    /// Per (route, model): the breaker and facts as last sent or applied.
    seen: Mutex<HashMap<RouteModel, Seen>>,
}

/// A route's name and one of its upstream models.
type RouteModel = (Arc<str>, Arc<str>);

/// A (route, model) as the others know it.
#[derive(Clone, Debug, Default, PartialEq)]
struct Seen {
    /// `Some(end of cool-down)` while open, as last sent or applied.
    open_until: Option<Instant>,
    facts: Vec<Fact>,
}

/// Why an update was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// This instance sent it.
    Own,
    /// No route or ladder here has that name (another deployment's config).
    Unknown(String),
    /// Its values make no sense (a cool-down a day away, a zero window).
    Invalid(String),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `t` (Unix ms) as an instant of this process's clock.
fn instant_at(t: u64) -> Instant {
    let now = unix_ms();
    let now_i = Instant::now();
    if t >= now {
        now_i + Duration::from_millis(t - now)
    } else {
        now_i.checked_sub(Duration::from_millis(now - t)).unwrap_or(now_i)
    }
}

/// `i` as Unix ms.
fn unix_at(i: Instant) -> u64 {
    let now_i = Instant::now();
    let now = unix_ms();
    if i >= now_i {
        now.saturating_add((i - now_i).as_millis() as u64)
    } else {
        now.saturating_sub((now_i - i).as_millis() as u64)
    }
}

impl Shared {
    /// The shared side of `ladders` for instance `instance`; remote breaker
    /// changes are published on `events` as baton's own (session [`BATON_SESSION`]).
    pub fn new<'a>(instance: Uuid, ladders: impl IntoIterator<Item = &'a Ladder>, events: EventBus) -> Self {
        let mut routes = HashMap::new();
        let mut caches = HashMap::new();
        for ladder in ladders {
            for route in &ladder.routes {
                route.health.share_samples();
                routes.entry(route.name.clone()).or_insert_with(|| route.health.clone());
            }
            if let Some(cache) = &ladder.cache {
                caches.insert(ladder.name.clone(), cache.store.clone());
            }
        }
        Shared {
            instance,
            routes,
            caches,
            events,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// This instance's id.
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// How long `ladder`'s cached answers stay fresh, if it has a cache.
    pub fn cache_ttl(&self, ladder: &str) -> Option<Duration> {
        self.caches.get(ladder).map(|c| c.ttl())
    }

    /// The caches, by ladder (to hook their stores to a backend).
    pub fn caches(&self) -> impl Iterator<Item = (&str, &Arc<ResponseCache>)> {
        self.caches.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// What changed here since the last call: breakers that opened (or
    /// reopened with a new cool-down) or closed, facts newly learned. With
    /// `everything`, every open breaker and every fact instead (for a store
    /// that lost them, or another instance that missed them).
    pub fn changes(&self, everything: bool) -> Vec<Update> {
        let mut out = Vec::new();
        let mut seen = lock(&self.seen);
        // Models a route has forgotten are forgotten here too, so this stays bounded.
        let mut kept = HashMap::with_capacity(seen.len());
        for (route, health) in &self.routes {
            for model in health.models() {
                let key = (route.clone(), model.name().clone());
                let was = kept
                    .entry(key.clone())
                    .or_insert_with(|| seen.remove(&key).unwrap_or_default());
                let now = current(&model);
                let breaker_changed = match (was.open_until, now.open_until) {
                    (Some(a), Some(b)) => a != b,
                    (None, None) => false,
                    _ => true,
                };
                // A half-open breaker is waiting for its probe: nothing to say yet.
                let half_open = model.state() == BreakerState::HalfOpen;
                if (breaker_changed || (everything && now.open_until.is_some())) && !half_open {
                    out.push(Update::Breaker {
                        route: route.to_string(),
                        model: model.name().to_string(),
                        open_until_ms: now.open_until.map(unix_at),
                    });
                    was.open_until = now.open_until;
                }
                for fact in &now.facts {
                    if everything || !was.facts.contains(fact) {
                        out.push(Update::Fact {
                            route: route.to_string(),
                            model: model.name().to_string(),
                            fact: *fact,
                        });
                    }
                }
                was.facts = now.facts;
            }
        }
        *seen = kept;
        drop(seen);
        // Samples are news once: a catch-up after a reconnection has none to repeat.
        if !everything {
            for (route, health) in &self.routes {
                for (model, samples) in health.take_samples() {
                    out.push(Update::Samples {
                        route: route.to_string(),
                        model: model.to_string(),
                        ttft_us: samples.ttft.iter().map(|d| d.as_micros() as u64).collect(),
                        gaps_us: samples.gaps.iter().map(|d| d.as_micros() as u64).collect(),
                    });
                }
            }
        }
        out
    }

    /// Applies what another instance reported.
    pub fn apply(&self, envelope: Envelope) -> Result<(), Ignored> {
        if envelope.from == self.instance {
            return Err(Ignored::Own);
        }
        match envelope.update {
            Update::Breaker {
                route,
                model,
                open_until_ms,
            } => {
                let (name, health) = self.route(&route)?;
                let target = health.model(&model);
                let transition = match open_until_ms {
                    Some(t) => {
                        let until = instant_at(t);
                        if until > Instant::now() + MAX_COOL_DOWN {
                            return Err(Ignored::Invalid(format!("a cool-down ending {t} ms after 1970")));
                        }
                        // The opener probes first: held open half a cool-down longer here.
                        let held = until + health.breaker_config().cool_down / 2;
                        let transition = target.shared_open(held);
                        self.note(&name, &target, |seen| seen.open_until = target.next_probe());
                        transition
                    }
                    None => {
                        let transition = target.shared_close();
                        self.note(&name, &target, |seen| seen.open_until = None);
                        transition
                    }
                };
                self.announce(&name, &target, transition);
                Ok(())
            }
            Update::Fact { route, model, fact } => {
                let (name, health) = self.route(&route)?;
                let target = health.model(&model);
                match fact {
                    Fact::RejectsPrefill => target.remember_no_prefill(),
                    Fact::Window { tokens: 0 } => return Err(Ignored::Invalid("a context window of 0 tokens".into())),
                    Fact::Window { tokens } => target.learn_window(tokens),
                    Fact::Echoes { mode } => target.remember_echo(mode),
                }
                // Known here now: not news to send back.
                let facts = current(&target).facts;
                self.note(&name, &target, |seen| seen.facts = facts);
                Ok(())
            }
            Update::Samples {
                route,
                model,
                ttft_us,
                gaps_us,
            } => {
                let (_, health) = self.route(&route)?;
                if ttft_us.len() > OUTBOX_SAMPLES || gaps_us.len() > OUTBOX_SAMPLES {
                    return Err(Ignored::Invalid(format!(
                        "{} and {} samples, more than the {OUTBOX_SAMPLES} an instance sends",
                        ttft_us.len(),
                        gaps_us.len()
                    )));
                }
                if ttft_us.iter().chain(&gaps_us).any(|us| *us > MAX_SAMPLE_US) {
                    return Err(Ignored::Invalid("a sample longer than an hour".into()));
                }
                let target = health.model(&model);
                for us in ttft_us {
                    target.record_shared_ttft(Duration::from_micros(us));
                }
                let gaps: Vec<Duration> = gaps_us.into_iter().map(Duration::from_micros).collect();
                target.record_shared_gaps(&gaps);
                Ok(())
            }
            Update::Cache {
                ladder,
                key,
                deltas,
                finish_reason,
                stored_ms,
            } => {
                let cache = self
                    .caches
                    .get(&ladder)
                    .ok_or_else(|| Ignored::Unknown(format!("no ladder {ladder:?} with a cache")))?;
                let age = Duration::from_millis(unix_ms().saturating_sub(stored_ms));
                cache.put_shared(key, CachedAnswer { deltas, finish_reason }, age);
                Ok(())
            }
        }
    }

    fn route(&self, name: &str) -> Result<(Arc<str>, &Arc<RouteHealth>), Ignored> {
        self.routes
            .get_key_value(name)
            .map(|(k, v)| (k.clone(), v))
            .ok_or_else(|| Ignored::Unknown(format!("no route {name:?}")))
    }

    fn note(&self, route: &Arc<str>, model: &ModelHealth, change: impl FnOnce(&mut Seen)) {
        change(
            lock(&self.seen)
                .entry((route.clone(), model.name().clone()))
                .or_default(),
        );
    }

    /// Tells this instance's listeners (dashboard, recordings, logs) of a change another instance caused.
    fn announce(&self, route: &str, model: &ModelHealth, transition: Option<Transition>) {
        if let Some(t) = transition {
            tracing::info!(route, model = %model.name(), from = t.from.as_str(), to = t.to.as_str(), "circuit breaker (shared state)");
            SessionLog::new(BATON_SESSION, self.events.clone()).emit(EventKind::Breaker {
                route: route.to_string(),
                model: Some(model.name().to_string()),
                from: t.from,
                to: t.to,
            });
        }
    }

    /// Tells this instance's listeners where its state is shared and whether that store answers.
    pub fn announce_backend(&self, backend: &str, connected: bool) {
        SessionLog::new(BATON_SESSION, self.events.clone()).emit(EventKind::SharedState {
            backend: backend.to_string(),
            connected,
        });
    }

    /// An answer stored here, as an update.
    pub fn cache_update(ladder: &str, key: &str, answer: &CachedAnswer) -> Update {
        Update::Cache {
            ladder: ladder.to_string(),
            key: key.to_string(),
            deltas: answer.deltas.clone(),
            finish_reason: answer.finish_reason.clone(),
            stored_ms: unix_ms(),
        }
    }
}

/// A model's breaker and facts now.
fn current(model: &ModelHealth) -> Seen {
    let mut facts = Vec::new();
    if model.rejects_prefill() {
        facts.push(Fact::RejectsPrefill);
    }
    if let Some(tokens) = model.learned_window() {
        facts.push(Fact::Window { tokens });
    }
    facts.extend(model.echo_modes().into_iter().map(|mode| Fact::Echoes { mode }));
    Seen {
        open_until: model.next_probe(),
        facts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::continuation::ContinuationMode;
    use crate::oracle::provider::MockProvider;
    use crate::policy::breaker::BreakerConfig;
    use crate::policy::ladder::Route;
    use crate::rungs::cache::{CacheLimits, CacheRung, CacheUse};

    fn instance(n: u128) -> (Shared, Arc<RouteHealth>, Arc<ResponseCache>) {
        let provider = Arc::new(MockProvider::new(
            crate::oracle::fault::FaultPlan::Fixed(crate::oracle::fault::FaultScript::NONE),
            crate::oracle::Style::default(),
        ));
        let mut route = Route::new("r", "m", provider);
        let breaker = BreakerConfig {
            consecutive_failures: 1,
            cool_down: Duration::from_secs(10),
            ..BreakerConfig::default()
        };
        route.health = Arc::new(RouteHealth::new(breaker, Default::default()));
        let health = route.health.clone();
        let mut ladder = Ladder::new(vec![route]).named("l");
        let store = Arc::new(ResponseCache::new(CacheLimits::default()));
        ladder.cache = Some(CacheRung {
            uses: CacheUse::First,
            store: store.clone(),
        });
        (
            Shared::new(Uuid::from_u128(n), [&ladder], EventBus::new(16)),
            health,
            store,
        )
    }

    fn open_here(health: &RouteHealth) {
        let model = health.model("m");
        let (permit, _) = model.admit(true).expect("closed");
        permit.settle(Some(&crate::failure::FailureKind::ServerError {
            status: 503,
            retry_after: None,
        }));
        assert_eq!(model.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn an_opening_here_is_told_once_and_applied_there_held_half_a_cool_down_longer() {
        let (a, health_a, _) = instance(1);
        let (b, health_b, _) = instance(2);
        health_a.model("m");
        assert_eq!(a.changes(false), []);
        open_here(&health_a);
        let told = a.changes(false);
        let [Update::Breaker {
            open_until_ms: Some(until),
            ..
        }] = told.as_slice()
        else {
            panic!("{told:?}");
        };
        assert_eq!(a.changes(false), [], "told once");
        assert_eq!(a.changes(true).len(), 1, "and again when everything is asked for");
        b.apply(Envelope::new(a.instance(), told[0].clone())).expect("applied");
        let model_b = health_b.model("m");
        assert_eq!(model_b.state(), BreakerState::Open);
        let held = model_b.next_probe().expect("open");
        let expected = instant_at(*until) + Duration::from_secs(5);
        assert!(
            held.max(expected) - held.min(expected) < Duration::from_millis(50),
            "{held:?} vs {expected:?}"
        );
        // What B applied is not news B sends back.
        assert_eq!(b.changes(false), []);
        // B's own updates come back to it through the channel: ignored.
        assert_eq!(b.apply(Envelope::new(b.instance(), told[0].clone())), Err(Ignored::Own));
        // A closing closes B.
        let closing = Update::Breaker {
            route: "r".into(),
            model: "m".into(),
            open_until_ms: None,
        };
        b.apply(Envelope::new(a.instance(), closing)).expect("applied");
        assert_eq!(model_b.state(), BreakerState::Closed);
        assert_eq!(b.changes(false), []);
    }

    #[tokio::test]
    async fn samples_taken_here_are_sent_once_and_merged_there_bounded() {
        let (a, health_a, _) = instance(1);
        let (b, health_b, _) = instance(2);
        let model_a = health_a.model("m");
        for ms in [100, 200, 300] {
            model_a.record_ttft(Duration::from_millis(ms));
        }
        model_a.record_gaps(&vec![Duration::from_millis(7); OUTBOX_SAMPLES + 50]);
        let told = a.changes(false);
        let [Update::Samples { ttft_us, gaps_us, .. }] = told.as_slice() else {
            panic!("{told:?}");
        };
        assert_eq!(ttft_us, &[100_000, 200_000, 300_000]);
        assert_eq!(gaps_us.len(), OUTBOX_SAMPLES, "bounded between two sends");
        assert_eq!(a.changes(false), [], "sent once");
        b.apply(Envelope::new(a.instance(), told[0].clone())).expect("applied");
        let model_b = health_b.model("m");
        assert_eq!(model_b.gap_count(), OUTBOX_SAMPLES);
        assert!(model_b.ttft_p95_of(3).is_some());
        assert_eq!(b.changes(false), [], "what came in is not sent back");
        let huge = Update::Samples {
            route: "r".into(),
            model: "m".into(),
            ttft_us: vec![u64::MAX],
            gaps_us: Vec::new(),
        };
        assert!(matches!(
            b.apply(Envelope::new(a.instance(), huge)),
            Err(Ignored::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn facts_and_cached_answers_cross_and_nonsense_is_refused() {
        let (a, health_a, _) = instance(1);
        let (b, health_b, cache_b) = instance(2);
        let model_a = health_a.model("m");
        model_a.remember_no_prefill();
        model_a.learn_window(8192);
        model_a.remember_echo(ContinuationMode::Instruct);
        let told = a.changes(false);
        assert_eq!(told.len(), 3, "{told:?}");
        for update in told {
            b.apply(Envelope::new(a.instance(), update)).expect("applied");
        }
        let model_b = health_b.model("m");
        assert!(model_b.rejects_prefill());
        assert_eq!(model_b.learned_window(), Some(8192));
        assert!(model_b.seen_echoing(ContinuationMode::Instruct));
        assert_eq!(b.changes(false), [], "nothing to send back");

        let answer = CachedAnswer {
            deltas: vec!["hel".into(), "lo".into()],
            finish_reason: "stop".into(),
        };
        b.apply(Envelope::new(a.instance(), Shared::cache_update("l", "k", &answer)))
            .expect("applied");
        assert_eq!(cache_b.get("k").map(|h| h.answer.text()), Some("hello".into()));
        // One stored longer ago than the TTL is not stored.
        let mut stale = Shared::cache_update("l", "old", &answer);
        if let Update::Cache { stored_ms, .. } = &mut stale {
            *stored_ms = stored_ms.saturating_sub(3_600_000);
        }
        b.apply(Envelope::new(a.instance(), stale)).expect("applied");
        assert!(cache_b.get("old").is_none());

        let from = a.instance();
        let unknown = Update::Fact {
            route: "elsewhere".into(),
            model: "m".into(),
            fact: Fact::RejectsPrefill,
        };
        assert!(matches!(
            b.apply(Envelope::new(from, unknown)),
            Err(Ignored::Unknown(_))
        ));
        let zero = Update::Fact {
            route: "r".into(),
            model: "m".into(),
            fact: Fact::Window { tokens: 0 },
        };
        assert!(matches!(b.apply(Envelope::new(from, zero)), Err(Ignored::Invalid(_))));
        let far = Update::Breaker {
            route: "r".into(),
            model: "m".into(),
            open_until_ms: Some(unix_ms() + 10 * 24 * 3_600_000),
        };
        assert!(matches!(b.apply(Envelope::new(from, far)), Err(Ignored::Invalid(_))));
        assert!(matches!(
            b.apply(Envelope::new(
                from,
                Shared::cache_update("no-such-ladder", "k", &answer)
            )),
            Err(Ignored::Unknown(_))
        ));
    }
}
