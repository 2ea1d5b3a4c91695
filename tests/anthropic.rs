//! Anthropic Messages routes: a fallback continuing a cut OpenAI answer by
//! prefill through `baton serve`, and against the oracle in Anthropic's format
//! (a whole answer, a splice byte for byte, and a prefill rejection remembered).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use serde_json::{json, Value};
use support::{scripted, text, End, Reply};

fn anthropic(kind: &str, body: Value) -> String {
    let mut v = body;
    v["type"] = json!(kind);
    v.to_string()
}

#[tokio::test]
async fn an_anthropic_fallback_continues_a_prefix_with_one_space_at_the_seam() {
    let primary = scripted(vec![Reply {
        data: vec![text("gpt", "The relay runner "), text("gpt", "passes the ")],
        end: End::Cut,
    }])
    .await;
    let claude = scripted(vec![Reply {
        data: vec![
            anthropic(
                "message_start",
                json!({"message": {"usage": {"input_tokens": 20, "output_tokens": 1}}}),
            ),
            anthropic(
                "content_block_start",
                json!({"index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            anthropic("ping", json!({})),
            // Claude continues the trimmed prefill with the space it had lost.
            anthropic(
                "content_block_delta",
                json!({"index": 0, "delta": {"type": "text_delta", "text": " baton at"}}),
            ),
            anthropic(
                "content_block_delta",
                json!({"index": 0, "delta": {"type": "text_delta", "text": " the line."}}),
            ),
            anthropic("content_block_stop", json!({"index": 0})),
            anthropic(
                "message_delta",
                json!({"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}),
            ),
            anthropic("message_stop", json!({})),
        ],
        end: End::Cut,
    }])
    .await;
    let toml = format!(
        r#"
        [[route]]
        name = "gpt"
        provider = "openai"
        base_url = "{}"
        model = "gpt"
        [[route]]
        name = "claude"
        provider = "anthropic"
        base_url = "{}"
        model = "claude-test"
        api_key_env = "ANTHROPIC_TEST_KEY"
        [[ladder]]
        name = "mixed"
        routes = ["gpt", "claude"]
        "#,
        primary.base_url(),
        claude.base_url()
    );
    let env = |name: &str| (name == "ANTHROPIC_TEST_KEY").then(|| "sk-ant-test".to_string());
    let config = baton::config::Config::parse("mixed.toml", &toml, &env).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { baton::proxy::serve(listener, &config, std::future::pending()).await });

    let request = json!({
        "model": "mixed", "stream": false, "max_tokens": 200,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Relay races?"}],
    });
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let v: Value = response.json().await.expect("json");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The relay runner passes the baton at the line."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["model"], "claude-test");
    assert_eq!(v["baton"]["route_chain"], json!(["gpt", "claude"]));

    let sent = claude.bodies();
    assert_eq!(sent.len(), 1);
    let sent = &sent[0];
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 200);
    assert_eq!(sent["stream"], true);
    let messages = sent["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[1],
        json!({"role": "assistant", "content": "The relay runner passes the"})
    );
}

/// The oracle in Anthropic's format: the same server answers `/v1/messages`.
async fn anthropic_oracle(fault: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
    support::oracle_upstream(fault, baton::oracle::Style::default()).await
}

fn anthropic_route(name: &str, base: &str) -> baton::Route {
    let client = baton::provider::openai::OpenAiProvider::default_client();
    let provider = baton::provider::anthropic::AnthropicProvider::new(client, base, None);
    baton::Route::new(name, "claude-oracle", std::sync::Arc::new(provider))
}

fn conversation(tag: &str) -> Vec<baton::Message> {
    vec![
        baton::Message::new(baton::Role::System, "You are the oracle."),
        baton::Message::new(baton::Role::User, format!("anthropic {tag}")),
    ]
}

#[tokio::test]
async fn the_anthropic_format_oracle_answers_alone_and_continues_a_cut_openai_answer() {
    let (claude, _s1) = anthropic_oracle("none").await;
    let alone = baton::Splicer::new(baton::Ladder::new(vec![anthropic_route("claude", &claude)]));
    let done = alone.collect(baton::ChatRequest::new(conversation("alone"))).await;
    assert_eq!(done.text, baton::oracle::answer(&conversation("alone")));
    let completion = done.outcome.expect("complete");
    assert!(completion.failures.is_empty(), "{:?}", completion.failures);
    assert!(
        completion
            .usage()
            .expect("the upstreams reported usage")
            .completion_tokens
            > 0
    );

    // An OpenAI-format primary cut after 6 chunks; the Anthropic route continues by prefill.
    let (gpt, _s2) = support::oracle_upstream("drop@6", baton::oracle::Style::default()).await;
    let client = baton::provider::openai::OpenAiProvider::default_client();
    let primary = baton::provider::openai::OpenAiProvider::new(client, &gpt, None);
    let ladder = baton::Ladder::new(vec![
        baton::Route::new("gpt", "gpt-oracle", std::sync::Arc::new(primary)),
        anthropic_route("claude", &claude),
    ]);
    let done = baton::Splicer::new(ladder)
        .collect(baton::ChatRequest::new(conversation("spliced")))
        .await;
    assert_eq!(
        done.text,
        baton::oracle::answer(&conversation("spliced")),
        "byte for byte"
    );
    assert_eq!(done.outcome.expect("complete").route_chain, ["gpt", "claude"]);
}

#[tokio::test]
async fn an_anthropic_route_that_rejects_prefill_continues_by_instruction_and_remembers() {
    let (gpt, _s1) = support::oracle_upstream("drop@4", baton::oracle::Style::default()).await;
    let (claude, _s2) = anthropic_oracle("noprefill").await;
    let client = baton::provider::openai::OpenAiProvider::default_client();
    let primary = baton::provider::openai::OpenAiProvider::new(client, &gpt, None);
    let splicer = baton::Splicer::new(baton::Ladder::new(vec![
        baton::Route::new("gpt", "gpt-oracle", std::sync::Arc::new(primary)),
        anthropic_route("claude", &claude),
    ]));
    let kinds = |c: &baton::engine::splice::Completion| c.failures.iter().map(|f| f.kind.clone()).collect::<Vec<_>>();
    let first = splicer
        .collect(baton::ChatRequest::new(conversation("no prefill 1")))
        .await;
    assert_eq!(first.text, baton::oracle::answer(&conversation("no prefill 1")));
    assert_eq!(
        kinds(&first.outcome.expect("complete")),
        ["truncated", "prefill_rejected"]
    );
    // Remembered for the route: the next handover goes to instruct at once.
    let second = splicer
        .collect(baton::ChatRequest::new(conversation("no prefill 2")))
        .await;
    assert_eq!(second.text, baton::oracle::answer(&conversation("no prefill 2")));
    assert_eq!(kinds(&second.outcome.expect("complete")), ["truncated"]);
}
