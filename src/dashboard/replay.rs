//! Replaying a recording in the dashboard, with its original timing: pause,
//! speed (¼× to 64×), jumps to the next or previous handover.
//!
//! Sessions are placed on one timeline by the start stamp in their file
//! names (second resolution), then by their own `t_ms`. Seeking backwards
//! rebuilds the view from the start: the model only ever moves forward.

use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent};

use super::app::App;
use super::model::Model;
use crate::engine::event::{EngineEvent, EventKind};
use crate::record::reader::Recording;

/// Slowest replay speed.
pub const MIN_SPEED: f64 = 0.25;
/// Fastest replay speed.
pub const MAX_SPEED: f64 = 64.0;

/// Where a replay stands, for the progress bar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Replay time.
    pub at: Duration,
    /// The recording's length.
    pub end: Duration,
    /// Speed factor.
    pub speed: f64,
    /// Playback is paused.
    pub paused: bool,
}

/// Plays a recording into an [`App`].
#[derive(Clone, Debug)]
pub struct Player {
    events: Vec<(u64, EngineEvent)>,
    handovers: Vec<u64>,
    next: usize,
    clock_ms: f64,
    speed: f64,
    paused: bool,
}

/// Seconds since the epoch from a `20261121T234731Z-…` file name.
fn stamp_secs(name: &str) -> Option<u64> {
    let s = name.get(..16)?;
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from civil (Howard Hinnant's algorithm).
    let (y, mo) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

impl Player {
    /// A player over every session of `recording`, at 1×, playing.
    pub fn new(recording: &Recording) -> Self {
        let starts: Vec<Option<u64>> = recording
            .sessions
            .iter()
            .map(|s| s.file().file_name().and_then(|n| n.to_str()).and_then(stamp_secs))
            .collect();
        let first = starts.iter().flatten().min().copied().unwrap_or(0);
        let mut events = Vec::new();
        for (i, (session, start)) in recording.sessions.iter().zip(&starts).enumerate() {
            // Without a stamp, stagger sessions a quarter second apart.
            let base = start.map_or(i as u64 * 250, |s| (s - first) * 1000);
            events.extend(session.events.iter().map(|e| (base + e.t_ms, e.clone())));
        }
        events.sort_by_key(|(t, _)| *t);
        let handovers = events
            .iter()
            .filter(|(_, e)| matches!(e.kind, EventKind::Handover { .. }))
            .map(|(t, _)| *t)
            .collect();
        Player {
            events,
            handovers,
            next: 0,
            clock_ms: 0.0,
            speed: 1.0,
            paused: false,
        }
    }

    /// Where it stands.
    pub fn progress(&self) -> Progress {
        Progress {
            at: Duration::from_millis(self.clock_ms as u64),
            end: Duration::from_millis(self.end_ms()),
            speed: self.speed,
            paused: self.paused,
        }
    }

    /// The time of the last event.
    pub fn end_ms(&self) -> u64 {
        self.events.last().map_or(0, |(t, _)| *t)
    }

    fn apply_until(&mut self, app: &mut App, until_ms: u64) {
        while let Some((t, event)) = self.events.get(self.next) {
            if *t > until_ms {
                break;
            }
            app.on_event(event, Duration::from_millis(*t));
            self.next += 1;
        }
        app.tick(Duration::from_millis(until_ms));
        app.replay = Some(self.progress());
    }

    /// Moves replay time on by `real` wall time × speed (nothing while paused).
    pub fn advance(&mut self, app: &mut App, real: Duration) {
        if !self.paused {
            self.clock_ms = (self.clock_ms + real.as_secs_f64() * 1000.0 * self.speed).min(self.end_ms() as f64);
        }
        self.apply_until(app, self.clock_ms as u64);
    }

    /// Jumps to replay time `to_ms`.
    pub fn seek(&mut self, app: &mut App, to_ms: u64) {
        if (to_ms as f64) < self.clock_ms {
            app.live = Model::default();
            app.frozen = None;
            self.next = 0;
        }
        self.clock_ms = to_ms.min(self.end_ms()) as f64;
        self.apply_until(app, self.clock_ms as u64);
    }

    /// Handles the replay keys (space, `+`, `-`, `n`, `N`); `false` for any other key.
    pub fn on_key(&mut self, app: &mut App, key: KeyEvent) -> bool {
        let now = self.clock_ms as u64;
        match key.code {
            KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char('+') | KeyCode::Char('=') => self.speed = (self.speed * 2.0).min(MAX_SPEED),
            KeyCode::Char('-') => self.speed = (self.speed / 2.0).max(MIN_SPEED),
            KeyCode::Char('n') => {
                if let Some(t) = self.handovers.iter().find(|t| **t > now).copied() {
                    self.seek(app, t);
                }
            }
            KeyCode::Char('N') => {
                if let Some(t) = self.handovers.iter().rev().find(|t| **t < now).copied() {
                    self.seek(app, t);
                }
            }
            _ => return false,
        }
        app.replay = Some(self.progress());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stamps_become_epoch_seconds() {
        assert_eq!(stamp_secs("19700101T000000Z-x.jsonl"), Some(0));
        assert_eq!(stamp_secs("20261122T003447Z-007b.jsonl"), Some(1_795_307_687));
        assert_eq!(stamp_secs("not-a-stamp"), None);
    }
}
