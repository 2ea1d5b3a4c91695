//! The checks behind the fuzz targets (`fuzz/`), shared with `tests/fuzz_corpus.rs`.
//!
//! Each function takes the fuzzer's raw bytes, drives one parser of untrusted
//! input with them, and panics when an invariant breaks: a panic is what
//! libFuzzer reports as a finding, and what the corpus replay test fails on.
//! The same bodies run in both places, so a committed corpus file is a
//! regression test for whatever it once found.
//!
//! Inputs are plain bytes, decoded here rather than through `arbitrary`, so the
//! corpus files stay readable and the crate needs no fuzzing dependency:
//!
//! * [`chunk_parse`]: the whole input is one `data:` payload; or, when it has a
//!   newline, an event name, a newline and the payload.
//! * [`overlap`]: the input, as lossy UTF-8, split at `\x01`: the prefix, then
//!   the continuation's deltas.
//! * [`config`]: the whole input is a config file.
//! * [`recording`]: the whole input is a recording file.
//! * [`sse_decoder`]: see its docs (limits and split points come first).
//! * [`tool_calls`]: the input, as lossy UTF-8, one JSON value a line: an
//!   array is one chunk's tool-call deltas, anything else a single delta.

// A fuzz check reports a finding by panicking: that is this module's purpose.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use crate::config::Config;
use crate::policy::overlap::{Evidence, OverlapMode, OverlapTrim, ECHO_WORDS, MAX_OVERLAP, MIN_OVERLAP};
use crate::provider::sse::{SseDecoder, SseError, SseEvent, SseLimits};
use crate::provider::tool_calls::{self as calls, ToolCallBudget, MAX_TOOL_CALLS, MAX_TOOL_CALL_BYTES};
use crate::provider::{anthropic, openai, Chunk};
use crate::record::{reader, summary, verify};

/// The names of the fuzz targets, which are also the corpus directories under `fuzz/corpus/`.
pub const TARGETS: &[&str] = &[
    "chunk_parse",
    "overlap",
    "config",
    "recording",
    "sse_decoder",
    "tool_calls",
];

/// Runs the check of the target named `target` on `data`; `false` for an unknown name.
pub fn run(target: &str, data: &[u8]) -> bool {
    match target {
        "chunk_parse" => chunk_parse(data),
        "overlap" => overlap(data),
        "config" => config(data),
        "recording" => recording(data),
        "sse_decoder" => sse_decoder(data),
        "tool_calls" => tool_calls(data),
        _ => return false,
    }
    true
}

/// The OpenAI and Anthropic event parsers, and the HTTP error classifier,
/// on an arbitrary payload: no panic, errors display, no empty text chunk.
pub fn chunk_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // Text before a first newline is the SSE event name, when there is one.
    let (event, payload) = text.split_once('\n').unwrap_or(("", &text));
    for parsed in [
        openai::parse_data(&text),
        openai::parse_sse_event(event, payload),
        anthropic::parse_sse_event(event, payload),
    ] {
        match parsed {
            Ok(chunks) => {
                for chunk in chunks {
                    // An empty delta is dropped by the parsers: the splicer counts text chunks as tokens.
                    assert_ne!(chunk, Chunk::Text(String::new()), "an empty text chunk from {text:?}");
                }
            }
            Err(kind) => {
                assert!(!kind.to_string().is_empty(), "an error that says nothing for {text:?}");
            }
        }
    }
    // The first two bytes pick a status, the rest is an error body.
    let status = data.first().map_or(500, |b| 400 + u16::from(*b) % 200);
    let retry_after = String::from_utf8_lossy(data.get(1..data.len().min(12)).unwrap_or_default()).into_owned();
    let kind = openai::classify_http(status, Some(&retry_after), &text);
    assert!(!kind.to_string().is_empty());
}

/// Splits the input into the prefix and the continuation's deltas (see the module docs).
fn overlap_input(data: &[u8]) -> (String, Vec<String>) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\x01').map(str::to_owned);
    let prefix = parts.next().unwrap_or_default();
    (prefix, parts.collect())
}

