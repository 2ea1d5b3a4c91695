//! The OpenAI Responses door, `POST /v1/responses`, over loopback HTTP: the
//! oracle's answer byte for byte through every fault, one response envelope
//! across handovers (one `response.created`, output indices that continue,
//! sequence numbers that only increase), errors before text as OpenAI error
//! bodies, whole answers, function calls, reasoning items, and an Anthropic
//! route behind the door.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use baton::oracle::{answer, thinking};
use baton::{Message, Role};
use serde_json::{json, Value};
use support::{finish, oracle, scripted, tool, End, Reply, FAULTS};

/// A streamed Responses body as the client read it.
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
                assert_ne!(d, "[DONE]", "the Responses stream has no [DONE]");
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

    fn text(&self) -> String {
        self.of("response.output_text.delta")
            .iter()
            .map(|d| d["delta"].as_str().expect("delta"))
            .collect()
    }

    fn last(&self) -> &(String, Value) {
        self.events.last().expect("at least one event")
    }

    /// The envelope every stream must keep, whatever happened upstream.
    fn check_envelope(&self) {
        assert_eq!(self.of("response.created").len(), 1, "one response.created");
        assert_eq!(self.events[0].0, "response.created");
        assert_eq!(self.events[1].0, "response.in_progress");
        let id = self.events[0].1["response"]["id"].as_str().expect("id").to_string();
        assert!(id.starts_with("resp_"), "{id}");
        for (i, (_, data)) in self.events.iter().enumerate() {
            assert_eq!(
                data["sequence_number"],
                json!(i),
                "sequence numbers count from 0 without gaps"
            );
            if let Some(r) = data.get("response") {
                assert_eq!(r["id"].as_str(), Some(id.as_str()), "one response id");
            }
        }
        // Output indices: each added item takes the next one, and its events name it.
        let mut next = 0;
        let mut open: Option<(u64, String)> = None;
        for (name, data) in &self.events {
            match name.as_str() {
                "response.output_item.added" => {
                    assert!(open.is_none(), "an item was added while another was open");
                    assert_eq!(data["output_index"], json!(next), "output indices continue");
                    let item_id = data["item"]["id"].as_str().expect("item id").to_string();
                    open = Some((next, item_id));
                    next += 1;
                }
                "response.output_item.done" => {
                    let (index, item_id) = open.take().expect("done of an open item");
                    assert_eq!(data["output_index"], json!(index));
                    assert_eq!(data["item"]["id"].as_str(), Some(item_id.as_str()));
                }
                n if n.starts_with("response.output_text")
                    || n.starts_with("response.reasoning_text")
                    || n.starts_with("response.content_part")
                    || n.starts_with("response.function_call_arguments") =>
                {
                    let (index, item_id) = open.as_ref().expect("an event of an open item");
                    assert_eq!(data["output_index"], json!(index), "{n}");
                    assert_eq!(data["item_id"].as_str(), Some(item_id.as_str()), "{n}");
                }
                _ => {}
            }
        }
        let (last, _) = self.last();
        if last == "response.completed" || last == "response.incomplete" {
            assert!(open.is_none(), "a finished response has no open item");
        }
    }
}

fn conversation(tag: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, "You answer through the Responses door."),
        Message::new(Role::User, format!("responses {tag}")),
    ]
}

fn request(model: &str, tag: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "instructions": "You answer through the Responses door.",
        "input": format!("responses {tag}"),
        "stream": stream,
    })
}

