//! The chaos matrix: every fault the oracle can inject, at every interesting
//! point of the answer, against every way a fallback can continue — all under
//! tokio's paused clock, with the in-process mock provider, so the whole
//! matrix is deterministic and takes no real time.
//!
//! The invariant checked in every case: the client ends with exactly the
//! oracle's answer to its conversation, byte for byte — nothing lost, nothing
//! doubled — and the failure on the way was classified as expected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

use baton::engine::splice::{Collected, Completion, SpliceError};
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::script::{Pacing, LOOP_PHRASE};
use baton::oracle::{self, Style};
use baton::policy::deadline::{DEFAULT_FLOOR, DEFAULT_OWN_GAPS};
use baton::policy::loopguard::DEFAULT_MARKER as LOOP_MARKER;
use baton::policy::reasoning::SEAM_MARKER;
use baton::provider::{Chunk, ChunkStream, Provider, UpstreamRequest};
use baton::{
    ChatRequest, ClientItem, ContinuationMode, EventKind, FailureClass, FailureKind, Ladder, Message, Role, Route,
    Splicer,
};

// ---------------------------------------------------------------- fixtures

/// Five conversations, so the cut points of the matrix land in different places.
fn conversations() -> Vec<Vec<Message>> {
    vec![
        vec![Message::new(Role::User, "Tell me about rivers.")],
        vec![
            Message::new(Role::System, "You are terse."),
            Message::new(Role::User, "What is a baton relay?"),
        ],
        vec![
            Message::new(Role::User, "Hi"),
            Message::new(Role::Assistant, "Hello! How can I help?"),
            Message::new(Role::User, "Write a long paragraph about glaciers, please."),
        ],
        vec![Message::new(Role::User, "Ünïcödé, s'il vous plaît — 日本語で")],
        vec![
            Message::new(Role::Developer, "Answer in prose."),
            Message::new(Role::User, "Describe a harbor at dawn."),
        ],
    ]
}

/// A request with a fixed session id, so the retry jitter is the same every run.
fn request(messages: &[Message]) -> ChatRequest {
    let mut r = ChatRequest::new(messages.to_vec());
    r.session = uuid::Uuid::from_u128(0x0ba7_0000_0000_4000_8000_0000_0000_0001);
    r
}

fn mock(script: &str, style: Style) -> Arc<MockProvider> {
    let script: FaultScript = script.parse().unwrap_or_else(|e| panic!("{e}"));
    Arc::new(MockProvider::new(FaultPlan::Fixed(script), style))
}

/// A primary with a fault, a fallback continuing in `mode`/`style` with its own
/// fault, and a healthy spare that should normally never be called.
struct World {
    primary: Arc<MockProvider>,
    fallback: Arc<MockProvider>,
    spare: Arc<MockProvider>,
    splicer: Splicer,
}

///
/// An echoing fallback has been seen echoing before (in both modes): a
/// one-word echo after a space is otherwise as likely a genuine repeat, and
/// kept. The seam matrix below shows how a fresh route learns it.
fn world(primary: &str, fallback: &str, mode: ContinuationMode, style: Style) -> World {
    let p = mock(primary, Style::default());
    let f = mock(fallback, style);
    let s = mock("none", Style::default());
    let fallback = Route::new("fallback", "oracle-small", f.clone()).with_continuation(mode);
    if style.repeat_words > 0 {
        for mode in MODES {
            fallback.health.model("oracle-small").remember_echo(mode);
        }
    }
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("primary", "oracle-big", p.clone()),
        fallback,
        Route::new("spare", "oracle-spare", s.clone()),
    ]));
    World {
        primary: p,
        fallback: f,
        spare: s,
        splicer,
    }
}

/// The answer the primary streams, cut into the chunks the mock sends.
fn primary_chunks(messages: &[Message]) -> (String, Vec<usize>) {
    let answer = oracle::answer(messages);
    let ends = oracle::chunks(&answer, oracle::conversation_hash(messages))
        .iter()
        .scan(0, |at, c| {
            *at += c.len();
            Some(*at)
        })
        .collect();
    (answer, ends)
}

/// Bytes the client has after `k` chunks (the fault's K clamps to the chunk count).
fn prefix_len(ends: &[usize], k: usize) -> usize {
    match k.min(ends.len()) {
        0 => 0,
        k => ends[k - 1],
    }
}

fn completion<'a>(done: &'a Collected, case: &str) -> &'a Completion {
    match &done.outcome {
        Ok(c) => c,
        Err(e) => panic!(
            "[{case}] expected a completion, got {e:?}\ntext so far: {:?}",
            done.text
        ),
    }
}

fn labels(c: &Completion) -> Vec<(&str, &str)> {
    c.failures.iter().map(|f| (f.route.as_str(), f.kind.as_str())).collect()
}

const MODES: [ContinuationMode; 2] = [ContinuationMode::Prefill, ContinuationMode::Instruct];

const STYLES: [Style; 3] = [
    Style {
        repeat_words: 0,
        extra_space: false,
    },
    Style {
        repeat_words: 1,
        extra_space: false,
    },
    Style {
        repeat_words: 3,
        extra_space: false,
    },
];

// ------------------------------------------------------ mid-stream matrix

/// What a mid-stream fault at `k` must be classified as.
fn mid_stream_label(fault: &str, k: usize) -> &'static str {
    match fault {
        // Before the first token, silence is a first-token timeout, not a stall.
        "stall" if k == 0 => "first_token_timeout",
        "stall" => "stall",
        "drop" => "truncated",
        "malformed" => "malformed",
        "error" => "error_event",
        other => panic!("not a mid-stream fault: {other}"),
    }
}

