//! A route's shared health: its circuit breaker and retry budget, one per
//! route for every session that uses it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use crate::breaker::{Admission, Breaker, BreakerConfig, Transition};
use crate::budget::{BudgetConfig, RetryBudget};
use crate::failure::{FailureClass, FailureKind};

/// Shared by every clone of a route.
#[derive(Debug)]
pub struct RouteHealth {
    breaker: Mutex<Breaker>,
    budget: Mutex<Budget>,
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
        }
    }

    /// Health for a replay: the budget gives the recorded answers (`true`: the
    /// retry was allowed) in order, so budget decisions made under live traffic repeat.
    pub fn scripted(retries: impl IntoIterator<Item = bool>) -> Self {
        RouteHealth {
            breaker: Mutex::new(Breaker::new(BreakerConfig::default())),
            budget: Mutex::new(Budget::Scripted(retries.into_iter().collect())),
        }
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

    /// The breaker's state now.
    pub fn state(&self) -> crate::breaker::BreakerState {
        lock(&self.breaker).state(Instant::now())
    }
}
