#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test
//! The reasoning channel through the core and the OpenAI door: reasoning
//! tokens are tokens for the deadlines, a handover during reasoning shows a
//! seam marker, a think-only finish is `empty_answer`, and late reasoning is
//! withheld. Library tests run on virtual time with an in-test provider.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use baton::engine::splice::{ClientItem, Collected};
use baton::engine::watchdog::Deadlines;
use baton::policy::reasoning::SEAM_MARKER;
use baton::provider::{Chunk, ChunkStream, Provider, ReasoningField, UpstreamRequest};
use baton::record::verify::Outcome;
use baton::{ChatRequest, EventKind, FailureClass, Ladder, Message, Role, Route, Splicer};
use support::{drain, scripted, verify_events, End, Reply, Serve, Sse};

/// One step of a scripted attempt: wait, then yield the chunk (`None`: stay silent for good).
type Step = (u64, Option<Chunk>);

/// A provider whose n-th attempt plays the n-th script (the last repeats), remembering the requests.
#[derive(Clone)]
struct Steps {
    scripts: Arc<Vec<Vec<Step>>>,
    seen: Arc<Mutex<Vec<UpstreamRequest>>>,
}

impl Steps {
    fn new(scripts: Vec<Vec<Step>>) -> Arc<Self> {
        Arc::new(Steps {
            scripts: Arc::new(scripts),
            seen: Arc::default(),
        })
    }

    fn seen(&self) -> Vec<UpstreamRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Provider for Steps {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let mut seen = self.seen.lock().unwrap();
        let n = seen.len().min(self.scripts.len() - 1);
        seen.push(request);
        let script = self.scripts[n].clone();
        Box::pin(async_stream::stream! {
            yield Ok(Chunk::Opened);
            for (ms, chunk) in script {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                match chunk {
                    Some(chunk) => yield Ok(chunk),
                    None => std::future::pending::<()>().await,
                }
            }
        })
    }
}

fn think(ms: u64, t: &str) -> Step {
    (
        ms,
        Some(Chunk::Reasoning {
            text: t.into(),
            field: ReasoningField::ReasoningContent,
        }),
    )
}

fn say(ms: u64, t: &str) -> Step {
    (ms, Some(Chunk::Text(t.into())))
}

fn end(reason: &str) -> Vec<Step> {
    vec![(0, Some(Chunk::Finish(reason.into()))), (0, Some(Chunk::Done))]
}

fn hang() -> Step {
    (0, None)
}

fn deadlines() -> Deadlines {
    Deadlines {
        first_token: Duration::from_secs(10),
        stall: Duration::from_secs(3),
        total: Duration::from_secs(300),
        reasoning_budget: None,
    }
}

fn ladder(primary: Arc<Steps>, fallback: Arc<Steps>) -> Ladder {
    Ladder::new(vec![
        Route::new("primary", "thinker", primary).with_deadlines(deadlines()),
        Route::new("fallback", "backup", fallback).with_deadlines(deadlines()),
    ])
}

fn question() -> ChatRequest {
    ChatRequest::new(vec![Message::new(Role::User, "why is the sky blue?")])
}