/// The overlap rule of [`crate::policy::overlap`], applied to the whole continuation at once,
/// written from the module docs independently of the streaming code.
pub fn overlap_reference(prefix: &str, continuation: &str, evidence: Evidence) -> String {
    if prefix.is_empty() {
        return continuation.to_string();
    }
    let white = &prefix[prefix.trim_end_matches(|c: char| c.is_ascii_whitespace()).len()..];
    // Given back (dropped) when stripped, or echoed by the route, or inline whitespace on `auto`.
    let given_back = evidence.stripped
        || match evidence.setting {
            OverlapMode::Off => false,
            OverlapMode::Always => true,
            OverlapMode::Auto => evidence.seen_echoing || !white.contains(['\n', '\r']),
        };
    let body = match continuation.strip_prefix(white) {
        Some(rest) if !white.is_empty() && given_back => rest,
        _ => continuation,
    };
    let bytes = prefix.as_bytes();
    let glued = !prefix.ends_with(char::is_whitespace);
    let is_echo = |s: usize| {
        let candidate = &prefix[s..];
        if evidence.setting == OverlapMode::Off {
            return false;
        }
        if s == 0 {
            return true; // a restart
        }
        let word_start = bytes[s - 1].is_ascii_whitespace() && !bytes[s].is_ascii_whitespace();
        if !word_start || s + MAX_OVERLAP < prefix.len() || candidate.len() < MIN_OVERLAP {
            return false;
        }
        let words = candidate.split_ascii_whitespace().count();
        // A line said again: the candidate spans a line break, and the cut's
        // line began (up to the cut) with what stands before it on its own line.
        let lines = candidate.rfind('\n').is_some_and(|i| {
            let head = &candidate[i + 1..];
            prefix[..s]
                .strip_suffix(head)
                .is_some_and(|line| line.is_empty() || line.ends_with('\n'))
        });
        evidence.setting == OverlapMode::Always || glued || (words >= ECHO_WORDS && !lines) || evidence.seen_echoing
    };
    // Longest first: the first confirmed echo from the prefix's start.
    let echo = (0..prefix.len())
        .filter(|&s| prefix.is_char_boundary(s) && is_echo(s))
        .map(|s| &prefix[s..])
        .find(|candidate| body.starts_with(candidate));
    match echo {
        Some(repeat) => body[repeat.len()..].to_string(),
        None => body.to_string(),
    }
}

/// Every combination of route setting and learned fact the trim can run under.
const EVIDENCE: [Evidence; 6] = [
    Evidence {
        setting: OverlapMode::Auto,
        seen_echoing: false,
        stripped: false,
    },
    Evidence {
        setting: OverlapMode::Auto,
        seen_echoing: true,
        stripped: false,
    },
    Evidence {
        setting: OverlapMode::Off,
        seen_echoing: false,
        stripped: false,
    },
    Evidence {
        setting: OverlapMode::Always,
        seen_echoing: false,
        stripped: false,
    },
    Evidence {
        setting: OverlapMode::Auto,
        seen_echoing: false,
        stripped: true,
    },
    Evidence {
        setting: OverlapMode::Off,
        seen_echoing: false,
        stripped: true,
    },
];

/// [`OverlapTrim`] on an arbitrary prefix and arbitrary deltas, under every
/// setting: no panic, the output is what the rule says whatever the split, and
/// is a suffix of the continuation.
pub fn overlap(data: &[u8]) {
    let (prefix, deltas) = overlap_input(data);
    let continuation = deltas.concat();
    for evidence in EVIDENCE {
        let mut trim = OverlapTrim::new(&prefix, evidence);
        let mut out = String::new();
        for delta in &deltas {
            out.push_str(&trim.push(delta.clone()));
        }
        out.push_str(&trim.finish());
        assert!(!trim.holding(), "text still held after finish");
        assert!(
            continuation.ends_with(&out),
            "the output {out:?} is not what is left of the continuation {continuation:?}"
        );
        let whole = crate::policy::overlap::trim(&prefix, &continuation, evidence);
        assert_eq!(
            out, whole,
            "streamed and whole trims differ for {prefix:?} + {continuation:?} ({evidence:?})"
        );
        let expected = overlap_reference(&prefix, &continuation, evidence);
        assert_eq!(
            out, expected,
            "the trim breaks the rule for {prefix:?} + {continuation:?} ({evidence:?})"
        );
        let dropped = continuation.len() - out.len();
        assert!(
            dropped <= 2 * prefix.len(),
            "dropped {dropped} bytes, more than the seam's whitespace and a restart"
        );
    }
}

/// What every secret [`config`] reads from its environment starts with.
const SECRET_MARK: &str = "s3cr3t-9f2c";

/// Environment lookups for [`config`]: variables whose names start with `K` are set.
fn fuzz_env(name: &str) -> Option<String> {
    name.starts_with('K').then(|| format!("{SECRET_MARK}-{name}"))
}

/// [`Config::parse`] on arbitrary text: no panic, an error names the file, a
/// valid config shows no secret in its description or its `Debug`.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::parse("fuzz.toml", &text, &fuzz_env) {
        Ok(config) => {
            // A secret-looking string the file itself wrote is not a leak.
            if !text.contains(SECRET_MARK) {
                assert!(!config.describe().contains(SECRET_MARK), "describe() shows a secret");
                assert!(!format!("{config:?}").contains(SECRET_MARK), "Debug shows a secret");
            }
            for ladder in &config.ladders {
                assert!(
                    config.ladder_for(&ladder.name).is_some(),
                    "ladder {:?} is not found by its name",
                    ladder.name
                );
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.starts_with("fuzz.toml"),
                "an error that does not name the file: {message}"
            );
        }
    }
}

