//! `baton soak`: many sessions through a real `baton serve` against real
//! `baton mock` upstreams with a random fault mix, checking every answer byte
//! for byte and watching the server's memory and file descriptors.
//!
//! The upstreams and the proxy are child processes of the current executable,
//! so the resident set and the descriptors measured are the server's own, not
//! the load generator's. The scenario is the demo's ([`crate::tools::scenario`]):
//! a primary failing in a random mix of faults
//! ([`FaultPlan::Random`](crate::oracle::fault::FaultPlan), no outages, no
//! breaker opening), a fallback that rejects prefill and repeats words, and a
//! healthy instruct fallback that repeats a word and a space, over two ladders
//! so both fallback orders take part (the reasoning ladder is configured but
//! not driven: the soak checks answer text only).
//!
//! Clients are `concurrency` workers taking session numbers from one counter,
//! so that many streams are open at once until the last few. Each session's
//! text must equal the oracle's answer to its conversation. The server's
//! `VmRSS` is read before the load, after each tenth of the sessions (the
//! first tenth is the warm-up), and after the load has drained; its open
//! descriptors (`/proc/<pid>/fd`) before and after.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::oracle::answer;
use crate::tools::bench::proc::{status_kib_of, Child, ChildError};
use crate::tools::bench::{connect, read_head, read_idle, SseDecoder};
use crate::tools::demo::{byte_damage, conversation};
use crate::tools::scenario;

/// After the load, how long the server may take to close what it no longer needs.
const DRAIN: Duration = Duration::from_secs(10);
/// Distinct error messages kept for the report.
const ERROR_SAMPLES: usize = 8;
/// Growth of the resident set between warm-up and 90 % that still counts as flat:
/// this fraction of the warm figure, or [`RSS_NOISE_KIB`], whichever is larger.
const RSS_NOISE_FRACTION: f64 = 0.10;
/// See [`RSS_NOISE_FRACTION`].
const RSS_NOISE_KIB: u64 = 4 * 1024;
/// The ladders sessions alternate between.
const LADDERS: [&str; 2] = ["echo-first", "steady-first"];

/// What a soak run does.
#[derive(Clone, Debug, Serialize)]
pub struct SoakOptions {
    /// Sessions to run.
    pub sessions: usize,
    /// Sessions open at once.
    pub concurrency: usize,
    /// Seed of the primary's fault mix (and part of every conversation).
    pub seed: u64,
    /// The upstreams' time before the first chunk (ms).
    pub first_token_ms: u64,
    /// The upstreams' time between chunks (ms).
    pub interval_ms: u64,
    /// A client gives up on a session when no byte came for this long (s).
    pub idle_timeout_s: u64,
    /// The server shares its state through this Redis (`[state] redis_url`).
    pub redis_url: Option<String>,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            sessions: 100_000,
            concurrency: 300,
            seed: 1,
            first_token_ms: 20,
            interval_ms: 5,
            idle_timeout_s: 60,
            redis_url: None,
        }
    }
}

/// The server's resident set at points of the run (KiB).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RssFigures {
    /// Before any session.
    pub start: u64,
    /// After 10 % of the sessions: the warm-up is over.
    pub warm: u64,
    /// After 50 %.
    pub middle: u64,
    /// After 90 % (the load is still full).
    pub late: u64,
    /// After the last session, once the load drained.
    pub end: u64,
    /// The largest sample (every 100 ms).
    pub peak: u64,
    /// After each tenth of the sessions: 10 %, 20 %, … 100 %.
    pub tenths: Vec<u64>,
    /// `late - warm`: growth under the same load after warm-up.
    pub growth_after_warmup: i64,
}

