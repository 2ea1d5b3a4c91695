//! Session recordings: every session on disk, summarized and re-driven.
//!
//! # The format (v1; the full description is `docs/recording.md`)
//!
//! One JSONL file per session, `<UTC start>-<session>.jsonl`, mode 0600, in
//! the recording directory. Every line is one [`EngineEvent`] with the format
//! version added:
//!
//! ```text
//! {"v":1,"session":"…","t_ms":0,"event":"session_started","ladder":"chat","messages":2,"spec":{…},"request":{…}}
//! {"v":1,"session":"…","t_ms":31,"event":"attempt_opened","route":"primary",…,"request":{…}}
//! {"v":1,"session":"…","t_ms":33,"event":"upstream","attempt":1,"item":{"type":"text","value":"The "}}
//! {"v":1,"session":"…","t_ms":33,"event":"delta","route":"primary","text":"The "}
//! …
//! {"v":1,"session":"…","t_ms":912,"event":"finished","finish_reason":"stop",…}
//! ```
//!
//! The one line that is not an engine event is `recording_gap`: the recorder
//! lost events (see below) and this session's recording may miss some, so it
//! cannot be verified.
//!
//! # Off the hot path
//!
//! A [`Recorder`] subscribes to the event broadcast. A forwarding thread moves
//! events into a bounded queue; a writer thread buffers each session's lines
//! and writes its file when the session ends (`finished` or `failed`), when it
//! has been idle for [`RecordOptions::idle_flush`] (a client that went away
//! ends no session), or when the recorder finishes. Nothing waits for the
//! disk: when the broadcast lags or the queue is full, events are dropped,
//! counted in [`RecordStats::dropped`], and every session open at that moment
//! gets a `recording_gap` line.
//!
//! API keys and `Authorization` headers never reach events; on top of that,
//! request fields named like credentials (`api_key`, `authorization`, …) are
//! redacted, and so is any string given to [`RecordOptions::redact`].

pub mod dir;
pub mod reader;
pub mod replay;
pub use crate::spec;
pub mod summary;
pub mod verify;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::engine::event::{EngineEvent, EventBus, EventKind, Subscriber};
use crate::request::Message;

/// The recording format version this baton writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The `event` name of a recording-only line: events may be missing here.
pub const GAP_EVENT: &str = "recording_gap";

/// What replaces a redacted value.
pub const REDACTED: &str = "[redacted]";

/// Request fields (at any depth) whose values are never written, compared
/// case-insensitively with `-` read as `_`.
const SECRET_FIELDS: [&str; 9] = [
    "api_key",
    "apikey",
    "x_api_key",
    "authorization",
    "proxy_authorization",
    "access_token",
    "client_secret",
    "secret",
    "password",
];

/// One recording line for `event`.
pub fn line(event: &EngineEvent) -> serde_json::Result<String> {
    #[derive(Serialize)]
    struct Line<'a> {
        v: u32,
        #[serde(flatten)]
        event: &'a EngineEvent,
    }
    serde_json::to_string(&Line {
        v: FORMAT_VERSION,
        event,
    })
}

/// A `recording_gap` line: events of `session` may be missing after `t_ms`.
pub fn gap_line(session: Uuid, t_ms: u64, dropped: u64, reason: &str) -> String {
    serde_json::json!({
        "v": FORMAT_VERSION,
        "session": session,
        "t_ms": t_ms,
        "event": GAP_EVENT,
        "dropped": dropped,
        "reason": reason,
    })
    .to_string()
}

/// Redacts credential-like request fields in `event`.
pub fn scrub(event: &mut EngineEvent) {
    match &mut event.kind {
        EventKind::SessionStarted {
            request: Some(request), ..
        } => {
            scrub_map(&mut request.params);
            scrub_messages(&mut request.messages);
        }
        EventKind::AttemptOpened { request, .. } => {
            scrub_map(&mut request.params);
            scrub_messages(&mut request.messages);
        }
        _ => {}
    }
}

fn is_secret_field(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('-', "_");
    SECRET_FIELDS.contains(&name.as_str())
}

fn scrub_messages(messages: &mut [Message]) {
    for m in messages {
        scrub_map(&mut m.extra);
    }
}

fn scrub_map(map: &mut Map<String, Value>) {
    for (k, v) in map.iter_mut() {
        if is_secret_field(k) {
            *v = Value::String(REDACTED.into());
        } else {
            scrub_value(v);
        }
    }
}

