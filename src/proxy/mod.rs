//! `baton serve`: an OpenAI-compatible proxy in front of the splicer.
//!
//! * `POST /v1/chat/completions`: streaming and not, spliced along the ladder
//!   the requested model names.
//! * `GET /v1/models`: the ladders and their routes.
//! * `GET /events`: the live [`EngineEvent`] feed as SSE.
//! * `GET /metrics`: Prometheus text.
//! * `GET /healthz`.
//!
//! [`serve`] takes an injected listener and a shutdown future, so tests bind
//! `127.0.0.1:0` and talk real HTTP to it.

pub mod metrics;
pub mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use uuid::Uuid;

use crate::config::{glob_match, Config, Secret};
use crate::event::EngineEvent;
use crate::record::{RecordOptions, Recorder};
use crate::request::ChatRequest;
use crate::splice::{ClientItem, SpliceError, SpliceStream, Splicer, EVENT_CAPACITY};
use metrics::Metrics;
use wire::{ApiError, ChunkWriter};

/// Where the server is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Serving.
    Running,
    /// A shutdown signal came: no new connections; streams in flight go on.
    Draining,
    /// The grace period is over: streams in flight end with an error event.
    Stopped,
}

/// One ladder the proxy serves.
struct Entry {
    name: String,
    pattern: Option<String>,
    routes: Vec<String>,
    splicer: Splicer,
}

/// Everything a request handler needs.
pub struct AppState {
    entries: Vec<Entry>,
    api_key: Option<Secret>,
    /// The metrics `/metrics` renders.
    pub metrics: Metrics,
    events: broadcast::Sender<EngineEvent>,
    phase: watch::Receiver<Phase>,
}

impl AppState {
    fn entry_for(&self, model: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == model).or_else(|| {
            self.entries
                .iter()
                .find(|e| e.pattern.as_deref().is_some_and(|p| glob_match(p, model)))
        })
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else { return Ok(()) };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), key.expose().as_bytes()) => Ok(()),
            Some(_) => Err(unauthorized("the API key is wrong")),
            None => Err(unauthorized(
                "an API key is required: send `Authorization: Bearer <key>`",
            )),
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_string(),
        kind: "invalid_request_error",
        code: "invalid_api_key",
    }
}

/// Compares without an early exit, so timing does not reveal the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Builds the router for `config`; `phase` tells handlers when the server shuts down.
pub fn router(config: &Config, phase: watch::Receiver<Phase>) -> (Router, Arc<AppState>) {
    let events = broadcast::channel(EVENT_CAPACITY).0;
    let entries = config
        .ladders
        .iter()
        .map(|l| Entry {
            name: l.name.clone(),
            pattern: l.pattern.clone(),
            routes: l.ladder.routes.iter().map(|r| r.name.to_string()).collect(),
            splicer: Splicer::with_events(l.ladder.clone(), events.clone()),
        })
        .collect();
    let state = Arc::new(AppState {
        entries,
        api_key: config.api_key.clone(),
        metrics: Metrics::new(),
        events,
        phase,
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/events", get(events_feed))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such endpoint; baton serves /v1/chat/completions, /v1/models, /events, /metrics, /healthz"
                    .into(),
                kind: "invalid_request_error",
                code: "not_found",
            }
        })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state.clone());
    (router, state)
}

/// Serves `config` on `listener` until `shutdown` completes, then drains:
/// streams in flight may finish for `config.shutdown_grace`, then end with an error event.
pub async fn serve(
    listener: TcpListener,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (router, state) = router(config, phase_rx);
    // Recording: subscribed before the first request, written off the hot path.
    let recorder = match &config.record_dir {
        Some(dir) => {
            let mut options = RecordOptions::new(dir);
            if let Some(key) = &config.api_key {
                options = options.redact(key.expose());
            }
            let recorder = Recorder::attach(&state.events, options)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot record to {}: {e}", dir.display())))?;
            tracing::info!(dir = %dir.display(), "recording every session");
            Some(recorder)
        }
        None => None,
    };
    let grace = config.shutdown_grace;
    let served = axum::serve(
        // Each SSE chunk should leave at once, not wait for Nagle.
        listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        router,
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = phase_tx.send(Phase::Draining);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = phase_tx.send(Phase::Stopped);
        });
    })
    .await;
    if let Some(recorder) = recorder {
        let stats = recorder.finish().await;
        if stats.dropped > 0 || stats.write_errors > 0 {
            tracing::warn!("recording: {stats}");
        } else {
            tracing::info!("recording: {stats}");
        }
    }
    served
}

