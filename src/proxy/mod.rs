//! `baton serve`: a proxy in front of the splicer, with three front doors
//! ([`door::Door`]), each streaming and not, spliced along the ladder the
//! requested model names:
//!
//! * `POST /v1/chat/completions`: OpenAI chat completions.
//! * `POST /v1/messages` (and `/v1/messages/count_tokens`): Anthropic Messages ([`messages`]).
//! * `POST /v1/responses`: OpenAI Responses ([`responses`]).
//! * `GET /v1/models`: the ladders and their routes.
//! * `GET /events`: the live [`EngineEvent`](crate::EngineEvent) feed as SSE.
//! * `GET /metrics`: Prometheus text.
//! * `GET /healthz`.
//!
//! [`serve`] takes an injected listener and a shutdown future, so tests bind
//! `127.0.0.1:0` and talk real HTTP to it.
//!
//! Access (`guard`): client keys open the client endpoints, the operator key
//! `/events` and `/metrics`; a keyless server refuses what only a web page
//! would send.
//!
//! Limits (`[server]`): connections have a header read timeout, a keep-alive
//! idle timeout and a write-stall limit (`conn`); sessions are capped at
//! `max_sessions` (past it: 503 with `Retry-After`), stream through a body
//! that reads the upstream only as the client takes data, with a slow-client
//! limit, and a panic inside one is caught at its boundary (`session`).

mod auto_reply;
mod conn;
pub mod door;
pub mod encode;
pub mod guard;
pub mod messages;
pub mod metrics;
pub mod responses;
mod session;
mod status;
pub mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::config::{glob_match, Config, Secret, ServerLimits};
use crate::engine::event::EventBus;
use crate::engine::splice::{Splicer, EVENT_CAPACITY};
use crate::record::{RecordOptions, Recorder};
use crate::state::sync::Syncing;
use crate::state::StateBackend;
use door::Door;
use metrics::Metrics;
use session::{Guarded, Session};
use wire::ApiError;

/// After the grace period, how long the sessions it ended have to write their
/// error to their clients before every connection still open is dropped.
const LAST_WORDS: Duration = Duration::from_secs(1);

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
    /// The field its reasoning goes out in.
    reasoning_field: crate::policy::reasoning::OutgoingField,
}

/// Everything a request handler needs.
pub struct AppState {
    entries: Vec<Entry>,
    /// The client and operator keys ([`guard`]).
    keys: guard::Keys,
    /// The keys' values, never shown on `/events` (as in recordings).
    secrets: crate::record::Secrets,
    /// The metrics `/metrics` renders.
    pub metrics: Metrics,
    events: EventBus,
    phase: watch::Receiver<Phase>,
    limits: ServerLimits,
    /// `server.max_body_bytes`: a body declared larger is refused before it is read.
    max_body_bytes: usize,
    /// One permit per session served now (`server.max_sessions`).
    slots: Arc<Semaphore>,
    /// The recorder's figures, once `serve` has started one (`/metrics` shows its losses).
    recording: std::sync::OnceLock<crate::record::StatsHandle>,
    /// Where health, facts and the cache are shared, once `serve` has started it.
    shared_state: std::sync::OnceLock<Arc<dyn StateBackend>>,
}

impl AppState {
    fn entry_for(&self, model: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == model).or_else(|| {
            self.entries
                .iter()
                .find(|e| e.pattern.as_deref().is_some_and(|p| glob_match(p, model)))
        })
    }
}

/// The keys the proxy itself takes (client, operator): never shown, never recorded.
fn own_keys(config: &Config) -> impl Iterator<Item = &Secret> {
    [&config.api_key, &config.operator_key].into_iter().flatten()
}

