//! `baton serve` over loopback HTTP: a real server of ours on 127.0.0.1:0,
//! oracle upstreams (and scripted raw-TCP ones) behind it, reqwest as the client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::time::Duration;

use baton::oracle::answer;
use baton::{Message, Role};
use serde_json::{json, Value};
use support::{finish, scripted, text, tool, End, Reply, Serve, Served, Sse};

const KEY: &str = "sk-test-client-key";

use support::oracle_repeating as oracle;

/// A proxy with ladder "chat" = primary (oracle with `fault`, model "big") → fallback (healthy oracle, model "small").
async fn oracle_proxy(fault: &str, fallback_fault: &str, extra_server: &str) -> Served {
    let (primary, s1) = oracle(fault).await;
    let (fallback, s2) = oracle(fallback_fault).await;
    let toml = format!(
        r#"
        [server]
        {extra_server}

        [[route]]
        name = "primary"
        provider = "openai"
        base_url = "{primary}"
        model = "big"
        ttft_ms = 3000
        stall_ms = 1000

        [[route]]
        name = "fallback"
        provider = "openai"
        base_url = "{fallback}"
        model = "small"
        continuation = "instruct"
        ttft_ms = 3000
        stall_ms = 1000

        [[ladder]]
        name = "chat"
        match = "gpt-*"
        routes = ["primary", "fallback"]
        "#
    );
    Serve::new(&toml)
        .env("BATON_TEST_KEY", KEY)
        .upstreams(vec![s1, s2])
        .start()
        .await
}

fn conversation(tag: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, "You are a proxy test."),
        Message::new(Role::User, format!("proxy {tag}")),
    ]
}

fn body(model: &str, tag: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": conversation(tag),
        "stream": stream,
        "stream_options": {"include_usage": true},
        "temperature": 0.3,
    })
}

#[tokio::test]
async fn a_streamed_answer_survives_a_stall_with_one_id_and_the_fallbacks_model() {
    let proxy = oracle_proxy("stall@25", "none", "").await;
    let response = proxy.chat(&body("chat", "stream stall", true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let sse = Sse::parse(&response.text().await.expect("body"));
    // With `chunks` refusing a `[DONE]` that is not last: it is last.
    assert!(sse.done());
    let chunks = sse.chunks();
    assert_eq!(sse.text(), answer(&conversation("stream stall")));
    let ids: std::collections::HashSet<&str> = chunks.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "one stable id for the spliced answer");
    let models: Vec<&str> = chunks
        .iter()
        .filter(|c| c.pointer("/choices/0/delta/content").is_some())
        .filter_map(|c| c["model"].as_str())
        .collect();
    assert_eq!(models.first(), Some(&"big"));
    assert_eq!(models.last(), Some(&"small"));
    assert!(
        sse.comments
            .iter()
            .any(|c| c.starts_with("baton handover from=primary to=fallback reason=stall")),
        "{:?}",
        sse.comments
    );
    let finish = chunks
        .iter()
        .find(|c| c.pointer("/choices/0/finish_reason").and_then(Value::as_str).is_some())
        .expect("finish chunk");
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks
        .last()
        .and_then(|c| c.get("usage"))
        .expect("usage chunk before [DONE]");
    assert!(usage["completion_tokens"].as_u64().unwrap_or(0) > 0);
}

#[tokio::test]
async fn a_whole_answer_is_spliced_too_and_globs_select_the_ladder() {
    let proxy = oracle_proxy("drop@10", "none", "").await;
    let response = proxy.chat(&body("gpt-4o", "whole drop", false)).await;
    assert_eq!(response.status(), 200);
    let v: Value = response.json().await.expect("json");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        answer(&conversation("whole drop")).as_str()
    );
    assert_eq!(v["model"], "small");
    assert_eq!(v["baton"]["route_chain"], json!(["primary", "fallback"]));
}

