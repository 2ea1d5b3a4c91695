//! The ladder's own rungs and rules, under virtual time: the response cache
//! (first rung and last resort), the safe reply, and the latency and cost ceilings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::sync::Arc;
use std::time::Duration;

use baton::engine::splice::ClientItem;
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::script::Pacing;
use baton::oracle::{answer, Style};
use baton::rungs::cache::{CacheLimits, CacheRung, CacheUse, ResponseCache, CACHE_MODEL, CACHE_ROUTE};
use baton::rungs::safe_reply::{SafeReply, SAFE_REPLY_MODEL, SAFE_REPLY_ROUTE};
use baton::{ChatRequest, EventKind, Ladder, Message, Role, Route, Splicer};
use futures::StreamExt;

fn mock(fault: &str) -> Arc<MockProvider> {
    Arc::new(MockProvider::new(
        FaultPlan::Fixed(fault.parse::<FaultScript>().expect("fault")),
        Style::default(),
    ))
}

fn conversation(i: usize) -> Vec<Message> {
    vec![Message::new(Role::User, format!("rungs {i}"))]
}

fn cache(uses: CacheUse) -> CacheRung {
    CacheRung {
        uses,
        store: Arc::new(ResponseCache::new(CacheLimits::default())),
    }
}

fn kinds(failures: &[baton::Failure]) -> Vec<&str> {
    failures.iter().map(|f| f.kind.as_str()).collect()
}

/// The text deltas of a session, each with its route and model.
async fn deltas(splicer: &Splicer, request: ChatRequest) -> (Vec<(String, String, String)>, Option<ClientItem>) {
    let mut stream = splicer.splice(request);
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            ClientItem::Text { text, route, model } => out.push((text, route.to_string(), model.to_string())),
            end @ (ClientItem::Done(_) | ClientItem::Failed(_)) => return (out, Some(end)),
            _ => {}
        }
    }
    (out, None)
}

#[tokio::test(start_paused = true)]
async fn the_cache_answers_a_repeated_request_first_with_the_live_chunking() {
    let primary = mock("none");
    let mut ladder = Ladder::new(vec![Route::new("primary", "p", primary.clone())]);
    ladder.cache = Some(cache(CacheUse::First));
    let splicer = Splicer::new(ladder);
    let mut events = splicer.subscribe();

    let (live, _) = deltas(&splicer, ChatRequest::new(conversation(1))).await;
    assert_eq!(primary.requests(), 1);
    // Same conversation, different transport fields: still a hit.
    let mut again = ChatRequest::new(conversation(1));
    again.params.insert("stream".into(), serde_json::json!(true));
    let (cached, end) = deltas(&splicer, again).await;
    assert_eq!(primary.requests(), 1, "a hit sends no request");
    let live_text: Vec<&str> = live.iter().map(|(t, _, _)| t.as_str()).collect();
    let cached_text: Vec<&str> = cached.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(cached_text, live_text, "same deltas, same chunking");
    assert_eq!(cached_text.concat(), answer(&conversation(1)));
    assert!(cached.iter().all(|(_, r, m)| r == CACHE_ROUTE && m == CACHE_MODEL));
    let Some(ClientItem::Done(done)) = end else {
        panic!("no completion: {end:?}")
    };
    assert_eq!(done.route_chain, [CACHE_ROUTE]);

    // A different conversation misses and goes to the route.
    let (_, _) = deltas(&splicer, ChatRequest::new(conversation(2))).await;
    assert_eq!(primary.requests(), 2);

    let mut hits = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let EventKind::CacheHit { last_resort, bytes, .. } = e.kind {
            hits.push((last_resort, bytes));
        }
    }
    assert_eq!(hits, [(false, answer(&conversation(1)).len() as u64)]);
}

#[tokio::test(start_paused = true)]
async fn as_the_last_resort_the_cache_finishes_an_answer_every_route_dropped() {
    // The first session is served whole and cached; in the second the only
    // route drops mid-answer, and the cache continues exactly where it stopped.
    let primary = mock("none");
    let dropping = mock("drop@4");
    let mut healthy = Ladder::new(vec![Route::new("primary", "p", primary)]);
    let rung = cache(CacheUse::LastResort);
    healthy.cache = Some(rung.clone());
    Splicer::new(healthy).collect(ChatRequest::new(conversation(3))).await;
    assert_eq!(rung.store.len(), 1);

    let mut broken = Ladder::new(vec![Route::new("primary", "p", dropping)]);
    broken.cache = Some(rung);
    let done = Splicer::new(broken).collect(ChatRequest::new(conversation(3))).await;
    assert_eq!(done.text, answer(&conversation(3)), "byte for byte");
    let completion = done.outcome.expect("the cache completes it");
    assert_eq!(completion.route_chain, ["primary", CACHE_ROUTE]);
    assert_eq!(kinds(&completion.failures), ["truncated"]);
    assert_eq!(done.handovers.len(), 1);
    assert_eq!(&*done.handovers[0].to, CACHE_ROUTE);
}

