//! Usage after a handover (`baton serve` over loopback): only what upstreams
//! reported is presented as tokens, every attempt's reported tokens count (a
//! cut one's prompt is billed too), and `/metrics` has them per route, model
//! and kind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use serde_json::{json, Value};
use support::{finish, http_chunk, raw_upstream, scripted, text, End, Reply, Serve, Served, Sse};
use tokio::io::AsyncWriteExt;

/// A chunk with text and a running usage, as vLLM's `continuous_usage_stats` sends.
fn text_with_usage(t: &str, prompt: u64, completion: u64) -> String {
    json!({"object": "chat.completion.chunk", "model": "m0",
           "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}],
           "usage": {"prompt_tokens": prompt, "completion_tokens": completion}})
    .to_string()
}

fn usage_chunk(prompt: u64, completion: u64) -> String {
    json!({"object": "chat.completion.chunk", "model": "m1", "choices": [],
           "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
    .to_string()
}

/// An upstream that streams `data` payloads, then cuts the body (no finish, no `[DONE]`).
async fn cut_after(data: Vec<String>) -> String {
    raw_upstream(move |mut socket, _, _| {
        let data = data.clone();
        async move {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            for d in data {
                let _ = socket.write_all(&http_chunk(format!("data: {d}\n\n").as_bytes())).await;
            }
            // Dropped here: the chunked body never ends.
        }
    })
    .await
}

async fn proxy(primary: &str, fallback: &str) -> Served {
    let toml = format!(
        "[[route]]\nname = \"primary\"\nprovider = \"openai\"\nbase_url = \"{primary}\"\nmodel = \"m0\"\n\
         [[route]]\nname = \"fallback\"\nprovider = \"openai\"\nbase_url = \"{fallback}\"\nmodel = \"m1\"\n\
         [[ladder]]\nname = \"chat\"\nroutes = [\"primary\", \"fallback\"]\n"
    );
    Serve::new(&toml).start().await
}

async fn ask(proxy: &Served, stream: bool) -> reqwest::Response {
    reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .json(
            &json!({"model": "chat", "stream": stream, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hello"}]}),
        )
        .send()
        .await
        .expect("request")
}

/// The value of the `/metrics` sample of `metric` whose labels include every one of `labels`.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The usage chunk of a streamed answer.
fn usage_of(sse: &Sse) -> Value {
    sse.chunks()
        .into_iter()
        .find(|c| c["choices"].as_array().is_some_and(Vec::is_empty))
        .expect("a usage chunk")
}

#[tokio::test]
async fn a_cut_attempts_reported_prompt_tokens_count_in_usage_and_metrics() {
    let primary = cut_after(vec![text_with_usage("Hello ", 25, 1), text_with_usage("there", 25, 2)]).await;
    let fallback = scripted(vec![Reply {
        data: vec![text("m1", " friend."), finish("m1", "stop"), usage_chunk(40, 3)],
        end: End::Done,
    }])
    .await;
    let proxy = proxy(&primary, &fallback.base_url()).await;
    let response = ask(&proxy, true).await;
    assert_eq!(response.status(), 200);
    let sse = Sse::parse(&response.text().await.expect("body"));
    assert_eq!(sse.text(), "Hello there friend.");
    let chunk = usage_of(&sse);
    assert_eq!(
        chunk["usage"],
        json!({"prompt_tokens": 65, "completion_tokens": 5, "total_tokens": 70}),
        "both attempts' reported tokens: {chunk}"
    );
    assert_eq!(
        chunk["baton"]["usage"],
        json!({"reported_attempts": 2, "unreported_attempts": 0, "unreported_deltas": 0})
    );

    let metrics = proxy.get("/metrics").await;
    let tokens = |route: &str, model: &str, kind: &str| {
        let labels = [
            format!("route=\"{route}\""),
            format!("model=\"{model}\""),
            format!("kind=\"{kind}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        sample(&metrics, "baton_upstream_tokens_total", &labels)
    };
    assert_eq!(
        tokens("primary", "m0", "prompt"),
        Some(25.0),
        "the cut attempt's prompt is billed:\n{metrics}"
    );
    assert_eq!(tokens("primary", "m0", "completion"), Some(2.0));
    assert_eq!(tokens("fallback", "m1", "prompt"), Some(40.0));
    assert_eq!(tokens("fallback", "m1", "completion"), Some(3.0));
}

#[tokio::test]
async fn deltas_are_never_presented_as_tokens() {
    // Neither upstream reports usage: a cut primary, a fallback without a usage chunk.
    let primary = cut_after(vec![text("m0", "Hello "), text("m0", "there")]).await;
    let fallback = scripted(vec![Reply {
        data: vec![text("m1", " friend"), text("m1", "."), finish("m1", "stop")],
        end: End::Done,
    }])
    .await;
    let proxy = proxy(&primary, &fallback.base_url()).await;

    let sse = Sse::parse(&ask(&proxy, true).await.text().await.expect("body"));
    assert_eq!(sse.text(), "Hello there friend.");
    let chunk = usage_of(&sse);
    assert!(chunk["usage"].is_null(), "no upstream reported usage: {chunk}");
    assert_eq!(
        chunk["baton"]["usage"],
        json!({"reported_attempts": 0, "unreported_attempts": 2, "unreported_deltas": 4})
    );

    let whole: Value = ask(&proxy, false).await.json().await.expect("a completion");
    assert_eq!(whole["choices"][0]["message"]["content"], "Hello there friend.");
    assert!(whole["usage"].is_null(), "{whole}");
    assert_eq!(whole["baton"]["usage"]["unreported_deltas"], 4, "{whole}");

    let metrics = proxy.get("/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "baton_upstream_unreported_deltas_total",
            &["route=\"primary\"", "model=\"m0\""]
        ),
        Some(4.0),
        "two sessions, two deltas each:\n{metrics}"
    );
    assert_eq!(
        sample(&metrics, "baton_upstream_tokens_total", &["route=\"primary\""]),
        None,
        "nothing reported, nothing counted as tokens"
    );
}
