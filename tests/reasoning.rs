#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test
//! Reasoning models against the mock oracle, which thinks (a deterministic
//! thinking phase in `reasoning_content`) before it answers: long thinking is
//! not a first-token timeout, a fault inside the thinking hands over with the
//! answer byte-exact and the reasoning marked at its seam, a think-only finish
//! is not an answer, and every such session re-drives from its recording.

mod support;

use std::sync::Arc;
use std::time::Duration;

use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::script::Pacing;
use baton::oracle::{answer, chunks, conversation_hash, thinking, Style};
use baton::record::verify::Outcome;
use baton::splice::ClientItem;
use baton::watchdog::Deadlines;
use baton::{ChatRequest, Ladder, Message, Role, Route, Splicer};
use futures::StreamExt;

/// An in-process oracle with `fault`, a chunk every `interval`.
fn oracle(fault: &str, interval: Duration) -> Arc<MockProvider> {
    Arc::new(
        MockProvider::new(
            FaultPlan::Fixed(fault.parse::<FaultScript>().expect("fault")),
            Style::default(),
        )
        .with_pacing(Pacing {
            first_token: Duration::from_millis(5),
            interval,
        }),
    )
}

fn question(tag: &str) -> Vec<Message> {
    vec![Message::new(
        Role::User,
        format!("reasoning scenario {tag}: why is the sea salty?"),
    )]
}

/// What the client received, by channel.
struct Got {
    text: String,
    reasoning: String,
    handovers: usize,
    /// Virtual time from the start to the first answer text.
    first_text: Option<Duration>,
    failures: Vec<String>,
    complete: bool,
}

async fn run(splicer: &Splicer, messages: &[Message]) -> Got {
    let started = tokio::time::Instant::now();
    let mut stream = splicer.splice(ChatRequest::new(messages.to_vec()));
    let mut got = Got {
        text: String::new(),
        reasoning: String::new(),
        handovers: 0,
        first_text: None,
        failures: Vec::new(),
        complete: false,
    };
    while let Some(item) = stream.next().await {
        match item {
            ClientItem::Text { text, .. } => {
                got.first_text.get_or_insert_with(|| started.elapsed());
                got.text.push_str(&text);
            }
            ClientItem::Reasoning { text, .. } => got.reasoning.push_str(&text),
            ClientItem::Handover(_) => got.handovers += 1,
            ClientItem::Done(done) => {
                got.complete = true;
                got.failures = done.failures.iter().map(|f| f.kind.clone()).collect();
            }
            ClientItem::Failed(e) => panic!("the session failed: {e}"),
            _ => {}
        }
    }
    got
}

/// The first `k` chunks of the oracle's thinking for `messages`, as the mock streams them.
fn thinking_until(messages: &[Message], k: usize) -> String {
    let thought = thinking(messages);
    chunks(&thought, conversation_hash(messages))[..k].concat()
}

#[tokio::test(start_paused = true)]
async fn thinking_longer_than_the_first_token_deadline_answers_whole_with_no_handover() {
    // A chunk every 300 ms: the thinking alone outlasts the 10 s first-token deadline.
    let primary = Route::new("primary", "oracle-think", oracle("none", Duration::from_millis(300)));
    let splicer = Splicer::new(Ladder::new(vec![
        primary,
        Route::new("fallback", "oracle-small", oracle("none", Duration::from_millis(1))),
    ]));
    let mut events = splicer.subscribe();
    let messages = question("long");
    let got = run(&splicer, &messages).await;
    assert!(got.complete);
    assert_eq!(got.failures, Vec::<String>::new(), "no first-token timeout");
    assert_eq!(got.handovers, 0);
    assert_eq!(
        got.reasoning,
        thinking(&messages),
        "every reasoning delta reached the client"
    );
    assert_eq!(got.text, answer(&messages), "byte for byte");
    let first_text = got.first_text.expect("text");
    assert!(
        first_text > Deadlines::default().first_token,
        "the answer's first token came after the first-token deadline ({first_text:?})"
    );
    let verdict = support::verify_events(&support::drain(&mut events));
    assert_eq!(verdict, Outcome::Ok { partial: false });
}

#[tokio::test(start_paused = true)]
async fn a_fault_inside_the_thinking_hands_over_with_the_answer_byte_exact_and_the_seam_marked() {
    for fault in ["stall@3", "drop@3", "malformed@3", "error@3"] {
        let splicer = Splicer::new(Ladder::new(vec![
            Route::new("primary", "oracle-think", oracle(fault, Duration::from_millis(10))),
            Route::new("fallback", "oracle-think", oracle("none", Duration::from_millis(10))),
        ]));
        let marker = splicer.ladder().reasoning_marker.clone();
        let mut events = splicer.subscribe();
        let messages = question(fault);
        let got = run(&splicer, &messages).await;
        assert!(got.complete, "[{fault}]");
        assert_eq!(got.handovers, 1, "[{fault}]");
        assert_eq!(got.text, answer(&messages), "[{fault}] the answer, byte for byte");
        // The primary's thinking up to the cut, the marker, then the fallback's own.
        let expected = format!("{}{marker}{}", thinking_until(&messages, 3), thinking(&messages));
        assert_eq!(got.reasoning, expected, "[{fault}]");
        assert_eq!(got.failures.len(), 1, "[{fault}] {:?}", got.failures);
        let verdict = support::verify_events(&support::drain(&mut events));
        assert_eq!(verdict, Outcome::Ok { partial: false }, "[{fault}]");
    }
}

