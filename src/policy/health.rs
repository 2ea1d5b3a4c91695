//! Health per (route, upstream model): a circuit breaker, a retry budget,
//! recent first-token times and inter-token gaps, and learned facts ("rejects
//! prefill", "echoes in this mode", "its context window is 8192").
//!
//! A pass-through route (`model = "{model}"`) serves every model a client
//! names; one model's failures say nothing of the others, so everything a
//! route learns is kept per upstream model ([`ModelHealth`]). A route keeps
//! at most [`MAX_MODELS`] of them, dropping the least recently used, so a
//! client naming endless models cannot grow baton's memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;

use crate::continuation::ContinuationMode;
use crate::failure::{FailureClass, FailureKind};
use crate::policy::breaker::{Admission, Breaker, BreakerConfig, BreakerState, Outcome, ProbeMode, Transition};
use crate::policy::budget::{BudgetConfig, RetryBudget};
use crate::policy::deadline::Deadlines;
use crate::policy::deadline::{GapHistory, GapSample};

/// The most upstream models one route keeps health for.
pub const MAX_MODELS: usize = 64;

/// A route's health: one [`ModelHealth`] per upstream model it has served,
/// shared by every session and every clone of the route.
#[derive(Debug)]
pub struct RouteHealth {
    breaker: BreakerConfig,
    budget: BudgetConfig,
    models: Mutex<Models>,
    /// Woken when one of its models' breakers opens, so an active prober need not poll.
    opened: Arc<Notify>,
    /// Its models' samples for other instances.
    outbox: Arc<Outbox>,
}

/// The models a route has served, least recently used dropped first.
#[derive(Debug, Default)]
struct Models {
    map: HashMap<Arc<str>, (Arc<ModelHealth>, u64)>,
    /// A use counter: the entry with the lowest stamp is the least recently used.
    clock: u64,
}

/// The decisions about a route's attempts that live traffic takes from the
/// route's health and a replay takes from its recording. A route holds one
/// ([`Live`] unless a re-drive plugs in its script, see
/// [`crate::record::verify`]), so the live types carry no replay state.
pub trait Decisions: Send + Sync + std::fmt::Debug {
    /// Whether a retry on `model` may be spent.
    fn allow_retry(&self, model: &ModelHealth) -> bool;
    /// The next attempt's deadlines when they are given rather than computed.
    fn deadlines(&self) -> Option<Deadlines>;
    /// Whether an attempt's stall deadline may follow its own cadence (a
    /// replay re-drives under the deadline its recording shows instead).
    fn own_cadence(&self) -> bool;
    /// The delay before attempt number `attempt` is hedged (`None`: it is
    /// not), where `live` is what the hedging rule says now.
    fn hedge_delay(&self, attempt: u32, live: &dyn Fn() -> Option<Duration>) -> Option<Duration>;
}

/// Live traffic: the route's health and the rules decide.
#[derive(Clone, Copy, Debug, Default)]
pub struct Live;

impl Decisions for Live {
    fn allow_retry(&self, model: &ModelHealth) -> bool {
        model.allow_retry()
    }

    fn deadlines(&self) -> Option<Deadlines> {
        None
    }

    fn own_cadence(&self) -> bool {
        true
    }

    fn hedge_delay(&self, _attempt: u32, live: &dyn Fn() -> Option<Duration>) -> Option<Duration> {
        live()
    }
}

/// What one route has learned of one upstream model.
#[derive(Debug)]
pub struct ModelHealth {
    model: Arc<str>,
    breaker: Mutex<Breaker>,
    budget: Mutex<RetryBudget>,
    /// Recent times to first token, for a ladder's latency ceiling and hedging.
    ttft: Mutex<TtftWindow>,
    /// Recent inter-token gaps, for the adaptive stall deadline.
    gaps: Mutex<GapSample>,
    /// It rejected a prefill once: every later continuation on it is by instruction.
    no_prefill: AtomicBool,
    /// The continuation modes it was seen echoing the prefix in: its short echoes are trimmed.
    echoes: Mutex<Vec<ContinuationMode>>,
    /// The context window its errors stated, in tokens (0: never stated).
    window: AtomicU32,
    /// Attempts sent to it, for `/metrics`.
    attempts: AtomicU64,
    /// Probes judged a success and a failure, for `/metrics`.
    probes: [AtomicU64; 2],
    /// The route's wake-up for its active prober.
    opened: Arc<Notify>,
    /// Samples taken here, for other instances (only while state is shared).
    outbox: Arc<Outbox>,
}