/// One mid-stream case: the primary fails after `k` chunks, the fallback continues.
async fn mid_stream_case(
    conv: usize,
    messages: &[Message],
    fault: &str,
    k: usize,
    mode: ContinuationMode,
    style: Style,
) {
    let (answer, ends) = primary_chunks(messages);
    let script = format!("{fault}@{k}");
    let case = format!(
        "conv={conv} fault={script} chunks={} mode={mode:?} style={style:?}",
        ends.len()
    );
    let w = world(&script, "none", mode, style);
    let started = Instant::now();
    let done = w.splicer.collect(request(messages)).await;
    let elapsed = started.elapsed();

    assert_eq!(done.text, answer, "[{case}] the client text is not the oracle's answer");
    let c = completion(&done, &case);
    assert_eq!(c.finish_reason, "stop", "[{case}]");

    let prefix = prefix_len(&ends, k);
    let label = mid_stream_label(fault, k);
    assert_eq!(
        labels(c),
        vec![("primary", label)],
        "[{case}] failures: {:?}",
        c.failures
    );
    let f = &c.failures[0];
    assert_eq!(f.class, FailureClass::Technical, "[{case}]");
    assert_eq!(f.bytes, prefix as u64, "[{case}] bytes the client had at the failure");
    assert_eq!(f.tokens, k.min(ends.len()) as u64, "[{case}] deltas before the failure");

    // Who wrote the answer: the primary if it sent anything, the fallback if anything was left.
    let mut chain = Vec::new();
    if prefix > 0 {
        chain.push("primary");
    }
    // The fallback took over even when nothing was left to add: it confirmed the end.
    chain.push("fallback");
    assert_eq!(c.route_chain, chain, "[{case}] route chain");

    // A handover notice comes with the fallback's first byte, or with its finish.
    {
        assert_eq!(done.handovers.len(), 1, "[{case}] handovers: {:?}", done.handovers);
        let h = &done.handovers[0];
        assert_eq!(
            (&*h.from, &*h.to, h.reason, h.class),
            ("primary", "fallback", label, FailureClass::Technical),
            "[{case}]"
        );
        assert_eq!(h.prefix_bytes, prefix as u64, "[{case}]");
    }

    assert_eq!(w.primary.requests(), 1, "[{case}] mid-stream faults are never retried");
    assert_eq!(w.fallback.requests(), 1, "[{case}]");
    assert_eq!(w.spare.requests(), 0, "[{case}] the spare must not be needed");
    if fault == "stall" {
        let deadline = match k {
            0 => Duration::from_secs(10),
            // k chunks show k − 1 gaps; once the stream has shown its first few, its own
            // 5 ms cadence sets the stall deadline: the floor, not the 3 s ceiling.
            k if k > DEFAULT_OWN_GAPS as usize => DEFAULT_FLOOR,
            _ => Duration::from_secs(3),
        };
        assert!(
            elapsed >= deadline,
            "[{case}] detected after {elapsed:?}, before the {deadline:?} deadline"
        );
        // Streaming both halves takes well under a second of virtual time.
        assert!(
            elapsed < deadline + Duration::from_secs(2),
            "[{case}] detected late: {elapsed:?}"
        );
    } else {
        assert!(
            elapsed < Duration::from_secs(3),
            "[{case}] took {elapsed:?} of virtual time"
        );
    }
}

/// The matrix for one fault kind: 5 conversations × 5 positions × 2 modes × 3 styles.
async fn mid_stream_matrix(fault: &str) -> usize {
    let mut cases = 0;
    for (conv, messages) in conversations().iter().enumerate() {
        let n = primary_chunks(messages).1.len();
        // Before the first token, after it, mid answer, just before the finish, and past the end (clamps).
        for k in [0, 1, n / 2, n, n + 3] {
            for mode in MODES {
                for style in STYLES {
                    mid_stream_case(conv, messages, fault, k, mode, style).await;
                    cases += 1;
                }
            }
        }
    }
    cases
}

#[tokio::test(start_paused = true)]
async fn stall_at_every_position() {
    assert_eq!(mid_stream_matrix("stall").await, 150);
}

#[tokio::test(start_paused = true)]
async fn drop_at_every_position() {
    assert_eq!(mid_stream_matrix("drop").await, 150);
}

#[tokio::test(start_paused = true)]
async fn malformed_at_every_position() {
    assert_eq!(mid_stream_matrix("malformed").await, 150);
}

#[tokio::test(start_paused = true)]
async fn error_event_at_every_position() {
    assert_eq!(mid_stream_matrix("error").await, 150);
}

