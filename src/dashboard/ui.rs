//! Drawing the dashboard: `draw(frame, &app)`, nothing else.

use std::time::Duration;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap};
use ratatui::Frame;

use super::app::{App, Panel};
use super::model::{Piece, RouteView, Status};
use crate::failure::FailureClass;

/// The smallest terminal the layout fits.
pub const MIN_WIDTH: u16 = 80;
/// The smallest terminal the layout fits.
pub const MIN_HEIGHT: u16 = 24;

const ROUTE_COLOURS: [Color; 6] = [
    Color::Cyan,
    Color::Magenta,
    Color::Yellow,
    Color::Green,
    Color::Blue,
    Color::LightRed,
];

fn route_colour(slot: usize) -> Color {
    ROUTE_COLOURS[slot % ROUTE_COLOURS.len()]
}

fn block(title: &str, focused: bool) -> Block<'static> {
    let style = if focused {
        Style::new().fg(Color::White).add_modifier(Modifier::BOLD)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    Block::bordered().title(format!(" {title} ")).border_style(style)
}

fn class_name(class: FailureClass) -> &'static str {
    class.as_str()
}

fn age(now: Duration, since: Duration) -> String {
    let secs = now.saturating_sub(since).as_secs();
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// Draws the whole dashboard.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let message = format!(
            "Terminal too small for the baton dashboard: need at least {MIN_WIDTH}×{MIN_HEIGHT}, have {}×{}. Enlarge it, or press q to quit.",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(message).wrap(Wrap { trim: true }), area);
        return;
    }
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1)]).areas(area);
    draw_header(frame, header, app);
    draw_footer(frame, footer, app);
    if app.fullscreen {
        draw_transcript(frame, body, app, true);
    } else {
        let [top, middle, bottom] =
            Layout::vertical([Constraint::Length(8), Constraint::Min(8), Constraint::Length(9)]).areas(body);
        let [routes, rates] = Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(top);
        let [sessions, transcript] =
            Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(middle);
        draw_routes(frame, routes, app);
        draw_rates(frame, rates, app);
        draw_sessions(frame, sessions, app);
        draw_transcript(frame, transcript, app, app.focus == Panel::Transcript);
        draw_handovers(frame, bottom, app);
    }
    if app.help {
        draw_help(frame, area);
    }
}

fn draw_header(frame: &mut Frame, area: Rect, app: &App) {
    let m = &app.live;
    let mut spans = vec![
        Span::styled(
            " baton ",
            Style::new()
                .fg(Color::Black)
                .bg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
        ),
        Span::raw(format!(" {} ", app.source)),
    ];
    if let Some(status) = &m.status {
        spans.push(Span::styled(format!("[{status}] "), Style::new().fg(Color::Yellow)));
    }
    spans.push(Span::raw(format!(
        "· sessions {} · handovers {} · failed {} · events {} · dropped {} ",
        m.total_sessions, m.total_handovers, m.total_failed, m.events, m.dropped
    )));
    match &m.shared_state {
        Some((backend, true)) => spans.push(Span::styled(
            format!("state shared ({backend}) "),
            Style::new().fg(Color::Green),
        )),
        Some((backend, false)) => spans.push(Span::styled(
            format!("state shared ({backend} down: local) "),
            Style::new().fg(Color::Red),
        )),
        None => {}
    }
    if app.replay.is_some() {
        spans.push(Span::styled(
            " REPLAY ",
            Style::new().fg(Color::Black).bg(Color::Magenta),
        ));
    } else if app.frozen.is_some() {
        spans.push(Span::styled(
            format!(" PAUSED (+{} events) ", app.events_since_pause()),
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ));
    } else {
        spans.push(Span::styled(" LIVE ", Style::new().fg(Color::Black).bg(Color::Green)));
    }
    frame.render_widget(Line::from(spans), area);
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App) {
    if let (Some(progress), false) = (app.replay, app.filtering) {
        let at = progress.at.as_secs_f64();
        let end = progress.end.as_secs_f64().max(0.001);
        let label = format!(
            " {} {at:.1}/{end:.1} s ×{} ",
            if progress.paused { "⏸" } else { "▶" },
            progress.speed
        );
        let keys = " space pause · +/- speed · n/N handover · ? help · q quit";
        let bar_width = (area.width as usize)
            .saturating_sub(label.chars().count() + keys.chars().count() + 2)
            .max(4);
        let filled = ((at / end) * bar_width as f64).round() as usize;
        let bar = format!(
            "[{}{}]",
            "█".repeat(filled.min(bar_width)),
            "░".repeat(bar_width - filled.min(bar_width))
        );
        let line = Line::from(vec![
            Span::styled(label, Style::new().fg(Color::Magenta)),
            Span::raw(bar),
            Span::styled(keys, Style::new().fg(Color::DarkGray)),
        ]);
        frame.render_widget(line, area);
        return;
    }
    let text = if app.filtering {
        format!(" filter: {}▏ (Enter to keep, Esc to stop typing)", app.filter)
    } else if !app.filter.is_empty() {
        format!(" filter: {:?} · Esc clears · ? help · q quit", app.filter)
    } else {
        " ↑↓/jk select · Enter transcript · Tab panel · p pause · / filter · ? help · q quit".to_string()
    };
    frame.render_widget(Paragraph::new(text).style(Style::new().fg(Color::DarkGray)), area);
}

