//! The proxy's connections: accepting, HTTP/1.1 on hyper, graceful shutdown,
//! and the limits that hold per connection whatever its requests do.
//!
//! * **Header read timeout**: a request head (first request: counted from the
//!   connection's start; later ones: from their first byte) must be complete
//!   within [`ConnLimits::header_read`], or the connection is closed. That is
//!   what stops a client holding a connection with half a request line.
//! * **Keep-alive idle timeout**: a connection idle for
//!   [`ConnLimits::keep_alive`] after its last response is closed.
//! * **Write stall**: a connection whose client accepts no byte for
//!   [`ConnLimits::write_stall`] is closed, with whatever it was sending, so a
//!   client that stops reading cannot pin the memory of a response forever.
//!
//! hyper's own `header_read_timeout` is left off: its timer also runs while a
//! keep-alive connection sits idle between requests, so it cannot tell a slow
//! head from an idle connection. One watcher per connection, polled in the
//! connection's own task right after it, keeps both clocks (and the write
//! stall) from what the socket and the service report.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::auto_reply;
use super::metrics::ReasonLabels;

/// The per-connection limits (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Longest time to receive a request head.
    pub header_read: Duration,
    /// Longest idle time between requests.
    pub keep_alive: Duration,
    /// Longest time the client may accept no byte of what is being sent.
    pub write_stall: Duration,
    /// Client connections open at once (see [`serve`]).
    pub max_connections: usize,
}

/// Refused connections being answered at once; past it one is just closed,
/// so answering refusals never holds many descriptors.
const MAX_REFUSING: usize = 256;

/// How long a refused connection may take to receive its 503.
const REFUSE_TIME: Duration = Duration::from_secs(1);

/// What the accept loop shares with every connection task.
struct Shared {
    closed: Family<ReasonLabels, Counter>,
    /// The client connections open now, as `/metrics` shows them.
    gauge: Gauge,
    /// The same count, which the accept loop checks against the cap.
    open: AtomicUsize,
    /// Refused connections still being answered.
    refusing: AtomicUsize,
}

impl Shared {
    fn closed(&self, reason: &str) {
        self.closed
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// One open client connection, counted until dropped.
struct Counted(Arc<Shared>);

impl Counted {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.open.fetch_add(1, Ordering::Relaxed);
        shared.gauge.inc();
        Counted(shared.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.dec();
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, lets every connection finish its requests in flight (idle ones
/// close at once), and returns when the last connection is gone, or once
/// `kill` completes, dropping the connections still open.
///
/// With [`ConnLimits::max_connections`] open, a new connection is answered
/// 503 at once and closed, and every idle keep-alive connection is closed to
/// make room: accepting never runs the process out of descriptors, and a new
/// client never waits behind idle ones.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    (closed, gauge): (Family<ReasonLabels, Counter>, Gauge),
    shutdown: impl Future<Output = ()> + Send + 'static,
    kill: impl Future<Output = ()> + Send + 'static,
) {
    let shared = Arc::new(Shared {
        closed,
        gauge,
        open: AtomicUsize::new(0),
        refusing: AtomicUsize::new(0),
    });
    // Bumped to ask every idle keep-alive connection to close.
    let (shed_tx, shed_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (kill_tx, kill_rx) = watch::channel(false);
    tokio::spawn(async move {
        kill.await;
        let _ = kill_tx.send(true);
    });
    // Every connection task holds a receiver; the sender's `closed` says all are gone.
    let (alive_tx, alive_rx) = watch::channel(());
    let mut stopping = stop_rx.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                accept_failed(e, &shed_tx).await;
                continue;
            }
        };
        if shared.open.load(Ordering::Relaxed) >= limits.max_connections {
            shed_tx.send_modify(|generation| *generation = generation.wrapping_add(1));
            refuse(tcp, limits.max_connections, &shared);
            continue;
        }
        // Each SSE chunk should leave at once, not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        tokio::spawn(connection(
            tcp,
            router.clone(),
            limits,
            Counted::new(&shared),
            Signals {
                stop: stop_rx.clone(),
                kill: kill_rx.clone(),
                shed: shed_rx.clone(),
            },
            alive_rx.clone(),
        ));
    }
    drop(alive_rx);
    drop(listener);
    alive_tx.closed().await;
}

