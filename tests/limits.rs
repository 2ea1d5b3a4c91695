//! Server limits of `baton serve` over loopback HTTP: slow and vanishing
//! clients as raw sockets speaking HTTP/1.1 by hand, the session cap, the
//! header read, keep-alive and write-stall timeouts, and a panic inside one
//! session. Each test checks the classified outcome, that the server still
//! serves a normal request afterwards, and that `baton_live_sessions` and
//! `baton_upstream_connections_open` come back to zero.
//!
//! Those two gauges count the whole process, so the tests here run one at a
//! time (`SERIAL`). Waits are generous deadlines polled, never fixed sleeps,
//! except the slow readers' deliberate pauses, which are many times the
//! deadline they must not trip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use baton::oracle::{answer, SplitMix};
use baton::{Message, Role};
use serde_json::{json, Value};
use support::{finish, scripted, text, End, Reply, Serve, Served, Sse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long any wait for the server may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A route `name` on the in-process oracle with `settings` (its fault and
/// deadlines), and a ladder `name` of that route alone.
fn mock_ladder(name: &str, settings: &str) -> String {
    format!(
        r#"
        [[route]]
        name = "{name}"
        provider = "mock"
        model = "oracle"
        {settings}
        [[ladder]]
        name = "{name}"
        routes = ["{name}"]
        "#
    )
}

/// `[server]` settings `server`, the `ok` ladder (a healthy in-process oracle), then `more`.
fn config(server: &str, more: &str) -> String {
    format!("[server]\n{server}\n{}\n{more}", mock_ladder("ok", ""))
}

/// `baton serve` of [`config`]`(server, more)`.
async fn start(server: &str, more: &str) -> Served {
    Serve::new(&config(server, more)).start().await
}

fn conversation(tag: &str) -> Vec<Message> {
    vec![Message::new(Role::User, format!("limits {tag}"))]
}

fn chat(model: &str, tag: &str, stream: bool) -> Value {
    json!({"model": model, "messages": conversation(tag), "stream": stream})
}

/// The value of the sample written exactly as `sample` (name and labels).
fn sample(metrics: &str, sample: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Asserts that `/metrics` now shows every `(sample, value)`; the metrics text.
async fn assert_samples(proxy: &Served, want: &[(&str, f64)]) -> String {
    let text = proxy.get("/metrics").await;
    for (name, value) in want {
        assert_eq!(sample(&text, name), Some(*value), "{name} in\n{text}");
    }
    text
}

/// Polls `/metrics` until every `(sample, value)` holds.
async fn wait_for(proxy: &Served, want: &[(&str, f64)]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = proxy.get("/metrics").await;
        if want.iter().all(|(name, value)| sample(&text, name) == Some(*value)) {
            return;
        }
        assert!(Instant::now() < deadline, "waited {PATIENCE:?} for {want:?} in\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything per session is freed: no live session, no open upstream.
async fn settled(proxy: &Served) {
    wait_for(
        proxy,
        &[("baton_live_sessions", 0.0), ("baton_upstream_connections_open", 0.0)],
    )
    .await;
}

/// The server still streams a whole answer, byte for byte.
async fn still_serves(proxy: &Served) {
    let response = reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat("ok", "afterwards", true))
        .send()
        .await
        .expect("a normal request");
    assert_eq!(response.status(), 200);
    let sse = Sse::parse(&response.text().await.expect("body"));
    assert_eq!(sse.text(), answer(&conversation("afterwards")));
    assert!(sse.done());
}

/// The server still streams a whole answer, and then holds nothing per session.
async fn recovers(proxy: &Served) {
    still_serves(proxy).await;
    settled(proxy).await;
}

/// Once `raw`'s session is live and holds its upstream (and `also` holds),
/// the client vanishes; then everything per session is freed.
async fn vanish(proxy: &Served, raw: Raw, also: &[(&str, f64)]) {
    let mut held = vec![("baton_live_sessions", 1.0), ("baton_upstream_connections_open", 1.0)];
    held.extend_from_slice(also);
    wait_for(proxy, &held).await;
    drop(raw);
    settled(proxy).await;
}

/// A response head.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One piece of a chunked body.
enum Piece {
    Data(Vec<u8>),
    /// The terminating chunk: the body ended properly.
    End,
    /// The connection closed inside the body.
    Closed,
}

/// A client speaking HTTP/1.1 by hand over one socket.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    /// A client with a small receive buffer, so that not reading soon stops the server's writes.
    async fn connect_small(addr: SocketAddr) -> Raw {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("receive buffer");
        Raw {
            stream: socket.connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn post(&mut self, body: &Value) {
        let body = body.to_string();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        self.send(head.as_bytes()).await;
        self.send(body.as_bytes()).await;
    }

    /// Reads more; `false` once the connection is closed.
    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        match timeout(PATIENCE * 2, self.stream.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(_) => panic!("nothing from the proxy for {:?}", PATIENCE * 2),
        }
    }

    /// The next `n` bytes, or `None` if the connection closes first.
    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// The next line without its CRLF, or `None` if the connection closes first.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn head(&mut self) -> Head {
        let status_line = self.line().await.expect("a status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await.expect("a header line");
            if line.is_empty() {
                return Head { status, headers };
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
    }

    /// The next piece of a chunked body.
    async fn piece(&mut self) -> Piece {
        let Some(size_line) = self.line().await else {
            return Piece::Closed;
        };
        let size =
            usize::from_str_radix(size_line.trim(), 16).unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
        let Some(mut data) = self.take(size + 2).await else {
            return Piece::Closed;
        };
        data.truncate(size);
        if size == 0 {
            Piece::End
        } else {
            Piece::Data(data)
        }
    }

    /// The rest of a chunked body; `true` if it ended properly.
    async fn rest(&mut self, body: &mut Vec<u8>) -> bool {
        loop {
            match self.piece().await {
                Piece::Data(data) => body.extend_from_slice(&data),
                Piece::End => return true,
                Piece::Closed => return false,
            }
        }
    }

    /// A whole response: its head and body (chunked or with a length).
    async fn response(&mut self) -> (Head, Vec<u8>) {
        let head = self.head().await;
        let mut body = Vec::new();
        if let Some(len) = head.header("content-length").and_then(|v| v.parse().ok()) {
            body = self.take(len).await.expect("the whole body");
        } else {
            assert!(self.rest(&mut body).await, "the body ended early");
        }
        (head, body)
    }

    /// Whether the server closes the connection within [`PATIENCE`] (what it sends meanwhile is dropped).
    async fn closed_by_server(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        let deadline = Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

/// Reads a streamed response's head and body pieces until the body holds some answer text.
async fn read_until_text(raw: &mut Raw) -> Vec<u8> {
    let head = raw.head().await;
    assert_eq!(head.status, 200);
    let mut body = Vec::new();
    while !String::from_utf8_lossy(&body).contains("\"content\"") {
        match raw.piece().await {
            Piece::Data(data) => body.extend_from_slice(&data),
            _ => panic!("the stream ended before any text: {}", String::from_utf8_lossy(&body)),
        }
    }
    body
}

#[tokio::test]
async fn clients_vanishing_before_their_request_is_complete_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let proxy = start("", "").await;
    // Gone without a byte; gone mid request line; gone mid headers; gone mid body.
    let partial: [&[u8]; 4] = [
        b"",
        b"POST /v1/chat/compl",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-ty",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"model\":\"ok\",",
    ];
    for bytes in partial {
        let mut raw = Raw::connect(proxy.addr).await;
        raw.send(bytes).await;
        drop(raw);
    }
    recovers(&proxy).await;
    let text = assert_samples(
        &proxy,
        &[(
            "baton_sessions_total{ladder=\"ok\",outcome=\"complete\",door=\"chat_completions\"}",
            1.0,
        )],
    )
    .await;
    assert!(
        !text.contains("outcome=\"cancelled\""),
        "no session began for them:\n{text}"
    );
}

#[tokio::test]
async fn a_client_vanishing_while_waiting_for_the_first_token_cancels_the_upstream() {
    let _serial = SERIAL.lock().await;
    let proxy = start("", &mock_ladder("slow", "fault = \"slow:600000\"\nttft_ms = 600000")).await;
    // Streamed and whole answers both wait for the first token inside the request handler.
    for (i, stream) in [true, false].into_iter().enumerate() {
        let mut raw = Raw::connect(proxy.addr).await;
        raw.post(&chat("slow", "first token", stream)).await;
        vanish(&proxy, raw, &[]).await;
        let cancelled = sample(
            &proxy.get("/metrics").await,
            "baton_sessions_total{ladder=\"slow\",outcome=\"cancelled\",door=\"chat_completions\"}",
        );
        assert_eq!(cancelled, Some(i as f64 + 1.0), "stream: {stream}");
    }
    recovers(&proxy).await;
}

#[tokio::test]
async fn a_client_vanishing_mid_stream_cancels_the_upstream() {
    let _serial = SERIAL.lock().await;
    let proxy = start("", &mock_ladder("stalls", "fault = \"stall@5\"\nstall_ms = 600000")).await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.post(&chat("stalls", "mid-stream", true)).await;
    let seen = read_until_text(&mut raw).await;
    assert!(answer(&conversation("mid-stream")).starts_with(&Sse::parse(&String::from_utf8_lossy(&seen)).text()));
    vanish(&proxy, raw, &[("baton_active_streams", 1.0)]).await;
    wait_for(
        &proxy,
        &[
            ("baton_active_streams", 0.0),
            (
                "baton_sessions_total{ladder=\"stalls\",outcome=\"cancelled\",door=\"chat_completions\"}",
                1.0,
            ),
        ],
    )
    .await;
    recovers(&proxy).await;
}

#[tokio::test]
async fn a_client_vanishing_during_a_handover_cancels_the_fallback() {
    let _serial = SERIAL.lock().await;
    let proxy = start(
        "",
        r#"
        [[route]]
        name = "primary"
        provider = "mock"
        model = "oracle"
        fault = "stall@5"
        stall_ms = 300
        [[route]]
        name = "fallback"
        provider = "mock"
        model = "oracle"
        fault = "slow:600000"
        ttft_ms = 600000
        [[ladder]]
        name = "handover"
        routes = ["primary", "fallback"]
        "#,
    )
    .await;
    let mut feed = reqwest::get(proxy.url("/events")).await.expect("events");
    let mut raw = Raw::connect(proxy.addr).await;
    raw.post(&chat("handover", "handover", true)).await;
    read_until_text(&mut raw).await;
    // The primary stalled and the fallback was opened: the handover is under way.
    let mut seen = String::new();
    let fallback_opened = async {
        while let Ok(Some(bytes)) = feed.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&bytes));
            let opened = Sse::parse(&seen).data.iter().any(|d| {
                serde_json::from_str::<Value>(d)
                    .is_ok_and(|e| e["event"] == "attempt_opened" && e["route"] == "fallback")
            });
            if opened {
                return;
            }
        }
    };
    timeout(PATIENCE, fallback_opened)
        .await
        .expect("the fallback attempt opens");
    vanish(&proxy, raw, &[]).await;
    wait_for(
        &proxy,
        &[(
            "baton_sessions_total{ladder=\"handover\",outcome=\"cancelled\",door=\"chat_completions\"}",
            1.0,
        )],
    )
    .await;
    recovers(&proxy).await;
}

/// About 1 kB of random words: no period the loop guard could take for a loop.
fn prose(rng: &mut SplitMix) -> String {
    let mut out = String::new();
    while out.len() < 1000 {
        let len = 2 + rng.below(9);
        out.extend((0..len).map(|_| char::from(b'a' + rng.below(26) as u8)));
        out.push(' ');
    }
    out
}

/// A fast upstream with a long answer (about 2 MB): far more than the socket
/// buffers between baton and a small-buffered client, so a client that stops
/// reading soon stops baton's pump. Returns the upstream and the answer.
async fn big_upstream() -> (support::Scripted, String) {
    let mut rng = SplitMix::new(7);
    let pieces: Vec<String> = (0..2000).map(|_| prose(&mut rng)).collect();
    let mut data: Vec<String> = pieces.iter().map(|p| text("big", p)).collect();
    data.push(finish("big", "stop"));
    let upstream = scripted(vec![Reply { data, end: End::Done }]).await;
    (upstream, pieces.concat())
}

/// A route `big` on `upstream` (stall deadline 500 ms) with an in-process fallback.
fn big_config(server: &str, upstream: &support::Scripted) -> String {
    config(
        server,
        &format!(
            r#"
            [[route]]
            name = "big"
            provider = "openai"
            base_url = "{}"
            model = "big"
            stall_ms = 500
            [[route]]
            name = "fallback"
            provider = "mock"
            model = "oracle"
            [[ladder]]
            name = "big"
            routes = ["big", "fallback"]
            "#,
            upstream.base_url()
        ),
    )
}

/// A proxy whose accepted sockets have a small send buffer (inherited from the listener).
async fn start_small(toml: &str) -> Served {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(16 * 1024).expect("send buffer");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    Serve::new(toml)
        .listener(socket.listen(1024).expect("listen"))
        .start()
        .await
}

/// A small-buffered proxy of [`big_config`]`(server, …)`, and a
/// small-buffered client that has sent it a streamed request tagged `tag`
/// for [`big_upstream`]'s answer; that whole answer too. (The upstream's
/// server task outlives its handle.)
async fn big_stream(server: &str, tag: &str) -> (Served, Raw, String) {
    let (upstream, expected) = big_upstream().await;
    let proxy = start_small(&big_config(server, &upstream)).await;
    let mut raw = Raw::connect_small(proxy.addr).await;
    raw.post(&chat("big", tag, true)).await;
    (proxy, raw, expected)
}

#[tokio::test]
async fn a_client_pausing_longer_than_the_stall_deadline_still_gets_every_byte() {
    let _serial = SERIAL.lock().await;
    let (proxy, mut raw, expected) = big_stream("slow_client_timeout_ms = 60000", "pause").await;
    let head = raw.head().await;
    assert_eq!(head.status, 200);
    let mut body = Vec::new();
    while body.len() < 64 * 1024 {
        match raw.piece().await {
            Piece::Data(data) => body.extend_from_slice(&data),
            _ => panic!("the stream ended early"),
        }
    }
    // Stop reading for six stall deadlines. With 2 MB left and ~100 kB of
    // buffers between baton and this socket, baton's pump is held by the
    // client meanwhile; that wait is baton's own backpressure, not a stall.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(raw.rest(&mut body).await, "the body ends properly");
    let sse = Sse::parse(&String::from_utf8(body).expect("utf-8"));
    assert!(
        !sse.comments.iter().any(|c| c.contains("baton handover")),
        "no handover: {:?}",
        sse.comments
    );
    assert!(sse.text() == expected, "the answer arrived byte for byte");
    assert!(sse.done());
    settled(&proxy).await;
    assert_samples(
        &proxy,
        &[
            ("baton_slow_clients_total", 0.0),
            (
                "baton_sessions_total{ladder=\"big\",outcome=\"complete\",door=\"chat_completions\"}",
                1.0,
            ),
        ],
    )
    .await;
    still_serves(&proxy).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_gets_an_error_event_and_its_session_is_freed() {
    let _serial = SERIAL.lock().await;
    let (proxy, mut raw, expected) = big_stream("slow_client_timeout_ms = 300", "stops reading").await;
    let head = raw.head().await;
    assert_eq!(head.status, 200);
    // Not reading now: the pump fills the buffer, waits, and gives up.
    wait_for(
        &proxy,
        &[
            ("baton_slow_clients_total", 1.0),
            (
                "baton_sessions_total{ladder=\"big\",outcome=\"slow_client\",door=\"chat_completions\"}",
                1.0,
            ),
            ("baton_live_sessions", 0.0),
            ("baton_upstream_connections_open", 0.0),
        ],
    )
    .await;
    // Reading again: what was already on its way, then the error event, then a proper end.
    let mut body = Vec::new();
    assert!(raw.rest(&mut body).await, "the body ends properly");
    let sse = Sse::parse(&String::from_utf8(body).expect("utf-8"));
    assert_eq!(sse.last_json()["error"]["code"], "slow_client");
    assert!(!sse.done());
    let got = sse.text();
    assert!(
        got.len() < expected.len() && expected.starts_with(&got),
        "a clean prefix"
    );
    recovers(&proxy).await;
}

#[tokio::test]
async fn a_connection_that_accepts_nothing_is_closed_after_the_write_stall_timeout() {
    let _serial = SERIAL.lock().await;
    let (proxy, mut raw, _) = big_stream(
        "slow_client_timeout_ms = 600000\nwrite_stall_timeout_ms = 300",
        "accepts nothing",
    )
    .await;
    wait_for(
        &proxy,
        &[
            ("baton_connections_closed_total{reason=\"write_stall\"}", 1.0),
            (
                "baton_sessions_total{ladder=\"big\",outcome=\"cancelled\",door=\"chat_completions\"}",
                1.0,
            ),
            ("baton_live_sessions", 0.0),
            ("baton_upstream_connections_open", 0.0),
        ],
    )
    .await;
    let head = raw.head().await;
    assert_eq!(head.status, 200);
    let mut body = Vec::new();
    assert!(!raw.rest(&mut body).await, "the body was cut with the connection");
    recovers(&proxy).await;
}

#[tokio::test]
async fn past_the_session_cap_a_request_gets_503_with_retry_after() {
    let _serial = SERIAL.lock().await;
    let proxy = start(
        "max_sessions = 2",
        &mock_ladder("stalls", "fault = \"stall@3\"\nstall_ms = 600000"),
    )
    .await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut raw = Raw::connect(proxy.addr).await;
        raw.post(&chat("stalls", &format!("held {i}"), true)).await;
        read_until_text(&mut raw).await;
        held.push(raw);
    }
    wait_for(&proxy, &[("baton_live_sessions", 2.0)]).await;
    let refused = reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat("ok", "third", true))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let error: Value = refused.json().await.expect("json");
    assert_eq!(error["error"]["code"], "server_overloaded");
    assert_eq!(error["error"]["type"], "server_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 concurrent sessions")),
        "{error}"
    );
    // A freed slot is usable at once.
    drop(held.pop());
    wait_for(&proxy, &[("baton_live_sessions", 1.0)]).await;
    still_serves(&proxy).await;
    drop(held);
    settled(&proxy).await;
    assert_samples(
        &proxy,
        &[("baton_rejected_requests_total{code=\"server_overloaded\"}", 1.0)],
    )
    .await;
}

