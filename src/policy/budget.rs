//! Retry budget per route: retries may add at most a fraction of recent
//! requests (plus a small floor), so an outage never becomes a retry storm.
//! A retry the budget refuses becomes a handover.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How many retries a route may spend.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetConfig {
    /// The window requests and retries are counted over.
    pub window: Duration,
    /// Retries allowed per first attempt in the window (0.1: at most 10 % extra).
    pub ratio: f64,
    /// Retries always allowed per window, so a quiet route can still retry.
    pub floor: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            window: Duration::from_secs(10),
            ratio: 0.1,
            floor: 10,
        }
    }
}

/// One route's retry budget.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    requests: VecDeque<Instant>,
    retries: VecDeque<Instant>,
}

impl RetryBudget {
    /// An unspent budget.
    pub fn new(config: BudgetConfig) -> Self {
        RetryBudget {
            config,
            requests: VecDeque::new(),
            retries: VecDeque::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        let window = self.config.window;
        for queue in [&mut self.requests, &mut self.retries] {
            while queue
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > window)
            {
                queue.pop_front();
            }
        }
    }

    /// Counts a first attempt (not a retry) at `now`.
    pub fn deposit(&mut self, now: Instant) {
        self.expire(now);
        self.requests.push_back(now);
    }

    /// Spends one retry at `now` if the budget allows it.
    pub fn withdraw(&mut self, now: Instant) -> bool {
        self.expire(now);
        let allowed = f64::from(self.config.floor) + self.config.ratio * self.requests.len() as f64;
        if (self.retries.len() as f64) < allowed {
            self.retries.push_back(now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_a_fraction_of_requests_plus_a_floor() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(BudgetConfig {
            window: Duration::from_secs(10),
            ratio: 0.1,
            floor: 2,
        });
        for _ in 0..100 {
            budget.deposit(t0);
        }
        let granted = (0..50).filter(|_| budget.withdraw(t0)).count();
        assert_eq!(granted, 12, "2 + 10 % of 100");
        // The window moves on: old requests and retries no longer count.
        let later = t0 + Duration::from_secs(11);
        assert!(budget.withdraw(later));
        assert!(budget.withdraw(later));
        assert!(!budget.withdraw(later));
    }
}