/// The recording reader on arbitrary bytes, and what `baton replay --summary` and
/// `--verify` compute from its sessions before re-driving: no panic.
pub fn recording(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let rec = reader::read_text(Path::new("fuzz.jsonl"), &text);
    assert_eq!(rec.bytes, text.len() as u64);
    for message in rec.errors.iter().chain(&rec.warnings) {
        assert!(
            message.starts_with("fuzz.jsonl"),
            "a message that does not name the file: {message}"
        );
    }
    let all = summary::summarize(&rec);
    for session in &rec.sessions {
        let _ = session.short_id();
        let _ = session.ladder();
        let _ = verify::transcript(&session.events);
        let _ = verify::plan(session);
        let _ = summary::session(session).to_string();
    }
    let _ = serde_json::to_string(&all);
}

/// What a plain, unbounded reading of an SSE stream finds (the WHATWG rules, as
/// [`crate::provider::sse`]'s decoder documents them), for [`sse_decoder`] to compare with.
#[derive(Debug, Default)]
struct SseReference {
    /// The events, values decoded lossily.
    events: Vec<SseEvent>,
    /// The longest line, its ending not counted (a leading BOM counted).
    longest_line: usize,
    /// The most data an event held (lines joined with `\n`), dispatched or not.
    largest_data: usize,
    /// The stream ends inside an event.
    cut: bool,
}