/// First-token times and inter-token gaps a route's models took since they
/// were last sent to other instances: kept only while state is shared, at
/// most [`OUTBOX_SAMPLES`] of each per model (the rest are this instance's alone).
#[derive(Debug, Default)]
pub struct Outbox {
    /// State is shared: collect.
    on: AtomicBool,
    samples: Mutex<HashMap<Arc<str>, Samples>>,
}

/// Samples of one model waiting to be sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Samples {
    /// Times to first token.
    pub ttft: Vec<Duration>,
    /// Inter-token gaps.
    pub gaps: Vec<Duration>,
}

/// Samples of each kind one model keeps for the others between two sends.
pub const OUTBOX_SAMPLES: usize = 256;

impl Outbox {
    fn push(&self, model: &Arc<str>, ttft: Option<Duration>, gaps: &[Duration]) {
        if !self.on.load(Ordering::Relaxed) {
            return;
        }
        let mut all = lock(&self.samples);
        // Bounded like the models themselves: a route keeps at most MAX_MODELS.
        if all.len() >= MAX_MODELS && !all.contains_key(model) {
            return;
        }
        let s = all.entry(model.clone()).or_default();
        if let Some(t) = ttft {
            if s.ttft.len() < OUTBOX_SAMPLES {
                s.ttft.push(t);
            }
        }
        let room = OUTBOX_SAMPLES.saturating_sub(s.gaps.len());
        s.gaps.extend(gaps.iter().take(room));
    }
}

impl Default for RouteHealth {
    fn default() -> Self {
        RouteHealth::new(BreakerConfig::default(), BudgetConfig::default())
    }
}

/// Permission to send one attempt; settles the breaker when the attempt ends,
/// and frees its half-open probe slot if it is dropped unsettled (a client left).
#[derive(Debug)]
pub struct Permit {
    health: Arc<ModelHealth>,
    /// When it was admitted: a failure's cost is counted from here.
    admitted: Instant,
    /// It holds a half-open probe slot that is not judged yet.
    probe: bool,
    settled: bool,
}

impl Permit {
    /// Whether it is a probe not judged yet (its outcome will move the breaker).
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The attempt's first content arrived: a probe is judged a success now
    /// (returns the half-open → closed change), and the attempt's later end
    /// counts as an ordinary outcome.
    pub fn first_token(&mut self) -> Option<Transition> {
        if !std::mem::replace(&mut self.probe, false) {
            return None;
        }
        self.health.record(Outcome::probe(false, self.admitted.elapsed()))
    }

    /// Records how the attempt ended; returns the breaker change it caused.
    pub fn settle(mut self, failure: Option<&FailureKind>) -> Option<Transition> {
        self.settled = true;
        // baton's own exhaustion says nothing of the route, not even that it is
        // well: the attempt is given back as if never made.
        if failure.is_some_and(|f| f.class() == FailureClass::Local) {
            if self.probe {
                lock(&self.health.breaker).release(Instant::now());
            }
            return None;
        }
        // Only failures that say something about the route's health count:
        // a refusal, a context-length miss or a prefill rejection does not.
        let failed = failure.is_some_and(|f| {
            matches!(f.class(), FailureClass::Technical | FailureClass::Quality)
                && !matches!(f, FailureKind::PrefillRejected { .. } | FailureKind::CircuitOpen)
        });
        let cost = self.admitted.elapsed();
        self.health.record(Outcome {
            failed,
            cost,
            probe: self.probe,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            lock(&self.health.breaker).release(Instant::now());
        }
    }
}

/// A poisoned lock only means another session panicked mid-update; the counters are still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RouteHealth {
    /// Health with these breaker and budget settings for every model.
    pub fn new(breaker: BreakerConfig, budget: BudgetConfig) -> Self {
        RouteHealth {
            breaker,
            budget,
            models: Mutex::new(Models::default()),
            opened: Arc::new(Notify::new()),
            outbox: Arc::new(Outbox::default()),
        }
    }

