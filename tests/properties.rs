//! Property tests of the seam and the wire: the overlap trim restores the
//! oracle's answer however a continuation is cut and phrased, it does not
//! depend on how the continuation is split into deltas, and SSE decoding gives
//! the same events however the bytes arrive — the same events as
//! `eventsource-stream`, a reference decoder with no size caps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use eventsource_stream::Eventsource;
use futures::StreamExt;
use proptest::prelude::*;
use proptest::sample::Index;

use baton::oracle::{self, script::chunk_json};
use baton::policy::overlap::{self, Evidence, OverlapTrim};
use baton::provider::openai::parse_data;
use baton::provider::sse::{SseDecoder, SseError, SseEvent, SseLimits};
use baton::provider::Chunk;
use baton::{Message, Role};

/// Cases per property; `PROPTEST_CASES` overrides it for a longer hunt.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// The char boundaries of `s`, both ends included.
fn boundaries(s: &str) -> Vec<usize> {
    s.char_indices().map(|(i, _)| i).chain([s.len()]).collect()
}

/// `s` cut at the char boundaries picked by `cuts` (duplicates and ends are harmless).
fn split_at_chars<'a>(s: &'a str, cuts: &[Index]) -> Vec<&'a str> {
    let bounds = boundaries(s);
    let mut at: Vec<usize> = cuts.iter().map(|c| bounds[c.index(bounds.len())]).collect();
    at.push(0);
    at.push(s.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &s[w[0]..w[1]]).collect()
}

/// Streams `pieces` through a trim of `prefix`, as the splicer does.
fn stream_trim(prefix: &str, pieces: &[&str], evidence: Evidence) -> String {
    let mut t = OverlapTrim::new(prefix, evidence);
    let mut out = String::new();
    for p in pieces {
        out.push_str(&t.push(p.to_string()));
    }
    out.push_str(&t.finish());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// A continuation of the oracle's answer that repeats up to four words and
    /// may double the seam's space — cut anywhere, even mid-word or inside a
    /// word of multi-byte characters — is trimmed back to exactly the missing rest.
    #[test]
    fn trim_restores_the_oracle_answer(
        seed in "\\PC{0,24}",
        system in proptest::option::of("[a-z ]{1,12}"),
        cut in any::<Index>(),
        words in 0usize..=4,
        extra_space in any::<bool>(),
        splits in proptest::collection::vec(any::<Index>(), 0..12),
    ) {
        let mut conversation = Vec::new();
        if let Some(s) = system {
            conversation.push(Message::new(Role::System, s));
        }
        conversation.push(Message::new(Role::User, seed));
        let a = oracle::answer(&conversation);
        let bounds = boundaries(&a);
        let i = bounds[cut.index(bounds.len())];
        let j = oracle::repeat_start(&a, i, words);
        prop_assert!(j <= i);
        let continuation = oracle::continuation(&a, i, oracle::Style { repeat_words: words, extra_space });
        let pieces = split_at_chars(&continuation, &splits);
        // An echoing fallback has been seen echoing; a non-echoing one may or may not have.
        // One that gives the seam's whitespace back is a provider that stripped it.
        let evidence = Evidence { seen_echoing: words > 0, stripped: extra_space, ..Evidence::default() };
        let out = stream_trim(&a[..i], &pieces, evidence);
        prop_assert_eq!(&out, &a[i..], "cut at {} of {}, repeat from {}, pieces {:?}", i, a.len(), j, pieces);
    }

    /// On arbitrary text the trim only ever drops a head of the continuation,
    /// what it drops does not depend on how the continuation is split, and it
    /// is what the documented rule (the fuzz target's reference) says.
    /// Half the continuations echo a tail of the prefix first (after optional
    /// whitespace), so held heads and confirmed repeats are common.
    #[test]
    fn trim_is_a_suffix_and_split_independent(
        prefix in prop_oneof![
            "[ab é\t\n]{0,24}",
            "[ab é\u{a0}]{0,400}",
            "\\PC{0,40}",
        ],
        echo in proptest::option::of((any::<Index>(), "[ \t\n\u{a0}]{0,2}")),
        rest in prop_oneof![
            "[ab é\t\n]{0,24}",
            "[ab é\u{a0}]{0,60}",
            "\\PC{0,40}",
        ],
        splits in proptest::collection::vec(any::<Index>(), 0..12),
    ) {
        let mut continuation = String::new();
        if let Some((from, lead)) = echo {
            let bounds = boundaries(&prefix);
            continuation.push_str(&lead);
            continuation.push_str(&prefix[bounds[from.index(bounds.len())]..]);
        }
        continuation.push_str(&rest);
        for seen_echoing in [false, true] {
            let evidence = Evidence { seen_echoing, ..Evidence::default() };
            let whole = overlap::trim(&prefix, &continuation, evidence);
            prop_assert!(continuation.ends_with(&whole), "{:?} is not a suffix of {:?}", whole, continuation);
            let pieces = split_at_chars(&continuation, &splits);
            let streamed = stream_trim(&prefix, &pieces, evidence);
            prop_assert_eq!(&streamed, &whole, "pieces {:?}", pieces);
            // The documented rule's reference lives with the fuzz targets (feature `fuzzing`).
            #[cfg(feature = "fuzzing")]
            {
                let rule = baton::fuzzing::overlap_reference(&prefix, &continuation, evidence);
                prop_assert_eq!(&whole, &rule, "the trim and the rule as documented differ");
            }
        }
    }
}