/// Builds the router for `config`; `phase` tells handlers when the server shuts down.
pub fn router(config: &Config, phase: watch::Receiver<Phase>) -> (Router, Arc<AppState>) {
    let events = EventBus::new(EVENT_CAPACITY);
    let entries = config
        .ladders
        .iter()
        .map(|l| Entry {
            name: l.name.clone(),
            pattern: l.pattern.clone(),
            routes: l.ladder.routes.iter().map(|r| r.name.to_string()).collect(),
            splicer: Splicer::with_events(l.ladder.clone(), events.clone()),
            reasoning_field: l.reasoning_field,
        })
        .collect();
    let state = Arc::new(AppState {
        entries,
        keys: guard::Keys {
            client: config.api_key.clone(),
            operator: config.operator_key.clone(),
        },
        secrets: crate::record::Secrets::new(&own_keys(config).map(Secret::expose).collect::<Vec<_>>()),
        metrics: Metrics::new(),
        events,
        phase,
        limits: config.limits,
        max_body_bytes: config.max_body_bytes,
        slots: Arc::new(Semaphore::new(config.limits.max_sessions.min(Semaphore::MAX_PERMITS))),
        recording: std::sync::OnceLock::new(),
        shared_state: std::sync::OnceLock::new(),
    });
    let router = Router::new()
        .route(
            Door::Chat.path(),
            post(|state, request| serve_door(Door::Chat, state, request)),
        )
        .route(
            Door::Responses.path(),
            post(|state, request| serve_door(Door::Responses, state, request)),
        )
        .route(
            Door::Messages.path(),
            post(|state, request| serve_door(Door::Messages, state, request)),
        )
        .route(
            messages::COUNT_TOKENS_PATH,
            post(|body: Bytes| async move { messages::count_tokens(&body) }),
        )
        .route("/v1/models", get(models))
        .route("/events", get(events_feed))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async {
            let doors: Vec<&str> = Door::ALL.iter().map(|d| d.path()).collect();
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "no such endpoint; baton serves {}, /v1/models, /events, /metrics, /healthz",
                    doors.join(", ")
                ),
                kind: "invalid_request_error",
                code: "not_found",
                retry_after: None,
            }
        })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: "this endpoint does not take that method; chat completions are POSTed, the rest are GETs"
                    .into(),
                kind: "invalid_request_error",
                code: "method_not_allowed",
                retry_after: None,
            }
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::layer))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state.clone());
    (router, state)
}

/// Serves `config` on `listener` until `shutdown` completes, then drains:
/// sessions in flight may finish for `config.shutdown_grace`; then streams
/// under way end with an error event, every other request gets a 503, and
/// a second later the connections still open are dropped.
pub async fn serve(
    listener: TcpListener,
    config: &Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(warning) = listener
        .local_addr()
        .ok()
        .and_then(|addr| guard::exposure_warning(addr, config.api_key.is_some()))
    {
        tracing::warn!("{warning}");
    }
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (router, state) = router(config, phase_rx);
    // Routes with `probe = "active"`: baton probes their open breakers itself, until it stops.
    let prober =
        crate::engine::probe::Prober::for_ladders(config.ladders.iter().map(|l| &l.ladder), state.events.clone());
    // Recording: subscribed before the first request, written off the hot path.
    let recorder = match &config.record_dir {
        Some(dir) => {
            let mut options = RecordOptions::new(dir);
            for key in own_keys(config) {
                options = options.redact(key.expose());
            }
            let recorder = Recorder::attach(&state.events, options)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot record to {}: {e}", dir.display())))?;
            tracing::info!(dir = %dir.display(), "recording every session");
            let _ = state.recording.set(recorder.stats_handle());
            Some(recorder)
        }
        None => None,
    };
    // Shared state: local reads, background writes; fed as long as the server runs.
    let _syncing = share_state(config, &state)?;
    let grace = config.shutdown_grace;
    let limits = conn::ConnLimits {
        header_read: config.limits.header_read_timeout,
        keep_alive: config.limits.keep_alive_timeout,
        write_stall: config.limits.write_stall_timeout,
        max_connections: config.limits.max_connections,
    };
    let counters = (
        state.metrics.connections_closed.clone(),
        state.metrics.client_connections_open.clone(),
    );
    let mut stopped = state.phase.clone();
    let kill = async move {
        reached(&mut stopped, Phase::Stopped).await;
        tokio::time::sleep(LAST_WORDS).await;
    };
    let drain = async move {
        shutdown.await;
        let _ = phase_tx.send(Phase::Draining);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = phase_tx.send(Phase::Stopped);
        });
    };
    conn::serve(listener, router, limits, counters, drain, kill).await;
    drop(prober);
    if let Some(recorder) = recorder {
        let stats = recorder.finish().await;
        if stats.dropped > 0 || stats.write_errors > 0 {
            tracing::warn!("recording: {stats}");
        } else {
            tracing::info!("recording: {stats}");
        }
    }
    Ok(())
}

