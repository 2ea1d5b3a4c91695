//! One chat session of the proxy, from its splice stream to the client:
//! its panic boundary, its bookkeeping, and how its answer leaves (whole, or
//! streamed by a body that polls the splice stream, with a slow-client limit).
//!
//! A streamed answer's response body ([`StreamBody`]) polls the splice stream
//! when hyper asks it for a frame, and encodes what is ready through a
//! [`ClientEncoder`]. When the client reads slowly hyper's write buffer
//! fills, hyper stops asking, the splice stream is not polled, and so the
//! upstream's TCP window closes: backpressure reaches the upstream, and
//! memory per session stays bounded (one frame plus hyper's write queue). The
//! watchdog's stall clock only runs while the splice stream is polled, so
//! this wait is never taken for an upstream stall. A client that takes no
//! frame for `server.slow_client_timeout_ms` gets a `slow_client` error event
//! instead of the rest, and its upstream is cancelled.

use std::any::Any;
use std::convert::Infallible;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures::{Stream, StreamExt};
use http_body::Frame;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::encode::{Answer, ClientEncoder, Flow, Gather};
use super::metrics::LadderLabels;
use super::wire::{self, ApiError};
use super::{reached, AppState, Phase};
use crate::door::Door;
use crate::engine::splice::{ClientItem, SpliceError, SpliceStream};
use crate::live::LiveGuard;
use crate::policy::reasoning::OutgoingField;
use crate::rungs::cache::CACHE_ROUTE;
use crate::rungs::safe_reply::SAFE_REPLY_ROUTE;

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
    door: Door,
    started: Instant,
    first_byte: bool,
    outcome: &'static str,
}