#[tokio::test]
async fn a_client_that_sends_half_a_request_and_goes_quiet_is_disconnected() {
    let _serial = SERIAL.lock().await;
    let proxy = start("header_read_timeout_ms = 500", "").await;
    let mut half_line = Raw::connect(proxy.addr).await;
    half_line.send(b"POST /v1/chat/completions HT").await;
    let mut silent = Raw::connect(proxy.addr).await;
    assert!(half_line.closed_by_server().await, "half a request line: disconnected");
    assert!(silent.closed_by_server().await, "nothing at all: disconnected");
    wait_for(
        &proxy,
        &[("baton_connections_closed_total{reason=\"header_timeout\"}", 2.0)],
    )
    .await;
    // A head without its whole body: the body has the same limit, and a 408.
    let mut no_body = Raw::connect(proxy.addr).await;
    no_body
        .send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\"")
        .await;
    let (head, body) = no_body.response().await;
    assert_eq!(head.status, 408);
    let error: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(error["error"]["code"], "request_timeout");
    recovers(&proxy).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let proxy = start("keep_alive_timeout_ms = 300", "").await;
    let mut raw = Raw::connect(proxy.addr).await;
    // Two requests on one connection: keep-alive works…
    for _ in 0..2 {
        raw.send(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await;
        let (head, body) = raw.response().await;
        assert_eq!((head.status, body.as_slice()), (200, b"ok\n".as_slice()));
    }
    // …and then idleness ends it.
    assert!(raw.closed_by_server().await, "the idle connection was closed");
    wait_for(&proxy, &[("baton_connections_closed_total{reason=\"idle\"}", 1.0)]).await;
    recovers(&proxy).await;
}