/// Serves one request that came through `door`.
async fn serve_door(door: Door, State(state): State<Arc<AppState>>, request: Request) -> Response {
    // Whatever the request is waiting for (its body, a first token, a whole
    // answer), the end of the grace period ends it; a stream already under
    // way is ended by its body's watch task instead, with an error event.
    let mut phase = state.phase.clone();
    let served = tokio::select! {
        served = answer(door, &state, request) => served,
        () = reached(&mut phase, Phase::Stopped) => Err(ApiError::shutting_down()),
    };
    match served {
        Ok(response) => response,
        Err(error) => {
            state.metrics.reject(error.code);
            door.error_response(error)
        }
    }
}

async fn answer(door: Door, state: &Arc<AppState>, request: Request) -> Result<Response, ApiError> {
    // A declared length over the limit is refused at once, not after waiting for the body.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        return Err(ApiError::too_large());
    }
    // The body has the header read timeout too: a client that sent its head
    // and then trickles (or withholds) the body must not hold the connection.
    let limit = state.limits.header_read_timeout;
    let body = match tokio::time::timeout(limit, Bytes::from_request(request, &())).await {
        Ok(body) => body,
        Err(_) => {
            return Err(ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                message: format!(
                    "the request body did not arrive within {} ms (server.header_read_timeout_ms)",
                    limit.as_millis()
                ),
                kind: "invalid_request_error",
                code: "request_timeout",
                retry_after: None,
            })
        }
    };
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large()
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })?;
    let parsed = door.parse(&body)?;
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
            retry_after: None,
        });
    };
    // Any route may have to continue the answer, so each must be able to take the conversation.
    for route in &entry.splicer.ladder().routes {
        route.provider.check(&parsed.messages).map_err(|e| {
            ApiError::bad_request(
                "unsupported_content",
                format!(
                    "route {:?} of ladder {:?} cannot take this request: {e}",
                    &*route.name, entry.name
                ),
            )
        })?;
    }
    let Ok(slot) = state.slots.clone().try_acquire_owned() else {
        return Err(ApiError::overloaded(state.limits.max_sessions));
    };
    let created = wire::now_secs();
    let encoder = parsed
        .stream
        .then(|| door.encoder(&parsed, created, entry.reasoning_field));
    let request = parsed.into_chat_request(door);
    let mut session = Session::new(state.clone(), entry.name.clone(), door);
    let mut stream = Guarded::new(entry.splicer.splice(request), slot);
    match encoder {
        Some(encoder) => {
            let first = session::first_item(&mut session, &mut stream).await?;
            Ok(session::streamed(session, stream, first, encoder))
        }
        None => {
            let answer = session::whole(session, stream, entry.reasoning_field).await?;
            Ok(Json(door.whole(&answer, created)).into_response())
        }
    }
}

/// Starts sharing health, facts and the cache as `[state]` says: nothing to
/// start for one instance alone; with Redis, its background task (kept in
/// `state`, for `/metrics`) and the driver that feeds it (stopped when the
/// returned handle drops).
fn share_state(config: &Config, state: &AppState) -> std::io::Result<Option<Syncing>> {
    let Some(url) = &config.state.redis_url else {
        return Ok(None);
    };
    let shared = Arc::new(crate::state::Shared::new(
        uuid::Uuid::new_v4(),
        config.ladders.iter().map(|l| &l.ladder),
        state.events.clone(),
    ));
    let backend = redis_backend(url, &config.state.key_prefix, shared.clone())?;
    let _ = state.shared_state.set(backend.clone());
    tracing::info!(prefix = %config.state.key_prefix, instance = %shared.instance(), "sharing state through Redis");
    Ok(Some(crate::state::sync::start(shared, backend)))
}