// ------------------------------------------------------------------ SSE

/// The SSE body of one oracle answer: its text as content chunks, a finish
/// chunk, a usage chunk and `[DONE]`.
fn sse_body(pieces: &[String], crlf: bool) -> Vec<u8> {
    let eol = if crlf { "\r\n" } else { "\n" };
    let mut events: Vec<String> = pieces.iter().map(|p| chunk_json("oracle", Some(p), None)).collect();
    events.push(chunk_json("oracle", None, Some("stop")));
    events.push(r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#.to_string());
    events.push("[DONE]".to_string());
    let mut body = String::new();
    for e in events {
        body.push_str(&format!("data: {e}{eol}{eol}"));
    }
    body.into_bytes()
}

/// `bytes` cut at arbitrary byte offsets (inside characters included).
fn split_bytes(bytes: &[u8], cuts: &[Index]) -> Vec<bytes::Bytes> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2)
        .map(|w| bytes::Bytes::copy_from_slice(&bytes[w[0]..w[1]]))
        .collect()
}

/// The events our decoder makes of `parts`, and whether the stream ended inside an event.
fn decode<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Result<(Vec<SseEvent>, bool), SseError> {
    let mut decoder = SseDecoder::new(SseLimits::default());
    let mut events = Vec::new();
    for part in parts {
        decoder.feed(part, &mut events)?;
    }
    Ok((events, decoder.finish()))
}

/// What the provider sees from those byte chunks: the parsed chunks in order.
fn parse_stream(parts: Vec<bytes::Bytes>) -> Result<Vec<Chunk>, String> {
    let (events, cut) = decode(parts.iter().map(|p| p.as_ref())).map_err(|e| format!("sse: {e}"))?;
    if cut {
        return Err("the body ended inside an event".into());
    }
    let mut out = Vec::new();
    for event in events {
        out.extend(parse_data(&event.data).map_err(|e| format!("parse: {e}"))?);
    }
    Ok(out)
}

fn check_sse(pieces: &[String], parts: Vec<bytes::Bytes>) -> Result<(), TestCaseError> {
    let chunks = parse_stream(parts).map_err(TestCaseError::fail)?;
    let text: String = chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    prop_assert_eq!(text, pieces.concat());
    prop_assert_eq!(
        chunks
            .iter()
            .filter(|c| matches!(c, Chunk::Finish(r) if r == "stop"))
            .count(),
        1
    );
    prop_assert_eq!(chunks.last(), Some(&Chunk::Done));
    prop_assert!(chunks
        .iter()
        .any(|c| matches!(c, Chunk::Usage(u) if u.completion_tokens == 3)));
    Ok(())
}

