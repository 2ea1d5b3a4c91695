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

use crate::breaker::BreakerConfig;
use crate::budget::BudgetConfig;
use crate::continuation::{ContinuationMode, DEFAULT_INSTRUCTION};
use crate::health::RouteHealth;
use crate::ladder::{Ladder, RetryPolicy, Route};
use crate::oracle::fault::{FaultPlan, FaultScript};
use crate::oracle::Style;
use crate::provider::anthropic::AnthropicProvider;
use crate::provider::mock::MockProvider;
use crate::provider::openai::OpenAiProvider;
use crate::provider::Provider;
use crate::watchdog::Deadlines;

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The route model that means "the model the client asked for".
pub const PASS_THROUGH_MODEL: &str = "{model}";

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
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to bind; default `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Environment variable holding the bearer key clients must send.
    pub api_key_env: Option<String>,
    /// Where session recordings go.
    pub record_dir: Option<PathBuf>,
    /// Largest request body accepted (bytes); default 4 MiB.
    pub max_body_bytes: Option<usize>,
    /// On shutdown, how long streams in flight may run on (ms); default 10000.
    pub shutdown_grace_ms: Option<u64>,
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
    /// Send `continue_final_message`/`add_generation_prompt` (vLLM, SGLang).
    #[serde(default)]
    pub continue_final_message: bool,
    /// Time-to-first-token deadline (ms).
    pub ttft_ms: Option<u64>,
    /// Inter-token stall deadline (ms).
    pub stall_ms: Option<u64>,
    /// Whole-attempt deadline (ms).
    pub total_ms: Option<u64>,
    /// Context window (tokens).
    pub context_tokens: Option<u32>,
    /// Open the circuit breaker after this many failures in a row (default 5).
    pub breaker_consecutive_failures: Option<u32>,
    /// …or when more than this fraction of the window's requests failed (default 0.5).
    pub breaker_failure_rate: Option<f64>,
    /// …once the window holds at least this many requests (default 20).
    pub breaker_min_requests: Option<u32>,
    /// The breaker's sliding window (ms, default 60000).
    pub breaker_window_ms: Option<u64>,
    /// How long an open breaker waits before a probe (ms, default 30000).
    pub breaker_cooldown_ms: Option<u64>,
    /// Retries allowed per first attempt over the last 10 s (default 0.1).
    pub retry_budget_ratio: Option<f64>,
    /// Retries always allowed per 10 s (default 10).
    pub retry_budget_floor: Option<u32>,
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
}

/// The whole config, validated, with secrets read.
#[derive(Debug)]
pub struct Config {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// The bearer key clients must send, if any (never printed).
    pub api_key: Option<Secret>,
    /// Where recordings go.
    pub record_dir: Option<PathBuf>,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// How long streams may run on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// The ladders, in file order.
    pub ladders: Vec<ResolvedLadder>,
}

/// A secret string that never shows in `Debug` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
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
        let max_body_bytes = raw.server.max_body_bytes.unwrap_or(4 * 1024 * 1024);
        if max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes".into(), "must be above 0".into()));
        }

        let client = OpenAiProvider::default_client();
        let mut routes: Vec<Route> = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let key = |field: &str| format!("route[{i}].{field}");
            if r.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty".into()));
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
                        Arc::new(AnthropicProvider::new(client.clone(), url, api_key))
                    } else {
                        Arc::new(OpenAiProvider::new(client.clone(), url, api_key))
                    }
                }
                ProviderKind::Mock => {
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
            let deadlines = Deadlines {
                first_token: ms(r.ttft_ms, "ttft_ms", defaults.first_token)?,
                stall: ms(r.stall_ms, "stall_ms", defaults.stall)?,
                total: ms(r.total_ms, "total_ms", defaults.total)?,
            };
            let mut route = Route::new(&r.name, &r.model, provider)
                .with_deadlines(deadlines)
                .with_continuation(r.continuation.unwrap_or(ContinuationMode::Prefill));
            route.continue_final_message = r.continue_final_message;
            if let Some(tokens) = r.context_tokens {
                if tokens == 0 {
                    return Err(invalid(key("context_tokens"), "must be above 0".into()));
                }
                route = route.with_context(tokens);
            }
            let breaker = breaker_config(r, &key).map_err(|(k, problem)| invalid(k, problem))?;
            let budget = budget_config(r, &key).map_err(|(k, problem)| invalid(k, problem))?;
            route.health = Arc::new(RouteHealth::new(breaker, budget));
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
            ladders.push(ResolvedLadder {
                name: l.name.clone(),
                pattern: l.pattern.clone(),
                ladder,
            });
        }
        Ok(Config {
            listen,
            api_key,
            record_dir: raw.server.record_dir,
            max_body_bytes,
            shutdown_grace: Duration::from_millis(raw.server.shutdown_grace_ms.unwrap_or(10_000)),
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
        out.push_str(&format!(
            "client key {}\n",
            if self.api_key.is_some() {
                "required"
            } else {
                "not required"
            }
        ));
        for l in &self.ladders {
            let pattern = l
                .pattern
                .as_deref()
                .map(|p| format!(" (also models matching {p:?})"))
                .unwrap_or_default();
            out.push_str(&format!("ladder {:?}{pattern}\n", l.name));
            for (i, r) in l.ladder.routes.iter().enumerate() {
                out.push_str(&format!(
                    "  {}. {} → model {:?}, {}, ttft {} ms, stall {} ms, total {} ms, context {} tokens\n",
                    i + 1,
                    r.name,
                    &*r.model,
                    r.continuation.as_str(),
                    r.deadlines.first_token.as_millis(),
                    r.deadlines.stall.as_millis(),
                    r.deadlines.total.as_millis(),
                    r.context_tokens
                ));
            }
        }
        out
    }
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
        c.cool_down = Duration::from_millis(ms);
    }
    Ok(c)
}

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
        let bad_mode = error(&GOOD.replace("\"instruct\"", "\"psychic\""));
        assert!(bad_mode.contains("psychic"), "{bad_mode}");
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
