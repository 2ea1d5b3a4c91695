//! The official `anthropic` Python SDK through the Messages door:
//! `messages.create(stream=True)`, the `messages.stream` helper (its
//! `text_stream` and `get_final_message`) and a whole `messages.create` read
//! the oracle's answer byte for byte through every fault, mid-thinking and
//! mid-tool-call; an error before text is the SDK's typed status exception,
//! and an error after text is raised, never a final message. `.ci/run`
//! installs the SDK, sets `BATON_ANTHROPIC_PYTHON` and runs these `#[ignore]`d
//! tests with `--ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use baton::oracle::answer;
use baton::{Message, Role};
use serde_json::{json, Value};
use support::{finish, oracle, scripted, tool, End, Reply, FAULTS};

fn conversation(model: &str, mode: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, "You are an SDK test."),
        Message::new(Role::User, format!("sdk {model} {mode}")),
    ]
}

/// Runs `tests/anthropic_sdk.py` with the SDK's python and reads its JSON lines.
async fn run_sdk(base: &str, models: &[&str]) -> Vec<Value> {
    let python = std::env::var_os("BATON_ANTHROPIC_PYTHON")
        .expect("set BATON_ANTHROPIC_PYTHON to a python with the anthropic SDK installed (bash .ci/run does)");
    let mut args = vec![base];
    args.extend_from_slice(models);
    support::run_script(python, "anthropic_sdk.py", &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the anthropic Python SDK in BATON_ANTHROPIC_PYTHON; .ci/run runs it"]
async fn the_official_sdk_reads_the_oracles_answer_through_the_messages_door_through_every_fault() {
    let (toml, stops) = support::fault_ladders().await;
    let proxy = support::Serve::new(&toml).upstreams(stops).start().await;
    // The SDK appends `/v1/messages` itself.
    let base = proxy.url("");
    let models: Vec<&str> = FAULTS.iter().map(|(name, _)| *name).collect();
    let lines = run_sdk(&base, &models).await;
    assert_eq!(lines.len(), FAULTS.len(), "{lines:?}");
    for line in lines {
        let model = line["model"].as_str().expect("model");
        assert!(line["error"].is_null(), "{model}: the SDK raised {}", line["error"]);
        assert_eq!(line["raw_last"], "message_stop", "{model}");
        for (field, mode) in [
            ("raw", "raw"),
            ("text_stream", "stream"),
            ("final", "stream"),
            ("whole", "whole"),
        ] {
            assert_eq!(
                line[field].as_str(),
                Some(answer(&conversation(model, mode)).as_str()),
                "{model} ({field}): the SDK's text differs from the oracle's answer"
            );
        }
        assert_eq!(line["final_blocks"], json!(["text"]), "{model}");
        assert_eq!(line["final_stop"], "end_turn", "{model}");
        assert_eq!(line["whole_stop"], "end_turn", "{model}");
        let usage = line["usage"].as_array().expect("usage");
        assert!(
            usage.iter().all(|n| n.as_u64().is_some_and(|n| n > 0)),
            "{model}: {usage:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the anthropic Python SDK in BATON_ANTHROPIC_PYTHON; .ci/run runs it"]
async fn errors_are_the_sdks_typed_exception_before_text_and_raised_after() {
    let (down, stop_d) = oracle("503", 0).await;
    let (cut, stop_c) = oracle("drop@15", 0).await;
    let toml = format!(
        "[[route]]\nname = \"down\"\nprovider = \"openai\"\nbase_url = \"{down}\"\nmodel = \"oracle-large\"\n\
         [[ladder]]\nname = \"down\"\nroutes = [\"down\"]\n\
         [[route]]\nname = \"cut\"\nprovider = \"openai\"\nbase_url = \"{cut}\"\nmodel = \"oracle-large\"\n\
         [[ladder]]\nname = \"cut\"\nroutes = [\"cut\"]\n"
    );
    let proxy = support::Serve::new(&toml).upstreams(vec![stop_d, stop_c]).start().await;
    let lines = run_sdk(&proxy.url(""), &["down", "cut"]).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    // Before any text: an HTTP error status, which the SDK raises as its status error class.
    let down = &lines[0];
    let error = &down["error"];
    assert_eq!(error["stage"], "raw", "{down}");
    assert!(error["status"].as_u64().is_some_and(|s| s >= 500), "a 5xx: {down}");
    assert!(
        [
            "InternalServerError",
            "APIStatusError",
            "ServiceUnavailableError",
            "OverloadedError"
        ]
        .contains(&error["class"].as_str().unwrap_or("")),
        "{down}"
    );
    assert!(
        matches!(error["type"].as_str(), Some("api_error" | "overloaded_error")),
        "the Anthropic error body's type: {down}"
    );
    // After text: the stream's error event is raised; no final message.
    let cut = &lines[1];
    assert_eq!(cut["error"]["stage"], "raw", "{cut}");
    assert_eq!(cut["error"]["class"], "APIStatusError", "{cut}");
    assert!(cut.get("raw_last").is_none(), "{cut}");
    assert!(
        !cut["partial"].as_str().unwrap_or("").is_empty(),
        "text came before the error: {cut}"
    );
    assert!(
        answer(&conversation("cut", "raw")).starts_with(cut["partial"].as_str().unwrap_or("")),
        "what came is the answer's beginning: {cut}"
    );
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
#[ignore = "needs the anthropic Python SDK in BATON_ANTHROPIC_PYTHON; .ci/run runs it"]
async fn the_sdk_assembles_thinking_and_tool_use_blocks_through_handovers_mid_thinking_and_mid_call() {
    let mut stops = Vec::new();
    let (fallback, stop) = oracle("none", 2).await;
    stops.push(stop);
    let (think, stop) = oracle("drop@4", 0).await;
    stops.push(stop);
    let cut = scripted(vec![Reply {
        data: vec![
            tool(
                "p",
                json!({"index": 0, "id": "call_p", "type": "function", "function": {"name": "weather", "arguments": ""}}),
            ),
            tool("p", json!({"index": 0, "function": {"arguments": "{\"place\": \"Pa"}})),
        ],
        end: End::Cut,
    }])
    .await;
    let calls = scripted(vec![Reply {
        data: parallel_calls("f"),
        end: End::Done,
    }])
    .await;
    let toml = format!(
        "[[route]]\nname = \"fallback\"\nprovider = \"openai\"\nbase_url = \"{fallback}\"\nmodel = \"oracle-think\"\ncontinuation = \"instruct\"\n\
         [[route]]\nname = \"think\"\nprovider = \"openai\"\nbase_url = \"{think}\"\nmodel = \"oracle-think\"\n\
         [[ladder]]\nname = \"mid-thinking\"\nroutes = [\"think\", \"fallback\"]\n\
         [[route]]\nname = \"p\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"p\"\n\
         [[route]]\nname = \"f\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"f\"\n\
         [[ladder]]\nname = \"mid-call\"\nroutes = [\"p\", \"f\"]\n",
        cut.base_url(),
        calls.base_url(),
    );
    let proxy = support::Serve::new(&toml).upstreams(stops).start().await;
    let lines = run_sdk(&proxy.url(""), &["mid-thinking", "mid-call"]).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let thought = &lines[0];
    assert!(thought["error"].is_null(), "{thought}");
    assert_eq!(thought["final_blocks"], json!(["thinking", "text"]), "{thought}");
    assert!(!thought["thinking"].as_str().unwrap_or("").is_empty(), "{thought}");
    for (field, mode) in [
        ("raw", "raw"),
        ("text_stream", "stream"),
        ("final", "stream"),
        ("whole", "whole"),
    ] {
        assert_eq!(
            thought[field].as_str(),
            Some(answer(&conversation("mid-thinking", mode)).as_str()),
            "{field}"
        );
    }
    let call = &lines[1];
    assert!(call["error"].is_null(), "{call}");
    let expected = json!([["call_w", "weather", {"place": "Paris"}], ["call_t", "time", {"place": "Tokyo"}]]);
    assert_eq!(call["tools"], expected, "{call}");
    assert_eq!(call["whole_tools"], expected, "{call}");
    assert_eq!(call["final_blocks"], json!(["tool_use", "tool_use"]), "{call}");
    assert_eq!(call["final_stop"], "tool_use", "{call}");
    assert_eq!(call["whole_stop"], "tool_use", "{call}");
    assert_eq!(call["text_stream"], "", "{call}");
}
