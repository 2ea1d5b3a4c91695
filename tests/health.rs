#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test
//! Health per (route, upstream model), one scenario per item of issue 12:
//! one model of a pass-through route failing while another stays healthy, a
//! context window stated by an error and learned, a 429 without Retry-After,
//! a hedge that failed and is not handed to again, and the bound on models
//! per route. Library scenarios run under virtual time; the ones a client of
//! `baton serve` would see run over a real proxy on 127.0.0.1.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use baton::engine::watchdog::Deadlines;
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::script::Pacing;
use baton::oracle::{answer, Style};
use baton::policy::breaker::{BreakerConfig, BreakerState};
use baton::policy::budget::BudgetConfig;
use baton::policy::health::{RouteHealth, MAX_MODELS};
use baton::policy::hedge::HedgePolicy;
use baton::provider::{ChunkStream, Provider, UpstreamRequest};
use baton::{ChatRequest, EventKind, Ladder, Message, Role, Route, Splicer};

use support::{drain, raw_upstream, Serve, Served, Sse};

/// An in-process oracle with `fault`, streaming fast.
fn mock(fault: &str) -> Arc<MockProvider> {
    Arc::new(
        MockProvider::new(
            FaultPlan::Fixed(fault.parse::<FaultScript>().expect("fault")),
            Style::default(),
        )
        .with_pacing(Pacing {
            first_token: Duration::from_millis(2),
            interval: Duration::from_millis(1),
        }),
    )
}

/// A pass-through upstream: each request goes to the oracle for the model it names.
struct ByModel(Vec<(&'static str, Arc<MockProvider>)>);

impl Provider for ByModel {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let (_, oracle) = self
            .0
            .iter()
            .find(|(m, _)| *m == request.model)
            .unwrap_or_else(|| panic!("no oracle for model {:?}", request.model));
        oracle.stream(request)
    }
}

fn question(tag: &str) -> Vec<Message> {
    vec![Message::new(Role::User, format!("health scenario {tag}"))]
}

fn asking(model: &str, messages: Vec<Message>) -> ChatRequest {
    let mut request = ChatRequest::new(messages);
    request.model = Some(model.to_string());
    request
}

/// Breaker changes the events show, as (route, model, to).
fn breaker_changes(events: &[baton::EngineEvent]) -> Vec<(String, Option<String>, BreakerState)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Breaker { route, model, to, .. } => Some((route.clone(), model.clone(), *to)),
            _ => None,
        })
        .collect()
}

// ---- a. one model fails, another stays healthy ---------------------------

#[tokio::test(start_paused = true)]
async fn one_models_first_token_timeouts_open_only_its_breaker() {
    let bad = mock("hang");
    let good = mock("none");
    let fallback = mock("none");
    let breaker = BreakerConfig {
        consecutive_failures: 3,
        ..BreakerConfig::default()
    };
    let mut primary = Route::new(
        "primary",
        "{model}",
        Arc::new(ByModel(vec![("bad", bad.clone()), ("good", good.clone())])),
    )
    .with_deadlines(Deadlines {
        first_token: Duration::from_secs(1),
        ..Deadlines::default()
    });
    primary.health = Arc::new(RouteHealth::new(breaker, BudgetConfig::default()));
    let mut ladder = Ladder::new(vec![primary, Route::new("fallback", "oracle", fallback.clone())]);
    ladder.retry.max_retries = 0;
    let splicer = Splicer::new(ladder);
    let mut events = splicer.subscribe();

    // "good" before, between and after "bad"'s failures; the fourth "bad" comes
    // right after the breaker opened, well inside any cool-down.
    let order = ["good", "bad", "good", "bad", "good", "bad", "bad", "good", "good"];
    for (i, model) in order.iter().enumerate() {
        let messages = question(&format!("a{i}"));
        let done = splicer.collect(asking(model, messages.clone())).await;
        assert_eq!(
            done.text,
            answer(&messages),
            "session {i} ({model}): nothing lost, nothing doubled"
        );
        let completion = done.outcome.unwrap_or_else(|e| panic!("session {i}: {e}"));
        let expected: &[&str] = if *model == "good" { &["primary"] } else { &["fallback"] };
        assert_eq!(completion.route_chain, expected, "session {i} ({model})");
        if i == 5 {
            let health = splicer.ladder().routes[0].health.model("bad");
            assert_eq!(
                health.state(),
                BreakerState::Open,
                "three timeouts in a row open bad's breaker"
            );
        }
    }
    assert_eq!(bad.requests(), 3, "the fourth request for bad skipped the primary");
    assert_eq!(good.requests(), 5, "every request for good went to the primary");
    assert_eq!(fallback.requests(), 4);

    let route = &splicer.ladder().routes[0];
    assert_eq!(route.health.model("bad").state(), BreakerState::Open);
    assert_eq!(route.health.model("good").state(), BreakerState::Closed);
    assert_eq!(
        (
            route.health.model("bad").attempts(),
            route.health.model("good").attempts()
        ),
        (3, 5)
    );
    assert_eq!(
        breaker_changes(&drain(&mut events)),
        [("primary".into(), Some("bad".into()), BreakerState::Open)],
        "one breaker changed: bad's on the primary"
    );
}

