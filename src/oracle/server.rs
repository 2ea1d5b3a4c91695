//! The oracle as an OpenAI-compatible SSE server on loopback (`baton mock`).
//! It also answers Anthropic's Messages API (`POST …/messages`): the same
//! answers and faults, as `message_start` … `message_stop` events, errors in
//! Anthropic's shape, and an error event as `overloaded_error`.
//!
//! Written on raw TCP rather than a web framework because its job is to
//! misbehave in ways a framework will not: reset before headers, accept and
//! never answer, cut a chunked body in the middle.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::fault::FaultPlan;
use super::script::{Pacing, Step};
use super::{reply, Style};
use crate::oracle::provider::{plan_steps, RequestCounter};
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
    requests: RequestCounter,
}

/// Serves the oracle on `listener` until `shutdown` completes; open connections are then dropped.
pub async fn run(listener: TcpListener, config: MockConfig, shutdown: impl Future<Output = ()>) {
    let shared = Arc::new(Shared {
        config,
        requests: RequestCounter::default(),
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
    /// Anthropic's system prompt, apart from the messages.
    #[serde(default)]
    system: Option<String>,
}

async fn serve(mut socket: TcpStream, shared: &Shared) -> io::Result<()> {
    let Some((method, path, body)) = read_request(&mut socket).await? else {
        return Ok(());
    };
    if method == "GET" && path.ends_with("/models") {
        let list = json!({"object": "list", "data": [{"id": "oracle", "object": "model", "owned_by": "baton"}]});
        return write_json(&mut socket, 200, None, &list.to_string()).await;
    }
    // Anthropic's Messages API: the same oracle and faults, in Anthropic's event format.
    let anthropic = path.ends_with("/messages");
    if method != "POST" || !(path.ends_with("/chat/completions") || anthropic) {
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
    let config = &shared.config;
    let n = shared.requests.next(&config.plan, &body.model);
    let mut messages = body.messages;
    if let Some(system) = body.system {
        // The oracle's answer is a function of the whole conversation, system prompt included.
        messages.insert(0, Message::new(crate::request::Role::System, system));
    }
    let request = UpstreamRequest {
        model: body.model,
        messages,
        params: Default::default(),
        continue_final_message: false,
    };
    let steps = plan_steps(&config.plan, config.style, config.pacing, n, &request);
    if !body.stream {
        return serve_whole(&mut socket, &request, config.style, &steps).await;
    }
    let mut to_anthropic = anthropic.then(AnthropicEvents::default);
    for step in steps {
        match step {
            Step::Status {
                status,
                retry_after,
                body,
            } => {
                let body = if anthropic { anthropic_error(&body) } else { body };
                return write_json(&mut socket, status, retry_after, &body).await;
            }
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
                let event = match &mut to_anthropic {
                    Some(events) => events.translate(&data),
                    None => format!("data: {data}\n\n"),
                };
                if !event.is_empty() {
                    socket
                        .write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
                        .await?;
                }
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

/// Turns the oracle's OpenAI chunks into Anthropic stream events, one chunk at a time.
/// Reasoning becomes a `thinking` block (closed with a `signature_delta`), the
/// answer a `text` block after it.
#[derive(Default)]
struct AnthropicEvents {
    started: bool,
    output_tokens: u64,
    /// The open content block: its index and whether it is a thinking block.
    block: Option<(u32, bool)>,
    /// Blocks opened so far.
    blocks: u32,
    /// The thinking so far, which the signature is made from.
    thought: String,
}

impl AnthropicEvents {
    /// The SSE text for one OpenAI `data:` payload (empty when Anthropic has no counterpart).
    fn translate(&mut self, data: &str) -> String {
        let mut out = String::new();
        if !self.started {
            self.started = true;
            emit(
                &mut out,
                json!({"type": "message_start", "message": {"id": "msg_oracle", "type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            );
        }
        if data == "[DONE]" {
            return out;
        }
        let Ok(chunk) = serde_json::from_str::<serde_json::Value>(data) else {
            // Garbage stays garbage, in an Anthropic-named event.
            self.open(&mut out, false);
            out.push_str(&format!("event: content_block_delta\ndata: {data}\n\n"));
            return out;
        };
        if let Some(error) = chunk.get("error") {
            let message = error["message"].as_str().unwrap_or("oracle fault");
            emit(
                &mut out,
                json!({"type": "error", "error": {"type": "overloaded_error", "message": message}}),
            );
            return out;
        }
        let choice = &chunk["choices"][0];
        let thinking = ["/delta/reasoning_content", "/delta/reasoning"]
            .iter()
            .find_map(|p| choice.pointer(p).and_then(serde_json::Value::as_str));
        if let Some(text) = thinking {
            self.output_tokens += 1;
            let index = self.open(&mut out, true);
            self.thought.push_str(text);
            emit(
                &mut out,
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta", "thinking": text}}),
            );
        }
        if let Some(text) = choice.pointer("/delta/content").and_then(serde_json::Value::as_str) {
            self.output_tokens += 1;
            let index = self.open(&mut out, false);
            emit(
                &mut out,
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            );
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            let stop = if finish == "length" { "max_tokens" } else { "end_turn" };
            if self.block.is_none() {
                self.open(&mut out, false);
            }
            self.close(&mut out);
            emit(
                &mut out,
                json!({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": self.output_tokens}}),
            );
            emit(&mut out, json!({"type": "message_stop"}));
        }
        out
    }

    /// Makes sure a block of the kind asked for is open; its index.
    fn open(&mut self, out: &mut String, thinking: bool) -> u32 {
        match self.block {
            Some((index, open)) if open == thinking => return index,
            Some(_) => self.close(out),
            None => {}
        }
        let index = self.blocks;
        self.blocks += 1;
        self.block = Some((index, thinking));
        let block = if thinking {
            json!({"type": "thinking", "thinking": ""})
        } else {
            json!({"type": "text", "text": ""})
        };
        emit(
            out,
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    /// Closes the open block; a thinking block gets its signature first.
    fn close(&mut self, out: &mut String) {
        let Some((index, thinking)) = self.block.take() else {
            return;
        };
        if thinking {
            let signature = format!("oracle-sig-{:016x}", crate::oracle::text_hash(&self.thought));
            emit(
                out,
                json!({"type": "content_block_delta", "index": index, "delta": {"type": "signature_delta", "signature": signature}}),
            );
        }
        emit(out, json!({"type": "content_block_stop", "index": index}));
    }
}

/// Appends one Anthropic SSE event.
fn emit(out: &mut String, value: serde_json::Value) {
    let kind = value["type"].as_str().unwrap_or("").to_string();
    out.push_str(&format!("event: {kind}\ndata: {value}\n\n"));
}

/// An OpenAI error body in Anthropic's shape.
fn anthropic_error(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let message = value
        .pointer("/error/message")
        .and_then(serde_json::Value::as_str)
        .unwrap_or(body);
    let kind = value
        .pointer("/error/type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("api_error");
    json!({"type": "error", "error": {"type": kind, "message": message}}).to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `data:` payloads of Anthropic events, in order.
    fn events(sse: &str) -> Vec<serde_json::Value> {
        sse.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect()
    }

    #[test]
    fn reasoning_becomes_a_signed_thinking_block_before_the_text_block() {
        let mut a = AnthropicEvents::default();
        let mut sse = String::new();
        for data in [
            crate::oracle::script::reasoning_chunk_json("m", "reasoning_content", "Think"),
            crate::oracle::script::reasoning_chunk_json("m", "reasoning_content", "ing."),
            crate::oracle::script::chunk_json("m", Some("Hi"), None),
            crate::oracle::script::chunk_json("m", None, Some("stop")),
        ] {
            sse.push_str(&a.translate(&data));
        }
        let kinds: Vec<String> = events(&sse)
            .iter()
            .map(|e| {
                let delta = e.pointer("/delta/type").and_then(|t| t.as_str()).unwrap_or("");
                let block = e.pointer("/content_block/type").and_then(|t| t.as_str()).unwrap_or("");
                format!("{} {}{}", e["type"].as_str().unwrap_or(""), delta, block)
                    .trim()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start thinking",
                "content_block_delta thinking_delta",
                "content_block_delta thinking_delta",
                "content_block_delta signature_delta",
                "content_block_stop",
                "content_block_start text",
                "content_block_delta text_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let all = events(&sse);
        assert_eq!(all[6]["index"], 1, "the text block follows the thinking block");
        assert!(all[4]["delta"]["signature"]
            .as_str()
            .is_some_and(|s| s.starts_with("oracle-sig-")));
    }
}
