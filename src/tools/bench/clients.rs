//! The lean load client: raw HTTP/1.1 over tokio TCP, its SSE decoder and
//! what it reads from each chunk (a stamp, a finish, `[DONE]`); shared with
//! `baton soak`.

use super::*;

// ---------------------------------------------------------- client parsing

/// What one SSE `data:` payload was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Payload {
    /// `[DONE]`.
    Done,
    /// A content delta carrying this stamp.
    Stamp(u64),
    /// A content delta without a readable stamp.
    BadStamp,
    /// The finish chunk.
    Finish,
    /// An error object.
    Error,
    /// Anything else (usage chunk, role-only delta).
    Other,
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Classifies one `data:` payload without a JSON parse: the harness must cost
/// as little as possible, and the stamp is digits then `|` at the start of the content.
pub(super) fn classify(data: &[u8]) -> Payload {
    if data == b"[DONE]" {
        return Payload::Done;
    }
    const CONTENT: &[u8] = b"\"content\":\"";
    if let Some(i) = find(data, CONTENT) {
        let rest = &data[i + CONTENT.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 19 || rest.get(digits) != Some(&b'|') {
            return Payload::BadStamp;
        }
        let stamp = rest[..digits]
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        return Payload::Stamp(stamp);
    }
    if find(data, b"\"error\"").is_some() {
        return Payload::Error;
    }
    if find(data, b"\"finish_reason\":\"").is_some() {
        return Payload::Finish;
    }
    Payload::Other
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChunkState {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The zero chunk came: the body is over.
    End,
}

/// Incremental HTTP/1.1 body decoder (chunked or not) and SSE line splitter.
pub(crate) struct SseDecoder {
    pub(super) chunked: bool,
    pub(super) state: ChunkState,
    /// Raw bytes not yet de-chunked.
    pub(super) raw: Vec<u8>,
    /// Body bytes not yet split into lines.
    pub(super) body: Vec<u8>,
}

impl SseDecoder {
    pub(crate) fn new(chunked: bool) -> Self {
        SseDecoder {
            chunked,
            state: ChunkState::Size,
            raw: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Whether the chunked body has ended.
    pub(crate) fn ended(&self) -> bool {
        self.state == ChunkState::End
    }

    /// Feeds bytes from the socket; calls `on_data` with each `data:` payload.
    pub(crate) fn feed(&mut self, input: &[u8], mut on_data: impl FnMut(&[u8])) -> Result<(), String> {
        if self.chunked {
            self.dechunk(input)?;
        } else {
            self.body.extend_from_slice(input);
        }
        let mut start = 0;
        while let Some(i) = self.body[start..].iter().position(|b| *b == b'\n') {
            let mut line = &self.body[start..start + i];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if let Some(data) = line.strip_prefix(b"data:") {
                on_data(data.strip_prefix(b" ").unwrap_or(data));
            }
            start += i + 1;
        }
        self.body.drain(..start);
        Ok(())
    }

    pub(super) fn dechunk(&mut self, input: &[u8]) -> Result<(), String> {
        self.raw.extend_from_slice(input);
        let mut pos = 0;
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(i) = find(&self.raw[pos..], b"\r\n") else {
                        break;
                    };
                    let line = &self.raw[pos..pos + i];
                    let hex = line.split(|b| *b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
                        .ok_or_else(|| format!("bad chunk size line {:?}", String::from_utf8_lossy(line)))?;
                    pos += i + 2;
                    self.state = if size == 0 {
                        ChunkState::End
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let available = self.raw.len() - pos;
                    if available == 0 {
                        break;
                    }
                    let take = left.min(available);
                    self.body.extend_from_slice(&self.raw[pos..pos + take]);
                    pos += take;
                    self.state = if take == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataEnd => {
                    if self.raw.len() - pos < 2 {
                        break;
                    }
                    if &self.raw[pos..pos + 2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    pos += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::End => {
                    pos = self.raw.len();
                    break;
                }
            }
        }
        self.raw.drain(..pos);
        Ok(())
    }
}

// ----------------------------------------------------------------- sockets

pub(super) fn listen(addr: SocketAddr, nodelay: bool) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    if nodelay {
        socket.set_nodelay(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Connects from `source` (port chosen at connect time, by 4-tuple) to `target`.
pub(crate) async fn connect(source: Ipv4Addr, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    bind_address_no_port(&socket);
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// IP_BIND_ADDRESS_NO_PORT: without it, binding a source address picks the
/// port at bind time, unique per address, and TIME_WAIT can exhaust it.
#[cfg(target_os = "linux")]
pub(super) fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a pointer to a c_int that outlives the call.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn bind_address_no_port(_socket: &TcpSocket) {}

// -------------------------------------------------------------- the client

/// What every client of one run shares.
pub(super) struct Clients {
    pub(super) source: Ipv4Addr,
    pub(super) target: SocketAddr,
    pub(super) request: Vec<u8>,
    pub(super) chunks: u32,
    pub(super) idle: Duration,
    pub(super) gate: Semaphore,
    pub(super) latency: Histogram,
    /// The first chunk of each stream alone (it carries the response head through the proxy).
    pub(super) first: Histogram,
    pub(super) received: AtomicU64,
    pub(super) finished: AtomicUsize,
    pub(super) ok: AtomicUsize,
    pub(super) errors: AtomicUsize,
    pub(super) open: AtomicUsize,
    pub(super) peak_open: AtomicUsize,
    pub(super) last_done_us: AtomicU64,
    pub(super) samples: Mutex<Vec<String>>,
}

impl Clients {
    pub(super) fn new(source: Ipv4Addr, target: SocketAddr, options: &BenchOptions) -> Self {
        let body = r#"{"model":"bench","messages":[{"role":"user","content":"stream timestamps"}],"stream":true}"#;
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {target}\r\ncontent-type: application/json\r\naccept: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        Clients {
            source,
            target,
            request: request.into_bytes(),
            chunks: options.chunks,
            idle: options.idle_timeout,
            gate: Semaphore::new(options.connect_concurrency.max(1)),
            latency: Histogram::default(),
            first: Histogram::default(),
            received: AtomicU64::new(0),
            finished: AtomicUsize::new(0),
            ok: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            peak_open: AtomicUsize::new(0),
            last_done_us: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
        }
    }

    pub(super) async fn run_one(self: Arc<Self>) {
        let result = self.stream().await;
        self.last_done_us.fetch_max(now_us(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut samples) = self.samples.lock() {
                    if samples.len() < ERROR_SAMPLES && !samples.contains(&e) {
                        samples.push(e);
                    }
                }
            }
        }
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) async fn read(&self, socket: &mut TcpStream, buf: &mut [u8]) -> Result<usize, String> {
        read_idle(socket, buf, self.idle).await
    }

    pub(super) async fn stream(&self) -> Result<(), String> {
        let permit = self.gate.acquire().await.map_err(|e| e.to_string())?;
        let mut socket = connect(self.source, self.target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(open, Ordering::Relaxed);
        let result = self.exchange(&mut socket, permit).await;
        self.open.fetch_sub(1, Ordering::Relaxed);
        result
    }

    pub(super) async fn exchange(
        &self,
        socket: &mut TcpStream,
        permit: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<(), String> {
        socket
            .write_all(&self.request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        drop(permit);
        let mut buf = vec![0u8; 8 * 1024];
        let ResponseHead {
            status,
            chunked,
            body: mut pending,
        } = read_head(socket, &mut buf, self.idle).await?;
        if status != 200 {
            let body = String::from_utf8_lossy(&pending);
            let body: String = body.chars().take(160).collect();
            return Err(format!("HTTP {status}: {body}"));
        }
        let mut decoder = SseDecoder::new(chunked);
        let mut tally = Tally::default();
        loop {
            let now = now_us();
            decoder.feed(&pending, |data| {
                tally.see(classify(data), now, &self.latency, &self.first)
            })?;
            if tally.done || decoder.ended() {
                break;
            }
            let n = self.read(socket, &mut buf).await?;
            if n == 0 {
                break;
            }
            pending.clear();
            pending.extend_from_slice(&buf[..n]);
        }
        self.received.fetch_add(tally.chunks, Ordering::Relaxed);
        if tally.errors > 0 {
            return Err("an error event in the stream".into());
        }
        if tally.bad > 0 {
            return Err(format!("{} content deltas without a readable stamp", tally.bad));
        }
        if !tally.done {
            return Err(format!("no [DONE] after {} chunks", tally.chunks));
        }
        if tally.chunks != u64::from(self.chunks) {
            return Err(format!("{} chunks instead of {}", tally.chunks, self.chunks));
        }
        if !tally.finish {
            return Err("no finish_reason".into());
        }
        Ok(())
    }
}

/// One read from `socket`, or an error when no byte came for `idle`.
pub(crate) async fn read_idle(socket: &mut TcpStream, buf: &mut [u8], idle: Duration) -> Result<usize, String> {
    match tokio::time::timeout(idle, socket.read(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err(format!("no byte for {} s", idle.as_secs())),
    }
}

/// An HTTP/1.1 response head, as the lean client reads it.
pub(crate) struct ResponseHead {
    /// The status code.
    pub(crate) status: u16,
    /// Whether the body is chunked.
    pub(crate) chunked: bool,
    /// The body bytes that came with the head.
    pub(crate) body: Vec<u8>,
}

/// Reads the response head from `socket` (reads of up to `buf.len()`, each within `idle`).
pub(crate) async fn read_head(socket: &mut TcpStream, buf: &mut [u8], idle: Duration) -> Result<ResponseHead, String> {
    let mut head = Vec::new();
    loop {
        let n = read_idle(socket, buf, idle).await?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(len)) => {
                let chunked = response.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("transfer-encoding")
                        && String::from_utf8_lossy(h.value)
                            .to_ascii_lowercase()
                            .contains("chunked")
                });
                let status = response.code.unwrap_or(0);
                return Ok(ResponseHead {
                    status,
                    chunked,
                    body: head.split_off(len),
                });
            }
            Ok(httparse::Status::Partial) if head.len() < 64 * 1024 => {}
            Ok(httparse::Status::Partial) => return Err("response head too large".into()),
            Err(e) => return Err(format!("bad response head: {e}")),
        }
    }
}

/// One stream's counts.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) chunks: u64,
    pub(super) bad: u64,
    pub(super) errors: u64,
    pub(super) finish: bool,
    pub(super) done: bool,
}

impl Tally {
    pub(super) fn see(&mut self, payload: Payload, now: u64, latency: &Histogram, first: &Histogram) {
        match payload {
            Payload::Stamp(stamp) => {
                self.chunks += 1;
                latency.record(now.saturating_sub(stamp));
                if self.chunks == 1 {
                    first.record(now.saturating_sub(stamp));
                }
            }
            Payload::BadStamp => self.bad += 1,
            Payload::Error => self.errors += 1,
            Payload::Finish => self.finish = true,
            Payload::Done => self.done = true,
            Payload::Other => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_from_either_chunk_shape() {
        let upstream = upstream::content_chunk(true, 123_456);
        assert_eq!(classify(upstream.as_bytes()), Payload::Stamp(123_456));
        let proxied =
            br#"{"choices":[{"delta":{"content":"987|","role":"assistant"},"finish_reason":null,"index":0}],"id":"x"}"#;
        assert_eq!(classify(proxied), Payload::Stamp(987));
        assert_eq!(
            classify(br#"{"choices":[{"delta":{"content":"hello"}}]}"#),
            Payload::BadStamp
        );
        assert_eq!(
            classify(br#"{"choices":[{"delta":{"content":"12"}}]}"#),
            Payload::BadStamp
        );
        assert_eq!(
            classify(br#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#),
            Payload::Finish
        );
        assert_eq!(classify(br#"{"error":{"message":"no"}}"#), Payload::Error);
        assert_eq!(classify(b"[DONE]"), Payload::Done);
        assert_eq!(classify(br#"{"choices":[],"usage":{}}"#), Payload::Other);
    }

    #[test]
    fn the_decoder_handles_chunks_split_anywhere() {
        let mut wire = Vec::new();
        upstream::push_event(&mut wire, &upstream::content_chunk(true, 1));
        upstream::push_event(&mut wire, &upstream::content_chunk(false, 22));
        upstream::push_event(&mut wire, "[DONE]");
        wire.extend_from_slice(b"0\r\n\r\n");
        for step in [1, 2, 3, 7, 64, wire.len()] {
            let mut decoder = SseDecoder::new(true);
            let mut seen = Vec::new();
            for piece in wire.chunks(step) {
                decoder.feed(piece, |d| seen.push(classify(d))).expect("valid");
            }
            assert_eq!(
                seen,
                vec![Payload::Stamp(1), Payload::Stamp(22), Payload::Done],
                "step {step}"
            );
            assert!(decoder.ended());
        }
        let mut plain = SseDecoder::new(false);
        let mut seen = Vec::new();
        plain
            .feed(b"data: [DONE]\r\n\r\n: comment\n", |d| seen.push(classify(d)))
            .expect("valid");
        assert_eq!(seen, vec![Payload::Done]);
        assert!(SseDecoder::new(true).feed(b"zz\r\n", |_| {}).is_err());
    }
}