#[tokio::test]
async fn every_route_failing_before_text_is_a_503_listing_each_failure() {
    let proxy = oracle_proxy("500", "hang", "").await;
    let response = proxy.chat(&body("chat", "all fail", true)).await;
    assert_eq!(response.status(), 503);
    let v: Value = response.json().await.expect("json");
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert_eq!(v["error"]["code"], "all_routes_failed");
    assert!(
        message.contains("primary: server error (500)") && message.contains("fallback: no first token"),
        "{message}"
    );
}

#[tokio::test]
async fn a_policy_refusal_is_passed_on_with_the_providers_reason() {
    let proxy = oracle_proxy("policy", "none", "").await;
    let response = proxy.chat(&body("chat", "policy", false)).await;
    assert_eq!(response.status(), 400);
    let v: Value = response.json().await.expect("json");
    assert_eq!(v["error"]["code"], "content_policy_violation");
    assert_eq!(
        v["error"]["message"],
        "Your request was rejected by the oracle's content policy"
    );
}

#[tokio::test]
async fn failing_after_text_ends_with_an_error_event_and_no_done() {
    let proxy = oracle_proxy("stall@8", "drop@0", "").await;
    let response = proxy.chat(&body("chat", "late failure", true)).await;
    assert_eq!(response.status(), 200);
    let sse = Sse::parse(&response.text().await.expect("body"));
    assert!(!sse.done(), "an incomplete answer must not end with [DONE]");
    assert_eq!(sse.last_json()["error"]["code"], "all_routes_failed");
}