fn scrub_value(v: &mut Value) {
    match v {
        Value::Object(map) => scrub_map(map),
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        _ => {}
    }
}

/// Strings never shown, as they appear inside JSON text: what recordings and
/// the `/events` feed replace with [`REDACTED`] wherever they appear.
#[derive(Clone, Debug, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// These `secrets` (those shorter than 4 bytes are ignored: they would redact ordinary text).
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Self {
        Secrets(
            secrets
                .iter()
                .map(|s| {
                    let quoted = serde_json::to_string(s.as_ref()).unwrap_or_default();
                    quoted.trim_matches('"').to_string()
                })
                .filter(|s| s.len() >= 4)
                .collect(),
        )
    }

    /// `json` with every secret replaced.
    pub fn apply(&self, mut json: String) -> String {
        for secret in &self.0 {
            if json.contains(secret.as_str()) {
                json = json.replace(secret.as_str(), REDACTED);
            }
        }
        json
    }
}

/// Where and how a [`Recorder`] writes.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// The directory (created, mode 0700, if missing).
    pub dir: PathBuf,
    /// Events queued for the writer before new ones are dropped.
    pub queue: usize,
    /// Bytes of open sessions kept in memory before new events are dropped.
    pub max_buffered_bytes: usize,
    /// Bytes one session may take before its further events are dropped.
    pub max_session_bytes: usize,
    /// A session without events for this long is written as it is (its client went away).
    pub idle_flush: Duration,
    /// Strings never written (replaced by `[redacted]` wherever they appear).
    pub redact: Vec<String>,
}

impl RecordOptions {
    /// Defaults: a 64k-event queue, 256 MiB of open sessions, 32 MiB per session, 10 min idle flush.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RecordOptions {
            dir: dir.into(),
            queue: 64 * 1024,
            max_buffered_bytes: 256 << 20,
            max_session_bytes: 32 << 20,
            idle_flush: Duration::from_secs(600),
            redact: Vec::new(),
        }
    }

    /// Also never writes `secret` (ignored when shorter than 4 bytes).
    pub fn redact(mut self, secret: &str) -> Self {
        if secret.len() >= 4 {
            self.redact.push(secret.to_string());
        }
        self
    }
}

/// What a recorder did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecordStats {
    /// Session files written.
    pub sessions: u64,
    /// Of those, written without their end or with a gap.
    pub incomplete: u64,
    /// Lines written.
    pub lines: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Events lost: the broadcast lagged, the queue was full, or a memory cap was hit.
    pub dropped: u64,
    /// Session files that could not be written.
    pub write_errors: u64,
}

impl std::fmt::Display for RecordStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sessions ({} incomplete), {} lines, {}, {} events dropped, {} write errors",
            self.sessions,
            self.incomplete,
            self.lines,
            human_bytes(self.bytes),
            self.dropped,
            self.write_errors
        )
    }
}

/// `1.2 MB`-style size.
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 10 << 20 => format!("{:.0} MB", n as f64 / 1e6),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.0} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

#[derive(Debug, Default)]
struct Counters {
    sessions: AtomicU64,
    incomplete: AtomicU64,
    lines: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    write_errors: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RecordStats {
        RecordStats {
            sessions: self.sessions.load(Ordering::Relaxed),
            incomplete: self.incomplete.load(Ordering::Relaxed),
            lines: self.lines.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }
}

/// A [`Recorder`]'s figures, readable while it records.
#[derive(Clone, Debug)]
pub struct StatsHandle(Arc<Counters>);

impl StatsHandle {
    /// The figures so far.
    pub fn stats(&self) -> RecordStats {
        self.0.snapshot()
    }
}

/// Records every session of an event broadcast, one file per session.
///
/// Start it before the sessions it should record. It records while it lives:
/// dropping it stops it after the events already in the feed (files are
/// still written, in the background); [`Recorder::finish`] does the same and
/// waits until every file is on disk.
#[must_use = "a recorder stops recording when dropped"]
pub struct Recorder {
    dir: PathBuf,
    counters: Arc<Counters>,
    stop: Option<oneshot::Sender<()>>,
    forwarder: Option<std::thread::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What the forwarder hands the writer.
enum Msg {
    Event(Box<EngineEvent>),
    /// This many events were lost just before the next message.
    Gap(u64),
}

impl Recorder {
    /// Records what `sender` broadcasts (subscribes now).
    pub fn attach(sender: &EventBus, options: RecordOptions) -> std::io::Result<Recorder> {
        Recorder::start(sender.subscribe(), options)
    }

