//! The dashboard drawn into ratatui's `TestBackend` from a fixed event
//! sequence: one snapshot per behaviour, at two terminal sizes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::time::Duration;

use baton::continuation::ContinuationMode;
use baton::dashboard::app::{App, Control};
use baton::dashboard::model::{Model, DETAILED_SESSIONS, HANDOVER_LOG};
use baton::dashboard::ui::draw;
use baton::engine::event::{EngineEvent, EventKind};
use baton::failure::{Failure, FailureKind};
use baton::provider::UpstreamRequest;
use baton::Usage;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use uuid::Uuid;

fn ev(session: u128, t_ms: u64, kind: EventKind) -> EngineEvent {
    EngineEvent {
        session: Uuid::from_u128(session),
        t_ms,
        kind,
    }
}

fn started(ladder: &str, messages: usize) -> EventKind {
    EventKind::SessionStarted {
        ladder: ladder.into(),
        messages,
        spec: None,
        request: None,
    }
}

fn opened(route: &str, attempt: u32, prefix_bytes: u64) -> EventKind {
    EventKind::AttemptOpened {
        route: route.into(),
        model: format!("{route}-model"),
        attempt,
        mode: ContinuationMode::Prefill,
        prefix_bytes,
        request: UpstreamRequest {
            model: format!("{route}-model"),
            messages: Vec::new(),
            params: Default::default(),
            continue_final_message: false,
        },
        deadlines: None,
        seen_echoing: false,
        stripped: false,
    }
}

fn delta(route: &str, text: &str) -> EventKind {
    EventKind::Delta {
        route: route.into(),
        text: text.into(),
    }
}

/// Three sessions: one spliced after a stall, one clean, one still streaming.
fn script() -> Vec<(u64, EngineEvent)> {
    let stall = FailureKind::Stall {
        after: Duration::from_secs(3),
    };
    let a = 0xa11ce_u128 << 96;
    let b = 0xb0b_u128 << 100;
    let c = 0xc0ffee_u128 << 96;
    vec![
        (100, ev(a, 0, started("chat", 2))),
        (110, ev(a, 10, opened("primary", 1, 0))),
        (
            150,
            ev(
                a,
                50,
                EventKind::FirstToken {
                    route: "primary".into(),
                    ttft_ms: 40,
                },
            ),
        ),
        (150, ev(a, 50, delta("primary", "The relay runner passes the "))),
        (300, ev(a, 200, delta("primary", "baton at the"))),
        (
            3300,
            ev(
                a,
                3200,
                EventKind::Failure {
                    failure: Failure::new(&stall, "primary", 12, 40, 3200),
                    cause: stall.clone(),
                },
            ),
        ),
        (3310, ev(a, 3210, opened("fallback", 2, 40))),
        (
            3350,
            ev(
                a,
                3250,
                EventKind::Handover {
                    from: "primary".into(),
                    to: "fallback".into(),
                    class: baton::FailureClass::Technical,
                    reason: "stall".into(),
                    prefix_bytes: 40,
                    gap_ms: 48,
                },
            ),
        ),
        (3350, ev(a, 3250, delta("fallback", " line, without breaking stride."))),
        (
            3400,
            ev(
                a,
                3300,
                EventKind::Finished {
                    finish_reason: "stop".into(),
                    route_chain: vec!["primary".into(), "fallback".into()],
                    bytes: 71,
                    usage: Usage::default(),
                    tokens: None,
                    tool_calls: vec![],
                },
            ),
        ),
        (1000, ev(b, 0, started("batch", 4))),
        (1010, ev(b, 10, opened("primary", 1, 0))),
        (
            1060,
            ev(
                b,
                60,
                EventKind::FirstToken {
                    route: "primary".into(),
                    ttft_ms: 50,
                },
            ),
        ),
        (1060, ev(b, 60, delta("primary", "A clean answer."))),
        (
            1100,
            ev(
                b,
                100,
                EventKind::Finished {
                    finish_reason: "stop".into(),
                    route_chain: vec!["primary".into()],
                    bytes: 15,
                    usage: Usage::default(),
                    tokens: None,
                    tool_calls: vec![],
                },
            ),
        ),
        (3500, ev(c, 0, started("chat", 2))),
        (3510, ev(c, 10, opened("primary", 1, 0))),
        (3560, ev(c, 60, delta("primary", "Still streaming…"))),
    ]
}

