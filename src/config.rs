//! The proxy's config file (TOML): server settings, routes and ladders.
//!
//! Every error names the file, the key and what is wrong; unknown keys are
//! errors. API keys are read from the environment variables the config names,
//! at load time, and never printed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::continuation::{ContinuationMode, DEFAULT_INSTRUCTION};
use crate::oracle::fault::{FaultPlan, FaultScript};
use crate::oracle::provider::MockProvider;
use crate::oracle::Style;
use crate::policy::breaker::{BreakerConfig, ProbeMode};
use crate::policy::budget::BudgetConfig;
use crate::policy::deadline::{Adaptive, AdaptiveStall, Deadlines, GAP_SAMPLES};
use crate::policy::health::RouteHealth;
use crate::policy::hedge::{self, HedgePolicy};
use crate::policy::ladder::{Ladder, RetryPolicy, Route};
use crate::policy::loopguard::{self, LoopConfig};
use crate::policy::overlap::OverlapMode;
use crate::provider::anthropic::AnthropicProvider;
use crate::provider::openai::OpenAiProvider;
use crate::provider::Provider;
use crate::redact::Redactor;
use crate::rungs::cache::{CacheLimits, CacheRung, CacheUse, ResponseCache};
use crate::rungs::safe_reply::{self, SafeReply};

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub use crate::policy::ladder::PASS_THROUGH_MODEL;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[server]`.
    #[serde(default)]
    pub server: ServerSection,
    /// `[[route]]`.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteSection>,
    /// `[[ladder]]`.
    #[serde(default, rename = "ladder")]
    pub ladders: Vec<LadderSection>,
    /// `[state]`.
    #[serde(default)]
    pub state: StateSection,
}

/// `[state]`: where instances share health, learned facts and the cache.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// `redis://host:port/db` (not with `redis_url_env`).
    pub redis_url: Option<String>,
    /// Environment variable holding the Redis URL (for one with a password).
    pub redis_url_env: Option<String>,
    /// Prepended to every key and to the channel; default `baton:`.
    pub key_prefix: Option<String>,
}

/// Where state is shared, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateConfig {
    /// The Redis URL, if state is shared (never printed: it may hold a password).
    pub redis_url: Option<Secret>,
    /// The key and channel prefix.
    pub key_prefix: String,
}

/// The prefix keys get when `[state]` names none.
pub const DEFAULT_KEY_PREFIX: &str = "baton:";

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to bind; default `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Environment variable holding the bearer key clients must send.
    pub api_key_env: Option<String>,
    /// Environment variable holding the bearer key `/events` and `/metrics` require (client keys do not open them).
    pub operator_key_env: Option<String>,
    /// Where session recordings go.
    pub record_dir: Option<PathBuf>,
    /// Largest request body accepted (bytes); default 4 MiB.
    pub max_body_bytes: Option<usize>,
    /// On shutdown, how long streams in flight may run on (ms); default 10000.
    pub shutdown_grace_ms: Option<u64>,
    /// A request's head and body must arrive within this long of its first byte (ms); default 10000.
    pub header_read_timeout_ms: Option<u64>,
    /// An idle keep-alive connection is closed after this long (ms); default 60000.
    pub keep_alive_timeout_ms: Option<u64>,
    /// A streamed answer whose client took no chunk for this long ends with an error event (ms); default 30000.
    pub slow_client_timeout_ms: Option<u64>,
    /// A connection whose client accepts no byte for this long is closed (ms); default 60000.
    pub write_stall_timeout_ms: Option<u64>,
    /// Sessions served at once; past it a request gets 503 with `Retry-After`; default 10000.
    pub max_sessions: Option<usize>,
    /// Client connections open at once; past it idle ones are closed and a new one gets 503;
    /// default half the descriptor limit, at most 4096.
    pub max_connections: Option<usize>,
    /// The listening socket's backlog of connections not yet accepted; default 1024.
    pub listen_backlog: Option<u32>,
    /// The chat-completions field reasoning goes out in, for every ladder that names none; default `as_upstream`.
    pub reasoning_field: Option<crate::policy::reasoning::OutgoingField>,
}

/// Connection and session limits of the proxy (`[server]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// A request's head (and then its body) must arrive within this long of its
    /// first byte, or of the connection's start for its first request.
    pub header_read_timeout: Duration,
    /// A keep-alive connection idle this long after its last response is closed.
    pub keep_alive_timeout: Duration,
    /// A streamed answer whose client has not taken the next chunk for this long
    /// ends with a `slow_client` error event and its upstream is cancelled.
    pub slow_client_timeout: Duration,
    /// A connection whose client accepts no byte of what is sent for this long
    /// is closed, whatever it was sending (the memory it pinned is freed).
    pub write_stall_timeout: Duration,
    /// Sessions served at once.
    pub max_sessions: usize,
    /// Client connections open at once: accepting never runs the process out of descriptors.
    pub max_connections: usize,
    /// Connections the kernel queues before baton accepts them.
    pub listen_backlog: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            slow_client_timeout: Duration::from_secs(30),
            write_stall_timeout: Duration::from_secs(60),
            max_sessions: 10_000,
            max_connections: default_max_connections(),
            listen_backlog: 1024,
        }
    }
}

/// Half the process's descriptor limit (the other half is for upstreams,
/// recordings and the listener), at most 4096; 4096 where the limit is unknown.
fn default_max_connections() -> usize {
    descriptor_limit().map_or(4096, |n| (n / 2).clamp(1, 4096))
}

/// The soft `RLIMIT_NOFILE`, as Linux shows it in `/proc/self/limits`.
fn descriptor_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The provider kinds a route can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible chat completions over SSE.
    Openai,
    /// Anthropic Messages over SSE.
    Anthropic,
    /// The in-process mock oracle.
    Mock,
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Its name; ladders refer to it.
    pub name: String,
    /// Wire format.
    pub provider: ProviderKind,
    /// The upstream's base URL, up to `/v1` (openai and anthropic).
    pub base_url: Option<String>,
    /// The upstream model, or `{model}` to pass the client's through.
    pub model: String,
    /// Environment variable holding the upstream API key.
    pub api_key_env: Option<String>,
    /// `prefill` (default) or `instruct`.
    pub continuation: Option<ContinuationMode>,
    /// When a repeat at the seam is trimmed: `auto` (on evidence, default), `off` or `always`.
    pub overlap: Option<OverlapMode>,
    /// Send `continue_final_message`/`add_generation_prompt` (vLLM, SGLang).
    #[serde(default)]
    pub continue_final_message: bool,
    /// openai only: a `<think>…</think>` block at the start of the content is reasoning (default false).
    pub think_tags: Option<bool>,
    /// Time-to-first-token deadline (ms).
    pub ttft_ms: Option<u64>,
    /// Inter-token stall deadline (ms).
    pub stall_ms: Option<u64>,
    /// Whole-attempt deadline (ms).
    pub total_ms: Option<u64>,
    /// The reasoning budget: a stream that reasons must give its first answer token (text or
    /// tool call) this long after the request, else it hands over (ms; default: no budget).
    pub reasoning_budget_ms: Option<u64>,
    /// Let the stall deadline follow the route's recent inter-token gaps and the
    /// stream's own cadence (`stall_ms` becomes its ceiling); default true, `false`: fixed `stall_ms`.
    pub stall_adaptive: Option<bool>,
    /// Adaptive stall: the lowest it goes (ms, default 1000, or `stall_ms` if lower).
    pub stall_floor_ms: Option<u64>,
    /// Adaptive stall: the multiple of the p99 (or the stream's largest) gap (default 8).
    pub stall_k: Option<f64>,
    /// Adaptive stall: gaps the route must have seen before its history counts (default 100).
    pub stall_min_samples: Option<u32>,
    /// Adaptive stall: gaps an attempt's own stream must show before its cadence counts (default 12; 0: never).
    pub stall_own_gaps: Option<u32>,
    /// Time-to-first-token allowance per 1000 prompt tokens, on top of `ttft_ms` (ms, default 0: fixed).
    pub ttft_per_1k_prompt_ms: Option<u64>,
    /// Context window (tokens).
    pub context_tokens: Option<u32>,
    /// Request fields never sent to this route (ones its upstream refuses).
    #[serde(default)]
    pub drop_params: Vec<String>,
    /// Open the circuit breaker after this many failures in a row (default 5).
    pub breaker_consecutive_failures: Option<u32>,
    /// …or when more than this fraction of the window's requests failed (default 0.5).
    pub breaker_failure_rate: Option<f64>,
    /// …once the window holds at least this many requests (default 20).
    pub breaker_min_requests: Option<u32>,
    /// The breaker's sliding window (ms, default 60000).
    pub breaker_window_ms: Option<u64>,
    /// The shortest cool-down before a probe of an open breaker: fast
    /// failures are probed this often (ms, default 1000; it grows with what
    /// a failure costs, see `breaker_max_cooldown_ms`).
    pub breaker_cooldown_ms: Option<u64>,
    /// The longest cool-down, for slow failures probed again and again (ms, default 300000).
    pub breaker_max_cooldown_ms: Option<u64>,
    /// Who probes an open breaker: `passive` (the next user request, default)
    /// or `active` (baton sends a tiny request of its own; users skip the route meanwhile).
    pub probe: Option<ProbeMode>,
    /// Retries allowed per first attempt over the last 10 s (default 0.1).
    pub retry_budget_ratio: Option<f64>,
    /// Retries always allowed per 10 s (default 10).
    pub retry_budget_floor: Option<u32>,
    /// Price in dollars per 1k tokens, for a ladder's `max_cost_per_request`.
    pub price_per_1k: Option<f64>,
    /// Mock only: a fault script (`stall@5`, `503x1` …).
    pub fault: Option<String>,
    /// Mock only: words the oracle repeats when continuing.
    pub repeat_words: Option<usize>,
}

