//! One chat session of the proxy, from its splice stream to the client:
//! its panic boundary, its bookkeeping, and how its answer leaves (whole, or
//! streamed through a bounded buffer with a slow-client limit).
//!
//! A streamed answer is pumped by its own task into a buffer of
//! [`STREAM_BUFFER_CHUNKS`] chunks that the response body drains. When the
//! client reads slowly the buffer fills, the pump stops pulling the splice
//! stream, and so the upstream's TCP window closes: backpressure reaches the
//! upstream, and memory per session stays bounded (this buffer plus hyper's
//! write queue). The watchdog's stall clock only runs while the splice stream
//! is polled, so this wait is never taken for an upstream stall. A client
//! that takes no chunk for `server.slow_client_timeout_ms` gets a
//! `slow_client` error event instead of the rest, and its upstream is cancelled.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use uuid::Uuid;

use super::metrics::LadderLabels;
use super::wire::{self, ApiError, ChunkWriter};
use super::{reached, AppState, Phase};
use crate::engine::splice::{ClientItem, SpliceError, SpliceStream};
use crate::live::LiveGuard;
use crate::policy::reasoning::OutgoingField;
use crate::provider::ReasoningField;
use crate::rungs::cache::CACHE_ROUTE;
use crate::rungs::safe_reply::SAFE_REPLY_ROUTE;

/// Chunks a streamed answer may hold between its pump and its client.
pub const STREAM_BUFFER_CHUNKS: usize = 32;

/// A panic caught at a session's boundary, with its message.
#[derive(Debug)]
pub struct Panicked(String);

/// A session's splice stream behind its panic boundary. It holds the
/// session's slot under `server.max_sessions` and its [`crate::live`] count,
/// so both are given back exactly when the stream (and its upstream) is dropped.
pub struct Guarded {
    inner: Option<SpliceStream>,
    _slot: OwnedSemaphorePermit,
    _live: LiveGuard,
}

impl Guarded {
    /// Guards `stream`, which holds `slot`.
    pub fn new(stream: SpliceStream, slot: OwnedSemaphorePermit) -> Self {
        Guarded {
            inner: Some(stream),
            _slot: slot,
            _live: LiveGuard::session(),
        }
    }
}

