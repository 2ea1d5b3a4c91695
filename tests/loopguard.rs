//! The loop guard end to end, under virtual time with the in-process oracle:
//! a primary that starts repeating itself (`loop@K`) is stopped, the client's
//! looped text is closed with the marker, and the fallback continues from
//! where the repetition began.
//!
//! The expected text is derived from the oracle: its answer up to the cut,
//! then the looped text the client saw (copies of the oracle's loop phrase),
//! the marker, then the rest of the answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::sync::Arc;

use futures::stream;

use baton::engine::event::EngineEvent;
use baton::engine::splice::Collected;
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::script::{LOOP_PHRASE, LOOP_REPEATS};
use baton::oracle::{answer, Style};
use baton::policy::loopguard::{LoopConfig, CHECK_EVERY, DEFAULT_MARKER};
use baton::provider::{Chunk, ChunkStream, Provider, UpstreamRequest};
use baton::record::verify::Outcome;
use baton::{
    ChatRequest, ContinuationMode, EventKind, FailureClass, FailureKind, Ladder, Message, Role, Route, Splicer,
};

use support::{bytes_after_chunks, drain, verify_events};

fn mock(fault: &str, style: Style) -> Arc<MockProvider> {
    let script: FaultScript = fault.parse().unwrap_or_else(|e| panic!("{e}"));
    Arc::new(MockProvider::new(FaultPlan::Fixed(script), style))
}

fn conversations() -> Vec<Vec<Message>> {
    vec![
        vec![Message::new(Role::User, "Tell me about rivers.")],
        vec![
            Message::new(Role::System, "You are terse."),
            Message::new(Role::User, "Ünïcödé, s'il vous plaît — 日本語で"),
        ],
        vec![
            Message::new(Role::User, "Hi"),
            Message::new(Role::Assistant, "Hello! How can I help?"),
            Message::new(Role::User, "Describe a harbor at dawn."),
        ],
    ]
}

/// A looping primary and a fallback continuing in `mode` with `style`.
fn looping(k: usize, mode: ContinuationMode, style: Style, guard: Option<LoopConfig>) -> (Splicer, Arc<MockProvider>) {
    let fallback = mock("none", style);
    let mut ladder = Ladder::new(vec![
        Route::new("primary", "oracle-big", mock(&format!("loop@{k}"), Style::default())),
        Route::new("fallback", "oracle-small", fallback.clone()).with_continuation(mode),
    ]);
    ladder.loop_guard = guard;
    (Splicer::new(ladder), fallback)
}

/// The looped text in `text`, between the answer's first `cut` bytes and
/// `marker` followed by the rest of the answer; panics if `text` is not shaped so.
fn looped_part<'t>(text: &'t str, full: &str, cut: usize, marker: &str, case: &str) -> &'t str {
    let seen = text
        .strip_prefix(&full[..cut])
        .and_then(|rest| rest.strip_suffix(&full[cut..]))
        .and_then(|rest| rest.strip_suffix(marker))
        .unwrap_or_else(|| panic!("[{case}] not answer[..{cut}] + loop + marker + answer[{cut}..]:\n{text:?}"));
    let copies = seen.len() / LOOP_PHRASE.len();
    assert_eq!(
        seen,
        LOOP_PHRASE.repeat(copies),
        "[{case}] the looped part is the oracle's loop"
    );
    seen
}

fn attempts(events: &[EngineEvent]) -> Vec<(String, u64, Vec<Message>)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::AttemptOpened {
                route,
                prefix_bytes,
                request,
                ..
            } => Some((route.clone(), *prefix_bytes, request.messages.clone())),
            _ => None,
        })
        .collect()
}

fn completed<'a>(done: &'a Collected, case: &str) -> &'a baton::engine::splice::Completion {
    done.outcome
        .as_ref()
        .unwrap_or_else(|e| panic!("[{case}] expected a completion, got {e:?}"))
}