/// `[[ladder]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LadderSection {
    /// Clients ask for this model name.
    pub name: String,
    /// Optional glob: requests for any matching model use this ladder.
    #[serde(rename = "match")]
    pub pattern: Option<String>,
    /// Route names, best first.
    pub routes: Vec<String>,
    /// Same-route retries before the first token (default 2).
    pub max_retries: Option<u32>,
    /// Longest `Retry-After` waited for (ms, default 5000).
    pub retry_after_max_ms: Option<u64>,
    /// The `instruct` continuation message.
    pub instruction: Option<String>,
    /// Interactive ladders: skip a route whose recent p95 time to first token is above this (ms).
    pub latency_ceiling_ms: Option<u64>,
    /// Skip a route whose estimated cost for the request (prompt + `max_tokens`, at its `price_per_1k`) is above this (dollars).
    pub max_cost_per_request: Option<f64>,
    /// The response cache: `first` (before any route), `last` (when every route failed) or `both`.
    pub cache: Option<String>,
    /// How long a cached answer is used (ms, default 300000).
    pub cache_ttl_ms: Option<u64>,
    /// Most cached answers (default 1000).
    pub cache_max_entries: Option<usize>,
    /// Most bytes of cached answers (default 32 MiB).
    pub cache_max_bytes: Option<usize>,
    /// The degraded answer when nothing else can answer.
    pub safe_reply: Option<String>,
    /// What closes a partly sent answer when nothing can finish it (needs `safe_reply`).
    pub safe_reply_note: Option<String>,
    /// Stop and hand over an answer that repeats itself (default true).
    pub loop_guard: Option<bool>,
    /// Copies of the repeated unit, at least, for a loop (default 6).
    pub loop_min_repeats: Option<u32>,
    /// Bytes a loop spans, at least (default 300).
    pub loop_min_span_bytes: Option<u32>,
    /// What the client gets where its looped text was cut (default `" […] "`).
    pub loop_marker: Option<String>,
    /// What the client's reasoning channel gets where a handover cut the reasoning off.
    pub reasoning_marker: Option<String>,
    /// Forward the reasoning of a fallback that starts after the answer text began (default false).
    pub forward_late_reasoning: Option<bool>,
    /// The chat-completions field its reasoning goes out in: `as_upstream`, `reasoning_content` or `reasoning` (default: the server's).
    pub reasoning_field: Option<crate::policy::reasoning::OutgoingField>,
    /// Start the next route in parallel when a first token is late (default false).
    pub hedge: Option<bool>,
    /// Hedge no earlier than this (ms), and after this while the route's p95 is unknown (default: not until known).
    pub hedge_after_ms: Option<u64>,
    /// Recent first-token times needed before a route's p95 is used (default 5).
    pub hedge_min_samples: Option<usize>,
}