#[tokio::test]
async fn a_panic_inside_a_session_is_that_clients_error_only() {
    let _serial = SERIAL.lock().await;
    let panics = mock_ladder("late", "fault = \"panic@3\"") + &mock_ladder("early", "fault = \"panic@0\"");
    let proxy = start("", &panics).await;
    let client = reqwest::Client::new();
    let post = |body: Value| client.post(proxy.url("/v1/chat/completions")).json(&body).send();

    // After text was sent: the stream ends with an error event, never [DONE].
    let late = post(chat("late", "panic late", true)).await.expect("request");
    assert_eq!(late.status(), 200);
    let sse = Sse::parse(&late.text().await.expect("body"));
    assert!(!sse.text().is_empty() && answer(&conversation("panic late")).starts_with(&sse.text()));
    assert_eq!(sse.last_json()["error"]["code"], "internal_error");
    assert!(!sse.done());
    wait_for(&proxy, &[("baton_session_panics_total", 1.0)]).await;

    // Before any text: a 500 with an OpenAI-style error.
    let early = post(chat("early", "panic early", true)).await.expect("request");
    assert_eq!(early.status(), 500);
    let error: Value = early.json().await.expect("json");
    assert_eq!(error["error"]["code"], "internal_error");
    assert_eq!(error["error"]["type"], "server_error");
    wait_for(
        &proxy,
        &[
            ("baton_session_panics_total", 2.0),
            (
                "baton_sessions_total{ladder=\"late\",outcome=\"panicked\",door=\"chat_completions\"}",
                1.0,
            ),
            (
                "baton_sessions_total{ladder=\"early\",outcome=\"panicked\",door=\"chat_completions\"}",
                1.0,
            ),
        ],
    )
    .await;
    recovers(&proxy).await;
}

