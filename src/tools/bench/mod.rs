//! `baton bench`: streaming throughput, added latency and the proxy's own
//! cost, directly against an upstream and through a `baton serve` child.
//!
//! For each stream count N the bench starts a small stamped SSE upstream (raw
//! tokio TCP, HTTP/1.1, chunked), and N concurrent clients (a lean raw HTTP/1.1
//! client, so the harness spends as little of the two cores as it can) stream
//! from it **directly**, then the same N clients stream through a fresh
//! `baton serve` child of this executable whose one route points at a fresh
//! upstream. Load client and upstream stay in this process, so the proxy's
//! figures (read from `/proc/<pid>/{stat,io,status}` of the child) are its own.
//!
//! Every content delta the upstream sends is a timestamp: microseconds since a
//! process-wide epoch, then `|`. The proxy rewrites the chunk JSON but passes
//! the text through, so the client parses the stamp from each delta and the
//! latency of that chunk is its receive time minus its stamp. The added latency
//! of the proxy is the proxied percentile minus the direct one.
//!
//! Pacing: the upstream holds every stream until all N requests have arrived
//! (so N streams really are open at once), then sends `chunks` deltas per
//! stream, one every `interval`. Streams are spread evenly over the interval
//! in 100 µs slots by a pacer thread, so the load is smooth instead of N chunks
//! landing on the same millisecond tick (tokio's timer resolution).
//!
//! The proxy's cost: its CPU time (`utime + stime`) and its read- and
//! write-like syscalls (`syscr + syscw`) from the request ramp to the last
//! stream's end, divided by the chunks the clients received; its memory is
//! the peak `VmRSS` during the run (sampled every 10 ms, and `VmHWM` after a
//! reset) minus its idle `VmRSS` just after start, divided by N. The bench
//! process's own CPU and memory are reported too, as the harness's.

use std::fmt;
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};

use self::proc::{status_kib_of, Child, Counters, RssSampler};

pub(crate) mod proc;

/// The listen backlog asked for (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 16 * 1024;
/// The RLIMIT_NOFILE the bench asks for.
const WANTED_FDS: u64 = 200_000;
/// Pacing slot: streams are spread over the interval in slots this long.
const SLOT: Duration = Duration::from_micros(100);
/// How long the bench waits for all N requests to reach the upstream.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the ramp may make no progress before the streams start anyway.
const RAMP_STALL: Duration = Duration::from_secs(5);
/// Error messages kept per run.
const ERROR_SAMPLES: usize = 5;

/// Loopback addresses (all of 127/8 is local on Linux): each hop and role has
/// its own, so connections of different runs never compete for a 4-tuple.
const MOCK_DIRECT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const MOCK_PROXIED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const PROXY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const CLIENT_DIRECT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const CLIENT_PROXIED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchOptions {
    /// Stream counts, one run each (direct, then proxied).
    pub sizes: Vec<usize>,
    /// Which runs to do for each size (both by default).
    pub modes: Vec<Mode>,
    /// Content chunks per stream.
    pub chunks: u32,
    /// Time between a stream's chunks; zero sends them back to back.
    #[serde(rename = "interval_ms", serialize_with = "as_ms")]
    pub interval: Duration,
    /// Clients connecting at once (the ramp).
    pub connect_concurrency: usize,
    /// A client gives up after this long without a byte.
    #[serde(rename = "idle_timeout_ms", serialize_with = "as_ms")]
    pub idle_timeout: Duration,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            sizes: vec![100, 1_000, 10_000],
            modes: vec![Mode::Direct, Mode::Proxied],
            chunks: 64,
            interval: Duration::from_millis(10),
            connect_concurrency: 1_000,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

// ------------------------------------------------------------------ clock

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process-wide epoch (the first call).
fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

// -------------------------------------------------------------- histogram

/// Sub-buckets per power of two: values keep 6 significant bits (≤ 1.6 % error).
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// A lock-free log-linear histogram of microsecond values.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exponent = 63 - v.leading_zeros();
    let shift = exponent - SUB_BITS;
    let mantissa = (v >> shift) as usize;
    SUB + shift as usize * SUB + (mantissa - SUB)
}

/// The value a bucket stands for: the middle of its range.
fn bucket_value(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = ((i - SUB) / SUB) as u32;
    let mantissa = (SUB + (i - SUB) % SUB) as u64;
    (mantissa << shift) + ((1u64 << shift) - 1) / 2
}

impl Histogram {
    /// Counts one value.
    pub fn record(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The largest value counted.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The `q` quantile (0..=1), or `None` if nothing was counted.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(bucket_value(i).min(self.max()));
            }
        }
        Some(self.max())
    }
}

// ---------------------------------------------------------- client parsing