    /// Records what `events` receives.
    pub fn start(events: Subscriber, options: RecordOptions) -> std::io::Result<Recorder> {
        dir::prepare(&options.dir).map_err(std::io::Error::other)?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::sync_channel(options.queue.max(1));
        let (stop, stopped) = oneshot::channel();
        let dir = options.dir.clone();
        let mut writer = Writer::new(options, counters.clone());
        let thread = std::thread::Builder::new()
            .name("baton-recorder".into())
            .spawn(move || writer.run(rx))?;
        // Its own thread (and a small runtime): a busy application runtime must
        // not delay it, or the broadcast lags and events are lost.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let forward_counters = counters.clone();
        let forwarder = std::thread::Builder::new()
            .name("baton-record-feed".into())
            .spawn(move || {
                let (tx, lost) = runtime.block_on(forward(events, tx, stopped, forward_counters));
                if lost > 0 {
                    // The last loss must reach the writer: it marks the sessions still open.
                    let _ = tx.send(Msg::Gap(lost));
                }
            })?;
        Ok(Recorder {
            dir,
            counters,
            stop: Some(stop),
            forwarder: Some(forwarder),
            writer: Some(thread),
        })
    }

    /// Where it writes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its figures so far.
    pub fn stats(&self) -> RecordStats {
        self.counters.snapshot()
    }

    /// Reads its figures from elsewhere (a metrics endpoint) while it records.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.counters.clone())
    }

    /// Records what is already in the feed, writes every open session, and returns the figures.
    pub async fn finish(mut self) -> RecordStats {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let threads = [self.forwarder.take(), self.writer.take()];
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads.into_iter().flatten() {
                let _ = thread.join();
            }
        })
        .await;
        self.counters.snapshot()
    }
}

/// Moves events from the broadcast into the writer's queue, never waiting for it.
async fn forward(
    mut events: Subscriber,
    tx: SyncSender<Msg>,
    mut stop: oneshot::Receiver<()>,
    counters: Arc<Counters>,
) -> (SyncSender<Msg>, u64) {
    let mut forwarder = Forwarder {
        tx,
        counters,
        lost: 0,
        warned: None,
    };
    loop {
        let received = tokio::select! {
            biased;
            _ = &mut stop => None,
            r = events.recv() => Some(r),
        };
        match received {
            // Stopping: take what is already in the feed, then end.
            None => {
                loop {
                    match events.try_recv() {
                        Ok(event) => forwarder.push(event),
                        Err(TryRecvError::Lagged(n)) => forwarder.lose(n),
                        Err(_) => break,
                    }
                }
                break;
            }
            Some(Ok(event)) => forwarder.push(event),
            Some(Err(RecvError::Lagged(n))) => forwarder.lose(n),
            Some(Err(RecvError::Closed)) => break,
        }
    }
    (forwarder.tx, forwarder.lost)
}

struct Forwarder {
    tx: SyncSender<Msg>,
    counters: Arc<Counters>,
    /// Events lost since the writer was last told.
    lost: u64,
    warned: Option<std::time::Instant>,
}

impl Forwarder {
    fn push(&mut self, event: EngineEvent) {
        if self.lost > 0 {
            match self.tx.try_send(Msg::Gap(self.lost)) {
                Ok(()) => self.lost = 0,
                Err(_) => return self.lose(1),
            }
        }
        match self.tx.try_send(Msg::Event(Box::new(event))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.lose(1),
            Err(TrySendError::Disconnected(_)) => Counters::add(&self.counters.dropped, 1),
        }
    }

    fn lose(&mut self, n: u64) {
        self.lost += n;
        Counters::add(&self.counters.dropped, n);
        if self.warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            self.warned = Some(std::time::Instant::now());
            tracing::warn!(
                dropped = self.counters.dropped.load(Ordering::Relaxed),
                "recording is behind (slow disk or a lagging event feed): events dropped; the sessions concerned cannot be verified"
            );
        }
    }
}

