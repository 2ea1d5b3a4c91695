//! Recording and replay: sessions recorded (demo, proxy, library) and
//! re-driven with `--verify`; the recordings in `demos/recordings/` are
//! verified here, so a change in splicing behaviour fails this test with a
//! readable diff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use baton::config::Config;
use baton::engine::event::{EngineEvent, EventBus};
use baton::oracle::fault::{FaultPlan, FaultScript};
use baton::oracle::provider::MockProvider;
use baton::oracle::Style;
use baton::provider::{Chunk, ChunkStream, Provider, UpstreamRequest};
use baton::record::reader::{self, RecordedSession};
use baton::record::verify::{self, Outcome, Verdict};
use baton::record::{RecordOptions, Recorder};
use support::TempDir;

use baton::{
    ChatRequest, ClientItem, ContinuationMode, EventKind, FailureKind, Ladder, Message, Role, Route, Splicer, Usage,
};

const BATON: &str = env!("CARGO_BIN_EXE_baton");

fn demos() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("demos/recordings")
}

fn verify_paths(paths: &[PathBuf]) -> (reader::Recording, Vec<Verdict>) {
    let recording = reader::read(paths);
    let verdicts = verify::verify(&recording.sessions);
    (recording, verdicts)
}

fn assert_all_ok(verdicts: &[Verdict]) {
    for v in verdicts {
        assert!(
            matches!(v.outcome, Outcome::Ok { .. }),
            "{}",
            baton::record::replay::verdict_line(v)
        );
    }
}

fn failure_kinds(sessions: &[RecordedSession]) -> Vec<String> {
    let mut kinds: Vec<String> = sessions
        .iter()
        .flat_map(|s| s.events.iter())
        .filter_map(|e| match &e.kind {
            baton::EventKind::Failure { failure, .. } => Some(failure.kind.clone()),
            _ => None,
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

// ------------------------------------------------------- demos/recordings

#[test]
fn the_recordings_in_demos_verify() {
    let (recording, verdicts) = verify_paths(&[demos()]);
    assert!(recording.errors.is_empty(), "{:?}", recording.errors);
    assert!(recording.warnings.is_empty(), "{:?}", recording.warnings);
    assert!(verdicts.len() >= 4, "{} recordings", verdicts.len());
    assert_all_ok(&verdicts);
    assert!(verdicts.iter().all(|v| v.outcome == Outcome::Ok { partial: false }));
    let kinds = failure_kinds(&recording.sessions);
    for kind in ["stall", "truncated", "malformed", "prefill_rejected", "empty_answer"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} among {kinds:?}");
    }
    // The reasoning recordings re-drive their reasoning too, seam marker included.
    let seams = recording
        .sessions
        .iter()
        .filter(|s| {
            s.events
                .iter()
                .any(|e| matches!(&e.kind, EventKind::Reasoning { text, .. } if text == baton::policy::reasoning::SEAM_MARKER))
        })
        .count();
    assert_eq!(seams, 2, "the thinking stall and the think-only answer");
}

#[test]
fn replay_verify_and_summary_on_the_command_line() {
    let out = Command::new(BATON)
        .args(["replay", "--verify"])
        .arg(demos())
        .output()
        .expect("run baton replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = std::fs::read_dir(demos())
        .expect("demos")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        })
        .count();
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), n, "{stdout}");
    assert!(stdout.contains(&format!("verified {n} sessions")), "{stdout}");

    let out = Command::new(BATON)
        .args(["replay", "--summary", "--json"])
        .arg(demos())
        .output()
        .expect("run baton replay");
    assert!(out.status.success());
    let summary: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(summary["totals"]["sessions"], n);
    assert_eq!(summary["totals"]["sessions_with_gaps"], 0);
    assert!(
        summary["totals"]["failures_by_kind"]["stall"].as_u64() >= Some(1),
        "{summary}"
    );
    let first = &summary["sessions"][0];
    for key in [
        "route_chain",
        "failures",
        "handovers",
        "gap_ms",
        "bytes",
        "prompt_tokens",
        "completion_tokens",
    ] {
        assert!(first.get(key).is_some(), "no {key} in {first}");
    }

    let out = Command::new(BATON)
        .arg("replay")
        .arg(demos().join("stall.jsonl"))
        .output()
        .expect("run baton replay");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("primary → steady"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a terminal, so this is the summary"));
}

// ------------------------------------------------------------ round trips

