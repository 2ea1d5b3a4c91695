//! The cache rung: an exact-match response cache, in memory, bounded in
//! entries, bytes and age.
//!
//! The key is the request in a normal form: every message (role, content with
//! surrounding whitespace trimmed, other fields with their keys sorted) and
//! every sampling parameter, minus the fields that only shape the transport
//! (`stream`, `stream_options`, `user`, `metadata`, `store`), plus the model
//! the caller asked for. Only complete text answers are stored, as the deltas
//! the client received, so a cached answer streams with the chunking a live
//! one had. A ladder uses the cache as its first rung, as its last resort when
//! every route failed, or both (`cache = "first" | "last" | "both"`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::request::ChatRequest;

/// Parameters that change how an answer travels, not what it says.
const TRANSPORT_PARAMS: [&str; 5] = ["stream", "stream_options", "user", "metadata", "store"];

/// Where a ladder consults its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheUse {
    /// Before any route: a hit answers at once.
    First,
    /// After every route failed.
    LastResort,
    /// Both.
    Both,
}

impl CacheUse {
    /// Whether a hit answers before any route is tried.
    pub fn first(self) -> bool {
        matches!(self, CacheUse::First | CacheUse::Both)
    }

    /// Whether the cache answers when every route failed.
    pub fn last_resort(self) -> bool {
        matches!(self, CacheUse::LastResort | CacheUse::Both)
    }
}

/// A ladder's cache rung: where it is used, and the store (shared by the ladder's sessions).
#[derive(Clone, Debug)]
pub struct CacheRung {
    /// First rung, last resort, or both.
    pub uses: CacheUse,
    /// The answers.
    pub store: Arc<ResponseCache>,
}

/// The route name a cached answer is written under, in events and the route chain.
pub const CACHE_ROUTE: &str = "cache";

/// The model name a cached answer's chunks carry.
pub const CACHE_MODEL: &str = "baton/cache";

/// The cache's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most answers kept.
    pub max_entries: usize,
    /// Most bytes kept (keys and answers).
    pub max_bytes: usize,
    /// How long an answer stays usable.
    pub ttl: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_entries: 1000,
            max_bytes: 32 * 1024 * 1024,
            ttl: Duration::from_secs(300),
        }
    }
}

/// One cached answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedAnswer {
    /// The text deltas as the client received them.
    pub deltas: Vec<String>,
    /// The finish reason the answer ended with.
    pub finish_reason: String,
}

impl CachedAnswer {
    /// The whole text.
    pub fn text(&self) -> String {
        self.deltas.concat()
    }

    /// What a hit sends a client that already has the answer's first `sent`
    /// bytes: the stored deltas past them, keeping their live chunking.
    pub fn deltas_after(&self, sent: usize) -> Vec<String> {
        let mut skip = sent;
        let mut out = Vec::new();
        for delta in &self.deltas {
            if skip >= delta.len() {
                skip -= delta.len();
                continue;
            }
            out.push(delta.get(skip..).unwrap_or_default().to_string());
            skip = 0;
        }
        out
    }

    /// The answer a session's cache held, seen from the session: what its
    /// client had before the hit (`before`), then the deltas the hit sent
    /// (`served`, from [`CachedAnswer::deltas_after`]). The same text, so a
    /// re-drive's cache serves the same deltas again.
    pub fn as_served(before: String, mut served: Vec<String>, finish_reason: String) -> Self {
        if !before.is_empty() {
            served.insert(0, before);
        }
        CachedAnswer {
            deltas: served,
            finish_reason,
        }
    }

    fn bytes(&self) -> usize {
        self.deltas.iter().map(String::len).sum::<usize>() + self.finish_reason.len()
    }
}

/// A hit: the answer and how old it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The answer.
    pub answer: Arc<CachedAnswer>,
    /// Time since it was stored.
    pub age: Duration,
}

/// An exact-match response cache, shared by every session of a ladder.
#[derive(Debug)]
pub struct ResponseCache {
    limits: CacheLimits,
    inner: Mutex<Store>,
    /// Told of every answer a session stores (the shared state's feed).
    on_put: std::sync::OnceLock<PutHook>,
}

/// What a [`PutHook`] calls with each answer a session stores: its key and the answer.
pub type OnPut = dyn Fn(&str, &CachedAnswer) + Send + Sync;

/// A function told of each answer a session stores.
pub struct PutHook(Box<OnPut>);