/// One session being recorded.
struct Open {
    lines: Vec<u8>,
    started: SystemTime,
    touched: std::time::Instant,
    last_t_ms: u64,
    incomplete: bool,
    overflow: bool,
    /// Events dropped from the feed after this session's first gap line.
    later_drops: u64,
}

/// The writer thread: buffers sessions, writes their files.
struct Writer {
    options: RecordOptions,
    /// Replaces `options.redact` in written lines.
    redact: Secrets,
    counters: Arc<Counters>,
    open: HashMap<Uuid, Open>,
    buffered: usize,
    /// When a lost recording was last logged, and how many were lost since.
    lost_warned: Option<(std::time::Instant, u64)>,
}

impl Writer {
    fn new(options: RecordOptions, counters: Arc<Counters>) -> Self {
        let redact = Secrets::new(&options.redact);
        Writer {
            options,
            redact,
            counters,
            open: HashMap::new(),
            buffered: 0,
            lost_warned: None,
        }
    }

    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let sweep = (self.options.idle_flush / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        let mut swept = std::time::Instant::now();
        loop {
            match rx.recv_timeout(sweep) {
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if swept.elapsed() >= sweep {
                self.flush_idle();
                swept = std::time::Instant::now();
            }
        }
        let ids: Vec<Uuid> = self.open.keys().copied().collect();
        for id in ids {
            self.write(id, false);
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Gap(n) => {
                // One line per session at the first loss; later losses are added up and
                // written with the session (a burst of losses must not snowball into lines).
                let reason = format!(
                    "{n} events were dropped from the feed while this session was open (slow disk or a lagging feed)"
                );
                for (id, open) in &mut self.open {
                    if open.incomplete {
                        open.later_drops += n;
                        continue;
                    }
                    let gap = gap_line(*id, open.last_t_ms, n, &reason);
                    open.lines.extend_from_slice(gap.as_bytes());
                    open.lines.push(b'\n');
                    open.incomplete = true;
                }
            }
            Msg::Event(event) => self.event(*event),
        }
    }

    fn event(&mut self, mut event: EngineEvent) {
        let id = event.session;
        // baton's own events (active probes) belong to no session: nothing to record.
        if id == crate::engine::event::BATON_SESSION {
            return;
        }
        let terminal = matches!(event.kind, EventKind::Finished { .. } | EventKind::Failed { .. });
        let open = self.open.entry(id).or_insert_with(|| {
            let mut open = Open {
                lines: Vec::new(),
                started: SystemTime::now(),
                touched: std::time::Instant::now(),
                last_t_ms: event.t_ms,
                incomplete: false,
                overflow: false,
                later_drops: 0,
            };
            if !matches!(event.kind, EventKind::SessionStarted { .. }) {
                let gap = gap_line(
                    id,
                    event.t_ms,
                    0,
                    "the recorder did not see this session start (started before it, or its first events were dropped)",
                );
                open.lines.extend_from_slice(gap.as_bytes());
                open.lines.push(b'\n');
                open.incomplete = true;
            }
            open
        });
        open.touched = std::time::Instant::now();
        open.last_t_ms = event.t_ms;
        if open.overflow {
            Counters::add(&self.counters.dropped, 1);
        } else {
            scrub(&mut event);
            match line(&event) {
                Ok(text) => {
                    let text = self.redact.apply(text);
                    let size = text.len() + 1;
                    if open.lines.len() + size > self.options.max_session_bytes
                        || self.buffered + size > self.options.max_buffered_bytes
                    {
                        open.overflow = true;
                        open.incomplete = true;
                        let gap = gap_line(
                            id,
                            event.t_ms,
                            1,
                            "the recording hit its memory cap; later events of this session were dropped",
                        );
                        open.lines.extend_from_slice(gap.as_bytes());
                        open.lines.push(b'\n');
                        Counters::add(&self.counters.dropped, 1);
                    } else {
                        open.lines.extend_from_slice(text.as_bytes());
                        open.lines.push(b'\n');
                        self.buffered += size;
                    }
                }
                Err(e) => {
                    tracing::warn!("recording: an event could not be serialized: {e}");
                    open.incomplete = true;
                    Counters::add(&self.counters.dropped, 1);
                }
            }
        }
        if terminal {
            self.write(id, true);
        }
    }

    fn flush_idle(&mut self) {
        let idle = self.options.idle_flush;
        let stale: Vec<Uuid> = self
            .open
            .iter()
            .filter(|(_, o)| o.touched.elapsed() >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.write(id, false);
        }
    }

    /// Writes one session's file (`ended`: with its last event) and forgets it.
    fn write(&mut self, id: Uuid, ended: bool) {
        let Some(mut open) = self.open.remove(&id) else { return };
        if open.later_drops > 0 {
            let reason = format!("{} more events were dropped from the feed later", open.later_drops);
            let gap = gap_line(id, open.last_t_ms, open.later_drops, &reason);
            open.lines.extend_from_slice(gap.as_bytes());
            open.lines.push(b'\n');
        }
        self.buffered = self.buffered.saturating_sub(open.lines.len());
        let lines = open.lines.iter().filter(|b| **b == b'\n').count() as u64;
        let stamp = utc_stamp(open.started);
        let mut result = Err(std::io::Error::other("no file name left"));
        for n in 0..100 {
            let name = match n {
                0 => format!("{stamp}-{id}.jsonl"),
                n => format!("{stamp}-{id}-{n}.jsonl"),
            };
            result = write_new(&self.options.dir.join(name), &open.lines);
            if !matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists) {
                break;
            }
        }
        match result {
            Ok(()) => {
                Counters::add(&self.counters.sessions, 1);
                Counters::add(&self.counters.lines, lines);
                Counters::add(&self.counters.bytes, open.lines.len() as u64);
                if open.incomplete || !ended {
                    Counters::add(&self.counters.incomplete, 1);
                }
            }
            Err(e) => {
                Counters::add(&self.counters.write_errors, 1);
                self.warn_lost(id, &e);
            }
        }
    }
}

