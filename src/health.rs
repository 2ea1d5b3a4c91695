//! A route's shared health: its circuit breaker and retry budget, one per
//! route for every session that uses it, and the recent inter-token gaps its
//! adaptive stall deadline follows.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::continuation::ContinuationMode;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use crate::breaker::{Admission, Breaker, BreakerConfig, Transition};
use crate::budget::{BudgetConfig, RetryBudget};
use crate::deadline::GapSample;
use crate::failure::{FailureClass, FailureKind};
use crate::rules::TtftWindow;
use crate::watchdog::Deadlines;

/// Shared by every clone of a route.
#[derive(Debug)]
pub struct RouteHealth {
    breaker: Mutex<Breaker>,
    budget: Mutex<Budget>,
    /// Recent times to first token, for a ladder's latency ceiling.
    ttft: Mutex<TtftWindow>,
    /// Recent inter-token gaps, for an adaptive stall deadline.
    gaps: Mutex<GapSample>,
    /// A replay's recorded effective deadlines, one per attempt on this route in
    /// order; `None` for live traffic (deadlines are computed, not replayed).
    recorded: Option<Mutex<VecDeque<Option<Deadlines>>>>,
    /// The route rejected a prefill once: every later continuation on it is by instruction.
    no_prefill: AtomicBool,
    /// The (upstream model, mode) pairs an unambiguous echo was seen from: their short echoes are trimmed.
    echoes: Mutex<Vec<(String, ContinuationMode)>>,
}

/// Where retry decisions come from.
#[derive(Debug)]
enum Budget {
    /// Counted from live traffic.
    Live(RetryBudget),
    /// Replayed from a recording, in order; allowed once the recording has no more.
    Scripted(VecDeque<bool>),
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
    health: Arc<RouteHealth>,
    settled: bool,
}

impl Permit {
    /// Records how the attempt ended; returns the breaker change it caused.
    pub fn settle(mut self, failure: Option<&FailureKind>) -> Option<Transition> {
        self.settled = true;
        // baton's own exhaustion says nothing of the route, not even that it is
        // well: the attempt is given back as if never made.
        if failure.is_some_and(|f| f.class() == FailureClass::Local) {
            lock(&self.health.breaker).release();
            return None;
        }
        // Only failures that say something about the route's health count:
        // a refusal, a context-length miss or a prefill rejection does not.
        let failed = failure.is_some_and(|f| {
            matches!(f.class(), FailureClass::Technical | FailureClass::Quality)
                && !matches!(f, FailureKind::PrefillRejected { .. } | FailureKind::CircuitOpen)
        });
        lock(&self.health.breaker).record(Instant::now(), failed)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            lock(&self.health.breaker).release();
        }
    }
}

/// A poisoned lock only means another session panicked mid-update; the counters are still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RouteHealth {
    /// Health with these breaker and budget settings.
    pub fn new(breaker: BreakerConfig, budget: BudgetConfig) -> Self {
        RouteHealth {
            breaker: Mutex::new(Breaker::new(breaker)),
            budget: Mutex::new(Budget::Live(RetryBudget::new(budget))),
            ttft: Mutex::new(TtftWindow::default()),
            gaps: Mutex::new(GapSample::default()),
            recorded: None,
            no_prefill: AtomicBool::new(false),
            echoes: Mutex::new(Vec::new()),
        }
    }

    /// Health for a replay: the budget gives the recorded answers (`true`: the
    /// retry was allowed) in order, so budget decisions made under live traffic repeat.
    pub fn scripted(retries: impl IntoIterator<Item = bool>) -> Self {
        RouteHealth {
            breaker: Mutex::new(Breaker::new(BreakerConfig::default())),
            budget: Mutex::new(Budget::Scripted(retries.into_iter().collect())),
            ttft: Mutex::new(TtftWindow::default()),
            gaps: Mutex::new(GapSample::default()),
            recorded: None,
            no_prefill: AtomicBool::new(false),
            echoes: Mutex::new(Vec::new()),
        }
    }

    /// The same replay health, also giving each attempt on the route the effective
    /// deadlines its recording shows (`None`: recorded by a baton that did not
    /// record them, so they are computed as usual).
    pub fn with_recorded_deadlines(mut self, deadlines: impl IntoIterator<Item = Option<Deadlines>>) -> Self {
        self.recorded = Some(Mutex::new(deadlines.into_iter().collect()));
        self
    }

    /// Whether this health replays a recording (its deadlines are replayed, not learnt).
    pub fn replays(&self) -> bool {
        self.recorded.is_some()
    }

    /// The next attempt's recorded effective deadlines, when replaying a recording that has them.
    pub fn recorded_deadlines(&self) -> Option<Deadlines> {
        lock(self.recorded.as_ref()?).pop_front().flatten()
    }

    /// Adds inter-token gaps seen by one attempt.
    pub fn record_gaps(&self, gaps: &[std::time::Duration]) {
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
    pub fn gap_history(&self, min_samples: u32) -> Option<crate::deadline::GapHistory> {
        lock(&self.gaps).history(min_samples)
    }

    /// How many recent inter-token gaps are held.
    pub fn gap_count(&self) -> usize {
        lock(&self.gaps).len()
    }

    /// Asks the breaker for an attempt: a permit (and any state change), or `None` to skip the route.
    pub fn admit(self: &Arc<Self>, first_try: bool) -> Option<(Permit, Option<Transition>)> {
        let now = Instant::now();
        match lock(&self.breaker).try_acquire(now) {
            Admission::Skipped => None,
            Admission::Allowed(transition) => {
                if let (true, Budget::Live(budget)) = (first_try, &mut *lock(&self.budget)) {
                    budget.deposit(now);
                }
                let permit = Permit {
                    health: self.clone(),
                    settled: false,
                };
                Some((permit, transition))
            }
        }
    }

    /// Spends one retry from the budget, if it allows one.
    pub fn allow_retry(&self) -> bool {
        match &mut *lock(&self.budget) {
            Budget::Live(budget) => budget.withdraw(Instant::now()),
            Budget::Scripted(answers) => answers.pop_front().unwrap_or(true),
        }
    }

    /// Records an attempt's time to first token (a first-token timeout counts as its deadline).
    pub fn record_ttft(&self, ttft: std::time::Duration) {
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

    /// How the route continues a prefix: `configured`, unless it has rejected a prefill before.
    pub fn continuation(&self, configured: ContinuationMode) -> ContinuationMode {
        if self.no_prefill.load(Ordering::Relaxed) {
            ContinuationMode::Instruct
        } else {
            configured
        }
    }

    /// Remembers that the route rejects prefill, for every later session.
    pub fn remember_no_prefill(&self) {
        self.no_prefill.store(true, Ordering::Relaxed);
    }

    /// Remembers that `model` on this route echoes the prefix when continuing in `mode`.
    pub fn remember_echo(&self, model: &str, mode: ContinuationMode) {
        let mut echoes = lock(&self.echoes);
        if !echoes.iter().any(|(m, k)| m == model && *k == mode) {
            echoes.push((model.to_string(), mode));
        }
    }

    /// Whether `model` on this route has been seen echoing in `mode`.
    pub fn seen_echoing(&self, model: &str, mode: ContinuationMode) -> bool {
        lock(&self.echoes).iter().any(|(m, k)| m == model && *k == mode)
    }

    /// The breaker's state now.
    pub fn state(&self) -> crate::breaker::BreakerState {
        lock(&self.breaker).state(Instant::now())
    }
}