/// Cuts right after a space, with a fallback that starts its continuation
/// with another space (and sometimes repeats words too): the seam must not
/// double the whitespace.
#[tokio::test(start_paused = true)]
async fn extra_space_at_a_word_boundary() {
    let mut cases = 0;
    for (conv, messages) in conversations().iter().enumerate() {
        let (answer, ends) = primary_chunks(messages);
        let at_space: Vec<usize> = (1..ends.len())
            .filter(|&k| answer[..ends[k - 1]].ends_with(' '))
            .collect();
        assert!(!at_space.is_empty(), "conv={conv}: no chunk ends with a space");
        let picks = [at_space[0], at_space[at_space.len() / 2], at_space[at_space.len() - 1]];
        for k in picks {
            for fault in ["stall", "drop"] {
                for mode in MODES {
                    for repeat_words in [0, 1, 2] {
                        let style = Style {
                            repeat_words,
                            extra_space: true,
                        };
                        mid_stream_case(conv, messages, fault, k, mode, style).await;
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 5 * 3 * 2 * 2 * 3);
}

/// A cut right after a line break, where the answer goes on with a blank
/// line: the fallback's leading `\n` is the blank line, not the seam's
/// whitespace given back, and is kept (found by `baton bench stall`).
#[tokio::test(start_paused = true)]
async fn a_blank_line_at_the_seam_is_kept() {
    let messages = vec![Message::new(Role::User, "stall bench pauses session 8766")];
    let (answer, ends) = primary_chunks(&messages);
    let k = 56;
    assert!(
        answer[..ends[k - 1]].ends_with('\n') && answer[ends[k - 1]..].starts_with('\n'),
        "the cut is at a blank line"
    );
    for mode in MODES {
        let w = world(&format!("stall@{k}"), "none", mode, STYLES[0]);
        let done = w.splicer.collect(request(&messages)).await;
        assert_eq!(done.text, answer, "[{mode:?}] byte for byte");
        assert_eq!(done.handovers.len(), 1, "[{mode:?}]");
    }
}

// ------------------------------------------------------------- the seam

/// A primary that streams its answer exactly up to byte `at` (in the oracle's
/// chunks) and then drops, so a cut lands anywhere, not only at a chunk's end.
struct CutAt(usize);

impl Provider for CutAt {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let answer = oracle::answer(&request.messages);
        let text = answer[..self.0].to_string();
        let chunks: Vec<Result<Chunk, FailureKind>> = std::iter::once(Chunk::Opened)
            .chain(
                oracle::chunks(&text, oracle::conversation_hash(&request.messages))
                    .into_iter()
                    .map(|c| Chunk::Text(c.to_string())),
            )
            .map(Ok)
            .collect();
        Box::pin(futures::stream::iter(chunks))
    }
}

/// A fallback whose whole continuation arrives as one delta.
struct Whole(Arc<MockProvider>);

impl Provider for Whole {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let inner = self.0.stream(request);
        Box::pin(futures::stream::once(inner.collect::<Vec<_>>()).flat_map(|items| {
            let mut out: Vec<Result<Chunk, FailureKind>> = Vec::new();
            for item in items {
                match (item, out.last_mut()) {
                    (Ok(Chunk::Text(t)), Some(Ok(Chunk::Text(all)))) => all.push_str(&t),
                    (item, _) => out.push(item),
                }
            }
            futures::stream::iter(out)
        }))
    }
}

/// Cut points at the answer's genuine repeats: where the text goes on with
/// what it just said (after the first of two words, around its space, between
/// two equal lines, inside the second), and at a phrase said again.
fn repeat_cuts(answer: &str) -> Vec<usize> {
    let b = answer.as_bytes();
    let word_start = |s: usize| s == 0 || (b[s - 1].is_ascii_whitespace() && !b[s].is_ascii_whitespace());
    let mut cuts = Vec::new();
    for at in 1..answer.len() {
        if !answer.is_char_boundary(at) {
            continue;
        }
        let next = &answer[at..];
        let after_space = next.strip_prefix([' ', '\n']).unwrap_or(next);
        let repeats = (at.saturating_sub(40)..at)
            .filter(|&s| answer.is_char_boundary(s) && word_start(s))
            .any(|s| next.starts_with(&answer[s..at]) || after_space.starts_with(&answer[s..at]));
        // A phrase said again: the next dozen bytes were said before.
        let again =
            word_start(at) && next.len() >= 12 && next.is_char_boundary(12) && answer[..at].contains(&next[..12]);
        if repeats || again {
            cuts.push(at);
        }
    }
    cuts
}

/// The fallback styles of the seam matrix: not echoing, echoing one word or
/// three, echoing one word after giving the seam's whitespace back.
const SEAM_STYLES: [Style; 4] = [
    STYLES[0],
    STYLES[1],
    STYLES[2],
    Style {
        repeat_words: 1,
        extra_space: true,
    },
];

/// One route learning by itself: a fallback in `mode`/`style`, whole or streamed.
struct Seam {
    health: Arc<baton::policy::health::RouteHealth>,
    fallback: Arc<MockProvider>,
    mode: ContinuationMode,
    style: Style,
    whole: bool,
}

impl Seam {
    fn new(mode: ContinuationMode, style: Style, whole: bool) -> Self {
        let fallback = mock("none", style);
        Seam {
            health: Arc::default(),
            fallback,
            mode,
            style,
            whole,
        }
    }

    /// The client's text when the primary is cut after `at` bytes of `messages`' answer.
    async fn cut(&self, messages: &[Message], at: usize) -> Collected {
        let provider: Arc<dyn Provider> = if self.whole {
            Arc::new(Whole(self.fallback.clone()))
        } else {
            self.fallback.clone()
        };
        let mut fallback = Route::new("fallback", "oracle-small", provider).with_continuation(self.mode);
        fallback.health = self.health.clone();
        let splicer = Splicer::new(Ladder::new(vec![
            Route::new("primary", "oracle-big", Arc::new(CutAt(at))),
            fallback,
        ]));
        splicer.collect(request(messages)).await
    }

    fn case(&self, conv: usize, at: usize, answer: &str) -> String {
        let before: String = answer[..at]
            .chars()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let after: String = answer[at..].chars().take(20).collect();
        format!(
            "conv={conv} cut={at} {before:?}|{after:?} mode={:?} style={:?} whole={}",
            self.mode, self.style, self.whole
        )
    }

    /// Cuts at `at` and checks the client ends with exactly the oracle's answer.
    async fn exact(&self, conv: usize, messages: &[Message], at: usize) {
        let answer = oracle::answer(messages);
        let case = self.case(conv, at, &answer);
        let done = self.cut(messages, at).await;
        assert_eq!(done.text, answer, "[{case}] the client text is not the oracle's answer");
        let c = completion(&done, &case);
        assert_eq!(labels(c), vec![("primary", "truncated")], "[{case}]");
        assert_eq!(c.route_chain, vec!["primary", "fallback"], "[{case}]");
    }

    /// An echoing route proves it echoes on a cut inside a word (an echo glued
    /// to the prefix): from then on its short echoes are trimmed.
    async fn learn(&self, conv: usize, messages: &[Message]) {
        if self.style.repeat_words == 0 {
            return;
        }
        let answer = oracle::answer(messages);
        // Four bytes into a word of at least six, after the first 40 bytes.
        let at = answer
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                i > 40
                    && answer[..i]
                        .rsplit(' ')
                        .next()
                        .is_some_and(|w| w.len() == 4 && w.is_ascii())
                    && answer[i..]
                        .split(' ')
                        .next()
                        .is_some_and(|rest| rest.len() >= 2 && rest.is_ascii())
            })
            .unwrap_or_else(|| panic!("conv={conv}: no word to cut inside"));
        assert!(
            !self.health.model("oracle-small").seen_echoing(self.mode),
            "conv={conv}: learned too early"
        );
        self.exact(conv, messages, at).await;
        assert!(
            self.health.model("oracle-small").seen_echoing(self.mode),
            "conv={conv} at={at} style={:?}: a glued echo was not remembered",
            self.style
        );
    }
}

