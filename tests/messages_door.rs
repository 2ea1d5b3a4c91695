//! The Anthropic Messages door, `POST /v1/messages`, over loopback HTTP: the
//! oracle's answer byte for byte through every fault, one message envelope
//! across handovers (one `message_start`, content block indices that
//! continue), errors before text as Anthropic error bodies, whole answers,
//! tool calls, thinking blocks, `x-api-key`, and an Anthropic route behind
//! the door.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use baton::oracle::{answer, thinking};
use baton::{Message, Role};
use serde_json::{json, Value};
use support::{finish, oracle, scripted, tool, End, Reply, FAULTS};

/// A streamed Messages body as the client read it.
struct Events {
    /// `(event name, data)` in order.
    events: Vec<(String, Value)>,
    comments: Vec<String>,
}

impl Events {
    fn parse(body: &str) -> Events {
        let mut events = Vec::new();
        let mut comments = Vec::new();
        let mut name: Option<String> = None;
        for line in body.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                assert_ne!(d, "[DONE]", "the Messages stream has no [DONE]");
                let data: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{d}: {e}"));
                let n = name.take().unwrap_or_else(|| panic!("data without an event line: {d}"));
                assert_eq!(data["type"].as_str(), Some(n.as_str()), "event line and type agree");
                events.push((n, data));
            } else if let Some(c) = line.strip_prefix(": ") {
                comments.push(c.to_string());
            }
        }
        Events { events, comments }
    }

    fn of(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|(n, _)| n == kind).map(|(_, d)| d).collect()
    }

    /// The concatenated deltas of `kind` (`text_delta`, `thinking_delta`, `input_json_delta`).
    fn deltas(&self, kind: &str, field: &str) -> String {
        self.of("content_block_delta")
            .iter()
            .filter(|d| d["delta"]["type"] == kind)
            .map(|d| d["delta"][field].as_str().expect("delta"))
            .collect()
    }

    fn text(&self) -> String {
        self.deltas("text_delta", "text")
    }

    fn last(&self) -> &(String, Value) {
        self.events.last().expect("at least one event")
    }

    /// The content blocks' types, in index order.
    fn blocks(&self) -> Vec<String> {
        self.of("content_block_start")
            .iter()
            .map(|d| d["content_block"]["type"].as_str().expect("type").to_string())
            .collect()
    }

    /// The envelope every stream must keep, whatever happened upstream.
    fn check_envelope(&self) {
        assert_eq!(self.of("message_start").len(), 1, "one message_start");
        assert_eq!(self.events[0].0, "message_start");
        let id = self.events[0].1["message"]["id"].as_str().expect("id");
        assert!(id.starts_with("msg_"), "{id}");
        // Block indices: each start takes the next one, its deltas and stop name it.
        let mut next = 0;
        let mut open: Option<u64> = None;
        for (name, data) in &self.events {
            match name.as_str() {
                "content_block_start" => {
                    assert!(open.is_none(), "a block started while another was open");
                    assert_eq!(data["index"], json!(next), "block indices continue");
                    open = Some(next);
                    next += 1;
                }
                "content_block_delta" => {
                    assert_eq!(data["index"].as_u64(), Some(open.expect("a delta of an open block")));
                }
                "content_block_stop" => {
                    assert_eq!(
                        data["index"].as_u64(),
                        Some(open.take().expect("stop of an open block"))
                    );
                }
                "message_delta" | "message_stop" | "error" => {
                    assert!(open.is_none() || name == "error", "{name} with a block open")
                }
                _ => {}
            }
        }
        let (last, _) = self.last();
        assert!(last == "message_stop" || last == "error", "ends in {last}");
        if last == "message_stop" {
            assert_eq!(self.of("message_delta").len(), 1);
            assert!(self.of("error").is_empty());
        }
    }
}

fn conversation(tag: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, "You answer through the Messages door."),
        Message::new(Role::User, format!("messages {tag}")),
    ]
}

fn request(model: &str, tag: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You answer through the Messages door."}],
        "messages": [{"role": "user", "content": format!("messages {tag}")}],
        "stream": stream,
    })
}

async fn post(proxy: &support::Served, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(proxy.url("/v1/messages"))
        .json(body)
        .send()
        .await
        .expect("POST /v1/messages")
}

