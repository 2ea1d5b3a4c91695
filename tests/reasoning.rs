#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test
//! Reasoning models against the mock oracle, which thinks (a deterministic
//! thinking phase in `reasoning_content`) before it answers: long thinking is
//! not a first-token timeout, a fault inside the thinking hands over with the
//! answer byte-exact and the reasoning marked at its seam, a think-only finish
//! is not an answer, and every such session re-drives from its recording.

mod support;

use std::sync::Arc;
use std::time::Duration;

use baton::engine::splice::ClientItem;
use baton::engine::watchdog::Deadlines;
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::script::Pacing;
use baton::oracle::{answer, chunks, conversation_hash, thinking, Style};
use baton::record::verify::Outcome;
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
    let marker = baton::policy::reasoning::SEAM_MARKER;
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

/// An upstream that thinks in `reasoning_content` with a running usage
/// (reasoning tokens included), then cuts the body before any answer.
async fn thinks_then_cuts(thoughts: &[&str]) -> String {
    use tokio::io::AsyncWriteExt;
    let data: Vec<String> = thoughts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = i as u64 + 1;
            serde_json::json!({"object": "chat.completion.chunk", "model": "m0",
                "choices": [{"index": 0, "delta": {"reasoning_content": t}, "finish_reason": null}],
                "usage": {"prompt_tokens": 20, "completion_tokens": n,
                          "completion_tokens_details": {"reasoning_tokens": n}}})
            .to_string()
        })
        .collect();
    support::raw_upstream(move |mut socket, _, _| {
        let data = data.clone();
        async move {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            for d in data {
                let _ = socket
                    .write_all(&support::http_chunk(format!("data: {d}\n\n").as_bytes()))
                    .await;
            }
            // Dropped here: the chunked body never ends.
        }
    })
    .await
}