fn app() -> App {
    let mut app = App::new("test feed");
    let mut events = script();
    events.sort_by_key(|(t, _)| *t);
    for (t, e) in &events {
        app.on_event(e, Duration::from_millis(*t));
    }
    app.tick(Duration::from_millis(4000));
    app
}

fn render(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal.draw(|f| draw(f, app)).expect("draw");
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..height {
        let mut line = String::new();
        for x in 0..width {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn key(app: &mut App, code: KeyCode) -> Control {
    app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
}

#[test]
fn overview_with_a_handover_at_120x40() {
    insta::assert_snapshot!(render(&app(), 120, 40));
}

#[test]
fn overview_with_a_handover_at_80x24() {
    insta::assert_snapshot!(render(&app(), 80, 24));
}

#[test]
fn transcript_full_screen_marks_the_splice_and_its_cause() {
    let mut app = app();
    key(&mut app, KeyCode::Enter);
    let screen = render(&app, 100, 30);
    assert!(screen.contains("⟫ stall 3.0 s after 12 tokens → fallback"), "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn filtered_session_list_shows_only_matches() {
    let mut app = app();
    key(&mut app, KeyCode::Char('/'));
    for c in "batch".chars() {
        key(&mut app, KeyCode::Char(c));
    }
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.visible_sessions().len(), 1);
    insta::assert_snapshot!(render(&app, 120, 40));
}

#[test]
fn help_overlay() {
    let mut app = app();
    key(&mut app, KeyCode::Char('?'));
    insta::assert_snapshot!(render(&app, 100, 30));
    assert_eq!(key(&mut app, KeyCode::Char('x')), Control::Continue);
    assert!(!app.help, "any key closes the help");
}

#[test]
fn too_small_terminal_says_so() {
    let screen = render(&app(), 60, 12);
    assert!(screen.contains("Terminal too small"), "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn paused_view_freezes_but_counts_events() {
    let mut app = app();
    key(&mut app, KeyCode::Char('p'));
    let later = ev(7, 0, started("late", 1));
    app.on_event(&later, Duration::from_millis(4100));
    assert_eq!(app.events_since_pause(), 1);
    assert!(
        app.visible_sessions().iter().all(|s| s.ladder != "late"),
        "the paused view is frozen"
    );
    insta::assert_snapshot!(render(&app, 120, 40));
    key(&mut app, KeyCode::Char('p'));
    assert!(app.visible_sessions().iter().any(|s| s.ladder == "late"));
}

#[test]
fn selection_moves_and_stays_on_its_session() {
    let mut app = app();
    // Following: the newest session with a handover (the oldest of the three here).
    let first = app.selected_session().map(|s| s.id);
    assert_eq!(first, Some(Uuid::from_u128(0xa11ce_u128 << 96)));
    key(&mut app, KeyCode::Char('k'));
    let second = app.selected_session().map(|s| s.id);
    assert_ne!(first, second);
    app.on_event(&ev(8, 0, started("new", 1)), Duration::from_millis(4200));
    assert_eq!(
        app.selected_session().map(|s| s.id),
        second,
        "a new session must not move the selection"
    );
    assert_eq!(key(&mut app, KeyCode::Char('q')), Control::Quit);
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Control::Quit
    );
}

/// A load check with generous bounds: 100,000 sessions' events through the
/// model keep only the bounded windows in memory.
#[test]
fn a_hundred_thousand_sessions_keep_memory_bounded() {
    let mut model = Model::default();
    let stall = FailureKind::Stall {
        after: Duration::from_secs(1),
    };
    for i in 0..100_000u128 {
        let now = Duration::from_millis(i as u64);
        model.apply(&ev(i, 0, started("chat", 2)), now);
        model.apply(&ev(i, 1, opened("primary", 1, 0)), now);
        model.apply(
            &ev(
                i,
                2,
                EventKind::FirstToken {
                    route: "primary".into(),
                    ttft_ms: 40,
                },
            ),
            now,
        );
        model.apply(&ev(i, 2, delta("primary", "some words of the answer ")), now);
        model.apply(
            &ev(
                i,
                3,
                EventKind::Failure {
                    failure: Failure::new(&stall, "primary", 1, 25, 3),
                    cause: stall.clone(),
                },
            ),
            now,
        );
        model.apply(
            &ev(
                i,
                4,
                EventKind::Handover {
                    from: "primary".into(),
                    to: "fallback".into(),
                    class: baton::FailureClass::Technical,
                    reason: "stall".into(),
                    prefix_bytes: 25,
                    gap_ms: 5,
                },
            ),
            now,
        );
        model.apply(&ev(i, 5, delta("fallback", "and the rest.")), now);
        model.apply(
            &ev(
                i,
                6,
                EventKind::Finished {
                    finish_reason: "stop".into(),
                    route_chain: vec![],
                    bytes: 38,
                    usage: Usage::default(),
                    tokens: None,
                    tool_calls: vec![],
                },
            ),
            now,
        );
    }
    assert_eq!(model.total_sessions, 100_000);
    assert_eq!(model.total_handovers, 100_000);
    assert_eq!(model.sessions.len(), DETAILED_SESSIONS);
    assert_eq!(model.handovers.len(), HANDOVER_LOG);
    assert_eq!(model.routes.len(), 2);
    // The newest session is kept in detail, the oldest is not.
    assert!(model.session(&Uuid::from_u128(99_999)).is_some());
    assert!(model.session(&Uuid::from_u128(0)).is_none());
}

#[test]
fn the_splice_marker_names_the_failure_that_caused_the_handover() {
    let mut model = Model::default();
    let malformed = FailureKind::Malformed {
        detail: "bad json".into(),
    };
    let prefill = FailureKind::PrefillRejected {
        message: "no prefill".into(),
    };
    let now = Duration::from_secs(1);
    model.apply(&ev(1, 0, started("chat", 2)), now);
    model.apply(&ev(1, 1, delta("primary", "Half an ans")), now);
    model.apply(
        &ev(
            1,
            2,
            EventKind::Failure {
                failure: Failure::new(&malformed, "primary", 4, 11, 2),
                cause: malformed.clone(),
            },
        ),
        now,
    );
    model.apply(
        &ev(
            1,
            3,
            EventKind::Failure {
                failure: Failure::new(&prefill, "echo", 0, 11, 3),
                cause: prefill.clone(),
            },
        ),
        now,
    );
    model.apply(
        &ev(
            1,
            4,
            EventKind::Handover {
                from: "primary".into(),
                to: "echo".into(),
                class: baton::FailureClass::Technical,
                reason: "malformed".into(),
                prefix_bytes: 11,
                gap_ms: 9,
            },
        ),
        now,
    );
    model.apply(&ev(1, 5, delta("echo", "wer.")), now);
    let session = model.session(&Uuid::from_u128(1)).expect("kept");
    assert_eq!(
        session.pieces.get(1),
        Some(&baton::dashboard::model::Piece::Splice(
            "⟫ malformed after 4 tokens → echo".into()
        ))
    );
}

fn demo_recordings() -> baton::record::reader::Recording {
    let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/demos/recordings"));
    let recording = baton::record::reader::read(&[dir]);
    assert!(recording.errors.is_empty(), "{:?}", recording.errors);
    recording
}

#[test]
fn replay_view_one_second_into_the_demo_recordings() {
    let mut player = baton::dashboard::replay::Player::new(&demo_recordings());
    let mut app = App::new("replay of demos/recordings");
    player.seek(&mut app, 1000);
    insta::assert_snapshot!(render(&app, 120, 40));
}

#[test]
fn replay_keys_pause_change_speed_and_jump_between_handovers() {
    let mut player = baton::dashboard::replay::Player::new(&demo_recordings());
    let mut app = App::new("replay");
    let press = |player: &mut baton::dashboard::replay::Player, app: &mut App, c: char| {
        assert!(
            player.on_key(app, KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)),
            "{c} is a replay key"
        );
    };
    press(&mut player, &mut app, 'n');
    assert_eq!(app.live.total_handovers, 1, "n stops right after the first handover");
    press(&mut player, &mut app, 'n');
    assert_eq!(app.live.total_handovers, 2);
    press(&mut player, &mut app, 'N');
    assert_eq!(app.live.total_handovers, 1, "N goes back, rebuilding the view");
    for _ in 0..10 {
        press(&mut player, &mut app, '+');
    }
    assert_eq!(player.progress().speed, 64.0);
    for _ in 0..10 {
        press(&mut player, &mut app, '-');
    }
    assert_eq!(player.progress().speed, 0.25);
    press(&mut player, &mut app, ' ');
    let at = player.progress().at;
    player.advance(&mut app, Duration::from_secs(5));
    assert_eq!(player.progress().at, at, "paused: time stands still");
    press(&mut player, &mut app, ' ');
    player.advance(&mut app, Duration::from_secs(4));
    assert_eq!(
        player.progress().at,
        at + Duration::from_secs(1),
        "4 s at ¼× is 1 s of recording"
    );
    assert!(!player.on_key(&mut app, KeyEvent::new(KeyCode::Char('j'), KeyModifiers::NONE)));
}

/// The ladder's own rungs show on the dashboard like routes: a dropped answer
/// the cache finished and one the safe reply closed, from real sessions.
#[tokio::test(start_paused = true)]
async fn the_cache_and_the_safe_reply_show_as_routes_and_handovers() {
    use baton::oracle::fault::{FaultPlan, FaultScript};
    use baton::oracle::provider::MockProvider;
    use baton::oracle::Style;
    use baton::rungs::cache::{CacheLimits, CacheRung, CacheUse, ResponseCache};
    use baton::rungs::safe_reply::SafeReply;
    use baton::{ChatRequest, Ladder, Message, Role, Route, Splicer};
    use std::sync::Arc;

    let mock = |fault: &str| {
        Arc::new(MockProvider::new(
            FaultPlan::Fixed(fault.parse::<FaultScript>().expect("fault")),
            Style::default(),
        ))
    };
    let conversation = |tag: &str| vec![Message::new(Role::User, format!("dashboard {tag}"))];
    let store = Arc::new(ResponseCache::new(CacheLimits::default()));
    let ladder = |fault: &str| {
        let mut l = Ladder::new(vec![Route::new("primary", "p", mock(fault))]).named("chat");
        l.cache = Some(CacheRung {
            uses: CacheUse::LastResort,
            store: store.clone(),
        });
        l.safe_reply = Some(SafeReply {
            reply: "Sorry.".into(),
            note: " [cut short]".into(),
        });
        Splicer::new(l)
    };
    let healthy = ladder("none");
    let dropping = ladder("drop@4");
    let mut feeds = vec![healthy.subscribe(), dropping.subscribe()];
    healthy.collect(ChatRequest::new(conversation("cached"))).await;
    dropping.collect(ChatRequest::new(conversation("cached"))).await;
    dropping.collect(ChatRequest::new(conversation("not cached"))).await;

    let mut app = App::new("test feed");
    let mut t = 0;
    for feed in &mut feeds {
        while let Ok(e) = feed.try_recv() {
            t += 1;
            app.on_event(&e, Duration::from_millis(t));
        }
    }
    app.tick(Duration::from_millis(t + 100));
    let screen = render(&app, 120, 40);
    for wanted in ["cache", "safe-reply", "primary → cache", "primary → safe-reply"] {
        assert!(screen.contains(wanted), "{wanted:?} is not on the screen:\n{screen}");
    }
}

fn opened_as(route: &str, model: &str, attempt: u32, prefix_bytes: u64) -> EventKind {
    match opened(route, attempt, prefix_bytes) {
        EventKind::AttemptOpened {
            mode,
            prefix_bytes,
            mut request,
            deadlines,
            seen_echoing,
            stripped,
            ..
        } => {
            request.model = model.into();
            EventKind::AttemptOpened {
                route: route.into(),
                model: model.into(),
                attempt,
                mode,
                prefix_bytes,
                request,
                deadlines,
                seen_echoing,
                stripped,
            }
        }
        other => other,
    }
}

fn breaker(route: &str, model: Option<&str>, to: baton::policy::breaker::BreakerState) -> EventKind {
    EventKind::Breaker {
        route: route.into(),
        model: model.map(str::to_string),
        from: baton::policy::breaker::BreakerState::Closed,
        to,
    }
}

fn finished(chain: &[&str]) -> EventKind {
    EventKind::Finished {
        finish_reason: "stop".into(),
        route_chain: chain.iter().map(|r| r.to_string()).collect(),
        bytes: 10,
        usage: Usage::default(),
        tokens: None,
        tool_calls: vec![],
    }
}

/// A pass-through primary serving "good" and "bad": "good" answers each time,
/// "bad" misses its first token three times (its breaker opens) and the
/// fallback answers for it.
fn two_models() -> App {
    let late = FailureKind::FirstTokenTimeout {
        after: Duration::from_secs(1),
    };
    let mut app = App::new("test feed");
    let mut t = 0;
    let mut at = |app: &mut App, session: u128, kind: EventKind| {
        t += 10;
        app.on_event(&ev(session, t, kind), Duration::from_millis(t));
    };
    for (i, model) in ["good", "bad", "good", "bad", "bad", "good"].iter().enumerate() {
        let s = i as u128 + 1;
        at(&mut app, s, started("any", 1));
        at(&mut app, s, opened_as("primary", model, 1, 0));
        if *model == "good" {
            at(
                &mut app,
                s,
                EventKind::FirstToken {
                    route: "primary".into(),
                    ttft_ms: 30,
                },
            );
            at(&mut app, s, delta("primary", "A good answer."));
            at(&mut app, s, finished(&["primary"]));
            continue;
        }
        at(
            &mut app,
            s,
            EventKind::Failure {
                failure: Failure::new(&late, "primary", 0, 0, 1000),
                cause: late.clone(),
            },
        );
        if i == 4 {
            at(
                &mut app,
                s,
                breaker("primary", Some("bad"), baton::policy::breaker::BreakerState::Open),
            );
        }
        at(&mut app, s, opened_as("fallback", "oracle", 2, 0));
        at(
            &mut app,
            s,
            EventKind::Handover {
                from: "primary".into(),
                to: "fallback".into(),
                class: baton::FailureClass::Technical,
                reason: "first_token_timeout".into(),
                prefix_bytes: 0,
                gap_ms: 3,
            },
        );
        at(
            &mut app,
            s,
            EventKind::FirstToken {
                route: "fallback".into(),
                ttft_ms: 20,
            },
        );
        at(&mut app, s, delta("fallback", "The fallback's answer."));
        at(&mut app, s, finished(&["fallback"]));
    }
    app.tick(Duration::from_millis(t + 100));
    app
}

#[test]
fn a_route_serving_several_models_shows_each_models_health() {
    use baton::policy::breaker::BreakerState;
    let app = two_models();
    let routes = &app.live.routes;
    let (name, primary) = &routes[0];
    assert_eq!(name, "primary");
    let models: Vec<(&str, Option<BreakerState>, u64)> = primary
        .models
        .iter()
        .map(|(n, m)| (n.as_str(), m.breaker, m.attempts))
        .collect();
    assert_eq!(models, [("good", None, 3), ("bad", Some(BreakerState::Open), 3)]);
    assert_eq!(
        primary.breaker,
        Some(BreakerState::Closed),
        "one model's open breaker does not open the route"
    );
    let now = app.now;
    assert_eq!(primary.models[0].1.health(now), "ok");
    assert_eq!(primary.models[1].1.health(now), "open");
    assert_eq!(primary.models[0].1.ttft_ms(50.0), Some(30));
    // The fallback serves one model: no rows of its own for it.
    assert!(!routes[1].1.serves_several_models());

    let screen = render(&app, 120, 40);
    let row = |start: &str| {
        screen
            .lines()
            .find(|l| l.trim_start_matches('│').starts_with(start))
            .unwrap_or_else(|| panic!("no row {start:?} in\n{screen}"))
            .to_string()
    };
    assert!(
        row("primary ").contains(" 1/2 ok "),
        "one of its two models is healthy: {screen}"
    );
    assert!(row(" · bad ").contains("open"), "{screen}");
    assert!(row(" · good ").contains(" ok "), "{screen}");
    assert!(!screen.contains(" · oracle"), "{screen}");
    // The unhealthy model is listed first.
    let bad_at = screen.find(" · bad ").expect("bad row");
    let good_at = screen.find(" · good ").expect("good row");
    assert!(bad_at < good_at, "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn model_rows_that_do_not_fit_are_counted_and_every_route_keeps_its_row() {
    let mut app = App::new("test feed");
    for i in 0..10u128 {
        app.on_event(&ev(i, 0, started("any", 1)), Duration::from_millis(1));
        app.on_event(
            &ev(i, 1, opened_as("open", &format!("m{i}"), 1, 0)),
            Duration::from_millis(2),
        );
        app.on_event(&ev(i, 2, finished(&["open"])), Duration::from_millis(3));
    }
    app.on_event(&ev(99, 0, started("any", 1)), Duration::from_millis(4));
    app.on_event(&ev(99, 1, opened("spare", 1, 0)), Duration::from_millis(5));
    app.tick(Duration::from_millis(100));
    let screen = render(&app, 120, 40);
    // Eight lines: borders, header, the two routes and three model rows, the last one "+8 more".
    assert!(screen.contains(" · +8 more"), "{screen}");
    assert!(
        screen.lines().any(|l| l.trim_start_matches('│').starts_with("spare ")),
        "{screen}"
    );
    assert_eq!(screen.matches(" · m").count(), 2, "{screen}");
}

#[test]
fn models_per_route_are_bounded_and_old_breaker_events_still_count() {
    let mut model = Model::default();
    let n = baton::policy::health::MAX_MODELS + 10;
    for i in 0..n {
        let now = Duration::from_millis(i as u64);
        model.apply(&ev(i as u128, 0, started("any", 1)), now);
        model.apply(&ev(i as u128, 1, opened_as("open", &format!("m{i}"), 1, 0)), now);
    }
    let (_, open) = &model.routes[0];
    assert_eq!(open.models.len(), baton::policy::health::MAX_MODELS);
    assert_eq!(open.attempts, n as u64, "the route counts every attempt");
    assert!(
        open.models.iter().all(|(name, _)| name != "m0"),
        "the least recently seen went first"
    );
    assert!(open.models.iter().any(|(name, _)| *name == format!("m{}", n - 1)));
    // A recording made when breakers were per route: the route's state is the event's.
    model.apply(
        &ev(1, 5, breaker("open", None, baton::policy::breaker::BreakerState::Open)),
        Duration::from_secs(1),
    );
    assert_eq!(
        model.routes[0].1.breaker,
        Some(baton::policy::breaker::BreakerState::Open)
    );
    assert_eq!(model.routes[0].1.health(Duration::from_secs(1)), "open");
}

// ------------------------------------------------------------ reasoning

fn reasoning(route: &str, text: &str) -> EventKind {
    EventKind::Reasoning {
        route: route.into(),
        text: text.into(),
    }
}

fn handover(from: &str, to: &str, reason: &str, prefix_bytes: u64) -> EventKind {
    EventKind::Handover {
        from: from.into(),
        to: to.into(),
        class: baton::FailureClass::Technical,
        reason: reason.into(),
        prefix_bytes,
        gap_ms: 40,
    }
}

const THINKER: u128 = 0x7417_u128 << 112;
const ANSWERER: u128 = 0xa45_u128 << 116;

/// A reasoning session stalled in its thinking and handed over, the fallback
/// thinking afresh after the seam marker (answering once `answer` is given),
/// and an older session cut after its text had begun.
fn thinking_app(answer: Option<&str>) -> App {
    let stall = FailureKind::Stall {
        after: Duration::from_millis(400),
    };
    let failure = |route: &str, tokens: u64, bytes: u64| EventKind::Failure {
        failure: Failure::new(&stall, route, tokens, bytes, 900),
        cause: stall.clone(),
    };
    let (a, b) = (ANSWERER, THINKER);
    let mut events = vec![
        ev(a, 0, started("chat", 1)),
        ev(a, 5, opened_as("primary", "oracle-big", 1, 0)),
        ev(a, 30, reasoning("primary", "Weighing it.")),
        ev(a, 40, delta("primary", "Blue ")),
        ev(a, 500, failure("primary", 2, 5)),
        ev(a, 505, opened_as("fallback", "oracle-small", 2, 5)),
        ev(a, 540, handover("primary", "fallback", "stall", 5)),
        ev(a, 540, delta("fallback", "sky.")),
        ev(a, 560, finished(&["primary", "fallback"])),
        ev(b, 0, started("thinking", 1)),
        ev(b, 5, opened_as("primary", "oracle-think", 1, 0)),
        ev(b, 35, reasoning("primary", "Let me think ")),
        ev(b, 45, reasoning("primary", "about the sky.")),
        ev(b, 900, failure("primary", 2, 0)),
        ev(b, 905, opened_as("fallback", "oracle-think-small", 2, 0)),
        ev(b, 940, handover("primary", "fallback", "stall", 0)),
        ev(b, 940, reasoning("fallback", baton::policy::reasoning::SEAM_MARKER)),
        ev(b, 950, reasoning("fallback", "Fresh look: scattering.")),
    ];
    if let Some(text) = answer {
        events.push(ev(b, 990, delta("fallback", text)));
    }
    let mut app = App::new("test feed");
    for e in &events {
        // Session a runs first, b a second later: the dashboard sees each at its own time.
        let base = if e.session == Uuid::from_u128(THINKER) { 1000 } else { 0 };
        app.on_event(e, Duration::from_millis(base + e.t_ms));
    }
    app.tick(Duration::from_millis(2500));
    app
}

/// The row of `screen` holding `needle` (panics if none does).
fn row_with<'s>(screen: &'s str, needle: &str) -> &'s str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?}:\n{screen}"))
}

/// Where `text` starts on the drawn screen, as (x, y) of its first cell.
fn find(buffer: &ratatui::buffer::Buffer, text: &str) -> Option<(u16, u16)> {
    let area = buffer.area;
    let wanted: Vec<String> = text.chars().map(String::from).collect();
    (0..area.height).find_map(|y| {
        let cells: Vec<&str> = (0..area.width).map(|x| buffer[(x, y)].symbol()).collect();
        cells
            .windows(wanted.len())
            .position(|w| w.iter().zip(&wanted).all(|(a, b)| *a == b))
            .map(|x| (x as u16, y))
    })
}

/// The modifiers of the cells `text` is drawn in.
fn modifiers_of(app: &App, text: &str) -> Vec<ratatui::style::Modifier> {
    let mut terminal = Terminal::new(TestBackend::new(120, 40)).expect("test terminal");
    terminal.draw(|f| draw(f, app)).expect("draw");
    let buffer = terminal.backend().buffer().clone();
    let (x, y) = find(&buffer, text).unwrap_or_else(|| panic!("{text:?} is not drawn:\n{}", render(app, 120, 40)));
    (0..text.chars().count() as u16)
        .map(|i| buffer[(x + i, y)].modifier)
        .collect()
}

#[test]
fn a_thinking_session_shows_its_phase_its_reasoning_dimmed_and_its_handover_during_reasoning() {
    use ratatui::style::Modifier;
    let app = thinking_app(None);
    let screen = render(&app, 120, 40);
    insta::assert_snapshot!(screen);

    // The live session's phase, in its row and in the transcript's title.
    let thinker = &Uuid::from_u128(THINKER).simple().to_string()[..8];
    let answerer = &Uuid::from_u128(ANSWERER).simple().to_string()[..8];
    let row = row_with(&screen, &format!("│{thinker} "));
    assert!(row.contains(" thinking "), "{row}");
    assert!(
        row_with(&screen, &format!("│{answerer} ")).contains(" done "),
        "an ended session shows its status"
    );
    assert!(row_with(&screen, "Transcript").contains("· thinking"), "{screen}");

    // Reasoning, the seam marker included, is dimmed; the splice marker is not reasoning.
    for text in ["Let me think", "Fresh look", "[baton: the reasoning above"] {
        let modifiers = modifiers_of(&app, text);
        assert!(
            modifiers.iter().all(|m| m.contains(Modifier::DIM | Modifier::ITALIC)),
            "{text:?}: {modifiers:?}"
        );
    }
    assert!(
        modifiers_of(&app, "during reasoning → fallback")
            .iter()
            .all(|m| !m.contains(Modifier::DIM)),
        "{screen}"
    );

    // The log says which handover came during reasoning, and which did not.
    let log: Vec<&str> = screen.lines().skip_while(|l| !l.contains("Handover log")).collect();
    let of = |id: &str| {
        *log.iter()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("no log row for {id}:\n{screen}"))
    };
    assert!(of(thinker).contains("stall (technical) · during reasoning"), "{screen}");
    assert!(of(answerer).contains("stall (technical)"), "{screen}");
    assert!(!of(answerer).contains("during reasoning"), "{screen}");
    let rows = &app.model().handovers;
    assert_eq!(
        rows.iter().map(|h| h.during_reasoning).collect::<Vec<_>>(),
        [false, true]
    );
}

