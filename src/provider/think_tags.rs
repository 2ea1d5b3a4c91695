//! `<think>…</think>` at the start of an answer's content, split out as reasoning.
//!
//! Some servers (llama.cpp, Ollama, vLLM without a reasoning parser) stream a
//! reasoning model's thinking inside `content`, wrapped in `<think>` tags. A
//! route with `think_tags = true` gives it to the reasoning channel instead.
//! Models emit the block first, so only a `<think>` at the start of the
//! content (after whitespace) opens one; a later literal `<think>` is answer
//! text. The tags may arrive split across deltas (`<thi` + `nk>`): the few
//! bytes that may be the start of a tag are held until the next delta says.
//! A stream that ends inside the block ends as reasoning (a model cut off
//! while thinking, or one that never closed the tag).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;

use super::{Chunk, ChunkStream, ReasoningField};

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";
/// Whitespace waited through before deciding there is no `<think>`: models put a newline or two there, not pages.
const MAX_LEADING_WHITESPACE: usize = 256;

/// A piece of content, once the splitter knows which channel it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Inside the `<think>` block.
    Reasoning(String),
    /// The answer.
    Text(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing decided yet: `held` is whitespace and perhaps the start of `<think>`.
    Start,
    /// Inside the block: `held` may be the start of `</think>`.
    Thinking,
    /// After `</think>`: the whitespace that separates it from the answer is dropped.
    Closed,
    /// The answer: everything is text.
    Answer,
}

/// The splitter of one attempt's content.
#[derive(Clone, Debug)]
pub struct ThinkSplitter {
    state: State,
    /// Bytes not yet given to a channel (at most a tag's length, or the leading whitespace).
    held: String,
}

impl Default for ThinkSplitter {
    fn default() -> Self {
        ThinkSplitter {
            state: State::Start,
            held: String::new(),
        }
    }
}