    /// From now on, keeps its models' new samples for other instances ([`Self::take_samples`]).
    pub fn share_samples(&self) {
        self.outbox.on.store(true, Ordering::Relaxed);
    }

    /// The samples its models took since the last call, by model.
    pub fn take_samples(&self) -> Vec<(Arc<str>, Samples)> {
        let mut all = lock(&self.outbox.samples);
        let mut out: Vec<_> = all.drain().filter(|(_, s)| *s != Samples::default()).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The health of upstream `model` on this route, created on first use.
    pub fn model(&self, model: &str) -> Arc<ModelHealth> {
        let mut models = lock(&self.models);
        models.clock += 1;
        let now = models.clock;
        if let Some((health, used)) = models.map.get_mut(model) {
            *used = now;
            return health.clone();
        }
        if models.map.len() >= MAX_MODELS {
            // The least recently used model is forgotten; it starts afresh if it comes back.
            let oldest = models
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                models.map.remove(&oldest);
            }
        }
        let health = Arc::new(
            ModelHealth::new(model.into(), self.breaker, self.budget).waking(self.opened.clone(), self.outbox.clone()),
        );
        models.map.insert(health.model.clone(), (health.clone(), now));
        health
    }

    /// The models this route has served (at most [`MAX_MODELS`]), by name.
    pub fn models(&self) -> Vec<Arc<ModelHealth>> {
        let mut all: Vec<_> = lock(&self.models).map.values().map(|(h, _)| h.clone()).collect();
        all.sort_by(|a, b| a.model.cmp(&b.model));
        all
    }

    /// Its breaker settings (those of every model).
    pub fn breaker_config(&self) -> &BreakerConfig {
        &self.breaker
    }

    /// Whether baton probes its open breakers itself.
    pub fn probes_actively(&self) -> bool {
        self.breaker.probe == ProbeMode::Active
    }

    /// Resolves when one of its models' breakers opens (or opened since the last call).
    pub async fn breaker_opened(&self) {
        self.opened.notified().await;
    }
}

impl ModelHealth {
    /// Fresh health for `model`: closed breaker, unspent budget, nothing learned.
    pub fn new(model: Arc<str>, breaker: BreakerConfig, budget: BudgetConfig) -> Self {
        ModelHealth {
            model,
            breaker: Mutex::new(Breaker::new(breaker)),
            budget: Mutex::new(RetryBudget::new(budget)),
            ttft: Mutex::new(TtftWindow::default()),
            gaps: Mutex::new(GapSample::default()),
            no_prefill: AtomicBool::new(false),
            echoes: Mutex::new(Vec::new()),
            window: AtomicU32::new(0),
            attempts: AtomicU64::new(0),
            probes: [AtomicU64::new(0), AtomicU64::new(0)],
            opened: Arc::new(Notify::new()),
            outbox: Arc::new(Outbox::default()),
        }
    }

    /// The same health, waking `opened` whenever its breaker opens and keeping samples in its route's `outbox`.
    fn waking(mut self, opened: Arc<Notify>, outbox: Arc<Outbox>) -> Self {
        self.opened = opened;
        self.outbox = outbox;
        self
    }

    /// Records an outcome on the breaker, counting probes and waking the prober on an opening.
    fn record(&self, outcome: Outcome) -> Option<Transition> {
        let transition = lock(&self.breaker).record(Instant::now(), outcome);
        if outcome.probe {
            self.probes[usize::from(outcome.failed)].fetch_add(1, Ordering::Relaxed);
        }
        if transition.is_some_and(|t| t.to == BreakerState::Open) {
            self.opened.notify_one();
        }
        transition
    }

