//! State shared by several baton instances: breaker openings and closings,
//! learned facts per (route, model) and the response cache.
//!
//! Every read the splicer makes stays local: [`Shared`] applies what other
//! instances report to this instance's own health and caches, and collects
//! what changed here for a [`StateBackend`] to send. The default backend,
//! [`Memory`], sends nothing (one instance, today's behaviour); the Redis one
//! (`redis` feature, [`redis`](self::redis)) writes in the background and
//! never makes a session wait.
//!
//! What is shared, and what is not:
//! * breaker openings (with the end of their cool-down) and closings: an
//!   instance that opens a breaker tells the others at once; they hold it open
//!   half a cool-down longer than its opener, so the opener's probe serves the
//!   fleet (another instance probes only if the opener went away);
//! * learned facts: rejects prefill, a stated context window, echoes in a mode;
//! * first-token times and inter-token gaps (at most
//!   [`OUTBOX_SAMPLES`](crate::policy::health::OUTBOX_SAMPLES) of each per
//!   model per send, merged into each instance's own bounded windows), so
//!   adaptive deadlines, latency ceilings and hedging learn from the fleet;
//! * the response cache: an answer stored by one instance answers on all.
//!
//! Retry budgets stay per instance: a budget bounds the extra load this
//! instance's retries put on an upstream, which its own deposits measure.

#[cfg(feature = "redis")]
pub mod redis;
pub mod shared;
pub mod sync;
pub mod update;

use std::fmt::Debug;

pub use shared::Shared;
pub use update::{Envelope, Fact, Update};

/// Where shared state goes: nowhere ([`Memory`]) or a store other instances read.
pub trait StateBackend: Send + Sync + Debug {
    /// `memory` or `redis`.
    fn kind(&self) -> &'static str;
    /// Queues `update` for the others; never blocks (a full queue drops it, counted).
    fn publish(&self, update: Update);
    /// How it is doing.
    fn status(&self) -> Status;
}

/// A backend's state, for `/metrics`, logs and the dashboard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// The state is shared with other instances (a store is configured).
    pub shared: bool,
    /// The store answers now.
    pub connected: bool,
    /// Updates waiting to be written.
    pub pending: usize,
    /// How long the updates of the last batch written had waited, in ms.
    pub lag_ms: u64,
    /// Updates written to the store.
    pub sent: u64,
    /// Updates dropped because the queue was full.
    pub dropped: u64,
    /// Updates received from other instances and applied.
    pub received: u64,
    /// Entries or messages from the store that were not understood, ignored.
    pub ignored: u64,
    /// Store errors (failed connections and commands).
    pub errors: u64,
}

/// One instance alone: nothing is sent, nothing comes in.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory;

impl StateBackend for Memory {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn publish(&self, _update: Update) {}

    fn status(&self) -> Status {
        Status {
            connected: true,
            ..Status::default()
        }
    }
}