async fn chat(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    match chat_inner(&state, &headers, body).await {
        Ok(response) => response,
        Err(error) => {
            state.metrics.reject(error.code);
            error.into_response()
        }
    }
}

async fn chat_inner(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.authorize(headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: "the request body is larger than the server's limit (server.max_body_bytes)".into(),
                kind: "invalid_request_error",
                code: "request_too_large",
            }
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })?;
    let parsed = wire::parse_request(&body)?;
    let Some(entry) = state.entry_for(&parsed.model) else {
        let known: Vec<&str> = state.entries.iter().map(|e| e.name.as_str()).collect();
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "no ladder serves model {:?}; ask for one of: {}",
                parsed.model,
                known.join(", ")
            ),
            kind: "invalid_request_error",
            code: "model_not_found",
        });
    };
    let mut request = ChatRequest::new(parsed.messages);
    request.params = parsed.params;
    request.model = Some(parsed.model);
    let session = Session {
        state: state.clone(),
        ladder: entry.name.clone(),
        started: Instant::now(),
        first_byte: false,
        outcome: "cancelled",
    };
    let stream = entry.splicer.splice(request);
    if parsed.stream {
        streamed(session, stream, parsed.include_usage).await
    } else {
        whole(session, stream).await
    }
}

/// Per-session bookkeeping; counts the session when dropped, so a client that
/// goes away is counted as `cancelled` and the active-stream gauge comes back down.
struct Session {
    state: Arc<AppState>,
    ladder: String,
    started: Instant,
    first_byte: bool,
    outcome: &'static str,
}

impl Session {
    fn see(&mut self, item: &ClientItem) {
        let metrics = &self.state.metrics;
        match item {
            ClientItem::Text { .. } | ClientItem::ToolCalls { .. } if !self.first_byte => {
                self.first_byte = true;
                metrics
                    .ttft
                    .get_or_create(&metrics::LadderLabels {
                        ladder: self.ladder.clone(),
                    })
                    .observe(self.started.elapsed().as_secs_f64());
            }
            ClientItem::Handover(h) => metrics.handover(h),
            ClientItem::Done(done) => {
                metrics.failures(&done.failures);
                self.outcome = "complete";
            }
            ClientItem::Failed(error) => {
                let (failures, outcome) = match error {
                    SpliceError::Refused { failures, .. } => (failures, "refused"),
                    SpliceError::Exhausted { failures, .. } => (failures, "failed"),
                };
                metrics.failures(failures);
                self.outcome = outcome;
            }
            _ => {}
        }
    }
}

/// Resolves once the server has reached `phase` (or its sender is gone).
async fn reached(phase: &mut watch::Receiver<Phase>, at_least: Phase) {
    let order = |p: Phase| p as u8;
    // `is_ok` drops the borrow guard at once, so it is never held across an await.
    let _ = phase.wait_for(|p| order(*p) >= order(at_least)).await.is_ok();
}

impl Session {
    fn mark(&mut self, outcome: &'static str) {
        self.outcome = outcome;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.state.metrics.session(&self.ladder, self.outcome);
    }
}

/// Holds the active-stream gauge up while a streamed response lives.
struct Active(Arc<AppState>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.metrics.active_streams.dec();
    }
}

