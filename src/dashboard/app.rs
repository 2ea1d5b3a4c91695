//! The dashboard's view state and key handling (pure: no terminal here).

use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use uuid::Uuid;

use super::model::{Model, SessionView};
use crate::engine::event::EngineEvent;

/// The panels that take the focus, in Tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Panel {
    /// The session list.
    Sessions,
    /// The selected session's transcript.
    Transcript,
    /// The handover log.
    Handovers,
}

/// What the event loop should do after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Keep going.
    Continue,
    /// Leave the dashboard.
    Quit,
}

/// The model plus everything about how it is being looked at.
#[derive(Clone, Debug)]
pub struct App {
    /// Updated by every event.
    pub live: Model,
    /// The view shown while paused, and the event count when it was taken.
    pub frozen: Option<(Box<Model>, u64)>,
    /// Where the keys go.
    pub focus: Panel,
    /// The session the user selected (it stays selected as new ones arrive).
    pub selected: Option<Uuid>,
    /// The selection stays on the newest session until the user moves it.
    pub follow: bool,
    /// The session filter (`/`).
    pub filter: String,
    /// Typing into the filter.
    pub filtering: bool,
    /// The help overlay is open.
    pub help: bool,
    /// The transcript fills the screen.
    pub fullscreen: bool,
    /// Lines scrolled in the transcript.
    pub transcript_scroll: u16,
    /// Rows scrolled back in the handover log.
    pub handover_scroll: usize,
    /// What the dashboard is reading (`in-process demo`, a URL, a file).
    pub source: String,
    /// Dashboard time of the last tick.
    pub now: Duration,
    /// Set when replaying a recording: where the replay stands.
    pub replay: Option<super::replay::Progress>,
}

impl App {
    /// A dashboard over `source` (shown in the title).
    pub fn new(source: impl Into<String>) -> Self {
        App {
            live: Model::default(),
            frozen: None,
            focus: Panel::Sessions,
            selected: None,
            follow: true,
            filter: String::new(),
            filtering: false,
            help: false,
            fullscreen: false,
            transcript_scroll: 0,
            handover_scroll: 0,
            source: source.into(),
            now: Duration::ZERO,
            replay: None,
        }
    }

    /// The model being shown: the frozen one while paused.
    pub fn model(&self) -> &Model {
        self.frozen.as_ref().map_or(&self.live, |(m, _)| m)
    }

    /// Events that arrived since the pause (0 when live).
    pub fn events_since_pause(&self) -> u64 {
        self.frozen.as_ref().map_or(0, |(_, at)| self.live.events - at)
    }

    /// Applies an event at dashboard time `now`.
    pub fn on_event(&mut self, event: &EngineEvent, now: Duration) {
        self.live.apply(event, now);
        if self.frozen.is_none() {
            self.now = now;
        }
    }

    /// Moves dashboard time on (rates and ages), unless paused.
    pub fn tick(&mut self, now: Duration) {
        if self.frozen.is_none() {
            self.now = now;
        }
    }

    /// Sessions that pass the filter, newest first.
    pub fn visible_sessions(&self) -> Vec<&SessionView> {
        let needle = self.filter.to_lowercase();
        self.model()
            .sessions
            .iter()
            .rev()
            .filter(|s| {
                needle.is_empty()
                    || s.short_id().contains(&needle)
                    || s.ladder.to_lowercase().contains(&needle)
                    || s.door_text().contains(&needle)
                    || s.status.as_str().contains(&needle)
                    || s.state_text().contains(&needle)
                    || s.chain_text().to_lowercase().contains(&needle)
            })
            .collect()
    }

    /// The selected session. While following, the newest one with a handover
    /// (the interesting kind), else the newest.
    pub fn selected_session(&self) -> Option<&SessionView> {
        let visible = self.visible_sessions();
        if self.follow {
            return visible.iter().find(|s| s.handovers > 0).or(visible.first()).copied();
        }
        visible
            .iter()
            .find(|s| Some(s.id) == self.selected)
            .or(visible.first())
            .copied()
    }

    /// The position of the selected session in [`App::visible_sessions`].
    fn selected_index(&self) -> usize {
        let Some(selected) = self.selected_session().map(|s| s.id) else {
            return 0;
        };
        self.visible_sessions()
            .iter()
            .position(|s| s.id == selected)
            .unwrap_or(0)
    }

    fn move_selection(&mut self, down: bool) {
        let focus = if self.fullscreen { Panel::Transcript } else { self.focus };
        match focus {
            Panel::Sessions => {
                let len = self.visible_sessions().len();
                let current = self.selected_index();
                let next = if down {
                    (current + 1).min(len.saturating_sub(1))
                } else {
                    current.saturating_sub(1)
                };
                self.selected = self.visible_sessions().get(next).map(|s| s.id);
                // Back at the top: follow the live sessions again.
                self.follow = next == 0 && !down;
                self.transcript_scroll = 0;
            }
            Panel::Transcript => {
                self.transcript_scroll = if down {
                    self.transcript_scroll.saturating_add(1)
                } else {
                    self.transcript_scroll.saturating_sub(1)
                };
            }
            Panel::Handovers => {
                let len = self.model().handovers.len();
                self.handover_scroll = if down {
                    self.handover_scroll.saturating_sub(1)
                } else {
                    (self.handover_scroll + 1).min(len.saturating_sub(1))
                };
            }
        }
    }

    /// Handles one key.
    pub fn on_key(&mut self, key: KeyEvent) -> Control {
        if key.kind == KeyEventKind::Release {
            return Control::Continue;
        }
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Control::Quit;
        }
        if self.filtering {
            match key.code {
                KeyCode::Enter | KeyCode::Esc => self.filtering = false,
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => {
                    self.filter.push(c);
                    self.follow = true;
                }
                _ => {}
            }
            return Control::Continue;
        }
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            return if key.code == KeyCode::Char('q') {
                Control::Quit
            } else {
                Control::Continue
            };
        }
        match key.code {
            KeyCode::Char('q') => return Control::Quit,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('/') => {
                self.filtering = true;
                self.focus = Panel::Sessions;
            }
            KeyCode::Char('p') => {
                self.frozen = match self.frozen.take() {
                    Some(_) => None,
                    None => Some((Box::new(self.live.clone()), self.live.events)),
                };
            }
            KeyCode::Tab => {
                self.focus = match self.focus {
                    Panel::Sessions => Panel::Transcript,
                    Panel::Transcript => Panel::Handovers,
                    Panel::Handovers => Panel::Sessions,
                }
            }
            KeyCode::BackTab => {
                self.focus = match self.focus {
                    Panel::Sessions => Panel::Handovers,
                    Panel::Transcript => Panel::Sessions,
                    Panel::Handovers => Panel::Transcript,
                }
            }
            KeyCode::Enter => {
                self.fullscreen = !self.fullscreen;
                self.transcript_scroll = 0;
            }
            KeyCode::Esc => {
                self.fullscreen = false;
                if !self.filter.is_empty() {
                    self.filter.clear();
                }
            }
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(true),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(false),
            _ => {}
        }
        Control::Continue
    }
}
