//! Test helpers: scripted and raw-TCP SSE upstreams, oracle upstreams, an
//! in-process `baton serve` ([`Serve`]), and an SSE body reader ([`Sse`]).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How a scripted response ends.
#[derive(Clone, Debug)]
pub enum End {
    /// `[DONE]` and a clean end of body.
    Done,
    /// Drop the connection mid-body.
    Cut,
    /// Keep the connection open, silent, until the client closes it (reported on `closed`).
    Hang,
}

/// One scripted response: SSE `data:` payloads, then an ending.
#[derive(Clone, Debug)]
pub struct Reply {
    pub data: Vec<String>,
    pub end: End,
}

/// A scripted upstream: the n-th request gets the n-th reply (the last one repeats).
pub struct Scripted {
    pub addr: SocketAddr,
    /// Bodies of the requests received, in order.
    pub bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Receives one message each time a hanging response sees its client close.
    pub closed: mpsc::UnboundedReceiver<()>,
}

impl Scripted {
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// One chunk with text content.
pub fn text(model: &str, t: &str) -> String {
    serde_json::json!({"object":"chat.completion.chunk","model":model,"choices":[{"index":0,"delta":{"content":t},"finish_reason":null}]}).to_string()
}

/// One chunk with a finish reason.
pub fn finish(model: &str, reason: &str) -> String {
    serde_json::json!({"object":"chat.completion.chunk","model":model,"choices":[{"index":0,"delta":{},"finish_reason":reason}]}).to_string()
}

/// One chunk with a tool-call delta.
pub fn tool(model: &str, delta: serde_json::Value) -> String {
    serde_json::json!({"object":"chat.completion.chunk","model":model,"choices":[{"index":0,"delta":{"tool_calls":[delta]},"finish_reason":null}]}).to_string()
}

/// Reads one HTTP request (head, then a `Content-Length` body): its head, lower-cased,
/// and its body, or `None` if the client left.
pub async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let k = socket.read(&mut tmp).await.ok()?;
        if k == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..k]);
        let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
        let len = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        if buf.len() >= i + 4 + len {
            return Some((head, buf[i + 4..i + 4 + len].to_vec()));
        }
    }
}

pub async fn scripted(replies: Vec<Reply>) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let recorded = bodies.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        while let Ok((mut socket, _)) = listener.accept().await {
            let reply = replies[n.min(replies.len() - 1)].clone();
            n += 1;
            let recorded = recorded.clone();
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut tmp = [0u8; 4096];
                let Some((_, body)) = read_request(&mut socket).await else {
                    return;
                };
                if let Ok(v) = serde_json::from_slice(&body) {
                    if let Ok(mut b) = recorded.lock() {
                        b.push(v);
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut events: Vec<String> = reply.data.iter().map(|d| format!("data: {d}\n\n")).collect();
                if matches!(reply.end, End::Done) {
                    events.push("data: [DONE]\n\n".into());
                }
                for e in events {
                    if socket
                        .write_all(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                match reply.end {
                    End::Done => {
                        let _ = socket.write_all(b"0\r\n\r\n").await;
                    }
                    End::Cut => {}
                    End::Hang => {
                        while let Ok(k) = socket.read(&mut tmp).await {
                            if k == 0 {
                                break;
                            }
                        }
                        let _ = closed_tx.send(());
                    }
                }
            });
        }
    });
    Scripted { addr, bodies, closed }
}

/// An oracle upstream (the server `baton mock` runs) with `fault`, fast pacing; its base URL and stop handle.
pub async fn oracle_upstream(fault: &str, style: baton::oracle::Style) -> (String, tokio::sync::oneshot::Sender<()>) {
    use baton::oracle::fault::{FaultPlan, FaultScript};
    let config = baton::oracle::server::MockConfig {
        plan: FaultPlan::Fixed(fault.parse::<FaultScript>().expect("a valid fault script")),
        style,
        pacing: baton::oracle::script::Pacing {
            first_token: std::time::Duration::from_millis(5),
            interval: std::time::Duration::from_millis(2),
        },
    };
    let (addr, stop) = baton::oracle::server::spawn(config).await.expect("bind loopback");
    (format!("http://{addr}/v1"), stop)
}

/// An oracle upstream with `fault` whose continuations repeat the prefix's last `repeat_words` words.
pub async fn oracle(fault: &str, repeat_words: usize) -> (String, tokio::sync::oneshot::Sender<()>) {
    oracle_upstream(
        fault,
        baton::oracle::Style {
            repeat_words,
            extra_space: false,
        },
    )
    .await
}

/// The faults every front door is tested through: a ladder name and its primary's fault script.
pub const FAULTS: [(&str, &str); 6] = [
    ("stall", "stall@20"),
    ("drop", "drop@15"),
    ("malformed", "malformed@9"),
    ("error-event", "error@30"),
    ("unavailable", "503"),
    ("healthy", "none"),
];