async fn streamed(mut session: Session, mut stream: SpliceStream, include_usage: bool) -> Result<Response, ApiError> {
    // Wait for the first item: a session that fails before any text gets a
    // proper HTTP error status instead of a 200 stream with an error inside.
    let first = match stream.next().await {
        Some(item) => item,
        None => {
            return Err(ApiError::from_splice(&SpliceError::Exhausted {
                failures: Vec::new(),
                emitted_bytes: 0,
            }))
        }
    };
    session.see(&first);
    if let ClientItem::Failed(error) = &first {
        return Err(ApiError::from_splice(error));
    }
    session.state.metrics.active_streams.inc();
    let active = Active(session.state.clone());
    let mut phase = session.state.phase.clone();
    let mut writer = ChunkWriter::new(format!("chatcmpl-{}", Uuid::new_v4().simple()));
    let body = async_stream::stream! {
        let _active = active;
        let mut model = String::new();
        let mut next = Some(first);
        loop {
            let item = match next.take() {
                Some(item) => item,
                None => tokio::select! {
                    item = stream.next() => match item {
                        Some(item) => item,
                        None => break,
                    },
                    _ = reached(&mut phase, Phase::Stopped) => {
                        session.mark("failed");
                        yield Ok::<Bytes, Infallible>(wire::error_event("baton is shutting down; the answer is incomplete", "server_shutdown"));
                        break;
                    }
                },
            };
            session.see(&item);
            match item {
                ClientItem::Text { text, model: m, .. } => {
                    if *m != *model {
                        model = m.to_string();
                    }
                    yield Ok(writer.text(&model, &text));
                }
                ClientItem::ToolCalls { deltas, model: m, .. } => {
                    model = m.to_string();
                    yield Ok(writer.tool_calls(&model, &deltas));
                }
                ClientItem::Handover(h) => yield Ok(wire::handover_comment(&h)),
                ClientItem::Done(done) => {
                    yield Ok(writer.finish(&model, &done.finish_reason));
                    if include_usage {
                        yield Ok(writer.usage(&model, done.usage));
                    }
                    yield Ok(Bytes::from_static(wire::DONE));
                    break;
                }
                ClientItem::Failed(error) => {
                    // Text was already sent: end with an error, never with [DONE].
                    yield Ok(wire::error_event(&error.to_string(), "all_routes_failed"));
                    break;
                }
            }
        }
    };
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

async fn whole(mut session: Session, mut stream: SpliceStream) -> Result<Response, ApiError> {
    let mut text = String::new();
    let mut model = String::new();
    let mut tool_deltas: Vec<Value> = Vec::new();
    while let Some(item) = stream.next().await {
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
            ClientItem::Handover(_) => {}
            ClientItem::Done(done) => {
                let mut message = json!({"role": "assistant", "content": text});
                if !tool_deltas.is_empty() {
                    message["tool_calls"] = json!(wire::merge_tool_calls(&tool_deltas));
                }
                let writer = ChunkWriter::new(format!("chatcmpl-{}", Uuid::new_v4().simple()));
                let body = json!({
                    "id": writer.id(),
                    "object": "chat.completion",
                    "created": writer.created(),
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": done.finish_reason}],
                    "usage": wire::usage_json(done.usage),
                    "baton": {"route_chain": done.route_chain, "failures": done.failures.len()},
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
    }))
}

async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = state.authorize(&headers) {
        return e.into_response();
    }
    let data: Vec<Value> = state
        .entries
        .iter()
        .map(|e| json!({"id": e.name, "object": "model", "owned_by": "baton", "match": e.pattern, "routes": e.routes}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = state.authorize(&headers) {
        return e.into_response();
    }
    for route in state.entries.iter().flat_map(|e| e.splicer.ladder().routes.iter()) {
        let value = match route.health.state() {
            crate::breaker::BreakerState::Closed => 0,
            crate::breaker::BreakerState::HalfOpen => 1,
            crate::breaker::BreakerState::Open => 2,
        };
        state
            .metrics
            .breaker_state
            .get_or_create(&metrics::RouteLabels {
                route: route.name.to_string(),
            })
            .set(value);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

async fn events_feed(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = state.authorize(&headers) {
        return e.into_response();
    }
    let mut phase = state.phase.clone();
    let events = BroadcastStream::new(state.events.subscribe());
    let feed_state = state.clone();
    let feed = events
        .map(move |item| -> Result<Event, Infallible> {
            Ok(match item {
                Ok(event) => match serde_json::to_string(&event) {
                    Ok(json) => Event::default().data(json),
                    Err(_) => Event::default().comment("unserializable event"),
                },
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    feed_state.metrics.events_dropped.inc_by(n);
                    Event::default().comment(format!("dropped {n} events"))
                }
            })
        })
        .take_until(async move { reached(&mut phase, Phase::Draining).await });
    Sse::new(feed)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