    /// Opens its breaker until `until` because another instance sharing the
    /// state opened its own (waking the prober); the change it made.
    pub fn shared_open(&self, until: Instant) -> Option<Transition> {
        let transition = lock(&self.breaker).force_open(Instant::now(), until);
        if transition.is_some_and(|t| t.to == BreakerState::Open) {
            self.opened.notify_one();
        }
        transition
    }

    /// Closes its breaker because another instance's probe succeeded; the change it made.
    pub fn shared_close(&self) -> Option<Transition> {
        lock(&self.breaker).force_close(Instant::now())
    }

    /// The echo modes it has been seen in (see [`Self::seen_echoing`]).
    pub fn echo_modes(&self) -> Vec<ContinuationMode> {
        lock(&self.echoes).clone()
    }

    /// The upstream model's name.
    pub fn name(&self) -> &Arc<str> {
        &self.model
    }

    /// Asks the breaker for an attempt: a permit (and any state change), or `None` to skip the route.
    pub fn admit(self: &Arc<Self>, first_try: bool) -> Option<(Permit, Option<Transition>)> {
        let now = Instant::now();
        let admission = lock(&self.breaker).try_acquire(now);
        let admitted = self.permit(now, admission)?;
        if first_try {
            lock(&self.budget).deposit(now);
        }
        self.attempts.fetch_add(1, Ordering::Relaxed);
        Some(admitted)
    }

    /// Asks the breaker for baton's own probe: a probe permit once the cool-down has passed.
    pub fn admit_probe(self: &Arc<Self>) -> Option<(Permit, Option<Transition>)> {
        let now = Instant::now();
        let admission = lock(&self.breaker).try_probe(now);
        self.permit(now, admission)
    }

    fn permit(self: &Arc<Self>, now: Instant, admission: Admission) -> Option<(Permit, Option<Transition>)> {
        match admission {
            Admission::Skipped => None,
            Admission::Allowed { probe, transition } => Some((
                Permit {
                    health: self.clone(),
                    admitted: now,
                    probe,
                    settled: false,
                },
                transition,
            )),
        }
    }

    /// When its open breaker's cool-down ends; `None` unless open.
    pub fn next_probe(&self) -> Option<Instant> {
        lock(&self.breaker).next_probe()
    }

    /// Probes judged so far: (succeeded, failed).
    pub fn probes(&self) -> (u64, u64) {
        (
            self.probes[0].load(Ordering::Relaxed),
            self.probes[1].load(Ordering::Relaxed),
        )
    }

    /// Spends one retry of its budget, if it allows one. A retry on a model
    /// whose breaker is not closed would only be skipped after its delay (the
    /// failure just opened it, or another probe is under way): it is refused,
    /// so the session hands over at once.
    pub fn allow_retry(&self) -> bool {
        self.state() == BreakerState::Closed && lock(&self.budget).withdraw(Instant::now())
    }

    /// The breaker's state now.
    pub fn state(&self) -> BreakerState {
        lock(&self.breaker).state(Instant::now())
    }

    /// Attempts the breaker let through.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Adds inter-token gaps seen by one attempt.
    pub fn record_gaps(&self, gaps: &[std::time::Duration]) {
        self.record_shared_gaps(gaps);
        self.outbox.push(&self.model, None, gaps);
    }

    /// Adds inter-token gaps another instance saw (not sent back).
    pub fn record_shared_gaps(&self, gaps: &[std::time::Duration]) {
        let mut sample = lock(&self.gaps);
        for gap in gaps {
            sample.push(*gap);
        }
    }

    /// The p99 of recent inter-token gaps, once at least `min_samples` were seen.
    pub fn gap_p99(&self, min_samples: u32) -> Option<std::time::Duration> {
        lock(&self.gaps).p99(min_samples)
    }

    /// The p99 and the longest of recent inter-token gaps, once at least `min_samples` were seen.
    pub fn gap_history(&self, min_samples: u32) -> Option<GapHistory> {
        lock(&self.gaps).history(min_samples)
    }

    /// How many recent inter-token gaps are held.
    pub fn gap_count(&self) -> usize {
        lock(&self.gaps).len()
    }