/// One ladder per fault of [`FAULTS`], `[fault, fallback]`, over one instruct
/// fallback that repeats two words: the config and the upstreams' stop handles.
pub async fn fault_ladders() -> (String, Vec<tokio::sync::oneshot::Sender<()>>) {
    ladders("oracle-large", "oracle-small", &FAULTS).await
}

/// One ladder per `(name, fault)`: a primary serving `model` with that fault,
/// then one instruct fallback serving `fallback_model` that repeats two words.
/// The config and the upstreams' stop handles.
pub async fn ladders(
    model: &str,
    fallback_model: &str,
    faults: &[(&str, &str)],
) -> (String, Vec<tokio::sync::oneshot::Sender<()>>) {
    let mut stops = Vec::new();
    let (fallback, stop) = oracle("none", 2).await;
    stops.push(stop);
    let mut toml = format!(
        "[[route]]\nname = \"fallback\"\nprovider = \"openai\"\nbase_url = \"{fallback}\"\nmodel = \"{fallback_model}\"\ncontinuation = \"instruct\"\n"
    );
    for (name, fault) in faults {
        let (url, stop) = oracle(fault, 0).await;
        stops.push(stop);
        toml.push_str(&format!(
            "[[route]]\nname = \"{name}\"\nprovider = \"openai\"\nbase_url = \"{url}\"\nmodel = \"{model}\"\nstall_ms = 1000\n\
             [[ladder]]\nname = \"{name}\"\nroutes = [\"{name}\", \"fallback\"]\n"
        ));
    }
    (toml, stops)
}

/// An oracle upstream whose continuations repeat the prefix's last two words (the overlap trim must drop them).
pub async fn oracle_repeating(fault: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
    oracle_upstream(
        fault,
        baton::oracle::Style {
            repeat_words: 2,
            extra_space: false,
        },
    )
    .await
}

/// A raw-TCP upstream that reads each request and hands the socket to `respond`
/// with the request's lower-cased head and JSON body: hostile upstreams write
/// whatever bytes they like. Its base URL.
pub async fn raw_upstream<F, Fut>(respond: F) -> String
where
    F: Fn(tokio::net::TcpStream, String, serde_json::Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let respond = respond.clone();
            tokio::spawn(async move {
                // Small writes go out as they are made, not coalesced by Nagle.
                let _ = socket.set_nodelay(true);
                let Some((head, body)) = read_request(&mut socket).await else {
                    return;
                };
                let body = serde_json::from_slice(&body).unwrap_or_default();
                respond(socket, head, body).await;
            });
        }
    });
    format!("http://{addr}/v1")
}

/// `bytes` as one HTTP/1.1 chunk of a `transfer-encoding: chunked` body.
pub fn http_chunk(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
    out
}

/// A `baton serve` running in-process; it shuts down gracefully when dropped
/// (or when [`Served::stop`] is called).
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    _upstreams: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Served {
    /// The URL of `path` on it.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The body of a GET of `path` (`/metrics`, `/healthz`), whatever its status.
    pub async fn get(&self, path: &str) -> String {
        reqwest::get(self.url(path))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {path} body: {e}"))
    }

    /// POSTs `body` to `/v1/chat/completions`: the response, whatever its status.
    pub async fn chat(&self, body: &serde_json::Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url("/v1/chat/completions"))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /v1/chat/completions: {e}"))
    }

    /// Asks for a graceful shutdown: streams get the configured grace period.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// The server's task: it ends with what `baton::proxy::serve` returned.
    pub fn join_handle(self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        self.done
    }
}

/// How to start a `baton serve` in-process: a config, and optionally an
/// environment, a listener, and upstreams to keep alive as long as the server.
pub struct Serve<'a> {
    toml: &'a str,
    env: Vec<(String, String)>,
    listener: Option<TcpListener>,
    upstreams: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl<'a> Serve<'a> {
    /// The config `toml`, an empty environment, a fresh listener on 127.0.0.1:0.
    pub fn new(toml: &'a str) -> Self {
        Serve {
            toml,
            env: Vec::new(),
            listener: None,
            upstreams: Vec::new(),
        }
    }

    /// The config sees the environment variable `name` set to `value`.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Serves on `listener` instead of a fresh one (for socket options set before listening).
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Keeps these upstreams' stop handles alive as long as the server.
    pub fn upstreams(mut self, upstreams: Vec<tokio::sync::oneshot::Sender<()>>) -> Self {
        self.upstreams = upstreams;
        self
    }

    /// Parses the config (panicking on a bad one) and spawns the server.
    pub async fn start(self) -> Served {
        let env = self.env;
        let lookup = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let config = baton::config::Config::parse("test.toml", self.toml, &lookup).unwrap_or_else(|e| panic!("{e}"));
        let listener = match self.listener {
            Some(listener) => listener,
            None => TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        };
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            baton::proxy::serve(listener, &config, async move {
                let _ = stopped.await;
            })
            .await
        });
        Served {
            addr,
            stop: Some(stop),
            done,
            _upstreams: self.upstreams,
        }
    }
}