/// A config that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message (with line, column and key).
        message: String,
    },
    /// A key has a value baton cannot use.
    #[error("{file}: `{key}`: {problem}")]
    Invalid {
        /// The file.
        file: String,
        /// The key, as a path (`route[1].base_url`).
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// A ladder ready to serve.
#[derive(Debug)]
pub struct ResolvedLadder {
    /// The model name clients ask for.
    pub name: String,
    /// The glob that also selects it.
    pub pattern: Option<String>,
    /// The ladder.
    pub ladder: Ladder,
    /// The chat-completions field its reasoning goes out in (a wire matter: the engine keeps the upstream's).
    pub reasoning_field: crate::policy::reasoning::OutgoingField,
}

/// The whole config, validated, with secrets read.
#[derive(Debug)]
pub struct Config {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// The bearer key clients must send, if any (never printed).
    pub api_key: Option<Secret>,
    /// The bearer key the operator endpoints require, if any (never printed).
    pub operator_key: Option<Secret>,
    /// Where recordings go.
    pub record_dir: Option<PathBuf>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// How long streams may run on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Connection and session limits.
    pub limits: ServerLimits,
    /// The ladders, in file order.
    pub ladders: Vec<ResolvedLadder>,
    /// `[state]`: shared with other instances, or not.
    pub state: StateConfig,
}

/// A secret string that never shows in `Debug` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value` (for keys that come from somewhere else than the config).
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Config {
    /// Reads, parses and validates `path`, reading secrets from the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::parse(&file, &text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates `text`; `env` looks up environment variables.
    pub fn parse(file: &str, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let raw: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: String, problem: String| ConfigError::Invalid {
            file: file.to_string(),
            key,
            problem,
        };
        let secret = |key: String, var: &str| {
            env(var)
                .filter(|v| !v.is_empty())
                .map(Secret)
                .ok_or_else(|| invalid(key, format!("environment variable {var} is not set or empty")))
        };

        let listen_text = raw.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "server.listen".into(),
                format!("{listen_text:?} is not an address like 127.0.0.1:8080"),
            )
        })?;
        let api_key = match &raw.server.api_key_env {
            Some(var) => Some(secret("server.api_key_env".into(), var)?),
            None => None,
        };
        let operator_key = match &raw.server.operator_key_env {
            Some(var) => Some(secret("server.operator_key_env".into(), var)?),
            None => None,
        };
        if operator_key.is_some() && operator_key == api_key {
            return Err(invalid(
                "server.operator_key_env".into(),
                "the operator key must differ from the client key (a client could read every conversation)".into(),
            ));
        }
        let max_body_bytes = raw.server.max_body_bytes.unwrap_or(4 * 1024 * 1024);
        if max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes".into(), "must be above 0".into()));
        }
        let limits = server_limits(&raw.server).map_err(|(k, problem)| invalid(k, problem))?;

        // Every secret the config reads, so each route also scrubs the others' keys
        // (an upstream's error text might hold any of them).
        let route_keys: Vec<String> = raw
            .routes
            .iter()
            .filter_map(|r| r.api_key_env.as_deref().and_then(env))
            .collect();
        let redactor = Redactor::new(
            api_key
                .iter()
                .map(Secret::expose)
                .chain(route_keys.iter().map(String::as_str)),
        );

        let client = OpenAiProvider::default_client();
        let mut routes: Vec<Route> = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            if r.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty".into()));
            }
            if [crate::rungs::cache::CACHE_ROUTE, safe_reply::SAFE_REPLY_ROUTE].contains(&r.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is reserved for baton's own rung", r.name),
                ));
            }
            if routes.iter().any(|known| *known.name == *r.name) {
                return Err(invalid(key("name"), format!("route {:?} is defined twice", r.name)));
            }
            if r.model.trim().is_empty() {
                return Err(invalid(key("model"), "must not be empty".into()));
            }
            let provider: Arc<dyn Provider> = match r.provider {
                ProviderKind::Openai | ProviderKind::Anthropic => {
                    let url = r.base_url.as_deref().ok_or_else(|| {
                        invalid(
                            key("base_url"),
                            "is required for providers \"openai\" and \"anthropic\"".into(),
                        )
                    })?;
                    let parsed =
                        reqwest::Url::parse(url).map_err(|e| invalid(key("base_url"), format!("{url:?}: {e}")))?;
                    if !matches!(parsed.scheme(), "http" | "https") {
                        return Err(invalid(
                            key("base_url"),
                            format!("{url:?}: scheme must be http or https"),
                        ));
                    }
                    for field in ["fault", "repeat_words"] {
                        let set = if field == "fault" {
                            r.fault.is_some()
                        } else {
                            r.repeat_words.is_some()
                        };
                        if set {
                            return Err(invalid(key(field), "only applies to provider \"mock\"".into()));
                        }
                    }
                    let api_key = match &r.api_key_env {
                        Some(var) => Some(secret(key("api_key_env"), var)?.0),
                        None => None,
                    };
                    if r.provider == ProviderKind::Anthropic {
                        if r.think_tags.is_some() {
                            return Err(invalid(
                                key("think_tags"),
                                "only applies to provider \"openai\" (Anthropic streams thinking blocks of its own)"
                                    .into(),
                            ));
                        }
                        Arc::new(AnthropicProvider::new(client.clone(), url, api_key).with_redactor(&redactor))
                    } else {
                        Arc::new(
                            OpenAiProvider::new(client.clone(), url, api_key)
                                .with_redactor(&redactor)
                                .with_think_tags(r.think_tags.unwrap_or(false)),
                        )
                    }
                }
                ProviderKind::Mock => {
                    if r.think_tags.is_some() {
                        return Err(invalid(key("think_tags"), "only applies to provider \"openai\"".into()));
                    }
                    let script: FaultScript = match &r.fault {
                        Some(f) => f.parse().map_err(|e| invalid(key("fault"), format!("{e}")))?,
                        None => FaultScript::NONE,
                    };
                    let style = Style {
                        repeat_words: r.repeat_words.unwrap_or(0),
                        extra_space: false,
                    };
                    Arc::new(MockProvider::new(FaultPlan::Fixed(script), style))
                }
            };
            let defaults = Deadlines::default();
            let ms = |value: Option<u64>, field: &str, default: Duration| match value {
                Some(0) => Err(invalid(key(field), "must be above 0".into())),
                Some(v) => Ok(Duration::from_millis(v)),
                None => Ok(default),
            };
            let reasoning_budget = match r.reasoning_budget_ms {
                None => None,
                Some(v) => Some(ms(Some(v), "reasoning_budget_ms", Duration::ZERO)?),
            };
            let deadlines = Deadlines {
                first_token: ms(r.ttft_ms, "ttft_ms", defaults.first_token)?,
                stall: ms(r.stall_ms, "stall_ms", defaults.stall)?,
                total: ms(r.total_ms, "total_ms", defaults.total)?,
                reasoning_budget,
            };
            if let Some(budget) = deadlines.reasoning_budget {
                if budget >= deadlines.total {
                    return Err(invalid(
                        key("reasoning_budget_ms"),
                        format!(
                            "{} ms is not below total_ms ({} ms): the whole attempt would end first",
                            budget.as_millis(),
                            deadlines.total.as_millis()
                        ),
                    ));
                }
            }
            let adaptive = adaptive_config(r, &key, deadlines.stall).map_err(|(k, problem)| invalid(k, problem))?;
            let mut route = Route::new(&r.name, &r.model, provider)
                .with_deadlines(deadlines)
                .with_adaptive(adaptive)
                .with_continuation(r.continuation.unwrap_or(ContinuationMode::Prefill))
                .with_overlap(r.overlap.unwrap_or_default());
            route.continue_final_message = r.continue_final_message;
            if let Some(tokens) = r.context_tokens {
                if tokens == 0 {
                    return Err(invalid(key("context_tokens"), "must be above 0".into()));
                }
                route = route.with_context(tokens);
            }
            check_drop_params(&r.drop_params)
                .map_err(|(j, problem)| invalid(format!("{}[{j}]", key("drop_params")), problem))?;
            route = route.with_drop_params(r.drop_params.iter().cloned());
            let breaker = breaker_config(r, &key).map_err(|(k, problem)| invalid(k, problem))?;
            let budget = budget_config(r, &key).map_err(|(k, problem)| invalid(k, problem))?;
            route.health = Arc::new(RouteHealth::new(breaker, budget));
            if let Some(price) = r.price_per_1k {
                if !price.is_finite() || price < 0.0 {
                    return Err(invalid(
                        key("price_per_1k"),
                        format!("{price} is not a price (dollars, 0 or more)"),
                    ));
                }
                route.price_per_1k = Some(price);
            }
            routes.push(route);
        }

        if raw.ladders.is_empty() {
            return Err(invalid("ladder".into(), "at least one [[ladder]] is needed".into()));
        }
        let mut names = HashSet::new();
        let mut ladders = Vec::new();
        for (i, l) in raw.ladders.iter().enumerate() {
            let key = |field: &str| format!("ladder[{i}].{field}");
            if l.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty".into()));
            }
            if !names.insert(l.name.clone()) {
                return Err(invalid(key("name"), format!("ladder {:?} is defined twice", l.name)));
            }
            if l.routes.is_empty() {
                return Err(invalid(key("routes"), "must name at least one route".into()));
            }
            let mut rungs = Vec::new();
            for (j, name) in l.routes.iter().enumerate() {
                let route = routes.iter().find(|r| *r.name == **name).ok_or_else(|| {
                    let known: Vec<&str> = routes.iter().map(|r| &*r.name).collect();
                    invalid(
                        format!("ladder[{i}].routes[{j}]"),
                        format!("no route named {name:?} (routes: {})", known.join(", ")),
                    )
                })?;
                rungs.push(route.clone());
            }
            let mut retry = RetryPolicy::default();
            if let Some(n) = l.max_retries {
                if n > 10 {
                    return Err(invalid(key("max_retries"), format!("{n} is more than 10")));
                }
                retry.max_retries = n;
            }
            if let Some(ms) = l.retry_after_max_ms {
                retry.retry_after_ceiling = Duration::from_millis(ms);
            }
            let mut ladder = Ladder::new(rungs).named(&l.name);
            ladder.retry = retry;
            ladder.instruction = match &l.instruction {
                Some(text) if text.trim().is_empty() => {
                    return Err(invalid(key("instruction"), "must not be empty".into()))
                }
                Some(text) => text.clone(),
                None => DEFAULT_INSTRUCTION.to_string(),
            };
            if let Some(ms) = l.latency_ceiling_ms {
                if ms == 0 {
                    return Err(invalid(key("latency_ceiling_ms"), "must be above 0".into()));
                }
                ladder.rules.latency_ceiling = Some(Duration::from_millis(ms));
            }
            if let Some(max) = l.max_cost_per_request {
                if !max.is_finite() || max <= 0.0 {
                    return Err(invalid(
                        key("max_cost_per_request"),
                        format!("{max} is not a ceiling (dollars, above 0)"),
                    ));
                }
                if let Some(j) = ladder.routes.iter().position(|r| r.price_per_1k.is_none()) {
                    return Err(invalid(
                        key("max_cost_per_request"),
                        format!(
                            "route {:?} has no price_per_1k, so its cost cannot be checked",
                            l.routes[j]
                        ),
                    ));
                }
                ladder.rules.max_cost_per_request = Some(max);
            }
            ladder.cache = cache_rung(l, &key).map_err(|(k, problem)| invalid(k, problem))?;
            ladder.safe_reply = match (&l.safe_reply, &l.safe_reply_note) {
                (None, Some(_)) => {
                    return Err(invalid(key("safe_reply_note"), "needs safe_reply to be set too".into()))
                }
                (None, None) => None,
                (Some(reply), _) if reply.trim().is_empty() => {
                    return Err(invalid(key("safe_reply"), "must not be empty".into()))
                }
                (Some(reply), note) => Some(SafeReply {
                    reply: reply.clone(),
                    note: note.clone().unwrap_or_else(|| safe_reply::DEFAULT_NOTE.to_string()),
                }),
            };
            ladder.loop_guard = loop_config(l, &key).map_err(|(k, problem)| invalid(k, problem))?;
            ladder.hedge = hedge_policy(l, &key).map_err(|(k, problem)| invalid(k, problem))?;
            if let Some(marker) = &l.reasoning_marker {
                ladder.reasoning_marker = marker.clone();
            }
            ladder.forward_late_reasoning = l.forward_late_reasoning.unwrap_or(false);
            ladders.push(ResolvedLadder {
                name: l.name.clone(),
                pattern: l.pattern.clone(),
                ladder,
                reasoning_field: l.reasoning_field.or(raw.server.reasoning_field).unwrap_or_default(),
            });
        }
        let state = state_config(&raw.state, &secret).map_err(|(k, problem)| invalid(k, problem))?;
        Ok(Config {
            state,
            listen,
            api_key,
            operator_key,
            record_dir: raw.server.record_dir,
            max_body_bytes,
            shutdown_grace: Duration::from_millis(raw.server.shutdown_grace_ms.unwrap_or(10_000)),
            limits,
            ladders,
        })
    }

    /// The ladder serving `model`: by exact name first, then by the first matching glob.
    pub fn ladder_for(&self, model: &str) -> Option<&ResolvedLadder> {
        self.ladders.iter().find(|l| l.name == model).or_else(|| {
            self.ladders
                .iter()
                .find(|l| l.pattern.as_deref().is_some_and(|p| glob_match(p, model)))
        })
    }

    /// The resolved ladders as text, for `baton check` (no secrets).
    pub fn describe(&self) -> String {
        let mut out = format!("listen {}\n", self.listen);
        match &self.state.redis_url {
            Some(_) => out.push_str(&format!(
                "state: shared through Redis, keys under {:?} (read locally, written in the background)\n",
                self.state.key_prefix
            )),
            None => out.push_str("state: this instance's own memory (no [state] redis_url)\n"),
        }
        let l = &self.limits;
        out.push_str(&format!(
            "limits: {} sessions, header read {} ms, keep-alive {} ms, slow client {} ms, write stall {} ms\n",
            l.max_sessions,
            l.header_read_timeout.as_millis(),
            l.keep_alive_timeout.as_millis(),
            l.slow_client_timeout.as_millis(),
            l.write_stall_timeout.as_millis()
        ));
        out.push_str(&format!(
            "connections: {} at once, listen backlog {}\n",
            l.max_connections, l.listen_backlog
        ));
        out.push_str(&format!(
            "client key {}\n",
            if self.api_key.is_some() {
                "required"
            } else {
                "not required"
            }
        ));
        out.push_str(&format!(
            "operator key {}\n",
            if self.operator_key.is_some() {
                "required on /events and /metrics"
            } else {
                "not set: /events and /metrics are served to loopback only"
            }
        ));
        out.push_str(&format!(
            "health: per (route, upstream model) — breaker, retry budget, first-token times, gaps, learned facts; up to {} models per route\n",
            crate::policy::health::MAX_MODELS
        ));
        for l in &self.ladders {
            let pattern = l
                .pattern
                .as_deref()
                .map(|p| format!(" (also models matching {p:?})"))
                .unwrap_or_default();
            out.push_str(&format!("ladder {:?}{pattern}\n", l.name));
            let rules = describe_rungs(&l.ladder);
            if !rules.is_empty() {
                out.push_str(&format!("  {}\n", rules.join(", ")));
            }
            for (i, r) in l.ladder.routes.iter().enumerate() {
                let ttft = match r.adaptive.ttft_per_1k_prompt.as_millis() {
                    0 => format!("{} ms", r.deadlines.first_token.as_millis()),
                    per_1k => format!(
                        "{} ms + {per_1k} ms per 1k prompt tokens",
                        r.deadlines.first_token.as_millis()
                    ),
                };
                let stall = match &r.adaptive.stall {
                    None => format!("{} ms", r.deadlines.stall.as_millis()),
                    Some(a) => {
                        let own = match a.own_gaps {
                            0 => String::new(),
                            n => format!(" or {}×the stream's own largest after its first {n}", a.k),
                        };
                        format!(
                            "adaptive {}×p99 gap within {}–{} ms after {} gaps{own}",
                            a.k,
                            a.floor.as_millis(),
                            r.deadlines.stall.as_millis(),
                            a.min_samples
                        )
                    }
                };
                out.push_str(&format!(
                    "  {}. {} → model {:?}{}, {}, ttft {ttft}, stall {stall}, total {} ms{}, context {}{}\n",
                    i + 1,
                    r.name,
                    &*r.model,
                    if &*r.model == PASS_THROUGH_MODEL {
                        " (the client's; health kept per model)"
                    } else {
                        ""
                    },
                    r.continuation.as_str(),
                    r.deadlines.total.as_millis(),
                    r.deadlines
                        .reasoning_budget
                        .map(|b| format!(", reasoning budget {} ms", b.as_millis()))
                        .unwrap_or_default(),
                    r.context_tokens.map_or_else(
                        || "unknown until an error states it".to_string(),
                        |t| format!("{t} tokens")
                    ),
                    if r.drop_params.is_empty() {
                        String::new()
                    } else {
                        format!(", drops {}", r.drop_params.join(", "))
                    }
                ));
                out.push_str(&format!("     {}\n", describe_breaker(r.health.breaker_config())));
            }
        }
        out
    }
}