impl Writer {
    /// Logs a lost recording: the first at once, then at most one line per 10 s
    /// with the count (a full disk loses every session; the log must stay readable).
    fn warn_lost(&mut self, id: Uuid, e: &std::io::Error) {
        let dir = self.options.dir.display();
        match &mut self.lost_warned {
            Some((at, since)) if at.elapsed() < Duration::from_secs(10) => *since += 1,
            _ => {
                let since = match self.lost_warned.map_or(0, |(_, n)| n) {
                    0 => String::new(),
                    n => format!("; {n} more lost since the last warning"),
                };
                tracing::warn!(
                    "recording lost: cannot write session {id} to {dir}: {e}{since} (counted in baton_recordings_lost_total)"
                );
                self.lost_warned = Some((std::time::Instant::now(), 0));
            }
        }
    }
}

/// Creates `path` (mode 0600, never overwriting) with `bytes`; on a failure
/// part-way, removes what was written.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    let written = file.write_all(bytes).and_then(|()| file.flush());
    if written.is_err() {
        // A truncated recording would pass for a session that ended early.
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    written
}

/// `20261121T234731Z` for `t`.
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::UpstreamRequest;

    fn event(session: Uuid, t_ms: u64, kind: EventKind) -> EngineEvent {
        EngineEvent { session, t_ms, kind }
    }

    fn started() -> EventKind {
        EventKind::SessionStarted {
            ladder: "l".into(),
            messages: 0,
            spec: None,
            request: None,
        }
    }

    fn failed() -> EventKind {
        EventKind::Failed {
            error: "x".into(),
            bytes: 0,
            tokens: None,
        }
    }

    fn files(dir: &Path) -> Vec<(String, String)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| {
                let path = e.expect("entry").path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
                (name, std::fs::read_to_string(&path).expect("read"))
            })
            .collect();
        out.sort();
        out
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("baton-record-{name}-{}", Uuid::new_v4().simple()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(SystemTime::UNIX_EPOCH), "19700101T000000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_304_851);
        assert_eq!(utc_stamp(t), "20261121T234731Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_stamp(leap), "20000229T000000Z");
    }

    #[test]
    fn credentials_in_requests_are_redacted() {
        let mut params = Map::new();
        params.insert("temperature".into(), 0.5.into());
        params.insert("API-Key".into(), "sk-live-123".into());
        params.insert(
            "extra_headers".into(),
            serde_json::json!({"Authorization": "Bearer sk-live-123", "x": [{"password": "p"}]}),
        );
        let mut e = event(
            Uuid::nil(),
            0,
            EventKind::AttemptOpened {
                route: "r".into(),
                model: "m".into(),
                attempt: 1,
                mode: crate::ContinuationMode::Prefill,
                prefix_bytes: 0,
                request: UpstreamRequest {
                    model: "m".into(),
                    messages: Vec::new(),
                    params,
                    continue_final_message: false,
                },
                deadlines: None,
                seen_echoing: false,
                stripped: false,
            },
        );
        scrub(&mut e);
        let text = line(&e).expect("line");
        assert!(!text.contains("sk-live") && !text.contains("\"p\""), "{text}");
        assert!(
            text.contains("\"temperature\":0.5") && text.starts_with("{\"v\":1,"),
            "{text}"
        );
    }

    #[test]
    fn sessions_are_written_at_their_end_with_gaps_marked() {
        let dir = temp("writer");
        dir::prepare(&dir).expect("dir");
        let counters = Arc::new(Counters::default());
        let mut w = Writer::new(RecordOptions::new(&dir).redact("hunter22"), counters.clone());
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        w.handle(Msg::Event(Box::new(event(a, 0, started()))));
        w.handle(Msg::Event(Box::new(event(b, 0, started()))));
        w.handle(Msg::Event(Box::new(event(
            a,
            5,
            EventKind::Failed {
                error: "key hunter22 rejected".into(),
                bytes: 0,
                tokens: None,
            },
        ))));
        w.handle(Msg::Gap(7));
        w.handle(Msg::Event(Box::new(event(b, 9, failed()))));
        // Its start was lost.
        w.handle(Msg::Event(Box::new(event(c, 3, failed()))));
        let written = files(&dir);
        assert_eq!(written.len(), 3);
        let text_of = |id: Uuid| {
            written
                .iter()
                .find(|(n, _)| n.contains(&id.to_string()))
                .map(|(_, t)| t.clone())
                .expect("file")
        };
        let ta = text_of(a);
        assert_eq!(ta.lines().count(), 2);
        assert!(!ta.contains("hunter22") && ta.contains(REDACTED), "{ta}");
        let tb = text_of(b);
        assert!(
            tb.contains("\"event\":\"recording_gap\"") && tb.contains("\"dropped\":7"),
            "{tb}"
        );
        assert!(text_of(c).lines().next().is_some_and(|l| l.contains(GAP_EVENT)));
        let stats = counters.snapshot();
        assert_eq!((stats.sessions, stats.incomplete, stats.write_errors), (3, 2, 0));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for entry in std::fs::read_dir(&dir).expect("dir") {
                let mode = entry.expect("entry").metadata().expect("meta").permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_session_over_its_memory_cap_is_cut_and_marked() {
        let dir = temp("cap");
        dir::prepare(&dir).expect("dir");
        let counters = Arc::new(Counters::default());
        let mut options = RecordOptions::new(&dir);
        options.max_session_bytes = 400;
        let mut w = Writer::new(options, counters.clone());
        let id = Uuid::from_u128(9);
        w.handle(Msg::Event(Box::new(event(id, 0, started()))));
        for t in 0..20 {
            w.handle(Msg::Event(Box::new(event(
                id,
                t,
                EventKind::Delta {
                    route: "r".into(),
                    text: "some words ".into(),
                },
            ))));
        }
        w.handle(Msg::Event(Box::new(event(id, 30, failed()))));
        let written = files(&dir);
        assert_eq!(written.len(), 1);
        assert!(written[0].1.contains("memory cap"));
        assert!(counters.snapshot().dropped > 10);
        assert_eq!(w.buffered, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn idle_and_unfinished_sessions_are_written_when_the_writer_stops() {
        let dir = temp("idle");
        dir::prepare(&dir).expect("dir");
        let counters = Arc::new(Counters::default());
        let mut options = RecordOptions::new(&dir);
        options.idle_flush = Duration::from_millis(20);
        let mut w = Writer::new(options, counters.clone());
        let (tx, rx) = mpsc::sync_channel(16);
        tx.send(Msg::Event(Box::new(event(Uuid::from_u128(4), 0, started()))))
            .expect("send");
        let thread = std::thread::spawn(move || w.run(rx));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(files(&dir).len(), 1, "an idle session is written");
        tx.send(Msg::Event(Box::new(event(Uuid::from_u128(5), 0, started()))))
            .expect("send");
        drop(tx);
        thread.join().expect("join");
        assert_eq!(files(&dir).len(), 2, "open sessions are written at the end");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