#[tokio::test(start_paused = true)]
async fn a_loop_is_cut_back_marked_and_continued_by_the_fallback() {
    let repeating = Style {
        repeat_words: 2,
        extra_space: false,
    };
    let modes = [
        (ContinuationMode::Prefill, Style::default()),
        (ContinuationMode::Instruct, repeating),
    ];
    for messages in conversations() {
        let full = answer(&messages);
        for k in [0, 1, 17, 10_000] {
            for (mode, style) in modes {
                let case = format!("{:?} loop@{k} {}", messages[0].content, mode.as_str());
                let (splicer, fallback) = looping(k, mode, style, Some(LoopConfig::default()));
                let mut events = splicer.subscribe();
                let done = splicer.collect(ChatRequest::new(messages.clone())).await;
                let events = drain(&mut events);
                let cut = bytes_after_chunks(&messages, k);

                let seen = looped_part(&done.text, &full, cut, DEFAULT_MARKER, &case);
                // Caught once the loop spans the default 300 bytes, within one look (32 bytes) and one chunk.
                assert!(
                    seen.len() >= 300 && seen.len() < 300 + CHECK_EVERY + LOOP_PHRASE.len(),
                    "[{case}] {} looped bytes reached the client",
                    seen.len()
                );
                let completion = completed(&done, &case);
                let failures: Vec<_> = completion
                    .failures
                    .iter()
                    .map(|f| (f.route.as_str(), f.kind.as_str(), f.class))
                    .collect();
                assert_eq!(failures, [("primary", "loop", FailureClass::Quality)], "[{case}]");
                assert_eq!(
                    completion.failures[0].bytes as usize,
                    cut + seen.len() + DEFAULT_MARKER.len()
                );
                assert_eq!(done.handovers.len(), 1, "[{case}]");
                assert_eq!(
                    (done.handovers[0].reason, done.handovers[0].class),
                    ("loop", FailureClass::Quality)
                );
                let cause = events.iter().find_map(|e| match &e.kind {
                    EventKind::Failure { cause, .. } => Some(cause.clone()),
                    _ => None,
                });
                assert_eq!(
                    cause,
                    Some(FailureKind::Loop {
                        period: LOOP_PHRASE.len() as u32,
                        repeats: (seen.len() / LOOP_PHRASE.len()) as u32
                    }),
                    "[{case}]"
                );

                // The fallback builds on the cut-back prefix, not on what the client saw.
                let opened = attempts(&events);
                assert_eq!(opened.len(), 2, "[{case}]");
                assert_eq!(
                    (opened[1].0.as_str(), opened[1].1),
                    ("fallback", cut as u64),
                    "[{case}]"
                );
                let handed: Vec<&Message> = opened[1].2.iter().filter(|m| m.role == Role::Assistant).collect();
                if cut > 0 {
                    assert_eq!(
                        handed.last().map(|m| m.content.as_str()),
                        Some(&full[..cut]),
                        "[{case}]"
                    );
                }
                assert!(opened[1].2.iter().all(|m| !m.content.contains(LOOP_PHRASE)), "[{case}]");
                assert_eq!(fallback.requests(), 1, "[{case}]");
                assert_eq!(verify_events(&events), Outcome::Ok { partial: false }, "[{case}]");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn thresholds_and_marker_come_from_the_ladder() {
    let messages = conversations().remove(0);
    let full = answer(&messages);
    let guard = LoopConfig {
        min_repeats: 3,
        min_span_bytes: 40,
        marker: "⟪loop⟫".into(),
    };
    let (splicer, _) = looping(9, ContinuationMode::Prefill, Style::default(), Some(guard.clone()));
    let mut events = splicer.subscribe();
    let done = splicer.collect(ChatRequest::new(messages.clone())).await;
    let cut = bytes_after_chunks(&messages, 9);
    let seen = looped_part(&done.text, &full, cut, &guard.marker, "custom");
    assert!(
        seen.len() >= 40 && seen.len() < 40 + CHECK_EVERY + LOOP_PHRASE.len(),
        "{seen:?}"
    );
    assert_eq!(verify_events(&drain(&mut events)), Outcome::Ok { partial: false });

    // An empty marker sends nothing at the cut.
    let quiet = LoopConfig {
        marker: String::new(),
        ..guard
    };
    let (splicer, _) = looping(9, ContinuationMode::Prefill, Style::default(), Some(quiet));
    let done = splicer.collect(ChatRequest::new(messages.clone())).await;
    looped_part(&done.text, &full, cut, "", "no marker");
}

#[tokio::test(start_paused = true)]
async fn with_the_guard_off_a_loop_runs_to_its_length_limit() {
    let messages = conversations().remove(0);
    let full = answer(&messages);
    let (splicer, fallback) = looping(5, ContinuationMode::Prefill, Style::default(), None);
    let done = splicer.collect(ChatRequest::new(messages.clone())).await;
    let cut = bytes_after_chunks(&messages, 5);
    assert_eq!(
        done.text,
        format!("{}{}", &full[..cut], LOOP_PHRASE.repeat(LOOP_REPEATS))
    );
    let completion = completed(&done, "off");
    assert_eq!(completion.finish_reason, "length");
    assert!(completion.failures.is_empty());
    assert_eq!(fallback.requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn ordinary_answers_are_never_taken_for_loops() {
    // The oracle's answers, many of them, with the default guard.
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("primary", "oracle", mock("none", Style::default())),
        Route::new("fallback", "oracle", mock("none", Style::default())),
    ]));
    for i in 0..300 {
        let messages = vec![Message::new(Role::User, format!("question number {i}"))];
        let done = splicer.collect(ChatRequest::new(messages.clone())).await;
        assert_eq!(done.text, answer(&messages), "conversation {i}");
        assert!(completed(&done, "oracle").failures.is_empty(), "conversation {i}");
    }
    // Repetitive but not degenerate: numbered lists, tables, rules, short runs.
    let texts = [
        (1..=150)
            .map(|i| format!("{i}. Add one more cup of water.\n"))
            .collect::<String>(),
        format!(
            "| step | done |\n|------|------|\n{}",
            (1..=80).map(|i| format!("| {i} | yes |\n")).collect::<String>()
        ),
        format!("Results\n{}\nAll good. {}", "=".repeat(120), "ha ".repeat(40)),
        format!("let zeros = [{}0];", "0, ".repeat(90)),
    ];
    for text in texts {
        let splicer = Splicer::new(Ladder::new(vec![Route::new(
            "only",
            "fixed",
            Arc::new(Fixed(text.clone())),
        )]));
        let done = splicer
            .collect(ChatRequest::new(vec![Message::new(Role::User, "list")]))
            .await;
        assert_eq!(done.text, text);
        assert!(completed(&done, "fixed").failures.is_empty());
    }
}

/// An upstream that streams one fixed text in 3-byte chunks.
struct Fixed(String);

impl Provider for Fixed {
    fn stream(&self, _request: UpstreamRequest) -> ChunkStream {
        let bytes = self.0.as_bytes();
        let mut chunks = vec![Ok(Chunk::Opened)];
        let mut at = 0;
        while at < bytes.len() {
            let mut end = (at + 3).min(bytes.len());
            while !self.0.is_char_boundary(end) {
                end += 1;
            }
            chunks.push(Ok(Chunk::Text(self.0[at..end].to_string())));
            at = end;
        }
        chunks.push(Ok(Chunk::Finish("stop".into())));
        Box::pin(stream::iter(chunks))
    }
}
