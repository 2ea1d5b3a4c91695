//! Hostile upstreams: every way an upstream's bytes can be wrong is a
//! classified failure with bounded memory, never a panic or a hang, and the
//! client still gets the whole answer from the fallback.
//!
//! Each hostile upstream is a small raw-TCP server on 127.0.0.1 that first
//! streams a prefix of the mock oracle's answer (so the spliced text can be
//! compared with the oracle's byte for byte), then misbehaves. Most cases run
//! through the library ([`Splicer`] with an OpenAI route on the hostile server
//! and the in-process oracle as fallback); a few run through `baton serve`
//! over loopback HTTP. Real sockets mean real time: deadlines are generous and
//! every session runs under a timeout that only a hang would reach. The one
//! deadline that matters (the total deadline of an endless stream) is also
//! checked under virtual time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::sync::Arc;
use std::time::Duration;

use baton::engine::splice::Collected;
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::script::{chunk_json, Pacing};
use baton::oracle::{answer, chunks, conversation_hash, Style};
use baton::provider::openai::{parse_sse_event, OpenAiProvider};
use baton::provider::sse::{decode_body, SseLimits};
use baton::provider::{ChunkStream, Provider, UpstreamRequest};
use baton::{ChatRequest, Deadlines, Ladder, Message, Role, Route, Splicer};
use serde_json::Value;
use support::{http_chunk, oracle_upstream, raw_upstream, serve, Served, Sse};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Far beyond anything a healthy loopback upstream needs: only a hang reaches it.
const HANG: Duration = Duration::from_secs(60);

/// Deadlines that never fire in these tests unless a test means them to.
const GENEROUS: Deadlines = Deadlines {
    first_token: Duration::from_secs(30),
    stall: Duration::from_secs(30),
    total: Duration::from_secs(120),
    reasoning_budget: None,
};

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";

fn conversation(tag: &str) -> Vec<Message> {
    vec![Message::new(Role::User, format!("hostile {tag}"))]
}