/// The SSE body an OpenAI-compatible upstream streams for `messages`: the oracle's answer.
fn oracle_sse(model: &str, messages: &[Message]) -> String {
    let text = answer(messages);
    let mut body = String::new();
    for chunk in baton::oracle::chunks(&text, baton::oracle::conversation_hash(messages)) {
        body.push_str(&format!("data: {}\n\n", support::text(model, chunk)));
    }
    body.push_str(&format!("data: {}\n\n", support::finish(model, "stop")));
    body.push_str("data: [DONE]\n\n");
    body
}

/// Writes one whole HTTP response and closes.
async fn respond(mut socket: tokio::net::TcpStream, status: &str, content_type: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// Streams `messages` as `model` through the proxy: the status and the SSE body.
async fn stream(proxy: &Served, model: &str, messages: &[Message]) -> (u16, String) {
    let response = proxy
        .chat(&json!({"model": model, "stream": true, "messages": messages}))
        .await;
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

fn metric_lines(metrics: &str, name: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn over_the_proxy_one_models_503s_open_its_breaker_and_the_other_keeps_the_primary() {
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = asked.clone();
    let primary = raw_upstream(move |socket, _, body| {
        let model = body["model"].as_str().unwrap_or_default().to_string();
        seen.lock().unwrap().push(model.clone());
        let messages: Vec<Message> = serde_json::from_value(body["messages"].clone()).expect("messages");
        async move {
            if model == "good" {
                respond(socket, "200 OK", "text/event-stream", &oracle_sse(&model, &messages)).await;
            } else {
                let error = json!({"error": {"message": "overloaded", "type": "server_error"}}).to_string();
                respond(socket, "503 Service Unavailable", "application/json", &error).await;
            }
        }
    })
    .await;
    let toml = format!(
        r#"
        [[route]]
        name = "primary"
        provider = "openai"
        base_url = "{primary}"
        model = "{{model}}"
        breaker_consecutive_failures = 3
        breaker_cooldown_ms = 600000
        [[route]]
        name = "fallback"
        provider = "mock"
        model = "oracle"
        [[ladder]]
        name = "any"
        match = "*"
        routes = ["primary", "fallback"]
        max_retries = 0
        "#
    );
    let proxy = Serve::new(&toml).start().await;
    let order = ["good", "bad", "good", "bad", "good", "bad", "bad", "good"];
    for (i, model) in order.iter().enumerate() {
        let messages = question(&format!("proxy a{i}"));
        let (status, body) = stream(&proxy, model, &messages).await;
        assert_eq!(status, 200, "session {i}: {body}");
        let sse = Sse::parse(&body);
        assert!(sse.done(), "session {i}: {body}");
        assert_eq!(sse.text(), answer(&messages), "session {i} ({model}): byte for byte");
    }
    let asked = asked.lock().unwrap().clone();
    let count = |m: &str| asked.iter().filter(|a| *a == m).count();
    assert_eq!(
        (count("good"), count("bad")),
        (4, 3),
        "upstream requests per model: {asked:?}"
    );

    let metrics = proxy.get("/metrics").await;
    for line in [
        "baton_breaker_state{route=\"primary\",model=\"bad\"} 2",
        "baton_breaker_state{route=\"primary\",model=\"good\"} 0",
        "baton_breaker_state{route=\"fallback\",model=\"oracle\"} 0",
        "baton_model_attempts_total{route=\"primary\",model=\"bad\"} 3",
        "baton_model_attempts_total{route=\"primary\",model=\"good\"} 4",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // A pass-through route shows the models asked of it, not its `{model}` placeholder.
    assert_eq!(metric_lines(&metrics, "baton_breaker_state").len(), 3, "{metrics}");
}

// ---- b. a stated context window, an unconfigured fallback ----------------

/// An upstream answering every request with `status` and `body`; its base URL and request count.
async fn refusing(status: &'static str, body: Value) -> (String, Arc<Mutex<usize>>) {
    let count: Arc<Mutex<usize>> = Arc::default();
    let seen = count.clone();
    let body = body.to_string();
    let url = raw_upstream(move |socket, _, _| {
        *seen.lock().unwrap() += 1;
        let body = body.clone();
        async move { respond(socket, status, "application/json", &body).await }
    })
    .await;
    (url, count)
}

fn openai_too_long(window: u32) -> Value {
    json!({"error": {
        "message": format!("This model's maximum context length is {window} tokens. However, your messages resulted in 9000 tokens."),
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }})
}

/// A conversation whose estimate is well above `tokens`.
fn bigger_than(tokens: u32, tag: &str) -> Vec<Message> {
    let words: Vec<String> = (0..tokens).map(|i| format!("w{i}")).collect();
    let messages = vec![Message::new(Role::User, format!("{tag}: {}", words.join(" ")))];
    assert!(baton::request::estimate_tokens(&messages) > tokens);
    messages
}

fn count(c: &Arc<Mutex<usize>>) -> usize {
    *c.lock().unwrap()
}

#[tokio::test]
async fn a_stated_window_sends_the_request_to_an_unconfigured_fallback_and_is_remembered() {
    let (primary, asked) = refusing("400 Bad Request", openai_too_long(8192)).await;
    let toml = format!(
        r#"
        [[route]]
        name = "primary"
        provider = "openai"
        base_url = "{primary}"
        model = "m8k"
        [[route]]
        name = "fallback"
        provider = "mock"
        model = "oracle"
        [[ladder]]
        name = "chat"
        routes = ["primary", "fallback"]
        "#
    );
    let proxy = Serve::new(&toml).start().await;
    let metrics = proxy.get("/metrics").await;
    assert!(
        metric_lines(&metrics, "baton_learned_context_window_tokens").is_empty(),
        "nothing learned yet: {metrics}"
    );

    // The primary says it is too small: the fallback, whose window nobody configured, answers.
    let messages = question("b small");
    let (status, body) = stream(&proxy, "chat", &messages).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(Sse::parse(&body).text(), answer(&messages), "byte for byte");
    assert_eq!(count(&asked), 1);
    let metrics = proxy.get("/metrics").await;
    let learned = "baton_learned_context_window_tokens{route=\"primary\",model=\"m8k\"} 8192";
    assert!(metrics.contains(learned), "missing {learned:?} in\n{metrics}");
    assert_eq!(
        metric_lines(&metrics, "baton_learned_context_window_tokens").len(),
        1,
        "only the primary stated a window: {metrics}"
    );

    // A request bigger than the learned window skips the primary without asking it.
    let big = bigger_than(9000, "b big");
    let (status, body) = stream(&proxy, "chat", &big).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(Sse::parse(&body).text(), answer(&big), "byte for byte");
    assert_eq!(count(&asked), 1, "the primary was not asked again");
    // One that fits the learned window is still the primary's to answer (or refuse).
    let (status, _) = stream(&proxy, "chat", &question("b small again")).await;
    assert_eq!(status, 200);
    assert_eq!(count(&asked), 2, "a request within the window goes to the primary");
}

#[tokio::test]
async fn when_every_route_is_too_small_the_client_gets_context_length_exceeded() {
    let (primary, primary_asked) = refusing("400 Bad Request", openai_too_long(8192)).await;
    // vLLM's shape, stating a smaller window.
    let (fallback, fallback_asked) = refusing(
        "400 Bad Request",
        json!({"object": "error", "message": "This model's maximum context length is 4096 tokens.", "type": "BadRequestError", "param": null, "code": 400}),
    )
    .await;
    let toml = format!(
        r#"
        [[route]]
        name = "primary"
        provider = "openai"
        base_url = "{primary}"
        model = "m8k"
        [[route]]
        name = "fallback"
        provider = "openai"
        base_url = "{fallback}"
        model = "m4k"
        [[ladder]]
        name = "chat"
        routes = ["primary", "fallback"]
        "#
    );
    let proxy = Serve::new(&toml).start().await;
    let big = bigger_than(9000, "b every");
    // First both are asked and both refuse; then both are known too small and neither is asked.
    for (round, asked) in [(0, 1), (1, 1)] {
        for stream in [true, false] {
            let response = proxy
                .chat(&json!({"model": "chat", "stream": stream, "messages": big}))
                .await;
            assert_eq!(response.status(), 400, "round {round}, stream {stream}");
            let body: Value = response.json().await.expect("a JSON error body");
            assert_eq!(
                body["error"]["code"], "context_length_exceeded",
                "round {round}: {body}"
            );
            assert_eq!(body["error"]["type"], "invalid_request_error", "round {round}: {body}");
            assert_eq!(
                (count(&primary_asked), count(&fallback_asked)),
                (asked, asked),
                "round {round}, stream {stream}"
            );
        }
    }
    let metrics = proxy.get("/metrics").await;
    for line in [
        "baton_learned_context_window_tokens{route=\"primary\",model=\"m8k\"} 8192",
        "baton_learned_context_window_tokens{route=\"fallback\",model=\"m4k\"} 4096",
        // A context-length miss says nothing of a route's health.
        "baton_breaker_state{route=\"primary\",model=\"m8k\"} 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn anthropics_wording_on_an_anthropic_route_is_learned_too() {
    let (primary, asked) = refusing(
        "400 Bad Request",
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 9000 tokens > 8192 maximum"}}),
    )
    .await;
    let toml = format!(
        r#"
        [[route]]
        name = "claude"
        provider = "anthropic"
        base_url = "{primary}"
        model = "claude-small"
        api_key_env = "ANTHROPIC_TEST_KEY"
        [[route]]
        name = "fallback"
        provider = "mock"
        model = "oracle"
        [[ladder]]
        name = "chat"
        routes = ["claude", "fallback"]
        "#
    );
    let proxy = Serve::new(&toml).env("ANTHROPIC_TEST_KEY", "sk-ant-test").start().await;
    let messages = question("b anthropic");
    let (status, body) = stream(&proxy, "chat", &messages).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(Sse::parse(&body).text(), answer(&messages), "byte for byte");
    let metrics = proxy.get("/metrics").await;
    let learned = "baton_learned_context_window_tokens{route=\"claude\",model=\"claude-small\"} 8192";
    assert!(metrics.contains(learned), "missing {learned:?} in\n{metrics}");
    let big = bigger_than(9000, "b anthropic big");
    let (status, body) = stream(&proxy, "chat", &big).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(Sse::parse(&body).text(), answer(&big));
    assert_eq!(count(&asked), 1, "the big request skipped the anthropic route");
}

// ---- c. 429 without Retry-After -------------------------------------------

fn retries(events: &[baton::EngineEvent]) -> Vec<(String, u64)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Retry { route, delay_ms } => Some((route.clone(), *delay_ms)),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_429_hands_over_at_once_while_a_rung_remains() {
    let primary = mock("429");
    let fallback = mock("none");
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("primary", "p", primary.clone()),
        Route::new("fallback", "f", fallback.clone()),
    ]));
    let mut events = splicer.subscribe();
    for i in 0..3 {
        let messages = question(&format!("c{i}"));
        let started = tokio::time::Instant::now();
        let done = splicer.collect(ChatRequest::new(messages.clone())).await;
        assert_eq!(done.text, answer(&messages), "session {i}: byte for byte");
        let completion = done.outcome.expect("complete");
        assert_eq!(completion.route_chain, ["fallback"]);
        assert_eq!(
            completion.failures.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>(),
            ["rate_limited"],
            "session {i}: one 429, no second ask"
        );
        // No backoff was waited: the fallback's own pacing is all the time it took.
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "session {i}: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(primary.requests(), 3, "the primary was asked once per session");
    assert_eq!(fallback.requests(), 3);
    assert!(retries(&drain(&mut events)).is_empty(), "no same-route retry");
}

#[tokio::test(start_paused = true)]
async fn on_the_last_rung_a_429_is_retried_after_at_least_the_floor() {
    let floor = baton::policy::ladder::RetryPolicy::default().rate_limit_floor;
    assert!(
        floor >= Duration::from_millis(100),
        "a floor of hundreds of milliseconds"
    );
    for i in 0..8 {
        // Rate-limited once, then it answers.
        let only = mock("429x1");
        let splicer = Splicer::new(Ladder::new(vec![Route::new("only", "o", only.clone())]));
        let mut events = splicer.subscribe();
        let messages = question(&format!("c last {i}"));
        let started = tokio::time::Instant::now();
        let done = splicer.collect(ChatRequest::new(messages.clone())).await;
        let took = started.elapsed();
        assert_eq!(done.text, answer(&messages), "session {i}: byte for byte");
        assert_eq!(only.requests(), 2, "session {i}: asked again once");
        let retried = retries(&drain(&mut events));
        assert_eq!(retried.len(), 1, "session {i}: {retried:?}");
        let delay = Duration::from_millis(retried[0].1);
        assert!(
            delay >= floor,
            "session {i}: waited {delay:?}, below the floor {floor:?}"
        );
        assert!(took >= floor, "session {i}: the retry came {took:?} after the start");
    }
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_primary_is_the_last_rung_when_the_fallback_is_open() {
    // The fallback's breaker is open (one failure opens it, for ten minutes):
    // the primary's 429 hands over, the fallback is skipped, and the primary
    // is asked again after the floor instead of the session failing.
    let primary = mock("429x1");
    let fallback_health = Arc::new(RouteHealth::new(
        BreakerConfig {
            consecutive_failures: 1,
            cool_down: Duration::from_secs(600),
            ..BreakerConfig::default()
        },
        BudgetConfig::default(),
    ));
    let mut fallback = Route::new("fallback", "f", mock("none"));
    fallback.health = fallback_health.clone();
    let f = fallback.health_for(None);
    let (permit, _) = f.admit(true).expect("closed: admitted");
    permit.settle(Some(&baton::failure::FailureKind::Reset { detail: "down".into() }));
    assert_eq!(f.state(), BreakerState::Open);
    let splicer = Splicer::new(Ladder::new(vec![Route::new("primary", "p", primary.clone()), fallback]));
    let mut events = splicer.subscribe();
    let messages = question("c open fallback");
    let started = tokio::time::Instant::now();
    let done = splicer.collect(ChatRequest::new(messages.clone())).await;
    assert_eq!(done.text, answer(&messages), "byte for byte");
    let completion = done.outcome.expect("complete");
    assert_eq!(completion.route_chain, ["primary"]);
    assert!(
        done.handovers.is_empty(),
        "the client saw no handover: {:?}",
        done.handovers
    );
    let kinds: Vec<&str> = completion.failures.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(kinds, ["rate_limited", "circuit_open"]);
    assert_eq!(primary.requests(), 2);
    let retried = retries(&drain(&mut events));
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(retried[0].0, "primary");
    assert!(started.elapsed() >= baton::policy::ladder::RetryPolicy::default().rate_limit_floor);
}

// ---- d. hedge after a failed hedge ----------------------------------------

/// primary → second → third, a late first token hedged after 100 ms.
fn hedged_three(primary: Arc<dyn Provider>, second: Arc<MockProvider>, third: Arc<MockProvider>) -> Splicer {
    let mut ladder = Ladder::new(vec![
        Route::new("primary", "p", primary),
        Route::new("second", "s", second),
        Route::new("third", "t", third),
    ]);
    ladder.hedge = Some(HedgePolicy::new(Some(Duration::from_millis(100)), 5));
    Splicer::new(ladder)
}

#[tokio::test(start_paused = true)]
async fn a_route_whose_hedge_failed_is_not_handed_to_later() {
    // The primary's first token comes after 300 ms, then it drops after 10 chunks.
    let primary = Arc::new(
        MockProvider::new(
            FaultPlan::Fixed("drop@10".parse::<FaultScript>().expect("fault")),
            Style::default(),
        )
        .with_pacing(Pacing {
            first_token: Duration::from_millis(300),
            interval: Duration::from_millis(5),
        }),
    );
    let (second, third) = (mock("503"), mock("none"));
    let splicer = hedged_three(primary.clone(), second.clone(), third.clone());
    let mut events = splicer.subscribe();
    let messages = question("d");
    let collected = splicer.collect(ChatRequest::new(messages.clone())).await;
    let events = drain(&mut events);
    assert_eq!(collected.text, answer(&messages), "nothing lost, nothing doubled");
    let handovers: Vec<(String, String)> = collected
        .handovers
        .iter()
        .map(|h| (h.from.to_string(), h.to.to_string()))
        .collect();
    let done = collected.outcome.expect("complete");
    assert_eq!(done.route_chain, ["primary", "third"]);
    assert_eq!(handovers, [("primary".to_string(), "third".to_string())]);
    assert_eq!(
        second.requests(),
        1,
        "the failed hedge's route was asked once, as the hedge"
    );
    assert_eq!(primary.requests(), 1);
    assert_eq!(third.requests(), 1);
    let hedged = events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Hedge { hedge_route, .. } if hedge_route == "second"));
    assert!(hedged, "the late first token started a hedge on the second route");
    let failed: Vec<(String, String)> = done
        .failures
        .iter()
        .map(|f| (f.route.clone(), f.kind.clone()))
        .collect();
    assert_eq!(
        failed,
        [
            ("second".to_string(), "server_error".to_string()),
            ("primary".to_string(), "truncated".to_string())
        ]
    );
    assert_eq!(
        support::verify_events(&events),
        baton::record::verify::Outcome::Ok { partial: false }
    );
}

// ---- e. the bound on models per route ---------------------------------------

#[tokio::test]
async fn a_pass_through_route_keeps_at_most_max_models_in_metrics() {
    let toml = r#"
        [[route]]
        name = "open"
        provider = "mock"
        model = "{model}"
        [[ladder]]
        name = "any"
        match = "*"
        routes = ["open"]
        "#;
    let proxy = Arc::new(Serve::new(toml).start().await);
    let extra = 6;
    let names: Vec<String> = (0..MAX_MODELS + extra).map(|i| format!("model-{i:03}")).collect();
    let ask = |name: String| {
        let proxy = proxy.clone();
        async move {
            let messages = question(&format!("e {name}"));
            let (status, body) = stream(&proxy, &name, &messages).await;
            (name, status, Sse::parse(&body).text() == answer(&messages))
        }
    };
    // The first `extra` one at a time, so they are the least recently used;
    // the rest side by side (their order among themselves does not matter).
    let mut answers = futures::stream::iter(names[..extra].to_vec())
        .then(ask)
        .collect::<Vec<_>>()
        .await;
    answers.extend(
        futures::stream::iter(names[extra..].to_vec())
            .map(ask)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await,
    );
    assert_eq!(answers.len(), names.len());
    for (name, status, exact) in &answers {
        assert_eq!(*status, 200, "{name}");
        assert!(exact, "{name}: byte for byte");
    }
    let metrics = proxy.get("/metrics").await;
    let attempts = metric_lines(&metrics, "baton_model_attempts_total");
    assert_eq!(attempts.len(), MAX_MODELS, "{metrics}");
    let shown: HashMap<String, String> = attempts
        .iter()
        .filter_map(|l| {
            let model = l.split("model=\"").nth(1)?.split('"').next()?;
            Some((model.to_string(), l.clone()))
        })
        .collect();
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            shown.contains_key(name),
            i >= extra,
            "{name}: the {extra} least recently used are forgotten"
        );
    }
    assert_eq!(metric_lines(&metrics, "baton_breaker_state").len(), MAX_MODELS);
}