#[tokio::test(start_paused = true)]
async fn a_think_only_finish_is_not_an_answer() {
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new(
            "primary",
            "oracle-think",
            oracle("thinkonly", Duration::from_millis(10)),
        ),
        Route::new("fallback", "oracle-small", oracle("none", Duration::from_millis(10))),
    ]));
    let mut events = splicer.subscribe();
    let messages = question("thinkonly");
    let got = run(&splicer, &messages).await;
    assert!(got.complete);
    assert_eq!(got.failures, ["empty_answer"]);
    assert_eq!(got.handovers, 1);
    assert_eq!(got.text, answer(&messages), "the fallback answered, byte for byte");
    assert!(got.reasoning.starts_with(&thinking(&messages)), "{:?}", got.reasoning);
    let verdict = support::verify_events(&support::drain(&mut events));
    assert_eq!(verdict, Outcome::Ok { partial: false });
}

#[tokio::test]
async fn over_the_proxy_an_openai_client_gets_the_reasoning_and_the_answer() {
    let (upstream, stop) = support::oracle_upstream("stall@4", Style::default()).await;
    let (fallback, stop_f) = support::oracle_upstream("none", Style::default()).await;
    let toml = format!(
        r#"
        [[route]]
        name = "primary"
        provider = "openai"
        base_url = "{upstream}"
        model = "oracle-think"
        stall_ms = 1000

        [[route]]
        name = "fallback"
        provider = "openai"
        base_url = "{fallback}"
        model = "oracle-reason"

        [[ladder]]
        name = "chat"
        routes = ["primary", "fallback"]
        "#
    );
    let proxy = support::serve(&toml, vec![stop, stop_f]).await;
    let messages = question("proxy");
    let response = proxy
        .chat(&serde_json::json!({"model": "chat", "stream": true, "messages": messages}))
        .await;
    assert_eq!(response.status(), 200);
    let sse = support::Sse::parse(&response.text().await.expect("body"));
    assert_eq!(sse.text(), answer(&messages), "byte for byte");
    let reasoning = sse.reasoning();
    assert!(reasoning.starts_with(&thinking_until(&messages, 4)), "{reasoning:?}");
    assert!(
        reasoning.ends_with(&thinking(&messages)),
        "the fallback's thinking: {reasoning:?}"
    );
    assert!(sse.done());
}

#[tokio::test]
async fn an_anthropic_routes_thinking_reaches_an_openai_client_as_reasoning() {
    let (claude, stop) = support::oracle_upstream("stall@4", Style::default()).await;
    let (fallback, stop_f) = support::oracle_upstream("none", Style::default()).await;
    let toml = format!(
        r#"
        [[route]]
        name = "claude"
        provider = "anthropic"
        base_url = "{claude}"
        model = "oracle-think"
        api_key_env = "ANTHROPIC_TEST_KEY"
        stall_ms = 1000

        [[route]]
        name = "fallback"
        provider = "openai"
        base_url = "{fallback}"
        model = "oracle-think"

        [[ladder]]
        name = "chat"
        routes = ["claude", "fallback"]
        "#
    );
    let proxy = support::Serve::new(&toml)
        .env("ANTHROPIC_TEST_KEY", "sk-ant-test")
        .upstreams(vec![stop, stop_f])
        .start()
        .await;
    let messages = question("anthropic");
    let response = proxy
        .chat(&serde_json::json!({"model": "chat", "stream": true, "max_tokens": 300, "messages": messages}))
        .await;
    assert_eq!(response.status(), 200);
    let sse = support::Sse::parse(&response.text().await.expect("body"));
    assert_eq!(sse.text(), answer(&messages), "byte for byte");
    // Claude's thinking goes out as `reasoning_content`, never as `reasoning`.
    assert!(sse
        .chunks()
        .iter()
        .all(|c| c.pointer("/choices/0/delta/reasoning").is_none()));
    let reasoning = sse.reasoning();
    let marker = baton::reasoning::SEAM_MARKER;
    let expected = format!("{}{marker}{}", thinking_until(&messages, 4), thinking(&messages));
    assert_eq!(
        reasoning, expected,
        "Claude's thinking as reasoning_content, the seam marked, the fallback's"
    );
}

#[tokio::test(start_paused = true)]
async fn a_thinking_loop_is_caught_and_handed_over() {
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("primary", "oracle-think", oracle("loop@3", Duration::from_millis(10))),
        Route::new("fallback", "oracle-think", oracle("none", Duration::from_millis(10))),
    ]));
    let marker = splicer.ladder().reasoning_marker.clone();
    let mut events = splicer.subscribe();
    let messages = question("thinking loop");
    let got = run(&splicer, &messages).await;
    assert!(got.complete);
    assert_eq!(got.failures, ["loop"], "the thinking loop was caught");
    assert_eq!(got.handovers, 1);
    assert_eq!(got.text, answer(&messages), "byte for byte");
    let looped = got
        .reasoning
        .strip_prefix(&thinking_until(&messages, 3))
        .and_then(|rest| rest.strip_suffix(&format!("{marker}{}", thinking(&messages))))
        .unwrap_or_else(|| {
            panic!(
                "cut thinking, its loop, the marker, the fallback's: {:?}",
                got.reasoning
            )
        });
    let phrase = baton::oracle::script::LOOP_PHRASE;
    assert!(
        looped.len() < baton::oracle::script::LOOP_REPEATS * phrase.len() / 2 && looped.contains(&phrase.repeat(6)),
        "stopped early in the loop: {} bytes",
        looped.len()
    );
    let verdict = support::verify_events(&support::drain(&mut events));
    assert_eq!(verdict, Outcome::Ok { partial: false });
}