#[cfg(feature = "redis")]
fn redis_backend(
    url: &Secret,
    prefix: &str,
    shared: Arc<crate::state::Shared>,
) -> std::io::Result<Arc<dyn StateBackend>> {
    let settings = crate::state::redis::RedisSettings {
        url: url.clone(),
        key_prefix: prefix.to_string(),
    };
    match crate::state::redis::RedisBackend::start(settings, shared) {
        Ok(backend) => Ok(backend),
        Err(e) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("state.redis_url: {e}"),
        )),
    }
}

#[cfg(not(feature = "redis"))]
fn redis_backend(
    _url: &Secret,
    _prefix: &str,
    _shared: Arc<crate::state::Shared>,
) -> std::io::Result<Arc<dyn StateBackend>> {
    // `Config::parse` refuses a Redis URL in a build without Redis; this is the same answer.
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "state.redis_url: this build of baton has no Redis support (the `redis` feature)",
    ))
}

/// A listener on `addr` with room for `backlog` connections not yet accepted
/// (`server.listen_backlog`; tokio's `bind` takes 128, too few for a burst).
pub fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's `bind` does: a restarted server can take its port at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Resolves once the server has reached `phase` (or its sender is gone).
async fn reached(phase: &mut watch::Receiver<Phase>, at_least: Phase) {
    let order = |p: Phase| p as u8;
    // `is_ok` drops the borrow guard at once, so it is never held across an await.
    let _ = phase.wait_for(|p| order(*p) >= order(at_least)).await.is_ok();
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let data: Vec<Value> = state
        .entries
        .iter()
        .map(|e| json!({"id": e.name, "object": "model", "owned_by": "baton", "match": e.pattern, "routes": e.routes}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.clear_models();
    for route in state.entries.iter().flat_map(|e| e.splicer.ladder().routes.iter()) {
        // A route with a model of its own shows it before its first request;
        // a pass-through route shows the models clients have asked of it.
        if &*route.model != crate::config::PASS_THROUGH_MODEL {
            route.health_for(None);
        }
        for health in route.health.models() {
            let stall = route.current_stall(&health);
            state.metrics.model_health(&route.name, &health, stall);
        }
    }
    for ladder in state.entries.iter().map(|e| e.splicer.ladder()) {
        if let Some(policy) = &ladder.hedge {
            state.metrics.hedges(&ladder.name, policy);
        }
        if let Some(cache) = &ladder.cache {
            let labels = metrics::LadderLabels {
                ladder: ladder.name.clone(),
            };
            state
                .metrics
                .cache_entries
                .get_or_create(&labels)
                .set(cache.store.len() as i64);
        }
    }
    if let Some(recording) = state.recording.get() {
        state.metrics.recordings_lost(recording.stats().write_errors);
    }
    let status = state
        .shared_state
        .get()
        .map_or_else(|| crate::state::Memory.status(), |backend| backend.status());
    state.metrics.state(&status);
    state.metrics.live_sessions.set(crate::live::sessions());
    state.metrics.upstream_connections_open.set(crate::live::upstreams());
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

async fn events_feed(State(state): State<Arc<AppState>>) -> Response {
    let mut phase = state.phase.clone();
    let (events, counted) = state.events.subscribe().into_parts();
    let feed_state = state.clone();
    let feed = BroadcastStream::new(events)
        .map(move |item| -> Result<Event, Infallible> {
            // Held by the stream: the subscriber counts until the client goes.
            let _listening = &counted;
            Ok(match item {
                Ok(mut event) => {
                    // The feed shows what a recording would keep, no more.
                    crate::record::scrub(&mut event);
                    match serde_json::to_string(&event) {
                        Ok(json) => Event::default().data(feed_state.secrets.apply(json)),
                        Err(_) => Event::default().comment("unserializable event"),
                    }
                }
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