/// Starts `baton serve` with the config `toml`, keeping `upstreams` (stop handles) alive as long as it.
pub async fn serve(toml: &str, upstreams: Vec<tokio::sync::oneshot::Sender<()>>) -> Served {
    Serve::new(toml).upstreams(upstreams).start().await
}

/// An SSE response body as the client read it: its `data:` payloads and its comments.
pub struct Sse {
    /// The `data:` payloads, `[DONE]` included, in order.
    pub data: Vec<String>,
    /// The comment lines, without their `: `.
    pub comments: Vec<String>,
}

impl Sse {
    /// Splits `body` into its payloads and comments.
    pub fn parse(body: &str) -> Sse {
        let mut sse = Sse {
            data: Vec::new(),
            comments: Vec::new(),
        };
        for line in body.lines() {
            if let Some(d) = line.strip_prefix("data: ") {
                sse.data.push(d.to_string());
            } else if let Some(c) = line.strip_prefix(": ") {
                sse.comments.push(c.to_string());
            }
        }
        sse
    }

    /// Whether a `[DONE]` payload came.
    pub fn done(&self) -> bool {
        self.data.iter().any(|d| d == "[DONE]")
    }

    /// Every payload but a last `[DONE]`, as JSON; panics on one that is not
    /// JSON (a `[DONE]` anywhere but last included).
    pub fn chunks(&self) -> Vec<serde_json::Value> {
        let payloads = match self.data.split_last() {
            Some((last, rest)) if last == "[DONE]" => rest,
            _ => &self.data[..],
        };
        payloads
            .iter()
            .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk json: {d}: {e}")))
            .collect()
    }

    /// The answer text: the content deltas of [`Sse::chunks`], concatenated.
    pub fn text(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(serde_json::Value::as_str)
            })
            .collect()
    }

    /// The reasoning text: the `reasoning_content` or `reasoning` deltas of [`Sse::chunks`], concatenated.
    pub fn reasoning(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| {
                let delta = c.pointer("/choices/0/delta")?;
                delta
                    .get("reasoning_content")
                    .or_else(|| delta.get("reasoning"))
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string)
            })
            .collect()
    }

    /// The last payload as JSON.
    pub fn last_json(&self) -> serde_json::Value {
        let last = self.data.last().expect("at least one event");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{last}: {e}"))
    }
}

/// The bytes of `messages`' oracle answer a client has after the mock's first
/// `k` chunks (a fault's K clamps to the chunk count, as the mock's does).
pub fn bytes_after_chunks(messages: &[baton::Message], k: usize) -> usize {
    let answer = baton::oracle::answer(messages);
    baton::oracle::chunks(&answer, baton::oracle::conversation_hash(messages))
        .iter()
        .take(k)
        .map(|c| c.len())
        .sum()
}

/// Every event `events` has received so far.
pub fn drain(events: &mut tokio::sync::broadcast::Receiver<baton::EngineEvent>) -> Vec<baton::EngineEvent> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        out.push(e);
    }
    out
}

/// `--verify`'s verdict on one session, given its events as a recording holds
/// them (each through its JSON line and back).
pub fn verify_events(events: &[baton::EngineEvent]) -> baton::record::verify::Outcome {
    let events: Vec<baton::EngineEvent> = events
        .iter()
        .map(|e| {
            let line = serde_json::to_string(e).expect("an event serializes");
            serde_json::from_str(&line).expect("and reads back")
        })
        .collect();
    let session = baton::record::reader::RecordedSession {
        id: events.first().map(|e| e.session).unwrap_or_default(),
        path: std::path::PathBuf::from("in-memory.jsonl"),
        events,
        gaps: Vec::new(),
        version: baton::record::FORMAT_VERSION,
        corrupt: false,
    };
    let verdicts = baton::record::verify::verify(std::slice::from_ref(&session));
    verdicts.into_iter().next().map(|v| v.outcome).expect("one verdict")
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("baton-test-{tag}-{}", uuid::Uuid::new_v4().simple()));
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn files(&self) -> Vec<std::path::PathBuf> {
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&self.0)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Python that has the SDK and LangChain (`.ci/run` sets it); these tests
/// are `#[ignore]`d by default, so one asked for without it fails, never passes.
pub fn python() -> std::ffi::OsString {
    std::env::var_os("BATON_OPENAI_PYTHON")
        .expect("set BATON_OPENAI_PYTHON to a python with openai and langchain-openai installed (bash .ci/run does)")
}

/// Runs `tests/<script>` with `args` under the openai SDK's Python and reads its JSON lines.
pub async fn run_python(script: &str, args: &[&str]) -> Vec<serde_json::Value> {
    run_script(python(), script, args).await
}

/// Runs `tests/<script>` with `args` under `python` and reads its JSON lines.
pub async fn run_script(python: std::ffi::OsString, script: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let script = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(python).arg(script).args(args).output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(240), output)
        .await
        .expect("the Python run finished")
        .expect("python ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}