/// The request fields baton sets itself on every attempt: never the client's, so never dropped.
const OWN_FIELDS: [&str; 4] = ["model", "messages", "stream", "stream_options"];

/// A route's `drop_params`: the index of the first bad name and why.
fn check_drop_params(names: &[String]) -> Result<(), (usize, String)> {
    for (j, name) in names.iter().enumerate() {
        if name.trim().is_empty() {
            return Err((j, "must not be empty".into()));
        }
        if OWN_FIELDS.contains(&name.as_str()) {
            return Err((
                j,
                format!("{name:?} is set by baton itself, not passed on from the request"),
            ));
        }
    }
    Ok(())
}

/// A route's breaker and probing, for `baton check`.
/// Validates `[state]`: one of the URL keys at most, a `redis://` URL, a usable prefix.
fn state_config(
    raw: &StateSection,
    secret: &dyn Fn(String, &str) -> Result<Secret, ConfigError>,
) -> Result<StateConfig, (String, String)> {
    let key_prefix = raw.key_prefix.clone().unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string());
    if key_prefix.is_empty() || key_prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err((
            "state.key_prefix".into(),
            format!("{key_prefix:?} must be non-empty, without spaces or control characters"),
        ));
    }
    let (key, url) = match (&raw.redis_url, &raw.redis_url_env) {
        (Some(_), Some(_)) => {
            return Err((
                "state.redis_url_env".into(),
                "give the URL or the variable holding it, not both".into(),
            ))
        }
        (Some(url), None) => ("state.redis_url", Secret(url.clone())),
        (None, Some(var)) => (
            "state.redis_url_env",
            secret("state.redis_url_env".into(), var).map_err(|e| match e {
                ConfigError::Invalid { key, problem, .. } => (key, problem),
                other => ("state.redis_url_env".into(), other.to_string()),
            })?,
        ),
        (None, None) => {
            return Ok(StateConfig {
                redis_url: None,
                key_prefix,
            })
        }
    };
    let text = url.expose();
    if !(text.starts_with("redis://") || text.starts_with("redis+unix://") || text.starts_with("unix://")) {
        // Only the scheme is shown: the rest may hold a password.
        let scheme = text
            .split("://")
            .next()
            .filter(|s| s.len() < text.len())
            .unwrap_or("none");
        return Err((
            key.into(),
            format!("the URL's scheme is {scheme:?}; baton speaks redis:// (or redis+unix://) to Redis"),
        ));
    }
    if !cfg!(feature = "redis") {
        return Err((
            key.into(),
            "this build of baton has no Redis support (the `redis` feature)".into(),
        ));
    }
    Ok(StateConfig {
        redis_url: Some(url),
        key_prefix,
    })
}

fn describe_breaker(b: &BreakerConfig) -> String {
    let probe = match b.probe {
        ProbeMode::Passive => "the next request is the probe",
        ProbeMode::Active => "baton probes it itself (max_tokens 1), users skip it meanwhile",
    };
    format!(
        "breaker: opens after {} failures in a row or > {}% of ≥ {} in {} s; \
         cool-down min(cap, max({} ms, 3×cost) × 2^failed probes), cap clamp(30×cost, {} ms, {} ms) \
         (cost: how long the failure took); {probe}; judged at the first token",
        b.consecutive_failures,
        b.failure_rate * 100.0,
        b.min_requests,
        b.window.as_secs(),
        b.cool_down.as_millis(),
        b.cool_down.as_millis(),
        b.max_cool_down.as_millis(),
    )
}

/// The ladder's rules and own rungs, for `baton check`.
fn describe_rungs(l: &Ladder) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(ms) = l.rules.latency_ceiling {
        out.push(format!("latency ceiling {} ms (p95 first token)", ms.as_millis()));
    }
    if let Some(max) = l.rules.max_cost_per_request {
        out.push(format!("cost ceiling ${max} per request"));
    }
    if let Some(c) = &l.cache {
        let uses = match c.uses {
            CacheUse::First => "first",
            CacheUse::LastResort => "last",
            CacheUse::Both => "both",
        };
        out.push(format!("cache {uses}"));
    }
    if l.safe_reply.is_some() {
        out.push("safe reply".to_string());
    }
    if let Some(h) = &l.hedge {
        let floor = h
            .after
            .map_or(String::new(), |d| format!(", floor {} ms", d.as_millis()));
        out.push(format!(
            "hedge after p95 first token ({} samples{floor})",
            h.min_samples
        ));
    }
    out
}

/// The cache rung of ladder section `l`; `key` names its keys in errors.
fn cache_rung(l: &LadderSection, key: &dyn Fn(&str) -> String) -> Result<Option<CacheRung>, (String, String)> {
    let uses = match l.cache.as_deref() {
        None => {
            for (field, set) in [
                ("cache_ttl_ms", l.cache_ttl_ms.is_some()),
                ("cache_max_entries", l.cache_max_entries.is_some()),
                ("cache_max_bytes", l.cache_max_bytes.is_some()),
            ] {
                if set {
                    return Err((key(field), "needs cache = \"first\", \"last\" or \"both\"".into()));
                }
            }
            return Ok(None);
        }
        Some("first") => CacheUse::First,
        Some("last") => CacheUse::LastResort,
        Some("both") => CacheUse::Both,
        Some(other) => {
            return Err((
                key("cache"),
                format!("{other:?} is not one of \"first\", \"last\", \"both\""),
            ))
        }
    };
    let mut limits = CacheLimits::default();
    if let Some(ms) = l.cache_ttl_ms {
        if ms == 0 {
            return Err((key("cache_ttl_ms"), "must be above 0".into()));
        }
        limits.ttl = Duration::from_millis(ms);
    }
    if let Some(n) = l.cache_max_entries {
        if n == 0 {
            return Err((key("cache_max_entries"), "must be above 0".into()));
        }
        limits.max_entries = n;
    }
    if let Some(n) = l.cache_max_bytes {
        if n == 0 {
            return Err((key("cache_max_bytes"), "must be above 0".into()));
        }
        limits.max_bytes = n;
    }
    Ok(Some(CacheRung {
        uses,
        store: Arc::new(ResponseCache::new(limits)),
    }))
}