/// How a health word is coloured.
fn health_style(health: &str) -> Style {
    match health {
        "ok" => Style::new().fg(Color::Green),
        "degraded" => Style::new().fg(Color::Yellow),
        _ => Style::new().fg(Color::Red),
    }
}

/// One row of the routes table: `name` (already styled) and `r`'s figures.
/// A route serving several models reads `k/n ok` (its models' rows say which):
/// one model's failures are not the route's.
fn route_row(name: Cell<'static>, r: &RouteView, now: Duration) -> Row<'static> {
    let (health, style) = if r.serves_several_models() {
        let ok = r.models.iter().filter(|(_, m)| m.health(now) == "ok").count();
        let style = match ok {
            0 => health_style("failing"),
            ok if ok == r.models.len() => health_style("ok"),
            _ => health_style("degraded"),
        };
        (format!("{ok}/{} ok", r.models.len()), style)
    } else {
        let health = r.health(now);
        (health.to_string(), health_style(health))
    };
    let ms = |v: Option<u64>| v.map_or("—".to_string(), |v| format!("{v}"));
    let failures = r
        .failures_by_class(now)
        .iter()
        .map(|(c, n)| format!("{} {n}", class_name(*c)))
        .collect::<Vec<_>>()
        .join(", ");
    Row::new(vec![
        name,
        Cell::from(health).style(style),
        Cell::from(format!("{}/{}", ms(r.ttft_ms(50.0)), ms(r.ttft_ms(99.0)))),
        Cell::from(format!("{:.0}", r.tokens_per_second(now))),
        Cell::from(r.attempts.to_string()),
        Cell::from(if failures.is_empty() {
            "—".to_string()
        } else {
            failures
        }),
    ])
}

/// The model rows a route serving several models gets, at most `room` of
/// them: the unhealthy first (they are why one looks), then the busiest; a
/// last `+N more` row when some do not fit.
fn model_rows(r: &RouteView, colour: Color, now: Duration, room: usize) -> Vec<Row<'static>> {
    if !r.serves_several_models() || room == 0 {
        return Vec::new();
    }
    let mut models: Vec<&(String, RouteView)> = r.models.iter().collect();
    models.sort_by_key(|(_, m)| (m.health(now) == "ok", std::cmp::Reverse(m.attempts)));
    let shown = if models.len() > room { room - 1 } else { models.len() };
    let style = Style::new().fg(colour);
    let mut rows: Vec<Row<'static>> = models
        .iter()
        .take(shown)
        .map(|(name, m)| route_row(Cell::from(format!(" · {name}")).style(style), m, now))
        .collect();
    if shown < models.len() {
        let more = format!(" · +{} more", models.len() - shown);
        rows.push(Row::new(vec![Cell::from(more).style(style)]));
    }
    rows
}

