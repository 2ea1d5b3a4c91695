//! One text delta → client bytes, per door encoder: the chat-completions
//! encoder against the Responses and Messages ones, item by item as the streamed body
//! drives them (no network, no splicer).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: a failed step is a failed bench

use std::sync::Arc;

use baton::engine::splice::ClientItem;
use baton::policy::reasoning::OutgoingField;
use baton::proxy::encode::{ChatEncoder, ClientEncoder};
use baton::proxy::messages::MessagesEncoder;
use baton::proxy::responses::ResponsesEncoder;
use bytes::BytesMut;
use divan::{black_box, Bencher};

fn main() {
    divan::main();
}

fn token() -> ClientItem {
    ClientItem::Text {
        text: "hello ".into(),
        route: Arc::from("bench-route"),
        model: Arc::from("bench-upstream"),
    }
}

/// Chat completions: one `chat.completion.chunk` per token.
#[divan::bench]
fn chat_text_delta(bencher: Bencher) {
    let mut encoder = ChatEncoder::new("chatcmpl-bench", 1_700_000_000, false, OutgoingField::AsUpstream);
    let item = token();
    let mut out = BytesMut::with_capacity(1 << 16);
    bencher.bench_local(|| {
        out.clear();
        encoder.item(black_box(&item), &mut out);
        out.len()
    });
}

/// Responses: one `response.output_text.delta` event per token.
#[divan::bench]
fn responses_text_delta(bencher: Bencher) {
    let mut encoder = ResponsesEncoder::new("resp_bench", "bench", 1_700_000_000);
    let item = token();
    let mut out = BytesMut::with_capacity(1 << 16);
    // The envelope and the message item are opened once, before the measured deltas.
    encoder.item(&item, &mut out);
    bencher.bench_local(|| {
        out.clear();
        encoder.item(black_box(&item), &mut out);
        out.len()
    });
}

/// Messages: one `content_block_delta` event per token.
#[divan::bench]
fn messages_text_delta(bencher: Bencher) {
    let mut encoder = MessagesEncoder::new("msg_bench", "bench");
    let item = token();
    let mut out = BytesMut::with_capacity(1 << 16);
    // `message_start` and the text block are opened once, before the measured deltas.
    encoder.item(&item, &mut out);
    bencher.bench_local(|| {
        out.clear();
        encoder.item(black_box(&item), &mut out);
        out.len()
    });
}