/// The length of the longest suffix of `s` that is a proper prefix of `tag` (a tag perhaps cut by the delta's end).
fn partial_tag(s: &str, tag: &str) -> usize {
    (1..tag.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

fn push(out: &mut Vec<Piece>, piece: Piece) {
    let empty = match &piece {
        Piece::Reasoning(t) | Piece::Text(t) => t.is_empty(),
    };
    if !empty {
        out.push(piece);
    }
}

impl ThinkSplitter {
    /// Splits one content delta; what may be a cut tag waits for the next.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut input = std::mem::take(&mut self.held);
        input.push_str(delta);
        let mut rest = input.as_str();
        loop {
            match self.state {
                State::Start => {
                    let body = rest.trim_start();
                    if rest.len() - body.len() > MAX_LEADING_WHITESPACE {
                        self.state = State::Answer;
                    } else if let Some(after) = body.strip_prefix(OPEN) {
                        self.state = State::Thinking;
                        rest = after;
                    } else if OPEN.starts_with(body) {
                        // Whitespace, perhaps `<thi`: the next delta decides.
                        self.held = rest.to_string();
                        return out;
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Thinking => match rest.find(CLOSE) {
                    Some(at) => {
                        push(&mut out, Piece::Reasoning(rest[..at].to_string()));
                        rest = &rest[at + CLOSE.len()..];
                        self.state = State::Closed;
                    }
                    None => {
                        let keep = partial_tag(rest, CLOSE);
                        push(&mut out, Piece::Reasoning(rest[..rest.len() - keep].to_string()));
                        self.held = rest[rest.len() - keep..].to_string();
                        return out;
                    }
                },
                State::Closed => {
                    rest = rest.trim_start();
                    if rest.is_empty() {
                        return out;
                    }
                    self.state = State::Answer;
                }
                State::Answer => {
                    push(&mut out, Piece::Text(rest.to_string()));
                    return out;
                }
            }
        }
    }

    /// What is still held when the content ends: a cut `<thi` before any
    /// thinking is text (the model said it), a cut `</thi` inside the block reasoning.
    pub fn finish(&mut self) -> Vec<Piece> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        match self.state {
            State::Thinking => push(&mut out, Piece::Reasoning(held)),
            State::Start | State::Answer => {
                // Whitespace alone is no answer, and nothing follows to keep it for.
                if !held.trim().is_empty() {
                    push(&mut out, Piece::Text(held));
                }
                self.state = State::Answer;
            }
            State::Closed => {}
        }
        out
    }
}

/// An OpenAI-compatible stream with its content's `<think>` block on the reasoning channel (`reasoning_content`).
pub struct ThinkTagStream {
    inner: ChunkStream,
    splitter: ThinkSplitter,
    ready: VecDeque<Result<Chunk, super::FailureKind>>,
    ended: bool,
}

impl ThinkTagStream {
    /// Wraps `inner`.
    pub fn new(inner: ChunkStream) -> Self {
        ThinkTagStream {
            inner,
            splitter: ThinkSplitter::default(),
            ready: VecDeque::new(),
            ended: false,
        }
    }

    fn queue(&mut self, pieces: Vec<Piece>) {
        self.ready.extend(pieces.into_iter().map(|p| {
            Ok(match p {
                Piece::Reasoning(text) => Chunk::Reasoning {
                    text,
                    field: ReasoningField::ReasoningContent,
                },
                Piece::Text(text) => Chunk::Text(text),
            })
        }));
    }
}

impl Stream for ThinkTagStream {
    type Item = Result<Chunk, super::FailureKind>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(Chunk::Text(text)))) => {
                    let pieces = this.splitter.push(&text);
                    this.queue(pieces);
                }
                // The content is over (finished, ended, or failed): what is held goes first.
                Poll::Ready(Some(item @ (Ok(Chunk::Finish(_) | Chunk::Done) | Err(_)))) => {
                    let pieces = this.splitter.finish();
                    this.queue(pieces);
                    this.ready.push_back(item);
                }
                Poll::Ready(Some(item)) => this.ready.push_back(item),
                Poll::Ready(None) => {
                    let pieces = this.splitter.finish();
                    this.queue(pieces);
                    this.ended = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Both channels after feeding `deltas` and finishing.
    fn split(deltas: &[&str]) -> (String, String) {
        let mut s = ThinkSplitter::default();
        let mut pieces: Vec<Piece> = deltas.iter().flat_map(|d| s.push(d)).collect();
        pieces.extend(s.finish());
        let (mut reasoning, mut text) = (String::new(), String::new());
        for p in pieces {
            match p {
                Piece::Reasoning(t) => reasoning.push_str(&t),
                Piece::Text(t) => text.push_str(&t),
            }
        }
        (reasoning, text)
    }

    /// What a whole string splits into, written plainly: the reference the streaming splitter must match.
    fn reference(s: &str) -> (String, String) {
        let body = s.trim_start();
        match body.strip_prefix(OPEN) {
            Some(inner) if s.len() - body.len() <= MAX_LEADING_WHITESPACE => match inner.find(CLOSE) {
                Some(at) => (
                    inner[..at].to_string(),
                    inner[at + CLOSE.len()..].trim_start().to_string(),
                ),
                None => (inner.to_string(), String::new()),
            },
            _ if s.trim().is_empty() => (String::new(), String::new()),
            _ => (String::new(), s.to_string()),
        }
    }

    #[test]
    fn a_leading_block_is_reasoning_and_the_rest_the_answer() {
        assert_eq!(
            split(&["<think>\nhmm, 2+2\n</think>\n\nFour."]),
            ("\nhmm, 2+2\n".into(), "Four.".into())
        );
        assert_eq!(split(&["\n <think>a</think>b"]), ("a".into(), "b".into()));
        // No block: the content is the answer, whitespace and all.
        assert_eq!(split(&["  Hello"]), (String::new(), "  Hello".into()));
        assert_eq!(split(&["<thinking>x"]), (String::new(), "<thinking>x".into()));
    }

    #[test]
    fn a_later_think_tag_is_answer_text() {
        assert_eq!(
            split(&["Use ", "<think>", " tags</think>"]),
            (String::new(), "Use <think> tags</think>".into())
        );
        assert_eq!(
            split(&["<think>a</think>", "Write <think>b</think>"]),
            ("a".into(), "Write <think>b</think>".into())
        );
    }

    #[test]
    fn a_missing_close_tag_ends_as_reasoning() {
        assert_eq!(
            split(&["<think>cut ", "off</thi"]),
            ("cut off</thi".into(), String::new())
        );
        assert_eq!(split(&["<think>"]), (String::new(), String::new()));
        // A cut open tag is what the model said.
        assert_eq!(split(&["<thi"]), (String::new(), "<thi".into()));
    }

    #[test]
    fn every_split_point_of_every_tag_gives_the_same_channels() {
        let whole = "\n<think>so é…</think>\n\nThe answer: <think> stays.";
        let expected = ("so é…".to_string(), "The answer: <think> stays.".to_string());
        assert_eq!(split(&[whole]), expected);
        for a in (0..=whole.len()).filter(|&i| whole.is_char_boundary(i)) {
            assert_eq!(split(&[&whole[..a], &whole[a..]]), expected, "split at {a}");
            for b in (a..=whole.len()).filter(|&i| whole.is_char_boundary(i)) {
                assert_eq!(
                    split(&[&whole[..a], &whole[a..b], &whole[b..]]),
                    expected,
                    "split at {a}, {b}"
                );
            }
        }
    }

    #[test]
    fn endless_leading_whitespace_is_not_held_forever() {
        let spaces = " ".repeat(MAX_LEADING_WHITESPACE + 1);
        let mut s = ThinkSplitter::default();
        assert_eq!(s.push(&spaces), vec![Piece::Text(spaces.clone())]);
        assert_eq!(s.push("<think>x"), vec![Piece::Text("<think>x".into())]);
    }

    #[test]
    fn the_stream_adapter_flushes_what_it_holds_before_the_finish() {
        let chunks = vec![
            Ok(Chunk::Opened),
            Ok(Chunk::Text("<thi".into())),
            Ok(Chunk::Text("nk>deep</th".into())),
            Ok(Chunk::Text("ink>Yes".into())),
            Ok(Chunk::Finish("stop".into())),
        ];
        let got = futures::executor::block_on(futures::StreamExt::collect::<Vec<_>>(ThinkTagStream::new(Box::pin(
            futures::stream::iter(chunks),
        ))));
        let reasoning = |t: &str| {
            Ok(Chunk::Reasoning {
                text: t.into(),
                field: ReasoningField::ReasoningContent,
            })
        };
        assert_eq!(
            got,
            vec![
                Ok(Chunk::Opened),
                reasoning("deep"),
                Ok(Chunk::Text("Yes".into())),
                Ok(Chunk::Finish("stop".into()))
            ]
        );
        // Cut inside the block: the held bytes are reasoning, then the failure.
        let cut = vec![
            Ok(Chunk::Text("<think>deep </".into())),
            Err(super::super::FailureKind::Truncated { detail: None }),
        ];
        let got = futures::executor::block_on(futures::StreamExt::collect::<Vec<_>>(ThinkTagStream::new(Box::pin(
            futures::stream::iter(cut),
        ))));
        assert_eq!(
            got,
            vec![
                reasoning("deep "),
                reasoning("</"),
                Err(super::super::FailureKind::Truncated { detail: None })
            ]
        );
    }

    proptest! {
        #[test]
        fn splitting_anywhere_matches_the_whole_and_loses_nothing(
            ws in "[ \n]{0,3}",
            think in "[a-z <>/é]{0,24}",
            close in proptest::bool::ANY,
            answer in "[a-z <>/é\n]{0,24}",
            cuts in proptest::collection::vec(0usize..64, 0..6),
        ) {
            let whole = if close {
                format!("{ws}<think>{think}</think>{answer}")
            } else {
                format!("{ws}{answer}")
            };
            // Cut at arbitrary char boundaries.
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (whole.len() + 1)).filter(|&i| whole.is_char_boundary(i)).collect();
            points.sort_unstable();
            let mut deltas = Vec::new();
            let mut last = 0;
            for p in points {
                deltas.push(&whole[last..p]);
                last = p;
            }
            deltas.push(&whole[last..]);
            let got = split(&deltas);
            prop_assert_eq!(&got, &reference(&whole));
            // Nothing is lost: the channels are the content minus the tags and the whitespace around them.
            if close && !think.contains(CLOSE) {
                prop_assert_eq!(got.0, think);
                prop_assert_eq!(got.1, answer.trim_start());
            } else if !close && !whole.trim_start().starts_with(OPEN) && !whole.trim().is_empty() {
                prop_assert_eq!(got.1, whole);
            }
        }
    }
}
