//! One upstream SSE event in → client bytes out, through the public pieces of
//! the streaming path: the bounded SSE decoder, the OpenAI chunk parse and the
//! proxy's chat-completions writer. The watchdog, the splicer and the events
//! channel are not public, so they (and a subscriber's cost) are not in it;
//! `baton bench` measures the whole proxy, in its own process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: a failed step is a failed bench

use baton::provider::openai::parse_data;
use baton::provider::sse::{SseDecoder, SseEvent, SseLimits};
use baton::provider::Chunk;
use baton::proxy::wire::ChunkWriter;
use divan::{black_box, Bencher};

fn main() {
    divan::main();
}

/// A typical upstream content chunk: one token of text.
const EVENT: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"bench-upstream\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hello \"},\"finish_reason\":null}]}\n\n";

/// The decoder alone: bytes → one event.
#[divan::bench]
fn sse_decode(bencher: Bencher) {
    let mut decoder = SseDecoder::new(SseLimits::default());
    let mut events: Vec<SseEvent> = Vec::with_capacity(4);
    bencher.bench_local(|| {
        events.clear();
        decoder.feed(black_box(EVENT), &mut events).unwrap();
        events.len()
    });
}

/// The OpenAI parse alone: one event's data → chunks.
#[divan::bench]
fn openai_parse(bencher: Bencher) {
    let data = std::str::from_utf8(&EVENT[6..EVENT.len() - 2]).unwrap();
    bencher.bench_local(|| parse_data(black_box(data)).unwrap());
}

/// The writer alone: one text delta → the client's SSE bytes.
#[divan::bench]
fn chunk_write(bencher: Bencher) {
    let mut writer = ChunkWriter::new("chatcmpl-bench".into());
    bencher.bench_local(|| writer.text("bench-upstream", black_box("hello ")).len());
}

/// The three in a row: upstream bytes in → client bytes out.
#[divan::bench]
fn event_to_client_bytes(bencher: Bencher) {
    let mut decoder = SseDecoder::new(SseLimits::default());
    let mut writer = ChunkWriter::new("chatcmpl-bench".into());
    let mut events: Vec<SseEvent> = Vec::with_capacity(4);
    bencher.bench_local(|| {
        events.clear();
        decoder.feed(black_box(EVENT), &mut events).unwrap();
        let mut out = 0;
        for event in &events {
            for chunk in parse_data(&event.data).unwrap() {
                if let Chunk::Text(text) = chunk {
                    out += writer.text("bench-upstream", &text).len();
                }
            }
        }
        assert!(out > 0, "the event produced no client bytes");
        out
    });
}