impl Stream for Guarded {
    type Item = Result<ClientItem, Panicked>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll_next(cx))) {
            Ok(Poll::Ready(Some(item))) => Poll::Ready(Some(Ok(item))),
            Ok(Poll::Ready(None)) => {
                self.inner = None;
                Poll::Ready(None)
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                // Nothing is known of the stream's state after a panic: drop it
                // (its upstream with it) and never poll it again. Its drop could
                // panic too; that must not escape either.
                if let Some(broken) = self.inner.take() {
                    let _ = catch_unwind(AssertUnwindSafe(move || drop(broken)));
                }
                Poll::Ready(Some(Err(Panicked(panic_message(payload.as_ref())))))
            }
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Per-session bookkeeping; counts the session when dropped, so a client that
/// goes away is counted as `cancelled`.
pub struct Session {
    state: Arc<AppState>,
    ladder: String,
    started: Instant,
    first_byte: bool,
    outcome: &'static str,
}

impl Session {
    /// A session on `ladder`, starting now.
    pub fn new(state: Arc<AppState>, ladder: String) -> Self {
        Session {
            state,
            ladder,
            started: Instant::now(),
            first_byte: false,
            outcome: "cancelled",
        }
    }

    fn see(&mut self, item: &ClientItem) {
        let metrics = &self.state.metrics;
        match item {
            ClientItem::Text { .. } | ClientItem::Reasoning { .. } | ClientItem::ToolCalls { .. }
                if !self.first_byte =>
            {
                self.first_byte = true;
                metrics
                    .ttft
                    .get_or_create(&LadderLabels {
                        ladder: self.ladder.clone(),
                    })
                    .observe(self.started.elapsed().as_secs_f64());
            }
            ClientItem::Handover(h) => metrics.handover(h),
            ClientItem::Done(done) => {
                metrics.failures(&done.failures);
                metrics.tokens(&done.tokens);
                // An answer the ladder's own rungs finished is counted apart: it is degraded or stale.
                self.outcome = match done.route_chain.last().map(String::as_str) {
                    Some(CACHE_ROUTE) => "cache",
                    Some(SAFE_REPLY_ROUTE) => "safe_reply",
                    _ => "complete",
                };
            }
            ClientItem::Failed(error) => {
                let (failures, outcome) = match error {
                    SpliceError::Refused { failures, .. } => (failures, "refused"),
                    SpliceError::Exhausted { failures, .. } => (failures, "failed"),
                    SpliceError::Local { failures, .. } => (failures, "local"),
                };
                metrics.failures(failures);
                metrics.tokens(error.tokens());
                self.outcome = outcome;
            }
            _ => {}
        }
    }

    /// Logs and counts a caught panic.
    fn panicked(&mut self, panic: &Panicked) {
        tracing::error!(ladder = %self.ladder, "a session panicked (the server goes on): {}", panic.0);
        self.state.metrics.session_panics.inc();
        self.outcome = "panicked";
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.state.metrics.session(&self.ladder, self.outcome);
    }
}

/// Holds the active-stream gauge up while a streamed response lives.
struct Active(Arc<AppState>);

impl Active {
    fn new(state: &Arc<AppState>) -> Self {
        state.metrics.active_streams.inc();
        Active(state.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.metrics.active_streams.dec();
    }
}

/// The answer streamed as SSE (its reasoning in the field `reasoning_field` says).
pub async fn streamed(
    mut session: Session,
    mut stream: Guarded,
    include_usage: bool,
    reasoning_field: OutgoingField,
) -> Result<Response, ApiError> {
    // Wait for the first item: a session that fails before any text gets a
    // proper HTTP error status instead of a 200 stream with an error inside.
    let first = match stream.next().await {
        Some(Ok(item)) => item,
        Some(Err(panic)) => {
            session.panicked(&panic);
            return Err(ApiError::internal());
        }
        None => {
            return Err(ApiError::from_splice(&SpliceError::Exhausted {
                failures: Vec::new(),
                emitted_bytes: 0,
                tokens: Default::default(),
            }))
        }
    };
    session.see(&first);
    if let ClientItem::Failed(error) = &first {
        return Err(ApiError::from_splice(error));
    }
    let state = session.state.clone();
    let (chunks, rx) = mpsc::channel(STREAM_BUFFER_CHUNKS);
    let (last_word, last_rx) = oneshot::channel();
    let pump = Pump {
        _active: Active::new(&state),
        session,
        stream,
        writer: ChunkWriter::new(format!("chatcmpl-{}", Uuid::new_v4().simple())),
        model: String::new(),
        chunks,
        last_word: Some(last_word),
        phase: state.phase.clone(),
        slow_after: state.limits.slow_client_timeout,
        include_usage,
        reasoning_field,
    };
    tokio::spawn(pump.run(first));
    let body = ClientBody {
        chunks: rx,
        last_word: Some(last_rx),
        over: false,
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// Moves one streamed answer from its splice stream into its client's buffer.
struct Pump {
    /// Dropped with the pump, bringing the gauge down.
    _active: Active,
    session: Session,
    stream: Guarded,
    writer: ChunkWriter,
    model: String,
    chunks: mpsc::Sender<Bytes>,
    /// The stream's last chunk when it must go out ahead of the buffered ones.
    last_word: Option<oneshot::Sender<Bytes>>,
    phase: watch::Receiver<Phase>,
    slow_after: Duration,
    include_usage: bool,
    /// The field reasoning goes out in.
    reasoning_field: OutgoingField,
}

/// Whether the pump goes on after delivering.
enum Sent {
    Go,
    Stop,
}

impl Pump {
    async fn run(mut self, first: ClientItem) {
        let mut next = Some(first);
        loop {
            let item = match next.take() {
                Some(item) => item,
                None => tokio::select! {
                    biased;
                    () = reached(&mut self.phase, Phase::Stopped) => {
                        self.end_shutdown();
                        return;
                    }
                    // The client went away: returning drops the splice stream, which cancels the upstream.
                    () = self.chunks.closed() => return,
                    item = self.stream.next() => match item {
                        Some(Ok(item)) => item,
                        Some(Err(panic)) => {
                            self.session.panicked(&panic);
                            self.end(wire::server_error_event(
                                "baton failed while serving this answer (the error was logged); it is incomplete",
                                "internal_error",
                            ));
                            return;
                        }
                        None => return,
                    },
                },
            };
            if let Sent::Stop = self.deliver(item).await {
                return;
            }
        }
    }

    /// Renders `item` into chunks and sends them.
    async fn deliver(&mut self, item: ClientItem) -> Sent {
        self.session.see(&item);
        match item {
            ClientItem::Text { text, model, .. } => {
                if *model != *self.model {
                    self.model = model.to_string();
                }
                let chunk = self.writer.text(&self.model, &text);
                self.send(chunk).await
            }
            ClientItem::Reasoning { text, field, model, .. } => {
                if *model != *self.model {
                    self.model = model.to_string();
                }
                let chunk = self
                    .writer
                    .reasoning(&self.model, &text, self.reasoning_field.apply(field));
                self.send(chunk).await
            }
            ClientItem::ToolCalls { deltas, model, .. } => {
                self.model = model.to_string();
                let chunk = self.writer.tool_calls(&self.model, &deltas);
                self.send(chunk).await
            }
            ClientItem::Handover(h) => self.send(wire::handover_comment(&h)).await,
            ClientItem::Done(done) => {
                let finish = self.writer.finish(&self.model, &done.finish_reason);
                if let Sent::Stop = self.send(finish).await {
                    return Sent::Stop;
                }
                if self.include_usage {
                    let usage = self.writer.usage(&self.model, &done.tokens);
                    if let Sent::Stop = self.send(usage).await {
                        return Sent::Stop;
                    }
                }
                let _ = self.send(Bytes::from_static(wire::DONE)).await;
                Sent::Stop
            }
            ClientItem::Failed(error) => {
                // Text was already sent: end with an error, never with [DONE]; its
                // type and code are what the status would have said before any text.
                let _ = self.send(ApiError::from_splice(&error).event()).await;
                Sent::Stop
            }
        }
    }

    /// Puts `chunk` in the client's buffer; waits while it is full, up to the slow-client limit.
    async fn send(&mut self, chunk: Bytes) -> Sent {
        let chunk = match self.chunks.try_send(chunk) {
            Ok(()) => return Sent::Go,
            Err(TrySendError::Closed(_)) => return Sent::Stop,
            Err(TrySendError::Full(chunk)) => chunk,
        };
        // The buffer is full: the client has taken nothing since it filled.
        // The timer is only armed here, off the per-token path. (A clone of
        // the sender, so the room it reserves does not borrow the pump.)
        let chunks = self.chunks.clone();
        let room = tokio::select! {
            biased;
            room = chunks.reserve() => room,
            () = reached(&mut self.phase, Phase::Stopped) => {
                self.end_shutdown();
                return Sent::Stop;
            }
            () = tokio::time::sleep(self.slow_after) => {
                self.session.outcome = "slow_client";
                self.session.state.metrics.slow_clients.inc();
                let message = format!(
                    "the client took no data for {} ms (server.slow_client_timeout_ms); the answer is incomplete",
                    self.slow_after.as_millis()
                );
                self.end(wire::server_error_event(&message, "slow_client"));
                return Sent::Stop;
            }
        };
        match room {
            Ok(permit) => {
                permit.send(chunk);
                Sent::Go
            }
            Err(_) => Sent::Stop,
        }
    }

    fn end_shutdown(&mut self) {
        self.session.outcome = "failed";
        self.end(wire::server_error_event(
            "baton is shutting down; the answer is incomplete",
            wire::SHUTTING_DOWN,
        ));
    }

    /// Ends the stream with `chunk`: after what is buffered if there is room,
    /// else instead of it (a full buffer is a client that is not reading).
    fn end(&mut self, chunk: Bytes) {
        if let Err(TrySendError::Full(chunk)) = self.chunks.try_send(chunk) {
            if let Some(last_word) = self.last_word.take() {
                let _ = last_word.send(chunk);
            }
        }
    }
}

/// The response body of a streamed answer: the buffer, unless a last word jumps it.
struct ClientBody {
    chunks: mpsc::Receiver<Bytes>,
    last_word: Option<oneshot::Receiver<Bytes>>,
    over: bool,
}

impl Stream for ClientBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.over {
            return Poll::Ready(None);
        }
        if let Some(last_word) = self.last_word.as_mut() {
            match Pin::new(last_word).poll(cx) {
                Poll::Ready(Ok(chunk)) => {
                    // What was buffered is dropped unsent: the answer ends here.
                    self.over = true;
                    self.last_word = None;
                    return Poll::Ready(Some(Ok(chunk)));
                }
                // The pump ended without a last word: what is buffered is the rest.
                Poll::Ready(Err(_)) => self.last_word = None,
                Poll::Pending => {}
            }
        }
        self.chunks.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

/// The answer as one `chat.completion` (its reasoning in the field `reasoning_field` says).
pub async fn whole(
    mut session: Session,
    mut stream: Guarded,
    reasoning_field: OutgoingField,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    // The reasoning and the field it goes out in (the first route's that reasoned).
    let mut reasoning: Option<(String, ReasoningField)> = None;
    let mut model = String::new();
    let mut tool_deltas: Vec<Value> = Vec::new();
    while let Some(item) = stream.next().await {
        let item = match item {
            Ok(item) => item,
            Err(panic) => {
                session.panicked(&panic);
                return Err(ApiError::internal());
            }
        };
        session.see(&item);
        match item {
            ClientItem::Text { text: t, model: m, .. } => {
                text.push_str(&t);
                model = m.to_string();
            }
            ClientItem::ToolCalls { deltas, model: m, .. } => {
                tool_deltas.extend(deltas);
                model = m.to_string();
            }
            ClientItem::Reasoning {
                text: t,
                field,
                model: m,
                ..
            } => {
                reasoning
                    .get_or_insert_with(|| (String::new(), reasoning_field.apply(field)))
                    .0
                    .push_str(&t);
                if model.is_empty() {
                    model = m.to_string();
                }
            }
            ClientItem::Handover(_) => {}
            ClientItem::Done(done) => {
                let mut message = json!({"role": "assistant", "content": text});
                if let Some((thought, field)) = reasoning.take() {
                    message[wire::reasoning_key(field)] = json!(thought);
                }
                if !tool_deltas.is_empty() {
                    message["tool_calls"] = json!(wire::merge_tool_calls(&tool_deltas));
                    if text.is_empty() {
                        // As OpenAI answers a call without words.
                        message["content"] = Value::Null;
                    }
                }
                let writer = ChunkWriter::new(format!("chatcmpl-{}", Uuid::new_v4().simple()));
                let body = json!({
                    "id": writer.id(),
                    "object": "chat.completion",
                    "created": writer.created(),
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": done.finish_reason}],
                    "usage": wire::usage_json(&done.tokens),
                    "baton": {
                        "route_chain": done.route_chain,
                        "failures": done.failures.len(),
                        "usage": wire::usage_account(&done.tokens),
                    },
                });
                return Ok(Json(body).into_response());
            }
            ClientItem::Failed(error) => {
                // A partial answer is never presented as complete.
                return Err(ApiError::from_splice(&error));
            }
        }
    }
    Err(ApiError::from_splice(&SpliceError::Exhausted {
        failures: Vec::new(),
        emitted_bytes: text.len() as u64,
        tokens: Default::default(),
    }))
}