fn draw_routes(frame: &mut Frame, area: Rect, app: &App) {
    let m = app.model();
    // Borders and the header take three lines; every route keeps its own row.
    let mut room = (area.height as usize).saturating_sub(3).saturating_sub(m.routes.len());
    let mut rows = Vec::new();
    for (slot, (name, r)) in m.routes.iter().enumerate() {
        let colour = route_colour(slot);
        rows.push(route_row(
            Cell::from(name.clone()).style(Style::new().fg(colour)),
            r,
            app.now,
        ));
        let models = model_rows(r, colour, app.now, room);
        room -= models.len();
        rows.extend(models);
    }
    let header = Row::new(["route", "health", "ttft p50/p99", "tok/s", "tries", "failures (1 min)"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    // Model rows (` · name`) need a wider first column than route names.
    let names = if m.routes.iter().any(|(_, r)| r.serves_several_models()) {
        14
    } else {
        10
    };
    let widths = [
        Constraint::Length(names),
        Constraint::Length(8),
        Constraint::Length(12),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Min(10),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(block("Routes (ttft in ms)", false)),
        area,
    );
}

fn draw_rates(frame: &mut Frame, area: Rect, app: &App) {
    let m = app.model();
    let outer = block("Rates (last 60 s)", false);
    let inner = outer.inner(area);
    frame.render_widget(outer, area);
    let rows = Layout::vertical([Constraint::Length(2); 3]).split(inner);
    let series = [
        ("sessions/s", 0, Color::Cyan),
        ("handovers/s", 1, Color::Yellow),
        ("tokens/s", 2, Color::Green),
    ];
    for ((label, which, colour), row) in series.into_iter().zip(rows.iter()) {
        let data = m.rates.series(app.now, which);
        // The last complete second: the current one is still filling.
        let last = data.iter().rev().nth(1).copied().unwrap_or(0);
        let [name, spark] = Layout::horizontal([Constraint::Length(16), Constraint::Min(1)]).areas(*row);
        frame.render_widget(Paragraph::new(format!("{label} {last}")), name);
        let width = spark.width as usize;
        let tail = &data[data.len().saturating_sub(width)..];
        frame.render_widget(Sparkline::default().data(tail).style(Style::new().fg(colour)), spark);
    }
}

fn draw_sessions(frame: &mut Frame, area: Rect, app: &App) {
    let visible = app.visible_sessions();
    let selected = app.selected_session().map(|s| s.id);
    let height = area.height.saturating_sub(3) as usize;
    // Narrow terminals drop the door, ladder and age columns rather than truncating every one.
    let wide = area.width >= 70;
    let doors = area.width >= 82;
    let at = visible.iter().position(|s| Some(s.id) == selected).unwrap_or(0);
    let skip = at.saturating_sub(height.saturating_sub(1));
    let rows = visible.iter().skip(skip).take(height).map(|s| {
        let status_style = match s.status {
            Status::Streaming => Style::new().fg(Color::Cyan),
            Status::HandedOver => Style::new().fg(Color::Yellow),
            Status::Done => Style::new().fg(Color::Green),
            Status::Failed => Style::new().fg(Color::Red),
        };
        let mut cells = vec![
            Cell::from(s.short_id()),
            Cell::from(s.state_text()).style(status_style),
            Cell::from(s.chain_text()),
            Cell::from(s.tokens.to_string()),
            Cell::from(s.handovers.to_string()),
        ];
        if wide {
            cells.insert(1, Cell::from(s.ladder.clone()));
            cells.push(Cell::from(age(app.now, s.seen_at)));
        }
        if doors {
            cells.insert(2, Cell::from(s.door_text()));
        }
        let row = Row::new(cells);
        if Some(s.id) == selected {
            row.style(Style::new().add_modifier(Modifier::REVERSED))
        } else {
            row
        }
    });
    let (header, widths) = if wide {
        let mut header = vec!["id", "ladder", "status", "route chain", "tokens", "hand", "age"];
        let mut widths = vec![
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Length(11),
            Constraint::Min(16),
            Constraint::Length(6),
            Constraint::Length(4),
            Constraint::Length(6),
        ];
        if doors {
            header.insert(2, "door");
            widths.insert(2, Constraint::Length(9));
        }
        (Row::new(header), widths)
    } else {
        (
            Row::new(["id", "status", "route chain", "tok", "hand"]),
            vec![
                Constraint::Length(8),
                Constraint::Length(11),
                Constraint::Min(10),
                Constraint::Length(4),
                Constraint::Length(4),
            ],
        )
    };
    let header = header.style(Style::new().add_modifier(Modifier::BOLD));
    let title = format!("Sessions ({} shown of {})", visible.len(), app.model().total_sessions);
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(block(&title, app.focus == Panel::Sessions)),
        area,
    );
}

/// How reasoning reads in the transcript: its route's colour, dimmed and in
/// italics, so it never passes for the answer.
pub fn reasoning_style(colour: Color) -> Style {
    Style::new().fg(colour).add_modifier(Modifier::DIM | Modifier::ITALIC)
}

fn draw_transcript(frame: &mut Frame, area: Rect, app: &App, focused: bool) {
    let m = app.model();
    let Some(session) = app.selected_session() else {
        frame.render_widget(
            Paragraph::new("No session yet.").block(block("Transcript", focused)),
            area,
        );
        return;
    };
    let mut lines: Vec<Line> = vec![Line::default()];
    for piece in &session.pieces {
        match piece {
            Piece::Text(part) => {
                let style = Style::new().fg(route_colour(m.route_slot(&part.route)));
                for (i, chunk) in part.text.split('\n').enumerate() {
                    if i > 0 {
                        lines.push(Line::default());
                    }
                    if let Some(line) = lines.last_mut() {
                        line.spans.push(Span::styled(chunk.to_string(), style));
                    }
                }
            }
            Piece::Reasoning(part) => {
                let style = reasoning_style(route_colour(m.route_slot(&part.route)));
                for (i, chunk) in part.text.split('\n').enumerate() {
                    if i > 0 {
                        lines.push(Line::default());
                    }
                    if let Some(line) = lines.last_mut() {
                        line.spans.push(Span::styled(chunk.to_string(), style));
                    }
                }
            }
            Piece::Splice(marker) => {
                if let Some(line) = lines.last_mut() {
                    let style = Style::new()
                        .fg(Color::Black)
                        .bg(Color::Yellow)
                        .add_modifier(Modifier::BOLD);
                    line.spans.push(Span::styled(format!(" {marker} "), style));
                }
            }
        }
    }
    let door = match session.door {
        Some(_) => format!(" · {}", session.door_text()),
        None => String::new(),
    };
    let title = format!(
        "Transcript {}{door} · {} · {}{}",
        session.short_id(),
        session.chain_text(),
        session.state_text(),
        if app.fullscreen { " · Enter/Esc to close" } else { "" }
    );
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((app.transcript_scroll, 0))
            .block(block(&title, focused)),
        area,
    );
}