/// A `baton serve` child process: its address, and its stderr lines as they come.
struct Child {
    child: std::process::Child,
    addr: SocketAddr,
    stderr: std::sync::mpsc::Receiver<String>,
    _config: TempConfig,
}

/// A config file that is removed with it.
struct TempConfig(std::path::PathBuf);

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Child {
    /// Starts `baton serve` on `toml` (which must listen on 127.0.0.1:0) and waits for its address.
    fn start(toml: &str, tag: &str) -> Child {
        use std::io::BufRead;
        let path = std::env::temp_dir().join(format!("baton-limits-{}-{tag}.toml", std::process::id()));
        std::fs::write(&path, toml).expect("write the config");
        let config = TempConfig(path);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--config"])
            .arg(&config.0)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start baton serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the address");
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split("/v1").next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let (lines, stderr) = std::sync::mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        Child {
            child,
            addr,
            stderr,
            _config: config,
        }
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
    }

    /// Waits for a stderr line containing `text`.
    fn stderr_says(&self, text: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(e) => panic!("no stderr line with {text:?} within {PATIENCE:?}: {e}"),
            }
        }
    }

    /// Waits up to `limit` for the process to exit: its status.
    async fn exits_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(started.elapsed() < limit, "still running {limit:?} after the signal");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An upstream that reads each request, reports it on the channel, and then never answers.
