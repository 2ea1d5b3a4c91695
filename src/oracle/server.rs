//! The oracle as an OpenAI-compatible SSE server on loopback (`baton mock`).
//!
//! Written on raw TCP rather than a web framework because its job is to
//! misbehave in ways a framework will not: reset before headers, accept and
//! never answer, cut a chunked body in the middle.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::fault::FaultPlan;
use super::script::{Pacing, Step};
use super::{reply, Style};
use crate::provider::mock::plan_steps;
use crate::provider::UpstreamRequest;
use crate::request::Message;

/// Largest request head the server reads.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body the server reads.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// How a mock server behaves.
#[derive(Clone, Copy, Debug)]
pub struct MockConfig {
    /// Which fault each request gets.
    pub plan: FaultPlan,
    /// How continuations are phrased.
    pub style: Style,
    /// How fast it streams.
    pub pacing: Pacing,
}

struct Shared {
    config: MockConfig,
    requests: AtomicU32,
}

/// Serves the oracle on `listener` until `shutdown` completes; open connections are then dropped.
pub async fn run(listener: TcpListener, config: MockConfig, shutdown: impl Future<Output = ()>) {
    let shared = Arc::new(Shared {
        config,
        requests: AtomicU32::new(0),
    });
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let shared = shared.clone();
                    connections.spawn(async move {
                        if let Err(e) = serve(socket, &shared).await {
                            tracing::debug!("mock connection ended: {e}");
                        }
                    });
                }
                Err(e) => tracing::warn!("mock accept failed: {e}"),
            },
        }
    }
    connections.abort_all();
}

/// Binds 127.0.0.1 on a free port and serves there in the background.
/// Dropping the returned handle's sender stops the server.
pub async fn spawn(config: MockConfig) -> io::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(listener, config, async move {
        let _ = stopped.await;
    }));
    Ok((addr, stop))
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
}

async fn serve(mut socket: TcpStream, shared: &Shared) -> io::Result<()> {
    let Some((method, path, body)) = read_request(&mut socket).await? else {
        return Ok(());
    };
    if method == "GET" && path.ends_with("/models") {
        let list = json!({"object": "list", "data": [{"id": "oracle", "object": "model", "owned_by": "baton"}]});
        return write_json(&mut socket, 200, None, &list.to_string()).await;
    }
    if method != "POST" || !path.ends_with("/chat/completions") {
        let err = json!({"error": {"message": format!("no route for {method} {path}"), "type": "invalid_request_error", "code": "not_found"}});
        return write_json(&mut socket, 404, None, &err.to_string()).await;
    }
    let body: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            let err = json!({"error": {"message": format!("invalid request body: {e}"), "type": "invalid_request_error", "code": "invalid_json"}});
            return write_json(&mut socket, 400, None, &err.to_string()).await;
        }
    };
    let n = shared.requests.fetch_add(1, Ordering::Relaxed);
    let config = &shared.config;
    let request = UpstreamRequest {
        model: body.model,
        messages: body.messages,
        params: Default::default(),
        continue_final_message: false,
    };
    let steps = plan_steps(&config.plan, config.style, config.pacing, n, &request);
    if !body.stream {
        return serve_whole(&mut socket, &request, config.style, &steps).await;
    }
    for step in steps {
        match step {
            Step::Status {
                status,
                retry_after,
                body,
            } => return write_json(&mut socket, status, retry_after, &body).await,
            Step::Reset => {
                socket.set_zero_linger()?;
                return Ok(());
            }
            Step::Hang => return hang(&mut socket).await,
            Step::Open => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                socket.write_all(head.as_bytes()).await?;
            }
            Step::Wait(d) => tokio::time::sleep(d).await,
            Step::Data(data) => {
                let event = format!("data: {data}\n\n");
                socket
                    .write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
                    .await?;
            }
            Step::Cut => return Ok(()),
            Step::End => {
                socket.write_all(b"0\r\n\r\n").await?;
                return socket.shutdown().await;
            }
        }
    }
    Ok(())
}

/// A non-streaming request: the same faults before headers, else the whole reply as one JSON.
async fn serve_whole(
    socket: &mut TcpStream,
    request: &UpstreamRequest,
    style: Style,
    steps: &[Step],
) -> io::Result<()> {
    match steps.first() {
        Some(Step::Status {
            status,
            retry_after,
            body,
        }) => write_json(socket, *status, *retry_after, body).await,
        Some(Step::Reset) => socket.set_zero_linger(),
        Some(Step::Hang) => hang(socket).await,
        _ => {
            let text = reply(&request.messages, style).text;
            let body = json!({
                "id": "chatcmpl-oracle",
                "object": "chat.completion",
                "model": request.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            });
            write_json(socket, 200, None, &body.to_string()).await
        }
    }
}

/// Keeps the connection open, answering nothing, until the client goes away.
async fn hang(socket: &mut TcpStream) -> io::Result<()> {
    let mut sink = [0u8; 1024];
    while socket.read(&mut sink).await? > 0 {}
    Ok(())
}

async fn write_json(socket: &mut TcpStream, status: u16, retry_after: Option<u32>, body: &str) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let retry = retry_after.map(|s| format!("retry-after: {s}\r\n")).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry}connection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(body.as_bytes()).await?;
    socket.shutdown().await
}

/// Reads one HTTP/1.1 request: method, path and body. `None` if the client closed first.
pub async fn read_request(socket: &mut TcpStream) -> io::Result<Option<(String, String, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 8192];
    let head_len = loop {
        let n = socket.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed
        .parse(&buf[..head_len])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let method = parsed.method.unwrap_or("").to_string();
    let path = parsed.path.unwrap_or("").to_string();
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if length > MAX_BODY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "request body too large"));
    }
    let mut body = buf[head_len..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&tmp[..n]);
    }
    body.truncate(length);
    Ok(Some((method, path, body)))
}