/// Per-connection accept errors (the peer gave up) are nothing; out of
/// descriptors or memory, idle connections are closed to make room and the
/// loop pauses briefly; other errors are logged and slowed down so the loop does not spin.
async fn accept_failed(e: io::Error, shed: &watch::Sender<u64>) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    if let Some(resource) = crate::failure::local_exhaustion(&e) {
        tracing::warn!("accepting a connection failed, out of {resource} (closing idle connections): {e}");
        shed.send_modify(|generation| *generation = generation.wrapping_add(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        return;
    }
    tracing::error!("accepting a connection failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Answers a connection over the cap with a 503 and closes it, without reading its request.
fn refuse(mut tcp: TcpStream, limit: usize, shared: &Arc<Shared>) {
    shared.closed("over_capacity");
    if shared.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
        shared.refusing.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSE_TIME, async {
            if tcp.write_all(&auto_reply::over_capacity(limit)).await.is_err() {
                return;
            }
            let _ = tcp.shutdown().await;
            // Read what the client sends until it closes: closing with its
            // request unread would reset the connection and could lose the 503.
            let mut sink = [0u8; 4096];
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        shared.refusing.fetch_sub(1, Ordering::Relaxed);
    });
}

/// What tells a connection to drain, to go, or to close if idle.
struct Signals {
    /// Shutdown: finish what is in flight, then close.
    stop: watch::Receiver<bool>,
    /// The grace is over: close now.
    kill: watch::Receiver<bool>,
    /// The cap is reached: close if idle.
    shed: watch::Receiver<u64>,
}

/// Serves one connection until it ends, a limit closes it, or shutdown drains it.
async fn connection(
    tcp: TcpStream,
    router: Router,
    limits: ConnLimits,
    counted: Counted,
    signals: Signals,
    _alive: watch::Receiver<()>,
) {
    let Signals {
        mut stop,
        mut kill,
        mut shed,
    } = signals;
    let shared = counted.0.clone();
    let state = Arc::new(ConnState::new());
    let peer = tcp.peer_addr().ok();
    let io = TokioIo::new(WatchedIo::new(tcp, state.clone()));
    let service = ConnService {
        inner: TowerToHyperService::new(router),
        state: state.clone(),
        peer,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None::<Duration>);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut watcher = Watcher {
        state,
        limits,
        timer: Box::pin(tokio::time::sleep(limits.header_read)),
    };
    let mut draining = false;
    let mut shed_gone = false;
    loop {
        tokio::select! {
            // The connection first: the watcher then judges the state it just left.
            biased;
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            why = std::future::poll_fn(|cx| watcher.poll_expired(cx)) => {
                tracing::debug!("closing a connection: {}", why.as_str());
                shared.closed(why.as_str());
                return;
            }
            // Past the grace and the last words: whatever is still open goes.
            _ = kill.wait_for(|kill| *kill) => {
                shared.closed("shutdown");
                return;
            }
            shed_changed = shed.changed(), if !shed_gone => {
                shed_gone = shed_changed.is_err();
                if !shed_gone && watcher.state.idle() {
                    shared.closed("shed_idle");
                    return;
                }
            }
            _ = stop.wait_for(|stop| *stop), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Why a limit closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expired {
    HeaderTimeout,
    Idle,
    WriteStall,
}

impl Expired {
    fn as_str(self) -> &'static str {
        match self {
            Expired::HeaderTimeout => "header_timeout",
            Expired::Idle => "idle",
            Expired::WriteStall => "write_stall",
        }
    }
}

/// Marks "not blocked" in [`ConnState::blocked_from`].
const NOT_BLOCKED: u64 = u64::MAX;

/// What one connection is doing, as its socket and its service report it.
/// Times are milliseconds since `epoch`.
struct ConnState {
    epoch: Instant,
    /// Requests whose response has not been written to the end.
    in_flight: AtomicUsize,
    /// A response has been written (so waiting now is keep-alive idle).
    served: AtomicBool,
    /// Bytes of a new request arrived while none was in flight.
    reading_head: AtomicBool,
    /// When the current wait (for a head, or idle) began.
    wait_from: AtomicU64,
    /// Since when writes have been blocked, or [`NOT_BLOCKED`].
    blocked_from: AtomicU64,
    /// Requests handed to the service; a response head beyond them is hyper's own answer.
    requests: AtomicUsize,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            reading_head: AtomicBool::new(false),
            wait_from: AtomicU64::new(0),
            blocked_from: AtomicU64::new(NOT_BLOCKED),
            requests: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NOT_BLOCKED - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Bytes came in.
    fn read_some(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && !self.reading_head.swap(true, Ordering::Relaxed) {
            // The first request's clock runs from the connection's start; later
            // ones' from their first byte (the idle wait before it is not theirs).
            if self.served.load(Ordering::Relaxed) {
                self.wait_from.store(self.now_ms(), Ordering::Relaxed);
            }
        }
    }

    /// A write could not proceed (`true`) or did (`false`).
    fn write_blocked(&self, blocked: bool) {
        let was = self.blocked_from.load(Ordering::Relaxed);
        if blocked && was == NOT_BLOCKED {
            self.blocked_from.store(self.now_ms(), Ordering::Relaxed);
        } else if !blocked && was != NOT_BLOCKED {
            self.blocked_from.store(NOT_BLOCKED, Ordering::Relaxed);
        }
    }

    /// Between requests on a kept-alive connection: nothing in flight, no new head arriving.
    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.served.load(Ordering::Relaxed)
            && !self.reading_head.load(Ordering::Relaxed)
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.reading_head.store(false, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The next limit to expire, if any runs now.
    fn deadline(&self, limits: &ConnLimits) -> Option<(Instant, Expired)> {
        let blocked = self.blocked_from.load(Ordering::Relaxed);
        if blocked != NOT_BLOCKED {
            return Some((self.at(blocked) + limits.write_stall, Expired::WriteStall));
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let from = self.at(self.wait_from.load(Ordering::Relaxed));
        if self.reading_head.load(Ordering::Relaxed) || !self.served.load(Ordering::Relaxed) {
            Some((from + limits.header_read, Expired::HeaderTimeout))
        } else {
            Some((from + limits.keep_alive, Expired::Idle))
        }
    }
}

/// One request in flight; dropped when its response body is done (or abandoned).
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        if state.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            state.served.store(true, Ordering::Relaxed);
            state.wait_from.store(state.now_ms(), Ordering::Relaxed);
        }
    }
}

/// Keeps a connection's limits: one timer, moved to the next deadline when polled.
struct Watcher {
    state: Arc<ConnState>,
    limits: ConnLimits,
    timer: Pin<Box<Sleep>>,
}

impl Watcher {
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        // No deadline while a request is served and the client takes what is
        // sent: the request's own limits (and the session's) apply then.
        let Some((at, why)) = self.state.deadline(&self.limits) else {
            return Poll::Pending;
        };
        if self.timer.deadline() != at {
            self.timer.as_mut().reset(at);
        }
        self.timer.as_mut().poll(cx).map(|()| why)
    }
}

/// The socket, reporting reads and blocked writes to the connection's state,
/// and giving hyper's own error answers a JSON body ([`auto_reply`]).
struct WatchedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    /// Final (not 1xx) response heads written so far.
    heads: usize,
    /// The JSON answer being written in place of hyper's, and how much of it is out.
    reply: Option<(Bytes, usize)>,
    /// The JSON answer is out: what hyper writes after it is dropped.
    replaced: bool,
}

impl AsyncRead for WatchedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.read_some();
        }
        polled
    }
}