impl Session {
    /// A session on `ladder` through `door`, starting now.
    pub fn new(state: Arc<AppState>, ladder: String, door: Door) -> Self {
        Session {
            state,
            ladder,
            door,
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
        self.state.metrics.session(&self.ladder, self.door, self.outcome);
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

/// The first item of an answer about to be streamed, or the HTTP error it
/// gets instead: a session that fails before any text gets a proper status,
/// not a 200 stream with an error inside.
pub async fn first_item(session: &mut Session, stream: &mut Guarded) -> Result<ClientItem, ApiError> {
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
    Ok(first)
}

/// The answer streamed as SSE through `encoder`, from its `first` item on.
pub fn streamed<E: ClientEncoder + 'static>(
    session: Session,
    stream: Guarded,
    first: ClientItem,
    encoder: E,
) -> Response {
    let body = StreamBody::new(session, stream, first, encoder);
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::new(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Bytes a ready burst of items may add to one frame before it is handed to hyper.
pub const FRAME_BUDGET_BYTES: usize = 64 * 1024;

/// What of a streamed answer is still going: dropped (its upstream with it)
/// the moment the answer ends, however it ends.
struct Live<E> {
    /// Dropped with the answer, bringing the gauge down.
    _active: Active,
    session: Session,
    stream: Guarded,
    encoder: E,
    /// The item `streamed` waited for, not yet encoded.
    first: Option<ClientItem>,
    /// Frames are split off this block, so most of them cost no allocation.
    buf: BytesMut,
}

/// The block frames are written into; a new one when less than [`FRAME_ROOM`] is left.
const FRAME_BLOCK: usize = 4096;

/// Room a frame starts with: a chunk or two of text.
const FRAME_ROOM: usize = 512;

/// A streamed answer's state, shared by its body and its watch task.
struct Inner<E> {
    /// `None` once the answer ended.
    live: Option<Live<E>>,
    /// The event that ends an answer the watch task stopped, still to be sent.
    last_word: Option<Bytes>,
    /// When the body last handed hyper a frame, while hyper has not asked for the next.
    handed: Option<Instant>,
    /// The connection task's waker, for the watch task to wake it when it ends the answer.
    waker: Option<Waker>,
}

type Shared<E> = Arc<Mutex<Inner<E>>>;

fn lock<E>(shared: &Mutex<Inner<E>>) -> MutexGuard<'_, Inner<E>> {
    // Nothing panics while holding the lock (the stream's panics are caught
    // inside `Guarded`); if something did, the state is still whole.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The response body of a streamed answer. It polls the splice stream itself
/// when hyper asks for the next frame, so a client that reads slowly stops
/// the upstream through hyper's own backpressure, with no buffer or task in
/// between; a burst of ready items goes out as one frame.
///
/// When hyper's write buffer is full it stops polling the body: what must
/// happen then (the slow-client limit, the end of the shutdown grace) is the
/// watch task's, which holds no chunk and wakes once per limit, not per chunk.
struct StreamBody<E> {
    shared: Shared<E>,
    watch: AbortHandle,
}

impl<E: ClientEncoder + 'static> StreamBody<E> {
    fn new(session: Session, stream: Guarded, first: ClientItem, encoder: E) -> Self {
        let state = session.state.clone();
        let shared = Arc::new(Mutex::new(Inner {
            live: Some(Live {
                _active: Active::new(&state),
                session,
                stream,
                encoder,
                first: Some(first),
                buf: BytesMut::new(),
            }),
            last_word: None,
            handed: None,
            waker: None,
        }));
        let watch = tokio::spawn(watch(
            shared.clone(),
            state.phase.clone(),
            state.limits.slow_client_timeout,
        ))
        .abort_handle();
        StreamBody { shared, watch }
    }
}

/// Why the watch task ended an answer.
enum Stop {
    SlowClient(Duration),
    Shutdown,
}

/// `at + after`, or a year on when that is past what an `Instant` holds (the
/// limit is configured in ms up to `u64::MAX`).
fn later(at: Instant, after: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    at.checked_add(after).or_else(|| at.checked_add(YEAR)).unwrap_or(at)
}

/// Ends a streamed answer that the client stopped taking for `slow_after`, or
/// that the shutdown's grace outlived: its last word replaces the rest.
async fn watch<E: ClientEncoder>(shared: Shared<E>, mut phase: watch::Receiver<Phase>, slow_after: Duration) {
    let mut check = later(Instant::now(), slow_after);
    let stop = loop {
        tokio::select! {
            biased;
            () = reached(&mut phase, Phase::Stopped) => break Stop::Shutdown,
            () = tokio::time::sleep_until(check) => {
                let inner = lock(&shared);
                if inner.live.is_none() {
                    return;
                }
                let now = Instant::now();
                match inner.handed {
                    Some(at) if now.saturating_duration_since(at) >= slow_after => break Stop::SlowClient(slow_after),
                    Some(at) => check = later(at, slow_after),
                    None => check = later(now, slow_after),
                }
            }
        }
    };
    let mut inner = lock(&shared);
    let Some(mut live) = inner.live.take() else {
        return;
    };
    let mut word = BytesMut::new();
    match stop {
        Stop::SlowClient(after) => {
            live.session.outcome = "slow_client";
            live.session.state.metrics.slow_clients.inc();
            let message = format!(
                "the client took no data for {} ms (server.slow_client_timeout_ms); the answer is incomplete",
                after.as_millis()
            );
            live.encoder.error(&message, "slow_client", &mut word);
        }
        Stop::Shutdown => {
            live.session.outcome = "failed";
            live.encoder.error(
                "baton is shutting down; the answer is incomplete",
                wire::SHUTTING_DOWN,
                &mut word,
            );
        }
    }
    inner.last_word = Some(word.freeze());
    let waker = inner.waker.take();
    drop(inner);
    // Dropping the stream cancels its upstream; the session counts itself.
    drop(live);
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl<E: ClientEncoder + 'static> http_body::Body for StreamBody<E> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let mut inner = lock(&self.shared);
        inner.handed = None;
        if !inner.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            inner.waker = Some(cx.waker().clone());
        }
        let Some(live) = inner.live.as_mut() else {
            return Poll::Ready(inner.last_word.take().map(|word| Ok(Frame::data(word))));
        };
        if live.buf.capacity() < FRAME_ROOM {
            live.buf = BytesMut::with_capacity(FRAME_BLOCK);
        }
        let out = &mut live.buf;
        let mut ended = false;
        if let Some(first) = live.first.take() {
            ended = live.encoder.item(&first, out) == Flow::End;
        }
        while !ended && out.len() < FRAME_BUDGET_BYTES {
            match Pin::new(&mut live.stream).poll_next(cx) {
                Poll::Ready(Some(Ok(item))) => {
                    live.session.see(&item);
                    ended = live.encoder.item(&item, out) == Flow::End;
                }
                Poll::Ready(Some(Err(panic))) => {
                    live.session.panicked(&panic);
                    live.encoder.error(
                        "baton failed while serving this answer (the error was logged); it is incomplete",
                        "internal_error",
                        out,
                    );
                    ended = true;
                }
                Poll::Ready(None) => ended = true,
                Poll::Pending => break,
            }
        }
        let frame = out.split().freeze();
        let over = if ended { inner.live.take() } else { None };
        let frame = if frame.is_empty() {
            if ended {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        } else {
            inner.handed = Some(Instant::now());
            Poll::Ready(Some(Ok(Frame::data(frame))))
        };
        drop(inner);
        if over.is_some() {
            self.watch.abort();
            drop(over);
        }
        frame
    }
}

impl<E> Drop for StreamBody<E> {
    fn drop(&mut self) {
        // The client went away (or the answer is over): the stream goes now,
        // which cancels its upstream.
        self.watch.abort();
        let live = lock(&self.shared).live.take();
        drop(live);
    }
}

/// The whole answer, gathered (its reasoning in the field `reasoning_field` says),
/// for a door to render; a session that ends without one is an error.
pub async fn whole(
    mut session: Session,
    mut stream: Guarded,
    reasoning_field: OutgoingField,
) -> Result<Answer, ApiError> {
    let mut gather = Gather::new(reasoning_field);
    while let Some(item) = stream.next().await {
        let item = match item {
            Ok(item) => item,
            Err(panic) => {
                session.panicked(&panic);
                return Err(ApiError::internal());
            }
        };
        session.see(&item);
        if let Some(done) = gather.item(item) {
            return done;
        }
    }
    Err(gather.cut_short())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_client_limit_past_what_an_instant_holds_is_a_far_deadline_not_a_panic() {
        let now = Instant::now();
        let far = later(now, Duration::from_millis(u64::MAX));
        assert!(far >= now + Duration::from_secs(364 * 24 * 3600), "{:?}", far - now);
        assert_eq!(later(now, Duration::from_millis(300)), now + Duration::from_millis(300));
    }
}
