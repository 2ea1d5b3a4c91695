//! An upstream that echoes the request's headers in its 401/400 body (some
//! do) must not get the route's key — nor the client's — shown anywhere: not
//! in the client's 503 body, not in a stream's error event, not on `/events`,
//! not in a recording on disk, not in the server's log. What the client gets
//! of the upstream's message is redacted and bounded.
//!
//! One test in this file: it installs the process's global log subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::{raw_upstream, scripted, text, End, Reply, Serve, Sse};
use tokio::io::AsyncWriteExt;

/// Mixed case on purpose: the echo below lower-cases what it sends back.
const OPENAI_KEY: &str = "sk-Route-OPENAI-7c3f0a9b2e1d4f60";
const ANTHROPIC_KEY: &str = "sk-ant-Route-ANTHROPIC-5e6f7a8b9c";
const CLIENT_KEY: &str = "client-Key-9d8c7b6a5f4e";

/// Far beyond what loopback needs: only a hang reaches it.
const HANG: Duration = Duration::from_secs(60);

/// What every configured secret looks like, in the cases it may be echoed in.
fn leaks(text: &str) -> Vec<String> {
    [OPENAI_KEY, ANTHROPIC_KEY, CLIENT_KEY]
        .iter()
        .flat_map(|k| [k.to_string(), k.to_lowercase()])
        .filter(|k| text.contains(k.as_str()))
        .collect()
}

/// The log lines the server writes, captured.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default()
    }
}

/// An upstream that refuses every request, echoing its (lower-cased) head and
/// a forwarded client key: a 401 JSON error for OpenAI, a 400 plain-text one
/// for Anthropic, both padded far past what a client should be passed.
async fn echoing_upstream() -> String {
    raw_upstream(|mut socket, head, _| async move {
        let echoed = format!("request headers: {head}\nx-forwarded-authorization: Bearer {CLIENT_KEY}");
        let padding = "p".repeat(4000);
        let (status, content_type, body) = if head.starts_with("post /v1/messages") {
            ("400 Bad Request", "text/plain", format!("bad request; {echoed} {padding}"))
        } else {
            let message = format!("Incorrect API key provided; {echoed} {padding}");
            let body = json!({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}});
            ("401 Unauthorized", "application/json", body.to_string())
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(response.as_bytes()).await;
    })
    .await
}

/// Every file under `dir`, read.
fn files_under(dir: &std::path::Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.push((path, text));
            }
        }
    }
    out
}

#[tokio::test]
async fn an_upstream_echoing_its_request_headers_leaks_no_key_anywhere() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let echo = echoing_upstream().await;
    // A route that streams some text and is cut: the stream then ends with an error event.
    let cut = scripted(vec![Reply {
        data: vec![text("m", "Half an "), text("m", "answer ")],
        end: End::Cut,
    }])
    .await;
    let dir = std::env::temp_dir().join(format!("baton-secrets-{}", uuid::Uuid::new_v4().simple()));
    let toml = format!(
        r#"
        [server]
        api_key_env = "CLIENT_KEY"
        record_dir = "{dir}"

        [[route]]
        name = "openai-echo"
        provider = "openai"
        base_url = "{echo}"
        model = "m"
        api_key_env = "OPENAI_KEY"

        [[route]]
        name = "anthropic-echo"
        provider = "anthropic"
        base_url = "{echo}"
        model = "claude"
        api_key_env = "ANTHROPIC_KEY"

        [[route]]
        name = "cut"
        provider = "openai"
        base_url = "{cut}"
        model = "m"

        [[ladder]]
        name = "whole"
        routes = ["openai-echo", "anthropic-echo"]
        max_retries = 0

        [[ladder]]
        name = "stream"
        routes = ["cut", "openai-echo", "anthropic-echo"]
        max_retries = 0
        "#,
        dir = dir.display(),
        cut = cut.base_url(),
    );
    let mut proxy = Serve::new(&toml)
        .env("CLIENT_KEY", CLIENT_KEY)
        .env("OPENAI_KEY", OPENAI_KEY)
        .env("ANTHROPIC_KEY", ANTHROPIC_KEY)
        .start()
        .await;
    let client = reqwest::Client::new();
    let mut feed = client
        .get(proxy.url("/events"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .expect("the event feed");
    assert_eq!(feed.status(), 200);
    let ask = |model: &'static str, stream: bool| {
        let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
        let request = client
            .post(proxy.url("/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .json(&body)
            .send();
        async move {
            let response = tokio::time::timeout(HANG, request)
                .await
                .expect("the proxy hung")
                .expect("a response");
            (response.status(), response.text().await.expect("a body"))
        }
    };

    // Whole: every route refused, a 503 that tells why.
    let (status, body) = ask("whole", false).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(leaks(&body), Vec::<String>::new(), "the 503 body: {body}");
    let message = serde_json::from_str::<Value>(&body).expect("a JSON error")["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for route in ["openai-echo", "anthropic-echo"] {
        assert!(message.contains(route), "{message}");
    }
    assert!(message.contains("[redacted]"), "{message}");
    assert!(
        message.contains("credentials (401)") && message.contains("rejected (400)"),
        "{message}"
    );
    // Only a bounded part of each upstream message is passed on.
    assert!(!message.contains(&"p".repeat(400)), "{message}");
    assert!(message.len() < 2 * 1024, "{} bytes: {message}", message.len());

    // Streamed: text went out, so the end is an error event.
    let (status, body) = ask("stream", true).await;
    assert_eq!(status, 200, "{body}");
    let sse = Sse::parse(&body);
    assert!(!sse.done(), "{body}");
    let error = sse.last_json();
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("openai-echo") && message.contains("[redacted]"),
        "{error}"
    );
    assert_eq!(leaks(&body), Vec::<String>::new(), "the stream: {body}");

    // The event feed saw both sessions fail.
    let mut seen = String::new();
    let read = async {
        while seen.matches("\"event\":\"failed\"").count() < 2 {
            match feed.chunk().await {
                Ok(Some(bytes)) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                _ => break,
            }
        }
    };
    tokio::time::timeout(HANG, read).await.expect("events arrive");
    assert_eq!(seen.matches("\"event\":\"failed\"").count(), 2, "{seen}");
    assert!(
        seen.contains("\"kind\":\"auth\"") && seen.contains("[redacted]"),
        "{seen}"
    );
    assert_eq!(leaks(&seen), Vec::<String>::new(), "/events: {seen}");
    drop(feed);

    // Recordings are complete once the server has stopped.
    proxy.stop();
    let stopped = tokio::time::timeout(HANG, proxy.join_handle())
        .await
        .expect("the proxy stopped");
    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
    let recorded = files_under(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!recorded.is_empty(), "nothing recorded in {}", dir.display());
    let all: String = recorded.iter().map(|(_, text)| text.as_str()).collect();
    assert!(all.contains("\"kind\":\"auth\"") && all.contains("[redacted]"), "{all}");
    for (path, text) in &recorded {
        assert_eq!(leaks(text), Vec::<String>::new(), "{}", path.display());
    }

    let log = log.text();
    assert!(!log.is_empty(), "the server logged nothing at debug level");
    assert_eq!(leaks(&log), Vec::<String>::new(), "the log: {log}");
}