/// The client's items, in order, as (channel, text) pairs for reasoning and text.
async fn items(splicer: &Splicer) -> (Vec<(&'static str, String)>, Option<ClientItem>) {
    let mut stream = splicer.splice(question());
    let mut out = Vec::new();
    let mut last = None;
    while let Some(item) = stream.next().await {
        match item {
            ClientItem::Reasoning { text, .. } => out.push(("reasoning", text)),
            ClientItem::Text { text, .. } => out.push(("text", text)),
            ClientItem::Handover(h) => out.push(("handover", h.reason.to_string())),
            other @ (ClientItem::Done(_) | ClientItem::Failed(_)) => last = Some(other),
            ClientItem::ToolCalls { .. } => out.push(("tools", String::new())),
        }
    }
    (out, last)
}

fn failure_kinds(done: &Collected) -> Vec<(String, String, FailureClass)> {
    let failures = match &done.outcome {
        Ok(c) => &c.failures,
        Err(e) => panic!("the session failed: {e}"),
    };
    failures
        .iter()
        .map(|f| (f.route.clone(), f.kind.clone(), f.class))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn reasoning_longer_than_the_first_token_deadline_answers_with_no_handover() {
    // Thinking from 2 s to 12 s, one thought a second, then the answer: past the 10 s first-token deadline.
    let mut script = vec![think(2_000, "t0 ")];
    for i in 1..=10 {
        script.push(think(1_000, &format!("t{i} ")));
    }
    script.extend([say(500, "Blue "), say(100, "light scatters.")]);
    script.extend(end("stop"));
    let primary = Steps::new(vec![script]);
    let fallback = Steps::new(vec![[vec![say(0, "wrong")], end("stop")].concat()]);
    let splicer = Splicer::new(ladder(primary, fallback.clone()));
    let mut events = splicer.subscribe();
    let (got, last) = items(&splicer).await;

    let thoughts: Vec<(&str, String)> = (0..=10).map(|i| ("reasoning", format!("t{i} "))).collect();
    let answer = vec![("text", "Blue ".to_string()), ("text", "light scatters.".to_string())];
    assert_eq!(
        got,
        [thoughts, answer].concat(),
        "every thought, then the answer, nothing else"
    );
    let Some(ClientItem::Done(done)) = last else {
        panic!("not done: {last:?}")
    };
    assert!(done.failures.is_empty(), "{:?}", done.failures);
    assert_eq!(done.route_chain, ["primary"]);
    assert!(fallback.seen().is_empty(), "the fallback was never asked");
    // The first thought was the first token.
    let events = drain(&mut events);
    let ttft: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::FirstToken { ttft_ms, .. } => Some(*ttft_ms),
            _ => None,
        })
        .collect();
    assert_eq!(ttft, [2_000]);
    assert_eq!(verify_events(&events), Outcome::Ok { partial: false });
}

#[tokio::test(start_paused = true)]
async fn a_stall_inside_reasoning_hands_over_with_a_seam_marker_and_replays() {
    let primary = Steps::new(vec![vec![think(500, "Let me think. "), think(500, "First, "), hang()]]);
    let fallback = Steps::new(vec![[
        vec![
            think(200, "Fresh thought. "),
            say(200, "Rayleigh "),
            say(100, "scattering."),
        ],
        end("stop"),
    ]
    .concat()]);
    let splicer = Splicer::new(ladder(primary, fallback.clone()));
    let mut events = splicer.subscribe();
    let done = splicer.collect(question()).await;
    let events = drain(&mut events);

    assert_eq!(
        done.text, "Rayleigh scattering.",
        "the fallback's text is the whole answer"
    );
    assert_eq!(
        done.reasoning,
        format!("Let me think. First, {SEAM_MARKER}Fresh thought. ")
    );
    assert_eq!(
        failure_kinds(&done),
        [("primary".into(), "stall".into(), FailureClass::Technical)]
    );
    assert_eq!(done.handovers.len(), 1);
    assert_eq!(done.handovers[0].prefix_bytes, 0, "no answer text before the seam");
    // The fallback starts afresh: no reasoning, and no prefix, goes to it.
    let seen = fallback.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].messages, question().messages);
    // The recording of it re-drives the same.
    assert!(events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::Reasoning { text, .. } if text == SEAM_MARKER)));
    assert_eq!(verify_events(&events), Outcome::Ok { partial: false });
}