/// What a soak run measured.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// What was run.
    pub options: SoakOptions,
    /// Sessions run.
    pub sessions: usize,
    /// Sessions whose text equals the oracle's answer byte for byte.
    pub intact: usize,
    /// Sessions that ended cleanly with a different text.
    pub damaged: usize,
    /// Sessions that ended in an error (HTTP status, error event, transport, timeout).
    pub errors: usize,
    /// Bytes of the oracle's answers missing from what clients received.
    pub lost_bytes: u64,
    /// Bytes clients received that the oracle's answers do not have.
    pub doubled_bytes: u64,
    /// Handovers, from the server's `/metrics`.
    pub handovers: u64,
    /// Failed upstream attempts, from the server's `/metrics`.
    pub upstream_failures: u64,
    /// The server's resident set (KiB).
    pub rss_kib: RssFigures,
    /// The server's open descriptors before the load.
    pub fds_start: usize,
    /// …and after it drained.
    pub fds_end: usize,
    /// The server's gauges after the load drained (`/metrics`), by series.
    pub gauges_end: BTreeMap<String, f64>,
    /// Wall time of the load (s).
    pub elapsed_s: f64,
    /// Sessions per second.
    pub sessions_per_second: f64,
    /// The server's CPU time (user + system) per session during the load, in µs
    /// (`None` where `/proc` cannot tell).
    pub server_cpu_us_per_session: Option<f64>,
    /// Some of the errors and damages, each once.
    pub samples: Vec<String>,
    /// Every session intact, no byte lost or doubled.
    pub all_intact: bool,
    /// No growth beyond noise after warm-up (see `rss_kib`).
    pub rss_flat: bool,
    /// The server holds no more descriptors than before the load.
    pub no_fd_leak: bool,
}

/// Why a soak could not run.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    /// The path of the running executable is unknown.
    #[error("cannot find the baton executable: {0}")]
    Exe(std::io::Error),
    /// A child process could not be started.
    #[error(transparent)]
    Child(#[from] ChildError),
    /// The scratch directory or the config file could not be written.
    #[error("cannot write {path}: {source}")]
    Scratch {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The options make no sense.
    #[error("{0}")]
    Options(String),
}

/// The proxy's config: the demo scenario over the mock upstreams at `addrs` (by upstream name).
fn serve_config(addrs: &BTreeMap<&str, SocketAddr>, redis_url: Option<&str>) -> String {
    let addr = |name: &str| {
        addrs
            .get(name)
            .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string())
    };
    let mut config = scenario::render_config(&scenario::Render {
        listen: "127.0.0.1:0",
        addr: &addr,
        // The breaker never opens: the soak is about every fault, every time, not about skipping the primary.
        flaky_cool_down_ms: None,
        header: "# written by `baton soak` from the demo scenario (src/tools/scenario.rs)\n",
    });
    if let Some(url) = redis_url {
        config.push_str(&format!(
            "\n[state]\nredis_url = {}\nkey_prefix = \"baton-soak:\"\n",
            toml::Value::String(url.to_string())
        ));
    }
    config
}

/// The scenario's upstreams and the proxy, all children of this process.
struct World {
    upstreams: Vec<Child>,
    proxy: Child,
    scratch: PathBuf,
}

