//! The terminal dashboard (ratatui + crossterm): live handovers.
//!
//! It reads one stream of [`Feed`] items and never knows their source: the
//! in-process broadcast ([`from_broadcast`]), a proxy's `/events` feed
//! ([`from_url`]), or a recording. It redraws at a fixed rate, not per event,
//! so a busy engine is never slowed by drawing.
//!
//! * [`model`] — what is known, built from events, with bounded memory.
//! * [`app`] — how it is being looked at, and the keys.
//! * [`ui`] — drawing.
//! * [`replay`] — a recording played with its original timing.

pub mod app;
pub mod model;
pub mod replay;
pub mod ui;

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest_eventsource::{retry::Constant, Event as SseEvent, EventSource};
use tokio::time::Instant;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::engine::event::{EngineEvent, Subscriber};
use app::{App, Control};

/// How often the screen is redrawn.
pub const FRAME: Duration = Duration::from_millis(100);

/// What a dashboard source yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Feed {
    /// An engine event.
    Event(EngineEvent),
    /// The source had to drop this many events.
    Dropped(u64),
    /// The source's connection status changed.
    Status(String),
}

/// A dashboard source.
pub type FeedStream = Pin<Box<dyn Stream<Item = Feed> + Send>>;

/// The in-process event broadcast as a feed; a lagging reader's losses are counted.
pub fn from_broadcast(events: Subscriber) -> FeedStream {
    let (events, counted) = events.into_parts();
    // The guard lives in the closure, so the dashboard counts as a listener as long as its feed.
    Box::pin(BroadcastStream::new(events).map(move |item| match item {
        Ok(event) => {
            let _listening = &counted;
            Feed::Event(event)
        }
        Err(BroadcastStreamRecvError::Lagged(n)) => Feed::Dropped(n),
    }))
}

/// A running proxy's `/events` feed (`api_key`: the operator key, sent as a bearer), reconnecting every second while it is away.
pub fn from_url(base: &str, api_key: Option<String>) -> FeedStream {
    let url = format!("{}/events", base.trim_end_matches('/'));
    let client = reqwest::Client::new();
    Box::pin(async_stream::stream! {
        yield Feed::Status(format!("connecting to {url}"));
        loop {
            let mut request = client.get(&url);
            if let Some(key) = &api_key {
                request = request.bearer_auth(key);
            }
            let mut source = match EventSource::new(request) {
                Ok(source) => source,
                Err(e) => {
                    yield Feed::Status(format!("cannot open {url}: {e}"));
                    return;
                }
            };
            source.set_retry_policy(Box::new(Constant::new(Duration::from_secs(1), None)));
            while let Some(item) = source.next().await {
                match item {
                    Ok(SseEvent::Open) => yield Feed::Status(format!("connected to {url}")),
                    Ok(SseEvent::Message(message)) => match serde_json::from_str::<EngineEvent>(&message.data) {
                        Ok(event) => yield Feed::Event(event),
                        Err(_) => yield Feed::Dropped(1),
                    },
                    Err(reqwest_eventsource::Error::StreamEnded) => {
                        yield Feed::Status("the proxy closed the feed; reconnecting".to_string());
                    }
                    Err(reqwest_eventsource::Error::InvalidStatusCode(status, _)) => {
                        let hint = match status.as_u16() {
                            401 | 403 => " (operator key: set BATON_OPERATOR_KEY or --key-env)",
                            _ => "",
                        };
                        yield Feed::Status(format!("{url} answered {status}{hint}; retrying"));
                    }
                    Err(e) => yield Feed::Status(format!("disconnected ({e}); retrying")),
                }
            }
            // The event source gives up after a refusal (a missing key, say): ask again
            // a second later, as it does after any other failure.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Restores the terminal however the dashboard ends (ratatui's own hook covers panics).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// What the dashboard shows.
pub enum Source {
    /// A live feed.
    Live(FeedStream),
    /// A recording, played with its own timing.
    Replay(Box<replay::Player>),
}

/// Runs the dashboard on `source` until the user quits; `title` names it in the header.
pub async fn run(source: Source, title: &str) -> std::io::Result<()> {
    let (mut feed, mut player): (FeedStream, _) = match source {
        Source::Live(feed) => (feed, None),
        Source::Replay(player) => (Box::pin(futures::stream::pending()), Some(player)),
    };
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let started = Instant::now();
    let mut last_frame = started;
    let mut app = App::new(title);
    let mut keys = crossterm::event::EventStream::new();
    let mut frame = tokio::time::interval(FRAME);
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut feed_open = true;
    loop {
        tokio::select! {
            _ = frame.tick() => {
                match player.as_mut() {
                    Some(player) => player.advance(&mut app, last_frame.elapsed()),
                    None => app.tick(started.elapsed()),
                }
                last_frame = Instant::now();
                terminal.draw(|f| ui::draw(f, &app))?;
            }
            key = keys.next() => match key {
                Some(Ok(crossterm::event::Event::Key(key))) => {
                    let handled = key.kind != crossterm::event::KeyEventKind::Release
                        && player.as_mut().is_some_and(|p| p.on_key(&mut app, key));
                    if !handled && app.on_key(key) == Control::Quit {
                        return Ok(());
                    }
                    terminal.draw(|f| ui::draw(f, &app))?;
                }
                Some(Ok(crossterm::event::Event::Resize(..))) => {
                    terminal.draw(|f| ui::draw(f, &app))?;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            item = feed.next(), if feed_open => match item {
                Some(item) => {
                    apply(&mut app, item, started.elapsed());
                    // Drain what is already waiting, so a busy feed costs one wake-up per frame.
                    for _ in 0..4096 {
                        match futures::FutureExt::now_or_never(feed.next()) {
                            Some(Some(item)) => apply(&mut app, item, started.elapsed()),
                            Some(None) => {
                                feed_open = false;
                                break;
                            }
                            None => break,
                        }
                    }
                }
                None => {
                    feed_open = false;
                    app.live.status = Some("the feed ended".to_string());
                }
            },
        }
    }
}

/// Applies one feed item.
pub fn apply(app: &mut App, item: Feed, now: Duration) {
    match item {
        Feed::Event(event) => app.on_event(&event, now),
        Feed::Dropped(n) => app.live.note_dropped(n),
        Feed::Status(status) => app.live.status = Some(status),
    }
}