    /// Records an attempt's time to first token (a first-token timeout counts as its deadline).
    pub fn record_ttft(&self, ttft: std::time::Duration) {
        self.record_shared_ttft(ttft);
        self.outbox.push(&self.model, Some(ttft), &[]);
    }

    /// Records a time to first token another instance saw (not sent back).
    pub fn record_shared_ttft(&self, ttft: std::time::Duration) {
        lock(&self.ttft).record(Instant::now(), ttft);
    }

    /// The p95 of recent times to first token, once there are enough samples.
    pub fn ttft_p95(&self) -> Option<std::time::Duration> {
        lock(&self.ttft).p95(Instant::now())
    }

    /// The p95 of recent times to first token, once at least `min_samples` are known (hedging).
    pub fn ttft_p95_of(&self, min_samples: usize) -> Option<std::time::Duration> {
        lock(&self.ttft).p95_of(Instant::now(), min_samples)
    }

    /// How it continues a prefix: `configured`, unless it has rejected a prefill before.
    pub fn continuation(&self, configured: ContinuationMode) -> ContinuationMode {
        if self.no_prefill.load(Ordering::Relaxed) {
            ContinuationMode::Instruct
        } else {
            configured
        }
    }

    /// Remembers that it rejects prefill, for every later session.
    pub fn remember_no_prefill(&self) {
        self.no_prefill.store(true, Ordering::Relaxed);
    }

    /// Whether it has rejected a prefill.
    pub fn rejects_prefill(&self) -> bool {
        self.no_prefill.load(Ordering::Relaxed)
    }

    /// Remembers that it echoes the prefix when continuing in `mode`.
    pub fn remember_echo(&self, mode: ContinuationMode) {
        let mut echoes = lock(&self.echoes);
        if !echoes.contains(&mode) {
            echoes.push(mode);
        }
    }

    /// Whether it has been seen echoing in `mode`.
    pub fn seen_echoing(&self, mode: ContinuationMode) -> bool {
        lock(&self.echoes).contains(&mode)
    }

    /// Remembers the context window an error of its stated; a smaller statement wins.
    pub fn learn_window(&self, tokens: u32) {
        if tokens > 0 {
            let _ = self.window.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                (w == 0 || tokens < w).then_some(tokens)
            });
        }
    }

    /// The context window its errors stated, if any did.
    pub fn learned_window(&self) -> Option<u32> {
        match self.window.load(Ordering::Relaxed) {
            0 => None,
            w => Some(w),
        }
    }

    /// What a failure of one of its attempts teaches it, before the ladder
    /// decides (a learned window steers the handover): a first-token timeout
    /// is a first-token time, and a context-length error may state the window.
    pub fn learn_from(&self, failure: &FailureKind) {
        match failure {
            FailureKind::FirstTokenTimeout { after } => self.record_ttft(*after),
            FailureKind::ContextLength { message } => {
                if let Some(window) = crate::policy::fit::stated_window(message) {
                    self.learn_window(window);
                }
            }
            _ => {}
        }
    }
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

    #[test]
    fn each_model_has_its_own_health_and_the_oldest_is_forgotten() {
        let route = RouteHealth::default();
        let a = route.model("a");
        let b = route.model("b");
        a.remember_no_prefill();
        a.learn_window(8192);
        a.learn_window(16_384);
        assert!(a.rejects_prefill() && !b.rejects_prefill());
        assert_eq!((a.learned_window(), b.learned_window()), (Some(8192), None));
        assert!(Arc::ptr_eq(&a, &route.model("a")), "the same model is the same health");
        for i in 0..MAX_MODELS {
            route.model(&format!("m{i}"));
            // "a" stays in use; "b" is never asked for again.
            route.model("a");
        }
        let names: Vec<String> = route.models().iter().map(|m| m.name().to_string()).collect();
        assert_eq!(names.len(), MAX_MODELS);
        assert!(names.contains(&"a".to_string()), "recently used: kept");
        assert!(!names.contains(&"b".to_string()), "least recently used: forgotten");
        assert!(!route.model("b").rejects_prefill() && route.model("a").rejects_prefill());
    }

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