impl std::fmt::Debug for PutHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PutHook")
    }
}

#[derive(Debug, Default)]
struct Store {
    entries: HashMap<String, (Instant, Arc<CachedAnswer>)>,
    /// Keys oldest first; evicted from the front.
    order: VecDeque<String>,
    bytes: usize,
}

impl Store {
    fn remove(&mut self, key: &str) {
        if let Some((_, answer)) = self.entries.remove(key) {
            self.bytes = self.bytes.saturating_sub(key.len() + answer.bytes());
            self.order.retain(|k| k != key);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(key) = self.order.pop_front() {
            if let Some((_, answer)) = self.entries.remove(&key) {
                self.bytes = self.bytes.saturating_sub(key.len() + answer.bytes());
            }
        }
    }
}

impl ResponseCache {
    /// An empty cache with `limits`.
    pub fn new(limits: CacheLimits) -> Self {
        ResponseCache {
            limits,
            inner: Mutex::new(Store::default()),
            on_put: std::sync::OnceLock::new(),
        }
    }

    /// How long an answer stays fresh.
    pub fn ttl(&self) -> Duration {
        self.limits.ttl
    }

    /// Tells `hook` of every answer [`Self::put`] stores from now on (once: a
    /// second hook is refused and returned).
    pub fn on_put(&self, hook: impl Fn(&str, &CachedAnswer) + Send + Sync + 'static) -> Result<(), PutHook> {
        self.on_put.set(PutHook(Box::new(hook)))
    }