fn draw_handovers(frame: &mut Frame, area: Rect, app: &App) {
    let m = app.model();
    let height = area.height.saturating_sub(3) as usize;
    let rows = m
        .handovers
        .iter()
        .rev()
        .skip(app.handover_scroll)
        .take(height)
        .map(|h| {
            Row::new(vec![
                Cell::from(format!("{:>7.1}s", h.at.as_secs_f64())),
                Cell::from(h.session.clone()),
                Cell::from(Line::from(vec![
                    Span::styled(h.from.clone(), Style::new().fg(route_colour(m.route_slot(&h.from)))),
                    Span::raw(" → "),
                    Span::styled(h.to.clone(), Style::new().fg(route_colour(m.route_slot(&h.to)))),
                ])),
                Cell::from(if h.during_reasoning {
                    format!("{} ({}) · during reasoning", h.reason, class_name(h.class))
                } else {
                    format!("{} ({})", h.reason, class_name(h.class))
                }),
                Cell::from(h.prefix_bytes.to_string()),
                Cell::from(format!("{} ms", h.gap_ms)),
            ])
        });
    let header = Row::new(["time", "session", "from → to", "reason (class)", "prefix B", "gap"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let widths = [
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(26),
        Constraint::Min(24),
        Constraint::Length(8),
        Constraint::Length(9),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(block("Handover log", app.focus == Panel::Handovers)),
        area,
    );
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("↑ ↓  j k   select a session (or scroll the focused panel)"),
        Line::from("Enter      open / close the transcript full-screen"),
        Line::from("Tab        move between sessions, transcript and handover log"),
        Line::from("p          pause / resume the live view (events are still counted)"),
        Line::from("/          filter sessions by id, ladder, status or route; Esc clears"),
        Line::from("?          this help"),
        Line::from("q  Ctrl-C  quit"),
        Line::from(""),
        Line::from("Transcript colours: one per route, reasoning dimmed. ⟫ marks a splice."),
        Line::from("Live sessions: waiting, thinking or answering (yellow once handed over)."),
    ];
    let width = 76.min(area.width);
    let height = (text.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(text).block(Block::bordered().title(" Help · any key closes ")),
        popup,
    );
}