#[tokio::test(start_paused = true)]
async fn the_handover_notice_comes_before_the_seam_marker() {
    let primary = Steps::new(vec![vec![think(500, "a"), hang()]]);
    let fallback = Steps::new(vec![[vec![think(100, "b"), say(100, "c")], end("stop")].concat()]);
    let splicer = Splicer::new(ladder(primary, fallback));
    let (got, _) = items(&splicer).await;
    assert_eq!(
        got,
        [
            ("reasoning", "a".to_string()),
            ("handover", "stall".to_string()),
            ("reasoning", SEAM_MARKER.to_string()),
            ("reasoning", "b".to_string()),
            ("text", "c".to_string()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_fallback_that_answers_without_reasoning_still_shows_the_seam() {
    let primary = Steps::new(vec![vec![think(500, "a"), hang()]]);
    let fallback = Steps::new(vec![[vec![say(100, "c")], end("stop")].concat()]);
    let mut ladder = ladder(primary, fallback);
    ladder.reasoning_marker = " [cut] ".into();
    let done = Splicer::new(ladder).collect(question()).await;
    assert_eq!(done.reasoning, "a [cut] ");
    assert_eq!(done.text, "c");
}

#[tokio::test(start_paused = true)]
async fn a_think_only_finish_is_an_empty_answer_and_hands_over() {
    let primary = Steps::new(vec![[vec![think(100, "hmm "), think(100, "so")], end("stop")].concat()]);
    let fallback = Steps::new(vec![[vec![say(100, "Blue.")], end("stop")].concat()]);
    let splicer = Splicer::new(ladder(primary, fallback));
    let mut events = splicer.subscribe();
    let done = splicer.collect(question()).await;
    assert_eq!(done.text, "Blue.");
    assert_eq!(done.reasoning, format!("hmm so{SEAM_MARKER}"));
    assert_eq!(
        failure_kinds(&done),
        [("primary".into(), "empty_answer".into(), FailureClass::Quality)]
    );
    let events = drain(&mut events);
    let cause = events.iter().find_map(|e| match &e.kind {
        EventKind::Failure { cause, .. } => Some(cause.clone()),
        _ => None,
    });
    assert_eq!(cause, Some(baton::FailureKind::EmptyAnswer { reasoning_bytes: 6 }));
    assert_eq!(verify_events(&events), Outcome::Ok { partial: false });
}

#[tokio::test(start_paused = true)]
async fn a_completely_empty_answer_hands_over_too() {
    for reason in ["stop", "length"] {
        let primary = Steps::new(vec![end(reason)]);
        let fallback = Steps::new(vec![[vec![say(100, "Blue.")], end("stop")].concat()]);
        let done = Splicer::new(ladder(primary, fallback)).collect(question()).await;
        assert_eq!(done.text, "Blue.", "{reason}");
        assert_eq!(done.reasoning, "", "no reasoning, no seam");
        assert_eq!(
            failure_kinds(&done),
            [("primary".into(), "empty_answer".into(), FailureClass::Quality)],
            "{reason}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn empty_answers_everywhere_fail_the_session() {
    let primary = Steps::new(vec![end("stop")]);
    let fallback = Steps::new(vec![[vec![think(10, "x")], end("stop")].concat()]);
    let done = Splicer::new(ladder(primary, fallback)).collect(question()).await;
    let Err(error) = &done.outcome else {
        panic!("an empty answer passed as one: {:?}", done.outcome)
    };
    assert!(error.to_string().contains("empty answer"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_content_filter_finish_and_a_continuation_of_a_complete_prefix_are_not_empty() {
    // A refusal by finish reason stays the provider's answer.
    let primary = Steps::new(vec![end("content_filter")]);
    let fallback = Steps::new(vec![[vec![say(100, "Blue.")], end("stop")].concat()]);
    let done = Splicer::new(ladder(primary, fallback.clone()))
        .collect(question())
        .await;
    assert_eq!(
        done.outcome.as_ref().map(|c| c.finish_reason.as_str()),
        Ok("content_filter")
    );
    assert!(fallback.seen().is_empty());

    // The fallback finds nothing to add to a complete prefix: that is the end, not an empty answer.
    let primary = Steps::new(vec![vec![say(100, "Blue."), hang()]]);
    let fallback = Steps::new(vec![end("stop")]);
    let done = Splicer::new(ladder(primary, fallback)).collect(question()).await;
    assert_eq!(done.text, "Blue.");
    assert_eq!(
        failure_kinds(&done),
        [("primary".into(), "stall".into(), FailureClass::Technical)]
    );
}

#[tokio::test(start_paused = true)]
async fn after_text_began_the_fallbacks_reasoning_is_counted_not_forwarded() {
    let script = || {
        (
            Steps::new(vec![vec![say(100, "Blue "), hang()]]),
            Steps::new(vec![
                [vec![think(100, "secret"), say(100, "sky.")], end("stop")].concat()
            ]),
        )
    };
    let (primary, fallback) = script();
    let done = Splicer::new(ladder(primary, fallback)).collect(question()).await;
    assert_eq!(done.text, "Blue sky.");
    assert_eq!(done.reasoning, "", "late reasoning is withheld");
    let tokens = &done.outcome.as_ref().expect("done").tokens;
    let deltas: Vec<u64> = tokens.attempts.iter().map(|a| a.deltas).collect();
    assert_eq!(deltas, [1, 2], "the withheld thought is counted");

    let (primary, fallback) = script();
    let mut forwarding = ladder(primary, fallback);
    forwarding.forward_late_reasoning = true;
    let done = Splicer::new(forwarding).collect(question()).await;
    assert_eq!(done.text, "Blue sky.");
    assert_eq!(
        done.reasoning, "secret",
        "forwarded when the ladder says so; no seam was cut"
    );
}

#[tokio::test(start_paused = true)]
async fn a_thought_ends_a_hedge_race_like_a_token() {
    // The primary thinks at 1.5 s, past a 1 s hedge delay: the hedge starts, then loses to the thought.
    let primary = Steps::new(vec![
        [vec![think(1_500, "hmm"), say(100, "Blue.")], end("stop")].concat()
    ]);
    let fallback = Steps::new(vec![[vec![say(5_000, "late")], end("stop")].concat()]);
    let mut ladder = ladder(primary, fallback.clone());
    ladder.hedge = Some(baton::policy::hedge::HedgePolicy::new(
        Some(Duration::from_secs(1)),
        1_000,
    ));
    let done = Splicer::new(ladder).collect(question()).await;
    assert_eq!(done.text, "Blue.");
    assert_eq!(done.reasoning, "hmm");
    assert_eq!(fallback.seen().len(), 1, "the hedge started");
    assert_eq!(done.outcome.as_ref().expect("done").route_chain, ["primary"]);
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    json!({"object":"chat.completion.chunk","model":"m0","choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
        .to_string()
}

async fn proxy_over(field: &str) -> (support::Served, support::Scripted) {
    let reply = Reply {
        data: vec![
            chunk(json!({"role": "assistant", field: "Think"}), None),
            chunk(json!({field: "ing."}), None),
            chunk(json!({"content": "Blue."}), None),
            chunk(json!({}), Some("stop")),
        ],
        end: End::Done,
    };
    let upstream = scripted(vec![reply]).await;
    let toml = format!(
        "[[route]]\nname = \"primary\"\nprovider = \"openai\"\nbase_url = \"{}\"\nmodel = \"m0\"\n\
         [[ladder]]\nname = \"chat\"\nroutes = [\"primary\"]\n",
        upstream.base_url()
    );
    (Serve::new(&toml).start().await, upstream)
}

#[tokio::test]
async fn the_openai_door_streams_reasoning_deltas_and_puts_it_in_the_whole_message() {
    for (field, out) in [("reasoning_content", "reasoning_content"), ("reasoning", "reasoning")] {
        let (proxy, _upstream) = proxy_over(field).await;
        let ask =
            |stream: bool| json!({"model": "chat", "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
        let body = proxy.chat(&ask(true)).await.text().await.expect("body");
        let sse = Sse::parse(&body);
        assert!(sse.done(), "{body}");
        let chunks = sse.chunks();
        let thoughts: Vec<&str> = chunks
            .iter()
            .filter_map(|c| c.pointer(&format!("/choices/0/delta/{out}")).and_then(Value::as_str))
            .collect();
        assert_eq!(thoughts, ["Think", "ing."], "{body}");
        assert_eq!(sse.text(), "Blue.");
        assert_eq!(
            chunks[0].pointer("/choices/0/delta/role"),
            Some(&json!("assistant")),
            "the role comes with the first delta, a reasoning one"
        );
        let other = if out == "reasoning" {
            "reasoning_content"
        } else {
            "reasoning"
        };
        assert!(
            chunks
                .iter()
                .all(|c| c.pointer(&format!("/choices/0/delta/{other}")).is_none()),
            "{body}"
        );

        let whole: Value = proxy.chat(&ask(false)).await.json().await.expect("json");
        assert_eq!(
            whole.pointer("/choices/0/message/content"),
            Some(&json!("Blue.")),
            "{whole}"
        );
        assert_eq!(
            whole.pointer(&format!("/choices/0/message/{out}")),
            Some(&json!("Thinking.")),
            "{whole}"
        );
    }
}