async fn silent_upstream() -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let url = support::raw_upstream(move |mut socket, _, _| {
        let arrived = arrived.clone();
        async move {
            let _ = arrived.send(());
            let mut sink = [0u8; 1024];
            while matches!(socket.read(&mut sink).await, Ok(k) if k > 0) {}
        }
    })
    .await;
    (url, arrivals)
}

/// A server on 127.0.0.1:0 with `server` settings, whose one ladder `chat`
/// goes to `upstream` with deadlines far beyond any test.
fn patient_config(server: &str, upstream: &str) -> String {
    format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        {server}
        [[route]]
        name = "silent"
        provider = "openai"
        base_url = "{upstream}"
        model = "m"
        ttft_ms = 600000
        stall_ms = 600000
        total_ms = 600000
        [[ladder]]
        name = "chat"
        routes = ["silent"]
        "#
    )
}

/// Sends `body` to `addr` in the background; the status, `Retry-After` and body it got.
fn send_chat(addr: SocketAddr, body: Value) -> tokio::task::JoinHandle<(u16, Option<String>, String)> {
    tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("an answer");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, retry_after, response.text().await.unwrap_or_default())
    })
}

#[tokio::test]
async fn at_shutdown_requests_still_waiting_end_by_the_grace_with_a_503() {
    let (upstream, mut arrivals) = silent_upstream().await;
    let mut server = Child::start(&patient_config("shutdown_grace_ms = 500", &upstream), "grace");
    // One request waits for a whole answer, one for a stream's first token.
    let whole = send_chat(server.addr, chat("chat", "whole", false));
    let streamed = send_chat(server.addr, chat("chat", "streamed", true));
    for _ in 0..2 {
        timeout(PATIENCE, arrivals.recv())
            .await
            .expect("both requests upstream");
    }
    // Timed from before the signal, so the lower bound holds however the
    // signal and the measurement interleave.
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    // The grace, the last words, and a margin for a loaded machine.
    let status = server.exits_within(Duration::from_millis(500) + PATIENCE).await;
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(500),
        "exited after {took:?}, before the grace was over"
    );
    for (what, answer) in [("whole", whole), ("streamed", streamed)] {
        let (status, retry_after, body) = timeout(PATIENCE, answer).await.expect("answered").expect("task");
        assert_eq!(status, 503, "{what}: {body}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{what}");
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {body}: {e}"));
        assert_eq!(body["error"]["code"], "server_shutdown", "{what}: {body}");
    }
}

