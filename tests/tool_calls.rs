//! Parallel tool calls through `baton serve`, in the shapes clients assemble:
//! streamed, one complete call per chunk; whole, every call in the message.
//! (tests/openai_sdk.rs checks the same with the openai SDK and LangChain.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use serde_json::{json, Value};
use support::{finish, scripted, tool, End, Reply, Serve, Sse};

async fn proxy_with_two_calls() -> support::Served {
    let args = |index: u32, a: &str| json!({"index": index, "function": {"arguments": a}});
    let upstream = scripted(vec![Reply {
        data: vec![
            tool("m", json!({"index": 0, "id": "call_w", "type": "function", "function": {"name": "weather", "arguments": ""}})),
            tool("m", json!({"index": 1, "id": "call_t", "type": "function", "function": {"name": "time", "arguments": "{\"pla"}})),
            tool("m", args(0, "{\"place\": \"Paris\"}")),
            tool("m", args(1, "ce\": \"Tokyo\"}")),
            finish("m", "tool_calls"),
        ],
        end: End::Done,
    }])
    .await;
    let toml = format!(
        "[[route]]\nname = \"m\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n[[ladder]]\nname = \"tools\"\nroutes = [\"m\"]\n",
        upstream.base_url()
    );
    Serve::new(&toml).start().await
}

fn expected() -> [Value; 2] {
    [
        json!({"id": "call_w", "type": "function", "function": {"name": "weather", "arguments": "{\"place\": \"Paris\"}"}}),
        json!({"id": "call_t", "type": "function", "function": {"name": "time", "arguments": "{\"place\": \"Tokyo\"}"}}),
    ]
}

async fn ask(proxy: &support::Served, stream: bool) -> reqwest::Response {
    let request =
        json!({"model": "tools", "stream": stream, "messages": [{"role": "user", "content": "weather and time?"}]});
    reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .expect("the proxy answers")
}

#[tokio::test]
async fn streamed_calls_arrive_one_complete_call_per_chunk_with_their_own_index() {
    let proxy = proxy_with_two_calls().await;
    let sse = Sse::parse(&ask(&proxy, true).await.text().await.expect("body"));
    let chunks = sse.chunks();
    let lists: Vec<&Vec<Value>> = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/tool_calls").and_then(Value::as_array))
        .collect();
    assert_eq!(lists.len(), 2, "one chunk per call: {lists:?}");
    for (index, (list, call)) in lists.iter().zip(expected()).enumerate() {
        let mut call = call;
        call["index"] = json!(index);
        assert_eq!(list.as_slice(), [call], "chunk {index}");
    }
    assert!(sse.done());
}

#[tokio::test]
async fn a_whole_answer_carries_every_call_and_no_text() {
    let proxy = proxy_with_two_calls().await;
    let answer: Value = ask(&proxy, false).await.json().await.expect("json");
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["tool_calls"], json!(expected()));
    assert_eq!(
        message["content"],
        Value::Null,
        "as OpenAI answers a call without words"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
}
