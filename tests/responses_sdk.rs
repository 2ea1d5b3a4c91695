//! The official `openai` Python SDK through the Responses door:
//! `responses.create(stream=True)`, the `responses.stream` helper and a whole
//! `responses.create` read the oracle's answer byte for byte through every
//! fault; an error before text is the SDK's typed exception, and an error
//! after text never becomes a final response. `.ci/run` installs the SDK in a
//! virtual environment, sets `BATON_OPENAI_PYTHON` and runs these `#[ignore]`d
//! tests with `--ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use baton::oracle::answer;
use baton::{Message, Role};
use support::{oracle, run_python, FAULTS};

fn conversation(model: &str, mode: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, "You are an SDK test."),
        Message::new(Role::User, format!("sdk {model} {mode}")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the openai Python SDK in BATON_OPENAI_PYTHON; .ci/run runs it"]
async fn the_official_sdk_reads_the_oracles_answer_through_the_responses_door_through_every_fault() {
    let (toml, stops) = support::fault_ladders().await;
    let proxy = support::Serve::new(&toml).upstreams(stops).start().await;
    let base = proxy.url("/v1");
    let mut args = vec![base.as_str()];
    args.extend(FAULTS.iter().map(|(name, _)| *name));
    let lines = run_python("responses_sdk.py", &args).await;
    assert_eq!(lines.len(), FAULTS.len(), "{lines:?}");
    for line in lines {
        let model = line["model"].as_str().expect("model");
        assert!(line["error"].is_null(), "{model}: the SDK raised {}", line["error"]);
        assert_eq!(line["create_stream_last"], "response.completed", "{model}");
        for mode in ["create_stream", "helper", "whole"] {
            assert_eq!(
                line[mode].as_str(),
                Some(answer(&conversation(model, mode)).as_str()),
                "{model} ({mode}): the SDK's text differs from the oracle's answer"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the openai Python SDK in BATON_OPENAI_PYTHON; .ci/run runs it"]
async fn errors_are_the_sdks_typed_exception_before_text_and_never_a_final_response_after() {
    let (down, stop_d) = oracle("503", 0).await;
    let (cut, stop_c) = oracle("drop@15", 0).await;
    let toml = format!(
        "[[route]]\nname = \"down\"\nprovider = \"openai\"\nbase_url = \"{down}\"\nmodel = \"oracle-large\"\n\
         [[ladder]]\nname = \"down\"\nroutes = [\"down\"]\n\
         [[route]]\nname = \"cut\"\nprovider = \"openai\"\nbase_url = \"{cut}\"\nmodel = \"oracle-large\"\n\
         [[ladder]]\nname = \"cut\"\nroutes = [\"cut\"]\n"
    );
    let proxy = support::Serve::new(&toml).upstreams(vec![stop_d, stop_c]).start().await;
    let base = proxy.url("/v1");
    let lines = run_python("responses_sdk.py", &[&base, "down", "cut"]).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    // Before any text: an HTTP error status, which the SDK raises as its status error class.
    let down = &lines[0];
    let error = &down["error"];
    assert_eq!(error["stage"], "create_stream", "{down}");
    assert!(
        error["status"].as_u64().is_some_and(|s| s >= 500),
        "a 5xx status error: {down}"
    );
    assert!(
        [
            "InternalServerError",
            "APIStatusError",
            "ServiceUnavailableError",
            "BadGatewayError"
        ]
        .contains(&error["class"].as_str().unwrap_or("")),
        "{down}"
    );
    assert!(error["code"].is_string(), "the OpenAI error body's code: {down}");
    // After text: the raw stream ends with response.failed, and the helper has no final response.
    let cut = &lines[1];
    assert_eq!(cut["create_stream_last"], "response.failed", "{cut}");
    assert!(
        !cut["create_stream"].as_str().unwrap_or("").is_empty(),
        "text came first: {cut}"
    );
    assert_eq!(cut["error"]["stage"], "helper", "{cut}");
    assert_eq!(cut["error"]["class"], "RuntimeError", "{cut}");
    assert!(
        cut["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("response.completed"),
        "{cut}"
    );
}

/// Two parallel calls, streamed the way OpenAI does.
fn parallel_calls(model: &str) -> Vec<String> {
    use serde_json::json;
    use support::{finish, tool};
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
#[ignore = "needs the openai Python SDK in BATON_OPENAI_PYTHON; .ci/run runs it"]
async fn the_sdk_assembles_reasoning_and_function_call_items_through_handovers_mid_reasoning_and_mid_call() {
    use serde_json::json;
    use support::{scripted, tool, End, Reply};
    let mut stops = Vec::new();
    let (fallback, stop) = oracle("none", 2).await;
    stops.push(stop);
    let (think, stop) = oracle("drop@4", 0).await;
    stops.push(stop);
    // The primary dies in the middle of a call's arguments, every time; the fallback makes two calls.
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
         [[ladder]]\nname = \"mid-reasoning\"\nroutes = [\"think\", \"fallback\"]\n\
         [[route]]\nname = \"p\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"p\"\n\
         [[route]]\nname = \"f\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"f\"\n\
         [[ladder]]\nname = \"mid-call\"\nroutes = [\"p\", \"f\"]\n",
        cut.base_url(),
        calls.base_url(),
    );
    let proxy = support::Serve::new(&toml).upstreams(stops).start().await;
    let base = proxy.url("/v1");
    let lines = run_python("responses_sdk_items.py", &[&base, "mid-reasoning", "mid-call"]).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let reasoning = &lines[0];
    assert!(reasoning["error"].is_null(), "{reasoning}");
    for mode in ["stream", "whole"] {
        let items = reasoning[mode].as_array().expect("items");
        let kinds: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap_or("")).collect();
        assert_eq!(kinds, ["reasoning", "message"], "{mode}: {reasoning}");
        assert!(!items[0]["text"].as_str().unwrap_or("").is_empty(), "{reasoning}");
        let want = answer(&conversation("mid-reasoning", mode));
        assert_eq!(items[1]["text"].as_str(), Some(want.as_str()), "{mode}");
        assert_eq!(
            reasoning[format!("{mode}_text")].as_str(),
            Some(want.as_str()),
            "{mode}"
        );
    }
    let call = &lines[1];
    assert!(call["error"].is_null(), "{call}");
    let expected = json!([
        {"type": "function_call", "call_id": "call_w", "name": "weather", "arguments": "{\"place\": \"Paris\"}"},
        {"type": "function_call", "call_id": "call_t", "name": "time", "arguments": "{\"place\": \"Tokyo\"}"},
    ]);
    assert_eq!(call["stream"], expected, "{call}");
    assert_eq!(call["whole"], expected, "{call}");
    assert_eq!(call["stream_text"], "", "{call}");
}