#[tokio::test]
async fn over_the_proxy_reasoning_tokens_are_summed_across_a_handover() {
    let primary = thinks_then_cuts(&["Let me ", "see, ", "hmm"]).await;
    let (fallback, stop_f) = support::oracle_upstream("none", Style::default()).await;
    let toml = format!(
        r#"
        [[route]]
        name = "primary"
        provider = "openai"
        base_url = "{primary}"
        model = "m0"

        [[route]]
        name = "fallback"
        provider = "openai"
        base_url = "{fallback}"
        model = "oracle-think"

        [[ladder]]
        name = "chat"
        routes = ["primary", "fallback"]
        "#
    );
    let proxy = support::serve(&toml, vec![stop_f]).await;
    let messages = question("usage");
    // The fallback starts afresh (no answer yet): it thinks its whole thinking, one token a chunk.
    let fallback_thought = chunks(&thinking(&messages), conversation_hash(&messages)).len() as u64;
    let fallback_answer = chunks(&answer(&messages), conversation_hash(&messages)).len() as u64;
    let want_reasoning = 3 + fallback_thought;
    let want_completion = 3 + fallback_thought + fallback_answer;

    let response = proxy
        .chat(&serde_json::json!({"model": "chat", "stream": true, "stream_options": {"include_usage": true}, "messages": messages}))
        .await;
    assert_eq!(response.status(), 200);
    let sse = support::Sse::parse(&response.text().await.expect("body"));
    assert_eq!(sse.text(), answer(&messages), "byte for byte");
    assert!(sse.reasoning().starts_with("Let me see, hmm"), "{}", sse.reasoning());
    let usage = sse
        .chunks()
        .into_iter()
        .find(|c| c["choices"].as_array().is_some_and(Vec::is_empty))
        .expect("a usage chunk")["usage"]
        .clone();
    assert_eq!(
        usage["completion_tokens_details"]["reasoning_tokens"], want_reasoning,
        "the cut attempt's and the fallback's reasoning tokens: {usage}"
    );
    assert_eq!(usage["completion_tokens"], want_completion, "{usage}");

    let whole: serde_json::Value = proxy
        .chat(&serde_json::json!({"model": "chat", "messages": messages}))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(whole["choices"][0]["message"]["content"], answer(&messages), "{whole}");
    assert_eq!(
        whole["usage"]["completion_tokens_details"]["reasoning_tokens"], want_reasoning,
        "{whole}"
    );

    let metrics = proxy.get("/metrics").await;
    let reasoning_line = |route: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("baton_upstream_tokens_total{")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains("kind=\"reasoning\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(reasoning_line("primary"), Some(6.0), "two sessions, 3 each:\n{metrics}");
    assert_eq!(reasoning_line("fallback"), Some(2.0 * fallback_thought as f64));
}

#[tokio::test]
async fn think_tags_in_the_content_go_to_the_reasoning_channel_on_a_route_that_asks() {
    use support::{finish, scripted, text, End, Reply};
    let tagged = scripted(vec![Reply {
        // The tags cut across deltas; a later literal `<think>` is the answer's.
        data: vec![
            text("m", "\n<thi"),
            text("m", "nk>Let me"),
            text("m", " think.</th"),
            text("m", "ink>\n\nThe answer: <think> is a tag."),
            finish("m", "stop"),
        ],
        end: End::Done,
    }])
    .await;
    // Never closed: all thinking, no answer, so it hands over.
    let unclosed = scripted(vec![Reply {
        data: vec![text("m", "<think>going round"), finish("m", "stop")],
        end: End::Done,
    }])
    .await;
    let (fallback, stop_f) = support::oracle_upstream("none", Style::default()).await;
    let url = tagged.base_url();
    let unclosed_url = unclosed.base_url();
    let toml = format!(
        r#"
        [[route]]
        name = "split"
        provider = "openai"
        base_url = "{url}"
        model = "m"
        think_tags = true

        [[route]]
        name = "plain"
        provider = "openai"
        base_url = "{url}"
        model = "m"

        [[route]]
        name = "unclosed"
        provider = "openai"
        base_url = "{unclosed_url}"
        model = "m"
        think_tags = true

        [[route]]
        name = "fallback"
        provider = "openai"
        base_url = "{fallback}"
        model = "oracle"

        [[ladder]]
        name = "split"
        routes = ["split"]

        [[ladder]]
        name = "plain"
        routes = ["plain"]

        [[ladder]]
        name = "unclosed"
        routes = ["unclosed", "fallback"]
        "#
    );
    let proxy = support::serve(&toml, vec![stop_f]).await;
    let ask = |model: &str, stream: bool| serde_json::json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    let sse = support::Sse::parse(&proxy.chat(&ask("split", true)).await.text().await.expect("body"));
    assert_eq!(sse.reasoning(), "Let me think.");
    assert_eq!(sse.text(), "The answer: <think> is a tag.");
    assert!(sse
        .chunks()
        .iter()
        .all(|c| c.pointer("/choices/0/delta/reasoning").is_none()));
    let whole: serde_json::Value = proxy.chat(&ask("split", false)).await.json().await.expect("json");
    assert_eq!(
        whole["choices"][0]["message"]["reasoning_content"], "Let me think.",
        "{whole}"
    );
    assert_eq!(
        whole["choices"][0]["message"]["content"],
        "The answer: <think> is a tag."
    );
    // Without the option the content is the content.
    let sse = support::Sse::parse(&proxy.chat(&ask("plain", true)).await.text().await.expect("body"));
    assert_eq!(sse.reasoning(), "");
    assert_eq!(
        sse.text(),
        "\n<think>Let me think.</think>\n\nThe answer: <think> is a tag."
    );

    let sse = support::Sse::parse(&proxy.chat(&ask("unclosed", true)).await.text().await.expect("body"));
    let messages = vec![Message::new(Role::User, "hi")];
    assert_eq!(sse.text(), answer(&messages), "the fallback's answer, byte for byte");
    assert!(sse.reasoning().starts_with("going round"), "{}", sse.reasoning());
    assert!(
        sse.comments.iter().any(|c| c.contains("reason=empty_answer")),
        "{:?}",
        sse.comments
    );
}

#[tokio::test(start_paused = true)]
async fn a_reasoning_budget_shorter_than_the_thinking_hands_over_and_the_answer_is_byte_exact() {
    let budget = Duration::from_secs(2);
    let with_budget = |budget: Option<Duration>| {
        // A chunk every 300 ms: its thinking lasts well past 2 s.
        let primary = Route::new("primary", "oracle-think", oracle("none", Duration::from_millis(300))).with_deadlines(
            Deadlines {
                reasoning_budget: budget,
                ..Deadlines::default()
            },
        );
        Splicer::new(Ladder::new(vec![
            primary,
            Route::new("fallback", "oracle-small", oracle("none", Duration::from_millis(1))),
        ]))
    };
    let splicer = with_budget(Some(budget));
    let marker = splicer.ladder().reasoning_marker.clone();
    let mut events = splicer.subscribe();
    let messages = question("budget");
    let started = tokio::time::Instant::now();
    let got = run(&splicer, &messages).await;
    assert!(got.complete);
    assert_eq!(got.failures, ["reasoning_timeout"]);
    assert_eq!(got.handovers, 1);
    assert_eq!(got.text, answer(&messages), "the fallback's answer, byte for byte");
    // The primary's thinking up to the budget (first chunk at 5 ms, then one every 300 ms), then the seam.
    let thought = 1 + (budget.as_millis() as usize - 5) / 300;
    assert_eq!(got.reasoning, format!("{}{marker}", thinking_until(&messages, thought)));
    let first_text = got.first_text.expect("text");
    assert!(
        first_text >= budget && first_text < budget + Duration::from_millis(100),
        "handed over at the budget: {first_text:?} after {:?}",
        started.elapsed()
    );
    let verdict = support::verify_events(&support::drain(&mut events));
    assert_eq!(
        verdict,
        Outcome::Ok { partial: false },
        "the replay re-drives the budget"
    );

    // Without the key the same thinking answers whole on the primary.
    let got = run(&with_budget(None), &messages).await;
    assert_eq!((got.handovers, got.failures.len()), (0, 0));
    assert_eq!(got.reasoning, thinking(&messages));
    assert_eq!(got.text, answer(&messages));
}

#[tokio::test]
async fn the_operator_chooses_the_field_reasoning_goes_out_in() {
    // The primary thinks in `reasoning_content`, stalls, and the fallback thinks in `reasoning`.
    let (primary, stop) = support::oracle_upstream("stall@4", Style::default()).await;
    let (fallback, stop_f) = support::oracle_upstream("none", Style::default()).await;
    let mut toml = format!(
        r#"
        [server]
        reasoning_field = "reasoning_content"

        [[route]]
        name = "primary"
        provider = "openai"
        base_url = "{primary}"
        model = "oracle-think"
        stall_ms = 500

        [[route]]
        name = "fallback"
        provider = "openai"
        base_url = "{fallback}"
        model = "oracle-reason"
        "#
    );
    for (name, field) in [
        ("as", Some("as_upstream")),
        ("one", Some("reasoning")),
        ("server", None),
    ] {
        toml.push_str(&format!(
            "\n[[ladder]]\nname = \"{name}\"\nroutes = [\"primary\", \"fallback\"]\n{}\n",
            field.map(|f| format!("reasoning_field = \"{f}\"")).unwrap_or_default()
        ));
    }
    let proxy = support::serve(&toml, vec![stop, stop_f]).await;
    let messages = question("field");
    let expected = format!(
        "{}{}{}",
        thinking_until(&messages, 4),
        baton::policy::reasoning::SEAM_MARKER,
        thinking(&messages)
    );
    let fields = |sse: &support::Sse| {
        let has = |key: &str| {
            sse.chunks()
                .iter()
                .any(|c| c.pointer(&format!("/choices/0/delta/{key}")).is_some())
        };
        (has("reasoning_content"), has("reasoning"))
    };
    for (ladder, want) in [("as", (true, true)), ("one", (false, true)), ("server", (true, false))] {
        let response = proxy
            .chat(&serde_json::json!({"model": ladder, "stream": true, "messages": messages}))
            .await;
        let sse = support::Sse::parse(&response.text().await.expect("body"));
        assert_eq!(sse.text(), answer(&messages), "[{ladder}] byte for byte");
        assert_eq!(sse.reasoning(), expected, "[{ladder}]");
        assert_eq!(fields(&sse), want, "[{ladder}] (reasoning_content, reasoning)");
    }
    // A whole answer: the chosen field only.
    let whole: serde_json::Value = proxy
        .chat(&serde_json::json!({"model": "one", "messages": messages}))
        .await
        .json()
        .await
        .expect("json");
    let message = &whole["choices"][0]["message"];
    assert_eq!(message["reasoning"], expected.as_str(), "{whole}");
    assert!(message.get("reasoning_content").is_none(), "{whole}");
}