#[tokio::test]
async fn bad_requests_get_openai_style_errors() {
    let proxy = oracle_proxy(
        "none",
        "none",
        "api_key_env = \"BATON_TEST_KEY\"\nmax_body_bytes = 4096",
    )
    .await;
    let client = reqwest::Client::new();
    let url = proxy.url("/v1/chat/completions");
    let send = |body: String, key: Option<&str>| {
        let mut r = client.post(&url).header("content-type", "application/json").body(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    let good = body("chat", "bad requests", false).to_string();
    let cases: Vec<(String, Option<&str>, u16, &str)> = vec![
        (good.clone(), None, 401, "invalid_api_key"),
        (good.clone(), Some("wrong"), 401, "invalid_api_key"),
        ("{not json".into(), Some(KEY), 400, "invalid_json"),
        (json!({"model": "chat"}).to_string(), Some(KEY), 400, "missing_messages"),
        (
            body("no-such-ladder", "x", false).to_string(),
            Some(KEY),
            404,
            "model_not_found",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x".repeat(5000)}]}).to_string(),
            Some(KEY),
            413,
            "request_too_large",
        ),
    ];
    for (body, key, status, code) in cases {
        let response = send(body.clone(), key).await.expect("request");
        assert_eq!(response.status().as_u16(), status, "{code}");
        let v: Value = response.json().await.expect("error json");
        assert_eq!(v["error"]["code"], code);
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(v["error"]["type"].is_string());
    }
    let ok = send(good, Some(KEY)).await.expect("request");
    assert_eq!(ok.status(), 200);
    // Every client endpoint needs the key too; /metrics is the operator's
    // (served to loopback without an operator key, client key or not).
    assert_eq!(
        client
            .get(proxy.url("/v1/models"))
            .send()
            .await
            .expect("models")
            .status(),
        401
    );
    assert_eq!(
        client
            .get(proxy.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .status(),
        200
    );
    assert_eq!(
        client
            .get(proxy.url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
}

#[tokio::test]
async fn unknown_fields_and_the_requested_model_reach_the_upstream() {
    let upstream = scripted(vec![Reply {
        data: vec![text("m", "hello"), finish("m", "stop")],
        end: End::Done,
    }])
    .await;
    let toml = format!(
        r#"
        [[route]]
        name = "only"
        provider = "openai"
        base_url = "{}"
        model = "{{model}}"
        [[ladder]]
        name = "pass"
        match = "*"
        routes = ["only"]
        "#,
        upstream.base_url()
    );
    let proxy = Serve::new(&toml).start().await;
    let request = json!({
        "model": "vendor-model-7", "messages": [{"role": "user", "content": "hi", "name": "ann"}],
        "temperature": 0.1, "top_p": 0.5, "stop": ["\n\n"], "seed": 42, "user": "u1",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": "auto",
        "response_format": {"type": "text"},
    });
    let v: Value = proxy.chat(&request).await.json().await.expect("json");
    assert_eq!(v["choices"][0]["message"]["content"], "hello");
    let sent = upstream.bodies();
    assert_eq!(sent.len(), 1);
    let sent = &sent[0];
    assert_eq!(sent["model"], "vendor-model-7");
    for key in [
        "temperature",
        "top_p",
        "stop",
        "seed",
        "user",
        "tools",
        "tool_choice",
        "response_format",
    ] {
        assert_eq!(sent[key], request[key], "{key} was not passed through");
    }
    assert_eq!(sent["messages"][0]["name"], "ann");
}

#[tokio::test]
async fn a_failure_inside_a_tool_call_restarts_the_call_on_the_fallback() {
    let call = |args: &str| json!({"index": 0, "function": {"arguments": args}});
    let primary = scripted(vec![Reply {
        data: vec![
            text("p", "Let me check. "),
            tool("p", json!({"index": 0, "id": "call_p", "type": "function", "function": {"name": "weather", "arguments": ""}})),
            tool("p", call("{\"city\": \"Par")),
        ],
        end: End::Cut,
    }])
    .await;
    let fallback = scripted(vec![Reply {
        data: vec![
            tool("f", json!({"index": 0, "id": "call_f", "type": "function", "function": {"name": "weather", "arguments": ""}})),
            tool("f", call("{\"city\": ")),
            tool("f", call("\"Paris\"}")),
            finish("f", "tool_calls"),
        ],
        end: End::Done,
    }])
    .await;
    let toml = format!(
        r#"
        [[route]]
        name = "p"
        provider = "openai"
        base_url = "{}"
        model = "p"
        [[route]]
        name = "f"
        provider = "openai"
        base_url = "{}"
        model = "f"
        [[ladder]]
        name = "tools"
        routes = ["p", "f"]
        "#,
        primary.base_url(),
        fallback.base_url()
    );
    let proxy = Serve::new(&toml).start().await;
    let request = json!({"model": "tools", "messages": [{"role": "user", "content": "weather?"}], "stream": true});
    let sse = Sse::parse(&proxy.chat(&request).await.text().await.expect("body"));
    let chunks = sse.chunks();
    assert_eq!(sse.text(), "Let me check. ");
    let deltas: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/tool_calls").and_then(Value::as_array))
        .flatten()
        .cloned()
        .collect();
    let merged = baton::proxy::wire::merge_tool_calls(&deltas);
    assert_eq!(merged.len(), 1);
    assert_eq!(
        merged[0]["id"], "call_f",
        "only the fallback's complete call reaches the client"
    );
    assert_eq!(merged[0]["function"]["arguments"], "{\"city\": \"Paris\"}");
    // The fallback was asked to continue after the text, not after half a call.
    let sent = fallback.bodies();
    assert_eq!(sent[0]["messages"].as_array().map(Vec::len), Some(2));
    assert_eq!(sent[0]["messages"][1]["content"], "Let me check. ");
    assert!(chunks
        .iter()
        .any(|c| c.pointer("/choices/0/finish_reason") == Some(&json!("tool_calls"))));
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream() {
    let mut upstream = scripted(vec![Reply {
        data: vec![text("m", "first words ")],
        end: End::Hang,
    }])
    .await;
    let toml = format!(
        r#"
        [[route]]
        name = "slow"
        provider = "openai"
        base_url = "{}"
        model = "m"
        stall_ms = 600000
        [[ladder]]
        name = "chat"
        routes = ["slow"]
        "#,
        upstream.base_url()
    );
    let proxy = Serve::new(&toml).start().await;
    let request = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let mut response = proxy.chat(&request).await;
    let first = response.chunk().await.expect("read").expect("a first chunk");
    assert!(String::from_utf8_lossy(&first).contains("first words"));
    let metrics = || proxy.get("/metrics");
    assert!(metrics().await.contains("baton_active_streams 1"));
    drop(response);
    // The upstream sees its connection close (bounded wait, generous for a loaded machine).
    tokio::time::timeout(Duration::from_secs(20), upstream.closed.recv())
        .await
        .expect("upstream connection closed")
        .expect("signal");
    let mut gauge_back = false;
    for _ in 0..200 {
        if metrics().await.contains("baton_active_streams 0") {
            gauge_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gauge_back, "the session was not freed");
    assert!(metrics().await.contains("outcome=\"cancelled\""));
}

#[tokio::test]
async fn models_health_metrics_and_the_event_feed() {
    let proxy = oracle_proxy("stall@10", "none", "").await;
    let models: Value = reqwest::get(proxy.url("/v1/models"))
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(models["data"][0]["id"], "chat");
    assert_eq!(models["data"][0]["routes"], json!(["primary", "fallback"]));
    assert_eq!(proxy.get("/healthz").await, "ok\n");

    let mut feed = reqwest::get(proxy.url("/events")).await.expect("events");
    assert_eq!(feed.headers()["content-type"], "text/event-stream");
    let answer = proxy
        .chat(&body("chat", "events", true))
        .await
        .text()
        .await
        .expect("body");
    assert!(answer.contains("[DONE]"));
    let mut seen = String::new();
    let read = async {
        while let Ok(Some(bytes)) = feed.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&bytes));
            if seen.contains("\"event\":\"finished\"") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("events arrive");
    for kind in [
        "session_started",
        "attempt_opened",
        "first_token",
        "delta",
        "failure",
        "handover",
        "finished",
    ] {
        assert!(
            seen.contains(&format!("\"event\":\"{kind}\"")),
            "no {kind} event in {seen}"
        );
    }
    let metrics = proxy.get("/metrics").await;
    for line in [
        "baton_handovers_total{from=\"primary\",to=\"fallback\",class=\"technical\"} 1",
        "baton_failures_total{route=\"primary\",class=\"technical\",kind=\"stall\"} 1",
        "baton_sessions_total{ladder=\"chat\",outcome=\"complete\",door=\"chat_completions\"} 1",
        "baton_handover_gap_seconds_count 1",
        "baton_ttft_seconds_count{ladder=\"chat\"} 1",
        "baton_breaker_state{route=\"primary\",model=\"big\"} 0",
        "baton_model_attempts_total{route=\"primary\",model=\"big\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn shutdown_lets_streams_finish_within_the_grace_period_then_ends_them() {
    let upstream = scripted(vec![Reply {
        data: vec![text("m", "partial ")],
        end: End::Hang,
    }])
    .await;
    let toml = format!(
        r#"
        [server]
        shutdown_grace_ms = 300
        [[route]]
        name = "slow"
        provider = "openai"
        base_url = "{}"
        model = "m"
        stall_ms = 600000
        [[ladder]]
        name = "chat"
        routes = ["slow"]
        "#,
        upstream.base_url()
    );
    let mut proxy = Serve::new(&toml).start().await;
    let request = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let response = proxy.chat(&request).await;
    proxy.stop();
    let text = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .expect("stream ended")
        .expect("body");
    assert!(text.contains("partial"));
    assert!(text.contains("server_shutdown"), "{text}");
    assert!(!text.contains("[DONE]"));
    let served = tokio::time::timeout(Duration::from_secs(30), proxy.join_handle())
        .await
        .expect("server stopped");
    assert!(matches!(served, Ok(Ok(()))));
}