#[test]
fn once_the_answer_begins_the_phase_is_answering_and_the_answer_is_not_dimmed() {
    use ratatui::style::Modifier;
    let app = thinking_app(Some("Rayleigh scattering."));
    let screen = render(&app, 120, 40);
    let thinker = &Uuid::from_u128(THINKER).simple().to_string()[..8];
    assert!(
        row_with(&screen, &format!("│{thinker} ")).contains(" answering "),
        "{screen}"
    );
    assert!(row_with(&screen, "Transcript").contains("· answering"), "{screen}");
    let answer = modifiers_of(&app, "Rayleigh");
    assert!(answer.iter().all(|m| !m.contains(Modifier::DIM)), "{answer:?}");
    assert!(modifiers_of(&app, "Fresh look")
        .iter()
        .all(|m| m.contains(Modifier::DIM)));
    // Narrow, the phase still shows.
    let narrow = render(&app, 80, 24);
    assert!(
        row_with(&narrow, &format!("│{thinker} ")).contains(" answering "),
        "{narrow}"
    );
}

#[test]
fn the_header_says_whether_state_is_shared_and_whether_its_store_answers() {
    let mut app = app();
    let header = |app: &App| render(app, 160, 40).lines().next().unwrap_or_default().to_string();
    assert!(!header(&app).contains("state shared"), "{}", header(&app));
    let shared = |connected| EventKind::SharedState {
        backend: "redis".into(),
        connected,
    };
    app.on_event(&ev(0, 0, shared(true)), Duration::from_millis(4100));
    assert!(header(&app).contains("state shared (redis)"), "{}", header(&app));
    app.on_event(&ev(0, 0, shared(false)), Duration::from_millis(4200));
    assert!(
        header(&app).contains("state shared (redis down: local)"),
        "{}",
        header(&app)
    );
}
