//! Operator surfaces: who may read `/events` and `/metrics`, what a keyless
//! server refuses (foreign `Host`, cross-origin browsers, non-JSON POSTs),
//! what the feed redacts, and a recording directory that cannot take
//! recordings (refused before listening, losses counted, partial files gone).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::{Serve, TempDir};

const BATON: &str = env!("CARGO_BIN_EXE_baton");
const CLIENT_KEY: &str = "sk-client-7f3a9c21";
const OPERATOR_KEY: &str = "op-key-5b8e2d44";

/// One healthy in-process oracle route behind ladder `chat`, `server` lines on top.
fn config(server: &str) -> String {
    format!(
        r#"
        [server]
        {server}

        [[route]]
        name = "oracle"
        provider = "mock"
        model = "oracle"

        [[ladder]]
        name = "chat"
        routes = ["oracle"]
        "#
    )
}

fn chat(tag: &str) -> Value {
    json!({"model": "chat", "messages": [{"role": "user", "content": format!("operator surfaces: {tag}")}]})
}

/// The status and the OpenAI-style error code (empty when the body is no error).
async fn status_and_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn the_operator_key_opens_events_and_metrics_and_a_client_key_does_not() {
    let proxy = Serve::new(&config("api_key_env = \"CLIENT\"\noperator_key_env = \"OPERATOR\""))
        .env("CLIENT", CLIENT_KEY)
        .env("OPERATOR", OPERATOR_KEY)
        .start()
        .await;
    let client = reqwest::Client::new();
    let get = |path: &str, key: Option<&str>| {
        let mut request = client.get(proxy.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    for path in ["/events", "/metrics"] {
        let refused = get(path, Some(CLIENT_KEY)).await.expect("request");
        assert_eq!(
            status_and_code(refused).await,
            (403, "operator_key_required".into()),
            "{path} with the client key"
        );
        let bare = get(path, None).await.expect("request");
        assert_eq!(
            status_and_code(bare).await,
            (401, "invalid_api_key".into()),
            "{path} without a key"
        );
    }
    let metrics = get("/metrics", Some(OPERATOR_KEY)).await.expect("metrics");
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("body");
    assert!(
        text.contains("baton_rejected_requests_total{code=\"operator_key_required\"} 2"),
        "{text}"
    );
    assert!(!text.contains(OPERATOR_KEY) && !text.contains(CLIENT_KEY));
    let feed = get("/events", Some(OPERATOR_KEY)).await.expect("events");
    assert_eq!(feed.status(), 200);
    assert_eq!(feed.headers()["content-type"], "text/event-stream");
    drop(feed);
    // The operator key is no client key, and the client key still serves clients.
    let as_operator = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(OPERATOR_KEY)
        .json(&chat("operator as client"))
        .send()
        .await
        .expect("request");
    assert_eq!(status_and_code(as_operator).await, (401, "invalid_api_key".into()));
    let as_client = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat("client"))
        .send()
        .await
        .expect("request");
    assert_eq!(as_client.status(), 200);
    assert_eq!(get("/healthz", None).await.expect("healthz").status(), 200);
}

#[tokio::test]
async fn a_keyless_server_refuses_foreign_hosts_cross_origin_browsers_and_plain_text_posts() {
    let proxy = Serve::new(&config("")).start().await;
    let client = reqwest::Client::new();
    let port = proxy.addr.port();
    let body = chat("keyless").to_string();
    let post = |headers: &[(&str, String)], content_type: &str| {
        let mut request = client
            .post(proxy.url("/v1/chat/completions"))
            .header("content-type", content_type)
            .body(body.clone());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send()
    };
    let json = "application/json";
    let rebound = [("host", format!("rebind.example:{port}"))];
    let cases: Vec<(&str, reqwest::Response, (u16, &str))> = vec![
        (
            "DNS rebinding",
            post(&rebound, json).await.expect("request"),
            (403, "invalid_host"),
        ),
        (
            "rebinding /events",
            client
                .get(proxy.url("/events"))
                .header("host", "rebind.example")
                .send()
                .await
                .expect("request"),
            (403, "invalid_host"),
        ),
        (
            "a cross-site page",
            post(&[("origin", "http://evil.example".into())], json)
                .await
                .expect("request"),
            (403, "invalid_origin"),
        ),
        (
            "a cross-site page reading /events",
            client
                .get(proxy.url("/events"))
                .header("origin", "https://evil.example")
                .send()
                .await
                .expect("request"),
            (403, "invalid_origin"),
        ),
        (
            "a text/plain simple request",
            post(&[], "text/plain;charset=UTF-8").await.expect("request"),
            (415, "unsupported_media_type"),
        ),
    ];
    for (what, response, (status, code)) in cases {
        assert_eq!(status_and_code(response).await, (status, code.to_string()), "{what}");
    }
    // The server's own names, and its own origin, are served.
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let origin = format!("http://{host}");
        let ok = post(&[("host", host.clone()), ("origin", origin)], json)
            .await
            .expect("request");
        assert_eq!(ok.status(), 200, "{host}");
    }
    let healthz = client
        .get(proxy.url("/healthz"))
        .header("host", "rebind.example")
        .send()
        .await
        .expect("healthz");
    assert_eq!(healthz.status(), 200);
    let metrics = proxy.get("/metrics").await;
    for line in [
        "baton_rejected_requests_total{code=\"invalid_host\"} 2",
        "baton_rejected_requests_total{code=\"invalid_origin\"} 2",
        "baton_rejected_requests_total{code=\"unsupported_media_type\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
}

#[tokio::test]
async fn the_event_feed_redacts_secret_looking_fields_as_recordings_do() {
    const PARAM_SECRET: &str = "sk-param-SECRET-0d9e8f7a";
    let proxy = Serve::new(&config("api_key_env = \"CLIENT\""))
        .env("CLIENT", CLIENT_KEY)
        .start()
        .await;
    // Loopback, no operator key: served without a key, client key or not.
    let mut feed = reqwest::get(proxy.url("/events")).await.expect("events");
    assert_eq!(feed.status(), 200);
    let mut body = chat(&format!("a user pasting the key {CLIENT_KEY}"));
    body["api_key"] = json!(PARAM_SECRET);
    body["metadata"] = json!({"Authorization": format!("Bearer {PARAM_SECRET}"), "password": PARAM_SECRET});
    let answer = reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(answer.status(), 200);
    let mut seen = String::new();
    let read = async {
        while let Ok(Some(bytes)) = feed.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&bytes));
            if seen.contains("\"event\":\"finished\"") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the session's events arrive");
    assert!(seen.contains("\"event\":\"attempt_opened\""), "{seen}");
    assert!(!seen.contains("SECRET"), "a secret in the feed: {seen}");
    assert!(!seen.contains(CLIENT_KEY), "the client key in the feed: {seen}");
    assert!(seen.contains(baton::record::REDACTED), "{seen}");
}