async fn post(proxy: &support::Served, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(proxy.url("/v1/responses"))
        .json(body)
        .send()
        .await
        .expect("POST /v1/responses")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_streams_the_oracles_answer_in_one_envelope() {
    let proxy = fault_proxy().await;
    for (name, fault) in FAULTS {
        let events = stream(&proxy, &request(name, name, true)).await;
        events.check_envelope();
        let want = answer(&conversation(name));
        assert_eq!(events.text(), want, "{name} ({fault}): streamed text");
        let (last, done) = events.last();
        assert_eq!(last, "response.completed", "{name}");
        let response = &done["response"];
        assert_eq!(response["status"], "completed");
        // The oracle reports usage: summed over every attempt, in Responses' shape.
        let usage = &response["usage"];
        let (input, output) = (usage["input_tokens"].as_u64(), usage["output_tokens"].as_u64());
        assert!(
            input.is_some_and(|n| n > 0) && output.is_some_and(|n| n > 0),
            "{name}: {usage}"
        );
        assert_eq!(usage["total_tokens"].as_u64(), Some(input.unwrap() + output.unwrap()));
        let output = response["output"].as_array().expect("output");
        assert_eq!(
            output.len(),
            1,
            "{name}: one message item across the handover: {output:?}"
        );
        assert_eq!(output[0]["type"], "message");
        assert_eq!(output[0]["content"][0]["text"].as_str(), Some(want.as_str()));
        let done_text = events.of("response.output_text.done");
        assert_eq!(done_text.len(), 1);
        assert_eq!(done_text[0]["text"].as_str(), Some(want.as_str()));
        if fault != "none" && fault != "503" {
            assert!(
                events.comments.iter().any(|c| c.starts_with("baton handover")),
                "{name}: the handover is a comment: {:?}",
                events.comments
            );
            assert_eq!(response["baton"]["route_chain"], json!([name, "fallback"]), "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_answers_are_response_objects() {
    let proxy = fault_proxy().await;
    for name in ["drop", "healthy"] {
        let response = post(&proxy, &request(name, name, false)).await;
        assert_eq!(response.status(), 200);
        let v: Value = response.json().await.expect("json");
        let want = answer(&conversation(name));
        assert_eq!(v["object"], "response");
        assert!(v["id"].as_str().expect("id").starts_with("resp_"));
        assert_eq!(v["status"], "completed");
        assert_eq!(v["output_text"].as_str(), Some(want.as_str()));
        assert_eq!(v["output"][0]["type"], "message");
        assert_eq!(v["output"][0]["role"], "assistant");
        assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(v["output"][0]["content"][0]["text"].as_str(), Some(want.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_before_text_is_a_status_and_an_openai_error_body() {
    let proxy = fault_proxy().await;
    for streamed in [true, false] {
        let response = post(&proxy, &request("down", "down", streamed)).await;
        let status = response.status();
        assert!(status.is_server_error(), "{status}");
        let v: Value = response.json().await.expect("an error body");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["error"]["code"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
    }
    // Requests baton cannot honour say so, before any upstream is asked.
    let refused = [
        (
            json!({"model": "healthy", "input": "x", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"model": "healthy", "input": "x", "conversation": "conv_1"}),
            "conversation",
        ),
        (
            json!({"model": "healthy", "input": "x", "tools": [{"type": "web_search"}]}),
            "web_search",
        ),
        (
            json!({"model": "healthy", "input": [{"type": "item_reference", "id": "x"}]}),
            "item_reference",
        ),
        (json!({"model": "healthy"}), "input"),
    ];
    for (body, named) in refused {
        let response = post(&proxy, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let v: Value = response.json().await.expect("json");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let message = v["error"]["message"].as_str().expect("message");
        assert!(message.contains(named), "{message}");
    }
    // `store` alone is accepted: baton keeps nothing, and says nothing of it.
    let stored = json!({"model": "healthy", "input": "responses healthy", "instructions": "You answer through the Responses door.", "store": true});
    let response = post(&proxy, &stored).await;
    assert_eq!(response.status(), 200);
    let v: Value = response.json().await.expect("json");
    assert_eq!(
        v["output_text"].as_str(),
        Some(answer(&conversation("healthy")).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_after_text_ends_with_response_failed() {
    let (url, stop) = oracle("drop@15", 0).await;
    let toml = format!(
        "[[route]]\nname = \"only\"\nprovider = \"openai\"\nbase_url = \"{url}\"\nmodel = \"oracle-large\"\n\
         [[ladder]]\nname = \"only\"\nroutes = [\"only\"]\n"
    );
    let proxy = support::Serve::new(&toml).upstreams(vec![stop]).start().await;
    let events = stream(&proxy, &request("only", "fails", true)).await;
    events.check_envelope();
    assert!(!events.text().is_empty(), "text came before the failure");
    assert!(events.of("response.completed").is_empty(), "never a completed answer");
    let (last, data) = events.last();
    assert_eq!(last, "response.failed");
    assert_eq!(data["response"]["status"], "failed");
    assert!(data["response"]["error"]["code"].is_string(), "{data}");
    assert!(data["response"]["error"]["message"].is_string(), "{data}");
    assert_eq!(data["response"]["output"][0]["status"], "incomplete");
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
async fn function_calls_go_through_the_door_and_through_a_handover_mid_call() {
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
        "instructions": "Use tools.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris, time in Tokyo?"}]},
            {"type": "reasoning", "id": "rs_old", "summary": []},
            {"type": "function_call", "call_id": "call_0", "name": "weather", "arguments": "{\"place\":\"Oslo\"}"},
            {"type": "function_call_output", "call_id": "call_0", "output": "cold"},
            {"type": "message", "role": "user", "content": "Now the others."},
        ],
        "tools": [
            {"type": "function", "name": "weather", "description": "Weather", "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}, "strict": true},
            {"type": "function", "name": "time", "parameters": {"type": "object"}},
        ],
        "tool_choice": "auto",
        "max_output_tokens": 300,
        "reasoning": {"effort": "low"},
        "metadata": {"k": "v"},
    });
    let events = stream(&proxy, &body).await;
    events.check_envelope();
    let (last, done) = events.last();
    assert_eq!(last, "response.completed");
    let output = done["response"]["output"].as_array().expect("output");
    let calls: Vec<(&str, &str, &str)> = output
        .iter()
        .map(|item| {
            assert_eq!(item["type"], "function_call", "{item}");
            assert!(item["id"].as_str().expect("id").starts_with("fc_"));
            (
                item["call_id"].as_str().expect("call_id"),
                item["name"].as_str().expect("name"),
                item["arguments"].as_str().expect("arguments"),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            ("call_w", "weather", "{\"place\": \"Paris\"}"),
            ("call_t", "time", "{\"place\": \"Tokyo\"}")
        ],
        "the half call of the cut attempt never reaches the client"
    );
    let deltas: Vec<&str> = events
        .of("response.function_call_arguments.delta")
        .iter()
        .map(|d| d["delta"].as_str().expect("delta"))
        .collect();
    assert_eq!(deltas, ["{\"place\": \"Paris\"}", "{\"place\": \"Tokyo\"}"]);
    let added = events.of("response.output_item.added");
    assert_eq!(added[0]["item"]["arguments"], "", "arguments start empty");

    // What went upstream: the Responses request as chat completions.
    let sent = primary.bodies();
    let sent = &sent[0];
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris, time in Tokyo?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": "{\"place\":\"Oslo\"}"}}]},
            {"role": "tool", "content": "cold", "tool_call_id": "call_0"},
            {"role": "user", "content": "Now the others."},
        ]),
        "{sent}"
    );
    assert_eq!(
        sent["tools"],
        json!([
            {"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}, "strict": true}},
            {"type": "function", "function": {"name": "time", "parameters": {"type": "object"}}},
        ])
    );
    assert_eq!(sent["tool_choice"], "auto");
    assert_eq!(sent["max_tokens"], 300);
    assert_eq!(sent["reasoning_effort"], "low");
    assert!(sent.get("metadata").is_none() && sent.get("input").is_none() && sent.get("instructions").is_none());

    // The whole answer has the same calls.
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
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["output"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["output"][1]["call_id"], "call_t");
    assert_eq!(v["output"][1]["arguments"], "{\"place\": \"Tokyo\"}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_is_its_own_item_before_the_message_across_a_handover() {
    let faults = [("think", "none"), ("think-drop", "drop@4"), ("answer-drop", "drop@40")];
    let (toml, stops) = support::ladders("oracle-think", "oracle-think", &faults).await;
    let proxy = support::Serve::new(&toml).upstreams(stops).start().await;
    for (name, _) in faults {
        let events = stream(&proxy, &request(name, name, true)).await;
        events.check_envelope();
        let messages = conversation(name);
        assert_eq!(events.text(), answer(&messages), "{name}");
        let (last, done) = events.last();
        assert_eq!(last, "response.completed", "{name}");
        let output = done["response"]["output"].as_array().expect("output");
        let kinds: Vec<&str> = output.iter().map(|i| i["type"].as_str().expect("type")).collect();
        assert_eq!(kinds, ["reasoning", "message"], "{name}");
        let reasoning: String = events
            .of("response.reasoning_text.delta")
            .iter()
            .map(|d| d["delta"].as_str().expect("delta"))
            .collect();
        assert!(!reasoning.is_empty(), "{name}");
        assert_eq!(output[0]["content"][0]["text"].as_str(), Some(reasoning.as_str()));
        if name == "think" {
            assert_eq!(reasoning, thinking(&messages), "{name}");
        } else {
            assert_eq!(events.comments.len(), 1, "{name}: one handover: {:?}", events.comments);
            assert_eq!(done["response"]["baton"]["route_chain"], json!([name, "fallback"]));
        }
    }
    // Whole, the reasoning item comes first too.
    let v: Value = post(&proxy, &request("think", "think", false))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["output"][0]["type"], "reasoning", "{v}");
    assert_eq!(v["output"][1]["type"], "message", "{v}");
    assert_eq!(v["output_text"].as_str(), Some(answer(&conversation("think")).as_str()));
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
        let (last, done) = events.last();
        assert_eq!(last, "response.completed", "{name}");
        assert_eq!(done["response"]["model"], "claude-oracle", "{name}");
        let chain = if name == "mixed" {
            json!(["gpt", "claude"])
        } else {
            json!(["claude"])
        };
        assert_eq!(done["response"]["baton"]["route_chain"], chain, "{name}");
    }
}
