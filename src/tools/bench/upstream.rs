//! The stamped SSE upstream and the pacer thread that spreads its streams
//! over the interval.

use super::clients::listen;
use super::*;

// ------------------------------------------------------------ the upstream

/// The stamped upstream's state, shared by its connections.
pub(super) struct Upstream {
    pub(super) chunks: u32,
    /// Streams expected: they are spread evenly over the pacing slots.
    pub(super) expected: usize,
    /// Requests that arrived (and wait for `go`).
    pub(super) arrived: AtomicUsize,
    /// Connections that failed on the upstream's side.
    pub(super) failed: AtomicUsize,
    /// Failed accepts.
    pub(super) accept_errors: AtomicUsize,
    pub(super) go: watch::Receiver<bool>,
    /// One tick counter per pacing slot; empty when unpaced.
    pub(super) slots: Arc<[watch::Sender<u64>]>,
}

pub(super) async fn start_upstream(
    ip: Ipv4Addr,
    upstream: Arc<Upstream>,
) -> io::Result<(SocketAddr, oneshot::Sender<()>)> {
    let listener = listen(SocketAddr::new(ip.into(), 0), true)?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => {
                        let upstream = upstream.clone();
                        tokio::spawn(async move {
                            if let Err(e) = upstream_connection(socket, &upstream).await {
                                upstream.failed.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!("bench upstream connection failed: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        // Out of fds, typically: wait for streams to end and free some.
                        if upstream.accept_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("baton bench:   the upstream cannot accept: {e} (retrying)");
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
            }
        }
    });
    Ok((addr, stop))
}

pub(super) const UPSTREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";

/// Appends one SSE event as one HTTP chunk.
pub(super) fn push_event(out: &mut Vec<u8>, payload: &str) {
    let len = "data: ".len() + payload.len() + 2;
    let _ = std::io::Write::write_fmt(out, format_args!("{len:x}\r\ndata: {payload}\n\n\r\n"));
}

pub(super) fn content_chunk(first: bool, stamp: u64) -> String {
    let role = if first { "\"role\":\"assistant\"," } else { "" };
    format!(
        "{{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{{role}\"content\":\"{stamp}|\"}},\"finish_reason\":null}}]}}"
    )
}

pub(super) async fn upstream_connection(mut socket: TcpStream, upstream: &Upstream) -> io::Result<()> {
    socket.set_nodelay(true)?;
    if crate::oracle::server::read_request(&mut socket).await?.is_none() {
        return Ok(());
    }
    socket.write_all(UPSTREAM_HEAD).await?;
    let index = upstream.arrived.fetch_add(1, Ordering::Relaxed);
    let slots = upstream.slots.len();
    let mut slot = (slots > 0).then(|| {
        let at = if index < upstream.expected {
            index * slots / upstream.expected
        } else {
            index % slots
        };
        upstream.slots[at].subscribe()
    });
    let mut go = upstream.go.clone();
    if go.wait_for(|go| *go).await.is_err() {
        return Ok(());
    }
    let mut out = Vec::with_capacity(512);
    for k in 0..upstream.chunks {
        if let Some(slot) = slot.as_mut() {
            if slot.changed().await.is_err() {
                return Err(io::Error::other("the pacer stopped"));
            }
        }
        out.clear();
        push_event(&mut out, &content_chunk(k == 0, now_us()));
        socket.write_all(&out).await?;
    }
    out.clear();
    push_event(
        &mut out,
        "{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}",
    );
    push_event(&mut out, "[DONE]");
    out.extend_from_slice(b"0\r\n\r\n");
    socket.write_all(&out).await?;
    socket.shutdown().await
}

/// Ticks the pacing slots from a plain thread: tokio's timers fire on 1 ms
/// ticks, which would send every stream's chunk of a millisecond in one burst.
///
/// The thread asks for SCHED_FIFO (it sleeps almost always, so this only makes
/// its wake-ups punctual). After a late tick it catches up at twice the normal
/// rate, never all at once: that would release many slots' chunks in one burst.
pub(super) fn start_pacer(
    slots: Arc<[watch::Sender<u64>]>,
    slot: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<PacerStats> {
    std::thread::spawn(move || {
        let mut stats = PacerStats {
            realtime: set_realtime(),
            ..PacerStats::default()
        };
        let start = Instant::now();
        let slot_ns = slot.as_nanos() as u64;
        let mut last = start;
        let mut tick: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let nominal = start + Duration::from_nanos(slot_ns.saturating_mul(tick));
            // Behind schedule, tick at twice the rate until caught up: no burst, no drift.
            let due = nominal.max(last + slot / 2);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            last = Instant::now();
            let late = last.saturating_duration_since(nominal);
            stats.max_late_us = stats.max_late_us.max(late.as_micros() as u64);
            if late > Duration::from_millis(1) {
                stats.late_ticks += 1;
            }
            slots[(tick % slots.len() as u64) as usize].send_replace(tick + 1);
            tick += 1;
        }
        stats.ticks = tick;
        stats
    })
}

/// How punctual the pacer was.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PacerStats {
    /// Whether it got SCHED_FIFO.
    pub realtime: bool,
    /// Slots ticked.
    pub ticks: u64,
    /// Ticks more than 1 ms late.
    pub late_ticks: u64,
    /// The latest tick (µs).
    pub max_late_us: u64,
}

/// Asks for SCHED_FIFO (priority 1) for the calling thread.
#[cfg(target_os = "linux")]
pub(super) fn set_realtime() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: 0 is the calling thread; `param` is a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn set_realtime() -> bool {
    false
}