async fn stream(proxy: &support::Served, body: &Value) -> Events {
    let response = post(proxy, body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    Events::parse(&response.text().await.expect("body"))
}

/// A ladder per fault, each `[fault, fallback]`, and a lone `503` ladder that fails before text.
async fn fault_proxy() -> support::Served {
    let (mut toml, mut stops) = support::fault_ladders().await;
    let (down, stop) = oracle("503", 0).await;
    stops.push(stop);
    toml.push_str(&format!(
        "[[route]]\nname = \"down\"\nprovider = \"openai\"\nbase_url = \"{down}\"\nmodel = \"oracle-large\"\n\
         [[ladder]]\nname = \"down\"\nroutes = [\"down\"]\n"
    ));
    support::Serve::new(&toml).upstreams(stops).start().await
}

/// Two parallel calls, streamed the way OpenAI does.
fn parallel_calls(model: &str) -> Vec<String> {
    let args = |index: u32, a: &str| json!({"index": index, "function": {"arguments": a}});
    vec![
        tool(
            model,
            json!({"index": 0, "id": "call_w", "type": "function", "function": {"name": "weather", "arguments": ""}}),
        ),
        tool(model, args(0, "{\"place\": ")),
        tool(model, args(0, "\"Paris\"}")),
        tool(
            model,
            json!({"index": 1, "id": "call_t", "type": "function", "function": {"name": "time", "arguments": ""}}),
        ),
        tool(model, args(1, "{\"pla")),
        tool(model, args(1, "ce\": \"Tokyo\"}")),
        finish(model, "tool_calls"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_streams_the_oracles_answer_in_one_envelope() {
    let proxy = fault_proxy().await;
    for (name, fault) in FAULTS {
        let events = stream(&proxy, &request(name, name, true)).await;
        events.check_envelope();
        let want = answer(&conversation(name));
        assert_eq!(events.text(), want, "{name} ({fault}): streamed text");
        assert_eq!(events.blocks(), ["text"], "{name}: one text block across the handover");
        let (last, _) = events.last();
        assert_eq!(last, "message_stop", "{name}");
        let delta = events.of("message_delta")[0];
        assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{name}");
        let usage = &delta["usage"];
        assert!(usage["input_tokens"].as_u64().is_some_and(|n| n > 0), "{name}: {usage}");
        assert!(
            usage["output_tokens"].as_u64().is_some_and(|n| n > 0),
            "{name}: {usage}"
        );
        if fault != "none" && fault != "503" {
            assert!(
                events.comments.iter().any(|c| c.starts_with("baton handover")),
                "{name}: the handover is a comment: {:?}",
                events.comments
            );
            assert_eq!(delta["baton"]["route_chain"], json!([name, "fallback"]), "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_answers_are_message_objects() {
    let proxy = fault_proxy().await;
    for name in ["drop", "healthy"] {
        let response = post(&proxy, &request(name, name, false)).await;
        assert_eq!(response.status(), 200);
        let v: Value = response.json().await.expect("json");
        let want = answer(&conversation(name));
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert!(v["id"].as_str().expect("id").starts_with("msg_"));
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["content"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v["content"][0]["type"], "text");
        assert_eq!(v["content"][0]["text"].as_str(), Some(want.as_str()));
        assert!(v["usage"]["output_tokens"].as_u64().is_some_and(|n| n > 0), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_before_text_is_a_status_and_an_anthropic_error_body() {
    let proxy = fault_proxy().await;
    for streamed in [true, false] {
        let response = post(&proxy, &request("down", "down", streamed)).await;
        let status = response.status();
        assert!(status.is_server_error(), "{status}");
        let v: Value = response.json().await.expect("an error body");
        assert_eq!(v["type"], "error", "{v}");
        assert!(
            matches!(v["error"]["type"].as_str(), Some("api_error" | "overloaded_error")),
            "{v}"
        );
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let refused = [
        (
            json!({"model": "healthy", "messages": [{"role": "user", "content": "x"}]}),
            "max_tokens",
        ),
        (
            json!({"model": "healthy", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
            "document",
        ),
        (
            json!({"model": "healthy", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "web_search",
        ),
        (
            json!({"model": "healthy", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "sometimes"}}),
            "tool_choice",
        ),
        (json!({"model": "healthy", "max_tokens": 5}), "messages"),
    ];
    for (body, named) in refused {
        let response = post(&proxy, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let v: Value = response.json().await.expect("json");
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let message = v["error"]["message"].as_str().expect("message");
        assert!(message.contains(named), "{message}");
    }
    let response = post(&proxy, &request("nobody", "x", true)).await;
    assert_eq!(response.status(), 404);
    let v: Value = response.json().await.expect("json");
    assert_eq!(v["error"]["type"], "not_found_error", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_after_text_ends_with_an_error_event_never_message_stop() {
    let (url, stop) = oracle("drop@15", 0).await;
    let toml = format!(
        "[[route]]\nname = \"only\"\nprovider = \"openai\"\nbase_url = \"{url}\"\nmodel = \"oracle-large\"\n\
         [[ladder]]\nname = \"only\"\nroutes = [\"only\"]\n"
    );
    let proxy = support::Serve::new(&toml).upstreams(vec![stop]).start().await;
    let events = stream(&proxy, &request("only", "fails", true)).await;
    events.check_envelope();
    assert!(!events.text().is_empty(), "text came before the failure");
    assert!(events.of("message_stop").is_empty(), "never a complete answer");
    let (last, data) = events.last();
    assert_eq!(last, "error");
    assert!(data["error"]["type"].is_string(), "{data}");
    assert!(data["error"]["message"].is_string(), "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_key_is_taken_as_x_api_key_or_bearer() {
    let proxy = support::Serve::new(
        "[server]\napi_key_env = \"MESSAGES_DOOR_KEY\"\n\
         [[route]]\nname = \"oracle\"\nprovider = \"mock\"\nmodel = \"oracle\"\n\
         [[ladder]]\nname = \"m\"\nroutes = [\"oracle\"]\n",
    )
    .env("MESSAGES_DOOR_KEY", "sk-door-test")
    .start()
    .await;
    let send = |headers: Vec<(&'static str, &'static str)>| {
        let mut request = reqwest::Client::new()
            .post(proxy.url("/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}));
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send()
    };
    assert_eq!(send(vec![("x-api-key", "sk-door-test")]).await.unwrap().status(), 200);
    assert_eq!(
        send(vec![("authorization", "Bearer sk-door-test")])
            .await
            .unwrap()
            .status(),
        200
    );
    for headers in [vec![], vec![("x-api-key", "sk-wrong")]] {
        let response = send(headers).await.unwrap();
        assert_eq!(response.status(), 401);
        let v: Value = response.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error", "{v}");
    }
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_go_through_the_door_and_through_a_handover_mid_call() {
    let primary = scripted(vec![Reply {
        data: vec![
            tool("p", json!({"index": 0, "id": "call_p", "type": "function", "function": {"name": "weather", "arguments": ""}})),
            tool("p", json!({"index": 0, "function": {"arguments": "{\"place\": \"Pa"}})),
        ],
        end: End::Cut,
    }])
    .await;
    let fallback = scripted(vec![Reply {
        data: parallel_calls("f"),
        end: End::Done,
    }])
    .await;
    let route = |name: &str, url: String| {
        format!("[[route]]\nname = \"{name}\"\nprovider = \"openai\"\nbase_url = \"{url}\"\nmodel = \"{name}\"\n")
    };
    let toml = format!(
        "{}{}[[ladder]]\nname = \"tools\"\nroutes = [\"p\", \"f\"]\n",
        route("p", primary.base_url()),
        route("f", fallback.base_url()),
    );
    let proxy = support::Serve::new(&toml).start().await;
    let body = json!({
        "model": "tools",
        "stream": true,
        "max_tokens": 300,
        "system": "Use tools.",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris, time in Tokyo?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "dropped", "signature": "sig"},
                {"type": "text", "text": "Checking Oslo first."},
                {"type": "tool_use", "id": "toolu_0", "name": "weather", "input": {"place": "Oslo"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_0", "content": [{"type": "text", "text": "cold"}]},
                {"type": "text", "text": "Now the others."},
            ]},
        ],
        "tools": [
            {"name": "weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"place": {"type": "string"}}}},
            {"name": "time", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "any"},
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "metadata": {"user_id": "u-1"},
    });
    let events = stream(&proxy, &body).await;
    events.check_envelope();
    assert_eq!(events.blocks(), ["tool_use", "tool_use"]);
    let starts = events.of("content_block_start");
    let calls: Vec<(&str, &str)> = starts
        .iter()
        .map(|d| {
            let block = &d["content_block"];
            assert_eq!(block["input"], json!({}), "input starts empty, as Anthropic streams it");
            (block["id"].as_str().expect("id"), block["name"].as_str().expect("name"))
        })
        .collect();
    assert_eq!(
        calls,
        [("call_w", "weather"), ("call_t", "time")],
        "the half call of the cut attempt never reaches the client"
    );
    let json_deltas: Vec<&str> = events
        .of("content_block_delta")
        .iter()
        .map(|d| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().expect("partial_json")
        })
        .collect();
    assert_eq!(json_deltas, ["{\"place\": \"Paris\"}", "{\"place\": \"Tokyo\"}"]);
    assert_eq!(events.of("message_delta")[0]["delta"]["stop_reason"], "tool_use");

    // What went upstream: the Messages request as chat completions.
    let sent = primary.bodies();
    let sent = &sent[0];
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris, time in Tokyo?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": "Checking Oslo first.", "tool_calls": [{"id": "toolu_0", "type": "function", "function": {"name": "weather", "arguments": "{\"place\":\"Oslo\"}"}}]},
            {"role": "tool", "content": "cold", "tool_call_id": "toolu_0"},
            {"role": "user", "content": "Now the others."},
        ]),
        "{sent}"
    );
    assert_eq!(
        sent["tools"],
        json!([
            {"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "time", "parameters": {"type": "object"}}},
        ])
    );
    assert_eq!(sent["tool_choice"], "required");
    assert_eq!(sent["max_tokens"], 300);
    assert_eq!(sent["stop"], json!(["END"]));
    assert_eq!(sent["temperature"], 0.5);
    assert_eq!(sent["user"], "u-1");
    assert!(sent.get("metadata").is_none() && sent.get("system").is_none() && sent.get("stop_sequences").is_none());

    // The whole answer has the same calls, their inputs parsed.
    let mut whole = body.clone();
    whole["stream"] = json!(false);
    let direct = scripted(vec![Reply {
        data: parallel_calls("d"),
        end: End::Done,
    }])
    .await;
    let toml = format!(
        "{}[[ladder]]\nname = \"tools\"\nroutes = [\"d\"]\n",
        route("d", direct.base_url())
    );
    let proxy = support::Serve::new(&toml).start().await;
    let v: Value = post(&proxy, &whole).await.json().await.expect("json");
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    assert_eq!(
        v["content"],
        json!([
            {"type": "tool_use", "id": "call_w", "name": "weather", "input": {"place": "Paris"}},
            {"type": "tool_use", "id": "call_t", "name": "time", "input": {"place": "Tokyo"}},
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_is_its_own_block_before_the_text_across_a_handover() {
    let faults = [("think", "none"), ("think-drop", "drop@4"), ("answer-drop", "drop@40")];
    let (toml, stops) = support::ladders("oracle-think", "oracle-think", &faults).await;
    let proxy = support::Serve::new(&toml).upstreams(stops).start().await;
    for (name, _) in faults {
        let events = stream(&proxy, &request(name, name, true)).await;
        events.check_envelope();
        let messages = conversation(name);
        assert_eq!(events.text(), answer(&messages), "{name}");
        assert_eq!(events.blocks(), ["thinking", "text"], "{name}");
        let thought = events.deltas("thinking_delta", "thinking");
        assert!(!thought.is_empty(), "{name}");
        if name == "think" {
            assert_eq!(thought, thinking(&messages), "{name}");
        } else {
            assert_eq!(events.comments.len(), 1, "{name}: one handover: {:?}", events.comments);
            assert_eq!(
                events.of("message_delta")[0]["baton"]["route_chain"],
                json!([name, "fallback"])
            );
        }
    }
    let v: Value = post(&proxy, &request("think", "think", false))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["content"][0]["type"], "thinking", "{v}");
    assert_eq!(
        v["content"][0]["thinking"].as_str(),
        Some(thinking(&conversation("think")).as_str())
    );
    assert_eq!(v["content"][1]["type"], "text", "{v}");
    assert_eq!(
        v["content"][1]["text"].as_str(),
        Some(answer(&conversation("think")).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_route_answers_behind_the_door_and_continues_a_cut_answer() {
    let (openai, stop_o) = oracle("drop@15", 0).await;
    let (claude, stop_c) = oracle("none", 0).await;
    let toml = format!(
        "[[route]]\nname = \"gpt\"\nprovider = \"openai\"\nbase_url = \"{openai}\"\nmodel = \"oracle-large\"\n\
         [[route]]\nname = \"claude\"\nprovider = \"anthropic\"\nbase_url = \"{claude}\"\nmodel = \"claude-oracle\"\n\
         [[ladder]]\nname = \"claude\"\nroutes = [\"claude\"]\n\
         [[ladder]]\nname = \"mixed\"\nroutes = [\"gpt\", \"claude\"]\n"
    );
    let proxy = support::Serve::new(&toml).upstreams(vec![stop_o, stop_c]).start().await;
    for name in ["claude", "mixed"] {
        let events = stream(&proxy, &request(name, name, true)).await;
        events.check_envelope();
        assert_eq!(events.text(), answer(&conversation(name)), "{name}");
        let (last, _) = events.last();
        assert_eq!(last, "message_stop", "{name}");
        let chain = if name == "mixed" {
            json!(["gpt", "claude"])
        } else {
            json!(["claude"])
        };
        assert_eq!(events.of("message_delta")[0]["baton"]["route_chain"], chain, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_is_batons_estimate_and_refusals_are_anthropic_shaped() {
    let proxy = support::Serve::new(
        "[[route]]\nname = \"oracle\"\nprovider = \"mock\"\nmodel = \"oracle\"\n[[ladder]]\nname = \"m\"\nroutes = [\"oracle\"]\n",
    )
    .start()
    .await;
    let count = |body: Value| {
        reqwest::Client::new()
            .post(proxy.url("/v1/messages/count_tokens"))
            .json(&body)
            .send()
    };
    let short = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let long =
        json!({"model": "m", "system": "Be brief.", "messages": [{"role": "user", "content": "word ".repeat(400)}]});
    let mut counts = Vec::new();
    for body in [short, long] {
        let response = count(body).await.unwrap();
        assert_eq!(response.status(), 200);
        let v: Value = response.json().await.unwrap();
        counts.push(v["input_tokens"].as_u64().expect("input_tokens"));
    }
    assert!(counts[0] > 0 && counts[1] > counts[0] + 400, "{counts:?}");
    let response = count(json!({"model": "m"})).await.unwrap();
    assert_eq!(response.status(), 400);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("messages"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_drop_params_never_reach_its_upstream_and_other_routes_get_them() {
    let answer = || Reply {
        data: vec![support::text("u", "Hi."), finish("u", "stop")],
        end: End::Done,
    };
    let dropping = scripted(vec![answer()]).await;
    let keeping = scripted(vec![answer()]).await;
    let toml = format!(
        "[[route]]\nname = \"dropping\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"u\"\n\
         drop_params = [\"top_k\", \"thinking\"]\n\
         [[route]]\nname = \"keeping\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"u\"\n\
         [[ladder]]\nname = \"dropping\"\nroutes = [\"dropping\"]\n\
         [[ladder]]\nname = \"keeping\"\nroutes = [\"keeping\"]\n",
        dropping.base_url(),
        keeping.base_url(),
    );
    let proxy = support::Serve::new(&toml).start().await;
    for (ladder, upstream) in [("dropping", &dropping), ("keeping", &keeping)] {
        let mut body = request(ladder, ladder, true);
        body["top_k"] = json!(40);
        body["temperature"] = json!(0.3);
        body["thinking"] = json!({"type": "enabled", "budget_tokens": 2048});
        let events = stream(&proxy, &body).await;
        events.check_envelope();
        assert_eq!(events.text(), "Hi.", "{ladder}");
        let sent = upstream.bodies();
        assert_eq!(sent.len(), 1, "{ladder}: {sent:?}");
        let sent = &sent[0];
        assert_eq!(sent["temperature"], 0.3, "{ladder}: {sent}");
        assert_eq!(sent["max_tokens"], 1024, "{ladder}: {sent}");
        if ladder == "dropping" {
            assert!(sent.get("top_k").is_none() && sent.get("thinking").is_none(), "{sent}");
        } else {
            assert_eq!(sent["top_k"], 40, "{sent}");
            assert_eq!(
                sent["thinking"],
                json!({"type": "enabled", "budget_tokens": 2048}),
                "{sent}"
            );
        }
    }
}