    /// The cache key of `request`.
    pub fn key(request: &ChatRequest) -> String {
        let messages: Vec<Value> = request
            .messages
            .iter()
            .map(|m| {
                let mut fields = Map::new();
                fields.insert("content".into(), Value::String(m.content.trim().to_string()));
                fields.insert("extra".into(), sorted(&Value::Object(m.extra.clone())));
                // Two questions with the same text about different images are different questions.
                if let Some(parts) = &m.parts {
                    fields.insert("parts".into(), sorted(&Value::Array(parts.clone())));
                }
                fields.insert("role".into(), serde_json::to_value(m.role).unwrap_or(Value::Null));
                Value::Object(fields)
            })
            .collect();
        let params: Map<String, Value> = request
            .params
            .iter()
            .filter(|(k, _)| !TRANSPORT_PARAMS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut key = Map::new();
        key.insert("messages".into(), Value::Array(messages));
        key.insert("model".into(), request.model.clone().map_or(Value::Null, Value::String));
        key.insert("params".into(), sorted(&Value::Object(params)));
        Value::Object(key).to_string()
    }

    /// The answer stored for `key`, if it is still fresh.
    pub fn get(&self, key: &str) -> Option<Hit> {
        let now = Instant::now();
        let mut store = self.lock();
        let (stored, answer) = store.entries.get(key)?;
        let age = now.saturating_duration_since(*stored);
        if age > self.limits.ttl {
            store.remove(key);
            return None;
        }
        Some(Hit {
            answer: answer.clone(),
            age,
        })
    }

    /// Stores `answer` under `key`, evicting the oldest answers past the bounds,
    /// and tells the [`Self::on_put`] hook. An answer bigger than the whole
    /// byte bound is not stored.
    pub fn put(&self, key: String, answer: CachedAnswer) {
        if let Some(hook) = self.on_put.get() {
            (hook.0)(&key, &answer);
        }
        self.insert(key, answer, Duration::ZERO);
    }

    /// Stores an answer another instance stored `age` ago (the hook is not told:
    /// it came from the shared state). One already stale is not stored.
    pub fn put_shared(&self, key: String, answer: CachedAnswer, age: Duration) {
        if age < self.limits.ttl {
            self.insert(key, answer, age);
        }
    }

    fn insert(&self, key: String, answer: CachedAnswer, age: Duration) {
        let size = key.len() + answer.bytes();
        if size > self.limits.max_bytes || self.limits.max_entries == 0 {
            return;
        }
        let now = Instant::now();
        let stored = now.checked_sub(age).unwrap_or(now);
        let mut store = self.lock();
        store.remove(&key);
        while store.entries.len() >= self.limits.max_entries || store.bytes + size > self.limits.max_bytes {
            if store.order.is_empty() {
                break;
            }
            store.evict_oldest();
        }
        store.bytes += size;
        store.order.push_back(key.clone());
        store.entries.insert(key, (stored, Arc::new(answer)));
    }

    /// Answers stored now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // A poisoned lock only means a session panicked mid-update; the store is still consistent enough to use.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `value` with every object's keys in order, so equal requests give equal keys.
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&map[k]))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Message, Role};

    fn request(content: &str, params: Value) -> ChatRequest {
        let mut r = ChatRequest::new(vec![
            Message::new(Role::System, "be brief"),
            Message::new(Role::User, content),
        ]);
        if let Value::Object(p) = params {
            r.params = p;
        }
        r
    }

    fn answer(text: &str) -> CachedAnswer {
        CachedAnswer {
            deltas: text.split_inclusive(' ').map(str::to_string).collect(),
            finish_reason: "stop".into(),
        }
    }

    #[test]
    fn a_hit_serves_the_rest_and_a_session_view_of_it_serves_the_same_again() {
        let stored = answer("one two three");
        assert_eq!(stored.deltas_after(0), stored.deltas);
        assert_eq!(stored.deltas_after(6), ["o ", "three"], "mid-delta: the rest of it");
        assert_eq!(stored.deltas_after(8), ["three"]);
        assert!(stored.deltas_after(13).is_empty());
        let served = stored.deltas_after(6);
        let seen = CachedAnswer::as_served("one tw".into(), served.clone(), "stop".into());
        assert_eq!(seen.text(), stored.text());
        assert_eq!(seen.deltas_after(6), served, "a re-drive's client gets the same deltas");
        assert_eq!(
            CachedAnswer::as_served(String::new(), stored.deltas.clone(), "stop".into()),
            stored
        );
    }

    #[test]
    fn the_key_ignores_transport_fields_key_order_and_surrounding_whitespace() {
        let a = request(
            "hello",
            serde_json::json!({"temperature": 0, "top_p": 1, "stream": true}),
        );
        let b = request(
            " hello\n",
            serde_json::json!({"top_p": 1, "temperature": 0, "user": "x"}),
        );
        assert_eq!(ResponseCache::key(&a), ResponseCache::key(&b));
        let c = request("hello", serde_json::json!({"temperature": 1, "top_p": 1}));
        assert_ne!(ResponseCache::key(&a), ResponseCache::key(&c));
        let d = request("hello!", serde_json::json!({"temperature": 0, "top_p": 1}));
        assert_ne!(ResponseCache::key(&a), ResponseCache::key(&d));
    }

    #[test]
    fn the_same_words_about_different_images_are_different_keys() {
        let about = |url: &str| {
            let parts = serde_json::json!([{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": url}}]);
            let mut r = request("hello", serde_json::json!({}));
            r.messages = vec![Message::with_content(Role::User, parts, Map::new()).unwrap_or_else(|e| panic!("{e}"))];
            ResponseCache::key(&r)
        };
        assert_ne!(about("https://x/cat.png"), about("https://x/dog.png"));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_after_the_ttl() {
        let cache = ResponseCache::new(CacheLimits {
            ttl: Duration::from_secs(10),
            ..CacheLimits::default()
        });
        cache.put("k".into(), answer("one two"));
        tokio::time::advance(Duration::from_secs(5)).await;
        let hit = cache.get("k").map(|h| (h.answer.text(), h.age));
        assert_eq!(hit, Some(("one two".to_string(), Duration::from_secs(5))));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(cache.get("k"), None);
        assert!(cache.is_empty(), "an expired answer is dropped when found");
    }

    #[test]
    fn the_oldest_answers_go_first_past_the_entry_and_byte_bounds() {
        let cache = ResponseCache::new(CacheLimits {
            max_entries: 2,
            max_bytes: 40,
            ttl: Duration::from_secs(60),
        });
        cache.put("a".into(), answer("0123456789"));
        cache.put("b".into(), answer("0123456789"));
        cache.put("c".into(), answer("0123456789"));
        assert!(cache.get("a").is_none() && cache.get("b").is_some() && cache.get("c").is_some());
        // 1 + 30 + 4 bytes: evicts both older answers to fit.
        cache.put("d".into(), answer("012345678901234567890123456789"));
        assert_eq!(cache.len(), 1);
        assert!(cache.get("d").is_some());
        // Bigger than the whole bound: not stored, nothing evicted.
        cache.put("e".into(), answer(&"x".repeat(100)));
        assert!(cache.get("e").is_none() && cache.get("d").is_some());
    }
}