/// A primary whose first request stays silent for 300 ms and then answers 503
/// (a retry is due), and whose later requests answer after 300 ms.
struct LateThen503 {
    requests: std::sync::atomic::AtomicU32,
    oracle: Arc<MockProvider>,
}

impl Provider for LateThen503 {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let n = self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            return self.oracle.stream(request);
        }
        Box::pin(futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err(baton::FailureKind::ServerError {
                status: 503,
                retry_after: None,
            })
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_of_a_hedged_attempt_is_not_hedged_to_the_route_that_failed() {
    let primary = Arc::new(LateThen503 {
        requests: Default::default(),
        oracle: Arc::new(
            MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()).with_pacing(Pacing {
                first_token: Duration::from_millis(300),
                interval: Duration::from_millis(1),
            }),
        ),
    });
    let (second, third) = (mock("503"), mock("none"));
    let splicer = hedged_three(primary.clone(), second.clone(), third.clone());
    let mut events = splicer.subscribe();
    let messages = question("d retry");
    let done = splicer.collect(ChatRequest::new(messages.clone())).await;
    assert_eq!(done.text, answer(&messages), "byte for byte");
    let completion = done.outcome.expect("complete");
    // The retry's hedge skipped the second route and went to the third, which was first.
    assert_eq!(completion.route_chain, ["third"]);
    assert_eq!(primary.requests.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(
        second.requests(),
        1,
        "the second route was hedged to once, not again for the retry"
    );
    let events = drain(&mut events);
    let hedges: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Hedge { hedge_route, .. } => Some(hedge_route.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        hedges,
        ["second", "third"],
        "no hedge of the retry to the route that failed"
    );
    assert_eq!(third.requests(), 1);
    assert_eq!(
        support::verify_events(&events),
        baton::record::verify::Outcome::Ok { partial: false }
    );
}
