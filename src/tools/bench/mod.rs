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
//! The proxy's cost: its CPU time (`utime + stime`, in clock ticks of 10 ms:
//! a short run's figure is coarse) and its `syscr + syscw` (read(2)/write(2)
//! and their vectored forms; the kernel does not count recvfrom(2), which is
//! how tokio reads a socket, so in effect the proxy's socket writes) from the
//! request ramp to the last stream's end, divided by the chunks the clients
//! received; its memory is
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

mod clients;
mod histogram;
mod host;
pub(crate) mod proc;
mod report;
mod upstream;

use self::clients::Clients;
pub(crate) use self::clients::{connect, read_head, read_idle, SseDecoder};
pub use self::histogram::Histogram;
use self::host::{cpu_times, machine, raise_fd_limit, reset_peak, status_kib, trim_heap};
use self::report::{ms, targets};
pub use self::report::{BenchReport, Machine, SizeResult, Target};
pub use self::upstream::PacerStats;
use self::upstream::{start_pacer, start_upstream, Upstream};

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
    /// Proxied runs keep one `/events` subscriber connected and record every session.
    pub events: bool,
    /// Proxied runs share state through this Redis (`[state] redis_url`).
    pub redis_url: Option<String>,
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
            events: false,
            redis_url: None,
        }
    }
}

// ------------------------------------------------------------------ clock

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since the process-wide epoch (the first call).
fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

// --------------------------------------------------------------- the proxy

/// The proxy under test: a `baton serve` child of this executable, so what
/// `/proc` says about it is the proxy's cost alone.
struct Proxy {
    child: Child,
    /// Holds its config and log; removed when the run ends.
    scratch: PathBuf,
}

fn proxy_config_text(upstream: SocketAddr, record_dir: Option<&std::path::Path>, redis_url: Option<&str>) -> String {
    let record = record_dir.map_or(String::new(), |dir| {
        format!("record_dir = {}\n", toml::Value::String(dir.display().to_string()))
    });
    let state = redis_url.map_or(String::new(), |url| {
        format!(
            "[state]\nredis_url = {}\nkey_prefix = \"baton-bench:\"\n",
            toml::Value::String(url.to_string())
        )
    });
    format!(
        r#"# written by `baton bench`
[server]
listen = "{PROXY_IP}:0"
shutdown_grace_ms = 1000
{record}
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
{state}"#
    )
}

async fn start_proxy(
    upstream: SocketAddr,
    streams: usize,
    record: bool,
    redis_url: Option<&str>,
) -> Result<Proxy, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the baton executable: {e}"))?;
    let scratch = std::env::temp_dir().join(format!("baton-bench-{}-{streams}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let config = scratch.join("bench.toml");
    let record_dir = record.then(|| scratch.join("recordings"));
    std::fs::write(&config, proxy_config_text(upstream, record_dir.as_deref(), redis_url))
        .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let log_path = scratch.join("serve.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let args = [
        "serve".to_string(),
        "--config".to_string(),
        config.display().to_string(),
    ];
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
    /// `syscr` of `/proc/<pid>/io` during the run: read(2)/readv(2) calls only; the proxy's socket reads are recvfrom(2) and not counted.
    pub syscalls_read: u64,
    /// `syscw` during the run: write(2)/writev(2) calls, which is how the proxy writes to both sockets.
    pub syscalls_write: u64,
    /// `(syscalls_read + syscalls_write) / chunks`: in effect socket writes per chunk. Not counted: recvfrom, epoll_wait, futex, accept, connect, close.
    pub syscalls_per_chunk: f64,
    /// The proxy's resident set when idle, after start and before the first request (KiB).
    pub rss_idle_kib: u64,
    /// Its peak resident set during the run (KiB).
    pub rss_peak_kib: u64,
    /// `(rss_peak - rss_idle) / streams` (KiB).
    pub kib_per_stream: f64,
    /// With `--events`: the bytes the `/events` subscriber read during the run.
    pub events_bytes: Option<u64>,
}

/// One `/events` reader on the proxy for a whole run, counting what it reads.
struct Subscriber {
    bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Connects and sends the request; the response is read in the background.
    async fn start(proxy: SocketAddr) -> Result<Self, String> {
        let mut socket = connect(CLIENT_PROXIED_IP, proxy)
            .await
            .map_err(|e| format!("cannot connect the /events subscriber: {e}"))?;
        let request = format!("GET /events HTTP/1.1\r\nhost: {proxy}\r\naccept: text/event-stream\r\n\r\n");
        socket
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot ask for /events: {e}"))?;
        let bytes = Arc::new(AtomicU64::new(0));
        let counted = bytes.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = socket.read(&mut buf).await {
                counted.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        Ok(Subscriber { bytes, task })
    }

    /// Stops reading; the bytes read.
    fn stop(self) -> u64 {
        self.task.abort();
        self.bytes.load(Ordering::Relaxed)
    }
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
            let proxy = match start_proxy(upstream_addr, streams, options.events, options.redis_url.as_deref()).await {
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
        (
            rss_idle,
            hwm_reset,
            RssSampler::start(child.proc("status")),
            child.counters(),
        )
    });
    // The subscriber connects before the first request, so it sees every session.
    let events_at = proxy.as_ref().filter(|_| options.events).map(|p| p.child.addr);
    let subscriber = match events_at {
        Some(addr) => match Subscriber::start(addr).await {
            Ok(subscriber) => Some(subscriber),
            Err(e) => {
                if let Some(proxy) = proxy {
                    proxy.stop().await;
                }
                let _ = stop_upstream.send(());
                return Err(e);
            }
        },
        None => None,
    };
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
            Some(proxy_figures(
                p.child.pid,
                spent,
                rss_idle,
                sampled.max(hwm),
                streams,
                chunks,
            ))
        }
        _ => None,
    };
    let events_bytes = subscriber.map(Subscriber::stop);
    let proxy_figures = proxy_figures.map(|figures| ProxyFigures {
        events_bytes,
        ..figures
    });
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
        events_bytes: None,
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
    fn the_proxy_config_parses() {
        let text = proxy_config_text("127.0.0.3:9000".parse().expect("addr"), None, None);
        let config = crate::config::Config::parse("bench.toml", &text, &|_| None).expect("valid");
        assert!(config.ladder_for("bench").is_some());
        assert_eq!(config.state.redis_url, None);
        let shared = proxy_config_text(
            "127.0.0.3:9000".parse().expect("addr"),
            None,
            Some("redis://127.0.0.1:1/0"),
        );
        let config = crate::config::Config::parse("bench.toml", &shared, &|_| None).expect("valid");
        assert_eq!(
            config.state.redis_url.as_ref().map(|u| u.expose()),
            Some("redis://127.0.0.1:1/0")
        );
        assert_eq!(config.state.key_prefix, "baton-bench:");
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
