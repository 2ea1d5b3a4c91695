//! The real binary: `baton demo --headless --json`, `baton mock`, `baton soak` and `baton bench`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

const BATON: &str = env!("CARGO_BIN_EXE_baton");

#[test]
fn headless_demo_reports_every_session_intact_as_json() {
    let out = Command::new(BATON)
        .args(["demo", "--headless", "--sessions", "60", "--seed", "3", "--json"])
        .output()
        .expect("run baton demo");
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    for key in [
        "sessions",
        "intact",
        "handovers",
        "lost_bytes",
        "doubled_bytes",
        "gap_ms_p50",
        "gap_ms_p99",
        "handover_overhead_ms_p50",
        "handover_overhead_ms_p99",
    ] {
        assert!(report.get(key).is_some(), "missing {key} in {report}");
    }
    for key in ["handover_overhead_ms_p50", "handover_overhead_ms_p99"] {
        let ms = report[key].as_f64().expect("a number");
        assert!(ms >= 0.0, "{key} {ms} in {report}");
    }
    // Its own cost is part of the gap, so never above it (the gap is the precise figure).
    assert!(
        report["handover_overhead_ms_p50"].as_f64().unwrap() <= report["gap_ms_p50"].as_f64().unwrap() + 1.0,
        "{report}"
    );
    let measured = report["handover_overheads_measured"]
        .as_u64()
        .expect("handovers measured");
    assert!(
        measured > 0 && measured <= report["handovers"].as_u64().unwrap(),
        "{report}"
    );
    assert_eq!(report["sessions"], 60);
    assert_eq!(report["intact"], 60);
    assert_eq!(report["lost_bytes"], 0);
    assert_eq!(report["doubled_bytes"], 0);
    assert!(
        report["handovers"].as_u64().unwrap_or(0) > 0,
        "the fault mix caused no handover: {report}"
    );
    // The reasoning route's faults inside its thinking hand over while the client has only reasoning.
    let thinking = report["handovers_during_reasoning"]
        .as_u64()
        .expect("handovers during reasoning");
    assert!(thinking > 0, "{report}");
    assert!(thinking < report["handovers"].as_u64().unwrap_or(0), "{report}");
    // The primary's outage opened its breaker, and traffic came back to it after.
    assert!(report["breaker_opened"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(report["breaker_closed"].as_u64().unwrap_or(0) > 0, "{report}");
    let back = report["back_on_primary_ms"].as_f64().expect("back on the primary");
    assert!(
        (0.0..1500.0).contains(&back),
        "back on the primary {back} ms after the outage"
    );
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let out = Command::new(BATON)
        .args(["mock", "--fault", "explode"])
        .output()
        .expect("run baton mock");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad fault script \"explode\""), "{stderr}");
    let out = Command::new(BATON)
        .args(["demo", "--sessions", "0"])
        .output()
        .expect("run baton demo");
    assert!(!out.status.success());
}