#[tokio::test]
async fn a_second_signal_during_the_grace_exits_at_once() {
    for (first, second, code) in [(libc::SIGTERM, libc::SIGTERM, 143), (libc::SIGTERM, libc::SIGINT, 130)] {
        let (upstream, mut arrivals) = silent_upstream().await;
        let mut server = Child::start(&patient_config("shutdown_grace_ms = 600000", &upstream), "second");
        let _waiting = send_chat(server.addr, chat("chat", "second", false));
        timeout(PATIENCE, arrivals.recv()).await.expect("the request upstream");
        server.signal(first);
        server.stderr_says("shutting down");
        server.signal(second);
        let status = server.exits_within(PATIENCE).await;
        assert_eq!(status.code(), Some(code), "{status:?}");
    }
}

/// Asserts that `body` is an OpenAI-style error with `code`.
fn assert_api_error(body: &[u8], code: &str) {
    let text = String::from_utf8_lossy(body);
    let error: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    assert_eq!(error["error"]["code"], code, "{text}");
    assert!(error["error"]["type"].is_string(), "{text}");
    assert!(
        error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let _serial = SERIAL.lock().await;
    let toml = config("api_key_env = \"LIMITS_KEY\"", "");
    let proxy = Serve::new(&toml).env("LIMITS_KEY", "s3cret").start().await;
    let client = reqwest::Client::new();
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let response = client
            .post(proxy.url("/v1/chat/completions"))
            .header("authorization", format!("{scheme} s3cret"))
            .json(&chat("ok", scheme, false))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{scheme}");
    }
    let wrong = client
        .post(proxy.url("/v1/chat/completions"))
        .header("authorization", "basic s3cret")
        .json(&chat("ok", "basic", false))
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), 401);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_gets_413_at_once() {
    let _serial = SERIAL.lock().await;
    // A header read timeout longer than any wait here: a 408 cannot come in time.
    let proxy = start("max_body_bytes = 1024\nheader_read_timeout_ms = 600000", "").await;
    let mut raw = Raw::connect(proxy.addr).await;
    raw.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 1048576\r\n\r\n")
        .await;
    let (head, body) = raw.response().await;
    assert_eq!(head.status, 413);
    assert_api_error(&body, "request_too_large");
    recovers(&proxy).await;
}