/// A config file in `dir` recording to `record_dir`, listening on any free loopback port.
fn config_file(dir: &TempDir, record_dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.path()).expect("dir");
    let file = dir.path().join("baton.toml");
    let text = config(&format!(
        "listen = \"127.0.0.1:0\"\nrecord_dir = \"{}\"",
        record_dir.display()
    ));
    std::fs::write(&file, text).expect("config");
    file
}

#[test]
fn serve_refuses_a_record_dir_that_is_a_file_before_listening() {
    let dir = TempDir::new("record-dir-file");
    let file = dir.path().join("recordings");
    let config = config_file(&dir, &file);
    std::fs::write(&file, "not a directory").expect("file");
    let out = Command::new(BATON)
        .args(["serve", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("run baton serve");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("listening"), "said it was listening: {stdout}");
    assert!(
        stderr.contains(&file.display().to_string()) && stderr.contains("not a directory"),
        "{stderr}"
    );
    assert!(!stderr.contains("os error 17"), "{stderr}");
}

/// A real `baton serve` whose files may not grow past one block (`ulimit -f 1`):
/// a recording fails part-way, as on a full disk, also when run as root.
#[test]
fn a_recording_that_cannot_be_written_whole_is_removed_and_counted_in_metrics() {
    let dir = TempDir::new("record-fsize");
    let recordings = dir.path().join("recordings");
    let config = config_file(&dir, &recordings);
    // SIGXFSZ ignored (inherited across exec), so a write past the limit fails with EFBIG.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 1 && exec \"$0\" serve -c \"$1\"")
        .arg(BATON)
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn baton serve");
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let base = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .and_then(|w| w.strip_suffix("/v1"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let client = reqwest::Client::new();
            let answer = client
                .post(format!("http://{base}/v1/chat/completions"))
                .json(&chat("a long enough conversation to outgrow one block"))
                .send()
                .await
                .expect("request");
            assert_eq!(answer.status(), 200);
            let started = Instant::now();
            let lost = "baton_recordings_lost_total 1";
            loop {
                let metrics = client
                    .get(format!("http://{base}/metrics"))
                    .send()
                    .await
                    .expect("metrics")
                    .text()
                    .await
                    .expect("body");
                if metrics.contains(lost) {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(60), "no {lost:?} in\n{metrics}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let left: Vec<_> = std::fs::read_dir(&recordings)
            .expect("recordings")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        assert!(left.is_empty(), "partial recordings left behind: {left:?}");
    }));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn the_operator_key_must_differ_from_the_client_key() {
    let same = |name: &str| (name == "CLIENT" || name == "OPERATOR").then(|| CLIENT_KEY.to_string());
    let text = config("api_key_env = \"CLIENT\"\noperator_key_env = \"OPERATOR\"");
    let error = baton::config::Config::parse("t.toml", &text, &same).expect_err("the same key");
    let message = error.to_string();
    assert!(message.contains("server.operator_key_env"), "{message}");
    assert!(!message.contains(CLIENT_KEY), "{message}");
}

#[test]
fn replay_help_says_the_dashboard_plays_recordings() {
    let out = Command::new(BATON)
        .args(["replay", "--help"])
        .output()
        .expect("run baton replay --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(!help.contains("is coming"), "{help}");
    assert!(help.contains("plays the recording in the dashboard"), "{help}");
}
