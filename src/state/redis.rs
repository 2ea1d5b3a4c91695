//! The Redis backend: updates go into a bounded queue ([`StateBackend::publish`]
//! never waits) that one background task writes in batches — each update's
//! latest value under its key (`SET`, with the cool-down or cache TTL as its
//! expiry) and the update itself on the deployment's channel (`PUBLISH`).
//! The same task applies what the channel brings from the other instances.
//!
//! On every (re)connection it first reads every key under the prefix (what
//! happened while it was away) and writes this instance's open breakers and
//! facts (what a restarted Redis lost). While Redis is slow, down or gone, the
//! instance works on its local state; a log line and `connected 0` say so,
//! and it retries with a capped backoff. Data it does not understand (another
//! version, another type, garbage) is ignored with a warning.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use super::update::{unix_ms, Envelope, Update};
use super::{Shared, StateBackend, Status};
use crate::config::Secret;

/// Updates that may wait for Redis; past this, new ones are dropped (counted).
pub const QUEUE: usize = 4096;
/// Updates written per round trip at most.
const BATCH: usize = 256;
/// How long any one Redis call may take before the connection is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle connection is checked this often (a dead server is noticed without traffic).
const PING_EVERY: Duration = Duration::from_secs(1);
/// Reconnection backoff, doubling between these.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// Keys read back on a (re)connection at most.
const MAX_LOAD: usize = 100_000;
/// Learned facts are kept in Redis this long after they were last sent.
const FACT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Where and under which prefix.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://…` (may hold a password: a secret).
    pub url: Secret,
    /// Prepended to every key and to the channel, so deployments can share one Redis.
    pub key_prefix: String,
}

/// Shared state in Redis.
#[derive(Debug)]
pub struct RedisBackend {
    queue: mpsc::Sender<(Instant, Update)>,
    counters: Arc<Counters>,
    task: tokio::task::AbortHandle,
}

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicBool,
    lag_ms: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
    ignored: AtomicU64,
    errors: AtomicU64,
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RedisBackend {
    /// Starts the background task for `shared` (needs a tokio runtime); an
    /// unusable URL is an error now, an unreachable server only a retry later.
    pub fn start(settings: RedisSettings, shared: Arc<Shared>) -> Result<Arc<RedisBackend>, String> {
        let client = redis::Client::open(settings.url.expose()).map_err(|e| {
            // The URL may hold a password: the error names the problem, not the URL.
            format!("not a Redis URL ({}: {:?})", e.category(), e.kind())
        })?;
        let (queue, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            client,
            prefix: settings.key_prefix,
            shared,
            counters: counters.clone(),
            rx,
        };
        let task = tokio::spawn(worker.run()).abort_handle();
        Ok(Arc::new(RedisBackend { queue, counters, task }))
    }
}

impl StateBackend for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn publish(&self, update: Update) {
        if self.queue.try_send((Instant::now(), update)).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn status(&self) -> Status {
        let c = &self.counters;
        Status {
            shared: true,
            connected: c.connected.load(Ordering::Relaxed),
            // Waiting in the queue: its size less the room left.
            pending: self.queue.max_capacity() - self.queue.capacity(),
            lag_ms: c.lag_ms.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum Lost {
    /// A call failed.
    Redis(redis::RedisError),
    /// A call took longer than [`CALL_TIMEOUT`].
    Timeout,
    /// The subscription ended (the server closed it).
    Closed,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A server's or socket's words; connection info (and its password) never reaches them.
            Lost::Redis(e) => write!(f, "{e}"),
            Lost::Timeout => write!(f, "no answer within {} s", CALL_TIMEOUT.as_secs()),
            Lost::Closed => write!(f, "the subscription was closed"),
        }
    }
}

/// Runs `call` under [`CALL_TIMEOUT`].
async fn bounded<T>(call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, Lost> {
    match timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Lost::Redis(e)),
        Err(_) => Err(Lost::Timeout),
    }
}

struct Worker {
    client: redis::Client,
    prefix: String,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    rx: mpsc::Receiver<(Instant, Update)>,
}

impl Worker {
    fn channel(&self) -> String {
        format!("{}updates", self.prefix)
    }