/// Content pieces rich in multi-byte characters, quotes, backslashes and newlines.
fn pieces() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        prop_oneof![
            "[a-z ]{1,8}",
            "[é日本語🚀δλ\u{a0} ]{1,6}",
            "[\"\\\\\n\r\t:]{1,3}",
            "\\PC{1,8}",
        ],
        0..24,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// However the bytes of an SSE body are split — inside a `data:` line,
    /// between the two newlines, inside a multi-byte character — the parsed
    /// text is the original text and the finish reason arrives.
    #[test]
    fn sse_parsing_is_independent_of_byte_splits(
        pieces in pieces(),
        crlf in any::<bool>(),
        cuts in proptest::collection::vec(any::<Index>(), 0..40),
    ) {
        let body = sse_body(&pieces, crlf);
        check_sse(&pieces, split_bytes(&body, &cuts))?;
    }

    /// An oracle answer (multi-byte words included) in the mock's own chunks.
    #[test]
    fn sse_parsing_of_oracle_answers(
        seed in "[a-z]{1,12}",
        cuts in proptest::collection::vec(any::<Index>(), 0..60),
    ) {
        let conversation = vec![Message::new(Role::User, seed)];
        let a = oracle::answer(&conversation);
        let pieces: Vec<String> = oracle::chunks(&a, oracle::conversation_hash(&conversation))
            .into_iter()
            .map(str::to_owned)
            .collect();
        let body = sse_body(&pieces, false);
        check_sse(&pieces, split_bytes(&body, &cuts))?;
    }
}

/// One byte at a time: every multi-byte character is split.
#[test]
fn sse_parsing_one_byte_at_a_time() {
    let pieces: Vec<String> = ["日本", "語 caf", "é ", "🚀", "\u{a0}δέλτα", "\"q\"\n"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for crlf in [false, true] {
        let body = sse_body(&pieces, crlf);
        let parts = body.iter().map(|b| bytes::Bytes::copy_from_slice(&[*b])).collect();
        check_sse(&pieces, parts).unwrap_or_else(|e| panic!("crlf={crlf}: {e}"));
    }
}

/// One line of an arbitrary SSE body (no line ending): fields with values
/// full of colons, spaces and multi-byte characters, comments, blank lines.
fn sse_line() -> impl Strategy<Value = String> {
    let value = "[a-z :é日🚀\u{feff}]{0,8}";
    prop_oneof![
        4 => value.prop_map(|v| format!("data: {v}")),
        2 => value.prop_map(|v| format!("data:{v}")),
        1 => Just("data".to_string()),
        2 => "[a-z]{0,5}".prop_map(|v| format!("event: {v}")),
        1 => value.prop_map(|v| format!(":{v}")),
        1 => prop_oneof![Just("id: 7"), Just("retry: 10"), Just("x-foo: bar"), Just("event"), Just("Data: no")]
            .prop_map(str::to_string),
        4 => Just(String::new()),
    ]
}

/// An arbitrary SSE body: lines with mixed endings, maybe a leading BOM. It
/// ends with LF, so a final CR is never left waiting for its possible LF.
fn sse_text() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        proptest::collection::vec((sse_line(), prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]), 0..40),
    )
        .prop_map(|(bom, lines)| {
            let mut body = if bom { "\u{feff}".to_string() } else { String::new() };
            for (line, eol) in lines {
                body.push_str(&line);
                body.push_str(eol);
            }
            body.push('\n');
            body.into_bytes()
        })
}

/// The events `eventsource-stream` makes of `body`, its `message` default named `""` as ours.
fn reference_events(body: &[u8]) -> Vec<SseEvent> {
    // It drops a leading BOM by slicing one byte off a three-byte character
    // (a panic), so it is given the body without one.
    let body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
    let parts = [Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(body))];
    futures::executor::block_on(futures::stream::iter(parts).eventsource().collect::<Vec<_>>())
        .into_iter()
        .map(|e| {
            let e = e.unwrap_or_else(|e| panic!("reference decoder: {e}"));
            SseEvent {
                event: if e.event == "message" { String::new() } else { e.event },
                data: e.data,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Splitting a valid SSE body at any one byte position — and at many at
    /// once — gives exactly the events of the unsplit body, which are the
    /// events the reference decoder finds.
    #[test]
    fn sse_decoding_is_split_independent_and_agrees_with_the_reference(
        body in sse_text(),
        cuts in proptest::collection::vec(any::<Index>(), 0..20),
    ) {
        let whole = decode([body.as_slice()]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&whole.0, &reference_events(&body), "body {:?}", String::from_utf8_lossy(&body));
        for i in 0..=body.len() {
            let (a, b) = body.split_at(i);
            prop_assert_eq!(&decode([a, b]), &Ok(whole.clone()), "split at {}", i);
        }
        let parts = split_bytes(&body, &cuts);
        prop_assert_eq!(decode(parts.iter().map(|p| p.as_ref())), Ok(whole));
    }
}