impl World {
    async fn start(options: &SoakOptions) -> Result<World, SoakError> {
        let exe = std::env::current_exe().map_err(SoakError::Exe)?;
        let mock = |own: &[&str]| {
            let mut args: Vec<String> = ["mock", "--port", "0", "--first-token-ms"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.push(options.first_token_ms.to_string());
            // The scenario's slower thinker keeps its own pace.
            if !own.contains(&"--interval-ms") {
                args.extend(["--interval-ms".to_string(), options.interval_ms.to_string()]);
            }
            args.extend(own.iter().map(|s| s.to_string()));
            args
        };
        let mut upstreams = Vec::new();
        let mut addrs = BTreeMap::new();
        for upstream in scenario::UPSTREAMS {
            // The primary's random mix without outages: every conversation meets a fault.
            let own = scenario::mock_args(upstream, options.seed, None);
            let own: Vec<&str> = own.iter().map(String::as_str).collect();
            let child = Child::start(&exe, &mock(&own), Stdio::null()).await?;
            addrs.insert(upstream.name, child.addr);
            upstreams.push(child);
        }

        let scratch = std::env::temp_dir().join(format!("baton-soak-{}", std::process::id()));
        let scratch_error = |path: &Path, source| SoakError::Scratch {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&scratch).map_err(|e| scratch_error(&scratch, e))?;
        let config = scratch.join("soak.toml");
        std::fs::write(&config, serve_config(&addrs, options.redis_url.as_deref()))
            .map_err(|e| scratch_error(&config, e))?;
        let log_path = scratch.join("serve.log");
        let log = std::fs::File::create(&log_path).map_err(|e| scratch_error(&log_path, e))?;
        let args = [
            "serve".to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ];
        let proxy = Child::start(&exe, &args, Stdio::from(log)).await?;
        Ok(World {
            upstreams,
            proxy,
            scratch,
        })
    }

    /// The proxy's log, for when something went wrong.
    fn log_path(&self) -> PathBuf {
        self.scratch.join("serve.log")
    }

    async fn stop(self) {
        self.proxy.stop().await;
        for upstream in self.upstreams {
            upstream.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// What the clients share.
struct Load {
    target: SocketAddr,
    options: SoakOptions,
    next: AtomicUsize,
    done: AtomicUsize,
    intact: AtomicUsize,
    damaged: AtomicUsize,
    errors: AtomicUsize,
    lost: AtomicU64,
    doubled: AtomicU64,
    samples: Mutex<Vec<String>>,
    /// Every worker has returned (normally when `done` reaches the total; sooner if one panicked).
    finished: AtomicBool,
}

impl Load {
    fn sample(&self, text: String) {
        if let Ok(mut samples) = self.samples.lock() {
            if samples.len() < ERROR_SAMPLES && !samples.contains(&text) {
                samples.push(text);
            }
        }
    }

    /// One worker: sessions until none are left.
    async fn worker(self: Arc<Self>) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.options.sessions {
                return;
            }
            let messages = conversation(i, self.options.seed);
            let expected = answer(&messages);
            let ladder = LADDERS[i % LADDERS.len()];
            match self.session(ladder, &messages).await {
                Ok(text) if text == expected => {
                    self.intact.fetch_add(1, Ordering::Relaxed);
                }
                Ok(text) => {
                    let (lost, doubled) = byte_damage(&expected, &text);
                    self.damaged.fetch_add(1, Ordering::Relaxed);
                    self.lost.fetch_add(lost as u64, Ordering::Relaxed);
                    self.doubled.fetch_add(doubled as u64, Ordering::Relaxed);
                    self.sample(format!("session {i}: {lost} bytes lost, {doubled} doubled"));
                }
                Err(e) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    self.sample(format!("session {i}: {e}"));
                }
            }
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Streams one session; its text, or why it has none.
    async fn session(&self, ladder: &str, messages: &[crate::request::Message]) -> Result<String, String> {
        let body = serde_json::json!({"model": ladder, "stream": true, "messages": messages}).to_string();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.target,
            body.len()
        );
        let idle = Duration::from_secs(self.options.idle_timeout_s);
        let mut socket = connect(Ipv4Addr::LOCALHOST, self.target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        socket
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = vec![0u8; 8 * 1024];
        let head = read_head(&mut socket, &mut buf, idle).await?;
        if head.status != 200 {
            let body: String = String::from_utf8_lossy(&head.body).chars().take(200).collect();
            return Err(format!("HTTP {}: {body}", head.status));
        }
        let mut decoder = SseDecoder::new(head.chunked);
        let mut stream = ClientStream::default();
        let mut pending = head.body;
        loop {
            decoder.feed(&pending, |data| stream.see(data))?;
            if stream.done || stream.error.is_some() || decoder.ended() {
                break;
            }
            let n = read_idle(&mut socket, &mut buf, idle).await?;
            if n == 0 {
                break;
            }
            pending.clear();
            pending.extend_from_slice(&buf[..n]);
        }
        match (stream.error, stream.done) {
            (Some(e), _) => Err(format!("error event: {e}")),
            (None, false) => Err(format!("no [DONE] after {} bytes", stream.text.len())),
            (None, true) => Ok(stream.text),
        }
    }
}

/// What one client stream has received so far.
#[derive(Default)]
struct ClientStream {
    text: String,
    done: bool,
    error: Option<String>,
}

impl ClientStream {
    fn see(&mut self, data: &[u8]) {
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        let value: serde_json::Value = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(format!("unreadable chunk ({e}): {}", String::from_utf8_lossy(data)));
                return;
            }
        };
        if let Some(error) = value.get("error") {
            self.error = Some(error.to_string());
            return;
        }
        if let Some(text) = value.pointer("/choices/0/delta/content").and_then(|v| v.as_str()) {
            self.text.push_str(text);
        }
    }
}

/// `GET path` on the proxy; the body.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut socket = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response);
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// Every sample of a Prometheus text exposition, by series, and the gauges among them.
fn parse_metrics(text: &str) -> (BTreeMap<String, f64>, Vec<String>) {
    let mut samples = BTreeMap::new();
    let mut gauges = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" gauge") {
                gauges.push(name.to_string());
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some((series, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse::<f64>() {
                samples.insert(series.to_string(), v);
            }
        }
    }
    (samples, gauges)
}

/// The sum of every series of metric `name` (`name{…} v` and `name v`).
fn metric_sum(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.as_str() == name || series.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

/// Records the proxy's RSS after each tenth of the sessions, and the peak,
/// and prints progress to stderr every ten seconds.
async fn watch(load: Arc<Load>, proxy_status: String, started: Instant, rss: Arc<Mutex<RssFigures>>) {
    let total = load.options.sessions;
    let mut next_tenth = 1;
    let mut last_print = Instant::now();
    loop {
        let done = load.done.load(Ordering::Relaxed);
        let now = status_kib_of(&proxy_status, "VmRSS:").unwrap_or(0);
        if let Ok(mut r) = rss.lock() {
            r.peak = r.peak.max(now);
            while next_tenth <= 10 && done >= (total * next_tenth / 10).max(1) {
                match next_tenth {
                    1 => r.warm = now,
                    5 => r.middle = now,
                    9 => r.late = now,
                    _ => {}
                }
                r.tenths.push(now);
                next_tenth += 1;
            }
        }
        if done >= total || load.finished.load(Ordering::Relaxed) {
            return;
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "baton soak: {done}/{total} sessions, {:.0}/s, {} errors, {} damaged, server RSS {} KiB",
                done as f64 / secs,
                load.errors.load(Ordering::Relaxed),
                load.damaged.load(Ordering::Relaxed),
                now
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the soak and measures it.
pub async fn run(options: SoakOptions) -> Result<SoakReport, SoakError> {
    if options.sessions == 0 || options.concurrency == 0 {
        return Err(SoakError::Options(
            "--sessions and --concurrency must be above 0".into(),
        ));
    }
    let world = World::start(&options).await?;
    let result = drive(&world, options).await;
    if !result.as_ref().is_ok_and(|r| r.all_intact && r.no_fd_leak) {
        // The scratch directory goes away with the children: keep the server's log for a look.
        let kept = std::env::temp_dir().join(format!("baton-soak-{}-serve.log", std::process::id()));
        if std::fs::copy(world.log_path(), &kept).is_ok() {
            eprintln!("baton soak: the server's log is kept as {}", kept.display());
        }
    }
    world.stop().await;
    result
}

async fn drive(world: &World, options: SoakOptions) -> Result<SoakReport, SoakError> {
    let proxy = &world.proxy;
    let rss = Arc::new(Mutex::new(RssFigures {
        start: proxy.rss_kib(),
        ..RssFigures::default()
    }));
    let fds_start = proxy.open_fds();
    let load = Arc::new(Load {
        target: proxy.addr,
        options: options.clone(),
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        intact: AtomicUsize::new(0),
        damaged: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        lost: AtomicU64::new(0),
        doubled: AtomicU64::new(0),
        samples: Mutex::new(Vec::new()),
        finished: AtomicBool::new(false),
    });
    let cpu_start = proxy.counters();
    let started = Instant::now();
    let watcher = tokio::spawn(watch(load.clone(), proxy.proc("status"), started, rss.clone()));
    let workers: Vec<_> = (0..options.concurrency.min(options.sessions))
        .map(|_| tokio::spawn(load.clone().worker()))
        .collect();
    for worker in workers {
        if worker.await.is_err() {
            load.sample("a client task panicked".into());
        }
    }
    load.finished.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu_us_per_session = match (cpu_start, proxy.counters()) {
        (Some(a), Some(b)) => {
            let spent = b.since(&a);
            Some((spent.user_us + spent.sys_us) / options.sessions.max(1) as f64)
        }
        _ => None,
    };
    let _ = watcher.await;

    // Drained: wait for the server to let go of what the sessions held.
    let drain_until = Instant::now() + DRAIN;
    let mut fds_end = proxy.open_fds();
    while fds_end > fds_start && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fds_end = proxy.open_fds();
    }
    let (samples, gauges) = match http_get(proxy.addr, "/metrics").await {
        Some(text) => parse_metrics(&text),
        None => Default::default(),
    };
    // Read after /metrics: the scrape's own connection is closed by then.
    fds_end = fds_end.min(proxy.open_fds());
    let gauges_end = samples
        .iter()
        .filter(|(series, _)| gauges.iter().any(|g| series.split('{').next() == Some(g.as_str())))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let mut rss = rss.lock().map(|r| r.clone()).unwrap_or_default();
    rss.end = proxy.rss_kib();
    rss.growth_after_warmup = rss.late as i64 - rss.warm as i64;
    let noise = ((rss.warm as f64 * RSS_NOISE_FRACTION) as u64).max(RSS_NOISE_KIB);
    let intact = load.intact.load(Ordering::Relaxed);
    let lost_bytes = load.lost.load(Ordering::Relaxed);
    let doubled_bytes = load.doubled.load(Ordering::Relaxed);
    Ok(SoakReport {
        sessions: options.sessions,
        intact,
        damaged: load.damaged.load(Ordering::Relaxed),
        errors: load.errors.load(Ordering::Relaxed),
        lost_bytes,
        doubled_bytes,
        handovers: metric_sum(&samples, "baton_handovers_total") as u64,
        upstream_failures: metric_sum(&samples, "baton_failures_total") as u64,
        rss_flat: rss.growth_after_warmup <= noise as i64,
        rss_kib: rss,
        fds_start,
        fds_end,
        no_fd_leak: fds_end <= fds_start,
        gauges_end,
        elapsed_s: elapsed,
        sessions_per_second: options.sessions as f64 / elapsed.max(1e-9),
        server_cpu_us_per_session,
        samples: load.samples.lock().map(|s| s.clone()).unwrap_or_default(),
        all_intact: intact == options.sessions && lost_bytes == 0 && doubled_bytes == 0,
        options,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "baton soak: {} sessions, {} at once, seed {}, through `baton serve` against `baton mock` (random faults)",
            self.sessions, o.concurrency, o.seed
        )?;
        writeln!(
            f,
            "  sessions     {} intact, {} damaged, {} errors ({:.1} s, {:.0} sessions/s)",
            self.intact, self.damaged, self.errors, self.elapsed_s, self.sessions_per_second
        )?;
        if let Some(us) = self.server_cpu_us_per_session {
            writeln!(
                f,
                "  server CPU   {us:.0} µs per session (user + system){}",
                if o.redis_url.is_some() {
                    ", state shared through Redis"
                } else {
                    ""
                }
            )?;
        }
        writeln!(
            f,
            "  bytes        {} lost, {} doubled; {} handovers, {} failed upstream attempts",
            self.lost_bytes, self.doubled_bytes, self.handovers, self.upstream_failures
        )?;
        let r = &self.rss_kib;
        writeln!(
            f,
            "  server RSS   start {}, warm (10 %) {}, middle {}, 90 % {}, end {} (peak {}); growth after warm-up {:+.1} MiB",
            mib(r.start),
            mib(r.warm),
            mib(r.middle),
            mib(r.late),
            mib(r.end),
            mib(r.peak),
            r.growth_after_warmup as f64 / 1024.0
        )?;
        let tenths: Vec<String> = r.tenths.iter().map(|k| format!("{:.1}", *k as f64 / 1024.0)).collect();
        writeln!(f, "  RSS by tenth {} MiB", tenths.join(" "))?;
        writeln!(
            f,
            "  server fds   {} before, {} after the load drained",
            self.fds_start, self.fds_end
        )?;
        let gauges: Vec<String> = self
            .gauges_end
            .iter()
            // Unlabelled gauges are the server's live counts; labelled ones are per-route settings and states.
            .filter(|(k, _)| !k.contains('{'))
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !gauges.is_empty() {
            writeln!(f, "  gauges end   {}", gauges.join(", "))?;
        }
        for sample in &self.samples {
            writeln!(f, "  sample       {sample}")?;
        }
        write!(
            f,
            "  targets      every session intact: {}; RSS flat after warm-up: {}; no descriptor left over: {}",
            verdict(self.all_intact),
            verdict(self.rss_flat),
            verdict(self.no_fd_leak)
        )
    }
}

/// `baton soak`: runs, prints the report (text or one JSON object), and exits
/// non-zero when a session was not intact or the server kept descriptors.
pub async fn main(options: SoakOptions, json: bool) -> ExitCode {
    let report = match run(options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("baton soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    crate::tools::report::finish("baton soak", &report, json, report.all_intact && report.no_fd_leak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_by_name_and_gauges_are_known() {
        let text = "# TYPE baton_handovers counter\nbaton_handovers_total{from=\"a\",to=\"b\"} 3\nbaton_handovers_total{from=\"a\",to=\"c\"} 2\n# TYPE baton_active_streams gauge\nbaton_active_streams 0\n# EOF\n";
        let (samples, gauges) = parse_metrics(text);
        assert_eq!(metric_sum(&samples, "baton_handovers_total"), 5.0);
        assert_eq!(metric_sum(&samples, "baton_handovers"), 0.0);
        assert_eq!(gauges, vec!["baton_active_streams".to_string()]);
    }

    #[test]
    fn the_config_is_valid() {
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let addrs = scenario::UPSTREAMS.iter().map(|u| (u.name, a)).collect();
        let config = crate::config::Config::parse("soak.toml", &serve_config(&addrs, None), &|_| None);
        assert!(config.is_ok(), "{config:?}");
        let shared = serve_config(&addrs, Some("redis://127.0.0.1:1/0"));
        let config = crate::config::Config::parse("soak.toml", &shared, &|_| None).expect("valid");
        assert_eq!(config.state.key_prefix, "baton-soak:");
        assert!(config.state.redis_url.is_some());
    }

    #[test]
    fn client_streams_collect_text_and_errors() {
        let mut s = ClientStream::default();
        s.see(br#"{"choices":[{"delta":{"content":"h\u00e9"}}]}"#);
        s.see(br#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#);
        s.see(b"[DONE]");
        assert_eq!((s.text.as_str(), s.done, s.error.is_none()), ("hé", true, true));
        let mut s = ClientStream::default();
        s.see(br#"{"error":{"message":"all routes failed"}}"#);
        assert!(s.error.is_some_and(|e| e.contains("all routes failed")));
    }
}
