//! Process-wide counts of what is alive right now: sessions and open upstream
//! responses, so a leak (a session or an upstream request that outlived its
//! client) shows in `/metrics` as a gauge that never returns to zero.
//!
//! The counts are static atomics moved by RAII guards, so the proxy (which
//! counts sessions) and the providers (which count upstream responses) need
//! not know about each other. They are per process: every proxy and provider
//! in it adds to the same two numbers.

use std::sync::atomic::{AtomicI64, Ordering};

static SESSIONS: AtomicI64 = AtomicI64::new(0);
static UPSTREAMS: AtomicI64 = AtomicI64::new(0);

/// Sessions alive in this process now.
pub fn sessions() -> i64 {
    SESSIONS.load(Ordering::Relaxed)
}

/// Upstream responses open in this process now (from the request being sent until its stream is dropped).
pub fn upstreams() -> i64 {
    UPSTREAMS.load(Ordering::Relaxed)
}

/// Counts one live thing for as long as it exists.
#[derive(Debug)]
#[must_use = "the count drops as soon as the guard does"]
pub struct LiveGuard {
    counter: &'static AtomicI64,
}

impl LiveGuard {
    /// Counts one session.
    pub fn session() -> Self {
        LiveGuard::count(&SESSIONS)
    }

    /// Counts one open upstream response.
    pub fn upstream() -> Self {
        LiveGuard::count(&UPSTREAMS)
    }

    fn count(counter: &'static AtomicI64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        LiveGuard { counter }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}