#[test]
fn mock_serves_the_oracle_over_http() {
    let mut child = Command::new(BATON)
        .args(["mock", "--port", "0", "--fault", "503x1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start baton mock");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("read address");
    let addr = line
        .trim()
        .strip_prefix("baton mock listening on http://")
        .and_then(|rest| rest.strip_suffix("/v1"))
        .expect("address line")
        .to_string();
    let body = r#"{"model":"m","stream":false,"messages":[{"role":"user","content":"hi"}]}"#;
    let post = |body: &str| {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        write!(s, "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).expect("write");
        let mut response = String::new();
        s.read_to_string(&mut response).expect("read");
        response
    };
    let first = post(body);
    let second = post(body);
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.starts_with("HTTP/1.1 503"), "{first}");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    let expected = baton::oracle::answer(&[baton::Message::new(baton::Role::User, "hi")]);
    let json = second.split("\r\n\r\n").nth(1).expect("body");
    let v: serde_json::Value = serde_json::from_str(json).expect("json body");
    assert_eq!(v["choices"][0]["message"]["content"], expected.as_str());
}

#[test]
fn soak_runs_serve_against_mock_and_every_session_is_intact() {
    let out = Command::new(BATON)
        .args([
            "soak",
            "--sessions",
            "200",
            "--concurrency",
            "20",
            "--seed",
            "4",
            "--json",
        ])
        .output()
        .expect("run baton soak");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("one JSON object on stdout ({e}); stderr: {stderr}"));
    assert_eq!(report["sessions"], 200, "{report}");
    assert_eq!(report["intact"], 200, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["lost_bytes"], 0, "{report}");
    assert_eq!(report["doubled_bytes"], 0, "{report}");
    assert_eq!(report["all_intact"], true, "{report}");
    assert!(
        report["handovers"].as_u64().unwrap_or(0) > 0,
        "the fault mix caused no handover: {report}"
    );
    for key in ["start", "warm", "middle", "late", "end"] {
        assert!(
            report["rss_kib"][key].as_u64().unwrap_or(0) > 0,
            "no RSS figure {key} for the server: {report}"
        );
    }
    assert!(report["fds_end"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(out.status.success(), "stderr: {stderr}");
}

#[test]
fn bench_measures_the_proxy_process_alone_and_reports_its_figures() {
    // Unpaced, so the run is short; 20 × 500 chunks keep the proxy busy for
    // tens of 10 ms clock ticks of CPU (CPU time is sampled per tick), so a
    // zero would mean an unread /proc, not bad luck.
    let out = Command::new(BATON)
        .args([
            "bench",
            "--sizes",
            "20",
            "--chunks",
            "500",
            "--interval-ms",
            "0",
            "--json",
        ])
        .output()
        .expect("run baton bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("one JSON object on stdout ({e}); stderr: {stderr}"));
    let size = &report["results"][0];
    assert_eq!(size["streams"], 20, "{report}");
    assert_eq!(size["direct"]["errors"], 0, "{report}");
    assert_eq!(size["proxied"]["errors"], 0, "{report}");
    assert_eq!(size["proxied"]["chunks"], 10_000, "{report}");
    let positive = |v: &serde_json::Value, key: &str| {
        let x = v[key].as_f64().unwrap_or_else(|| panic!("no number {key} in {v}"));
        assert!(x > 0.0, "{key} is {x}: {report}");
    };
    positive(size, "ratio");
    let proxy = &size["proxied"]["proxy"];
    for key in [
        "cpu_us_per_chunk",
        "syscalls_read",
        "syscalls_write",
        "syscalls_per_chunk",
        "rss_idle_kib",
        "rss_peak_kib",
        "kib_per_stream",
    ] {
        positive(proxy, key);
    }
    // A direct run has no proxy to measure.
    assert!(proxy["pid"].as_u64().unwrap_or(0) > 0, "{report}");
    assert!(size["direct"]["proxy"].is_null(), "{report}");
}

#[test]
fn bench_with_events_keeps_a_subscriber_that_sees_the_sessions() {
    let out = Command::new(BATON)
        .args([
            "bench",
            "--sizes",
            "5",
            "--chunks",
            "50",
            "--interval-ms",
            "0",
            "--modes",
            "proxied",
            "--events",
            "--json",
        ])
        .output()
        .expect("run baton bench --events");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("one JSON object on stdout ({e}); stderr: {stderr}"));
    assert_eq!(report["options"]["events"], true, "{report}");
    let proxied = &report["results"][0]["proxied"];
    assert_eq!(proxied["errors"], 0, "{report}");
    assert_eq!(proxied["chunks"], 250, "{report}");
    // Every token is an event on the feed: 250 chunks make far more than a kilobyte of it.
    let read = proxied["proxy"]["events_bytes"].as_u64().unwrap_or(0);
    assert!(read > 250 * 20, "the subscriber read {read} bytes: {report}");
}

#[test]
fn demos_config_is_the_demo_scenario_and_checks() {
    let out = Command::new(BATON)
        .args(["scenario", "--print-config"])
        .output()
        .expect("run baton scenario");
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/demos/baton.toml")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        committed,
        "demos/baton.toml drifted from the scenario: rewrite it with `baton scenario --print-config > demos/baton.toml`"
    );
    let check = Command::new(BATON)
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/demos/baton.toml"),
        ])
        .output()
        .expect("run baton check");
    assert!(
        check.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let resolved = String::from_utf8_lossy(&check.stdout);
    for ladder in ["echo-first", "steady-first", "thinking"] {
        assert!(resolved.contains(&format!("ladder \"{ladder}\"")), "{resolved}");
    }
}

#[test]
fn baton_mock_takes_every_scenario_upstreams_arguments() {
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/demos/proxy-demo.sh")).unwrap();
    assert!(
        script.contains("baton scenario --mock-args"),
        "the demo script starts the scenario's mocks"
    );
    let list = Command::new(BATON)
        .arg("scenario")
        .output()
        .expect("run baton scenario");
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(names, ["primary", "echo", "steady", "thinker"]);
    for (i, name) in names.iter().enumerate() {
        let out = Command::new(BATON)
            .args(["scenario", "--mock-args", name])
            .output()
            .expect("run baton scenario --mock-args");
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let mut args: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(args[..2], ["--port".to_string(), (9001 + i).to_string()], "{name}");
        // Any free port here: the demo ports may be taken on this machine.
        args[1] = "0".into();
        let mut mock = Command::new(BATON)
            .arg("mock")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start baton mock");
        let mut line = String::new();
        BufReader::new(mock.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let _ = mock.kill();
        let status = mock.wait().unwrap();
        let mut stderr = String::new();
        mock.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert!(
            line.starts_with("baton mock listening on http://127.0.0.1:"),
            "{name} {args:?}: {line:?} {status} {stderr}"
        );
    }
    let steady = Command::new(BATON)
        .args(["scenario", "--mock-args", "steady"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&steady.stdout).contains("--extra-space"));
}