/// Reads `stream` the simple way: split into lines first, then apply the field rules.
fn sse_reference(stream: &[u8]) -> SseReference {
    let mut r = SseReference::default();
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < stream.len() {
        match stream[i] {
            b'\n' => {
                lines.push(&stream[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&stream[start..i]);
                if stream.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    let unfinished = &stream[start..];
    r.longest_line = lines
        .iter()
        .map(|l| l.len())
        .chain([unfinished.len()])
        .max()
        .unwrap_or(0);
    let (mut data, mut has_data, mut event) = (String::new(), false, String::new());
    for (n, mut line) in lines.into_iter().enumerate() {
        if n == 0 {
            line = line.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(line);
        }
        if line.is_empty() {
            if std::mem::take(&mut has_data) {
                r.events.push(SseEvent {
                    event: std::mem::take(&mut event),
                    data: std::mem::take(&mut data),
                });
            }
            event.clear();
            continue;
        }
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(0) => continue,
            Some(c) => (&line[..c], line[c + 1..].strip_prefix(b" ").unwrap_or(&line[c + 1..])),
            None => (line, &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"data" => {
                if has_data {
                    data.push('\n');
                }
                data.push_str(&value);
                has_data = true;
                r.largest_data = r.largest_data.max(data.len());
            }
            b"event" => event = value.into_owned(),
            _ => {}
        }
    }
    r.cut = !unfinished.is_empty() || has_data || !event.is_empty();
    r
}

/// Decodes `stream` fed in `pieces`; the events, the result, and what `finish` said.
fn sse_decode<'a>(
    limits: SseLimits,
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<SseEvent>, Result<(), SseError>, bool) {
    let mut decoder = SseDecoder::new(limits);
    let mut events = Vec::new();
    let mut result = Ok(());
    for piece in pieces {
        result = decoder.feed(piece, &mut events);
        if result.is_err() {
            break;
        }
    }
    let cut = decoder.finish();
    // After `finish` the decoder starts a new stream (when the caps let one event through).
    const PROBE: &[u8] = b"data: z\n\n";
    if limits.max_line_bytes >= PROBE.len() {
        let mut again = Vec::new();
        assert_eq!(decoder.feed(PROBE, &mut again), Ok(()), "not reusable after finish");
        assert_eq!(again.len(), 1);
    }
    (events, result, cut)
}

/// The bounded SSE decoder on arbitrary bytes split at arbitrary points.
///
/// Input: byte 0 sets the line cap (`1 + 4·b`), byte 1 the event cap
/// (`1 + 8·b`), byte 2 the number of split points (mod 16), then that many bytes
/// placing them; the rest is the stream. Checks: no panic; the same events,
/// error and `finish` whether fed whole, at the split points or byte by byte;
/// no event over the cap; and, against a plain unbounded reading, the same
/// events when decoding succeeds, a real cause when it fails.
pub fn sse_decoder(data: &[u8]) {
    let [line_cap, event_cap, splits, rest @ ..] = data else {
        return;
    };
    let limits = SseLimits {
        max_line_bytes: 1 + usize::from(*line_cap) * 4,
        max_event_bytes: 1 + usize::from(*event_cap) * 8,
    };
    let (points, stream) = rest.split_at(usize::from(*splits % 16).min(rest.len()));
    let mut cuts: Vec<usize> = points.iter().map(|p| usize::from(*p) * stream.len() / 255).collect();
    cuts.extend([0, stream.len()]);
    cuts.sort_unstable();
    // Duplicates stay: an empty piece must be harmless too.
    let pieces = cuts.windows(2).map(|w| &stream[w[0]..w[1]]);

    let whole = sse_decode(limits, [stream]);
    let split = sse_decode(limits, pieces);
    let bytewise = sse_decode(limits, stream.chunks(1));
    assert_eq!(whole, split, "whole vs split at {cuts:?}");
    assert_eq!(whole, bytewise, "whole vs byte by byte");

    let (events, result, cut) = whole;
    for e in &events {
        assert!(e.data.len() <= limits.max_event_bytes, "an event over the cap");
        assert!(
            e.event.len() <= limits.max_line_bytes,
            "an event name over the line cap"
        );
    }
    let reference = sse_reference(stream);
    match result {
        Ok(()) => {
            assert!(
                reference.longest_line <= limits.max_line_bytes,
                "a line over the cap was accepted"
            );
            assert!(
                reference.largest_data <= limits.max_event_bytes,
                "an event over the cap was accepted"
            );
            assert_eq!(events, reference.events, "events differ from a plain reading");
            assert_eq!(cut, reference.cut, "finish() misreports a cut event");
        }
        Err(e) => {
            assert!(!cut, "finish() after an error reports a cut");
            assert!(
                reference.events.starts_with(&events),
                "events before the error differ from a plain reading"
            );
            let justified = match e {
                SseError::LineTooLong { limit } => limit == limits.max_line_bytes && reference.longest_line > limit,
                SseError::EventTooLarge { limit } => limit == limits.max_event_bytes && reference.largest_data > limit,
                SseError::InvalidUtf8 { offset } => {
                    usize::try_from(offset).is_ok_and(|o| o < stream.len()) && std::str::from_utf8(stream).is_err()
                }
            };
            assert!(justified, "{e} without a cause in the stream");
        }
    }
}

/// The chunks of tool-call deltas a [`tool_calls`] input stands for (see the module docs).
fn tool_call_chunks(data: &[u8]) -> Vec<Vec<serde_json::Value>> {
    String::from_utf8_lossy(data)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|value| match value {
            serde_json::Value::Array(deltas) => deltas,
            delta => vec![delta],
        })
        .collect()
}

/// Tool-call deltas through an attempt's [`ToolCallBudget`], then merged as a
/// whole answer does: no panic and no allocation an index decides; what is
/// admitted stays within the bounds; the merge keeps every admitted piece of
/// every call, in index order, compared with a plain concatenation per index.
pub fn tool_calls(data: &[u8]) {
    let chunks = tool_call_chunks(data);
    let mut budget = ToolCallBudget::default();
    let mut admitted = Vec::new();
    for chunk in &chunks {
        match budget.admit(chunk) {
            Ok(()) => admitted.extend(chunk.iter().cloned()),
            Err(kind) => {
                assert!(
                    matches!(
                        kind,
                        crate::FailureKind::Malformed { .. } | crate::FailureKind::TooLarge { .. }
                    ),
                    "a bound broken as {kind:?}"
                );
                // The attempt fails here: nothing after it is held.
                break;
            }
        }
    }
    let merged = calls::merge(&admitted);
    // The reference: each admitted delta's pieces appended to its index's call.
    let mut expected: std::collections::BTreeMap<u64, (String, String)> = Default::default();
    for delta in &admitted {
        let index = calls::index_of(delta).unwrap_or_else(|e| panic!("admitted {delta} although {e}"));
        assert!(index < MAX_TOOL_CALLS, "admitted index {index}");
        let call = expected.entry(index).or_default();
        let piece = |key: &str| {
            delta
                .get("function")
                .and_then(|f| f.get(key))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        call.0.push_str(&piece("name"));
        call.1.push_str(&piece("arguments"));
    }
    assert_eq!(merged.len(), expected.len(), "one merged call per index that occurs");
    let mut argument_bytes = 0usize;
    for (call, (name, arguments)) in merged.iter().zip(expected.values()) {
        assert_eq!(call["function"]["name"].as_str(), Some(name.as_str()));
        assert_eq!(call["function"]["arguments"].as_str(), Some(arguments.as_str()));
        argument_bytes += arguments.len();
    }
    assert!(
        argument_bytes <= MAX_TOOL_CALL_BYTES,
        "{argument_bytes} bytes of arguments admitted"
    );
    // Unchecked deltas too: the merge makes at most one call per delta, whatever the indices.
    let everything: Vec<serde_json::Value> = chunks.into_iter().flatten().collect();
    assert!(calls::merge(&everything).len() <= everything.len().min(MAX_TOOL_CALLS as usize));
}