    async fn run(mut self) {
        let mut backoff = BACKOFF.0;
        let mut was_connected = false;
        loop {
            let lost = self.connected(&mut was_connected, &mut backoff).await;
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            if std::mem::replace(&mut was_connected, false) {
                tracing::warn!(error = %lost, "shared state: Redis lost; working on local state until it is back");
            } else {
                tracing::debug!(error = %lost, "shared state: Redis not reachable");
            }
            self.counters.connected.store(false, Ordering::Relaxed);
            self.shared.announce_backend("redis", false);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// One connection's life: connect, catch up both ways, then relay until something fails.
    async fn connected(&mut self, was_connected: &mut bool, backoff: &mut Duration) -> Lost {
        let mut conn = match bounded(self.client.get_multiplexed_async_connection()).await {
            Ok(c) => c,
            Err(lost) => return lost,
        };
        let mut pubsub = match bounded(self.client.get_async_pubsub()).await {
            Ok(p) => p,
            Err(lost) => return lost,
        };
        if let Err(lost) = bounded(pubsub.subscribe(self.channel())).await {
            return lost;
        }
        if let Err(lost) = self.load(&mut conn).await {
            return lost;
        }
        let everything: Vec<(Instant, Update)> = self
            .shared
            .changes(true)
            .into_iter()
            .map(|u| (Instant::now(), u))
            .collect();
        // Announced too: an instance that reconnected first has already read the store.
        if let Err(lost) = self.write(&mut conn, everything).await {
            return lost;
        }
        tracing::info!(prefix = %self.prefix, "shared state: connected to Redis");
        self.counters.connected.store(true, Ordering::Relaxed);
        self.shared.announce_backend("redis", true);
        *was_connected = true;
        *backoff = BACKOFF.0;
        let mut messages = pubsub.into_on_message();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(m) => self.receive(m.get_payload_bytes()),
                    None => return Lost::Closed,
                },
                first = self.rx.recv() => {
                    // The queue closes only with the backend, whose drop ends this task.
                    let Some(first) = first else { return Lost::Closed };
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match self.rx.try_recv() {
                            Ok(u) => batch.push(u),
                            Err(_) => break,
                        }
                    }
                    if let Err(lost) = self.write(&mut conn, batch).await {
                        return lost;
                    }
                }
                _ = ping.tick() => {
                    if let Err(lost) = bounded(redis::cmd("PING").query_async::<String>(&mut conn)).await {
                        return lost;
                    }
                    // Again now and then, for a dashboard that attached since.
                    self.shared.announce_backend("redis", true);
                }
            }
        }
    }

    /// Applies one message from another instance.
    fn receive(&self, payload: &[u8]) {
        match Envelope::parse(payload) {
            Ok(envelope) => match self.shared.apply(envelope) {
                Ok(()) => {
                    self.counters.received.fetch_add(1, Ordering::Relaxed);
                }
                Err(super::shared::Ignored::Own) => {}
                Err(why) => self.ignore(&format!("{why:?}")),
            },
            Err(why) => self.ignore(&why),
        }
    }

    fn ignore(&self, why: &str) {
        let n = self.counters.ignored.fetch_add(1, Ordering::Relaxed);
        // One line per bad entry would let a flood of garbage flood the log too.
        if n < 10 || n.is_power_of_two() {
            tracing::warn!(why, ignored = n + 1, "shared state: ignored an entry from Redis");
        }
    }

    /// Reads every key under the prefix and applies what it holds.
    async fn load(&self, conn: &mut MultiplexedConnection) -> Result<(), Lost> {
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut seen = 0usize;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = bounded(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(conn),
            )
            .await?;
            let keys: Vec<Vec<u8>> = keys.into_iter().filter(|k| !k.ends_with(b"updates")).collect();
            if !keys.is_empty() {
                let values: Vec<Option<Vec<u8>>> = bounded(redis::cmd("MGET").arg(&keys).query_async(conn)).await?;
                for value in values.into_iter().flatten() {
                    self.receive(&value);
                }
            }
            seen += keys.len();
            cursor = next;
            if cursor == 0 || seen >= MAX_LOAD {
                return Ok(());
            }
        }
    }

    /// Writes `batch`: each update's latest value, and the update on the channel.
    async fn write(&self, conn: &mut MultiplexedConnection, batch: Vec<(Instant, Update)>) -> Result<(), Lost> {
        if batch.is_empty() {
            return Ok(());
        }
        let oldest = batch.iter().map(|(t, _)| *t).min().unwrap_or_else(Instant::now);
        let mut pipe = redis::pipe();
        let channel = self.channel();
        let now = unix_ms();
        let from = self.shared.instance();
        for (_, update) in &batch {
            let envelope = Envelope::new(from, update.clone());
            let key = envelope.key(&self.prefix);
            let json = envelope.to_json();
            match update {
                Update::Breaker {
                    open_until_ms: Some(until),
                    ..
                } => {
                    let ttl = until.saturating_sub(now).max(1);
                    pipe.cmd("SET").arg(&key).arg(&json).arg("PX").arg(ttl).ignore();
                }
                Update::Breaker {
                    open_until_ms: None, ..
                } => {
                    pipe.cmd("DEL").arg(&key).ignore();
                }
                Update::Fact { .. } => {
                    pipe.cmd("SET")
                        .arg(&key)
                        .arg(&json)
                        .arg("PX")
                        .arg(FACT_TTL.as_millis() as u64)
                        .ignore();
                }
                // Samples are news, not state: only announced.
                Update::Samples { .. } => {}
                Update::Cache { ladder, stored_ms, .. } => {
                    let ttl = self.shared.cache_ttl(ladder).unwrap_or_default().as_millis() as u64;
                    let left = stored_ms.saturating_add(ttl).saturating_sub(now);
                    if left == 0 {
                        continue;
                    }
                    pipe.cmd("SET").arg(&key).arg(&json).arg("PX").arg(left).ignore();
                }
            }
            pipe.cmd("PUBLISH").arg(&channel).arg(&json).ignore();
        }
        bounded(pipe.query_async::<()>(conn)).await?;
        self.counters.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.counters
            .lag_ms
            .store(oldest.elapsed().as_millis() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// `s` with Redis glob characters escaped, for a `SCAN MATCH` of its keys.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_only_themselves() {
        assert_eq!(glob_escape("baton:"), "baton:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