#[test]
fn a_recorded_demo_run_verifies_on_the_command_line() {
    let dir = TempDir::new("demo");
    let out = Command::new(BATON)
        .args(["demo", "--headless", "--sessions", "40", "--seed", "11", "--record"])
        .arg(dir.path())
        .output()
        .expect("run baton demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("recorded 40 sessions (0 incomplete)"), "{stderr}");
    assert!(stderr.contains(" 0 events dropped"), "{stderr}");
    let files = dir.files();
    assert_eq!(files.len(), 40);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in &files {
            let mode = std::fs::metadata(f).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", f.display());
        }
    }
    let out = Command::new(BATON)
        .args(["replay", "--verify"])
        .arg(dir.path())
        .output()
        .expect("run baton replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("verified 40 sessions from 40 files"), "{stdout}");
    assert!(stdout.contains("40 ok, 0 diverged"), "{stdout}");
}

/// An upstream that answers with tool calls (and, if `cut`, drops mid-call).
struct ToolUpstream {
    cut: bool,
}

impl Provider for ToolUpstream {
    fn stream(&self, _request: UpstreamRequest) -> ChunkStream {
        let cut = self.cut;
        Box::pin(async_stream::stream! {
            tokio::time::sleep(Duration::from_millis(25)).await;
            yield Ok(Chunk::Opened);
            yield Ok(Chunk::ToolCalls(vec![json!({"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}})]));
            tokio::time::sleep(Duration::from_millis(5)).await;
            if cut {
                yield Err(FailureKind::Truncated { detail: Some("cut mid-call".into()) });
                return;
            }
            yield Ok(Chunk::ToolCalls(vec![json!({"index": 0, "function": {"arguments": "{\"q\":1}"}})]));
            yield Ok(Chunk::Finish("tool_calls".into()));
            yield Ok(Chunk::Usage(Usage { prompt_tokens: 5, completion_tokens: 7, reasoning_tokens: None }));
            yield Ok(Chunk::Done);
        })
    }
}

fn mock(script: &str, style: Style) -> Arc<dyn Provider> {
    let script: FaultScript = script.parse().unwrap_or_else(|e| panic!("{e}"));
    Arc::new(MockProvider::new(FaultPlan::Fixed(script), style))
}

fn conversation(tag: &str) -> Vec<Message> {
    vec![
        Message::new(Role::System, "You are recorded."),
        Message::new(Role::User, format!("Tell me about {tag}.")),
    ]
}

/// Every kind of session the splicer can have, recorded under virtual time through the
/// library API and re-driven: all of them verify.
#[tokio::test(start_paused = true)]
async fn sessions_recorded_through_the_library_verify() {
    let dir = TempDir::new("library");
    let events = EventBus::new(1 << 16);
    let recorder = Recorder::attach(&events, RecordOptions::new(dir.path())).expect("recorder");
    let repeat = Style {
        repeat_words: 2,
        extra_space: false,
    };
    let ladder = |name: &str, routes: Vec<Route>| Splicer::with_events(Ladder::new(routes).named(name), events.clone());
    let cases: Vec<(&str, Splicer)> = vec![
        (
            "drop, prefill fallback",
            ladder(
                "a",
                vec![
                    Route::new("primary", "big", mock("drop@9", Style::default())),
                    Route::new("fallback", "small", mock("none", repeat)),
                ],
            ),
        ),
        (
            "stall, instruct fallback",
            ladder(
                "b",
                vec![
                    Route::new("primary", "big", mock("stall@7", Style::default())),
                    Route::new("fallback", "small", mock("none", repeat)).with_continuation(ContinuationMode::Instruct),
                ],
            ),
        ),
        (
            "prefill rejected",
            ladder(
                "c",
                vec![
                    Route::new("primary", "big", mock("malformed@4", Style::default())),
                    Route::new("fallback", "small", mock("noprefill", repeat)),
                ],
            ),
        ),
        (
            "retries with jitter",
            ladder(
                "d",
                vec![
                    Route::new("primary", "big", mock("503", Style::default())),
                    Route::new("fallback", "small", mock("none", Style::default())),
                ],
            ),
        ),
        (
            "refused",
            ladder(
                "e",
                vec![
                    Route::new("primary", "big", mock("policy", Style::default())),
                    Route::new("fallback", "small", mock("none", Style::default())),
                ],
            ),
        ),
        (
            "exhausted",
            ladder(
                "f",
                vec![
                    Route::new("primary", "big", mock("error@5", Style::default())),
                    Route::new("fallback", "small", mock("hang", Style::default())),
                ],
            ),
        ),
        (
            "tool calls",
            ladder(
                "g",
                vec![
                    Route::new("primary", "big", Arc::new(ToolUpstream { cut: true })),
                    Route::new("fallback", "small", Arc::new(ToolUpstream { cut: false })),
                ],
            ),
        ),
        (
            "pass-through model and params",
            ladder(
                "h",
                vec![
                    Route::new("primary", "{model}", mock("drop@3", Style::default())),
                    Route::new("fallback", "small", mock("none", repeat)).with_continuation(ContinuationMode::Instruct),
                ],
            ),
        ),
        (
            "a stall inside the thinking",
            ladder(
                "j",
                vec![
                    Route::new("primary", "big-think", mock("stall@3", Style::default())),
                    Route::new("fallback", "small-reason", mock("none", repeat)),
                ],
            ),
        ),
        (
            "a think-only finish, then a cut in the answer",
            ladder(
                "k",
                vec![
                    Route::new("primary", "big-think", mock("thinkonly", Style::default())),
                    Route::new("fallback", "small-think", mock("drop@60", repeat)),
                    Route::new("spare", "spare-think", mock("none", repeat))
                        .with_continuation(ContinuationMode::Instruct),
                ],
            ),
        ),
    ];
    for (tag, splicer) in &cases {
        let mut request = ChatRequest::new(conversation(tag));
        if tag.starts_with("pass-through") {
            request.model = Some("client-model".into());
            request.params.insert("temperature".into(), json!(0.25));
            request.params.insert("stop".into(), json!(["\n\n"]));
        }
        splicer.collect(request).await;
    }
    // A client that goes away mid-answer: the recording stops before the session's end.
    let gone = ladder("i", vec![Route::new("primary", "big", mock("none", Style::default()))]);
    let mut stream = gone.splice(ChatRequest::new(conversation("a client that leaves")));
    let mut texts = 0;
    while texts < 6 {
        if let Some(ClientItem::Text { .. }) = stream.next().await {
            texts += 1;
        }
    }
    drop(stream);

    let stats = recorder.finish().await;
    assert_eq!(
        (stats.sessions, stats.dropped, stats.write_errors),
        (11, 0, 0),
        "{stats}"
    );
    assert_eq!(stats.incomplete, 1, "the session whose client left");
    let (recording, verdicts) = verify_paths(&[dir.path().to_path_buf()]);
    assert!(recording.errors.is_empty(), "{:?}", recording.errors);
    assert_eq!(verdicts.len(), 11);
    assert_all_ok(&verdicts);
    let partial: Vec<_> = verdicts
        .iter()
        .filter(|v| v.outcome == Outcome::Ok { partial: true })
        .map(|v| v.ladder.as_str())
        .collect();
    assert_eq!(partial, vec!["i"]);
    let kinds = failure_kinds(&recording.sessions);
    for kind in [
        "content_policy",
        "empty_answer",
        "error_event",
        "first_token_timeout",
        "malformed",
        "prefill_rejected",
        "server_error",
        "stall",
        "truncated",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} among {kinds:?}");
    }
    // The reasoning sessions' recordings carry the reasoning, seam marker included.
    for ladder in ["j", "k"] {
        let session = recording
            .sessions
            .iter()
            .find(|s| s.ladder() == ladder)
            .expect("reasoning session");
        let reasoning: String = session
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Reasoning { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let (before, after) = reasoning
            .split_once(baton::policy::reasoning::SEAM_MARKER)
            .unwrap_or_else(|| panic!("[{ladder}] no seam in {reasoning:?}"));
        assert!(
            before.starts_with("Thinking:") && after.starts_with("Thinking:"),
            "[{ladder}] {reasoning:?}"
        );
    }
    let tool_session = recording
        .sessions
        .iter()
        .find(|s| s.ladder() == "g")
        .expect("tool session");
    let finished = tool_session
        .events
        .last()
        .map(|e| serde_json::to_value(e).expect("json"));
    assert_eq!(
        finished
            .as_ref()
            .map(|f| f["tool_calls"].as_array().map_or(0, Vec::len)),
        Some(2),
        "{finished:?}"
    );
}

// ------------------------------------------------------- divergences

/// `demos/recordings/drop.jsonl` with `edit` applied to its lines.
fn edited(mut edit: impl FnMut(&mut Vec<Value>)) -> String {
    let text = std::fs::read_to_string(demos().join("drop.jsonl")).expect("drop.jsonl");
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    edit(&mut lines);
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn seam(lines: &[Value]) -> u64 {
    lines
        .iter()
        .find(|l| l["event"] == "handover")
        .and_then(|l| l["prefix_bytes"].as_u64())
        .expect("a handover")
}

fn diverged(text: &str) -> verify::Divergence {
    let recording = reader::read_text(Path::new("edited.jsonl"), text);
    assert!(recording.errors.is_empty(), "{:?}", recording.errors);
    let verdicts = verify::verify(&recording.sessions);
    match &verdicts[0].outcome {
        Outcome::Diverged(d) => d.clone(),
        other => panic!("expected a divergence, got {other:?}"),
    }
}

#[test]
fn a_changed_continuation_diverges_at_the_seam() {
    // The fallback's first delta repeats less of the prefix: the current overlap rule
    // now keeps text it trimmed when the session was recorded.
    let text = edited(|lines| {
        let first = lines
            .iter_mut()
            .find(|l| l["event"] == "upstream" && l["attempt"] == 2 && l["item"]["type"] == "text")
            .expect("a fallback delta");
        let value = first["item"]["value"].as_str().unwrap_or_default().to_string();
        first["item"]["value"] = json!(format!("ZZZ {value}"));
    });
    let at = seam(
        &text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect::<Vec<Value>>(),
    );
    let d = diverged(&text);
    assert_eq!(d.at, at, "{d:?}");
    assert!(
        d.what.contains("at the seam of the handover primary → steady"),
        "{}",
        d.what
    );
    assert!(d.now.contains("| \"ZZZ "), "{}", d.now);
    assert!(!d.recorded.contains("ZZZ"), "{}", d.recorded);
}

#[test]
fn an_edited_client_text_diverges_where_it_was_edited() {
    let mut at = 0;
    let text = edited(|lines| {
        let handover = seam(lines);
        let mut bytes = 0u64;
        for l in lines.iter_mut().filter(|l| l["event"] == "delta") {
            let t = l["text"].as_str().unwrap_or_default().to_string();
            if bytes >= handover {
                l["text"] = json!(t.to_uppercase());
                at = bytes;
                break;
            }
            bytes += t.len() as u64;
        }
    });
    let d = diverged(&text);
    // The uppercased delta may share its first bytes (punctuation, spaces) with the original.
    assert!(d.at >= at && d.at < at + 8, "{d:?} (edited at {at})");
    assert!(
        d.what.contains("after the seam") || d.what.contains("at the seam"),
        "{}",
        d.what
    );

    let file = TempDir::new("edited");
    std::fs::create_dir_all(file.path()).expect("dir");
    let path = file.path().join("edited.jsonl");
    std::fs::write(&path, &text).expect("write");
    let out = Command::new(BATON)
        .args(["replay", "--verify"])
        .arg(&path)
        .output()
        .expect("run baton replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("FAIL "), "{stdout}");
    assert!(stdout.contains("recorded: ") && stdout.contains("now: "), "{stdout}");
    assert!(stdout.contains("1 diverged"), "{stdout}");
}

#[test]
fn a_changed_decision_is_reported_as_one() {
    // Recorded as if the ladder had waited 7 ms before its retry: the current splicer does not.
    let text = std::fs::read_to_string(demos().join("retries.jsonl")).expect("retries.jsonl");
    let mut changed = false;
    let text: String = text
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("json");
            if !changed && v["event"] == "retry" {
                v["delay_ms"] = json!(v["delay_ms"].as_u64().unwrap_or(0) + 7);
                changed = true;
            }
            format!("{v}\n")
        })
        .collect();
    let d = diverged(&text);
    assert_eq!(d.at, 0);
    assert!(d.what.contains("a different decision"), "{}", d.what);
    assert!(
        d.recorded.starts_with("retry primary after") && d.now.starts_with("retry primary after"),
        "{d:?}"
    );
}

// ------------------------------------------------------- bad input

#[test]
fn a_truncated_recording_is_read_up_to_the_cut_with_a_warning() {
    let text = std::fs::read_to_string(demos().join("stall.jsonl")).expect("stall.jsonl");
    // Killed mid-write, halfway through the file.
    let cut = &text[..text.len() / 2];
    let cut = &cut[..cut.rfind('\n').map_or(0, |i| i + 20)];
    let recording = reader::read_text(Path::new("cut.jsonl"), cut);
    assert!(recording.errors.is_empty(), "{:?}", recording.errors);
    assert_eq!(recording.warnings.len(), 1);
    assert!(
        recording.warnings[0].starts_with("cut.jsonl:"),
        "{:?}",
        recording.warnings
    );
    assert!(recording.warnings[0].contains("cut short"), "{:?}", recording.warnings);
    let verdicts = verify::verify(&recording.sessions);
    assert_eq!(verdicts[0].outcome, Outcome::Ok { partial: true }, "{verdicts:?}");

    let dir = TempDir::new("cut");
    std::fs::create_dir_all(dir.path()).expect("dir");
    std::fs::write(dir.path().join("cut.jsonl"), cut).expect("write");
    let out = Command::new(BATON)
        .args(["replay", "--verify"])
        .arg(dir.path())
        .output()
        .expect("run baton replay");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: "));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(partial"));
}

#[test]
fn corrupt_lines_unknown_versions_and_old_recordings_name_the_problem() {
    let text = std::fs::read_to_string(demos().join("malformed.jsonl")).expect("malformed.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    let dir = TempDir::new("bad");
    std::fs::create_dir_all(dir.path()).expect("dir");
    let write = |name: &str, lines: &[String]| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
        path
    };
    let run = |path: &Path| {
        let out = Command::new(BATON)
            .args(["replay", "--verify"])
            .arg(path)
            .output()
            .expect("run baton replay");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let mut corrupt: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    corrupt[5] = "{\"v\":1,\"session\": garbage".into();
    let path = write("corrupt.jsonl", &corrupt);
    let (code, stdout, stderr) = run(&path);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("{}:6: corrupt line", path.display())),
        "{stderr}"
    );
    assert!(stdout.contains("could not be read"), "{stdout}");

    let mut newer: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    newer[3] = newer[3].replacen("\"v\":1", "\"v\":9", 1);
    let path = write("newer.jsonl", &newer);
    let (code, _, stderr) = run(&path);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("{}:4: recording format v9 is newer", path.display())),
        "{stderr}"
    );

    // A session_started without the ladder description: what an older baton wrote.
    let mut old: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut start: Value = serde_json::from_str(&old[0]).expect("json");
    if let Some(map) = start.as_object_mut() {
        map.remove("spec");
        map.remove("request");
    }
    old[0] = start.to_string();
    let path = write("old.jsonl", &old);
    let (code, stdout, _) = run(&path);
    assert_eq!(code, Some(1));
    assert!(stdout.contains("recorded by an incompatible version"), "{stdout}");
}

#[test]
fn a_recording_with_dropped_events_is_not_verified_and_says_so() {
    // The feed overflowed before the recorder read it: its first recv reports the loss.
    let events = EventBus::new(4);
    let receiver = events.subscribe();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = TempDir::new("dropped");
    let text = std::fs::read_to_string(demos().join("drop.jsonl")).expect("drop.jsonl");
    let recorded: Vec<EngineEvent> = reader::read_text(Path::new("drop.jsonl"), &text).sessions[0]
        .events
        .clone();
    for e in &recorded {
        events.send(e.clone());
    }
    let stats = runtime.block_on(async {
        let recorder = Recorder::start(receiver, RecordOptions::new(dir.path())).expect("recorder");
        recorder.finish().await
    });
    assert_eq!(stats.dropped, recorded.len() as u64 - 4, "{stats}");
    assert_eq!((stats.sessions, stats.incomplete), (1, 1), "{stats}");
    let out = Command::new(BATON)
        .args(["replay", "--verify"])
        .arg(dir.path())
        .output()
        .expect("run baton replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.starts_with("skip "), "{stdout}");
    assert!(stdout.contains("cannot be verified"), "{stdout}");
    let out = Command::new(BATON)
        .args(["replay", "--summary"])
        .arg(dir.path())
        .output()
        .expect("run baton replay");
    assert!(String::from_utf8_lossy(&out.stdout).contains("events missing"));
}

// ------------------------------------------------------- secrets

const CLIENT_KEY: &str = "sk-client-SECRET-4c1d2a9e";
const UPSTREAM_KEY: &str = "sk-upstream-SECRET-8b7f3e21";
const PARAM_KEY: &str = "sk-param-SECRET-5e6f7a8b";

use support::oracle_repeating as oracle;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_a_recording() {
    let dir = TempDir::new("proxy");
    let (primary, _p) = oracle("drop@6").await;
    let (fallback, _f) = oracle("none").await;
    let toml = format!(
        r#"
        [server]
        api_key_env = "CLIENT_KEY"
        record_dir = "{}"

        [[route]]
        name = "primary"
        provider = "openai"
        base_url = "{primary}"
        model = "big"
        api_key_env = "UPSTREAM_KEY"

        [[route]]
        name = "fallback"
        provider = "openai"
        base_url = "{fallback}"
        model = "small"
        api_key_env = "UPSTREAM_KEY"
        continuation = "instruct"

        [[ladder]]
        name = "chat"
        routes = ["primary", "fallback"]
        "#,
        dir.path().display()
    );
    let env = |name: &str| match name {
        "CLIENT_KEY" => Some(CLIENT_KEY.to_string()),
        "UPSTREAM_KEY" => Some(UPSTREAM_KEY.to_string()),
        _ => None,
    };
    let config = Config::parse("test.toml", &toml, &env).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        baton::proxy::serve(listener, &config, async move {
            let _ = stopped.await;
        })
        .await
    });

    let client = reqwest::Client::new();
    for stream in [true, false] {
        let body = json!({
            "model": "chat",
            "stream": stream,
            "messages": [{"role": "user", "content": format!("secrets, stream={stream}")}],
            "api_key": PARAM_KEY,
            "metadata": {"Authorization": format!("Bearer {PARAM_KEY}")},
        });
        let response = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send()
            .await
            .expect("request");
        assert!(response.status().is_success(), "{}", response.status());
        let text = response.text().await.expect("body");
        assert!(!text.is_empty());
    }
    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(30), served)
        .await
        .expect("the proxy stopped");
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");

    let files = dir.files();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        for secret in [CLIENT_KEY, UPSTREAM_KEY, PARAM_KEY, "SECRET"] {
            assert!(!text.contains(secret), "{secret} in {}", f.display());
        }
        assert!(!text.to_lowercase().contains("bearer"), "{}", f.display());
        assert!(
            text.contains(baton::record::REDACTED),
            "the key-like params are recorded redacted"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(f).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
    // And what the proxy recorded re-drives.
    let (recording, verdicts) = verify_paths(&[dir.path().to_path_buf()]);
    assert!(recording.errors.is_empty(), "{:?}", recording.errors);
    assert_all_ok(&verdicts);
    assert!(verdicts.iter().all(|v| v.handovers == 1), "{verdicts:?}");
}