/// The oracle's answer to `conversation`, in the oracle's own chunks.
fn pieces(conversation: &[Message]) -> Vec<String> {
    chunks(&answer(conversation), conversation_hash(conversation))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// One SSE event carrying `data`.
fn event(data: &str) -> Vec<u8> {
    format!("data: {data}\n\n").into_bytes()
}

/// The first half of the oracle's answer to `conversation` as SSE events.
fn prefix_events(conversation: &[Message]) -> Vec<u8> {
    let pieces = pieces(conversation);
    pieces[..pieces.len() / 2]
        .iter()
        .flat_map(|p| event(&chunk_json("hostile", Some(p), None)))
        .collect()
}

/// The whole answer as SSE events, finish, usage and `[DONE]` included.
fn whole_answer_events(conversation: &[Message]) -> Vec<Vec<u8>> {
    let mut events: Vec<Vec<u8>> = pieces(conversation)
        .iter()
        .map(|p| event(&chunk_json("hostile", Some(p), None)))
        .collect();
    events.push(event(&chunk_json("hostile", None, Some("stop"))));
    events.push(event(
        r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":42}}"#,
    ));
    events.push(event("[DONE]"));
    events
}

/// Writes `bytes` as one HTTP chunk; false once the client has gone.
async fn send(socket: &mut TcpStream, bytes: &[u8]) -> bool {
    socket.write_all(&http_chunk(bytes)).await.is_ok()
}

/// Writes the SSE head and the first half of the answer; false once the client has gone.
async fn open_with_prefix(socket: &mut TcpStream, conversation: &[Message]) -> bool {
    socket.write_all(SSE_HEAD).await.is_ok() && send(socket, &prefix_events(conversation)).await
}

/// Writes `piece` as HTTP chunks until `total` bytes are sent or the client
/// goes; reports on `sent` how many bytes went out and whether all of them did.
async fn flood(socket: &mut TcpStream, piece: &[u8], total: u64, sent: &mpsc::UnboundedSender<(u64, bool)>) {
    let mut written = 0;
    while written < total {
        if !send(socket, piece).await {
            let _ = sent.send((written, false));
            return;
        }
        written += piece.len() as u64;
    }
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let _ = sent.send((written, true));
}

/// What a hostile upstream reported on its channel (waiting at most [`HANG`]).
async fn reported(sent: &mut mpsc::UnboundedReceiver<(u64, bool)>, what: &str) -> (u64, bool) {
    tokio::time::timeout(HANG, sent.recv())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{what}"))
}

/// An upstream that streams the first half of `conversation`'s answer, then
/// `start` (unless empty), then `piece` over and over up to 50 MB. Its base
/// URL, and where it reports what [`flood`] sent.
async fn flooding_upstream(
    conversation: &[Message],
    start: &'static [u8],
    piece: Vec<u8>,
) -> (String, mpsc::UnboundedReceiver<(u64, bool)>) {
    let (sent_tx, sent) = mpsc::unbounded_channel();
    let c = conversation.to_vec();
    let url = raw_upstream(move |mut socket, _, _| {
        let (c, sent_tx, piece) = (c.clone(), sent_tx.clone(), piece.clone());
        async move {
            if open_with_prefix(&mut socket, &c).await && (start.is_empty() || send(&mut socket, start).await) {
                flood(&mut socket, &piece, 50 << 20, &sent_tx).await;
            }
        }
    })
    .await;
    (url, sent)
}

/// An upstream that writes the SSE head, each of `pieces` as one HTTP chunk
/// (until the client goes), then a clean end of the chunked body. Its base URL.
async fn chunked_upstream(pieces: Vec<Vec<u8>>) -> String {
    raw_upstream(move |mut socket, _, _| {
        let pieces = pieces.clone();
        async move {
            if socket.write_all(SSE_HEAD).await.is_err() {
                return;
            }
            for piece in &pieces {
                if !send(&mut socket, piece).await {
                    return;
                }
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
        }
    })
    .await
}

/// [`chunked_upstream`] of the first half of `conversation`'s answer, then `tail`.
async fn prefix_then(conversation: &[Message], tail: Vec<Vec<u8>>) -> String {
    let mut pieces = vec![prefix_events(conversation)];
    pieces.extend(tail);
    chunked_upstream(pieces).await
}

/// The in-process oracle, healthy and fast.
fn oracle_fallback() -> Route {
    let oracle = MockProvider::new(FaultPlan::Fixed(FaultScript::NONE), Style::default()).with_pacing(Pacing {
        first_token: Duration::from_millis(1),
        interval: Duration::from_millis(1),
    });
    Route::new("fallback", "oracle", Arc::new(oracle)).with_deadlines(GENEROUS)
}

/// Runs `conversation` through a splicer: the OpenAI upstream at `base_url` ("hostile") → the oracle.
async fn splice(base_url: &str, conversation: &[Message], deadlines: Deadlines) -> Collected {
    let hostile = OpenAiProvider::new(OpenAiProvider::default_client(), base_url, None);
    let mut ladder = Ladder::new(vec![
        Route::new("hostile", "m", Arc::new(hostile)).with_deadlines(deadlines),
        oracle_fallback(),
    ]);
    // A retried attempt would only repeat the hostile bytes.
    ladder.retry.max_retries = 0;
    let splicer = Splicer::new(ladder);
    tokio::time::timeout(HANG, splicer.collect(ChatRequest::new(conversation.to_vec())))
        .await
        .expect("the session hung")
}

/// Asserts that the client got the oracle's whole answer from the hostile
/// route alone, without a failure; the completion.
fn assert_untouched(done: Collected, conversation: &[Message]) -> baton::engine::splice::Completion {
    assert_eq!(done.text, answer(conversation));
    let completion = done.outcome.expect("complete");
    assert!(completion.failures.is_empty(), "{:?}", completion.failures);
    assert_eq!(completion.route_chain, ["hostile"]);
    completion
}

/// Asserts that the client got the oracle's whole answer after one failure of
/// `kind` on the hostile route, written by `chain`; the failure's detail.
fn assert_handed_over(done: &Collected, conversation: &[Message], kind: &str, chain: &[&str]) -> String {
    assert_eq!(
        done.text,
        answer(conversation),
        "the client's text is the oracle's answer"
    );
    let completion = done.outcome.as_ref().expect("a complete answer");
    let failures: Vec<(&str, &str)> = completion
        .failures
        .iter()
        .map(|f| (f.route.as_str(), f.kind.as_str()))
        .collect();
    assert_eq!(failures, [("hostile", kind)], "{:?}", completion.failures);
    assert_eq!(completion.route_chain, chain);
    assert_eq!(completion.finish_reason, "stop");
    completion.failures[0].detail.clone()
}

#[tokio::test]
async fn a_fifty_megabyte_line_without_a_newline_is_too_large_after_about_the_limit() {
    let conv = conversation("long line");
    let (url, mut sent) = flooding_upstream(
        &conv,
        b"data: {\"choices\":[{\"delta\":{\"content\":\"",
        vec![b'a'; 64 * 1024],
    )
    .await;
    let done = splice(&url, &conv, GENEROUS).await;
    let detail = assert_handed_over(&done, &conv, "too_large", &["hostile", "fallback"]);
    assert!(detail.contains("line") && detail.contains("1048576"), "{detail}");
    // The client hung up long before the 50 MB: what went out is the limit
    // plus what the kernel's socket buffers held.
    let (written, all) = reported(&mut sent, "the upstream reports").await;
    assert!(!all, "the client read all 50 MB instead of hanging up");
    assert!(written < 40 << 20, "{written} bytes went out before the client hung up");
}

#[tokio::test]
async fn an_event_of_endless_data_lines_is_too_large_after_the_event_limit() {
    let conv = conversation("big event");
    // Each line is well under the line limit; the event never ends.
    let mut line = b"data: ".to_vec();
    line.extend_from_slice(&[b'x'; 60_000]);
    line.push(b'\n');
    let (url, mut sent) = flooding_upstream(&conv, b"", line).await;
    let done = splice(&url, &conv, GENEROUS).await;
    let detail = assert_handed_over(&done, &conv, "too_large", &["hostile", "fallback"]);
    assert!(detail.contains("event") && detail.contains("4194304"), "{detail}");
    let (_, all) = reported(&mut sent, "the upstream reports").await;
    assert!(!all, "the client read all 50 MB instead of hanging up");
}

#[tokio::test]
async fn invalid_utf8_inside_a_json_string_is_malformed() {
    let conv = conversation("bad utf8");
    // A lone continuation byte and a truncated two-byte sequence inside the content string.
    let bad =
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"caf\xc3 \x80\"},\"finish_reason\":null}]}\n\n";
    let url = prefix_then(
        &conv,
        vec![
            bad.to_vec(),
            event(&chunk_json("hostile", Some("never seen"), Some("stop"))),
        ],
    )
    .await;
    let done = splice(&url, &conv, GENEROUS).await;
    let detail = assert_handed_over(&done, &conv, "malformed", &["hostile", "fallback"]);
    assert!(detail.contains("invalid UTF-8"), "{detail}");
}

#[tokio::test]
async fn every_byte_in_its_own_read_changes_nothing() {
    let conv = conversation("byte by byte");
    // A BOM and CRLF line endings too: every kind of split is exercised.
    let mut body = "\u{feff}".as_bytes().to_vec();
    for e in whole_answer_events(&conv) {
        body.extend(String::from_utf8_lossy(&e).replace('\n', "\r\n").bytes());
    }
    // Each byte is its own HTTP chunk, so the decoder gets it alone
    // however TCP coalesces the writes.
    let url = chunked_upstream(body.into_iter().map(|b| vec![b]).collect()).await;
    let done = splice(&url, &conv, GENEROUS).await;
    let completion = assert_untouched(done, &conv);
    assert_eq!(
        completion
            .usage()
            .expect("the upstreams reported usage")
            .completion_tokens,
        42
    );
}

#[tokio::test]
async fn comments_unknown_events_and_empty_choices_interleaved_change_nothing() {
    let conv = conversation("interleaved");
    let noise: &[&[u8]] = &[
        b": keep-alive\n\n",
        b"event: ping\ndata: {\"type\":\"ping\"}\n\n",
        b"id: 7\nretry: 100\nx-unknown: field\n",
        b"data:\n\n",
        b":\n",
        // Azure's prompt-filter chunk: empty choices, no usage.
        b"data: {\"choices\":[],\"prompt_filter_results\":[]}\n\n",
        // A role-only delta, as OpenAI sends first.
        b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n",
        b"event: message\n",
    ];
    let pieces = whole_answer_events(&conv)
        .into_iter()
        .enumerate()
        .flat_map(|(i, e)| [noise[i % noise.len()].to_vec(), e])
        .collect();
    let url = chunked_upstream(pieces).await;
    let done = splice(&url, &conv, GENEROUS).await;
    let completion = assert_untouched(done, &conv);
    assert_eq!(
        completion
            .usage()
            .expect("the upstreams reported usage")
            .completion_tokens,
        42,
        "the usage chunk without choices counts"
    );
}

#[tokio::test]
async fn a_chunk_without_choices_or_usage_is_malformed() {
    let conv = conversation("no choices");
    let url = prefix_then(
        &conv,
        vec![event(r#"{"id":"x","object":"chat.completion.chunk","model":"m"}"#)],
    )
    .await;
    let done = splice(&url, &conv, GENEROUS).await;
    let detail = assert_handed_over(&done, &conv, "malformed", &["hostile", "fallback"]);
    assert!(detail.contains("neither choices nor usage"), "{detail}");
}

/// A 200 response with `headers` and `body`, then the end of the connection.
fn respond_with(
    headers: &'static str,
    body: &'static [u8],
) -> impl Fn(TcpStream, String, Value) -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static {
    move |mut socket, _, _| {
        Box::pin(async move {
            let head = format!(
                "HTTP/1.1 200 OK\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body).await;
        })
    }
}

#[tokio::test]
async fn a_compressed_response_is_a_content_encoding_failure_and_identity_was_asked_for() {
    for encoding in ["gzip", "br"] {
        let conv = conversation(encoding);
        let (heads_tx, mut heads) = mpsc::unbounded_channel();
        let url = raw_upstream(move |mut socket, head, _| {
            let heads_tx = heads_tx.clone();
            async move {
                let _ = heads_tx.send(head);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-encoding: {encoding}\r\ncontent-length: 18\r\nconnection: close\r\n\r\n"
                );
                let _ = socket.write_all(head.as_bytes()).await;
                // A gzip magic number and noise: never decoded.
                let _ = socket.write_all(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xfe\x00\x01\x02\x03\x04\x05").await;
            }
        })
        .await;
        let done = splice(&url, &conv, GENEROUS).await;
        let detail = assert_handed_over(&done, &conv, "content_encoding", &["fallback"]);
        assert!(detail.contains(encoding), "{detail}");
        let head = heads.recv().await.expect("the request head");
        assert!(head.contains("accept-encoding: identity"), "{head}");
        assert!(head.contains("accept: text/event-stream"), "{head}");
    }
}

#[tokio::test]
async fn a_200_that_is_not_an_event_stream_is_malformed() {
    let whole = br#"{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}]}"#;
    let cases: [(&str, &'static str, &'static [u8]); 3] = [
        ("json", "content-type: application/json\r\n", whole),
        (
            "html",
            "content-type: text/html; charset=utf-8\r\n",
            b"<html>maintenance</html>",
        ),
        ("none", "", b"data: {}\n\n"),
    ];
    for (tag, headers, body) in cases {
        let conv = conversation(tag);
        let url = raw_upstream(respond_with(headers, body)).await;
        let done = splice(&url, &conv, GENEROUS).await;
        let detail = assert_handed_over(&done, &conv, "malformed", &["fallback"]);
        assert!(detail.contains("is not text/event-stream"), "{tag}: {detail}");
    }
}

#[tokio::test]
async fn a_body_cut_inside_an_event_is_truncated() {
    let conv = conversation("cut");
    // A clean end of the chunked body, but in the middle of an event.
    let url = prefix_then(
        &conv,
        vec![b"data: {\"choices\":[{\"delta\":{\"content\":\"half".to_vec()],
    )
    .await;
    let done = splice(&url, &conv, GENEROUS).await;
    let detail = assert_handed_over(&done, &conv, "truncated", &["hostile", "fallback"]);
    assert!(detail.contains("inside an event"), "{detail}");
}

#[tokio::test]
async fn an_error_status_whose_body_never_ends_is_classified_by_its_status() {
    let conv = conversation("endless error body");
    let url = raw_upstream(move |mut socket, _, _| async move {
        let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nretry-after: 1\r\n\r\n";
        if socket.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        while send(&mut socket, b"still failing... ").await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let done = splice(&url, &conv, GENEROUS).await;
    let detail = assert_handed_over(&done, &conv, "server_error", &["fallback"]);
    assert!(detail.contains("500"), "{detail}");
}

#[tokio::test]
async fn an_endless_stream_is_ended_by_the_total_deadline_and_the_upstream_is_cancelled() {
    let conv = conversation("endless");
    let (sent_tx, mut sent) = mpsc::unbounded_channel();
    let c = conv.clone();
    let url = raw_upstream(move |mut socket, _, _| {
        let (c, sent_tx) = (c.clone(), sent_tx.clone());
        async move {
            if !open_with_prefix(&mut socket, &c).await {
                return;
            }
            // Usage chunks and comments forever: never text, never a finish.
            let usage = event(r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#);
            let mut n = 0u64;
            while send(&mut socket, b": still here\n").await && send(&mut socket, &usage).await {
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = sent_tx.send((n, false));
        }
    })
    .await;
    let deadlines = Deadlines {
        total: Duration::from_secs(3),
        ..GENEROUS
    };
    let done = splice(&url, &conv, deadlines).await;
    let detail = assert_handed_over(&done, &conv, "total_timeout", &["hostile", "fallback"]);
    assert!(detail.contains("3000 ms"), "{detail}");
    let (events, _) = reported(&mut sent, "the upstream saw the client go").await;
    assert!(events > 0);
}

/// An upstream whose body never ends, in-process so tokio's clock drives it:
/// half the oracle's answer, then a usage chunk every 100 ms forever, through
/// the same body decoding as a real response.
struct Endless;

impl Provider for Endless {
    fn stream(&self, request: UpstreamRequest) -> ChunkStream {
        let prefix = prefix_events(&request.messages);
        let body = async_stream::stream! {
            yield Ok::<_, std::io::Error>(bytes::Bytes::from(prefix));
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                yield Ok(bytes::Bytes::from_static(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n"));
            }
        };
        Box::pin(decode_body(body, parse_sse_event, SseLimits::default()))
    }
}

#[tokio::test(start_paused = true)]
async fn under_virtual_time_an_endless_stream_meets_the_default_total_deadline() {
    let conv = conversation("endless, virtual");
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("hostile", "m", Arc::new(Endless)),
        oracle_fallback().with_deadlines(Deadlines::default()),
    ]));
    let started = tokio::time::Instant::now();
    let done = splicer.collect(ChatRequest::new(conv.clone())).await;
    let detail = assert_handed_over(&done, &conv, "total_timeout", &["hostile", "fallback"]);
    assert!(detail.contains("300000 ms"), "{detail}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(300) && elapsed < Duration::from_secs(301),
        "{elapsed:?}"
    );
}

// ------------------------------------------------------------ through the proxy

/// `baton serve` with ladder "chat" = the upstream at `hostile_url` → a healthy oracle.
async fn proxy(hostile_url: &str) -> Served {
    let (fallback, stop) = oracle_upstream("none", Style::default()).await;
    let toml = format!(
        r#"
        [[route]]
        name = "hostile"
        provider = "openai"
        base_url = "{hostile_url}"
        model = "m"
        ttft_ms = 30000
        stall_ms = 30000

        [[route]]
        name = "fallback"
        provider = "openai"
        base_url = "{fallback}"
        model = "oracle"
        ttft_ms = 30000
        stall_ms = 30000

        [[ladder]]
        name = "chat"
        routes = ["hostile", "fallback"]
        "#
    );
    serve(&toml, vec![stop]).await
}

/// Streams `conversation` through `proxy`: the SSE body the client read.
async fn stream_through(proxy: &Served, conversation: &[Message]) -> Sse {
    let body = serde_json::json!({"model": "chat", "messages": conversation, "stream": true});
    let read = async {
        let response = proxy.chat(&body).await;
        assert_eq!(response.status(), 200);
        response.text().await.expect("body")
    };
    Sse::parse(&tokio::time::timeout(HANG, read).await.expect("the proxy hung"))
}

/// Asserts the proxy handed over once for `reason`, counted it, and is still up with no stream left open.
async fn assert_proxy_handed_over(proxy: &Served, conversation: &[Message], reason: &str) {
    let sse = stream_through(proxy, conversation).await;
    assert_eq!(
        sse.text(),
        answer(conversation),
        "the client's text is the oracle's answer"
    );
    assert!(sse.done(), "a complete answer ends with [DONE]");
    assert!(
        sse.comments
            .iter()
            .any(|c| c.starts_with(&format!("baton handover from=hostile to=fallback reason={reason}"))),
        "{:?}",
        sse.comments
    );
    assert_eq!(proxy.get("/healthz").await, "ok\n");
    let metrics = proxy.get("/metrics").await;
    for line in [
        format!("baton_failures_total{{route=\"hostile\",class=\"technical\",kind=\"{reason}\"}} 1"),
        "baton_sessions_total{ladder=\"chat\",outcome=\"complete\",door=\"chat_completions\"} 1".to_string(),
        "baton_active_streams 0".to_string(),
    ] {
        assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn through_the_proxy_a_fifty_megabyte_line_hands_over_and_the_server_stays_up() {
    let conv = conversation("proxy long line");
    let (url, _sent) = flooding_upstream(&conv, b"data: ", vec![b'{'; 64 * 1024]).await;
    let proxy = proxy(&url).await;
    assert_proxy_handed_over(&proxy, &conv, "too_large").await;
}

#[tokio::test]
async fn through_the_proxy_a_gzip_response_hands_over() {
    let conv = conversation("proxy gzip");
    let url = raw_upstream(respond_with(
        "content-type: text/event-stream\r\ncontent-encoding: gzip\r\n",
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
    ))
    .await;
    let proxy = proxy(&url).await;
    assert_proxy_handed_over(&proxy, &conv, "content_encoding").await;
}

#[tokio::test]
async fn through_the_proxy_invalid_utf8_hands_over() {
    let conv = conversation("proxy utf8");
    let url = prefix_then(
        &conv,
        vec![b"data: {\"choices\":[{\"delta\":{\"content\":\"\xed\xa0\x80\"}}]}\n\n".to_vec()],
    )
    .await;
    let proxy = proxy(&url).await;
    assert_proxy_handed_over(&proxy, &conv, "malformed").await;
}

// ------------------------------------------------------------ tool calls

/// A tool-call delta whose index would make a merge allocate four billion calls.
fn huge_index_delta() -> String {
    support::tool(
        "hostile",
        serde_json::json!({"index": 4_000_000_000u64, "id": "call_x", "type": "function", "function": {"name": "f", "arguments": "{}"}}),
    )
}

/// The first half of `conversation`'s answer, then `tool_events`, a `tool_calls` finish and `[DONE]`.
async fn tool_calls_then_finish(conversation: &[Message], tool_events: Vec<String>) -> String {
    let mut tail: Vec<Vec<u8>> = tool_events.iter().map(|e| event(e)).collect();
    tail.push(event(&chunk_json("hostile", None, Some("tool_calls"))));
    tail.push(event("[DONE]"));
    prefix_then(conversation, tail).await
}

#[tokio::test]
async fn a_tool_call_index_of_four_billion_is_malformed() {
    let conv = conversation("tool index");
    let url = tool_calls_then_finish(&conv, vec![huge_index_delta()]).await;
    let done = splice(&url, &conv, GENEROUS).await;
    let detail = assert_handed_over(&done, &conv, "malformed", &["hostile", "fallback"]);
    assert!(detail.contains("index 4000000000"), "{detail}");
}

#[tokio::test]
async fn tool_calls_over_the_held_size_are_too_large() {
    let conv = conversation("tool flood");
    // Each delta is small enough for an event; together they pass the bound.
    let piece = "x".repeat(60_000);
    let deltas = (0..100)
        .map(|_| {
            support::tool(
                "hostile",
                serde_json::json!({"index": 0, "function": {"arguments": piece}}),
            )
        })
        .collect();
    let url = tool_calls_then_finish(&conv, deltas).await;
    let done = splice(&url, &conv, GENEROUS).await;
    let detail = assert_handed_over(&done, &conv, "too_large", &["hostile", "fallback"]);
    assert!(
        detail.contains("tool-call") && detail.contains(&baton::provider::tool_calls::MAX_TOOL_CALL_BYTES.to_string()),
        "{detail}"
    );
}

#[tokio::test]
async fn through_the_proxy_a_tool_call_index_of_four_billion_hands_over_streamed_and_whole() {
    let conv = conversation("proxy tool index");
    let url = tool_calls_then_finish(&conv, vec![huge_index_delta()]).await;
    let proxy = proxy(&url).await;
    assert_proxy_handed_over(&proxy, &conv, "malformed").await;
    // Whole: the merge of the held tool calls is where memory once ran out.
    let body = serde_json::json!({"model": "chat", "messages": conv, "stream": false});
    let read = async {
        let response = proxy.chat(&body).await;
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.expect("a JSON completion")
    };
    let completion = tokio::time::timeout(HANG, read).await.expect("the proxy hung");
    let message = &completion["choices"][0]["message"];
    assert_eq!(message["content"], answer(&conv), "{completion}");
    assert!(message.get("tool_calls").is_none(), "{completion}");
    assert_eq!(
        completion["baton"]["route_chain"],
        serde_json::json!(["hostile", "fallback"])
    );
    // And the server goes on answering.
    assert_eq!(proxy.get("/healthz").await, "ok\n");
    let metrics = proxy.get("/metrics").await;
    let line = "baton_failures_total{route=\"hostile\",class=\"technical\",kind=\"malformed\"} 2";
    assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
}