impl WatchedIo {
    fn new(inner: TcpStream, state: Arc<ConnState>) -> Self {
        WatchedIo {
            inner,
            state,
            heads: 0,
            reply: None,
            replaced: false,
        }
    }

    fn report<T>(&self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.state.write_blocked(polled.is_pending());
        polled
    }

    /// Handles a write of `total` bytes starting with `first` when it belongs to
    /// hyper's own answer (or comes after it); `None` lets it through.
    fn intercept(&mut self, cx: &mut Context<'_>, first: &[u8], total: usize) -> Option<Poll<io::Result<usize>>> {
        if self.replaced {
            return Some(Poll::Ready(Ok(total)));
        }
        if self.reply.is_none() && self.heads >= self.state.requests.load(Ordering::Relaxed) {
            self.reply = Some((auto_reply::replacement(first)?, 0));
        }
        let (reply, written) = self.reply.as_mut()?;
        while *written < reply.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &reply[*written..]) {
                Poll::Ready(Ok(0)) => return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(self.report(Poll::Pending)),
            }
        }
        self.reply = None;
        self.replaced = true;
        Some(Poll::Ready(Ok(total)))
    }

    /// Counts a final response head once its first bytes are out.
    fn count_head(&mut self, first: &[u8], polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0)
            && first.starts_with(b"HTTP/1.1 ")
            && !first.starts_with(b"HTTP/1.1 1")
        {
            self.heads += 1;
        }
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(polled) = self.intercept(cx, buf, buf.len()) {
            return polled;
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count_head(buf, &polled);
        self.report(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first: &[u8] = bufs.iter().find(|b| !b.is_empty()).map_or(&[], |b| b);
        let total = bufs.iter().map(|b| b.len()).sum();
        if let Some(polled) = self.intercept(cx, first, total) {
            return polled;
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_head(first, &polled);
        self.report(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.report(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router, with each request counted in flight until its response body is done.
struct ConnService {
    inner: TowerToHyperService<Router>,
    state: Arc<ConnState>,
    /// The client's address, for the guard's loopback rule.
    peer: Option<std::net::SocketAddr>,
}

impl Service<Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        }
        let in_flight = self.state.request_started();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(Tracked {
                    body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A response body holding its request's [`InFlight`] until hyper drops it.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
