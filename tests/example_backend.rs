//! The example chat backend (`examples/chat_backend.rs`), served for real over
//! loopback: its own routes, its own splicer over a primary that drops
//! mid-answer and a healthy fallback, and every wire's answer, streamed and
//! whole, byte for byte the oracle's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

#[allow(dead_code)] // the example's `main` and its argument parsing are not run here
#[path = "../examples/chat_backend.rs"]
mod chat_backend;

use std::sync::Arc;

use baton::oracle::{answer, Style};
use baton::{Message, Role};
use serde_json::{json, Value};
use support::{oracle_upstream, Sse};

const WIRES: [&str; 3] = ["chat", "messages", "responses"];

const SYSTEM: &str = "You answer from inside a chat backend.";

/// The example's app over a `[primary, fallback]` ladder of oracle upstreams
/// with these `faults`, on 127.0.0.1: its base URL and the upstreams' stop handles.
async fn backend(faults: [&str; 2]) -> (String, Vec<tokio::sync::oneshot::Sender<()>>) {
    let mut upstreams = Vec::new();
    let mut stops = Vec::new();
    for (fault, model) in faults.into_iter().zip(["oracle-large", "oracle-small"]) {
        let (base_url, stop) = oracle_upstream(fault, Style::default()).await;
        upstreams.push(chat_backend::Upstream {
            base_url,
            model: model.into(),
        });
        stops.push(stop);
    }
    let app = chat_backend::app(Arc::new(chat_backend::splicer(&upstreams, None)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), stops)
}

fn conversation(wire: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, SYSTEM),
        Message::new(Role::User, format!("embedded {wire}")),
    ]
}

/// The request for `conversation(wire)` in `wire`'s own shape.
fn request(wire: &str, stream: bool) -> Value {
    let user = format!("embedded {wire}");
    match wire {
        "chat" => json!({
            "model": "any",
            "stream": stream,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        }),
        "messages" => json!({
            "model": "any",
            "max_tokens": 1024,
            "stream": stream,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": user}],
        }),
        "responses" => json!({"model": "any", "stream": stream, "instructions": SYSTEM, "input": user}),
        _ => unreachable!("{wire}"),
    }
}

async fn post(base: &str, wire: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/chat/{wire}"))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /chat/{wire}: {e}"))
}

/// The answer text of a streamed body, from `wire`'s own text deltas.
fn streamed_text(wire: &str, sse: &Sse) -> String {
    if wire == "chat" {
        return sse.text();
    }
    sse.chunks()
        .iter()
        .filter_map(|event| match (wire, event["type"].as_str()) {
            ("messages", Some("content_block_delta")) if event["delta"]["type"] == "text_delta" => {
                event["delta"]["text"].as_str().map(str::to_string)
            }
            ("responses", Some("response.output_text.delta")) => event["delta"].as_str().map(str::to_string),
            _ => None,
        })
        .collect()
}

/// Whether a streamed body ended the way `wire`'s SDKs read as a complete answer.
fn completed(wire: &str, sse: &Sse) -> bool {
    match wire {
        "chat" => sse.done(),
        "messages" => sse.last_json()["type"] == "message_stop",
        _ => sse.last_json()["type"] == "response.completed",
    }
}

/// The answer text of a whole (non-streamed) object in `wire`'s shape.
fn whole_text(wire: &str, object: &Value) -> Option<String> {
    let text = match wire {
        "chat" => object.pointer("/choices/0/message/content"),
        "messages" => object.pointer("/content/0/text"),
        _ => object.pointer("/output/0/content/0/text"),
    };
    text.and_then(Value::as_str).map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wire_streams_the_oracles_answer_across_a_mid_stream_drop() {
    let (base, _stops) = backend(["drop@15", "none"]).await;
    for wire in WIRES {
        let response = post(&base, wire, &request(wire, true)).await;
        assert_eq!(response.status(), 200, "{wire}");
        assert_eq!(response.headers()["content-type"], "text/event-stream", "{wire}");
        let sse = Sse::parse(&response.text().await.expect("body"));
        assert_eq!(
            streamed_text(wire, &sse),
            answer(&conversation(wire)),
            "{wire}: streamed text"
        );
        assert!(
            completed(wire, &sse),
            "{wire}: the stream ends complete: {:?}",
            sse.data.last()
        );
        assert!(
            sse.comments
                .iter()
                .any(|c| c.starts_with("baton handover from=primary to=fallback-1")),
            "{wire}: the primary's drop was handed over: {:?}",
            sse.comments
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wire_answers_whole_across_a_mid_stream_drop() {
    let (base, _stops) = backend(["drop@15", "none"]).await;
    for wire in WIRES {
        let response = post(&base, wire, &request(wire, false)).await;
        assert_eq!(response.status(), 200, "{wire}");
        let object: Value = response.json().await.expect("a JSON body");
        assert_eq!(
            whole_text(wire, &object),
            Some(answer(&conversation(wire))),
            "{wire}: {object}"
        );
        assert_eq!(
            object["baton"]["route_chain"],
            json!(["primary", "fallback-1"]),
            "{wire}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_fails_before_any_text_is_each_wires_error_not_a_stream() {
    let (base, _stops) = backend(["503", "503"]).await;
    for wire in WIRES {
        let response = post(&base, wire, &request(wire, true)).await;
        assert!(response.status().is_server_error(), "{wire}: {}", response.status());
        let body: Value = response.json().await.expect("a JSON error body");
        if wire == "messages" {
            assert_eq!(body["type"], "error", "{wire}: Anthropic's error shape: {body}");
            assert!(body["error"]["message"].is_string(), "{body}");
        } else {
            assert!(
                body["error"]["message"].is_string(),
                "{wire}: OpenAI's error shape: {body}"
            );
        }
    }
    let unknown = post(&base, "completions", &request("chat", true)).await;
    assert_eq!(unknown.status(), 404);
}