#[tokio::test]
async fn a_wrong_method_gets_a_json_405() {
    let _serial = SERIAL.lock().await;
    let proxy = start("", "").await;
    let response = reqwest::get(proxy.url("/v1/chat/completions")).await.expect("request");
    assert_eq!(response.status(), 405);
    assert_api_error(&response.bytes().await.expect("body"), "method_not_allowed");
}

#[tokio::test]
async fn a_head_with_too_many_headers_gets_a_json_431() {
    let _serial = SERIAL.lock().await;
    let proxy = start("", "").await;
    let mut raw = Raw::connect(proxy.addr).await;
    // A good request first: the bad one comes on a connection that already had an answer.
    raw.send(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await;
    let (ok, body) = raw.response().await;
    assert_eq!((ok.status, &body[..]), (200, &b"ok\n"[..]));
    let mut head = String::from("GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n");
    for i in 0..200 {
        head.push_str(&format!("x-filler-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    raw.send(head.as_bytes()).await;
    let (head, body) = raw.response().await;
    assert_eq!(head.status, 431);
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_api_error(&body, "request_header_fields_too_large");
    recovers(&proxy).await;
}

#[tokio::test]
async fn at_the_connection_cap_a_new_client_gets_503_and_idle_connections_are_closed() {
    let _serial = SERIAL.lock().await;
    let proxy = start(
        "max_connections = 4",
        &mock_ladder("stalls", "fault = \"stall@3\"\nstall_ms = 600000"),
    )
    .await;
    let mut busy = Raw::connect(proxy.addr).await;
    busy.post(&chat("stalls", "busy", true)).await;
    read_until_text(&mut busy).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut raw = Raw::connect(proxy.addr).await;
        raw.send(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await;
        let (head, _) = raw.response().await;
        assert_eq!(head.status, 200);
        idle.push(raw);
    }
    // Four open: the fifth is answered at once, before its request is read.
    let mut newcomer = Raw::connect(proxy.addr).await;
    newcomer.send(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await;
    let (head, body) = newcomer.response().await;
    assert_eq!(head.status, 503);
    assert_eq!(head.header("retry-after"), Some("1"));
    assert_api_error(&body, "too_many_connections");
    assert!(newcomer.closed_by_server().await);
    for (i, raw) in idle.iter_mut().enumerate() {
        assert!(raw.closed_by_server().await, "idle connection {i} still open");
    }
    // The busy stream was left alone, and there is room again.
    assert_samples(
        &proxy,
        &[
            ("baton_live_sessions", 1.0),
            ("baton_connections_closed_total{reason=\"shed_idle\"}", 3.0),
            ("baton_connections_closed_total{reason=\"over_capacity\"}", 1.0),
        ],
    )
    .await;
    drop(busy);
    recovers(&proxy).await;
}

#[tokio::test]
async fn baton_serve_queues_a_burst_of_connections_it_has_not_accepted_yet() {
    let upstream = "http://127.0.0.1:9/v1";
    let mut server = Child::start(&patient_config("", upstream), "backlog");
    // Stopped, the server accepts nothing: the kernel's queue holds every connection.
    server.signal(libc::SIGSTOP);
    let mut burst = Vec::new();
    for _ in 0..600 {
        let addr = server.addr;
        burst.push(tokio::spawn(async move {
            timeout(PATIENCE, TcpStream::connect(addr)).await
        }));
    }
    let mut connected = Vec::new();
    let mut failed = 0;
    for handle in burst {
        match handle.await.expect("task") {
            Ok(Ok(stream)) => connected.push(stream),
            _ => failed += 1,
        }
    }
    server.signal(libc::SIGCONT);
    assert_eq!(failed, 0, "{failed} of 600 connections were not queued");
    drop(connected);
    server.signal(libc::SIGTERM);
    let status = server.exits_within(PATIENCE).await;
    assert!(status.success(), "{status:?}");
}