/// Sessions the ladder's own rungs answered — the cache first and as the last
/// resort, the safe reply, a route skipped by a business rule — replay too.
#[tokio::test(start_paused = true)]
async fn sessions_answered_by_the_cache_the_safe_reply_or_a_business_rule_verify() {
    use baton::rungs::cache::{CacheLimits, CacheRung, CacheUse, ResponseCache};
    use baton::rungs::safe_reply::SafeReply;

    let dir = TempDir::new("rungs");
    let events = EventBus::new(1 << 16);
    let recorder = Recorder::attach(&events, RecordOptions::new(dir.path())).expect("recorder");
    let store = Arc::new(ResponseCache::new(CacheLimits::default()));
    let with_cache = |name: &str, uses: CacheUse, fault: &str| {
        let mut ladder = Ladder::new(vec![Route::new("primary", "big", mock(fault, Style::default()))]).named(name);
        ladder.cache = Some(CacheRung {
            uses,
            store: store.clone(),
        });
        Splicer::with_events(ladder, events.clone())
    };
    // Live, stored; then a first-rung hit; then a drop the cache finishes.
    with_cache("live", CacheUse::Both, "none")
        .collect(ChatRequest::new(conversation("caching")))
        .await;
    with_cache("hit", CacheUse::First, "none")
        .collect(ChatRequest::new(conversation("caching")))
        .await;
    let finished = with_cache("last", CacheUse::LastResort, "drop@4")
        .collect(ChatRequest::new(conversation("caching")))
        .await;
    assert_eq!(
        finished.outcome.expect("complete").route_chain,
        ["primary", baton::rungs::cache::CACHE_ROUTE]
    );
    // The safe reply, whole and as a closing note.
    for (name, fault) in [("safe", "500"), ("note", "drop@5")] {
        let mut ladder = Ladder::new(vec![Route::new("primary", "big", mock(fault, Style::default()))]).named(name);
        ladder.retry.max_retries = 0;
        ladder.safe_reply = Some(SafeReply {
            reply: "Sorry, nothing can answer now.".into(),
            note: " [cut short]".into(),
        });
        Splicer::with_events(ladder, events.clone())
            .collect(ChatRequest::new(conversation(name)))
            .await;
    }
    // A cost ceiling skips the dear route.
    let mut dear = Route::new("dear", "big", mock("none", Style::default()));
    dear.price_per_1k = Some(1.0);
    let mut cheap = Route::new("cheap", "small", mock("none", Style::default()));
    cheap.price_per_1k = Some(0.0);
    let mut ladder = Ladder::new(vec![dear, cheap]).named("cost");
    ladder.rules.max_cost_per_request = Some(0.01);
    Splicer::with_events(ladder, events.clone())
        .collect(ChatRequest::new(conversation("cost")))
        .await;

    let stats = recorder.finish().await;
    assert_eq!((stats.sessions, stats.dropped), (6, 0), "{stats}");
    let (recording, verdicts) = verify_paths(&[dir.path().to_path_buf()]);
    assert!(recording.errors.is_empty(), "{:?}", recording.errors);
    assert_eq!(verdicts.len(), 6);
    assert_all_ok(&verdicts);
    let kinds = failure_kinds(&recording.sessions);
    assert!(kinds.iter().any(|k| k == "over_cost"), "{kinds:?}");
}

