//! The thin driver between [`Shared`] and a [`StateBackend`]: every answer a
//! cache stores is handed to the backend as it is stored, and this instance's
//! breakers and facts are looked at every [`POLL`] for changes to send. No
//! session waits on either: the look is a few uncontended locks per model,
//! the hand-off a queue push.

use std::sync::Arc;
use std::time::Duration;

use super::{Shared, StateBackend};

/// How often breakers and facts are looked at for changes.
pub const POLL: Duration = Duration::from_millis(20);

/// The running driver; dropping it stops it.
#[derive(Debug)]
pub struct Syncing {
    task: tokio::task::AbortHandle,
}

impl Drop for Syncing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts sending `shared`'s changes to `backend` (needs a tokio runtime).
pub fn start(shared: Arc<Shared>, backend: Arc<dyn StateBackend>) -> Syncing {
    for (ladder, cache) in shared.caches() {
        let ladder = ladder.to_string();
        let backend = backend.clone();
        // A cache keeps its first hook: a second start over the same caches sends nothing twice.
        let _ = cache.on_put(move |key, answer| backend.publish(Shared::cache_update(&ladder, key, answer)));
    }
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for update in shared.changes(false) {
                backend.publish(update);
            }
        }
    });
    Syncing {
        task: task.abort_handle(),
    }
}
