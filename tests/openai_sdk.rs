//! A real client we did not write: the official `openai` Python SDK streams
//! through `baton serve` against oracle upstreams with faults. `.ci/run`
//! installs the SDK in a virtual environment and sets `BATON_OPENAI_PYTHON`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::time::Duration;

use baton::config::Config;
use baton::oracle::{answer, Style};
use baton::{Message, Role};
use serde_json::Value;

const FAULTS: [(&str, &str); 6] = [
    ("stall", "stall@20"),
    ("drop", "drop@15"),
    ("malformed", "malformed@9"),
    ("error-event", "error@30"),
    ("unavailable", "503"),
    ("healthy", "none"),
];

fn conversation(model: &str, mode: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, "You are an SDK test."),
        Message::new(Role::User, format!("sdk {model} {mode}")),
    ]
}

async fn oracle(fault: &str, repeat_words: usize) -> (String, tokio::sync::oneshot::Sender<()>) {
    support::oracle_upstream(
        fault,
        Style {
            repeat_words,
            extra_space: false,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_sdk_gets_the_oracles_answer_through_every_fault() {
    let Some(python) = std::env::var_os("BATON_OPENAI_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test: .ci/run sets BATON_OPENAI_PYTHON"
        );
        eprintln!("skipped: set BATON_OPENAI_PYTHON to a python with the openai package (bash .ci/run does)");
        return;
    };
    let mut stops = Vec::new();
    let (fallback, stop) = oracle("none", 2).await;
    stops.push(stop);
    let mut toml = format!(
        "[[route]]\nname = \"fallback\"\nprovider = \"openai\"\nbase_url = \"{fallback}\"\nmodel = \"oracle-small\"\ncontinuation = \"instruct\"\n"
    );
    for (name, fault) in FAULTS {
        let (url, stop) = oracle(fault, 0).await;
        stops.push(stop);
        toml.push_str(&format!(
            "[[route]]\nname = \"{name}\"\nprovider = \"openai\"\nbase_url = \"{url}\"\nmodel = \"oracle-large\"\nstall_ms = 1000\n\
             [[ladder]]\nname = \"{name}\"\nroutes = [\"{name}\", \"fallback\"]\n"
        ));
    }
    let config = Config::parse("sdk.toml", &toml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move { baton::proxy::serve(listener, &config, std::future::pending()).await });

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(&base)
        .args(FAULTS.iter().map(|(name, _)| *name))
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), output)
        .await
        .expect("the SDK run finished")
        .expect("python ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), FAULTS.len(), "{stdout}");
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