/// What one SSE `data:` payload was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Classifies one `data:` payload without a JSON parse: the harness must cost
/// as little as possible, and the stamp is digits then `|` at the start of the content.
fn classify(data: &[u8]) -> Payload {
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
enum ChunkState {
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
    chunked: bool,
    state: ChunkState,
    /// Raw bytes not yet de-chunked.
    raw: Vec<u8>,
    /// Body bytes not yet split into lines.
    body: Vec<u8>,
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

    fn dechunk(&mut self, input: &[u8]) -> Result<(), String> {
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

fn listen(addr: SocketAddr, nodelay: bool) -> io::Result<TcpListener> {
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
fn bind_address_no_port(socket: &TcpSocket) {
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
fn bind_address_no_port(_socket: &TcpSocket) {}

// ------------------------------------------------------------ the upstream

/// The stamped upstream's state, shared by its connections.
struct Upstream {
    chunks: u32,
    /// Streams expected: they are spread evenly over the pacing slots.
    expected: usize,
    /// Requests that arrived (and wait for `go`).
    arrived: AtomicUsize,
    /// Connections that failed on the upstream's side.
    failed: AtomicUsize,
    /// Failed accepts.
    accept_errors: AtomicUsize,
    go: watch::Receiver<bool>,
    /// One tick counter per pacing slot; empty when unpaced.
    slots: Arc<[watch::Sender<u64>]>,
}

async fn start_upstream(ip: Ipv4Addr, upstream: Arc<Upstream>) -> io::Result<(SocketAddr, oneshot::Sender<()>)> {
    let listener = listen(SocketAddr::new(ip.into(), 0), true)?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => {
                        let upstream = upstream.clone();
                        tokio::spawn(async move {
                            if let Err(e) = upstream_connection(socket, &upstream).await {
                                upstream.failed.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!("bench upstream connection failed: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of fds, typically: wait for streams to end and free some.
                        if upstream.accept_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("baton bench:   the upstream cannot accept: {e} (retrying)");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
    });
    Ok((addr, stop))
}

const UPSTREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";

/// Appends one SSE event as one HTTP chunk.
fn push_event(out: &mut Vec<u8>, payload: &str) {
    let len = "data: ".len() + payload.len() + 2;
    let _ = std::io::Write::write_fmt(out, format_args!("{len:x}\r\ndata: {payload}\n\n\r\n"));
}

fn content_chunk(first: bool, stamp: u64) -> String {
    let role = if first { "\"role\":\"assistant\"," } else { "" };
    format!(
        "{{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{{role}\"content\":\"{stamp}|\"}},\"finish_reason\":null}}]}}"
    )
}

async fn upstream_connection(mut socket: TcpStream, upstream: &Upstream) -> io::Result<()> {
    socket.set_nodelay(true)?;
    if crate::oracle::server::read_request(&mut socket).await?.is_none() {
        return Ok(());
    }
    socket.write_all(UPSTREAM_HEAD).await?;
    let index = upstream.arrived.fetch_add(1, Ordering::Relaxed);
    let slots = upstream.slots.len();
    let mut slot = (slots > 0).then(|| {
        let at = if index < upstream.expected {
            index * slots / upstream.expected
        } else {
            index % slots
        };
        upstream.slots[at].subscribe()
    });
    let mut go = upstream.go.clone();
    if go.wait_for(|go| *go).await.is_err() {
        return Ok(());
    }
    let mut out = Vec::with_capacity(512);
    for k in 0..upstream.chunks {
        if let Some(slot) = slot.as_mut() {
            if slot.changed().await.is_err() {
                return Err(io::Error::other("the pacer stopped"));
            }
        }
        out.clear();
        push_event(&mut out, &content_chunk(k == 0, now_us()));
        socket.write_all(&out).await?;
    }
    out.clear();
    push_event(
        &mut out,
        "{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}",
    );
    push_event(&mut out, "[DONE]");
    out.extend_from_slice(b"0\r\n\r\n");
    socket.write_all(&out).await?;
    socket.shutdown().await
}

/// Ticks the pacing slots from a plain thread: tokio's timers fire on 1 ms
/// ticks, which would send every stream's chunk of a millisecond in one burst.
///
/// The thread asks for SCHED_FIFO (it sleeps almost always, so this only makes
/// its wake-ups punctual). After a late tick it catches up at twice the normal
/// rate, never all at once: that would release many slots' chunks in one burst.
fn start_pacer(
    slots: Arc<[watch::Sender<u64>]>,
    slot: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<PacerStats> {
    std::thread::spawn(move || {
        let mut stats = PacerStats {
            realtime: set_realtime(),
            ..PacerStats::default()
        };
        let start = Instant::now();
        let slot_ns = slot.as_nanos() as u64;
        let mut last = start;
        let mut tick: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let nominal = start + Duration::from_nanos(slot_ns.saturating_mul(tick));
            // Behind schedule, tick at twice the rate until caught up: no burst, no drift.
            let due = nominal.max(last + slot / 2);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            last = Instant::now();
            let late = last.saturating_duration_since(nominal);
            stats.max_late_us = stats.max_late_us.max(late.as_micros() as u64);
            if late > Duration::from_millis(1) {
                stats.late_ticks += 1;
            }
            slots[(tick % slots.len() as u64) as usize].send_replace(tick + 1);
            tick += 1;
        }
        stats.ticks = tick;
        stats
    })
}

/// How punctual the pacer was.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PacerStats {
    /// Whether it got SCHED_FIFO.
    pub realtime: bool,
    /// Slots ticked.
    pub ticks: u64,
    /// Ticks more than 1 ms late.
    pub late_ticks: u64,
    /// The latest tick (µs).
    pub max_late_us: u64,
}

/// Asks for SCHED_FIFO (priority 1) for the calling thread.
#[cfg(target_os = "linux")]
fn set_realtime() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: 0 is the calling thread; `param` is a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn set_realtime() -> bool {
    false
}

// --------------------------------------------------------------- the proxy

/// The proxy under test: a `baton serve` child of this executable, so what
/// `/proc` says about it is the proxy's cost alone.
struct Proxy {
    child: Child,
    /// Holds its config and log; removed when the run ends.
    scratch: PathBuf,
}

fn proxy_config_text(upstream: SocketAddr) -> String {
    format!(
        r#"# written by `baton bench`
[server]
listen = "{PROXY_IP}:0"
shutdown_grace_ms = 1000

[[route]]
name = "stamped"
provider = "openai"
base_url = "http://{upstream}/v1"
model = "bench-upstream"
ttft_ms = 600000
stall_ms = 600000
total_ms = 3600000

[[ladder]]
name = "bench"
routes = ["stamped"]
max_retries = 0
"#
    )
}

async fn start_proxy(upstream: SocketAddr, streams: usize) -> Result<Proxy, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the baton executable: {e}"))?;
    let scratch = std::env::temp_dir().join(format!("baton-bench-{}-{streams}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let config = scratch.join("bench.toml");
    std::fs::write(&config, proxy_config_text(upstream))
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let log_path = scratch.join("serve.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let args = ["serve".to_string(), "--config".to_string(), config.display().to_string()];
    match Child::start(&exe, &args, std::process::Stdio::from(log)).await {
        Ok(child) => Ok(Proxy { child, scratch }),
        Err(e) => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&scratch);
            Err(format!("{e}; its log: {}", log.trim()))
        }
    }
}

impl Proxy {
    async fn stop(self) {
        self.child.stop().await;
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

// -------------------------------------------------------------- the client

/// What every client of one run shares.
struct Clients {
    source: Ipv4Addr,
    target: SocketAddr,
    request: Vec<u8>,
    chunks: u32,
    idle: Duration,
    gate: Semaphore,
    latency: Histogram,
    /// The first chunk of each stream alone (it carries the response head through the proxy).
    first: Histogram,
    received: AtomicU64,
    finished: AtomicUsize,
    ok: AtomicUsize,
    errors: AtomicUsize,
    open: AtomicUsize,
    peak_open: AtomicUsize,
    last_done_us: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Clients {
    fn new(source: Ipv4Addr, target: SocketAddr, options: &BenchOptions) -> Self {
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

    async fn run_one(self: Arc<Self>) {
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

    async fn read(&self, socket: &mut TcpStream, buf: &mut [u8]) -> Result<usize, String> {
        read_idle(socket, buf, self.idle).await
    }

    async fn stream(&self) -> Result<(), String> {
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

    async fn exchange(&self, socket: &mut TcpStream, permit: tokio::sync::SemaphorePermit<'_>) -> Result<(), String> {
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
struct Tally {
    chunks: u64,
    bad: u64,
    errors: u64,
    finish: bool,
    done: bool,
}

impl Tally {
    fn see(&mut self, payload: Payload, now: u64, latency: &Histogram, first: &Histogram) {
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

// ------------------------------------------------------------------ memory

fn status_kib(field: &str) -> Option<u64> {
    status_kib_of("/proc/self/status", field)
}

/// Resets VmHWM of a process to its current RSS (Linux ≥ 4.0; `clear_refs`
/// is a `/proc/<pid>/clear_refs` path). Whether it worked.
fn reset_peak(clear_refs: &str) -> bool {
    std::fs::write(clear_refs, "5").is_ok()
}

/// Gives freed heap back to the kernel, so one run's leftovers do not hide the next run's growth.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// CPU time used by the process so far: (user, system) seconds.
#[cfg(unix)]
fn cpu_times() -> (f64, f64) {
    // SAFETY: an all-zero rusage is valid, and getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid for writes.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

#[cfg(not(unix))]
fn cpu_times() -> (f64, f64) {
    (0.0, 0.0)
}

// ------------------------------------------------------------------ a run

/// Directly against the upstream, or through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Clients → upstream.
    Direct,
    /// Clients → proxy → upstream.
    Proxied,
}

impl Mode {
    /// File descriptors one stream holds in the bench process (the client's
    /// and the upstream's end; the proxy child holds its own two).
    fn fds_per_stream(self) -> u64 {
        2
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(Mode::Direct),
            "proxied" => Ok(Mode::Proxied),
            other => Err(format!("{other:?} is not a mode: direct or proxied")),
        }
    }
}

/// The figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Direct or proxied.
    pub mode: Mode,
    /// Streams started.
    pub streams: usize,
    /// Streams that ended complete (all chunks, finish reason, `[DONE]`).
    pub ok: usize,
    /// Streams that did not.
    pub errors: usize,
    /// A few distinct error messages.
    pub error_samples: Vec<String>,
    /// Upstream connections that failed on the upstream's side.
    pub upstream_failures: usize,
    /// Failed accepts on the upstream (out of fds, typically; retried).
    pub upstream_accept_errors: usize,
    /// Most client connections open at once.
    pub peak_open: usize,
    /// Requests that reached the upstream before it started streaming.
    pub arrived_before_go: usize,
    /// From the first connect to the last request reaching the upstream (s).
    pub ramp_s: f64,
    /// From the upstream's start to the last stream's end (s).
    pub wall_s: f64,
    /// Content chunks received, all streams.
    pub chunks: u64,
    /// `chunks / wall_s`.
    pub chunks_per_s: f64,
    /// Chunk latency (stamp → client), median (µs).
    pub latency_p50_us: Option<u64>,
    /// Chunk latency, 99th percentile (µs).
    pub latency_p99_us: Option<u64>,
    /// Chunk latency, 99.9th percentile (µs).
    pub latency_p999_us: Option<u64>,
    /// Largest chunk latency (µs).
    pub latency_max_us: u64,
    /// Latency of each stream's first chunk, median (µs).
    pub first_chunk_p50_us: Option<u64>,
    /// Latency of each stream's first chunk, 99th percentile (µs).
    pub first_chunk_p99_us: Option<u64>,
    /// Resident set when the run started (KiB).
    pub rss_before_kib: u64,
    /// Peak resident set during the run (KiB).
    pub rss_peak_kib: u64,
    /// `(rss_peak - rss_before) / streams` (KiB).
    pub kib_per_stream: f64,
    /// How punctual the pacer was (`None` when unpaced).
    pub pacer: Option<PacerStats>,
    /// CPU time of the bench process (clients and upstream, never the proxy) during the run, user (s).
    pub cpu_user_s: f64,
    /// CPU time of the bench process during the run, system (s).
    pub cpu_sys_s: f64,
    /// `(cpu_user_s + cpu_sys_s) / chunks` (µs): what one chunk costs the load client and the upstream.
    pub cpu_us_per_chunk: f64,
    /// The proxy process's own figures (proxied runs only).
    pub proxy: Option<ProxyFigures>,
}

/// What the proxy process alone spent on a proxied run, read from `/proc`.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyFigures {
    /// The proxy's pid.
    pub pid: u32,
    /// User CPU time during the run (`utime` of `/proc/<pid>/stat`, s).
    pub cpu_user_s: f64,
    /// System CPU time during the run (`stime`, s).
    pub cpu_sys_s: f64,
    /// `(cpu_user_s + cpu_sys_s) / chunks` (µs): the proxy's CPU per forwarded chunk.
    pub cpu_us_per_chunk: f64,
    /// Read-like syscalls during the run (`syscr` of `/proc/<pid>/io`: read, recvfrom, recvmsg, …, including those that found nothing).
    pub syscalls_read: u64,
    /// Write-like syscalls during the run (`syscw`: write, writev, sendto, sendmsg, …).
    pub syscalls_write: u64,
    /// `(syscalls_read + syscalls_write) / chunks`. Not counted: epoll_wait, futex, accept, connect, close.
    pub syscalls_per_chunk: f64,
    /// The proxy's resident set when idle, after start and before the first request (KiB).
    pub rss_idle_kib: u64,
    /// Its peak resident set during the run (KiB).
    pub rss_peak_kib: u64,
    /// `(rss_peak - rss_idle) / streams` (KiB).
    pub kib_per_stream: f64,
}

async fn run_once(mode: Mode, streams: usize, options: &BenchOptions) -> Result<RunResult, String> {
    let paced = !options.interval.is_zero();
    let slot_count = if paced {
        // No more slots than streams: an empty slot's tick is a wasted wake-up.
        (options.interval.as_nanos() / SLOT.as_nanos())
            .clamp(1, 10_000)
            .min(streams.max(1) as u128) as usize
    } else {
        0
    };
    let slot = if paced {
        options.interval / slot_count as u32
    } else {
        Duration::ZERO
    };
    let slots: Arc<[watch::Sender<u64>]> = (0..slot_count).map(|_| watch::channel(0).0).collect();
    let (go, go_rx) = watch::channel(false);
    let upstream = Arc::new(Upstream {
        chunks: options.chunks,
        expected: streams,
        arrived: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        accept_errors: AtomicUsize::new(0),
        go: go_rx,
        slots: slots.clone(),
    });
    let upstream_ip = match mode {
        Mode::Direct => MOCK_DIRECT_IP,
        Mode::Proxied => MOCK_PROXIED_IP,
    };
    let (upstream_addr, stop_upstream) = start_upstream(upstream_ip, upstream.clone())
        .await
        .map_err(|e| format!("cannot start the upstream on {upstream_ip}: {e}"))?;
    let (target, source, proxy) = match mode {
        Mode::Direct => (upstream_addr, CLIENT_DIRECT_IP, None),
        Mode::Proxied => {
            let proxy = match start_proxy(upstream_addr, streams).await {
                Ok(proxy) => proxy,
                Err(e) => {
                    let _ = stop_upstream.send(());
                    return Err(format!("cannot start the proxy: {e}"));
                }
            };
            (proxy.child.addr, CLIENT_PROXIED_IP, Some(proxy))
        }
    };
    // The proxy's starting point: idle, before the first request.
    let proxy_before = proxy.as_ref().map(|p| {
        let child = &p.child;
        let rss_idle = child.rss_kib();
        let hwm_reset = reset_peak(&child.proc("clear_refs"));
        (rss_idle, hwm_reset, RssSampler::start(child.proc("status")), child.counters())
    });
    let clients = Arc::new(Clients::new(source, target, options));

    trim_heap();
    let rss_before = status_kib("VmRSS:").unwrap_or(0);
    let hwm_reset = reset_peak("/proc/self/clear_refs");
    let sampler = RssSampler::start("/proc/self/status".into());
    let cpu_before = cpu_times();
    let started = Instant::now();

    let tasks: Vec<_> = (0..streams).map(|_| tokio::spawn(clients.clone().run_one())).collect();
    // Every request must reach the upstream (or fail) before any stream starts;
    // if the ramp stops making progress (out of fds, say), start with what arrived.
    let mut progress = (0, Instant::now());
    loop {
        let seen = upstream.arrived.load(Ordering::Relaxed) + clients.finished.load(Ordering::Relaxed);
        if seen >= streams || started.elapsed() >= ARRIVAL_TIMEOUT {
            break;
        }
        if seen != progress.0 {
            progress = (seen, Instant::now());
        } else if progress.1.elapsed() >= RAMP_STALL {
            eprintln!("baton bench:   the ramp stalled at {seen} of {streams} streams; starting anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ramp = started.elapsed();
    let arrived_before_go = upstream.arrived.load(Ordering::Relaxed);
    let go_us = now_us();
    let stop_pacer = Arc::new(AtomicBool::new(false));
    let pacer = paced.then(|| start_pacer(slots.clone(), slot, stop_pacer.clone()));
    let _ = go.send(true);
    for task in tasks {
        if let Err(e) = task.await {
            return Err(format!("a client task failed: {e}"));
        }
    }
    stop_pacer.store(true, Ordering::Relaxed);
    let pacer = pacer.and_then(|p| p.join().ok());
    let cpu_after = cpu_times();
    let sampled = sampler.finish();
    let hwm = if hwm_reset {
        status_kib("VmHWM:").unwrap_or(0)
    } else {
        0
    };
    let rss_peak = sampled.max(hwm);

    let chunks = clients.received.load(Ordering::Relaxed);
    let proxy_figures = match (&proxy, proxy_before) {
        (Some(p), Some((rss_idle, hwm_reset, sampler, before))) => {
            let after = p.child.counters();
            let sampled = sampler.finish();
            let hwm = if hwm_reset {
                status_kib_of(&p.child.proc("status"), "VmHWM:").unwrap_or(0)
            } else {
                0
            };
            let spent = match (before, after) {
                (Some(before), Some(after)) => after.since(&before),
                _ => Counters::default(),
            };
            Some(proxy_figures(p.child.pid, spent, rss_idle, sampled.max(hwm), streams, chunks))
        }
        _ => None,
    };
    if let Some(proxy) = proxy {
        proxy.stop().await;
    }
    let _ = stop_upstream.send(());

    let wall = Duration::from_micros(clients.last_done_us.load(Ordering::Relaxed).saturating_sub(go_us));
    let latency = &clients.latency;
    let samples = clients.samples.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(RunResult {
        mode,
        streams,
        ok: clients.ok.load(Ordering::Relaxed),
        errors: clients.errors.load(Ordering::Relaxed),
        error_samples: samples,
        upstream_failures: upstream.failed.load(Ordering::Relaxed),
        upstream_accept_errors: upstream.accept_errors.load(Ordering::Relaxed),
        peak_open: clients.peak_open.load(Ordering::Relaxed),
        arrived_before_go,
        ramp_s: ramp.as_secs_f64(),
        wall_s: wall.as_secs_f64(),
        chunks,
        chunks_per_s: if wall.is_zero() {
            0.0
        } else {
            chunks as f64 / wall.as_secs_f64()
        },
        latency_p50_us: latency.percentile(0.50),
        latency_p99_us: latency.percentile(0.99),
        latency_p999_us: latency.percentile(0.999),
        latency_max_us: latency.max(),
        first_chunk_p50_us: clients.first.percentile(0.50),
        first_chunk_p99_us: clients.first.percentile(0.99),
        rss_before_kib: rss_before,
        rss_peak_kib: rss_peak,
        kib_per_stream: rss_peak.saturating_sub(rss_before) as f64 / streams.max(1) as f64,
        pacer,
        cpu_user_s: cpu_after.0 - cpu_before.0,
        cpu_sys_s: cpu_after.1 - cpu_before.1,
        cpu_us_per_chunk: if chunks == 0 {
            0.0
        } else {
            (cpu_after.0 - cpu_before.0 + cpu_after.1 - cpu_before.1) * 1e6 / chunks as f64
        },
        proxy: proxy_figures,
    })
}

/// The proxy's figures from what it spent during a run.
fn proxy_figures(
    pid: u32,
    spent: Counters,
    rss_idle_kib: u64,
    rss_peak_kib: u64,
    streams: usize,
    chunks: u64,
) -> ProxyFigures {
    let per_chunk = |v: f64| if chunks == 0 { 0.0 } else { v / chunks as f64 };
    ProxyFigures {
        pid,
        cpu_user_s: spent.user_us / 1e6,
        cpu_sys_s: spent.sys_us / 1e6,
        cpu_us_per_chunk: per_chunk(spent.user_us + spent.sys_us),
        syscalls_read: spent.syscr,
        syscalls_write: spent.syscw,
        syscalls_per_chunk: per_chunk((spent.syscr + spent.syscw) as f64),
        rss_idle_kib,
        rss_peak_kib,
        kib_per_stream: rss_peak_kib.saturating_sub(rss_idle_kib) as f64 / streams.max(1) as f64,
    }
}

// ----------------------------------------------------------------- report

/// Facts about the machine the figures came from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPUs available to the process.
    pub cpus: usize,
    /// RLIMIT_NOFILE (soft, hard) before the bench raised it.
    pub fd_limit_before: (u64, u64),
    /// RLIMIT_NOFILE (soft, hard) the bench runs with.
    pub fd_limit: (u64, u64),
    /// `net.core.somaxconn` (caps every listen backlog).
    pub somaxconn: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub port_range: Option<String>,
    /// `net.ipv4.tcp_tw_reuse`.
    pub tcp_tw_reuse: Option<u64>,
}

/// One stream count: both runs and the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct SizeResult {
    /// N.
    pub streams: usize,
    /// Clients → upstream (unless `--modes` left it out).
    pub direct: Option<RunResult>,
    /// Clients → proxy → upstream (unless `--modes` left it out).
    pub proxied: Option<RunResult>,
    /// Proxied chunks/s over direct chunks/s.
    pub ratio: Option<f64>,
    /// Proxied p50 latency minus direct p50 (ms).
    pub added_p50_ms: Option<f64>,
    /// Proxied p99 latency minus direct p99 (ms).
    pub added_p99_ms: Option<f64>,
}

impl SizeResult {
    fn new(streams: usize, direct: Option<RunResult>, proxied: Option<RunResult>) -> Self {
        let (d, p) = (direct.as_ref(), proxied.as_ref());
        let added = |q: fn(&RunResult) -> Option<u64>| Some((q(p?)? as f64 - q(d?)? as f64) / 1000.0);
        SizeResult {
            streams,
            ratio: match (d, p) {
                (Some(d), Some(p)) if d.chunks_per_s > 0.0 => Some(p.chunks_per_s / d.chunks_per_s),
                _ => None,
            },
            added_p50_ms: added(|r| r.latency_p50_us),
            added_p99_ms: added(|r| r.latency_p99_us),
            direct,
            proxied,
        }
    }

    fn runs(&self) -> impl Iterator<Item = &RunResult> {
        self.direct.iter().chain(self.proxied.iter())
    }

    fn errors(&self) -> usize {
        self.runs().map(|r| r.errors).sum()
    }
}

/// Everything the bench measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The machine.
    pub machine: Machine,
    /// What ran.
    pub options: BenchOptions,
    /// One entry per stream count.
    pub results: Vec<SizeResult>,
    /// The targets, checked against the results.
    pub targets: Vec<Target>,
}

/// One target and whether the run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// What is asked.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Met?
    pub met: bool,
}

/// Issue 14's targets: at 100 and 1,000 streams ≤ 10 µs of proxy CPU per
/// chunk; at 1,000 streams ≥ 0.9 × the direct rate and added p99 ≤ 5 ms;
/// 10,000 concurrent streams through the proxy with no errors.
fn targets(results: &[SizeResult]) -> Vec<Target> {
    let mut targets = Vec::new();
    for r in results {
        let proxy = r.proxied.as_ref().and_then(|p| p.proxy.as_ref());
        if let (true, Some(p)) = (r.streams == 100 || r.streams == 1_000, proxy) {
            targets.push(Target {
                target: format!("{} streams: proxy CPU per chunk ≤ 10 µs", r.streams),
                measured: format!("{:.1} µs", p.cpu_us_per_chunk),
                met: p.cpu_us_per_chunk <= 10.0,
            });
        }
        if r.streams == 1_000 {
            if let Some(ratio) = r.ratio {
                targets.push(Target {
                    target: "1000 streams: proxied chunks/s ≥ 0.9 × direct".into(),
                    measured: format!("{ratio:.2} ×"),
                    met: ratio >= 0.9,
                });
            }
            if let Some(added) = r.added_p99_ms {
                targets.push(Target {
                    target: "1000 streams: added p99 per chunk ≤ 5 ms".into(),
                    measured: format!("{added:+.3} ms"),
                    met: added <= 5.0,
                });
            }
        }
        if r.streams == 10_000 {
            if let Some(p) = &r.proxied {
                targets.push(Target {
                    target: "10000 concurrent streams through the proxy, no errors".into(),
                    measured: format!(
                        "{} held at once, {} complete, {} errors",
                        p.arrived_before_go, p.ok, p.errors
                    ),
                    met: p.arrived_before_go == p.streams && p.errors == 0,
                });
            }
        }
    }
    targets
}

fn ms(us: Option<u64>) -> String {
    us.map_or("-".into(), |us| format!("{:.3}", us as f64 / 1000.0))
}

fn signed_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:+.3}"))
}

fn fixed(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "{} chunks per stream, {} ms apart{}; {} CPUs; fd limit {} (soft) / {} (hard)",
            o.chunks,
            o.interval.as_secs_f64() * 1000.0,
            if o.interval.is_zero() { " (unpaced)" } else { "" },
            self.machine.cpus,
            self.machine.fd_limit.0,
            self.machine.fd_limit.1
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:>7}  {:>9}  {:>15}  {:>16}  {:>5}  {:>12}  {:>12}  {:>18}  {:>20}  {:>16}  {:>6}",
            "streams",
            "offered/s",
            "direct chunks/s",
            "proxied chunks/s",
            "ratio",
            "added p50 ms",
            "added p99 ms",
            "proxy CPU µs/chunk",
            "proxy syscalls/chunk",
            "proxy KiB/stream",
            "errors"
        )?;
        for r in &self.results {
            let proxy = r.proxied.as_ref().and_then(|p| p.proxy.as_ref());
            writeln!(
                f,
                "{:>7}  {:>9}  {:>15}  {:>16}  {:>5}  {:>12}  {:>12}  {:>18}  {:>20}  {:>16}  {:>6}",
                r.streams,
                if o.interval.is_zero() {
                    "-".to_string()
                } else {
                    format!("{:.0}", r.streams as f64 / o.interval.as_secs_f64())
                },
                fixed(r.direct.as_ref().map(|d| d.chunks_per_s), 0),
                fixed(r.proxied.as_ref().map(|p| p.chunks_per_s), 0),
                fixed(r.ratio, 2),
                signed_ms(r.added_p50_ms),
                signed_ms(r.added_p99_ms),
                fixed(proxy.map(|p| p.cpu_us_per_chunk), 1),
                fixed(proxy.map(|p| p.syscalls_per_chunk), 2),
                fixed(proxy.map(|p| p.kib_per_stream), 1),
                r.errors()
            )?;
        }
        writeln!(
            f,
            "proxy: the `baton serve` child alone (/proc/<pid>/stat utime+stime; /proc/<pid>/io syscr+syscw, read- and write-like syscalls only; peak VmRSS minus idle)"
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:>7}  {:<7}  {:>6}  {:>9}  {:>8}  {:>7}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}  {:>18}  {:>18}  {:>6}",
            "streams",
            "mode",
            "held",
            "peak open",
            "ramp s",
            "wall s",
            "chunks",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "1st p50 ms",
            "1st p99 ms",
            "bench CPU µs/chunk",
            "bench peak RSS MiB",
            "errors"
        )?;
        for r in &self.results {
            for run in r.runs() {
                writeln!(
                    f,
                    "{:>7}  {:<7}  {:>6}  {:>9}  {:>8.2}  {:>7.2}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>10}  {:>10}  {:>18.1}  {:>18.1}  {:>6}",
                    run.streams,
                    match run.mode {
                        Mode::Direct => "direct",
                        Mode::Proxied => "proxied",
                    },
                    run.arrived_before_go,
                    run.peak_open,
                    run.ramp_s,
                    run.wall_s,
                    run.chunks,
                    ms(run.latency_p50_us),
                    ms(run.latency_p99_us),
                    ms(run.latency_p999_us),
                    ms(Some(run.latency_max_us)),
                    ms(run.first_chunk_p50_us),
                    ms(run.first_chunk_p99_us),
                    run.cpu_us_per_chunk,
                    run.rss_peak_kib as f64 / 1024.0,
                    run.errors
                )?;
            }
        }
        for r in &self.results {
            for run in r.runs() {
                for sample in &run.error_samples {
                    writeln!(f, "error ({} streams, {:?}): {sample}", run.streams, run.mode)?;
                }
            }
        }
        if !self.targets.is_empty() {
            writeln!(f)?;
            writeln!(f, "targets:")?;
            for t in &self.targets {
                let verdict = if t.met { "met" } else { "MISSED" };
                writeln!(f, "  {:<56}  {:<44}  {verdict}", t.target, t.measured)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------- machine setup

fn proc_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
fn fd_limit() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return (0, 0);
    }
    (limit.rlim_cur as u64, limit.rlim_max as u64)
}

/// Raises RLIMIT_NOFILE to `wanted` (soft and hard; raising the hard limit
/// needs root), else the soft limit to the hard one. Returns (before, after).
#[cfg(unix)]
fn raise_fd_limit(wanted: u64) -> ((u64, u64), (u64, u64)) {
    let before = fd_limit();
    let wanted = proc_u64("/proc/sys/fs/nr_open").map_or(wanted, |max| wanted.min(max));
    let set = |soft: u64, hard: u64| {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: a valid rlimit passed by reference.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
    };
    if before.0 < wanted && !set(wanted, wanted.max(before.1)) {
        set(before.1.min(wanted).max(before.0), before.1);
    }
    (before, fd_limit())
}

#[cfg(not(unix))]
fn raise_fd_limit(_wanted: u64) -> ((u64, u64), (u64, u64)) {
    ((0, 0), (0, 0))
}

fn machine(fd_limit_before: (u64, u64), fd_limit: (u64, u64)) -> Machine {
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        fd_limit_before,
        fd_limit,
        somaxconn: proc_u64("/proc/sys/net/core/somaxconn"),
        port_range: std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join("-")),
        tcp_tw_reuse: proc_u64("/proc/sys/net/ipv4/tcp_tw_reuse"),
    }
}

/// Runs every size, direct then proxied, and returns the figures.
pub async fn run(options: BenchOptions) -> Result<BenchReport, String> {
    now_us();
    let (before, after) = raise_fd_limit(WANTED_FDS);
    let machine = machine(before, after);
    eprintln!(
        "baton bench: fd limit raised from {}/{} to {}/{} (soft/hard); somaxconn {}; ports {}; {} CPUs",
        before.0,
        before.1,
        after.0,
        after.1,
        machine.somaxconn.map_or("?".into(), |v| v.to_string()),
        machine.port_range.as_deref().unwrap_or("?"),
        machine.cpus
    );
    let mut results = Vec::new();
    for &streams in &options.sizes {
        let (mut direct, mut proxied) = (None, None);
        for mode in [Mode::Direct, Mode::Proxied] {
            if !options.modes.contains(&mode) {
                continue;
            }
            let needed = streams as u64 * mode.fds_per_stream() + 64;
            if needed > after.0 {
                eprintln!(
                    "baton bench: warning: {streams} {mode:?} streams need about {needed} fds in this process; the limit is {}: expect \"Too many open files\"",
                    after.0
                );
            }
            eprintln!("baton bench: {streams} streams, {mode:?} …");
            let result = run_once(mode, streams, &options).await?;
            eprintln!(
                "baton bench:   {:.0} chunks/s, p50 {} ms, p99 {} ms, {} errors; bench {:.1} KiB/stream, {:.1} CPU µs/chunk{}{}",
                result.chunks_per_s,
                ms(result.latency_p50_us),
                ms(result.latency_p99_us),
                result.errors,
                result.kib_per_stream,
                result.cpu_us_per_chunk,
                result.proxy.as_ref().map_or(String::new(), |p| format!(
                    "; proxy {:.1} CPU µs/chunk, {:.2} syscalls/chunk, {:.1} KiB/stream",
                    p.cpu_us_per_chunk, p.syscalls_per_chunk, p.kib_per_stream
                )),
                result.pacer.map_or(String::new(), |p| format!(
                    "; pacer {}: {} of {} ticks > 1 ms late, latest {:.1} ms",
                    if p.realtime { "SCHED_FIFO" } else { "normal priority" },
                    p.late_ticks,
                    p.ticks,
                    p.max_late_us as f64 / 1000.0
                ))
            );
            match mode {
                Mode::Direct => direct = Some(result),
                Mode::Proxied => proxied = Some(result),
            }
            // Let closed sockets and freed memory settle between runs.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        results.push(SizeResult::new(streams, direct, proxied));
    }
    Ok(BenchReport {
        machine,
        options,
        targets: targets(&results),
        results,
    })
}

/// `baton bench`: runs, prints the table (or JSON), and fails if any stream failed.
pub async fn main(options: BenchOptions, json: bool) -> ExitCode {
    let report = match run(options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("baton bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("baton bench: could not write the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let mut text = String::new();
        let _ = write!(text, "{report}");
        print!("{text}");
    }
    if report.results.iter().any(|r| r.errors() > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_round_trip_within_their_precision() {
        for v in [0u64, 1, 63, 64, 127, 128, 129, 1000, 4095, 65_537, 1 << 40, u64::MAX] {
            let back = bucket_value(bucket_of(v));
            let error = back.abs_diff(v) as f64 / v.max(1) as f64;
            assert!(error <= 1.0 / 64.0, "{v} → {back}");
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles() {
        let h = Histogram::default();
        assert_eq!(h.percentile(0.5), None);
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.percentile(0.5), Some(50));
        assert_eq!(h.percentile(0.99), Some(99));
        assert_eq!(h.percentile(1.0), Some(100));
        assert_eq!(h.percentile(0.0), Some(1));
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn stamps_are_read_from_either_chunk_shape() {
        let upstream = content_chunk(true, 123_456);
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
        push_event(&mut wire, &content_chunk(true, 1));
        push_event(&mut wire, &content_chunk(false, 22));
        push_event(&mut wire, "[DONE]");
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

    #[test]
    fn the_proxy_config_parses() {
        let text = proxy_config_text("127.0.0.3:9000".parse().expect("addr"));
        let config = crate::config::Config::parse("bench.toml", &text, &|_| None).expect("valid");
        assert!(config.ladder_for("bench").is_some());
    }

    #[test]
    fn proxy_figures_are_per_chunk_and_per_stream() {
        let spent = Counters {
            user_us: 300_000.0,
            sys_us: 100_000.0,
            syscr: 5_000,
            syscw: 3_000,
        };
        let f = proxy_figures(7, spent, 10_000, 12_000, 100, 4_000);
        assert_eq!(f.cpu_us_per_chunk, 100.0);
        assert_eq!(f.syscalls_per_chunk, 2.0);
        assert_eq!(f.kib_per_stream, 20.0);
        let none = proxy_figures(7, spent, 12_000, 10_000, 0, 0);
        assert_eq!((none.cpu_us_per_chunk, none.kib_per_stream), (0.0, 0.0));
    }
}