/// The oracle's answers repeat themselves genuinely; the primary is cut
/// exactly at each repeat, and fallbacks that echo and that do not, in both
/// modes, streamed and whole, continue it: the client ends with the oracle's
/// answer byte for byte. Nothing is lost at a genuine repeat (a non-echoing
/// fallback's continuation starts with it) and nothing doubled (an echo of it
/// is trimmed, once the route was seen echoing).
#[tokio::test(start_paused = true)]
async fn cuts_at_genuine_repeats_lose_and_double_nothing() {
    let mut cases = 0;
    for (conv, messages) in conversations().iter().enumerate() {
        let answer = oracle::answer(messages);
        let cuts = repeat_cuts(&answer);
        assert!(
            cuts.len() >= 8,
            "conv={conv}: the answer hardly repeats itself: {answer:?}"
        );
        for mode in MODES {
            for style in SEAM_STYLES {
                for whole in [false, true] {
                    let seam = Seam::new(mode, style, whole);
                    seam.learn(conv, messages).await;
                    for &at in &cuts {
                        seam.exact(conv, messages, at).await;
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases >= 5 * 16 * 8, "{cases}");
}

/// The answer's kinds of repeat are all there to be cut at.
#[test]
fn the_oracle_repeats_words_phrases_and_lines() {
    let answers: Vec<String> = conversations().iter().map(|m| oracle::answer(m)).collect();
    let all = answers.concat();
    let words: Vec<&str> = all.split([' ', '\n']).collect();
    assert!(
        words.windows(2).any(|w| w[0] == w[1] && w[0].len() >= 4),
        "no word said twice in a row"
    );
    let lines: Vec<&str> = all.split('\n').collect();
    assert!(
        lines.windows(2).any(|l| l[0] == l[1] && l[0].starts_with("- ")),
        "no list line said twice"
    );
    assert!(
        lines.windows(2).any(|l| l[0] == l[1] && l[0].starts_with("    ")),
        "no code line said twice"
    );
    for a in &answers {
        assert!(!repeat_cuts(a).is_empty(), "{a:?}");
    }
}

/// A prefix of 1–3 bytes, continued by a fallback that restarts the answer
/// (an echoing style repeats the whole prefix when it is that short) or that
/// continues it: never `RRéponse`, never a lost letter.
#[tokio::test(start_paused = true)]
async fn a_prefix_of_one_to_three_bytes_is_restarted_or_continued_exactly() {
    let mut cases = 0;
    for (conv, messages) in conversations().iter().enumerate() {
        let answer = oracle::answer(messages);
        let cuts: Vec<usize> = (1..=3).filter(|&at| answer.is_char_boundary(at)).collect();
        for mode in MODES {
            for style in SEAM_STYLES {
                for whole in [false, true] {
                    for &at in &cuts {
                        // A fresh route each time: a restart is evidence by itself.
                        let seam = Seam::new(mode, style, whole);
                        seam.exact(conv, messages, at).await;
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases >= 5 * 16, "{cases}");
}

/// Where one continuation cannot tell an echo from a genuine repeat (a word
/// said again after the prefix's space), a route never seen echoing keeps the
/// text; once it has proved an echo, the same cut is trimmed.
#[tokio::test(start_paused = true)]
async fn an_ambiguous_echo_is_kept_until_the_route_is_seen_echoing() {
    for (conv, messages) in conversations().iter().enumerate() {
        let answer = oracle::answer(messages);
        // After a word and its space, where the next word is a different one.
        let Some(at) = (20..answer.len()).find(|&i| {
            answer.is_char_boundary(i)
                && answer[..i].ends_with(' ')
                && !answer[..i - 1].ends_with(|c: char| !c.is_alphanumeric())
                && answer[..i - 1]
                    .rsplit(' ')
                    .next()
                    .is_some_and(|w| w.len() >= 4 && !answer[i..].starts_with(w))
        }) else {
            panic!("conv={conv}: no word to cut after");
        };
        let seam = Seam::new(ContinuationMode::Instruct, SEAM_STYLES[1], false);
        let last = answer[..at - 1].rsplit(' ').next().unwrap_or_default();
        let done = seam.cut(messages, at).await;
        let kept = format!("{}{last} {}", &answer[..at], &answer[at..]);
        assert_eq!(
            done.text, kept,
            "conv={conv}: a one-word echo after a space is ambiguous, so kept"
        );
        seam.learn(conv, messages).await;
        seam.exact(conv, messages, at).await;
    }
}

// ------------------------------------------------- before-headers faults

/// The primary fails before any header; the fallback answers from scratch.
#[tokio::test(start_paused = true)]
async fn before_headers_faults_hand_over_with_the_right_class() {
    // (script, label, requests to the primary, minimum virtual time)
    let table: [(&str, &str, u32, Duration); 7] = [
        ("reset", "reset", 3, Duration::ZERO),
        ("hang", "first_token_timeout", 1, Duration::from_secs(10)),
        // A rate limiter is not asked again while another route can answer.
        ("429", "rate_limited", 1, Duration::ZERO),
        ("429:1", "rate_limited", 1, Duration::ZERO),
        ("500", "server_error", 3, Duration::ZERO),
        ("503", "server_error", 3, Duration::ZERO),
        ("slow:15000", "first_token_timeout", 1, Duration::from_secs(10)),
    ];
    let mut cases = 0;
    for (conv, messages) in conversations().iter().enumerate() {
        let answer = oracle::answer(messages);
        for (script, label, requests, min_time) in table {
            for mode in MODES {
                let case = format!("conv={conv} fault={script} mode={mode:?}");
                let w = world(script, "none", mode, STYLES[1]);
                let started = Instant::now();
                let done = w.splicer.collect(request(messages)).await;
                let elapsed = started.elapsed();
                assert_eq!(done.text, answer, "[{case}]");
                let c = completion(&done, &case);
                let expected: Vec<_> = (0..requests).map(|_| ("primary", label)).collect();
                assert_eq!(labels(c), expected, "[{case}] failures: {:?}", c.failures);
                assert!(
                    c.failures
                        .iter()
                        .all(|f| f.class == FailureClass::Technical && f.bytes == 0 && f.tokens == 0),
                    "[{case}]"
                );
                assert_eq!(c.route_chain, vec!["fallback"], "[{case}]");
                assert_eq!(done.handovers.len(), 1, "[{case}]");
                let h = &done.handovers[0];
                assert_eq!(
                    (&*h.from, &*h.to, h.reason, h.prefix_bytes),
                    ("primary", "fallback", label, 0),
                    "[{case}]"
                );
                assert_eq!(w.primary.requests(), requests, "[{case}]");
                assert_eq!(w.fallback.requests(), 1, "[{case}]");
                assert_eq!(w.spare.requests(), 0, "[{case}]");
                assert!(elapsed >= min_time, "[{case}] took only {elapsed:?}");
                // Backoff is capped at 2 s per retry, Retry-After at 5 s, TTFT at 10 s.
                assert!(elapsed < Duration::from_secs(12), "[{case}] took {elapsed:?}");
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 70);
}

/// Faults that must not cause any failure at all.
#[tokio::test(start_paused = true)]
async fn harmless_faults_cause_no_failure() {
    for (conv, messages) in conversations().iter().enumerate() {
        let answer = oracle::answer(messages);
        for script in ["none", "nodone", "slow:2000", "slow:9900"] {
            let case = format!("conv={conv} fault={script}");
            let w = world(script, "none", ContinuationMode::Prefill, Style::default());
            let done = w.splicer.collect(request(messages)).await;
            assert_eq!(done.text, answer, "[{case}]");
            let c = completion(&done, &case);
            assert!(c.failures.is_empty(), "[{case}] failures: {:?}", c.failures);
            assert_eq!(c.route_chain, vec!["primary"], "[{case}]");
            assert_eq!(c.finish_reason, "stop", "[{case}]");
            assert!(done.handovers.is_empty(), "[{case}]");
            assert_eq!((w.primary.requests(), w.fallback.requests()), (1, 0), "[{case}]");
        }
    }
}

// ------------------------------------------------ prefill rejection

/// The fallback rejects prefill: it must switch to instruct on the same route
/// and still produce the exact answer; the rejection is never the final error.
#[tokio::test(start_paused = true)]
async fn a_fallback_without_prefill_switches_to_instruct() {
    let mut cases = 0;
    for (conv, messages) in conversations().iter().enumerate() {
        let (answer, ends) = primary_chunks(messages);
        let n = ends.len();
        for (fault, k) in [
            ("drop", 0),
            ("drop", 1),
            ("stall", n / 2),
            ("error", n / 3),
            ("malformed", n),
        ] {
            for mode in MODES {
                for style in STYLES {
                    let script = format!("{fault}@{k}");
                    let case = format!("conv={conv} fault={script} fallback=noprefill mode={mode:?} style={style:?}");
                    let w = world(&script, "noprefill", mode, style);
                    let done = w.splicer.collect(request(messages)).await;
                    assert_eq!(done.text, answer, "[{case}]");
                    let c = completion(&done, &case);
                    let label = mid_stream_label(fault, k);
                    let prefix = prefix_len(&ends, k);
                    // Only a continuation (non-empty prefix) in prefill mode sends a final assistant message.
                    let rejected = prefix > 0 && mode == ContinuationMode::Prefill;
                    let mut expected = vec![("primary", label)];
                    if rejected {
                        expected.push(("fallback", "prefill_rejected"));
                    }
                    assert_eq!(labels(c), expected, "[{case}] failures: {:?}", c.failures);
                    assert_eq!(w.fallback.requests(), if rejected { 2 } else { 1 }, "[{case}]");
                    assert_eq!(
                        w.spare.requests(),
                        0,
                        "[{case}] the rejection must not move past the fallback"
                    );
                    if prefix < answer.len() {
                        assert_eq!(done.handovers.len(), 1, "[{case}]");
                        let h = &done.handovers[0];
                        assert_eq!((&*h.from, &*h.to, h.reason), ("primary", "fallback", label), "[{case}]");
                        assert!(
                            c.route_chain.ends_with(&["fallback".to_string()]),
                            "[{case}] {:?}",
                            c.route_chain
                        );
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 150);
}

// ------------------------------------------------------------ conduct

#[tokio::test(start_paused = true)]
async fn a_503_primary_is_retried_max_retries_times_then_handed_over() {
    let messages = &conversations()[0];
    let w = world("503", "none", ContinuationMode::Prefill, Style::default());
    let max_retries = w.splicer.ladder().retry.max_retries;
    let done = w.splicer.collect(request(messages)).await;
    assert_eq!(done.text, oracle::answer(messages));
    let c = completion(&done, "503");
    assert_eq!(w.primary.requests(), 1 + max_retries);
    assert_eq!(c.failures.len(), (1 + max_retries) as usize);
    assert!(c
        .failures
        .iter()
        .all(|f| f.kind == "server_error" && f.route == "primary"));
    assert_eq!(c.route_chain, vec!["fallback"]);
    assert_eq!(w.fallback.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_policy_refusal_stops_with_the_providers_message() {
    let messages = &conversations()[1];
    let w = world("policy", "none", ContinuationMode::Prefill, Style::default());
    let done = w.splicer.collect(request(messages)).await;
    assert_eq!(done.text, "");
    assert!(done.handovers.is_empty());
    match &done.outcome {
        Err(SpliceError::Refused {
            route,
            message,
            failures,
            emitted_bytes,
            ..
        }) => {
            assert_eq!(route, "primary");
            assert_eq!(message, "Your request was rejected by the oracle's content policy");
            assert_eq!(failures.len(), 1);
            assert_eq!(
                (failures[0].kind.as_str(), failures[0].class),
                ("content_policy", FailureClass::Policy)
            );
            assert_eq!(*emitted_bytes, 0);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(w.primary.requests(), 1, "a policy refusal is never retried");
    assert_eq!(w.fallback.requests(), 0, "a policy refusal is never handed over");
    assert_eq!(w.spare.requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_plain_400_is_handed_over_without_retry() {
    let messages = &conversations()[2];
    let started = Instant::now();
    let w = world("400", "none", ContinuationMode::Prefill, Style::default());
    let done = w.splicer.collect(request(messages)).await;
    assert_eq!(done.text, oracle::answer(messages));
    let c = completion(&done, "400");
    assert_eq!(labels(c), vec![("primary", "rejected")]);
    assert_eq!(c.failures[0].class, FailureClass::Technical);
    assert_eq!(w.primary.requests(), 1);
    assert_eq!(w.fallback.requests(), 1);
    assert_eq!(c.route_chain, vec!["fallback"]);
    // No backoff: only the fallback's own first-token pacing.
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_429_hands_over_at_once_and_a_short_retry_after_is_waited_for_on_the_last_rung() {
    let messages = &conversations()[3];
    // Two routes, both rate-limited once with `Retry-After: 2`.
    let (p, f) = (mock("429:2x1", Style::default()), mock("429:2x1", Style::default()));
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("primary", "oracle-big", p.clone()),
        Route::new("fallback", "oracle-small", f.clone()),
    ]));
    let started = Instant::now();
    let done = splicer.collect(request(messages)).await;
    let elapsed = started.elapsed();
    assert_eq!(done.text, oracle::answer(messages));
    let c = completion(&done, "429:2x1");
    assert!(
        elapsed >= Duration::from_secs(2),
        "Retry-After not honoured on the last rung: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(
        p.requests(),
        1,
        "a rate-limited route is not asked again while a rung remains"
    );
    assert_eq!(f.requests(), 2);
    assert_eq!(
        labels(c),
        vec![("primary", "rate_limited"), ("fallback", "rate_limited")]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_above_the_ceiling_hands_over_at_once() {
    let messages = &conversations()[4];
    let w = world("429:60", "none", ContinuationMode::Prefill, Style::default());
    assert!(w.splicer.ladder().retry.retry_after_ceiling < Duration::from_secs(60));
    let started = Instant::now();
    let done = w.splicer.collect(request(messages)).await;
    let elapsed = started.elapsed();
    assert_eq!(done.text, oracle::answer(messages));
    let c = completion(&done, "429:60");
    assert!(
        elapsed < Duration::from_secs(1),
        "waited {elapsed:?} instead of handing over"
    );
    assert_eq!(w.primary.requests(), 1);
    assert_eq!(labels(c), vec![("primary", "rate_limited")]);
    assert_eq!(c.route_chain, vec!["fallback"]);
}

/// Every route fails: the client gets what was written and every failure.
#[tokio::test(start_paused = true)]
async fn an_exhausted_ladder_reports_every_failure() {
    let messages = &conversations()[0];
    let (answer, ends) = primary_chunks(messages);
    let k = ends.len() / 2;
    let p = mock(&format!("drop@{k}"), Style::default());
    let f = mock("hang", Style::default());
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("primary", "a", p.clone()),
        Route::new("fallback", "b", f.clone()),
    ]));
    let done = splicer.collect(request(messages)).await;
    let prefix = prefix_len(&ends, k);
    assert_eq!(done.text, answer[..prefix]);
    match &done.outcome {
        Err(SpliceError::Exhausted {
            failures,
            emitted_bytes,
            ..
        }) => {
            let got: Vec<_> = failures.iter().map(|f| (f.route.as_str(), f.kind.as_str())).collect();
            assert_eq!(got, vec![("primary", "truncated"), ("fallback", "first_token_timeout")]);
            assert_eq!(*emitted_bytes, prefix as u64);
        }
        other => panic!("expected exhaustion, got {other:?}"),
    }
    assert_eq!((p.requests(), f.requests()), (1, 1));
}

// ----------------------------------------------------------- handovers

/// Two handovers in one answer: each one is reported, with its reason.
#[tokio::test(start_paused = true)]
async fn every_handover_is_reported_with_from_to_and_reason() {
    for (conv, messages) in conversations().iter().enumerate() {
        let (answer, ends) = primary_chunks(messages);
        let k = ends.len() / 3;
        let p = mock(&format!("drop@{k}"), Style::default());
        // The first fallback stalls after five chunks of its own continuation.
        let f1 = mock("stall@5", Style::default());
        let f2 = mock(
            "none",
            Style {
                repeat_words: 2,
                extra_space: false,
            },
        );
        let splicer = Splicer::new(Ladder::new(vec![
            Route::new("primary", "a", p.clone()),
            Route::new("fallback", "b", f1.clone()).with_continuation(ContinuationMode::Instruct),
            Route::new("spare", "c", f2.clone()),
        ]));
        let done = splicer.collect(request(messages)).await;
        let case = format!("conv={conv}");
        assert_eq!(done.text, answer, "[{case}]");
        let c = completion(&done, &case);
        assert_eq!(
            labels(c),
            vec![("primary", "truncated"), ("fallback", "stall")],
            "[{case}]"
        );
        assert_eq!(c.route_chain, vec!["primary", "fallback", "spare"], "[{case}]");
        let hs: Vec<_> = done.handovers.iter().map(|h| (&*h.from, &*h.to, h.reason)).collect();
        assert_eq!(
            hs,
            vec![("primary", "fallback", "truncated"), ("fallback", "spare", "stall")],
            "[{case}]"
        );
        assert_eq!(done.handovers[0].prefix_bytes, prefix_len(&ends, k) as u64, "[{case}]");
        assert!(
            done.handovers[1].prefix_bytes > done.handovers[0].prefix_bytes,
            "[{case}]"
        );
        for h in &done.handovers {
            // From detection to the continuation's first byte: the fallback's
            // first-token pacing (20 ms) plus any held repeat, never the deadline.
            assert!(
                h.gap >= Duration::from_millis(20) && h.gap < Duration::from_secs(1),
                "[{case}] gap {:?}",
                h.gap
            );
        }
        assert_eq!((p.requests(), f1.requests(), f2.requests()), (1, 1, 1), "[{case}]");
    }
}

/// Two routes fail before any text: the client sees one handover, to the route
/// that finally wrote, and its gap excludes the deadline that detected the failure.
#[tokio::test(start_paused = true)]
async fn failures_before_any_text_make_one_handover() {
    let messages = &conversations()[2];
    let p = mock("hang", Style::default());
    let f1 = mock("reset", Style::default());
    let f2 = mock("none", Style::default());
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("primary", "a", p.clone()),
        Route::new("fallback", "b", f1.clone()),
        Route::new("spare", "c", f2.clone()),
    ]));
    let done = splicer.collect(request(messages)).await;
    assert_eq!(done.text, oracle::answer(messages));
    let c = completion(&done, "hang+reset");
    assert_eq!(
        labels(c),
        vec![
            ("primary", "first_token_timeout"),
            ("fallback", "reset"),
            ("fallback", "reset"),
            ("fallback", "reset")
        ]
    );
    assert_eq!(c.route_chain, vec!["spare"]);
    assert_eq!(done.handovers.len(), 1, "{:?}", done.handovers);
    let h = &done.handovers[0];
    assert_eq!(
        (&*h.from, &*h.to, h.reason),
        ("primary", "spare", "first_token_timeout")
    );
    assert!(
        h.gap < Duration::from_secs(10),
        "the gap counts from detection: {:?}",
        h.gap
    );
}

// --------------------------------------------------- client disconnect

/// Wraps a provider and watches its streams: how often they are polled and
/// how many are still alive.
struct Probe {
    inner: Arc<MockProvider>,
    polls: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
}

struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Probe {
    fn new(inner: Arc<MockProvider>) -> Arc<Self> {
        Arc::new(Probe {
            inner,
            polls: Arc::default(),
            live: Arc::default(),
        })
    }

    fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl Provider for Probe {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let mut inner = self.inner.stream(request);
        let polls = self.polls.clone();
        self.live.fetch_add(1, Ordering::SeqCst);
        let alive = Alive(self.live.clone());
        Box::pin(futures::stream::poll_fn(move |cx: &mut Context<'_>| {
            let _alive = &alive;
            polls.fetch_add(1, Ordering::SeqCst);
            let polled: Poll<Option<_>> = Pin::new(&mut inner).poll_next(cx);
            polled
        }))
    }
}

fn probed(
    primary: &str,
    fallback: &str,
    style: Style,
) -> (Arc<MockProvider>, Arc<Probe>, Arc<MockProvider>, Arc<Probe>, Splicer) {
    let pm = mock(primary, Style::default());
    let fm = mock(fallback, style);
    let p = Probe::new(pm.clone());
    let f = Probe::new(fm.clone());
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("primary", "a", p.clone()),
        Route::new("fallback", "b", f.clone()),
    ]));
    (pm, p, fm, f, splicer)
}

/// Drops the client stream while the primary streams: no panic, the upstream
/// stream is dropped with it and never polled again, nothing hands over later.
#[tokio::test(start_paused = true)]
async fn a_client_disconnect_mid_stream_cancels_the_upstream() {
    let messages = &conversations()[0];
    let (pm, p, fm, f, splicer) = probed("stall@20", "none", Style::default());
    let mut stream = splicer.splice(request(messages));
    let mut texts = 0;
    while texts < 5 {
        match stream.next().await {
            Some(ClientItem::Text { .. }) => texts += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(p.live(), 1);
    drop(stream);
    assert_eq!(p.live(), 0, "the upstream stream outlived the client");
    let polls = p.polls();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(p.polls(), polls, "the upstream was polled after the client left");
    assert_eq!(
        (pm.requests(), fm.requests(), f.polls()),
        (1, 0, 0),
        "nothing may hand over after the client left"
    );
}

/// Drops the client stream just after a handover, while the fallback's head may be held.
#[tokio::test(start_paused = true)]
async fn a_client_disconnect_after_a_handover_cancels_the_fallback() {
    let messages = &conversations()[3];
    let style = Style {
        repeat_words: 3,
        extra_space: false,
    };
    let (pm, p, fm, f, splicer) = probed("drop@7", "none", style);
    let mut stream = splicer.splice(request(messages));
    loop {
        match stream.next().await {
            Some(ClientItem::Text { route, .. }) if &*route == "fallback" => break,
            Some(ClientItem::Text { .. } | ClientItem::Handover(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(f.live(), 1);
    drop(stream);
    assert_eq!((p.live(), f.live()), (0, 0));
    let polls = (p.polls(), f.polls());
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!((p.polls(), f.polls()), polls);
    assert_eq!((pm.requests(), fm.requests()), (1, 1));
}

/// Drops the client stream while the splicer waits out a retry backoff or a
/// first token: no further request is made.
#[tokio::test(start_paused = true)]
async fn a_client_disconnect_while_waiting_makes_no_further_request() {
    let messages = &conversations()[1];
    // A rate-limited primary hands over at once; the wait is on the last rung, rate-limited too.
    for (script, fallback, wait) in [
        ("503", "none", Duration::from_millis(1)),
        ("429:2", "429:2", Duration::from_secs(1)),
        ("hang", "none", Duration::from_secs(5)),
    ] {
        let (pm, p, fm, f, splicer) = probed(script, fallback, Style::default());
        let mut stream = splicer.splice(request(messages));
        let first = tokio::time::timeout(wait, stream.next()).await;
        assert!(
            first.is_err(),
            "[{script}] nothing should reach the client yet: {first:?}"
        );
        let requests = (pm.requests(), fm.requests());
        drop(stream);
        assert_eq!((p.live(), f.live()), (0, 0), "[{script}]");
        let polls = (p.polls(), f.polls());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            (pm.requests(), fm.requests()),
            requests,
            "[{script}] a retry or handover ran after the client left"
        );
        assert_eq!((p.polls(), f.polls()), polls, "[{script}]");
        if fallback == "none" {
            assert_eq!(requests.1, 0, "[{script}] a handover ran after the client left");
        } else {
            assert_eq!(requests, (1, 1), "[{script}] one request each, the retry not yet due");
        }
    }
}

// ------------------------------------------------------ reasoning matrix

/// The thinking model of the primary (thinks in `reasoning_content`) and of
/// the fallback (thinks in `reasoning`, so a seam crosses both field names).
const THINKER: &str = "oracle-think-big";
const REASONER: &str = "oracle-reason-small";

/// A thinking primary with a fault, a thinking fallback continuing in
/// `mode`/`style`, and a healthy spare; `forward_late` is the ladder's flag.
fn thinking_world(primary: &str, mode: ContinuationMode, style: Style, forward_late: bool, pacing: Pacing) -> World {
    let script: FaultScript = primary.parse().unwrap_or_else(|e| panic!("{e}"));
    let p = Arc::new(MockProvider::new(FaultPlan::Fixed(script), Style::default()).with_pacing(pacing));
    let f = mock("none", style);
    let s = mock("none", Style::default());
    let fallback = Route::new("fallback", REASONER, f.clone()).with_continuation(mode);
    if style.repeat_words > 0 {
        for mode in MODES {
            fallback.health.model(REASONER).remember_echo(mode);
        }
    }
    let mut ladder = Ladder::new(vec![
        Route::new("primary", THINKER, p.clone()),
        fallback,
        Route::new("spare", "oracle-think-spare", s.clone()),
    ]);
    ladder.forward_late_reasoning = forward_late;
    World {
        primary: p,
        fallback: f,
        spare: s,
        splicer: Splicer::new(ladder),
    }
}

/// The oracle's thinking for `messages`, cut into the chunks the mock sends.
fn thinking_chunks(messages: &[Message]) -> Vec<String> {
    let thought = oracle::thinking(messages);
    oracle::chunks(&thought, oracle::conversation_hash(messages))
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// `--verify`'s verdict on one session, each event through its JSON line and back.
fn replays(events: &[baton::EngineEvent]) -> baton::record::verify::Outcome {
    let events: Vec<baton::EngineEvent> = events
        .iter()
        .map(|e| serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap())
        .collect();
    let session = baton::record::reader::RecordedSession {
        id: events.first().map(|e| e.session).unwrap_or_default(),
        path: std::path::PathBuf::from("in-memory.jsonl"),
        events,
        gaps: Vec::new(),
        version: baton::record::FORMAT_VERSION,
        corrupt: false,
    };
    let verdicts = baton::record::verify::verify(std::slice::from_ref(&session));
    verdicts.into_iter().next().map(|v| v.outcome).unwrap()
}

/// The label of a reasoning-matrix fault at `k`.
fn thinking_label(fault: &str, k: usize) -> &'static str {
    match fault {
        "loop" => "loop",
        "thinkonly" => "empty_answer",
        other => mid_stream_label(other, k),
    }
}

/// `text` with `prefix` then copies of the loop phrase stripped, or `None` if it is not shaped so.
fn after_loop<'t>(text: &'t str, prefix: &str) -> Option<(usize, &'t str)> {
    let mut rest = text.strip_prefix(prefix)?;
    let mut copies = 0;
    while let Some(r) = rest.strip_prefix(LOOP_PHRASE) {
        rest = r;
        copies += 1;
    }
    Some((copies, rest))
}

/// One reasoning case: the thinking primary fails at `k` chunks counted over
/// its thinking then its answer (`thinkonly`: after all its thinking; `slow`:
/// not at all, thinking past the first-token deadline; `slow+F`: as slowly,
/// with fault `F` at `k`), the fallback goes on.
async fn thinking_case(
    conv: usize,
    messages: &[Message],
    fault: &str,
    k: usize,
    mode: ContinuationMode,
    style: Style,
    forward_late: bool,
) {
    let (answer, ends) = primary_chunks(messages);
    let thoughts = thinking_chunks(messages);
    let (t, a) = (thoughts.len(), ends.len());
    // A thought every 400 ms: the thinking alone outlasts the 10 s first-token deadline.
    let slow = Pacing {
        first_token: Duration::from_millis(400),
        interval: Duration::from_millis(400),
    };
    let (fault, pacing) = match fault.strip_prefix("slow+") {
        Some(inner) => (inner, slow),
        None if fault == "slow" => (fault, slow),
        None => (fault, Pacing::default()),
    };
    let script = match fault {
        "thinkonly" => "thinkonly".to_string(),
        "slow" => "none".to_string(),
        _ => format!("{fault}@{k}"),
    };
    let case = format!(
        "conv={conv} fault={script} thoughts={t} chunks={a} pacing={:?} mode={mode:?} style={style:?} forward_late={forward_late}",
        pacing.interval
    );
    let w = thinking_world(&script, mode, style, forward_late, pacing);
    let mut events = w.splicer.subscribe();
    let started = Instant::now();
    let done = w.splicer.collect(request(messages)).await;
    let elapsed = started.elapsed();
    let events: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let c = completion(&done, &case);
    assert_eq!(c.finish_reason, "stop", "[{case}]");
    // Re-driving costs as much as the case: one echo style of three covers every fault, position and mode.
    if style == STYLES[1] {
        assert_eq!(
            replays(&events),
            baton::record::verify::Outcome::Ok { partial: false },
            "[{case}] the recording re-drives the same"
        );
    }

    if fault == "slow" {
        assert!(
            elapsed > Duration::from_secs(10),
            "[{case}] thought for only {elapsed:?}"
        );
        assert_eq!(done.text, answer, "[{case}]");
        assert_eq!(
            done.reasoning,
            oracle::thinking(messages),
            "[{case}] all of it, no seam"
        );
        assert!(
            c.failures.is_empty(),
            "[{case}] long thinking is no timeout: {:?}",
            c.failures
        );
        assert!(done.handovers.is_empty(), "[{case}]");
        assert_eq!(c.route_chain, vec!["primary"], "[{case}]");
        assert_eq!((w.fallback.requests(), w.spare.requests()), (0, 0), "[{case}]");
        return;
    }

    // Where the primary stopped: inside its thinking (no answer text yet), or inside its answer.
    let k = if fault == "thinkonly" { t } else { k.min(t + a) };
    let in_thinking = k < t || (k == t && fault != "loop");
    let label = thinking_label(fault, k);
    if pacing == slow && !in_thinking {
        assert!(
            elapsed > Duration::from_secs(10),
            "[{case}] the thinking outlasted the first-token deadline: {elapsed:?}"
        );
    }
    assert_eq!(
        labels(c),
        vec![("primary", label)],
        "[{case}] failures: {:?}",
        c.failures
    );
    let expected_class = match label {
        "loop" | "empty_answer" => FailureClass::Quality,
        _ => FailureClass::Technical,
    };
    assert_eq!(c.failures[0].class, expected_class, "[{case}]");
    assert_eq!(done.handovers.len(), 1, "[{case}] handovers: {:?}", done.handovers);
    let h = &done.handovers[0];
    assert_eq!((&*h.from, &*h.to, h.reason), ("primary", "fallback", label), "[{case}]");
    assert_eq!((w.primary.requests(), w.fallback.requests()), (1, 1), "[{case}]");
    assert_eq!(w.spare.requests(), 0, "[{case}] the spare must not be needed");

    // What the fallback was asked, from the recording's attempt.
    let asked: Vec<Vec<Message>> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::AttemptOpened { route, request, .. } if route == "fallback" => Some(request.messages.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(asked.len(), 1, "[{case}]");
    let fallback_thinking = oracle::thinking(&asked[0]);

    if in_thinking {
        // No answer text yet: the fallback answers afresh, byte for byte.
        assert_eq!(h.prefix_bytes, 0, "[{case}]");
        assert_eq!(
            asked[0], messages,
            "[{case}] a fresh start, no reasoning in the request"
        );
        assert_eq!(done.text, answer, "[{case}] the client text is not the oracle's answer");
        // The primary's thinking as far as it went, the marker, the fallback's thinking.
        let sent = thoughts[..k].concat();
        let (before, after) = match fault {
            "loop" => {
                let (copies, rest) = after_loop(&done.reasoning, &sent)
                    .unwrap_or_else(|| panic!("[{case}] not the thinking up to the loop: {:?}", done.reasoning));
                assert!(copies > 0, "[{case}] the loop reached the client");
                (sent.clone() + &LOOP_PHRASE.repeat(copies), rest.to_string())
            }
            _ => {
                let rest = done
                    .reasoning
                    .strip_prefix(&sent)
                    .unwrap_or_else(|| panic!("[{case}] not the thinking sent: {:?}", done.reasoning));
                (sent.clone(), rest.to_string())
            }
        };
        let seam = if before.is_empty() { "" } else { SEAM_MARKER };
        assert_eq!(
            after,
            format!("{seam}{fallback_thinking}"),
            "[{case}] after the primary's {} bytes of thinking",
            before.len()
        );
    } else {
        // The answer had begun: it is continued, the fallback's thinking is counted, not sent.
        let cut = prefix_len(&ends, k - t);
        let opened: Vec<u64> = events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::AttemptOpened {
                    route, prefix_bytes, ..
                } if route == "fallback" => Some(*prefix_bytes),
                _ => None,
            })
            .collect();
        assert_eq!(
            opened,
            [cut as u64],
            "[{case}] the fallback continues the answer's first {cut} bytes"
        );
        if cut > 0 {
            assert_ne!(asked[0], messages, "[{case}] a continuation");
        }
        if fault == "loop" {
            // The client saw the loop closed by the loop guard's marker; the fallback goes on from the cut.
            let looped = done
                .text
                .strip_prefix(&answer[..cut])
                .and_then(|rest| rest.strip_suffix(&answer[cut..]))
                .and_then(|rest| rest.strip_suffix(LOOP_MARKER))
                .unwrap_or_else(|| panic!("[{case}] not answer[..{cut}] + loop + marker + rest: {:?}", done.text));
            assert!(!looped.is_empty(), "[{case}]");
            assert_eq!(looped, LOOP_PHRASE.repeat(looped.len() / LOOP_PHRASE.len()), "[{case}]");
            assert_eq!(
                h.prefix_bytes as usize,
                cut + looped.len() + LOOP_MARKER.len(),
                "[{case}] what the client had"
            );
        } else {
            assert_eq!(h.prefix_bytes, cut as u64, "[{case}]");
            assert_eq!(done.text, answer, "[{case}] the client text is not the oracle's answer");
        }
        let late = if forward_late {
            format!("{SEAM_MARKER}{fallback_thinking}")
        } else {
            String::new()
        };
        assert_eq!(
            done.reasoning,
            format!("{}{late}", oracle::thinking(messages)),
            "[{case}] no seam after the text began unless late reasoning is forwarded"
        );
    }
}

/// The reasoning matrix for one fault kind: 5 conversations × positions × 2 modes × 3 styles × 2 late-reasoning flags.
async fn thinking_matrix(fault: &str) -> usize {
    let mut cases = 0;
    for (conv, messages) in conversations().iter().enumerate() {
        let t = thinking_chunks(messages).len();
        let a = primary_chunks(messages).1.len();
        let positions = match fault {
            "thinkonly" | "slow" => vec![t],
            // Slow thinking, then a stall in the middle of it or of the answer.
            "slow+stall" => vec![t / 2, t + a / 2],
            // Inside the thinking: at its first, second, middle and last chunk, and
            // after all of it; inside the answer: at its second, middle and last chunk, and after it.
            _ => vec![0, 1, t / 2, t - 1, t, t + 1, t + a / 2, t + a - 1, t + a],
        };
        for k in positions {
            for mode in MODES {
                for style in STYLES {
                    for forward_late in [false, true] {
                        thinking_case(conv, messages, fault, k, mode, style, forward_late).await;
                        cases += 1;
                    }
                }
            }
        }
    }
    cases
}

#[tokio::test(start_paused = true)]
async fn reasoning_stall_at_every_position() {
    assert_eq!(thinking_matrix("stall").await, 540);
}

#[tokio::test(start_paused = true)]
async fn reasoning_drop_at_every_position() {
    assert_eq!(thinking_matrix("drop").await, 540);
}

#[tokio::test(start_paused = true)]
async fn reasoning_malformed_at_every_position() {
    assert_eq!(thinking_matrix("malformed").await, 540);
}

#[tokio::test(start_paused = true)]
async fn reasoning_error_event_at_every_position() {
    assert_eq!(thinking_matrix("error").await, 540);
}

#[tokio::test(start_paused = true)]
async fn reasoning_loop_at_every_position() {
    assert_eq!(thinking_matrix("loop").await, 540);
}

#[tokio::test(start_paused = true)]
async fn a_think_only_finish_hands_over_in_every_mode() {
    assert_eq!(thinking_matrix("thinkonly").await, 60);
}

#[tokio::test(start_paused = true)]
async fn thinking_past_the_first_token_deadline_never_hands_over() {
    assert_eq!(thinking_matrix("slow").await, 60);
}

#[tokio::test(start_paused = true)]
async fn a_stall_after_long_thinking_is_a_stall_not_a_first_token_timeout() {
    assert_eq!(thinking_matrix("slow+stall").await, 120);
}
