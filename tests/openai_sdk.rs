//! Real clients we did not write: the official `openai` Python SDK streams
//! through `baton serve` against oracle upstreams with faults, and it and
//! LangChain's ChatOpenAI assemble tool calls through a handover. `.ci/run`
//! installs both in a virtual environment, sets `BATON_OPENAI_PYTHON` and runs
//! these `#[ignore]`d tests with `--ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use baton::oracle::answer;
use baton::{Message, Role};
use serde_json::json;
use support::{finish, run_python, scripted, tool, End, Reply, FAULTS};

fn conversation(model: &str, mode: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, "You are an SDK test."),
        Message::new(Role::User, format!("sdk {model} {mode}")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the openai Python SDK in BATON_OPENAI_PYTHON; .ci/run runs it"]
async fn the_official_openai_sdk_gets_the_oracles_answer_through_every_fault() {
    let (toml, stops) = support::fault_ladders().await;
    let proxy = support::Serve::new(&toml).upstreams(stops).start().await;
    let base = proxy.url("/v1");
    let mut args = vec![base.as_str()];
    args.extend(FAULTS.iter().map(|(name, _)| *name));
    let lines = run_python("openai_sdk.py", &args).await;
    assert_eq!(lines.len(), FAULTS.len(), "{lines:?}");
    for line in lines {
        let model = line["model"].as_str().expect("model");
        assert!(line["error"].is_null(), "{model}: the SDK raised {}", line["error"]);
        for mode in ["stream", "whole"] {
            assert_eq!(
                line[mode].as_str(),
                Some(answer(&conversation(model, mode)).as_str()),
                "{model} ({mode}): the SDK's text differs from the oracle's answer"
            );
        }
    }
}

/// Two parallel calls, streamed the way OpenAI does: each call's id and name
/// first, then its arguments in fragments.
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
#[ignore = "needs the openai SDK and langchain-openai in BATON_OPENAI_PYTHON; .ci/run runs it"]
async fn the_sdk_and_langchain_assemble_every_tool_call_through_a_handover_mid_call() {
    // The primary dies in the middle of a call's arguments; the fallback makes two calls.
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
    let direct = scripted(vec![Reply {
        data: parallel_calls("d"),
        end: End::Done,
    }])
    .await;
    let route = |name: &str, url: String| {
        format!("[[route]]\nname = \"{name}\"\nprovider = \"openai\"\nbase_url = \"{url}\"\nmodel = \"{name}\"\n")
    };
    let toml = format!(
        "{}{}{}[[ladder]]\nname = \"handover\"\nroutes = [\"p\", \"f\"]\n[[ladder]]\nname = \"direct\"\nroutes = [\"d\"]\n",
        route("p", primary.base_url()),
        route("f", fallback.base_url()),
        route("d", direct.base_url()),
    );
    let proxy = support::Serve::new(&toml).start().await;
    let base = proxy.url("/v1");
    let lines = run_python("client_tools.py", &[&base, "direct", "handover"]).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let expected = json!({
        "calls": [
            {"id": "call_w", "name": "weather", "args": {"place": "Paris"}},
            {"id": "call_t", "name": "time", "args": {"place": "Tokyo"}},
        ],
        "invalid": 0,
    });
    for line in &lines {
        for client in ["sdk_stream", "sdk_whole", "langchain_stream", "langchain_whole"] {
            assert_eq!(line[client], expected, "{} through {client}", line["model"]);
        }
    }
    assert!(
        !primary.bodies().is_empty() && fallback.bodies().len() == 4,
        "every request of the handover ladder started on the primary and ended on the fallback"
    );
}