/// A primary that reports its prompt tokens at the start (as Anthropic's
/// `message_start` does), streams a little and is cut.
struct ReportsThenCut;

impl Provider for ReportsThenCut {
    fn stream(&self, _request: UpstreamRequest) -> ChunkStream {
        Box::pin(async_stream::stream! {
            tokio::time::sleep(Duration::from_millis(20)).await;
            yield Ok(Chunk::Opened);
            yield Ok(Chunk::Usage(Usage { prompt_tokens: 31, completion_tokens: 0, reasoning_tokens: None }));
            yield Ok(Chunk::Text("The relay ".into()));
            tokio::time::sleep(Duration::from_millis(5)).await;
            yield Ok(Chunk::Text("runner ".into()));
            yield Err(FailureKind::Truncated { detail: Some("cut".into()) });
        })
    }
}

/// The `finished` event of `events`, as JSON.
fn finished_line(events: &[EngineEvent]) -> Value {
    let finished = events
        .iter()
        .find(|e| matches!(e.kind, baton::EventKind::Finished { .. }))
        .expect("a finished event");
    serde_json::to_value(finished).expect("an event serializes")
}

#[tokio::test(start_paused = true)]
async fn every_attempts_tokens_are_recorded_and_verified() {
    let splicer = Splicer::new(Ladder::new(vec![
        Route::new("primary", "big", Arc::new(ReportsThenCut)),
        Route::new("fallback", "small", mock("none", Style::default())),
    ]));
    let mut feed = splicer.subscribe();
    let done = splicer.collect(ChatRequest::new(conversation("tallies"))).await;
    let completion = done.outcome.expect("complete");
    let events = support::drain(&mut feed);
    let line = finished_line(&events);
    let tokens = line["tokens"]
        .as_array()
        .expect("the finished event has every attempt's tokens");
    assert_eq!(tokens.len(), 2, "{line}");
    assert_eq!(
        tokens[0],
        json!({"attempt": 1, "route": "primary", "model": "big",
               "reported": {"prompt_tokens": 31, "completion_tokens": 0}, "deltas": 2})
    );
    assert_eq!(tokens[1]["route"], "fallback");
    let fallback = tokens[1]["reported"]["prompt_tokens"]
        .as_u64()
        .expect("the fallback reports usage");
    // The cut attempt's prompt is in the session's usage; its two deltas are not tokens.
    assert_eq!(line["usage"]["prompt_tokens"].as_u64(), Some(31 + fallback));
    assert_eq!(
        completion.usage().expect("the upstreams reported usage").prompt_tokens,
        31 + fallback
    );
    assert_eq!(
        Some(
            completion
                .usage()
                .expect("the upstreams reported usage")
                .completion_tokens
        ),
        tokens[1]["reported"]["completion_tokens"].as_u64()
    );
    assert_eq!(support::verify_events(&events), Outcome::Ok { partial: false });

    // A re-drive that tallied differently diverges at the end...
    let mut changed = events.clone();
    for e in &mut changed {
        if let baton::EventKind::Finished { usage, .. } = &mut e.kind {
            usage.prompt_tokens += 1;
        }
    }
    assert!(matches!(support::verify_events(&changed), Outcome::Diverged { .. }));
    // ...but a recording made before tokens were tallied summed usage its own
    // way (deltas of cut attempts as tokens): its usage is not held against it.
    let mut older = events.clone();
    for e in &mut older {
        if let baton::EventKind::Finished { usage, tokens, .. } = &mut e.kind {
            *usage = Usage {
                prompt_tokens: 0,
                completion_tokens: 99,
                reasoning_tokens: None,
            };
            *tokens = None;
        }
    }
    assert_eq!(support::verify_events(&older), Outcome::Ok { partial: false });
}