/// The connection and session limits of `[server]`.
fn server_limits(s: &ServerSection) -> Result<ServerLimits, (String, String)> {
    let defaults = ServerLimits::default();
    let ms = |value: Option<u64>, field: &str, default: Duration| match value {
        Some(0) => Err((format!("server.{field}"), "must be above 0".to_string())),
        Some(v) => Ok(Duration::from_millis(v)),
        None => Ok(default),
    };
    let max_sessions = match s.max_sessions {
        Some(0) => return Err(("server.max_sessions".into(), "must be above 0".into())),
        Some(n) => n,
        None => defaults.max_sessions,
    };
    let max_connections = match s.max_connections {
        Some(0) => return Err(("server.max_connections".into(), "must be above 0".into())),
        Some(n) => n,
        None => defaults.max_connections,
    };
    let listen_backlog = match s.listen_backlog {
        Some(0) => return Err(("server.listen_backlog".into(), "must be above 0".into())),
        Some(n) => n,
        None => defaults.listen_backlog,
    };
    Ok(ServerLimits {
        header_read_timeout: ms(
            s.header_read_timeout_ms,
            "header_read_timeout_ms",
            defaults.header_read_timeout,
        )?,
        keep_alive_timeout: ms(
            s.keep_alive_timeout_ms,
            "keep_alive_timeout_ms",
            defaults.keep_alive_timeout,
        )?,
        slow_client_timeout: ms(
            s.slow_client_timeout_ms,
            "slow_client_timeout_ms",
            defaults.slow_client_timeout,
        )?,
        write_stall_timeout: ms(
            s.write_stall_timeout_ms,
            "write_stall_timeout_ms",
            defaults.write_stall_timeout,
        )?,
        max_sessions,
        max_connections,
        listen_backlog,
    })
}

/// The breaker settings of route section `r`; `key` names its keys in errors.
fn breaker_config(r: &RouteSection, key: &dyn Fn(&str) -> String) -> Result<BreakerConfig, (String, String)> {
    let mut c = BreakerConfig::default();
    if let Some(n) = r.breaker_consecutive_failures {
        if n == 0 {
            return Err((key("breaker_consecutive_failures"), "must be above 0".into()));
        }
        c.consecutive_failures = n;
    }
    if let Some(rate) = r.breaker_failure_rate {
        if !(rate > 0.0 && rate <= 1.0) {
            return Err((key("breaker_failure_rate"), format!("{rate} is not in (0, 1]")));
        }
        c.failure_rate = rate;
    }
    if let Some(n) = r.breaker_min_requests {
        c.min_requests = n;
    }
    if let Some(ms) = r.breaker_window_ms {
        if ms == 0 {
            return Err((key("breaker_window_ms"), "must be above 0".into()));
        }
        c.window = Duration::from_millis(ms);
    }
    if let Some(ms) = r.breaker_cooldown_ms {
        if ms == 0 {
            return Err((
                key("breaker_cooldown_ms"),
                "must be above 0: a failed probe would be followed by another at once".into(),
            ));
        }
        c.cool_down = Duration::from_millis(ms);
    }
    if let Some(ms) = r.breaker_max_cooldown_ms {
        if ms < c.cool_down.as_millis() as u64 {
            return Err((
                key("breaker_max_cooldown_ms"),
                format!(
                    "{ms} is below the shortest cool-down ({} ms, breaker_cooldown_ms)",
                    c.cool_down.as_millis()
                ),
            ));
        }
        c.max_cool_down = Duration::from_millis(ms);
    }
    if let Some(mode) = r.probe {
        c.probe = mode;
    }
    Ok(c)
}

/// The adaptive-deadline settings of route section `r`, whose stall deadline (the ceiling) is `stall`.
fn adaptive_config(
    r: &RouteSection,
    key: &dyn Fn(&str) -> String,
    stall: Duration,
) -> Result<Adaptive, (String, String)> {
    let mut a = Adaptive {
        stall: None,
        ttft_per_1k_prompt: Duration::from_millis(r.ttft_per_1k_prompt_ms.unwrap_or(0)),
    };
    if r.stall_adaptive == Some(false) {
        let stray = [
            ("stall_floor_ms", r.stall_floor_ms.is_some()),
            ("stall_k", r.stall_k.is_some()),
            ("stall_min_samples", r.stall_min_samples.is_some()),
            ("stall_own_gaps", r.stall_own_gaps.is_some()),
        ];
        if let Some((field, _)) = stray.iter().find(|(_, set)| *set) {
            return Err((key(field), "does not apply with stall_adaptive = false".into()));
        }
        return Ok(a);
    }
    let mut rule = AdaptiveStall::default();
    if let Some(k) = r.stall_k {
        if !(1.0..=1000.0).contains(&k) {
            return Err((
                key("stall_k"),
                format!("{k} is not between 1 and 1000 (below 1 would cut streams at their usual pace)"),
            ));
        }
        rule.k = k;
    }
    match r.stall_floor_ms {
        Some(0) => return Err((key("stall_floor_ms"), "must be above 0".into())),
        Some(ms) if Duration::from_millis(ms) > stall => {
            return Err((
                key("stall_floor_ms"),
                format!(
                    "the adaptive stall floor ({ms} ms) is above stall_ms ({} ms), its ceiling",
                    stall.as_millis()
                ),
            ))
        }
        Some(ms) => rule.floor = Duration::from_millis(ms),
        // A short stall_ms is the operator's word: the default floor yields to it.
        None => rule.floor = rule.floor.min(stall),
    }
    if let Some(n) = r.stall_own_gaps {
        if n as usize > GAP_SAMPLES {
            return Err((key("stall_own_gaps"), format!("{n} is not between 0 and {GAP_SAMPLES}")));
        }
        rule.own_gaps = n;
    }
    if let Some(n) = r.stall_min_samples {
        if n == 0 || n as usize > GAP_SAMPLES {
            return Err((
                key("stall_min_samples"),
                format!("{n} is not between 1 and {GAP_SAMPLES} (the gaps a route keeps)"),
            ));
        }
        rule.min_samples = n;
    }
    a.stall = Some(rule);
    Ok(a)
}

/// The hedging policy of ladder section `l` (`None`: off).
fn hedge_policy(l: &LadderSection, key: &dyn Fn(&str) -> String) -> Result<Option<HedgePolicy>, (String, String)> {
    if l.hedge != Some(true) {
        let set = [
            ("hedge_after_ms", l.hedge_after_ms.is_some()),
            ("hedge_min_samples", l.hedge_min_samples.is_some()),
        ];
        if let Some((field, _)) = set.iter().find(|(_, set)| *set) {
            return Err((key(field), "has no effect unless hedge = true".into()));
        }
        return Ok(None);
    }
    if l.routes.len() < 2 {
        return Err((
            key("hedge"),
            "needs at least two routes: a hedge goes to the next one".into(),
        ));
    }
    if l.hedge_after_ms == Some(0) {
        return Err((key("hedge_after_ms"), "must be above 0".into()));
    }
    let min_samples = l.hedge_min_samples.unwrap_or(hedge::DEFAULT_MIN_SAMPLES);
    if !(1..=MAX_HEDGE_MIN_SAMPLES).contains(&min_samples) {
        return Err((
            key("hedge_min_samples"),
            format!("{min_samples} is not between 1 and {MAX_HEDGE_MIN_SAMPLES}"),
        ));
    }
    Ok(Some(HedgePolicy::new(
        l.hedge_after_ms.map(Duration::from_millis),
        min_samples,
    )))
}

/// The most `hedge_min_samples`: a route keeps its latest 100 first-token times.
const MAX_HEDGE_MIN_SAMPLES: usize = 100;

/// The loop-guard settings of ladder section `l` (`None`: off).
fn loop_config(l: &LadderSection, key: &dyn Fn(&str) -> String) -> Result<Option<LoopConfig>, (String, String)> {
    if l.loop_guard == Some(false) {
        let set = [
            ("loop_min_repeats", l.loop_min_repeats.is_some()),
            ("loop_min_span_bytes", l.loop_min_span_bytes.is_some()),
            ("loop_marker", l.loop_marker.is_some()),
        ];
        if let Some((field, _)) = set.iter().find(|(_, set)| *set) {
            return Err((key(field), "has no effect with loop_guard = false".into()));
        }
        return Ok(None);
    }
    let mut c = LoopConfig::default();
    if let Some(n) = l.loop_min_repeats {
        if !(2..=loopguard::MAX_MIN_REPEATS).contains(&n) {
            return Err((
                key("loop_min_repeats"),
                format!("{n} is not between 2 and {}", loopguard::MAX_MIN_REPEATS),
            ));
        }
        c.min_repeats = n;
    }
    if let Some(n) = l.loop_min_span_bytes {
        if !(1..=loopguard::MAX_MIN_SPAN_BYTES).contains(&n) {
            return Err((
                key("loop_min_span_bytes"),
                format!("{n} is not between 1 and {}", loopguard::MAX_MIN_SPAN_BYTES),
            ));
        }
        c.min_span_bytes = n;
    }
    if let Some(marker) = &l.loop_marker {
        if marker.len() > MAX_LOOP_MARKER_BYTES {
            return Err((
                key("loop_marker"),
                format!(
                    "{} bytes is longer than {MAX_LOOP_MARKER_BYTES}: a marker should be short",
                    marker.len()
                ),
            ));
        }
        c.marker = marker.clone();
    }
    Ok(Some(c))
}