#[tokio::test(start_paused = true)]
async fn the_safe_reply_answers_when_nothing_can_and_a_note_closes_a_partial_answer() {
    let safe = SafeReply {
        reply: "Sorry, no model can answer right now.".into(),
        note: " [cut short]".into(),
    };
    // Nothing sent yet: the whole safe reply, labelled.
    let mut ladder = Ladder::new(vec![Route::new("primary", "p", mock("503"))]);
    ladder.safe_reply = Some(safe.clone());
    ladder.retry.max_retries = 0;
    let splicer = Splicer::new(ladder);
    let (sent, end) = deltas(&splicer, ChatRequest::new(conversation(4))).await;
    let text: String = sent.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(text, safe.reply);
    assert!(sent.len() > 1, "streamed in word-sized deltas");
    assert!(sent
        .iter()
        .all(|(_, r, m)| r == SAFE_REPLY_ROUTE && m == SAFE_REPLY_MODEL));
    let Some(ClientItem::Done(done)) = end else {
        panic!("no completion: {end:?}")
    };
    assert_eq!(done.route_chain, [SAFE_REPLY_ROUTE]);
    assert_eq!(kinds(&done.failures), ["server_error"]);

    // Part of the answer sent: the note closes it instead of a new answer.
    let mut ladder = Ladder::new(vec![Route::new("primary", "p", mock("drop@5"))]);
    ladder.safe_reply = Some(safe.clone());
    let splicer = Splicer::new(ladder);
    let mut events = splicer.subscribe();
    let done = splicer.collect(ChatRequest::new(conversation(5))).await;
    let full = answer(&conversation(5));
    let note_at = done.text.len() - safe.note.len();
    assert!(done.text.ends_with(&safe.note), "{:?}", done.text);
    assert!(
        note_at > 0 && full.starts_with(&done.text[..note_at]),
        "the sent part is the answer's start"
    );
    assert_eq!(done.outcome.expect("closed").route_chain, ["primary", SAFE_REPLY_ROUTE]);
    let mut partial = None;
    while let Ok(e) = events.try_recv() {
        if let EventKind::SafeReply { partial: p, .. } = e.kind {
            partial = Some(p);
        }
    }
    assert_eq!(partial, Some(true));
}

#[tokio::test(start_paused = true)]
async fn without_a_safe_reply_an_exhausted_ladder_still_fails() {
    let ladder = Ladder::new(vec![Route::new("primary", "p", mock("policy"))]);
    let done = Splicer::new(ladder).collect(ChatRequest::new(conversation(6))).await;
    assert!(done.outcome.is_err());
    let mut ladder = Ladder::new(vec![Route::new("primary", "p", mock("500"))]);
    ladder.retry.max_retries = 0;
    let done = Splicer::new(ladder).collect(ChatRequest::new(conversation(6))).await;
    assert!(matches!(
        done.outcome,
        Err(baton::engine::splice::SpliceError::Exhausted { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_route_over_the_latency_ceiling_is_skipped_until_its_slow_samples_age_out() {
    let slow = Arc::new(
        MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()).with_pacing(Pacing {
            first_token: Duration::from_millis(2500),
            interval: Duration::from_millis(5),
        }),
    );
    let fast = mock("none");
    let mut ladder = Ladder::new(vec![
        Route::new("slow", "s", slow.clone()),
        Route::new("fast", "f", fast.clone()),
    ]);
    ladder.rules.latency_ceiling = Some(Duration::from_secs(1));
    let splicer = Splicer::new(ladder);
    // Five sessions teach the route's first-token times (the verdict needs five samples).
    for i in 0..5 {
        let done = splicer.collect(ChatRequest::new(conversation(10 + i))).await;
        assert_eq!(done.outcome.expect("complete").route_chain, ["slow"]);
    }
    let done = splicer.collect(ChatRequest::new(conversation(20))).await;
    assert_eq!(done.text, answer(&conversation(20)));
    let completion = done.outcome.expect("complete");
    assert_eq!(kinds(&completion.failures), ["too_slow"]);
    assert_eq!(completion.failures[0].class, baton::FailureClass::Business);
    assert_eq!(completion.route_chain, ["fast"]);
    assert_eq!(slow.requests(), 5, "a skipped route gets no request");

    // A minute later the slow samples have expired: the route is tried again.
    tokio::time::advance(Duration::from_secs(61)).await;
    let done = splicer.collect(ChatRequest::new(conversation(21))).await;
    assert_eq!(done.outcome.expect("complete").route_chain, ["slow"]);
}

#[tokio::test(start_paused = true)]
async fn a_route_whose_estimated_cost_is_over_the_ceiling_is_skipped() {
    let dear = mock("none");
    let cheap = mock("none");
    let mut expensive = Route::new("dear", "d", dear.clone());
    expensive.price_per_1k = Some(0.06);
    let mut thrifty = Route::new("cheap", "c", cheap.clone());
    thrifty.price_per_1k = Some(0.0005);
    let mut ladder = Ladder::new(vec![expensive, thrifty]);
    // ~1030 tokens (a short prompt and the default 1024-token completion estimate) × $0.06/1k ≈ $0.062.
    ladder.rules.max_cost_per_request = Some(0.05);
    let splicer = Splicer::new(ladder.clone());
    let done = splicer.collect(ChatRequest::new(conversation(30))).await;
    assert_eq!(done.text, answer(&conversation(30)));
    let completion = done.outcome.expect("complete");
    assert_eq!(kinds(&completion.failures), ["over_cost"]);
    assert_eq!(completion.route_chain, ["cheap"]);
    assert_eq!(dear.requests(), 0);

    // A smaller max_tokens brings the estimate under the ceiling.
    let mut small = ChatRequest::new(conversation(31));
    small.params.insert("max_tokens".into(), serde_json::json!(200));
    let done = splicer.collect(small).await;
    assert_eq!(done.outcome.expect("complete").route_chain, ["dear"]);
}