// ------------------------------------------------------- doors

/// A session through each front door is recorded with its door, which the
/// summary counts, the dashboard shows and a replay keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_a_session_came_through_is_recorded_summarized_and_shown() {
    use baton::dashboard::app::App;
    use baton::Door;

    let dir = TempDir::new("doors");
    let (ladders, stops) = support::ladders("oracle-large", "oracle-small", &[("drop", "drop@15")]).await;
    let toml = format!("[server]\nrecord_dir = \"{}\"\n{ladders}", dir.path().display());
    let mut proxy = support::Serve::new(&toml).upstreams(stops).start().await;
    let client = reqwest::Client::new();
    let asks = [
        (
            Door::Chat,
            json!({"model": "drop", "stream": true, "messages": [{"role": "user", "content": "door chat"}]}),
        ),
        (
            Door::Messages,
            json!({"model": "drop", "stream": true, "max_tokens": 400, "messages": [{"role": "user", "content": "door messages"}]}),
        ),
        (
            Door::Responses,
            json!({"model": "drop", "stream": true, "input": "door responses"}),
        ),
    ];
    for (door, body) in &asks {
        let response = client
            .post(proxy.url(door.path()))
            .json(body)
            .send()
            .await
            .expect("request");
        assert!(response.status().is_success(), "{door:?}: {}", response.status());
        let text = response.text().await.expect("body");
        // Each door streamed its own wire, through the handover.
        assert!(text.contains(": baton handover"), "{door:?}: {text}");
    }
    // And /metrics counts each door's session.
    let metrics = proxy.get("/metrics").await;
    for (door, _) in &asks {
        let line = format!(
            "baton_sessions_total{{ladder=\"drop\",outcome=\"complete\",door=\"{}\"}} 1",
            door.label()
        );
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    proxy.stop();
    let result = tokio::time::timeout(Duration::from_secs(30), proxy.join_handle())
        .await
        .expect("the proxy stopped");
    assert!(matches!(result, Ok(Ok(()))), "{result:?}");

    let recording = reader::read(&[dir.path().to_path_buf()]);
    assert!(recording.errors.is_empty(), "{:?}", recording.errors);
    assert_eq!(recording.sessions.len(), asks.len());
    let mut doors: Vec<Option<Door>> = recording.sessions.iter().map(RecordedSession::door).collect();
    doors.sort_by_key(|d| d.map(Door::label));
    assert_eq!(doors, [Some(Door::Chat), Some(Door::Messages), Some(Door::Responses)]);
    // The conversation each door's request became was recorded with it.
    for s in &recording.sessions {
        let started = s.events.first().expect("events");
        let EventKind::SessionStarted {
            request: Some(request), ..
        } = &started.kind
        else {
            panic!("{:?}", started.kind);
        };
        let door = request.door.expect("a door");
        let asked = format!("door {}", door.label().trim_end_matches("_completions"));
        assert_eq!(
            request.messages.last().map(|m| m.content.as_str()),
            Some(asked.as_str())
        );
    }

    let summaries: Vec<_> = recording.sessions.iter().map(baton::record::summary::session).collect();
    let totals = baton::record::summary::totals(&summaries, 1, 0);
    let by_door: Vec<(&str, usize)> = totals.sessions_by_door.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(by_door, [("chat_completions", 1), ("messages", 1), ("responses", 1)]);
    assert!(
        totals
            .to_string()
            .contains("doors           chat_completions 1, messages 1, responses 1"),
        "{totals}"
    );
    for s in &summaries {
        let door = s.door.expect("a door").label();
        assert!(s.to_string().contains(door), "{s}");
    }

    // A replay re-drives each with its door.
    let verdicts = verify::verify(&recording.sessions);
    assert_all_ok(&verdicts);

    // The dashboard names the door in the session list (wide enough) and the transcript title.
    let mut app = App::new("recording");
    for s in &recording.sessions {
        for e in &s.events {
            app.on_event(e, Duration::from_millis(e.t_ms));
        }
    }
    let screen = render(&app, 180, 40);
    let header = screen
        .lines()
        .find(|l| l.contains("route chain"))
        .expect("the session list");
    assert!(header.contains("door"), "{screen}");
    for s in &recording.sessions {
        let short = &s.id.simple().to_string()[..8];
        let row = screen
            .lines()
            .find(|l| l.contains(short) && !l.contains("Transcript"))
            .expect("a row");
        let view = app
            .model()
            .sessions
            .iter()
            .find(|v| v.id == s.id)
            .expect("a session view");
        assert_eq!(view.door, s.door(), "{short}");
        assert!(
            row.contains(view.door_text()),
            "{short} via {}:\n{screen}",
            view.door_text()
        );
    }
    let selected = app.selected_session().expect("a selection");
    let title = screen
        .lines()
        .find(|l| l.contains("Transcript"))
        .expect("the transcript");
    assert!(title.contains(selected.door_text()), "{title}");
}

/// `app` drawn into a `width` × `height` test terminal, as text.
fn render(app: &baton::dashboard::app::App, width: u16, height: u16) -> String {
    let mut terminal =
        ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height)).expect("test terminal");
    terminal.draw(|f| baton::dashboard::ui::draw(f, app)).expect("draw");
    let buffer = terminal.backend().buffer();
    (0..height)
        .map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect::<String>() + "\n")
        .collect()
}