/// The longest `loop_marker` accepted.
const MAX_LOOP_MARKER_BYTES: usize = 64;

/// The retry-budget settings of route section `r`.
fn budget_config(r: &RouteSection, key: &dyn Fn(&str) -> String) -> Result<BudgetConfig, (String, String)> {
    let mut c = BudgetConfig::default();
    if let Some(ratio) = r.retry_budget_ratio {
        if !(0.0..=10.0).contains(&ratio) {
            return Err((key("retry_budget_ratio"), format!("{ratio} is not between 0 and 10")));
        }
        c.ratio = ratio;
    }
    if let Some(floor) = r.retry_budget_floor {
        c.floor = floor;
    }
    Ok(c)
}

/// Glob match with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [server]
        api_key_env = "BATON_TEST_KEY"

        [[route]]
        name = "primary"
        provider = "openai"
        base_url = "http://127.0.0.1:9001/v1"
        model = "{model}"
        api_key_env = "PRIMARY_KEY"
        ttft_ms = 2000
        stall_ms = 500

        [[route]]
        name = "fallback"
        provider = "mock"
        model = "oracle"
        continuation = "instruct"
        fault = "503x1"

        [[ladder]]
        name = "chat"
        match = "fb-*"
        routes = ["primary", "fallback"]
    "#;

    fn env(name: &str) -> Option<String> {
        match name {
            "BATON_TEST_KEY" => Some("client-secret".into()),
            "PRIMARY_KEY" => Some("upstream-secret".into()),
            _ => None,
        }
    }

    fn error(text: &str) -> String {
        match Config::parse("baton.toml", text, &env) {
            Ok(_) => panic!("expected an error for {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_config_resolves_and_never_shows_secrets() {
        let config = Config::parse("baton.toml", GOOD, &env).expect("valid");
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.ladder_for("chat").map(|l| l.name.as_str()), Some("chat"));
        assert_eq!(config.ladder_for("fb-large").map(|l| l.name.as_str()), Some("chat"));
        assert!(config.ladder_for("gpt-4").is_none());
        let described = format!("{}{config:?}", config.describe());
        assert!(described.contains("2. fallback"), "{described}");
        assert!(!described.contains("secret"), "{described}");
    }

    #[test]
    fn state_is_local_by_default_and_a_redis_section_is_checked_key_by_key() {
        let local = Config::parse("baton.toml", GOOD, &env).expect("valid");
        assert_eq!(local.state.redis_url, None);
        assert!(local.describe().contains("state: this instance's own memory"));

        let with_redis = format!("[state]\nredis_url = \"redis://:hunter2@127.0.0.1:6379/0\"\n{GOOD}");
        if cfg!(feature = "redis") {
            let shared = Config::parse("baton.toml", &with_redis, &env).expect("valid");
            assert_eq!(shared.state.key_prefix, DEFAULT_KEY_PREFIX);
            let described = format!("{}{:?}", shared.describe(), shared.state);
            assert!(
                described.contains("shared through Redis, keys under \"baton:\""),
                "{described}"
            );
            assert!(
                !described.contains("hunter2"),
                "the URL's password never shows: {described}"
            );
        } else {
            let e = error(&with_redis);
            assert!(e.contains("`state.redis_url`") && e.contains("`redis` feature"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }

        let from_env = Config::parse(
            "baton.toml",
            &format!("[state]\nredis_url_env = \"PRIMARY_KEY\"\nkey_prefix = \"a:\"\n{GOOD}"),
            &env,
        );
        let problem = from_env.expect_err("not a URL").to_string();
        assert!(
            problem.contains("`state.redis_url_env`")
                && problem.contains("\"none\"")
                && !problem.contains("upstream-secret"),
            "{problem}"
        );
        for (section, key, says) in [
            (
                "redis_url = \"redis://h\"\nredis_url_env = \"X\"",
                "state.redis_url_env",
                "not both",
            ),
            ("redis_url = \"https://user:pw@h\"", "state.redis_url", "\"https\""),
            (
                "redis_url_env = \"NOT_SET\"",
                "state.redis_url_env",
                "NOT_SET is not set",
            ),
            ("key_prefix = \"\"", "state.key_prefix", "non-empty"),
            ("key_prefix = \"a b\"", "state.key_prefix", "without spaces"),
        ] {
            let e = error(&format!("[state]\n{section}\n{GOOD}"));
            assert!(e.contains(&format!("`{key}`")) && e.contains(says), "{section}: {e}");
            assert!(!e.contains("pw@"), "{e}");
        }
        let unknown = error(&format!("[state]\nredis = \"x\"\n{GOOD}"));
        assert!(unknown.contains("redis"), "{unknown}");
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_problem() {
        let unknown = error(&GOOD.replace("stall_ms = 500", "stall_ms = 500\nstal_ms = 1"));
        assert!(
            unknown.starts_with("baton.toml") && unknown.contains("stal_ms"),
            "{unknown}"
        );
        let missing = error(&GOOD.replace("\"fallback\"]", "\"fallbak\"]"));
        assert!(
            missing.contains("`ladder[0].routes[1]`") && missing.contains("fallbak"),
            "{missing}"
        );
        let no_env = error(&GOOD.replace("PRIMARY_KEY", "NOT_SET_ANYWHERE"));
        assert!(
            no_env.contains("`route[0].api_key_env`") && no_env.contains("NOT_SET_ANYWHERE"),
            "{no_env}"
        );
        let bad_fault = error(&GOOD.replace("503x1", "explode"));
        assert!(bad_fault.contains("`route[1].fault`"), "{bad_fault}");
        let bad_listen = error(&GOOD.replace("[server]", "[server]\nlisten = \"everywhere\""));
        assert!(bad_listen.contains("`server.listen`"), "{bad_listen}");
        let zero = error(&GOOD.replace("ttft_ms = 2000", "ttft_ms = 0"));
        assert!(zero.contains("`route[0].ttft_ms`: must be above 0"), "{zero}");
        let bad_rate = error(&GOOD.replace("stall_ms = 500", "stall_ms = 500\nbreaker_failure_rate = 1.5"));
        assert!(
            bad_rate.contains("`route[0].breaker_failure_rate`: 1.5 is not in (0, 1]"),
            "{bad_rate}"
        );
        let stray = error(&GOOD.replace("stall_ms = 500", "stall_ms = 500\nstall_adaptive = false\nstall_k = 4"));
        assert!(
            stray.contains("`route[0].stall_k`: does not apply with stall_adaptive = false"),
            "{stray}"
        );
        let stray_own = error(&GOOD.replace(
            "stall_ms = 500",
            "stall_ms = 500\nstall_adaptive = false\nstall_own_gaps = 4",
        ));
        assert!(stray_own.contains("`route[0].stall_own_gaps`"), "{stray_own}");
        let adaptive = |extra: &str| GOOD.replace("stall_ms = 500", &format!("stall_ms = 500\n{extra}"));
        let low_k = error(&adaptive("stall_k = 0.5"));
        assert!(
            low_k.contains("`route[0].stall_k`: 0.5 is not between 1 and 1000"),
            "{low_k}"
        );
        let nan_k = error(&adaptive("stall_k = nan"));
        assert!(nan_k.contains("`route[0].stall_k`"), "{nan_k}");
        // A floor set above stall_ms is an error; the default one (1000 ms) yields to a lower stall_ms.
        let high_floor = error(&adaptive("stall_floor_ms = 800"));
        assert!(
            high_floor
                .contains("`route[0].stall_floor_ms`: the adaptive stall floor (800 ms) is above stall_ms (500 ms)"),
            "{high_floor}"
        );
        let low_ceiling = Config::parse("baton.toml", &adaptive("stall_adaptive = true"), &env).expect("valid");
        let rule = low_ceiling.ladders[0].ladder.routes[0]
            .adaptive
            .stall
            .expect("adaptive");
        assert_eq!(rule.floor, Duration::from_millis(500));
        let samples = error(&adaptive("stall_min_samples = 100000"));
        assert!(
            samples.contains("`route[0].stall_min_samples`: 100000 is not between 1 and 512"),
            "{samples}"
        );
        let own = error(&adaptive("stall_own_gaps = 100000"));
        assert!(
            own.contains("`route[0].stall_own_gaps`: 100000 is not between 0 and 512"),
            "{own}"
        );
        let bad_mode = error(&GOOD.replace("\"instruct\"", "\"psychic\""));
        assert!(bad_mode.contains("psychic"), "{bad_mode}");
        for key in [
            "header_read_timeout_ms",
            "keep_alive_timeout_ms",
            "slow_client_timeout_ms",
            "write_stall_timeout_ms",
            "max_sessions",
            "max_connections",
            "listen_backlog",
        ] {
            let zero = error(&GOOD.replace("[server]", &format!("[server]\n{key} = 0")));
            assert!(zero.contains(&format!("`server.{key}`: must be above 0")), "{zero}");
        }
    }

    #[test]
    fn the_stall_deadline_adapts_unless_turned_off() {
        let config = Config::parse("baton.toml", GOOD, &env).expect("valid");
        let routes = &config.ladders[0].ladder.routes;
        // No stall keys: adaptive, the default floor yielding to the primary's stall_ms = 500.
        assert_eq!(
            routes[0].adaptive,
            Adaptive {
                stall: Some(AdaptiveStall {
                    floor: Duration::from_millis(500),
                    ..AdaptiveStall::default()
                }),
                ttft_per_1k_prompt: Duration::ZERO,
            }
        );
        assert_eq!(routes[1].adaptive, Adaptive::default());
        assert!(
            config.describe().contains(
                "stall adaptive 8×p99 gap within 1000–3000 ms after 100 gaps or 8×the stream's own largest after its first 12"
            ),
            "{}",
            config.describe()
        );
        let off = Config::parse(
            "baton.toml",
            &GOOD.replace("stall_ms = 500", "stall_ms = 500\nstall_adaptive = false"),
            &env,
        )
        .expect("valid");
        assert!(off.ladders[0].ladder.routes[0].adaptive.is_fixed());
        assert!(off.describe().contains("stall 500 ms"), "{}", off.describe());
        let text = GOOD.replace(
            "stall_ms = 500",
            "stall_ms = 5000\nstall_adaptive = true\nstall_floor_ms = 200\nstall_k = 6\nstall_min_samples = 40\nstall_own_gaps = 0\nttft_per_1k_prompt_ms = 750",
        );
        let config = Config::parse("baton.toml", &text, &env).expect("valid");
        let primary = &config.ladders[0].ladder.routes[0];
        assert_eq!(
            primary.adaptive,
            Adaptive {
                stall: Some(AdaptiveStall {
                    k: 6.0,
                    floor: Duration::from_millis(200),
                    min_samples: 40,
                    own_gaps: 0,
                }),
                ttft_per_1k_prompt: Duration::from_millis(750),
            }
        );
        assert_eq!(primary.deadlines.stall, Duration::from_millis(5000));
        let described = config.describe();
        assert!(
            described.contains(
                "ttft 2000 ms + 750 ms per 1k prompt tokens, stall adaptive 6×p99 gap within 200–5000 ms after 40 gaps"
            ),
            "{described}"
        );
        assert!(
            !described.contains("40 gaps or"),
            "stall_own_gaps = 0: the route's history only: {described}"
        );
        assert!(
            described.contains("within 1000–3000 ms after 100 gaps or 8×the stream's own largest after its first 12"),
            "the fallback keeps the default: {described}"
        );
    }

    #[test]
    fn the_reasoning_budget_is_off_by_default_and_checked() {
        let route = |extra: &str| GOOD.replace("stall_ms = 500", &format!("stall_ms = 500\n{extra}"));
        let config = Config::parse("baton.toml", GOOD, &env).expect("valid");
        assert_eq!(config.ladders[0].ladder.routes[0].deadlines.reasoning_budget, None);
        let config = Config::parse("baton.toml", &route("reasoning_budget_ms = 45000"), &env).expect("valid");
        assert_eq!(
            config.ladders[0].ladder.routes[0].deadlines.reasoning_budget,
            Some(Duration::from_secs(45))
        );
        assert!(
            config.describe().contains("total 300000 ms, reasoning budget 45000 ms"),
            "{}",
            config.describe()
        );
        let zero = error(&route("reasoning_budget_ms = 0"));
        assert!(
            zero.contains("`route[0].reasoning_budget_ms`") && zero.contains("above 0"),
            "{zero}"
        );
        let late = error(&route("total_ms = 10000\nreasoning_budget_ms = 10000"));
        assert!(
            late.contains("`route[0].reasoning_budget_ms`") && late.contains("not below total_ms"),
            "{late}"
        );
    }

    #[test]
    fn drop_params_names_request_fields_baton_does_not_set() {
        let dropping = |list: &str| GOOD.replace("stall_ms = 500", &format!("stall_ms = 500\ndrop_params = {list}"));
        let config = Config::parse("baton.toml", &dropping(r#"["top_k", "thinking"]"#), &env).expect("valid");
        let ladder = config.ladder_for("chat").expect("the chat ladder");
        assert_eq!(&*ladder.ladder.routes[0].drop_params, ["top_k", "thinking"]);
        assert!(ladder.ladder.routes[1].drop_params.is_empty(), "unset: none dropped");
        let described = config.describe();
        assert!(described.contains(", drops top_k, thinking"), "{described}");
        assert_eq!(described.matches("drops").count(), 1, "{described}");
        let empty = error(&dropping(r#"["top_k", " "]"#));
        assert!(
            empty.contains("`route[0].drop_params[1]`") && empty.contains("must not be empty"),
            "{empty}"
        );
        for own in OWN_FIELDS {
            let refused = error(&dropping(&format!("[{own:?}]")));
            assert!(
                refused.contains("`route[0].drop_params[0]`") && refused.contains("set by baton itself"),
                "{refused}"
            );
        }
        let typed = error(&dropping(r#""top_k""#));
        assert!(typed.contains("drop_params"), "{typed}");
    }

    #[test]
    fn think_tags_is_an_openai_route_option() {
        let on = GOOD.replace("stall_ms = 500", "stall_ms = 500\nthink_tags = true");
        // What the split does is tested over the proxy (tests/reasoning.rs).
        assert!(Config::parse("baton.toml", &on, &env).is_ok());
        let mock = error(&GOOD.replace("fault = \"503x1\"", "fault = \"503x1\"\nthink_tags = true"));
        assert!(
            mock.contains("`route[1].think_tags`") && mock.contains("only applies to provider \"openai\""),
            "{mock}"
        );
        let typed = error(&GOOD.replace("stall_ms = 500", "stall_ms = 500\nthink_tags = \"yes\""));
        assert!(typed.contains("think_tags"), "{typed}");
    }

    #[test]
    fn breaker_cool_down_and_probe_keys_are_checked_and_described() {
        let config = Config::parse("baton.toml", GOOD, &env).expect("valid");
        let b = *config.ladders[0].ladder.routes[0].health.breaker_config();
        assert_eq!(
            (b.cool_down, b.max_cool_down, b.probe),
            (Duration::from_secs(1), Duration::from_secs(300), ProbeMode::Passive),
            "the defaults"
        );
        let described = config.describe();
        assert!(
            described.contains("max(1000 ms, 3×cost)") && described.contains("the next request is the probe"),
            "{described}"
        );
        let route = |extra: &str| GOOD.replace("stall_ms = 500", &format!("stall_ms = 500\n{extra}"));
        let active = route("breaker_cooldown_ms = 500\nbreaker_max_cooldown_ms = 60000\nprobe = \"active\"");
        let config = Config::parse("baton.toml", &active, &env).expect("valid");
        let b = *config.ladders[0].ladder.routes[0].health.breaker_config();
        assert_eq!(
            (b.cool_down, b.max_cool_down, b.probe),
            (Duration::from_millis(500), Duration::from_secs(60), ProbeMode::Active)
        );
        assert!(config.describe().contains("baton probes it itself"));
        let zero = error(&route("breaker_cooldown_ms = 0"));
        assert!(
            zero.contains("`route[0].breaker_cooldown_ms`") && zero.contains("at once"),
            "{zero}"
        );
        let below = error(&route("breaker_cooldown_ms = 2000\nbreaker_max_cooldown_ms = 1000"));
        assert!(
            below.contains("`route[0].breaker_max_cooldown_ms`") && below.contains("below the shortest"),
            "{below}"
        );
        let odd = error(&route("probe = \"sometimes\""));
        assert!(odd.contains("sometimes"), "{odd}");
    }

    #[test]
    fn reasoning_keys_set_the_seam_marker_and_late_forwarding() {
        let config = Config::parse("baton.toml", GOOD, &env).expect("valid");
        let ladder = &config.ladders[0].ladder;
        assert_eq!(ladder.reasoning_marker, crate::policy::reasoning::SEAM_MARKER);
        assert!(!ladder.forward_late_reasoning);
        let custom = GOOD.replace(
            "routes = [\"primary\", \"fallback\"]",
            "routes = [\"primary\", \"fallback\"]\nreasoning_marker = \" [seam] \"\nforward_late_reasoning = true",
        );
        let config = Config::parse("baton.toml", &custom, &env).expect("valid");
        let ladder = &config.ladders[0].ladder;
        assert_eq!(ladder.reasoning_marker, " [seam] ");
        assert!(ladder.forward_late_reasoning);
    }

    #[test]
    fn the_outgoing_reasoning_field_is_the_ladders_else_the_servers() {
        use crate::policy::reasoning::OutgoingField;
        let ladder = |extra: &str| {
            GOOD.replace(
                "routes = [\"primary\", \"fallback\"]",
                &format!("routes = [\"primary\", \"fallback\"]\n{extra}"),
            )
        };
        let field = |text: &str| Config::parse("baton.toml", text, &env).expect("valid").ladders[0].reasoning_field;
        assert_eq!(field(GOOD), OutgoingField::AsUpstream);
        assert_eq!(
            field(&ladder("reasoning_field = \"reasoning\"")),
            OutgoingField::Reasoning
        );
        let server = GOOD.replace("[server]", "[server]\nreasoning_field = \"reasoning_content\"");
        assert_eq!(field(&server), OutgoingField::ReasoningContent);
        let both = server.replace(
            "routes = [\"primary\", \"fallback\"]",
            "routes = [\"primary\", \"fallback\"]\nreasoning_field = \"as_upstream\"",
        );
        assert_eq!(field(&both), OutgoingField::AsUpstream, "the ladder's word wins");
        let bad = error(&ladder("reasoning_field = \"thoughts\""));
        assert!(
            bad.contains("reasoning_field") && bad.contains("as_upstream"),
            "names the key and the choices: {bad}"
        );
    }

    #[test]
    fn loop_guard_keys_are_checked() {
        let ladder = |extra: &str| {
            GOOD.replace(
                "routes = [\"primary\", \"fallback\"]",
                &format!("routes = [\"primary\", \"fallback\"]\n{extra}"),
            )
        };
        let config = Config::parse("baton.toml", GOOD, &env).expect("valid");
        assert_eq!(config.ladders[0].ladder.loop_guard, Some(LoopConfig::default()));
        let custom = ladder("loop_min_repeats = 10\nloop_min_span_bytes = 500\nloop_marker = \" [cut] \"");
        let config = Config::parse("baton.toml", &custom, &env).expect("valid");
        let guard = config.ladders[0].ladder.loop_guard.clone().expect("on");
        assert_eq!(
            (guard.min_repeats, guard.min_span_bytes, guard.marker.as_str()),
            (10, 500, " [cut] ")
        );
        let off = Config::parse("baton.toml", &ladder("loop_guard = false"), &env).expect("valid");
        assert_eq!(off.ladders[0].ladder.loop_guard, None);
        let stray = error(&ladder("loop_guard = false\nloop_marker = \"x\""));
        assert!(
            stray.contains("`ladder[0].loop_marker`: has no effect with loop_guard = false"),
            "{stray}"
        );
        let one = error(&ladder("loop_min_repeats = 1"));
        assert!(
            one.contains("`ladder[0].loop_min_repeats`: 1 is not between 2 and 1000"),
            "{one}"
        );
        let zero = error(&ladder("loop_min_span_bytes = 0"));
        assert!(zero.contains("`ladder[0].loop_min_span_bytes`"), "{zero}");
        let long = error(&ladder(&format!("loop_marker = \"{}\"", "-".repeat(65))));
        assert!(
            long.contains("`ladder[0].loop_marker`: 65 bytes is longer than 64"),
            "{long}"
        );
    }

    #[test]
    fn hedge_keys_are_checked() {
        let ladder = |extra: &str| {
            GOOD.replace(
                "routes = [\"primary\", \"fallback\"]",
                &format!("routes = [\"primary\", \"fallback\"]\n{extra}"),
            )
        };
        let config = Config::parse("baton.toml", GOOD, &env).expect("valid");
        assert!(config.ladders[0].ladder.hedge.is_none(), "off by default");
        let on = Config::parse(
            "baton.toml",
            &ladder("hedge = true\nhedge_after_ms = 400\nhedge_min_samples = 8"),
            &env,
        )
        .expect("valid");
        let h = on.ladders[0].ladder.hedge.clone().expect("on");
        assert_eq!((h.after, h.min_samples), (Some(Duration::from_millis(400)), 8));
        assert!(on
            .describe()
            .contains("hedge after p95 first token (8 samples, floor 400 ms)"));
        let bare = Config::parse("baton.toml", &ladder("hedge = true"), &env).expect("valid");
        let h = bare.ladders[0].ladder.hedge.clone().expect("on");
        assert_eq!((h.after, h.min_samples), (None, hedge::DEFAULT_MIN_SAMPLES));
        let stray = error(&ladder("hedge_after_ms = 300"));
        assert!(
            stray.contains("`ladder[0].hedge_after_ms`: has no effect unless hedge = true"),
            "{stray}"
        );
        let zero = error(&ladder("hedge = true\nhedge_after_ms = 0"));
        assert!(zero.contains("`ladder[0].hedge_after_ms`: must be above 0"), "{zero}");
        let many = error(&ladder("hedge = true\nhedge_min_samples = 101"));
        assert!(
            many.contains("`ladder[0].hedge_min_samples`: 101 is not between 1 and 100"),
            "{many}"
        );
        let alone = error(&GOOD.replace(
            "routes = [\"primary\", \"fallback\"]",
            "routes = [\"primary\"]\nhedge = true",
        ));
        assert!(
            alone.contains("`ladder[0].hedge`: needs at least two routes"),
            "{alone}"
        );
    }

    #[test]
    fn ladder_rungs_and_business_rules_are_checked() {
        let ladder = |extra: &str| {
            GOOD.replace(
                "routes = [\"primary\", \"fallback\"]",
                &format!("routes = [\"primary\", \"fallback\"]\n{extra}"),
            )
        };
        let priced = |extra: &str| {
            ladder(extra)
                .replace("stall_ms = 500", "stall_ms = 500\nprice_per_1k = 0.01")
                .replace("fault = \"503x1\"", "fault = \"503x1\"\nprice_per_1k = 0.001")
        };
        let ok = Config::parse(
            "baton.toml",
            &priced("cache = \"both\"\ncache_ttl_ms = 1000\nsafe_reply = \"Sorry.\"\nlatency_ceiling_ms = 900\nmax_cost_per_request = 0.02"),
            &env,
        )
        .expect("valid");
        let l = &ok.ladders[0].ladder;
        assert_eq!(l.cache.as_ref().map(|c| c.uses), Some(CacheUse::Both));
        assert_eq!(l.rules.latency_ceiling, Some(Duration::from_millis(900)));
        assert_eq!(l.rules.max_cost_per_request, Some(0.02));
        assert_eq!(
            l.safe_reply.as_ref().map(|s| s.note.as_str()),
            Some(safe_reply::DEFAULT_NOTE)
        );
        let described = ok.describe();
        assert!(
            described.contains("cache both") && described.contains("safe reply"),
            "{described}"
        );

        for (extra, wanted) in [
            (
                "cache = \"sometimes\"",
                "`ladder[0].cache`: \"sometimes\" is not one of",
            ),
            ("cache_ttl_ms = 5", "`ladder[0].cache_ttl_ms`: needs cache ="),
            (
                "cache = \"first\"\ncache_max_entries = 0",
                "`ladder[0].cache_max_entries`: must be above 0",
            ),
            (
                "safe_reply_note = \"x\"",
                "`ladder[0].safe_reply_note`: needs safe_reply",
            ),
            ("safe_reply = \" \"", "`ladder[0].safe_reply`: must not be empty"),
            (
                "latency_ceiling_ms = 0",
                "`ladder[0].latency_ceiling_ms`: must be above 0",
            ),
            (
                "max_cost_per_request = 0.5",
                "`ladder[0].max_cost_per_request`: route \"primary\" has no price_per_1k",
            ),
        ] {
            let e = error(&ladder(extra));
            assert!(e.contains(wanted), "{extra}: {e}");
        }
        let e = error(&priced("max_cost_per_request = -1.0"));
        assert!(e.contains("`ladder[0].max_cost_per_request`"), "{e}");
        let e = error(&GOOD.replace("stall_ms = 500", "stall_ms = 500\nprice_per_1k = -2.0"));
        assert!(e.contains("`route[0].price_per_1k`"), "{e}");
        let e = error(
            &GOOD
                .replace("name = \"fallback\"", "name = \"cache\"")
                .replace("\"fallback\"]", "\"cache\"]"),
        );
        assert!(e.contains("`route[1].name`: \"cache\" is reserved"), "{e}");
    }

    #[test]
    fn a_routes_overlap_setting_is_read_and_defaults_to_auto() {
        let text = GOOD.replace(
            "continuation = \"instruct\"",
            "continuation = \"instruct\"\noverlap = \"always\"",
        );
        let config = Config::parse("baton.toml", &text, &env).expect("valid");
        let routes = config
            .ladder_for("chat")
            .map(|l| l.ladder.routes.clone())
            .unwrap_or_default();
        let overlap: Vec<OverlapMode> = routes.iter().map(|r| r.overlap).collect();
        assert_eq!(overlap, vec![OverlapMode::Auto, OverlapMode::Always]);
        let bad = error(&GOOD.replace("continuation = \"instruct\"", "overlap = \"sometimes\""));
        assert!(bad.starts_with("baton.toml") && bad.contains("sometimes"), "{bad}");
    }

    #[test]
    fn globs() {
        assert!(glob_match("fb-*", "fb-large"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(!glob_match("fb-*", "gpt-4"));
        assert!(!glob_match("a*b", "acbx"));
    }
}
